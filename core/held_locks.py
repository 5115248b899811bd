"""Every file lock held on the machine, like ``lslocks`` but right about who holds it; stale lock files.

``/proc/locks`` names the process that *called* flock/fcntl, even after it exited while a forked child keeps
the inherited descriptor (and, in the initial pid namespace, even once that number is reused). The real
holders are the processes whose ``/proc/PID/fdinfo/N`` has a ``lock:`` line for the lock (``proclocks.py``).
Holders are found through procfs alone; only a held lock's own file is then looked at through
``/proc/PID/fd/N`` (stat, and for a small regular file a read of its procguard metadata).

The kernel's answer comes first: a lock file's metadata (its holder's JSON) is shown as the holder only when
it agrees with the real holders by pid and start time (``lockfile.holder_problem``); otherwise ``holder`` is
None, the metadata stays in ``metadata`` and ``warning`` says why it was ignored.

Stale lock files are removed only when they are regular files in a folder reached without another user's
symlink, owned by the caller (root: in a folder root owns), never in another user's folder.

Linux only: elsewhere (no ``/proc/locks``) every function here returns an empty list.
"""

from __future__ import annotations

import fcntl
import math
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procguard.core.lockfile import (
    LOCK_SUFFIX,
    MAX_META_BYTES,
    LockHolder,
    existing_lock_dirs,
    holder_problem,
    in_lock_dir,
    open_folder,
    parse_metadata,
    read_holder_fd,
    read_metadata,
    stale_metadata_problem,
)
from procguard.core.proclocks import (
    PROC,
    FdIndex,
    LockEntry,
    LockKey,
    descendants,
    fd_locks_of,
    full_scan,
    read_proc_locks,
)

__all__ = [
    "HeldLock",
    "LockScanner",
    "clean_stale_locks",
    "cleanable_folder_problem",
    "held_locks",
    "holders_of",
    "list_locks",
    "stale_entry",
    "stale_lock_files",
]

UNKNOWN_PATH = "(unknown)"
_DELETED = " (deleted)"
# (st_dev, st_ino, path) -> (mtime_ns, ctime_ns, size, managed, holder, stat): metadata already parsed
_MetaCache = dict[
    tuple[int, int, str], tuple[int, int, int, bool, "LockHolder | None", "os.stat_result | None"]
]


@dataclass(frozen=True)
class HeldLock:
    """One lock from /proc/locks (or, with ``stale=True``, a managed lock file that nobody holds)."""

    path: str  # as the holder's /proc/PID/fd shows it, "(unknown)" if no holder's fds are visible
    pid: int | None  # a real holder: /proc/locks' pid if it still holds, else the lowest holder pid
    holders: tuple[int, ...]  # every process with a descriptor holding this lock (sorted)
    kind: str | None  # flock | posix | ofd (| lease | deleg); None for a stale file
    mode: str | None  # read | write; None for a stale file
    managed: bool  # a procguard lock file (see lockfile.py)
    holder: LockHolder | None  # the file's procguard metadata, only when it is believed (agrees with holders)
    warning: str | None = None  # e.g. the metadata names a pid that doesn't hold the lock (numbers only)
    stale: bool = False
    device: tuple[int, int] | None = None  # (major, minor)
    inode: int | None = None
    start: int = 0  # locked byte range; end None = to EOF
    end: int | None = None
    waiters: tuple[int, ...] = field(default=())  # pids blocked waiting for this lock
    metadata: LockHolder | None = None  # what the file says, believed or not (defaults to `holder`)
    metadata_problem: str | None = None  # why `metadata` is not believed; None when it is (or is absent)

    def __post_init__(self) -> None:
        if self.metadata is None and self.holder is not None:
            object.__setattr__(self, "metadata", self.holder)

    @property
    def metadata_trusted(self) -> bool | None:
        """True when the metadata is believed, False when it is not, None when there is none."""
        return None if self.metadata is None else self.metadata_problem is None

    def to_dict(self) -> dict[str, Any]:
        """The `procguard locks --json` object (exact values: JSON escapes control characters itself)."""
        return {
            "path": self.path,
            "pid": self.pid,
            "holders": list(self.holders),
            "kind": self.kind,
            "mode": self.mode,
            "managed": self.managed,
            "stale": self.stale,
            "holder": self.holder.to_dict() if self.holder else None,
            "metadata": self.metadata.to_dict() if self.metadata else None,
            "metadata_trusted": self.metadata_trusted,
            "metadata_problem": self.metadata_problem,
        }


def _managed(
    pid: int, fd: int, link: str, old: _MetaCache, new: _MetaCache
) -> tuple[bool, LockHolder | None, os.stat_result | None]:
    """Is the file behind a holder's descriptor a procguard lock file, what does its metadata say, and its stat
    (owner and mode: who could have written that metadata)?"""
    if not link.startswith("/"):
        return False, None, None  # pipe:[..], socket:[..], anon_inode:...
    path = link.removesuffix(_DELETED)
    by_location = in_lock_dir(path)
    proc_path = f"{PROC}/{pid}/fd/{fd}"
    try:
        st = os.stat(proc_path)
    except OSError:
        return by_location, None, None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_META_BYTES:
        return False, None, None  # never open devices or FIFOs; big files are not ours
    ck = (st.st_dev, st.st_ino, path)
    hit = old.get(ck)
    if (
        hit is not None
        and hit[:3] == (st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        and hit[5] is not None
        and (hit[5].st_uid, hit[5].st_mode) == (st.st_uid, st.st_mode)
    ):
        new[ck] = hit
        return hit[3], hit[4], hit[5]
    holder = None
    if st.st_size:
        try:
            # Through /proc: the very inode the lock is on, even if the path was unlinked or replaced.
            f = os.open(proc_path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return by_location, None, None
        try:
            holder = parse_metadata(os.pread(f, MAX_META_BYTES, 0), path)
        except OSError:
            pass
        finally:
            os.close(f)
    managed = by_location or holder is not None
    new[ck] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, managed, holder, st)
    return managed, holder, st


class LockScanner:
    """Finds held locks again and again at a fraction of the cost: for periodic refresh (the TUI).

    A full scan (what :func:`held_locks` does) reads the fdinfo of every open descriptor on the machine,
    about 10 µs each. Between full scans, at most every `full_scan_interval` seconds, a scanner reads only
    the likely holders: the pid /proc/locks names, the holders it found last time, and for flock/OFD locks
    (which forked children share) their descendants, up to `descendant_limit` processes. A lock whose
    caller no longer holds it or whose holders can't be found that way triggers a full scan at once. Left
    to the next full scan: a process that got its share of a lock some other way while the caller still
    holds it (a double-forked daemon, a descriptor passed over a socket).
    """

    def __init__(self, full_scan_interval: float = 10.0, descendant_limit: int = 64) -> None:
        self.full_scan_interval = full_scan_interval
        self.descendant_limit = descendant_limit
        self._last_full = -math.inf
        self._known: dict[LockKey, tuple[int, ...]] = {}  # holders found last time
        self._settled: set[LockKey] = set()  # keys whose holders a full scan (or their caller) vouched for
        self._invisible: set[LockKey] = set()  # keys whose holders even a full scan couldn't see
        self._meta: _MetaCache = {}
        self.full_scans = 0  # how many calls needed a full scan (diagnostics)

    def held_locks(self, *, managed_only: bool = False) -> list[HeldLock]:
        """Like :func:`held_locks`, reusing what earlier calls found."""
        entries = read_proc_locks()
        held = [e for e in entries or () if not e.waiting]
        if not held:
            self._known = {}
            return []
        wanted = {e.key for e in held}
        now = time.monotonic()
        found = self._targeted(held, wanted) if now - self._last_full < self.full_scan_interval else None
        if found is None:
            found = full_scan(wanted)
            self._last_full = now
            self.full_scans += 1
            self._settled = set(wanted)
            self._invisible = wanted - found.keys()
        self._known = {k: tuple(sorted({p for p, _ in v})) for k, v in found.items()}
        meta: _MetaCache = {}
        out = _build(held, [e for e in entries or () if e.waiting], found, self._meta, meta, managed_only)
        self._meta = meta
        return out

    def _targeted(self, held: list[LockEntry], wanted: set[LockKey]) -> FdIndex | None:
        """Holders read from likely processes only; None when only a full scan can tell."""
        inheritable: set[int] = set()
        own: set[int] = set()
        for e in held:
            seeds = {*self._known.get(e.key, ()), *((e.pid,) if e.pid > 0 else ())}
            (own if e.kind == "posix" else inheritable).update(seeds)  # POSIX locks aren't inherited
        procs = descendants(inheritable, self.descendant_limit)
        if procs is None:
            return None
        found: FdIndex = {}
        hidden = {pid for pid in procs | own if not fd_locks_of(pid, wanted, found)}
        for e in held:
            holders = {p for p, _ in found.get(e.key, ())}
            if holders and (e.key in self._settled or e.pid in holders):
                self._settled.add(e.key)
                continue
            if not holders and (e.key in self._invisible or e.pid in hidden):
                continue  # a full scan wouldn't see more
            return None  # new lock whose caller let go, an OFD lock, or holders gone elsewhere
        self._settled &= wanted
        self._invisible &= wanted
        return found


def held_locks(*, managed_only: bool = False) -> list[HeldLock]:
    """Every file lock held on this machine that the caller can see, sorted by path then pid.

    ``holders`` are exact where the caller may read the holders' ``/proc/PID/fdinfo`` (its own processes,
    or all as root); where it can't, they fall back to /proc/locks' pid and ``path`` is "(unknown)".
    One call reads every open descriptor's fdinfo; use a :class:`LockScanner` to refresh periodically.
    """
    return LockScanner(full_scan_interval=0).held_locks(managed_only=managed_only)


def _build(
    held: list[LockEntry],
    waiting: list[LockEntry],
    found: FdIndex,
    old_meta: _MetaCache,
    new_meta: _MetaCache,
    managed_only: bool,
) -> list[HeldLock]:
    waiters: dict[str, list[int]] = {}
    for w in waiting:
        waiters.setdefault(w.lock_id, []).append(w.pid)
    out: list[HeldLock] = []
    for e in held:
        fds = found.get(e.key, [])
        holders = tuple(sorted({p for p, _ in fds}))
        if not holders and e.pid > 0:
            holders = (e.pid,)  # couldn't see its fds: trust /proc/locks
        pid = e.pid if e.pid in holders else (holders[0] if holders else None)
        path, managed, meta, st = UNKNOWN_PATH, False, None, None
        for hpid, fd in fds:
            try:
                link = os.readlink(f"{PROC}/{hpid}/fd/{fd}")
            except OSError:
                continue  # closed since the scan
            path = link
            managed, meta, st = _managed(hpid, fd, link, old_meta, new_meta)
            break
        if managed_only and not managed:
            continue
        # The kernel names the holders; the file's metadata is only believed when it agrees with them.
        problem = None if meta is None else holder_problem(meta, holders, st)
        out.append(
            HeldLock(
                path=path,
                pid=pid,
                holders=holders,
                kind=e.kind,
                mode=e.mode,
                managed=managed,
                holder=meta if problem is None else None,
                warning=None if problem is None else f"lock file metadata ignored: {problem}",
                device=e.device,
                inode=e.inode,
                start=e.start,
                end=e.end,
                waiters=tuple(waiters.get(e.lock_id, ())),
                metadata=meta,
                metadata_problem=problem,
            )
        )
    out.sort(key=lambda h: (h.path, h.pid or 0))
    return out


def holders_of(major: int, minor: int, inode: int, *, hint: int | None = None) -> tuple[int, ...]:
    """The pids holding any lock on this file (dev major/minor, inode), exact where fdinfo is visible.

    With `hint` (the pid a lock file's metadata names), that process is asked first: when it holds the lock,
    it is the answer (forked children sharing its lock aren't looked for) and no machine-wide scan is needed.
    """
    held = [e for e in read_proc_locks() or () if not e.waiting and e.inode == inode]
    # Match the device too, unless no entry does: overlay-style filesystems may report another st_dev.
    entries = [e for e in held if e.device == (major, minor)] or held
    if not entries:
        return ()
    wanted = {e.key for e in entries}
    if hint is not None and hint > 0:
        mine: FdIndex = {}
        if fd_locks_of(hint, wanted, mine) and mine:
            return (hint,)
    found = full_scan(wanted)
    pids = {p for fds in found.values() for p, _ in fds}
    if not pids:
        pids = {e.pid for e in entries if e.pid > 0}
    return tuple(sorted(pids))


def _is_managed_file(dfd: int, name: str, path: Path) -> bool:
    return in_lock_dir(path) or read_metadata(name, wait=0, dir_fd=dfd)[0] is not None


def _scan_folder(d: Path, busy: set[int]) -> list[Path]:
    """Managed, unheld ``*.lock`` regular files in one folder (walked without following planted links)."""
    try:
        dfd = open_folder(d)
    except OSError:
        return []  # missing, not a folder, or through another user's symlink
    out: list[Path] = []
    try:
        with os.scandir(dfd) as it:
            for entry in it:
                if not entry.name.endswith(LOCK_SUFFIX):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                p = d / entry.name
                if (
                    stat.S_ISREG(st.st_mode)
                    and st.st_ino not in busy
                    and _is_managed_file(dfd, entry.name, p)
                ):
                    out.append(p)
    except OSError:
        pass
    finally:
        os.close(dfd)
    return out


def stale_lock_files(dirs: Iterable[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Managed ``*.lock`` files in `dirs` that no process holds or waits for.

    `dirs` defaults to this user's lock folders (runtime dir and temp-dir fallback, where they exist).
    A file counts as held when any lock in /proc/locks is on its inode number, whatever the device
    numbers say (they can differ between stat and /proc/locks on overlay filesystems): a rare inode
    clash keeps a stale file, it never reports a held one. Symlinks are never listed (nor followed).
    """
    entries = read_proc_locks()
    if entries is None:
        return []  # can't tell held from stale without /proc/locks
    busy = {e.inode for e in entries if e.inode is not None}  # waiters too: someone wants it right now
    folders = existing_lock_dirs() if dirs is None else [Path(os.path.abspath(d)) for d in dirs]
    out: list[Path] = []
    for d in folders:
        out.extend(_scan_folder(d, busy))
    return sorted(set(out))


def stale_entry(path: str | os.PathLike[str]) -> HeldLock:
    """A stale lock file as a HeldLock (``stale=True``): its metadata is believed only when the file is the
    caller's or root's and writable by nobody else (no process is left to check it against)."""
    meta, st = read_metadata(path, wait=0)
    problem = None if meta is None else stale_metadata_problem(st)
    return HeldLock(
        path=os.fspath(path),
        pid=None,
        holders=(),
        kind=None,
        mode=None,
        managed=True,
        holder=meta if problem is None else None,
        stale=True,
        metadata=meta,
        metadata_problem=problem,
    )


def cleanable_folder_problem(folder: os.stat_result) -> str | None:
    """Why stale lock files may not be removed from this folder (its fstat); None when they may: the caller's
    own folder, or root's (for root, only root's: never unlink in another user's folder)."""
    euid = os.geteuid()
    allowed = (0,) if euid == 0 else (euid, 0)
    if folder.st_uid not in allowed:
        return f"the folder is owned by uid {folder.st_uid}"
    return None


def _removable(st: os.stat_result, folder: os.stat_result) -> bool:
    """A regular file the caller owns (root: any file in a folder root owns), in a folder it may clean."""
    if not stat.S_ISREG(st.st_mode) or cleanable_folder_problem(folder) is not None:
        return False
    euid = os.geteuid()
    return euid == 0 or st.st_uid == euid


def _remove_if_unheld(path: Path) -> bool:
    """Unlink a managed lock file only while holding its lock ourselves, so nobody holds it meanwhile.

    Everything happens relative to a descriptor on its folder, with O_NOFOLLOW: a symlink is never removed
    through, nor is the folder swapped in between. An acquirer that opened the file before we unlink gets the
    lock on an unlinked inode afterwards, sees the path no longer points to it, and retries on a fresh file.
    """
    try:
        dfd = open_folder(path.parent)
    except OSError:
        return False
    try:
        return _remove_in(dfd, path)
    finally:
        os.close(dfd)


def _remove_in(dfd: int, path: Path) -> bool:
    name = path.name
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dfd
        )
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not _removable(st, os.fstat(dfd)):
            return False
        if not (in_lock_dir(path) or read_holder_fd(fd, str(path)) is not None):
            return False  # never remove a file that isn't procguard's
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held after all
        try:
            cur = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            return False
        if (cur.st_dev, cur.st_ino) != (st.st_dev, st.st_ino):
            return False  # replaced by a fresh lock file since we opened it
        try:
            os.unlink(name, dir_fd=dfd)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)


def clean_stale_locks(
    dirs: Iterable[str | os.PathLike[str]] | None = None,
    paths: Iterable[str | os.PathLike[str]] | None = None,
) -> list[Path]:
    """Remove stale managed lock files; returns those removed.

    Candidates are `paths` if given, else :func:`stale_lock_files` of `dirs`. Each is removed only if it is
    a managed lock file and a regular file (never a symlink, nor through one another user owns), the
    caller's own (root: any in a folder root owns; nobody's in another user's folder), and we can take its
    lock at that moment (see ``_remove_if_unheld``).
    """
    cands = stale_lock_files(dirs) if paths is None else [Path(os.path.abspath(p)) for p in paths]
    return [p for p in cands if _remove_if_unheld(p)]


def _under(path: str, roots: list[str]) -> bool:
    p = path.removesuffix(_DELETED)
    return any(p == r or p.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def list_locks(
    dirs: Iterable[str | os.PathLike[str]] | None = None,
    *,
    managed_only: bool = False,
    scanner: LockScanner | None = None,
) -> list[HeldLock]:
    """Held locks followed by stale managed lock files (``stale=True``, pid None, no holders).

    With `dirs`, both are limited to those folders; without, held locks are machine-wide and stale files
    come from this user's lock folders. Pass a `scanner` when refreshing periodically.
    """
    folders = None if dirs is None else [os.path.realpath(d) for d in dirs]
    held = (scanner.held_locks if scanner else held_locks)(managed_only=managed_only)
    if folders is not None:
        held = [h for h in held if _under(h.path, folders)]
    stale = [stale_entry(p) for p in stale_lock_files(folders)]
    return held + stale
