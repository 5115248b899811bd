"""Ray cluster mode: track and cancel task subprocess trees across nodes, and see and act on every node's
processes (the `procguard[ray]` extra; ray is imported only in this package).

Worker side: `tracked` / `track_task` record the process trees a task starts in a registry actor on the
head node. Driver side: `cancel(ref)` ends them on the node that owns them (a num_cpus=0 agent actor pinned
per node), then `ray.cancel`; `cleanup_on_sigterm()` does the same for the whole job when the driver gets
SIGTERM; `cluster_snapshot`, `cluster_signal`, `cluster_duplicates`, `cluster_locks`, `cluster_gpu` give
the cluster-wide view and routed actions, with Ray's own processes protected on every node.
"""

from __future__ import annotations

try:
    import ray  # noqa: F401
except ImportError as _e:
    raise ImportError("procguard.core.cluster needs Ray: install the extra with "
                      "pip install 'procguard[ray]'") from _e

from procguard.core.cluster.api import (  # noqa: E402
    CancelReport,
    ClusterError,
    NodeInfo,
    NodeMember,
    NodeResult,
    NodeSignalResult,
    NodeSnapshot,
    RoutingError,
    cancel,
    cancel_job,
    cancel_task_id,
    cleanup_on_sigterm,
    cluster_duplicates,
    cluster_gpu,
    cluster_locks,
    cluster_resolve,
    cluster_signal,
    cluster_signal_many,
    cluster_snapshot,
    cluster_targets,
    connect,
    find_node,
    node_call,
    nodes,
    shutdown_agents,
    tracked_tasks,
)
from procguard.core.cluster.nodeops import TaskEntry, TaskRecord  # noqa: E402
from procguard.core.cluster.protect import ray_process_kind  # noqa: E402
from procguard.core.cluster.tracking import TaskTracker, track_task, tracked  # noqa: E402

__all__ = [
    "CancelReport", "ClusterError", "NodeInfo", "NodeMember", "NodeResult", "NodeSignalResult", "NodeSnapshot",
    "RoutingError", "TaskEntry", "TaskRecord", "TaskTracker", "cancel", "cancel_job", "cancel_task_id",
    "cleanup_on_sigterm", "cluster_duplicates", "cluster_gpu", "cluster_locks", "cluster_resolve",
    "cluster_signal", "cluster_signal_many", "cluster_snapshot", "cluster_targets", "connect", "find_node",
    "node_call", "nodes", "ray_process_kind", "shutdown_agents", "track_task", "tracked", "tracked_tasks",
]
