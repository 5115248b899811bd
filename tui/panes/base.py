"""What views 2-4 share: one table of rows built from the latest model, built once per model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual.app import ComposeResult
from textual.containers import Vertical

from procguard.tui.model import Model
from procguard.tui.rows import Column, TableRow
from procguard.tui.widgets.table import SimpleTable


class TablePane(Vertical):
    """A view showing a SimpleTable (`COLUMNS`, id `TABLE_ID`). `show(model)` fills it through `fill` once per
    model: a view switch back to the pane shows the rows already built for that model."""

    COLUMNS: ClassVar[Sequence[Column]]
    TABLE_ID: ClassVar[str]

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._model: Model | None = None  # the model the rows were built for

    def compose(self) -> ComposeResult:
        yield SimpleTable(self.COLUMNS, id=self.TABLE_ID)

    @property
    def table(self) -> SimpleTable:
        return self.query_one(SimpleTable)

    def show(self, model: Model) -> None:
        if model is self._model:
            return
        self._model = model
        self.fill(model)

    def fill(self, model: Model) -> None:
        """Put `model`'s rows in the table (called once per model)."""
        raise NotImplementedError

    def selected(self) -> TableRow | None:
        return self.table.cursor_row
