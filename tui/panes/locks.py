"""View 3: held locks (path, holders, kind, mode, managed, holder command) and stale lock files. `x` removes
the stale procguard lock files (only files nobody holds; core re-checks under the file's own lock)."""

from __future__ import annotations

from procguard.tui.model import Model
from procguard.tui.panes.base import TablePane
from procguard.tui.rows import LOCK_COLUMNS, lock_rows


class LocksPane(TablePane):
    DEFAULT_CSS = "LocksPane { height: 1fr; }"
    COLUMNS = LOCK_COLUMNS
    TABLE_ID = "locks-table"

    def fill(self, model: Model) -> None:
        # A released lock just leaves the list: nothing to act on stays under the cursor.
        self.table.set_rows(lock_rows(model))
