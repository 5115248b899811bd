"""core/gpuholders.py: GPU holders from /proc/PID/fd without a GPU. Character-device nodes made with mknod in a
temp folder point at /dev/null's major/minor (1, 3); real processes hold them open and are found, mapped to
devices, cached, and flagged as orphans when their parent died. The real device path has a test marked `gpu`."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from procguard.core import gpu as gpu_mod
from procguard.core import gpuholders as G
from procguard.core.cli import main as cli_main
from procguard.core.nvml import GpuProcess
from procguard.core.procid import ProcId
from procguard.core.snapshot import Proc, Snapshot, process_snapshot
from tests.conftest import PY, ProcStarter, is_gone, wait_for
from tests.fake_nvml import FakeDevice, FakeNvml

GiB = 1 << 30

NODES = ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "dri/renderD128", "kfd")


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    d = tmp_path / "dev"
    (d / "dri").mkdir(parents=True)
    try:
        for n in NODES:
            os.mknod(d / n, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod of character devices needs root (CAP_MKNOD)")
    try:
        with open(d / "nvidia0", "rb"):
            pass
    except OSError as e:
        pytest.skip(f"device nodes can't be opened in {tmp_path} (nodev mount?): {e}")
    return d


HOLDER = """
import os, sys, time
dev = sys.argv[1]
fds = [os.open(os.path.join(dev, n), os.O_RDONLY) for n in sys.argv[2:]]
print("ready", flush=True)
for line in sys.stdin:  # commands: "open NAME" / "swap NAME" (the same fd number, now /dev/null)
    cmd, name = line.split()
    if cmd == "open":
        fds.append(os.open(os.path.join(dev, name), os.O_RDONLY))
    else:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, fds[[os.readlink(f"/proc/self/fd/{f}").endswith(name) for f in fds].index(True)])
        os.close(null)
    print("done", flush=True)
"""


def hold(procs: ProcStarter, dev: Path, *names: str) -> subprocess.Popen[bytes]:
    script = procs.tmp_path / "holder.py"
    script.write_text(HOLDER)
    p = procs.popen(
        [PY, str(script), str(dev), *names],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    procs.wait_ready(p)
    return p


def command(p: subprocess.Popen[bytes], line: str) -> None:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(line.encode() + b"\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == b"done"


def ids(*ps: subprocess.Popen[bytes]) -> list[ProcId]:
    out = []
    for p in ps:
        i = ProcId.of(p.pid)
        assert i is not None
        out.append(i)
    return out


# ---------------------------------------------------------------------------------------------- pure


def test_classify() -> None:
    pat = G.DevicePatterns.under("/dev")
    assert G.classify("/dev/nvidia3", pat) == ("nvidia", 3)
    assert G.classify("/dev/nvidia12 (deleted)", pat) == ("nvidia", 12)
    assert G.classify("/dev/nvidiactl", pat) == ("nvidiactl", None)
    assert (
        G.classify("/dev/nvidia-uvm", pat) == G.classify("/dev/nvidia-uvm-tools", pat) == ("nvidia-uvm", None)
    )
    assert G.classify("/dev/dri/renderD128", pat) == ("render", None)
    assert G.classify("/dev/kfd", pat) == ("kfd", None)
    for no in (
        "/dev/nvidia-modeset",
        "/dev/nvidia0x",
        "/dev/dri/card0",
        "/dev/null",
        "socket:[123]",
        "/tmp/dev/nvidia0",
        "/dev/nvidia",
    ):
        assert G.classify(no, pat) is None, no
    other = G.DevicePatterns.under("/tmp/x y/")
    assert G.classify("/tmp/x y/nvidia1", other) == ("nvidia", 1)
    assert G.classify("/dev/nvidia1", other) is None


def test_default_patterns_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(G.DEV_DIR_ENV, str(tmp_path))
    assert G.classify(f"{tmp_path}/nvidia0", G.default_patterns()) == ("nvidia", 0)
    monkeypatch.delenv(G.DEV_DIR_ENV)
    assert G.default_patterns() == G.DevicePatterns.under("/dev")


def _proc(pid: int, ppid: int, pgid: int, sid: int, state: str = "S", name: str = "python") -> Proc:
    return Proc(
        pid, ppid, pgid, sid, state, name, (name,), 0.0, 0, 0, "root", 0.0, 1, 0, False, pid * 10, None
    )


def _snap(*procs: Proc) -> Snapshot:
    return Snapshot({p.pid: p for p in procs})


def test_orphan_rule() -> None:
    init = _proc(1, 0, 1, 1, name="init")
    shell = _proc(50, 1, 50, 50, name="bash")
    reaper = _proc(60, 1, 60, 60, name="systemd")
    main = _proc(100, 50, 100, 50)
    worker = _proc(101, 100, 100, 50)
    orphan = _proc(101, 1, 100, 50)  # its main process (group leader) died: adopted by init
    assert G.orphan_reason(_snap(init, shell, main, worker), worker, check_units=False) is None
    why = G.orphan_reason(_snap(init, shell, orphan), orphan, check_units=False)
    assert why == "adopted by init (pid 1); its process-group leader 100 is gone"
    # adopted by a subreaper (another session), session leader gone too
    lost = _proc(201, 60, 200, 200)
    why = G.orphan_reason(_snap(init, reaper, lost), lost, check_units=False)
    assert (
        why is not None
        and "subreaper" in why
        and "process-group leader 200" in why
        and "session leader 200" in why
    )
    # a zombie leader counts as gone
    zombie_main = _proc(100, 50, 100, 50, state="Z")
    assert G.orphan_reason(_snap(init, shell, zombie_main, orphan), orphan, check_units=False) is not None
    # not orphans: its own session leader (daemon, systemd service), leaders alive, parent in the same session
    daemon = _proc(300, 1, 300, 300)
    assert G.orphan_reason(_snap(init, daemon), daemon, check_units=False) is None
    pipe_b = _proc(401, 50, 400, 50)  # `a | b` after a exited: the shell is still its parent
    assert G.orphan_reason(_snap(init, shell, pipe_b), pipe_b, check_units=False) is None
    in_container = _proc(11, 1, 1, 1)  # beside a container's PID 1, which is alive and leads its group
    assert G.orphan_reason(_snap(init, in_container), in_container, check_units=False) is None
    assert G.orphan_reason(_snap(init), init, check_units=False) is None


def _holder(pid: int, *paths: str) -> G.DeviceHolder:
    pat = G.DevicePatterns.under("/dev")
    fds = []
    for i, path in enumerate(paths):
        hit = G.classify(path, pat)
        assert hit is not None
        fds.append(G.GpuFd(3 + i, path, hit[0], hit[1]))
    return G.DeviceHolder(pid, pid * 10, tuple(fds))


def test_merge_with_nvml_and_foreign_pids() -> None:
    minor_to_index = {0: 0, 1: 1, 2: 2}
    holders = {
        100: _holder(100, "/dev/nvidiactl", "/dev/nvidia0"),  # NVML lists it
        200: _holder(200, "/dev/nvidiactl", "/dev/nvidia0"),  # NVML doesn't: a leftover that pins memory
        300: _holder(300, "/dev/nvidia1"),  # in a container: NVML lists it under its host pid 99999
        400: _holder(400, "/dev/dri/renderD128", "/dev/kfd"),  # AMD: device open, no figures
        500: _holder(500, "/dev/nvidia2"),  # two foreign pids and one local holder on GPU 2: ambiguous
    }
    nvml = [
        GpuProcess(100, 0, 5 << 30),
        GpuProcess(99999, 1, 1 << 30),
        GpuProcess(88888, 2, 1 << 20),
        GpuProcess(77777, 2, None),
        GpuProcess(600, 0, None),
    ]
    local = [100, 200, 300, 400, 500, 600]
    merged, foreign = G.merge_holders(holders, nvml, None, minor_to_index, local_pids=local)
    by = {m.pid: m for m in merged}
    assert by[100] == G.MergedHolder(
        100, (0,), (0,), ("nvidia", "nvidiactl"), 5 << 30, True, True, None, None
    )
    assert by[200].in_nvml is False and by[200].memory_used is None and by[200].devices == (0,)
    assert by[200].device_open_only
    assert by[400].kinds == ("kfd", "render") and by[400].devices == () and by[400].device_open_only
    assert by[600].in_kernel is False and by[600].in_nvml  # NVML only (its fds unreadable without root)
    assert merged[0].pid == 100  # largest memory first
    f = {x.host_pid: x for x in G.match_foreign_pids(nvml, local, holders, minor_to_index)}
    assert set(f) == {99999, 88888, 77777}
    assert f[99999].local_pid == 300 and f[99999].label == "pid 300 (host pid 99999)"
    assert f[88888].local_pid is None and f[88888].label == "host pid 88888 (another PID namespace)"
    assert f[77777].local_pid is None and f[77777].memory_used is None
    assert by[300].host_pid == 99999 and by[300].memory_used == 1 << 30 and by[300].in_nvml
    assert {x.host_pid for x in foreign} == {99999, 88888, 77777}
    # Without NVML at all: the kernel's holders alone, and nothing foreign.
    merged, foreign = G.merge_holders(holders)
    assert {m.pid for m in merged} == set(holders) and foreign == []
    assert all(m.devices == () and m.minors == holders[m.pid].minors for m in merged)


# ---------------------------------------------------------------------------------------------- real processes


def test_holders_found_and_mapped(dev: Path, procs: ProcStarter) -> None:
    cuda = hold(procs, dev, "nvidiactl", "nvidia-uvm", "nvidia1")
    amd = hold(procs, dev, "dri/renderD128", "kfd")
    plain = procs.python("import time\nprint('ready', flush=True)\ntime.sleep(300)")
    pat = G.DevicePatterns.under(str(dev))
    found = G.HolderScanner(pat).scan(process_snapshot())
    assert plain.pid not in found
    h = found[cuda.pid]
    assert h.kinds == ("nvidia", "nvidia-uvm", "nvidiactl") and h.minors == (1,) and h.nvidia
    assert h.devices({0: 1, 1: 0}) == (0,) and h.devices(None) == ()
    assert {f.path for f in h.fds} == {str(dev / n) for n in ("nvidiactl", "nvidia-uvm", "nvidia1")}
    a = found[amd.pid]
    assert a.kinds == ("kfd", "render") and a.minors == () and not a.nvidia
    assert G.read_gpu_fds(cuda.pid, pat) == h.fds
    assert G.read_gpu_fds(plain.pid, pat) == ()
    # The default patterns (/dev) don't see the fake nodes.
    assert cuda.pid not in G.HolderScanner(G.DevicePatterns.under("/dev")).scan(ids(cuda))
    merged, _ = G.merge_holders(found, (), process_snapshot(), {0: 1, 1: 0})
    m = {x.pid: x for x in merged}
    assert m[cuda.pid].devices == (0,) and m[cuda.pid].device_open_only and m[cuda.pid].orphan is None


def test_scan_is_cached_until_the_fds_change(dev: Path, procs: ProcStarter) -> None:
    p = hold(procs, dev, "nvidiactl", "nvidia1")
    now = [0.0]
    scanner = G.HolderScanner(G.DevicePatterns.under(str(dev)), max_age=30, clock=lambda: now[0])
    target = ids(p)
    assert scanner.scan(target)[p.pid].minors == (1,)
    assert (scanner.stats.fd_reads, scanner.stats.cached) == (1, 0)
    assert scanner.scan(target)[p.pid].minors == (1,)
    assert (scanner.stats.fd_reads, scanner.stats.readlinks, scanner.stats.cached) == (0, 0, 1)
    command(p, "open nvidia0")  # one more fd: the count changed, so it is read again
    assert scanner.scan(target)[p.pid].minors == (0, 1) and scanner.stats.fd_reads == 1
    command(p, "swap nvidia1")  # same count, other file: not seen until max_age (the documented trade-off)
    assert scanner.scan(target)[p.pid].minors == (0, 1) and scanner.stats.cached == 1
    now[0] = 31.0
    assert scanner.scan(target)[p.pid].minors == (0,) and scanner.stats.fd_reads == 1
    p.kill()
    p.wait()
    assert scanner.scan(target) == {} and scanner.stats.fd_reads == 0  # gone: dropped


def test_recheck_interval(dev: Path, procs: ProcStarter) -> None:
    """With recheck, a known process's fd count is only looked at every `recheck` seconds; new ones at once."""
    p = hold(procs, dev, "nvidia1")
    now = [0.0]
    scanner = G.HolderScanner(G.DevicePatterns.under(str(dev)), max_age=1000, recheck=5, clock=lambda: now[0])
    assert scanner.scan(ids(p))[p.pid].minors == (1,)
    command(p, "open nvidia0")
    assert scanner.scan(ids(p))[p.pid].minors == (1,) and scanner.stats.cached == 1
    q = hold(procs, dev, "nvidia0")
    assert set(scanner.scan(ids(p, q))) == {p.pid, q.pid}  # the newcomer is read on its first scan
    now[0] = 5.0
    assert scanner.scan(ids(p, q))[p.pid].minors == (0, 1)


# P starts W (same group and session) and D (setsid'd), both holding nvidia0, writes their pids, and exits:
# W is left behind (re-parented, its group and session leader P gone); D is a daemon (its own session leader).
ORPHANER = """
import os, sys, time
dev, out = sys.argv[1], sys.argv[2]
def child(daemon):
    pid = os.fork()
    if pid == 0:
        if daemon:
            os.setsid()
        fd = os.open(os.path.join(dev, "nvidia0"), os.O_RDONLY)
        while True:
            time.sleep(60)
    return pid
w, d = child(False), child(True)
with open(out + ".tmp", "w") as f:
    f.write(f"{w} {d}\\n")
os.rename(out + ".tmp", out)
if sys.argv[3] == "die":
    os._exit(0)
while True:
    time.sleep(60)
"""


def start_orphaner(procs: ProcStarter, dev: Path, mode: str) -> tuple[subprocess.Popen[bytes], int, int]:
    out = procs.tmp_path / f"pids-{mode}"
    script = procs.tmp_path / "orphaner.py"
    script.write_text(ORPHANER)
    parent = procs.popen([PY, str(script), str(dev), str(out), mode], start_new_session=True)
    wait_for(out.exists)
    w, d = (int(x) for x in out.read_text().split())
    procs.track(w)
    procs.track(d)
    pat = G.DevicePatterns.under(str(dev))
    wait_for(lambda: all(G.read_gpu_fds(pid, pat) for pid in (w, d)))
    return parent, w, d


def test_orphaned_holder_is_flagged_and_a_daemon_is_not(dev: Path, procs: ProcStarter) -> None:
    parent, w, d = start_orphaner(procs, dev, "die")
    parent.wait(timeout=30)
    pat = G.DevicePatterns.under(str(dev))
    wait_for(lambda: all(_ppid(pid) not in (parent.pid, None) for pid in (w, d)))
    snap = process_snapshot()
    holders = G.HolderScanner(pat).scan(snap)
    merged, _ = G.merge_holders(holders, (), snap, None)
    by = {m.pid: m for m in merged}
    assert by[w].minors == (0,) and by[d].minors == (0,)
    assert by[w].orphan is not None and re.search(rf"process-group leader {parent.pid} is gone", by[w].orphan)
    assert by[d].orphan is None
    assert [m.pid for m in G.gpu_orphans(merged) if m.pid in (w, d)] == [w]
    # A worker whose main process still runs is not an orphan.
    parent, w, d = start_orphaner(procs, dev, "stay")
    snap = process_snapshot()
    assert snap[w].ppid == parent.pid and snap[w].sid == parent.pid != w
    assert G.orphan_reason(snap, snap[w]) is None and G.orphan_reason(snap, snap[d]) is None


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------- the one orphan rule


def test_nvml_and_kernel_orphans_are_one_rule(dev: Path, procs: ProcStarter) -> None:
    """core.gpu's orphans (NVML's list) and the kernel's holders go through the same rule: an orphan NVML lists
    and one it doesn't are both flagged, with the same reason; the daemon is flagged by neither."""
    parent, w, d = start_orphaner(procs, dev, "die")
    parent.wait(timeout=30)
    wait_for(lambda: all(_ppid(pid) not in (parent.pid, None) for pid in (w, d)))
    snap = process_snapshot()
    holders = G.HolderScanner(G.DevicePatterns.under(str(dev))).scan(snap)
    gpu = gpu_mod.GpuMonitor(nvml=FakeNvml([FakeDevice(compute=[(w, GiB), (d, GiB)])])).snapshot()
    by_nvml = {h.proc.pid: h for h in gpu_mod.orphaned_gpu_processes(snap, gpu)}
    assert set(by_nvml) & {w, d} == {w} and by_nvml[w].memory_used == GiB and by_nvml[w].in_nvml
    nothing = gpu_mod.GpuMonitor(nvml=FakeNvml([FakeDevice()])).snapshot()
    by_kernel = {h.proc.pid: h for h in gpu_mod.orphaned_gpu_processes(snap, nothing, holders)}
    assert set(by_kernel) & {w, d} == {w} and not by_kernel[w].in_nvml and by_kernel[w].devices == (0,)
    assert by_kernel[w].orphan == by_nvml[w].orphan == G.orphan_reason(snap, snap[w])


# ---------------------------------------------------------------------------------------------- the CLI


def gpu_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = cli_main(["gpu", *args])
    return rc, capsys.readouterr().out


def test_cli_gpu_merges_kernel_holders_and_lists_orphans(
    dev: Path, procs: ProcStarter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`procguard gpu` with a (fake) NVML that lists only one of the holders: the others show as "device open",
    mapped to their GPU through the minor number; --orphans counts and lists the orphan with the memory it pins;
    --end-orphans ends it (dry run first), and leaves the daemon alone."""
    parent, w, d = start_orphaner(procs, dev, "die")
    parent.wait(timeout=30)
    wait_for(lambda: all(_ppid(pid) not in (parent.pid, None) for pid in (w, d)))
    other = hold(procs, dev, "nvidiactl", "nvidia1")
    monkeypatch.setenv(G.DEV_DIR_ENV, str(dev))
    # NVML numbers the devices the other way round from their minors: holders must follow the minors.
    fake = FakeNvml([FakeDevice(minor=1), FakeDevice(uuid="GPU-1", minor=0, compute=[(w, GiB)])])
    monkeypatch.setattr(gpu_mod, "_default", gpu_mod.GpuMonitor(nvml=fake))

    rc, out = gpu_cli(capsys, "--json")
    report = json.loads(out)
    assert rc == 0 and report["orphans"] == 1
    by = {h["pid"]: h for h in report["holders"]}
    assert (by[w]["devices"], by[w]["memory_used"], by[w]["device_open"]) == ([1], GiB, False)
    assert by[w]["orphan"] and by[d]["orphan"] is None
    assert (by[d]["devices"], by[d]["memory_used"], by[d]["device_open"]) == ([1], None, True)
    assert (by[other.pid]["devices"], by[other.pid]["kinds"]) == ([0], ["nvidia", "nvidiactl"])

    rc, out = gpu_cli(capsys)
    rows = {int(ln.split()[0]): ln for ln in out.splitlines() if ln.split()[:1] and ln.split()[0].isdigit()}
    assert "[orphaned: parent died]" in rows[w] and "1.0G" in rows[w]
    assert "device open" in rows[d] and "orphaned" not in rows[d] and "device open" in rows[other.pid]
    assert "1 GPU orphan, pinning 1.0G: procguard gpu --orphans lists them" in out

    rc, out = gpu_cli(capsys, "--orphans", "--json")
    orphans = json.loads(out)
    assert (orphans["count"], orphans["memory_used"], [o["pid"] for o in orphans["orphans"]]) == (1, GiB, [w])
    rc, out = gpu_cli(capsys, "--orphans")
    lines = out.splitlines()
    assert lines[0] == "1 GPU orphan, pinning 1.0G"
    assert lines[2].split()[:3] == [str(w), "1", "1.0G"] and "why: adopted by" in lines[3]

    rc, out = gpu_cli(capsys, "--end-orphans", "--dry-run")
    assert rc == 0 and out.splitlines()[0] == "would end 1 GPU orphan:" and str(w) in out
    assert not is_gone(w)
    rc, out = gpu_cli(capsys, "--end-orphans", "--grace", "2")
    assert rc == 0 and out.split()[:2] == [str(w), "exited"], out
    assert is_gone(w) and not is_gone(d) and not is_gone(other.pid)


def test_cli_gpu_orphans_without_nvml(dev: Path, procs: ProcStarter) -> None:
    """The real CLI, NVML or not (none here): an orphan found by its open device file is counted and listed as
    "device open"."""
    parent, w, d = start_orphaner(procs, dev, "die")
    parent.wait(timeout=30)
    wait_for(lambda: all(_ppid(pid) not in (parent.pid, None) for pid in (w, d)))
    env = {**os.environ, G.DEV_DIR_ENV: str(dev)}
    out = subprocess.run(
        [PY, "-m", "procguard.core.cli", "gpu", "--orphans"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "1 GPU orphan (1 with a device open, memory unknown)"
    assert lines[2].split()[0] == str(w) and "device open" in lines[2]
    out = subprocess.run(
        [PY, "-m", "procguard.core.cli", "gpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    rows = [ln for ln in out.stdout.splitlines() if ln.split()[:1] in ([str(w)], [str(d)])]
    # GPU column: the minor's node without NVML, its NVML index where a real NVML maps minor 0.
    assert len(rows) == 2 and all("device open" in r and r.split()[1] in ("nvidia0", "0") for r in rows), (
        out.stdout
    )


# ---------------------------------------------------------------------------------------------- real GPU


CUDA_ORPHANER = """
import os, sys, time
import torch
x = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # 256 MiB in this context
torch.cuda.synchronize()
pid = os.fork()  # a DataLoader-style worker: inherits the context's device files
if pid == 0:
    while True:
        time.sleep(60)
with open(sys.argv[1], "w") as f:
    f.write(f"{pid}\\n")
print("ready", flush=True)
if sys.argv[2] == "die":
    os._exit(0)  # the main process dies, the worker keeps the context (and its memory) alive
while True:
    time.sleep(60)
"""


@pytest.mark.gpu
def test_real_cuda_holders_and_orphan(procs: ProcStarter) -> None:
    """A CUDA child holds /dev/nvidia*: found, mapped through NVML's minor numbers; an orphaned worker that kept
    the context is flagged, and the memory is freed once it is ended."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or not os.path.exists("/dev/nvidiactl"):
        pytest.skip("needs an NVIDIA GPU with CUDA")
    import pynvml

    from procguard.core.signals import kill

    pynvml.nvmlInit()
    try:
        minors = {
            pynvml.nvmlDeviceGetMinorNumber(pynvml.nvmlDeviceGetHandleByIndex(i)): i
            for i in range(pynvml.nvmlDeviceGetCount())
        }
        out = procs.tmp_path / "worker"
        script = procs.tmp_path / "cuda_orphaner.py"
        script.write_text(CUDA_ORPHANER)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
        main = procs.popen(
            [PY, str(script), str(out), "die"], stdout=subprocess.PIPE, start_new_session=True, env=env
        )
        procs.wait_ready(main)
        worker = int(out.read_text())
        procs.track(worker)
        main.wait(timeout=60)
        scanner = G.HolderScanner()
        holders = wait_for(lambda: (h := scanner.scan()) and worker in h and h)
        assert isinstance(holders, dict)
        h = holders[worker]
        assert "nvidiactl" in h.kinds and h.minors and h.devices(minors)
        handle = pynvml.nvmlDeviceGetHandleByIndex(h.devices(minors)[0])
        snap = process_snapshot()
        merged, _ = G.merge_holders(holders, (), snap, minors)
        assert next(m for m in merged if m.pid == worker).orphan is not None
        used = pynvml.nvmlDeviceGetMemoryInfo(handle).used
        results = kill(worker)
        assert [r.outcome.value for r in results] == ["killed"]
        wait_for(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used <= used - (200 << 20), timeout=30)
        assert worker not in G.HolderScanner().scan()
    finally:
        pynvml.nvmlShutdown()
