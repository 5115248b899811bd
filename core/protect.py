"""Processes procguard refuses to signal, and why."""

from __future__ import annotations

import os

from procguard.core import procfs
from procguard.core.snapshot import Proc


def own_lineage() -> set[int]:
    """This process and every ancestor: signalling them would take procguard (or its shell) down with it."""
    out = {os.getpid()}
    pid = os.getppid()
    while pid > 0 and pid not in out:
        out.add(pid)
        st = procfs.read_stat(pid)
        if st is None:
            break
        pid = st.ppid
    return out


def process_protection(proc: Proc | None, pid: int) -> str | None:
    """Why `pid` must never be signalled, whoever asks, from what the process is alone (not a process, init, a
    kernel thread); None when nothing about it forbids it. `protection_reason` adds procguard's own lineage.
    Reads nothing: the app's demo scenario applies the same rules to made-up processes with it."""
    if pid <= 0:
        return f"pid {pid} is not a process (0 and negative pids address groups)"
    if pid == 1:
        return "pid 1 is init: signalling it can bring the system down"
    if proc is not None and (proc.kernel_thread or proc.ppid == 2 or pid == 2):
        return f"pid {pid} is a kernel thread"
    return None


def protection_reason(proc: Proc | None, pid: int, lineage: set[int] | None = None) -> str | None:
    """Why `pid` must not be signalled, or None when it may be."""
    why = process_protection(proc, pid)
    if why is not None:
        return why
    if lineage is None:
        lineage = own_lineage()
    if pid == os.getpid():
        return f"pid {pid} is procguard itself"
    if pid in lineage:
        return f"pid {pid} is an ancestor of procguard (its shell or launcher)"
    return None
