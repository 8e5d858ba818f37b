"""A test ARK -> ASK -> VCEK chain made with ``cryptography``, and reports signed by it.

The CA certificates use RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48) like AMD's; the
VCEK holds a P-384 key and AMD's extensions (product name, SPLs, hwID).  Names follow
AMD's ("ARK-Milan", "SEV-Milan", "SEV-VCEK") so the product logic sees a normal chain,
but the keys are ours: only an explicit --trust-root makes the verifier accept it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from blindbox.audit.certs import OID_HW_ID, OID_PRODUCT_NAME, OID_SPL, OID_STRUCT_VERSION
from blindbox.audit.report import EcdsaSignature, Product, ReportV3, ReportV5, encode_tcb, signed_region
from measure import record

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
NOT_BEFORE = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
NOT_AFTER = dt.datetime(2049, 1, 1, tzinfo=dt.timezone.utc)
CHIP_ID = bytes(range(1, 65))
TCB = dict(boot_loader=4, tee=0, snp=24, microcode=219)
CPUID = {Product.MILAN: (0x19, 0x01, 0x01), Product.GENOA: (0x19, 0x11, 0x01), Product.TURIN: (0x1A, 0x02, 0x01)}


def _name(cn: str, organization: str = "blindbox test") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return b"\x02" + bytes([len(body)]) + body


def _ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


@dataclass
class TestChain:
    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    product: Product

    def write(self, directory: Path) -> tuple[Path, Path]:
        """(certs dir with VCEK + ASK, ARK PEM for --trust-root)."""
        certs = directory / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        (certs / "vcek.der").write_bytes(self.vcek.public_bytes(serialization.Encoding.DER))
        (certs / "ask.pem").write_bytes(self.ask.public_bytes(serialization.Encoding.PEM))
        root = directory / "test-ark.pem"
        root.write_bytes(self.ark.public_bytes(serialization.Encoding.PEM))
        return certs, root


_RSA_CACHE: dict[str, rsa.RSAPrivateKey] = {}


def _rsa(label: str) -> rsa.RSAPrivateKey:
    if label not in _RSA_CACHE:
        _RSA_CACHE[label] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _RSA_CACHE[label]


def _ca(subject: str, issuer: str, key, signer, serial: int, organization: str = "blindbox test") -> x509.Certificate:
    return (x509.CertificateBuilder()
            .subject_name(_name(subject, organization)).issuer_name(_name(issuer, organization))
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(NOT_BEFORE).not_valid_after(NOT_AFTER)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer, hashes.SHA384(), rsa_padding=PSS))


def make_chain(product: Product = Product.MILAN, *, chip_id: bytes = CHIP_ID, tcb: dict | None = None,
               label: str = "a", names: Mapping[str, str] | None = None, organization: str = "blindbox test",
               keys: Mapping[str, object] | None = None,
               vcek_validity: tuple[dt.datetime, dt.datetime] = (NOT_BEFORE, NOT_AFTER)) -> TestChain:
    """A chain for ``product``.  ``names`` overrides the common names ("ark", "ask", "vcek"; AMD's by
    default), ``organization`` the O of every name, ``keys`` the private keys ("ark", "ask": RSA;
    "vcek": P-384) that are otherwise made here, and ``vcek_validity`` the VCEK's validity period."""
    tcb = dict(TCB if product is not Product.TURIN else dict(fmc=0, boot_loader=1, tee=0, snp=2,
                                                            microcode=71), **(tcb or {}))
    cn = {"ark": f"ARK-{product.value}", "ask": f"SEV-{product.value}", "vcek": "SEV-VCEK", **(names or {})}
    given = dict(keys or {})
    ark_key = given.get("ark") or _rsa(label + "ark")
    ask_key = given.get("ask") or _rsa(label + "ask")
    ark = _ca(cn["ark"], cn["ark"], ark_key, ark_key, 1, organization)
    ask = _ca(cn["ask"], cn["ark"], ask_key, ark_key, 2, organization)
    vcek_key = given.get("vcek") or ec.generate_private_key(ec.SECP384R1())
    assert isinstance(vcek_key, ec.EllipticCurvePrivateKey)
    hw_id = chip_id[:8] if product is Product.TURIN else chip_id
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn["vcek"], organization)).issuer_name(_name(cn["ask"], organization))
               .public_key(vcek_key.public_key()).serial_number(3)
               .not_valid_before(vcek_validity[0]).not_valid_after(vcek_validity[1])
               .add_extension(_ext(OID_STRUCT_VERSION, _der_int(1)), critical=False)
               .add_extension(_ext(OID_PRODUCT_NAME, b"\x16" + bytes([len(product.value)])
                                   + product.value.encode()), critical=False)
               .add_extension(_ext(OID_HW_ID, hw_id), critical=False))
    for comp, level in tcb.items():
        builder = builder.add_extension(_ext(OID_SPL[comp], _der_int(level)), critical=False)
    vcek = builder.sign(ask_key, hashes.SHA384(), rsa_padding=PSS)
    return TestChain(ark, ask, vcek, vcek_key, product)


def make_report(chain: TestChain, *, measurement: bytes = bytes(48), policy: int = 0x30000,
                chip_id: bytes = CHIP_ID, version: int = 5, **fields) -> bytes:
    """A report (version 5, or 3) with ``fields``, signed by the chain's VCEK; its TCBs are the VCEK's."""
    product = chain.product
    tcb = encode_tcb(product, **{c: int(v) for c, v in _chain_tcb(chain).items()})
    fam, mod, step = CPUID[product]
    chip = chip_id[:8] + bytes(56) if product is Product.TURIN else chip_id
    layout = {3: ReportV3, 5: ReportV5}[version]
    report = layout(version=version, policy=policy, signature_algo=1, current_tcb=tcb, reported_tcb=tcb,
                    committed_tcb=tcb, launch_tcb=tcb, measurement=measurement, chip_id=chip,
                    cpuid_fam_id=fam, cpuid_mod_id=mod, cpuid_step=step, **fields)
    return sign_report(report, chain.vcek_key)


def sign_report(report, key: ec.EllipticCurvePrivateKey) -> bytes:
    sig = key.sign(signed_region(report), ec.ECDSA(hashes.SHA384()))
    return record.replace(report, signature=EcdsaSignature.from_der(sig)).to_bytes()


def _chain_tcb(chain: TestChain) -> dict:
    from blindbox.audit.certs import amd_key_info, parse_certificate
    info = amd_key_info(parse_certificate(chain.vcek.public_bytes(serialization.Encoding.DER)))
    return info.spl
