"""Watching a tmux pane closely: a control-mode client (`tmux -C`) and what a captured screen shows.

A control-mode client gets a `%output` line each time a pane of its session produces output, and answers
commands (send-keys, capture-pane, respawn-pane) in `%begin`/`%end` blocks on the same stream, in order. So,
without polling: send a key, wait for the pane's next output, capture the screen, and check whether it shows
the key's effect; the time of the change is the arrival of the last `%output` notification that came before the
capture's answer (tmux writes them in order, so that output is in the captured screen). A reader thread stamps
every line as it arrives (`time.perf_counter()`).

The client runs as a child of the harness, started by the Load (`load.spawn`: the run's token in its
environment, a parent-death SIGKILL), and is SIGKILLed by pid in `close()`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from bench.load import Load
from bench.tmux import TMUX, Tmux

_END = re.compile(rb"^%(end|error) \d+ (\d+) (\d+)$")
_BEGIN = re.compile(rb"^%begin \d+ (\d+) (\d+)$")


@dataclass(frozen=True)
class Reply:
    ok: bool
    lines: list[str]
    output_at: dict[str, float]  # pane id -> arrival of its last %output line before this answer began


class ControlClient:
    """One `tmux -C attach-session -t SESSION` client; `%output` of that session's panes is tracked."""

    def __init__(self, tm: Tmux, session: str, load: Load) -> None:
        self.load = load
        child_in, self._w = os.pipe()
        self._r, child_out = os.pipe()
        self.session = session
        self.log = load.tmp / f"tmux-ctl-{session}.log"  # the client's stderr, quoted if it goes away
        null = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.pid = load.spawn(
                [TMUX, "-L", tm.sock, "-f", "/dev/null", "-C", "attach-session", "-t", session],
                env=tm.env,
                stdio=(child_in, child_out, null),
            )
        finally:
            for fd in (child_in, child_out, null):
                os.close(fd)
        self._cond = threading.Condition()
        self.last_output: dict[str, float] = {}
        self.outputs: dict[str, int] = {}  # pane id -> %output lines seen
        self.ticks: dict[str, list[float]] = {}  # pane id -> outputs after a silence (see watch_ticks)
        self.busy: set[str] = set()  # panes whose output is expected (a key in flight): not ticks
        self.silence = 0.25
        self._replies: queue.Queue[Reply] = queue.Queue()
        self._send_lock = threading.Lock()
        self.exit_line = ""  # tmux's "%exit [reason]" when it ends the client
        self.reader_error = ""
        self._closed = False
        self._reader = threading.Thread(target=self._read, name=f"tmux-ctl-{session}", daemon=True)
        self._reader.start()
        # Until it is attached: tmux 3.3a's server segfaults when a window size is recalculated (new-session
        # -x/-y, an attach, a respawn) while a client is connected without a session (recalculate_size_skip_client,
        # tmux#2982): a client still attaching, or any command-line client. So: every session first, then the
        # control clients one by one, then only commands through them until the end.
        self.command("display-message", "-p", "#{session_name}")

    # ------------------------------------------------------------------------------------------ stream

    def _read(self) -> None:
        try:
            self._read_stream()
        except BaseException as e:  # noqa: BLE001 - said in the next command's error
            self.reader_error = f"{type(e).__name__}: {e}"
            raise
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _read_stream(self) -> None:
        with os.fdopen(self._r, "rb", buffering=0) as f:
            block: list[bytes] | None = None
            mine = False
            before: dict[str, float] = {}
            for raw in _lines(f):
                now = time.perf_counter()
                if block is not None:
                    m = _END.match(raw)
                    if m:
                        if mine:
                            text = [b.decode("utf-8", "replace") for b in block]
                            self._replies.put(Reply(m.group(1) == b"end", text, before))
                        block = None
                    else:
                        block.append(raw)
                    continue
                if raw.startswith(b"%exit"):
                    self.exit_line = raw.decode("utf-8", "replace")
                    continue
                if raw.startswith(b"%output "):
                    self._on_output(raw.split(b" ", 2)[1].decode(), now)
                    continue
                m = _BEGIN.match(raw)
                if m:
                    block, mine = [], m.group(2) == b"1"  # flags 1: a command of this client
                    with self._cond:
                        before = dict(self.last_output)

    def _on_output(self, pane: str, now: float) -> None:
        with self._cond:
            last = self.last_output.get(pane)
            if pane not in self.busy and (last is None or now - last >= self.silence):
                self.ticks.setdefault(pane, []).append(now)
            self.last_output[pane] = now
            self.outputs[pane] = self.outputs.get(pane, 0) + 1
            self._cond.notify_all()

    # ------------------------------------------------------------------------------------------ commands

    def command(self, *words: str, timeout: float = 15.0) -> Reply:
        """Run one tmux command (words are quoted for tmux's parser); its answer."""
        line = " ".join(_quote(w) for w in words) + "\n"
        with self._send_lock:
            try:
                os.write(self._w, line.encode())
            except BrokenPipeError:
                raise RuntimeError(
                    f"the tmux control client of session {self.session} has exited: {self._why()}"
                ) from None
            try:
                reply = self._replies.get(timeout=timeout)
            except queue.Empty:
                state = "reading" if self._reader.is_alive() else f"reader ended {self.reader_error}"
                raise RuntimeError(
                    f"tmux control client ({self.session}): no answer to {words[0]} in "
                    f"{timeout:g} s ({state}; {self._why()})"
                ) from None
        if not reply.ok:
            raise RuntimeError(f"tmux {words[0]}: {' '.join(reply.lines).strip()}")
        return reply

    def _why(self) -> str:
        try:
            text = self.log.read_text(errors="replace").strip()
        except OSError:
            text = ""
        return (
            " ".join(filter(None, [self.exit_line, text[-300:]])) or "(no %exit line, nothing on its stderr)"
        )

    def send_key(self, target: str, key: str) -> float:
        """Send one key; returns the time just before the command was written."""
        t = time.perf_counter()
        self.command("send-keys", "-t", target, key)
        return t

    def capture(self, target: str, pane: str, escapes: bool = False) -> tuple[list[str], float | None]:
        """The pane's screen (with SGR escapes if asked) and the arrival of the last output it includes."""
        reply = self.command("capture-pane", "-p", *(["-e"] if escapes else []), "-t", target)
        return reply.lines, reply.output_at.get(pane)

    def wait_output(self, pane: str, seen: int, timeout: float) -> int:
        """Until the pane has produced more than `seen` outputs (or the timeout); the count now."""
        deadline = time.perf_counter() + timeout
        with self._cond:
            while self.outputs.get(pane, 0) <= seen and not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self.outputs.get(pane, 0)

    def output_count(self, pane: str) -> int:
        with self._cond:
            return self.outputs.get(pane, 0)

    def quiet_for(self, pane: str) -> float:
        """Seconds since the pane's last output (inf if none yet)."""
        with self._cond:
            last = self.last_output.get(pane)
        return float("inf") if last is None else time.perf_counter() - last

    def settle(self, pane: str, quiet: float = 0.06, timeout: float = 3.0) -> None:
        """Until the pane has been silent for `quiet` seconds (a frame is complete)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            q = self.quiet_for(pane)
            if q >= quiet:
                return
            time.sleep(max(0.002, quiet - q))

    def set_busy(self, pane: str, busy: bool) -> None:
        with self._cond:
            (self.busy.add if busy else self.busy.discard)(pane)

    def tick_times(self, pane: str) -> list[float]:
        with self._cond:
            return list(self.ticks.get(pane, ()))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._w)  # the client exits when its stdin closes; SIGKILL in any case
        self.load.stop([self.pid])
        self._reader.join(timeout=5)


def _lines(f: BinaryIO) -> Iterator[bytes]:
    """Lines of a raw pipe, without the newline, as they arrive."""
    buf = b""
    while True:
        chunk = f.read(65536)
        if not chunk:
            return
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from lines


def _quote(word: str) -> str:
    if word and re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", word):  # "#" starts a comment in tmux
        return word
    return "'" + word.replace("'", "'\\''") + "'"


# ---------------------------------------------------------------------------------------------- screens

_SGR = re.compile(r"\x1b\[([0-9;:]*)m")
_OTHER_ESC = re.compile(r"\x1b(\[[0-9;:?]*[A-Za-z]|\][^\x07\x1b]*(\x07|\x1b\\)|.)")


def backgrounds(raw: str) -> tuple[str, list[str]]:
    """A captured line (with SGR escapes): its plain text and the background of each character."""
    text: list[str] = []
    bgs: list[str] = []
    bg, reverse, fg = "", False, ""
    pos = 0
    for m in _SGR.finditer(raw):
        chunk = _OTHER_ESC.sub("", raw[pos : m.start()])
        eff = f"rev:{fg}" if reverse else bg
        text.append(chunk)
        bgs.extend([eff] * len(chunk))
        bg, reverse, fg = _apply_sgr(m.group(1), bg, reverse, fg)
        pos = m.end()
    chunk = _OTHER_ESC.sub("", raw[pos:])
    text.append(chunk)
    bgs.extend([f"rev:{fg}" if reverse else bg] * len(chunk))
    return "".join(text), bgs


def _apply_sgr(params: str, bg: str, reverse: bool, fg: str) -> tuple[str, bool, str]:
    ps = [p for p in re.split(r"[;:]", params)] if params else ["0"]
    i = 0
    while i < len(ps):
        p = ps[i] or "0"
        if p == "0":
            bg, reverse, fg = "", False, ""
        elif p == "7":
            reverse = True
        elif p == "27":
            reverse = False
        elif p in ("38", "48"):
            n = 3 if i + 1 < len(ps) and ps[i + 1] == "5" else 5
            value = ";".join(ps[i + 1 : i + n])
            if p == "48":
                bg = value
            else:
                fg = value
            i += n
            continue
        elif p == "49":
            bg = ""
        elif p == "39":
            fg = ""
        elif p.isdigit() and (40 <= int(p) <= 47 or 100 <= int(p) <= 107):
            bg = p
        elif p.isdigit() and (30 <= int(p) <= 37 or 90 <= int(p) <= 97):
            fg = p
        i += 1
    return bg, reverse, fg


_PID_HEADER = re.compile(r"\bPID\b")
_ROW = re.compile(r"^\s*\S?\s*\d+\s+\S")


def header_index(plain: Sequence[str]) -> int | None:
    """The table's header line: the first line naming a PID column."""
    for i, line in enumerate(plain):
        if _PID_HEADER.search(line):
            return i
    return None


def table_rows(plain: Sequence[str]) -> int:
    """Process rows under the header: lines that start with a pid (after an optional one-cell mark column)."""
    h = header_index(plain)
    if h is None:
        return 0
    return sum(1 for line in plain[h + 1 :] if _ROW.match(line))


def screen_text(lines: Sequence[str]) -> str:
    return "\n".join(lines)
