"""A quick smoke run of the benchmark suite (`python -m bench --quick`): it must write a results file with every
section and a figure beside its baseline for each, and leave none of its processes behind. The figures' values
are never asserted (speed lives in bench/, not in pass/fail)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = (
    "## Summary",
    "## 1. Snapshot",
    "## 2. Terminate",
    "## Cgroup",
    "## 3. Duplicate detection",
    "## GPU holders",
    "## 4. procguard-tui",
    "## 5. Keypress to screen",
    "## 6. Launch to the first frame",
    "## 7. Scaling",
)
# A summary row per figure, each with a value measured against its baseline in the same run (the figures that
# need tmux, htop or a GPU node may say why they were not measured instead).
SUMMARY_ROWS = (
    r"\| snapshot [\d,]+: procguard cold vs ps \| \d+\.\d\d× ",
    r"\| terminate 20 \(exit on SIGTERM\), median from signal \| [\d.]+ ms \(psutil wait_procs [\d.]+ ms, "
    r"[\d.]+×; common design [\d.]+ ms\)",
    r"\| terminate 20 with 1 ignoring SIGTERM, grace [\d.]+ s, median \| [\d.]+ ms \(psutil wait_procs",
    r"\| duplicates over \d+ Python processes, detection, steady state: procguard vs common \| [\d.]+× faster",
    r"\| duplicates: right answer \| procguard yes, ",
    r"\| TUI idle CPU at [\d,]+ processes vs htop",
    r"\| TUI peak RSS",
    r"\| keypress (→|to) screen",
    r"\| launch → first frame with rows",
)


def _pids_with(token: str) -> list[int]:
    """Live processes carrying the run's marker token (in their command line or environment)."""
    needle = token.encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        for what in ("cmdline", "environ"):
            try:
                with open(f"/proc/{name}/{what}", "rb") as f:
                    if needle in f.read():
                        with open(f"/proc/{name}/stat", "rb") as st:
                            if st.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X"):
                                found.append(int(name))
                        break
            except OSError:
                continue
    return found


def test_quick_bench_writes_every_section_and_leaves_nothing(tmp_path: Path) -> None:
    token = f"pgbench-smoke-{secrets.token_hex(4)}"
    out = tmp_path / "RESULTS.md"
    try:
        r = subprocess.run(
            [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--token", token],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=100,
        )
    finally:
        left = _pids_with(token)
    assert not left, f"bench left processes behind: {left}"
    assert r.returncode == 0, r.stdout[-3000:]
    # It did start a load: the log names the table sizes it built.
    assert re.search(r"table: [\d,]+ processes \([\d,]+ sleepers of ours\)", r.stdout), r.stdout
    text = out.read_text()
    for heading in SECTIONS:
        assert heading in text, f"{heading!r} missing from the results:\n{text}"
    for row in SUMMARY_ROWS:
        assert re.search(row, text), f"no summary row matching {row!r}:\n{text}"
    assert "| processes of ours left after cleanup | 0 |" in text
    assert "--quick" in text and "| kernel | Linux " in text and re.search(r"\| machine \| \d+ CPUs", text)
    assert re.search(r"\| load average \(1/5/15 min\) \| start \d", text)
    assert "failed" not in text.lower(), text
