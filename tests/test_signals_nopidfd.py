"""The pidfd-less path of signals (kernels or sandboxes without pidfd_open): members pinned, signalled and
awaited by start-time checks on /proc alone. `signals.USE_PIDFD = False` is its documented switch.

The pid-reuse tests reuse a pid for real: inside a private pid namespace (nobody else forks there) a process
is reaped and the next pid is set through /proc/sys/kernel/ns_last_pid, so a new process gets its number.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from procguard.core import signals
from procguard.core.signals import Outcome, Target
from tests.conftest import ProcStarter, is_gone, needs_root, proc_state, wait_for
from tests.test_signals import outcomes, start_group


@pytest.fixture
def no_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signals, "USE_PIDFD", False)


def open_pidfds() -> int:
    """How many pidfds this process holds open right now."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]"
        except OSError:
            continue  # the fd listing's own descriptor, closed meanwhile
    return n


@pytest.mark.parametrize("use_pidfd", [True, False], ids=["pidfd", "no-pidfd"])
def test_escalation_kills_sigterm_ignoring_children(
    procs: ProcStarter, monkeypatch: pytest.MonkeyPatch, use_pidfd: bool
) -> None:
    if use_pidfd and not signals.HAS_PIDFD:
        pytest.skip("this kernel or Python has no pidfds")
    monkeypatch.setattr(signals, "USE_PIDFD", use_pidfd)
    leader, kids = start_group(procs, 2, ignore_children=True)
    held: list[int] = []
    # Counted while the members are pinned: the switch is what decides whether pidfds are used.
    res = signals.terminate(
        Target.group(leader.pid),
        grace=0.3,
        on_progress=lambda pr: held.append(open_pidfds()) if pr.phase == "sigterm" else None,
    )
    assert (held[0] >= 3) if use_pidfd else (held == [0])
    got = outcomes(res)
    assert got[leader.pid] == Outcome.EXITED
    assert {got[k] for k in kids} == {Outcome.KILLED}
    assert all(is_gone(pid) for pid in [leader.pid, *kids])


def test_tree_is_frozen_and_killed_without_pidfds(procs: ProcStarter, no_pidfd: None) -> None:
    leader, kids = start_group(procs, 2, ignore_children=True, ignore_leader=True)
    res = signals.terminate(Target.tree(leader.pid), grace=0.2)
    assert outcomes(res) == {pid: Outcome.KILLED for pid in [leader.pid, *kids]}
    assert all(is_gone(pid) for pid in [leader.pid, *kids])


def test_exit_inside_the_grace_is_seen_without_pidfds(procs: ProcStarter, no_pidfd: None) -> None:
    leader, kids = start_group(procs, 3)
    res = signals.terminate(Target.group(leader.pid), grace=30)
    assert outcomes(res) == {pid: Outcome.EXITED for pid in [leader.pid, *kids]}
    assert all(is_gone(pid) for pid in [leader.pid, *kids])


def test_pause_and_resume_without_pidfds(procs: ProcStarter, no_pidfd: None) -> None:
    leader, kids = start_group(procs, 2)
    assert {r.outcome for r in signals.pause(Target.group(leader.pid))} == {Outcome.PAUSED}
    assert all(proc_state(pid) == "T" for pid in [leader.pid, *kids])
    assert {r.outcome for r in signals.resume(Target.group(leader.pid))} == {Outcome.RESUMED}
    wait_for(lambda: all(proc_state(pid) in ("S", "R") for pid in [leader.pid, *kids]))


# Runs as pid 1 of a fresh pid namespace; prints one JSON line. argv: scenario (before | during), use_pidfd.
REUSE = """
import json, os, signal, subprocess, sys, time
from procguard.core import procfs, signals
from procguard.core.snapshot import process_snapshot

scenario, signals.USE_PIDFD = sys.argv[1], sys.argv[2] == "1"

def set_next_pid(pid):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))

def reuse(victim):
    # A new process with the victim's pid, started at least two clock ticks later (the identity is pid + start
    # ticks: within one tick the two could not be told apart, by design).
    ticks = procfs.read_stat(victim.pid).start_ticks
    victim.kill()
    victim.wait()  # reaped: the pid is free
    while procfs.now_ticks() <= ticks + 2:
        time.sleep(0.005)
    set_next_pid(victim.pid)
    newcomer = subprocess.Popen(["sleep", "60"])
    assert newcomer.pid == victim.pid, (newcomer.pid, victim.pid)
    return newcomer

set_next_pid(100)  # clear of pid 2, which protect refuses as kthreadd's
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited across fork and exec: the victim ignores SIGTERM
victim = subprocess.Popen(["sleep", "60"])
signal.signal(signal.SIGTERM, signal.SIG_DFL)
got = {}
if scenario == "before":
    snap = process_snapshot()
    newcomer = reuse(victim)
    res = signals.terminate(victim.pid, grace=0.2, snapshot=snap)
else:
    def on_progress(pr):
        if pr.phase == "sigterm":
            got["newcomer"] = reuse(victim)
    res = signals.terminate(victim.pid, grace=0.5, on_progress=on_progress)
    newcomer = got["newcomer"]
st = procfs.read_stat(newcomer.pid)
print(json.dumps({"pid": victim.pid, "newcomer": newcomer.pid, "results": [r.to_json() for r in res],
                  "newcomer_state": st.state if st else None}), flush=True)
newcomer.kill()
newcomer.wait()
"""


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    out = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "true"],
        capture_output=True,
        timeout=30,
    )
    return out.returncode == 0


@needs_root
@pytest.mark.parametrize("use_pidfd", [True, False], ids=["pidfd", "no-pidfd"])
@pytest.mark.parametrize("scenario", ["before", "during"])
def test_a_reused_pid_is_never_signalled(
    procs: ProcStarter, tmp_path: Path, scenario: str, use_pidfd: bool
) -> None:
    """before: the pid was reused between the snapshot and the call. during: the member was reaped and its pid
    reused right after the SIGTERM, while the grace runs; the escalation must not SIGKILL the newcomer."""
    if use_pidfd and not signals.HAS_PIDFD:
        pytest.skip("this kernel or Python has no pidfds")
    if not _unshare_works():
        pytest.skip("no private pid namespace here (unshare --pid --mount-proc failed)")
    script = tmp_path / "reuse.py"
    script.write_text(REUSE)
    p = procs.popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            sys.executable,
            str(script),
            scenario,
            "1" if use_pidfd else "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err.decode()
    got = json.loads(out)
    assert got["newcomer"] == got["pid"]  # the pid really was reused
    # Not signalled: a SIGTERM or SIGKILL would have ended it (D: still exec'ing on a busy machine).
    assert got["newcomer_state"] in ("S", "R", "D")
    [r] = got["results"]
    if scenario == "before":
        assert r["outcome"] == Outcome.ALREADY_GONE.value
        assert "pid reused" in r["reason"]
    else:
        assert r["outcome"] == Outcome.EXITED.value  # our member ended (we killed it) inside the grace
