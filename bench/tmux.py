"""Terminal apps run side by side in a private tmux server (its own socket, no user config), fixed size.

The server runs in the foreground (`tmux -D`) as a child of the harness, started through the Load (so with a
parent-death SIGKILL, and SIGKILLed by pid at cleanup); each pane's app is started the same way
(`load.dies_with`: it dies with the server) and is also pinned by a pidfd and SIGKILLed at cleanup. Nothing
survives the harness, even a SIGKILLed one.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass

from bench import procstat
from bench.load import Load, dies_with

WIDTH, HEIGHT = 160, 50
TERM = "tmux-256color"
TMUX = os.environ.get("PGBENCH_TMUX", "tmux")  # override to test the "tmux is missing" path


def missing() -> str | None:
    """None when tmux can run here (with -D: tmux >= 3.2), else why not."""
    if shutil.which(TMUX) is None:
        return f"tmux is not installed (`{TMUX}` not found; apt-get install -y tmux)"
    return None


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


@dataclass
class AppRun:
    """What one app cost over a measured window."""

    name: str
    pid: int
    cpu_seconds: float
    window: float
    interval: float
    vm_hwm: int | None
    screen: str = ""
    table: int = 0  # processes in the table during the window (mean of its start and end)

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_seconds / self.window

    @property
    def per_refresh(self) -> float:
        """CPU seconds per refresh."""
        return self.cpu_seconds / max(1.0, self.window / self.interval)


class Tmux:
    def __init__(self, load: Load, tag: str) -> None:
        self.load = load
        self.sock = f"{load.token}-{tag}"
        self.env = {**load.env, "TERM": "xterm-256color", "HOME": os.environ.get("HOME", "/root")}
        self.pids: dict[str, int] = {}
        self.server: int | None = None
        self.socket: str | None = None

    def _tmux(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(
            [TMUX, "-L", self.sock, "-f", "/dev/null", *args],
            env=self.env,
            text=True,
            capture_output=True,
            timeout=30,
        )
        if check and r.returncode != 0:
            gone = "" if self.server is None or procstat.alive(self.server) else f" ({self.server_end()})"
            raise RuntimeError(f"tmux {' '.join(args[:2])}: {r.stderr.strip() or r.stdout.strip()}{gone}")
        return r.stdout

    def server_end(self) -> str:
        """How the tmux server ended (it is our child: its exit status, reaped here)."""
        assert self.server is not None
        try:
            pid, status = os.waitpid(self.server, os.WNOHANG)
        except ChildProcessError:
            return "the tmux server is gone"
        if not pid:
            return "the tmux server is a zombie or exiting"
        self.load.reap([self.server])
        return f"the tmux server ended: {_status_text(status)}"

    def _start_server(self) -> None:
        # Its own config, not the user's: a server with no session yet must not exit between our commands
        # (exit-empty: "server exited unexpectedly" at the first new-session).
        conf = self.load.tmp / f"tmux-{self.sock}.conf"
        conf.write_text(f"set -g exit-empty off\nset -g remain-on-exit on\nset -g default-terminal {TERM}\n")
        self.server = self.load.spawn(
            [TMUX, "-L", self.sock, "-f", str(conf), "-D"], env={"TERM": "xterm-256color"}, quiet=True
        )
        deadline = time.monotonic() + 10
        while True:  # until the server answers on its socket
            r = subprocess.run(
                [TMUX, "-L", self.sock, "-f", "/dev/null", "list-sessions"],
                env=self.env,
                capture_output=True,
                timeout=30,
            )
            if r.returncode == 0 or b"no sessions" in r.stderr:
                break
            if not procstat.alive(self.server) or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the tmux server did not start: {r.stderr.decode(errors='replace').strip()}"
                )
            time.sleep(0.05)
        self.socket = self._tmux("display-message", "-p", "#{socket_path}").strip() or None
        self._tmux(
            "set-option", "-g", "remain-on-exit", "on", ";", "set-option", "-g", "default-terminal", TERM
        )

    def pane_command(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        """The shell command a pane runs for argv: it dies with the server (and carries the run's token)."""
        if self.server is None:
            self._start_server()
        assert self.server is not None
        full = dies_with(self.server, ["env", *(f"{k}={v}" for k, v in (env or {}).items()), *argv])
        return "exec " + shlex.join(full)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        """Start argv in a new detached session; returns the app's pid (the pane's process)."""
        command = self.pane_command(argv, env)
        self._tmux("new-session", "-d", "-s", name, "-x", str(WIDTH), "-y", str(HEIGHT), command)
        return self.adopt(name)

    def adopt(self, name: str) -> int:
        """The pid of the process now in the session's pane, pinned for the cleanup."""
        pid = int(self._tmux("display-message", "-p", "-t", name, "#{pane_pid}").strip())
        self.load.track([pid])
        self.pids[name] = pid
        return pid

    def pane_id(self, name: str) -> str:
        return self._tmux("display-message", "-p", "-t", name, "#{pane_id}").strip()

    def screen(self, name: str) -> str:
        return self._tmux("capture-pane", "-p", "-t", name, check=False)

    def wait_drawn(self, name: str, timeout: float = 60.0) -> None:
        """Until the pane shows something (the app is up), or raise with what it shows."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not procstat.alive(self.pids[name]):
                raise RuntimeError(f"{name} exited: {self.screen(name).strip()[-500:]}")
            if len(self.screen(name).strip()) > 40:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} drew nothing within {timeout:g} s")

    def close(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self._tmux("kill-server", check=False)
        self.load.stop(self.pids.values())
        if self.server is not None:
            self.load.stop([self.server])
        if self.socket and os.path.basename(self.socket) == self.sock:  # only our own socket file
            with contextlib.suppress(OSError):
                os.unlink(self.socket)


def measure(
    load: Load,
    apps: dict[str, list[str]],
    *,
    warmup: float,
    window: float,
    interval: float,
    env: dict[str, dict[str, str]] | None = None,
    tag: str = "apps",
) -> dict[str, AppRun]:
    """Run the apps concurrently; CPU time (utime+stime of each app's process, all threads) over one window."""
    tm = Tmux(load, tag)
    try:
        for name, argv in apps.items():
            tm.start(name, argv, (env or {}).get(name))
        for name in apps:
            tm.wait_drawn(name)
        time.sleep(warmup)
        before = {n: procstat.cpu_seconds(p) for n, p in tm.pids.items()}
        t0 = time.monotonic()
        table0 = procstat.count_processes()
        time.sleep(window)
        after = {n: procstat.cpu_seconds(p) for n, p in tm.pids.items()}
        elapsed = time.monotonic() - t0
        table = (table0 + procstat.count_processes()) // 2
        out: dict[str, AppRun] = {}
        for name, pid in tm.pids.items():
            b, a = before[name], after[name]
            if a is None or b is None or not procstat.alive(pid):
                raise RuntimeError(f"{name} exited during the measurement: {tm.screen(name).strip()[-500:]}")
            out[name] = AppRun(
                name, pid, a - b, elapsed, interval, procstat.vm_hwm_bytes(pid), tm.screen(name), table
            )
        return out
    finally:
        tm.close()
