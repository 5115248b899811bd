"""Snapshot tests (pytest-textual-snapshot) of procguard-tui on the deterministic demo scenario: every view,
the confirm dialog, the help screen and the details screen, at 80x24 and at 160x50.

Update the baselines after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update`
and look at the report it writes before committing them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from textual.pilot import Pilot

from procguard.tui.app import ProcguardApp
from procguard.tui.demo import DemoBackend
from procguard.tui.screens.confirm import ConfirmScreen

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


def test_gpu_view_without_a_gpu(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(demo_app(gpu=False), press=["4"], terminal_size=(80, 24))
