"""terminate / kill / pause / resume against real process groups and trees the tests start."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procguard.core import procfs, signals
from procguard.core.signals import Outcome, Target
from procguard.core.snapshot import process_snapshot
from tests.conftest import ProcStarter, is_gone, proc_state, wait_for

# A leader in its own session that starts N children; children ignore SIGTERM when IGNORE is set. They get
# SIG_IGN by inheriting it across fork, so it is in place before the leader reports them: set after the fork,
# a child not yet scheduled could still die of the SIGTERM (then EXITED, not KILLED).
GROUP = """
import os, signal, sys, time
n = int(sys.argv[1]); ignore_children = sys.argv[2] == "1"; ignore_leader = sys.argv[3] == "1"
if ignore_children:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
kids = []
for i in range(n):
    pid = os.fork()
    if pid == 0:
        while True:
            time.sleep(60)
    kids.append(pid)
signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_leader else signal.SIG_DFL)
print(" ".join(map(str, kids)), flush=True)
print("ready", flush=True)
while True:
    time.sleep(60)
"""


def start_group(
    procs: ProcStarter, n: int, ignore_children: bool = False, ignore_leader: bool = False
) -> tuple[subprocess.Popen[bytes], list[int]]:
    p = procs.python(
        GROUP, str(n), "1" if ignore_children else "0", "1" if ignore_leader else "0", ready=False
    )
    assert p.stdout is not None
    kids = [int(x) for x in p.stdout.readline().split()]
    for k in kids:
        procs.track(k)
    procs.wait_ready(p)
    assert all(ignores_sigterm(pid) == ignore_children for pid in kids)
    assert ignores_sigterm(p.pid) == ignore_leader
    return p, kids


def ignores_sigterm(pid: int) -> bool:
    """SIGTERM is in the process's ignored set (/proc/PID/status SigIgn)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    raise AssertionError(f"pid {pid}: no SigIgn line in /proc/{pid}/status")


def outcomes(results: list[signals.SignalResult]) -> dict[int, Outcome]:
    return {r.pid: r.outcome for r in results}


def test_terminate_group_that_exits_on_sigterm(procs: ProcStarter) -> None:
    leader, kids = start_group(procs, 5)
    res = signals.terminate(Target.group(leader.pid), grace=10)
    assert outcomes(res) == {pid: Outcome.EXITED for pid in [leader.pid, *kids]}
    assert all(is_gone(pid) for pid in [leader.pid, *kids])
    # Nothing waited for the grace: every exit was seen well inside it.
    assert max(r.elapsed for r in res) < 5


def test_sigterm_ignoring_member_is_killed_after_grace(procs: ProcStarter) -> None:
    leader, kids = start_group(procs, 3, ignore_children=True)
    res = signals.terminate(Target.group(leader.pid), grace=0.5)
    got = outcomes(res)
    assert got[leader.pid] == Outcome.EXITED
    assert all(got[k] == Outcome.KILLED for k in kids)
    assert all(r.elapsed >= 0.5 for r in res if r.outcome == Outcome.KILLED)
    assert all(is_gone(pid) for pid in kids)


def test_leader_exits_first_children_ignore_sigterm(procs: ProcStarter) -> None:
    """The escalation covers the whole captured set even when the leader is gone."""
    leader, kids = start_group(procs, 2, ignore_children=True)
    res = signals.terminate(Target.group(leader.pid), grace=0.3)
    got = outcomes(res)
    assert got[leader.pid] == Outcome.EXITED
    assert {got[k] for k in kids} == {Outcome.KILLED}
    assert all(is_gone(k) for k in kids)


def test_tree_target_kills_descendants_after_leader_exits(procs: ProcStarter) -> None:
    leader, kids = start_group(procs, 2, ignore_children=True)
    res = signals.terminate(Target.tree(leader.pid), grace=0.3)
    got = outcomes(res)
    assert set(got) == {leader.pid, *kids}
    assert all(is_gone(k) for k in kids)


def test_stopped_member_is_continued_so_sigterm_acts(procs: ProcStarter) -> None:
    leader, kids = start_group(procs, 2)
    os.kill(kids[0], signal.SIGSTOP)
    wait_for(lambda: proc_state(kids[0]) == "T")
    res = signals.terminate(Target.group(leader.pid), grace=10)
    got = outcomes(res)
    assert got[kids[0]] == Outcome.EXITED  # not KILLED: SIGCONT let the pending SIGTERM act
    assert is_gone(kids[0])


FORKS_ON_TERM = """
import os, signal, sys, time
out = sys.argv[1]
def on_term(*_):
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(60)
    with open(out, "w") as f:
        f.write(str(pid))
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(60)
"""


def test_child_forked_during_grace_is_killed(procs: ProcStarter, tmp_path: Path) -> None:
    out = tmp_path / "late_child"
    leader = procs.python(FORKS_ON_TERM, str(out))
    res = signals.terminate(Target.group(leader.pid), grace=0.5)
    late = int(wait_for(lambda: out.exists() and out.read_text()))  # type: ignore[arg-type]
    procs.track(late)
    got = outcomes(res)
    assert got[leader.pid] == Outcome.KILLED
    assert got.get(late) == Outcome.KILLED
    assert is_gone(late)


def test_zombie_wait_status_tells_killed_from_exited(procs: ProcStarter) -> None:
    # The kill phase reports newcomers that the killpg already ended from this field.
    killed = procs.python("import time\nprint('ready', flush=True)\ntime.sleep(60)")
    exited = procs.popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    os.kill(killed.pid, signal.SIGKILL)
    wait_for(lambda: proc_state(killed.pid) == "Z" and proc_state(exited.pid) == "Z")
    k, e = procfs.read_stat(killed.pid), procfs.read_stat(exited.pid)
    assert k is not None and k.exit_code & 0x7F == signal.SIGKILL
    assert e is not None and e.exit_code == 3 << 8


def test_tree_child_forked_during_grace_is_killed(procs: ProcStarter, tmp_path: Path) -> None:
    out = tmp_path / "late_child"
    leader = procs.python(FORKS_ON_TERM, str(out))
    res = signals.terminate(Target.tree(leader.pid), grace=0.5)
    late = int(out.read_text())
    procs.track(late)
    assert outcomes(res).get(late) == Outcome.KILLED
    assert is_gone(late)


FORKING_TREE = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
# Keeps forking children that each fork one grandchild: a tree that grows while we scan it (linearly, and
# at most 400 processes, so a failure can't turn into a fork bomb).
for _ in range(200):
    if os.fork() == 0:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        time.sleep(60)
        os._exit(0)
    time.sleep(0.01)
time.sleep(60)
"""


def test_forking_tree_is_frozen_then_killed(procs: ProcStarter) -> None:
    leader = procs.python(FORKING_TREE)
    try:
        wait_for(lambda: len([p for p in process_snapshot() if p.pgid == leader.pid]) >= 4)
        res = signals.kill(Target.tree(leader.pid))
        assert all(r.outcome in (Outcome.KILLED, Outcome.ALREADY_GONE) for r in res)
        assert is_gone(leader.pid)
        killed = [r.pid for r in res if r.outcome == Outcome.KILLED]
        assert len(killed) >= 4
        assert all(is_gone(pid) for pid in killed)
    finally:
        # Orphans of the tree, if any escaped, are in the leader's group; kill them by group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)


def test_pid_vanished_between_snapshot_and_signal(procs: ProcStarter) -> None:
    p = procs.python("print('ready', flush=True)\nimport time\ntime.sleep(60)")
    snap = process_snapshot()
    p.kill()
    p.wait()
    res = signals.terminate(p.pid, grace=1, snapshot=snap)
    assert [r.outcome for r in res] == [Outcome.ALREADY_GONE]


def test_reused_pid_is_never_signalled(procs: ProcStarter) -> None:
    """A snapshot row whose start time no longer matches the live pid is treated as gone."""
    p = procs.python("print('ready', flush=True)\nimport time\ntime.sleep(60)")
    snap = process_snapshot()
    fake = snap[p.pid]._replace(start_ticks=snap[p.pid].start_ticks - 1)
    from types import MappingProxyType

    from procguard.core.snapshot import Snapshot

    forged = Snapshot(MappingProxyType({**snap.procs, p.pid: fake}))
    res = signals.terminate(p.pid, grace=1, snapshot=forged)
    assert [r.outcome for r in res] == [Outcome.ALREADY_GONE]
    assert proc_state(p.pid) not in (None, "Z")  # the live process was not touched


def test_zombie_counts_as_dead(procs: ProcStarter) -> None:
    p = procs.python("print('ready', flush=True)")
    wait_for(lambda: proc_state(p.pid) == "Z")
    res = signals.terminate(p.pid, grace=1)
    assert [r.outcome for r in res] == [Outcome.ALREADY_GONE]


@pytest.mark.parametrize("pid", [0, 1])
def test_protected_pids_are_refused(pid: int) -> None:
    res = signals.terminate(pid, grace=1)
    assert [r.outcome for r in res] == [Outcome.REFUSED]
    assert res[0].reason


def test_self_and_ancestors_are_refused() -> None:
    res = signals.kill([os.getpid(), os.getppid()])
    assert {r.outcome for r in res} == {Outcome.REFUSED}


def test_kernel_thread_is_refused() -> None:
    snap = process_snapshot()
    kthread = next(p for p in snap if p.kernel_thread and p.pid > 2)
    res = signals.pause(kthread.pid, snapshot=snap)
    assert res[0].outcome == Outcome.REFUSED
    assert "kernel thread" in (res[0].reason or "")


def test_nonexistent_pid_resolves_to_nothing() -> None:
    snap = process_snapshot()
    missing = max(snap.procs) + 100000
    assert signals.resolve(missing, snap) == []
    assert signals.terminate(missing, grace=1, snapshot=snap) == []


def test_pause_and_resume_group(procs: ProcStarter) -> None:
    leader, kids = start_group(procs, 2)
    res = signals.pause(Target.group(leader.pid))
    assert {r.outcome for r in res} == {Outcome.PAUSED}
    assert all(proc_state(pid) == "T" for pid in [leader.pid, *kids])
    res = signals.resume(Target.group(leader.pid))
    assert {r.outcome for r in res} == {Outcome.RESUMED}
    assert all(proc_state(pid) != "T" for pid in [leader.pid, *kids])


def test_dry_run_resolves_without_signalling(procs: ProcStarter) -> None:
    leader, kids = start_group(procs, 2)
    members = signals.resolve(Target.group(leader.pid))
    assert sorted(m.pid for m in members) == sorted([leader.pid, *kids])
    assert all(m.protected is None for m in members)
    assert all(proc_state(pid) in ("S", "R") for pid in [leader.pid, *kids])


def test_several_targets_at_once(procs: ProcStarter) -> None:
    a = procs.python("print('ready', flush=True)\nimport time\ntime.sleep(60)")
    b = procs.python("print('ready', flush=True)\nimport time\ntime.sleep(60)")
    res = signals.terminate([a.pid, Target.tree(b.pid)], grace=5)
    assert outcomes(res) == {a.pid: Outcome.EXITED, b.pid: Outcome.EXITED}


def test_progress_is_reported(procs: ProcStarter) -> None:
    leader, kids = start_group(procs, 1, ignore_children=True)
    phases: list[str] = []
    signals.terminate(Target.group(leader.pid), grace=0.6, on_progress=lambda pr: phases.append(pr.phase))
    assert phases[0] == "sigterm"
    assert "waiting" in phases and "sigkill" in phases and phases[-1] == "done"


def test_permission_denied_as_unprivileged_user(procs: ProcStarter) -> None:
    victim = procs.python("print('ready', flush=True)\nimport time\ntime.sleep(60)")
    cmd = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        sys.executable,
        "-m",
        "procguard.core.cli",
        "term",
        str(victim.pid),
        "--json",
        "--grace",
        "0.2",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    import json

    results = json.loads(out.stdout)["results"]
    assert [r["outcome"] for r in results] == ["denied"]
    assert proc_state(victim.pid) in ("S", "R")


def test_summary_line() -> None:
    mk = lambda pid, o, e: signals.SignalResult(pid, o, e, None, "x", (), "u")  # noqa: E731
    line = signals.summarize(
        [
            mk(1, Outcome.EXITED, 0.1),
            mk(2, Outcome.EXITED, 0.1),
            mk(3, Outcome.EXITED, 0.2),
            mk(4, Outcome.KILLED, 5.0),
        ]
    )
    assert line == "4 ended: 3 exited on SIGTERM, 1 killed after 5.0 s"


def test_a_reused_pgid_is_not_the_captured_group() -> None:
    # Pure: a pgid that now leads a process born after the capture was reused, so no newcomer in it is ours
    # (producing a real pgid reuse would need the pid counter to wrap around).
    rows = {
        500: signals._Row(500, 1, 500, start_ticks=900, state="S"),  # leads group 500, born after capture
        600: signals._Row(600, 1, 600, start_ticks=100, state="S"),  # the captured leader of group 600
    }
    targets = [Target.group(500), Target.group(600), Target.group(700)]
    assert signals._captured_groups(targets, rows, known={600}, capture_ticks=800) == {600, 700}
    # Known (captured and pinned) leaders are the group itself, whenever they were born.
    assert signals._captured_groups(targets, rows, known={500, 600}, capture_ticks=800) == {500, 600, 700}


# ---------------------------------------------------------------------------------------------- the public phases


def test_unreachable_outcome_is_not_ok_and_is_summarized() -> None:
    r = signals.SignalResult(7, Outcome.UNREACHABLE, 0.0, "node died", "", (), "?")
    assert Outcome.UNREACHABLE.value == "unreachable" and not r.ok
    assert signals.summarize([r]) == "1 unreachable"


def test_pinned_handle_and_phase_functions(procs: ProcStarter) -> None:
    """What cgroups.py builds on: pin a process found by a rescan, SIGTERM it (a stopped one is continued so the
    SIGTERM lands), wait for the exit, and never a zombie, a gone pid or a kernel thread."""
    t = Target.pid(0)
    child = procs.python("import time\nprint('ready', flush=True)\ntime.sleep(60)")
    os.kill(child.pid, signal.SIGSTOP)  # a process this test started, by pid
    wait_for(lambda: proc_state(child.pid) == "T")
    p = signals.pin_pid(child.pid, t)
    assert p is not None and p.pid == child.pid and p.member.cmdline and not p.exited()
    t0 = time.monotonic()
    signals.send_term([p], t0)
    assert p.signalled
    rest = signals.wait_exits([p], t0 + 10, t0, Outcome.EXITED)
    assert rest == [] and p.result is not None and p.result.outcome is Outcome.EXITED
    child.wait(timeout=10)
    assert signals.pin_pid(child.pid, t) is None  # reaped: gone
    assert signals.pin_pid(2, t) is None  # kthreadd: a kernel thread
    zombie = procs.popen([sys.executable, "-c", "pass"])
    wait_for(lambda: proc_state(zombie.pid) == "Z")
    assert signals.pin_pid(zombie.pid, t) is None
    zombie.wait()


def test_confirm_states_and_survivors(procs: ProcStarter) -> None:
    child = procs.python("import time\nprint('ready', flush=True)\ntime.sleep(60)")
    p = signals.pin_pid(child.pid, Target.pid(child.pid))
    assert p is not None
    t0 = time.monotonic()
    signals.send_each([p], signal.SIGSTOP, t0)
    assert (
        signals.confirm_states([p], True, t0) and p.result is not None and p.result.outcome is Outcome.PAUSED
    )
    q = signals.pin_pid(child.pid, Target.pid(child.pid))
    assert q is not None
    assert not signals.confirm_states([q], False, t0, timeout=0.05)  # still stopped: survived, and says why
    assert (
        q.result is not None
        and q.result.outcome is Outcome.SURVIVED
        and "still stopped" in (q.result.reason or "")
    )
    r = signals.pin_pid(child.pid, Target.pid(child.pid))
    assert r is not None
    signals.finish_survivors([r], t0, "cgroup.kill", 2.0)
    assert (
        r.result is not None
        and r.result.reason == "still alive 2 s after cgroup.kill (state T: uninterruptible sleep?)"
    )


def test_build_targets_checks_each_pid_and_names_a_missing_one(procs: ProcStarter) -> None:
    leader, kids = start_group(procs, 1)
    snap = process_snapshot()
    assert signals.build_targets([kids[0]], "pid", snap) == [Target.pid(kids[0])]
    assert signals.build_targets([kids[0]], "tree", snap) == [Target.tree(kids[0])]
    assert signals.build_targets([kids[0]], "group", snap) == [Target.group(leader.pid)]
    missing = max(snap.procs) + 100_000
    with pytest.raises(ValueError, match=f"no process with pid {missing}"):
        signals.build_targets([kids[0], missing], "pid", snap)
    with pytest.raises(ValueError, match=f"no process or process group with id {missing}"):
        signals.build_targets([missing], "group", snap)


def test_run_action_dispatches_by_name(procs: ProcStarter) -> None:
    leader, kids = start_group(procs, 1)
    snap = process_snapshot()
    targets = signals.build_targets([leader.pid], "group", snap)
    res = signals.run_action("pause", targets, snapshot=snap)
    assert outcomes(res) == {leader.pid: Outcome.PAUSED, kids[0]: Outcome.PAUSED}
    assert signals.run_action("resume", targets)[0].outcome is Outcome.RESUMED
    with pytest.raises(ValueError, match="unknown action 'stop'"):
        signals.run_action("stop", targets)
    assert all(proc_state(pid) != "T" for pid in [leader.pid, *kids])  # the bad name signalled nothing
    phases: list[str] = []
    res = signals.run_action("terminate", targets, grace=5, on_progress=lambda pr: phases.append(pr.phase))
    assert outcomes(res) == {leader.pid: Outcome.EXITED, kids[0]: Outcome.EXITED}
    assert phases[0] == "sigterm" and phases[-1] == "done"


def test_run_action_skips_targets_that_changed_since_the_dry_run(procs: ProcStarter) -> None:
    a = procs.python("print('ready', flush=True)\nimport time\ntime.sleep(60)")
    b = procs.python("print('ready', flush=True)\nimport time\ntime.sleep(60)")
    snap = process_snapshot()
    expect = {a.pid: snap[a.pid].start_ticks + 1, b.pid: snap[b.pid].start_ticks}
    res = signals.run_action("pause", [Target.pid(a.pid), Target.pid(b.pid)], snapshot=snap, expect=expect)
    assert [r.pid for r in res] == [a.pid, b.pid]  # the skipped one first
    assert res[0].outcome is Outcome.ALREADY_GONE and "another process" in (res[0].reason or "")
    assert res[1].outcome is Outcome.PAUSED
    assert proc_state(a.pid) in ("S", "R") and proc_state(b.pid) == "T"
    assert signals.run_action("resume", [b.pid])[0].outcome is Outcome.RESUMED
