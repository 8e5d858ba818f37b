"""DSSE envelopes around provenance.intoto.json: PAE as the DSSE specification defines it, signing with
the manifest's key, and sign-manifest / verify-manifest --provenance."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from blindbox.audit.dsse import IN_TOTO_PAYLOAD_TYPE, envelope_path_for, pae, sign_envelope, verify_envelope
from blindbox.audit.errors import SignatureInvalid
from blindbox.audit.manifest_sig import ECDSA_P384, ED25519, public_key_fingerprint, public_key_pem
from blindbox.audit.provenance import PROVENANCE
from measure.errors import InputError
from blindbox.cli import main
from tests.tools import require

KEYS = {ECDSA_P384: lambda: ec.generate_private_key(ec.SECP384R1()),
        ED25519: ed25519.Ed25519PrivateKey.generate}
#: a statement with a non-ASCII byte, so that lengths count bytes, not characters
STATEMENT = (json.dumps({"_type": "https://in-toto.io/Statement/v1", "predicateType": "https://slsa.dev/provenance/v1",
                         "predicate": {"note": "grüße"},
                         "subject": [{"name": "initrd", "digest": {"sha256": "ab" * 32}}]},
                        indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


@pytest.fixture(params=list(KEYS))
def key(request):
    return KEYS[request.param]()


def spec_pae(payload_type: bytes, body: bytes) -> bytes:
    """PAE written out from the DSSE v1 protocol text: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body."""
    sp = b"\x20"
    return b"DSSEv1" + sp + str(len(payload_type)).encode("ascii") + sp + payload_type + sp + \
        str(len(body)).encode("ascii") + sp + body


def test_pae_is_the_specification_s():
    # the worked example of the DSSE protocol document
    assert pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert pae(IN_TOTO_PAYLOAD_TYPE, STATEMENT) == spec_pae(b"application/vnd.in-toto+json", STATEMENT)
    assert pae(IN_TOTO_PAYLOAD_TYPE, STATEMENT).startswith(b"DSSEv1 28 application/vnd.in-toto+json %d {"
                                                           % len(STATEMENT))
    assert len(STATEMENT) > len(STATEMENT.decode())  # the length counts bytes
    assert pae("", b"") == b"DSSEv1 0  0 "


def test_the_envelope_signs_pae_with_the_key(key):
    sealed = sign_envelope(STATEMENT, key)
    doc = json.loads(sealed.data)
    assert sorted(doc) == ["payload", "payloadType", "signatures"]
    assert doc["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(doc["payload"], validate=True) == STATEMENT
    [entry] = doc["signatures"]
    assert entry["keyid"] == public_key_fingerprint(key.public_key())
    sig = base64.b64decode(entry["sig"], validate=True)
    message = spec_pae(doc["payloadType"].encode(), STATEMENT)   # independent of blindbox's pae()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        key.public_key().verify(sig, message)
    else:
        key.public_key().verify(sig, message, ec.ECDSA(hashes.SHA384()))
    assert sign_envelope(STATEMENT, key).data == sealed.data      # deterministic
    assert verify_envelope(sealed.data, key.public_key()).payload == STATEMENT


def test_openssl_verifies_the_envelope_s_signature_over_pae(tmp_path, key):
    sealed = json.loads(sign_envelope(STATEMENT, key).data)
    (tmp_path / "pae.bin").write_bytes(spec_pae(b"application/vnd.in-toto+json", STATEMENT))
    (tmp_path / "sig").write_bytes(base64.b64decode(sealed["signatures"][0]["sig"]))
    (tmp_path / "pub.pem").write_bytes(public_key_pem(key))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        args = ["pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "pae.bin", "-sigfile", "sig"]
    else:
        args = ["dgst", "-sha384", "-verify", "pub.pem", "-signature", "sig", "pae.bin"]
    done = subprocess.run([require("openssl", "openssl"), *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and "Verified" in done.stdout + done.stderr, done.stdout + done.stderr


def _reseal(data: bytes, **changes) -> bytes:
    doc = json.loads(data)
    doc.update(changes)
    return json.dumps(doc).encode()


def test_a_changed_payload_type_or_signature_fails(key):
    data = sign_envelope(STATEMENT, key).data
    other = base64.b64encode(STATEMENT.replace(b"ab", b"cd", 1)).decode()
    for changed in (_reseal(data, payload=other), _reseal(data, payloadType="application/json")):
        with pytest.raises(SignatureInvalid, match="no signature in envelope verifies over its payload"):
            verify_envelope(changed, key.public_key())
    with pytest.raises(SignatureInvalid, match="signed with another key"):
        verify_envelope(data, KEYS[ED25519]().public_key())
    signed_other_type = sign_envelope(STATEMENT, key, payload_type="application/json").data
    with pytest.raises(SignatureInvalid, match="over a payload of type 'application/json', not "
                                               "'application/vnd.in-toto[+]json'"):
        verify_envelope(signed_other_type, key.public_key())


def test_envelope_file_names():
    assert envelope_path_for(PROVENANCE) == "provenance.intoto.dsse.json"
    assert envelope_path_for("statement") == "statement.dsse.json"


# ------------------------------------------------------------------------------ the commands

@pytest.fixture
def published(tmp_path, key):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"schema": "blindbox-manifest/1"}\n')
    (bundle / PROVENANCE).write_bytes(STATEMENT)
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (tmp_path / "pub.pem").write_bytes(public_key_pem(key))
    return bundle


def cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "bug" not in err, err
    return rc, out, err


def test_sign_and_verify_the_provenance(published, capsys):
    key, pub = published.parent / "key.pem", published.parent / "pub.pem"
    rc, out, _ = cli(["sign-manifest", "--provenance", published / PROVENANCE, "--key", key], capsys)
    envelope = published / "provenance.intoto.dsse.json"
    assert rc == 0 and "as a DSSE envelope (application/vnd.in-toto+json)" in out
    assert out.rstrip().endswith(f"envelope written to {envelope}")
    assert json.loads(envelope.read_bytes())["payload"] == base64.b64encode(STATEMENT).decode()
    assert not (published / "manifest.json.sig").exists()
    rc, out, _ = cli(["verify-manifest", "--provenance", published / PROVENANCE, "--key", pub], capsys)
    assert rc == 0 and out.startswith(f"OK: {envelope} verifies with ") and f"{published / PROVENANCE} is the " \
                                                                              f"statement it signs" in out
    rc, out, _ = cli(["verify-manifest", "--envelope", envelope, "--key", pub, "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["verdict"] == "pass" and data["provenance"]["statement"] is None


def test_manifest_and_provenance_in_one_call(published, capsys):
    key, pub = published.parent / "key.pem", published.parent / "pub.pem"
    manifest = published / "manifest.json"
    rc, out, _ = cli(["sign-manifest", manifest, "--provenance", published / PROVENANCE, "--key", key, "--json"],
                     capsys)
    data = json.loads(out)
    assert rc == 0 and data["signature"] == f"{manifest}.sig"
    assert data["provenance"]["envelope"] == str(published / "provenance.intoto.dsse.json")
    assert data["provenance"]["key_sha256"] == data["key_sha256"]
    rc, out, _ = cli(["verify-manifest", manifest, "--provenance", published / PROVENANCE, "--key", pub, "--json"],
                     capsys)
    data = json.loads(out)
    assert rc == 0 and data["verdict"] == "pass" and data["provenance"]["verdict"] == "pass"


def test_a_tampered_envelope_payload_fails(published, capsys):
    key, pub = published.parent / "key.pem", published.parent / "pub.pem"
    cli(["sign-manifest", "--provenance", published / PROVENANCE, "--key", key], capsys)
    envelope = published / "provenance.intoto.dsse.json"
    forged = STATEMENT.replace(b"ab" * 32, b"cd" * 32)
    envelope.write_bytes(_reseal(envelope.read_bytes(), payload=base64.b64encode(forged).decode()))
    (published / PROVENANCE).write_bytes(forged)   # the forger replaces both
    rc, out, err = cli(["verify-manifest", "--provenance", published / PROVENANCE, "--key", pub], capsys)
    assert rc == 3 and out == ""
    assert err.startswith(f"blindbox: error: no signature in {envelope} verifies over its payload with the key "
                          f"sha256:") and "do not trust this provenance" in err


def test_a_statement_changed_after_signing_fails(published, capsys):
    key, pub = published.parent / "key.pem", published.parent / "pub.pem"
    cli(["sign-manifest", "--provenance", published / PROVENANCE, "--key", key], capsys)
    (published / PROVENANCE).write_bytes(STATEMENT.replace(b"ab" * 32, b"cd" * 32))
    rc, out, err = cli(["verify-manifest", "--provenance", published / PROVENANCE, "--key", pub, "--json"], capsys)
    data = json.loads(out)
    assert rc == 3 and data["verdict"] == "fail" and data["provenance"]["verdict"] == "fail"
    assert (f"is signed by the key, but over another statement than {published / PROVENANCE}"
            in data["provenance"]["error"])
    assert "the provenance was changed after it was signed" in err


def test_a_pinned_key_that_differs_fails(published, capsys):
    key, pub = published.parent / "key.pem", published.parent / "pub.pem"
    cli(["sign-manifest", "--provenance", published / PROVENANCE, "--key", key], capsys)
    rc, _, err = cli(["verify-manifest", "--provenance", published / PROVENANCE, "--key", pub,
                      "--key-sha256", "00" * 32], capsys)
    assert rc == 3 and "not the pinned sha256:" + "00" * 32 in err


@pytest.mark.parametrize("argv, message", [
    (["sign-manifest", "--key", "{key}"], "give the MANIFEST to sign, --provenance FILE, or both."),
    (["sign-manifest", "--provenance", "{bundle}/manifest.json", "--key", "{key}"],
     "is not an in-toto statement (its _type is not https://in-toto.io/Statement/v1)"),
    (["sign-manifest", "--provenance", "{bundle}/" + PROVENANCE, "--envelope", "{key}", "--key", "{key}"],
     "--envelope '{key}' is the signing key"),
    (["sign-manifest", "--envelope", "x.json", "--key", "{key}", "{bundle}/manifest.json"],
     "--envelope names the provenance's envelope file; give --provenance too"),
    (["verify-manifest", "--key", "{pub}"], "give the MANIFEST to check, --provenance FILE (or --envelope FILE)"),
    (["verify-manifest", "--envelope", "{bundle}/manifest.json", "--key", "{pub}"],
     "manifest.json: payloadType is missing or not a string"),
    (["verify-manifest", "--provenance", "{bundle}/" + PROVENANCE, "--key", "{pub}"],
     "provenance.intoto.dsse.json"),
], ids=["nothing-to-sign", "not-a-statement", "envelope-is-key", "envelope-alone", "nothing-to-verify",
        "not-an-envelope", "no-envelope"])
def test_bad_input_exits_2(published, capsys, argv, message):
    names = {"bundle": published, "key": published.parent / "key.pem", "pub": published.parent / "pub.pem"}
    rc, out, err = cli([a.format(**names) for a in argv], capsys)
    assert rc == 2 and out == "" and message.format(**names) in err, err
    assert len(err.strip().splitlines()) == 1


def test_the_url_safe_alphabet_is_read_and_other_characters_are_not(key):
    statement = STATEMENT.replace("grüße".encode(), b"~~~~~~")   # "~~~" is "fn5+" in base64, "fn5-" URL-safe
    doc = json.loads(sign_envelope(statement, key).data)
    doc["payload"] = base64.urlsafe_b64encode(statement).decode().rstrip("=")
    assert "-" in doc["payload"]
    assert verify_envelope(json.dumps(doc).encode(), key.public_key()).payload == statement
    doc["payload"] = "-" + doc["payload"][1:].replace("A", "*", 1)
    with pytest.raises(InputError, match="envelope: payload is not base64; give a DSSE envelope"):
        verify_envelope(json.dumps(doc).encode(), key.public_key())
