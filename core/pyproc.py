"""Parsing a Python command line: interpreter, ``-m``/``-c``/script, interpreter options, script args.

Called by the snapshot for every process on every refresh, so the common case (argv[0] is not a Python
interpreter) must cost one string split and a prefix check. Only the argv is looked at; nothing is read from
/proc here (resolving the script against the process's cwd is identity.py's job).

Also pure parsing for identity.py: the entry point of a console-script wrapper (the small file pip writes into
bin/), whether a file is an executable zipapp, and where a launcher's target sits in its arguments.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from procguard.core.launchers import LaunchSpec

__all__ = [
    "PythonCmd",
    "parse_python_cmdline",
    "is_python_interpreter",
    "console_entry_point",
    "is_zipapp",
    "shebang_interpreter",
    "LaunchTarget",
    "launch_target",
]


class PythonCmd(NamedTuple):
    interpreter: str  # cmdline[0] (or the interpreter named after `env`)
    kind: str  # "file" | "module" | "code" | "interactive"
    target: str  # script path as given / module name / code string / "" ("-" when reading stdin)
    args: tuple[str, ...]  # script arguments (after the script/module/code)
    # Interpreter options, one element per option, normalised: "-u", "-O", "-X dev", "-W ignore",
    # "--check-hash-based-pycs always". Combined flags ("-uB") come out split ("-u", "-B").
    options: tuple[str, ...]


# python, python3, python3.11, python3.11d, python3.13t, pythonw, pypy, pypy3, pypy3.10 ...
_INTERP_RE = re.compile(r"^(?:python|pypy)(?:\d+(?:\.\d+)*)?[dmwt]?$")
_ENV_NAMES = frozenset({"env"})

# CPython's option grammar (Modules/main.c, Python/getopt.c): flags that take no argument, and the ones
# that take one (attached, "-Wignore", or as the next argv element). -c and -m also end option parsing.
_NOARG = frozenset("bBdEhiIOPqRsSuvVx?")
_WITHARG = frozenset("WX")
_LONG_WITHARG = frozenset({"--check-hash-based-pycs"})
_LONG_NOARG = frozenset({"--help", "--version", "--help-env", "--help-xoptions", "--help-all"})

# GNU env options that consume the next argv element when given in short/separate form.
_ENV_SHORT_WITHARG = frozenset("uCSa")
_ENV_LONG_WITHARG = frozenset({"--unset", "--chdir", "--split-string", "--argv0"})


def _basename(path: str) -> str:
    return path.rpartition("/")[2]


def is_python_interpreter(path: str) -> bool:
    """True when the basename of `path` looks like a Python interpreter (cheap prefix check first)."""
    base = _basename(path)
    if not (base.startswith("python") or base.startswith("pypy")):
        return False
    return _INTERP_RE.match(base) is not None


def parse_python_cmdline(cmdline: Sequence[str], exe: str | None = None) -> PythonCmd | None:
    """Parse `cmdline` if it runs a Python interpreter, else None.

    `exe` (the /proc/PID/exe target) is a fallback for processes started with a custom argv[0]
    (``exec -a name python script.py``): then argv[1:] is parsed as the interpreter's arguments.
    """
    if not cmdline:
        return None
    argv0 = cmdline[0]
    base = _basename(argv0)
    # Fast path: nearly every process on a box is rejected by this one check.
    c = base[:1]
    if c == "p":
        if _INTERP_RE.match(base) is not None:
            return _parse_interpreter_args(argv0, cmdline, 1)
    elif c == "e" and base in _ENV_NAMES:
        return _parse_env(cmdline)
    if exe:
        if exe.endswith(" (deleted)"):
            exe = exe[: -len(" (deleted)")]
        if is_python_interpreter(exe) and " " not in argv0:
            # argv[0] was chosen by the parent; the rest of argv is still the interpreter's.
            return _parse_interpreter_args(argv0, cmdline, 1)
    return None


def _env_long(cmdline: Sequence[str], i: int) -> tuple[int, list[str] | None]:
    """A long env option at i: (next index, the command line when it was --split-string, else None)."""
    name, eq, val = cmdline[i].partition("=")
    if name == "--split-string":
        if not eq:
            i += 1
            val = cmdline[i] if i < len(cmdline) else ""
        return i + 1, _split_env_string(val) + list(cmdline[i + 1 :])
    return (i + 2 if name in _ENV_LONG_WITHARG and not eq else i + 1), None


def _env_short(cmdline: Sequence[str], i: int) -> tuple[int, list[str] | None]:
    """Short env options at i, possibly combined: -iv, -uNAME, -u NAME, -S"python3 -u"."""
    a = cmdline[i]
    for j in range(1, len(a)):
        ch = a[j]
        if ch not in _ENV_SHORT_WITHARG:
            continue
        attached = a[j + 1 :]
        skip = 1 if attached else 2  # the value is attached, or the next argv element
        val = attached or (cmdline[i + 1] if i + 1 < len(cmdline) else "")
        if ch == "S":
            return i + skip, _split_env_string(val) + list(cmdline[i + skip :])
        return i + skip, None
    return i + 1, None


def _env_command(cmdline: Sequence[str]) -> list[str]:
    """What `env [OPTION]... [NAME=VALUE]... CMD...` runs: CMD... (split when given with -S)."""
    i = 1
    n = len(cmdline)
    while i < n:
        a = cmdline[i]
        if a == "--":
            return list(cmdline[i + 1 :])
        if a.startswith("--"):
            i, rest = _env_long(cmdline, i)
        elif a.startswith("-") and len(a) > 1:
            i, rest = _env_short(cmdline, i)
        elif a == "-" or "=" in a:  # "-" is -i; NAME=VALUE assignments
            i += 1
            continue
        else:
            break
        if rest is not None:
            return rest
    return list(cmdline[i:])


def _parse_env(cmdline: Sequence[str]) -> PythonCmd | None:
    """`env [OPTION]... [NAME=VALUE]... python ...` (also `env -S "python3 -u"` from shebang lines)."""
    rest = _env_command(cmdline)
    # -S strings may themselves start with assignments or more env-style options; skip assignments.
    while rest and "=" in rest[0] and not rest[0].startswith("-") and "/" not in rest[0].partition("=")[0]:
        rest.pop(0)
    if not rest:
        return None
    if not is_python_interpreter(rest[0]):
        return None
    return _parse_interpreter_args(rest[0], rest, 1)


def _split_env_string(s: str) -> list[str]:
    # env -S understands quotes and backslash escapes much like a shell; shlex is close enough.
    try:
        return shlex.split(s)
    except ValueError:
        return s.split()


def _parse_interpreter_args(interpreter: str, argv: Sequence[str], start: int) -> PythonCmd:
    options: list[str] = []
    i = start
    n = len(argv)
    while i < n:
        a = argv[i]
        if a == "-":
            return PythonCmd(interpreter, "interactive", "-", tuple(argv[i + 1 :]), tuple(options))
        if a == "--":
            # Ends options; the next element is the script (CPython treats it as a file even if it
            # starts with "-").
            i += 1
            break
        if not a.startswith("-"):
            break
        if a.startswith("--"):
            name, eq, val = a.partition("=")
            if name in _LONG_WITHARG:
                if not eq:
                    i += 1
                    val = argv[i] if i < n else ""
                options.append(f"{name} {val}")
            else:
                # --help/--version and unknown long options: keep them; CPython exits on unknown ones.
                options.append(a)
            i += 1
            continue
        # Short options, possibly combined ("-uB", "-uc code", "-Wignore", "-mpkg.mod").
        j = 1
        while j < len(a):
            ch = a[j]
            if ch == "c" or ch == "m":
                attached = a[j + 1 :]
                if attached:
                    value = attached
                    rest_start = i + 1
                else:
                    value = argv[i + 1] if i + 1 < n else ""
                    rest_start = i + 2
                kind = "code" if ch == "c" else "module"
                return PythonCmd(interpreter, kind, value, tuple(argv[rest_start:]), tuple(options))
            if ch in _WITHARG:
                attached = a[j + 1 :]
                if attached:
                    options.append(f"-{ch} {attached}")
                else:
                    i += 1
                    options.append(f"-{ch} {argv[i] if i < n else ''}")
                break
            # _NOARG and anything unknown: one flag per character (CPython rejects unknown ones).
            options.append("-" + ch)
            j += 1
        i += 1
    if i >= n:
        return PythonCmd(interpreter, "interactive", "", (), tuple(options))
    return PythonCmd(interpreter, "file", argv[i], tuple(argv[i + 1 :]), tuple(options))


# ---------------------------------------------------------------------------------------------- console scripts

# What pip (distlib), uv and setuptools write into bin/ for a console_scripts entry point: a shebang, imports,
# `from pkg.mod import func` and `sys.exit(func())` under `if __name__ == "__main__":` (distlib may call an
# attribute: `sys.exit(obj.attr())`); old setuptools goes through load_entry_point('dist', 'console_scripts', n).
_FROM_IMPORT = re.compile(r"^from[ \t]+([A-Za-z_][\w.]*)[ \t]+import[ \t]+([A-Za-z_]\w*)[ \t]*$", re.M)
_SYS_EXIT = re.compile(r"sys\.exit\(\s*([A-Za-z_][\w.]*)\(\)\s*\)")
_LOAD_ENTRY = re.compile(
    r"load_entry_point\(\s*['\"]([^'\"]+)['\"]\s*,\s*['\"]console_scripts['\"]\s*,\s*"
    r"['\"]([^'\"]+)['\"]\s*\)"
)
_WRAPPER_MAX = 2048  # wrappers are a few hundred bytes; a longer file is a program of its own


def console_entry_point(head: bytes) -> str | None:
    """The entry point ("pkg.mod:func", "pkg.mod:obj.attr", or "dist:name" for setuptools' load_entry_point) of
    a console-script wrapper, from the file's first bytes; None for any other file (a script of its own)."""
    if not head.startswith(b"#!") or len(head) > _WRAPPER_MAX or b"\0" in head:
        return None
    text = head.decode("utf-8", "replace")
    if "__main__" not in text:
        return None
    m = _LOAD_ENTRY.search(text)
    if m is not None:
        return f"{m.group(1)}:{m.group(2)}"
    call = _SYS_EXIT.search(text)
    if call is None:
        return None
    func = call.group(1)
    first = func.partition(".")[0]
    for mod, name in _FROM_IMPORT.findall(text):
        if name == first:
            return f"{mod}:{func}"
    return None


def is_zipapp(head: bytes) -> bool:
    """A zip archive, optionally after a shebang line (what `python -m zipapp -p INTERP` writes)."""
    if head.startswith(b"PK\x03\x04"):
        return True
    if head.startswith(b"#!"):
        nl = head.find(b"\n")
        return nl > 0 and head.startswith(b"PK\x03\x04", nl + 1)
    return False


def shebang_interpreter(head: bytes) -> list[str] | None:
    """The interpreter argv of a `#!` line (`#!/usr/bin/env python3` -> ["/usr/bin/env", "python3"])."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    return line.split() or None


# ---------------------------------------------------------------------------------------------- launchers


class LaunchTarget(NamedTuple):
    """What a launcher starts: kind "file" (a script path), "module", "exe" (a program run as is) or "argv"
    (a whole command line, target = its argv[0])."""

    kind: str
    target: str
    args: tuple[str, ...]


def _known_options_target(args: Sequence[str], spec: LaunchSpec) -> LaunchTarget | None:
    n = len(args)
    i = 0
    mode = "file"
    while i < n:
        a = args[i]
        if a == "--":
            i += 1
            break
        if a == "-" or not a.startswith("-"):
            break
        name, eq, _ = a.partition("=")
        norm = name.replace("_", "-") if name.startswith("--") else name
        if norm in spec.module_flags:
            mode = "module"
        elif norm in spec.exe_flags:
            mode = "exe"
        elif eq or norm in spec.flags or (not name.startswith("--") and len(name) > 2):
            pass  # --opt=value, a flag, or a short option with its value attached (-r3)
        elif norm in spec.values:
            i += 1
        else:
            # Unknown option: it takes a value unless the next word looks like the target or another option.
            nxt = args[i + 1] if i + 1 < n else "-"
            if not (nxt.startswith("-") or nxt.endswith((".py", ".pyz"))):
                i += 1
        i += 1
    if i >= n:
        return None
    return LaunchTarget(mode, args[i], tuple(args[i + 1 :]))


def _generic_target(args: Sequence[str], is_file: Callable[[str], bool] | None) -> LaunchTarget | None:
    """A launcher the user named: its options are unknown, so the target is `-- CMD`, `-m module`, or the first
    word that is a Python interpreter, a .py/.pyz file or (is_file) an existing file."""
    if "--" in args:
        rest = args[list(args).index("--") + 1 :]
        return LaunchTarget("argv", rest[0], tuple(rest[1:])) if rest else None
    n = len(args)
    for i, a in enumerate(args):
        if a in ("-m", "--module"):
            return LaunchTarget("module", args[i + 1], tuple(args[i + 2 :])) if i + 1 < n else None
        if a.startswith("-"):
            continue
        if is_python_interpreter(a):
            return LaunchTarget("argv", a, tuple(args[i + 1 :]))
        if a.endswith((".py", ".pyz")):
            return LaunchTarget("file", a, tuple(args[i + 1 :]))
        if is_file is not None and is_file(a):
            return LaunchTarget("exe", a, tuple(args[i + 1 :]))
    return None


def launch_target(
    args: Sequence[str], spec: LaunchSpec, is_file: Callable[[str], bool] | None = None
) -> LaunchTarget | None:
    """Where the target sits in a launcher's arguments (after the launcher program or module), or None when
    there is none (`torchrun --help`, `accelerate config`: not a launch). `spec` says which options take a
    value; `is_file` (generic launchers only) tells whether a word names an existing file."""
    if spec.subcommand is not None:
        if not args or args[0] != spec.subcommand:
            return None
        args = args[1:]
    if not (spec.flags or spec.values):
        return _generic_target(args, is_file)
    return _known_options_target(args, spec)
