"""View 4: per device a memory bar and utilisation, and under it the device's memory and utilization over the
last minutes (sparklines from history.py, one sample per refresh), then every process holding GPU memory (for
guarded torch processes, reserved vs allocated: what a flush would free). Without a GPU, the reason in place of
the panel."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.content import Content
from textual.widgets import Static

from procguard.core import format as fmt
from procguard.tui.history import History, sparkline
from procguard.tui.model import Model
from procguard.tui.panes.base import TablePane
from procguard.tui.rows import GPU_COLUMNS, device_lines, gpu_rows, gpu_table_shown
from procguard.tui.text import fill, join_lines, plain


def bar(fraction: float, width: int) -> str:
    """A memory bar in markup: filled part in the accent colour (warning above 90%), the rest muted."""
    width = max(4, width)
    filled = max(0, min(width, round(fraction * width)))
    colour = "$text-error" if fraction >= 0.95 else "$text-warning" if fraction >= 0.9 else "$text-accent"
    return f"[{colour}]{'█' * filled}[/][$text-muted]{'░' * (width - filled)}[/]"


def history_markup(history: History | None, model: Model, index: int, width: int) -> str:
    """One device's history line: memory (0 to the device's total) and utilization (0-100%) sparklines, how
    long they cover. Markup of our own (numbers and block characters only)."""
    node = model.node.node_id if model.node is not None else ""
    hist = None if history is None else history.device(index, node)
    if hist is None or not hist.memory:
        return "[$text-muted]history: from the next refresh on[/]"
    label = f"last {fmt.age(hist.span)}" if len(hist.times) > 1 else "1 sample"
    room = max(8, (width - len(label) - 20) // 2)
    mem = sparkline(hist.memory, room, top=float(hist.total) or None)
    util = sparkline(hist.utilization, room, top=100.0)
    return (
        f"[$text-muted]mem[/] [$text-accent]{mem}[/]  [$text-muted]util[/] [$text-success]{util}[/]  "
        f"[$text-muted]{label}[/]"
    )


def devices_markup(model: Model, width: int, history: History | None = None) -> Content:
    """The device panel; the reason and device names (from the driver, or a node of a cluster) as plain text."""
    if model.cluster:  # each node's devices under its label
        nodes: list[Content] = []
        for part in model.parts:
            nodes.append(fill("[b $text-accent]node $node[/]", node=part.node.label if part.node else "?"))
            nodes.append(devices_markup(part, width, history))
        return join_lines(nodes) if nodes else fill("[$text-muted]no node answered[/]")
    gpu = model.gpu
    if not gpu.available:
        # The kernel's holders (device files open) still show below, without memory figures.
        holders = (
            "Processes with a GPU device open (from /proc) are listed below."
            if model.holders
            else "Everything else works the same; GPU columns stay empty."
        )
        return fill(
            f"[b $text-warning]No GPU panel:[/] $reason\n[$text-muted]{holders}[/]",
            reason=gpu.reason or "no GPU",
        )
    lines = []
    for d in device_lines(model):
        util = "-" if d.utilization is None else f"{d.utilization}%"
        name = plain(d.name)[:24]
        text = f"{fmt.bytes_short(d.used):>6}/{fmt.bytes_short(d.total):<6} util {util:>4}"
        bar_w = max(4, width - len(f"GPU {d.device} ") - len(name) - len(text) - 6)
        lines.append(fill(f"[b]GPU {d.device}[/] $name {bar(d.fraction, bar_w)} {text}", name=name))
        lines.append(fill("      " + history_markup(history, model, d.device, width - 6)))
    return join_lines(lines)


class GpuPane(TablePane):
    DEFAULT_CSS = """
    GpuPane { height: 1fr; }
    GpuPane > #gpu-devices { height: auto; padding: 0 1; margin-bottom: 1; }
    """

    COLUMNS = GPU_COLUMNS
    TABLE_ID = "gpu-table"

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)
        self.history: History | None = None  # the app's (set on mount)
        self._devices: tuple[str, tuple[object, ...]] | None = None  # the panel's text and spans shown
        self._device_lines = -1

    @property
    def devices(self) -> Static:
        return self.query_one("#gpu-devices", Static)

    def compose(self) -> ComposeResult:
        yield Static("", id="gpu-devices")
        yield from super().compose()

    def fill(self, model: Model) -> None:
        self._show_devices()
        shown = gpu_table_shown(model)
        self.table.display = shown
        self.table.set_rows(gpu_rows(model) if shown else [])

    def on_resize(self) -> None:
        if self._model is not None:
            self._show_devices()

    def _show_devices(self) -> None:
        assert self._model is not None
        content = devices_markup(self._model, self.size.width or 80, self.history)
        key = (content.plain, tuple(content.spans))  # Content compares its text only: the colours count too
        if key != self._devices:
            self._devices = key
            # A layout only when the panel's height changes (it is `height: auto`), not for a new figure.
            self.devices.update(content, layout=len(content.plain.splitlines()) != self._device_lines)
            self._device_lines = len(content.plain.splitlines())
