"""What the graphs show: per GPU device, memory and utilization over the last minutes (the GPU view), and per
watched process, CPU, RSS and GPU memory since the app started watching it (the details screen).

Bounded by construction: every series is a `deque(maxlen=SAMPLES)` (one sample per refresh: 5 minutes at the
default 1 s), and only WATCHED processes have a history at once, the ones the user looked at last (the row under
the cursor, the details screen): an LRU, so 5,000 processes cost nothing more than 64 would. Recording a model
reads the devices and the watched processes only, never every row.

Keys: a device by (node, index), a process by (node, pid, start ticks): a pid reused by a new process starts a
new history, and in cluster mode every node has its own ("" on a single host).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence

from procguard.tui.model import Model

__all__ = ["SAMPLES", "WATCHED", "DeviceHistory", "History", "ProcHistory", "sparkline"]

SAMPLES = 300
WATCHED = 64
BLOCKS = "▁▂▃▄▅▆▇█"

DeviceKey = tuple[str, int]
ProcKey = tuple[str, int, int]


def sparkline(values: Iterable[float], width: int, top: float | None = None) -> str:
    """`values` (oldest first) as `width` block characters, scaled from 0 to `top` (default: their maximum).
    More values than cells: each cell is the peak of its share; fewer: blanks on the left (the graph fills in
    from the right)."""
    if width <= 0:
        return ""
    vals = list(values)
    n = len(vals)
    if n > width:
        # More samples than cells: each cell shows the peak of its share of them (a spike never vanishes).
        vals = [max(vals[i * n // width : (i + 1) * n // width]) for i in range(width)]
    hi = top if top is not None else max(vals, default=0.0)
    n = len(BLOCKS) - 1
    out = []
    for v in vals:
        frac = 0.0 if hi <= 0 else min(1.0, max(0.0, v / hi))
        out.append(BLOCKS[round(frac * n)])
    return " " * (width - len(vals)) + "".join(out)


class DeviceHistory:
    """One GPU: used memory (bytes), its total, and utilization (percent; 0 when the driver can't tell)."""

    def __init__(self, samples: int = SAMPLES) -> None:
        self.times: deque[float] = deque(maxlen=samples)  # model time of each sample
        self.memory: deque[float] = deque(maxlen=samples)
        self.utilization: deque[float] = deque(maxlen=samples)
        self.total = 0

    def add(self, when: float, used: int, total: int, utilization: int | None) -> None:
        self.times.append(when)
        self.memory.append(float(used))
        self.utilization.append(float(utilization or 0))
        self.total = total

    @property
    def span(self) -> float:
        """Seconds from the oldest sample kept to the newest."""
        return self.times[-1] - self.times[0] if self.times else 0.0


class ProcHistory:
    """One process: CPU (percent), RSS and GPU memory (bytes), one sample per refresh since `since`."""

    def __init__(self, samples: int = SAMPLES) -> None:
        self.cpu: deque[float] = deque(maxlen=samples)
        self.rss: deque[float] = deque(maxlen=samples)
        self.gpu: deque[float] = deque(maxlen=samples)
        self.since = 0.0  # model time of the first sample
        self.last = 0.0  # model time of the latest one
        self.count = 0  # samples taken in all (the deques keep the last SAMPLES)

    def add(self, when: float, cpu: float, rss: int, gpu: int) -> None:
        if not self.count:
            self.since = when
        self.count += 1
        self.last = when
        self.cpu.append(cpu)
        self.rss.append(float(rss))
        self.gpu.append(float(gpu))


def _node(model: Model) -> str:
    return model.node.node_id if model.node is not None else ""


class History:
    """The app's history: record() once per model shown; watch() a process to start its history."""

    def __init__(self, samples: int = SAMPLES, watched: int = WATCHED) -> None:
        self.samples = samples
        self.watched = watched
        self.devices: dict[DeviceKey, DeviceHistory] = {}
        self.procs: OrderedDict[ProcKey, ProcHistory] = OrderedDict()
        self._last_seq: int | None = None

    def record(self, model: Model) -> None:
        """One sample of every device and every watched process (a model recorded twice counts once)."""
        if model.seq == self._last_seq:
            return
        self._last_seq = model.seq
        for part in model.each():
            node = _node(part)
            if part.gpu.available:
                for d in part.gpu.devices:
                    hist = self.devices.get((node, d.index))
                    if hist is None:
                        hist = self.devices[(node, d.index)] = DeviceHistory(self.samples)
                    hist.add(part.gpu.time, d.memory_used, d.memory_total, d.utilization)
            for (n, pid, start), ph in self.procs.items():
                if n != node:
                    continue
                p = part.snapshot.get(pid)
                if p is not None and p.start_ticks == start and not p.dead:
                    ph.add(part.time, p.cpu_percent, p.rss, part.gpu_by_pid.get(pid, 0))

    def watch(self, model: Model, pid: int) -> ProcHistory | None:
        """Start (or keep) the history of `pid` as `model` shows it: the most recently watched WATCHED
        processes keep theirs. A new history gets its first sample from `model`."""
        for part in model.each():
            p = part.snapshot.get(pid)
            if p is None:
                continue
            key = (_node(part), pid, p.start_ticks)
            ph = self.procs.get(key)
            if ph is not None:
                self.procs.move_to_end(key)
                return ph
            ph = self.procs[key] = ProcHistory(self.samples)
            if not p.dead:
                ph.add(part.time, p.cpu_percent, p.rss, part.gpu_by_pid.get(pid, 0))
            while len(self.procs) > self.watched:
                self.procs.popitem(last=False)
            return ph
        return None

    def of(self, model: Model, pid: int) -> ProcHistory | None:
        """The history of `pid` (as `model` shows it), if it is watched."""
        for part in model.each():
            p = part.snapshot.get(pid)
            if p is not None:
                return self.procs.get((_node(part), pid, p.start_ticks))
        return None

    def device(self, index: int, node: str = "") -> DeviceHistory | None:
        return self.devices.get((node, index))

    def seed_device(
        self,
        index: int,
        total: int,
        times: Sequence[float],
        memory: Sequence[float],
        utilization: Sequence[float],
        node: str = "",
    ) -> None:
        """Fill a device's history at once (the demo scenario's, for the screenshots)."""
        hist = self.devices[(node, index)] = DeviceHistory(self.samples)
        for when, used, util in zip(times, memory, utilization, strict=True):
            hist.add(when, int(used), total, int(util))

    def seed_proc(
        self,
        pid: int,
        start_ticks: int,
        times: Sequence[float],
        cpu: Sequence[float],
        rss: Sequence[float],
        gpu: Sequence[float],
        node: str = "",
    ) -> None:
        """Fill a process's history at once (the demo scenario's)."""
        ph = self.procs[(node, pid, start_ticks)] = ProcHistory(self.samples)
        for when, c, r, g in zip(times, cpu, rss, gpu, strict=True):
            ph.add(when, c, int(r), int(g))
