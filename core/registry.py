"""Per-user registry of guarded processes: one JSON file per process, `<pid>.json`, in a private folder.

Folder: ``$XDG_RUNTIME_DIR/procguard/registry`` (elsewhere than Linux: platformdirs' runtime dir), else
``/run/user/<uid>/procguard/registry``, ``<tmp>/runtime-<uid>/procguard/registry`` or
``<tmp>/procguard-<uid>/registry``: the first that is, or can be made, private to us
(`privdir.ensure_private_dir`: ours, mode 0700, no symlink or others-writable folder on the way). A predictable
folder another user created first is never adopted: it is skipped, and when none is left `register` raises
PrivateDirError naming each folder and why. ``PROCGUARD_REGISTRY_DIR`` overrides the list (tests, containers).
Readers look in every place an entry may have been written (a guarded process and the reader may not share
XDG_RUNTIME_DIR), so an entry is found wherever its writer put it.

Trust rule (the README's "Security model"): an entry is believed, for actions (flush) and for showing a
process as guarded, only when all of these hold:

- the file is a regular file with one link, owned by the uid of ``/proc/PID`` (the process's owner) or root;
- its folder is private to that uid (`privdir.private_dir_problem(folder, uid)`: owned by it, mode 0700, no
  symlink or others-writable folder on the way, root's sticky /tmp excepted);
- it names the same process: the pid of its file name, and the same start time (``start_ticks``, clock ticks
  since boot; entries written before that field read ``extra["start_ticks"]``).

Files are read with ``O_NOFOLLOW`` and a 64 KiB cap (`privdir.read_small`). An entry whose process is gone
(pid and start ticks no longer match: SIGKILL, no clean-up) is stale and ignored; readers prune stale entries
only in our own private folders, never another user's. An entry of a live process that fails the rest of the
rule is ignored too; viewers can ask for it (``include_untrusted=True``) and get it with ``trusted=False`` and
``untrusted_reason`` (already sanitized for a terminal).

Writing: procguard writes only its own entries, only in folders private to it, through
`privdir.write_atomic` (an ``mkstemp`` temp file, then rename). register/update_entry/unregister take a
per-process lock and an flock on the folder, so a publisher thread, a flush-handler thread and a same-user
requester (`flush.request_flush` writes its request id into the target's entry) don't lose each other's fields.
A requester of another uid (root) never writes: see `procguard.core.flush`.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from procguard.core import privdir, procfs
from procguard.core.procid import ProcId
from procguard.core.sanitize import safe

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
_TOLERANCE = 0.05  # seconds: create_time comparisons where there are no start ticks (no /proc)
_NAME = re.compile(r"([1-9][0-9]{0,9})\.json")
_UID_DIR = re.compile(r"(?:procguard|runtime)-[0-9]{1,10}")

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
    uid: int  # as the writer said; the trust rule uses the owner of /proc/PID, not this
    extra: dict[str, Any] = field(default_factory=dict)  # flush results, allocator figures...
    start_ticks: int | None = None  # with pid: the process's identity (ProcId)
    # How this reader judged the file (never stored in it):
    trusted: bool = field(default=True, compare=False)
    untrusted_reason: str | None = field(default=None, compare=False)
    path: str | None = field(default=None, compare=False, repr=False)

    @property
    def proc_id(self) -> ProcId | None:
        return None if self.start_ticks is None else ProcId(self.pid, self.start_ticks)

    def to_json(self) -> dict[str, Any]:
        """The stored form (what a reader's judgement says about the file is left out)."""
        return {k: getattr(self, k) for k in _STORED}


_LOCAL = frozenset({"trusted", "untrusted_reason", "path"})
_STORED = tuple(f.name for f in fields(RegistryEntry) if f.name not in _LOCAL)
_FIELDS = frozenset(_STORED)


# ---------------------------------------------------------------------------------------------- folders


def _platform_dir() -> str | None:
    if sys.platform.startswith("linux"):
        # What platformdirs.user_runtime_dir gives on Linux, without its cost on every read: $XDG_RUNTIME_DIR;
        # its fallbacks (/run/user/<uid>, <tmp>/runtime-<uid>) are candidates of their own. Whether the folder
        # is really ours is checked where it is used (private_dir_problem / ensure_private_dir).
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        return os.path.join(xdg, "procguard", "registry") if xdg and os.path.isabs(xdg) else None
    try:  # pragma: no cover - other systems
        import platformdirs

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RuntimeDirWarning when XDG_RUNTIME_DIR is unset: expected
            return os.path.join(platformdirs.user_runtime_dir("procguard"), "registry")
    except Exception:  # noqa: BLE001 - PermissionError for an unsafe fallback, or platformdirs missing
        return None


def _candidates(uid: int) -> list[str]:
    """Every folder an entry of `uid` may be in, preferred first."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        return [os.path.abspath(override)]
    out: list[str] = []
    if uid == os.geteuid():
        p = _platform_dir()
        if p:
            out.append(p)
    tmp = tempfile.gettempdir()
    out += [
        f"/run/user/{uid}/procguard/registry",
        os.path.join(tmp, f"runtime-{uid}", "procguard", "registry"),
        os.path.join(tmp, f"procguard-{uid}", "registry"),
    ]
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def registry_dir(uid: int | None = None) -> Path:
    """The folder new entries of `uid` (default: ours) go to. For our own uid: created or verified private to
    us (PrivateDirError, naming each folder tried and why, when none can be). For another uid: where its
    entries would be looked for first (nothing is created or checked)."""
    own = os.geteuid()
    uid = own if uid is None else uid
    cands = _candidates(uid)
    if uid != own:
        for p in cands:
            if os.path.isdir(p):
                return Path(p)
        return Path(cands[-1])
    problems: list[str] = []
    for p in cands:
        base = f"/run/user/{uid}"
        if p.startswith(base + "/") and not os.path.isdir(base) and not os.environ.get(ENV_OVERRIDE):
            continue  # the login manager makes /run/user/<uid>; we don't
        try:
            return privdir.ensure_private_dir(p)
        except privdir.PrivateDirError as e:
            problems.append(str(e))
    raise privdir.PrivateDirError(f"no private registry folder for uid {uid}: {'; '.join(problems)}")


def _own_dirs() -> list[str]:
    """Our candidate folders that exist and are private to us: the only ones we write, rename or unlink in."""
    return [p for p in _candidates(os.geteuid()) if privdir.private_dir_problem(p) is None]


def _all_dirs(own: list[str]) -> list[str]:
    """Every registry folder to read, `own` (our `_own_dirs()`) first: whoever made them, entries are judged
    file by file."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        return [os.path.abspath(override)] if os.path.isdir(override) else []
    tmp = tempfile.gettempdir()
    found: set[str] = set()
    # (pattern, the folder level that names the uid): other names are not ours to read.
    for pattern, up, uid_name in (
        ("/run/user/*/procguard/registry", 3, re.compile(r"[0-9]{1,10}")),
        (os.path.join(tmp, "runtime-*", "procguard", "registry"), 3, _UID_DIR),
        (os.path.join(tmp, "procguard-*", "registry"), 2, _UID_DIR),
    ):
        for p in glob.glob(pattern):
            if uid_name.fullmatch(Path(p).parts[-up]) and p not in own and os.path.isdir(p):
                found.add(p)
    return own + sorted(found)


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

        return float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001
        return None


def _alive(entry: RegistryEntry) -> bool:
    """The very process the entry names (pid and start time) still exists."""
    ident = entry.proc_id
    if procfs.HAS_PROC:
        return ident is not None and ident.alive()
    now = _create_time_now(entry.pid)  # pragma: no cover - non-Linux path
    return now is not None and abs(now - entry.create_time) <= _TOLERANCE  # pragma: no cover


def _owner(pid: int) -> int | None:
    """The uid that owns the process (the owner of /proc/PID: its effective uid; root for a non-dumpable one)."""
    if procfs.HAS_PROC:
        return procfs.read_uid(pid)
    try:  # pragma: no cover - non-Linux path
        import psutil

        return int(psutil.Process(pid).uids().effective)
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------------------------------------- files


def _opt_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _from_json(data: dict[str, Any]) -> RegistryEntry | None:
    try:
        extra = data.get("extra") or {}
        extra = dict(extra) if isinstance(extra, dict) else {}
        ticks = data.get("start_ticks")
        if ticks is None:
            ticks = extra.get("start_ticks")  # entries written before the field had them here
        return RegistryEntry(
            pid=int(data["pid"]),
            create_time=float(data["create_time"]),
            script=str(data.get("script", "")),
            lock=data.get("lock") if isinstance(data.get("lock"), str) else None,
            flush_signal=_opt_int(data.get("flush_signal")),
            started=float(data.get("started", 0.0)),
            argv=[str(a) for a in data.get("argv") or []],
            uid=int(data.get("uid", -1)),
            extra=extra,
            start_ticks=_opt_int(ticks),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _parse(path: str) -> tuple[RegistryEntry, os.stat_result] | None:
    got = privdir.read_small(path)
    if got is None:
        return None
    raw, st = got
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    entry = _from_json(data) if isinstance(data, dict) else None
    return None if entry is None else (entry, st)


def _trust_problem(entry: RegistryEntry, path: str, st: os.stat_result) -> str | None:
    """Why the file at `path` (its fstat `st`) is not to be believed about the live process it names."""
    m = _NAME.fullmatch(os.path.basename(path))
    if m is None or int(m.group(1)) != entry.pid:
        return f"the file {os.path.basename(path)} names pid {entry.pid}"
    owner = _owner(entry.pid)
    if owner is None:
        return f"the owner of pid {entry.pid} is unknown"
    if st.st_nlink != 1:
        return f"{path} has {st.st_nlink} links"
    problem = privdir.trusted_file_problem(st, os.path.dirname(path), owner)
    return None if problem is None else f"{path}: {problem}"


def _load(path: str, own: bool) -> RegistryEntry | None:
    """The entry in `path`, judged (see the module doc); None when missing, garbage or stale. A stale entry is
    pruned when `own` (the folder is private to us) and the file is ours."""
    got = _parse(path)
    if got is None:
        return None
    entry, st = got
    if not _alive(entry):
        if own and st.st_uid == os.geteuid():
            _prune_stale(path, entry)
        return None
    entry.path = path
    problem = _trust_problem(entry, path, st)
    if problem is not None:
        entry.trusted, entry.untrusted_reason = False, safe(problem)
    return entry


def _write_file(directory: str, entry: RegistryEntry) -> None:
    data = json.dumps(entry.to_json(), separators=(",", ":"), default=str).encode()
    privdir.write_atomic(directory, f"{entry.pid}.json", data)


@contextlib.contextmanager
def _dir_locked(directory: str) -> Iterator[None]:
    """Serialise read-modify-write of entries with other processes of our uid (a requester writing into a
    target's entry) with flock on the folder itself. Reentrant within a thread (a nested call skips the flock:
    it would wait on itself)."""
    depth = getattr(_depth, "n", 0)
    fd = None
    if depth == 0:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
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


def _unlink(path: str) -> None:
    # Only called for files in our own private folders. Best effort: another reader may have pruned it first.
    with contextlib.suppress(OSError):
        os.unlink(path)


def _prune_stale(path: str, stale: RegistryEntry) -> None:
    """Remove a dead process's entry from our own folder, unless a new process with the same pid has registered
    meanwhile."""
    directory = os.path.dirname(path)
    if privdir.private_dir_problem(directory) is not None:
        return  # not our folder: never remove anything in it
    with _dir_locked(directory):
        got = _parse(path)
        if (
            got is not None
            and got[1].st_uid == os.geteuid()
            and (got[0].create_time, got[0].start_ticks) == (stale.create_time, stale.start_ticks)
        ):
            _unlink(path)


# ---------------------------------------------------------------------------------------------- API


def register(
    *,
    script: str,
    lock: str | None = None,
    flush_signal: int | None = None,
    extra: dict[str, Any] | None = None,
) -> RegistryEntry:
    """Register the current process (replacing an entry it wrote before). Raises PrivateDirError (an OSError)
    when no registry folder private to us can be had."""
    pid = os.getpid()
    ticks = _start_ticks(pid)
    ctime = procfs.create_time(ticks) if ticks is not None else (_create_time_now(pid) or time.time())
    argv = list(procfs.read_cmdline(pid) or ()) if procfs.HAS_PROC else []
    if not argv:
        argv = list(getattr(sys, "orig_argv", sys.argv))
    entry = RegistryEntry(
        pid, ctime, script, lock, flush_signal, time.time(), argv, os.geteuid(), dict(extra or {}), ticks
    )
    with _write_lock:
        directory = str(registry_dir())
        # An older entry of ours in another folder (XDG_RUNTIME_DIR changed) would be found first by readers.
        for d in _own_dirs():
            if d != directory:
                _unlink(os.path.join(d, f"{pid}.json"))
        with _dir_locked(directory):
            _write_file(directory, entry)
    entry.path = os.path.join(directory, f"{pid}.json")
    return entry


def unregister(pid: int | None = None) -> None:
    """Remove the entry of `pid` (default: this process) from our own folders. Missing entries are fine."""
    pid = os.getpid() if pid is None else pid
    with _write_lock:
        for d in _own_dirs():
            with _dir_locked(d):
                _unlink(os.path.join(d, f"{pid}.json"))


def update_entry(pid: int, /, **fields_: Any) -> None:
    """Merge `fields_` into the entry of `pid`: known fields are replaced, other keys merged into `extra`.

    Only entries in our own private folders are touched (a process's own entry, or a same-user requester's
    write into its target's). No-op when the entry does not exist (unregistered already: a late publisher must
    not bring it back). Atomic for readers.
    """
    with _write_lock:
        for d in _own_dirs():
            path = os.path.join(d, f"{pid}.json")
            if os.path.lexists(path):
                break
        else:
            return
        with _dir_locked(d):
            got = _parse(path)  # re-read under the lock: the file may be gone by now
            if got is None or got[0].pid != pid:
                return
            entry = got[0]
            for k, v in fields_.items():
                if k in ("pid", "uid", "start_ticks"):
                    continue  # the file name, folder and process say whose entry it is
                if k == "extra" and isinstance(v, dict):
                    entry.extra.update(v)
                elif k in _FIELDS:
                    setattr(entry, k, v)
                else:
                    entry.extra[k] = v
            _write_file(d, entry)


def get_entry(pid: int, *, include_untrusted: bool = False) -> RegistryEntry | None:
    """The live, trusted entry of `pid` (ours, or any user's we can read); None when absent, stale or not to be
    believed (module doc). With `include_untrusted`, an entry of the live process that fails the trust rule is
    returned when no trusted one exists, with ``trusted=False`` and the reason: for viewers, never for
    actions."""
    own = _own_dirs()
    untrusted: RegistryEntry | None = None
    for d in own:
        entry = _load(os.path.join(d, f"{pid}.json"), own=True)
        if entry is not None and entry.trusted:
            return entry
        untrusted = untrusted or entry
    # Every folder is read, not just the first holding a file: a planted file must not hide the real entry.
    for d in _all_dirs(own):
        if d in own:
            continue
        entry = _load(os.path.join(d, f"{pid}.json"), own=False)
        if entry is not None and entry.trusted:
            return entry
        untrusted = untrusted or entry
    return untrusted if include_untrusted else None


def read_entries(all_users: bool = False, *, include_untrusted: bool = False) -> list[RegistryEntry]:
    """Live trusted entries, by pid; our own stale files are pruned. `all_users` reads every registry folder we
    can (root: everybody's); otherwise only our own. `include_untrusted` adds the live processes' entries that
    fail the trust rule (``trusted=False``, ``untrusted_reason``), where no trusted one exists for the pid."""
    own = _own_dirs()
    dirs = _all_dirs(own) if all_users else own
    out: dict[int, RegistryEntry] = {}
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        is_own = d in own
        for name in names:
            if _NAME.fullmatch(name) is None:
                continue
            entry = _load(os.path.join(d, name), own=is_own)
            if entry is None or not (entry.trusted or include_untrusted):
                continue
            have = out.get(entry.pid)
            if have is None or (entry.trusted and not have.trusted):
                out[entry.pid] = entry
    return [out[p] for p in sorted(out)]
