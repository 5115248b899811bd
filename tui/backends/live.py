"""The live data source: builds a Model from procguard.core, and runs actions through it.

`collect()` runs in the app's collector thread (never on the UI thread). What it costs per refresh:

- the process snapshot is incremental (core's Snapshotter re-reads only /proc/PID/stat for known processes);
- GPU figures come from core's cached GpuMonitor (a missing driver is remembered, not retried every second);
- duplicates and `procguard run` jobs use one identity resolver of this backend (a process is classified once
  per pid + start time + command line);
- held locks come from core's `LockScanner`: between its full scans (every 10 s) it reads only the likely
  holders' fdinfo (about 3 ms instead of 22 ms at 500 processes), and it is asked every `slow_interval`
  seconds, or every refresh while the Locks view is shown (`locks_every_refresh`, set by the app);
- cgroups come from core's `CgroupReader` through `CgroupCache`: a process's /proc/PID/cgroup is read when it is
  new, when its command line changed (an exec: `echo $$ > cgroup.procs; exec job` moves, then execs) and every
  `CGROUP_RECHECK` seconds (spread over that period), not on every refresh (5 ms at 500 processes); whether the
  cgroup freezer holds a process is read every refresh, through one `FreezerReader` (one read of cgroup.events
  per distinct cgroup that is not the root);
- the kernel's GPU holders come from core's `HolderScanner`, kept across refreshes: a new process's fds are read
  on its first refresh, a known one's fd count is looked at every `HOLDER_RECHECK` seconds.

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

from procguard.core import cgroups as _cgroups
from procguard.core import duplicates as _duplicates
from procguard.core import flush as _flush
from procguard.core import gpu as _gpu
from procguard.core import locks as _locks
from procguard.core import procfs, registry, signals
from procguard.core.cgroups import CgroupInfo, FreezerReader
from procguard.core.duplicates import DuplicateGroup, Instance, ScheduledInstance, TerminateReport
from procguard.core.gpuholders import DeviceHolder, HolderScanner
from procguard.core.held_locks import LockScanner
from procguard.core.identity import IdentityResolver, ScriptIdentity, read_relevant_env
from procguard.core.locks import HeldLock
from procguard.core.signals import Member, SignalResult, Target
from procguard.core.snapshot import Proc, Snapshot, Snapshotter
from procguard.tui.backends import ProgressFn, SingleHost
from procguard.tui.model import GuardInfo, Model, ProcExtra, cgroup_note, make_model

PRUNE_EVERY = 10.0  # seconds between dropping ended processes from the identity and cgroup caches
HOLDER_RECHECK = 3.0  # seconds between looks at a known process's open fds (GPU device holders)
CGROUP_RECHECK = (
    5.0  # seconds between rereads of a known process's cgroup (a move without an exec shows then)
)


def _num(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def guard_info(entry: registry.RegistryEntry) -> GuardInfo:
    alloc = entry.extra.get("allocator")
    alloc = alloc if isinstance(alloc, dict) else {}
    return GuardInfo(
        entry.pid,
        entry.script,
        entry.lock,
        entry.flush_signal,
        _num(alloc.get("allocated")),
        _num(alloc.get("reserved")),
    )


def freeze_root(freezer: FreezerReader, info: CgroupInfo) -> str:
    """The cgroup whose thaw wakes a frozen process: the outermost of its cgroup and that cgroup's ancestors that
    the freezer reports frozen (cgroup.events counts a frozen ancestor too; the outermost one froze it). A v1
    freezer cgroup is named by its folder (a bare path means the v2 hierarchy). "" when none is."""
    for version, path in ((2, info.v2_path), (1, info.freezer_path)):
        comps = [c for c in (path or "").split("/") if c]
        for i in range(1, len(comps) + 1):
            here = "/" + "/".join(comps[:i])
            probe = info._replace(
                v2_path=here if version == 2 else None, freezer_path=here if version == 1 else None
            )
            if freezer.frozen(probe):
                mount = freezer.mounts.v1.get("freezer")
                return here if version == 2 or mount is None else mount.point.rstrip("/") + here
    return ""


def _spread(pid: int) -> float:
    """A fixed fraction in [0, 1) per pid: processes first seen together come due at different refreshes."""
    return ((pid * 2654435761) & 0xFFFF) / 0x10000


class CgroupCache:
    """core's `CgroupReader` for a refresh loop: a process's cgroup is read when it is new, when its command line
    changed since (an exec) and every `recheck` seconds, not on every refresh. Not thread-safe (the collector's)."""

    def __init__(self, recheck: float = CGROUP_RECHECK, clock: Callable[[], float] = time.monotonic) -> None:
        self.reader = _cgroups.CgroupReader()
        self.recheck = recheck
        self._clock = clock
        self._seen: dict[tuple[int, int], tuple[CgroupInfo | None, float, tuple[str, ...]]] = {}
        self.reads = 0  # /proc/PID/cgroup reads by the last read() (tests, bench)

    def read(self, snap: Snapshot) -> dict[int, CgroupInfo]:
        now = self._clock()
        out: dict[int, CgroupInfo] = {}
        seen: dict[tuple[int, int], tuple[CgroupInfo | None, float, tuple[str, ...]]] = {}
        reads = 0
        for p in snap:
            if p.kernel_thread:
                continue
            key = (p.pid, p.start_ticks)
            got = self._seen.get(key)
            if got is None or got[2] != p.cmdline or now - got[1] >= self.recheck:
                reads += 1
                # A first read is dated back by a fixed fraction of the period: rereads spread over it.
                at = now if got is not None else now - _spread(p.pid) * self.recheck
                got = (self.reader.info(p.pid, p.start_ticks), at, p.cmdline)
            seen[key] = got
            if got[0] is not None:
                out[p.pid] = got[0]
        self._seen = seen  # ended processes go
        self.reads = reads
        return out


def read_cgroups(cache: CgroupCache, snap: Snapshot) -> tuple[dict[int, CgroupInfo], dict[int, str]]:
    """Every process's cgroup, and the processes the cgroup freezer holds (-> the cgroup to thaw)."""
    infos = cache.read(snap)
    freezer = FreezerReader()  # per refresh: it remembers each cgroup's state for its life
    frozen = {pid: freeze_root(freezer, info) for pid, info in infos.items() if freezer.frozen(info)}
    return infos, frozen


def run_jobs(snap: Snapshot, is_runner: Callable[[Proc], bool]) -> dict[int, int]:
    """job pid -> pid of its `procguard run` launcher (the job is the launcher's child). Only processes whose
    first argument is "run" are asked about, so a refresh costs one pass over the table."""
    launchers = {
        p.pid for p in snap if p.python is not None and p.python.args[:1] == ("run",) and is_runner(p)
    }
    if not launchers:
        return {}
    return {p.pid: p.ppid for p in snap if p.ppid in launchers and not p.dead}


class LiveBackend(SingleHost):
    """Data and actions from procguard.core. Thread-safe: the collector thread and action workers share it."""

    static = False

    def __init__(self, *, slow_interval: float = 5.0, gpu_max_age: float = 1.0) -> None:
        self._snapshotter = Snapshotter()
        self._monitor = _gpu.default_monitor()
        self._scanner = LockScanner()
        self._identities = IdentityResolver()
        self._cgroups = CgroupCache()
        self._holders = HolderScanner(recheck=HOLDER_RECHECK)
        self._pruned_at = time.monotonic()
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
            self._read_locks(errors)
            guarded: list[GuardInfo] = []
            try:
                guarded = [guard_info(e) for e in registry.read_entries(all_users=True)]
            except Exception as e:
                errors.append(f"registry: {e}")
            groups, sched = self._duplicates(snap, gpu, errors)
            jobs = run_jobs(snap, self._identities.is_runner)
            infos, frozen = self._read_cgroups(snap, errors)
            holders = self._scan_holders(snap, errors)
            self._prune(snap)
            return make_model(
                self._seq,
                snap,
                gpu,
                duplicates=groups,
                scheduled=sched,
                locks=self._locks,
                stale_locks=self._stale,
                guarded=guarded,
                errors=errors,
                run_jobs=jobs,
                cgroups=infos,
                frozen=frozen,
                holders=holders,
            )

    def _read_cgroups(
        self, snap: Snapshot, errors: list[str]
    ) -> tuple[dict[int, CgroupInfo], dict[int, str]]:
        try:
            return read_cgroups(self._cgroups, snap)
        except Exception as e:  # a race with /proc or the cgroup filesystem: the rest still comes
            errors.append(f"cgroups: {e}")
            return {}, {}

    def _scan_holders(self, snap: Snapshot, errors: list[str]) -> dict[int, DeviceHolder]:
        try:
            return self._holders.scan(snap)
        except Exception as e:
            errors.append(f"GPU holders: {e}")
            return {}

    def _read_locks(self, errors: list[str]) -> None:
        """(lock held) Held and stale locks, when due."""
        now = time.monotonic()
        if not (self.locks_every_refresh or now - self._locks_at >= self.slow_interval):
            return
        self._locks_at = now
        try:
            self._locks = tuple(self._scanner.held_locks())
        except Exception as e:
            errors.append(f"locks: {e}")
        try:
            self._stale = tuple(str(p) for p in _locks.stale_lock_files())
        except Exception as e:
            errors.append(f"stale locks: {e}")

    def _duplicates(
        self, snap: Snapshot, gpu: _gpu.GpuSnapshot, errors: list[str]
    ) -> tuple[Sequence[DuplicateGroup], Sequence[ScheduledInstance]]:
        try:
            report = _duplicates.duplicate_report(snap, resolver=self._identities)
            groups = _duplicates.enrich(report.groups, snap, gpu, held=self._locks)
            # Scheduler-managed runs get the same GPU / lock figures, through enrich() one by one.
            filled = _duplicates.enrich(
                [DuplicateGroup(s.identity, (s.instance,)) for s in report.scheduler_managed],
                snap,
                gpu,
                held=self._locks,
            )
            sched = [
                replace(s, instance=g.instances[0])
                for s, g in zip(report.scheduler_managed, filled, strict=True)
            ]
        except (
            Exception
        ) as e:  # an invalid PROCGUARD_LAUNCHERS entry, a race with /proc: the rest still comes
            errors.append(f"duplicates: {e}")
            return (), ()
        return groups, sched

    def _prune(self, snap: Snapshot) -> None:
        """(lock held) Forget ended processes now and then (a pass is cheap but needn't run every refresh)."""
        now = time.monotonic()
        if now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            self._identities.prune(snap)
            self._cgroups.reader.prune((p.pid, p.start_ticks) for p in snap)

    def proc_extra(self, pid: int, snapshot: Snapshot | None = None) -> ProcExtra:
        explanation, why = None, None
        try:
            # The model's snapshot: the details describe what the table showed (None: a fresh one).
            explanation = _duplicates.explain(pid, snapshot, resolver=self._identities)
        except Exception as e:  # gone meanwhile, an invalid setting: the details say so, the rest still shows
            why = str(e) or type(e).__name__
        return ProcExtra(procfs.read_cwd(pid), read_relevant_env(pid), explanation, why)

    # ------------------------------------------------------------------------------------------ actions

    def resolve(self, targets: Sequence[Target], snapshot: Snapshot) -> list[Member]:
        return signals.resolve(list(targets), snapshot)

    def act(
        self,
        action: str,
        targets: Sequence[Target],
        snapshot: Snapshot,
        *,
        grace: float = 5.0,
        on_progress: ProgressFn | None = None,
    ) -> list[SignalResult]:
        # On the dry run's snapshot: core pins each process it captured there by its start time, so a pid
        # that names another process by now is never signalled.
        return signals.run_action(
            action, list(targets), grace=grace, snapshot=snapshot, on_progress=on_progress
        )

    def plan_notes(self, kind: str, targets: Sequence[Target]) -> list[str]:
        """How each cgroup target would be acted on here (core's dry run: cgroup.kill / cgroup.freeze, or the
        fallback and why)."""
        out = []
        for t in targets:
            if t.kind == "cgroup":
                try:
                    out.append(cgroup_note(kind, _cgroups.cgroup_plan(t.path)))
                except _cgroups.CgroupError as e:
                    out.append(str(e))
        return out

    def flush(self, pid: int, snapshot: Snapshot | None = None) -> str:
        return _flush.request_flush(pid, timeout=10.0).message

    def plan_duplicates(
        self, identity: ScriptIdentity, grace: float, snapshot: Snapshot, *, all_users: bool = False
    ) -> TerminateReport:
        return _duplicates.terminate_duplicates(
            "oldest", identity, grace, snapshot=snapshot, dry_run=True, all_users=all_users
        )

    def end_duplicates(
        self,
        identity: ScriptIdentity,
        grace: float,
        snapshot: Snapshot,
        on_progress: ProgressFn | None = None,
        *,
        victims: Sequence[Instance] | None = None,
        all_users: bool = False,
    ) -> TerminateReport:
        # Core re-checks every victim (pid, start time, identity key read fresh) right before signalling it.
        return _duplicates.terminate_duplicates(
            "oldest",
            identity,
            grace,
            snapshot=snapshot,
            on_progress=on_progress,
            all_users=all_users,
            victims=None if victims is None else list(victims),
        )

    def clean_locks(self, paths: Sequence[str]) -> list[Path]:
        removed = _locks.clean_stale_locks(paths=list(paths))
        with self._lock:
            self._locks_at = -math.inf  # show the result at the next refresh
        return removed
