"""Where single-instance lock files live and what their holder metadata says.

A lock file's content is one JSON object written by the holder right after it took the lock:
``{"procguard": 1, "pid": ..., "argv": [...], "cwd": ..., "host": ..., "start_time": ..., "acquired_at": ...,
"version": ...}``. Readers never take the lock to read it.

A lock file is *managed* (procguard's own) when its content parses as that metadata, or when it is a
``*.lock`` file in a procguard lock folder (``.../procguard/locks`` or ``.../procguard-<uid>/locks``): the
second rule covers the moment between creating the file and writing the metadata, and files whose holder
crashed in that moment.

Trust (see the README's "Security model"): the metadata is the holder's own word, and whoever can write the
file can write anything into it. It is believed only when it agrees with the kernel: it names a process that
really holds the lock, by pid *and* start time (``ProcId``), and the file is owned by that process's user or
root and writable by nobody else (``holder_problem``). It is read through a descriptor on the very inode that
is locked, so the folder around it can't swap it; a file bigger than ``MAX_META_BYTES`` is not read whole.
Paths are walked one folder at a time (``open_folder``), never through a symlink another user owns.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shlex
import socket
import stat
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procguard.core import format as fmt
from procguard.core import procfs
from procguard.core.privdir import PrivateDirError, ensure_private_dir, private_dir_problem
from procguard.core.procid import ProcId
from procguard.core.sanitize import safe

__all__ = [
    "LinkRefused",
    "LockError",
    "LockHolder",
    "holder_problem",
    "in_lock_dir",
    "lock_dir",
    "lock_path_for",
    "open_folder",
    "read_holder",
    "read_metadata",
    "short_command",
    "stale_metadata_problem",
]

LOCK_SUFFIX = ".lock"
META_FORMAT = 1
# Metadata is a few hundred bytes; anything much bigger is not ours and is not worth reading.
MAX_META_BYTES = 64 * 1024


class LockError(OSError):
    """The lock file can't be created or used (unwritable folder, a directory, read-only filesystem, a symlink,
    another user's file in a shared folder...).

    An OSError so that callers already handling filesystem errors catch it; ``str()`` is the plain
    message, which always names the path (made terminal-safe; the exact path is in ``.filename``).
    """

    def __init__(self, message: str, path: str | os.PathLike[str], err: int | None = None) -> None:
        super().__init__(err, message, os.fspath(path))
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message, self.filename, self.errno))


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a lock, as its metadata says."""

    pid: int
    argv: tuple[str, ...]
    cwd: str
    host: str
    start_time: float | None  # the holder process's start, epoch seconds
    version: str  # procguard version of the holder
    path: str  # the lock file this was read from
    acquired_at: float | None = None  # when the lock was taken, epoch seconds
    start_ticks: int | None = None  # the holder's start in clock ticks since boot (with pid: its ProcId)

    def command(self, width: int = 80) -> str:
        """The holder's command line for humans (terminal-safe): interpreter basename, then the arguments."""
        return short_command(self.argv, width)

    def since(self) -> str:
        """When the holder started: HH:MM:SS today, a full date otherwise, '?' when unknown."""
        t = self.start_time if self.start_time is not None else self.acquired_at
        if t is None:
            return "?"
        return fmt.clock(t)

    def to_dict(self) -> dict[str, Any]:
        """Exact values (for --json: JSON escapes control characters itself)."""
        return {
            "pid": self.pid,
            "argv": list(self.argv),
            "cwd": self.cwd,
            "host": self.host,
            "start_time": self.start_time,
            "start_ticks": self.start_ticks,
            "acquired_at": self.acquired_at,
            "version": self.version,
            "path": self.path,
        }

    def same_start(self, ident: ProcId) -> bool:
        """Does this metadata name the very process `ident` (same start), not an earlier one with its pid?"""
        if self.start_ticks is not None:
            return self.start_ticks == ident.start_ticks
        if self.start_time is not None:  # metadata from before start ticks were stored: epoch seconds
            return abs(ident.create_time - self.start_time) <= 1.5 / procfs.CLK_TCK
        return False


def short_command(argv: Sequence[str], width: int = 80) -> str:
    """A command line on one terminal-safe line: interpreter basename, then the arguments, cut to `width`."""
    if not argv:
        return "?"
    # One line whatever the arguments hold (python -c code has newlines); then every control char escaped.
    text = safe(" ".join(shlex.join([os.path.basename(argv[0]), *argv[1:]]).split()))
    return text if len(text) <= width else text[: width - 1] + "…"


def own_metadata() -> bytes:
    """Metadata describing the calling process, encoded for the lock file."""
    pid = os.getpid()
    ident = ProcId.of(pid)
    cmdline = procfs.read_cmdline(pid) if ident is not None else None
    argv: list[str]
    start: float | None = ident.create_time if ident is not None else None
    if cmdline:
        argv = list(cmdline)
    else:
        try:
            import psutil

            p = psutil.Process(pid)
            argv, start = p.cmdline(), start if start is not None else p.create_time()
        except Exception:  # noqa: BLE001 - psutil can't see ourselves on an odd platform: sys.argv will do
            argv = [sys.executable, *sys.argv]
    try:
        cwd = os.getcwd()
    except OSError:  # cwd was removed under us
        cwd = "?"
    meta = {
        "procguard": META_FORMAT,
        "pid": pid,
        "argv": argv,
        "cwd": cwd,
        "host": socket.gethostname(),
        "start_time": start,
        "start_ticks": ident.start_ticks if ident is not None else None,
        "acquired_at": time.time(),
        "version": fmt.version(),
    }
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n"


def parse_metadata(data: bytes, path: str) -> LockHolder | None:
    """The holder in a lock file's bytes; None when they aren't (complete) procguard metadata."""
    text = data.decode("utf-8", "replace").lstrip()
    if not text.startswith("{"):
        return None
    try:
        # raw_decode: a holder rewriting a longer old record leaves its tail for a moment; ignore it.
        obj, _ = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):  # RecursionError: a forged file of 64 KiB of nested brackets
        return None
    if not isinstance(obj, dict) or "procguard" not in obj:
        return None
    pid = obj.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return None
    argv = obj.get("argv")
    argv_t = tuple(str(a) for a in argv) if isinstance(argv, list) else ()

    def num(key: str) -> float | None:
        v = obj.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return None
        try:
            f = float(v)
        except OverflowError:  # an int too big for a float: not a time
            return None
        return f if math.isfinite(f) else None

    ticks = obj.get("start_ticks")
    return LockHolder(
        pid=pid,
        argv=argv_t,
        cwd=str(obj.get("cwd", "")),
        host=str(obj.get("host", "")),
        start_time=num("start_time"),
        version=str(obj.get("version", "")),
        path=path,
        acquired_at=num("acquired_at"),
        start_ticks=ticks if isinstance(ticks, int) and not isinstance(ticks, bool) else None,
    )


def read_holder_fd(fd: int, path: str, wait: float = 0.0) -> LockHolder | None:
    """Parse the metadata through an open descriptor, retrying for up to `wait` seconds.

    A holder writes its metadata just after taking the lock, so a reader can catch the file empty or half
    written; a short retry then usually sees the whole record.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            data = os.pread(fd, MAX_META_BYTES, 0)
        except OSError:
            return None
        holder = parse_metadata(data, path)
        if holder is not None or time.monotonic() >= deadline:
            return holder
        if data.strip() and not data.lstrip().startswith(b'{"procguard"'):
            return None  # some other content: retrying won't make it ours
        time.sleep(0.005)


# O_NONBLOCK: never hang on a FIFO someone named like a lock file; O_NOFOLLOW: never read through a symlink.
_OPEN_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


def read_metadata(
    path: str | os.PathLike[str], *, wait: float = 0.05, dir_fd: int | None = None
) -> tuple[LockHolder | None, os.stat_result | None]:
    """(holder metadata, fstat) of a lock file, never through a symlink; the metadata is None if the file is
    missing, unreadable, bigger than MAX_META_BYTES or not procguard's, the fstat None if it isn't a regular
    file. With `dir_fd`, `path` is a name in that folder. Takes no lock."""
    p = os.fspath(path)
    try:
        fd = os.open(p if dir_fd is None else os.path.basename(p), _OPEN_READ, dir_fd=dir_fd)
    except OSError:
        return None, None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, None
        if st.st_size > MAX_META_BYTES:
            return None, st  # not ours: never read whole
        return read_holder_fd(fd, p, wait), st
    except OSError:
        return None, None
    finally:
        os.close(fd)


def read_holder(path: str | os.PathLike[str], *, wait: float = 0.05) -> LockHolder | None:
    """The holder metadata in a lock file; None if missing, unreadable or not procguard's. Takes no lock.

    This is what the file says, whoever wrote it: see `holder_problem` before believing it.
    """
    return read_metadata(path, wait=wait)[0]


def _pids(pids: Sequence[int]) -> str:
    return ", ".join(map(str, pids))


def holder_problem(h: LockHolder, holders: Sequence[int], st: os.stat_result | None) -> str | None:
    """Why the metadata `h` of a held lock is not to be believed; None when it agrees with the kernel.

    `holders`: the pids that really hold the lock (``/proc/locks`` + fdinfo); `st`: the lock file's fstat.
    Believed only when it names one of them by pid and start time, and the file is owned by that process's
    user or root and writable by nobody else. The reason is built from numbers only (safe on a terminal).
    """
    if h.host not in ("", socket.gethostname()):
        if holders:
            return f"it names a process on another host, but pid {_pids(holders)} holds the lock here"
        return "it names a process on another host: not verifiable here"
    if h.pid not in holders:
        held = f" (pid {_pids(holders)} does)" if holders else ""
        return f"it names pid {h.pid}, which does not hold the lock{held}"
    ident = ProcId.of(h.pid)
    if ident is None or not h.same_start(ident):
        return f"it names pid {h.pid} but not its start time (another process had that pid)"
    if st is not None:
        uid = procfs.read_uid(h.pid)
        if st.st_uid not in (0, uid):
            return f"the lock file is owned by uid {st.st_uid}, not by the holder's user (uid {uid})"
        if st.st_mode & 0o022:
            return "the lock file is writable by other users"
    return None


def stale_metadata_problem(st: os.stat_result | None) -> str | None:
    """Why the metadata of a lock file nobody holds is not to be believed: no process to check it against, so
    only its author counts: the file must be ours or root's and writable by nobody else."""
    if st is None:
        return "not a regular file"
    if st.st_uid not in (0, os.geteuid()):
        return f"the lock file is owned by uid {st.st_uid}"
    if st.st_mode & 0o022:
        return "the lock file is writable by other users"
    return None


def in_lock_dir(path: str | os.PathLike[str]) -> bool:
    """Is this a ``*.lock`` file in a procguard lock folder (any user's)?"""
    p = Path(os.fspath(path).removesuffix(" (deleted)"))
    return (
        p.name.endswith(LOCK_SUFFIX)
        and p.parent.name == "locks"
        and p.parent.parent.name.startswith("procguard")
    )


# ---------------------------------------------------------------- the per-user lock folder


def _runtime_candidate() -> Path | None:
    try:
        import platformdirs

        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset and falls back itself; that is fine here.
            warnings.simplefilter("ignore")
            return Path(platformdirs.user_runtime_dir("procguard")) / "locks"
    except Exception:  # noqa: BLE001 - platformdirs refuses an unsafe runtime dir: use ours
        return None


def _temp_candidate() -> Path:
    uid = os.geteuid() if hasattr(os, "geteuid") else 0
    return Path(tempfile.gettempdir()) / f"procguard-{uid}" / "locks"


ENV_OVERRIDE = "PROCGUARD_LOCK_DIR"


def candidate_lock_dirs() -> list[Path]:
    """This user's lock folders in order of preference: ``$PROCGUARD_LOCK_DIR`` (tests, containers), the
    runtime dir, then the temp-dir fallback."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        return [Path(override)]
    return [p for p in (_runtime_candidate(), _temp_candidate()) if p is not None]


def existing_lock_dirs() -> list[Path]:
    """This user's lock folders that exist now and are private (both, if the runtime dir changed between
    sessions)."""
    return [p for p in candidate_lock_dirs() if private_dir_problem(p) is None]


def lock_dir() -> Path:
    """This user's lock folder, created (mode 0700) if needed, never one another user made or can reach.

    ``platformdirs.user_runtime_dir("procguard")/locks``; where that can't be created or isn't ours (root
    in a container without XDG_RUNTIME_DIR, a read-only /run), ``<tempdir>/procguard-<uid>/locks``.
    """
    cands = candidate_lock_dirs()
    why = ""
    for p in cands:
        try:
            return ensure_private_dir(p)
        except (PrivateDirError, OSError) as e:
            why = str(e)
    raise LockError(
        f"cannot create a private lock folder (tried {', '.join(safe(p) for p in cands)}): {safe(why)}",
        cands[-1],
        errno.EACCES,
    )


# ---------------------------------------------------------------- walking a path without following planted links

_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_PATH = getattr(os, "O_PATH", 0)
_MAX_LINKS = 40


class LinkRefused(OSError):
    """A path goes through a symlink another user owns: it is not followed (they choose where it points)."""

    def __init__(self, link: str, uid: int) -> None:
        super().__init__(errno.ELOOP, f"{safe(link)} is a symlink owned by uid {uid}: not followed", link)
        self.uid = uid

    def __str__(self) -> str:
        return str(self.strerror)


def _trusted_link(dfd: int, name: str, where: str) -> str:
    """The target of the symlink `name` in folder `dfd`, if root or we own it (nobody else can have chosen it).

    Read through an O_PATH descriptor on the link itself, so the owner checked is the owner of what is read.
    """
    euid = os.geteuid()
    if _O_PATH:
        lfd = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            st = os.fstat(lfd)
            if not stat.S_ISLNK(st.st_mode):
                raise OSError(errno.EAGAIN, f"{safe(where)} changed while being checked", where)
            if st.st_uid not in (0, euid):
                raise LinkRefused(where, st.st_uid)
            return os.readlink("", dir_fd=lfd)
        finally:
            os.close(lfd)
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if st.st_uid not in (0, euid):
        raise LinkRefused(where, st.st_uid)
    target = os.readlink(name, dir_fd=dfd)
    st2 = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if (st2.st_ino, st2.st_ctime_ns, st2.st_uid) != (st.st_ino, st.st_ctime_ns, st.st_uid):
        raise OSError(errno.EAGAIN, f"{safe(where)} changed while being checked", where)
    return target


def _lstat_at(dfd: int, name: str, create: bool) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        if not create:
            raise
    with contextlib.suppress(FileExistsError):  # made meanwhile by someone else: checked just below
        os.mkdir(name, 0o777, dir_fd=dfd)  # the umask applies, as with os.makedirs
    return os.stat(name, dir_fd=dfd, follow_symlinks=False)


def open_folder(folder: str | os.PathLike[str], *, create: bool = False) -> int:
    """A descriptor on `folder` (O_DIRECTORY, close it), reached from / one folder at a time.

    Every step opens the next folder relative to the last one with O_NOFOLLOW, so nothing swapped in meanwhile
    is followed; a symlink on the way is followed only when root or we own it (``/var/run``, a home on another
    disk), never one another user planted (:class:`LinkRefused`). Missing folders are created when `create`.
    Raises OSError (FileNotFoundError, NotADirectoryError, LinkRefused...).
    """
    todo = deque(os.path.abspath(os.fspath(folder)).split("/")[1:])
    fd = os.open("/", _DIR_OPEN)
    cur, links = "/", 0
    try:
        while todo:
            name = todo.popleft()
            if name in ("", "."):
                continue
            where = os.path.normpath(os.path.join(cur, name))
            st = _lstat_at(fd, name, create)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", where)
                target = _trusted_link(fd, name, where)
                if target.startswith("/"):
                    nfd = os.open("/", _DIR_OPEN)
                    os.close(fd)
                    fd, cur = nfd, "/"
                todo.extendleft(reversed(target.split("/")))
                continue
            nfd = os.open(name, _DIR_OPEN, dir_fd=fd)
            os.close(fd)
            fd, cur = nfd, where
        return fd
    except BaseException:
        os.close(fd)
        raise


def lock_path_for(name_or_path: str | os.PathLike[str]) -> Path:
    """The lock file for a name or path.

    A bare name (a str without a path separator) becomes ``<name>.lock`` in :func:`lock_dir` (the suffix
    is not doubled); anything else, including any ``os.PathLike``, is a path used as given (made absolute,
    ``~`` expanded).
    """
    if (
        isinstance(name_or_path, str)
        and os.sep not in name_or_path
        and not (os.altsep and os.altsep in name_or_path)
    ):
        name = name_or_path
        if name in ("", ".", "..", "~") or "\0" in name:
            raise ValueError(f"invalid lock name {name!r}")
        return lock_dir() / (name if name.endswith(LOCK_SUFFIX) else name + LOCK_SUFFIX)
    p = os.path.expanduser(os.fspath(name_or_path))
    if not p or "\0" in p:
        raise ValueError(f"invalid lock path {p!r}")
    return Path(os.path.abspath(p))
