"""Enter: everything about one process: full command, ids, cwd, rank / scheduler environment, open locks,
children, GPU memory, guard and duplicate facts. cwd and environment are read in a worker (they are /proc
reads the refresh loop doesn't do)."""

from __future__ import annotations

import contextlib
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Static

from procguard.core import views
from procguard.tui.actions import Backend
from procguard.tui.model import Model, ProcExtra, display_command, fmt_age, fmt_bytes_long, fmt_cpu


def details_markup(model: Model, pid: int, extra: ProcExtra | None) -> str:
    snap = model.snapshot
    p = snap.get(pid)
    if p is None:
        return f"[$text-error]pid {pid} has ended[/]"
    e = escape

    def row(label: str, value: str) -> str:
        return f"[$text-muted]{label:>10}[/]  {value}"

    lines = [f"[b]{e(p.command)}[/]", ""]
    lines.append(row("pid", f"{p.pid}   ppid {p.ppid}   pgid {p.pgid}   sid {p.sid}"))
    lines.append(row("user", f"{e(p.username)} (uid {p.uid})"))
    lines.append(row("state", f"{p.state}   threads {p.num_threads}   CPU {fmt_cpu(p.cpu_percent)}%   "
                              f"RSS {fmt_bytes_long(p.rss)}"))
    lines.append(row("started", f"{fmt_age(model.time - p.create_time)} ago"))
    if extra is None:
        lines.append(row("cwd", "[$text-muted]reading…[/]"))
    else:
        lines.append(row("cwd", e(extra.cwd) if extra.cwd else "[$text-muted]unknown (not ours to read)[/]"))
        if extra.env is None:
            lines.append(row("env", "[$text-muted]unreadable (another user's process)[/]"))
        elif extra.env:
            env = "  ".join(f"{e(k)}={e(v)}" for k, v in sorted(extra.env.items()))
            lines.append(row("rank/job", env))
        else:
            lines.append(row("rank/job", "[$text-muted]no rank or scheduler variables[/]"))
    if p.python is not None:
        py = p.python
        lines.append(row("python", f"{py.kind} {e(py.target)}"
                                   + (f"   options {e(' '.join(py.options))}" if py.options else "")))
    gpu = model.gpu_by_pid.get(pid)
    if model.gpu.available:
        devs = sorted({g.device for g in model.gpu.processes if g.pid == pid})
        where = f" on GPU {', '.join(map(str, devs))}" if devs else ""
        orphan = "   [$text-error]orphan: its parent died[/]" if pid in model.orphans else ""
        lines.append(row("GPU", f"{fmt_bytes_long(gpu or 0)}{where}{orphan}"))
    else:
        lines.append(row("GPU", f"[$text-muted]n/a: {e(model.gpu.reason or 'no GPU')}[/]"))
    guard = model.guarded.get(pid)
    if guard is not None:
        g = f"script {e(guard.script)}"
        if guard.lock:
            g += f"\n{'':>12}lock {e(guard.lock)}"
        if guard.reserved is not None:
            g += (f"\n{'':>12}torch reserved {fmt_bytes_long(guard.reserved)}, allocated "
                  f"{fmt_bytes_long(guard.allocated)}: a flush (f) frees about {fmt_bytes_long(guard.flushable)}")
        lines.append(row("guarded", g))
    locks = [lk for lk in model.locks if pid in lk.holders]
    lines.append(row("locks", ", ".join(f"{e(lk.path)} ({lk.kind} {lk.mode})" for lk in locks) or "none"))
    for g in model.duplicates:
        if any(pid == i.pid or pid in i.members for i in g.instances):
            lines.append(row("duplicate", f"one of {len(g.instances)} runs of {e(g.identity.display)}"))
    kids = views.children(snap, pid)
    lines.append(row("children", str(len(kids)) if kids else "none"))
    for k in kids[:50]:
        lines.append(f"{'':>12}{k.pid:>7} {k.state} {e(display_command(k))}")
    if len(kids) > 50:
        lines.append(f"{'':>12}… and {len(kids) - 50} more")
    return "\n".join(lines)


class DetailsScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "close", "Close", id="procguard.details.close"),
    ]

    DEFAULT_CSS = """
    DetailsScreen { align: center middle; }
    DetailsScreen > #details {
        width: 95%; max-width: 140; height: 90%;
        border: round $accent; background: $panel; padding: 0 1;
    }
    DetailsScreen VerticalScroll { height: 1fr; }
    DetailsScreen #details-keys { color: $text-muted; }
    """

    def __init__(self, model: Model, pid: int, backend: Backend) -> None:
        super().__init__()
        self.model = model
        self.pid = pid
        self.backend = backend
        self.extra: ProcExtra | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="details"):
            with VerticalScroll():
                yield Static(details_markup(self.model, self.pid, None), id="details-body")
            yield Static("[b]Esc[/]/[b]Enter[/] close", id="details-keys")

    def on_mount(self) -> None:
        if self.backend.static:
            self._show(self.backend.proc_extra(self.pid))  # the demo reads nothing: no worker needed
        else:
            self._read_extra()

    @work(thread=True, exit_on_error=False, group="details")
    def _read_extra(self) -> None:
        try:
            extra = self.backend.proc_extra(self.pid)
        except Exception:
            extra = ProcExtra(None, None)
        self.app.call_from_thread(self._show, extra)

    def _show(self, extra: ProcExtra) -> None:
        self.extra = extra
        if not self.is_attached:  # closed (or the app exited) while the worker read /proc
            return
        with contextlib.suppress(NoMatches):
            self.query_one("#details-body", Static).update(details_markup(self.model, self.pid, extra))

    def action_close(self) -> None:
        self.dismiss(None)
