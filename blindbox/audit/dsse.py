"""DSSE envelopes (Dead Simple Signing Envelope, v1) around a bundle's provenance statement.

The signature is over the pre-authentication encoding of the payload and its type::

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

(LEN: the byte length in ASCII decimal without leading zeros; SP: one space), never over the
JSON envelope, so the envelope's own formatting does not matter.  The envelope is
``{"payload": base64(body), "payloadType": type, "signatures": [{"keyid", "sig"}]}``, with
standard base64; ``keyid`` is the SHA-256 fingerprint of the signer's public key (DER
SubjectPublicKeyInfo, as :mod:`blindbox.audit.manifest_sig` names keys), a hint only.

The keys and signature forms are those of manifest signatures: ECDSA P-384 (DER over SHA-384,
deterministic nonces, RFC 6979) or Ed25519 (pure, over the PAE bytes); signing the same
statement with the same key gives the same envelope.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any


from measure.errors import InputError
from .errors import SignatureInvalid
from .manifest_sig import PrivateKey, PublicKey, algorithm_of, public_key_fingerprint, sign_bytes, signature_valid

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
#: provenance.intoto.json -> provenance.intoto.dsse.json
ENVELOPE_SUFFIX = ".dsse.json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """The DSSE v1 pre-authentication encoding of ``payload`` of type ``payload_type``."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def envelope_path_for(name: str) -> str:
    """The envelope's file name beside a statement's: ``X.json`` -> ``X.dsse.json``, else ``X.dsse.json`` added."""
    return (name[:-len(".json")] if name.endswith(".json") else name) + ENVELOPE_SUFFIX


@dataclass(frozen=True)
class Envelope:
    payload: bytes
    payload_type: str
    algorithm: str
    key_sha256: str
    data: bytes          # the envelope file's bytes


def sign_envelope(payload: bytes, private_key: PrivateKey, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> Envelope:
    """A DSSE envelope holding ``payload``, signed with ``private_key``; deterministic for both algorithms."""
    algorithm = algorithm_of(private_key)
    signature = sign_bytes(pae(payload_type, payload), private_key)
    fingerprint = public_key_fingerprint(private_key)
    doc = {"payload": base64.b64encode(payload).decode("ascii"), "payloadType": payload_type,
           "signatures": [{"keyid": fingerprint, "sig": base64.b64encode(signature).decode("ascii")}]}
    data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")
    return Envelope(payload, payload_type, algorithm, fingerprint, data)


def _b64(text: object, field: str, source: str) -> bytes:
    if isinstance(text, str):
        try:
            raw = text.encode("ascii")
            if "-" in text or "_" in text:       # DSSE allows the URL-safe alphabet too
                return base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=b"-_", validate=True)
            return base64.b64decode(raw, validate=True)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            pass
    raise InputError(f"{source}: {field} is not base64; give a DSSE envelope written by blindbox sign-manifest "
                     f"--provenance.")


def read_envelope(data: bytes, source: str) -> tuple[dict[str, Any], bytes, list[bytes]]:
    """The envelope's document, payload and signatures; InputError naming the field when it is malformed."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"{source} is not UTF-8 JSON ({e}); give a DSSE envelope written by blindbox "
                         f"sign-manifest --provenance.") from None
    if not isinstance(doc, dict):
        raise InputError(f"{source} is not a JSON object; give a DSSE envelope written by blindbox sign-manifest "
                         f"--provenance.")
    if not isinstance(doc.get("payloadType"), str):
        raise InputError(f"{source}: payloadType is missing or not a string; a DSSE envelope names the type of "
                         f"what it signs.")
    payload = _b64(doc.get("payload"), "payload", source)
    signatures = doc.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise InputError(f"{source}: signatures is missing or empty; a DSSE envelope carries at least one.")
    sigs = []
    for i, entry in enumerate(signatures):
        if not isinstance(entry, dict):
            raise InputError(f"{source}: signatures[{i}] is not an object with a sig.")
        sigs.append(_b64(entry.get("sig"), f"signatures[{i}].sig", source))
    return doc, payload, sigs


def verify_envelope(data: bytes, public_key: PublicKey, *, source: str = "envelope",
                    payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> Envelope:
    """The envelope in ``data`` when one of its signatures verifies with ``public_key`` over the PAE of its
    payload and type, and the type is ``payload_type``; SignatureInvalid otherwise."""
    algorithm = algorithm_of(public_key)
    doc, payload, sigs = read_envelope(data, source)
    message = pae(doc["payloadType"], payload)
    fingerprint = public_key_fingerprint(public_key)
    for sig in sigs:
        if not signature_valid(message, sig, public_key):
            continue
        if doc["payloadType"] != payload_type:
            raise SignatureInvalid(f"{source} is signed by the key sha256:{fingerprint[:16]}..., but over a payload "
                                   f"of type {doc['payloadType']!r}, not {payload_type!r}; it is not a signed "
                                   f"provenance statement.")
        return Envelope(payload, doc["payloadType"], algorithm, fingerprint, data)
    raise SignatureInvalid(f"no signature in {source} verifies over its payload with the key sha256:"
                           f"{fingerprint[:16]}...: the payload, its type or the signature was changed, or it was "
                           f"signed with another key; do not trust this provenance.")


__all__ = ["ENVELOPE_SUFFIX", "Envelope", "IN_TOTO_PAYLOAD_TYPE", "envelope_path_for", "pae", "read_envelope",
           "sign_envelope", "verify_envelope"]
