"""The host's certificate table (GHCB extended guest request): GUIDs, bounds, and refusals.

No raw extended-report certificate table is among the recorded vectors (tests/fixtures/vectors/
PROVENANCE.md), so the tables here are built around real certificates: Oak's Genoa VCEK with
go-sev-guest's Genoa ASK and ARK, and the real Genoa report they sign goes through
verify_evidence.  The GUID wire order is pinned to the order AMD's sev-guest tool (uuid_parse),
go-sev-guest (uuid.Parse) and virtee's sev crate (Uuid::as_bytes) write: the text's order.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from blindbox.audit.attested import BINDING_CHECK, verify_evidence
from blindbox.audit.certtable import (GUIDS, MAX_ENTRIES, CertTableEntry, CertTableError, encode_cert_table,
                                      parse_cert_table)
from blindbox.audit.verify import FAIL, PASS, ManifestEntry
from measure.attested_tls import Evidence
from tests.conftest import VECTORS

GENOA_VCEK = (VECTORS / "oak" / "genoa_oc_vcek.der").read_bytes()
GENOA_REPORT = (VECTORS / "oak" / "genoa_oc_attestation_report.bin").read_bytes()


def _genoa_ask_ark() -> tuple[bytes, bytes]:
    ask, ark = x509.load_pem_x509_certificates((VECTORS / "go-sev-guest" / "ask_ark_genoa.pem").read_bytes())
    return ask.public_bytes(serialization.Encoding.DER), ark.public_bytes(serialization.Encoding.DER)


def test_guid_facts_and_wire_order():
    assert str(GUIDS["vcek"]) == "63da758d-e664-4564-adc5-f4b93be8accd"
    assert str(GUIDS["ask"]) == "4ab7b379-bbac-4fe4-a02f-05aef327c782"
    assert str(GUIDS["ark"]) == "c0b406a4-a803-4952-9743-3fb6014cd0ae"
    assert str(GUIDS["vlek"]) == "a8074bc2-a25a-483e-aae6-39c045a0b8a1"
    table = encode_cert_table({"vcek": b"V", "ark": b"R"})
    assert table[:16].hex() == "63da758de6644564adc5f4b93be8accd"
    assert table[24:40].hex() == "c0b406a4a803495297433fb6014cd0ae"
    assert table[16:24] == (72).to_bytes(4, "little") + (1).to_bytes(4, "little")  # 3 entries * 24
    assert table[48:72] == bytes(24) and table[72:] == b"VR"
    assert CertTableEntry.SIZE == 24 and CertTableEntry.offset_of("offset") == 16


def test_real_certificates_round_trip():
    ask, ark = _genoa_ask_ark()
    for order in ("rfc4122", "le"):
        table = parse_cert_table(encode_cert_table({"vcek": GENOA_VCEK, "ask": ask, "ark": ark}, guid_order=order))
        assert table == {"vcek": GENOA_VCEK, "ask": ask, "ark": ark}


def test_other_guids_are_named_by_their_text_and_padding_is_allowed():
    other = "92f81bc3-5811-4d3d-97ff-d19f88dc67ea"
    blob = encode_cert_table({"vlek": b"L", other: b"C"}) + bytes(4000)
    assert parse_cert_table(blob) == {"vlek": b"L", other: b"C"}
    assert parse_cert_table(b"") == {}


def test_a_real_report_verifies_through_a_table():
    """Oak's real Genoa report, its VCEK and AMD's Genoa ASK/ARK in a table: the chain and signature
    pass; REPORT_DATA is not this connection's binding, and that check alone fails."""
    ask, ark = _genoa_ask_ark()
    evidence = Evidence(report=GENOA_REPORT, certs=encode_cert_table({"vcek": GENOA_VCEK, "ask": ask, "ark": ark}),
                        attester="sev-guest")
    measurement = GENOA_REPORT[0x90:0xC0]
    # any certificate serves as the "peer" here
    verdict = verify_evidence(evidence, peer_cert_der=GENOA_VCEK,
                              nonce=bytes(32), manifest=(ManifestEntry("s", measurement),), allow_debug=True,
                              at=datetime(2025, 9, 1, tzinfo=timezone.utc))
    status = {c.name: c.status for c in verdict.checks}
    assert status["chain"] == PASS and status["signature"] == PASS and status["measurement.manifest"] == PASS
    assert status[BINDING_CHECK] == FAIL
    assert [c.name for c in verdict.failures] == [BINDING_CHECK]
    assert verdict.table == ("vcek", "ask", "ark")


def _entry(guid: bytes, offset: int, length: int) -> bytes:
    return CertTableEntry(guid=guid, offset=offset, length=length).to_bytes()


VCEK = GUIDS["vcek"].bytes
ASK = GUIDS["ask"].bytes


@pytest.mark.parametrize("blob, message", [
    (b"\x01" * 10, "no all-zero entry ending it within its 10 bytes"),
    (_entry(VCEK, 48, 1), "no all-zero entry ending it within its 24 bytes"),
    (_entry(VCEK, 48, 1) + _entry(bytes(16), 5, 0) + b"x", "entry 1 has a zero GUID but offset 5"),
    (_entry(VCEK, 10, 4) + bytes(24) + b"abcd", "entry 0 (vcek) starts at offset 10, inside the table itself"),
    (_entry(VCEK, 48, 5) + bytes(24) + b"abcd", "spans bytes [48, 53) but the blob has only 52"),
    (_entry(VCEK, 0xFFFFFFFF, 0xFFFFFFFF) + bytes(24), "spans bytes [4294967295, 8589934590)"),
    (_entry(VCEK, 48, 0) + bytes(24), "entry 0 (vcek) has length 0"),
    (_entry(VCEK, 72, 1) + _entry(VCEK, 73, 1) + bytes(24) + b"ab", "lists VCEK twice (entry 1)"),
    (_entry(VCEK, 72, 1) + _entry(GUIDS["vcek"].bytes_le, 73, 1) + bytes(24) + b"ab", "lists VCEK twice"),
    (b"".join(_entry(uuid.UUID(int=i + 1).bytes, 0, 1) for i in range(MAX_ENTRIES + 1)) + bytes(24),
     f"more than {MAX_ENTRIES} entries"),
])
def test_malformed_tables_are_refused(blob, message):
    with pytest.raises(CertTableError) as info:
        parse_cert_table(blob)
    assert message in str(info.value)
    assert info.value.exit_code == 2
    assert str(info.value).endswith(".")


def test_malformed_table_in_evidence_is_a_failed_check():
    evidence = Evidence(report=GENOA_REPORT, certs=_entry(ASK, 48, 0) + bytes(24), attester="sev-guest")
    verdict = verify_evidence(evidence, peer_cert_der=GENOA_VCEK, nonce=bytes(32),
                              manifest=(ManifestEntry("s", bytes(48)),))
    assert not verdict.ok
    assert verdict.failures[0].name == "evidence"
    assert "entry 0 (ask) has length 0" in verdict.failures[0].detail
