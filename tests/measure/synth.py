"""Synthetic firmware images with an OVMF footer table, for tests.

Built from the documented format (edk2 OvmfPkg/ResetVector), so tests can cover SVSM
images, multi-page kernel-hashes sections and every malformation without shipping
third-party binaries.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

from measure.spec import (OVMF_SEV_METADATA_GUID, OVMF_TABLE_FOOTER_GUID, SEV_ES_RESET_BLOCK_GUID,
                          SEV_HASH_TABLE_RV_GUID, SVSM_INFO_GUID, SectionType)

RESET_AREA = 32


def entry(guid: uuid.UUID, data: bytes) -> bytes:
    return data + struct.pack("<H", len(data) + 18) + guid.bytes_le


def image(size: int, *, sections=(), reset_eip: int | None = 0xFFFFF000,
          hashes_table: tuple[int, int] | None = None, svsm_entry: int | None = None,
          extra_entries: bytes = b"", fill: bytes = b"\x90") -> bytes:
    """A ``size``-byte image; ``sections`` is a list of (gpa, size, SectionType)."""
    meta = b""
    entries = extra_entries
    if sections:
        items = b"".join(struct.pack("<III", g, s, int(t)) for g, s, t in sections)
        meta = b"ASEV" + struct.pack("<III", 16 + len(items), 1, len(sections)) + items
    if reset_eip is not None:
        entries += entry(SEV_ES_RESET_BLOCK_GUID, struct.pack("<I", reset_eip))
    if hashes_table is not None:
        entries += entry(SEV_HASH_TABLE_RV_GUID, struct.pack("<II", *hashes_table))
    if svsm_entry is not None:
        entries += entry(SVSM_INFO_GUID, struct.pack("<I", svsm_entry))
    # metadata sits 0x1000 bytes before the end; its entry records that offset
    meta_off_from_end = 0x1000
    if meta:
        entries += entry(OVMF_SEV_METADATA_GUID, struct.pack("<I", meta_off_from_end))
    table = entries + struct.pack("<H", len(entries) + 18) + OVMF_TABLE_FOOTER_GUID.bytes_le
    body = bytearray((fill * (size // len(fill) + 1))[:size])
    end = size - RESET_AREA
    body[end - len(table):end] = table
    if meta:
        start = size - meta_off_from_end
        assert start + len(meta) <= end - len(table), "metadata overlaps the footer table"
        body[start:start + len(meta)] = meta
    body[end:] = bytes(range(RESET_AREA))
    return bytes(body)


AMDSEV_LIKE_SECTIONS = [
    (0x800000, 0x9000, SectionType.SNP_SEC_MEM),
    (0x809000, 0x1000, SectionType.SNP_SECRETS),
    (0x80A000, 0x1000, SectionType.CPUID),
    (0x80B000, 0x2000, SectionType.SNP_KERNEL_HASHES),  # two pages: wider than the oracle supports
    (0x80D000, 0x3000, SectionType.SNP_SEC_MEM),
]


def svsm_image(size: int = 0x10000) -> bytes:
    return image(size, reset_eip=None, svsm_entry=0x80,
                 sections=[(0x7F000000, 0x1000, SectionType.SNP_SECRETS),
                           (0x7F001000, 0x1000, SectionType.CPUID),
                           (0x7F002000, 0x2000, SectionType.SVSM_CAA),
                           (0x7F004000, 0x4000, SectionType.SNP_SEC_MEM)], fill=b"\xcc")


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
