"""Reading Debian binary packages: the ar container, its member tars, and control stanzas.

:func:`extract_deb` unpacks a package's data tree safely (no path traversal, no special
files, no links leading out of the tree, bounded sizes from :mod:`builder.limits`);
:func:`read_deb_control` reads its ``control`` fields; :func:`_parse_stanzas` reads deb822
paragraphs (also what ``apt-cache show`` prints).  The ar member header is declared once
with :mod:`measure.layout`.

This module works on a file that is already on disk: it needs nothing from apt, the
network or the cache (no import of the other :mod:`builder.sources` modules), and never the
command line (``blindbox.cli``).  Only zstd-compressed members run a tool (``zstd``).
Nothing here prints or exits.
"""

from __future__ import annotations

import contextlib
import io
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from measure import layout
from measure.errors import LayoutError

from ..errors import SourceError, ToolMissing
from ..limits import (MAX_AR_MEMBERS, MAX_DEB_CONTROL_BYTES, MAX_DEB_MEMBERS, MAX_DEB_UNPACKED_BYTES,
                      MAX_TAR_HEADER_BYTES)

_CHUNK = 1 << 20


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
@dataclass(frozen=True)
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


#: what tarfile raises for a bad header after the first (it reports it as a ReadError); not in its stubs
_SubsequentHeaderError: type[tarfile.HeaderError] = tarfile.SubsequentHeaderError  # type: ignore[attr-defined]


class _BoundedTarInfo(tarfile.TarInfo):
    """TarInfo that refuses, before reading it, an extended header claiming more than
    MAX_TAR_HEADER_BYTES (tarfile reads pax and GNU long-name headers into memory whole)
    and GNU sparse members (whose extension blocks tarfile collects without bound; dpkg
    never writes them)."""

    def _proc_member(self, tarfile_):
        if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                         tarfile.GNUTYPE_LONGLINK) and self.size > MAX_TAR_HEADER_BYTES:
            raise _SubsequentHeaderError(
                f"an extended header at offset {self.offset} claims {self.size:,} bytes, more than the "
                f"{MAX_TAR_HEADER_BYTES:,} any package needs")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _SubsequentHeaderError(f"a GNU sparse member at offset {self.offset}, which no "
                                         f"Debian package contains")
        return super()._proc_member(tarfile_)  # type: ignore[misc]  # tarfile's hook, not in its stubs


_TAR_MODES: dict[str, Literal["r|", "r|gz", "r|xz", "r|bz2"]] = {
    "": "r|", ".gz": "r|gz", ".xz": "r|xz", ".bz2": "r|bz2"}
#: raised while decompressing or parsing tar data (never by our own extraction code)
_DECOMPRESSION_ERRORS = (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error)


@contextlib.contextmanager
def _open_member_tar(f, deb: Path, member: _ArMember) -> Iterator[tarfile.TarFile]:
    suffix = member.name.split(".tar", 1)[1]
    raw = _Slice(f, member.offset, member.size)
    if suffix in _TAR_MODES:
        try:
            tf = tarfile.open(fileobj=io.BufferedReader(raw, _CHUNK), mode=_TAR_MODES[suffix],
                              tarinfo=_BoundedTarInfo)
        except AttributeError as e:
            # Python < 3.11.4 (Debian 12 has 3.11.2): a gzip header with an extra field whose
            # data does not inflate makes tarfile's stream fail before it knows its own error type
            raise SourceError(f"{deb}: its {member.name} is corrupt (damaged gzip header); delete the .deb "
                              f"and fetch it again.", source=str(deb)) from e
        except _DECOMPRESSION_ERRORS as e:
            raise SourceError(f"{deb}: its {member.name} is corrupt ({e}); delete the .deb and fetch "
                              f"it again.", source=str(deb)) from e
        try:
            with tf:
                yield tf
        except _DECOMPRESSION_ERRORS as e:
            raise SourceError(f"{deb}: its {member.name} is corrupt ({e}); delete the .deb and fetch "
                              f"it again.", source=str(deb)) from e
        return
    if suffix != ".zst":
        raise SourceError(f"{deb}: its {member.name} uses an unsupported compression "
                          f"({suffix!r}); only none, gz, xz, bz2 and zst are known.", source=str(deb))
    exe = shutil.which("zstd")
    if exe is None:
        raise ToolMissing("zstd", "zstd",
                          f"{deb} has a zstd-compressed {member.name} and zstd was not found on PATH; "
                          f"install the Debian package zstd and run the command again.")
    proc = subprocess.Popen([exe, "-d", "-c", "-q"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None  # all PIPE
    stdin = proc.stdin

    def feed() -> None:
        try:
            while chunk := raw.read(_CHUNK):
                stdin.write(chunk)
        except (BrokenPipeError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    ok = False
    try:
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|", tarinfo=_BoundedTarInfo) as tf:
                yield tf
            while proc.stdout.read(_CHUNK):  # drain the tar padding
                pass
            ok = True
        except _DECOMPRESSION_ERRORS as e:
            raise SourceError(f"{deb}: its {member.name} is corrupt ({e}); delete the .deb and fetch "
                              f"it again.", source=str(deb)) from e
    finally:
        if not ok:
            proc.kill()
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        rc = proc.wait()
        feeder.join()
        if ok and rc != 0:
            raise SourceError(f"{deb}: zstd could not decompress {member.name} ({err or rc}); "
                              f"delete the .deb and fetch it again.", source=str(deb))


def _member_parts(name: str, deb: Path, *, what: str = "member") -> list[str]:
    """The path components of a tar member name, refusing absolute and ``..`` names."""
    if name.startswith("/"):
        raise SourceError(f"{deb} contains the absolute {what} name {name!r}; refusing to unpack a "
                          f"package that writes outside its tree.", source=str(deb))
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SourceError(f"{deb} contains the {what} name {name!r} with '..'; refusing to unpack a "
                          f"package that writes outside its tree (path traversal).", source=str(deb))
    return parts


def _check_parents(dest: Path, parts: list[str], deb: Path, name: str) -> Path:
    """Create the parent directories of ``parts`` inside ``dest`` without following symlinks."""
    cur = dest
    for p in parts[:-1]:
        cur = cur / p
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise SourceError(f"{deb}: member {name!r} lies under {cur.relative_to(dest)}, which is "
                              f"not a directory (a symlink or file); refusing to write through it.",
                              source=str(deb))
    return cur / parts[-1]


def _plain_parents(dest: Path, parts: list[str]) -> bool:
    """True if every parent of ``parts`` inside ``dest`` is a real directory (no symlink)."""
    cur = dest
    for p in parts[:-1]:
        cur = cur / p
        try:
            if not stat.S_ISDIR(os.lstat(cur).st_mode):
                return False
        except FileNotFoundError:
            return False
    return True


def _clear(target: Path) -> None:
    """Remove a non-directory at ``target`` (a later tar member replaces an earlier one)."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(str(target))
    os.unlink(target)


def _extract_tar(tf: tarfile.TarFile, dest: Path, deb: Path) -> None:
    dirs: list[tuple[Path, int, int]] = []
    count = unpacked = 0
    for m in tf:
        count += 1
        if count > MAX_DEB_MEMBERS:
            raise SourceError(f"{deb} holds more than {MAX_DEB_MEMBERS:,} files, more than any package an "
                              f"initrd is built from (docs/limits.md); refusing to unpack it.", source=str(deb))
        if m.isreg():
            unpacked += m.size
            if unpacked > MAX_DEB_UNPACKED_BYTES:
                raise SourceError(f"{deb}: member {m.name!r} ({m.size:,} bytes) takes what the package unpacks "
                                  f"beyond {MAX_DEB_UNPACKED_BYTES:,} bytes (docs/limits.md); refusing to "
                                  f"unpack it.", source=str(deb))
        parts = _member_parts(m.name, deb)
        if not parts:  # "./" itself
            continue
        if m.ischr() or m.isblk() or m.isfifo():
            kind = "FIFO" if m.isfifo() else "device node"
            raise SourceError(f"{deb} contains the {kind} {m.name!r}; refusing to unpack special "
                              f"files from a package.", source=str(deb))
        target = _check_parents(dest, parts, deb, m.name)
        try:
            if m.isdir():
                try:
                    if not stat.S_ISDIR(os.lstat(target).st_mode):
                        _clear(target)
                        os.mkdir(target, 0o755)
                except FileNotFoundError:
                    os.mkdir(target, 0o755)
                dirs.append((target, m.mode & 0o777 | 0o700, int(m.mtime)))
            elif m.isreg():
                _clear(target)
                data = tf.extractfile(m)
                assert data is not None  # a regular member has data
                with open(target, "xb") as out:
                    shutil.copyfileobj(data, out, _CHUNK)
                os.chmod(target, m.mode & 0o777)
                os.utime(target, (int(m.mtime), int(m.mtime)))
            elif m.issym():
                link = _safe_symlink_text(m.linkname, parts, deb, m.name)
                _clear(target)
                os.symlink(link, target)
                os.utime(target, (int(m.mtime), int(m.mtime)), follow_symlinks=False)
            elif m.islnk():
                src_parts = _member_parts(m.linkname, deb, what="hard link target")
                src = dest.joinpath(*src_parts)
                if not src_parts or not _plain_parents(dest, src_parts) or \
                        not os.path.lexists(src) or not stat.S_ISREG(os.lstat(src).st_mode):
                    raise SourceError(f"{deb}: hard link {m.name!r} points at {m.linkname!r}, which is "
                                      f"not a regular file unpacked before it; refusing it.",
                                      source=str(deb))
                _clear(target)
                os.link(src, target)
            else:
                raise SourceError(f"{deb} contains {m.name!r} of an unsupported type "
                                  f"({m.type!r}); refusing to unpack it.", source=str(deb))
        except IsADirectoryError:
            raise SourceError(f"{deb}: member {m.name!r} would replace a directory; refusing to "
                              f"unpack this package.", source=str(deb)) from None
        except FileExistsError:
            raise SourceError(f"{deb}: member {m.name!r} could not be written; the package is "
                              f"malformed.", source=str(deb)) from None
    for d, mode, mtime in reversed(dirs):
        os.chmod(d, mode)
        os.utime(d, (mtime, mtime))


def _safe_symlink_text(linkname: str, parts: list[str], deb: Path, name: str) -> str:
    """The symlink text to write: relative targets kept, absolute ones made relative.

    An absolute target (``/usr/lib/x``) means "inside the package's root"; it is
    rewritten to the equivalent relative path so following it on this machine stays in
    the unpacked tree.  Targets that climb above the tree root are refused.
    """
    if not linkname:
        raise SourceError(f"{deb}: symlink {name!r} has an empty target; refusing it.", source=str(deb))
    base = parts[:-1]
    if linkname.startswith("/"):
        resolved: list[str] = []
        rel = linkname.lstrip("/")
    else:
        resolved = list(base)
        rel = linkname
    for p in rel.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not resolved:
                raise SourceError(f"{deb}: symlink {name!r} -> {linkname!r} points outside the package "
                                  f"tree; refusing it.", source=str(deb))
            resolved.pop()
        else:
            resolved.append(p)
    if not linkname.startswith("/"):
        return linkname
    up = [".."] * len(base)
    return "/".join(up + resolved) or "."


def _check_symlinks_inside(dest: Path, deb: Path) -> None:
    """After unpacking: every symlink, followed on this machine, stays inside ``dest``."""
    root = os.path.realpath(dest)
    for dirpath, dirnames, filenames in os.walk(dest):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                real = os.path.realpath(p)
                if real != root and not real.startswith(root + os.sep):
                    raise SourceError(f"{deb}: symlink /{os.path.relpath(p, dest)} resolves outside the "
                                      f"package tree (through other symlinks); refusing the package.",
                                      source=str(deb))


def extract_deb(deb: os.PathLike | str, dest: os.PathLike | str) -> None:
    """Unpack the data tree of a .deb into ``dest`` (which must not exist or be empty).

    Pure Python for the ar container and tar (none, gz, xz, bz2); zstd through the
    ``zstd`` command.  Refused: absolute or ``..`` member names, device nodes and
    FIFOs, writing through symlinks, symlinks or hard links leading out of the tree.
    Absolute symlink targets are rewritten relative to the tree root.  Files keep their
    permission bits (without setuid/setgid/sticky) and mtimes; ownership is the caller's.
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
            with _open_member_tar(f, deb, data) as tf:
                _extract_tar(tf, dest, deb)
        _check_symlinks_inside(dest, deb)
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
