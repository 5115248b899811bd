"""Duplicate runs: pure grouping over hand-made tables, then real Python processes from unique temp folders.

Safety: every find/terminate here is scoped with script= to a script this test wrote, or runs over a
snapshot filtered to the test's own pids.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

import pytest

from procguard.core.duplicates import (
    DuplicateGroup,
    build_report,
    check_before_run,
    duplicate_report,
    explain,
    find_duplicates,
    find_instances,
    group_json,
    terminate_duplicates,
)
from procguard.core.identity import ScriptIdentity, identity_for_command, identity_for_path
from procguard.core.pyproc import parse_python_cmdline
from procguard.core.signals import Outcome
from procguard.core.snapshot import Proc, Snapshot, process_snapshot, read_proc
from tests.conftest import LAUNCH_VARS, PY, ProcStarter, is_gone, wait_for


@pytest.fixture(autouse=True)
def _not_in_a_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    # terminate_duplicates refuses to act inside a launch/job; the test runner itself may be in one.
    for v in LAUNCH_VARS:
        monkeypatch.delenv(v, raising=False)


# ---------------------------------------------------------------------------------------------- pure grouping


def mk(pid: int, cmdline: list[str], ppid: int = 1, t: float | None = None, uid: int = 1000) -> Proc:
    return Proc(
        pid,
        ppid,
        pid,
        pid,
        "S",
        os.path.basename(cmdline[0])[:15],
        tuple(cmdline),
        float(pid) if t is None else t,
        0,
        uid,
        f"u{uid}",
        0.0,
        1,
        0,
        False,
        pid * 10,
        parse_python_cmdline(cmdline),
    )


def table(*ps: Proc) -> Mapping[int, Proc]:
    return MappingProxyType({p.pid: p for p in ps})


def ident_by_target(p: Proc) -> ScriptIdentity | None:
    """A pure identity: file scripts are absolute here, so the target is the key."""
    py = p.python
    assert py is not None
    if py.kind == "file":
        return ScriptIdentity("file", py.target, py.target)
    if py.kind == "module":
        return ScriptIdentity("module", f"{py.target}@/w", py.target)
    return ScriptIdentity("code", "\0".join(p.cmdline), py.target)


def report(
    procs: Mapping[int, Proc],
    envs: Mapping[int, Mapping[str, str] | None] | None = None,
    asked: list[int] | None = None,
    **kw: object,
):  # type: ignore[no-untyped-def]
    envs = envs or {}

    def env_of(p: Proc) -> Mapping[str, str] | None:
        if asked is not None:
            asked.append(p.pid)
        return envs.get(p.pid, {})

    return build_report(procs, ident_by_target, env_of, lambda p: f"/cwd/{p.pid}", **kw)  # type: ignore[arg-type]


def pids(g: DuplicateGroup) -> list[int]:
    return [i.pid for i in g.instances]


def test_two_independent_runs_are_a_group_oldest_first() -> None:
    r = report(
        table(
            mk(20, ["python", "/a/t.py", "--lr", "1"], t=5.0),
            mk(10, ["python3", "-u", "/a/t.py", "--lr", "2"], t=9.0),
            mk(30, ["python", "/b/t.py"]),
        )
    )
    assert len(r.groups) == 1
    g = r.groups[0]
    assert g.identity.key == "/a/t.py"
    assert pids(g) == [20, 10]
    assert [i.args for i in g.instances] == [("--lr", "1"), ("--lr", "2")]
    assert g.instances[0].cwd == "/cwd/20"


def test_workers_of_a_run_are_not_duplicates() -> None:
    base = [
        mk(10, ["python", "/a/t.py"]),
        mk(11, ["python", "/a/t.py"], ppid=10),
        mk(12, ["python", "/a/t.py"], ppid=11),
    ]
    assert report(table(*base)).groups == ()
    r = report(table(*base, mk(20, ["python", "/a/t.py"])))
    assert [pids(g) for g in r.groups] == [[10, 20]]


def test_multiprocessing_helpers_are_not_scripts() -> None:
    helper = ["python", "-c", "from multiprocessing.resource_tracker import main;main(5)"]
    spawn = [
        "python",
        "-c",
        "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5)",
        "--multiprocessing-fork",
    ]
    from procguard.core.identity import identity_of

    assert identity_of(mk(10, helper)) is None
    assert identity_of(mk(11, spawn)) is None


def test_ranks_under_one_launcher_are_one_run() -> None:
    launcher = mk(10, ["python", "/venv/bin/torchrun", "--nproc-per-node", "2", "/a/t.py"])
    ranks = [mk(11, ["python", "-u", "/a/t.py"], ppid=10), mk(12, ["python", "-u", "/a/t.py"], ppid=10)]
    assert report(table(launcher, *ranks)).groups == ()
    r = report(table(launcher, *ranks, mk(30, ["python", "/a/t.py"])))
    (g,) = r.groups
    assert pids(g) == [10, 30]
    first = g.instances[0]
    assert (first.launcher, first.members, first.roots) == ("torchrun", (11, 12), (10,))
    assert first in r.distributed


def test_two_launches_are_two_runs_and_launchers_are_not_scripts() -> None:
    procs = [
        mk(10, ["python", "-m", "torch.distributed.run", "/a/t.py"]),
        mk(11, ["python", "/a/t.py"], ppid=10),
        mk(12, ["python", "/a/t.py"], ppid=10),
        mk(20, ["python", "-m", "torch.distributed.run", "/a/t.py"]),
        mk(21, ["python", "/a/t.py"], ppid=20),
    ]
    (g,) = report(table(*procs)).groups
    assert pids(g) == [10, 20]
    assert g.identity.key == "/a/t.py"


def test_mpirun_is_a_launcher() -> None:
    procs = [
        mk(5, ["/usr/bin/mpirun", "-np", "2", "python", "/a/t.py"]),
        mk(6, ["/usr/bin/hydra_pmi_proxy"], ppid=5),
        mk(7, ["python", "/a/t.py"], ppid=6),
        mk(8, ["python", "/a/t.py"], ppid=6),
    ]
    assert report(table(*procs)).groups == ()


@pytest.mark.parametrize(
    "env",
    [
        {"TORCHELASTIC_RUN_ID": "job-42"},
        {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"},
    ],
)
def test_ranks_sharing_a_rendezvous_are_one_run(env: dict[str, str]) -> None:
    procs = table(mk(10, ["python", "/a/t.py"]), mk(20, ["python", "/a/t.py"]))
    r = report(procs, {10: env, 20: env})
    assert r.groups == ()
    (run,) = r.distributed
    assert (run.pid, run.members, run.roots) == (10, (10, 20), (10, 20))


def test_default_elastic_id_and_different_ports_are_not_one_run() -> None:
    procs = table(mk(10, ["python", "/a/t.py"]), mk(20, ["python", "/a/t.py"]))
    r = report(
        procs,
        {
            10: {"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            20: {"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "h", "MASTER_PORT": "2"},
        },
    )
    assert [pids(g) for g in r.groups] == [[10, 20]]


def test_scheduler_jobs_are_set_apart() -> None:
    procs = table(mk(10, ["python", "/a/t.py"]), mk(20, ["python", "/a/t.py"]), mk(30, ["python", "/a/t.py"]))
    r = report(procs, {10: {"SLURM_JOB_ID": "7"}, 20: {"PBS_JOBID": "8.pbs"}})
    assert r.groups == ()  # one run left outside the scheduler: not a duplicate of anything
    assert sorted((s.instance.pid, s.scheduler, s.job_id) for s in r.scheduler_managed) == [
        (10, "slurm", "7"),
        (20, "pbs", "8.pbs"),
    ]


def test_unreadable_environment_is_unknown_not_an_error() -> None:
    procs = table(mk(10, ["python", "/a/t.py"], uid=1), mk(20, ["python", "/a/t.py"], uid=2))
    r = report(procs, {10: None, 20: None})
    assert [pids(g) for g in r.groups] == [[10, 20]]


def test_environment_is_only_read_for_candidates() -> None:
    asked: list[int] = []
    procs = table(
        mk(10, ["python", "/a/t.py"]),
        mk(11, ["python", "/a/t.py"], ppid=10),
        mk(20, ["python", "/b/u.py"]),
        mk(30, ["python", "/c/v.py"]),
        mk(31, ["python", "/c/v.py"]),
        mk(40, ["bash"]),
    )
    report(procs, asked=asked)
    assert sorted(asked) == [30, 31]


def test_module_and_code_identities() -> None:
    procs = table(
        mk(10, ["python", "-m", "pkg.train"]),
        mk(20, ["python", "-u", "-m", "pkg.train", "--x"]),
        mk(30, ["python", "-c", "work()"]),
        mk(40, ["python", "-c", "work()"]),
        mk(50, ["python", "-c", "work()", "arg"]),
        mk(60, ["python"]),
        mk(70, ["python"]),
    )
    r = report(procs)
    assert sorted((g.identity.kind, tuple(pids(g))) for g in r.groups) == [
        ("code", (30, 40)),
        ("module", (10, 20)),
    ]
    by_kind = {g.identity.kind: group_json(g) for g in r.groups}
    assert by_kind["module"]["script"] == "pkg.train"
    assert by_kind["code"]["script"] == "work()"


def test_script_filter_and_min_instances() -> None:
    procs = table(
        mk(10, ["python", "/a/t.py"]),
        mk(20, ["python", "/a/t.py"]),
        mk(30, ["python", "/b/u.py"]),
        mk(40, ["python", "/b/u.py"]),
    )
    r = report(procs, script=ScriptIdentity("file", "/b/u.py", "/b/u.py"))
    assert [pids(g) for g in r.groups] == [[30, 40]]
    r = report(
        table(mk(10, ["python", "/a/t.py"])),
        min_instances=1,
        script=ScriptIdentity("file", "/a/t.py", "/a/t.py"),
    )
    assert [pids(g) for g in r.groups] == [[10]]


def test_json_schema() -> None:
    (g,) = report(table(mk(10, ["python", "/a/t.py", "x"]), mk(20, ["python", "/a/t.py"]))).groups
    # The identity key and its parts travel with the group (issue 13: --json carries the key).
    assert group_json(g) == {
        "script": "/a/t.py",
        "kind": "file",
        "key": "/a/t.py",
        "parts": {},
        "instances": [
            {"pid": 10, "create_time": 10.0, "cwd": "/cwd/10", "args": ["x"], "username": "u1000"},
            {"pid": 20, "create_time": 20.0, "cwd": "/cwd/20", "args": [], "username": "u1000"},
        ],
    }


def test_identity_for_command_resolves_against_the_given_cwd(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("")
    (tmp_path / "link.py").symlink_to(tmp_path / "t.py")
    real = os.path.realpath(tmp_path / "t.py")
    assert identity_for_command(["python3", "-u", "t.py"], str(tmp_path)) == ScriptIdentity(
        "file", real, real
    )
    assert identity_for_command(["env", "python3", "link.py"], str(tmp_path)).key == real  # type: ignore[union-attr]
    # A program that is not Python is identified by its command (issue 13): executable + args + cwd.
    cmd = identity_for_command(["bash", "t.py"], str(tmp_path))
    assert cmd is not None and cmd.kind == "command"
    assert dict(cmd.parts) == {
        "executable": os.path.realpath(shutil.which("bash") or ""),
        "name": "bash",
        "args": ("t.py",),
        "cwd": os.path.realpath(tmp_path),
    }
    assert identity_for_command(["bash", "u.py"], str(tmp_path)) != cmd
    assert identity_for_command(["no-such-program-here"], str(tmp_path)) is None
    assert identity_for_path("t.py", str(tmp_path)).key == real


# ---------------------------------------------------------------------------------------------- real processes

SLEEPER = """
import sys, time
print("ready", flush=True)
time.sleep(600)
"""


def write(path: Path, code: str = SLEEPER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(extra)
    return env


def start(
    procs: ProcStarter, argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    p = procs.popen(argv, cwd=cwd, env=env or clean_env(), stdout=subprocess.PIPE, start_new_session=True)
    procs.wait_ready(p)
    time.sleep(0.03)  # let the next process start in a later clock tick, so "oldest" is unambiguous
    return p


def own_snapshot(*popens: subprocess.Popen[bytes], extra: tuple[int, ...] = ()) -> Snapshot:
    """The live table restricted to the processes this test started and their descendants."""
    snap = process_snapshot()
    keep = {p.pid for p in popens} | set(extra)
    changed = True
    while changed:
        changed = False
        for p in snap:
            if p.ppid in keep and p.pid not in keep:
                keep.add(p.pid)
                changed = True
    return Snapshot(MappingProxyType({pid: snap[pid] for pid in keep if pid in snap}), snap.time)


def test_same_script_relative_and_absolute_from_two_folders(procs: ProcStarter, tmp_path: Path) -> None:
    script = write(tmp_path / "proj" / "train.py")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "proj" / "alias.py").symlink_to(script)
    a = start(procs, [PY, "train.py", "--lr", "1"], tmp_path / "proj")
    b = start(procs, [PY, "-u", str(script), "--lr", "2"], tmp_path / "elsewhere")
    c = start(procs, [PY, "../proj/alias.py"], tmp_path / "elsewhere")
    groups = find_duplicates(script=script)
    assert len(groups) == 1
    (g,) = groups
    assert g.identity.key == os.path.realpath(script)
    assert [i.pid for i in g.instances] == [a.pid, b.pid, c.pid]
    assert g.instances[0].cwd == os.path.realpath(tmp_path / "proj")
    assert g.instances[1].cwd == os.path.realpath(tmp_path / "elsewhere")
    assert [i.args for i in g.instances] == [("--lr", "1"), ("--lr", "2"), ()]
    # The whole-table search finds the same group.
    whole = [x for x in find_duplicates(own_snapshot(a, b, c))]
    assert [[i.pid for i in x.instances] for x in whole] == [[a.pid, b.pid, c.pid]]


def test_resolving_args_from_our_cwd_would_get_it_wrong(procs: ProcStarter, tmp_path: Path) -> None:
    # The common approach (Path(arg).resolve() in the observer's cwd) can't see that these are one script.
    script = write(tmp_path / "p" / "job.py")
    (tmp_path / "q").mkdir()
    a = start(procs, [PY, "job.py"], tmp_path / "p")
    b = start(procs, [PY, "../p/job.py"], tmp_path / "q")
    naive = {str(Path(arg).resolve()) for p in (a, b) for arg in process_snapshot()[p.pid].cmdline[1:]}
    assert str(script.resolve()) not in naive
    (g,) = find_duplicates(own_snapshot(a, b))
    assert [i.pid for i in g.instances] == [a.pid, b.pid]


def test_same_file_name_in_two_folders_is_not_a_duplicate(procs: ProcStarter, tmp_path: Path) -> None:
    one = write(tmp_path / "one" / "train.py")
    two = write(tmp_path / "two" / "train.py")
    a = start(procs, [PY, "train.py"], tmp_path / "one")
    b = start(procs, [PY, "train.py"], tmp_path / "two")
    assert find_duplicates(script=one) == []
    assert find_duplicates(script=two) == []
    assert find_duplicates(own_snapshot(a, b)) == []
    assert [i.pid for i in find_instances(one)] == [a.pid]


WORKERS = """
import multiprocessing as mp, os, subprocess, sys, time

def work():
    time.sleep(600)

if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        time.sleep(600)
    forked = os.fork()
    if forked == 0:
        time.sleep(600)
        os._exit(0)
    spawned = mp.get_context("spawn").Process(target=work, daemon=True)
    spawned.start()
    child = subprocess.Popen([sys.executable, __file__, "--child"])
    print(forked, spawned.pid, child.pid, flush=True)
    print("ready", flush=True)
    time.sleep(600)
"""


def start_workers(procs: ProcStarter, script: Path, cwd: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    p = procs.popen(
        [PY, str(script)], cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, start_new_session=True
    )
    assert p.stdout is not None
    kids = [int(x) for x in p.stdout.readline().split()]
    for k in kids:
        procs.track(k)
    procs.wait_ready(p)
    time.sleep(0.03)
    return p, kids


def test_forked_and_spawned_workers_are_not_duplicates(procs: ProcStarter, tmp_path: Path) -> None:
    script = write(tmp_path / "w" / "loader.py", WORKERS)
    a, kids_a = start_workers(procs, script, tmp_path / "w")
    wait_for(lambda: all(k in process_snapshot() for k in kids_a))
    assert find_duplicates(script=script) == []
    assert [i.pid for i in find_instances(script)] == [a.pid]
    # A second run with its own workers: exactly the two parents form the group.
    b, _ = start_workers(procs, script, tmp_path / "w")
    (g,) = find_duplicates(script=script)
    assert [i.pid for i in g.instances] == [a.pid, b.pid]


FAKE_TORCHRUN = """
import os, subprocess, sys, time
script = sys.argv[1]
kids = [subprocess.Popen([sys.executable, "-u", script], env=dict(os.environ, LOCAL_RANK=str(r), RANK=str(r)),
                         stdout=subprocess.PIPE) for r in range(2)]
for k in kids:
    k.stdout.readline()
print(" ".join(str(k.pid) for k in kids), flush=True)
print("ready", flush=True)
time.sleep(600)
"""


def test_ranks_with_a_shared_launcher_are_not_duplicates(procs: ProcStarter, tmp_path: Path) -> None:
    script = write(tmp_path / "d" / "train.py")
    launcher = write(tmp_path / "bin" / "torchrun", FAKE_TORCHRUN)  # named like the real console script
    p = procs.popen(
        [PY, str(launcher), str(script)],
        cwd=tmp_path / "d",
        env=clean_env(),
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert p.stdout is not None
    ranks = [int(x) for x in p.stdout.readline().split()]
    for r in ranks:
        procs.track(r)
    procs.wait_ready(p)
    time.sleep(0.03)
    assert find_duplicates(script=script) == []
    (run,) = find_instances(script)
    assert (run.pid, run.launcher, sorted(run.members)) == (p.pid, "torchrun", sorted(ranks))
    # An independent run next to the launch is a duplicate of the launch (as one run).
    lone = start(procs, [PY, "train.py"], tmp_path / "d")
    (g,) = find_duplicates(script=script)
    assert [i.pid for i in g.instances] == [p.pid, lone.pid]


@pytest.mark.parametrize(
    "shared",
    [
        {"TORCHELASTIC_RUN_ID": "run-{uid}"},
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "{port}"},
    ],
)
def test_ranks_sharing_run_id_or_master_are_not_duplicates(
    procs: ProcStarter, tmp_path: Path, shared: dict[str, str]
) -> None:
    script = write(tmp_path / "e" / "train.py")
    env = {k: v.format(uid=tmp_path.name, port=str(20000 + os.getpid() % 10000)) for k, v in shared.items()}
    a = start(procs, [PY, "train.py"], tmp_path / "e", clean_env(RANK="0", **env))
    b = start(procs, [PY, str(script)], tmp_path, clean_env(RANK="1", **env))
    assert find_duplicates(script=script) == []
    report = duplicate_report(script=script)
    (run,) = report.distributed
    assert sorted(run.members) == sorted([a.pid, b.pid])


def test_scheduler_jobs_are_not_duplicates(procs: ProcStarter, tmp_path: Path) -> None:
    script = write(tmp_path / "s" / "array.py")
    a = start(procs, [PY, "array.py"], tmp_path / "s", clean_env(SLURM_JOB_ID="1001"))
    b = start(procs, [PY, "array.py"], tmp_path / "s", clean_env(SLURM_JOB_ID="1002"))
    report = duplicate_report(script=script)
    assert report.groups == ()
    assert sorted((s.instance.pid, s.job_id) for s in report.scheduler_managed) == [
        (a.pid, "1001"),
        (b.pid, "1002"),
    ]
    res = terminate_duplicates(script=script, grace=1)
    assert res.results == () and res.ended == ()
    assert not is_gone(a.pid) and not is_gone(b.pid)


RANK_SCRIPT = """
import os, time
here = os.path.dirname(os.path.abspath(__file__))
name = os.path.basename(__file__)[:-3]
tmp = os.path.join(here, "ranks", f".{os.getpid()}")
with open(tmp, "w") as f:
    f.write(name)
os.rename(tmp, os.path.join(here, "ranks", str(os.getpid())))
time.sleep(600)
"""


class Torchruns:
    """Three real torchrun launches, started once for the module: a.py with 2 ranks (the venv's torchrun),
    a.py with 1 rank (python -m torch.distributed.run) and b.py with 1 rank (torchrun). torch elastic starts
    each rank in a session of its own, so killing a launcher's group misses them: every rank writes its pid
    into ranks/, and teardown SIGKILLs the ranks (and anything else under the launchers) before the launchers.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.a = write(root / "a.py", RANK_SCRIPT)
        self.b = write(root / "b.py", RANK_SCRIPT)
        (root / "ranks").mkdir()
        self.launchers: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        torchrun = str(Path(PY).with_name("torchrun"))
        for argv in (
            [torchrun, "--standalone", "--nproc-per-node", "2", "a.py"],
            [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "a.py"],
            [torchrun, "--standalone", "--nproc-per-node", "1", "b.py"],
        ):
            self.launchers.append(
                subprocess.Popen(
                    argv,
                    cwd=self.root,
                    env=clean_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        wait_for(lambda: len(self.ranks()) == 4, timeout=90)

    def ranks(self, script: str | None = None) -> list[int]:
        """Pids of the ranks that are up (of `script`, "a" or "b", when given)."""
        out = []
        for f in (self.root / "ranks").iterdir():
            if f.name.isdigit() and (script is None or f.read_text() == script):
                out.append(int(f.name))
        return sorted(out)

    def ranks_of(self, launcher: subprocess.Popen[bytes]) -> list[int]:
        return sorted(p.pid for p in process_snapshot() if p.ppid == launcher.pid and p.pid in self.ranks())

    def close(self) -> None:
        snap = process_snapshot()
        mine = {p.pid for p in self.launchers}
        under = set(self.ranks())
        changed = True
        while changed:  # everything below the launchers, whatever session it is in
            changed = False
            for p in snap:
                if (p.ppid in mine or p.ppid in under) and p.pid not in under and p.pid not in mine:
                    under.add(p.pid)
                    changed = True
        for pid in under:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for p in self.launchers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)


@pytest.fixture(scope="module")
def torchruns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Torchruns]:
    pytest.importorskip("torch")
    if not Path(PY).with_name("torchrun").exists():
        pytest.skip("no torchrun next to the test interpreter")
    saved = {v: os.environ.pop(v) for v in LAUNCH_VARS if v in os.environ}  # module scope: no monkeypatch
    t = Torchruns(tmp_path_factory.mktemp("torchruns"))
    try:
        t.start()
        yield t
    finally:
        t.close()
        os.environ.update(saved)


def test_real_torchrun_ranks_are_one_run(torchruns: Torchruns) -> None:
    t1, t2, _ = torchruns.launchers
    runs = find_instances(torchruns.a)
    assert [(r.pid, r.launcher) for r in runs] == [(t1.pid, "torchrun"), (t2.pid, "torch.distributed.run")]
    assert sorted(runs[0].members) == torchruns.ranks_of(t1) and len(runs[0].members) == 2
    assert sorted(runs[1].members) == torchruns.ranks_of(t2) and len(runs[1].members) == 1


def test_real_torchrun_same_script_is_one_group_other_script_none(torchruns: Torchruns) -> None:
    t1, t2, t3 = torchruns.launchers
    snap = own_snapshot(*torchruns.launchers, extra=tuple(torchruns.ranks()))
    report = duplicate_report(snap)
    (g,) = report.groups  # torchrun a.py twice: one group; torchrun b.py: a job of its own
    assert g.identity.key == os.path.realpath(torchruns.a) and g.identity.launcher is None
    assert [i.pid for i in g.instances] == [t1.pid, t2.pid]
    from procguard.core.duplicates import recheck_victims

    assert recheck_victims(g.identity, g.instances) == (
        list(g.instances),
        [],
    )  # launchers and ranks unchanged
    assert find_duplicates(script=torchruns.b) == []
    (only_b,) = find_instances(torchruns.b)
    assert (only_b.pid, only_b.launcher) == (t3.pid, "torchrun")
    # The launcher is identified by its target; the ranks are never runs of their own.
    e = explain(t1.pid, snap)
    assert e.counted and e.identity is not None and e.identity.launcher == "torchrun"
    assert dict(e.identity.parts) == {"script": os.path.realpath(torchruns.a)}
    for rank in torchruns.ranks("a"):
        r = explain(rank, snap)
        assert (r.counted, r.code) == (False, "rank") and r.related in (t1.pid, t2.pid)
        assert r.identity is not None and r.identity.key == g.identity.key


def test_cli_explain_a_rank_and_a_launcher(torchruns: Torchruns) -> None:
    t1 = torchruns.launchers[0]
    rank = torchruns.ranks_of(t1)[0]
    cli = [PY, "-m", "procguard.core.cli", "dupes", "--explain"]
    out = subprocess.run(
        [*cli, str(rank), "--json"], capture_output=True, text=True, env=clean_env(), timeout=60
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["pid"], data["counted"], data["code"], data["related"]) == (rank, False, "rank", t1.pid)
    assert data["identity"]["kind"] == "file" and data["identity"]["key"] == os.path.realpath(torchruns.a)
    out = subprocess.run([*cli, str(t1.pid)], capture_output=True, text=True, env=clean_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "identity: launcher target (torchrun): script" in out.stdout
    assert f"script: {os.path.realpath(torchruns.a)}" in out.stdout and "counted: yes" in out.stdout


def test_terminate_keeps_oldest_and_touches_nothing_else(procs: ProcStarter, tmp_path: Path) -> None:
    script = write(tmp_path / "k" / "train.py")
    other = write(tmp_path / "other" / "train.py")  # same name, another file: a bystander
    a = start(procs, [PY, "train.py"], tmp_path / "k")
    bystander = start(procs, [PY, "train.py"], tmp_path / "other")
    c = start(procs, [PY, str(script)], tmp_path)
    d = start(procs, [PY, "../k/train.py"], tmp_path / "other")
    dry = terminate_duplicates("oldest", script, grace=5, dry_run=True)
    assert [i.pid for i in dry.ended] == [c.pid, d.pid] and dry.results == ()
    assert {m.pid for m in dry.would_end} == {c.pid, d.pid}
    res = terminate_duplicates("oldest", script, grace=5)
    assert res.skipped_reason is None and res.ok
    assert [i.pid for i in res.kept] == [a.pid]
    assert {r.pid: r.outcome for r in res.results} == {c.pid: Outcome.EXITED, d.pid: Outcome.EXITED}
    assert is_gone(c.pid) and is_gone(d.pid)
    assert not is_gone(a.pid) and not is_gone(bystander.pid)
    assert find_duplicates(script=other) == []


def test_terminate_keeps_newest_with_its_tree(procs: ProcStarter, tmp_path: Path) -> None:
    script = write(tmp_path / "n" / "loader.py", WORKERS)
    a, kids_a = start_workers(procs, script, tmp_path / "n")
    b, kids_b = start_workers(procs, script, tmp_path / "n")
    res = terminate_duplicates("newest", script, grace=5)
    assert [i.pid for i in res.kept] == [b.pid]
    ended = {r.pid for r in res.results}
    assert a.pid in ended and set(kids_a) <= ended  # the run's workers went with it
    assert all(r.ok for r in res.results)
    assert is_gone(a.pid) and all(is_gone(k) for k in kids_a)
    assert not is_gone(b.pid) and not any(is_gone(k) for k in kids_b)


def test_terminate_inside_a_launch_does_nothing(
    procs: ProcStarter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = write(tmp_path / "x" / "t.py")
    a = start(procs, [PY, "t.py"], tmp_path / "x")
    b = start(procs, [PY, "t.py"], tmp_path / "x")
    monkeypatch.setenv("LOCAL_RANK", "0")
    res = terminate_duplicates(script=script, grace=1)
    assert res.skipped_reason is not None and "LOCAL_RANK" in res.skipped_reason
    assert not is_gone(a.pid) and not is_gone(b.pid)
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_JOB_ID", "55")
    res = terminate_duplicates(script=script, grace=1)
    assert res.skipped_reason is not None and "SLURM_JOB_ID" in res.skipped_reason
    assert not is_gone(b.pid)


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")
def test_other_users_runs_are_seen_but_never_ended(procs: ProcStarter, tmp_path: Path) -> None:
    script = write(tmp_path / "r" / "t.py")
    tmp_path.chmod(0o755)
    (tmp_path / "r").chmod(0o755)
    script.chmod(0o644)
    a = start(procs, [PY, str(script)], tmp_path)
    b = start(procs, [PY, str(script)], tmp_path / "r")
    c = start(procs, [PY, "t.py"], tmp_path / "r")  # relative: nobody can't read root's cwd
    code = textwrap.dedent(f"""
        import json, sys
        from procguard.core.duplicates import find_duplicates, terminate_duplicates
        g = find_duplicates(script={str(script)!r})
        r = terminate_duplicates(script={str(script)!r}, grace=1)
        print(json.dumps({{"groups": [[i.pid for i in x.instances] for x in g],
                          "ended": [i.pid for i in r.ended], "skipped": [i.pid for i, _ in r.skipped]}}))
    """)
    out = subprocess.run([*NOBODY, PY, "-c", code], env=clean_env(), capture_output=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr.decode()
    data = json.loads(out.stdout)
    # Absolute paths need no cwd; the relative one can't be resolved, so it is left out rather than guessed.
    assert data["groups"] == [[a.pid, b.pid]]
    assert data["ended"] == [] and data["skipped"] == [b.pid]
    assert not any(is_gone(p.pid) for p in (a, b, c))


def test_check_before_run_policies(procs: ProcStarter, tmp_path: Path) -> None:
    script = write(tmp_path / "cb" / "train.py")
    assert check_before_run([PY, "train.py"], str(tmp_path / "cb"), "abort") == (True, "")
    a = start(procs, [PY, "train.py"], tmp_path / "cb")
    ok, msg = check_before_run([PY, "-u", str(script)], "/", "abort")
    assert not ok and f"pid {a.pid}" in msg and "already running" in msg
    ok, msg = check_before_run([PY, "train.py"], str(tmp_path / "cb"), "ignore")
    assert ok and f"pid {a.pid}" in msg
    assert check_before_run(["bash", "-c", "true"], str(tmp_path), "abort") == (True, "")
    ok, msg = check_before_run(["env", PY, "train.py"], str(tmp_path / "cb"), "terminate", grace=5)
    assert ok and "ended 1" in msg
    assert is_gone(a.pid)


def test_cli_dupes_json_and_terminate(procs: ProcStarter, tmp_path: Path) -> None:
    script = write(tmp_path / "cli" / "train.py")
    a = start(procs, [PY, "train.py", "--seed", "1"], tmp_path / "cli")
    b = start(procs, [PY, "train.py", "--seed", "2"], tmp_path / "cli")
    cli = [PY, "-m", "procguard.core.cli", "dupes"]
    out = subprocess.run(
        [*cli, "--json", "--script", str(script)], capture_output=True, env=clean_env(), timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()
    data = json.loads(out.stdout)
    real = os.path.realpath(script)
    assert data == [
        {
            "script": real,
            "kind": "file",
            "key": real,
            "parts": {"script": real},
            "instances": [
                {
                    "pid": a.pid,
                    "create_time": data[0]["instances"][0]["create_time"],
                    "cwd": os.path.realpath(tmp_path / "cli"),
                    "args": ["--seed", "1"],
                    "username": data[0]["instances"][0]["username"],
                },
                {
                    "pid": b.pid,
                    "create_time": data[0]["instances"][1]["create_time"],
                    "cwd": os.path.realpath(tmp_path / "cli"),
                    "args": ["--seed", "2"],
                    "username": data[0]["instances"][1]["username"],
                },
            ],
        }
    ]
    assert data[0]["instances"][0]["create_time"] < data[0]["instances"][1]["create_time"]
    bad = subprocess.run([*cli, "--keep", "newest"], capture_output=True, env=clean_env(), timeout=60)
    assert bad.returncode == 2 and b"--terminate" in bad.stderr
    out = subprocess.run(
        [*cli, "--script", str(script), "--terminate", "--keep", "newest", "--grace", "5", "--json"],
        capture_output=True,
        env=clean_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()
    data = json.loads(out.stdout)
    assert data["kept"] == [b.pid] and data["ended"] == [a.pid]
    assert [r["outcome"] for r in data["results"]] == ["exited"]
    assert is_gone(a.pid) and not is_gone(b.pid)


def test_cli_dupes_text(procs: ProcStarter, tmp_path: Path) -> None:
    script = write(tmp_path / "txt" / "train.py")
    a = start(procs, [PY, "train.py"], tmp_path / "txt")
    b = start(procs, [PY, "train.py"], tmp_path / "txt")
    out = subprocess.run(
        [PY, "-m", "procguard.core.cli", "dupes", "--script", str(script)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert out.returncode == 0
    assert os.path.realpath(script) in out.stdout and str(a.pid) in out.stdout and str(b.pid) in out.stdout
    out = subprocess.run(
        [PY, "-m", "procguard.core.cli", "dupes", "--script", str(tmp_path / "nope.py")],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1


def test_snapshot_create_time_matches_instances(procs: ProcStarter, tmp_path: Path) -> None:
    script = write(tmp_path / "ct" / "t.py")
    a = start(procs, [PY, "t.py"], tmp_path / "ct")
    (inst,) = find_instances(script)
    assert inst.create_time == process_snapshot()[a.pid].create_time


LOCKER = """
import sys, time
from procguard.core.locks import SingleInstanceLock
SingleInstanceLock(sys.argv[1]).acquire()
print("ready", flush=True)
time.sleep(600)
"""


def test_enrich_fills_locks_and_gpu_memory(procs: ProcStarter, tmp_path: Path) -> None:
    from procguard.core.duplicates import enrich
    from procguard.core.gpu import GpuProcess, GpuSnapshot

    script = write(tmp_path / "en" / "train.py", LOCKER)
    lock = str(tmp_path / "en" / "a.lock")
    a = start(procs, [PY, "train.py", lock], tmp_path / "en")
    b, kids_b = start_workers(
        procs, write(tmp_path / "en" / "w" / "train.py", WORKERS), tmp_path / "en" / "w"
    )
    c = start(procs, [PY, "train.py", str(tmp_path / "en" / "c.lock")], tmp_path / "en")
    groups = find_duplicates(script=script)
    gpu = GpuSnapshot(
        True,
        None,
        (),
        (GpuProcess(a.pid, 0, 1000), GpuProcess(kids_b[0], 0, 7), GpuProcess(c.pid, 1, None)),
        time.time(),
    )
    (g,) = enrich(groups, process_snapshot(), gpu)
    assert [i.pid for i in g.instances] == [a.pid, c.pid]
    assert g.instances[0].locks == (os.path.realpath(lock),)
    assert g.instances[0].gpu_memory == 1000 and g.instances[1].gpu_memory == 0
    # A run's tree counts: b's forked worker holds b's GPU memory.
    (gw,) = enrich(
        [DuplicateGroup(g.identity, tuple(find_instances(script.parent / "w" / "train.py")))],
        process_snapshot(),
        gpu,
    )
    assert gw.instances[0].pid == b.pid and gw.instances[0].gpu_memory == 7
    # No GPU snapshot: unknown, not zero.
    (g2,) = enrich(groups, process_snapshot(), None, held=())
    assert all(i.gpu_memory is None and i.locks == () for i in g2.instances)


def test_procguard_run_on_duplicate(procs: ProcStarter, tmp_path: Path) -> None:
    write(
        tmp_path / "run" / "train.py",
        """
        import sys, time
        print("ready", flush=True)
        if "--stay" in sys.argv:
            time.sleep(600)
    """,
    )
    a = start(procs, [PY, "train.py", "--stay"], tmp_path / "run")
    run = [PY, "-m", "procguard.core.cli", "run"]
    out = subprocess.run(
        [*run, "--on-duplicate", "abort", "--", PY, "train.py"],
        cwd=tmp_path / "run",
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert out.returncode == 3
    assert "already running" in out.stderr and f"pid {a.pid}" in out.stderr
    assert "ready" not in out.stdout and not is_gone(a.pid)
    # terminate: the old run ends first, then the command runs.
    out = subprocess.run(
        [*run, "--on-duplicate", "terminate", "--grace", "5", "--", PY, "train.py"],
        cwd=tmp_path / "run",
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "ready" in out.stdout and "ended 1 other run" in out.stderr
    assert is_gone(a.pid)


# ---------------------------------------------------------------------------------------------- issue 13: what a job is

PG = str(Path(PY).with_name("procguard"))  # the real console script, as users start it


def children_of(pid: int) -> list[Proc]:
    return [p for p in process_snapshot() if p.ppid == pid]


class PgRuns:
    """`procguard run -- CMD` for real. Its child (the job) runs in a session of its own, so at teardown each
    job's group is SIGKILLed (while the job is still the launcher's child: the group can't be someone else's),
    before `procs` kills the launchers."""

    def __init__(self, procs: ProcStarter) -> None:
        self.procs = procs
        self.jobs: list[tuple[int, int]] = []  # (launcher pid, job pid)

    def start(self, cmd: list[str], cwd: Path, ready: bool = False) -> tuple[subprocess.Popen[bytes], int]:
        """Returns (the launcher, its child: the job)."""
        p = self.procs.popen(
            [PG, "run", "--", *cmd], cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, start_new_session=True
        )
        # Until it has exec'd, the child is a fork of the launcher, with the launcher's command line.
        kids = wait_for(
            lambda: [k for k in children_of(p.pid) if k.cmdline and "run" not in k.cmdline[1:3]], timeout=60
        )
        child = kids[0].pid  # type: ignore[index]
        self.jobs.append((p.pid, child))
        self.procs.track(child)
        if ready:
            self.procs.wait_ready(p)
        time.sleep(0.03)
        return p, child

    def close(self) -> None:
        for launcher, job in self.jobs:
            st = read_proc(job)
            if st is not None and st.ppid == launcher and st.pgid == job:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job, signal.SIGKILL)


@pytest.fixture
def pg_runs(procs: ProcStarter) -> Iterator[PgRuns]:
    runs = PgRuns(procs)
    try:
        yield runs
    finally:
        runs.close()


def test_procguard_run_is_not_a_run_its_command_is(pg_runs: PgRuns, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    started = [pg_runs.start(["sleep", s], tmp_path / "w") for s in ("600", "610", "620")]
    launchers = [p for p, _ in started]
    # Three different commands under three `procguard run` launchers: nothing is a duplicate.
    assert duplicate_report(own_snapshot(*launchers)).groups == ()
    e = explain(launchers[0].pid)
    assert (e.counted, e.code, e.related, e.identity) == (False, "own", started[0][1], None)
    from procguard.core.identity import is_procguard_run, procguard_run_of

    snap = process_snapshot()
    assert is_procguard_run(snap[launchers[0].pid]) and not is_procguard_run(snap[started[0][1]])
    assert procguard_run_of(snap[started[0][1]], snap.procs) == launchers[0].pid
    assert procguard_run_of(snap[launchers[0].pid], snap.procs) is None
    job = explain(started[0][1])
    assert job.counted and job.identity is not None and job.identity.kind == "command"
    assert dict(job.identity.parts)["args"] == ("600",)
    # The same command twice is one job twice.
    again, child = pg_runs.start(["sleep", "600"], tmp_path / "w")
    (g,) = duplicate_report(own_snapshot(*launchers, again)).groups
    assert [i.pid for i in g.instances] == [started[0][1], child]


def test_procguard_run_of_the_same_python_twice_is_one_group(pg_runs: PgRuns, tmp_path: Path) -> None:
    script = write(tmp_path / "pr" / "train.py")
    a, ja = pg_runs.start([PY, "train.py", "--lr", "1"], tmp_path / "pr", ready=True)
    b, jb = pg_runs.start([PY, str(script), "--lr", "2"], tmp_path, ready=True)
    (g,) = find_duplicates(own_snapshot(a, b))
    assert g.identity.key == os.path.realpath(script)
    assert [i.pid for i in g.instances] == [ja, jb]  # the jobs, not the launchers
    assert [i.pid for i in find_instances(script)] == [ja, jb]


def test_procguards_own_cli_and_app_are_never_counted(
    procs: ProcStarter, pg_runs: PgRuns, tmp_path: Path
) -> None:
    from procguard.core.identity import classify, own_process

    bin_dir = Path(PY).parent
    for argv, own in (
        (["python3", str(bin_dir / "procguard"), "ps"], "cli"),
        (["python3", str(bin_dir / "procguard"), "run", "--", "x"], "run"),
        (["python3", str(bin_dir / "procguard-tui")], "app"),
        (["python3", "-m", "procguard.tui"], "app"),
        (["python3", "-m", "procguard.core.cli", "dupes"], "cli"),
    ):
        c = classify(mk(os.getpid(), argv))  # real bin/ wrappers, read from disk
        assert (c.identity, c.code, c.own) == (None, "own", own), argv
        assert own_process(mk(os.getpid(), argv)) is not None
    # The benchmark harness of this source tree is procguard's own too (its load processes are not).
    root = Path(__file__).resolve().parent.parent
    helper = procs.python("import time\nprint('ready', flush=True)\ntime.sleep(600)", cwd=root)
    assert classify(mk(helper.pid, ["python3", "-m", "bench", "--quick"])).own == "bench"
    assert classify(mk(helper.pid, ["python3", "-m", "benchmarks"])).code == "job"
    # Real processes: two identical `procguard run` launchers are no group (their commands differ).
    a, _ = pg_runs.start(["sleep", "601"], tmp_path)
    b, _ = pg_runs.start(["sleep", "602"], tmp_path)
    assert duplicate_report(own_snapshot(a, b)).groups == ()
    out = subprocess.run(
        [PY, "-m", "procguard.core.cli", "dupes", "--explain", str(a.pid), "--json"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["code"] == "own"


CONSOLE_WRAPPER = """#!{py}
# -*- coding: utf-8 -*-
import re
import sys
from svcmod.cli import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""

SVC = """
import sys, time

def main():
    print("ready", flush=True)
    time.sleep(600)
"""


def test_console_script_is_entry_point_args_and_cwd(procs: ProcStarter, tmp_path: Path) -> None:
    write(tmp_path / "lib" / "svcmod" / "__init__.py", "")
    write(tmp_path / "lib" / "svcmod" / "cli.py", SVC)
    wrapper = tmp_path / "bin" / "svc"
    wrapper.parent.mkdir()
    wrapper.write_text(CONSOLE_WRAPPER.format(py=PY))
    wrapper.chmod(0o755)
    (tmp_path / "w").mkdir()
    env = clean_env(PYTHONPATH=str(tmp_path / "lib"))
    a1 = start(procs, [str(wrapper), "app:a"], tmp_path / "w", env)
    a2 = start(procs, [str(wrapper), "app:a"], tmp_path / "w", env)
    b = start(procs, [str(wrapper), "app:b"], tmp_path / "w", env)
    elsewhere = start(procs, [str(wrapper), "app:a"], tmp_path, env)
    (g,) = find_duplicates(own_snapshot(a1, a2, b, elsewhere))
    assert g.identity.kind == "console" and [i.pid for i in g.instances] == [a1.pid, a2.pid]
    assert dict(g.identity.parts) == {
        "entry point": "svcmod.cli:main",
        "program": os.path.realpath(wrapper),
        "args": ("app:a",),
        "cwd": os.path.realpath(tmp_path / "w"),
    }
    assert explain(b.pid).reason == "the only run of this job"


def test_executable_zipapp_is_a_console_script(procs: ProcStarter, tmp_path: Path) -> None:
    import zipapp

    write(tmp_path / "src" / "__main__.py", SVC + "\nmain()\n")
    app = tmp_path / "app.pyz"
    zipapp.create_archive(tmp_path / "src", app, interpreter=PY)
    a = start(procs, [str(app), "--port", "1"], tmp_path)
    b = start(procs, [str(app), "--port", "1"], tmp_path)
    c = start(procs, [str(app), "--port", "2"], tmp_path)
    (g,) = find_duplicates(own_snapshot(a, b, c))
    assert g.identity.kind == "console" and [i.pid for i in g.instances] == [a.pid, b.pid]


def test_python_m_module_twice_is_one_group(procs: ProcStarter, tmp_path: Path) -> None:
    write(tmp_path / "m" / "pkg" / "__init__.py", "")
    write(tmp_path / "m" / "pkg" / "mod.py")
    a = start(procs, [PY, "-m", "pkg.mod", "--x", "1"], tmp_path / "m")
    b = start(procs, [PY, "-u", "-m", "pkg.mod", "--x", "2"], tmp_path / "m")
    (g,) = find_duplicates(own_snapshot(a, b))
    assert (g.identity.kind, g.identity.key) == ("module", f"pkg.mod@{os.path.realpath(tmp_path / 'm')}")
    assert [i.pid for i in g.instances] == [a.pid, b.pid]


EXECS = """
import os, sys, time
print("ready", flush=True)
if sys.stdin.readline():
    os.execv(sys.executable, [sys.executable, sys.argv[1]])
time.sleep(600)
"""


def test_terminate_skips_a_victim_whose_identity_changed(procs: ProcStarter, tmp_path: Path) -> None:
    from procguard.core.duplicates import recheck_victims

    script = write(tmp_path / "x" / "job.py", EXECS)
    other = write(tmp_path / "x" / "other.py")
    keeper = start(procs, [PY, "job.py", str(other)], tmp_path / "x")
    changes = procs.popen(
        [PY, "job.py", str(other)],
        cwd=tmp_path / "x",
        env=clean_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    procs.wait_ready(changes)
    time.sleep(0.03)
    same = start(procs, [PY, "job.py", str(other)], tmp_path / "x")
    snap = process_snapshot()
    dry = terminate_duplicates("oldest", script, grace=5, snapshot=snap, dry_run=True)
    assert [i.pid for i in dry.ended] == [changes.pid, same.pid]
    # Between the dialog and the action, one victim execs into another program (same pid, same start time).
    assert changes.stdin is not None
    changes.stdin.write(b"go\n")
    changes.stdin.flush()
    procs.wait_ready(changes)
    (g,) = dry.groups
    ok, changed = recheck_victims(g.identity, dry.ended)
    assert [i.pid for i in ok] == [same.pid] and [i.pid for i, _ in changed] == [changes.pid]
    assert "identity changed" in changed[0][1] and "other.py" in changed[0][1]
    late = start(procs, [PY, "job.py", str(other)], tmp_path / "x")  # not in the confirmed plan
    # The action, on the dialog's snapshot (as the app does): the changed run and the one that appeared since
    # are left alone, the unchanged one is ended.
    res = terminate_duplicates("oldest", script, grace=5, snapshot=snap, victims=dry.ended)
    assert [i.pid for i in res.ended] == [same.pid] and [r.pid for r in res.results] == [same.pid]
    assert [i.pid for i, _ in res.skipped] == [changes.pid]
    assert is_gone(same.pid)
    res = terminate_duplicates("oldest", script, grace=5, victims=dry.ended)
    skipped = dict((i.pid, why) for i, why in res.skipped)
    assert res.results == () and "not among the runs confirmed" in skipped[late.pid]
    assert not is_gone(changes.pid) and not is_gone(keeper.pid) and not is_gone(late.pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a job as nobody")
def test_root_never_ends_another_users_run_without_all_users(procs: ProcStarter) -> None:
    from tests.conftest import NOBODY as AS_NOBODY

    folder = Path(tempfile.mkdtemp(prefix="pg-dupes-"))  # nobody must reach the script: not under tmp_path
    try:
        folder.chmod(0o755)
        script = write(folder / "shared.py")
        script.chmod(0o644)
        mine = start(procs, [PY, str(script)], folder)
        theirs = start(procs, [*AS_NOBODY, PY, str(script)], folder)
        dry = terminate_duplicates("oldest", script, grace=5, dry_run=True)
        assert dry.ended == () and [(i.pid, i.username) for i, _ in dry.skipped] == [(theirs.pid, "nobody")]
        res = terminate_duplicates("oldest", script, grace=5)
        assert res.results == () and not is_gone(theirs.pid)
        cli = subprocess.run(
            [PY, "-m", "procguard.core.cli", "dupes", "--script", str(script), "--terminate", "--json"],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["skipped"][0]["username"] == "nobody" and not is_gone(theirs.pid)
        res = terminate_duplicates("oldest", script, grace=5, all_users=True)
        assert [r.pid for r in res.results] == [theirs.pid] and is_gone(theirs.pid)
        assert not is_gone(mine.pid)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")
def test_explain_as_another_user_says_why(procs: ProcStarter, tmp_path: Path) -> None:
    write(tmp_path / "o" / "t.py")
    p = start(procs, [PY, "t.py"], tmp_path / "o")  # relative: nobody can't read root's cwd
    out = subprocess.run(
        [*NOBODY, PY, "-m", "procguard.core.cli", "dupes", "--explain", str(p.pid), "--json"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["counted"], data["code"], data["identity"]) == (False, "other_user", None)
    assert "another user" in data["reason"]


def test_explain_workers_scheduler_jobs_and_helpers(procs: ProcStarter, tmp_path: Path) -> None:
    script = write(tmp_path / "ew" / "loader.py", WORKERS)
    a, (forked, spawned, child) = start_workers(procs, script, tmp_path / "ew")
    wait_for(lambda: all(k in process_snapshot() for k in (forked, spawned, child)))
    w = explain(forked)
    assert (w.counted, w.code, w.related) == (False, "worker", a.pid)
    assert explain(child).code == "worker"
    assert explain(spawned).code == "helper"  # multiprocessing's spawn child
    write(tmp_path / "ew" / "array.py")
    s = start(procs, [PY, "array.py"], tmp_path / "ew", clean_env(SLURM_JOB_ID="77"))
    sched = explain(s.pid)
    assert (sched.counted, sched.code) == (False, "scheduler") and "slurm job 77" in sched.reason
    with pytest.raises(LookupError):
        explain(2**22 + 1)


def test_cli_explain_text_is_sanitized(procs: ProcStarter, tmp_path: Path) -> None:
    write(tmp_path / "san" / "t.py")
    p = start(procs, [PY, "t.py", "\x1b]0;owned\x07", "line\nbreak"], tmp_path / "san")
    out = subprocess.run(
        [PY, "-m", "procguard.core.cli", "dupes", "--explain", str(p.pid)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout and "\\x1b]0;owned\\x07" in out.stdout
    assert "line\\nbreak" in out.stdout and "counted: yes, the only run of this job" in out.stdout
    js = subprocess.run(
        [PY, "-m", "procguard.core.cli", "dupes", "--explain", str(p.pid), "--json"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert json.loads(js.stdout)["cmdline"][-2:] == ["\x1b]0;owned\x07", "line\nbreak"]  # exact in JSON
    bad = subprocess.run(
        [PY, "-m", "procguard.core.cli", "dupes", "--explain", "x1"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------- settings

LAUNCHER = """
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, sys.argv[-1]], stdout=subprocess.PIPE) for _ in range(2)]
for k in kids:
    k.stdout.readline()
print(" ".join(str(k.pid) for k in kids), flush=True)
print("ready", flush=True)
time.sleep(600)
"""


def start_launcher(
    procs: ProcStarter, argv: list[str], cwd: Path
) -> tuple[subprocess.Popen[bytes], list[int]]:
    p = procs.popen(argv, cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, start_new_session=True)
    assert p.stdout is not None
    kids = [int(x) for x in p.stdout.readline().split()]
    for k in kids:
        procs.track(k)
    procs.wait_ready(p)
    time.sleep(0.03)
    return p, kids


def test_user_launchers_are_identified_by_their_target(
    procs: ProcStarter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from procguard.core.launchers import Settings

    launcher = write(tmp_path / "tools" / "mylaunch", LAUNCHER)
    write(tmp_path / "job" / "train.py")
    write(tmp_path / "job" / "eval.py")
    a, _ = start_launcher(procs, [PY, str(launcher), "--nodes", "2", "train.py"], tmp_path / "job")
    b, _ = start_launcher(procs, [PY, str(launcher), "--nodes", "4", "train.py"], tmp_path / "job")
    c, _ = start_launcher(procs, [PY, str(launcher), "--nodes", "2", "eval.py"], tmp_path / "job")
    snap = own_snapshot(a, b, c)
    # Unknown to procguard, the launcher is a script of its own: its 3 runs are "duplicates".
    plain = duplicate_report(snap, settings=Settings())
    assert [
        (g.identity.key, len(g.instances))
        for g in plain.groups
        if g.identity.key == os.path.realpath(launcher)
    ] == [(os.path.realpath(launcher), 3)]
    # Named in PROCGUARD_LAUNCHERS, each launch is a run of its target: train.py twice, eval.py once.
    monkeypatch.setenv("PROCGUARD_LAUNCHERS", "torchrun-like, mylaunch")
    (g,) = duplicate_report(snap).groups
    assert g.identity.key == os.path.realpath(tmp_path / "job" / "train.py")
    assert [(i.pid, i.launcher, len(i.members)) for i in g.instances] == [
        (a.pid, "mylaunch", 2),
        (b.pid, "mylaunch", 2),
    ]


def test_never_duplicate_patterns(
    procs: ProcStarter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = write(tmp_path / "nd" / "notebook_server.py")
    a = start(procs, [PY, "notebook_server.py"], tmp_path / "nd")
    b = start(procs, [PY, str(script)], tmp_path)
    assert len(find_duplicates(own_snapshot(a, b))) == 1
    for pattern in ("notebook_*", f"{tmp_path}/nd/*.py"):
        monkeypatch.setenv("PROCGUARD_NEVER_DUPLICATE", f"other, {pattern}")
        assert find_duplicates(own_snapshot(a, b)) == []
        e = explain(a.pid)
        assert (e.counted, e.code) == (False, "never") and pattern in e.reason
        assert e.identity is not None and e.identity.key == os.path.realpath(script)


@pytest.mark.parametrize(
    "var, value, entry",
    [
        ("PROCGUARD_LAUNCHERS", "torchrun,my launcher", "my launcher"),
        ("PROCGUARD_LAUNCHERS", "a,,b", ""),
        ("PROCGUARD_LAUNCHERS", "bin/run", "bin/run"),
        ("PROCGUARD_NEVER_DUPLICATE", "jupyter*,train[0-9.py", "train[0-9.py"),
        ("PROCGUARD_NEVER_DUPLICATE", "x;rm", "x;rm"),
    ],
)
def test_invalid_setting_is_a_one_line_error(var: str, value: str, entry: str) -> None:
    from procguard.core.launchers import SettingError, settings_from_env

    with pytest.raises(SettingError) as err:
        settings_from_env({var: value})
    assert isinstance(err.value, ValueError) and err.value.entry == entry
    assert str(err.value).startswith(f"{var}: {entry!r} ") and "\n" not in str(err.value)
    out = subprocess.run(
        [PY, "-m", "procguard.core.cli", "dupes"],
        capture_output=True,
        text=True,
        env=clean_env(**{var: value}),
        timeout=60,
    )
    assert (
        out.returncode == 2
        and out.stderr.count("\n") == 1
        and var in out.stderr
        and repr(entry) in out.stderr
    )


def test_valid_settings_parse() -> None:
    from procguard.core.launchers import Settings, settings_from_env

    s = settings_from_env(
        {
            "PROCGUARD_LAUNCHERS": " mylaunch , my.pkg.launch,run-*",
            "PROCGUARD_NEVER_DUPLICATE": "/opt/*/serve.py,jupyter-[a-z]*",
        }
    )
    assert s == Settings(("mylaunch", "my.pkg.launch", "run-*"), ("/opt/*/serve.py", "jupyter-[a-z]*"))
    assert s.launcher_match("run-job") == "run-*" and s.launcher_match("other") is None
    assert s.never_match(["x"], ["/opt/a/serve.py"]) == "/opt/*/serve.py"
    assert settings_from_env({"PROCGUARD_LAUNCHERS": "  "}) == Settings()


@pytest.mark.parametrize("shebang", ["#!/bin/sh", "#!/usr/bin/env sh"])
def test_check_before_run_knows_a_shell_script_job(pg_runs: PgRuns, tmp_path: Path, shebang: str) -> None:
    job = tmp_path / "sh" / "job.sh"
    write(job, f"{shebang}\necho ready\nsleep 600\necho done\n")
    job.chmod(0o755)
    _, child = pg_runs.start(["./job.sh", "--epochs", "3"], tmp_path / "sh", ready=True)
    running = explain(child).identity
    ident = identity_for_command(["./job.sh", "--epochs", "3"], str(tmp_path / "sh"))
    assert running is not None and ident is not None and ident.key == running.key
    ok, msg = check_before_run(["./job.sh", "--epochs", "3"], str(tmp_path / "sh"), "abort")
    assert not ok and f"pid {child}" in msg
    assert check_before_run(["./job.sh", "--epochs", "4"], str(tmp_path / "sh"), "abort") == (True, "")
