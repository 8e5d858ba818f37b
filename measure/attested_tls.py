"""Attested TLS, protocol version 2: what REPORT_DATA binds, and the messages around it.

One TLS 1.3 connection, from a client to a guest's attestation agent:

1. TLS 1.3 handshake.  The agent's certificate is self-signed: nothing about it is
   trusted until the report below binds its public key.
2. client -> agent: :data:`HELLO` followed by a fresh 32-byte nonce (:func:`encode_hello`).
3. agent -> client: :data:`EVIDENCE`, a 4-byte big-endian length and that many bytes of
   UTF-8 JSON (:func:`encode_evidence`): the SEV-SNP attestation report whose REPORT_DATA
   is :func:`report_data` of *this* connection's certificate key and *this* nonce, the
   certificate table the host supplied with an extended report (maybe empty), which
   attester produced it, and the SHA-256 of the runtime policy bound into it (or null).
4. The client verifies everything.  Only then: client -> agent: :data:`CLIENT`, a 4-byte
   big-endian length and the DER of the client's TLS certificate (length 0: none)
   (:func:`encode_client`).
5. If the runtime policy lists client keys and this certificate's key is one of them, the agent
   requests TLS 1.3 post-handshake authentication and sends :data:`PROVE`; the client, whose
   TLS stack answers the request with that certificate and a signature of its key, replies
   :data:`PROVEN`; the agent checks that the certificate TLS verified is the one claimed.
6. agent -> client: :data:`VERDICT`, a 4-byte length and UTF-8 JSON ``{"accepted": bool,
   "client_sha256": hex | null, "reason": text}`` (:func:`encode_verdict`).  Refused: the
   agent closes; accepted: from here on it relays the connection to the application, byte
   for byte, and the client sends its first byte of application data.

REPORT_DATA (64 bytes), domain-separated so that no other use of a report can be replayed
as this one::

    SHA-512( b"blindbox-guest attested-tls v1\\0"
             || SHA-256(SubjectPublicKeyInfo DER of the agent's TLS certificate)
             || nonce (32 bytes)
             || SHA-256(runtime policy) or 32 zero bytes )

A proxy that relays a genuine guest's evidence over its own TLS connection presents its own
key, so the first hash differs and the report does not match; a replayed report carries an
old nonce.  docs/attested-tls.md has the threat model and a worked test vector.  The domain
still says v1 on purpose: version 2 added the client's certificate after the evidence, and
REPORT_DATA binds the same three values as before, so its published vector stands; the
protocol's version is in every message's first line, so a version-1 peer never gets that far.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md); both the agent inside the guest and the client use it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import InputError

VERSION = 2
HELLO = b"BLINDBOX-ATTEST/2\n"
EVIDENCE = b"BLINDBOX-EVIDENCE/2\n"
CLIENT = b"BLINDBOX-CLIENT/2\n"
PROVE = b"BLINDBOX-PROVE/2\n"
PROVEN = b"BLINDBOX-PROVEN/2\n"
VERDICT = b"BLINDBOX-VERDICT/2\n"
#: The largest client certificate the agent reads (a P-256 or P-384 self-signed certificate is
#: about 500 bytes; an RSA-4096 one with a few extensions under 2 KiB).
MAX_CLIENT_CERT_BYTES = 16 * 1024
#: The largest verdict message a client reads.
MAX_VERDICT_BYTES = 4 * 1024
NONCE_SIZE = 32
DOMAIN = b"blindbox-guest attested-tls v1\0"
REPORT_DATA_SIZE = 64
#: The largest evidence message either side accepts (a report is 1184 bytes, AMD's certificate
#: table a few KiB; base64 and JSON add a third).
MAX_EVIDENCE_BYTES = 64 * 1024
ATTESTERS = ("sev-guest", "configfs-tsm", "simulated")

#: The simulated attester's wire format (tests only: the guest reaches it only when its measured
#: command line says ``blindbox.attester=simulated:HOST:PORT``).  Request: SIM_MAGIC, the 64 bytes
#: of REPORT_DATA, one byte VMPL.  Answer: SIM_MAGIC, a 4-byte big-endian length and the report,
#: a 4-byte big-endian length and the certificate table (AMD's GUID table, as an extended report
#: carries it).
SIM_MAGIC = b"BLINDBOX-SIM-REPORT/1\n"


class ProtocolError(InputError):
    """A message of the attested-TLS protocol is malformed: the peer does not speak it."""


def report_data(spki_der: bytes, nonce: bytes, policy_sha256: bytes | None = None) -> bytes:
    """The 64 bytes of REPORT_DATA that bind a TLS key, a client's nonce and a runtime policy."""
    if len(nonce) != NONCE_SIZE:
        raise ProtocolError(f"a nonce is {NONCE_SIZE} bytes, not {len(nonce)}.")
    if policy_sha256 is not None and len(policy_sha256) != 32:
        raise ProtocolError(f"a runtime policy digest is 32 bytes (SHA-256), not {len(policy_sha256)}.")
    if not spki_der:
        raise ProtocolError("the TLS key's SubjectPublicKeyInfo is empty.")
    return hashlib.sha512(DOMAIN + hashlib.sha256(spki_der).digest() + nonce
                          + (policy_sha256 if policy_sha256 is not None else bytes(32))).digest()


class _Receiver(Protocol):
    def recv(self, size: int, /) -> bytes: ...


def recv_exactly(sock: _Receiver, n: int) -> bytes:
    """``n`` bytes from a socket, or fewer when the peer closes first: the ``read_exactly``
    the readers below take is ``lambda n: recv_exactly(sock, n)``."""
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def encode_hello(nonce: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ProtocolError(f"a nonce is {NONCE_SIZE} bytes, not {len(nonce)}.")
    return HELLO + nonce


def read_hello(read_exactly: Callable[[int], bytes]) -> bytes:
    """The nonce of a client's hello; ``read_exactly(n)`` returns n bytes or fewer at the end."""
    head = read_exactly(len(HELLO))
    if head != HELLO:
        raise ProtocolError(f"the client did not start with {HELLO[:-1].decode()} (got {head[:24]!r}); it does not "
                            f"speak blindbox attested TLS version {VERSION}.")
    nonce = read_exactly(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise ProtocolError(f"the client's hello ended after {len(nonce)} of {NONCE_SIZE} nonce bytes.")
    return nonce


@dataclass(frozen=True)
class Evidence:
    """What the agent sends for one connection."""

    report: bytes                    # the ATTESTATION_REPORT (1184 bytes)
    certs: bytes                     # the host's certificate table (GUID table), b"" if none
    attester: str                    # one of ATTESTERS
    policy_sha256: bytes | None = None

    def to_json(self) -> bytes:
        doc = {"version": VERSION, "attester": self.attester,
               "report": base64.b64encode(self.report).decode(),
               "certs": base64.b64encode(self.certs).decode(),
               "policy_sha256": None if self.policy_sha256 is None else self.policy_sha256.hex()}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def encode_evidence(evidence: Evidence) -> bytes:
    body = evidence.to_json()
    if len(body) > MAX_EVIDENCE_BYTES:
        raise ProtocolError(f"the evidence is {len(body)} bytes, more than the {MAX_EVIDENCE_BYTES} a client "
                            f"accepts; the certificate table is too large.")
    return EVIDENCE + len(body).to_bytes(4, "big") + body


def _b64(doc: dict[str, object], key: str) -> bytes:
    value = doc.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"the evidence's {key!r} is not a base64 string.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"the evidence's {key!r} is not valid base64.") from None


def parse_evidence(body: bytes) -> Evidence:
    """The evidence in a message body (the JSON after the length); malformed is a ProtocolError."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("the evidence is not UTF-8 JSON.") from None
    if not isinstance(doc, dict) or set(doc) != {"version", "attester", "report", "certs", "policy_sha256"}:
        raise ProtocolError("the evidence is not an object with exactly version, attester, report, certs and "
                            "policy_sha256.")
    if doc["version"] != VERSION or isinstance(doc["version"], bool):
        raise ProtocolError(f"the evidence has version {doc['version']!r}; this client speaks {VERSION}.")
    if doc["attester"] not in ATTESTERS:
        raise ProtocolError(f"the evidence names the attester {str(doc['attester'])[:40]!r}, not one of "
                            f"{', '.join(ATTESTERS)}.")
    policy = doc["policy_sha256"]
    if policy is not None:
        if not isinstance(policy, str) or len(policy) != 64 or any(c not in "0123456789abcdef" for c in policy):
            raise ProtocolError("the evidence's policy_sha256 is neither null nor 64 lower-case hex digits.")
        policy = bytes.fromhex(policy)
    return Evidence(report=_b64(doc, "report"), certs=_b64(doc, "certs"), attester=doc["attester"],
                    policy_sha256=policy)


def read_evidence(read_exactly: Callable[[int], bytes]) -> Evidence:
    """Read one evidence message; ``read_exactly(n)`` returns n bytes or fewer at the end."""
    return parse_evidence(_read_sized(
        read_exactly, EVIDENCE, MAX_EVIDENCE_BYTES, "server", "evidence",
        stranger=f"the server did not answer with {EVIDENCE[:-1].decode()}; it is not a blindbox attestation "
                 f"agent (version {VERSION})"))


def _read_sized(read_exactly: Callable[[int], bytes], magic: bytes, limit: int, who: str, what: str, *,
                stranger: str | None = None) -> bytes:
    """The body of one length-prefixed message: ``magic``, a 4-byte big-endian length, that many bytes;
    ``stranger`` replaces the sentence said when the magic is wrong (it gets `` (got ...).`` appended)."""
    head = read_exactly(len(magic))
    if head != magic:
        if stranger is not None:
            raise ProtocolError(f"{stranger} (got {head[:24]!r}).")
        raise ProtocolError(f"the {who} sent {head[:24]!r} where {magic[:-1].decode()} belongs; it does not speak "
                            f"blindbox attested TLS version {VERSION}.")
    size_bytes = read_exactly(4)
    if len(size_bytes) != 4:
        raise ProtocolError(f"the {who}'s {what} ended before its length.")
    size = int.from_bytes(size_bytes, "big")
    if size > limit:
        raise ProtocolError(f"the {who} announces {size} bytes of {what}, more than the {limit} accepted.")
    body = read_exactly(size)
    if len(body) != size:
        raise ProtocolError(f"the {who}'s {what} ended after {len(body)} of {size} bytes.")
    return body


def encode_client(cert_der: bytes) -> bytes:
    """The client's certificate message (``b""``: the client has no key)."""
    if len(cert_der) > MAX_CLIENT_CERT_BYTES:
        raise ProtocolError(f"the client certificate is {len(cert_der)} bytes, more than the {MAX_CLIENT_CERT_BYTES} "
                            f"an agent accepts.")
    return CLIENT + len(cert_der).to_bytes(4, "big") + cert_der


def read_client(read_exactly: Callable[[int], bytes]) -> bytes:
    """The DER certificate of a client's certificate message (``b""``: none)."""
    return _read_sized(read_exactly, CLIENT, MAX_CLIENT_CERT_BYTES, "client", "certificate")


@dataclass(frozen=True)
class ClientVerdict:
    """What the agent decided about the client (after :data:`CLIENT`, and :data:`PROVE` if asked)."""

    accepted: bool
    client_sha256: str | None      # SHA-256 (hex) of the client certificate's SubjectPublicKeyInfo, if any
    reason: str


def encode_verdict(verdict: ClientVerdict) -> bytes:
    doc = {"accepted": verdict.accepted, "client_sha256": verdict.client_sha256, "reason": verdict.reason[:1000]}
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return VERDICT + len(body).to_bytes(4, "big") + body


def read_verdict(read_exactly: Callable[[int], bytes]) -> ClientVerdict:
    """The agent's verdict about this client; malformed is a ProtocolError."""
    body = _read_sized(read_exactly, VERDICT, MAX_VERDICT_BYTES, "server", "verdict")
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("the agent's verdict is not UTF-8 JSON.") from None
    if not isinstance(doc, dict) or set(doc) != {"accepted", "client_sha256", "reason"}:
        raise ProtocolError("the agent's verdict is not an object with exactly accepted, client_sha256 and reason.")
    digest = doc["client_sha256"]
    if not isinstance(doc["accepted"], bool) or not isinstance(doc["reason"], str) or not (
            digest is None or isinstance(digest, str) and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest)):
        raise ProtocolError("the agent's verdict has a member of the wrong type.")
    return ClientVerdict(accepted=doc["accepted"], client_sha256=digest, reason=doc["reason"])


# ---------------------------------------------------------------------------------------
# the SubjectPublicKeyInfo of a certificate (a minimal DER walk, enough for X.509 v1-v3)

def _der_header(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at ``pos``."""
    if pos + 2 > len(data):
        raise ProtocolError("the certificate is truncated.")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ProtocolError("the certificate has a DER length it cannot be read with.")
        length = int.from_bytes(data[pos:pos + n], "big")
        if length < 0x80 or (n > 1 and data[pos] == 0):
            raise ProtocolError("the certificate's DER lengths are not minimal.")
        pos += n
    if pos + length > len(data):
        raise ProtocolError("the certificate is truncated.")
    return tag, pos, pos + length


def certificate_spki(cert_der: bytes) -> bytes:
    """The DER bytes of a certificate's SubjectPublicKeyInfo (what :func:`report_data` hashes)."""
    tag, start, end = _der_header(cert_der, 0)
    if tag != 0x30 or end != len(cert_der):
        raise ProtocolError("the TLS certificate is not one DER SEQUENCE.")
    tag, pos, tbs_end = _der_header(cert_der, start)
    if tag != 0x30:
        raise ProtocolError("the TLS certificate has no tbsCertificate.")
    index = 0
    while pos < tbs_end:
        tag, contents, element_end = _der_header(cert_der, pos)
        if index == 0 and tag == 0xA0:          # [0] version: not counted
            pos = element_end
            continue
        if index == 5:                          # serial, signature, issuer, validity, subject, SPKI
            if tag != 0x30:
                raise ProtocolError("the TLS certificate's subjectPublicKeyInfo is not a SEQUENCE.")
            return cert_der[pos:element_end]
        index += 1
        pos = element_end
    raise ProtocolError("the TLS certificate has no subjectPublicKeyInfo.")


__all__ = ["SIM_MAGIC", "ATTESTERS", "CLIENT", "ClientVerdict", "DOMAIN", "EVIDENCE", "Evidence", "HELLO",
           "MAX_CLIENT_CERT_BYTES", "MAX_EVIDENCE_BYTES", "MAX_VERDICT_BYTES", "NONCE_SIZE", "PROVE", "PROVEN",
           "ProtocolError", "REPORT_DATA_SIZE", "VERDICT", "VERSION", "certificate_spki", "encode_client",
           "encode_evidence", "encode_hello", "encode_verdict", "parse_evidence", "read_client", "read_evidence",
           "read_hello", "read_verdict", "recv_exactly", "report_data"]
