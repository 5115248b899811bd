"""`procguard ps`: the process table, flat or as a tree, as text or JSON."""

from __future__ import annotations

import argparse
import time

from procguard.core import format as fmt
from procguard.core.cli._args import print_json, user_arg
from procguard.core.cli.cluster import add_node_option, add_ray_option
from procguard.core.sanitize import safe
from procguard.core.snapshot import Proc, Snapshotter
from procguard.core.views import tree_order


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ps", help="list processes")
    p.add_argument("--json", action="store_true", help="print a JSON array of process objects")
    p.add_argument("--tree", action="store_true", help="show parent/child structure")
    p.add_argument("--user", metavar="NAME", type=user_arg, help="only this user's processes")
    add_ray_option(p)
    add_node_option(p)
    p.set_defaults(func=run)


def proc_json(p: Proc) -> dict[str, object]:
    return {
        "pid": p.pid, "ppid": p.ppid, "pgid": p.pgid, "sid": p.sid, "state": p.state, "name": p.name,
        "cmdline": list(p.cmdline), "create_time": p.create_time, "rss": p.rss, "username": p.username,
        "uid": p.uid, "cpu_percent": round(p.cpu_percent, 1), "num_threads": p.num_threads,
        "python": None if p.python is None else {
            "interpreter": p.python.interpreter, "kind": p.python.kind, "target": p.python.target,
            "args": list(p.python.args)},
    }


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
    uid = args.user
    if args.tree:
        rows = [(d, p) for d, p in tree_order(snap) if uid is None or p.uid == uid]
    else:
        rows = [(0, p) for p in sorted(snap, key=lambda p: p.pid) if uid is None or p.uid == uid]
    if args.json:
        out = []
        for d, p in rows:
            obj = proc_json(p)
            if args.tree:
                obj["depth"] = d
            out.append(obj)
        print_json(out)
        return 0
    print(f"{'PID':>7} {'PPID':>7} {'PGID':>7} {'SID':>7} S {'USER':<10} {'RSS':>7} {'CPU%':>5} COMMAND")
    for d, p in rows:
        print(f"{p.pid:>7} {p.ppid:>7} {p.pgid:>7} {p.sid:>7} {p.state} {safe(p.username)[:10]:<10} "
              f"{fmt.bytes_short(p.rss):>7} {p.cpu_percent:>5.1f} {'  ' * d}{safe(p.command)}")
    return 0
