"""The VMSA (encrypted register save area) page of each vCPU at launch.

Layout: AMD64 APM vol. 2, table B-4, as ``struct sev_es_save_area`` in Linux
``arch/x86/include/asm/svm.h``.  Every field that Linux names is declared, so a VMSA
page can be parsed back and two pages compared field by field (``blindbox
explain-vmsa``); undeclared bytes are reserved and must be zero.  The initial register
values depend on the VMM; they come from a :class:`~measure.vmm.VmmProfile`.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

from . import layout
from .record import fields, record, replace
from .spec import BSP_RESET_EIP, PAGE_SIZE
from .vmm import VmmProfile

TYPE_CHECKING = False  # importing typing costs ~2 ms (bench/targets.py); type checkers read the block
if TYPE_CHECKING:
    from typing import Any


@layout.struct(size=0x10, spec="Linux svm.h, struct vmcb_seg")
@record
class Segment(layout.Struct):
    selector: int = layout.u16(0x0)
    attrib: int = layout.u16(0x2)
    limit: int = layout.u32(0x4)
    base: int = layout.u64(0x8)


def _seg(offset: int) -> Any:
    return layout.nested(offset, Segment)


@layout.struct(size=PAGE_SIZE, spec="AMD64 APM vol. 2 table B-4; Linux svm.h, struct sev_es_save_area")
@record
class SaveArea(layout.Struct):
    es: Segment = _seg(0x000)
    cs: Segment = _seg(0x010)
    ss: Segment = _seg(0x020)
    ds: Segment = _seg(0x030)
    fs: Segment = _seg(0x040)
    gs: Segment = _seg(0x050)
    gdtr: Segment = _seg(0x060)
    ldtr: Segment = _seg(0x070)
    idtr: Segment = _seg(0x080)
    tr: Segment = _seg(0x090)
    vmpl0_ssp: int = layout.u64(0x0A0)
    vmpl1_ssp: int = layout.u64(0x0A8)
    vmpl2_ssp: int = layout.u64(0x0B0)
    vmpl3_ssp: int = layout.u64(0x0B8)
    u_cet: int = layout.u64(0x0C0)
    vmpl: int = layout.u8(0x0CA)
    cpl: int = layout.u8(0x0CB)
    efer: int = layout.u64(0x0D0)
    xss: int = layout.u64(0x140)
    cr4: int = layout.u64(0x148)
    cr3: int = layout.u64(0x150)
    cr0: int = layout.u64(0x158)
    dr7: int = layout.u64(0x160)
    dr6: int = layout.u64(0x168)
    rflags: int = layout.u64(0x170)
    rip: int = layout.u64(0x178)
    dr0: int = layout.u64(0x180)
    dr1: int = layout.u64(0x188)
    dr2: int = layout.u64(0x190)
    dr3: int = layout.u64(0x198)
    dr0_addr_mask: int = layout.u64(0x1A0)
    dr1_addr_mask: int = layout.u64(0x1A8)
    dr2_addr_mask: int = layout.u64(0x1B0)
    dr3_addr_mask: int = layout.u64(0x1B8)
    rsp: int = layout.u64(0x1D8)
    s_cet: int = layout.u64(0x1E0)
    ssp: int = layout.u64(0x1E8)
    isst_addr: int = layout.u64(0x1F0)
    rax: int = layout.u64(0x1F8)
    star: int = layout.u64(0x200)
    lstar: int = layout.u64(0x208)
    cstar: int = layout.u64(0x210)
    sfmask: int = layout.u64(0x218)
    kernel_gs_base: int = layout.u64(0x220)
    sysenter_cs: int = layout.u64(0x228)
    sysenter_esp: int = layout.u64(0x230)
    sysenter_eip: int = layout.u64(0x238)
    cr2: int = layout.u64(0x240)
    g_pat: int = layout.u64(0x268)
    dbgctl: int = layout.u64(0x270)
    br_from: int = layout.u64(0x278)
    br_to: int = layout.u64(0x280)
    last_excp_from: int = layout.u64(0x288)
    last_excp_to: int = layout.u64(0x290)
    pkru: int = layout.u32(0x2E8)
    tsc_aux: int = layout.u32(0x2EC)
    rcx: int = layout.u64(0x308)
    rdx: int = layout.u64(0x310)
    rbx: int = layout.u64(0x318)
    rbp: int = layout.u64(0x328)
    rsi: int = layout.u64(0x330)
    rdi: int = layout.u64(0x338)
    r8: int = layout.u64(0x340)
    r9: int = layout.u64(0x348)
    r10: int = layout.u64(0x350)
    r11: int = layout.u64(0x358)
    r12: int = layout.u64(0x360)
    r13: int = layout.u64(0x368)
    r14: int = layout.u64(0x370)
    r15: int = layout.u64(0x378)
    guest_exit_info_1: int = layout.u64(0x390)
    guest_exit_info_2: int = layout.u64(0x398)
    guest_exit_int_info: int = layout.u64(0x3A0)
    guest_nrip: int = layout.u64(0x3A8)
    sev_features: int = layout.u64(0x3B0)
    vintr_ctrl: int = layout.u64(0x3B8)
    guest_exit_code: int = layout.u64(0x3C0)
    virtual_tom: int = layout.u64(0x3C8)
    tlb_id: int = layout.u64(0x3D0)
    pcpu_id: int = layout.u64(0x3D8)
    event_inj: int = layout.u64(0x3E0)
    xcr0: int = layout.u64(0x3E8)
    x87_dp: int = layout.u64(0x400)
    mxcsr: int = layout.u32(0x408)
    x87_ftw: int = layout.u16(0x40C)
    x87_fsw: int = layout.u16(0x40E)
    x87_fcw: int = layout.u16(0x410)
    x87_fop: int = layout.u16(0x412)
    x87_ds: int = layout.u16(0x414)
    x87_cs: int = layout.u16(0x416)
    x87_rip: int = layout.u64(0x418)
    fpreg_x87: bytes = layout.raw(0x420, 80)
    fpreg_xmm: bytes = layout.raw(0x470, 256)
    fpreg_ymm: bytes = layout.raw(0x570, 256)


def diff(a: SaveArea, b: SaveArea) -> list[tuple[str, int, object, object]]:
    """Fields that differ between two save areas: (name, offset, a value, b value)."""
    out = []
    for f in fields(SaveArea):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if va == vb:
            continue
        if isinstance(va, Segment):
            for sf in fields(Segment):
                if getattr(va, sf.name) != getattr(vb, sf.name):
                    out.append((f"{f.name}.{sf.name}",
                                SaveArea.offset_of(f.name) + Segment.offset_of(sf.name),
                                getattr(va, sf.name), getattr(vb, sf.name)))
        else:
            out.append((f.name, SaveArea.offset_of(f.name), va, vb))
    return out


# Reset state shared by every VMM: what KVM/QEMU put in a vCPU at INIT (AMD64 APM
# vol. 2, table 14-1), with the registers KVM additionally sets (EFER.SVME, CR4.MCE).
_RESET = SaveArea(
    es=Segment(0, 0x93, 0xFFFF, 0),
    ds=Segment(0, 0x93, 0xFFFF, 0),
    fs=Segment(0, 0x93, 0xFFFF, 0),
    gs=Segment(0, 0x93, 0xFFFF, 0),
    gdtr=Segment(0, 0, 0xFFFF, 0),
    idtr=Segment(0, 0, 0xFFFF, 0),
    ldtr=Segment(0, 0x82, 0xFFFF, 0),
    efer=0x1000,
    cr4=0x40,
    cr0=0x10,
    dr7=0x400,
    dr6=0xFFFF0FF0,
    rflags=0x2,
    xcr0=0x1,
)


def reset_vmsa(profile: VmmProfile, eip: int, sev_features: int, vcpu_sig: int | None) -> SaveArea:
    """VMSA of a vCPU starting at ``eip`` (real-mode reset) under ``profile``."""
    cs_attrib = profile.cs_attrib_at_reset_vector if eip == BSP_RESET_EIP else profile.cs_attrib
    return replace(
        _RESET,
        cs=Segment(0xF000, cs_attrib, 0xFFFF, eip & 0xFFFF0000),
        ss=Segment(0, profile.ss_attrib, 0xFFFF, 0),
        tr=Segment(0, profile.tr_attrib, 0xFFFF, 0),
        rip=eip & 0xFFFF,
        g_pat=profile.g_pat,
        rdx=profile.rdx if profile.rdx is not None else (vcpu_sig or 0),
        sev_features=sev_features,
        mxcsr=profile.mxcsr,
        x87_fcw=profile.x87_fcw,
    )


def svsm_vmsa(profile: VmmProfile, eip: int, vcpu_sig: int | None) -> SaveArea:
    """VMSA of a vCPU entering a COCONUT-SVSM image in 32-bit protected mode at ``eip``."""
    flat_data = Segment(16, 0xC93, 0xFFFFFFFF, 0)
    return replace(
        _RESET,
        es=flat_data, ss=flat_data, ds=flat_data, fs=flat_data,
        cs=Segment(8, 0xC9B, 0xFFFFFFFF, 0),
        tr=Segment(0, 0x8B, 0xFFFF, 0),
        cr0=0x11,
        rip=eip,
        g_pat=0x0007040600070406,
        rdx=vcpu_sig or 0,
        sev_features=0x1,
        mxcsr=profile.mxcsr,
        x87_fcw=profile.svsm_x87_fcw,
    )
