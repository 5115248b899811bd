"""View 2: scripts running more than once, one section per script, oldest run first; scheduler-managed runs
listed apart. `d` ends all but the oldest run of the selected script (after the confirm dialog)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical

from procguard.core.duplicates import DuplicateGroup
from procguard.tui.model import Model, key_alive
from procguard.tui.rows import DUPLICATE_COLUMNS, TableRow, duplicate_rows
from procguard.tui.widgets.table import SimpleTable


class DuplicatesPane(Vertical):
    DEFAULT_CSS = "DuplicatesPane { height: 1fr; }"

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._model: Model | None = None  # the model the rows were built for

    def compose(self) -> ComposeResult:
        yield SimpleTable(DUPLICATE_COLUMNS, id="duplicates-table")

    @property
    def table(self) -> SimpleTable:
        return self.query_one(SimpleTable)

    def show(self, model: Model) -> None:
        if model is self._model:
            return  # a view switch back to this pane: its rows are already those of this model
        self._model = model
        self.table.set_rows(duplicate_rows(model), alive=lambda k: _alive(model, k))

    def selected(self) -> TableRow | None:
        return self.table.cursor_row

    def selected_group(self) -> DuplicateGroup | None:
        row = self.selected()
        return row.ref if row is not None and isinstance(row.ref, DuplicateGroup) else None


def _alive(model: Model, key: object) -> bool:
    if isinstance(key, tuple) and len(key) == 2 and key[0] in ("inst", "sched") and isinstance(key[1], int):
        return key_alive(model, ("p", key[1]))
    return True  # section rows just move with the data
