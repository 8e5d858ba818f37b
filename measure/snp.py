"""The SEV-SNP launch, replayed in the order QEMU issues SNP_LAUNCH_UPDATE.

1. the firmware image as NORMAL pages ending at 4 GiB (or a precomputed seed);
2. every SEV metadata section in file order, its page type chosen by the section
   type and the VMM profile (the kernel hashes area is NORMAL with QEMU's table when
   a kernel is measured, ZERO otherwise);
3. one VMSA page per vCPU: the bootstrap processor at the reset vector, application
   processors at the SEV-ES reset block's address.

:class:`SnpLaunch` keeps each stage's state, so one firmware measured for many VM
shapes is hashed once, and the digest for N vCPUs extends the one for N-1.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib

from .errors import InputError, UnsupportedFirmware
from .gctx import LaunchDigest
from .inputs import in_background
from .kernel_hashes import HashTable, KernelHashes
from .ovmf import Firmware, HashesTableLocation
from .record import field, record
from .spec import BSP_RESET_EIP, PAGE_SIZE, GuestFeatures, PageType, SectionType
from .vmm import VmmProfile, profile_for, VmmType
from .vmsa import reset_vmsa, svsm_vmsa

TYPE_CHECKING = False  # collections.abc loads the collections package; type checkers read the block
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

MAX_VCPUS = 4096
U64_MAX = (1 << 64) - 1


@record
class VmShape:
    """What the VMM launches: vCPU count and type, SEV features, VMM profile."""

    vcpus: int
    vcpu_sig: int | None = None
    guest_features: int = 0x1
    profile: VmmProfile = field(default_factory=lambda: profile_for(VmmType.QEMU))

    def check(self) -> None:
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise InputError(f"--vcpus {self.vcpus} is invalid; a guest has 1 to {MAX_VCPUS} vCPUs.")
        if not 0 <= self.guest_features <= U64_MAX:
            raise InputError(f"--guest-features {self.guest_features:#x} does not fit in 64 bits.")
        if self.vcpu_sig is None and self.profile.needs_vcpu_sig:
            raise InputError(f"the {self.profile.name} VMM needs the vCPU type: give --vcpu-type, "
                             f"--vcpu-sig or --vcpu-family/--vcpu-model/--vcpu-stepping.")
        if self.vcpu_sig is not None and not 0 <= self.vcpu_sig <= 0xFFFFFFFF:
            raise InputError(f"--vcpu-sig {self.vcpu_sig:#x} does not fit in 32 bits.")


def require_snp_metadata(fw: Firmware) -> None:
    if not fw.sections:
        raise UnsupportedFirmware(
            f"{fw.name} has no SEV metadata, so QEMU cannot launch it as an SNP guest; use an "
            f"OVMF built with SNP support (Debian's ovmf-amdsev OVMF.amdsev.fd, or the 2 MiB "
            f"OVMF_CODE.fd of Debian's ovmf).", missing="SEV_METADATA")


def check_hashes_table_size(fw: Firmware, table: HashesTableLocation) -> None:
    """QEMU refuses a measured boot whose hashes table area cannot hold its table."""
    if table.size < HashTable.SIZE:
        raise UnsupportedFirmware(
            f"{fw.name}: the SEV hashes table area at {table.gpa:#x} is {table.size:#x} bytes, smaller "
            f"than the {HashTable.SIZE:#x}-byte table QEMU writes there (QEMU refuses such firmware); "
            f"use Debian's ovmf-amdsev.", missing="SEV_HASH_TABLE_RV_GUID")


def kernel_hashes_area(fw: Firmware, hashes: KernelHashes) -> tuple[int, bytes]:
    """GPA and contents of the SNP_KERNEL_HASHES section for a measured direct boot."""
    sections = [s for s in fw.sections if s.section_type == SectionType.SNP_KERNEL_HASHES]
    if not sections:
        raise UnsupportedFirmware(
            f"a kernel was given but {fw.name} has no SNP_KERNEL_HASHES section, so the kernel, "
            f"initrd and command line cannot be part of the launch digest; use Debian's "
            f"ovmf-amdsev (OVMF.amdsev.fd) or drop --kernel/--initrd/--append.",
            missing="SNP_KERNEL_HASHES")
    sec = sections[0]
    table = fw.hashes_table()
    if table is None:
        raise UnsupportedFirmware(
            f"{fw.name} has an SNP_KERNEL_HASHES section but no SEV hashes table entry in its "
            f"footer table; the firmware is inconsistent. Use Debian's ovmf-amdsev.",
            missing="SEV_HASH_TABLE_RV_GUID")
    check_hashes_table_size(fw, table)
    if not sec.gpa <= table.gpa < sec.gpa + PAGE_SIZE:
        raise UnsupportedFirmware(
            f"{fw.name}: the SEV hashes table at {table.gpa:#x} is not in the first page of the "
            f"SNP_KERNEL_HASHES section {sec.gpa:#x}+{sec.size:#x}; QEMU cannot place it there.",
            missing="SNP_KERNEL_HASHES")
    return sec.gpa, hashes.area(table.gpa & (PAGE_SIZE - 1), sec.size)


def measure_metadata(ld: LaunchDigest, fw: Firmware, profile: VmmProfile,
                     hashes: KernelHashes | None) -> None:
    """Stage 2: the SEV metadata sections of ``fw``."""
    hashes_area = kernel_hashes_area(fw, hashes) if hashes is not None else None
    for sec in fw.sections:
        kind = sec.section_type
        if kind == SectionType.SNP_SEC_MEM:
            if profile.sec_mem_page_type == PageType.UNMEASURED:
                ld.update_unmeasured_pages(sec.gpa, sec.size)
            else:
                ld.update_zero_pages(sec.gpa, sec.size)
        elif kind == SectionType.SNP_SECRETS:
            ld.update_secrets_page(sec.gpa)
        elif kind == SectionType.CPUID:
            if not profile.cpuid_page_last:
                ld.update_cpuid_page(sec.gpa)
        elif kind == SectionType.SNP_KERNEL_HASHES:
            if hashes_area is not None:
                ld.update_normal_pages(*hashes_area)
            else:
                ld.update_zero_pages(sec.gpa, sec.size)
        elif kind == SectionType.SVSM_CAA:
            ld.update_zero_pages(sec.gpa, sec.size)
        else:  # pragma: no cover - SectionType is closed and parsed strictly
            raise AssertionError(kind)
    if profile.cpuid_page_last:
        for sec in fw.sections:
            if sec.section_type == SectionType.CPUID:
                ld.update_cpuid_page(sec.gpa)


def firmware_pages(fw: Firmware, trace: bool = False) -> LaunchDigest:
    """Stage 1: the firmware image as NORMAL pages.

    Its digest is sev-snp-measure's ``snp:ovmf-hash``; any firmware has one, SEV
    metadata or not.
    """
    ld = LaunchDigest(trace=trace)
    ld.update_normal_pages(fw.gpa, fw.data)
    return ld


@record
class Measurement:
    digest: bytes
    vmsas: tuple[bytes, ...]
    pages: int
    log: tuple[tuple[PageType, int, bytes, bytes], ...] | None = None


class SnpLaunch:
    """One firmware image, measured once, extended for any number of VM shapes."""

    def __init__(self, fw: Firmware, *, ovmf_hash: bytes | None = None, trace: bool = False,
                 pages: Callable[[], LaunchDigest] | None = None):
        """``pages``, if given, waits for ``firmware_pages(fw, trace)`` already started elsewhere."""
        require_snp_metadata(fw)
        self.fw = fw
        self.ap_eip = fw.require_sev_es_reset_eip()
        if ovmf_hash is None:
            # The firmware pages are hashed in the background, so that hashing the kernel and
            # initrd (KernelHashes.from_files, typically next) runs beside them; the first use
            # of the digest waits for it.
            self._pending: Callable[[], LaunchDigest] | None = \
                pages if pages is not None else in_background(firmware_pages, fw, trace)
            self._firmware_ld: LaunchDigest | None = None
        else:
            self._pending, self._firmware_ld = None, LaunchDigest(ovmf_hash, trace=trace)
        self._metadata: dict[tuple[VmmProfile, KernelHashes | None], LaunchDigest] = {}

    @property
    def _firmware(self) -> LaunchDigest:
        if self._firmware_ld is None:
            assert self._pending is not None
            self._firmware_ld, self._pending = self._pending(), None
        return self._firmware_ld

    @property
    def firmware_digest(self) -> bytes:
        """The digest after the firmware pages: sev-snp-measure's ``snp:ovmf-hash``."""
        return self._firmware.digest

    def after_metadata(self, profile: VmmProfile, hashes: KernelHashes | None) -> LaunchDigest:
        key = (profile, hashes)
        if key not in self._metadata:
            ld = self._firmware.copy()
            measure_metadata(ld, self.fw, profile, hashes)
            self._metadata[key] = ld
        return self._metadata[key].copy()

    def vmsa_pages(self, shape: VmShape) -> tuple[bytes, bytes]:
        """(BSP page, AP page) for ``shape``."""
        bsp = reset_vmsa(shape.profile, BSP_RESET_EIP, shape.guest_features, shape.vcpu_sig)
        ap = reset_vmsa(shape.profile, self.ap_eip, shape.guest_features, shape.vcpu_sig)
        return bsp.to_bytes(), ap.to_bytes()

    def measure(self, shape: VmShape, hashes: KernelHashes | None = None) -> Measurement:
        return self.measure_vcpu_counts(shape, [shape.vcpus], hashes)[shape.vcpus]

    def measure_vcpu_counts(self, shape: VmShape, counts: Iterable[int], hashes: KernelHashes | None = None
                            ) -> dict[int, Measurement]:
        """Digests for several vCPU counts of one shape, each extending the previous."""
        counts = sorted(set(counts))
        if counts:
            # What checking every count in order would raise first, in two checks: the smallest
            # count's shape (its other fields too), then the first count out of range.
            VmShape(counts[0], shape.vcpu_sig, shape.guest_features, shape.profile).check()
            bad = next((n for n in counts if not 1 <= n <= MAX_VCPUS), None)
            if bad is not None:
                VmShape(bad, shape.vcpu_sig, shape.guest_features, shape.profile).check()
        if not shape.guest_features & GuestFeatures.SNP_ACTIVE:
            # The VMSA of every SNP guest has SNPActive set; without it no launch has this digest.
            raise InputError(f"--guest-features {shape.guest_features:#x} lacks SNPActive (bit 0), which every "
                             f"SEV-SNP guest's VMSA has; give a value with bit 0 set, such as "
                             f"{shape.guest_features | GuestFeatures.SNP_ACTIVE:#x}.")
        ld = self.after_metadata(shape.profile, hashes)
        bsp, ap = self.vmsa_pages(shape)
        bsp_digest, ap_digest = hashlib.sha384(bsp).digest(), hashlib.sha384(ap).digest()
        out = {}
        done = 0
        for n in counts:
            # One VMSA page per vCPU, each extending the digest of the previous count.
            if done == 0:
                ld.update_vmsa_pages(bsp_digest, 1)
                done = 1
            ld.update_vmsa_pages(ap_digest, n - done)
            done = n
            out[n] = Measurement(ld.digest, (bsp,) + (ap,) * (n - 1), ld.pages,
                                 None if ld.log is None else tuple(ld.log))
        return out

    def measure_matrix(self, shapes: Iterable[VmShape], counts: Iterable[int],
                       hashes: KernelHashes | None = None) -> list[dict[int, Measurement]]:
        """For each shape of ``shapes`` (its ``vcpus`` ignored), in order, the digests for
        every vCPU count, as :meth:`measure_vcpu_counts` gives them.

        The firmware pages are hashed once, the metadata once per VMM profile, and each
        count extends the digest of the previous one, so a matrix of hundreds of launches
        costs little more than one.
        """
        counts = sorted(set(counts))
        return [self.measure_vcpu_counts(shape, counts, hashes) for shape in shapes]


def svsm_launch(ovmf: Firmware, svsm: Firmware, vcpus: int, vcpu_sig: int | None,
                profile: VmmProfile, trace: bool = False) -> Measurement:
    """SNP launch of a COCONUT-SVSM image placed below OVMF and its variable store."""
    if profile.vmm_type is not VmmType.QEMU:
        raise InputError("snp:svsm mode is only defined for QEMU; use --vmm-type QEMU.")
    shape = VmShape(vcpus, vcpu_sig, 0x1, profile)
    shape.check()
    require_snp_metadata(svsm)
    eip = svsm.gpa + svsm.svsm_entry_offset()
    ld = firmware_pages(ovmf, trace=trace)
    ld.update_normal_pages(svsm.gpa, svsm.data)
    measure_metadata(ld, svsm, profile, None)
    page = svsm_vmsa(profile, eip, vcpu_sig).to_bytes()
    for _ in range(vcpus):
        ld.update_vmsa_page(page)
    return Measurement(ld.digest, (page,) * vcpus, ld.pages, None if ld.log is None else tuple(ld.log))
