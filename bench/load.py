"""The process load the benchmarks run against: cheap `/bin/sleep` processes (and a few real Pythons).

Safety, in this order:
- every process is started by this module with `os.posix_spawn` (no fork of the harness) through
  `setpriv --pdeathsig KILL` and a check that its parent is still the harness once that is set (`dies_with`),
  so even a SIGKILLed harness leaves nothing behind, not even mid-spawn;
- each carries a unique marker token in its environment (and Pythons in argv too);
- `close()` (also run from atexit and on SIGTERM/SIGHUP/SIGINT) SIGKILLs each process group this module created
  while its leader is still an unreaped child of ours, then every pid it started, by pid, and reaps them;
- `close()` ends with a scan of /proc for the token (like the test suite's session-end check for its own
  marker): any process still carrying it is listed on stderr and SIGKILLed (pinned by a pidfd, token re-checked),
  and `leftovers()` reports it from then on, so the runner and the smoke test fail the run.
- Under the test suite, the suite's run marker (PROCGUARD_TEST_RUN) is passed on too, so its own leak check
  covers the benchmark's processes as well.

Only direct children are reaped here; processes the harness learns about otherwise (forked workers, the tmux
server and its panes) are registered with `track()`, pinned by a pidfd, and SIGKILLed through it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench import procstat

MARK_ENV = "PGBENCH_TOKEN"
TEST_RUN_ENV = "PROCGUARD_TEST_RUN"  # the test suite's per-run marker (tests/conftest.py), passed on when set
SLEEP_SECONDS = "1800"  # a last resort: every load process ends by itself after this
BATCH = 500  # sleepers per process group
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
ENV = shutil.which("env") or "/usr/bin/env"
SLEEP = shutil.which("sleep") or "/bin/sleep"
SH = "/bin/sh"


class LoadError(RuntimeError):
    pass


# Run by sh after setpriv set the parent-death signal: if the parent died before that (a SIGKILL of the harness
# in the middle of starting processes), PPID is no longer the parent's pid and the process ends at once, so no
# process can outlive its parent, not even one started in that window.
_CHECK_PARENT = 'test "$PPID" = "$1" || exit 111; shift; exec "$@"'


def dies_with(parent: int, argv: Sequence[str]) -> list[str]:
    """argv wrapped so that it is SIGKILLed when `parent` (the process that starts it) dies, race-free."""
    return [SETPRIV, "--pdeathsig", "KILL", "--", SH, "-c", _CHECK_PARENT, "sh", str(parent), *argv]


class Load:
    """Starts, resizes and always cleans up the harness's own processes."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or f"pgbench-{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.token}-"))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            MARK_ENV: self.token,
        }
        if os.environ.get(TEST_RUN_ENV):
            self.env[TEST_RUN_ENV] = os.environ[TEST_RUN_ENV]
        if os.environ.get("PYTHONPATH"):  # the apps measured run the same procguard as the harness imports
            self.env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        self._leaked: dict[int, str] = {}  # pid -> command line of processes found alive after the cleanup
        self._children: set[int] = set()  # direct children not yet reaped
        self._leaders: set[int] = set()  # process groups we created whose leader is an unreaped child
        self._tracked: dict[int, int] = {}  # not our children: pid -> pidfd, killed through the pidfd
        self._sleepers: list[int] = []
        self._closed = False
        self._old_handlers: dict[int, object] = {}
        atexit.register(self.close)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    # ------------------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Unwind through every finally block (which close() us); a second signal still ends the harness.
        signal.signal(signum, signal.SIG_DFL)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def close(self) -> None:
        """SIGKILL and reap everything we started. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        # A second Ctrl-C or SIGTERM must not cut the cleanup short: hold them until it is done.
        held = set(self._old_handlers)
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, held)
        except (OSError, ValueError):
            held = set()
        try:
            self.kill_all()
            self._kill_leftovers()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            for sig, old in self._old_handlers.items():
                with contextlib.suppress(TypeError, ValueError):
                    signal.signal(sig, old)  # type: ignore[arg-type]
            if held:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, held)

    def kill_all(self) -> None:
        for pgid in list(self._leaders):
            # Safe: the leader is our unreaped child, so this pgid can't belong to anyone else.
            if self._unreaped_child(pgid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
        for pid in list(self._children):
            self._kill_child(pid)
        for pid in list(self._tracked):
            self._kill_tracked(pid)
        self.reap(list(self._children))
        self._sleepers.clear()

    @staticmethod
    def _unreaped_child(pid: int) -> bool:
        """Still our child and not reaped yet (someone else, e.g. psutil.Process.wait, may have reaped it)."""
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return True

    def leftovers(self) -> list[int]:
        """Processes that carry our token and were still alive after the cleanup (close() killed them), and
        any alive now. Should always be empty after close()."""
        return sorted(set(self._leaked) | set(procstat.pids_with_token(self.token)))

    def _kill_leftovers(self) -> None:
        """The run's end check: every process still carrying our token is a leak; list it, SIGKILL it."""
        deadline = time.monotonic() + 2.0  # SIGKILLs just sent may still be in flight
        found = procstat.pids_with_token(self.token)
        while found and time.monotonic() < deadline:
            time.sleep(0.05)
            found = procstat.pids_with_token(self.token)
        if not found:
            return
        for pid in found:
            self._leaked[pid] = procstat.cmdline_text(pid)
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue  # gone meanwhile
            try:
                if self.token in procstat.environ_text(pid) or self.token in procstat.cmdline_text(pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
            finally:
                os.close(fd)
        self.reap([p for p in found if p in self._children])
        listing = "\n  ".join(f"{pid} {cmd[:160]}" for pid, cmd in sorted(self._leaked.items()))
        print(
            f"bench: processes left running after the cleanup (now killed):\n  {listing}",
            file=sys.stderr,
            flush=True,
        )

    # ------------------------------------------------------------------------------------------ spawning

    def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        pgroup: int | None = 0,
        env: dict[str, str] | None = None,
        quiet: bool = False,
        stdio: tuple[int, int, int] | None = None,
    ) -> int:
        """Start argv (argv[0] looked up in PATH) with the marker and a parent-death SIGKILL.

        pgroup: 0 = a new process group led by this process; a pgid = join that group (one of ours).
        quiet: stdin, stdout and stderr on /dev/null. stdio: file descriptors of ours to use as its 0, 1, 2.
        """
        full = list(argv)
        if cwd is not None:
            full = [ENV, "-C", os.fspath(cwd), "--", *full]
        full = dies_with(os.getpid(), full)
        e = dict(self.env)
        if env:
            e.update(env)
        if pgroup not in (None, 0) and pgroup not in self._leaders:
            raise LoadError(f"process group {pgroup} is not one of ours")
        actions: list[tuple[Any, ...]] = []
        if quiet:
            actions = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        elif stdio is not None:
            actions = [(os.POSIX_SPAWN_DUP2, mine, fd) for fd, mine in enumerate(stdio)]
        pid = os.posix_spawn(full[0], full, e, setpgroup=pgroup, file_actions=actions)
        self._children.add(pid)
        if pgroup == 0:
            self._leaders.add(pid)
        return pid

    def spawn_group(self, argvs: Sequence[Sequence[str]], **kw: object) -> tuple[int, list[int]]:
        """Start argvs in one new process group; returns (pgid, pids)."""
        pids: list[int] = []
        pgid = 0
        for argv in argvs:
            pid = self.spawn(argv, pgroup=pgid, **kw)  # type: ignore[arg-type]
            pgid = pgid or pid
            pids.append(pid)
        return pgid, pids

    def track(self, pids: Iterable[int]) -> None:
        """Also SIGKILL these (not our children) at cleanup. Each is pinned with a pidfd now and checked to
        carry our token, so a pid reused later is never hit."""
        for pid in pids:
            if pid in self._tracked:
                continue
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue  # gone already
            if self.token in procstat.environ_text(pid):
                self._tracked[pid] = fd
            else:
                os.close(fd)

    def _kill_tracked(self, pid: int) -> None:
        fd = self._tracked.pop(pid, None)
        if fd is None:
            return
        try:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        finally:
            os.close(fd)

    @staticmethod
    def sleep_argv() -> list[str]:
        return [SLEEP, SLEEP_SECONDS]

    @staticmethod
    def ignoring_argv() -> list[str]:
        """A process that ignores SIGTERM: a shell sets SIG_IGN, which survives its exec into sleep."""
        return [SH, "-c", f'trap "" TERM; exec {SLEEP} {SLEEP_SECONDS}']

    def wait_exec(self, pids: Iterable[int], name: str = "sleep", timeout: float = 60.0) -> None:
        """Wait until every pid has exec'd into `name` (past setpriv/env/sh), so it is what we think it is."""
        pending = set(pids)
        deadline = time.monotonic() + timeout
        while pending:
            pending = {p for p in pending if procstat.comm(p) != name}
            if not pending:
                return
            if time.monotonic() > deadline:
                raise LoadError(f"{len(pending)} load processes never became {name!r}")
            time.sleep(0.005)

    # ------------------------------------------------------------------------------------------ stopping

    def stop(self, pids: Iterable[int]) -> None:
        """SIGKILL our own pids and reap them."""
        pids = list(pids)
        for pid in pids:
            if pid in self._children:
                self._kill_child(pid)
            else:
                self._kill_tracked(pid)
        self.reap([p for p in pids if p in self._children])

    def reap(self, pids: Iterable[int], timeout: float = 10.0) -> None:
        """Reap our children that have exited (or are about to); forget them."""
        pending = [p for p in pids if p in self._children]
        deadline = time.monotonic() + timeout
        while pending:
            rest = []
            for pid in pending:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid  # already reaped (e.g. by psutil.Process.wait)
                if done:
                    self._forget(pid)
                else:
                    rest.append(pid)
            pending = rest
            if pending:
                if time.monotonic() > deadline:
                    return  # still ours; close() tries again
                time.sleep(0.002)

    def wait_child(self, pid: int, timeout: float) -> int | None:
        """Wait for a child of ours to exit by itself (SIGKILLed after `timeout`); its exit status, or None."""
        deadline = time.monotonic() + timeout
        while pid in self._children:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self._forget(pid)
                return None
            if done:
                self._forget(pid)
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                self.stop([pid])
                return None
            time.sleep(0.01)
        return None

    def _kill_child(self, pid: int) -> None:
        """SIGKILL a child of ours, unless someone already reaped it (then its pid may be another process's)."""
        if self._unreaped_child(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        else:
            self._forget(pid)

    def _forget(self, pid: int) -> None:
        self._children.discard(pid)
        self._leaders.discard(pid)

    # ------------------------------------------------------------------------------------------ sizing

    def resize(self, total: int, rounds: int = 3) -> int:
        """Start or stop sleepers so the process table holds about `total` processes; returns the count.

        The table is shared: other users' processes come and go (another benchmark's load of thousands can
        vanish a second later), so the count is checked again after a short pause and corrected, a few rounds.
        """
        count = self._resize_once(total)
        for _ in range(rounds - 1):
            if abs(count - total) <= max(20, total // 50):
                break
            time.sleep(0.3)
            count = self._resize_once(total)
        return count

    def _resize_once(self, total: int) -> int:
        have = procstat.count_processes()
        if have < total:
            need = total - have
            new: list[int] = []
            while need > 0:
                n = min(BATCH, need)
                _pgid, pids = self.spawn_group([self.sleep_argv()] * n)
                new += pids
                need -= n
            self._sleepers += new
            self.wait_exec(new)
        elif have > total and self._sleepers:
            n = min(have - total, len(self._sleepers))
            victims = self._sleepers[-n:]
            del self._sleepers[-n:]
            self.stop(victims)
        return procstat.count_processes()

    @property
    def sleepers(self) -> int:
        return len(self._sleepers)
