"""Test-only ID and author keys, derived from a label so every test run (and every build of a
reproducibility test) writes the same key files.  Nothing here is a secret: the scalar is a
hash of the label.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

#: the order of the P-384 base point (SEC 2, secp384r1 n)
P384_ORDER = int("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973", 16)


def derived_key(label: str, curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    """A private key whose scalar is SHA-512("blindbox test key: " + label) reduced into range."""
    curve = curve if curve is not None else ec.SECP384R1()
    seed = int.from_bytes(hashlib.sha512(f"blindbox test key: {label}".encode()).digest(), "big")
    order = P384_ORDER if isinstance(curve, ec.SECP384R1) else (1 << 250)   # P-256: any 250-bit scalar is valid
    return ec.derive_private_key(seed % (order - 1) + 1, curve)


def write_key(path: Path, key) -> Path:
    """``key`` as an unencrypted PKCS#8 PEM file (deterministic bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def write_test_keys(directory: Path, *, author: bool = True) -> dict[str, Path]:
    """keys/id.pem (and keys/author.pem) under ``directory``, as an id_block section names them."""
    out = {"id_key": write_key(directory / "keys" / "id.pem", derived_key("id"))}
    if author:
        out["author_key"] = write_key(directory / "keys" / "author.pem", derived_key("author"))
    return out
