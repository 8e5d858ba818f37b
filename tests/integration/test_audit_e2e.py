"""The auditor's side on a real bundle: hello with an id_block, built from Debian inputs.

hello.yaml plus an id_block section (test keys) is locked afresh and built once
(hellobuild.py).  A report for one of its shapes is signed by a test ARK -> ASK -> VCEK
chain (tests/audit/testchain.py) and carries what the firmware would put there for that
launch: the shape's MEASUREMENT, the bundle's ID key and author key digests, its
FAMILY_ID, IMAGE_ID, GUEST_SVN and policy.  ``blindbox verify-report --manifest`` must
accept it and name the shape, refuse it for another shape and with a changed measurement,
check the ID key digest against the bundle's, and the built manifest must survive
``sign-manifest`` / ``verify-manifest`` only unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from blindbox.cli import main
from builder.manifest import Manifest, MeasurementRecord
from blindbox.audit.idblock import IdBlock, key_digest, verify_id_auth
from blindbox.audit.report import Product
from tests.audit.testchain import make_chain, make_report
from tests.builder.keys import derived_key, write_key

from .hellobuild import built_hello_with_id_block

pytestmark = [pytest.mark.integration, pytest.mark.network]

SHAPE = "qemu:EPYC-Genoa:4:0x1"
OTHER = "qemu:EPYC-Milan:4:0x1"
AUTHOR_KEY_EN = 1          # SIGNER_INFO bit 0: the ID block was signed with an author key


@dataclass(frozen=True)
class Audit:
    out: Path                 # the built bundle
    manifest: Manifest
    entry: MeasurementRecord  # SHAPE's measurement entry
    tmp: Path
    certs: Path
    root: Path
    chain: object

    def report(self, name: str, *, measurement: bytes | None = None) -> Path:
        """A report of the launch the bundle's SHAPE describes (optionally another MEASUREMENT)."""
        idb = self.manifest.launch["id_block"]
        data = make_report(
            self.chain, measurement=measurement or bytes.fromhex(self.entry.measurement),
            policy=int(self.manifest.launch["policy"], 16), signer_info=AUTHOR_KEY_EN,
            id_key_digest=bytes.fromhex(self.entry.id_key_digest),
            author_key_digest=bytes.fromhex(self.entry.author_key_digest),
            family_id=bytes.fromhex(idb["family_id"]), image_id=bytes.fromhex(idb["image_id"]),
            guest_svn=idb["guest_svn"])
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def verify(self, report: Path, *args) -> list:
        return ["verify-report", report, "--certs", self.certs, "--trust-root", self.root,
                "--manifest", self.out / "manifest.json", *args]


@pytest.fixture(scope="module")
def audit(tmp_path_factory) -> Audit:
    res = built_hello_with_id_block()
    manifest = Manifest.from_json((res.out / "manifest.json").read_bytes())
    tmp = tmp_path_factory.mktemp("audit-e2e")
    chain = make_chain(Product.GENOA, label="bundle-e2e")
    certs, root = chain.write(tmp)
    return Audit(res.out, manifest, manifest.measurement(SHAPE), tmp, certs, root, chain)


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def checks(out: str) -> dict[str, tuple[str, str | None]]:
    return {c["name"]: (c["status"], c.get("error")) for c in json.loads(out)["checks"]}


def test_the_bundle_signs_an_id_block_for_the_shape(audit):
    block = (audit.out / audit.entry.id_block.replace(".b64", ".bin")).read_bytes()
    auth = (audit.out / audit.entry.id_auth.replace(".b64", ".bin")).read_bytes()
    info = verify_id_auth(block, auth)
    assert IdBlock.from_bytes(block).ld.hex() == audit.entry.measurement
    assert key_digest(derived_key("id")).hex() == audit.entry.id_key_digest
    assert info.auth_key_algo == 1 and key_digest(derived_key("author")).hex() == audit.entry.author_key_digest
    assert audit.manifest.measurement(OTHER).measurement != audit.entry.measurement


def test_report_of_the_bundle_passes_and_names_its_shape(audit, capsys):
    report = audit.report("report.bin")
    rc, out, err = run(audit.verify(report), capsys)
    assert (rc, err) == (0, ""), out + err
    assert f"matching shapes: {SHAPE}\n" in out and "verdict: PASS" in out
    idb = audit.manifest.launch["id_block"]
    rc, out, err = run(audit.verify(report, "--shape", SHAPE, "--json", "--policy", audit.manifest.launch["policy"],
                                    "--family-id", idb["family_id"], "--image-id", idb["image_id"],
                                    "--min-guest-svn", idb["guest_svn"]), capsys)
    assert rc == 0, out + err
    assert json.loads(out)["matching_shapes"] == [SHAPE]
    c = checks(out)
    assert all(c[name][0] == "pass" for name in ("measurement.manifest", "policy", "family_id", "image_id",
                                                 "guest_svn", "chain", "signature"))


def test_same_report_for_another_shape_fails(audit, capsys):
    rc, out, err = run(audit.verify(audit.report("report.bin"), "--shape", OTHER), capsys)
    assert rc == 3 and "FAIL  measurement.manifest" in out and "verdict: FAIL" in out
    assert "matches no digest" in err


def test_report_with_a_changed_measurement_fails(audit, capsys):
    measurement = bytearray(bytes.fromhex(audit.entry.measurement))
    measurement[17] ^= 0x01                                     # one byte, then signed anew
    report = audit.report("changed.bin", measurement=bytes(measurement))
    rc, out, err = run(audit.verify(report, "--json"), capsys)
    assert rc == 3
    doc = json.loads(out)
    assert doc["matching_shapes"] == [] and doc["verdict"] == "fail"
    assert checks(out)["measurement.manifest"] == ("fail", "MeasurementMismatch")
    assert checks(out)["signature"] == ("pass", None)          # the change is in what was measured, not forged
    rc, out, err = run(audit.verify(report), capsys)
    assert rc == 3 and "matching shapes" not in out and "MEASUREMENT" in err


def test_id_key_digests_are_checked_against_the_bundles(audit, capsys):
    report = audit.report("report.bin")
    rc, out, _ = run(audit.verify(report, "--json", "--id-key-digest", audit.entry.id_key_digest,
                                  "--author-key-digest", audit.entry.author_key_digest), capsys)
    assert rc == 0 and checks(out)["id_key_digest"] == ("pass", None)
    assert checks(out)["author_key_digest"] == ("pass", None)
    another = key_digest(derived_key("not the bundle's ID key")).hex()
    rc, out, err = run(audit.verify(report, "--json", "--id-key-digest", another), capsys)
    assert rc == 3 and checks(out)["id_key_digest"] == ("fail", "PolicyViolation")
    assert checks(out)["measurement.manifest"] == ("pass", None)
    assert "ID_KEY_DIGEST" in err


def test_built_manifest_signature_survives_only_unchanged(audit, capsys, tmp_path):
    key = derived_key("publisher")
    write_key(tmp_path / "publisher.pem", key)
    (tmp_path / "publisher.pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    manifest = tmp_path / "manifest.json"
    original = (audit.out / "manifest.json").read_bytes()
    manifest.write_bytes(original)
    assert run(["sign-manifest", manifest, "--key", tmp_path / "publisher.pem"], capsys)[0] == 0
    rc, out, _ = run(["verify-manifest", manifest, "--key", tmp_path / "publisher.pub.pem"], capsys)
    assert rc == 0 and out.startswith("OK: ")
    at = original.index(audit.entry.id_key_digest.encode())        # one byte of the published key digest
    changed = bytearray(original)
    changed[at] = ord("0") if changed[at] != ord("0") else ord("1")
    manifest.write_bytes(bytes(changed))
    rc, out, err = run(["verify-manifest", manifest, "--key", tmp_path / "publisher.pub.pem"], capsys)
    assert rc == 3 and "OK" not in out


def test_manifest_key_digests_are_checked_without_options(audit, capsys):
    """A bundle with an ID block publishes its key digests: --manifest alone checks them."""
    rc, out, _ = run(audit.verify(audit.report("keys.bin"), "--json"), capsys)
    checks = {c["name"]: c["status"] for c in json.loads(out)["checks"]}
    assert rc == 0
    assert checks["id_key_digest.manifest"] == "pass" and checks["author_key_digest.manifest"] == "pass"

    # the same launch without the bundle's ID block: the report carries zero key digests
    data = make_report(audit.chain, measurement=bytes.fromhex(audit.entry.measurement),
                       policy=int(audit.manifest.launch["policy"], 16))
    bare = audit.tmp / "no-id-block.bin"
    bare.write_bytes(data)
    rc, out, _ = run(audit.verify(bare), capsys)
    assert rc == 3
    assert "id_key_digest.manifest" in out and "ID block" in out


def test_explain_report_names_the_unpublished_shape_of_a_real_bundle(audit, capsys):
    """An operator's report from a 6-vCPU DebugSwap launch: which shape was it, and what is published?"""
    from tests.measure import oracle
    out_dir = audit.out
    roles = {o["role"]: o["file"] for o in json.loads((out_dir / "manifest.json").read_bytes())["outputs"]}
    measured = oracle.oracle_digest(
        "snp", ovmf=out_dir / roles["firmware"], vcpus=6, vcpu_sig=0xA00F11, guest_features=0x21,
        kernel=out_dir / roles["kernel"], initrd=out_dir / roles["initrd"],
        append=(out_dir / roles["cmdline"]).read_bytes().decode())
    report = audit.report("six.bin", measurement=measured)
    rc, out, _ = run(["explain-report", report, "--bundle", out_dir, "--max-vcpus", 16], capsys)
    assert rc == 0
    assert "6 vCPU(s) of EPYC-Milan (0xa00f11), guest features 0x21" in out
    assert "nearest published: qemu:EPYC-Milan:4:0x1 (differs in vCPU count, guest features)" in out
    rc, out, _ = run(["explain-report", audit.report("published.bin"), "--bundle", out_dir, "--max-vcpus", 8],
                     capsys)
    assert rc == 0 and f"published in the bundle's manifest for {SHAPE}" in out
