"""Pilot tests of procguard-tui against real processes this test started.

Safety: every app here is started with `--filter <this test's tmp_path>` (so only the test's own scripts are
shown) *and* an act_scope that refuses any action whose dry run names a process whose command line doesn't
contain the test's tmp_path. Rows are selected by the test's own pids, and the selection is asserted before t/k.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from procguard.core.signals import Member, Target
from procguard.tui.actions import Plan
from procguard.tui.app import Options, ProcguardApp
from procguard.tui.backends.demo import DemoBackend
from procguard.tui.panes.duplicates import DuplicatesPane
from procguard.tui.screens.confirm import ConfirmScreen, member_lines
from procguard.tui.screens.details import DetailsScreen, details_markup
from tests.conftest import NOBODY, ProcStarter, is_gone, needs_root, proc_state

pytestmark = pytest.mark.asyncio

SLEEPER = """
import time
print("ready", flush=True)
while True:
    time.sleep(0.5)
"""

# Ignores SIGTERM; forks two children that inherit that (same process group: the script's own session).
STUBBORN_GROUP = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        while True:
            time.sleep(0.5)
    kids.append(pid)
with open(sys.argv[1], "w") as f:
    f.write(" ".join(map(str, kids)))
print("ready", flush=True)
while True:
    time.sleep(0.5)
"""


def make_app(tmp_path: Path, **opts: object) -> ProcguardApp:
    scope = str(tmp_path)

    def in_scope(m: Member) -> bool:
        return scope in m.command

    kw: dict[str, object] = {"interval": 0.2, "filter": scope, "grace": 5.0}
    kw.update(opts)
    return ProcguardApp(Options(**kw), act_scope=in_scope)  # type: ignore[arg-type]


async def wait_until(pilot: Pilot[None], pred: Callable[[], object], timeout: float = 15.0) -> None:
    """Let the app run until pred() holds (a condition, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


async def select(pilot: Pilot[None], app: ProcguardApp, key: tuple[str, int]) -> None:
    table = app.process_table
    await wait_until(pilot, lambda: table.index_of(key) is not None)
    assert table.move_to_key(key)
    await pilot.pause()
    assert table.cursor_key == key


def shown_pids(app: ProcguardApp) -> set[int]:
    return {r.id for r in app.process_table.rows if r.kind == "proc"}


async def refreshed(pilot: Pilot[None], app: ProcguardApp, times: int = 2) -> None:
    """Wait until the app has shown `times` more models than now: everything that was going to happen because
    of what came before (a key, an action) has had its refreshes. What absence checks wait on, never a time."""
    applied = app.record.models_applied
    await wait_until(pilot, lambda: app.record.models_applied >= applied + times)


def notices(app: ProcguardApp) -> str:
    return "\n".join(text for text, _ in app.record.notices)


async def test_terminate_sigterm_ignoring_group(procs: ProcStarter, tmp_path: Path) -> None:
    kids_file = tmp_path / "kids.txt"
    leader = procs.python(STUBBORN_GROUP, str(kids_file), name="stubborn")
    kids = [int(x) for x in kids_file.read_text().split()]
    for k in kids:
        procs.track(k)
    members = {leader.pid, *kids}
    app = make_app(tmp_path, grace=0.5)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: members <= shown_pids(app))
        await pilot.press("g")  # group by process group
        await select(pilot, app, ("g", leader.pid))
        row = app.selected_row()
        assert row is not None and row.kind == "group" and set(row.members) == members
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        plan = app.screen.plan  # type: ignore[attr-defined]
        assert {m.pid for m in plan.blast.acting} == members
        await pilot.press("y")
        await wait_until(pilot, lambda: all(is_gone(p) for p in members))
        await wait_until(pilot, lambda: "3 ended" in notices(app))
        assert "3 killed" in notices(app), notices(app)
        seen = {label.split(",")[0] for pid, label in app.record.progress_log if pid in members}
        assert {"SIGTERM sent", "SIGKILL sent"} <= seen, seen
        # The next model shows them gone (the leader stays a zombie until this test reaps it).
        await wait_until(
            pilot,
            lambda: all(
                r.proc is not None and r.proc.state == "Z"
                for r in app.process_table.rows
                if r.kind == "proc" and r.id in members
            ),
        )


async def test_pause_then_resume(procs: ProcStarter, tmp_path: Path) -> None:
    p = procs.python(SLEEPER, name="pausable")
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 24)) as pilot:
        await select(pilot, app, ("p", p.pid))
        await pilot.press("p")
        await wait_until(pilot, lambda: proc_state(p.pid) == "T")
        # ... and the table shows it stopped after a refresh.
        await wait_until(
            pilot,
            lambda: (r := app.selected_row()) is not None and r.proc is not None and r.proc.state == "T",
        )
        await wait_until(pilot, lambda: "1 paused" in notices(app))
        await pilot.press("r")
        await wait_until(pilot, lambda: proc_state(p.pid) in ("S", "R"))
        await wait_until(pilot, lambda: "1 resumed" in notices(app))
    assert not is_gone(p.pid)


async def test_filter_live_keep_and_clear(procs: ProcStarter, tmp_path: Path) -> None:
    a = procs.python(SLEEPER, name="alpha")
    b = procs.python(SLEEPER, name="beta")
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 24)) as pilot:
        await wait_until(pilot, lambda: {a.pid, b.pid} <= shown_pids(app))
        await pilot.press("slash")
        box = app.query_one("#filter")
        assert box.has_focus
        await pilot.press(*"/alpha")  # narrows the tmp_path filter to the alpha script: live
        await wait_until(pilot, lambda: shown_pids(app) == {a.pid})
        await pilot.press("enter")  # keeps it
        assert not box.display and app.view_state.filter == f"{tmp_path}/alpha"
        await refreshed(pilot, app)  # a few refreshes later it still holds
        assert shown_pids(app) == {a.pid}
        await pilot.press("slash", "escape")  # clears it: everything again (we only look now)
        await wait_until(pilot, lambda: {a.pid, b.pid} <= shown_pids(app))
        assert app.view_state.filter == ""


async def test_mark_two_rows_and_terminate_both(procs: ProcStarter, tmp_path: Path) -> None:
    a, b, c = (procs.python(SLEEPER, name=n) for n in ("one", "two", "three"))
    app = make_app(tmp_path, grace=2.0)
    async with app.run_test(size=(100, 24)) as pilot:
        await select(pilot, app, ("p", a.pid))
        await pilot.press("space")
        await select(pilot, app, ("p", b.pid))
        await pilot.press("space")
        assert app.marks == {("p", a.pid), ("p", b.pid)}
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert {m.pid for m in app.screen.plan.blast.acting} == {a.pid, b.pid}  # type: ignore[attr-defined]
        await pilot.press("y")
        await wait_until(pilot, lambda: is_gone(a.pid) and is_gone(b.pid))
        await wait_until(pilot, lambda: "2 ended: 2 exited on SIGTERM" in notices(app))
        assert not is_gone(c.pid)
        await wait_until(pilot, lambda: not app.marks)  # marks of ended processes go


async def test_escape_cancels_dialog_and_nothing_is_signalled(procs: ProcStarter, tmp_path: Path) -> None:
    p = procs.python(SLEEPER, name="spared")
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 24)) as pilot:
        await select(pilot, app, ("p", p.pid))
        for key, cancel in (("t", "escape"), ("k", "n")):
            await pilot.press(key)
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("t", "space", "2")  # app keys do nothing under the dialog
            await refreshed(pilot, app)  # a (wrongly) started dry run has had its refreshes to open a dialog
            assert len(app.screen_stack) == 2 and app.view == "processes" and not app.marks
            await pilot.press(cancel)
            await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        await wait_until(pilot, lambda: notices(app).count("cancelled") == 2)
        assert app.record.actions_started == 0
        assert proc_state(p.pid) in ("S", "R")
        assert app.process_table.cursor_key == ("p", p.pid)


async def test_cursor_stays_on_its_process_and_shows_it_gone(procs: ProcStarter, tmp_path: Path) -> None:
    ps = [procs.python(SLEEPER, name=f"p{i}") for i in range(3)]
    mid = ps[1].pid
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 24)) as pilot:
        await wait_until(pilot, lambda: {p.pid for p in ps} <= shown_pids(app))
        await select(pilot, app, ("p", mid))
        applied = app.record.models_applied
        extra = procs.python(SLEEPER, name="p3")  # a new row appears
        await wait_until(
            pilot, lambda: extra.pid in shown_pids(app) and app.record.models_applied >= applied + 2
        )
        assert app.process_table.cursor_key == ("p", mid)
        for key in ("s", "S", "s", "g", "g", "g"):  # sorts and groupings reorder; the cursor follows
            await pilot.press(key)
            assert app.process_table.cursor_key == ("p", mid), key
        # A filter that still matches it keeps it under the cursor; so does widening the filter again.
        script = Path(ps[1].args[1]).name  # type: ignore[index]
        await pilot.press("slash", *f"/{script}")
        await wait_until(pilot, lambda: shown_pids(app) == {mid})
        assert app.process_table.cursor_key == ("p", mid)
        await pilot.press(*["backspace"] * (len(script) + 1), "enter")  # back to the test's own folder
        await wait_until(pilot, lambda: {p.pid for p in ps} <= shown_pids(app))
        assert app.process_table.cursor_key == ("p", mid) and app.view_state.filter == str(tmp_path)
        # The process under the cursor ends: it stays under the cursor, shown as gone.
        os.kill(mid, signal.SIGKILL)
        ps[1].wait(timeout=10)
        await wait_until(pilot, lambda: mid not in app.model.snapshot)  # type: ignore[union-attr]
        table = app.process_table
        row = table.cursor_row
        assert table.cursor_key == ("p", mid) and row is not None and table.is_gone(row)
        assert "(gone)" in table.render_cells(row, True)[-1].text
        await refreshed(pilot, app)  # still there after more refreshes
        assert table.cursor_key == ("p", mid)
        await pilot.press("t")  # acting on a gone row does nothing but say so
        await wait_until(pilot, lambda: "already ended" in notices(app))
        assert app.record.actions_started == 0
        await pilot.press("down")  # moving on lets it go
        assert table.index_of(("p", mid)) is None


async def test_no_confirm_terminates_at_once(procs: ProcStarter, tmp_path: Path) -> None:
    p = procs.python(SLEEPER, name="quick")
    app = make_app(tmp_path, no_confirm=True)
    async with app.run_test(size=(100, 24)) as pilot:
        await select(pilot, app, ("p", p.pid))
        await pilot.press("t")
        await wait_until(pilot, lambda: is_gone(p.pid))
        assert not isinstance(app.screen, ConfirmScreen)
        await wait_until(pilot, lambda: "1 ended: 1 exited on SIGTERM" in notices(app))


async def test_out_of_scope_action_is_refused(procs: ProcStarter, tmp_path: Path) -> None:
    """The safety net itself: a scope that excludes the selected process refuses the dry run."""
    p = procs.python(SLEEPER, name="outside")
    app = ProcguardApp(Options(interval=0.2, filter=str(tmp_path)), act_scope=lambda m: False)
    async with app.run_test(size=(100, 24)) as pilot:
        await select(pilot, app, ("p", p.pid))
        await pilot.press("k")
        await wait_until(pilot, lambda: "outside this session's scope" in notices(app))
        assert not isinstance(app.screen, ConfirmScreen)
        assert app.record.actions_started == 0 and proc_state(p.pid) in ("S", "R")


async def test_views_help_details_and_palette_commands(procs: ProcStarter, tmp_path: Path) -> None:
    p = procs.python(SLEEPER, name="viewed")
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await select(pilot, app, ("p", p.pid))
        await pilot.press("enter")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "DetailsScreen")
        body = app.screen.query_one("#details-body")
        await wait_until(pilot, lambda: str(tmp_path) in str(body.render()))  # cwd read by the worker
        await pilot.press("escape")
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        await pilot.press("escape")
        for key, view in (("2", "duplicates"), ("3", "locks"), ("4", "gpu"), ("1", "processes")):
            await pilot.press(key)
            assert app.view == view
            assert app.query_one("#views").current == view  # type: ignore[attr-defined]
        titles = {title for title, _help, _command in app.palette_commands()}
        assert {"Terminate selection", "Kill selection", "Filter", "View: GPU", "Sort by CPU%"} <= titles


async def test_d_in_duplicates_ends_all_but_the_oldest_run(procs: ProcStarter, tmp_path: Path) -> None:
    script = tmp_path / "twice.py"
    script.write_text(SLEEPER)
    runs = []
    for _ in range(3):
        p = procs.popen([sys.executable, str(script)], start_new_session=True, stdout=subprocess.PIPE)
        procs.wait_ready(p)
        runs.append(p)
    oldest, *younger = runs
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("2")
        view = app.query_one(DuplicatesPane)
        await wait_until(pilot, lambda: all(view.table.index_of(("inst", p.pid)) is not None for p in runs))
        assert view.table.move_to_key(("inst", younger[0].pid))
        group = view.selected_group()
        assert group is not None and {i.pid for i in group.instances} == {p.pid for p in runs}
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        plan = app.screen.plan  # type: ignore[attr-defined]
        assert {m.pid for m in plan.blast.acting} == {p.pid for p in younger}
        assert any(f"keeps pid {oldest.pid}" in n for n in plan.notes), plan.notes
        await pilot.press("enter")  # Enter confirms too
        await wait_until(pilot, lambda: all(is_gone(p.pid) for p in younger))
        await wait_until(pilot, lambda: "2 ended: 2 exited on SIGTERM" in notices(app))
        assert not is_gone(oldest.pid)


# Waits for a flag file (its first argument), then execs into `sleep`: same pid, same start time, another job.
EXEC_ON_FLAG = """
import os, shutil, sys, time
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
os.execv(shutil.which("sleep"), ["sleep", "600"])
"""


def cmdline_of(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


async def open_end_duplicates(
    pilot: Pilot[None], app: ProcguardApp, runs: list[subprocess.Popen[bytes]]
) -> Plan:
    """`2`, the cursor on the second run, `d`: the confirm dialog's plan."""
    await pilot.press("2")
    pane = app.query_one(DuplicatesPane)
    await wait_until(pilot, lambda: all(pane.table.index_of(("inst", p.pid)) is not None for p in runs))
    assert pane.table.move_to_key(("inst", runs[1].pid))
    await pilot.press("d")
    await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
    return app.screen.plan  # type: ignore[attr-defined, no-any-return]


async def test_d_skips_a_victim_whose_identity_changed_since_the_dialog(
    procs: ProcStarter, tmp_path: Path
) -> None:
    """Three runs of one script; while `d`'s dialog is open, one of the two victims execs into `sleep` (same pid
    and start time, another job). Confirming ends the unchanged victim only: the changed process is never
    signalled (a SIGTERM would end the sleep) and the result says it was skipped, and why."""
    script = tmp_path / "twice.py"
    script.write_text(EXEC_ON_FLAG)
    flags = [tmp_path / f"exec-{i}" for i in range(3)]
    runs = []
    for flag in flags:
        p = procs.popen(
            [sys.executable, str(script), str(flag)], start_new_session=True, stdout=subprocess.PIPE
        )
        procs.wait_ready(p)
        runs.append(p)
    oldest, ends, changes = runs
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        plan = await open_end_duplicates(pilot, app, runs)
        assert {v.pid for v in plan.victims} == {ends.pid, changes.pid}
        assert {m.pid for m in plan.blast.acting} == {ends.pid, changes.pid}
        # The dialog names each victim's user.
        me = pwd.getpwuid(os.geteuid()).pw_name
        lines = {m.pid: line.plain for m, line in zip(plan.blast.members, member_lines(plan), strict=True)}
        assert all(f"{pid:>7}  {me:<10}" in lines[pid] for pid in (ends.pid, changes.pid)), lines
        flags[2].touch()
        await wait_until(pilot, lambda: cmdline_of(changes.pid) == ["sleep", "600"])
        await pilot.press("y")
        await wait_until(pilot, lambda: is_gone(ends.pid))
        await wait_until(pilot, lambda: f"skipped pid {changes.pid}: its identity changed" in notices(app))
        text, severity = next((t, sev) for t, sev in app.record.notices if "skipped" in t)
        assert text.startswith("1 ended: 1 exited on SIGTERM") and severity == "warning", text
    assert not is_gone(changes.pid) and proc_state(changes.pid) in ("S", "R")
    assert cmdline_of(changes.pid) == ["sleep", "600"] and not is_gone(oldest.pid)


@needs_root
async def test_root_never_ends_another_users_run_from_d_without_all_users(
    procs: ProcStarter, shared_tmp: Path
) -> None:
    """As root, the younger run of a script is nobody's: `d` refuses it (nothing to end, the reason named), and
    with --all-users the dialog offers it, naming its user (cancelled here: nothing is signalled)."""
    script = shared_tmp / "shared.py"
    script.write_text(SLEEPER)
    script.chmod(0o644)
    mine = procs.popen([sys.executable, str(script)], start_new_session=True, stdout=subprocess.PIPE)
    procs.wait_ready(mine)
    theirs = procs.popen(
        [*NOBODY, sys.executable, str(script)], start_new_session=True, stdout=subprocess.PIPE
    )
    procs.wait_ready(theirs)
    runs = [mine, theirs]
    app = make_app(shared_tmp)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("2")
        pane = app.query_one(DuplicatesPane)
        await wait_until(pilot, lambda: all(pane.table.index_of(("inst", p.pid)) is not None for p in runs))
        assert pane.table.move_to_key(("inst", theirs.pid))
        await pilot.press("d")
        await wait_until(pilot, lambda: "nothing to end" in notices(app))
        assert f"leaves pid {theirs.pid} alone: belongs to user nobody" in notices(app), notices(app)
        assert not isinstance(app.screen, ConfirmScreen) and app.record.actions_started == 0
    app = make_app(shared_tmp, all_users=True)
    async with app.run_test(size=(120, 30)) as pilot:
        plan = await open_end_duplicates(pilot, app, runs)
        assert [(m.pid, m.username) for m in plan.blast.acting] == [(theirs.pid, "nobody")]
        assert f"{theirs.pid:>7}  nobody" in member_lines(plan)[0].plain
        await pilot.press("n")
        await wait_until(pilot, lambda: "cancelled" in notices(app))
    assert not is_gone(theirs.pid) and not is_gone(mine.pid)


async def test_procguard_run_job_has_its_flag_and_lock_in_details(
    procs: ProcStarter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`procguard run --lock NAME -- python job.py`: the job (the launcher's child) gets the R flag, not G; its
    details name the launcher and the run's lock, and its identity key counted; the launcher's details say why
    it is not a run (procguard's own)."""
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    monkeypatch.setenv("PROCGUARD_LOCK_DIR", str(lock_dir))
    monkeypatch.setenv("PROCGUARD_REGISTRY_DIR", str(tmp_path / "registry"))
    script = tmp_path / "job.py"
    script.write_text(SLEEPER)
    launcher = procs.popen(
        [
            sys.executable,
            "-m",
            "procguard.core.cli",
            "run",
            "--lock",
            "the-job",
            "--",
            sys.executable,
            str(script),
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
        env={**os.environ},
    )
    procs.wait_ready(launcher)  # the job's "ready" (it shares the launcher's stdout)
    kids = {int(c) for c in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()}
    for k in kids:
        procs.track(k)  # the job is in its own session: the launcher's group kill at teardown misses it
    (job,) = kids
    app = make_app(tmp_path)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_until(pilot, lambda: app.model is not None and app.model.run_jobs.get(job) == launcher.pid)
        await select(pilot, app, ("p", job))
        row = app.selected_row()
        assert row is not None and "R" in row.flags and "G" not in row.flags, row
        await wait_until(
            pilot,
            lambda: any(
                lk.path == str(lock_dir / "the-job.lock") and job in lk.holders for lk in app.model.locks
            ),
        )  # type: ignore[union-attr]
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: isinstance(app.screen, DetailsScreen) and app.screen.extra is not None
        )
        body = details_markup(app.model, job, app.screen.extra).plain  # type: ignore[arg-type, attr-defined]
        assert f"a `procguard run` job: launcher pid {launcher.pid}" in body, body
        assert f"run lock  {lock_dir / 'the-job.lock'}" in body, body
        assert f"identity  script: {script}" in body and "counted  yes: the only run of this job" in body, (
            body
        )
        await pilot.press("escape")
        await select(pilot, app, ("p", launcher.pid))
        assert "R" not in (app.selected_row() or row).flags
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: isinstance(app.screen, DetailsScreen) and app.screen.extra is not None
        )
        body = details_markup(app.model, launcher.pid, app.screen.extra).plain  # type: ignore[arg-type, attr-defined]
        assert f"the `procguard run` launcher of pid {job}" in body, body
        assert "counted  no: procguard's own process: the `procguard run` launcher" in body, body


STALE_LOCK_HOLDER = """
import sys
from procguard.core.locks import SingleInstanceLock
lock = SingleInstanceLock(sys.argv[1])
lock.acquire()
print("ready", flush=True)
import time
while True:
    time.sleep(0.5)
"""


async def test_x_in_locks_removes_stale_lock_files(
    procs: ProcStarter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    monkeypatch.setenv("PROCGUARD_LOCK_DIR", str(lock_dir))  # the app only ever looks at this folder
    monkeypatch.setenv("PROCGUARD_REGISTRY_DIR", str(tmp_path / "registry"))
    env = {**os.environ}
    holder = procs.python(STALE_LOCK_HOLDER, "gone-job", env=env, name="locker")
    live = procs.python(STALE_LOCK_HOLDER, "live-job", env=env, name="locker")
    holder.kill()  # SIGKILL: no clean-up, the lock file stays behind, held by nobody
    holder.wait(timeout=10)
    stale = lock_dir / "gone-job.lock"
    held = lock_dir / "live-job.lock"
    assert stale.exists() and held.exists()
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("3")
        await wait_until(
            pilot,
            lambda: (
                app.model is not None
                and str(stale) in app.model.stale_locks
                and any(lk.path == str(held) and live.pid in lk.holders for lk in app.model.locks)
            ),
        )
        assert str(held) not in app.model.stale_locks  # type: ignore[union-attr]
        await pilot.press("x")
        await wait_until(pilot, lambda: "removed 1 stale lock file(s)" in notices(app))
        assert not stale.exists() and held.exists()
        await wait_until(pilot, lambda: not app.model.stale_locks)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------- demo scenario
# These run on demo.DemoBackend: fixed data whose actions only pretend (no signal is ever sent).


def demo_app(**opts: object) -> ProcguardApp:
    return ProcguardApp(Options(**opts), backend=DemoBackend())  # type: ignore[arg-type]


async def test_progress_on_rows_while_the_ui_stays_live() -> None:
    app = demo_app(grace=1.0)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("g")
        assert app.process_table.move_to_key(("g", 2101))
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_until(pilot, lambda: app.status.get(2135, "").startswith("SIGTERM sent"))
        table = app.process_table
        group = table.rows[table.index_of(("g", 2101))]  # type: ignore[index]
        assert "5× SIGTERM sent" in table.render_cells(group, False)[-1].text
        await pilot.press("down")  # keys work while the action runs
        assert table.cursor_key == ("p", 2101)
        await wait_until(pilot, lambda: "5 ended: 5 killed after 1.0 s" in notices(app))
        labels = [label for pid, label in app.record.progress_log if pid == 2135]
        assert labels[0].startswith("SIGTERM sent") and labels[-1] == "SIGKILL sent", labels
        await wait_until(pilot, lambda: not app.status)
        assert table.is_gone(table.cursor_row)  # the process under the cursor ended: shown gone


async def test_a_refresh_that_changes_nothing_visible_repaints_no_table_line() -> None:
    """The same model again (an idle refresh where nothing on screen changed) repaints no line of the table; a
    cursor move without scrolling repaints the two cursor lines only; a changed mark repaints its line only."""
    app = demo_app()
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        table = app.process_table
        applied, repainted = app.record.models_applied, app.record.table_lines_repainted
        app.model = app.model  # applied again: rows rebuilt, the same content
        await pilot.pause()
        assert app.record.models_applied == applied + 1
        assert app.record.table_lines_repainted == repainted
        before = table.lines_repainted
        await pilot.press("down")
        assert table.cursor == 1
        assert table.lines_repainted - before == 2
        before = table.lines_repainted
        await pilot.press("space")  # mark the row under the cursor, and move on (like htop)
        await pilot.pause()
        assert app.marks and table.cursor == 2
        # Two lines changed: the marked one (asked twice: its mark, then the cursor leaving it) and the new
        # cursor line; none of the other 20-odd.
        assert 2 <= table.lines_repainted - before <= 3
        assert (
            "●" in table.render_line(table.cursor - round(table.scroll_y)).text
        )  # the line above the cursor


async def test_refused_action_is_a_notification_with_the_reason() -> None:
    app = demo_app()
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.process_table.move_to_key(("p", 1))
        await pilot.press("k")  # nothing it may act on: no dialog, straight to the refusal
        await wait_until(pilot, lambda: "refused" in notices(app))
        text, severity = app.record.notices[-1]
        assert "pid 1 is init" in text and severity == "error", app.record.notices
        assert app.is_running and 1 in app.model.snapshot  # type: ignore[union-attr]


async def test_keymap_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCGUARD_TUI_KEYMAP", "procguard.help=h,procguard.view.gpu=G")
    app = demo_app()
    async with app.run_test(size=(100, 30)) as pilot:
        assert ("h", "this help", "procguard.help") in app.key_table()
        await pilot.press("G")
        assert app.view == "gpu"
        await pilot.press("h")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "HelpScreen")


async def test_late_worker_messages_after_shutdown_touch_nothing() -> None:
    """Workers may post after the app began shutting down (run_test prunes widgets while the app's queue still
    runs): every handler must then do nothing rather than look for widgets that are gone."""
    from procguard.core.signals import Progress
    from procguard.tui.actions import describe
    from procguard.tui.messages import ActionDone, ActionFailed, ActionProgress, ModelReady, Notice

    backend = DemoBackend()
    app = ProcguardApp(backend=backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        model = backend.collect()
    assert not app._ui_live()
    app.on_model_ready(ModelReady(model))
    app.on_action_progress(ActionProgress(Progress("waiting", (2101,), 1.0), (2101,)))
    app.on_action_done(
        ActionDone(describe("kill", backend.kill([Target.pid(2466)], model.snapshot)), (2466,))
    )
    app.on_action_failed(ActionFailed("kill", "late", (2466,)))
    app.on_notice(Notice("late"))
    assert not app.status


async def test_mark_all_shown_then_clear_marks() -> None:
    app = demo_app(filter="train.py")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+a")
        train = {2101, 2135, 2136, 2137, 2138, 2466, 2470, 2471}
        assert app.marks == {("p", pid) for pid in train}
        assert "8 marked" in str(app.query_one("#status").render())
        await pilot.press("escape")
        assert not app.marks


async def test_flush_reports_the_result_or_the_reason() -> None:
    app = demo_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("4")  # the GPU view: flush the guarded training run
        table = app.query_one("#gpu-table")
        assert table.move_to_key(("gpu", 2101, 0))  # type: ignore[attr-defined]
        await pilot.press("f")
        await wait_until(pilot, lambda: "pid 2101: flushed CUDA cache" in notices(app))
        assert table.move_to_key(("gpu", 3120, 1))  # type: ignore[attr-defined]
        await pilot.press("f")
        await wait_until(pilot, lambda: "not a guarded process" in notices(app))
        assert app.record.notices[-1][1] == "error"


async def test_escapes_in_a_command_line_never_reach_the_screen(procs: ProcStarter, tmp_path: Path) -> None:
    """A command line holding a title OSC (as argv[0], so it leads every view of the command), a clear-screen
    CSI, a bidi override and a newline is shown escaped in the table, the details screen and the confirm dialog,
    and nothing raw is anywhere on screen (tests/test_hostile.py plays the same as another user)."""
    from procguard.core.sanitize import UNSAFE
    from procguard.tui.screens.details import DetailsScreen, details_markup

    code = "import time; print('ready', flush=True); time.sleep(60)"
    argv = ["\x1b]0;pwned\x07", "-c", code, "\x1b[2J", "\u202eevil", "two\nlines", str(tmp_path)]
    p = procs.popen(argv, executable=sys.executable, stdout=subprocess.PIPE, start_new_session=True)
    procs.wait_ready(p)
    app = make_app(tmp_path)

    def screen() -> str:
        """The screen's lines as the terminal gets them (every layer), after checking nothing raw is in them
        nor in the SVG screenshot of the same frame."""
        assert UNSAFE.search(app.export_screenshot().replace("\n", "")) is None, (
            "raw control character on screen"
        )
        update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
        text = "\n".join(
            "".join(seg.text for strip in line for seg in strip if not seg.control) for line in update.strips
        )  # type: ignore[union-attr]
        assert UNSAFE.search(text.replace("\n", "")) is None, text
        return text

    async with app.run_test(size=(200, 40)) as pilot:
        await select(pilot, app, ("p", p.pid))
        shown = screen()
        assert "\\x1b]0;pwned\\x07 -c" in shown and "\\x1b[2J \\u202eevil two\\nlines" in shown
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: isinstance(app.screen, DetailsScreen) and app.screen.extra is not None
        )
        await pilot.pause()
        assert "user  root (uid 0)" in screen()  # the details screen: nothing raw on it
        body = details_markup(app.model, p.pid, app.screen.extra).plain  # type: ignore[arg-type, attr-defined]
        assert body.startswith("\\x1b]0;pwned\\x07 -c ") and "\\x1b[2J \\u202eevil two\\nlines" in body
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, DetailsScreen))
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.pause()
        assert f"{p.pid:>7}  root       \\x1b]0;pwned\\x07 -c" in screen()  # the dialog's member line
        await pilot.press("n")
        await wait_until(pilot, lambda: "cancelled" in notices(app))
    assert not is_gone(p.pid)


# ---------------------------------------------------------------------------------------------- folding, palette,
# notifications, --user, history (issue 17)

POOL = """
import os, signal, sys
n = int(sys.argv[1])
for _ in range(n):
    if os.fork() == 0:
        signal.pause()
        os._exit(0)
print("ready", flush=True)
signal.pause()
"""


def proc_rows(app: ProcguardApp) -> list:  # type: ignore[type-arg]
    return [r for r in app.process_table.rows if r.kind == "proc"]


async def test_a_pool_of_1000_sleepers_is_one_row_until_unfolded(procs: ProcStarter, tmp_path: Path) -> None:
    """A process with 1,000 children (its own process group) starts folded: one row with the totals of all
    1,001 processes, in the tree and in the group view. The fold survives refreshes, a narrower filter and a
    sort; `+` / `-` / `*` / ← / → fold and unfold it, and the cursor stays on the row that holds it."""
    pool = procs.python(POOL, "1000", name="pool")
    kids = [int(c) for c in Path(f"/proc/{pool.pid}/task/{pool.pid}/children").read_text().split()]
    assert len(kids) == 1000
    members = {pool.pid, *kids}
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:

        def head() -> object:
            idx = app.process_table.index_of(("p", pool.pid))
            return None if idx is None else app.process_table.rows[idx]

        await wait_until(pilot, lambda: (r := head()) is not None and r.folded and r.size == 1001)  # type: ignore[attr-defined]
        row = head()
        snap = app.model.snapshot  # type: ignore[union-attr]
        assert [r.id for r in proc_rows(app)] == [pool.pid]  # one row for 1,001 processes
        assert row.rss == sum(snap[p].rss for p in members)  # type: ignore[attr-defined]
        assert row.prefix.endswith("▸ +1000 ") and "1 folded" in str(app.query_one("#status").render())  # type: ignore[attr-defined]
        await refreshed(pilot, app)
        assert head().folded  # type: ignore[union-attr]
        await pilot.press("slash", *"/pool", "enter")  # a narrower filter (the script's name)
        await wait_until(pilot, lambda: app.view_state.filter.endswith("/pool"))
        await pilot.press("s", "s", "s")  # sort by CPU, then RSS
        await refreshed(pilot, app)
        assert [r.id for r in proc_rows(app)] == [pool.pid] and head().folded  # type: ignore[union-attr]
        await select(pilot, app, ("p", pool.pid))
        await pilot.press("plus")  # unfolded: every child has its row, and stays so
        await wait_until(pilot, lambda: len(proc_rows(app)) == 1001)
        await refreshed(pilot, app)
        assert {r.id for r in proc_rows(app)} == members and not head().folded  # type: ignore[union-attr]
        await select(pilot, app, ("p", kids[500]))
        await pilot.press("minus")  # on a child: folds its parent, the cursor goes there
        assert app.process_table.cursor_key == ("p", pool.pid) and head().folded  # type: ignore[union-attr]
        await pilot.press("right")  # → unfolds, ← folds again
        assert not head().folded  # type: ignore[union-attr]
        await select(pilot, app, ("p", kids[500]))
        await pilot.press("g")  # its group header would start folded (its size): it opens for the selection
        assert app.process_table.cursor_key == ("p", kids[500])
        await pilot.press("g", "g", "g")  # back to the tree
        await select(pilot, app, ("p", pool.pid))
        await pilot.press("left")
        assert head().folded  # type: ignore[union-attr]
        await pilot.press("asterisk")  # something is folded: * opens everything
        assert not head().folded and len(proc_rows(app)) == 1001  # type: ignore[union-attr]
        await pilot.press("g")  # by process group: one header for the whole pool, folded by its size
        group = app.process_table.rows[app.process_table.index_of(("g", pool.pid))]  # type: ignore[index]
        assert group.size == 1001 and not group.folded  # * opened everything, groups too
        await pilot.press("asterisk")  # nothing folded: * folds every header
        group = app.process_table.rows[app.process_table.index_of(("g", pool.pid))]  # type: ignore[index]
        assert group.folded and proc_rows(app) == [] and app.process_table.cursor_key == ("g", pool.pid)
        assert group.rss == sum(snap[p].rss for p in members)
        await pilot.press("right", "right")  # → unfolds the header, then goes to its first member
        assert app.process_table.cursor_key == ("p", pool.pid)
        await pilot.press("left")  # ← on a member: to its header
        assert app.process_table.cursor_key == ("g", pool.pid)
    assert app.record.actions_started == 0


async def test_a_fold_the_user_made_keeps_the_cursor_on_the_folded_row() -> None:
    """A fold survives sorts and regroupings; folding a member's header moves the cursor to the header (demo
    scenario). (A fold made for a row's size opens for the selected process instead: the test above.)"""
    app = demo_app()
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.process_table.move_to_key(("p", 2101))
        await pilot.press("minus")  # fold 2101's subtree (its 4 workers)
        row = app.selected_row()
        assert (
            row is not None
            and row.folded
            and row.size == 5
            and row.cpu == pytest.approx(99.2 + 38.0 + 35.5 + 36.1 + 33.9)
        )
        await pilot.press("s", "s", "s", "S")  # sorts: still folded, still under the cursor
        assert app.process_table.cursor_key == ("p", 2101) and app.selected_row().folded  # type: ignore[union-attr]
        await pilot.press("g")
        assert app.process_table.move_to_key(("p", 2135))
        await pilot.press("minus")  # folds group 2101 (the worker's header), the cursor goes to it
        assert app.process_table.cursor_key == ("g", 2101)
        await pilot.press("g", "g", "g", "g")  # round every grouping back to groups: the fold is still there
        assert app.process_table.index_of(("g", 2101)) is not None
        assert app.process_table.rows[app.process_table.index_of(("g", 2101))].folded  # type: ignore[index]


async def test_every_action_is_in_the_palette_and_acts_on_the_selection(
    procs: ProcStarter, tmp_path: Path
) -> None:
    """Ctrl+P then "pause", "resume", "term", "sort", "help": a command for each, built from the bindings, acting
    on the selected row like the key (real signals on the test's own process)."""
    from textual.command import CommandList, CommandPalette

    from procguard.tui.app import PALETTE_TITLES
    from procguard.tui.model import GROUPING_LABELS, GROUPINGS, SORT_KEYS, SORT_LABELS

    p = procs.python(SLEEPER, name="paletted")
    app = make_app(tmp_path)

    async def run(query: str, title: str) -> None:
        await pilot.press("ctrl+p")
        await wait_until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*query)
        clist = app.screen.query_one(CommandList)
        await wait_until(pilot, lambda: clist.option_count > 0)
        first = str(clist.get_option_at_index(0).prompt).splitlines()[0]
        assert first == title, (query, first)
        await pilot.press("enter")
        await wait_until(pilot, lambda: not isinstance(app.screen, CommandPalette))

    async with app.run_test(size=(100, 30)) as pilot:
        titles = [t for t, _h, _c in app.palette_commands()]
        # Every binding is a command (but the cluster's node switch without --ray), then each sort and grouping.
        assert titles[: len(app.KEYS) - 1] == [
            PALETTE_TITLES[b.id]
            for b in app.KEYS  # type: ignore[index]
            if b.id != "procguard.node"
        ]
        assert titles[len(app.KEYS) - 1 :] == [
            *(f"Sort by {SORT_LABELS[k]}" for k in SORT_KEYS),
            *(f"Group {GROUPING_LABELS[g]}" for g in GROUPINGS),
        ]
        await select(pilot, app, ("p", p.pid))
        await run("pause", "Pause selection")
        await wait_until(pilot, lambda: proc_state(p.pid) == "T")
        await run("resume", "Resume selection")
        await wait_until(pilot, lambda: proc_state(p.pid) in ("S", "R"))
        await run("sort by rss", "Sort by RSS")
        assert app.view_state.sort == "rss"
        await run("term", "Terminate selection")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert [m.pid for m in app.screen.plan.blast.acting] == [p.pid]  # type: ignore[attr-defined]
        await pilot.press("n")
        await wait_until(pilot, lambda: "cancelled" in notices(app))
        await run("help", "Help: keys, flags, remapping")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        await pilot.press("escape")
        await pilot.press("2")
        await run("mark", "Mark / unmark row")  # not in this view: says why, like the key
        await wait_until(pilot, lambda: "works in the Processes view" in notices(app))
    assert not is_gone(p.pid) and app.record.actions_started == 2  # pause, resume


async def test_keys_that_do_nothing_here_say_why() -> None:
    """space in Duplicates, d and x outside their views, Enter on a section header, sorting by GPU memory
    without a GPU: a short notification each, never silence. A remapped key's reason names the new key."""
    app = ProcguardApp(Options(), backend=DemoBackend(gpu=False))
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("d", "x")
        await pilot.press("s", "s", "s", "s")  # pid → age → CPU → RSS → (GPU mem: skipped) → pid
        assert app.view_state.sort == "pid"
        await pilot.press("2", "space")
        app.query_one(DuplicatesPane).table.move_to_key(("group", app.model.duplicates[0].identity.key))  # type: ignore[union-attr]
        await pilot.press("enter")
        await pilot.press("x")
        said = [t for t, _ in app.record.notices]
        assert said == [
            "d ends duplicate runs in the Duplicates view: press 2",
            "x removes stale lock files in the Locks view: press 3",
            "sort by GPU memory skipped: no GPU (NVML library not found (libnvidia-ml.so.1): no NVIDIA "
            "driver)",
            "space (mark) works in the Processes view: press 1",
            "Enter: a section header has no details: move to a process row",
            "x removes stale lock files in the Locks view: press 3",
        ], said
        await pilot.pause()
        from textual.widgets._toast import Toast

        toasts = list(app.screen.query(Toast))
        assert toasts and all(t.region.height == 1 for t in toasts)  # one line each at 80x24
        assert len(toasts) == 5  # the same words twice: one toast


async def test_remapped_keys_explain_with_their_new_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCGUARD_TUI_KEYMAP", "procguard.end_duplicates=D,procguard.fold=f9")
    app = demo_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("d")  # nothing bound there any more: no word
        await pilot.press("D")
        await pilot.press("3", "f9")
        assert [t for t, _ in app.record.notices] == [
            "D ends duplicate runs in the Duplicates view: press 2",
            "f9 (fold) works in the Processes view: press 1",
        ]
        assert (
            "D",
            "Duplicates: end all but the oldest run of the script",
            "procguard.end_duplicates",
        ) in app.key_table()


async def test_user_filters_every_view_and_the_summary() -> None:
    """--user bob on the demo: the Duplicates view loses alice's training runs, the Locks view keeps only
    locks bob's processes hold, the GPU view only bob's processes, and the summary counts bob's only."""
    from procguard.tui.backends.demo import demo_model
    from procguard.tui.model import summarize_model

    bob = {p.pid for p in demo_model().snapshot if p.username == "bob"}
    app = demo_app(user="bob")
    async with app.run_test(size=(160, 40)) as pilot:
        summary = str(app.query_one("#summary").render())
        assert summary.startswith(f" {len(bob)} procs") or f"{len(bob)} procs" in summary, summary
        await pilot.press("2")
        dup = app.query_one("#duplicates-table")
        keys = [r.key for r in dup.rows]  # type: ignore[attr-defined]
        assert ("inst", 2101) not in keys and ("note", "none") in keys  # alice's duplicates are not bob's
        assert {k[1] for k in keys if k[0] == "sched"} == {6001, 6002}  # bob's scheduled runs stay
        await pilot.press("3")
        locks = [r for r in app.query_one("#locks-table").rows if r.key[0] == "lock"]  # type: ignore[attr-defined]
        assert locks == []  # only alice and root hold locks in the scenario
        await pilot.press("4")
        gpu = {r.pid for r in app.query_one("#gpu-table").rows if r.kind == "item"}  # type: ignore[attr-defined]
        assert gpu and gpu <= bob, gpu
    totals = summarize_model(app.user_model(app.model))  # type: ignore[arg-type]
    assert totals.processes == len(bob) and totals.duplicate_groups == 0 and totals.held_locks == 0


@needs_root
async def test_user_filters_duplicates_and_locks_of_real_processes(
    procs: ProcStarter, shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real processes: a script run twice by root and another run twice by nobody, each run of root's holding a
    lock: `--user nobody` shows nobody's duplicate group only, no lock, and nobody's processes in the summary."""
    lock_dir = shared_tmp / "locks"
    lock_dir.mkdir(mode=0o700)
    monkeypatch.setenv("PROCGUARD_LOCK_DIR", str(lock_dir))
    monkeypatch.setenv("PROCGUARD_REGISTRY_DIR", str(shared_tmp / "registry"))
    mine, theirs = shared_tmp / "mine.py", shared_tmp / "theirs.py"
    mine.write_text(SLEEPER)
    theirs.write_text(SLEEPER)
    theirs.chmod(0o644)
    started = []
    for argv in (
        [sys.executable, str(mine)],
        [sys.executable, str(mine)],
        [*NOBODY, sys.executable, str(theirs)],
        [*NOBODY, sys.executable, str(theirs)],
    ):
        p = procs.popen(argv, start_new_session=True, stdout=subprocess.PIPE)
        procs.wait_ready(p)
        started.append(p)
    holder = procs.python(STALE_LOCK_HOLDER, "root-job", env={**os.environ}, name="locker")
    app = make_app(shared_tmp, user="nobody")
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.press("2")
        pane = app.query_one(DuplicatesPane)
        await wait_until(
            pilot, lambda: all(pane.table.index_of(("inst", p.pid)) is not None for p in started[2:])
        )
        assert all(pane.table.index_of(("inst", p.pid)) is None for p in started[:2])
        await pilot.press("3")
        await wait_until(
            pilot, lambda: app.model is not None and any(holder.pid in lk.holders for lk in app.model.locks)
        )
        await refreshed(pilot, app)
        rows = app.query_one("#locks-table").rows  # type: ignore[attr-defined]
        assert not [r for r in rows if r.key[0] == "lock" and holder.pid in (r.pid,)]
        view = app.user_model(app.model)  # type: ignore[arg-type]
        assert {p.username for p in view.snapshot} == {"nobody"}
        assert {started[2].pid, started[3].pid} <= set(view.snapshot.procs)


async def test_gpu_and_details_history_graphs() -> None:
    """The demo's history: the GPU view draws each device's memory and utilization over the last minutes, the
    details screen the process's CPU, RSS and GPU memory since it is watched."""
    from procguard.tui.backends.demo import demo_history
    from procguard.tui.history import BLOCKS

    app = ProcguardApp(Options(), backend=DemoBackend(), history=demo_history())
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("4")
        panel = str(app.query_one("#gpu-devices").render())
        assert panel.count("mem ") == 2 and panel.count("util ") >= 4 and "last 4m59s" in panel, panel
        assert len({c for c in panel if c in BLOCKS}) >= 4  # the graphs move
        await pilot.press("1")
        assert app.process_table.move_to_key(("p", 2466))
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, DetailsScreen))
        body = str(app.screen.query_one("#details-body").render())
        assert "history  CPU" in body and "RSS" in body and "watched for 5m00s (301 samples" in body, body


async def test_details_history_starts_when_a_process_is_selected(procs: ProcStarter, tmp_path: Path) -> None:
    """Live: the selected process is watched from its first refresh on, and an open details screen grows."""
    p = procs.python(SLEEPER, name="watched")
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await select(pilot, app, ("p", p.pid))
        await refreshed(pilot, app)
        hist = app.history.of(app.model, p.pid)  # type: ignore[arg-type]
        assert hist is not None and hist.count >= 2
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, DetailsScreen))
        seen = hist.count
        await wait_until(pilot, lambda: hist.count >= seen + 2)
        await wait_until(
            pilot, lambda: f"({hist.count} samples" in str(app.screen.query_one("#details-body").render())
        )


async def test_history_stays_bounded_at_5000_processes() -> None:
    """5,000 processes, each selected in turn over 400 refreshes: 64 histories kept (the last watched), none
    longer than 300 samples, and what the history holds stays a few MiB (measured: tracemalloc)."""
    import tracemalloc
    from dataclasses import replace
    from types import MappingProxyType

    from procguard.core.snapshot import Snapshot
    from procguard.tui.backends.demo import demo_model
    from procguard.tui.history import SAMPLES, WATCHED, History
    from procguard.tui.model import make_model

    demo = demo_model()
    p0 = demo.snapshot[2101]
    procs = {pid: p0._replace(pid=pid, ppid=1, start_ticks=pid) for pid in range(10_000, 15_000)}
    model = make_model(1, Snapshot(MappingProxyType(procs), demo.time), demo.gpu)
    hist = History()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for seq in range(400):  # 64 processes watched at once (their graphs fill up), then others come
            m = replace(model, seq=seq)
            hist.record(m)
            hist.watch(m, 10_000 + (seq % 64 if seq < 350 else (seq * 13) % 5000))
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    last = 10_000 + (399 * 13) % 5000
    assert len(hist.procs) == WATCHED and list(hist.procs)[-1] == ("", last, last)
    assert all(len(ph.cpu) <= SAMPLES and len(ph.rss) <= SAMPLES for ph in hist.procs.values())
    assert max(len(ph.cpu) for ph in hist.procs.values()) == SAMPLES  # some graphs are full
    assert all(len(d.memory) == SAMPLES for d in hist.devices.values()) and len(hist.devices) == 2
    assert held < 4 * 1024 * 1024, held  # under 2 MiB at worst: the RSS goal is 150 MB


async def test_a_model_landing_behind_queued_keys_waits_for_them_and_only_the_newest_is_applied() -> None:
    """Two refreshes arrive while three cursor keys wait in the queue: the keys are handled first, then only the
    newer model is applied (the older one is dropped, not drawn and then replaced)."""
    from dataclasses import replace

    from textual import events

    from procguard.tui.messages import ModelReady

    app = demo_app()
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        table = app.process_table
        model = app.model
        assert model is not None and table.cursor == 0
        applied = app.record.models_applied
        older, newer = replace(model, seq=model.seq + 1), replace(model, seq=model.seq + 2)
        cursor_when_applied: list[int] = []
        watch = app.watch_model

        def spy(old: object, new: object) -> None:
            cursor_when_applied.append(table.cursor)
            watch(old, new)  # type: ignore[arg-type]

        app.watch_model = spy  # type: ignore[method-assign]
        for _ in range(3):
            app.post_message(events.Key("down", None))
        app.post_message(ModelReady(older))
        app.post_message(ModelReady(newer))
        await wait_until(pilot, lambda: app.model is newer)
        await pilot.pause()
        assert app.record.models_applied == applied + 1  # the older model was never applied
        assert cursor_when_applied == [3]  # applied after the three keys, not between them
        assert table.cursor == 3


async def test_switching_back_to_a_view_does_not_rebuild_its_rows_for_the_same_model() -> None:
    from dataclasses import replace

    app = demo_app()
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("2")
        pane = app.query_one(DuplicatesPane)
        rows = pane.table.rows
        assert rows
        await pilot.press("1")
        await pilot.press("2")
        assert pane.table.rows is rows  # the same model: kept, not built again
        model = app.model
        assert model is not None
        app.model = replace(model, seq=model.seq + 1)  # a new model: built anew
        await pilot.pause()
        assert pane.table.rows is not rows
