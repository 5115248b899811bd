"""Duplicate runs of one job: finding them, explaining them, and ending all but one.

A *run* is what a person started: one process with a job identity (see identity.py: a script, module, console
script, launcher target, or a command under `procguard run`), or every rank of one distributed launch (the
processes under one launcher, or sharing TORCHELASTIC_RUN_ID, or MASTER_ADDR+MASTER_PORT). Two or more
independent runs of one identity key form a duplicate group. Never counted as runs of their own:

- workers: a process with an ancestor running the same job (forked/spawned DataLoader workers, subprocesses);
- ranks of one launch (collapsed into one run, whose pid is the launcher when they share one); a launcher that
  is identified by its target (torchrun a.py) is the run, the ranks under it its members;
- batch-scheduler jobs (SLURM_JOB_ID / PBS_JOBID / LSB_JOBID in the environment): listed apart as
  scheduler-managed, never grouped nor terminated;
- procguard's own processes (the CLI, the app, benchmark helpers), and the `procguard run` launcher, whose child
  is the job (a non-Python child is identified by its command); helpers and never-duplicate programs.

The grouping itself is `build_report`, a pure function of the process table and its lookups (identity,
environment, cwd, "is a procguard run launcher", "is a launcher"); `duplicate_report`/`find_duplicates` feed it
from /proc through a cached IdentityResolver. `explain(pid)` says what one process is to all this, and why.
Before anything is signalled, `terminate_duplicates` re-checks each victim (`recheck_victims`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from procguard.core import format as fmt
from procguard.core import procfs
from procguard.core.identity import (
    IdentityResolver,
    ScriptIdentity,
    current_identity,
    identity_for_command,
    identity_for_path,
    launcher_kind,
    looks_like_procguard_run,
)
from procguard.core.launchenv import DISTRIBUTED_VARS, SCHEDULER_VARS, launch_context, scheduler_job
from procguard.core.launchers import Settings, settings_from_env
from procguard.core.procid import ProcId
from procguard.core.sanitize import safe
from procguard.core.snapshot import Proc, Snapshot, process_snapshot, read_proc

if TYPE_CHECKING:
    from procguard.core.gpu import GpuSnapshot
    from procguard.core.held_locks import HeldLock
    from procguard.core.signals import Member, ProgressFn, SignalResult

__all__ = [
    "Instance",
    "DuplicateGroup",
    "ScheduledInstance",
    "DuplicateReport",
    "TerminateReport",
    "RunCheck",
    "Explanation",
    "build_report",
    "duplicate_report",
    "find_duplicates",
    "find_instances",
    "enrich",
    "explain",
    "recheck_victims",
    "terminate_duplicates",
    "check_before_run",
    "launch_context",
    "SCHEDULER_VARS",
    "DISTRIBUTED_VARS",
]


@dataclass(frozen=True)
class Instance:
    """One independent run of a job. For a distributed run, pid is its launcher (or its oldest rank when
    the ranks only share an environment) and `members` lists the job's processes (ranks) it covers."""

    pid: int
    create_time: float
    cwd: str | None
    args: tuple[str, ...]  # the job's arguments (of the oldest rank for a distributed run)
    username: str
    cmdline: tuple[str, ...]  # of `pid`: the launcher's for a launched run
    gpu_memory: int | None = None  # bytes over the run's whole tree; filled by enrich()
    locks: tuple[str, ...] = ()  # lock files held by any process of the run; filled by enrich()
    uid: int = -1
    start_ticks: int = 0
    members: tuple[int, ...] = ()  # job processes of this run (just pid for a plain run)
    roots: tuple[int, ...] = ()  # tree roots that together hold the whole run (what terminate ends)
    launcher: str | None = None  # "torchrun", "mpirun"... when pid is a launcher
    # (pid, start_ticks) of pid, roots and members as the report saw them: what recheck_victims() checks.
    pinned: tuple[ProcId, ...] = ()

    @property
    def command(self) -> str:
        return " ".join(self.cmdline)

    @property
    def proc_id(self) -> ProcId:
        return ProcId(self.pid, self.start_ticks)

    def describe(self, width: int = 160) -> str:
        """One terminal-safe line for messages: pid, start, user and command (cut to `width`)."""
        cmd = self.command
        if len(cmd) > width:
            cmd = cmd[: width - 1] + "…"
        # The run's argv and user name are that process's words: escaped before they reach a terminal.
        return (
            f"pid {self.pid} (since {fmt.clock(self.create_time)}, user {safe(self.username)}): {safe(cmd)}"
        )


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


# Why build_report left a process out of the runs: pid -> (code, related pid or 0, sentence).
Why = dict[int, tuple[str, int, str]]


class _Lineage:
    """What the ancestors of each process hold: the job keys they run and the outermost launcher.

    Memoised from the top down, so one pass costs O(processes) however deep and wide the trees are (walking
    every instance's ancestors twice cost more than all the identity lookups of a cached pass)."""

    __slots__ = ("_procs", "_key_of", "_memo", "_launcher", "_is_launcher_fn")

    _EMPTY: tuple[frozenset[str], int | None] = (frozenset(), None)

    def __init__(
        self, procs: Mapping[int, Proc], key_of: Mapping[int, str], is_launcher: Callable[[Proc], bool]
    ) -> None:
        self._procs = procs
        self._key_of = key_of
        self._memo: dict[int, tuple[frozenset[str], int | None]] = {}
        self._launcher: dict[int, bool] = {}
        self._is_launcher_fn = is_launcher

    def _is_launcher(self, p: Proc) -> bool:
        v = self._launcher.get(p.pid)
        if v is None:
            v = self._launcher[p.pid] = self._is_launcher_fn(p)
        return v

    def of(self, pid: int) -> tuple[frozenset[str], int | None]:
        """(job keys run by pid's ancestors, pid of the outermost launcher above pid or None)."""
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
                info = self._extend_top(above, parent)
                break
            p = parent
        # path[-1]'s ancestors are summed up in info; walk back down.
        for i in range(len(path) - 1, -1, -1):
            if i < len(path) - 1:
                info = self._extend_top(info, path[i + 1])
            memo[path[i].pid] = info
        return memo.get(pid, self._EMPTY)

    def _extend_top(
        self, info: tuple[frozenset[str], int | None], anc: Proc
    ) -> tuple[frozenset[str], int | None]:
        keys, outer = info
        k = self._key_of.get(anc.pid)
        if k is not None and k not in keys:
            keys = keys | {k}
        if outer is None and self._is_launcher(anc):
            outer = anc.pid  # the outermost launcher wins: one found higher up is kept
        return keys, outer


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
    """(scheduler, job id) from another process's environment (None: not a job, or its environment unread)."""
    job = scheduler_job(env) if env else None
    return (job[1], job[2]) if job is not None else None


class _Table:
    """One pass's view: identities of the counted candidates, launchers, lineage."""

    def __init__(
        self,
        procs: Mapping[int, Proc],
        idents: Mapping[int, ScriptIdentity],
        launcher_of: Callable[[Proc], str | None],
    ) -> None:
        self.procs = procs
        self.idents = idents
        self.launcher_of = launcher_of
        self.keyed = {pid for pid, i in idents.items() if i.launcher is not None}
        self.lineage = _Lineage(procs, {pid: i.key for pid, i in idents.items()}, self.is_launcher)

    def is_launcher(self, p: Proc) -> bool:
        return p.pid in self.keyed or self.launcher_of(p) is not None

    def launcher_name(self, p: Proc) -> str | None:
        i = self.idents.get(p.pid)
        return i.launcher if i is not None and i.launcher else self.launcher_of(p)

    def top_launcher(self, p: Proc) -> int | None:
        # The outermost launcher above p (deepspeed runner -> deepspeed.launcher.launch -> ranks: the runner).
        return self.lineage.of(p.pid)[1]

    def same_key_ancestors(self, p: Proc, key: str) -> list[Proc]:
        """Ancestors of p running `key`, nearest first."""
        out: list[Proc] = []
        seen = {p.pid}
        a = self.procs.get(p.ppid)
        while a is not None and a.pid not in seen:
            seen.add(a.pid)
            i = self.idents.get(a.pid)
            if i is not None and i.key == key:
                out.append(a)
            a = self.procs.get(a.ppid)
        return out


def _candidates(
    procs: Mapping[int, Proc],
    identity_of: Callable[[Proc], ScriptIdentity | None],
    is_runner: Callable[[Proc], bool],
    launcher_of: Callable[[Proc], str | None],
    script: ScriptIdentity | None,
) -> dict[int, ScriptIdentity]:
    """Identity of every process that may be a run: Python jobs, and the children of `procguard run`."""
    out: dict[int, ScriptIdentity] = {}
    runners: set[int] = set()

    def take(p: Proc) -> None:
        ident = identity_of(p)
        if ident is None or (script is not None and ident.key != script.key):
            return
        if ident.launcher is None and launcher_of(p) is not None:
            return  # a launcher not identified by its target is a wrapper, not the job
        out[p.pid] = ident

    for p in procs.values():
        py = p.python
        if py is None or py.kind == "interactive" or p.dead:
            continue
        if py.args[:1] == ("run",) and is_runner(p):
            runners.add(p.pid)  # `procguard run`: never a run itself, its child is
            continue
        take(p)
    if runners:
        # A program that is not Python is a job only as the command `procguard run` started.
        for p in procs.values():
            if p.python is None and p.ppid in runners and not p.kernel_thread and not p.dead:
                take(p)
    return out


def _split_roots(
    t: _Table, key: str, members: list[Proc], why: Why | None
) -> tuple[list[Proc], dict[int, list[Proc]]]:
    """Roots (runs' top processes) of one key, and the ranks under each launcher root. Others are workers."""
    roots: list[Proc] = []
    ranks_of: dict[int, list[Proc]] = {}
    for p in members:
        if key not in t.lineage.of(p.pid)[0]:
            roots.append(p)
            continue
        chain = t.same_key_ancestors(p, key)
        if chain and all(a.pid in t.keyed for a in chain):
            top = chain[-1]
            name = t.launcher_name(top) or "launcher"
            if p.pid in t.keyed:
                text = f"a launcher inside the {name} launch of pid {top.pid}"
            else:
                ranks_of.setdefault(top.pid, []).append(p)
                text = f"rank of pid {top.pid} (its {name} launch)"
            if why is not None:
                why[p.pid] = ("rank", top.pid, text)
        elif why is not None:
            near = next((a for a in chain if a.pid not in t.keyed), chain[0] if chain else p)
            why[p.pid] = ("worker", near.pid, f"worker of pid {near.pid} (which runs the same job)")
    return roots, ranks_of


def _union_runs(
    t: _Table, roots: list[Proc], env_of: Callable[[Proc], Mapping[str, str] | None]
) -> tuple[list[list[Proc]], dict[int, Mapping[str, str] | None]]:
    """Roots joined into runs by a common launcher, elastic run id, or rendezvous address."""
    uf = _UnionFind()
    tags: dict[tuple[str, ...], int] = {}
    envs: dict[int, Mapping[str, str] | None] = {}
    for p in roots:
        uf.find(p.pid)
        env = envs[p.pid] = env_of(p)
        keys: list[tuple[str, ...]] = []
        lp = t.top_launcher(p)
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
    return list(runs.values()), envs


def build_report(
    procs: Mapping[int, Proc],
    identity_of: Callable[[Proc], ScriptIdentity | None],
    env_of: Callable[[Proc], Mapping[str, str] | None],
    cwd_of: Callable[[Proc], str | None] = lambda p: None,
    *,
    script: ScriptIdentity | None = None,
    min_instances: int = 2,
    is_runner: Callable[[Proc], bool] = looks_like_procguard_run,
    launcher_of: Callable[[Proc], str | None] = launcher_kind,
    why: Why | None = None,
) -> DuplicateReport:
    """Group the runs in `procs` by job identity. Pure apart from what the lookups do.

    `identity_of` is asked about every Python process and every child of a `procguard run` launcher
    (`is_runner`), `env_of` only about processes of jobs with more than one candidate run, `cwd_of` only about
    the instances reported. `script` limits the report to one identity; `min_instances=1` also reports jobs
    that run once (for "is it running already?"). `why`, when given, is filled with the reason each process
    of the jobs looked at was not a run of its own (worker, rank, scheduler job).
    """
    idents = _candidates(procs, identity_of, is_runner, launcher_of, script)
    by_key: dict[str, list[Proc]] = {}
    shown: dict[str, ScriptIdentity] = {}
    for pid, ident in idents.items():
        by_key.setdefault(ident.key, []).append(procs[pid])
        if ident.key not in shown or shown[ident.key].launcher is not None:
            shown[ident.key] = ident  # prefer the identity of a process running the job itself
    t = _Table(procs, idents, launcher_of)
    groups: list[DuplicateGroup] = []
    scheduled: list[ScheduledInstance] = []
    distributed: list[Instance] = []
    for key, members in by_key.items():
        if len(members) < min_instances:
            continue
        roots, ranks_of = _split_roots(t, key, members, why)
        if len(roots) < min_instances:
            continue
        runs, envs = _union_runs(t, roots, env_of)
        ident = shown[key].as_target()
        instances: list[Instance] = []
        for run in runs:
            run.sort(key=_age_key)
            inst = _make_instance(t, run, ranks_of, cwd_of, why)
            sched = next((s for s in (_scheduler_of(envs[r.pid]) for r in run) if s), None)
            if sched is not None:
                scheduled.append(ScheduledInstance(ident, inst, sched[0], sched[1]))
                if why is not None:
                    for pid in {inst.pid, *inst.members}:
                        why[pid] = (
                            "scheduler",
                            0,
                            f"part of {sched[0]} job {sched[1]}: the scheduler owns it",
                        )
                continue
            if len(inst.members) > 1:
                distributed.append(inst)
            instances.append(inst)
        if len(instances) >= min_instances:
            instances.sort(key=lambda i: (i.create_time, i.pid))
            groups.append(DuplicateGroup(ident, tuple(instances)))
    groups.sort(key=lambda g: (g.identity.display, g.identity.key))
    return DuplicateReport(tuple(groups), tuple(scheduled), tuple(distributed))


def _args_of(p: Proc) -> tuple[str, ...]:
    return p.python.args if p.python is not None else tuple(p.cmdline[1:])


def _make_instance(
    t: _Table,
    run: list[Proc],
    ranks_of: Mapping[int, list[Proc]],
    cwd_of: Callable[[Proc], str | None],
    why: Why | None,
) -> Instance:
    """One run: its roots (oldest first), the job processes it covers, the process that stands for it."""
    if len(run) == 1 and not ranks_of:
        members = run
    else:
        members = sorted((m for r in run for m in (ranks_of.get(r.pid) or [r])), key=_age_key)
    head = run[0]
    roots: list[int] = []
    launcher_name: str | None = None
    launchers = {t.top_launcher(r) for r in run}
    if len(run) == 1 and head.pid in t.keyed:
        # A launcher identified by its target (torchrun a.py): it is the run, its ranks are the members.
        roots = [head.pid]
        launcher_name = t.launcher_name(head)
    elif len(launchers) == 1 and None not in launchers:
        lp = next(iter(launchers))
        assert lp is not None
        head = t.procs[lp]
        roots = [lp]
        launcher_name = t.launcher_name(head)
    else:
        # Ranks that only share an environment: each launcher (or lone rank) is a root of its own.
        for r in run:
            root = t.top_launcher(r)
            root = r.pid if root is None else root
            if root not in roots:
                roots.append(root)
    if why is not None:
        for m in members:
            if m.pid != head.pid:
                why.setdefault(m.pid, ("rank", head.pid, f"rank of pid {head.pid} (one run with it)"))
    pinned = {head.pid: ProcId(head.pid, head.start_ticks)}
    for pid in roots:
        if pid not in pinned:
            p = t.procs[pid]
            pinned[pid] = ProcId(pid, p.start_ticks)
    for m in members:
        if m.pid not in pinned:
            pinned[m.pid] = ProcId(m.pid, m.start_ticks)
    return Instance(
        pid=head.pid,
        create_time=head.create_time,
        cwd=cwd_of(head),
        args=_args_of(members[0]),
        username=head.username,
        cmdline=head.cmdline,
        uid=head.uid,
        start_ticks=head.start_ticks,
        members=tuple(m.pid for m in members),
        roots=tuple(roots),
        launcher=launcher_name,
        pinned=tuple(pinned.values()),
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


def _report_with(
    snap: Snapshot,
    res: IdentityResolver,
    settings: Settings,
    script: ScriptIdentity | None,
    min_instances: int,
    why: Why | None = None,
) -> DuplicateReport:
    res.use(settings)
    return build_report(
        snap.procs,
        res.identity,
        res.env,
        _cwd,
        script=script,
        min_instances=min_instances,
        is_runner=res.is_runner,
        launcher_of=res.launcher,
        why=why,
    )


def duplicate_report(
    snapshot: Snapshot | None = None,
    script: str | os.PathLike[str] | ScriptIdentity | None = None,
    *,
    min_instances: int = 2,
    resolver: IdentityResolver | None = None,
    settings: Settings | None = None,
) -> DuplicateReport:
    """Duplicate groups plus the scheduler-managed and distributed runs set apart (see DuplicateReport).

    `script`: a path (relative to our cwd; symlinks followed) or a ScriptIdentity (any kind). `settings`:
    extra launchers and never-duplicate patterns (default: PROCGUARD_LAUNCHERS / PROCGUARD_NEVER_DUPLICATE;
    an invalid entry raises launchers.SettingError).
    """
    global _last_prune
    settings = settings if settings is not None else settings_from_env()
    snap = snapshot if snapshot is not None else process_snapshot()
    res = resolver if resolver is not None else _resolver
    report = _report_with(snap, res, settings, _resolve_script_arg(script), min_instances)
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


def find_duplicates(
    snapshot: Snapshot | None = None,
    script: str | os.PathLike[str] | ScriptIdentity | None = None,
    *,
    settings: Settings | None = None,
) -> list[DuplicateGroup]:
    """Groups of two or more independent runs of one job, each with its runs oldest first."""
    return list(duplicate_report(snapshot, script, settings=settings).groups)


def find_instances(
    script: str | os.PathLike[str] | ScriptIdentity,
    snapshot: Snapshot | None = None,
    *,
    settings: Settings | None = None,
) -> list[Instance]:
    """Every independent, non-scheduler run of `script` (even a single one), oldest first."""
    groups = duplicate_report(snapshot, script, min_instances=1, settings=settings).groups
    return list(groups[0].instances) if groups else []


def enrich(
    groups: Sequence[DuplicateGroup],
    snapshot: Snapshot,
    gpu: GpuSnapshot | None = None,
    held: Iterable[HeldLock] | None = None,
) -> list[DuplicateGroup]:
    """Fill each instance's gpu_memory (sum over its whole tree; None without an available GPU snapshot) and
    locks (the paths of `held`, default `held_locks()`, that any process of its tree holds)."""
    from procguard.core.views import tree

    if held is None:
        from procguard.core.held_locks import held_locks  # loaded only when asked: it reads /proc/locks

        held = held_locks()
    lock_holders: list[tuple[str, set[int]]] = []
    for lk in held:
        pids = set(lk.holders)
        if lk.pid is not None:
            pids.add(lk.pid)
        lock_holders.append((lk.path, pids))
    gpu_by_pid: dict[int, int] | None = None
    if gpu is not None and gpu.available:
        gpu_by_pid = {}
        for gp in gpu.processes:
            if gp.memory_used is not None:
                gpu_by_pid[gp.pid] = gpu_by_pid.get(gp.pid, 0) + gp.memory_used
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


# ---------------------------------------------------------------------------------------------- explaining


@dataclass(frozen=True)
class Explanation:
    """What one process is to duplicate detection: its identity key, whether it stands for a run, and why not.

    `code` is "counted" for a process that stands for a run (`reason` then says of how many), else one of
    "worker", "rank", "scheduler", "own", "other_user", "helper", "never", "not_python", "launcher",
    "no_target", "interactive", "unresolved", "exited"."""

    pid: int
    uid: int
    username: str
    cmdline: tuple[str, ...]
    identity: ScriptIdentity | None  # the key with its kind and parts (None: it has none)
    counted: bool  # it stands for a run of its identity
    code: str
    reason: str  # one sentence
    related: int | None = None  # the pid the reason is about (worker of, rank of, the job of procguard run)
    runs: tuple[int, ...] = ()  # pids of the counted runs of this identity, oldest first
    notes: tuple[str, ...] = ()

    @property
    def duplicate(self) -> bool:
        return len(self.runs) >= 2 and (self.counted or self.code == "rank")

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "uid": self.uid,
            "username": self.username,
            "cmdline": list(self.cmdline),
            "identity": self.identity.to_json() if self.identity is not None else None,
            "counted": self.counted,
            "code": self.code,
            "reason": self.reason,
            "related": self.related,
            "runs": list(self.runs),
            "duplicate": self.duplicate,
            "notes": list(self.notes),
        }


def _runner_child(snap: Snapshot, pid: int) -> int | None:
    kids = sorted((p for p in snap if p.ppid == pid and not p.dead), key=_age_key)
    return kids[0].pid if kids else None


def _uncounted_first(
    proc: Proc, snap: Snapshot, res: IdentityResolver, settings: Settings
) -> tuple[ScriptIdentity | None, str, str, int | None] | None:
    """Reasons that need no report: (identity, code, reason, related), or None to look at the runs."""
    if proc.dead:
        return None, "exited", "it has exited (a zombie waiting to be reaped)", None
    c = res.classify(proc)
    if proc.python is None:
        parent = snap.get(proc.ppid)
        if parent is None or not res.is_runner(parent):
            name = launcher_kind(proc, settings)
            if name is not None:
                return None, "launcher", f"a launcher ({name}): the processes it starts are the job", None
            return None, "not_python", "not a Python program, nor a command started by `procguard run`", None
        if c.is_job:
            return None
        return c.identity, c.code, c.reason, None
    if c.own == "run":
        child = _runner_child(snap, proc.pid)
        where = f"its child pid {child} is the job" if child is not None else "it has no child (yet)"
        return (
            None,
            "own",
            f"procguard's own process: the `procguard run` launcher, not a run itself; {where}",
            child,
        )
    if not c.is_job:
        return c.identity, c.code, c.reason, None
    if c.identity is not None and c.identity.launcher is None and launcher_kind(proc, settings) is not None:
        name = launcher_kind(proc, settings)
        return None, "launcher", f"a launcher ({name}): the processes it starts are the job", None
    return None


def explain(
    pid: int,
    snapshot: Snapshot | None = None,
    *,
    settings: Settings | None = None,
    resolver: IdentityResolver | None = None,
) -> Explanation:
    """Why `pid` is (or is not) counted as a run in duplicate detection, with its identity key.

    Raises LookupError when there is no such process in the snapshot."""
    settings = settings if settings is not None else settings_from_env()
    snap = snapshot if snapshot is not None else process_snapshot()
    res = resolver if resolver is not None else _resolver
    res.use(settings)
    proc = snap.get(pid)
    if proc is None:
        raise LookupError(f"no process {pid}")
    base = (proc.pid, proc.uid, proc.username, proc.cmdline)
    first = _uncounted_first(proc, snap, res, settings)
    if first is not None:
        ident, code, reason, related = first
        return Explanation(*base, ident, False, code, reason, related)
    ident = res.identity(proc)
    assert ident is not None
    why: Why = {}
    report = _report_with(snap, res, settings, ident, 1, why)
    runs = tuple(i.pid for g in report.groups for i in g.instances)
    notes: list[str] = []
    if proc.uid != os.geteuid():
        notes.append(
            f"belongs to user {proc.username}: never ended without --all-users (root), and never by "
            "another non-root user"
        )
    if pid in why:
        code, related, text = why[pid]
        return Explanation(*base, ident, False, code, text, related or None, runs, tuple(notes))
    if pid in runs:
        n = len(runs)
        text = (
            f"one of {n} runs of {ident.as_target().display}: a duplicate"
            if n > 1
            else "the only run of this job"
        )
        return Explanation(*base, ident, True, "counted", text, None, runs, tuple(notes))
    inst = next((i for g in report.groups for i in g.instances if pid in i.members), None)
    if inst is not None:
        return Explanation(
            *base,
            ident,
            False,
            "rank",
            f"rank of pid {inst.pid} (one run with it)",
            inst.pid,
            runs,
            tuple(notes),
        )
    return Explanation(
        *base,
        ident,
        False,
        "unresolved",
        "not found among the runs (it may have just changed)",
        None,
        runs,
        tuple(notes),
    )


# ---------------------------------------------------------------------------------------------- acting


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


def _plan(
    report_groups: Sequence[DuplicateGroup], keep: str, root_ok: bool, lineage: set[int]
) -> tuple[list[Instance], list[tuple[Instance, ScriptIdentity]], list[tuple[Instance, str]]]:
    uid = os.geteuid()
    kept: list[Instance] = []
    ending: list[tuple[Instance, ScriptIdentity]] = []
    skipped: list[tuple[Instance, str]] = []
    for g in report_groups:
        keep_inst = g.instances[0] if keep == "oldest" else g.instances[-1]
        kept.append(keep_inst)
        for inst in g.instances:
            if inst is keep_inst:
                continue
            if inst.uid != uid and not root_ok:
                why = "not to you" if uid != 0 else "not to you (--all-users ends other users' runs)"
                skipped.append((inst, f"belongs to user {inst.username}, {why}"))
            elif lineage & ({inst.pid, *inst.members, *inst.roots}):
                skipped.append((inst, "is procguard itself or one of its ancestors"))
            else:
                ending.append((inst, g.identity))
    return kept, ending, skipped


def _lineage() -> set[int]:
    from procguard.core.protect import own_lineage

    return own_lineage()


def _victim_changed(inst: Instance, identity: ScriptIdentity, settings: Settings | None) -> str | None:
    """Why `inst` is no longer the run that was planned, or None when it still is."""
    pins = inst.pinned or (inst.proc_id,)
    for pin in pins:
        if not pin.running():
            return f"pid {pin.pid} has ended or is another process now"
    for pid in dict.fromkeys(inst.members or (inst.pid,)):
        now = current_identity(pid, settings)
        if now is None or now.key != identity.key:
            what = now.display if now is not None else "nothing procguard counts as a job"
            return f"its identity changed: pid {pid} now runs {what}"
    if inst.pid not in inst.members:
        # The head is a launcher: one identified by its target must still have that target; a plain launcher
        # (mpirun) must still be a launcher.
        head = read_proc(inst.pid)
        now = current_identity(inst.pid, settings)
        if now is not None and now.launcher is not None:
            if now.key != identity.key:
                return f"its identity changed: pid {inst.pid} now launches {now.display}"
        elif head is None or launcher_kind(head, settings) is None:
            return f"its identity changed: pid {inst.pid} is no longer its launcher"
    return None


def recheck_victims(
    identity: ScriptIdentity, victims: Sequence[Instance], *, settings: Settings | None = None
) -> tuple[list[Instance], list[tuple[Instance, str]]]:
    """Re-check planned victims right before signalling them: each process of each run must still be the
    same process (pid + start time) and still have `identity`'s key, read fresh from /proc (an exec keeps the
    pid and start time but changes the job). Returns (still the same runs, [(changed run, why)])."""
    settings = settings if settings is not None else settings_from_env()
    ok: list[Instance] = []
    changed: list[tuple[Instance, str]] = []
    for inst in victims:
        why = _victim_changed(inst, identity, settings)
        if why is None:
            ok.append(inst)
        else:
            changed.append((inst, why))
    return ok, changed


def terminate_duplicates(
    keep: str = "oldest",
    script: str | os.PathLike[str] | ScriptIdentity | None = None,
    grace: float = 5.0,
    *,
    snapshot: Snapshot | None = None,
    dry_run: bool = False,
    on_progress: ProgressFn | None = None,
    all_users: bool = False,
    victims: Sequence[Instance] | None = None,
    settings: Settings | None = None,
) -> TerminateReport:
    """End all but one run per duplicate group (each run with its whole process tree: SIGTERM, then SIGKILL
    after `grace`). Only the caller's own runs, unless root with `all_users`. Does nothing inside a distributed
    launch or scheduler job (`skipped_reason` says so). Never touches procguard's own lineage.

    `victims`: the runs a person confirmed (a dry run's `ended`): only those are ended, matched by pid and
    start time. Right before signalling, every victim is re-checked (recheck_victims) and skipped if it
    changed."""
    if keep not in ("oldest", "newest"):
        raise ValueError(f"keep must be 'oldest' or 'newest', not {keep!r}")
    if grace < 0:
        raise ValueError(f"grace must be >= 0, not {grace}")
    why = launch_context()
    if why is not None:
        return TerminateReport(skipped_reason=why, dry_run=dry_run)
    from procguard.core import signals
    from procguard.core.signals import Target

    settings = settings if settings is not None else settings_from_env()
    snap = snapshot if snapshot is not None else process_snapshot()
    groups = duplicate_report(snap, script, settings=settings).groups
    root_ok = os.geteuid() == 0 and all_users
    kept, ending, skipped = _plan(groups, keep, root_ok, _lineage())
    if victims is not None:
        confirmed = {v.proc_id for v in victims}
        skipped += [(i, "was not among the runs confirmed") for i, _ in ending if i.proc_id not in confirmed]
        ending = [(i, g) for i, g in ending if i.proc_id in confirmed]
    if dry_run:
        targets = [Target.tree(r) for inst, _ in ending for r in (inst.roots or (inst.pid,))]
        members = signals.resolve(targets, snap) if targets else []
        return TerminateReport(
            groups, tuple(kept), tuple(i for i, _ in ending), (), tuple(members), tuple(skipped), None, True
        )
    still: list[Instance] = []
    for inst, ident in ending:
        ok, changed = recheck_victims(ident, [inst], settings=settings)
        still += ok
        skipped += changed
    targets = [Target.tree(r) for inst in still for r in (inst.roots or (inst.pid,))]
    results = signals.terminate(targets, grace, snapshot=snap, on_progress=on_progress) if targets else []
    return TerminateReport(groups, tuple(kept), tuple(still), tuple(results), (), tuple(skipped), None, False)


class RunCheck(NamedTuple):
    ok: bool  # False: do not start the command
    message: str  # for stderr; "" when there is nothing to say


def check_before_run(
    argv: Sequence[str],
    cwd: str,
    policy: str,
    grace: float = 5.0,
    *,
    snapshot: Snapshot | None = None,
    settings: Settings | None = None,
) -> RunCheck:
    """Apply an on-duplicate policy ("abort" | "terminate" | "ignore") to the runs of the job that `argv`
    would start in `cwd` (see identity_for_command). Another user's runs are never ended, not even by root."""
    if policy not in ("abort", "terminate", "ignore"):
        raise ValueError(f"policy must be abort, terminate or ignore, not {policy!r}")
    settings = settings if settings is not None else settings_from_env()
    ident = identity_for_command(list(argv), cwd, settings)
    if ident is None:
        return RunCheck(True, "")
    why = launch_context()
    if why is not None:
        return RunCheck(True, f"not checking for other runs of {ident.display}: {why}")
    snap = snapshot if snapshot is not None else process_snapshot()
    lineage = _lineage()
    running = [
        i
        for i in find_instances(ident, snap, settings=settings)
        if not lineage & {i.pid, *i.members, *i.roots}
    ]
    if not running:
        return RunCheck(True, "")
    listing = "; ".join(i.describe() for i in running)
    if policy == "ignore":
        return RunCheck(True, f"{ident.display} is already running ({listing}); starting anyway")
    if policy == "abort":
        return RunCheck(False, f"{ident.display} is already running: {listing}")
    ended = end_runs(ident, running, grace, snapshot=snap, settings=settings)
    if ended.refused:
        return RunCheck(
            False,
            f"{ident.display} is already running as another user: "
            + "; ".join(i.describe() for i in ended.refused),
        )
    if not ended.ended:
        return RunCheck(True, f"no other run of {ident.display} left to end{ended.notes}")
    summary = ended.summary
    if not ended.ok:
        return RunCheck(False, f"could not end the other runs of {ident.display}: {summary}{ended.notes}")
    return RunCheck(True, f"ended {len(ended.ended)} other run(s) of {ident.display}: {summary}{ended.notes}")


class EndedRuns(NamedTuple):
    """What `end_runs` did: the runs it ended (with their signal results), another user's runs it refused
    to touch, and the runs it left alone because they changed since they were found."""

    ended: tuple[Instance, ...]
    results: tuple[Any, ...]  # signals.SignalResult
    refused: tuple[Instance, ...]
    changed: tuple[tuple[Instance, str], ...]

    @property
    def ok(self) -> bool:
        return not self.refused and all(r.ok for r in self.results)

    @property
    def summary(self) -> str:
        from procguard.core import signals

        return signals.summarize(self.results)

    @property
    def notes(self) -> str:
        return "".join(f"; left pid {i.pid} alone: {w}" for i, w in self.changed)


def end_runs(
    identity: ScriptIdentity,
    runs: Sequence[Instance],
    grace: float,
    *,
    snapshot: Snapshot | None = None,
    settings: Settings | None = None,
) -> EndedRuns:
    """End other runs of a job on behalf of a run that is starting (guard(on_duplicate="terminate"),
    `procguard run --on-duplicate terminate`): each run's whole trees with escalation. Another user's run is
    never ended here, not even by root (nothing is signalled then: `refused`), and every run is re-checked
    right before signalling (recheck_victims): one that changed is left alone (`changed`)."""
    from procguard.core import signals
    from procguard.core.signals import Target

    uid = os.geteuid()
    others = tuple(i for i in runs if i.uid != uid)
    if others:
        return EndedRuns((), (), others, ())
    still, changed = recheck_victims(identity, runs, settings=settings)
    targets = [Target.tree(r) for i in still for r in (i.roots or (i.pid,))]
    results = signals.terminate(targets, grace, snapshot=snapshot) if targets else []
    return EndedRuns(tuple(still), tuple(results), (), tuple(changed))


def instance_json(inst: Instance) -> dict[str, object]:
    return {
        "pid": inst.pid,
        "create_time": inst.create_time,
        "cwd": inst.cwd,
        "args": list(inst.args),
        "username": inst.username,
    }


_MAIN_PART = {
    "file": "script",
    "module": "module",
    "code": "code",
    "console": "entry point",
    "command": "executable",
}


def group_json(g: DuplicateGroup) -> dict[str, object]:
    """A group for --json: "script" (the script path, module, code, entry point or executable), "kind", the
    identity "key" and its "parts", and the instances."""
    ident = g.identity
    parts = dict(ident.parts)
    main = parts.get(_MAIN_PART.get(ident.kind, ""))
    if not isinstance(main, str):
        main = ident.key if ident.kind == "file" else ident.display
    return {
        "script": main,
        "kind": ident.kind,
        "key": ident.key,
        "parts": {k: (list(v) if isinstance(v, tuple) else v) for k, v in ident.parts},
        "instances": [instance_json(i) for i in g.instances],
    }
