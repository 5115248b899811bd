"""The TUI's one rule for text that came from a process or a file about one (argv, comm, cwd, exe, paths, user
names, lock and registry metadata, node names, messages from guarded processes, error texts that quote them).

Such text is made safe by `procguard.core.sanitize.safe` (control, bidi-override and undecodable characters shown
escaped, e.g. ESC as ``\\x1b``) and reaches the screen as plain text, never through a markup parser. Textual
does not do this itself: `Content` and rich `Text` drop only BEL, BS, VT, FF and CR, and a `Strip`'s segments go
to the terminal as they are, so a raw ESC in a command line would drive root's terminal.

Where it is applied (one place per kind of widget):

- tables (`widgets.table.KeyedTable`): every cell passes through `plain()` where it becomes a segment, so row
  builders (model.py, rows.py) stay raw and pure;
- dialogs, screens and one-line widgets built from markup (confirm, details, summary, GPU panel, status line):
  `fill()`: our own markup template with ``$name`` placeholders, process text given as the values (Textual
  substitutes template variables after parsing the markup, so a value's ``[`` is never a tag);
- notifications: `ProcguardApp.tell()` passes the whole text through `plain()` (and `markup=False`).

`safe()` is a single regex search on clean text, so the cost on a refresh is negligible.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.content import Content

from procguard.core.sanitize import safe

__all__ = ["fill", "join_lines", "plain"]


def plain(value: object) -> str:
    """Process text made safe for a terminal, as a plain string (a table cell, a notification)."""
    return safe(value)


def fill(template: str, /, **values: object) -> Content:
    """`template` (procguard's own markup, never process text) with each ``$name`` replaced by `values[name]`
    made safe and inserted as plain text."""
    return Content.from_markup(template, **{k: safe(v) for k, v in values.items()})


def join_lines(lines: Iterable[Content | str]) -> Content:
    """Lines of Content (or our own plain strings) as one multi-line Content."""
    return Content("\n").join(lines)
