"""Attacks 3 and 5 of issue 12 on locks: root runs procguard, nobody (through setpriv) plays the hostile user.

Checked outcomes: the planted link's target is untouched, nothing is spawned or written through a link, the
kernel's holder is named (not the forger's story), no raw control byte reaches the output, clean-stale never
unlinks through a symlink nor in nobody's folder. Every bulk call is scoped to this test's own folders.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from procguard.core.held_locks import clean_stale_locks, held_locks, stale_lock_files
from procguard.core.locks import AlreadyRunning, LockError, SingleInstanceLock
from procguard.core.procid import ProcId
from tests.conftest import NOBODY, NOBODY_UID, ProcStarter, needs_root

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")]

PY = sys.executable
CONTROL = "\x1b\x07\x9b"  # ESC, BEL, CSI: any of them raw in the output is a failure


def pg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "procguard.core.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def as_nobody(code: str, *args: str) -> None:
    subprocess.run([*NOBODY, PY, "-c", code, *args], check=True, timeout=60, stdin=subprocess.DEVNULL)


def _world_folder(mode: int) -> Iterator[Path]:
    # Not under tmp_path: pytest's folders are 0700, which nobody can't enter.
    d = Path(tempfile.mkdtemp(prefix="procguard-hostile-"))
    d.chmod(mode)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder everyone can write to, like /tmp or a team's scratch space (root's, mode 1777)."""
    yield from _world_folder(0o1777)


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A root-owned folder nobody can enter but not write (0755)."""
    yield from _world_folder(0o755)


def _no_control(text: str) -> None:
    assert not any(c in text for c in CONTROL), repr(text)


def _plant_link(link: Path, target: Path) -> None:
    as_nobody("import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(target), str(link))
    assert link.is_symlink() and link.lstat().st_uid == NOBODY_UID


# ---------------------------------------------------------------- attack 3: symlinked lock paths


def test_symlinked_lock_path_is_refused_by_run(shared: Path, tmp_path: Path) -> None:
    target = tmp_path / "root-file"
    target.write_text("root's data\n")
    before = target.stat()
    link = shared / "train.lock"
    _plant_link(link, target)
    marker = tmp_path / "spawned"
    r = pg("run", "--lock", str(link), "--", "touch", str(marker))
    assert r.returncode == 2, r.stderr
    assert (
        r.stderr == f"procguard: error: --lock {link}: lock path {link} is a symlink: refusing to follow it\n"
    )
    assert not marker.exists()  # nothing spawned
    assert target.read_text() == "root's data\n" and target.stat().st_mtime_ns == before.st_mtime_ns
    assert link.is_symlink()


def test_symlinked_lock_path_is_refused_in_process(shared: Path, tmp_path: Path) -> None:
    target = tmp_path / "root-file"
    target.write_text("root's data\n")
    link = shared / "train.lock"
    _plant_link(link, target)
    with pytest.raises(LockError) as ei:
        SingleInstanceLock(link).acquire()
    assert str(ei.value) == f"lock path {link} is a symlink: refusing to follow it"
    assert target.read_text() == "root's data\n"
    # A dangling link would have made root create its target.
    dangling = shared / "d.lock"
    _plant_link(dangling, tmp_path / "created-by-root")
    with pytest.raises(LockError):
        SingleInstanceLock(dangling).acquire()
    assert not (tmp_path / "created-by-root").exists()


def test_symlinked_folder_on_the_way_is_refused(shared: Path, tmp_path: Path) -> None:
    victim = tmp_path / "root-folder"
    victim.mkdir()
    (victim / "train.lock").write_text("root's own file of that name\n")
    _plant_link(shared / "proj", victim)
    path = shared / "proj" / "train.lock"
    marker = tmp_path / "spawned"
    r = pg("run", "--lock", str(path), "--", "touch", str(marker))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"{shared / 'proj'} is a symlink owned by uid {NOBODY_UID}: not followed" in r.stderr
    assert not marker.exists()
    with pytest.raises(LockError) as ei:
        SingleInstanceLock(shared / "proj" / "new" / "x.lock").acquire()
    assert str(ei.value).startswith(f"lock path {shared / 'proj' / 'new' / 'x.lock'} goes through ")
    assert (victim / "train.lock").read_text() == "root's own file of that name\n"
    assert sorted(p.name for p in victim.iterdir()) == ["train.lock"]  # no folder made through the link


def test_nobodys_lock_file_in_a_shared_folder_is_refused(shared: Path, tmp_path: Path) -> None:
    path = shared / "train.lock"
    as_nobody("import sys; open(sys.argv[1], 'w').write('nobody was here\\n')", str(path))
    assert path.stat().st_uid == NOBODY_UID
    marker = tmp_path / "spawned"
    r = pg("run", "--lock", str(path), "--", "touch", str(marker))
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        f"procguard: error: --lock {path}: lock file {path} is owned by uid {NOBODY_UID}, "
        "in a folder others can write: refusing to use it\n"
    )
    assert not marker.exists()
    with pytest.raises(LockError):
        SingleInstanceLock(path).acquire()
    assert path.read_text() == "nobody was here\n" and path.stat().st_uid == NOBODY_UID


# ---------------------------------------------------------------- attack 5: forged lock metadata

# Holds a flock on argv[1] (creating it) and writes argv[2] into it: the holder's "metadata", whatever it says.
FORGER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
# The claim comes on stdin: in argv it would show in the holder's real command line.
os.write(fd, sys.stdin.readline().rstrip("\\n").replace("SELF", str(os.getpid())).encode())
print("ready", flush=True)
sys.stdin.read()
"""

EVIL_ARGV = ["python", "\x1b]0;pwned\x07train.py", "\x1b[2J", "\x9b31m"]


def _claim(pid: int | str, ticks: int | None = None) -> str:
    return json.dumps(
        {
            "procguard": 1,
            "pid": pid,
            "start_ticks": ticks,
            "argv": EVIL_ARGV,
            "cwd": "/root\x1b[31m",
            "host": socket.gethostname(),
            "version": "1",
        }
    )


def _forger(procs: ProcStarter, path: Path, content: str) -> subprocess.Popen[bytes]:
    p = procs.popen([*NOBODY, PY, "-c", FORGER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdin is not None
    p.stdin.write(content.encode() + b"\n")
    p.stdin.flush()
    procs.wait_ready(p)
    return p


def _root_claim() -> str:
    ident = ProcId.of(os.getpid())
    assert ident is not None
    return _claim(ident.pid, ident.start_ticks)  # a root process, named with its true start time


def test_forged_metadata_in_locks_output(procs: ProcStarter, shared: Path) -> None:
    path = shared / "forged.lock"
    forger = _forger(procs, path, _root_claim())
    [lk] = [h for h in held_locks() if h.path == str(path)]
    assert lk.holders == (forger.pid,) and lk.holder is None and lk.metadata_trusted is False
    r = pg("locks", "--dir", str(shared))
    assert r.returncode == 0, r.stderr
    _no_control(r.stdout + r.stderr)
    [row] = [ln for ln in r.stdout.splitlines() if ln.split()[:1] == [str(forger.pid)]]
    assert "[metadata disagrees]" in row and "pwned" not in row
    assert f"it names pid {os.getpid()}, which does not hold the lock (pid {forger.pid} does)" in r.stdout
    r = pg("locks", "--json", "--dir", str(shared))
    [o] = json.loads(r.stdout)
    assert (o["pid"], o["holders"], o["holder"], o["metadata_trusted"]) == (
        forger.pid,
        [forger.pid],
        None,
        False,
    )
    assert o["metadata"]["argv"] == EVIL_ARGV  # exact values in JSON
    # Root won't even open nobody's file in a shared folder to take the lock.
    with pytest.raises(LockError):
        SingleInstanceLock(path).acquire()


def test_forged_metadata_in_already_running(procs: ProcStarter, root_dir: Path, tmp_path: Path) -> None:
    # A lock file of nobody's in a folder only root can write: root may use it, nobody may hold it.
    path = root_dir / "job.lock"
    path.touch()
    os.chown(path, NOBODY_UID, NOBODY_UID)
    forger = _forger(procs, path, _root_claim())
    with pytest.raises(AlreadyRunning) as ei:
        SingleInstanceLock(path).acquire()
    e = ei.value
    assert e.holders == (forger.pid,) and e.holder is None and e.metadata is not None
    msg = str(e)
    _no_control(msg)
    assert (
        msg.startswith(f"{path} is held by pid {forger.pid} (") and "pwned" not in msg and "/root" not in msg
    )
    marker = tmp_path / "spawned"
    r = pg("run", "--lock", str(path), "--", "touch", str(marker))
    assert r.returncode == 3 and not marker.exists()
    _no_control(r.stderr)
    assert f"held by pid {forger.pid} (" in r.stderr and "pwned" not in r.stderr


def test_agreeing_metadata_from_nobody_is_shown_escaped(procs: ProcStarter, root_dir: Path) -> None:
    # Nobody describes its own process truthfully (pid and start agree), with escapes in its argv: shown, but
    # never raw.
    path = root_dir / "own.lock"
    path.touch()
    os.chown(path, NOBODY_UID, NOBODY_UID)
    forger = _forger(procs, path, "{}")
    ident = ProcId.of(forger.pid)
    assert ident is not None
    as_nobody(
        "import sys; f = open(sys.argv[1], 'r+'); f.write(sys.argv[2]); f.truncate()",
        str(path),
        _claim(forger.pid, ident.start_ticks),
    )
    with pytest.raises(AlreadyRunning) as ei:
        SingleInstanceLock(path).acquire()
    assert ei.value.holder is not None and ei.value.holder.pid == forger.pid
    msg = str(ei.value)
    _no_control(msg)
    assert "\\x1b]0;pwned\\x07train.py \\x1b[2J \\x9b31m" in msg.replace("'", "")
    r = pg("locks", "--dir", str(root_dir))
    _no_control(r.stdout + r.stderr)
    assert "\\x1b" in r.stdout


def test_forged_stale_metadata_is_not_trusted(shared: Path) -> None:
    path = shared / "left.lock"
    as_nobody("import sys; open(sys.argv[1], 'w').write(sys.argv[2])", str(path), _claim(1, 1))
    r = pg("locks", "--dir", str(shared))
    assert r.returncode == 0, r.stderr
    _no_control(r.stdout + r.stderr)
    assert "[untrusted metadata]" in r.stdout and "pwned" not in r.stdout
    r = pg("locks", "--json", "--dir", str(shared))
    [o] = json.loads(r.stdout)
    assert (o["stale"], o["holder"], o["metadata_trusted"]) == (True, None, False)
    assert o["metadata_problem"] == f"the lock file is owned by uid {NOBODY_UID}"


# ---------------------------------------------------------------- clean-stale


def _root_stale(folder: Path) -> Path:
    """A stale managed lock file of root's: metadata naming a process that has exited."""
    folder.mkdir(exist_ok=True)
    gone = subprocess.run(
        [PY, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    path = folder / "s.lock"
    path.write_text(json.dumps({"procguard": 1, "pid": int(gone.stdout), "argv": ["python", "x.py"]}))
    assert stale_lock_files([folder]) == [path]
    return path


def test_clean_stale_never_unlinks_through_a_symlink(shared: Path, tmp_path: Path) -> None:
    stale = _root_stale(tmp_path / "rootlocks")
    link = shared / "x.lock"
    _plant_link(link, stale)
    assert clean_stale_locks(paths=[link]) == []
    assert clean_stale_locks([shared]) == []
    r = pg("locks", "--clean-stale", "--dir", str(shared))
    assert (r.returncode, r.stdout) == (0, "no stale lock files\n"), r.stderr
    assert link.is_symlink() and stale.exists()
    # A folder on the way that nobody linked: refused, one line, nothing removed.
    _plant_link(shared / "dl", stale.parent)
    assert clean_stale_locks([shared / "dl"]) == []
    assert clean_stale_locks(paths=[shared / "dl" / "s.lock"]) == []
    r = pg("locks", "--clean-stale", "--dir", str(shared / "dl"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"is a symlink owned by uid {NOBODY_UID}" in r.stderr
    assert stale.exists()


def test_clean_stale_never_unlinks_in_nobodys_folder(shared: Path) -> None:
    nd = shared / "nd"
    as_nobody(
        "import os, sys; os.mkdir(sys.argv[1], 0o755); open(os.path.join(sys.argv[1], 's.lock'), 'w')"
        ".write(sys.argv[2])",
        str(nd),
        json.dumps({"procguard": 1, "pid": 1, "argv": ["x"]}),
    )
    stale = nd / "s.lock"
    assert stale_lock_files([nd]) == [stale]
    assert clean_stale_locks([nd]) == []
    assert clean_stale_locks(paths=[stale]) == []
    r = pg("locks", "--clean-stale", "--dir", str(nd))
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        f"procguard: error: --dir {nd}: the folder is owned by uid {NOBODY_UID}; "
        "not cleaning another user's folder\n"
    )
    assert stale.exists() and stale.stat().st_uid == NOBODY_UID
