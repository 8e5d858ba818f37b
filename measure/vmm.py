"""VMM profiles: how each hypervisor launches an SNP guest, as versioned data.

A VMM's behaviour changes over time (EC2 moved its VMSA ``rdx`` from 0 to 0x600;
host kernels began syncing the x87/SSE state into the VMSA), so a launch digest is
always computed for a named *profile*.  ``--vmm-type`` picks the current profile of a
VMM; ``--vmm-profile`` selects any profile, older ones included.  JSON output names
the profile that produced each digest.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

from .errors import InputError
from .record import record
from .spec import PageType

TYPE_CHECKING = False  # enum costs ~3 ms to import; type checkers read the real enum below
if TYPE_CHECKING:
    from enum import Enum as _Enum
else:
    from .named import Named as _Enum


class VmmType(_Enum):
    QEMU = "QEMU"
    EC2 = "ec2"
    GCE = "gce"

    @classmethod
    def parse(cls, text: str) -> "VmmType":
        for member in cls:
            if member.value.lower() == text.lower():
                return member
        raise InputError(f"unknown VMM type {text!r}; use one of QEMU, ec2, gce (any case).")


@record
class VmmProfile:
    name: str
    vmm_type: VmmType
    summary: str
    #: ``rdx`` at reset: None means the vCPU signature (CPUID Fn0000_0001_EAX).
    rdx: int | None
    cs_attrib: int = 0x9B
    cs_attrib_at_reset_vector: int = 0x9B
    ss_attrib: int = 0x93
    tr_attrib: int = 0x8B
    g_pat: int = 0x0007040600070406
    mxcsr: int = 0x1F80
    x87_fcw: int = 0x37F
    #: x87 control word of the SVSM VMSA (see docs/decisions.md).
    svsm_x87_fcw: int = 0x37F
    #: page type of SNP_SEC_MEM sections.
    sec_mem_page_type: PageType = PageType.ZERO
    #: the CPUID page is measured after all other metadata sections.
    cpuid_page_last: bool = False
    #: whether a vCPU signature must be given (the VMM copies the host's otherwise).
    needs_vcpu_sig: bool = True
    #: whether the profile reproduces sev-snp-measure 0.0.13 exactly.
    sev_snp_measure_0_0_13: bool = True


PROFILES: dict[str, VmmProfile] = {p.name: p for p in (
    VmmProfile(
        name="qemu", vmm_type=VmmType.QEMU, rdx=None,
        summary="QEMU/KVM: rdx holds the vCPU signature; the VMSA carries the reset x87/SSE "
                "state (FCW 0x37f, MXCSR 0x1f80) that current host kernels sync into it"),
    VmmProfile(
        name="qemu-svsm-fcw0", vmm_type=VmmType.QEMU, rdx=None, svsm_x87_fcw=0,
        summary="as qemu, but the snp:svsm VMSA has x87 FCW 0 with MXCSR 0x1f80, exactly as "
                "sev-snp-measure 0.0.13 computes it (no known host produces this state)"),
    VmmProfile(
        name="ec2", vmm_type=VmmType.EC2, rdx=0x600,
        cs_attrib_at_reset_vector=0x9A, ss_attrib=0x92, tr_attrib=0x83,
        mxcsr=0, x87_fcw=0, svsm_x87_fcw=0, cpuid_page_last=True, needs_vcpu_sig=False,
        summary="Amazon EC2 today: rdx 0x600, no x87/SSE state, CPUID page measured last "
                "(sev-snp-measure 0.0.13)"),
    VmmProfile(
        name="ec2-rdx0", vmm_type=VmmType.EC2, rdx=0,
        cs_attrib_at_reset_vector=0x9A, ss_attrib=0x92, tr_attrib=0x83,
        mxcsr=0, x87_fcw=0, svsm_x87_fcw=0, cpuid_page_last=True, needs_vcpu_sig=False,
        sev_snp_measure_0_0_13=False,
        summary="Amazon EC2 hosts before the rdx change: rdx 0 (sev-snp-measure 0.0.12; "
                "virtee/sev's EC2 test vectors)"),
    VmmProfile(
        name="gce", vmm_type=VmmType.GCE, rdx=0x600, g_pat=0x00070106,
        mxcsr=0, x87_fcw=0, svsm_x87_fcw=0, sec_mem_page_type=PageType.UNMEASURED,
        needs_vcpu_sig=False,
        summary="Google Compute Engine: rdx 0x600, its own PAT, no x87/SSE state, "
                "SNP_SEC_MEM pages unmeasured"),
)}

DEFAULT_PROFILE = {VmmType.QEMU: "qemu", VmmType.EC2: "ec2", VmmType.GCE: "gce"}


def profile(name: str) -> VmmProfile:
    try:
        return PROFILES[name.lower()]
    except KeyError:
        raise InputError(f"unknown VMM profile {name!r}; use one of {', '.join(PROFILES)}.") from None


def profile_for(vmm_type: VmmType) -> VmmProfile:
    return PROFILES[DEFAULT_PROFILE[vmm_type]]
