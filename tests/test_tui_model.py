"""The TUI's pure layer (model.py, tables.py, actions.py) on the deterministic demo scenario: no Textual app."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from rich.style import Style

from procguard.core import format as fmt
from procguard.core.signals import Target
from procguard.tui.actions import describe, progress_label
from procguard.tui.app import parse_keymap
from procguard.tui.backends.demo import LOCKS, DemoBackend, demo_model, demo_model_without_gpu, demo_resolve
from procguard.tui.cli import main, parse_args
from procguard.tui.model import (
    FLAG_DUPLICATE,
    FLAG_GUARDED,
    FLAG_LOCK,
    FLAG_ORPHAN_GPU,
    ViewState,
    blast_radius,
    build_rows,
    prune_marks,
    summarize_model,
    targets_for_keys,
)
from procguard.tui.rows import duplicate_rows, gpu_rows, lock_rows
from procguard.tui.widgets.process_table import process_columns
from procguard.tui.widgets.table import fit, layout


def ids(rows: list) -> list[tuple[str, int]]:
    return [r.key for r in rows]


def test_tree_by_parent_is_depth_first_with_prefixes() -> None:
    rows = build_rows(demo_model(), ViewState())
    by = {r.id: r for r in rows if r.kind == "proc"}
    assert rows[0].id == 1 and rows[0].depth == 0
    assert by[2101].depth == 4 and by[2135].prefix.endswith("├─ ") and by[2138].prefix.endswith("└─ ")
    order = [r.id for r in rows]
    assert order.index(2101) < order.index(2135) < order.index(2138) < order.index(4001)
    assert 2 not in by and 14 not in by  # kernel threads hidden


def test_filter_keeps_matches_only_in_their_own_tree_shape() -> None:
    rows = build_rows(demo_model(), ViewState(filter="train.py"))
    assert {r.id for r in rows} == {2101, 2135, 2136, 2137, 2138, 2466, 2470, 2471}
    by = {r.id: r for r in rows}
    # Ancestors that don't match are not pulled in; the workers still hang under their run.
    assert by[2101].depth == 0 and by[2135].depth == 1 and by[2470].depth == 1
    assert build_rows(demo_model(), ViewState(filter="BOB")) and all(
        r.proc.username == "bob" or "bob" in r.proc.command
        for r in build_rows(demo_model(), ViewState(filter="BOB"))
    )
    assert {r.id for r in build_rows(demo_model(), ViewState(filter="4110"))} == {4110}


def test_user_restriction() -> None:
    rows = build_rows(demo_model(), ViewState(user="bob"))
    assert rows and all(r.proc.username == "bob" for r in rows)


def test_group_and_session_rows_count_the_whole_group() -> None:
    m = demo_model()
    rows = build_rows(m, ViewState(grouping="group"))
    head = next(r for r in rows if r.key == ("g", 2101))
    assert head.size == 5 and head.members == (2101, 2135, 2136, 2137, 2138)
    assert head.gpu == int(30.5 * 1024**3) and head.rss == sum(m.snapshot[p].rss for p in head.members)
    # With a filter that shows one member, the header still speaks for the whole group.
    rows = build_rows(m, ViewState(grouping="group", filter="2136"))
    assert [r.key for r in rows] == [("g", 2101), ("p", 2136)] and rows[0].size == 5
    sess = next(r for r in build_rows(m, ViewState(grouping="session")) if r.key == ("s", 2410))
    assert sess.size == 7 and sess.stopped == 1


def test_sorts_and_reverse() -> None:
    m = demo_model()
    cpu = [r for r in build_rows(m, ViewState(sort="cpu")) if r.depth == 0]
    assert cpu[0].id == 1  # the tree: init is the only root
    flat = build_rows(m, ViewState(grouping="group", sort="cpu"))
    tops = [r for r in flat if r.depth == 0]
    assert tops[0].key == ("g", 2101)  # biggest CPU total first
    rev = [r for r in build_rows(m, ViewState(grouping="group", sort="cpu", reverse=True)) if r.depth == 0]
    assert rev[-1].key == ("g", 2101)
    gpu = [r for r in build_rows(m, ViewState(grouping="group", sort="gpu")) if r.depth == 0]
    assert gpu[0].key == ("g", 2101) and gpu[1].key == ("g", 2466)
    age = [r for r in build_rows(m, ViewState(grouping="group", sort="age")) if r.depth == 0]
    assert age[0].id == 1


def test_flags() -> None:
    rows = {r.id: r for r in build_rows(demo_model(), ViewState())}
    assert rows[2101].flags == FLAG_DUPLICATE + FLAG_GUARDED + FLAG_LOCK
    assert rows[2466].flags == FLAG_DUPLICATE
    assert rows[3120].flags == FLAG_ORPHAN_GPU
    assert rows[5200].flags == FLAG_GUARDED + FLAG_LOCK


def test_targets_and_blast_radius() -> None:
    m = demo_model()
    t = targets_for_keys([("p", 2466), ("g", 2101), ("s", 4010)], m.snapshot)
    assert (
        Target.pid(2466) in t
        and Target.group(2101) in t
        and Target.group(4100) in t
        and Target.group(4010) in t
    )
    members = demo_resolve(m.snapshot, targets_for_keys([("g", 2101)], m.snapshot))
    b = blast_radius(m, members)
    assert {x.pid for x in b.acting} == {2101, 2135, 2136, 2137, 2138}
    assert b.gpu_bytes == int(30.5 * 1024**3)
    assert b.locks == (f"{LOCKS}/train.lock",)
    assert demo_resolve(m.snapshot, [Target.pid(1)])[0].protected


def test_prune_marks() -> None:
    gone = demo_model(gone=frozenset({2466}))
    assert prune_marks({("p", 2466), ("p", 2101), ("g", 2101), ("s", 99999)}, gone) == {
        ("p", 2101),
        ("g", 2101),
    }


def test_summary_and_other_views() -> None:
    m = demo_model()
    s = summarize_model(m)
    assert (s.processes, s.duplicate_groups, s.held_locks, s.stopped, s.zombies) == (39, 1, 3, 1, 1)
    assert s.gpu_total == 160 * 1024**3
    dup = duplicate_rows(m)
    assert [r.key for r in dup if r.kind == "item"][:2] == [("inst", 2101), ("inst", 2466)]
    assert dup[2].targets == (Target.tree(2466),)
    locks = lock_rows(m)
    assert sum(1 for r in locks if r.key[0] == "stale") == 2
    gpu = gpu_rows(m)
    assert any(r.pid is None and "PID namespace" in r.cells[-1].text for r in gpu)  # NVML pid we can't see
    assert summarize_model(demo_model_without_gpu()).gpu_used is None


def test_formatting_and_fit() -> None:
    assert (
        fmt.bytes_short(0, blank_zero=True) == ""
        and fmt.bytes_short(1536) == "1.5K"
        and fmt.bytes_short(300 * 1024**3) == "300G"
    )
    assert fmt.age(59) == "59s" and fmt.age(3600 + 120) == "1h02m" and fmt.age(2 * 86400 + 3600) == "2d01h"
    assert fit("abcdef", 4) == "abc…" and fit("ab", 4, "right") == "  ab"
    assert fit("/a/b/c/train.lock", 8, clip="start") == "…in.lock"
    assert fit("日本語テキスト", 5) == "日本…"
    for width in (80, 160):
        cols = process_columns(width)
        assert sum(layout(cols, width)) + len(cols) - 1 == width


def test_describe_results_names_failures() -> None:
    m = demo_model()
    backend = DemoBackend()
    res = backend.kill([Target.pid(1), Target.pid(2466)], m.snapshot)
    done = describe("kill", res)
    assert done.severity == "warning"
    assert done.message.startswith("1 ended: 1 killed") and "pid 1 refused: pid 1 is init" in done.message
    assert describe("kill", []).severity == "warning"


def test_progress_labels() -> None:
    from procguard.core.signals import Progress

    assert progress_label(Progress("waiting", (1,), 3.24)) == "SIGTERM sent, 3.2 s left"
    assert progress_label(Progress("sigkill", (1,), 0.0)) == "SIGKILL sent"
    assert progress_label(Progress("done", (1,), 0.0)) is None


def test_cli_options(capsys: pytest.CaptureFixture[str]) -> None:
    """tui/cli.py parses with core's argument helpers: the same rules and one-line errors as `procguard`."""
    a = parse_args(["--interval", "0.5", "--filter", "x", "--grace", "0", "--no-confirm", "--user", "0"])
    assert (a.interval, a.filter, a.grace, a.no_confirm, a.user, a.all_users) == (
        0.5,
        "x",
        0.0,
        True,
        "root",
        False,
    )
    assert parse_args(["--all-users"]).all_users
    capsys.readouterr()
    for bad in (
        ["--interval", "0"],
        ["--grace", "-1"],
        ["--interval", "nan"],
        ["--user", "no-such-user-xyz"],
        ["--grace", "soon"],
        ["--interval"],
    ):
        with pytest.raises(SystemExit) as e:
            main(bad)
        assert e.value.code == 2
        err = capsys.readouterr().err
        # One line that names the option, no usage block, no traceback.
        assert err.count("\n") == 1 and err.startswith("procguard-tui: error: ") and bad[0] in err, err
    assert "must be a finite number of seconds > 0" in (main_error(["--interval", "0"], capsys))
    with pytest.raises(SystemExit) as e:
        parse_args(["--version"])
    assert e.value.code == 0
    assert "procguard-tui" in capsys.readouterr().out
    assert parse_keymap("procguard.terminate=T, procguard.kill=K") == {
        "procguard.terminate": "T",
        "procguard.kill": "K",
    }
    with pytest.raises(ValueError, match="'bad' is not binding-id=key"):  # issue 17: no longer ignored
        parse_keymap("procguard.terminate=T, procguard.kill=K,bad")


def main_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main(argv)
    return capsys.readouterr().err


def test_readme_lists_every_key_and_screenshot() -> None:
    from pathlib import Path

    from procguard.tui.app import FilterInput, ProcguardApp
    from procguard.tui.screens.confirm import ConfirmScreen
    from procguard.tui.screens.details import DetailsScreen
    from procguard.tui.screens.help import HelpScreen
    from procguard.tui.screenshots import SHOTS
    from procguard.tui.widgets.table import KeyedTable

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## procguard-tui\n", 1)[1].split("\n## ", 1)[0]
    ids = [
        b.id
        for cls in (ProcguardApp, FilterInput, ConfirmScreen, DetailsScreen, HelpScreen, KeyedTable)
        for b in cls.BINDINGS
    ]  # type: ignore[union-attr]
    assert all(ids)
    # `<id>.why` twins say why a key did nothing where it was pressed; they follow their key when it is
    # remapped, so the README names them once as a rule, not each.
    missing = [i for i in ids if f"`{i}`" not in section and not i.endswith(".why")]
    assert "`<id>.why`" in section
    assert not missing, f"README's procguard-tui section lacks binding ids {missing}"
    for flag in (
        "--interval",
        "--filter",
        "--grace",
        "--user",
        "--no-confirm",
        "--version",
        "PROCGUARD_TUI_KEYMAP",
    ):
        assert flag in section, flag
    for shot in SHOTS:
        assert f"(screenshots/{shot.name}.svg)" in section, shot.name


def test_ray_options_need_ray_and_plain_use_never_loads_it() -> None:
    """--node without --ray and --demo with --ray: one line, exit 2, before anything connects. Importing the
    app, parsing options and building the app (the non-cluster path) never imports ray."""
    import subprocess
    import sys

    code = (
        "import sys, io, contextlib\n"
        "from procguard.tui.app import ProcguardApp, Options\n"
        "from procguard.tui.cli import parse_args, main\n"
        "parse_args(['--ray', 'auto', '--node', 'head'])\n"
        "app = ProcguardApp(Options())\n"
        "assert not app.cluster_mode and app.check_action('next_node', ()) is False\n"
        "assert 'procguard.node' not in [b for _k, _d, b in app.key_table()]\n"
        "for argv in (['--node', 'head'], ['--demo', '--ray', 'auto']):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 2, e.code\n"
        "    print(err.getvalue(), end='')\n"
        "print('ray loaded' if 'ray' in sys.modules else 'no ray')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines == [
        "procguard-tui: error: --node needs --ray",
        "procguard-tui: error: --demo and --ray exclude each other",
        "no ray",
    ], out.stdout


def test_summary_names_the_cluster_node() -> None:
    """Cluster mode: the node every row lives on comes first in the summary line (compact when narrow). The
    ray backend module itself imports no ray (only its backend, when constructed, does)."""
    import sys

    import procguard.tui.backends.ray  # noqa: F401
    from procguard.tui.backends import NodeView
    from procguard.tui.widgets.summary import summary_markup

    had_ray = "ray" in sys.modules
    view = NodeView("c4744161" + "0" * 48, "10.0.0.7", False, 2, 3)
    assert (view.label, view.compact) == ("c4744161 10.0.0.7 · 2 of 3", "c4744161 2/3")
    assert NodeView("ab" * 28, "10.0.0.1", True, 1, 3).label == "abababab 10.0.0.1 (head) · 1 of 3"
    assert NodeView("ab" * 28, "?", False, 0, 2).label == "abababab ? · gone (2 left)"
    model = demo_model()
    assert "node" not in summary_markup(model, 120).plain
    wide = summary_markup(model, 120, view.label, view.compact)  # Content: the label is plain text in it
    assert wide.markup.startswith(
        "[$text-muted]node[/$text-muted] [b $text-accent]c4744161 10.0.0.7 · 2 of 3[/b $text-accent]"
    ), wide.markup
    assert "c4744161 2/3" in summary_markup(model, 80, view.label, view.compact).plain
    assert had_ray or "ray" not in sys.modules


def test_process_text_is_plain_and_safe_on_screen() -> None:
    """tui.text: a value is made safe and never parsed as markup (a `[` or `$` in it is text); our template's
    markup still styles; table cells go through the same rule where they become segments."""
    from procguard.tui.rows import Cell, Column
    from procguard.tui.text import fill, plain
    from procguard.tui.widgets.table import SimpleTable

    assert plain("a\x1b[2Jb\n") == "a\\x1b[2Jb\\n"
    c = fill("[b]$cmd[/] by $user", cmd="[red]x[/] $user \x1b]0;t\x07", user="u\u202e")
    assert c.plain == "[red]x[/] $user \\x1b]0;t\\x07 by u\\u202e"
    assert [(s.start, s.end, s.style) for s in c.spans] == [(0, len("[red]x[/] $user \\x1b]0;t\\x07"), "b")]

    class Row(NamedTuple):
        key: tuple[str, int]
        cells: tuple[Cell, ...]
        kind: str = "item"

    table = SimpleTable((Column("CMD", 0),))
    strip = table._render_row(Row(("r", 1), (Cell("ok \x1b[2J \u202e"),)), 20, Style(), False)
    assert "".join(seg.text for seg in strip).rstrip() == "ok \\x1b[2J \\u202e"
