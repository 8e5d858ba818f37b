"""AMD SEV-SNP certificates: a strict DER reader, the AMD extensions, and chain building.

Why our own reader: every VCEK and VLEK AMD issues has serial number 0, which RFC 5280
forbids.  pyca/cryptography loads such certificates today with a
``CryptographyDeprecationWarning`` and has announced it will refuse them.  Verification
must not depend on that, and no warning may reach users, so this module reads the few
fields it needs (to-be-signed bytes, signature algorithm and value, names, validity,
public key, extensions) with a small DER parser that rejects anything not DER.  The
cryptographic work stays with ``cryptography``: public keys are loaded from their
SubjectPublicKeyInfo bytes, and RSASSA-PSS / ECDSA verification are its primitives.

Trust: AMD's ARK (root), ASK (VCEK intermediate) and ASVK (VLEK intermediate) for Milan,
Genoa and Turin are bundled in ``blindbox/audit/amd_roots`` and trusted only when their SHA-256
fingerprint equals the value pinned below.  Any other root must be passed explicitly.

VCEK/VLEK extensions (AMD "VCEK Certificate and KDS Interface Specification"), under
1.3.6.1.4.1.3704.1: .1 structVersion, .2 productName, .3.1 blSPL, .3.2 teeSPL,
.3.3 snpSPL, .3.4-.3.7 reserved SPLs, .3.8 ucodeSPL, .3.9 fmcSPL (Turin), .4 hwID (the
chip ID: 64 bytes on Milan and Genoa, 8 on Turin; raw bytes, not DER), .5 cspID (VLEK).

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from .errors import ChainInvalid
from measure.errors import InputError
from measure.inputs import read_input
from .limits import MAX_CERTIFICATE_FILE_BYTES
from .report import Product, SigningKey

# ---------------------------------------------------------------------------------------
# Pinned AMD certificates: SHA-256 over the DER encoding.  Two independent copies agree on
# every ARK and ASK (virtee/sev's built-in certificates and google/go-sev-guest's trust
# bundles); the ASVKs come from go-sev-guest and chain to the same ARKs.

PINNED = {
    Product.MILAN: {
        "ark": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        "ask": "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
        "asvk": "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
    },
    Product.GENOA: {
        "ark": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        "ask": "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
        "asvk": "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
    },
    Product.TURIN: {
        "ark": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
        "ask": "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
        "asvk": "104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c",
    },
}

AMD_OID = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = AMD_OID + ".1"
OID_PRODUCT_NAME = AMD_OID + ".2"
OID_HW_ID = AMD_OID + ".4"
OID_CSP_ID = AMD_OID + ".5"
#: TCB component -> extension OID of its security patch level (SPL).
OID_SPL = {
    "boot_loader": AMD_OID + ".3.1",
    "tee": AMD_OID + ".3.2",
    "snp": AMD_OID + ".3.3",
    "microcode": AMD_OID + ".3.8",
    "fmc": AMD_OID + ".3.9",
}
SPL_KDS_NAME = {"boot_loader": "blSPL", "tee": "teeSPL", "snp": "snpSPL", "microcode": "ucodeSPL",
                "fmc": "fmcSPL"}
HW_ID_SIZE = {Product.MILAN: 64, Product.GENOA: 64, Product.TURIN: 8}

OID_COMMON_NAME = "2.5.4.3"
OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_KEY_USAGE = "2.5.29.15"
OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
OID_MGF1 = "1.2.840.113549.1.1.8"
_Sha2 = type[hashes.SHA256] | type[hashes.SHA384] | type[hashes.SHA512]
_HASHES: dict[str, _Sha2] = {
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}
_ECDSA: dict[str, _Sha2] = {
    "1.2.840.10045.4.3.2": hashes.SHA256,
    "1.2.840.10045.4.3.3": hashes.SHA384,
    "1.2.840.10045.4.3.4": hashes.SHA512,
}


class CertificateError(InputError):
    """A certificate file cannot be read or is not DER/PEM X.509."""


# ---------------------------------------------------------------------------------------
# DER


class _DerError(Exception):
    pass


@dataclass(frozen=True)
class _Tlv:
    tag: int
    data: bytes
    start: int  # first byte of the tag
    vstart: int  # first byte of the value
    end: int  # one past the value

    @property
    def value(self) -> bytes:
        return self.data[self.vstart:self.end]

    @property
    def encoded(self) -> bytes:
        return self.data[self.start:self.end]

    def children(self) -> list["_Tlv"]:
        if not self.tag & 0x20:
            raise _DerError(f"tag {self.tag:#04x} at offset {self.start} is not constructed")
        out, pos = [], self.vstart
        while pos < self.end:
            child = _read_tlv(self.data, pos, self.end)
            out.append(child)
            pos = child.end
        return out


def _read_tlv(data: bytes, pos: int, end: int) -> _Tlv:
    if pos + 2 > end:
        raise _DerError(f"truncated element at offset {pos}")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _DerError(f"multi-byte tag at offset {pos}")
    first = data[pos + 1]
    vstart = pos + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise _DerError(f"indefinite length at offset {pos}")
    else:
        n = first & 0x7F
        if n > 4 or vstart + n > end:
            raise _DerError(f"bad length at offset {pos}")
        length = int.from_bytes(data[vstart:vstart + n], "big")
        if data[vstart] == 0 or length < 0x80:
            raise _DerError(f"non-minimal length at offset {pos}")
        vstart += n
    if vstart + length > end:
        raise _DerError(f"element at offset {pos} runs past its container")
    return _Tlv(tag, data, pos, vstart, vstart + length)


def _expect(node: _Tlv, tag: int, what: str) -> _Tlv:
    if node.tag != tag:
        raise _DerError(f"{what}: expected tag {tag:#04x}, found {node.tag:#04x} at offset {node.start}")
    return node


def _oid(node: _Tlv) -> str:
    raw = _expect(node, 0x06, "OBJECT IDENTIFIER").value
    if not raw or raw[-1] & 0x80:
        raise _DerError(f"malformed OID at offset {node.start}")
    arcs, acc = [], 0
    for b in raw:
        if acc == 0 and b == 0x80:
            raise _DerError(f"non-minimal OID arc at offset {node.start}")
        acc = acc << 7 | b & 0x7F
        if not b & 0x80:
            arcs.append(acc)
            acc = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


def _int(node: _Tlv) -> int:
    raw = _expect(node, 0x02, "INTEGER").value
    if not raw or (len(raw) > 1 and (raw[0] == 0 and raw[1] < 0x80 or raw[0] == 0xFF and raw[1] >= 0x80)):
        raise _DerError(f"malformed INTEGER at offset {node.start}")
    return int.from_bytes(raw, "big", signed=True)


_STRING_TAGS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1", 0x1E: "utf-16-be"}


def _string(node: _Tlv) -> str:
    codec = _STRING_TAGS.get(node.tag)
    if codec is None:
        raise _DerError(f"unsupported string type {node.tag:#04x} at offset {node.start}")
    try:
        return node.value.decode(codec)
    except UnicodeDecodeError:
        raise _DerError(f"undecodable string at offset {node.start}") from None


def _time(node: _Tlv) -> datetime:
    text = node.value.decode("ascii", "replace")
    if node.tag == 0x17 and re.fullmatch(r"\d{12}Z", text):
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif not (node.tag == 0x18 and re.fullmatch(r"\d{14}Z", text)):
        raise _DerError(f"malformed time {text!r} at offset {node.start}")
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise _DerError(f"malformed time {text!r} at offset {node.start}") from None


# ---------------------------------------------------------------------------------------
# X.509


@dataclass(frozen=True)
class Name:
    der: bytes
    attributes: tuple[tuple[str, str], ...]

    @property
    def common_name(self) -> str | None:
        return next((v for oid, v in self.attributes if oid == OID_COMMON_NAME), None)

    def __str__(self) -> str:
        return self.common_name or self.der.hex()


@dataclass(frozen=True)
class Extension:
    oid: str
    critical: bool
    value: bytes


@dataclass(frozen=True)
class SignatureAlgorithm:
    """How the issuer signed: RSASSA-PSS (hash, MGF1 hash, salt) or ECDSA (hash)."""

    kind: str  # "rsa-pss" or "ecdsa"
    hash_name: str
    salt_length: int | None = None
    mgf_hash_name: str | None = None

    def __str__(self) -> str:
        if self.kind == "rsa-pss":
            return f"RSASSA-PSS/{self.hash_name}/MGF1-{self.mgf_hash_name}/salt {self.salt_length}"
        return f"ECDSA/{self.hash_name}"


@dataclass(frozen=True)
class Certificate:
    der: bytes
    tbs: bytes
    serial: int
    algorithm: SignatureAlgorithm
    signature: bytes
    issuer: Name
    subject: Name
    not_before: datetime
    not_after: datetime
    spki: bytes
    extensions: tuple[Extension, ...]
    source: str = field(default="", compare=False)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the DER encoding, lower-case hex."""
        return hashlib.sha256(self.der).hexdigest()

    @functools.cached_property
    def public_key(self) -> PublicKeyTypes:
        try:
            return serialization.load_der_public_key(self.spki)
        except (ValueError, UnsupportedAlgorithm) as e:
            raise CertificateError(f"the public key of certificate {self.label} cannot be loaded "
                                   f"({e}); the certificate is corrupt.") from None

    @property
    def label(self) -> str:
        where = f" from {self.source}" if self.source else ""
        return f"{self.subject}{where}"

    def extension(self, oid: str) -> Extension | None:
        return next((e for e in self.extensions if e.oid == oid), None)

    @property
    def is_ca(self) -> bool:
        ext = self.extension(OID_BASIC_CONSTRAINTS)
        if ext is None:
            return False
        try:
            seq = _expect(_read_tlv(ext.value, 0, len(ext.value)), 0x30, "BasicConstraints")
            items = seq.children()
        except _DerError:
            return False
        return bool(items) and items[0].tag == 0x01 and items[0].value == b"\xff"

    def signed_by(self, issuer: "Certificate") -> bool:
        """True when ``issuer``'s public key verifies this certificate's signature."""
        key = issuer.public_key
        hash_cls = _hash_by_name(self.algorithm.hash_name)
        try:
            if self.algorithm.kind == "rsa-pss":
                if not isinstance(key, rsa.RSAPublicKey):
                    return False
                assert self.algorithm.mgf_hash_name is not None and self.algorithm.salt_length is not None
                pad = padding.PSS(mgf=padding.MGF1(_hash_by_name(self.algorithm.mgf_hash_name)()),
                                  salt_length=self.algorithm.salt_length)
                key.verify(self.signature, self.tbs, pad, hash_cls())
            else:
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    return False
                key.verify(self.signature, self.tbs, ec.ECDSA(hash_cls()))
        except InvalidSignature:
            return False
        return True

    def valid_at(self, when: datetime) -> bool:
        return self.not_before <= when <= self.not_after


def _hash_by_name(name: str) -> _Sha2:
    by_name: dict[str, _Sha2] = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
    return by_name[name]


def _hash_name(cls: _Sha2) -> str:
    return cls.name


def _algorithm_id(node: _Tlv) -> tuple[str, _Tlv | None]:
    items = _expect(node, 0x30, "AlgorithmIdentifier").children()
    if not 1 <= len(items) <= 2:
        raise _DerError(f"malformed AlgorithmIdentifier at offset {node.start}")
    return _oid(items[0]), (items[1] if len(items) == 2 else None)


def _hash_algorithm(node: _Tlv) -> str:
    oid, params = _algorithm_id(node)
    if oid not in _HASHES or (params is not None and params.encoded != b"\x05\x00"):
        raise _DerError(f"unsupported hash algorithm {oid}")
    return _hash_name(_HASHES[oid])


def _signature_algorithm(node: _Tlv) -> SignatureAlgorithm:
    oid, params = _algorithm_id(node)
    if oid in _ECDSA:
        if params is not None:
            raise _DerError("ECDSA signature algorithm with parameters")
        return SignatureAlgorithm("ecdsa", _hash_name(_ECDSA[oid]))
    if oid != OID_RSASSA_PSS or params is None:
        raise _DerError(f"unsupported signature algorithm {oid} (AMD certificates use RSASSA-PSS)")
    hash_name, mgf_hash, salt, trailer = "sha1", "sha1", 20, 1
    for item in params.children():
        inner = item.children()
        if len(inner) != 1:
            raise _DerError("malformed RSASSA-PSS parameters")
        if item.tag == 0xA0:
            hash_name = _hash_algorithm(inner[0])
        elif item.tag == 0xA1:
            mgf_oid, mgf_params = _algorithm_id(inner[0])
            if mgf_oid != OID_MGF1 or mgf_params is None:
                raise _DerError(f"unsupported mask generation function {mgf_oid}")
            mgf_hash = _hash_algorithm(mgf_params)
        elif item.tag == 0xA2:
            salt = _int(inner[0])
        elif item.tag == 0xA3:
            trailer = _int(inner[0])
        else:
            raise _DerError(f"unknown RSASSA-PSS parameter {item.tag:#04x}")
    if hash_name == "sha1" or mgf_hash == "sha1" or trailer != 1 or not 0 <= salt <= 512:
        raise _DerError("RSASSA-PSS parameters use SHA-1 or an unsupported trailer or salt")
    return SignatureAlgorithm("rsa-pss", hash_name, salt, mgf_hash)


def _name(node: _Tlv) -> Name:
    attrs = []
    for rdn in _expect(node, 0x30, "Name").children():
        for atv in _expect(rdn, 0x31, "RelativeDistinguishedName").children():
            items = _expect(atv, 0x30, "AttributeTypeAndValue").children()
            if len(items) != 2:
                raise _DerError(f"malformed name attribute at offset {atv.start}")
            attrs.append((_oid(items[0]), _string(items[1])))
    return Name(node.encoded, tuple(attrs))


def _extensions(node: _Tlv) -> tuple[Extension, ...]:
    inner = node.children()
    if len(inner) != 1:
        raise _DerError("malformed extensions")
    out, seen = [], set()
    for ext in _expect(inner[0], 0x30, "Extensions").children():
        items = _expect(ext, 0x30, "Extension").children()
        critical = False
        if len(items) == 3:
            _expect(items[1], 0x01, "critical")
            if items[1].value not in (b"\xff",):  # DER encodes only TRUE; FALSE is omitted
                raise _DerError(f"non-DER BOOLEAN at offset {items[1].start}")
            critical = True
        elif len(items) != 2:
            raise _DerError(f"malformed extension at offset {ext.start}")
        oid = _oid(items[0])
        if oid in seen:
            raise _DerError(f"extension {oid} appears twice")
        seen.add(oid)
        out.append(Extension(oid, critical, _expect(items[-1], 0x04, "extnValue").value))
    return tuple(out)


def parse_certificate(der: bytes, *, source: str = "") -> Certificate:
    """Parse one DER X.509 certificate; raise :class:`CertificateError` when it is not DER."""
    der = bytes(der)
    label = source or "certificate"
    try:
        cert = _read_tlv(der, 0, len(der))
        if cert.end != len(der):
            raise _DerError(f"{len(der) - cert.end} trailing bytes after the certificate")
        parts = _expect(cert, 0x30, "Certificate").children()
        if len(parts) != 3:
            raise _DerError("a certificate has three parts")
        tbs, outer_alg, sig = parts
        algorithm = _signature_algorithm(outer_alg)
        sig_value = _expect(sig, 0x03, "signatureValue").value
        if not sig_value or sig_value[0] != 0:
            raise _DerError("signature BIT STRING has unused bits")
        fields = _expect(tbs, 0x30, "TBSCertificate").children()
        idx = 0
        if fields and fields[0].tag == 0xA0:
            version = fields[0].children()
            if len(version) != 1 or _int(version[0]) != 2:
                raise _DerError("only X.509 version 3 certificates are supported")
            idx = 1
        else:
            raise _DerError("only X.509 version 3 certificates are supported")
        serial = _int(fields[idx])
        if fields[idx + 1].encoded != outer_alg.encoded:
            raise _DerError("the inner and outer signature algorithms differ")
        issuer = _name(fields[idx + 2])
        validity = _expect(fields[idx + 3], 0x30, "Validity").children()
        if len(validity) != 2:
            raise _DerError("malformed validity")
        subject = _name(fields[idx + 4])
        spki = _expect(fields[idx + 5], 0x30, "SubjectPublicKeyInfo").encoded
        extensions: tuple[Extension, ...] = ()
        for extra in fields[idx + 6:]:
            if extra.tag == 0xA3:
                extensions = _extensions(extra)
            elif extra.tag not in (0x81, 0x82):
                raise _DerError(f"unexpected field {extra.tag:#04x} in TBSCertificate")
        return Certificate(
            der=der, tbs=tbs.encoded, serial=serial, algorithm=algorithm, signature=sig_value[1:],
            issuer=issuer, subject=subject, not_before=_time(validity[0]), not_after=_time(validity[1]),
            spki=spki, extensions=extensions, source=source)
    except (_DerError, IndexError) as e:
        raise CertificateError(f"{label} is not a valid DER X.509 certificate ({e}); give the "
                               f"certificate as AMD's KDS serves it (DER) or as PEM.") from None


_PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)


def load_certificates(data: bytes, *, source: str = "") -> list[Certificate]:
    """All certificates in ``data``: one DER certificate, or any number of PEM blocks."""
    label = source or "certificate data"
    if b"-----BEGIN" in data:
        blocks = _PEM_RE.findall(data)
        if not blocks:
            raise CertificateError(f"{label} is PEM but holds no CERTIFICATE block; give the VCEK, "
                                   f"ASK or ARK certificate, not a key.")
        out = []
        for i, block in enumerate(blocks):
            try:
                der = base64.b64decode(b"".join(block.split()), validate=True)
            except (binascii.Error, ValueError):
                raise CertificateError(f"PEM block {i + 1} of {label} is not valid base64; the file "
                                       f"is corrupt.") from None
            out.append(parse_certificate(der, source=f"{label} (PEM block {i + 1})" if len(blocks) > 1
                                         else label))
        return out
    return [parse_certificate(data, source=label)]


#: names under which certificates are stored; in a --certs directory such a file must parse
CERTIFICATE_SUFFIXES = (".pem", ".der", ".crt", ".cer", ".cert")


def _looks_like_certificate(path: Path, data: bytes) -> bool:
    """A file meant as a certificate: its name says so, or it starts like PEM or a DER X.509 SEQUENCE."""
    return (path.suffix.lower() in CERTIFICATE_SUFFIXES or data.lstrip()[:10] == b"-----BEGIN"
            or data[:2] == b"\x30\x82")


def collect_certificates(paths: Iterable[str | Path]) -> tuple[list[Certificate], list[str]]:
    """Certificates from files and directories (``--certs``).

    A file must hold certificates.  In a directory, every regular file that is meant as
    a certificate (named ``*.pem``, ``*.der``, ``*.crt``, ``*.cer``, ``*.cert``, or PEM or
    DER X.509 by its first bytes) must parse: a damaged one is an error naming it, never
    skipped.  Other files (reports, notes) are listed as ignored (second return value).
    """
    certs: list[Certificate] = []
    ignored: list[str] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for entry in sorted(path.iterdir()):
                if entry.is_dir():
                    continue
                if not entry.is_file():
                    raise InputError(f"{str(entry)!r} in the --certs directory is not a regular file (a device, "
                                     f"pipe or socket, or a broken link); remove it, or give the certificate "
                                     f"files one by one.")
                data = read_input(entry, "certificate", limit=MAX_CERTIFICATE_FILE_BYTES)
                try:
                    certs.extend(load_certificates(data, source=str(entry)))
                except CertificateError as e:
                    if _looks_like_certificate(entry, data):
                        raise CertificateError(f"{str(e).rstrip('.')} (in the --certs directory {path}); "
                                               f"replace or remove that file.") from None
                    ignored.append(str(entry))
        else:
            certs.extend(load_certificates(read_input(path, "certificate", limit=MAX_CERTIFICATE_FILE_BYTES),
                                           source=str(path)))
    return certs, ignored


# ---------------------------------------------------------------------------------------
# AMD extensions


@dataclass(frozen=True)
class AmdKeyInfo:
    """What a VCEK or VLEK says about the chip and TCB it was issued for."""

    struct_version: int | None
    product_name: str | None
    spl: dict[str, int]  # TCB component -> security patch level
    hw_id: bytes | None  # VCEK only
    csp_id: str | None  # VLEK only


def amd_key_info(cert: Certificate) -> AmdKeyInfo:
    def value(oid: str) -> _Tlv | None:
        ext = cert.extension(oid)
        if ext is None:
            return None
        node = _read_tlv(ext.value, 0, len(ext.value))
        if node.end != len(ext.value):
            raise _DerError(f"trailing bytes in extension {oid}")
        return node

    try:
        version = value(OID_STRUCT_VERSION)
        product = value(OID_PRODUCT_NAME)
        csp = value(OID_CSP_ID)
        spl = {}
        for comp, oid in OID_SPL.items():
            node = value(oid)
            if node is not None:
                spl[comp] = _int(node)
        hw = cert.extension(OID_HW_ID)
        return AmdKeyInfo(
            struct_version=None if version is None else _int(version),
            product_name=None if product is None else _string(product),
            spl=spl, hw_id=None if hw is None else hw.value,
            csp_id=None if csp is None else _string(csp))
    except _DerError as e:
        raise CertificateError(f"the AMD extensions of {cert.label} are malformed ({e}); the "
                               f"certificate is corrupt.") from None


# ---------------------------------------------------------------------------------------
# Bundled AMD roots


@dataclass(frozen=True)
class AmdChain:
    product: Product
    ark: Certificate
    ask: Certificate
    asvk: Certificate

    def intermediate(self, kind: SigningKey) -> Certificate:
        return self.asvk if kind is SigningKey.VLEK else self.ask


@functools.cache
def amd_chains() -> dict[Product, AmdChain]:
    """The bundled ARK/ASK/ASVK per product, checked against the pinned fingerprints."""
    out = {}
    pkg = resources.files("blindbox.audit.amd_roots")
    for product, pins in PINNED.items():
        certs = {}
        for role, pin in pins.items():
            name = f"{product.value.lower()}_{role}.pem"
            (cert,) = load_certificates(pkg.joinpath(name).read_bytes(), source=f"bundled {name}")
            if cert.fingerprint != pin:
                raise ChainInvalid(
                    f"the bundled AMD certificate {name} has SHA-256 {cert.fingerprint}, not the "
                    f"pinned {pin}; the installation was modified: reinstall blindbox-guest.")
            certs[role] = cert
        for role in ("ask", "asvk"):
            if not certs[role].signed_by(certs["ark"]) or not certs["ark"].signed_by(certs["ark"]):
                raise ChainInvalid(f"the bundled {product.value} {role.upper()} is not signed by its "
                                   f"ARK; the installation was modified: reinstall blindbox-guest.")
        out[product] = AmdChain(product, certs["ark"], certs["ask"], certs["asvk"])
    return out


def amd_product_of(cert: Certificate) -> Product | None:
    """The product whose bundled ARK, ASK or ASVK ``cert`` is (by fingerprint)."""
    for product, chain in amd_chains().items():
        if cert.fingerprint in (chain.ark.fingerprint, chain.ask.fingerprint, chain.asvk.fingerprint):
            return product
    return None


def issuer_product(cert: Certificate) -> Product | None:
    """The product named by a VCEK/VLEK issuer ("SEV-Milan", "SEV-VLEK-Genoa"), if any."""
    cn = cert.issuer.common_name or ""
    m = re.fullmatch(r"SEV-(?:VLEK-)?(Milan|Genoa|Turin)", cn)
    return Product(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------
# Chain building


@dataclass(frozen=True)
class Chain:
    leaf: Certificate
    intermediate: Certificate
    root: Certificate
    amd_product: Product | None  # None when the root is an explicitly trusted, non-AMD one

    def describe(self) -> str:
        trust = (f"AMD {self.amd_product.value} root, pinned" if self.amd_product
                 else "explicitly trusted root, NOT AMD's")
        return (f"{self.leaf.subject} -> {self.intermediate.subject} -> {self.root.subject} "
                f"({trust}, sha256 {self.root.fingerprint[:16]}...)")


def _name_list(certs: Sequence[Certificate]) -> str:
    return ", ".join(sorted({str(c.subject) for c in certs})) or "none"


def build_chain(leaf: Certificate, *, kind: SigningKey, product: Product | None,
                product_reason: str = "the report", candidates: Sequence[Certificate] = (),
                trust_roots: Sequence[Certificate] = (),
                at: datetime) -> Chain:
    """Verify ``leaf`` -> intermediate -> root; raise :class:`ChainInvalid` saying why not.

    Intermediates come from the bundled AMD certificates and ``candidates``; roots are
    the bundled AMD ARKs (by pinned fingerprint) and ``trust_roots``.  When ``product``
    is given, an AMD chain must be that product's, with the ASK for a VCEK and the ASVK
    for a VLEK.
    """
    key_name = kind.name
    chains = amd_chains()
    amd_inter = [c for ch in chains.values() for c in (ch.ask, ch.asvk)]
    amd_roots = [ch.ark for ch in chains.values()]
    roots = {c.fingerprint: c for c in [*amd_roots, *trust_roots]}
    inters = {c.fingerprint: c for c in [*amd_inter, *(c for c in candidates if c.is_ca)]}

    pub = leaf.public_key
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp384r1":
        raise ChainInvalid(f"the {key_name} {leaf.label} does not hold an ECDSA P-384 key, so it "
                           f"cannot have signed an SNP report; give the {key_name} certificate.")
    named = [c for c in inters.values() if c.subject.der == leaf.issuer.der]
    signers = [c for c in named if leaf.signed_by(c)]
    if not signers:
        if named:
            raise ChainInvalid(f"the {key_name} {leaf.label} claims issuer {leaf.issuer} but its "
                               f"signature does not verify with that certificate; the {key_name} is "
                               f"corrupt or forged.")
        raise ChainInvalid(f"no known certificate issued the {key_name} {leaf.label} (issuer "
                           f"{leaf.issuer}); known intermediates: {_name_list(list(inters.values()))}; "
                           f"give the issuer with --certs.")
    errors = []
    for inter in signers:
        root_named = [r for r in roots.values() if r.subject.der == inter.issuer.der]
        root_ok = [r for r in root_named if inter.signed_by(r) and r.signed_by(r)]
        if not root_ok:
            errors.append(f"{inter.subject} is issued by {inter.issuer}, which is not a trusted root "
                          f"(trusted: AMD's bundled ARKs"
                          + (f" and {_name_list(list(trust_roots))}" if trust_roots else "") + ")")
            continue
        root = root_ok[0]
        amd = amd_product_of(root) if root.fingerprint in {r.fingerprint for r in amd_roots} else None
        if amd is not None:
            if amd_product_of(inter) != amd:
                errors.append(f"{inter.subject} is not AMD's {amd.value} intermediate")
                continue
            if product is not None and amd is not product:
                raise ChainInvalid(
                    f"the {key_name} {leaf.label} is issued by AMD's {amd.value} chain "
                    f"({inter.subject}), but {product_reason} says the chip is a {product.value}; give the "
                    f"{key_name} of the chip that produced the report.")
            expected = chains[amd].intermediate(kind)
            if inter.fingerprint != expected.fingerprint:
                raise ChainInvalid(
                    f"the report is signed by a {key_name}, but the certificate {leaf.label} is "
                    f"issued by {inter.subject}, AMD's intermediate for the other key type; give "
                    f"the {key_name} certificate.")
        chain = Chain(leaf, inter, root, amd)
        for role, cert in (("leaf", leaf), ("intermediate", inter), ("root", root)):
            if not cert.valid_at(at):
                raise ChainInvalid(
                    f"the {key_name if role == 'leaf' else role} certificate {cert.subject} is valid "
                    f"from {cert.not_before:%Y-%m-%d %H:%M} to {cert.not_after:%Y-%m-%d %H:%M} UTC, "
                    f"not at {at:%Y-%m-%d %H:%M} UTC; to audit a report produced inside that period, "
                    f"pass --at with its time.")
        return chain
    if len(errors) == 1 and "not a trusted root" in errors[0]:
        raise ChainInvalid(f"the chain of {leaf.label} does not end at a trusted root: {errors[0]}; "
                           f"pass --trust-root only for a root you really trust (e.g. a test chain).")
    raise ChainInvalid(f"the chain of {leaf.label} is not valid: {'; '.join(errors)}; give AMD's "
                       f"certificates for this product.")
