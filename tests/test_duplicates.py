"""Duplicate runs: pure grouping over hand-made tables, then real Python processes from unique temp folders.

Safety: every find/terminate here is scoped with script= to a script this test wrote, or runs over a
snapshot filtered to the test's own pids.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import pytest

from procguard.core.duplicates import (
    DuplicateGroup,
    build_report,
    check_before_run,
    duplicate_report,
    find_duplicates,
    find_instances,
    group_json,
    terminate_duplicates,
)
from procguard.core.identity import ScriptIdentity, identity_for_command, identity_for_path
from procguard.core.pyproc import parse_python_cmdline
from procguard.core.signals import Outcome
from procguard.core.snapshot import Proc, Snapshot, process_snapshot
from tests.conftest import PY, ProcStarter, is_gone, wait_for

LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT",
               "SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


@pytest.fixture(autouse=True)
def _not_in_a_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    # terminate_duplicates refuses to act inside a launch/job; the test runner itself may be in one.
    for v in LAUNCH_VARS:
        monkeypatch.delenv(v, raising=False)


# ---------------------------------------------------------------------------------------------- pure grouping


def mk(pid: int, cmdline: list[str], ppid: int = 1, t: float | None = None, uid: int = 1000) -> Proc:
    return Proc(pid, ppid, pid, pid, "S", os.path.basename(cmdline[0])[:15], tuple(cmdline),
                float(pid) if t is None else t, 0, uid, f"u{uid}", 0.0, 1, 0, False, pid * 10,
                parse_python_cmdline(cmdline))


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


def report(procs: Mapping[int, Proc], envs: Mapping[int, Mapping[str, str] | None] | None = None,
           asked: list[int] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    envs = envs or {}

    def env_of(p: Proc) -> Mapping[str, str] | None:
        if asked is not None:
            asked.append(p.pid)
        return envs.get(p.pid, {})

    return build_report(procs, ident_by_target, env_of, lambda p: f"/cwd/{p.pid}", **kw)  # type: ignore[arg-type]


def pids(g: DuplicateGroup) -> list[int]:
    return [i.pid for i in g.instances]


def test_two_independent_runs_are_a_group_oldest_first() -> None:
    r = report(table(mk(20, ["python", "/a/t.py", "--lr", "1"], t=5.0),
                     mk(10, ["python3", "-u", "/a/t.py", "--lr", "2"], t=9.0),
                     mk(30, ["python", "/b/t.py"])))
    assert len(r.groups) == 1
    g = r.groups[0]
    assert g.identity.key == "/a/t.py"
    assert pids(g) == [20, 10]
    assert [i.args for i in g.instances] == [("--lr", "1"), ("--lr", "2")]
    assert g.instances[0].cwd == "/cwd/20"


def test_workers_of_a_run_are_not_duplicates() -> None:
    base = [mk(10, ["python", "/a/t.py"]), mk(11, ["python", "/a/t.py"], ppid=10),
            mk(12, ["python", "/a/t.py"], ppid=11)]
    assert report(table(*base)).groups == ()
    r = report(table(*base, mk(20, ["python", "/a/t.py"])))
    assert [pids(g) for g in r.groups] == [[10, 20]]


def test_multiprocessing_helpers_are_not_scripts() -> None:
    helper = ["python", "-c", "from multiprocessing.resource_tracker import main;main(5)"]
    spawn = ["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5)",
             "--multiprocessing-fork"]
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
    procs = [mk(10, ["python", "-m", "torch.distributed.run", "/a/t.py"]),
             mk(11, ["python", "/a/t.py"], ppid=10), mk(12, ["python", "/a/t.py"], ppid=10),
             mk(20, ["python", "-m", "torch.distributed.run", "/a/t.py"]),
             mk(21, ["python", "/a/t.py"], ppid=20)]
    (g,) = report(table(*procs)).groups
    assert pids(g) == [10, 20]
    assert g.identity.key == "/a/t.py"


def test_mpirun_is_a_launcher() -> None:
    procs = [mk(5, ["/usr/bin/mpirun", "-np", "2", "python", "/a/t.py"]),
             mk(6, ["/usr/bin/hydra_pmi_proxy"], ppid=5),
             mk(7, ["python", "/a/t.py"], ppid=6), mk(8, ["python", "/a/t.py"], ppid=6)]
    assert report(table(*procs)).groups == ()


@pytest.mark.parametrize("env", [
    {"TORCHELASTIC_RUN_ID": "job-42"},
    {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"},
])
def test_ranks_sharing_a_rendezvous_are_one_run(env: dict[str, str]) -> None:
    procs = table(mk(10, ["python", "/a/t.py"]), mk(20, ["python", "/a/t.py"]))
    r = report(procs, {10: env, 20: env})
    assert r.groups == ()
    (run,) = r.distributed
    assert (run.pid, run.members, run.roots) == (10, (10, 20), (10, 20))


def test_default_elastic_id_and_different_ports_are_not_one_run() -> None:
    procs = table(mk(10, ["python", "/a/t.py"]), mk(20, ["python", "/a/t.py"]))
    r = report(procs, {10: {"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
                       20: {"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "h", "MASTER_PORT": "2"}})
    assert [pids(g) for g in r.groups] == [[10, 20]]


def test_scheduler_jobs_are_set_apart() -> None:
    procs = table(mk(10, ["python", "/a/t.py"]), mk(20, ["python", "/a/t.py"]), mk(30, ["python", "/a/t.py"]))
    r = report(procs, {10: {"SLURM_JOB_ID": "7"}, 20: {"PBS_JOBID": "8.pbs"}})
    assert r.groups == ()  # one run left outside the scheduler: not a duplicate of anything
    assert sorted((s.instance.pid, s.scheduler, s.job_id) for s in r.scheduler_managed) == [
        (10, "slurm", "7"), (20, "pbs", "8.pbs")]


def test_unreadable_environment_is_unknown_not_an_error() -> None:
    procs = table(mk(10, ["python", "/a/t.py"], uid=1), mk(20, ["python", "/a/t.py"], uid=2))
    r = report(procs, {10: None, 20: None})
    assert [pids(g) for g in r.groups] == [[10, 20]]


def test_environment_is_only_read_for_candidates() -> None:
    asked: list[int] = []
    procs = table(mk(10, ["python", "/a/t.py"]), mk(11, ["python", "/a/t.py"], ppid=10),
                  mk(20, ["python", "/b/u.py"]), mk(30, ["python", "/c/v.py"]), mk(31, ["python", "/c/v.py"]),
                  mk(40, ["bash"]))
    report(procs, asked=asked)
    assert sorted(asked) == [30, 31]


def test_module_and_code_identities() -> None:
    procs = table(mk(10, ["python", "-m", "pkg.train"]), mk(20, ["python", "-u", "-m", "pkg.train", "--x"]),
                  mk(30, ["python", "-c", "work()"]), mk(40, ["python", "-c", "work()"]),
                  mk(50, ["python", "-c", "work()", "arg"]), mk(60, ["python"]), mk(70, ["python"]))
    r = report(procs)
    assert sorted((g.identity.kind, tuple(pids(g))) for g in r.groups) == [
        ("code", (30, 40)), ("module", (10, 20))]
    by_kind = {g.identity.kind: group_json(g) for g in r.groups}
    assert by_kind["module"]["script"] == "pkg.train"
    assert by_kind["code"]["script"] == "work()"


def test_script_filter_and_min_instances() -> None:
    procs = table(mk(10, ["python", "/a/t.py"]), mk(20, ["python", "/a/t.py"]), mk(30, ["python", "/b/u.py"]),
                  mk(40, ["python", "/b/u.py"]))
    r = report(procs, script=ScriptIdentity("file", "/b/u.py", "/b/u.py"))
    assert [pids(g) for g in r.groups] == [[30, 40]]
    r = report(table(mk(10, ["python", "/a/t.py"])), min_instances=1,
               script=ScriptIdentity("file", "/a/t.py", "/a/t.py"))
    assert [pids(g) for g in r.groups] == [[10]]


def test_json_schema() -> None:
    (g,) = report(table(mk(10, ["python", "/a/t.py", "x"]), mk(20, ["python", "/a/t.py"]))).groups
    # The identity key and its parts travel with the group (issue 13: --json carries the key).
    assert group_json(g) == {"script": "/a/t.py", "kind": "file", "key": "/a/t.py", "parts": {}, "instances": [
        {"pid": 10, "create_time": 10.0, "cwd": "/cwd/10", "args": ["x"], "username": "u1000"},
        {"pid": 20, "create_time": 20.0, "cwd": "/cwd/20", "args": [], "username": "u1000"}]}


def test_identity_for_command_resolves_against_the_given_cwd(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("")
    (tmp_path / "link.py").symlink_to(tmp_path / "t.py")
    real = os.path.realpath(tmp_path / "t.py")
    assert identity_for_command(["python3", "-u", "t.py"], str(tmp_path)) == ScriptIdentity("file", real, real)
    assert identity_for_command(["env", "python3", "link.py"], str(tmp_path)).key == real  # type: ignore[union-attr]
    # A program that is not Python is identified by its command (issue 13): executable + args + cwd.
    cmd = identity_for_command(["bash", "t.py"], str(tmp_path))
    assert cmd is not None and cmd.kind == "command"
    assert dict(cmd.parts) == {"executable": os.path.realpath(shutil.which("bash") or ""), "name": "bash",
                               "args": ("t.py",), "cwd": os.path.realpath(tmp_path)}
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


def start(procs: ProcStarter, argv: list[str], cwd: Path, env: dict[str, str] | None = None
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
    p = procs.popen([PY, str(script)], cwd=cwd, env=clean_env(), stdout=subprocess.PIPE,
                    start_new_session=True)
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
    p = procs.popen([PY, str(launcher), str(script)], cwd=tmp_path / "d", env=clean_env(),
                    stdout=subprocess.PIPE, start_new_session=True)
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


@pytest.mark.parametrize("shared", [
    {"TORCHELASTIC_RUN_ID": "run-{uid}"},
    {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "{port}"},
])
def test_ranks_sharing_run_id_or_master_are_not_duplicates(procs: ProcStarter, tmp_path: Path,
                                                            shared: dict[str, str]) -> None:
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
        (a.pid, "1001"), (b.pid, "1002")]
    res = terminate_duplicates(script=script, grace=1)
    assert res.results == () and res.ended == ()
    assert not is_gone(a.pid) and not is_gone(b.pid)


def test_real_torchrun_ranks_are_one_run(procs: ProcStarter, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    script = write(tmp_path / "tr" / "train.py", """
        import os, time
        open(os.path.join(os.path.dirname(__file__), f"rank{os.environ['RANK']}"), "w").close()
        time.sleep(600)
    """)
    p = procs.popen([PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "train.py"],
                    cwd=tmp_path / "tr", env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True)
    wait_for(lambda: (tmp_path / "tr" / "rank0").exists() and (tmp_path / "tr" / "rank1").exists(), timeout=60)
    assert find_duplicates(script=script) == []
    (run,) = find_instances(script)
    assert (run.pid, run.launcher, len(run.members)) == (p.pid, "torch.distributed.run", 2)


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


def test_terminate_inside_a_launch_does_nothing(procs: ProcStarter, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
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
    out = subprocess.run([*NOBODY, PY, "-c", code], env=clean_env(), capture_output=True, timeout=60,
                         cwd="/")
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
    out = subprocess.run([*cli, "--json", "--script", str(script)], capture_output=True, env=clean_env(),
                         timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    data = json.loads(out.stdout)
    real = os.path.realpath(script)
    assert data == [{"script": real, "kind": "file", "key": real, "parts": {"script": real}, "instances": [
        {"pid": a.pid, "create_time": data[0]["instances"][0]["create_time"],
         "cwd": os.path.realpath(tmp_path / "cli"), "args": ["--seed", "1"], "username": data[0]["instances"][0]["username"]},
        {"pid": b.pid, "create_time": data[0]["instances"][1]["create_time"],
         "cwd": os.path.realpath(tmp_path / "cli"), "args": ["--seed", "2"], "username": data[0]["instances"][1]["username"]},
    ]}]
    assert data[0]["instances"][0]["create_time"] < data[0]["instances"][1]["create_time"]
    bad = subprocess.run([*cli, "--keep", "newest"], capture_output=True, env=clean_env(), timeout=60)
    assert bad.returncode == 2 and b"--terminate" in bad.stderr
    out = subprocess.run([*cli, "--script", str(script), "--terminate", "--keep", "newest", "--grace", "5",
                          "--json"], capture_output=True, env=clean_env(), timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    data = json.loads(out.stdout)
    assert data["kept"] == [b.pid] and data["ended"] == [a.pid]
    assert [r["outcome"] for r in data["results"]] == ["exited"]
    assert is_gone(a.pid) and not is_gone(b.pid)


def test_cli_dupes_text(procs: ProcStarter, tmp_path: Path) -> None:
    script = write(tmp_path / "txt" / "train.py")
    a = start(procs, [PY, "train.py"], tmp_path / "txt")
    b = start(procs, [PY, "train.py"], tmp_path / "txt")
    out = subprocess.run([PY, "-m", "procguard.core.cli", "dupes", "--script", str(script)],
                         capture_output=True, text=True, env=clean_env(), timeout=60)
    assert out.returncode == 0
    assert os.path.realpath(script) in out.stdout and str(a.pid) in out.stdout and str(b.pid) in out.stdout
    out = subprocess.run([PY, "-m", "procguard.core.cli", "dupes", "--script", str(tmp_path / "nope.py")],
                         capture_output=True, text=True, env=clean_env(), timeout=60)
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
    b, kids_b = start_workers(procs, write(tmp_path / "en" / "w" / "train.py", WORKERS), tmp_path / "en" / "w")
    c = start(procs, [PY, "train.py", str(tmp_path / "en" / "c.lock")], tmp_path / "en")
    groups = find_duplicates(script=script)
    gpu = GpuSnapshot(True, None, (), (GpuProcess(a.pid, 0, 1000), GpuProcess(kids_b[0], 0, 7),
                                      GpuProcess(c.pid, 1, None)), time.time())
    (g,) = enrich(groups, process_snapshot(), gpu)
    assert [i.pid for i in g.instances] == [a.pid, c.pid]
    assert g.instances[0].locks == (os.path.realpath(lock),)
    assert g.instances[0].gpu_memory == 1000 and g.instances[1].gpu_memory == 0
    # A run's tree counts: b's forked worker holds b's GPU memory.
    (gw,) = enrich([DuplicateGroup(g.identity, tuple(find_instances(script.parent / "w" / "train.py")))],
                   process_snapshot(), gpu)
    assert gw.instances[0].pid == b.pid and gw.instances[0].gpu_memory == 7
    # No GPU snapshot: unknown, not zero.
    (g2,) = enrich(groups, process_snapshot(), None, held=())
    assert all(i.gpu_memory is None and i.locks == () for i in g2.instances)


def test_procguard_run_on_duplicate(procs: ProcStarter, tmp_path: Path) -> None:
    write(tmp_path / "run" / "train.py", """
        import sys, time
        print("ready", flush=True)
        if "--stay" in sys.argv:
            time.sleep(600)
    """)
    a = start(procs, [PY, "train.py", "--stay"], tmp_path / "run")
    run = [PY, "-m", "procguard.core.cli", "run"]
    out = subprocess.run([*run, "--on-duplicate", "abort", "--", PY, "train.py"], cwd=tmp_path / "run",
                         capture_output=True, text=True, env=clean_env(), timeout=60)
    assert out.returncode == 3
    assert "already running" in out.stderr and f"pid {a.pid}" in out.stderr
    assert "ready" not in out.stdout and not is_gone(a.pid)
    # terminate: the old run ends first, then the command runs.
    out = subprocess.run([*run, "--on-duplicate", "terminate", "--grace", "5", "--", PY, "train.py"],
                         cwd=tmp_path / "run", capture_output=True, text=True, env=clean_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ready" in out.stdout and "ended 1 other run" in out.stderr
    assert is_gone(a.pid)
