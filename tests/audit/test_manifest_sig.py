"""Detached manifest signatures: every changed byte fails, openssl agrees both ways."""

from __future__ import annotations

import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from measure.errors import InputError
from blindbox.audit.errors import SignatureInvalid
from blindbox.audit.manifest_sig import (ECDSA_P384, ED25519, algorithm_of, load_private_key, load_public_key,
                                         public_key_fingerprint, public_key_pem, sign_manifest, verify_manifest)
from tests.tools import require

MANIFEST = b'{\n  "measurements": [\n    {"shape": "q35-4cpu", "measurement": "' + b"ab" * 48 + b'"}\n  ]\n}\n'
KEYS = {ECDSA_P384: lambda: ec.generate_private_key(ec.SECP384R1()),
        ED25519: ed25519.Ed25519PrivateKey.generate}


@pytest.fixture(params=list(KEYS))
def key(request):
    return KEYS[request.param]()


def test_sign_and_verify(key):
    sig = sign_manifest(MANIFEST, key)
    assert verify_manifest(MANIFEST, sig.signature, key.public_key()) == sig.algorithm
    assert sig.key_sha256 == public_key_fingerprint(key.public_key())
    assert len(sig.signature) == 64 if sig.algorithm == ED25519 else sig.signature[0] == 0x30


def test_signatures_are_deterministic(key):
    assert sign_manifest(MANIFEST, key).signature == sign_manifest(MANIFEST, key).signature


def test_any_changed_byte_fails(key):
    sig = sign_manifest(MANIFEST, key).signature
    for i in range(len(MANIFEST)):
        changed = bytearray(MANIFEST)
        changed[i] ^= 0x20 if i % 2 else 0x01
        with pytest.raises(SignatureInvalid, match="do not trust"):
            verify_manifest(bytes(changed), sig, key.public_key())
    with pytest.raises(SignatureInvalid):
        verify_manifest(MANIFEST + b"\n", sig, key.public_key())
    for i in range(0, len(sig), 5):
        bad = bytearray(sig)
        bad[i] ^= 0x01
        with pytest.raises(SignatureInvalid):
            verify_manifest(MANIFEST, bytes(bad), key.public_key())
    other_key = KEYS[algorithm_of(key)]()
    with pytest.raises(SignatureInvalid):
        verify_manifest(MANIFEST, sig, other_key.public_key())


@pytest.mark.parametrize("bad", [lambda: ec.generate_private_key(ec.SECP256R1()),
                                 lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024)],
                         ids=["p256", "rsa"])
def test_other_key_types_are_refused(bad):
    with pytest.raises(InputError, match="P-384 or an Ed25519"):
        sign_manifest(MANIFEST, bad())


def test_key_files(tmp_path, key):
    priv = tmp_path / "key.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub = tmp_path / "pub.pem"
    pub.write_bytes(public_key_pem(key))
    der = tmp_path / "pub.der"
    der.write_bytes(key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    loaded = load_private_key(priv)
    sig = sign_manifest(MANIFEST, loaded).signature
    verify_manifest(MANIFEST, sig, load_public_key(pub))
    verify_manifest(MANIFEST, sig, load_public_key(der))
    with pytest.raises(InputError, match="private key: give its public half"):
        load_public_key(priv)
    with pytest.raises(InputError, match="not a private key"):
        load_private_key(pub)


def _openssl(*args, cwd):
    return subprocess.run([require("openssl", "openssl"), *args], cwd=cwd, capture_output=True, text=True)


def test_openssl_signatures_verify_here(tmp_path, key):
    """A publisher without blindbox can sign with openssl; blindbox verifies the result."""
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "manifest.json").write_bytes(MANIFEST)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        args = ["pkeyutl", "-sign", "-inkey", "key.pem", "-rawin", "-in", "manifest.json", "-out", "sig"]
    else:
        args = ["dgst", "-sha384", "-sign", "key.pem", "-out", "sig", "manifest.json"]
    done = _openssl(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    verify_manifest(MANIFEST, (tmp_path / "sig").read_bytes(), key.public_key())
