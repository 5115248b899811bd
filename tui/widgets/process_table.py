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
    STATE_FROZEN,
    Row,
    StatusKey,
    display_command,
    group_label,
    shown_state,
    status_key,
)
from procguard.tui.rows import Cell, Column
from procguard.tui.widgets.table import KeyedTable

_FLAG_STYLE = {
    FLAG_DUPLICATE: "warning",
    FLAG_GUARDED: "success",
    FLAG_RUN: "success",
    FLAG_LOCK: "accent",
    FLAG_ORPHAN_GPU: "error",
}


WIDE = 120  # from this width on, the table adds thread count and age and a wider user column
CGROUPS = 150  # from this width on, a CGROUP column (the process's container, unit or job; not for a cluster)


def process_columns(width: int, cluster: bool = False) -> tuple[Column, ...]:
    """Narrow terminals get the essentials; wide ones more columns. The command takes whatever is left. A cluster
    adds NODE (the node's short id: the same pid on two nodes is two processes) and, from 100 columns on, TASK (the
    Ray task or actor owning the process)."""
    wide = width >= WIDE
    cols = [
        Column("", 1),  # mark
        Column("PID", 7, "right"),
        *([Column("NODE", 8)] if cluster else []),
        Column("USER", 12 if wide else 8),
        Column("S", 1),
        Column("CPU%", 5, "right"),
        Column("RSS", 6, "right"),
        Column("GPU", 6, "right"),
    ]
    if wide:
        cols += [Column("THR", 4, "right"), Column("AGE", 6, "right")]
    if cluster and width >= 100:
        cols.append(Column("TASK", 8))
    if not cluster and width >= CGROUPS:
        cols.append(Column("CGROUP", 26))
    cols += [Column("FLG", 3), Column("COMMAND", 0)]
    return tuple(cols)


class ProcessTable(KeyedTable):
    """Rows of model.Row; group/session header rows show member count, stopped count and totals."""

    COMPONENT_CLASSES: ClassVar[set[str]] = KeyedTable.COMPONENT_CLASSES | {
        "process-table--group",
        "process-table--stopped",
        "process-table--zombie",
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
        self.status: Mapping[StatusKey, str] = {}  # pid ((pid, node) in a cluster) -> progress of an action
        self.now = 0.0  # the model's time: ages are measured from it (no clock here)
        self.cluster = False  # rows of a cluster (they carry their node): NODE and TASK columns

    def _column_widths(self, width: int) -> list[int]:
        if width != self._widths_for:
            self.columns = process_columns(width, self.cluster)
        return super()._column_widths(width)

    def set_rows(self, rows: Sequence[Any], alive: Any = None) -> None:
        cluster = bool(rows[0].node) if rows else self.cluster
        if cluster != self.cluster:
            self.cluster = cluster
            self.columns = process_columns(self.scrollable_content_region.width or 80, cluster)
            self._widths_for = -1  # the widths follow at the next draw
            self._forget()
        super().set_rows(rows, alive)

    def set_status(self, status: Mapping[StatusKey, str]) -> None:
        self.status = dict(status)
        self.invalidate()

    def set_marks(self, marks: set[Any]) -> None:
        self.marks = set(marks)
        self.invalidate()

    def invalidate(self) -> None:
        """Marks or progress changed: repaint the lines that show a difference (cached lines stay valid, they
        are keyed by their content)."""
        self._keys.clear()
        self.refresh_changed()

    def row_style(self, row: Row) -> Style | None:
        if row.kind != "proc":
            return self.get_component_rich_style("process-table--group")
        p = row.proc
        if p is not None and (p.stopped or (row.frozen and not p.dead)):
            return self.get_component_rich_style("process-table--stopped")
        if p is not None and p.dead:
            return self.get_component_rich_style("process-table--zombie")
        return None

    def _progress(self, row: Row) -> str | None:
        if not self.status:
            return None
        if row.kind == "proc":
            return self.status.get(status_key(row.id, row.node))
        busy = [s for m in row.members if (s := self.status.get(status_key(m, row.node))) is not None]
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
        wide = any(c.title == "THR" for c in self.columns)  # (a cluster has more columns, not wider ones)
        flags = row.flags
        threads = age = ""
        if row.kind == "proc":
            p = row.proc
            assert p is not None
            user, state = p.username, shown_state(row)
            if wide:
                threads, age = str(p.num_threads), fmt.age(self.now - p.create_time)
            prefix, command = row.prefix, display_command(p)
            state_style = "warning" if p.stopped or state == STATE_FROZEN else "error" if p.dead else ""
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
            Cell("" if row.kind == "cgroup" else str(row.id)),  # a cgroup header's id is only its lowest pid
            *([Cell(row.node[:8], "dim")] if self.cluster else []),
            Cell(user, "dim"),
            Cell(state, state_style),
            Cell(fmt.cpu(row.cpu)),
            Cell(fmt.bytes_short(row.rss)),
            Cell(fmt.bytes_short(row.gpu, blank_zero=True), "accent"),
        ]
        if wide:
            cells += [Cell(threads, "dim"), Cell(age, "dim")]
        if self.cluster and any(c.title == "TASK" for c in self.columns):
            cells.append(Cell(row.task, "accent"))
        if any(c.title == "CGROUP" for c in self.columns):
            cells.append(Cell(row.label if row.kind == "proc" else "", "dim"))
        cells += [Cell(flags, parts=tuple((f, _FLAG_STYLE.get(f, "")) for f in flags)), cmd_cell]
        return cells
