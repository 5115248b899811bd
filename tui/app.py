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
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import ClassVar

from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.command import CommandPalette, DiscoveryHit, Hit, Hits, Provider
from textual.css.query import NoMatches
from textual.keys import REPLACED_KEYS, Keys, key_to_character
from textual.reactive import var
from textual.screen import ModalScreen
from textual.widgets import ContentSwitcher, Input, Tab, Tabs
from textual.worker import get_current_worker

from procguard.core.duplicates import DuplicateGroup
from procguard.core.signals import Member, Progress
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
from procguard.tui.backends import Backend, FirstCollect, NodeView
from procguard.tui.history import History
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
    GROUPING_LABELS,
    GROUPINGS,
    SORT_KEYS,
    SORT_LABELS,
    Folds,
    Grouping,
    Model,
    NodeTargets,
    Row,
    RowKey,
    SortKey,
    StatusKey,
    ViewState,
    build_rows,
    fold_alive,
    key_alive,
    node_targets,
    prune_marks,
    row_node_targets,
    status_text,
    thaw_targets,
    user_view,
)
from procguard.tui.panes.duplicates import DuplicatesPane
from procguard.tui.panes.gpu import GpuPane
from procguard.tui.panes.locks import LocksPane
from procguard.tui.screens.confirm import ConfirmScreen
from procguard.tui.screens.details import DetailsScreen
from procguard.tui.screens.help import HelpScreen
from procguard.tui.text import plain
from procguard.tui.widgets.footer import AppFooter
from procguard.tui.widgets.process_table import ProcessTable
from procguard.tui.widgets.summary import StatusLine, Summary
from procguard.tui.widgets.table import KeyedTable

VIEWS = ("processes", "duplicates", "locks", "gpu")
VIEW_TITLES = {"processes": "Processes", "duplicates": "Duplicates", "locks": "Locks", "gpu": "GPU"}
VIEW_HINTS = {  # (narrow, wide)
    "duplicates": (
        "d: end all but the oldest run · t/k/p/r: the selected run",
        "d ends all but the oldest run of the selected script · t/k/p/r act on the selected run "
        "(with its process tree) · Enter details",
    ),
    "locks": (
        "x: remove stale lock files · t/k/p/r: the lock's holders",
        "x removes the stale lock files · t/k/p/r act on the selected lock's holders · Enter details",
    ),
    "gpu": (
        "f: flush a guarded process's GPU cache · t/k/p/r: selected",
        "f asks the selected guarded process to flush its GPU cache · t/k/p/r act on the selected process "
        "· Enter details",
    ),
}
KEYMAP_ENV = "PROCGUARD_TUI_KEYMAP"
CLUSTER_ONLY = frozenset({"procguard.node"})  # binding ids shown (footer, help, palette) only with --ray
WHY = ".why"  # suffix of the hidden twin of a binding: says why its key does nothing here (see _twins)
PROCESSES_ONLY = frozenset(
    {
        "cycle_grouping",
        "cycle_sort",
        "reverse_sort",
        "filter",
        "toggle_mark",
        "mark_all",
        "fold",
        "unfold",
        "fold_all",
        "tree_left",
        "tree_right",
        "set_sort",
        "set_grouping",
    }
)
# Notifications: short, and one line on a narrow terminal (app.tcss), so the table stays readable.
FIRST_FRAME_WAIT = (
    1.0  # s the first frame waits for the first process table (then: "reading the process table…")
)
NOTIFY_TIMEOUT = {"information": 4.0, "warning": 6.0, "error": 10.0}
HOLD_POLL = 0.002  # s: a model held behind queued keys looks again after this long
HOLD_MAX = 0.1  # s: and is applied after this long at the latest, keys or not


@dataclass(frozen=True)
class Options:
    interval: float = 1.0
    filter: str = ""
    grace: float = 5.0
    user: str | None = None
    no_confirm: bool = False
    all_users: bool = False  # d: root may end other users' runs too (never without it)
    # From the config file (config.py) or the defaults:
    view: str = "processes"  # the view shown first
    sort: SortKey = "pid"
    reverse: bool = False
    grouping: Grouping = "parent"
    columns: frozenset[str] | None = None  # Processes view columns shown (titles); None: all
    keymap: Mapping[str, str] | None = None  # binding id -> key(s); None: PROCGUARD_TUI_KEYMAP, read here
    node: str | None = None  # --ray --node: the node id the table starts narrowed to (n cycles on from there)


@dataclass
class AppRecord:
    """The app's one test hook (`ProcguardApp.record`): what it did, for tests and the screenshot script to
    wait on and check. The app itself only ever adds to it, never reads it; all of it is bounded.

    A test that checks something did NOT happen waits until `models_applied` passed a value it read after the
    action (a refresh happened since), never a fixed time."""

    models_applied: int = 0  # models shown (each refresh, each node switch)
    table_lines_repainted: int = (
        0  # Processes table lines repainted by applying a model (0 if nothing changed)
    )
    actions_started: int = 0  # plans started (confirmed, or without a dialog)
    notices: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=1000))  # (text, severity)
    progress_log: deque[tuple[StatusKey, str]] = field(
        default_factory=lambda: deque(maxlen=2000)
    )  # (pid, label)


class ViewTabs(Tabs, can_focus=False):
    """The view tabs: clickable, never focused (keys 1-4 switch views, arrows belong to the tables)."""

    def _highlight_active(self, animate: bool = True) -> None:
        # No sliding underline: its 0.3 s of animation frames (~18 repaints) would compete with the newly shown
        # view's first frame and with the next keys.
        super()._highlight_active(animate=False)


class FilterInput(Input):
    """`/`: live filter. Enter keeps it, Escape clears it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "clear_filter", "Clear filter", id="procguard.filter.clear"),
    ]

    def action_clear_filter(self) -> None:
        self.value = ""
        self.post_message(self.Submitted(self, ""))


def _twins(bindings: Sequence[Binding]) -> list[Binding]:
    """A hidden twin of each binding, on the same key: when the binding does nothing here (check_action says
    no: d outside Duplicates, space outside Processes...), the key falls through to its twin, which says why in
    a notification instead of doing nothing silently. Twins follow keymaps (`_keymap_with_twins`)."""
    return [
        Binding(b.key, f"why('{b.id}')", f"why {b.description}", show=False, id=f"{b.id}{WHY}")
        for b in bindings
        if b.id is not None and b.action not in ("quit", "help")
    ]


class ProcguardApp(App[None]):
    """`backend`: where data comes from and actions go (backends.live.LiveBackend by default;
    backends.demo.DemoBackend for the demo scenario; backends.ray.RayClusterBackend for a Ray cluster,
    whose `cluster` turns on cluster mode: every node's rows in one table with a NODE column, `n` to narrow to
    one node and back, each action sent to the node of each row).
    `act_scope`: when given, every dry run is checked against it and an action that would touch any process
    outside it is refused (tests scope the app to their own processes this way)."""

    CSS_PATH = "app.tcss"
    TITLE = "procguard-tui"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]  # Screen.-narrow: one-line notifications

    KEYS: ClassVar[list[Binding]] = [
        Binding("1", "show_view('processes')", "Processes", show=False, id="procguard.view.processes"),
        Binding("2", "show_view('duplicates')", "Duplicates", show=False, id="procguard.view.duplicates"),
        Binding("3", "show_view('locks')", "Locks", show=False, id="procguard.view.locks"),
        Binding("4", "show_view('gpu')", "GPU", show=False, id="procguard.view.gpu"),
        Binding(
            "t", "terminate", "Term", id="procguard.terminate", tooltip="SIGTERM, SIGKILL after the grace"
        ),
        Binding("k", "kill", "Kill", id="procguard.kill", tooltip="SIGKILL"),
        Binding("p", "pause", "Pause", id="procguard.pause", tooltip="SIGSTOP"),
        Binding("r", "resume", "Resume", id="procguard.resume", tooltip="SIGCONT"),
        Binding(
            "f",
            "flush",
            "Flush",
            show=False,
            id="procguard.flush",
            tooltip="ask a guarded process to empty its GPU cache",
        ),
        Binding("d", "end_duplicates", "End dups", id="procguard.end_duplicates"),
        Binding("x", "clean_locks", "Clean stale", id="procguard.clean_locks"),
        Binding("g", "cycle_grouping", "Group", id="procguard.group"),
        Binding("s", "cycle_sort", "Sort", id="procguard.sort"),
        Binding("S", "reverse_sort", "Reverse sort", show=False, id="procguard.sort_reverse"),
        Binding("slash", "filter", "Filter", id="procguard.filter"),
        Binding("space", "toggle_mark", "Mark", show=False, id="procguard.mark"),
        Binding("ctrl+a", "mark_all", "Mark all", show=False, id="procguard.mark_all"),
        Binding("escape", "clear_marks", "Clear marks", show=False, id="procguard.clear_marks"),
        Binding("minus", "fold", "Fold", show=False, id="procguard.fold"),
        Binding("plus", "unfold", "Unfold", show=False, id="procguard.unfold"),
        Binding("asterisk", "fold_all", "Fold/unfold all", show=False, id="procguard.fold_all"),
        Binding("left", "tree_left", "Fold / to parent", show=False, id="procguard.tree_left"),
        Binding("right", "tree_right", "Unfold / to child", show=False, id="procguard.tree_right"),
        Binding("enter", "details", "Details", show=False, id="procguard.details"),
        Binding(
            "n",
            "next_node",
            "Node",
            id="procguard.node",
            tooltip="narrow to the next node of the cluster (then all)",
        ),
        Binding("question_mark", "help", "Help", id="procguard.help"),
        Binding("q", "quit", "Quit", id="procguard.quit"),
    ]
    BINDINGS: ClassVar[list[BindingType]] = [*KEYS, *_twins(KEYS)]
    # The command palette (Ctrl+P): Textual's own commands and every procguard action (ProcguardCommands).
    COMMANDS = App.COMMANDS | {lambda: ProcguardCommands}

    # The state the screen is drawn from (see the module docstring). `var`: no repaint of the whole app on a
    # change, only what each watcher redraws; init=False: nothing is drawn before the widgets exist.
    model: var[Model | None] = var(None, init=False, always_update=True)  # always: Models aren't compared
    view: var[str] = var("processes", init=False, bindings=True)
    view_state: var[ViewState] = var(ViewState(), init=False)
    marks: var[frozenset[RowKey]] = var(frozenset(), init=False, bindings=True)
    status: var[Mapping[StatusKey, str]] = var(dict, init=False, always_update=True)  # pid (node) -> label

    def __init__(
        self,
        options: Options | None = None,
        *,
        backend: Backend | None = None,
        act_scope: Callable[[Member], bool] | None = None,
        history: History | None = None,
        first: FirstCollect | None = None,
    ) -> None:
        super().__init__()
        self.options = options or Options()
        if backend is None:
            from procguard.tui.backends.live import LiveBackend

            backend = LiveBackend()
        self.backend: Backend = backend
        # The first collect runs while Textual starts (the command line starts it even earlier: `first`).
        if first is None and not backend.static:
            first = FirstCollect(backend)
        self._first = first
        # The view state the collector thread builds the Processes rows for (None: another view is shown); a
        # plain attribute, set on the UI thread, read by the collector. The newest rows it built: `_ahead`.
        self._rows_state: ViewState | None = None
        self._ahead: tuple[Model, ViewState, list[Row]] | None = None
        self._held: ModelReady | None = None  # the newest model waiting behind queued keys (on_model_ready)
        self._held_since = 0.0  # when it started waiting (it waits HOLD_MAX at most: keys can't starve it)
        self.cluster_mode = backend.cluster  # every node of a cluster in one table (the backend says so)
        self.act_scope = act_scope
        self.record = AppRecord()
        o = self.options
        self.set_reactive(
            ProcguardApp.view_state,
            ViewState(
                grouping=o.grouping, sort=o.sort, reverse=o.reverse, filter=o.filter, user=o.user, node=o.node
            ),
        )
        # Checked by the command line first (a bad entry: one line, exit 2); here it raises KeymapError.
        self.user_keymap = (
            dict(o.keymap) if o.keymap is not None else parse_keymap(os.environ.get(KEYMAP_ENV, ""))
        )
        # `history`: given by the demo (deterministic graphs for the screenshots); bounded (history.py).
        self.history = history if history is not None else History()
        self._user_views: tuple[Model, Model] | None = None  # (model, user_view(model)): one per refresh
        self._toasts: set[str] = set()  # notification texts on screen now

    @property
    def notices(self) -> Sequence[tuple[str, str]]:
        """record.notices, by its older name (tests/test_hostile_terminal.py and tests/test_cluster.py)."""
        return self.record.notices

    # ------------------------------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield ViewTabs(
            *(Tab(f"{i} {VIEW_TITLES[v]}", id=f"tab-{v}") for i, v in enumerate(VIEWS, 1)), id="tabs"
        )
        yield Summary(id="summary")
        yield StatusLine(id="status")
        with ContentSwitcher(initial="processes", id="views"):
            # Until the first model: what it is doing, not "no process matches" (no empty-table flash).
            yield ProcessTable(id="processes", empty_text="reading the process table…")
            yield DuplicatesPane(id="duplicates")
            yield LocksPane(id="locks")
            yield GpuPane(id="gpu")
        yield FilterInput(
            placeholder="filter: pid, user or command (Enter keeps, Esc clears)",
            compact=True,
            select_on_focus=False,
            id="filter",
        )
        yield AppFooter(compact=True)

    @property
    def process_table(self) -> ProcessTable:
        return self.query_one(ProcessTable)

    def on_mount(self) -> None:
        if self.user_keymap:
            self.set_keymap(_keymap_with_twins(self.user_keymap))
        if self.options.columns is not None:
            self.process_table.shown_columns = self.options.columns
        self.query_one(GpuPane).history = self.history
        self.process_table.focus()
        if self.options.view != "processes":
            self.action_show_view(self.options.view)
        self._show_status()
        if self.backend.static:
            # Fixed data: one model, applied before the first frame, no refresh loop.
            self.model = self.backend.collect()
        else:
            first = self._first
            if first is not None:
                # The first frame waits (briefly) for the first model, so it is drawn with rows.
                first.join(FIRST_FRAME_WAIT)
                if first.model is not None:
                    self._first = None
                    self.model = first.model
            self._collect_loop(wait_first=self._first is None and self.model is not None)

    # ------------------------------------------------------------------------------------------ data

    @work(thread=True, exclusive=True, group="collector", exit_on_error=False, name="collector")
    def _collect_loop(self, wait_first: bool = False) -> None:
        worker = get_current_worker()
        if wait_first and worker.cancelled_event.wait(self.options.interval):
            return  # (the first model was applied before the first frame)
        while not worker.is_cancelled:
            first, self._first = self._first, None
            try:
                if first is not None:  # the collect started at launch: take its result
                    first.join()
                    if first.error is not None:
                        raise first.error
                model = (
                    first.model if first is not None and first.model is not None else self.backend.collect()
                )
            except Exception as e:  # keep the loop alive: the next refresh may work
                self.post_message(CollectFailed(f"{type(e).__name__}: {e}"))
            else:
                self.post_message(ModelReady(model, self._rows_ahead(model)))
            if worker.cancelled_event.wait(self.options.interval):
                break

    def _rows_ahead(self, model: Model) -> tuple[ViewState, list[Row]] | None:
        """Collector thread: the Processes rows for the view state shown now, so that the UI thread only draws
        them (it builds them itself when the state changed in between: a sort, a filter key, a fold)."""
        state = self._rows_state
        if state is None:
            return None
        try:
            return state, build_rows(model, state)
        except Exception:  # the UI thread builds them again, and reports what goes wrong there
            return None

    def on_model_ready(self, message: ModelReady) -> None:
        if not self._ui_live():
            return
        if self.model is not None and message.model.seq <= self.model.seq:
            return  # an action's refresh overtook this one
        if self._held is not None or self._keys_queued():
            # Keys first: the model waits behind them (only the newest one), so no repaint lands between two
            # queued keys and a key is not delayed by a refresh it never asked for.
            if self._held is None:
                self._held_since = time.monotonic()
                self.set_timer(HOLD_POLL, self._apply_held)  # a timer: lets the widgets' queues run meanwhile
            if self._held is None or self._held.model.seq < message.model.seq:
                self._held = message
            return
        self._apply_ready(message)

    def _keys_queued(self) -> bool:
        """A key event waits in the queue of the app, or of the focused widget or one above it: a key reaches the
        app first, which forwards it to the focused widget, from where it bubbles back up to the app, whose
        bindings act on it. The queues are peeked, never changed."""
        focused = self.screen.focused
        for pump in (self, *(focused.ancestors_with_self if focused is not None else ())):
            if isinstance(pump._pending_message, events.Key):  # peeked by Textual's message loop
                return True
            if any(isinstance(m, events.Key) for m in getattr(pump._message_queue, "values", ())):
                return True
        return False

    def _apply_held(self) -> None:
        if self._held is None or not self._ui_live():
            return
        if self._keys_queued() and time.monotonic() - self._held_since < HOLD_MAX:
            self.set_timer(HOLD_POLL, self._apply_held)
            return
        message, self._held = self._held, None
        if self.model is None or message.model.seq > self.model.seq:
            self._apply_ready(message)

    def _apply_ready(self, message: ModelReady) -> None:
        if message.rows is not None:
            self._ahead = (message.model, *message.rows)
        self.model = message.model

    def on_collect_failed(self, message: CollectFailed) -> None:
        if not self._ui_live():
            return
        self.tell(f"refresh failed: {message.reason}", "error")

    def watch_model(self, old: Model | None, model: Model | None) -> None:
        if model is None:
            return
        self.record.models_applied += 1
        if old is None:
            self.process_table.empty_text = "no process matches"
        self.marks = frozenset(prune_marks(self.marks, model))
        self._prune_folds(model)
        self.history.record(model)  # before the GPU view draws its graphs
        self._show_summary(model)
        self._refresh_view()
        self._watch_selected(model)

    def watch_view_state(self) -> None:
        self._refresh_view()

    def user_model(self, model: Model) -> Model:
        """What --user NAME shows of `model` in the Duplicates, Locks and GPU views and the summary (the model
        itself without --user); made once per model."""
        if self.options.user is None:
            return model
        if self._user_views is None or self._user_views[0] is not model:
            self._user_views = (model, user_view(model, self.options.user))
        return self._user_views[1]

    def _prune_folds(self, model: Model) -> None:
        """Now and then, forget the folds of processes, groups and sessions that ended (a few keys; no redraw:
        the view is redrawn right after)."""
        folds = self.view_state.folds
        if model.seq % 32 or not (folds.folded or folds.opened):
            return
        pruned = folds.prune(lambda k: any(fold_alive(m, k) for m in model.each()))
        if pruned is not folds:
            self.set_reactive(ProcguardApp.view_state, replace(self.view_state, folds=pruned))

    def _watch_selected(self, model: Model) -> None:
        """The process under the cursor is watched from now on (history.py keeps the last 64 watched); an open
        details screen shows the new sample."""
        pid = self.selected_pid()
        if pid is not None:
            self.history.watch(model, pid)
        screen = self.screen_stack[-1] if self.screen_stack else None
        if isinstance(screen, DetailsScreen):
            screen.show_history()

    def watch_marks(self, marks: frozenset[RowKey]) -> None:
        self.process_table.set_marks(set(marks))
        self._show_status()

    def watch_status(self, status: Mapping[StatusKey, str]) -> None:
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
            before = table.cursor_key
            state = self.view_state
            ahead = self._ahead
            rows = ahead[2] if ahead is not None and ahead[0] is model and ahead[1] is state else None
            if rows is None:
                rows = build_rows(model, state)
                self._ahead = (model, state, rows)  # back from another view: the same rows, not built again
            painted = table.lines_repainted
            table.set_rows(rows, alive=lambda k: key_alive(model, k))  # type: ignore[arg-type]
            self.record.table_lines_repainted += table.lines_repainted - painted
            if before is not None and table.index_of(before) is None:
                self._follow_into_fold(model, before)  # type: ignore[arg-type]
        else:
            self._pane(self.view).show(self.user_model(model).only(self.view_state.node))
        self._rows_state = self.view_state if self.view == "processes" else None
        self._show_status()

    def _pane(self, view: str) -> DuplicatesPane | LocksPane | GpuPane:
        pane = self.query_one(f"#{view}")
        assert isinstance(pane, (DuplicatesPane, LocksPane, GpuPane)), view
        return pane

    def _show_status(self) -> None:
        if self.view == "processes" and self.model is None:
            text = "reading the process table…"  # not "0 shown" before the first model
        elif self.view == "processes":
            shown = folded = 0
            for r in self.process_table.rows:  # one pass: the status line runs on every refresh
                shown += r.kind == "proc"
                folded += r.folded
            text = status_text(self.view_state, len(self.marks), shown, folded)
        else:
            narrow, wide = VIEW_HINTS[self.view]
            text = wide if self.size.width >= 120 else narrow
        self.query_one(StatusLine).show(text)

    # ------------------------------------------------------------------------------------------ views

    def action_show_view(self, view: str) -> None:
        if view in VIEWS:
            self.query_one(ViewTabs).active = f"tab-{view}"  # the view follows (TabActivated)

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

    def node_view(self, node: str | None) -> NodeView | None:
        """Cluster mode: node `node` (an id) as the latest model names it (None: not a cluster, or no answer)."""
        part = None if not self.cluster_mode or self.model is None or not node else self.model.part(node)
        return None if part is None else part.node

    def node_label(self, model: Model | None) -> str | None:
        """The summary's first item in cluster mode: the node `n` narrowed to, or how many nodes are shown."""
        if not self.cluster_mode or model is None:
            return None
        node = self.view_state.node
        if node is None:
            return f"all {len(model.parts)} node{'s' if len(model.parts) != 1 else ''}"
        part = model.part(node)
        return part.node.label if part is not None and part.node is not None else f"{node[:8]} (no answer)"

    def _show_summary(self, model: Model) -> None:
        """The figures of what is shown: the whole cluster, or the node `n` narrowed to."""
        view = self.node_view(self.view_state.node)
        self.query_one(Summary).show(
            self.user_model(model).only(self.view_state.node),
            node=self.node_label(model),
            node_compact=None if view is None else view.compact,
        )

    def action_next_node(self) -> None:
        """`n` (cluster mode): narrow every view and the summary to the next node (head first), after the last
        node back to all of them. Marks stay (they are keyed by node): t/k/p/r still act on every marked row."""
        if not self.cluster_mode or self.model is None:
            return
        order: list[str | None] = [None, *(p.node.node_id for p in self.model.parts if p.node is not None)]
        cur = self.view_state.node
        nxt = order[(order.index(cur) + 1) % len(order)] if cur in order else None
        self.view_state = replace(self.view_state, node=nxt)
        self._show_summary(self.model)
        self.tell(f"node {self.node_label(self.model)}")

    # ------------------------------------------------------------------------------------------ view state

    def action_cycle_grouping(self) -> None:
        i = GROUPINGS.index(self.view_state.grouping)
        self.view_state = replace(self.view_state, grouping=GROUPINGS[(i + 1) % len(GROUPINGS)])

    def action_cycle_sort(self) -> None:
        i = SORT_KEYS.index(self.view_state.sort)
        key = SORT_KEYS[(i + 1) % len(SORT_KEYS)]
        if key == "gpu" and self._no_gpu() is not None:
            # Every row would tie at zero: the order wouldn't change, so `s` moves on and says why.
            self.tell(f"sort by GPU memory skipped: {self._no_gpu()}")
            key = SORT_KEYS[(i + 2) % len(SORT_KEYS)]
        self.view_state = replace(self.view_state, sort=key, reverse=False)

    def action_set_sort(self, key: str) -> None:
        """The palette's "Sort by ..." commands."""
        if key not in SORT_KEYS:
            return
        if key == "gpu" and self._no_gpu() is not None:
            self.tell(f"sort by GPU memory: {self._no_gpu()}; the order stays", "warning")
            return
        self.view_state = replace(self.view_state, sort=key, reverse=False)  # type: ignore[arg-type]

    def action_set_grouping(self, grouping: str) -> None:
        """The palette's "Group ..." commands."""
        if grouping in GROUPINGS:
            self.view_state = replace(self.view_state, grouping=grouping)  # type: ignore[arg-type]

    def _no_gpu(self) -> str | None:
        """Why there are no GPU figures to sort by (None: some part of the model has them)."""
        model = self.model
        if model is None or any(m.gpu.available for m in model.each()):
            return None
        reason = next((m.gpu.reason for m in model.each() if m.gpu.reason), None)
        return f"no GPU ({reason})" if reason else "no GPU"

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

    # ------------------------------------------------------------------------------------------ folding

    def action_fold(self) -> None:
        """`-`: fold the selected row's subtree (group, session); on a row with nothing under it, the row it
        hangs under, and the cursor goes there."""
        row = self.selected_row()
        if row is None:
            self.tell("nothing to fold here")
            return
        if row.folded:
            return
        if row.fold is not None:
            self._set_folds(self.view_state.folds.fold(row.fold))
            return
        parent = self._row(row.parent)
        if parent is None or parent.fold is None:
            self.tell(f"{self._what(row)} has nothing under it to fold")
            return
        self._set_folds(self.view_state.folds.fold(parent.fold))
        self.process_table.move_to_key(parent.key)

    def action_unfold(self) -> None:
        """`+`: unfold the selected row."""
        row = self.selected_row()
        if row is None or not row.folded or row.fold is None:
            self.tell(
                "nothing folded here"
                if row is None or row.fold is None
                else f"{self._what(row)} is not folded"
            )
            return
        self._set_folds(self.view_state.folds.unfold(row.fold))

    def action_fold_all(self) -> None:
        """`*`: unfold everything if anything shown is folded, else fold every row that has something under it."""
        anything = any(r.folded for r in self.process_table.rows)
        self._set_folds(Folds("open") if anything else Folds("folded"))

    def action_tree_left(self) -> None:
        """←: fold the selected row; on a folded row, or one with nothing under it, go to its parent row."""
        row = self.selected_row()
        if row is None:
            return
        if row.fold is not None and not row.folded:
            self._set_folds(self.view_state.folds.fold(row.fold))
        elif row.parent is not None:
            self.process_table.move_to_key(row.parent)

    def action_tree_right(self) -> None:
        """→: unfold the selected row; on an unfolded one, go to its first child."""
        row = self.selected_row()
        if row is None or row.fold is None:
            return
        if row.folded:
            self._set_folds(self.view_state.folds.unfold(row.fold))
        else:
            self.process_table.action_cursor_down()

    def _follow_into_fold(self, model: Model, key: RowKey) -> None:
        """The selected process went into a folded row (a regrouping, a new process tree, a refresh): a fold
        made for its size opens for it; one the user made (`-`, `*`) stays, and the cursor goes to that row."""
        holder = self._folded_holder(model, key)
        if holder is None or holder.fold is None:
            return
        folds = self.view_state.folds
        if folds.default == "auto" and holder.fold not in folds.folded:
            self.view_state = replace(self.view_state, folds=folds.unfold(holder.fold))
            self.process_table.move_to_key(key)
        else:
            self.process_table.move_to_key(holder.key)

    def _folded_holder(self, model: Model, key: RowKey) -> Row | None:
        """The folded row that hides process row `key` (only looked for when the cursor's row vanished)."""
        if key[0] != "p" or not isinstance(key[1], int):
            return None
        pid, node = key[1], (key[2] if len(key) > 2 else None)  # type: ignore[misc]
        suffix = (node,) if node is not None else ()
        rows = self.process_table.rows
        for r in rows:
            if r.folded and r.kind != "proc" and pid in r.members and (node is None or r.node == node):
                return r
        part = model.part(node) if model.cluster else model
        procs = part.snapshot.procs if part is not None else {}
        p, seen = procs.get(pid), {pid}
        while p is not None and p.ppid not in seen:
            seen.add(p.ppid)
            idx = self.process_table.index_of(("p", p.ppid, *suffix))
            if idx is not None:
                return rows[idx] if rows[idx].folded else None
            p = procs.get(p.ppid)
        return None

    def _row(self, key: RowKey | None) -> Row | None:
        table = self.process_table
        idx = None if key is None else table.index_of(key)
        return None if idx is None else table.rows[idx]

    @staticmethod
    def _what(row: Row) -> str:
        return f"pid {row.id}" if row.kind == "proc" else f"{row.kind} {row.id}"

    def _set_folds(self, folds: Folds) -> None:
        """New folds; a cursor row that went into a fold moves to the folded row that holds it now."""
        table = self.process_table
        chain: list[RowKey] = []  # the cursor row's ancestors, nearest first (from the rows shown now)
        row = self.selected_row()
        while row is not None and row.parent is not None and len(chain) < 1000:
            chain.append(row.parent)
            row = self._row(row.parent)
        before = table.cursor_key
        self.view_state = replace(self.view_state, folds=folds)
        if before is not None and table.index_of(before) is None:
            for key in chain:
                if table.move_to_key(key):
                    break

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
            model = self.selected_model()
            if row is None or model is None:
                return None
            if row.kind == "proc":
                return row.id
            return row.id if row.id in model.snapshot else (row.members[0] if row.members else None)
        sel = self._pane(self.view).selected()
        return None if sel is None else sel.pid

    def selected_node(self) -> str:
        """Cluster mode: the id of the node the selected row lives on ("" on a single host)."""
        if self.view == "processes":
            row = self.selected_row()
            return "" if row is None else row.node
        sel = self._pane(self.view).selected()
        return "" if sel is None else sel.node

    def selected_model(self) -> Model | None:
        """The model of the selected row: its node's part in cluster mode, else the model."""
        return None if self.model is None else self.model.part(self.selected_node())

    def selected_targets(self) -> list[NodeTargets]:
        """The marked rows if any, else the selected row (Processes view); the selected row elsewhere. Grouped by
        the node each row lives on (one group on a single host)."""
        if self.model is None:
            return []
        if self.view == "processes":
            if self.marks:
                return node_targets(self.marks, self.model)
            table = self.process_table
            row = table.cursor_row
            if row is None:
                return []
            if table.is_gone(row):
                self.tell(
                    f"pid {row.id} has already ended"
                    if row.kind == "proc"
                    else f"{row.label or row.kind} has already ended"
                    if row.kind == "cgroup"
                    else f"{row.kind} {row.id} has already ended",
                    "warning",
                )
                return []
            return node_targets([row.key], self.model)
        sel = self._pane(self.view).selected()
        return [] if sel is None else row_node_targets(self.model, sel.node, sel.targets)

    # ------------------------------------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in _APP_ACTIONS and self._dialog_open():
            # App bindings stay live under a dialog: `t` would stack a second one, `space` or `1` would change
            # the selection the open dialog is about. The dialog's own keys (y/n/Escape) are the screen's.
            return False
        if action == "why":
            # A twin: only when its binding does nothing here and there is something to say about it.
            main = _BY_ID.get(str(parameters[0]) if parameters else "")
            if main is None or self.check_action(*_split_action(main.action)):
                return False
            return self._why_not(main) is not None
        if action in PROCESSES_ONLY:
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

    def _dialog_open(self) -> bool:
        """A dialog (confirm, details, help) is on top. The command palette is not one: its commands act on
        the screen under it, the selection included (its own keys go to its input first)."""
        top = self.screen_stack[-1] if self.screen_stack else None
        return isinstance(top, ModalScreen) and not isinstance(top, CommandPalette)

    def _why_not(self, b: Binding) -> str | None:
        """Why binding `b` does nothing here, in a few words naming its key (None: nothing worth saying)."""
        key = self.key_of(b)
        action = b.action.partition("(")[0]
        if action in PROCESSES_ONLY:
            what = (b.description or action).lower()
            return f"{key} ({what}) works in the Processes view: press {self._view_key('processes')}"
        if action == "end_duplicates":
            return f"{key} ends duplicate runs in the Duplicates view: press {self._view_key('duplicates')}"
        if action == "clean_locks":
            return f"{key} removes stale lock files in the Locks view: press {self._view_key('locks')}"
        if action == "next_node":
            return f"{key} narrows to one cluster node: only with --ray"
        return None

    def action_why(self, binding_id: str) -> None:
        b = _BY_ID.get(binding_id)
        text = None if b is None else self._why_not(b)
        if text is not None:
            self.tell(text)

    def key_of(self, b: Binding) -> str:
        """How binding `b`'s key shows (keymap applied; the first of several)."""
        key = self.user_keymap.get(b.id or "", b.key).split(",")[0].strip()
        return self.get_key_display(b.with_key(key))

    def _view_key(self, view: str) -> str:
        return self.key_of(_BY_ID[f"procguard.view.{view}"])

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
        targets = self.selected_targets()
        if not targets:
            if self.view != "processes" or self.process_table.cursor_row is None:
                self.tell("nothing selected", "warning")
            return
        if kind == "resume":  # SIGCONT does not wake what the cgroup freezer holds: its cgroup is thawed too
            targets = thaw_targets(self.model, targets)
        self._plan_worker(kind, targets, self.model)

    @work(thread=True, exit_on_error=False, group="plans")
    def _plan_worker(self, kind: Kind, targets: Sequence[NodeTargets], model: Model) -> None:
        # A dry run reads a little of /proc (procguard's own lineage): never on the UI thread.
        try:
            plan = make_plan(self.backend, kind, targets, model, self.options.grace, self.act_scope)
        except Exception as e:
            self.post_message(ActionFailed(kind, str(e)))
            return
        self.post_message(PlanReady(plan))

    def action_end_duplicates(self) -> None:
        model = self.selected_model()  # cluster mode: the selected run's node
        if model is None:
            return
        group = self.query_one(DuplicatesPane).selected_group()
        if group is None:
            self.tell("select a duplicate group (or one of its runs) first", "warning")
            return
        self._duplicates_plan_worker(group, model)

    @work(thread=True, exit_on_error=False, group="plans")
    def _duplicates_plan_worker(self, group: DuplicateGroup, model: Model) -> None:
        try:
            plan = make_duplicates_plan(
                self.backend,
                group,
                model,
                self.options.grace,
                self.act_scope,
                all_users=self.options.all_users,
            )
        except Exception as e:
            self.post_message(ActionFailed("end_duplicates", str(e)))
            return
        self.post_message(PlanReady(plan))

    def on_plan_ready(self, message: PlanReady) -> None:
        if not self._ui_live():
            return
        plan = (
            message.plan
        )  # in cluster mode: each node's targets and snapshot, so it acts where the dry run looked
        if plan.kind in CONFIRMED and plan.blast.acting and not self.options.no_confirm:

            def decided(ok: bool | None) -> None:
                if ok:
                    self.start_plan(plan)
                else:
                    self.tell(f"{VERBS[plan.kind].lower()} cancelled: nothing was signalled")

            self.push_screen(ConfirmScreen(plan), decided)  # in cluster mode it groups the processes by node
        else:
            self.start_plan(plan)

    def start_plan(self, plan: Plan) -> None:
        self.record.actions_started += 1
        label = {"terminate": "SIGTERM…", "end_duplicates": "SIGTERM…", "kill": "SIGKILL…"}.get(plan.kind)
        if label is not None:
            # A zombie has ended already: nothing will happen to it.
            starting = {k: label for k, m in plan.blast.keyed() if m.state not in DEAD_STATES}
            self.status = {**self.status, **starting}
        self._run_worker(plan)

    @work(thread=True, exit_on_error=False, group="actions")
    def _run_worker(self, plan: Plan) -> None:
        pids = tuple(k for k, _m in plan.blast.keyed())  # (pid, node) in cluster mode: pids are per node

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
        pids: tuple[StatusKey, ...] = ev.pids
        if ev.phase == "sigkill" and not pids:
            # Core ended a group with one killpg and names no pid: every member not seen exiting got it.
            pids = tuple(p for p in message.pids if self.status.get(p, "").startswith("SIGTERM"))
        status = dict(self.status)
        for pid in pids:
            label = progress_label(ev)
            if label is not None:
                status[pid] = label
                self.record.progress_log.append((pid, label))
        self.status = status

    def _clear_status(self, pids: Iterable[StatusKey]) -> None:
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
        model = self.selected_model()
        if pid is None or model is None:
            self.tell("select a guarded process to flush", "warning")
            return
        self._flush_worker(pid, model)

    @work(thread=True, exit_on_error=False, group="actions")
    def _flush_worker(self, pid: int, model: Model) -> None:
        try:
            text = self.backend.flush(pid, model.snapshot)  # cluster mode: on the row's node
        except Exception as e:  # NotGuarded, FlushTimeout, PermissionError...: the reason is the message
            self.post_message(Notice(f"flush pid {pid}: {e}", "error"))
            return
        self.post_message(Notice(f"pid {pid}: {text}"))

    def action_clean_locks(self) -> None:
        if self.model is None:
            return
        paths = tuple(
            sorted({p for m in self.model.only(self.view_state.node).each() for p in m.stale_locks})
        )
        if not paths:
            self.tell("no stale lock files to clean")
            return
        self._clean_worker(paths)

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
        if self.model is None:
            return
        if pid is None:
            sel = None if self.view == "processes" else self._pane(self.view).selected()
            if sel is not None and sel.kind in ("section", "note"):
                self.tell("Enter: a section header has no details: move to a process row")
            elif sel is not None:
                self.tell("Enter: this row names no process of this PID namespace")
            else:
                self.tell("Enter: nothing selected")
            return
        model = self.selected_model() or self.model  # cluster mode: the row's node
        history = self.history.watch(model, pid)
        self.push_screen(DetailsScreen(model, pid, self.backend, history))

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.key_table(), "procguard-tui: keys"))

    # ------------------------------------------------------------------------------------------ misc

    def tell(self, text: str, severity: str = "information") -> None:
        """Every notification goes through here: results, errors and flush answers quote commands, paths and
        messages of other users' processes, so the whole text is made safe and never parsed as markup."""
        text = plain(text)
        self.record.notices.append((text, severity))
        if text in self._toasts:
            return  # the same words are on screen already: one toast, not a pile of them
        self._toasts.add(text)
        timeout = NOTIFY_TIMEOUT.get(severity, 6.0)
        self.notify(text, severity=severity, timeout=timeout, markup=False)  # type: ignore[arg-type]
        self.set_timer(timeout, lambda: self._toasts.discard(text))

    def key_table(self) -> list[tuple[str, str, str]]:
        """(key as bound now, what it does, binding id) for the help screen, keymap applied."""
        out = []
        for b in self.KEYS:
            if b.id in CLUSTER_ONLY and not self.cluster_mode:
                continue
            key = self.user_keymap.get(b.id or "", b.key)
            desc = LONG_DESCRIPTIONS.get(b.id or "", b.description)
            out.append(
                (
                    ", ".join(self.get_key_display(b.with_key(k.strip())) for k in key.split(",")),
                    desc,
                    b.id or "",
                )
            )
        return out

    def palette_commands(self) -> list[tuple[str, str, Callable[[], Awaitable[None]]]]:
        """(title, help, command) of every procguard action for the command palette: one per binding (title,
        key as bound now, what it does), then one per sort key and grouping. Each acts like its key, on the
        current selection; one that does nothing here says why."""
        keys = {bid: key for key, _desc, bid in self.key_table()}
        out: list[tuple[str, str, Callable[[], Awaitable[None]]]] = []
        for b in self.KEYS:
            if b.id is None or b.id not in keys:
                continue
            title = PALETTE_TITLES.get(b.id, b.description)
            help_text = f"{keys[b.id]} · {LONG_DESCRIPTIONS.get(b.id, b.description)}"
            out.append((title, help_text, partial(self.run_binding, b)))
        for sort in SORT_KEYS:
            out.append(
                (
                    f"Sort by {SORT_LABELS[sort]}",
                    f"Processes view: sort by {SORT_LABELS[sort]}",
                    partial(self.run_binding, _BY_ID["procguard.sort"], f"set_sort('{sort}')"),
                )
            )
        for grouping in GROUPINGS:
            out.append(
                (
                    f"Group {GROUPING_LABELS[grouping]}",
                    f"Processes view: {GROUPING_LABELS[grouping]}",
                    partial(self.run_binding, _BY_ID["procguard.group"], f"set_grouping('{grouping}')"),
                )
            )
        return out

    async def run_binding(self, b: Binding, action: str | None = None) -> None:
        """Run binding `b`'s action (or `action` in its place) as its key would: if it does nothing here, say
        why (the palette's commands)."""
        if not await self.run_action(action or b.action):
            self.action_why(b.id or "")


class ProcguardCommands(Provider):
    """The command palette's procguard commands, built from the app's bindings (ProcguardApp.palette_commands):
    a new binding is a new command, and a command does exactly what its key does."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Awaitable[None]]]]:
        app = self.app
        return app.palette_commands() if isinstance(app, ProcguardApp) else []

    async def discover(self) -> Hits:
        for title, help_text, command in self._commands():
            yield DiscoveryHit(title, command, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, command in self._commands():
            # The title first; the help line (key, what it does) finds "SIGKILL" or "cgroup" too.
            score = max(matcher.match(title), matcher.match(help_text) * 0.5)
            if score > 0:
                yield Hit(score, matcher.highlight(title), command, text=title, help=help_text)


# Everything bound on the app but quit: blocked while a dialog (confirm, details, help) is open.
_APP_ACTIONS = frozenset(
    b.action.partition("(")[0] for b in ProcguardApp.BINDINGS if isinstance(b, Binding) and b.action != "quit"
) | {"set_sort", "set_grouping"}
_BY_ID = {b.id: b for b in ProcguardApp.KEYS if b.id is not None}


def _split_action(action: str) -> tuple[str, tuple[object, ...]]:
    """`show_view('gpu')` -> ("show_view", ("gpu",)): what check_action gets for a binding's action."""
    name, _, rest = action.partition("(")
    args = rest.rstrip(")").strip()
    return name, tuple(a.strip().strip("'\"") for a in args.split(",")) if args else ()


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
    "procguard.fold": "Fold subtree / group",
    "procguard.unfold": "Unfold subtree / group",
    "procguard.fold_all": "Fold / unfold all",
    "procguard.tree_left": "Fold, or go to the parent row",
    "procguard.tree_right": "Unfold, or go to the first child",
    "procguard.details": "Details",
    "procguard.node": "Narrow to the next cluster node",
    "procguard.help": "Help: keys, flags, remapping",
    "procguard.quit": "Quit procguard-tui",
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
    "procguard.group": "group the tree by parent → process group → session → cgroup (container, unit, job)",
    "procguard.sort": "sort by pid → age → CPU → RSS → GPU memory",
    "procguard.sort_reverse": "reverse the sort",
    "procguard.filter": "filter by pid, user, command (Enter keeps, Esc clears)",
    "procguard.mark": "mark / unmark the row",
    "procguard.mark_all": "mark every process shown",
    "procguard.clear_marks": "clear the marks",
    "procguard.fold": "fold the selected subtree, group or session (on a row with nothing under it: its parent)",
    "procguard.unfold": "unfold the selected row",
    "procguard.fold_all": "unfold everything if anything is folded, else fold everything",
    "procguard.tree_left": "fold the selected row; on a folded or childless row, go to its parent",
    "procguard.tree_right": "unfold the selected row; on an unfolded one, go to its first child",
    "procguard.details": "details: command, cwd, rank/job, locks, children, GPU",
    "procguard.node": "cluster (--ray): narrow to one node, the next each time, then all nodes again (marks stay)",
    "procguard.help": "this help",
    "procguard.quit": "quit",
}


class KeymapError(ValueError):
    """A keymap entry that can't be used: malformed, an unknown binding id, a bad key name, or a key two
    actions would share. One line, naming the entry."""


# Every binding id a keymap may name (the twins are not the user's: they follow their binding's key).
KEYMAP_CLASSES = (ProcguardApp, FilterInput, KeyedTable, ConfirmScreen, DetailsScreen, HelpScreen)
_MODIFIERS = frozenset({"ctrl", "shift", "alt", "meta", "super", "hyper"})
_KEY_NAMES = frozenset(k.value for k in Keys if "+" not in k.value and not k.value.startswith("<"))


def binding_ids() -> dict[str, str]:
    """binding id -> its default key(s), for every binding a keymap may name."""
    out: dict[str, str] = {}
    for cls in KEYMAP_CLASSES:
        for b in cls.KEYS if cls is ProcguardApp else cls.BINDINGS:  # type: ignore[attr-defined]
            if isinstance(b, Binding) and b.id is not None:
                out[b.id] = b.key
    return out


def key_problem(key: str) -> str | None:
    """Why `key` is not a key name Textual can bind (None when it is): one printable character, or a name
    (f5, space, pageup, question_mark, minus, asterisk...), after modifiers (ctrl+, shift+, alt+...)."""
    if len(key) == 1:
        return None if key.isprintable() and not key.isspace() else f"{key!r} is not a key name"
    *mods, base = key.split("+")
    bad = [m for m in mods if m not in _MODIFIERS]
    if bad:
        return f"{bad[0]!r} in {key!r} is not a modifier (ctrl, shift, alt, meta, super, hyper)"
    if len(base) == 1 and base.isprintable() and not base.isspace():
        return None
    if base in _KEY_NAMES or key_to_character(REPLACED_KEYS.get(base, base)) is not None:
        return None
    return f"{key!r} is not a key name (e.g. T, ctrl+t, f5, space, question_mark, minus)"


def check_keymap(keymap: Mapping[str, str], where: Callable[[str], str]) -> dict[str, str]:
    """`keymap` (binding id -> key, or keys separated by commas) checked: every id is a binding's, every key a
    key name, and no key is left to two of the app's actions. `where(id)` names the entry in an error
    (KeymapError: `PROCGUARD_TUI_KEYMAP: procguard.kill=K: ...`)."""
    ids = binding_ids()
    for bid, keys in keymap.items():
        if bid not in ids:
            raise KeymapError(f"{where(bid)}: no binding has the id {bid!r} (the help screen, ?, lists them)")
        for key in keys.split(","):
            problem = key_problem(key.strip())
            if problem is not None:
                raise KeymapError(f"{where(bid)}: {problem}")
    owner: dict[str, str] = {}
    for b in ProcguardApp.KEYS:
        assert b.id is not None
        for key in keymap.get(b.id, b.key).split(","):
            key = App._normalize_keymap({"k": key.strip()})["k"]
            other = owner.setdefault(key, b.id)
            if other != b.id:
                named = b.id if b.id in keymap else other
                raise KeymapError(f"{where(named)}: key {key!r} would do both {other} and {b.id}")
    return dict(keymap)


def parse_keymap(text: str, source: str = KEYMAP_ENV) -> dict[str, str]:
    """`id=key,id=key` (one key per id this way: a comma ends the entry), checked (check_keymap). Raises
    KeymapError naming the entry: a malformed one, an unknown id, a bad key name."""
    out: dict[str, str] = {}
    for item in text.split(","):
        entry = item.strip()
        if not entry:
            continue
        bid, sep, key = entry.partition("=")
        if not sep or not bid.strip() or not key.strip():
            raise KeymapError(f"{source}: {entry!r} is not binding-id=key")
        out[bid.strip()] = key.strip()
    return check_keymap(out, lambda bid: f"{source}: {bid}={out[bid]}")


def _keymap_with_twins(keymap: Mapping[str, str]) -> dict[str, str]:
    """The keymap for Textual: each remapped binding's hidden twin moves with it."""
    return {**keymap, **{f"{bid}{WHY}": key for bid, key in keymap.items() if bid in _BY_ID}}
