"""`?`: every key (as currently bound: keymaps included), the flags legend, folding, the config file and how to
remap keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Static

from procguard.tui.model import AUTO_FOLD, FLAG_LEGEND


def help_markup(keys: Sequence[tuple[str, str, str]]) -> str:
    """keys: (key display, description, binding id)."""
    lines = ["[b $text-accent]Keys[/]"]
    for key, desc, _ in keys:
        lines.append(f"  [b]{escape(key):<7}[/] {escape(desc)}")
    lines += [
        "  [b]↑ ↓ PgUp PgDn Home End[/] move the cursor    [b]ctrl+p[/] command palette (every action)",
        "",
        "[b $text-accent]Flags (FLG column)[/]",
    ]
    lines += [f"  [b]{flag}[/]  {escape(text)}" for flag, text in FLAG_LEGEND]
    lines += [
        "  state [b $text-warning]T[/] stopped (paused), [b $text-error]Z[/] zombie; a "
        "[$text-disabled]struck-through[/] row has ended (it goes when the cursor moves on)",
        "",
        "[b $text-accent]Targets[/]",
        "  the marked rows if any, else the selected row; a group or session row acts on all its",
        "  members; t, k and d show the confirm dialog (every pid, GPU memory, locks, grace) first:",
        "  [b]y[/] or [b]Enter[/] confirms, [b]n[/] or [b]Esc[/] cancels",
        "",
        "[b $text-accent]Folding[/]",
        "  [b]▸ +N[/] before a command: N processes folded under it; its CPU, RSS and GPU columns are the",
        f"  whole subtree's. A group or session header folds its members. A process with {AUTO_FOLD} or more",
        "  children, or a header with as many members, starts folded. Folds stay through refreshes,",
        "  filters, sorts and groupings; t/k/p/r on a folded process act on that process only.",
        "",
        "[b $text-accent]Settings[/]",
        "  config.toml in the user config folder (~/.config/procguard/), or --config PATH; procguard-tui",
        "  --write-config writes the defaults with comments: interval, grace, view, sort, grouping,",
        f"  columns, confirm, {escape('[duplicates]')} launchers and never_duplicate, {escape('[keymap]')}",
        "",
        "[b $text-accent]Remapping keys[/]",
        "  PROCGUARD_TUI_KEYMAP='procguard.terminate=T,procguard.kill=K'  (binding id = key; it wins over",
        f"  the config file's {escape('[keymap]')}); an unknown id or key name is an error at start",
    ]
    lines += [f"  [$text-muted]{escape(bid):<28}[/] {escape(key)}" for key, _, bid in keys if bid]
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "Close", id="procguard.help.close"),
    ]

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > #help {
        width: 1fr; max-width: 110; height: 1fr; margin: 1 2;
        border: round $accent; background: $panel; padding: 0 1;
    }
    HelpScreen #help-title { text-style: bold; margin-bottom: 1; }
    HelpScreen VerticalScroll { height: 1fr; }
    HelpScreen #help-keys { color: $text-muted; }
    """

    def __init__(self, keys: Sequence[tuple[str, str, str]], title: str = "procguard-tui") -> None:
        super().__init__()
        self.keys = list(keys)
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Static(escape(self.title_text), id="help-title")
            with VerticalScroll():
                yield Static(help_markup(self.keys))
            yield Static("[b]Esc[/]/[b]q[/]/[b]?[/] close", id="help-keys")

    def action_close(self) -> None:
        self.dismiss(None)
