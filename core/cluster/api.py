"""Driver side of cluster mode: connect, list nodes, reach each node's agent, cancel tracked tasks.

Every function that takes `address` connects once (`ray.init(address=...)`, quiet) unless this process is
already connected, and stays connected: later calls reuse the connection (and the agents found).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType, MappingProxyType
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from procguard.core.cluster import nodeops
from procguard.core.cluster._actors import (
    AGENT_PREFIX,
    NAMESPACE,
    PROTOCOL,
    REGISTRY_NAME,
    AgentActor,
    RegistryActor,
)
from procguard.core.cluster.nodeops import TaskEntry, TaskRecord
from procguard.core.signals import KILL_CONFIRM_TIMEOUT, Member, SignalResult, Target
from procguard.core.snapshot import Snapshot

log = logging.getLogger(__name__)

CALL_TIMEOUT = 60.0  # seconds a node gets to answer a query (an action gets its grace on top)


class ClusterError(RuntimeError):
    """No cluster at that address, or a node could not be reached. The message is one line."""


class RoutingError(ClusterError):
    """An agent answered from a node other than the one it was pinned to (never expected)."""


@dataclass(frozen=True)
class NodeInfo:
    node_id: str  # hex
    ip: str
    hostname: str
    is_head: bool

    @property
    def short(self) -> str:
        return self.node_id[:8]


@dataclass(frozen=True)
class NodeResult:
    """A node-local report (duplicates, locks, gpu...) with the node it came from; error if it failed."""

    node: NodeInfo
    value: Any = None
    error: str | None = None


@dataclass(frozen=True)
class NodeSnapshot:
    node: NodeInfo
    snapshot: Snapshot | None
    ray_kinds: Mapping[int, str] = field(default_factory=dict)  # pid -> what part of Ray it is
    error: str | None = None


@dataclass(frozen=True)
class NodeSignalResult:
    """One process's outcome; node_id is the node the agent that acted reported for itself."""

    node_id: str
    result: SignalResult

    @property
    def pid(self) -> int:
        return self.result.pid

    @property
    def ok(self) -> bool:
        return self.result.ok

    def to_json(self) -> dict[str, object]:
        return {"node": self.node_id, **self.result.to_json()}


@dataclass(frozen=True)
class NodeMember:
    node_id: str
    member: Member


@dataclass(frozen=True)
class CancelReport:
    task_id: str
    node_id: str | None  # where the task ran (None if it was not tracked)
    state: str  # cancelled (was running) | finished (had returned; its leftovers ended) | untracked
    results: tuple[NodeSignalResult, ...]
    ray_cancel_error: str | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


# ------------------------------------------------------------------------------------- connection

_lock = threading.RLock()
_cache: dict[str, Any] = {}


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT that nothing listens on fails here at once with a one-line ClusterError: ray.init would
    retry it for minutes. "auto", "local" and ray:// addresses are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {e.strerror or e}") from None


def connect(address: str | None = None) -> None:
    """Connect this process to the cluster at `address` ("auto", "HOST:PORT", "ray://..."), once."""
    if ray.is_initialized():
        return
    with _lock:
        if ray.is_initialized():
            return
        if address:
            check_reachable(address)
        try:
            ray.init(address=address or "auto", logging_level=logging.ERROR, log_to_driver=False,
                     configure_logging=True)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClusterError(f"cannot connect to the Ray cluster at {address or 'auto'}: {msg}") from e


def _key() -> str:
    return str(ray.get_runtime_context().gcs_address)


def _cached(name: str, make: Callable[[], Any]) -> Any:
    with _lock:
        k = f"{_key()}|{name}"
        v = _cache.get(k)
        if v is None:
            v = make()
            _cache[k] = v
        return v


def nodes(address: str | None = None) -> list[NodeInfo]:
    """The live nodes, head first."""
    connect(address)
    out = [NodeInfo(n["NodeID"], n.get("NodeManagerAddress", ""), n.get("NodeManagerHostname", ""),
                    "node:__internal_head__" in (n.get("Resources") or {}))
           for n in ray.nodes() if n.get("Alive")]
    return sorted(out, key=lambda n: (not n.is_head, n.node_id))


def find_node(ref: str, among: Sequence[NodeInfo]) -> NodeInfo:
    """A node by `head`, its id or a unique prefix of it (4+ hex digits), or its IP/hostname if unique.
    ValueError (one line) when it names none or several."""
    ref = ref.strip()
    if ref == "head":
        heads = [n for n in among if n.is_head]
        if heads:
            return heads[0]
        raise ValueError("no head node among the live nodes")
    low = ref.lower()
    exact = [n for n in among if n.node_id == low]
    if exact:
        return exact[0]
    hits = [n for n in among if len(low) >= 4 and n.node_id.startswith(low)]
    if not hits:
        hits = [n for n in among if ref in (n.ip, n.hostname)]
    if len(hits) == 1:
        return hits[0]
    names = ", ".join(n.short for n in (hits or among))
    if hits:
        raise ValueError(f"node {ref!r} matches {len(hits)} nodes ({names}): give more of the node id")
    raise ValueError(f"no node {ref!r} in the cluster (nodes: {names})")


def _head_id() -> str:
    heads = [n for n in nodes() if n.is_head]
    if not heads:
        raise ClusterError("the cluster has no live head node")
    return heads[0].node_id


def registry(address: str | None = None) -> Any:
    """The registry actor (detached, on the head node), created on first use."""
    connect(address)

    def make() -> Any:
        with contextlib.suppress(ValueError):
            return ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
        return RegistryActor.options(
            name=REGISTRY_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            scheduling_strategy=NodeAffinitySchedulingStrategy(_head_id(), soft=False)).remote()

    return _cached("registry", make)


def _new_agent(node_id: str) -> Any:
    return AgentActor.options(
        name=AGENT_PREFIX + node_id, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()


def agent(node_id: str, address: str | None = None) -> Any:
    """The agent actor pinned to node_id (num_cpus=0, hard node affinity), created on first use. An agent
    left by an older procguard (another protocol) is replaced."""
    connect(address)

    def make() -> Any:
        h = _new_agent(node_id)
        reported, _pid, proto = ray.get(h.ping.remote(), timeout=CALL_TIMEOUT)
        if proto != PROTOCOL:
            ray.kill(h, no_restart=True)
            h = _new_agent(node_id)
            reported, _pid, proto = ray.get(h.ping.remote(), timeout=CALL_TIMEOUT)
        if reported != node_id:
            raise RoutingError(f"the agent for node {node_id[:8]} runs on node {reported[:8]}")
        return h

    return _cached(AGENT_PREFIX + node_id, make)


def _forget(node_id: str) -> None:
    with _lock, contextlib.suppress(Exception):
        _cache.pop(f"{_key()}|{AGENT_PREFIX}{node_id}", None)


def _error_text(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[-1] if text else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _on_nodes(node_ids: Iterable[str], method: str, *args: Any, timeout: float = CALL_TIMEOUT
              ) -> dict[str, Any]:
    """Call method(*args) on each node's agent at once; node_id -> value, or the exception it raised."""
    refs: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for nid in node_ids:
        try:
            refs[nid] = getattr(agent(nid), method).remote(*args)
        except Exception as e:  # noqa: BLE001 - one node's failure is reported, not raised
            out[nid] = e
    for nid, ref in refs.items():
        try:
            reported, value = ray.get(ref, timeout=timeout)
        except Exception as e:  # noqa: BLE001
            _forget(nid)
            out[nid] = e
            continue
        if reported != nid:
            raise RoutingError(f"node {nid[:8]}'s agent answered from node {reported[:8]}")
        out[nid] = value
    return out


def _node_list(address: str | None, only: Iterable[str] | None) -> list[NodeInfo]:
    all_nodes = nodes(address)
    if only is None:
        return all_nodes
    wanted = set(only)
    return [n for n in all_nodes if n.node_id in wanted]


# ------------------------------------------------------------------------------------- views


def cluster_snapshot(address: str | None = None, node_ids: Iterable[str] | None = None) -> list[NodeSnapshot]:
    """Every node's process table (head first), with Ray's own processes named in ray_kinds."""
    ns = _node_list(address, node_ids)
    got = _on_nodes([n.node_id for n in ns], "snapshot")
    out: list[NodeSnapshot] = []
    for n in ns:
        v = got[n.node_id]
        if isinstance(v, BaseException):
            out.append(NodeSnapshot(n, None, {}, _error_text(v)))
            continue
        procs, when, kinds = v
        out.append(NodeSnapshot(n, nodeops.rebuild_snapshot(procs, when), MappingProxyType(kinds)))
    return out


def _reports(address: str | None, fn: str, kwargs: dict[str, Any], node_ids: Iterable[str] | None
             ) -> list[NodeResult]:
    ns = _node_list(address, node_ids)
    got = _on_nodes([n.node_id for n in ns], "call", fn, kwargs)
    return [NodeResult(n, None, _error_text(got[n.node_id])) if isinstance(got[n.node_id], BaseException)
            else NodeResult(n, got[n.node_id]) for n in ns]


def cluster_duplicates(address: str | None = None, node_ids: Iterable[str] | None = None,
                       **kwargs: Any) -> list[NodeResult]:
    """duplicates.duplicate_report(**kwargs) on every node: value is that node's DuplicateReport."""
    return _reports(address, "duplicates", kwargs, node_ids)


def cluster_locks(address: str | None = None, node_ids: Iterable[str] | None = None,
                  **kwargs: Any) -> list[NodeResult]:
    """held_locks.list_locks(**kwargs) on every node (dirs=, managed_only=): value is list[HeldLock]."""
    return _reports(address, "locks", kwargs, node_ids)


def node_call(address: str | None, node_id: str, fn: str, **kwargs: Any) -> Any:
    """One node-local call on node_id's agent (see NodeAgent.call); ClusterError when the node fails."""
    connect(address)
    got = _on_nodes([node_id], "call", fn, kwargs, timeout=CALL_TIMEOUT + float(kwargs.get("grace", 0.0)))
    v = got[node_id]
    if isinstance(v, BaseException):
        raise ClusterError(f"node {node_id[:8]}: {_error_text(v)}")
    return v


def cluster_gpu(address: str | None = None, node_ids: Iterable[str] | None = None,
                **kwargs: Any) -> list[NodeResult]:
    """gpu.gpu_snapshot(**kwargs) on every node: value is that node's GpuSnapshot."""
    return _reports(address, "gpu", kwargs, node_ids)


# ------------------------------------------------------------------------------------- actions


def cluster_targets(address: str | None, node_id: str, pids: Sequence[int], scope: str = "pid"
                    ) -> list[Target]:
    """Turn pids of one node into targets (scope pid|group|tree), checked there; ValueError names a pid
    that node does not have."""
    connect(address)
    got = _on_nodes([node_id], "targets", list(pids), scope)[node_id]
    if isinstance(got, BaseException):
        raise ClusterError(f"node {node_id[:8]}: {_error_text(got)}")
    if isinstance(got, str):
        raise ValueError(f"{got} on node {node_id[:8]}")
    return list(got)


def cluster_resolve(address: str | None, node_id: str, targets: Sequence[Target]) -> list[NodeMember]:
    """The dry run on the owning node (Ray's processes marked protected unless named alone by pid)."""
    connect(address)
    got = _on_nodes([node_id], "resolve", list(targets))[node_id]
    if isinstance(got, BaseException):
        raise ClusterError(f"node {node_id[:8]}: {_error_text(got)}")
    return [NodeMember(node_id, m) for m in got]


def cluster_signal_many(address: str | None, action: str, targets_by_node: Mapping[str, Sequence[Target]],
                        grace: float = 5.0, expect: Mapping[str, Mapping[int, int]] | None = None
                        ) -> list[NodeSignalResult]:
    """term|kill|pause|resume on several nodes at once, each on its own node by its agent. `expect`: per node,
    pid -> start ticks of the targets as the caller's dry run saw them (a pid reused since is not signalled)."""
    if action not in nodeops.ACTIONS:
        raise ValueError(f"unknown action {action!r} (one of {', '.join(nodeops.ACTIONS)})")
    connect(address)
    wanted = {nid: list(ts) for nid, ts in targets_by_node.items() if ts}
    if not wanted:
        return []
    got: dict[str, Any] = {}
    refs = {}
    for nid, ts in wanted.items():
        try:
            refs[nid] = agent(nid).act.remote(action, ts, grace, dict((expect or {}).get(nid, {})) or None)
        except Exception as e:  # noqa: BLE001
            got[nid] = e
    for nid, ref in refs.items():
        try:
            got[nid] = ray.get(ref, timeout=CALL_TIMEOUT + grace + KILL_CONFIRM_TIMEOUT)
        except Exception as e:  # noqa: BLE001
            _forget(nid)
            got[nid] = e
    out: list[NodeSignalResult] = []
    errors = []
    for nid in wanted:
        v = got[nid]
        if isinstance(v, BaseException):
            errors.append(f"node {nid[:8]}: {_error_text(v)}")
            continue
        reported, results = v
        if reported != nid:
            raise RoutingError(f"node {nid[:8]}'s agent acted on node {reported[:8]}")
        out.extend(NodeSignalResult(reported, r) for r in results)
    if errors:
        raise ClusterError("; ".join(errors))
    return out


def cluster_signal(address: str | None, node_id: str, action: str, targets: Sequence[Target] | Target | int,
                   grace: float = 5.0, expect: Mapping[int, int] | None = None) -> list[NodeSignalResult]:
    """term|kill|pause|resume `targets` (pids of that node) on node_id, with the core's escalation and
    pinning there, Ray's own processes refused unless named alone by pid."""
    if isinstance(targets, (int, Target)):
        targets = [targets if isinstance(targets, Target) else Target.pid(targets)]
    return cluster_signal_many(address, action, {node_id: list(targets)}, grace,
                               {node_id: expect} if expect else None)


# ------------------------------------------------------------------------------------- tasks


def tracked_tasks(address: str | None = None, job_id: str | None = None) -> list[TaskRecord]:
    """What the registry holds: running tracked tasks, and finished ones that left processes running."""
    return list(ray.get(registry(address).tasks.remote(job_id), timeout=CALL_TIMEOUT))


def _end_entries(rec: TaskRecord, entries: Sequence[TaskEntry], with_worker: bool, grace: float,
                 force: bool) -> list[NodeSignalResult]:
    by_node: dict[str, list[TaskEntry]] = {}
    for e in entries:
        by_node.setdefault(e.node_id, []).append(e)
    if with_worker:
        by_node.setdefault(rec.node_id, [])
    refs = {}
    for nid, es in by_node.items():
        wpid, wticks = (rec.worker_pid, rec.worker_start_ticks) if with_worker and nid == rec.node_id else (0, 0)
        try:
            refs[nid] = agent(nid).end_task.remote(es, wpid, wticks, grace, force, rec.started_ticks)
        except Exception as e:  # noqa: BLE001 - a node that is gone took its processes with it
            log.warning("procguard: cannot reach node %s to end task %s: %s", nid[:8], rec.task_id, e)
    out: list[NodeSignalResult] = []
    for nid, ref in refs.items():
        try:
            reported, results = ray.get(ref, timeout=CALL_TIMEOUT + grace + KILL_CONFIRM_TIMEOUT)
        except Exception as e:  # noqa: BLE001
            _forget(nid)
            log.warning("procguard: node %s failed to end task %s: %s", nid[:8], rec.task_id, e)
            continue
        if reported != nid:
            raise RoutingError(f"node {nid[:8]}'s agent acted on node {reported[:8]}")
        out.extend(NodeSignalResult(reported, r) for r in results)
    return out


def _end_task(task_id: str, grace: float, force: bool, ref: Any = None, recursive: bool = False
              ) -> CancelReport:
    reg = registry()
    rec: TaskRecord | None = ray.get(reg.begin_cancel.remote(task_id), timeout=CALL_TIMEOUT)
    results: list[NodeSignalResult] = []
    if rec is not None:
        results = _end_entries(rec, rec.entries, rec.state in ("running", "cancelling"), grace, force)
    cancel_error = None
    if ref is not None:
        try:
            ray.cancel(ref, force=force, recursive=recursive)
        except Exception as e:  # noqa: BLE001 - e.g. force on an actor task
            cancel_error = _error_text(e)
    late: TaskRecord | None = ray.get(reg.end_cancel.remote(task_id), timeout=CALL_TIMEOUT)
    if late is not None:
        done = {(r.node_id, r.pid) for r in results}
        known = {(e.node_id, e.pid, e.start_ticks) for e in (rec.entries if rec else ())}
        fresh = [e for e in late.entries if (e.node_id, e.pid, e.start_ticks) not in known]
        if fresh:
            more = _end_entries(late, fresh, False, grace, force)
            results.extend(r for r in more if (r.node_id, r.pid) not in done)
    state = "untracked" if rec is None else "finished" if rec.state == "finished" else "cancelled"
    return CancelReport(task_id, rec.node_id if rec else None, state, tuple(results), cancel_error)


def cancel(ref: Any, grace: float = 5.0, force: bool = False, *, recursive: bool = False) -> CancelReport:
    """Cancel the task behind `ref`: every process tree it started ends on the node that owns it (SIGTERM,
    SIGKILL after `grace`; `force`: SIGKILL at once), then `ray.cancel(ref, force=force, recursive=recursive)`.

    A tracked task that returns because its child died reports TaskCancelledError to `ray.get`. The report
    lists each process's outcome with the node id its agent reported.

    `recursive` is off by default, unlike ray.cancel's: a recursive cancel also cancels the task's own calls to
    the registry actor that it makes while its child dies, and Ray then stalls that worker's later calls to
    the registry (30 s "waiting for seq_no", then failed), so the next tracked task on that worker hangs.
    Cancel a task's own Ray child tasks with ray.cancel on their refs."""
    if grace < 0:
        raise ValueError(f"grace must be >= 0, not {grace}")
    if not ray.is_initialized():
        raise ClusterError("cancel() needs a connected driver (ray.init)")
    return _end_task(ref.task_id().hex(), grace, force, ref, recursive)


def cancel_task_id(task_id: str, grace: float = 5.0, force: bool = False, address: str | None = None
                   ) -> CancelReport:
    """End a tracked task's processes by task id (hex) without a ref (no ray.cancel: from another driver)."""
    connect(address)
    return _end_task(task_id, grace, force)


def cancel_job(job_id: str | None = None, grace: float = 5.0, force: bool = False,
               address: str | None = None) -> list[CancelReport]:
    """End the processes of every tracked task of a job (default: this driver's job)."""
    connect(address)
    job = job_id if job_id is not None else ray.get_runtime_context().get_job_id()
    recs = tracked_tasks(job_id=job)
    return [_end_task(r.task_id, grace, force) for r in recs]


_sigterm_prev: Any = None


def cleanup_on_sigterm(grace: float = 2.0) -> Callable[[], None]:
    """On SIGTERM to this driver (what `ray job stop` sends), end the process trees of every tracked task of
    this job on their nodes, then hand over to the handler that was there (after ray.init, Ray's own, which
    exits; a SIGTERM that lands inside ray.get makes that exit status 1), or exit 143 if there was none.
    Call from the main thread after ray.init. Returns a function that puts the previous handler back.

    `ray job stop` SIGKILLs after RAY_JOB_STOP_WAIT_TIME_S (3 s by default): keep `grace` below that."""
    if not ray.is_initialized():
        raise ClusterError("cleanup_on_sigterm() needs a connected driver (ray.init)")
    job = ray.get_runtime_context().get_job_id()
    prev = signal.getsignal(signal.SIGTERM)
    running = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if running.is_set():
            return
        running.set()
        try:
            reports = cancel_job(job, grace)
            n = sum(len(r.results) for r in reports)
            log.info("procguard: SIGTERM: ended %d process(es) of %d tracked task(s)", n, len(reports))
        except Exception as e:  # noqa: BLE001 - exit anyway
            log.warning("procguard: SIGTERM clean-up failed: %s", e)
        if callable(prev):
            prev(signum, frame)
            return
        if prev == signal.SIG_IGN:
            running.clear()
            return
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, prev)

    return restore


def shutdown_agents(address: str | None = None) -> int:
    """Kill procguard's detached agents and registry in the cluster (they are recreated on demand)."""
    connect(address)
    n = 0
    for name in [REGISTRY_NAME] + [AGENT_PREFIX + nd.node_id for nd in nodes()]:
        try:
            h = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            continue
        ray.kill(h, no_restart=True)
        n += 1
    with _lock:
        _cache.clear()
    return n


__all__ = ["CancelReport", "ClusterError", "NodeInfo", "NodeMember", "NodeResult", "NodeSignalResult",
           "NodeSnapshot", "RoutingError", "agent", "cancel", "cancel_job", "cancel_task_id", "cleanup_on_sigterm",
           "cluster_duplicates", "cluster_gpu", "cluster_locks", "cluster_resolve", "cluster_signal",
           "cluster_signal_many", "cluster_snapshot", "cluster_targets", "connect", "find_node", "node_call",
           "nodes", "registry", "shutdown_agents", "tracked_tasks"]
