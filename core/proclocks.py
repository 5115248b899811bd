"""Low-level readers for Linux file locks: ``/proc/locks``, ``/proc/PID/fdinfo``, ``/proc/PID/task/*/children``.

``/proc/locks`` lines are ``id: CLASS MODE TYPE PID MAJ:MIN:INO START END`` (MAJ:MIN in hex; a blocked waiter
has ``->`` after the id; OFD locks show pid -1). ``/proc/PID/fdinfo/N`` has a ``lock:`` line in the same format
(with its own id) for each lock held through that descriptor, so a lock is matched to its holders by
everything after the id: its *key*. Only procfs is read here, never the locked files themselves.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

PROC = "/proc"
PROC_LOCKS = "/proc/locks"
_KINDS = {"FLOCK": "flock", "POSIX": "posix", "OFDLCK": "ofd", "LEASE": "lease", "DELEG": "deleg"}
_CHUNK = 8192

LockKey = tuple[str, ...]
# key -> [(pid, fd)]: the descriptors through which each lock is held
FdIndex = dict[LockKey, list[tuple[int, int]]]


@dataclass(frozen=True)
class LockEntry:
    """One line of /proc/locks."""

    lock_id: str
    key: LockKey
    kind: str  # flock | posix | ofd | lease | deleg
    mode: str  # read | write (| unlck for a lease being broken)
    pid: int  # the process that took it; -1 for OFD, 0 when not visible from our pid namespace
    device: tuple[int, int] | None  # (major, minor)
    inode: int | None
    start: int
    end: int | None  # None = to EOF
    waiting: bool  # a blocked waiter, not a holder


def _parse(lock_id: str, tokens: list[str], waiting: bool) -> LockEntry | None:
    if len(tokens) < 7:
        return None
    cls, _advisory, typ, pid_s, dev_s, start_s, end_s = tokens[:7]
    try:
        pid = int(pid_s)
    except ValueError:
        return None
    device: tuple[int, int] | None = None
    inode: int | None = None
    parts = dev_s.split(":")  # "<none>:0" for a lock without an inode
    if len(parts) == 3:
        with contextlib.suppress(ValueError):
            device, inode = (int(parts[0], 16), int(parts[1], 16)), int(parts[2])
    try:
        start, end = int(start_s), (None if end_s == "EOF" else int(end_s))
    except ValueError:
        start, end = 0, None
    return LockEntry(
        lock_id=lock_id,
        key=tuple(tokens[:7]),
        kind=_KINDS.get(cls, cls.lower()),
        mode=typ.lower(),
        pid=pid,
        device=device,
        inode=inode,
        start=start,
        end=end,
        waiting=waiting,
    )


def parse_proc_locks(data: bytes) -> list[LockEntry]:
    """The entries of /proc/locks content (holders and waiters): a pure function, fed fixtures in tests.

    A waiter line has ``->`` after the id (nested waiters indent it further); a line that doesn't parse is
    skipped, never guessed at.
    """
    out: list[LockEntry] = []
    for line in data.decode("ascii", "replace").splitlines():
        toks = line.split()
        if not toks:
            continue
        rest, waiting = toks[1:], False
        while rest and rest[0].startswith("->"):
            rest, waiting = rest[1:], True
        e = _parse(toks[0].rstrip(":"), rest, waiting)
        if e is not None:
            out.append(e)
    return out


def read_proc_locks() -> list[LockEntry] | None:
    """All entries of /proc/locks, holders and waiters; None where there is no /proc/locks."""
    try:
        with open(PROC_LOCKS, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return parse_proc_locks(data)


def fdinfo_lock_keys(data: bytes) -> list[LockKey]:
    """The keys of the locks in one ``/proc/PID/fdinfo/N`` (its ``lock:`` lines, id dropped): pure."""
    keys: list[LockKey] = []
    for line in data.split(b"\n"):
        if line.startswith(b"lock:"):
            toks = line.decode("ascii", "replace").split()[2:]  # drop "lock:" and the id
            if len(toks) >= 7:
                keys.append(tuple(toks[:7]))
    return keys


def _read_fdinfo(path: str) -> bytes | None:
    try:
        f = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(f, _CHUNK)
        # Lock lines come right after the fixed header; only a descriptor with very many locks runs on.
        while len(data) % _CHUNK == 0 and b"lock:" in data:
            more = os.read(f, _CHUNK)
            if not more:
                break
            data += more
        return data
    except OSError:
        return None
    finally:
        os.close(f)


def fd_locks_of(pid: int, wanted: set[LockKey], into: FdIndex) -> bool:
    """Add the wanted locks held through `pid`'s descriptors to `into`; False if we may not read them."""
    base = f"{PROC}/{pid}/fdinfo/"
    try:
        fds = os.listdir(base)
    except PermissionError:
        return False  # another user's process
    except OSError:
        return True  # gone: nothing left to see
    for fdname in fds:
        data = _read_fdinfo(base + fdname)
        if not data or b"lock:" not in data:
            continue
        for key in fdinfo_lock_keys(data):
            if key in wanted:
                into.setdefault(key, []).append((pid, int(fdname)))
    return True


def all_pids() -> list[int]:
    try:
        return [int(n) for n in os.listdir(PROC) if n.isdigit()]
    except OSError:
        return []


def full_scan(wanted: set[LockKey]) -> FdIndex:
    """Every visible descriptor holding a wanted lock: one fdinfo read per open fd on the machine."""
    found: FdIndex = {}
    if wanted:
        for pid in all_pids():
            fd_locks_of(pid, wanted, found)
    return found


def descendants(roots: Iterable[int], limit: int) -> set[int] | None:
    """`roots` and their descendants; expansion stops once `limit` processes are collected.

    None where the kernel has no ``/proc/PID/task/TID/children`` (CONFIG_PROC_CHILDREN).
    """
    seen = {p for p in roots if p > 0}
    frontier = list(seen)
    while frontier and len(seen) < limit:
        pid = frontier.pop()
        try:
            tids = os.listdir(f"{PROC}/{pid}/task")
        except OSError:
            continue  # gone
        for tid in tids:
            try:
                with open(f"{PROC}/{pid}/task/{tid}/children", "rb") as f:
                    kids = [int(c) for c in f.read().split()]
            except FileNotFoundError:
                if not os.path.exists(f"{PROC}/self/task/{os.getpid()}/children"):
                    return None
                continue  # the thread just exited
            except OSError:
                continue
            new = [k for k in kids if k not in seen]
            seen.update(new)
            frontier.extend(new)
    return seen
