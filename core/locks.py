"""Single-instance locks that say who holds them.

``SingleInstanceLock`` is an exclusive ``flock`` on a lock file. Three things make it better than the usual
recipe:

* the holder writes JSON metadata into the file (see ``lockfile.py``), so a refusal names the holder;
* release unlinks the file, and an acquirer checks after ``flock`` that the inode it locked is still the
  one at the path (fstat vs stat), retrying otherwise: a waiter that opened the old file can't end up
  holding an unlinked inode while a newcomer holds a fresh one;
* under a distributed launcher only rank 0 takes the lock; other ranks get a no-op that says so.

The machine-wide view (``held_locks`` and friends) lives in ``held_locks.py`` and is re-exported here.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import time
import warnings
from pathlib import Path
from types import TracebackType

from procguard.core import format as fmt
from procguard.core import procfs
from procguard.core.held_locks import (
    HeldLock,
    LockScanner,
    clean_stale_locks,
    held_locks,
    holders_of,
    list_locks,
    stale_lock_files,
)
from procguard.core.launchenv import rank_noop_reason
from procguard.core.lockfile import (
    LinkRefused,
    LockError,
    LockHolder,
    holder_problem,
    lock_dir,
    lock_path_for,
    open_folder,
    own_metadata,
    read_holder,
    read_holder_fd,
    short_command,
)
from procguard.core.procid import ProcId
from procguard.core.sanitize import safe

__all__ = [
    "AlreadyRunning",
    "HeldLock",
    "LockError",
    "LockHolder",
    "LockScanner",
    "SingleInstanceLock",
    "clean_stale_locks",
    "held_locks",
    "list_locks",
    "lock_dir",
    "lock_path_for",
    "rank_noop_reason",
    "read_holder",
    "stale_lock_files",
]

# How long a non-blocking acquire keeps retrying when the lock looks held by nobody alive: the holder may
# be between flock and writing its metadata, or a stale-lock cleaner may hold the file for an instant.
_SETTLE_S = 0.25
_POLL_MIN_S = 0.005
_POLL_MAX_S = 0.05


class AlreadyRunning(Exception):
    """The lock is held by another process (or another lock object in this one).

    ``holders``: the pids that really hold the lock, from the kernel (``/proc/locks`` + fdinfo; empty where it
    shows none, e.g. a holder on another host of a shared filesystem). ``metadata``: what the lock file says
    about its holder (None if nothing), whoever wrote it; ``holder``: that metadata when it is believed (it
    names a real holder by pid and start time, see ``lockfile.holder_problem``), else None, and ``problem``
    says why not. The message names the real holder and repeats the metadata's description only when it is
    believed; every string in it is terminal-safe.
    """

    def __init__(
        self,
        path: Path,
        holder: LockHolder | None,
        *,
        label: str | None = None,
        holders: tuple[int, ...] = (),
        waited: float | None = None,
        metadata: LockHolder | None = None,
        problem: str | None = None,
        message: str | None = None,
    ) -> None:
        self.path = path
        self.holder = holder
        self.holders = holders
        self.waited = waited
        self.label = label or str(path)
        self.metadata = metadata if metadata is not None else holder
        self.problem = problem
        # Built once: the real holder's description is read from /proc now, and must not change on unpickling.
        self.message = message if message is not None else self._message()
        super().__init__(self.message)

    def __reduce__(self) -> tuple[object, ...]:
        # Survives pickling (multiprocessing workers), which would otherwise call __init__(message).
        return (
            _rebuild_already_running,
            (
                self.path,
                self.holder,
                self.label,
                self.holders,
                self.waited,
                self.metadata,
                self.problem,
                self.message,
            ),
        )

    def __str__(self) -> str:
        return self.message

    def _message(self) -> str:
        h, m, label = self.holder, self.metadata, safe(self.label)
        if h is not None:
            msg = f"{label} is held by pid {h.pid} ({h.command(160)}), running since {h.since()}"
        elif m is not None and not self.holders and m.host not in ("", socket.gethostname()):
            # Nothing on this machine holds it: a process on another host of a shared filesystem, maybe.
            msg = (
                f"{label} is held by pid {m.pid} on {safe(m.host)} ({m.command(160)}), as its lock file "
                "says (not verifiable from this host)"
            )
        else:
            msg = f"{label} is held by {_describe_pids(self.holders) if self.holders else 'another process'}"
            if m is None:
                msg += " (the lock file names no holder)"
            else:
                msg += f"; the lock file's metadata is ignored: {self.problem or 'it does not agree'}"
        if self.waited:
            msg += f"; gave up after waiting {self.waited:g}s"
        return msg


def _rebuild_already_running(
    path: Path,
    holder: LockHolder | None,
    label: str,
    holders: tuple[int, ...],
    waited: float | None,
    metadata: LockHolder | None = None,
    problem: str | None = None,
    message: str | None = None,
) -> AlreadyRunning:
    return AlreadyRunning(
        path,
        holder,
        label=label,
        holders=holders,
        waited=waited,
        metadata=metadata,
        problem=problem,
        message=message,
    )


def _describe_pids(pids: tuple[int, ...]) -> str:
    """The real holders as the kernel shows them: pids, then the first one's command line and start."""
    text = f"pid {', '.join(map(str, pids))}"
    argv = procfs.read_cmdline(pids[0])
    if argv:
        text += f" ({short_command(argv, 160)})"
    ident = ProcId.of(pids[0])
    if ident is not None:
        text += f", running since {fmt.clock(ident.create_time)}"
    return text


def _same_file(fd: int, dfd: int, path: Path) -> bool:
    """Is the entry `path.name` in folder `dfd` still the inode we have open (not unlinked or replaced since)?"""
    try:
        st = os.stat(path.name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise LockError(f"cannot check lock file {safe(path)}: {e.strerror}", path, e.errno) from e
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _holder_alive(h: LockHolder) -> bool:
    """Is the process the metadata names still running (same pid and start)? True for another host's."""
    if h.host not in ("", socket.gethostname()):
        return True  # a shared filesystem: we can't check another machine's pids
    ident = ProcId.of(h.pid) if h.pid > 0 else None
    return ident is not None and h.same_start(ident)


def _open_folder(path: Path) -> int:
    """A descriptor on the lock file's folder (created if missing), reached without following planted links."""
    try:
        return open_folder(path.parent, create=True)
    except LinkRefused as e:
        raise LockError(f"lock path {safe(path)} goes through {e}", path, e.errno) from None
    except OSError as e:
        raise LockError(
            f"cannot create the folder for lock file {safe(path)}: {e.strerror or e}", path, e.errno
        ) from None


# O_NOFOLLOW: a symlink planted at the lock path is never followed (the write would land in its target).
_OPEN_LOCK = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


def _others_can_write(folder: os.stat_result) -> bool:
    """Can someone other than us (and root) add, remove or rename entries in this folder?"""
    return bool(folder.st_mode & 0o022) or folder.st_uid not in (0, os.geteuid())


def _refusal(st: os.stat_result, dfd: int, path: Path) -> str | None:
    """Why an existing entry at the lock path must not be opened and written to; None when it may."""
    p = safe(path)
    if stat.S_ISLNK(st.st_mode):
        return f"lock path {p} is a symlink: refusing to follow it"
    if stat.S_ISDIR(st.st_mode):
        return f"lock path {p} is a directory"
    if not stat.S_ISREG(st.st_mode):
        return f"lock path {p} is not a regular file"
    if st.st_nlink > 1:
        # Another name for the same file, maybe one we must never write to (a hard link to a system file).
        return f"lock file {p} has {st.st_nlink} hard links: refusing to write to it"
    if st.st_uid != os.geteuid() and _others_can_write(os.fstat(dfd)):
        return f"lock file {p} is owned by uid {st.st_uid}, in a folder others can write: refusing to use it"
    return None


def _flock(fd: int, path: Path, *, forever: bool) -> bool:
    """Take the exclusive flock: True if got, False if held elsewhere (never when `forever`: that waits)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if forever else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        raise LockError(f"cannot lock {safe(path)}: {e.strerror}", path, e.errno) from e
    return True


def _open_lock_file(dfd: int, path: Path) -> int:
    name = path.name
    try:
        st: os.stat_result | None = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise LockError(f"cannot open lock file {safe(path)}: {e.strerror or e}", path, e.errno) from e
    why = None if st is None else _refusal(st, dfd, path)
    if why is not None:
        raise LockError(why, path, errno.EPERM)
    try:
        fd = os.open(name, _OPEN_LOCK, 0o644, dir_fd=dfd)
    except IsADirectoryError as e:
        raise LockError(f"lock path {safe(path)} is a directory", path, e.errno) from e
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink planted since the check above
            raise LockError(
                f"lock path {safe(path)} is a symlink: refusing to follow it", path, e.errno
            ) from e
        if e.errno in (errno.EACCES, errno.EPERM):
            if st is None and not os.access(".", os.W_OK, dir_fd=dfd):
                why = f"permission denied (folder {safe(path.parent)} is not writable)"
            else:
                why = "permission denied"
        elif e.errno == errno.EROFS:
            why = "read-only file system"
        else:
            why = e.strerror or str(e)
        raise LockError(f"cannot open lock file {safe(path)}: {why}", path, e.errno) from e
    # Checked again on what was opened: an entry swapped in between the two looks is refused all the same.
    why = _refusal(os.fstat(fd), dfd, path)
    if why is not None:
        os.close(fd)
        raise LockError(why, path, errno.EPERM)
    return fd


class SingleInstanceLock:
    """An exclusive, self-describing, unlink-safe lock on a file.

    ``name_or_path``: a bare name (str without a path separator) means ``<name>.lock`` in the per-user lock
    folder; anything else is a path (missing folders are created). ``blocking=False`` fails at once with
    :class:`AlreadyRunning`; ``blocking=True`` waits; a ``timeout`` (seconds) waits at most that long, even
    without ``blocking=True``, then raises :class:`AlreadyRunning`.

    Use as a context manager or with ``acquire()`` / ``release()``. Not meant for sharing between threads;
    a forked child that calls ``release()`` only closes its copy of the descriptor (the parent keeps the
    lock and its file).
    """

    def __init__(
        self, name_or_path: str | os.PathLike[str], *, blocking: bool = False, timeout: float | None = None
    ) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0")
        self.name = name_or_path
        self.blocking = blocking
        self.timeout = timeout
        self.noop_reason: str | None = None
        self._path: Path | None = None
        self._fd: int | None = None
        self._dfd: int | None = None  # the lock file's folder, as walked when the lock was taken
        self._owner_pid: int | None = None

    def __repr__(self) -> str:
        state = "no-op" if self.noop_reason else "held" if self.held else "free"
        return f"<SingleInstanceLock {os.fspath(self.name)!r} {state}>"

    @property
    def path(self) -> Path:
        """The lock file (resolving a bare name creates the per-user lock folder)."""
        if self._path is None:
            self._path = lock_path_for(self.name)
        return self._path

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def is_noop(self) -> bool:
        return self.noop_reason is not None

    def fileno(self) -> int:
        """The locked descriptor: pass it to a child (``pass_fds``) to make the child share the lock."""
        if self._fd is None:
            raise ValueError("lock not held")
        return self._fd

    def _label(self) -> str:
        bare = isinstance(self.name, str) and os.sep not in self.name
        return self.path.name if bare else str(self.path)

    def acquire(self, blocking: bool | None = None, timeout: float | None = None) -> SingleInstanceLock:
        """Take the lock (arguments override the constructor's); returns self.

        Raises AlreadyRunning when it is held, LockError when the lock file can't be used (refused: a symlink,
        another user's file in a shared folder, a path through another user's symlink; or unwritable...).
        """
        if self._fd is not None:
            raise RuntimeError(f"{safe(self._label())} is already held by this lock object")
        self.noop_reason = rank_noop_reason()
        if self.noop_reason:
            return self
        blocking = self.blocking if blocking is None else blocking
        timeout = self.timeout if timeout is None else timeout
        path = self.path
        # Every later step (open, re-check, unlink) is relative to this folder descriptor: a folder or link
        # swapped in on the way afterwards can't redirect them.
        dfd = _open_folder(path)
        try:
            fd = self._lock(dfd, path, blocking or timeout is not None, timeout)
        except BaseException:
            os.close(dfd)
            raise
        try:
            meta = own_metadata()
            # Write first, then cut off the old record's tail: a reader never sees an empty file here.
            os.pwrite(fd, meta, 0)
            os.ftruncate(fd, len(meta))
        except OSError as e:
            warnings.warn(f"holding {safe(path)} but could not write holder metadata: {e}", stacklevel=2)
        self._fd, self._dfd = fd, dfd
        self._owner_pid = os.getpid()
        return self

    def _lock(self, dfd: int, path: Path, wait: bool, timeout: float | None) -> int:
        """The descriptor of the lock file at `path`, locked; raises AlreadyRunning when it stays held."""
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        settle_until = start + _SETTLE_S
        pause = _POLL_MIN_S
        fd: int | None = None
        try:
            while True:
                if fd is None:
                    fd = _open_lock_file(dfd, path)
                # Waiting for good: sleep in the kernel, woken the moment the holder lets go. With a
                # timeout we poll instead (no signals/threads needed to give up in time).
                got = _flock(fd, path, forever=wait and deadline is None)
                if not _same_file(fd, dfd, path):
                    # The file we opened was unlinked (a release or a stale-lock clean-up) or replaced:
                    # whatever we hold or collided with is history. Start over on the current file.
                    os.close(fd)
                    fd = None
                    continue
                if got:
                    return fd
                now = time.monotonic()
                if wait and (deadline is None or now < deadline):
                    time.sleep(pause if deadline is None else min(pause, max(deadline - now, 0.0)))
                    pause = min(pause * 1.5, _POLL_MAX_S)
                    continue
                holder = read_holder_fd(fd, str(path))
                if now < settle_until and (holder is None or not _holder_alive(holder)):
                    time.sleep(_POLL_MIN_S)
                    continue
                raise self._already_running(fd, path, holder, waited=timeout if wait else None)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise

    def _already_running(
        self, fd: int, path: Path, meta: LockHolder | None, waited: float | None
    ) -> AlreadyRunning:
        """The refusal, naming the real holder from the kernel; the metadata only where it agrees with it."""
        st = os.fstat(fd)
        hint = meta.pid if meta is not None and meta.pid > 0 else None
        holders = holders_of(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino, hint=hint)
        problem = None if meta is None else holder_problem(meta, holders, st)
        trusted = meta if problem is None else None
        return AlreadyRunning(
            path, trusted, label=self._label(), holders=holders, waited=waited, metadata=meta, problem=problem
        )

    def release(self) -> None:
        """Unlink the lock file, then close (which drops the lock). Idempotent."""
        fd, self._fd = self._fd, None
        dfd, self._dfd = self._dfd, None
        self.noop_reason = None
        if fd is None:
            return
        try:
            # Only the process that took the lock removes the file: a forked child leaving a `with` block
            # must not pull the file from under its parent. Unlink *before* close, so any waiter that
            # then gets the old inode sees that it's no longer at the path and retries.
            if (
                os.getpid() == self._owner_pid
                and self._path is not None
                and dfd is not None
                and _same_file(fd, dfd, self._path)
            ):
                os.unlink(self._path.name, dir_fd=dfd)
        except OSError:
            pass  # a read-only or vanished folder: closing still releases the lock
        finally:
            os.close(fd)
            if dfd is not None:
                os.close(dfd)

    def __enter__(self) -> SingleInstanceLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
