"""The TUI's data model and the pure functions over it: rows for each grouping, sorting, filtering, marks,
targets and the blast radius of an action. No Textual, no I/O: everything here is unit-testable with a
hand-made Snapshot (see backends/demo.py).

A `Model` is built once per refresh by the collector thread and never changed afterwards; the UI thread turns it
into rows with `build_rows` whenever the model or the view state (grouping, sort, filter) changes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType
from typing import Literal, NamedTuple

from procguard.core import views
from procguard.core.cgroups import CgroupInfo, CgroupPlan
from procguard.core.duplicates import DuplicateGroup, Explanation, ScheduledInstance
from procguard.core.gpu import GpuSnapshot, gpu_memory_by_pid, merged_holders
from procguard.core.gpuholders import DeviceHolder, ForeignPid, MergedHolder
from procguard.core.locks import HeldLock
from procguard.core.signals import Member, Target
from procguard.core.snapshot import Proc, Snapshot

Grouping = Literal["parent", "group", "session", "cgroup"]
GROUPINGS: tuple[Grouping, ...] = ("parent", "group", "session", "cgroup")
GROUPING_LABELS = {
    "parent": "by parent",
    "group": "by process group",
    "session": "by session",
    "cgroup": "by cgroup",
}

SortKey = Literal["pid", "age", "cpu", "rss", "gpu"]
# `s` cycles in this order; the issue lists CPU, RSS, GPU memory, pid, age; pid is the default because a
# tree sorted by pid doesn't reshuffle itself every second.
SORT_KEYS: tuple[SortKey, ...] = ("pid", "age", "cpu", "rss", "gpu")
SORT_LABELS = {"pid": "pid", "age": "age", "cpu": "CPU%", "rss": "RSS", "gpu": "GPU mem"}
# Natural direction: the interesting end first (biggest consumer, oldest process, lowest pid).
_DESCENDING = {"pid": False, "age": False, "cpu": True, "rss": True, "gpu": True}

# ("p", pid) | ("g", pgid) | ("s", sid) | ("c", cgroup unit path). In cluster mode the node id comes third: the
# same pid on two nodes is two rows, two marks, two cursor positions.
RowKey = tuple[str, int | str] | tuple[str, int | str, str]

StatusKey = (
    int | tuple[int, str]
)  # what a row's progress label is keyed by: its pid; (pid, node) in a cluster


def status_key(pid: int, node: str = "") -> StatusKey:
    return (pid, node) if node else pid


# The S column of a process frozen by the cgroup freezer: ps shows it as S (sleeping), which it is not.
STATE_FROZEN = "F"
ROOT_CGROUP_LABEL = "(root cgroup)"
# What a fold is remembered by: a process by pid and start time (a pid reused by a new process starts unfolded),
# a group or session header by its row key. Never a row's position: folds survive refreshes, filters and sorts.
FoldKey = tuple[object, ...]
# A row with this many children (a process, but not init or kthreadd) or members (a group or session header)
# starts folded: a pool of 1,000 sleeping workers is one line until it is unfolded.
AUTO_FOLD = 100

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
    (FLAG_ORPHAN_GPU, "GPU orphan: holds GPU memory or a GPU device open, left behind by a job that ended"),
)


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class NodeView:
    """Cluster mode: one node of the cluster as the table, the summary and the confirm dialog name it, and where it
    stood among the live nodes of that refresh (index from 1)."""

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
        """`1a2b3c4d 10.0.0.2 (head) · 1 of 3`."""
        head = " (head)" if self.is_head else ""
        where = f"{self.index} of {self.count}" if self.index else f"gone ({self.count} left)"
        return f"{self.short} {self.ip}{head} · {where}"

    @property
    def compact(self) -> str:
        """`1a2b3c4d 1/3`, for narrow screens."""
        return f"{self.short} {self.index}/{self.count}" if self.index else f"{self.short} gone"


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
    run_jobs: Mapping[int, int] = field(
        default_factory=dict
    )  # job pid -> pid of its `procguard run` launcher
    cgroups: Mapping[int, CgroupInfo] = field(
        default_factory=dict
    )  # pid -> its cgroup (where it could be read)
    frozen: Mapping[int, str] = field(
        default_factory=dict
    )  # pid -> the cgroup whose freezer froze it (thaw that)
    holders: tuple[
        MergedHolder, ...
    ] = ()  # GPU holders: NVML's processes and the kernel's (device open), merged
    foreign: tuple[ForeignPid, ...] = ()  # NVML pids that are not in this PID namespace
    # Cluster mode: this model stands for the whole cluster, one part per node that answered (a Model of that
    # node, `node` set), and `failures` names each node that did not (one line each).
    cluster: bool = False
    parts: tuple[Model, ...] = ()
    failures: tuple[str, ...] = ()
    node: NodeView | None = None  # a part: the node it shows
    owners: Mapping[int, str] = field(default_factory=dict)  # a part: pid -> the Ray task owning it (short)

    @property
    def time(self) -> float:
        return self.snapshot.time

    def each(self) -> tuple[Model, ...]:
        """The models that hold processes: a cluster model's parts, else this one."""
        return self.parts if self.cluster else (self,)

    def part(self, node: str | None) -> Model | None:
        """The part of node id `node` in a cluster model (None: no such node this refresh); on a single host,
        this model."""
        if not self.cluster:
            return self
        return next((p for p in self.parts if p.node is not None and p.node.node_id == node), None)

    def only(self, node: str | None) -> Model:
        """A cluster model narrowed to one node (`n`); this model when `node` is None or on a single host."""
        if not self.cluster or node is None:
            return self
        parts = tuple(p for p in self.parts if p.node is not None and p.node.node_id == node)
        return replace(self, parts=parts, errors=_cluster_errors(parts, self.failures))

    @cached_property
    def cgroup_index(self) -> Mapping[str, tuple[int, ...]]:
        """cgroup unit path (CgroupName.unit_path) -> every process it names: what a cgroup row counts."""
        out: dict[str, list[int]] = {}
        procs = self.snapshot.procs
        for pid, info in self.cgroups.items():
            if info.name is not None and pid in procs:
                out.setdefault(info.name.unit_path, []).append(pid)
        return {unit: tuple(sorted(pids)) for unit, pids in out.items()}


def make_model(
    seq: int,
    snapshot: Snapshot,
    gpu: GpuSnapshot,
    *,
    duplicates: Sequence[DuplicateGroup] = (),
    scheduled: Sequence[ScheduledInstance] = (),
    locks: Sequence[HeldLock] = (),
    stale_locks: Sequence[str] = (),
    guarded: Iterable[GuardInfo] = (),
    errors: Sequence[str] = (),
    run_jobs: Mapping[int, int] | None = None,
    cgroups: Mapping[int, CgroupInfo] | None = None,
    frozen: Mapping[int, str] | None = None,
    holders: Mapping[int, DeviceHolder] | None = None,
    node: NodeView | None = None,
    owners: Mapping[int, str] | None = None,
) -> Model:
    """`holders`: the kernel's GPU holders (gpuholders.HolderScanner): merged with NVML's list, they count as GPU
    holders and orphans (core's one rule) with or without NVML."""
    gpu_by_pid = gpu_memory_by_pid(gpu) if gpu.available else {}
    merged: list[MergedHolder] = []
    foreign: list[ForeignPid] = []
    if gpu.available or holders:
        merged, foreign = merged_holders(snapshot, gpu, holders)
    orphans = frozenset(m.pid for m in merged if m.orphan is not None)
    dup: set[int] = set()
    for g in duplicates:
        for inst in g.instances:
            dup.add(inst.pid)
            dup.update(inst.members)
    lock_pids = frozenset(
        p for lk in locks if not lk.stale for p in (lk.holders or ((lk.pid,) if lk.pid else ()))
    )
    return Model(
        seq,
        snapshot,
        gpu,
        tuple(duplicates),
        tuple(scheduled),
        tuple(locks),
        tuple(stale_locks),
        MappingProxyType({g.pid: g for g in guarded}),
        tuple(errors),
        MappingProxyType(gpu_by_pid),
        orphans,
        frozenset(dup),
        lock_pids,
        MappingProxyType(dict(run_jobs or {})),
        cgroups=MappingProxyType(dict(cgroups or {})),
        frozen=MappingProxyType(dict(frozen or {})),
        holders=tuple(merged),
        foreign=tuple(foreign),
        node=node,
        owners=MappingProxyType(dict(owners or {})),
    )


def _cluster_errors(parts: Sequence[Model], failures: Sequence[str]) -> tuple[str, ...]:
    named = [f"node {p.node.short}: {e}" if p.node is not None else e for p in parts for e in p.errors]
    return (*failures, *named)


def cluster_model(seq: int, parts: Sequence[Model], failures: Sequence[str] = ()) -> Model:
    """The whole cluster as one model: `parts`, one Model per node that answered (its `node` set, head first), and
    `failures`, one line per node that did not (shown in the summary; the other nodes' rows still come)."""
    when = max((p.time for p in parts), default=0.0)
    return Model(
        seq,
        Snapshot(MappingProxyType({}), when),
        GpuSnapshot(False, "a cluster", (), (), when),
        errors=_cluster_errors(parts, failures),
        cluster=True,
        parts=tuple(parts),
        failures=tuple(failures),
    )


# ---------------------------------------------------------------------------------------------- rows


class Row(NamedTuple):
    """One line of the Processes view: a process, or the header of a process group / session."""

    key: RowKey
    kind: Literal["proc", "group", "session", "cgroup"]
    id: int  # pid, pgid or sid; a cgroup row: its lowest member pid
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
    # Folding: `fold` is the key `-` / `+` fold this row by (None: nothing hangs under it); a folded process row
    # shows the totals of its whole subtree (size, stopped, cpu, rss, gpu, flags); `parent` is the key of the
    # row it hangs under (None at the top), where ← goes.
    fold: FoldKey | None = None
    folded: bool = False
    parent: RowKey | None = None
    node: str = ""  # cluster mode: the id of the node the row lives on ("" on a single host)
    label: str = (
        ""  # what the cgroup is (docker 1a2b3c4d5e6f, nginx.service, slurm 42.0): a cgroup row's, a process's
    )
    frozen: int = 0  # members frozen by the cgroup freezer (they show as F, not S)
    task: str = ""  # cluster mode: the Ray task (or actor) owning the process, short


@dataclass(frozen=True)
class Folds:
    """Which rows of the Processes view are folded. `default`: "auto" (rows at AUTO_FOLD or more start
    folded), "folded" (after `*` folded everything below the top level: the tree's roots stay open, so their
    children show folded; every group and session header folds) or "open" (after `*` opened everything);
    `folded` and `opened` are the rows the user folded or opened since, by FoldKey."""

    default: Literal["auto", "folded", "open"] = "auto"
    folded: frozenset[FoldKey] = frozenset()
    opened: frozenset[FoldKey] = frozenset()

    def is_folded(self, key: FoldKey, big: bool, top: bool = False) -> bool:
        """`big`: the row is big enough to start folded; `top`: a root of the tree."""
        if key in self.folded:
            return True
        if key in self.opened:
            return False
        return (self.default == "folded" and not top) or (self.default == "auto" and big)

    def fold(self, key: FoldKey) -> Folds:
        return replace(self, folded=self.folded | {key}, opened=self.opened - {key})

    def unfold(self, key: FoldKey) -> Folds:
        return replace(self, folded=self.folded - {key}, opened=self.opened | {key})

    def prune(self, alive: Callable[[FoldKey], bool]) -> Folds:
        """Without the keys of processes, groups and sessions that ended (called now and then, not per row)."""
        folded = frozenset(k for k in self.folded if alive(k))
        opened = frozenset(k for k in self.opened if alive(k))
        return (
            self
            if (folded, opened) == (self.folded, self.opened)
            else replace(self, folded=folded, opened=opened)
        )


@dataclass(frozen=True)
class ViewState:
    grouping: Grouping = "parent"
    sort: SortKey = "pid"
    reverse: bool = False  # against the sort key's natural direction
    filter: str = ""
    user: str | None = None  # only this user's processes
    show_kernel: bool = False  # kernel threads are hidden: hundreds of rows nobody can act on
    node: str | None = None  # cluster mode: only this node's rows (`n`); None: every node
    folds: Folds = Folds()

    @property
    def descending(self) -> bool:
        return _DESCENDING[self.sort] != self.reverse


def proc_key(pid: int) -> RowKey:
    return ("p", pid)


def proc_fold_key(p: Proc) -> FoldKey:
    return ("p", p.pid, p.start_ticks)


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


def _proc_row(
    model: Model, p: Proc, depth: int, prefix: str, parent: RowKey | None = None, fold: FoldKey | None = None
) -> Row:
    stopped = 1 if p.stopped else 0
    return Row(
        ("p", p.pid),
        "proc",
        p.pid,
        depth,
        prefix,
        p,
        1,
        stopped,
        p.cpu_percent,
        p.rss,
        model.gpu_by_pid.get(p.pid, 0),
        flags_of(model, p),
        (p.pid,),
        fold,
        False,
        parent,
        label=cgroup_label(model, p.pid),
        frozen=1 if p.pid in model.frozen else 0,
        task=model.owners.get(p.pid, ""),
    )


def cgroup_label(model: Model, pid: int) -> str:
    """The CGROUP column: what the process's cgroup is (a container, a unit, a SLURM step), and inside another PID
    namespace its own pid there (`docker 3f9a1c2b4d5e pid 1`)."""
    info = model.cgroups.get(pid)
    if info is None or info.name is None:
        return ""
    inner = f" pid {info.inner_pid}" if info.inner_pid is not None else ""
    return ("" if info.name.kind == "root" else info.name.label) + inner


def shown_state(row: Row) -> str:
    """The S column: ps's state letter, F for a process the cgroup freezer holds (ps says S)."""
    p = row.proc
    if p is None:
        return ""
    return STATE_FROZEN if row.frozen and not p.dead else p.state


def _folded_row(
    model: Model, p: Proc, depth: int, prefix: str, parent: RowKey | None, hidden: Sequence[Proc]
) -> Row:
    """A folded process: its own line with the totals of its whole subtree, `▸ +N` before the command."""
    everything = (p, *hidden)
    gpu = model.gpu_by_pid
    letters = set().union(*(flags_of(model, q) for q in everything))
    return Row(
        ("p", p.pid),
        "proc",
        p.pid,
        depth,
        f"{prefix}▸ +{len(hidden)} ",
        p,
        len(everything),
        sum(1 for q in everything if q.stopped),
        sum(q.cpu_percent for q in everything),
        sum(q.rss for q in everything),
        sum(gpu.get(q.pid, 0) for q in everything),
        "".join(f for f in FLAGS if f in letters),
        (p.pid,),
        proc_fold_key(p),
        True,
        parent,
    )


def _subtree(pid: int, kids: Mapping[int | None, list[int]], seen: set[int]) -> list[int]:
    """Every pid below `pid` (not yet `seen`; marks them seen), iteratively."""
    out: list[int] = []
    todo = list(kids.get(pid, ()))
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        out.append(c)
        todo.extend(kids.get(c, ()))
    return out


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
    """The Processes view's rows for `state`: filtered, grouped and sorted (a cluster: every node's, one table)."""
    if model.cluster:
        return _cluster_rows(model, state)
    vis = _visible(model, state)
    if state.grouping == "parent":
        return _tree_rows(model, vis, state)
    if state.grouping == "cgroup":
        return _cgroup_rows(model, vis, state)
    return _grouped_rows(model, vis, state)


def _cluster_rows(model: Model, state: ViewState) -> list[Row]:
    """Every node's rows (or the node `n` narrowed to) in one table, each keyed and tagged with its node. Sorted by
    pid they come node by node (head first); sorted by anything else, the nodes' top-level blocks (a root with its
    subtree, a header with its members) merge by that value: the biggest consumer of the cluster comes first."""
    blocks: list[tuple[float, list[Row]]] = []
    for part in model.only(state.node).parts:
        nid = part.node.node_id if part.node is not None else ""
        block: list[Row] = []
        for r in build_rows(part, state):
            if r.depth == 0 and block:
                blocks.append((_block_value(part, block[0], state.sort), block))
                block = []
            parent = (*r.parent, nid) if r.parent is not None else None  # where ← goes, on this node
            block.append(r._replace(key=(*r.key, nid), node=nid, parent=parent))
        if block:
            blocks.append((_block_value(part, block[0], state.sort), block))
    if state.sort != "pid":
        blocks.sort(key=lambda b: b[0], reverse=state.descending)  # stable: ties keep the node order
    return [r for _value, block in blocks for r in block]


def _block_value(model: Model, head: Row, key: SortKey) -> float:
    if head.kind == "proc" and head.proc is not None:
        return _proc_sort_value(model, head.proc, key)
    return _group_sort_value(model, head, key)


def _sorted_pids(model: Model, pids: Iterable[int], procs: Mapping[int, Proc], state: ViewState) -> list[int]:
    key = state.sort
    if key == "pid":
        return sorted(pids, reverse=state.descending)
    # Ties broken by pid so equal rows never swap places between refreshes.
    items = sorted(pids)
    if len(items) <= 1:  # most parents have one child: no sort keys to compute
        return items
    items.sort(key=lambda pid: _proc_sort_value(model, procs[pid], key), reverse=state.descending)
    return items


def _tree_kids(model: Model, vis: Mapping[int, Proc]) -> dict[int | None, list[int]]:
    """visible pid -> its visible children (None -> the roots)."""
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
    return kids


def _tree_rows(model: Model, vis: Mapping[int, Proc], state: ViewState) -> list[Row]:
    kids = _tree_kids(model, vis)
    rows: list[Row] = []
    folds = state.folds
    # Iterative depth-first walk: deep chains must not hit the recursion limit.
    # (pid, depth, prefix for it, prefix for its children, the row it hangs under)
    stack: list[tuple[int, int, str, str, RowKey | None]] = []
    for pid in reversed(_sorted_pids(model, kids.get(None, ()), vis, state)):
        stack.append((pid, 0, "", "", None))
    emitted: set[int] = set()
    while stack:
        pid, depth, prefix, child_prefix, parent = stack.pop()
        if pid in emitted:
            continue
        emitted.add(pid)
        p = vis[pid]
        below = kids.get(pid)
        if not below:
            rows.append(_proc_row(model, p, depth, prefix, parent))
            continue
        fold = proc_fold_key(p)
        # The roots of the whole table (init, kthreadd: ppid 0) never fold by themselves: init with its hundred
        # daemons stays open; `*` keeps every top row open.
        if folds.is_folded(fold, big=p.ppid != 0 and len(below) >= AUTO_FOLD, top=depth == 0):
            hidden = _subtree(pid, kids, emitted)
            rows.append(_folded_row(model, p, depth, prefix, parent, [vis[c] for c in hidden]))
            continue
        rows.append(_proc_row(model, p, depth, prefix, parent, fold))
        children = _sorted_pids(model, below, vis, state)
        n = len(children)
        me = proc_key(pid)
        for i in range(n - 1, -1, -1):
            last = i == n - 1
            stack.append(
                (
                    children[i],
                    depth + 1,
                    child_prefix + ("└─ " if last else "├─ "),
                    child_prefix + ("   " if last else "│  "),
                    me,
                )
            )
    if len(emitted) < len(vis):  # a ppid loop (can't happen in /proc, can in hand-made data): show them flat
        for pid in sorted(set(vis) - emitted):
            rows.append(_proc_row(model, vis[pid], 0, ""))
    return rows


def _aggregate(
    model: Model,
    kind: Literal["group", "session", "cgroup"],
    gid: int,
    member_pids: Sequence[int],
    key: RowKey | None = None,
    label: str = "",
) -> Row:
    procs = model.snapshot.procs
    members = [procs[m] for m in member_pids if m in procs]
    leader = procs.get(gid)
    seen: set[str] = set()
    for m in members:
        seen.update(flags_of(model, m))
    flags = "".join(f for f in FLAGS if f in seen)
    return Row(
        key or (kind[0], gid),
        kind,
        gid,
        0,
        "",
        leader,
        len(members),
        sum(1 for m in members if m.stopped),
        sum(m.cpu_percent for m in members),
        sum(m.rss for m in members),
        sum(model.gpu_by_pid.get(m.pid, 0) for m in members),
        flags,
        tuple(m.pid for m in members),
        label=label,
        frozen=sum(1 for m in members if m.pid in model.frozen),
    )


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
    return _ordered(model, entries, vis, state)


def _cgroup_rows(model: Model, vis: Mapping[int, Proc], state: ViewState) -> list[Row]:
    """One header per cgroup unit (a container, a systemd unit or scope, a SLURM job step: CgroupName.unit_path),
    labelled with what it is, its totals over every member (what acting on it hits), and its shown members under
    it. A process whose cgroup could not be read stands alone."""
    procs = model.snapshot.procs
    index = model.cgroup_index
    by_unit: dict[str, list[int]] = {}
    alone: list[int] = []
    for pid in vis:
        info = model.cgroups.get(pid)
        if info is None or info.name is None:
            alone.append(pid)
        else:
            by_unit.setdefault(info.name.unit_path, []).append(pid)
    entries: list[tuple[Row, list[int]]] = []
    for unit, shown in by_unit.items():
        full = [m for m in index.get(unit, ()) if not procs[m].kernel_thread or state.show_kernel] or shown
        name = model.cgroups[shown[0]].name
        label = ROOT_CGROUP_LABEL if unit == "/" or name is None else name.label
        entries.append((_aggregate(model, "cgroup", min(full), full, key=("c", unit), label=label), shown))
    entries += [(_proc_row(model, vis[pid], 0, ""), []) for pid in alone]
    return _ordered(model, entries, vis, state)


def _ordered(
    model: Model, entries: list[tuple[Row, list[int]]], vis: Mapping[int, Proc], state: ViewState
) -> list[Row]:
    """Header rows (and lone processes) sorted, each header followed by its shown members."""
    procs = model.snapshot.procs
    keys = [
        (
            e,
            _group_sort_value(model, e[0], state.sort)
            if e[0].kind != "proc"
            else _proc_sort_value(model, procs[e[0].id], state.sort),
        )
        for e in entries
    ]
    keys.sort(key=lambda kv: kv[0][0].id)
    keys.sort(key=lambda kv: kv[1], reverse=state.descending)
    rows: list[Row] = []
    folds = state.folds
    for (head, shown), _ in keys:
        if head.kind == "proc":
            rows.append(head)
            continue
        if folds.is_folded(head.key, big=head.size >= AUTO_FOLD):
            rows.append(head._replace(fold=head.key, folded=True))
            continue
        rows.append(head._replace(fold=head.key))
        ordered = _sorted_pids(model, shown, vis, state)
        n = len(ordered)
        for i, pid in enumerate(ordered):
            rows.append(_proc_row(model, vis[pid], 1, "└─ " if i == n - 1 else "├─ ", head.key))
    return rows


def user_view(model: Model, user: str | None) -> Model:
    """The model as `--user NAME` shows it in the Duplicates, Locks and GPU views and the summary line: that
    user's processes only (kernel threads left out), the duplicate groups with a run of theirs (every run of
    such a group: `d` acts on the whole group), their scheduler-managed runs, the locks one of their processes
    holds, the GPU memory their processes hold. Stale lock files stay: they are this account's lock folder's.
    The devices' own figures stay machine-wide. Actions still resolve on the full model (app.model)."""
    if user is None:
        return model
    if model.cluster:
        return replace(model, parts=tuple(user_view(part, user) for part in model.parts))
    procs = {pid: p for pid, p in model.snapshot.procs.items() if p.username == user and not p.kernel_thread}
    mine = procs.keys()
    gpu = replace(model.gpu, processes=tuple(g for g in model.gpu.processes if g.pid in mine))
    return replace(
        model,
        snapshot=Snapshot(MappingProxyType(procs), model.snapshot.time),
        gpu=gpu,
        duplicates=tuple(g for g in model.duplicates if any(i.username == user for i in g.instances)),
        scheduled=tuple(s for s in model.scheduled if s.instance.username == user),
        locks=tuple(lk for lk in model.locks if lk.stale or any(h in mine for h in _holders(lk))),
        guarded=MappingProxyType({pid: g for pid, g in model.guarded.items() if pid in mine}),
        gpu_by_pid=MappingProxyType({pid: b for pid, b in model.gpu_by_pid.items() if pid in mine}),
        orphans=model.orphans.intersection(mine),
        dup_pids=model.dup_pids.intersection(mine),
        lock_pids=model.lock_pids.intersection(mine),
        run_jobs=MappingProxyType({j: lp for j, lp in model.run_jobs.items() if j in mine}),
        holders=tuple(h for h in model.holders if h.pid in mine),
        foreign=(),  # pids of another PID namespace: nobody's that we can tell
    )


def _holders(lk: HeldLock) -> tuple[int, ...]:
    return lk.holders or ((lk.pid,) if lk.pid else ())


# ---------------------------------------------------------------------------------------------- targets


def targets_for_keys(keys: Iterable[RowKey], snapshot: Snapshot) -> list[Target]:
    """Targets of marked rows, from their keys alone (a marked row may be filtered out of view just now). A cgroup
    row is the whole cgroup (`Target.cgroup`: cgroup.kill / cgroup.freeze where the kernel has them)."""
    out: list[Target] = []
    for key in sorted(keys):
        kind, ident = key[0], key[1]
        if kind == "c":
            out.append(Target.cgroup(str(ident)))
            continue
        assert isinstance(ident, int), key
        if kind == "p":
            out.append(Target.pid(ident))
        elif kind == "g":
            out.append(Target.group(ident))
        else:
            out.extend(
                Target.group(g) for g in sorted({p.pgid for p in views.session_members(snapshot, ident)})
            )
    return list(dict.fromkeys(out))


class NodeTargets(NamedTuple):
    """What one node is asked to act on: its targets, and its snapshot that the dry run used (the pids are that
    node's). A single host is one of these with node ""."""

    node: str  # node id ("" on a single host)
    label: str  # how the confirm dialog names the node (NodeView.label; "" on a single host)
    targets: tuple[Target, ...]
    snapshot: Snapshot


def node_targets(keys: Iterable[RowKey], model: Model) -> list[NodeTargets]:
    """Targets of marked (or selected) rows grouped by the node each lives on, head first: each node gets its
    own part of an action."""
    if not model.cluster:
        ts = targets_for_keys(keys, model.snapshot)
        return [NodeTargets("", "", tuple(ts), model.snapshot)] if ts else []
    by_node: dict[str, list[RowKey]] = {}
    for k in keys:
        if len(k) == 3:
            by_node.setdefault(str(k[2]), []).append((k[0], k[1]))
    out: list[NodeTargets] = []
    for part in model.parts:
        if part.node is not None and part.node.node_id in by_node:
            ts = targets_for_keys(by_node[part.node.node_id], part.snapshot)
            if ts:
                out.append(NodeTargets(part.node.node_id, part.node.label, tuple(ts), part.snapshot))
    return out


def cgroup_note(kind: str, plan: CgroupPlan) -> str:
    """The confirm dialog's line for an action on a whole cgroup: which one, how many processes, and how it would
    go here (core's dry run, `cgroups.cgroup_plan`: cgroup.kill / cgroup.freeze, or the fallback and why)."""
    path, name = plan.cgroup.path, plan.name
    what = f"cgroup {path}" + (f" ({name.label})" if name.label not in ("", path) else "")
    if plan.refused:
        return plan.refused
    if kind in ("terminate", "kill"):
        how = plan.kill_method + (
            " (one write: no member can fork past it)" if plan.kill_method == "cgroup.kill" else ""
        )
        if kind == "terminate":
            how = f"SIGTERM to every member, then {how} after the grace"
    elif kind == "pause":
        how = f"frozen with {plan.freeze_method}"
    else:
        how = "thawed, stopped members continued (SIGCONT)"
    n = len(plan.members)
    fallback = f"; {plan.fallback}" if plan.fallback and kind != "resume" else ""
    return f"{what}, {n} process{'es' if n != 1 else ''}: {how}{fallback}"


def row_node_targets(model: Model, node: str, targets: Sequence[Target]) -> list[NodeTargets]:
    """The targets of one row of views 2-4 (a duplicate run, a lock's holders, a GPU process) on its node."""
    part = model.part(node)
    if part is None or not targets:
        return []
    return [
        NodeTargets(node, part.node.label if part.node is not None else "", tuple(targets), part.snapshot)
    ]


def thaw_targets(model: Model, groups: Sequence[NodeTargets]) -> list[NodeTargets]:
    """`r` on processes the cgroup freezer holds: SIGCONT does not wake them, so each cgroup that froze one of the
    processes `groups` cover is added as a cgroup target (a thaw, which resumes all of its members)."""
    out: list[NodeTargets] = []
    for g in groups:
        part = model.part(g.node) if g.node else model
        if part is None or not part.frozen:
            out.append(g)
            continue
        pids: set[int] = set()
        for t in g.targets:
            if t.kind == "pid":
                pids.add(t.id)
            elif t.kind == "group":
                pids.update(p.pid for p in views.group_members(g.snapshot, t.id))
            elif t.kind == "tree":
                pids.update(p.pid for p in views.tree(g.snapshot, t.id))
        roots = sorted({part.frozen[p] for p in pids if part.frozen.get(p)})
        extra = [Target.cgroup(r) for r in roots if Target.cgroup(r) not in g.targets]
        out.append(g._replace(targets=(*g.targets, *extra)))
    return out


@dataclass(frozen=True)
class Blast:
    """The blast radius of an action, as the confirm dialog shows it."""

    members: tuple[Member, ...]
    gpu_bytes: int  # GPU memory the members hold
    gpu_by_pid: Mapping[int, int]  # (single host) acting members' GPU memory
    locks: tuple[str, ...]  # lock files every holder of which is a member: freed when they end
    flushable: int  # of that GPU memory, what guarded processes report as reserved-but-unused
    nodes: tuple[str, ...] = ()  # cluster mode: the node id of each member (parallel to members)
    member_gpu: tuple[int, ...] = ()  # GPU memory of each member (parallel to members)

    @property
    def acting(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if not m.protected)

    def keyed(self) -> list[tuple[StatusKey, Member]]:
        """The acting members with the key their row's progress label goes by (a pid; (pid, node) in cluster
        mode, where the same pid on another node is another process)."""
        nodes = self.nodes or ("",) * len(self.members)
        return [
            (status_key(m.pid, n), m) for m, n in zip(self.members, nodes, strict=True) if not m.protected
        ]

    @property
    def refused(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.protected)


def blast_radius(model: Model, members: Sequence[Member], nodes: Sequence[str] | None = None) -> Blast:
    """What the members (of the dry run) hold; `nodes`: in cluster mode, the node id of each member."""
    tags = tuple(nodes) if nodes is not None else ("",) * len(members)
    acting: dict[str, set[int]] = {}
    for m, n in zip(members, tags, strict=True):
        if not m.protected:
            acting.setdefault(n, set()).add(m.pid)
    gpu = flushable = 0
    locks: set[str] = set()
    by_pid: dict[int, int] = {}
    for n, pids in acting.items():
        part = model.part(n)
        if part is None:
            continue
        gpu += sum(part.gpu_by_pid.get(p, 0) for p in pids)
        where = f"{n[:8]}:" if n else ""  # a lock path means a file of that node
        locks.update(
            where + lk.path for lk in part.locks if not lk.stale and lk.holders and set(lk.holders) <= pids
        )
        flushable += sum((part.guarded[p].flushable or 0) for p in pids if p in part.guarded)
        if not model.cluster:
            by_pid = {p: part.gpu_by_pid[p] for p in pids if part.gpu_by_pid.get(p)}
    parts = {n: model.part(n) for n in set(tags)}
    member_gpu = tuple(
        (part.gpu_by_pid.get(m.pid, 0) if (part := parts[n]) is not None else 0)
        for m, n in zip(members, tags, strict=True)
    )
    return Blast(
        tuple(members),
        gpu,
        MappingProxyType(by_pid),
        tuple(sorted(locks)),
        flushable,
        tuple(nodes) if nodes is not None and model.cluster else (),
        member_gpu,
    )


def prune_marks(marks: Collection[RowKey], model: Model) -> set[RowKey]:
    """The marks whose process (not a zombie: it has ended), group or session still exists."""
    return {k for k in marks if key_alive(model, k)}


def fold_alive(model: Model, key: FoldKey) -> bool:
    """Whether a fold key still names something shown: a process (same start time), group or session."""
    if len(key) == 3:
        _, pid, start = key
        p = model.snapshot.get(pid)  # type: ignore[arg-type]
        return p is not None and p.start_ticks == start and not p.dead
    return key_alive(model, key)  # type: ignore[arg-type]


def key_alive(model: Model, key: RowKey) -> bool:
    if len(key) == 3:  # cluster mode: on its node, if that node answered this time
        part = model.part(str(key[2])) if model.cluster else None
        return part is not None and key_alive(part, (key[0], key[1]))
    kind, ident = key[0], key[1]
    snap = model.snapshot
    if kind == "c":
        return ident in model.cgroup_index
    if kind == "p":
        p = snap.get(ident)  # type: ignore[arg-type]
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
    frozen: int = 0  # processes the cgroup freezer holds
    gpu_holders: int = 0  # processes holding a GPU: NVML's and the kernel's (device open)
    device_open: int = 0  # of those, the ones NVML does not list (no memory figure)
    gpu_orphans: int = 0  # GPU holders left behind (flag O)
    nodes: int = 0  # cluster mode: nodes counted
    failed_nodes: int = 0  # cluster mode: nodes that did not answer this refresh


def summarize_model(model: Model) -> Totals:
    """The figures of a model: a single host, a whole cluster (every part summed), or one node of it."""
    n = py = stopped = zombies = frozen = dups = held = holders = device_open = orphans = 0
    used = total = None
    reason: str | None = "no node answered" if model.cluster else None
    for part in model.each():
        for p in part.snapshot:
            if p.kernel_thread:
                continue
            n += 1
            if p.python is not None:
                py += 1
            if p.stopped:
                stopped += 1
            elif p.dead:
                zombies += 1
            elif p.pid in part.frozen:
                frozen += 1
        dups += len(part.duplicates)
        held += sum(1 for lk in part.locks if not lk.stale)
        holders += len(part.holders)
        device_open += sum(1 for h in part.holders if not h.in_nvml)
        orphans += len(part.orphans)
        gpu = part.gpu
        if gpu.available:
            used = (used or 0) + sum(d.memory_used for d in gpu.devices)
            total = (total or 0) + sum(d.memory_total for d in gpu.devices)
            reason = None
        elif used is None:
            reason = gpu.reason
    return Totals(
        n,
        py,
        dups,
        held,
        stopped,
        zombies,
        used,
        total,
        reason,
        frozen,
        holders,
        device_open,
        orphans,
        len(model.parts) if model.cluster else 0,
        len(model.failures),
    )


# ---------------------------------------------------------------------------------------------- formatting


def truncate(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def group_label(row: Row) -> str:
    """The command column of a group/session header."""
    stopped = f", {row.stopped} stopped" if row.stopped else ""
    lead = f" · {display_command(row.proc)}" if row.proc is not None else ""
    fold = "▸ " if row.folded else ""
    if row.kind == "cgroup":
        frozen = (", frozen" if row.frozen == row.size else f", {row.frozen} frozen") if row.frozen else ""
        return f"{fold}{row.label}: {row.size} proc{'s' if row.size != 1 else ''}{frozen}{stopped}{lead}"
    what = "group" if row.kind == "group" else "session"
    return f"{fold}{what} {row.id}: {row.size} procs{stopped}{lead}"


def status_text(state: ViewState, marks: int, shown: int, folded: int = 0) -> str:
    arrow = "▼" if state.descending else "▲"
    parts = [GROUPING_LABELS[state.grouping], f"sort {SORT_LABELS[state.sort]} {arrow}"]
    if state.node:
        parts.insert(0, f"node {state.node[:8]}")
    if state.filter:
        parts.append(f"filter “{state.filter}”")
    if state.user:
        parts.append(f"user {state.user}")
    parts.append(f"{shown} shown")
    if folded:
        parts.append(f"{folded} folded")
    if marks:
        parts.append(f"{marks} marked")
    return " · ".join(parts)
