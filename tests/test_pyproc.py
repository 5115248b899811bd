"""parse_python_cmdline: interpreter detection and CPython's option grammar."""

from __future__ import annotations

import pytest

from procguard.core.pyproc import PythonCmd, is_python_interpreter, parse_python_cmdline


@pytest.mark.parametrize(
    "argv0",
    [
        "python",
        "python3",
        "python3.11",
        "python3.11d",
        "python3.13t",
        "pythonw",
        "pypy",
        "pypy3",
        "pypy3.10",
        "/usr/bin/python3",
        "/home/u/.venv/bin/python",
        "/opt/conda/envs/x/bin/python3.10",
    ],
)
def test_interpreters_are_recognised(argv0: str) -> None:
    assert is_python_interpreter(argv0)
    assert parse_python_cmdline([argv0, "s.py"]) == PythonCmd(argv0, "file", "s.py", (), ())


@pytest.mark.parametrize(
    "argv",
    [
        ["bash", "-c", "python x.py"],
        ["/usr/bin/python3-config"],
        ["pythonista", "x.py"],
        ["ipython"],
        ["/usr/lib/systemd/systemd", "--user"],
        ["perl", "x.pl"],
        ["envoy", "python", "x.py"],
        [],
    ],
)
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


@pytest.mark.parametrize(
    "argv, target, args",
    [
        (["python", "-m", "pkg.mod", "x"], "pkg.mod", ("x",)),
        (["python", "-mpkg.mod", "x"], "pkg.mod", ("x",)),
        (["python", "-um", "pkg.mod"], "pkg.mod", ()),
        (["python", "-I", "-m", "http.server", "8000"], "http.server", ("8000",)),
    ],
)
def test_module(argv: list[str], target: str, args: tuple[str, ...]) -> None:
    cmd = parse_python_cmdline(argv)
    assert cmd is not None and (cmd.kind, cmd.target, cmd.args) == ("module", target, args)


@pytest.mark.parametrize(
    "argv, code, args",
    [
        (["python", "-c", "print(1)", "a", "b"], "print(1)", ("a", "b")),
        (["python", "-cprint(1)"], "print(1)", ()),
        (["python", "-Sc", "import x", "-m", "y"], "import x", ("-m", "y")),
    ],
)
def test_code(argv: list[str], code: str, args: tuple[str, ...]) -> None:
    cmd = parse_python_cmdline(argv)
    assert cmd is not None and (cmd.kind, cmd.target, cmd.args) == ("code", code, args)


def test_interactive_and_stdin() -> None:
    assert parse_python_cmdline(["python3"]) == PythonCmd("python3", "interactive", "", (), ())
    assert parse_python_cmdline(["python3", "-i", "-q"]) == PythonCmd(
        "python3", "interactive", "", (), ("-i", "-q")
    )
    assert parse_python_cmdline(["python3", "-", "a"]) == PythonCmd("python3", "interactive", "-", ("a",), ())


def test_double_dash_ends_options() -> None:
    cmd = parse_python_cmdline(["python", "-u", "--", "-odd.py", "x"])
    assert cmd == PythonCmd("python", "file", "-odd.py", ("x",), ("-u",))


def test_long_option_with_argument() -> None:
    cmd = parse_python_cmdline(["python3", "--check-hash-based-pycs", "always", "t.py"])
    assert cmd is not None and cmd.target == "t.py" and cmd.options == ("--check-hash-based-pycs always",)


@pytest.mark.parametrize(
    "argv",
    [
        ["/usr/bin/env", "python3", "t.py", "a"],
        ["env", "A=1", "B=2", "python3", "t.py", "a"],
        ["env", "-i", "-u", "HOME", "PATH=/x", "python3", "t.py", "a"],
        ["env", "--unset=HOME", "--", "python3", "t.py", "a"],
        ["/usr/bin/env", "-S", "python3 -u", "t.py", "a"],  # shebang: #!/usr/bin/env -S python3 -u
        ["/usr/bin/env", "-Spython3 -u", "t.py", "a"],
        ["env", "--split-string=python3 -u", "t.py", "a"],
    ],
)
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


# ---------------------------------------------------------------------------------------------- console scripts

PIP_WRAPPER = b"""#!/venv/bin/python3
# -*- coding: utf-8 -*-
import re
import sys
from uvicorn.main import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""

UV_WRAPPER = b"""#!/venv/bin/python3
# -*- coding: utf-8 -*-
import sys
from celery.__main__ import app
if __name__ == "__main__":
    if sys.argv[0].endswith("-script.pyw"):
        sys.argv[0] = sys.argv[0][:-11]
    sys.exit(app.start())
"""

SETUPTOOLS_WRAPPER = b"""#!/usr/bin/python3
# EASY-INSTALL-ENTRY-SCRIPT: 'tool==1.0','console_scripts','tool'
__requires__ = 'tool==1.0'
import re
import sys
from pkg_resources import load_entry_point

if __name__ == '__main__':
    sys.exit(load_entry_point('tool==1.0', 'console_scripts', 'tool')())
"""


@pytest.mark.parametrize(
    "head, entry",
    [
        (PIP_WRAPPER, "uvicorn.main:main"),
        (UV_WRAPPER, "celery.__main__:app.start"),
        (SETUPTOOLS_WRAPPER, "tool==1.0:tool"),
    ],
)
def test_console_wrappers_name_their_entry_point(head: bytes, entry: str) -> None:
    from procguard.core.pyproc import console_entry_point

    assert console_entry_point(head) == entry


@pytest.mark.parametrize(
    "head",
    [
        b"import sys\nfrom app import main\nif __name__ == '__main__':\n    sys.exit(main())\n",  # no #! line
        b"#!/usr/bin/python3\nfrom app import main\nsys.exit(main())\n",  # no __main__ guard
        b"#!/usr/bin/python3\nfrom app import run\nif __name__ == '__main__':\n    sys.exit(main())\n",  # other name
        b"#!/usr/bin/python3\nif __name__ == '__main__':\n    print('hi')\n",  # a script of its own
        PIP_WRAPPER + b"#" * 4096,  # too long to be a wrapper
    ],
)
def test_other_files_are_not_console_wrappers(head: bytes) -> None:
    from procguard.core.pyproc import console_entry_point

    assert console_entry_point(head) is None


def test_zipapp_and_shebang() -> None:
    from procguard.core.pyproc import is_zipapp, shebang_interpreter

    assert is_zipapp(b"#!/usr/bin/env python3\nPK\x03\x04rest") and is_zipapp(b"PK\x03\x04")
    assert not is_zipapp(b"#!/usr/bin/env python3\nimport sys\n") and not is_zipapp(b"")
    assert shebang_interpreter(b"#!/usr/bin/env python3 -u\nx") == ["/usr/bin/env", "python3", "-u"]
    assert shebang_interpreter(b"#! /bin/sh\n") == ["/bin/sh"] and shebang_interpreter(b"print()") is None


# ---------------------------------------------------------------------------------------------- launchers


@pytest.mark.parametrize(
    "spec_name, args, target",
    [
        (
            "TORCHRUN",
            ["--nproc-per-node", "2", "--standalone", "a.py", "--lr", "1"],
            ("file", "a.py", ("--lr", "1")),
        ),
        ("TORCHRUN", ["--nproc_per_node=4", "-m", "pkg.train", "x"], ("module", "pkg.train", ("x",))),
        ("TORCHRUN", ["--no-python", "--nnodes", "1", "./job.sh", "a"], ("exe", "./job.sh", ("a",))),
        ("TORCHRUN", ["-r", "3", "-t3", "train.py"], ("file", "train.py", ())),
        ("TORCHRUN", ["--some-new-option", "v", "t.py"], ("file", "t.py", ())),  # unknown option with a value
        ("TORCHRUN", ["--some-new-flag", "t.py"], ("file", "t.py", ())),  # unknown flag before the script
        ("TORCHRUN", ["--standalone", "--", "t.py", "--x"], ("file", "t.py", ("--x",))),
        (
            "ACCELERATE",
            ["launch", "--multi_gpu", "--mixed_precision", "fp16", "x.py", "--e", "3"],
            ("file", "x.py", ("--e", "3")),
        ),
        ("DEEPSPEED", ["--num_gpus", "2", "--module", "pkg.train"], ("module", "pkg.train", ())),
        (
            "DEEPSPEED",
            ["--force_multi", "--hostfile=h", "train.py", "--deepspeed"],
            ("file", "train.py", ("--deepspeed",)),
        ),
    ],
)
def test_launch_target(spec_name: str, args: list[str], target: tuple[str, str, tuple[str, ...]]) -> None:
    from procguard.core import launchers
    from procguard.core.pyproc import LaunchTarget, launch_target

    assert launch_target(args, getattr(launchers, spec_name)) == LaunchTarget(*target)


def test_not_a_launch() -> None:
    from procguard.core.launchers import ACCELERATE, TORCHRUN
    from procguard.core.pyproc import launch_target

    assert launch_target(["config"], ACCELERATE) is None  # accelerate's other subcommands start nothing
    assert launch_target(["--help"], TORCHRUN) is None and launch_target([], TORCHRUN) is None


def test_generic_launcher_target() -> None:
    from procguard.core.launchers import GENERIC
    from procguard.core.pyproc import LaunchTarget, launch_target

    assert launch_target(["--nodes", "2", "train.py", "a"], GENERIC) == LaunchTarget(
        "file", "train.py", ("a",)
    )
    assert launch_target(["-n", "2", "-m", "pkg.x"], GENERIC) == LaunchTarget("module", "pkg.x", ())
    assert launch_target(["--x", "--", "python3", "t.py"], GENERIC) == LaunchTarget(
        "argv", "python3", ("t.py",)
    )
    assert launch_target(["-n", "2", "python3", "-u", "t.py"], GENERIC) == LaunchTarget(
        "argv", "python3", ("-u", "t.py")
    )
    assert launch_target(["-n", "2", "job"], GENERIC, lambda w: w == "job") == LaunchTarget("exe", "job", ())
    assert launch_target(["-n", "2"], GENERIC, lambda w: False) is None
