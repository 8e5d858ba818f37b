"""How ``build``, ``lock``, ``check-repro`` and ``fetch`` show their progress on stderr.

The builder sends events (:mod:`builder.progress`); this module draws them:

* on a terminal, :class:`TerminalProgress` redraws one status line with ``\\r`` (at most
  ten times a second): elapsed time, the step, and what it is doing -- the input being
  downloaded with bytes, total and rate, or the task announced -- and wipes the line
  when the command ends, before its result or error is printed;
* anywhere else (a CI log, a file, a pipe), :class:`LineProgress` writes plain lines,
  no ``\\r`` and no escape sequences, only for what is slow or uses the network: each
  task announced (``resolving sid package lists``, check-repro's builds), each download
  as it starts and when it ends (size, time, rate), and each step that took at least
  :attr:`LineProgress.SLOW` seconds, with its time, before the next of those lines or at the
  end.  Quick local work writes nothing, and a failed command drops the step lines held
  back, so bad input still gets its one error line and nothing else (unless the network was
  used first);
* with ``--quiet``, nothing (errors are still written).

``check-repro`` runs its builds as child processes: with ``BLINDBOX_PROGRESS=events`` in
their environment they write :class:`EventWriter` lines, which check-repro turns back into
events of its own (docs/progress.md).

Part of the command line, the only layer that prints; it may import every part, and no
other part imports it (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from builder import progress
from builder.progress import Progress

#: Environment variable that makes a command write progress events for a parent process.
EVENTS_ENV = progress.EVENTS_ENV


def human_bytes(n: float) -> str:
    """``717364`` -> ``"717.4 kB"`` (SI units, as Debian and apt print sizes)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_time(seconds: float) -> str:
    """Elapsed time as ``m:ss`` (``h:mm:ss`` from an hour on)."""
    s = int(max(0.0, seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class _Download:
    def __init__(self, started: float, done: int, total: int | None):
        self.started, self.done, self.total = started, done, total

    def describe(self, now: float) -> str:
        size = human_bytes(self.done) + (f" / {human_bytes(self.total)}" if self.total else "")
        elapsed = now - self.started
        rate = f", {human_bytes(self.done / elapsed)}/s" if elapsed > 0 and self.done else ""
        return size + rate


class TerminalProgress(Progress):
    """One status line on a terminal, redrawn in place and wiped at the end."""

    INTERVAL = 0.1   #: seconds between redraws (at most ten a second)

    def __init__(self, stream: TextIO, command: str, *, clock: Callable[[], float] = time.monotonic,
                 width: int | None = None):
        self.stream, self.command, self.clock = stream, command, clock
        self.width = width
        self.started = clock()
        self.last_draw: float | None = None
        self.shown = 0                  # length of the line on screen
        self.step_name = ""
        self.detail = ""
        self.downloads: dict[str, _Download] = {}
        self.current_download: str | None = None
        self.closed = False
        self.dirty = False               # something changed that throttling kept off the screen
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- events
    def step(self, name: str) -> None:
        self.step_name, self.detail, self.current_download = name, "", None
        self._draw()

    def task(self, text: str) -> None:
        self.detail, self.current_download = text, None
        self._draw()

    def download(self, name: str, done: int, total: int | None) -> None:
        d = self.downloads.get(name)
        if d is None:
            d = self.downloads[name] = _Download(self.clock(), done, total)
        d.done, d.total = done, total
        self.current_download = name
        self._draw()

    def downloaded(self, name: str, size: int) -> None:
        d = self.downloads.pop(name, None)
        if self.current_download == name and d is not None:
            d.done = size
            self.detail = f"{name} {d.describe(self.clock())}, done"
            self.current_download = None
        self._draw(force=True)   # a finished download is shown, however quick it was

    # -- drawing
    def line(self) -> str:
        """The status line as it stands now (not truncated)."""
        now = self.clock()
        text = f"{self.command} [{human_time(now - self.started)}]"
        if self.step_name:
            text += f" {self.step_name}"
        if self.current_download is not None:
            d = self.downloads[self.current_download]
            text += f": {self.current_download} {d.describe(now)}"
        elif self.detail:
            text += f": {self.detail}"
        return text

    def _columns(self) -> int:
        if self.width is not None:
            return self.width
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return columns or shutil.get_terminal_size().columns   # a terminal of unknown size: $COLUMNS or 80

    def _draw(self, force: bool = False) -> None:
        with self._lock:
            if self.closed:
                return
            now = self.clock()
            if not force and self.last_draw is not None and now - self.last_draw < self.INTERVAL:
                self.dirty = True           # the ticking thread draws it when the interval has passed
                return
            self.last_draw, self.dirty = now, False
            text = self.line()[:max(10, self._columns() - 1)]   # never wrap: \r only returns within one row
            try:
                self.stream.write("\r" + text + " " * max(0, self.shown - len(text)))
                self.stream.flush()
            except (OSError, ValueError):   # the terminal went away: stop drawing, let the work finish
                self.closed = True
                return
            self.shown = len(text)

    def start_ticking(self) -> None:
        """Until :meth:`close`, a daemon thread draws what throttling held back once the interval
        has passed, and redraws every second, so that the elapsed time moves during a long step
        that sends no events."""
        def ticking() -> None:
            while not self._stop.wait(self.INTERVAL):
                self.tick()
        threading.Thread(target=ticking, name="blindbox-progress", daemon=True).start()

    def tick(self) -> None:
        """Draw a change that throttling held back, or the same line a second later."""
        last = self.last_draw
        if self.dirty or last is None or self.clock() - last >= 1.0:
            self._draw()

    def close(self, ok: bool = True) -> None:
        """Wipe the status line (the command's own output follows on a clean line)."""
        self._stop.set()
        with self._lock:
            if self.shown and not self.closed:
                with contextlib.suppress(OSError, ValueError):
                    self.stream.write("\r" + " " * self.shown + "\r")
                    self.stream.flush()
            self.closed, self.shown = True, 0


class LineProgress(Progress):
    """Plain lines for logs: slow steps, tasks, downloads; nothing for quick local work."""

    SLOW = 1.0   #: a step that took at least this many seconds gets a line when it ends

    def __init__(self, stream: TextIO, command: str, *, clock: Callable[[], float] = time.monotonic):
        self.stream, self.command, self.clock = stream, command, clock
        self.started = clock()
        self.step_name: str | None = None
        self.step_started = self.started
        self.downloads: dict[str, _Download] = {}
        self.pending: list[str] = []     # slow steps' lines not written yet

    def _line(self, text: str) -> str:
        return f"{self.command}: [{human_time(self.clock() - self.started)}] {text}\n"

    def _say(self, text: str) -> None:
        self.stream.write("".join(self.pending) + self._line(text))
        self.stream.flush()
        self.pending.clear()

    def _end_step(self) -> None:
        # Held back until the next line or a successful end: bad input found late in a build
        # is still the one line on stderr.
        if self.step_name is not None:
            took = self.clock() - self.step_started
            if took >= self.SLOW:
                self.pending.append(self._line(f"{self.step_name}: done in {took:.1f} s"))
        self.step_name = None

    def step(self, name: str) -> None:
        self._end_step()
        self.step_name, self.step_started = name, self.clock()

    def task(self, text: str) -> None:
        self._say(f"{self.step_name}: {text}" if self.step_name else text)

    def download(self, name: str, done: int, total: int | None) -> None:
        if name not in self.downloads:
            self.downloads[name] = _Download(self.clock(), done, total)
            self._say(f"downloading {name}" + (f" ({human_bytes(total)})" if total else ""))
        self.downloads[name].done = done

    def downloaded(self, name: str, size: int) -> None:
        d = self.downloads.pop(name, None)
        if d is None:
            return
        took = self.clock() - d.started
        rate = f", {human_bytes(size / took)}/s" if took > 0 else ""
        self._say(f"downloaded {name}: {human_bytes(size)} in {took:.1f} s{rate}")

    def close(self, ok: bool = True) -> None:
        """End the last step and write the slow steps' lines held back; after a failure, drop them
        (the error is the line that matters)."""
        if ok:
            self._end_step()
            if self.pending:
                self.stream.write("".join(self.pending))
                self.stream.flush()
        self.pending.clear()


class EventWriter(Progress):
    """Events as lines for a parent blindbox process (check-repro's builds); see builder.progress."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def _emit(self, kind: str, *args) -> None:
        self.stream.write(progress.encode_event(kind, *args) + "\n")
        self.stream.flush()

    def step(self, name: str) -> None:
        self._emit("step", name)

    def task(self, text: str) -> None:
        self._emit("task", text)

    def download(self, name: str, done: int, total: int | None) -> None:
        self._emit("download", name, done, total)

    def downloaded(self, name: str, size: int) -> None:
        self._emit("downloaded", name, size)


def renderer(command: str, quiet: bool, stream: TextIO | None = None) -> Progress:
    """The receiver for ``command``'s progress on ``stream`` (stderr): see the module docstring."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        return progress.NULL
    if os.environ.get(EVENTS_ENV) == "events":
        return EventWriter(stream)
    label = f"blindbox {command}"
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty and os.environ.get("TERM") != "dumb":
        terminal = TerminalProgress(stream, label)
        terminal.start_ticking()
        return terminal
    return LineProgress(stream, "blindbox")


@contextlib.contextmanager
def reporting(command: str, quiet: bool) -> Iterator[Progress]:
    """Show the progress of the ``with`` block on stderr; the status line is gone when it ends."""
    r = renderer(command, quiet)
    close = getattr(r, "close", None)
    with progress.using(r):
        try:
            yield r
        except BaseException:
            if close is not None:
                close(ok=False)
            raise
        if close is not None:
            close(ok=True)
