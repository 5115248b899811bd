"""spawn() and track_subprocesses() with real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from procguard.core.signals import Outcome
from procguard.core.spawn import SpawnError, spawn, track_subprocesses
from tests.conftest import ProcStarter, is_gone, proc_state, wait_for

IGNORE_TERM_WITH_CHILD = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
kid = os.fork()
if kid == 0:
    time.sleep(60)
    sys.exit()
open(sys.argv[1], "w").write(str(kid))
time.sleep(60)
"""


def test_spawn_new_session_and_group_terminate(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text(IGNORE_TERM_WITH_CHILD)
    pidfile = tmp_path / "kid"
    h = spawn([sys.executable, str(script), str(pidfile)])
    try:
        assert os.getsid(h.pid) == h.pid and os.getpgid(h.pid) == h.pid
        kid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text()))  # type: ignore[arg-type]
        assert h.poll() is None
        res = h.terminate(grace=0.3)
        assert {r.pid: r.outcome for r in res} == {h.pid: Outcome.KILLED, kid: Outcome.KILLED}
        assert h.returncode == -9
        assert is_gone(kid)
    finally:
        if h.returncode is None:
            h.kill()


def test_spawn_with_cwd_goes_through_popen(tmp_path: Path) -> None:
    h = spawn([sys.executable, "-c", "import os; open('here', 'w').write(os.getcwd())"], cwd=tmp_path)
    assert h.wait(timeout=30) == 0
    assert (tmp_path / "here").read_text() == str(tmp_path)


def test_spawn_wait_timeout_and_exit_code() -> None:
    h = spawn([sys.executable, "-c", "import time,sys; time.sleep(0.3); sys.exit(7)"])
    with pytest.raises(subprocess.TimeoutExpired):
        h.wait(timeout=0.01)
    assert h.wait(timeout=30) == 7


def test_spawn_pause_resume() -> None:
    h = spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert [r.outcome for r in h.pause()] == [Outcome.PAUSED]
        assert proc_state(h.pid) == "T"
        assert [r.outcome for r in h.resume()] == [Outcome.RESUMED]
    finally:
        h.kill()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["/nonexistent/prog"], "'/nonexistent/prog': no such program"),
        (["surely-not-a-program-xyz"], "'surely-not-a-program-xyz': no such program on PATH"),
    ],
)
def test_spawn_missing_program_names_it(argv: list[str], needle: str) -> None:
    with pytest.raises(SpawnError, match=needle):
        spawn(argv)


def test_spawn_non_executable_names_it(tmp_path: Path) -> None:
    f = tmp_path / "data.txt"
    f.write_text("not a program")
    f.chmod(0o644)
    with pytest.raises(SpawnError, match=f"'{f}': not an executable file"):
        spawn([str(f)])


TREE = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
gk = subprocess.Popen([sys.executable, "-c", "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
open(sys.argv[1], "w").write(str(gk.pid))
time.sleep(60)
"""


def test_track_subprocesses_ends_trees_on_exception(tmp_path: Path, procs: ProcStarter) -> None:
    script = tmp_path / "t.py"
    script.write_text(TREE)
    pidfile = tmp_path / "gk"
    with pytest.raises(KeyboardInterrupt), track_subprocesses(grace=0.2) as tracked:
        child = subprocess.Popen([sys.executable, str(script), str(pidfile)])
        procs.track(child.pid)
        gk = int(wait_for(lambda: pidfile.exists() and pidfile.read_text()))  # type: ignore[arg-type]
        procs.track(gk)
        raise KeyboardInterrupt
    assert tracked == [child]
    assert is_gone(gk) and child.returncode is not None
    assert {r.outcome for r in tracked.results} == {Outcome.KILLED}


def test_track_subprocesses_normal_exit_leaves_them_running(procs: ProcStarter) -> None:
    with track_subprocesses() as tracked:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        procs.started.append(child)
    assert tracked == [child]
    assert child.poll() is None


def test_track_subprocesses_terminate_on_exit(procs: ProcStarter) -> None:
    with track_subprocesses(terminate_on_exit=True) as tracked:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        procs.started.append(child)
    assert child.returncode is not None
    assert [r.outcome for r in tracked.results] == [Outcome.EXITED]


def test_track_subprocesses_is_per_thread(procs: ProcStarter) -> None:
    other: list[subprocess.Popen[bytes]] = []
    started = threading.Event()
    release = threading.Event()

    def other_thread() -> None:
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        procs.started.append(p)
        other.append(p)
        started.set()
        release.wait(10)

    with pytest.raises(RuntimeError), track_subprocesses(grace=0.2) as tracked:
        t = threading.Thread(target=other_thread)
        t.start()
        started.wait(10)
        mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        procs.started.append(mine)
        raise RuntimeError("boom")
    release.set()
    t.join()
    assert tracked == [mine]
    assert other[0].poll() is None  # the other thread's child is untouched


def test_on_popen_sees_this_threads_popens_only() -> None:
    import threading

    from procguard.core.spawn import on_popen

    seen: list[int] = []
    other: list[subprocess.Popen[bytes]] = []
    with on_popen(lambda p: seen.append(p.pid)) as popens:
        mine = subprocess.Popen(["true"])
        t = threading.Thread(target=lambda: other.append(subprocess.Popen(["true"])))
        t.start()
        t.join()
    after = subprocess.Popen(["true"])
    for p in (mine, after, *other):
        p.wait()
    assert seen == [mine.pid] and [p.pid for p in popens] == [mine.pid]
