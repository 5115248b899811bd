"""The one owner of the launch-environment rules: batch-scheduler jobs, distributed ranks, the main rank."""

from __future__ import annotations

import os
import subprocess
import sys

from procguard.core import duplicates, identity, locks
from procguard.core.launchenv import (
    DISTRIBUTED_VARS,
    SCHEDULER_VARS,
    is_main_rank,
    launch_context,
    rank_noop_reason,
    scheduler_job,
)


def test_scheduler_job_names_the_first_set_variable() -> None:
    assert scheduler_job({}) is None
    assert scheduler_job({"SLURM_JOB_ID": ""}) is None  # empty: not a job
    assert scheduler_job({"PBS_JOBID": "7.pbs"}) == ("PBS_JOBID", "pbs", "7.pbs")
    assert scheduler_job({"LSB_JOBID": "3", "SLURM_JOB_ID": "9"}) == ("SLURM_JOB_ID", "slurm", "9")


def test_main_rank_rule() -> None:
    assert is_main_rank({}) and rank_noop_reason({}) is None
    assert is_main_rank({"RANK": "0", "LOCAL_RANK": " 0 "})
    assert is_main_rank({"RANK": "abc"})  # not a number: no rank at all
    assert not is_main_rank({"RANK": "0", "LOCAL_RANK": "2"})
    assert rank_noop_reason({"RANK": "3"}) == "rank 3 of a distributed launch: only rank 0 holds the lock"
    assert (
        rank_noop_reason({"LOCAL_RANK": "1"})
        == "local rank 1 of a distributed launch: only rank 0 holds the lock"
    )


def test_launch_context_scheduler_first_then_distributed() -> None:
    assert launch_context({}) is None
    assert launch_context({"RANK": "0", "SLURM_JOB_ID": "5"}) == (
        "running inside a batch-scheduler job (SLURM_JOB_ID=5): the scheduler owns its jobs"
    )
    assert launch_context({"PMI_RANK": "0"}) == (
        "running inside a distributed launch (PMI_RANK=0): its ranks are not duplicates"
    )


def test_every_user_reads_the_same_lists() -> None:
    assert duplicates.SCHEDULER_VARS is SCHEDULER_VARS and duplicates.DISTRIBUTED_VARS is DISTRIBUTED_VARS
    assert duplicates.launch_context is launch_context and locks.rank_noop_reason is rank_noop_reason
    assert set(SCHEDULER_VARS) | {"RANK", "LOCAL_RANK"} <= identity.RELEVANT_ENV


def test_this_process_environment_is_the_default() -> None:
    env = {k: v for k, v in os.environ.items() if k not in (*SCHEDULER_VARS, *DISTRIBUTED_VARS)}
    code = (
        "from procguard.core.launchenv import is_main_rank, scheduler_job;"
        "print(is_main_rank(), scheduler_job())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "LOCAL_RANK": "1", "LSB_JOBID": "42"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split("\n")[0] == "False ('LSB_JOBID', 'lsf', '42')"
