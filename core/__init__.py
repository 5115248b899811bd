"""procguard.core: the headless process-management API.

Everything a script needs is importable from here (``from procguard.core import guard, terminate``); the
module paths (``procguard.core.signals`` ...) keep working. Names load on first use, so a script pays only
for what it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that owns it (one owner per name)
_EXPORTS: dict[str, str] = {
    # process table
    "process_snapshot": "snapshot",
    "Snapshot": "snapshot",
    "Snapshotter": "snapshot",
    "Proc": "snapshot",
    "ProcId": "procid",
    # signals: targets, escalation, outcomes
    "Target": "signals",
    "terminate": "signals",
    "kill": "signals",
    "pause": "signals",
    "resume": "signals",
    "resolve": "signals",
    "Member": "signals",
    "SignalResult": "signals",
    "Outcome": "signals",
    "Progress": "signals",
    "summarize": "signals",
    "run_action": "signals",
    "CgroupError": "cgroups",
    # spawning and tracking
    "spawn": "spawn",
    "Spawned": "spawn",
    "SpawnError": "spawn",
    "track_subprocesses": "spawn",
    # locks
    "SingleInstanceLock": "locks",
    "AlreadyRunning": "locks",
    "LockError": "lockfile",
    "LockHolder": "lockfile",
    "held_locks": "held_locks",
    "HeldLock": "held_locks",
    "clean_stale_locks": "held_locks",
    # duplicates and guard
    "find_duplicates": "duplicates",
    "terminate_duplicates": "duplicates",
    "DuplicateGroup": "duplicates",
    "DuplicateReport": "duplicates",
    "Instance": "duplicates",
    "TerminateReport": "duplicates",
    "explain": "duplicates",
    "Explanation": "duplicates",
    "guard": "guard",
    "DuplicateRunning": "guard",
    # GPU
    "gpu_snapshot": "gpu",
    "GpuSnapshot": "gpu",
    "tree_gpu_memory": "gpu",
    "orphaned_gpu_processes": "gpu",
    "flush_gpu_caches": "flush",
    "request_flush": "flush",
    "FlushResult": "flush",
    "FlushError": "flush",
    "FlushTimeout": "flush",
    "NotGuarded": "flush",
    # text from other processes
    "safe": "sanitize",
}

__all__ = [
    "AlreadyRunning",
    "CgroupError",
    "DuplicateGroup",
    "DuplicateReport",
    "DuplicateRunning",
    "Explanation",
    "FlushError",
    "FlushResult",
    "FlushTimeout",
    "GpuSnapshot",
    "HeldLock",
    "Instance",
    "LockError",
    "LockHolder",
    "Member",
    "NotGuarded",
    "Outcome",
    "Proc",
    "ProcId",
    "Progress",
    "SignalResult",
    "SingleInstanceLock",
    "Snapshot",
    "Snapshotter",
    "SpawnError",
    "Spawned",
    "Target",
    "TerminateReport",
    "clean_stale_locks",
    "explain",
    "find_duplicates",
    "flush_gpu_caches",
    "gpu_snapshot",
    "guard",
    "held_locks",
    "kill",
    "orphaned_gpu_processes",
    "pause",
    "process_snapshot",
    "request_flush",
    "resolve",
    "resume",
    "run_action",
    "safe",
    "spawn",
    "summarize",
    "terminate",
    "terminate_duplicates",
    "track_subprocesses",
    "tree_gpu_memory",
]

# Three public functions share their name with the module that holds them; importing a module sets the
# package attribute to the module, so these are bound now, for good (``procguard.core.guard`` is the
# function; the modules stay importable by their full path: ``from procguard.core.guard import Guard``).
from procguard.core.guard import guard  # noqa: E402
from procguard.core.held_locks import held_locks  # noqa: E402
from procguard.core.spawn import spawn  # noqa: E402


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'procguard.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"procguard.core.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load lazily above
    from procguard.core.cgroups import CgroupError
    from procguard.core.duplicates import (
        DuplicateGroup,
        DuplicateReport,
        Explanation,
        Instance,
        TerminateReport,
        explain,
        find_duplicates,
        terminate_duplicates,
    )
    from procguard.core.flush import (
        FlushError,
        FlushResult,
        FlushTimeout,
        NotGuarded,
        flush_gpu_caches,
        request_flush,
    )
    from procguard.core.gpu import GpuSnapshot, gpu_snapshot, orphaned_gpu_processes, tree_gpu_memory
    from procguard.core.guard import DuplicateRunning
    from procguard.core.held_locks import HeldLock, clean_stale_locks
    from procguard.core.lockfile import LockError, LockHolder
    from procguard.core.locks import AlreadyRunning, SingleInstanceLock
    from procguard.core.procid import ProcId
    from procguard.core.sanitize import safe
    from procguard.core.signals import (
        Member,
        Outcome,
        Progress,
        SignalResult,
        Target,
        kill,
        pause,
        resolve,
        resume,
        run_action,
        summarize,
        terminate,
    )
    from procguard.core.snapshot import Proc, Snapshot, Snapshotter, process_snapshot
    from procguard.core.spawn import Spawned, SpawnError, track_subprocesses
