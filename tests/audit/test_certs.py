"""AMD certificates: the DER reader against cryptography's, pinned roots, AMD extensions."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from blindbox.audit import certs
from blindbox.audit.certs import (PINNED, CertificateError, amd_chains, amd_key_info, build_chain,
                                  collect_certificates, issuer_product, load_certificates, parse_certificate)
from blindbox.audit.errors import ChainInvalid
from blindbox.audit.report import Product, SigningKey
from tests.conftest import VECTORS

LEAVES = {
    "go-sev-guest/vcek.testcer": (Product.MILAN, SigningKey.VCEK),
    "oak/milan_oc_release_vcek.der": (Product.MILAN, SigningKey.VCEK),
    "oak/genoa_oc_vcek.der": (Product.GENOA, SigningKey.VCEK),
    "oak/turin_oc_vcek.der": (Product.TURIN, SigningKey.VCEK),
    "trustee/test-vlek.der": (Product.MILAN, SigningKey.VLEK),
    "virtee-sev/certs_data/vcek_milan.der": (Product.MILAN, SigningKey.VCEK),
    "virtee-sev/certs_data/vcek_turin.der": (Product.TURIN, SigningKey.VCEK),
}
BUNDLES = sorted(p.relative_to(VECTORS).as_posix() for p in VECTORS.glob("**/*")
                 if p.is_file() and (p.suffix == ".pem" and "ask" in p.name or p.name.startswith("cert_chain")
                                     or p.name.endswith("_ark.pem")))
# A time inside every vector certificate's validity.
AT = dt.datetime(2025, 9, 1, tzinfo=dt.timezone.utc)


def load(rel: str):
    return load_certificates((VECTORS / rel).read_bytes(), source=rel)


def pyca(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _der_length(der: bytes, pos: int) -> tuple[int, int]:
    """(content start, content length) of the DER element whose tag is at ``pos``."""
    first = der[pos + 1]
    if first < 0x80:
        return pos + 2, first
    n = first & 0x7F
    return pos + 2 + n, int.from_bytes(der[pos + 2:pos + 2 + n], "big")


def _serial_zero_to_one(der: bytes) -> bytes:
    """The certificate with serial number 0 rewritten as 1 (same length; signature not redone).

    cryptography has announced it will refuse serial 0, which every VCEK and VLEK has; the
    differential check reads the renumbered copy with both readers, so it runs whatever
    cryptography decides.  Certificates with another serial are returned unchanged.
    """
    tbs, _ = _der_length(der, 0)
    pos, _ = _der_length(der, tbs)
    if der[pos] == 0xA0:                           # [0] EXPLICIT version
        start, length = _der_length(der, pos)
        pos = start + length
    if der[pos:pos + 3] != b"\x02\x01\x00":
        return der
    return der[:pos + 2] + b"\x01" + der[pos + 3:]


def _renumbered(data: bytes) -> bytes:
    if b"-----BEGIN" not in data:
        return _serial_zero_to_one(data)
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", data, re.S)
    return b"".join(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(_serial_zero_to_one(base64.b64decode(b)))
                    + b"-----END CERTIFICATE-----\n" for b in blocks)


@pytest.mark.parametrize("rel", [*LEAVES, *BUNDLES])
def test_reader_agrees_with_cryptography(rel):
    """Differential check of the DER reader; cryptography's loader is used here, in tests only.

    Both read a copy whose serial 0 became 1, which cryptography loads whatever its policy on
    serial 0; the original must then read exactly as the copy but for that one byte.
    """
    data = (VECTORS / rel).read_bytes()
    ours = load_certificates(data, source=rel)
    copy = _renumbered(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # serial 1 is valid: nothing to warn about
        theirs = pyca(copy)
    ours_copy = load_certificates(copy, source=rel)
    _compare(ours_copy, theirs)
    assert len(ours) == len(ours_copy)
    for a, b in zip(ours, ours_copy, strict=True):
        if a.serial == 0:
            assert b.serial == 1 and len(a.der) == len(b.der) and len(a.tbs) == len(b.tbs)
            assert sum(x != y for x, y in zip(a.der, b.der, strict=True)) == 1
        else:
            assert a.der == b.der
        assert (a.signature, a.spki, a.not_before, a.not_after, a.issuer, a.subject, a.extensions,
                a.algorithm) == (b.signature, b.spki, b.not_before, b.not_after, b.issuer, b.subject,
                                 b.extensions, b.algorithm)
    if rel in LEAVES:
        assert [c.serial for c in ours] == [0]   # so the renumbering above was exercised


def _compare(ours, theirs):
    assert len(ours) == len(theirs) >= 1
    for a, b in zip(ours, theirs, strict=True):
        assert a.der == b.public_bytes(serialization.Encoding.DER)
        assert a.tbs == b.tbs_certificate_bytes
        assert a.signature == b.signature
        assert a.serial == b.serial_number
        assert a.not_before == b.not_valid_before_utc and a.not_after == b.not_valid_after_utc
        assert a.issuer.der == b.issuer.public_bytes() and a.subject.der == b.subject.public_bytes()
        assert a.issuer.common_name == b.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert a.spki == b.public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
        assert [(e.oid, e.critical) for e in a.extensions] == \
            [(e.oid.dotted_string, e.critical) for e in b.extensions]
        for e in b.extensions:
            if isinstance(e.value, x509.UnrecognizedExtension):
                assert a.extension(e.oid.dotted_string).value == e.value.value
        assert a.algorithm.kind == "rsa-pss" and a.algorithm.hash_name == "sha384"
        assert (a.algorithm.salt_length, a.algorithm.mgf_hash_name) == (48, "sha384")


def test_every_amd_leaf_has_serial_zero_and_loads_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for rel, (product, kind) in LEAVES.items():
            (cert,) = load(rel)
            assert cert.serial == 0
            chain = build_chain(cert, kind=kind, product=product, at=AT)
            assert chain.amd_product is product


def test_verification_does_not_use_the_x509_loader(monkeypatch):
    """cryptography has announced it will refuse serial 0; nothing here depends on that loader."""
    def refuse(*a, **k):
        raise ValueError("serial number 0 is not allowed")
    for name in ("load_der_x509_certificate", "load_pem_x509_certificate", "load_pem_x509_certificates"):
        monkeypatch.setattr(x509, name, refuse)
    for rel, (product, kind) in LEAVES.items():
        (cert,) = load(rel)
        build_chain(cert, kind=kind, product=product, at=AT)


def test_bundled_roots_are_the_pinned_ones_and_match_both_upstream_copies():
    chains = amd_chains()
    for product, pins in PINNED.items():
        chain = chains[product]
        assert {r: getattr(chain, r).fingerprint for r in pins} == pins
        name = product.value.lower()
        virtee_ark, = load(f"virtee-sev/amd-builtin-certs/{name}_ark.pem")
        virtee_ask, = load(f"virtee-sev/amd-builtin-certs/{name}_ask.pem")
        go_vcek = load(f"go-sev-guest/ask_ark_{name}{'_vcek' if product is Product.TURIN else ''}.pem")
        go_vlek = load(f"go-sev-guest/ask_ark_{name}_vlek.pem")
        assert virtee_ark.fingerprint == go_vcek[1].fingerprint == go_vlek[1].fingerprint == pins["ark"]
        assert virtee_ask.fingerprint == go_vcek[0].fingerprint == pins["ask"]
        assert go_vlek[0].fingerprint == pins["asvk"]
        assert chain.ark.subject.common_name == f"ARK-{product.value}"
        assert chain.ask.subject.common_name == f"SEV-{product.value}"
        assert chain.asvk.subject.common_name == f"SEV-VLEK-{product.value}"
        assert chain.ask.signed_by(chain.ark) and chain.asvk.signed_by(chain.ark)


def test_a_modified_bundled_root_is_refused(monkeypatch):
    amd_chains.cache_clear()
    pins = {p: dict(v) for p, v in PINNED.items()}
    pins[Product.GENOA]["ark"] = "00" * 32
    monkeypatch.setattr(certs, "PINNED", pins)
    try:
        with pytest.raises(ChainInvalid, match="genoa_ark.pem .* reinstall"):
            amd_chains()
    finally:
        amd_chains.cache_clear()


def test_amd_extensions():
    expect_hw = {Product.MILAN: 64, Product.GENOA: 64, Product.TURIN: 8}
    for rel, (product, kind) in LEAVES.items():
        (cert,) = load(rel)
        info = amd_key_info(cert)
        assert issuer_product(cert) is product
        assert info.product_name.split("-")[0] == product.value
        assert {"boot_loader", "tee", "snp", "microcode"} <= set(info.spl)
        assert ("fmc" in info.spl) == (product is Product.TURIN)
        if kind is SigningKey.VCEK:
            assert len(info.hw_id) == expect_hw[product] and info.csp_id is None
        else:
            assert info.hw_id is None and info.csp_id == "CN=cc-us-east-2.amazonaws.com"
    (turin,) = load("oak/turin_oc_vcek.der")
    assert amd_key_info(turin).hw_id.hex() == "3b42092f69c656d3"
    (vlek,) = load("trustee/test-vlek.der")
    assert amd_key_info(vlek).spl == dict(boot_loader=4, tee=0, snp=24, microcode=0xD9)  # 0xd9: 2-byte INTEGER


def test_chain_errors_are_named_and_explained():
    (milan,) = load("oak/milan_oc_release_vcek.der")
    with pytest.raises(ChainInvalid, match="Milan chain .* Genoa"):
        build_chain(milan, kind=SigningKey.VCEK, product=Product.GENOA, at=AT)
    with pytest.raises(ChainInvalid, match="other key type"):
        build_chain(milan, kind=SigningKey.VLEK, product=Product.MILAN, at=AT)
    with pytest.raises(ChainInvalid, match="not at 2040-01-01.*--at"):
        build_chain(milan, kind=SigningKey.VCEK, product=Product.MILAN,
                    at=dt.datetime(2040, 1, 1, tzinfo=dt.timezone.utc))
    # A VCEK whose signature bytes were changed no longer chains.
    der = bytearray(milan.der)
    der[-10] ^= 0x01
    forged = parse_certificate(bytes(der), source="forged")
    with pytest.raises(ChainInvalid, match="corrupt or forged"):
        build_chain(forged, kind=SigningKey.VCEK, product=Product.MILAN, at=AT)
    # An intermediate is not a leaf.
    ask = amd_chains()[Product.MILAN].ask
    with pytest.raises(ChainInvalid, match="P-384"):
        build_chain(ask, kind=SigningKey.VCEK, product=Product.MILAN, at=AT)


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d[:-1], "past its container|trailing|truncated"),
    (lambda d: d + b"\0", "trailing"),
    (lambda d: b"\x30\x80" + d[4:], "indefinite"),
    (lambda d: b"\x30\x83\x00" + d[2:], "non-minimal|bad length"),
    (lambda d: b"", "truncated"),
    (lambda d: b"\x04\x02ab", "expected tag 0x30"),
])
def test_non_der_is_rejected(mutate, match):
    (cert,) = load("oak/genoa_oc_vcek.der")
    with pytest.raises(CertificateError, match=match):
        parse_certificate(mutate(cert.der), source="x")


def test_pem_and_directory_handling(tmp_path):
    with pytest.raises(CertificateError, match="no CERTIFICATE block"):
        load_certificates((VECTORS / "virtee-sev/measurement/test_id_key.pem").read_bytes(), source="k")
    with pytest.raises(CertificateError, match="base64"):
        load_certificates(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", source="p")
    (tmp_path / "vcek.der").write_bytes((VECTORS / "oak/genoa_oc_vcek.der").read_bytes())
    (tmp_path / "chain.pem").write_bytes((VECTORS / "go-sev-guest/ask_ark_genoa.pem").read_bytes())
    (tmp_path / "notes.txt").write_text("not a certificate")
    (tmp_path / "sub").mkdir()
    found, ignored = collect_certificates([tmp_path])
    assert [c.subject.common_name for c in found] == ["SEV-Genoa", "ARK-Genoa", "SEV-VCEK"]
    assert ignored == [str(tmp_path / "notes.txt")]
    with pytest.raises(CertificateError):
        collect_certificates([tmp_path / "notes.txt"])


def test_fingerprint_is_sha256_of_der():
    (cert,) = load("oak/turin_oc_vcek.der")
    assert cert.fingerprint == hashlib.sha256((VECTORS / "oak/turin_oc_vcek.der").read_bytes()).hexdigest()


@pytest.mark.parametrize("name, data", [
    ("vcek.pem", b"garbage, not a certificate\n"),
    ("ask.der", b"\x00\x01garbage"),
    ("blob", b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
    ("vcek", (VECTORS / "oak/genoa_oc_vcek.der").read_bytes()[:-1]),      # truncated DER
])
def test_damaged_certificate_in_a_directory_is_an_error_naming_it(name, data, tmp_path, capsys):
    from blindbox.cli import main
    (tmp_path / "vcek.der").write_bytes((VECTORS / "oak/genoa_oc_vcek.der").read_bytes())
    (tmp_path / name).write_bytes(data)
    with pytest.raises(CertificateError) as ei:
        collect_certificates([tmp_path])
    assert str(ei.value).startswith(str(tmp_path / name)) or f"of {tmp_path / name}" in str(ei.value)
    assert str(ei.value).endswith(f"(in the --certs directory {tmp_path}); replace or remove that file.")
    rc = main(["verify-report", str(VECTORS / "oak/genoa_oc_attestation_report.bin"), "--certs", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and str(tmp_path / name) in err and "replace or remove that file" in err, err
