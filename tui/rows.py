"""Rows of the Duplicates, Locks and GPU panes, built from a Model. Pure (no Textual, no I/O) like model.py;
the panes (panes/*.py) only draw what these return; widgets/table.py draws them."""

from __future__ import annotations

from typing import NamedTuple

from procguard.core import format as fmt
from procguard.core.duplicates import DuplicateGroup, Instance
from procguard.core.gpu import unknown_gpu_pids
from procguard.core.signals import Target
from procguard.tui.model import FLAG_GUARDED, FLAG_ORPHAN_GPU, Model, display_command


class Cell(NamedTuple):
    text: str
    style: str = ""  # a table component suffix: "dim", "warning", "error", "accent", "success", "bold"
    parts: tuple[tuple[str, str], ...] = ()  # (text, style) pieces in place of text/style (short cells only)


class Column(NamedTuple):
    title: str
    width: int  # fixed width in cells; 0: flexible (shares what is left by `weight`)
    align: str = "left"  # "left" | "right"
    weight: int = 1
    clip: str = "end"  # where a long value loses text: "end", or "start" for paths (the name matters most)


class TableRow(NamedTuple):
    key: tuple[object, ...]
    cells: tuple[Cell, ...]
    kind: str = "item"  # "item" | "section" (spans the row, bold) | "note" (spans the row, dim)
    pid: int | None = None  # what Enter (details) and `f` look at
    targets: tuple[Target, ...] = ()  # what t / k / p / r act on
    ref: object = None  # the DuplicateGroup of a Duplicates row


def _c(text: object, style: str = "") -> Cell:
    return Cell(str(text), style)


def section(key: str, text: str) -> TableRow:
    return TableRow(("section", key), (Cell(text, "bold"),), "section")


def note(key: str, text: str) -> TableRow:
    return TableRow(("note", key), (Cell(text, "dim"),), "note")


# ---------------------------------------------------------------------------------------------- duplicates

DUPLICATE_COLUMNS = (
    Column("PID", 7, "right"),
    Column("SINCE", 7, "right"),
    Column("USER", 8),
    Column("GPU", 6, "right"),
    Column("LOCKS", 0, weight=1, clip="start"),
    Column("CWD", 0, weight=1, clip="start"),
    Column("ARGS", 0, weight=2),
)


def _instance_row(model: Model, g: DuplicateGroup, inst: Instance, oldest: bool) -> TableRow:
    locks = ", ".join(p.rpartition("/")[2] for p in inst.locks) or "-"
    ranks = f" ({len(inst.members)} ranks)" if len(inst.members) > 1 else ""
    args = " ".join(inst.args) + ranks
    since = fmt.age(model.time - inst.create_time)
    keep = "success" if oldest else ""
    roots = inst.roots or (inst.pid,)
    return TableRow(("inst", inst.pid), (_c(inst.pid, keep), _c(since, keep), _c(inst.username),
                                          _c(fmt.bytes_short(inst.gpu_memory, blank_zero=True), "accent"),
                                          _c(locks), _c(inst.cwd or "?", "dim"), _c(args or "-")),
                    pid=inst.pid, targets=tuple(Target.tree(r) for r in roots), ref=g)


def duplicate_rows(model: Model) -> list[TableRow]:
    rows: list[TableRow] = []
    if not model.duplicates:
        rows.append(note("none", "No script is running more than once."))
    for g in model.duplicates:
        n = len(g.instances)
        rows.append(TableRow(("group", g.identity.key), (Cell(f"{g.identity.display} — {n} runs "
                                                              f"(oldest first; d keeps the oldest)", "bold"),),
                             "section", ref=g))
        for i, inst in enumerate(g.instances):
            rows.append(_instance_row(model, g, inst, i == 0))
    if model.scheduled:
        rows.append(section("scheduled", "Scheduler-managed runs (never duplicates, never ended by d)"))
        for s in model.scheduled:
            inst = s.instance
            rows.append(TableRow(("sched", inst.pid), (
                _c(inst.pid), _c(fmt.age(model.time - inst.create_time)), _c(inst.username),
                _c(fmt.bytes_short(inst.gpu_memory, blank_zero=True), "accent"), _c(", ".join(inst.locks) or "-"),
                _c(inst.cwd or "?", "dim"), _c(f"[{s.scheduler} {s.job_id}] {s.identity.display} "
                                               f"{' '.join(inst.args)}")),
                pid=inst.pid, targets=tuple(Target.tree(r) for r in (inst.roots or (inst.pid,)))))
    return rows


# ---------------------------------------------------------------------------------------------- locks

LOCK_COLUMNS = (
    Column("PATH", 0, weight=3, clip="start"),
    Column("HOLDERS", 13),
    Column("KIND", 5),
    Column("MODE", 5),
    Column("MGD", 3),
    Column("HOLDER COMMAND", 0, weight=2),
)


def lock_rows(model: Model) -> list[TableRow]:
    rows: list[TableRow] = []
    held = [lk for lk in model.locks if not lk.stale]
    rows.append(section("held", f"Held locks ({len(held)})"))
    if not held:
        rows.append(note("no-held", "No file locks are held (that this user can see)."))
    snap = model.snapshot
    for i, lk in enumerate(held):
        holders = lk.holders or ((lk.pid,) if lk.pid else ())
        first = snap.get(holders[0]) if holders else None
        cmd = display_command(first) if first is not None else (lk.holder.command() if lk.holder else "?")
        shown = ",".join(map(str, holders[:2])) + ("…" if len(holders) > 2 else "")
        style = "warning" if lk.warning else ""
        rows.append(TableRow(("lock", str(i), lk.path), (
            _c(lk.path, style), _c(shown or "?"), _c(lk.kind or "?"), _c(lk.mode or "?"),
            _c("yes" if lk.managed else "no", "success" if lk.managed else "dim"), _c(cmd)),
            pid=holders[0] if holders else None, targets=tuple(Target.pid(p) for p in holders)))
        if lk.warning:
            rows.append(note(f"warn-{i}", f"  ⚠ {lk.warning}"))
    rows.append(section("stale", f"Stale lock files ({len(model.stale_locks)})"
                        + (" — x removes them" if model.stale_locks else "")))
    if not model.stale_locks:
        rows.append(note("no-stale", "No stale procguard lock files."))
    for path in model.stale_locks:
        rows.append(TableRow(("stale", path), (_c(path, "dim"), _c("nobody"), _c("-"), _c("-"),
                                                _c("yes", "success"), _c("(stale: no process holds it)", "dim"))))
    return rows


# ---------------------------------------------------------------------------------------------- gpu

GPU_COLUMNS = (
    Column("PID", 7, "right"),
    Column("DEV", 3, "right"),
    Column("GPU MEM", 7, "right"),
    Column("RESERVD", 7, "right"),
    Column("ALLOC", 7, "right"),
    Column("FLG", 3),
    Column("USER", 8),
    Column("COMMAND", 0),
)


class DeviceLine(NamedTuple):
    device: int  # the GPU's index
    name: str
    used: int
    total: int
    utilization: int | None

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 0.0


def device_lines(model: Model) -> list[DeviceLine]:
    return [DeviceLine(d.index, d.name, d.memory_used, d.memory_total, d.utilization) for d in model.gpu.devices]


def gpu_rows(model: Model) -> list[TableRow]:
    rows: list[TableRow] = []
    snap = model.snapshot
    procs = sorted(model.gpu.processes, key=lambda p: (p.device, -(p.memory_used or 0), p.pid))
    if not procs:
        rows.append(note("none", "No process holds GPU memory."))
    unknown = {p.pid for p in unknown_gpu_pids(snap, model.gpu)}
    for gp in procs:
        p = snap.get(gp.pid)
        guard = model.guarded.get(gp.pid)
        flags = (FLAG_GUARDED if guard else "") + (FLAG_ORPHAN_GPU if gp.pid in model.orphans else "")
        if gp.pid in unknown:
            cmd, user, style = "(not in this PID namespace, or just exited)", "?", "dim"
        else:
            assert p is not None
            cmd, user, style = display_command(p), p.username, ""
        reserved = fmt.bytes_short(guard.reserved) if guard and guard.reserved is not None else ""
        allocated = fmt.bytes_short(guard.allocated) if guard and guard.allocated is not None else ""
        rows.append(TableRow(("gpu", gp.pid, gp.device), (
            _c(gp.pid), _c(gp.device), _c(fmt.bytes_short(gp.memory_used), "accent"), _c(reserved),
            _c(allocated), _c(flags, "error" if FLAG_ORPHAN_GPU in flags else "success"), _c(user),
            _c(cmd, style)), pid=None if gp.pid in unknown else gp.pid,
            targets=() if gp.pid in unknown else (Target.pid(gp.pid),)))
    flushable = [(pid, g) for pid, g in sorted(model.guarded.items()) if g.flushable]
    if flushable:
        total = sum(g.flushable or 0 for _, g in flushable)
        rows.append(note("flush", f"Flushing (f) the guarded processes would free ~{fmt.bytes_long(total, 'unknown')} "
                                  "(torch reserved, not allocated)"))
    return rows
