"""A Ray cluster as a data source for the app: one node of the cluster at a time, every action routed to
that node's procguard agent (procguard.core.cluster), which acts there with the core's escalation, pid pinning
and protections (Ray's own processes refused when a group or tree sweeps them up).

    backend = RayNodeBackend("auto", node="head")   # or a node id / unique prefix / IP
    backend.nodes()                                  # the cluster's nodes, head first, to offer a switch
    backend.node_id = other.node_id                  # switch node (the next collect() shows it)
    backend.next_node()                              # or: the next one, in nodes() order (step_node(k))
    backend.node_view(model.snapshot)                # which node a model shows (NodeView: label "1 of 3")

Pids are those of the selected node (another node may reuse the same number for another process), so a Model
always holds one node, and an action goes to the node of the snapshot its plan was made from (not to whatever
node is selected when it runs). Differences from LiveBackend: `on_progress` gets one "done" event when the remote
action has finished (the agent's escalation runs remotely); the guarded-process registry is per node and not
read (guarded processes show as unguarded, flush still goes to the node).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Sequence
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
from procguard.tui.backends import NodeView, ProgressFn
from procguard.tui.model import Model, ProcExtra, make_model


def _cluster() -> Any:
    import procguard.core.cluster as cluster  # Ray is loaded only when this backend is used

    return cluster


def disconnect() -> None:
    """Leave the cluster (ray.shutdown) if this process is connected; starts or imports nothing otherwise."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


class RayNodeBackend:
    """Data and actions of one node of a Ray cluster (cluster mode of the `Backend` protocol). Thread-safe like
    LiveBackend."""

    static = False
    cluster = True

    def __init__(self, address: str = "auto", node: str = "head", *, slow_interval: float = 5.0) -> None:
        cluster = _cluster()
        cluster.connect(address)  # a HOST:PORT nobody listens on fails at once, not after minutes
        self.address = address
        self.node_id: str = cluster.find_node(node, cluster.nodes()).node_id
        self._views: dict[int, tuple[weakref.ref[Snapshot], NodeView]] = {}
        self.slow_interval = slow_interval
        self.locks_every_refresh = False
        self._lock = threading.Lock()
        self._seq = 0
        self._locks_at = -math.inf
        self._locks_node = ""
        self._locks: tuple[HeldLock, ...] = ()
        self._stale: tuple[str, ...] = ()

    def nodes(self) -> list[Any]:
        """The live nodes (NodeInfo: node_id, ip, hostname, is_head), head first."""
        return list(_cluster().nodes())

    @property
    def node(self) -> Any:
        """The NodeInfo of the node shown (None if it left the cluster)."""
        return next((n for n in self.nodes() if n.node_id == self.node_id), None)

    def next_node(self) -> None:
        """Select the next node in nodes() order (wrapping): the next collect() shows it."""
        self.step_node(1)

    def step_node(self, step: int) -> str:
        """Select the node `step` places after the selected one in nodes() order (wrapping); returns its id."""
        ids = [n.node_id for n in self.nodes()]
        if not ids:
            raise RuntimeError("the cluster has no live node")
        with self._lock:
            i = ids.index(self.node_id) if self.node_id in ids else -step
            self.node_id = ids[(i + step) % len(ids)]
            return self.node_id

    def node_view(self, snapshot: Snapshot) -> NodeView | None:
        """The node a snapshot from collect() shows (None for a snapshot this backend did not make)."""
        with self._lock:
            got = self._views.get(id(snapshot))
        if got is None or got[0]() is not snapshot:
            return None
        return got[1]

    def _node_for(self, snapshot: Snapshot) -> str:
        view = self.node_view(snapshot)
        return self.node_id if view is None else view.node_id

    def _remember(self, snap: Snapshot, nid: str, among: Sequence[Any]) -> None:
        """(lock held) Which node snap shows. Entries go when their snapshot is collected."""
        ids = [n.node_id for n in among]
        info = next((n for n in among if n.node_id == nid), None)
        view = NodeView(nid, info.ip if info else "?", bool(info and info.is_head),
                        ids.index(nid) + 1 if nid in ids else 0, len(ids))
        key = id(snap)

        def forget(_ref: weakref.ref[Snapshot]) -> None:
            self._views.pop(key, None)

        self._views[key] = (weakref.ref(snap, forget), view)

    # ------------------------------------------------------------------------------------------ data

    def _call(self, fn: str, **kwargs: Any) -> Any:
        return self._call_on(self.node_id, fn, **kwargs)

    def _call_on(self, nid: str, fn: str, **kwargs: Any) -> Any:
        return _cluster().node_call(None, nid, fn, **kwargs)

    def collect(self) -> Model:
        cluster = _cluster()
        with self._lock:
            self._seq += 1
            nid = self.node_id
            errors: list[str] = []
            among = cluster.nodes()
            (ns,) = cluster.cluster_snapshot(node_ids=[nid]) or [None]
            if ns is None or ns.snapshot is None:
                why = "the node left the cluster" if ns is None else ns.error
                errors.append(f"node {nid[:8]}: {why}")
                snap = Snapshot({})
            else:
                snap = ns.snapshot
            self._remember(snap, nid, among)
            try:
                gpu = self._call_on(nid, "gpu")
            except Exception as e:  # noqa: BLE001 - reported in the model, the rest still comes
                gpu = GpuSnapshot(False, f"GPU query failed: {e}", (), (), time.time())
            now = time.monotonic()
            if self.locks_every_refresh or now - self._locks_at >= self.slow_interval or self._locks_node != nid:
                if self._locks_node != nid:  # another node's locks must not show here, even if this call fails
                    self._locks, self._stale = (), ()
                self._locks_at, self._locks_node = now, nid
                try:
                    entries = self._call_on(nid, "locks")
                    self._locks = tuple(e for e in entries if not e.stale)
                    self._stale = tuple(e.path for e in entries if e.stale)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"locks: {e}")
            groups: Sequence[DuplicateGroup] = ()
            sched: Sequence[ScheduledInstance] = ()
            try:
                report = self._call_on(nid, "duplicates")
                groups = _duplicates.enrich(report.groups, snap, gpu, held=self._locks)
                filled = _duplicates.enrich([DuplicateGroup(s.identity, (s.instance,))
                                             for s in report.scheduler_managed], snap, gpu, held=self._locks)
                sched = [replace(s, instance=g.instances[0])
                         for s, g in zip(report.scheduler_managed, filled, strict=True)]
            except Exception as e:  # noqa: BLE001
                errors.append(f"duplicates: {e}")
            return make_model(self._seq, snap, gpu, duplicates=groups, scheduled=sched, locks=self._locks,
                              stale_locks=self._stale, errors=errors)

    def proc_extra(self, pid: int, snapshot: Snapshot | None = None) -> ProcExtra:
        # The node agents don't explain duplicate identities yet (core/cluster/_actors.py has no "explain").
        why = "not available for a cluster node yet"
        try:
            nid = self.node_id if snapshot is None else self._node_for(snapshot)
            cwd, env = self._call_on(nid, "proc_extra", pid=pid)
        except Exception:  # noqa: BLE001 - the details pane shows what it has
            return ProcExtra(None, None, None, why)
        return ProcExtra(cwd, env, None, why)

    # ------------------------------------------------------------------------------------------ actions

    # Each goes to the node of `snapshot` (the one the plan was made from), whatever node is selected now.

    def resolve(self, targets: Sequence[Target], snapshot: Snapshot) -> list[Member]:
        nid = self._node_for(snapshot)
        return [nm.member for nm in _cluster().cluster_resolve(None, nid, list(targets))]

    def act(self, action: str, targets: Sequence[Target], snapshot: Snapshot, *, grace: float = 5.0,
            on_progress: ProgressFn | None = None) -> list[SignalResult]:
        """The node's agent runs core's `signals.run_action` there."""
        action = signals.action_name(action)  # "terminate" -> "term"; an unknown one fails here, not remotely
        nid = self._node_for(snapshot)
        # What the confirm dialog showed: the agent refuses a pid that names another process by now.
        expect = {t.id: p.start_ticks for t in targets if t.kind in ("pid", "tree")
                  if (p := snapshot.get(t.id)) is not None}
        results = [r.result for r in _cluster().cluster_signal(None, nid, action, list(targets), grace,
                                                               expect=expect)]
        if on_progress is not None:
            on_progress(Progress("done", tuple(r.pid for r in results), 0.0))
        return results

    # Shorthands of act() for scripts and tests.
    def terminate(self, targets: Sequence[Target], grace: float, snapshot: Snapshot) -> list[SignalResult]:
        return self.act("term", targets, snapshot, grace=grace)

    def resume(self, targets: Sequence[Target], snapshot: Snapshot) -> list[SignalResult]:
        return self.act("resume", targets, snapshot)

    def flush(self, pid: int) -> str:
        return str(self._call("flush", pid=pid, timeout=10.0))

    def plan_duplicates(self, identity: ScriptIdentity, grace: float, snapshot: Snapshot, *,
                        all_users: bool = False) -> TerminateReport:
        return self._call_on(self._node_for(snapshot), "terminate_duplicates", keep="oldest", script=identity,
                             grace=grace, dry_run=True, all_users=all_users)

    def end_duplicates(self, identity: ScriptIdentity, grace: float, snapshot: Snapshot,
                       on_progress: ProgressFn | None = None, *, victims: Sequence[Instance] | None = None,
                       all_users: bool = False) -> TerminateReport:
        # The node's core re-checks every victim right before signalling it, like on this machine.
        report = self._call_on(self._node_for(snapshot), "terminate_duplicates", keep="oldest", script=identity,
                               grace=grace, all_users=all_users,
                               victims=None if victims is None else list(victims))
        if on_progress is not None:
            on_progress(Progress("done", (), 0.0))
        return report

    def clean_locks(self, paths: Sequence[str]) -> list[Any]:
        removed = list(self._call("clean_stale_locks", paths=list(paths)))
        with self._lock:
            self._locks_at = -math.inf  # show the result at the next refresh
        return removed


__all__ = ["NodeView", "RayNodeBackend", "disconnect"]
