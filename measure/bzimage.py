"""The kernel the calculator measures: a bzImage's setup header and the version string it points at.

The launch digest covers the kernel's bytes whatever they are; this module reads the one
fact a bzImage states about itself that a manifest publishes, its release
(``launch.kernel_release``), so that the builder records it and an auditor re-derives it
from the same reader.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path

from . import layout
from .errors import InputError
from .record import record


class BzImageError(InputError):
    """A file is not a bzImage, or its setup header names no kernel version."""


@layout.struct(size=0x210, spec="Linux Documentation/arch/x86/boot.rst, the real-mode kernel header "
                                "(offsets from the start of the bzImage, as there)")
@record
class BzImageHeader(layout.Struct):
    """The bzImage's first 0x210 bytes: the boot sector, then the setup header fields of protocol 2.00."""

    boot_sector: bytes = layout.raw(0x000, 0x1F1)  # legacy boot sector code, not read
    setup_sects: int = layout.u8(0x1F1)
    root_flags: int = layout.u16(0x1F2)
    syssize: int = layout.u32(0x1F4)
    ram_size: int = layout.u16(0x1F8)
    vid_mode: int = layout.u16(0x1FA)
    root_dev: int = layout.u16(0x1FC)
    boot_flag: int = layout.u16(0x1FE)
    jump: int = layout.u16(0x200)
    header: bytes = layout.raw(0x202, 4)  # the magic b"HdrS"
    version: int = layout.u16(0x206)  # boot protocol version
    realmode_swtch: int = layout.u32(0x208)
    start_sys_seg: int = layout.u16(0x20C)
    kernel_version: int = layout.u16(0x20E)  # where the version string is, "less 0x200"


BZIMAGE_MAGIC = b"HdrS"
#: boot.rst: ``kernel_version`` holds the version string's offset in the file less 0x200.
KERNEL_VERSION_BIAS = 0x200
#: How much of the image's start is read; the version string must lie in it.
_SETUP_READ = 0x8000


def bzimage_version(path: str | Path) -> str:
    """The version string in a bzImage's setup header (Linux boot protocol >= 2.00)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SETUP_READ)
    except OSError as e:
        raise BzImageError(f"cannot read the kernel image {path}: {e.strerror}.") from e
    hdr = BzImageHeader.from_bytes(head[:BzImageHeader.SIZE]) if len(head) >= BzImageHeader.SIZE else None
    if hdr is None or hdr.header != BZIMAGE_MAGIC:
        raise BzImageError(f"{path} is not a bzImage (no 'HdrS' boot header at "
                           f"{BzImageHeader.offset_of('header'):#x}); give the vmlinuz file.")
    offset = hdr.kernel_version + KERNEL_VERSION_BIAS
    raw = head[offset:offset + 256].split(b"\0", 1)[0]
    if not raw:
        raise BzImageError(f"{path} has no kernel version string in its boot header.")
    return raw.decode("ascii", "replace")


def kernel_release(version: str) -> str:
    """The release a version string names: its first word (``6.1.0-28-amd64`` of
    ``6.1.0-28-amd64 (debian-kernel@lists.debian.org) #1 SMP ...``), as ``uname -r`` says it."""
    return version.split(" ", 1)[0]


__all__ = ["BZIMAGE_MAGIC", "BzImageError", "BzImageHeader", "KERNEL_VERSION_BIAS", "bzimage_version",
           "kernel_release"]
