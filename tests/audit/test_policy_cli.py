"""`blindbox show-policy` and `blindbox client-key new|digest`: outputs and bad input (one sentence, exit 2)."""

from __future__ import annotations

import hashlib
import json

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from measure import runtime_policy as rp
from tests.audit.clientkeys import identity
from tests.audit.test_connect import cli
from tests.audit.test_connect_policy import EGRESS, make_bundle

POLICY = rp.parse_runtime_policy({"clients": ["ab" * 32], "egress": EGRESS, "logs": ["app"]}, "test")


def _spki_sha256(public_key) -> str:
    return hashlib.sha256(public_key.public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def test_show_policy_prints_plain_words(tmp_path, capfd):
    bundle = make_bundle(tmp_path / "b", POLICY)
    rc, out, err = cli(["show-policy", bundle], capfd)
    assert rc == 0 and err == ""
    assert out == "\n".join([f"Runtime policy of test (sha256 {rp.runtime_policy_sha256(POLICY).hex()}):",
                             f"  - only clients presenting one of these TLS keys may query (SHA-256 of the "
                             f"SubjectPublicKeyInfo): {'ab' * 32}",
                             "  - only the attestation agent's port is reachable from outside the guest; the "
                             "application listens on loopback",
                             "  - the application may reach 192.0.2.10:8443 over TCP and nothing else",
                             "  - debugging is off",
                             "  - the application's own output may leave the guest on the console, the attestation "
                             "agent's may not",
                             "  - kernel errors and init's status lines always reach the console"]) + "\n"
    rc2, out2, _ = cli(["show-policy", bundle / "manifest.json"], capfd)
    assert rc2 == 0 and out2 == out


def test_show_policy_json(tmp_path, capfd):
    bundle = make_bundle(tmp_path / "b", POLICY)
    rc, out, _ = cli(["show-policy", bundle, "--json"], capfd)
    doc = json.loads(out)
    assert rc == 0 and doc["name"] == "test"
    assert doc["runtime_policy"] == {"sha256": rp.runtime_policy_sha256(POLICY).hex(),
                                     "policy": rp.to_json_value(POLICY), "description": rp.describe(POLICY)}


def test_show_policy_of_a_bundle_without_one(tmp_path, capfd):
    bundle = make_bundle(tmp_path / "b", None)
    rc, out, _ = cli(["show-policy", bundle], capfd)
    assert rc == 0 and out == ("test has no runtime policy: its application is not restricted by a runtime policy "
                               "(any attested client may query it, and nothing limits where it sends data).\n")
    rc, out, _ = cli(["show-policy", bundle, "--json"], capfd)
    assert rc == 0 and json.loads(out)["runtime_policy"] is None


def test_show_policy_bad_input(tmp_path, capfd):
    rc, out, err = cli(["show-policy", tmp_path / "nothing"], capfd)
    assert rc == 2 and out == "" and "nothing" in err and len(err.splitlines()) == 1
    (tmp_path / "empty").mkdir()
    rc, _, err = cli(["show-policy", tmp_path / "empty"], capfd)
    assert rc == 2 and "manifest.json" in err and len(err.splitlines()) == 1
    (tmp_path / "x.json").write_text("not json")
    rc, _, err = cli(["show-policy", tmp_path / "x.json"], capfd)
    assert rc == 2 and len(err.splitlines()) == 1 and "x.json" in err


def test_a_tampered_policy_is_refused(tmp_path, capfd):
    bundle = make_bundle(tmp_path / "b", POLICY)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["runtime_policy"]["policy"]["egress"][0]["port"] = 443
    (bundle / "manifest.json").write_text(json.dumps(doc))
    rc, out, err = cli(["show-policy", bundle], capfd)
    assert rc == 3 and out == "" and "runtime_policy.sha256 is " in err


def test_client_key_new_writes_a_private_key_once(tmp_path, capfd):
    path = tmp_path / "client.pem"
    rc, out, err = cli(["client-key", "new", path], capfd)
    assert rc == 0 and err == ""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert out == _spki_sha256(key.public_key()) + "\n"
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_bytes()
    rc, out, err = cli(["client-key", "new", path], capfd)
    assert rc == 2 and out == "" and err == (f"blindbox: error: {str(path)!r} already exists; client-key new never "
                                             f"overwrites a key, so choose another path.\n")
    assert path.read_bytes() == before
    rc, out, _ = cli(["client-key", "new", tmp_path / "second.pem", "--json"], capfd)
    assert rc == 0 and json.loads(out)["sha256"] != _spki_sha256(key.public_key())


def test_client_key_digest_of_a_key_a_public_key_and_a_certificate(tmp_path, capfd):
    path = tmp_path / "client.pem"
    rc, digest, _ = cli(["client-key", "new", path], capfd)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    (tmp_path / "pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "cert.pem").write_bytes(identity(path).cert_pem)
    for name in ("client.pem", "pub.pem", "cert.pem"):
        rc, out, err = cli(["client-key", "digest", tmp_path / name], capfd)
        assert rc == 0 and out == digest, (name, err)
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    assert digest.strip() == _spki_sha256(cert.public_key())
    rc, out, _ = cli(["client-key", "digest", path, "--json"], capfd)
    assert json.loads(out) == {"path": str(path), "sha256": digest.strip()}


def test_client_key_digest_bad_input(tmp_path, capfd):
    (tmp_path / "text").write_text("hello\n")
    rc, out, err = cli(["client-key", "digest", tmp_path / "text"], capfd)
    assert rc == 2 and out == "" and err == (f"blindbox: error: {tmp_path / 'text'} is neither a PEM certificate, a "
                                             f"public key nor a private key.\n")
    (tmp_path / "broken.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    rc, _, err = cli(["client-key", "digest", tmp_path / "broken.pem"], capfd)
    assert rc == 2 and "is not a PEM private key" in err
    small = rsa.generate_private_key(65537, 1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "small.pem").write_bytes(small)
    rc, _, err = cli(["client-key", "digest", tmp_path / "small.pem"], capfd)
    assert rc == 2 and "holds a key TLS client authentication does not use here" in err
    enc = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))
    (tmp_path / "enc.pem").write_bytes(enc)
    rc, _, err = cli(["client-key", "digest", tmp_path / "enc.pem"], capfd)
    assert rc == 2 and "is an encrypted private key; give an unencrypted one" in err
    rc, _, err = cli(["client-key", "digest", tmp_path / "missing.pem"], capfd)
    assert rc == 2 and "missing.pem" in err and len(err.splitlines()) == 1
    rc, _, err = cli(["client-key", "new", tmp_path / "no-dir" / "k.pem"], capfd)
    assert rc == 2 and len(err.splitlines()) == 1 and "no-dir" in err
