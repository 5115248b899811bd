"""`--ray ADDRESS` for the procguard command: the cluster-wide ps, routed term/kill/pause/resume, and the
per-node dupes/locks/gpu listings (with a NODE column).

Nothing here imports ray at module level: `procguard.core.cluster` is loaded only when --ray is given, and a
missing Ray is a one-line usage error naming the `procguard[ray]` extra.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NamedTuple

from procguard.core import format as fmt
from procguard.core.cli import UsageError
from procguard.core.cli._args import pid_arg, print_json
from procguard.core.sanitize import safe


class NodePid(NamedTuple):
    """A `NODE:PID` target: a pid on one node of a Ray cluster."""

    node: str
    pid: int


def target_arg(text: str) -> int | NodePid:
    """PID, or NODE:PID (NODE: `head`, a node id or a unique prefix of one, or a node's unique IP)."""
    if ":" in text:
        node, _, pid = text.rpartition(":")
        if not node:
            raise UsageError(f"invalid target {text!r}: NODE:PID needs a node before the colon")
        return NodePid(node, pid_arg(pid))
    return pid_arg(text)


def add_ray_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="a Ray cluster (HOST:PORT, auto, ray://...): every node, with a NODE column")


def add_node_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", metavar="NODE", default=None,
                   help="with --ray: the node of bare PIDs (head, a node id or unique prefix, or an IP)")


_RAY_VIEWS = {"dupes": "ray_dupes", "locks": "ray_locks", "gpu": "ray_gpu"}


def register_ray_flags(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Give `dupes`, `locks` and `gpu` (registered by their own modules) a `--ray ADDRESS` option: with it,
    the command runs here on every node of the cluster; without it, exactly as before."""
    for name, fn_name in _RAY_VIEWS.items():
        p = sub.choices.get(name)
        if p is None or any("--ray" in a.option_strings for a in p._actions):
            continue
        add_ray_option(p)
        local = p.get_default("func")

        def run(args: argparse.Namespace, local: Any = local, fn_name: str = fn_name) -> int:
            if getattr(args, "ray", None):
                return int(globals()[fn_name](args))
            return int(local(args))

        p.set_defaults(func=run)


def load_cluster() -> ModuleType:
    """procguard.core.cluster, or a usage error naming the extra when Ray is not installed."""
    try:
        import procguard.core.cluster as cluster
    except ImportError as e:
        raise UsageError(f"--ray needs Ray: pip install 'procguard[ray]' ({e})") from None
    return cluster


def connect(address: str) -> ModuleType:
    cluster = load_cluster()
    try:
        cluster.connect(address)
    except cluster.ClusterError as e:
        raise UsageError(f"--ray {address}: {e}") from None
    return cluster


def _node_errors(items: Sequence[Any]) -> int:
    bad = 0
    for it in items:
        if it.error:
            print(f"procguard: node {safe(it.node.short)} ({safe(it.node.ip)}): {safe(it.error)}", file=sys.stderr)
            bad += 1
    return bad


# ------------------------------------------------------------------------------------------ ps


def ray_ps(args: argparse.Namespace) -> int:
    from procguard.core.cli.ps import proc_json
    from procguard.core.views import tree_order

    cluster = connect(args.ray)
    only = None
    if getattr(args, "node", None):
        only = [_find_node(cluster, args.node).node_id]
    snaps = cluster.cluster_snapshot(node_ids=only)
    uid = args.user
    rows: list[tuple[Any, int, Any, str | None]] = []  # node, depth, proc, ray kind
    for ns in snaps:
        if ns.snapshot is None:
            continue
        snap = ns.snapshot
        if args.tree:
            picked = [(d, p) for d, p in tree_order(snap) if uid is None or p.uid == uid]
        else:
            picked = [(0, p) for p in sorted(snap, key=lambda p: p.pid) if uid is None or p.uid == uid]
        rows.extend((ns.node, d, p, ns.ray_kinds.get(p.pid)) for d, p in picked)
    if args.json:
        out = []
        for node, d, p, kind in rows:
            obj = {"node": node.node_id, "node_ip": node.ip, **proc_json(p), "ray": kind}
            if args.tree:
                obj["depth"] = d
            out.append(obj)
        print_json(out)
    else:
        print(f"{'NODE':<8} {'PID':>7} {'PPID':>7} {'PGID':>7} {'SID':>7} S {'USER':<10} {'RSS':>7} {'CPU%':>5} "
              "COMMAND")
        for node, d, p, kind in rows:
            tag = f"  [ray: {safe(kind)}]" if kind else ""
            print(f"{safe(node.short):<8} {p.pid:>7} {p.ppid:>7} {p.pgid:>7} {p.sid:>7} {p.state} "
                  f"{safe(p.username)[:10]:<10} {fmt.bytes_short(p.rss):>7} {p.cpu_percent:>5.1f} {'  ' * d}"
                  f"{safe(p.command)}{tag}")
    return 1 if _node_errors(snaps) else 0


# ------------------------------------------------------------------------------------------ signals


def _find_node(cluster: ModuleType, ref: str, among: Sequence[Any] | None = None) -> Any:
    try:
        return cluster.find_node(ref, among if among is not None else cluster.nodes())
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_local_targets(args: argparse.Namespace) -> None:
    """Without --ray: NODE:PID and --node are errors."""
    node_pid = next((t for t in args.targets if isinstance(t, NodePid)), None)
    if node_pid is not None:
        raise UsageError(f"target '{node_pid.node}:{node_pid.pid}' names a node: that needs --ray ADDRESS")
    if getattr(args, "node", None):
        raise UsageError("--node needs --ray ADDRESS")


def ray_signals(args: argparse.Namespace, ok: set[Any]) -> int:
    """term|kill|pause|resume --ray: each target acted on by the agent of the node that owns it."""
    from procguard.core import signals
    from procguard.core.cli.signals import result_line

    for t in args.targets:
        if not isinstance(t, NodePid) and not args.node:
            raise UsageError(f"pid {t} needs a node with --ray: write NODE:{t} or pass --node NODE")
    cluster = connect(args.ray)
    among = cluster.nodes()
    by_node: dict[str, list[int]] = {}
    names: dict[str, Any] = {}
    default = _find_node(cluster, args.node, among) if args.node else None
    for t in args.targets:
        node = _find_node(cluster, t.node, among) if isinstance(t, NodePid) else default
        assert node is not None
        names[node.node_id] = node
        by_node.setdefault(node.node_id, []).append(t.pid if isinstance(t, NodePid) else t)
    scope = "group" if args.group else "tree" if args.tree else "pid"
    targets: dict[str, list[Any]] = {}
    for nid, pids in by_node.items():
        try:
            targets[nid] = cluster.cluster_targets(None, nid, pids, scope)
        except ValueError as e:
            raise UsageError(str(e)) from None
        except cluster.ClusterError as e:
            raise UsageError(str(e)) from None
    if args.dry_run:
        members = [m for nid, ts in targets.items() for m in cluster.cluster_resolve(None, nid, ts)]
        if args.json:
            print_json({"dry_run": True, "action": args.action, "targets": [
                {"node": nm.node_id, "pid": nm.member.pid, "name": nm.member.name,
                 "cmdline": list(nm.member.cmdline), "username": nm.member.username, "state": nm.member.state,
                 "pgid": nm.member.pgid, "protected": nm.member.protected} for nm in members]})
        else:
            print(f"would {args.action} {len(members)} process(es):")
            for nm in members:
                m = nm.member
                note = f"  [refused: {safe(m.protected)}]" if m.protected else ""
                print(f"{safe(nm.node_id)[:8]:<8} {m.pid:>7} {safe(m.username)[:10]:<10} {safe(m.state)} "
                      f"{safe(m.command)}{note}")
        return 0
    try:
        results = cluster.cluster_signal_many(None, args.action, targets, getattr(args, "grace", 0.0))
    except cluster.ClusterError as e:
        print(f"procguard: {safe(e)}", file=sys.stderr)
        return 1
    if args.json:
        print_json({"results": [r.to_json() for r in results]})
    else:
        for nr in results:
            r = nr.result
            print(f"{safe(nr.node_id)[:8]:<8} {r.pid:>7} {r.outcome.value:<12} {r.elapsed:8.3f}s  {result_line(r)}")
        print(safe(signals.summarize([nr.result for nr in results])), file=sys.stderr)
    return 0 if all(nr.result.outcome in ok for nr in results) else 1


# ------------------------------------------------------------------------------------------ dupes, locks, gpu


def ray_dupes(args: argparse.Namespace) -> int:
    """`procguard dupes --ray`: each node's duplicate runs (listing only)."""
    from procguard.core.duplicates import group_json

    if getattr(args, "terminate", False):
        raise UsageError("dupes --terminate does not take --ray: end a run with "
                         "`procguard term --ray ADDRESS NODE:PID --tree`")
    cluster = connect(args.ray)
    # A relative --script means this directory's file: the agents run elsewhere (symlinks followed there).
    kwargs = {"script": os.path.abspath(args.script)} if getattr(args, "script", None) else {}
    reports = cluster.cluster_duplicates(**kwargs)
    if args.json:
        print_json([{"node": r.node.node_id, **group_json(g)} for r in reports if r.value is not None
                    for g in r.value.groups])
    else:
        found = False
        for r in reports:
            if r.value is None:
                continue
            for g in r.value.groups:
                found = True
                print(f"{safe(r.node.short)} ({safe(r.node.ip)}) {safe(g.identity.display)}: {len(g.instances)} runs")
                print(f"  {'NODE':<8} {'PID':>7} {'USER':<10} CWD  COMMAND")
                for inst in g.instances:
                    print(f"  {safe(r.node.short):<8} {inst.pid:>7} {safe(inst.username)[:10]:<10} "
                          f"{safe(inst.cwd or '?')}  {safe(inst.command)}")
        if not found:
            print("no duplicate runs")
    return 1 if _node_errors(reports) else 0


def ray_locks(args: argparse.Namespace) -> int:
    """`procguard locks --ray`: each node's held file locks."""
    if getattr(args, "clean_stale", False):
        raise UsageError("locks --clean-stale does not take --ray: run it on the node")
    cluster = connect(args.ray)
    kwargs: dict[str, Any] = {"managed_only": bool(getattr(args, "managed", False))}
    if getattr(args, "dirs", None):
        kwargs["dirs"] = [os.path.abspath(d) for d in args.dirs]  # checked on each node, as it sees them
    reports = cluster.cluster_locks(**kwargs)
    if args.json:
        print_json([{"node": r.node.node_id, **e.to_dict()} for r in reports if r.value for e in r.value])
    else:
        rows = [(r.node, e) for r in reports if r.value for e in r.value]
        if not rows:
            print("no file locks")
        else:
            print(f"{'NODE':<8} {'PID':>7} {'KIND':<6} {'MODE':<5} {'MANAGED':<7} PATH")
            for node, e in rows:
                pid = "-" if e.pid is None else str(e.pid)
                kind = "stale" if e.stale else safe(e.kind or "-")
                print(f"{safe(node.short):<8} {pid:>7} {kind:<6} {safe(e.mode or '-'):<5} "
                      f"{'yes' if e.managed else '-':<7} {safe(e.path)}")
    return 1 if _node_errors(reports) else 0


def ray_gpu(args: argparse.Namespace) -> int:
    """`procguard gpu --ray`: each node's GPUs and the processes holding their memory."""
    from procguard.core.cli.gpu import format_gpu, gpu_report

    cluster = connect(args.ray)
    reports = cluster.cluster_gpu()

    def no_lookup(pid: int) -> None:  # the guarded-process registry is per node: not readable from here
        return None

    if args.json:
        print_json({"nodes": [{"node": r.node.node_id, "node_ip": r.node.ip, "error": r.error,
                               **(gpu_report(r.value, no_lookup) if r.value is not None else {})}
                              for r in reports]})
    else:
        snaps = {s.node.node_id: s.snapshot for s in cluster.cluster_snapshot()}
        for r in reports:
            if r.value is None:
                continue
            print(f"node {safe(r.node.short)} ({safe(r.node.ip)}){' head' if r.node.is_head else ''}:")
            snap = snaps.get(r.node.node_id)
            from procguard.core.snapshot import Snapshot

            lines = format_gpu(gpu_report(r.value, no_lookup), snap if snap is not None else Snapshot({}),
                               r.value)
            print("\n".join("  " + ln for ln in lines))
    return 1 if _node_errors(reports) else 0


__all__ = ["NodePid", "add_node_option", "add_ray_option", "check_local_targets", "load_cluster", "ray_dupes",
           "ray_gpu", "ray_locks", "ray_ps", "ray_signals", "register_ray_flags", "target_arg"]
