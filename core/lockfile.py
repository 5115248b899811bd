"""Where single-instance lock files live and what their holder metadata says.

A lock file's content is one JSON object written by the holder right after it took the lock:
``{"procguard": 1, "pid": ..., "argv": [...], "cwd": ..., "host": ..., "start_time": ..., "acquired_at": ...,
"version": ...}``. Readers never take the lock to read it.

A lock file is *managed* (procguard's own) when its content parses as that metadata, or when it is a
``*.lock`` file in a procguard lock folder (``.../procguard/locks`` or ``.../procguard-<uid>/locks``): the
second rule covers the moment between creating the file and writing the metadata, and files whose holder
crashed in that moment.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shlex
import socket
import stat
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LockError",
    "LockHolder",
    "in_lock_dir",
    "lock_dir",
    "lock_path_for",
    "read_holder",
]

LOCK_SUFFIX = ".lock"
META_FORMAT = 1
# Metadata is a few hundred bytes; anything much bigger is not ours and is not worth reading.
MAX_META_BYTES = 64 * 1024


class LockError(OSError):
    """The lock file can't be created or used (unwritable folder, a directory, read-only filesystem...).

    An OSError so that callers already handling filesystem errors catch it; ``str()`` is the plain
    message, which always names the path (also in ``.filename``).
    """

    def __init__(self, message: str, path: str | os.PathLike[str], err: int | None = None) -> None:
        super().__init__(err, message, os.fspath(path))
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message, self.filename, self.errno))


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a lock, as its metadata says."""

    pid: int
    argv: tuple[str, ...]
    cwd: str
    host: str
    start_time: float | None  # the holder process's start, epoch seconds
    version: str  # procguard version of the holder
    path: str  # the lock file this was read from
    acquired_at: float | None = None  # when the lock was taken, epoch seconds

    def command(self, width: int = 80) -> str:
        """The holder's command line for humans: interpreter basename, then the arguments."""
        if not self.argv:
            return "?"
        # One line whatever the arguments hold (python -c code has newlines).
        text = " ".join(shlex.join([os.path.basename(self.argv[0]), *self.argv[1:]]).split())
        return text if len(text) <= width else text[: width - 1] + "…"

    def since(self) -> str:
        """When the holder started: HH:MM:SS today, a full date otherwise, '?' when unknown."""
        t = self.start_time if self.start_time is not None else self.acquired_at
        if t is None:
            return "?"
        fmt = "%H:%M:%S" if time.localtime(t)[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M:%S"
        return time.strftime(fmt, time.localtime(t))

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "argv": list(self.argv), "cwd": self.cwd, "host": self.host,
                "start_time": self.start_time, "acquired_at": self.acquired_at, "version": self.version,
                "path": self.path}


def procguard_version() -> str:
    return _version()


@functools.lru_cache(maxsize=1)
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("procguard")
    except Exception:  # noqa: BLE001 - a source tree without installed metadata
        return "0+unknown"


def own_metadata() -> bytes:
    """Metadata describing the calling process, encoded for the lock file."""
    pid = os.getpid()
    argv: list[str]
    start: float | None
    try:
        import psutil

        p = psutil.Process(pid)
        argv, start = p.cmdline(), p.create_time()
    except Exception:  # noqa: BLE001 - psutil can't see ourselves on an odd platform: sys.argv will do
        argv, start = [sys.executable, *sys.argv], None
    try:
        cwd = os.getcwd()
    except OSError:  # cwd was removed under us
        cwd = "?"
    meta = {"procguard": META_FORMAT, "pid": pid, "argv": argv, "cwd": cwd, "host": socket.gethostname(),
            "start_time": start, "acquired_at": time.time(), "version": _version()}
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n"


def parse_metadata(data: bytes, path: str) -> LockHolder | None:
    """The holder in a lock file's bytes; None when they aren't (complete) procguard metadata."""
    text = data.decode("utf-8", "replace").lstrip()
    if not text.startswith("{"):
        return None
    try:
        # raw_decode: a holder rewriting a longer old record leaves its tail for a moment; ignore it.
        obj, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or "procguard" not in obj:
        return None
    pid = obj.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return None
    argv = obj.get("argv")
    argv_t = tuple(str(a) for a in argv) if isinstance(argv, list) else ()

    def num(key: str) -> float | None:
        v = obj.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    return LockHolder(pid=pid, argv=argv_t, cwd=str(obj.get("cwd", "")), host=str(obj.get("host", "")),
                      start_time=num("start_time"), version=str(obj.get("version", "")), path=path,
                      acquired_at=num("acquired_at"))


def read_holder_fd(fd: int, path: str, wait: float = 0.0) -> LockHolder | None:
    """Parse the metadata through an open descriptor, retrying for up to `wait` seconds.

    A holder writes its metadata just after taking the lock, so a reader can catch the file empty or half
    written; a short retry then usually sees the whole record.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            data = os.pread(fd, MAX_META_BYTES, 0)
        except OSError:
            return None
        holder = parse_metadata(data, path)
        if holder is not None or time.monotonic() >= deadline:
            return holder
        if data.strip() and not data.lstrip().startswith(b'{"procguard"'):
            return None  # some other content: retrying won't make it ours
        time.sleep(0.005)


def read_holder(path: str | os.PathLike[str], *, wait: float = 0.05) -> LockHolder | None:
    """The holder metadata in a lock file; None if missing, unreadable or not procguard's. Takes no lock."""
    p = os.fspath(path)
    try:
        # O_NONBLOCK: never hang on a FIFO someone named like a lock file.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return read_holder_fd(fd, p, wait)
    finally:
        os.close(fd)


def in_lock_dir(path: str | os.PathLike[str]) -> bool:
    """Is this a ``*.lock`` file in a procguard lock folder (any user's)?"""
    p = Path(os.fspath(path).removesuffix(" (deleted)"))
    return (p.name.endswith(LOCK_SUFFIX) and p.parent.name == "locks"
            and p.parent.parent.name.startswith("procguard"))


# ---------------------------------------------------------------- the per-user lock folder

def _runtime_candidate() -> Path | None:
    try:
        import platformdirs

        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset and falls back itself; that is fine here.
            warnings.simplefilter("ignore")
            return Path(platformdirs.user_runtime_dir("procguard")) / "locks"
    except Exception:  # noqa: BLE001 - platformdirs refuses an unsafe runtime dir: use ours
        return None


def _temp_candidate() -> Path:
    uid = os.geteuid() if hasattr(os, "geteuid") else 0
    return Path(tempfile.gettempdir()) / f"procguard-{uid}" / "locks"


ENV_OVERRIDE = "PROCGUARD_LOCK_DIR"


def candidate_lock_dirs() -> list[Path]:
    """This user's lock folders in order of preference: ``$PROCGUARD_LOCK_DIR`` (tests, containers), the
    runtime dir, then the temp-dir fallback."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        return [Path(override)]
    return [p for p in (_runtime_candidate(), _temp_candidate()) if p is not None]


def _owned_private_dir(p: Path) -> bool:
    """Exists, is a real directory we own and can write: nobody else can swap lock files in it."""
    try:
        st = os.lstat(p)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return False
    return os.access(p, os.W_OK | os.X_OK)


def _make_private_dir(p: Path) -> bool:
    # Every folder we add is ours alone (os.makedirs would give intermediate ones the umask mode);
    # existing parents (the runtime dir, /tmp) keep theirs.
    missing: list[Path] = []
    q = p
    while not os.path.lexists(q) and q.parent != q:
        missing.append(q)
        q = q.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return False
    if p.parent.name.startswith("procguard-") and not _owned_private_dir(p.parent):
        return False  # a predictable name in a shared temp dir that someone else created
    return _owned_private_dir(p)


def existing_lock_dirs() -> list[Path]:
    """This user's lock folders that exist now (both, if the runtime dir changed between sessions)."""
    return [p for p in candidate_lock_dirs() if _owned_private_dir(p)]


def lock_dir() -> Path:
    """This user's lock folder, created (mode 0700) if needed.

    ``platformdirs.user_runtime_dir("procguard")/locks``; where that can't be created or isn't ours (root
    in a container without XDG_RUNTIME_DIR, a read-only /run), ``<tempdir>/procguard-<uid>/locks``.
    """
    cands = candidate_lock_dirs()
    for p in cands:
        if _make_private_dir(p):
            return p
    raise LockError(f"cannot create a private lock folder (tried {', '.join(map(str, cands))})",
                    cands[-1], errno.EACCES)


def lock_path_for(name_or_path: str | os.PathLike[str]) -> Path:
    """The lock file for a name or path.

    A bare name (a str without a path separator) becomes ``<name>.lock`` in :func:`lock_dir` (the suffix
    is not doubled); anything else, including any ``os.PathLike``, is a path used as given (made absolute,
    ``~`` expanded).
    """
    if isinstance(name_or_path, str) and os.sep not in name_or_path and not (
            os.altsep and os.altsep in name_or_path):
        name = name_or_path
        if name in ("", ".", "..", "~") or "\0" in name:
            raise ValueError(f"invalid lock name {name!r}")
        return lock_dir() / (name if name.endswith(LOCK_SUFFIX) else name + LOCK_SUFFIX)
    p = os.path.expanduser(os.fspath(name_or_path))
    if not p or "\0" in p:
        raise ValueError(f"invalid lock path {p!r}")
    return Path(os.path.abspath(p))
