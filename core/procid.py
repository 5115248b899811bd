"""The one process identity: pid + start time in clock ticks since boot.

A pid alone is reused; (pid, start_ticks) names one process for the life of the machine's boot. Every place
that stores or compares "the same process" (registry entries, lock holders, pinned signal targets, the
duplicate identity cache, cluster dry runs) uses this type.
"""

from __future__ import annotations

from typing import NamedTuple

from procguard.core import procfs

__all__ = ["ProcId"]


class ProcId(NamedTuple):
    """A process, named for certain: ``pid`` plus ``start_ticks`` (the 22nd field of /proc/PID/stat)."""

    pid: int
    start_ticks: int

    @classmethod
    def of(cls, pid: int) -> ProcId | None:
        """The identity of the process now running as `pid`; None when there is none (or /proc denies it)."""
        ticks = procfs.start_ticks_of(pid)
        return None if ticks is None else cls(pid, ticks)

    @classmethod
    def from_create_time(cls, pid: int, create_time: float) -> ProcId:
        """From an epoch start time as `Proc.create_time` / psutil report it (rounded to the nearest tick)."""
        return cls(pid, round((create_time - procfs.boot_time()) * procfs.CLK_TCK))

    @property
    def create_time(self) -> float:
        """Epoch seconds of the start, as `Proc.create_time` reports it."""
        return procfs.create_time(self.start_ticks)

    def alive(self) -> bool:
        """This very process still exists (a zombie counts: its pid is not free for reuse yet)."""
        return procfs.start_ticks_of(self.pid) == self.start_ticks

    def running(self) -> bool:
        """This very process exists and has not exited (not a zombie)."""
        st = procfs.read_stat(self.pid)
        return st is not None and st.start_ticks == self.start_ticks and not st.dead

    def __str__(self) -> str:
        return f"pid {self.pid}"
