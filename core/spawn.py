"""Starting commands in their own session, and tracking the subprocesses a block of code starts."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from procguard.core import signals
from procguard.core.signals import SignalResult, Target


class SpawnError(OSError):
    """The program could not be started; the message names it."""


class Spawned:
    """A command running in its own session (so its pgid is its pid). Actions cover its whole group."""

    def __init__(self, pid: int, argv: Sequence[str], popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.pgid = pid  # setsid made it a session and group leader
        self.argv = tuple(argv)
        self._popen = popen
        self.returncode: int | None = None

    def __repr__(self) -> str:
        return f"<Spawned pid={self.pid} argv={list(self.argv)!r} returncode={self.returncode}>"

    @staticmethod
    def _decode(status: int) -> int:
        return os.waitstatus_to_exitcode(status)  # negative for a signal, as Popen does

    def poll(self) -> int | None:
        if self.returncode is None:
            if self._popen is not None:
                self.returncode = self._popen.poll()
            else:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:
                    return self.returncode
                if pid:
                    self.returncode = self._decode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the leader to exit; raises subprocess.TimeoutExpired after `timeout` seconds."""
        if self.returncode is not None:
            return self.returncode
        if self._popen is not None:
            self.returncode = self._popen.wait(timeout)
            return self.returncode
        if timeout is not None and not _wait_readable(self.pid, timeout) and self.poll() is None:
            raise subprocess.TimeoutExpired(list(self.argv), timeout)
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = self._decode(status)
        return self.returncode

    def terminate(self, grace: float = 5.0) -> list[SignalResult]:
        """SIGTERM the whole group, SIGKILL what is left after `grace`, then reap the leader."""
        res = signals.terminate(Target.group(self.pgid), grace)
        self._reap()
        return res

    def kill(self) -> list[SignalResult]:
        res = signals.kill(Target.group(self.pgid))
        self._reap()
        return res

    def pause(self) -> list[SignalResult]:
        return signals.pause(Target.group(self.pgid))

    def resume(self) -> list[SignalResult]:
        return signals.resume(Target.group(self.pgid))

    def _reap(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
            self.wait(timeout=5.0)


def _wait_readable(pid: int, timeout: float) -> bool:
    """True once pid exits (pidfd turns readable at exit), False on timeout."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return True  # can't tell without blocking: let waitpid decide
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(fd)


def _check_program(argv: Sequence[str], env: Mapping[str, str] | None) -> str:
    if not argv:
        raise SpawnError("spawn: empty command")
    prog = argv[0]
    path = (env or os.environ).get("PATH", os.defpath)
    found = shutil.which(prog, path=path) if os.sep not in prog else prog
    if found is None or not os.path.exists(found):
        raise SpawnError(f"cannot run {prog!r}: no such program" + ("" if os.sep in prog else " on PATH"))
    if os.path.isdir(found) or not os.access(found, os.X_OK):
        raise SpawnError(f"cannot run {prog!r}: not an executable file")
    return found


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    *,
    pass_fds: Sequence[int] = (),
) -> Spawned:
    """Start argv in a new session. posix_spawn (no fork of a large parent) unless a cwd is wanted.

    pass_fds are inherited by the child (e.g. a lock's descriptor, so the child holds the lock too).
    """
    argv = [os.fspath(a) for a in argv]
    prog = _check_program(argv, env)
    full_env = dict(os.environ if env is None else env)
    if cwd is None and hasattr(os, "posix_spawn"):
        was = [(fd, os.get_inheritable(fd)) for fd in pass_fds]
        try:
            for fd in pass_fds:
                os.set_inheritable(fd, True)
            pid = os.posix_spawn(prog, argv, full_env, setsid=True)
        except OSError as e:
            raise SpawnError(f"cannot run {argv[0]!r}: {e.strerror}") from e
        finally:
            for fd, inheritable in was:
                os.set_inheritable(fd, inheritable)
        return Spawned(pid, argv)
    try:
        p = subprocess.Popen(argv, env=full_env, cwd=cwd, start_new_session=True, pass_fds=tuple(pass_fds))
    except OSError as e:
        what = f"cwd {os.fspath(cwd)!r}" if cwd is not None and not os.path.isdir(cwd) else repr(argv[0])
        raise SpawnError(f"cannot run {argv[0]!r}: {e.strerror} ({what})") from e
    return Spawned(p.pid, argv, p)


# --------------------------------------------------------------------------------------- tracking

_local = threading.local()
_install_lock = threading.Lock()
_installed = False


def _install_hook() -> None:
    """Wrap Popen.__init__ once so trackers on the *current thread* see the Popens it starts."""
    global _installed
    with _install_lock:
        if _installed:
            return
        original = subprocess.Popen.__init__

        def __init__(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            for rec in getattr(_local, "stack", ()):
                rec.append(self)

        subprocess.Popen.__init__ = __init__  # type: ignore[method-assign]
        _installed = True


class Tracked(list):  # type: ignore[type-arg]
    """The Popen objects started inside a track_subprocesses() block, in order."""

    results: list[SignalResult]


class _Recorder(list):  # type: ignore[type-arg]
    """A recorder on the per-thread stack whose `append` (called by the hook) also calls a callback."""

    def __init__(self, callback: Callable[[subprocess.Popen[Any]], None]) -> None:
        super().__init__()
        self.callback = callback

    def append(self, popen: subprocess.Popen[Any]) -> None:
        super().append(popen)
        self.callback(popen)


def _push(rec: list[Any]) -> list[list[Any]]:
    _install_hook()
    stack: list[list[Any]] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = []
        _local.stack = stack
    stack.append(rec)
    return stack


@contextlib.contextmanager
def on_popen(callback: Callable[[subprocess.Popen[Any]], None]) -> Iterator[list[subprocess.Popen[Any]]]:
    """Call `callback(popen)` in this thread right after every `subprocess.Popen` this thread starts inside
    the block (one Popen hook serves this and `track_subprocesses`). Yields the list of those Popens.

    An exception raised by the callback propagates out of the `subprocess.Popen(...)` call that triggered it
    (the process has been started by then).
    """
    rec = _Recorder(callback)
    stack = _push(rec)
    try:
        yield rec
    finally:
        with contextlib.suppress(ValueError):
            stack.remove(rec)


@contextlib.contextmanager
def track_subprocesses(*, terminate_on_exit: bool = False, grace: float = 5.0) -> Iterator[Tracked]:
    """Record every subprocess.Popen this thread starts inside the block.

    If the block is left by an exception (KeyboardInterrupt and SystemExit included) their process trees
    are terminated with escalation before the exception goes on. On a normal exit they keep running unless
    terminate_on_exit=True.
    """
    rec = Tracked()
    rec.results = []
    stack = _push(rec)
    try:
        yield rec
    except BaseException:
        stack.remove(rec)
        rec.results = _end_all(rec, grace)
        raise
    else:
        stack.remove(rec)
        if terminate_on_exit:
            rec.results = _end_all(rec, grace)


def _end_all(popens: list[subprocess.Popen[Any]], grace: float) -> list[SignalResult]:
    from procguard.core.snapshot import process_snapshot

    snap = process_snapshot()
    live = [p for p in popens if p.pid in snap.procs and p.returncode is None]
    # A child started in its own session keeps its group after it exits: its orphans are found there.
    targets = [Target.tree(p.pid) for p in live] + [
        Target.group(p.pid) for p in popens if p.pid in snap.group_map and p.pid != os.getpgrp()
    ]
    if not targets:
        return []
    # Ignore a second Ctrl-C while cleaning up: leaving half the trees behind is worse than a short wait.
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        res = signals.terminate(targets, grace, snapshot=snap)
        for p in popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5.0)
        return res
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
