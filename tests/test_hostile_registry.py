"""Issue 12, attacks 1 and 2, played for real: `nobody` (through setpriv) against root's registry and flush.

1. A forged registry entry must never make root signal a process: nobody copies the entry of their own guarded
   process to `<victim>.json` with flush signal 9; root's `procguard flush <victim>` exits 2 and the victim
   lives, whatever the forged entry says (even the victim's right start ticks).
2. Root never writes where nobody can reach: nobody pre-creates root's predictable fallback registry folders
   and plants an entry and symlinks named like temp files pointing at a root-owned file; root's register and
   flush write nothing there, and readers don't prune nobody's files.

Every procguard call runs as its own process with TMPDIR pointing at a per-test temp dir (root-owned, sticky,
world-writable like /tmp), no PROCGUARD_REGISTRY_DIR and no XDG_RUNTIME_DIR, so the default registry
candidates are exercised without touching the machine's real /tmp/procguard-0.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from procguard.core import procfs
from tests.conftest import NOBODY, NOBODY_UID, ProcStarter, needs_root, proc_state

pytestmark = needs_root

PY = sys.executable

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


def as_nobody(code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
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
        as_nobody("import os, sys; os.makedirs(sys.argv[1], mode=0o700)", str(dest.parent), env=env)
    as_nobody(FORGE, str(entry), str(dest), json.dumps(changes), env=env)
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
    as_nobody(code, str(entry), str(secret), *map(str, folders), env=env)
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
    as_nobody(FORGE, str(entry), str(stale), json.dumps({"pid": 1, "start_ticks": 1}), env=env)
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
