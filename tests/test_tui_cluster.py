"""procguard-tui, issue 15 item 3: one table for the whole cluster, without Ray. A cluster backend made of two
copies of the demo scenario (the same pids on both nodes: a pid names another process on each), whose actions
pretend like the demo's and record what each node was sent. The real cluster (Ray) has its tests in
tests/test_cluster.py (marked `ray`).

Checked: rows keyed by (node, pid), marks and cursor too; a NODE column; sorting merges the nodes; `n` narrows to
one node, cycles, then back to all; an action goes to the node of each selected row, every node's part at once;
the confirm dialog groups its processes by node; the summary counts the whole cluster or the node shown; a node
that fails is named in the summary while the other's rows keep refreshing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest
from textual.pilot import Pilot

from procguard.core.signals import Member, Outcome, SignalResult, Target, action_name
from procguard.tui.actions import make_plan
from procguard.tui.app import Options, ProcguardApp
from procguard.tui.backends import ProgressFn
from procguard.tui.backends.demo import DemoBackend, demo_model, demo_resolve
from procguard.tui.model import (
    Model,
    NodeTargets,
    NodeView,
    ViewState,
    build_rows,
    cluster_model,
    key_alive,
    make_model,
    node_targets,
    prune_marks,
    summarize_model,
)
from procguard.tui.rows import duplicate_rows, gpu_rows
from procguard.tui.screens.confirm import ConfirmScreen, member_lines
from procguard.tui.widgets.summary import Summary, summary_markup

HEAD = "aa" * 28
WORKER = "bb" * 28


def part(node: str, index: int, count: int = 2, gone: frozenset[int] = frozenset()) -> Model:
    m = demo_model(gone=gone)
    view = NodeView(node, f"10.0.0.{index}", index == 1, index, count)
    return make_model(
        m.seq,
        m.snapshot,
        m.gpu,
        duplicates=m.duplicates,
        scheduled=m.scheduled,
        locks=m.locks,
        stale_locks=m.stale_locks,
        guarded=m.guarded.values(),
        node=view,
        owners={2101: "c0ffee00"} if node == WORKER else {},
    )


class TwoNodes(DemoBackend):
    """A cluster of two demo machines. `down`: the worker does not answer (a NodeFailure line). Records the
    targets each node was sent per act_nodes call."""

    static = False
    cluster = True

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.sent: list[dict[str, tuple[Target, ...]]] = []
        self.gone_on: dict[str, set[int]] = {HEAD: set(), WORKER: set()}
        self.calls = threading.Lock()

    def collect(self) -> Model:
        with self._lock:
            self._seq += 1
            parts = [part(HEAD, 1, gone=frozenset(self.gone_on[HEAD]))]
            failures = []
            if self.down:
                failures.append(f"node {WORKER[:8]} (10.0.0.2): did not answer within 10 s")
            else:
                parts.append(part(WORKER, 2, gone=frozenset(self.gone_on[WORKER])))
            return cluster_model(self._seq, parts, failures)

    def resolve_nodes(
        self, parts: Sequence[NodeTargets]
    ) -> tuple[list[tuple[str, Member]], list[tuple[str, str]]]:
        return [(p.node, m) for p in parts for m in demo_resolve(p.snapshot, p.targets)], []

    def act_nodes(
        self,
        action: str,
        parts: Sequence[NodeTargets],
        *,
        grace: float = 5.0,
        on_progress: ProgressFn | None = None,
    ) -> list[SignalResult]:
        name = action_name(action)
        with self.calls:
            self.sent.append({p.node: p.targets for p in parts})
        out = []
        for p in parts:
            members = [m for m in demo_resolve(p.snapshot, p.targets) if not m.protected]
            if name == "kill":
                with self._lock:
                    self.gone_on[p.node].update(m.pid for m in members)
            out += [
                SignalResult(m.pid, Outcome.KILLED, 0.0, None, m.name, m.cmdline, m.username) for m in members
            ]
        return out


def both() -> Model:
    return cluster_model(1, [part(HEAD, 1), part(WORKER, 2)])


# ---------------------------------------------------------------------------------------------- pure


def test_rows_are_keyed_by_node_and_pid() -> None:
    m = both()
    rows = build_rows(m, ViewState())
    keys = [r.key for r in rows]
    assert len(keys) == len(set(keys))  # the same pid twice, two rows
    assert ("p", 2101, HEAD) in keys and ("p", 2101, WORKER) in keys
    assert all(len(k) == 3 and k[2] == r.node for k, r in zip(keys, rows, strict=True))
    # pid order: node by node, head first
    assert [r.node for r in rows] == sorted((r.node for r in rows), key=lambda n: n != HEAD)
    assert next(r for r in rows if r.key == ("p", 2101, WORKER)).task == "c0ffee00"
    # sorted by CPU, the nodes' top-level blocks merge: the busiest root of the cluster comes first either way
    by_cpu = build_rows(m, ViewState(sort="cpu", grouping="group"))
    tops = [r for r in by_cpu if r.depth == 0]
    assert {tops[0].node, tops[1].node} == {HEAD, WORKER} and tops[0].cpu == tops[1].cpu
    assert [r.cpu for r in tops] == sorted((r.cpu for r in tops), reverse=True)
    # narrowed to one node
    only = build_rows(m, ViewState(node=WORKER))
    assert only and {r.node for r in only} == {WORKER}


def test_targets_marks_and_liveness_go_by_node() -> None:
    m = both()
    groups = node_targets([("p", 2466, WORKER), ("g", 2101, HEAD), ("p", 5200, WORKER)], m)
    assert [(g.node, g.targets) for g in groups] == [
        (HEAD, (Target.group(2101),)),
        (WORKER, (Target.pid(2466), Target.pid(5200))),
    ]
    assert groups[0].snapshot is m.part(HEAD).snapshot  # type: ignore[union-attr]
    assert groups[1].label.startswith(WORKER[:8])
    gone = cluster_model(2, [part(HEAD, 1, gone=frozenset({2466})), part(WORKER, 2)])
    assert not key_alive(gone, ("p", 2466, HEAD)) and key_alive(gone, ("p", 2466, WORKER))
    assert prune_marks({("p", 2466, HEAD), ("p", 2466, WORKER)}, gone) == {("p", 2466, WORKER)}
    failed = cluster_model(3, [part(HEAD, 1)], ["node bbbbbbbb (10.0.0.2): did not answer within 10 s"])
    assert prune_marks({("p", 1, WORKER), ("p", 1, HEAD)}, failed) == {("p", 1, HEAD)}


def test_summary_counts_the_cluster_or_the_node_and_names_a_failed_node() -> None:
    one = summarize_model(demo_model())
    m = both()
    assert summarize_model(m).processes == 2 * one.processes and summarize_model(m).nodes == 2
    assert summarize_model(m).gpu_total == 2 * (one.gpu_total or 0)
    assert summarize_model(m.only(WORKER)).processes == one.processes
    failed = cluster_model(3, [part(HEAD, 1)], ["node bbbbbbbb (10.0.0.2): did not answer within 10 s"])
    text = summary_markup(failed, 160, "all 1 node").plain
    assert "node all 1 node" in text and "⚠ node bbbbbbbb (10.0.0.2): did not answer" in text
    assert summarize_model(failed).processes == one.processes


def test_views_2_to_4_have_a_section_per_node() -> None:
    rows = duplicate_rows(both())
    sections = [
        r.cells[0].text
        for r in rows
        if r.kind == "section" and r.key[0] == "section" and str(r.key[1]).startswith("node-")
    ]
    assert sections == [f"node {HEAD[:8]} 10.0.0.1 (head) · 1 of 2", f"node {WORKER[:8]} 10.0.0.2 · 2 of 2"]
    inst = [r for r in rows if r.key[0] == "inst"]
    assert {(r.key[1], r.node) for r in inst} == {(2101, HEAD), (2466, HEAD), (2101, WORKER), (2466, WORKER)}
    gpu = [r for r in gpu_rows(both()) if r.pid == 3120]
    assert sorted(r.node for r in gpu) == sorted([HEAD, WORKER])


def test_a_plan_on_two_nodes_groups_its_processes_by_node() -> None:
    m = both()
    backend = TwoNodes()
    plan = make_plan(backend, "kill", node_targets([("p", 2466, WORKER), ("p", 6001, HEAD)], m), m, 1.0)
    assert [(g.node, g.targets) for g in plan.nodes] == [
        (HEAD, (Target.pid(6001),)),
        (WORKER, (Target.pid(2466),)),
    ]
    assert plan.blast.nodes == (HEAD, WORKER) and plan.blast.gpu_bytes == 22 * 1024**3
    text = [c.plain for c in member_lines(plan)]
    assert text[0].startswith(f"node {HEAD[:8]} 10.0.0.1 (head)") and "6001" in text[1]
    assert text[2].startswith(f"node {WORKER[:8]} 10.0.0.2") and "2466" in text[3]


# ---------------------------------------------------------------------------------------------- the app


async def until(pilot: Pilot[None], pred: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        await pilot.pause(0.02)


@pytest.mark.asyncio
async def test_app_marks_rows_of_two_nodes_and_kills_both_in_one_action() -> None:
    backend = TwoNodes()
    app = ProcguardApp(Options(interval=0.1, grace=0.5), backend=backend)
    async with app.run_test(size=(130, 40)) as pilot:
        await until(pilot, lambda: app.process_table.index_of(("p", 6001, WORKER)) is not None)
        assert [c.title for c in app.process_table.columns][:3] == ["", "PID", "NODE"]
        assert "TASK" in [c.title for c in app.process_table.columns]
        for key in (("p", 6001, HEAD), ("p", 6002, WORKER)):
            assert app.process_table.move_to_key(key)
            await pilot.press("space")
        assert app.marks == {("p", 6001, HEAD), ("p", 6002, WORKER)}
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        dialog = app.screen
        assert isinstance(dialog, ConfirmScreen) and dialog.node == "2 nodes, each on its own processes"
        assert [g.node for g in dialog.plan.nodes] == [HEAD, WORKER]
        await pilot.press("y")
        await until(pilot, lambda: backend.sent)
        assert backend.sent == [{HEAD: (Target.pid(6001),), WORKER: (Target.pid(6002),)}]  # one action, both
        # each gone on its own node only: the other node's same pid is another process, still there
        await until(pilot, lambda: not key_alive(app.model, ("p", 6001, HEAD)))  # type: ignore[arg-type]
        assert key_alive(app.model, ("p", 6001, WORKER)) and key_alive(app.model, ("p", 6002, HEAD))  # type: ignore[arg-type]
        assert not key_alive(app.model, ("p", 6002, WORKER))  # type: ignore[arg-type]
        assert not app.marks  # ended: their marks went


@pytest.mark.asyncio
async def test_n_narrows_to_each_node_then_all_and_a_failed_node_is_named() -> None:
    backend = TwoNodes()
    app = ProcguardApp(Options(interval=0.1), backend=backend)

    def nodes_shown() -> set[str]:  # (the cursor's row, gone, stays until the cursor moves: not counted)
        table = app.process_table
        return {r.node for r in table.rows if not table.is_gone(r)}

    def summary() -> str:
        return str(app.query_one(Summary).render())

    async with app.run_test(size=(130, 30)) as pilot:
        await until(pilot, lambda: nodes_shown() == {HEAD, WORKER})
        assert "node all 2 nodes" in summary()
        full = summarize_model(app.model).processes  # type: ignore[arg-type]
        assert f"{full} procs" in summary()
        assert app.process_table.move_to_key(("p", 2101, WORKER))
        await pilot.press("space")
        await pilot.press("n")
        await until(pilot, lambda: nodes_shown() == {HEAD})
        assert f"node {HEAD[:8]} 10.0.0.1 (head) · 1 of 2" in summary() and f"{full // 2} procs" in summary()
        await pilot.press("n")
        await until(pilot, lambda: nodes_shown() == {WORKER})
        await pilot.press("n")
        await until(pilot, lambda: nodes_shown() == {HEAD, WORKER})
        assert app.marks == {("p", 2101, WORKER)}  # marks stay while narrowing
        # The worker stops answering: named in the summary, the head's rows keep coming.
        backend.down = True
        await until(pilot, lambda: "did not answer" in summary())
        await until(pilot, lambda: nodes_shown() == {HEAD})
        seen = app.record.models_applied
        await until(pilot, lambda: app.record.models_applied >= seen + 2)  # still refreshing
        backend.down = False
        await until(pilot, lambda: nodes_shown() == {HEAD, WORKER} and "did not answer" not in summary())
