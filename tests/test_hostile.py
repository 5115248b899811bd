"""The security model's attacks, played for real (issue 12): root runs procguard, and `nobody` (through setpriv)
plays the hostile user. Each test checks the outcome, not the mechanism: the victim lives, the file is untouched,
no root-owned file appears in the user's folders, no raw control byte reaches the CLI's output or the app's
screen. Only processes started here are signalled; every bulk call is scoped to this module's own folders.
Skipped (with the reason) where not root or without setpriv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from textual.pilot import Pilot

from procguard.core import procfs
from procguard.core.held_locks import clean_stale_locks, held_locks, stale_lock_files
from procguard.core.locks import AlreadyRunning, LockError, SingleInstanceLock
from procguard.core.procid import ProcId
from procguard.core.sanitize import safe, safe_join
from procguard.core.signals import Member
from procguard.tui.app import Options, ProcguardApp
from procguard.tui.screens.confirm import ConfirmScreen
from procguard.tui.screens.details import DetailsScreen
from tests.conftest import NOBODY, NOBODY_UID, ProcStarter, is_gone, needs_root, proc_state, wait_for

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")]

PY = sys.executable


# ----------------------------------------------------------------------------------------------------
# Attacks 1 and 2: forged registry entries, root writing in folders another user made
#
# Issue 12, attacks 1 and 2, played for real: `nobody` (through setpriv) against root's registry and flush.
#
# 1. A forged registry entry must never make root signal a process: nobody copies the entry of their own guarded
#    process to `<victim>.json` with flush signal 9; root's `procguard flush <victim>` exits 2 and the victim
#    lives, whatever the forged entry says (even the victim's right start ticks).
# 2. Root never writes where nobody can reach: nobody pre-creates root's predictable fallback registry folders
#    and plants an entry and symlinks named like temp files pointing at a root-owned file; root's register and
#    flush write nothing there, and readers don't prune nobody's files.
#
# Every procguard call runs as its own process with TMPDIR pointing at a per-test temp dir (root-owned, sticky,
# world-writable like /tmp), no PROCGUARD_REGISTRY_DIR and no XDG_RUNTIME_DIR, so the default registry
# candidates are exercised without touching the machine's real /tmp/procguard-0.
# ----------------------------------------------------------------------------------------------------


NOBODY_GUARDED = """
import signal, time
from procguard.core import registry
from procguard.core.flush import install_flush_handler
entry = registry.register(script="nobody-guarded", flush_signal=signal.SIGUSR1)
install_flush_handler()
print(registry.registry_dir() / f"{entry.pid}.json", flush=True)
print("ready", flush=True)
while True:
    time.sleep(60)
"""

# argv: SOURCE_ENTRY DEST [JSON_CHANGES]: copy an entry, changing fields (run as nobody)
FORGE = """
import json, os, sys
src, dst = sys.argv[1], sys.argv[2]
data = json.load(open(src))
data.update(json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
with open(dst, "w") as f:
    json.dump(data, f)
"""


@pytest.fixture
def tmpdir(shared_tmp: Path) -> Path:
    """A /tmp look-alike for this test: root's, sticky, anyone may create in it."""
    t = shared_tmp / "tmp"
    t.mkdir()
    os.chmod(t, 0o1777)
    return t


@pytest.fixture
def env(tmpdir: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("PROCGUARD_REGISTRY_DIR", "XDG_RUNTIME_DIR")}
    e["TMPDIR"] = str(tmpdir)
    for uid in (0, NOBODY_UID):
        if os.path.isdir(f"/run/user/{uid}"):
            pytest.skip(f"/run/user/{uid} exists: the temp-dir registry candidates are not the ones used")
    return e


def reg_as_nobody(code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [*NOBODY, PY, "-c", code, *args], env=env, cwd="/", capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return r


def procguard(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "procguard.core.cli", *args], env=env, cwd="/", capture_output=True, text=True, timeout=120
    )


def nobody_guarded(procs: ProcStarter, env: dict[str, str]) -> tuple[int, Path]:
    """nobody's own guarded process: (pid, its registry entry)."""
    p = procs.popen(
        [*NOBODY, PY, "-c", NOBODY_GUARDED], env=env, cwd="/", start_new_session=True, stdout=subprocess.PIPE
    )
    assert p.stdout is not None
    path = Path(p.stdout.readline().decode().strip())
    procs.wait_ready(p)
    assert path.name == f"{p.pid}.json" and path.stat().st_uid == NOBODY_UID
    return p.pid, path


def victim(procs: ProcStarter) -> int:
    """A root process nobody wants dead: unguarded, started by this test."""
    return procs.popen(["sleep", "600"], start_new_session=True).pid


def sigkill_pending(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        return any(
            line.startswith(("ShdPnd:", "SigPnd:")) and int(line.split()[1], 16) & (1 << 8) for line in f
        )


def assert_alive_and_unsignalled(pid: int) -> None:
    # A SIGKILL sent stays pending until the process dies, and then it is a zombie or gone: neither is seen.
    assert proc_state(pid) not in (None, "Z", "X")
    assert not sigkill_pending(pid)


def files_under(*folders: Path) -> list[Path]:
    out: list[Path] = []
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            out += [Path(root, n) for n in dirs + files]
    return out


# ---------------------------------------------------------------------------------------------- attack 1


@pytest.mark.parametrize("forgery", ["copy", "victim-identity", "root-fallback-folder"])
def test_forged_entry_never_makes_root_signal(
    procs: ProcStarter, env: dict[str, str], tmpdir: Path, forgery: str
) -> None:
    gpid, entry = nobody_guarded(procs, env)
    target = victim(procs)
    ticks = procfs.start_ticks_of(target)
    assert ticks is not None
    changes: dict[str, object] = {"flush_signal": int(signal.SIGKILL)}
    dest = entry.parent / f"{target}.json"
    if forgery != "copy":  # the victim's own identity: right pid, right start ticks
        changes.update(
            pid=target,
            start_ticks=ticks,
            create_time=procfs.create_time(ticks),
            uid=0,
            extra={"start_ticks": ticks},
        )  # where entries before the field kept it too
    if forgery == "root-fallback-folder":  # in a folder named as root's, that nobody made first
        dest = tmpdir / "procguard-0" / "registry" / f"{target}.json"
        reg_as_nobody("import os, sys; os.makedirs(sys.argv[1], mode=0o700)", str(dest.parent), env=env)
    reg_as_nobody(FORGE, str(entry), str(dest), json.dumps(changes), env=env)
    assert dest.stat().st_uid == NOBODY_UID

    r = procguard("flush", str(target), "--timeout", "5", env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and f"pid {target} is not a guarded process" in r.stderr
    assert r.stdout == ""
    assert_alive_and_unsignalled(target)

    # Viewers as root: not shown as guarded; flagged as untrusted when asked for.
    view = subprocess.run(
        [
            PY,
            "-c",
            (
                "import json, sys; from procguard.core import registry; pid = int(sys.argv[1]); "
                "u = registry.get_entry(pid, include_untrusted=True); "
                "print(json.dumps([registry.get_entry(pid) is None, [e.pid for e in registry.read_entries(True)], "
                "u is not None and not u.trusted]))"
            ),
            str(target),
        ],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert view.returncode == 0, view.stderr
    not_found, guarded, flagged = json.loads(view.stdout)
    assert not_found and target not in guarded and gpid in guarded
    assert flagged or forgery == "copy"  # a plain copy names nobody's own pid: flagged under that pid instead

    # Control: nobody's own process, through its real entry, still answers root's flush.
    ok = procguard("flush", str(gpid), "--json", "--timeout", "30", env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["message"] == "no GPU cache to flush: torch not imported"
    assert_alive_and_unsignalled(target)


# ---------------------------------------------------------------------------------------------- attack 2


def plant_root_folders(tmpdir: Path, entry: Path, secret: Path, env: dict[str, str]) -> list[Path]:
    """As nobody: pre-create root's predictable fallback registry folders, with a copy of nobody's entry and
    symlinks named like temp files pointing at `secret`. Returns the folders."""
    folders = [tmpdir / "procguard-0" / "registry", tmpdir / "runtime-0" / "procguard" / "registry"]
    code = """
import os, shutil, sys
entry, secret, gpid = sys.argv[1], sys.argv[2], os.path.basename(sys.argv[1])[:-5]
for d in sys.argv[3:]:
    os.makedirs(d, mode=0o777)
    os.chmod(d, 0o777)
    shutil.copy(entry, os.path.join(d, os.path.basename(entry)))
    for name in (f".{gpid}.json.tmp", f".{gpid}.1.tmp", ".tmp", f".{gpid}.json.aaaaaaaa.tmp"):
        os.symlink(secret, os.path.join(d, name))
"""
    reg_as_nobody(code, str(entry), str(secret), *map(str, folders), env=env)
    return folders


def test_root_never_writes_in_folders_nobody_made(
    procs: ProcStarter, env: dict[str, str], tmpdir: Path, shared_tmp: Path
) -> None:
    gpid, entry = nobody_guarded(procs, env)
    secret = shared_tmp / "root-secret"
    secret.write_text("precious\n")
    before = secret.stat()
    folders = plant_root_folders(tmpdir, entry, secret, env)
    planted = {
        p: os.lstat(p).st_mtime_ns for p in files_under(*[tmpdir / "procguard-0", tmpdir / "runtime-0"])
    }

    # Root flushes nobody's process, registers itself, and runs a guarded job, with nobody's folders in place.
    flushed = procguard("flush", str(gpid), "--json", "--timeout", "30", env=env)
    reg = subprocess.run(
        [
            PY,
            "-c",
            (
                "import sys; from procguard.core import registry, privdir\n"
                "try:\n    e = registry.register(script='root-job')\n"
                "except privdir.PrivateDirError as err:\n    print(err); sys.exit(3)\n"
                "registry.unregister()"
            ),
        ],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )
    g = subprocess.run(
        [
            PY,
            "-W",
            "always",
            "-c",
            (
                "from procguard.core.guard import guard\n"
                "with guard('root-job', lock=False, on_duplicate='ignore', flush_on_exit=False) as g:\n"
                "    assert g.entry is None, g.entry"
            ),
        ],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )

    # The outcome: the target is untouched, and nothing of root's appeared in nobody's folders.
    assert secret.read_text() == "precious\n"
    after = secret.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_uid) == (before.st_ino, before.st_mtime_ns, 0)
    now = files_under(tmpdir / "procguard-0", tmpdir / "runtime-0")
    assert [p for p in now if os.lstat(p).st_uid == 0] == []  # no root-owned file in nobody's folders
    assert {p: os.lstat(p).st_mtime_ns for p in now} == planted  # nothing created, replaced or removed

    # And legitimate use still works: the flush answer arrives; root's register is refused in one line naming
    # nobody's folders (no other candidate is left); a guarded root job goes on unregistered, with a warning.
    assert flushed.returncode == 0, flushed.stderr
    assert json.loads(flushed.stdout)["message"] == "no GPU cache to flush: torch not imported"
    assert reg.returncode == 3, reg.stdout + reg.stderr
    assert reg.stdout.count("\n") == 1 and all(str(d) in reg.stdout for d in folders)
    assert g.returncode == 0 and "could not register" in g.stderr, g.stderr
    assert [p for p in files_under(entry.parent) if os.lstat(p).st_uid == 0] == []


def test_readers_never_prune_another_users_entries(procs: ProcStarter, env: dict[str, str]) -> None:
    gpid, entry = nobody_guarded(procs, env)
    stale = entry.parent / "1.json"  # a stale entry of nobody's: pid 1 with another start time
    reg_as_nobody(FORGE, str(entry), str(stale), json.dumps({"pid": 1, "start_ticks": 1}), env=env)
    r = subprocess.run(
        [
            PY,
            "-c",
            (
                "from procguard.core import registry; import sys; pids = [e.pid for e in registry.read_entries(True)]; "
                "assert registry.get_entry(1) is None; print(pids)"
            ),
        ],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert str(gpid) in r.stdout and "1," not in r.stdout
    assert stale.exists() and stat.S_ISREG(os.lstat(stale).st_mode)  # root left nobody's file alone


# ----------------------------------------------------------------------------------------------------
# Attacks 3 and 5: symlinked lock paths, lock metadata that is only the holder's word
#
# Attacks 3 and 5 of issue 12 on locks: root runs procguard, nobody (through setpriv) plays the hostile user.
#
# Checked outcomes: the planted link's target is untouched, nothing is spawned or written through a link, the
# kernel's holder is named (not the forger's story), no raw control byte reaches the output, clean-stale never
# unlinks through a symlink nor in nobody's folder. Every bulk call is scoped to this test's own folders.
# ----------------------------------------------------------------------------------------------------


CONTROL = "\x1b\x07\x9b"  # ESC, BEL, CSI: any of them raw in the output is a failure


def lk_pg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "procguard.core.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def lk_as_nobody(code: str, *args: str) -> None:
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
    lk_as_nobody("import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(target), str(link))
    assert link.is_symlink() and link.lstat().st_uid == NOBODY_UID


# ---------------------------------------------------------------- attack 3: symlinked lock paths


def test_symlinked_lock_path_is_refused_by_run(shared: Path, tmp_path: Path) -> None:
    target = tmp_path / "root-file"
    target.write_text("root's data\n")
    before = target.stat()
    link = shared / "train.lock"
    _plant_link(link, target)
    marker = tmp_path / "spawned"
    r = lk_pg("run", "--lock", str(link), "--", "touch", str(marker))
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
    r = lk_pg("run", "--lock", str(path), "--", "touch", str(marker))
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
    lk_as_nobody("import sys; open(sys.argv[1], 'w').write('nobody was here\\n')", str(path))
    assert path.stat().st_uid == NOBODY_UID
    marker = tmp_path / "spawned"
    r = lk_pg("run", "--lock", str(path), "--", "touch", str(marker))
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
    r = lk_pg("locks", "--dir", str(shared))
    assert r.returncode == 0, r.stderr
    _no_control(r.stdout + r.stderr)
    [row] = [ln for ln in r.stdout.splitlines() if ln.split()[:1] == [str(forger.pid)]]
    assert "[metadata disagrees]" in row and "pwned" not in row
    assert f"it names pid {os.getpid()}, which does not hold the lock (pid {forger.pid} does)" in r.stdout
    r = lk_pg("locks", "--json", "--dir", str(shared))
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
    r = lk_pg("run", "--lock", str(path), "--", "touch", str(marker))
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
    lk_as_nobody(
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
    r = lk_pg("locks", "--dir", str(root_dir))
    _no_control(r.stdout + r.stderr)
    assert "\\x1b" in r.stdout


def test_forged_stale_metadata_is_not_trusted(shared: Path) -> None:
    path = shared / "left.lock"
    lk_as_nobody("import sys; open(sys.argv[1], 'w').write(sys.argv[2])", str(path), _claim(1, 1))
    r = lk_pg("locks", "--dir", str(shared))
    assert r.returncode == 0, r.stderr
    _no_control(r.stdout + r.stderr)
    assert "[untrusted metadata]" in r.stdout and "pwned" not in r.stdout
    r = lk_pg("locks", "--json", "--dir", str(shared))
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
    r = lk_pg("locks", "--clean-stale", "--dir", str(shared))
    assert (r.returncode, r.stdout) == (0, "no stale lock files\n"), r.stderr
    assert link.is_symlink() and stale.exists()
    # A folder on the way that nobody linked: refused, one line, nothing removed.
    _plant_link(shared / "dl", stale.parent)
    assert clean_stale_locks([shared / "dl"]) == []
    assert clean_stale_locks(paths=[shared / "dl" / "s.lock"]) == []
    r = lk_pg("locks", "--clean-stale", "--dir", str(shared / "dl"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"is a symlink owned by uid {NOBODY_UID}" in r.stderr
    assert stale.exists()


def test_clean_stale_never_unlinks_in_nobodys_folder(shared: Path) -> None:
    nd = shared / "nd"
    lk_as_nobody(
        "import os, sys; os.mkdir(sys.argv[1], 0o755); open(os.path.join(sys.argv[1], 's.lock'), 'w')"
        ".write(sys.argv[2])",
        str(nd),
        json.dumps({"procguard": 1, "pid": 1, "argv": ["x"]}),
    )
    stale = nd / "s.lock"
    assert stale_lock_files([nd]) == [stale]
    assert clean_stale_locks([nd]) == []
    assert clean_stale_locks(paths=[stale]) == []
    r = lk_pg("locks", "--clean-stale", "--dir", str(nd))
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        f"procguard: error: --dir {nd}: the folder is owned by uid {NOBODY_UID}; "
        "not cleaning another user's folder\n"
    )
    assert stale.exists() and stale.stat().st_uid == NOBODY_UID


# ----------------------------------------------------------------------------------------------------
# Attack 4: terminal escapes in process data (CLI text output and the app)
#
# Issue 12, attack 4: terminal escapes from process data, played by an unprivileged user (nobody, via setpriv).
#
# The hostile process's argv holds an OSC title sequence, a clear-screen CSI, an 8-bit CSI (U+009B), a bidi
# override and a newline; its cwd and its script name hold ESC. Root's `procguard` text commands and root's
# procguard-tui must show all of it escaped (``\x1b``), never raw; `--json` keeps the exact values.
#
# Only processes started here are signalled.
# ----------------------------------------------------------------------------------------------------


TITLE = "\x1b]0;pwned\x07"  # OSC: retitles the terminal
CLEAR = "\x1b[2J"  # CSI: blanks the screen
CSI8 = "\x9b31m"  # the 8-bit CSI some terminals honour
BIDI = "\u202eevil"  # right-to-left override: reorders what follows
NEWLINE = "two\nlines"
HOSTILE_ARGS = (TITLE, CLEAR, CSI8, BIDI, NEWLINE)
DIR_NAME = "d\x1b[31m"
SCRIPT_NAME = "s\x1b]2;x\x07.py"

# Anything a terminal could act on: C0 controls but newline, DEL, C1 controls, bidi embeddings/overrides/isolates.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

# Holds a shared flock on its own script (so the Locks view names that path), then waits.
SCRIPT = """\
import fcntl, time
f = open(__file__, "rb")
fcntl.flock(f, fcntl.LOCK_SH)
print("ready", flush=True)
while True:
    time.sleep(0.5)
"""


class Hostile(NamedTuple):
    token: str  # a unique folder name in every hostile command line (what the app filters on)
    folder: Path
    script: Path
    argv: list[str]
    pids: list[int]


def hostile_python() -> str:
    """An interpreter `nobody` can run (the test's own may live under root's home)."""
    for cand in ("/usr/bin/python3", sys.executable):
        if os.access(cand, os.X_OK):
            return cand
    return sys.executable


@pytest.fixture
def hostile(procs: ProcStarter, shared_tmp: Path) -> Iterator[Hostile]:
    """Two runs of the same hostile script (a duplicate group), as nobody, in a folder whose name holds ESC."""
    folder = shared_tmp / DIR_NAME
    folder.mkdir(mode=0o755)
    script = folder / SCRIPT_NAME
    script.write_text(SCRIPT)
    script.chmod(0o644)
    argv = [hostile_python(), str(script), *HOSTILE_ARGS]
    pids = []
    for _ in range(2):
        p = procs.popen([*NOBODY, *argv], cwd=folder, stdout=subprocess.PIPE, start_new_session=True)
        procs.wait_ready(p)
        assert os.stat(f"/proc/{p.pid}").st_uid == NOBODY_UID
        pids.append(p.pid)
    yield Hostile(shared_tmp.name, folder, script, argv, pids)


def assert_clean(data: bytes, what: str) -> str:
    """`data` is UTF-8 (a raw non-UTF-8 byte is a failure too) without a character a terminal acts on."""
    assert 0x1B not in data, f"{what}: raw ESC in {data!r}"
    text = data.decode("utf-8")
    bad = RAW.search(text)
    assert bad is None, f"{what}: raw {bad.group()!r} in {text!r}"
    return text


def term_pg(*args: str) -> tuple[str, str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "procguard.core.cli", *args],
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    what = f"procguard {' '.join(args)}"
    return assert_clean(out.stdout, what), assert_clean(out.stderr, what + " (stderr)"), out.returncode


ESCAPED_ARGS = safe_join(HOSTILE_ARGS)  # \x1b]0;pwned\x07 \x1b[2J \x9b31m \u202eevil two\nlines


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_text_escapes_and_json_keeps_exact_values(hostile: Hostile) -> None:
    pid = hostile.pids[0]
    for args in (["ps"], ["ps", "--tree"], ["ps", "--user", "nobody"]):
        out, _, rc = term_pg(*args)
        assert rc == 0
        rows = [ln for ln in out.splitlines() if ln.split()[:1] == [str(pid)]]
        assert len(rows) == 1, (args, rows)  # one row: the newline in argv did not break it
        assert rows[0].endswith(f"{safe(hostile.script)} {ESCAPED_ARGS}"), rows[0]
        assert "\\x1b]0;pwned\\x07" in rows[0] and "\\u202eevil" in rows[0] and "\\x9b31m" in rows[0]

    out, _, rc = term_pg("ps", "--json")
    row = next(r for r in json.loads(out) if r["pid"] == pid)
    assert row["cmdline"] == hostile.argv and row["username"] == "nobody"  # --json: exact

    out, _, rc = term_pg("term", "--dry-run", "--tree", str(pid))
    assert rc == 0 and f"{safe(hostile.script)} {ESCAPED_ARGS}" in out, out
    out, _, rc = term_pg("term", "--dry-run", "--json", str(pid))
    assert json.loads(out)["targets"][0]["cmdline"] == hostile.argv
    assert not is_gone(pid)  # a dry run signals nothing


def test_cli_action_results_and_errors_are_escaped(hostile: Hostile) -> None:
    pid = hostile.pids[1]
    out, err, rc = term_pg("pause", str(pid))
    assert rc == 0 and ESCAPED_ARGS in out and "1 paused" in err, (out, err)
    wait_for(lambda: proc_state(pid) in ("T", "t"))
    out, err, rc = term_pg("resume", str(pid))
    assert rc == 0 and ESCAPED_ARGS in out, (out, err)
    out, err, rc = term_pg("term", "--grace", "5", str(pid))
    assert rc == 0 and ESCAPED_ARGS in out, (out, err)
    assert is_gone(pid)
    # A bad argument that holds escapes: the one-line error shows them escaped too.
    _, err, rc = term_pg("ps", "--user", CLEAR + TITLE)
    assert rc == 2 and err.startswith("procguard: error: unknown user") and "\\x1b[2J" in err, err


# ---------------------------------------------------------------------------------------------- app


async def wait_until(pilot: Pilot[None], pred: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def screen_text(app: ProcguardApp) -> str:
    """What the screen shows now (a dialog over the main screen, notifications), line by line as the terminal
    gets it: the text of every segment Textual would write. No raw control, bidi-override or C1 character may
    be in it, nor in the SVG screenshot (the public view of the same frame)."""
    svg = app.export_screenshot()
    bad = RAW.search(svg.replace("\n", ""))
    assert bad is None, f"raw {bad.group()!r} in the screenshot"
    # What export_screenshot renders, without the SVG: a full update of the current screen stack.
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    lines = [
        "".join(seg.text for strip in line for seg in strip if not seg.control) for line in update.strips
    ]  # type: ignore[union-attr]
    for y, line in enumerate(lines):
        bad = RAW.search(line)
        assert bad is None, f"raw {bad.group()!r} on screen line {y}: {line!r}"
    return "\n".join(lines)


def scoped_app(token: str, scope: Callable[[Member], bool]) -> ProcguardApp:
    return ProcguardApp(Options(interval=0.3, filter=token, grace=5.0), act_scope=scope)


@pytest.mark.asyncio
async def test_app_views_details_and_confirm_show_escapes(hostile: Hostile) -> None:
    pid = hostile.pids[0]
    app = scoped_app(hostile.token, lambda m: hostile.token in m.command)
    async with app.run_test(size=(220, 50)) as pilot:
        table = app.process_table
        await wait_until(pilot, lambda: table.index_of(("p", pid)) is not None)
        assert table.move_to_key(("p", pid))
        await pilot.pause()
        shown = screen_text(app)
        assert f"{safe(hostile.script)} \\x1b]0;pwned\\x07 \\x1b[2J \\x9b31m \\u202eevil two\\nlines" in shown
        assert "filter “" + hostile.token in shown  # the filter echo

        await pilot.press("enter")
        await wait_until(
            pilot, lambda: isinstance(app.screen, DetailsScreen) and app.screen.extra is not None
        )
        await pilot.pause()
        shown = screen_text(app)
        assert f"cwd  {safe(hostile.folder)}" in shown  # read from /proc/PID/cwd: ESC in it, escaped
        # The full command (the table shows python3's basename: this line is the details screen's).
        assert f"{hostile.argv[0]} {safe(hostile.script)} \\x1b]0;pwned\\x07 \\x1b[2J" in shown, shown
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, DetailsScreen))

        assert table.cursor_key == ("p", pid)
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.pause()
        shown = screen_text(app)  # the blast radius: pid, user, full command; the lock it frees
        assert (
            f"{pid:>7}  nobody     {hostile.argv[0]} {safe(hostile.script)} \\x1b]0;pwned\\x07 \\x1b[2J"
            in shown
        ), shown
        assert f"locks {safe(hostile.script)}" in shown, shown
        await pilot.press("n")
        await wait_until(pilot, lambda: any("cancelled" in t for t, _ in app.notices))
        assert not is_gone(pid)

        await pilot.press("2")  # Duplicates: the two runs, their cwd and args
        await wait_until(
            pilot, lambda: app.query_one("#duplicates-table").index_of(("inst", pid)) is not None
        )
        await pilot.pause()
        shown = screen_text(app)
        assert "\\x1b]0;pwned\\x07" in shown and "d\\x1b[31m" in shown

        await pilot.press("3")  # Locks: the flocked script, path with ESC
        locks = app.query_one("#locks-table")
        await wait_until(pilot, lambda: any(r.key[-1] == str(hostile.script) for r in locks.rows))
        await pilot.pause()
        assert "\\x1b]2;x\\x07.py" in screen_text(app)
    assert all(not is_gone(p) for p in hostile.pids)


@pytest.mark.asyncio
async def test_app_notification_quoting_a_command_is_escaped(hostile: Hostile) -> None:
    """A refused action's notification quotes the command: escaped, never raw (scope refuses everything, so
    nothing is signalled)."""
    pid = hostile.pids[0]
    app = scoped_app(hostile.token, lambda m: False)
    async with app.run_test(size=(220, 50)) as pilot:
        table = app.process_table
        await wait_until(pilot, lambda: table.index_of(("p", pid)) is not None)
        assert table.move_to_key(("p", pid))
        await pilot.press("t")
        await wait_until(pilot, lambda: any("outside this session's scope" in t for t, _ in app.notices))
        await pilot.pause()
        text = next(t for t, _ in app.notices if "outside" in t)
        assert "d\\x1b[31m" in text and "\x1b" not in text, text
        screen_text(app)  # the toast is on screen: nothing raw in it
    assert not is_gone(pid)


def test_hostile_python_is_runnable_by_nobody() -> None:
    """The fixture's interpreter choice works (else the tests above fail for the wrong reason)."""
    out = subprocess.run(
        [*NOBODY, hostile_python(), "-c", "import os; print(os.getuid())"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == str(NOBODY_UID), out.stderr
    assert shutil.which("setpriv")
