"""The confirm dialog: the blast radius of an action before it happens.

Every process that would be signalled (pid, user, command; refused ones with the reason), the GPU memory and
the locks that would be freed, the grace, and in cluster mode the node they all live on. `y` or Enter confirms, `n` or Escape cancels.
"""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Static

from procguard.tui.actions import Plan
from procguard.tui.model import DEAD_STATES, fmt_bytes, fmt_bytes_long, truncate

MAX_LINES = 400  # a session of thousands: the dialog says how many more there are


def member_lines(plan: Plan, width: int = 200) -> list[str]:
    lines: list[str] = []
    members = plan.blast.members
    gpu = plan.blast.gpu_by_pid
    for m in members[:MAX_LINES]:
        cmd = escape(truncate(m.command, width))
        user = escape(truncate(m.username, 10))
        mem = f"[$text-accent]{fmt_bytes(gpu[m.pid]):>6}[/] " if gpu.get(m.pid) else " " * 7 if gpu else ""
        if m.protected:
            lines.append(f"[$text-muted]{m.pid:>7}  {user:<10} {cmd}[/]\n"
                         f"         [$text-error]refused: {escape(m.protected)}[/]")
        elif m.state in DEAD_STATES:
            lines.append(f"[$text-muted]{m.pid:>7}  {user:<10} {mem}{cmd}  (zombie: already ended, "
                         "nothing to signal)[/]")
        else:
            lines.append(f"[b]{m.pid:>7}[/]  [$text-muted]{user:<10}[/] {mem}{cmd}")
    if len(members) > MAX_LINES:
        lines.append(f"[$text-muted]… and {len(members) - MAX_LINES} more[/]")
    return lines


def frees_markup(plan: Plan) -> str:
    b = plan.blast
    parts = []
    if b.gpu_bytes:
        parts.append(f"[b $text-accent]{fmt_bytes_long(b.gpu_bytes)}[/] GPU memory")
    else:
        parts.append("no GPU memory")
    if b.locks:
        parts.append("locks " + ", ".join(f"[b]{escape(p)}[/]" for p in b.locks))
    else:
        parts.append("no locks")
    text = "[$text-muted]Frees:[/] " + " · ".join(parts)
    if plan.kind in ("terminate", "end_duplicates"):
        text += f"\n[$text-muted]Grace:[/] [b]{plan.grace:g} s[/] between SIGTERM and SIGKILL"
    if b.refused:
        text += f"\n[$text-error]{len(b.refused)} protected process(es) will be refused[/]"
    return text


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "confirm", "Yes", id="procguard.confirm.yes"),
        Binding("enter", "confirm", "Yes", show=False, id="procguard.confirm.enter"),
        Binding("n", "cancel", "No", id="procguard.confirm.no"),
        Binding("escape", "cancel", "No", show=False, id="procguard.confirm.escape"),
    ]

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > #dialog {
        width: 1fr; max-width: 130; height: auto; max-height: 90%; margin: 0 2;
        border: round $warning; background: $panel; padding: 0 1;
    }
    ConfirmScreen.-kill > #dialog { border: round $error; }
    ConfirmScreen #title { text-style: bold; color: $text-warning; margin-bottom: 1; }
    ConfirmScreen #title.-node { margin-bottom: 0; }
    ConfirmScreen #node { margin-bottom: 1; }
    ConfirmScreen.-kill #title { color: $text-error; }
    ConfirmScreen #members { height: auto; max-height: 20; background: $surface; }
    ConfirmScreen #members > Static { text-wrap: nowrap; text-overflow: ellipsis; }
    ConfirmScreen #notes { color: $text-muted; height: auto; }
    ConfirmScreen #frees { margin-top: 1; height: auto; }
    ConfirmScreen #keys { margin-top: 1; color: $text-muted; }
    """

    def __init__(self, plan: Plan, node: str | None = None) -> None:
        super().__init__(classes="-kill" if plan.kind == "kill" else "")
        self.plan = plan
        self.node = node  # cluster mode: the node the action goes to (its label)

    def compose(self) -> ComposeResult:
        plan = self.plan
        with Vertical(id="dialog"):
            yield Static(escape(plan.title), id="title", classes="-node" if self.node is not None else "")
            if self.node is not None:
                yield Static(f"[$text-muted]on node[/] [b $text-accent]{escape(self.node)}[/]", id="node")
            with VerticalScroll(id="members"):
                yield Static("\n".join(member_lines(plan)) or "[$text-muted](nothing)[/]")
            if plan.notes:
                yield Static("\n".join(escape(n) for n in plan.notes), id="notes")
            yield Static(frees_markup(plan), id="frees")
            yield Static("[b]y[/]/[b]Enter[/] confirm    [b]n[/]/[b]Esc[/] cancel", id="keys")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
