"""Flushing GPU caches: in this process, and cooperatively in a guarded one.

In-process: `flush_gpu_caches()` runs `gc.collect()`, then empties torch's CUDA (or MPS) caching allocator if
this process already imported torch and uses the GPU. torch is never imported here (`sys.modules.get`).

Remote, cooperative (no tool can empty another process's allocator from outside):

- The guarded process calls `install_flush_handler(signum)` (guard() does). The signal handler does no work:
  it puts a token on a `queue.SimpleQueue` (reentrant, safe in a signal handler). A daemon thread takes it,
  runs `flush_gpu_caches()` and writes the answer to this process's registry entry as
  `flush={"flushed", "backend", "before", "after", "freed", "message", "time", "started", "request_id"}`.
  Requests that arrive while a flush runs are answered by one more flush; requests queued together share one.
- `request_flush(pid)` reads the target's registry entry and believes it only under the registry's trust rule
  (a regular file owned by the process's owner or root, in a folder private to that owner, naming the same
  pid and start ticks): anything else is NotGuarded, and nothing is sent. It then sends the entry's
  `flush_signal` to that very process (pinned with a pidfd and its start ticks) and polls the entry until the
  answer carries its request id, or started after the request was made (a concurrent requester's flush
  counts too: it ran after ours was asked), up to the timeout.
- The request id channel is for a requester of the target's own uid only: it writes
  `flush_request={"id", "time"}` into the target's entry, which lies in a folder private to both. A requester
  of another uid (root flushing a user's process) writes nothing anywhere: it sends the signal alone and
  matches the answer by time (`started` >= when it asked). The guarded process writes its answer in its own
  entry, which the requester reads under the trust rule.
- `start_allocator_publisher()` writes `allocator={"allocated", "reserved", "time"}` to the entry every few
  seconds while torch's CUDA (or MPS) allocator is in use, so a viewer can tell what a flush would free.

Handler rules: SIGUSR1 unless configured. An existing Python handler for that signal is chained (called after
ours sets its request), never replaced; SIG_DFL / SIG_IGN are replaced, and the uninstall function restores
whatever was there. A handler installed outside Python (from C: `signal.getsignal` returns None) is left alone
with a RuntimeWarning, and the process then doesn't answer. Python runs signal handlers on the main thread
only, between bytecodes: a main thread stuck in one long native call delays the request; installing must
happen on the main thread (elsewhere: a RuntimeWarning, nothing installed). A forked child inherits the
handler, which then only chains: the child has no worker thread and no registry entry of its own.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import queue
import signal
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeGuard

from procguard.core import format as fmt
from procguard.core.procfs import DEAD_STATES

if TYPE_CHECKING:
    from procguard.core.registry import RegistryEntry

__all__ = [
    "FlushError",
    "FlushResult",
    "FlushTimeout",
    "NotGuarded",
    "allocator_figures",
    "flush_gpu_caches",
    "flush_handler_installed",
    "install_flush_handler",
    "request_flush",
    "start_allocator_publisher",
]


@dataclass(frozen=True, slots=True)
class FlushResult:
    flushed: bool  # a GPU cache was emptied
    backend: str | None  # "cuda" | "mps" | None
    reserved_before: int | None  # bytes the allocator held (reserved) before / after
    reserved_after: int | None
    freed: int | None
    message: str
    time: float  # epoch seconds when the flush finished

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_answer(self, *, started: float, request_id: str | None) -> dict[str, Any]:
        """The registry form (`flush=` field of an entry)."""
        return {
            "flushed": self.flushed,
            "backend": self.backend,
            "before": self.reserved_before,
            "after": self.reserved_after,
            "freed": self.freed,
            "message": self.message,
            "time": self.time,
            "started": started,
            "request_id": request_id,
        }

    @classmethod
    def from_answer(cls, a: Mapping[str, Any]) -> FlushResult:
        """From the registry form. The answer is the guarded process's word: odd types become None / 0, and
        the message is kept exact (a terminal gets it through sanitize.safe)."""
        backend = a.get("backend")
        t = a.get("time")
        return cls(
            flushed=bool(a.get("flushed", a.get("freed") is not None)),
            backend=backend if isinstance(backend, str) else None,
            reserved_before=_count(a.get("before")),
            reserved_after=_count(a.get("after")),
            freed=_count(a.get("freed")),
            message=str(a.get("message", "")),
            time=float(t) if _number(t) else 0.0,
        )


def _count(v: Any) -> int | None:
    return int(v) if _number(v) else None


def _number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class FlushError(Exception):
    """A flush request could not be answered."""


class NotGuarded(FlushError):
    """The target doesn't answer flush requests (not guarded, no flush signal, no such process)."""


class FlushTimeout(FlushError):
    """The guarded target didn't answer in time."""


# ---------------------------------------------------------------------------------------------------------
# In-process flush


def _nothing(why: str) -> FlushResult:
    return FlushResult(False, None, None, None, None, f"no GPU cache to flush: {why}", time.time())


def _cuda_figures(cuda: Any) -> tuple[int, int]:
    n = cuda.device_count()
    return (
        sum(int(cuda.memory_allocated(i)) for i in range(n)),
        sum(int(cuda.memory_reserved(i)) for i in range(n)),
    )


def _mps_available(torch: Any) -> bool:
    backend = getattr(getattr(torch, "backends", None), "mps", None)
    try:
        return bool(backend is not None and backend.is_available() and hasattr(torch, "mps"))
    except Exception:
        return False


def _mps_figures(torch: Any) -> tuple[int, int] | None:
    """(allocated, driver-allocated) bytes, or None when MPS is not in use in this process."""
    if not _mps_available(torch):
        return None
    reserved = int(torch.mps.driver_allocated_memory())
    return (int(torch.mps.current_allocated_memory()), reserved) if reserved > 0 else None


def _torch() -> Any:
    return sys.modules.get("torch")  # never import it


def flush_gpu_caches() -> FlushResult:
    """gc.collect(), then empty torch's CUDA cache (+ IPC collect) or MPS cache where this process uses one.

    Never imports torch. `reserved_*` are the allocator's reserved bytes summed over devices (MPS: the
    driver-allocated bytes).
    """
    gc.collect()
    torch = _torch()
    if torch is None:
        return _nothing("torch not imported")
    backend: str | None = None
    try:
        cuda = getattr(torch, "cuda", None)
        if cuda is not None and cuda.is_initialized():
            backend = "cuda"
            _, before = _cuda_figures(cuda)
            cuda.empty_cache()
            cuda.ipc_collect()
            _, after = _cuda_figures(cuda)
        elif (mps := _mps_figures(torch)) is not None:
            backend = "mps"
            before = mps[1]
            torch.mps.empty_cache()
            after = int(torch.mps.driver_allocated_memory())
        elif _mps_available(torch):
            return _nothing("CUDA not initialised and MPS not in use in this process")
        else:
            return _nothing("CUDA not initialised in this process")
    except Exception as e:  # a bad fork, a driver error: say so rather than crash the caller
        return FlushResult(
            False, backend, None, None, None, f"flush failed: {type(e).__name__}: {e}", time.time()
        )
    freed = max(0, before - after)
    name = "CUDA" if backend == "cuda" else "MPS"
    msg = (
        f"flushed {name} cache: freed {fmt.bytes_long(freed)} "
        f"(reserved {fmt.bytes_long(before)} -> {fmt.bytes_long(after)})"
    )
    return FlushResult(True, backend, before, after, freed, msg, time.time())


def allocator_figures() -> dict[str, Any] | None:
    """{"allocated", "reserved", "time"} of torch's CUDA (or MPS) allocator in this process, or None when
    torch isn't imported or no GPU allocator is in use. Never imports torch."""
    torch = _torch()
    if torch is None:
        return None
    try:
        cuda = getattr(torch, "cuda", None)
        if cuda is not None and cuda.is_initialized():
            allocated, reserved = _cuda_figures(cuda)
        elif (mps := _mps_figures(torch)) is not None:
            allocated, reserved = mps
        else:
            return None
    except Exception:
        return None
    return {"allocated": allocated, "reserved": reserved, "time": time.time()}


# ---------------------------------------------------------------------------------------------------------
# Registry access


def _registry() -> Any:
    from procguard.core import registry  # the guarded side only needs it once a request comes

    return registry


def _safe(text: object) -> str:
    from procguard.core.sanitize import safe

    return safe(text)


def _field(entry: RegistryEntry | None, name: str) -> Any:
    """What a guarded process published in its registry entry under `name` (update_entry keeps every such key,
    flush, flush_request, allocator, in `extra`); None without an entry."""
    return None if entry is None else entry.extra.get(name)


_write_lock = threading.Lock()  # serialises this process's own registry writes (worker and publisher)


def _write_own_entry(**fields: Any) -> None:
    with _write_lock:
        _registry().update_entry(os.getpid(), **fields)


# ---------------------------------------------------------------------------------------------------------
# The guarded side: signal handler + worker thread

_REQUEST, _STOP = "flush", "stop"


class _Worker:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="procguard-flush", daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.pid == os.getpid() and self.thread.is_alive()

    def _run(self) -> None:
        while True:
            items = [self.queue.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self.queue.get_nowait())
            if _STOP in items:
                return
            try:
                self._answer()
            except Exception as e:  # never let a registry hiccup kill the worker
                warnings.warn(
                    f"procguard: could not answer a flush request: {e}", RuntimeWarning, stacklevel=1
                )

    @staticmethod
    def _answer() -> None:
        started = time.time()
        try:
            request = _field(_registry().get_entry(os.getpid()), "flush_request")
        except Exception:
            request = None
        request_id = request.get("id") if isinstance(request, Mapping) else None
        result = flush_gpu_caches()
        fields: dict[str, Any] = {"flush": result.to_answer(started=started, request_id=request_id)}
        figures = allocator_figures()
        if figures is not None:
            fields["allocator"] = figures
        _write_own_entry(**fields)

    def stop(self) -> None:
        self.queue.put(_STOP)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=5.0)


class _Handler:
    """The installed signal handler: queue a request, then call the handler it replaced."""

    def __init__(self, signum: int, original: Any, worker: _Worker) -> None:
        self.signum = signum
        self.original = original  # what signal.getsignal returned before (restored on uninstall)
        self.previous = original if callable(original) else None  # chained
        self.worker = worker
        self.pid = os.getpid()
        self.refs = 1
        self.active = True

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        if self.active and self.pid == os.getpid():
            self.worker.queue.put_nowait(_REQUEST)  # reentrant; the only work done in the handler
        if self.previous is not None:
            return self.previous(signum, frame)
        return None


_state_lock = threading.RLock()
_worker: _Worker | None = None
_handlers: dict[int, _Handler] = {}


def _ensure_worker() -> _Worker:
    global _worker
    if _worker is None or not _worker.alive():
        _worker = _Worker()
    return _worker


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    done = threading.Event()

    def wrapper() -> None:
        if not done.is_set():
            done.set()
            fn()

    return wrapper


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def install_flush_handler(signum: int = signal.SIGUSR1) -> Callable[[], None]:
    """Answer flush requests sent as `signum` (see the module doc). Returns the uninstall function, which
    restores the previous handler (if ours is still the installed one) and stops the worker thread when no
    handler is left. Installing again for the same signal only counts a reference. Main thread only."""
    signame = _signame(signum)
    with _state_lock:
        current = signal.getsignal(signum)
        mine = _handlers.get(signum)
        if mine is not None and current is mine and mine.active and mine.pid == os.getpid():
            mine.refs += 1
            return _once(lambda: _release(mine))
        if current is None:
            warnings.warn(
                f"procguard: {signame} has a handler installed outside Python; the flush handler "
                "was not installed, so flush requests will not be answered",
                RuntimeWarning,
                stacklevel=2,
            )
            return lambda: None
        worker = _ensure_worker()
        handler = _Handler(signum, current, worker)
        try:
            signal.signal(signum, handler)
        except ValueError as e:  # not the main thread
            if not _handlers:
                _stop_worker()
            warnings.warn(
                f"procguard: flush handler for {signame} not installed: {e}", RuntimeWarning, stacklevel=2
            )
            return lambda: None
        _handlers[signum] = handler
        return _once(lambda: _release(handler))


def flush_handler_installed(signum: int = signal.SIGUSR1) -> bool:
    """Whether this process answers flush requests sent as `signum` (our handler is the installed one)."""
    with _state_lock:
        h = _handlers.get(signum)
        return h is not None and h.active and h.pid == os.getpid() and signal.getsignal(signum) is h


def _stop_worker() -> None:
    global _worker
    if _worker is not None and _worker.alive():
        _worker.stop()
    _worker = None


def _release(handler: _Handler) -> None:
    with _state_lock:
        handler.refs -= 1
        if handler.refs > 0:
            return
        handler.active = False  # if it stays installed (someone chained on top of it), it only chains
        if signal.getsignal(handler.signum) is handler:
            with contextlib.suppress(ValueError):  # not the main thread: leave the inactive handler
                signal.signal(handler.signum, handler.original)
        if _handlers.get(handler.signum) is handler:
            del _handlers[handler.signum]
        if not _handlers:
            _stop_worker()


# ---------------------------------------------------------------------------------------------------------
# The requesting side


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    return data[data.rindex(b")") + 2 : data.rindex(b")") + 3].decode() not in DEAD_STATES


def _answers(answer: Any, request_id: str | None, asked: float) -> bool:
    if not isinstance(answer, Mapping):
        return False
    if request_id is not None and answer.get("request_id") == request_id:
        return True
    started = answer.get("started")
    return _number(started) and started >= asked


def _not_guarded(reg: Any, pid: int) -> NotGuarded:
    if not _alive(pid):
        return NotGuarded(f"pid {pid}: no such process")
    why = ""
    with contextlib.suppress(Exception):
        ignored = reg.get_entry(pid, include_untrusted=True)
        if ignored is not None and not ignored.trusted:
            why = f" (a registry entry for it was ignored: {_safe(ignored.untrusted_reason)})"
    return NotGuarded(
        f"pid {pid} is not a guarded process{why}: it does not answer flush requests (only a process can free "
        "its own GPU cache); wrap its main in `with procguard.core.guard.guard():` (or decorate it with "
        "@guard), restart it, then ask again"
    )


def _flush_signal(entry: Any) -> int:
    signum = entry.flush_signal
    if not signum:
        raise NotGuarded(
            f"pid {entry.pid} is guarded without a flush signal (guard(flush_signal=None)): it does "
            "not answer flush requests; guard it with a flush signal (SIGUSR1 by default)"
        )
    if not isinstance(signum, int) or isinstance(signum, bool) or signum not in signal.valid_signals():
        raise NotGuarded(
            f"pid {entry.pid}: its registry entry names an invalid flush signal {_safe(repr(signum))}"
        )
    return int(signum)


def _send(entry: Any, signum: int) -> None:
    """Send `signum` to the very process the entry names: a pidfd pins it, then its start ticks are checked
    again, so a pid reused since the entry was judged is never hit. ProcessLookupError when it is gone."""
    pid, ident = entry.pid, entry.proc_id
    if ident is None or not (hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")):
        os.kill(pid, signum)
        return
    fd = os.pidfd_open(pid)
    try:
        if not ident.alive():
            raise ProcessLookupError(pid)
        signal.pidfd_send_signal(fd, signum)
    finally:
        os.close(fd)


def request_flush(pid: int, timeout: float = 10.0) -> FlushResult:
    """Ask guarded process `pid` to flush its GPU caches; wait up to `timeout` seconds for its answer.

    Only an entry the registry trusts counts (see the module doc); a requester of another uid writes nothing
    and matches the answer by time. Raises NotGuarded (no trusted entry, no flush signal, no such process),
    FlushTimeout (no answer in time), FlushError (it exited while we waited), PermissionError (not allowed to
    signal it).
    """
    reg = _registry()
    entry = reg.get_entry(pid)
    if entry is None or not entry.trusted:
        raise _not_guarded(reg, pid)
    signum = _flush_signal(entry)
    asked = time.time()
    request_id: str | None = None
    owner = _process_owner(pid)
    if owner is not None and owner == os.geteuid():
        # Same user: the request id goes into the target's entry, in a folder private to us both. Best effort:
        # without it (the entry is in a folder we don't see) the answer is matched on its start time.
        request_id = uuid.uuid4().hex
        with contextlib.suppress(Exception):
            reg.update_entry(pid, flush_request={"id": request_id, "time": asked})
    try:
        _send(entry, signum)
    except ProcessLookupError:
        raise NotGuarded(f"pid {pid}: no such process (its registry entry is stale)") from None
    return _await_answer(reg, pid, signum, request_id, asked, timeout)


def _process_owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _await_answer(
    reg: Any, pid: int, signum: int, request_id: str | None, asked: float, timeout: float
) -> FlushResult:
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        entry = reg.get_entry(pid)  # trusted only: an answer planted by someone else is not read
        answer = _field(entry, "flush")
        if _answers(answer, request_id, asked):
            return FlushResult.from_answer(answer)
        if entry is None or not _alive(pid):
            raise FlushError(f"pid {pid} exited before answering the flush request")
        left = deadline - time.monotonic()
        if left <= 0:
            raise FlushTimeout(
                f"pid {pid} did not answer the flush request within {timeout:g}s: it is guarded, but it may "
                f"block or ignore {_signame(signum)}, or its main thread is stuck in native code"
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.1)


# ---------------------------------------------------------------------------------------------------------
# Allocator publisher


def start_allocator_publisher(interval: float = 5.0) -> Callable[[], None]:
    """Daemon thread writing `allocator={"allocated", "reserved", "time"}` to this process's registry entry
    every `interval` seconds while torch's CUDA (or MPS) allocator is in use (nothing is written otherwise).
    Returns stop(), which wakes the thread at once and waits briefly for it."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            figures = allocator_figures()
            if figures is not None:
                with contextlib.suppress(Exception):  # entry gone, registry busy: try next time
                    _write_own_entry(allocator=figures)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=run, name="procguard-allocator", daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        if threading.current_thread() is not thread:
            thread.join(timeout=2.0)

    return stopper
