"""`procguard gpu`: who holds GPU memory; `procguard flush PID`: ask a guarded process to free its GPU cache."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from procguard.core import flush as _flush
from procguard.core import format as fmt
from procguard.core import gpu as _gpu
from procguard.core.cli import UsageError
from procguard.core.cli._args import pid_arg, print_json, seconds_arg
from procguard.core.sanitize import safe
from procguard.core.snapshot import Snapshot, process_snapshot

EntryLookup = Callable[[int], Any]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("gpu", help="GPU devices and the processes holding GPU memory (NVML)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_gpu)
    f = sub.add_parser("flush", help="ask a guarded process to empty its GPU cache and say what it freed",
                       description="Cooperative: the process must be guarded (its main wrapped in "
                       "procguard.core.guard.guard()); it answers its flush signal (SIGUSR1 unless configured). Exit 0 "
                       "answered, 1 no answer in time, 2 not guarded / bad pid.")
    f.add_argument("pid", type=pid_arg, metavar="PID")
    f.add_argument("--timeout", type=seconds_arg("--timeout"), default=10.0, metavar="S",
                   help="seconds to wait for the answer (default 10)")
    f.add_argument("--json", action="store_true", help="print the answer as one JSON object")
    f.set_defaults(func=run_flush)


def _registry_lookup() -> EntryLookup:
    try:
        from procguard.core import registry
    except ImportError:  # pragma: no cover - registry not installed in this build
        return lambda pid: None

    def lookup(pid: int) -> Any:
        try:
            # Untrusted entries too, flagged (registry trust rule): shown as such, never as guarded.
            return registry.get_entry(pid, include_untrusted=True)
        except Exception:  # an unreadable entry doesn't break the listing
            return None

    return lookup


def gpu_report(gpu: _gpu.GpuSnapshot, lookup: EntryLookup | None = None) -> dict[str, Any]:
    """The `gpu --json` object: devices, and processes enriched from the registry (guarded, and the allocator
    figures a guarded process publishes: reserved, allocated; null when unknown). Only an entry the registry
    trusts counts; a process whose entry was ignored gets ``untrusted_entry`` (why), and no figures from it."""
    lookup = lookup or _registry_lookup()
    devices = [{"index": d.index, "name": d.name, "uuid": d.uuid, "memory_total": d.memory_total,
                "memory_used": d.memory_used, "utilization": d.utilization} for d in gpu.devices]
    processes = []
    for p in sorted(gpu.processes, key=lambda p: (p.device, -(p.memory_used or 0), p.pid)):
        entry = lookup(p.pid)
        trusted = entry is not None and bool(getattr(entry, "trusted", True))
        alloc = _flush._field(entry, "allocator") if trusted else None
        alloc = alloc if isinstance(alloc, dict) else {}
        row: dict[str, Any] = {"pid": p.pid, "device": p.device, "memory_used": p.memory_used,
                               "guarded": trusted, "reserved": alloc.get("reserved"),
                               "allocated": alloc.get("allocated")}
        if entry is not None and not trusted:
            row["untrusted_entry"] = getattr(entry, "untrusted_reason", None) or "not trusted"
        processes.append(row)
    return {"available": gpu.available, "reason": gpu.reason, "devices": devices, "processes": processes}


def format_gpu(report: dict[str, Any], snap: Snapshot, gpu: _gpu.GpuSnapshot) -> list[str]:
    if not report["available"]:
        return [f"GPU: not available: {report['reason']}"]
    lines = []
    for d in gpu.devices:
        util = "-" if d.utilization is None else f"{d.utilization}%"
        lines.append(f"GPU {d.index}: {d.name}  {d.uuid}  memory {fmt.bytes_short(d.memory_used)} used / "
                     f"{fmt.bytes_short(d.memory_total)} ({fmt.bytes_short(d.memory_free)} free)  util {util}")
    if not report["processes"]:
        lines.append("no processes hold GPU memory")
        return lines
    orphans = {h.proc.pid for h in _gpu.orphaned_gpu_processes(snap, gpu)}
    lines.append(f"{'PID':>7} {'GPU':>3} {'GPU MEM':>8} {'RESERVED':>8} {'ALLOC':>8} {'GUARD':<5} "
                 f"{'USER':<10} COMMAND")
    for p in report["processes"]:
        proc = snap.get(p["pid"])
        if proc is None:
            user, command = "?", "(not in this process table: another PID namespace, or exited)"
        else:
            user, command = proc.username[:10], proc.command
            if proc.pid in orphans:
                command = f"[orphaned: parent died] {command}"
        lines.append(f"{p['pid']:>7} {p['device']:>3} {fmt.bytes_short(p['memory_used']):>8} "
                     f"{fmt.bytes_short(p['reserved']):>8} {fmt.bytes_short(p['allocated']):>8} "
                     f"{'yes' if p['guarded'] else '-':<5} {user:<10} {command}")
    return lines


def run_gpu(args: argparse.Namespace) -> int:
    gpu = _gpu.gpu_snapshot()
    report = gpu_report(gpu)
    if args.json:
        print_json(report)
        return 0
    snap = process_snapshot() if gpu.available else Snapshot({})
    print("\n".join(format_gpu(report, snap, gpu)))
    return 0


def run_flush(args: argparse.Namespace) -> int:
    try:
        result = _flush.request_flush(args.pid, timeout=args.timeout)
    except _flush.NotGuarded as e:
        raise UsageError(str(e)) from None
    except PermissionError as e:
        raise UsageError(f"not allowed to signal pid {args.pid} ({e.strerror}): run as its owner or root") \
            from None
    except _flush.FlushError as e:  # timeout, or it exited while we waited
        print(f"procguard: flush: {e}", file=sys.stderr)
        return 1
    if args.json:
        print_json({"pid": args.pid, **result.to_dict()})
    else:
        print(f"pid {args.pid}: {safe(result.message)}")  # the guarded process's words
    return 0
