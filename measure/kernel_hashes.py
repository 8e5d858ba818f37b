"""The SEV hashes table: SHA-256 of kernel, initrd and command line for measured boot.

With ``kernel-hashes=on`` QEMU writes this table into the firmware's hashes area and
the AmdSev OVMF refuses to boot a kernel, initrd or command line whose hash differs.
The table is byte-identical to QEMU's ``PaddedSevHashTable`` (target/i386/sev.c):
a GUID-tagged header followed by three GUID-tagged SHA-256 entries in the order
cmdline, initrd, kernel, zero-padded to a multiple of 16 bytes.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import os
import stat

from . import layout
from .errors import InputError
from .inputs import file_digest, in_background
from .record import record
from .spec import (PAGE_SIZE, Guid, SEV_CMDLINE_ENTRY_GUID, SEV_HASH_TABLE_HEADER_GUID, SEV_INITRD_ENTRY_GUID,
                   SEV_KERNEL_ENTRY_GUID)

TYPE_CHECKING = False  # importing typing costs ~2 ms (bench/targets.py); type checkers read the block
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


@layout.struct(size=0x32, spec="QEMU target/i386/sev.c, SevHashTableEntry")
@record
class HashTableEntry(layout.Struct):
    guid: bytes = layout.raw(0x00, 16)
    length: int = layout.u16(0x10, default=0x32)
    hash: bytes = layout.raw(0x12, 32)


@layout.struct(size=0xB0, spec="QEMU target/i386/sev.c, PaddedSevHashTable")
@record
class HashTable(layout.Struct):
    guid: bytes = layout.raw(0x00, 16, default=bytes(SEV_HASH_TABLE_HEADER_GUID))
    length: int = layout.u16(0x10, default=0xA8)  # sizeof(SevHashTable), without padding
    cmdline: HashTableEntry = layout.nested(0x12, HashTableEntry)
    initrd: HashTableEntry = layout.nested(0x44, HashTableEntry)
    kernel: HashTableEntry = layout.nested(0x76, HashTableEntry)


def cmdline_bytes(append: str | bytes | None) -> bytes:
    """The NUL-terminated command line exactly as QEMU hashes it."""
    if append is None:
        raw = b""
    elif isinstance(append, bytes):
        raw = append
    else:
        # surrogateescape keeps undecodable argv bytes exactly as the user gave them.
        raw = append.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise InputError("the kernel command line contains a NUL byte, which QEMU cannot pass; remove it.")
    return raw + b"\0"


def _is_regular(path: str | Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _settle(wait: Callable[[], bytes]) -> Callable[[], bytes]:
    """Wait for a background digest now; raise its error only when the result is asked for."""
    try:
        value = wait()
    except BaseException as e:  # noqa: BLE001 - raised again below, in the caller's order
        error = e

        def fail() -> bytes:
            raise error
        return fail
    return lambda: value


@record
class KernelHashes:
    """SHA-256 digests of the three measured direct-boot inputs."""

    kernel: bytes
    initrd: bytes
    cmdline: bytes

    @classmethod
    def from_files(cls, kernel: str | Path, initrd: str | Path | None,
                   append: str | bytes | None) -> "KernelHashes":
        # A regular initrd is hashed beside the kernel (hashlib releases the interpreter lock);
        # errors still come in the order kernel, initrd, command line.  Anything else (a pipe,
        # a device) is read after the kernel, as before, so a failing kernel never opens it.
        initrd_digest = None
        if initrd and _is_regular(initrd):
            initrd_digest = in_background(file_digest, initrd, "initrd")
        try:
            kernel_digest = file_digest(kernel, "kernel")
        finally:
            initrd_result = None if initrd_digest is None else _settle(initrd_digest)
        if initrd_result is not None:
            initrd_hash = initrd_result()
        else:
            initrd_hash = file_digest(initrd, "initrd") if initrd else hashlib.sha256(b"").digest()
        return cls(kernel=kernel_digest, initrd=initrd_hash,
                   cmdline=hashlib.sha256(cmdline_bytes(append)).digest())

    def table(self) -> bytes:
        def entry(guid: Guid, digest: bytes) -> HashTableEntry:
            return HashTableEntry(guid=guid.bytes_le, hash=digest)
        return HashTable(cmdline=entry(SEV_CMDLINE_ENTRY_GUID, self.cmdline),
                         initrd=entry(SEV_INITRD_ENTRY_GUID, self.initrd),
                         kernel=entry(SEV_KERNEL_ENTRY_GUID, self.kernel)).to_bytes()

    def area(self, offset: int, size: int) -> bytes:
        """The ``size``-byte area QEMU measures: zeros with the table at ``offset``."""
        table = self.table()
        if offset < 0 or offset + len(table) > size:
            raise InputError(f"the SEV hashes table ({len(table)} bytes at offset {offset:#x}) does not "
                             f"fit in the {size:#x}-byte kernel hashes area.")
        return bytes(offset) + table + bytes(size - offset - len(table))

    def page(self, offset: int) -> bytes:
        return self.area(offset, PAGE_SIZE)
