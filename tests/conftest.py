"""Shared fixtures. Safety rule: tests only signal processes they started, by PID, and kill them here."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procguard.core.launchenv import DISTRIBUTED_VARS, SCHEDULER_VARS

PY = sys.executable

# Every process the suite starts inherits this marker: at the end of the run any process still carrying it
# (or still a descendant of pytest) is a leak, listed, killed, and the run fails.
RUN_MARKER = "PROCGUARD_TEST_RUN"
os.environ.setdefault(RUN_MARKER, uuid.uuid4().hex)

# What a launcher or batch scheduler sets (core's lists, plus the rendezvous variables): tests scrub them so the
# suite, run inside a job, still sees its own processes as plain runs.
LAUNCH_VARS: tuple[str, ...] = tuple(
    dict.fromkeys((*DISTRIBUTED_VARS, *SCHEDULER_VARS, "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
)

# The hostile side of permission tests: an unprivileged user (nobody) with no supplementary groups.
NOBODY_UID = 65534
NOBODY = ["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_UID}", "--clear-groups"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="plays another user through setpriv: needs root")


class ProcStarter:
    """Starts real processes for a test and SIGKILLs every one of them (and their groups) at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []
        self.extra_pids: list[int] = []

    def popen(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
        self.started.append(p)
        return p

    def python(
        self,
        code: str,
        *args: str,
        new_session: bool = True,
        ready: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        name: str = "child",
    ) -> subprocess.Popen[bytes]:
        """Run `code` in a fresh Python. With ready=True the code must print 'ready' (flushed) once set up."""
        script = self.tmp_path / f"{name}_{len(self.started)}.py"
        script.write_text(textwrap.dedent(code))
        p = self.popen(
            [PY, str(script), *args], start_new_session=new_session, cwd=cwd, env=env, stdout=subprocess.PIPE
        )
        if ready:
            self.wait_ready(p)
        return p

    @staticmethod
    def wait_ready(p: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        assert p.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if line.strip() == b"ready" or not line:
                break
        assert line.strip() == b"ready", f"child {p.pid} never became ready (got {line!r})"

    def track(self, pid: int) -> None:
        """Also kill this pid (e.g. a grandchild) at teardown."""
        self.extra_pids.append(pid)

    def cleanup(self) -> None:
        for p in self.started:
            try:
                if os.getpgid(p.pid) == p.pid:  # its own group: take any children along
                    os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass
            with contextlib.suppress(ProcessLookupError, OSError):
                p.kill()
        for pid in self.extra_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for p in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcStarter]:
    starter = ProcStarter(tmp_path)
    try:
        yield starter
    finally:
        starter.cleanup()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A root-owned 0755 folder under /tmp that `nobody` can reach (pytest's own tmp_path is 0700): make
    sub-folders in it with the modes a test needs. Removed at teardown whatever nobody left in it."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="procguard-test-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def wait_for(pred: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> object:
    """Poll until pred() is truthy; returns its value or fails the test. Not a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s: {pred}")


def proc_state(pid: int) -> str | None:
    """State letter from /proc, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(b")") + 2 : data.rindex(b")") + 3].decode()


def is_gone(pid: int) -> bool:
    """Dead or zombie (zombies count as dead: nobody may be reaping them yet)."""
    s = proc_state(pid)
    return s is None or s in ("Z", "X")


def _marked_pids(marker: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries this run's marker, or that descend from us."""
    me = os.getpid()
    needle = f"{RUN_MARKER}={marker}".encode()
    parents: dict[int, int] = {}
    found: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] in (b"Z", b"X"):
            continue
        parents[pid] = int(fields[1])
        if needle in env.split(b"\0"):
            found.append(pid)
    for pid in parents:
        p, seen = parents.get(pid), 0
        while p and p != me and seen < 64:
            p, seen = parents.get(p), seen + 1
        if p == me and pid not in found:
            found.append(pid)
    return sorted(found)


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f"{pid} " + f.read().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return str(pid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    marker = os.environ.get(RUN_MARKER, "")
    if not marker:
        return
    leftovers = _marked_pids(marker)
    deadline = time.monotonic() + 3.0  # a finalizer's SIGKILL may still be in flight
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.1)
        leftovers = _marked_pids(marker)
    if not leftovers:
        return
    described = [_describe(p) for p in leftovers]
    for pid in leftovers:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    sys.stderr.write(
        "\nprocesses left running by the test suite (now killed):\n  " + "\n  ".join(described) + "\n"
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
