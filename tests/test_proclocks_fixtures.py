"""Byte fixtures for the /proc/locks and fdinfo parsers (as the kernel's fs/locks.c writes them), then the same
shapes for real: a waiter, an OFD lock, a POSIX range."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from procguard.core.held_locks import held_locks
from procguard.core.proclocks import LockEntry, fdinfo_lock_keys, parse_proc_locks, read_proc_locks
from tests.conftest import ProcStarter, wait_for

linux_only = pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs /proc/locks")

# lock_get_status(): "ID: CLASS MODE TYPE PID MAJ:MIN:INO START END"; a waiter gets "-> " after the id (nested
# waiters indent it further); OFD locks show pid -1; a lock without an inode shows "<none>:0"; flock, lease and
# OFD whole-file locks always show "0 EOF".
PROC_LOCKS = b"""\
1: POSIX  ADVISORY  WRITE 4242 fe:00:2149168 5 14
1: -> POSIX  ADVISORY  WRITE 4343 fe:00:2149168 0 EOF
1:  -> POSIX  ADVISORY  READ  4444 fe:00:2149168 10 EOF
2: FLOCK  ADVISORY  WRITE 999 00:1f:42 0 EOF
2: -> FLOCK  ADVISORY  WRITE 1000 00:1f:42 0 EOF
3: OFDLCK ADVISORY  READ  -1 08:01:9876 0 EOF
4: LEASE  ACTIVE    READ  5555 103:02:777 0 EOF
5: LEASE  BREAKING  UNLCK 5556 103:02:778 0 EOF
6: DELEG  ACTIVE    READ  7 00:2a:31 0 EOF
7: FLOCK  ADVISORY  WRITE 12 <none>:0 0 EOF
8: POSIX  ADVISORY  WRITE 0 fe:00:55 0 9223372036854775807
"""


def _by_id(entries: list[LockEntry]) -> dict[str, list[LockEntry]]:
    out: dict[str, list[LockEntry]] = {}
    for e in entries:
        out.setdefault(e.lock_id, []).append(e)
    return out


def test_holders_waiters_and_kinds() -> None:
    entries = parse_proc_locks(PROC_LOCKS)
    assert len(entries) == 11
    by = _by_id(entries)
    posix = by["1"]
    assert [(e.pid, e.waiting) for e in posix] == [(4242, False), (4343, True), (4444, True)]
    holder, waiter, nested = posix
    assert (holder.kind, holder.mode, holder.device, holder.inode, holder.start, holder.end) == (
        "posix",
        "write",
        (0xFE, 0),
        2149168,
        5,
        14,
    )
    assert (waiter.start, waiter.end) == (0, None)  # EOF
    assert (nested.mode, nested.start, nested.end) == ("read", 10, None)
    # A waiter's key is what fdinfo would show for a lock like it: the "->" is not part of it.
    assert waiter.key == ("POSIX", "ADVISORY", "WRITE", "4343", "fe:00:2149168", "0", "EOF")
    assert [(e.kind, e.pid, e.waiting, e.device, e.inode) for e in by["2"]] == [
        ("flock", 999, False, (0, 0x1F), 42),
        ("flock", 1000, True, (0, 0x1F), 42),
    ]


def test_ofd_lock_has_pid_minus_one() -> None:
    [ofd] = _by_id(parse_proc_locks(PROC_LOCKS))["3"]
    assert (ofd.kind, ofd.mode, ofd.pid, ofd.device, ofd.inode, ofd.waiting) == (
        "ofd",
        "read",
        -1,
        (8, 1),
        9876,
        False,
    )


def test_leases_and_delegations() -> None:
    by = _by_id(parse_proc_locks(PROC_LOCKS))
    assert [(e.kind, e.mode, e.pid, e.device, e.inode) for e in by["4"] + by["5"] + by["6"]] == [
        ("lease", "read", 5555, (0x103, 2), 777),
        ("lease", "unlck", 5556, (0x103, 2), 778),
        ("deleg", "read", 7, (0, 0x2A), 31),
    ]


def test_none_path_has_no_device_or_inode() -> None:
    [e] = _by_id(parse_proc_locks(PROC_LOCKS))["7"]
    assert (e.kind, e.pid, e.device, e.inode, e.start, e.end) == ("flock", 12, None, None, 0, None)


def test_pid_zero_and_a_numeric_end() -> None:
    [e] = _by_id(parse_proc_locks(PROC_LOCKS))["8"]
    assert (e.pid, e.end) == (0, 9223372036854775807)  # 0: a holder outside our pid namespace


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"   \n",
        b"1:",
        b"1: POSIX ADVISORY WRITE",  # cut short
        b"1: POSIX ADVISORY WRITE notapid fe:00:1 0 EOF",
        b"1: -> -> ->",
    ],
)
def test_malformed_lines_are_skipped_never_guessed(line: bytes) -> None:
    assert parse_proc_locks(line + b"\n" + PROC_LOCKS)[0].lock_id == "1"
    assert len(parse_proc_locks(line + b"\n" + PROC_LOCKS)) == 11


def test_odd_numbers_keep_the_entry() -> None:
    # A bad range or device field must not drop the lock (its holder still matters): fall back to whole file.
    [e] = parse_proc_locks(b"9: FLOCK  ADVISORY  WRITE 77 zz:00:x 0 EOF\n")
    assert (e.pid, e.device, e.inode) == (77, None, None)
    [e] = parse_proc_locks(b"9: POSIX  ADVISORY  WRITE 77 fe:00:5 x y\n")
    assert (e.start, e.end, e.inode) == (0, None, 5)


def test_non_ascii_bytes_do_not_break_parsing() -> None:
    entries = parse_proc_locks(b"\xff\xfe garbage\n" + PROC_LOCKS + b"\x1b]0;title\x07\n")
    assert len(entries) == 11


FDINFO = b"""\
pos:\t0
flags:\t02100001
mnt_id:\t27
ino:\t2149167
lock:\t1: FLOCK  ADVISORY  WRITE 12597 fe:00:2149167 0 EOF
lock:\t2: POSIX  ADVISORY  WRITE 12597 fe:00:2149167 5 14
lock:\t3: OFDLCK ADVISORY  READ  -1 fe:00:2149167 0 EOF
lock:\t4: BROKEN
"""


def test_fdinfo_lock_lines_give_keys_without_the_id() -> None:
    assert fdinfo_lock_keys(FDINFO) == [
        ("FLOCK", "ADVISORY", "WRITE", "12597", "fe:00:2149167", "0", "EOF"),
        ("POSIX", "ADVISORY", "WRITE", "12597", "fe:00:2149167", "5", "14"),
        ("OFDLCK", "ADVISORY", "READ", "-1", "fe:00:2149167", "0", "EOF"),
    ]
    assert fdinfo_lock_keys(b"pos:\t0\nflags:\t0100000\n") == []
    # The same lock matches between the two files: the key is everything after the id.
    [e] = parse_proc_locks(b"1: FLOCK  ADVISORY  WRITE 12597 fe:00:2149167 0 EOF\n")
    assert e.key == fdinfo_lock_keys(FDINFO)[0]


# ---------------------------------------------------------------- the same shapes, for real

HOLD_KINDS = """
import fcntl, os, struct, sys
ofd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
# struct flock: l_type, l_whence, l_start, l_len, l_pid (+ padding); F_OFD_SETLK is 37 on Linux.
fcntl.fcntl(ofd, getattr(fcntl, "F_OFD_SETLK", 37), struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 0, 0, 0))
rng = open(sys.argv[2], "w")
fcntl.lockf(rng, fcntl.LOCK_EX, 10, 5)  # bytes 5..14
fl = open(sys.argv[3], "w")
fcntl.flock(fl, fcntl.LOCK_EX)
print("ready", flush=True)
sys.stdin.read()
"""


def _mine(path: Path) -> list[LockEntry]:
    st = path.stat()
    return [
        e
        for e in read_proc_locks() or ()
        if e.inode == st.st_ino and e.device == (os.major(st.st_dev), os.minor(st.st_dev))
    ]


@linux_only
def test_real_ofd_range_and_waiter_entries(procs: ProcStarter, tmp_path: Path) -> None:
    ofd, rng, fl = tmp_path / "ofd", tmp_path / "range", tmp_path / "flock"
    p = procs.popen(
        [sys.executable, "-c", HOLD_KINDS, str(ofd), str(rng), str(fl)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    procs.wait_ready(p)
    [o] = _mine(ofd)
    assert (o.kind, o.mode, o.pid, o.waiting, o.end) == ("ofd", "read", -1, False, None)
    [r] = _mine(rng)
    assert (r.kind, r.mode, r.pid, r.start, r.end) == ("posix", "write", p.pid, 5, 14)
    # A blocked flock waiter: listed with "->", as a waiter of the same lock.
    waiter = procs.popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX)",
            str(fl),
        ]
    )
    wait_for(lambda: any(e.waiting and e.pid == waiter.pid for e in _mine(fl)))
    entries = _mine(fl)
    held = [e for e in entries if not e.waiting]
    assert [e.pid for e in held] == [p.pid]
    assert {e.lock_id for e in entries if e.pid == waiter.pid} == {held[0].lock_id}
    [lk] = [h for h in held_locks() if h.inode == held[0].inode]
    assert lk.holders == (p.pid,) and waiter.pid in lk.waiters
    # The OFD lock (pid -1 in /proc/locks) is matched to its holder through fdinfo.
    [lo] = [h for h in held_locks() if h.inode == o.inode and h.device == o.device]
    assert lo.holders == (p.pid,) and lo.kind == "ofd"
    fd = os.open(ofd, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.fcntl(
                fd, getattr(fcntl, "F_OFD_SETLK", 37), struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0)
            )
    finally:
        os.close(fd)
