"""The live data source: builds a Model from procguard.core, and runs actions through it.

`collect()` runs in the app's collector thread (never on the UI thread). What it costs per refresh:

- the process snapshot is incremental (core's Snapshotter re-reads only /proc/PID/stat for known processes);
- GPU figures come from core's cached GpuMonitor (a missing driver is remembered, not retried every second);
- duplicates use core's cached identity resolver (a script's identity is resolved once per process);
- held locks need a scan of every process's fdinfo, so they are re-read every `slow_interval` seconds, or
  every refresh while the Locks view is shown (`locks_every_refresh`, set by the app).

Everything that fails is reported in `Model.errors` with the reason, and the rest of the model still comes.
Action methods are called from action worker threads and only ever call core.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from procguard.core import duplicates as _duplicates
from procguard.core import flush as _flush
from procguard.core import gpu as _gpu
from procguard.core import locks as _locks
from procguard.core import procfs, registry, signals
from procguard.core.duplicates import DuplicateGroup, ScheduledInstance, TerminateReport
from procguard.core.identity import ScriptIdentity, read_relevant_env
from procguard.core.locks import HeldLock
from procguard.core.signals import Member, Progress, SignalResult, Target
from procguard.core.snapshot import Snapshot, Snapshotter
from procguard.tui.model import GuardInfo, Model, ProcExtra, make_model

ProgressFn = Callable[[Progress], None]


def _num(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def guard_info(entry: registry.RegistryEntry) -> GuardInfo:
    alloc = entry.extra.get("allocator")
    alloc = alloc if isinstance(alloc, dict) else {}
    return GuardInfo(entry.pid, entry.script, entry.lock, entry.flush_signal, _num(alloc.get("allocated")),
                     _num(alloc.get("reserved")))


class LiveBackend:
    """Data and actions from procguard.core. Thread-safe: the collector thread and action workers share it."""

    static = False
    live = True

    def __init__(self, *, slow_interval: float = 5.0, gpu_max_age: float = 1.0) -> None:
        self._snapshotter = Snapshotter()
        self._monitor = _gpu.default_monitor()
        self._lock = threading.Lock()
        self._seq = 0
        self.slow_interval = slow_interval
        self.gpu_max_age = gpu_max_age
        self.locks_every_refresh = False  # set from the UI thread; a plain attribute read here
        self._locks_at = -math.inf
        self._locks: tuple[HeldLock, ...] = ()
        self._stale: tuple[str, ...] = ()

    # ------------------------------------------------------------------------------------------ data

    def collect(self) -> Model:
        with self._lock:
            self._seq += 1
            errors: list[str] = []
            snap = self._snapshotter.take()
            try:
                gpu = self._monitor.snapshot(max_age=self.gpu_max_age)
            except Exception as e:  # core reports a missing driver as unavailable; this is anything else
                gpu = _gpu.GpuSnapshot(False, f"GPU query failed: {e}", (), (), time.time())
            now = time.monotonic()
            if self.locks_every_refresh or now - self._locks_at >= self.slow_interval:
                self._locks_at = now
                try:
                    self._locks = tuple(_locks.held_locks())
                except Exception as e:
                    errors.append(f"locks: {e}")
                try:
                    self._stale = tuple(str(p) for p in _locks.stale_lock_files())
                except Exception as e:
                    errors.append(f"stale locks: {e}")
            guarded: list[GuardInfo] = []
            try:
                guarded = [guard_info(e) for e in registry.read_entries(all_users=True)]
            except Exception as e:
                errors.append(f"registry: {e}")
            groups: Sequence[DuplicateGroup] = ()
            sched: Sequence[ScheduledInstance] = ()
            try:
                report = _duplicates.duplicate_report(snap)
                groups = _duplicates.enrich(report.groups, snap, gpu, held=self._locks)
                # Scheduler-managed runs get the same GPU / lock figures, through enrich() one by one.
                filled = _duplicates.enrich([DuplicateGroup(s.identity, (s.instance,))
                                             for s in report.scheduler_managed], snap, gpu, held=self._locks)
                sched = [replace(s, instance=g.instances[0]) for s, g in zip(report.scheduler_managed, filled, strict=True)]
            except Exception as e:
                errors.append(f"duplicates: {e}")
            return make_model(self._seq, snap, gpu, duplicates=groups, scheduled=sched, locks=self._locks,
                              stale_locks=self._stale, guarded=guarded, errors=errors)

    def proc_extra(self, pid: int) -> ProcExtra:
        return ProcExtra(procfs.read_cwd(pid), read_relevant_env(pid))

    # ------------------------------------------------------------------------------------------ actions

    def resolve(self, targets: Sequence[Target], snapshot: Snapshot) -> list[Member]:
        return signals.resolve(list(targets), snapshot)

    def terminate(self, targets: Sequence[Target], grace: float, snapshot: Snapshot,
                  on_progress: ProgressFn | None = None) -> list[SignalResult]:
        return signals.terminate(list(targets), grace, snapshot=snapshot, on_progress=on_progress)

    def kill(self, targets: Sequence[Target], snapshot: Snapshot,
             on_progress: ProgressFn | None = None) -> list[SignalResult]:
        return signals.kill(list(targets), snapshot=snapshot, on_progress=on_progress)

    def pause(self, targets: Sequence[Target], snapshot: Snapshot) -> list[SignalResult]:
        return signals.pause(list(targets), snapshot=snapshot)

    def resume(self, targets: Sequence[Target], snapshot: Snapshot) -> list[SignalResult]:
        return signals.resume(list(targets), snapshot=snapshot)

    def flush(self, pid: int) -> str:
        return _flush.request_flush(pid, timeout=10.0).message

    def plan_duplicates(self, identity: ScriptIdentity, grace: float, snapshot: Snapshot) -> TerminateReport:
        return _duplicates.terminate_duplicates("oldest", identity, grace, snapshot=snapshot, dry_run=True)

    def end_duplicates(self, identity: ScriptIdentity, grace: float, snapshot: Snapshot,
                       on_progress: ProgressFn | None = None) -> TerminateReport:
        return _duplicates.terminate_duplicates("oldest", identity, grace, snapshot=snapshot,
                                                on_progress=on_progress)

    def clean_locks(self, paths: Sequence[str]) -> list[Path]:
        removed = _locks.clean_stale_locks(paths=list(paths))
        with self._lock:
            self._locks_at = -math.inf  # show the result at the next refresh
        return removed
