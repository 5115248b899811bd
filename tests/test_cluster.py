"""Ray cluster mode on a simulated cluster on this machine: a head node and a worker node (ray.cluster_utils),
plus a third node started in its own PID namespace (`unshare --pid --fork --mount-proc`), where a pid means
another process than on the host: an action routed to the wrong node could not hit the right process.

Safety: tasks only start `sleep`s and small Python children; every pid a test learns is pinned with a pidfd
at once and SIGKILLed in a finalizer; the cluster is shut down, the namespace node killed, and the temp folder
(RAY_TMPDIR: sessions, sockets, token) removed; anything still running from that folder is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from ray import cloudpickle  # noqa: E402
from ray._private.authentication_test_utils import reset_auth_token_state  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from procguard.core import procfs  # noqa: E402
from procguard.core.cli import main as cli_main  # noqa: E402
from procguard.core.cluster import (  # noqa: E402
    TaskEntry,
    TaskOwner,
    TaskRecord,
    cancel,
    cancel_tasks,
    cluster_resolve,
    cluster_signal,
    cluster_signal_many,
    cluster_snapshot,
    find_node,
    nodeops,  # noqa: E402
    nodes,
    ray_process_kind,
    resolve_task_ids,
    signal_nodes,
    task_processes,
    tracked,
    tracked_tasks,
)
from procguard.core.cluster.api import agent  # noqa: E402
from procguard.core.cluster.nodeops import owners_on_node, rebuild_snapshot  # noqa: E402
from procguard.core.cluster.rayprocs import plan_targets  # noqa: E402
from procguard.core.signals import Outcome, Target  # noqa: E402
from procguard.core.snapshot import Proc, process_snapshot  # noqa: E402
from tests.conftest import ProcStarter, is_gone, proc_state, wait_for  # noqa: E402

pytestmark = pytest.mark.ray

OBJECT_STORE = 80 * 1024 * 1024

# The namespace node: pid 1 of its own PID namespace. When it exits the kernel kills the whole namespace.
NS_NODE = """\
import signal, sys
from ray._private.node import Node
from ray._private.parameter import RayParams

params = RayParams(gcs_address=sys.argv[1], num_cpus=1, num_gpus=0, object_store_memory=int(sys.argv[2]),
                   min_worker_port=0, max_worker_port=0, node_manager_port=0, include_log_monitor=False,
                   resources={"pg_ns": 1}, dashboard_agent_listen_port=None,
                   # Its own socket names: the default ones are picked by "first free name" in the session
                   # folder, a race with the worker node starting at the same time.
                   raylet_socket_name=sys.argv[3] + "/ns_raylet", plasma_store_socket_name=sys.argv[3] + "/ns_plasma")
node = Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
print("ready", node.node_id, flush=True)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
try:
    sys.stdin.read()
finally:
    node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
"""


# ----------------------------------------------------------------------------------------------- tasks
# Pickled by value (the module is registered with cloudpickle below): they may use only stdlib and procguard.

CHILD = """\
import os, subprocess, sys, time
g = subprocess.Popen(["sleep", sys.argv[2]], start_new_session=True)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {g.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


@ray.remote(max_retries=0)
@tracked(grace=1.0)
def tree_task(pidfile: str, shellfile: str) -> str:
    """A recorded child whose own child runs in its own session, and a shell from os.system in another thread
    (no Popen: found at cancel time as a descendant of the worker)."""
    import os
    import subprocess
    import sys
    import threading

    threading.Thread(
        target=os.system,
        args=(f"echo $$ > {shellfile}.tmp && mv {shellfile}.tmp {shellfile} && exec sleep 301",),
        daemon=True,
    ).start()
    child = subprocess.Popen([sys.executable, "-c", CHILD, pidfile, "302"])
    child.wait()
    return "finished"


@ray.remote(max_retries=0)
@tracked(grace=1.0)
def sleeper_task(pidfile: str, seconds: str) -> int:
    """One recorded `sleep` child; reports (worker pid, child pid) as this node sees them."""
    import os
    import subprocess

    p = subprocess.Popen(["sleep", seconds])
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {p.pid}")
    os.rename(pidfile + ".tmp", pidfile)
    return p.wait()


@ray.remote(max_retries=0)
@tracked(grace=1.0)
def leaver_task(seconds: str) -> int:
    """Returns at once, leaving a recorded `sleep` running in its own session."""
    import subprocess

    return subprocess.Popen(["sleep", seconds], start_new_session=True).pid


@ray.remote(max_retries=0)
@tracked(grace=1.0)
def scoped_sleeper_task(pidfile: str, marker: str) -> int:
    """One recorded Python child whose command line names `marker` (a test's tmp_path: the app's filter and
    act_scope); reports (worker pid, child pid) as this node sees them."""
    import os
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(311)", marker])
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {p.pid}")
    os.rename(pidfile + ".tmp", pidfile)
    return p.wait()


@ray.remote(max_retries=0)
@tracked(grace=1.0)
def blocked_task(pidfile: str, seconds: str) -> None:
    """A recorded `sleep` child, then the task's own code blocked in C (time.sleep: the KeyboardInterrupt of a
    plain ray.cancel never reaches it); reports (worker pid, child pid)."""
    import os
    import subprocess
    import time

    p = subprocess.Popen(["sleep", seconds])
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {p.pid}")
    os.rename(pidfile + ".tmp", pidfile)
    time.sleep(600)


# Ignores SIGTERM, but notes it in argv[1]; writes its pid to argv[2].
STUBBORN = """\
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: open(sys.argv[1], "w").close())
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
while True:
    time.sleep(1)
"""


@ray.remote(max_retries=0)
@tracked(grace=1.0)
def stubborn_task(marker: str, pidfile: str) -> int:
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", STUBBORN, marker, pidfile]).wait()


@ray.remote(num_cpus=0, max_restarts=0)
class Holder:
    """An untracked actor (its worker's owner comes from Ray's actor table)."""

    def pid(self) -> int:
        import os

        return os.getpid()


# ----------------------------------------------------------------------------------------------- fixtures


@dataclass
class RayCluster:
    address: str
    tmp: Path
    head: str  # node ids
    worker: str
    ns: str | None  # the PID-namespace node (None where unshare is not allowed)
    ns_init: int | None  # host pid of the namespace's pid 1
    cluster: Any  # ray.cluster_utils.Cluster: nodes can be added and killed


def _ours(marker: str) -> list[int]:
    """Live processes whose command line names our temp folder (the Ray processes of this test cluster: their
    session, socket and log paths all lie under it). The folder is a fresh mkdtemp: nobody else's."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if marker.encode() in cmd and not is_gone(int(entry)):
            out.append(int(entry))
    return out


def _kill_leftovers(marker: str) -> list[int]:
    """SIGKILL what is left of our test cluster; returns the pids that were still running."""
    left = _ours(marker)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left


def _start_ns_node(address: str, tmp: Path) -> subprocess.Popen[bytes] | None:
    if shutil.which("unshare") is None:
        return None
    script = tmp / "pg_ns_node.py"
    script.write_text(NS_NODE)
    return subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            str(script),
            address,
            str(OBJECT_STORE),
            str(tmp),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(tmp / "ns_node.err", "wb"),
        start_new_session=True,
    )


def _read_line(fd: int, timeout: float) -> bytes:
    """The first line on fd, or what came before EOF or the timeout (a node that never starts is skipped)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.partition(b"\n")[0]


def _ns_init_pid(unshare_pid: int) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if int(data[data.rindex(b")") + 2 :].split()[1]) == unshare_pid:
                return int(entry)
    return None


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    home_token = Path.home() / ".ray" / "auth_token"
    had_home_token = home_token.exists()
    tmp = Path(tempfile.mkdtemp(prefix="pgray-"))  # short: Ray's socket paths live under it
    (tmp / "token").write_text("procguard-test-token-" + os.urandom(8).hex())
    env = {
        "RAY_TMPDIR": str(tmp),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(tmp / "token"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    # Read once when ray was imported: stay on 127.0.0.1, not the machine's eth0 address.
    mp.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    reset_auth_token_state()  # this process read RAY_AUTH_MODE when ray was imported: read it again
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = None
    ns_proc = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "object_store_memory": OBJECT_STORE,
                "include_dashboard": False,
                "resources": {"pg_head": 1},
                # A killed node is reported dead within ~2 s (default: ~15 s), for the node-failure test. A check
                # that is slow to answer still has the default 10 s: a busy node is not taken for dead.
                "_system_config": {
                    "health_check_period_ms": 500,
                    "health_check_failure_threshold": 4,
                    "health_check_initial_delay_ms": 1000,
                },
            },
        )
        ns_proc = _start_ns_node(cluster.address, tmp)  # starts while the worker node starts
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE, resources={"pg_w1": 1})
        ns_id = ns_init = None
        if ns_proc is not None:
            assert ns_proc.stdout is not None
            line = _read_line(ns_proc.stdout.fileno(), timeout=90).split()
            if line[:1] == [b"ready"]:
                ns_id = line[1].decode()
                ns_init = _ns_init_pid(ns_proc.pid)
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        want = 3 if ns_id else 2
        wait_for(lambda: len(nodes()) == want, timeout=60, interval=0.1)
        by_res = {
            next(k for k in ("pg_head", "pg_w1", "pg_ns") if k in n["Resources"]): n["NodeID"]
            for n in ray.nodes()
            if n["Alive"]
        }
        # Start every node's agent now, with time to spare on a busy machine: the tests' calls then get the
        # default per-node timeout.
        assert all(s.error is None for s in cluster_snapshot(node_timeout=120)), "an agent did not start"
        yield RayCluster(cluster.address, tmp, by_res["pg_head"], by_res["pg_w1"], ns_id, ns_init, cluster)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if ns_proc is not None:
            with contextlib.suppress(OSError):
                ns_proc.stdin.close()  # type: ignore[union-attr]
            with contextlib.suppress(subprocess.TimeoutExpired):
                ns_proc.wait(timeout=15)
            with contextlib.suppress(OSError):
                os.killpg(ns_proc.pid, signal.SIGKILL)  # the namespace's pid 1 too: the kernel ends the rest
            with contextlib.suppress(subprocess.TimeoutExpired):
                ns_proc.wait(timeout=5)
            if ns_proc.stdout is not None:
                ns_proc.stdout.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        mp.undo()
        with contextlib.suppress(Exception):
            reset_auth_token_state()
        try:
            # Whatever the shutdown left (nothing, normally) is SIGKILLed until none is running.
            wait_for(lambda: not _kill_leftovers(str(tmp)), timeout=30, interval=0.1)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    assert had_home_token or not home_token.exists(), "the tests wrote ~/.ray/auth_token"


class Pinned:
    """Pids learnt from inside tasks, pinned with pidfds at once and SIGKILLed at teardown (no pid reuse)."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def add(self, host_pid: int) -> int:
        with contextlib.suppress(OSError):
            self.fds.append(os.pidfd_open(host_pid))
        return host_pid

    def cleanup(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)


@pytest.fixture
def pinned() -> Iterator[Pinned]:
    p = Pinned()
    try:
        yield p
    finally:
        p.cleanup()


def _read_pids(path: Path, timeout: float = 120) -> list[int]:
    text = wait_for(lambda: path.exists() and path.read_text().strip(), timeout=timeout, interval=0.02)
    return [int(x) for x in str(text).split()]


def host_pid(rc: RayCluster, node_id: str, pid: int) -> int:
    """The host pid of `pid` as node_id sees it (the same number except on the namespace node)."""
    if node_id != rc.ns:
        return pid
    assert rc.ns_init is not None
    ns = os.readlink(f"/proc/{rc.ns_init}/ns/pid")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                continue
            with open(f"/proc/{entry}/status") as f:
                nspid = next(ln for ln in f if ln.startswith("NSpid:")).split()[1:]
        except (OSError, StopIteration):
            continue
        if int(nspid[-1]) == pid:
            return int(entry)
    raise AssertionError(f"pid {pid} not found in the namespace node")


def _record(task_ref: Any, timeout: float = 60) -> TaskRecord:
    tid = task_ref.task_id().hex()
    return wait_for(
        lambda: next((r for r in tracked_tasks() if r.task_id == tid and r.entries), None),
        timeout=timeout,
        interval=0.05,
    )  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- unit


def test_ray_processes_are_told_apart_by_command_line() -> None:
    site = "/v/lib/python3.11/site-packages/ray"
    assert ray_process_kind([f"{site}/core/src/ray/raylet/raylet", "--node_id=x"]) == "raylet"
    assert ray_process_kind([f"{site}/core/src/ray/gcs/gcs_server", "--log_dir=x"]) == "gcs_server"
    assert ray_process_kind(["ray::IDLE"]) == "worker (ray::IDLE)"
    assert ray_process_kind(["ray::train_step"]) == "worker (ray::train_step)"
    assert (
        ray_process_kind(["/v/bin/python", f"{site}/_private/workers/default_worker.py", "--x"]) == "worker"
    )
    assert ray_process_kind(["/v/bin/python", "-u", f"{site}/_private/log_monitor.py"]) == "log_monitor"
    assert ray_process_kind(["/v/bin/python", f"{site}/dashboard/dashboard.py"]) == "dashboard"
    assert ray_process_kind(["/v/bin/python", "-u", f"{site}/dashboard/agent.py"]) == "dashboard agent"
    assert (
        ray_process_kind(["/v/bin/python", "-u", f"{site}/autoscaler/_private/monitor.py"])
        == "autoscaler monitor"
    )
    assert ray_process_kind(["/v/bin/python3", "/v/bin/ray", "start", "--head"]) == "ray start"
    # A user's own script that happens to share a name is not Ray's.
    assert ray_process_kind(["python", "monitor.py"]) is None
    assert ray_process_kind(["/home/u/raylet"]) is None
    assert ray_process_kind(["python", "train.py", "ray::IDLE"]) is None
    assert ray_process_kind([]) is None


def _proc(pid: int, ppid: int, pgid: int, cmd: tuple[str, ...]) -> Proc:
    return Proc(
        pid, ppid, pgid, pgid, "S", cmd[0][-15:], cmd, 0.0, 0, 0, "root", 0.0, 1, 0, False, 100 + pid, None
    )


def test_plan_cuts_ray_processes_out_of_groups_and_trees() -> None:
    raylet = "/v/site-packages/ray/core/src/ray/raylet/raylet"
    snap = rebuild_snapshot(
        [
            _proc(100, 1, 100, (raylet,)),
            _proc(200, 100, 200, ("ray::task",)),
            _proc(300, 200, 200, ("python", "child.py")),
            _proc(301, 300, 301, ("sleep", "9")),
            _proc(400, 100, 400, ("ray::IDLE",)),
        ],
        time.time(),
    )
    allowed, refused = plan_targets([Target.tree(100)], snap)
    assert {m.pid for m in refused} == {100, 200, 400}
    assert all("Ray's" in (m.protected or "") for m in refused)
    assert allowed == [Target.tree(300)]  # the user's subtree, whole
    allowed, refused = plan_targets([Target.group(200)], snap)
    assert allowed == [Target.pid(300)] and [m.pid for m in refused] == [200]
    # Named alone by pid: explicitly targeted, so allowed.
    allowed, refused = plan_targets([Target.pid(100)], snap)
    assert allowed == [Target.pid(100)] and refused == []
    # No Ray process covered: targets pass unchanged (the core keeps its rescans and killpg).
    assert plan_targets([Target.group(301), Target.tree(300)], snap) == (
        [Target.group(301), Target.tree(300)],
        [],
    )


def test_plan_cuts_a_ray_process_out_of_a_deep_tree() -> None:
    # Depth first, whole Ray-free subtrees, single pids on the way down to the Ray process; a chain deeper than
    # Python's recursion limit works too.
    procs = [
        _proc(10, 1, 10, ("python", "main.py")),
        _proc(11, 10, 10, ("sleep", "9")),
        _proc(12, 10, 10, ("bash",)),
        _proc(13, 12, 10, ("ray::w",)),
        _proc(14, 12, 10, ("sleep", "9")),
    ]
    depth = 3000
    procs += [_proc(1000 + i, 1000 + i - 1 if i else 10, 10, ("sh",)) for i in range(depth)]
    procs.append(_proc(1000 + depth, 1000 + depth - 1, 10, ("ray::deep",)))
    snap = rebuild_snapshot(procs, time.time())
    allowed, refused = plan_targets([Target.tree(10)], snap)
    assert sorted(m.pid for m in refused) == [13, 1000 + depth]
    assert allowed == [
        Target.pid(10),
        Target.tree(11),
        Target.pid(12),
        Target.tree(14),
        *(Target.pid(1000 + i) for i in range(depth)),
    ]


def test_find_node_by_prefix_head_or_ip() -> None:
    from procguard.core.cluster import NodeInfo

    ns = [
        NodeInfo("abcd1234" + "0" * 48, "10.0.0.1", "h1", True),
        NodeInfo("abce5678" + "0" * 48, "10.0.0.2", "h2", False),
    ]
    assert find_node("head", ns) is ns[0]
    assert find_node("abce", ns) is ns[1]
    assert find_node("10.0.0.2", ns) is ns[1]
    with pytest.raises(ValueError, match="matches 2 nodes"):
        find_node("abcd", ns + [NodeInfo("abcd9" + "1" * 51, "x", "y", False)])
    with pytest.raises(ValueError, match="no node 'zzzz'"):
        find_node("zzzz", ns)


def test_task_owners_from_the_registry_ray_tables_and_titles() -> None:
    raylet = "/v/site-packages/ray/core/src/ray/raylet/raylet"
    snap = rebuild_snapshot(
        [
            _proc(10, 1, 10, (raylet,)),
            _proc(15, 20, 20, ("sleep", "left-by-an-earlier-task")),  # born before this task began
            _proc(20, 10, 20, ("ray::train",)),
            _proc(21, 20, 20, ("python", "child.py")),
            _proc(22, 21, 22, ("sleep", "own-session")),
            _proc(23, 20, 23, ("sh", "-c", "from os.system")),
            _proc(30, 10, 30, ("ray::Holder.step",)),
            _proc(31, 30, 30, ("python", "actor-child.py")),
            _proc(40, 10, 40, ("ray::IDLE",)),
            _proc(50, 1, 50, ("sleep", "leftover")),
        ],
        time.time(),
    )
    entry = TaskEntry("n1", 21, 20, 0.0, 121)
    running = TaskRecord(
        "t1" * 24, "01000000", "train", "n1", 20, 120, 0.0, "running", (entry,), started_ticks=121
    )
    finished = TaskRecord(
        "t0" * 24,
        "01000000",
        "prep",
        "n1",
        99,
        199,
        0.0,
        "finished",
        (TaskEntry("n1", 50, 50, 0.0, 150, "leftover"),),
    )
    elsewhere = TaskRecord(
        "t2" * 24, "02000000", "x", "n2", 21, 121, 0.0, "running", (TaskEntry("n2", 22, 22, 0.0, 122),)
    )
    known = {30: TaskOwner("01000000", None, "a1" * 16, "Holder")}

    own = owners_on_node(snap, "n1", [running, finished, elsewhere], known=known)

    t1 = TaskOwner("01000000", "t1" * 24, None, None, "train", "worker", True)
    assert own[20] == t1
    assert (
        own[21] == own[22] == own[23] == TaskOwner("01000000", "t1" * 24, None, None, "train", "child", True)
    )
    assert own[50] == TaskOwner("01000000", "t0" * 24, None, None, "prep", "leftover", True)
    assert own[30] == TaskOwner("01000000", None, "a1" * 16, "Holder", "Holder.step", "worker")
    assert own[31] == TaskOwner("01000000", None, "a1" * 16, "Holder", None, "descendant")
    assert not {10, 15, 40} & own.keys()  # Ray's raylet, an earlier task's leftover, an idle worker
    assert own[20].short == "t1t1t1t1" and own[30].short == "actor a1a1a1a1"
    assert own[22].matches("T1T1") and not own[22].matches("t1t") and own[31].matches("a1a1a1")


def test_task_ids_resolve_by_prefix_among_tracked_tasks() -> None:
    one, two = "ab120" + "0" * 43, "ab121" + "1" * 43
    recs = [TaskRecord(tid, "01000000", "f", "n", 1, 1, 0.0) for tid in (one, two)]
    full = "cd" * 24  # a full id stands for itself, tracked or not
    assert resolve_task_ids(["AB120", full, one], recs) == [one, full]
    for bad, why in (
        ("ab1", "too short"),
        ("abcd", "matches no tracked task"),
        ("ab12", "matches 2 tracked"),
        ("xyz1", "invalid task id"),
        ("a" * 49, "invalid task id"),
    ):
        with pytest.raises(ValueError, match=why):
            resolve_task_ids([bad], recs)


def test_registry_keeps_a_task_whose_worker_is_being_killed_from_returning() -> None:
    """The registry's side of a force-cancel without a ref (no cluster needed: a plain class)."""
    from procguard.core.cluster._actors import CANCELLED, DOOMED, GO_ON, Registry

    reg = Registry()
    rec = TaskRecord("t1", "01000000", "f", "n", 1, 1, 0.0)
    for tid in ("t1", "t2", "t3"):
        reg.register_task(TaskRecord(tid, "01000000", "f", "n", 1, 1, 0.0))
    assert reg.finish_task("t3", []) == GO_ON
    assert reg.begin_cancel("t1") == rec and reg.begin_cancel("t2") is not None
    assert reg.done(["t1", "t2", "t9"]) == [False, False, True]  # t9: not tracked, nothing to wait for
    assert reg.claim_kill("t1")
    assert reg.finish_task("t1", []) == DOOMED  # it returned under the kill: it waits to be killed
    assert reg.finish_task("t2", []) == CANCELLED and reg.done(["t2"]) == [True]
    assert not reg.claim_kill("t2")  # returned in time: its worker is left alone
    assert reg.end_cancel("t1") is not None and reg.end_cancel("t2") is not None
    assert reg.register_task(TaskRecord("t1", "01000000", "f", "n", 2, 2, 0.0))  # a retry: cancelled at once


def test_agent_action_skips_a_pid_that_names_another_process_since_the_dry_run(procs: ProcStarter) -> None:
    # What an agent does with the app's dry run (no cluster needed: the node side is plain core code).
    p = procs.python("import time\nprint('ready', flush=True)\ntime.sleep(60)", name="reuse_check")
    st = procfs.read_stat(p.pid)
    assert st is not None
    (r,) = nodeops.act("pause", [Target.pid(p.pid)], expect={p.pid: st.start_ticks + 1})
    assert r.outcome == Outcome.ALREADY_GONE and "another process" in (r.reason or "")
    assert proc_state(p.pid) in ("S", "R")  # not signalled
    (r,) = nodeops.act("pause", [Target.pid(p.pid)], expect={p.pid: st.start_ticks})
    assert r.outcome == Outcome.PAUSED
    (r,) = nodeops.act("resume", [Target.pid(p.pid)])
    assert r.outcome == Outcome.RESUMED


def test_a_reused_worker_only_gives_a_task_the_children_born_since_it_began(procs: ProcStarter) -> None:
    # This test process stands in for a Ray worker: an earlier task left `before` running under it.
    code = "import time\nprint('ready', flush=True)\ntime.sleep(60)"
    before = procs.python(code, name="earlier_task_leftover")
    time.sleep(0.05)  # a few clock ticks
    since = procfs.now_ticks()
    time.sleep(0.05)
    after = procs.python(code, name="this_task_child")
    snap = process_snapshot()
    targets = nodeops.task_targets([], snap, os.getpid(), snap[os.getpid()].start_ticks, since_ticks=since)
    assert Target.tree(after.pid) in targets and Target.tree(before.pid) not in targets
    left = {e.pid for e in nodeops.leftovers("node", os.getpid(), [], since)}
    assert after.pid in left and before.pid not in left


def test_core_and_plain_cli_never_load_ray() -> None:
    code = (
        "import sys, io, contextlib, procguard.core; from procguard.core.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = [main(a) for a in (['ps', '--json'], ['locks', '--json'], ['gpu', '--json'])]\n"
        "print(rc, 'ray' in sys.modules); sys.exit(any(rc) or 'ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_without_ray_names_the_extra() -> None:
    code = "import sys; sys.modules['ray'] = None; import procguard.core.cluster"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "procguard[ray]" in out.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["term", "abcd:12"], "names a node: that needs --ray"),
        (["kill", "--node", "head", "12"], "--node needs --ray"),
        (["ps", "--node", "head"], "--node needs --ray"),
        (["pause", "--ray", "127.0.0.1:1", "12"], "pid 12 needs a node with --ray"),
        (["term", ":12"], "needs a node before the colon"),
        (["term", "head:x"], "invalid pid 'x'"),
        (["dupes", "--ray", "127.0.0.1:1", "--explain", "12"], "dupes --explain does not take --ray"),
        (["dupes", "--ray", "127.0.0.1:1", "--all-users"], "dupes --all-users does not take --ray"),
        (["ps", "--task", "abcd"], "--task needs --ray"),
        (["ps", "--ray", "127.0.0.1:1", "--task", "xyz"], "invalid task id 'xyz'"),
        (["locks", "--node-timeout", "3"], "--node-timeout needs --ray"),
        (["term", "--node-timeout", "3", "12"], "--node-timeout needs --ray"),
        (["gpu", "--ray", "127.0.0.1:1", "--node-timeout", "0"], "must be more than 0"),
        (["cancel", "abcd"], "cancel needs --ray"),
    ],
)
def test_cli_node_target_errors(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------- cluster


@pytest.mark.parametrize("where", ["worker", "ns"])
def test_cancel_ends_grandchildren_on_the_owning_node(
    ray_cluster: RayCluster, pinned: Pinned, tmp_path: Path, where: str
) -> None:
    rc = ray_cluster
    if where == "ns" and rc.ns is None:
        pytest.skip("no PID-namespace node (unshare not allowed here)")
    node = rc.worker if where == "worker" else rc.ns
    assert node is not None
    res = "pg_w1" if where == "worker" else "pg_ns"
    pidfile, shellfile = tmp_path / "pids", tmp_path / "shell"
    ref = tree_task.options(num_cpus=0, resources={res: 0.01}).remote(str(pidfile), str(shellfile))
    child, grandchild = _read_pids(pidfile)
    (shell,) = _read_pids(shellfile)
    on_host = {p: pinned.add(host_pid(rc, node, p)) for p in (child, grandchild, shell)}
    assert os.getsid(on_host[grandchild]) == on_host[grandchild]  # its own session: no group/tree link upward
    rec = _record(ref)
    assert rec.node_id == node
    entry = next(e for e in rec.entries if e.pid == child)
    st = procfs.read_stat(on_host[child])
    assert st is not None and entry.node_id == node
    assert host_pid(rc, node, entry.pgid) == st.pgid  # pids and pgids as the owning node sees them
    assert (entry.start_ticks, entry.create_time) == (st.start_ticks, procfs.create_time(st.start_ticks))

    report = cancel(ref, grace=1.0)

    assert report.state == "cancelled" and report.node_id == node
    by_pid = {r.pid: r for r in report.results}
    assert {child, grandchild, shell} <= set(by_pid), report
    for p in (child, grandchild, shell):
        assert by_pid[p].node_id == rec.node_id  # the agent that acted reported the registry's node
        assert by_pid[p].result.outcome in (Outcome.EXITED, Outcome.KILLED)
        assert is_gone(on_host[p])
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=60)
    assert not any(r.task_id == rec.task_id for r in tracked_tasks())


def test_cancel_after_the_task_returned_ends_what_it_left(ray_cluster: RayCluster, pinned: Pinned) -> None:
    rc = ray_cluster
    ref = leaver_task.options(num_cpus=0, resources={"pg_w1": 0.01}).remote("309.5")
    left = pinned.add(ray.get(ref, timeout=120))
    rec = next(r for r in tracked_tasks() if r.task_id == ref.task_id().hex())
    assert rec.state == "finished" and [(e.node_id, e.pid) for e in rec.entries] == [(rc.worker, left)]
    assert proc_state(left) in ("S", "R")

    report = cancel(ref, grace=1.0)

    assert report.state == "finished" and report.node_id == rc.worker
    assert [(r.node_id, r.pid, r.result.outcome) for r in report.results] == [
        (rc.worker, left, Outcome.EXITED)
    ]
    assert is_gone(left)
    assert not any(r.task_id == rec.task_id for r in tracked_tasks())


def _raises_by(ref: Any, deadline: float) -> BaseException:
    """What ray.get(ref) raises, waiting no later than `deadline` (monotonic): GetTimeoutError if it would not."""
    try:
        ray.get(ref, timeout=max(0.01, deadline - time.monotonic()))
    except ray.exceptions.GetTimeoutError:
        raise
    except Exception as e:  # noqa: BLE001 - the error is the result
        return e
    raise AssertionError("the task returned a value")


def test_cancel_escalates_on_a_task_blocked_in_c_code(
    ray_cluster: RayCluster, pinned: Pinned, tmp_path: Path
) -> None:
    """The task's child ends; the task itself, in time.sleep(600), ignores the plain cancel: after `grace` it is
    force-cancelled (its worker killed), and ray.get raises within grace + 5 s of the cancel."""
    rc = ray_cluster
    pidfile = tmp_path / "pids"
    ref = blocked_task.options(num_cpus=0, resources={"pg_w1": 0.01}).remote(str(pidfile), "314.5")
    worker, child = (pinned.add(p) for p in _read_pids(pidfile))
    _record(ref)
    grace = 1.0
    start = time.monotonic()

    report = cancel(ref, grace=grace)

    err = _raises_by(ref, start + grace + 5.0)
    assert isinstance(err, (ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)), err
    assert report.state == "force-cancelled" and report.node_id == rc.worker and report.tracked
    assert not report.running and report.ok, report
    assert [(r.pid, r.result.outcome) for r in report.results] == [(child, Outcome.EXITED)]
    assert is_gone(child) and is_gone(worker)  # the worker was killed by ray.cancel(force=True)
    assert not any(r.task_id == ref.task_id().hex() for r in tracked_tasks())


def test_cancel_by_task_id_kills_a_blocked_worker_and_its_retry_stops(
    ray_cluster: RayCluster, pinned: Pinned, tmp_path: Path
) -> None:
    """What `procguard cancel` does from another process (no ref): the worker is SIGKILLed by its node's agent,
    and the retry Ray then starts (max_retries=1) stops at once, as cancelled."""
    rc = ray_cluster
    pidfile = tmp_path / "pids"
    ref = blocked_task.options(num_cpus=0, resources={"pg_w1": 0.01}, max_retries=1).remote(
        str(pidfile), "315.5"
    )
    worker, child = (pinned.add(p) for p in _read_pids(pidfile))
    tid = _record(ref).task_id
    grace = 1.0
    start = time.monotonic()

    (report,) = cancel_tasks(None, [tid[:12]], grace=grace)

    assert report.task_id == tid and report.state == "force-cancelled" and report.ok, report
    assert report.node_id == rc.worker
    outcomes = {r.pid: r.result.outcome for r in report.results}
    assert outcomes == {child: Outcome.EXITED, worker: Outcome.KILLED}
    assert is_gone(child) and is_gone(worker)
    err = _raises_by(ref, start + grace + 30.0)  # the retry needs a fresh worker
    assert isinstance(err, ray.exceptions.TaskCancelledError), err
    assert _read_pids(pidfile) == [worker, child]  # the retry never ran the task's code again
    assert not any(r.task_id == tid for r in tracked_tasks())


def test_cli_cancel_ends_a_task_blocked_in_c_code(
    ray_cluster: RayCluster, pinned: Pinned, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`procguard cancel --ray ADDRESS TASK_ID`: the task's child ends, the task, in time.sleep(600), has its
    worker killed after the grace, and ray.get raises within grace + 5 s; per-process outcomes, exit 0."""
    rc = ray_cluster
    pidfile = tmp_path / "pids"
    ref = blocked_task.options(num_cpus=0, resources={"pg_w1": 0.01}).remote(str(pidfile), "316.5")
    worker, child = (pinned.add(p) for p in _read_pids(pidfile))
    tid = _record(ref).task_id
    assert cli_main(["cancel", "--ray", rc.address, "zz12"]) == 2  # bad ids: one line, nothing done
    assert "invalid task id 'zz12'" in capsys.readouterr().err
    assert cli_main(["cancel", "--ray", rc.address, "ab" * 24]) == 1  # a full id procguard does not track
    assert "untracked" in capsys.readouterr().out
    grace = 1.0
    start = time.monotonic()

    code = cli_main(["cancel", "--ray", rc.address, tid[:10], "--grace", str(grace)])

    err = _raises_by(ref, start + grace + 5.0)
    assert isinstance(err, (ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)), err
    out = capsys.readouterr()
    # Ray's own worker-died notices may land on this process's stdout too: only procguard's lines count.
    lines = [ln for ln in out.out.splitlines() if ln.startswith(("task ", "  "))]
    assert code == 0, out
    assert lines[0] == f"task {tid} (node {rc.worker[:8]}): force-cancelled", out
    rows = {
        int(ln.split()[1]): (ln.split()[0], ln.split()[2])
        for ln in lines[1:]
        if ln.startswith("  " + rc.worker[:8])
    }
    assert rows == {child: (rc.worker[:8], "exited"), worker: (rc.worker[:8], "killed")}, lines
    err_lines = [ln for ln in out.err.splitlines() if not ln.startswith(("\x1b", " "))]  # not Ray's notices
    assert err_lines == [err_lines[0]] and err_lines[0].startswith(
        "1 task(s): 1 force-cancelled; 2 ended: 1 exited on SIGTERM, 1 killed"
    ), out.err
    assert is_gone(child) and is_gone(worker)
    assert not any(r.task_id == tid for r in tracked_tasks())


def test_owners_name_a_tasks_processes_and_an_actors_worker(
    ray_cluster: RayCluster, pinned: Pinned, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = ray_cluster
    pidfile, shellfile = tmp_path / "pids", tmp_path / "shell"
    ref = tree_task.options(num_cpus=0, resources={"pg_w1": 0.01}).remote(str(pidfile), str(shellfile))
    child, grandchild = (pinned.add(p) for p in _read_pids(pidfile))
    (shell,) = (pinned.add(p) for p in _read_pids(shellfile))
    holder = Holder.options(resources={"pg_w1": 0.01}).remote()  # type: ignore[attr-defined]
    try:
        holder_pid = ray.get(holder.pid.remote(), timeout=120)
        rec = _record(ref)
        tid = ref.task_id().hex()

        snaps = cluster_snapshot(node_ids=[rc.worker])

        own = snaps[0].owners
        assert own[rec.worker_pid] == TaskOwner(rec.job_id, tid, None, None, rec.name, "worker", True)
        assert rec.name.endswith("tree_task")
        for p in (child, grandchild, shell):  # recorded, below the recorded one (own session), via os.system
            assert own[p] == TaskOwner(rec.job_id, tid, None, None, rec.name, "child", True), p
        rows = task_processes(snaps, tid[:8])
        assert sorted((n.node_id, p.pid) for n, p, _o in rows) == sorted(
            (rc.worker, p) for p in (rec.worker_pid, child, grandchild, shell)
        )
        actor = own[holder_pid]
        assert (actor.actor_id, actor.role, actor.tracked, actor.job_id, actor.task_id, actor.function) == (
            holder._actor_id.hex(),
            "worker",
            False,
            rec.job_id,
            None,
            None,
        )  # idle: no function
        assert actor.actor_class is not None and actor.actor_class.endswith("Holder")
        assert [p.pid for _n, p, _o in task_processes(snaps, holder._actor_id.hex()[:10])] == [holder_pid]
        # The head node shares this machine's /proc here, but the task is the worker node's: not named there.
        assert not task_processes(cluster_snapshot(node_ids=[rc.head]), tid)

        # The CLI: `ps --ray --json` carries each process's owner, `ps --ray --task` shows one task's processes.
        assert cli_main(["ps", "--ray", rc.address, "--json"]) == 0
        rows = {(r["node"], r["pid"]): r for r in json.loads(capsys.readouterr().out)}
        task_owner = {
            "job": rec.job_id,
            "task": tid,
            "actor": None,
            "actor_class": None,
            "function": rec.name,
            "tracked": True,
        }
        assert rows[(rc.worker, rec.worker_pid)]["owner"] == {**task_owner, "role": "worker"}
        for p in (child, grandchild, shell):
            assert rows[(rc.worker, p)]["owner"] == {**task_owner, "role": "child"}, p
            assert rows[(rc.head, p)]["owner"] is None  # the same process, as the head node lists it
        owner = rows[(rc.worker, holder_pid)]["owner"]
        assert (owner["actor"], owner["actor_class"], owner["task"]) == (
            holder._actor_id.hex(),
            actor.actor_class,
            None,
        )
        assert cli_main(["ps", "--ray", rc.address, "--task", tid[:8].upper()]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split()[:2] == ["NODE", "PID"] and "TASK" in table[0].split()
        shown = sorted(
            (ln.split()[0], int(ln.split()[1]), ln.split()[9])
            for ln in table[1:]
            if ln[:8] in {n.node_id[:8] for n in nodes()}
        )  # not Ray's own notices
        assert shown == sorted(
            (rc.worker[:8], p, tid[:8]) for p in (rec.worker_pid, child, grandchild, shell)
        )
        assert cli_main(["ps", "--ray", rc.address, "--task", holder._actor_id.hex()[:12], "--json"]) == 0
        assert [(r["node"], r["pid"]) for r in json.loads(capsys.readouterr().out)] == [
            (rc.worker, holder_pid)
        ]
        assert cli_main(["ps", "--ray", rc.address, "--task", "0123abcd"]) == 1  # no such task: said, exit 1
        assert "no process of task 0123abcd" in capsys.readouterr().err
    finally:
        ray.kill(holder)
        cancel(ref, grace=0.5)


def test_routing_into_a_pid_namespace_node(ray_cluster: RayCluster, pinned: Pinned, tmp_path: Path) -> None:
    """On the namespace node the task's pids are namespace pids: only that node's agent can reach them."""
    rc = ray_cluster
    if rc.ns is None:
        pytest.skip("no PID-namespace node (unshare not allowed here)")
    pidfile = tmp_path / "pids"
    ref = sleeper_task.options(num_cpus=0, resources={"pg_ns": 0.01}).remote(str(pidfile), "303.25")
    worker, child = _read_pids(pidfile)
    child_host = pinned.add(host_pid(rc, rc.ns, child))
    assert child_host != child  # the same process has another pid on the host
    rec = _record(ref)
    assert rec.node_id == rc.ns and any(e.pid == child for e in rec.entries)

    # The namespace node's agent sees its own /proc: pid 1 there is the namespace's launcher.
    (ns_snap,) = cluster_snapshot(node_ids=[rc.ns])
    assert ns_snap.snapshot is not None and "pg_ns_node.py" in " ".join(ns_snap.snapshot[1].cmdline)
    assert ns_snap.snapshot[child].cmdline == ("sleep", "303.25")
    # The same pid number on the head node is some other process, or none (a dry run: nothing is signalled).
    head_view = cluster_resolve(None, rc.head, [Target.pid(child)])
    assert not any(nm.member.cmdline == ("sleep", "303.25") for nm in head_view)

    results = cluster_signal(None, rc.ns, "kill", Target.pid(child))

    assert [(r.node_id, r.pid, r.result.outcome) for r in results] == [(rc.ns, child, Outcome.KILLED)]
    assert is_gone(child_host)
    assert ray.get(ref, timeout=60) == -signal.SIGKILL  # the task saw its child die


def test_pause_and_resume_across_nodes(ray_cluster: RayCluster, pinned: Pinned, tmp_path: Path) -> None:
    rc = ray_cluster
    where = [("pg_head", rc.head), ("pg_w1", rc.worker)] + ([("pg_ns", rc.ns)] if rc.ns else [])
    refs = {}
    for res, node in where:
        refs[node] = sleeper_task.options(num_cpus=0, resources={res: 0.01}).remote(
            str(tmp_path / res), "304.5"
        )
    kids: dict[str, tuple[int, int]] = {}  # node -> (pid there, host pid)
    for res, node in where:
        _w, child = _read_pids(tmp_path / res)
        kids[node] = (child, pinned.add(host_pid(rc, node, child)))  # type: ignore[arg-type]
    recs = {node: _record(ref) for node, ref in refs.items()}
    assert all(recs[n].node_id == n for n in recs)
    try:
        paused = cluster_signal_many(None, "pause", {n: [Target.pid(p)] for n, (p, _h) in kids.items()})
        assert sorted((r.node_id, r.pid, r.result.outcome) for r in paused) == sorted(
            (recs[n].node_id, p, Outcome.PAUSED) for n, (p, _h) in kids.items()
        )
        assert all(proc_state(h) == "T" for _p, h in kids.values())

        resumed = cluster_signal_many(None, "resume", {n: [Target.pid(p)] for n, (p, _h) in kids.items()})
        assert sorted((r.node_id, r.pid, r.result.outcome) for r in resumed) == sorted(
            (recs[n].node_id, p, Outcome.RESUMED) for n, (p, _h) in kids.items()
        )
        assert all(proc_state(h) not in ("T", None) for _p, h in kids.values())
    finally:
        for ref in refs.values():
            cancel(ref, grace=0.5)


def test_same_protections_on_every_node(ray_cluster: RayCluster, pinned: Pinned, tmp_path: Path) -> None:
    rc = ray_cluster
    all_nodes = [n.node_id for n in nodes()]
    # pid 1 (the host's init, or the namespace's launcher) is refused everywhere, before any signal.
    refused = cluster_signal_many(None, "pause", {n: [Target.pid(1)] for n in all_nodes})
    assert sorted(r.node_id for r in refused) == sorted(all_nodes)
    assert all(r.result.outcome == Outcome.REFUSED and "pid 1" in (r.result.reason or "") for r in refused)

    # A tree that holds Ray's processes: they are refused unless named alone (dry run: nothing signalled).
    (head_snap,) = cluster_snapshot(node_ids=[rc.head])
    raylet = next(pid for pid, kind in head_snap.ray_kinds.items() if kind == "raylet")
    members = cluster_resolve(None, rc.head, [Target.tree(raylet)])
    assert members and all(nm.node_id == rc.head for nm in members)
    ray_members = [nm.member for nm in members if nm.member.pid in head_snap.ray_kinds]
    assert any(m.pid == raylet for m in ray_members)
    # All protected: the agent's own worker and its ancestors (the raylet) by the core, the rest as Ray's.
    assert all(m.protected for m in ray_members)
    assert any("Ray's" in (m.protected or "") for m in ray_members)
    # Named alone by pid, a Ray process may be acted on (the GCS here: not in the agent's own lineage, which
    # the core protects on every node as it protects procguard's).
    gcs = next(pid for pid, kind in head_snap.ray_kinds.items() if kind == "gcs_server")
    swept = cluster_resolve(None, rc.head, [Target.group(head_snap.snapshot[gcs].pgid)])  # type: ignore[index]
    assert any(nm.member.pid == gcs and "Ray's gcs_server" in (nm.member.protected or "") for nm in swept)
    alone = cluster_resolve(None, rc.head, [Target.pid(gcs)])
    assert [(nm.member.pid, nm.member.protected) for nm in alone] == [(gcs, None)]

    # A real action on a task worker's tree: the worker (Ray's) is refused, its child ends.
    pidfile = tmp_path / "pids"
    ref = sleeper_task.options(num_cpus=0, resources={"pg_w1": 0.01}).remote(str(pidfile), "305.75")
    worker, child = _read_pids(pidfile)
    pinned.add(child)
    results = {r.pid: r for r in cluster_signal(None, rc.worker, "term", Target.tree(worker), grace=1.0)}
    assert results[worker].result.outcome == Outcome.REFUSED and "Ray's worker" in (
        results[worker].result.reason or ""
    )
    assert results[child].result.outcome == Outcome.EXITED and is_gone(child)
    assert proc_state(worker) not in (None, "Z", "T")
    assert ray.get(ref, timeout=60) == -signal.SIGTERM


DRIVER = """\
import logging, sys
import ray
from procguard.core.cluster import cleanup_on_sigterm, tracked

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)


@ray.remote(num_cpus=0, resources={"pg_w1": 0.01})
@tracked(grace=1.0)
def job(pidfile, code):
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", code, pidfile, "306.5"])
    return child.wait()


logging.basicConfig(level=logging.WARNING)
logging.getLogger("procguard").setLevel(logging.INFO)
cleanup_on_sigterm(grace=1.0)
ref = job.remote(sys.argv[2], sys.argv[3])
print("submitted", flush=True)
ray.get(ref)
"""


def test_driver_sigterm_ends_every_tracked_tree(
    ray_cluster: RayCluster, pinned: Pinned, tmp_path: Path
) -> None:
    """What `ray job stop` does to a driver: SIGTERM. The task's child and its own-session child end."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    pidfile = tmp_path / "pids"
    log = tmp_path / "driver.log"
    with open(log, "wb") as out:
        drv = subprocess.Popen(
            [sys.executable, str(script), ray_cluster.address, str(pidfile), CHILD],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def tail() -> str:
        return log.read_text(errors="replace")[-3000:]

    try:
        wait_for(lambda: pidfile.exists() or drv.poll() is not None, timeout=90, interval=0.05)
        assert drv.poll() is None, tail()
        child, grandchild = _read_pids(pidfile)
        pinned.add(child)
        pinned.add(grandchild)
        _record_of_job = wait_for(
            lambda: any(e.pid == child for r in tracked_tasks() for e in r.entries), timeout=60, interval=0.05
        )
        drv.send_signal(signal.SIGTERM)
        rc = drv.wait(timeout=90)
        # It exited by itself, through Ray's own SIGTERM handler (which ray.get turns into exit status 1).
        assert rc > 0, tail()
        assert "procguard: SIGTERM: ended" in tail()
        assert is_gone(child) and is_gone(grandchild)  # the grandchild is in its own session
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.wait(timeout=10)


def test_cli_ps_and_term_with_ray(
    ray_cluster: RayCluster, pinned: Pinned, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = ray_cluster
    pidfile = tmp_path / "pids"
    ref = sleeper_task.options(num_cpus=0, resources={"pg_w1": 0.01}).remote(str(pidfile), "307.25")
    _worker, child = _read_pids(pidfile)
    pinned.add(child)

    assert cli_main(["ps", "--ray", rc.address, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    mine = [r for r in rows if r["pid"] == child and r["cmdline"] == ["sleep", "307.25"]]
    # The head and worker nodes share this machine's /proc, so both list it; the namespace node does not.
    assert rc.worker in {r["node"] for r in mine} and rc.ns not in {r["node"] for r in mine}
    assert all(r["ray"] is None for r in mine)
    assert {r["node"] for r in rows} == {n.node_id for n in nodes()}
    assert any(r["ray"] == "raylet" for r in rows)

    prefix = rc.worker[:12]
    assert cli_main(["term", "--ray", rc.address, f"{prefix}:{child}", "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert [(t["node"], t["pid"]) for t in dry["targets"]] == [(rc.worker, child)]
    assert proc_state(child) in ("S", "R")

    assert (
        cli_main(["term", "--ray", rc.address, "--node", prefix, str(child), "--grace", "1", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [(r["node"], r["pid"], r["outcome"]) for r in out["results"]] == [(rc.worker, child, "exited")]
    assert is_gone(child)
    ray.get(ref, timeout=60)

    assert cli_main(["kill", "--ray", rc.address, f"{prefix}:999999999"]) == 2
    assert "no process with pid 999999999 on node" in capsys.readouterr().err


def test_cli_ps_ray_connects_from_a_fresh_process(ray_cluster: RayCluster) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "procguard.core.cli", "ps", "--ray", ray_cluster.address, "--node", "head"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["NODE", "PID"]
    assert all(ln.startswith(ray_cluster.head[:8]) for ln in lines[1:]), [
        ln for ln in lines[1:] if not ln.startswith(ray_cluster.head[:8])
    ]
    assert "[ray: raylet]" in out.stdout


def test_cli_dupes_locks_gpu_with_ray(
    ray_cluster: RayCluster, procs: ProcStarter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each node's own report, with its node id. The head and worker nodes share this machine's /proc, so
    both report what runs here; the namespace node sees none of it."""
    rc = ray_cluster
    script = tmp_path / "dup_job.py"
    script.write_text("import sys, time\nprint('ready', flush=True)\ntime.sleep(300)\n")
    runs = [
        procs.popen([sys.executable, str(script), str(i)], stdout=subprocess.PIPE, start_new_session=True)
        for i in range(2)
    ]
    for p in runs:
        procs.wait_ready(p)
    locker = procs.python(
        """
        import fcntl, sys, time
        f = open(sys.argv[1], "w")
        fcntl.flock(f, fcntl.LOCK_EX)
        print("ready", flush=True)
        time.sleep(300)
    """,
        str(tmp_path / "held.lock"),
        name="locker",
    )
    shared = {rc.head, rc.worker}

    assert cli_main(["dupes", "--ray", rc.address, "--script", str(script), "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert {g["node"] for g in groups} == shared
    assert all(sorted(i["pid"] for i in g["instances"]) == sorted(p.pid for p in runs) for g in groups)

    assert cli_main(["locks", "--ray", rc.address, "--dir", str(tmp_path), "--json"]) == 0
    locks = json.loads(capsys.readouterr().out)
    assert {(lk["node"], lk["pid"]) for lk in locks} == {(n, locker.pid) for n in shared}

    assert cli_main(["locks", "--ray", rc.address, "--dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["NODE", "PID"]
    assert sorted(ln.split()[0] for ln in table[1:]) == sorted(n[:8] for n in shared)

    # gpu: one entry per node (no GPU on this machine: each says why, as `procguard gpu` does).
    rc_gpu = cli_main(["gpu", "--ray", rc.address, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc_gpu == 0 and sorted(n["node"] for n in report["nodes"]) == sorted(n.node_id for n in nodes())
    assert all(n["error"] is None and "available" in n for n in report["nodes"])


def test_tui_ray_backend_shows_every_node_and_acts_on_each(
    ray_cluster: RayCluster, pinned: Pinned, tmp_path: Path
) -> None:
    """The app's backend for a cluster: one model with a part per node; the namespace node's process (its own
    pid) in that node's part; an action routed to that node only."""
    pytest.importorskip("procguard.tui.model")
    from procguard.tui.actions import make_plan, run_plan
    from procguard.tui.backends.ray import RayClusterBackend
    from procguard.tui.model import node_targets

    rc = ray_cluster
    node = rc.ns or rc.worker
    res = "pg_ns" if rc.ns else "pg_w1"
    pidfile = tmp_path / "pids"
    ref = sleeper_task.options(num_cpus=0, resources={res: 0.01}).remote(str(pidfile), "308.5")
    _worker, child = _read_pids(pidfile)
    child_host = pinned.add(host_pid(rc, node, child))

    backend = RayClusterBackend(rc.address)
    assert backend.start_node is None and RayClusterBackend(rc.address, node=node[:12]).start_node == node
    model = backend.collect()
    assert model.cluster and not model.errors, model.errors
    assert [p.node.node_id for p in model.parts] == [n.node_id for n in nodes()]  # type: ignore[union-attr]
    part = model.part(node)
    assert part is not None and part.snapshot[child].cmdline == ("sleep", "308.5")
    assert backend.node_of(part.snapshot) == node
    assert backend.proc_extra(child, part.snapshot).cwd is not None
    assert "guarded" in backend.flush(
        child, part.snapshot
    )  # not a guarded process: the node's answer says so

    plan = make_plan(backend, "pause", node_targets([("p", child, node)], model), model, grace=1.0)
    assert [m.pid for m in plan.blast.acting] == [child] and [g.node for g in plan.nodes] == [node]
    run_plan(backend, plan)
    assert proc_state(child_host) == "T"
    backend.resume([Target.pid(child)], part.snapshot)
    assert proc_state(child_host) not in ("T", None)
    results = backend.terminate([Target.pid(child)], 1.0, part.snapshot)
    assert [(r.pid, r.outcome) for r in results] == [(child, Outcome.EXITED)] and is_gone(child_host)
    assert ray.get(ref, timeout=60) == -signal.SIGTERM


async def _tui_until(pilot: Any, pred: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout  # a condition wait, not a timing assertion
    while not pred():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        await pilot.pause(0.05)


def _scoped_app(rc: RayCluster, scope: str, **opts: Any) -> Any:
    """procguard-tui on the test cluster, filtered to `scope` and refusing any action outside it."""
    from procguard.core.signals import Member
    from procguard.tui.app import Options, ProcguardApp
    from procguard.tui.backends.ray import RayClusterBackend

    def in_scope(m: Member) -> bool:
        return scope in m.command

    return ProcguardApp(
        Options(interval=0.5, filter=scope, grace=1.0, **opts),
        backend=RayClusterBackend(rc.address),
        act_scope=in_scope,
    )


@pytest.mark.asyncio
async def test_tui_app_one_table_narrows_to_a_node_and_pauses_there(
    ray_cluster: RayCluster, pinned: Pinned, tmp_path: Path
) -> None:
    """procguard-tui on the cluster: every node's rows in one table (NODE column), the test's process on the node
    that runs it (the namespace node if there is one: there the pid means another process than on the host);
    `n` narrows to one node after another (the summary names it), then all again; `p`/`r` pause and resume the
    process on its node; the confirm dialog names the node."""
    pytest.importorskip("textual")
    from procguard.tui.screens.confirm import ConfirmScreen
    from procguard.tui.widgets.summary import Summary

    rc = ray_cluster
    node = rc.ns or rc.worker
    res = "pg_ns" if rc.ns else "pg_w1"
    scope = str(tmp_path)
    pidfile = tmp_path / "pids"
    ref = scoped_sleeper_task.options(num_cpus=0, resources={res: 0.01}).remote(str(pidfile), scope)
    _worker, child = _read_pids(pidfile)
    child_host = pinned.add(host_pid(rc, node, child))
    infos = {n.node_id: n for n in nodes()}
    ids = list(infos)
    key = ("p", child, node)

    def row_state() -> str | None:
        i = app.process_table.index_of(key)
        row = None if i is None else app.process_table.rows[i]
        return None if row is None or row.proc is None else row.proc.state

    app = _scoped_app(rc, scope)
    try:
        async with app.run_test(size=(130, 30)) as pilot:
            table = app.process_table
            await _tui_until(pilot, lambda: table.index_of(key) is not None)
            assert app.cluster_mode and app.check_action("next_node", ()) is True
            assert "NODE" in [c.title for c in table.columns]
            assert f"node all {len(ids)} nodes" in str(app.query_one(Summary).render())
            for i in range(len(ids) + 1):  # n: each node in turn, then all of them
                await pilot.press("n")
                want = ids[i] if i < len(ids) else None
                assert app.view_state.node == want
                summary = str(app.query_one(Summary).render())
                if want is not None:
                    head = " (head)" if infos[want].is_head else ""
                    assert f"node {want[:8]} {infos[want].ip}{head} · {i + 1} of {len(ids)}" in summary, (
                        summary
                    )
                    await _tui_until(pilot, lambda want=want: all(r.node == want for r in table.rows))
            await _tui_until(pilot, lambda: table.index_of(key) is not None)
            assert table.move_to_key(key)
            await pilot.pause()
            row = app.selected_row()
            assert row is not None and row.node == node and row.proc is not None and scope in row.proc.command

            await pilot.press("p")
            await _tui_until(pilot, lambda: proc_state(child_host) == "T")
            (ns_snap,) = cluster_snapshot(node_ids=[node])  # the owning node's agent sees it stopped
            assert ns_snap.snapshot is not None and ns_snap.snapshot[child].state == "T"
            await _tui_until(pilot, lambda: row_state() == "T")
            await pilot.press("r")
            await _tui_until(pilot, lambda: proc_state(child_host) not in ("T", None))
            await _tui_until(pilot, lambda: row_state() not in ("T", None))

            # The confirm dialog names the node; cancelling signals nothing.
            assert table.move_to_key(key)
            await pilot.press("t")
            await _tui_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            dialog = app.screen
            assert isinstance(dialog, ConfirmScreen) and dialog.node is not None and node[:8] in dialog.node
            assert [m.pid for m in dialog.plan.blast.acting] == [child]
            await pilot.press("n")
            await _tui_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
            assert proc_state(child_host) in ("S", "R")
            errors = [t for t, sev in app.record.notices if sev == "error"]
            assert not errors, errors
    finally:
        cancel(ref, grace=0.5)
    assert is_gone(child_host)


@pytest.mark.asyncio
async def test_tui_app_acts_on_rows_of_two_nodes_in_one_action(
    ray_cluster: RayCluster, pinned: Pinned, tmp_path: Path
) -> None:
    """One `k` on two marked rows of two nodes (the worker and the namespace node, or the head): the confirm
    dialog groups the processes by node, and each node kills its own."""
    pytest.importorskip("textual")
    from procguard.tui.screens.confirm import ConfirmScreen

    rc = ray_cluster
    where = [(rc.worker, "pg_w1"), (rc.ns, "pg_ns") if rc.ns else (rc.head, "pg_head")]
    scope = str(tmp_path)
    refs, keys, hosts = [], [], []
    for nid, res in where:
        assert nid is not None
        pidfile = tmp_path / f"pids-{res}"
        refs.append(
            scoped_sleeper_task.options(num_cpus=0, resources={res: 0.01}).remote(str(pidfile), scope)
        )
        _worker, child = _read_pids(pidfile)
        hosts.append(pinned.add(host_pid(rc, nid, child)))
        keys.append(("p", child, nid))
    app = _scoped_app(rc, scope)
    try:
        async with app.run_test(size=(130, 30)) as pilot:
            table = app.process_table
            await _tui_until(pilot, lambda: all(table.index_of(k) is not None for k in keys))
            for k in keys:
                assert table.move_to_key(k)
                await pilot.press("space")
            assert app.marks == frozenset(keys)
            await pilot.press("k")
            await _tui_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            dialog = app.screen
            assert isinstance(dialog, ConfirmScreen)
            assert sorted(
                (n, m.pid) for n, m in zip(dialog.plan.blast.nodes, dialog.plan.blast.members, strict=True)
            ) == sorted((k[2], k[1]) for k in keys)
            assert {g.node for g in dialog.plan.nodes} == {k[2] for k in keys}
            await pilot.press("y")
            await _tui_until(pilot, lambda: all(is_gone(h) for h in hosts))
            await _tui_until(pilot, lambda: "2 ended" in "\n".join(t for t, _s in app.record.notices))
    finally:
        for ref in refs:
            cancel(ref, grace=0.5)


def test_tui_ray_errors_are_one_line(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """An address where nothing listens and a node that is not in the cluster: one line naming it, exit 2,
    the process gone (stdout is a terminal, as the app needs, so only these errors stop it)."""
    import socket

    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
        runs = []
        # The plain command fails as fast on a dead address (ray.init alone would retry for minutes).
        out = subprocess.run(
            [sys.executable, "-m", "procguard.core.cli", "ps", "--ray", dead],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and dead in out.stderr, out.stderr
        for argv in (["--ray", dead], ["--ray", ray_cluster.address, "--node", "ffff0000"]):
            master, slave = os.openpty()
            p = subprocess.Popen(
                [sys.executable, "-m", "procguard.tui", *argv],
                stdin=subprocess.DEVNULL,
                stdout=slave,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            os.close(slave)
            runs.append((argv, p, master))
        try:
            for argv, p, _m in runs:
                _out, err = p.communicate(timeout=120)
                assert p.returncode == 2 and err.count("\n") == 1, (argv, p.returncode, err)
                assert err.startswith(f"procguard-tui: --ray {argv[1]}: "), err
                assert argv[-1] in err and "Traceback" not in err
        finally:
            for _argv, p, master in runs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                os.close(master)


def test_a_node_that_fails_is_named_and_the_other_nodes_answer(
    ray_cluster: RayCluster,
    pinned: Pinned,
    procs: ProcStarter,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fourth node: its agent stopped (no answer in time), then the node killed in the middle of a cancel.
    Runs last: the cluster keeps a dead node."""
    rc = ray_cluster
    doomed_node = rc.cluster.add_node(num_cpus=0, object_store_memory=OBJECT_STORE, resources={"pg_doom": 1})
    try:
        doomed = doomed_node.node_id
        wait_for(lambda: doomed in {n.node_id for n in nodes()}, timeout=60, interval=0.1)
        assert cluster_snapshot(node_ids=[doomed], node_timeout=120)[0].error is None  # its agent started
        reported, agent_pid, _proto = ray.get(agent(doomed).ping.remote(), timeout=60)
        assert reported == doomed
        pinned.add(agent_pid)
        mine = procs.python("import time\nprint('ready', flush=True)\ntime.sleep(300)", name="other_node")

        spare = procs.python("import time\nprint('ready', flush=True)\ntime.sleep(300)", name="spare")
        running = sleeper_task.options(num_cpus=0, resources={"pg_w1": 0.01}).remote(
            str(tmp_path / "w"), "317.5"
        )
        _w, sleeping = (pinned.add(p) for p in _read_pids(tmp_path / "w"))
        tid = _record(running).task_id

        # 1. No answer in time: the node is named, the other nodes' answers come back.
        os.kill(agent_pid, signal.SIGSTOP)
        try:
            snaps = cluster_snapshot(node_timeout=2.0)
            results, failures = signal_nodes(
                None,
                "pause",
                {rc.worker: [Target.pid(mine.pid)], doomed: [Target.pid(1)]},
                grace=0.0,
                node_timeout=2.0,
            )
            ps_code = cli_main(["ps", "--ray", rc.address, "--node-timeout", "2", "--json"])
            ps_out = capsys.readouterr()
            kill_code = cli_main(
                [
                    "kill",
                    "--ray",
                    rc.address,
                    f"{rc.worker}:{spare.pid}",
                    f"{doomed}:{mine.pid}",
                    "--node-timeout",
                    "2",
                ]
            )
            kill_out = capsys.readouterr()
        finally:
            os.kill(agent_pid, signal.SIGCONT)
        # The CLI: the failed node named in one line on stderr, every other node's rows, exit 1.
        ps_err = [ln for ln in ps_out.err.splitlines() if ln.startswith("procguard")]  # not Ray's own notices
        assert ps_code == 1 and len(ps_err) == 1, ps_out.err
        assert ps_err[0].startswith(f"procguard: node {doomed[:8]} ") and "did not answer" in ps_err[0]
        ps_rows = json.loads(ps_out.out)
        assert {r["node"] for r in ps_rows} == {n.node_id for n in nodes()} - {doomed}
        # Ownership is still there for the nodes that answered (the registry's answer was not given up on).
        (sleep_row,) = [r for r in ps_rows if r["node"] == rc.worker and r["pid"] == sleeping]
        assert sleep_row["owner"]["task"] == tid and sleep_row["owner"]["role"] == "child"
        cancel(running, grace=0.5)
        # kill: the node that acted prints its result, the failed node's target is unreachable (never signalled).
        assert kill_code == 1
        rows = sorted(
            tuple(ln.split()[:3]) for ln in kill_out.out.splitlines() if ln[:8] in (rc.worker[:8], doomed[:8])
        )
        assert rows == sorted(
            [(rc.worker[:8], str(spare.pid), "killed"), (doomed[:8], str(mine.pid), "unreachable")]
        ), kill_out.out
        err = [ln for ln in kill_out.err.splitlines() if not ln.startswith(("\x1b", " "))]
        assert len(err) == 2 and err[0].startswith(f"procguard: node {doomed[:8]} "), err
        assert err[1].startswith("1 ended: 1 killed") and err[1].endswith(", 1 unreachable"), err
        assert is_gone(spare.pid)
        by_node = {s.node.node_id: s for s in snaps}
        assert set(by_node) == {n.node_id for n in nodes()}
        bad = by_node.pop(doomed)
        assert bad.snapshot is None and bad.timed_out and "did not answer within 2 s" in (bad.error or "")
        assert str(bad.failure).startswith(f"node {doomed[:8]} ")
        assert all(s.snapshot is not None and s.error is None for s in by_node.values())
        assert [(f.node_id, f.timed_out) for f in failures] == [(doomed, True)]
        assert sorted((r.node_id, r.pid, r.outcome) for r in results) == sorted(
            [(rc.worker, mine.pid, "paused"), (doomed, 1, "unreachable")]
        )
        assert proc_state(mine.pid) == "T"
        os.kill(mine.pid, signal.SIGCONT)

        # 2. The node dies while its agent waits out the grace of a cancel: its processes are unreachable.
        marker, pidfile = tmp_path / "got-sigterm", tmp_path / "pids"
        ref = stubborn_task.options(num_cpus=0, resources={"pg_doom": 0.01}).remote(str(marker), str(pidfile))
        (stubborn,) = (pinned.add(p) for p in _read_pids(pidfile))
        rec = _record(ref)
        pinned.add(rec.worker_pid)
        got: dict[str, Any] = {}
        canceller = threading.Thread(target=lambda: got.update(report=cancel(ref, grace=60.0)), daemon=True)
        canceller.start()
        wait_for(marker.exists, timeout=60, interval=0.05)  # SIGTERM sent: the agent waits out the grace
        rc.cluster.remove_node(doomed_node, allow_graceful=False)
        canceller.join(timeout=90)
        assert not canceller.is_alive()
        report = got["report"]
        assert report.node_id == doomed and not report.ok
        assert [f.node_id for f in report.failures] == [doomed]
        assert "the node died" in report.failures[0].error
        assert {(r.node_id, r.pid, r.outcome) for r in report.results} >= {(doomed, stubborn, "unreachable")}
        assert all(r.unreachable for r in report.results if r.node_id == doomed)
        with pytest.raises(ray.exceptions.RayError):
            ray.get(ref, timeout=60)

        # 3. Asked for by id once dead: named, and the other node still answers.
        wait_for(lambda: doomed not in {n.node_id for n in nodes()}, timeout=60, interval=0.1)
        ok, dead = cluster_snapshot(node_ids=[rc.worker, doomed])
        assert ok.snapshot is not None and dead.snapshot is None and dead.node.node_id == doomed
        assert dead.error == "left the cluster (dead)"
    finally:
        if doomed_node in rc.cluster.worker_nodes:
            rc.cluster.remove_node(doomed_node, allow_graceful=False)


def test_agent_action_reports_a_changed_pid_beside_the_ones_it_acted_on(procs: ProcStarter) -> None:
    a = procs.python("import time\nprint('ready', flush=True)\ntime.sleep(60)", name="reuse_a")
    b = procs.python("import time\nprint('ready', flush=True)\ntime.sleep(60)", name="reuse_b")
    sa, sb = procfs.read_stat(a.pid), procfs.read_stat(b.pid)
    assert sa is not None and sb is not None
    res = nodeops.act(
        "pause",
        [Target.pid(a.pid), Target.pid(b.pid)],
        expect={a.pid: sa.start_ticks + 1, b.pid: sb.start_ticks},
    )
    assert {r.pid: r.outcome for r in res} == {a.pid: Outcome.ALREADY_GONE, b.pid: Outcome.PAUSED}
    assert proc_state(a.pid) in ("S", "R")
    (r,) = nodeops.act("resume", [Target.pid(b.pid)])
    assert r.outcome == Outcome.RESUMED
