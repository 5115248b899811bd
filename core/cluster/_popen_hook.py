"""Per-thread Popen callbacks on top of core/spawn.py's one Popen.__init__ hook (no second hook).

spawn.py keeps, per thread, a stack of recorders and calls `rec.append(popen)` on each right after a
`subprocess.Popen` starts. `record_popens(callback)` pushes a recorder whose `append` calls `callback`.

This reaches into spawn's private `_install_hook` and `_local`; the public hook proposed for spawn.py is
exactly this context manager (`spawn.on_popen(callback)`), after which this module becomes an import.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

from procguard.core import spawn

PopenCallback = Callable[["subprocess.Popen[Any]"], None]


class _Recorder:
    """Looks like spawn's `Tracked` list to the hook: the hook calls `append(popen)`."""

    __slots__ = ("callback", "popens")

    def __init__(self, callback: PopenCallback) -> None:
        self.callback = callback
        self.popens: list[subprocess.Popen[Any]] = []

    def append(self, popen: subprocess.Popen[Any]) -> None:
        self.popens.append(popen)
        self.callback(popen)


@contextlib.contextmanager
def record_popens(callback: PopenCallback) -> Iterator[list[subprocess.Popen[Any]]]:
    """Call `callback(popen)` in this thread after every Popen this thread starts inside the block.

    Yields the list of those Popen objects. An exception raised by the callback propagates out of the
    `subprocess.Popen(...)` call that triggered it (the process has been started by then).
    """
    spawn._install_hook()
    rec = _Recorder(callback)
    stack = getattr(spawn._local, "stack", None)
    if stack is None:
        stack = []
        spawn._local.stack = stack
    stack.append(rec)
    try:
        yield rec.popens
    finally:
        with contextlib.suppress(ValueError):
            stack.remove(rec)
