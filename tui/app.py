"""procguard-tui: the Textual app (its command line: cli.py).

Threads: one long-lived collector worker builds an immutable Model every `--interval` seconds and posts it;
dry runs and actions run in their own short thread workers calling core (through the backend) and post
progress and results. Widgets are only touched here, on the UI thread, in message handlers and watchers.

State: what the screen shows follows from a few Textual reactives, each with a watcher that redraws what
depends on it: `model` (the latest refresh), `view` (the tab shown), `view_state` (grouping, sort, filter),
`marks` and `status` (progress labels of running actions). Handlers and actions only assign them.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.message import Message
from textual.reactive import var
from textual.screen import ModalScreen, Screen
from textual.widgets import ContentSwitcher, Footer, Input, Tab, Tabs
from textual.worker import get_current_worker

from procguard.core.duplicates import DuplicateGroup
from procguard.core.signals import Member, Progress, Target
from procguard.core.snapshot import DEAD_STATES
from procguard.tui.actions import (
    CONFIRMED,
    VERBS,
    Kind,
    Plan,
    make_duplicates_plan,
    make_plan,
    progress_label,
    run_plan,
)
from procguard.tui.backends import Backend, NodeView
from procguard.tui.messages import (
    ActionDone,
    ActionFailed,
    ActionProgress,
    CollectFailed,
    ModelReady,
    Notice,
    PlanReady,
)
from procguard.tui.model import (
    GROUPINGS,
    SORT_KEYS,
    Model,
    Row,
    RowKey,
    ViewState,
    build_rows,
    key_alive,
    prune_marks,
    status_text,
    targets_for_keys,
)
from procguard.tui.panes.duplicates import DuplicatesPane
from procguard.tui.panes.gpu import GpuPane
from procguard.tui.panes.locks import LocksPane
from procguard.tui.screens.confirm import ConfirmScreen
from procguard.tui.screens.details import DetailsScreen
from procguard.tui.screens.help import HelpScreen
from procguard.tui.text import plain
from procguard.tui.widgets.process_table import ProcessTable
from procguard.tui.widgets.summary import StatusLine, Summary
from procguard.tui.widgets.table import KeyedTable

VIEWS = ("processes", "duplicates", "locks", "gpu")
VIEW_TITLES = {"processes": "Processes", "duplicates": "Duplicates", "locks": "Locks", "gpu": "GPU"}
VIEW_HINTS = {  # (narrow, wide)
    "duplicates": ("d: end all but the oldest run · t/k/p/r: the selected run",
                   "d ends all but the oldest run of the selected script · t/k/p/r act on the selected run "
                   "(with its process tree) · Enter details"),
    "locks": ("x: remove stale lock files · t/k/p/r: the lock's holders",
              "x removes the stale lock files · t/k/p/r act on the selected lock's holders · Enter details"),
    "gpu": ("f: flush a guarded process's GPU cache · t/k/p/r: selected",
            "f asks the selected guarded process to flush its GPU cache · t/k/p/r act on the selected process "
            "· Enter details"),
}
KEYMAP_ENV = "PROCGUARD_TUI_KEYMAP"
CLUSTER_ONLY = frozenset({"procguard.node"})  # binding ids shown (footer, help, palette) only with --ray


@dataclass(frozen=True)
class Options:
    interval: float = 1.0
    filter: str = ""
    grace: float = 5.0
    user: str | None = None
    no_confirm: bool = False
    all_users: bool = False  # d: root may end other users' runs too (never without it)


@dataclass
class AppRecord:
    """The app's one test hook (`ProcguardApp.record`): what it did, for tests and the screenshot script to
    wait on and check. The app itself only ever adds to it, never reads it; all of it is bounded.

    A test that checks something did NOT happen waits until `models_applied` passed a value it read after the
    action (a refresh happened since), never a fixed time."""

    models_applied: int = 0  # models shown (each refresh, each node switch)
    actions_started: int = 0  # plans started (confirmed, or without a dialog)
    notices: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=1000))  # (text, severity)
    progress_log: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=2000))  # (pid, label)


class NodeSwitched(Message):
    """A node switch finished (cluster mode): the first model of the new node, or why it failed."""

    def __init__(self, model: Model | None, error: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.error = error


class ViewTabs(Tabs, can_focus=False):
    """The view tabs: clickable, never focused (keys 1-4 switch views, arrows belong to the tables)."""


class FilterInput(Input):
    """`/`: live filter. Enter keeps it, Escape clears it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "clear_filter", "Clear filter", id="procguard.filter.clear"),
    ]

    def action_clear_filter(self) -> None:
        self.value = ""
        self.post_message(self.Submitted(self, ""))


class ProcguardApp(App[None]):
    """`backend`: where data comes from and actions go (backends.live.LiveBackend by default;
    backends.demo.DemoBackend for the demo scenario; backends.ray.RayNodeBackend for one node of a Ray cluster,
    whose `cluster` turns on cluster mode: the node shown named in the summary line, `n` to switch node).
    `act_scope`: when given, every dry run is checked against it and an action that would touch any process
    outside it is refused (tests scope the app to their own processes this way)."""

    CSS_PATH = "app.tcss"
    TITLE = "procguard-tui"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "show_view('processes')", "Processes", show=False, id="procguard.view.processes"),
        Binding("2", "show_view('duplicates')", "Duplicates", show=False, id="procguard.view.duplicates"),
        Binding("3", "show_view('locks')", "Locks", show=False, id="procguard.view.locks"),
        Binding("4", "show_view('gpu')", "GPU", show=False, id="procguard.view.gpu"),
        Binding("t", "terminate", "Term", id="procguard.terminate", tooltip="SIGTERM, SIGKILL after the grace"),
        Binding("k", "kill", "Kill", id="procguard.kill", tooltip="SIGKILL"),
        Binding("p", "pause", "Pause", id="procguard.pause", tooltip="SIGSTOP"),
        Binding("r", "resume", "Resume", id="procguard.resume", tooltip="SIGCONT"),
        Binding("f", "flush", "Flush", show=False, id="procguard.flush",
                tooltip="ask a guarded process to empty its GPU cache"),
        Binding("d", "end_duplicates", "End dups", id="procguard.end_duplicates"),
        Binding("x", "clean_locks", "Clean stale", id="procguard.clean_locks"),
        Binding("g", "cycle_grouping", "Group", id="procguard.group"),
        Binding("s", "cycle_sort", "Sort", id="procguard.sort"),
        Binding("S", "reverse_sort", "Reverse sort", show=False, id="procguard.sort_reverse"),
        Binding("slash", "filter", "Filter", id="procguard.filter"),
        Binding("space", "toggle_mark", "Mark", show=False, id="procguard.mark"),
        Binding("ctrl+a", "mark_all", "Mark all", show=False, id="procguard.mark_all"),
        Binding("escape", "clear_marks", "Clear marks", show=False, id="procguard.clear_marks"),
        Binding("enter", "details", "Details", show=False, id="procguard.details"),
        Binding("n", "next_node", "Node", id="procguard.node", tooltip="show the next node of the cluster"),
        Binding("question_mark", "help", "Help", id="procguard.help"),
        Binding("q", "quit", "Quit", id="procguard.quit"),
    ]

    # The state the screen is drawn from (see the module docstring). `var`: no repaint of the whole app on a
    # change, only what each watcher redraws; init=False: nothing is drawn before the widgets exist.
    model: var[Model | None] = var(None, init=False, always_update=True)  # always: Models aren't compared
    view: var[str] = var("processes", init=False, bindings=True)
    view_state: var[ViewState] = var(ViewState(), init=False)
    marks: var[frozenset[RowKey]] = var(frozenset(), init=False, bindings=True)
    status: var[Mapping[int, str]] = var(dict, init=False, always_update=True)  # pid -> progress label

    def __init__(self, options: Options | None = None, *, backend: Backend | None = None,
                 act_scope: Callable[[Member], bool] | None = None) -> None:
        super().__init__()
        self.options = options or Options()
        if backend is None:
            from procguard.tui.backends.live import LiveBackend

            backend = LiveBackend()
        self.backend: Backend = backend
        self.cluster_mode = backend.cluster  # one node of several shown at a time (the backend says so)
        self.switching_node = False
        self.act_scope = act_scope
        self.record = AppRecord()
        self.set_reactive(ProcguardApp.view_state, ViewState(filter=self.options.filter, user=self.options.user))
        self.user_keymap = parse_keymap(os.environ.get(KEYMAP_ENV, ""))

    @property
    def notices(self) -> Sequence[tuple[str, str]]:
        """record.notices, by its older name (tests/test_hostile_terminal.py and tests/test_cluster.py)."""
        return self.record.notices

    # ------------------------------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield ViewTabs(*(Tab(f"{i} {VIEW_TITLES[v]}", id=f"tab-{v}") for i, v in enumerate(VIEWS, 1)), id="tabs")
        yield Summary(id="summary")
        yield StatusLine(id="status")
        with ContentSwitcher(initial="processes", id="views"):
            yield ProcessTable(id="processes", empty_text="no process matches")
            yield DuplicatesPane(id="duplicates")
            yield LocksPane(id="locks")
            yield GpuPane(id="gpu")
        yield FilterInput(placeholder="filter: pid, user or command (Enter keeps, Esc clears)", compact=True,
                          select_on_focus=False, id="filter")
        yield Footer(compact=True)

    @property
    def process_table(self) -> ProcessTable:
        return self.query_one(ProcessTable)

    def on_mount(self) -> None:
        if self.user_keymap:
            self.set_keymap(self.user_keymap)
        self.process_table.focus()
        self._show_status()
        if self.backend.static:
            # Fixed data: one model, applied before the first frame, no refresh loop.
            self.model = self.backend.collect()
        else:
            self._collect_loop()

    # ------------------------------------------------------------------------------------------ data

    @work(thread=True, exclusive=True, group="collector", exit_on_error=False, name="collector")
    def _collect_loop(self) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled:
            try:
                model = self.backend.collect()
            except Exception as e:  # keep the loop alive: the next refresh may work
                self.post_message(CollectFailed(f"{type(e).__name__}: {e}"))
            else:
                self.post_message(ModelReady(model))
            if worker.cancelled_event.wait(self.options.interval):
                break

    def on_model_ready(self, message: ModelReady) -> None:
        if not self._ui_live():
            return
        if self.model is not None and message.model.seq <= self.model.seq:
            return  # an action's refresh overtook this one
        if self.switching_node:
            return  # the switch brings the new node's first model itself (NodeSwitched)
        self.model = message.model

    def on_collect_failed(self, message: CollectFailed) -> None:
        if not self._ui_live():
            return
        self.tell(f"refresh failed: {message.reason}", "error")

    def watch_model(self, old: Model | None, model: Model | None) -> None:
        if model is None:
            return
        if self.cluster_mode and old is not None and self._node_id(old) != self._node_id(model):
            self._forget_node()
        self.record.models_applied += 1
        self.marks = frozenset(prune_marks(self.marks, model))
        view = self.node_view(model.snapshot)
        self.query_one(Summary).show(model, node=self.node_label(model),
                                     node_compact=None if view is None else view.compact)
        self._refresh_view()

    def watch_view_state(self) -> None:
        self._refresh_view()

    def watch_marks(self, marks: frozenset[RowKey]) -> None:
        self.process_table.set_marks(set(marks))
        self._show_status()

    def watch_status(self, status: Mapping[int, str]) -> None:
        if self._ui_live():
            self.process_table.set_status(status)

    def _refresh_view(self) -> None:
        model = self.model
        if model is None:
            return
        if self.view == "processes":
            table = self.process_table
            table.marks = set(self.marks)
            table.status = dict(self.status)
            table.now = model.time
            rows = build_rows(model, self.view_state)
            table.set_rows(rows, alive=lambda k: key_alive(model, k))  # type: ignore[arg-type]
        else:
            self._pane(self.view).show(model)
        self._show_status()

    def _pane(self, view: str) -> DuplicatesPane | LocksPane | GpuPane:
        pane = self.query_one(f"#{view}")
        assert isinstance(pane, (DuplicatesPane, LocksPane, GpuPane)), view
        return pane

    def _show_status(self) -> None:
        if self.view == "processes":
            shown = sum(1 for r in self.process_table.rows if r.kind == "proc")
            text = status_text(self.view_state, len(self.marks), shown)
        else:
            narrow, wide = VIEW_HINTS[self.view]
            text = wide if self.size.width >= 120 else narrow
        self.query_one(StatusLine).show(text)

    # ------------------------------------------------------------------------------------------ views

    def action_show_view(self, view: str) -> None:
        if view in VIEWS:
            self.query_one(ViewTabs).active = f"tab-{view}"

    @on(Tabs.TabActivated)
    def _tab_activated(self, event: Tabs.TabActivated) -> None:
        view = (event.tab.id or "").removeprefix("tab-")
        if view in VIEWS:
            self.view = view

    def watch_view(self, view: str) -> None:
        self.query_one(ContentSwitcher).current = view
        self.backend.locks_every_refresh = view == "locks"
        table = self.process_table if view == "processes" else self._pane(view).table
        table.focus()
        self._refresh_view()

    # ------------------------------------------------------------------------------------------ nodes

    def node_view(self, snapshot: Any) -> NodeView | None:
        """Cluster mode: the NodeView of the node a snapshot shows (None otherwise)."""
        return self.backend.node_view(snapshot) if self.cluster_mode else None

    def _node_id(self, model: Model) -> str | None:
        view = self.node_view(model.snapshot)
        return None if view is None else view.node_id

    def node_label(self, model: Model | None) -> str | None:
        if not self.cluster_mode or model is None:
            return None
        view = self.node_view(model.snapshot)
        return "?" if view is None else view.label

    def action_next_node(self) -> None:
        if not self.cluster_mode or self.switching_node:
            return
        self.switching_node = True
        self.tell("switching node…")
        self._node_worker()

    @work(thread=True, exclusive=True, group="node", exit_on_error=False)
    def _node_worker(self) -> None:
        try:
            self.backend.next_node()
            model = self.backend.collect()
        except Exception as e:  # the node left, the cluster went away: say so, stay where we are
            self.post_message(NodeSwitched(None, f"{type(e).__name__}: {e}"))
            return
        self.post_message(NodeSwitched(model))

    def on_node_switched(self, message: NodeSwitched) -> None:
        self.switching_node = False
        if not self._ui_live():
            return
        if message.model is None:
            self.tell(f"switching node failed: {message.error}", "error")
            return
        self.model = message.model  # the new one replaces the model whatever its seq
        self.tell(f"node {self.node_label(message.model)}")

    def _forget_node(self) -> None:
        """Another node is shown: its pids mean other processes, so nothing carries over: marks, progress
        labels, cursors (every table starts again at its top)."""
        self.marks = frozenset()
        self.status = {}
        for table in self.query(KeyedTable):
            table.set_rows([])

    # ------------------------------------------------------------------------------------------ view state

    def action_cycle_grouping(self) -> None:
        i = GROUPINGS.index(self.view_state.grouping)
        self.view_state = replace(self.view_state, grouping=GROUPINGS[(i + 1) % len(GROUPINGS)])

    def action_cycle_sort(self) -> None:
        i = SORT_KEYS.index(self.view_state.sort)
        self.view_state = replace(self.view_state, sort=SORT_KEYS[(i + 1) % len(SORT_KEYS)], reverse=False)

    def action_reverse_sort(self) -> None:
        self.view_state = replace(self.view_state, reverse=not self.view_state.reverse)

    def action_filter(self) -> None:
        box = self.query_one(FilterInput)
        box.value = self.view_state.filter
        box.cursor_position = len(box.value)  # typing refines the filter in place (nothing is selected)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.view_state = replace(self.view_state, filter=event.value)

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        self.view_state = replace(self.view_state, filter=event.value)
        self.query_one(FilterInput).display = False
        self.process_table.focus()

    # ------------------------------------------------------------------------------------------ marks

    def action_toggle_mark(self) -> None:
        table = self.process_table
        row = table.cursor_row
        if row is None or table.is_gone(row):
            return
        self.marks ^= {row.key}
        table.action_cursor_down()  # like htop: space marks and moves on

    def action_mark_all(self) -> None:
        """Every process shown (not group headers: a header stands for members the filter may hide)."""
        table = self.process_table
        self.marks |= {r.key for r in table.rows if r.kind == "proc" and not table.is_gone(r)}

    def action_clear_marks(self) -> None:
        self.marks = frozenset()

    # ------------------------------------------------------------------------------------------ selection

    def selected_row(self) -> Row | None:
        table = self.process_table
        row = table.cursor_row
        return None if row is None or table.is_gone(row) else row

    def selected_pid(self) -> int | None:
        """The process Enter and `f` look at: a process row's pid, a group's leader, a view row's pid."""
        if self.view == "processes":
            row = self.selected_row()
            if row is None or self.model is None:
                return None
            if row.kind == "proc":
                return row.id
            return row.id if row.id in self.model.snapshot else (row.members[0] if row.members else None)
        sel = self._pane(self.view).selected()
        return None if sel is None else sel.pid

    def selected_targets(self) -> list[Target]:
        """The marked rows if any, else the selected row (Processes view); the selected row elsewhere."""
        if self.model is None:
            return []
        if self.view == "processes":
            if self.marks:
                return targets_for_keys(self.marks, self.model.snapshot)
            table = self.process_table
            row = table.cursor_row
            if row is None:
                return []
            if table.is_gone(row):
                self.tell(f"pid {row.id} has already ended" if row.kind == "proc"
                          else f"{row.kind} {row.id} has already ended", "warning")
                return []
            return targets_for_keys([row.key], self.model.snapshot)
        sel = self._pane(self.view).selected()
        return [] if sel is None else list(sel.targets)

    # ------------------------------------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in _APP_ACTIONS and self.screen_stack and isinstance(self.screen_stack[-1], ModalScreen):
            # App bindings stay live under a dialog: `t` would stack a second one, `space` or `1` would change
            # the selection the open dialog is about. The dialog's own keys (y/n/Escape) are the screen's.
            return False
        if action in ("cycle_grouping", "toggle_mark", "mark_all", "filter", "cycle_sort", "reverse_sort"):
            return self.view == "processes"
        if action == "clear_marks":
            return self.view == "processes" and bool(self.marks)
        if action == "end_duplicates":
            return self.view == "duplicates"
        if action == "clean_locks":
            return self.view == "locks"
        if action == "next_node":
            return self.cluster_mode
        return True

    def action_terminate(self) -> None:
        self._plan("terminate")

    def action_kill(self) -> None:
        self._plan("kill")

    def action_pause(self) -> None:
        self._plan("pause")

    def action_resume(self) -> None:
        self._plan("resume")

    def _plan(self, kind: Kind) -> None:
        if self.model is None:
            return
        if self.switching_node:
            self.tell("switching node: nothing was signalled", "warning")
            return
        targets = self.selected_targets()
        if not targets:
            if self.view != "processes" or self.process_table.cursor_row is None:
                self.tell("nothing selected", "warning")
            return
        self._plan_worker(kind, targets, self.model)

    @work(thread=True, exit_on_error=False, group="plans")
    def _plan_worker(self, kind: Kind, targets: Sequence[Target], model: Model) -> None:
        # A dry run reads a little of /proc (procguard's own lineage): never on the UI thread.
        try:
            plan = make_plan(self.backend, kind, targets, model, self.options.grace, self.act_scope)
        except Exception as e:
            self.post_message(ActionFailed(kind, str(e)))
            return
        self.post_message(PlanReady(plan))

    def action_end_duplicates(self) -> None:
        if self.model is None:
            return
        if self.switching_node:
            self.tell("switching node: nothing was signalled", "warning")
            return
        group = self.query_one(DuplicatesPane).selected_group()
        if group is None:
            self.tell("select a duplicate group (or one of its runs) first", "warning")
            return
        self._duplicates_plan_worker(group, self.model)

    @work(thread=True, exit_on_error=False, group="plans")
    def _duplicates_plan_worker(self, group: DuplicateGroup, model: Model) -> None:
        try:
            plan = make_duplicates_plan(self.backend, group, model, self.options.grace, self.act_scope,
                                        all_users=self.options.all_users)
        except Exception as e:
            self.post_message(ActionFailed("end_duplicates", str(e)))
            return
        self.post_message(PlanReady(plan))

    def on_plan_ready(self, message: PlanReady) -> None:
        if not self._ui_live():
            return
        plan = message.plan
        where = self.node_view(plan.snapshot)
        shown = None if self.model is None else self.node_view(self.model.snapshot)
        if self.cluster_mode and (self.switching_node or where is None or shown is None
                                  or where.node_id != shown.node_id):
            # The dry run was made on a node no longer shown: never act on what the screen no longer shows.
            self.tell(f"{VERBS[plan.kind].lower()}: the node changed since the dry run, nothing was signalled",
                      "warning")
            return
        if plan.kind in CONFIRMED and plan.blast.acting and not self.options.no_confirm:
            def decided(ok: bool | None) -> None:
                if ok:
                    self.start_plan(plan)
                else:
                    self.tell(f"{VERBS[plan.kind].lower()} cancelled: nothing was signalled")

            self.push_screen(ConfirmScreen(plan, node=None if where is None else where.label), decided)
        else:
            self.start_plan(plan)

    def start_plan(self, plan: Plan) -> None:
        self.record.actions_started += 1
        label = {"terminate": "SIGTERM…", "end_duplicates": "SIGTERM…", "kill": "SIGKILL…"}.get(plan.kind)
        if label is not None:
            # A zombie has ended already: nothing will happen to it.
            starting = {m.pid: label for m in plan.blast.acting if m.state not in DEAD_STATES}
            self.status = {**self.status, **starting}
        self._run_worker(plan)

    @work(thread=True, exit_on_error=False, group="actions")
    def _run_worker(self, plan: Plan) -> None:
        pids = tuple(m.pid for m in plan.blast.acting)

        def progress(event: Progress) -> None:
            self.post_message(ActionProgress(event, pids))

        try:
            done = run_plan(self.backend, plan, progress)
        except Exception as e:  # a bug or an OS error: a notification, never a traceback
            self.post_message(ActionFailed(plan.kind, f"{type(e).__name__}: {e}", pids))
            done = None
        self._refresh_now()
        if done is not None:
            self.post_message(ActionDone(done, pids))

    def _refresh_now(self) -> None:
        """From a worker thread: collect at once so ended processes leave the table with the notification."""
        with contextlib.suppress(Exception):  # the regular loop will try again
            self.post_message(ModelReady(self.backend.collect()))

    def on_action_progress(self, message: ActionProgress) -> None:
        if not self._ui_live():
            return
        ev = message.event
        pids = ev.pids
        if ev.phase == "sigkill" and not pids:
            # Core ended a group with one killpg and names no pid: every member not seen exiting got it.
            pids = tuple(p for p in message.pids if self.status.get(p, "").startswith("SIGTERM"))
        status = dict(self.status)
        for pid in pids:
            label = progress_label(ev, pid)
            if label is not None:
                status[pid] = label
                self.record.progress_log.append((pid, label))
        self.status = status

    def _clear_status(self, pids: Iterable[int]) -> None:
        """The progress labels of these pids go (the table is redrawn only while the app is live)."""
        gone = set(pids)
        if gone & self.status.keys():
            self.status = {p: s for p, s in self.status.items() if p not in gone}

    def on_action_done(self, message: ActionDone) -> None:
        done = message.done
        self._clear_status((*message.pids, *(r.pid for r in done.results)))
        if not self._ui_live():
            self.record.notices.append((plain(done.message), done.severity))  # no screen to show it on
            return
        self.tell(done.message, done.severity)

    def on_action_failed(self, message: ActionFailed) -> None:
        verb = VERBS.get(str(message.kind), str(message.kind))
        self._clear_status(message.pids)
        if self._ui_live():
            self.tell(f"{verb}: {message.reason}", "error")

    def on_notice(self, message: Notice) -> None:
        if self._ui_live():
            self.tell(message.text, message.severity)

    def _ui_live(self) -> bool:
        """False once the app is exiting or shutting down. Workers post messages until they notice the app
        is gone, and shutdown removes widgets one by one while the app's queue still runs (run_test calls
        `_shutdown` from outside the app's task): a late message must then touch no widget at all.

        `_shutdown` clears `is_running` before it awaits anything, and every handler here is synchronous, so a
        handler that starts while this is True runs to its end before any widget is removed."""
        return self.is_running and not self._exit and self._main_screen_mounted()

    def _main_screen_mounted(self) -> bool:
        try:
            self.query_one(Summary)
            self.query_one(ProcessTable)
        except NoMatches:
            return False
        return True

    def action_flush(self) -> None:
        pid = self.selected_pid()
        if pid is None:
            self.tell("select a guarded process to flush", "warning")
            return
        self._flush_worker(pid)

    @work(thread=True, exit_on_error=False, group="actions")
    def _flush_worker(self, pid: int) -> None:
        try:
            text = self.backend.flush(pid)
        except Exception as e:  # NotGuarded, FlushTimeout, PermissionError...: the reason is the message
            self.post_message(Notice(f"flush pid {pid}: {e}", "error"))
            return
        self.post_message(Notice(f"pid {pid}: {text}"))

    def action_clean_locks(self) -> None:
        if self.model is None:
            return
        if not self.model.stale_locks:
            self.tell("no stale lock files to clean")
            return
        self._clean_worker(tuple(self.model.stale_locks))

    @work(thread=True, exit_on_error=False, group="actions")
    def _clean_worker(self, paths: tuple[str, ...]) -> None:
        try:
            removed = self.backend.clean_locks(paths)
        except Exception as e:
            self.post_message(Notice(f"cleaning stale locks failed: {e}", "error"))
            return
        kept = len(paths) - len(removed)
        extra = f" ({kept} kept: held again or not procguard's)" if kept else ""
        self._refresh_now()
        self.post_message(Notice(f"removed {len(removed)} stale lock file(s){extra}"))

    def action_details(self) -> None:
        pid = self.selected_pid()
        if pid is None or self.model is None:
            return
        self.push_screen(DetailsScreen(self.model, pid, self.backend))

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.key_table(), "procguard-tui: keys"))

    # ------------------------------------------------------------------------------------------ misc

    def tell(self, text: str, severity: str = "information") -> None:
        """Every notification goes through here: results, errors and flush answers quote commands, paths and
        messages of other users' processes, so the whole text is made safe and never parsed as markup."""
        text = plain(text)
        self.record.notices.append((text, severity))
        self.notify(text, severity=severity, timeout=8 if severity == "information" else 12,  # type: ignore[arg-type]
                    markup=False)

    def key_table(self) -> list[tuple[str, str, str]]:
        """(key as bound now, what it does, binding id) for the help screen, keymap applied."""
        out = []
        for b in self.BINDINGS:
            assert isinstance(b, Binding)
            if b.id in CLUSTER_ONLY and not self.cluster_mode:
                continue
            key = self.user_keymap.get(b.id or "", b.key)
            desc = LONG_DESCRIPTIONS.get(b.id or "", b.description)
            out.append((", ".join(self.get_key_display(b.with_key(k)) for k in key.split(",")), desc, b.id or ""))
        return out

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for b in self.BINDINGS:
            assert isinstance(b, Binding)
            action = b.action.partition("(")[0]
            if action in ("quit", "help") or self.check_action(action, ()) is False:
                continue
            desc = LONG_DESCRIPTIONS.get(b.id or "", b.description)
            title = PALETTE_TITLES.get(b.id or "", b.description)
            yield SystemCommand(title, desc, _palette_callback(self, b.action))


# Everything bound on the app but quit: blocked while a dialog (confirm, details, help) is open.
_APP_ACTIONS = frozenset(b.action.partition("(")[0] for b in ProcguardApp.BINDINGS
                         if isinstance(b, Binding) and b.action != "quit")


def _palette_callback(app: ProcguardApp, action: str) -> Callable[[], Any]:
    return lambda: app.run_action(action)


PALETTE_TITLES = {
    "procguard.view.processes": "View: Processes",
    "procguard.view.duplicates": "View: Duplicates",
    "procguard.view.locks": "View: Locks",
    "procguard.view.gpu": "View: GPU",
    "procguard.terminate": "Terminate selection",
    "procguard.kill": "Kill selection",
    "procguard.pause": "Pause selection",
    "procguard.resume": "Resume selection",
    "procguard.flush": "Flush GPU cache",
    "procguard.end_duplicates": "End duplicate runs",
    "procguard.clean_locks": "Clean stale lock files",
    "procguard.group": "Cycle grouping",
    "procguard.sort": "Cycle sort",
    "procguard.sort_reverse": "Reverse sort",
    "procguard.filter": "Filter",
    "procguard.mark": "Mark / unmark row",
    "procguard.mark_all": "Mark all shown",
    "procguard.clear_marks": "Clear marks",
    "procguard.details": "Details",
    "procguard.node": "Next cluster node",
}

LONG_DESCRIPTIONS = {
    "procguard.view.processes": "Processes view (tree by parent, process group or session)",
    "procguard.view.duplicates": "Duplicates view (scripts running more than once)",
    "procguard.view.locks": "Locks view (held locks and stale lock files)",
    "procguard.view.gpu": "GPU view (devices, processes holding GPU memory)",
    "procguard.terminate": "terminate: SIGTERM, then SIGKILL after the grace",
    "procguard.kill": "kill: SIGKILL at once",
    "procguard.pause": "pause (SIGSTOP)",
    "procguard.resume": "resume (SIGCONT)",
    "procguard.flush": "flush the GPU cache of a guarded process",
    "procguard.end_duplicates": "Duplicates: end all but the oldest run of the script",
    "procguard.clean_locks": "Locks: remove the stale lock files",
    "procguard.group": "group the tree by parent → process group → session",
    "procguard.sort": "sort by pid → age → CPU → RSS → GPU memory",
    "procguard.sort_reverse": "reverse the sort",
    "procguard.filter": "filter by pid, user, command (Enter keeps, Esc clears)",
    "procguard.mark": "mark / unmark the row",
    "procguard.mark_all": "mark every process shown",
    "procguard.clear_marks": "clear the marks",
    "procguard.details": "details: command, cwd, rank/job, locks, children, GPU",
    "procguard.node": "cluster (--ray): show the next node (marks cleared; pids are per node)",
    "procguard.help": "this help",
    "procguard.quit": "quit",
}


def parse_keymap(text: str) -> dict[str, str]:
    """`id=key,id=key` (keys with commas can't be given this way; use a keymap in code for those)."""
    out: dict[str, str] = {}
    for item in text.split(","):
        bid, sep, key = item.strip().partition("=")
        if sep and bid.strip() and key.strip():
            out[bid.strip()] = key.strip()
    return out
