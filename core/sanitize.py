"""The one sanitizer for text that came from other processes (argv, comm, exe, cwd, paths, environment values,
lock and registry metadata, messages from guarded processes) before it reaches a terminal.

Another user controls those strings. Raw, they can retitle or blank the terminal (ESC sequences), hide text
(CR, bidi overrides) or break a row over several lines. ``safe()`` shows every such character in a visible,
escaped form and leaves all other text as it is; what it returns is plain text, never markup: a TUI must
still render it as plain text (``rich.text.Text``, ``markup=False``), never through a markup parser.

``--json`` output keeps the exact values (JSON escapes control characters itself).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["safe", "safe_join", "UNSAFE"]

# C0 controls, DEL, C1 controls, bidi marks/embeddings/overrides/isolates, the Unicode line and paragraph
# separators (some terminals break the row there), and lone surrogates (undecodable bytes from
# surrogateescape, which a terminal encoder would choke on).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    named = _NAMED.get(c)
    if named is not None:
        return named
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if o <= 0xFF:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}"


def safe(text: object) -> str:
    """`text` (any object, via str) with every control, bidi-override and undecodable character escaped,
    e.g. ESC as ``\\x1b`` and a newline as ``\\n``. Text without them comes back unchanged (and fast)."""
    s = text if isinstance(text, str) else str(text)
    if UNSAFE.search(s) is None:
        return s
    return UNSAFE.sub(_escape, s)


def safe_join(parts: Iterable[object], sep: str = " ") -> str:
    """Several strings (an argv) made safe and joined on one line."""
    return sep.join(safe(p) for p in parts)
