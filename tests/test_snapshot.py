"""The process snapshot and the pure views over it, against real processes and the real ps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from procguard.core import procfs, snapshot, views
from procguard.core.snapshot import Snapshotter, process_snapshot
from tests.conftest import NOBODY, ProcStarter, proc_state, wait_for

BUSY = """
import os, time
print("ready", flush=True)
while True:
    pass
"""


def test_snapshot_agrees_with_ps(procs: ProcStarter) -> None:
    child = procs.python("print('ready', flush=True)\nimport time\ntime.sleep(60)", "--flag", "x y")
    # Asleep first: just after 'ready' it can still be running (R) for the snapshot and asleep (S) for ps.
    wait_for(lambda: proc_state(child.pid) == "S")
    snap = process_snapshot()
    out = subprocess.run(
        ["ps", "-o", "pid=,ppid=,pgid=,sid=,stat=,user=", "-p", str(child.pid)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    p = snap[child.pid]
    assert [p.pid, p.ppid, p.pgid, p.sid] == [int(x) for x in out[:4]]
    assert p.state == out[4][0]
    assert p.username == out[5]
    assert p.cmdline[-2:] == ("--flag", "x y")
    assert p.python is not None and p.python.kind == "file" and p.python.args == ("--flag", "x y")
    assert p.rss > 0
    assert abs(p.create_time - os.stat(f"/proc/{child.pid}").st_mtime) < 60  # same boot-relative clock


def test_shebang_script_is_python_by_cmdline_not_name(procs: ProcStarter, tmp_path: Path) -> None:
    script = tmp_path / "a_rather_long_script_name.py"
    script.write_text(f"#!{sys.executable}\nimport time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    script.chmod(0o755)
    p = procs.popen([str(script)], stdout=subprocess.PIPE, start_new_session=True)
    procs.wait_ready(p)
    proc = process_snapshot()[p.pid]
    assert proc.name == "a_rather_long_s"  # comm is the script's name cut to 15 characters
    assert proc.python is not None and proc.python.target == str(script)


def test_cpu_percent_from_previous_snapshot(procs: ProcStarter) -> None:
    busy = procs.python(BUSY)
    snapper = Snapshotter()
    first = snapper.take()
    assert first[busy.pid].cpu_percent == 0.0
    wait_for(lambda: snapper.take()[busy.pid].cpu_percent > 20, timeout=10, interval=0.3)


def test_views_tree_group_session(procs: ProcStarter) -> None:
    code = """
import os, time, sys
r, w = os.pipe()
kid = os.fork()
if kid == 0:
    grandkid = os.fork()
    if grandkid == 0:
        time.sleep(60)
    os.write(w, str(grandkid).encode() + b"\\n")
    time.sleep(60)
    sys.exit()
print(os.read(r, 64).decode().strip(), flush=True)
print("ready", flush=True)
time.sleep(60)
"""
    leader = procs.python(code, ready=False)
    assert leader.stdout is not None
    grandkid = int(leader.stdout.readline())
    procs.track(grandkid)
    procs.wait_ready(leader)
    snap = process_snapshot()
    kid = snap[grandkid].ppid
    assert [p.pid for p in views.children(snap, leader.pid)] == [kid]
    assert {p.pid for p in views.descendants(snap, leader.pid)} == {kid, grandkid}
    assert [p.pid for p in views.tree(snap, leader.pid)][0] == leader.pid
    assert {p.pid for p in views.group_members(snap, leader.pid)} == {leader.pid, kid, grandkid}
    assert {p.pid for p in views.session_members(snap, leader.pid)} == {leader.pid, kid, grandkid}
    assert views.ancestors(snap, grandkid)[0].pid == kid
    assert os.getpid() in {p.pid for p in views.ancestors(snap, leader.pid)}


def test_diff_sees_added_removed_changed(procs: ProcStarter) -> None:
    a = procs.python("print('ready', flush=True)\nimport time\ntime.sleep(60)")
    snapper = Snapshotter()
    before = snapper.take()
    b = procs.python("print('ready', flush=True)\nimport time\ntime.sleep(60)")
    os.kill(a.pid, 19)  # SIGSTOP: a state change
    wait_for(lambda: snapper.take()[a.pid].state == "T")
    a_stopped = snapper.take()
    d = views.diff(before, a_stopped)
    assert b.pid in d.added and a.pid in d.changed
    b.kill()
    b.wait()
    after = snapper.take()
    assert b.pid in views.diff(a_stopped, after).removed


def test_snapshot_never_raises_and_skips_vanishing_processes(procs: ProcStarter) -> None:
    # Processes that come and go while we scan: the scan must just keep going.
    churn = procs.python("""
import subprocess, sys
print("ready", flush=True)
while True:
    subprocess.run([sys.executable, "-c", "pass"])
""")
    snapper = Snapshotter()
    for _ in range(30):
        snap = snapper.take()
        assert churn.pid in snap
        assert all(p.pid > 0 for p in snap)


def test_zombie_keeps_what_was_read(procs: ProcStarter) -> None:
    p = procs.python("import time\nprint('ready', flush=True)\ntime.sleep(0.3)")
    snapper = Snapshotter()
    cmd = snapper.take()[p.pid].cmdline
    wait_for(lambda: snapper.take()[p.pid].state == "Z")
    z = snapper.take()[p.pid]
    assert z.cmdline == cmd  # a zombie's /proc cmdline is empty; the earlier read is kept


def test_dead_and_stopped_states(procs: ProcStarter) -> None:
    running = procs.python("print('ready', flush=True)\nimport time\ntime.sleep(60)")
    stopped = procs.python("print('ready', flush=True)\nimport time\ntime.sleep(60)")
    dead = procs.python("print('ready', flush=True)")  # exits at once; nobody reaps it yet: a zombie
    os.kill(stopped.pid, signal.SIGSTOP)
    snapper = Snapshotter()
    wait_for(lambda: snapper.take()[stopped.pid].state == "T" and snapper.take()[dead.pid].state == "Z")
    snap = snapper.take()
    assert (snap[running.pid].dead, snap[running.pid].stopped) == (False, False)
    assert (snap[stopped.pid].dead, snap[stopped.pid].stopped) == (False, True)
    assert (snap[dead.pid].dead, snap[dead.pid].stopped) == (True, False)
    # The raw /proc reader answers the same questions with the same definitions.
    for pid in (running.pid, stopped.pid, dead.pid):
        st = procfs.read_stat(pid)
        assert st is not None and (st.dead, st.stopped) == (snap[pid].dead, snap[pid].stopped)
    assert snapshot.DEAD_STATES is procfs.DEAD_STATES and snapshot.STOPPED_STATES is procfs.STOPPED_STATES


def test_descendant_pids_of_several_roots() -> None:
    # Pure: 1 -> 2 -> 3 -> 4, 1 -> 5, and a loop 6 <-> 7. A root below another root is not reported.
    cmap = {1: [2, 5], 2: [3], 3: [4], 6: [7], 7: [6]}
    assert views.descendant_pids(cmap, [1]) == [2, 5, 3, 4]  # breadth first
    assert sorted(views.descendant_pids(cmap, [1, 3])) == [2, 4, 5]
    assert views.descendant_pids(cmap, [6]) == [7]
    assert views.descendant_pids(cmap, [9]) == []


# Execs into another Python program (same comm) on SIGUSR1; the new program says "ready" on the same stdout.
EXECS_ON_USR1 = """
import os, signal, sys, time
def go(*_):
    os.execv(sys.executable, [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)",
                              "second-program"])
signal.signal(signal.SIGUSR1, go)
print("ready", flush=True)
while True:
    time.sleep(60)
"""


def test_exec_into_a_program_with_the_same_comm_is_seen(procs: ProcStarter) -> None:
    p = procs.python(EXECS_ON_USR1, name="exec_same_comm")
    snapper = Snapshotter()
    before = snapper.take()[p.pid]
    assert before.cmdline[1].endswith(".py") and before.python is not None and before.python.kind == "file"
    os.kill(p.pid, signal.SIGUSR1)
    procs.wait_ready(p)
    after = snapper.take()[p.pid]
    assert after.name == before.name and after.start_ticks == before.start_ticks  # same comm, same process
    assert after.cmdline[-1] == "second-program" and after.python is not None and after.python.kind == "code"


HIDDEN_SNAPSHOTS = """
import sys
from procguard.core import procfs
from procguard.core.snapshot import RECHECK_HIDDEN_EVERY, Snapshotter
pid = int(sys.argv[1])
snapper = Snapshotter()
st = procfs.read_stat(pid)
print(st.arg_start, snapper.take()[pid].cmdline[-1], flush=True)
sys.stdin.readline()
for _ in range(RECHECK_HIDDEN_EVERY):
    cmd = snapper.take()[pid].cmdline
print(cmd[-1], flush=True)
"""


def test_exec_is_seen_in_another_users_process_too(procs: ProcStarter) -> None:
    # As nobody, root's process hides its argv address: its command line is read again every few snapshots.
    if os.geteuid() != 0:
        pytest.skip("needs root (to look at another user's process as nobody)")
    p = procs.python(EXECS_ON_USR1, "first-program", name="exec_hidden")
    viewer = procs.popen(
        [*NOBODY, sys.executable, "-c", HIDDEN_SNAPSHOTS, str(p.pid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert viewer.stdin is not None and viewer.stdout is not None
    assert viewer.stdout.readline().split() == ["0", "first-program"]  # hidden, and the first program seen
    os.kill(p.pid, signal.SIGUSR1)
    procs.wait_ready(p)
    viewer.stdin.write("go\n")
    viewer.stdin.flush()
    assert viewer.stdout.readline().strip() == "second-program"
    assert viewer.wait(timeout=60) == 0
