"""parse_python_cmdline: interpreter detection and CPython's option grammar."""

from __future__ import annotations

import pytest

from procguard.core.pyproc import PythonCmd, is_python_interpreter, parse_python_cmdline


@pytest.mark.parametrize("argv0", [
    "python", "python3", "python3.11", "python3.11d", "python3.13t", "pythonw", "pypy", "pypy3", "pypy3.10",
    "/usr/bin/python3", "/home/u/.venv/bin/python", "/opt/conda/envs/x/bin/python3.10",
])
def test_interpreters_are_recognised(argv0: str) -> None:
    assert is_python_interpreter(argv0)
    assert parse_python_cmdline([argv0, "s.py"]) == PythonCmd(argv0, "file", "s.py", (), ())


@pytest.mark.parametrize("argv", [
    ["bash", "-c", "python x.py"], ["/usr/bin/python3-config"], ["pythonista", "x.py"], ["ipython"],
    ["/usr/lib/systemd/systemd", "--user"], ["perl", "x.pl"], ["envoy", "python", "x.py"], [],
])
def test_non_python_is_none(argv: list[str]) -> None:
    assert parse_python_cmdline(argv) is None


def test_script_and_args() -> None:
    cmd = parse_python_cmdline(["python3", "train.py", "--lr", "1e-3", "-u"])
    assert cmd == PythonCmd("python3", "file", "train.py", ("--lr", "1e-3", "-u"), ())


def test_options_do_not_hide_the_script() -> None:
    cmd = parse_python_cmdline(["python3", "-u", "-O", "-X", "dev", "-W", "ignore", "-B", "t.py", "a"])
    assert cmd is not None
    assert (cmd.kind, cmd.target, cmd.args) == ("file", "t.py", ("a",))
    assert cmd.options == ("-u", "-O", "-X dev", "-W ignore", "-B")


def test_combined_and_attached_options() -> None:
    cmd = parse_python_cmdline(["python", "-uBOO", "-Wignore", "-Xfrozen_modules=off", "-bb", "t.py"])
    assert cmd is not None
    assert cmd.target == "t.py"
    assert cmd.options == ("-u", "-B", "-O", "-O", "-W ignore", "-X frozen_modules=off", "-b", "-b")


def test_option_with_argument_inside_a_combination() -> None:
    # -uW takes the next argv element as its argument, like CPython's getopt.
    cmd = parse_python_cmdline(["python", "-uW", "error", "t.py"])
    assert cmd is not None and cmd.target == "t.py" and cmd.options == ("-u", "-W error")


@pytest.mark.parametrize("argv, target, args", [
    (["python", "-m", "pkg.mod", "x"], "pkg.mod", ("x",)),
    (["python", "-mpkg.mod", "x"], "pkg.mod", ("x",)),
    (["python", "-um", "pkg.mod"], "pkg.mod", ()),
    (["python", "-I", "-m", "http.server", "8000"], "http.server", ("8000",)),
])
def test_module(argv: list[str], target: str, args: tuple[str, ...]) -> None:
    cmd = parse_python_cmdline(argv)
    assert cmd is not None and (cmd.kind, cmd.target, cmd.args) == ("module", target, args)


@pytest.mark.parametrize("argv, code, args", [
    (["python", "-c", "print(1)", "a", "b"], "print(1)", ("a", "b")),
    (["python", "-cprint(1)"], "print(1)", ()),
    (["python", "-Sc", "import x", "-m", "y"], "import x", ("-m", "y")),
])
def test_code(argv: list[str], code: str, args: tuple[str, ...]) -> None:
    cmd = parse_python_cmdline(argv)
    assert cmd is not None and (cmd.kind, cmd.target, cmd.args) == ("code", code, args)


def test_interactive_and_stdin() -> None:
    assert parse_python_cmdline(["python3"]) == PythonCmd("python3", "interactive", "", (), ())
    assert parse_python_cmdline(["python3", "-i", "-q"]) == PythonCmd("python3", "interactive", "", (),
                                                                       ("-i", "-q"))
    assert parse_python_cmdline(["python3", "-", "a"]) == PythonCmd("python3", "interactive", "-", ("a",), ())


def test_double_dash_ends_options() -> None:
    cmd = parse_python_cmdline(["python", "-u", "--", "-odd.py", "x"])
    assert cmd == PythonCmd("python", "file", "-odd.py", ("x",), ("-u",))


def test_long_option_with_argument() -> None:
    cmd = parse_python_cmdline(["python3", "--check-hash-based-pycs", "always", "t.py"])
    assert cmd is not None and cmd.target == "t.py" and cmd.options == ("--check-hash-based-pycs always",)


@pytest.mark.parametrize("argv", [
    ["/usr/bin/env", "python3", "t.py", "a"],
    ["env", "A=1", "B=2", "python3", "t.py", "a"],
    ["env", "-i", "-u", "HOME", "PATH=/x", "python3", "t.py", "a"],
    ["env", "--unset=HOME", "--", "python3", "t.py", "a"],
    ["/usr/bin/env", "-S", "python3 -u", "t.py", "a"],  # shebang: #!/usr/bin/env -S python3 -u
    ["/usr/bin/env", "-Spython3 -u", "t.py", "a"],
    ["env", "--split-string=python3 -u", "t.py", "a"],
])
def test_through_env(argv: list[str]) -> None:
    cmd = parse_python_cmdline(argv)
    assert cmd is not None
    assert (cmd.interpreter, cmd.kind, cmd.target, cmd.args) == ("python3", "file", "t.py", ("a",))


def test_env_running_something_else() -> None:
    assert parse_python_cmdline(["env", "A=1", "bash", "x.sh"]) is None
    assert parse_python_cmdline(["env"]) is None


def test_custom_argv0_with_python_exe() -> None:
    # `exec -a trainer python t.py`: only /proc/PID/exe says it is Python.
    assert parse_python_cmdline(["trainer", "t.py"]) is None
    cmd = parse_python_cmdline(["trainer", "t.py"], exe="/usr/bin/python3.11 (deleted)")
    assert cmd is not None and (cmd.kind, cmd.target) == ("file", "t.py")
    # setproctitle-style one-string titles are not parsed as arguments
    assert parse_python_cmdline(["gunicorn: worker [app]"], exe="/usr/bin/python3") is None


def test_missing_option_argument_does_not_crash() -> None:
    assert parse_python_cmdline(["python", "-W"]) == PythonCmd("python", "interactive", "", (), ("-W ",))
    assert parse_python_cmdline(["python", "-m"]) == PythonCmd("python", "module", "", (), ())
