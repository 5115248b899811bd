"""Identity of a job: which program a process runs, so that "the same job twice" can be told.

The identity key (``ScriptIdentity.key``) is what duplicate detection compares. Its kinds:

- ``file`` (a script run directly: ``python train.py``, a shebang script): the script's real path, whatever its
  arguments. Resolved against the working directory of *that* process (``/proc/PID/cwd``), symlinks followed,
  so ``python train.py`` in /a and ``python /a/train.py`` elsewhere are one script.
- ``module`` (``python -m pkg.mod``): the module together with the process's cwd.
- ``code`` (``python -c code``): the whole command line.
- ``console`` (a console script: the small wrapper pip writes into ``bin/``, or an executable zipapp): entry
  point + full argument list + cwd. ``uvicorn app:a`` twice in one folder is one job, ``app:a``/``app:b`` not.
- ``command`` (a non-Python program that ``procguard run`` started): resolved executable + arguments + cwd.

A *launcher* (torchrun, ``python -m torch.distributed.run``/``.launch``, ``accelerate launch``, deepspeed, and
the names in PROCGUARD_LAUNCHERS) has the identity of its target, the script or module it starts, with
``ScriptIdentity.launcher`` naming it. procguard's own processes (the CLI, the app, the ``procguard run``
launcher, benchmark helpers) have none: ``classify()`` says why. So do helpers of other runs (multiprocessing,
pool workers, kernels) and programs matching PROCGUARD_NEVER_DUPLICATE.

Resolution is done by the kernel: ``open(/proc/PID/cwd/<script>, O_PATH)`` then ``readlink`` of the fd gives the
canonical path in three syscalls whatever the depth of the path (``os.path.realpath`` lstat()s every component).
Results are cached per process (IdentityResolver): the cwd may change while a process runs, the program it
started with does not. A script file's first bytes (console wrapper? zipapp?) are cached per file version.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from procguard.core import procfs
from procguard.core.launchenv import RANK_VARS, SCHEDULER_VARS
from procguard.core.launchers import (
    BUILTIN_BY_MODULE,
    BUILTIN_BY_NAME,
    GENERIC,
    LaunchSpec,
    Settings,
    settings_from_env,
)
from procguard.core.pyproc import (
    LaunchTarget,
    PythonCmd,
    console_entry_point,
    is_python_interpreter,
    is_zipapp,
    launch_target,
    parse_python_cmdline,
    shebang_interpreter,
)
from procguard.core.snapshot import Proc, read_proc, username_of

__all__ = [
    "ScriptIdentity",
    "Classified",
    "IdentityResolver",
    "classify",
    "identity_of",
    "identity_for_command",
    "identity_for_path",
    "launcher_kind",
    "is_helper_process",
    "is_procguard_run",
    "procguard_run_of",
    "looks_like_procguard_run",
    "own_process",
    "current_identity",
    "KIND_LABELS",
    "RELEVANT_ENV",
]

KIND_LABELS = {
    "file": "script",
    "module": "module",
    "code": "-c",
    "console": "console script",
    "command": "command",
}

Part = tuple[str, "str | tuple[str, ...]"]


@dataclass(frozen=True, slots=True)
class ScriptIdentity:
    kind: str  # "file" | "module" | "code" | "console" | "command"
    key: str  # equal keys = same job: realpath / "module@cwd" / NUL-joined cmdline / "console:..." / "command:..."
    display: str  # what to show a person: the path, "-m module (in cwd)", "-c code…", "prog args (in cwd)"
    # The key's parts by name, for explaining it ("script", "module", "entry point", "args", "cwd", ...).
    parts: tuple[Part, ...] = field(default=(), compare=False)
    # The launcher this identity was found through (torchrun, ...): the process is a launcher, the key its
    # target's. None for a process that runs the job itself.
    launcher: str | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """The kind in words: "script", "console script", "launcher target (torchrun): script"..."""
        base = KIND_LABELS.get(self.kind, self.kind)
        return f"launcher target ({self.launcher}): {base}" if self.launcher else base

    def as_target(self) -> ScriptIdentity:
        """The job's identity without the launcher it was reached through (what a duplicate group shows)."""
        return self if self.launcher is None else replace(self, launcher=None)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "label": self.label,
            "launcher": self.launcher,
            "key": self.key,
            "display": self.display,
            "parts": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.parts},
        }


class Classified(NamedTuple):
    """What a process is to duplicate detection, on its own (its parents and peers aside)."""

    identity: ScriptIdentity | None  # set for jobs, and for never-duplicate programs (to explain them)
    code: (
        str  # "job" | "own" | "helper" | "interactive" | "never" | "other_user" | "unresolved" | "no_target"
    )
    reason: str  # "" for a job; else why it is never counted, as a sentence fragment
    own: str | None = None  # procguard's own: "cli" | "run" | "app" | "bench" | "procguard"

    @property
    def is_job(self) -> bool:
        return self.code == "job"


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

# Non-Python launchers whose children are the ranks of one run.
_LAUNCHER_EXES = frozenset(
    {"mpirun", "mpiexec", "mpiexec.hydra", "orterun", "prterun", "hydra_pmi_proxy", "orted", "prted"}
)

# The only environment variables duplicate detection looks at (cached per process, so keep the copy small).
RELEVANT_ENV = frozenset({"TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", *RANK_VARS, *SCHEDULER_VARS})

# procguard's own: its modules, its console scripts, and the benchmark harness of this source tree.
_OWN_SCRIPTS = frozenset({"procguard", "procguard-tui"})
_CLI_MODULES = frozenset({"procguard.core.cli", "procguard.core.cli.__main__"})
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_BENCH_DIR = os.path.join(_SOURCE_ROOT, "bench")
_HAS_BENCH = os.path.isfile(os.path.join(_BENCH_DIR, "load.py"))
_OWN_WORDS = {
    "cli": "the procguard CLI",
    "run": "the `procguard run` launcher (its child is the job)",
    "app": "the procguard app",
    "bench": "a procguard benchmark helper",
    "procguard": "procguard",
}


def _stem(base: str) -> str:
    return base[:-3] if base.endswith(".py") else base


def _basename(path: str) -> str:
    return path.rpartition("/")[2]


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


def _own_module(module: str, args: tuple[str, ...]) -> str | None:
    if module in _CLI_MODULES or module.startswith("procguard.core.cli."):
        return "run" if args[:1] == ("run",) else "cli"
    if module == "procguard.tui" or module.startswith("procguard.tui."):
        return "app"
    if module == "procguard" or module.startswith("procguard."):
        return "procguard"
    return None


def looks_like_procguard_run(proc: Proc) -> bool:
    """`procguard run ...` by its command line alone (bin/procguard or -m procguard.core.cli, then "run")."""
    py = proc.python
    if py is None or py.args[:1] != ("run",):
        return False
    if py.kind == "module":
        return py.target in _CLI_MODULES
    return py.kind == "file" and _basename(py.target) == "procguard"


def launcher_kind(proc: Proc, settings: Settings | None = None) -> str | None:
    """Name of the launcher `proc` is (torchrun, deepspeed, accelerate, mpirun, a PROCGUARD_LAUNCHERS name...),
    judged by its command line alone; None when it is not one. `procguard run` is not a launcher here: its
    child is the job itself, not ranks of one."""
    settings = settings if settings is not None else Settings()
    py = proc.python
    if py is None:
        if not proc.cmdline:
            return None
        base = _basename(proc.cmdline[0])
        if base in _LAUNCHER_EXES or settings.launcher_match(base):
            return base
        return None
    if py.kind == "module":
        spec = BUILTIN_BY_MODULE.get(py.target)
        if spec is not None and (spec.subcommand is None or py.args[:1] == (spec.subcommand,)):
            return py.target
        return py.target if settings.launcher_match(py.target) else None
    if py.kind == "file":
        base = _basename(py.target)
        stem = _stem(base)
        spec = BUILTIN_BY_NAME.get(stem)
        if spec is not None and (spec.subcommand is None or py.args[:1] == (spec.subcommand,)):
            return stem
        return stem if settings.launcher_match(base, stem) else None
    return None


# ---------------------------------------------------------------------------------------------- reading files


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


class _Head(NamedTuple):
    """What the first bytes of a script file say about it."""

    state: str  # "ok" | "missing" | "denied" | "special" (not a regular file)
    entry: str | None  # console-script entry point ("pkg.mod:func"), only for a wrapper in a bin/ folder
    zipapp: bool
    python: bool  # a #! line naming a Python interpreter
    interp: tuple[str, ...] = ()  # the #! line's words


_HEAD_BYTES = 4096
_heads: dict[str, tuple[tuple[int, int, int, int], _Head]] = {}
_heads_lock = threading.Lock()


def _sig(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _read_head(path: str) -> _Head:
    """The _Head of `path`, cached per file version (device, inode, mtime, size): one stat when cached."""
    hit = _heads.get(path)
    if hit is not None:
        try:
            if _sig(os.stat(path, follow_symlinks=False)) == hit[0]:
                return hit[1]
        except OSError:
            pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return _Head("missing", None, False, False)
    except OSError:
        return _Head("denied", None, False, False)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return _Head("special", None, False, False)
        sig = _sig(st)
        head = os.pread(fd, _HEAD_BYTES, 0)
    except OSError:
        return _Head("denied", None, False, False)
    finally:
        os.close(fd)
    in_bin = _basename(os.path.dirname(path)) == "bin"
    interp = shebang_interpreter(head)
    python = bool(interp) and any(is_python_interpreter(w) for w in interp[:3])  # type: ignore[index]
    found = _Head(
        "ok", console_entry_point(head) if in_bin else None, is_zipapp(head), python, tuple(interp or ())
    )
    with _heads_lock:
        if len(_heads) > 4096:
            _heads.clear()
        _heads[path] = (sig, found)
    return found


# ---------------------------------------------------------------------------------------------- building keys


def _short(s: str, n: int = 60) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _file_identity(path: str) -> ScriptIdentity:
    return ScriptIdentity("file", path, path, (("script", path),))


def _module_identity(module: str, cwd: str) -> ScriptIdentity:
    return ScriptIdentity(
        "module", f"{module}@{cwd}", f"-m {module} (in {cwd})", (("module", module), ("cwd", cwd))
    )


def _code_identity(cmdline: Iterable[str], code: str) -> ScriptIdentity:
    cmd = tuple(cmdline)
    return ScriptIdentity(
        "code", "\0".join(cmd), f"-c {_short(code)}", (("code", code), ("command line", cmd))
    )


def _console_identity(entry: str, program: str, args: tuple[str, ...], cwd: str) -> ScriptIdentity:
    key = "console:" + "\0".join((entry, *args)) + "\0@" + cwd
    display = _short(" ".join((_basename(program), *args)), 80) + f" (in {cwd})"
    return ScriptIdentity(
        "console", key, display, (("entry point", entry), ("program", program), ("args", args), ("cwd", cwd))
    )


def _command_identity(exe: str, argv0: str, args: tuple[str, ...], cwd: str) -> ScriptIdentity:
    # The name it was called by counts too: multi-call binaries (busybox, coreutils) act on argv[0].
    name = _basename(argv0) or _basename(exe)
    key = "command:" + "\0".join((exe, name, *args)) + "\0@" + cwd
    display = _short(" ".join((name, *args)), 80) + f" (in {cwd})"
    return ScriptIdentity(
        "command", key, display, (("executable", exe), ("name", name), ("args", args), ("cwd", cwd))
    )


class _Where:
    """Where relative paths of a command are resolved: a live process (its /proc cwd) or a folder given."""

    __slots__ = ("pid", "uid", "_cwd", "_cwd_read")

    def __init__(self, pid: int | None, cwd: str | None = None, uid: int | None = None) -> None:
        self.pid = pid
        self.uid = os.geteuid() if uid is None else uid
        self._cwd = cwd
        self._cwd_read = pid is None

    def cwd(self) -> str | None:
        if not self._cwd_read:
            self._cwd = _cwd_portable(self.pid) if self.pid is not None else None
            self._cwd_read = True
        return self._cwd

    def resolve(self, target: str) -> str | None:
        if self.pid is not None:
            return _resolve_script(self.pid, target)
        cwd = self.cwd()
        return None if cwd is None else os.path.realpath(os.path.join(cwd, target))

    def unreadable(self, what: str) -> Classified:
        if self.uid != os.geteuid():
            return Classified(None, "other_user", f"another user's process ({username_of(self.uid)}): {what}")
        return Classified(None, "unresolved", what)


def _names_of(ident: ScriptIdentity) -> tuple[list[str], list[str]]:
    """(names, paths) of an identity, for never-duplicate patterns."""
    names: list[str] = []
    paths: list[str] = []
    for k, v in ident.parts:
        if not isinstance(v, str):
            continue
        if k in ("script", "program", "executable"):
            paths.append(v)
            names += [_basename(v), _stem(_basename(v))]
        elif k == "module":
            names.append(v)
        elif k == "entry point":
            names += [v, v.partition(":")[0]]
        elif k == "name":
            names.append(v)
    if ident.launcher:
        names.append(ident.launcher)
    return names, paths


def _finish(ident: ScriptIdentity, settings: Settings) -> Classified:
    if settings.never_duplicate:
        names, paths = _names_of(ident)
        pat = settings.never_match(names, paths)
        if pat is not None:
            return Classified(ident, "never", f"matches the never-duplicate pattern {pat!r}")
    return Classified(ident, "job", "")


# ---------------------------------------------------------------------------------------------- classifying


def _target_identity(t: LaunchTarget, where: _Where, settings: Settings) -> ScriptIdentity | Classified:
    """The identity of what a launcher starts (never itself a launcher: one level is enough)."""
    if t.kind == "module":
        cwd = where.cwd()
        return (
            _module_identity(t.target, cwd)
            if cwd is not None
            else where.unreadable("its working folder is private, so its target can't be told")
        )
    if t.kind == "argv":
        py = parse_python_cmdline((t.target, *t.args))
        if py is not None:
            got = _classify_python(py, (t.target, *t.args), where, settings, launchers=False)
            return got.identity if got.identity is not None else got
        t = LaunchTarget("exe", t.target, t.args)
    if t.kind == "exe":
        cwd = where.cwd()
        if cwd is None:
            return where.unreadable("its working folder is private, so its target can't be told")
        exe = _which(t.target, cwd)
        return _command_identity(exe or t.target, t.target, t.args, cwd)
    path = where.resolve(t.target)
    if path is None:
        return where.unreadable("its working folder is private, so its target can't be told")
    return _script_identity(path, t.args, where)


def _find(program: str, cwd: str) -> str | None:
    """The path exec would run for `program` (PATH lookup for a bare name), as exec passes it on."""
    found = os.path.join(cwd, program) if "/" in program else shutil.which(program)
    return found if found and os.path.exists(found) else None


def _which(program: str, cwd: str) -> str | None:
    """Real path of the program a command names (PATH lookup for a bare name, like exec does)."""
    found = _find(program, cwd)
    return os.path.realpath(found) if found is not None else None


def _shebang_command(
    interp: tuple[str, ...], script: str, args: tuple[str, ...], cwd: str
) -> tuple[str, str, tuple[str, ...]] | None:
    """(executable, name, args) of the process the kernel makes of a #! script: the interpreter, with the
    #! line's argument and the script as exec named it first (`#!/usr/bin/env prog`: env runs prog)."""
    if not interp:
        return None
    if _basename(interp[0]) == "env":
        words = [w for w in interp[1:] if w not in ("-S", "--split-string")]
        while words and (words[0].startswith("-") or "=" in words[0]):
            words.pop(0)  # env's options and NAME=VALUE assignments
        if not words:
            return None
        exe = _which(words[0], cwd)
        return (exe, words[0], (*words[1:], script, *args)) if exe is not None else None
    extra = (" ".join(interp[1:]),) if len(interp) > 1 else ()  # the kernel passes the rest as one argument
    return os.path.realpath(interp[0]), interp[0], (*extra, script, *args)


def _script_identity(
    path: str, args: tuple[str, ...], where: _Where, head: _Head | None = None
) -> ScriptIdentity | Classified:
    """A script file's identity: a console wrapper or zipapp by entry + args + cwd, else its real path."""
    head = head if head is not None else _read_head(path)
    if head.state == "denied" and (_basename(os.path.dirname(path)) == "bin" or path.endswith(".pyz")):
        # Only a wrapper in bin/ (or a zipapp) would be identified otherwise: an unreadable one can't be told.
        return where.unreadable(f"its program {path} can't be read, so its identity can't be told")
    if head.entry is None and not head.zipapp:
        return _file_identity(path)
    cwd = where.cwd()
    if cwd is None:
        return where.unreadable(
            "its working folder is private, so its console script's identity can't be told"
        )
    return _console_identity(head.entry or path, path, args, cwd)


def _launch(
    spec: LaunchSpec, name: str, args: tuple[str, ...], where: _Where, settings: Settings
) -> Classified | None:
    """A launcher identified by its target; None when these arguments do not launch (`accelerate config`)."""

    def is_file(word: str) -> bool:
        p = where.resolve(word)
        return p is not None and os.path.isfile(p)

    t = launch_target(args, spec, is_file)
    if t is None:
        if spec.subcommand is not None and args[:1] != (spec.subcommand,):
            return None
        return Classified(None, "no_target", f"a launcher ({name}) with no target in its arguments")
    got = _target_identity(t, where, settings)
    if isinstance(got, Classified):
        return got
    return _finish(replace(got, launcher=name), settings)


def _user_spec(name: str) -> LaunchSpec:
    return GENERIC._replace(name=name)


def _classify_module(py: PythonCmd, where: _Where, settings: Settings, launchers: bool) -> Classified:
    mod = py.target
    own = _own_module(mod, py.args)
    if own is not None:
        return Classified(None, "own", f"procguard's own process ({_OWN_WORDS[own]})", own)
    if launchers:
        spec = BUILTIN_BY_MODULE.get(mod)
        if spec is None and settings.launcher_match(mod):
            spec = _user_spec(mod)
        if spec is not None:
            got = _launch(spec, mod, py.args, where, settings)
            if got is not None:
                return got
    cwd = where.cwd()
    if cwd is None:
        return where.unreadable("its working folder is private, so its module can't be told")
    if _HAS_BENCH and (mod == "bench" or mod.startswith("bench.")) and cwd == _SOURCE_ROOT:
        return Classified(None, "own", f"procguard's own process ({_OWN_WORDS['bench']})", "bench")
    return _finish(_module_identity(mod, cwd), settings)


def _classify_file(py: PythonCmd, where: _Where, settings: Settings, launchers: bool) -> Classified:
    path = where.resolve(py.target)
    if path is None:
        return where.unreadable(
            "its working folder is private, so its relative script path can't be resolved"
        )
    base = _basename(path)
    head = _read_head(path)
    entry_mod = head.entry.partition(":")[0] if head.entry else ""
    own = _own_module(entry_mod, py.args) if entry_mod else None
    if own is None and head.state == "denied" and base in _OWN_SCRIPTS:
        own = (
            "run"
            if base == "procguard" and py.args[:1] == ("run",)
            else "cli"
            if base == "procguard"
            else "app"
        )
    if own is None and _HAS_BENCH and path.startswith(_BENCH_DIR + "/"):
        own = "bench"
    if own is not None:
        return Classified(None, "own", f"procguard's own process ({_OWN_WORDS[own]})", own)
    if launchers:
        stem = _stem(base)
        spec = BUILTIN_BY_NAME.get(stem) or (BUILTIN_BY_MODULE.get(entry_mod) if entry_mod else None)
        if spec is None and settings.launcher_match(base, stem, entry_mod):
            spec = _user_spec(stem)
        if spec is not None:
            got = _launch(spec, spec.name, py.args, where, settings)
            if got is not None:
                return got
    found = _script_identity(path, py.args, where, head)
    return found if isinstance(found, Classified) else _finish(found, settings)


def _classify_python(
    py: PythonCmd, cmdline: tuple[str, ...], where: _Where, settings: Settings, launchers: bool = True
) -> Classified:
    if py.kind == "interactive":
        return Classified(None, "interactive", "an interactive Python (no script)")
    if is_helper_process(py):
        return Classified(None, "helper", "a helper of another run (multiprocessing, pool worker, kernel)")
    if py.kind == "module":
        return _classify_module(py, where, settings, launchers)
    if py.kind == "code":
        return _finish(_code_identity(cmdline, py.target), settings)
    return _classify_file(py, where, settings, launchers)


def _classify_command(proc: Proc, settings: Settings) -> Classified:
    """A non-Python process: resolved executable + arguments + cwd (counted only under `procguard run`)."""
    where = _Where(proc.pid, uid=proc.uid)
    exe = procfs.read_exe(proc.pid)
    if exe is not None and exe.endswith(" (deleted)"):
        exe = exe[: -len(" (deleted)")]
    cwd = where.cwd()
    if exe is None or cwd is None or not proc.cmdline:
        return where.unreadable("its program and working folder are private, so its command can't be told")
    return _finish(_command_identity(exe, proc.cmdline[0], tuple(proc.cmdline[1:]), cwd), settings)


def classify(proc: Proc, settings: Settings | None = None) -> Classified:
    """Uncached: what `proc` is to duplicate detection (its identity, or why it has none). A non-Python
    process gets its command identity; only `procguard run` children are counted with it (duplicates.py)."""
    settings = settings if settings is not None else settings_from_env()
    if proc.kernel_thread:
        return Classified(None, "unresolved", "a kernel thread")
    py = proc.python
    if py is None:
        return _classify_command(proc, settings)
    return _classify_python(py, proc.cmdline, _Where(proc.pid, uid=proc.uid), settings)


def identity_of(proc: Proc, settings: Settings | None = None) -> ScriptIdentity | None:
    """Uncached identity of a snapshot's Python process (None: not a job, see classify(), or not Python)."""
    if proc.python is None:
        return None
    c = classify(proc, settings)
    return c.identity if c.is_job else None


def own_process(proc: Proc, settings: Settings | None = None) -> str | None:
    """Why `proc` is one of procguard's own processes (the CLI, the app, the `procguard run` launcher, a
    benchmark helper), in words; None when it is not."""
    if proc.python is None:
        return None
    c = classify(proc, settings)
    return c.reason if c.code == "own" else None


def is_procguard_run(proc: Proc, settings: Settings | None = None) -> bool:
    """`proc` is a `procguard run` launcher (its child is the job). Cheap unless its first argument is "run"
    and its program is not named procguard (then its console-script wrapper is read)."""
    if proc.python is None or proc.python.args[:1] != ("run",):
        return False
    if looks_like_procguard_run(proc):
        return True
    return classify(proc, settings).own == "run"


def procguard_run_of(proc: Proc, procs: Mapping[int, Proc], settings: Settings | None = None) -> int | None:
    """The pid of the `procguard run` launcher whose job `proc` is (its parent), else None."""
    parent = procs.get(proc.ppid)
    return parent.pid if parent is not None and is_procguard_run(parent, settings) else None


def identity_for_path(path: str | os.PathLike[str], cwd: str | None = None) -> ScriptIdentity:
    """Identity of a script file named by the caller (relative to `cwd`, default ours)."""
    p = os.fspath(path)
    full = os.path.realpath(os.path.join(cwd if cwd is not None else os.getcwd(), p))
    return _file_identity(full)


def identity_for_command(
    argv: list[str] | tuple[str, ...], cwd: str, settings: Settings | None = None
) -> ScriptIdentity | None:
    """Identity the job `argv` would have if `procguard run` started it in `cwd` (for checks before starting
    it): Python rules for a Python command (a program with a Python #! line included), else the command's."""
    if not argv:
        return None
    settings = settings if settings is not None else settings_from_env()
    where = _Where(None, os.path.realpath(cwd))
    argv = tuple(argv)
    py = parse_python_cmdline(argv)
    if py is None:
        folder = where.cwd() or cwd
        found = _find(argv[0], folder)
        if found is None:
            return None
        prog = os.path.realpath(found)
        head = _read_head(prog)
        if head.python:
            py = parse_python_cmdline(("python", prog, *argv[1:]))
        else:
            # A #! script runs as its interpreter; a binary as itself.
            as_run = argv[0] if "/" in argv[0] else found  # what exec hands the kernel, so the script arg
            cmd = _shebang_command(head.interp, as_run, argv[1:], folder) or (prog, argv[0], argv[1:])
            c = _finish(_command_identity(cmd[0], cmd[1], cmd[2], folder), settings)
            return c.identity if c.is_job else None
    assert py is not None
    c = _classify_python(py, argv, where, settings)
    return c.identity if c.is_job else None


def current_identity(pid: int, settings: Settings | None = None) -> ScriptIdentity | None:
    """The identity `pid` has right now, read fresh from /proc (None: gone, or not a job). A non-Python process
    has one only as the child of a `procguard run` launcher."""
    proc = read_proc(pid)
    if proc is None or proc.dead:
        return None
    if proc.python is None:
        parent = read_proc(proc.ppid)
        if parent is None or not is_procguard_run(parent, settings):
            return None
    c = classify(proc, settings)
    return c.identity if c.is_job else None


# ---------------------------------------------------------------------------------------------- caching


def _proc_key(p: Proc) -> tuple[int, int | float]:
    return (p.pid, p.start_ticks or p.create_time)


class IdentityResolver:
    """Caches classifications and the few environment variables that matter, per process (pid + start time).

    An entry is also tied to the command line it was computed from, so a process that execs (same pid and start
    time, new cmdline) is looked at again; and to the settings (use()). Thread-safe; prune() drops processes
    that no longer exist.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._cls: dict[tuple[int, int | float], tuple[tuple[str, ...], Classified]] = {}
        self._launch: dict[tuple[int, int | float], tuple[tuple[str, ...], str | None]] = {}
        self._env: dict[tuple[int, int | float], tuple[tuple[str, ...], Mapping[str, str] | None]] = {}
        self._lock = threading.Lock()
        self._settings = settings if settings is not None else Settings()

    @property
    def settings(self) -> Settings:
        return self._settings

    def use(self, settings: Settings) -> None:
        """Classify with these settings from now on (cached classifications are dropped if they differ)."""
        if settings != self._settings:
            with self._lock:
                self._settings = settings
                self._cls.clear()
                self._launch.clear()

    def classify(self, proc: Proc) -> Classified:
        key = _proc_key(proc)
        hit = self._cls.get(key)
        if hit is not None and (hit[0] is proc.cmdline or hit[0] == proc.cmdline):
            return hit[1]
        found = classify(proc, self._settings)
        with self._lock:
            self._cls[key] = (proc.cmdline, found)
        return found

    def launcher(self, proc: Proc) -> str | None:
        """launcher_kind(proc) with these settings, cached (asked about every ancestor of every run)."""
        key = _proc_key(proc)
        hit = self._launch.get(key)
        if hit is not None and (hit[0] is proc.cmdline or hit[0] == proc.cmdline):
            return hit[1]
        found = launcher_kind(proc, self._settings)
        with self._lock:
            self._launch[key] = (proc.cmdline, found)
        return found

    def identity(self, proc: Proc) -> ScriptIdentity | None:
        """The job identity of `proc` (also a non-Python process's command identity: the caller decides
        whether a command counts)."""
        c = self.classify(proc)
        return c.identity if c.code == "job" else None

    def is_runner(self, proc: Proc) -> bool:
        """`proc` is a `procguard run` launcher."""
        if proc.python is None:
            return False
        return looks_like_procguard_run(proc) or self.classify(proc).own == "run"

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
            for cache in (self._cls, self._launch, self._env):
                for k in [k for k in cache if k not in keys]:
                    del cache[k]  # type: ignore[attr-defined]


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
