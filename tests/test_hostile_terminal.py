"""Issue 12, attack 4: terminal escapes from process data, played by an unprivileged user (nobody, via setpriv).

The hostile process's argv holds an OSC title sequence, a clear-screen CSI, an 8-bit CSI (U+009B), a bidi
override and a newline; its cwd and its script name hold ESC. Root's `procguard` text commands and root's
procguard-tui must show all of it escaped (``\\x1b``), never raw; `--json` keeps the exact values.

Self-contained (the lead merges it into tests/test_hostile.py). Only processes started here are signalled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from textual.pilot import Pilot

from procguard.core.sanitize import safe, safe_join
from procguard.core.signals import Member
from procguard.tui.app import Options, ProcguardApp
from procguard.tui.screens.confirm import ConfirmScreen
from procguard.tui.screens.details import DetailsScreen
from tests.conftest import NOBODY, NOBODY_UID, ProcStarter, is_gone, needs_root, proc_state, wait_for

pytestmark = needs_root

TITLE = "\x1b]0;pwned\x07"  # OSC: retitles the terminal
CLEAR = "\x1b[2J"  # CSI: blanks the screen
CSI8 = "\x9b31m"  # the 8-bit CSI some terminals honour
BIDI = "\u202eevil"  # right-to-left override: reorders what follows
NEWLINE = "two\nlines"
HOSTILE_ARGS = (TITLE, CLEAR, CSI8, BIDI, NEWLINE)
DIR_NAME = "d\x1b[31m"
SCRIPT_NAME = "s\x1b]2;x\x07.py"

# Anything a terminal could act on: C0 controls but newline, DEL, C1 controls, bidi embeddings/overrides/isolates.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

# Holds a shared flock on its own script (so the Locks view names that path), then waits.
SCRIPT = """\
import fcntl, time
f = open(__file__, "rb")
fcntl.flock(f, fcntl.LOCK_SH)
print("ready", flush=True)
while True:
    time.sleep(0.5)
"""


class Hostile(NamedTuple):
    token: str  # a unique folder name in every hostile command line (what the app filters on)
    folder: Path
    script: Path
    argv: list[str]
    pids: list[int]


def hostile_python() -> str:
    """An interpreter `nobody` can run (the test's own may live under root's home)."""
    for cand in ("/usr/bin/python3", sys.executable):
        if os.access(cand, os.X_OK):
            return cand
    return sys.executable


@pytest.fixture
def hostile(procs: ProcStarter, shared_tmp: Path) -> Iterator[Hostile]:
    """Two runs of the same hostile script (a duplicate group), as nobody, in a folder whose name holds ESC."""
    folder = shared_tmp / DIR_NAME
    folder.mkdir(mode=0o755)
    script = folder / SCRIPT_NAME
    script.write_text(SCRIPT)
    script.chmod(0o644)
    argv = [hostile_python(), str(script), *HOSTILE_ARGS]
    pids = []
    for _ in range(2):
        p = procs.popen([*NOBODY, *argv], cwd=folder, stdout=subprocess.PIPE, start_new_session=True)
        procs.wait_ready(p)
        assert os.stat(f"/proc/{p.pid}").st_uid == NOBODY_UID
        pids.append(p.pid)
    yield Hostile(shared_tmp.name, folder, script, argv, pids)


def assert_clean(data: bytes, what: str) -> str:
    """`data` is UTF-8 (a raw non-UTF-8 byte is a failure too) without a character a terminal acts on."""
    assert 0x1B not in data, f"{what}: raw ESC in {data!r}"
    text = data.decode("utf-8")
    bad = RAW.search(text)
    assert bad is None, f"{what}: raw {bad.group()!r} in {text!r}"
    return text


def pg(*args: str) -> tuple[str, str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "procguard.core.cli", *args],
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    what = f"procguard {' '.join(args)}"
    return assert_clean(out.stdout, what), assert_clean(out.stderr, what + " (stderr)"), out.returncode


ESCAPED_ARGS = safe_join(HOSTILE_ARGS)  # \x1b]0;pwned\x07 \x1b[2J \x9b31m \u202eevil two\nlines


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_text_escapes_and_json_keeps_exact_values(hostile: Hostile) -> None:
    pid = hostile.pids[0]
    for args in (["ps"], ["ps", "--tree"], ["ps", "--user", "nobody"]):
        out, _, rc = pg(*args)
        assert rc == 0
        rows = [ln for ln in out.splitlines() if ln.split()[:1] == [str(pid)]]
        assert len(rows) == 1, (args, rows)  # one row: the newline in argv did not break it
        assert rows[0].endswith(f"{safe(hostile.script)} {ESCAPED_ARGS}"), rows[0]
        assert "\\x1b]0;pwned\\x07" in rows[0] and "\\u202eevil" in rows[0] and "\\x9b31m" in rows[0]

    out, _, rc = pg("ps", "--json")
    row = next(r for r in json.loads(out) if r["pid"] == pid)
    assert row["cmdline"] == hostile.argv and row["username"] == "nobody"  # --json: exact

    out, _, rc = pg("term", "--dry-run", "--tree", str(pid))
    assert rc == 0 and f"{safe(hostile.script)} {ESCAPED_ARGS}" in out, out
    out, _, rc = pg("term", "--dry-run", "--json", str(pid))
    assert json.loads(out)["targets"][0]["cmdline"] == hostile.argv
    assert not is_gone(pid)  # a dry run signals nothing


def test_cli_action_results_and_errors_are_escaped(hostile: Hostile) -> None:
    pid = hostile.pids[1]
    out, err, rc = pg("pause", str(pid))
    assert rc == 0 and ESCAPED_ARGS in out and "1 paused" in err, (out, err)
    wait_for(lambda: proc_state(pid) in ("T", "t"))
    out, err, rc = pg("resume", str(pid))
    assert rc == 0 and ESCAPED_ARGS in out, (out, err)
    out, err, rc = pg("term", "--grace", "5", str(pid))
    assert rc == 0 and ESCAPED_ARGS in out, (out, err)
    assert is_gone(pid)
    # A bad argument that holds escapes: the one-line error shows them escaped too.
    _, err, rc = pg("ps", "--user", CLEAR + TITLE)
    assert rc == 2 and err.startswith("procguard: error: unknown user") and "\\x1b[2J" in err, err


# ---------------------------------------------------------------------------------------------- app


async def wait_until(pilot: Pilot[None], pred: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def screen_text(app: ProcguardApp) -> str:
    """What the screen shows now (a dialog over the main screen, notifications), line by line as the terminal
    gets it: the text of every segment Textual would write. No raw control, bidi-override or C1 character may
    be in it, nor in the SVG screenshot (the public view of the same frame)."""
    svg = app.export_screenshot()
    bad = RAW.search(svg.replace("\n", ""))
    assert bad is None, f"raw {bad.group()!r} in the screenshot"
    # What export_screenshot renders, without the SVG: a full update of the current screen stack.
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    lines = [
        "".join(seg.text for strip in line for seg in strip if not seg.control) for line in update.strips
    ]  # type: ignore[union-attr]
    for y, line in enumerate(lines):
        bad = RAW.search(line)
        assert bad is None, f"raw {bad.group()!r} on screen line {y}: {line!r}"
    return "\n".join(lines)


def scoped_app(token: str, scope: Callable[[Member], bool]) -> ProcguardApp:
    return ProcguardApp(Options(interval=0.3, filter=token, grace=5.0), act_scope=scope)


@pytest.mark.asyncio
async def test_app_views_details_and_confirm_show_escapes(hostile: Hostile) -> None:
    pid = hostile.pids[0]
    app = scoped_app(hostile.token, lambda m: hostile.token in m.command)
    async with app.run_test(size=(220, 50)) as pilot:
        table = app.process_table
        await wait_until(pilot, lambda: table.index_of(("p", pid)) is not None)
        assert table.move_to_key(("p", pid))
        await pilot.pause()
        shown = screen_text(app)
        assert f"{safe(hostile.script)} \\x1b]0;pwned\\x07 \\x1b[2J \\x9b31m \\u202eevil two\\nlines" in shown
        assert "filter “" + hostile.token in shown  # the filter echo

        await pilot.press("enter")
        await wait_until(
            pilot, lambda: isinstance(app.screen, DetailsScreen) and app.screen.extra is not None
        )
        await pilot.pause()
        shown = screen_text(app)
        assert f"cwd  {safe(hostile.folder)}" in shown  # read from /proc/PID/cwd: ESC in it, escaped
        # The full command (the table shows python3's basename: this line is the details screen's).
        assert f"{hostile.argv[0]} {safe(hostile.script)} \\x1b]0;pwned\\x07 \\x1b[2J" in shown, shown
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, DetailsScreen))

        assert table.cursor_key == ("p", pid)
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.pause()
        shown = screen_text(app)  # the blast radius: pid, user, full command; the lock it frees
        assert (
            f"{pid:>7}  nobody     {hostile.argv[0]} {safe(hostile.script)} \\x1b]0;pwned\\x07 \\x1b[2J"
            in shown
        ), shown
        assert f"locks {safe(hostile.script)}" in shown, shown
        await pilot.press("n")
        await wait_until(pilot, lambda: any("cancelled" in t for t, _ in app.notices))
        assert not is_gone(pid)

        await pilot.press("2")  # Duplicates: the two runs, their cwd and args
        await wait_until(
            pilot, lambda: app.query_one("#duplicates-table").index_of(("inst", pid)) is not None
        )
        await pilot.pause()
        shown = screen_text(app)
        assert "\\x1b]0;pwned\\x07" in shown and "d\\x1b[31m" in shown

        await pilot.press("3")  # Locks: the flocked script, path with ESC
        locks = app.query_one("#locks-table")
        await wait_until(pilot, lambda: any(r.key[-1] == str(hostile.script) for r in locks.rows))
        await pilot.pause()
        assert "\\x1b]2;x\\x07.py" in screen_text(app)
    assert all(not is_gone(p) for p in hostile.pids)


@pytest.mark.asyncio
async def test_app_notification_quoting_a_command_is_escaped(hostile: Hostile) -> None:
    """A refused action's notification quotes the command: escaped, never raw (scope refuses everything, so
    nothing is signalled)."""
    pid = hostile.pids[0]
    app = scoped_app(hostile.token, lambda m: False)
    async with app.run_test(size=(220, 50)) as pilot:
        table = app.process_table
        await wait_until(pilot, lambda: table.index_of(("p", pid)) is not None)
        assert table.move_to_key(("p", pid))
        await pilot.press("t")
        await wait_until(pilot, lambda: any("outside this session's scope" in t for t, _ in app.notices))
        await pilot.pause()
        text = next(t for t, _ in app.notices if "outside" in t)
        assert "d\\x1b[31m" in text and "\x1b" not in text, text
        screen_text(app)  # the toast is on screen: nothing raw in it
    assert not is_gone(pid)


def test_hostile_python_is_runnable_by_nobody() -> None:
    """The fixture's interpreter choice works (else the tests above fail for the wrong reason)."""
    out = subprocess.run(
        [*NOBODY, hostile_python(), "-c", "import os; print(os.getuid())"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == str(NOBODY_UID), out.stderr
    assert shutil.which("setpriv")
