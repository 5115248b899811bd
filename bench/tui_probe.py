"""Run procguard-tui with counters on Textual's drawing path, for bench/profile_tui.py (never part of a figure).

    python bench/tui_probe.py OUT.jsonl [procguard-tui arguments...]

The app is started through its `procguard-tui` console entry point (whatever module it lives in; PGBENCH_TUI_MAIN
"module:function" names another, e.g. for a copy of an older commit), after these
Textual internals are wrapped to count, per widget (class#id):
- `Widget.refresh()` calls (and how many asked for a layout);
- lines re-rendered by the widget (`StylesCache.render_line`: a line that was not in Textual's line cache), and
  how many of those came out identical to what that line showed before (redrawn though unchanged);
- messages dispatched per type and the wall time spent dispatching them;
- compositor refreshes (`Screen._compositor_refresh`: frames) and their time, layouts (`Screen._refresh_layout`);
- bytes and writes sent to the terminal (`LinuxDriver.write`).
A timeline of the first frame is kept too: seconds from the process's start (its /proc start time) to the
first terminal write, the first ModelReady-like message (any message type whose name starts with "Model"), and
the first write after it.

A daemon thread rewrites the cumulative counters to OUT as one JSON line per second (the harness SIGKILLs the
app, so nothing is written at exit). Standalone on purpose: it imports no `bench` module.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from typing import Any

COUNTS: dict[str, Counter[str]] = defaultdict(Counter)
TIMES: dict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))  # seconds
EVENTS: dict[str, float] = {}
_PREV_LINES: dict[tuple[int, int], Any] = {}
_MODEL_SEEN = False


def _since_start() -> float:
    """Seconds since this process started (kernel start time), so the timeline includes interpreter start."""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    start = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start


def _event(name: str) -> None:
    if name not in EVENTS:
        EVENTS[name] = _since_start()


def _label(widget: Any) -> str:
    wid = getattr(widget, "id", None)
    return f"{type(widget).__name__}#{wid}" if wid else type(widget).__name__


def _patch() -> None:
    from textual._styles_cache import StylesCache
    from textual.drivers.linux_driver import LinuxDriver
    from textual.message_pump import MessagePump
    from textual.screen import Screen
    from textual.widget import Widget

    refresh = Widget.refresh

    def counted_refresh(
        self: Any, *regions: Any, repaint: bool = True, layout: bool = False, recompose: bool = False
    ) -> Any:
        label = _label(self)
        COUNTS["refresh"][label] += 1
        if layout:
            COUNTS["refresh_layout"][label] += 1
        return refresh(self, *regions, repaint=repaint, layout=layout, recompose=recompose)

    Widget.refresh = counted_refresh  # type: ignore[method-assign]

    render_line = StylesCache.render_line

    def counted_render_line(self: Any, styles: Any, y: int, *args: Any, **kw: Any) -> Any:
        strip = render_line(self, styles, y, *args, **kw)
        content = args[5] if len(args) > 5 else kw.get("render_content_line")
        widget = getattr(content, "__self__", None)
        label = _label(widget) if widget is not None else "?"
        COUNTS["lines"][label] += 1
        key = (id(widget), y)
        if _PREV_LINES.get(key) == strip:
            COUNTS["lines_unchanged"][label] += 1
        _PREV_LINES[key] = strip
        return strip

    StylesCache.render_line = counted_render_line  # type: ignore[method-assign]

    dispatch = MessagePump._dispatch_message

    async def counted_dispatch(self: Any, message: Any) -> None:
        global _MODEL_SEEN
        name = type(message).__name__
        COUNTS["messages"][name] += 1
        if name.startswith("Model") and not _MODEL_SEEN:
            _MODEL_SEEN = True
            _event("first model message")
        t = time.perf_counter()
        try:
            await dispatch(self, message)
        finally:
            TIMES["messages"][name] += time.perf_counter() - t

    MessagePump._dispatch_message = counted_dispatch  # type: ignore[method-assign]

    compositor_refresh = Screen._compositor_refresh

    def timed_compositor_refresh(self: Any) -> None:
        t = time.perf_counter()
        try:
            compositor_refresh(self)
        finally:
            COUNTS["frames"][_label(self)] += 1
            TIMES["frames"][_label(self)] += time.perf_counter() - t

    Screen._compositor_refresh = timed_compositor_refresh  # type: ignore[method-assign]

    refresh_layout = Screen._refresh_layout

    def timed_refresh_layout(self: Any, *args: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return refresh_layout(self, *args, **kw)
        finally:
            COUNTS["layouts"][_label(self)] += 1
            TIMES["layouts"][_label(self)] += time.perf_counter() - t

    Screen._refresh_layout = timed_refresh_layout  # type: ignore[method-assign]

    write = LinuxDriver.write

    def counted_write(self: Any, data: str) -> None:
        _event("first write")
        if _MODEL_SEEN:
            _event("first write after a model")
        COUNTS["output"]["writes"] += 1
        COUNTS["output"]["bytes"] += len(data.encode("utf-8", "replace"))
        write(self, data)

    LinuxDriver.write = counted_write  # type: ignore[method-assign]


def _dump_loop(path: str) -> None:
    while True:
        time.sleep(1.0)
        try:
            record = {
                "time": time.time(),
                "cpu": time.process_time(),
                "counts": {k: dict(v) for k, v in list(COUNTS.items())},
                "times": {k: dict(v) for k, v in list(TIMES.items())},
                "events": dict(EVENTS),
            }
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except (RuntimeError, OSError):  # a dict changed size while copied: next second
            continue


def main() -> None:
    out = sys.argv[1]
    args = sys.argv[2:]
    _event("probe start")
    override = os.environ.get("PGBENCH_TUI_MAIN")  # "module:function", for a copy of another commit
    if override:
        import importlib

        module, _, attr = override.partition(":")
        app_main = getattr(importlib.import_module(module), attr)
    else:
        from importlib.metadata import entry_points

        (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "procguard-tui"]
        app_main = ep.load()
    _event("app imported")
    _patch()
    threading.Thread(target=_dump_loop, args=(out,), daemon=True, name="probe-dump").start()
    sys.argv = ["procguard-tui", *args]
    app_main(args)


if __name__ == "__main__":
    main()
