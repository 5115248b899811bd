"""Ray cluster mode: track and cancel task subprocess trees across nodes, and see and act on every node's
processes (the `procguard[ray]` extra; ray is imported only in this package).

Worker side: `tracked` / `track_task` record the process trees a task starts in a registry actor on the
head node. Driver side: `cancel(ref)` ends them on the node that owns them (a num_cpus=0 agent actor pinned
per node), then the task itself (`ray.cancel`, forced after `grace`); `cancel_tasks(address, ids)` does the
same from any process by task id; `cleanup_on_sigterm()` does it for the whole job when the driver gets
SIGTERM; `cluster_snapshot` (with each process's owning task: `owners`), `signal_nodes`, `cluster_signal`,
`cluster_duplicates`, `cluster_locks`, `cluster_gpu` give the cluster-wide view and routed actions, with
Ray's own processes protected on every node. Every node gets a timeout of its own (`node_timeout`): one
that fails is reported by name and the others' answers still come back.
"""

from __future__ import annotations

try:
    import ray  # noqa: F401
except ImportError as _e:
    raise ImportError(
        "procguard.core.cluster needs Ray: install the extra with pip install 'procguard[ray]'"
    ) from _e

from procguard.core.cluster.api import (  # noqa: E402
    NODE_TIMEOUT,
    ClusterError,
    NodeFailure,
    NodeFailures,
    NodeInfo,
    NodeMember,
    NodeResult,
    NodeSignalResult,
    NodeSnapshot,
    RoutingError,
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
    resolve_on_nodes,
    shutdown_agents,
    signal_nodes,
    targets_on_nodes,
    task_owners,
    task_processes,
    tracked_tasks,
    unreachable_result,
)
from procguard.core.cluster.cancel import (  # noqa: E402
    CancelReport,
    cancel,
    cancel_job,
    cancel_refs,
    cancel_task_id,
    cancel_tasks,
    cleanup_on_sigterm,
    resolve_task_ids,
)
from procguard.core.cluster.nodeops import TaskEntry, TaskOwner, TaskRecord  # noqa: E402
from procguard.core.cluster.rayprocs import ray_process_kind  # noqa: E402
from procguard.core.cluster.tracking import TaskTracker, track_task, tracked  # noqa: E402

__all__ = [
    "NODE_TIMEOUT",
    "CancelReport",
    "ClusterError",
    "NodeFailure",
    "NodeFailures",
    "NodeInfo",
    "NodeMember",
    "NodeResult",
    "NodeSignalResult",
    "NodeSnapshot",
    "RoutingError",
    "TaskEntry",
    "TaskOwner",
    "TaskRecord",
    "TaskTracker",
    "cancel",
    "cancel_job",
    "cancel_refs",
    "cancel_task_id",
    "cancel_tasks",
    "cleanup_on_sigterm",
    "cluster_duplicates",
    "cluster_gpu",
    "cluster_locks",
    "cluster_resolve",
    "cluster_signal",
    "cluster_signal_many",
    "cluster_snapshot",
    "cluster_targets",
    "connect",
    "find_node",
    "node_call",
    "nodes",
    "ray_process_kind",
    "resolve_on_nodes",
    "resolve_task_ids",
    "shutdown_agents",
    "signal_nodes",
    "targets_on_nodes",
    "task_owners",
    "task_processes",
    "track_task",
    "tracked",
    "tracked_tasks",
    "unreachable_result",
]
