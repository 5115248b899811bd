"""Launchers and never-duplicate patterns: the built-in launchers, and the user's additions.

A *launcher* starts the job rather than being it (torchrun, accelerate launch, deepspeed, ...): duplicate
detection identifies it by its target, the script or module it starts. Users name more launchers, and programs
that are never duplicates of anything, through two settings, each a comma-separated list of names or globs:

- ``PROCGUARD_LAUNCHERS``: matched against a program's name (a script's or console script's file name, an
  executable's name) or module (``-m pkg.mod``, a console script's entry-point module);
- ``PROCGUARD_NEVER_DUPLICATE``: matched against the same names, and against full paths when the pattern
  holds a ``/`` (script, program or executable path).

The parsing lives here so that the environment and the app's configuration file read the same settings the
same way: ``parse_list(setting, text)`` / ``Settings.from_values(...)`` / ``settings_from_env()``. An entry
that is not a valid name or glob raises ``SettingError`` (a ValueError) with a one-line message naming it.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

__all__ = [
    "LAUNCHERS_VAR",
    "NEVER_DUPLICATE_VAR",
    "SettingError",
    "Settings",
    "LaunchSpec",
    "BUILTIN_BY_NAME",
    "BUILTIN_BY_MODULE",
    "GENERIC",
    "parse_list",
    "settings_from_env",
]

LAUNCHERS_VAR = "PROCGUARD_LAUNCHERS"
NEVER_DUPLICATE_VAR = "PROCGUARD_NEVER_DUPLICATE"


class SettingError(ValueError):
    """A setting holds an entry that is not a valid name or glob (one line, naming the setting and entry)."""

    def __init__(self, setting: str, entry: str, why: str) -> None:
        super().__init__(f"{setting}: {entry!r} {why}")
        self.setting = setting
        self.entry = entry


# A name: letters, digits and . _ - + (program names, module names); a glob adds * ? and [...] classes.
# Paths (with /) only make sense for never-duplicate patterns.
_NAME_CHARS = re.compile(r"^[A-Za-z0-9_.+\-*?\[\]!]+$")
_PATH_CHARS = re.compile(r"^[A-Za-z0-9_.+\-*?\[\]!/~@=:]+$")


def _bracket_problem(entry: str) -> str | None:
    """fnmatch takes an unclosed '[' literally; in a setting it is a typo, so say so."""
    i, n = 0, len(entry)
    while i < n:
        if entry[i] == "[":
            j = i + 1
            if j < n and entry[j] == "!":
                j += 1
            if j < n and entry[j] == "]":
                j += 1
            close = entry.find("]", j)
            if close < 0:
                return "has a '[' without its ']'"
            i = close + 1
        elif entry[i] == "]":
            return "has a ']' without its '['"
        else:
            i += 1
    return None


def _check(setting: str, entry: str, paths: bool) -> None:
    if not entry:
        raise SettingError(setting, entry, "is empty: expected a comma-separated list of names or globs")
    allowed = _PATH_CHARS if paths else _NAME_CHARS
    if allowed.match(entry) is None:
        what = "name, path or glob" if paths else "name or glob (letters, digits, . _ - + and * ? [ ])"
        raise SettingError(setting, entry, f"is not a valid {what}")
    if not any(c.isalnum() or c in "*?" for c in entry):
        raise SettingError(setting, entry, "is not a valid name or glob")
    problem = _bracket_problem(entry)
    if problem is not None:
        raise SettingError(setting, entry, f"is not a valid glob: it {problem}")


def parse_list(setting: str, text: str | Iterable[str] | None) -> tuple[str, ...]:
    """The entries of one setting: a comma-separated string (or already a list), blanks around entries
    ignored, a blank setting = no entries. Raises SettingError on the first invalid entry."""
    if text is None:
        return ()
    if isinstance(text, str):
        if not text.strip():
            return ()
        entries = [e.strip() for e in text.split(",")]
    else:
        entries = [str(e).strip() for e in text]
    paths = setting == NEVER_DUPLICATE_VAR
    for e in entries:
        _check(setting, e, paths)
    return tuple(entries)


def _matches(patterns: tuple[str, ...], names: Iterable[str], paths: Iterable[str] = ()) -> str | None:
    """The first pattern matching one of `names` (patterns without /) or `paths` (patterns with /)."""
    names = [n for n in names if n]
    paths = [p for p in paths if p]
    for pat in patterns:
        pool = paths if "/" in pat else names
        for s in pool:
            if fnmatch.fnmatchcase(s, pat):
                return pat
    return None


@dataclass(frozen=True)
class Settings:
    """The user's extra launchers and never-duplicate patterns (validated)."""

    launchers: tuple[str, ...] = ()
    never_duplicate: tuple[str, ...] = ()

    @classmethod
    def from_values(
        cls, launchers: str | Iterable[str] | None = None, never_duplicate: str | Iterable[str] | None = None
    ) -> Settings:
        return cls(parse_list(LAUNCHERS_VAR, launchers), parse_list(NEVER_DUPLICATE_VAR, never_duplicate))

    def launcher_match(self, *names: str) -> str | None:
        """The PROCGUARD_LAUNCHERS entry naming one of `names` (program names, modules), else None."""
        return _matches(self.launchers, names) if self.launchers else None

    def never_match(self, names: Iterable[str], paths: Iterable[str] = ()) -> str | None:
        """The PROCGUARD_NEVER_DUPLICATE pattern matching one of `names`/`paths`, else None."""
        return _matches(self.never_duplicate, names, paths) if self.never_duplicate else None


@lru_cache(maxsize=8)
def _cached(launchers: str | None, never: str | None) -> Settings:
    return Settings.from_values(launchers, never)


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """The settings from PROCGUARD_LAUNCHERS / PROCGUARD_NEVER_DUPLICATE (default: our environment)."""
    env = os.environ if env is None else env
    return _cached(env.get(LAUNCHERS_VAR), env.get(NEVER_DUPLICATE_VAR))


# ---------------------------------------------------------------------------------------------- built-ins


class LaunchSpec(NamedTuple):
    """How to find a launcher's target in its arguments."""

    name: str  # shown as the launcher: "torchrun", "accelerate launch", ...
    flags: frozenset[str]  # options that take no value (normalised: "-" for "_")
    values: frozenset[str]  # options known to take a value
    module_flags: frozenset[str]  # "the target is a module"
    exe_flags: frozenset[str]  # "the target is a program, not Python"
    subcommand: str | None = None  # `accelerate launch`: only this subcommand launches


_TORCH_FLAGS = frozenset({"-h", "--help", "--standalone", "--run-path", "--virtual-local-rank", "--use-env"})
_TORCH_VALUES = frozenset(
    {
        "--nnodes",
        "--nproc-per-node",
        "--rdzv-backend",
        "--rdzv-endpoint",
        "--rdzv-id",
        "--rdzv-conf",
        "--max-restarts",
        "--monitor-interval",
        "--start-method",
        "--event-log-handler",
        "--role",
        "--log-dir",
        "-r",
        "--redirects",
        "-t",
        "--tee",
        "--local-ranks-filter",
        "--duplicate-stdout-filters",
        "--duplicate-stderr-filters",
        "--node-rank",
        "--master-addr",
        "--master-port",
        "--local-addr",
        "--logs-specs",
        "--numa-binding",
        "--signals-to-handle",
        "--shutdown-timeout",
    }
)
TORCHRUN = LaunchSpec(
    "torchrun", _TORCH_FLAGS, _TORCH_VALUES, frozenset({"-m", "--module"}), frozenset({"--no-python"})
)
TORCH_LAUNCH = TORCHRUN._replace(name="torch.distributed.launch")
TORCH_RUN_MODULE = TORCHRUN._replace(name="torch.distributed.run")

_ACCELERATE_FLAGS = frozenset(
    {
        "-h",
        "--help",
        "--cpu",
        "--multi-gpu",
        "--tpu",
        "--ipex",
        "--use-xpu",
        "--use-deepspeed",
        "--use-fsdp",
        "--use-megatron-lm",
        "--dynamo-use-fullgraph",
        "--dynamo-use-dynamic",
        "--dynamo-use-regional-compilation",
        "--downcast-bf16",
        "--debug",
        "-q",
        "--quiet",
        "--same-network",
        "--tpu-use-cluster",
        "--tpu-use-sudo",
        "--enable-cpu-affinity",
    }
)
_ACCELERATE_VALUES = frozenset(
    {
        "--config-file",
        "--mixed-precision",
        "--num-processes",
        "--num-machines",
        "--num-cpu-threads-per-process",
        "--dynamo-backend",
        "--dynamo-mode",
        "--gpu-ids",
        "--machine-rank",
        "--main-process-ip",
        "--main-process-port",
        "--rdzv-backend",
        "--rdzv-conf",
        "--max-restarts",
        "--main-training-function",
        "--vm",
        "--env",
        "--deepspeed-config-file",
        "--zero-stage",
        "--offload-optimizer-device",
        "--offload-param-device",
        "--gradient-accumulation-steps",
        "--gradient-clipping",
        "--zero3-init-flag",
        "--zero3-save-16bit-model",
        "--deepspeed-hostfile",
        "--deepspeed-exclusion-filter",
        "--deepspeed-inclusion-filter",
        "--deepspeed-multinode-launcher",
        "--fsdp-sharding-strategy",
        "--fsdp-offload-params",
        "--fsdp-min-num-params",
        "--fsdp-auto-wrap-policy",
        "--fsdp-transformer-layer-cls-to-wrap",
        "--fsdp-backward-prefetch",
        "--fsdp-state-dict-type",
        "--fsdp-forward-prefetch",
        "--fsdp-use-orig-params",
        "--fsdp-cpu-ram-efficient-loading",
        "--fsdp-sync-module-states",
        "--fsdp-activation-checkpointing",
        "--fsdp-version",
        "--log-dir",
        "--tee",
        "--redirects",
        "--local-ranks-filter",
        "--monitor-interval",
        "--fp8-backend",
    }
)
ACCELERATE = LaunchSpec(
    "accelerate",
    _ACCELERATE_FLAGS,
    _ACCELERATE_VALUES,
    frozenset({"-m", "--module"}),
    frozenset({"--no-python"}),
    "launch",
)
ACCELERATE_LAUNCH = ACCELERATE._replace(subcommand=None)

_DEEPSPEED_FLAGS = frozenset(
    {
        "-h",
        "--help",
        "--no-ssh-check",
        "--no-local-rank",
        "--force-multi",
        "--elastic-training",
        "--save-pid",
        "--bind-cores-to-rank",
        "--no-ssh",
        "--use-env",
    }
)
_DEEPSPEED_VALUES = frozenset(
    {
        "-H",
        "--hostfile",
        "-i",
        "--include",
        "-e",
        "--exclude",
        "--num-nodes",
        "--min-elastic-nodes",
        "--max-elastic-nodes",
        "--num-gpus",
        "--num-accelerators",
        "--master-port",
        "--master-addr",
        "--node-rank",
        "--launcher",
        "--launcher-args",
        "--module-name",
        "--autotuning",
        "--comment",
        "--account",
        "--ssh-port",
        "--bind-core-list",
        "--enable-each-rank-log",
        "--world-info",
        "--procs-per-node",
        "--nnodes",
        "--nproc-per-node",
    }
)
DEEPSPEED = LaunchSpec(
    "deepspeed", _DEEPSPEED_FLAGS, _DEEPSPEED_VALUES, frozenset({"--module"}), frozenset({"--no-python"})
)

# A launcher the user names: no known options, so the target is found by its look (see pyproc.launch_target).
GENERIC = LaunchSpec("", frozenset(), frozenset(), frozenset({"-m", "--module"}), frozenset())

# By program name (a script's or console script's file name) and by module (-m, or a console script's entry).
BUILTIN_BY_NAME: Mapping[str, LaunchSpec] = {
    "torchrun": TORCHRUN,
    "deepspeed": DEEPSPEED,
    "accelerate": ACCELERATE,
    "accelerate-launch": ACCELERATE_LAUNCH._replace(name="accelerate-launch"),
}
BUILTIN_BY_MODULE: Mapping[str, LaunchSpec] = {
    "torch.distributed.run": TORCH_RUN_MODULE,
    "torch.distributed.launch": TORCH_LAUNCH,
    "deepspeed.launcher.runner": DEEPSPEED._replace(name="deepspeed"),
    "deepspeed.launcher.launch": DEEPSPEED._replace(name="deepspeed.launcher.launch"),
    "accelerate.commands.launch": ACCELERATE_LAUNCH,
    "accelerate.commands.accelerate_cli": ACCELERATE,
}
