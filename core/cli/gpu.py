"""`procguard gpu`: who holds a GPU (NVML's list and the kernel's open device files), the orphans among them;
`procguard flush PID`: ask a guarded process to free its GPU cache."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from procguard.core import flush as _flush
from procguard.core import format as fmt
from procguard.core import gpu as _gpu
from procguard.core import gpuholders as _holders
from procguard.core import signals
from procguard.core.cli import UsageError
from procguard.core.cli._args import pid_arg, plural, print_json, seconds_arg
from procguard.core.gpuholders import DeviceHolder, ForeignPid, MergedHolder
from procguard.core.sanitize import safe
from procguard.core.snapshot import Snapshot, process_snapshot

if TYPE_CHECKING:
    from procguard.core.registry import RegistryEntry

EntryLookup = Callable[[int], "RegistryEntry | None"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "gpu",
        help="GPU devices and the processes holding them (NVML and open device files)",
        description="Every process with a GPU device file open (/dev/nvidia*, /dev/dri/renderD*, "
        "/dev/kfd) is a holder, whether NVML lists it or not (or is there at all): holders NVML "
        "doesn't list show as 'device open'. Other users' processes need root to be seen this way.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--orphans",
        action="store_true",
        help="only GPU orphans: holders left behind by a job that died (re-parented, their group or "
        "session leader gone), with the memory they pin",
    )
    what.add_argument(
        "--end-orphans",
        action="store_true",
        help="end the GPU orphans (yours; root: everyone's): SIGTERM, SIGKILL after the grace",
    )
    p.add_argument(
        "--grace",
        type=seconds_arg("--grace"),
        default=5.0,
        metavar="S",
        help="with --end-orphans: seconds between SIGTERM and SIGKILL (default 5)",
    )
    p.add_argument("--dry-run", action="store_true", help="with --end-orphans: show them, end nothing")
    p.set_defaults(func=run_gpu)
    f = sub.add_parser(
        "flush",
        help="ask a guarded process to empty its GPU cache and say what it freed",
        description="Cooperative: the process must be guarded (its main wrapped in "
        "procguard.core.guard.guard()); it answers its flush signal (SIGUSR1 unless configured). Exit 0 "
        "answered, 1 no answer in time, 2 not guarded / bad pid.",
    )
    f.add_argument("pid", type=pid_arg, metavar="PID")
    f.add_argument(
        "--timeout",
        type=seconds_arg("--timeout"),
        default=10.0,
        metavar="S",
        help="seconds to wait for the answer (default 10)",
    )
    f.add_argument("--json", action="store_true", help="print the answer as one JSON object")
    f.set_defaults(func=run_flush)


def _registry_lookup() -> EntryLookup:
    from procguard.core import registry  # only `gpu --json` and the listing need it

    def lookup(pid: int) -> RegistryEntry | None:
        try:
            # Untrusted entries too, flagged (registry trust rule): shown as such, never as guarded.
            return registry.get_entry(pid, include_untrusted=True)
        except Exception:  # an unreadable entry doesn't break the listing
            return None

    return lookup


class Holders:
    """Who holds a GPU now: NVML's list merged with the kernel's open device files, over one process snapshot."""

    def __init__(
        self, snap: Snapshot, gpu: _gpu.GpuSnapshot, holders: dict[int, DeviceHolder], denied: int = 0
    ) -> None:
        self.snap, self.gpu = snap, gpu
        self.merged, self.foreign = _gpu.merged_holders(snap, gpu, holders)
        self.denied = denied  # processes whose fds could not be read (other users', without root)

    @classmethod
    def now(cls, gpu: _gpu.GpuSnapshot) -> Holders:
        snap = process_snapshot()
        scanner = _holders.HolderScanner()
        found = scanner.scan(snap)
        return cls(snap, gpu, found, scanner.stats.denied)

    @property
    def orphans(self) -> list[MergedHolder]:
        return _holders.gpu_orphans(self.merged)

    def row_json(self, m: MergedHolder) -> dict[str, Any]:
        p = self.snap.get(m.pid)
        return {
            **m.to_json(),
            "device_open": m.device_open_only,
            "username": p.username if p else None,
            "cmdline": list(p.cmdline) if p else [],
            "name": p.name if p else None,
        }


def _foreign_json(f: ForeignPid) -> dict[str, Any]:
    return {
        "host_pid": f.host_pid,
        "devices": list(f.devices),
        "memory_used": f.memory_used,
        "local_pid": f.local_pid,
        "label": f.label,
    }


def gpu_report(
    gpu: _gpu.GpuSnapshot, lookup: EntryLookup | None = None, holders: Holders | None = None
) -> dict[str, Any]:
    """The `gpu --json` object: devices, and processes enriched from the registry (guarded, and the allocator
    figures a guarded process publishes: reserved, allocated; null when unknown). Only an entry the registry
    trusts counts; a process whose entry was ignored gets ``untrusted_entry`` (why), and no figures from it.
    With `holders`: also every holder (NVML's and the kernel's, each with its orphan reason), NVML pids of
    another PID namespace (`foreign`), and the orphan count."""
    lookup = lookup or _registry_lookup()
    devices = [
        {
            "index": d.index,
            "name": d.name,
            "uuid": d.uuid,
            "memory_total": d.memory_total,
            "memory_used": d.memory_used,
            "utilization": d.utilization,
            "minor": d.minor,
        }
        for d in gpu.devices
    ]
    processes = []
    for p in sorted(gpu.processes, key=lambda p: (p.device, -(p.memory_used or 0), p.pid)):
        entry = lookup(p.pid)
        trusted = entry is not None and entry.trusted
        alloc = _flush._field(entry, "allocator") if trusted else None
        alloc = alloc if isinstance(alloc, dict) else {}
        row: dict[str, Any] = {
            "pid": p.pid,
            "device": p.device,
            "memory_used": p.memory_used,
            "guarded": trusted,
            "reserved": alloc.get("reserved"),
            "allocated": alloc.get("allocated"),
        }
        if entry is not None and not trusted:
            row["untrusted_entry"] = entry.untrusted_reason or "not trusted"
        processes.append(row)
    out: dict[str, Any] = {
        "available": gpu.available,
        "reason": gpu.reason,
        "devices": devices,
        "processes": processes,
    }
    if holders is not None:
        out["holders"] = [holders.row_json(m) for m in holders.merged]
        out["foreign"] = [_foreign_json(f) for f in holders.foreign if f.local_pid is None]
        out["orphans"] = len(holders.orphans)
        out["unreadable"] = holders.denied
    return out


def _devices_cell(m: MergedHolder) -> str:
    """Which GPU: NVML indices; else /dev/nvidiaN minors (no NVML to map them); else the device files."""
    if m.devices:
        return ",".join(map(str, m.devices))
    if m.minors:
        return ",".join(f"nvidia{n}" for n in m.minors)
    return ",".join(m.kinds) or "-"


def _memory_cell(m: MergedHolder) -> str:
    return "device open" if m.device_open_only else fmt.bytes_short(m.memory_used)


HEADER = (
    f"{'PID':>7} {'GPU':<7} {'GPU MEM':>11} {'RESERVED':>8} {'ALLOC':>8} {'GUARD':<5} {'USER':<10} COMMAND"
)


def _holder_row(h: Holders, m: MergedHolder, guard: dict[str, Any] | None) -> str:
    proc = h.snap.get(m.pid)
    user, command = (safe(proc.username)[:10], safe(proc.command)) if proc else ("?", "?")
    if m.orphan:
        command = f"[orphaned: parent died] {command}"
    if m.host_pid is not None:
        command = f"{command} (host pid {m.host_pid})"
    g = guard or {}
    return (
        f"{m.pid:>7} {_devices_cell(m):<7} {_memory_cell(m):>11} {fmt.bytes_short(g.get('reserved')):>8} "
        f"{fmt.bytes_short(g.get('allocated')):>8} {'yes' if g.get('guarded') else '-':<5} {user:<10} {command}"
    )


def _foreign_row(f: ForeignPid) -> str:
    devs = ",".join(map(str, f.devices)) or "-"
    return (
        f"{f.host_pid:>7} {devs:<7} {fmt.bytes_short(f.memory_used):>11} {'-':>8} {'-':>8} {'-':<5} "
        f"{'?':<10} {f.label}"
    )


def _orphan_summary(h: Holders) -> str:
    orphans = h.orphans
    if not orphans:
        return "no GPU orphans"
    pinned = sum(m.memory_used or 0 for m in orphans if not m.device_open_only)
    unknown = sum(1 for m in orphans if m.device_open_only)
    memory = f", pinning {fmt.bytes_short(pinned)}" if pinned else ""
    open_only = f" ({unknown} with a device open, memory unknown)" if unknown else ""
    return f"{plural(len(orphans), 'GPU orphan')}{memory}{open_only}"


def format_gpu(
    report: dict[str, Any], snap: Snapshot, gpu: _gpu.GpuSnapshot, holders: Holders | None = None
) -> list[str]:
    """The `procguard gpu` text: devices, then one row per holder (NVML's and, with `holders`, the kernel's),
    NVML pids of another PID namespace, and the orphan count."""
    h = holders if holders is not None else Holders(snap, gpu, {})
    lines = [] if report["available"] else [f"GPU: not available: {safe(report['reason'])}"]
    for d in gpu.devices:
        util = "-" if d.utilization is None else f"{d.utilization}%"
        lines.append(
            f"GPU {d.index}: {safe(d.name)}  {safe(d.uuid)}  memory {fmt.bytes_short(d.memory_used)} "
            f"used / {fmt.bytes_short(d.memory_total)} ({fmt.bytes_short(d.memory_free)} free)  util {util}"
        )
    foreign = [f for f in h.foreign if f.local_pid is None]
    if not h.merged and not foreign:
        if report["available"]:
            lines.append("no processes hold a GPU")
        return lines + _unreadable(h)
    if not report["available"]:
        lines.append("GPU holders from the kernel (open device files; memory figures need NVML):")
    guard = {p["pid"]: p for p in report["processes"]}
    lines.append(HEADER)
    lines += [_holder_row(h, m, guard.get(m.pid)) for m in h.merged]
    lines += [_foreign_row(f) for f in foreign]
    if h.orphans:
        lines.append(f"{_orphan_summary(h)}: procguard gpu --orphans lists them")
    return lines + _unreadable(h)


def _unreadable(h: Holders) -> list[str]:
    if not h.denied:
        return []
    who = plural(h.denied, "process", "processes")
    if os.geteuid() == 0:  # even root is refused some (ptrace rules, another user namespace's init)
        return [f"({who} not checked for open GPU devices: their open files could not be read)"]
    return [f"({who} of other users not checked for open GPU devices: that needs root)"]


def format_orphans(h: Holders) -> list[str]:
    """`gpu --orphans`: the count, then each orphan with the memory it pins and why it counts as one."""
    orphans = h.orphans
    lines = [_orphan_summary(h)]
    if not orphans:
        return lines + _unreadable(h)
    lines.append(f"{'PID':>7} {'GPU':<7} {'GPU MEM':>11} {'USER':<10} COMMAND")
    for m in orphans:
        proc = h.snap.get(m.pid)
        user, command = (safe(proc.username)[:10], safe(proc.command)) if proc else ("?", "?")
        lines.append(f"{m.pid:>7} {_devices_cell(m):<7} {_memory_cell(m):>11} {user:<10} {command}")
        lines.append(f"{'':>7} why: {safe(m.orphan)}")
    return lines + _unreadable(h)


def _orphans_json(h: Holders) -> dict[str, Any]:
    orphans = h.orphans
    return {
        "count": len(orphans),
        "memory_used": sum(m.memory_used or 0 for m in orphans),
        "orphans": [h.row_json(m) for m in orphans],
        "unreadable": h.denied,
    }


def run_gpu(args: argparse.Namespace) -> int:
    if not args.end_orphans and (args.dry_run or args.grace != 5.0):
        raise UsageError("--grace and --dry-run go with --end-orphans")
    gpu = _gpu.gpu_snapshot()
    holders = Holders.now(gpu)
    if args.end_orphans:
        return end_orphans(args, holders)
    if args.orphans:
        if args.json:
            print_json(_orphans_json(holders))
        else:
            print("\n".join(format_orphans(holders)))
        return 0
    report = gpu_report(gpu, holders=holders)
    if args.json:
        print_json(report)
        return 0
    print("\n".join(format_gpu(report, holders.snap, gpu, holders)))
    return 0


def _mine(h: Holders, orphans: Sequence[MergedHolder]) -> tuple[list[MergedHolder], list[MergedHolder]]:
    """(the orphans this user may end, the others): root ends anyone's, others only their own."""
    uid = os.geteuid()
    if uid == 0:
        return list(orphans), []
    own = [m for m in orphans if (p := h.snap.get(m.pid)) is not None and p.uid == uid]
    return own, [m for m in orphans if m not in own]


def end_orphans(args: argparse.Namespace, h: Holders) -> int:
    """gpu --end-orphans: terminate the caller's GPU orphans with the usual escalation (SIGTERM, SIGKILL after
    the grace; each pinned against pid reuse). Exit 0 when every one ended, 1 otherwise."""
    own, others = _mine(h, h.orphans)
    targets = [signals.Target.pid(m.pid) for m in own]
    skipped = f"{plural(len(others), 'GPU orphan')} of other users left alone (root can end them)"
    if args.dry_run:
        members = signals.resolve(targets, h.snap) if targets else []
        if args.json:
            print_json(
                {
                    "dry_run": True,
                    "targets": [
                        {
                            "pid": m.pid,
                            "username": m.username,
                            "cmdline": list(m.cmdline),
                            "protected": m.protected,
                        }
                        for m in members
                    ],
                    "skipped": [m.pid for m in others],
                }
            )
        else:
            print(f"would end {plural(len(members), 'GPU orphan')}:")
            for m in members:
                note = f"  [would be refused: {safe(m.protected)}]" if m.protected else ""
                print(f"{m.pid:>7} {safe(m.username)[:10]:<10} {safe(m.command)}{note}")
            if others:
                print(skipped)
        return 1 if any(m.protected for m in members) else 0
    results = signals.terminate(targets, args.grace, snapshot=h.snap) if targets else []
    if args.json:
        print_json({"results": [r.to_json() for r in results], "skipped": [m.pid for m in others]})
    else:
        for r in results:
            print(
                f"{r.pid:>7} {r.outcome.value:<12} {r.elapsed:8.3f}s  {safe(' '.join(r.cmdline) or r.name)}"
            )
        print(
            safe(signals.summarize(results)) if results else "no GPU orphans of yours to end", file=sys.stderr
        )
        if others:
            print(skipped, file=sys.stderr)
    ended = {signals.Outcome.EXITED, signals.Outcome.KILLED, signals.Outcome.ALREADY_GONE}
    return 0 if all(r.outcome in ended for r in results) else 1


def run_flush(args: argparse.Namespace) -> int:
    try:
        result = _flush.request_flush(args.pid, timeout=args.timeout)
    except _flush.NotGuarded as e:
        raise UsageError(str(e)) from None
    except PermissionError as e:
        raise UsageError(
            f"not allowed to signal pid {args.pid} ({e.strerror}): run as its owner or root"
        ) from None
    except _flush.FlushError as e:  # timeout, or it exited while we waited
        print(f"procguard: flush: {e}", file=sys.stderr)
        return 1
    if args.json:
        print_json({"pid": args.pid, **result.to_dict()})
    else:
        print(f"pid {args.pid}: {safe(result.message)}")  # the guarded process's words
    return 0
