"""rederive reads the kernel's release from its bzImage setup header, as the builder records it."""

from __future__ import annotations

import hashlib
import json

import pytest

from blindbox.cli import main
from tests.audit.manifestdoc import entry, write_bundle
from tests.builder.stepfakes import make_bzimage
from tests.conftest import VECTORS

AMDSEV = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"


def _bundle_with_kernel(tmp_path, kernel: bytes):
    bundle = tmp_path / "bundle"
    doc = write_bundle(bundle, AMDSEV.read_bytes(), [entry(1, "EPYC-v4", 0x1, "00" * 48)])
    (bundle / "bzImage").write_bytes(kernel)
    sha = hashlib.sha256(kernel).hexdigest()
    doc["kernel_hashes"]["kernel"] = sha
    for out in doc["outputs"]:
        if out["file"] == "bzImage":
            out["sha256"], out["size"] = sha, len(kernel)
    (bundle / "manifest.json").write_text(json.dumps(doc))
    return bundle


def _rederive(bundle, capsys):
    rc = main(["rederive", str(bundle)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "bug" not in err, err
    return rc, out


@pytest.mark.parametrize("version, ok, detail", [
    ("6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP", True,
     "the kernel's setup header names release 6.1.0-56-amd64"),
    ("6.1.0-99-amd64 #1 SMP", False, "the bundle's files give 6.1.0-99-amd64, manifest says 6.1.0-56-amd64"),
], ids=["published", "other"])
def test_the_published_release_is_the_one_the_kernel_names(tmp_path, capsys, version, ok, detail):
    rc, out = _rederive(_bundle_with_kernel(tmp_path, make_bzimage(version)), capsys)
    line = next(line for line in out.splitlines() if "launch.kernel_release" in line)
    assert line.startswith("  PASS" if ok else "  FAIL") and detail in line
    assert "PASS  file bzImage" in out and rc == 3  # the placeholder digest fails in both


def test_a_kernel_without_a_setup_header_fails_the_finding(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    write_bundle(bundle, AMDSEV.read_bytes(), [entry(1, "EPYC-v4", 0x1, "00" * 48)])  # bzImage is b"kernel"
    rc, out = _rederive(bundle, capsys)
    assert rc == 3 and "PASS  file bzImage" in out
    assert ("FAIL  launch.kernel_release" in out and "cannot be read from the kernel: " in out
            and "bzImage is not a bzImage (no 'HdrS' boot header at 0x202)" in out)
