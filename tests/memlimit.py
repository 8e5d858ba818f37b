"""Run ``blindbox`` (or a snippet) in a child process under an address-space limit.

A parser that allocates what a hostile size field claims dies with MemoryError there
(exit 1, "internal error") instead of slowly eating the test machine; a bounded one
gives its one-sentence refusal with exit status 2.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from dataclasses import dataclass

#: Enough for the interpreter, click, cryptography and a 64 MiB firmware image.
MEMORY_LIMIT = 512 * 1024 * 1024
TIMEOUT = 60


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


def _limit(memory: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    return apply


def run_python(code: str, *, memory: int = MEMORY_LIMIT, timeout: int = TIMEOUT, stdin=None) -> Result:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_limit(memory), stdin=stdin if stdin is not None else subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_blindbox(argv: list[str], *, memory: int = MEMORY_LIMIT, timeout: int = TIMEOUT) -> Result:
    code = f"import sys; from blindbox.cli import main; sys.exit(main({list(map(str, argv))!r}))"
    return run_python(code, memory=memory, timeout=timeout)


def assert_refused(result: Result, *needles: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr holding every needle."""
    assert result.rc == 2, (result.rc, result.err)
    assert result.out == ""
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    for needle in needles:
        assert needle in result.err, (needle, result.err)
    return result.err
