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
    return subprocess.run([sys.executable, "-m", "procguard.core.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


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
    child = procs.popen([sys.executable, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(60)"],
                        stdout=subprocess.PIPE, start_new_session=True)
    procs.wait_ready(child)
    rows = [ln for ln in pg("ps").stdout.splitlines() if ln.split()[:1] == [str(child.pid)]]
    assert len(rows) == 1
    assert rows[0].endswith("-c import time\\nprint('ready', flush=True)\\ntime.sleep(60)"), rows[0]


@pytest.mark.parametrize("args,needle", [
    (["term", "abc"], "invalid pid 'abc'"),
    (["term", "--", "-5"], "invalid pid '-5'"),
    (["kill", "0"], "invalid pid '0'"),
    (["term", "999999999"], "no process with pid 999999999"),
    (["pause", "--group", "999999999"], "no process or process group with id 999999999"),
    (["term", "1", "--grace", "-1"], "invalid --grace '-1'"),
    (["ps", "--user", "no_such_user_xyz"], "unknown user 'no_such_user_xyz'"),
    (["term"], "required: TARGET"),
    (["run"], "run needs a command"),
])
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
def test_group_action_spares_procguard_and_its_shell_in_that_group(procs: ProcStarter, tmp_path: Path,
                                                                  action: str) -> None:
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
    runner = procs.popen([sys.executable, "-m", "procguard.core.cli", "run", "--grace", "0.3", "--",
                          sys.executable, str(script)], stderr=subprocess.PIPE, start_new_session=True)
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
    first = procs.popen([sys.executable, "-m", "procguard.core.cli", "run", "--lock", str(lock), "--",
                         sys.executable, "-c", f"import time; open({str(started)!r}, 'w'); time.sleep(60)"],
                        start_new_session=True)
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
    child = procs.popen([sys.executable, "-c", SLEEPER, *hostile], stdout=subprocess.PIPE, start_new_session=True)
    procs.wait_ready(child)
    escaped = "\\x1b]0;pwned\\x07 \\x1b[2J \\x9b31m \\u202eevil"
    for args in (["ps"], ["ps", "--tree"], ["term", "--dry-run", str(child.pid)]):
        out = subprocess.run([sys.executable, "-m", "procguard.core.cli", *args], capture_output=True,
                             timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 0
        text = out.stdout.decode("utf-8")
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text and "\u202e" not in text
        assert any(ln.endswith(escaped) for ln in text.splitlines()), (args, text)
    rows = json.loads(pg("ps", "--json").stdout)
    assert next(r for r in rows if r["pid"] == child.pid)["cmdline"][-4:] == hostile
