"""A deterministic demo scenario: a fixed GPU box with the usual trouble (a second training run, a stopped
job, a zombie, an orphaned DataLoader worker holding GPU memory and its sibling that NVML does not list but the
kernel shows holding the device open, locks, a stale lock file), every process in its cgroup (systemd units and
login scopes, a docker container serving a model, SLURM job steps, one of them frozen by the cgroup freezer).

`DemoBackend` is a data source (the `Backend` protocol, like the live one), producing the same model every
time: no clock, no /proc, no NVML. Its actions never send a signal; they only pretend (the processes they
"end" disappear from later models), under core's protection rules (`protect.process_protection`). Used by the
snapshot tests, the screenshot script and `--demo`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from procguard.core import views
from procguard.core.cgroups import CgroupDir, CgroupInfo, CgroupPlan, CgroupState, is_within, name_cgroup
from procguard.core.duplicates import (
    DuplicateGroup,
    Explanation,
    Instance,
    ScheduledInstance,
    TerminateReport,
)
from procguard.core.gpu import GpuSnapshot
from procguard.core.gpuholders import DeviceHolder, GpuFd
from procguard.core.identity import ScriptIdentity
from procguard.core.locks import HeldLock, LockHolder
from procguard.core.nvml import GpuDevice, GpuProcess
from procguard.core.protect import process_protection
from procguard.core.pyproc import parse_python_cmdline
from procguard.core.signals import Member, Outcome, Progress, SignalResult, Target, action_name
from procguard.core.snapshot import DEAD_STATES, Proc, Snapshot
from procguard.tui.backends import ProgressFn, SingleHost
from procguard.tui.history import History
from procguard.tui.model import GuardInfo, Model, ProcExtra, cgroup_note, make_model

NOW = 1_767_225_600.0  # the scenario's fixed "now" (epoch seconds): ages are measured from it
GiB = 1024**3
MiB = 1024**2
PY = "/usr/bin/python3"
USERS = {0: "root", 1000: "alice", 1001: "bob", 113: "postgres"}
LOCKS = "/run/user/1000/procguard/locks"
TRAIN = ("--config", "configs/base.yaml", "--lr", "3e-4")


def _p(
    pid: int,
    ppid: int,
    pgid: int,
    sid: int,
    cmd: Sequence[str],
    *,
    uid: int = 1000,
    state: str = "S",
    age: float = 3600.0,
    rss: int = 50 * MiB,
    cpu: float = 0.0,
    threads: int = 1,
    name: str | None = None,
    kernel: bool = False,
    tty: int = 0,
) -> Proc:
    cmdline = tuple(cmd)
    comm = name or (cmdline[0].rpartition("/")[2][:15] if cmdline else "?")
    dead = state in DEAD_STATES  # an exited process has no command line left
    return Proc(
        pid,
        ppid,
        pgid,
        sid,
        state,
        comm,
        () if dead else cmdline,
        NOW - age,
        rss,
        uid,
        USERS[uid],
        cpu,
        threads,
        tty,
        kernel,
        int((1_000_000 - age) * 100),
        parse_python_cmdline(cmdline) if cmdline and not dead else None,
    )


def _procs() -> list[Proc]:
    day = 86400.0
    return [
        _p(1, 0, 1, 1, ["/sbin/init"], uid=0, age=40 * day, rss=12 * MiB, name="systemd"),
        _p(2, 0, 0, 0, [], uid=0, age=40 * day, rss=0, name="kthreadd", kernel=True),
        _p(14, 2, 0, 0, [], uid=0, age=40 * day, rss=0, name="kworker/0:1", kernel=True, state="I"),
        _p(612, 1, 612, 612, ["/usr/sbin/sshd", "-D"], uid=0, age=40 * day, rss=8 * MiB),
        _p(
            640,
            1,
            640,
            640,
            ["/usr/bin/nvidia-persistenced", "--user", "nvidia-persistenced"],
            uid=0,
            age=40 * day,
            rss=4 * MiB,
        ),
        _p(
            733,
            1,
            733,
            733,
            ["/usr/lib/postgresql/16/bin/postgres", "-D", "/var/lib/postgresql/16/main"],
            uid=113,
            age=40 * day,
            rss=31 * MiB,
        ),
        _p(741, 733, 741, 741, ["postgres: checkpointer"], uid=113, age=40 * day, rss=9 * MiB),
        _p(901, 1, 901, 901, ["/usr/sbin/cron", "-f"], uid=0, age=40 * day, rss=3 * MiB),
        _p(950, 1, 950, 950, [PY, "/usr/bin/unattended-upgrade"], uid=0, age=620, rss=88 * MiB, cpu=3.1),
        # alice: her user manager, jupyter, a guarded model server
        _p(1180, 1, 1180, 1180, ["/lib/systemd/systemd", "--user"], age=9 * day, rss=10 * MiB),
        _p(
            5001,
            1180,
            5001,
            5001,
            [PY, "/home/alice/.local/bin/jupyter-lab", "--no-browser"],
            age=2 * day,
            rss=310 * MiB,
            cpu=0.7,
            threads=9,
        ),
        _p(
            5050,
            5001,
            5050,
            5050,
            [PY, "-m", "ipykernel_launcher", "-f", "/run/user/1000/jupyter/kernel-7c1.json"],
            age=day,
            rss=2900 * MiB,
            threads=24,
        ),
        _p(
            5200,
            1180,
            5200,
            5200,
            [PY, "-m", "serve.api", "--port", "8080"],
            age=3 * day,
            rss=1900 * MiB,
            cpu=11.5,
            threads=31,
        ),
        # alice over ssh: the first training run with its DataLoader workers
        _p(2001, 612, 2001, 2001, ["sshd: alice@pts/0"], age=6 * 3600, rss=6 * MiB, name="sshd"),
        _p(2010, 2001, 2010, 2010, ["-bash"], age=6 * 3600, rss=5 * MiB, name="bash", tty=34816),
        _p(
            2101,
            2010,
            2101,
            2010,
            [PY, "train.py", *TRAIN],
            age=5 * 3600 + 720,
            rss=6400 * MiB,
            cpu=99.2,
            threads=43,
            tty=34816,
        ),
        *(
            _p(
                pid,
                2101,
                2101,
                2010,
                [PY, "train.py", *TRAIN],
                age=5 * 3600 + 700,
                rss=1500 * MiB,
                cpu=c,
                threads=4,
                tty=34816,
            )
            for pid, c in ((2135, 38.0), (2136, 35.5), (2137, 36.1), (2138, 33.9))
        ),
        # ...and in tmux, the same run started again by mistake, a suspended prep job and a zombie
        _p(2300, 1, 2300, 2300, ["tmux", "new", "-s", "exp"], age=2 * 3600, rss=4 * MiB),
        _p(2410, 2300, 2410, 2410, ["-bash"], age=2 * 3600, rss=5 * MiB, name="bash", tty=34817),
        _p(
            2466,
            2410,
            2466,
            2410,
            [PY, "train.py", *TRAIN],
            age=41 * 60,
            rss=5900 * MiB,
            cpu=97.4,
            threads=41,
            tty=34817,
        ),
        _p(
            2470,
            2466,
            2466,
            2410,
            [PY, "train.py", *TRAIN],
            age=40 * 60,
            rss=1400 * MiB,
            cpu=31.0,
            threads=4,
            tty=34817,
        ),
        _p(
            2471,
            2466,
            2466,
            2410,
            [PY, "train.py", *TRAIN],
            age=40 * 60,
            rss=1400 * MiB,
            cpu=30.2,
            threads=4,
            tty=34817,
        ),
        _p(2480, 2466, 2466, 2410, [], state="Z", age=39 * 60, rss=0, name="python3", tty=34817),
        _p(
            2550,
            2410,
            2550,
            2410,
            [PY, "-m", "data.prep", "--shard", "7"],
            state="T",
            age=3 * 3600,
            rss=720 * MiB,
            threads=2,
            tty=34817,
        ),
        _p(2602, 2410, 2602, 2410, ["vim", "notes.md"], age=90 * 60, rss=14 * MiB, tty=34817),
        # a crashed fine-tuning run left a DataLoader worker behind, still holding GPU memory
        _p(
            3120, 1, 3101, 3101, [PY, "finetune.py", "--epochs", "3"], age=7 * 3600, rss=2100 * MiB, threads=3
        ),
        # bob: a two-rank torchrun job
        _p(4001, 612, 4001, 4001, ["sshd: bob@pts/1"], uid=1001, age=3 * 3600, rss=6 * MiB, name="sshd"),
        _p(4010, 4001, 4010, 4010, ["-bash"], uid=1001, age=3 * 3600, rss=5 * MiB, name="bash", tty=34818),
        _p(
            4100,
            4010,
            4100,
            4010,
            [PY, "/usr/local/bin/torchrun", "--nproc-per-node", "2", "ddp.py"],
            uid=1001,
            age=2 * 3600,
            rss=190 * MiB,
            cpu=0.3,
            threads=5,
            tty=34818,
        ),
        *(
            _p(
                pid,
                4100,
                4100,
                4010,
                [PY, "-u", "ddp.py", "--epochs", "90"],
                uid=1001,
                age=2 * 3600 - 5,
                rss=4100 * MiB,
                cpu=c,
                threads=29,
                tty=34818,
            )
            for pid, c in ((4110, 88.7), (4111, 91.3))
        ),
        # bob's SLURM array tasks: the same script twice on purpose
        *(
            _p(
                pid,
                1,
                pid,
                pid,
                [PY, "eval.py", "--split", "val", "--task", str(t)],
                uid=1001,
                age=25 * 60,
                rss=900 * MiB,
                cpu=c,
            )
            for pid, t, c in ((6001, 1, 64.0), (6002, 2, 61.5))
        ),
        # the crashed fine-tuning run's other worker: it inherited the CUDA context and keeps /dev/nvidia1 open;
        # NVML does not list it, the kernel does
        _p(
            3121, 1, 3101, 3101, [PY, "finetune.py", "--epochs", "3"], age=7 * 3600, rss=1300 * MiB, threads=2
        ),
        # a model server in a docker container (its own PID namespace: 7010 is pid 1 in there)
        _p(
            7000,
            1,
            7000,
            7000,
            [
                "/usr/bin/containerd-shim-runc-v2",
                "-namespace",
                "moby",
                "-id",
                DOCKER_ID[:12],
                "-address",
                "/run/containerd/containerd.sock",
            ],
            uid=0,
            age=4 * 86400,
            rss=11 * MiB,
            threads=10,
        ),
        _p(
            7010,
            7000,
            7010,
            7010,
            [
                PY,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                "/models/llama-3-8b",
                "--port",
                "8000",
            ],
            uid=0,
            age=4 * 86400,
            rss=5200 * MiB,
            cpu=7.4,
            threads=57,
        ),
        *(
            _p(
                pid,
                7010,
                7010,
                7010,
                [
                    PY,
                    "-c",
                    "from multiprocessing.spawn import spawn_main; spawn_main()",
                    "--multiprocessing-fork",
                ],
                uid=0,
                age=4 * 86400,
                rss=610 * MiB,
                cpu=c,
                threads=3,
            )
            for pid, c in ((7031, 1.2), (7032, 0.9))
        ),
    ]


DOCKER_ID = "3f9a1c2b4d5e" + "8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d"  # 64 hex digits
_USER = "/user.slice/user-1000.slice"
_APPS = f"{_USER}/user@1000.service/app.slice"
_SLURM = "/system.slice/slurmstepd.scope"
# Each process's cgroup (v2 paths): systemd services and login scopes, a container, SLURM job steps.
_CGROUP_OF: dict[str, tuple[int, ...]] = {
    "/init.scope": (1,),
    "/system.slice/ssh.service": (612,),
    "/system.slice/nvidia-persistenced.service": (640,),
    "/system.slice/postgresql@16-main.service": (733, 741),
    "/system.slice/cron.service": (901,),
    "/system.slice/unattended-upgrades.service": (950,),
    f"{_USER}/user@1000.service/init.scope": (1180,),
    f"{_APPS}/jupyter.service": (5001, 5050),
    f"{_APPS}/serve-api.service": (5200,),
    f"{_USER}/session-3.scope": (2001, 2010, 2101, 2135, 2136, 2137, 2138),
    f"{_USER}/session-5.scope": (2300, 2410, 2466, 2470, 2471, 2480, 2550, 2602),
    f"{_USER}/session-2.scope": (3120, 3121),
    "/user.slice/user-1001.slice/session-7.scope": (4001, 4010, 4100, 4110, 4111),
    f"{_SLURM}/job_88413/step_0/user/task_0": (6001,),
    f"{_SLURM}/job_88414/step_0/user/task_0": (6002,),
    "/system.slice/containerd.service": (7000,),
    f"/system.slice/docker-{DOCKER_ID}.scope": (7010, 7031, 7032),
}
CGROUPS = {pid: path for path, pids in _CGROUP_OF.items() for pid in pids}
# `scontrol suspend 88414` froze the second eval task's job with the cgroup freezer: ps shows it as S.
FROZEN = frozenset({f"{_SLURM}/job_88414"})
_NSPID = {7010: (7010, 1), 7031: (7031, 14), 7032: (7032, 15)}
HOST_PIDNS, CONTAINER_PIDNS = 4026531836, 4026532781


def _cgroup_infos(procs: dict[int, Proc]) -> dict[int, CgroupInfo]:
    out = {}
    for pid, path in CGROUPS.items():
        if pid in procs:
            ns = CONTAINER_PIDNS if pid in _NSPID else HOST_PIDNS
            out[pid] = CgroupInfo(pid, path, 2, name_cgroup(path), ns, _NSPID.get(pid, (pid,)), path, None)
    return out


def _frozen(procs: dict[int, Proc], frozen: frozenset[str]) -> dict[int, str]:
    """pid -> the frozen cgroup (the outermost) that holds it."""
    out = {}
    for pid, path in CGROUPS.items():
        roots = sorted((f for f in frozen if is_within(path, f)), key=len)
        if pid in procs and not procs[pid].dead and roots:
            out[pid] = roots[0]
    return out


def _device_holders(procs: dict[int, Proc]) -> dict[int, DeviceHolder]:
    """What /proc/PID/fd shows: the NVML processes hold their GPU's /dev/nvidiaN, and 3121 holds /dev/nvidia1 too."""
    ctl = (GpuFd(3, "/dev/nvidiactl", "nvidiactl", None), GpuFd(5, "/dev/nvidia-uvm", "nvidia-uvm", None))
    held = {**{p.pid: p.device for p in _gpu().processes}, 3121: 1}
    return {
        pid: DeviceHolder(pid, procs[pid].start_ticks, (*ctl, GpuFd(7, f"/dev/nvidia{dev}", "nvidia", dev)))
        for pid, dev in held.items()
        if pid in procs
    }


def _gpu() -> GpuSnapshot:
    held = {
        2101: (0, 30.5),
        2466: (1, 22.0),
        3120: (1, 9.8),
        4110: (0, 4.0),
        4111: (1, 4.0),
        5050: (0, 3.1),
        5200: (1, 6.0),
        7010: (0, 18.5),
        88231: (0, 1.2),
    }
    processes = tuple(GpuProcess(pid, dev, int(g * GiB)) for pid, (dev, g) in held.items())
    used = {d: sum(int(g * GiB) for dev, g in held.values() if dev == d) + 600 * MiB for d in (0, 1)}
    total = 80 * GiB
    devices = tuple(
        GpuDevice(
            d,
            "NVIDIA A100-SXM4-80GB",
            f"GPU-5f1c0b7e-00{d}0-4a4e-9d7c-0c3e5a1b2f{d}0",
            total,
            used[d],
            total - used[d],
            util,
            d,
        )
        for d, util in ((0, 97), (1, 58))
    )
    return GpuSnapshot(True, None, devices, processes, NOW)


def _holder(pid: int, argv: Sequence[str], cwd: str, age: float, path: str) -> LockHolder:
    return LockHolder(pid, tuple(argv), cwd, "", NOW - age, "0.1.0", path, NOW - age)


def _locks() -> list[HeldLock]:
    train = f"{LOCKS}/train.lock"
    serve = f"{LOCKS}/serve.api.lock"
    return [
        HeldLock(
            serve,
            5200,
            (5200,),
            "flock",
            "write",
            True,
            _holder(5200, [PY, "-m", "serve.api", "--port", "8080"], "/srv/api", 3 * 86400, serve),
        ),
        HeldLock(
            train,
            2101,
            (2101,),
            "flock",
            "write",
            True,
            _holder(2101, [PY, "train.py", *TRAIN], "/home/alice/proj", 5 * 3600, train),
        ),
        HeldLock("/var/lib/apt/lists/lock", 950, (950,), "posix", "write", False, None),
    ]


def _args(p: Proc) -> tuple[str, ...]:
    return p.python.args if p.python is not None else ()


def _duplicates(
    procs: dict[int, Proc], gpu: GpuSnapshot
) -> tuple[list[DuplicateGroup], list[ScheduledInstance]]:
    ident = ScriptIdentity("file", "/home/alice/proj/train.py", "/home/alice/proj/train.py")
    mem = {p.pid: p.memory_used or 0 for p in gpu.processes}

    def inst(pid: int, locks: tuple[str, ...] = ()) -> Instance:
        p = procs[pid]
        return Instance(
            pid,
            p.create_time,
            "/home/alice/proj",
            _args(p),
            p.username,
            p.cmdline,
            mem.get(pid, 0),
            locks,
            p.uid,
            p.start_ticks,
            (pid,),
            (pid,),
        )

    groups = []
    if 2101 in procs and 2466 in procs:
        groups.append(DuplicateGroup(ident, (inst(2101, (f"{LOCKS}/train.lock",)), inst(2466))))
    ev = ScriptIdentity("file", "/home/bob/eval/eval.py", "/home/bob/eval/eval.py")
    sched = [
        ScheduledInstance(
            ev,
            Instance(
                pid,
                procs[pid].create_time,
                "/home/bob/eval",
                _args(procs[pid]),
                "bob",
                procs[pid].cmdline,
                0,
                (),
                1001,
                procs[pid].start_ticks,
                (pid,),
                (pid,),
            ),
            "slurm",
            f"88412_{t}",
        )
        for pid, t in ((6001, 1), (6002, 2))
        if pid in procs
    ]
    return groups, sched


def _guarded() -> list[GuardInfo]:
    return [
        GuardInfo(
            2101, "/home/alice/proj/train.py", f"{LOCKS}/train.lock", 10, int(24.2 * GiB), int(29.9 * GiB)
        ),
        GuardInfo(5200, "serve.api@/srv/api", f"{LOCKS}/serve.api.lock", 10, int(2.4 * GiB), int(5.8 * GiB)),
    ]


_EXTRA = {
    2101: ProcExtra("/home/alice/proj", {}),
    2466: ProcExtra("/home/alice/proj", {}),
    4110: ProcExtra(
        "/home/bob/ddp",
        {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500",
            "TORCHELASTIC_RUN_ID": "none",
        },
    ),
    4111: ProcExtra(
        "/home/bob/ddp",
        {
            "RANK": "1",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500",
            "TORCHELASTIC_RUN_ID": "none",
        },
    ),
    6001: ProcExtra("/home/bob/eval", {"SLURM_JOB_ID": "88413"}),
    6002: ProcExtra("/home/bob/eval", {"SLURM_JOB_ID": "88414"}),
}


def demo_model(
    seq: int = 1,
    gone: frozenset[int] = frozenset(),
    states: dict[int, str] | None = None,
    cleaned: frozenset[str] = frozenset(),
    frozen: frozenset[str] = FROZEN,
) -> Model:
    """The scenario as a Model; `gone` pids are left out, `states` overrides state letters, `cleaned` stale
    lock files are gone, `frozen` are the cgroups the freezer holds."""
    # A zombie whose parent is gone was reaped by init with it.
    procs = {p.pid: p for p in _procs() if p.pid not in gone and not (p.dead and p.ppid in gone)}
    for pid, st in (states or {}).items():
        if pid in procs:
            procs[pid] = procs[pid]._replace(state=st)
    snap = Snapshot(MappingProxyType(procs), NOW)
    gpu = _gpu()
    if gone:
        gpu = GpuSnapshot(True, None, gpu.devices, tuple(p for p in gpu.processes if p.pid not in gone), NOW)
    groups, sched = _duplicates(procs, gpu)
    locks = [lk for lk in _locks() if not set(lk.holders) & gone]
    stale = [p for p in (f"{LOCKS}/finetune.lock", f"{LOCKS}/old-eval.lock") if p not in cleaned]
    guarded = [g for g in _guarded() if g.pid not in gone]
    return make_model(
        seq,
        snap,
        gpu,
        duplicates=groups,
        scheduled=sched,
        locks=locks,
        stale_locks=stale,
        guarded=guarded,
        cgroups=_cgroup_infos(procs),
        frozen=_frozen(procs, frozen),
        holders=_device_holders(procs),
    )


def demo_model_without_gpu() -> Model:
    m = demo_model()
    gpu = GpuSnapshot(False, "NVML library not found (libnvidia-ml.so.1): no NVIDIA driver", (), (), NOW)
    return make_model(
        m.seq,
        m.snapshot,
        gpu,
        duplicates=m.duplicates,
        scheduled=m.scheduled,
        locks=m.locks,
        stale_locks=m.stale_locks,
        guarded=m.guarded.values(),
        cgroups=m.cgroups,
        frozen=m.frozen,
        holders=_device_holders(dict(m.snapshot.procs)),
    )  # the kernel's holders: no NVML needed


def demo_resolve(snapshot: Snapshot, targets: Sequence[Target]) -> list[Member]:
    """signals.resolve for the made-up processes: the same targets, the same protection rules (core's
    `process_protection`: init, kernel threads...), but nothing read from /proc: procguard's own lineage is
    left out, since the scenario's pids are not this machine's."""
    seen: set[int] = set()
    out: list[Member] = []
    for t in targets:
        refused = None
        if t.kind == "pid":
            procs = [p] if (p := snapshot.get(t.id)) is not None else []
        elif t.kind == "group":
            procs = views.group_members(snapshot, t.id)
        elif t.kind == "cgroup":
            procs, refused = _cgroup_members(snapshot, t.path)
        else:
            procs = views.tree(snapshot, t.id)
        for p in procs:
            if p.pid not in seen:
                seen.add(p.pid)
                out.append(Member.of(p, t, refused or process_protection(p, p.pid)))
    return out


def _cgroup_members(snapshot: Snapshot, path: str) -> tuple[list[Proc], str | None]:
    """A cgroup target in the scenario: its members (and those of its descendants), refused like core refuses."""
    procs = [p for pid, cg in sorted(CGROUPS.items()) if is_within(cg, path) and (p := snapshot.get(pid))]
    if path in ("", "/"):
        return procs, f"cgroup {path or '/'}: refusing the root cgroup (it holds every process)"
    if any(p.pid == 1 for p in procs):
        return procs, f"cgroup {path}: refusing, it contains pid 1 (init)"
    return procs, None


def demo_cgroup_plan(path: str, snapshot: Snapshot, frozen: frozenset[str]) -> CgroupPlan:
    """core's `cgroups.cgroup_plan` for the scenario: a cgroup v2 machine where procguard runs as root."""
    procs, refused = _cgroup_members(snapshot, path)
    cg = CgroupDir(path, "/sys/fs/cgroup" + path, 2, "/sys/fs/cgroup", "/")
    state = CgroupState(bool(procs), any(is_within(path, f) for f in frozen))
    return CgroupPlan(
        cg,
        tuple(p.pid for p in procs),
        refused,
        "cgroup.kill",
        "cgroup.freeze",
        None,
        state,
        name_cgroup(path),
    )


_TRAIN = ScriptIdentity(
    "file",
    "/home/alice/proj/train.py",
    "/home/alice/proj/train.py",
    (("script", "/home/alice/proj/train.py"),),
)
_DDP = ScriptIdentity(
    "file", "/home/bob/ddp/ddp.py", "/home/bob/ddp/ddp.py", (("script", "/home/bob/ddp/ddp.py"),)
)
_EVAL = ScriptIdentity(
    "file", "/home/bob/eval/eval.py", "/home/bob/eval/eval.py", (("script", "/home/bob/eval/eval.py"),)
)
# What duplicate detection says of the scenario's interesting processes: (identity, counted, code, reason,
# related). A Python process not listed is the only run of its script or module; any other is not Python.
_EXPLAINED: dict[int, tuple[ScriptIdentity | None, bool, str, str, int | None]] = {
    2101: (_TRAIN, True, "counted", "one of 2 runs of /home/alice/proj/train.py: a duplicate", None),
    2466: (_TRAIN, True, "counted", "one of 2 runs of /home/alice/proj/train.py: a duplicate", None),
    **{
        pid: (_TRAIN, False, "worker", f"worker of pid {parent} (which runs the same job)", parent)
        for pid, parent in (
            (2135, 2101),
            (2136, 2101),
            (2137, 2101),
            (2138, 2101),
            (2470, 2466),
            (2471, 2466),
        )
    },
    4100: (
        ScriptIdentity("file", _DDP.key, _DDP.display, _DDP.parts, "torchrun"),
        True,
        "counted",
        "the only run of this job",
        None,
    ),
    **{pid: (_DDP, False, "rank", "rank of pid 4100 (its torchrun launch)", 4100) for pid in (4110, 4111)},
    **{
        pid: (_EVAL, False, "scheduler", f"part of slurm job 88412_{t}: the scheduler owns it", None)
        for pid, t in ((6001, 1), (6002, 2))
    },
    2480: (None, False, "exited", "it has exited (a zombie waiting to be reaped)", None),
}


def demo_explain(p: Proc, cwd: str) -> Explanation:
    """The scenario's answer to `duplicates.explain(pid)`."""
    known = _EXPLAINED.get(p.pid)
    runs = (2101, 2466) if known is not None and known[0] is _TRAIN else ()
    if known is not None:
        ident, counted, code, reason, related = known
        return Explanation(p.pid, p.uid, p.username, p.cmdline, ident, counted, code, reason, related, runs)
    py = p.python
    if py is None or py.kind not in ("file", "module"):
        return Explanation(
            p.pid,
            p.uid,
            p.username,
            p.cmdline,
            None,
            False,
            "not_python",
            "not a Python program, nor a command started by `procguard run`",
        )
    if py.kind == "module":
        ident = ScriptIdentity(
            "module",
            f"{py.target}@{cwd}",
            f"-m {py.target} (in {cwd})",
            (("module", py.target), ("cwd", cwd)),
        )
    else:
        path = py.target if py.target.startswith("/") else f"{cwd}/{py.target}"
        ident = ScriptIdentity("file", path, path, (("script", path),))
    return Explanation(
        p.pid,
        p.uid,
        p.username,
        p.cmdline,
        ident,
        True,
        "counted",
        "the only run of this job",
        None,
        (p.pid,),
    )


class DemoBackend(SingleHost):
    """The demo data source. `static`: the app takes one model at start and runs no refresh loop, so
    what is drawn depends on nothing but the scenario. Actions pretend, with a short simulated grace."""

    static = True

    def __init__(self, *, gpu: bool = True, step: float = 0.25) -> None:
        self._gone: set[int] = set()
        self._states: dict[int, str] = {}
        self._frozen: set[str] = set(FROZEN)  # cgroups the freezer holds
        self._cleaned: set[str] = set()
        self._seq = 0
        self._gpu = gpu
        self._step = step  # simulated seconds per progress tick (sleeps only when actions run)
        self._lock = threading.Lock()
        self.locks_every_refresh = False

    def collect(self) -> Model:
        with self._lock:
            self._seq += 1
            if not self._gpu:
                return replace(demo_model_without_gpu(), seq=self._seq)
            return demo_model(
                self._seq,
                frozenset(self._gone),
                dict(self._states),
                frozenset(self._cleaned),
                frozenset(self._frozen),
            )

    def resolve(self, targets: Sequence[Target], snapshot: Snapshot) -> list[Member]:
        return demo_resolve(snapshot, targets)

    def _results(self, members: Sequence[Member], outcome: Outcome, elapsed: float) -> list[SignalResult]:
        return [
            SignalResult(
                m.pid,
                Outcome.REFUSED if m.protected else outcome,
                0.0 if m.protected else elapsed,
                m.protected,
                m.name,
                m.cmdline,
                m.username,
            )
            for m in members
        ]

    def act(
        self,
        action: str,
        targets: Sequence[Target],
        snapshot: Snapshot,
        *,
        grace: float = 5.0,
        on_progress: ProgressFn | None = None,
    ) -> list[SignalResult]:
        name = action_name(action)  # core's names and check
        if name == "term":
            return self.terminate(targets, grace, snapshot, on_progress)
        if name == "kill":
            return self.kill(targets, snapshot, on_progress)
        return self.pause(targets, snapshot) if name == "pause" else self.resume(targets, snapshot)

    def terminate(
        self,
        targets: Sequence[Target],
        grace: float,
        snapshot: Snapshot,
        on_progress: ProgressFn | None = None,
    ) -> list[SignalResult]:
        members = [m for m in self.resolve(targets, snapshot) if m.state not in DEAD_STATES]
        live = tuple(m.pid for m in members if not m.protected)
        if on_progress:
            on_progress(Progress("sigterm", live, grace))
        left = grace
        while left > 0:
            time.sleep(min(self._step, left))
            left = max(0.0, left - self._step)
            if on_progress:
                on_progress(Progress("waiting", live, left))
        # The scenario's training runs ignore SIGTERM while saving a checkpoint: they need the SIGKILL.
        if on_progress:
            on_progress(Progress("sigkill", live, 0.0))
            on_progress(Progress("done", live, 0.0))
        with self._lock:
            self._gone.update(live)
        return self._results(members, Outcome.KILLED, grace)

    def plan_notes(self, kind: str, targets: Sequence[Target]) -> list[str]:
        snap = demo_model().snapshot
        with self._lock:
            frozen = frozenset(self._frozen)
        return [
            cgroup_note(kind, demo_cgroup_plan(t.path, snap, frozen)) for t in targets if t.kind == "cgroup"
        ]

    def kill(
        self, targets: Sequence[Target], snapshot: Snapshot, on_progress: ProgressFn | None = None
    ) -> list[SignalResult]:
        members = self.resolve(targets, snapshot)
        with self._lock:
            self._gone.update(m.pid for m in members if not m.protected)
        return self._results(members, Outcome.KILLED, 0.01)

    def pause(self, targets: Sequence[Target], snapshot: Snapshot) -> list[SignalResult]:
        """SIGSTOP (T) for processes; a cgroup is frozen instead (its members show F)."""
        members = self.resolve(targets, snapshot)
        cgroups = {t.path for t in targets if t.kind == "cgroup"}
        by_cgroup = {m.pid for m in members if m.target.kind == "cgroup"}
        with self._lock:
            self._states.update({m.pid: "T" for m in members if not m.protected and m.pid not in by_cgroup})
            if not any(m.protected for m in members if m.pid in by_cgroup):
                self._frozen.update(cgroups)
        return self._results(members, Outcome.PAUSED, 0.0)

    def resume(self, targets: Sequence[Target], snapshot: Snapshot) -> list[SignalResult]:
        """SIGCONT; a cgroup target is thawed (and every frozen cgroup inside it)."""
        members = self.resolve(targets, snapshot)
        cgroups = [t.path for t in targets if t.kind == "cgroup"]
        with self._lock:
            self._states.update({m.pid: "S" for m in members if not m.protected})
            self._frozen = {f for f in self._frozen if not any(is_within(f, c) for c in cgroups)}
        return self._results(members, Outcome.RESUMED, 0.0)

    def flush(self, pid: int, snapshot: Snapshot | None = None) -> str:
        if pid not in (2101, 5200):
            raise LookupError(f"pid {pid} is not a guarded process: it does not answer flush requests")
        return "flushed CUDA cache: freed 5.7 GiB (reserved 29.9 GiB -> 24.2 GiB)"

    def plan_duplicates(
        self, identity: ScriptIdentity, grace: float, snapshot: Snapshot, *, all_users: bool = False
    ) -> TerminateReport:
        groups, _ = _duplicates(dict(snapshot.procs), _gpu())
        g = next((g for g in groups if g.identity.key == identity.key), None)
        if g is None:
            return TerminateReport(
                skipped_reason=f"{identity.display} is no longer running twice", dry_run=True
            )
        ending = g.instances[1:]
        members = demo_resolve(snapshot, [Target.tree(i.pid) for i in ending])
        return TerminateReport((g,), (g.instances[0],), tuple(ending), (), tuple(members), (), None, True)

    def end_duplicates(
        self,
        identity: ScriptIdentity,
        grace: float,
        snapshot: Snapshot,
        on_progress: ProgressFn | None = None,
        *,
        victims: Sequence[Instance] | None = None,
        all_users: bool = False,
    ) -> TerminateReport:
        plan = self.plan_duplicates(identity, grace, snapshot)
        if plan.skipped_reason:
            return plan
        # Nothing changes identity in the scenario: the confirmed runs are the ones still there.
        ended = [i for i in plan.ended if victims is None or i.proc_id in {v.proc_id for v in victims}]
        results = self.terminate([Target.tree(i.pid) for i in ended], grace, snapshot, on_progress)
        return TerminateReport(plan.groups, plan.kept, tuple(ended), tuple(results), (), (), None, False)

    def clean_locks(self, paths: Sequence[str]) -> list[Path]:
        with self._lock:
            self._cleaned.update(paths)
        return [Path(p) for p in paths]

    def proc_extra(self, pid: int, snapshot: Snapshot | None = None) -> ProcExtra:
        procs = {p.pid: p for p in _procs()}
        p = procs.get(pid)
        if p is None:
            return ProcExtra(None, None, None, f"no process {pid}")
        extra = _EXTRA.get(pid) or ProcExtra("/root" if p.uid == 0 else f"/home/{p.username}", {})
        return replace(extra, explanation=demo_explain(p, extra.cwd or "/"))


def _wave(i: int, period: int) -> int:
    """A triangle wave from 0 up to period // 2 and back, in integer steps."""
    k = i % period
    return k if k <= period // 2 else period - k


def demo_history(samples: int = 300) -> History:
    """The scenario's last five minutes, one sample a second until NOW, for the GPU view's graphs and the
    details screen's (the screenshots): deterministic, integer steps only. GPU 0: alice's first training run
    (2101) loads its model a minute in and trains at ~95%, dropping to 40% while it evaluates every 75 s; GPU 1:
    the second run (2466) and the others, utilization wandering between 45% and 75%. Every graph ends at what
    the scenario shows."""
    model = demo_model()
    hist = History()
    times = [NOW - samples + i for i in range(samples)]  # the app's first refresh (at NOW) comes next
    dev0, dev1 = model.gpu.devices
    run = model.gpu_by_pid.get(2101, 0)
    load = [min(30, max(0, i - 60)) for i in range(samples)]  # 0 before the model loads, 30 once loaded
    evaluating = [load[i] == 30 and i % 75 >= 65 for i in range(samples)]
    util0 = [
        3 + i % 4 if not load[i] else 40 if evaluating[i] else min(97, 40 + 2 * load[i] - i % 3)
        for i in range(samples)
    ]
    util0[-1] = dev0.utilization or 0
    hist.seed_device(
        0, dev0.memory_total, times, [dev0.memory_used - run + run * f // 30 for f in load], util0
    )
    util1 = [45 + _wave(i, 64) for i in range(samples)]
    util1[-1] = dev1.utilization or 0
    hist.seed_device(
        1,
        dev1.memory_total,
        times,
        [dev1.memory_used - (samples - 1 - i) * 8 * MiB for i in range(samples)],
        util1,
    )
    p = model.snapshot[2101]
    hist.seed_proc(
        2101,
        p.start_ticks,
        times,
        [
            0.0 if not f else 35.0 if ev else p.cpu_percent * f / 30
            for f, ev in zip(load, evaluating, strict=True)
        ],
        [p.rss - (30 - f) * 40 * MiB - (samples - 1 - i) * MiB for i, f in enumerate(load)],
        [run * f // 30 for f in load],
    )
    q = model.snapshot[2466]
    hist.seed_proc(
        2466,
        q.start_ticks,
        times,
        [q.cpu_percent - _wave(i, 50) for i in range(samples)],
        [q.rss - _wave(i, 90) * 8 * MiB for i in range(samples)],
        [model.gpu_by_pid.get(2466, 0)] * samples,
    )
    return hist
