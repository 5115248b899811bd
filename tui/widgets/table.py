"""`KeyedTable`: a Line-API table that draws only the visible lines and keeps its cursor on a row *key*.

Rows are replaced wholesale on every refresh (`set_rows`); the cursor follows its key wherever the row moved.
When the row under the cursor vanished for good (the caller's `alive(key)` says so), it stays on screen as a
"gone" row until the cursor moves, instead of the cursor silently landing on a neighbour. Lines are rendered
on demand in `render_line`, so a 5,000-row table costs what its visible lines cost; a rendered line is cached by
its content (cells, cursor, mark, gone, width), and a refresh repaints only the lines whose content changed (an
idle refresh where nothing visible changed repaints nothing; a cursor move without scrolling repaints 2 lines).

Rows have a `.key` and a `.kind`. Subclasses provide `columns` and `render_cells(row, ...)`; `SimpleTable` draws
`rows.TableRow`s. Cell texts are process text (commands, paths, user names): `_render_row` makes every one safe
(`tui.text.plain`) where it becomes a segment, the one place for every table; row builders stay raw.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from procguard.tui.rows import Cell, Column, TableRow
from procguard.tui.text import plain

CellStyle = str  # component suffix, see COMPONENT_CLASSES ("" for none)


def fit(text: str, width: int, align: str = "left", clip: str = "end") -> str:
    """`text` cut (with an ellipsis, at the end or the start) or padded to exactly `width` cells."""
    if width <= 0:
        return ""
    if text.isascii():  # the common case, without cell-width lookups
        if len(text) > width:
            return "…" + text[len(text) - width + 1 :] if clip == "start" else text[: width - 1] + "…"
        return text.rjust(width) if align == "right" else text.ljust(width)
    n = cell_len(text)
    if n > width:
        if clip == "start":
            return "…" + set_cell_size(text[::-1], width - 1)[::-1]
        return set_cell_size(text, width - 1) + "…"
    pad = " " * (width - n)
    return pad + text if align == "right" else text + pad


def layout(columns: Sequence[Column], width: int) -> list[int]:
    """Column widths for a total `width` (one separator cell between columns)."""
    fixed = sum(c.width for c in columns if c.width)
    flex = [c for c in columns if not c.width]
    room = max(0, width - fixed - (len(columns) - 1))
    weights = sum(c.weight for c in flex) or 1
    out: list[int] = []
    given = 0
    flex_seen = 0
    for c in columns:
        if c.width:
            out.append(c.width)
            continue
        flex_seen += 1
        w = room - given if flex_seen == len(flex) else room * c.weight // weights
        given += w
        out.append(max(0, w))
    return out


class KeyedTable(ScrollView, can_focus=True):
    """Base class: rows with a `.key`, a fixed header line, a cursor kept by key, gone rows."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "table--header",
        "table--cursor",
        "table--marked",
        "table--gone",
        "table--section",
        "table--note",
        "table--dim",
        "table--warning",
        "table--error",
        "table--accent",
        "table--success",
        "table--bold",
        "table--progress",
    }

    DEFAULT_CSS = """
    KeyedTable {
        height: 1fr;
        overflow-x: hidden;
        overflow-y: auto;
        background: $surface;
        scrollbar-size-vertical: 1;
        & > .table--header { background: $panel; color: $text-muted; text-style: bold; }
        & > .table--cursor { background: $block-cursor-blurred-background; color: $foreground;
                             text-style: $block-cursor-blurred-text-style; }
        &:focus > .table--cursor { background: $block-cursor-background; color: $block-cursor-foreground;
                                   text-style: $block-cursor-text-style; }
        & > .table--marked { background: $primary 25%; text-style: bold; }
        & > .table--gone { color: $text-disabled; text-style: italic strike; }
        & > .table--section { color: $accent; text-style: bold; }
        & > .table--note { color: $text-muted; text-style: italic; }
        & > .table--dim { color: $text-muted; }
        & > .table--warning { color: $text-warning; }
        & > .table--error { color: $text-error; }
        & > .table--accent { color: $text-accent; }
        & > .table--success { color: $text-success; }
        & > .table--bold { text-style: bold; }
        & > .table--progress { color: $text-warning; text-style: bold; }
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor_up", "Up", show=False, id="procguard.table.up"),
        Binding("down", "cursor_down", "Down", show=False, id="procguard.table.down"),
        Binding("pageup", "page_up", "Page up", show=False, id="procguard.table.page_up"),
        Binding("pagedown", "page_down", "Page down", show=False, id="procguard.table.page_down"),
        Binding("home", "first", "First", show=False, id="procguard.table.first"),
        Binding("end", "last", "Last", show=False, id="procguard.table.last"),
    ]

    class CursorMoved(Message):
        """The cursor is on another row (or the same row after a refresh moved it)."""

        def __init__(self, table: KeyedTable, key: Hashable | None) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> KeyedTable:
            return self.table

    columns: Sequence[Column] = ()

    def __init__(
        self,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
        empty_text: str = "",
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.rows: list[Any] = []
        self._index: dict[Hashable, int] = {}
        self.cursor = 0
        self.ghost_key: Hashable | None = None  # key of the "gone" row kept under the cursor
        self.marks: set[Hashable] = set()
        self.empty_text = empty_text
        self._widths: list[int] = []
        self._widths_for = -1
        self._cache: dict[Hashable, Strip] = {}  # line content key -> rendered strip
        self._drawn: dict[int, Hashable] = {}  # widget line y -> content key of what render_line drew there
        self._drawn_top = -1  # the scroll position render_line drew at
        self._keys: dict[int, tuple[Any, int, bool, int, Hashable, Sequence[Cell]]] = {}  # y -> line memo
        self.lines_repainted = 0  # lines asked to repaint so far (a whole-table repaint counts its height)
        self._shown: frozenset[str] | None = None  # column titles shown (None: all); see shown_columns

    @property
    def shown_columns(self) -> frozenset[str] | None:
        """The titles of the columns shown (the config file's `columns`); None: every column. A column with no
        title (the mark column) always shows. Hidden columns give their room to the flexible ones."""
        return self._shown

    @shown_columns.setter
    def shown_columns(self, titles: frozenset[str] | None) -> None:
        self._shown = titles
        self._widths_for = -1
        self._forget()
        self.refresh()

    def _forget(self) -> None:
        """Drop every cached line (styles, columns or widths changed): the next draw renders all anew."""
        self._cache.clear()
        self._drawn.clear()
        self._keys.clear()

    def _shows(self, column: Column) -> bool:
        return self._shown is None or not column.title or column.title in self._shown

    # ------------------------------------------------------------------------------------------ data

    @property
    def cursor_row(self) -> Any | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    @property
    def cursor_key(self) -> Hashable | None:
        row = self.cursor_row
        return None if row is None else row.key

    def is_gone(self, row: Any) -> bool:
        return self.ghost_key is not None and row.key == self.ghost_key

    def set_rows(self, rows: Sequence[Any], alive: Callable[[Hashable], bool] | None = None) -> None:
        """Replace the rows, keeping the cursor on its key. A cursor row that is no longer in `rows` and not
        `alive` stays (as gone) where it was; one that is only filtered out hands the cursor to the row now at
        its position."""
        old_row = self.cursor_row
        old_key = None if old_row is None else old_row.key
        old_pos = self.cursor
        self.rows = list(rows)
        self._index = {r.key: i for i, r in enumerate(self.rows)}
        if old_key is not None and old_key in self._index:
            if self.ghost_key == old_key:
                self.ghost_key = None  # it came back (can't for a pid, can for a group)
            self.cursor = self._index[old_key]
        elif old_row is not None and alive is not None and not alive(old_key):
            pos = min(old_pos, len(self.rows))
            self.rows.insert(pos, old_row)
            self._index = {r.key: i for i, r in enumerate(self.rows)}
            self.ghost_key = old_key
            self.cursor = pos
        else:
            self.ghost_key = None
            self.cursor = max(0, min(old_pos, len(self.rows) - 1))
        self._keys.clear()
        self._set_height(len(self.rows) + 1)
        self._keep_cursor_visible()
        self.refresh_changed()
        if self.cursor_key != old_key:
            self.post_message(self.CursorMoved(self, self.cursor_key))

    def move_to_key(self, key: Hashable) -> bool:
        idx = self._index.get(key)
        if idx is None:
            return False
        self._move(idx)
        return True

    def index_of(self, key: Hashable) -> int | None:
        return self._index.get(key)

    def _move(self, idx: int) -> None:
        if not self.rows:
            return
        idx = max(0, min(idx, len(self.rows) - 1))
        if self.ghost_key is not None and self.rows[self.cursor].key == self.ghost_key and idx != self.cursor:
            # Leaving the gone row: now it may go.
            ghost = self.cursor
            del self.rows[ghost]
            self.ghost_key = None
            self._index = {r.key: i for i, r in enumerate(self.rows)}
            if idx > ghost:
                idx -= 1
            idx = max(0, min(idx, len(self.rows) - 1))
            self._keys.clear()
            self._set_height(len(self.rows) + 1)
        changed = idx != self.cursor
        self.cursor = idx
        self._keep_cursor_visible()
        self.refresh_changed()  # without a scroll: the old and the new cursor line
        if changed:
            self.post_message(self.CursorMoved(self, self.cursor_key))

    def _set_height(self, height: int) -> None:
        """The scroll range: `virtual_size` is a layout reactive (a whole-screen layout each time it is set), so
        it is set only when it changed, and without a layout while the scrollbar stays as it is."""
        new = Size(self.size.width, height)
        old = self.virtual_size
        if new == old:
            return
        room = self.scrollable_content_region.height
        if self.is_mounted and old.width == new.width and old.height > room and height > room:
            self.set_reactive(KeyedTable.virtual_size, new)
            self._scroll_update(new)
        else:
            self.virtual_size = new

    def refresh_changed(self) -> None:
        """Repaint only the lines whose content differs from what was drawn there last (nothing when nothing
        visible changed). A scroll, a first draw or a new width repaints everything (Textual does on a scroll)."""
        top = round(self.scroll_y)
        width = self.scrollable_content_region.width
        if top != self._drawn_top or not self._drawn:
            self.lines_repainted += self.size.height
            self.refresh()
            return
        full = self.size.width
        for y in range(1, self.scrollable_content_region.height):
            if self._line_key(y, top, width) != self._drawn.get(y):
                self.lines_repainted += 1
                self.refresh(Region(0, y, full, 1))

    def _keep_cursor_visible(self) -> None:
        body = max(1, self.scrollable_content_region.height - 1)  # minus the header line
        top = round(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + body:
            self.scroll_to(y=self.cursor - body + 1, animate=False, immediate=True)

    # ------------------------------------------------------------------------------------------ keys

    def action_cursor_up(self) -> None:
        self._move(self.cursor - 1)

    def action_cursor_down(self) -> None:
        self._move(self.cursor + 1)

    def _page(self) -> int:
        return max(1, self.scrollable_content_region.height - 2)

    def action_page_up(self) -> None:
        self._move(self.cursor - self._page())

    def action_page_down(self) -> None:
        self._move(self.cursor + self._page())

    def action_first(self) -> None:
        self._move(0)

    def action_last(self) -> None:
        self._move(len(self.rows) - 1)

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            self._move(round(self.scroll_y) + event.y - 1)

    def on_resize(self, event: events.Resize) -> None:
        self._forget()
        self.virtual_size = Size(event.size.width, len(self.rows) + 1)
        self._keep_cursor_visible()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._forget()

    # ------------------------------------------------------------------------------------------ drawing

    def style(self, name: str) -> Style:
        return self.get_component_rich_style(f"table--{name}")

    def render_cells(self, row: Any, gone: bool) -> Sequence[Cell]:
        raise NotImplementedError

    def _column_widths(self, width: int) -> list[int]:
        """Widths in column order; 0 for a hidden column (not drawn, no separator)."""
        if width != self._widths_for:
            if self._shown is None:
                self._widths = layout(self.columns, width)
            else:
                shown = iter(layout([c for c in self.columns if self._shows(c)], width))
                self._widths = [next(shown) if self._shows(c) else 0 for c in self.columns]
            self._widths_for = width
        return self._widths

    def _header(self, width: int) -> Strip:
        widths = self._column_widths(width)
        text = " ".join(
            fit(c.title, w, c.align) for c, w in zip(self.columns, widths, strict=True) if self._shows(c)
        )
        return Strip([Segment(fit(text, width), self.style("header"))], width)

    def _line(self, y: int, top: int, width: int) -> tuple[Hashable, Sequence[Cell]]:
        """What body line `y` shows at scroll position `top`: a key of its whole content, and the row's cells.
        Memoized per line until the rows, marks, status or styles change (set_rows / invalidate clear it)."""
        idx = top + y - 1
        if idx >= len(self.rows):
            empty = not self.rows and y == 1 and self.empty_text
            return (("empty", self.empty_text, width) if empty else ("blank", width)), ()
        row = self.rows[idx]
        is_cursor = idx == self.cursor
        memo = self._keys.get(y)
        if (
            memo is not None
            and memo[0] is row
            and memo[1] == idx
            and memo[2] == is_cursor
            and memo[3] == width
        ):
            return memo[4], memo[5]
        gone = self.is_gone(row)
        self._column_widths(width)  # (a subclass may pick its columns by width)
        cells = tuple(self.render_cells(row, gone))
        key = (cells, row.kind, is_cursor, gone, row.key in self.marks, self.row_style(row), width)
        self._keys[y] = (row, idx, is_cursor, width, key, cells)
        return key, cells

    def _line_key(self, y: int, top: int, width: int) -> Hashable:
        return self._line(y, top, width)[0]

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if y == 0:
            return self._header(width)
        top = round(self.scroll_y)
        if top != self._drawn_top:
            self._drawn.clear()
            self._drawn_top = top
        key, cells = self._line(y, top, width)
        self._drawn[y] = key
        strip = self._cache.get(key)
        if strip is not None and strip.cell_length == width:
            return strip
        base = self.rich_style
        idx = top + y - 1
        if idx >= len(self.rows):
            if key[0] == "empty":  # type: ignore[index]
                strip = Strip([Segment(fit(self.empty_text, width), base + self.style("note"))], width)
            else:
                strip = Strip.blank(width, base)
        else:
            strip = self._render_row(self.rows[idx], width, base, idx == self.cursor, cells)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = strip
        return strip

    def row_style(self, row: Any) -> Style | None:
        """A style over the whole row (subclasses: stopped, zombie...)."""
        return None

    def _render_row(
        self, row: Any, width: int, base: Style, is_cursor: bool, cells: Sequence[Cell] | None = None
    ) -> Strip:
        gone = self.is_gone(row)
        if cells is None:
            cells = self.render_cells(row, gone)
        overlay = self.row_style(row)
        if gone:
            overlay = self.style("gone")
        elif row.key in self.marks:
            overlay = (overlay + self.style("marked")) if overlay else self.style("marked")
        if is_cursor:
            overlay = (overlay + self.style("cursor")) if overlay else self.style("cursor")
        segments: list[Segment] = []
        if row.kind in ("section", "note"):
            cell = cells[0]
            st = base + self.style(cell.style) if cell.style else base
            segments.append(Segment(fit(plain(cell.text), width), st + overlay if overlay else st))
        else:
            widths = self._column_widths(width)
            sep_style = base + overlay if overlay else base
            drawn = 0
            for col, w, cell in zip(self.columns, widths, cells, strict=False):
                if self._shown is not None and not self._shows(col):
                    continue
                if drawn:
                    segments.append(Segment(" ", sep_style))
                drawn += 1
                if cell.parts:
                    segments.extend(self._parts(cell.parts, w, base, overlay))
                    continue
                st = base + self.style(cell.style) if cell.style else base
                if overlay:
                    st = st + overlay
                segments.append(Segment(fit(plain(cell.text), w, col.align, col.clip), st))
            used = sum(widths) + max(0, sum(1 for c in self.columns if self._shows(c)) - 1)
            if used < width:
                segments.append(Segment(" " * (width - used), sep_style))
        return Strip(segments, width)

    def _parts(
        self, parts: Sequence[tuple[str, str]], width: int, base: Style, overlay: Style | None
    ) -> list[Segment]:
        out: list[Segment] = []
        room = width
        for text, name in parts:
            if room <= 0:
                break
            text = plain(text)[:room]
            room -= len(text)
            st = base + self.style(name) if name else base
            out.append(Segment(text, st + overlay if overlay else st))
        if room > 0:
            out.append(Segment(" " * room, base + overlay if overlay else base))
        return out


class SimpleTable(KeyedTable):
    """Draws `rows.TableRow`s with the given columns."""

    def __init__(self, columns: Sequence[Column], **kw: Any) -> None:
        super().__init__(**kw)
        self.columns = tuple(columns)

    def render_cells(self, row: TableRow, gone: bool) -> Sequence[Cell]:
        if gone and row.kind == "item":
            first, *rest = row.cells
            return (first, *rest[:-1], Cell("(gone) " + rest[-1].text, "")) if rest else row.cells
        return row.cells
