"""`procguard ps`: the process table, flat or as a tree, as text or JSON."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from procguard.core import format as fmt
from procguard.core import views
from procguard.core.cgroups import CgroupInfo, CgroupReader, FreezerReader
from procguard.core.cli._args import cut, output_width, print_json, user_arg
from procguard.core.cli.cluster import add_node_option, add_ray_option
from procguard.core.sanitize import safe
from procguard.core.snapshot import Proc, Snapshot, Snapshotter

# --sort keys: age starts with the newest, cpu and rss with the largest; ties in pid order.
SORT_KEYS: dict[str, Callable[[Proc], Any]] = {
    "pid": lambda p: p.pid,
    "age": lambda p: (-p.create_time, p.pid),
    "cpu": lambda p: (-p.cpu_percent, p.pid),
    "rss": lambda p: (-p.rss, p.pid),
    "name": lambda p: (p.name, p.pid),
    "user": lambda p: (p.username, p.pid),
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "ps",
        help="list processes",
        description="Kernel threads are hidden unless --kernel. On a terminal, rows are cut to its "
        "width (COLUMNS, else the terminal's); --wide shows them whole. Pipes and files get whole "
        "rows.",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array of process objects (with pidns, nspid, cgroup and frozen)",
    )
    p.add_argument("--tree", action="store_true", help="show parent/child structure")
    p.add_argument("--user", metavar="NAME", type=user_arg, help="only this user's processes")
    p.add_argument(
        "--sort",
        choices=tuple(SORT_KEYS),
        default="pid",
        help="row order (siblings' order with --tree): pid (default), age (newest first), cpu, rss "
        "(largest first), name, user",
    )
    p.add_argument("--wide", action="store_true", help="whole rows, never cut to the terminal's width")
    p.add_argument("--kernel", action="store_true", help="include kernel threads")
    add_ray_option(p)
    add_node_option(p)
    p.set_defaults(func=run)


def proc_json(p: Proc) -> dict[str, object]:
    return {
        "pid": p.pid,
        "ppid": p.ppid,
        "pgid": p.pgid,
        "sid": p.sid,
        "state": p.state,
        "name": p.name,
        "cmdline": list(p.cmdline),
        "create_time": p.create_time,
        "rss": p.rss,
        "username": p.username,
        "uid": p.uid,
        "cpu_percent": round(p.cpu_percent, 1),
        "num_threads": p.num_threads,
        "python": None
        if p.python is None
        else {
            "interpreter": p.python.interpreter,
            "kind": p.python.kind,
            "target": p.python.target,
            "args": list(p.python.args),
        },
    }


def cgroup_json(info: CgroupInfo | None, frozen: bool | None) -> dict[str, object]:
    """The `ps --json` fields of a process's PID namespace and cgroup (named: a container, a systemd unit, a
    SLURM job), and whether the cgroup freezer holds it (ps shows a frozen process as S)."""
    if info is None:
        return {"pidns": None, "nspid": [], "cgroup": None, "frozen": frozen}
    return {**info.to_json(), "frozen": frozen}


def _rows(snap: Snapshot, args: argparse.Namespace) -> list[tuple[int, Proc]]:
    shown = [p for p in snap if args.kernel or not p.kernel_thread]
    key = SORT_KEYS[args.sort]
    rows = views.tree_order(shown, key) if args.tree else [(0, p) for p in sorted(shown, key=key)]
    return rows if args.user is None else [(d, p) for d, p in rows if p.uid == args.user]


def run(args: argparse.Namespace) -> int:
    if getattr(args, "ray", None):
        from procguard.core.cli.cluster import ray_ps

        return ray_ps(args)
    if getattr(args, "node", None):
        from procguard.core.cli import UsageError

        raise UsageError("--node needs --ray ADDRESS")
    snapper = Snapshotter()
    snapper.take()
    time.sleep(0.1)  # a second look gives CPU% a meaning
    snap = snapper.take()
    rows = _rows(snap, args)
    cgroups, freezer = CgroupReader(), FreezerReader()
    if args.json:
        out = []
        for d, p in rows:
            obj = proc_json(p)
            info = cgroups.info(p.pid, p.start_ticks)
            obj.update(cgroup_json(info, freezer.frozen(info)))
            if args.tree:
                obj["depth"] = d
            out.append(obj)
        print_json(out)
        return 0
    width = output_width(args.wide)
    print(
        cut(
            f"{'PID':>7} {'PPID':>7} {'PGID':>7} {'SID':>7} S {'USER':<10} {'RSS':>7} {'CPU%':>5} COMMAND",
            width,
        )
    )
    for d, p in rows:
        frozen = "[frozen] " if freezer.frozen(cgroups.info(p.pid, p.start_ticks)) else ""
        print(
            cut(
                f"{p.pid:>7} {p.ppid:>7} {p.pgid:>7} {p.sid:>7} {p.state} {safe(p.username)[:10]:<10} "
                f"{fmt.bytes_short(p.rss):>7} {p.cpu_percent:>5.1f} {'  ' * d}{frozen}{safe(p.command)}",
                width,
            )
        )
    return 0
