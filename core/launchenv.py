"""What a process's environment says about how it was launched: a batch-scheduler job, or one rank of a
distributed launch. The one owner of these variable lists and of the main-rank rule; `guard`, locks, duplicate
detection and `procguard run` ask here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = [
    "SCHEDULERS",
    "SCHEDULER_VARS",
    "RANK_VARS",
    "DISTRIBUTED_VARS",
    "scheduler_job",
    "rank_noop_reason",
    "is_main_rank",
    "launch_context",
]

# Variable -> scheduler: set (non-empty) in every process of a batch job. In this order of precedence.
SCHEDULERS: Mapping[str, str] = {"SLURM_JOB_ID": "slurm", "PBS_JOBID": "pbs", "LSB_JOBID": "lsf"}
SCHEDULER_VARS: tuple[str, ...] = tuple(SCHEDULERS)
# The rank of this process in a distributed launch (torchrun and most launchers set both).
RANK_VARS: tuple[str, ...] = ("RANK", "LOCAL_RANK")
# Any of these set: the process is one rank of a distributed run.
DISTRIBUTED_VARS: tuple[str, ...] = ("TORCHELASTIC_RUN_ID", *RANK_VARS, "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def scheduler_job(env: Mapping[str, str] | None = None) -> tuple[str, str, str] | None:
    """(variable, scheduler, job id) of the batch job `env` (default: this process's) belongs to, or None."""
    env = _env(env)
    for var, name in SCHEDULERS.items():
        value = env.get(var)
        if value:
            return var, name, value
    return None


def rank_noop_reason(env: Mapping[str, str] | None = None) -> str | None:
    """Why a lock (or a duplicate check) is a no-op here: a non-zero RANK / LOCAL_RANK from a distributed
    launcher. A value that is not a number is no rank at all."""
    env = _env(env)
    for var, what in zip(RANK_VARS, ("rank", "local rank"), strict=True):
        raw = env.get(var, "").strip()
        try:
            rank = int(raw)
        except ValueError:
            continue  # unset or not a rank at all
        if rank != 0:
            return f"{what} {rank} of a distributed launch: only rank 0 holds the lock"
    return None


def is_main_rank(env: Mapping[str, str] | None = None) -> bool:
    """Rank 0 of a distributed launch, or no distributed launch at all (see `rank_noop_reason`)."""
    return rank_noop_reason(env) is None


def launch_context(env: Mapping[str, str] | None = None) -> str | None:
    """Why this process is part of a scheduler job or distributed launch (None if it is not)."""
    env = _env(env)
    job = scheduler_job(env)
    if job is not None:
        return f"running inside a batch-scheduler job ({job[0]}={job[2]}): the scheduler owns its jobs"
    for var in DISTRIBUTED_VARS:
        if env.get(var):
            return f"running inside a distributed launch ({var}={env[var]}): its ranks are not duplicates"
    return None
