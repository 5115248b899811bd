"""The summary line on top (in cluster mode first the node shown; then processes, Python processes, duplicate
groups, held locks, stopped, GPU memory) and the status line under it (grouping, sort, filter, marks). Theme colours only, through markup variables."""

from __future__ import annotations

from textual.markup import escape
from textual.widgets import Static

from procguard.tui.model import Model, fmt_bytes, summarize_model


def summary_markup(model: Model | None, width: int = 80, node: str | None = None,
                   node_compact: str | None = None) -> str:
    """`node`: in cluster mode, which node every row shows (short id, IP, "k of N"); it comes first
    (`node_compact` instead below 100 columns)."""
    if model is None:
        return "[$text-muted]reading the process table…[/]"
    s = summarize_model(model)

    def item(n: int, label: str, bad: str = "") -> str:
        colour = bad if (bad and n) else "$text"
        return f"[b {colour}]{n}[/] [$text-muted]{label}[/]"

    parts = [item(s.processes, "procs"), item(s.python, "python"),
             item(s.duplicate_groups, "dup groups" if width >= 100 else "dups", "$text-warning"),
             item(s.held_locks, "locks"), item(s.stopped, "stopped", "$text-warning")]
    if s.zombies and width >= 100:
        parts.append(item(s.zombies, "zombies", "$text-error"))
    if s.gpu_used is not None and s.gpu_total is not None:
        parts.append(f"[$text-muted]GPU[/] [b $text-accent]{fmt_bytes(s.gpu_used)}[/][$text-muted]/"
                     f"{fmt_bytes(s.gpu_total)}[/]")
    else:
        parts.append("[$text-muted]GPU n/a[/]")
    sep = " [$text-muted]·[/] " if width >= 100 else " "
    text = sep.join(parts)
    if node is not None:
        shown = node_compact if (node_compact and width < 100) else node
        text = f"[$text-muted]node[/] [b $text-accent]{escape(shown)}[/] [$text-muted]│[/] {text}"
    if model.errors:
        text += f"  [$text-error]⚠ {escape(model.errors[0])}[/]"
    return text


class Summary(Static):
    """One line; redrawn only when its text changes (an idle app should not repaint what didn't change)."""

    DEFAULT_CSS = """
    Summary { height: 1; padding: 0 1; background: $boost; }
    """

    def __init__(self, **kw: object) -> None:
        super().__init__("", **kw)  # type: ignore[arg-type]
        self._text = ""

    def show(self, model: Model | None, node: str | None = None, node_compact: str | None = None) -> None:
        text = summary_markup(model, self.size.width or 80, node, node_compact)
        if text != self._text:
            self._text = text
            self.update(text)


class StatusLine(Static):
    DEFAULT_CSS = """
    StatusLine { height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, **kw: object) -> None:
        super().__init__("", **kw)  # type: ignore[arg-type]
        self._text = ""

    def show(self, text: str) -> None:
        if text != self._text:
            self._text = text
            self.update(escape(text))
