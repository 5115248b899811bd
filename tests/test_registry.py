"""The per-user registry of guarded processes: real files, real processes, real staleness."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from procguard.core import privdir, procfs, registry
from procguard.core.snapshot import process_snapshot
from tests.conftest import PY, ProcStarter, wait_for


@pytest.fixture
def regdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "registry"
    monkeypatch.setenv(registry.ENV_OVERRIDE, str(d))
    return d


def test_register_get_unregister_self(regdir: Path) -> None:
    e = registry.register(
        script="/x/train.py", lock="/l/train.lock", flush_signal=signal.SIGUSR1, extra={"name": "train"}
    )
    try:
        assert registry.registry_dir() == regdir
        assert stat.S_IMODE(regdir.stat().st_mode) == 0o700
        f = regdir / f"{os.getpid()}.json"
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        got = registry.get_entry(os.getpid())
        assert got == e
        assert (got.script, got.lock, got.flush_signal, got.uid) == (
            "/x/train.py",
            "/l/train.lock",
            signal.SIGUSR1,
            os.geteuid(),
        )
        assert got.extra["name"] == "train"
        # start ticks are a field of their own now (issue 12: pid + start ticks name the process)
        assert got.start_ticks == procfs.start_ticks_of(os.getpid()) and got.trusted
        assert got.proc_id is not None and got.proc_id.alive()
        assert json.loads(f.read_text())["start_ticks"] == got.start_ticks
        # comparable with the snapshot's create_time
        assert got.create_time == process_snapshot()[os.getpid()].create_time
        assert got.argv == list(procfs.read_cmdline(os.getpid()) or ())
        assert os.getpid() in [x.pid for x in registry.read_entries()]
    finally:
        registry.unregister()
    assert registry.get_entry(os.getpid()) is None
    assert not (regdir / f"{os.getpid()}.json").exists()
    registry.unregister()  # idempotent


def test_update_entry_merges(regdir: Path) -> None:
    registry.register(script="s", extra={"a": 1})
    try:
        registry.update_entry(os.getpid(), lock="/new.lock", flush={"freed": 5}, extra={"b": 2}, pid=1, uid=1)
        e = registry.get_entry(os.getpid())
        assert e is not None
        assert e.lock == "/new.lock" and e.pid == os.getpid() and e.uid == os.geteuid()
        assert e.extra["a"] == 1 and e.extra["b"] == 2 and e.extra["flush"] == {"freed": 5}
        assert not [p for p in os.listdir(regdir) if p.endswith(".tmp")]
    finally:
        registry.unregister()
    registry.update_entry(os.getpid(), flush={"late": True})  # must not bring the entry back
    assert registry.get_entry(os.getpid()) is None
    assert not (regdir / f"{os.getpid()}.json").exists()


def test_concurrent_updates_lose_nothing(regdir: Path) -> None:
    registry.register(script="s")
    try:

        def writer(k: int) -> None:
            for i in range(30):
                registry.update_entry(os.getpid(), **{f"k{k}": i})

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        e = registry.get_entry(os.getpid())
        assert e is not None and all(e.extra[f"k{k}"] == 29 for k in range(4))
    finally:
        registry.unregister()


REGISTER_AND_WAIT = """
import time
from procguard.core import registry
registry.register(script="child", flush_signal=10)
print("ready", flush=True)
time.sleep(600)
"""


def test_entry_of_a_killed_process_is_ignored_and_pruned(procs: ProcStarter, regdir: Path) -> None:
    p = procs.python(REGISTER_AND_WAIT, env=dict(os.environ))
    e = registry.get_entry(p.pid)
    assert e is not None and e.script == "child" and e.flush_signal == 10
    assert p.pid in [x.pid for x in registry.read_entries()]
    p.kill()
    p.wait()
    assert registry.get_entry(p.pid) is None
    assert not (regdir / f"{p.pid}.json").exists()


def test_stale_entries_are_pruned_by_read_entries(procs: ProcStarter, regdir: Path) -> None:
    p = procs.python(REGISTER_AND_WAIT, env=dict(os.environ))
    p.kill()
    p.wait()
    assert (regdir / f"{p.pid}.json").exists()  # nobody could clean up after SIGKILL
    assert p.pid not in [x.pid for x in registry.read_entries()]
    assert not (regdir / f"{p.pid}.json").exists()


def test_reused_pid_is_stale(regdir: Path) -> None:
    # An entry naming a live pid but another start time is a previous process's: stale.
    regdir.mkdir(mode=0o700)
    me = os.getpid()
    ticks = procfs.start_ticks_of(me)
    assert ticks is not None
    fake = registry.RegistryEntry(
        me,
        procfs.create_time(ticks - 100),
        "old",
        None,
        None,
        0.0,
        [],
        os.geteuid(),
        {"start_ticks": ticks - 100},
    )
    (regdir / f"{me}.json").write_text(json.dumps(fake.__dict__))
    assert registry.get_entry(me) is None
    assert not (regdir / f"{me}.json").exists()


def test_garbage_files_are_ignored(regdir: Path) -> None:
    regdir.mkdir(mode=0o700)
    (regdir / "123.json").write_text("{not json")
    (regdir / "124.json").write_text("[]")
    (regdir / ".125.1.tmp").write_text("{}")
    assert registry.read_entries() == []
    assert registry.get_entry(123) is None


def test_default_folder_is_private(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(registry.ENV_OVERRIDE, raising=False)
    d = registry.registry_dir()
    st = d.stat()
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
    e = registry.register(script="default-dir")
    try:
        assert registry.get_entry(os.getpid()) == e
        assert os.getpid() in [x.pid for x in registry.read_entries(all_users=True)]
    finally:
        registry.unregister()
    assert registry.get_entry(os.getpid()) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")
def test_other_users_cannot_read_or_write_our_entries(procs: ProcStarter, regdir: Path) -> None:
    registry.register(script="root-only")
    try:
        code = (
            "from procguard.core import registry; import os, sys; pid = int(sys.argv[1]); "
            "registry.update_entry(pid, x=1); "
            "print(registry.get_entry(pid) is None, [e.pid for e in registry.read_entries(all_users=True)])"
        )
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PY, "-c", code, str(os.getpid())],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
            env=dict(os.environ),
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split(None, 1)[0] == "True"
        e = registry.get_entry(os.getpid())
        assert e is not None and "x" not in e.extra
    finally:
        registry.unregister()
    wait_for(lambda: registry.get_entry(os.getpid()) is None)


# ---------------------------------------------------------------------------------------------- trust rule


def write_own_entry(folder: Path, name: str | None = None, **change: object) -> Path:
    """An entry for this very process (right pid and start ticks), written by hand into `folder`."""
    me = os.getpid()
    ticks = procfs.start_ticks_of(me)
    assert ticks is not None
    data = registry.RegistryEntry(
        me, procfs.create_time(ticks), "by-hand", None, signal.SIGUSR1, 0.0, [], os.geteuid(), {}, ticks
    ).to_json()
    data.update(change)
    path = folder / (name or f"{me}.json")
    path.write_text(json.dumps(data))
    return path


def test_entry_in_a_folder_others_can_reach_is_not_believed(regdir: Path) -> None:
    regdir.mkdir(mode=0o700)
    write_own_entry(regdir)
    assert registry.get_entry(os.getpid()) is not None  # control: private folder, right identity
    os.chmod(regdir, 0o755)
    assert registry.get_entry(os.getpid()) is None
    assert registry.read_entries() == [] and registry.read_entries(all_users=True) == []
    flagged = registry.get_entry(os.getpid(), include_untrusted=True)
    assert flagged is not None and flagged.trusted is False
    assert flagged.untrusted_reason is not None and "mode 0755" in flagged.untrusted_reason
    listed = registry.read_entries(all_users=True, include_untrusted=True)
    assert [(e.pid, e.trusted) for e in listed] == [(os.getpid(), False)]
    # Nor is it written to: register refuses the folder, in one line naming it.
    with pytest.raises(privdir.PrivateDirError) as err:
        registry.register(script="x")
    assert str(regdir) in str(err.value) and "\n" not in str(err.value)
    registry.update_entry(os.getpid(), flush={"x": 1})
    assert "flush" not in json.loads((regdir / f"{os.getpid()}.json").read_text())["extra"]


def test_entry_naming_another_process_or_another_start_is_not_believed(
    procs: ProcStarter, regdir: Path
) -> None:
    regdir.mkdir(mode=0o700)
    other = procs.python("import time\nprint('ready', flush=True)\ntime.sleep(600)\n", name="plain").pid
    write_own_entry(regdir, f"{other}.json")  # our entry, under another live process's name
    assert registry.get_entry(other) is None
    flagged = registry.get_entry(other, include_untrusted=True)
    assert (
        flagged is not None
        and not flagged.trusted
        and f"names pid {os.getpid()}" in str(flagged.untrusted_reason)
    )
    # the right pid with another start time is a previous process's entry: stale, never shown
    ticks = procfs.start_ticks_of(other)
    assert ticks is not None
    write_own_entry(regdir, f"{other}.json", pid=other, start_ticks=ticks + 1)
    assert registry.get_entry(other, include_untrusted=True) is None
    write_own_entry(regdir, f"{other}.json", pid=other, start_ticks=ticks)
    assert registry.get_entry(other) is not None  # control: owned by the process's owner, private folder


def test_symlinked_hard_linked_or_oversized_entries_are_not_believed(regdir: Path, tmp_path: Path) -> None:
    regdir.mkdir(mode=0o700)
    me = os.getpid()
    real = write_own_entry(tmp_path, "elsewhere.json")
    (regdir / f"{me}.json").symlink_to(real)
    assert registry.get_entry(me, include_untrusted=True) is None  # never read through a symlink
    (regdir / f"{me}.json").unlink()
    path = write_own_entry(regdir)
    os.link(path, regdir / "second-name")
    flagged = registry.get_entry(me, include_untrusted=True)
    assert flagged is not None and not flagged.trusted and "2 links" in str(flagged.untrusted_reason)
    (regdir / "second-name").unlink()
    assert registry.get_entry(me) is not None
    write_own_entry(regdir, padding="x" * privdir.MAX_FILE_BYTES)
    assert registry.get_entry(me, include_untrusted=True) is None  # not read whole: not one of ours


def test_old_entries_with_start_ticks_in_extra_are_read(regdir: Path) -> None:
    regdir.mkdir(mode=0o700)
    ticks = procfs.start_ticks_of(os.getpid())
    path = write_own_entry(regdir, extra={"start_ticks": ticks})
    data = json.loads(path.read_text())
    del data["start_ticks"]  # as an entry written before the field was
    path.write_text(json.dumps(data))
    e = registry.get_entry(os.getpid())
    assert e is not None and e.trusted and e.start_ticks == ticks


@pytest.fixture
def tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp dir the fallback candidates live in, for this test only (no override, no runtime dir)."""
    t = tmp_path / "tmp"
    t.mkdir()
    monkeypatch.delenv(registry.ENV_OVERRIDE, raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(t))
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    if os.path.isdir(f"/run/user/{os.geteuid()}"):
        pytest.skip(f"/run/user/{os.geteuid()} exists: the temp-dir fallbacks are not reached")
    return t


def test_folders_others_can_write_are_skipped_then_refused(tmpdir_env: Path) -> None:
    uid = os.geteuid()
    runtime = tmpdir_env / f"runtime-{uid}"
    runtime.mkdir()
    os.chmod(runtime, 0o777)  # anyone could plant in it: not ours to use
    d = registry.registry_dir()
    assert d == tmpdir_env / f"procguard-{uid}" / "registry"
    assert privdir.private_dir_problem(d) is None
    assert list(runtime.iterdir()) == []
    registry.register(script="fallback")
    try:
        assert registry.get_entry(os.getpid()) is not None and (d / f"{os.getpid()}.json").exists()
    finally:
        registry.unregister()
    os.chmod(tmpdir_env / f"procguard-{uid}", 0o777)
    with pytest.raises(privdir.PrivateDirError) as err:
        registry.register(script="nowhere")
    msg = str(err.value)
    assert "\n" not in msg and f"runtime-{uid}" in msg and f"procguard-{uid}" in msg
    assert list(runtime.iterdir()) == [] and list(d.iterdir()) == []
