"""Enter: everything about one process: full command, ids, cwd, rank / scheduler environment, open locks,
children, GPU memory, guard and `procguard run` facts, and what it is to duplicate detection (its identity key,
kind and parts, and whether it counts as a run, or why not). cwd, environment and the identity are read in a
worker (/proc reads the refresh loop doesn't do). Its CPU, RSS and GPU-memory history since the app started
watching it (history.py) is drawn as sparklines and grows while the screen is open."""

from __future__ import annotations

import contextlib
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Static

from procguard.core import format as fmt
from procguard.core import views
from procguard.core.duplicates import Explanation
from procguard.tui.backends import Backend
from procguard.tui.history import ProcHistory, sparkline
from procguard.tui.model import Model, ProcExtra, display_command
from procguard.tui.text import fill, join_lines, plain


def _row(label: str, value: Content | str) -> Content:
    """One `label  value` line; `value` is Content made by `fill` (or our own plain text)."""
    return Content.assemble((f"{label:>10}", "$text-muted"), "  ", value)


def _muted(text: str) -> Content:
    return fill("[$text-muted]$t[/]", t=text)


def _extra_rows(extra: ProcExtra | None) -> list[Content]:
    if extra is None:
        return [_row("cwd", _muted("reading…"))]
    rows = [_row("cwd", fill("$cwd", cwd=extra.cwd) if extra.cwd else _muted("unknown (not ours to read)"))]
    if extra.env is None:
        rows.append(_row("env", _muted("unreadable (another user's process)")))
    elif extra.env:
        rows.append(_row("rank/job", plain("  ".join(f"{k}={v}" for k, v in sorted(extra.env.items())))))
    else:
        rows.append(_row("rank/job", _muted("no rank or scheduler variables")))
    return rows


def _guard_row(model: Model, pid: int) -> list[Content]:
    guard = model.guarded.get(pid)
    if guard is None:
        return []
    g = fill("script $script", script=guard.script)
    if guard.lock:
        g = join_lines([g, fill(f"{'':>12}lock $lock", lock=guard.lock)])
    if guard.reserved is not None:
        g = join_lines(
            [
                g,
                f"{'':>12}torch reserved {fmt.bytes_long(guard.reserved, 'unknown')}, allocated "
                f"{fmt.bytes_long(guard.allocated, 'unknown')}: a flush (f) frees about "
                f"{fmt.bytes_long(guard.flushable, 'unknown')}",
            ]
        )
    return [_row("guarded", g)]


def _run_rows(model: Model, pid: int) -> list[Content]:
    """A `procguard run` job: its launcher and the lock the run holds (`--lock`); the launcher: its job."""
    launcher = model.run_jobs.get(pid)
    if launcher is not None:
        text = fill(f"a `procguard run` job: launcher pid {launcher}")
    else:
        job = next((j for j, lp in model.run_jobs.items() if lp == pid), None)
        if job is None:
            return []
        launcher = pid
        text = fill(f"the `procguard run` launcher of pid {job} (the job)")
    held = [lk.path for lk in model.locks if not lk.stale and launcher in lk.holders]
    if held:
        lock = fill("$paths", paths=", ".join(held))
    else:
        lp = model.snapshot.get(launcher)
        args = lp.cmdline if lp is not None else ()
        name = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--lock"), None)
        lock = _muted(f"--lock {name}: not seen held (yet)" if name else "none (no --lock)")
    return [_row("run", text), _row("run lock", lock)]


def _part(value: str | tuple[str, ...]) -> str:
    return " ".join(value) if isinstance(value, tuple) else value


def _identity_rows(extra: ProcExtra | None) -> list[Content]:
    """The identity key duplicate detection gives the process (kind and parts) and whether it counts as a run,
    or why not (core's duplicates.explain)."""
    if extra is None:
        return [_row("identity", _muted("reading…"))]
    ex: Explanation | None = extra.explanation
    if ex is None:
        return [_row("identity", _muted(f"unknown: {extra.explain_error or 'not read'}"))]
    rows: list[Content] = []
    if ex.identity is None:
        rows.append(_row("identity", _muted("none (not a job)")))
    else:
        ident = ex.identity
        rows.append(
            _row("identity", fill("$label: [b]$display[/]", label=ident.label, display=ident.display))
        )
        for name, value in ident.parts:
            rows.append(fill(f"{'':>12}[$text-muted]$name[/] $value", name=name, value=_part(value)))
    verdict = "[$text-success]yes[/]" if ex.counted else "[$text-warning]no[/]"
    rows.append(_row("counted", fill(f"{verdict}: $reason", reason=ex.reason)))
    rows += [fill(f"{'':>12}[$text-muted]$note[/]", note=n) for n in ex.notes]
    return rows


def _gpu_row(model: Model, pid: int) -> Content:
    if not model.gpu.available:
        return _row("GPU", fill("[$text-muted]n/a: $reason[/]", reason=model.gpu.reason or "no GPU"))
    gpu = model.gpu_by_pid.get(pid)
    devs = sorted({g.device for g in model.gpu.processes if g.pid == pid})
    where = f" on GPU {', '.join(map(str, devs))}" if devs else ""
    orphan = "   [$text-error]orphan: its parent died[/]" if pid in model.orphans else ""
    return _row("GPU", fill(f"{fmt.bytes_long(gpu or 0)}{where}{orphan}"))


SPARK = 40  # history graph width (cells), at most


def history_rows(history: ProcHistory | None, spark: int = SPARK) -> list[Content]:
    """CPU, RSS and GPU memory since the app started watching the process: a sparkline each (0 to the
    series' maximum), the latest value and the maximum."""
    if history is None or not history.count:
        return [_row("history", _muted("none yet: it starts when the process is selected"))]
    out: list[Content] = []
    for name, series, show in (
        ("CPU", history.cpu, lambda v: f"{fmt.cpu(v)}%"),
        ("RSS", history.rss, lambda v: fmt.bytes_short(int(v))),
        ("GPU", history.gpu, lambda v: fmt.bytes_short(int(v))),
    ):
        line = fill(
            f"[$text-muted]{name:<3}[/] [$text-accent]{sparkline(series, spark)}[/]  now "
            f"[b]{show(series[-1])}[/]  [$text-muted]max[/] {show(max(series))}"
        )
        out.append(_row("history" if not out else "", line))
    span = fmt.age(history.last - history.since)
    out.append(
        _row("", _muted(f"watched for {span} ({history.count} samples, the last {len(history.cpu)} drawn)"))
    )
    return out


def details_markup(
    model: Model, pid: int, extra: ProcExtra | None, history: ProcHistory | None = None, spark: int = SPARK
) -> Content:
    """Every value from the process (command, user, cwd, environment, paths, names) goes in through
    `tui.text` as plain text: this screen shows the most of another user's text."""
    snap = model.snapshot
    p = snap.get(pid)
    if p is None:
        return fill(f"[$text-error]pid {pid} has ended[/]")
    lines: list[Content | str] = [fill("[b]$cmd[/]", cmd=p.command), ""]
    lines.append(_row("pid", f"{p.pid}   ppid {p.ppid}   pgid {p.pgid}   sid {p.sid}"))
    lines.append(_row("user", fill(f"$user (uid {p.uid})", user=p.username)))
    lines.append(
        _row(
            "state",
            fill(
                f"$state   threads {p.num_threads}   CPU {fmt.cpu(p.cpu_percent)}%   "
                f"RSS {fmt.bytes_long(p.rss)}",
                state=p.state,
            ),
        )
    )
    lines.append(_row("started", f"{fmt.age(model.time - p.create_time)} ago"))
    lines += history_rows(history, spark)
    lines += _extra_rows(extra)
    if p.python is not None:
        py = p.python
        lines.append(
            _row(
                "python",
                fill(
                    "$kind $target" + ("   options $options" if py.options else ""),
                    kind=py.kind,
                    target=py.target,
                    options=" ".join(py.options),
                ),
            )
        )
    lines.append(_gpu_row(model, pid))
    lines += _guard_row(model, pid)
    lines += _run_rows(model, pid)
    locks = [lk for lk in model.locks if pid in lk.holders]
    lines.append(
        _row("locks", plain(", ".join(f"{lk.path} ({lk.kind} {lk.mode})" for lk in locks)) or "none")
    )
    for g in model.duplicates:
        if any(pid == i.pid or pid in i.members for i in g.instances):
            lines.append(
                _row(
                    "duplicate", fill(f"one of {len(g.instances)} runs of $script", script=g.identity.display)
                )
            )
    lines += _identity_rows(extra)
    kids = views.children(snap, pid)
    lines.append(_row("children", str(len(kids)) if kids else "none"))
    for k in kids[:50]:
        lines.append(fill(f"{'':>12}{k.pid:>7} $state $cmd", state=k.state, cmd=display_command(k)))
    if len(kids) > 50:
        lines.append(f"{'':>12}… and {len(kids) - 50} more")
    return join_lines(lines)


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

    def __init__(self, model: Model, pid: int, backend: Backend, history: ProcHistory | None = None) -> None:
        super().__init__()
        self.model = model
        self.pid = pid
        self.backend = backend
        self.extra: ProcExtra | None = None
        self.history = history  # the app's, for this process: it grows with every refresh

    def compose(self) -> ComposeResult:
        with Vertical(id="details"):
            with VerticalScroll():
                yield Static(
                    details_markup(self.model, self.pid, None, self.history, self._spark()), id="details-body"
                )
            yield Static("[b]Esc[/]/[b]Enter[/] close", id="details-keys")

    def on_mount(self) -> None:
        if self.backend.static:
            # The demo reads nothing: no worker needed.
            self._show(self.backend.proc_extra(self.pid, self.model.snapshot))
        else:
            self._read_extra()

    @work(thread=True, exit_on_error=False, group="details")
    def _read_extra(self) -> None:
        try:
            extra = self.backend.proc_extra(self.pid, self.model.snapshot)
        except Exception as e:
            extra = ProcExtra(None, None, None, str(e) or type(e).__name__)
        self.app.call_from_thread(self._show, extra)

    def _show(self, extra: ProcExtra) -> None:
        self.extra = extra
        self.show_history()

    def show_history(self) -> None:
        """Redraw (the app calls this after each refresh: the history has a new sample)."""
        if not self.is_attached:  # closed (or the app exited) while the worker read /proc
            return
        with contextlib.suppress(NoMatches):
            self.query_one("#details-body", Static).update(
                details_markup(self.model, self.pid, self.extra, self.history, self._spark())
            )

    def _spark(self) -> int:
        """The graphs' width: what the dialog leaves beside the labels and figures (it is 95% of the screen)."""
        return max(10, min(SPARK, self.app.size.width - 50))

    def action_close(self) -> None:
        self.dismiss(None)
