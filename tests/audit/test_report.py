"""ATTESTATION_REPORT parsing: every real vector, strictness, TCB layouts per product."""

from __future__ import annotations


import pytest

from measure import record
from measure.errors import InputError, LayoutError
from blindbox.audit.report import (REPORT_SIZE, SIGNED_SIZE, EcdsaSignature, Product, ReportV2, ReportV3, ReportV5,
                                   SigningKey, TcbVersionMilan, TcbVersionTurin, cpuid_product, describe, encode_tcb,
                                   parse_report, signed_region, signing_key, tcb_components)
from tests.conftest import VECTORS

REPORTS = {
    "virtee-milan-v2": "virtee-sev/certs_data/report_milan.hex",
    "go-milan-v2": "go-sev-guest/attestation.bin",
    "oak-milan-v3": "oak/milan_oc_release_attestation_report.bin",
    "oak-genoa-v5": "oak/genoa_oc_attestation_report.bin",
    "oak-turin-v5": "oak/turin_oc_attestation_report.bin",
    "trustee-vlek-v3": "trustee/test-vlek-report.bin",
}


def load(name: str) -> bytes:
    return (VECTORS / REPORTS[name]).read_bytes()


def covered_offsets(cls) -> set[int]:
    """Byte offsets that belong to a declared field (the rest is reserved)."""
    out = set()
    for f in record.fields(cls):
        spec = f.metadata["layout"]
        out.update(range(spec.offset, spec.offset + spec.size))
    return out


def test_layouts_match_the_spec_offsets():
    assert ReportV2.SIZE == ReportV3.SIZE == ReportV5.SIZE == REPORT_SIZE == 0x4A0
    assert ReportV2.offset_of("measurement") == 0x90
    assert ReportV2.offset_of("chip_id") == 0x1A0
    assert ReportV2.offset_of("signature") == SIGNED_SIZE == 0x2A0
    assert ReportV3.offset_of("cpuid_fam_id") == 0x188
    assert ReportV5.offset_of("launch_mit_vector") == 0x1F8
    assert ReportV5.offset_of("current_mit_vector") == 0x200
    # v2 reserves what v3 uses for CPUID; v3 reserves what v5 uses for the mitigation vectors.
    assert 0x188 not in covered_offsets(ReportV2) and 0x188 in covered_offsets(ReportV3)
    assert 0x1F8 not in covered_offsets(ReportV3) and 0x1F8 in covered_offsets(ReportV5)
    assert EcdsaSignature.SIZE == 0x200


@pytest.mark.parametrize("name", REPORTS)
def test_every_vector_parses_and_round_trips(name):
    data = load(name)
    report = parse_report(data)
    raw = bytes.fromhex(data.decode()) if name.startswith("virtee") else data
    assert report.to_bytes() == raw
    assert signed_region(report) == raw[:0x2A0]
    assert describe(report, cpuid_product(report) or Product.MILAN)["measurement"] == raw[0x90:0xC0].hex()


def test_versions_products_and_signing_keys():
    got = {n: (type(parse_report(load(n))).__name__, cpuid_product(parse_report(load(n))),
               signing_key(parse_report(load(n)))) for n in REPORTS}
    assert got == {
        "virtee-milan-v2": ("ReportV2", None, SigningKey.VCEK),
        "go-milan-v2": ("ReportV2", None, SigningKey.VCEK),
        "oak-milan-v3": ("ReportV3", Product.MILAN, SigningKey.VCEK),
        "oak-genoa-v5": ("ReportV5", Product.GENOA, SigningKey.VCEK),
        "oak-turin-v5": ("ReportV5", Product.TURIN, SigningKey.VCEK),
        "trustee-vlek-v3": ("ReportV3", Product.MILAN, SigningKey.VLEK),
    }


def test_virtee_fields_as_published():
    r = parse_report(load("virtee-milan-v2"))
    assert (r.version, r.policy) == (2, 0x30000)
    assert r.measurement.hex() == ("7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d"
                                   "3e1a0dc39b2c60bd95b9c480cd81841f")
    assert r.reported_tcb.to_bytes(8, "little").hex() == "0300000000000873"
    assert tcb_components(r.reported_tcb, Product.MILAN) == dict(boot_loader=3, tee=0, snp=8, microcode=0x73)


def test_turin_tcb_layout_differs():
    r = parse_report(load("oak-turin-v5"))
    assert tcb_components(r.reported_tcb, Product.TURIN) == dict(fmc=0, boot_loader=1, tee=0, snp=2,
                                                                 microcode=0x47)
    # Read with the Milan layout, Turin's SNP byte (3) lands in a reserved byte.
    with pytest.raises(LayoutError, match=r"offset 0x3 .*Milan"):
        tcb_components(r.reported_tcb, Product.MILAN)
    assert TcbVersionMilan.SIZE == TcbVersionTurin.SIZE == 8
    for product in Product:
        levels = tcb_components(encode_tcb(product, boot_loader=1, tee=2, snp=3, microcode=4), product)
        assert {k: levels[k] for k in ("boot_loader", "tee", "snp", "microcode")} == \
            dict(boot_loader=1, tee=2, snp=3, microcode=4)
    assert encode_tcb(Product.TURIN, fmc=9, boot_loader=1, tee=2, snp=3, microcode=4).to_bytes(8, "little") \
        == bytes([9, 1, 2, 3, 0, 0, 0, 4])
    assert encode_tcb(Product.GENOA, boot_loader=1, tee=2, snp=3, microcode=4).to_bytes(8, "little") \
        == bytes([1, 2, 0, 0, 0, 0, 3, 4])


@pytest.mark.parametrize("name", ["go-milan-v2", "oak-milan-v3", "oak-genoa-v5"])
def test_every_reserved_byte_is_rejected(name):
    data = load(name)
    cls = type(parse_report(data))
    used = covered_offsets(cls)
    sig_used = {SIGNED_SIZE + o for o in covered_offsets(EcdsaSignature)}
    reserved = [o for o in range(REPORT_SIZE) if o not in used or (o >= SIGNED_SIZE and o not in sig_used)]
    assert len(reserved) > 580  # 416 in the signature, the rest in the body
    for off in reserved[::7] + [0x4C, 0x18B, 0x19F, 0x1EB, 0x1EF, 0x29F, 0x2D0, 0x318, 0x49F]:
        if off in used and off < SIGNED_SIZE:
            continue  # v3/v5 use some bytes v2 reserves
        bad = bytearray(data)
        bad[off] ^= 0x01
        with pytest.raises(LayoutError, match=f"offset {off:#x}"):
            parse_report(bytes(bad))


def test_hex_text_and_lengths():
    raw = bytes.fromhex(load("virtee-milan-v2").decode())
    assert parse_report(raw).to_bytes() == raw
    spaced = " ".join(raw.hex()[i:i + 32] for i in range(0, len(raw) * 2, 32)).encode() + b"\n"
    assert parse_report(spaced).to_bytes() == raw
    for bad in (raw[:-1], raw + b"\0", b"", raw.hex()[:-2].encode(), b"zz" * REPORT_SIZE):
        with pytest.raises(LayoutError, match="1184 bytes"):
            parse_report(bad)


@pytest.mark.parametrize("version", [0, 1, 4, 6, 0xFFFFFFFF])
def test_unknown_versions_are_rejected(version):
    bad = bytearray(load("go-milan-v2"))
    bad[0:4] = version.to_bytes(4, "little")
    with pytest.raises(LayoutError, match=f"VERSION {version} .*2, 3, 5"):
        parse_report(bytes(bad))


@pytest.mark.parametrize("offset,value,match", [
    (0x34, 2, "SIGNATURE_ALGO 2"),
    (0x34, 0, "SIGNATURE_ALGO 0"),
    (0x48, 1 << 5, "reserved bits .* 0x48"),
    (0x48, 2 << 2, "SIGNING_KEY .* is 2"),
    (0x48, 6 << 2, "SIGNING_KEY .* is 6"),
])
def test_bad_header_words(offset, value, match):
    bad = bytearray(load("oak-milan-v3"))
    bad[offset:offset + 4] = value.to_bytes(4, "little")
    with pytest.raises(LayoutError, match=match):
        parse_report(bytes(bad))


def test_policy_bit_17_must_be_one():
    bad = bytearray(load("oak-milan-v3"))
    bad[0x0A] &= ~0x02
    with pytest.raises(LayoutError, match="bit 17"):
        parse_report(bytes(bad))


def test_signature_fields_carry_48_of_72_bytes():
    r = parse_report(load("oak-turin-v5"))
    sig = r.signature
    assert 0 < sig.r_int < 1 << 384 and 0 < sig.s_int < 1 << 384
    assert EcdsaSignature.from_der(sig.to_der()) == sig
    bad = bytearray(load("oak-turin-v5"))
    bad[0x2A0 + 48] = 1  # R's upper 24 bytes are zero for P-384
    with pytest.raises(LayoutError, match="0x2d0"):
        parse_report(bytes(bad))


def test_product_names_parse():
    assert Product.parse("milan") is Product.MILAN
    assert Product.parse("Genoa") is Product.GENOA
    assert Product.parse("Turin-B0") is Product.TURIN
    with pytest.raises(InputError, match="Milan, Genoa, Turin"):
        Product.parse("Rome")
