"""rederive reads launch-snp.sh as untrusted text: a malformed value is a failed finding."""

from __future__ import annotations

import hashlib
import json

from blindbox.cli import main
from tests.audit.manifestdoc import entry, write_bundle
from tests.conftest import VECTORS

AMDSEV = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"


def test_a_memory_size_of_thousands_of_digits_fails_the_finding(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    doc = write_bundle(bundle, AMDSEV.read_bytes(), [entry(1, "EPYC-v4", 0x1, "00" * 48)])
    script = b"#!/bin/sh\nmemory=" + b"9" * 5000 + b"\n"
    (bundle / "launch-snp.sh").write_bytes(script)
    for out in doc["outputs"]:
        if out["file"] == "launch-snp.sh":
            out["sha256"], out["size"] = hashlib.sha256(script).hexdigest(), len(script)
    (bundle / "manifest.json").write_text(json.dumps(doc))
    rc = main(["rederive", str(bundle)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "bug" not in err, err
    assert rc == 3
    assert "FAIL  launch.memory_mib" in out and "the bundle's files give None, manifest says 512" in out
    assert "PASS  file launch-snp.sh" in out
