"""SEV-SNP ATTESTATION_REPORT versions 2, 3 and 5, and TCB_VERSION per product.

Facts from the SEV-SNP Firmware ABI specification (ATTESTATION_REPORT, TCB_VERSION,
GUEST_POLICY, and the ECDSA P-384 signature format of its appendix):

* the report is 0x4A0 bytes; the signature covers bytes [0x000, 0x2A0) and sits at
  0x2A0 as R and S, each a 72-byte little-endian field holding a 48-byte value;
* version 3 adds CPUID_FAM_ID / CPUID_MOD_ID / CPUID_STEP at 0x188, which name the
  product; version 5 adds LAUNCH_MIT_VECTOR and CURRENT_MIT_VECTOR at 0x1F8;
* a TCB_VERSION is 8 bytes whose layout depends on the product: Milan and Genoa put
  BOOT_LOADER, TEE at bytes 0-1 and SNP, MICROCODE at 6-7; Turin puts FMC, BOOT_LOADER,
  TEE, SNP at bytes 0-3 and MICROCODE at 7.  Other bytes are reserved.

Parsing is strict: a wrong length, an unknown version or signature algorithm, and a
nonzero reserved byte or bit raise :class:`~measure.errors.LayoutError`.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import enum
from typing import Any

from cryptography.hazmat.primitives.asymmetric import utils as asym_utils

from measure import layout
from measure.record import record
from measure.errors import InputError, LayoutError

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIG_ALGO_ECDSA_P384_SHA384 = 1
KNOWN_VERSIONS = (2, 3, 5)


class Product(enum.Enum):
    """AMD EPYC generations with SEV-SNP; the value is AMD's name for it (KDS, cert CNs)."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @classmethod
    def parse(cls, text: str) -> "Product":
        """``milan``, ``Milan-B0``, ``GENOA`` ... -> the product (stepping suffixes ignored)."""
        base = text.strip().split("-")[0].lower()
        for p in cls:
            if p.value.lower() == base:
                return p
        raise InputError(f"unknown AMD product {text!r}; use one of "
                         f"{', '.join(p.value for p in cls)}.")


def product_from_cpuid(family: int, model: int) -> Product | None:
    """The product of a CPUID family/model pair, or None when it is not a known SNP part."""
    if family == 0x19 and model <= 0x0F:
        return Product.MILAN
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return Product.GENOA
    if family == 0x1A and model <= 0x1F:
        return Product.TURIN
    return None


class SigningKey(enum.IntEnum):
    """SIGNING_KEY, bits 4:2 of the report word at 0x48."""

    VCEK = 0
    VLEK = 1
    NONE = 7


# ---------------------------------------------------------------------------------------
# TCB_VERSION


@layout.struct(size=8, spec="SEV-SNP Firmware ABI, TCB_VERSION (Milan, Genoa)")
@record
class TcbVersionMilan(layout.Struct):
    boot_loader: int = layout.u8(0x0)
    tee: int = layout.u8(0x1)
    snp: int = layout.u8(0x6)
    microcode: int = layout.u8(0x7)


@layout.struct(size=8, spec="SEV-SNP Firmware ABI, TCB_VERSION (Turin)")
@record
class TcbVersionTurin(layout.Struct):
    fmc: int = layout.u8(0x0)
    boot_loader: int = layout.u8(0x1)
    tee: int = layout.u8(0x2)
    snp: int = layout.u8(0x3)
    microcode: int = layout.u8(0x7)


TCB_LAYOUT: dict[Product, type[TcbVersionMilan] | type[TcbVersionTurin]] = {
    Product.MILAN: TcbVersionMilan, Product.GENOA: TcbVersionMilan, Product.TURIN: TcbVersionTurin}

#: Every component name a TCB can have, in a stable display order.
TCB_COMPONENTS = ("fmc", "boot_loader", "tee", "snp", "microcode")

#: Short names accepted on the command line (KDS calls them blSPL, teeSPL, ...).
TCB_ALIASES = {"bl": "boot_loader", "ucode": "microcode", "boot_loader": "boot_loader",
               "microcode": "microcode", "tee": "tee", "snp": "snp", "fmc": "fmc"}


def tcb_components(raw: int, product: Product, *, what: str = "TCB_VERSION") -> dict[str, int]:
    """Decode a 64-bit TCB_VERSION for ``product``: {component: security patch level}."""
    cls = TCB_LAYOUT[product]
    try:
        tcb = cls.from_bytes(int(raw).to_bytes(8, "little"), what=f"{what} ({product.value} layout)")
    except LayoutError as e:
        raise LayoutError(f"{str(e).rstrip('.')}; check that the report really comes from a "
                          f"{product.value} (--product) and is not corrupt.") from None
    return {name: getattr(tcb, name) for name in TCB_COMPONENTS if hasattr(tcb, name)}


def encode_tcb(product: Product, **components: int) -> int:
    """The 64-bit TCB_VERSION for ``product`` with the given component levels."""
    cls = TCB_LAYOUT[product]
    return int.from_bytes(cls(**components).to_bytes(), "little")


# ---------------------------------------------------------------------------------------
# Signature


@layout.struct(size=0x200, spec="SEV-SNP Firmware ABI, ECDSA P-384 with SHA-384 signature format")
@record
class EcdsaSignature(layout.Struct):
    """R and S as 72-byte little-endian fields; a P-384 value fills 48, the rest is zero."""

    r: bytes = layout.raw(0x00, 48)
    s: bytes = layout.raw(0x48, 48)

    @classmethod
    def from_ints(cls, r: int, s: int) -> "EcdsaSignature":
        return cls(r=r.to_bytes(48, "little"), s=s.to_bytes(48, "little"))

    @classmethod
    def from_der(cls, der: bytes) -> "EcdsaSignature":
        r, s = asym_utils.decode_dss_signature(der)
        return cls.from_ints(r, s)

    @property
    def r_int(self) -> int:
        return int.from_bytes(self.r, "little")

    @property
    def s_int(self) -> int:
        return int.from_bytes(self.s, "little")

    def to_der(self) -> bytes:
        return asym_utils.encode_dss_signature(self.r_int, self.s_int)


# ---------------------------------------------------------------------------------------
# ATTESTATION_REPORT


@layout.struct(size=REPORT_SIZE, spec="SEV-SNP Firmware ABI, ATTESTATION_REPORT version 2")
@record
class ReportV2(layout.Struct):
    version: int = layout.u32(0x000)
    guest_svn: int = layout.u32(0x004)
    policy: int = layout.u64(0x008)
    family_id: bytes = layout.raw(0x010, 16)
    image_id: bytes = layout.raw(0x020, 16)
    vmpl: int = layout.u32(0x030)
    signature_algo: int = layout.u32(0x034)
    current_tcb: int = layout.u64(0x038)
    platform_info: int = layout.u64(0x040)
    signer_info: int = layout.u32(0x048)  # AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY
    report_data: bytes = layout.raw(0x050, 64)
    measurement: bytes = layout.raw(0x090, 48)
    host_data: bytes = layout.raw(0x0C0, 32)
    id_key_digest: bytes = layout.raw(0x0E0, 48)
    author_key_digest: bytes = layout.raw(0x110, 48)
    report_id: bytes = layout.raw(0x140, 32)
    report_id_ma: bytes = layout.raw(0x160, 32)
    reported_tcb: int = layout.u64(0x180)
    chip_id: bytes = layout.raw(0x1A0, 64)
    committed_tcb: int = layout.u64(0x1E0)
    current_build: int = layout.u8(0x1E8)
    current_minor: int = layout.u8(0x1E9)
    current_major: int = layout.u8(0x1EA)
    committed_build: int = layout.u8(0x1EC)
    committed_minor: int = layout.u8(0x1ED)
    committed_major: int = layout.u8(0x1EE)
    launch_tcb: int = layout.u64(0x1F0)
    signature: EcdsaSignature = layout.nested(SIGNED_SIZE, EcdsaSignature)


@layout.struct(size=REPORT_SIZE, spec="SEV-SNP Firmware ABI, ATTESTATION_REPORT version 3")
@record
class ReportV3(ReportV2):
    cpuid_fam_id: int = layout.u8(0x188)
    cpuid_mod_id: int = layout.u8(0x189)
    cpuid_step: int = layout.u8(0x18A)


@layout.struct(size=REPORT_SIZE, spec="SEV-SNP Firmware ABI, ATTESTATION_REPORT version 5")
@record
class ReportV5(ReportV3):
    launch_mit_vector: int = layout.u64(0x1F8)
    current_mit_vector: int = layout.u64(0x200)


REPORT_LAYOUT = {2: ReportV2, 3: ReportV3, 5: ReportV5}

#: GUEST_POLICY bits by name.  Bit 17 is reserved and must be one.
POLICY_BITS = {
    "smt": 16, "migrate_ma": 18, "debug": 19, "single_socket": 20, "cxl_allow": 21,
    "mem_aes_256_xts": 22, "rapl_dis": 23, "ciphertext_hiding": 24, "page_swap_disable": 25,
}
POLICY_RESERVED_ONE = 1 << 17

#: PLATFORM_INFO bits by name; later firmware defines more, shown as "unknown_bits".
PLATFORM_INFO_BITS = {
    "smt_en": 0, "tsme_en": 1, "ecc_en": 2, "rapl_dis": 3, "ciphertext_hiding_en": 4,
    "alias_check_complete": 5,
}

_SIGNER_INFO_DEFINED = 0b11111


def _hex_report(data: bytes) -> bytes | None:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    text = "".join(text.split())
    if text[:2].lower() == "0x":
        text = text[2:]
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def parse_report(data: bytes, *, what: str = "attestation report") -> ReportV2:
    """Parse a report given as 0x4A0 raw bytes or as hex text; strict about every field."""
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        decoded = _hex_report(data)
        if decoded is None or len(decoded) != REPORT_SIZE:
            raise LayoutError(
                f"{what} is {len(data)} bytes, which is neither a binary ATTESTATION_REPORT "
                f"({REPORT_SIZE} bytes) nor its hex text ({2 * REPORT_SIZE} hex digits); give the "
                f"report alone, without a message header or certificate table.")
        data = decoded
    version = int.from_bytes(data[:4], "little")
    cls = REPORT_LAYOUT.get(version)
    if cls is None:
        raise LayoutError(
            f"{what} has VERSION {version} at offset 0x0; this tool reads versions "
            f"{', '.join(map(str, KNOWN_VERSIONS))}: check that the file is an SEV-SNP report.")
    try:
        report = cls.from_bytes(data, what=what)
    except LayoutError as e:
        raise LayoutError(f"{str(e).rstrip('.')}, so the report is corrupt or was altered (the "
                          f"firmware zeroes every reserved field).") from None
    if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise LayoutError(
            f"{what} has SIGNATURE_ALGO {report.signature_algo} at offset 0x34; only 1 "
            f"(ECDSA P-384 with SHA-384) is defined, so the report is corrupt.")
    if report.signer_info & ~_SIGNER_INFO_DEFINED:
        raise LayoutError(
            f"{what}: reserved bits of the word at offset 0x48 are set "
            f"({report.signer_info:#x}); bits 31:5 must be zero, so the report is corrupt.")
    key = (report.signer_info >> 2) & 0b111
    if key not in SigningKey._value2member_map_:
        raise LayoutError(
            f"{what}: SIGNING_KEY (offset 0x48, bits 4:2) is {key}, a reserved value; only 0 "
            f"(VCEK), 1 (VLEK) and 7 (none) are defined.")
    if not report.policy & POLICY_RESERVED_ONE:
        raise LayoutError(
            f"{what}: GUEST_POLICY bit 17 (offset 0x8) is zero but is reserved as one; no "
            f"firmware launches such a guest, so the report is corrupt.")
    if report.to_bytes() != data:  # pragma: no cover - layout invariant
        raise AssertionError("report does not round-trip")
    return report


def signed_region(report: ReportV2) -> bytes:
    """The bytes the signature covers: [0x000, 0x2A0)."""
    return report.to_bytes()[:SIGNED_SIZE]


def signing_key(report: ReportV2) -> SigningKey:
    return SigningKey((report.signer_info >> 2) & 0b111)


def author_key_en(report: ReportV2) -> bool:
    return bool(report.signer_info & 1)


def mask_chip_key(report: ReportV2) -> bool:
    return bool(report.signer_info & 2)


def cpuid_product(report: ReportV2) -> Product | None:
    """The product named by the report itself (version 3 and later), if it is a known one."""
    if not isinstance(report, ReportV3):  # versions 3 and later
        return None
    return product_from_cpuid(report.cpuid_fam_id, report.cpuid_mod_id)


def policy_flags(policy: int) -> dict[str, Any]:
    flags = {name: bool(policy >> bit & 1) for name, bit in POLICY_BITS.items()}
    known = 0xFFFF | POLICY_RESERVED_ONE | sum(1 << b for b in POLICY_BITS.values())
    return {"abi_major": policy >> 8 & 0xFF, "abi_minor": policy & 0xFF, **flags,
            "unknown_bits": f"{policy & ~known:#x}"}


def platform_info_flags(info: int) -> dict[str, Any]:
    flags = {name: bool(info >> bit & 1) for name, bit in PLATFORM_INFO_BITS.items()}
    known = sum(1 << b for b in PLATFORM_INFO_BITS.values())
    return {**flags, "unknown_bits": f"{info & ~known:#x}"}


def describe(report: ReportV2, product: Product | None) -> dict[str, Any]:
    """Every field of ``report`` as JSON-ready values; TCBs decoded when the product is known."""

    def tcb(name: str) -> dict[str, Any]:
        raw = getattr(report, name)
        out: dict[str, Any] = {"raw": f"{raw:#018x}"}
        if product is not None:
            out.update(tcb_components(raw, product, what=name.upper()))
        return out

    out = {
        "version": report.version,
        "guest_svn": report.guest_svn,
        "policy": {"raw": f"{report.policy:#x}", **policy_flags(report.policy)},
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "vmpl": report.vmpl,
        "signature_algo": report.signature_algo,
        "current_tcb": tcb("current_tcb"),
        "platform_info": {"raw": f"{report.platform_info:#x}", **platform_info_flags(report.platform_info)},
        "author_key_en": author_key_en(report),
        "mask_chip_key": mask_chip_key(report),
        "signing_key": signing_key(report).name,
        "report_data": report.report_data.hex(),
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "report_id": report.report_id.hex(),
        "report_id_ma": report.report_id_ma.hex(),
        "reported_tcb": tcb("reported_tcb"),
        "chip_id": report.chip_id.hex(),
        "committed_tcb": tcb("committed_tcb"),
        "current_version": f"{report.current_major}.{report.current_minor}.{report.current_build}",
        "committed_version": f"{report.committed_major}.{report.committed_minor}.{report.committed_build}",
        "launch_tcb": tcb("launch_tcb"),
    }
    if isinstance(report, ReportV3):  # versions 3 and later
        out["cpuid"] = {"family": f"{report.cpuid_fam_id:#x}", "model": f"{report.cpuid_mod_id:#x}",
                        "stepping": f"{report.cpuid_step:#x}"}
    if isinstance(report, ReportV5):
        out["launch_mit_vector"] = f"{report.launch_mit_vector:#x}"
        out["current_mit_vector"] = f"{report.current_mit_vector:#x}"
    return out
