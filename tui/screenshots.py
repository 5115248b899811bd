"""Render the README's screenshots (SVG) from the deterministic demo scenario (backends/demo.py): no clock, no
/proc, no signals, so the same code gives the same files every time.

    .venv/bin/python -m procguard.tui.screenshots            # writes screenshots/*.svg in the repository
    .venv/bin/python -m procguard.tui.screenshots --out DIR --size 120x36 --only processes confirm

tests/test_tui_snapshots.py checks that the committed files are what this script renders now: after an
intended change to how the app looks, run it again and commit the new files.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from textual.pilot import Pilot

from procguard.core.signals import Outcome, Progress, SignalResult, Target
from procguard.core.snapshot import DEAD_STATES, Snapshot
from procguard.tui.app import ProcguardApp
from procguard.tui.backends.demo import DemoBackend, demo_history
from procguard.tui.screens.confirm import ConfirmScreen

DEFAULT_SIZE = (100, 30)
Steps = Callable[[Pilot[None], ProcguardApp, "HeldDemo"], Awaitable[None]]


class HeldDemo(DemoBackend):
    """The demo, with a terminate that stops at a fixed point until released: SIGTERM sent to the accidental
    second training run (pgid 2466), its two DataLoader workers already exited, 3.0 s of the grace left for
    the main process, which ignores SIGTERM while it saves a checkpoint and gets the SIGKILL at the end."""

    EXITS_ON_SIGTERM = frozenset({2470, 2471})

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()
        self.release = threading.Event()

    def terminate(
        self,
        targets: Sequence[Target],
        grace: float,
        snapshot: Snapshot,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> list[SignalResult]:
        members = [
            m for m in self.resolve(targets, snapshot) if m.state not in DEAD_STATES and not m.protected
        ]
        live = tuple(m.pid for m in members)
        exited = tuple(p for p in live if p in self.EXITS_ON_SIGTERM)
        stubborn = tuple(p for p in live if p not in self.EXITS_ON_SIGTERM)
        if on_progress:
            on_progress(Progress("sigterm", live, grace))
            on_progress(Progress("exited", exited, grace - 0.4))
            on_progress(Progress("waiting", stubborn, 3.0))
        self.reached.set()
        self.release.wait(60)
        if on_progress:
            on_progress(Progress("sigkill", stubborn, 0.0))
            on_progress(Progress("done", live, 0.0))
        with self._lock:
            self._gone.update(live)
        return [
            SignalResult(
                m.pid,
                Outcome.EXITED if m.pid in exited else Outcome.KILLED,
                0.4 if m.pid in exited else grace,
                None,
                m.name,
                m.cmdline,
                m.username,
            )
            for m in members
        ]


async def until(pilot: Pilot[None], pred: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"screenshot: gave up waiting for {what}")
        await pilot.pause(0.01)


async def _view(pilot: Pilot[None], key: str) -> None:
    await pilot.press(key)


async def _confirm(pilot: Pilot[None], app: ProcguardApp) -> None:
    await pilot.press("g")  # by process group: the accidental second run is one row
    assert app.process_table.move_to_key(("g", 2466))
    await pilot.press("t")
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirm dialog")


async def shot_processes(pilot: Pilot[None], app: ProcguardApp, backend: HeldDemo) -> None:
    assert app.process_table.move_to_key(("p", 2101))


async def shot_duplicates(pilot: Pilot[None], app: ProcguardApp, backend: HeldDemo) -> None:
    await _view(pilot, "2")


async def shot_locks(pilot: Pilot[None], app: ProcguardApp, backend: HeldDemo) -> None:
    await _view(pilot, "3")


async def shot_gpu(pilot: Pilot[None], app: ProcguardApp, backend: HeldDemo) -> None:
    await _view(pilot, "4")


async def shot_confirm(pilot: Pilot[None], app: ProcguardApp, backend: HeldDemo) -> None:
    await _confirm(pilot, app)


async def shot_terminating(pilot: Pilot[None], app: ProcguardApp, backend: HeldDemo) -> None:
    await _confirm(pilot, app)
    await pilot.press("y")
    await until(pilot, backend.reached.is_set, "the terminate to start")
    await until(
        pilot,
        lambda: app.status.get(2466, "").endswith("3.0 s left") and app.status.get(2470) == "exited",
        "the progress on the rows",
    )


async def shot_terminated(pilot: Pilot[None], app: ProcguardApp, backend: HeldDemo) -> None:
    await shot_terminating(pilot, app, backend)
    backend.release.set()
    await until(pilot, lambda: any("ended" in text for text, _ in app.notices), "the result notification")
    await until(
        pilot,
        lambda: not app.status and 2466 not in app.model.snapshot,  # type: ignore[union-attr]
        "the refresh after the terminate",
    )


async def shot_details(pilot: Pilot[None], app: ProcguardApp, backend: HeldDemo) -> None:
    assert app.process_table.move_to_key(("p", 2101))
    await pilot.press("enter")


async def shot_help(pilot: Pilot[None], app: ProcguardApp, backend: HeldDemo) -> None:
    await pilot.press("question_mark")


async def shot_folded(pilot: Pilot[None], app: ProcguardApp, backend: HeldDemo) -> None:
    for pid in (2466, 2101):  # both training runs, each one row with its workers' totals
        assert app.process_table.move_to_key(("p", pid))
        await pilot.press("minus")


async def shot_cgroups(pilot: Pilot[None], app: ProcguardApp, backend: HeldDemo) -> None:
    for _ in range(3):  # parent -> process group -> session -> cgroup
        await pilot.press("g")
    await until(pilot, lambda: app.view_state.grouping == "cgroup", "the cgroup grouping")


async def shot_palette(pilot: Pilot[None], app: ProcguardApp, backend: HeldDemo) -> None:
    from textual.command import CommandInput, CommandList, CommandPalette

    assert app.process_table.move_to_key(("p", 2466))
    await pilot.press("ctrl+p")
    await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the command palette")
    app.screen.query_one(CommandInput).cursor_blink = False  # the same frame every time
    await pilot.press(*"term")
    await until(pilot, lambda: app.screen.query_one(CommandList).option_count > 0, "the palette's matches")


class Shot(NamedTuple):
    name: str  # the file is <name>.svg
    title: str  # the SVG's window title
    steps: Steps


SHOTS: tuple[Shot, ...] = (
    Shot("processes", "procguard-tui: 1 Processes (tree by parent)", shot_processes),
    Shot("duplicates", "procguard-tui: 2 Duplicates", shot_duplicates),
    Shot("locks", "procguard-tui: 3 Locks", shot_locks),
    Shot("gpu", "procguard-tui: 4 GPU, memory and utilization over the last minutes", shot_gpu),
    Shot("folded", "procguard-tui: - folds a subtree into one row with its totals", shot_folded),
    Shot("cgroups", "procguard-tui: g, whole jobs by cgroup (containers, units, SLURM steps)", shot_cgroups),
    Shot("confirm", "procguard-tui: t on a process group, the confirm dialog", shot_confirm),
    Shot("terminating", "procguard-tui: a terminate in progress", shot_terminating),
    Shot("terminated", "procguard-tui: the result", shot_terminated),
    Shot("details", "procguard-tui: Enter, details of a process", shot_details),
    Shot("help", "procguard-tui: ? help", shot_help),
    Shot("palette", "procguard-tui: Ctrl+P, every action", shot_palette),
)


async def render(shot: Shot, size: tuple[int, int] = DEFAULT_SIZE) -> str:
    """One screenshot as SVG text."""
    backend = HeldDemo()
    app = ProcguardApp(backend=backend, history=demo_history())
    try:
        async with app.run_test(size=size, notifications=True) as pilot:
            await shot.steps(pilot, app, backend)
            await pilot.pause()
            await pilot.wait_for_scheduled_animations()
            await pilot.pause()
            return app.export_screenshot(title=shot.title)
    finally:
        backend.release.set()  # never leave a worker thread waiting


async def render_all(
    out: Path, size: tuple[int, int] = DEFAULT_SIZE, only: Sequence[str] | None = None
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for shot in SHOTS:
        if only and shot.name not in only:
            continue
        path = out / f"{shot.name}.svg"
        path.write_text(await render(shot, size), encoding="utf-8")
        written.append(path)
    return written


def default_out() -> Path:
    """`screenshots/` of the source tree this module runs from (an editable install), else of the cwd."""
    root = Path(__file__).resolve().parent.parent
    return root / "screenshots" if (root / "pyproject.toml").is_file() else Path("screenshots")


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit() and int(w) >= 40 and int(h) >= 12):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 100x30 (at least 40x12)")
    return int(w), int(h)


def main(argv: Sequence[str] | None = None) -> int:
    names = [s.name for s in SHOTS]
    p = argparse.ArgumentParser(
        prog="python -m procguard.tui.screenshots",
        description="Render procguard-tui screenshots (SVG) from the demo scenario.",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for the SVG files (default: screenshots/)")
    p.add_argument(
        "--size",
        type=_size,
        default=DEFAULT_SIZE,
        metavar="WxH",
        help=f"terminal size (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})",
    )
    p.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"some of: {', '.join(names)}")
    args = p.parse_args(argv)
    for path in asyncio.run(render_all(args.out or default_out(), args.size, args.only)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
