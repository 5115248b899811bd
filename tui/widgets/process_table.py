"""The Processes view's table: model.Rows drawn line by line (see KeyedTable)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from rich.style import Style

from procguard.core import format as fmt
from procguard.tui.model import (
    FLAG_DUPLICATE,
    FLAG_GUARDED,
    FLAG_LOCK,
    FLAG_ORPHAN_GPU,
    FLAG_RUN,
    Row,
    display_command,
    group_label,
)
from procguard.tui.rows import Cell, Column
from procguard.tui.widgets.table import KeyedTable

_FLAG_STYLE = {FLAG_DUPLICATE: "warning", FLAG_GUARDED: "success", FLAG_RUN: "success", FLAG_LOCK: "accent",
               FLAG_ORPHAN_GPU: "error"}


WIDE = 120  # from this width on, the table adds thread count and age and a wider user column


def process_columns(width: int) -> tuple[Column, ...]:
    """Narrow terminals get the essentials; wide ones more columns. The command takes whatever is left."""
    wide = width >= WIDE
    cols = [
        Column("", 1),  # mark
        Column("PID", 7, "right"),
        Column("USER", 12 if wide else 8),
        Column("S", 1),
        Column("CPU%", 5, "right"),
        Column("RSS", 6, "right"),
        Column("GPU", 6, "right"),
    ]
    if wide:
        cols += [Column("THR", 4, "right"), Column("AGE", 6, "right")]
    cols += [Column("FLG", 3), Column("COMMAND", 0)]
    return tuple(cols)


class ProcessTable(KeyedTable):
    """Rows of model.Row; group/session header rows show member count, stopped count and totals."""

    COMPONENT_CLASSES: ClassVar[set[str]] = KeyedTable.COMPONENT_CLASSES | {
        "process-table--group", "process-table--stopped", "process-table--zombie",
    }

    DEFAULT_CSS = """
    ProcessTable {
        & > .process-table--group { color: $text-accent; text-style: bold; }
        & > .process-table--stopped { color: $text-warning; }
        & > .process-table--zombie { color: $text-error; text-style: dim; }
    }
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.columns = process_columns(80)
        self.status: Mapping[int, str] = {}  # pid -> progress of an action running on it
        self.now = 0.0  # the model's time: ages are measured from it (no clock here)

    def _column_widths(self, width: int) -> list[int]:
        if width != self._widths_for:
            self.columns = process_columns(width)
        return super()._column_widths(width)

    def set_status(self, status: Mapping[int, str]) -> None:
        self.status = dict(status)
        self.invalidate()

    def set_marks(self, marks: set[Any]) -> None:
        self.marks = set(marks)
        self.invalidate()

    def invalidate(self) -> None:
        self._cache.clear()
        self.refresh()

    def row_style(self, row: Row) -> Style | None:
        if row.kind != "proc":
            return self.get_component_rich_style("process-table--group")
        p = row.proc
        if p is not None and p.stopped:
            return self.get_component_rich_style("process-table--stopped")
        if p is not None and p.dead:
            return self.get_component_rich_style("process-table--zombie")
        return None

    def _progress(self, row: Row) -> str | None:
        if not self.status:
            return None
        if row.kind == "proc":
            return self.status.get(row.id)
        busy = [self.status[m] for m in row.members if m in self.status]
        if not busy:
            return None
        # One line for the whole group: where the members still running are, and how many have exited.
        pending = [s for s in busy if s != "exited"]
        parts = []
        if pending:
            parts.append(f"{len(pending)}× {pending[0]}" if len(pending) > 1 else pending[0])
        if len(pending) < len(busy):
            parts.append(f"{len(busy) - len(pending)} exited")
        return " · ".join(parts)

    def render_cells(self, row: Row, gone: bool) -> Sequence[Cell]:
        mark = "●" if row.key in self.marks else ""
        wide = len(self.columns) > 9
        flags = row.flags
        threads = age = ""
        if row.kind == "proc":
            p = row.proc
            assert p is not None
            user, state = p.username, p.state
            if wide:
                threads, age = str(p.num_threads), fmt.age(self.now - p.create_time)
            prefix, command = row.prefix, display_command(p)
            state_style = "warning" if p.stopped else "error" if p.dead else ""
        else:
            user = row.proc.username if row.proc is not None else ""
            state = ""
            state_style = ""
            prefix, command = "", group_label(row)
        progress = None if gone else self._progress(row)
        # The tree lines stay in place; what happens to the process goes right after them.
        if gone:
            cmd_cell = Cell(prefix + "(gone) " + command)
        elif progress:
            cmd_cell = Cell(f"{prefix}[{progress}] {command}", "progress")
        else:
            cmd_cell = Cell(prefix + command)
        cells = [
            Cell(mark, "accent"),
            Cell(str(row.id)),
            Cell(user, "dim"),
            Cell(state, state_style),
            Cell(fmt.cpu(row.cpu)),
            Cell(fmt.bytes_short(row.rss)),
            Cell(fmt.bytes_short(row.gpu, blank_zero=True), "accent"),
        ]
        if wide:
            cells += [Cell(threads, "dim"), Cell(age, "dim")]
        cells += [Cell(flags, parts=tuple((f, _FLAG_STYLE.get(f, "")) for f in flags)), cmd_cell]
        return cells
