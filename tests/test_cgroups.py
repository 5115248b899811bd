"""core/cgroups.py: parsing and naming (pure), and real cgroups: a cgroup made under the v2 hierarchy (and the v1
freezer) for each test, test processes moved in, ended with cgroup.kill or a fallback, paused and resumed with
cgroup.freeze; the cgroup is removed afterwards whatever happens."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from procguard.core import cgroups as C
from procguard.core.signals import Outcome
from tests.conftest import NOBODY, PY, ProcStarter, is_gone, needs_root, proc_state, wait_for

MOUNTS = C.cgroup_mounts()

# Moves itself into the cgroup folder $1, then becomes the command: the process is inside before it can fork.
MOVE_AND_EXEC = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'


def _v2_problem() -> str | None:
    if MOUNTS.v2 is None:
        return "no cgroup v2 hierarchy is mounted"
    if os.geteuid() != 0 and not os.access(MOUNTS.v2.point, os.W_OK):
        return f"cgroup v2 hierarchy at {MOUNTS.v2.point} is not writable (needs root or delegation)"
    if not os.access(MOUNTS.v2.point, os.W_OK):
        return f"cgroup v2 hierarchy at {MOUNTS.v2.point} is mounted read-only"
    return None


def _v1_freezer_problem() -> str | None:
    m = MOUNTS.v1.get("freezer")
    if m is None:
        return "no v1 freezer hierarchy is mounted"
    if not os.access(m.point, os.W_OK):
        return f"v1 freezer at {m.point} is not writable"
    return None


class Cg(NamedTuple):
    fs: str  # folder
    path: str  # cgroup path

    def sub(self, name: str) -> Cg:
        os.mkdir(os.path.join(self.fs, name))
        return Cg(os.path.join(self.fs, name), f"{self.path}/{name}")


def _write(path: str, data: str) -> None:
    with contextlib.suppress(OSError), open(path, "w") as f:
        f.write(data)


def _procs(folder: str) -> list[int]:
    try:
        with open(os.path.join(folder, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _destroy(fs: str, v1: bool, home: str) -> None:
    """Kill every member (after moving procguard's own lineage out, should a test have left it there), then
    remove the cgroup bottom-up."""
    dirs = [d for d, _s, _f in os.walk(fs, topdown=False)]
    me = {os.getpid(), os.getppid()}
    for d in dirs:
        for pid in _procs(d):
            if pid in me:
                _write(os.path.join(home, "cgroup.procs"), str(pid))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = []
        for d in dirs:
            if v1:
                _write(os.path.join(d, "freezer.state"), "THAWED")
                for pid in _procs(d):
                    if pid not in me:
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
            else:
                _write(os.path.join(d, "cgroup.freeze"), "0")
                _write(os.path.join(d, "cgroup.kill"), "1")
            left += _procs(d)
        if not left:
            break
        time.sleep(0.02)
    for d in dirs:
        with contextlib.suppress(OSError):
            os.rmdir(d)


def _make(mount: str, v1: bool) -> Iterator[Cg]:
    name = f"procguard-test-{os.getpid()}-{secrets.token_hex(4)}"
    fs = os.path.join(mount, name)
    os.mkdir(fs)
    home = mount  # where our own pid goes back to, should a test have moved it
    try:
        yield Cg(fs, "/" + name)
    finally:
        _destroy(fs, v1, home)
    assert not os.path.exists(fs), f"test cgroup {fs} could not be removed"


@pytest.fixture
def cg() -> Iterator[Cg]:
    why = _v2_problem()
    if why:
        pytest.skip(why)
    assert MOUNTS.v2 is not None
    yield from _make(MOUNTS.v2.point, False)


@pytest.fixture
def cg1() -> Iterator[Cg]:
    why = _v1_freezer_problem()
    if why:
        pytest.skip(why)
    yield from _make(MOUNTS.v1["freezer"].point, True)


def start_in(procs: ProcStarter, where: Cg, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    kw.setdefault("start_new_session", True)
    return procs.popen(["/bin/sh", "-c", MOVE_AND_EXEC, "sh", where.fs, *argv], **kw)


# A SIGTERM-ignoring job: the main process forks a child that calls setsid (escaping the group and session) and
# forks a grandchild; with "fork" the main process keeps forking sleepers (up to 150) until it is killed.
FORKER = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
r, w = os.pipe()
a = os.fork()
if a == 0:
    os.setsid()
    b = os.fork()
    if b == 0:
        while True:
            time.sleep(60)
    os.write(w, f"{b}\n".encode())
    while True:
        time.sleep(60)
b = int(os.read(r, 64).split()[0])
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {a} {b}\n")
print("ready", flush=True)
n = 0
while len(sys.argv) > 2 and n < 150:
    if os.fork() == 0:
        while True:
            time.sleep(60)
    n += 1
    time.sleep(0.002)
while True:
    time.sleep(60)
"""

POLITE = """
import time
print("ready", flush=True)
while True:
    time.sleep(60)
"""

TICKER = """
import sys, time
print("ready", flush=True)
i = 0
while True:
    i += 1
    sys.stdout.write(f"{i}\\n")
    sys.stdout.flush()
    time.sleep(0.01)
"""


def _script(tmp_path: Path, name: str, code: str) -> str:
    p = tmp_path / f"{name}.py"
    p.write_text(code)
    return str(p)


def start_forker(procs: ProcStarter, where: Cg, tmp_path: Path, forking: bool = False) -> list[int]:
    out = tmp_path / f"pids-{secrets.token_hex(3)}"
    argv = [PY, _script(tmp_path, "forker", FORKER), str(out)] + (["fork"] if forking else [])
    p = start_in(procs, where, argv, stdout=subprocess.PIPE)
    procs.wait_ready(p)
    pids = [int(x) for x in out.read_text().split()]
    for pid in pids[1:]:
        procs.track(pid)
    return pids


# ---------------------------------------------------------------------------------------------- parsing (pure)


def test_parse_proc_cgroup_v2_hybrid_and_v1() -> None:
    v2, v1 = C.parse_proc_cgroup(b"0::/user.slice/user-1000.slice/session-3.scope\n")
    assert v2 == "/user.slice/user-1000.slice/session-3.scope" and v1 == {}
    hybrid = (
        b"12:pids:/docker/"
        + b"a" * 64
        + b"\n4:cpu,cpuacct:/docker/"
        + b"a" * 64
        + b"\n1:name=systemd:/docker/"
        + b"a" * 64
        + b"\n0::/\n"
    )
    v2, v1 = C.parse_proc_cgroup(hybrid)
    assert v2 == "/" and v1["cpu"] == v1["cpuacct"] == v1["name=systemd"] == "/docker/" + "a" * 64
    # A v2 path of "/" on a hybrid host gives way to a v1 controller that names something.
    assert C.pick_cgroup_path(v2, v1) == ("/docker/" + "a" * 64, 1)
    assert C.pick_cgroup_path("/x.scope", v1) == ("/x.scope", 2)
    assert C.pick_cgroup_path("/", {"cpu": "/"}) == ("/", 2)
    assert C.pick_cgroup_path(None, {"freezer": "/slurm/job_1", "cpu": "/other"}) == ("/slurm/job_1", 1)
    assert C.pick_cgroup_path(None, {}) == (None, 0)


@pytest.mark.parametrize(
    "path, kind, runtime, ident, step, unit_path, label",
    [
        ("/", "root", "", "", "", "/", "/"),
        (
            "/docker/" + "ab" * 32,
            "container",
            "docker",
            "ab" * 32,
            "",
            "/docker/" + "ab" * 32,
            "docker " + "ab" * 6,
        ),
        (
            "/system.slice/docker-" + "cd" * 32 + ".scope",
            "container",
            "docker",
            "cd" * 32,
            "",
            "/system.slice/docker-" + "cd" * 32 + ".scope",
            "docker " + "cd" * 6,
        ),
        # a container running systemd: the container names it, not the unit inside
        (
            "/system.slice/docker-" + "cd" * 32 + ".scope/system.slice/nginx.service",
            "container",
            "docker",
            "cd" * 32,
            "",
            "/system.slice/docker-" + "cd" * 32 + ".scope",
            "docker " + "cd" * 6,
        ),
        (
            "/machine.slice/libpod-" + "ef" * 32 + ".scope/container",
            "container",
            "podman",
            "ef" * 32,
            "",
            "/machine.slice/libpod-" + "ef" * 32 + ".scope",
            "podman " + "ef" * 6,
        ),
        (
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + "12" * 32 + ".scope",
            "container",
            "podman",
            "12" * 32,
            "",
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + "12" * 32 + ".scope",
            "podman " + "12" * 6,
        ),
        (
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice/cri-containerd-"
            + "34" * 32
            + ".scope",
            "container",
            "containerd",
            "34" * 32,
            "",
            "/kubepods.slice/kubepods-besteffort.slice/"
            "kubepods-besteffort-pod1234.slice/cri-containerd-" + "34" * 32 + ".scope",
            "containerd " + "34" * 6,
        ),
        (
            "/kubepods/besteffort/pod1234/" + "56" * 32,
            "container",
            "kubernetes",
            "56" * 32,
            "",
            "/kubepods/besteffort/pod1234/" + "56" * 32,
            "kubernetes " + "56" * 6,
        ),
        (
            "/kubepods.slice/kubepods-pod9.slice/crio-" + "78" * 32 + ".scope",
            "container",
            "cri-o",
            "78" * 32,
            "",
            "/kubepods.slice/kubepods-pod9.slice/crio-" + "78" * 32 + ".scope",
            "cri-o " + "78" * 6,
        ),
        (
            "/default/" + "9a" * 32,
            "container",
            "containerd",
            "9a" * 32,
            "",
            "/default/" + "9a" * 32,
            "containerd " + "9a" * 6,
        ),
        ("/lxc.payload.web1", "container", "lxc", "web1", "", "/lxc.payload.web1", "lxc web1"),
        ("/lxc/web2/init.scope", "container", "lxc", "web2", "", "/lxc/web2", "lxc web2"),
        (
            "/system.slice/slurmstepd.scope/job_42/step_0/user/task_0",
            "slurm",
            "slurm",
            "42",
            "0",
            "/system.slice/slurmstepd.scope/job_42/step_0",
            "slurm 42.0",
        ),
        (
            "/slurm/uid_1000/job_77/step_batch/task_0",
            "slurm",
            "slurm",
            "77",
            "batch",
            "/slurm/uid_1000/job_77/step_batch",
            "slurm 77.batch",
        ),
        ("/slurm/uid_1000/job_78", "slurm", "slurm", "78", "", "/slurm/uid_1000/job_78", "slurm 78"),
        (
            "/system.slice/nginx.service",
            "service",
            "systemd",
            "nginx.service",
            "",
            "/system.slice/nginx.service",
            "nginx.service",
        ),
        (
            "/user.slice/user-1000.slice/user@1000.service/app.slice/run-u12.scope",
            "scope",
            "systemd",
            "run-u12.scope",
            "",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/run-u12.scope",
            "run-u12.scope",
        ),
        (
            "/user.slice/user-1000.slice",
            "slice",
            "systemd",
            "user-1000.slice",
            "",
            "/user.slice/user-1000.slice",
            "user-1000.slice",
        ),
        (
            "/system.slice/ssh.service/extra",
            "service",
            "systemd",
            "ssh.service",
            "",
            "/system.slice/ssh.service",
            "ssh.service",
        ),
        ("/jobs//train", "plain", "", "train", "", "/jobs/train", "/jobs/train"),
    ],
)
def test_name_cgroup(
    path: str, kind: str, runtime: str, ident: str, step: str, unit_path: str, label: str
) -> None:
    assert C.name_cgroup(path) == C.CgroupName(kind, runtime, ident, step, unit_path, label)


def test_small_parsers() -> None:
    status = b"Name:\tpython\nNSpid:\t4242\t17\t1\nNSgid:\t4242\n"
    assert C.parse_nspid(status) == (4242, 17, 1)
    assert C.parse_nspid(b"Name:\tx\n") == ()
    assert C.parse_ns_link("pid:[4026531836]") == 4026531836
    assert C.parse_ns_link("garbage") is None
    assert C.parse_events(b"populated 1\nfrozen 0\n") == {"populated": 1, "frozen": 0}
    info = C.CgroupInfo(5, "/a", 2, C.name_cgroup("/a"), 1, (5, 1))
    assert info.inner_pid == 1 and info.to_json()["cgroup"]["label"] == "/a"
    assert C.CgroupInfo(5, "/a", 2, None, None, (5,)).inner_pid is None


def test_parse_mountinfo() -> None:
    data = (
        b"31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        b"37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n"
        b"40 31 0:37 / /sys/fs/cgroup/sys\\040temd rw - cgroup cgroup rw,xattr,name=systemd\n"
        b"41 31 0:38 /docker/abc /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw\n"
    )
    m = C.parse_mountinfo(data)
    assert m.v2 == C.Mount("/sys/fs/cgroup/unified", "/docker/abc")
    assert m.v1["freezer"] == C.Mount("/sys/fs/cgroup/freezer", "/")
    assert m.v1["name=systemd"].point == "/sys/fs/cgroup/sys temd"
    assert C.parse_mountinfo(b"") == C.CgroupMounts(None, {})


def test_is_within() -> None:
    assert C.is_within("/a/b", "/a") and C.is_within("/a", "/a") and C.is_within("/x", "/")
    assert not C.is_within("/ab", "/a") and not C.is_within("/a", "/a/b")


def test_resolve_rejects_bad_paths(tmp_path: Path) -> None:
    root = tmp_path / "hier"
    (root / "a" / "b").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    mounts = C.CgroupMounts(C.Mount(str(root), "/"), {})
    assert C.resolve_cgroup("/a/b", mounts=mounts).fs_path == str(root / "a" / "b")
    assert C.resolve_cgroup(f"{root}/a", mounts=mounts).path == "/a"
    for bad, words in (
        ("/a/../a", "'..'"),
        ("/a/./b", "'.'"),
        ("/nope", "no such cgroup"),
        ("/link", "not a cgroup directory"),
        ("/a\0", "NUL"),
        ("", "empty"),
    ):
        with pytest.raises(C.CgroupError) as e:
            C.resolve_cgroup(bad, mounts=mounts)
        msg = str(e.value)
        assert words in msg and "\n" not in msg, msg
    with pytest.raises(C.CgroupError, match="no cgroup v2 or v1 freezer"):
        C.resolve_cgroup("/a", mounts=C.CgroupMounts(None, {}))


def test_root_cgroup_is_refused() -> None:
    if MOUNTS.v2 is None:
        pytest.skip("no cgroup v2 hierarchy is mounted")
    for fn in (C.kill_cgroup, C.freeze_cgroup, C.thaw_cgroup):
        with pytest.raises(C.CgroupError, match=r"cgroup /: refusing the root cgroup"):
            fn("/")
    with pytest.raises(C.CgroupError, match="refusing the root cgroup"):
        C.terminate_cgroup(MOUNTS.v2.point, grace=0)
    assert C.cgroup_plan("/").refused is not None


def test_cgroup_info_of_this_process() -> None:
    me = os.getpid()
    info = C.cgroup_info(me)
    assert info is not None
    with open("/proc/self/cgroup", "rb") as f:
        assert (info.path, info.version) == C.pick_cgroup_path(*C.parse_proc_cgroup(f.read()))
    assert info.pidns == os.stat("/proc/self/ns/pid").st_ino
    assert info.nspid[0] == me
    assert C.cgroup_info(2**22 + 7) is None


# ---------------------------------------------------------------------------------------------- real cgroups


def test_members_info_and_reader(cg: Cg, procs: ProcStarter, tmp_path: Path) -> None:
    sub = cg.sub("inner")
    a = start_in(procs, cg, [PY, _script(tmp_path, "a", POLITE)], stdout=subprocess.PIPE)
    b = start_in(procs, sub, [PY, _script(tmp_path, "b", POLITE)], stdout=subprocess.PIPE)
    procs.wait_ready(a)
    procs.wait_ready(b)
    assert sorted(C.cgroup_members(cg.path)) == sorted([a.pid, b.pid])
    assert C.cgroup_members(cg.fs, recursive=False) == [a.pid]
    info = C.cgroup_info(b.pid)
    assert info is not None and info.path == sub.path and info.version == 2
    assert info.name == C.name_cgroup(sub.path) and info.name.kind == "plain"
    reader = C.CgroupReader()
    st = proc_ticks(a.pid)
    assert reader.info(a.pid, st).path == cg.path  # type: ignore[union-attr]
    # Moved to another cgroup: the reader sees it on the next call (cgroups can change, pid namespaces can't).
    _write(os.path.join(sub.fs, "cgroup.procs"), str(a.pid))
    assert reader.info(a.pid, st).path == sub.path  # type: ignore[union-attr]
    plan = C.cgroup_plan(cg.path)
    assert plan.refused is None and sorted(plan.members) == sorted([a.pid, b.pid])
    assert (plan.kill_method, plan.freeze_method) == (
        "cgroup.kill",
        "cgroup.freeze",
    ) and plan.fallback is None
    assert plan.state == C.CgroupState(True, False)
    assert C.cgroup_plan(cg.path, method="signals").kill_method == "SIGSTOP + SIGKILL"


def proc_ticks(pid: int) -> int:
    from procguard.core import procfs

    st = procfs.read_stat(pid)
    assert st is not None
    return st.start_ticks


def test_kill_cgroup_ends_a_job_that_escaped_its_group(cg: Cg, procs: ProcStarter, tmp_path: Path) -> None:
    main, escaped, grandchild = start_forker(procs, cg, tmp_path, forking=True)
    assert os.getsid(escaped) == escaped != os.getsid(main)  # it left the group and the session
    r = C.kill_cgroup(cg.path)
    assert r.method == "cgroup.kill" and r.fallback is None and r.confirmed and r.ok, r.summary()
    for pid in (main, escaped, grandchild):
        assert is_gone(pid), pid
    got = {x.pid: x.outcome for x in r.results}
    assert got[main] is got[escaped] is got[grandchild] is Outcome.KILLED
    assert C.cgroup_members(cg.path) == [] and C.cgroup_state(cg.path).populated is False
    assert "confirmed empty" in r.summary() and json.dumps(r.to_json())


@pytest.mark.parametrize(
    "method, expect", [("freezer", "cgroup.freeze + SIGKILL"), ("signals", "SIGSTOP + SIGKILL")]
)
def test_kill_cgroup_fallbacks(cg: Cg, procs: ProcStarter, tmp_path: Path, method: str, expect: str) -> None:
    pids = start_forker(procs, cg, tmp_path, forking=True)
    r = C.kill_cgroup(cg.path, method=method)
    assert r.method == expect and r.fallback and method in r.fallback, r
    assert r.confirmed and all(x.outcome is Outcome.KILLED for x in r.results), r.summary()
    assert all(is_gone(p) for p in pids)
    assert C.cgroup_state(cg.path) == C.CgroupState(False, False)  # not left frozen


def test_freeze_and_thaw(cg: Cg, procs: ProcStarter, tmp_path: Path) -> None:
    p = start_in(procs, cg, [PY, _script(tmp_path, "ticker", TICKER)], stdout=subprocess.PIPE)
    procs.wait_ready(p)
    assert p.stdout is not None
    fd = p.stdout.fileno()
    r = C.freeze_cgroup(cg.path)
    assert r.method == "cgroup.freeze" and r.confirmed and [x.outcome for x in r.results] == [Outcome.PAUSED]
    assert C.cgroup_state(cg.path).frozen is True
    assert proc_state(p.pid) not in ("T", "t")  # the freezer doesn't look stopped in ps: cgroup.events tells
    while select.select([fd], [], [], 0)[0]:  # what it wrote before the freeze
        os.read(fd, 65536)
    assert select.select([fd], [], [], 0.3)[0] == [], "a frozen process kept running"
    r = C.thaw_cgroup(cg.path)
    assert r.method == "cgroup.freeze" and r.confirmed and [x.outcome for x in r.results] == [Outcome.RESUMED]
    assert C.cgroup_state(cg.path).frozen is False
    wait_for(lambda: select.select([fd], [], [], 0.1)[0])


def test_pause_by_signals_and_resume(cg: Cg, procs: ProcStarter, tmp_path: Path) -> None:
    pids = start_forker(procs, cg, tmp_path)
    r = C.freeze_cgroup(cg.path, method="signals")
    assert r.method == "SIGSTOP" and r.confirmed and {x.pid for x in r.results} == set(pids)
    assert all(proc_state(p) == "T" for p in pids)
    r = C.thaw_cgroup(cg.path)  # nothing frozen by the freezer: the stopped members are continued
    assert r.method == "SIGCONT" and r.confirmed
    assert all(proc_state(p) not in ("T", "t") for p in pids)


def test_terminate_cgroup(cg: Cg, procs: ProcStarter, tmp_path: Path) -> None:
    polite = start_in(procs, cg, [PY, _script(tmp_path, "polite", POLITE)], stdout=subprocess.PIPE)
    procs.wait_ready(polite)
    main, escaped, grandchild = start_forker(procs, cg, tmp_path)
    C.freeze_cgroup(cg.path)  # a frozen job is thawed first, or SIGTERM would wait
    r = C.terminate_cgroup(cg.path, grace=0.5)
    assert r.method == "SIGTERM, then cgroup.kill" and r.confirmed, r.summary()
    got = {x.pid: x.outcome for x in r.results}
    assert got[polite.pid] is Outcome.EXITED
    assert got[main] is got[escaped] is got[grandchild] is Outcome.KILLED
    assert any("thawed first" in n for n in r.notes)
    assert all(is_gone(p) for p in (polite.pid, main, escaped, grandchild))


def test_terminate_cgroup_all_polite(cg: Cg, procs: ProcStarter, tmp_path: Path) -> None:
    p = start_in(procs, cg, [PY, _script(tmp_path, "polite", POLITE)], stdout=subprocess.PIPE)
    procs.wait_ready(p)
    r = C.terminate_cgroup(cg.path, grace=30)
    assert r.method == "SIGTERM" and r.confirmed and [x.outcome for x in r.results] == [Outcome.EXITED]


REFUSE_CODE = """
import os, sys
from procguard.core.cgroups import CgroupError, kill_cgroup, freeze_cgroup
if len(sys.argv) > 2:
    with open(sys.argv[2] + "/cgroup.procs", "w") as f:  # leave for a sibling cgroup; our shell stays
        f.write(str(os.getpid()))
for fn in (kill_cgroup, freeze_cgroup):
    try:
        fn(sys.argv[1])
    except CgroupError as e:
        print("refused:", e)
    else:
        print("not refused")
"""


def test_refuses_a_cgroup_holding_procguard_or_its_shell(cg: Cg, procs: ProcStarter) -> None:
    inner = cg.sub("self")
    p = start_in(procs, inner, [PY, "-c", REFUSE_CODE, inner.path], stdout=subprocess.PIPE)
    out = p.communicate(timeout=60)[0].decode()
    assert (
        out.count(f"refused: cgroup {inner.path}: refusing, it contains procguard itself (pid {p.pid})") == 2
    ), out
    other = cg.sub("other")
    shell = cg.sub("shell")
    sh = start_in(
        procs,
        shell,
        ["/bin/sh", "-c", f'"{PY}" -c "$0" "$1" "$2"; echo done', REFUSE_CODE, shell.path, other.fs],
        stdout=subprocess.PIPE,
    )
    out = sh.communicate(timeout=60)[0].decode()
    assert out.count(f"cgroup {shell.path}: refusing, it contains an ancestor of procguard") == 2, out
    assert out.rstrip().endswith("done")  # the shell lived


NOBODY_KILL = """
import json, sys
from procguard.core.cgroups import kill_cgroup
print(json.dumps(kill_cgroup(sys.argv[1], timeout=1.0).to_json()))
"""


@needs_root
def test_without_permission_falls_back_to_signals(cg: Cg, procs: ProcStarter) -> None:
    """cgroup.kill and cgroup.freeze belong to root: nobody ends its own processes by SIGSTOP + SIGKILL, says so,
    and can't touch root's."""
    mine = start_in(procs, cg.sub("nobodys"), [*NOBODY, "sleep", "300"])
    wait_for(lambda: proc_state(mine.pid) == "S" and os.stat(f"/proc/{mine.pid}").st_uid == 65534)
    r = subprocess.run(
        [*NOBODY, PY, "-c", NOBODY_KILL, f"{cg.path}/nobodys"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    res = json.loads(r.stdout)
    assert res["method"] == "SIGSTOP + SIGKILL" and "not writable" in res["fallback"], res
    assert res["confirmed"] and [x["outcome"] for x in res["results"]] == ["killed"]
    assert is_gone(mine.pid)
    roots = start_in(procs, cg.sub("roots"), ["sleep", "300"])
    wait_for(lambda: proc_state(roots.pid) == "S" and C.cgroup_members(f"{cg.path}/roots") == [roots.pid])
    r = subprocess.run(
        [*NOBODY, PY, "-c", NOBODY_KILL, f"{cg.path}/roots"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    res = json.loads(r.stdout)
    assert not res["confirmed"] and [x["outcome"] for x in res["results"]] == ["denied"], res
    assert not is_gone(roots.pid)


def test_v1_freezer(cg1: Cg, procs: ProcStarter, tmp_path: Path) -> None:
    pids = start_forker(procs, cg1, tmp_path, forking=True)
    cgd = C.resolve_cgroup(cg1.fs)
    assert cgd.version == 1 and cgd.path == cg1.path
    r = C.freeze_cgroup(cg1.fs)
    assert r.method == "v1 freezer" and r.confirmed and C.cgroup_state(cg1.fs).frozen is True
    r = C.thaw_cgroup(cg1.fs)
    assert r.method == "v1 freezer" and r.confirmed and C.cgroup_state(cg1.fs).frozen is False
    r = C.kill_cgroup(cg1.fs)
    assert r.method == "v1 freezer + SIGKILL" and r.fallback == "cgroup v1: no cgroup.kill", r
    assert r.confirmed and all(is_gone(p) for p in pids)
    assert C.cgroup_state(cg1.fs).frozen is False


def test_empty_cgroup_and_bad_method(cg: Cg) -> None:
    r = C.kill_cgroup(cg.path)
    assert r.method == "none" and r.confirmed and r.results == ()
    with pytest.raises(ValueError, match="method must be one of"):
        C.kill_cgroup(cg.path, method="nuke")
    with pytest.raises(ValueError, match="grace"):
        C.terminate_cgroup(cg.path, grace=-1)


# ---------------------------------------------------------------------------------------------- Target.cgroup


def test_target_cgroup_through_signals(cg: Cg, procs: ProcStarter, tmp_path: Path) -> None:
    """signals.resolve / pause / resume / terminate take a whole cgroup (cgroups acts, with the same pinned
    handles and phases): an escaped, SIGTERM-ignoring job ends with cgroup.kill, and the countdown hears the
    usual phases."""
    from procguard.core import signals
    from procguard.core.signals import Target

    pids = start_forker(procs, cg, tmp_path)
    other = procs.python(POLITE)
    t = Target.cgroup(cg.path)
    assert str(t) == f"cgroup {cg.path}" and t.kind == "cgroup"
    members = signals.resolve([t, Target.pid(other.pid)])
    assert {m.pid for m in members} == {*pids, other.pid} and not any(m.protected for m in members)
    assert [r.outcome for r in signals.pause(t)] == [Outcome.PAUSED] * 3
    assert C.cgroup_state(cg.path).frozen is True
    assert [r.outcome for r in signals.resume(t)] == [Outcome.RESUMED] * 3
    events: list[signals.Progress] = []
    results = signals.terminate([Target.pid(other.pid), t], grace=0.3, on_progress=events.append)
    got = {r.pid: r.outcome for r in results}
    assert got[other.pid] is Outcome.EXITED and all(got[p] is Outcome.KILLED for p in pids), got
    phases = [e.phase for e in events]
    assert {"sigterm", "sigkill", "done"} <= set(phases) and phases.index("sigterm") < phases.index("sigkill")
    assert all(is_gone(p) for p in (*pids, other.pid))
    # Refused as a whole: the dry run says why on every member, the action raises naming the path.
    refused = signals.resolve(Target.cgroup("/"))
    assert refused and all(m.protected and "refusing the root cgroup" in m.protected for m in refused)
    with pytest.raises(C.CgroupError, match="cgroup /: refusing the root cgroup"):
        signals.kill(Target.cgroup("/"))
    with pytest.raises(ValueError, match="needs a path"):
        Target.cgroup("")


# ---------------------------------------------------------------------------------------------- the CLI


def pg(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, PY, "-m", "procguard.core.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd="/",
    )


def _ps_rows(pids: list[int]) -> dict[int, dict[str, object]]:
    out = pg("ps", "--json")
    assert out.returncode == 0, out.stderr
    return {r["pid"]: r for r in json.loads(out.stdout) if r["pid"] in pids}


def test_cli_cgroup_actions_and_ps_fields(cg: Cg, procs: ProcStarter, tmp_path: Path) -> None:
    pids = start_forker(procs, cg, tmp_path, forking=True)
    out = pg("kill", "--cgroup", cg.path, "--dry-run")
    assert out.returncode == 0, out.stderr
    head = out.stdout.splitlines()[0]
    assert head.startswith(f"would kill cgroup {cg.path} ({cg.path}, v2): ") and head.endswith(
        "via cgroup.kill"
    )
    assert all(not is_gone(p) for p in pids)

    out = pg("pause", "--cgroup", cg.fs, "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["cgroup"]["method"] == "cgroup.freeze" and res["cgroup"]["confirmed"]
    assert {r["outcome"] for r in res["results"]} == {"paused"}
    # ps: frozen processes look like S; procguard says frozen. And the cgroup and PID namespace of each.
    rows = _ps_rows(pids)
    me = os.stat("/proc/self/ns/pid").st_ino
    for pid in pids:
        r = rows[pid]
        assert r["frozen"] is True and r["state"] != "T"
        assert r["cgroup"] == {
            "path": cg.path,
            "version": 2,
            "kind": "plain",
            "runtime": "",
            "id": cg.path[1:],
            "step": "",
            "unit": cg.path,
            "label": cg.path,
        }
        assert r["pidns"] == me and r["nspid"] == [pid]
    text = [ln for ln in pg("ps").stdout.splitlines() if ln.split()[:1] == [str(pids[0])]]
    assert len(text) == 1 and "[frozen] " in text[0]
    assert pg("kill", "--cgroup", cg.path, "--dry-run").stdout.splitlines()[0].count(", frozen)") == 1

    out = pg("resume", "--cgroup", cg.path)
    assert out.returncode == 0 and "confirmed thawed" in out.stderr, out.stderr
    assert all(r["frozen"] is False for r in _ps_rows(pids).values())

    out = pg("term", "--cgroup", cg.path, "--grace", "0.3")
    assert out.returncode == 0, out.stderr
    assert "via SIGTERM, then cgroup.kill" in out.stderr and "confirmed empty" in out.stderr
    assert all(is_gone(p) for p in pids)


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["term", "--cgroup", "/procguard-no-such-cgroup"], 2, "no such cgroup"),
        (["kill", "--cgroup", "/", "123"], 2, "--cgroup takes no TARGET"),
        (["kill", "--cgroup", "/a/../b"], 2, "'..' are not allowed"),
        (["term", "--cgroup", "/", "--dry-run"], 1, "would be refused: cgroup /: refusing the root cgroup"),
        (["pause", "--cgroup", "/"], 1, "cgroup /: refusing the root cgroup"),
    ],
)
def test_cli_cgroup_bad_or_refused(args: list[str], code: int, needle: str) -> None:
    if C.cgroup_mounts().v2 is None:
        pytest.skip("no cgroup v2 hierarchy is mounted")
    out = pg(*args)
    assert out.returncode == code and needle in out.stderr, out
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr


@needs_root
def test_cli_cgroup_without_permission_says_it_fell_back(cg: Cg, procs: ProcStarter) -> None:
    """As nobody (cgroup.kill is root's here): the kill still ends nobody's own job, by freeze-then-kill with
    signals, and says so."""
    mine = start_in(procs, cg.sub("nobodys"), [*NOBODY, "sleep", "300"])
    wait_for(lambda: proc_state(mine.pid) == "S" and os.stat(f"/proc/{mine.pid}").st_uid == 65534)
    out = pg("kill", "--cgroup", f"{cg.path}/nobodys", "--dry-run", prefix=tuple(NOBODY))
    assert out.returncode == 0 and "via SIGSTOP + SIGKILL" in out.stdout and "fallback: " in out.stdout, out
    out = pg("kill", "--cgroup", f"{cg.path}/nobodys", prefix=tuple(NOBODY))
    assert out.returncode == 0, out
    assert "via SIGSTOP + SIGKILL (cgroup.kill is not writable" in out.stderr
    assert is_gone(mine.pid)


@needs_root
def test_ps_shows_nspid_of_another_pid_namespace(procs: ProcStarter) -> None:
    outer = procs.popen(["unshare", "--pid", "--fork", "sleep", "300"], start_new_session=True)
    inner = wait_for(
        lambda: next(
            (int(x) for x in Path(f"/proc/{outer.pid}/task/{outer.pid}/children").read_text().split()), None
        )
    )
    assert isinstance(inner, int)
    wait_for(lambda: Path(f"/proc/{inner}/comm").read_text().strip() == "sleep")
    row = _ps_rows([inner])[inner]
    assert row["nspid"] == [inner, 1] and row["pidns"] != os.stat("/proc/self/ns/pid").st_ino
