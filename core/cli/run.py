"""`procguard run -- CMD`: run a command in its own session and never leave its group behind."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from types import FrameType

from procguard.core import signals
from procguard.core.cli import UsageError
from procguard.core.cli._args import seconds_arg
from procguard.core.sanitize import safe
from procguard.core.signals import Target
from procguard.core.spawn import Spawned, SpawnError, spawn

EXIT_LOCKED = 3


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "run",
        help="run CMD in its own session; SIGINT/SIGTERM end its whole group",
        usage="procguard run [--grace S] [--lock NAME] [--on-duplicate POLICY] -- CMD [ARGS...]",
    )
    p.add_argument(
        "--grace",
        type=seconds_arg("--grace"),
        default=5.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL when ending the group (default 5)",
    )
    p.add_argument(
        "--lock",
        metavar="NAME",
        help="hold this single-instance lock for the command's life; "
        "exit 3 with the holder's description if it is taken",
    )
    p.add_argument(
        "--on-duplicate",
        choices=("abort", "terminate", "ignore"),
        default=None,
        help="if CMD is a Python script already running: abort (exit 3), terminate the others, or ignore",
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD")
    p.set_defaults(func=run)


def _exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


def run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("run needs a command after --, e.g. procguard run -- python train.py")
    pass_fds: tuple[int, ...] = ()
    with contextlib.ExitStack() as stack:
        if args.on_duplicate and args.on_duplicate != "ignore":
            from procguard.core.duplicates import check_before_run

            ok, message = check_before_run(cmd, os.getcwd(), args.on_duplicate, args.grace)
            if message:
                print(f"procguard: {safe(message)}", file=sys.stderr)
            if not ok:
                return EXIT_LOCKED
        if args.lock:
            from procguard.core.locks import AlreadyRunning, SingleInstanceLock

            try:
                lock = SingleInstanceLock(args.lock)
                lock.acquire()
            except AlreadyRunning as e:
                print(f"procguard: {safe(e)}", file=sys.stderr)
                return EXIT_LOCKED
            except (OSError, ValueError) as e:
                # LockError (a symlink, another user's file in a shared folder, ...): exit 2, nothing spawned.
                raise UsageError(f"--lock {safe(args.lock)}: {e}") from None
            if lock.is_noop:
                print(f"procguard: not locking: {safe(lock.noop_reason)}", file=sys.stderr)
            else:
                stack.callback(lock.release)
                # The child inherits the descriptor: it keeps the lock even if procguard run is SIGKILLed.
                pass_fds = (lock.fileno(),)
        return _supervise(cmd, args.grace, pass_fds)
    return 0  # unreachable; keeps type checkers content


def _supervise(cmd: list[str], grace: float, pass_fds: tuple[int, ...] = ()) -> int:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise _Interrupted(signum)

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, on_signal) for s in watched}
    child: Spawned | None = None
    try:
        try:
            child = spawn(cmd, pass_fds=pass_fds)
        except SpawnError as e:
            print(f"procguard: {safe(e)}", file=sys.stderr)
            return 127 if "no such program" in str(e) else 126
        rc = child.wait()
        # The leader is gone; whatever it left in its group would be orphaned: end it too.
        leftovers = signals.resolve(Target.group(child.pgid))
        if leftovers:
            res = signals.terminate(Target.group(child.pgid), grace)
            print(
                f"procguard: ended {len(res)} leftover process(es) of the command's group: "
                f"{signals.summarize(res)}",
                file=sys.stderr,
            )
        return _exit_code(rc)
    except _Interrupted as e:
        for s in watched:
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        if child is not None:
            res = child.terminate(grace)
            print(f"procguard: {signal.Signals(e.signum).name}: {signals.summarize(res)}", file=sys.stderr)
        return 128 + e.signum
    finally:
        for s, h in old.items():
            signal.signal(s, h)
