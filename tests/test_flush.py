"""Flushing GPU caches: in-process (CPU torch here), the remote request/answer round trip through the registry
with real processes and real signals, refusals and timeouts, and on a GPU the real release of CUDA memory."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from procguard.core import registry
from procguard.core.cli import main as cli_main
from procguard.core.flush import (
    FlushResult,
    FlushTimeout,
    NotGuarded,
    request_flush,
    start_allocator_publisher,
)
from procguard.core.gpu import GpuMonitor, gpu_memory_by_pid
from tests.conftest import NOBODY, NOBODY_UID, ProcStarter, needs_root, wait_for
from tests.test_gpu import cuda_skip_reason, unused_pid

PY = sys.executable
GiB = 1 << 30
NO_TORCH = "no GPU cache to flush: torch not imported"
NO_CUDA = "no GPU cache to flush: CUDA not initialised in this process"


@pytest.fixture
def reg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private registry folder for this test; children inherit it through the environment."""
    d = tmp_path / "registry"
    monkeypatch.setenv(registry.ENV_OVERRIDE, str(d))
    yield d


def run_py(code: str) -> str:
    return subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout


# --------------------------------------------------------------------------------------------------------
# In-process flush


def test_flush_without_torch_never_imports_it() -> None:
    out = run_py(
        "import json, sys; from procguard.core.flush import flush_gpu_caches, allocator_figures; "
        "r = flush_gpu_caches(); a = allocator_figures(); "
        "print(json.dumps([r.to_dict(), a, 'torch' in sys.modules]))"
    )
    result, figures, torch_loaded = json.loads(out)
    assert result["message"] == NO_TORCH
    assert (result["flushed"], result["backend"], result["freed"]) == (False, None, None)
    assert figures is None and torch_loaded is False


def test_flush_with_cpu_torch_says_no_cuda() -> None:
    out = run_py(
        "import json, torch; from procguard.core.flush import flush_gpu_caches, allocator_figures; "
        "x = torch.ones(1000); r = flush_gpu_caches(); "
        "print(json.dumps([r.to_dict(), allocator_figures(), torch.cuda.is_initialized()]))"
    )
    result, figures, cuda_initialised = json.loads(out)
    assert result["message"] == NO_CUDA
    assert (result["flushed"], result["backend"], result["reserved_before"]) == (False, None, None)
    assert figures is None and cuda_initialised is False  # asking did not initialise CUDA


# --------------------------------------------------------------------------------------------------------
# Remote flush

GUARDED = """
import os, signal, sys, time
mode = sys.argv[1:]
if "block" in mode:  # before any thread starts, so that every thread blocks it
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
if "torch" in mode:
    import torch
from procguard.core import registry
from procguard.core.flush import install_flush_handler
registry.register(script=__file__, flush_signal=signal.SIGUSR1)
install_flush_handler()
print("ready", flush=True)
while True:
    time.sleep(60)
"""


def guarded(procs: ProcStarter, *mode: str) -> int:
    return procs.python(GUARDED, *mode, name="guarded").pid


def test_remote_flush_round_trip(procs: ProcStarter, reg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pid = guarded(procs, "torch")
    result = request_flush(pid, timeout=30)
    assert isinstance(result, FlushResult)
    assert result.message == NO_CUDA and result.flushed is False
    entry = registry.get_entry(pid)
    assert entry is not None
    answer, request = entry.extra["flush"], entry.extra["flush_request"]
    assert answer["request_id"] == request["id"] and answer["started"] >= request["time"]
    assert {"before", "after", "freed", "message", "time", "request_id"} <= set(answer)

    assert cli_main(["flush", str(pid), "--json", "--timeout", "30"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj == {
        "pid": pid,
        "flushed": False,
        "backend": None,
        "reserved_before": None,
        "reserved_after": None,
        "freed": None,
        "message": NO_CUDA,
        "time": obj["time"],
    }
    assert obj["time"] > answer["time"]  # a new answer, not the old one
    assert cli_main(["flush", str(pid), "--timeout", "30"]) == 0
    assert capsys.readouterr().out.strip() == f"pid {pid}: {NO_CUDA}"


def test_concurrent_requests_are_all_answered(procs: ProcStarter, reg: Path) -> None:
    pid = guarded(procs)
    results: list[FlushResult | BaseException] = []

    def ask() -> None:
        try:
            results.append(request_flush(pid, timeout=30))
        except BaseException as e:  # collected, asserted below
            results.append(e)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.message if isinstance(r, FlushResult) else repr(r) for r in results] == [NO_TORCH] * 6


def test_not_guarded_is_refused(procs: ProcStarter, reg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = procs.python("import time\nprint('ready', flush=True)\ntime.sleep(600)\n", name="plain").pid
    with pytest.raises(NotGuarded, match="not a guarded process"):
        request_flush(plain)
    assert cli_main(["flush", str(plain)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pid {plain} is not a guarded process" in err and "guard()" in err
    for bad, why in (("abc", "invalid pid"), ("0", "invalid pid"), (str(unused_pid()), "no such process")):
        assert cli_main(["flush", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and why in err


def test_guarded_but_blocking_times_out(procs: ProcStarter, reg: Path) -> None:
    pid = guarded(procs, "block")
    with pytest.raises(FlushTimeout, match="did not answer"):
        request_flush(pid, timeout=0.3)
    r = subprocess.run(
        [PY, "-m", "procguard.core.cli", "flush", str(pid), "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and f"pid {pid} did not answer" in r.stderr
    assert registry.get_entry(pid) is not None  # still alive and guarded: the signal waits, blocked


HANDLERS = """
import json, os, signal, threading, time
from procguard.core import registry
from procguard.core.flush import flush_handler_installed, install_flush_handler

def answered_after(t):
    def ok():
        e = registry.get_entry(os.getpid())
        return e is not None and e.extra.get("flush", {}).get("started", 0) >= t
    deadline = time.monotonic() + 20
    while not ok() and time.monotonic() < deadline:
        time.sleep(0.01)
    return ok()

calls = []
def previous(signum, frame):
    calls.append(signum)

registry.register(script="inline-test", flush_signal=signal.SIGUSR1)
signal.signal(signal.SIGUSR1, previous)
out = {}
un1 = install_flush_handler()
un2 = install_flush_handler()  # a second install only counts a reference
out["installed"] = flush_handler_installed()
t = time.time()
os.kill(os.getpid(), signal.SIGUSR1)  # this process signals itself
out["answered"] = answered_after(t)
out["previous_called"] = len(calls)
un1()
un1()  # idempotent
out["still_installed"] = signal.getsignal(signal.SIGUSR1) is not previous
un2()
out["restored"] = signal.getsignal(signal.SIGUSR1) is previous and not flush_handler_installed()
out["worker_stopped"] = not any(th.name == "procguard-flush" for th in threading.enumerate())
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
un3 = install_flush_handler()
un3()
out["ign_restored"] = signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
print(json.dumps(out), flush=True)
"""


def test_handler_chains_and_uninstall_restores(reg: Path) -> None:
    out = json.loads(run_py(HANDLERS))
    assert out == {
        "installed": True,
        "answered": True,
        "previous_called": 1,
        "still_installed": True,
        "restored": True,
        "worker_stopped": True,
        "ign_restored": True,
    }


PUBLISHER = """
import json, signal, threading, time
import torch
from procguard.core import registry
from procguard.core.flush import start_allocator_publisher
registry.register(script="inline-test", flush_signal=signal.SIGUSR1)
stop = start_allocator_publisher(0.01)
time.sleep(0.2)
stop()
stop()
e = registry.get_entry(__import__("os").getpid())
print(json.dumps(["allocator" in e.extra, any(t.name == "procguard-allocator" for t in threading.enumerate())]))
"""


def test_publisher_writes_nothing_without_cuda_and_stops(reg: Path) -> None:
    assert json.loads(run_py(PUBLISHER)) == [False, False]
    stop = start_allocator_publisher(3600)  # in this process: no entry, nothing to publish
    stop()
    assert not any(t.name == "procguard-allocator" for t in threading.enumerate())


GUARD_CHILD = """
import signal, time
from procguard.core.guard import guard
with guard(lock=False):
    print("ready", flush=True)
    while True:
        time.sleep(60)
"""


def test_flush_through_guard(procs: ProcStarter, reg: Path) -> None:
    if importlib.util.find_spec("procguard.core.guard") is None:
        pytest.skip("procguard.core.guard has not landed yet")
    pid = procs.python(GUARD_CHILD, name="guarded_main").pid
    entry = registry.get_entry(pid)
    assert entry is not None and entry.flush_signal == signal.SIGUSR1
    assert request_flush(pid, timeout=30).message == NO_TORCH


GUARD_OVER_OWN_HANDLER = """
import signal, time
from procguard.core.flush import install_flush_handler
from procguard.core.guard import guard
install_flush_handler()  # the program answers flush requests itself, before any guard
with guard(on_duplicate="ignore", lock=False):
    print("ready", flush=True)
    while True:
        time.sleep(0.2)
"""


def test_guard_over_an_installed_flush_handler_still_registers_it(procs: ProcStarter, reg: Path) -> None:
    # The guard counts a reference on the handler already there instead of installing a new one: the registry
    # must still say the process answers, or `procguard flush` would refuse a process that can answer.
    pid = procs.python(GUARD_OVER_OWN_HANDLER, name="guard_over_handler").pid
    entry = registry.get_entry(pid)
    assert entry is not None and entry.flush_signal == signal.SIGUSR1
    assert request_flush(pid, timeout=30).message == NO_TORCH


# --------------------------------------------------------------------------------------------------------
# The real thing, on a GPU

GPU_GUARDED = """
import signal, sys, time
import torch
from procguard.core import registry
from procguard.core.flush import install_flush_handler, start_allocator_publisher
registry.register(script=__file__, flush_signal=signal.SIGUSR1)
install_flush_handler()
start_allocator_publisher(0.1)
x = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device="cuda")
x.fill_(1)
torch.cuda.synchronize()
del x  # back to torch's cache: still reserved, still held on the GPU
print("ready", flush=True)
while True:
    time.sleep(60)
"""


@pytest.mark.gpu
def test_remote_flush_releases_cuda_memory(procs: ProcStarter, reg: Path) -> None:
    if (why := cuda_skip_reason()) is not None:
        pytest.skip(why)
    size = 2 * GiB
    pid = procs.python(GPU_GUARDED, str(size), name="gpu_guarded").pid

    # the publisher reports the cached block
    def published() -> dict[str, float] | None:
        e = registry.get_entry(pid)
        a = e.extra.get("allocator") if e is not None else None
        return a if a and a["reserved"] >= size else None

    alloc = wait_for(published, 30)
    assert alloc["allocated"] < size  # type: ignore[index]
    mon = GpuMonitor()
    held = wait_for(
        lambda: (
            gpu_memory_by_pid(mon.snapshot(max_age=0)).get(pid, 0) >= size
            and gpu_memory_by_pid(mon.snapshot(max_age=0))[pid]
        ),
        30,
    )

    result = request_flush(pid, timeout=60)
    assert result.flushed and result.backend == "cuda", result
    assert result.reserved_before is not None and result.reserved_before >= size
    assert result.reserved_after is not None and result.reserved_after <= result.reserved_before - size
    assert result.freed is not None and result.freed >= size
    # the driver sees the memory go back
    wait_for(lambda: gpu_memory_by_pid(mon.snapshot(max_age=0)).get(pid, 0) <= held - size, 30)  # type: ignore[operator]
    entry = registry.get_entry(pid)
    assert entry is not None and entry.extra["allocator"]["reserved"] < size  # republished after the flush


# --------------------------------------------------------------------------------------------------------
# Trust: only an entry the registry believes is acted on; a requester of another uid writes nothing


def pending_signals(pid: int) -> int:
    """The signals pending for process `pid` (shared and main-thread masks of /proc/PID/status). A signal sent
    to a process that blocks it stays here: proof that it was sent, with no waiting."""
    mask = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("ShdPnd:", "SigPnd:")):
                mask |= int(line.split()[1], 16)
    return mask


def bit(sig: int) -> int:
    return 1 << (sig - 1)


def test_untrusted_entry_is_refused_and_nothing_is_sent(
    procs: ProcStarter, reg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = guarded(procs, "block")  # SIGUSR1 blocked: a signal sent stays pending, visible in /proc
    os.chmod(reg, 0o755)  # the folder is no longer private: its entries are not to be believed
    with pytest.raises(NotGuarded, match="not a guarded process .*ignored: .*mode 0755"):
        request_flush(pid, timeout=5)
    assert cli_main(["flush", str(pid)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pid {pid} is not a guarded process" in err
    assert not pending_signals(pid) & bit(signal.SIGUSR1)
    e = registry.get_entry(pid, include_untrusted=True)
    assert e is not None and "flush_request" not in e.extra  # nothing written either
    os.chmod(reg, 0o700)  # control: the same entry, believed again, gets the signal
    with pytest.raises(FlushTimeout):
        request_flush(pid, timeout=0.2)
    assert pending_signals(pid) & bit(signal.SIGUSR1)


def test_answer_without_request_id_matches_by_time_only() -> None:
    from procguard.core.flush import _answers

    old = {"request_id": None, "started": 100.0}
    assert not _answers(old, None, 200.0)  # a missing id matches no missing id
    assert _answers({"request_id": None, "started": 200.0}, None, 200.0)
    assert _answers({"request_id": "a", "started": 1.0}, "a", 200.0)
    assert not _answers({"request_id": None, "started": True}, None, 0.5)
    bad = FlushResult.from_answer(
        {"before": "x", "freed": float("inf"), "time": "soon", "backend": 3, "message": "\x1b[2J"}
    )
    assert (bad.reserved_before, bad.freed, bad.time, bad.backend, bad.message) == (
        None,
        None,
        0.0,
        None,
        "\x1b[2J",
    )


LOUD_ANSWER = """
import os, signal, time
from procguard.core import registry
registry.register(script=__file__, flush_signal=signal.SIGUSR1)
def answer(signum, frame):  # a guarded process answering in its own words
    registry.update_entry(os.getpid(), flush={"flushed": False, "message": "\\x1b]0;pwned\\x07\\x1b[2Jdone",
                                              "started": time.time(), "time": time.time(), "request_id": None})
signal.signal(signal.SIGUSR1, answer)
print("ready", flush=True)
while True:
    time.sleep(60)
"""


def test_answer_text_is_escaped_on_the_terminal(
    procs: ProcStarter, reg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = procs.python(LOUD_ANSWER, name="loud").pid
    assert cli_main(["flush", str(pid), "--timeout", "30"]) == 0
    out = capsys.readouterr().out
    assert out == f"pid {pid}: \\x1b]0;pwned\\x07\\x1b[2Jdone\n"
    assert cli_main(["flush", str(pid), "--timeout", "30", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["message"] == "\x1b]0;pwned\x07\x1b[2Jdone"  # exact in JSON


NOBODY_GUARDED = """
import signal, time
from procguard.core import registry
from procguard.core.flush import install_flush_handler
registry.register(script="nobody-guarded", flush_signal=signal.SIGUSR1)
install_flush_handler()
print("ready", flush=True)
while True:
    time.sleep(60)
"""


@pytest.fixture
def nobody_reg(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A registry folder private to nobody (0700, theirs) under /tmp, which nobody can reach; this test reads it
    too (the reader sees only the PROCGUARD_REGISTRY_DIR folder)."""
    d = Path(tempfile.mkdtemp(prefix="procguard-nobody-reg-", dir="/tmp"))
    try:
        os.chown(d, NOBODY_UID, NOBODY_UID)
        monkeypatch.setenv(registry.ENV_OVERRIDE, str(d))
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@needs_root
def test_cross_user_flush_round_trip(
    procs: ProcStarter, nobody_reg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = procs.popen(
        [*NOBODY, PY, "-c", NOBODY_GUARDED],
        cwd="/",
        env=dict(os.environ),
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    procs.wait_ready(p)
    entry = registry.get_entry(p.pid)
    assert entry is not None and entry.trusted and os.stat(str(entry.path)).st_uid == NOBODY_UID
    result = request_flush(p.pid, timeout=30)
    assert result.message == NO_TORCH and result.flushed is False
    entry = registry.get_entry(p.pid)
    assert entry is not None
    assert entry.extra["flush"]["request_id"] is None  # answered to the signal alone
    assert "flush_request" not in entry.extra  # root wrote nothing into the user's entry
    assert cli_main(["flush", str(p.pid), "--json", "--timeout", "30"]) == 0
    assert json.loads(capsys.readouterr().out)["message"] == NO_TORCH
    assert {os.lstat(f).st_uid for f in nobody_reg.iterdir()} == {NOBODY_UID}
    assert [f.name for f in nobody_reg.iterdir()] == [f"{p.pid}.json"]
