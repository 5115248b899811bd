"""The TUI's data model and the pure functions over it: rows for each grouping, sorting, filtering, marks,
targets and the blast radius of an action. No Textual, no I/O: everything here is unit-testable with a
hand-made Snapshot (see backends/demo.py).

A `Model` is built once per refresh by the collector thread and never changed afterwards; the UI thread turns it
into rows with `build_rows` whenever the model or the view state (grouping, sort, filter) changes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, NamedTuple

from procguard.core import views
from procguard.core.duplicates import DuplicateGroup, Explanation, ScheduledInstance
from procguard.core.gpu import GpuSnapshot, gpu_memory_by_pid, orphaned_gpu_processes
from procguard.core.locks import HeldLock
from procguard.core.signals import Member, Target
from procguard.core.snapshot import Proc, Snapshot

Grouping = Literal["parent", "group", "session"]
GROUPINGS: tuple[Grouping, ...] = ("parent", "group", "session")
GROUPING_LABELS = {"parent": "by parent", "group": "by process group", "session": "by session"}

SortKey = Literal["pid", "age", "cpu", "rss", "gpu"]
# `s` cycles in this order; the issue lists CPU, RSS, GPU memory, pid, age; pid is the default because a
# tree sorted by pid doesn't reshuffle itself every second.
SORT_KEYS: tuple[SortKey, ...] = ("pid", "age", "cpu", "rss", "gpu")
SORT_LABELS = {"pid": "pid", "age": "age", "cpu": "CPU%", "rss": "RSS", "gpu": "GPU mem"}
# Natural direction: the interesting end first (biggest consumer, oldest process, lowest pid).
_DESCENDING = {"pid": False, "age": False, "cpu": True, "rss": True, "gpu": True}

RowKey = tuple[str, int]  # ("p", pid) | ("g", pgid) | ("s", sid)

# Row flags (the FLAGS column): one letter each, explained in the help screen.
FLAG_DUPLICATE = "D"
FLAG_GUARDED = "G"
FLAG_LOCK = "L"
FLAG_ORPHAN_GPU = "O"
FLAG_RUN = "R"
FLAGS = (FLAG_DUPLICATE, FLAG_GUARDED, FLAG_RUN, FLAG_LOCK, FLAG_ORPHAN_GPU)  # in the order a row shows them
FLAG_LEGEND = (
    (FLAG_DUPLICATE, "instance of a script running more than once (see Duplicates)"),
    (FLAG_GUARDED, "guarded process (procguard's guard() in the script)"),
    (FLAG_RUN, "a `procguard run` job (its parent is the launcher; Enter shows the run's lock)"),
    (FLAG_LOCK, "holds a file lock (see Locks)"),
    (FLAG_ORPHAN_GPU, "orphan holding GPU memory: its parent died (leftover worker?)"),
)


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class GuardInfo:
    """What the registry says about a guarded process."""

    pid: int
    script: str
    lock: str | None
    flush_signal: int | None
    allocated: int | None = None  # torch allocator figures the process publishes (bytes)
    reserved: int | None = None

    @property
    def flushable(self) -> int | None:
        """What a flush could give back: reserved but not allocated."""
        if self.allocated is None or self.reserved is None:
            return None
        return max(0, self.reserved - self.allocated)


@dataclass(frozen=True)
class ProcExtra:
    """Per-process facts read on demand for the details screen (not part of every refresh)."""

    cwd: str | None
    env: Mapping[str, str] | None  # rank / scheduler variables only; None when unreadable
    # What the process is to duplicate detection: its identity key (kind + parts) and whether it counts as a
    # run, or why not (core's duplicates.explain); None with `explain_error` saying why when it can't be told.
    explanation: Explanation | None = None
    explain_error: str | None = None


@dataclass(frozen=True)
class Model:
    """Everything one refresh collected. Immutable; derived indexes are computed by `make_model`."""

    seq: int
    snapshot: Snapshot
    gpu: GpuSnapshot
    duplicates: tuple[DuplicateGroup, ...] = ()
    scheduled: tuple[ScheduledInstance, ...] = ()
    locks: tuple[HeldLock, ...] = ()
    stale_locks: tuple[str, ...] = ()
    guarded: Mapping[int, GuardInfo] = field(default_factory=dict)
    errors: tuple[str, ...] = ()  # a part that could not be collected this time, and why
    gpu_by_pid: Mapping[int, int] = field(default_factory=dict)
    orphans: frozenset[int] = frozenset()  # GPU holders whose parent died
    dup_pids: frozenset[int] = frozenset()  # processes that are (part of) a duplicate instance
    lock_pids: frozenset[int] = frozenset()  # processes holding a file lock
    run_jobs: Mapping[int, int] = field(default_factory=dict)  # job pid -> pid of its `procguard run` launcher

    @property
    def time(self) -> float:
        return self.snapshot.time


def make_model(seq: int, snapshot: Snapshot, gpu: GpuSnapshot, *, duplicates: Sequence[DuplicateGroup] = (),
               scheduled: Sequence[ScheduledInstance] = (), locks: Sequence[HeldLock] = (),
               stale_locks: Sequence[str] = (), guarded: Iterable[GuardInfo] = (),
               errors: Sequence[str] = (), run_jobs: Mapping[int, int] | None = None) -> Model:
    gpu_by_pid = gpu_memory_by_pid(gpu) if gpu.available else {}
    orphans = frozenset(h.proc.pid for h in orphaned_gpu_processes(snapshot, gpu)) if gpu.available else frozenset()
    dup: set[int] = set()
    for g in duplicates:
        for inst in g.instances:
            dup.add(inst.pid)
            dup.update(inst.members)
    lock_pids = frozenset(p for lk in locks if not lk.stale for p in (lk.holders or ((lk.pid,) if lk.pid else ())))
    return Model(seq, snapshot, gpu, tuple(duplicates), tuple(scheduled), tuple(locks), tuple(stale_locks),
                 MappingProxyType({g.pid: g for g in guarded}), tuple(errors), MappingProxyType(gpu_by_pid),
                 orphans, frozenset(dup), lock_pids, MappingProxyType(dict(run_jobs or {})))


# ---------------------------------------------------------------------------------------------- rows


class Row(NamedTuple):
    """One line of the Processes view: a process, or the header of a process group / session."""

    key: RowKey
    kind: Literal["proc", "group", "session"]
    id: int  # pid, pgid or sid
    depth: int
    prefix: str  # tree drawing before the command ("├─ ")
    proc: Proc | None  # the process (proc rows); the leader if visible (group/session rows)
    size: int  # members (group/session rows; 1 for a process)
    stopped: int  # members stopped (T/t)
    cpu: float
    rss: int
    gpu: int  # bytes
    flags: str  # FLAG_* letters
    members: tuple[int, ...]  # every member pid of a group/session (the blast radius), (pid,) for a process


@dataclass(frozen=True)
class ViewState:
    grouping: Grouping = "parent"
    sort: SortKey = "pid"
    reverse: bool = False  # against the sort key's natural direction
    filter: str = ""
    user: str | None = None  # only this user's processes
    show_kernel: bool = False  # kernel threads are hidden: hundreds of rows nobody can act on

    @property
    def descending(self) -> bool:
        return _DESCENDING[self.sort] != self.reverse


def proc_key(pid: int) -> RowKey:
    return ("p", pid)


def flags_of(model: Model, p: Proc) -> str:
    pid = p.pid
    out = ""
    if pid in model.dup_pids:
        out += FLAG_DUPLICATE
    if pid in model.guarded:
        out += FLAG_GUARDED
    if pid in model.run_jobs:
        out += FLAG_RUN
    if pid in model.lock_pids:
        out += FLAG_LOCK
    if pid in model.orphans:
        out += FLAG_ORPHAN_GPU
    return out


def display_command(p: Proc) -> str:
    """The command as shown in a narrow column: the program's basename, then its arguments."""
    if not p.cmdline:
        return f"[{p.name}]"
    first = p.cmdline[0]
    if first.startswith("/"):
        first = first.rpartition("/")[2] or first
    return " ".join((first, *p.cmdline[1:])) if len(p.cmdline) > 1 else first


def matches(p: Proc, needle: str) -> bool:
    """Case-insensitive substring over pid, user and the full command line."""
    return needle in f"{p.pid} {p.username} {p.command}".lower()


def _proc_sort_value(model: Model, p: Proc, key: SortKey) -> float:
    if key == "cpu":
        return p.cpu_percent
    if key == "rss":
        return p.rss
    if key == "gpu":
        return model.gpu_by_pid.get(p.pid, 0)
    if key == "age":
        return p.create_time
    return p.pid


def _proc_row(model: Model, p: Proc, depth: int, prefix: str) -> Row:
    stopped = 1 if p.stopped else 0
    return Row(("p", p.pid), "proc", p.pid, depth, prefix, p, 1, stopped, p.cpu_percent, p.rss,
               model.gpu_by_pid.get(p.pid, 0), flags_of(model, p), (p.pid,))


def _visible(model: Model, state: ViewState) -> dict[int, Proc]:
    needle = state.filter.strip().lower()
    user = state.user
    out: dict[int, Proc] = {}
    for p in model.snapshot:
        if p.kernel_thread and not state.show_kernel:
            continue
        if user is not None and p.username != user:
            continue
        if needle and not matches(p, needle):
            continue
        out[p.pid] = p
    return out


def build_rows(model: Model, state: ViewState) -> list[Row]:
    """The Processes view's rows for `state`: filtered, grouped and sorted."""
    vis = _visible(model, state)
    if state.grouping == "parent":
        return _tree_rows(model, vis, state)
    return _grouped_rows(model, vis, state)


def _sorted_pids(model: Model, pids: Iterable[int], procs: Mapping[int, Proc], state: ViewState) -> list[int]:
    key = state.sort
    if key == "pid":
        return sorted(pids, reverse=state.descending)
    # Ties broken by pid so equal rows never swap places between refreshes.
    items = sorted(pids)
    items.sort(key=lambda pid: _proc_sort_value(model, procs[pid], key), reverse=state.descending)
    return items


def _tree_rows(model: Model, vis: Mapping[int, Proc], state: ViewState) -> list[Row]:
    procs = model.snapshot.procs
    # A process hangs under its nearest visible ancestor: with a filter, matches keep their tree shape
    # without pulling unmatched ancestors in (so "mark all shown" never marks a process that didn't match).
    parent_of: dict[int, int | None] = {}

    def visible_parent(pid: int) -> int | None:
        chain: list[int] = []
        cur = procs[pid].ppid
        found: int | None = None
        seen = {pid}
        while cur not in seen:
            if cur in parent_of and cur not in vis:
                found = parent_of[cur]
                break
            if cur in vis:
                found = cur
                break
            p = procs.get(cur)
            if p is None:
                break
            seen.add(cur)
            chain.append(cur)
            cur = p.ppid
        for c in chain:  # memoise the walk for invisible ancestors
            parent_of[c] = found
        return found

    kids: dict[int | None, list[int]] = {}
    for pid in vis:
        par = visible_parent(pid)
        if par == pid:
            par = None
        kids.setdefault(par, []).append(pid)
    rows: list[Row] = []
    # Iterative depth-first walk: deep chains must not hit the recursion limit.
    stack: list[tuple[int, int, str, str]] = []  # (pid, depth, prefix for it, prefix for its children)
    for pid in reversed(_sorted_pids(model, kids.get(None, ()), vis, state)):
        stack.append((pid, 0, "", ""))
    emitted: set[int] = set()
    while stack:
        pid, depth, prefix, child_prefix = stack.pop()
        if pid in emitted:
            continue
        emitted.add(pid)
        rows.append(_proc_row(model, vis[pid], depth, prefix))
        children = _sorted_pids(model, kids.get(pid, ()), vis, state)
        n = len(children)
        for i in range(n - 1, -1, -1):
            last = i == n - 1
            stack.append((children[i], depth + 1, child_prefix + ("└─ " if last else "├─ "),
                          child_prefix + ("   " if last else "│  ")))
    if len(emitted) < len(vis):  # a ppid loop (can't happen in /proc, can in hand-made data): show them flat
        for pid in sorted(set(vis) - emitted):
            rows.append(_proc_row(model, vis[pid], 0, ""))
    return rows


def _aggregate(model: Model, kind: Literal["group", "session"], gid: int, member_pids: Sequence[int]) -> Row:
    procs = model.snapshot.procs
    members = [procs[m] for m in member_pids if m in procs]
    leader = procs.get(gid)
    flags = ""
    for f in FLAGS:
        if any(f in flags_of(model, m) for m in members):
            flags += f
    return Row((kind[0], gid), kind, gid, 0, "", leader, len(members),
               sum(1 for m in members if m.stopped),
               sum(m.cpu_percent for m in members), sum(m.rss for m in members),
               sum(model.gpu_by_pid.get(m.pid, 0) for m in members), flags,
               tuple(m.pid for m in members))


def _group_sort_value(model: Model, row: Row, key: SortKey) -> float:
    if key == "cpu":
        return row.cpu
    if key == "rss":
        return row.rss
    if key == "gpu":
        return row.gpu
    if key == "age":
        procs = model.snapshot.procs
        return min((procs[m].create_time for m in row.members if m in procs), default=0.0)
    return row.id


def _grouped_rows(model: Model, vis: Mapping[int, Proc], state: ViewState) -> list[Row]:
    kind: Literal["group", "session"] = "group" if state.grouping == "group" else "session"
    index = model.snapshot.group_map if kind == "group" else model.snapshot.session_map
    procs = model.snapshot.procs
    by_id: dict[int, list[int]] = {}
    for pid, p in vis.items():
        by_id.setdefault(p.pgid if kind == "group" else p.sid, []).append(pid)
    entries: list[tuple[Row, list[int]]] = []
    for gid, shown in by_id.items():
        # Counted over the whole group, not just what the filter shows: that is what acting on it hits.
        full = [m for m in index.get(gid, ()) if not procs[m].kernel_thread or state.show_kernel]
        if len(full) >= 2:
            entries.append((_aggregate(model, kind, gid, full), shown))
        else:
            entries.append((_proc_row(model, vis[shown[0]], 0, ""), []))
    keys = [(e, _group_sort_value(model, e[0], state.sort) if e[0].kind != "proc"
             else _proc_sort_value(model, procs[e[0].id], state.sort)) for e in entries]
    keys.sort(key=lambda kv: kv[0][0].id)
    keys.sort(key=lambda kv: kv[1], reverse=state.descending)
    rows: list[Row] = []
    for (head, shown), _ in keys:
        rows.append(head)
        if head.kind == "proc":
            continue
        ordered = _sorted_pids(model, shown, vis, state)
        n = len(ordered)
        for i, pid in enumerate(ordered):
            rows.append(_proc_row(model, vis[pid], 1, "└─ " if i == n - 1 else "├─ "))
    return rows


# ---------------------------------------------------------------------------------------------- targets


def targets_for_keys(keys: Iterable[RowKey], snapshot: Snapshot) -> list[Target]:
    """Targets of marked rows, from their keys alone (a marked row may be filtered out of view just now)."""
    out: list[Target] = []
    for kind, ident in sorted(keys):
        if kind == "p":
            out.append(Target.pid(ident))
        elif kind == "g":
            out.append(Target.group(ident))
        else:
            out.extend(Target.group(g) for g in sorted({p.pgid for p in views.session_members(snapshot, ident)}))
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Blast:
    """The blast radius of an action, as the confirm dialog shows it."""

    members: tuple[Member, ...]
    gpu_bytes: int  # GPU memory the members hold
    gpu_by_pid: Mapping[int, int]
    locks: tuple[str, ...]  # lock files every holder of which is a member: freed when they end
    flushable: int  # of that GPU memory, what guarded processes report as reserved-but-unused

    @property
    def acting(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if not m.protected)

    @property
    def refused(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.protected)


def blast_radius(model: Model, members: Sequence[Member]) -> Blast:
    pids = {m.pid for m in members if not m.protected}
    gpu = sum(model.gpu_by_pid.get(p, 0) for p in pids)
    locks = tuple(sorted({lk.path for lk in model.locks
                          if not lk.stale and lk.holders and set(lk.holders) <= pids}))
    flushable = sum((model.guarded[p].flushable or 0) for p in pids if p in model.guarded)
    by_pid = {p: model.gpu_by_pid[p] for p in pids if model.gpu_by_pid.get(p)}
    return Blast(tuple(members), gpu, MappingProxyType(by_pid), locks, flushable)


def prune_marks(marks: Collection[RowKey], model: Model) -> set[RowKey]:
    """The marks whose process (not a zombie: it has ended), group or session still exists."""
    return {k for k in marks if key_alive(model, k)}


def key_alive(model: Model, key: RowKey) -> bool:
    kind, ident = key
    snap = model.snapshot
    if kind == "p":
        p = snap.get(ident)
        return p is not None and not p.dead
    if kind == "g":
        return ident in snap.group_map
    return ident in snap.session_map


# ---------------------------------------------------------------------------------------------- summary


class Totals(NamedTuple):
    """The summary line's figures (the widget that shows them is widgets.summary.Summary)."""

    processes: int
    python: int
    duplicate_groups: int
    held_locks: int
    stopped: int
    zombies: int
    gpu_used: int | None  # bytes, None when no GPU
    gpu_total: int | None
    gpu_reason: str | None


def summarize_model(model: Model) -> Totals:
    n = py = stopped = zombies = 0
    for p in model.snapshot:
        if p.kernel_thread:
            continue
        n += 1
        if p.python is not None:
            py += 1
        if p.stopped:
            stopped += 1
        elif p.dead:
            zombies += 1
    gpu = model.gpu
    used = sum(d.memory_used for d in gpu.devices) if gpu.available else None
    total = sum(d.memory_total for d in gpu.devices) if gpu.available else None
    held = sum(1 for lk in model.locks if not lk.stale)
    return Totals(n, py, len(model.duplicates), held, stopped, zombies, used, total, gpu.reason)


# ---------------------------------------------------------------------------------------------- formatting


def truncate(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def group_label(row: Row) -> str:
    """The command column of a group/session header."""
    what = "group" if row.kind == "group" else "session"
    stopped = f", {row.stopped} stopped" if row.stopped else ""
    lead = f" · {display_command(row.proc)}" if row.proc is not None else ""
    return f"{what} {row.id}: {row.size} procs{stopped}{lead}"


def status_text(state: ViewState, marks: int, shown: int) -> str:
    arrow = "▼" if state.descending else "▲"
    parts = [GROUPING_LABELS[state.grouping], f"sort {SORT_LABELS[state.sort]} {arrow}"]
    if state.filter:
        parts.append(f"filter “{state.filter}”")
    if state.user:
        parts.append(f"user {state.user}")
    parts.append(f"{shown} shown")
    if marks:
        parts.append(f"{marks} marked")
    return " · ".join(parts)

