"""Reading Debian binary packages: the ar container, its member tars, and control stanzas.

:func:`extract_deb` unpacks a package's data tree by the extraction rule of every root
filesystem input (:mod:`builder.rootfs_tree`: no path traversal, no special files, no links
leading out of the tree, bounded sizes from :mod:`builder.limits`);
:func:`read_deb_control` reads its ``control`` fields; :func:`_parse_stanzas` reads deb822
paragraphs (also what ``apt-cache show`` prints).  The ar member header is declared once
with :mod:`measure.layout`.

This module works on a file that is already on disk: it needs nothing from apt, the
network or the cache (no import of the other :mod:`builder.sources` modules; the shared
extraction lives in :mod:`builder.rootfs_tree`), and never the command line
(``blindbox.cli``).  Only zstd-compressed members run a tool (``zstd``).
Nothing here prints or exits.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from measure import layout
from measure.record import record
from measure.errors import LayoutError

from ..errors import SourceError
from ..limits import MAX_AR_MEMBERS, MAX_DEB_CONTROL_BYTES, MAX_DEB_MEMBERS, MAX_DEB_UNPACKED_BYTES
from ..rootfs_tree import BoundedTarInfo, Compression, TreeWriter, open_tar_stream



class _Slice(io.RawIOBase):
    """A read-only window ``[offset, offset+size)`` of an open binary file."""

    def __init__(self, f, offset: int, size: int):
        self._f, self._pos, self._end = f, offset, offset + size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._end - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._f.fileno(), n, self._pos)
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)


@dataclass(frozen=True)
class _ArMember:
    name: str
    offset: int
    size: int


AR_MAGIC = b"!<arch>\n"
AR_FMAG = b"`\n"


@layout.struct(size=60, spec="ar(5) member header, as written by dpkg-deb (deb(5))")
@record
class ArMemberHeader(layout.Struct):
    name: str = layout.text(0, 16)     #: "/"-terminated in GNU ar, space-padded
    mtime: bytes = layout.raw(16, 12)  #: decimal; not read (dpkg does not read it either)
    uid: bytes = layout.raw(28, 6)     #: decimal; not read
    gid: bytes = layout.raw(34, 6)     #: decimal; not read
    mode: bytes = layout.raw(40, 8)    #: octal; not read
    size: str = layout.text(48, 10)    #: decimal byte count of the member's data
    fmag: bytes = layout.raw(58, 2)    #: always AR_FMAG


def _ar_members(f, deb: Path) -> list[_ArMember]:
    total = os.fstat(f.fileno()).st_size
    if os.pread(f.fileno(), len(AR_MAGIC), 0) != AR_MAGIC:
        raise SourceError(f"{deb} is not a Debian package (it does not start with an ar archive "
                          f"header); delete it and fetch it again.", source=str(deb))
    members, pos = [], len(AR_MAGIC)
    fmag_at = ArMemberHeader.offset_of("fmag")
    while pos < total:
        raw = os.pread(f.fileno(), ArMemberHeader.SIZE, pos)
        # the terminator first, as before decoding anything: a header without it is damaged
        if len(raw) < ArMemberHeader.SIZE or raw[fmag_at:fmag_at + len(AR_FMAG)] != AR_FMAG:
            raise SourceError(f"{deb} has a damaged ar member header at offset {pos}; delete it and "
                              f"fetch it again.", source=str(deb))
        try:
            hdr = ArMemberHeader.from_bytes(raw)
            size = int(hdr.size)
        except (LayoutError, ValueError):
            raise SourceError(f"{deb} has an unreadable ar member header at offset {pos}; delete it "
                              f"and fetch it again.", source=str(deb)) from None
        name = hdr.name
        if name.endswith("/"):
            name = name[:-1]
        data_at = pos + ArMemberHeader.SIZE
        if size < 0 or data_at + size > total:
            raise SourceError(f"{deb} is truncated (member {name!r} at offset {pos} claims {size} "
                              f"bytes); delete it and fetch it again.", source=str(deb))
        members.append(_ArMember(name, data_at, size))
        if len(members) > MAX_AR_MEMBERS:
            raise SourceError(f"{deb} has more than {MAX_AR_MEMBERS} ar members (a Debian package has three, "
                              f"plus signatures); it is not a Debian package.", source=str(deb))
        pos = data_at + size + (size & 1)
    return members


def _deb_parts(f, deb: Path) -> tuple[_ArMember, _ArMember]:
    """(control.tar*, data.tar*) of a .deb, after checking its structure like dpkg does."""
    members = _ar_members(f, deb)
    if not members or members[0].name != "debian-binary":
        raise SourceError(f"{deb} is not a Debian package (its first member is not debian-binary); "
                          f"delete it and fetch it again.", source=str(deb))
    version = os.pread(f.fileno(), min(members[0].size, 16), members[0].offset)
    if not version.startswith(b"2."):
        raise SourceError(f"{deb} has package format {version.strip()!r}, not 2.x; it cannot be "
                          f"unpacked here.", source=str(deb))
    control = data = None
    for m in members[1:]:
        if m.name.startswith("control.tar") and control is None:
            control = m
        elif m.name.startswith("data.tar") and data is None:
            data = m
        elif not m.name.startswith("_"):
            raise SourceError(f"{deb} contains an unexpected member {m.name!r}; it is not a "
                              f"well-formed Debian package.", source=str(deb))
    if control is None or data is None:
        raise SourceError(f"{deb} lacks its {'control' if control is None else 'data'}.tar member; "
                          f"delete it and fetch it again.", source=str(deb))
    return control, data


class _BoundedTarInfo(BoundedTarInfo):
    """The shared bounded TarInfo, in a package's words (dpkg never writes sparse members)."""

    NEEDS = "any package needs"
    SPARSE = "which no Debian package contains"


_COMPRESSIONS: dict[str, Compression] = {"": "", ".gz": "gz", ".xz": "xz", ".bz2": "bz2", ".zst": "zst"}


@contextlib.contextmanager
def _open_member_tar(f, deb: Path, member: _ArMember) -> Iterator[tarfile.TarFile]:
    suffix = member.name.split(".tar", 1)[1]
    if suffix not in _COMPRESSIONS:
        raise SourceError(f"{deb}: its {member.name} uses an unsupported compression "
                          f"({suffix!r}); only none, gz, xz, bz2 and zst are known.", source=str(deb))
    with open_tar_stream(_Slice(f, member.offset, member.size), _COMPRESSIONS[suffix], owner=str(deb),
                         member=member.name, remedy="delete the .deb and fetch it again",
                         tarinfo=_BoundedTarInfo) as tf:
        yield tf


def _member_parts(name: str, deb: Path) -> list[str]:
    """The path components of a tar member name, refusing absolute and ``..`` names."""
    if name.startswith("/"):
        raise SourceError(f"{deb} contains the absolute member name {name!r}; refusing to unpack a "
                          f"package that writes outside its tree.", source=str(deb))
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SourceError(f"{deb} contains the member name {name!r} with '..'; refusing to unpack a "
                          f"package that writes outside its tree (path traversal).", source=str(deb))
    return parts


def extract_deb(deb: os.PathLike | str, dest: os.PathLike | str) -> None:
    """Unpack the data tree of a .deb into ``dest`` (which must not exist or be empty).

    Pure Python for the ar container and tar (none, gz, xz, bz2); zstd through the
    ``zstd`` command.  The data tree is one layer applied by :class:`builder.rootfs_tree.TreeWriter`,
    the extraction rule of every root filesystem input: refused are absolute or ``..``
    member names, device nodes and FIFOs, writing through symlinks, symlinks or hard links
    leading out of the tree.  Absolute symlink targets are rewritten relative to the tree
    root (the build host reads this tree).  Files keep their permission bits (without
    setuid/setgid/sticky) and mtimes; ownership is the caller's.
    """
    deb, dest = Path(deb), Path(dest)
    if not deb.is_file():
        raise SourceError(f"{deb} does not exist or is not a file; check the path.", source=str(deb))
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    if not created and any(dest.iterdir()):
        raise SourceError(f"Cannot unpack {deb} into {dest}: the directory is not empty; pass a new "
                          f"or empty directory.", source=str(deb))
    try:
        with open(deb, "rb") as f:
            _, data = _deb_parts(f, deb)
            writer = TreeWriter(dest, owner=str(deb), unit="package", keep_absolute_links=False, epoch=None,
                                max_members=MAX_DEB_MEMBERS, max_bytes=MAX_DEB_UNPACKED_BYTES,
                                limit_why="any package an initrd is built from")
            with _open_member_tar(f, deb, data) as tf:
                writer.apply(tf)
        writer.finish()
    except BaseException:
        # leave nothing half-unpacked behind (a refused package may hold hostile links)
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in list(dest.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise


def apply_deb(deb: os.PathLike | str, writer: TreeWriter, *, where: str | None = None) -> None:
    """Apply the data tree of a .deb as one more layer of ``writer`` (several packages onto one
    root filesystem, by the writer's settings); ``where`` prefixes messages (default: the .deb).
    The caller calls ``writer.finish()`` after the last package and removes the tree on error."""
    deb = Path(deb)
    if not deb.is_file():
        raise SourceError(f"{deb} does not exist or is not a file; check the path.", source=str(deb))
    with open(deb, "rb") as f:
        _, data = _deb_parts(f, deb)
        with _open_member_tar(f, deb, data) as tf:
            writer.apply(tf, where=where or str(deb))


def read_deb_control(deb: os.PathLike | str) -> dict[str, str]:
    """The fields of a .deb's ``control`` file (Package, Version, Depends, ...)."""
    deb = Path(deb)
    with open(deb, "rb") as f:
        control, _ = _deb_parts(f, deb)
        with _open_member_tar(f, deb, control) as tf:
            for m in tf:
                if m.isreg() and _member_parts(m.name, deb) == ["control"]:
                    if m.size > MAX_DEB_CONTROL_BYTES:
                        raise SourceError(f"{deb}: its control file claims {m.size:,} bytes, more than the "
                                          f"{MAX_DEB_CONTROL_BYTES:,} of any package (docs/limits.md); it is "
                                          f"not a well-formed Debian package.", source=str(deb))
                    data = tf.extractfile(m)
                    assert data is not None  # a regular member has data
                    stanzas = _parse_stanzas(data.read().decode("utf-8", "replace"))
                    if stanzas:
                        return stanzas[0]
    raise SourceError(f"{deb} has no control file; it is not a well-formed Debian package.",
                      source=str(deb))


def _parse_stanzas(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs (as printed by ``apt-cache show``) as dicts; continuations joined."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if cur:
                out.append(cur)
            cur, key = {}, None
        elif line[0] in " \t" and key is not None:
            cur[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            cur[key] = value.strip()
    if cur:
        out.append(cur)
    return out
