"""`procguard term|kill|pause|resume`: act on pids, their process groups or their trees."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from procguard.core import signals
from procguard.core.cli import UsageError
from procguard.core.cli._args import print_json, seconds_arg
from procguard.core.cli.cluster import add_node_option, add_ray_option, check_local_targets, target_arg
from procguard.core.sanitize import safe, safe_join
from procguard.core.signals import Outcome, SignalResult, Target
from procguard.core.snapshot import Snapshot, process_snapshot

ACTIONS: dict[str, tuple[str, set[Outcome]]] = {
    "term": ("terminate: SIGTERM, then SIGKILL after the grace", {Outcome.EXITED, Outcome.KILLED,
                                                                  Outcome.ALREADY_GONE}),
    "kill": ("SIGKILL at once (trees frozen first)", {Outcome.EXITED, Outcome.KILLED, Outcome.ALREADY_GONE}),
    "pause": ("SIGSTOP, confirmed in /proc", {Outcome.PAUSED}),
    "resume": ("SIGCONT, confirmed in /proc", {Outcome.RESUMED}),
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, (help_, _ok) in ACTIONS.items():
        p = sub.add_parser(name, help=help_)
        p.add_argument("targets", metavar="TARGET", nargs="+", type=target_arg,
                       help="a pid; with --ray, NODE:PID (or a pid and --node NODE)")
        scope = p.add_mutually_exclusive_group()
        scope.add_argument("--group", action="store_true", help="act on the process group of each TARGET")
        scope.add_argument("--tree", action="store_true", help="act on each TARGET and all its descendants")
        if name == "term":
            p.add_argument("--grace", type=seconds_arg("--grace"), default=5.0, metavar="S",
                           help="seconds between SIGTERM and SIGKILL (default 5)")
        p.add_argument("--dry-run", action="store_true", help="show what would be signalled, signal nothing")
        p.add_argument("--json", action="store_true", help="print JSON")
        add_ray_option(p)
        add_node_option(p)
        p.set_defaults(func=run, action=name)


def build_targets(pids: list[int], group: bool, tree: bool, snap: Snapshot) -> list[Target]:
    """Validate the pids against the live table and turn them into targets (UsageError names a bad one)."""
    targets: list[Target] = []
    for pid in pids:
        proc = snap.get(pid)
        if group:
            if proc is not None:
                targets.append(Target.group(proc.pgid))
            elif pid in snap.group_map:
                targets.append(Target.group(pid))  # a pgid whose leader has exited
            else:
                raise UsageError(f"no process or process group with id {pid}")
            continue
        if proc is None:
            raise UsageError(f"no process with pid {pid}")
        targets.append(Target.tree(pid) if tree else Target.pid(pid))
    return targets


def _act(action: str, targets: list[Target], snap: Snapshot, grace: float) -> list[SignalResult]:
    fns: dict[str, Callable[[], list[SignalResult]]] = {
        "term": lambda: signals.terminate(targets, grace, snapshot=snap),
        "kill": lambda: signals.kill(targets, snapshot=snap),
        "pause": lambda: signals.pause(targets, snapshot=snap),
        "resume": lambda: signals.resume(targets, snapshot=snap),
    }
    return fns[action]()


def result_line(r: SignalResult) -> str:
    """The command and the reason of one result, made safe (both can carry another user's text)."""
    why = f": {safe(r.reason)}" if r.reason else ""
    return f"{safe_join(r.cmdline) or safe(r.name)}{why}"


def run(args: argparse.Namespace) -> int:
    if getattr(args, "ray", None):
        from procguard.core.cli.cluster import ray_signals

        return ray_signals(args, ACTIONS[args.action][1])
    check_local_targets(args)
    snap = process_snapshot()
    targets = build_targets(args.targets, args.group, args.tree, snap)
    if args.dry_run:
        members = signals.resolve(targets, snap)
        if args.json:
            print_json({"dry_run": True, "action": args.action, "targets": [
                {"pid": m.pid, "name": m.name, "cmdline": list(m.cmdline), "username": m.username,
                 "state": m.state, "pgid": m.pgid, "protected": m.protected} for m in members]})
        else:
            print(f"would {args.action} {len(members)} process(es):")
            for m in members:
                note = f"  [refused: {safe(m.protected)}]" if m.protected else ""
                print(f"{m.pid:>7} {safe(m.username)[:10]:<10} {m.state} {safe(m.command)}{note}")
        return 0
    results = _act(args.action, targets, snap, getattr(args, "grace", 0.0))
    ok = ACTIONS[args.action][1]
    if args.json:
        print_json({"results": [r.to_json() for r in results]})
    else:
        for r in results:
            print(f"{r.pid:>7} {r.outcome.value:<12} {r.elapsed:8.3f}s  {result_line(r)}")
        print(safe(signals.summarize(results)), file=sys.stderr)
    return 0 if all(r.outcome in ok for r in results) else 1
