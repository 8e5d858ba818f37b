"""Detached signatures over the exact bytes of a published manifest.json.

The format is chosen so that ``openssl`` alone verifies it (docs/auditing.md shows the
commands, and a test runs them):

* ECDSA P-384: the signature file is the DER ``Ecdsa-Sig-Value`` (SEQUENCE of r, s) over
  SHA-384 of the manifest bytes, as ``openssl dgst -sha384 -sign`` writes it.  Nonces
  follow RFC 6979, so signing the same bytes with the same key gives the same file.
* Ed25519: the signature file is the raw 64-byte signature (RFC 8032, pure Ed25519 over
  the manifest bytes), as ``openssl pkeyutl -sign -rawin`` writes it.

The signature covers the file byte for byte: no canonicalisation, no parsing.  Public
keys are PEM SubjectPublicKeyInfo; their fingerprint is SHA-256 over the DER form.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from measure.errors import InputError
from .errors import SignatureInvalid
from .idblock import deterministic_ecdsa
from measure.inputs import read_input
from .keys import read_private_key
from .limits import MAX_KEY_FILE_BYTES

ECDSA_P384 = "ecdsa-p384-sha384"
ED25519 = "ed25519"
SIGNATURE_SUFFIX = ".sig"

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def algorithm_of(key: object) -> str:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return ED25519
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and \
            isinstance(key.curve, ec.SECP384R1):
        return ECDSA_P384
    raise InputError("manifest signatures use an ECDSA P-384 or an Ed25519 key; create one with "
                     "openssl genpkey -algorithm ed25519 -out key.pem (or -algorithm EC "
                     "-pkeyopt ec_paramgen_curve:P-384).")


def _public(key: PrivateKey | PublicKey) -> PublicKey:
    return key.public_key() if isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)) else key


def public_key_fingerprint(key: PrivateKey | PublicKey) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex (what users pin)."""
    der = _public(key).public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def public_key_pem(key: PrivateKey | PublicKey) -> bytes:
    return _public(key).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class ManifestSignature:
    signature: bytes
    algorithm: str
    key_sha256: str
    manifest_sha256: str


def sign_bytes(message: bytes, private_key: PrivateKey) -> bytes:
    """A signature over ``message``: Ed25519's raw 64 bytes, or deterministic ECDSA P-384 over SHA-384 (DER)."""
    if not isinstance(private_key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise InputError("signing needs a private key; the key given is a public key.")
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(message)
    try:
        return private_key.sign(message, deterministic_ecdsa())
    except UnsupportedAlgorithm:
        raise InputError("deterministic ECDSA needs cryptography built with OpenSSL >= 3.2; "
                         "install the PyPI wheel of cryptography >= 44.") from None


def signature_valid(message: bytes, signature: bytes, public_key: PublicKey) -> bool:
    """Whether ``signature`` (as :func:`sign_bytes` makes it) verifies over ``message`` with ``public_key``."""
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        else:
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


def sign_manifest(manifest: bytes, private_key: PrivateKey) -> ManifestSignature:
    """Sign ``manifest`` byte for byte; deterministic for both algorithms."""
    algorithm = algorithm_of(private_key)
    return ManifestSignature(sign_bytes(manifest, private_key), algorithm, public_key_fingerprint(private_key),
                             hashlib.sha256(manifest).hexdigest())


def verify_manifest(manifest: bytes, signature: bytes, public_key: PublicKey, *, source: str = "manifest") -> str:
    """Check ``signature`` over ``manifest``; return the algorithm, raise SignatureInvalid if not."""
    algorithm = algorithm_of(public_key)
    if not signature_valid(manifest, signature, public_key):
        raise SignatureInvalid(
            f"the signature does not verify over {source} with the key sha256:"
            f"{public_key_fingerprint(public_key)[:16]}...: the manifest or signature was changed, or "
            f"it was signed with another key; do not trust this manifest.")
    return algorithm


def load_private_key(path: str | Path) -> PrivateKey:
    key = read_private_key(path, "signing key")
    algorithm_of(key)
    assert isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey))  # algorithm_of checked
    return key


def load_public_key(path: str | Path) -> PublicKey:
    data = read_input(path, "public key", limit=MAX_KEY_FILE_BYTES)
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        hint = " (that is a private key: give its public half, openssl pkey -pubout)" \
            if b"PRIVATE KEY" in data else ""
        raise InputError(f"{str(path)!r} is not a public key in PEM or DER{hint} ({e}); give the "
                         f"publisher's public key.") from None
    algorithm_of(key)
    assert isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey))  # algorithm_of checked
    return key
