"""Progress events (builder.progress) and their renderers (blindbox.cli.progress), with a fake clock.

- the terminal renderer redraws one line with \\r at most ten times a second, shows elapsed
  time, step, bytes, total and rate in human units, and wipes the line at the end;
- the line renderer writes plain lines (no \\r, no escape sequences) only for tasks,
  downloads and slow steps, and nothing more after a failure;
- a real HTTP download (a local http.server) reports its bytes and total;
- event lines of a child process are forwarded with the child's step names prefixed, and
  check-repro keeps everything else a child writes for its error message.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from blindbox.cli.progress import EventWriter, LineProgress, TerminalProgress, human_bytes, human_time, renderer
from builder import progress, repro
from builder.progress import NULL, Progress, encode_event, forward_event
from builder.sources import ContentCache, fetch_url

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class Ticking(Clock):
    """A clock that moves 0.04 s each time it is read."""

    def __call__(self) -> float:
        self.t += 0.04
        return self.t


class Recorder(Progress):
    def __init__(self):
        self.events: list[tuple] = []

    def step(self, name):
        self.events.append(("step", name))

    def task(self, text):
        self.events.append(("task", text))

    def download(self, name, done, total):
        self.events.append(("download", name, done, total))

    def downloaded(self, name, size):
        self.events.append(("downloaded", name, size))


def test_human_units():
    assert [human_bytes(n) for n in (0, 999, 1000, 77364, 717_364, 12_345_678, 3 * 10**9)] == \
        ["0 B", "999 B", "1.0 kB", "77.4 kB", "717.4 kB", "12.3 MB", "3.0 GB"]
    assert [human_time(s) for s in (0, 9.9, 61, 3599, 3661)] == ["0:00", "0:09", "1:01", "59:59", "1:01:01"]


def test_terminal_redraws_at_most_ten_times_a_second():
    clock, out = Clock(), io.StringIO()
    t = TerminalProgress(out, "blindbox build", clock=clock, width=200)
    t.step("fetch")
    for i in range(1, 101):              # 100 updates in one second of fake time
        clock.advance(0.01)
        t.download("ovmf-amdsev 2026.08+ds-2", i * 7000, 700_000)
    draws = out.getvalue().count("\r")
    assert 10 <= draws <= 11, out.getvalue()   # the first draw, then one per 0.1 s
    assert "\n" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_terminal_tick_draws_what_throttling_held_back_and_moves_the_clock():
    clock, out = Clock(), io.StringIO()
    t = TerminalProgress(out, "blindbox build", clock=clock, width=200)
    t.step("fetch")
    clock.advance(0.01)
    t.step("initrd")                                  # held back: 0.01 s after the last draw
    assert not out.getvalue().endswith("initrd")
    clock.advance(0.1)
    t.tick()
    assert out.getvalue().endswith("\rblindbox build [0:00] initrd")
    before = out.getvalue()
    clock.advance(0.5)
    t.tick()                                          # nothing new, less than a second: no redraw
    assert out.getvalue() == before
    clock.advance(0.5)
    t.tick()                                          # a long step without events: the time moves
    assert out.getvalue() == before + "\rblindbox build [0:01] initrd"


def test_terminal_line_shows_elapsed_step_bytes_total_and_rate():
    clock, out = Clock(), io.StringIO()
    t = TerminalProgress(out, "blindbox build", clock=clock, width=200)
    clock.advance(61)
    t.step("fetch")
    t.download("ovmf-amdsev 2026.08+ds-2", 0, 717_364)
    clock.advance(2.0)
    t.download("ovmf-amdsev 2026.08+ds-2", 400_000, 717_364)
    assert t.line() == "blindbox build [1:03] fetch: ovmf-amdsev 2026.08+ds-2 400.0 kB / 717.4 kB, 200.0 kB/s"
    assert out.getvalue().endswith("\r" + t.line())
    clock.advance(1.0)
    t.downloaded("ovmf-amdsev 2026.08+ds-2", 717_364)     # drawn even within 0.1 s of the last draw
    assert out.getvalue().endswith("\rblindbox build [1:04] fetch: ovmf-amdsev 2026.08+ds-2 717.4 kB / 717.4 kB, "
                                   "239.1 kB/s, done")
    clock.advance(1.0)
    t.task("resolving sid package lists")
    assert t.line() == "blindbox build [1:05] fetch: resolving sid package lists"


def test_terminal_pads_a_shorter_line_truncates_a_long_one_and_wipes_at_the_end():
    clock, out = Clock(), io.StringIO()
    t = TerminalProgress(out, "blindbox lock", clock=clock, width=40)
    t.step("pin a-very-long-input-name-that-does-not-fit-in-forty-columns")
    first = out.getvalue()
    assert first == "\r" + t.line()[:39]
    clock.advance(1)
    t.step("pin kernel")
    second = out.getvalue()[len(first):]
    assert second == "\r" + "blindbox lock [0:01] pin kernel".ljust(39)
    t.close()
    assert out.getvalue().endswith("\r" + " " * 31 + "\r")   # as wide as the line on screen
    t.step("after close")                       # nothing is drawn once closed
    assert out.getvalue().endswith("\r" + " " * 31 + "\r")


def test_terminal_unknown_total_shows_bytes_only():
    clock, out = Clock(), io.StringIO()
    t = TerminalProgress(out, "blindbox build", clock=clock, width=200)
    t.download("https://example.org/x", 0, None)
    clock.advance(0.5)
    t.download("https://example.org/x", 1_500_000, None)
    assert t.line() == "blindbox build [0:00]: https://example.org/x 1.5 MB, 3.0 MB/s"


def test_lines_for_tasks_downloads_and_slow_steps_only():
    clock, out = Clock(), io.StringIO()
    p = LineProgress(out, "blindbox", clock=clock)
    p.step("recipe")
    clock.advance(0.2)
    p.step("fetch")                                  # recipe took 0.2 s: no line
    p.task("resolving sid package lists")
    clock.advance(1.5)
    p.download("hello 2.12.3-1", 0, 77_364)
    for done in range(0, 77_364, 5000):
        p.download("hello 2.12.3-1", done, 77_364)   # progress of one download: no extra lines
    clock.advance(0.5)
    p.downloaded("hello 2.12.3-1", 77_364)
    p.step("initrd")                                 # fetch took 2.0 s: one line
    clock.advance(0.3)
    p.close()                                        # initrd took 0.3 s: no line
    assert out.getvalue() == (
        "blindbox: [0:00] fetch: resolving sid package lists\n"
        "blindbox: [0:01] downloading hello 2.12.3-1 (77.4 kB)\n"
        "blindbox: [0:02] downloaded hello 2.12.3-1: 77.4 kB in 0.5 s, 154.7 kB/s\n"
        "blindbox: [0:02] fetch: done in 2.0 s\n")


def test_slow_step_lines_wait_for_the_next_line_and_vanish_after_a_failure():
    clock, out = Clock(), io.StringIO()
    p = LineProgress(out, "blindbox", clock=clock)
    p.step("agent")
    clock.advance(3.4)
    p.step("initrd")
    assert out.getvalue() == ""                      # held back
    p.download("https://example.org/x", 0, None)     # the next line writes it first
    assert out.getvalue() == ("blindbox: [0:03] agent: done in 3.4 s\n"
                              "blindbox: [0:03] downloading https://example.org/x\n")
    p.step("rootfs")
    clock.advance(2)
    p.step("cmdline")
    p.close(ok=False)                                # bad input found in cmdline: rootfs's line is dropped
    assert out.getvalue().count("\n") == 2


def test_lines_after_a_failure_say_nothing_more():
    clock, out = Clock(), io.StringIO()
    p = LineProgress(out, "blindbox", clock=clock)
    p.step("initrd")
    clock.advance(5)
    p.close(ok=False)             # the error message is the next (and only other) line
    assert out.getvalue() == ""
    p2 = LineProgress(out, "blindbox", clock=clock)
    p2.step("initrd")
    clock.advance(5)
    p2.close()
    assert out.getvalue() == "blindbox: [0:05] initrd: done in 5.0 s\n"


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_renderer_choice(monkeypatch):
    monkeypatch.delenv("BLINDBOX_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert renderer("build", quiet=True, stream=_Tty()) is NULL
    assert type(renderer("build", quiet=False, stream=io.StringIO())) is LineProgress
    tty = renderer("build", quiet=False, stream=_Tty())
    assert type(tty) is TerminalProgress
    tty.close()                                            # stops its ticking thread
    monkeypatch.setenv("TERM", "dumb")
    assert type(renderer("build", quiet=False, stream=_Tty())) is LineProgress
    monkeypatch.setenv("BLINDBOX_PROGRESS", "events")
    assert type(renderer("build", quiet=False, stream=io.StringIO())) is EventWriter
    assert renderer("build", quiet=True, stream=io.StringIO()) is NULL


def test_events_round_trip_with_a_prefix():
    out = io.StringIO()
    w = EventWriter(out)
    w.step("initrd")
    w.task("resolving sid package lists")
    w.download("ovmf-amdsev 2026.08+ds-2 ü", 10, None)
    w.download("ovmf-amdsev 2026.08+ds-2 ü", 20, 717_364)
    w.downloaded("ovmf-amdsev 2026.08+ds-2 ü", 717_364)
    got = Recorder()
    assert all(forward_event(line, got, "build B: ") for line in out.getvalue().splitlines())
    assert got.events == [("step", "build B: initrd"), ("task", "resolving sid package lists"),
                          ("download", "ovmf-amdsev 2026.08+ds-2 ü", 10, None),
                          ("download", "ovmf-amdsev 2026.08+ds-2 ü", 20, 717_364),
                          ("downloaded", "ovmf-amdsev 2026.08+ds-2 ü", 717_364)]


@pytest.mark.parametrize("line", [
    "blindbox: error: the lock file is missing",
    "blindbox-progress: not json",
    'blindbox-progress: ["step"]',
    'blindbox-progress: ["download", "x", "10", 20]',
    'blindbox-progress: ["explode", "x"]',
    'blindbox-progress: {"step": "x"}',
])
def test_other_lines_are_not_events(line):
    got = Recorder()
    assert forward_event(line, got) is False and got.events == []


def test_using_installs_and_restores_the_receiver():
    assert progress.current() is NULL
    r = Recorder()
    with progress.using(r):
        assert progress.current() is r
        with pytest.raises(RuntimeError), progress.using(Recorder()):
            raise RuntimeError
        assert progress.current() is r
    assert progress.current() is NULL


def test_check_repro_forwards_a_child_builds_events_and_keeps_its_other_stderr(tmp_path):
    child = ("import sys\n"
             f"w = sys.stderr.write\n"
             f"w({encode_event('step', 'fetch')!r} + '\\n')\n"
             f"w({encode_event('download', 'hello 1', 0, 100)!r} + '\\n')\n"
             "w('blindbox: error: something the user must read\\n')\n"
             f"w({encode_event('downloaded', 'hello 1', 100)!r} + '\\n')\n"
             "print('{\"ok\": true}')\n"
             "sys.exit(2)\n")
    run = repro.BuildRun("B", tmp_path / "out", [sys.executable, "-c", child], {}, 0o022, None)
    got = Recorder()
    with progress.using(got):
        repro._run(run, tmp_path)
    assert got.events == [("step", "build B"), ("task", "building under varied conditions"),
                          ("step", "build B: fetch"), ("download", "hello 1", 0, 100), ("downloaded", "hello 1", 100)]
    assert (run.returncode, run.stderr, run.result) == (2, "blindbox: error: something the user must read\n",
                                                        {"ok": True})


def test_check_repro_children_write_events_even_when_nobody_listens(tmp_path):
    # A child's stderr is a pipe; without events it would write log lines, which would end up in
    # check-repro's error message.  With --quiet they are dropped.
    child = ("import os, sys\n"
             "from blindbox.cli.progress import renderer\n"
             "r = renderer('build', quiet=False)\n"
             "r.step('fetch'); r.task('resolving sid package lists')\n"
             "sys.stderr.write('blindbox: error: the real problem\\n')\n"
             "print('{\"v\": \"%s\"}' % os.environ.get('BLINDBOX_PROGRESS', ''))\n")
    run = repro.BuildRun("A", tmp_path / "out", [sys.executable, "-c", child], {"PYTHONPATH": str(ROOT)},
                         0o022, None)
    repro._run(run, tmp_path)                                  # the default receiver: NULL
    assert (run.result, run.stderr) == ({"v": "events"}, "blindbox: error: the real problem\n")


# ---------------------------------------------------------------------- a real HTTP download

class _Slow(http.server.BaseHTTPRequestHandler):
    body = bytes(range(256)) * 4096             # 1 MiB, known size
    chunks = 8

    def do_GET(self):  # noqa: N802 - the http.server interface
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        step = len(self.body) // self.chunks
        for i in range(self.chunks):
            self.wfile.write(self.body[i * step:(i + 1) * step])
            self.wfile.flush()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/input.bin"
    finally:
        srv.shutdown()
        srv.server_close()


def test_url_download_reports_bytes_and_total(tmp_path: Path):
    body = _Slow.body
    got = Recorder()
    with _server() as url, progress.using(got):
        path = fetch_url(url, hashlib.sha256(body).hexdigest(), cache=ContentCache(tmp_path / "cache"))
    assert path.read_bytes() == body
    downloads = [e for e in got.events if e[0] == "download"]
    assert downloads[0] == ("download", url, 0, len(body)) and downloads[-1] == ("download", url, len(body), len(body))
    assert len(downloads) >= 3 and [e[2] for e in downloads] == sorted(e[2] for e in downloads)
    assert got.events[-1] == ("downloaded", url, len(body))
    again = Recorder()
    with progress.using(again):                    # a cache hit downloads nothing
        fetch_url(url, hashlib.sha256(body).hexdigest(), cache=ContentCache(tmp_path / "cache"))
    assert again.events == []


def test_url_download_on_a_terminal_renderer(tmp_path: Path):
    body = _Slow.body
    clock, out = Ticking(), io.StringIO()
    t = TerminalProgress(out, "blindbox build", clock=clock, width=300)
    t.step("fetch")
    with _server() as url, progress.using(t):
        fetch_url(url, hashlib.sha256(body).hexdigest(), cache=ContentCache(tmp_path / "cache"))
    t.close()
    draws = out.getvalue().split("\r")
    partial = [d for d in draws if d.startswith("blindbox build [0:0") and f"fetch: {url} " in d
               and " / 1.0 MB, " in d and not d.rstrip().endswith("done")]
    assert len(partial) >= 2, draws                 # bytes arriving, drawn more than once
    done = re.compile(re.escape(f"fetch: {url} 1.0 MB / 1.0 MB, ") + r"[0-9.]+ [kM]B/s, done")
    assert any(done.search(d) for d in draws), draws
    assert draws[-1] == "" and set(draws[-2]) == {" "}   # wiped at the end


class _Gone(io.StringIO):
    def write(self, text):
        raise OSError(5, "Input/output error")


def test_terminal_that_went_away_stops_drawing_without_failing_the_work():
    clock = Clock()
    t = TerminalProgress(_Gone(), "blindbox build", clock=clock, width=80)
    t.step("fetch")                 # no exception reaches the builder
    clock.advance(1)
    t.tick()
    t.close()
    assert t.closed


def test_check_repro_stops_a_build_it_is_interrupted_in(tmp_path):
    child = (f"import sys, time\nsys.stderr.write({encode_event('step', 'fetch')!r} + '\\n')\n"
             "sys.stderr.flush()\ntime.sleep(120)\n")

    class Interrupting(Recorder):
        def step(self, name):
            if name == "build A: fetch":
                raise KeyboardInterrupt
            super().step(name)

    run = repro.BuildRun("A", tmp_path / "out", [sys.executable, "-c", child], {}, 0o022, None)
    started = time.monotonic()
    with progress.using(Interrupting()), pytest.raises(KeyboardInterrupt):
        repro._run(run, tmp_path)
    assert time.monotonic() - started < 60            # the child was killed, not waited for
