"""procguard-tui, issue 18: the cgroup grouping (`g`, fourth), processes frozen by the cgroup freezer (shown F, `r`
thaws them), actions on a whole cgroup (Target.cgroup, with the way core would take shown in the confirm dialog),
and the kernel's GPU holders and orphans in the GPU view and the summary.

Real cgroups: a cgroup made under the v2 hierarchy for each test (tests/test_cgroups.py's fixture: removed
afterwards whatever happens; skipped with the reason where no writable v2 hierarchy exists), the test's own
processes moved in before they exec. Every app is filtered to the test's tmp_path and scoped to it (act_scope):
it never shows nor acts on anything else. GPU holders without a GPU: mknod'd nodes (tests/test_gpuholders.py's
fixture) that the live backend's scanner is pointed at (PROCGUARD_GPU_DEV_DIR).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from procguard.core import cgroups as C
from procguard.core.gpuholders import DEV_DIR_ENV
from procguard.core.signals import Member, Target
from procguard.tui.app import Options, ProcguardApp
from procguard.tui.backends.demo import FROZEN, DemoBackend, demo_model
from procguard.tui.backends.live import CgroupCache, LiveBackend, read_cgroups
from procguard.tui.model import (
    STATE_FROZEN,
    Row,
    ViewState,
    build_rows,
    group_label,
    node_targets,
    shown_state,
    summarize_model,
    thaw_targets,
)
from procguard.tui.rows import gpu_rows
from procguard.tui.screens.confirm import ConfirmScreen
from procguard.tui.widgets.summary import Summary, summary_markup
from tests.conftest import ProcStarter, is_gone, wait_for
from tests.test_cgroups import Cg, cg, start_in  # noqa: F401 - cg: the fixture
from tests.test_gpuholders import dev, start_orphaner  # noqa: F401 - dev: the fixture

SLEEP = "import sys, time\nwhile True:\n    time.sleep(0.5)\n"


def cgroup_state(where: Cg) -> dict[str, int]:
    with open(os.path.join(where.fs, "cgroup.events")) as f:
        return {k: int(v) for k, v in (ln.split() for ln in f if ln.strip())}


def start_two(procs: ProcStarter, where: Cg, tmp_path: Path) -> list[int]:
    """Two sleepers of this test (tmp_path in their command line) inside the cgroup."""
    pids = [
        start_in(procs, where, [sys.executable, "-c", SLEEP, str(tmp_path / f"job{i}")]).pid for i in range(2)
    ]
    wait_for(lambda: sorted(C.cgroup_members(where.path)) == sorted(pids))
    return pids


def scoped_app(tmp_path: Path, **opts: object) -> ProcguardApp:
    scope = str(tmp_path)

    def in_scope(m: Member) -> bool:
        return scope in m.command

    kw: dict[str, object] = {"interval": 0.2, "filter": scope, "grace": 2.0, "grouping": "cgroup"}
    kw.update(opts)
    return ProcguardApp(Options(**kw), act_scope=in_scope)  # type: ignore[arg-type]


async def until(pilot: Pilot[None], pred: Callable[[], object], timeout: float = 20.0) -> None:
    """Let the app run until pred() holds (a condition, never a timing assertion)."""
    import time

    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        await pilot.pause(0.02)


def row(app: ProcguardApp, key: tuple[object, ...]) -> Row | None:
    idx = app.process_table.index_of(key)
    return None if idx is None else app.process_table.rows[idx]


def notices(app: ProcguardApp) -> str:
    return "\n".join(text for text, _ in app.record.notices)


# ---------------------------------------------------------------------------------------------- real cgroups


@pytest.mark.asyncio
async def test_cgroup_grouping_freeze_and_thaw_from_the_table(
    cg: Cg,  # noqa: F811
    procs: ProcStarter,
    tmp_path: Path,
) -> None:
    """The fourth grouping shows the test's cgroup as one row with its totals; `p` on it freezes the cgroup
    (cgroup.freeze: its processes show F, not S, and the row says frozen); `r` on one of its (frozen) processes
    thaws the cgroup; `p` and `r` on the cgroup row do the same from the row."""
    pids = start_two(procs, cg, tmp_path)
    key = ("c", cg.path)
    app = scoped_app(tmp_path)
    async with app.run_test(size=(140, 30)) as pilot:
        await until(pilot, lambda: (r := row(app, key)) is not None and r.size == 2)
        head = row(app, key)
        assert head is not None and head.kind == "cgroup" and set(head.members) == set(pids)
        assert head.label == cg.path and group_label(head).startswith(f"{cg.path}: 2 procs")
        model = app.model
        assert model is not None
        procs_ = [model.snapshot[p] for p in pids]
        assert (head.rss, head.cpu) == (sum(p.rss for p in procs_), sum(p.cpu_percent for p in procs_))
        assert [r.id for r in app.process_table.rows if r.kind == "proc"] == sorted(
            pids
        )  # under their header

        assert app.process_table.move_to_key(key)
        await pilot.press("p")
        await until(pilot, lambda: cgroup_state(cg).get("frozen") == 1)
        await until(pilot, lambda: (r := row(app, key)) is not None and r.frozen == 2)
        assert "frozen" in group_label(row(app, key))  # type: ignore[arg-type]
        for pid in pids:  # ps says S; the table says F
            member = row(app, ("p", pid))
            assert member is not None and member.proc is not None and member.proc.state in ("S", "D")
            assert shown_state(member) == STATE_FROZEN
        assert "2 frozen" in str(app.query_one(Summary).render())

        # r on a frozen process: SIGCONT would not wake it, so its cgroup is thawed.
        assert app.process_table.move_to_key(("p", pids[0]))
        await pilot.press("r")
        await until(pilot, lambda: cgroup_state(cg).get("frozen") == 0)
        await until(pilot, lambda: (r := row(app, key)) is not None and r.frozen == 0)

        # ... and from the cgroup row itself.
        assert app.process_table.move_to_key(key)
        await pilot.press("p")
        await until(pilot, lambda: cgroup_state(cg).get("frozen") == 1)
        await pilot.press("r")
        await until(pilot, lambda: cgroup_state(cg).get("frozen") == 0)
        await until(pilot, lambda: (r := row(app, key)) is not None and r.frozen == 0)
        assert not [t for t, sev in app.record.notices if sev == "error"], notices(app)
    assert not any(is_gone(p) for p in pids)


@pytest.mark.asyncio
async def test_terminate_a_cgroup_row_shows_the_way_and_ends_it(
    cg: Cg,  # noqa: F811
    procs: ProcStarter,
    tmp_path: Path,
) -> None:
    """`t` on a cgroup row: the confirm dialog lists its processes and says how the cgroup would end (SIGTERM,
    then cgroup.kill); confirmed, every member ends and the cgroup is empty."""
    pids = start_two(procs, cg, tmp_path)
    key = ("c", cg.path)
    app = scoped_app(tmp_path, grace=0.5)
    async with app.run_test(size=(140, 30)) as pilot:
        await until(pilot, lambda: (r := row(app, key)) is not None and r.size == 2)
        assert app.process_table.move_to_key(key)
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        plan = app.screen.plan  # type: ignore[attr-defined]
        assert plan.targets == (Target.cgroup(cg.path),)
        assert sorted(m.pid for m in plan.blast.acting) == sorted(pids)
        (how,) = plan.notes
        assert how.startswith(f"cgroup {cg.path}, 2 processes: SIGTERM to every member, then cgroup.kill"), (
            how
        )
        await pilot.press("y")
        await until(pilot, lambda: all(is_gone(p) for p in pids))
        await until(pilot, lambda: "2 ended" in notices(app))
    assert cgroup_state(cg).get("populated") == 0


def test_the_live_backend_reads_cgroups_and_the_freezer(
    cg: Cg,  # noqa: F811
    procs: ProcStarter,
    tmp_path: Path,
) -> None:
    """LiveBackend: each process's cgroup (named), the frozen ones with the cgroup to thaw; the cgroup cache
    rereads a process that exec'd (moved, then exec'd: the shell's cgroup read before the move is not kept)."""
    pids = start_two(procs, cg, tmp_path)
    backend = LiveBackend()
    model = backend.collect()
    assert {model.cgroups[p].name.unit_path for p in pids} == {cg.path}  # type: ignore[union-attr]
    assert model.cgroup_index[cg.path] == tuple(sorted(pids)) and not set(pids) & set(model.frozen)
    C.freeze_cgroup(cg.path)
    try:
        model = backend.collect()
        assert {p: model.frozen.get(p) for p in pids} == {p: cg.path for p in pids}
        assert summarize_model(model).frozen >= 2
        # `r` on one process: its cgroup is added as a thaw target.
        (group,) = node_targets([("p", pids[0])], model)
        (thaw,) = thaw_targets(model, [group])
        assert thaw.targets == (Target.pid(pids[0]), Target.cgroup(cg.path))
    finally:
        C.thaw_cgroup(cg.path)
    assert not set(pids) & set(backend.collect().frozen)
    cache = CgroupCache(recheck=3600.0)
    snap = backend.collect().snapshot
    infos, _frozen = read_cgroups(cache, snap)
    assert cache.reads >= len(pids) and infos[pids[0]].path == cg.path
    read_cgroups(cache, snap)
    assert cache.reads == 0  # nothing new, no exec, not due: nothing read again


# ---------------------------------------------------------------------------------------------- GPU holders


@pytest.mark.asyncio
async def test_gpu_view_and_summary_show_the_kernels_holders_and_orphans(
    dev: Path,  # noqa: F811
    procs: ProcStarter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without NVML: a worker left holding a GPU device open after its parent died is a GPU holder ("open", no
    memory figure) and an orphan (flag O) in the GPU view, the table's flags and the summary; a daemon holding
    one (its own session leader) is a holder, not an orphan."""
    monkeypatch.setenv(DEV_DIR_ENV, str(dev))
    parent, worker, daemon = start_orphaner(procs, dev, "die")
    parent.wait(timeout=30)
    wait_for(lambda: all(os.path.exists(f"/proc/{p}") and _ppid(p) != parent.pid for p in (worker, daemon)))
    app = scoped_app(tmp_path, grouping="parent")
    async with app.run_test(size=(140, 30)) as pilot:
        await until(pilot, lambda: app.model is not None and worker in app.model.orphans)
        model = app.model
        assert model is not None and daemon not in model.orphans
        holders = {h.pid: h for h in model.holders}
        assert not holders[worker].in_nvml and holders[worker].minors == (0,)
        assert row(app, ("p", worker)) is not None and "O" in row(app, ("p", worker)).flags  # type: ignore[union-attr]
        summary = summary_markup(model, 140).plain
        assert "GPU n/a" in summary and "orphan" in summary
        await pilot.press("4")
        gpu = {r.pid: r for r in gpu_rows(model) if r.pid is not None}
        assert gpu[worker].cells[2].text == "open" and "O" in gpu[worker].cells[5].text
        assert gpu[daemon].cells[2].text == "open" and "O" not in gpu[daemon].cells[5].text
        table = app.query_one("#gpu-table")
        assert table.display  # shown without NVML: the kernel's holders are there


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------- the demo


def test_demo_cgroup_rows_have_their_totals_and_names() -> None:
    m = demo_model()
    rows = build_rows(m, ViewState(grouping="cgroup"))
    heads = {r.key: r for r in rows if r.kind == "cgroup"}
    docker = next(r for r in heads.values() if r.label.startswith("docker "))
    assert docker.label == "docker 3f9a1c2b4d5e" and docker.size == 3 and docker.gpu > 18 * 1024**3
    assert docker.rss == sum(m.snapshot[p].rss for p in docker.members)
    slurm = {r.label: r for r in heads.values() if r.label.startswith("slurm ")}
    assert set(slurm) == {"slurm 88413.0", "slurm 88414.0"} and slurm["slurm 88414.0"].frozen == 1
    assert slurm["slurm 88413.0"].frozen == 0 and "frozen" in group_label(slurm["slurm 88414.0"])
    assert heads[("c", "/user.slice/user-1000.slice/session-5.scope")].stopped == 1
    # every process shown belongs to one header (kernel threads hidden)
    assert sum(r.kind == "proc" for r in rows) == sum(1 for p in m.snapshot if not p.kernel_thread)
    (frozen_root,) = FROZEN
    assert m.frozen == {6002: frozen_root}
    # the CGROUP column of a process: what its cgroup is, and its pid inside its own PID namespace
    tree = {r.key: r for r in build_rows(m, ViewState())}
    assert tree[("p", 7010)].label == "docker 3f9a1c2b4d5e pid 1" and tree[("p", 612)].label == "ssh.service"
    assert summarize_model(m).frozen == 1 and summarize_model(m).gpu_orphans == 2


@pytest.mark.asyncio
async def test_demo_pause_and_resume_a_cgroup_row() -> None:
    """In the demo: `p` on the docker container freezes it (its processes show F), `r` thaws it; `r` on the
    frozen SLURM task thaws its job's cgroup."""
    app = ProcguardApp(Options(grouping="cgroup"), backend=DemoBackend())
    async with app.run_test(size=(120, 40)) as pilot:
        docker = next(r for r in app.process_table.rows if r.label.startswith("docker "))
        assert app.process_table.move_to_key(docker.key)
        await pilot.press("p")
        await until(pilot, lambda: (r := row(app, docker.key)) is not None and r.frozen == 3)
        await pilot.press("r")
        await until(pilot, lambda: (r := row(app, docker.key)) is not None and r.frozen == 0)
        assert app.process_table.move_to_key(("p", 6002))
        assert shown_state(row(app, ("p", 6002))) == STATE_FROZEN  # type: ignore[arg-type]
        await pilot.press("r")
        await until(pilot, lambda: (r := row(app, ("p", 6002))) is not None and not r.frozen)


def test_cgroup_grouping_snapshot(snap_compare: Callable[..., bool]) -> None:
    """The demo by cgroup: systemd units and login scopes, the docker container with its GPU memory, the SLURM
    job steps (one frozen: F)."""
    app = ProcguardApp(backend=DemoBackend())
    assert snap_compare(app, press=["g", "g", "g"], terminal_size=(120, 36))
