"""The bad-input corpus (tests/corpus): each malformed input through the real command line.

For every case of tests/corpus/cases.json: the exit status is the documented one (2 bad
input, 3 a failed verification or comparison), the message names the problem, stderr is
one line and never a traceback, the command stays within a memory and CPU limit, and it
leaves no file behind, neither in the case's directory nor in the working directory.
Inputs are the checked-in bytes; the generator (tests/corpus/make_corpus.py) documents
how they were made.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus"
CASES = json.loads((CORPUS / "cases.json").read_text())
FIXTURES = ROOT / "tests" / "fixtures" / "vectors"
#: address space and CPU time of one command: a size field read from the input must never
#: turn into an allocation or a loop of that size
MEMORY_LIMIT = 768 << 20
CPU_SECONDS = 60


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))


def _tree(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, os.readlink(p) if p.is_symlink() else
                                             (p.read_bytes() if p.is_file() else None))
    return out


def test_corpus_is_wide_enough():
    assert len(CASES) >= 60
    commands = {c["argv"][0] if c["argv"][0] != "parse-file" else "parse-file " + c["argv"][1] for c in CASES}
    assert {"measure", "explain-vmsa", "explain-report", "rederive", "verify-report", "id-block",
            "sign-manifest", "verify-manifest", "build", "lock", "check-repro", "fetch", "parse-file deb",
            "parse-file bzimage", "parse-file module", "parse-file elf", "parse-file cpio",
            "parse-file verity-superblock"} <= commands
    for c in CASES:
        assert c["exit"] in (2, 3) and c["why"] and (CORPUS / "cases" / c["id"]).is_dir(), c["id"]
        assert c["message"] or c.get("stream") == "stdout", f"{c['id']}: give the expected message"


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case, tmp_path):
    work = tmp_path / "case"
    shutil.copytree(CORPUS / "cases" / case["id"], work, symlinks=True)
    for name, target in case.get("symlinks", {}).items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, work / name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = _tree(work)
    argv = [a.replace("{case}", str(work)).replace("{fixtures}", str(FIXTURES)) for a in case["argv"]]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home"), "LC_ALL": "C.UTF-8",
           "BLINDBOX_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.corpus.run", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, preexec_fn=_limits)
    where = f"{case['id']}: {case['why']}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, where
    assert proc.returncode == case["exit"], where
    stream = proc.stdout if case.get("stream") == "stdout" else proc.stderr
    assert case["message"] in stream, where
    if case.get("stream") != "stdout":
        assert len(proc.stderr.strip().splitlines()) == 1, f"one message line expected\n{where}"
    assert _tree(work) == before, f"the command changed or left files in the case directory\n{where}"
    assert not any(cwd.iterdir()), f"the command left files in its working directory\n{where}"
