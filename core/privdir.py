"""Private folders and the files procguard keeps in them (registry entries, lock files, requests).

One rule for whose data a file is (see the README's "Security model"): a file about a process is believed
only when the file is owned by that process's owner or by root, it lies in a folder owned by that same uid,
and no folder on the way to it is a symlink or writable by others (a root-owned sticky folder such as /tmp
excepted: nobody but the owner can rename or remove what is in it).

And one rule for writing: procguard creates, renames, unlinks or writes files only in folders that pass
`private_dir_problem` for its own effective uid, with ``O_NOFOLLOW`` and unpredictable temp names
(``mkstemp``), so nothing planted by another user (a folder, a symlink) can redirect a write.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = [
    "MAX_FILE_BYTES",
    "PrivateDirError",
    "ensure_private_dir",
    "private_dir_problem",
    "read_small",
    "trusted_file_problem",
    "write_atomic",
]

# Registry entries and lock metadata are a few hundred bytes; bigger files are not ours.
MAX_FILE_BYTES = 64 * 1024
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class PrivateDirError(PermissionError):
    """A folder is not private to its user (or could not be made so); the message names the folder."""


def _ancestor_problem(path: str, st: os.stat_result, uid: int) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a folder"
    if st.st_uid not in (0, uid):
        return f"{path} is owned by uid {st.st_uid}"
    if st.st_mode & 0o022 and not (st.st_mode & stat.S_ISVTX and st.st_uid == 0):
        return f"{path} is writable by others"
    return None


def _path_problem(path: str | os.PathLike[str], uid: int) -> tuple[str | None, str]:
    """(why not, resolved path): every folder from / down to `path` is owned by root or `uid` and not writable
    by others unless it is root's sticky folder (/tmp); a symlink on the way is only accepted when root placed
    it in a folder only root can write (/var/run -> /run), and then its target is checked the same way."""
    parts = Path(os.path.abspath(os.fspath(path))).parts
    cur = parts[0]
    try:
        for name in parts[1:]:
            nxt = os.path.join(cur, name)
            st = os.lstat(nxt)
            if stat.S_ISLNK(st.st_mode):
                parent = os.lstat(cur)
                if st.st_uid != 0 or parent.st_uid != 0 or parent.st_mode & 0o022:
                    return f"{nxt} is a symlink", nxt
                problem, nxt = _path_problem(os.path.realpath(nxt), 0)
                if problem is not None:
                    return problem, nxt
                st = os.lstat(nxt)
            problem = _ancestor_problem(nxt, st, uid)
            if problem is not None:
                return problem, nxt
            cur = nxt
    except OSError as e:
        return f"{os.fspath(path)}: {e.strerror or e}", cur
    return None, cur


def private_dir_problem(path: str | os.PathLike[str], uid: int | None = None) -> str | None:
    """Why `path` is not a folder private to `uid` (default: our effective uid); None when it is.

    Private: no other user can reach it to plant, swap or remove files. Every folder on the way passes the
    rule of `_path_problem`, and the folder itself is a real folder owned by `uid` with no group or other
    permission bits.
    """
    uid = os.geteuid() if uid is None else uid
    problem, real = _path_problem(path, uid)
    if problem is not None:
        return problem
    try:
        st = os.lstat(real)
    except OSError as e:
        return f"{real}: {e.strerror or e}"
    if st.st_uid != uid:
        return f"{real} is owned by uid {st.st_uid}, not {uid}"
    if st.st_mode & 0o077:
        return f"{real} has mode {stat.S_IMODE(st.st_mode):04o}: no group or other access allowed"
    return None


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` (and missing parents, each mode 0700) for our effective uid and check it is private.

    Never adopts a folder someone else made: an existing folder that fails `private_dir_problem` raises
    PrivateDirError naming it, and nothing is created below a folder other users can reach.
    """
    p = Path(os.path.abspath(os.fspath(path)))
    uid = os.geteuid()
    missing: list[Path] = []
    q = p
    while not os.path.lexists(q) and q.parent != q:
        missing.append(q)
        q = q.parent
    for d in reversed(missing):
        problem, _ = _path_problem(d.parent, uid)
        if problem is not None:
            raise PrivateDirError(f"cannot create {d}: {problem}")
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise PrivateDirError(f"cannot create {d}: {e.strerror or e}") from None
    problem = private_dir_problem(p, uid)
    if problem is not None:
        raise PrivateDirError(f"{p} is not private: {problem}")
    return p


def trusted_file_problem(st: os.stat_result, folder: str | os.PathLike[str], owner_uid: int) -> str | None:
    """Why a file (its fstat) in `folder` is not to be believed about a process of `owner_uid`; None if it is:
    a regular file owned by `owner_uid` or root, in a folder private to `owner_uid`."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid not in (0, owner_uid):
        return f"owned by uid {st.st_uid}, not by the process's owner (uid {owner_uid})"
    problem = private_dir_problem(folder, owner_uid)
    return None if problem is None else f"its folder is not private to uid {owner_uid}: {problem}"


def read_small(
    path: str | os.PathLike[str], cap: int = MAX_FILE_BYTES
) -> tuple[bytes, os.stat_result] | None:
    """(content, fstat) of a regular file, never through a symlink, never more than `cap` bytes (a bigger file
    gives None: it is not one of ours). None when missing, unreadable, not a regular file or too big."""
    try:
        fd = os.open(os.fspath(path), _OPEN_READ)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > cap:
            return None
        data = os.pread(fd, cap + 1, 0)
        return (data, st) if len(data) <= cap else None
    except OSError:
        return None
    finally:
        os.close(fd)


def write_atomic(folder: str | os.PathLike[str], name: str, data: bytes, mode: int = 0o600) -> Path:
    """Write `folder/name` atomically: a `mkstemp` temp file (O_EXCL|O_NOFOLLOW, unpredictable name) in the
    same folder, then rename over `name` (rename replaces a planted symlink, never follows it). The folder
    must be private to us (checked here); the temp file is removed on any failure."""
    folder = os.fspath(folder)
    problem = private_dir_problem(folder)
    if problem is not None:
        raise PrivateDirError(f"refusing to write in {folder}: {problem}")
    if os.sep in name or name in ("", ".", ".."):
        raise ValueError(f"invalid file name {name!r}")
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
        os.replace(tmp, os.path.join(folder, name))
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(folder, name)
