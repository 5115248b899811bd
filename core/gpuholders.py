"""GPU holders from the kernel: every process with a GPU device file open, found through /proc/PID/fd, whether
or not NVML lists it (or is there at all).

What NVML misses and users ask about most: memory still taken after a job was killed, held by DataLoader workers
or children that inherited the CUDA context and keep `/dev/nvidia*` open after their parent died (the answer
passed around is `fuser -v /dev/nvidia*`); and, inside a container, NVML's host pids that are not in our PID
namespace.

Device files (the patterns are configurable: `DevicePatterns.under(dev_dir)`, the `patterns=` parameters, or the
environment variable PROCGUARD_GPU_DEV_DIR for the default):
- NVIDIA: `/dev/nvidiaN` (one GPU; the driver gives it minor number N, which NVML reports per GPU as
  `nvmlDeviceGetMinorNumber`), `/dev/nvidiactl`, `/dev/nvidia-uvm` (and `-uvm-tools`);
- AMD / Intel: `/dev/dri/renderD*` and `/dev/kfd`, shown as "device open" (no memory figures).

Cost: one `stat` of /proc/PID/fd per process per scan (or per `recheck` seconds). Since Linux 6.2 its st_size
is the number of open fds; a process's fds are only listed and read (one readlink each) when it is new, when
that count changed, or when its last full read is older than `max_age` (a closed-then-reopened fd keeps the
count), spread over that period so the rereads don't all fall on one refresh. Kernels that report size 0 get the
`max_age` rule alone. Other users' processes need root (their fd folders are private): they are
counted as `denied`, and NVML (when present) still lists them.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from procguard.core import cgroups, procfs
from procguard.core.nvml import GpuProcess
from procguard.core.snapshot import Proc, Snapshot

__all__ = [
    "DEV_DIR_ENV",
    "DeviceHolder",
    "DevicePatterns",
    "ForeignPid",
    "GpuFd",
    "HolderScanner",
    "MergedHolder",
    "NVIDIA_MAJOR",
    "ScanStats",
    "classify",
    "default_patterns",
    "device_holders",
    "gpu_orphans",
    "match_foreign_pids",
    "merge_holders",
    "orphan_reason",
    "read_gpu_fds",
]

NVIDIA_MAJOR = 195  # the NVIDIA driver's registered character-device major
DEV_DIR_ENV = "PROCGUARD_GPU_DEV_DIR"

# Kinds of GPU device file.
NVIDIA = "nvidia"  # /dev/nvidiaN: one GPU
NVIDIACTL = "nvidiactl"
NVIDIA_UVM = "nvidia-uvm"
RENDER = "render"  # /dev/dri/renderD*
KFD = "kfd"  # AMD compute
NVIDIA_KINDS = frozenset({NVIDIA, NVIDIACTL, NVIDIA_UVM})


class DevicePatterns(NamedTuple):
    """Where GPU device files are. Build with `DevicePatterns.under("/dev")` (tests: a temp folder of mknod'd
    nodes)."""

    prefixes: tuple[str, ...]  # cheap startswith test before the regexes
    nvidia: re.Pattern[str]  # group 1: N
    nvidiactl: re.Pattern[str]
    uvm: re.Pattern[str]
    render: re.Pattern[str]
    kfd: re.Pattern[str]

    @classmethod
    def under(cls, dev: str = "/dev") -> DevicePatterns:
        d = re.escape(dev.rstrip("/") or "/")
        return cls(
            (dev.rstrip("/") + "/",),
            re.compile(rf"^{d}/nvidia(\d+)$"),
            re.compile(rf"^{d}/nvidiactl$"),
            re.compile(rf"^{d}/nvidia-uvm(?:-tools)?$"),
            re.compile(rf"^{d}/dri/renderD\d+$"),
            re.compile(rf"^{d}/kfd$"),
        )


def default_patterns() -> DevicePatterns:
    """/dev, or the folder named by PROCGUARD_GPU_DEV_DIR (tests and CLI tests point it at fake nodes)."""
    return DevicePatterns.under(os.environ.get(DEV_DIR_ENV) or "/dev")


class GpuFd(NamedTuple):
    fd: int
    path: str  # readlink of /proc/PID/fd/N (" (deleted)" stripped)
    kind: str  # nvidia | nvidiactl | nvidia-uvm | render | kfd
    minor: int | None  # /dev/nvidiaN only: the device minor number


def classify(target: str, patterns: DevicePatterns) -> tuple[str, int | None] | None:
    """(kind, minor) when `target` (an fd's readlink) is a GPU device file, else None. Pure."""
    if not target.startswith(patterns.prefixes):
        return None
    if target.endswith(" (deleted)"):
        target = target[: -len(" (deleted)")]
    m = patterns.nvidia.match(target)
    if m:
        return NVIDIA, int(m.group(1))
    if patterns.nvidiactl.match(target):
        return NVIDIACTL, None
    if patterns.uvm.match(target):
        return NVIDIA_UVM, None
    if patterns.render.match(target):
        return RENDER, None
    if patterns.kfd.match(target):
        return KFD, None
    return None


def _nvidia_minor(pid: int, fd: int, from_name: int) -> int:
    """The real minor when the node is the NVIDIA driver's (major 195), else the N of its name (the driver's
    convention, kept by container runtimes; and what fake test nodes have)."""
    try:
        rdev = os.stat(f"{procfs.PROC}/{pid}/fd/{fd}").st_rdev
    except OSError:
        return from_name
    return os.minor(rdev) if rdev and os.major(rdev) == NVIDIA_MAJOR else from_name


class _Denied(Exception):
    pass


def read_gpu_fds(pid: int, patterns: DevicePatterns | None = None) -> tuple[GpuFd, ...] | None:
    """The GPU device files a process has open; None when it is gone or its fds can't be read (another user's)."""
    try:
        return _read_fds(pid, patterns or default_patterns(), [0])
    except _Denied:
        return None


def _read_fds(pid: int, patterns: DevicePatterns, counter: list[int]) -> tuple[GpuFd, ...] | None:
    base = f"{procfs.PROC}/{pid}/fd"
    try:
        names = os.listdir(base)
    except PermissionError as e:
        raise _Denied from e
    except OSError:
        return None
    out = []
    for name in names:
        try:
            target = os.readlink(f"{base}/{name}")
        except PermissionError as e:
            raise _Denied from e  # listable but not readable (ptrace rules): all its fds are
        except OSError:
            continue  # closed meanwhile
        counter[0] += 1
        hit = classify(target, patterns)
        if hit is None:
            continue
        kind, minor = hit
        fd = int(name)
        if kind == NVIDIA and minor is not None:
            minor = _nvidia_minor(pid, fd, minor)
        out.append(GpuFd(fd, target.removesuffix(" (deleted)"), kind, minor))
    out.sort()
    return tuple(out)


class DeviceHolder(NamedTuple):
    """A process with at least one GPU device file open."""

    pid: int
    start_ticks: int
    fds: tuple[GpuFd, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted({f.kind for f in self.fds}))

    @property
    def minors(self) -> tuple[int, ...]:
        """Minor numbers of the /dev/nvidiaN files it holds (one per GPU)."""
        return tuple(sorted({f.minor for f in self.fds if f.minor is not None}))

    @property
    def nvidia(self) -> bool:
        return any(f.kind in NVIDIA_KINDS for f in self.fds)

    def devices(self, minor_to_index: Mapping[int, int] | None) -> tuple[int, ...]:
        """NVML indices of the GPUs it holds (through the minor numbers NVML reports); () without a map."""
        if not minor_to_index:
            return ()
        return tuple(sorted({minor_to_index[m] for m in self.minors if m in minor_to_index}))

    def to_json(self, minor_to_index: Mapping[int, int] | None = None) -> dict[str, object]:
        return {
            "pid": self.pid,
            "kinds": list(self.kinds),
            "minors": list(self.minors),
            "devices": list(self.devices(minor_to_index)),
            "paths": sorted({f.path for f in self.fds}),
        }


@dataclass
class ScanStats:
    """What the last scan cost (for tests and the bench)."""

    processes: int = 0  # looked at
    fd_reads: int = 0  # processes whose fd folder was listed and read
    readlinks: int = 0
    cached: int = 0  # processes answered from the cache
    denied: int = 0  # fd folder not readable (another user's process, not root)
    seconds: float = 0.0


class _ProcLike(Protocol):
    @property
    def pid(self) -> int: ...
    @property
    def start_ticks(self) -> int: ...


class _Entry(NamedTuple):
    nfds: int  # st_size of /proc/PID/fd when read (the fd count; 0 on kernels that don't report it)
    at: float  # clock() of the full read (first one: spread back over max_age, see _spread)
    checked: float  # clock() of the last fd-count check
    fds: tuple[GpuFd, ...] | None  # None: denied


def _spread(pid: int) -> float:
    """A fixed fraction in [0, 1) per pid. Periodic work is due at `first + k * period`, with `first` moved back
    by this fraction of the period, so processes that were first seen together (all of them, on the first scan)
    don't come due together: the cost is spread over the period instead of a hitch once per period."""
    return ((pid * 2654435761) & 0xFFFF) / 0x10000


def _fd_count(pid: int) -> int | None:
    try:
        return os.stat(f"{procfs.PROC}/{pid}/fd").st_size
    except OSError:
        return None


class HolderScanner:
    """Repeated scans for GPU holders that only read what changed. One per refresh loop; not thread-safe (give
    each thread its own or lock around `scan`)."""

    def __init__(
        self,
        patterns: DevicePatterns | None = None,
        *,
        max_age: float = 30.0,
        recheck: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """max_age: seconds after which a process's fds are read again even if their count did not change.
        recheck: seconds between fd-count checks (one stat) of a known process; 0 checks on every scan. A TUI
        refreshing every second can pass a few seconds here: new processes are still read on their first scan."""
        self.patterns = patterns or default_patterns()
        self.max_age = max_age
        self.recheck = recheck
        self._clock = clock
        self._cache: dict[tuple[int, int], _Entry] = {}
        self.stats = ScanStats()

    def scan(self, procs: Iterable[_ProcLike] | Snapshot | None = None) -> dict[int, DeviceHolder]:
        """pid -> DeviceHolder for every process (of `procs`: a Snapshot, Procs or ProcIds; default: /proc now)
        with a GPU device file open."""
        t = time.perf_counter()
        now = self._clock()
        stats = ScanStats()
        counter = [0]
        out: dict[int, DeviceHolder] = {}
        seen: dict[tuple[int, int], _Entry] = {}
        for pid, ticks in self._ids(procs):
            stats.processes += 1
            key = (pid, ticks)
            entry = self._cache.get(key)
            if entry is not None and now - entry.checked < self.recheck and now - entry.at < self.max_age:
                stats.cached += 1
            else:
                entry = self._check(pid, entry, now, counter, stats)
                if entry is None:
                    continue  # gone
            seen[key] = entry
            if entry.fds is None:
                stats.denied += 1
            elif entry.fds:
                out[pid] = DeviceHolder(pid, ticks, entry.fds)
        self._cache = seen  # drops processes that are gone
        stats.readlinks = counter[0]
        stats.seconds = time.perf_counter() - t
        self.stats = stats
        return out

    def _check(
        self, pid: int, entry: _Entry | None, now: float, counter: list[int], stats: ScanStats
    ) -> _Entry | None:
        count = _fd_count(pid)
        if count is None:
            return None
        if entry is not None and entry.nfds == count and now - entry.at < self.max_age:
            stats.cached += 1
            return entry._replace(checked=now)
        stats.fd_reads += 1
        try:
            fds = _read_fds(pid, self.patterns, counter)
        except _Denied:
            fds = None
        if fds is None and entry is None and not os.path.exists(f"{procfs.PROC}/{pid}"):
            return None
        if entry is None:
            lag = _spread(pid)
            return _Entry(count, now - lag * self.max_age, now - lag * self.recheck, fds)
        return _Entry(count, now, now, fds)

    @staticmethod
    def _ids(procs: Iterable[_ProcLike] | Snapshot | None) -> Iterable[tuple[int, int]]:
        if procs is None:
            for pid in procfs.list_pids():
                st = procfs.read_stat(pid)
                if st is not None and not st.flags & procfs.PF_KTHREAD:
                    yield pid, st.start_ticks
            return
        for p in procs:
            if isinstance(p, Proc) and p.kernel_thread:
                continue  # kernel threads have no fds
            yield p.pid, p.start_ticks

    def invalidate(self) -> None:
        self._cache.clear()


_default: HolderScanner | None = None


def device_holders(procs: Iterable[_ProcLike] | Snapshot | None = None) -> dict[int, DeviceHolder]:
    """GPU holders now, through a module-level `HolderScanner` with the default patterns."""
    global _default
    if _default is None or _default.patterns != default_patterns():
        _default = HolderScanner()
    return _default.scan(procs)


# ---------------------------------------------------------------------------------------------- orphans


def _alive_leader(snap: Snapshot, pid: int, leads: Callable[[Proc], int]) -> bool:
    """`pid` is alive and leads what `leads` reads of it (its group: pgid, its session: sid)."""
    p = snap.get(pid)
    return p is not None and leads(p) == pid and not p.dead


def _unit_main_process(pid: int) -> str | None:
    """The unit name when `pid` is alone in a systemd *.service cgroup: that is the unit's main process (a
    forking daemon's child that systemd adopted as MainPID). A leftover of a unit would not be alone for long:
    systemd kills the rest of a service's cgroup when its main process ends (KillMode=control-group)."""
    info = cgroups.cgroup_info(pid)
    if info is None or info.name is None or info.name.kind != "service" or info.path is None:
        return None
    try:
        members = cgroups.cgroup_members(info.path, recursive=True)
    except cgroups.CgroupError:
        return None
    return info.name.id if members == [pid] else None


def orphan_reason(snap: Snapshot, proc: Proc, *, check_units: bool = True) -> str | None:
    """Why `proc` is a left-behind process (a GPU orphan when it holds a GPU), or None.

    An orphan was re-parented and lost its job: its parent is init (ppid 1), or a subreaper, which shows as a
    parent in another session (a worker is forked inside its program's session, so a parent in another session
    means it was adopted: systemd --user, tini, `procguard run`); and its process-group leader or its session
    leader is gone (or a zombie). The typical case: a DataLoader / multiprocessing worker whose main process died.

    Not orphans: a process that is its own session leader (a daemon, a `setsid` job, and, as a heuristic, a systemd
    unit's main process: systemd starts every service with setsid, and its MainPID is not in /proc), a process
    alone in a systemd *.service cgroup (the main process of a forking service; `check_units`), a process whose
    leaders are alive (a pipeline member, a container's workers beside its PID 1), pid 1 and kernel threads.
    Limitation: a classic double-fork daemon (fork, setsid, fork) outside systemd is not its own session leader
    and its session leader is gone: it is flagged."""
    if proc.pid <= 1 or proc.kernel_thread or proc.ppid == 0 or proc.sid == proc.pid:
        return None
    parent = snap.get(proc.ppid)
    if proc.ppid == 1:
        adopted = "adopted by init (pid 1)"
    elif parent is None:
        return None  # can't tell who the parent is (another namespace, or it just exited)
    elif parent.sid != proc.sid:
        adopted = f"adopted by pid {parent.pid} ({parent.name}), a subreaper in another session"
    else:
        return None
    gone = []
    if not _alive_leader(snap, proc.pgid, lambda p: p.pgid):
        gone.append(f"its process-group leader {proc.pgid} is gone")
    if not _alive_leader(snap, proc.sid, lambda p: p.sid):
        gone.append(f"its session leader {proc.sid} is gone")
    if not gone:
        return None
    if check_units:
        unit = _unit_main_process(proc.pid)
        if unit is not None:
            return None
    return f"{adopted}; {' and '.join(gone)}"


# ---------------------------------------------------------------------------------------------- merging with NVML


class ForeignPid(NamedTuple):
    """An NVML process whose pid is not in our process table: a host pid seen from inside a container (NVML
    reports the host's PID namespace), or a process that ended between the two reads."""

    host_pid: int
    devices: tuple[int, ...]
    memory_used: int | None  # bytes over its devices; None when NVML can't tell
    local_pid: int | None  # the local holder it was matched to (unambiguous match on its devices), else None

    @property
    def label(self) -> str:
        if self.local_pid is not None:
            return f"pid {self.local_pid} (host pid {self.host_pid})"
        return f"host pid {self.host_pid} (another PID namespace)"


class MergedHolder(NamedTuple):
    """One GPU holder from both sources: the kernel's open device files and NVML's process list."""

    pid: int  # in our PID namespace
    devices: tuple[
        int, ...
    ]  # NVML indices: NVML's list, plus the kernel's minors mapped through minor_to_index
    minors: tuple[int, ...]  # /dev/nvidiaN minors it holds open (kernel)
    kinds: tuple[str, ...]  # device files open (kernel): nvidia, nvidiactl, nvidia-uvm, render, kfd
    memory_used: int | None  # bytes, NVML (summed over devices); None: NVML does not list it or can't tell
    in_nvml: bool
    in_kernel: bool  # seen holding a device file (False: NVML only, e.g. fds unreadable without root)
    host_pid: int | None  # NVML's pid when it was matched across PID namespaces
    orphan: str | None  # orphan_reason, when a snapshot was given

    @property
    def device_open_only(self) -> bool:
        """A holder without NVML figures: an AMD/Intel render node or kfd, or an NVIDIA holder NVML doesn't list."""
        return not self.in_nvml

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "devices": list(self.devices),
            "minors": list(self.minors),
            "kinds": list(self.kinds),
            "memory_used": self.memory_used,
            "in_nvml": self.in_nvml,
            "in_kernel": self.in_kernel,
            "host_pid": self.host_pid,
            "orphan": self.orphan,
        }


def _nvml_by_pid(processes: Iterable[GpuProcess]) -> dict[int, tuple[set[int], int | None]]:
    out: dict[int, tuple[set[int], int | None]] = {}
    for p in processes:
        devs, mem = out.get(p.pid, (set(), None))
        devs.add(p.device)
        if p.memory_used is not None:
            mem = (mem or 0) + p.memory_used
        out[p.pid] = (devs, mem)
    return out


def match_foreign_pids(
    processes: Iterable[GpuProcess],
    local_pids: Iterable[int] | Snapshot,
    holders: Mapping[int, DeviceHolder],
    minor_to_index: Mapping[int, int] | None,
) -> list[ForeignPid]:
    """NVML entries whose pid is not local, each matched to a local holder when that is unambiguous: on every
    device the foreign pid uses, it is the only foreign pid there and exactly one local holder of that device is
    missing from NVML's list, the same one on all of them. Pure."""
    local = {p.pid for p in local_pids} if isinstance(local_pids, Snapshot) else set(local_pids)
    by_pid = _nvml_by_pid(processes)
    foreign = {pid: v for pid, v in by_pid.items() if pid not in local}
    unlisted: dict[int, set[int]] = {}  # device -> local holders NVML doesn't list
    for h in holders.values():
        if h.pid in by_pid:
            continue
        for d in h.devices(minor_to_index):
            unlisted.setdefault(d, set()).add(h.pid)
    foreign_on: dict[int, int] = {}
    for devs, _mem in foreign.values():
        for d in devs:
            foreign_on[d] = foreign_on.get(d, 0) + 1
    out = []
    claimed: dict[int, int] = {}
    for pid, (devs, mem) in sorted(foreign.items()):
        cands = {frozenset(unlisted.get(d, ())) for d in devs}
        match = None
        if all(foreign_on[d] == 1 for d in devs) and len(cands) == 1:
            only = next(iter(cands))
            if len(only) == 1:
                match = next(iter(only))
        if match is not None and match in claimed:
            match = None
        if match is not None:
            claimed[match] = pid
        out.append(ForeignPid(pid, tuple(sorted(devs)), mem, match))
    return out


def merge_holders(
    holders: Mapping[int, DeviceHolder],
    processes: Iterable[GpuProcess] = (),
    snapshot: Snapshot | None = None,
    minor_to_index: Mapping[int, int] | None = None,
    *,
    local_pids: Iterable[int] | None = None,
) -> tuple[list[MergedHolder], list[ForeignPid]]:
    """Kernel holders and NVML's process list (`GpuSnapshot.processes`; empty without NVML) as one list, largest
    memory first, plus NVML pids that are not ours (unmatched ones are "host pid N (another PID namespace)").

    Which pids are local: the snapshot's (then each holder also gets its orphan reason), else `local_pids`, else
    every pid counts as local (nothing foreign). Pure."""
    processes = list(processes)
    by_pid = _nvml_by_pid(processes)
    if snapshot is not None:
        local_ids = {p.pid for p in snapshot}
    elif local_pids is not None:
        local_ids = set(local_pids)
    else:
        local_ids = set(holders) | set(by_pid)
    foreign = match_foreign_pids(processes, local_ids, holders, minor_to_index)
    matched = {f.local_pid: f for f in foreign if f.local_pid is not None}
    out = []
    for pid in sorted(set(holders) | (set(by_pid) & local_ids)):
        if snapshot is not None and pid not in snapshot:
            continue
        h = holders.get(pid)
        nv = by_pid.get(pid)
        f = matched.get(pid)
        devs: set[int] = set(h.devices(minor_to_index)) if h else set()
        mem: int | None = None
        if nv is not None:
            devs |= nv[0]
            mem = nv[1]
        elif f is not None:
            devs |= set(f.devices)
            mem = f.memory_used
        proc = snapshot.get(pid) if snapshot is not None else None
        out.append(
            MergedHolder(
                pid,
                tuple(sorted(devs)),
                h.minors if h else (),
                h.kinds if h else (),
                mem,
                nv is not None or f is not None,
                h is not None,
                f.host_pid if f else None,
                orphan_reason(snapshot, proc) if snapshot is not None and proc else None,
            )
        )
    out.sort(key=lambda m: (-(m.memory_used or 0), m.pid))
    return out, foreign


def gpu_orphans(merged: Iterable[MergedHolder]) -> list[MergedHolder]:
    """The orphans among merged holders (merge_holders with a snapshot), largest memory first."""
    return [m for m in merged if m.orphan is not None]
