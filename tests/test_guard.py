"""guard(): duplicate policies, lock, registry, and clean-up on every kind of exit, with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from procguard.core import registry
from procguard.core.guard import DuplicateRunning, Guard, guard
from procguard.core.locks import SingleInstanceLock
from tests.conftest import LAUNCH_VARS, PY, ProcStarter, is_gone, wait_for

# argv: MODE INFO_PATH [LOCK]; writes what the guard did to INFO_PATH, then sleeps.
GUARDED = """
import json, os, signal, sys, time
from procguard.core.guard import guard
mode, info = sys.argv[1], sys.argv[2]
lock = sys.argv[3] if len(sys.argv) > 3 else True
with guard(on_duplicate=mode, lock=lock, grace=5) as g:
    with open(info + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "lock": g.lock_path, "notes": g.notes,
                   "terminated": [r.pid for r in g.terminated],
                   "sigterm_default": signal.getsignal(signal.SIGTERM) is signal.SIG_DFL}, f)
    os.replace(info + ".tmp", info)
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Children and this test share a private registry folder; no launch variables leak in."""
    monkeypatch.setenv(registry.ENV_OVERRIDE, str(tmp_path / "registry"))
    monkeypatch.setenv("PROCGUARD_LOCK_DIR", str(tmp_path / "locks"))
    for v in LAUNCH_VARS:
        monkeypatch.delenv(v, raising=False)
    return dict(os.environ)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    # A unique stem: the default lock name is the script's stem, and lock files live in a per-user folder.
    p = tmp_path / "proj" / f"guarded_{os.getpid()}_{tmp_path.name}.py"
    p.parent.mkdir()
    p.write_text(textwrap.dedent(GUARDED))
    return p


class Run:
    def __init__(self, p: subprocess.Popen[bytes], info: Path) -> None:
        self.p = p
        self.info_path = info

    @property
    def pid(self) -> int:
        return self.p.pid

    def info(self) -> dict[str, object]:
        return json.loads(self.info_path.read_text())


_n = 0


def start(
    procs: ProcStarter,
    script: Path,
    mode: str,
    env: dict[str, str],
    *,
    ready: bool = True,
    lock: str | None = None,
    cwd: Path | None = None,
    **extra_env: str,
) -> Run:
    global _n
    _n += 1
    info = script.parent / f"info{_n}.json"
    argv = [PY, script.name if cwd is None else str(script), mode, str(info), *([lock] if lock else [])]
    p = procs.popen(
        argv,
        cwd=cwd or script.parent,
        env={**env, **extra_env},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if ready:
        procs.wait_ready(p)
        time.sleep(0.03)  # the next run starts in a later clock tick: "older" is unambiguous
    return Run(p, info)


def lock_is_free(path: str) -> bool:
    lk = SingleInstanceLock(path)
    lk.acquire()
    lk.release()
    return True


def test_abort_names_the_running_one(
    procs: ProcStarter, script: Path, env: dict[str, str], tmp_path: Path
) -> None:
    a = start(procs, script, "abort", env)
    b = start(procs, script, "abort", env, ready=False, cwd=tmp_path)  # same script, by absolute path
    _out, err = b.p.communicate(timeout=60)
    assert b.p.returncode == 1
    msg = err.decode()
    assert "already running" in msg and f"pid {a.pid}" in msg and "since" in msg and script.name in msg
    assert "Traceback" not in msg
    assert not is_gone(a.pid)
    assert registry.get_entry(b.pid) is None
    assert registry.get_entry(a.pid) is not None


def test_terminate_ends_the_older_run(procs: ProcStarter, script: Path, env: dict[str, str]) -> None:
    a = start(procs, script, "abort", env)
    b = start(procs, script, "terminate", env)
    info = b.info()
    assert info["terminated"] == [a.pid]
    assert is_gone(a.pid)
    assert info["lock"] is not None and Path(str(info["lock"])).name == f"{script.stem}.lock"
    assert registry.get_entry(b.pid) is not None and registry.get_entry(a.pid) is None


def test_ignore_runs_alongside_without_the_lock(
    procs: ProcStarter, script: Path, env: dict[str, str]
) -> None:
    a = start(procs, script, "abort", env)
    b = start(procs, script, "ignore", env)
    assert not is_gone(a.pid) and not is_gone(b.pid)
    assert a.info()["lock"] is not None
    assert b.info()["lock"] is None
    assert any("no lock" in str(n) for n in b.info()["notes"])  # type: ignore[union-attr]


def test_lock_held_by_another_program_aborts(
    procs: ProcStarter, script: Path, env: dict[str, str], tmp_path: Path
) -> None:
    lock = str(tmp_path / "shared.lock")
    holder = procs.python(
        f"""
        import time
        from procguard.core.locks import SingleInstanceLock
        SingleInstanceLock({lock!r}).acquire()
        print("ready", flush=True)
        time.sleep(600)
    """,
        env=env,
    )
    b = start(procs, script, "abort", env, ready=False, lock=lock)
    _out, err = b.p.communicate(timeout=60)
    assert b.p.returncode == 1
    assert "already running" in err.decode() and str(holder.pid) in err.decode()


@pytest.mark.parametrize(
    "sig, code", [(signal.SIGTERM, 128 + 15), (signal.SIGHUP, 128 + 1), (signal.SIGINT, -signal.SIGINT)]
)
def test_lock_and_registry_released_on_signal(
    procs: ProcStarter, script: Path, env: dict[str, str], sig: int, code: int
) -> None:
    a = start(procs, script, "abort", env)
    info = a.info()
    lock = str(info["lock"])
    assert info["sigterm_default"] is False  # guard's handler is in place
    entry = registry.get_entry(a.pid)
    assert entry is not None and entry.lock == lock and entry.flush_signal == signal.SIGUSR1
    assert entry.script == os.path.realpath(script)
    entry_file = Path(os.environ[registry.ENV_OVERRIDE]) / f"{a.pid}.json"
    assert entry_file.exists()
    os.kill(a.pid, sig)
    assert a.p.wait(timeout=60) == code
    assert not entry_file.exists()
    assert not os.path.exists(lock)  # released (the lock unlinks its file on release)
    assert lock_is_free(lock)


def test_exception_and_return_clean_up(procs: ProcStarter, tmp_path: Path, env: dict[str, str]) -> None:
    lock = str(tmp_path / "exc.lock")
    p = procs.python(
        f"""
        import os, sys
        from procguard.core import registry
        from procguard.core.guard import guard

        @guard(lock={lock!r})
        def main():
            assert registry.get_entry(os.getpid()) is not None
            assert os.path.exists({lock!r})
            raise RuntimeError("boom")

        try:
            main()
        except RuntimeError:
            pass
        assert registry.get_entry(os.getpid()) is None and not os.path.exists({lock!r})
        main2 = guard(lock={lock!r})(lambda: registry.get_entry(os.getpid()).lock)
        assert main2() == {lock!r}
        assert registry.get_entry(os.getpid()) is None
        print("ready", flush=True)
    """,
        env=env,
    )
    assert p.wait(timeout=60) == 0


def test_distributed_ranks_are_not_duplicates_and_only_rank0_locks(
    procs: ProcStarter, script: Path, env: dict[str, str]
) -> None:
    run_id = f"guard-{os.getpid()}-{time.monotonic_ns()}"
    r0 = start(procs, script, "abort", env, TORCHELASTIC_RUN_ID=run_id, RANK="0", LOCAL_RANK="0")
    r1 = start(procs, script, "abort", env, TORCHELASTIC_RUN_ID=run_id, RANK="1", LOCAL_RANK="1")
    assert not is_gone(r0.pid) and not is_gone(r1.pid)
    assert r0.info()["lock"] is not None
    assert r1.info()["lock"] is None
    # An independent run of the same script is refused: the launch is running.
    c = start(procs, script, "abort", env, ready=False)
    _out, err = c.p.communicate(timeout=60)
    assert c.p.returncode == 1 and f"pid {r0.pid}" in err.decode()


def test_scheduler_jobs_run_side_by_side(procs: ProcStarter, script: Path, env: dict[str, str]) -> None:
    a = start(procs, script, "abort", env, SLURM_JOB_ID="11")
    b = start(procs, script, "abort", env, SLURM_JOB_ID="12")
    assert not is_gone(a.pid) and not is_gone(b.pid)
    assert a.info()["lock"] is None and b.info()["lock"] is None


def test_worker_of_a_guarded_run_is_not_its_duplicate(
    procs: ProcStarter, tmp_path: Path, env: dict[str, str]
) -> None:
    out = tmp_path / "child.json"
    p = procs.python(
        f"""
        import json, os
        from procguard.core.guard import guard
        with guard(lock={str(tmp_path / "w.lock")!r}):
            pid = os.fork()
            if pid == 0:
                with guard(on_duplicate="abort") as g:
                    json.dump(g.notes, open({str(out)!r}, "w"))
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert os.path.exists({str(tmp_path / "w.lock")!r})  # the child's exit left our lock alone
        print("ready", flush=True)
    """,
        env=env,
    )
    assert p.wait(timeout=60) == 0
    assert any("worker" in n for n in json.loads(out.read_text()))


# ---------------------------------------------------------------------------------------------- in-process


def test_signal_handlers_installed_and_restored(env: dict[str, str]) -> None:
    # The default disposition, whatever the runner (or a library it loaded, e.g. ray) installed before us.
    runner_handler = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with guard("inproc", on_duplicate="ignore", lock=False, flush_on_exit=False) as g:
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            e = registry.get_entry(os.getpid())
            assert e is not None and e.extra["name"] == "inproc"
            assert isinstance(g, Guard)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert registry.get_entry(os.getpid()) is None
    finally:
        signal.signal(signal.SIGTERM, runner_handler)


def test_user_sigterm_handler_is_left_alone(env: dict[str, str]) -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    old = signal.signal(signal.SIGTERM, mine)
    try:
        with guard("inproc2", on_duplicate="ignore", lock=False, flush_on_exit=False):
            assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)


def test_exception_propagates_and_cleans_up(env: dict[str, str]) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(ValueError), guard("inproc3", on_duplicate="ignore", lock=False):
        assert registry.get_entry(os.getpid()) is not None
        raise ValueError("x")
    assert registry.get_entry(os.getpid()) is None
    assert signal.getsignal(signal.SIGUSR1) == before  # the flush handler is gone again


def test_nested_guard_does_nothing_more(env: dict[str, str], tmp_path: Path) -> None:
    lock = str(tmp_path / "nested.lock")
    with guard("outer", on_duplicate="ignore", lock=lock) as outer:
        assert outer.lock_path == lock
        with guard("inner", on_duplicate="abort", lock=lock) as inner:
            assert inner.lock_path == lock and any("nested" in n for n in inner.notes)
        assert os.path.exists(lock)  # still held by the outer guard
        e = registry.get_entry(os.getpid())
        assert e is not None and e.extra["name"] == "outer"
    assert not os.path.exists(lock) and registry.get_entry(os.getpid()) is None


def test_duplicate_running_is_a_clean_exit() -> None:
    e = DuplicateRunning("t.py is already running: pid 1", "t.py", (), 1)
    assert isinstance(e, SystemExit) and str(e) == "t.py is already running: pid 1" and e.code == str(e)
    with pytest.raises(ValueError):
        guard(on_duplicate="nope")


def test_guard_waits_for_nothing_it_does_not_own(
    procs: ProcStarter, script: Path, env: dict[str, str]
) -> None:
    # Terminating duplicates never reaches beyond the older run's own tree.
    bystander = procs.python(
        """
        import time
        print("ready", flush=True)
        time.sleep(600)
    """,
        env=env,
    )
    a = start(procs, script, "abort", env)
    b = start(procs, script, "terminate", env)
    wait_for(lambda: is_gone(a.pid))
    assert not is_gone(bystander.pid) and not is_gone(b.pid)


def test_guard_goes_on_unregistered_when_no_private_registry_folder(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared-registry"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone could plant files in it: never written to
    monkeypatch.setenv(registry.ENV_OVERRIDE, str(shared))
    with (
        pytest.warns(RuntimeWarning, match="could not register"),
        guard("unregistered", on_duplicate="ignore", lock=False, flush_on_exit=False) as g,
    ):
        assert g.entry is None and any("not registered" in n and str(shared) in n for n in g.notes)
    assert list(shared.iterdir()) == []


ABORTING = """
import sys, time
from procguard.core.guard import guard
with guard(on_duplicate="abort", lock=False):
    print("ready", flush=True)
    time.sleep(600)
"""


def test_duplicate_message_escapes_the_other_runs_argv(
    procs: ProcStarter, tmp_path: Path, env: dict[str, str]
) -> None:
    script = tmp_path / f"loud_{os.getpid()}_{tmp_path.name}.py"
    script.write_text(ABORTING)
    a = procs.popen(
        [PY, str(script), "\x1b]0;pwned\x07\x1b[2J"], env=env, start_new_session=True, stdout=subprocess.PIPE
    )
    procs.wait_ready(a)
    time.sleep(0.03)  # the next run starts in a later clock tick: "older" is unambiguous
    b = procs.popen(
        [PY, str(script)], env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _out, err = b.communicate(timeout=60)
    assert b.returncode == 1
    msg = err.decode()
    assert f"pid {a.pid}" in msg and "\\x1b]0;pwned\\x07\\x1b[2J" in msg
    assert "\x1b" not in msg and "\x07" not in msg
