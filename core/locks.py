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
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from procguard.core.held_locks import (
    HeldLock,
    LockScanner,
    clean_stale_locks,
    held_locks,
    holders_of,
    list_locks,
    stale_lock_files,
)
from procguard.core.lockfile import (
    LockError,
    LockHolder,
    lock_dir,
    lock_path_for,
    own_metadata,
    read_holder,
    read_holder_fd,
)

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

    ``holder`` is the metadata in the lock file (None if it had none); ``holders`` the pids that really
    hold the lock when they had to be looked up (the metadata's pid had exited), else empty.
    """

    def __init__(self, path: Path, holder: LockHolder | None, *, label: str | None = None,
                 holders: tuple[int, ...] = (), waited: float | None = None) -> None:
        self.path = path
        self.holder = holder
        self.holders = holders
        self.waited = waited
        self.label = label or str(path)
        super().__init__(self._message())

    def __reduce__(self) -> tuple[object, ...]:
        # Survives pickling (multiprocessing workers), which would otherwise call __init__(message).
        return (_rebuild_already_running, (self.path, self.holder, self.label, self.holders, self.waited))

    def _message(self) -> str:
        h, label = self.holder, self.label
        if h is None:
            who = f"pid {', '.join(map(str, self.holders))}" if self.holders else "another process"
            msg = f"{label} is held by {who} (the lock file names no holder)"
        else:
            where = "" if h.host in ("", socket.gethostname()) else f" on {h.host}"
            others = [p for p in self.holders if p != h.pid]
            if others:
                msg = (f"{label} is held by pid {', '.join(map(str, others))}, which inherited it from pid "
                       f"{h.pid}{where} ({h.command(160)}, started {h.since()}, now exited)")
            else:
                msg = f"{label} is held by pid {h.pid}{where} ({h.command(160)}), running since {h.since()}"
        if self.waited:
            msg += f"; gave up after waiting {self.waited:g}s"
        return msg


def _rebuild_already_running(path: Path, holder: LockHolder | None, label: str, holders: tuple[int, ...],
                             waited: float | None) -> AlreadyRunning:
    return AlreadyRunning(path, holder, label=label, holders=holders, waited=waited)


def rank_noop_reason(env: Mapping[str, str] | None = None) -> str | None:
    """Why a lock would be a no-op here: a non-zero RANK / LOCAL_RANK from a distributed launcher."""
    env = os.environ if env is None else env
    for var, what in (("RANK", "rank"), ("LOCAL_RANK", "local rank")):
        raw = env.get(var, "").strip()
        try:
            rank = int(raw)
        except ValueError:
            continue  # unset or not a rank at all
        if rank != 0:
            return f"{what} {rank} of a distributed launch: only rank 0 holds the lock"
    return None


def _same_file(fd: int, path: Path) -> bool:
    """Is the file at `path` still the inode we have open (not unlinked or replaced since)?"""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise LockError(f"cannot check lock file {path}: {e.strerror}", path, e.errno) from e
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _holder_alive(h: LockHolder) -> bool:
    if h.host not in ("", socket.gethostname()):
        return True  # a shared filesystem: we can't check another machine's pids
    try:
        import psutil

        p = psutil.Process(h.pid)
        # A reused pid is a different process: compare start times where the metadata has one.
        return h.start_time is None or abs(p.create_time() - h.start_time) < 1.0
    except Exception:  # noqa: BLE001 - NoSuchProcess, ZombieProcess, AccessDenied...
        try:
            os.kill(h.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _open_lock_file(path: Path) -> int:
    try:
        os.makedirs(path.parent, exist_ok=True)
    except OSError as e:
        raise LockError(f"cannot create the folder for lock file {path}: {e.strerror}", path,
                        e.errno) from e
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY, 0o644)
    except IsADirectoryError as e:
        raise LockError(f"lock path {path} is a directory", path, e.errno) from e
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            if not os.path.exists(path) and not os.access(path.parent, os.W_OK):
                why = f"permission denied (folder {path.parent} is not writable)"
            else:
                why = "permission denied"
        elif e.errno == errno.EROFS:
            why = "read-only file system"
        else:
            why = e.strerror or str(e)
        raise LockError(f"cannot open lock file {path}: {why}", path, e.errno) from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LockError(f"lock path {path} is not a regular file", path, errno.EINVAL)
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

    def __init__(self, name_or_path: str | os.PathLike[str], *, blocking: bool = False,
                 timeout: float | None = None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0")
        self.name = name_or_path
        self.blocking = blocking
        self.timeout = timeout
        self.noop_reason: str | None = None
        self._path: Path | None = None
        self._fd: int | None = None
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
        """Take the lock (arguments override the constructor's); returns self. Raises AlreadyRunning."""
        if self._fd is not None:
            raise RuntimeError(f"{self._label()} is already held by this lock object")
        self.noop_reason = rank_noop_reason()
        if self.noop_reason:
            return self
        blocking = self.blocking if blocking is None else blocking
        timeout = self.timeout if timeout is None else timeout
        wait = blocking or timeout is not None
        path = self.path
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        settle_until = start + _SETTLE_S
        pause = _POLL_MIN_S
        fd: int | None = None
        try:
            while True:
                if fd is None:
                    fd = _open_lock_file(path)
                try:
                    # Waiting for good: sleep in the kernel, woken the moment the holder lets go. With a
                    # timeout we poll instead (no signals/threads needed to give up in time).
                    forever = wait and deadline is None
                    fcntl.flock(fd, fcntl.LOCK_EX if forever else fcntl.LOCK_EX | fcntl.LOCK_NB)
                    got = True
                except BlockingIOError:
                    got = False
                except OSError as e:
                    raise LockError(f"cannot lock {path}: {e.strerror}", path, e.errno) from e
                if not _same_file(fd, path):
                    # The file we opened was unlinked (a release or a stale-lock clean-up) or replaced:
                    # whatever we hold or collided with is history. Start over on the current file.
                    os.close(fd)
                    fd = None
                    continue
                if got:
                    break
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
        try:
            meta = own_metadata()
            # Write first, then cut off the old record's tail: a reader never sees an empty file here.
            os.pwrite(fd, meta, 0)
            os.ftruncate(fd, len(meta))
        except OSError as e:
            warnings.warn(f"holding {path} but could not write holder metadata: {e}", stacklevel=2)
        self._fd = fd
        self._owner_pid = os.getpid()
        return self

    def _already_running(self, fd: int, path: Path, holder: LockHolder | None,
                         waited: float | None) -> AlreadyRunning:
        holders: tuple[int, ...] = ()
        if holder is None or not _holder_alive(holder):
            st = os.fstat(fd)
            holders = holders_of(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        return AlreadyRunning(path, holder, label=self._label(), holders=holders, waited=waited)

    def release(self) -> None:
        """Unlink the lock file, then close (which drops the lock). Idempotent."""
        fd, self._fd = self._fd, None
        self.noop_reason = None
        if fd is None:
            return
        try:
            # Only the process that took the lock removes the file: a forked child leaving a `with` block
            # must not pull the file from under its parent. Unlink *before* close, so any waiter that
            # then gets the old inode sees that it's no longer at the path and retries.
            if os.getpid() == self._owner_pid and self._path is not None and _same_file(fd, self._path):
                os.unlink(self._path)
        except OSError:
            pass  # a read-only or vanished folder: closing still releases the lock
        finally:
            os.close(fd)

    def __enter__(self) -> SingleInstanceLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
