"""`procguard term|kill|pause|resume`: act on pids, their process groups or their trees, or a whole cgroup."""

from __future__ import annotations

import argparse
import sys

from procguard.core import cgroups, signals
from procguard.core.cli import UsageError
from procguard.core.cli._args import plural, print_json, seconds_arg
from procguard.core.cli.cluster import add_node_option, add_ray_option, check_local_targets, target_arg
from procguard.core.sanitize import safe, safe_join
from procguard.core.signals import Outcome, SignalResult, Target
from procguard.core.snapshot import Snapshot, process_snapshot

ACTIONS: dict[str, tuple[str, set[Outcome]]] = {
    "term": (
        "terminate: SIGTERM, then SIGKILL after the grace",
        {Outcome.EXITED, Outcome.KILLED, Outcome.ALREADY_GONE},
    ),
    "kill": ("SIGKILL at once (trees frozen first)", {Outcome.EXITED, Outcome.KILLED, Outcome.ALREADY_GONE}),
    "pause": ("SIGSTOP, confirmed in /proc (a cgroup: cgroup.freeze)", {Outcome.PAUSED}),
    "resume": ("SIGCONT, confirmed in /proc (a cgroup: thawed)", {Outcome.RESUMED}),
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, (help_, _ok) in ACTIONS.items():
        p = sub.add_parser(name, help=help_)
        p.add_argument(
            "targets",
            metavar="TARGET",
            nargs="*",
            type=target_arg,
            help="a pid; with --ray, NODE:PID (or a pid and --node NODE)",
        )
        scope = p.add_mutually_exclusive_group()
        scope.add_argument("--group", action="store_true", help="act on the process group of each TARGET")
        scope.add_argument("--tree", action="store_true", help="act on each TARGET and all its descendants")
        scope.add_argument(
            "--cgroup",
            metavar="PATH",
            help="act on every process in the cgroup PATH and below "
            "(as /proc/PID/cgroup or `ps --json` shows it, or its folder under /sys/fs/cgroup); "
            "cgroup v2: cgroup.kill / cgroup.freeze, else freeze-then-kill by signals",
        )
        if name == "term":
            p.add_argument(
                "--grace",
                type=seconds_arg("--grace"),
                default=5.0,
                metavar="S",
                help="seconds between SIGTERM and SIGKILL (default 5)",
            )
        p.add_argument("--dry-run", action="store_true", help="show what would be signalled, signal nothing")
        p.add_argument("--json", action="store_true", help="print JSON")
        add_ray_option(p)
        add_node_option(p)
        p.set_defaults(func=run, action=name)


def build_targets(pids: list[int], group: bool, tree: bool, snap: Snapshot) -> list[Target]:
    """Validate the pids against the live table and turn them into targets (UsageError names a bad one)."""
    try:
        return signals.build_targets(pids, "group" if group else "tree" if tree else "pid", snap)
    except ValueError as e:
        raise UsageError(str(e)) from None


def result_line(r: SignalResult) -> str:
    """The command and the reason of one result, made safe (both can carry another user's text)."""
    why = f": {safe(r.reason)}" if r.reason else ""
    return f"{safe_join(r.cmdline) or safe(r.name)}{why}"


def _members_json(members: list[signals.Member]) -> list[dict[str, object]]:
    return [
        {
            "pid": m.pid,
            "name": m.name,
            "cmdline": list(m.cmdline),
            "username": m.username,
            "state": m.state,
            "pgid": m.pgid,
            "protected": m.protected,
        }
        for m in members
    ]


def _print_members(members: list[signals.Member], said: str | None = None) -> None:
    """One row per member; a refusal is noted on its row unless it is `said` (once, for the whole cgroup)."""
    for m in members:
        note = f"  [would be refused: {safe(m.protected)}]" if m.protected and m.protected != said else ""
        print(f"{m.pid:>7} {safe(m.username)[:10]:<10} {m.state} {safe(m.command)}{note}")


def _dry_run(args: argparse.Namespace, targets: list[Target], snap: Snapshot) -> int:
    """What would be signalled; exit 1 when any of it would be refused."""
    members = signals.resolve(targets, snap)
    refused = [m for m in members if m.protected]
    if args.json:
        print_json({"dry_run": True, "action": args.action, "targets": _members_json(members)})
    else:
        print(f"would {args.action} {plural(len(members), 'process', 'processes')}:")
        _print_members(members)
        if refused:
            print(f"{plural(len(refused), 'process', 'processes')} would be refused", file=sys.stderr)
    return 1 if refused else 0


def _check_targets(args: argparse.Namespace) -> None:
    if args.cgroup is not None:
        if args.targets:
            raise UsageError("--cgroup takes no TARGET: it acts on every process in the cgroup")
        if getattr(args, "ray", None):
            raise UsageError("--cgroup does not take --ray: run it on the node")
    elif not args.targets:
        raise UsageError("the following arguments are required: TARGET (or --cgroup PATH)")


def run(args: argparse.Namespace) -> int:
    _check_targets(args)
    if getattr(args, "ray", None):
        from procguard.core.cli.cluster import ray_signals

        return ray_signals(args, ACTIONS[args.action][1])
    check_local_targets(args)
    if args.cgroup is not None:
        return run_cgroup(args)
    snap = process_snapshot()
    targets = build_targets(args.targets, args.group, args.tree, snap)
    if args.dry_run:
        return _dry_run(args, targets, snap)
    results = signals.run_action(args.action, targets, grace=getattr(args, "grace", 0.0), snapshot=snap)
    ok = ACTIONS[args.action][1]
    if args.json:
        print_json({"results": [r.to_json() for r in results]})
    else:
        for r in results:
            print(f"{r.pid:>7} {r.outcome.value:<12} {r.elapsed:8.3f}s  {result_line(r)}")
        print(safe(signals.summarize(results)), file=sys.stderr)
    return 0 if all(r.outcome in ok for r in results) else 1


# ---------------------------------------------------------------------------------------------- --cgroup


def _cgroup_how(action: str, plan: cgroups.CgroupPlan, grace: float) -> str:
    """How the action would go on this cgroup now, in words."""
    if action == "term":
        return f"SIGTERM, then {plan.kill_method} after {grace:g} s"
    if action == "kill":
        return plan.kill_method
    if action == "pause":
        return plan.freeze_method
    return (
        "thaw the freezer, SIGCONT to stopped members" if plan.state.frozen else "SIGCONT to stopped members"
    )


def _cgroup_dry_run(args: argparse.Namespace, plan: cgroups.CgroupPlan) -> int:
    how = _cgroup_how(args.action, plan, getattr(args, "grace", 0.0))
    members = signals.resolve(Target.cgroup(plan.cgroup.path))
    fallback = plan.fallback if args.action != "resume" else None
    if args.json:
        print_json(
            {
                "dry_run": True,
                "action": args.action,
                "cgroup": {
                    "path": plan.cgroup.path,
                    "version": plan.cgroup.version,
                    "kind": plan.name.kind,
                    "label": plan.name.label,
                    "frozen": plan.state.frozen,
                    "method": how,
                    "fallback": fallback,
                    "refused": plan.refused,
                },
                "targets": _members_json(members),
            }
        )
        return 1 if plan.refused else 0
    frozen = ", frozen" if plan.state.frozen else ""
    print(
        f"would {args.action} cgroup {safe(plan.cgroup.path)} ({safe(plan.name.label)}, v{plan.cgroup.version}"
        f"{frozen}): {plural(len(members), 'process', 'processes')}, via {how}"
    )
    if fallback and args.action != "resume":
        print(f"fallback: {safe(fallback)}")
    _print_members(members, plan.refused)
    if plan.refused:
        print(f"would be refused: {safe(plan.refused)}", file=sys.stderr)
        return 1
    return 0


def _cgroup_act(action: str, path: str, grace: float) -> cgroups.CgroupResult:
    if action == "term":
        return cgroups.terminate_cgroup(path, grace)
    if action == "kill":
        return cgroups.kill_cgroup(path)
    if action == "pause":
        return cgroups.freeze_cgroup(path)
    return cgroups.thaw_cgroup(path)


def run_cgroup(args: argparse.Namespace) -> int:
    """term|kill|pause|resume --cgroup PATH. Exit 0 when every member ended up as asked and the kernel confirmed
    it (empty / frozen / thawed), 1 otherwise or when refused, 2 for a path that is not a cgroup."""
    try:
        plan = cgroups.cgroup_plan(args.cgroup)
    except cgroups.CgroupError as e:
        raise UsageError(str(e)) from None
    if args.dry_run:
        return _cgroup_dry_run(args, plan)
    try:
        if plan.refused:
            raise cgroups.CgroupError(plan.refused)
        r = _cgroup_act(args.action, plan.cgroup.path, getattr(args, "grace", 0.0))
    except cgroups.CgroupError as e:  # refused (it may have become so since the plan)
        if args.json:
            print_json({"results": [], "cgroup": {"path": plan.cgroup.path, "refused": str(e)}})
        print(f"procguard: {safe(e)}", file=sys.stderr)
        return 1
    ok = ACTIONS[args.action][1]
    if args.json:
        info = r.to_json()
        results = info.pop("results")
        print_json({"results": results, "cgroup": info})
    else:
        for x in r.results:
            print(f"{x.pid:>7} {x.outcome.value:<12} {x.elapsed:8.3f}s  {result_line(x)}")
        print(r.summary(), file=sys.stderr)
        for note in r.notes:
            print(f"note: {safe(note)}", file=sys.stderr)
    return 0 if r.confirmed and all(x.outcome in ok for x in r.results) else 1
