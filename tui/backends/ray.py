"""A Ray cluster as a data source for the app: every node's processes in one table, every action routed to the
node of each row by that node's procguard agent (procguard.core.cluster), which acts there with the core's
escalation, pid pinning and protections (Ray's own processes refused when a group or tree sweeps them up).

    backend = RayClusterBackend("auto")              # or node="head" / a node id, prefix or IP to start narrowed
    model = backend.collect()                        # a cluster Model: model.parts, one per node that answered
    backend.resolve_nodes(node_targets(keys, model)) # the dry run on every node at once
    backend.act_nodes("term", parts, grace=5.0)      # each node its part, at once (core's signal_nodes)

Pids are per node (another node may use the same number for another process): rows are keyed by (node, pid), a
Model part holds one node, and an action carries each node's targets with that node's snapshot (`NodeTargets`).
Each refresh asks every node at once, each with its own timeout (`node_timeout`): a node that fails is named in
`Model.failures` and the other nodes' rows still come. Differences from LiveBackend: `on_progress` gets one "done"
event when the remote actions have finished (the agents' escalation runs remotely); the guarded-process registry
is per node and not read (guarded processes show as unguarded, flush still goes to the node); cgroups and the
kernel's GPU holders are not read on remote nodes yet (NVML's list is).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from procguard.core import duplicates as _duplicates
from procguard.core import signals
from procguard.core.duplicates import DuplicateGroup, Instance, ScheduledInstance, TerminateReport
from procguard.core.gpu import GpuSnapshot
from procguard.core.identity import ScriptIdentity
from procguard.core.locks import HeldLock
from procguard.core.signals import Member, Progress, SignalResult, Target
from procguard.core.snapshot import Snapshot
from procguard.tui.backends import ProgressFn
from procguard.tui.model import Model, NodeTargets, NodeView, ProcExtra, cluster_model, make_model

NODE_TIMEOUT = 10.0  # seconds each node gets per refresh (core's default; --node-timeout of the CLI)


def _cluster() -> Any:
    import procguard.core.cluster as cluster  # Ray is loaded only when this backend is used

    return cluster


def disconnect() -> None:
    """Leave the cluster (ray.shutdown) if this process is connected; starts or imports nothing otherwise."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _failed(what: str, e: BaseException) -> str:
    return f"{what}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"


class RayClusterBackend:
    """Data and actions of every node of a Ray cluster (cluster mode of the `Backend` protocol). Thread-safe like
    LiveBackend."""

    static = False
    cluster = True

    def __init__(
        self,
        address: str = "auto",
        node: str | None = None,
        *,
        slow_interval: float = 5.0,
        node_timeout: float = NODE_TIMEOUT,
    ) -> None:
        cluster = _cluster()
        cluster.connect(address)  # a HOST:PORT nobody listens on fails at once, not after minutes
        self.address = address
        # --node: the node the app starts narrowed to (n cycles on from there); None: every node.
        self.start_node: str | None = cluster.find_node(node, cluster.nodes()).node_id if node else None
        self.slow_interval = slow_interval
        self.node_timeout = node_timeout
        self.locks_every_refresh = False
        self._lock = threading.Lock()  # one refresh at a time (held while the nodes answer)
        self._state = threading.Lock()  # the maps below, briefly: never waits on a node
        self._seq = 0
        self._snaps: dict[int, tuple[weakref.ref[Snapshot], str]] = {}  # id(part snapshot) -> its node
        self._locks_at = -math.inf
        self._locks: dict[str, tuple[tuple[HeldLock, ...], tuple[str, ...]]] = {}  # node -> (held, stale)
        # The reports of a refresh are asked for at once, so a node that times out costs one timeout, not four.
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="procguard-ray")

    def nodes(self) -> list[Any]:
        """The live nodes (NodeInfo: node_id, ip, hostname, is_head), head first."""
        return list(_cluster().nodes())

    def node_of(self, snapshot: Snapshot | None) -> str | None:
        """The node a part snapshot from collect() shows (None for one this backend did not make)."""
        if snapshot is None:
            return None
        with self._state:
            got = self._snaps.get(id(snapshot))
        if got is None or got[0]() is not snapshot:
            return None
        return got[1]

    def _node(self, snapshot: Snapshot | None) -> str:
        nid = self.node_of(snapshot)
        if nid is None:
            raise RuntimeError("not a snapshot of a node of this cluster: nothing was asked")
        return nid

    def _remember(self, snap: Snapshot, nid: str) -> None:
        """Which node snap shows. Entries go when their snapshot is collected."""
        key = id(snap)

        def forget(_ref: weakref.ref[Snapshot]) -> None:
            with self._state:
                self._snaps.pop(key, None)

        with self._state:
            self._snaps[key] = (weakref.ref(snap, forget), nid)

    # ------------------------------------------------------------------------------------------ data

    def _reports(self, fut: Future[Any] | None, what: str, errors: list[str]) -> dict[str, Any]:
        """node id -> value of a cluster_* report; a node's failure goes in that node's errors later."""
        if fut is None:
            return {}
        try:
            results = fut.result()
        except Exception as e:  # noqa: BLE001 - reported, the rest of the refresh still comes
            errors.append(_failed(what, e))
            return {}
        return {
            r.node.node_id: (r.value if r.error is None else _ReportError(f"{what}: {r.error}"))
            for r in results
        }

    def collect(self) -> Model:
        cluster = _cluster()
        timeout = self.node_timeout
        with self._lock:
            self._seq += 1
            seq = self._seq
            now = time.monotonic()
            locks_due = self.locks_every_refresh or now - self._locks_at >= self.slow_interval
            f_snap = self._pool.submit(cluster.cluster_snapshot, None, node_timeout=timeout, owners=True)
            f_gpu = self._pool.submit(cluster.cluster_gpu, None, node_timeout=timeout)
            f_dup = self._pool.submit(cluster.cluster_duplicates, None, node_timeout=timeout)
            f_locks = (
                self._pool.submit(cluster.cluster_locks, None, node_timeout=timeout) if locks_due else None
            )
            snaps = f_snap.result()  # the cluster itself gone: the app says "refresh failed" and tries again
            errors: list[str] = []
            gpus = self._reports(f_gpu, "gpu", errors)
            dups = self._reports(f_dup, "duplicates", errors)
            if f_locks is not None:
                self._update_locks(now, self._reports(f_locks, "locks", errors))
            parts: list[Model] = []
            failures = [*errors]
            for i, ns in enumerate(snaps, 1):
                if ns.snapshot is None:
                    failures.append(str(ns.failure))
                    continue
                nid = ns.node.node_id
                view = NodeView(nid, ns.node.ip, ns.node.is_head, i, len(snaps))
                self._remember(ns.snapshot, nid)
                parts.append(self._part(seq, view, ns, gpus.get(nid), dups.get(nid)))
            live = {ns.node.node_id for ns in snaps}
            with self._state:
                self._locks = {nid: v for nid, v in self._locks.items() if nid in live}
            return cluster_model(seq, parts, failures)

    def _update_locks(self, when: float, by_node: Mapping[str, Any]) -> None:
        """Each node's held and stale locks; a node whose answer failed keeps nothing (never another refresh's,
        nor another node's)."""
        with self._state:
            self._locks_at = when
            for nid, entries in by_node.items():
                if isinstance(entries, _ReportError):
                    self._locks[nid] = ((), ())
                else:
                    self._locks[nid] = (
                        tuple(e for e in entries if not e.stale),
                        tuple(e.path for e in entries if e.stale),
                    )

    def _part(self, seq: int, view: NodeView, ns: Any, gpu: Any, report: Any) -> Model:
        """One node's Model: its snapshot, GPU, duplicates and locks as that node reported them."""
        snap = ns.snapshot
        errors: list[str] = []
        if not isinstance(gpu, GpuSnapshot):
            why = str(gpu) if isinstance(gpu, _ReportError) else "gpu: no answer"
            errors.append(why)
            gpu = GpuSnapshot(False, f"GPU query failed: {why}", (), (), snap.time)
        with self._state:
            held, stale = self._locks.get(view.node_id, ((), ()))
        groups: Sequence[DuplicateGroup] = ()
        sched: Sequence[ScheduledInstance] = ()
        if isinstance(report, _ReportError) or report is None:
            errors.append(str(report) if report is not None else "duplicates: no answer")
        else:
            groups = _duplicates.enrich(report.groups, snap, gpu, held=held)
            filled = _duplicates.enrich(
                [DuplicateGroup(s.identity, (s.instance,)) for s in report.scheduler_managed],
                snap,
                gpu,
                held=held,
            )
            sched = [
                replace(s, instance=g.instances[0])
                for s, g in zip(report.scheduler_managed, filled, strict=True)
            ]
        owners = {pid: o.short for pid, o in ns.owners.items() if o.short}
        return make_model(
            seq,
            snap,
            gpu,
            duplicates=groups,
            scheduled=sched,
            locks=held,
            stale_locks=stale,
            errors=errors,
            node=view,
            owners=owners,
        )

    def proc_extra(self, pid: int, snapshot: Snapshot | None = None) -> ProcExtra:
        # The node agents don't explain duplicate identities yet (core/cluster/_actors.py has no "explain").
        why = "not available for a cluster node yet"
        try:
            cwd, env = self._call_on(self._node(snapshot), "proc_extra", pid=pid)
        except Exception:  # noqa: BLE001 - the details pane shows what it has
            return ProcExtra(None, None, None, why)
        return ProcExtra(cwd, env, None, why)

    def _call_on(self, nid: str, fn: str, **kwargs: Any) -> Any:
        return _cluster().node_call(None, nid, fn, node_timeout=self.node_timeout, **kwargs)

    # ------------------------------------------------------------------------------------------ actions

    # Each goes to the node of the snapshot (or NodeTargets) its dry run was made from.

    def resolve(self, targets: Sequence[Target], snapshot: Snapshot) -> list[Member]:
        nid = self._node(snapshot)
        return [
            nm.member
            for nm in _cluster().cluster_resolve(None, nid, list(targets), node_timeout=self.node_timeout)
        ]

    def resolve_nodes(
        self, parts: Sequence[NodeTargets]
    ) -> tuple[list[tuple[str, Member]], list[tuple[str, str]]]:
        members, failures = _cluster().resolve_on_nodes(
            None, {p.node: list(p.targets) for p in parts}, node_timeout=self.node_timeout
        )
        return [(nm.node_id, nm.member) for nm in members], [(f.node_id, str(f)) for f in failures]

    def act(
        self,
        action: str,
        targets: Sequence[Target],
        snapshot: Snapshot,
        *,
        grace: float = 5.0,
        on_progress: ProgressFn | None = None,
    ) -> list[SignalResult]:
        """One node's targets (the node of `snapshot`): see act_nodes."""
        return self.act_nodes(
            action,
            [NodeTargets(self._node(snapshot), "", tuple(targets), snapshot)],
            grace=grace,
            on_progress=on_progress,
        )

    def act_nodes(
        self,
        action: str,
        parts: Sequence[NodeTargets],
        *,
        grace: float = 5.0,
        on_progress: ProgressFn | None = None,
    ) -> list[SignalResult]:
        """Each node's agent runs core's `signals.run_action` on its own targets, all nodes at once. A node that
        fails gives an `unreachable` result naming it for each of its targets; the others' results still come."""
        action = signals.action_name(action)  # "terminate" -> "term"; an unknown one fails here, not remotely
        # What the confirm dialog showed: an agent refuses a pid that names another process by now.
        expect = {
            p.node: {
                t.id: s.start_ticks
                for t in p.targets
                if t.kind in ("pid", "tree")
                if (s := p.snapshot.get(t.id)) is not None
            }
            for p in parts
        }
        results, _failures = _cluster().signal_nodes(
            None,
            action,
            {p.node: list(p.targets) for p in parts},
            grace,
            expect,
            node_timeout=self.node_timeout,
        )
        out = [r.result for r in results]
        if on_progress is not None:
            on_progress(Progress("done", tuple(r.pid for r in out), 0.0))
        return out

    # Shorthands of act() for scripts and tests.
    def terminate(self, targets: Sequence[Target], grace: float, snapshot: Snapshot) -> list[SignalResult]:
        return self.act("term", targets, snapshot, grace=grace)

    def resume(self, targets: Sequence[Target], snapshot: Snapshot) -> list[SignalResult]:
        return self.act("resume", targets, snapshot)

    def plan_notes(self, kind: str, targets: Sequence[Target]) -> list[str]:
        return []  # no cgroup rows in cluster mode: the nodes don't send their cgroups yet

    def flush(self, pid: int, snapshot: Snapshot | None = None) -> str:
        return str(self._call_on(self._node(snapshot), "flush", pid=pid, timeout=10.0))

    def plan_duplicates(
        self, identity: ScriptIdentity, grace: float, snapshot: Snapshot, *, all_users: bool = False
    ) -> TerminateReport:
        return self._call_on(
            self._node(snapshot),
            "terminate_duplicates",
            keep="oldest",
            script=identity,
            grace=grace,
            dry_run=True,
            all_users=all_users,
        )

    def end_duplicates(
        self,
        identity: ScriptIdentity,
        grace: float,
        snapshot: Snapshot,
        on_progress: ProgressFn | None = None,
        *,
        victims: Sequence[Instance] | None = None,
        all_users: bool = False,
    ) -> TerminateReport:
        # The node's core re-checks every victim right before signalling it, like on this machine.
        report = self._call_on(
            self._node(snapshot),
            "terminate_duplicates",
            keep="oldest",
            script=identity,
            grace=grace,
            all_users=all_users,
            victims=None if victims is None else list(victims),
        )
        if on_progress is not None:
            on_progress(Progress("done", (), 0.0))
        return report

    def clean_locks(self, paths: Sequence[str]) -> list[Any]:
        """Each node removes those of `paths` it listed as stale (its core re-checks each under the file's own
        lock): a path is a file of the node that reported it."""
        with self._state:
            stale = {nid: [p for p in paths if p in v[1]] for nid, v in self._locks.items()}
        removed: list[Any] = []
        for nid, mine in stale.items():
            if mine:
                removed += list(self._call_on(nid, "clean_stale_locks", paths=mine))
        with self._state:
            self._locks_at = -math.inf  # show the result at the next refresh
        return removed


class _ReportError(str):
    """A node's failed answer to one report (its text says which and why)."""


__all__ = ["NODE_TIMEOUT", "NodeView", "RayClusterBackend", "disconnect"]
