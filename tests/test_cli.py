"""The `procguard` command as users run it: real processes, real exit codes, JSON on stdout."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ProcStarter, is_gone, proc_state, wait_for

SLEEPER = "print('ready', flush=True)\nimport time\ntime.sleep(60)"


def pg(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "procguard.core.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_ps_json_has_the_documented_keys(procs: ProcStarter) -> None:
    child = procs.python(SLEEPER)
    out = pg("ps", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["pid"]: r for r in json.loads(out.stdout)}
    row = rows[child.pid]
    for key in ("pid", "ppid", "pgid", "sid", "state", "name", "cmdline", "create_time", "rss", "username"):
        assert key in row
    assert isinstance(row["cmdline"], list) and row["cmdline"][0] == sys.executable


def test_ps_tree_and_user_filter(procs: ProcStarter) -> None:
    child = procs.python(SLEEPER)
    out = pg("ps", "--tree", "--json", "--user", "root")
    rows = json.loads(out.stdout)
    assert all(r["username"] == "root" for r in rows)
    me = next(r for r in rows if r["pid"] == child.pid)
    parent = next(r for r in rows if r["pid"] == me["ppid"])
    assert me["depth"] == parent["depth"] + 1
    text = pg("ps", "--tree").stdout
    assert str(child.pid) in text


def test_ps_prints_a_multi_line_command_on_one_row(procs: ProcStarter) -> None:
    child = procs.popen(
        [sys.executable, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    procs.wait_ready(child)
    rows = [ln for ln in pg("ps").stdout.splitlines() if ln.split()[:1] == [str(child.pid)]]
    assert len(rows) == 1
    assert rows[0].endswith("-c import time\\nprint('ready', flush=True)\\ntime.sleep(60)"), rows[0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["term", "abc"], "invalid pid 'abc'"),
        (["term", "--", "-5"], "invalid pid '-5'"),
        (["kill", "0"], "invalid pid '0'"),
        (["term", "999999999"], "no process with pid 999999999"),
        (["pause", "--group", "999999999"], "no process or process group with id 999999999"),
        (["term", "1", "--grace", "-1"], "invalid --grace '-1'"),
        (["ps", "--user", "no_such_user_xyz"], "unknown user 'no_such_user_xyz'"),
        (["term"], "required: TARGET"),
        (["run"], "run needs a command"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    out = pg(*args)
    assert out.returncode == 2
    assert needle in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_term_group_json_and_exit_status(procs: ProcStarter) -> None:
    code = """
import os, signal, time
kid = os.fork()
if kid == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
print(kid, flush=True)
print("ready", flush=True)
time.sleep(60)
"""
    leader = procs.python(code, ready=False)
    assert leader.stdout is not None
    kid = int(leader.stdout.readline())
    procs.track(kid)
    procs.wait_ready(leader)
    out = pg("term", str(leader.pid), "--group", "--grace", "0.3", "--json")
    assert out.returncode == 0, out.stderr
    res = {r["pid"]: r for r in json.loads(out.stdout)["results"]}
    assert res[leader.pid]["outcome"] == "exited" and res[kid]["outcome"] == "killed"
    assert res[kid]["elapsed"] >= 0.3
    assert is_gone(kid)


def test_dry_run_signals_nothing(procs: ProcStarter) -> None:
    child = procs.python(SLEEPER)
    out = pg("kill", str(child.pid), "--tree", "--dry-run", "--json")
    assert out.returncode == 0
    data = json.loads(out.stdout)
    assert data["dry_run"] and [t["pid"] for t in data["targets"]] == [child.pid]
    assert proc_state(child.pid) in ("S", "R")


def test_refused_gives_exit_1() -> None:
    out = pg("pause", "1", "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["results"][0]["outcome"] == "refused"


@pytest.mark.parametrize("action", ["kill", "term"])
def test_group_action_spares_procguard_and_its_shell_in_that_group(
    procs: ProcStarter, tmp_path: Path, action: str
) -> None:
    # A non-interactive shell keeps its background jobs in its own process group, so procguard (run from it)
    # and the shell are members of the very group they name: a killpg would take both down.
    script = tmp_path / "job.sh"
    grace = "--grace 0.5" if action == "term" else ""
    # The job ignores SIGTERM, so `term` reaches its SIGKILL phase too (where the killpg was).
    script.write_text(f"""bash -c 'trap "" TERM; exec sleep 300' &
echo $! > {tmp_path}/sleep.pid
"{sys.executable}" -m procguard.core.cli {action} --group $! {grace} --json > {tmp_path}/out.json
echo $? > {tmp_path}/rc
""")
    shell = procs.popen(["bash", str(script)], start_new_session=True)
    assert shell.wait(timeout=60) == 0  # the shell lived to the end of its script
    sleeper = int((tmp_path / "sleep.pid").read_text())
    procs.track(sleeper)
    assert (tmp_path / "rc").read_text().strip() == "1"  # procguard lived to report: some members refused
    got = {r["pid"]: r["outcome"] for r in json.loads((tmp_path / "out.json").read_text())["results"]}
    assert got[sleeper] == "killed" and got[shell.pid] == "refused", got
    wait_for(lambda: is_gone(sleeper))


def test_pause_resume_cli(procs: ProcStarter) -> None:
    child = procs.python(SLEEPER)
    assert pg("pause", str(child.pid)).returncode == 0
    assert proc_state(child.pid) == "T"
    assert pg("resume", str(child.pid)).returncode == 0
    assert proc_state(child.pid) != "T"


def test_run_passes_exit_code_through() -> None:
    assert pg("run", "--", sys.executable, "-c", "import sys; sys.exit(5)").returncode == 5
    out = pg("run", "--", sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert out.returncode == 128 + 9


def test_run_missing_program() -> None:
    out = pg("run", "--", "/no/such/program")
    assert out.returncode == 127
    assert "'/no/such/program'" in out.stderr


def test_run_sigterm_ends_whole_child_group(procs: ProcStarter, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    code = f"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
kid = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
open({str(pidfile)!r}, "w").write(f"{{os.getpid()}} {{kid.pid}}")
time.sleep(60)
"""
    script = tmp_path / "job.py"
    script.write_text(code)
    runner = procs.popen(
        [
            sys.executable,
            "-m",
            "procguard.core.cli",
            "run",
            "--grace",
            "0.3",
            "--",
            sys.executable,
            str(script),
        ],
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    text = wait_for(lambda: pidfile.exists() and pidfile.read_text().count(" ") == 1 and pidfile.read_text())
    pids = [int(x) for x in str(text).split()]
    for p in pids:
        procs.track(p)
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) == 128 + signal.SIGTERM
    assert all(is_gone(p) for p in pids)


def test_run_ends_leftovers_of_the_group_after_leader_exits(procs: ProcStarter, tmp_path: Path) -> None:
    pidfile = tmp_path / "kid"
    code = f"""
import subprocess, sys
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open({str(pidfile)!r}, "w").write(str(kid.pid))
"""
    out = pg("run", "--", sys.executable, "-c", code)
    assert out.returncode == 0
    kid = int(pidfile.read_text())
    procs.track(kid)
    assert is_gone(kid)
    assert "leftover" in out.stderr


def test_version() -> None:
    out = pg("--version")
    assert out.returncode == 0 and out.stdout.startswith("procguard ")


def test_console_script_installed() -> None:
    exe = Path(sys.executable).with_name("procguard")
    assert exe.exists()
    assert subprocess.run([str(exe), "--help"], capture_output=True).returncode == 0


def test_run_lock_held_for_child_life_and_exit_3_when_taken(procs: ProcStarter, tmp_path: Path) -> None:
    lock = tmp_path / "job.lock"
    started = tmp_path / "started"
    first = procs.popen(
        [
            sys.executable,
            "-m",
            "procguard.core.cli",
            "run",
            "--lock",
            str(lock),
            "--",
            sys.executable,
            "-c",
            f"import time; open({str(started)!r}, 'w'); time.sleep(60)",
        ],
        start_new_session=True,
    )
    wait_for(started.exists)
    out = pg("run", "--lock", str(lock), "--", sys.executable, "-c", "print('should not run')")
    assert out.returncode == 3
    assert f"is held by pid {first.pid}" in out.stderr and "should not run" not in out.stdout
    # The child shares the lock through its inherited descriptor.
    from procguard.core.locks import held_locks

    held = [h for h in held_locks() if h.path == str(lock)]
    assert held and first.pid in held[0].holders and len(held[0].holders) == 2
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 128 + signal.SIGTERM
    assert not lock.exists()  # released and unlinked
    assert pg("run", "--lock", str(lock), "--", sys.executable, "-c", "pass").returncode == 0


def test_run_lock_bad_path_is_one_line(tmp_path: Path) -> None:
    out = pg("run", "--lock", str(tmp_path), "--", "true")
    assert out.returncode == 2
    assert str(tmp_path) in out.stderr and out.stderr.count("\n") == 1


def test_text_output_escapes_terminal_controls_and_json_keeps_them(procs: ProcStarter) -> None:
    """argv with a title OSC, a clear-screen CSI, a C1 CSI and a bidi override: text output shows them escaped
    (no raw control byte at all), --json keeps the exact value."""
    hostile = ["\x1b]0;pwned\x07", "\x1b[2J", "\x9b31m", "\u202eevil"]
    child = procs.popen(
        [sys.executable, "-c", SLEEPER, *hostile], stdout=subprocess.PIPE, start_new_session=True
    )
    procs.wait_ready(child)
    escaped = "\\x1b]0;pwned\\x07 \\x1b[2J \\x9b31m \\u202eevil"
    for args in (["ps"], ["ps", "--tree"], ["term", "--dry-run", str(child.pid)]):
        out = subprocess.run(
            [sys.executable, "-m", "procguard.core.cli", *args],
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 0
        text = out.stdout.decode("utf-8")
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text and "\u202e" not in text
        assert any(ln.endswith(escaped) for ln in text.splitlines()), (args, text)
    rows = json.loads(pg("ps", "--json").stdout)
    assert next(r for r in rows if r["pid"] == child.pid)["cmdline"][-4:] == hostile


# ---------------------------------------------------------------------------------------------- issue 17, item 8

LONG = "x" * 300  # an argument that makes any row wider than a terminal


def pg_tty(*args: str, columns: int, env_columns: bool = False, timeout: float = 60) -> list[str]:
    """Run procguard with stdout on a real pseudo-terminal `columns` wide (or with COLUMNS set, and the terminal
    wider); the lines it drew, without the terminal's carriage returns."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 300 if env_columns else columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if env_columns:
        env["COLUMNS"] = str(columns)
    p = subprocess.Popen(
        [sys.executable, "-m", "procguard.core.cli", *args],
        stdout=slave,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            if not select.select([master], [], [], timeout)[0]:
                raise AssertionError(f"procguard {args} wrote nothing for {timeout} s")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        p.wait(timeout=timeout)
    assert p.returncode == 0
    return b"".join(chunks).decode().replace("\r\n", "\n").splitlines()


def _long_child(procs: ProcStarter) -> subprocess.Popen[bytes]:
    child = procs.popen([sys.executable, "-c", SLEEPER, LONG], stdout=subprocess.PIPE, start_new_session=True)
    procs.wait_ready(child)
    return child


@pytest.mark.parametrize("tree", [False, True])
def test_ps_cuts_rows_to_the_terminal_width(procs: ProcStarter, tree: bool) -> None:
    child = _long_child(procs)
    extra = ["--tree"] if tree else []
    for columns, env_columns in ((60, False), (72, True)):  # the terminal's own width, then COLUMNS
        lines = pg_tty("ps", *extra, columns=columns, env_columns=env_columns)
        assert lines and all(len(ln) <= columns for ln in lines), [ln for ln in lines if len(ln) > columns]
        [row] = [ln for ln in lines if ln.split()[:1] == [str(child.pid)]]
        assert len(row) == columns and row.endswith("…") and LONG not in row
    # --wide: whole rows, on a terminal too; a pipe always gets whole rows.
    [row] = [ln for ln in pg_tty("ps", "--wide", *extra, columns=60) if ln.split()[:1] == [str(child.pid)]]
    assert row.endswith(LONG)
    [row] = [ln for ln in pg("ps", *extra).stdout.splitlines() if ln.split()[:1] == [str(child.pid)]]
    assert row.endswith(LONG)


def test_kernel_threads_hidden_unless_asked() -> None:
    rows = json.loads(pg("ps", "--json").stdout)
    assert 2 not in {r["pid"] for r in rows}  # kthreadd and its kernel threads
    assert not any(r["ppid"] == 2 for r in rows)
    rows = json.loads(pg("ps", "--json", "--kernel").stdout)
    assert 2 in {r["pid"] for r in rows}
    assert 2 not in {int(ln.split()[0]) for ln in pg("ps").stdout.splitlines()[1:]}
    assert any(ln.split()[0] == "2" for ln in pg("ps", "--tree", "--kernel").stdout.splitlines()[1:])


def test_sort_by_age_starts_with_the_newest(procs: ProcStarter) -> None:
    older = procs.python(SLEEPER)
    newer = procs.python(SLEEPER)
    rows = json.loads(pg("ps", "--json", "--sort", "age").stdout)
    ages = [r["create_time"] for r in rows]
    assert ages == sorted(ages, reverse=True)
    pids = [r["pid"] for r in rows]
    assert pids.index(newer.pid) < pids.index(older.pid)
    text = [int(ln.split()[0]) for ln in pg("ps", "--sort", "age").stdout.splitlines()[1:]]
    assert text.index(newer.pid) < text.index(older.pid)
    # In a tree, siblings: the newest first.
    tree = [int(ln.split()[0]) for ln in pg("ps", "--tree", "--sort", "age").stdout.splitlines()[1:]]
    assert tree.index(newer.pid) < tree.index(older.pid)


def test_dry_run_of_a_refused_pid_says_so_and_exits_1(procs: ProcStarter) -> None:
    out = pg("term", "--dry-run", "1")
    assert out.returncode == 1
    assert out.stdout.splitlines()[0] == "would term 1 process:"
    assert "[would be refused: pid 1 is init" in out.stdout and "1 process would be refused" in out.stderr
    out = pg("kill", "--dry-run", "--json", "1")
    assert out.returncode == 1 and json.loads(out.stdout)["targets"][0]["protected"]
    child = procs.python(SLEEPER)
    out = pg("term", "--dry-run", str(child.pid))
    assert out.returncode == 0 and out.stdout.splitlines()[0] == "would term 1 process:"
    assert proc_state(child.pid) in ("S", "R")


def test_counts_are_plain_words(procs: ProcStarter) -> None:
    code = """
import os, time
if os.fork() == 0:
    time.sleep(60)
print("ready", flush=True)
time.sleep(60)
"""
    leader = procs.python(code)
    out = pg("pause", "--group", "--dry-run", str(leader.pid))
    assert out.stdout.splitlines()[0] == "would pause 2 processes:"
    root = Path(__file__).resolve().parent.parent / "core" / "cli"
    for name in ("ps.py", "signals.py", "gpu.py", "locks.py", "_args.py"):
        assert "(s)" not in (root / name).read_text(), name


LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
if os.fork() == 0:  # the child inherits the descriptor: it holds the lock too
    time.sleep(60)
    os._exit(0)
print("ready", flush=True)
time.sleep(60)
"""


def test_locks_show_each_holders_full_command_one_line_each(procs: ProcStarter, tmp_path: Path) -> None:
    lock = tmp_path / "job.lock"
    script = tmp_path / "holder.py"
    script.write_text(LOCK_HOLDER)
    holder = procs.popen(
        [sys.executable, str(script), str(lock), "--tag", LONG],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    procs.wait_ready(holder)
    out = pg("locks", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    rows = [ln for ln in out.stdout.splitlines()[1:] if str(lock) in ln]
    assert len(rows) == 2, out.stdout  # the holder and the child that inherited its descriptor
    assert rows[0].split()[0] == str(holder.pid) and rows[0].endswith(f"--tag {LONG}")
    assert "[shares the lock: an inherited descriptor]" in rows[1] and f"--tag {LONG}" in rows[1]
    assert out.stderr.strip() == "1 lock held"
    lines = pg_tty("locks", "--dir", str(tmp_path), columns=80)
    assert len([ln for ln in lines if str(holder.pid) in ln.split()[:1]]) == 1
    assert all(len(ln) <= 80 for ln in lines) and not any(LONG in ln for ln in lines)
