"""The firmware volumes of an OVMF image: where each lies, and what it is called.

A UEFI firmware volume starts with EFI_FIRMWARE_VOLUME_HEADER (UEFI PI specification vol. 3):
``_FVH`` at offset 0x28, the volume's length, its file system GUID and, when an extended header
follows, the volume's own name GUID (FvNameGuid; edk2's ``OvmfPkg/*.fdf`` names OVMF's).  OVMF
places its volumes on 4 KiB boundaries, so the image is scanned page by page.  ``measure-diff``
names the volume a differing firmware byte lies in, and the measure map labels its bands with
them; measuring never needs them, so importing :mod:`measure` does not import this module.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

from . import layout
from .errors import LayoutError
from .record import record
from .spec import PAGE_SIZE, Guid

#: FvNameGuid of OVMF's volumes (edk2 OvmfPkg/*.fdf)
VOLUME_NAMES = {
    Guid.parse("48db5e17-707c-472d-91cd-1613e7ef51b0"): "FVMAIN_COMPACT",
    Guid.parse("763bed0d-de9f-48f5-81f1-3e90e1b1a015"): "SECFV",
}

#: file system GUIDs (UEFI PI vol. 3) and edk2's variable store
FILE_SYSTEMS = {
    Guid.parse("8c8ce578-8a3d-4f1c-9935-896185c32dd3"): "FFS2",
    Guid.parse("5473c07a-3dcb-4dca-bd6f-1e9689e7349a"): "FFS3",
    Guid.parse("fff12b8d-7696-4c8b-a985-2747075b4f50"): "NV variable store",
}


@layout.struct(size=0x38, spec="UEFI PI spec vol. 3, EFI_FIRMWARE_VOLUME_HEADER (up to the block map)")
@record
class VolumeHeader(layout.Struct):
    zero_vector: bytes = layout.raw(0x00, 16)
    file_system_guid: bytes = layout.raw(0x10, 16)
    fv_length: int = layout.u64(0x20)
    signature: bytes = layout.raw(0x28, 4)
    attributes: int = layout.u32(0x2C)
    header_length: int = layout.u16(0x30)
    checksum: int = layout.u16(0x32)
    ext_header_offset: int = layout.u16(0x34)
    reserved: int = layout.u8(0x36)
    revision: int = layout.u8(0x37)


@record
class Volume:
    """One firmware volume: its file offset and length, its FvNameGuid's name and its file system."""

    offset: int
    length: int
    name: str | None          # "SECFV", "FVMAIN_COMPACT", or None for a volume without a known name
    file_system: str | None   # "FFS2", "FFS3", "NV variable store", or None when the GUID is not known
    file_system_guid: Guid

    @property
    def kind(self) -> str:
        """The file system's name, or its GUID when it has no known name."""
        return self.file_system or str(self.file_system_guid)


def firmware_volumes(data: bytes) -> list[Volume]:
    """Every well-formed volume whose header starts on a 4 KiB boundary of ``data``, in order.

    A header that does not parse, or whose length is below the header's, not a whole number
    of pages or beyond the image, is not a volume: the scan moves on to the next page.
    """
    out: list[Volume] = []
    off = 0
    while off + VolumeHeader.SIZE <= len(data):
        if data[off + 0x28:off + 0x2C] != b"_FVH":
            off += PAGE_SIZE
            continue
        try:
            hdr = VolumeHeader.from_bytes(data[off:off + VolumeHeader.SIZE])
        except LayoutError:
            off += PAGE_SIZE
            continue
        length = hdr.fv_length
        if length < VolumeHeader.SIZE or length % PAGE_SIZE or off + length > len(data):
            off += PAGE_SIZE
            continue
        name = None
        ext = hdr.ext_header_offset
        if ext and ext + 16 <= length:
            name = VOLUME_NAMES.get(Guid(data[off + ext:off + ext + 16]))
        fs = Guid(hdr.file_system_guid)
        out.append(Volume(off, length, name, FILE_SYSTEMS.get(fs), fs))
        off += length
    return out
