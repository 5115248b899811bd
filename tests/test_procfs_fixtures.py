"""Byte fixtures for the /proc parsers (as psutil's tests have), and the same cases for real: a comm with `) (`,
spaces and newlines; non-UTF-8 argv; an empty cmdline (zombie); a deleted cwd and exe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from procguard.core import procfs
from procguard.core.sanitize import safe
from procguard.core.snapshot import process_snapshot
from tests.conftest import ProcStarter, wait_for

SLEEPER = "print('ready', flush=True)\nimport time\ntime.sleep(120)"


def stat_line(comm: bytes, *, pid: int = 4242, state: bytes = b"S", fields: int = 52) -> bytes:
    """A /proc/PID/stat line as the kernel writes it: `pid (comm) state` then fields 4..`fields` (proc(5)
    numbering). Field n holds n * 10 so every value the parser picks can be checked; field 52 (exit_code) is
    the last one on Linux >= 3.5."""
    rest = [str(n * 10).encode() for n in range(4, fields + 1)]
    return b"%d (%s) %s %s\n" % (pid, comm, state, b" ".join(rest))


EXPECTED = {
    "ppid": 40,
    "pgid": 50,
    "sid": 60,
    "tty_nr": 70,
    "flags": 90,
    "utime": 140,
    "stime": 150,
    "num_threads": 200,
    "start_ticks": 220,
    "rss_pages": 240,
    "arg_start": 480,
    "exit_code": 520,
}


@pytest.mark.parametrize(
    "comm",
    [
        b"python3",
        b"a) (b",  # looks like the end of comm and the start of another
        b") S 1 2 3 (",  # looks like the fields themselves
        b"with space",
        b"new\nline",
        b"((",
        b"))",
        b"",
        b"\x1b]0;t\x07",
    ],
)
def test_parse_stat_comm_ends_at_the_last_paren(comm: bytes) -> None:
    st = procfs.parse_stat(stat_line(comm))
    assert st.pid == 4242 and st.comm == comm.decode() and st.state == "S"
    assert {k: getattr(st, k) for k in EXPECTED} == EXPECTED


def test_parse_stat_comm_that_is_not_utf8_and_a_comm_made_safe() -> None:
    st = procfs.parse_stat(stat_line(b"\xff\xfeok"))
    assert st.comm == "\ufffd\ufffdok"  # replaced, visibly: never an exception mid-scan
    assert safe(procfs.parse_stat(stat_line(b"new\nline\x1b[2J")).comm) == "new\\nline\\x1b[2J"


def test_parse_stat_old_kernel_without_exit_code_and_zombie() -> None:
    st = procfs.parse_stat(stat_line(b"old", fields=44))  # Linux < 3.5: no exit_code field
    assert st.exit_code == 0 and st.arg_start == 0 and st.start_ticks == 220
    z = procfs.parse_stat(stat_line(b"defunct) (x", state=b"Z"))
    assert (z.state, z.comm, z.exit_code) == ("Z", "defunct) (x", 520)


def test_parse_stat_rejects_garbage() -> None:
    for data in (b"", b"12 no parens S 1", b"12 (x) S 1 2"):
        with pytest.raises((ValueError, IndexError)):
            procfs.parse_stat(data)


@pytest.mark.parametrize(
    "data,argv",
    [
        (b"python3\0script.py\0--flag\0", ("python3", "script.py", "--flag")),
        (b"", ()),  # kernel thread or zombie
        (b"prog\0\0", ("prog", "")),  # an empty last argument
        (b"prog\0\0x\0", ("prog", "", "x")),
        (
            b"nginx: worker process",
            ("nginx: worker process",),
        ),  # rewritten argv (setproctitle), no NUL at all
        (b"a b\0c\nd\0\x1b[2J\0", ("a b", "c\nd", "\x1b[2J")),  # spaces, newlines, ESC: kept exactly
        (b"prog\0\xff\xfe\0caf\xc3\xa9\0", ("prog", "\udcff\udcfe", "café")),  # not UTF-8: surrogateescape
    ],
)
def test_parse_cmdline(data: bytes, argv: tuple[str, ...]) -> None:
    assert procfs.parse_cmdline(data) == argv


def test_non_utf8_argument_round_trips_and_shows_escaped() -> None:
    (arg,) = procfs.parse_cmdline(b"\xff\xfe\x1b\0")
    assert os.fsencode(arg) == b"\xff\xfe\x1b"  # the exact bytes come back (what JSON and signals need)
    assert safe(arg) == "\\xff\\xfe\\x1b"


def pg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "procguard.core.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def ps_row(pid: int) -> str:
    rows = [ln for ln in pg("ps").stdout.splitlines() if ln.split()[:1] == [str(pid)]]
    assert len(rows) == 1, rows
    return rows[0]


def ps_json(pid: int) -> dict[str, object]:
    out = pg("ps", "--json")
    assert out.returncode == 0, out.stderr
    return next(r for r in json.loads(out.stdout) if r["pid"] == pid)


def test_real_comm_with_parens_newline_and_escape(procs: ProcStarter) -> None:
    comm = b"x) (y\nz\x1b[2J"  # 13 bytes: a comm holds at most 15
    # A process may rename itself (only itself) through /proc/self/comm, as prctl(PR_SET_NAME) does.
    child = procs.python(
        """
        import sys, time
        with open("/proc/self/comm", "wb") as f:
            f.write(bytes.fromhex(sys.argv[1]))
        print("ready", flush=True)
        time.sleep(120)
    """,
        comm.hex(),
    )
    st = procfs.read_stat(child.pid)
    assert st is not None and st.comm == comm.decode() and st.ppid == os.getpid()
    assert process_snapshot()[child.pid].name == comm.decode()
    assert ps_json(child.pid)["name"] == comm.decode()


def test_real_non_utf8_argv(procs: ProcStarter) -> None:
    child = procs.popen(
        [os.fsencode(sys.executable), b"-c", SLEEPER.encode(), b"caf\xe9\xff", b"ok\x1b[2J"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    procs.wait_ready(child)
    argv = procfs.read_cmdline(child.pid)
    assert argv is not None and [os.fsencode(a) for a in argv[-2:]] == [b"caf\xe9\xff", b"ok\x1b[2J"]
    assert ps_json(child.pid)["cmdline"] == list(argv)  # --json: the exact value (JSON escapes it)
    row = ps_row(child.pid)
    assert row.endswith("caf\\xe9\\xff ok\\x1b[2J"), row  # text: escaped, and the line still decodes


def test_real_zombie_has_an_empty_cmdline(procs: ProcStarter) -> None:
    child = procs.popen([sys.executable, "-c", "pass"])
    wait_for(lambda: procfs.read_stat(child.pid) is not None and procfs.read_stat(child.pid).state == "Z")  # type: ignore[union-attr]
    try:
        assert procfs.read_cmdline(child.pid) == ()
        p = process_snapshot()[child.pid]
        assert p.cmdline == () and p.command == f"[{p.name}]"
        assert ps_json(child.pid)["cmdline"] == [] and ps_row(child.pid).endswith(f" [{p.name}]")
    finally:
        child.wait()


def test_real_deleted_cwd(procs: ProcStarter, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    child = procs.python(SLEEPER, cwd=gone)
    gone.rmdir()  # the process lives on in a folder that no longer exists
    assert procfs.read_cwd(child.pid) == f"{gone} (deleted)"  # what the kernel says: procguard keeps it
    row = ps_json(child.pid)
    assert row["cmdline"][1] == str(tmp_path / "child_0.py") and row["state"] in ("S", "R")  # type: ignore[index]
    assert str(child.pid) in ps_row(child.pid)

    # The app's details screen reads the cwd the same way and shows it as the kernel gave it.
    from procguard.core.gpu import GpuSnapshot
    from procguard.tui.backends.live import LiveBackend
    from procguard.tui.model import make_model
    from procguard.tui.screens.details import details_markup

    extra = LiveBackend().proc_extra(child.pid)
    assert extra.cwd == f"{gone} (deleted)"
    model = make_model(1, process_snapshot(), GpuSnapshot(False, "no GPU", (), (), 0.0))
    text = details_markup(model, child.pid, extra).plain
    assert f"cwd  {gone} (deleted)" in text, text


def test_real_deleted_exe(procs: ProcStarter, tmp_path: Path) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    exe = tmp_path / "my sleep"
    shutil.copy2(os.path.realpath(sleep), exe)
    child = procs.popen([str(exe), "120"], start_new_session=True)  # Popen returns once the exec is done
    assert procfs.read_exe(child.pid) == str(exe)
    exe.unlink()
    assert procfs.read_exe(child.pid) == f"{exe} (deleted)"
    assert procfs.read_cmdline(child.pid) == (str(exe), "120")  # argv is what it was started with
    assert ps_json(child.pid)["cmdline"] == [str(exe), "120"]
    assert ps_row(child.pid).endswith(f"{exe} 120")
