"""Immutable snapshots of the process table.

On Linux the table is read straight from /proc (stat every time; cmdline, uid and username only once per
(pid, start time, comm), since they don't change for a process unless it execs, and an exec changes comm).
Elsewhere psutil is the portable path.
"""

from __future__ import annotations

import os
import pwd
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import NamedTuple

from procguard.core import procfs
from procguard.core.procfs import DEAD_STATES, STOPPED_STATES  # defined with the stat reader; named here too
from procguard.core.pyproc import PythonCmd, parse_python_cmdline


class Proc(NamedTuple):
    """One process as seen at snapshot time."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str  # one letter as ps shows it: R S D T t Z I (X W P possible)
    name: str  # comm, at most 15 characters
    cmdline: tuple[str, ...]  # empty for kernel threads and zombies
    create_time: float  # epoch seconds
    rss: int  # bytes
    uid: int
    username: str
    cpu_percent: float  # since the previous snapshot of the same Snapshotter
    num_threads: int
    tty_nr: int
    kernel_thread: bool
    start_ticks: int  # /proc start time in clock ticks; (pid, start_ticks) names a process uniquely
    python: PythonCmd | None

    @property
    def command(self) -> str:
        """The command line as one string, or [comm] when there is none (kernel threads, zombies)."""
        return " ".join(self.cmdline) if self.cmdline else f"[{self.name}]"

    @property
    def dead(self) -> bool:
        """Exited but still in the table (a zombie, or being reaped): it can't be signalled or stopped, and its
        pid is not free for reuse yet."""
        return self.state in DEAD_STATES

    @property
    def stopped(self) -> bool:
        """Stopped by a signal or a tracer: it runs again (and acts on pending signals) only once continued."""
        return self.state in STOPPED_STATES


@dataclass(frozen=True)
class Snapshot:
    """Every live process the caller could see at `time`. Derived indexes are built once, on first use."""

    procs: Mapping[int, Proc]
    time: float = field(default_factory=time.time)

    def __getitem__(self, pid: int) -> Proc:
        return self.procs[pid]

    def get(self, pid: int) -> Proc | None:
        return self.procs.get(pid)

    def __contains__(self, pid: object) -> bool:
        return pid in self.procs

    def __iter__(self) -> Iterator[Proc]:
        return iter(self.procs.values())

    def __len__(self) -> int:
        return len(self.procs)

    @cached_property
    def children_map(self) -> Mapping[int, tuple[int, ...]]:
        """ppid -> child pids, sorted."""
        m: dict[int, list[int]] = {}
        for p in self.procs.values():
            m.setdefault(p.ppid, []).append(p.pid)
        return MappingProxyType({k: tuple(sorted(v)) for k, v in m.items()})

    @cached_property
    def group_map(self) -> Mapping[int, tuple[int, ...]]:
        m: dict[int, list[int]] = {}
        for p in self.procs.values():
            m.setdefault(p.pgid, []).append(p.pid)
        return MappingProxyType({k: tuple(sorted(v)) for k, v in m.items()})

    @cached_property
    def session_map(self) -> Mapping[int, tuple[int, ...]]:
        m: dict[int, list[int]] = {}
        for p in self.procs.values():
            m.setdefault(p.sid, []).append(p.pid)
        return MappingProxyType({k: tuple(sorted(v)) for k, v in m.items()})


class _Static(NamedTuple):
    comm: str
    cmdline: tuple[str, ...]
    uid: int
    username: str
    python: PythonCmd | None
    arg_start: int  # procfs.Stat.arg_start when read: another value means the process exec'd since


# A Python process whose stat hides arg_start (another user's, unless root) could exec into another Python
# program unseen (the comm stays "python3"): its command line is read again every this many snapshots.
RECHECK_HIDDEN_EVERY = 8


_usernames: dict[int, str] = {}


def username_of(uid: int) -> str:
    name = _usernames.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        _usernames[uid] = name
    return name


def _proc(st: procfs.Stat, s: _Static, cpu: float, boot: float, clk: int, page: int) -> Proc:
    """The one place a Proc is put together from its stat line and its static data."""
    return Proc(
        st.pid,
        st.ppid,
        st.pgid,
        st.sid,
        st.state,
        st.comm,
        s.cmdline,
        boot + st.start_ticks / clk,
        st.rss_pages * page,
        s.uid,
        s.username,
        cpu,
        st.num_threads,
        st.tty_nr,
        bool(st.flags & procfs.PF_KTHREAD),
        st.start_ticks,
        s.python,
    )


def read_proc(pid: int) -> Proc | None:
    """`pid` read from /proc now, bypassing every cache (a Snapshotter keeps a command line until the process
    execs, and an exec that keeps comm and hides its argv address goes unseen for a few scans). None when it is
    gone or /proc denies it. CPU% is 0.0: there is no earlier sample."""
    st = procfs.read_stat(pid)
    cmdline = procfs.read_cmdline(pid)
    uid = procfs.read_uid(pid)
    if st is None or cmdline is None or uid is None:
        return None
    python = parse_python_cmdline(cmdline) if cmdline else None
    s = _Static(st.comm, cmdline, uid, username_of(uid), python, st.arg_start)
    return _proc(st, s, 0.0, procfs.boot_time(), procfs.CLK_TCK, procfs.PAGE_SIZE)


class Snapshotter:
    """Takes snapshots, reusing what doesn't change between them. One per refresh loop; thread-safe."""

    def __init__(self) -> None:
        self._static: dict[tuple[int, int], _Static] = {}
        self._cpu: dict[tuple[int, int], int] = {}
        self._last_mono: float | None = None
        self._lock = threading.Lock()
        self._scans = 0

    def take(self) -> Snapshot:
        with self._lock:
            if procfs.HAS_PROC:
                return self._take_proc()
            return self._take_psutil()

    def _take_proc(self) -> Snapshot:
        now_mono = time.monotonic()
        wall = time.time()
        dt = None if self._last_mono is None else now_mono - self._last_mono
        tick_pct = 100.0 / (procfs.CLK_TCK * dt) if dt else 0.0
        boot = procfs.boot_time()
        clk = procfs.CLK_TCK
        page = procfs.PAGE_SIZE
        static_old = self._static
        cpu_old = self._cpu
        static_new: dict[tuple[int, int], _Static] = {}
        cpu_new: dict[tuple[int, int], int] = {}
        procs: dict[int, Proc] = {}
        parse_stat = procfs.parse_stat
        read_bytes = procfs.read_bytes
        proc_dir = procfs.PROC
        self._scans += 1
        recheck = self._scans % RECHECK_HIDDEN_EVERY  # pids with this remainder are due (spread over scans)
        try:
            entries = os.scandir(proc_dir)
        except OSError:
            return Snapshot(MappingProxyType({}), wall)
        with entries:
            for entry in entries:
                name = entry.name
                if not name.isdigit():
                    continue
                try:
                    st = parse_stat(read_bytes(f"{proc_dir}/{name}/stat", 1024))
                except (OSError, ValueError, IndexError):
                    continue  # vanished mid-scan
                key = (st.pid, st.start_ticks)
                s = static_old.get(key)
                # Static data is read again after an exec: a new comm, or a new argv address (python -> python).
                if (
                    s is None
                    or s.comm != st.comm
                    or s.arg_start != st.arg_start
                    or (
                        not st.arg_start and s.python is not None and st.pid % RECHECK_HIDDEN_EVERY == recheck
                    )
                ):
                    s = self._read_static(st, s)
                static_new[key] = s
                ticks = st.utime + st.stime
                cpu_new[key] = ticks
                prev = cpu_old.get(key)
                cpu = (ticks - prev) * tick_pct if prev is not None else 0.0
                procs[st.pid] = _proc(st, s, cpu, boot, clk, page)
        self._static = static_new
        self._cpu = cpu_new
        self._last_mono = now_mono
        return Snapshot(MappingProxyType(procs), wall)

    @staticmethod
    def _read_static(st: procfs.Stat, old: _Static | None) -> _Static:
        pid = st.pid
        cmdline = procfs.read_cmdline(pid)
        if cmdline is None or (not cmdline and old is not None):
            # Gone or a zombie now: keep what an earlier scan could read.
            cmdline = old.cmdline if old is not None else ()
        uid = procfs.read_uid(pid)
        if uid is None:
            uid = old.uid if old is not None else -1
        python = parse_python_cmdline(cmdline) if cmdline else None
        return _Static(st.comm, cmdline, uid, username_of(uid) if uid >= 0 else "?", python, st.arg_start)

    def _take_psutil(self) -> Snapshot:  # pragma: no cover - non-Linux path
        import psutil

        wall = time.time()
        procs: dict[int, Proc] = {}
        attrs = [
            "pid",
            "ppid",
            "status",
            "name",
            "cmdline",
            "create_time",
            "memory_info",
            "uids",
            "username",
            "cpu_percent",
            "num_threads",
            "terminal",
        ]
        state_letters = {
            "running": "R",
            "sleeping": "S",
            "disk-sleep": "D",
            "stopped": "T",
            "tracing-stop": "t",
            "zombie": "Z",
            "dead": "X",
            "idle": "I",
        }
        for p in psutil.process_iter(attrs):
            info = p.info
            try:
                pgid = os.getpgid(p.pid)
                sid = os.getsid(p.pid)
            except OSError:
                pgid = sid = -1
            cmdline = tuple(info.get("cmdline") or ())
            mem = info.get("memory_info")
            uids = info.get("uids")
            procs[p.pid] = Proc(
                p.pid,
                info.get("ppid") or 0,
                pgid,
                sid,
                state_letters.get(info.get("status") or "", "?"),
                info.get("name") or "",
                cmdline,
                info.get("create_time") or 0.0,
                mem.rss if mem else 0,
                uids.effective if uids else -1,
                info.get("username") or "?",
                info.get("cpu_percent") or 0.0,
                info.get("num_threads") or 0,
                0,
                False,
                0,
                parse_python_cmdline(cmdline) if cmdline else None,
            )
        return Snapshot(MappingProxyType(procs), wall)


_default = Snapshotter()


def process_snapshot() -> Snapshot:
    """A snapshot of every process the caller can see (CPU% relative to the previous call of this function)."""
    return _default.take()
