"""blindbox rederive: an auditor re-derives every published digest from a real bundle's files."""

from __future__ import annotations

import json
import shutil

import pytest

from blindbox.cli import main
from tests.measure import oracle

from .hellobuild import built_hello_with_id_block

pytestmark = [pytest.mark.integration, pytest.mark.network]


@pytest.fixture
def bundle(tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(built_hello_with_id_block().out, out)
    return out


def run(argv, capsys):
    rc = main(["rederive", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_every_published_digest_follows_from_the_files(bundle, capsys):
    rc, out, _ = run([bundle, "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["ok"]
    shapes = [f for f in data["findings"] if f["name"].startswith("shape ")]
    assert len(shapes) == 12
    # and an independent implementation agrees with one of them
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["measurements"][7]
    expected = oracle.oracle_digest("snp", ovmf=bundle / "OVMF.amdsev.fd", vcpus=entry["vcpus"],
                                    vcpu_sig=int(entry["vcpu_sig"], 16), kernel=bundle / "bzImage",
                                    initrd=bundle / "initrd", append=(bundle / "cmdline").read_text(),
                                    guest_features=int(entry["guest_features"], 16))
    assert expected.hex() == entry["measurement"]


def test_a_changed_initrd_is_named(bundle, capsys):
    data = bytearray((bundle / "initrd").read_bytes())
    data[1000] ^= 1
    (bundle / "initrd").write_bytes(bytes(data))
    rc, out, _ = run([bundle], capsys)
    assert rc == 3
    assert "FAIL  file initrd" in out and "FAIL  kernel_hashes" in out and "FAIL  shape qemu:EPYC-v4:1:0x1" in out
    assert "PASS  file bzImage" in out


def test_a_changed_published_digest_is_named(bundle, capsys):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["measurements"][0]["measurement"] = "00" * 48
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    rc, out, _ = run([bundle], capsys)
    failed = [line.split()[1:3] for line in out.splitlines() if line.startswith("  FAIL")]
    # the recomputed digest, the shapes table of launch-snp.sh and the signed ID block all disagree
    assert rc == 3 and failed == [["launch-snp.sh", "shapes"], ["shape", "qemu:EPYC-v4:1:0x1"],
                                  ["id_block", "qemu:EPYC-v4:1:0x1"]]
    assert "manifest says " + "00" * 48 in out


def test_not_a_bundle_is_bad_input(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text("{}")
    rc, _, err = run([tmp_path], capsys)
    assert rc == 2 and "not a blindbox manifest" in err
    rc, _, err = run([tmp_path / "nope"], capsys)
    assert rc == 2
