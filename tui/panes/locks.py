"""View 3: held locks (path, holders, kind, mode, managed, holder command) and stale lock files. `x` removes
the stale procguard lock files (only files nobody holds; core re-checks under the file's own lock)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical

from procguard.tui.model import Model
from procguard.tui.rows import LOCK_COLUMNS, TableRow, lock_rows
from procguard.tui.widgets.table import SimpleTable


class LocksPane(Vertical):
    DEFAULT_CSS = "LocksPane { height: 1fr; }"

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._model: Model | None = None  # the model the rows were built for

    def compose(self) -> ComposeResult:
        yield SimpleTable(LOCK_COLUMNS, id="locks-table")

    @property
    def table(self) -> SimpleTable:
        return self.query_one(SimpleTable)

    def show(self, model: Model) -> None:
        if model is self._model:
            return  # a view switch back to this pane: its rows are already those of this model
        self._model = model
        # A released lock just leaves the list: nothing to act on stays under the cursor.
        self.table.set_rows(lock_rows(model))

    def selected(self) -> TableRow | None:
        return self.table.cursor_row
