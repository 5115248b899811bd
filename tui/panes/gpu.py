"""View 4: per device a memory bar and utilisation, then every process holding GPU memory (for guarded torch
processes, reserved vs allocated: what a flush would free). Without a GPU, the reason in place of the panel."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Static

from procguard.core import format as fmt
from procguard.tui.model import Model
from procguard.tui.rows import GPU_COLUMNS, TableRow, device_lines, gpu_rows
from procguard.tui.text import fill, join_lines, plain
from procguard.tui.widgets.table import SimpleTable


def bar(fraction: float, width: int) -> str:
    """A memory bar in markup: filled part in the accent colour (warning above 90%), the rest muted."""
    width = max(4, width)
    filled = max(0, min(width, round(fraction * width)))
    colour = "$text-error" if fraction >= 0.95 else "$text-warning" if fraction >= 0.9 else "$text-accent"
    return f"[{colour}]{'█' * filled}[/][$text-muted]{'░' * (width - filled)}[/]"


def devices_markup(model: Model, width: int) -> Content:
    """The device panel; the reason and device names (from the driver, or a node of a cluster) as plain text."""
    gpu = model.gpu
    if not gpu.available:
        return fill("[b $text-warning]No GPU panel:[/] $reason\n"
                    "[$text-muted]Everything else works the same; GPU columns stay empty.[/]",
                    reason=gpu.reason or "no GPU")
    lines = []
    for d in device_lines(model):
        util = "-" if d.utilization is None else f"{d.utilization}%"
        name = plain(d.name)[:24]
        text = f"{fmt.bytes_short(d.used):>6}/{fmt.bytes_short(d.total):<6} util {util:>4}"
        bar_w = max(4, width - len(f"GPU {d.device} ") - len(name) - len(text) - 6)
        lines.append(fill(f"[b]GPU {d.device}[/] $name {bar(d.fraction, bar_w)} {text}", name=name))
    return join_lines(lines)


class GpuPane(Vertical):
    DEFAULT_CSS = """
    GpuPane { height: 1fr; }
    GpuPane > #gpu-devices { height: auto; padding: 0 1; margin-bottom: 1; }
    """

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._model: Model | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="gpu-devices")
        yield SimpleTable(GPU_COLUMNS, id="gpu-table")

    @property
    def table(self) -> SimpleTable:
        return self.query_one(SimpleTable)

    def show(self, model: Model) -> None:
        self._model = model
        self.query_one("#gpu-devices", Static).update(devices_markup(model, self.size.width or 80))
        self.table.display = model.gpu.available
        self.table.set_rows(gpu_rows(model) if model.gpu.available else [])

    def on_resize(self) -> None:
        if self._model is not None:
            self.query_one("#gpu-devices", Static).update(devices_markup(self._model, self.size.width or 80))

    def selected(self) -> TableRow | None:
        return self.table.cursor_row
