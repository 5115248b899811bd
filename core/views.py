"""Pure functions over a Snapshot: relatives, groups, sessions, diffs. No I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from procguard.core.snapshot import Proc, Snapshot


def children(snap: Snapshot, pid: int) -> list[Proc]:
    return [snap.procs[c] for c in snap.children_map.get(pid, ()) if c != pid]


def descendant_pids(children_map: Mapping[int, Iterable[int]], roots: Iterable[int]) -> list[int]:
    """Every pid below any of `roots` in a ppid -> child pids map, breadth first, each once, roots not included
    (even when one root is below another). The one tree walk: `descendants` over a snapshot, and signals'
    rescans over their own stat-only table."""
    out: list[int] = []
    frontier = list(roots)
    seen = set(frontier)
    while frontier:
        nxt: list[int] = []
        for p in frontier:
            for c in children_map.get(p, ()):
                if c not in seen:
                    seen.add(c)
                    out.append(c)
                    nxt.append(c)
        frontier = nxt
    return out


def descendants(snap: Snapshot, pid: int) -> list[Proc]:
    """Every process below pid, breadth first (pid itself not included)."""
    procs = snap.procs
    return [procs[c] for c in descendant_pids(snap.children_map, (pid,))]


def tree(snap: Snapshot, pid: int) -> list[Proc]:
    """pid and all its descendants (empty if pid is not in the snapshot)."""
    root = snap.get(pid)
    return [] if root is None else [root, *descendants(snap, pid)]


def ancestors(snap: Snapshot, pid: int) -> list[Proc]:
    """Parent first, up to the root; stops at a loop or a parent missing from the snapshot."""
    out: list[Proc] = []
    seen = {pid}
    p = snap.get(pid)
    while p is not None and p.ppid not in seen:
        parent = snap.get(p.ppid)
        if parent is None:
            break
        out.append(parent)
        seen.add(parent.pid)
        p = parent
    return out


def group_members(snap: Snapshot, pgid: int) -> list[Proc]:
    return [snap.procs[p] for p in snap.group_map.get(pgid, ())]


def session_members(snap: Snapshot, sid: int) -> list[Proc]:
    return [snap.procs[p] for p in snap.session_map.get(sid, ())]


def _by_pid(p: Proc) -> int:
    return p.pid


def roots(snap: Snapshot) -> list[Proc]:
    """Processes whose parent is not in the snapshot (pid 1, kthreadd, or orphans of another namespace)."""
    return sorted((p for p in snap if p.ppid not in snap.procs or p.ppid == p.pid), key=lambda p: p.pid)


class SnapshotDiff(NamedTuple):
    added: tuple[int, ...]  # new processes (including a reused pid with a new start time)
    removed: tuple[int, ...]  # processes that ended
    changed: tuple[int, ...]  # same process, different state, ppid, pgid, cmdline or rss


def tree_order(procs: Iterable[Proc], key: Callable[[Proc], Any] = _by_pid) -> list[tuple[int, Proc]]:
    """(depth, proc) depth-first from the roots (a process whose parent is not among `procs`), siblings ordered
    by `key` (pid by default): `ps --tree`'s rows, local and --ray. Iterative, so a very deep chain can't hit the
    recursion limit. `procs` may be a Snapshot or any subset of one (a filter's result)."""
    procs = list(procs)
    pids = {p.pid for p in procs}
    kids: dict[int, list[Proc]] = {}
    tops: list[Proc] = []
    for p in procs:
        if p.ppid in pids and p.ppid != p.pid:
            kids.setdefault(p.ppid, []).append(p)
        else:
            tops.append(p)
    out: list[tuple[int, Proc]] = []
    stack = [(0, p) for p in sorted(tops, key=key, reverse=True)]
    seen: set[int] = set()
    while stack:
        depth, p = stack.pop()
        if p.pid in seen:
            continue
        seen.add(p.pid)
        out.append((depth, p))
        stack.extend((depth + 1, c) for c in sorted(kids.get(p.pid, ()), key=key, reverse=True))
    return out


def _same_process(a: Proc, b: Proc) -> bool:
    return (
        a.start_ticks == b.start_ticks if a.start_ticks and b.start_ticks else a.create_time == b.create_time
    )


def diff(old: Snapshot, new: Snapshot) -> SnapshotDiff:
    added: list[int] = []
    removed: list[int] = []
    changed: list[int] = []
    for pid, p in new.procs.items():
        q = old.procs.get(pid)
        if q is None:
            added.append(pid)
        elif not _same_process(q, p):
            added.append(pid)
            removed.append(pid)
        elif (q.state, q.ppid, q.pgid, q.sid, q.cmdline, q.rss) != (
            p.state,
            p.ppid,
            p.pgid,
            p.sid,
            p.cmdline,
            p.rss,
        ):
            changed.append(pid)
    removed.extend(pid for pid in old.procs if pid not in new.procs)
    return SnapshotDiff(tuple(sorted(added)), tuple(sorted(removed)), tuple(sorted(changed)))
