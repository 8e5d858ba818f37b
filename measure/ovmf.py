"""Firmware images: the OVMF footer GUID table and the SEV metadata sections.

The last 32 bytes of an OVMF image hold the reset vector; just before them sits the
footer of a table of GUID-tagged entries that grows downwards (edk2
``OvmfPkg/ResetVector``).  Each entry is ``data || u16 size || GUID`` where ``size``
counts the whole entry.  Entries of interest: the SEV-ES reset block (AP reset
address), the SEV hashes table location, and the offset of the SEV metadata, whose
sections (secure memory, secrets, CPUID, SVSM CAA, kernel hashes) drive the SNP
launch.  Every inconsistency is refused with the offset where it was found.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations


from . import layout
from .errors import FirmwareError, LayoutError, UnsupportedFirmware
from .gctx import gpa_range_problem
from .limits import MAX_FIRMWARE_BYTES, MAX_METADATA_BYTES
from .record import record
from .spec import (FOUR_GIB, GUID_NAMES, Guid, OVMF_SEV_METADATA_GUID, OVMF_TABLE_FOOTER_GUID, PAGE_SIZE,
                   SEV_ES_RESET_BLOCK_GUID, SEV_HASH_TABLE_RV_GUID, SVSM_INFO_GUID, SectionType)

TYPE_CHECKING = False  # importing typing costs ~2 ms (bench/targets.py); type checkers read the block
if TYPE_CHECKING:
    from pathlib import Path  # pathlib brings re, fnmatch and urllib.parse: ~8 ms (bench/targets.py)
    from typing import Any

#: Bytes after the footer entry: the reset vector area of the image.
_RESET_AREA = 32


@layout.struct(size=0x12, spec="edk2 ResetVectorVtf0.asm, GUIDed table entry header")
@record
class FooterEntryHeader(layout.Struct):
    size: int = layout.u16(0x0)
    guid: bytes = layout.raw(0x2, 16)


@layout.struct(size=0x10, spec="edk2 OvmfSevMetadata.asm, SEV metadata header")
@record
class SevMetadataHeader(layout.Struct):
    signature: bytes = layout.raw(0x0, 4)
    size: int = layout.u32(0x4)
    version: int = layout.u32(0x8)
    num_items: int = layout.u32(0xC)


@layout.struct(size=0xC, spec="edk2 OvmfSevMetadata.asm, SEV metadata section descriptor")
@record
class MetadataSection(layout.Struct):
    gpa: int = layout.u32(0x0)
    size: int = layout.u32(0x4)
    section_type: SectionType = layout.u32(0x8, enum=SectionType, default=SectionType.SNP_SEC_MEM)


@record
class HashesTableLocation:
    gpa: int
    size: int


class Firmware:
    """A parsed firmware image mapped so that it ends at ``end_gpa`` (4 GiB for OVMF)."""

    def __init__(self, data: bytes, *, name: str = "firmware", end_gpa: int = FOUR_GIB):
        self.data = bytes(data)
        self.name = name
        size = len(self.data)
        if size == 0 or size % PAGE_SIZE:
            raise FirmwareError(
                f"{name}: size {size} bytes is not a positive multiple of 4096; the file is truncated "
                f"or not a firmware image. Use the complete OVMF .fd file.", path=name)
        if size > MAX_FIRMWARE_BYTES:
            raise FirmwareError(
                f"{name}: size {size:,} bytes is larger than any firmware image can be "
                f"({MAX_FIRMWARE_BYTES:,} bytes, docs/limits.md); give the OVMF .fd file.", path=name)
        if size > end_gpa:
            raise FirmwareError(f"{name}: {size:#x} bytes do not fit below {end_gpa:#x}.", path=name)
        self.end_gpa = end_gpa
        self.gpa = end_gpa - size
        self.table = self._parse_footer_table()
        self.sections = self._parse_sev_metadata()

    @classmethod
    def load(cls, path: str | Path, *, end_gpa: int = FOUR_GIB) -> "Firmware":
        from .inputs import read_input
        return cls(read_input(path, "firmware", limit=MAX_FIRMWARE_BYTES), name=str(path), end_gpa=end_gpa)

    # -- footer table ------------------------------------------------------------------
    def _parse_footer_table(self) -> dict[Guid, bytes]:
        hdr_size = FooterEntryHeader.SIZE
        footer_off = len(self.data) - _RESET_AREA - hdr_size
        if footer_off < 0:
            return {}
        footer = FooterEntryHeader.from_bytes(self.data[footer_off:footer_off + hdr_size])
        if Guid(footer.guid) != OVMF_TABLE_FOOTER_GUID:
            return {}
        table_size = footer.size - hdr_size
        if table_size < 0 or table_size > footer_off:
            raise FirmwareError(
                f"{self.name}: the OVMF footer table at offset {footer_off:#x} declares size "
                f"{footer.size:#x}, outside the image; the firmware is corrupt.",
                path=self.name, offset=footer_off)
        table: dict[Guid, bytes] = {}
        end = footer_off
        start = footer_off - table_size
        while end - start >= hdr_size:
            entry = FooterEntryHeader.from_bytes(self.data[end - hdr_size:end])
            guid = Guid(entry.guid)
            if entry.size < hdr_size or entry.size > end - start:
                raise FirmwareError(
                    f"{self.name}: OVMF footer table entry {guid} at offset {end - hdr_size:#x} has "
                    f"invalid size {entry.size:#x}; the firmware is corrupt.",
                    path=self.name, offset=end - hdr_size)
            if guid in table:
                raise FirmwareError(
                    f"{self.name}: OVMF footer table lists {guid} twice (offset {end - hdr_size:#x}); "
                    f"the firmware is corrupt.", path=self.name, offset=end - hdr_size)
            table[guid] = self.data[end - entry.size:end - hdr_size]
            end -= entry.size
        if end != start:
            raise FirmwareError(
                f"{self.name}: {end - start} stray byte(s) at offset {start:#x} in the OVMF footer "
                f"table; the firmware is corrupt.", path=self.name, offset=start)
        return table

    def _u32_entry(self, guid: Guid, index: int = 0) -> int | None:
        entry = self.table.get(guid)
        if entry is None:
            return None
        if len(entry) < 4 * (index + 1):
            raise FirmwareError(
                f"{self.name}: OVMF footer table entry {GUID_NAMES.get(guid, guid)} has "
                f"{len(entry)} data bytes, too short; the firmware is corrupt.", path=self.name)
        return int.from_bytes(entry[4 * index:4 * index + 4], "little")

    # -- SEV metadata ------------------------------------------------------------------
    def _parse_sev_metadata(self) -> tuple[MetadataSection, ...]:
        offset_from_end = self._u32_entry(OVMF_SEV_METADATA_GUID)
        if offset_from_end is None:
            return ()
        start = len(self.data) - offset_from_end
        hdr_size = SevMetadataHeader.SIZE
        if offset_from_end < hdr_size or start < 0:
            raise FirmwareError(
                f"{self.name}: SEV metadata offset {offset_from_end:#x} (from the end) points "
                f"outside the image; the firmware is corrupt.", path=self.name)
        header = SevMetadataHeader.from_bytes(self.data[start:start + hdr_size])
        if header.signature != b"ASEV":
            raise FirmwareError(
                f"{self.name}: SEV metadata at offset {start:#x} has signature "
                f"{header.signature!r}, expected b'ASEV'; the firmware is corrupt.",
                path=self.name, offset=start)
        if header.version != 1:
            raise FirmwareError(
                f"{self.name}: SEV metadata at offset {start:#x} has version {header.version}; "
                f"only version 1 is known.", path=self.name, offset=start)
        need = hdr_size + header.num_items * MetadataSection.SIZE
        if header.size < need or start + header.size > len(self.data):
            raise FirmwareError(
                f"{self.name}: SEV metadata at offset {start:#x} declares size {header.size:#x} "
                f"for {header.num_items} section(s) (needs {need:#x}, within the image); "
                f"the firmware is corrupt.", path=self.name, offset=start)
        sections: list[MetadataSection] = []
        total = 0
        for i in range(header.num_items):
            off = start + hdr_size + i * MetadataSection.SIZE
            try:
                sec = MetadataSection.from_bytes(self.data[off:off + MetadataSection.SIZE],
                                                 base=off, what=f"{self.name}: SEV metadata section {i}")
            except LayoutError as e:
                raise FirmwareError(f"{e} The firmware is corrupt or newer than this tool.",
                                    path=self.name, offset=off) from None
            label = f"{self.name}: SEV metadata section {i} ({sec.section_type.name}) at offset {off:#x}"
            if sec.gpa % PAGE_SIZE or sec.size % PAGE_SIZE or sec.size == 0:
                raise FirmwareError(
                    f"{label} covers {sec.gpa:#x}+{sec.size:#x}, not whole pages; the firmware "
                    f"is corrupt.", path=self.name, offset=off)
            problem = gpa_range_problem(sec.gpa, sec.size, end=FOUR_GIB)
            if problem is not None:
                raise FirmwareError(
                    f"{label}: {problem}, outside the 4 GiB that SEV metadata addresses; no launch "
                    f"can use it, so the firmware is corrupt.", path=self.name, offset=off)
            if sec.gpa < self.end_gpa and self.gpa < sec.gpa + sec.size:
                raise FirmwareError(
                    f"{label} covers {sec.gpa:#x}+{sec.size:#x}, which overlaps the firmware image "
                    f"itself at {self.gpa:#x}-{self.end_gpa:#x}; no launch can measure a page twice, "
                    f"so the firmware is corrupt.", path=self.name, offset=off)
            total += sec.size
            if total > MAX_METADATA_BYTES:
                raise FirmwareError(
                    f"{label}: the SEV metadata sections up to this one cover {total:,} bytes, more than "
                    f"the {MAX_METADATA_BYTES:,} any firmware declares (docs/limits.md); the firmware "
                    f"is corrupt.", path=self.name, offset=off)
            if sec.section_type == SectionType.SNP_KERNEL_HASHES and \
                    any(s.section_type == SectionType.SNP_KERNEL_HASHES for s in sections):
                raise FirmwareError(
                    f"{label} is a second SNP_KERNEL_HASHES section; edk2 declares one, holding the "
                    f"hashes table its loader checks, so the firmware is refused.", path=self.name,
                    offset=off)
            sections.append(sec)
        self._check_overlaps(sections, start + hdr_size)
        return tuple(sections)

    def _check_overlaps(self, sections: list[MetadataSection], first_off: int) -> None:
        """Refuse two sections that share a page: SNP_LAUNCH_UPDATE accepts each page once."""
        order = sorted(range(len(sections)), key=lambda i: sections[i].gpa)
        for a, b in zip(order, order[1:], strict=False):
            sa, sb = sections[a], sections[b]
            if sb.gpa < sa.gpa + sa.size:
                lo, hi = sorted((a, b))
                off = first_off + hi * MetadataSection.SIZE
                raise FirmwareError(
                    f"{self.name}: SEV metadata section {hi} ({sections[hi].section_type.name}) at offset "
                    f"{off:#x} covers {sections[hi].gpa:#x}+{sections[hi].size:#x}, which overlaps section "
                    f"{lo} ({sections[lo].section_type.name}) at {sections[lo].gpa:#x}+"
                    f"{sections[lo].size:#x}; no launch can measure a page twice, so the firmware is "
                    f"corrupt.", path=self.name, offset=off)

    # -- accessors ---------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.data)

    def has_section(self, section_type: SectionType) -> bool:
        return any(s.section_type == section_type for s in self.sections)

    def sev_es_reset_eip(self) -> int | None:
        """Reset address of the application processors, or None if the image has none."""
        return self._u32_entry(SEV_ES_RESET_BLOCK_GUID)

    def require_sev_es_reset_eip(self) -> int:
        eip = self.sev_es_reset_eip()
        if eip is None:
            raise UnsupportedFirmware(
                f"{self.name} has no SEV-ES reset block in its OVMF footer table, so application "
                f"processors cannot start under SEV-ES/SNP; use an OVMF built with SEV-ES support "
                f"(e.g. Debian's ovmf-amdsev).", missing="SEV_ES_RESET_BLOCK")
        return eip

    def hashes_table(self) -> HashesTableLocation | None:
        """Where the firmware expects QEMU's SEV hashes table, if anywhere."""
        gpa = self._u32_entry(SEV_HASH_TABLE_RV_GUID)
        if not gpa:
            return None
        # edk2 records the table's GPA and, in every released image, its size.
        size = self._u32_entry(SEV_HASH_TABLE_RV_GUID, 1) if len(self.table[SEV_HASH_TABLE_RV_GUID]) >= 8 else 0
        return HashesTableLocation(gpa, size or 0)

    def svsm_entry_offset(self) -> int:
        off = self._u32_entry(SVSM_INFO_GUID)
        if off is None:
            raise UnsupportedFirmware(
                f"{self.name} has no SVSM_INFO entry in its footer table; it is not an SVSM image "
                f"(pass the SVSM binary with --svsm).", missing="SVSM_INFO")
        return off

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary: what a user debugging a mismatch wants to see."""
        reset = self.sev_es_reset_eip()
        table = self.hashes_table()
        return {
            "size": self.size,
            "gpa": f"{self.gpa:#x}",
            "footer_entries": sorted(GUID_NAMES.get(g, str(g)) for g in self.table),
            "sev_es_reset_eip": None if reset is None else f"{reset:#x}",
            "sev_hashes_table": None if table is None else {"gpa": f"{table.gpa:#x}", "size": table.size},
            "sev_metadata_sections": [
                {"type": s.section_type.name, "gpa": f"{s.gpa:#x}", "size": s.size} for s in self.sections],
        }
