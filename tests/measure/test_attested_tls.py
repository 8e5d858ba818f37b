"""The attested-TLS protocol pieces: REPORT_DATA binding (with a fixed vector), messages, SPKI extraction."""

from __future__ import annotations

import hashlib
import io

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from measure import attested_tls as at

NONCE = bytes(range(32))
SPKI = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004") + bytes(range(64))


def test_report_data_vector():
    """A worked vector (docs/attested-tls.md): the construction written out with hashlib by hand."""
    expected = hashlib.sha512(b"blindbox-guest attested-tls v1\x00" + hashlib.sha256(SPKI).digest() + NONCE
                              + bytes(32)).hexdigest()
    assert at.report_data(SPKI, NONCE).hex() == expected
    # the published vector: this SPKI, nonce 00 01 .. 1f, without and with a policy digest of 0x11 bytes
    assert expected == ("42a7f491fd3b42fbdc4c422706e2714f03e48035b870d80f939ffbc16cc3865b"
                        "d40c97af246c190676ba723c91a581b96bbb3203a10f5ca5f0d5907874ba39d6")
    assert at.report_data(SPKI, NONCE, b"\x11" * 32).hex() == (
        "842c086182b22651f50aa39d6afd6c4d70004928578371c163ae216c632e4041"
        "d589f466cd26036f08aaa3feff1c08d6324a242f413a4f3138ef848201503cee")
    assert at.report_data(SPKI + b"\0", NONCE) != at.report_data(SPKI, NONCE)


@pytest.mark.parametrize("kwargs, message", [
    ({"nonce": b"x" * 31}, "a nonce is 32 bytes, not 31"),
    ({"policy_sha256": b"x"}, r"is 32 bytes \(SHA-256\), not 1"),
    ({"spki_der": b""}, "SubjectPublicKeyInfo is empty"),
])
def test_report_data_refuses_wrong_sizes(kwargs, message):
    args = {"spki_der": SPKI, "nonce": NONCE, **kwargs}
    with pytest.raises(at.ProtocolError, match=message):
        at.report_data(**args)


def _reader(data: bytes):
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        chunk = data[pos:pos + n]
        pos += len(chunk)
        return chunk
    return read


def test_hello_and_evidence_round_trip():
    assert at.read_hello(_reader(at.encode_hello(NONCE))) == NONCE
    ev = at.Evidence(report=bytes(1184), certs=b"\x01\x02", attester="simulated", policy_sha256=b"\x22" * 32)
    assert at.read_evidence(_reader(at.encode_evidence(ev))) == ev
    ev2 = at.Evidence(report=b"r", certs=b"", attester="sev-guest")
    assert at.read_evidence(_reader(at.encode_evidence(ev2))) == ev2


@pytest.mark.parametrize("data, message", [
    (b"GET / HTTP/1.1\r\n\r\n" + bytes(40), "did not start with BLINDBOX-ATTEST/2"),
    (at.HELLO + bytes(5), "ended after 5 of 32 nonce bytes"),
])
def test_bad_hello(data, message):
    with pytest.raises(at.ProtocolError, match=message):
        at.read_hello(_reader(data))


def _msg(body: bytes, size: int | None = None) -> bytes:
    return at.EVIDENCE + (len(body) if size is None else size).to_bytes(4, "big") + body


@pytest.mark.parametrize("data, message", [
    (b"HTTP/1.1 200 OK\r\n", r"did not answer with BLINDBOX-EVIDENCE/2; it is not a blindbox attestation agent "
                             r"\(version 2\) \(got b'HTTP/1.1 200 OK\\r\\n'\)\.$"),
    (_msg(b"", size=1 << 20), r"the server announces 1048576 bytes of evidence, more than the 65536 accepted\.$"),
    (at.EVIDENCE + b"\0\0", r"the server's evidence ended before its length\.$"),
    (_msg(b"{}", size=10), r"the server's evidence ended after 2 of 10 bytes\.$"),
    (_msg(b"\xff"), "not UTF-8 JSON"),
    (_msg(b"[]"), "exactly version, attester"),
    (_msg(b'{"version":1,"attester":"simulated","report":"","certs":"","policy_sha256":null}'), "version 1"),
    (_msg(b'{"version":2,"attester":"hw","report":"","certs":"","policy_sha256":null}'), "attester 'hw'"),
    (_msg(b'{"version":2,"attester":"simulated","report":"!!","certs":"","policy_sha256":null}'), "not valid base64"),
    (_msg(b'{"version":2,"attester":"simulated","report":"","certs":"","policy_sha256":"AB"}'), "policy_sha256"),
])
def test_bad_evidence(data, message):
    with pytest.raises(at.ProtocolError, match=message):
        at.read_evidence(_reader(data))


def _cert(key, signer=None) -> bytes:
    import datetime
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "blindbox agent")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(7).not_valid_before(datetime.datetime(2026, 1, 1))
               .not_valid_after(datetime.datetime(2027, 1, 1)))
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer or key, algorithm).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1()),
                                 rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate()],
                         ids=["p256", "p384", "rsa2048", "ed25519"])
def test_certificate_spki_is_what_cryptography_says(key):
    der = _cert(key)
    expected = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    assert at.certificate_spki(der) == expected


@pytest.mark.parametrize("mangle, message", [
    (lambda d: d[:-1], "not one DER SEQUENCE|truncated"),
    (lambda d: b"\x31" + d[1:], "not one DER SEQUENCE"),
    (lambda d: d + b"\0", "not one DER SEQUENCE"),
    (lambda d: d[:2], "truncated|cannot be read"),
])
def test_certificate_spki_refuses_malformed(mangle, message):
    der = _cert(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(at.ProtocolError, match=message):
        at.certificate_spki(mangle(der))


def test_recv_exactly_collects_short_reads_and_stops_at_the_end():
    class Trickle:
        def __init__(self, data: bytes):
            self.data = data

        def recv(self, size: int) -> bytes:
            chunk, self.data = self.data[:min(size, 3)], self.data[min(size, 3):]
            return chunk
    assert at.recv_exactly(Trickle(b"0123456789"), 8) == b"01234567"
    assert at.recv_exactly(Trickle(b"0123"), 8) == b"0123"
    hello = Trickle(at.encode_hello(NONCE))
    assert at.read_hello(lambda n: at.recv_exactly(hello, n)) == NONCE


# -- version 2: the client's certificate and the agent's verdict


def test_client_and_verdict_messages_round_trip():
    cert = b"0\x82 some DER"
    message = at.encode_client(cert)
    assert message == b"BLINDBOX-CLIENT/2\n" + len(cert).to_bytes(4, "big") + cert
    assert at.read_client(io.BytesIO(message).read) == cert
    assert at.read_client(io.BytesIO(at.encode_client(b"")).read) == b""
    verdict = at.ClientVerdict(False, "ab" * 32, "client key abab... is not listed")
    encoded = at.encode_verdict(verdict)
    assert encoded.startswith(b"BLINDBOX-VERDICT/2\n")
    assert at.read_verdict(io.BytesIO(encoded).read) == verdict


@pytest.mark.parametrize("data, message", [
    (b"BLINDBOX-CLIENT/1\n\0\0\0\0", "where BLINDBOX-CLIENT/2 belongs"),
    (at.CLIENT + (at.MAX_CLIENT_CERT_BYTES + 1).to_bytes(4, "big"), "more than the 16384 accepted"),
    (at.CLIENT + b"\0\0", "ended before its length"),
    (at.CLIENT + b"\0\0\0\x09abc", "ended after 3 of 9 bytes"),
])
def test_bad_client_message(data, message):
    with pytest.raises(at.ProtocolError, match=message):
        at.read_client(io.BytesIO(data).read)


def _verdict(body: bytes) -> bytes:
    return at.VERDICT + len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("data, message", [
    (_verdict(b"\xff"), "not UTF-8 JSON"),
    (_verdict(b'{"accepted":true}'), "exactly accepted, client_sha256 and reason"),
    (_verdict(b'{"accepted":1,"client_sha256":null,"reason":""}'), "wrong type"),
    (_verdict(b'{"accepted":true,"client_sha256":"AB","reason":""}'), "wrong type"),
    (at.VERDICT + (at.MAX_VERDICT_BYTES + 1).to_bytes(4, "big"), "more than the 4096 accepted"),
])
def test_bad_verdict(data, message):
    with pytest.raises(at.ProtocolError, match=message):
        at.read_verdict(io.BytesIO(data).read)
