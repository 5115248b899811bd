"""View 2: scripts running more than once, one section per script, oldest run first; scheduler-managed runs
listed apart. `d` ends all but the oldest run of the selected script (after the confirm dialog)."""

from __future__ import annotations

from procguard.core.duplicates import DuplicateGroup
from procguard.tui.model import Model, key_alive
from procguard.tui.panes.base import TablePane
from procguard.tui.rows import DUPLICATE_COLUMNS, duplicate_rows


class DuplicatesPane(TablePane):
    DEFAULT_CSS = "DuplicatesPane { height: 1fr; }"
    COLUMNS = DUPLICATE_COLUMNS
    TABLE_ID = "duplicates-table"

    def fill(self, model: Model) -> None:
        self.table.set_rows(duplicate_rows(model), alive=lambda k: _alive(model, k))

    def selected_group(self) -> DuplicateGroup | None:
        row = self.selected()
        return row.ref if row is not None and isinstance(row.ref, DuplicateGroup) else None


def _alive(model: Model, key: object) -> bool:
    if isinstance(key, tuple) and len(key) == 2 and key[0] in ("inst", "sched") and isinstance(key[1], int):
        return key_alive(model, ("p", key[1]))
    return True  # section rows just move with the data
