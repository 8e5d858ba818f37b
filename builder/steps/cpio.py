"""Deterministic cpio "newc" archives (the initramfs format) and their compression.

The archive bytes depend only on the entries added and on ``mtime`` (the build's
SOURCE_DATE_EPOCH), never on the host, the clock, the umask or the order of calls:

- entries are sorted by path component (so every directory precedes its contents);
- every parent directory is present (``0755`` unless added explicitly);
- uid and gid are 0, every entry's mtime is ``mtime``, modes are what the caller gave;
- inode numbers are 1, 2, 3, ... in archive order; ``nlink`` is 1 for non-directories
  (the kernel treats a regular file with ``nlink >= 2`` as a hard link candidate) and
  ``2 + subdirectories`` for directories, as a file system would report it;
- device numbers of the archive are 0; only character devices carry an ``rdev``;
- the ``TRAILER!!!`` entry closes the archive, which is zero-padded to 512 bytes like
  GNU cpio's output.

Format: "newc" (magic ``070701``) as read by Linux ``init/initramfs.c`` and written by
GNU cpio ``-H newc``: a 110-byte ASCII header of 13 eight-digit hex fields, the
NUL-terminated name, padding to 4 bytes, the data, padding to 4 bytes.

Compression (:func:`compress`): ``gzip`` is the default.  Both gzip and xz are built into
Debian's 6.1 kernel (``CONFIG_RD_GZIP=y``, ``CONFIG_RD_XZ=y``) and into every mainstream
distribution kernel; gzip decompresses several times faster, which matters under QEMU's
software emulation, and an initrd of busybox plus a few modules is small enough that
xz's better ratio buys little.  The gzip member is written with fixed parameters and
without a name or time, and its deflate stream comes from the zlib the lock pins
(:mod:`builder.steps.deflate`), never from the host's, so it is the same on every host;
:func:`compressor_identity` names that library for the manifest.  xz (with the kernel's
own initramfs parameters, ``--check=crc32 --lzma2=dict=1MiB``) comes from the liblzma the
interpreter links, so recipes cannot ask for it (:mod:`builder.recipe`); it stays here for
tests of the kernel's decoders.

Reading (:func:`parse`, :func:`decompress`) is :mod:`measure.cpio`'s, re-exported here.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import enum
import lzma
import os
import stat
from dataclasses import dataclass

from builder.errors import BuildError
from builder.steps.deflate import Deflate
# the reader (and decompression) is the calculator's, so that the auditor reads initrds with the same code
from measure.cpio import HEADER_SIZE, MAGIC, PATH_MAX, TRAILER, Member, decompress, parse
from measure.cpio import CpioError as CpioReadError

BLOCK = 512

S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFLNK = 0o120000
S_IFCHR = 0o020000
S_IFMT = 0o170000

COMPRESSIONS = ("gzip", "xz", "none")


__all__ = ["Archive", "COMPRESSIONS", "CpioError", "CpioReadError", "Entry", "HEADER_SIZE", "Kind", "MAGIC", "Member",
           "PATH_MAX", "TRAILER", "compress", "compressor_identity", "decompress", "normalize_path", "parse"]


class CpioError(BuildError):
    """An archive entry is unusable (bad path, conflicting entries, value out of range)."""


class Kind(enum.Enum):
    DIR = S_IFDIR
    FILE = S_IFREG
    SYMLINK = S_IFLNK
    CHAR = S_IFCHR


@dataclass(frozen=True)
class Entry:
    """One archive member. ``path`` is normalized: no leading ``/``, no ``.`` or ``..``."""

    path: str
    kind: Kind
    mode: int  # permission bits only (0..0o7777)
    data: bytes = b""  # file content, or the symlink target
    rdev: tuple[int, int] = (0, 0)  # character devices only

    @property
    def st_mode(self) -> int:
        return self.kind.value | self.mode


def normalize_path(path: str) -> str:
    """``/usr//bin/./sh`` -> ``usr/bin/sh``; refuses ``..``, NUL and empty paths."""
    if not isinstance(path, str):
        raise CpioError(f"archive path {path!r} is not a string; give paths as text such as 'bin/sh'.")
    if "\0" in path:
        raise CpioError(f"archive path {path!r} contains a NUL byte; remove it.")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CpioError(f"archive path {path!r} contains '..'; give the path inside the initrd without '..'.")
    if not parts:
        raise CpioError(f"archive path {path!r} names the root directory; give a file or directory below it.")
    norm = "/".join(parts)
    try:
        encoded = norm.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CpioError(f"archive path {path!r} is not valid UTF-8; rename it.") from e
    if len(encoded) + 1 > PATH_MAX:
        raise CpioError(f"archive path {norm[:60]!r}... is {len(encoded)} bytes long; the kernel accepts at most "
                        f"{PATH_MAX - 1}.")
    return norm


def _sort_key(path: str) -> tuple[bytes, ...]:
    return tuple(part.encode("utf-8") for part in path.split("/"))


def _check_mode(path: str, mode: int) -> int:
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise CpioError(f"archive entry {path!r}: mode {mode!r} is not a permission value between 0 and 0o7777.")
    return mode


class Archive:
    """Collects entries in any order; :meth:`to_bytes` writes them sorted."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    # -- adding ------------------------------------------------------------------------
    def _add(self, entry: Entry) -> Entry:
        old = self._entries.get(entry.path)
        if old is not None and old != entry:
            if old.kind == entry.kind == Kind.DIR:
                raise CpioError(f"archive directory {entry.path!r} was added with modes {old.mode:#o} and "
                                f"{entry.mode:#o}; give it one mode.")
            raise CpioError(f"archive path {entry.path!r} was added twice with different contents "
                            f"({old.kind.name.lower()} and {entry.kind.name.lower()}); keep one of them.")
        self._entries[entry.path] = entry
        return entry

    def add_dir(self, path: str, mode: int = 0o755) -> Entry:
        path = normalize_path(path)
        return self._add(Entry(path, Kind.DIR, _check_mode(path, mode)))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> Entry:
        path = normalize_path(path)
        data = bytes(data)
        if len(data) > 0xFFFFFFFF:
            raise CpioError(f"archive file {path!r} is {len(data)} bytes; the newc format holds at most 4 GiB - 1.")
        return self._add(Entry(path, Kind.FILE, _check_mode(path, mode), data))

    def add_symlink(self, path: str, target: str) -> Entry:
        path = normalize_path(path)
        if not target or "\0" in target:
            raise CpioError(f"symlink {path!r} has an empty target or one with a NUL byte; give a real target.")
        return self._add(Entry(path, Kind.SYMLINK, 0o777, target.encode("utf-8")))

    def add_char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> Entry:
        path = normalize_path(path)
        for value in (major, minor):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
                raise CpioError(f"device {path!r}: number {value!r} is not an integer between 0 and 0xffffffff.")
        return self._add(Entry(path, Kind.CHAR, _check_mode(path, mode), rdev=(major, minor)))

    def add_tree(self, prefix: str, root: "os.PathLike[str] | str") -> list[Entry]:
        """Add the directory ``root`` below ``prefix``: its directories, regular files and symlinks
        with their permission bits (not owners or times: every entry is 0:0 at the archive's mtime).

        Entries are visited in sorted order and :meth:`to_bytes` sorts them anyway, so the archive
        depends only on the tree's contents.  Hard links become independent copies (``nlink`` is 1
        for every file); any other file type is refused.  Returns the entries added, in order.
        """
        prefix = normalize_path(prefix)
        base = os.fspath(root)
        added = [self.add_dir(prefix, stat.S_IMODE(os.lstat(base).st_mode))]
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = os.path.relpath(dirpath, base)
            for name in sorted(dirnames + filenames):
                full = os.path.join(dirpath, name)
                path = prefix + "/" + (name if rel == "." else f"{rel}/{name}").replace(os.sep, "/")
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    added.append(self.add_symlink(path, os.readlink(full)))
                elif stat.S_ISDIR(st.st_mode):
                    added.append(self.add_dir(path, stat.S_IMODE(st.st_mode)))
                elif stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as f:
                        added.append(self.add_file(path, f.read(), stat.S_IMODE(st.st_mode)))
                else:
                    raise CpioError(f"{full} is neither a directory, a regular file nor a symlink; an initrd tree "
                                    f"holds no special files.")
        return added

    def __contains__(self, path: str) -> bool:
        return normalize_path(path) in self._entries

    def get(self, path: str) -> Entry | None:
        return self._entries.get(normalize_path(path))

    # -- writing -----------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Every entry, implicit parent directories included, in archive order."""
        entries = dict(self._entries)
        for path in self._entries:
            parts = path.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                existing = entries.get(parent)
                if existing is None:
                    entries[parent] = Entry(parent, Kind.DIR, 0o755)
                elif existing.kind != Kind.DIR:
                    raise CpioError(f"archive path {path!r} lies below {parent!r}, which is a "
                                    f"{existing.kind.name.lower()}, not a directory; move one of them.")
        return [entries[p] for p in sorted(entries, key=_sort_key)]

    def to_bytes(self, *, mtime: int) -> bytes:
        if isinstance(mtime, bool) or not isinstance(mtime, int) or not 0 <= mtime <= 0xFFFFFFFF:
            raise CpioError(f"mtime {mtime!r} is not a time between 0 and 0xffffffff (a newc archive stores 32 bits); "
                            f"check SOURCE_DATE_EPOCH.")
        entries = self.entries()
        subdirs: dict[str, int] = {}
        for e in entries:
            if e.kind == Kind.DIR and "/" in e.path:
                parent = e.path.rsplit("/", 1)[0]
                subdirs[parent] = subdirs.get(parent, 0) + 1
        out = bytearray()
        for ino, e in enumerate(entries, start=1):
            nlink = 2 + subdirs.get(e.path, 0) if e.kind == Kind.DIR else 1
            _write(out, e.path, ino=ino, mode=e.st_mode, nlink=nlink, mtime=mtime, data=e.data, rdev=e.rdev)
        _write(out, TRAILER, ino=0, mode=0, nlink=1, mtime=0, data=b"", rdev=(0, 0))
        out += bytes(-len(out) % BLOCK)
        return bytes(out)


def _write(out: bytearray, name: str, *, ino: int, mode: int, nlink: int, mtime: int, data: bytes,
           rdev: tuple[int, int]) -> None:
    encoded = name.encode("utf-8") + b"\0"
    fields = (ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    out += MAGIC + b"".join(b"%08X" % f for f in fields)
    out += encoded
    out += bytes(-len(out) % 4)
    out += data
    out += bytes(-len(out) % 4)


# -- compression ---------------------------------------------------------------------------
_XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20}]


def _gzip(data: bytes, deflate: Deflate) -> bytes:
    # RFC 1952 member written by hand so that the header does not depend on the Python
    # version: no FNAME, MTIME 0, XFL 2 (maximum compression), OS 255 (unknown).
    header = b"\x1f\x8b\x08\x00" + bytes(4) + b"\x02\xff"
    trailer = deflate.crc32(data).to_bytes(4, "little") + (len(data) & 0xFFFFFFFF).to_bytes(4, "little")
    return header + deflate.raw(data) + trailer


def _need_deflate(deflate: Deflate | None) -> Deflate:
    if deflate is None:
        raise ValueError("gzip compression needs the pinned zlib (builder.steps.deflate.load); none was given")
    return deflate


def compress(data: bytes, method: str, deflate: Deflate | None = None) -> bytes:
    """Compress an initrd with fixed parameters; ``method`` is one of :data:`COMPRESSIONS`.

    ``gzip`` needs ``deflate``, the pinned zlib (:func:`builder.steps.deflate.load`): the
    host's own zlib is never used, so the bytes do not depend on the host.
    """
    if method == "gzip":
        return _gzip(data, _need_deflate(deflate))
    if method == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=_XZ_FILTERS)
    if method == "none":
        return bytes(data)
    raise CpioError(f"initrd compression {method!r} is not supported; use one of {', '.join(COMPRESSIONS)}.")


def compressor_identity(method: str, deflate: Deflate | None = None) -> str:
    """What produced the compressed stream, for the manifest (the stream depends on it)."""
    if method == "gzip":
        return _need_deflate(deflate).describe()
    if method == "xz":
        return "xz: LZMA2 preset 6, dict 1 MiB, check CRC32, Python lzma (liblzma)"
    if method == "none":
        return "none"
    raise CpioError(f"initrd compression {method!r} is not supported; use one of {', '.join(COMPRESSIONS)}.")
