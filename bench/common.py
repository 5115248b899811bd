"""What every benchmark shares: its settings, timing helpers, and the Section it reports."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

NOT_AVAILABLE = "not available yet"


@dataclass(frozen=True)
class Config:
    """Sizes and repetitions: the full suite, or a --quick smoke run."""

    quick: bool
    sizes: tuple[int, int, int]  # scaling sizes; sizes[1] is "the 2,000-process table", sizes[2] the big one
    snapshot_reps: int
    scaling_reps: int
    terminate_reps: int
    group_size: int
    grace: float
    python_procs: int
    dupes_reps: int
    tui_window: float  # seconds of idle CPU measured
    tui_scaling_window: float
    tui_warmup: float
    tui_interval: float
    tui_small_window: float  # idle CPU window at sizes[0] (0: not measured)
    key_samples: tuple[int, int]  # keypress samples per key kind and app: (idle, refresh landing)
    launch_reps: int  # launches per app for the first-frame figure

    @property
    def main_size(self) -> int:
        return self.sizes[1]

    @property
    def big_size(self) -> int:
        return self.sizes[2]


FULL = Config(
    quick=False,
    sizes=(500, 2000, 5000),
    snapshot_reps=15,
    scaling_reps=7,
    terminate_reps=9,
    group_size=20,
    grace=1.0,
    python_procs=300,
    dupes_reps=11,
    tui_window=60.0,
    tui_scaling_window=15.0,
    tui_warmup=5.0,
    tui_interval=1.0,
    tui_small_window=30.0,
    key_samples=(30, 30),
    launch_reps=10,
)
QUICK = Config(
    quick=True,
    sizes=(200, 400, 600),
    snapshot_reps=3,
    scaling_reps=2,
    terminate_reps=1,
    group_size=20,
    grace=0.3,
    python_procs=40,
    dupes_reps=2,
    tui_window=2.0,
    tui_scaling_window=0.0,
    tui_warmup=1.5,
    tui_interval=1.0,
    tui_small_window=0.0,
    key_samples=(2, 1),
    launch_reps=1,
)


@dataclass
class Goal:
    """One figure checked against its goal: shown in the summary table."""

    figure: str
    value: str
    goal: str
    met: bool | None  # None: not measured


@dataclass
class Section:
    key: str
    title: str
    status: str = "ok"  # "ok" | NOT_AVAILABLE | "failed" | "skipped"
    reason: str = ""
    intro: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: str = ""  # preformatted text (e.g. a plot)
    data: dict[str, Any] = field(default_factory=dict)  # raw figures other sections may reuse


@dataclass(frozen=True)
class Stats:
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def n(self) -> int:
        return len(self.samples)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, Stats]:
    """Time each function `reps` times, round-robin, so a busy moment of the machine hits all of them alike."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            samples[k].append(timed(fn))
    return {k: Stats(tuple(v)) for k, v in samples.items()}


def ms(seconds: float) -> str:
    v = seconds * 1000
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b > 0 else "–"


def mark(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "–"}[met]
