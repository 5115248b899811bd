"""guard(on_duplicate="terminate") as root never ends another user's run of the same script (nobody via
setpriv plays the other user)."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

from tests.conftest import LAUNCH_VARS, NOBODY, NOBODY_UID, PY, ProcStarter, is_gone, needs_root
from tests.test_guard import GUARDED

pytestmark = needs_root


def _two_runs(
    procs: ProcStarter, shared_tmp: Path, tmp_path: Path, policy: str
) -> tuple[subprocess.Popen[bytes], subprocess.CompletedProcess[str]]:
    """nobody runs a guarded script (its own private registry and lock folders); then root runs the same
    script with `policy`. Returns (nobody's run, root's finished run)."""
    proj = shared_tmp / "proj"
    proj.mkdir(mode=0o755)
    script = proj / f"guarded_users_{os.getpid()}.py"
    script.write_text(textwrap.dedent(GUARDED))
    script.chmod(0o644)
    home = shared_tmp / "nobody"
    home.mkdir(mode=0o700)
    os.chown(home, NOBODY_UID, NOBODY_UID)
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    theirs = procs.popen(
        [*NOBODY, PY, str(script), "abort", str(home / "info.json")],
        cwd=proj,
        env={
            **base,
            "PROCGUARD_REGISTRY_DIR": str(home / "registry"),
            "PROCGUARD_LOCK_DIR": str(home / "locks"),
        },
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    procs.wait_ready(theirs)
    mine = subprocess.run(
        [PY, str(script), policy, str(tmp_path / "info.json")],
        cwd=proj,
        timeout=60,
        env={
            **base,
            "PROCGUARD_REGISTRY_DIR": str(tmp_path / "registry"),
            "PROCGUARD_LOCK_DIR": str(tmp_path / "locks"),
        },
        capture_output=True,
        text=True,
        start_new_session=True,
    )
    return theirs, mine


def test_root_never_ends_another_users_run(procs: ProcStarter, shared_tmp: Path, tmp_path: Path) -> None:
    theirs, mine = _two_runs(procs, shared_tmp, tmp_path, "terminate")
    assert mine.returncode == 1, mine.stderr
    assert "as another user" in mine.stderr and f"pid {theirs.pid}" in mine.stderr
    assert "Traceback" not in mine.stderr
    assert not is_gone(theirs.pid)
    assert not (tmp_path / "info.json").exists()  # the guarded block never ran


def test_another_users_run_still_counts_for_abort(
    procs: ProcStarter, shared_tmp: Path, tmp_path: Path
) -> None:
    theirs, mine = _two_runs(procs, shared_tmp, tmp_path, "abort")
    assert mine.returncode == 1 and "already running" in mine.stderr and "user nobody" in mine.stderr
    assert not is_gone(theirs.pid)
