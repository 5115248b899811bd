"""Where the app's data comes from and where its actions go: the `Backend` protocol every data source
implements, cluster mode included.

- `live.LiveBackend`: this machine, through procguard.core (the default);
- `ray.RayClusterBackend`: every node of a Ray cluster in one table (`--ray`): cluster mode;
- `demo.DemoBackend`: the fixed demo scenario of the snapshot tests, the screenshots and `--demo`.

Cluster mode is part of the protocol, not a guess from a backend's methods: `cluster` says the backend's models
are cluster models (`Model.parts`, one per node), and an action's targets come grouped by node (`NodeTargets`:
`resolve_nodes` is the dry run on every node at once, `act_nodes` sends each node its part at once). Single-host
backends take `SingleHost` for those.

Every method but `collect` (the collector thread) is called from a worker thread, never the UI thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from procguard.core.duplicates import Instance, TerminateReport
from procguard.core.identity import ScriptIdentity
from procguard.core.signals import Member, Progress, SignalResult, Target
from procguard.core.snapshot import Snapshot
from procguard.tui.model import Model, NodeTargets, NodeView, ProcExtra

__all__ = ["Backend", "FirstCollect", "NodeView", "ProgressFn", "SingleHost"]

ProgressFn = Callable[[Progress], None]


class FirstCollect(threading.Thread):
    """The first `backend.collect()`, started as early as possible (the command line starts it before it
    imports Textual), so that the app's first frame already has rows. The app's collector takes its result."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(name="procguard-first-collect", daemon=True)
        self.backend = backend
        self.model: Model | None = None
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            self.model = self.backend.collect()
        except Exception as e:  # the app reports it as a failed refresh
            self.error = e


class Backend(Protocol):
    """What the app needs from a data source."""

    static: bool  # fixed data: the app takes one model at start and runs no refresh loop
    cluster: bool  # its models are cluster models (every node's processes); actions go by node
    locks_every_refresh: bool  # set by the app while the Locks view is shown

    def collect(self) -> Model: ...
    def proc_extra(self, pid: int, snapshot: Snapshot | None = None) -> ProcExtra: ...
    def resolve(self, targets: Sequence[Target], snapshot: Snapshot) -> list[Member]:
        """The dry run: every process `targets` cover in `snapshot`, with why each would be refused."""
        ...

    def act(
        self,
        action: str,
        targets: Sequence[Target],
        snapshot: Snapshot,
        *,
        grace: float = 5.0,
        on_progress: ProgressFn | None = None,
    ) -> list[SignalResult]:
        """Run "terminate", "kill", "pause" or "resume" on `targets`, as the dry run on `snapshot` showed
        them (core's one dispatch, `signals.run_action`, wherever the processes live)."""
        ...

    def flush(self, pid: int, snapshot: Snapshot | None = None) -> str:
        """Ask guarded process `pid` to flush its GPU cache (in cluster mode: on the node of `snapshot`)."""
        ...

    def plan_notes(self, kind: str, targets: Sequence[Target]) -> list[str]:
        """Lines for the confirm dialog about how the targets would be acted on: for a cgroup target, the way
        (cgroup.kill / cgroup.freeze, or the fallback and why), from core's dry run `cgroups.cgroup_plan`."""
        ...

    def plan_duplicates(
        self, identity: ScriptIdentity, grace: float, snapshot: Snapshot, *, all_users: bool = False
    ) -> TerminateReport:
        """The dry run of `d`: which runs of `identity` would end (all but the oldest)."""
        ...

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
        """End all but the oldest run of `identity`; with `victims` (the dry run's `ended`, as confirmed) only
        those. Each is re-checked right before it is signalled: a run whose process is gone, is another process
        or runs another job by now is left alone and listed in `skipped` with the reason."""
        ...

    def clean_locks(self, paths: Sequence[str]) -> list[Any]: ...

    def resolve_nodes(
        self, parts: Sequence[NodeTargets]
    ) -> tuple[list[tuple[str, Member]], list[tuple[str, str]]]:
        """Cluster mode: the dry run on every node of `parts` at once: (node id, member) pairs, and (node id, one
        line naming it and why) for each node that did not answer (the plan leaves its targets out)."""
        ...

    def act_nodes(
        self,
        action: str,
        parts: Sequence[NodeTargets],
        *,
        grace: float = 5.0,
        on_progress: ProgressFn | None = None,
    ) -> list[SignalResult]:
        """Cluster mode: each node of `parts` acts on its own targets, all at once (core's `signal_nodes`); a
        node that fails gives an `unreachable` result (naming it) for each of its targets."""
        ...


class SingleHost:
    """The cluster part of `Backend` for a data source that shows one machine."""

    cluster = False

    def resolve_nodes(
        self, parts: Sequence[NodeTargets]
    ) -> tuple[list[tuple[str, Member]], list[tuple[str, str]]]:
        raise RuntimeError("not a cluster: targets have no node")

    def act_nodes(
        self,
        action: str,
        parts: Sequence[NodeTargets],
        *,
        grace: float = 5.0,
        on_progress: ProgressFn | None = None,
    ) -> list[SignalResult]:
        raise RuntimeError("not a cluster: targets have no node")
