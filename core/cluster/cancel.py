"""Cancel Ray tasks with everything they started: `cancel(ref)`, `cancel_tasks(task_ids)` (the core of
`procguard cancel`), `cancel_job`, `cleanup_on_sigterm`.

One cancel, for any number of tasks at once:
1. the registry marks each task cancelling (a tracked task that returns from now on reports itself cancelled);
2. every process tree of each task ends on the node that owns it (SIGTERM, SIGKILL after `grace`; `force`:
   SIGKILL at once), all nodes at once;
3. the task itself: with a ref, `ray.cancel(ref)` (KeyboardInterrupt in Python code); then, if it has not
   finished within `grace` (Python blocked in C code: time.sleep, a socket read, a CUDA call), it is
   force-cancelled: `ray.cancel(ref, force=True)`, which kills its worker. Without a ref (another driver, the
   CLI), a tracked task's worker is SIGKILLed by its node's agent after `grace` (the registry keeps it from
   taking up another task meanwhile; a retry of it stops at once, as cancelled). `force` skips the wait;
4. processes the task started during all this are ended too.
An actor task is never force-cancelled (Ray can't, and killing its worker would kill the actor): its report
says it still runs.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import ray

from procguard.core.cluster.api import (
    NODE_CHECK,
    NODE_TIMEOUT,
    Call,
    ClusterError,
    NodeFailure,
    NodeInfo,
    NodeSignalResult,
    _calls,
    _error_text,
    _Failed,
    _live_ids,
    _node_list,
    _wait_all,
    connect,
    registry,
    registry_call,
    tracked_tasks,
    unreachable_result,
)
from procguard.core.cluster.nodeops import TaskEntry, TaskRecord
from procguard.core.signals import KILL_CONFIRM_TIMEOUT

log = logging.getLogger(__name__)

STATES = ("cancelled", "force-cancelled", "finished", "untracked")
POLL = 0.1  # seconds between looks at the registry while waiting for tasks without a ref


@dataclass(frozen=True)
class CancelReport:
    """What a cancel did to one task.

    state: cancelled (it ended within its grace, or was not running yet) | force-cancelled (it did not: its
    worker was killed) | finished (it had returned before; what it left running was ended) | untracked
    (procguard's registry does not know it and there was no ref: nothing was done).
    """

    task_id: str
    node_id: str | None  # where the task ran (None if it was not tracked)
    state: str
    results: tuple[NodeSignalResult, ...]  # one per process, `unreachable` for those of a node that failed
    ray_cancel_error: str | None = None  # why the task itself could not be (force-)cancelled
    failures: tuple[NodeFailure, ...] = ()  # nodes that died or did not answer in time
    tracked: bool = True  # procguard's registry knew the task
    running: bool = False  # the task was still running when the cancel gave up (an actor task, a failed kill)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results) and not self.failures and not self.running

    def to_json(self) -> dict[str, object]:
        return {
            "task": self.task_id,
            "node": self.node_id,
            "state": self.state,
            "tracked": self.tracked,
            "running": self.running,
            "ray_cancel_error": self.ray_cancel_error,
            "results": [r.to_json() for r in self.results],
            "failures": [f.to_json() for f in self.failures],
        }


@dataclass
class _Task:
    """One task's cancel as it goes."""

    task_id: str
    ref: Any = None
    rec: TaskRecord | None = None
    state: str = "cancelled"
    results: list[NodeSignalResult] = field(default_factory=list)
    failures: list[NodeFailure] = field(default_factory=list)
    error: str | None = None
    running: bool = False
    ended: bool = False  # seen to end (or never to have run)

    @property
    def actor_task(self) -> bool:
        return bool(self.rec is not None and self.rec.actor_id)

    def report(self) -> CancelReport:
        seen: set[tuple[str, int]] = set()
        results = []
        for r in self.results:  # the first outcome of a process counts (a later pass finds it gone)
            if (r.node_id, r.pid) not in seen:
                seen.add((r.node_id, r.pid))
                results.append(r)
        return CancelReport(
            self.task_id,
            self.rec.node_id if self.rec else None,
            self.state,
            tuple(results),
            self.error,
            tuple(self.failures),
            self.rec is not None,
            self.running,
        )


_EndJob = tuple[_Task, TaskRecord, Sequence[TaskEntry], bool, bool]  # task, record, entries, worker, kill it


def _end_trees(jobs: Sequence[_EndJob], grace: float, force: bool, timeout: float) -> None:
    """One end_task per (task, node), all at once; outcomes (unreachable for a failed node) into each task."""
    calls: list[Call] = []
    owners: list[tuple[_Task, list[TaskEntry], bool]] = []
    for t, rec, entries, with_worker, kill_worker in jobs:
        by_node: dict[str, list[TaskEntry]] = {}
        for e in entries:
            by_node.setdefault(e.node_id, []).append(e)
        if with_worker:
            by_node.setdefault(rec.node_id, [])
        for nid, es in by_node.items():
            on_worker = with_worker and nid == rec.node_id
            wpid, wticks = (rec.worker_pid, rec.worker_start_ticks) if on_worker else (0, 0)
            calls.append(
                (
                    nid,
                    "end_task",
                    (es, wpid, wticks, grace, force, rec.started_ticks, kill_worker and on_worker),
                )
            )
            owners.append((t, es, on_worker))
    if not calls:
        return
    live, gone = _node_list(None, {nid for nid, _m, _a in calls})
    info: dict[str, NodeInfo] = {n.node_id: n for n in live} | {f.node_id: f.node for f in gone}
    dead = {f.node_id: f for f in gone}
    todo = [i for i, (nid, _m, _a) in enumerate(calls) if nid not in dead]
    got = dict(
        zip(todo, _calls([calls[i] for i in todo], timeout, grace + KILL_CONFIRM_TIMEOUT), strict=True)
    )
    for i, (nid, _m, args) in enumerate(calls):
        t, es, on_worker = owners[i]
        v = got[i] if i in got else _Failed(dead[nid].error)
        if isinstance(v, _Failed):
            f = NodeFailure(info[nid], v.error, v.timed_out)
            log.warning("procguard: task %s: %s", t.task_id, f)
            t.failures.append(f)
            pids = [e.pid for e in es] + ([args[1]] if on_worker and args[1] else [])
            t.results.extend(unreachable_result(nid, pid, str(f)) for pid in pids)
        else:
            t.results.extend(NodeSignalResult(nid, r) for r in v)


def _ray_cancel(t: _Task, force: bool, recursive: bool) -> None:
    try:
        ray.cancel(t.ref, force=force, recursive=recursive)
    except Exception as e:  # noqa: BLE001 - e.g. force on an actor task (ValueError)
        t.error = _error_text(e)
        if force:
            t.running = True
            # Ray refuses to force-cancel an actor task: it still gets the plain cancel.
            with contextlib.suppress(Exception):  # the first error is the one reported
                ray.cancel(t.ref, force=False, recursive=recursive)


def _poll_registry(tasks: Sequence[_Task], node_timeout: float, check_nodes: bool) -> None:
    """Mark ended the tasks (without a ref) whose code the registry says has returned, or, with check_nodes,
    whose node the cluster reports dead (its worker went with it)."""
    try:
        flags = registry_call("done", [t.task_id for t in tasks], timeout=node_timeout)
    except ClusterError as e:
        log.warning("procguard: %s", e)
        flags = [False] * len(tasks)
    live = _live_ids() if check_nodes else None
    for t, d in zip(tasks, flags, strict=True):
        t.ended = bool(d) or (live is not None and t.rec is not None and t.rec.node_id not in live)


def _wait_ended(tasks: Sequence[_Task], timeout: float, node_timeout: float) -> None:
    """Up to `timeout` seconds for the tasks to end: with a ref, its result is ready; without, the registry
    says its code returned (polled), or its node died."""
    deadline = time.monotonic() + timeout
    next_check = time.monotonic()
    while True:
        with_ref = [t for t in tasks if not t.ended and t.ref is not None]
        without = [t for t in tasks if not t.ended and t.ref is None]
        left = deadline - time.monotonic()
        if not with_ref and not without:
            return
        if with_ref:
            wait = max(0.0, min(left, POLL) if without else left)
            ready, _ = ray.wait(
                [t.ref for t in with_ref], num_returns=len(with_ref), timeout=wait, fetch_local=False
            )
            done = set(ready)
            for t in with_ref:
                t.ended = t.ref in done
        if without:
            check = time.monotonic() >= next_check
            if check:
                next_check = time.monotonic() + NODE_CHECK
            _poll_registry(without, node_timeout, check)
            if not with_ref and not all(t.ended for t in without):
                time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            return


def _force(tasks: Sequence[_Task], recursive: bool, node_timeout: float) -> None:
    """The tasks that did not end: force-cancelled (ref), or their worker killed by its agent (no ref)."""
    kill: list[_EndJob] = []
    for t in tasks:
        if t.ref is not None and not t.actor_task:
            _ray_cancel(t, True, recursive)
            t.state = "force-cancelled" if t.error is None else t.state
        elif t.actor_task:
            t.error = (
                "an actor task is not force-cancelled (that kills the actor's worker, and Ray refuses "
                "it): ray.kill the actor"
            )
            t.running = True
        elif t.rec is not None:
            try:
                claimed = registry_call("claim_kill", t.task_id, timeout=node_timeout)
            except ClusterError as e:
                t.error = str(e)
                t.running = True
                continue
            if claimed:
                kill.append((t, t.rec, t.rec.entries, True, True))
                t.state = "force-cancelled"
            else:
                t.ended = True  # its code returned meanwhile
    if kill:
        _end_trees(kill, 0.0, True, node_timeout)
        for t, rec, _e, _w, _k in kill:
            worker = [r for r in t.results if r.node_id == rec.node_id and r.pid == rec.worker_pid]
            t.running = not worker or not worker[-1].ok
    forced = [t for t in tasks if t.ref is not None and t.state == "force-cancelled"]
    if forced:
        # Ray kills the worker at once: its result is ready within moments (only reported here).
        ready, _ = ray.wait(
            [t.ref for t in forced], num_returns=len(forced), timeout=KILL_CONFIRM_TIMEOUT, fetch_local=False
        )
        for t in forced:
            t.running = t.ref not in set(ready)


def _late_entries(tasks: Sequence[_Task], grace: float, force: bool, node_timeout: float) -> None:
    """Forget each task in the registry; end what it recorded meanwhile (started during the cancel)."""
    try:
        reg = registry(timeout=node_timeout)
    except ClusterError as e:
        log.warning("procguard: %s", e)
        return
    late = _wait_all([reg.end_cancel.remote(t.task_id) for t in tasks], time.monotonic() + node_timeout)
    jobs: list[_EndJob] = []
    for t, v in zip(tasks, late, strict=True):
        if not isinstance(v, TaskRecord):
            continue
        known = {(e.node_id, e.pid, e.start_ticks) for e in (t.rec.entries if t.rec else ())}
        fresh = [e for e in v.entries if (e.node_id, e.pid, e.start_ticks) not in known]
        if fresh:
            jobs.append((t, v, fresh, False, False))
    _end_trees(jobs, grace, force, node_timeout)


def _cancel_all(
    items: Sequence[tuple[str, Any]], grace: float, force: bool, recursive: bool, node_timeout: float
) -> list[CancelReport]:
    """The whole cancel (see the module's doc) for (task id, ref or None) pairs, all tasks at once."""
    if grace < 0:
        raise ValueError(f"grace must be >= 0, not {grace}")
    reg = registry(timeout=node_timeout)
    recs = _wait_all([reg.begin_cancel.remote(tid) for tid, _r in items], time.monotonic() + node_timeout)
    tasks: list[_Task] = []
    for (tid, ref), rec in zip(items, recs, strict=True):
        if rec is not None and not isinstance(rec, TaskRecord):
            raise ClusterError(
                "procguard's registry on the head node: "
                + ("did not answer in time" if isinstance(rec, _Failed) else _error_text(rec))
            )
        tasks.append(_Task(tid, ref, rec))
    # 1. the process trees
    _end_trees(
        [
            (t, t.rec, t.rec.entries, t.rec.state in ("running", "cancelling"), False)
            for t in tasks
            if t.rec is not None
        ],
        grace,
        force,
        node_timeout,
    )
    # 2. the task itself
    live: list[_Task] = []
    for t in tasks:
        if t.rec is not None and t.rec.state == "finished":
            t.state, t.ended = "finished", True
        elif t.rec is None and t.ref is None:
            t.state, t.ended = "untracked", True
        else:
            live.append(t)
    for t in live:
        if t.ref is not None and not force:
            _ray_cancel(t, False, recursive)
    if not force:
        _wait_ended(live, grace, node_timeout)
    _force([t for t in live if not t.ended], recursive, node_timeout)
    # 3. what was started meanwhile
    _late_entries(tasks, grace, force, node_timeout)
    return [t.report() for t in tasks]


def cancel(
    ref: Any,
    grace: float = 5.0,
    force: bool = False,
    *,
    recursive: bool = False,
    node_timeout: float = NODE_TIMEOUT,
) -> CancelReport:
    """Cancel the task behind `ref`: every process tree it started ends on the node that owns it (SIGTERM,
    SIGKILL after `grace`; `force`: SIGKILL at once), then `ray.cancel(ref)`; a task that has not finished
    `grace` seconds later is force-cancelled (`ray.cancel(ref, force=True)` kills its worker); `force` skips
    that wait. `ray.get(ref)` raises soon after this returns, in every case but an actor task blocked in C code.

    A tracked task that returns because its child died reports TaskCancelledError to `ray.get`. The report
    says which happened (state) and lists each process's outcome with the node id its agent reported.

    `recursive` is off by default, unlike ray.cancel's: a recursive cancel also cancels the task's own calls to
    the registry actor that it makes while its child dies, and Ray then stalls that worker's later calls to
    the registry (30 s "waiting for seq_no", then failed), so the next tracked task on that worker hangs.
    Cancel a task's own Ray child tasks with ray.cancel on their refs."""
    if not ray.is_initialized():
        raise ClusterError("cancel() needs a connected driver (ray.init)")
    (report,) = _cancel_all([(ref.task_id().hex(), ref)], grace, force, recursive, node_timeout)
    return report


def cancel_refs(
    refs: Sequence[Any],
    grace: float = 5.0,
    force: bool = False,
    *,
    recursive: bool = False,
    node_timeout: float = NODE_TIMEOUT,
) -> list[CancelReport]:
    """cancel() for several refs at once (one grace for all)."""
    if not ray.is_initialized():
        raise ClusterError("cancel_refs() needs a connected driver (ray.init)")
    return _cancel_all([(r.task_id().hex(), r) for r in refs], grace, force, recursive, node_timeout)


TASK_ID_DIGITS = 2 * ray.TaskID.size()  # a full task id, in hex


def resolve_task_ids(task_ids: Sequence[str], records: Sequence[TaskRecord]) -> list[str]:
    """Full task ids for the user's: a full id (any case) stands for itself, tracked or not; a shorter one must
    be a prefix (4+ hex digits) of exactly one tracked task's id. ValueError (one line) names a bad one."""
    out: list[str] = []
    for raw in task_ids:
        tid = raw.strip().lower()
        if not tid or len(tid) > TASK_ID_DIGITS or any(c not in "0123456789abcdef" for c in tid):
            raise ValueError(f"invalid task id {raw!r} (up to {TASK_ID_DIGITS} hex digits)")
        if len(tid) == TASK_ID_DIGITS:
            out.append(tid)
            continue
        hits = [r.task_id for r in records if r.task_id.startswith(tid)]
        if len(tid) < 4 or len(hits) != 1:
            why = (
                "is too short (give 4+ hex digits)"
                if len(tid) < 4
                else (f"matches {len(hits)} tracked tasks" if hits else "matches no tracked task")
            )
            raise ValueError(f"task id {raw!r} {why}")
        out.append(hits[0])
    return list(dict.fromkeys(out))


def cancel_tasks(
    address: str | None,
    task_ids: Sequence[str],
    grace: float = 5.0,
    force: bool = False,
    *,
    node_timeout: float = NODE_TIMEOUT,
) -> list[CancelReport]:
    """The core of `procguard cancel --ray ADDRESS TASK_ID...`: cancel tracked tasks by id from any process
    (no refs: see the module's doc for how the task itself ends), all at once. Ids as resolve_task_ids takes
    them (ValueError names a bad one); one report per task, in the order given."""
    connect(address)
    ids = resolve_task_ids(task_ids, tracked_tasks(node_timeout=node_timeout))
    return _cancel_all([(tid, None) for tid in ids], grace, force, False, node_timeout)


def cancel_task_id(
    task_id: str,
    grace: float = 5.0,
    force: bool = False,
    address: str | None = None,
    *,
    node_timeout: float = NODE_TIMEOUT,
) -> CancelReport:
    """cancel_tasks() for one full task id (hex)."""
    connect(address)
    (report,) = _cancel_all([(task_id.lower(), None)], grace, force, False, node_timeout)
    return report


def cancel_job(
    job_id: str | None = None,
    grace: float = 5.0,
    force: bool = False,
    address: str | None = None,
    *,
    node_timeout: float = NODE_TIMEOUT,
) -> list[CancelReport]:
    """Cancel every tracked task of a job (default: this driver's job), all at once."""
    connect(address)
    job = job_id if job_id is not None else ray.get_runtime_context().get_job_id()
    recs = tracked_tasks(job_id=job, node_timeout=node_timeout)
    if not recs:
        return []
    return _cancel_all([(r.task_id, None) for r in recs], grace, force, False, node_timeout)


def cleanup_on_sigterm(grace: float = 2.0, *, node_timeout: float = NODE_TIMEOUT) -> Callable[[], None]:
    """On SIGTERM to this driver (what `ray job stop` sends), cancel every tracked task of this job (their
    process trees on their nodes, then each task that has not ended within `grace` has its worker killed),
    then hand over to the handler that was there (after ray.init, Ray's own, which exits; a SIGTERM that lands
    inside ray.get makes that exit status 1), or exit 143 if there was none. Call from the main thread after
    ray.init. Returns a function that puts the previous handler back.

    `ray job stop` SIGKILLs after RAY_JOB_STOP_WAIT_TIME_S (3 s by default): trees that ignore SIGTERM take
    `grace`, and a task that then does not end another `grace`, so keep 2 x grace below that."""
    if not ray.is_initialized():
        raise ClusterError("cleanup_on_sigterm() needs a connected driver (ray.init)")
    job = ray.get_runtime_context().get_job_id()
    prev = signal.getsignal(signal.SIGTERM)
    running = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if running.is_set():
            return
        running.set()
        try:
            reports = cancel_job(job, grace, node_timeout=node_timeout)
            n = sum(len(r.results) for r in reports)
            forced = sum(r.state == "force-cancelled" for r in reports)
            log.info(
                "procguard: SIGTERM: ended %d process(es) of %d tracked task(s), %d force-cancelled",
                n,
                len(reports),
                forced,
            )
        except Exception as e:  # noqa: BLE001 - exit anyway
            log.warning("procguard: SIGTERM clean-up failed: %s", e)
        if callable(prev):
            prev(signum, frame)
            return
        if prev == signal.SIG_IGN:
            running.clear()
            return
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, prev)

    return restore


__all__ = [
    "STATES",
    "CancelReport",
    "cancel",
    "cancel_job",
    "cancel_refs",
    "cancel_task_id",
    "cancel_tasks",
    "cleanup_on_sigterm",
    "resolve_task_ids",
]
