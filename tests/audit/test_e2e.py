"""End to end: expected digests from the real library, a report signed by a test chain.

The manifest is a complete one (tests/audit/manifestdoc.py) whose ``measurements`` are
digests computed by ``measure`` for several VM shapes of one measured direct boot.  The report is
made for one of those shapes and signed by a test ARK -> ASK -> VCEK chain; ``verify-report
--manifest`` must accept it (naming the shape) only with the explicit test root, and refuse it
when the manifest's digest is changed.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from blindbox.cli import main
from measure import Firmware, KernelHashes, SnpLaunch, VmShape
from measure.cpu import sig_for_type
from blindbox.audit.idblock import make_id_auth, key_digest, load_private_key
from blindbox.audit.report import Product
from measure.vmm import VmmType, profile_for
from tests.audit.manifestdoc import entry, manifest_doc as complete_manifest
from tests.audit.testchain import make_chain, make_report
from tests.conftest import VECTORS

FIRMWARE = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"
SSM_KEYS = VECTORS / "sev-snp-measure" / "keyfile"
SHAPES = [(1, "EPYC-v4", 0x1), (4, "EPYC-v4", 0x1), (4, "EPYC-Genoa", 0x1), (4, "EPYC-v4", 0x21)]
TARGET = "qemu:EPYC-Genoa:4:0x1"
OTHER = "qemu:EPYC-v4:4:0x1"


def manifest_doc() -> dict:
    launch = SnpLaunch(Firmware(FIRMWARE.read_bytes(), name="ovmf"))
    hashes = KernelHashes(kernel=hashlib.sha256(b"kernel").digest(), initrd=hashlib.sha256(b"initrd").digest(),
                          cmdline=hashlib.sha256(b"console=ttyS0\0").digest())
    qemu = profile_for(VmmType.QEMU)
    entries = []
    for vcpus, vcpu_type, features in SHAPES:
        sig = sig_for_type(vcpu_type)
        digest = launch.measure(VmShape(vcpus, sig, features, qemu), hashes).digest
        entries.append(entry(vcpus, vcpu_type, features, digest, qemu.name))
    return complete_manifest(entries)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    doc = manifest_doc()
    digests = {e["shape"]: e["measurement"] for e in doc["measurements"]}
    assert len(set(digests.values())) == len(SHAPES)  # every shape has its own digest
    (tmp / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    # The ID block the builder would emit for the target shape (deterministic).
    id_key = load_private_key(SSM_KEYS / "id_key_test.pem", "ID key")
    author_key = load_private_key(SSM_KEYS / "author_key_test.pem", "author key")
    make_id_auth(bytes.fromhex(digests[TARGET]), id_key, author_key, policy=0x30000)
    chain = make_chain(Product.GENOA, label="e2e")
    certs, root = chain.write(tmp)
    report = make_report(chain, measurement=bytes.fromhex(digests[TARGET]), signer_info=1,
                         id_key_digest=key_digest(id_key), author_key_digest=key_digest(author_key),
                         host_data=hashlib.sha256(b"tenant").digest())
    (tmp / "report.bin").write_bytes(report)
    return tmp, certs, root, digests


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def test_report_matches_its_shape_in_the_manifest(bundle, capsys):
    tmp, certs, root, digests = bundle
    base = ["verify-report", tmp / "report.bin", "--certs", certs, "--manifest", tmp / "manifest.json"]
    rc, out, err = run([*base, "--trust-root", root], capsys)
    assert (rc, err) == (0, "")
    assert f"matching shapes: {TARGET}" in out and "verdict: PASS" in out
    rc, out, _ = run([*base, "--trust-root", root, "--shape", TARGET, "--json",
                      "--id-key-digest", key_digest(load_private_key(SSM_KEYS / "id_key_test.pem", "k")).hex(),
                      "--host-data", hashlib.sha256(b"tenant").hexdigest()], capsys)
    doc = json.loads(out)
    assert rc == 0 and doc["matching_shapes"] == [TARGET]
    assert {c["name"]: c["status"] for c in doc["checks"]}["id_key_digest"] == "pass"


def test_same_report_refused_without_the_explicit_root(bundle, capsys):
    tmp, certs, _, _ = bundle
    rc, out, err = run(["verify-report", tmp / "report.bin", "--certs", certs, "--manifest",
                        tmp / "manifest.json"], capsys)
    assert rc == 3 and "FAIL  chain" in out and "not a trusted root" in err
    assert f"matching shapes: {TARGET}" in out  # the digest matches; the trust does not


def test_refused_for_another_shape_or_a_changed_manifest(bundle, capsys, tmp_path):
    tmp, certs, root, digests = bundle
    base = ["verify-report", tmp / "report.bin", "--certs", certs, "--trust-root", root]
    rc, out, err = run([*base, "--manifest", tmp / "manifest.json", "--shape", OTHER], capsys)
    assert rc == 3 and "FAIL  measurement.manifest" in out and "matches no digest" in err
    doc = json.loads((tmp / "manifest.json").read_text())
    for m in doc["measurements"]:
        if m["shape"] == TARGET:
            digest = bytearray(bytes.fromhex(m["measurement"]))
            digest[-1] ^= 1
            m["measurement"] = digest.hex()
    (tmp_path / "changed.json").write_text(json.dumps(doc))
    rc, out, err = run([*base, "--manifest", tmp_path / "changed.json"], capsys)
    assert rc == 3 and "matching shapes" not in out and "MEASUREMENT" in err


def test_signed_manifest_round_trip(bundle, capsys, tmp_path):
    tmp, _, _, _ = bundle
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes((tmp / "manifest.json").read_bytes())
    assert run(["sign-manifest", manifest, "--key", tmp_path / "key.pem"], capsys)[0] == 0
    assert run(["verify-manifest", manifest, "--key", tmp_path / "pub.pem"], capsys)[0] == 0
    manifest.write_bytes(manifest.read_bytes().replace(b'"vcpus": 4', b'"vcpus": 8', 1))
    assert run(["verify-manifest", manifest, "--key", tmp_path / "pub.pem"], capsys)[0] == 3


def test_shape_whose_id_contradicts_its_vcpus_is_refused(bundle, capsys, tmp_path):
    """The 4-vCPU shape keeps its id but publishes the 1-vCPU launch (vcpus and digest): with
    --shape of that id, a report of the 1-vCPU launch used to be accepted as the 4-vCPU one."""
    tmp, certs, root, digests = bundle
    one, four = "qemu:EPYC-v4:1:0x1", "qemu:EPYC-v4:4:0x1"
    chain = make_chain(Product.GENOA, label="e2e-shape")
    chain_certs, chain_root = chain.write(tmp_path)
    (tmp_path / "report.bin").write_bytes(make_report(chain, measurement=bytes.fromhex(digests[one])))
    base = ["verify-report", tmp_path / "report.bin", "--certs", chain_certs, "--trust-root", chain_root]
    rc, out, _ = run([*base, "--manifest", tmp / "manifest.json", "--shape", one], capsys)
    assert rc == 0 and f"matching shapes: {one}" in out
    rc, out, err = run([*base, "--manifest", tmp / "manifest.json", "--shape", four], capsys)
    assert rc == 3 and "matches no digest" in err

    doc = json.loads((tmp / "manifest.json").read_text())
    doc["measurements"] = [e for e in doc["measurements"] if e["shape"] != one]
    lie = next(e for e in doc["measurements"] if e["shape"] == four)
    lie.update(vcpus=1, measurement=digests[one])
    (tmp_path / "lie.json").write_text(json.dumps(doc))
    rc, out, err = run([*base, "--manifest", tmp_path / "lie.json", "--shape", four], capsys)
    assert rc == 3 and out == ""
    assert f"lie.json: measurements[0].vcpus is 1, but the shape id '{four}' says 4" in err
