"""Inside Ray tasks and actor methods: record the process trees the task starts, in the registry actor.

    @ray.remote
    @tracked
    def train(cfg):
        subprocess.run(["torchrun", ...])          # recorded: node id, pid, pgid, create time

or `with track_task(): ...` inside the function. Every `subprocess.Popen` the task's thread starts (through
core/spawn.py's Popen hook) is recorded at once; when the task ends, whatever it leaves running below its
worker is recorded too. `cancel(ref)` on the driver ends all of it on the owning nodes.

State lives in module-level functions and objects created inside the worker (a closure over a
threading.local would not pickle with the task).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import ray
from ray.exceptions import TaskCancelledError

from procguard.core import procfs
from procguard.core.cluster import nodeops
from procguard.core.cluster.nodeops import TaskEntry, TaskRecord
from procguard.core.spawn import on_popen

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

DOOMED_WAIT = 30.0  # seconds a task whose worker a canceller is killing waits for that kill


class TaskTracker:
    """What a track_task() block has recorded so far (on this node, in this thread)."""

    def __init__(self, task_id: str, job_id: str, node_id: str, grace: float) -> None:
        self.task_id = task_id
        self.job_id = job_id
        self.node_id = node_id
        self.grace = grace
        self.entries: list[TaskEntry] = []
        self.cancelled = False

    def _on_popen(self, popen: subprocess.Popen[Any]) -> None:
        from procguard.core.cluster.api import registry

        entry = nodeops.entry_for(self.node_id, popen.pid)
        if entry is None:
            return  # already exited: nothing to end later
        self.entries.append(entry)
        try:
            cancelling = ray.get(registry().add_entries.remote(self.task_id, [entry]))
        except Exception as e:  # noqa: BLE001 - tracking must never break the task's own work
            log.warning("procguard: could not record pid %d of task %s: %s", popen.pid, self.task_id, e)
            return
        if cancelling:
            # Started while a cancel runs: the agent may already have passed; end it here, on its node.
            self.cancelled = True
            nodeops.end_task([entry], grace=self.grace)


def _context() -> tuple[str, str, str, str, str | None]:
    if not ray.is_initialized():
        raise RuntimeError("track_task() runs inside a Ray task or actor method")
    ctx = ray.get_runtime_context()
    task_id = ctx.get_task_id()
    if task_id is None:
        raise RuntimeError("track_task() runs inside a Ray task or actor method, not on the driver")
    get_name = getattr(ctx, "get_task_name", None)
    name = (get_name() or "") if get_name is not None else ""
    return task_id, ctx.get_job_id(), ctx.get_node_id(), name, ctx.get_actor_id()


def _finish(reg: Any, task_id: str, left: list[TaskEntry]) -> bool:
    """Tell the registry the task's code ended; True when it was cancelled meanwhile."""
    from procguard.core.cluster._actors import DOOMED

    answer = ray.get(reg.finish_task.remote(task_id, left))
    if answer == DOOMED:
        # The canceller found this task still running after its grace and is SIGKILLing this worker right now:
        # returning would let the worker take up another task under that kill.
        log.warning("procguard: task %s was force-cancelled: waiting for its worker to be killed", task_id)
        time.sleep(DOOMED_WAIT)
    return bool(answer)


@contextlib.contextmanager
def track_task(grace: float = 5.0) -> Iterator[TaskTracker]:
    """Record the processes this task starts (this thread's Popens, and at the end what is left below the
    worker) in the registry. A block that ends after a cancel began raises TaskCancelledError, so the task
    counts as cancelled even when it returned because its child was killed."""
    from procguard.core.cluster.api import registry

    task_id, job_id, node_id, name, actor_id = _context()
    me = os.getpid()
    st = procfs.read_stat(me)
    rec = TaskRecord(
        task_id,
        job_id,
        name,
        node_id,
        me,
        st.start_ticks if st else 0,
        time.time(),
        started_ticks=procfs.now_ticks(),
        actor_id=actor_id,
    )
    reg = registry()
    tracker = TaskTracker(task_id, job_id, node_id, grace)
    if ray.get(reg.register_task.remote(rec)):
        ray.get(reg.finish_task.remote(task_id, []))
        raise TaskCancelledError(error_message="cancelled by procguard before it started")
    failed: BaseException | None = None
    try:
        with on_popen(tracker._on_popen):
            yield tracker
    except BaseException as e:
        failed = e
        raise
    finally:
        try:
            left = nodeops.leftovers(node_id, me, tracker.entries, rec.started_ticks)
            cancelled = _finish(reg, task_id, left) or tracker.cancelled
        except Exception as e:  # noqa: BLE001 - never mask the task's own outcome
            log.warning("procguard: could not finish task %s in the registry: %s", task_id, e)
            cancelled = False
        if cancelled and not isinstance(failed, TaskCancelledError):
            raise TaskCancelledError(error_message="cancelled by procguard") from failed


def tracked(fn: F | None = None, *, grace: float = 5.0) -> Any:
    """Decorator for a Ray task function or actor method (put it under `@ray.remote`): runs the body in
    track_task(). `@tracked` or `@tracked(grace=10)`."""
    if fn is None:
        return functools.partial(tracked, grace=grace)
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            "tracked() needs a regular function: the Popen hook is per thread, and an async "
            "actor's tasks share one"
        )

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with track_task(grace=grace):
            return fn(*args, **kwargs)

    return wrapper


__all__ = ["TaskTracker", "track_task", "tracked"]
