"""Cgroups: which cgroup a process is in and what that cgroup is (a container, a systemd unit, a SLURM job),
its PID namespace, and acting on a whole cgroup at once.

A job whose processes call `setsid` escapes its process group and, once its parent dies, its tree; it never
escapes its cgroup. On cgroup v2, `cgroup.kill` SIGKILLs every process of a cgroup and its descendants in one
step that nothing can fork past, and `cgroup.freeze` stops them all (they show as `S` in ps, not `T`: the
freezer state is in `cgroup.events`). Where those files are missing (v1, kernels before 5.14 / 5.2) or not
writable (no permission, a read-only mount), the actions fall back to freeze-then-SIGKILL-each-member through
the v1 freezer or per-process SIGSTOP, and every result says which way it went (`CgroupResult.method`).

Three layers:
- pure parsers over bytes/strings (`parse_proc_cgroup`, `parse_nspid`, `parse_mountinfo`, `name_cgroup`, ...),
- thin readers of /proc (`cgroup_info`, `CgroupReader` for periodic refreshes),
- the cgroup filesystem: `resolve_cgroup` (validates a path: inside a cgroup mount, no `..`, every component
  opened with O_NOFOLLOW on the same filesystem), `cgroup_members`, `cgroup_state`, `cgroup_plan`, and the
  actions `kill_cgroup`, `terminate_cgroup`, `freeze_cgroup`, `thaw_cgroup`.

Actions refuse the root cgroup and any cgroup that holds procguard itself, one of its ancestors (its shell) or
pid 1, with a `CgroupError` whose one-line message names the path.

Names and ids parsed from cgroup paths come from whoever created the cgroup: pass them through
`procguard.core.sanitize.safe` before a terminal.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from procguard.core import procfs
from procguard.core.protect import own_lineage
from procguard.core.sanitize import safe
from procguard.core.signals import (
    Outcome,
    Pinned,
    Progress,
    ProgressFn,
    SignalResult,
    Target,
    confirm_states,
    finish_survivors,
    pin_pid,
    send_each,
    send_term,
)

__all__ = [
    "CgroupDir",
    "CgroupError",
    "CgroupInfo",
    "CgroupMounts",
    "CgroupName",
    "CgroupPlan",
    "CgroupReader",
    "CgroupResult",
    "CgroupState",
    "FreezerReader",
    "Mount",
    "cgroup_info",
    "cgroup_members",
    "cgroup_mounts",
    "cgroup_plan",
    "cgroup_state",
    "freeze_cgroup",
    "is_within",
    "kill_cgroup",
    "name_cgroup",
    "own_pidns",
    "parse_events",
    "parse_mountinfo",
    "parse_ns_link",
    "parse_nspid",
    "parse_proc_cgroup",
    "pick_cgroup_path",
    "read_nspid",
    "read_pidns",
    "read_proc_cgroup",
    "resolve_cgroup",
    "terminate_cgroup",
    "thaw_cgroup",
]

KILL_CONFIRM_TIMEOUT = 2.0  # seconds a killed cgroup may take to empty before the result says unconfirmed
FREEZE_TIMEOUT = 2.0  # seconds a freeze or thaw may take to be reported by the kernel
_RESCAN = 0.05  # seconds between rereads of cgroup.procs while waiting (newcomers of a grace period)
_MAX_STOP_ROUNDS = 50  # SIGSTOP rounds of the per-process fallback before giving up on a forking job

# Which v1 controller line to use when there is no v2 path: freezer (the one an action can use), then
# systemd's named hierarchy (units), then any.
_V1_PREFERENCE = ("freezer", "name=systemd")

# Methods, as CgroupResult.method and CgroupPlan name them.
M_KILL = "cgroup.kill"
M_V2_FREEZE_KILL = "cgroup.freeze + SIGKILL"
M_V1_FREEZE_KILL = "v1 freezer + SIGKILL"
M_STOP_KILL = "SIGSTOP + SIGKILL"
M_V2_FREEZE = "cgroup.freeze"
M_V1_FREEZE = "v1 freezer"
M_STOP = "SIGSTOP"
M_CONT = "SIGCONT"
METHODS = ("auto", "cgroup", "freezer", "signals")  # what a caller may force (tests, --method)


class CgroupError(ValueError):
    """A cgroup path that can't be acted on; the message is one line naming the path."""


# ---------------------------------------------------------------------------------------------- parsing


def parse_proc_cgroup(data: bytes) -> tuple[str | None, dict[str, str]]:
    """/proc/PID/cgroup -> (v2 path or None, {v1 controller: path}). A line `4:cpu,cpuacct:/x` gives both
    controllers; a named hierarchy keeps its `name=` prefix (`name=systemd`)."""
    v2: str | None = None
    v1: dict[str, str] = {}
    for raw in data.split(b"\n"):
        if not raw:
            continue
        parts = raw.decode("utf-8", "surrogateescape").split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
        else:
            for c in controllers.split(","):
                if c:
                    v1[c] = path
    return v2, v1


def pick_cgroup_path(v2: str | None, v1: Mapping[str, str]) -> tuple[str | None, int]:
    """The one path that names a process's cgroup, and its version (2, 1; 0 when there is none).

    The v2 path wins, except on a hybrid host where it is just `/` while a v1 controller names something more
    specific (a container runtime that only joined the v1 controllers)."""
    v1_path = next((v1[k] for k in _V1_PREFERENCE if k in v1), None)
    if v1_path is None:
        v1_path = next((p for p in v1.values() if p not in ("", "/")), next(iter(v1.values()), None))
    if v2 is not None and (v2 != "/" or v1_path in (None, "", "/")):
        return v2, 2
    if v1_path is not None:
        return v1_path, 1
    return None, 0


def parse_nspid(status: bytes) -> tuple[int, ...]:
    """`NSpid:` of /proc/PID/status: the pid in each PID namespace, the reader's own (outermost visible) first,
    the process's innermost last. Empty on kernels without it (before 4.1)."""
    for line in status.split(b"\n"):
        if line.startswith(b"NSpid:"):
            try:
                return tuple(int(x) for x in line[6:].split())
            except ValueError:
                return ()
    return ()


_NS_LINK = re.compile(r"^[a-z_]+:\[(\d+)\]$")


def parse_ns_link(link: str) -> int | None:
    """`pid:[4026531836]` (readlink of /proc/PID/ns/pid) -> the namespace's inode number."""
    m = _NS_LINK.match(link)
    return int(m.group(1)) if m else None


def parse_events(data: bytes) -> dict[str, int]:
    """`cgroup.events` (`populated 1`, `frozen 0`) -> {key: value}."""
    out: dict[str, int] = {}
    for line in data.split(b"\n"):
        k, _, v = line.partition(b" ")
        with contextlib.suppress(ValueError):
            out[k.decode()] = int(v)
    return out


class Mount(NamedTuple):
    point: str  # where it is mounted
    root: str  # which cgroup of the hierarchy is its root ("/" unless bind-mounted from inside)


class CgroupMounts(NamedTuple):
    v2: Mount | None
    v1: dict[str, Mount]  # controller (or name=...) -> mount


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(data: bytes) -> CgroupMounts:
    """The cgroup2 mount and the v1 controllers' mounts from /proc/self/mountinfo (first mount of each wins)."""
    v2: Mount | None = None
    v1: dict[str, Mount] = {}
    for raw in data.split(b"\n"):
        line = raw.decode("utf-8", "surrogateescape")
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        f = head.split(" ")
        t = tail.split(" ")
        if len(f) < 5 or len(t) < 3:
            continue
        mount = Mount(_unescape(f[4]), _unescape(f[3]))
        if t[0] == "cgroup2" and v2 is None:
            v2 = mount
        elif t[0] == "cgroup":
            for opt in t[2].split(","):
                if opt not in ("rw", "ro") and "=" not in opt or opt.startswith("name="):
                    v1.setdefault(opt, mount)
    return CgroupMounts(v2, v1)


# ---------------------------------------------------------------------------------------------- naming


class CgroupName(NamedTuple):
    """What a cgroup path is, for people and for grouping."""

    kind: str  # "container" | "slurm" | "service" | "scope" | "slice" | "plain" | "root"
    runtime: str  # docker, podman, containerd, cri-o, lxc, kubernetes | systemd | slurm | ""
    id: str  # container id (full), unit name, SLURM job id; the last component for plain cgroups
    step: str  # SLURM step ("0", "batch", "extern"), else ""
    unit_path: str  # the cgroup path up to the component that names it: act on this to take the whole unit
    label: str  # short, for a column: "docker 1a2b3c4d5e6f", "nginx.service", "slurm 42.0", "/a/b"


_RUNTIMES = {
    "docker": "docker",
    "libpod": "podman",
    "podman": "podman",
    "crio": "cri-o",
    "cri-containerd": "containerd",
    "containerd": "containerd",
    "nerdctl": "containerd",
}
_RUNTIME_UNIT = re.compile(
    r"^(docker|libpod|podman|crio|cri-containerd|containerd|nerdctl)-([0-9a-f]{12,64})"
    r"(?:\.scope)?$"
)
_BARE_ID = re.compile(r"^[0-9a-f]{64}$")
_SLURM_JOB = re.compile(r"^job_(\d+)$")
_SLURM_STEP = re.compile(r"^step_(\w+)$")
_UNIT = re.compile(r"^.+\.(service|scope|slice)$")


def _container(comps: list[str]) -> tuple[int, str, str] | None:
    """(index, runtime, id) of the outermost container component."""
    for i, c in enumerate(comps):
        m = _RUNTIME_UNIT.match(c)
        if m:
            return i, _RUNTIMES[m.group(1)], m.group(2)
        if _BARE_ID.match(c):
            before = comps[:i]
            if before and before[-1] == "docker":
                return i, "docker", c
            if any(b.startswith("kubepods") for b in before):
                return i, "kubernetes", c
            return i, "containerd", c  # containerd's cgroupfs layout: /<namespace>/<id>
        if c.startswith("lxc.payload."):
            return i, "lxc", c[len("lxc.payload.") :]
        if i > 0 and comps[i - 1] == "lxc":
            return i, "lxc", c
    return None


def _slurm(comps: list[str]) -> CgroupName | None:
    for i, c in enumerate(comps):
        m = _SLURM_JOB.match(c)
        if not m:
            continue
        job = m.group(1)
        step = ""
        end = i + 1
        if end < len(comps):
            s = _SLURM_STEP.match(comps[end])
            if s:
                step, end = s.group(1), end + 1
        label = f"slurm {job}.{step}" if step else f"slurm {job}"
        return CgroupName("slurm", "slurm", job, step, "/" + "/".join(comps[:end]), label)
    return None


def name_cgroup(path: str) -> CgroupName:
    """Name a cgroup path: the outermost container (docker/podman/containerd/cri-o/lxc id), else a SLURM job and
    step, else the innermost systemd service or scope (else slice), else the plain path. Pure."""
    comps = [c for c in path.split("/") if c]
    if not comps:
        return CgroupName("root", "", "", "", "/", "/")
    found = _container(comps)
    if found is not None:
        i, runtime, cid = found
        return CgroupName(
            "container", runtime, cid, "", "/" + "/".join(comps[: i + 1]), f"{runtime} {cid[:12]}"
        )
    slurm = _slurm(comps)
    if slurm is not None:
        return slurm
    unit = None
    for i, c in enumerate(comps):
        m = _UNIT.match(c)
        if m and (m.group(1) != "slice" or unit is None or unit[2] == "slice"):
            unit = (i, c, m.group(1))
    if unit is not None:
        i, c, kind = unit
        return CgroupName(kind, "systemd", c, "", "/" + "/".join(comps[: i + 1]), c)
    clean = "/" + "/".join(comps)
    return CgroupName("plain", "", comps[-1], "", clean, clean)


def is_within(path: str, ancestor: str) -> bool:
    """`path` is the cgroup `ancestor` or one of its descendants (cgroup paths, not filesystem paths)."""
    a = "/" + "/".join(c for c in ancestor.split("/") if c)
    p = "/" + "/".join(c for c in path.split("/") if c)
    return a == "/" or p == a or p.startswith(a + "/")


# ---------------------------------------------------------------------------------------------- /proc readers


class CgroupInfo(NamedTuple):
    """A process's cgroup and PID namespace."""

    pid: int
    path: str | None  # cgroup path (the "0::" line; a v1 controller's on v1-only or v1-placed processes)
    version: int  # 2, 1, or 0 when unknown
    name: CgroupName | None
    pidns: int | None  # inode of /proc/PID/ns/pid (None: denied)
    nspid: tuple[int, ...]  # NSpid: our pid first, the process's innermost pid last
    v2_path: str | None = None  # the "0::" line's path (where cgroup.freeze acts), whichever path names it
    freezer_path: str | None = None  # the v1 freezer controller's path, where there is one

    @property
    def inner_pid(self) -> int | None:
        """The pid the process has inside its own (nested) PID namespace, when it is in one."""
        return self.nspid[-1] if len(self.nspid) > 1 else None

    def to_json(self) -> dict[str, object]:
        """`ps --json`'s fields for the process: its PID namespace, its pids in every namespace, and its
        cgroup named for what it is (None when unknown)."""
        n = self.name
        cgroup = None
        if self.path is not None:
            cgroup = {
                "path": self.path,
                "version": self.version,
                "kind": n.kind if n else None,
                "runtime": n.runtime if n else None,
                "id": n.id if n else None,
                "step": n.step if n else None,
                "unit": n.unit_path if n else None,
                "label": n.label if n else None,
            }
        return {"pidns": self.pidns, "nspid": list(self.nspid), "cgroup": cgroup}


def read_proc_cgroup(pid: int) -> tuple[str | None, int]:
    """(cgroup path, version) of a process; (None, 0) when gone or unreadable."""
    try:
        data = procfs.read_bytes(f"{procfs.PROC}/{pid}/cgroup")
    except OSError:
        return None, 0
    return pick_cgroup_path(*parse_proc_cgroup(data))


def read_pidns(pid: int) -> int | None:
    try:
        return parse_ns_link(os.readlink(f"{procfs.PROC}/{pid}/ns/pid"))
    except OSError:
        return None


def own_pidns() -> int | None:
    return read_pidns(os.getpid())


def read_nspid(pid: int) -> tuple[int, ...]:
    try:
        return parse_nspid(procfs.read_bytes(f"{procfs.PROC}/{pid}/status", 8192))
    except OSError:
        return ()


def cgroup_info(pid: int) -> CgroupInfo | None:
    """One process's cgroup, its name, PID namespace and NSpid; None when the process is gone."""
    try:
        data = procfs.read_bytes(f"{procfs.PROC}/{pid}/cgroup")
    except OSError:
        data = b""
    v2, v1 = parse_proc_cgroup(data)
    path, version = pick_cgroup_path(v2, v1)
    nspid = read_nspid(pid)
    if path is None and not nspid:
        return None
    return CgroupInfo(
        pid,
        path,
        version,
        name_cgroup(path) if path is not None else None,
        read_pidns(pid),
        nspid,
        v2,
        v1.get("freezer"),
    )


class CgroupReader:
    """`cgroup_info` for periodic refreshes. A process's PID namespace and NSpid never change: they are read
    once per (pid, start_ticks). Its cgroup can change (a process moved by systemd or a test): /proc/PID/cgroup is
    reread on every call (one small read), and its parse and name are cached by the file's bytes."""

    def __init__(self, max_names: int = 4096) -> None:
        self._ns: dict[tuple[int, int], tuple[int | None, tuple[int, ...]]] = {}
        self._parsed: dict[bytes, tuple[str | None, int, CgroupName | None, str | None, str | None]] = {}
        self._max_names = max_names
        self._own_ns = own_pidns()

    def info(self, pid: int, start_ticks: int) -> CgroupInfo | None:
        try:
            data = procfs.read_bytes(f"{procfs.PROC}/{pid}/cgroup")
        except OSError:
            return None
        parsed = self._parsed.get(data)
        if parsed is None:
            v2, v1 = parse_proc_cgroup(data)
            path, version = pick_cgroup_path(v2, v1)
            parsed = (path, version, name_cgroup(path) if path is not None else None, v2, v1.get("freezer"))
            if len(self._parsed) >= self._max_names:
                self._parsed.clear()
            self._parsed[data] = parsed
        key = (pid, start_ticks)
        ns = self._ns.get(key)
        if ns is None:
            pidns = read_pidns(pid)
            # NSpid only says more than the pid for a process in another PID namespace than ours: skip the
            # status read (the costly part: the kernel formats the whole file) for all the others.
            ns = (pidns, (pid,) if pidns is not None and pidns == self._own_ns else read_nspid(pid))
            self._ns[key] = ns
        return CgroupInfo(pid, parsed[0], parsed[1], parsed[2], ns[0], ns[1], parsed[3], parsed[4])

    def prune(self, alive: Iterable[tuple[int, int]]) -> None:
        """Forget processes not in `alive` ((pid, start_ticks) pairs, e.g. a snapshot's)."""
        keep = set(alive)
        self._ns = {k: v for k, v in self._ns.items() if k in keep}


# ---------------------------------------------------------------------------------------------- the filesystem


def _under_mount(mount: Mount | None, path: str | None) -> str | None:
    """Where the cgroup `path` (as /proc/PID/cgroup shows it) is on the filesystem; None when it is outside this
    mount (another cgroup namespace's `/..` paths, a bind-mounted hierarchy's outside) or unknown."""
    if mount is None or path is None:
        return None
    comps = [c for c in path.split("/") if c]
    if any(c in (".", "..") for c in comps):
        return None
    root = [c for c in mount.root.split("/") if c]
    if comps[: len(root)] != root:
        return None
    return os.path.join(mount.point, *comps[len(root) :])


class FreezerReader:
    """Whether processes are frozen by the cgroup freezer, which ps can't show (frozen processes look like `S`):
    `cgroup.events` (v2, whose `frozen` also counts a frozen ancestor) or `freezer.state` (v1), read once per
    distinct cgroup and remembered for the reader's life: make one per refresh."""

    def __init__(self, mounts: CgroupMounts | None = None) -> None:
        self.mounts = mounts if mounts is not None else cgroup_mounts()
        self._seen: dict[tuple[int, str], bool | None] = {}

    def frozen(self, info: CgroupInfo | None) -> bool | None:
        """True when frozen (v2 or v1 freezer), False when not, None when it can't be told."""
        if info is None:
            return None
        v2 = self._state(2, info.v2_path) if info.v2_path not in (None, "/") else False
        v1 = self._state(1, info.freezer_path) if info.freezer_path not in (None, "/") else False
        if v2 or v1:
            return True
        return None if v2 is None and v1 is None else False

    def _state(self, version: int, path: str | None) -> bool | None:
        assert path is not None
        key = (version, path)
        if key in self._seen:
            return self._seen[key]
        mount = self.mounts.v2 if version == 2 else self.mounts.v1.get("freezer")
        where = _under_mount(mount, path)
        out: bool | None = None
        if where is not None:
            try:
                data = procfs.read_bytes(
                    os.path.join(where, "cgroup.events" if version == 2 else "freezer.state")
                )
            except OSError:
                data = None
            if data is not None and version == 2:
                fz = parse_events(data).get("frozen")
                out = None if fz is None else bool(fz)
            elif data is not None:
                out = data.strip() in (b"FROZEN", b"FREEZING")
        self._seen[key] = out
        return out


_mounts: CgroupMounts | None = None


def cgroup_mounts(refresh: bool = False) -> CgroupMounts:
    """This process's view of the cgroup mounts (cached; `refresh=True` rereads /proc/self/mountinfo)."""
    global _mounts
    if _mounts is None or refresh:
        try:
            data = procfs.read_bytes(f"{procfs.PROC}/self/mountinfo", 65536)
        except OSError:
            data = b""
        _mounts = parse_mountinfo(data)
    return _mounts


class CgroupDir(NamedTuple):
    """A validated cgroup directory."""

    path: str  # cgroup path inside its hierarchy, "/a/b" ("/" for the root)
    fs_path: str  # where it is on the filesystem
    version: int  # 2, or 1 (the v1 freezer hierarchy)
    mount: str  # the hierarchy's mount point
    mount_root: str  # the hierarchy's root as /proc/PID/cgroup paths see it ("/" unless bind-mounted)

    @property
    def comps(self) -> list[str]:
        return [c for c in self.path.split("/") if c]

    @property
    def proc_path(self) -> str:
        """The path as /proc/PID/cgroup shows it for members (mount root + path)."""
        if self.mount_root in ("", "/"):
            return self.path
        return self.mount_root.rstrip("/") + ("" if self.path == "/" else self.path)


def _split_components(rel: str, shown: str) -> list[str]:
    if "\0" in rel:
        raise CgroupError(f"cgroup {safe(shown)}: a NUL byte in the path")
    comps = [c for c in rel.split("/") if c]
    for c in comps:
        if c in (".", ".."):
            raise CgroupError(f"cgroup {safe(shown)}: '.' and '..' are not allowed in a cgroup path")
    return comps


def _locate(path: str, mounts: CgroupMounts) -> tuple[Mount, int, list[str]]:
    """Which hierarchy a path is in and its components under the mount: a filesystem path under the v2 mount or
    the v1 freezer mount, else a cgroup path (as /proc/PID/cgroup shows it) in v2, or in the v1 freezer."""
    candidates: list[tuple[Mount, int]] = []
    if mounts.v2 is not None:
        candidates.append((mounts.v2, 2))
    if "freezer" in mounts.v1:
        candidates.append((mounts.v1["freezer"], 1))
    if not candidates:
        raise CgroupError(f"cgroup {safe(path)}: no cgroup v2 or v1 freezer hierarchy is mounted here")
    for mount, version in candidates:
        point = mount.point.rstrip("/")
        if path == point or path.startswith(point + "/"):
            return mount, version, _split_components(path[len(point) :], path)
    mount, version = candidates[0]
    comps = _split_components(path, path)
    root = [c for c in mount.root.split("/") if c]
    if root and comps[: len(root)] == root:
        comps = comps[len(root) :]  # /proc/PID/cgroup paths include a bind-mounted hierarchy's root
    return mount, version, comps


def resolve_cgroup(path: str, *, mounts: CgroupMounts | None = None) -> CgroupDir:
    """Validate `path` and say where it is. Accepted: a filesystem path under a cgroup mount
    (`/sys/fs/cgroup/system.slice/x.scope`) or a cgroup path as /proc/PID/cgroup shows it (`/system.slice/x.scope`,
    taken in the v2 hierarchy, or the v1 freezer's where there is no v2). No `.` or `..`; every component is
    opened with O_NOFOLLOW and must stay on the mount's filesystem (no symlinks, no other mounts).
    Raises CgroupError (one line naming the path) otherwise."""
    if not isinstance(path, str) or not path:
        raise CgroupError(f"cgroup {path!r}: an empty path")
    m = mounts if mounts is not None else cgroup_mounts()
    mount, version, comps = _locate(path, m)
    fd = _open_components(mount.point, comps, path)
    os.close(fd)
    rel = "/" + "/".join(comps)
    return CgroupDir(
        rel, os.path.join(mount.point, *comps) if comps else mount.point, version, mount.point, mount.root
    )


_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_components(point: str, comps: Sequence[str], shown: str) -> int:
    """An O_PATH fd of the cgroup directory, opened one component at a time without following symlinks."""
    try:
        fd = os.open(point, _DIR_FLAGS)
    except OSError as e:
        raise CgroupError(
            f"cgroup {safe(shown)}: can't open the hierarchy at {safe(point)} ({e.strerror})"
        ) from e
    try:
        dev = os.fstat(fd).st_dev
        for c in comps:
            try:
                nxt = os.open(c, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    raise CgroupError(f"cgroup {safe(shown)}: no such cgroup") from e
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise CgroupError(
                        f"cgroup {safe(shown)}: {safe(c)} is not a cgroup directory (a symlink or a file)"
                    ) from e
                raise CgroupError(f"cgroup {safe(shown)}: {e.strerror}") from e
            os.close(fd)
            fd = nxt
            if os.fstat(fd).st_dev != dev:
                raise CgroupError(f"cgroup {safe(shown)}: {safe(c)} is another mount, not a cgroup")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _dirfd(cg: CgroupDir) -> Iterator[int]:
    fd = _open_components(cg.mount, cg.comps, cg.path)
    try:
        yield fd
    finally:
        os.close(fd)


def _read_file(dirfd: int, name: str, cap: int = 1 << 20) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        chunks = []
        total = 0
        while total < cap:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
            total += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write_file(dirfd: int, name: str, data: bytes) -> str | None:
    """Write a control file; None on success, else why not (missing, no permission, ...)."""
    try:
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as e:
        return _why(name, e)
    try:
        os.write(fd, data)
    except OSError as e:
        return _why(name, e)
    finally:
        os.close(fd)
    return None


def _why(name: str, e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return f"no {name} here (cgroup v1, or a kernel without it)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{name} is not writable (no permission)"
    if e.errno == errno.EROFS:
        return f"{name} is not writable (read-only cgroup mount)"
    return f"{name}: {e.strerror}"


def _procs_at(dirfd: int) -> list[int]:
    try:
        data = _read_file(dirfd, "cgroup.procs")
    except OSError:
        return []
    return [int(x) for x in data.split() if x.isdigit()]


def _members_fd(dirfd: int, recursive: bool = True) -> list[int]:
    pids = _procs_at(dirfd)
    if recursive:
        # fwalk opens each subdirectory relative to its parent's fd, never following symlinks.
        for _root, _dirs, _files, sub in os.fwalk(".", dir_fd=dirfd, follow_symlinks=False):
            if _root != ".":
                pids.extend(_procs_at(sub))
    return list(dict.fromkeys(pids))  # a pid is in one cgroup only, but it can move between two reads


def cgroup_members(path: str | CgroupDir, *, recursive: bool = True) -> list[int]:
    """Pids in the cgroup (and, recursive, every descendant cgroup), from cgroup.procs. Zombies are not listed."""
    cg = path if isinstance(path, CgroupDir) else resolve_cgroup(path)
    with _dirfd(cg) as fd:
        return _members_fd(fd, recursive)


class CgroupState(NamedTuple):
    populated: bool | None  # a live process in it or below (None: unknown, v1)
    frozen: bool | None  # frozen by the cgroup freezer (v2 cgroup.events, v1 freezer.state); None: unknown
    freezing: bool = False  # v1 only: FREEZING, in progress


def _state_fd(dirfd: int, version: int) -> CgroupState:
    if version == 2:
        try:
            ev = parse_events(_read_file(dirfd, "cgroup.events"))
        except OSError:
            return CgroupState(None, None)
        fz = ev.get("frozen")
        return CgroupState(
            bool(ev["populated"]) if "populated" in ev else None, None if fz is None else bool(fz)
        )
    try:
        st = _read_file(dirfd, "freezer.state").strip()
    except OSError:
        st = b""
    populated = bool(_members_fd(dirfd))
    if st == b"FROZEN":
        return CgroupState(populated, True)
    if st == b"FREEZING":
        return CgroupState(populated, False, True)
    return CgroupState(populated, False if st == b"THAWED" else None)


def cgroup_state(path: str | CgroupDir) -> CgroupState:
    """Populated and frozen, from cgroup.events (v2) or freezer.state (v1). What ps can't show: frozen members
    look like `S`."""
    cg = path if isinstance(path, CgroupDir) else resolve_cgroup(path)
    with _dirfd(cg) as fd:
        return _state_fd(fd, cg.version)


# ---------------------------------------------------------------------------------------------- refusal


def _path_in_hierarchy(pid: int, version: int) -> str | None:
    """A process's cgroup path in the v2 hierarchy, or in the v1 freezer's."""
    try:
        v2, v1 = parse_proc_cgroup(procfs.read_bytes(f"{procfs.PROC}/{pid}/cgroup"))
    except OSError:
        return None
    return v2 if version == 2 else v1.get("freezer")


def _refusal(cg: CgroupDir, members: Iterable[int], *, lineage_check: bool = True) -> str | None:
    shown = safe(cg.path)
    if not cg.comps:
        return f"cgroup {shown}: refusing the root cgroup (it holds every process)"
    members = set(members)
    if 1 in members:
        return f"cgroup {shown}: refusing, it contains pid 1 (init)"
    if not lineage_check:
        return None
    me = os.getpid()
    for pid in sorted(own_lineage()):
        inside = pid in members
        if not inside:
            # Also by path: a member we couldn't list (an unreadable sub-cgroup) is still ours.
            p = _path_in_hierarchy(pid, cg.version)
            inside = p is not None and is_within(p, cg.proc_path)
        if inside:
            who = "procguard itself" if pid == me else "an ancestor of procguard (its shell or launcher)"
            return f"cgroup {shown}: refusing, it contains {who} (pid {pid})"
    return None


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CgroupResult:
    """What an action on a whole cgroup did."""

    path: str  # the cgroup path acted on
    action: str  # "kill" | "terminate" | "freeze" | "thaw"
    method: str  # how: "cgroup.kill", "cgroup.freeze + SIGKILL", "v1 freezer + SIGKILL", "SIGSTOP + SIGKILL",
    #              "cgroup.freeze", "v1 freezer", "SIGSTOP", "SIGCONT"; "none" when the cgroup was empty
    fallback: str | None  # why the cgroup v2 file was not used (None when it was, or not needed)
    results: tuple[SignalResult, ...]  # one per member process seen (forked-and-killed unseen ones aren't)
    confirmed: bool  # kill/terminate: the cgroup was seen empty; freeze/thaw: the kernel says frozen/thawed
    elapsed: float  # seconds from the first action to the confirmation (or the timeout)
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.confirmed and all(r.ok for r in self.results)

    def summary(self) -> str:
        """One line for people, e.g. `cgroup /a: 3 killed via cgroup.kill in 4.2 ms, confirmed empty`."""
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.outcome.value] = counts.get(r.outcome.value, 0) + 1
        what = ", ".join(f"{n} {o}" for o, n in sorted(counts.items())) or "no members"
        done = {
            "kill": "confirmed empty",
            "terminate": "confirmed empty",
            "freeze": "confirmed frozen",
            "thaw": "confirmed thawed",
        }[self.action]
        tail = done if self.confirmed else f"NOT {done}"
        extra = f" ({self.fallback})" if self.fallback else ""
        return (
            f"cgroup {safe(self.path)}: {what} via {self.method}{extra} in {self.elapsed * 1000:.1f} ms, "
            f"{tail}"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "action": self.action,
            "method": self.method,
            "fallback": self.fallback,
            "confirmed": self.confirmed,
            "elapsed": round(self.elapsed, 6),
            "notes": list(self.notes),
            "results": [r.to_json() for r in self.results],
        }


class CgroupPlan(NamedTuple):
    """The dry run of an action on a cgroup: what it would hit and how."""

    cgroup: CgroupDir
    members: tuple[int, ...]
    refused: str | None  # why it would be refused (the CgroupError message), None when it may go ahead
    kill_method: str
    freeze_method: str
    fallback: str | None  # why the v2 files would not be used
    state: CgroupState
    name: CgroupName


def _writable(dirfd: int, name: str) -> str | None:
    """None when `name` exists and looks writable to us, else why not (os.access honours read-only mounts)."""
    try:
        os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except OSError as e:
        return _why(name, e)
    if not os.access(
        name,
        os.W_OK,
        dir_fd=dirfd,
        effective_ids=os.access in os.supports_effective_ids,
        follow_symlinks=False,
    ):
        return f"{name} is not writable (no permission or a read-only mount)"
    return None


def _methods(dirfd: int, version: int, method: str) -> tuple[str, str, str | None]:
    """(kill method, freeze method, fallback reason) that an action would take now."""
    _check_method(method)
    reasons: list[str] = []
    freezer: str | None = None  # the freezer a fallback would use
    if version == 2 and method != "signals":
        fw = _writable(dirfd, "cgroup.freeze")
        freezer = M_V2_FREEZE if fw is None else None
        reasons += [fw] if fw else []
    elif version == 1 and method != "signals":
        fz = _writable(dirfd, "freezer.state")
        freezer = M_V1_FREEZE if fz is None else None
        reasons += ["cgroup v1: no cgroup.kill"] + ([fz] if fz else [])
    else:
        reasons.append("per-process signals asked for")
    kill_m = {M_V2_FREEZE: M_V2_FREEZE_KILL, M_V1_FREEZE: M_V1_FREEZE_KILL, None: M_STOP_KILL}[freezer]
    if version == 2 and method in ("auto", "cgroup"):
        kw = _writable(dirfd, "cgroup.kill")
        if kw is None:
            kill_m = M_KILL
        else:
            reasons.insert(0, kw)
    elif method == "freezer":
        reasons.insert(0, "freezer method asked for")
    return kill_m, freezer or M_STOP, "; ".join(reasons) or None


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")


def cgroup_plan(path: str | CgroupDir, *, method: str = "auto") -> CgroupPlan:
    """The dry run: members (recursive), whether the action would be refused and why, and which way a kill and a
    freeze would go here (what the confirm dialog says)."""
    cg = path if isinstance(path, CgroupDir) else resolve_cgroup(path)
    with _dirfd(cg) as fd:
        members = _members_fd(fd)
        kill_m, freeze_m, why = _methods(fd, cg.version, method)
        state = _state_fd(fd, cg.version)
    return CgroupPlan(
        cg, tuple(members), _refusal(cg, members), kill_m, freeze_m, why, state, name_cgroup(cg.proc_path)
    )


# ---------------------------------------------------------------------------------------------- waiting


def _poll_wait(fds: Sequence[tuple[int, int]], seconds: float) -> None:
    if seconds <= 0:
        return
    if not fds:
        time.sleep(min(seconds, 0.005))
        return
    p = select.poll()
    for fd, ev in fds:
        p.register(fd, ev)
    p.poll(max(1, int(seconds * 1000)))


class _Job:
    """One action on one cgroup: its directory fd, its pinned members (signals.Pinned, the one pinned-process
    handle) and the clock."""

    def __init__(self, cg: CgroupDir, dirfd: int) -> None:
        self.cg = cg
        self.fd = dirfd
        self.target = Target.cgroup(cg.path)
        self.pins: dict[int, Pinned] = {}
        self.t0 = time.monotonic()
        self.notes: list[str] = []
        self._events: int | None = None
        if cg.version == 2:
            with contextlib.suppress(OSError):
                self._events = os.open(
                    "cgroup.events", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd
                )

    def close(self) -> None:
        for p in self.pins.values():
            p.close()
        if self._events is not None:
            os.close(self._events)
            self._events = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def members(self) -> list[int]:
        return _members_fd(self.fd)

    def pin_new(self) -> list[Pinned]:
        """Pin members not pinned yet (first call: all of them)."""
        out = []
        for pid in self.members():
            if pid in self.pins:
                continue
            p = pin_pid(pid, self.target)
            if p is not None:
                self.pins[pid] = p
                out.append(p)
        return out

    def live(self) -> list[Pinned]:
        return [p for p in self.pins.values() if p.result is None]

    def state(self) -> CgroupState:
        if self._events is not None:
            try:
                os.lseek(self._events, 0, os.SEEK_SET)
                ev = parse_events(os.read(self._events, 4096))
                fz = ev.get("frozen")
                return CgroupState(bool(ev.get("populated", 1)), None if fz is None else bool(fz))
            except OSError:
                pass
        return _state_fd(self.fd, self.cg.version)

    def drain(self) -> None:
        """Read cgroup.events so its POLLPRI (raised on every change, until the file is read) rearms."""
        if self._events is not None:
            with contextlib.suppress(OSError):
                os.lseek(self._events, 0, os.SEEK_SET)
                os.read(self._events, 4096)

    def empty(self) -> bool:
        st = self.state()
        return st.populated is False if st.populated is not None else not self.members()

    def _wait_fds(self, pins: Iterable[Pinned]) -> list[tuple[int, int]]:
        fds = [(p.fd, select.POLLIN) for p in pins if p.fd is not None]
        if self._events is not None:
            fds.append((self._events, select.POLLPRI))  # cgroup.events changes notify POLLPRI
        return fds

    def reap_exited(self, outcome: Outcome) -> None:
        for p in self.live():
            if p.exited():
                p.finish(outcome, self.now())

    def wait_until(
        self,
        done: Callable[[], bool],
        deadline: float,
        outcome: Outcome,
        on_tick: Callable[[], None] | None = None,
    ) -> bool:
        """Finish exited pins (as `outcome`) until done() or the deadline; True when done."""
        while True:
            self.drain()
            self.reap_exited(outcome)
            if on_tick is not None:
                on_tick()
            if done():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _poll_wait(self._wait_fds(self.live()), min(left, _RESCAN))

    def results(self) -> tuple[SignalResult, ...]:
        out = []
        for p in self.pins.values():
            p.close()
            if p.result is not None:
                out.append(p.result)
        return tuple(out)


# ---------------------------------------------------------------------------------------------- kill


def _kill_v2(job: _Job) -> str | None:
    """cgroup.kill: None when written, else why not."""
    return _write_file(job.fd, "cgroup.kill", b"1")


def _freeze_v2(job: _Job, frozen: bool, timeout: float) -> str | None:
    """Write cgroup.freeze and wait for cgroup.events to agree; None when it does, else why not."""
    err = _write_file(job.fd, "cgroup.freeze", b"1" if frozen else b"0")
    if err is not None:
        return err
    deadline = time.monotonic() + timeout
    while True:
        st = job.state()
        if st.frozen is frozen or (st.populated is False and frozen):
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            return f"cgroup.events did not report frozen {int(frozen)} within {timeout:g} s"
        _poll_wait(job._wait_fds(()), min(left, _RESCAN))


def _freeze_v1(job: _Job, frozen: bool, timeout: float) -> str | None:
    err = _write_file(job.fd, "freezer.state", b"FROZEN" if frozen else b"THAWED")
    if err is not None:
        return err
    want = b"FROZEN" if frozen else b"THAWED"
    deadline = time.monotonic() + timeout
    sleep = 0.0005
    while True:
        try:
            if _read_file(job.fd, "freezer.state").strip() == want:
                return None
        except OSError as e:
            return _why("freezer.state", e)
        if time.monotonic() >= deadline:
            return f"freezer.state did not become {want.decode()} within {timeout:g} s"
        # FREEZING needs a retry of the write to make progress on some kernels.
        if frozen:
            _write_file(job.fd, "freezer.state", want)
        time.sleep(sleep)
        sleep = min(sleep * 2, 0.02)


def _stop_rounds(job: _Job) -> bool:
    """SIGSTOP every member, rereading cgroup.procs until no new one appears; True when it settled."""
    for _ in range(_MAX_STOP_ROUNDS):
        fresh = [p for p in job.live() if not p.signalled] + job.pin_new()
        fresh = list({p.pid: p for p in fresh}.values())
        if not fresh:
            return True
        for p in fresh:
            p.signalled = True
        send_each(fresh, signal.SIGSTOP, job.t0)
    return False


def _sigkill_members(job: _Job) -> None:
    job.pin_new()
    send_each(job.live(), signal.SIGKILL, job.t0)


def _confirm_dead(job: _Job, timeout: float) -> bool:
    """Wait for every pinned member to exit and the cgroup to be empty; mark the rest survived."""
    deadline = time.monotonic() + timeout
    ok = job.wait_until(lambda: not job.live() and job.empty(), deadline, Outcome.KILLED)
    finish_survivors(job.live(), job.t0, "SIGKILL", timeout)
    return ok


def _fallback_kill(job: _Job, method: str, timeout: float) -> tuple[str, bool]:
    """Freeze (v2 freezer, v1 freezer, or SIGSTOP rounds), SIGKILL each member, confirm. -> (method, confirmed)"""
    v = job.cg.version
    if method in ("auto", "cgroup", "freezer") and v == 2 and _freeze_v2(job, True, FREEZE_TIMEOUT) is None:
        # A v2-frozen process still dies of SIGKILL; nothing can fork while frozen.
        _sigkill_members(job)
        ok = _confirm_dead(job, timeout)
        _freeze_v2(job, False, FREEZE_TIMEOUT)  # an empty cgroup left frozen would freeze whatever joins it
        return M_V2_FREEZE_KILL, ok
    if method in ("auto", "cgroup", "freezer") and v == 1 and _freeze_v1(job, True, FREEZE_TIMEOUT) is None:
        _sigkill_members(job)
        # v1-frozen processes can't act on the SIGKILL until thawed.
        _freeze_v1(job, False, FREEZE_TIMEOUT)
        return M_V1_FREEZE_KILL, _confirm_dead(job, timeout)
    settled = _stop_rounds(job)
    if not settled:
        job.notes.append(f"members kept appearing after {_MAX_STOP_ROUNDS} SIGSTOP rounds")
    _sigkill_members(job)
    ok = _confirm_dead(job, timeout)
    for _ in range(3):
        if ok or not job.members():
            break
        _sigkill_members(job)  # a child forked between the last round and the kills
        ok = _confirm_dead(job, timeout)
    return M_STOP_KILL, ok


def _kill_phase(job: _Job, method: str, timeout: float) -> tuple[str, str | None, bool]:
    """The final SIGKILL of every member: -> (method, fallback reason, confirmed)."""
    fallback: str | None = None
    if job.cg.version == 2 and method in ("auto", "cgroup"):
        fallback = _kill_v2(job)
        if fallback is None:
            deadline = time.monotonic() + timeout
            ok = job.wait_until(job.empty, deadline, Outcome.KILLED)
            job.reap_exited(Outcome.KILLED)
            left = set(job.members())
            for p in job.live():
                if p.pid not in left:
                    p.finish(Outcome.SURVIVED, job.now(), "moved out of the cgroup before the kill")
            finish_survivors(job.live(), job.t0, "cgroup.kill", timeout)
            return M_KILL, None, ok
    elif job.cg.version == 1 and method in ("auto", "cgroup"):
        fallback = "cgroup v1: no cgroup.kill"
    elif method in ("freezer", "signals"):
        fallback = f"{method} method asked for"
    used, ok = _fallback_kill(job, method, timeout)
    if used == M_STOP_KILL and method != "signals":
        why = "no usable freezer" if job.cg.version == 1 else "cgroup.freeze not usable"
        fallback = f"{fallback}; {why}" if fallback else why
    return used, fallback, ok


@contextlib.contextmanager
def _job(path: str | CgroupDir, *, lineage_check: bool = True) -> Iterator[_Job]:
    cg = path if isinstance(path, CgroupDir) else resolve_cgroup(path)
    with _dirfd(cg) as fd:
        job = _Job(cg, fd)
        try:
            members = job.members()
            why = _refusal(cg, members, lineage_check=lineage_check)
            if why:
                raise CgroupError(why)
            job.pin_new()
            job.t0 = time.monotonic()
            yield job
        finally:
            job.close()


class _Reporter:
    """Progress events for a caller's countdown (the app's confirm dialog), in signals' phases: sigterm, then
    exited (as members go) or waiting (every quarter second), sigkill, done."""

    def __init__(self, job: _Job, fn: ProgressFn | None, grace_end: float) -> None:
        self.job, self.fn, self.grace_end = job, fn, grace_end
        self.reported: set[int] = set()
        self.last = -1.0

    def send(self, phase: str, pids: Iterable[int]) -> None:
        if self.fn is not None:
            self.fn(Progress(phase, tuple(pids), max(0.0, self.grace_end - time.monotonic())))

    def tick(self) -> None:
        if self.fn is None:
            return
        done = {pid for pid, p in self.job.pins.items() if p.result is not None} - self.reported
        now = time.monotonic()
        if done:
            self.reported |= done
            self.send("exited", sorted(done))
        elif now - self.last >= 0.25:
            self.send("waiting", (p.pid for p in self.job.live()))
        else:
            return
        self.last = now


def kill_cgroup(
    path: str | CgroupDir,
    *,
    timeout: float = KILL_CONFIRM_TIMEOUT,
    method: str = "auto",
    on_progress: ProgressFn | None = None,
) -> CgroupResult:
    """SIGKILL every process in the cgroup and below, and confirm the cgroup is empty.

    cgroup v2: one write to `cgroup.kill` (atomic: nothing forks past it). Otherwise freeze (v2 `cgroup.freeze`,
    the v1 freezer, or per-process SIGSTOP rounds until no new member appears), SIGKILL each member, confirm.
    `method` forces a way: "auto" (the best available), "cgroup", "freezer", "signals".
    Raises CgroupError for a path that is invalid or refused."""
    _check_method(method)
    with _job(path) as job:
        if not job.pins and not job.members():
            return CgroupResult(job.cg.path, "kill", "none", None, (), True, 0.0)
        report = _Reporter(job, on_progress, job.t0)
        report.send("sigkill", (p.pid for p in job.live()))
        used, fallback, ok = _kill_phase(job, method, timeout)
        report.send("done", job.pins)
        return CgroupResult(
            job.cg.path, "kill", used, fallback, job.results(), ok, job.now(), tuple(job.notes)
        )


def terminate_cgroup(
    path: str | CgroupDir,
    grace: float = 5.0,
    *,
    timeout: float = KILL_CONFIRM_TIMEOUT,
    method: str = "auto",
    on_progress: ProgressFn | None = None,
) -> CgroupResult:
    """SIGTERM every member (a frozen cgroup is thawed first and stopped members continued, or the SIGTERM would
    wait), SIGTERM members that appear during the grace too, wait up to `grace` seconds for the cgroup to empty,
    then end the rest as `kill_cgroup` does (cgroup.kill on v2). Members that exit in the grace are EXITED, the
    others KILLED. `on_progress` hears signals' Progress events (sigterm, waiting/exited, sigkill, done)."""
    if grace < 0:
        raise ValueError(f"grace must be >= 0, not {grace}")
    _check_method(method)
    with _job(path) as job:
        if not job.pins and not job.members():
            return CgroupResult(job.cg.path, "terminate", "none", None, (), True, 0.0)
        st = job.state()
        if st.frozen or st.freezing:
            thaw = (
                _freeze_v2(job, False, FREEZE_TIMEOUT)
                if job.cg.version == 2
                else _freeze_v1(job, False, FREEZE_TIMEOUT)
            )
            job.notes.append(
                "thawed first so the members can act on SIGTERM"
                if thaw is None
                else f"could not thaw it first: {thaw}"
            )
        grace_end = job.t0 + grace
        report = _Reporter(job, on_progress, grace_end)

        def sigterm_new() -> None:
            fresh = [p for p in job.live() if not p.signalled] + job.pin_new()
            send_term([p for p in dict.fromkeys(fresh) if not p.signalled], job.t0)

        def tick() -> None:
            sigterm_new()
            report.tick()

        sigterm_new()
        report.send("sigterm", (p.pid for p in job.live()))
        ok = job.wait_until(lambda: not job.live() and job.empty(), grace_end, Outcome.EXITED, tick)
        if ok:
            report.send("done", job.pins)
            return CgroupResult(
                job.cg.path, "terminate", "SIGTERM", None, job.results(), True, job.now(), tuple(job.notes)
            )
        report.send("sigkill", (p.pid for p in job.live()))
        used, fallback, ok = _kill_phase(job, method, timeout)
        report.send("done", job.pins)
        return CgroupResult(
            job.cg.path,
            "terminate",
            f"SIGTERM, then {used}",
            fallback,
            job.results(),
            ok,
            job.now(),
            tuple(job.notes),
        )


def _finish_all(job: _Job, outcome: Outcome) -> None:
    for p in job.live():
        p.finish(outcome, job.now())


def freeze_cgroup(
    path: str | CgroupDir, *, timeout: float = FREEZE_TIMEOUT, method: str = "auto"
) -> CgroupResult:
    """Pause every member: cgroup.freeze (v2; confirmed by cgroup.events `frozen 1`), the v1 freezer, or
    SIGSTOP rounds until no new member appears (confirmed per process in /proc). Refused like a kill: freezing
    procguard's own cgroup would freeze procguard."""
    _check_method(method)
    with _job(path) as job:
        fallback: str | None = None
        if job.cg.version == 2 and method in ("auto", "cgroup", "freezer"):
            fallback = _freeze_v2(job, True, timeout)
            if fallback is None:
                job.pin_new()  # members forked before the freeze took hold
                _finish_all(job, Outcome.PAUSED)
                return CgroupResult(job.cg.path, "freeze", M_V2_FREEZE, None, job.results(), True, job.now())
        elif job.cg.version == 1 and method in ("auto", "cgroup", "freezer"):
            fallback = _freeze_v1(job, True, timeout)
            if fallback is None:
                job.pin_new()
                _finish_all(job, Outcome.PAUSED)
                return CgroupResult(job.cg.path, "freeze", M_V1_FREEZE, None, job.results(), True, job.now())
        else:
            fallback = "per-process signals asked for"
        settled = _stop_rounds(job)
        ok = confirm_states(job.live(), True, job.t0, timeout) and settled
        return CgroupResult(
            job.cg.path,
            "freeze",
            M_STOP,
            fallback,
            job.results(),
            ok,
            job.now(),
            () if settled else (f"members kept appearing after {_MAX_STOP_ROUNDS} rounds",),
        )


def thaw_cgroup(path: str | CgroupDir, *, timeout: float = FREEZE_TIMEOUT) -> CgroupResult:
    """Resume every member: thaw the freezer (v2 cgroup.freeze 0 or v1 THAWED) when it is frozen, and SIGCONT
    members stopped by a signal (a pause that fell back to SIGSTOP). Not refused for procguard's own cgroup (a
    thaw can't hurt it); the root cgroup and pid 1 still are."""
    with _job(path, lineage_check=False) as job:
        st = job.state()
        method, why = M_CONT, None
        confirmed = True
        if st.frozen or st.freezing:
            why = _freeze_v2(job, False, timeout) if job.cg.version == 2 else _freeze_v1(job, False, timeout)
            confirmed = why is None
            method = (M_V2_FREEZE if job.cg.version == 2 else M_V1_FREEZE) if why is None else M_CONT
        stopped = [p for p in job.live() if p.state() in procfs.STOPPED_STATES]
        send_each(stopped, signal.SIGCONT, job.t0)
        if stopped:
            confirmed = confirm_states(job.live(), False, job.t0, timeout) and confirmed
            if method != M_CONT:
                method = f"{method} + {M_CONT}"
        _finish_all(job, Outcome.RESUMED)
        return CgroupResult(job.cg.path, "thaw", method, why, job.results(), confirmed, job.now())
