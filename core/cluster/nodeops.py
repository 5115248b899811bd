"""What runs on one node, inside its agent: snapshots, actions with Ray's processes protected, and ending the
process trees of a tracked task. Plain functions over this node's /proc; nothing here imports ray.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from procguard.core import procfs, signals
from procguard.core.cluster.rayprocs import plan_targets, ray_kinds
from procguard.core.signals import Member, Outcome, SignalResult, Target
from procguard.core.snapshot import Proc, Snapshot, Snapshotter, process_snapshot
from procguard.core.views import children, descendants, group_members, tree


@dataclass(frozen=True)
class TaskEntry:
    """A process a tracked task started (or left behind), as seen on its node."""

    node_id: str
    pid: int
    pgid: int
    create_time: float  # epoch seconds
    start_ticks: int  # with pid, names the process on its node
    kind: str = "popen"  # popen | leftover


@dataclass(frozen=True)
class TaskRecord:
    """One tracked Ray task or actor task, as the registry keeps it."""

    task_id: str
    job_id: str
    name: str
    node_id: str
    worker_pid: int
    worker_start_ticks: int
    started: float
    state: str = "running"  # running | finished | cancelling
    entries: tuple[TaskEntry, ...] = field(default=())
    started_ticks: int = 0  # clock ticks since boot of the worker's node when the task began (0: unknown)
    actor_id: str | None = None  # hex, for an actor method


@dataclass(frozen=True)
class TaskOwner:
    """Which Ray task (or actor) a process belongs to, as far as procguard can tell. Every field but role may
    be unknown (None): a task id comes from procguard's registry (tracked tasks) or Ray's state API (when the
    cluster runs a dashboard), an actor from the GCS actor table, a function name from the worker's title."""

    job_id: str | None = None  # hex
    task_id: str | None = None  # hex
    actor_id: str | None = None  # hex
    actor_class: str | None = None
    function: str | None = None  # the task's function or method name, as Ray names the task
    role: str = "worker"  # worker (the Ray worker running it) | child (started by it) | leftover (left
    #                       running by a tracked task that returned) | descendant (below a Ray worker)
    tracked: bool = False  # a task procguard tracks: `cancel_tasks` can end it

    @property
    def short(self) -> str:
        """For a narrow TASK column: the task id's first 8 digits, else the actor's, else the function."""
        if self.task_id:
            return self.task_id[:8]
        if self.actor_id:
            return "actor " + self.actor_id[:8]
        return self.function or (f"job {self.job_id}" if self.job_id else "")

    def matches(self, ref: str) -> bool:
        """`ref` (hex, any case) is this owner's task id or actor id, or a prefix of 4+ digits of one."""
        ref = ref.strip().lower()
        if len(ref) < 4:
            return False
        return any(x is not None and x.startswith(ref) for x in (self.task_id, self.actor_id))

    def to_json(self) -> dict[str, object]:
        return {
            "job": self.job_id,
            "task": self.task_id,
            "actor": self.actor_id,
            "actor_class": self.actor_class,
            "function": self.function,
            "role": self.role,
            "tracked": self.tracked,
        }


# ------------------------------------------------------------------------------------------ snapshots

_snapper = Snapshotter()
_last_take = 0.0


def take_snapshot(settle: float = 0.1) -> tuple[tuple[Proc, ...], float, dict[int, str]]:
    """(procs, time, ray kinds) of this node. CPU% needs a previous look: taken `settle` s before if stale."""
    global _last_take
    if time.monotonic() - _last_take > 10.0:
        _snapper.take()
        time.sleep(settle)
    snap = _snapper.take()
    _last_take = time.monotonic()
    return tuple(snap), snap.time, ray_kinds(snap)


def rebuild_snapshot(procs: Sequence[Proc], when: float) -> Snapshot:
    """A Snapshot from what take_snapshot() sent (MappingProxyType does not pickle, so procs travel bare)."""
    return Snapshot(MappingProxyType({p.pid: p for p in procs}), when)


# ------------------------------------------------------------------------------------------ actions


def _refused(m: Member) -> SignalResult:
    return SignalResult(m.pid, Outcome.REFUSED, 0.0, m.protected, m.name, m.cmdline, m.username)


def resolve(targets: Sequence[Target], snap: Snapshot | None = None) -> list[Member]:
    """The dry run on this node, Ray's processes marked protected unless named alone by pid."""
    snap = snap if snap is not None else process_snapshot()
    allowed, refused = plan_targets(targets, snap)
    members = signals.resolve(allowed, snap) if allowed else []
    seen = {m.pid for m in members}
    return members + [m for m in refused if m.pid not in seen]


def act(
    action: str,
    targets: Sequence[Target],
    grace: float = 5.0,
    snap: Snapshot | None = None,
    expect: Mapping[int, int] | None = None,
) -> list[SignalResult]:
    """term/kill/pause/resume with the core's pinning and escalation; Ray's processes refused if swept up.

    `expect`: pid -> start ticks as the caller saw them (the app's dry run, made from an older snapshot). A
    pid or tree target whose process has another start time now is a reused pid: not signalled, reported gone.
    """
    signals.action_name(action)  # an unknown action is an error even when nothing is left to act on
    snap = snap if snap is not None else process_snapshot()
    reused: list[SignalResult] = []
    if expect:
        targets, reused = signals.drop_changed(targets, snap, expect)
    allowed, refused = plan_targets(targets, snap)
    results = reused + (signals.run_action(action, allowed, grace=grace, snapshot=snap) if allowed else [])
    done = {r.pid for r in results}
    return results + [_refused(m) for m in refused if m.pid not in done]


# ------------------------------------------------------------------------------------------ tasks


def entry_for(node_id: str, pid: int, kind: str = "popen") -> TaskEntry | None:
    """The registry entry for a live process of this node (None if it is gone already)."""
    st = procfs.read_stat(pid)
    if st is None or st.dead:
        return None
    return TaskEntry(node_id, pid, st.pgid, procfs.create_time(st.start_ticks), st.start_ticks, kind)


def _same(snap: Snapshot, pid: int, start_ticks: int) -> bool:
    p = snap.get(pid)
    return p is not None and p.start_ticks == start_ticks


def _task_children(snap: Snapshot, worker_pid: int, since_ticks: int) -> list[Proc]:
    # A reused worker still parents what an earlier task left running (recorded as that task's): only children
    # born since this task began are this task's.
    return [c for c in children(snap, worker_pid) if c.start_ticks >= since_ticks]


def task_targets(
    entries: Sequence[TaskEntry],
    snap: Snapshot,
    worker_pid: int = 0,
    worker_start_ticks: int = 0,
    exclude_pgids: Sequence[int] = (),
    since_ticks: int = 0,
) -> list[Target]:
    """What ending a task's processes means on this node.

    - each recorded process still alive (same start time): its tree;
    - each recorded process that led its own group: that group, while it has members (orphans of a
      leader that exited stay in it; a pgid can't be reused while its group exists);
    - with the worker given (the task is still running there): the tree of each child of the worker, which
      covers os.system, multiprocessing and shells the Popen hook can't see.
    Ray's processes are cut out later by plan_targets.
    """
    out: list[Target] = []
    for e in entries:
        if _same(snap, e.pid, e.start_ticks):
            out.append(Target.tree(e.pid))
        if e.pgid == e.pid and e.pgid not in exclude_pgids and e.pgid in snap.group_map:
            leader = snap.get(e.pgid)
            if leader is None or leader.start_ticks == e.start_ticks:
                out.append(Target.group(e.pgid))
    if worker_pid and _same(snap, worker_pid, worker_start_ticks):
        out.extend(Target.tree(c.pid) for c in _task_children(snap, worker_pid, since_ticks))
    return out


def end_task(
    entries: Sequence[TaskEntry],
    worker_pid: int = 0,
    worker_start_ticks: int = 0,
    grace: float = 5.0,
    force: bool = False,
    since_ticks: int = 0,
    kill_worker: bool = False,
) -> list[SignalResult]:
    """Terminate (force: kill at once) every process tree of a task on this node.

    `kill_worker`: also SIGKILL the worker itself (a task that did not end within its grace, when no
    `ray.cancel(force=True)` is possible). It is named alone by pid, with its start time checked, so only that
    process is hit; killing the worker first keeps it from starting more children while they end."""
    snap = process_snapshot()
    worker = snap.get(worker_pid) if worker_pid else None
    same_worker = worker is not None and worker.start_ticks == worker_start_ticks
    exclude = [worker.pgid] if worker is not None and same_worker else []
    # Targets from the snapshot taken before the worker dies: its children are found as its children.
    targets = task_targets(entries, snap, worker_pid, worker_start_ticks, exclude, since_ticks)
    results: list[SignalResult] = []
    if kill_worker and same_worker:
        results = act("kill", [Target.pid(worker_pid)], 0.0, snap)
    if not targets:
        return results
    done = {r.pid for r in results}
    more = act("kill" if force or kill_worker else "term", targets, grace, snap)
    return results + [r for r in more if r.pid not in done]


def leftovers(
    node_id: str, worker_pid: int, recorded: Sequence[TaskEntry], since_ticks: int = 0
) -> list[TaskEntry]:
    """At the end of a task: what it leaves running on this node (so a later cancel can still end it).

    Recorded processes still alive or whose own group still has members, and every descendant of the
    worker (which no later task may claim: they are this task's), Ray's own processes left out.
    """
    snap = process_snapshot()
    kinds = ray_kinds(snap)
    out: list[TaskEntry] = []
    for e in recorded:
        if _same(snap, e.pid, e.start_ticks) or (e.pgid == e.pid and e.pgid in snap.group_map):
            out.append(e)
    known = {e.pid for e in out}
    stack = [c.pid for c in _task_children(snap, worker_pid, since_ticks)]
    seen: set[int] = set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        p = snap.get(pid)
        if p is None or p.pid in kinds or p.dead:
            continue
        if pid not in known:
            out.append(TaskEntry(node_id, pid, p.pgid, p.create_time, p.start_ticks, "leftover"))
        stack.extend(c.pid for c in children(snap, pid))
    return out


# ------------------------------------------------------------------------------------------ ownership

# Ray's own services that carry a `ray::` title but run no task.
_SYSTEM_TITLES = frozenset({"DashboardAgent", "RuntimeEnvAgent"})


def title_function(cmdline: Sequence[str]) -> str | None:
    """The task a Ray worker runs, from its title (`ray::train` -> "train"); None when idle or not a worker."""
    if not cmdline or not cmdline[0].startswith("ray::"):
        return None
    name = cmdline[0][5:].split(" ", 1)[0]
    if not name or name.startswith("IDLE") or name in _SYSTEM_TITLES:
        return None
    return name


def _claim(
    out: dict[int, TaskOwner], procs: Iterable[Proc], owner: TaskOwner, kinds: Mapping[int, str]
) -> None:
    # First claim wins: callers claim the most certain facts first. Ray's own processes are never a task's.
    for p in procs:
        if p.pid not in kinds and not p.dead:
            out.setdefault(p.pid, owner)


def _record_owner(rec: TaskRecord, workers: Mapping[int, TaskOwner]) -> TaskOwner:
    w = workers.get(rec.worker_pid)
    return TaskOwner(
        rec.job_id,
        rec.task_id,
        rec.actor_id or (w.actor_id if w else None),
        w.actor_class if w else None,
        rec.name or (w.function if w else None),
        "worker",
        True,
    )


def _worker_owners(
    snap: Snapshot, kinds: Mapping[int, str], known: Mapping[int, TaskOwner]
) -> dict[int, TaskOwner]:
    """Every Ray worker with something known of it: Ray's tables (`known`), else its title."""
    out: dict[int, TaskOwner] = {}
    for pid, kind in kinds.items():
        p = snap.get(pid)
        if p is None or not kind.startswith("worker"):
            continue
        title = TaskOwner(function=title_function(p.cmdline), role="worker")
        k = known.get(pid)
        if k is not None:
            # An idle actor's title is its class name: that is no function.
            fn = k.function or (title.function if title.function != k.actor_class else None)
            title = replace(k, role="worker", function=fn)
        if title != TaskOwner(role="worker"):
            out[pid] = title
    return out


def _claim_recorded(
    out: dict[int, TaskOwner],
    snap: Snapshot,
    node_id: str,
    rec: TaskRecord,
    owner: TaskOwner,
    kinds: Mapping[int, str],
) -> None:
    """The trees of a task's recorded processes on this node, and the members of the groups they led."""
    for e in rec.entries:
        if e.node_id != node_id:
            continue
        if _same(snap, e.pid, e.start_ticks):
            _claim(out, tree(snap, e.pid), owner, kinds)
        leader = snap.get(e.pgid)
        if e.pgid == e.pid and (leader is None or leader.start_ticks == e.start_ticks):
            for m in group_members(snap, e.pgid):
                _claim(out, tree(snap, m.pid), owner, kinds)


def owners_on_node(
    snap: Snapshot,
    node_id: str,
    records: Sequence[TaskRecord],
    kinds: Mapping[int, str] | None = None,
    known: Mapping[int, TaskOwner] | None = None,
) -> dict[int, TaskOwner]:
    """pid -> owner on this node: every Ray worker, every process in a tracked task's trees, and what runs
    below a worker whose job or actor is known.

    `records`: the registry's tracked tasks (those of other nodes are skipped); `known`: pid -> what Ray's
    own tables say about a worker (its actor, job, running task), which wins over the worker's title.
    In order of certainty: recorded processes (their trees and own groups), then the worker's children born
    since its task began (a threaded actor's: the latest task begun before the child), then the rest below
    a worker (job and actor only: its task may be an earlier one).
    """
    kinds = ray_kinds(snap) if kinds is None else kinds
    workers = _worker_owners(snap, kinds, known or {})
    mine = sorted(
        (r for r in records if r.node_id == node_id or any(e.node_id == node_id for e in r.entries)),
        key=lambda r: r.started_ticks,
        reverse=True,
    )
    running = [
        r
        for r in mine
        if r.node_id == node_id
        and r.state in ("running", "cancelling")
        and _same(snap, r.worker_pid, r.worker_start_ticks)
    ]
    out: dict[int, TaskOwner] = {}
    for r in running:
        out.setdefault(r.worker_pid, _record_owner(r, workers))
    out.update((pid, o) for pid, o in workers.items() if pid not in out)
    for r in mine:
        owner = replace(_record_owner(r, workers), role="leftover" if r.state == "finished" else "child")
        _claim_recorded(out, snap, node_id, r, owner, kinds)
    for r in running:
        owner = replace(_record_owner(r, workers), role="child")
        for c in _task_children(snap, r.worker_pid, r.started_ticks):
            _claim(out, tree(snap, c.pid), owner, kinds)
    for pid, w in workers.items():
        if w.job_id or w.actor_id:
            below = TaskOwner(w.job_id, None, w.actor_id, w.actor_class, None, "descendant")
            _claim(out, descendants(snap, pid), below, kinds)
    return out


__all__ = [
    "TaskEntry",
    "TaskOwner",
    "TaskRecord",
    "act",
    "end_task",
    "entry_for",
    "leftovers",
    "owners_on_node",
    "rebuild_snapshot",
    "resolve",
    "take_snapshot",
    "task_targets",
    "title_function",
]
