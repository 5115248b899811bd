"""The confirm dialog: the blast radius of an action before it happens.

Every process that would be signalled (pid, user, command; refused ones with the reason), the GPU memory and
the locks that would be freed, the grace, how a whole cgroup would be acted on (cgroup.kill / cgroup.freeze, or
the fallback and why), and in cluster mode the processes grouped under the node each lives on (each node acts on
its own). `y` or Enter confirms, `n` or Escape cancels. Commands, user names, lock paths, notes and refusal reasons are another user's text: they
go in as plain text (`tui.text.fill`).
"""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

from procguard.core import format as fmt
from procguard.core.snapshot import DEAD_STATES
from procguard.tui.actions import Plan
from procguard.tui.model import truncate
from procguard.tui.text import fill, join_lines, plain

MAX_LINES = 400  # a session of thousands: the dialog says how many more there are


def member_lines(plan: Plan, width: int = 200) -> list[Content]:
    lines: list[Content] = []
    blast = plan.blast
    members = blast.members
    gpu = blast.member_gpu or tuple(blast.gpu_by_pid.get(m.pid, 0) for m in members)
    pad = any(g for g, m in zip(gpu, members, strict=True) if not m.protected)
    order = list(range(len(members)))
    nodes = blast.nodes
    labels = {g.node: g.label for g in plan.nodes}
    if nodes:  # cluster mode: grouped by node, in the plan's node order (head first)
        rank = {n: i for i, n in enumerate(labels)}
        order.sort(key=lambda i: rank.get(nodes[i], len(rank)))
    current: str | None = None
    for i in order[:MAX_LINES]:
        m = members[i]
        if nodes and nodes[i] != current:
            current = nodes[i]
            n = sum(1 for x in nodes if x == current)
            lines.append(
                fill(
                    f"[b $text-accent]node $node[/] [$text-muted]{n} process{'es' if n != 1 else ''}[/]",
                    node=labels.get(current) or current[:8],
                )
            )
        # Escaped first, then cut: the escapes count in the width.
        cmd = truncate(plain(m.command), width)
        user = f"{truncate(plain(m.username), 10):<10}"
        mem = f"[$text-accent]{fmt.bytes_short(gpu[i]):>6}[/] " if gpu[i] else " " * 7 if pad else ""
        if m.protected:
            lines.append(
                fill(
                    f"[$text-muted]{m.pid:>7}  $user $cmd[/]\n         [$text-error]refused: $why[/]",
                    user=user,
                    cmd=cmd,
                    why=m.protected,
                )
            )
        elif m.state in DEAD_STATES:
            lines.append(
                fill(
                    f"[$text-muted]{m.pid:>7}  $user {mem}$cmd  (zombie: already ended, "
                    "nothing to signal)[/]",
                    user=user,
                    cmd=cmd,
                )
            )
        else:
            lines.append(fill(f"[b]{m.pid:>7}[/]  [$text-muted]$user[/] {mem}$cmd", user=user, cmd=cmd))
    if len(members) > MAX_LINES:
        lines.append(fill(f"[$text-muted]… and {len(members) - MAX_LINES} more[/]"))
    return lines


def frees_markup(plan: Plan) -> Content:
    b = plan.blast
    parts = []
    if b.gpu_bytes:
        parts.append(f"[b $text-accent]{fmt.bytes_long(b.gpu_bytes, 'unknown')}[/] GPU memory")
    else:
        parts.append("no GPU memory")
    locks = {f"lock{i}": p for i, p in enumerate(b.locks)}  # paths: another user's names, as values
    if locks:
        parts.append("locks " + ", ".join(f"[b]${name}[/]" for name in locks))
    else:
        parts.append("no locks")
    text = "[$text-muted]Frees:[/] " + " · ".join(parts)
    if plan.kind in ("terminate", "end_duplicates"):
        text += f"\n[$text-muted]Grace:[/] [b]{plan.grace:g} s[/] between SIGTERM and SIGKILL"
    if b.refused:
        text += f"\n[$text-error]{len(b.refused)} protected process(es) will be refused[/]"
    return fill(text, **locks)


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
        # Cluster mode: the node the action goes to (its label), or how many nodes (each named over its processes).
        if node is None and plan.nodes:
            labels = [g.label or g.node[:8] for g in plan.nodes]
            node = labels[0] if len(labels) == 1 else f"{len(labels)} nodes, each on its own processes"
        self.node = node

    def compose(self) -> ComposeResult:
        plan = self.plan
        with Vertical(id="dialog"):
            yield Static(Content(plan.title), id="title", classes="-node" if self.node is not None else "")
            if self.node is not None:
                yield Static(
                    fill("[$text-muted]on node[/] [b $text-accent]$node[/]", node=self.node), id="node"
                )
            with VerticalScroll(id="members"):
                lines = member_lines(plan)
                yield Static(join_lines(lines) if lines else fill("[$text-muted](nothing)[/]"))
            if plan.notes:
                yield Static(join_lines(plain(n) for n in plan.notes), id="notes")
            yield Static(frees_markup(plan), id="frees")
            yield Static("[b]y[/]/[b]Enter[/] confirm    [b]n[/]/[b]Esc[/] cancel", id="keys")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
