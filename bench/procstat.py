"""Tiny /proc readers the harness uses to watch its own processes (independent of procguard.core)."""

from __future__ import annotations

import os

CLK_TCK: int = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the comm, or None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip().decode("utf-8", "replace")
    except OSError:
        return None


def state(pid: int) -> str | None:
    f = _stat_fields(pid)
    return None if f is None else f[0].decode()


def alive(pid: int) -> bool:
    """Running or sleeping: neither gone nor a zombie."""
    s = state(pid)
    return s is not None and s not in ("Z", "X")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process (all its threads), in seconds."""
    f = _stat_fields(pid)
    if f is None:
        return None
    return (int(f[11]) + int(f[12])) / CLK_TCK


def status_field(pid: int, key: str) -> str | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key.encode() + b":"):
                    return line.split(b":", 1)[1].strip().decode()
    except OSError:
        return None
    return None


def vm_hwm_bytes(pid: int) -> int | None:
    """Peak resident set size (VmHWM)."""
    v = status_field(pid, "VmHWM")
    return None if v is None else int(v.split()[0]) * 1024


def ignores(pid: int, signum: int) -> bool:
    v = status_field(pid, "SigIgn")
    return v is not None and bool(int(v, 16) & (1 << (signum - 1)))


def count_processes() -> int:
    with os.scandir("/proc") as it:
        return sum(1 for e in it if e.name.isdigit())


def pids_with_token(token: str) -> list[int]:
    """Processes whose command line or environment carries `token` (the harness's marker), excluding us."""
    needle = token.encode()
    me = os.getpid()
    found: list[int] = []
    with os.scandir("/proc") as it:
        names = [e.name for e in it if e.name.isdigit()]
    for name in names:
        pid = int(name)
        if pid == me:
            continue
        for what in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    if needle in f.read():
                        if alive(pid):
                            found.append(pid)
                        break
            except OSError:
                continue
    return found


def cmdline_text(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def environ_text(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
