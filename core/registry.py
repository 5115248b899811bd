"""Per-user registry of guarded processes: one JSON file per process, `<pid>.json`, in a private folder.

Folder: ``platformdirs.user_runtime_dir("procguard")/registry``, or ``<tmp>/procguard-<uid>/registry`` when
that can't be used; both mode 0700. ``PROCGUARD_REGISTRY_DIR`` overrides it (tests, containers). Readers look
in every place an entry may have been written (a guarded process and the reader may not share
XDG_RUNTIME_DIR), so an entry is found wherever its writer put it.

An entry is only believed while its process lives: the pid must exist with the same start time (clock ticks
since boot, stored as ``extra["start_ticks"]``; ``create_time`` is the same epoch float a Snapshot reports).
Entries of processes that died without cleaning up (SIGKILL) are ignored and pruned by readers.

Only a process writes its own entry: register/update_entry/unregister take a per-process lock, so a publisher
thread and a flush-handler thread can update one entry without losing each other's fields. Writes go through
a temporary file and os.replace, so readers never see half an entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import stat
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from procguard.core import procfs

__all__ = [
    "RegistryEntry",
    "registry_dir",
    "register",
    "unregister",
    "update_entry",
    "get_entry",
    "read_entries",
    "ENV_OVERRIDE",
]

ENV_OVERRIDE = "PROCGUARD_REGISTRY_DIR"
_TOLERANCE = 0.05  # seconds: create_time comparisons when no start ticks are stored

# RLock: update_entry may be reached from a signal handler interrupting this very thread mid-write.
_write_lock = threading.RLock()
_depth = threading.local()


@dataclass
class RegistryEntry:
    pid: int
    create_time: float  # epoch seconds, as Proc.create_time
    script: str  # the script's identity key (realpath, "module@cwd", ...) or name
    lock: str | None  # path of the single-instance lock held, if any
    flush_signal: int | None  # signal number that asks this process to flush its GPU caches
    started: float  # when the guard registered (epoch seconds)
    argv: list[str]
    uid: int
    extra: dict[str, Any] = field(default_factory=dict)  # start_ticks, flush results, allocator figures...


_FIELDS = frozenset(f.name for f in fields(RegistryEntry))


# ---------------------------------------------------------------------------------------------- folders


def _platform_dir() -> str | None:
    try:
        import platformdirs

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RuntimeDirWarning when XDG_RUNTIME_DIR is unset: expected
            return os.path.join(platformdirs.user_runtime_dir("procguard"), "registry")
    except Exception:  # noqa: BLE001 - PermissionError for an unsafe fallback, or platformdirs missing
        return None


def _tmp_dir(uid: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"procguard-{uid}", "registry")


def _candidates(uid: int) -> list[str]:
    """Every folder an entry of `uid` may be in, preferred first."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        return [override]
    out: list[str] = []
    if uid == os.geteuid():
        p = _platform_dir()
        if p:
            out.append(p)
    tmp = tempfile.gettempdir()
    out += [
        f"/run/user/{uid}/procguard/registry",
        os.path.join(tmp, f"runtime-{uid}", "procguard", "registry"),
        _tmp_dir(uid),
    ]
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def _safe_dir(path: str, uid: int) -> bool:
    """An existing folder owned by `uid`, not a symlink, closed to others: safe to write entries into."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077


def _make_private_dir(path: str, uid: int) -> bool:
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    except OSError:
        return False
    return _safe_dir(path, uid)


def registry_dir(uid: int | None = None) -> Path:
    """The folder new entries of `uid` (default: ours) go to; created, mode 0700, for our own uid."""
    own = os.geteuid()
    uid = own if uid is None else uid
    cands = _candidates(uid)
    if uid != own:
        for p in cands:
            if os.path.isdir(p):
                return Path(p)
        return Path(cands[-1])
    for p in cands:
        if _safe_dir(p, uid) or _make_private_dir(p, uid):
            return Path(p)
    raise PermissionError(f"no private registry folder usable for uid {uid} (tried {', '.join(cands)})")


def _own_dirs() -> list[str]:
    return [p for p in _candidates(os.geteuid()) if os.path.isdir(p)]


def _all_dirs() -> list[str]:
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        return [override] if os.path.isdir(override) else []
    tmp = tempfile.gettempdir()
    found = set(_own_dirs())
    for pattern in ("/run/user/*/procguard/registry", os.path.join(tmp, "runtime-*", "procguard", "registry"),
                    os.path.join(tmp, "procguard-*", "registry")):
        found.update(p for p in glob.glob(pattern) if os.path.isdir(p))
    return sorted(found)


# ---------------------------------------------------------------------------------------------- liveness


def _start_ticks(pid: int) -> int | None:
    if procfs.HAS_PROC:
        return procfs.start_ticks_of(pid)
    return None


def _create_time_now(pid: int) -> float | None:
    if procfs.HAS_PROC:
        t = _start_ticks(pid)
        return None if t is None else procfs.create_time(t)
    try:  # pragma: no cover - non-Linux path
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001
        return None


def _alive(entry: RegistryEntry) -> bool:
    ticks = entry.extra.get("start_ticks")
    if isinstance(ticks, int) and procfs.HAS_PROC:
        return _start_ticks(entry.pid) == ticks
    now = _create_time_now(entry.pid)
    return now is not None and abs(now - entry.create_time) <= _TOLERANCE


# ---------------------------------------------------------------------------------------------- files


def _from_json(data: dict[str, Any]) -> RegistryEntry | None:
    try:
        extra = data.get("extra") or {}
        return RegistryEntry(
            pid=int(data["pid"]),
            create_time=float(data["create_time"]),
            script=str(data.get("script", "")),
            lock=data.get("lock"),
            flush_signal=data.get("flush_signal"),
            started=float(data.get("started", 0.0)),
            argv=[str(a) for a in data.get("argv") or []],
            uid=int(data.get("uid", -1)),
            extra=dict(extra) if isinstance(extra, dict) else {},
        )
    except (KeyError, TypeError, ValueError):
        return None


def _read_file(path: str) -> RegistryEntry | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return _from_json(data) if isinstance(data, dict) else None


def _write_file(directory: str, entry: RegistryEntry) -> None:
    path = os.path.join(directory, f"{entry.pid}.json")
    tmp = os.path.join(directory, f".{entry.pid}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(entry), f, separators=(",", ":"), default=str)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _dir_locked(directory: str) -> Iterator[None]:
    """Serialise read-modify-write of entries with other processes (a requester writing into a target's entry)
    with flock on the folder itself. Reentrant within a thread (a nested call skips the flock: it would wait on
    itself)."""
    depth = getattr(_depth, "n", 0)
    fd = None
    if depth == 0:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None  # unlockable folder: the atomic replace still keeps readers safe
    _depth.n = depth + 1
    try:
        yield
    finally:
        _depth.n = depth
        if fd is not None:
            os.close(fd)  # drops the flock


def _find_file(pid: int, dirs: list[str]) -> str | None:
    for d in dirs:
        p = os.path.join(d, f"{pid}.json")
        if os.path.exists(p):
            return p
    return None


def _prune(path: str) -> None:
    # Best effort: another reader may have pruned it first, or it belongs to another user.
    with contextlib.suppress(OSError):
        os.unlink(path)


def _prune_stale(path: str, stale: RegistryEntry) -> None:
    """Remove a dead process's entry, unless a new process with the same pid has registered meanwhile."""
    with _dir_locked(os.path.dirname(path)):
        now = _read_file(path)
        if now is not None and (now.create_time, now.extra.get("start_ticks")) == (
                stale.create_time, stale.extra.get("start_ticks")):
            _prune(path)


# ---------------------------------------------------------------------------------------------- API


def register(*, script: str, lock: str | None = None, flush_signal: int | None = None,
             extra: dict[str, Any] | None = None) -> RegistryEntry:
    """Register the current process (replacing an entry it wrote before)."""
    pid = os.getpid()
    ticks = _start_ticks(pid)
    ctime = procfs.create_time(ticks) if ticks is not None else (_create_time_now(pid) or time.time())
    argv = list(procfs.read_cmdline(pid) or ()) if procfs.HAS_PROC else []
    if not argv:
        argv = list(getattr(sys, "orig_argv", sys.argv))
    ext: dict[str, Any] = dict(extra or {})
    if ticks is not None:
        ext["start_ticks"] = ticks
    entry = RegistryEntry(pid, ctime, script, lock, flush_signal, time.time(), argv, os.geteuid(), ext)
    with _write_lock:
        directory = str(registry_dir())
        # An older entry of ours in another folder (XDG_RUNTIME_DIR changed) would be found first by readers.
        for d in _own_dirs():
            if d != directory:
                _prune(os.path.join(d, f"{pid}.json"))
        with _dir_locked(directory):
            _write_file(directory, entry)
    return entry


def unregister(pid: int | None = None) -> None:
    """Remove the entry of `pid` (default: this process). Missing entries are fine."""
    pid = os.getpid() if pid is None else pid
    with _write_lock:
        for d in _own_dirs():
            with _dir_locked(d):
                _prune(os.path.join(d, f"{pid}.json"))


def update_entry(pid: int, /, **fields_: Any) -> None:
    """Merge `fields_` into the entry of `pid`: known fields are replaced, other keys merged into `extra`.

    No-op when the entry does not exist (unregistered already: a late publisher must not bring it back).
    Meant for a process's own entry; atomic for readers.
    """
    with _write_lock:
        path = _find_file(pid, _own_dirs())
        if path is None:
            return
        with _dir_locked(os.path.dirname(path)):
            entry = _read_file(path)  # re-read under the lock: the file may be gone by now
            if entry is None:
                return
            for k, v in fields_.items():
                if k in ("pid", "uid"):
                    continue  # the file name and folder say whose entry it is
                if k == "extra" and isinstance(v, dict):
                    entry.extra.update(v)
                elif k in _FIELDS:
                    setattr(entry, k, v)
                else:
                    entry.extra[k] = v
            _write_file(os.path.dirname(path), entry)


def get_entry(pid: int) -> RegistryEntry | None:
    """The live entry of `pid` (ours, or any user's we can read); None when absent or stale."""
    dirs = _own_dirs()
    path = _find_file(pid, dirs)
    if path is None:
        dirs = [d for d in _all_dirs() if d not in dirs]
        path = _find_file(pid, dirs)
    if path is None:
        return None
    entry = _read_file(path)
    if entry is None or entry.pid != pid:
        return None
    if not _alive(entry):
        _prune_stale(path, entry)
        return None
    return entry


def read_entries(all_users: bool = False) -> list[RegistryEntry]:
    """Live entries, by pid; stale files are pruned. `all_users` reads every registry folder we can (root:
    everybody's); otherwise only our own."""
    dirs = _all_dirs() if all_users else _own_dirs()
    out: dict[int, RegistryEntry] = {}
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(d, name)
            entry = _read_file(path)
            if entry is None:
                continue
            if not _alive(entry):
                _prune_stale(path, entry)
                continue
            out.setdefault(entry.pid, entry)
    return [out[p] for p in sorted(out)]
