"""Constants of the SEV, SEV-ES and SEV-SNP launch process.

Sources of the facts: AMD SEV-SNP Firmware ABI specification (PAGE_INFO and page
types), edk2 ``OvmfPkg/ResetVector`` (footer GUID table and SEV metadata), QEMU
``target/i386/sev.c`` (the kernel hashes table and its GUIDs).

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

TYPE_CHECKING = False  # enum costs ~3 ms to import; type checkers read the real enums below
if TYPE_CHECKING:
    from enum import Enum as _Enum, IntEnum as _IntEnum, IntFlag as _IntFlag
else:
    from .named import Named as _Enum, NamedFlag as _IntFlag, NamedInt as _IntEnum

PAGE_SIZE = 0x1000
PAGE_MASK = PAGE_SIZE - 1
FOUR_GIB = 0x1_0000_0000

#: SHA-384 digest size: the SNP launch digest and PAGE_INFO.contents.
LD_SIZE = 48

#: GPA at which the SNP firmware records VMSA pages: (u64)-1, page aligned and
#: truncated to the 48-bit physical address width of Milan.
VMSA_GPA = 0xFFFF_FFFF_F000

#: Reset vector of the bootstrap processor.
BSP_RESET_EIP = 0xFFFF_FFF0


class PageType(_IntEnum):
    """PAGE_TYPE of SNP_LAUNCH_UPDATE (SEV-SNP Firmware ABI)."""

    NORMAL = 0x1
    VMSA = 0x2
    ZERO = 0x3
    UNMEASURED = 0x4
    SECRETS = 0x5
    CPUID = 0x6


class SectionType(_IntEnum):
    """Section types of the OVMF SEV metadata (edk2 OvmfSevMetadata.asm)."""

    SNP_SEC_MEM = 0x1
    SNP_SECRETS = 0x2
    CPUID = 0x3
    SVSM_CAA = 0x4
    SNP_KERNEL_HASHES = 0x10


class Guid(bytes):
    """A GUID as firmware stores it: 16 bytes, the first three groups little-endian.

    The same bytes as ``uuid.UUID(text).bytes_le`` (without importing :mod:`uuid`, which
    loads :mod:`platform`); ``str()`` gives the usual text form.
    """

    @classmethod
    def parse(cls, text: str) -> Guid:
        b = bytes.fromhex(text.replace("-", ""))
        if len(b) != 16:
            raise ValueError(f"a GUID has 32 hex digits, got {text!r}")
        return cls(b[3::-1] + b[5:3:-1] + b[7:5:-1] + b[8:])

    @property
    def bytes_le(self) -> bytes:
        return bytes(self)

    def __str__(self) -> str:
        b = bytes(self)
        h = (b[3::-1] + b[5:3:-1] + b[7:5:-1] + b[8:]).hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# GUIDs of the OVMF footer table (edk2 ResetVector/Ia16/ResetVectorVtf0.asm).
OVMF_TABLE_FOOTER_GUID = Guid.parse("96b582de-1fb2-45f7-baea-a366c55a082d")
SEV_HASH_TABLE_RV_GUID = Guid.parse("7255371f-3a3b-4b04-927b-1da6efa8d454")
SEV_ES_RESET_BLOCK_GUID = Guid.parse("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
OVMF_SEV_METADATA_GUID = Guid.parse("dc886566-984a-4798-a75e-5585a7bf67cc")
SVSM_INFO_GUID = Guid.parse("a789a612-0597-4c4b-a49f-cbb1fe9d1ddd")

GUID_NAMES = {
    OVMF_TABLE_FOOTER_GUID: "OVMF_TABLE_FOOTER_GUID",
    SEV_HASH_TABLE_RV_GUID: "SEV_HASH_TABLE_RV_GUID",
    SEV_ES_RESET_BLOCK_GUID: "SEV_ES_RESET_BLOCK_GUID",
    OVMF_SEV_METADATA_GUID: "OVMF_SEV_METADATA_GUID",
    SVSM_INFO_GUID: "SVSM_INFO_GUID",
}

# GUIDs of the SEV hashes table written by QEMU (target/i386/sev.c).
SEV_HASH_TABLE_HEADER_GUID = Guid.parse("9438d606-4f22-4cc9-b479-a793d411fd21")
SEV_KERNEL_ENTRY_GUID = Guid.parse("4de79437-abd2-427f-b835-d5b172d2045b")
SEV_INITRD_ENTRY_GUID = Guid.parse("44baf731-3a2f-4bd7-9af1-41e29169781d")
SEV_CMDLINE_ENTRY_GUID = Guid.parse("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")


class SevMode(_Enum):
    """Guest mode, with the names sev-snp-measure prints in ``-v`` output."""

    SEV = "sev"
    SEV_ES = "seves"
    SEV_SNP = "snp"
    SEV_SNP_SVSM = "snp:svsm"

    @classmethod
    def parse(cls, text: str) -> "SevMode":
        aliases = {
            "sev": cls.SEV,
            "seves": cls.SEV_ES, "sev-es": cls.SEV_ES,
            "snp": cls.SEV_SNP, "sev-snp": cls.SEV_SNP,
            "snp:svsm": cls.SEV_SNP_SVSM, "sev-snp:svsm": cls.SEV_SNP_SVSM,
        }
        try:
            return aliases[text.lower()]
        except KeyError:
            from .errors import InputError
            raise InputError(f"unknown guest mode {text!r}; use one of sev, seves, snp, snp:svsm.") from None


class GuestFeatures(_IntFlag):
    """SEV_FEATURES bits of the VMSA (AMD64 APM vol. 2, table 15-34)."""

    SNP_ACTIVE = 1 << 0
    V_TOM = 1 << 1
    REFLECT_VC = 1 << 2
    RESTRICTED_INJECTION = 1 << 3
    ALTERNATE_INJECTION = 1 << 4
    DEBUG_SWAP = 1 << 5
    PREVENT_HOST_IBS = 1 << 6
    BTB_ISOLATION = 1 << 7
    VMPL_SSS = 1 << 8
    SECURE_TSC = 1 << 9
    VMGEXIT_PARAMETER = 1 << 10
    IBS_VIRTUALIZATION = 1 << 12
    VMSA_REG_PROT = 1 << 14
    SMT_PROTECTION = 1 << 15


#: GUEST_POLICY (SEV-SNP Firmware ABI, guest policy structure): bits 15:0 are the minimum
#: ABI version, 16 and 18-25 are defined flags, bit 17 is reserved and must be one, and
#: bits 63:26 are reserved and must be zero.
GUEST_POLICY_RESERVED_ONE = 1 << 17
GUEST_POLICY_RESERVED_ZERO = ((1 << 64) - 1) & ~((1 << 26) - 1)


def guest_policy_problem(policy: int) -> str | None:
    """Why ``policy`` is not a GUEST_POLICY the firmware accepts, as a clause; None when it is one."""
    if not 0 <= policy < 1 << 64:
        return f"{policy:#x} does not fit in 64 bits"
    if not policy & GUEST_POLICY_RESERVED_ONE:
        return f"{policy:#x} has bit 17 clear, which the SNP ABI reserves as one (the QEMU default is 0x30000)"
    reserved = [bit for bit in range(26, 64) if policy >> bit & 1]
    if reserved:
        return (f"{policy:#x} sets reserved bit{'s' if len(reserved) > 1 else ''} "
                f"{', '.join(map(str, reserved))} (bits 63:26 must be zero)")
    return None
