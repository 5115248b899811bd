"""The benchmark harness's end-of-run leak check (bench/load.py): a process that escaped the cleanup but carries
the run's marker is listed, killed, and reported by `leftovers()`, so the run fails (as the test suite's own
session-end check does with its marker)."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

from tests.conftest import RUN_MARKER, is_gone, wait_for


def test_escaped_process_is_found_by_its_marker_killed_and_reported(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from bench import procstat
    from bench.load import Load

    load = Load()
    assert load.env[RUN_MARKER] == os.environ[RUN_MARKER]  # the suite's own check covers bench processes too
    escaped = 0
    try:
        # A shell that leaves a sleeper behind in a session of its own (no parent-death signal, not our child,
        # not tracked): only its marker can find it.
        out = load.tmp / "escaped"
        pid = load.spawn(["/bin/sh", "-c", f"setsid sleep 600 & echo $! > {out}.tmp && mv {out}.tmp {out}"])
        wait_for(lambda: out.exists())
        escaped = int(out.read_text())
        wait_for(lambda: procstat.comm(escaped) == "sleep")
        load.reap([pid], timeout=10)
        load.close()
        assert load.leftovers() == [escaped]
        wait_for(lambda: is_gone(escaped))
        err = capfd.readouterr().err
        assert "left running after the cleanup" in err and f"{escaped} sleep 600" in err
    finally:
        load.close()
        if escaped and not is_gone(escaped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(escaped, signal.SIGKILL)


def test_clean_run_has_no_leftovers() -> None:
    from bench.load import Load

    with Load() as load:
        pids = [load.spawn(load.sleep_argv()) for _ in range(3)]
        load.wait_exec(pids)
    assert load.leftovers() == []
    assert all(is_gone(p) for p in pids)
