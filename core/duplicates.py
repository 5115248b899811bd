"""Duplicate runs of one script: finding them, and ending all but one.

A *run* is what a person started: one Python process, or every rank of one distributed launch (the processes
under one launcher, or sharing TORCHELASTIC_RUN_ID, or MASTER_ADDR+MASTER_PORT). Two or more independent runs of
one script (see identity.py) form a duplicate group. Never duplicates:

- workers: a process with an ancestor running the same script (forked/spawned DataLoader workers, subprocesses);
- ranks of one launch (collapsed into one run, whose pid is the launcher when they share one);
- batch-scheduler jobs (SLURM_JOB_ID / PBS_JOBID / LSB_JOBID in the environment): listed apart as
  scheduler-managed, never grouped nor terminated.

The grouping itself is `build_report`, a pure function of the process table and three lookups (identity,
environment, cwd); `duplicate_report`/`find_duplicates` feed it from /proc through a cached IdentityResolver.
Environments are only read for processes that could be duplicates (same script as another run), and cached.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from procguard.core import procfs
from procguard.core.identity import (
    IdentityResolver,
    ScriptIdentity,
    identity_for_command,
    identity_for_path,
    launcher_kind,
)
from procguard.core.pyproc import parse_python_cmdline
from procguard.core.snapshot import Proc, Snapshot, process_snapshot

if TYPE_CHECKING:
    from procguard.core.signals import Member, ProgressFn, SignalResult

__all__ = [
    "Instance",
    "DuplicateGroup",
    "ScheduledInstance",
    "DuplicateReport",
    "TerminateReport",
    "RunCheck",
    "build_report",
    "duplicate_report",
    "find_duplicates",
    "find_instances",
    "enrich",
    "terminate_duplicates",
    "check_before_run",
    "launch_context",
    "SCHEDULER_VARS",
    "DISTRIBUTED_VARS",
]

# Environment variables that put a process under a batch scheduler, and that mark a rank of a distributed run.
SCHEDULER_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
DISTRIBUTED_VARS = ("TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


@dataclass(frozen=True)
class Instance:
    """One independent run of a script. For a distributed run, pid is its launcher (or its oldest rank when
    the ranks only share an environment) and `members` lists the script processes (ranks) it covers."""

    pid: int
    create_time: float
    cwd: str | None
    args: tuple[str, ...]  # the script's arguments (of the oldest rank for a distributed run)
    username: str
    cmdline: tuple[str, ...]  # of `pid`: the launcher's for a launched run
    gpu_memory: int | None = None  # bytes over the run's whole tree; filled by enrich()
    locks: tuple[str, ...] = ()  # lock files held by any process of the run; filled by enrich()
    uid: int = -1
    start_ticks: int = 0
    members: tuple[int, ...] = ()  # script processes of this run (just pid for a plain run)
    roots: tuple[int, ...] = ()  # tree roots that together hold the whole run (what terminate ends)
    launcher: str | None = None  # "torchrun", "mpirun"... when pid is a launcher

    @property
    def command(self) -> str:
        return " ".join(self.cmdline)


@dataclass(frozen=True)
class DuplicateGroup:
    identity: ScriptIdentity
    instances: tuple[Instance, ...]  # oldest first


@dataclass(frozen=True)
class ScheduledInstance:
    """A run that belongs to a batch scheduler job (never a duplicate)."""

    identity: ScriptIdentity
    instance: Instance
    scheduler: str  # "slurm" | "pbs" | "lsf"
    job_id: str


@dataclass(frozen=True)
class DuplicateReport:
    groups: tuple[DuplicateGroup, ...]  # sorted by script display
    # Runs of scripts that run more than once, left out of the groups because a scheduler owns them.
    scheduler_managed: tuple[ScheduledInstance, ...] = ()
    # Distributed runs (more than one rank) of scripts that run more than once, as collapsed into one instance.
    distributed: tuple[Instance, ...] = ()


class _Run:
    __slots__ = ("members", "launcher_pid")

    def __init__(self, members: list[Proc], launcher_pid: int | None) -> None:
        self.members = members
        self.launcher_pid = launcher_pid


class _Lineage:
    """What the ancestors of each process hold: the script keys they run and the outermost launcher.

    Memoised from the top down, so one pass costs O(processes) however deep and wide the trees are (walking
    every instance's ancestors twice cost more than all the identity lookups of a cached pass)."""

    __slots__ = ("_procs", "_key_of", "_memo", "_launcher")

    _EMPTY: tuple[frozenset[str], int | None] = (frozenset(), None)

    def __init__(self, procs: Mapping[int, Proc], key_of: Mapping[int, str]) -> None:
        self._procs = procs
        self._key_of = key_of
        self._memo: dict[int, tuple[frozenset[str], int | None]] = {}
        self._launcher: dict[int, bool] = {}

    def _is_launcher(self, p: Proc) -> bool:
        v = self._launcher.get(p.pid)
        if v is None:
            v = self._launcher[p.pid] = launcher_kind(p) is not None
        return v

    def _extend(self, info: tuple[frozenset[str], int | None], anc: Proc) -> tuple[frozenset[str], int | None]:
        keys, outer = info
        k = self._key_of.get(anc.pid)
        if k is not None and k not in keys:
            keys = keys | {k}
        if outer is None and self._is_launcher(anc):
            outer = anc.pid
        return keys, outer

    def of(self, pid: int) -> tuple[frozenset[str], int | None]:
        """(script keys run by pid's ancestors, pid of the outermost launcher above pid or None)."""
        memo, procs = self._memo, self._procs
        found = memo.get(pid)
        if found is not None:
            return found
        path: list[Proc] = []
        seen: set[int] = set()
        p = procs.get(pid)
        info = self._EMPTY
        while p is not None:
            path.append(p)
            seen.add(p.pid)
            parent = procs.get(p.ppid)
            if parent is None or parent.pid in seen:
                break
            above = memo.get(parent.pid)
            if above is not None:
                info = self._extend(above, parent)
                break
            p = parent
        # path[-1]'s ancestors are summed up in info; walk back down.
        for i in range(len(path) - 1, -1, -1):
            if i < len(path) - 1:
                info = self._extend(info, path[i + 1])
            memo[path[i].pid] = info
        return memo.get(pid, self._EMPTY)


def _age_key(p: Proc) -> tuple[float, int]:
    return (p.create_time, p.pid)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _scheduler_of(env: Mapping[str, str] | None) -> tuple[str, str] | None:
    if not env:
        return None
    for var, name in (("SLURM_JOB_ID", "slurm"), ("PBS_JOBID", "pbs"), ("LSB_JOBID", "lsf")):
        v = env.get(var)
        if v:
            return name, v
    return None


def build_report(
    procs: Mapping[int, Proc],
    identity_of: Callable[[Proc], ScriptIdentity | None],
    env_of: Callable[[Proc], Mapping[str, str] | None],
    cwd_of: Callable[[Proc], str | None] = lambda p: None,
    *,
    script: ScriptIdentity | None = None,
    min_instances: int = 2,
) -> DuplicateReport:
    """Group the runs in `procs` by script. Pure apart from what the three lookups do.

    `identity_of` is asked about every Python process, `env_of` only about processes of scripts with more than
    one candidate run, `cwd_of` only about the instances reported. `script` limits the report to one script;
    `min_instances=1` also reports scripts that run once (for "is it running already?").
    """
    # 1. Identity of every script-running Python process (launchers are wrappers, not the script).
    by_key: dict[str, list[Proc]] = {}
    idents: dict[str, ScriptIdentity] = {}
    for p in procs.values():
        if p.python is None or p.python.kind == "interactive" or p.kernel_thread or p.state in ("Z", "X"):
            continue
        if launcher_kind(p) is not None:
            continue
        ident = identity_of(p)
        if ident is None or (script is not None and ident.key != script.key):
            continue
        by_key.setdefault(ident.key, []).append(p)
        idents.setdefault(ident.key, ident)

    groups: list[DuplicateGroup] = []
    scheduled: list[ScheduledInstance] = []
    distributed: list[Instance] = []
    lineage = _Lineage(procs, {p.pid: key for key, members in by_key.items() for p in members})

    def top_launcher(p: Proc) -> int | None:
        # The outermost launcher above p (deepspeed runner -> deepspeed.launcher.launch -> ranks: the runner).
        return lineage.of(p.pid)[1]

    for key, members in by_key.items():
        if len(members) < min_instances:
            continue
        # 2. Workers: an ancestor runs the same script.
        roots = [p for p in members if key not in lineage.of(p.pid)[0]]
        if len(roots) < min_instances:
            continue
        # 3. Runs: ranks joined by a common launcher, elastic run id, or rendezvous address.
        uf = _UnionFind()
        tags: dict[tuple[str, ...], int] = {}
        envs: dict[int, Mapping[str, str] | None] = {}
        for p in roots:
            uf.find(p.pid)
            env = envs[p.pid] = env_of(p)
            keys: list[tuple[str, ...]] = []
            lp = top_launcher(p)
            if lp is not None:
                keys.append(("launcher", str(lp)))
            if env:
                run_id = env.get("TORCHELASTIC_RUN_ID")
                if run_id and run_id != "none":  # torchrun's default id says nothing about the run
                    keys.append(("elastic", run_id))
                addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
                if addr and port:
                    keys.append(("master", addr, port))
            for k in keys:
                other = tags.setdefault(k, p.pid)
                uf.union(other, p.pid)
        runs: dict[int, list[Proc]] = {}
        for p in roots:
            runs.setdefault(uf.find(p.pid), []).append(p)

        ident = idents[key]
        instances: list[Instance] = []
        for ranks in runs.values():
            ranks.sort(key=_age_key)
            inst = _make_instance(procs, ranks, top_launcher, cwd_of)
            sched = next((s for s in (_scheduler_of(envs[r.pid]) for r in ranks) if s), None)
            if sched is not None:
                scheduled.append(ScheduledInstance(ident, inst, sched[0], sched[1]))
                continue
            if len(ranks) > 1:
                distributed.append(inst)
            instances.append(inst)
        if len(instances) >= min_instances:
            instances.sort(key=lambda i: (i.create_time, i.pid))
            groups.append(DuplicateGroup(ident, tuple(instances)))
    groups.sort(key=lambda g: (g.identity.display, g.identity.key))
    return DuplicateReport(tuple(groups), tuple(scheduled), tuple(distributed))


def _make_instance(procs: Mapping[int, Proc], ranks: list[Proc], top_launcher: Callable[[Proc], int | None],
                   cwd_of: Callable[[Proc], str | None]) -> Instance:
    oldest = ranks[0]
    launchers = {top_launcher(r) for r in ranks}
    roots: list[int] = []
    head = oldest
    launcher_name: str | None = None
    if len(launchers) == 1 and None not in launchers:
        lp = next(iter(launchers))
        assert lp is not None
        head = procs[lp]
        roots = [lp]
        launcher_name = launcher_kind(head)
    else:
        # Ranks that only share an environment: each launcher (or lone rank) is a root of its own.
        for r in ranks:
            root = top_launcher(r)
            root = r.pid if root is None else root
            if root not in roots:
                roots.append(root)
    py = oldest.python
    return Instance(
        pid=head.pid,
        create_time=head.create_time,
        cwd=cwd_of(head),
        args=py.args if py is not None else (),
        username=head.username,
        cmdline=head.cmdline,
        uid=head.uid,
        start_ticks=head.start_ticks,
        members=tuple(r.pid for r in ranks),
        roots=tuple(roots),
        launcher=launcher_name,
    )


# ---------------------------------------------------------------------------------------------- impure layer

_resolver = IdentityResolver()
_resolver_lock = threading.Lock()
_last_prune = 0.0


def _resolve_script_arg(script: str | os.PathLike[str] | ScriptIdentity | None) -> ScriptIdentity | None:
    if script is None or isinstance(script, ScriptIdentity):
        return script
    return identity_for_path(script)


def _cwd(p: Proc) -> str | None:
    return procfs.read_cwd(p.pid)


def duplicate_report(snapshot: Snapshot | None = None,
                     script: str | os.PathLike[str] | ScriptIdentity | None = None, *,
                     min_instances: int = 2, resolver: IdentityResolver | None = None) -> DuplicateReport:
    """Duplicate groups plus the scheduler-managed and distributed runs set apart (see DuplicateReport).

    `script`: a path (relative to our cwd; symlinks followed) or a ScriptIdentity (for -m / -c scripts).
    """
    global _last_prune
    snap = snapshot if snapshot is not None else process_snapshot()
    res = resolver if resolver is not None else _resolver
    report = build_report(snap.procs, res.identity, res.env, _cwd,
                          script=_resolve_script_arg(script), min_instances=min_instances)
    if resolver is None:
        # Forget processes that ended, now and then (a full pass is cheap but needn't run every refresh).
        now = time.monotonic()
        with _resolver_lock:
            due = now - _last_prune > 10.0
            if due:
                _last_prune = now
        if due:
            res.prune(snap)
    return report


def find_duplicates(snapshot: Snapshot | None = None,
                    script: str | os.PathLike[str] | ScriptIdentity | None = None) -> list[DuplicateGroup]:
    """Groups of two or more independent runs of one script, each with its runs oldest first."""
    return list(duplicate_report(snapshot, script).groups)


def find_instances(script: str | os.PathLike[str] | ScriptIdentity, snapshot: Snapshot | None = None
                   ) -> list[Instance]:
    """Every independent, non-scheduler run of `script` (even a single one), oldest first."""
    groups = duplicate_report(snapshot, script, min_instances=1).groups
    return list(groups[0].instances) if groups else []


def enrich(groups: Sequence[DuplicateGroup], snapshot: Snapshot, gpu: Any = None,
           held: Iterable[Any] | None = None) -> list[DuplicateGroup]:
    """Fill each instance's gpu_memory (sum over its whole tree) and locks.

    `gpu`: a GPU snapshot with `.processes` items having `.pid` and `.memory_used` (bytes); `held`: lock
    objects with `.path` and `.holders` (pids) or `.pid`; default locks.held_locks() when that module exists.
    """
    from procguard.core.views import tree

    if held is None:
        try:
            from procguard.core.locks import held_locks
        except ImportError:
            held = ()
        else:
            held = held_locks()
    lock_holders: list[tuple[str, set[int]]] = []
    for lk in held:
        pids = set(getattr(lk, "holders", None) or ())
        pid = getattr(lk, "pid", None)
        if isinstance(pid, int):
            pids.add(pid)
        lock_holders.append((str(getattr(lk, "path", lk)), pids))
    gpu_by_pid: dict[int, int] | None = None
    if gpu is not None and getattr(gpu, "available", True):
        gpu_by_pid = {}
        for gp in getattr(gpu, "processes", ()) or ():
            mem = getattr(gp, "memory_used", None)
            if isinstance(mem, int):
                gpu_by_pid[gp.pid] = gpu_by_pid.get(gp.pid, 0) + mem
    out: list[DuplicateGroup] = []
    for g in groups:
        insts = []
        for inst in g.instances:
            pids = {p.pid for r in (inst.roots or (inst.pid,)) for p in tree(snapshot, r)}
            locks = tuple(sorted(path for path, holders in lock_holders if holders & pids))
            mem = None if gpu_by_pid is None else sum(gpu_by_pid.get(p, 0) for p in pids)
            insts.append(replace(inst, locks=locks, gpu_memory=mem))
        out.append(DuplicateGroup(g.identity, tuple(insts)))
    return out


# ---------------------------------------------------------------------------------------------- acting


def launch_context(env: Mapping[str, str] | None = None) -> str | None:
    """Why this process is part of a scheduler job or distributed launch (None if it is not)."""
    env = os.environ if env is None else env
    for var in SCHEDULER_VARS:
        if env.get(var):
            return f"running inside a batch-scheduler job ({var}={env[var]}): the scheduler owns its jobs"
    for var in DISTRIBUTED_VARS:
        if env.get(var):
            return f"running inside a distributed launch ({var}={env[var]}): its ranks are not duplicates"
    return None


@dataclass(frozen=True)
class TerminateReport:
    groups: tuple[DuplicateGroup, ...] = ()
    kept: tuple[Instance, ...] = ()
    ended: tuple[Instance, ...] = ()  # the instances acted on (or that would be, in a dry run)
    results: tuple[SignalResult, ...] = ()  # one per process signalled (empty in a dry run)
    would_end: tuple[Member, ...] = ()  # dry run: every process that would be signalled
    skipped: tuple[tuple[Instance, str], ...] = ()  # instances left alone, and why
    skipped_reason: str | None = None  # set when nothing at all was done, and why
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return self.skipped_reason is None and all(r.ok for r in self.results)


def _describe(inst: Instance) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(inst.create_time))
    cmd = inst.command
    if len(cmd) > 200:
        cmd = cmd[:199] + "…"
    return f"pid {inst.pid} (since {since}, user {inst.username}): {cmd}"


def _plan(report_groups: Sequence[DuplicateGroup], keep: str, root_ok: bool, lineage: set[int]
          ) -> tuple[list[Instance], list[Instance], list[tuple[Instance, str]]]:
    uid = os.geteuid()
    kept: list[Instance] = []
    ending: list[Instance] = []
    skipped: list[tuple[Instance, str]] = []
    for g in report_groups:
        keep_inst = g.instances[0] if keep == "oldest" else g.instances[-1]
        kept.append(keep_inst)
        for inst in g.instances:
            if inst is keep_inst:
                continue
            if inst.uid != uid and not root_ok:
                skipped.append((inst, f"belongs to user {inst.username}, not to you"))
            elif lineage & ({inst.pid, *inst.members, *inst.roots}):
                skipped.append((inst, "is procguard itself or one of its ancestors"))
            else:
                ending.append(inst)
    return kept, ending, skipped


def _lineage() -> set[int]:
    from procguard.core.protect import own_lineage

    return own_lineage()


def terminate_duplicates(keep: str = "oldest", script: str | os.PathLike[str] | ScriptIdentity | None = None,
                         grace: float = 5.0, *, snapshot: Snapshot | None = None, dry_run: bool = False,
                         on_progress: ProgressFn | None = None) -> TerminateReport:
    """End all but one run per duplicate group (each run with its whole process tree: SIGTERM, then SIGKILL
    after `grace`). Only the caller's own processes, unless root with an explicit `script`. Does nothing inside
    a distributed launch or scheduler job (`skipped_reason` says so). Never touches procguard's own lineage."""
    if keep not in ("oldest", "newest"):
        raise ValueError(f"keep must be 'oldest' or 'newest', not {keep!r}")
    if grace < 0:
        raise ValueError(f"grace must be >= 0, not {grace}")
    why = launch_context()
    if why is not None:
        return TerminateReport(skipped_reason=why, dry_run=dry_run)
    from procguard.core import signals
    from procguard.core.signals import Target

    snap = snapshot if snapshot is not None else process_snapshot()
    groups = duplicate_report(snap, script).groups
    root_ok = os.geteuid() == 0 and script is not None
    kept, ending, skipped = _plan(groups, keep, root_ok, _lineage())
    targets = [Target.tree(r) for inst in ending for r in (inst.roots or (inst.pid,))]
    if dry_run:
        members = signals.resolve(targets, snap) if targets else []
        return TerminateReport(groups, tuple(kept), tuple(ending), (), tuple(members), tuple(skipped), None, True)
    results = signals.terminate(targets, grace, snapshot=snap, on_progress=on_progress) if targets else []
    return TerminateReport(groups, tuple(kept), tuple(ending), tuple(results), (), tuple(skipped), None, False)


class RunCheck(NamedTuple):
    ok: bool  # False: do not start the command
    message: str  # for stderr; "" when there is nothing to say


def check_before_run(argv: Sequence[str], cwd: str, policy: str, grace: float = 5.0, *,
                     snapshot: Snapshot | None = None) -> RunCheck:
    """Apply an on-duplicate policy ("abort" | "terminate" | "ignore") to the runs of the script that `argv`
    would start in `cwd`. Commands that don't run a Python script pass unchecked."""
    if policy not in ("abort", "terminate", "ignore"):
        raise ValueError(f"policy must be abort, terminate or ignore, not {policy!r}")
    ident = identity_for_command(list(argv), cwd)
    if ident is None:
        return RunCheck(True, "")
    why = launch_context()
    if why is not None:
        return RunCheck(True, f"not checking for other runs of {ident.display}: {why}")
    snap = snapshot if snapshot is not None else process_snapshot()
    lineage = _lineage()
    running = [i for i in find_instances(ident, snap) if not lineage & {i.pid, *i.members, *i.roots}]
    if not running:
        return RunCheck(True, "")
    listing = "; ".join(_describe(i) for i in running)
    if policy == "ignore":
        return RunCheck(True, f"{ident.display} is already running ({listing}); starting anyway")
    if policy == "abort":
        return RunCheck(False, f"{ident.display} is already running: {listing}")
    from procguard.core import signals
    from procguard.core.signals import Target

    uid = os.geteuid()
    others = [i for i in running if i.uid != uid and uid != 0]
    if others:
        return RunCheck(False, f"{ident.display} is already running as another user: "
                        + "; ".join(_describe(i) for i in others))
    targets = [Target.tree(r) for i in running for r in (i.roots or (i.pid,))]
    results = signals.terminate(targets, grace, snapshot=snap)
    bad = [r for r in results if not r.ok]
    summary = signals.summarize(results)
    if bad:
        return RunCheck(False, f"could not end the other runs of {ident.display}: {summary}")
    return RunCheck(True, f"ended {len(running)} other run(s) of {ident.display}: {summary}")


def instance_json(inst: Instance) -> dict[str, object]:
    return {"pid": inst.pid, "create_time": inst.create_time, "cwd": inst.cwd, "args": list(inst.args),
            "username": inst.username}


def group_json(g: DuplicateGroup) -> dict[str, object]:
    ident = g.identity
    if ident.kind == "file":
        script = ident.key
    elif ident.kind == "module":
        script = ident.key.partition("@")[0]
    else:
        py = parse_python_cmdline(g.instances[0].cmdline) if g.instances else None
        script = py.target if py is not None and py.kind == "code" else ident.display
    return {"script": script, "kind": ident.kind, "instances": [instance_json(i) for i in g.instances]}

