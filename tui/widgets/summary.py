"""The summary line on top (in cluster mode first the node shown, or how many; then processes, Python processes,
duplicate groups, held locks, stopped, frozen, GPU memory, GPU holders and orphans; a node that did not answer or
a part that failed, with ⚠) and the status line under it (grouping, sort, filter, marks). Theme colours only,
through markup variables. The node label, an error text and the filter can carry another user's text: they go
in as plain text (`tui.text`)."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from procguard.core import format as fmt
from procguard.tui.model import Model, summarize_model
from procguard.tui.text import fill, plain


def summary_markup(
    model: Model | None, width: int = 80, node: str | None = None, node_compact: str | None = None
) -> Content:
    """`node`: in cluster mode, which node the rows show (short id, IP, "k of N"; or "all N nodes"); it comes
    first (`node_compact` instead below 100 columns). The figures count what `model` holds: a single host, every
    node of a cluster model, or the one node it was narrowed to."""
    if model is None:
        return fill("[$text-muted]reading the process table…[/]")
    s = summarize_model(model)

    def item(n: int, label: str, bad: str = "") -> str:
        colour = bad if (bad and n) else "$text"
        return f"[b {colour}]{n}[/] [$text-muted]{label}[/]"

    parts = [
        item(s.processes, "procs"),
        item(s.python, "python"),
        item(s.duplicate_groups, "dup groups" if width >= 100 else "dups", "$text-warning"),
        item(s.held_locks, "locks"),
        item(s.stopped, "stopped", "$text-warning"),
    ]
    if s.frozen:
        parts.append(item(s.frozen, "frozen", "$text-warning"))
    if s.zombies and width >= 100:
        parts.append(item(s.zombies, "zombies", "$text-error"))
    if s.gpu_used is not None and s.gpu_total is not None:
        parts.append(
            f"[$text-muted]GPU[/] [b $text-accent]{fmt.bytes_short(s.gpu_used)}[/][$text-muted]/"
            f"{fmt.bytes_short(s.gpu_total)}[/]"
        )
    else:
        parts.append("[$text-muted]GPU n/a[/]")
    if s.gpu_holders and width >= 100:  # NVML's and the kernel's (device open)
        parts.append(item(s.gpu_holders, "holders" if s.gpu_holders != 1 else "holder"))
    if s.gpu_orphans:
        parts.append(item(s.gpu_orphans, "orphans" if s.gpu_orphans != 1 else "orphan", "$text-error"))
    sep = " [$text-muted]·[/] " if width >= 100 else " "
    text = sep.join(parts)  # numbers and our labels only
    values: dict[str, object] = {}
    if node is not None:
        values["node"] = node_compact if (node_compact and width < 100) else node
        text = f"[$text-muted]node[/] [b $text-accent]$node[/] [$text-muted]│[/] {text}"
    if model.errors:
        values["error"] = model.errors[0]
        more = f" (+{len(model.errors) - 1} more)" if len(model.errors) > 1 else ""
        text += f"  [$text-error]⚠ $error{more}[/]"
    return fill(text, **values)


class Summary(Static):
    """One line; redrawn only when its text changes (an idle app should not repaint what didn't change)."""

    DEFAULT_CSS = """
    Summary { height: 1; padding: 0 1; background: $boost; }
    """

    def __init__(self, **kw: object) -> None:
        super().__init__("", **kw)  # type: ignore[arg-type]
        self._shown: tuple[str, tuple[object, ...]] | None = None

    def show(self, model: Model | None, node: str | None = None, node_compact: str | None = None) -> None:
        content = summary_markup(model, self.size.width or 80, node, node_compact)
        key = (content.plain, tuple(content.spans))  # Content compares its text only: the colours count too
        if key != self._shown:
            self._shown = key
            # One line of fixed height: no layout of the whole screen for a new figure (update's default).
            self.update(content, layout=False)


class StatusLine(Static):
    DEFAULT_CSS = """
    StatusLine { height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, **kw: object) -> None:
        super().__init__("", **kw)  # type: ignore[arg-type]
        self._text = ""

    def show(self, text: str) -> None:
        """`text` is plain (it echoes the filter, which may be pasted from a command line)."""
        if text != self._text:
            self._text = text
            self.update(Content(plain(text)), layout=False)  # one line of fixed height: no screen layout
