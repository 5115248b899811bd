"""Driver side of cluster mode: connect, list nodes, reach each node's agent, see and act on every node.

Every function that takes `address` connects once (`ray.init(address=...)`, quiet) unless this process is
already connected, and stays connected: later calls reuse the connection (and the agents found).

Every node gets `timeout` seconds of its own (NODE_TIMEOUT by default; an action gets its grace on top), all
nodes at once: a node that does not answer in time, or that dies meanwhile, is reported as a failure naming
it (NodeSnapshot.error, NodeResult.error, NodeFailure), and the other nodes' answers still come back.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from procguard.core import signals
from procguard.core.cluster import nodeops
from procguard.core.cluster._actors import (
    AGENT_PREFIX,
    NAMESPACE,
    PROTOCOL,
    REGISTRY_NAME,
    AgentActor,
    RegistryActor,
)
from procguard.core.cluster.nodeops import TaskOwner, TaskRecord
from procguard.core.signals import KILL_CONFIRM_TIMEOUT, Member, Outcome, SignalResult, Target
from procguard.core.snapshot import Proc, Snapshot

log = logging.getLogger(__name__)

NODE_TIMEOUT = 10.0  # seconds each node gets to answer (an action gets its grace on top)
CALL_TIMEOUT = NODE_TIMEOUT  # the former name

# The outcome of a process on a node that could not be reached (it died, or did not answer in time).
UNREACHABLE = Outcome.UNREACHABLE


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
class NodeFailure:
    """A node that failed a query or an action: it did not answer within its timeout, died, or is not (or no
    longer) a live node of the cluster."""

    node: NodeInfo
    error: str  # one line, without the node's name
    timed_out: bool = False

    @property
    def node_id(self) -> str:
        return self.node.node_id

    def __str__(self) -> str:
        where = f" ({self.node.ip})" if self.node.ip else ""
        return f"node {self.node.short}{where}: {self.error}"

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node.node_id,
            "node_ip": self.node.ip,
            "error": self.error,
            "timed_out": self.timed_out,
        }


class NodeFailures(ClusterError):
    """An action failed on some nodes: `failures` names them, `results` holds what the other nodes did (and
    an `unreachable` result for each target of a failed node). The message is one line."""

    def __init__(self, failures: Sequence[NodeFailure], results: Sequence[NodeSignalResult]) -> None:
        super().__init__("; ".join(str(f) for f in failures))
        self.failures = tuple(failures)
        self.results = tuple(results)


@dataclass(frozen=True)
class NodeResult:
    """A node-local report (duplicates, locks, gpu...) with the node it came from; error if it failed."""

    node: NodeInfo
    value: Any = None
    error: str | None = None
    timed_out: bool = False

    @property
    def failure(self) -> NodeFailure | None:
        return NodeFailure(self.node, self.error, self.timed_out) if self.error is not None else None


@dataclass(frozen=True)
class NodeSnapshot:
    node: NodeInfo
    snapshot: Snapshot | None
    ray_kinds: Mapping[int, str] = field(default_factory=dict)  # pid -> what part of Ray it is
    error: str | None = None
    # pid -> the Ray task (or actor) that owns it: every Ray worker, every process of a tracked task.
    owners: Mapping[int, TaskOwner] = field(default_factory=dict)
    timed_out: bool = False

    @property
    def failure(self) -> NodeFailure | None:
        return NodeFailure(self.node, self.error, self.timed_out) if self.error is not None else None


@dataclass(frozen=True)
class NodeSignalResult:
    """One process's outcome; node_id is the node the agent that acted reported for itself. `unreachable`:
    the node died or did not answer, so nothing is known of this process (result.reason says why)."""

    node_id: str
    result: SignalResult
    unreachable: bool = False

    @property
    def pid(self) -> int:
        return self.result.pid

    @property
    def ok(self) -> bool:
        return not self.unreachable and self.result.ok

    @property
    def outcome(self) -> str:
        """The outcome's name: an Outcome value, or "unreachable"."""
        return "unreachable" if self.unreachable else self.result.outcome.value

    def to_json(self) -> dict[str, object]:
        return {"node": self.node_id, **self.result.to_json(), "outcome": self.outcome}


@dataclass(frozen=True)
class NodeMember:
    node_id: str
    member: Member


def unreachable_result(node_id: str, pid: int, why: str) -> NodeSignalResult:
    return NodeSignalResult(node_id, SignalResult(pid, UNREACHABLE, 0.0, why, "", (), "?"), unreachable=True)


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
            ray.init(
                address=address or "auto",
                logging_level=logging.ERROR,
                log_to_driver=False,
                configure_logging=True,
            )
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClusterError(f"cannot connect to the Ray cluster at {address or 'auto'}: {msg}") from e


def _key() -> str:
    return str(ray.get_runtime_context().gcs_address)


def _cache_get(name: str) -> Any:
    with _lock:
        return _cache.get(f"{_key()}|{name}")


def _cache_put(name: str, value: Any) -> Any:
    with _lock:
        return _cache.setdefault(f"{_key()}|{name}", value)


def _forget(name: str) -> None:
    with _lock, contextlib.suppress(Exception):
        _cache.pop(f"{_key()}|{name}", None)


def _all_nodes() -> list[dict[str, Any]]:
    return list(ray.nodes())


def _info(n: Mapping[str, Any]) -> NodeInfo:
    return NodeInfo(
        n["NodeID"],
        n.get("NodeManagerAddress", ""),
        n.get("NodeManagerHostname", ""),
        "node:__internal_head__" in (n.get("Resources") or {}),
    )


def nodes(address: str | None = None) -> list[NodeInfo]:
    """The live nodes, head first."""
    connect(address)
    out = [_info(n) for n in _all_nodes() if n.get("Alive")]
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


# ------------------------------------------------------------------------------------- calls


class _Failed(NamedTuple):
    """A node's call that brought no answer: why (one line), and whether it ran out of time."""

    error: str
    timed_out: bool = False


_LATE = _Failed("")  # marker: not ready by the deadline


_GONE = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnschedulableError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.WorkerCrashedError,
)


def _error_text(e: BaseException) -> str:
    """One line. An agent that died or can't be placed any more: its node is gone, mostly (Ray's own message
    for it is a paragraph)."""
    if isinstance(e, _GONE):
        return f"unreachable: the node died, or its procguard agent did ({type(e).__name__})"
    text = str(e).strip()
    line = text.splitlines()[-1] if text else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _secs(t: float) -> str:
    return f"{t:g} s"


def _live_ids() -> set[str]:
    return {n["NodeID"] for n in _all_nodes() if n.get("Alive")}


NODE_CHECK = 1.0  # seconds between looks at which nodes are alive while waiting for them


def _wait_all(refs: Sequence[Any], deadline: float, nodes: Sequence[str] | None = None) -> list[Any]:
    """Each ref's value, the exception it raised, or _LATE when not ready by `deadline` (all waited at once).
    With `nodes` (the node each ref runs on), a ref whose node the GCS reports dead meanwhile is failed at
    once: a call in flight to a node that died may otherwise not fail before Ray gives up on it."""
    out: list[Any] = [_LATE] * len(refs)
    pending = dict(enumerate(refs))
    next_check = time.monotonic() + NODE_CHECK
    while pending:
        now = time.monotonic()
        # Past the deadline (another node's agent start used it up), an answer made in time still counts: one
        # look, without waiting for the answer to be fetched to this node (ray.get below fetches it).
        left = max(0.0, deadline - now)
        step = left if nodes is None else min(left, max(0.0, next_check - now))
        ready, _ = ray.wait(
            list(pending.values()), num_returns=len(pending), timeout=step, fetch_local=left > 0
        )
        done = set(ready)
        for i, ref in list(pending.items()):
            if ref not in done:
                continue
            del pending[i]
            try:
                out[i] = ray.get(ref, timeout=NODE_TIMEOUT)
            except Exception as e:  # noqa: BLE001 - a failed call is reported, not raised
                out[i] = e
        if left <= 0:
            break
        if nodes is not None and pending and time.monotonic() >= next_check:
            next_check = time.monotonic() + NODE_CHECK
            live = _live_ids()
            for i in [i for i in pending if nodes[i] not in live]:
                del pending[i]
                out[i] = _Failed("the node died (the cluster reports it dead)")
    return out


def _registry_handle() -> Any:
    with contextlib.suppress(ValueError):
        return ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
    return RegistryActor.options(
        name=REGISTRY_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(_head_id(), soft=False),
    ).remote()


def registry(address: str | None = None, timeout: float = NODE_TIMEOUT) -> Any:
    """The registry actor (detached, on the head node), created on first use; one left by an older procguard
    (another protocol) is replaced. ClusterError when it does not answer within `timeout`."""
    connect(address)
    h = _cache_get("registry")
    if h is not None:
        return h
    for _attempt in range(2):
        h = _registry_handle()
        (v,) = _wait_all([h.ping.remote()], time.monotonic() + timeout)
        if isinstance(v, (_Failed, BaseException)):
            why = (
                _error_text(v) if isinstance(v, BaseException) else f"did not answer within {_secs(timeout)}"
            )
            raise ClusterError(f"procguard's registry on the head node: {why}")
        if v[2] == PROTOCOL:
            return _cache_put("registry", h)
        ray.kill(h, no_restart=True)
    raise ClusterError("procguard's registry on the head node: cannot replace an older one")


def _existing_registry(timeout: float) -> Any:
    """The registry if there is one (a cluster where no task was ever tracked has none: a view does not
    create it), else None."""
    if _cache_get("registry") is None:
        try:
            ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
        except ValueError:
            return None
    return registry(timeout=timeout)


def registry_call(method: str, *args: Any, timeout: float = NODE_TIMEOUT) -> Any:
    """One call to the registry; ClusterError (one line) when it fails or does not answer in time."""
    (v,) = _wait_all([getattr(registry(timeout=timeout), method).remote(*args)], time.monotonic() + timeout)
    if isinstance(v, (_Failed, BaseException)):
        _forget("registry")
        why = _error_text(v) if isinstance(v, BaseException) else f"did not answer within {_secs(timeout)}"
        raise ClusterError(f"procguard's registry on the head node: {why}")
    return v


def _new_agent(node_id: str) -> Any:
    return AgentActor.options(
        name=AGENT_PREFIX + node_id,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote()


def _agents(node_ids: Iterable[str], deadline: float) -> dict[str, Any]:
    """node id -> its agent's handle, or _Failed. Missing agents are created (one left by an older procguard,
    another protocol, is replaced) and pinged, all nodes at once, until `deadline`."""
    out: dict[str, Any] = {}
    todo: list[str] = []
    for nid in dict.fromkeys(node_ids):
        h = _cache_get(AGENT_PREFIX + nid)
        if h is not None:
            out[nid] = h
        else:
            todo.append(nid)
    for _attempt in range(2):
        if not todo:
            break
        handles: dict[str, Any] = {}
        for nid in todo:
            try:
                handles[nid] = _new_agent(nid)
            except Exception as e:  # noqa: BLE001 - one node's failure is reported, not raised
                out[nid] = _Failed(_error_text(e))
        pings = _wait_all([h.ping.remote() for h in handles.values()], deadline, list(handles))
        todo = []
        for (nid, h), v in zip(handles.items(), pings, strict=True):
            if v is _LATE:
                out[nid] = _Failed("its procguard agent did not answer in time", True)
            elif isinstance(v, _Failed):
                out[nid] = v
            elif isinstance(v, BaseException):
                out[nid] = _Failed(_error_text(v))
            elif v[2] != PROTOCOL:
                with contextlib.suppress(Exception):
                    ray.kill(h, no_restart=True)
                todo.append(nid)
            elif v[0] != nid:
                raise RoutingError(f"the agent for node {nid[:8]} runs on node {v[0][:8]}")
            else:
                out[nid] = _cache_put(AGENT_PREFIX + nid, h)
    for nid in todo:
        out[nid] = _Failed("cannot replace an older procguard agent")
    return out


def agent(node_id: str, address: str | None = None, timeout: float = NODE_TIMEOUT) -> Any:
    """The agent actor pinned to node_id (num_cpus=0, hard node affinity), created on first use."""
    connect(address)
    h = _agents([node_id], time.monotonic() + timeout)[node_id]
    if isinstance(h, _Failed):
        raise ClusterError(f"node {node_id[:8]}: {h.error}")
    return h


Call = tuple[str, str, tuple[Any, ...]]  # (node id, agent method, args)


def _calls(calls: Sequence[Call], timeout: float, extra: float = 0.0) -> list[Any]:
    """Each call on its node's agent, all at once: its value, or _Failed. Every node gets `timeout` seconds
    (plus `extra`, an action's grace) from now, its agent's start included; a node that answers from
    elsewhere than it was pinned to is a RoutingError."""
    deadline = time.monotonic() + timeout
    refs: list[Any] = []
    out: list[Any] = [None] * len(calls)

    def send(i: int, h: Any) -> None:
        _nid, method, args = calls[i]
        if isinstance(h, _Failed):
            out[i] = h
            return
        try:
            refs.append((i, getattr(h, method).remote(*args)))
        except Exception as e:  # noqa: BLE001
            out[i] = _Failed(_error_text(e))

    # The nodes whose agent is known get their call at once: waiting for another node's agent to start (or
    # to answer its ping) must not use up their time.
    later: list[int] = []
    for i, (nid, _m, _a) in enumerate(calls):
        h = _cache_get(AGENT_PREFIX + nid)
        if h is None:
            later.append(i)
        else:
            send(i, h)
    if later:
        handles = _agents([calls[i][0] for i in later], deadline)
        for i in later:
            send(i, handles[calls[i][0]])
    got = _wait_all([r for _i, r in refs], deadline + extra, [calls[i][0] for i, _r in refs])
    for (i, _r), v in zip(refs, got, strict=True):
        nid = calls[i][0]
        if isinstance(v, (_Failed, BaseException)):
            _forget(AGENT_PREFIX + nid)
            out[i] = (
                _Failed(_error_text(v))
                if isinstance(v, BaseException)
                else v
                if v is not _LATE
                else _Failed(f"did not answer within {_secs(timeout + extra)}", True)
            )
            continue
        reported, value = v
        if reported != nid:
            raise RoutingError(f"node {nid[:8]}'s agent answered from node {reported[:8]}")
        out[i] = value
    return out


def _on_nodes(
    node_ids: Iterable[str], method: str, *args: Any, timeout: float = NODE_TIMEOUT
) -> dict[str, Any]:
    """method(*args) on each node's agent at once; node_id -> value or _Failed."""
    ids = list(dict.fromkeys(node_ids))
    return dict(zip(ids, _calls([(nid, method, args) for nid in ids], timeout), strict=True))


def _node_list(address: str | None, only: Iterable[str] | None) -> tuple[list[NodeInfo], list[NodeFailure]]:
    """The live nodes (or those of `only`), and a failure for each node of `only` that is not live."""
    connect(address)
    every = {n["NodeID"]: n for n in _all_nodes()}
    live = sorted(
        (_info(n) for n in every.values() if n.get("Alive")), key=lambda n: (not n.is_head, n.node_id)
    )
    if only is None:
        return live, []
    wanted = list(dict.fromkeys(only))
    by_id = {n.node_id: n for n in live}
    gone = [
        NodeFailure(
            _info(every[nid]) if nid in every else NodeInfo(nid, "", "", False),
            "left the cluster (dead)" if nid in every else "is not a node of the cluster",
        )
        for nid in wanted
        if nid not in by_id
    ]
    return [by_id[nid] for nid in wanted if nid in by_id], gone


def _one(
    address: str | None, node_id: str, method: str, *args: Any, timeout: float, extra: float = 0.0
) -> Any:
    connect(address)
    (v,) = _calls([(node_id, method, args)], timeout, extra)
    if isinstance(v, _Failed):
        raise ClusterError(f"node {node_id[:8]}: {v.error}")
    return v


# ------------------------------------------------------------------------------------- ownership

_state_api_down_until = 0.0


def _actor_owners() -> dict[tuple[str, int], TaskOwner]:
    """(node, pid) -> the live actor that process runs, from the GCS actor table (Ray's private state module,
    as cheap as it gets; when it is not there, actors are known only by their workers' titles)."""
    try:
        from ray._private import state as ray_state

        table = ray_state.actors(actor_state_name="ALIVE")
    except Exception as e:  # noqa: BLE001 - optional
        log.debug("procguard: no actor table: %s", e)
        return {}
    out: dict[tuple[str, int], TaskOwner] = {}
    for aid, a in (table or {}).items():
        node = (a.get("Address") or {}).get("NodeID")
        pid = a.get("Pid")
        if node and pid:
            out[(node, int(pid))] = TaskOwner(
                a.get("JobID") or None, None, aid, a.get("ActorClassName") or None
            )
    return out


def _running_tasks(timeout: float) -> dict[tuple[str, int], TaskOwner]:
    """(node, pid) -> the task each worker runs, from Ray's state API. It needs the cluster's dashboard: where
    there is none, the answer is empty (and not asked again for a minute)."""
    global _state_api_down_until
    if time.monotonic() < _state_api_down_until:
        return {}
    try:
        from ray.util.state import list_tasks

        tasks = list_tasks(
            filters=[("state", "=", "RUNNING")],
            limit=10_000,
            timeout=max(1, int(timeout)),
            raise_on_missing_output=False,
        )
    except Exception as e:  # noqa: BLE001 - optional
        log.debug("procguard: no state API: %s", e)
        _state_api_down_until = time.monotonic() + 60.0
        return {}
    out: dict[tuple[str, int], TaskOwner] = {}
    for t in tasks:
        get = t.get if isinstance(t, dict) else lambda k, t=t: getattr(t, k, None)
        node, pid = get("node_id"), get("worker_pid")
        if node and pid:
            out[(node, int(pid))] = TaskOwner(
                get("job_id"), get("task_id"), get("actor_id"), None, get("name") or get("func_or_class_name")
            )
    return out


def _merge(a: TaskOwner | None, b: TaskOwner | None) -> TaskOwner | None:
    """a's fields, with b's where a has none."""
    if a is None or b is None:
        return a or b
    return TaskOwner(
        a.job_id or b.job_id,
        a.task_id or b.task_id,
        a.actor_id or b.actor_id,
        a.actor_class or b.actor_class,
        a.function or b.function,
        a.role,
        a.tracked or b.tracked,
    )


class _OwnerSources(NamedTuple):
    records: list[TaskRecord]
    workers: dict[tuple[str, int], TaskOwner]


def _owner_sources(reg_ref: Any, deadline: float, timeout: float) -> _OwnerSources:
    """What ownership is made of: the registry's tracked tasks (asked before: reg_ref), Ray's actor table and,
    where there is a dashboard, its running tasks."""
    actors = _actor_owners()
    running = _running_tasks(timeout)
    workers = {
        k: o
        for k in actors.keys() | running.keys()
        if (o := _merge(running.get(k), actors.get(k))) is not None
    }
    records: list[TaskRecord] = []
    if reg_ref is not None:
        (v,) = _wait_all([reg_ref], deadline)
        if isinstance(v, (_Failed, BaseException)):
            _forget("registry")
            log.warning(
                "procguard: the registry did not list tracked tasks: %s",
                _error_text(v) if isinstance(v, BaseException) else "no answer in time",
            )
        else:
            records = list(v)
    return _OwnerSources(records, workers)


# ------------------------------------------------------------------------------------- views


def cluster_snapshot(
    address: str | None = None,
    node_ids: Iterable[str] | None = None,
    *,
    node_timeout: float = NODE_TIMEOUT,
    owners: bool = True,
) -> list[NodeSnapshot]:
    """Every node's process table (head first; or those of node_ids, in that order), with Ray's own
    processes named in ray_kinds and, with `owners`, the task or actor behind each Ray worker and each
    process of a tracked task in owners. A node that fails (no answer within node_timeout, dead, not in the
    cluster) comes back with `error` set and no snapshot."""
    ns, gone = _node_list(address, node_ids)
    deadline = time.monotonic() + node_timeout
    reg_ref = None
    if owners:
        try:
            reg = _existing_registry(node_timeout)
            reg_ref = reg.tasks.remote(None) if reg is not None else None
        except ClusterError as e:
            log.warning("procguard: %s", e)
    got = _on_nodes([n.node_id for n in ns], "snapshot", timeout=node_timeout)
    sources = _owner_sources(reg_ref, deadline, node_timeout) if owners else _OwnerSources([], {})
    out: list[NodeSnapshot] = []
    for n in ns:
        v = got[n.node_id]
        if isinstance(v, _Failed):
            out.append(NodeSnapshot(n, None, {}, v.error, timed_out=v.timed_out))
            continue
        procs, when, kinds = v
        snap = nodeops.rebuild_snapshot(procs, when)
        own: dict[int, TaskOwner] = {}
        if owners:
            known = {pid: o for (nid, pid), o in sources.workers.items() if nid == n.node_id}
            own = nodeops.owners_on_node(snap, n.node_id, sources.records, kinds, known)
        out.append(NodeSnapshot(n, snap, MappingProxyType(kinds), owners=MappingProxyType(own)))
    out.extend(NodeSnapshot(f.node, None, {}, f.error) for f in gone)
    return out


def task_owners(
    address: str | None = None, node_ids: Iterable[str] | None = None, *, node_timeout: float = NODE_TIMEOUT
) -> tuple[dict[tuple[str, int], TaskOwner], list[NodeFailure]]:
    """(node id, pid) -> owner for every Ray worker and every process of a tracked task, and the nodes that
    failed (see cluster_snapshot)."""
    snaps = cluster_snapshot(address, node_ids, node_timeout=node_timeout)
    owners = {(s.node.node_id, pid): o for s in snaps for pid, o in s.owners.items()}
    return owners, [f for s in snaps if (f := s.failure) is not None]


def task_processes(snaps: Iterable[NodeSnapshot], task: str) -> list[tuple[NodeInfo, Proc, TaskOwner]]:
    """The processes of one task (or actor) in cluster_snapshot's answer: `task` is its id or a prefix of 4+
    hex digits (TaskOwner.matches), node by node, in pid order."""
    out: list[tuple[NodeInfo, Proc, TaskOwner]] = []
    for s in snaps:
        if s.snapshot is None:
            continue
        for pid, o in sorted(s.owners.items()):
            p = s.snapshot.get(pid)
            if p is not None and o.matches(task):
                out.append((s.node, p, o))
    return out


def _reports(
    address: str | None, fn: str, kwargs: dict[str, Any], node_ids: Iterable[str] | None, timeout: float
) -> list[NodeResult]:
    ns, gone = _node_list(address, node_ids)
    got = _on_nodes([n.node_id for n in ns], "call", fn, kwargs, timeout=timeout)
    out = [
        NodeResult(n, None, v.error, v.timed_out)
        if isinstance(v := got[n.node_id], _Failed)
        else NodeResult(n, v)
        for n in ns
    ]
    return out + [NodeResult(f.node, None, f.error) for f in gone]


def cluster_duplicates(
    address: str | None = None,
    node_ids: Iterable[str] | None = None,
    *,
    node_timeout: float = NODE_TIMEOUT,
    **kwargs: Any,
) -> list[NodeResult]:
    """duplicates.duplicate_report(**kwargs) on every node: value is that node's DuplicateReport."""
    return _reports(address, "duplicates", kwargs, node_ids, node_timeout)


def cluster_locks(
    address: str | None = None,
    node_ids: Iterable[str] | None = None,
    *,
    node_timeout: float = NODE_TIMEOUT,
    **kwargs: Any,
) -> list[NodeResult]:
    """held_locks.list_locks(**kwargs) on every node (dirs=, managed_only=): value is list[HeldLock]."""
    return _reports(address, "locks", kwargs, node_ids, node_timeout)


def cluster_gpu(
    address: str | None = None,
    node_ids: Iterable[str] | None = None,
    *,
    node_timeout: float = NODE_TIMEOUT,
    **kwargs: Any,
) -> list[NodeResult]:
    """gpu.gpu_snapshot(**kwargs) on every node: value is that node's GpuSnapshot."""
    return _reports(address, "gpu", kwargs, node_ids, node_timeout)


def node_call(
    address: str | None, node_id: str, fn: str, *, node_timeout: float = NODE_TIMEOUT, **kwargs: Any
) -> Any:
    """One node-local call on node_id's agent (see NodeAgent.call); ClusterError when the node fails. The
    node gets node_timeout, plus the call's own `grace` and `timeout` (a flush's wait), to answer."""
    extra = float(kwargs.get("grace", 0.0)) + float(kwargs.get("timeout", 0.0) if fn == "flush" else 0.0)
    return _one(address, node_id, "call", fn, kwargs, timeout=node_timeout, extra=extra)


# ------------------------------------------------------------------------------------- actions


def cluster_targets(
    address: str | None,
    node_id: str,
    pids: Sequence[int],
    scope: str = "pid",
    *,
    node_timeout: float = NODE_TIMEOUT,
) -> list[Target]:
    """Turn pids of one node into targets (scope pid|group|tree), checked there; ValueError names a pid
    that node does not have."""
    got = _one(address, node_id, "targets", list(pids), scope, timeout=node_timeout)
    if isinstance(got, str):
        raise ValueError(f"{got} on node {node_id[:8]}")
    return list(got)


def cluster_resolve(
    address: str | None, node_id: str, targets: Sequence[Target], *, node_timeout: float = NODE_TIMEOUT
) -> list[NodeMember]:
    """The dry run on the owning node (Ray's processes marked protected unless named alone by pid)."""
    got = _one(address, node_id, "resolve", list(targets), timeout=node_timeout)
    return [NodeMember(node_id, m) for m in got]


def _per_node(
    address: str | None, wanted: Mapping[str, Any], method: str, args_of: Any, node_timeout: float
) -> tuple[dict[str, Any], dict[str, NodeInfo], list[NodeFailure]]:
    """method(*args_of(node id)) on each node of `wanted` at once: node id -> answer, node id -> NodeInfo, and
    the nodes that failed (no answer within node_timeout, dead, not in the cluster), in `wanted`'s order."""
    live, gone = _node_list(address, wanted)
    got = _calls([(n.node_id, method, args_of(n.node_id)) for n in live], node_timeout)
    failed: dict[str, NodeFailure] = {f.node_id: f for f in gone}
    out: dict[str, Any] = {}
    for n, v in zip(live, got, strict=True):
        if isinstance(v, _Failed):
            failed[n.node_id] = NodeFailure(n, v.error, v.timed_out)
        else:
            out[n.node_id] = v
    return out, {n.node_id: n for n in live}, [failed[nid] for nid in wanted if nid in failed]


def targets_on_nodes(
    address: str | None,
    pids_by_node: Mapping[str, Sequence[int]],
    scope: str = "pid",
    *,
    node_timeout: float = NODE_TIMEOUT,
) -> tuple[dict[str, list[Target]], list[NodeFailure]]:
    """cluster_targets() on several nodes at once: node id -> targets, and the nodes that failed. ValueError
    names a pid a node that answered does not have."""
    wanted = {nid: list(pids) for nid, pids in pids_by_node.items() if pids}
    got, info, failures = _per_node(
        address, wanted, "targets", lambda nid: (wanted[nid], scope), node_timeout
    )
    for nid, v in got.items():
        if isinstance(v, str):
            raise ValueError(f"{v} on node {info[nid].short}")
    return {nid: list(v) for nid, v in got.items()}, failures


def resolve_on_nodes(
    address: str | None,
    targets_by_node: Mapping[str, Sequence[Target]],
    *,
    node_timeout: float = NODE_TIMEOUT,
) -> tuple[list[NodeMember], list[NodeFailure]]:
    """cluster_resolve() on several nodes at once (the dry run), and the nodes that failed."""
    wanted = {nid: list(ts) for nid, ts in targets_by_node.items() if ts}
    got, _info, failures = _per_node(address, wanted, "resolve", lambda nid: (wanted[nid],), node_timeout)
    return [NodeMember(nid, m) for nid in wanted if nid in got for m in got[nid]], failures


def signal_nodes(
    address: str | None,
    action: str,
    targets_by_node: Mapping[str, Sequence[Target]],
    grace: float = 5.0,
    expect: Mapping[str, Mapping[int, int]] | None = None,
    *,
    node_timeout: float = NODE_TIMEOUT,
) -> tuple[list[NodeSignalResult], list[NodeFailure]]:
    """term|kill|pause|resume on several nodes at once, each on its own node by its agent. `expect`: per node,
    pid -> start ticks of the targets as the caller's dry run saw them (a pid reused since is not signalled).

    Returns every node's results and the nodes that failed: each target of a failed node (no answer within
    timeout + grace, dead, not in the cluster) gets an `unreachable` result (pid: the target's id)."""
    signals.action_name(action)  # ValueError for an unknown action, before any node is asked
    wanted = {nid: list(ts) for nid, ts in targets_by_node.items() if ts}
    if not wanted:
        connect(address)
        return [], []
    live, gone = _node_list(address, wanted)
    info = {n.node_id: n for n in live} | {f.node_id: f.node for f in gone}
    calls: list[Call] = [
        (
            n.node_id,
            "act",
            (action, wanted[n.node_id], grace, dict((expect or {}).get(n.node_id, {})) or None),
        )
        for n in live
    ]
    got = _calls(calls, node_timeout, grace + KILL_CONFIRM_TIMEOUT)
    failed: dict[str, NodeFailure] = {f.node_id: f for f in gone}
    out: list[NodeSignalResult] = []
    for (nid, _m, _a), v in zip(calls, got, strict=True):
        if isinstance(v, _Failed):
            failed[nid] = NodeFailure(info[nid], v.error, v.timed_out)
        else:
            out.extend(NodeSignalResult(nid, r) for r in v)
    for nid, f in failed.items():
        out.extend(unreachable_result(nid, t.id, str(f)) for t in wanted[nid])
    return out, [failed[nid] for nid in wanted if nid in failed]


def cluster_signal_many(
    address: str | None,
    action: str,
    targets_by_node: Mapping[str, Sequence[Target]],
    grace: float = 5.0,
    expect: Mapping[str, Mapping[int, int]] | None = None,
    *,
    node_timeout: float = NODE_TIMEOUT,
) -> list[NodeSignalResult]:
    """signal_nodes(), raising NodeFailures (a ClusterError that carries every node's results) when a node
    failed."""
    results, failures = signal_nodes(
        address, action, targets_by_node, grace, expect, node_timeout=node_timeout
    )
    if failures:
        raise NodeFailures(failures, results)
    return results


def cluster_signal(
    address: str | None,
    node_id: str,
    action: str,
    targets: Sequence[Target] | Target | int,
    grace: float = 5.0,
    expect: Mapping[int, int] | None = None,
    *,
    node_timeout: float = NODE_TIMEOUT,
) -> list[NodeSignalResult]:
    """term|kill|pause|resume `targets` (pids of that node) on node_id, with the core's escalation and
    pinning there, Ray's own processes refused unless named alone by pid."""
    if isinstance(targets, (int, Target)):
        targets = [targets if isinstance(targets, Target) else Target.pid(targets)]
    return cluster_signal_many(
        address,
        action,
        {node_id: list(targets)},
        grace,
        {node_id: expect} if expect else None,
        node_timeout=node_timeout,
    )


# ------------------------------------------------------------------------------------- tasks


def tracked_tasks(
    address: str | None = None, job_id: str | None = None, *, node_timeout: float = NODE_TIMEOUT
) -> list[TaskRecord]:
    """What the registry holds: running tracked tasks, and finished ones that left processes running."""
    connect(address)
    return list(registry_call("tasks", job_id, timeout=node_timeout))


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


__all__ = [
    "CALL_TIMEOUT",
    "NODE_TIMEOUT",
    "UNREACHABLE",
    "ClusterError",
    "NodeFailure",
    "NodeFailures",
    "NodeInfo",
    "NodeMember",
    "NodeResult",
    "NodeSignalResult",
    "NodeSnapshot",
    "RoutingError",
    "agent",
    "cluster_duplicates",
    "cluster_gpu",
    "cluster_locks",
    "cluster_resolve",
    "cluster_signal",
    "cluster_signal_many",
    "cluster_snapshot",
    "cluster_targets",
    "connect",
    "find_node",
    "node_call",
    "nodes",
    "registry",
    "registry_call",
    "resolve_on_nodes",
    "shutdown_agents",
    "signal_nodes",
    "targets_on_nodes",
    "task_owners",
    "task_processes",
    "tracked_tasks",
    "unreachable_result",
]
