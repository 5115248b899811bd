"""The `procguard-tui` command line: options, checks, the backend they choose, then the app.

Option values are parsed by core's argument helpers (`procguard.core.cli._args`), so `--grace 0.5` or `--user
alice` mean here what they mean to `procguard`, and bad input gives the same kind of answer: one line naming
the option, `procguard-tui: error: ...`, exit status 2, never a traceback or a usage block.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from procguard.core import format as fmt
from procguard.core.cli import UsageError
from procguard.core.cli._args import seconds_arg, user_arg
from procguard.core.sanitize import safe
from procguard.core.snapshot import username_of
from procguard.tui.backends import Backend

PROG = "procguard-tui"


class _Parser(argparse.ArgumentParser):
    """argparse's own complaints ("argument --interval: expected one argument") become UsageErrors too."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _user_name(text: str) -> str:
    """--user: a user name or uid that exists here (core's rule), as the name the process table shows."""
    try:
        return username_of(user_arg(text))
    except UsageError as e:  # core's words don't name the option
        raise UsageError(f"--user: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Terminal app for Python/GPU processes: duplicates, locks, process "
                "groups and GPU memory, with safe actions.")
    p.add_argument("--interval", type=seconds_arg("--interval", positive=True), default=1.0, metavar="SECONDS",
                   help="refresh every SECONDS (default 1.0)")
    p.add_argument("--filter", default="", metavar="TEXT", help="start with this filter (pid, user, command)")
    p.add_argument("--grace", type=seconds_arg("--grace"), default=5.0, metavar="SECONDS",
                   help="seconds between SIGTERM and SIGKILL for t (default 5)")
    p.add_argument("--user", type=_user_name, default=None, metavar="NAME",
                   help="only show this user's processes")
    p.add_argument("--no-confirm", action="store_true", help="act on t / k / d without the confirm dialog")
    p.add_argument("--all-users", action="store_true",
                   help="as root, let d end other users' duplicate runs too (without it, never)")
    p.add_argument("--demo", action="store_true", help="show the built-in demo scenario (actions are simulated)")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="a Ray cluster (HOST:PORT, auto): its nodes one at a time (n switches), actions run on "
                        "the node shown (needs procguard[ray])")
    p.add_argument("--node", metavar="NODE", default=None,
                   help="with --ray: the node to start on (head, a node id or unique prefix, or an IP; default head)")
    p.add_argument("--version", action="version", version=f"{PROG} {fmt.version()}")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked together; bad input raises UsageError (one line naming the option)."""
    args = build_parser().parse_args(argv)
    if args.node is not None and args.ray is None:
        raise UsageError("--node needs --ray")
    if args.demo and args.ray is not None:
        raise UsageError("--demo and --ray exclude each other")
    return args


def _ray_backend(address: str, node: str) -> Backend:
    """Connect to the cluster (Ray is imported here, never without --ray). Errors: one line, exit 2, and no
    connection left open."""
    try:
        from procguard.tui.backends.ray import RayNodeBackend

        return RayNodeBackend(address, node=node)
    except Exception as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, ImportError) and "procguard[ray]" not in text:
            text = f"needs Ray: pip install 'procguard[ray]' ({text})"
        elif isinstance(e, ValueError):  # find_node: no such node / several match
            text = f"--node {node}: {text}"
        with contextlib.suppress(Exception):
            from procguard.tui.backends.ray import disconnect

            disconnect()
        print(f"{PROG}: --ray {safe(address)}: {safe(text)}", file=sys.stderr)  # a node's words
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        args = parse_args(argv)
    except UsageError as e:
        # The message can quote what was typed (a user name): one line, nothing raw reaches the terminal.
        print(f"{PROG}: error: {safe(e)}", file=sys.stderr)
        sys.exit(2)
    from procguard.tui.app import Options, ProcguardApp

    options = Options(interval=args.interval, filter=args.filter, grace=args.grace, user=args.user,
                      no_confirm=args.no_confirm, all_users=args.all_users)
    backend: Backend | None = None
    if args.demo:
        from procguard.tui.backends.demo import DemoBackend

        backend = DemoBackend()
    if not sys.stdout.isatty():
        print(f"{PROG}: needs a terminal (use `procguard ps` for scripts)", file=sys.stderr)
        sys.exit(2)
    if args.ray is not None:
        backend = _ray_backend(args.ray, args.node or "head")
    try:
        ProcguardApp(options, backend=backend).run()
    finally:
        if args.ray is not None:
            from procguard.tui.backends.ray import disconnect

            disconnect()


if __name__ == "__main__":
    main()
