"""Rows of the Duplicates, Locks and GPU panes, built from a Model. Pure (no Textual, no I/O) like model.py;
the panes (panes/*.py) only draw what these return; widgets/table.py draws them. A cluster model gives one section
per node (its label, then its rows, keyed and tagged with its node: actions on a row go to that node)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from procguard.core import format as fmt
from procguard.core.duplicates import DuplicateGroup, Instance
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
    node: str = ""  # cluster mode: the node the row's process lives on (its targets go there)


def _c(text: object, style: str = "") -> Cell:
    return Cell(str(text), style)


def section(key: str, text: str) -> TableRow:
    return TableRow(("section", key), (Cell(text, "bold"),), "section")


def note(key: str, text: str) -> TableRow:
    return TableRow(("note", key), (Cell(text, "dim"),), "note")


def per_node(model: Model, rows_of: Callable[[Model], list[TableRow]]) -> list[TableRow]:
    """A pane's rows: those of a single host, or in cluster mode a section per node (its label) followed by that
    node's rows, keyed and tagged with the node. A node that did not answer is named where its section would be."""
    if not model.cluster:
        return rows_of(model)
    out: list[TableRow] = []
    for part in model.parts:
        nid = part.node.node_id if part.node is not None else ""
        out.append(section(f"node-{nid}", f"node {part.node.label if part.node is not None else '?'}"))
        out += [r._replace(key=(*r.key, nid), node=nid) for r in rows_of(part)]
    out += [note(f"failed-{i}", f"⚠ {why}") for i, why in enumerate(model.failures)]
    return out


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
    return TableRow(
        ("inst", inst.pid),
        (
            _c(inst.pid, keep),
            _c(since, keep),
            _c(inst.username),
            _c(fmt.bytes_short(inst.gpu_memory, blank_zero=True), "accent"),
            _c(locks),
            _c(inst.cwd or "?", "dim"),
            _c(args or "-"),
        ),
        pid=inst.pid,
        targets=tuple(Target.tree(r) for r in roots),
        ref=g,
    )


def duplicate_rows(model: Model) -> list[TableRow]:
    return per_node(model, _duplicate_rows)


def _duplicate_rows(model: Model) -> list[TableRow]:
    rows: list[TableRow] = []
    if not model.duplicates:
        rows.append(note("none", "No script is running more than once."))
    for g in model.duplicates:
        n = len(g.instances)
        rows.append(
            TableRow(
                ("group", g.identity.key),
                (Cell(f"{g.identity.display} — {n} runs (oldest first; d keeps the oldest)", "bold"),),
                "section",
                ref=g,
            )
        )
        for i, inst in enumerate(g.instances):
            rows.append(_instance_row(model, g, inst, i == 0))
    if model.scheduled:
        rows.append(section("scheduled", "Scheduler-managed runs (never duplicates, never ended by d)"))
        for s in model.scheduled:
            inst = s.instance
            rows.append(
                TableRow(
                    ("sched", inst.pid),
                    (
                        _c(inst.pid),
                        _c(fmt.age(model.time - inst.create_time)),
                        _c(inst.username),
                        _c(fmt.bytes_short(inst.gpu_memory, blank_zero=True), "accent"),
                        _c(", ".join(inst.locks) or "-"),
                        _c(inst.cwd or "?", "dim"),
                        _c(f"[{s.scheduler} {s.job_id}] {s.identity.display} {' '.join(inst.args)}"),
                    ),
                    pid=inst.pid,
                    targets=tuple(Target.tree(r) for r in (inst.roots or (inst.pid,))),
                )
            )
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
    return per_node(model, _lock_rows)


def _lock_rows(model: Model) -> list[TableRow]:
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
        rows.append(
            TableRow(
                ("lock", str(i), lk.path),
                (
                    _c(lk.path, style),
                    _c(shown or "?"),
                    _c(lk.kind or "?"),
                    _c(lk.mode or "?"),
                    _c("yes" if lk.managed else "no", "success" if lk.managed else "dim"),
                    _c(cmd),
                ),
                pid=holders[0] if holders else None,
                targets=tuple(Target.pid(p) for p in holders),
            )
        )
        if lk.warning:
            rows.append(note(f"warn-{i}", f"  ⚠ {lk.warning}"))
    rows.append(
        section(
            "stale",
            f"Stale lock files ({len(model.stale_locks)})"
            + (" — x removes them" if model.stale_locks else ""),
        )
    )
    if not model.stale_locks:
        rows.append(note("no-stale", "No stale procguard lock files."))
    for path in model.stale_locks:
        rows.append(
            TableRow(
                ("stale", path),
                (
                    _c(path, "dim"),
                    _c("nobody"),
                    _c("-"),
                    _c("-"),
                    _c("yes", "success"),
                    _c("(stale: no process holds it)", "dim"),
                ),
            )
        )
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
    node: str = ""  # cluster mode: the short id of the node the GPU is on

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 0.0


def device_lines(model: Model) -> list[DeviceLine]:
    return [
        DeviceLine(
            d.index,
            d.name,
            d.memory_used,
            d.memory_total,
            d.utilization,
            part.node.short if part.node is not None else "",
        )
        for part in model.each()
        for d in part.gpu.devices
    ]


def gpu_rows(model: Model) -> list[TableRow]:
    return per_node(model, _gpu_rows)


def gpu_table_shown(model: Model) -> bool:
    """The GPU view lists holders where NVML answers, or where the kernel shows GPU device files open."""
    return any(p.gpu.available or p.holders for p in model.each())


def _gpu_rows(model: Model) -> list[TableRow]:
    """Every GPU holder: NVML's processes with their memory, and the processes the kernel shows with a GPU
    device file open that NVML does not list ("open": no memory figure; flag O when left behind), then NVML's
    pids that are not in this PID namespace."""
    rows: list[TableRow] = []
    snap = model.snapshot
    holders = sorted(model.holders, key=lambda h: (h.devices[:1] or (1 << 30,), -(h.memory_used or 0), h.pid))
    if not holders and not model.foreign:
        rows.append(note("none", "No process holds a GPU."))
    for h in holders:
        p = snap.get(h.pid)
        guard = model.guarded.get(h.pid)
        flags = (FLAG_GUARDED if guard else "") + (FLAG_ORPHAN_GPU if h.pid in model.orphans else "")
        if p is None:
            continue
        cmd = display_command(p)
        if h.host_pid is not None:
            cmd = f"(host pid {h.host_pid}) {cmd}"
        mem = (
            _c(fmt.bytes_short(h.memory_used), "accent")
            if h.memory_used is not None
            else _c("open" if not h.in_nvml else "?", "dim")
        )
        reserved = fmt.bytes_short(guard.reserved) if guard and guard.reserved is not None else ""
        allocated = fmt.bytes_short(guard.allocated) if guard and guard.allocated is not None else ""
        dev = ",".join(map(str, h.devices)) or ("?" if h.minors or "nvidia" in h.kinds else "-")
        rows.append(
            TableRow(
                ("gpu", h.pid, h.devices[0] if h.devices else -1),
                (
                    _c(h.pid),
                    _c(dev),
                    mem,
                    _c(reserved),
                    _c(allocated),
                    _c(flags, "error" if FLAG_ORPHAN_GPU in flags else "success"),
                    _c(p.username),
                    _c(cmd),
                ),
                pid=h.pid,
                targets=(Target.pid(h.pid),),
            )
        )
    for f in model.foreign:
        if f.local_pid is not None:
            continue  # shown above, as the local holder it was matched to
        rows.append(
            TableRow(
                ("foreign", f.host_pid),
                (
                    _c(f.host_pid),
                    _c(",".join(map(str, f.devices))),
                    _c(fmt.bytes_short(f.memory_used), "accent"),
                    _c(""),
                    _c(""),
                    _c(""),
                    _c("?"),
                    _c(f"{f.label}, or a process that just exited", "dim"),
                ),
            )
        )
    orphans = [h for h in holders if h.orphan is not None]
    if orphans:
        known = [h.memory_used for h in orphans if h.memory_used is not None]
        pinned = f" pin {fmt.bytes_long(sum(known), 'unknown')}" if known else ""
        rows.append(
            note(
                "orphans",
                f"{len(orphans)} GPU orphan{'s' if len(orphans) != 1 else ''} (O: left behind by "
                f"a job that ended){pinned}: t ends the selected one",
            )
        )
    flushable = [(pid, g) for pid, g in sorted(model.guarded.items()) if g.flushable]
    if flushable:
        total = sum(g.flushable or 0 for _, g in flushable)
        rows.append(
            note(
                "flush",
                f"Flushing (f) the guarded processes would free ~{fmt.bytes_long(total, 'unknown')} "
                "(torch reserved, not allocated)",
            )
        )
    return rows
