"""procguard-tui's config file: `platformdirs.user_config_dir("procguard")/config.toml`, or `--config PATH`.

It holds what a user sets once: the keymap (PROCGUARD_TUI_KEYMAP still wins, entry by entry), the default grace
and refresh interval, the view, sort and grouping to start with, the Processes view's columns, whether t / k / d
ask first, and extra launchers and never-duplicate patterns (added to PROCGUARD_LAUNCHERS /
PROCGUARD_NEVER_DUPLICATE, checked by core's parser, so the app's duplicate rules are the CLI's). Command-line
options win over the file.

Read with `tomllib` (Python 3.11+; `tomli` on 3.10). Anything wrong is one line naming the file, the line and
the key (`ConfigError`; the command line prints it and exits 2): a TOML syntax error, an unknown table or key, a
value of the wrong type or out of range, a keymap entry that names no binding or no key. A missing file at the
default place is no error (the defaults); a missing `--config PATH` is. The file must be ours (or root's) and
writable by nobody else: its launchers and keymap decide what the app does.

`write_default(path)` writes the defaults, every setting with its comment (`procguard-tui --write-config`); it
never replaces an existing file (O_EXCL).
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from procguard.core.launchers import LAUNCHERS_VAR, NEVER_DUPLICATE_VAR, SettingError, parse_list
from procguard.tui.model import Grouping, SortKey

__all__ = ["COLUMNS", "Config", "ConfigError", "default_path", "load", "write_default"]

APP_NAME = "procguard"
FILE_NAME = "config.toml"
MAX_BYTES = 64 * 1024
VIEWS = ("processes", "duplicates", "locks", "gpu")
# Processes view columns: the config's name -> the column title (widgets/process_table.py). THR and AGE show on
# wide terminals only, CGROUP on very wide ones, NODE and TASK in cluster mode only; the mark column always shows.
COLUMNS = {
    "pid": "PID",
    "node": "NODE",
    "user": "USER",
    "state": "S",
    "cpu": "CPU%",
    "rss": "RSS",
    "gpu": "GPU",
    "threads": "THR",
    "age": "AGE",
    "task": "TASK",
    "cgroup": "CGROUP",
    "flags": "FLG",
    "command": "COMMAND",
}


class ConfigError(Exception):
    """The config file can't be used: one line, naming the file, the line and the key."""


def default_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME)) / FILE_NAME


@dataclass(frozen=True)
class Config:
    """The settings (defaults where the file says nothing). `path`: the file read, None when there was none."""

    path: Path | None = None
    interval: float = 1.0
    grace: float = 5.0
    view: str = "processes"
    sort: SortKey = "pid"
    reverse: bool = False
    grouping: Grouping = "parent"
    columns: tuple[str, ...] | None = None  # config names (COLUMNS keys); None: every column
    confirm: bool = True
    launchers: tuple[str, ...] = ()
    never_duplicate: tuple[str, ...] = ()
    keymap: Mapping[str, str] = field(default_factory=dict)

    @property
    def column_titles(self) -> frozenset[str] | None:
        return None if self.columns is None else frozenset(COLUMNS[c] for c in self.columns)

    def apply_duplicate_settings(self, environ: MutableMapping[str, str] | None = None) -> None:
        """Add the file's launchers and never-duplicate patterns to the environment variables core reads
        (after the variables' own entries), so every duplicate check in this process uses both."""
        environ = os.environ if environ is None else environ
        for var, extra in ((LAUNCHERS_VAR, self.launchers), (NEVER_DUPLICATE_VAR, self.never_duplicate)):
            if extra:
                have = environ.get(var, "").strip()
                environ[var] = ",".join([have, *extra] if have else extra)


# ---------------------------------------------------------------------------------------------- reading


class _Where:
    """Line numbers of a TOML text's tables and keys (tomllib gives values only): the first line where
    `key = ` appears under `[table]`, else the table's header line, else 1."""

    _HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(#.*)?$")
    _KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\-]+)\s*=""")

    def __init__(self, text: str) -> None:
        self.tables: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        table = ""
        for n, line in enumerate(text.splitlines(), 1):
            m = self._HEADER.match(line)
            if m is not None:
                table = m.group(1).strip().strip("\"'")
                self.tables.setdefault(table, n)
                continue
            k = self._KEY.match(line)
            if k is not None:
                self.keys.setdefault((table, k.group(1).strip("\"'")), n)

    def line(self, table: str, key: str | None = None) -> int:
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        return self.tables.get(table, 1)


def _read(path: Path) -> str:
    """The file's text, if it may be believed: a regular file of ours (or root's), not writable by others."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise ConfigError(f"{path}: owned by uid {st.st_uid}, not by you: refusing it")
        if st.st_mode & 0o022:
            raise ConfigError(
                f"{path}: writable by other users (mode {stat.S_IMODE(st.st_mode):o}): refusing it"
            )
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: bigger than {MAX_BYTES // 1024} KiB: not a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _seconds(positive: bool) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not math.isfinite(v)
            or v < 0
            or (positive and v == 0)
        ):
            raise ValueError(f"must be a finite number of seconds {'> 0' if positive else '>= 0'}, not {v!r}")
        return float(v)

    return check


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError(f"must be one of {', '.join(repr(o) for o in options)}, not {v!r}")
        return str(v)

    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, not {v!r}")
    return v


def _columns(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
        raise ValueError(f"must be a list of column names, not {v!r}")
    for c in v:
        if c not in COLUMNS:
            raise ValueError(f"{c!r} is not a column (one of {', '.join(COLUMNS)})")
    if not v:
        raise ValueError("must name at least one column")
    if len(set(v)) != len(v):
        raise ValueError("names a column twice")
    return tuple(v)


def _patterns(setting: str) -> Callable[[Any], tuple[str, ...]]:
    def check(v: Any) -> tuple[str, ...]:
        if isinstance(v, list) and all(isinstance(e, str) for e in v):
            entries: list[str] | str = list(v)
        elif isinstance(v, str):
            entries = v
        else:
            raise ValueError(f"must be a list of names or globs, not {v!r}")
        try:
            return parse_list(setting, entries)
        except SettingError as e:  # core's words, without its variable's name (this is the file's key)
            raise ValueError(str(e).split(": ", 1)[-1]) from None

    return check


def _schema() -> dict[str, dict[str, Callable[[Any], Any]]]:
    from procguard.tui.model import GROUPINGS, SORT_KEYS

    return {
        "tui": {
            "interval": _seconds(True),
            "grace": _seconds(False),
            "view": _choice(VIEWS),
            "sort": _choice(tuple(SORT_KEYS)),
            "reverse": _bool,
            "grouping": _choice(tuple(GROUPINGS)),
            "columns": _columns,
            "confirm": _bool,
        },
        "duplicates": {
            "launchers": _patterns(LAUNCHERS_VAR),
            "never_duplicate": _patterns(NEVER_DUPLICATE_VAR),
        },
    }


_FIELDS: dict[tuple[str, str], str] = {
    ("duplicates", "launchers"): "launchers",
    ("duplicates", "never_duplicate"): "never_duplicate",
}


def load(path: Path | None = None) -> Config:
    """The config: from `path` (--config: it must exist), else from the default place (missing: defaults).
    Raises ConfigError (one line: file, line, key)."""
    explicit = path is not None
    path = path if path is not None else default_path()
    if not explicit and not os.path.lexists(path):
        return Config()
    text = _read(path)
    where = _Where(text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)|\(at end of document\)", str(e))
        line = m.group(1) if m is not None and m.group(1) else str(text.count("\n") + 1)
        msg = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(e))
        raise ConfigError(f"{path}:{line}: not valid TOML: {msg}") from None
    values: dict[str, Any] = {"path": path}
    schema = _schema()
    for table, body in doc.items():
        if table == "keymap":
            values["keymap"] = _keymap(path, where, body)
            continue
        if table not in schema or not isinstance(body, dict):
            known = ", ".join(f"[{t}]" for t in (*schema, "keymap"))
            if isinstance(body, dict):
                raise ConfigError(f"{path}:{where.line(table)}: [{table}]: unknown table (known: {known})")
            raise ConfigError(
                f"{path}:{where.line('', table)}: {table}: unknown key outside the tables "
                f"(settings go in {known})"
            )
        for key, value in body.items():
            check = schema[table].get(key)
            if check is None:
                raise ConfigError(
                    f"{path}:{where.line(table, key)}: {table}.{key}: unknown key (known in [{table}]: "
                    f"{', '.join(schema[table])})"
                )
            try:
                values[_FIELDS.get((table, key), str(key))] = check(value)
            except ValueError as e:
                raise ConfigError(f"{path}:{where.line(table, key)}: {table}.{key}: {e}") from None
    return Config(**values)


def _keymap(path: Path, where: _Where, body: Any) -> dict[str, str]:
    """[keymap]: binding id = key (or "key1,key2"), checked like PROCGUARD_TUI_KEYMAP (app.check_keymap)."""
    if not isinstance(body, dict):
        raise ConfigError(f"{path}:{where.line('', 'keymap')}: keymap: must be a table of binding id = key")
    for bid, key in body.items():
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(
                f"{path}:{where.line('keymap', bid)}: keymap.{bid}: must be a key name (a string), "
                f"not {key!r}"
            )
    from procguard.tui.app import KeymapError, check_keymap

    keymap = {bid: key.strip() for bid, key in body.items()}
    try:
        return check_keymap(keymap, lambda bid: f"{path}:{where.line('keymap', bid)}: keymap.{bid}")
    except KeymapError as e:
        raise ConfigError(str(e)) from None


# ---------------------------------------------------------------------------------------------- writing


def default_text() -> str:
    """The defaults as a config file, every setting with what it does ([keymap]: every binding, commented)."""
    from procguard.tui.app import LONG_DESCRIPTIONS, binding_ids
    from procguard.tui.model import GROUPINGS, SORT_KEYS

    d = Config()
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    lines = [
        "# procguard-tui settings (written by `procguard-tui --write-config`; edit freely).",
        "# Command-line options win over this file; PROCGUARD_TUI_KEYMAP wins over [keymap], entry by entry.",
        "",
        "[tui]",
        "# Seconds between refreshes (--interval).",
        f"interval = {d.interval}",
        "# Seconds between SIGTERM and SIGKILL when t terminates (--grace).",
        f"grace = {d.grace}",
        f"# The view shown first: {', '.join(repr(v) for v in VIEWS)}.".replace("'", '"'),
        f'view = "{d.view}"',
        f"# Processes view: sort by {', '.join(repr(k) for k in SORT_KEYS)}; reverse turns it around.".replace(
            "'", '"'
        ),
        f'sort = "{d.sort}"',
        f"reverse = {str(d.reverse).lower()}",
        f"# Processes view: group by {', '.join(repr(g) for g in GROUPINGS)} (the tree).".replace("'", '"'),
        f'grouping = "{d.grouping}"',
        "# Processes view columns shown (leave one out to hide it; thread count and age show from 120 columns",
        "# on, cgroup from 150, node and task with --ray only).",
        f"columns = [{cols}]",
        "# Ask before t, k and d act (false: as --no-confirm).",
        f"confirm = {str(d.confirm).lower()}",
        "",
        "[duplicates]",
        "# More launchers (programs that start the job rather than being it), names or globs: added to",
        "# PROCGUARD_LAUNCHERS for the app's duplicate rules.",
        "launchers = []",
        "# Programs that are never duplicates, names, globs or paths: added to PROCGUARD_NEVER_DUPLICATE.",
        "never_duplicate = []",
        "",
        "[keymap]",
        '# binding id = key, or several: "T,ctrl+t". Key names: t, T, ctrl+t, f5, space, minus, question_mark...',
    ]
    for bid, key in binding_ids().items():
        desc = LONG_DESCRIPTIONS.get(bid, "")
        lines.append(f'# "{bid}" = "{key}"' + (f"  # {desc}" if desc else ""))
    return "\n".join(lines) + "\n"


def write_default(path: Path | None = None) -> Path:
    """Write the defaults to `path` (default: the default place), creating its folder; never over an existing
    file (O_EXCL: not even a symlink's target). Raises ConfigError naming the path."""
    path = path if path is not None else default_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        raise ConfigError(f"{path}: exists already: not overwritten (remove it first)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot write it: {e.strerror or e}") from None
    try:
        os.write(fd, default_text().encode("utf-8"))
    finally:
        os.close(fd)
    return path
