"""bench/targets.py keeps running: a --quick run prints every target row and compares every digest pair.

No timing is asserted here (the figures depend on the machine); the benchmark's own
exit status says whether every digest pair agreed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration, pytest.mark.network]

TARGETS = [
    "whole process, one SNP digest (40 MiB initrd)",
    "import measure, vs sev-snp-measure's whole run",
    "in process, one digest, vs the hashing floor",
    "in process, one digest, speed-up vs sev-snp-measure library",
    "640 digests in one process vs one digest",
    "640 digests, one `blindbox measure` command vs 640 sev-snp-measure processes",
    "640 digests, library in one process vs 640 sev-snp-measure processes",
    "peak RSS, one digest (40 MiB initrd)",
    "blindbox build hello.yaml: no-op rebuild vs warm build",
    "verity hashing of rootfs.erofs vs veritysetup format",
]


@pytest.fixture(scope="module")
def quick_run() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "targets.py"), "--quick", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)


def test_quick_run_prints_every_target_and_all_digests_agree(quick_run):
    assert quick_run.returncode == 0, quick_run.stderr
    report = json.loads(quick_run.stdout)
    assert [r["target"] for r in report["rows"]] == TARGETS
    for r in report["rows"]:
        assert r["status"] in ("PASS", "MISS", "n/a"), r
        assert r["ours"] and r["reference"] and r["goal"], r
        if r["status"] != "n/a":
            assert r["ratio"] > 0, r
    assert report["header"]["compared"].startswith("all ") and "digest pairs equal" in report["header"]["compared"]
    assert "MISMATCH" not in quick_run.stderr


def test_header_names_machine_python_and_inputs(quick_run):
    assert quick_run.returncode == 0, quick_run.stderr
    header = json.loads(quick_run.stdout)["header"]
    assert header["python"].endswith(sys.version.split()[0])
    assert "cores" in header["machine"]
    names = " ".join(header["inputs"])
    for expected in ("OVMF.amdsev.fd", "vmlinuz-", "busybox", "initrd-40m", "rootfs.erofs", "ovmf-amdsev",
                     "busybox-static"):
        assert expected in names


def test_a_digest_mismatch_fails_the_run():
    """A benchmark that cannot see a wrong digest would time fast wrong answers: prove it exits 1."""
    code = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import tests.measure.oracle as o\n"
        "o.oracle_digest = lambda *a, **k: bytes(48)\n"
        "sys.argv = ['targets.py', '--quick']\n"
        f"runpy.run_path({str(ROOT / 'bench' / 'targets.py')!r}, run_name='__main__')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "MISMATCH: in process: blindbox" in p.stderr
