"""The shared trust-boundary primitives: the sanitizer, the process identity, private folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from procguard.core import privdir
from procguard.core.procid import ProcId
from procguard.core.sanitize import safe, safe_join
from tests.conftest import NOBODY, NOBODY_UID, ProcStarter, needs_root


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text", "plain text"),
        ("title\x1b]0;pwned\x07", "title\\x1b]0;pwned\\x07"),
        ("clear\x1b[2J", "clear\\x1b[2J"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
        ("bidi\u202eevil\u2066x\u2069", "bidi\\u202eevil\\u2066x\\u2069"),
        ("marks\u200e\u200f\u061c lines\u2028\u2029", "marks\\u200e\\u200f\\u061c lines\\u2028\\u2029"),
        ("bytes\udcff\udc80", "bytes\\xff\\x80"),
        ("ünïcödé 日本 ok", "ünïcödé 日本 ok"),
        ("[b]markup[/b]", "[b]markup[/b]"),  # not markup's business: the TUI renders it as plain text
    ],
)
def test_safe_escapes_every_control_and_override(raw: str, shown: str) -> None:
    out = safe(raw)
    assert out == shown
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out)
    out.encode("utf-8")  # no lone surrogate left: printable to any UTF-8 terminal


def test_safe_join_makes_an_argv_one_line() -> None:
    assert safe_join(["python", "-c", "import os\nos.system('x')"]) == "python -c import os\\nos.system('x')"


def test_procid_names_one_process_and_not_its_pid_successor(procs: ProcStarter) -> None:
    p = procs.popen(["sleep", "30"])
    ident = ProcId.of(p.pid)
    assert ident is not None and ident.alive() and ident.running()
    assert ProcId.from_create_time(p.pid, ident.create_time) == ident
    assert not ProcId(p.pid, ident.start_ticks + 1).alive()  # a reused pid has another start time
    p.kill()
    p.wait()
    assert not ident.alive() and not ident.running()
    assert ProcId.of(p.pid) is None or ProcId.of(p.pid) != ident


def test_private_dir_is_created_0700_and_checked(tmp_path: Path) -> None:
    d = privdir.ensure_private_dir(tmp_path / "a" / "b")
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == "0o700"
    assert privdir.private_dir_problem(d) is None
    os.chmod(tmp_path / "a", 0o777)
    assert "writable by others" in (privdir.private_dir_problem(d) or "")
    with pytest.raises(privdir.PrivateDirError, match="writable by others"):
        privdir.ensure_private_dir(tmp_path / "a" / "c")
    assert not (tmp_path / "a" / "c").exists()


def test_a_symlinked_folder_is_not_private(tmp_path: Path) -> None:
    real = privdir.ensure_private_dir(tmp_path / "real")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # a link in a folder others can write is never followed
    (shared / "link").symlink_to(real)
    assert "is a symlink" in (privdir.private_dir_problem(shared / "link") or "")
    with pytest.raises(privdir.PrivateDirError):
        privdir.write_atomic(shared / "link", "x", b"data")
    assert list(real.iterdir()) == []


def test_write_atomic_replaces_a_planted_symlink_without_following_it(tmp_path: Path) -> None:
    d = privdir.ensure_private_dir(tmp_path / "d")
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (d / "entry.json").symlink_to(victim)
    privdir.write_atomic(d, "entry.json", b"{}")
    assert victim.read_text() == "untouched"
    assert not (d / "entry.json").is_symlink() and (d / "entry.json").read_bytes() == b"{}"
    assert sorted(p.name for p in d.iterdir()) == ["entry.json"]  # no temp file left behind


def test_read_small_refuses_symlinks_fifos_and_big_files(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10)
    assert privdir.read_small(tmp_path / "f") is not None
    (tmp_path / "l").symlink_to(tmp_path / "f")
    assert privdir.read_small(tmp_path / "l") is None
    os.mkfifo(tmp_path / "fifo")
    assert privdir.read_small(tmp_path / "fifo") is None  # and it did not hang
    (tmp_path / "big").write_bytes(b"x" * (privdir.MAX_FILE_BYTES + 1))
    assert privdir.read_small(tmp_path / "big") is None


@needs_root
def test_a_folder_another_user_made_is_never_adopted(shared_tmp: Path) -> None:
    base = shared_tmp / "tmp"
    base.mkdir()
    os.chmod(base, 0o1777)
    code = f"import os; os.mkdir({str(base / 'procguard-0')!r}, 0o700)"
    subprocess.run([*NOBODY, sys.executable, "-c", code], check=True, timeout=30)
    planted = base / "procguard-0"
    assert planted.stat().st_uid == NOBODY_UID
    with pytest.raises(privdir.PrivateDirError, match="owned by uid 65534"):
        privdir.ensure_private_dir(planted / "registry")
    assert list(planted.iterdir()) == []
    # And a file nobody wrote is not believed about a root process.
    st = os.stat(planted)
    assert privdir.trusted_file_problem(st, base, 0) is not None
