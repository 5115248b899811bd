"""The two Ray actors: the task registry (one, on the head node) and the node agent (one per node).

Both are detached named actors in the `procguard` namespace, so they outlive the driver that created them
(a later `procguard ps --ray` finds them at once) and any driver can reach them by name.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import ray

from procguard.core import signals
from procguard.core.cluster import nodeops
from procguard.core.cluster.nodeops import TaskEntry, TaskRecord
from procguard.core.signals import Member, SignalResult, Target

NAMESPACE = "procguard"
REGISTRY_NAME = "procguard-registry"
AGENT_PREFIX = "procguard-agent-"
PROTOCOL = 5  # bumped when the agents' or the registry's methods change: an older detached one is replaced
_MAX_FINISHED = 10_000
_MAX_CANCELLED = 10_000

# finish_task's answers to the tracker in the task.
GO_ON = ""  # not cancelled: the task's own outcome stands
CANCELLED = "cancelled"  # raise TaskCancelledError
DOOMED = "doomed"  # a canceller is killing this worker now: wait for it (never take up another task)


class Registry:
    """Tracked tasks and the processes they started, by task id (hex). Calls run one at a time."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskRecord] = {}
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._cancelled: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._done: set[str] = set()  # cancelling, and the task's code has returned or raised
        self._killing: set[str] = set()  # cancelling, and a canceller is killing its worker

    def ping(self) -> tuple[str, int, int]:
        return ray.get_runtime_context().get_node_id(), os.getpid(), PROTOCOL

    def register_task(self, rec: TaskRecord) -> bool:
        """Returns True when the task was cancelled before it got here."""
        self._tasks[rec.task_id] = rec
        return rec.task_id in self._cancelled

    def add_entries(self, task_id: str, entries: Sequence[TaskEntry]) -> bool:
        """Record processes; returns True when the task is being cancelled (the caller ends them itself)."""
        rec = self._tasks.get(task_id)
        if rec is None:
            return task_id in self._cancelled
        self._tasks[task_id] = replace(rec, entries=rec.entries + tuple(entries))
        return rec.state == "cancelling" or task_id in self._cancelled

    def finish_task(self, task_id: str, left: Sequence[TaskEntry]) -> str:
        """The task's code returned or raised: GO_ON, CANCELLED (cancelled meanwhile), or DOOMED (its worker is
        being killed: the caller waits for that, so the worker never starts another task under the kill)."""
        rec = self._tasks.get(task_id)
        cancelled = task_id in self._cancelled
        if rec is None:
            return CANCELLED if cancelled else GO_ON
        if rec.state == "cancelling":
            # The cancel under way picks these up when it ends (end_cancel).
            self._tasks[task_id] = replace(rec, entries=rec.entries + tuple(left))
            self._done.add(task_id)
            return DOOMED if task_id in self._killing else CANCELLED
        if cancelled or not left:
            self._tasks.pop(task_id, None)
            return CANCELLED if cancelled else GO_ON
        self._tasks[task_id] = replace(rec, state="finished", entries=tuple(left))
        self._finished[task_id] = None
        while len(self._finished) > _MAX_FINISHED:
            old, _ = self._finished.popitem(last=False)
            self._tasks.pop(old, None)
        return GO_ON

    def begin_cancel(self, task_id: str) -> TaskRecord | None:
        """Mark the task cancelling (a running task that returns now reports itself cancelled)."""
        self._cancelled[task_id] = None
        while len(self._cancelled) > _MAX_CANCELLED:
            self._cancelled.popitem(last=False)
        rec = self._tasks.get(task_id)
        if rec is None:
            return None
        was = rec.state
        self._tasks[task_id] = replace(rec, state="cancelling")
        return replace(rec, state=was)

    def done(self, task_ids: Sequence[str]) -> list[bool]:
        """For each task being cancelled: has its code returned or raised (or is it not tracked at all)?"""
        return [t in self._done or t not in self._tasks for t in task_ids]

    def claim_kill(self, task_id: str) -> bool:
        """Before a canceller kills the worker of a task that did not end within its grace: True when the task
        is still running its code (from now on it cannot return into another task: see DOOMED)."""
        rec = self._tasks.get(task_id)
        if rec is None or rec.state != "cancelling" or task_id in self._done:
            return False
        self._killing.add(task_id)
        return True

    def end_cancel(self, task_id: str) -> TaskRecord | None:
        """Forget the task; returns what was recorded meanwhile (processes started during the cancel)."""
        self._finished.pop(task_id, None)
        self._done.discard(task_id)
        self._killing.discard(task_id)
        return self._tasks.pop(task_id, None)

    def tasks(self, job_id: str | None = None) -> list[TaskRecord]:
        return [r for r in self._tasks.values() if job_id is None or r.job_id == job_id]

    def get(self, task_id: str) -> TaskRecord | None:
        return self._tasks.get(task_id)


class NodeAgent:
    """Acts on its own node only (pinned there with a hard node-affinity). Every answer carries the node id
    the agent itself sees, so the caller can check where the work ran."""

    def __init__(self) -> None:
        self.node_id = ray.get_runtime_context().get_node_id()

    def ping(self) -> tuple[str, int, int]:
        return self.node_id, os.getpid(), PROTOCOL

    def snapshot(self) -> tuple[str, Any]:
        return self.node_id, nodeops.take_snapshot()

    def targets(self, pids: Sequence[int], scope: signals.Scope) -> tuple[str, list[Target] | str]:
        snap = nodeops.process_snapshot()
        try:
            return self.node_id, signals.build_targets(pids, scope, snap)
        except ValueError as e:
            return self.node_id, str(e)

    def resolve(self, targets: Sequence[Target]) -> tuple[str, list[Member]]:
        return self.node_id, nodeops.resolve(targets)

    def act(
        self, action: str, targets: Sequence[Target], grace: float, expect: dict[int, int] | None = None
    ) -> tuple[str, list[SignalResult]]:
        return self.node_id, nodeops.act(action, targets, grace, expect=expect)

    def end_task(
        self,
        entries: Sequence[TaskEntry],
        worker_pid: int,
        worker_start_ticks: int,
        grace: float,
        force: bool,
        since_ticks: int = 0,
        kill_worker: bool = False,
    ) -> tuple[str, list[SignalResult]]:
        mine = [e for e in entries if e.node_id == self.node_id]
        return self.node_id, nodeops.end_task(
            mine, worker_pid, worker_start_ticks, grace, force, since_ticks, kill_worker
        )

    def call(self, fn: str, kwargs: dict[str, Any]) -> tuple[str, Any]:
        """Node-local calls into the core: duplicates, locks, gpu reports; proc_extra, flush,
        terminate_duplicates, clean_stale_locks (for the app)."""
        if fn == "duplicates":
            from procguard.core import duplicates

            value: Any = duplicates.duplicate_report(**kwargs)
        elif fn == "locks":
            from procguard.core.held_locks import list_locks

            value = list_locks(**kwargs)
        elif fn == "gpu":
            from procguard.core import gpu

            value = gpu.gpu_snapshot(**kwargs)
        elif fn == "proc_extra":
            from procguard.core import procfs
            from procguard.core.identity import read_relevant_env

            env = read_relevant_env(kwargs["pid"])  # a read-only mapping: sent as a dict (it pickles)
            value = (procfs.read_cwd(kwargs["pid"]), dict(env) if env is not None else None)
        elif fn == "flush":
            from procguard.core import flush

            try:
                value = flush.request_flush(kwargs["pid"], timeout=kwargs.get("timeout", 10.0)).message
            except Exception as e:  # noqa: BLE001 - NotGuarded, FlushTimeout...: the answer is the message
                value = str(e) or type(e).__name__
        elif fn == "terminate_duplicates":
            from procguard.core import duplicates

            value = duplicates.terminate_duplicates(**kwargs)
        elif fn == "clean_stale_locks":
            from procguard.core.held_locks import clean_stale_locks

            value = clean_stale_locks(**kwargs)
        else:
            raise ValueError(f"unknown node report {fn!r}")
        return self.node_id, value


RegistryActor = ray.remote(num_cpus=0, max_restarts=-1)(Registry)
# Threaded: a terminate waiting out its grace must not hold up a snapshot or another node's request.
# Ray's stubs type the options form of ray.remote for tasks only: max_concurrency, an actor option Ray accepts
# at run time, matches none of its overloads.
AgentActor = ray.remote(num_cpus=0, max_concurrency=8, max_restarts=-1)(NodeAgent)  # type: ignore[call-overload]
