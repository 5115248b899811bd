"""GPU snapshot (through NVML), its cache, and its joins with the process snapshot.

`gpu_snapshot()` never raises for a missing driver or GPU: it returns `available=False` with the reason. NVML
calls take milliseconds, so snapshots are cached for `max_age` seconds, and a failure to load NVML is
remembered for `retry_after` seconds (60 by default): asking again in between costs a lock-free attribute read.
Callers on a UI thread should refresh from a worker and read `GpuMonitor.last()` in between.

The joins take the kernel's GPU holders too (`holders=`, from `gpuholders.HolderScanner.scan` or
`gpuholders.device_holders`): processes with a GPU device file open whether or not NVML lists them. The scan
is never made here on its own: `gpu_snapshot()` stays an NVML read, and a caller asks for the fd scan when it
wants it (the CLI on each run, the app through its own cached scanner). Orphans are one rule,
`gpuholders.orphan_reason`, whichever source found the holder.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from procguard.core import gpuholders as _holders
from procguard.core import nvml as _nvml
from procguard.core import views
from procguard.core.gpuholders import DeviceHolder, ForeignPid, MergedHolder
from procguard.core.nvml import GpuDevice, GpuProcess
from procguard.core.snapshot import Proc, Snapshot

__all__ = [
    "GpuDevice",
    "GpuHolder",
    "GpuMonitor",
    "GpuProcess",
    "GpuSnapshot",
    "default_monitor",
    "gpu_holders",
    "gpu_memory_by_pid",
    "gpu_snapshot",
    "group_gpu_memory",
    "merged_holders",
    "orphaned_gpu_processes",
    "tree_gpu_memory",
    "unknown_gpu_pids",
]


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    available: bool
    reason: str | None  # why not available; None when available
    devices: tuple[GpuDevice, ...]
    processes: tuple[GpuProcess, ...]
    time: float  # epoch seconds when read (or when the failure was found)

    def device(self, index: int) -> GpuDevice | None:
        return next((d for d in self.devices if d.index == index), None)

    @property
    def minor_to_index(self) -> dict[int, int]:
        """/dev/nvidiaN minor -> NVML index (maps the kernel's holders to devices; {} without NVML)."""
        return _nvml.minor_to_index(self.devices)


def _unavailable(reason: str) -> GpuSnapshot:
    return GpuSnapshot(False, reason, (), (), time.time())


class GpuMonitor:
    """Thread-safe cached access to NVML.

    - `snapshot(max_age=)` returns the cached snapshot while it is younger than `max_age` seconds (0: always
      read); otherwise one caller reads NVML while concurrent callers wait for and share that read.
    - If NVML can't be loaded (no library, no driver, no device), the unavailable snapshot is returned without
      retrying until `retry_after` seconds have passed, whatever `max_age` says. `invalidate()` forgets it.
    - `nvml`: a module (or object) to use instead of `pynvml`; tests pass a fake here.
    - NVML stays initialised once loaded; `close()` shuts it down.
    """

    def __init__(
        self, *, nvml: Any = None, retry_after: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._override = nvml
        self.retry_after = retry_after
        self._clock = clock
        self._lock = threading.Lock()
        self._nvml: Any = None  # the loaded module
        self._last: GpuSnapshot | None = None
        self._last_at = -math.inf  # clock() when _last was made
        self._failed_until = -math.inf  # while clock() < this, don't try to load NVML again
        self.init_attempts = 0  # how many times NVML loading was tried (for tests and diagnostics)
        self.reads = 0  # how many full NVML reads were made

    def last(self) -> GpuSnapshot | None:
        """The most recent snapshot without touching NVML (None before the first)."""
        return self._last

    def _fresh(self, now: float, max_age: float) -> GpuSnapshot | None:
        last = self._last
        if last is None:
            return None
        if self._nvml is None and now < self._failed_until:
            return last  # remembered failure
        if now - self._last_at < max_age:
            return last
        return None

    def snapshot(self, *, max_age: float = 1.0) -> GpuSnapshot:
        called = self._clock()
        hit = self._fresh(called, max_age)
        if hit is not None:
            return hit
        with self._lock:
            # Another thread may have read NVML while we waited for the lock: share its result.
            if self._last is not None and self._last_at > called:
                return self._last
            now = self._clock()
            hit = self._fresh(now, max_age)
            if hit is not None:
                return hit
            snap = self._read(now)
            self._last, self._last_at = snap, now
            return snap

    def _read(self, now: float) -> GpuSnapshot:
        if self._nvml is None:
            self.init_attempts += 1
            try:
                self._nvml = _nvml.load(self._override)
            except _nvml.NvmlUnavailable as e:
                self._failed_until = now + self.retry_after
                return _unavailable(e.reason)
        self.reads += 1
        try:
            devices, processes = _nvml.read(self._nvml)
        except Exception as e:  # a lost GPU, a driver hiccup: report it, try again after max_age
            return _unavailable(f"NVML query failed: {e}")
        return GpuSnapshot(True, None, devices, processes, time.time())

    def invalidate(self) -> None:
        """Forget the cached snapshot and any remembered failure: the next call reads NVML."""
        with self._lock:
            self._last, self._last_at, self._failed_until = None, -math.inf, -math.inf

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                _nvml.shutdown(self._nvml)
                self._nvml = None
            self._last, self._last_at = None, -math.inf


_default = GpuMonitor()


def default_monitor() -> GpuMonitor:
    return _default


def gpu_snapshot(*, max_age: float = 1.0) -> GpuSnapshot:
    """GPU devices and processes, from the module's default `GpuMonitor` (cached for `max_age` seconds)."""
    return _default.snapshot(max_age=max_age)


# ---------------------------------------------------------------------------------------------------------
# Joins with the process snapshot (pure functions)


def gpu_memory_by_pid(gpu: GpuSnapshot) -> dict[int, int]:
    """pid -> GPU memory in bytes summed over devices (a process whose figure NVML can't tell counts 0)."""
    out: dict[int, int] = {}
    for p in gpu.processes:
        out[p.pid] = out.get(p.pid, 0) + (p.memory_used or 0)
    return out


def _sum(gpu: GpuSnapshot, pids: Iterable[int]) -> int:
    mem = gpu_memory_by_pid(gpu)
    return sum(mem.get(pid, 0) for pid in set(pids))


def tree_gpu_memory(snapshot: Snapshot, gpu: GpuSnapshot, pid: int) -> int:
    """GPU memory of pid and all its descendants (bytes)."""
    return _sum(gpu, [pid, *(p.pid for p in views.descendants(snapshot, pid))])


def group_gpu_memory(snapshot: Snapshot, gpu: GpuSnapshot, pgid: int) -> int:
    """GPU memory of every member of process group pgid (bytes)."""
    return _sum(gpu, (p.pid for p in views.group_members(snapshot, pgid)))


class GpuHolder(NamedTuple):
    proc: Proc
    memory_used: int  # bytes over all devices (0 where NVML can't tell or doesn't list it: see in_nvml)
    devices: tuple[int, ...]  # NVML device indices (NVML's list, plus the kernel's minors it maps)
    orphan: str | None = None  # why it was left behind (gpuholders.orphan_reason), None when it was not
    in_nvml: bool = True  # False: found by its open device file only ("device open", no memory figure)


def merged_holders(
    snapshot: Snapshot, gpu: GpuSnapshot, holders: Mapping[int, DeviceHolder] | None = None
) -> tuple[list[MergedHolder], list[ForeignPid]]:
    """NVML's processes and the kernel's device holders as one list (largest memory first, each with its orphan
    reason), and NVML pids that are not in this PID namespace (matched to a local holder where unambiguous)."""
    return _holders.merge_holders(holders or {}, gpu.processes, snapshot, gpu.minor_to_index)


def gpu_holders(
    snapshot: Snapshot, gpu: GpuSnapshot, holders: Mapping[int, DeviceHolder] | None = None
) -> list[GpuHolder]:
    """Processes of the snapshot that hold a GPU, largest first: those NVML lists, and with `holders` (the
    kernel's) those with a GPU device file open that NVML doesn't list."""
    merged, _foreign = merged_holders(snapshot, gpu, holders)
    return [GpuHolder(snapshot[m.pid], m.memory_used or 0, m.devices, m.orphan, m.in_nvml) for m in merged]


def orphaned_gpu_processes(
    snapshot: Snapshot, gpu: GpuSnapshot, holders: Mapping[int, DeviceHolder] | None = None
) -> list[GpuHolder]:
    """GPU holders that were left behind: likely leftover workers (DataLoader, multiprocessing, Ray) of a run
    that crashed or was killed, still pinning GPU memory. Largest first. `holders` adds the kernel's holders
    NVML doesn't list (or can't: no NVML at all).

    The rule is `gpuholders.orphan_reason`: re-parented to init or a subreaper, with its process-group or
    session leader gone. Not orphans: daemons, `setsid` / `nohup` jobs and systemd services (their own session
    leaders), the workers of a container's PID-1 program (their leader lives), processes whose parent we can't
    see.
    """
    return [h for h in gpu_holders(snapshot, gpu, holders) if h.orphan is not None]


def unknown_gpu_pids(snapshot: Snapshot, gpu: GpuSnapshot) -> list[GpuProcess]:
    """NVML entries whose pid is not in the process table: another PID namespace (NVML reports host PIDs inside
    a container) or a process that exited between the two reads. Shown as such, never dropped."""
    return [p for p in gpu.processes if p.pid not in snapshot]
