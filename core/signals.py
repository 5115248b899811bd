"""Signalling processes, groups and trees safely: terminate with SIGTERM -> SIGKILL escalation, kill, pause,
resume.

Every action runs in explicit phases, each a small function below:

1. capture: resolve the targets to members and pin each one (a pidfd opened and checked against the start
   time the snapshot saw), so a pid reused by the time we signal is never hit;
2. signal: SIGTERM (SIGCONT to stopped members, whose SIGTERM would stay pending), SIGSTOP or SIGCONT;
3. wait: exits are awaited on the pidfds, which turn readable at exit, before anyone reaps (zombies count as
   dead); without pidfds, /proc is polled against each member's start time;
4. rescan: group and tree targets are rescanned for members that appeared meanwhile (forked, or orphans of a
   tree), which are pinned and signalled too;
5. kill: survivors of the grace get SIGKILL (a group at once with killpg when that is safe, a tree frozen
   with SIGSTOP first so it can't fork past us);
6. confirm: each death (or stop, or continue) is seen before it is reported.

A cgroup target (`Target.cgroup(path)`) is a whole cgroup: `procguard.core.cgroups` acts on it (cgroup.kill and
cgroup.freeze on v2, freeze-then-kill elsewhere) with the same pinned handles and phase functions, which are
public here for that reason: `Pinned`, `pin_pid`, `send_each`, `send_term`, `wait_exits`, `finish_survivors`,
`confirm_states`, `finish_denied_or_gone`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal, NamedTuple

from procguard.core import procfs
from procguard.core.procid import ProcId
from procguard.core.protect import own_lineage, protection_reason
from procguard.core.snapshot import DEAD_STATES, STOPPED_STATES, Proc, Snapshot, process_snapshot, username_of
from procguard.core.views import descendant_pids, group_members, tree

HAS_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")
# The switch for the pidfd-less path: set it False (tests do, through monkeypatch) to pin, signal and await
# members by start-time checks on /proc alone, as on kernels or sandboxes without pidfds.
USE_PIDFD = HAS_PIDFD
KILL_CONFIRM_TIMEOUT = 2.0  # how long a SIGKILLed process may take to die before it is reported survived
STOP_CONFIRM_TIMEOUT = 1.0
_MAX_FREEZE_ROUNDS = 50


class Outcome(str, Enum):
    EXITED = "exited"  # ended after SIGTERM
    KILLED = "killed"  # needed SIGKILL
    ALREADY_GONE = "already-gone"
    DENIED = "denied"  # no permission
    REFUSED = "refused"  # protected
    SURVIVED = "survived"  # still there after SIGKILL (D state), or did not stop/continue
    PAUSED = "paused"
    RESUMED = "resumed"
    UNREACHABLE = "unreachable"  # a cluster node died or did not answer: nothing is known of the process

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Target:
    """What to act on: one pid, the process group `id`, the tree rooted at pid `id`, or every process in the
    cgroup `path` and its descendants (`id` is 0 for a cgroup)."""

    kind: Literal["pid", "group", "tree", "cgroup"]
    id: int
    path: str = ""  # kind "cgroup" only: the cgroup path (as /proc/PID/cgroup shows it) or its folder

    @classmethod
    def pid(cls, pid: int) -> Target:
        return cls("pid", pid)

    @classmethod
    def group(cls, pgid: int) -> Target:
        return cls("group", pgid)

    @classmethod
    def tree(cls, pid: int) -> Target:
        return cls("tree", pid)

    @classmethod
    def cgroup(cls, path: str) -> Target:
        """A whole cgroup. Terminate/kill/pause/resume act on it through `procguard.core.cgroups` (one write to
        cgroup.kill / cgroup.freeze on v2, so no member can fork past them); a path that is not a cgroup, or one
        that is refused (the root cgroup, or one holding procguard, its shell or pid 1), raises
        `cgroups.CgroupError` (a ValueError) naming the path."""
        if not isinstance(path, str) or not path:
            raise ValueError(f"cgroup target needs a path, not {path!r}")
        return cls("cgroup", 0, path)

    def __str__(self) -> str:
        if self.kind == "cgroup":
            return f"cgroup {self.path}"
        return str(self.id) if self.kind == "pid" else f"{self.kind} {self.id}"


TargetLike = int | Target | Iterable[int | Target]


@dataclass(frozen=True)
class Member:
    """One process of a captured target set (what a dry run shows)."""

    pid: int
    start_ticks: int
    create_time: float
    name: str
    cmdline: tuple[str, ...]
    username: str
    uid: int
    state: str
    pgid: int
    target: Target
    protected: str | None = None  # why it will be refused

    @property
    def command(self) -> str:
        return " ".join(self.cmdline) if self.cmdline else f"[{self.name}]"

    @property
    def id(self) -> ProcId:
        """The identity this member was captured with: what pinning and every later check compare against."""
        return ProcId(self.pid, self.start_ticks)

    @classmethod
    def of(cls, p: Proc, target: Target, protected: str | None = None) -> Member:
        return cls(
            p.pid,
            p.start_ticks,
            p.create_time,
            p.name,
            p.cmdline,
            p.username,
            p.uid,
            p.state,
            p.pgid,
            target,
            protected,
        )


@dataclass(frozen=True)
class SignalResult:
    pid: int
    outcome: Outcome
    elapsed: float  # seconds from the first signal to the outcome being confirmed
    reason: str | None
    name: str
    cmdline: tuple[str, ...]
    username: str

    @property
    def ok(self) -> bool:
        return self.outcome in (
            Outcome.EXITED,
            Outcome.KILLED,
            Outcome.ALREADY_GONE,
            Outcome.PAUSED,
            Outcome.RESUMED,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "outcome": self.outcome.value,
            "elapsed": round(self.elapsed, 6),
            "reason": self.reason,
            "name": self.name,
            "cmdline": list(self.cmdline),
            "username": self.username,
        }


class Progress(NamedTuple):
    """Reported to on_progress while a terminate runs: phase is sigterm, waiting, exited, sigkill or done."""

    phase: str
    pids: tuple[int, ...]
    remaining: float  # seconds left of the grace


ProgressFn = Callable[[Progress], None]


# ---------------------------------------------------------------------------------------------- capture


def _normalize(targets: TargetLike) -> list[Target]:
    if isinstance(targets, (int, Target)):
        items: Iterable[int | Target] = [targets]
    else:
        items = targets
    out: list[Target] = []
    for t in items:
        if isinstance(t, bool) or not isinstance(t, (int, Target)):
            raise TypeError(f"target must be a pid or a Target, not {t!r}")
        out.append(t if isinstance(t, Target) else Target.pid(t))
    return out


def _split_cgroups(targets: TargetLike) -> tuple[list[Target], list[Target]]:
    """(process targets, cgroup targets)."""
    tlist = _normalize(targets)
    return [t for t in tlist if t.kind != "cgroup"], [t for t in tlist if t.kind == "cgroup"]


def _cgroup_members(t: Target, snap: Snapshot) -> tuple[list[Proc], str | None]:
    """The members of a cgroup target now (in the snapshot), and why the action would be refused (for all)."""
    from procguard.core import cgroups  # cgroups builds on this module: imported when a cgroup is named

    plan = cgroups.cgroup_plan(t.path)
    return [p for pid in plan.members if (p := snap.get(pid)) is not None], plan.refused


def resolve(targets: TargetLike, snapshot: Snapshot | None = None) -> list[Member]:
    """The dry run: every process the targets cover now, each once, with the reason it would be refused.
    A cgroup target that would be refused as a whole has that reason on every member."""
    snap = snapshot if snapshot is not None else process_snapshot()
    lineage = own_lineage()
    seen: set[int] = set()
    out: list[Member] = []
    for t in _normalize(targets):
        refused: str | None = None
        if t.kind == "cgroup":
            procs, refused = _cgroup_members(t, snap)
        elif t.kind == "pid":
            p = snap.get(t.id)
            procs = [p] if p is not None else []
            if p is None and t.id <= 1:
                # Never let a pid that can't be in the table slip through unrefused.
                out.append(Member(t.id, 0, 0.0, "?", (), "?", -1, "?", -1, t, protection_reason(None, t.id)))
                seen.add(t.id)
        elif t.kind == "group":
            procs = group_members(snap, t.id)
        else:
            procs = tree(snap, t.id)
        for p in procs:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            out.append(Member.of(p, t, refused or protection_reason(p, p.pid, lineage)))
    return out


# ---------------------------------------------------------------------------------------------- pinning


class Pinned:
    """A member with a handle that can't be confused with a later process of the same pid: a pidfd where the
    kernel has them, else checks of its start time before every signal. The one pinned-process handle (cgroup
    actions use it too): `pin()`, `send()`, `exited()`, `state()`, `finish()` into its `result`."""

    __slots__ = ("member", "id", "fd", "result", "signalled")

    def __init__(self, member: Member) -> None:
        self.member = member
        self.id = member.id  # every "is it still ours" check compares against this identity
        self.fd: int | None = None
        self.result: SignalResult | None = None
        self.signalled = False

    @property
    def pid(self) -> int:
        return self.member.pid

    def finish(self, outcome: Outcome, elapsed: float, reason: str | None = None) -> None:
        if self.result is None:
            m = self.member
            self.result = SignalResult(
                m.pid, outcome, max(0.0, elapsed), reason, m.name, m.cmdline, m.username
            )
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def same_process(self) -> bool:
        return self.id.alive()

    def pin(self) -> bool:
        """Open the pidfd and check it is our process; False (and already-gone) when it is not."""
        if USE_PIDFD:
            try:
                self.fd = os.pidfd_open(self.pid)
            except ProcessLookupError:
                self.finish(Outcome.ALREADY_GONE, 0.0, "exited before it was signalled")
                return False
            except OSError:
                self.fd = None  # e.g. seccomp: fall back to start-time checks
        if not self.same_process():
            self.finish(
                Outcome.ALREADY_GONE,
                0.0,
                "exited before it was signalled (pid reused)"
                if procfs.read_stat(self.pid)
                else "exited before it was signalled",
            )
            return False
        return True

    def send(self, sig: int) -> str | None:
        """Signal the pinned process. Returns None, 'gone' or 'denied'."""
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, sig)
            else:
                if not self.same_process():
                    return "gone"
                os.kill(self.pid, sig)
        except ProcessLookupError:
            return "gone"
        except PermissionError:
            return "denied"
        return None

    def exited(self) -> bool:
        """Exited (a zombie counts) or gone; never blocks."""
        if self.fd is not None:
            # poll, not select: pidfds can be numbered past select's 1024 limit in a big target set.
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            return bool(poller.poll(0))
        return not self.id.running()

    def state(self) -> str | None:
        st = procfs.read_stat(self.pid)
        if st is None or st.start_ticks != self.id.start_ticks:
            return None
        return st.state


def _pin_all(members: Sequence[Member]) -> tuple[list[Pinned], list[Pinned]]:
    """Returns (all, live): refused and vanished members are finished already."""
    all_: list[Pinned] = []
    live: list[Pinned] = []
    for m in members:
        p = Pinned(m)
        all_.append(p)
        if m.protected:
            p.finish(Outcome.REFUSED, 0.0, m.protected)
        elif m.state in DEAD_STATES:
            p.finish(Outcome.ALREADY_GONE, 0.0, "already exited (zombie)")
        elif p.pin():
            live.append(p)
    return all_, live


def pin_pid(pid: int, target: Target) -> Pinned | None:
    """Pin a process found by a rescan (not in a captured snapshot), reported under `target`; None when it is
    gone, a zombie or a kernel thread."""
    st = procfs.read_stat(pid)
    if st is None or st.state in DEAD_STATES or st.flags & procfs.PF_KTHREAD:
        return None
    cmd = procfs.read_cmdline(pid) or ()
    p = Pinned(_member_from_stat(pid, st, st.start_ticks, st.state, st.pgid, target, cmd))
    return p if p.pin() else None


def finish_denied_or_gone(p: Pinned, err: str | None, t0: float) -> bool:
    """Finish `p` when `err` (what `Pinned.send` returned) says it could not be signalled; True when it did."""
    if err == "denied":
        p.finish(
            Outcome.DENIED,
            time.monotonic() - t0,
            f"no permission to signal pid {p.pid} (owned by {p.member.username})",
        )
        return True
    if err == "gone":
        p.finish(Outcome.ALREADY_GONE, time.monotonic() - t0, "exited before it was signalled")
        return True
    return False


# ---------------------------------------------------------------------------------------------- one run


class _Run:
    """One action's state across its phases: the targets, when they were captured, every pinned member (those
    found by rescans are appended), the clock every elapsed time counts from, and who hears of progress."""

    __slots__ = ("targets", "capture_ticks", "pinned", "t0", "on_progress")

    def __init__(
        self, targets: list[Target], capture_ticks: int, pinned: list[Pinned], on_progress: ProgressFn | None
    ) -> None:
        self.targets = targets
        self.capture_ticks = capture_ticks
        self.pinned = pinned
        self.t0 = time.monotonic()
        self.on_progress = on_progress

    def has(self, kind: str) -> bool:
        return any(t.kind == kind for t in self.targets)

    def unfinished(self) -> list[Pinned]:
        return [p for p in self.pinned if p.result is None]

    def newcomers(self, rows: dict[int, _Row] | None = None) -> list[Pinned]:
        """Pinned members of group/tree targets that appeared since the capture (see _new_members)."""
        pids = _new_members(self.targets, self.pinned, self.capture_ticks, rows)
        return _pin_new(pids, _target_for_new(self.targets)) if pids else []


def _capture(
    targets: TargetLike, snapshot: Snapshot | None, on_progress: ProgressFn | None = None
) -> tuple[_Run, list[Pinned]]:
    """Phase 1: resolve and pin. Returns the run and its live members (refused or vanished ones are finished)."""
    tlist = _normalize(targets)
    capture_ticks = procfs.now_ticks()  # before resolving: anything born after this is a newcomer
    pinned, live = _pin_all(resolve(tlist, snapshot))
    return _Run(tlist, capture_ticks, pinned, on_progress), live


def send_each(procs: Iterable[Pinned], sig: int, t0: float) -> None:
    """Phase 2: send `sig` to each unfinished member, finishing those that are gone or denied (elapsed from t0)."""
    for p in procs:
        if p.result is None:
            finish_denied_or_gone(p, p.send(sig), t0)


def send_term(procs: Sequence[Pinned], t0: float) -> None:
    """Phase 2 of terminate: SIGTERM, then SIGCONT to stopped members (a stopped process keeps SIGTERM pending
    until it is continued). Marks them `signalled`."""
    for p in procs:
        if p.result is None and not finish_denied_or_gone(p, p.send(signal.SIGTERM), t0):
            p.signalled = True
    for p in procs:
        if p.result is None and p.state() in STOPPED_STATES:
            p.send(signal.SIGCONT)


# ---------------------------------------------------------------------------------------------- waiting


def wait_exits(
    pinned: list[Pinned],
    deadline: float,
    t0: float,
    outcome: Outcome,
    on_progress: ProgressFn | None = None,
    grace_end: float | None = None,
) -> list[Pinned]:
    """Phase 3: wait until every pinned process exits or the deadline passes; finish the exited ones with
    `outcome`. Returns the rest."""
    alive = [p for p in pinned if p.result is None]
    if not alive:
        return []
    if all(p.fd is not None for p in alive):
        return _wait_pidfds(alive, deadline, t0, outcome, on_progress, grace_end or deadline)
    return _wait_polling(alive, deadline, t0, outcome)


def _wait_pidfds(
    alive: list[Pinned],
    deadline: float,
    t0: float,
    outcome: Outcome,
    on_progress: ProgressFn | None,
    report_end: float,
) -> list[Pinned]:
    """Sleep in poll() on the pidfds; with a progress listener, wake every 0.25 s to report."""
    poller = select.poll()
    by_fd: dict[int, Pinned] = {}
    for p in alive:
        assert p.fd is not None
        poller.register(p.fd, select.POLLIN)
        by_fd[p.fd] = p
    tick = 0.25 if on_progress else None
    while by_fd:
        now = time.monotonic()
        if now >= deadline:
            break
        wait = deadline - now if tick is None else min(deadline - now, tick)
        events = poller.poll(max(0, int(wait * 1000) + 1))
        now = time.monotonic()
        done: list[int] = []
        for fd, _ev in events:
            hit = by_fd.pop(fd, None)
            if hit is not None:
                poller.unregister(fd)
                hit.finish(outcome, now - t0)
                done.append(hit.pid)
        if on_progress:
            _report_wait(on_progress, done, by_fd.values(), max(0.0, report_end - now))
    return list(by_fd.values())


def _report_wait(
    on_progress: ProgressFn, done: list[int], waiting: Iterable[Pinned], remaining: float
) -> None:
    if done:
        on_progress(Progress("exited", tuple(done), remaining))
    else:
        on_progress(Progress("waiting", tuple(p.pid for p in waiting), remaining))


def _wait_polling(alive: list[Pinned], deadline: float, t0: float, outcome: Outcome) -> list[Pinned]:
    """No pidfds: short adaptive waits on /proc, each member checked against its start time."""
    sleep = 0.0005
    while True:
        now = time.monotonic()
        for p in alive:
            if p.exited():
                p.finish(outcome, now - t0)
        alive = [p for p in alive if p.result is None]
        if not alive or now >= deadline:
            return alive
        time.sleep(min(sleep, max(0.0, deadline - now)))
        sleep = min(sleep * 2, 0.02)


def _await_grace(run: _Run, grace_end: float) -> None:
    """Phases 3 and 4 of terminate: wait for exits; when all are done inside the grace, rescan for members
    that appeared meanwhile and SIGTERM them too, within what is left of the grace."""
    while True:
        rest = wait_exits(run.pinned, grace_end, run.t0, Outcome.EXITED, run.on_progress, grace_end)
        if rest and time.monotonic() >= grace_end:
            return  # the kill phase rescans for newcomers: one scan after the grace, not two
        fresh = run.newcomers()
        late = time.monotonic() >= grace_end  # then the kill phase takes them, unsignalled so far
        if fresh and not late:
            send_term(fresh, run.t0)
        run.pinned.extend(fresh)
        if not fresh or late:
            return


# ---------------------------------------------------------------------------------------------- rescans


class _Row(NamedTuple):
    pid: int
    ppid: int
    pgid: int
    start_ticks: int
    state: str
    exit_code: int = 0


def _scan() -> dict[int, _Row]:
    """Just what a rescan needs (stat only): much cheaper than a full snapshot."""
    rows: dict[int, _Row] = {}
    for pid in procfs.list_pids():
        st = procfs.read_stat(pid)
        if st is not None:
            rows[pid] = _Row(pid, st.ppid, st.pgid, st.start_ticks, st.state, st.exit_code)
    return rows


def _captured_groups(
    targets: list[Target], rows: dict[int, _Row], known: set[int], capture_ticks: int
) -> set[int]:
    """The group targets whose pgid still names the captured group. A pgid that now leads a process born after
    the capture was reused (the captured group emptied, the number went to someone else): not ours."""
    out = set()
    for t in targets:
        if t.kind != "group":
            continue
        lead = rows.get(t.id)
        if lead is not None and lead.pid not in known and lead.start_ticks >= capture_ticks:
            continue
        out.add(t.id)
    return out


def _new_members(
    targets: list[Target], pinned: list[Pinned], capture_ticks: int, rows: dict[int, _Row] | None = None
) -> list[int]:
    """Phase 4: members of group/tree targets that were not captured: forked meanwhile, or reparented orphans.
    Never our own lineage, pid 0 or 1, or a zombie."""
    if not any(t.kind != "pid" for t in targets):
        return []
    if rows is None:
        rows = _scan()
    known = {p.pid for p in pinned}
    groups = _captured_groups(targets, rows, known, capture_ticks)
    found = {r.pid for r in rows.values() if r.pgid in groups and r.state not in DEAD_STATES}
    found |= _tree_newcomers([p for p in pinned if p.member.target.kind == "tree"], rows, capture_ticks)
    return _signallable(found - known, rows)


def _signallable(pids: set[int], rows: dict[int, _Row]) -> list[int]:
    """Never our own lineage, pid 0 or 1, or a zombie (nor a pid gone from the table)."""
    lineage = own_lineage()
    live = {pid for pid in pids if pid in rows and rows[pid].state not in DEAD_STATES}
    return sorted(pid for pid in live if pid > 1 and pid not in lineage)


def _tree_newcomers(tree_pins: list[Pinned], rows: dict[int, _Row], capture_ticks: int) -> set[int]:
    """Everything below the tree members now, plus their orphans: a member that exited left its children to
    init, so catch those born after the capture in one of the tree's own process groups (a shell's group it
    shares with the tree is safe: its children keep it)."""
    if not tree_pins:
        return set()
    members = {p.pid for p in tree_pins}
    cmap: dict[int, list[int]] = {}
    for r in rows.values():
        cmap.setdefault(r.ppid, []).append(r.pid)
    below = set(descendant_pids(cmap, members))
    member_pgids = {p.member.pgid for p in tree_pins}
    orphans = {
        r.pid
        for r in rows.values()
        if r.ppid == 1
        and r.pgid in member_pgids
        and r.start_ticks >= capture_ticks
        and r.pid not in members
        and r.pid not in below
    }
    return below | orphans


def _member_from_stat(
    pid: int,
    st: procfs.Stat | None,
    start_ticks: int,
    state: str,
    pgid: int,
    target: Target,
    cmdline: tuple[str, ...],
) -> Member:
    """A Member for a newcomer, from what /proc says of it now (it was not in the captured snapshot)."""
    uid = procfs.read_uid(pid)
    return Member(
        pid,
        start_ticks,
        procfs.create_time(start_ticks),
        st.comm if st else "",
        cmdline,
        username_of(uid) if uid is not None else "?",
        uid if uid is not None else -1,
        state,
        pgid,
        target,
        None,
    )


def _pin_new(pids: list[int], target: Target) -> list[Pinned]:
    return [p for pid in pids if (p := pin_pid(pid, target)) is not None]


def _target_for_new(targets: list[Target]) -> Target:
    """What a newcomer is reported under: the first group or tree target (only those have newcomers)."""
    return next((t for t in targets if t.kind != "pid"), targets[0])


def _dead_newcomers(run: _Run, rows: dict[int, _Row]) -> list[Pinned]:
    """Newcomers of the captured groups that are zombies now (the killpg ended them, or they exited during the
    grace), finished from their wait status: killed or exited."""
    known = {p.pid for p in run.pinned}
    groups = _captured_groups(run.targets, rows, known, run.capture_ticks)
    target = _target_for_new(run.targets)
    out = []
    for r in rows.values():
        if r.state != "Z" or r.pgid not in groups or r.pid in known or r.start_ticks < run.capture_ticks:
            continue
        p = Pinned(_member_from_stat(r.pid, procfs.read_stat(r.pid), r.start_ticks, "Z", r.pgid, target, ()))
        if r.exit_code & 0x7F == signal.SIGKILL:
            p.finish(Outcome.KILLED, time.monotonic() - run.t0)
        else:
            p.finish(Outcome.EXITED, time.monotonic() - run.t0, "appeared during the grace and exited")
        out.append(p)
    return out


# ---------------------------------------------------------------------------------------------- kill


def _stop_unsignalled(run: _Run) -> None:
    for p in run.pinned:
        if p.result is None and not p.signalled:
            finish_denied_or_gone(p, p.send(signal.SIGSTOP), run.t0)
            p.signalled = True


def _freeze_and_collect(run: _Run) -> None:
    """Stop every tree member and rescan until no new member appears, so a forking tree can't outrun us."""
    for _ in range(_MAX_FREEZE_ROUNDS):
        _stop_unsignalled(run)
        fresh = run.newcomers()
        if not fresh:
            return
        run.pinned.extend(fresh)


def _killpg_safe(pgid: int, pinned: list[Pinned]) -> bool:
    """killpg only hits what we mean to kill when (1) a pinned member is alive and in the group *now* (so the
    pgid is still the captured group, not a reused number), (2) no member of the group was refused (procguard,
    its shell or another protected process shares it: a script's `sleep & procguard kill --group $!`), and
    (3) no process of our own lineage is in the group at this moment."""
    in_group = [p for p in pinned if p.member.pgid == pgid]
    if any(p.result is not None and p.result.outcome is Outcome.REFUSED for p in in_group):
        return False
    if not any(_pinned_in_group_now(p, pgid) for p in in_group):
        return False
    return not any(_in_group_now(pid, pgid) for pid in own_lineage())


def _pinned_in_group_now(p: Pinned, pgid: int) -> bool:
    if p.result is not None or p.exited():
        return False
    st = procfs.read_stat(p.pid)
    return st is not None and st.pgid == pgid and st.start_ticks == p.id.start_ticks


def _in_group_now(pid: int, pgid: int) -> bool:
    st = procfs.read_stat(pid)
    return st is not None and st.pgid == pgid


def _killpg_groups(run: _Run) -> None:
    """Groups die at once with killpg, when that is safe (see _killpg_safe). Otherwise every member is killed
    one by one, which the rescan for newcomers completes."""
    for t in run.targets:
        if t.kind == "group" and _killpg_safe(t.id, run.pinned):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(t.id, signal.SIGKILL)


def _kill_phase(run: _Run) -> None:
    """Phases 5 and 6: SIGKILL whatever is left and confirm each death."""
    _killpg_groups(run)
    if run.has("tree"):
        for p in run.pinned:
            p.signalled = False
        _freeze_and_collect(run)
        _sigkill_and_confirm(run.pinned, run.t0, run.on_progress)
        return
    # The captured members first: their confirmed death is what the caller waits for, and a rescan of the
    # whole table costs tens of ms at a few thousand processes. Members that appeared meanwhile were already
    # hit by the killpg above (group targets); the rescan finds them to confirm and report them.
    _sigkill_and_confirm(run.pinned, run.t0, run.on_progress)
    if run.has("group"):
        _kill_group_newcomers(run)


def _kill_group_newcomers(run: _Run) -> None:
    rows = _scan()
    # Newcomers the killpg already ended are zombies by now: report them from their wait status.
    run.pinned.extend(_dead_newcomers(run, rows))
    fresh = run.newcomers(rows)
    if fresh:
        run.pinned.extend(fresh)
        _sigkill_and_confirm(fresh, run.t0, run.on_progress)


def _sigkill_and_confirm(pinned: list[Pinned], t0: float, on_progress: ProgressFn | None) -> None:
    survivors = [p for p in pinned if p.result is None]
    if not survivors:
        return
    killed: list[Pinned] = []
    for p in survivors:
        if p.exited():
            # It outlived the grace, so what ended it was our killpg (or the freeze): it was killed.
            p.finish(Outcome.KILLED, time.monotonic() - t0)
            continue
        err = p.send(signal.SIGKILL)
        if not finish_denied_or_gone(p, err, t0):
            killed.append(p)
    if on_progress:
        on_progress(Progress("sigkill", tuple(p.pid for p in killed), 0.0))
    rest = wait_exits(killed, time.monotonic() + KILL_CONFIRM_TIMEOUT, t0, Outcome.KILLED, None)
    finish_survivors(rest, t0, "SIGKILL", KILL_CONFIRM_TIMEOUT)


def finish_survivors(pinned: Iterable[Pinned], t0: float, after: str, timeout: float) -> None:
    """Phase 6, the end of a kill: members still alive `timeout` seconds after `after` (SIGKILL, cgroup.kill)
    are reported survived, with their state (D: uninterruptible sleep, which no signal ends)."""
    for p in pinned:
        if p.result is None:
            p.finish(
                Outcome.SURVIVED,
                time.monotonic() - t0,
                f"still alive {timeout:g} s after {after} (state {p.state() or '?'}: uninterruptible sleep?)",
            )


def _results(pinned: list[Pinned]) -> list[SignalResult]:
    out = []
    for p in pinned:
        p.close()
        assert p.result is not None
        out.append(p.result)
    return out


# ---------------------------------------------------------------------------------------------- actions


def terminate(
    targets: TargetLike,
    grace: float = 5.0,
    *,
    snapshot: Snapshot | None = None,
    on_progress: ProgressFn | None = None,
) -> list[SignalResult]:
    """SIGTERM every member (SIGCONT to stopped ones), wait up to `grace` seconds, then SIGKILL survivors.

    Group and tree targets are rescanned after the grace for members that appeared meanwhile; a tree is
    frozen (SIGSTOP) before the SIGKILL so it can't fork past us. A cgroup target (after the others) gets its
    members' SIGTERM, newcomers of the grace too, and cgroup.kill after it (see `cgroups.terminate_cgroup`).
    Returns one result per process.
    """
    if grace < 0:
        raise ValueError(f"grace must be >= 0, not {grace}")
    procs, cgs = _split_cgroups(targets)
    out = _terminate(procs, grace, snapshot, on_progress) if procs or not cgs else []
    return out + _on_cgroups("terminate", cgs, grace, on_progress)


def _on_cgroups(
    action: str, cgs: list[Target], grace: float = 0.0, on_progress: ProgressFn | None = None
) -> list[SignalResult]:
    """Run an action on each cgroup target through procguard.core.cgroups; its results, in order."""
    if not cgs:
        return []
    from procguard.core import cgroups  # cgroups builds on this module: imported when a cgroup is named

    out: list[SignalResult] = []
    for t in cgs:
        if action == "terminate":
            r = cgroups.terminate_cgroup(t.path, grace, on_progress=on_progress)
        elif action == "kill":
            r = cgroups.kill_cgroup(t.path, on_progress=on_progress)
        elif action == "pause":
            r = cgroups.freeze_cgroup(t.path)
        else:
            r = cgroups.thaw_cgroup(t.path)
        out.extend(r.results)
    return out


def _terminate(
    targets: list[Target], grace: float, snapshot: Snapshot | None, on_progress: ProgressFn | None
) -> list[SignalResult]:
    run, live = _capture(targets, snapshot, on_progress)
    send_term(live, run.t0)
    grace_end = run.t0 + grace
    if on_progress:
        on_progress(Progress("sigterm", tuple(p.pid for p in live if p.result is None), grace))
    _await_grace(run, grace_end)
    if run.unfinished():
        _kill_phase(run)
    if on_progress:
        on_progress(Progress("done", tuple(p.pid for p in run.pinned), 0.0))
    return _results(run.pinned)


def kill(
    targets: TargetLike, *, snapshot: Snapshot | None = None, on_progress: ProgressFn | None = None
) -> list[SignalResult]:
    """SIGKILL every member (trees frozen first, groups with killpg, cgroups with cgroup.kill) and confirm
    death."""
    procs, cgs = _split_cgroups(targets)
    out: list[SignalResult] = []
    if procs or not cgs:
        run, _live = _capture(procs, snapshot, on_progress)
        _kill_phase(run)
        out = _results(run.pinned)
    return out + _on_cgroups("kill", cgs, on_progress=on_progress)


def _stop_or_continue(targets: TargetLike, snapshot: Snapshot | None, sig: int) -> list[SignalResult]:
    procs, cgs = _split_cgroups(targets)
    out = _stop_or_continue_procs(procs, snapshot, sig) if procs or not cgs else []
    return out + _on_cgroups("pause" if sig == signal.SIGSTOP else "resume", cgs)


def _stop_or_continue_procs(targets: list[Target], snapshot: Snapshot | None, sig: int) -> list[SignalResult]:
    run, live = _capture(targets, snapshot)
    stopping = sig == signal.SIGSTOP
    if stopping and run.has("tree"):
        _freeze_and_collect(run)
    else:
        send_each(live, sig, run.t0)
        if stopping:
            _stop_newcomers(run)
    confirm_states(run.pinned, stopping, run.t0)
    return _results(run.pinned)


def _stop_newcomers(run: _Run) -> None:
    """Members forked meanwhile would run on unstopped: stop them too, until no new one appears."""
    for _ in range(_MAX_FREEZE_ROUNDS):
        fresh = run.newcomers()
        if not fresh:
            return
        send_each(fresh, signal.SIGSTOP, run.t0)
        run.pinned.extend(fresh)


def confirm_states(
    pinned: Iterable[Pinned], want_stopped: bool, t0: float, timeout: float = STOP_CONFIRM_TIMEOUT
) -> bool:
    """Phase 6 of pause/resume: wait until /proc shows every unfinished member stopped (or running again), and
    finish it paused (resumed); after `timeout` seconds the rest are survived. True when all were confirmed."""
    pending = [p for p in pinned if p.result is None]
    deadline = time.monotonic() + timeout
    sleep = 0.0002
    while pending:
        now = time.monotonic()
        pending = [p for p in pending if not _state_confirmed(p, want_stopped, now - t0)]
        if not pending:
            return True
        if now >= deadline:
            _finish_unconfirmed(pending, want_stopped, now - t0, timeout)
            return False
        time.sleep(sleep)
        sleep = min(sleep * 2, 0.01)
    return True


def _state_confirmed(p: Pinned, want_stopped: bool, elapsed: float) -> bool:
    st = p.state()
    if st is None or st in DEAD_STATES:
        p.finish(Outcome.ALREADY_GONE, elapsed, "exited meanwhile")
    elif (st in STOPPED_STATES) == want_stopped:
        p.finish(Outcome.PAUSED if want_stopped else Outcome.RESUMED, elapsed)
    return p.result is not None


def _finish_unconfirmed(pending: list[Pinned], want_stopped: bool, elapsed: float, timeout: float) -> None:
    why = "did not stop" if want_stopped else "is still stopped (traced by a debugger?)"
    for p in pending:
        st = p.state()
        p.finish(Outcome.SURVIVED, elapsed, f"pid {p.pid} {why} after {timeout:g} s (state {st or '?'})")


def pause(targets: TargetLike, *, snapshot: Snapshot | None = None) -> list[SignalResult]:
    """SIGSTOP every member (a tree is rescanned until no new member appears); confirmed in /proc. A cgroup is
    frozen with cgroup.freeze (v2; confirmed by cgroup.events), else the v1 freezer, else SIGSTOP rounds."""
    return _stop_or_continue(targets, snapshot, signal.SIGSTOP)


def resume(targets: TargetLike, *, snapshot: Snapshot | None = None) -> list[SignalResult]:
    """SIGCONT every member; confirmed in /proc. A cgroup is thawed (and its SIGSTOPped members continued)."""
    return _stop_or_continue(targets, snapshot, signal.SIGCONT)


# ---------------------------------------------------------------------------------------------- dispatch

# The actions by the names the CLI commands and the cluster agents use; "terminate" is accepted for "term".
ACTIONS: tuple[str, ...] = ("term", "kill", "pause", "resume")
_ACTION_ALIASES = {"terminate": "term"}
Scope = Literal["pid", "group", "tree"]


def build_targets(pids: Iterable[int], scope: Scope, snapshot: Snapshot) -> list[Target]:
    """Pids as the user named them, checked against `snapshot`, turned into targets of `scope`: each pid alone,
    the process group of each pid (a pgid whose leader has exited counts too), or each pid's tree.

    ValueError names the first pid that is not in the table."""
    out: list[Target] = []
    for pid in pids:
        proc = snapshot.get(pid)
        if scope == "group":
            if proc is not None:
                out.append(Target.group(proc.pgid))
            elif pid in snapshot.group_map:
                out.append(Target.group(pid))  # a pgid whose leader has exited
            else:
                raise ValueError(f"no process or process group with id {pid}")
            continue
        if proc is None:
            raise ValueError(f"no process with pid {pid}")
        out.append(Target.tree(pid) if scope == "tree" else Target.pid(pid))
    return out


def drop_changed(
    targets: Iterable[Target], snapshot: Snapshot, expect: Mapping[int, int]
) -> tuple[list[Target], list[SignalResult]]:
    """(targets kept, already-gone results): a pid or tree target whose process in `snapshot` has another start
    time than `expect` (pid -> start ticks, as the caller's dry run saw them) is a reused or ended pid: it is
    not signalled, it is reported gone."""
    kept: list[Target] = []
    gone: list[SignalResult] = []
    for t in targets:
        want = expect.get(t.id) if t.kind in ("pid", "tree") else None
        now = snapshot.get(t.id)
        if want is not None and (now is None or now.start_ticks != want):
            reason = f"pid {t.id} ended since the dry run" + (
                " (the pid now names another process: not signalled)" if now is not None else ""
            )
            gone.append(SignalResult(t.id, Outcome.ALREADY_GONE, 0.0, reason, "", (), "?"))
            continue
        kept.append(t)
    return kept, gone


def action_name(action: str) -> str:
    """The action's canonical name (one of ACTIONS); ValueError names an unknown one."""
    name = _ACTION_ALIASES.get(action, action)
    if name not in ACTIONS:
        raise ValueError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
    return name


def run_action(
    action: str,
    targets: TargetLike,
    *,
    grace: float = 5.0,
    snapshot: Snapshot | None = None,
    on_progress: ProgressFn | None = None,
    expect: Mapping[int, int] | None = None,
) -> list[SignalResult]:
    """Run one action by name ("term" or "terminate", "kill", "pause", "resume") on `targets`: the one dispatch
    the CLI, the cluster agents and the app share. `grace` is terminate's; `on_progress` reaches terminate and
    kill. `expect` (pid -> start ticks as a dry run saw them): pid and tree targets whose process changed since
    are not signalled but reported already gone, first (see `drop_changed`). ValueError for an unknown action.
    """
    name = action_name(action)
    gone: list[SignalResult] = []
    if expect:
        snapshot = snapshot if snapshot is not None else process_snapshot()
        targets, gone = drop_changed(_normalize(targets), snapshot, expect)
        if not targets:
            return gone
    if name == "term":
        results = terminate(targets, grace, snapshot=snapshot, on_progress=on_progress)
    elif name == "kill":
        results = kill(targets, snapshot=snapshot, on_progress=on_progress)
    elif name == "pause":
        results = pause(targets, snapshot=snapshot)
    else:
        results = resume(targets, snapshot=snapshot)
    return gone + results


def summarize(results: Sequence[SignalResult]) -> str:
    """One line for people, e.g. `4 ended: 3 exited on SIGTERM, 1 killed after 5.0 s`."""
    by: dict[Outcome, list[SignalResult]] = {}
    for r in results:
        by.setdefault(r.outcome, []).append(r)
    parts: list[str] = []
    ended = (
        len(by.get(Outcome.EXITED, []))
        + len(by.get(Outcome.KILLED, []))
        + len(by.get(Outcome.ALREADY_GONE, []))
    )
    if Outcome.EXITED in by:
        parts.append(f"{len(by[Outcome.EXITED])} exited on SIGTERM")
    if Outcome.KILLED in by:
        parts.append(
            f"{len(by[Outcome.KILLED])} killed after {max(r.elapsed for r in by[Outcome.KILLED]):.1f} s"
        )
    if Outcome.ALREADY_GONE in by:
        parts.append(f"{len(by[Outcome.ALREADY_GONE])} already gone")
    for o, label in (
        (Outcome.PAUSED, "paused"),
        (Outcome.RESUMED, "resumed"),
        (Outcome.DENIED, "denied"),
        (Outcome.REFUSED, "refused"),
        (Outcome.SURVIVED, "survived"),
        (Outcome.UNREACHABLE, "unreachable"),
    ):
        if o in by:
            parts.append(f"{len(by[o])} {label}")
    head = f"{ended} ended: " if ended else ""
    return head + ", ".join(parts) if parts else "nothing to do"


__all__ = [
    "ACTIONS",
    "Outcome",
    "Target",
    "Member",
    "SignalResult",
    "Progress",
    "Pinned",
    "Scope",
    "action_name",
    "build_targets",
    "drop_changed",
    "resolve",
    "run_action",
    "terminate",
    "kill",
    "pause",
    "resume",
    "summarize",
    "pin_pid",
    "send_each",
    "send_term",
    "wait_exits",
    "finish_survivors",
    "confirm_states",
    "finish_denied_or_gone",
]
