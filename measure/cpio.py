"""Reading an initrd as the Linux kernel unpacks it: newc archives, plain or compressed, one after another.

The builder writes initrds (:mod:`builder.steps.cpio`); the auditor reads them to check what a
measured initrd carries (``blindbox rederive``).  Both use this one reader.  It lives in the
calculator because the initrd is a measured input and the auditor may not import the builder
(docs/architecture.md); like the rest of the calculator it needs only the standard library.

The kernel (``init/initramfs.c``, ``unpack_to_rootfs``) reads the initrd as a sequence of
segments: NUL bytes (skipped), an uncompressed newc archive (starting with ``0`` at a 4-byte
aligned offset) up to and including its ``TRAILER!!!``, or a compressed stream whose content is
again newc archives and NUL padding.  Every member is written in order, so a path that occurs
twice holds what its last occurrence says: an archive appended to an initrd overrides it.
:func:`read_initrd` reads every segment (gzip and xz streams; other compressions are refused, so
nothing in the initrd goes unread) and :class:`Initrd` answers what a path holds after unpacking.

Format: "newc" (magic ``070701``), a 110-byte ASCII header of 13 eight-digit hex fields, the
NUL-terminated name, padding to 4 bytes, the data, padding to 4 bytes.

Every read is bounded: the caller gives the decompressed size and member count it accepts.
"""

from __future__ import annotations

import lzma
import re
import stat
import zlib
from dataclasses import dataclass

from .errors import InputError

MAGIC = b"070701"
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"
#: Longest path the kernel's unpacker accepts (PATH_MAX, NUL included).
PATH_MAX = 4096

#: Compressions :func:`read_initrd` and :func:`decompress` read (besides uncompressed archives).
COMPRESSIONS = ("gzip", "xz", "none")

_HEX_FIELDS = re.compile(rb"[0-9A-Fa-f]{104}")
_GZIP_MAGIC = (b"\x1f\x8b", b"\x1f\x9e")
_XZ_MAGIC = b"\xfd7zXZ\x00"
#: compressions the kernel may be built to unpack, which this reader does not read
_UNREAD = ((b"BZh", "bzip2"), (b"\x5d\x00\x00", "lzma"), (b"\x89LZO", "lzo"), (b"\x02\x21\x4c\x18", "lz4"),
           (b"\x28\xb5\x2f\xfd", "zstd"))


class CpioError(InputError):
    """An archive or initrd is malformed, too large, or compressed in a way this reader does not read."""


@dataclass(frozen=True)
class Member:
    """A member as stored: every header field, its name and data, and its offset (in its archive's bytes)."""

    offset: int
    name: str
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    rdev: tuple[int, int]
    data: bytes


def _header(data: bytes, pos: int, what: str) -> list[int]:
    if pos + HEADER_SIZE > len(data):
        raise CpioError(f"{what} ends inside a cpio header at offset {pos}; the archive is truncated.")
    if data[pos:pos + 6] != MAGIC:
        raise CpioError(f"{what} has no newc header magic at offset {pos} (070701 expected); it is not an "
                        f"uncompressed newc archive, or it is corrupt.")
    fields = data[pos + 6:pos + HEADER_SIZE]
    if not _HEX_FIELDS.fullmatch(fields):
        raise CpioError(f"{what} has a malformed newc header at offset {pos}: its fields are not hexadecimal "
                        f"digits, so the archive is corrupt.")
    return [int(fields[8 * i:8 * i + 8], 16) for i in range(13)]


def _archive(data: bytes, pos: int, what: str, members: list[Member], max_members: int | None) -> int:
    """Read one archive from ``pos`` up to its trailer into ``members``; returns the offset after it."""
    while True:
        f = _header(data, pos, what)
        namesize, filesize = f[11], f[6]
        name_start = pos + HEADER_SIZE
        if not 1 <= namesize <= min(PATH_MAX, len(data) - name_start):
            raise CpioError(f"{what}: cpio header at offset {pos} gives name size {namesize}, which is not within the "
                            f"1 to {PATH_MAX} bytes the kernel accepts and the {len(data) - name_start} bytes left; "
                            f"the archive is truncated or corrupt.")
        name = data[name_start:name_start + namesize - 1].decode("utf-8", "surrogateescape")
        data_start = name_start + namesize + (-(HEADER_SIZE + namesize) % 4)
        if data_start + filesize > len(data):
            raise CpioError(f"{what}: cpio member {name[:80]!r} at offset {pos} is truncated ({filesize} bytes "
                            f"announced, {max(len(data) - data_start, 0)} left).")
        start, pos = pos, data_start + filesize + (-filesize % 4)
        if name == TRAILER:
            return pos
        if max_members is not None and len(members) >= max_members:
            raise CpioError(f"{what} holds more than {max_members} cpio members; that is more than an initrd "
                            f"holds, so it is refused (docs/limits.md).")
        members.append(Member(start, name, f[0], f[1], f[2], f[3], f[4], f[5], (f[9], f[10]),
                              data[data_start:data_start + filesize]))


def parse(data: bytes, *, what: str = "cpio archive", max_members: int | None = None) -> list[Member]:
    """Read one uncompressed newc archive up to its trailer (what follows the trailer is not read)."""
    members: list[Member] = []
    _archive(data, 0, what, members, max_members)
    return members


def _inflate(data: bytes, pos: int, method: str, budget: int, what: str, limit: int) -> tuple[bytes, int]:
    """Decompress the one stream at ``pos`` into at most ``budget`` bytes (what is left of ``limit``); returns its
    content and the offset after the stream."""
    src = memoryview(data)[pos:]
    out: list[bytes] = []
    total = 0
    try:
        if method == "gzip":
            z = zlib.decompressobj(wbits=31)
            chunk = z.decompress(src, budget - total + 1)
            while True:
                total += len(chunk)
                out.append(chunk)
                if total > budget or not z.unconsumed_tail:
                    break
                chunk = z.decompress(z.unconsumed_tail, budget - total + 1)
            eof, rest = z.eof, len(z.unused_data)
        else:
            x = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            chunk = x.decompress(src, budget - total + 1)
            while True:
                total += len(chunk)
                out.append(chunk)
                if total > budget or x.eof or x.needs_input:
                    break
                chunk = x.decompress(b"", budget - total + 1)
            eof, rest = x.eof, len(x.unused_data)
    except (zlib.error, lzma.LZMAError, EOFError) as e:
        raise CpioError(f"{what} holds a {method} stream at offset {pos} that cannot be decompressed ({e}); the "
                        f"initrd is corrupt.") from None
    if total > budget:
        raise CpioError(f"{what} decompresses to more than {limit} bytes; that is more than an initrd holds, so "
                        f"it is refused (docs/limits.md).")
    if not eof:
        raise CpioError(f"{what} ends inside the {method} stream at offset {pos}; the initrd is truncated.")
    return b"".join(out), len(data) - rest


def decompress(data: bytes, method: str, *, max_bytes: int | None = None, what: str = "initrd") -> bytes:
    """The content of one ``method`` stream (one of :data:`COMPRESSIONS`), bounded by ``max_bytes``."""
    budget = len(data) * 1032 + 64 if max_bytes is None else max_bytes  # deflate and LZMA2 expand at most ~1032x
    if method == "none":
        return bytes(data)
    if method not in ("gzip", "xz"):
        raise CpioError(f"initrd compression {method!r} is not supported; use one of {', '.join(COMPRESSIONS)}.")
    return _inflate(data, 0, method, budget, what, budget)[0]


def _unpack(data: bytes, what: str, members: list[Member], budget: list[int], limit: int, max_members: int,
            inside: str | None) -> None:
    pos = 0
    while pos < len(data):
        byte = data[pos]
        if byte == 0:
            pos += 1
            continue
        if data[pos:pos + 1] == b"0":
            if pos % 4:
                raise CpioError(f"{what} has a cpio archive at offset {pos}{inside or ''}, which is not a multiple "
                                f"of 4; the kernel refuses such padding, so the initrd is corrupt.")
            pos = _archive(data, pos, what + (inside or ""), members, max_members)
            continue
        if inside is not None:
            raise CpioError(f"{what} has data at offset {pos}{inside} that is neither a cpio archive nor padding; "
                            f"the kernel refuses it (junk within a compressed archive).")
        if data[pos:pos + 2] in _GZIP_MAGIC or data.startswith(_XZ_MAGIC, pos):
            method = "xz" if data.startswith(_XZ_MAGIC, pos) else "gzip"
            content, end = _inflate(data, pos, method, budget[0], what, limit)
            budget[0] -= len(content)
            _unpack(content, what, members, budget, limit, max_members, f" of the {method} stream at offset {pos}")
            pos = end
            continue
        name = next((n for magic, n in _UNREAD if data.startswith(magic, pos)), None)
        if name is not None:
            raise CpioError(f"{what} holds a {name} stream at offset {pos}, which blindbox does not read (only "
                            f"gzip, xz and uncompressed archives); an initrd that cannot be read whole is not "
                            f"audited.")
        raise CpioError(f"{what} has data at offset {pos} that is neither a cpio archive, padding nor a gzip or xz "
                        f"stream; the initrd is corrupt.")


def normalize_name(name: str, what: str) -> str:
    """The path the kernel creates for a member name: ``./etc//x`` and ``/etc/x`` are ``etc/x``."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CpioError(f"{what} has a member named {name[:80]!r}, which contains '..'; an initrd built by "
                        f"blindbox never does, and this reader does not resolve it.")
    return "/".join(parts)


@dataclass(frozen=True)
class Initrd:
    """Every member of an initrd in the order the kernel unpacks them."""

    members: tuple[Member, ...]
    what: str

    def lookup(self, path: str) -> tuple[bytes | None, str]:
        """What the regular file ``path`` holds after unpacking, or None and why it cannot be told.

        Conservative: the answer is refused when any member is written through a symlink (the
        kernel follows it, so the write may land anywhere), when the file or one of its directories
        is not what it must be at the end, or when the file is ever a hard link (``nlink`` of 2 or
        more: the kernel then writes into a shared inode).
        """
        target = normalize_name(path, self.what)
        ancestors = [target.rsplit("/", i)[0] for i in range(target.count("/"), 0, -1)]
        kinds: dict[str, int] = {}
        last: Member | None = None
        for m in self.members:
            name = normalize_name(m.name, self.what)
            if not name:
                continue
            parts = name.split("/")
            for i in range(1, len(parts)):
                if kinds.get("/".join(parts[:i])) == stat.S_IFLNK:
                    return None, (f"the initrd writes {name!r} through the symlink {'/'.join(parts[:i])!r}, so "
                                  f"what {path} holds cannot be told from the archive")
            kinds[name] = stat.S_IFMT(m.mode)
            if name == target:
                if stat.S_IFMT(m.mode) == stat.S_IFREG and m.nlink >= 2:
                    return None, f"the initrd makes {path} a hard link (nlink {m.nlink}), which blindbox never does"
                last = m
                missing = [a for a in ancestors if kinds.get(a) != stat.S_IFDIR]
                if missing:
                    return None, (f"the initrd writes {path} while {missing[0]!r} is not a directory it created "
                                  f"before")
        if last is None:
            return None, f"the initrd has no {path}"
        if kinds[target] != stat.S_IFREG:
            return None, f"{path} is not a regular file in the initrd (mode {last.mode:#o})"
        wrong = [a for a in ancestors if kinds.get(a) != stat.S_IFDIR]
        if wrong:
            return None, f"{wrong[0]!r} is not a directory after unpacking, so {path} is not where the guest reads it"
        return last.data, f"{path} ({len(last.data)} bytes)"


def read_initrd(data: bytes, what: str, *, max_bytes: int, max_members: int) -> Initrd:
    """Every member of the initrd ``data``, as the kernel unpacks it (see the module's docstring).

    ``max_bytes`` bounds the archive bytes after decompression, ``max_members`` the members
    (trailers not counted); beyond either, or for a malformed initrd, :class:`CpioError`.
    """
    members: list[Member] = []
    budget = [max_bytes - len(data)]
    if budget[0] < 0:
        raise CpioError(f"{what} is {len(data)} bytes, more than the {max_bytes} an initrd may hold "
                        f"(docs/limits.md).")
    _unpack(data, what, members, budget, max_bytes, max_members, None)
    if not members:
        raise CpioError(f"{what} holds no cpio member; it is not an initrd.")
    return Initrd(tuple(members), what)


__all__ = ["COMPRESSIONS", "CpioError", "HEADER_SIZE", "Initrd", "MAGIC", "Member", "PATH_MAX", "TRAILER",
           "decompress", "normalize_name", "parse", "read_initrd"]
