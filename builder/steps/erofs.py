"""Deterministic, uncompressed EROFS images written by the project itself.

The application root filesystem becomes a read-only image that dm-verity protects.  The
image is written here, in Python, so its bytes depend only on the tree and the
parameters given, never on the version of a host tool such as ``mkfs.erofs``.

Why EROFS: Debian's 6.1 (bookworm) and 6.12 (trixie) kernels build it (``CONFIG_EROFS_FS=m``),
it is read-only by design (nothing on the device is ever rewritten, which suits a
verity-protected disk), and its uncompressed layout is small enough to write exactly: a
superblock, fixed-size inodes addressed by their offset, contiguous data blocks and
sorted directory blocks.  (squashfs is always compressed and its tables are more
intricate; ext4 has allocation groups, bitmaps and a journal that a read-only image does
not need.)  docs/decisions.md records the choice.

Format facts come from the Linux kernel's on-disk header ``fs/erofs/erofs_fs.h``, its
EROFS documentation, and erofs-utils' behaviour (``mkfs.erofs``, ``fsck.erofs``):

* 4096-byte blocks (``blkszbits = 12``); the 128-byte superblock sits at byte 1024, its
  magic is ``0xE0F5E1E2``; the image is a whole number of blocks (``blocks``);
* an inode's *nid* is its byte offset from the metadata start (``meta_blkaddr``, here 0)
  divided by 32; inodes are 32-byte aligned and follow the superblock, so the root
  directory, written first, has nid 36 like erofs-utils' images; ``root_nid`` is 16 bits;
* compact inodes (32 bytes) carry a 32-bit size, 16-bit uid, gid and link count and take
  their mtime from the superblock's ``build_time``; extended inodes (64 bytes) carry
  64-bit size, 32-bit ids and link count and their own mtime.  Each inode here is compact
  unless a value does not fit; an inode never straddles a block boundary;
* every inode here is ``FLAT_PLAIN``: its data (file bytes, directory blocks, symlink
  target) fills ``ceil(size / 4096)`` contiguous blocks starting at ``raw_blkaddr``, the
  last one zero-padded; tail packing (``FLAT_INLINE``) is not used, so a small file costs
  a whole block; an empty file has no block and ``raw_blkaddr`` 0;
* a directory's data is a sequence of blocks, each an array of 12-byte dirents (nid,
  name offset, file type) followed by the names, not NUL-terminated; the first dirent's
  name offset divided by 12 is the number of dirents in the block; a name ends where the
  next one starts, and the block's last name at the end of the block or of the directory
  (its ``i_size`` counts the bytes used in its last block, not the padding).  All names,
  ``.`` and ``..`` included, are sorted bytewise across the whole directory (the kernel
  binary-searches blocks, then dirents); a dirent never crosses a block boundary;
* hard links are several dirents with the same nid, and the inode's link count counts
  them; a directory's link count is 2 plus its subdirectories.

Determinism: entries are sorted by path, inodes are laid out depth-first in that order and
their data in the same order, every mtime is the caller's ``epoch``, the UUID and volume
name are the caller's (derived from the recipe, never random), inode numbers count up
from 1, and every unused byte is zero.  The superblock checksum (an optional feature) is
not written: dm-verity already covers every byte.  No extended attributes are written.

Input is a list of :class:`Entry` or a staging directory (:func:`entries_from_directory`),
which must hold only directories, regular files and symlinks: device nodes, FIFOs and
sockets are refused (the rootfs extraction rule drops them before this step).  Output is
written atomically.  Bounds: :data:`builder.limits.MAX_EROFS_INODES` and
:data:`builder.limits.MAX_EROFS_IMAGE_BYTES`.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
It uses only the standard library besides :mod:`measure.layout`.
"""

from __future__ import annotations

import enum
import os
import stat
import tempfile
import uuid as uuid_mod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from blindbox.files import OutputError
from builder.errors import BuildError
from builder.limits import MAX_EROFS_IMAGE_BYTES, MAX_EROFS_INODES
from measure import layout
from measure.record import record

BLOCK_SIZE = 4096
BLOCK_BITS = 12
SUPER_OFFSET = 1024
MAGIC = 0xE0F5E1E2
NID_SIZE = 32
#: Longest name of a directory entry (EROFS_NAME_LEN).
NAME_MAX = 255
#: Longest symlink target (PATH_MAX without its NUL).
SYMLINK_MAX = 4095
#: Longest volume name: the superblock's field.
VOLUME_NAME_MAX = 16

FLAT_PLAIN = 0
LAYOUT_COMPACT = 0
LAYOUT_EXTENDED = 1

_CHUNK = 1 << 20


class ErofsError(BuildError):
    """A tree cannot be written as an EROFS image (bad entry, unsupported file, limit)."""

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        self.path = path


class Kind(enum.Enum):
    DIR = stat.S_IFDIR
    FILE = stat.S_IFREG
    SYMLINK = stat.S_IFLNK
    #: another name for the non-directory entry at ``Entry.link``
    HARDLINK = 0


#: EROFS_FT_* (the generic FT_* values) of the kinds written.
_FILE_TYPE = {Kind.FILE: 1, Kind.DIR: 2, Kind.SYMLINK: 7}


@layout.struct(size=128, spec="Linux fs/erofs/erofs_fs.h, struct erofs_super_block")
@record
class SuperBlock(layout.Struct):
    magic: int = layout.u32(0x00, default=MAGIC)
    checksum: int = layout.u32(0x04)
    feature_compat: int = layout.u32(0x08)
    blkszbits: int = layout.u8(0x0C, default=BLOCK_BITS)
    sb_extslots: int = layout.u8(0x0D)
    root_nid: int = layout.u16(0x0E)
    inos: int = layout.u64(0x10)
    build_time: int = layout.u64(0x18)
    build_time_nsec: int = layout.u32(0x20)
    blocks: int = layout.u32(0x24)
    meta_blkaddr: int = layout.u32(0x28)
    xattr_blkaddr: int = layout.u32(0x2C)
    uuid: bytes = layout.raw(0x30, 16)
    volume_name: bytes = layout.raw(0x40, 16)
    feature_incompat: int = layout.u32(0x50)
    available_compr_algs: int = layout.u16(0x54)
    extra_devices: int = layout.u16(0x56)
    devt_slotoff: int = layout.u16(0x58)
    # 0x5A..0x80: dirblkbits, xattr prefixes, packed_nid and reserved bytes, all zero here


@layout.struct(size=32, spec="Linux fs/erofs/erofs_fs.h, struct erofs_inode_compact")
@record
class CompactInode(layout.Struct):
    i_format: int = layout.u16(0x00)
    i_xattr_icount: int = layout.u16(0x02)
    i_mode: int = layout.u16(0x04)
    i_nlink: int = layout.u16(0x06)
    i_size: int = layout.u32(0x08)
    # 0x0C: i_reserved
    raw_blkaddr: int = layout.u32(0x10)
    i_ino: int = layout.u32(0x14)
    i_uid: int = layout.u16(0x18)
    i_gid: int = layout.u16(0x1A)
    # 0x1C: i_reserved2


@layout.struct(size=64, spec="Linux fs/erofs/erofs_fs.h, struct erofs_inode_extended")
@record
class ExtendedInode(layout.Struct):
    i_format: int = layout.u16(0x00, default=LAYOUT_EXTENDED)
    i_xattr_icount: int = layout.u16(0x02)
    i_mode: int = layout.u16(0x04)
    # 0x06: i_reserved
    i_size: int = layout.u64(0x08)
    raw_blkaddr: int = layout.u32(0x10)
    i_ino: int = layout.u32(0x14)
    i_uid: int = layout.u32(0x18)
    i_gid: int = layout.u32(0x1C)
    i_mtime: int = layout.u64(0x20)
    i_mtime_nsec: int = layout.u32(0x28)
    i_nlink: int = layout.u32(0x2C)
    # 0x30..0x40: i_reserved2


@layout.struct(size=12, spec="Linux fs/erofs/erofs_fs.h, struct erofs_dirent")
@record
class Dirent(layout.Struct):
    nid: int = layout.u64(0x00)
    nameoff: int = layout.u16(0x08)
    file_type: int = layout.u8(0x0A)
    # 0x0B: reserved


@dataclass(frozen=True)
class ErofsParams:
    """What the caller decides about an image: its time, UUID and volume name."""

    #: Every inode's mtime, in seconds since 1970 (the build's SOURCE_DATE_EPOCH).
    epoch: int
    uuid: uuid_mod.UUID
    volume_name: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.epoch, int) or not 0 <= self.epoch < 1 << 64:
            raise ErofsError(f"the EROFS build time {self.epoch!r} is not a nonnegative 64-bit number "
                             f"of seconds; give the build's SOURCE_DATE_EPOCH.")
        if not isinstance(self.uuid, uuid_mod.UUID):
            raise ErofsError(f"the EROFS volume UUID {self.uuid!r} is not a uuid.UUID; derive one from the recipe.")
        if (not isinstance(self.volume_name, bytes) or len(self.volume_name) > VOLUME_NAME_MAX
                or b"\0" in self.volume_name):
            raise ErofsError(f"the EROFS volume name {self.volume_name!r} is not at most {VOLUME_NAME_MAX} bytes "
                             f"without NUL; give a shorter name.")


@dataclass(frozen=True)
class Entry:
    """One file of the image.

    ``path`` is relative and ``/``-separated, without ``.`` or ``..`` components; ``"."``
    is the root directory (optional: the root defaults to ``0755``, owned by 0:0).  A
    missing parent directory is added as ``0755``, owned by 0:0.  A regular file's bytes
    are ``data``, or are read from ``source`` when that is given (``size`` bytes, checked
    when read); a symlink's target is ``data``; a hard link names in ``link`` the path of
    the regular file or symlink it is another name of.
    """

    path: str
    kind: Kind
    mode: int = 0o644  # permission bits, setuid, setgid and sticky included (0..0o7777)
    uid: int = 0
    gid: int = 0
    data: bytes = b""
    source: Path | None = None
    size: int = 0  # with ``source`` only
    link: str = ""  # with Kind.HARDLINK only


@dataclass(frozen=True)
class ErofsImage:
    """What :func:`write_image` wrote."""

    path: Path
    #: The image size in 4096-byte blocks (the dm-verity data block count).
    blocks: int
    #: Inodes in the image (hard links count once).
    inodes: int

    @property
    def size(self) -> int:
        return self.blocks * BLOCK_SIZE


@dataclass
class _Node:
    path: str
    name: bytes
    kind: Kind
    mode: int
    uid: int
    gid: int
    data: bytes = b""
    source: Path | None = None
    size: int = 0
    children: dict[bytes, _Node | _Link] = field(default_factory=dict)
    parent: _Node | None = None
    nlink: int = 1
    explicit: bool = True
    nid: int = 0
    ino: int = 0
    blkaddr: int = 0
    extended: bool = False
    dirblocks: list[list[tuple[bytes, _Node]]] = field(default_factory=list)


@dataclass
class _Link:
    path: str
    target: str


def _components(path: str) -> list[bytes]:
    if path == ".":
        return []
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ErofsError(f"the image entry path {path!r} is not a relative path without empty, '.' or '..' "
                         f"components; normalize it.", path=path)
    out = [os.fsencode(p) for p in parts]
    for p in out:
        if len(p) > NAME_MAX or b"\0" in p:
            raise ErofsError(f"the image entry {path!r} has a name of {len(p)} bytes or with a NUL byte; EROFS "
                             f"names are 1 to {NAME_MAX} bytes without NUL.", path=path)
    return out


def _check_entry(e: Entry) -> None:
    if not isinstance(e.kind, Kind):
        raise ErofsError(f"the image entry {e.path!r} has kind {e.kind!r}; use erofs.Kind.", path=e.path)
    if e.kind is not Kind.HARDLINK and not 0 <= e.mode <= 0o7777:
        raise ErofsError(f"the image entry {e.path!r} has mode {e.mode:#o}; give permission bits "
                         f"0..0o7777 only (the file type comes from its kind).", path=e.path)
    if not (0 <= e.uid < 1 << 32 and 0 <= e.gid < 1 << 32):
        raise ErofsError(f"the image entry {e.path!r} has uid {e.uid} or gid {e.gid} outside 0..2**32-1; "
                         f"map it to a valid id.", path=e.path)
    if e.kind is Kind.SYMLINK and not 1 <= len(e.data) <= SYMLINK_MAX:
        raise ErofsError(f"the symlink {e.path!r} has a target of {len(e.data)} bytes; a target is 1 to "
                         f"{SYMLINK_MAX} bytes.", path=e.path)
    if e.kind is Kind.DIR and (e.data or e.source is not None):
        raise ErofsError(f"the directory {e.path!r} was given content; a directory has none.", path=e.path)
    if e.kind is Kind.FILE and e.source is not None and (e.data or e.size < 0):
        raise ErofsError(f"the file {e.path!r} has both a source and data, or a negative size; give one.",
                         path=e.path)
    if e.kind is Kind.HARDLINK and not e.link:
        raise ErofsError(f"the hard link {e.path!r} names no target; set link to the path it is another "
                         f"name of.", path=e.path)


def _build_tree(entries: Iterable[Entry]) -> _Node:
    root = _Node(path=".", name=b"", kind=Kind.DIR, mode=0o755, uid=0, gid=0)
    root.parent = root
    seen: set[str] = set()
    count = 1
    for e in entries:
        _check_entry(e)
        parts = _components(e.path)
        if e.path in seen:
            raise ErofsError(f"the image entry {e.path!r} is given twice; keep one.", path=e.path)
        seen.add(e.path)
        if not parts:
            if e.kind is not Kind.DIR:
                raise ErofsError("the image root '.' must be a directory.", path=e.path)
            root.mode, root.uid, root.gid = e.mode, e.uid, e.gid
            continue
        parent = root
        for i, name in enumerate(parts[:-1]):
            child = parent.children.get(name)
            if child is None:
                count += 1
                prefix = "/".join(os.fsdecode(p) for p in parts[:i + 1])
                child = _Node(path=prefix, name=name, kind=Kind.DIR, mode=0o755, uid=0, gid=0, parent=parent,
                              explicit=False)
                parent.children[name] = child
            if not isinstance(child, _Node) or child.kind is not Kind.DIR:
                raise ErofsError(f"the image entry {e.path!r} lies under {child.path!r}, which is not a "
                                 f"directory.", path=e.path)
            parent = child
        name = parts[-1]
        existing = parent.children.get(name)
        if e.kind is Kind.HARDLINK:
            node: _Node | _Link = _Link(path=e.path, target=e.link)
        else:
            node = _Node(path=e.path, name=name, kind=e.kind, mode=e.mode, uid=e.uid, gid=e.gid,
                         data=e.data, source=e.source, size=e.size if e.source is not None else len(e.data),
                         parent=parent)
        if existing is not None:
            # A parent added implicitly earlier takes the attributes of its own entry.
            if not (isinstance(existing, _Node) and not existing.explicit and e.kind is Kind.DIR):
                raise ErofsError(f"the image entry {e.path!r} conflicts with another entry of the same "
                                 f"path; keep one.", path=e.path)
            existing.mode, existing.uid, existing.gid = e.mode, e.uid, e.gid
            existing.explicit = True
            continue
        count += 1
        if count > MAX_EROFS_INODES:
            raise ErofsError(f"the image tree has more than {MAX_EROFS_INODES} entries (at {e.path!r}), the "
                             f"limit for one image (builder/limits.py); make the tree smaller.", path=e.path)
        parent.children[name] = node
    return root


def _walk(root: _Node) -> list[_Node]:
    """The tree's inodes, depth-first with names sorted bytewise; hard links resolved."""
    order: list[_Node] = []
    stack: list[_Node] = [root]
    while stack:
        node = stack.pop()
        order.append(node)
        subdirs = [c for _, c in sorted(node.children.items(), reverse=True)
                   if isinstance(c, _Node) and c.kind is Kind.DIR]
        stack.extend(subdirs)
        for _, child in sorted(node.children.items()):
            if isinstance(child, _Node) and child.kind is not Kind.DIR:
                order.append(child)
    by_path = {n.path: n for n in order if n.kind is not Kind.DIR}
    for node in order:
        if node.kind is not Kind.DIR:
            continue
        for name, child in node.children.items():
            if isinstance(child, _Link):
                target = by_path.get(child.target)
                if target is None:
                    raise ErofsError(f"the hard link {child.path!r} names {child.target!r}, which is not a "
                                     f"regular file or symlink of the image; link to one.", path=child.path)
                node.children[name] = target
                target.nlink += 1
    return order


def _dir_blocks(node: _Node) -> list[list[tuple[bytes, _Node]]]:
    assert node.parent is not None
    items: list[tuple[bytes, _Node]] = [(b".", node), (b"..", node.parent)]
    items += [(name, child) for name, child in node.children.items() if isinstance(child, _Node)]
    items.sort(key=lambda item: item[0])
    blocks: list[list[tuple[bytes, _Node]]] = [[]]
    used = 0
    for name, child in items:
        need = Dirent.SIZE + len(name)
        if used + need > BLOCK_SIZE:
            blocks.append([])
            used = 0
        blocks[-1].append((name, child))
        used += need
    return blocks


def _dir_size(blocks: list[list[tuple[bytes, _Node]]]) -> int:
    last = sum(Dirent.SIZE + len(name) for name, _ in blocks[-1])
    return (len(blocks) - 1) * BLOCK_SIZE + last


def _layout(order: list[_Node], params: ErofsParams) -> int:
    """Give every inode its size, nid and data blocks; return the image's block count."""
    offset = SUPER_OFFSET + SuperBlock.SIZE
    for ino, node in enumerate(order, start=1):
        if node.kind is Kind.DIR:
            node.dirblocks = _dir_blocks(node)
            node.size = _dir_size(node.dirblocks)
            node.nlink = 2 + sum(1 for c in node.children.values() if isinstance(c, _Node) and c.kind is Kind.DIR)
        node.ino = ino
        node.extended = (node.size >= 1 << 32 or node.uid >= 1 << 16 or node.gid >= 1 << 16
                         or node.nlink >= 1 << 16)
        isize = ExtendedInode.SIZE if node.extended else CompactInode.SIZE
        offset = -(-offset // NID_SIZE) * NID_SIZE
        if offset % BLOCK_SIZE + isize > BLOCK_SIZE:
            offset = -(-offset // BLOCK_SIZE) * BLOCK_SIZE
        node.nid = offset // NID_SIZE
        offset += isize
    block = -(-offset // BLOCK_SIZE)
    for node in order:
        nblocks = -(-node.size // BLOCK_SIZE)
        node.blkaddr = block if nblocks else 0
        block += nblocks
        if block * BLOCK_SIZE > MAX_EROFS_IMAGE_BYTES:
            raise ErofsError(f"the image would exceed {MAX_EROFS_IMAGE_BYTES} bytes (at {node.path!r}), the limit "
                             f"for one image (builder/limits.py); make the tree smaller.", path=node.path)
    if order[0].nid >= 1 << 16:
        raise AssertionError("the root inode must come first")
    return block


def _inode_bytes(node: _Node, params: ErofsParams) -> bytes:
    mode = node.kind.value | node.mode
    if node.extended:
        return ExtendedInode(i_format=LAYOUT_EXTENDED | FLAT_PLAIN << 1, i_mode=mode, i_size=node.size,
                             raw_blkaddr=node.blkaddr, i_ino=node.ino, i_uid=node.uid, i_gid=node.gid,
                             i_mtime=params.epoch, i_nlink=node.nlink).to_bytes()
    return CompactInode(i_format=LAYOUT_COMPACT | FLAT_PLAIN << 1, i_mode=mode, i_nlink=node.nlink,
                        i_size=node.size, raw_blkaddr=node.blkaddr, i_ino=node.ino, i_uid=node.uid,
                        i_gid=node.gid).to_bytes()


def _dir_data(node: _Node) -> bytes:
    out = bytearray()
    for i, block in enumerate(node.dirblocks):
        if i:
            out += bytes(-len(out) % BLOCK_SIZE)
        nameoff = Dirent.SIZE * len(block)
        for name, child in block:
            out += Dirent(nid=child.nid, nameoff=nameoff, file_type=_FILE_TYPE[child.kind]).to_bytes()
            nameoff += len(name)
        for name, _ in block:
            out += name
    return bytes(out)


def _copy_source(node: _Node, out: BinaryIO) -> None:
    assert node.source is not None
    remaining = node.size
    try:
        with open(node.source, "rb") as f:
            while remaining:
                chunk = f.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                out.write(chunk)
                remaining -= len(chunk)
            extra = f.read(1)
    except OSError as e:
        raise ErofsError(f"cannot read {str(node.source)!r} for the image entry {node.path!r}: "
                         f"{e.strerror or e}; check the staging tree.", path=node.path) from None
    if remaining or extra:
        raise ErofsError(f"the file {str(node.source)!r} changed size while the image was written (expected "
                         f"{node.size} bytes); do not modify the staging tree during the build.", path=node.path)


def _write(order: list[_Node], blocks: int, params: ErofsParams, out: BinaryIO) -> None:
    sb = SuperBlock(root_nid=order[0].nid, inos=len(order), build_time=params.epoch, blocks=blocks,
                    uuid=params.uuid.bytes, volume_name=params.volume_name.ljust(VOLUME_NAME_MAX, b"\0"))
    meta = bytearray(SUPER_OFFSET)
    meta += sb.to_bytes()
    for node in order:
        start = node.nid * NID_SIZE
        meta += bytes(start - len(meta))
        meta += _inode_bytes(node, params)
    meta += bytes(-len(meta) % BLOCK_SIZE)
    out.write(meta)
    position = len(meta)
    for node in order:
        if not node.size:
            continue
        assert position == node.blkaddr * BLOCK_SIZE
        if node.kind is Kind.DIR:
            out.write(_dir_data(node))
        elif node.source is not None:
            _copy_source(node, out)
        else:
            out.write(node.data)
        pad = -node.size % BLOCK_SIZE
        out.write(bytes(pad))
        position += node.size + pad
    assert position == blocks * BLOCK_SIZE


def write_image(entries: Iterable[Entry], out: str | os.PathLike[str], params: ErofsParams) -> ErofsImage:
    """Write the EROFS image of ``entries`` to ``out`` atomically; returns its size in blocks."""
    root = _build_tree(entries)
    order = _walk(root)
    blocks = _layout(order, params)
    path = Path(out)
    if path.is_dir():
        raise OutputError(f"cannot write the EROFS image {str(path)!r}: it is a directory; choose a file path.",
                          path=str(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write the EROFS image {str(path)!r}: {e.strerror or e}; check the path and "
                          f"permissions.", path=str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            _write(order, blocks, params, f)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise OutputError(f"cannot write the EROFS image {str(path)!r}: {e.strerror or e}; check the path "
                              f"and free space.", path=str(path)) from None
        raise
    return ErofsImage(path=path, blocks=blocks, inodes=len(order))


def entries_from_directory(root: str | os.PathLike[str]) -> list[Entry]:
    """The entries of a staging directory, walked in sorted order, with modes and ownership.

    Regular files are read when the image is written (streamed, not held in memory); a
    file with several names in the tree becomes one file and hard links to it (the first
    name in sorted walk order is the file).  Device nodes, FIFOs and sockets are refused.
    """
    top = Path(root)
    try:
        st = os.lstat(top)
    except OSError as e:
        raise ErofsError(f"cannot read the staging directory {str(top)!r}: {e.strerror or e}; check the path.",
                         path=str(top)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ErofsError(f"the staging path {str(top)!r} is not a directory; give the directory to put in "
                         f"the image.", path=str(top))
    entries = [Entry(".", Kind.DIR, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)]
    firsts: dict[tuple[int, int], str] = {}
    stack: list[tuple[Path, str]] = [(top, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as it:
                names = sorted((d.name for d in it), key=os.fsencode)
        except OSError as e:
            raise ErofsError(f"cannot list {str(directory)!r} in the staging tree: {e.strerror or e}; check "
                             f"its permissions.", path=str(directory)) from None
        subdirs: list[tuple[Path, str]] = []
        for name in names:
            full = directory / name
            rel = f"{prefix}{name}"
            try:
                st = os.lstat(full)
            except OSError as e:
                raise ErofsError(f"cannot read {str(full)!r} in the staging tree: {e.strerror or e}.",
                                 path=str(full)) from None
            mode, perm = st.st_mode, stat.S_IMODE(st.st_mode)
            if len(entries) >= MAX_EROFS_INODES:
                raise ErofsError(f"the staging tree {str(top)!r} has more than {MAX_EROFS_INODES} entries, the "
                                 f"limit for one image (builder/limits.py); make the tree smaller.",
                                 path=str(full))
            if stat.S_ISDIR(mode):
                entries.append(Entry(rel, Kind.DIR, perm, st.st_uid, st.st_gid))
                subdirs.append((full, rel + "/"))
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                what = ("a device node" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
                        "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
                        "a special file")
                raise ErofsError(f"{str(full)!r} in the staging tree is {what}; the image holds only "
                                 f"directories, regular files and symlinks, so remove it.", path=str(full))
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in firsts:
                entries.append(Entry(rel, Kind.HARDLINK, link=firsts[key]))
                continue
            if st.st_nlink > 1:
                firsts[key] = rel
            if stat.S_ISLNK(mode):
                target = os.fsencode(os.readlink(full))
                entries.append(Entry(rel, Kind.SYMLINK, 0o777, st.st_uid, st.st_gid, data=target))
            else:
                entries.append(Entry(rel, Kind.FILE, perm, st.st_uid, st.st_gid, source=full, size=st.st_size))
        stack.extend(reversed(subdirs))
    return entries


def write_image_from_directory(staging: str | os.PathLike[str], out: str | os.PathLike[str],
                               params: ErofsParams) -> ErofsImage:
    """Write the EROFS image of a staging directory (see :func:`entries_from_directory`)."""
    top, target = Path(staging).resolve(), Path(out).resolve()
    if target == top or top in target.parents:
        raise OutputError(f"the EROFS image {str(out)!r} lies inside the staging tree {str(staging)!r} it is made "
                          f"from; write it elsewhere.", path=str(out))
    return write_image(entries_from_directory(staging), out, params)


__all__ = ["BLOCK_SIZE", "Dirent", "CompactInode", "Entry", "ErofsError", "ErofsImage", "ErofsParams",
           "ExtendedInode", "Kind", "SuperBlock", "entries_from_directory", "write_image",
           "write_image_from_directory"]
