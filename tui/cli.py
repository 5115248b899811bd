"""The `procguard-tui` command line: options, checks, the backend they choose, then the app.

Option values are parsed by core's argument helpers (`procguard.core.cli._args`), so `--grace 0.5` or `--user
alice` mean here what they mean to `procguard`, and bad input gives the same kind of answer: one line naming
the option, `procguard-tui: error: ...`, exit status 2, never a traceback or a usage block.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from procguard.core import format as fmt
from procguard.core.cli import UsageError
from procguard.core.cli._args import seconds_arg, user_arg
from procguard.core.sanitize import safe
from procguard.core.snapshot import username_of
from procguard.tui.backends import Backend, FirstCollect
from procguard.tui.config import Config, ConfigError

if TYPE_CHECKING:
    from procguard.tui.app import Options
    from procguard.tui.backends.ray import RayClusterBackend

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
    p = _Parser(
        prog=PROG,
        description="Terminal app for Python/GPU processes: duplicates, locks, process "
        "groups and GPU memory, with safe actions.",
    )
    p.add_argument(
        "--interval",
        type=seconds_arg("--interval", positive=True),
        default=None,
        metavar="SECONDS",
        help="refresh every SECONDS (default 1.0, or the config file's)",
    )
    p.add_argument("--filter", default="", metavar="TEXT", help="start with this filter (pid, user, command)")
    p.add_argument(
        "--grace",
        type=seconds_arg("--grace"),
        default=None,
        metavar="SECONDS",
        help="seconds between SIGTERM and SIGKILL for t (default 5, or the config file's)",
    )
    p.add_argument(
        "--user", type=_user_name, default=None, metavar="NAME", help="only show this user's processes"
    )
    p.add_argument("--no-confirm", action="store_true", help="act on t / k / d without the confirm dialog")
    p.add_argument(
        "--all-users",
        action="store_true",
        help="as root, let d end other users' duplicate runs too (without it, never)",
    )
    p.add_argument(
        "--demo", action="store_true", help="show the built-in demo scenario (actions are simulated)"
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="a Ray cluster (HOST:PORT, auto): every node's processes in one table with a NODE column "
        "(n narrows to one node), each action sent to the node of each row (needs procguard[ray])",
    )
    p.add_argument(
        "--node",
        metavar="NODE",
        default=None,
        help="with --ray: start narrowed to this node (head, a node id or unique prefix, or an IP; "
        "default: every node)",
    )
    p.add_argument(
        "--node-timeout",
        type=seconds_arg("--node-timeout", positive=True),
        default=None,
        metavar="SECONDS",
        help="with --ray: seconds each node gets to answer a refresh (default 10); "
        "a node that does not is named in the summary and the others still show",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="read settings from PATH (default: config.toml in the user config folder, if there)",
    )
    p.add_argument(
        "--write-config",
        action="store_true",
        help="write the default settings, commented, to the config file (or --config PATH) and exit; "
        "never over an existing file",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {fmt.version()}")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked together; bad input raises UsageError (one line naming the option)."""
    args = build_parser().parse_args(argv)
    if args.node is not None and args.ray is None:
        raise UsageError("--node needs --ray")
    if args.node_timeout is not None and args.ray is None:
        raise UsageError("--node-timeout needs --ray")
    if args.demo and args.ray is not None:
        raise UsageError("--demo and --ray exclude each other")
    return args


def _ray_backend(address: str, node: str | None, node_timeout: float | None) -> RayClusterBackend:
    """Connect to the cluster (Ray is imported here, never without --ray). Errors: one line, exit 2, and no
    connection left open."""
    try:
        from procguard.tui.backends.ray import NODE_TIMEOUT, RayClusterBackend

        return RayClusterBackend(address, node=node, node_timeout=node_timeout or NODE_TIMEOUT)
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


def _keymap(config: Config) -> dict[str, str]:
    """The config file's keymap with PROCGUARD_TUI_KEYMAP over it, entry by entry; checked together (a key
    both would give to two actions is an error too). Raises KeymapError (one line naming the entry)."""
    from procguard.tui.app import KEYMAP_ENV, check_keymap, parse_keymap

    env = parse_keymap(os.environ.get(KEYMAP_ENV, ""))
    if not config.keymap:
        return env
    merged = {**config.keymap, **env}
    return check_keymap(merged, lambda bid: f"{KEYMAP_ENV} with {config.path}: {bid}={merged[bid]}")


def _settings(args: argparse.Namespace) -> tuple[Config, dict[str, str]]:
    """--write-config (then exit), or the config file and the keymap. Errors: one line, exit 2."""
    from procguard.tui import config as cfg
    from procguard.tui.app import KeymapError

    try:
        if args.write_config:
            print(f"{PROG}: wrote {safe(cfg.write_default(args.config))}")
            sys.exit(0)
        config = cfg.load(args.config)
        return config, _keymap(config)
    except (ConfigError, KeymapError) as e:
        # The line quotes the file (paths, keys, values typed there): made safe, one line.
        print(f"{PROG}: error: {safe(e)}", file=sys.stderr)
        sys.exit(2)


def options_for(args: argparse.Namespace, config: Config, keymap: dict[str, str]) -> Options:
    """The app's options: the command line's, else the config file's, else the defaults."""
    from procguard.tui.app import Options

    return Options(
        interval=config.interval if args.interval is None else args.interval,
        filter=args.filter,
        grace=config.grace if args.grace is None else args.grace,
        user=args.user,
        no_confirm=args.no_confirm or not config.confirm,
        all_users=args.all_users,
        view=config.view,
        sort=config.sort,
        reverse=config.reverse,
        grouping=config.grouping,
        columns=config.column_titles,
        keymap=keymap,
    )


def main(argv: Sequence[str] | None = None) -> None:
    try:
        args = parse_args(argv)
    except UsageError as e:
        # The message can quote what was typed (a user name): one line, nothing raw reaches the terminal.
        print(f"{PROG}: error: {safe(e)}", file=sys.stderr)
        sys.exit(2)
    config, keymap = _settings(args)
    config.apply_duplicate_settings()  # core's duplicate rules read them from the environment
    backend: Backend | None = None
    history = None
    first: FirstCollect | None = None
    if args.demo:
        from procguard.tui.backends.demo import DemoBackend, demo_history

        backend = DemoBackend()
        history = demo_history()
    if not sys.stdout.isatty():
        print(f"{PROG}: needs a terminal (use `procguard ps` for scripts)", file=sys.stderr)
        sys.exit(2)
    if backend is None and args.ray is None:
        # Read the process table while Textual imports (most of the start-up time): the first frame has rows.
        from procguard.tui.backends.live import LiveBackend

        backend = LiveBackend()
        first = FirstCollect(backend)
    from procguard.tui.app import ProcguardApp

    options = options_for(args, config, keymap)
    if args.ray is not None:
        cluster = _ray_backend(args.ray, args.node, args.node_timeout)
        options = replace(options, node=cluster.start_node)
        backend = cluster
    try:
        ProcguardApp(options, backend=backend, history=history, first=first).run()
    finally:
        if args.ray is not None:
            from procguard.tui.backends.ray import disconnect

            disconnect()


if __name__ == "__main__":
    main()
