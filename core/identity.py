"""Script identity of a Python process: which script (or module, or code) it runs.

A script path is resolved against the working directory of *that* process (``/proc/PID/cwd``), with symlinks
followed, so ``python train.py`` started in /a and ``python /a/train.py`` started elsewhere are one script, and a
symlink to a file is that file. ``-m pkg.mod`` is identified by the module together with the process's cwd;
``-c code`` only by its whole command line.

Resolution is done by the kernel: ``open(/proc/PID/cwd/<script>, O_PATH)`` then ``readlink`` of the fd gives the
canonical path in three syscalls whatever the depth of the path (``os.path.realpath`` lstat()s every component).
Results are cached per process: the cwd may change while a process runs, the script it started with does not.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from procguard.core import procfs
from procguard.core.pyproc import PythonCmd, parse_python_cmdline
from procguard.core.snapshot import Proc

__all__ = [
    "ScriptIdentity",
    "IdentityResolver",
    "identity_of",
    "identity_for_command",
    "identity_for_path",
    "launcher_kind",
    "is_helper_process",
    "RELEVANT_ENV",
]


@dataclass(frozen=True, slots=True)
class ScriptIdentity:
    kind: str  # "file" | "module" | "code"
    key: str  # realpath / "module@cwd" / NUL-joined command line: equal keys = same script
    display: str  # what to show a person: the path, "-m module (in cwd)", "-c code…"


# Python processes that are plumbing of some other run, never a "script" a person started twice: multiprocessing
# spawn/forkserver/resource-tracker children, execnet (pytest-xdist) and joblib/loky workers, ray workers, and
# notebook kernels (two notebooks are two different things even though both run ipykernel_launcher).
_HELPER_CODE_MARKERS = (
    "from multiprocessing.",
    "import sys;exec(eval(sys.stdin.readline()))",  # execnet bootstrap
    "from joblib.externals.loky",
    "from loky.",
)
_HELPER_MODULE_PREFIXES = (
    "multiprocessing.",
    "joblib.externals.loky.",
    "loky.",
    "ray.",
    "ipykernel",
    "ipykernel_launcher",
    "debugpy",
)
_HELPER_FILE_BASENAMES = frozenset({"default_worker.py", "setup_worker.py", "ipykernel_launcher.py"})

# Launchers whose children are the ranks of one run.
_LAUNCHER_EXES = frozenset(
    {"mpirun", "mpiexec", "mpiexec.hydra", "orterun", "prterun", "hydra_pmi_proxy", "orted", "prted"}
)
_LAUNCHER_SCRIPTS = frozenset({"torchrun", "deepspeed", "accelerate"})
_LAUNCHER_MODULES = frozenset(
    {
        "torch.distributed.run",
        "torch.distributed.launch",
        "deepspeed.launcher.runner",
        "deepspeed.launcher.launch",
        "accelerate.commands.launch",
        "accelerate.commands.accelerate_cli",
    }
)

# The only environment variables duplicate detection looks at (cached per process, so keep the copy small).
RELEVANT_ENV = frozenset(
    {
        "TORCHELASTIC_RUN_ID",
        "MASTER_ADDR",
        "MASTER_PORT",
        "RANK",
        "LOCAL_RANK",
        "SLURM_JOB_ID",
        "PBS_JOBID",
        "LSB_JOBID",
    }
)


def launcher_kind(proc: Proc) -> str | None:
    """Name of the distributed launcher `proc` is (torchrun, deepspeed, accelerate, mpirun...), else None."""
    py = proc.python
    if py is None:
        if not proc.cmdline:
            return None
        base = proc.cmdline[0].rpartition("/")[2]
        return base if base in _LAUNCHER_EXES else None
    if py.kind == "module":
        return py.target if py.target in _LAUNCHER_MODULES else None
    if py.kind == "file":
        base = py.target.rpartition("/")[2]
        if base.endswith(".py"):
            base = base[:-3]
        return base if base in _LAUNCHER_SCRIPTS else None
    return None


def is_helper_process(py: PythonCmd) -> bool:
    """True for Python processes that serve another run (multiprocessing helpers, pool workers, kernels)."""
    if "--multiprocessing-fork" in py.args:
        return True
    if py.kind == "code":
        return any(m in py.target for m in _HELPER_CODE_MARKERS)
    if py.kind == "module":
        return py.target.startswith(_HELPER_MODULE_PREFIXES)
    if py.kind == "file":
        return py.target.rpartition("/")[2] in _HELPER_FILE_BASENAMES
    return False


def _canonical(path: str) -> str | None:
    """Kernel-resolved canonical path of an existing file (symlinks followed), or None."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    finally:
        os.close(fd)
    return target if target.startswith("/") else None


def _resolve_script(pid: int, target: str) -> str | None:
    """Absolute, symlink-free path of `target` as process `pid` sees it; None when its cwd is unreadable."""
    if procfs.HAS_PROC and hasattr(os, "O_PATH"):
        if target.startswith("/"):
            found = _canonical(target)
            # A script deleted or renamed since it started still names itself by its normalised path.
            return found if found is not None else os.path.realpath(target)
        found = _canonical(f"{procfs.PROC}/{pid}/cwd/{target}")
        if found is not None:
            return found
        cwd = procfs.read_cwd(pid)
        if cwd is None:
            return None  # another user's process: its cwd is private, so a relative path means nothing
        return os.path.realpath(os.path.join(cwd, target))
    # Portable path (no /proc): psutil's cwd, then realpath.
    if target.startswith("/"):
        return os.path.realpath(target)
    cwd = _cwd_portable(pid)
    return None if cwd is None else os.path.realpath(os.path.join(cwd, target))


def _cwd_portable(pid: int) -> str | None:
    if procfs.HAS_PROC:
        return procfs.read_cwd(pid)
    try:  # pragma: no cover - non-Linux path
        import psutil

        return psutil.Process(pid).cwd()
    except Exception:  # noqa: BLE001 - gone, denied or unsupported all mean "unknown"
        return None


def _short(s: str, n: int = 60) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _module_identity(module: str, cwd: str) -> ScriptIdentity:
    return ScriptIdentity("module", f"{module}@{cwd}", f"-m {module} (in {cwd})")


def _code_identity(cmdline: Iterable[str], code: str) -> ScriptIdentity:
    return ScriptIdentity("code", "\0".join(cmdline), f"-c {_short(code)}")


def identity_of(proc: Proc) -> ScriptIdentity | None:
    """Uncached identity of a snapshot process (None: not Python, interactive, a helper, or unresolvable)."""
    py = proc.python
    if py is None or py.kind == "interactive" or is_helper_process(py):
        return None
    if py.kind == "file":
        path = _resolve_script(proc.pid, py.target)
        return None if path is None else ScriptIdentity("file", path, path)
    if py.kind == "module":
        cwd = _cwd_portable(proc.pid)
        return None if cwd is None else _module_identity(py.target, cwd)
    return _code_identity(proc.cmdline, py.target)


def identity_for_path(path: str | os.PathLike[str], cwd: str | None = None) -> ScriptIdentity:
    """Identity of a script file named by the caller (relative to `cwd`, default ours)."""
    p = os.fspath(path)
    full = os.path.realpath(os.path.join(cwd if cwd is not None else os.getcwd(), p))
    return ScriptIdentity("file", full, full)


def identity_for_command(argv: list[str] | tuple[str, ...], cwd: str) -> ScriptIdentity | None:
    """Identity the process `argv` would have if started in `cwd` (for checks before starting it)."""
    py = parse_python_cmdline(argv)
    if py is None or py.kind == "interactive" or is_helper_process(py):
        return None
    if py.kind == "file":
        return identity_for_path(py.target, cwd)
    if py.kind == "module":
        return _module_identity(py.target, os.path.realpath(cwd))
    return _code_identity(argv, py.target)


def _proc_key(p: Proc) -> tuple[int, int | float]:
    return (p.pid, p.start_ticks or p.create_time)


class IdentityResolver:
    """Caches identities and the few environment variables that matter, per process (pid + start time).

    An entry is also tied to the command line it was computed from, so a process that execs (same pid and start
    time, new cmdline) is looked at again. Thread-safe; prune() drops processes that no longer exist.
    """

    def __init__(self) -> None:
        self._ident: dict[tuple[int, int | float], tuple[tuple[str, ...], ScriptIdentity | None]] = {}
        self._env: dict[tuple[int, int | float], tuple[tuple[str, ...], Mapping[str, str] | None]] = {}
        self._lock = threading.Lock()

    def identity(self, proc: Proc) -> ScriptIdentity | None:
        key = _proc_key(proc)
        hit = self._ident.get(key)
        if hit is not None and (hit[0] is proc.cmdline or hit[0] == proc.cmdline):
            return hit[1]
        ident = identity_of(proc)
        with self._lock:
            self._ident[key] = (proc.cmdline, ident)
        return ident

    def env(self, proc: Proc) -> Mapping[str, str] | None:
        """The relevant part of the environment `proc` started with; None when unreadable (another user)."""
        key = _proc_key(proc)
        hit = self._env.get(key)
        if hit is not None and (hit[0] is proc.cmdline or hit[0] == proc.cmdline):
            return hit[1]
        env = read_relevant_env(proc.pid)
        with self._lock:
            self._env[key] = (proc.cmdline, env)
        return env

    def prune(self, live: Iterable[Proc]) -> None:
        keys = {_proc_key(p) for p in live}
        with self._lock:
            for cache in (self._ident, self._env):
                for k in [k for k in cache if k not in keys]:
                    del cache[k]


_ENV_NEEDLES = tuple((k, b"\0" + k.encode() + b"=") for k in sorted(RELEVANT_ENV))


def read_relevant_env(pid: int) -> Mapping[str, str] | None:
    """The relevant variables of the environment `pid` started with; None when gone or unreadable.

    /proc/PID/environ is the environment the process started with (for ourselves too, so every observer
    groups the same way even if a script edits os.environ later). Only the few variables that matter are
    looked up, with bytes.find, instead of decoding a few dozen variables per process.
    """
    try:
        fd = os.open(f"{procfs.PROC}/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
    except OSError:
        return None
    finally:
        os.close(fd)
    data = b"\0" + b"".join(chunks)
    out: dict[str, str] = {}
    for name, needle in _ENV_NEEDLES:
        i = data.find(needle)
        if i >= 0:
            start = i + len(needle)
            end = data.find(b"\0", start)
            out[name] = data[start : end if end >= 0 else len(data)].decode("utf-8", "surrogateescape")
    return out
