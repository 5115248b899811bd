"""The `procguard` command. Each command group lives in its own module here and registers itself."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import NoReturn

from procguard.core import format as fmt
from procguard.core.launchers import SettingError
from procguard.core.sanitize import safe

# Command modules, in help order. A module registers its subcommands with `register(subparsers)`.
COMMAND_MODULES = ("ps", "signals", "run", "dupes", "locks", "gpu", "cluster")  # cluster: `cancel`


class UsageError(Exception):
    """Bad input: printed as one line `procguard: error: ...`, exit status 2, never a traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, naming the problem; `procguard CMD --help` has the usage.
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="procguard",
        description="Find duplicate Python runs, explain locks, and control "
        "process groups and trees safely (SIGTERM -> SIGKILL escalation).",
    )
    parser.add_argument("--version", action="version", version=f"procguard {fmt.version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        modname = f"{__name__}.{name}"
        if importlib.util.find_spec(modname) is None:
            continue  # a command group that has not landed yet
        importlib.import_module(modname).register(sub)
    from procguard.core.cli.cluster import register_ray_flags  # --ray for dupes/locks/gpu (ray loaded lazily)

    register_ray_flags(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)
    except (UsageError, SettingError) as e:
        # A message can quote a path or a name another user chose: one line, nothing raw reaches the terminal.
        # SettingError: an invalid PROCGUARD_LAUNCHERS / PROCGUARD_NEVER_DUPLICATE entry, from any command.
        print(f"procguard: error: {safe(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


def run_main() -> NoReturn:
    sys.exit(main())
