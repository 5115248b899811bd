"""procguard-tui's config file (tui/config.py), its keymap checks (PROCGUARD_TUI_KEYMAP too) and how the command
line turns both into the app's options: one-line errors naming the file, the line and the key (exit 2), the
defaults written commented and never over an existing file, and settings that reach the app and core's
duplicate rules (real processes)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from procguard.core.launchers import LAUNCHERS_VAR, NEVER_DUPLICATE_VAR
from procguard.tui import cli
from procguard.tui.app import KEYMAP_ENV, ProcguardApp, binding_ids, parse_keymap
from procguard.tui.backends.demo import DemoBackend
from procguard.tui.config import COLUMNS, Config, ConfigError, default_text, load, write_default
from tests.conftest import NOBODY_UID, ProcStarter, needs_root

SLEEPER = """
import time
print("ready", flush=True)
while True:
    time.sleep(0.5)
"""


@pytest.fixture(autouse=True)
def _no_user_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every test here reads only the files it writes: the default config folder is a fresh one, and no keymap
    or duplicate setting comes from the environment."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for var in (KEYMAP_ENV, LAUNCHERS_VAR, NEVER_DUPLICATE_VAR):
        monkeypatch.delenv(var, raising=False)


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o644)
    return path


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("procguard-tui: error: "), err
    return err.strip()


# ---------------------------------------------------------------------------------------------- reading


def test_every_setting_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
# a comment
[tui]
interval = 0.5
grace = 2
view = "gpu"
sort = "rss"
reverse = true
grouping = "session"
columns = ["pid", "cpu", "command"]
confirm = false

[duplicates]
launchers = ["mylaunch", "run_*"]
never_duplicate = "jupyter-*, /opt/tools/*.py"

[keymap]
"procguard.terminate" = "T"
"procguard.kill" = "K,ctrl+k"
""",
    )
    c = load(path)
    assert (c.interval, c.grace, c.view, c.sort, c.reverse, c.grouping, c.confirm) == (
        0.5,
        2.0,
        "gpu",
        "rss",
        True,
        "session",
        False,
    )
    assert c.columns == ("pid", "cpu", "command") and c.column_titles == {"PID", "CPU%", "COMMAND"}
    assert c.launchers == ("mylaunch", "run_*") and c.never_duplicate == ("jupyter-*", "/opt/tools/*.py")
    assert c.keymap == {"procguard.terminate": "T", "procguard.kill": "K,ctrl+k"}
    assert c.path == path


def test_no_file_at_the_default_place_is_the_defaults_but_a_missing_config_option_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load() == Config()
    err = one_line_error(["--config", str(tmp_path / "nope.toml")], capsys)
    assert err == f"procguard-tui: error: {tmp_path / 'nope.toml'}: no such file"


ERRORS = [
    ("[tui]\ngrce = 1\n", 2, "tui.grce: unknown key (known in [tui]: interval, grace, view"),
    ("[tui]\ninterval = 1\ninterval2 = 0\n", 3, "tui.interval2: unknown key"),
    ("[tui]\n\ninterval = 0\n", 3, "tui.interval: must be a finite number of seconds > 0, not 0"),
    ('[tui]\ngrace = "soon"\n', 2, "tui.grace: must be a finite number of seconds >= 0, not 'soon'"),
    ("[tui]\ngrace = -1\n", 2, "tui.grace: must be a finite number of seconds >= 0, not -1"),
    ("[tui]\ninterval = nan\n", 2, "tui.interval: must be a finite number of seconds > 0, not nan"),
    (
        '[tui]\nview = "top"\n',
        2,
        "tui.view: must be one of 'processes', 'duplicates', 'locks', 'gpu', not 'top'",
    ),
    ('[tui]\nsort = "mem"\n', 2, "tui.sort: must be one of 'pid', 'age', 'cpu', 'rss', 'gpu', not 'mem'"),
    ("[tui]\ngrouping = 3\n", 2, "tui.grouping: must be one of 'parent', 'group', 'session'"),
    ('[tui]\nreverse = "yes"\n', 2, "tui.reverse: must be true or false, not 'yes'"),
    ("[tui]\nconfirm = 1\n", 2, "tui.confirm: must be true or false, not 1"),
    ('[tui]\ncolumns = ["pid", "colour"]\n', 2, "tui.columns: 'colour' is not a column (one of pid, node"),
    ("[tui]\ncolumns = []\n", 2, "tui.columns: must name at least one column"),
    ('[tui]\ncolumns = "pid"\n', 2, "tui.columns: must be a list of column names, not 'pid'"),
    ('[tui]\ncolumns = ["pid", "pid"]\n', 2, "tui.columns: names a column twice"),
    ("[colours]\nx = 1\n", 1, "[colours]: unknown table (known: [tui], [duplicates], [keymap])"),
    ("interval = 1\n", 1, "interval: unknown key outside the tables (settings go in [tui], [duplicates]"),
    (
        '[duplicates]\nlaunchers = ["ok", "a b"]\n',
        2,
        "duplicates.launchers: 'a b' is not a valid name or glob",
    ),
    ('[duplicates]\nnever_duplicate = ["x["]\n', 2, "duplicates.never_duplicate: 'x[' is not a valid glob"),
    ("[duplicates]\nlaunchers = 5\n", 2, "duplicates.launchers: must be a list of names or globs, not 5"),
    (
        '[keymap]\n"procguard.nope" = "x"\n',
        2,
        "keymap.procguard.nope: no binding has the id 'procguard.nope'",
    ),
    (
        "[keymap]\n'procguard.kill' = \"ctrl+nokey\"\n",
        2,
        "keymap.procguard.kill: 'ctrl+nokey' is not a key name",
    ),
    (
        '[keymap]\n"procguard.kill" = "hyperctrl+k"\n',
        2,
        "keymap.procguard.kill: 'hyperctrl' in 'hyperctrl+k' is not a modifier (ctrl, shift, alt, meta, super, hyper)",
    ),
    (
        '[keymap]\n"procguard.kill" = "t"\n',
        2,
        "keymap.procguard.kill: key 't' would do both procguard.terminate and procguard.kill",
    ),
    ('[keymap]\n"procguard.kill" = 3\n', 2, "keymap.procguard.kill: must be a key name (a string), not 3"),
    ("[tui]\ninterval = \n", 2, "not valid TOML: Invalid value"),
    ("[tui\n", 1, "not valid TOML"),
]


@pytest.mark.parametrize(("text", "line", "message"), ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_a_bad_file_is_one_line_naming_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: int, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value).startswith(f"{path}:{line}: {message}"), str(e.value)
    assert "\n" not in str(e.value)
    err = one_line_error(["--config", str(path)], capsys)
    assert err == f"procguard-tui: error: {e.value}"


def test_a_value_quoting_control_characters_stays_one_safe_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[tui]\nview = "\\u001b]0;pwned\\u0007"\n')
    err = one_line_error(["--config", str(path)], capsys)
    assert "\x1b" not in err and "\\x1b]0;pwned" in err and f"{path}:2: tui.view" in err


def test_a_file_others_may_write_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[tui]\ngrace = 1\n")
    path.chmod(0o664)
    err = one_line_error(["--config", str(path)], capsys)
    assert err == f"procguard-tui: error: {path}: writable by other users (mode 664): refusing it"
    path.chmod(0o600)
    assert load(path).grace == 1.0
    folder = tmp_path / "sub"
    folder.mkdir()
    err = one_line_error(["--config", str(folder)], capsys)
    assert err == f"procguard-tui: error: {folder}: not a regular file"


@needs_root
def test_a_file_of_another_user_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[duplicates]\nnever_duplicate = ["*"]\n')
    os.chown(path, NOBODY_UID, NOBODY_UID)
    err = one_line_error(["--config", str(path)], capsys)
    assert err == f"procguard-tui: error: {path}: owned by uid {NOBODY_UID}, not by you: refusing it"


# ---------------------------------------------------------------------------------------------- writing


def test_write_config_writes_the_defaults_commented_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new" / "config.toml"
    with pytest.raises(SystemExit) as e:
        cli.main(["--write-config", "--config", str(path)])
    assert e.value.code == 0 and capsys.readouterr().out == f"procguard-tui: wrote {path}\n"
    text = path.read_text()
    assert text == default_text()
    assert load(path) == Config(path=path, columns=tuple(COLUMNS))  # the defaults, every column listed
    for key in (
        "interval",
        "grace",
        "view",
        "sort",
        "reverse",
        "grouping",
        "columns",
        "confirm",
        "launchers",
        "never_duplicate",
    ):
        before = text.split(f"\n{key} = ", 1)[0].rsplit("\n", 1)[-1]
        assert before.startswith("#") or key == "reverse", key  # each setting says what it does
    for bid, key in binding_ids().items():
        assert f'# "{bid}" = "{key}"' in text, bid
    assert not stat.S_IMODE(path.stat().st_mode) & 0o022
    text_before = path.read_text()
    path.write_text(text_before + "# mine\n")
    err = one_line_error(["--write-config", "--config", str(path)], capsys)
    assert err == f"procguard-tui: error: {path}: exists already: not overwritten (remove it first)"
    assert path.read_text().endswith("# mine\n")


def test_write_config_goes_to_the_default_place_and_never_through_a_symlink(tmp_path: Path) -> None:
    path = write_default()
    assert path == tmp_path / "xdg" / "procguard" / "config.toml" and load() == load(path)
    target = tmp_path / "target"
    target.write_text("precious\n")
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="exists already"):
        write_default(link)
    dangling = tmp_path / "dangling.toml"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="exists already"):
        write_default(dangling)
    assert target.read_text() == "precious\n" and not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------------------------------------- keymaps


@pytest.mark.parametrize(
    ("keymap", "message"),
    [
        ("procguard.terminate", "PROCGUARD_TUI_KEYMAP: 'procguard.terminate' is not binding-id=key"),
        ("procguard.terminate=T,=x", "PROCGUARD_TUI_KEYMAP: '=x' is not binding-id=key"),
        ("procguard.terminate=", "PROCGUARD_TUI_KEYMAP: 'procguard.terminate=' is not binding-id=key"),
        (
            "procguard.terminat=T",
            "PROCGUARD_TUI_KEYMAP: procguard.terminat=T: no binding has the id 'procguard.terminat'",
        ),
        ("procguard.kill=ctrl+", "PROCGUARD_TUI_KEYMAP: procguard.kill=ctrl+: 'ctrl+' is not a key name"),
        (
            "procguard.kill=page_down",
            "PROCGUARD_TUI_KEYMAP: procguard.kill=page_down: 'page_down' is not a key name",
        ),
        (
            "procguard.help=q",
            "PROCGUARD_TUI_KEYMAP: procguard.help=q: key 'q' would do both procguard.help and procguard.quit",
        ),
    ],
)
def test_a_bad_keymap_entry_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], keymap: str, message: str
) -> None:
    monkeypatch.setenv(KEYMAP_ENV, keymap)
    assert one_line_error([], capsys).startswith(f"procguard-tui: error: {message}")


def test_good_keymaps_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_keymap(" procguard.kill=K , procguard.fold=f9,procguard.help=question_mark,") == {
        "procguard.kill": "K",
        "procguard.fold": "f9",
        "procguard.help": "question_mark",
    }
    for key in ("ctrl+shift+x", "pagedown", "space", "exclamation_mark", "full_stop", "~", "é"):
        assert parse_keymap(f"procguard.mark={key}") == {"procguard.mark": key}, key
    path = write(tmp_path, '[keymap]\n"procguard.kill" = "K"\n"procguard.pause" = "P"\n')
    monkeypatch.setenv(KEYMAP_ENV, "procguard.kill=X")
    assert cli._keymap(load(path)) == {"procguard.kill": "X", "procguard.pause": "P"}
    monkeypatch.setenv(KEYMAP_ENV, "procguard.terminate=P")  # P would be pause's and terminate's
    with pytest.raises(ValueError, match="would do both procguard.terminate and procguard.pause"):
        cli._keymap(load(path))


# ---------------------------------------------------------------------------------------------- the app


def test_command_line_options_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[tui]\ninterval = 3\ngrace = 9\nconfirm = false\nview = "locks"\n')
    config = load(path)
    o = cli.options_for(cli.parse_args(["--interval", "0.5"]), config, {})
    assert (o.interval, o.grace, o.no_confirm, o.view) == (0.5, 9.0, True, "locks")
    o = cli.options_for(cli.parse_args(["--grace", "0"]), Config(), {"procguard.kill": "K"})
    assert (o.interval, o.grace, o.no_confirm, o.view, o.keymap) == (
        1.0,
        0.0,
        False,
        "processes",
        {"procguard.kill": "K"},
    )


@pytest.mark.asyncio
async def test_the_app_starts_as_the_file_says(tmp_path: Path) -> None:
    """View, grouping, sort, columns, keymap and confirm from the file (demo scenario: nothing is signalled)."""
    path = write(
        tmp_path,
        """
[tui]
view = "duplicates"
grouping = "group"
sort = "cpu"
columns = ["pid", "cpu", "rss", "command"]
confirm = false
[keymap]
"procguard.kill" = "K"
""",
    )
    config = load(path)
    options = cli.options_for(cli.parse_args([]), config, cli._keymap(config))
    backend = DemoBackend()
    app = ProcguardApp(options, backend=backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert (
            app.view == "duplicates" and app.view_state.grouping == "group" and app.view_state.sort == "cpu"
        )
        await pilot.press("1")
        header = app.process_table.render_line(0).text
        assert header.split() == ["PID", "CPU%", "RSS", "COMMAND"], header
        first = app.process_table.render_line(1).text
        assert first.split()[0] == "2101"  # group 2101 is the biggest CPU user
        assert app.process_table.move_to_key(("p", 2466))
        await pilot.press("k")  # remapped: nothing
        await pilot.press("K")  # kill without the dialog (confirm = false)
        for _ in range(200):
            if 2466 not in backend.collect().snapshot:
                break
            await pilot.pause(0.02)
        assert 2466 not in backend.collect().snapshot
        assert app.record.actions_started == 1


def test_launchers_and_never_duplicate_patterns_reach_the_duplicate_rules(
    procs: ProcStarter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs of one script are a duplicate group for the app's live backend; with the script's name in the
    file's never_duplicate (added to core's setting), they are not."""
    from procguard.tui.backends.live import LiveBackend

    script = tmp_path / "twice.py"
    script.write_text(SLEEPER)
    runs = []
    for _ in range(2):
        p = procs.popen([sys.executable, str(script)], start_new_session=True, stdout=subprocess.PIPE)
        procs.wait_ready(p)
        runs.append(p)

    def grouped() -> bool:
        model = LiveBackend().collect()
        return any({p.pid for p in runs} <= {i.pid for i in g.instances} for g in model.duplicates)

    assert grouped()
    monkeypatch.setenv(NEVER_DUPLICATE_VAR, "someother")  # the variable's own entries stay first
    monkeypatch.setenv(LAUNCHERS_VAR, "")  # (both restored at teardown)
    path = write(tmp_path, '[duplicates]\nnever_duplicate = ["twice.py"]\nlaunchers = ["mylauncher"]\n')
    env: dict[str, str] = {NEVER_DUPLICATE_VAR: "someother"}
    load(path).apply_duplicate_settings(env)
    assert env == {NEVER_DUPLICATE_VAR: "someother,twice.py", LAUNCHERS_VAR: "mylauncher"}
    load(path).apply_duplicate_settings()
    assert (
        os.environ[NEVER_DUPLICATE_VAR] == "someother,twice.py" and os.environ[LAUNCHERS_VAR] == "mylauncher"
    )
    assert not grouped()
