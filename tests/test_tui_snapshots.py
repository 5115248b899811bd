"""Snapshot tests (pytest-textual-snapshot) of procguard-tui on the deterministic demo scenario: every view,
the confirm dialog, the help screen and the details screen, at 80x24 and at 160x50; folded rows, the history
graphs (the demo's history) and a notification at 80x24.

Update the baselines after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update`
and look at the report it writes before committing them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from procguard.tui.app import ProcguardApp
from procguard.tui.backends.demo import DemoBackend, demo_history
from procguard.tui.screens.confirm import ConfirmScreen
from procguard.tui.screenshots import SHOTS, render_all

SIZES = {"80x24": (80, 24), "160x50": (160, 50)}


def demo_app(**kw: bool) -> ProcguardApp:
    return ProcguardApp(backend=DemoBackend(**kw))


def open_confirm(key: tuple[str, int], grouping_presses: int) -> Callable[[Pilot[None]], Awaitable[None]]:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, ProcguardApp)
        for _ in range(grouping_presses):
            await pilot.press("g")
        assert app.process_table.move_to_key(key)
        await pilot.press("t")
        for _ in range(500):  # the dry run is a worker: wait for its dialog
            if isinstance(app.screen, ConfirmScreen):
                break
            await pilot.pause(0.01)
        assert isinstance(app.screen, ConfirmScreen)

    return run_before


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("view", ["1", "2", "3", "4"])
def test_view(snap_compare: Callable[..., bool], view: str, size: str) -> None:
    assert snap_compare(demo_app(), press=[view], terminal_size=SIZES[size])


@pytest.mark.parametrize("size", SIZES)
def test_processes_by_session_sorted_by_cpu(snap_compare: Callable[..., bool], size: str) -> None:
    assert snap_compare(demo_app(), press=["g", "g", "s", "s"], terminal_size=SIZES[size])


@pytest.mark.parametrize("size", SIZES)
def test_confirm_dialog_for_a_process_group(snap_compare: Callable[..., bool], size: str) -> None:
    assert snap_compare(demo_app(), terminal_size=SIZES[size], run_before=open_confirm(("g", 2101), 1))


@pytest.mark.parametrize("size", SIZES)
def test_help_screen(snap_compare: Callable[..., bool], size: str) -> None:
    assert snap_compare(demo_app(), press=["question_mark"], terminal_size=SIZES[size])


def test_details_screen(snap_compare: Callable[..., bool]) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, ProcguardApp)
        assert app.process_table.move_to_key(("p", 2101))

    assert snap_compare(demo_app(), press=["enter"], terminal_size=(100, 30), run_before=run_before)


def fold(*keys: tuple[str, int], grouping_presses: int = 0) -> Callable[[Pilot[None]], Awaitable[None]]:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, ProcguardApp)
        for _ in range(grouping_presses):
            await pilot.press("g")
        for key in keys:
            assert app.process_table.move_to_key(key)
            await pilot.press("minus")

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_folded_tree(snap_compare: Callable[..., bool], size: str) -> None:
    """Both training runs folded: one row each, `▸ +N`, with the totals of the run and its workers."""
    assert snap_compare(demo_app(), terminal_size=SIZES[size], run_before=fold(("p", 2101), ("p", 2466)))


def test_folded_process_groups(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(
        demo_app(), terminal_size=(100, 30), run_before=fold(("g", 2101), ("g", 4100), grouping_presses=1)
    )


@pytest.mark.parametrize("size", SIZES)
def test_gpu_history(snap_compare: Callable[..., bool], size: str) -> None:
    app = ProcguardApp(backend=DemoBackend(), history=demo_history())
    assert snap_compare(app, press=["4"], terminal_size=SIZES[size])


def test_details_with_history(snap_compare: Callable[..., bool]) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, ProcguardApp)
        assert app.process_table.move_to_key(("p", 2101))

    app = ProcguardApp(backend=DemoBackend(), history=demo_history())
    assert snap_compare(app, press=["enter"], terminal_size=(100, 30), run_before=run_before)


def test_a_notification_at_80x24_is_one_line(snap_compare: Callable[..., bool]) -> None:
    """`d` in the Processes view says why it does nothing, on one line over the bottom right of the table."""
    assert snap_compare(demo_app(), press=["d"], terminal_size=(80, 24))


def test_gpu_view_without_a_gpu(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(demo_app(gpu=False), press=["4"], terminal_size=(80, 24))


def test_screenshots_are_up_to_date(tmp_path: Path) -> None:
    """screenshots/*.svg (shown in the README) are what `python -m procguard.tui.screenshots` renders now."""
    written = asyncio.run(render_all(tmp_path))
    assert [p.name for p in written] == [f"{s.name}.svg" for s in SHOTS]
    texts = {p.stem: p.read_text(encoding="utf-8") for p in written}
    assert "SIGTERM&#160;sent,&#160;3.0&#160;s&#160;left" in texts["terminating"]
    assert "(gone)" in texts["terminated"] and "killed&#160;after" in texts["terminated"]
    committed = Path(__file__).resolve().parent.parent / "screenshots"
    stale = [
        name
        for name, text in texts.items()
        if not (committed / f"{name}.svg").is_file()
        or (committed / f"{name}.svg").read_text(encoding="utf-8") != text
    ]
    assert not stale, f"screenshots/ out of date: {stale}; run .venv/bin/python -m procguard.tui.screenshots"
