"""Inputs of a build: Debian packages, sha256-pinned URLs and local files.

Everything fetched lands in a content-addressed cache (:class:`ContentCache`,
``<root>/sha256/<hex>``) and is verified against its sha256 on the way in and on every
later use, so a build can run offline once its inputs have been fetched, and two builds
on different machines see the same bytes or fail.

Debian packages come through a *private* apt configuration (:class:`DebianArchive`):
one small apt tree per suite and architecture under ``<root>/apt/``, with its own
sources list, package lists, pkgcache, empty dpkg status, and its own (empty)
``apt.conf.d`` and ``preferences.d``.  Every apt call runs with ``APT_CONFIG`` pointing
at that tree's ``apt.conf``, so nothing from the host's ``/etc/apt`` (sources, pins,
``Acquire::Check-Valid-Until "false"`` and the like) leaks in, and the host's apt state
is never touched.  Release signatures are checked against the Debian archive keyring
(``/usr/share/keyrings/debian-archive-keyring.gpg``) always.

Suites and what "the suite serves now" means:

* ``bookworm`` = bookworm + bookworm-updates + bookworm-security (stable kernels are
  replaced in the security suite, e.g. linux-image-amd64 6.1.192-2 there against
  6.1.176-1 in bookworm itself on 2026-11-26);
* ``trixie`` = trixie + trixie-updates + trixie-security;
* ``sid``.

Stale Release files (observed on 2026-11-26 with the archive reachable here, which is a
snapshot that lags): sid's InRelease is dated 2026-10-30 with Valid-Until 2026-11-06,
and apt refuses it ("Release file ... is expired (invalid since 20d 8h ...)").  Trixie
and bookworm themselves carry no Valid-Until; trixie-updates, trixie-security and
bookworm-security are valid only until 2026-12-02, so they will expire too if the snapshot
does not move.  This module never turns the freshness check off by itself: an expired
suite raises :class:`~builder.errors.StaleSuite`, and a caller that accepts the risk
names the suite in ``allow_stale`` -- that suite's sources then carry
``Check-Valid-Until: no`` (apt's ``[check-valid-until=no]``); signatures stay checked.
The same check is repeated in Python on the cached Release files, so package lists that
were fetched under ``allow_stale`` are not used silently by an archive without it.

Nothing here prints or exits; every failure is a :class:`~builder.errors.SourceError`
(or :class:`~builder.errors.ToolMissing`) with one sentence saying what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import difflib
import email.utils
import errno
import fcntl
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from blindbox.files import cache_root  # the one definition of where blindbox caches things
from blindbox.files import write_atomic

from .errors import (InputDigestMismatch, OfflineMiss, SourceError, SourceGone, StaleSuite,
                     ToolMissing)
from .limits import (MAX_AR_MEMBERS, MAX_DEB_CONTROL_BYTES, MAX_DEB_MEMBERS, MAX_DEB_UNPACKED_BYTES,
                     MAX_TAR_HEADER_BYTES)

__all__ = [
    "ContentCache", "DebianArchive", "DebianPackage", "SUITES", "cache_root", "extract_deb",
    "fetch_url", "local_file", "read_deb_control", "sha256_file",
]

_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"


# --------------------------------------------------------------------------- hashing

def sha256_file(path: os.PathLike | str) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_sha256(value: str, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value.lower()):
        raise SourceError(f"The sha256 given for {what} ({value!r}) is not 64 hexadecimal digits; "
                          f"copy the full digest from the lock file or from `sha256sum`.",
                          source=what)
    return value.lower()


# --------------------------------------------------------------------------- cache

@contextlib.contextmanager
def _flock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold ``flock`` on ``path`` (created if needed) for the ``with`` block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _rename_same_fs(src: Path, dest: Path) -> bool:
    """Rename ``src`` over ``dest``; False (nothing done) when they are on different file systems."""
    try:
        os.replace(src, dest)
        return True
    except OSError as e:
        if e.errno == errno.EXDEV:
            return False
        raise


def _copy_synced(src: Path, dest: Path) -> None:
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)
        fout.flush()
        os.fsync(fout.fileno())


class ContentCache:
    """A content-addressed file store: ``<root>/sha256/<hex>``.

    Writes go to ``<root>/tmp`` first and are renamed into place, so a reader never sees
    a partial file.  ``flock`` locks under ``<root>/locks`` serialise writers of the same
    entry across processes (pytest-xdist workers, parallel builds), and callers that
    fetch use :meth:`lock` so that only one of them downloads.  Entries are verified
    against their name whenever :meth:`path` hands them out; a corrupt entry is moved to
    ``<root>/quarantine`` and reported, and the next fetch replaces it.
    """

    def __init__(self, root: os.PathLike | str | None = None):
        self.root = Path(root) if root is not None else cache_root()

    def __repr__(self) -> str:
        return f"ContentCache({str(self.root)!r})"

    # -- layout
    def _dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def entry(self, sha256: str) -> Path:
        """Where the entry for ``sha256`` lives (whether or not it exists)."""
        return self.root / "sha256" / _check_sha256(sha256, "a cache entry")

    # -- locking
    def lock(self, name: str, *, shared: bool = False) -> contextlib.AbstractContextManager:
        """Hold an inter-process ``flock`` named ``name`` (not reentrant)."""
        safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
        return _flock(self._dir("locks") / f"{safe}.lock", shared=shared)

    @contextlib.contextmanager
    def tempdir(self, prefix: str = "work") -> Iterator[Path]:
        """A private scratch directory on the cache's file system, removed afterwards."""
        d = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self._dir("tmp")))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    # -- entries
    def path(self, sha256: str, *, verify: bool = True) -> Path | None:
        """The cached file with this sha256, or None.

        With ``verify`` (the default) the file is hashed first; if it does not match,
        it is moved to ``<root>/quarantine`` and :class:`InputDigestMismatch` is raised
        (fetching again then stores a fresh copy).
        """
        entry = self.entry(sha256)
        if not entry.is_file():
            return None
        if not verify:
            return entry
        if sha256_file(entry) == entry.name:
            return entry
        with self.lock(f"entry-{entry.name}"):
            try:
                actual = sha256_file(entry)  # again: a writer may have just replaced it
            except FileNotFoundError:
                return None
            if actual == entry.name:
                return entry
            moved = self._quarantine(entry)
        raise InputDigestMismatch(
            f"The cached file {entry} should have sha256 {entry.name} but has {actual} (the cache "
            f"was damaged or modified); it was moved to {moved or 'quarantine'}, and fetching the "
            f"input again replaces it.",
            expected=entry.name, actual=actual, path=str(entry))

    def _quarantine(self, entry: Path) -> Path | None:
        target = self._dir("quarantine") / f"{entry.name}.{time.time_ns()}"
        try:
            os.replace(entry, target)
        except FileNotFoundError:
            return None  # another process got there first
        return target

    def put_file(self, src: os.PathLike | str, sha256: str | None = None, *,
                 move: bool = False) -> Path:
        """Store a copy of ``src`` and return the entry.

        When ``sha256`` is given, the bytes must match it or :class:`InputDigestMismatch`
        is raised and nothing is stored.  With ``move`` the file is renamed into the
        cache when it can be (same file system) and ``src`` is consumed either way,
        also when it does not match.
        """
        src = Path(src)
        expected = _check_sha256(sha256, str(src)) if sha256 is not None else None
        fd, tmp_name = tempfile.mkstemp(prefix="put-", dir=self._dir("tmp"))
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if not (move and _rename_same_fs(src, tmp)):
                _copy_synced(src, tmp)
                if move:
                    src.unlink()
            actual = sha256_file(tmp)
            if expected is not None and actual != expected:
                raise InputDigestMismatch(
                    f"{src} has sha256 {actual}, but {expected} was expected; it was not stored. "
                    f"If the new content is intended, update the pinned sha256 (this changes the "
                    f"measurement); otherwise fetch it again from a trusted origin.",
                    source=str(src), expected=expected, actual=actual, path=str(src))
            return self._commit(tmp, actual)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes) -> Path:
        """Store ``data``; return its entry."""
        fd, tmp_name = tempfile.mkstemp(prefix="put-", dir=self._dir("tmp"))
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return self._commit(tmp, hashlib.sha256(data).hexdigest())
        finally:
            tmp.unlink(missing_ok=True)

    def _commit(self, tmp: Path, sha256: str) -> Path:
        entry = self._dir("sha256") / sha256
        os.chmod(tmp, 0o444)
        with self.lock(f"entry-{sha256}"):
            if entry.is_file():
                if sha256_file(entry) == sha256:
                    return entry
                self._quarantine(entry)
            os.replace(tmp, entry)
        with contextlib.suppress(OSError):
            dfd = os.open(entry.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return entry

    # -- unpacked trees
    def tree(self, key: str, build: Callable[[Path], None]) -> Path:
        """A directory ``<root>/unpacked/<key>``, created once by ``build(dest)``.

        ``build`` receives a path that does not exist yet and must create it; the
        result is renamed into place only when ``build`` returns, so a tree that exists
        is complete.  Treat it as read-only.
        """
        final = self.root / "unpacked" / key
        if final.is_dir():
            return final
        with self.lock(f"tree-{key}"):
            if final.is_dir():
                return final
            final.parent.mkdir(parents=True, exist_ok=True)
            with self.tempdir("tree") as work:
                build(work / "t")
                os.replace(work / "t", final)
        return final


# --------------------------------------------------------------------------- .deb files

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


def _ar_members(f, deb: Path) -> list[_ArMember]:
    total = os.fstat(f.fileno()).st_size
    if os.pread(f.fileno(), 8, 0) != b"!<arch>\n":
        raise SourceError(f"{deb} is not a Debian package (it does not start with an ar archive "
                          f"header); delete it and fetch it again.", source=str(deb))
    members, pos = [], 8
    while pos < total:
        hdr = os.pread(f.fileno(), 60, pos)
        if len(hdr) < 60 or hdr[58:60] != b"`\n":
            raise SourceError(f"{deb} has a damaged ar member header at offset {pos}; delete it and "
                              f"fetch it again.", source=str(deb))
        try:
            name = hdr[0:16].decode("ascii").rstrip(" ")
            size = int(hdr[48:58].decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise SourceError(f"{deb} has an unreadable ar member header at offset {pos}; delete it "
                              f"and fetch it again.", source=str(deb)) from None
        if name.endswith("/"):
            name = name[:-1]
        if size < 0 or pos + 60 + size > total:
            raise SourceError(f"{deb} is truncated (member {name!r} at offset {pos} claims {size} "
                              f"bytes); delete it and fetch it again.", source=str(deb))
        members.append(_ArMember(name, pos + 60, size))
        if len(members) > MAX_AR_MEMBERS:
            raise SourceError(f"{deb} has more than {MAX_AR_MEMBERS} ar members (a Debian package has three, "
                              f"plus signatures); it is not a Debian package.", source=str(deb))
        pos += 60 + size + (size & 1)
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


# --------------------------------------------------------------------------- URLs and files

def local_file(path: os.PathLike | str, sha256: str | None) -> Path:
    """``path`` after checking it is a readable file and, if pinned, that its sha256 matches."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"The input file {p} does not exist or is not a regular file; check the path "
                          f"(relative paths are resolved against the recipe's directory).",
                          source=str(p))
    if sha256 is not None:
        expected = _check_sha256(sha256, str(p))
        actual = sha256_file(p)
        if actual != expected:
            raise InputDigestMismatch(
                f"The input file {p} has sha256 {actual}, but {expected} is pinned; if the change is "
                f"intended, update the pin (this changes the measurement), otherwise restore the file.",
                source=str(p), expected=expected, actual=actual, path=str(p))
    return p


def fetch_url(url: str, sha256: str, *, cache: ContentCache | None = None,
              offline: bool = False, timeout: float = 60.0) -> Path:
    """The cached file for a sha256-pinned ``https://``, ``http://`` or ``file://`` URL.

    Served from the cache without network when present (also offline).  ``file://``
    URLs are read even offline.  The bytes must match ``sha256``.
    """
    expected = _check_sha256(sha256, url)
    cache = cache if cache is not None else ContentCache()
    hit = cache.path(expected)
    if hit is not None:
        return hit
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SourceError(f"The URL {url} names a remote host in a file:// URL; use file:///path "
                              f"for a local file.", source=url)
        local = Path(urllib.request.url2pathname(parsed.path))
        if not local.is_file():
            raise SourceError(f"The URL {url} points at {local}, which does not exist or is not a "
                              f"regular file; check the URL.", source=url)
        return _put_checked(cache, local, expected, url, move=False)
    if scheme not in ("http", "https"):
        raise SourceError(f"The URL {url} has the unsupported scheme {scheme or '(none)'!r}; use "
                          f"https://, http:// or file://.", source=url)
    if offline:
        raise OfflineMiss(f"{url} (sha256 {expected}) is not in the cache at {cache.root} and offline "
                          f"mode forbids downloading it; run once without --offline to fetch it.",
                          source=url)
    with cache.lock(f"fetch-{expected}"):
        hit = cache.path(expected)
        if hit is not None:
            return hit
        with cache.tempdir("url") as tmp:
            dest = tmp / "download"
            _http_get(url, dest, timeout)
            return _put_checked(cache, dest, expected, url, move=True)


def _put_checked(cache: ContentCache, src: Path, expected: str, url: str, *, move: bool) -> Path:
    try:
        return cache.put_file(src, expected, move=move)
    except InputDigestMismatch as e:
        raise InputDigestMismatch(
            f"{url} delivered bytes with sha256 {e.actual}, but {expected} is pinned; nothing was "
            f"cached. If the publisher changed the file on purpose, review it and update the pin "
            f"(this changes the measurement).",
            source=url, expected=expected, actual=e.actual) from None


def _http_get(url: str, dest: Path, timeout: float) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "blindbox-guest"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
            shutil.copyfileobj(resp, out, _CHUNK)
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):
            raise SourceGone(f"{url} answered HTTP {e.code} (the file is no longer served there) and it is "
                             f"not in the cache; find where the publisher moved it and update the URL, "
                             f"or pin a new file (this changes the measurement).", source=url) from None
        raise SourceError(f"{url} answered HTTP {e.code} {e.reason}; check the URL or try again later.",
                          source=url) from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise SourceError(f"Could not download {url} ({reason}); check the URL and the network, or "
                          f"put the file in the cache from another machine.", source=url) from None


# --------------------------------------------------------------------------- Debian

@dataclass(frozen=True)
class DebianPackage:
    """One exact binary package, as pinned in a lock file."""

    name: str
    version: str
    arch: str        #: the package's Architecture field ("amd64" or "all")
    suite: str       #: the suite family it was resolved in ("bookworm", "trixie", "sid")
    filename: str    #: pool path in the archive
    size: int
    sha256: str

    def __post_init__(self):
        object.__setattr__(self, "sha256", _check_sha256(self.sha256, f"{self.name} {self.version}"))

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.suite}, {self.arch})"

    @property
    def source(self) -> str:
        return f"debian:{self.suite}/{self.name}={self.version}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DebianPackage:
        fields = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict):
            raise SourceError(f"A Debian package entry in the lock file is a {type(data).__name__}, not "
                              f"a mapping with {', '.join(fields)}; regenerate it with `blindbox lock`.")
        missing = [k for k in fields if k not in data]
        unknown = sorted(set(data) - set(fields))
        if missing or unknown:
            what = "; ".join(x for x in (missing and f"missing {', '.join(missing)}",
                                         unknown and f"unknown {', '.join(unknown)}") if x)
            raise SourceError(f"The Debian package entry {data.get('name', '?')} in the lock file is "
                              f"malformed ({what}); regenerate it with `blindbox lock`.")
        if not isinstance(data["size"], int) or isinstance(data["size"], bool) or \
                not all(isinstance(data[k], str) for k in fields if k != "size"):
            raise SourceError(f"The Debian package entry {data.get('name', '?')} in the lock file has a "
                              f"field of the wrong type (size is an integer, the rest are strings); "
                              f"regenerate it with `blindbox lock`.")
        return cls(**{k: data[k] for k in fields})


@dataclass(frozen=True)
class SuiteSources:
    """Which archive suites make up one suite family."""

    name: str
    suites: tuple[str, ...]            #: on the main mirror
    security: tuple[str, ...] = ()     #: on the security mirror


SUITES: dict[str, SuiteSources] = {
    "bookworm": SuiteSources("bookworm", ("bookworm", "bookworm-updates"), ("bookworm-security",)),
    "trixie": SuiteSources("trixie", ("trixie", "trixie-updates"), ("trixie-security",)),
    "sid": SuiteSources("sid", ("sid",)),
}

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_VERSION_RE = re.compile(r"[A-Za-z0-9.+~:-]+")
_ARCH_RE = re.compile(r"[a-z0-9]+")
_EXPIRED_RE = re.compile(r"Release file for (\S+) is expired \(invalid since ([^)]*)\)")


@dataclass(frozen=True)
class _Tree:
    """One private apt configuration: a suite family on one architecture."""

    suite: str
    arch: str
    dir: Path

    @property
    def conf(self) -> Path:
        return self.dir / "apt.conf"

    @property
    def lists(self) -> Path:
        return self.dir / "lists"

    @property
    def stamp(self) -> Path:
        return self.dir / "last-update.json"

    def lock(self, *, shared: bool = False) -> contextlib.AbstractContextManager:
        """Exclusive while ``apt-get update`` rewrites the lists; shared for readers.

        The lock file lives in the tree itself, so every archive object using this tree
        (whatever its content cache) takes the same lock.
        """
        return _flock(self.dir / "blindbox.lock", shared=shared)

    def sources_dir(self, stale_ok: bool) -> Path:
        return self.dir / "etc" / ("sources-stale.d" if stale_ok else "sources.d")


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        pass
    write_atomic(path, text.encode(), what="apt configuration file", mode=0o644)


class DebianArchive:
    """Resolve, download and unpack exact Debian binary packages through private apt trees.

    ``offline``: never touch the network; answer from the cached package lists and the
    content cache, or raise :class:`OfflineMiss`.  ``allow_stale``: suite families
    (``"sid"``) whose expired Release files are accepted (see the module docstring).
    ``max_release_age``: seconds; refuse Release files older than this even when they
    carry no Valid-Until (apt's ``Acquire::Max-ValidTime``).  ``update_interval``: how
    old the cached package lists may get before a lookup refreshes them.
    """

    #: a lookup that misses refreshes the lists unless they are younger than this
    MISS_REFRESH_AFTER = 300.0

    def __init__(self, *, cache: ContentCache | None = None, offline: bool = False,
                 allow_stale: Iterable[str] = (), mirror: str | None = None,
                 security_mirror: str | None = None, apt_dir: os.PathLike | str | None = None,
                 update_interval: float = 6 * 3600, max_release_age: float | None = None):
        self.cache = cache if cache is not None else ContentCache()
        self.offline = offline
        if isinstance(allow_stale, str):
            allow_stale = [allow_stale]
        self.allow_stale = frozenset(allow_stale)
        for s in sorted(self.allow_stale):
            self._suite(s)
        self.mirror = (mirror or os.environ.get("BLINDBOX_DEBIAN_MIRROR") or DEFAULT_MIRROR).rstrip("/")
        self.security_mirror = (security_mirror or os.environ.get("BLINDBOX_DEBIAN_SECURITY_MIRROR")
                                or DEFAULT_SECURITY_MIRROR).rstrip("/")
        self.apt_dir = Path(apt_dir) if apt_dir is not None else self.cache.root / "apt"
        self.update_interval = update_interval
        self.max_release_age = max_release_age
        #: packages this object downloaded from the network (cache hits are not listed)
        self.fetched: list[DebianPackage] = []
        #: suite families whose lists this object refreshed with ``apt-get update``
        self.updated: list[str] = []

    def __repr__(self) -> str:
        return (f"DebianArchive(cache={self.cache!r}, offline={self.offline}, "
                f"allow_stale={sorted(self.allow_stale)})")

    # ------------------------------------------------------------------ apt trees
    @staticmethod
    def _suite(suite: str) -> SuiteSources:
        try:
            return SUITES[suite]
        except (KeyError, TypeError):
            raise SourceError(f"Unknown Debian suite {suite!r}; use one of {', '.join(SUITES)} "
                              f"(codenames, not stable/unstable).", source=f"debian:{suite}") from None

    def _tree(self, suite: str, arch: str) -> _Tree:
        spec = self._suite(suite)
        if not isinstance(arch, str) or not _ARCH_RE.fullmatch(arch) or arch == "all":
            raise SourceError(f"Unsupported Debian architecture {arch!r}; give a machine architecture "
                              f"such as amd64 (packages of architecture all are found under it).",
                              source=f"debian:{suite}")
        if not DEBIAN_KEYRING.is_file():
            raise ToolMissing("debian-archive-keyring.gpg", "debian-archive-keyring",
                              f"The Debian archive keyring {DEBIAN_KEYRING} is missing, so Release "
                              f"signatures cannot be checked; install the Debian package "
                              f"debian-archive-keyring and run the command again.")
        name = f"{suite}-{arch}"
        if (self.mirror, self.security_mirror) != (DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR):
            tag = hashlib.sha256(f"{self.mirror}\n{self.security_mirror}".encode()).hexdigest()[:10]
            name += f"-{tag}"
        tree = _Tree(suite, arch, self.apt_dir / name)
        etc = tree.dir / "etc"
        for d in (etc / "apt.conf.d", etc / "preferences.d", etc / "trusted.gpg.d", etc / "auth.conf.d",
                  tree.sources_dir(False), tree.sources_dir(True), tree.lists / "partial",
                  tree.dir / "cache" / "archives" / "partial", tree.dir / "state", tree.dir / "log"):
            d.mkdir(parents=True, exist_ok=True)
        for f in (etc / "apt.conf.main", etc / "preferences", etc / "sources.list",
                  tree.dir / "state" / "status"):
            if not f.exists():
                f.touch()
        for stale_ok in (False, True):
            _write_if_changed(tree.sources_dir(stale_ok) / "debian.sources",
                              self._sources_text(spec, arch, stale_ok))
        _write_if_changed(tree.conf, self._conf_text(tree))
        return tree

    def _sources_text(self, spec: SuiteSources, arch: str, stale_ok: bool) -> str:
        blocks = []
        for uri, suites in ((self.mirror, spec.suites), (self.security_mirror, spec.security)):
            if not suites:
                continue
            lines = ["Types: deb", f"URIs: {uri}", f"Suites: {' '.join(suites)}", "Components: main",
                     f"Architectures: {arch}", f"Signed-By: {DEBIAN_KEYRING}"]
            if stale_ok:
                # the explicit, per-suite choice made through allow_stale; signatures stay on
                lines.append("Check-Valid-Until: no")
            blocks.append("\n".join(lines) + "\n")
        header = ("# Generated by blindbox (builder.sources); rewritten on every run.\n"
                  + ("# allow_stale: this suite's expired Release files are accepted.\n" if stale_ok else ""))
        return header + "\n".join(blocks)

    def _conf_text(self, tree: _Tree) -> str:
        d, etc = tree.dir, tree.dir / "etc"
        q = lambda p: json.dumps(str(p))  # noqa: E731 - apt.conf strings are double-quoted
        lines = [
            "// Generated by blindbox (builder.sources): a private apt configuration.",
            "// Every directory below is ours, so the host's /etc/apt is never read.",
            'Dir "/";',
            f"Dir::Etc {q(etc)};",
            f"Dir::Etc::Main {q(etc / 'apt.conf.main')};",
            f"Dir::Etc::Parts {q(etc / 'apt.conf.d')};",
            f"Dir::Etc::SourceList {q(etc / 'sources.list')};",
            f"Dir::Etc::SourceParts {q(tree.sources_dir(False))};",
            f"Dir::Etc::Preferences {q(etc / 'preferences')};",
            f"Dir::Etc::PreferencesParts {q(etc / 'preferences.d')};",
            f"Dir::Etc::Trusted {q(etc / 'trusted.gpg')};",
            f"Dir::Etc::TrustedParts {q(etc / 'trusted.gpg.d')};",
            f"Dir::Etc::netrc {q(etc / 'auth.conf')};",
            f"Dir::Etc::netrcparts {q(etc / 'auth.conf.d')};",
            f"Dir::State {q(d / 'state')};",
            f"Dir::State::Lists {q(tree.lists)};",
            f"Dir::State::status {q(d / 'state' / 'status')};",
            f"Dir::Cache {q(d / 'cache')};",
            f"Dir::Cache::Archives {q(d / 'cache' / 'archives')};",
            'Dir::Cache::srcpkgcache "";',
            f"Dir::Log {q(d / 'log')};",
            f"APT::Architecture {q(tree.arch)};",
            f"APT::Architectures {{ {q(tree.arch)}; }};",
            'APT::Get::AllowUnauthenticated "false";',
            'Acquire::AllowInsecureRepositories "false";',
            'Acquire::AllowDowngradeToInsecureRepositories "false";',
            '// Freshness is checked; only allow_stale turns it off, per suite, in the sources.',
            'Acquire::Check-Valid-Until "true";',
            'Acquire::Check-Date "true";',
            'Acquire::Languages "none";',
            'Acquire::GzipIndexes "false";',
            'Acquire::Retries "3";',
            'Acquire::http::Timeout "60";',
            'Acquire::https::Timeout "60";',
        ]
        if os.geteuid() == 0:
            # Our cache usually lives in root's 0700 home, which apt's _apt sandbox user
            # cannot enter; everything fetched is verified by signature and sha256 anyway.
            lines.append('APT::Sandbox::User "root";')
        return "\n".join(lines) + "\n"

    def apt_config(self, suite: str, arch: str = "amd64") -> Path:
        """The generated ``apt.conf`` of a suite family (for inspection and tests)."""
        return self._tree(suite, arch).conf

    def apt_config_dump(self, suite: str, arch: str = "amd64") -> str:
        """``apt-config dump`` as every apt call of this archive sees it (for debugging)."""
        tree = self._tree(suite, arch)
        proc = self._apt(tree, ["apt-config", "dump"])
        if proc.returncode != 0:
            raise SourceError(f"apt-config dump failed for the private apt tree {tree.dir} "
                              f"({_last_lines(proc.stderr)}); delete that directory to regenerate it.",
                              source=f"debian:{suite}")
        return proc.stdout

    def _apt_env(self, tree: _Tree) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APT_", "LC_", "LANG"))}
        env.update(APT_CONFIG=str(tree.conf), LC_ALL="C", LANGUAGE="")
        return env

    def _apt(self, tree: _Tree, argv: list[str], *, cwd: Path | None = None,
             timeout: float = 3600) -> subprocess.CompletedProcess:
        exe = shutil.which(argv[0])
        if exe is None:
            raise ToolMissing(argv[0], "apt")
        stale_ok = tree.suite in self.allow_stale
        cmd = [exe, "-o", f"Dir::Etc::SourceParts={tree.sources_dir(stale_ok)}"]
        if self.max_release_age is not None:
            cmd += ["-o", f"Acquire::Max-ValidTime={int(self.max_release_age)}"]
        cmd += argv[1:]
        try:
            return subprocess.run(cmd, cwd=cwd, env=self._apt_env(tree), capture_output=True,
                                  text=True, errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SourceError(f"`{' '.join(argv)}` for Debian {tree.suite} did not finish within "
                              f"{timeout:.0f} s; check the network and try again.",
                              source=f"debian:{tree.suite}") from None

    # ------------------------------------------------------------------ package lists
    def _lists_complete(self, tree: _Tree) -> bool:
        spec = self._suite(tree.suite)
        names = {p.name for p in tree.lists.glob("*")}
        # apt moves a source's Release and its indexes into lists/ together, on success
        return all(any(n.endswith((f"_dists_{suite}_InRelease", f"_dists_{suite}_Release")) for n in names)
                   for suite in spec.suites + spec.security)

    def _stamp_age(self, tree: _Tree) -> float:
        try:
            data = json.loads(tree.stamp.read_text())
            if data.get("sources") != self._sources_fingerprint(tree):
                return float("inf")
            return max(0.0, time.time() - float(data["time"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return float("inf")

    def _sources_fingerprint(self, tree: _Tree) -> str:
        return hashlib.sha256((tree.sources_dir(False) / "debian.sources").read_bytes()).hexdigest()

    def _update(self, tree: _Tree, *, min_age: float) -> bool:
        """``apt-get update`` unless the lists are younger than ``min_age``; True if it ran.

        Also skipped when another process refreshed the lists after this call started
        (it waited for that process's lock), so parallel workers update once.
        """
        if self.offline:
            raise OfflineMiss(f"The Debian {tree.suite} package lists in {tree.lists} are missing or "
                              f"incomplete and offline mode forbids fetching them; run once without "
                              f"--offline.", source=f"debian:{tree.suite}")
        started = time.time()
        with tree.lock():
            age = self._stamp_age(tree)
            if (age < min_age or age < time.time() - started) and self._lists_complete(tree):
                return False
            proc = self._apt(tree, ["apt-get", "-q", "--error-on=any", "update"])
            if proc.returncode != 0:
                raise self._update_error(tree, proc)
            tmp = tree.stamp.with_suffix(".tmp")
            tmp.write_text(json.dumps({"time": time.time(),
                                       "sources": self._sources_fingerprint(tree)}))
            os.replace(tmp, tree.stamp)
        self.updated.append(tree.suite)
        return True

    def _stale_advice(self, suite: str) -> str:
        return (f"if you accept package lists that may lack security updates, allow it explicitly for "
                f"this suite with --allow-stale {suite} (blindbox build, lock and check-repro; blindbox "
                f"fetch --suite {suite} takes --allow-stale alone; allow_stale=[\"{suite}\"] in Python); "
                f"apt's signature checks stay on")

    def _update_error(self, tree: _Tree, proc: subprocess.CompletedProcess) -> SourceError:
        out = (proc.stderr + "\n" + proc.stdout).strip()
        src = f"debian:{tree.suite}"
        m = _EXPIRED_RE.search(out)
        if m:
            return StaleSuite(f"apt refuses Debian {tree.suite}: the Release file {m.group(1)} is expired "
                              f"(invalid since {m.group(2)}), which means the archive reachable from here "
                              f"lags behind; {self._stale_advice(tree.suite)}.",
                              source=src, suite=tree.suite)
        if "is not valid yet" in out:
            return SourceError(f"apt refuses Debian {tree.suite} because its Release file is dated in the "
                               f"future; check this machine's clock.", source=src)
        if any(s in out for s in ("NO_PUBKEY", "EXPKEYSIG", "signatures couldn't be verified",
                                  "is not signed", "BADSIG")):
            return SourceError(f"apt could not verify the signature of Debian {tree.suite}'s Release file "
                               f"with {DEBIAN_KEYRING} ({_last_lines(out)}); update the Debian package "
                               f"debian-archive-keyring, or check that the mirror is genuine.", source=src)
        return SourceError(f"apt-get update for Debian {tree.suite} failed ({_last_lines(out)}); check the "
                           f"network and the mirror {self.mirror}, or use --offline with a filled "
                           f"cache.", source=src)

    def _release_files(self, tree: _Tree) -> list[tuple[str, Path]]:
        spec = self._suite(tree.suite)
        out = []
        for suite in spec.suites + spec.security:
            for p in sorted(tree.lists.glob(f"*_dists_{suite}_InRelease")) + \
                    sorted(tree.lists.glob(f"*_dists_{suite}_Release")):
                out.append((suite, p))
        return out

    def _expired_release(self, tree: _Tree) -> str | None:
        """A sentence naming the first cached Release file that is no longer valid, or None."""
        now = _dt.datetime.now(_dt.timezone.utc)
        for suite, path in self._release_files(tree):
            fields = _release_fields(path)
            ends = []
            if "Valid-Until" in fields:
                ends.append(("Valid-Until", _parse_date(fields["Valid-Until"])))
            if self.max_release_age is not None and "Date" in fields:
                date = _parse_date(fields["Date"])
                if date is not None:
                    ends.append(("max_release_age",
                                 date + _dt.timedelta(seconds=self.max_release_age)))
            for why, end in ends:
                if end is not None and now > end:
                    return (f"the cached Release file of {suite} (dated {fields.get('Date', '?')}) expired "
                            f"on {end:%Y-%m-%d %H:%M} UTC ({why})")
        return None

    def _ensure_lists(self, tree: _Tree) -> None:
        refreshed = False
        if not self._lists_complete(tree):
            refreshed = self._update(tree, min_age=0.0)
        elif not self.offline and self._stamp_age(tree) > self.update_interval:
            refreshed = self._update(tree, min_age=self.update_interval)
        if tree.suite in self.allow_stale:
            return
        expired = self._expired_release(tree)
        if expired and not self.offline and not refreshed:
            self._update(tree, min_age=0.0)  # apt raises StaleSuite if it is still expired
            expired = self._expired_release(tree)
        if expired:
            raise StaleSuite(f"Debian {tree.suite} cannot be used: {expired}"
                             f"{' and offline mode cannot refresh it' if self.offline else ''}; "
                             f"{self._stale_advice(tree.suite)}.",
                             source=f"debian:{tree.suite}", suite=tree.suite)

    # ------------------------------------------------------------------ queries
    def _show(self, tree: _Tree, name: str, version: str) -> list[dict[str, str]]:
        with tree.lock(shared=True):
            proc = self._apt(tree, ["apt-cache", "show", "--no-all-versions", f"{name}={version}"])
        if proc.returncode != 0:
            if "No packages found" in proc.stderr or "Unable to locate" in proc.stderr \
                    or "Can't select" in proc.stderr or not proc.stderr.strip():
                return []
            raise SourceError(f"apt-cache show {name}={version} failed for Debian {tree.suite} "
                              f"({_last_lines(proc.stderr)}).", source=f"debian:{tree.suite}/{name}")
        return [s for s in _parse_stanzas(proc.stdout) if s.get("Package") == name]

    def _candidate(self, tree: _Tree, name: str) -> str | None:
        with tree.lock(shared=True):
            proc = self._apt(tree, ["apt-cache", "policy", name])
        m = re.search(r"^\s*Candidate:\s*(\S+)\s*$", proc.stdout, re.M)
        if proc.returncode != 0 or not m or m.group(1) == "(none)":
            return None
        return m.group(1)

    def served_versions(self, name: str, suite: str, arch: str = "amd64") -> list[tuple[str, str]]:
        """``[(version, archive suite), ...]`` that the suite family serves for ``name``."""
        tree = self._tree(suite, arch)
        self._ensure_lists(tree)
        return self._madison(tree, name)

    def _madison(self, tree: _Tree, name: str) -> list[tuple[str, str]]:
        with tree.lock(shared=True):
            proc = self._apt(tree, ["apt-cache", "madison", name])
        out = []
        for line in proc.stdout.splitlines():
            cols = [c.strip() for c in line.split("|")]
            if len(cols) == 3 and cols[0] == name:
                where = cols[2].split()
                out.append((cols[1], where[1].split("/")[0] if len(where) > 1 else "?"))
        return out

    def _lookup(self, tree: _Tree, name: str, version: str | None) -> DebianPackage | None:
        if version is None:
            version = self._candidate(tree, name)
            if version is None:
                return None
        stanzas = self._show(tree, name, version)
        if not stanzas:
            return None
        digests = {s.get("SHA256") for s in stanzas}
        if len(digests) != 1:
            raise SourceError(f"Debian {tree.suite} serves {name} {version} with different contents in "
                              f"different suites (sha256 {', '.join(sorted(map(str, digests)))}); pin the "
                              f"sha256 you reviewed.", source=f"debian:{tree.suite}/{name}={version}")
        s = stanzas[0]
        try:
            return DebianPackage(name=name, version=s["Version"], arch=s["Architecture"],
                                 suite=tree.suite, filename=s["Filename"], size=int(s["Size"]),
                                 sha256=s["SHA256"].lower())
        except (KeyError, ValueError, SourceError):
            raise SourceError(f"apt's record of {name} {version} in Debian {tree.suite} lacks a usable "
                              f"Version, Architecture, Filename, Size or SHA256 field; refresh the package "
                              f"lists by deleting {tree.lists}.",
                              source=f"debian:{tree.suite}/{name}={version}") from None

    def _gone(self, tree: _Tree, name: str, version: str) -> SourceError:
        src = f"debian:{tree.suite}/{name}={version}"
        if self.offline:
            return OfflineMiss(f"{name} {version} is not in the cache at {self.cache.root} nor in the cached "
                               f"Debian {tree.suite} package lists, and offline mode forbids looking it up; "
                               f"run once without --offline.", source=src)
        served = self._madison(tree, name)
        now = (f"it now serves {', '.join(v for v, _ in served)}" if served
               else "it serves no version of that package now")
        return SourceGone(f"{name} {version} is no longer served by Debian {tree.suite} ({now}) and is not in "
                          f"the cache at {self.cache.root}; run `blindbox lock --update RECIPE` to pin the "
                          f"current version; this changes the measurement.", source=src)

    def resolve(self, name: str, suite: str, version: str | None = None,
                arch: str = "amd64") -> DebianPackage:
        """The exact package ``name`` (at ``version``, or what ``suite`` serves now)."""
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise SourceError(f"{name!r} is not a valid Debian package name; check the recipe.",
                              source=f"debian:{suite}/{name}")
        if version is not None and (not isinstance(version, str) or not _VERSION_RE.fullmatch(version)):
            raise SourceError(f"{version!r} is not a valid Debian version for {name}; check the recipe "
                              f"or lock file.", source=f"debian:{suite}/{name}")
        tree = self._tree(suite, arch)
        self._ensure_lists(tree)
        pkg = self._lookup(tree, name, version)
        if pkg is None and not self.offline and self._update(tree, min_age=self.MISS_REFRESH_AFTER):
            pkg = self._lookup(tree, name, version)
        if pkg is not None:
            return pkg
        if version is not None:
            raise self._gone(tree, name, version)
        if self.offline:
            raise OfflineMiss(f"The cached Debian {tree.suite} package lists have no package {name} and "
                              f"offline mode forbids refreshing them; run once without --offline.",
                              source=f"debian:{suite}/{name}")
        raise SourceError(f"Debian {suite} ({arch}) has no package named {name} in main; check the name "
                          f"and the suite (`apt-cache search` helps).", source=f"debian:{suite}/{name}")

    @staticmethod
    def _tree_arch(pkg: DebianPackage) -> str:
        return "amd64" if pkg.arch == "all" else pkg.arch

    def download(self, pkg: DebianPackage) -> Path:
        """The .deb of ``pkg`` in the content cache, its sha256 verified.

        A cached copy is used without any apt call (also offline).  Otherwise apt
        downloads it into a scratch directory and it is checked against ``pkg.sha256``.
        """
        hit = self.cache.path(pkg.sha256)
        if hit is not None:
            return hit
        if self.offline:
            raise OfflineMiss(f"{pkg} (sha256 {pkg.sha256}) is not in the cache at {self.cache.root} and "
                              f"offline mode forbids downloading it; run once without --offline.",
                              source=pkg.source)
        with self.cache.lock(f"fetch-{pkg.sha256}"):
            hit = self.cache.path(pkg.sha256)
            if hit is not None:
                return hit
            tree = self._tree(pkg.suite, self._tree_arch(pkg))
            self._ensure_lists(tree)
            stanzas = self._show(tree, pkg.name, pkg.version)
            if not stanzas and self._update(tree, min_age=self.MISS_REFRESH_AFTER):
                stanzas = self._show(tree, pkg.name, pkg.version)
            if not stanzas:
                raise self._gone(tree, pkg.name, pkg.version)
            served = {s.get("SHA256", "").lower() for s in stanzas}
            if pkg.sha256 not in served:
                actual = sorted(served)[0]
                raise InputDigestMismatch(
                    f"Debian {pkg.suite} serves {pkg.name} {pkg.version} with sha256 {actual}, but "
                    f"{pkg.sha256} is pinned; the archive changed a published version, so review it and "
                    f"run `blindbox lock --update RECIPE` if you accept it (this changes the measurement).",
                    source=pkg.source, expected=pkg.sha256, actual=actual)
            with self.cache.tempdir("apt-download") as tmp:
                with tree.lock(shared=True):
                    proc = self._apt(tree, ["apt-get", "-q", "download", f"{pkg.name}={pkg.version}"],
                                     cwd=tmp)
                debs = sorted(tmp.glob("*.deb"))
                if proc.returncode != 0 or len(debs) != 1:
                    raise SourceError(f"apt-get download {pkg.name}={pkg.version} from Debian {pkg.suite} "
                                      f"failed ({_last_lines(proc.stderr + proc.stdout)}); check the "
                                      f"network and try again.", source=pkg.source)
                try:
                    path = self.cache.put_file(debs[0], pkg.sha256, move=True)
                except InputDigestMismatch as e:
                    raise InputDigestMismatch(
                        f"The download of {pkg} has sha256 {e.actual}, but {pkg.sha256} is pinned and "
                        f"served in the package index; the transfer or the mirror is corrupt, so try "
                        f"again later or use another mirror.",
                        source=pkg.source, expected=pkg.sha256, actual=e.actual) from None
        self.fetched.append(pkg)
        return path

    def depends(self, pkg: DebianPackage) -> list[str]:
        """Names in the package's Depends field, one per dependency (first alternative).

        Version constraints and architecture qualifiers are dropped:
        ``"linux-image-6.1.0-56-amd64 (= 6.1.192-2)"`` gives ``"linux-image-6.1.0-56-amd64"``.
        Read from the cached .deb's control file when present (works offline), else from
        the package index.
        """
        hit = self.cache.path(pkg.sha256)
        if hit is not None:
            fields = read_deb_control(hit)
        else:
            tree = self._tree(pkg.suite, self._tree_arch(pkg))
            self._ensure_lists(tree)
            stanzas = self._show(tree, pkg.name, pkg.version)
            if not stanzas:
                raise self._gone(tree, pkg.name, pkg.version)
            fields = stanzas[0]
        return _depends_names(fields.get("Depends", ""))

    def unpack(self, pkg: DebianPackage) -> Path:
        """The unpacked data tree of ``pkg`` (cached by the .deb's sha256; read-only)."""
        return self.cache.tree(pkg.sha256, lambda dest: extract_deb(self.download(pkg), dest))

    def member(self, pkg: DebianPackage, path: str) -> Path:
        """One file of the package, e.g. ``"/usr/share/ovmf/OVMF.amdsev.fd"``.

        The returned path lies in the unpacked tree and may be a symlink to another file
        of the same package.
        """
        tree = self.unpack(pkg)
        parts = [p for p in str(path).split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise SourceError(f"{path!r} is not a file path inside a package; give an absolute path such "
                              f"as /usr/share/ovmf/OVMF.amdsev.fd.", source=pkg.source)
        p = tree.joinpath(*parts)
        real = os.path.realpath(p)
        root = os.path.realpath(tree)
        if real.startswith(root + os.sep) and os.path.isfile(real):
            return p
        files = _tree_files(tree)
        want = "/" + "/".join(parts)
        base = parts[-1].lower()
        similar = [f for f in files if f.rsplit("/", 1)[-1].lower() == base]
        similar += [f for f in difflib.get_close_matches(want, files, n=6, cutoff=0.6) if f not in similar]
        hint = (f"similar names in the package: {', '.join(similar[:6])}" if similar
                else f"it has {len(files)} files, none with a similar name")
        what = "is a directory" if os.path.isdir(real) else "has no file"
        raise SourceError(f"{pkg} {what} {want} ({hint}); check the path in the recipe (it is "
                          f"case-sensitive).", source=pkg.source)


def _tree_files(tree: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(tree):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append("/" + os.path.relpath(os.path.join(dirpath, n), tree))
    return sorted(out)


def _depends_names(field: str) -> list[str]:
    names = []
    for group in field.split(","):
        first = group.split("|")[0].strip()
        if not first:
            continue
        name = re.split(r"[\s(\[<]", first, maxsplit=1)[0].split(":")[0]
        if name and name not in names:
            names.append(name)
    return names


def _release_fields(path: Path) -> dict[str, str]:
    """Date and Valid-Until of an (In)Release file."""
    fields: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("MD5Sum:", "SHA256:", "SHA1:")):
                break
            key, sep, value = line.partition(":")
            if sep and key in ("Date", "Valid-Until"):
                fields[key] = value.strip()
    return fields


def _parse_date(text: str) -> _dt.datetime | None:
    try:
        d = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return d if d.tzinfo else d.replace(tzinfo=_dt.timezone.utc)


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " / ".join(lines[-n:]) or "no output"
