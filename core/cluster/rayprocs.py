"""Ray's own processes, told apart by command line, and how targets are cut so they are never swept up.

On every node the core's protections hold (pid 1, kernel threads, the acting process and its ancestors).
On top of that, a Ray system process (raylet, GCS, the dashboard and its agents, log monitor, autoscaler
monitor, workers titled `ray::...`) is refused when a group or tree target would cover it; it is acted on
only when named on its own by pid (`Target.pid`). Nothing here imports ray.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from procguard.core.signals import Member, Target, resolve
from procguard.core.snapshot import Proc, Snapshot
from procguard.core.views import ancestors, children, group_members, tree

# Python entry points of Ray's services, by their path inside the ray package.
_RAY_SCRIPTS: dict[str, str] = {
    "ray/_private/workers/default_worker.py": "worker",
    "ray/_private/workers/setup_worker.py": "worker",
    "ray/_private/log_monitor.py": "log_monitor",
    "ray/autoscaler/_private/monitor.py": "autoscaler monitor",
    "ray/dashboard/dashboard.py": "dashboard",
    "ray/dashboard/agent.py": "dashboard agent",
    "ray/_private/runtime_env/agent/main.py": "runtime env agent",
    "ray/_private/ray_process_reaper.py": "process reaper",
    "ray/util/client/server/__main__.py": "client server",
    "ray/util/client/server/server.py": "client server",
    "ray/_private/ray_client_microbenchmark.py": "client server",
}
_RAY_MODULES: dict[str, str] = {
    "ray.util.client.server": "client server",
    "ray.dashboard.dashboard": "dashboard",
    "ray.dashboard.agent": "dashboard agent",
}
# Native services, by executable name; the path must lie inside a ray package (ray/core/src/ray/...).
_RAY_BINARIES: dict[str, str] = {
    "raylet": "raylet",
    "gcs_server": "gcs_server",
    "plasma_store_server": "plasma store",
}


def ray_process_kind(cmdline: Sequence[str]) -> str | None:
    """What part of Ray this command line is ("raylet", "gcs_server", "worker (ray::IDLE)"...), or None."""
    if not cmdline:
        return None
    first = cmdline[0]
    if first.startswith("ray::"):
        return f"worker ({first.split()[0]})"
    base = os.path.basename(first)
    if base in _RAY_BINARIES and "/ray/" in first.replace(os.sep, "/"):
        return _RAY_BINARIES[base]
    for i, arg in enumerate(cmdline[:4]):
        a = arg.replace(os.sep, "/")
        for tail, kind in _RAY_SCRIPTS.items():
            if a == tail or a.endswith("/" + tail):
                return kind
        if arg == "-m" and i + 1 < len(cmdline) and cmdline[i + 1] in _RAY_MODULES:
            return _RAY_MODULES[cmdline[i + 1]]
        if os.path.basename(a) == "ray" and i + 1 < len(cmdline) and cmdline[i + 1] == "start" and i <= 1:
            return "ray start"
    return None


def ray_kinds(snap: Snapshot) -> dict[int, str]:
    """pid -> Ray kind for every Ray system process in the snapshot."""
    out: dict[int, str] = {}
    for p in snap:
        kind = ray_process_kind(p.cmdline)
        if kind is not None:
            out[p.pid] = kind
    return out


def ray_protection_reason(pid: int, kind: str) -> str:
    return f"pid {pid} is Ray's {kind} (name it alone by pid to act on it)"


def _has_ray(procs: Iterable[Proc], ray: dict[int, str]) -> bool:
    return any(p.pid in ray for p in procs)


def _ray_free_subtrees(snap: Snapshot, pid: int, ray: dict[int, str], out: list[Target]) -> None:
    """Cover the tree at pid without its Ray processes: whole subtrees where possible, single pids above.
    Depth first, children in the snapshot's order; iterative, so a deep chain can't hit the recursion limit."""
    inside = {p.pid for p in tree(snap, pid)}
    # The members with a Ray process at or below them: their trees can't be handed over whole.
    above_ray: set[int] = set()
    for r in ray:
        if r in inside:
            above_ray.add(r)
            for a in ancestors(snap, r):
                if a.pid not in inside or a.pid in above_ray:
                    break
                above_ray.add(a.pid)
    stack = [pid] if inside else []
    while stack:
        p = stack.pop()
        if p not in above_ray:
            out.append(Target.tree(p))
            continue
        if p not in ray:
            out.append(Target.pid(p))
        stack.extend(c.pid for c in reversed(children(snap, p)))


def plan_targets(
    targets: Sequence[Target], snap: Snapshot, ray: dict[int, str] | None = None
) -> tuple[list[Target], list[Member]]:
    """Split targets into what may be signalled and the Ray processes refused.

    Returns (targets to hand to the core, refused members). Targets that cover no Ray process come back
    unchanged (the core keeps its rescans and killpg for them); a group that holds one is turned into its
    other members by pid, a tree into its Ray-free subtrees.
    """
    ray = ray_kinds(snap) if ray is None else ray
    explicit = {t.id for t in targets if t.kind == "pid"}
    members = resolve(list(targets), snap)
    swept = {m.pid: ray[m.pid] for m in members if m.pid in ray and m.pid not in explicit and not m.protected}
    if not swept:
        return list(targets), []
    refused = [
        Member.of(snap[pid], _covering(targets, snap, pid), ray_protection_reason(pid, kind))
        for pid, kind in swept.items()
    ]
    out: list[Target] = []
    for t in targets:
        if t.kind == "pid":
            out.append(t)
        elif t.kind == "group":
            ms = group_members(snap, t.id)
            if _has_ray(ms, swept):
                out.extend(Target.pid(p.pid) for p in ms if p.pid not in swept)
            else:
                out.append(t)
        else:
            _ray_free_subtrees(snap, t.id, swept, out)
    return out, refused


def _covering(targets: Sequence[Target], snap: Snapshot, pid: int) -> Target:
    for t in targets:
        if t.kind == "group" and snap[pid].pgid == t.id:
            return t
        if t.kind == "tree" and any(p.pid == pid for p in tree(snap, t.id)):
            return t
    return Target.pid(pid)


__all__ = ["plan_targets", "ray_kinds", "ray_process_kind", "ray_protection_reason"]
