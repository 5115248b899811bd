"""Single-instance locks and the machine-wide lock view: real processes, real files, real /proc."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from procguard.core.held_locks import holders_of
from procguard.core.lockfile import in_lock_dir, parse_metadata
from procguard.core.locks import (
    AlreadyRunning,
    HeldLock,
    LockError,
    LockScanner,
    SingleInstanceLock,
    clean_stale_locks,
    held_locks,
    list_locks,
    lock_dir,
    lock_path_for,
    read_holder,
    stale_lock_files,
)
from tests.conftest import ProcStarter, wait_for

PY = sys.executable
linux_only = pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs /proc/locks")

# Holds the lock named by argv[1] until SIGTERM (which leaves the `with` block: unlink + close).
HOLD = """
import signal, sys, time
from procguard.core.locks import SingleInstanceLock
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
with SingleInstanceLock(sys.argv[1]):
    print("ready", flush=True)
    while True:
        time.sleep(60)
"""

# Waits for the lock (argv[2]: timeout seconds, "none" = for good), then says so and holds it.
WAIT = """
import sys, time
from procguard.core.locks import SingleInstanceLock
timeout = None if sys.argv[2] == "none" else float(sys.argv[2])
lock = SingleInstanceLock(sys.argv[1], blocking=True, timeout=timeout)
print("ready", flush=True)
lock.acquire()
print("acquired", flush=True)
while True:
    time.sleep(60)
"""


def _real(p: Path | str) -> str:
    return os.path.realpath(p)


def _locks_on(path: Path | str) -> list[HeldLock]:
    return [h for h in held_locks() if h.path == _real(path)]


def _next_line(p: subprocess.Popen[bytes]) -> str:
    assert p.stdout is not None
    return p.stdout.readline().decode().strip()


def _hold(procs: ProcStarter, lock: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return procs.python(HOLD, str(lock), env=env, name="holder")


def _leave_stale(procs: ProcStarter, path: Path) -> int:
    """A lock file whose holder died by SIGKILL: the file and its metadata stay, the lock is gone."""
    p = _hold(procs, path)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    return p.pid


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private runtime dir for this test, so bare lock names land under tmp_path."""
    d = tmp_path / "xdg"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return d


@pytest.fixture(autouse=True)
def _no_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    # A test run under a launcher must not turn every lock here into a no-op.
    for var in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------- names, folders, metadata


def test_bare_name_maps_into_private_runtime_lock_dir(xdg: Path) -> None:
    d = lock_dir()
    assert d == xdg / "procguard" / "locks"
    assert d.stat().st_mode & 0o777 == 0o700
    assert lock_path_for("train") == d / "train.lock"
    assert lock_path_for("train.lock") == d / "train.lock"  # suffix not doubled
    assert lock_path_for("runs/a.lock") == Path.cwd() / "runs" / "a.lock"  # has a separator: a path
    assert lock_path_for(Path("x")) == Path.cwd() / "x"  # PathLike is always a path
    with pytest.raises(ValueError):
        lock_path_for("")


def test_lock_dir_falls_back_to_private_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    (xdg / "procguard").write_text("a file where the runtime folder should be")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    d = lock_dir()
    assert d == tmp_path / "tmp" / f"procguard-{os.geteuid()}" / "locks"
    assert d.stat().st_mode & 0o777 == 0o700
    assert d.parent.stat().st_mode & 0o777 == 0o700


def test_metadata_parsing_tolerates_partial_and_stale_tails() -> None:
    assert parse_metadata(b"", "p") is None
    assert parse_metadata(b'{"procguard":1,"pi', "p") is None  # caught mid-write
    assert parse_metadata(b'{"other":1,"pid":3}', "p") is None  # not ours
    h = parse_metadata(b'{"procguard":1,"pid":5,"argv":["python","a.py"]}"argv":["old tail"]}\n', "p")
    assert h is not None and h.pid == 5 and h.argv == ("python", "a.py")


def test_context_manager_writes_metadata_and_unlinks_on_release(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "job.lock"  # missing parent is created
    lock = SingleInstanceLock(path)
    with lock:
        assert lock.held and not lock.is_noop
        h = read_holder(path)
        assert h is not None
        assert h.pid == os.getpid()
        assert h.cwd == os.getcwd()
        assert h.host
        assert h.version
        assert h.start_time is not None and h.acquired_at is not None
        assert h.argv and h.path == str(path)
        with pytest.raises(AlreadyRunning) as ei:  # another lock object, same process
            SingleInstanceLock(path).acquire()
        assert ei.value.holder is not None and ei.value.holder.pid == os.getpid()
    assert not lock.held
    assert not path.exists()
    lock.release()  # idempotent
    assert lock.acquire() is lock and lock.held  # reusable
    lock.release()


def test_forked_child_release_leaves_parent_lock_alone(tmp_path: Path) -> None:
    path = tmp_path / "f.lock"
    lock = SingleInstanceLock(path).acquire()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                lock.release()
                os._exit(0 if path.exists() else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert path.exists()
        with pytest.raises(AlreadyRunning):
            SingleInstanceLock(path).acquire()
    finally:
        lock.release()


# ---------------------------------------------------------------- refusals, death, waiting


def test_already_running_names_the_holder(procs: ProcStarter, xdg: Path) -> None:
    p = _hold(procs, "train", env={**os.environ, "XDG_RUNTIME_DIR": str(xdg)})
    with pytest.raises(AlreadyRunning) as ei:
        SingleInstanceLock("train").acquire()
    e = ei.value
    assert e.holder is not None and e.holder.pid == p.pid
    assert e.path == xdg / "procguard" / "locks" / "train.lock"
    msg = str(e)
    assert msg.startswith(f"train.lock is held by pid {p.pid} (")
    assert "holder_0.py train)" in msg and ", running since " in msg
    again = pickle.loads(pickle.dumps(e))  # e.g. raised in a multiprocessing worker
    assert str(again) == msg and again.holder == e.holder
    # A path names itself in full.
    with pytest.raises(AlreadyRunning) as ei2:
        SingleInstanceLock(e.path).acquire()
    assert str(ei2.value).startswith(f"{e.path} is held by pid {p.pid} ")


def test_sigkilled_holder_frees_the_lock_at_once(procs: ProcStarter, tmp_path: Path) -> None:
    path = tmp_path / "k.lock"
    dead = _leave_stale(procs, path)
    h = read_holder(path)
    assert h is not None and h.pid == dead  # the file and its metadata outlive the holder
    with SingleInstanceLock(path) as lock:  # non-blocking: free right away
        assert lock.held
        h2 = read_holder(path)
        assert h2 is not None and h2.pid == os.getpid()  # rewritten by the new holder
        assert str(dead) not in path.read_text().split('"argv"')[0]


def test_blocking_waiter_with_timeout(procs: ProcStarter, tmp_path: Path) -> None:
    path = tmp_path / "w.lock"
    holder = _hold(procs, path)
    with pytest.raises(AlreadyRunning) as ei:
        SingleInstanceLock(path, timeout=0.2).acquire()
    assert ei.value.holder is not None and ei.value.holder.pid == holder.pid
    assert ei.value.waited == 0.2 and "gave up after waiting 0.2s" in str(ei.value)

    polling = procs.python(WAIT, str(path), "60", name="poller")
    forever = procs.python(WAIT, str(path), "none", name="sleeper")
    # The waiter without a timeout sleeps in flock: the kernel lists it as blocked on the holder's lock.
    wait_for(lambda: any(forever.pid in h.waiters for h in _locks_on(path)))
    holder.terminate()  # leaves its `with` block: unlink, then close
    assert holder.wait() == 0
    first = wait_for(lambda: read_holder(path))
    assert first.pid in (polling.pid, forever.pid)  # type: ignore[attr-defined]
    winner = polling if first.pid == polling.pid else forever  # type: ignore[attr-defined]
    loser = forever if winner is polling else polling
    assert _next_line(winner) == "acquired"
    held = _locks_on(path)
    assert [h.pid for h in held] == [winner.pid]  # the loser waits on the new file, not the old inode
    winner.terminate()  # no handler: dies without unlinking, like a crash
    winner.wait()
    assert _next_line(loser) == "acquired"
    wait_for(lambda: [h.pid for h in _locks_on(path)] == [loser.pid])


# ---------------------------------------------------------------- mutual exclusion under stress

STRESS = """
import os, sys, time
from procguard.core.locks import AlreadyRunning, SingleInstanceLock
d, go, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
path, marker, counter = (os.path.join(d, x) for x in ("stress.lock", "inside", "counter"))
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
violations = 0
for _ in range(n):
    lock = SingleInstanceLock(path, blocking=mode == "block", timeout=60.0 if mode == "poll" else None)
    while True:
        try:
            lock.acquire()
            break
        except AlreadyRunning:
            time.sleep(0.001)  # mode "try": non-blocking attempts until one succeeds
    try:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            violations += 1
            fd = None
        with open(counter, "r+") as f:  # a lost update is a second sign of overlap
            v = int(f.read() or 0)
            f.seek(0)
            f.write(str(v + 1))
            f.truncate()
        if fd is not None:
            os.close(fd)
            os.unlink(marker)
    finally:
        lock.release()
print("done", violations, flush=True)
"""

CLEANER = """
import os, sys, time
from procguard.core.locks import clean_stale_locks
d, go, stop = sys.argv[1:4]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
removed = 0
while not os.path.exists(stop):
    removed += len(clean_stale_locks([d]))
print("cleaned", removed, flush=True)
"""


@linux_only
def test_stress_never_two_inside_despite_unlink_and_cleaner(procs: ProcStarter, tmp_path: Path) -> None:
    # A procguard-style lock folder: a fresh, still-empty lock file counts as managed there, so the
    # concurrent cleaner races acquirers on brand-new files too.
    d = tmp_path / "procguard" / "locks"
    d.mkdir(parents=True)
    (d / "counter").write_text("0")
    go, stop = tmp_path / "go", tmp_path / "stop"
    cycles = 300
    modes = ["block"] * 4 + ["poll"] * 2 + ["try"] * 2
    workers = [procs.python(STRESS, str(d), str(go), str(cycles), m, name=f"stress_{m}") for m in modes]
    cleaner = procs.python(CLEANER, str(d), str(go), str(stop), name="cleaner")
    go.touch()
    results = []
    for w in workers:
        assert w.stdout is not None
        out = w.stdout.read().decode()
        assert w.wait() == 0, out
        results.append(out.split())
    stop.touch()
    assert cleaner.wait() == 0
    assert _next_line(cleaner).startswith("cleaned ")
    assert results == [["done", "0"]] * len(modes)
    assert int((d / "counter").read_text()) == cycles * len(modes)
    assert not (d / "inside").exists()


# ---------------------------------------------------------------- the machine-wide view

FORK_HOLD = """
import os, sys, time
from procguard.core.locks import SingleInstanceLock
lock = SingleInstanceLock(sys.argv[1]).acquire()
child = os.fork()
if child == 0:
    while True:
        time.sleep(60)
with open(sys.argv[2], "w") as f:
    f.write(str(child))
print("ready", flush=True)
while True:
    time.sleep(60)
"""


@linux_only
def test_forked_child_sharing_the_descriptor_is_a_holder(procs: ProcStarter, tmp_path: Path) -> None:
    path = tmp_path / "fork.lock"
    parent = procs.python(FORK_HOLD, str(path), str(tmp_path / "child.pid"), name="forker")
    child = int((tmp_path / "child.pid").read_text())
    procs.track(child)
    [lk] = _locks_on(path)
    assert lk.kind == "flock" and lk.mode == "write"
    assert lk.pid == parent.pid
    assert lk.holders == tuple(sorted((parent.pid, child)))
    assert lk.managed and lk.holder is not None and lk.holder.pid == parent.pid
    assert lk.warning is None

    # The caller exits; /proc/locks still names it, but only the child holds the lock now.
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    [lk] = _locks_on(path)
    assert lk.pid == child and lk.holders == (child,)
    assert lk.warning is not None and str(parent.pid) in lk.warning and str(child) in lk.warning
    st = path.stat()
    assert holders_of(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) == (child,)
    with pytest.raises(AlreadyRunning) as ei:
        SingleInstanceLock(path).acquire()
    assert ei.value.holders == (child,)
    # The metadata names the exited parent, not the real holder: it is not repeated as the holder's word.
    assert ei.value.holder is None and ei.value.metadata is not None and ei.value.metadata.pid == parent.pid
    msg = str(ei.value)
    assert msg.startswith(f"{path} is held by pid {child} (")
    assert f"it names pid {parent.pid}, which does not hold the lock (pid {child} does)" in msg
    assert stale_lock_files([tmp_path]) == []


KINDS = """
import fcntl, os, struct, sys, time
a, b, c, d = sys.argv[1:5]
fa = open(a, "w")
fcntl.flock(fa, fcntl.LOCK_EX)
fb = open(b, "w")
fcntl.lockf(fb, fcntl.LOCK_EX)
fc = os.open(c, os.O_RDWR | os.O_CREAT)
# struct flock: l_type, l_whence, l_start, l_len, l_pid (+ padding); F_OFD_SETLK is 37 on Linux.
fcntl.fcntl(fc, getattr(fcntl, "F_OFD_SETLK", 37), struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
fd_ = open(d, "w")
fcntl.flock(fd_, fcntl.LOCK_SH)
print("ready", flush=True)
while True:
    time.sleep(60)
"""


@linux_only
def test_flock_posix_ofd_and_shared_locks_all_listed(procs: ProcStarter, tmp_path: Path) -> None:
    a, b, c, d = (tmp_path / n for n in ("a.flock", "b.posix", "c.ofd", "d.shared"))
    p = procs.python(KINDS, str(a), str(b), str(c), str(d), name="kinds")
    with open(d) as f:
        fcntl.flock(f, fcntl.LOCK_SH)  # a second reader, from this process
        [la], [lb], [lc] = _locks_on(a), _locks_on(b), _locks_on(c)
        assert (la.kind, la.mode, la.pid, la.holders) == ("flock", "write", p.pid, (p.pid,))
        assert (lb.kind, lb.mode, lb.pid, lb.holders) == ("posix", "write", p.pid, (p.pid,))
        assert (lc.kind, lc.mode, lc.pid, lc.holders) == ("ofd", "write", p.pid, (p.pid,))
        assert not (la.managed or lb.managed or lc.managed) and la.holder is None
        st = a.stat()
        assert la.device == (os.major(st.st_dev), os.minor(st.st_dev)) and la.inode == st.st_ino
        shared = _locks_on(d)
        assert sorted((h.kind, h.mode, h.holders) for h in shared) == sorted(
            [("flock", "read", (p.pid,)), ("flock", "read", (os.getpid(),))]
        )
    assert all(h.managed for h in held_locks(managed_only=True))


FORK_LATER = """
import os, sys, time
from procguard.core.locks import SingleInstanceLock
lock = SingleInstanceLock(sys.argv[1]).acquire()
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
child = os.fork()
if child == 0:
    while True:
        time.sleep(60)
with open(sys.argv[3] + ".tmp", "w") as f:
    f.write(str(child))
os.rename(sys.argv[3] + ".tmp", sys.argv[3])
while True:
    time.sleep(60)
"""


@linux_only
def test_scanner_follows_holders_between_full_scans(procs: ProcStarter, tmp_path: Path) -> None:
    # No periodic full scan during the test: what it finds, it finds by following likely holders (or by the
    # full scans that new, unexplained locks trigger).
    scanner = LockScanner(full_scan_interval=3600)
    path, go, pidfile = tmp_path / "s.lock", tmp_path / "go", tmp_path / "child.pid"

    def mine() -> dict[str, HeldLock]:
        return {h.path: h for h in scanner.held_locks() if h.path.startswith(_real(tmp_path))}

    scanner.held_locks()
    p = procs.python(FORK_LATER, str(path), str(go), str(pidfile), name="forklater")
    lk = mine()[_real(path)]
    assert lk.holders == (p.pid,) and lk.managed and lk.holder is not None and lk.holder.pid == p.pid
    go.touch()  # now the holder forks: the child shares the lock
    wait_for(pidfile.exists)
    child = int(pidfile.read_text())
    procs.track(child)
    wait_for(lambda: mine()[_real(path)].holders == tuple(sorted((p.pid, child))))
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    lk = mine()[_real(path)]
    assert (lk.pid, lk.holders) == (child, (child,)) and lk.warning is not None

    a, b, c, d = (tmp_path / n for n in ("a", "b", "c", "d"))
    k = procs.python(KINDS, str(a), str(b), str(c), str(d), name="kinds")
    got = mine()
    assert {n: (got[_real(n)].kind, got[_real(n)].holders) for n in (a, b, c, d)} == {
        a: ("flock", (k.pid,)),
        b: ("posix", (k.pid,)),
        c: ("ofd", (k.pid,)),
        d: ("flock", (k.pid,)),
    }
    assert mine() == {h.path: h for h in held_locks() if h.path.startswith(_real(tmp_path))}


# ---------------------------------------------------------------- stale files


@linux_only
def test_stale_files_are_cleaned_and_held_ones_are_not(procs: ProcStarter, tmp_path: Path) -> None:
    d = tmp_path / "locks"
    d.mkdir()
    held, stale = d / "held.lock", d / "stale.lock"
    holder = _hold(procs, held)
    dead = _leave_stale(procs, stale)
    (d / "other.lock").write_text("some other tool's lock file\n")  # not ours: never touched
    (d / "empty.lock").touch()  # empty and not in a procguard folder: can't tell it's ours
    (d / "notes.txt").write_text('{"procguard": 1, "pid": 1}')  # not a *.lock file

    assert stale_lock_files([d]) == [stale]
    entries = list_locks([d])
    assert [(e.path, e.stale, e.pid) for e in entries] == [
        (_real(held), False, holder.pid),
        (_real(stale), True, None),
    ]
    assert entries[1].holder is not None and entries[1].holder.pid == dead
    assert clean_stale_locks(paths=[held]) == []  # held: refused even when named
    assert clean_stale_locks([d]) == [stale]
    assert not stale.exists()
    assert held.exists() and (d / "other.lock").exists() and (d / "empty.lock").exists()
    assert [h.pid for h in _locks_on(held)] == [holder.pid]
    assert clean_stale_locks([d]) == []

    # In a procguard lock folder, a bare *.lock file (holder died before writing metadata) is ours.
    pg = tmp_path / "procguard" / "locks"
    pg.mkdir(parents=True)
    (pg / "crashed.lock").touch()
    assert in_lock_dir(pg / "crashed.lock")
    assert clean_stale_locks([pg]) == [pg / "crashed.lock"]


# ---------------------------------------------------------------- distributed launches


def test_non_zero_rank_is_a_reported_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rank.lock"
    monkeypatch.setenv("RANK", "3")
    with SingleInstanceLock(path) as lock:
        assert lock.is_noop and not lock.held
        assert lock.noop_reason == "rank 3 of a distributed launch: only rank 0 holds the lock"
        assert not path.exists()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with SingleInstanceLock(path) as lock:
        assert lock.is_noop and "local rank 1" in (lock.noop_reason or "")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with SingleInstanceLock(path) as lock:
        assert lock.held and not lock.is_noop and path.exists()


# ---------------------------------------------------------------- errors name the path


def test_directory_and_bad_parent_paths_raise_lock_error(tmp_path: Path) -> None:
    d = tmp_path / "adir"
    d.mkdir()
    with pytest.raises(LockError) as ei:
        SingleInstanceLock(d).acquire()
    assert str(ei.value) == f"lock path {d} is a directory"
    assert isinstance(ei.value, OSError) and ei.value.filename == str(d)
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(LockError) as ei2:
        SingleInstanceLock(f / "x.lock").acquire()
    assert str(f / "x.lock") in str(ei2.value)


TRY_LOCK = """
import sys
from procguard.core.locks import LockError, SingleInstanceLock
try:
    SingleInstanceLock(sys.argv[1]).acquire()
except LockError as e:
    print(e)
    sys.exit(7)
"""


def test_unwritable_folder_raises_lock_error(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv")
    # World-traversable (pytest's tmp root is 0700): root-owned and 0755, so nobody can't create in it.
    d = Path(tempfile.mkdtemp(prefix="procguard-test-"))
    try:
        d.chmod(0o755)
        path = d / "x.lock"
        r = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PY, "-c", TRY_LOCK, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 7, r.stderr
        assert (
            r.stdout.strip()
            == f"cannot open lock file {path}: permission denied (folder {d} is not writable)"
        )
    finally:
        shutil.rmtree(d)


def test_read_only_filesystem_raises_lock_error(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare")
    ro = tmp_path / "ro"
    ro.mkdir()
    path = ro / "x.lock"
    # A read-only tmpfs in a private mount namespace: nothing outside this one process sees it.
    script = 'mount -t tmpfs -o ro tmpfs "$1" || exit 99; exec "$2" -c "$3" "$4"'
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(ro), PY, TRY_LOCK, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode == 99 or "Operation not permitted" in r.stderr:
        pytest.skip("can't mount a read-only filesystem here")
    assert r.returncode == 7, r.stderr
    assert r.stdout.strip() == f"cannot open lock file {path}: read-only file system"


# ---------------------------------------------------------------- the CLI

CLI = "import sys; from procguard.core.cli import main; sys.exit(main(sys.argv[1:]))"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-c", CLI, "locks", *args], capture_output=True, text=True, timeout=60)


@linux_only
def test_cli_json_and_clean_stale_scoped_to_dir(procs: ProcStarter, tmp_path: Path) -> None:
    pytest.importorskip("procguard.core.cli").main  # noqa: B018 - the dispatcher is another module
    d = tmp_path / "locks"
    d.mkdir()
    held, stale = d / "held.lock", d / "stale.lock"
    holder = _hold(procs, held)
    dead = _leave_stale(procs, stale)

    r = _cli("--json", "--dir", str(d))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    keys = {
        "path",
        "pid",
        "holders",
        "kind",
        "mode",
        "managed",
        "stale",
        "holder",
        "metadata",
        "metadata_trusted",
        "metadata_problem",
    }
    assert all(set(o) == keys for o in out)
    by_path = {o["path"]: o for o in out}
    assert set(by_path) == {_real(held), _real(stale)}
    h = by_path[_real(held)]
    assert (h["pid"], h["holders"], h["kind"], h["mode"], h["managed"], h["stale"]) == (
        holder.pid,
        [holder.pid],
        "flock",
        "write",
        True,
        False,
    )
    assert h["holder"]["pid"] == holder.pid and h["holder"]["argv"][-1] == str(held)
    assert (h["metadata_trusted"], h["metadata_problem"], h["metadata"]) == (True, None, h["holder"])
    s = by_path[_real(stale)]
    assert (s["pid"], s["holders"], s["kind"], s["stale"], s["managed"]) == (None, [], None, True, True)
    assert s["holder"]["pid"] == dead
    assert s["metadata_trusted"] is True  # our own file: what it says about its dead holder is believed

    r = _cli("--dir", str(d))
    assert (
        r.returncode == 0 and "held.lock" in r.stdout and "stale" in r.stdout and str(holder.pid) in r.stdout
    )

    r = _cli("--clean-stale", "--json", "--dir", str(d))
    assert r.returncode == 0, r.stderr
    removed = json.loads(r.stdout)
    assert [(o["path"], o["stale"], o["holder"]["pid"]) for o in removed] == [(_real(stale), True, dead)]
    assert not stale.exists() and held.exists()
    r = _cli("--clean-stale", "--dir", str(d))
    assert (r.returncode, r.stdout.strip()) == (0, "no stale lock files")


def test_cli_usage_error_is_one_line_exit_2(tmp_path: Path) -> None:
    pytest.importorskip("procguard.core.cli").main  # noqa: B018
    r = _cli("--dir", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert r.stderr == f"procguard: error: --dir {tmp_path / 'missing'}: not a folder\n"
    assert r.stdout == ""


# ---------------------------------------------------------------- planted paths, forged metadata (same user)


def test_symlink_at_the_lock_path_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    link = tmp_path / "train.lock"
    link.symlink_to(target)
    with pytest.raises(LockError) as ei:
        SingleInstanceLock(link).acquire()
    assert str(ei.value) == f"lock path {link} is a symlink: refusing to follow it"
    assert ei.value.filename == str(link)
    assert target.read_text() == "keep me\n" and link.is_symlink()
    dangling = tmp_path / "dangling.lock"
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(LockError):
        SingleInstanceLock(dangling).acquire()
    assert not (tmp_path / "would-be-created").exists()


def test_own_symlinked_folders_are_still_followed(tmp_path: Path) -> None:
    # Legitimate setups (a project folder linked from elsewhere) keep working: our own links are followed,
    # relative ones and ".." included.
    real = tmp_path / "a" / "b"
    real.mkdir(parents=True)
    (tmp_path / "via").symlink_to("a/b/../b")
    with SingleInstanceLock(tmp_path / "via" / "sub" / "x.lock") as lock:
        assert lock.held and (real / "sub" / "x.lock").exists()
        [lk] = _locks_on(real / "sub" / "x.lock")
        assert lk.holder is not None and lk.holder.pid == os.getpid()
    assert not (real / "sub" / "x.lock").exists()


def test_hard_linked_lock_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other-name"
    other.write_text("data\n")
    path = tmp_path / "h.lock"
    os.link(other, path)
    with pytest.raises(LockError) as ei:
        SingleInstanceLock(path).acquire()
    assert str(ei.value) == f"lock file {path} has 2 hard links: refusing to write to it"
    assert other.read_text() == "data\n"


def test_lock_error_and_already_running_escape_control_bytes(procs: ProcStarter, tmp_path: Path) -> None:
    d = tmp_path / "evil\x1b]0;title\x07dir"
    d.mkdir()
    with pytest.raises(LockError) as ei:
        SingleInstanceLock(d).acquire()
    assert str(ei.value) == f"lock path {tmp_path}/evil\\x1b]0;title\\x07dir is a directory"
    assert ei.value.filename == str(d)  # the exact path stays available to code
    # A holder whose own argv (the metadata agrees with it) holds control bytes: shown, escaped.
    path = tmp_path / "run\x1b[2J.lock"
    p = _hold(procs, path)
    with pytest.raises(AlreadyRunning) as ei2:
        SingleInstanceLock(path).acquire()
    msg = str(ei2.value)
    assert ei2.value.holder is not None and ei2.value.holder.pid == p.pid
    assert "run\\x1b[2J.lock" in msg and "\x1b" not in msg


def test_big_lock_file_is_not_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.lock"
    path.write_bytes(b'{"procguard":1,"pid":1}' + b" " * (64 * 1024))
    assert read_holder(path, wait=0) is None


# Holds a flock on argv[1] and writes argv[2] into it as its "metadata": whatever it likes.
FORGE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
# The claim comes on stdin: in argv it would show in the holder's real command line.
os.write(fd, sys.stdin.readline().rstrip("\\n").encode())
print("ready", flush=True)
sys.stdin.read()
"""


def forged_metadata(pid: int) -> str:
    """Metadata naming `pid` (its true start time), with an argv and cwd full of terminal escapes."""
    from procguard.core.procid import ProcId

    ident = ProcId.of(pid)
    assert ident is not None
    return json.dumps(
        {
            "procguard": 1,
            "pid": pid,
            "start_ticks": ident.start_ticks,
            "start_time": ident.create_time,
            "argv": ["python", "\x1b]0;pwned\x07train.py", "\x1b[2J"],
            "cwd": "/root\x1b[31m",
            "host": socket.gethostname(),
            "version": "1",
        }
    )


def _forge(
    procs: ProcStarter, path: Path, content: str, prefix: list[str] | None = None
) -> subprocess.Popen[bytes]:
    p = procs.popen(
        [*(prefix or []), PY, "-c", FORGE, str(path), "\x1b[2J"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert p.stdin is not None
    p.stdin.write(content.encode() + b"\n")
    p.stdin.flush()
    procs.wait_ready(p)
    return p


@linux_only
def test_metadata_naming_another_process_is_not_believed(procs: ProcStarter, tmp_path: Path) -> None:
    path = tmp_path / "forged.lock"
    forger = _forge(procs, path, forged_metadata(os.getpid()))  # claims to be this test process
    with pytest.raises(AlreadyRunning) as ei:
        SingleInstanceLock(path).acquire()
    e = ei.value
    assert e.holders == (forger.pid,) and e.holder is None
    assert e.metadata is not None and e.metadata.pid == os.getpid() and "\x1b[2J" in e.metadata.argv
    msg = str(e)
    assert msg.startswith(f"{path} is held by pid {forger.pid} (")
    assert f"it names pid {os.getpid()}, which does not hold the lock (pid {forger.pid} does)" in msg
    assert "pwned" not in msg and "/root" not in msg  # the self-description is not repeated
    assert not any(c in msg for c in "\x1b\x07")
    again = pickle.loads(pickle.dumps(e))
    assert str(again) == msg and again.metadata == e.metadata and again.holder is None

    [lk] = _locks_on(path)
    assert lk.holders == (forger.pid,) and lk.holder is None and lk.metadata == e.metadata
    assert lk.metadata_trusted is False and lk.warning is not None and str(forger.pid) in lk.warning

    r = _cli("--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert not any(c in r.stdout + r.stderr for c in "\x1b\x07")
    [row] = [ln for ln in r.stdout.splitlines() if ln.startswith(str(forger.pid))]
    assert "[metadata disagrees]" in row and "python3 -c" in row and "pwned" not in row  # its real argv
    assert f"warning: {_real(path)}: lock file metadata ignored: it names pid {os.getpid()}" in r.stdout
    r = _cli("--json", "--dir", str(tmp_path))
    [o] = json.loads(r.stdout)
    assert (o["pid"], o["holder"], o["metadata_trusted"]) == (forger.pid, None, False)
    assert o["metadata"]["argv"] == ["python", "\x1b]0;pwned\x07train.py", "\x1b[2J"]  # exact in JSON


@linux_only
def test_metadata_with_a_reused_pid_is_not_believed(procs: ProcStarter, tmp_path: Path) -> None:
    path = tmp_path / "reused.lock"
    forger = _forge(procs, path, "{}")
    # The live holder's pid, but another start time: what an earlier process with this pid would have written.
    meta = json.loads(forged_metadata(forger.pid))
    meta["start_ticks"] -= 1
    with open(path, "r+") as f:  # same user: the file is writable
        f.write(json.dumps(meta))
        f.truncate()
    with pytest.raises(AlreadyRunning) as ei:
        SingleInstanceLock(path).acquire()
    assert ei.value.holder is None and ei.value.holders == (forger.pid,)
    assert f"it names pid {forger.pid} but not its start time" in str(ei.value)


@linux_only
def test_clean_stale_never_removes_through_or_a_symlink(procs: ProcStarter, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stale = elsewhere / "s.lock"
    _leave_stale(procs, stale)
    d = tmp_path / "d"
    d.mkdir()
    link = d / "x.lock"
    link.symlink_to(stale)
    assert stale_lock_files([d]) == []
    assert clean_stale_locks(paths=[link]) == []
    assert clean_stale_locks([d]) == []
    assert link.is_symlink() and stale.exists()
    assert clean_stale_locks([elsewhere]) == [stale]  # the file itself, named by its own path, goes
