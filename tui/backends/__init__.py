"""Where the app's data comes from and where its actions go: the `Backend` protocol every data source
implements, cluster mode included.

- `live.LiveBackend`: this machine, through procguard.core (the default);
- `ray.RayNodeBackend`: one node of a Ray cluster at a time (`--ray`): cluster mode;
- `demo.DemoBackend`: the fixed demo scenario of the snapshot tests, the screenshots and `--demo`.

Cluster mode is part of the protocol, not a guess from a backend's methods: `cluster` says whether the backend
shows one node of several, `node_view(snapshot)` names the node a snapshot shows (None on a single host) and
`next_node()` moves on to the next one. Single-host backends take `SingleHost` for those three.

Every method but `collect` (the collector thread) is called from a worker thread, never the UI thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from procguard.core.duplicates import Instance, TerminateReport
from procguard.core.identity import ScriptIdentity
from procguard.core.signals import Member, Progress, SignalResult, Target
from procguard.core.snapshot import Snapshot
from procguard.tui.model import Model, ProcExtra

__all__ = ["Backend", "NodeView", "ProgressFn", "SingleHost"]

ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class NodeView:
    """Cluster mode: which node a snapshot came from, and where it stood among the live nodes then (index
    from 1)."""

    node_id: str
    ip: str
    is_head: bool
    index: int  # 0 when the node had left the cluster
    count: int

    @property
    def short(self) -> str:
        return self.node_id[:8]

    @property
    def label(self) -> str:
        """`1a2b3c4d 10.0.0.2 (head) · 1 of 3`: names the node every row of the view lives on."""
        head = " (head)" if self.is_head else ""
        where = f"{self.index} of {self.count}" if self.index else f"gone ({self.count} left)"
        return f"{self.short} {self.ip}{head} · {where}"

    @property
    def compact(self) -> str:
        """`1a2b3c4d 1/3`, for narrow screens."""
        return f"{self.short} {self.index}/{self.count}" if self.index else f"{self.short} gone"


class Backend(Protocol):
    """What the app needs from a data source."""

    static: bool  # fixed data: the app takes one model at start and runs no refresh loop
    cluster: bool  # shows one node of a cluster at a time (node_view / next_node mean something)
    locks_every_refresh: bool  # set by the app while the Locks view is shown

    def collect(self) -> Model: ...
    def proc_extra(self, pid: int, snapshot: Snapshot | None = None) -> ProcExtra: ...
    def resolve(self, targets: Sequence[Target], snapshot: Snapshot) -> list[Member]:
        """The dry run: every process `targets` cover in `snapshot`, with why each would be refused."""
        ...

    def act(self, action: str, targets: Sequence[Target], snapshot: Snapshot, *, grace: float = 5.0,
            on_progress: ProgressFn | None = None) -> list[SignalResult]:
        """Run "terminate", "kill", "pause" or "resume" on `targets`, as the dry run on `snapshot` showed
        them (core's one dispatch, `signals.run_action`, wherever the processes live)."""
        ...

    def flush(self, pid: int) -> str: ...

    def plan_duplicates(self, identity: ScriptIdentity, grace: float, snapshot: Snapshot, *,
                        all_users: bool = False) -> TerminateReport:
        """The dry run of `d`: which runs of `identity` would end (all but the oldest)."""
        ...

    def end_duplicates(self, identity: ScriptIdentity, grace: float, snapshot: Snapshot,
                       on_progress: ProgressFn | None = None, *, victims: Sequence[Instance] | None = None,
                       all_users: bool = False) -> TerminateReport:
        """End all but the oldest run of `identity`; with `victims` (the dry run's `ended`, as confirmed) only
        those. Each is re-checked right before it is signalled: a run whose process is gone, is another process
        or runs another job by now is left alone and listed in `skipped` with the reason."""
        ...

    def clean_locks(self, paths: Sequence[str]) -> list[Any]: ...

    def node_view(self, snapshot: Snapshot) -> NodeView | None:
        """Cluster mode: the node `snapshot` (from collect()) shows; None on a single host."""
        ...

    def next_node(self) -> None:
        """Cluster mode: show the next node from the next collect() on."""
        ...


class SingleHost:
    """The cluster part of `Backend` for a data source that shows one machine."""

    cluster = False

    def node_view(self, snapshot: Snapshot) -> NodeView | None:
        return None

    def next_node(self) -> None:
        raise RuntimeError("not a cluster: there is no other node")
