"""One extraction rule for every root-filesystem input, and the canonical listing of a tree.

The rule (docs/recipes.md, "Root filesystem inputs"), the same for a Debian package's data
tree, a plain tarball and each layer of an OCI image:

* **Layers in order.**  Tar streams are applied one after the other onto one staging
  directory (:class:`TreeWriter`), as container runtimes do: a later entry replaces an
  earlier one of the same path; a non-directory replaces a directory of a lower layer
  together with everything under it, but never one written by the same layer (that tar is
  malformed and refused).  A single tar (a .deb, a tarball) is one layer onto an empty tree.
* **Whiteouts.**  ``DIR/.wh.NAME`` deletes ``DIR/NAME`` written by lower layers;
  ``DIR/.wh..wh..opq`` deletes everything lower layers put in ``DIR`` (the directory becomes
  opaque).  Neither applies to entries of its own layer; other ``.wh..wh.`` names are
  ignored; whiteout files themselves are never written.
* **Only escapes are refused.**  Absolute member names, names with ``..``, a member under a
  path that is a symlink or a file (the writer never follows a link while writing), a
  relative symlink whose target climbs above the root, a hard link whose target is not a
  regular file already in the tree, and, once all layers are applied, a symlink that leaves
  the root when followed through other symlinks.
* **Absolute symlinks** mean "inside the root".  They stay symlinks; :func:`resolve_inside`
  follows them from the root, never from the host's ``/``.  A root filesystem keeps their
  text as written (it is mounted as ``/``, where the text means the same); a tree that the
  build host reads through ordinary path lookups (a .deb unpacked for the initrd) stores the
  equivalent relative text (``keep_absolute_links=False``) so the host never leaves it.
* **Special files** (character and block devices, FIFOs) are refused: a read-only root
  filesystem has no use for them (the guest's ``/dev`` is a devtmpfs) and an unprivileged
  build could not create them.  Sockets and unknown member types are refused too.
* **Modes.**  Regular files and symlinks keep their permission bits without setuid, setgid
  and sticky (mode & 0o777): nothing in the application's root gains privileges through a
  file mode.  Directories get their bits plus u+rwx (mode & 0o777 | 0o700), so the build can
  replace and remove the tree without privileges; directories no member names (the root,
  implied parents) are 0755, whatever the umask.
* **Dropped:** xattrs, ACLs and other pax records, and the members' owners: the writer never
  calls chown; every entry's owner is 0:0 in the listing and in any image made from the tree.
* **Times.**  Every entry's mtime is ``epoch`` when one is given (a root filesystem passes the
  recipe's ``source_date_epoch``); without one it keeps the member's mtime (as dpkg does).
* **Bounds.**  The number of members and the bytes of regular files unpacked are counted
  across all layers and refused beyond the caller's limits (:mod:`builder.limits`).

:func:`extract_tarball` applies a plain tarball as one layer; :func:`tree_listing` is the
canonical serialisation of a tree, and :func:`tree_digest` its
SHA-256 (how a plain directory or tarball input is pinned); the format is documented on
:func:`tree_listing`.

Part of the builder: it needs only the standard library, the calculator and
:mod:`builder.errors`, :mod:`builder.limits`; it never imports :mod:`builder.sources`,
:mod:`blindbox.cli` or ``click`` (docs/architecture.md).  Nothing here prints or exits.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from pathlib import Path
from typing import Literal

from .errors import SourceError, ToolMissing
from .limits import MAX_ROOTFS_UNPACKED_BYTES, MAX_TAR_HEADER_BYTES, MAX_TREE_ENTRIES

__all__ = ["BoundedTarInfo", "TreeWriter", "extract_tarball", "open_tar_stream", "resolve_inside", "tree_digest",
           "tree_listing", "LISTING_HEADER", "WHITEOUT_PREFIX", "OPAQUE_MARKER"]

_CHUNK = 1 << 20
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: symlinks followed in one lookup before it is taken as a loop (Linux's MAXSYMLINKS)
_MAX_HOPS = 40

#: what tarfile raises for a bad header after the first (it reports it as a ReadError); not in its stubs
_SubsequentHeaderError: type[tarfile.HeaderError] = tarfile.SubsequentHeaderError  # type: ignore[attr-defined]


class BoundedTarInfo(tarfile.TarInfo):
    """TarInfo that refuses, before reading it, an extended header claiming more than
    MAX_TAR_HEADER_BYTES (tarfile reads pax and GNU long-name headers into memory whole)
    and GNU sparse members (whose extension blocks tarfile collects without bound).
    Subclasses name what the archive is in ``NEEDS`` and ``SPARSE``."""

    NEEDS = "any archive needs"
    SPARSE = "which no root filesystem input contains"

    def _proc_member(self, tarfile_):
        if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                         tarfile.GNUTYPE_LONGLINK) and self.size > MAX_TAR_HEADER_BYTES:
            raise _SubsequentHeaderError(
                f"an extended header at offset {self.offset} claims {self.size:,} bytes, more than the "
                f"{MAX_TAR_HEADER_BYTES:,} {self.NEEDS}")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _SubsequentHeaderError(f"a GNU sparse member at offset {self.offset}, {self.SPARSE}")
        return super()._proc_member(tarfile_)  # type: ignore[misc]  # tarfile's hook, not in its stubs


Compression = Literal["", "gz", "xz", "bz2", "zst"]
_TAR_MODES: dict[str, Literal["r|", "r|gz", "r|xz", "r|bz2"]] = {"": "r|", "gz": "r|gz", "xz": "r|xz", "bz2": "r|bz2"}
#: raised while decompressing or parsing tar data (never by the extraction code)
DECOMPRESSION_ERRORS = (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error)


@contextlib.contextmanager
def open_tar_stream(raw: io.RawIOBase, compression: Compression, *, owner: str, member: str, remedy: str,
                    tarinfo: type[BoundedTarInfo] = BoundedTarInfo) -> Iterator[tarfile.TarFile]:
    """A streaming tar reader over ``raw``, decompressed in Python (gz, xz, bz2) or by ``zstd``.

    Errors name ``owner`` and its ``member`` ("<owner>: its <member> is corrupt (...);
    <remedy>.").  Only a zstd stream runs a tool.
    """
    def corrupt(detail: object) -> SourceError:
        return SourceError(f"{owner}: its {member} is corrupt ({detail}); {remedy}.", source=owner)

    if compression != "zst":
        try:
            tf = tarfile.open(fileobj=io.BufferedReader(raw, _CHUNK), mode=_TAR_MODES[compression], tarinfo=tarinfo)
        except AttributeError as e:
            # Python < 3.11.4 (Debian 12 has 3.11.2): a gzip header with an extra field whose
            # data does not inflate makes tarfile's stream fail before it knows its own error type
            raise corrupt("damaged gzip header") from e
        except DECOMPRESSION_ERRORS as e:
            raise corrupt(e) from e
        try:
            with tf:
                yield tf
        except DECOMPRESSION_ERRORS as e:
            raise corrupt(e) from e
        return
    exe = shutil.which("zstd")
    if exe is None:
        raise ToolMissing("zstd", "zstd",
                          f"{owner} has a zstd-compressed {member} and zstd was not found on PATH; "
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
            with tarfile.open(fileobj=proc.stdout, mode="r|", tarinfo=tarinfo) as tf:
                yield tf
            while proc.stdout.read(_CHUNK):  # drain the tar padding
                pass
            ok = True
        except DECOMPRESSION_ERRORS as e:
            raise corrupt(e) from e
    finally:
        if not ok:
            proc.kill()
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        rc = proc.wait()
        feeder.join()
        if ok and rc != 0:
            raise SourceError(f"{owner}: zstd could not decompress {member} ({err or rc}); {remedy}.",
                              source=owner)


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


def _remove(target: Path) -> None:
    """Remove whatever is at ``target`` (a directory with its contents); nothing if absent."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        for dirpath, dirnames, _ in os.walk(target):  # a lower layer may have left u-w directories
            for d in dirnames:
                p = os.path.join(dirpath, d)
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
        shutil.rmtree(target)
    else:
        os.unlink(target)


class TreeWriter:
    """Applies tar streams (layers), in order, onto the directory ``dest`` by the module's rule.

    ``owner`` names the input in messages ("/x/p.deb", "image.tar"), ``unit`` what it is
    ("package", "image").  ``max_members`` and ``max_bytes`` bound all layers together;
    ``limit_why`` completes "more than <limit_why>" in the member-count refusal.  Call
    :meth:`apply` once per layer, then :meth:`finish`.  The caller removes ``dest`` when
    anything raises.
    """

    def __init__(self, dest: Path, *, owner: str, unit: str, keep_absolute_links: bool, epoch: int | None,
                 max_members: int, max_bytes: int, limit_why: str):
        self.dest, self.owner, self.unit = Path(dest), owner, unit
        self.a_unit = ("an " if unit[:1] in "aeiou" else "a ") + unit
        self.keep_absolute_links, self.epoch = keep_absolute_links, epoch
        self.max_members, self.max_bytes, self.limit_why = max_members, max_bytes, limit_why
        self.members = self.unpacked = 0
        self._dirs: dict[tuple[str, ...], tuple[int, int]] = {}
        self._layer: set[tuple[str, ...]] = set()
        self._where = owner

    def _error(self, text: str) -> SourceError:
        return SourceError(f"{self._where}{text}", source=self.owner)

    def _parts(self, name: str, what: str = "member") -> list[str]:
        """The path components of a tar member name, refusing absolute and ``..`` names."""
        if name.startswith("/"):
            raise self._error(f" contains the absolute {what} name {name!r}; refusing to unpack {self.a_unit} "
                              f"that writes outside its tree.")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._error(f" contains the {what} name {name!r} with '..'; refusing to unpack {self.a_unit} "
                              f"that writes outside its tree (path traversal).")
        return parts

    def _parents(self, parts: list[str], name: str) -> Path:
        """Create the parent directories of ``parts`` inside ``dest`` without following symlinks."""
        cur = self.dest
        for i, p in enumerate(parts[:-1]):
            cur = cur / p
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                os.mkdir(cur, 0o755)
                self._layer.add(tuple(parts[:i + 1]))
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise self._error(f": member {name!r} lies under {cur.relative_to(self.dest)}, which is not a "
                                  f"directory (a symlink or file); refusing to write through it.")
        return cur / parts[-1]

    def _clear(self, target: Path, key: tuple[str, ...], name: str) -> None:
        """Make room for a non-directory: replace what a lower layer put there."""
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if key in self._layer:
                raise self._error(f": member {name!r} would replace a directory; refusing to unpack this "
                                  f"{self.unit}.")
            _remove(target)
            self._forget_below(key)
        else:
            os.unlink(target)

    def _forget_below(self, key: tuple[str, ...]) -> None:
        self._dirs = {k: v for k, v in self._dirs.items() if k[:len(key)] != key or k in self._layer}

    def _mtime(self, m: tarfile.TarInfo) -> int:
        return self.epoch if self.epoch is not None else int(m.mtime)

    def _whiteout(self, parts: list[str], name: str) -> None:
        base = parts[-1]
        if not _plain_parents(self.dest, parts):
            cur = self.dest
            for p in parts[:-1]:
                cur = cur / p
                if os.path.lexists(cur) and not stat.S_ISDIR(os.lstat(cur).st_mode):
                    raise self._error(f": whiteout {name!r} lies under {cur.relative_to(self.dest)}, which is "
                                      f"not a directory (a symlink or file); refusing to delete through it.")
            return  # its directory does not exist: nothing to delete
        parent = self.dest.joinpath(*parts[:-1])
        if base == OPAQUE_MARKER:
            for child in sorted(os.listdir(parent)):
                key = tuple(parts[:-1]) + (child,)
                if key not in self._layer:
                    _remove(parent / child)
                    self._forget_below(key)
        elif base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk, ...): no entry of the tree
        else:
            victim = base[len(WHITEOUT_PREFIX):]
            key = tuple(parts[:-1]) + (victim,)
            if victim in ("", ".", "..") or "/" in victim:
                raise self._error(f" contains the whiteout {name!r}, which names no entry; refusing it.")
            if key not in self._layer:
                _remove(parent / victim)
                self._forget_below(key)

    def apply(self, tf: tarfile.TarFile, *, where: str | None = None) -> None:
        """Apply one layer.  ``where`` prefixes messages instead of ``owner`` (e.g. "img: layer 2")."""
        self._where = where or self.owner
        self._layer = set()
        for m in tf:
            self.members += 1
            if self.members > self.max_members:
                raise self._error(f" holds more than {self.max_members:,} files, more than {self.limit_why} "
                                  f"(docs/limits.md); refusing to unpack it.")
            if m.isreg():
                self.unpacked += m.size
                if self.unpacked > self.max_bytes:
                    raise self._error(f": member {m.name!r} ({m.size:,} bytes) takes what the {self.unit} unpacks "
                                      f"beyond {self.max_bytes:,} bytes (docs/limits.md); refusing to unpack it.")
            parts = self._parts(m.name)
            if not parts:  # "./" itself
                if m.isdir():
                    self._dirs[()] = (m.mode & 0o777 | 0o700, self._mtime(m))
                continue
            if m.ischr() or m.isblk() or m.isfifo():
                kind = "FIFO" if m.isfifo() else "device node"
                raise self._error(f" contains the {kind} {m.name!r}; refusing to unpack special files from "
                                  f"{self.a_unit}.")
            if parts[-1].startswith(WHITEOUT_PREFIX):
                self._whiteout(parts, m.name)
                continue
            key = tuple(parts)
            target = self._parents(parts, m.name)
            try:
                self._member(tf, m, parts, key, target)
            except FileExistsError:
                raise self._error(f": member {m.name!r} could not be written; the {self.unit} is "
                                  f"malformed.") from None
            self._layer.add(key)

    def _member(self, tf: tarfile.TarFile, m: tarfile.TarInfo, parts: list[str], key: tuple[str, ...],
                target: Path) -> None:
        mtime = self._mtime(m)
        if m.isdir():
            try:
                if not stat.S_ISDIR(os.lstat(target).st_mode):
                    os.unlink(target)
                    os.mkdir(target, 0o755)
            except FileNotFoundError:
                os.mkdir(target, 0o755)
            self._dirs[key] = (m.mode & 0o777 | 0o700, mtime)
        elif m.isreg():
            self._clear(target, key, m.name)
            data = tf.extractfile(m)
            assert data is not None  # a regular member has data
            with open(target, "xb") as out:
                shutil.copyfileobj(data, out, _CHUNK)
            os.chmod(target, m.mode & 0o777)
            os.utime(target, (mtime, mtime))
        elif m.issym():
            link = self._symlink_text(m.linkname, parts, m.name)
            self._clear(target, key, m.name)
            os.symlink(link, target)
            os.utime(target, (mtime, mtime), follow_symlinks=False)
        elif m.islnk():
            src_parts = self._parts(m.linkname, what="hard link target")
            src = self.dest.joinpath(*src_parts)
            if not src_parts or not _plain_parents(self.dest, src_parts) or \
                    not os.path.lexists(src) or not stat.S_ISREG(os.lstat(src).st_mode):
                raise self._error(f": hard link {m.name!r} points at {m.linkname!r}, which is not a regular "
                                  f"file unpacked before it; refusing it.")
            if tuple(src_parts) == key:
                return  # a link to itself: the file is already there
            self._clear(target, key, m.name)
            os.link(src, target)
        else:
            raise self._error(f" contains {m.name!r} of an unsupported type ({m.type!r}); refusing to "
                              f"unpack it.")

    def _symlink_text(self, linkname: str, parts: list[str], name: str) -> str:
        """The symlink text to write; targets that climb above the tree root are refused."""
        if not linkname:
            raise self._error(f": symlink {name!r} has an empty target; refusing it.")
        base = parts[:-1]
        absolute = linkname.startswith("/")
        resolved: list[str] = [] if absolute else list(base)
        for p in linkname.split("/"):
            if p in ("", "."):
                continue
            if p == "..":
                if not resolved:
                    raise self._error(f": symlink {name!r} -> {linkname!r} points outside the {self.unit} tree; "
                                      f"refusing it.")
                resolved.pop()
            else:
                resolved.append(p)
        if not absolute or self.keep_absolute_links:
            return linkname
        return "/".join([".."] * len(base) + resolved) or "."

    def finish(self) -> None:
        """Set directory modes and times, then check that no symlink leaves the root when followed."""
        self._where = self.owner
        for dirpath, _, _ in os.walk(self.dest):  # directories no member names: the root, implied parents
            rel = os.path.relpath(dirpath, self.dest)
            if (tuple(rel.split(os.sep)) if rel != "." else ()) not in self._dirs:
                os.chmod(dirpath, 0o755)  # whatever the umask
        for key in sorted(self._dirs, key=len, reverse=True):
            d = self.dest.joinpath(*key)
            # a later layer may have replaced it, or a parent, with a symlink: never follow one
            if _plain_parents(self.dest, [*key, ""]):
                mode, mtime = self._dirs[key]
                os.chmod(d, mode)
                os.utime(d, (mtime, mtime))
        if self.epoch is not None:  # directories no member named (the root, implied parents) too
            for dirpath, _, _ in os.walk(self.dest):
                os.utime(dirpath, (self.epoch, self.epoch))
        for dirpath, dirnames, filenames in os.walk(self.dest):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                if os.path.islink(p) and resolve_inside(self.dest, os.path.relpath(p, self.dest)) is None:
                    raise self._error(f": symlink /{os.path.relpath(p, self.dest)} resolves outside the "
                                      f"{self.unit} tree (through other symlinks); refusing the {self.unit}.")


def resolve_inside(root: os.PathLike | str, path: str) -> Path | None:
    """Where ``path`` (relative to ``root``, or absolute meaning "inside it") leads, following
    its symlinks as the guest would with ``root`` as ``/``: absolute link targets restart at
    ``root``.  None if it climbs above ``root``; a missing component ends the lookup (the rest
    is taken as written); a loop stops after 40 links where it is."""
    root = Path(root)
    todo = [p for p in path.split("/")][::-1]
    resolved: list[str] = []
    hops, missing = 0, False
    while todo:
        p = todo.pop()
        if p in ("", "."):
            continue
        if p == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        cand = resolved + [p]
        if missing:
            resolved = cand
            continue
        try:
            st = os.lstat(root.joinpath(*cand))
        except (FileNotFoundError, NotADirectoryError):
            missing, resolved = True, cand
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved = cand
            continue
        hops += 1
        if hops > _MAX_HOPS:
            return root.joinpath(*cand)
        target = os.readlink(root.joinpath(*cand))
        if target.startswith("/"):
            resolved = []
        todo.extend(target.split("/")[::-1])
    return root.joinpath(*resolved)


#: leading bytes of each compression a tarball may use
_MAGIC: tuple[tuple[bytes, Compression], ...] = (
    (b"\x1f\x8b", "gz"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bz2"), (b"\x28\xb5\x2f\xfd", "zst"))


class _File(io.RawIOBase):
    def __init__(self, f):
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._f.readinto(b)


def extract_tarball(tarball: os.PathLike | str, dest: os.PathLike | str, *, epoch: int,
                    max_members: int = MAX_TREE_ENTRIES, max_bytes: int = MAX_ROOTFS_UNPACKED_BYTES) -> None:
    """Unpack a plain tarball (none, gz, xz, bz2 or zst, told by its first bytes) into ``dest``,
    which must not exist, as one layer by the module's rule: absolute symlinks kept, every
    mtime ``epoch``.  On any error ``dest`` is removed."""
    tarball, dest = Path(tarball), Path(dest)
    if not tarball.is_file():
        raise SourceError(f"{tarball} does not exist or is not a file; check the path.", source=str(tarball))
    if os.path.lexists(dest):
        raise SourceError(f"Cannot unpack {tarball} into {dest}: it exists; pass a new directory.",
                          source=str(tarball))
    dest.mkdir(parents=True)
    try:
        with open(tarball, "rb") as f:
            head = f.read(8)
            f.seek(0)
            compression: Compression = next((c for magic, c in _MAGIC if head.startswith(magic)), "")
            writer = TreeWriter(dest, owner=str(tarball), unit="tarball", keep_absolute_links=True, epoch=epoch,
                                max_members=max_members, max_bytes=max_bytes,
                                limit_why="any root filesystem this tool builds")
            with open_tar_stream(_File(f), compression, owner=str(tarball), member="tar stream",
                                 remedy="give an uncompressed, gzip, xz, bzip2 or zstd tar archive") as tf:
                writer.apply(tf)
        writer.finish()
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


# -- canonical listing ------------------------------------------------------------------------

LISTING_HEADER = b"blindbox-tree 1\n"


def _quote(raw: bytes) -> bytes:
    """Bytes outside ``!``..``~`` and ``%`` itself as ``%XX`` (upper-case hex)."""
    return b"".join(bytes([c]) if 0x21 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c for c in raw)


def tree_listing(root: os.PathLike | str, *, max_entries: int | None = None) -> bytes:
    """The canonical serialisation of the tree at ``root`` (how a tree input is pinned).

    The line ``blindbox-tree 1``, then one line per entry (the root itself included, as
    ``/``), sorted by the bytes of the path, each ending in ``\\n``, with five fields
    separated by one space::

        <path> <type> <mode> <size> <data>

    * ``path``: ``/`` then the path relative to the root, components joined by ``/``;
    * ``type``: ``d`` directory, ``f`` regular file, ``l`` symlink;
    * ``mode``: the permission bits as four octal digits (``0755``);
    * ``size``: decimal bytes of a file's content or of a link's target text, ``0`` for a
      directory;
    * ``data``: the lower-case hex SHA-256 of a file's content, a link's target text as
      written, ``-`` for a directory.

    ``path`` and a link's target are bytes as on disk with every byte outside ``!``..``~``,
    and ``%`` itself, written as ``%`` and two upper-case hex digits, so a line never holds a
    space or a newline of its own.  Owner (always 0:0), mtime (always the build's epoch),
    xattrs and hard-link structure are not part of the listing: two trees with the same
    listing make the same image.  Anything else (a device, FIFO or socket) is refused.
    """
    root = Path(root)
    limit = MAX_TREE_ENTRIES if max_entries is None else max_entries
    entries: list[tuple[bytes, os.stat_result]] = []
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = os.path.join(os.fsencode(root), rel) if rel else os.fsencode(root)
        st = os.lstat(full)
        entries.append((b"/" + rel, st))
        if len(entries) > limit:
            raise SourceError(f"{root} holds more than {limit:,} entries (docs/limits.md); a root filesystem "
                              f"this large is refused.", source=str(root))
        if stat.S_ISDIR(st.st_mode):
            stack.extend(rel + b"/" + n if rel else n for n in os.listdir(full))
    out = [LISTING_HEADER]
    for path, st in sorted(entries, key=lambda e: e[0]):
        full = os.fsencode(root) + (path if path != b"/" else b"")
        mode = b"%04o" % (st.st_mode & 0o7777)
        if stat.S_ISDIR(st.st_mode):
            fields = [b"d", mode, b"0", b"-"]
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(full)
            fields = [b"l", mode, b"%d" % len(target), _quote(target)]
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            size = 0
            with open(full, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
            fields = [b"f", mode, b"%d" % size, h.hexdigest().encode()]
        else:
            raise SourceError(f"{root}: {os.fsdecode(path)} is not a directory, regular file or symlink (a "
                              f"device, FIFO or socket); remove it from the tree.", source=str(root))
        out.append(b" ".join([_quote(path)] + fields) + b"\n")
    return b"".join(out)


def tree_digest(root: os.PathLike | str) -> str:
    """The lower-case hex SHA-256 of :func:`tree_listing` of ``root``."""
    return hashlib.sha256(tree_listing(root)).hexdigest()
