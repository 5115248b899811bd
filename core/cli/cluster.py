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
from procguard.core.cli._args import cut, output_width, pid_arg, print_json, seconds_arg
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


NODE_TIMEOUT = 10.0  # default --node-timeout: procguard.core.cluster.NODE_TIMEOUT (not imported: no ray here)


def node_timeout_arg(text: str) -> float:
    v = seconds_arg("--node-timeout")(text)
    if v == 0:
        raise UsageError(f"invalid --node-timeout {text!r}: must be more than 0 seconds")
    return v


def add_ray_option(
    p: argparse.ArgumentParser,
    help: str = "a Ray cluster (HOST:PORT, auto, ray://...): every node, with a NODE column",
) -> None:
    p.add_argument("--ray", metavar="ADDRESS", default=None, help=help)
    p.add_argument(
        "--node-timeout",
        metavar="S",
        type=node_timeout_arg,
        default=None,
        help=f"with --ray: seconds each node gets to answer (default {NODE_TIMEOUT:g}); a node that "
        "does not is named on stderr, the other nodes' results are still shown, and the exit status "
        "is 1",
    )


def add_node_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--node",
        metavar="NODE",
        default=None,
        help="with --ray: the node of bare PIDs (head, a node id or unique prefix, or an IP)",
    )


def node_timeout(args: argparse.Namespace) -> float:
    t = getattr(args, "node_timeout", None)
    return NODE_TIMEOUT if t is None else float(t)


def task_arg(text: str) -> str:
    """A task id or an actor id (hex), or a prefix of 4+ digits of one."""
    ref = text.strip().lower()
    if not 4 <= len(ref) <= 48 or any(c not in "0123456789abcdef" for c in ref):
        raise UsageError(f"invalid task id {text!r}: 4 to 48 hex digits (a task or actor id, or a prefix)")
    return ref


_RAY_VIEWS = {"dupes": "ray_dupes", "locks": "ray_locks", "gpu": "ray_gpu"}
_NEEDS_RAY = (("--node-timeout", "node_timeout"), ("--task", "task"))


def _has_option(p: argparse.ArgumentParser, flag: str) -> bool:
    return any(flag in a.option_strings for a in p._actions)


def check_needs_ray(args: argparse.Namespace) -> None:
    """Without --ray: the flags that only mean something on a cluster are errors."""
    for flag, dest in _NEEDS_RAY:
        if getattr(args, dest, None) is not None:
            raise UsageError(f"{flag} needs --ray ADDRESS")


def register_ray_flags(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Give `dupes`, `locks` and `gpu` (registered by their own modules) a `--ray ADDRESS` option: with it,
    the command runs here on every node of the cluster; without it, exactly as before. `ps` gets `--task`.
    Every command with --ray refuses the cluster-only flags (--node-timeout, --task) without it."""
    seen: set[int] = set()
    for name, p in sub.choices.items():
        if id(p) in seen or name == "cancel":  # cancel is this module's, and needs --ray anyway
            continue
        seen.add(id(p))
        fn_name = None
        if not _has_option(p, "--ray"):
            if name not in _RAY_VIEWS:
                continue
            add_ray_option(p)
            fn_name = _RAY_VIEWS[name]
        if name == "ps" and not _has_option(p, "--task"):
            p.add_argument(
                "--task",
                metavar="TASK_ID",
                type=task_arg,
                default=None,
                help="with --ray: only the processes of this Ray task or actor (its id, or a "
                "prefix of 4+ hex digits)",
            )
        local = p.get_default("func")
        if local is None:
            continue

        def run(args: argparse.Namespace, local: Any = local, fn_name: str | None = fn_name) -> int:
            if not getattr(args, "ray", None):
                check_needs_ray(args)
            elif fn_name is not None:
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


def _failure_lines(failures: Sequence[Any]) -> int:
    """Each failed node (a NodeFailure) named in one line on stderr, once; returns how many."""
    seen: set[str] = set()
    for f in failures:
        if f.node_id not in seen:
            seen.add(f.node_id)
            print(f"procguard: {safe(f)}", file=sys.stderr)
    return len(seen)


def _node_errors(items: Sequence[Any]) -> int:
    """The failed nodes of per-node answers (NodeSnapshot, NodeResult) on stderr; returns how many."""
    return _failure_lines([f for it in items if (f := it.failure) is not None])


# ------------------------------------------------------------------------------------------ ps

_PS_HEAD = (
    f"{'NODE':<8} {'PID':>7} {'PPID':>7} {'PGID':>7} {'SID':>7} S {'USER':<10} {'RSS':>7} {'CPU%':>5} "
    f"{'TASK':<14} COMMAND"
)


def _ps_rows(
    args: argparse.Namespace, snaps: Sequence[Any], task_pids: set[tuple[str, int]] | None
) -> list[Any]:
    """(node, depth, proc, ray kind, owner) for each process shown: node by node, each as `ps` orders its rows
    (--sort, --tree), kernel threads only with --kernel."""
    from procguard.core import views
    from procguard.core.cli.ps import SORT_KEYS

    uid = args.user
    key = SORT_KEYS[getattr(args, "sort", "pid")]
    rows: list[tuple[Any, int, Any, str | None, Any]] = []
    for ns in snaps:
        if ns.snapshot is None:
            continue
        shown = [
            p
            for p in ns.snapshot
            if (getattr(args, "kernel", False) or not p.kernel_thread)
            and (uid is None or p.uid == uid)
            and (task_pids is None or (ns.node.node_id, p.pid) in task_pids)
        ]
        picked = views.tree_order(shown, key) if args.tree else [(0, p) for p in sorted(shown, key=key)]
        rows.extend((ns.node, d, p, ns.ray_kinds.get(p.pid), ns.owners.get(p.pid)) for d, p in picked)
    return rows


def _print_ps(args: argparse.Namespace, rows: Sequence[Any]) -> None:
    from procguard.core.cli.ps import proc_json

    if args.json:
        out = []
        for node, d, p, kind, owner in rows:
            obj = {
                "node": node.node_id,
                "node_ip": node.ip,
                **proc_json(p),
                "ray": kind,
                "owner": None if owner is None else owner.to_json(),
            }
            if args.tree:
                obj["depth"] = d
            out.append(obj)
        print_json(out)
        return
    width = output_width(getattr(args, "wide", False))
    print(cut(_PS_HEAD, width))
    for node, d, p, kind, owner in rows:
        tag = f"  [ray: {safe(kind)}]" if kind else ""
        task = safe(owner.short)[:14] if owner is not None and owner.short else "-"
        print(
            cut(
                f"{safe(node.short):<8} {p.pid:>7} {p.ppid:>7} {p.pgid:>7} {p.sid:>7} {p.state} "
                f"{safe(p.username)[:10]:<10} {fmt.bytes_short(p.rss):>7} {p.cpu_percent:>5.1f} {task:<14} "
                f"{'  ' * d}{safe(p.command)}{tag}",
                width,
            )
        )


def ray_ps(args: argparse.Namespace) -> int:
    """`procguard ps --ray`: every node's processes, with Ray's own named and each process's owning task."""
    cluster = connect(args.ray)
    only = [_find_node(cluster, args.node).node_id] if getattr(args, "node", None) else None
    snaps = cluster.cluster_snapshot(node_ids=only, node_timeout=node_timeout(args))
    task = getattr(args, "task", None)
    task_pids = None
    if task:
        task_pids = {(n.node_id, p.pid) for n, p, _o in cluster.task_processes(snaps, task)}
    rows = _ps_rows(args, snaps, task_pids)
    _print_ps(args, rows)
    bad = _node_errors(snaps)
    if task and not rows:
        where = "on the nodes that answered" if bad else "on any node"
        print(
            f"procguard: no process of task {safe(task)} {where} (a task's own processes are known while "
            "it runs on a Ray worker, or when procguard tracks it)",
            file=sys.stderr,
        )
        return 1
    return 1 if bad else 0


# ------------------------------------------------------------------------------------------ signals


def _find_node(cluster: ModuleType, ref: str, among: Sequence[Any] | None = None) -> Any:
    try:
        return cluster.find_node(ref, among if among is not None else cluster.nodes())
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_local_targets(args: argparse.Namespace) -> None:
    """Without --ray: NODE:PID, --node and the other cluster-only flags are errors."""
    node_pid = next((t for t in args.targets if isinstance(t, NodePid)), None)
    if node_pid is not None:
        raise UsageError(f"target '{node_pid.node}:{node_pid.pid}' names a node: that needs --ray ADDRESS")
    if getattr(args, "node", None):
        raise UsageError("--node needs --ray ADDRESS")
    check_needs_ray(args)


def _summary(results: Sequence[Any]) -> str:
    """signals.summarize for the processes reached, and how many were not (their node failed)."""
    from procguard.core import signals

    reached = [nr.result for nr in results if not nr.unreachable]
    lost = len(results) - len(reached)
    text = signals.summarize(reached) if reached or not lost else ""
    return ", ".join(x for x in (text, f"{lost} unreachable" if lost else "") if x)


def _result_row(nr: Any) -> str:
    from procguard.core.cli.signals import result_line

    r = nr.result
    what = safe(r.reason) if nr.unreachable else result_line(r)
    return f"{safe(nr.node_id)[:8]:<8} {r.pid:>7} {nr.outcome:<12} {r.elapsed:8.3f}s  {what}"


def _targets_by_node(cluster: ModuleType, args: argparse.Namespace) -> dict[str, list[int]]:
    """node id -> the pids named there (NODE:PID, or a bare pid and --node)."""
    among = cluster.nodes()
    default = _find_node(cluster, args.node, among) if args.node else None
    by_node: dict[str, list[int]] = {}
    for t in args.targets:
        node = _find_node(cluster, t.node, among) if isinstance(t, NodePid) else default
        assert node is not None
        by_node.setdefault(node.node_id, []).append(t.pid if isinstance(t, NodePid) else t)
    return by_node


def _dry_run(
    cluster: ModuleType, args: argparse.Namespace, targets: dict[str, list[Any]], failures: list[Any]
) -> int:
    members, more = cluster.resolve_on_nodes(None, targets, node_timeout=node_timeout(args))
    failures = failures + more
    if args.json:
        print_json(
            {
                "dry_run": True,
                "action": args.action,
                "targets": [
                    {
                        "node": nm.node_id,
                        "pid": nm.member.pid,
                        "name": nm.member.name,
                        "cmdline": list(nm.member.cmdline),
                        "username": nm.member.username,
                        "state": nm.member.state,
                        "pgid": nm.member.pgid,
                        "protected": nm.member.protected,
                    }
                    for nm in members
                ],
                "failures": [f.to_json() for f in failures],
            }
        )
    else:
        print(f"would {args.action} {len(members)} process(es):")
        for nm in members:
            m = nm.member
            note = f"  [refused: {safe(m.protected)}]" if m.protected else ""
            print(
                f"{safe(nm.node_id)[:8]:<8} {m.pid:>7} {safe(m.username)[:10]:<10} {safe(m.state)} "
                f"{safe(m.command)}{note}"
            )
    return 1 if _failure_lines(failures) else 0


def ray_signals(args: argparse.Namespace, ok: set[Any]) -> int:
    """term|kill|pause|resume --ray: each target acted on by the agent of the node that owns it, all nodes at
    once. A node that fails (no answer within --node-timeout, dead) is named on stderr, its targets come out
    `unreachable`, the other nodes' results are still shown, and the exit status is 1."""
    for t in args.targets:
        if not isinstance(t, NodePid) and not args.node:
            raise UsageError(f"pid {t} needs a node with --ray: write NODE:{t} or pass --node NODE")
    cluster = connect(args.ray)
    by_node = _targets_by_node(cluster, args)
    scope = "group" if args.group else "tree" if args.tree else "pid"
    timeout = node_timeout(args)
    try:
        targets, failures = cluster.targets_on_nodes(None, by_node, scope, node_timeout=timeout)
    except ValueError as e:  # a pid a node does not have: bad input, nothing is signalled anywhere
        raise UsageError(str(e)) from None
    if args.dry_run:
        return _dry_run(cluster, args, targets, failures)
    results, more = cluster.signal_nodes(
        None, args.action, targets, getattr(args, "grace", 0.0), node_timeout=timeout
    )
    # A node that failed before anything was sent to it: its pids are unreachable too.
    results += [
        cluster.unreachable_result(f.node_id, pid, str(f)) for f in failures for pid in by_node[f.node_id]
    ]
    failures += more
    if args.json:
        print_json({"results": [r.to_json() for r in results], "failures": [f.to_json() for f in failures]})
    else:
        for nr in results:
            print(_result_row(nr))
    bad = _failure_lines(failures)
    if not args.json:
        print(safe(_summary(results)), file=sys.stderr)
    return 0 if not bad and all(not nr.unreachable and nr.result.outcome in ok for nr in results) else 1


# ------------------------------------------------------------------------------------------ cancel


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`procguard cancel --ray ADDRESS TASK_ID...`."""
    p = sub.add_parser(
        "cancel",
        help="with --ray: cancel tracked Ray tasks by id (their process trees on "
        "their nodes, then the task itself)",
    )
    p.add_argument(
        "tasks",
        metavar="TASK_ID",
        nargs="+",
        help="a task procguard tracks: its id (48 hex digits) or a unique prefix of 4+",
    )
    p.add_argument(
        "--grace",
        type=seconds_arg("--grace"),
        default=5.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL for the task's processes, then for the task to end "
        "before its worker is killed (default 5)",
    )
    p.add_argument(
        "--force", action="store_true", help="no grace: SIGKILL the trees and kill the task's worker at once"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_ray_option(p, help="the Ray cluster (HOST:PORT, auto, ray://...) that runs the tasks (required)")
    p.set_defaults(func=ray_cancel)


def _print_cancel(reports: Sequence[Any]) -> None:
    for rep in reports:
        where = f" (node {safe(rep.node_id)[:8]})" if rep.node_id else ""
        print(f"task {safe(rep.task_id)}{where}: {rep.state}")
        for nr in rep.results:
            print("  " + _result_row(nr))
        if rep.state == "untracked":
            print("  not tracked by procguard: nothing was done (cancel it from its driver with ray.cancel)")
        if rep.ray_cancel_error:
            print(f"  the task itself: {safe(rep.ray_cancel_error)}")
        if rep.running:
            print("  the task is still running")


def ray_cancel(args: argparse.Namespace) -> int:
    """`procguard cancel --ray`: exit 0 when every task ended with all its processes, 1 when a process or a
    task did not (or a node failed, or procguard does not track a task), 2 on bad input."""
    if not getattr(args, "ray", None):
        raise UsageError("cancel needs --ray ADDRESS (the cluster that runs the tasks)")
    cluster = connect(args.ray)
    try:
        reports = cluster.cancel_tasks(
            None, args.tasks, args.grace, args.force, node_timeout=node_timeout(args)
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    except cluster.ClusterError as e:
        print(f"procguard: {safe(e)}", file=sys.stderr)
        return 1
    if args.json:
        print_json({"tasks": [r.to_json() for r in reports]})
    else:
        _print_cancel(reports)
    _failure_lines([f for r in reports for f in r.failures])
    if not args.json:
        states = ", ".join(
            f"{sum(r.state == s for r in reports)} {s}" for s in dict.fromkeys(r.state for r in reports)
        )
        print(
            safe(f"{len(reports)} task(s): {states}; {_summary([nr for r in reports for nr in r.results])}"),
            file=sys.stderr,
        )
    return 0 if all(r.ok and r.state != "untracked" for r in reports) else 1


# ------------------------------------------------------------------------------------------ dupes, locks, gpu

_DUPES_LOCAL_ONLY = (
    ("--terminate", "terminate"),
    ("--explain", "explain"),
    ("--all-users", "all_users"),
    ("--keep", "keep"),
    ("--grace", "grace"),
    ("--dry-run", "dry_run"),
    ("--yes", "yes"),
)


def ray_dupes(args: argparse.Namespace) -> int:
    """`procguard dupes --ray`: each node's duplicate runs (listing only)."""
    from procguard.core.duplicates import group_json

    if getattr(args, "terminate", False):
        raise UsageError(
            "dupes --terminate does not take --ray: end a run with "
            "`procguard term --ray ADDRESS NODE:PID --tree`"
        )
    for flag, dest in _DUPES_LOCAL_ONLY:
        if getattr(args, dest, None) not in (None, False):
            raise UsageError(
                f"dupes {flag} does not take --ray: run `procguard dupes {flag} ...` on the node"
            )
    cluster = connect(args.ray)
    # A relative --script means this directory's file: the agents run elsewhere (symlinks followed there).
    kwargs = {"script": os.path.abspath(args.script)} if getattr(args, "script", None) else {}
    reports = cluster.cluster_duplicates(node_timeout=node_timeout(args), **kwargs)
    if args.json:
        print_json(
            [
                {"node": r.node.node_id, **group_json(g)}
                for r in reports
                if r.value is not None
                for g in r.value.groups
            ]
        )
    else:
        found = False
        for r in reports:
            if r.value is None:
                continue
            for g in r.value.groups:
                found = True
                print(
                    f"{safe(r.node.short)} ({safe(r.node.ip)}) {safe(g.identity.display)}: {len(g.instances)} runs"
                )
                print(f"  {'NODE':<8} {'PID':>7} {'USER':<10} CWD  COMMAND")
                for inst in g.instances:
                    print(
                        f"  {safe(r.node.short):<8} {inst.pid:>7} {safe(inst.username)[:10]:<10} "
                        f"{safe(inst.cwd or '?')}  {safe(inst.command)}"
                    )
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
    reports = cluster.cluster_locks(node_timeout=node_timeout(args), **kwargs)
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
                print(
                    f"{safe(node.short):<8} {pid:>7} {kind:<6} {safe(e.mode or '-'):<5} "
                    f"{'yes' if e.managed else '-':<7} {safe(e.path)}"
                )
    return 1 if _node_errors(reports) else 0


def ray_gpu(args: argparse.Namespace) -> int:
    """`procguard gpu --ray`: each node's GPUs and the processes holding their memory."""
    from procguard.core.cli.gpu import format_gpu, gpu_report

    cluster = connect(args.ray)
    reports = cluster.cluster_gpu(node_timeout=node_timeout(args))

    def no_lookup(pid: int) -> None:  # the guarded-process registry is per node: not readable from here
        return None

    if args.json:
        print_json(
            {
                "nodes": [
                    {
                        "node": r.node.node_id,
                        "node_ip": r.node.ip,
                        "error": r.error,
                        **(gpu_report(r.value, no_lookup) if r.value is not None else {}),
                    }
                    for r in reports
                ]
            }
        )
    else:
        snaps = {
            s.node.node_id: s.snapshot
            for s in cluster.cluster_snapshot(node_timeout=node_timeout(args), owners=False)
        }
        for r in reports:
            if r.value is None:
                continue
            print(f"node {safe(r.node.short)} ({safe(r.node.ip)}){' head' if r.node.is_head else ''}:")
            snap = snaps.get(r.node.node_id)
            from procguard.core.snapshot import Snapshot

            lines = format_gpu(
                gpu_report(r.value, no_lookup), snap if snap is not None else Snapshot({}), r.value
            )
            print("\n".join("  " + ln for ln in lines))
    return 1 if _node_errors(reports) else 0


__all__ = [
    "NODE_TIMEOUT",
    "NodePid",
    "add_node_option",
    "add_ray_option",
    "check_local_targets",
    "check_needs_ray",
    "load_cluster",
    "node_timeout",
    "ray_cancel",
    "ray_dupes",
    "ray_gpu",
    "ray_locks",
    "ray_ps",
    "ray_signals",
    "register",
    "register_ray_flags",
    "target_arg",
    "task_arg",
]
