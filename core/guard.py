"""`guard()`: what a script wraps its main in, so it runs once, says it is running, and cleans up.

    from procguard.core.guard import guard

    with guard():            # or: @guard() / @guard on main()
        train()

On entry, in this order (anything set up is undone if a later step fails):

1. SIGTERM and SIGHUP raise SystemExit(128+signum) in the main thread, and SIGINT raises KeyboardInterrupt, so
   the exit steps run however the process is asked to stop. Installed only where the handler is the default
   (SIG_DFL): a handler the program installed itself, or an ignored signal, is left alone. Restored on exit.
2. Duplicates: the other independent runs of this script (never this process's own workers, ancestors or
   ranks; never scheduler jobs) that started *before* this one. A run started after us makes its own decision,
   so two runs starting together don't both give up. ``on_duplicate``:
   - "abort" (default): raise DuplicateRunning naming them (pid, since, command);
   - "terminate": end each with its process tree (SIGTERM, SIGKILL after ``grace``); DuplicateRunning if one
     can't be ended (another user's);
   - "ignore": don't look.
3. The single-instance lock (locks.SingleInstanceLock), named after the script (file stem / module name)
   unless ``name`` or ``lock="name-or-path"`` says otherwise. Held by it: abort/terminate raise
   DuplicateRunning naming the holder; ignore goes on without the lock.
4. The flush handler (flush.install_flush_handler(flush_signal), SIGUSR1 by default; None: no handler) and
   the allocator publisher, where the flush module provides them.
5. Registration in the per-user registry (registry.register), so viewers show the process as guarded. The
   entry goes only to a registry folder private to this process's user; when none can be had (another user
   made the predictable ones first) the guard goes on unregistered, with a RuntimeWarning and a note.

On exit (return, exception, SIGTERM, SIGINT, SIGHUP): flush GPU caches if ``flush_on_exit`` (first, so a
successor waiting on the lock finds the memory free), stop the publisher, unregister, uninstall the flush
handler, release the lock, restore the signal handlers. A signal arriving during these steps is held until
they are done. A process killed with SIGKILL can't clean up: its lock dies with it and readers prune its
registry entry.

Scheduler jobs (SLURM_JOB_ID, PBS_JOBID, LSB_JOBID set) skip steps 2 and 3: array jobs run one script many
times on purpose. In a distributed launch only the main rank (RANK/LOCAL_RANK 0 or unset) looks for
duplicates and takes the lock; its sibling ranks are never duplicates of it. A process that is itself a
worker of a run of the same script (forked, or started by it) skips steps 2 and 3 as well.

DuplicateRunning subclasses SystemExit: left uncaught it ends the script with its message on stderr and exit
status 1 and no traceback, which is what a script that must not run twice wants; catch it by name to decide
otherwise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, TypeVar

from procguard.core import registry
from procguard.core.duplicates import Instance, duplicate_report, end_runs
from procguard.core.identity import ScriptIdentity, identity_of
from procguard.core.launchenv import is_main_rank, scheduler_job
from procguard.core.sanitize import safe
from procguard.core.snapshot import Snapshot, process_snapshot

__all__ = ["guard", "Guard", "DuplicateRunning"]

F = TypeVar("F", bound=Callable[..., Any])
_POLICIES = ("abort", "terminate", "ignore")


class DuplicateRunning(SystemExit):
    """Another run of this script is running (or holds its lock). ``str()`` is the message for people.

    ``instances``: the other runs found (empty when only the lock said so); ``holder_pid``: the lock holder's
    pid when the lock refused us.
    """

    def __init__(
        self,
        message: str,
        script: str = "",
        instances: Sequence[Instance] = (),
        holder_pid: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.script = script
        self.instances = tuple(instances)
        self.holder_pid = holder_pid

    def __str__(self) -> str:
        return self.message


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# Guards active in this process (pid, guard): a guard nested in another does nothing, since the outer one
# already holds the lock (a second flock on it would refuse us) and the registry entry.
_active: list[tuple[int, Guard]] = []
_active_lock = threading.Lock()


class Guard(contextlib.ContextDecorator):
    """The object guard() returns. After entry: ``identity``, ``lock_path``, ``entry`` (the registry entry),
    ``terminated`` (signal results of duplicates ended), ``notes`` (steps skipped, and why)."""

    def __init__(
        self,
        name: str | None = None,
        *,
        lock: bool | str | os.PathLike[str] = True,
        on_duplicate: str = "abort",
        flush_on_exit: bool = True,
        flush_signal: int | None = signal.SIGUSR1,
        grace: float = 5.0,
    ) -> None:
        if on_duplicate not in _POLICIES:
            raise ValueError(f"on_duplicate must be one of {', '.join(_POLICIES)}, not {on_duplicate!r}")
        if grace < 0:
            raise ValueError(f"grace must be >= 0, not {grace}")
        self.name = name
        self.lock = lock
        self.on_duplicate = on_duplicate
        self.flush_on_exit = flush_on_exit
        self.flush_signal = flush_signal
        self.grace = grace
        self.identity: ScriptIdentity | None = None
        self.lock_path: str | None = None
        self.entry: registry.RegistryEntry | None = None
        self.terminated: list[Any] = []
        self.notes: list[str] = []
        self._stack: contextlib.ExitStack | None = None
        self._pid: int | None = None
        self._handlers: dict[int, Callable[[int, FrameType | None], None]] = {}
        self._exiting = False
        self._deferred: list[int] = []

    def _recreate_cm(self) -> Guard:
        # Each call of a decorated function gets its own guard state.
        return Guard(
            self.name,
            lock=self.lock,
            on_duplicate=self.on_duplicate,
            flush_on_exit=self.flush_on_exit,
            flush_signal=self.flush_signal,
            grace=self.grace,
        )

    # ------------------------------------------------------------------------------------------ entry

    def __enter__(self) -> Guard:
        if self._stack is not None:
            raise RuntimeError("this guard is already active")
        self._pid = os.getpid()
        self._exiting = False
        self._deferred = []
        stack = contextlib.ExitStack()
        with _active_lock:
            outer = next((g for pid, g in _active if pid == self._pid), None)
            _active.append((self._pid, self))
        stack.callback(self._deactivate)
        if outer is not None:
            self.identity, self.lock_path, self.entry = outer.identity, outer.lock_path, outer.entry
            self.notes.append("nested in another guard of this process: nothing more to do")
            self._stack = stack
            return self
        try:
            self._setup(stack)
        except BaseException:
            self._exiting = True
            stack.close()
            raise
        self._stack = stack
        return self

    def _deactivate(self) -> None:
        with _active_lock:
            for i, (_pid, g) in enumerate(_active):
                if g is self:
                    del _active[i]
                    break

    def _setup(self, stack: contextlib.ExitStack) -> None:
        self._install_exit_signals(stack)
        snap = process_snapshot()
        me = snap.get(os.getpid())
        self.identity = identity_of(me) if me is not None else None
        name = self.name or self._default_name()
        job = scheduler_job()
        sched = f"{job[0]}={job[2]}" if job is not None else None
        main_rank = is_main_rank()
        nested = False
        if sched:
            self.notes.append(f"scheduler job ({sched}): no duplicate check, no lock")
        elif not main_rank:
            self.notes.append("not the main rank of a distributed launch: no duplicate check, no lock")
        elif self.identity is not None and self.on_duplicate != "ignore":
            nested = self._handle_duplicates(snap)
        elif self.identity is not None:
            nested = self._is_worker(snap)
        want_lock = bool(self.lock) and not sched and main_rank and not nested
        if want_lock:
            lock_name: str | os.PathLike[str] | None = (
                self.lock
                if isinstance(self.lock, (str, os.PathLike)) and not isinstance(self.lock, bool)
                else name
            )
            if lock_name:
                self._take_lock(stack, lock_name)
            else:
                self.notes.append("no lock: no script name to name it after (pass name= or lock=)")
        installed = self._install_flush_handler(stack)
        self._register(stack, name, installed)
        self._start_publisher(stack)
        if self.flush_on_exit:
            stack.callback(self._flush)

    def _default_name(self) -> str | None:
        ident = self.identity
        if ident is None:
            # Not recognisable from outside (embedded interpreter, renamed argv[0]): name it after
            # sys.argv[0] when that is a file, so the lock still works.
            argv0 = sys.argv[0] if sys.argv else ""
            return Path(argv0).stem if argv0 and os.path.isfile(argv0) else None
        if ident.kind == "file":
            return Path(ident.key).stem or None
        if ident.kind == "module":
            return ident.key.partition("@")[0]
        return None  # -c code: no name a lock could sensibly use

    def _is_worker(self, snap: Snapshot) -> bool:
        report = duplicate_report(snap, self.identity, min_instances=1)
        pid = os.getpid()
        return not any(pid in i.members for g in report.groups for i in g.instances)

    def _handle_duplicates(self, snap: Snapshot) -> bool:
        """Apply on_duplicate to older runs; returns True when this process is a worker of a run (nested)."""
        assert self.identity is not None
        report = duplicate_report(snap, self.identity, min_instances=1)
        pid = os.getpid()
        mine: Instance | None = None
        instances: tuple[Instance, ...] = ()
        for g in report.groups:
            for inst in g.instances:
                if pid in inst.members:
                    mine, instances = inst, g.instances
        if mine is None:
            self.notes.append("a worker of a run of the same script: no duplicate check, no lock")
            return True
        older = [
            i for i in instances if i is not mine and (i.create_time, i.pid) < (mine.create_time, mine.pid)
        ]
        if not older:
            return False
        display = safe(self.identity.display)  # from argv: escaped for the messages below
        if self.on_duplicate == "abort":
            listing = "; ".join(i.describe() for i in older)
            raise DuplicateRunning(f"{display} is already running: {listing}", display, older)
        # terminate: another user's run is never ended (not even by root); each run is re-checked first
        ended = end_runs(self.identity, older, self.grace, snapshot=snap)
        if ended.refused:
            listing = "; ".join(i.describe() for i in ended.refused)
            raise DuplicateRunning(
                f"{display} is already running as another user (can't end it): {listing}",
                display,
                list(ended.refused),
            )
        self.terminated = list(ended.results)
        if not ended.ok:
            raise DuplicateRunning(
                f"could not end the other runs of {display}: {ended.summary}{ended.notes}", display, older
            )
        if ended.ended:
            warnings.warn(
                f"procguard: ended {len(ended.ended)} other run(s) of {display}: {ended.summary}"
                f"{ended.notes}",
                RuntimeWarning,
                stacklevel=4,
            )
        return False

    def _take_lock(self, stack: contextlib.ExitStack, lock_name: str | os.PathLike[str]) -> None:
        from procguard.core.locks import AlreadyRunning, SingleInstanceLock

        timeout = self.grace if self.terminated else None  # holders just ended: let the lock settle
        lk = SingleInstanceLock(lock_name, timeout=timeout)
        try:
            lk.acquire()
        except AlreadyRunning as e:
            # The metadata's pid only when the kernel agrees it holds the lock; else the real holder.
            holder_pid = e.holder.pid if e.holder is not None else (e.holders[0] if e.holders else None)
            if self.on_duplicate == "ignore":
                self.notes.append(f"no lock (on_duplicate='ignore'): {safe(e)}")
                warnings.warn(
                    f"procguard: {safe(e)}; going on without the lock (on_duplicate='ignore')",
                    RuntimeWarning,
                    stacklevel=4,
                )
                return
            raise DuplicateRunning(f"already running: {safe(e)}", str(lock_name), (), holder_pid) from None
        stack.callback(lk.release)
        if lk.is_noop:
            self.notes.append(f"no lock: {lk.noop_reason}")
            return
        self.lock_path = str(lk.path)

    def _install_flush_handler(self, stack: contextlib.ExitStack) -> bool:
        sig = self.flush_signal
        if not sig:
            return False
        if not _in_main_thread():
            self.notes.append("no flush handler: guard entered outside the main thread")
            return False
        from procguard.core.flush import flush_handler_installed, install_flush_handler

        uninstall = install_flush_handler(sig)
        stack.callback(uninstall)
        # Asked of the flush module, not by comparing handlers: a handler this process installed before the
        # guard is counted, not replaced, and still answers.
        return flush_handler_installed(sig)

    def _register(self, stack: contextlib.ExitStack, name: str | None, flush_installed: bool) -> None:
        ident = self.identity
        script = ident.key if ident is not None else (name or "")
        extra: dict[str, Any] = {
            "name": name,
            "kind": ident.kind if ident else None,
            "display": ident.display if ident else name,
            "on_duplicate": self.on_duplicate,
        }
        try:
            self.entry = registry.register(
                script=script,
                lock=self.lock_path,
                flush_signal=self.flush_signal if flush_installed else None,
                extra=extra,
            )
        except OSError as e:
            # PrivateDirError when every registry folder is unusable (say, made by another user first).
            self.notes.append(f"not registered: {safe(e)}")
            warnings.warn(
                f"procguard: could not register this process: {safe(e)}", RuntimeWarning, stacklevel=4
            )
            return
        pid = os.getpid()
        stack.callback(registry.unregister, pid)

    def _start_publisher(self, stack: contextlib.ExitStack) -> None:
        if self.entry is None:
            return
        from procguard.core.flush import start_allocator_publisher

        stack.callback(start_allocator_publisher())

    def _flush(self) -> None:
        from procguard.core.flush import flush_gpu_caches

        try:
            flush_gpu_caches()
        except Exception as e:  # noqa: BLE001 - exit steps must all run
            warnings.warn(f"procguard: GPU cache flush on exit failed: {e}", RuntimeWarning, stacklevel=2)

    # ------------------------------------------------------------------------------------------ signals

    def _install_exit_signals(self, stack: contextlib.ExitStack) -> None:
        if not _in_main_thread():
            self.notes.append("exit signals not handled: guard entered outside the main thread")
            return
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            if signal.getsignal(sig) is not signal.SIG_DFL:
                continue  # the program's own handler, or ignored: theirs to keep
            handler = self._make_handler(sig)
            signal.signal(sig, handler)
            self._handlers[sig] = handler
            stack.callback(self._restore_signal, sig, handler)

    def _make_handler(self, sig: int) -> Callable[[int, FrameType | None], None]:
        def handler(signum: int, _frame: FrameType | None) -> None:
            if self._exiting:
                self._deferred.append(signum)  # don't cut the exit steps short
                return
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)

        return handler

    def _restore_signal(self, sig: int, handler: Callable[[int, FrameType | None], None]) -> None:
        with contextlib.suppress(ValueError):
            if signal.getsignal(sig) is handler:
                signal.signal(sig, signal.SIG_DFL)
        self._handlers.pop(sig, None)

    # ------------------------------------------------------------------------------------------ exit

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        stack, self._stack = self._stack, None
        if stack is None:
            return False
        if os.getpid() != self._pid:
            # A forked child leaving the block: the lock, entry and handlers belong to the parent.
            stack.pop_all()
            return False
        self._exiting = True
        try:
            stack.close()
        finally:
            deferred, self._deferred = self._deferred, []
            # A stop request that came in during the exit steps still stops us, now with default handling.
            if deferred and exc_type is None:
                os.kill(os.getpid(), deferred[0])
        return False


def guard(
    name: str | Callable[..., Any] | None = None,
    *,
    lock: bool | str | os.PathLike[str] = True,
    on_duplicate: str = "abort",
    flush_on_exit: bool = True,
    flush_signal: int | None = signal.SIGUSR1,
    grace: float = 5.0,
) -> Any:
    """A Guard: use as ``with guard(...):`` or ``@guard(...)`` (or bare ``@guard``). See the module doc."""
    if callable(name) and not isinstance(name, str):
        return Guard()(name)
    return Guard(
        name,
        lock=lock,
        on_duplicate=on_duplicate,
        flush_on_exit=flush_on_exit,
        flush_signal=flush_signal,
        grace=grace,
    )
