"""Signalling processes, groups and trees safely: terminate with SIGTERM -> SIGKILL escalation, kill, pause,
resume.

Every target set is captured first and each member pinned (a pidfd opened and checked against the start time
the snapshot saw), so a pid reused by the time we signal is never hit. Exits are awaited on the pidfds, which
turn readable at exit, before anyone reaps: zombies count as dead.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal, NamedTuple

from procguard.core import procfs
from procguard.core.protect import own_lineage, protection_reason
from procguard.core.snapshot import Proc, Snapshot, process_snapshot, username_of
from procguard.core.views import group_members, tree

HAS_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")
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

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Target:
    """What to act on: one pid, the process group `id`, or the tree rooted at pid `id`."""

    kind: Literal["pid", "group", "tree"]
    id: int

    @classmethod
    def pid(cls, pid: int) -> Target:
        return cls("pid", pid)

    @classmethod
    def group(cls, pgid: int) -> Target:
        return cls("group", pgid)

    @classmethod
    def tree(cls, pid: int) -> Target:
        return cls("tree", pid)

    def __str__(self) -> str:
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

    @classmethod
    def of(cls, p: Proc, target: Target, protected: str | None = None) -> Member:
        return cls(p.pid, p.start_ticks, p.create_time, p.name, p.cmdline, p.username, p.uid, p.state,
                   p.pgid, target, protected)


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
        return self.outcome in (Outcome.EXITED, Outcome.KILLED, Outcome.ALREADY_GONE, Outcome.PAUSED,
                                Outcome.RESUMED)

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "outcome": self.outcome.value, "elapsed": round(self.elapsed, 6),
                "reason": self.reason, "name": self.name, "cmdline": list(self.cmdline),
                "username": self.username}


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


def resolve(targets: TargetLike, snapshot: Snapshot | None = None) -> list[Member]:
    """The dry run: every process the targets cover now, each once, with the reason it would be refused."""
    snap = snapshot if snapshot is not None else process_snapshot()
    lineage = own_lineage()
    seen: set[int] = set()
    out: list[Member] = []
    for t in _normalize(targets):
        if t.kind == "pid":
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
            out.append(Member.of(p, t, protection_reason(p, p.pid, lineage)))
    return out


# ---------------------------------------------------------------------------------------------- pinning


class _Pinned:
    """A member with a handle that can't be confused with a later process of the same pid."""

    __slots__ = ("member", "fd", "result", "signalled")

    def __init__(self, member: Member) -> None:
        self.member = member
        self.fd: int | None = None
        self.result: SignalResult | None = None
        self.signalled = False

    @property
    def pid(self) -> int:
        return self.member.pid

    def finish(self, outcome: Outcome, elapsed: float, reason: str | None = None) -> None:
        if self.result is None:
            m = self.member
            self.result = SignalResult(m.pid, outcome, max(0.0, elapsed), reason, m.name, m.cmdline, m.username)
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def same_process(self) -> bool:
        st = procfs.read_stat(self.pid)
        return st is not None and st.start_ticks == self.member.start_ticks

    def pin(self) -> bool:
        """Open the pidfd and check it is our process; False (and already-gone) when it is not."""
        if HAS_PIDFD:
            try:
                self.fd = os.pidfd_open(self.pid)
            except ProcessLookupError:
                self.finish(Outcome.ALREADY_GONE, 0.0, "exited before it was signalled")
                return False
            except OSError:
                self.fd = None  # e.g. seccomp: fall back to start-time checks
        if not self.same_process():
            self.finish(Outcome.ALREADY_GONE, 0.0, "exited before it was signalled (pid reused)"
                        if procfs.read_stat(self.pid) else "exited before it was signalled")
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
        st = procfs.read_stat(self.pid)
        return st is None or st.start_ticks != self.member.start_ticks or st.state in ("Z", "X")

    def state(self) -> str | None:
        st = procfs.read_stat(self.pid)
        if st is None or st.start_ticks != self.member.start_ticks:
            return None
        return st.state


def _pin_all(members: Sequence[Member]) -> tuple[list[_Pinned], list[_Pinned]]:
    """Returns (all, live): refused and vanished members are finished already."""
    all_: list[_Pinned] = []
    live: list[_Pinned] = []
    for m in members:
        p = _Pinned(m)
        all_.append(p)
        if m.protected:
            p.finish(Outcome.REFUSED, 0.0, m.protected)
        elif m.state in ("Z", "X"):
            p.finish(Outcome.ALREADY_GONE, 0.0, "already exited (zombie)")
        elif p.pin():
            live.append(p)
    return all_, live


def _wait_exits(pinned: list[_Pinned], deadline: float, t0: float, outcome: Outcome,
                on_progress: ProgressFn | None, grace_end: float | None = None) -> list[_Pinned]:
    """Wait until every pinned process exits or the deadline passes; finish the exited ones. Returns the rest."""
    alive = [p for p in pinned if p.result is None]
    if not alive:
        return []
    tick = 0.25 if on_progress else None
    if all(p.fd is not None for p in alive):
        poller = select.poll()
        by_fd = {}
        for p in alive:
            assert p.fd is not None
            poller.register(p.fd, select.POLLIN)
            by_fd[p.fd] = p
        while by_fd:
            now = time.monotonic()
            if now >= deadline:
                break
            wait = deadline - now if tick is None else min(deadline - now, tick)
            events = poller.poll(max(0, int(wait * 1000) + 1))
            now = time.monotonic()
            done: list[int] = []
            for fd, _ev in events:
                p = by_fd.pop(fd, None)
                if p is not None:
                    poller.unregister(fd)
                    p.finish(outcome, now - t0)
                    done.append(p.pid)
            if on_progress:
                if done:
                    on_progress(Progress("exited", tuple(done), max(0.0, (grace_end or deadline) - now)))
                else:
                    on_progress(Progress("waiting", tuple(p.pid for p in by_fd.values()),
                                         max(0.0, (grace_end or deadline) - now)))
        return list(by_fd.values())
    # No pidfds: short adaptive waits on /proc.
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


def _captured_groups(targets: list[Target], rows: dict[int, _Row], known: set[int], capture_ticks: int) -> set[int]:
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


def _new_members(targets: list[Target], pinned: list[_Pinned], capture_ticks: int,
                 rows: dict[int, _Row] | None = None) -> list[int]:
    """Members of group/tree targets that were not captured: forked meanwhile, or reparented orphans."""
    if not any(t.kind != "pid" for t in targets):
        return []
    if rows is None:
        rows = _scan()
    known = {p.pid for p in pinned}
    found: set[int] = set()
    groups = _captured_groups(targets, rows, known, capture_ticks)
    for r in rows.values():
        if r.pgid in groups and r.pid not in known and r.state not in ("Z", "X"):
            found.add(r.pid)
    tree_pins = [p for p in pinned if p.member.target.kind == "tree"]
    if tree_pins:
        members = {p.pid for p in tree_pins}
        member_pgids = {p.member.pgid for p in tree_pins}
        cmap: dict[int, list[int]] = {}
        for r in rows.values():
            cmap.setdefault(r.ppid, []).append(r.pid)
        frontier = list(members)
        seen = set(members)
        while frontier:
            nxt = []
            for pid in frontier:
                for c in cmap.get(pid, ()):
                    if c not in seen:
                        seen.add(c)
                        nxt.append(c)
            frontier = nxt
        found.update(seen - members)
        # A member that exited left its children to init: catch those born after capture in one of the
        # tree's own process groups (a shell's group it shares with the tree is safe: its children keep it).
        for r in rows.values():
            if (r.ppid == 1 and r.pid not in seen and r.pgid in member_pgids
                    and r.start_ticks >= capture_ticks):
                found.add(r.pid)
    lineage = own_lineage()
    return sorted(pid for pid in found - known if pid not in lineage and pid > 1
                  and rows.get(pid, _Row(0, 0, 0, 0, "Z")).state not in ("Z", "X"))


def _pin_new(pids: list[int], targets: list[Target], snap_target: Target) -> list[_Pinned]:
    out: list[_Pinned] = []
    for pid in pids:
        st = procfs.read_stat(pid)
        if st is None:
            continue
        cmd = procfs.read_cmdline(pid) or ()
        uid = procfs.read_uid(pid)
        m = Member(pid, st.start_ticks, procfs.create_time(st.start_ticks), st.comm, cmd,
                   username_of(uid) if uid is not None else "?", uid if uid is not None else -1, st.state,
                   st.pgid, snap_target, None)
        p = _Pinned(m)
        if st.flags & procfs.PF_KTHREAD:
            continue
        if p.pin():
            out.append(p)
    return out


def _target_for_new(targets: list[Target]) -> Target:
    return next((t for t in targets if t.kind != "pid"), targets[0])


# ---------------------------------------------------------------------------------------------- actions


def _finish_denied_or_gone(p: _Pinned, err: str | None, t0: float) -> bool:
    if err == "denied":
        p.finish(Outcome.DENIED, time.monotonic() - t0, f"no permission to signal pid {p.pid} "
                 f"(owned by {p.member.username})")
        return True
    if err == "gone":
        p.finish(Outcome.ALREADY_GONE, time.monotonic() - t0, "exited before it was signalled")
        return True
    return False


def _freeze_and_collect(targets: list[Target], pinned: list[_Pinned], capture_ticks: int, t0: float) -> None:
    """Stop every tree member and rescan until no new member appears, so a forking tree can't outrun us."""
    new_target = _target_for_new(targets)
    for _ in range(_MAX_FREEZE_ROUNDS):
        for p in pinned:
            if p.result is None and not p.signalled:
                err = p.send(signal.SIGSTOP)
                _finish_denied_or_gone(p, err, t0)
                p.signalled = True
        fresh = _pin_new(_new_members(targets, pinned, capture_ticks), targets, new_target)
        if not fresh:
            return
        pinned.extend(fresh)


def _kill_phase(targets: list[Target], pinned: list[_Pinned], t0: float, capture_ticks: int,
                on_progress: ProgressFn | None) -> None:
    # Groups die at once with killpg, when that is safe: see _killpg_safe. Otherwise every member is killed
    # one by one below, which the rescan for newcomers completes.
    for t in targets:
        if t.kind == "group" and _killpg_safe(t.id, pinned):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(t.id, signal.SIGKILL)
    if any(t.kind == "tree" for t in targets):
        for p in pinned:
            p.signalled = False
        _freeze_and_collect(targets, pinned, capture_ticks, t0)
        _sigkill_and_confirm(pinned, t0, on_progress)
        return
    # The captured members first: their confirmed death is what the caller waits for, and a rescan of the
    # whole table costs tens of ms at a few thousand processes. Members that appeared meanwhile were already
    # hit by the killpg above (group targets); the rescan finds them to confirm and report them.
    _sigkill_and_confirm(pinned, t0, on_progress)
    if not any(t.kind == "group" for t in targets):
        return
    rows = _scan()
    target = _target_for_new(targets)
    # Newcomers the killpg already ended are zombies by now: report them from their wait status.
    pinned.extend(_dead_newcomers(targets, pinned, capture_ticks, rows, target, t0))
    fresh = _pin_new(_new_members(targets, pinned, capture_ticks, rows), targets, target)
    if fresh:
        pinned.extend(fresh)
        _sigkill_and_confirm(fresh, t0, on_progress)


def _dead_newcomers(targets: list[Target], pinned: list[_Pinned], capture_ticks: int, rows: dict[int, _Row],
                    target: Target, t0: float) -> list[_Pinned]:
    known = {p.pid for p in pinned}
    groups = _captured_groups(targets, rows, known, capture_ticks)
    out = []
    for r in rows.values():
        if r.state != "Z" or r.pgid not in groups or r.pid in known or r.start_ticks < capture_ticks:
            continue
        st = procfs.read_stat(r.pid)
        uid = procfs.read_uid(r.pid)
        m = Member(r.pid, r.start_ticks, procfs.create_time(r.start_ticks), st.comm if st else "", (),
                   username_of(uid) if uid is not None else "?", uid if uid is not None else -1, "Z", r.pgid,
                   target, None)
        p = _Pinned(m)
        if r.exit_code & 0x7F == signal.SIGKILL:
            p.finish(Outcome.KILLED, time.monotonic() - t0)
        else:
            p.finish(Outcome.EXITED, time.monotonic() - t0, "appeared during the grace and exited")
        out.append(p)
    return out


def _killpg_safe(pgid: int, pinned: list[_Pinned]) -> bool:
    """killpg only hits what we mean to kill when (1) a pinned member is alive and in the group *now* (so the
    pgid is still the captured group, not a reused number), (2) no member of the group was refused (procguard,
    its shell or another protected process shares it: a script's `sleep & procguard kill --group $!`), and
    (3) no process of our own lineage is in the group at this moment."""
    alive_in_group = False
    for p in pinned:
        if p.member.pgid != pgid:
            continue
        if p.result is not None and p.result.outcome is Outcome.REFUSED:
            return False
        if p.result is None and not p.exited():
            st = procfs.read_stat(p.pid)
            if st is not None and st.pgid == pgid and st.start_ticks == p.member.start_ticks:
                alive_in_group = True
    if not alive_in_group:
        return False
    for pid in own_lineage():
        st = procfs.read_stat(pid)
        if st is not None and st.pgid == pgid:
            return False
    return True


def _sigkill_and_confirm(pinned: list[_Pinned], t0: float, on_progress: ProgressFn | None) -> None:
    survivors = [p for p in pinned if p.result is None]
    if not survivors:
        return
    killed: list[_Pinned] = []
    for p in survivors:
        if p.exited():
            # It outlived the grace, so what ended it was our killpg (or the freeze): it was killed.
            p.finish(Outcome.KILLED, time.monotonic() - t0)
            continue
        err = p.send(signal.SIGKILL)
        if not _finish_denied_or_gone(p, err, t0):
            killed.append(p)
    if on_progress:
        on_progress(Progress("sigkill", tuple(p.pid for p in killed), 0.0))
    rest = _wait_exits(killed, time.monotonic() + KILL_CONFIRM_TIMEOUT, t0, Outcome.KILLED, None)
    for p in rest:
        st = p.state()
        p.finish(Outcome.SURVIVED, time.monotonic() - t0,
                 f"still alive {KILL_CONFIRM_TIMEOUT:g} s after SIGKILL (state {st or '?'}: "
                 "uninterruptible sleep?)")


def _results(pinned: list[_Pinned]) -> list[SignalResult]:
    out = []
    for p in pinned:
        p.close()
        assert p.result is not None
        out.append(p.result)
    return out


def terminate(targets: TargetLike, grace: float = 5.0, *, snapshot: Snapshot | None = None,
              on_progress: ProgressFn | None = None) -> list[SignalResult]:
    """SIGTERM every member (SIGCONT to stopped ones), wait up to `grace` seconds, then SIGKILL survivors.

    Group and tree targets are rescanned after the grace for members that appeared meanwhile; a tree is
    frozen (SIGSTOP) before the SIGKILL so it can't fork past us. Returns one result per process.
    """
    if grace < 0:
        raise ValueError(f"grace must be >= 0, not {grace}")
    tlist = _normalize(targets)
    capture_ticks = procfs.now_ticks()
    members = resolve(tlist, snapshot)
    pinned, live = _pin_all(members)
    t0 = time.monotonic()
    for p in live:
        err = p.send(signal.SIGTERM)
        if not _finish_denied_or_gone(p, err, t0):
            p.signalled = True
    for p in live:
        # A stopped process keeps SIGTERM pending until it is continued.
        if p.result is None and p.state() in ("T", "t"):
            p.send(signal.SIGCONT)
    grace_end = t0 + grace
    if on_progress:
        on_progress(Progress("sigterm", tuple(p.pid for p in live if p.result is None), grace))
    new_target = _target_for_new(tlist)
    while True:
        rest = _wait_exits(pinned, grace_end, t0, Outcome.EXITED, on_progress, grace_end)
        if rest and time.monotonic() >= grace_end:
            break  # the kill phase rescans for newcomers: one scan after the grace, not two
        # Members that appeared meanwhile get their SIGTERM too, within what is left of the grace.
        fresh = _pin_new(_new_members(tlist, pinned, capture_ticks), tlist, new_target) if tlist else []
        if not fresh or time.monotonic() >= grace_end:
            pinned.extend(fresh)
            break
        for p in fresh:
            err = p.send(signal.SIGTERM)
            if not _finish_denied_or_gone(p, err, t0):
                p.signalled = True
                if p.state() in ("T", "t"):
                    p.send(signal.SIGCONT)
        pinned.extend(fresh)
        if not rest and all(p.result is not None for p in pinned):
            continue
    if any(p.result is None for p in pinned):
        _kill_phase(tlist, pinned, t0, capture_ticks, on_progress)
    if on_progress:
        on_progress(Progress("done", tuple(p.pid for p in pinned), 0.0))
    return _results(pinned)


def kill(targets: TargetLike, *, snapshot: Snapshot | None = None,
         on_progress: ProgressFn | None = None) -> list[SignalResult]:
    """SIGKILL every member (trees frozen first, groups with killpg) and confirm death."""
    tlist = _normalize(targets)
    capture_ticks = procfs.now_ticks()
    pinned, _live = _pin_all(resolve(tlist, snapshot))
    t0 = time.monotonic()
    _kill_phase(tlist, pinned, t0, capture_ticks, on_progress)
    return _results(pinned)


def _stop_or_continue(targets: TargetLike, snapshot: Snapshot | None, sig: int) -> list[SignalResult]:
    tlist = _normalize(targets)
    capture_ticks = procfs.now_ticks()
    pinned, live = _pin_all(resolve(tlist, snapshot))
    t0 = time.monotonic()
    if sig == signal.SIGSTOP and any(t.kind == "tree" for t in tlist):
        _freeze_and_collect(tlist, pinned, capture_ticks, t0)
    else:
        for p in live:
            _finish_denied_or_gone(p, p.send(sig), t0)
        if sig == signal.SIGSTOP:
            # Members forked meanwhile would run on unstopped.
            for _ in range(_MAX_FREEZE_ROUNDS):
                fresh = _pin_new(_new_members(tlist, pinned, capture_ticks), tlist, _target_for_new(tlist))
                if not fresh:
                    break
                for p in fresh:
                    _finish_denied_or_gone(p, p.send(sig), t0)
                pinned.extend(fresh)
    want_stopped = sig == signal.SIGSTOP
    pending = [p for p in pinned if p.result is None]
    deadline = time.monotonic() + STOP_CONFIRM_TIMEOUT
    sleep = 0.0002
    while pending:
        now = time.monotonic()
        for p in pending:
            st = p.state()
            if st is None or st in ("Z", "X"):
                p.finish(Outcome.ALREADY_GONE, now - t0, "exited meanwhile")
            elif (st in ("T", "t")) == want_stopped:
                p.finish(Outcome.PAUSED if want_stopped else Outcome.RESUMED, now - t0)
        pending = [p for p in pending if p.result is None]
        if not pending:
            break
        if now >= deadline:
            for p in pending:
                st = p.state()
                why = ("did not stop" if want_stopped else "is still stopped (traced by a debugger?)")
                p.finish(Outcome.SURVIVED, now - t0, f"pid {p.pid} {why} after {STOP_CONFIRM_TIMEOUT:g} s "
                         f"(state {st or '?'})")
            break
        time.sleep(sleep)
        sleep = min(sleep * 2, 0.01)
    return _results(pinned)


def pause(targets: TargetLike, *, snapshot: Snapshot | None = None) -> list[SignalResult]:
    """SIGSTOP every member (a tree is rescanned until no new member appears); confirmed in /proc."""
    return _stop_or_continue(targets, snapshot, signal.SIGSTOP)


def resume(targets: TargetLike, *, snapshot: Snapshot | None = None) -> list[SignalResult]:
    """SIGCONT every member; confirmed in /proc."""
    return _stop_or_continue(targets, snapshot, signal.SIGCONT)


def summarize(results: Sequence[SignalResult]) -> str:
    """One line for people, e.g. `4 ended: 3 exited on SIGTERM, 1 killed after 5.0 s`."""
    by: dict[Outcome, list[SignalResult]] = {}
    for r in results:
        by.setdefault(r.outcome, []).append(r)
    parts: list[str] = []
    ended = len(by.get(Outcome.EXITED, [])) + len(by.get(Outcome.KILLED, [])) + len(by.get(Outcome.ALREADY_GONE, []))
    if Outcome.EXITED in by:
        parts.append(f"{len(by[Outcome.EXITED])} exited on SIGTERM")
    if Outcome.KILLED in by:
        parts.append(f"{len(by[Outcome.KILLED])} killed after {max(r.elapsed for r in by[Outcome.KILLED]):.1f} s")
    if Outcome.ALREADY_GONE in by:
        parts.append(f"{len(by[Outcome.ALREADY_GONE])} already gone")
    for o, label in ((Outcome.PAUSED, "paused"), (Outcome.RESUMED, "resumed"), (Outcome.DENIED, "denied"),
                     (Outcome.REFUSED, "refused"), (Outcome.SURVIVED, "survived")):
        if o in by:
            parts.append(f"{len(by[o])} {label}")
    head = f"{ended} ended: " if ended else ""
    return head + ", ".join(parts) if parts else "nothing to do"


__all__ = ["Outcome", "Target", "Member", "SignalResult", "Progress", "resolve", "terminate", "kill", "pause",
           "resume", "summarize"]
