"""rederive and explain-report refuse manifests whose re-derivation would run for minutes."""

from __future__ import annotations

import json
import time

import pytest

from blindbox.cli import main
from blindbox.audit.limits import MAX_MANIFEST_SHAPES, MAX_MANIFEST_VCPUS
from tests.conftest import VECTORS

REPORT = VECTORS / "go-sev-guest" / "attestation.bin"


def _bundle(tmp_path, measurements):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    doc = {"schema": "blindbox-manifest/1", "outputs": [], "measurements": measurements}
    (bundle / "manifest.json").write_text(json.dumps(doc))
    return bundle


def _refused(argv, capsys, *needles):
    start = time.monotonic()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert time.monotonic() - start < 20
    assert rc == 2 and out == "", err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize("command", ["rederive", "explain-report"])
def test_240000_shapes(command, tmp_path, capsys):
    bundle = _bundle(tmp_path, [{"vcpus": 1}] * 240_000)
    argv = [command, bundle] if command == "rederive" else [command, REPORT, "--bundle", bundle]
    _refused(argv, capsys, f"{bundle / 'manifest.json'} publishes 240,000 measurements, more than the "
                           f"{MAX_MANIFEST_SHAPES:,} shapes")


def test_too_many_vcpus_in_all(tmp_path, capsys):
    bundle = _bundle(tmp_path, [{"vcpus": 4096}] * 65)
    _refused(["rederive", bundle], capsys, f"shapes with {65 * 4096:,} vCPUs in all, more than the "
                                           f"{MAX_MANIFEST_VCPUS:,}")


def test_at_the_limits_the_manifest_is_read_on(tmp_path, capsys):
    """4096 shapes of 64 vCPUs are within both limits: the schema check speaks next."""
    bundle = _bundle(tmp_path, [{"vcpus": 64}] * MAX_MANIFEST_SHAPES)
    rc = main(["rederive", str(bundle)])
    out, err = capsys.readouterr()
    assert rc == 3 and out == "", err
    assert "manifest.json: name is missing" in err, err


@pytest.mark.parametrize("argv", [["rederive"], ["explain-report", "--measurement", "ab" * 48, "--bundle"]])
def test_a_manifest_that_is_a_fifo_is_refused_rather_than_waited_on(argv, tmp_path):
    import os
    import subprocess
    import sys
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    os.mkfifo(bundle / "manifest.json")          # nobody writes to it: reading would wait for ever
    p = subprocess.run([sys.executable, "-m", "blindbox.cli", *argv, str(bundle)], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 2, p.stderr
    assert p.stderr == (f"blindbox: error: the manifest '{bundle / 'manifest.json'}' is a FIFO or socket, not a "
                        f"file; a bundle's manifest.json is a regular file, so rebuild or re-download the bundle.\n")
