"""Actions as plain data and functions, no Textual: a `Plan` (what would be hit, for the confirm dialog) made
from a selection, `run_plan` executing it through a backend, and `describe` turning results into the one line
a notification shows. The app calls these from thread workers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from procguard.core.duplicates import DuplicateGroup, Instance
from procguard.core.identity import ScriptIdentity
from procguard.core.signals import Member, Progress, SignalResult, Target, summarize
from procguard.core.snapshot import Snapshot
from procguard.tui.backends import Backend, ProgressFn
from procguard.tui.model import Blast, Model, NodeTargets, blast_radius

Kind = Literal["terminate", "kill", "pause", "resume", "end_duplicates"]
VERBS = {
    "terminate": "Terminate",
    "kill": "Kill",
    "pause": "Pause",
    "resume": "Resume",
    "end_duplicates": "End duplicate runs",
}
CONFIRMED: frozenset[str] = frozenset({"terminate", "kill", "end_duplicates"})


class OutOfScope(Exception):
    """The plan would touch a process the app was told never to act on (tests scope the app this way)."""


@dataclass(frozen=True)
class Plan:
    kind: Kind
    targets: tuple[Target, ...]
    snapshot: Snapshot  # the one the dry run used; the action uses it too, so it hits what the dialog showed
    blast: Blast
    grace: float
    identity: ScriptIdentity | None = None  # end_duplicates: which script
    notes: tuple[str, ...] = field(default=())  # extra lines for the dialog (kept run, skipped runs)
    victims: tuple[Instance, ...] = ()  # end_duplicates: the runs the dialog shows; only these may end
    all_users: bool = False  # end_duplicates: root may end other users' runs (--all-users)
    nodes: tuple[
        NodeTargets, ...
    ] = ()  # cluster mode: each node's targets and snapshot (each acts on its own)

    @property
    def title(self) -> str:
        n = len(self.blast.acting)
        what = f"{n} process{'es' if n != 1 else ''}"
        if self.kind == "terminate":
            return f"Terminate {what}? SIGTERM, then SIGKILL after {self.grace:g} s"
        if self.kind == "kill":
            return f"Kill {what}? SIGKILL at once, no chance to clean up"
        if self.kind == "end_duplicates":
            return f"End {what} of duplicate runs? SIGTERM, then SIGKILL after {self.grace:g} s"
        return f"{VERBS[self.kind]} {what}?"


def make_plan(
    backend: Backend,
    kind: Kind,
    targets: Sequence[Target] | Sequence[NodeTargets],
    model: Model,
    grace: float,
    scope: Callable[[Member], bool] | None = None,
) -> Plan:
    """The dry run of `targets` (plain targets on the model's snapshot, or targets grouped by node: model.node_targets;
    in cluster mode every node's part is resolved on that node, all at once)."""
    groups = [g if isinstance(g, NodeTargets) else NodeTargets("", "", (g,), model.snapshot) for g in targets]
    flat = tuple(t for g in groups for t in g.targets)
    if not model.cluster:
        members = backend.resolve(flat, model.snapshot)
        _check_scope(members, scope)
        notes = tuple(backend.plan_notes(kind, flat))
        return Plan(kind, flat, model.snapshot, blast_radius(model, members), grace, notes=notes)
    pairs, failed = backend.resolve_nodes(groups)
    members = [m for _node, m in pairs]
    _check_scope(members, scope)
    # A node that did not answer the dry run is left out of the action: the dialog says so.
    gone = {node for node, _why in failed}
    notes = tuple(f"left out: {why}" for _node, why in failed)
    return Plan(
        kind,
        tuple(t for g in groups if g.node not in gone for t in g.targets),
        model.snapshot,
        blast_radius(model, members, [node for node, _m in pairs]),
        grace,
        notes=notes,
        nodes=tuple(g for g in groups if g.node not in gone),
    )


def make_duplicates_plan(
    backend: Backend,
    group: DuplicateGroup,
    model: Model,
    grace: float,
    scope: Callable[[Member], bool] | None = None,
    *,
    all_users: bool = False,
) -> Plan:
    report = backend.plan_duplicates(group.identity, grace, model.snapshot, all_users=all_users)
    if report.skipped_reason:
        raise RuntimeError(report.skipped_reason)
    _check_scope(report.would_end, scope)
    notes = [f"keeps pid {k.pid} (the oldest run): {k.command}" for k in report.kept]
    notes += [f"leaves pid {inst.pid} alone: {why}" for inst, why in report.skipped]
    if not report.would_end:
        raise RuntimeError(
            f"nothing to end for {group.identity.display}"
            + (f" ({'; '.join(notes[1:])})" if len(notes) > 1 else "")
        )
    return Plan(
        "end_duplicates",
        (),
        model.snapshot,
        blast_radius(model, report.would_end),
        grace,
        group.identity,
        tuple(notes),
        tuple(report.ended),
        all_users,
    )


def _check_scope(members: Sequence[Member], scope: Callable[[Member], bool] | None) -> None:
    if scope is None:
        return
    outside = [m for m in members if not scope(m)]
    if outside:
        m = outside[0]
        raise OutOfScope(f"refusing: pid {m.pid} ({m.command[:60]}) is outside this session's scope")


@dataclass(frozen=True)
class Done:
    kind: Kind
    results: tuple[SignalResult, ...]
    message: str
    severity: Literal["information", "warning", "error"]


def describe(kind: Kind, results: Sequence[SignalResult]) -> Done:
    """The notification for finished results: core's summary, then the reason of each failure (a few)."""
    text = summarize(results)
    bad = [r for r in results if not r.ok]
    if bad:
        reasons = "; ".join(f"pid {r.pid} {r.outcome}: {r.reason or 'no reason given'}" for r in bad[:3])
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        text = f"{text}. {reasons}{more}"
    if not results:
        severity: Literal["information", "warning", "error"] = "warning"
        text = "nothing to do: the selection is gone"
    elif not bad:
        severity = "information"
    elif len(bad) < len(results):
        severity = "warning"
    else:
        severity = "error"
    return Done(kind, tuple(results), text, severity)


def run_plan(backend: Backend, plan: Plan, on_progress: ProgressFn | None = None) -> Done:
    if plan.kind == "end_duplicates":
        return _end_duplicates(backend, plan, on_progress)
    if plan.nodes:  # cluster mode: each node acts on its own part, all at once
        results = backend.act_nodes(plan.kind, plan.nodes, grace=plan.grace, on_progress=on_progress)
    else:
        results = backend.act(
            plan.kind, plan.targets, plan.snapshot, grace=plan.grace, on_progress=on_progress
        )
    return describe(plan.kind, results)


def _end_duplicates(backend: Backend, plan: Plan, on_progress: ProgressFn | None) -> Done:
    assert plan.identity is not None
    report = backend.end_duplicates(
        plan.identity, plan.grace, plan.snapshot, on_progress, victims=plan.victims, all_users=plan.all_users
    )
    if report.skipped_reason:
        return Done(plan.kind, (), f"nothing ended: {report.skipped_reason}", "error")
    # A confirmed run that changed since the dialog (ended, another process, another job) was left alone.
    changed = [
        (inst, why) for inst, why in report.skipped if inst.proc_id in {v.proc_id for v in plan.victims}
    ]
    skipped = "; ".join(f"skipped pid {inst.pid}: {why}" for inst, why in changed)
    if not report.results and changed:
        return Done(plan.kind, (), f"nothing ended: {skipped}", "warning")
    done = describe(plan.kind, report.results)
    if not changed:
        return done
    severity: Literal["information", "warning", "error"] = "error" if done.severity == "error" else "warning"
    return Done(plan.kind, done.results, f"{done.message}; {skipped}", severity)


def progress_label(event: Progress) -> str | None:
    """What the rows of `event.pids` show while an action runs on them (None: nothing new)."""
    if event.phase in ("sigterm", "waiting"):
        return f"SIGTERM sent, {event.remaining:.1f} s left"
    if event.phase == "exited":
        return "exited"
    if event.phase == "sigkill":
        return "SIGKILL sent"
    return None
