"""Progress on stderr, seen the way a user and a CI log see it (docs/progress.md).

Each command runs as a real process with stderr on the slave side of a pseudo-terminal
(read from the master) or on a pipe:

- a terminal gets a status line redrawn with \\r: the command, elapsed time, step names,
  and for a download its bytes, total and rate; the line is wiped before the command ends;
- a pipe gets plain lines (no \\r, no escape sequences) for the network work: the package
  lists being resolved, each download started and finished with its size;
- --quiet writes nothing on stderr for a successful run, even on a terminal;
- --json output on stdout stays parseable whatever stderr shows.

`blindbox fetch` runs with an empty cache (a real download from Debian), `blindbox build`
and `blindbox lock` on a copy of recipes/hello.yaml with the cache warm.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from blindbox.cli.progress import human_bytes
from builder.pipeline import STEPS
from tests.realinputs import ALLOW_STALE

from .hellobuild import ROOT, locked_hello, scratch

pytestmark = [pytest.mark.integration, pytest.mark.network]
STALE = [a for s in ALLOW_STALE for a in ("--allow-stale", s)]
ESCAPE = "\x1b"
LINE = re.compile(r"blindbox: \[\d+:\d\d\] \S.*")


def run(args: list[str], *, tty: bool, cache: Path | None = None, cwd: Path = ROOT) -> tuple[int, str, str]:
    """Run ``blindbox ARGS``; stderr on a 200-column pseudo-terminal (``tty``) or a pipe.

    Returns (exit status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("BLINDBOX_PROGRESS", "TERM")}
    env["TERM"] = "xterm"
    if cache is not None:
        env["BLINDBOX_CACHE"] = str(cache)
    argv = [sys.executable, "-m", "blindbox.cli", *args]
    if not tty:
        p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                           stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout, p.stderr
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR                     # keep \n as the program wrote it (no \r\n)
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    with open(os.devnull, "rb") as devnull, \
            subprocess.Popen(argv, cwd=cwd, env=env, stdin=devnull, stdout=subprocess.PIPE, stderr=slave) as p:
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError as e:                   # EIO: every writer of the slave has closed it
                if e.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        assert p.stdout is not None
        out = p.stdout.read().decode()
        rc = p.wait(timeout=600)
    return rc, out, b"".join(chunks).decode()


def draws(stderr: str) -> list[str]:
    """The status lines drawn on the terminal, in order (each starts after a \\r)."""
    return [d.rstrip() for d in stderr.split("\r") if d.strip()]


def _fetch_args(*more: str) -> list[str]:
    return ["fetch", "ovmf-amdsev", "--suite", "sid", "--allow-stale", "--json", *more]


def test_fetch_on_a_terminal_shows_the_download_with_bytes_and_rate(tmp_path):
    rc, out, err = run(_fetch_args(), tty=True, cache=tmp_path / "cache")
    assert rc == 0, err
    pkg = json.loads(out)                          # stdout holds only the JSON
    name, size = f"ovmf-amdsev {pkg['version']}", human_bytes(pkg["size"])
    shown = draws(err)
    assert err.startswith("\r") and ESCAPE not in err and "\n" not in err, err
    assert all(d.startswith("blindbox fetch [0:") for d in shown), shown
    assert shown[0].startswith("blindbox fetch [0:00] resolve"), shown
    assert any(d.endswith("resolve: resolving sid package lists") for d in shown), shown
    done = re.compile(re.escape(f"download: {name} {size} / {size}, ") + r"[0-9.]+ [kMG]?B/s, done$")
    assert any(done.search(d) for d in shown), shown
    assert re.fullmatch(r"\r *\r", err[err.rindex("\r", 0, len(err) - 1):]), repr(err[-300:])   # wiped at the end


def test_fetch_into_a_log_writes_plain_lines_for_the_network_work(tmp_path):
    rc, out, err = run(_fetch_args(), tty=False, cache=tmp_path / "cache")
    assert rc == 0, err
    pkg = json.loads(out)
    name, size = f"ovmf-amdsev {pkg['version']}", human_bytes(pkg["size"])
    assert "\r" not in err and ESCAPE not in err
    lines = err.splitlines()
    assert all(LINE.fullmatch(line) for line in lines), lines
    texts = [line.split("] ", 1)[1] for line in lines]
    assert texts[0] == "resolve: resolving sid package lists", texts
    assert f"downloading {name} ({size})" in texts, texts
    assert any(t.startswith(f"downloaded {name}: {size} in ") and t.endswith("B/s") for t in texts), texts
    again_rc, _, again = run(_fetch_args(), tty=False, cache=tmp_path / "cache")
    assert (again_rc, again) == (0, "")            # everything cached and fresh: nothing to say


def test_fetch_quiet_on_a_terminal_writes_nothing(tmp_path):
    rc, out, err = run(_fetch_args("--quiet"), tty=True, cache=tmp_path / "cache")
    assert rc == 0 and err == "", err
    assert Path(json.loads(out)["path"]).is_file()


def test_bad_input_on_a_log_is_still_one_line(tmp_path):
    rc, _, err = run(["fetch", "ovmf-amdsev", "--suite", "sid", "--offline"], tty=False, cache=tmp_path / "cache")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("blindbox: error: "), err
    assert "offline mode forbids fetching them" in err


def test_bad_input_on_a_terminal_wipes_the_status_line_before_the_error(tmp_path):
    rc, _, err = run(["fetch", "ovmf-amdsev", "--suite", "sid", "--offline"], tty=True, cache=tmp_path / "cache")
    assert rc == 2, err
    status, _, message = err.rpartition("\r")
    assert message.startswith("blindbox: error: ") and message.endswith("\n") and message.count("\n") == 1, err
    assert status == "" or set(status.split("\r")[-1]) == {" "}, err   # nothing drawn, or wiped


@pytest.fixture(scope="module")
def hello_copy():
    recipe = locked_hello()                        # locked against today's archive; fills the cache
    return recipe


def test_build_on_a_terminal_shows_its_steps(hello_copy):
    out_dir = scratch("blindbox-progress-") / "hello"
    rc, out, err = run(["build", str(hello_copy.path), "--out", str(out_dir), "--force", "--json", *STALE], tty=True)
    assert rc == 0, err
    assert json.loads(out)["name"] == "hello"
    shown = draws(err)
    assert ESCAPE not in err and "\n" not in err
    assert shown[0] == "blindbox build [0:00] recipe", shown
    names = {re.sub(r"^blindbox build \[\d+:\d\d\] ", "", d).split(":")[0] for d in shown}
    steps = {name for name, _ in STEPS}
    inputs = {f"fetch {e['name']}" for e in json.loads(hello_copy.lock_path.read_text())["inputs"]}
    assert names <= steps | inputs and len(names) >= 2, names
    assert set(err.split("\r")[-2]) == {" "} and err.endswith("\r")    # wiped at the end


def test_build_into_a_log_and_quiet(hello_copy):
    out_dir = scratch("blindbox-progress-") / "hello"
    rc, out, err = run(["build", str(hello_copy.path), "--out", str(out_dir), "--force", *STALE], tty=False)
    assert rc == 0, err
    assert "\r" not in err and ESCAPE not in err
    assert all(LINE.fullmatch(line) and line.endswith(" s") for line in err.splitlines()), err   # slow steps only
    assert out.startswith(f"{out_dir}: built (")
    rc, out, err = run(["build", str(hello_copy.path), "--out", str(out_dir), "--force", "--quiet", *STALE],
                       tty=True)
    assert (rc, err) == (0, "") and out.startswith(f"{out_dir}: built (")


def test_lock_on_a_terminal_shows_which_input_it_pins(hello_copy, tmp_path):
    recipe = tmp_path / "hello.yaml"
    recipe.write_bytes(hello_copy.path.read_bytes())
    rc, out, err = run(["lock", str(recipe), "--json", *STALE], tty=True)
    assert rc == 0, err
    assert json.loads(out)["written"] is True
    shown = draws(err)
    assert shown and all(d.startswith("blindbox lock [0:") for d in shown), shown
    assert shown[0] == "blindbox lock [0:00] pin firmware", shown
    assert {d.split("] ", 1)[1].split(":")[0] for d in shown} <= {"pin firmware", "pin kernel", "pin busybox",
                                                                 "pin compressor"}


def test_check_repro_forwards_its_builds_steps_to_the_terminal(hello_copy):
    rc, out, err = run(["check-repro", str(hello_copy.path), *STALE], tty=True)
    assert rc == 0, err
    assert "reproducible: the bundles are byte-identical" in out
    shown = [re.sub(r"^blindbox check-repro \[\d+:\d\d\] ", "", d) for d in draws(err)]
    assert ESCAPE not in err and "\n" not in err and set(err.split("\r")[-2]) == {" "}
    assert shown[0] == "build A", shown
    assert any(s.startswith("build A: ") and s[9:].split(":")[0] in {n for n, _ in STEPS} for s in shown), shown
    assert any(s.startswith("build B: ") for s in shown) and shown[-1].startswith("compare"), shown


def test_check_repro_into_a_log(hello_copy):
    rc, out, err = run(["check-repro", str(hello_copy.path), *STALE], tty=False)
    assert rc == 0, err
    lines = err.splitlines()
    assert all(LINE.fullmatch(line) for line in lines) and "\r" not in err and ESCAPE not in err, err
    texts = [line.split("] ", 1)[1] for line in lines]
    tasks = ["build A: building as usual", "build B: building under varied conditions"]
    assert [t for t in texts if t in tasks] == tasks, texts
    assert all(t.endswith(" s") for t in texts if t not in tasks), texts   # and slow steps, when they end
