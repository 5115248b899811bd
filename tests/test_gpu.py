"""GPU snapshot: the unavailable path for real, caching and joins through a fake NVML, the real path on a GPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from functools import cache

import pytest

from procguard.core import gpu as G
from procguard.core.cli import main as cli_main
from procguard.core.cli.gpu import format_gpu, gpu_report
from procguard.core.gpu import GpuMonitor, GpuProcess
from procguard.core.snapshot import process_snapshot
from tests.conftest import ProcStarter, wait_for
from tests.fake_nvml import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    FakeDevice,
    FakeNvml,
)

PY = sys.executable
MiB = 1 << 20
GiB = 1 << 30


@cache
def real_nvml() -> G.GpuSnapshot:
    return GpuMonitor().snapshot()


needs_no_nvml = pytest.mark.skipif("real_nvml().available", reason="NVML works here: not the no-GPU path")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------------------------------------
# The unavailable path, for real (no driver on this machine)


def test_importing_procguard_loads_neither_nvml_nor_torch() -> None:
    code = (
        "import sys, json, procguard.core, procguard.core.gpu, procguard.core.flush, procguard.core.nvml, "
        "procguard.core.cli.gpu; print(json.dumps(['pynvml' in sys.modules, 'torch' in sys.modules]))"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert json.loads(out) == [False, False]


@needs_no_nvml
def test_unavailable_has_a_reason_and_is_remembered() -> None:
    mon = GpuMonitor()
    first = mon.snapshot()
    assert first.available is False
    assert first.reason and ("NVML" in first.reason or "GPU" in first.reason)
    assert first.devices == () and first.processes == ()
    for _ in range(50):
        assert mon.snapshot(max_age=0) is first  # remembered, not retried
    assert mon.init_attempts == 1
    assert mon.reads == 0


@needs_no_nvml
def test_default_snapshot_and_cli_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    snap = G.gpu_snapshot()
    assert not snap.available and snap.reason
    assert G.gpu_snapshot(max_age=0) is snap
    assert cli_main(["gpu", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    # Issue 18: the kernel's holders (open device files) come with it, NVML or not; none on a machine without GPUs.
    assert obj == {
        "available": False,
        "reason": snap.reason,
        "devices": [],
        "processes": [],
        "holders": [],
        "foreign": [],
        "orphans": 0,
        "unreadable": obj["unreadable"],
    }
    assert cli_main(["gpu"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"GPU: not available: {snap.reason}"


# --------------------------------------------------------------------------------------------------------
# NVML reading and caching, through the fake


def two_devices() -> FakeNvml:
    return FakeNvml(
        [
            FakeDevice(
                name="Fake A",
                uuid="GPU-aaaa",
                total=80 * GiB,
                used=3 * GiB,
                utilization=42,
                compute=[(101, 1 * GiB), (102, None), (103, 512 * MiB)],
                graphics=[(101, 1 * GiB), (104, 64 * MiB), (103, 600 * MiB)],
            ),
            FakeDevice(
                name="Fake B",
                uuid="GPU-bbbb",
                total=40 * GiB,
                used=1 * GiB,
                utilization=None,
                compute=[(101, 256 * MiB)],
            ),
        ]
    )


def test_reads_devices_and_union_of_compute_and_graphics() -> None:
    fake = two_devices()
    snap = GpuMonitor(nvml=fake).snapshot()
    assert snap.available and snap.reason is None
    a, b = snap.devices
    assert (a.index, a.name, a.uuid, a.memory_total, a.memory_used, a.memory_free, a.utilization) == (
        0,
        "Fake A",
        "GPU-aaaa",
        80 * GiB,
        3 * GiB,
        77 * GiB,
        42,
    )
    assert (b.index, b.name, b.utilization) == (1, "Fake B", None)  # NotSupported -> None
    assert sorted(snap.processes, key=lambda p: (p.device, p.pid)) == [
        GpuProcess(101, 0, 1 * GiB),  # in both lists: once
        GpuProcess(102, 0, None),  # NVML can't tell
        GpuProcess(103, 0, 600 * MiB),  # both lists, different figures: the larger
        GpuProcess(104, 0, 64 * MiB),  # graphics only
        GpuProcess(101, 1, 256 * MiB),  # same pid, other device: its own entry
    ]
    assert G.gpu_memory_by_pid(snap) == {101: 1 * GiB + 256 * MiB, 102: 0, 103: 600 * MiB, 104: 64 * MiB}


@pytest.mark.parametrize(
    ("fake", "reason"),
    [
        (
            FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND),
            "NVML library not found (libnvidia-ml.so.1): no NVIDIA driver",
        ),
        (FakeNvml(init_error=NVML_ERROR_DRIVER_NOT_LOADED), "NVIDIA driver not loaded"),
        (FakeNvml([]), "no NVIDIA GPU found"),
    ],
)
def test_unavailable_reasons(fake: FakeNvml, reason: str) -> None:
    snap = GpuMonitor(nvml=fake).snapshot()
    assert not snap.available
    assert snap.reason is not None and snap.reason.startswith(reason)


def test_failure_is_retried_only_after_retry_after() -> None:
    fake, clock = FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND), Clock()
    mon = GpuMonitor(nvml=fake, retry_after=60, clock=clock)
    first = mon.snapshot(max_age=0)
    fake.init_error = None  # the driver comes back
    clock.t += 59
    assert mon.snapshot(max_age=0) is first
    assert fake.calls["nvmlInit"] == 1
    clock.t += 2
    assert mon.snapshot(max_age=0).available
    assert fake.calls["nvmlInit"] == 2


def test_snapshot_is_cached_for_max_age() -> None:
    fake, clock = two_devices(), Clock()
    mon = GpuMonitor(nvml=fake, clock=clock)
    s1 = mon.snapshot(max_age=1.0)
    clock.t += 0.5
    assert mon.snapshot(max_age=1.0) is s1
    assert mon.last() is s1
    fake.devices[0].compute.append((105, MiB))
    clock.t += 0.6
    s2 = mon.snapshot(max_age=1.0)
    assert s2 is not s1 and 105 in G.gpu_memory_by_pid(s2)
    assert mon.snapshot(max_age=0) is not s2
    assert (mon.init_attempts, mon.reads, fake.calls["nvmlInit"]) == (1, 3, 1)  # NVML stays initialised
    mon.invalidate()
    assert mon.last() is None
    mon.close()
    assert fake.calls["nvmlShutdown"] == 1


def test_concurrent_callers_share_one_read() -> None:
    fake = two_devices()
    fake.read_delay = 0.2
    mon = GpuMonitor(nvml=fake)
    barrier = threading.Barrier(8)
    results: list[G.GpuSnapshot] = []

    def worker() -> None:
        barrier.wait()
        results.append(mon.snapshot(max_age=5))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r is results[0] for r in results)
    assert mon.reads == 1 and mon.init_attempts == 1


def test_minor_numbers_map_kernel_holders_to_devices() -> None:
    """nvmlDeviceGetMinorNumber per device (the N of /dev/nvidiaN): unknown where NVML can't tell, never guessed."""
    fake = FakeNvml([FakeDevice(minor=3), FakeDevice(uuid="GPU-1", minor=-1), FakeDevice(uuid="GPU-2")])
    snap = GpuMonitor(nvml=fake).snapshot()
    assert [d.minor for d in snap.devices] == [3, None, 2]
    assert snap.minor_to_index == {3: 0, 2: 2}
    assert G.GpuSnapshot(False, "x", (), (), 0.0).minor_to_index == {}


# --------------------------------------------------------------------------------------------------------
# Joins with the process snapshot: real processes, GPU figures from the fake

TREE = """
import subprocess, sys, time
code = ("import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        " print(g.pid, flush=True); time.sleep(600)")
c = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
g = c.stdout.readline().decode().strip()
print("ready", flush=True)
print(c.pid, g, flush=True)
time.sleep(600)
"""


def start_tree(procs: ProcStarter) -> tuple[int, int, int]:
    """leader (own session and group) -> child -> grandchild, all in the leader's group."""
    p = procs.python(TREE, name="tree")
    assert p.stdout is not None
    child, grandchild = map(int, p.stdout.readline().split())
    procs.track(child)
    procs.track(grandchild)
    return p.pid, child, grandchild


def unused_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1  # never a live pid here: beyond the kernel's limit


def test_tree_group_and_unknown_pids(procs: ProcStarter) -> None:
    leader, child, grandchild = start_tree(procs)
    ghost = unused_pid()
    fake = FakeNvml(
        [
            FakeDevice(
                compute=[
                    (child, 100 * MiB),
                    (grandchild, 200 * MiB),
                    (ghost, 50 * MiB),
                    (os.getpid(), 1 * GiB),
                ]
            ),
            FakeDevice(uuid="GPU-1", compute=[(grandchild, 300 * MiB)]),
        ]
    )
    gpu = GpuMonitor(nvml=fake).snapshot()
    snap = process_snapshot()
    assert G.gpu_memory_by_pid(gpu)[grandchild] == 500 * MiB
    assert G.tree_gpu_memory(snap, gpu, leader) == 600 * MiB  # the leader holds none itself
    assert G.tree_gpu_memory(snap, gpu, child) == 600 * MiB
    assert G.tree_gpu_memory(snap, gpu, grandchild) == 500 * MiB
    assert G.group_gpu_memory(snap, gpu, leader) == 600 * MiB  # not the test process's own 1 GiB
    assert G.unknown_gpu_pids(snap, gpu) == [GpuProcess(ghost, 0, 50 * MiB)]
    holders = [(h.proc.pid, h.memory_used, h.devices) for h in G.gpu_holders(snap, gpu)]
    assert holders == [(os.getpid(), GiB, (0,)), (grandchild, 500 * MiB, (0, 1)), (child, 100 * MiB, (0,))]
    assert G.orphaned_gpu_processes(snap, gpu) == []  # every parent alive

    report = gpu_report(gpu, lookup=lambda pid: None)
    assert set(report) == {"available", "reason", "devices", "processes"}
    assert [set(d) for d in report["devices"]] == [
        {"index", "name", "uuid", "memory_total", "memory_used", "utilization", "minor"}
    ] * 2
    assert [d["minor"] for d in report["devices"]] == [0, 1]
    assert {p["pid"] for p in report["processes"]} == {child, grandchild, ghost, os.getpid()}
    assert all(
        set(p) == {"pid", "device", "memory_used", "guarded", "reserved", "allocated"}
        for p in report["processes"]
    )
    text = "\n".join(format_gpu(report, snap, gpu))
    # A pid NVML lists that is not ours: named as what it is, never a bare error (issue 18).
    assert f"{ghost:>7}" in text and f"host pid {ghost} (another PID namespace)" in text


DETACHED = """
import os, time
r, w = os.pipe()
pid = os.fork()
if pid == 0:                # a detached job (setsid, like nohup or a service): its own group leader
    os.setsid()
    time.sleep(600)
    os._exit(0)
print("ready", flush=True)
print(pid, flush=True)
"""


def test_orphaned_workers(procs: ProcStarter) -> None:
    leader, child, grandchild = start_tree(procs)
    other_leader, other_child, _ = start_tree(procs)
    d = procs.python(DETACHED, name="detached")
    assert d.stdout is not None
    detached = int(d.stdout.readline())
    procs.track(detached)
    d.wait(timeout=10)  # the detached job's parent is gone too
    os.kill(leader, signal.SIGKILL)  # a process this test started, by pid
    procs.started[0].wait(timeout=10)
    wait_for(
        lambda: all(
            (p := process_snapshot().get(pid)) is not None and p.ppid not in (leader, d.pid)
            for pid in (child, detached)
        )
    )
    fake = FakeNvml(
        [
            FakeDevice(
                compute=[
                    (child, 100 * MiB),
                    (grandchild, 200 * MiB),
                    (other_child, 300 * MiB),
                    (detached, 400 * MiB),
                ]
            )
        ]
    )
    gpu = GpuMonitor(nvml=fake).snapshot()
    snap = process_snapshot()
    orphans = G.orphaned_gpu_processes(snap, gpu)
    # The child lost its parent. Not orphans: the grandchild (its parent, the child, lives), the other tree's
    # worker (intact), the detached job (a group leader: adopted by design).
    assert [(h.proc.pid, h.memory_used) for h in orphans] == [(child, 100 * MiB)]
    assert other_leader in snap
    text = "\n".join(format_gpu(gpu_report(gpu, lookup=lambda pid: None), snap, gpu))
    assert "[orphaned: parent died]" in text


# --------------------------------------------------------------------------------------------------------
# The real NVML path (marked gpu; skipped without a driver, a GPU, and CUDA torch in this interpreter)


@cache
def cuda_skip_reason() -> str | None:
    snap = real_nvml()
    if not snap.available:
        return f"no GPU: {snap.reason}"
    r = subprocess.run(
        [PY, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.stdout.strip() != "True":
        return f"torch in {PY} can't use CUDA ({(r.stdout + r.stderr).strip()[-200:]})"
    return None


@pytest.fixture
def cuda() -> None:
    if (why := cuda_skip_reason()) is not None:
        pytest.skip(why)


ALLOC = """
import sys, time
import torch
x = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device="cuda")
x.fill_(1)
torch.cuda.synchronize()
print("ready", flush=True)
print(str(getattr(torch.cuda.get_device_properties(x.device), "uuid", "")), flush=True)
time.sleep(600)
"""

# A parent that uses no GPU and starts a child that does (the child in the parent's group and session).
ALLOC_PARENT = """
import subprocess, sys, time
c = subprocess.Popen([sys.executable, sys.argv[2], sys.argv[1]], stdout=subprocess.PIPE)
assert c.stdout.readline().strip() == b"ready"
uuid = c.stdout.readline().decode().strip()
print("ready", flush=True)
print(c.pid, uuid, flush=True)
time.sleep(600)
"""


def held_on(mon: GpuMonitor, pid: int, uuid: str) -> int:
    snap = mon.snapshot(max_age=0)
    index = {d.index for d in snap.devices if d.uuid.removeprefix("GPU-") == uuid.removeprefix("GPU-")}
    if not uuid and len(snap.devices) == 1:
        index = {snap.devices[0].index}
    return sum(p.memory_used or 0 for p in snap.processes if p.pid == pid and p.device in index)


@pytest.mark.gpu
def test_cuda_allocation_shows_on_its_device(procs: ProcStarter, cuda: None) -> None:
    size = GiB
    p = procs.python(ALLOC, str(size), name="alloc")
    assert p.stdout is not None
    uuid = p.stdout.readline().decode().strip()
    mon = GpuMonitor()
    wait_for(lambda: held_on(mon, p.pid, uuid) >= size, 30)
    snap = mon.snapshot(max_age=0)
    assert snap.available and snap.devices and all(d.memory_total > 0 for d in snap.devices)
    dev = next(
        d for d in snap.devices if not uuid or d.uuid.removeprefix("GPU-") == uuid.removeprefix("GPU-")
    )
    assert dev.memory_used >= size
    assert p.pid not in {u.pid for u in G.unknown_gpu_pids(process_snapshot(), snap)}  # same PID namespace


@pytest.mark.gpu
def test_cuda_tree_total_includes_child(procs: ProcStarter, cuda: None, tmp_path: os.PathLike[str]) -> None:
    size = GiB
    child_script = os.path.join(tmp_path, "alloc_child.py")
    with open(child_script, "w") as f:
        f.write(ALLOC)
    parent = procs.python(ALLOC_PARENT, str(size), child_script, name="alloc_parent")
    assert parent.stdout is not None
    child_s, *uuid = parent.stdout.readline().decode().split()
    child = int(child_s)
    procs.track(child)
    mon = GpuMonitor()
    wait_for(lambda: held_on(mon, child, uuid[0] if uuid else "") >= size, 30)
    gpu, snap = mon.snapshot(max_age=0), process_snapshot()
    assert parent.pid not in G.gpu_memory_by_pid(gpu)  # the parent itself holds nothing
    assert G.tree_gpu_memory(snap, gpu, parent.pid) >= size
    assert G.group_gpu_memory(snap, gpu, parent.pid) >= size
    assert child not in {h.proc.pid for h in G.orphaned_gpu_processes(snap, gpu)}
    # the parent dies: the child is now an orphaned worker still holding its memory
    os.kill(parent.pid, signal.SIGKILL)  # started by this test, by pid
    parent.wait(timeout=10)
    wait_for(lambda: (p := process_snapshot().get(child)) is not None and p.ppid != parent.pid)
    gpu, snap = mon.snapshot(max_age=0), process_snapshot()
    assert child in {h.proc.pid for h in G.orphaned_gpu_processes(snap, gpu)}
