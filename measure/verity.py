"""dm-verity, hash format 1, in pure Python: hash tree, superblock, root hash and table.

Facts from the Linux kernel's dm-verity documentation and cryptsetup's veritysetup(8); the
project's own notes are in docs/verity.md:

* every block (data or hash) is hashed as ``H(salt || block)`` (format 1; format 0, the
  Chrome OS variant, appends the salt instead and is not supported here);
* a hash block holds ``2**floor(log2(hash_block_size / digest_size))`` digests, each padded
  with zeros to the next power of two, and the rest of the block is zero;
* level 0 hashes the data blocks, level ``i + 1`` the blocks of level ``i``, until a level
  fits in one block; the root hash is the hash of that block (or, when there is only one
  data block, of the data block itself and the tree is empty);
* on the hash device the highest level comes first and level 0 last, starting at the hash
  start block; with a superblock, the 512-byte superblock sits at the hash offset and the
  tree starts at the next hash block boundary after it;
* block sizes are powers of two from 512 bytes to 512 KiB (veritysetup's rule); the kernel
  only activates block sizes up to the page size (4096 on x86-64), so :meth:`VerityTree.table`
  refuses larger ones; the salt is at most 256 bytes.

Files are streamed: one level at a time, with a bounded buffer, never the whole image.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid as uuid_mod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import layout
from .record import record
from .errors import InputError, LayoutError

#: Digest sizes of the algorithms supported (names as the kernel's crypto API spells them).
ALGORITHMS: dict[str, int] = {"sha1": 20, "sha256": 32, "sha512": 64}
HASH_TYPE = 1
SUPERBLOCK_SIZE = 512
SIGNATURE = b"verity\0\0"
MAX_SALT = 256
MIN_BLOCK = 512
MAX_BLOCK = 512 * 1024
#: The kernel refuses block sizes above its page size; the guest is x86-64.
KERNEL_MAX_BLOCK = 4096
SECTOR = 512
#: Optional table arguments the kernel knows, and the ones that choose what corruption does.
TABLE_OPTIONS = ("ignore_corruption", "restart_on_corruption", "panic_on_corruption",
                 "ignore_zero_blocks", "check_at_most_once")
CORRUPTION_MODES = ("ignore_corruption", "restart_on_corruption", "panic_on_corruption")

_CHUNK = 1 << 20  # bytes read or written per system call


@layout.struct(size=SUPERBLOCK_SIZE, spec="cryptsetup's dm-verity superblock, version 1 (veritysetup(8))")
@record
class Superblock(layout.Struct):
    signature: bytes = layout.raw(0x00, 8, default=SIGNATURE)
    version: int = layout.u32(0x08, default=1)
    hash_type: int = layout.u32(0x0C, default=HASH_TYPE)
    uuid: bytes = layout.raw(0x10, 16)
    algorithm: bytes = layout.raw(0x20, 32)
    data_block_size: int = layout.u32(0x40)
    hash_block_size: int = layout.u32(0x44)
    data_blocks: int = layout.u64(0x48)
    salt_size: int = layout.u16(0x50)
    salt: bytes = layout.raw(0x58, MAX_SALT)


def _check_block_size(value: int, what: str) -> None:
    if not isinstance(value, int) or value < MIN_BLOCK or value > MAX_BLOCK or value & (value - 1):
        raise InputError(f"the verity {what} block size {value!r} is not a power of two from "
                         f"{MIN_BLOCK} to {MAX_BLOCK} bytes; use e.g. 4096.")


@dataclass(frozen=True)
class VerityParams:
    """How to build a verity hash device: what veritysetup's format options say."""

    data_block_size: int = 4096
    hash_block_size: int = 4096
    algorithm: str = "sha256"
    salt: bytes = b""
    #: Stored in the superblock; required with one (never random here), unused without.
    uuid: uuid_mod.UUID | None = None
    superblock: bool = True
    #: Byte offset of the superblock (or of the tree, without one) on the hash device.
    hash_offset: int = 0

    def __post_init__(self) -> None:
        _check_block_size(self.data_block_size, "data")
        _check_block_size(self.hash_block_size, "hash")
        if self.algorithm not in ALGORITHMS:
            raise InputError(f"unsupported verity hash algorithm {self.algorithm!r}; use one of "
                             f"{', '.join(ALGORITHMS)}.")
        if not isinstance(self.salt, bytes) or len(self.salt) > MAX_SALT:
            raise InputError(f"the verity salt is {len(self.salt)} bytes, more than the {MAX_SALT} "
                             f"the format allows; use a shorter salt.")
        if self.superblock and self.uuid is None:
            raise InputError("a verity superblock needs a UUID; give one (derived from the inputs) "
                             "or format without a superblock.")
        if self.hash_offset < 0 or self.hash_offset % SECTOR:
            raise InputError(f"the verity hash offset {self.hash_offset} is not a nonnegative multiple "
                             f"of {SECTOR} bytes; align it to a sector.")
        if not self.superblock and self.hash_offset % self.hash_block_size:
            raise InputError(f"without a superblock the verity hash offset {self.hash_offset} must be a "
                             f"multiple of the hash block size {self.hash_block_size}; align it.")

    @property
    def digest_size(self) -> int:
        return ALGORITHMS[self.algorithm]

    @property
    def hashes_per_block(self) -> int:
        """Digests in one hash block: a power of two, each padded to a power of two."""
        return 1 << ((self.hash_block_size // self.digest_size).bit_length() - 1)

    @property
    def digest_slot(self) -> int:
        """Bytes each digest occupies in a hash block (its size rounded up to a power of two)."""
        return 1 << (self.digest_size - 1).bit_length()

    @property
    def hash_start_block(self) -> int:
        """The first block of the tree on the hash device, in hash blocks."""
        start = self.hash_offset + (SUPERBLOCK_SIZE if self.superblock else 0)
        return -(-start // self.hash_block_size)

    def superblock_for(self, data_blocks: int) -> Superblock:
        assert self.uuid is not None
        return Superblock(uuid=self.uuid.bytes, algorithm=self.algorithm.encode().ljust(32, b"\0"),
                          data_block_size=self.data_block_size, hash_block_size=self.hash_block_size,
                          data_blocks=data_blocks, salt_size=len(self.salt),
                          salt=self.salt.ljust(MAX_SALT, b"\0"))


@dataclass(frozen=True)
class Level:
    """One level of the tree: where its blocks start on the hash device and how many there are."""

    index: int
    start_block: int
    blocks: int


def tree_levels(params: VerityParams, data_blocks: int) -> tuple[Level, ...]:
    """The levels for ``data_blocks`` data blocks, level 0 first (it is stored last)."""
    bits = params.hashes_per_block.bit_length() - 1
    count = 0
    while bits * count < 64 and (data_blocks - 1) >> (bits * count):
        count += 1
    sizes = [-(-data_blocks // (1 << (bits * (i + 1)))) for i in range(count)]
    levels: list[Level] = []
    position = params.hash_start_block
    for i in reversed(range(count)):
        levels.append(Level(i, position, sizes[i]))
        position += sizes[i]
    return tuple(reversed(levels))


@dataclass(frozen=True)
class VerityTree:
    """What formatting produced: everything the kernel's verity table needs."""

    params: VerityParams
    data_blocks: int
    root_hash: bytes
    levels: tuple[Level, ...]

    @property
    def hash_start_block(self) -> int:
        return self.params.hash_start_block

    @property
    def hash_end(self) -> int:
        """Byte offset on the hash device just past the tree."""
        end = self.hash_start_block + sum(level.blocks for level in self.levels)
        return end * self.params.hash_block_size

    @property
    def data_size(self) -> int:
        return self.data_blocks * self.params.data_block_size

    @property
    def sectors(self) -> int:
        return self.data_size // SECTOR

    @property
    def salt_hex(self) -> str:
        return self.params.salt.hex() or "-"

    def table(self, data_device: str, hash_device: str, options: Sequence[str] = ()) -> str:
        """The ``dmsetup create --table`` line mapping the whole data device."""
        for name, dev in (("data", data_device), ("hash", hash_device)):
            if not dev or any(c.isspace() for c in dev):
                raise InputError(f"the verity {name} device {dev!r} is empty or contains white space; "
                                 f"name it by a path or major:minor.")
        for name, size in (("data", self.params.data_block_size), ("hash", self.params.hash_block_size)):
            if size > KERNEL_MAX_BLOCK:
                raise InputError(f"the kernel cannot activate a verity {name} block size of {size} bytes "
                                 f"(above its page size, {KERNEL_MAX_BLOCK}); format with 4096.")
        unknown = [o for o in options if o not in TABLE_OPTIONS]
        if unknown:
            raise InputError(f"unknown verity table option {unknown[0]!r}; use some of "
                             f"{', '.join(TABLE_OPTIONS)}.")
        if len(set(options)) != len(options):
            raise InputError("a verity table option is given twice; give each once.")
        modes = [o for o in options if o in CORRUPTION_MODES]
        if len(modes) > 1:
            raise InputError(f"the verity options {' and '.join(modes)} exclude each other; choose one.")
        p = self.params
        fields = [0, self.sectors, "verity", HASH_TYPE, data_device, hash_device, p.data_block_size,
                  p.hash_block_size, self.data_blocks, self.hash_start_block, p.algorithm,
                  self.root_hash.hex(), self.salt_hex]
        if options:
            fields += [len(options), *options]
        return " ".join(str(f) for f in fields)


# ---------------------------------------------------------------------------------------
# hashing


class _Hasher:
    def __init__(self, params: VerityParams):
        self._base = hashlib.new(params.algorithm)
        self._base.update(params.salt)
        self._pad = bytes(params.digest_slot - params.digest_size)
        self.per_block = params.hashes_per_block
        self.hash_block_size = params.hash_block_size

    def digest(self, block: bytes | memoryview) -> bytes:
        h = self._base.copy()
        h.update(block)
        return h.digest()

    def hash_blocks(self, source: Iterator[memoryview], count: int) -> Iterator[bytes]:
        """Hash blocks from ``source`` ``count`` times; yield the filled hash blocks."""
        parts: list[bytes] = []
        for block in source:
            parts.append(self.digest(block))
            if self._pad:
                parts.append(self._pad)
            count -= 1
            if len(parts) >= self.per_block * (2 if self._pad else 1) or not count:
                yield b"".join(parts).ljust(self.hash_block_size, b"\0")
                parts = []
            if not count:
                return


def _blocks(f: BinaryIO, offset: int, block_size: int, count: int, label: str) -> Iterator[memoryview]:
    """``count`` blocks of ``f`` from ``offset``, read in bounded chunks (``f`` may be written between)."""
    per_chunk = max(1, _CHUNK // block_size)
    index = 0
    while count:
        n = min(count, per_chunk)
        f.seek(offset + index * block_size)
        chunk = f.read(n * block_size)
        if len(chunk) != n * block_size:
            raise InputError(f"{label} ends at byte {offset + index * block_size + len(chunk)}, before its "
                             f"{index + count} blocks of {block_size}; give the complete file.")
        view = memoryview(chunk)
        for i in range(n):
            yield view[i * block_size:(i + 1) * block_size]
        index += n
        count -= n


def _data_blocks(path: Path, params: VerityParams, given: int | None = None) -> int:
    """The number of data blocks: ``given`` (checked against the file), else the whole file."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"cannot read the verity data file {path}: {e.strerror}; check the path.") from None
    if given is not None:
        if given <= 0 or given * params.data_block_size > size:
            raise InputError(f"the verity data file {path} is {size} bytes, which does not hold {given} "
                             f"blocks of {params.data_block_size}; give a positive count that fits.")
        return given
    if size == 0 or size % params.data_block_size:
        raise InputError(f"the verity data file {path} is {size} bytes, not a positive multiple of the "
                         f"data block size {params.data_block_size}; pad it to a whole number of blocks.")
    return size // params.data_block_size


def _write_tree(data: BinaryIO, out: BinaryIO, params: VerityParams, data_blocks: int,
                data_path: Path) -> VerityTree:
    """Write the tree (and superblock) into ``out`` at the params' offsets; return the result."""
    hasher = _Hasher(params)
    levels = tree_levels(params, data_blocks)
    hbs = params.hash_block_size
    if params.superblock:
        out.seek(params.hash_offset)
        out.write(params.superblock_for(data_blocks).to_bytes())
        gap = params.hash_start_block * hbs - params.hash_offset - SUPERBLOCK_SIZE
        out.write(bytes(gap))
    source: Iterator[memoryview] = _blocks(data, 0, params.data_block_size, data_blocks,
                                           f"the verity data file {data_path}")
    count = data_blocks
    for level in levels:
        position = level.start_block * hbs
        pending: list[bytes] = []
        for block in hasher.hash_blocks(source, count):
            pending.append(block)
            if len(pending) * hbs >= _CHUNK:
                position = _write_at(out, position, pending)
                pending = []
        _write_at(out, position, pending)
        source = _blocks(out, level.start_block * hbs, hbs, level.blocks, "the verity hash device")
        count = level.blocks
    (top,) = list(source)
    return VerityTree(params, data_blocks, hasher.digest(top), levels)


def _write_at(out: BinaryIO, position: int, blocks: list[bytes]) -> int:
    out.seek(position)
    out.write(b"".join(blocks))
    out.flush()
    return position + sum(len(b) for b in blocks)


def format_files(data_path: Path | str, hash_path: Path | str, params: VerityParams,
                 data_blocks: int | None = None) -> VerityTree:
    """Hash ``data_path`` into ``hash_path``, like ``veritysetup format``.

    ``hash_path`` may be the data file itself: the tree is then appended at
    ``params.hash_offset``, which must not be before the end of the data.  A separate hash file
    is written whole or not at all (a temporary file, fsync'ed, then renamed); its bytes before
    the hash offset are kept if it exists.
    ``data_blocks`` (like ``--data-blocks``) hashes only the start of the data file.
    """
    data_path, hash_path = Path(data_path), Path(hash_path)
    data_blocks = _data_blocks(data_path, params, data_blocks)
    same = hash_path.exists() and os.path.samefile(data_path, hash_path)
    if same:
        if params.hash_offset < data_blocks * params.data_block_size:
            raise InputError(f"the verity hash offset {params.hash_offset} lies inside the data of {data_path} "
                             f"({data_blocks * params.data_block_size} bytes); put the hash area after it.")
        with open(data_path, "r+b") as f:
            try:
                tree = _write_tree(f, f, params, data_blocks, data_path)
                os.fsync(f.fileno())
                return tree
            except BaseException:
                f.truncate(data_blocks * params.data_block_size)
                raise
    fd, tmp_name = tempfile.mkstemp(prefix=f".{hash_path.name}.", dir=hash_path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as out, open(data_path, "rb") as data:
            if params.hash_offset and hash_path.exists():
                with open(hash_path, "rb") as old:
                    shutil.copyfileobj(_Limited(old, params.hash_offset), out)
            out.truncate(params.hash_offset)
            tree = _write_tree(data, out, params, data_blocks, data_path)
            os.fsync(out.fileno())
        os.replace(tmp, hash_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tree


def root_hash(data_path: Path | str, params: VerityParams, data_blocks: int | None = None) -> VerityTree:
    """The tree of ``data_path`` without keeping a hash device (a temporary one is used)."""
    data_path = Path(data_path)
    data_blocks = _data_blocks(data_path, params, data_blocks)
    with tempfile.TemporaryFile() as out, open(data_path, "rb") as data:
        return _write_tree(data, out, params, data_blocks, data_path)


class _Limited:
    """The first ``n`` bytes of a binary file, as a readable object."""

    def __init__(self, f: BinaryIO, n: int):
        self._f, self._left = f, n

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        chunk = self._f.read(size)
        self._left -= len(chunk)
        return chunk


# ---------------------------------------------------------------------------------------
# verification


@dataclass(frozen=True)
class Corruption:
    """The first block found wrong: on which device, where, and why."""

    device: str  # "data", "hash" or "superblock"
    block: int  # index on that device, in its block size (0 for the superblock)
    offset: int  # byte offset on that device
    level: int | None  # tree level of a hash block
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Verdict:
    """The result of :func:`verify_files`: ``corruption`` is None when everything matches."""

    root_hash: bytes
    data_blocks: int
    corruption: Corruption | None

    @property
    def ok(self) -> bool:
        return self.corruption is None


def read_superblock(hash_path: Path | str, hash_offset: int = 0) -> Superblock:
    """The superblock at ``hash_offset`` of ``hash_path``; a malformed one is bad input."""
    try:
        with open(hash_path, "rb") as f:
            f.seek(hash_offset)
            raw = f.read(SUPERBLOCK_SIZE)
    except OSError as e:
        raise InputError(f"cannot read the verity hash device {hash_path}: {e.strerror}; check the path.") from None
    try:
        sb = Superblock.from_bytes(raw, base=hash_offset, what=f"verity superblock of {hash_path}")
    except LayoutError as e:
        raise InputError(f"{str(e).rstrip('.')}; is {hash_path} a verity hash device?") from None
    if sb.signature != SIGNATURE or sb.version != 1:
        raise InputError(f"{hash_path} has no verity superblock at byte {hash_offset}; give the right "
                         f"hash device and offset, or say it has none.")
    return sb


def _superblock_mismatch(sb: Superblock, params: VerityParams, data_blocks: int, offset: int) -> Corruption | None:
    expected = params.superblock_for(data_blocks)
    for name in ("hash_type", "uuid", "algorithm", "data_block_size", "hash_block_size", "data_blocks",
                 "salt_size", "salt"):
        if getattr(sb, name) != getattr(expected, name):
            return Corruption("superblock", 0, offset + Superblock.offset_of(name), None,
                              f"the verity superblock's {name} does not match the expected parameters.")
    return None


def verify_files(data_path: Path | str, hash_path: Path | str, params: VerityParams,
                 expected_root: bytes, data_blocks: int | None = None) -> Verdict:
    """Check a data file and its hash device against ``expected_root``, top down as the kernel does.

    Each hash block is checked against its (already trusted) parent, so the first mismatch
    names the block that really is wrong: a hash block, or else a data block.  The number of
    data blocks is ``data_blocks``, else the whole data file (the superblock's count when the
    hash area is appended to the data file).
    """
    data_path, hash_path = Path(data_path), Path(hash_path)
    if len(expected_root) != params.digest_size:
        raise InputError(f"the expected verity root hash is {len(expected_root)} bytes; {params.algorithm} "
                         f"gives {params.digest_size}.")
    sb = read_superblock(hash_path, params.hash_offset) if params.superblock else None
    if data_blocks is None and hash_path.exists() and os.path.samefile(data_path, hash_path):
        if sb is not None:
            data_blocks = sb.data_blocks
        else:
            raise InputError(f"{data_path} holds both the data and a hash area without a superblock; "
                             f"give the number of data blocks.")
    data_blocks = _data_blocks(data_path, params, data_blocks)
    if sb is not None:
        bad = _superblock_mismatch(sb, params, data_blocks, params.hash_offset)
        if bad:
            return Verdict(expected_root, data_blocks, bad)
    levels = tree_levels(params, data_blocks)
    hasher = _Hasher(params)
    hbs = params.hash_block_size
    slot, size, per = params.digest_slot, params.digest_size, params.hashes_per_block
    with open(hash_path, "rb") as hf, open(data_path, "rb") as df:
        end = hf.seek(0, os.SEEK_END)
        need = (levels[0].start_block + levels[0].blocks) * hbs if levels else 0
        if end < need:
            return Verdict(expected_root, data_blocks, Corruption(
                "hash", end // hbs, end, None,
                f"the verity hash device {hash_path} ends at byte {end}, before the tree's end at {need}."))
        parent_reader: _BlockReader | None = None
        for level in reversed(levels):  # top first
            reader = _BlockReader(hf, level.start_block, hbs)
            for i in range(level.blocks):
                block = reader.get(i)
                got = hasher.digest(block)
                want = expected_root if parent_reader is None else _slot(parent_reader.get(i // per), i % per,
                                                                         slot, size)
                if got != want:
                    where = level.start_block + i
                    return Verdict(expected_root, data_blocks, Corruption(
                        "hash", where, where * hbs, level.index,
                        f"hash block {where} (level {level.index}, block {i}) of {hash_path} does not match "
                        f"its {'root hash' if parent_reader is None else 'parent'}."))
                used = min(per, _children(levels, level, data_blocks) - i * per)
                if any(block[k * slot + size:(k + 1) * slot] != bytes(slot - size) for k in range(used)) \
                        or any(block[used * slot:]):
                    where = level.start_block + i
                    return Verdict(expected_root, data_blocks, Corruption(
                        "hash", where, where * hbs, level.index,
                        f"hash block {where} (level {level.index}) of {hash_path} has nonzero padding."))
            parent_reader = reader
        dbs = params.data_block_size
        for i, dblock in enumerate(_blocks(df, 0, dbs, data_blocks, f"the verity data file {data_path}")):
            want = expected_root if parent_reader is None else _slot(parent_reader.get(i // per), i % per, slot, size)
            if hasher.digest(dblock) != want:
                return Verdict(expected_root, data_blocks, Corruption(
                    "data", i, i * dbs, None,
                    f"data block {i} (bytes {i * dbs}..{(i + 1) * dbs - 1}) of {data_path} does not match "
                    f"its hash."))
    return Verdict(expected_root, data_blocks, None)


def _children(levels: tuple[Level, ...], level: Level, data_blocks: int) -> int:
    return data_blocks if level.index == 0 else levels[level.index - 1].blocks


def _slot(block: bytes, index: int, slot: int, size: int) -> bytes:
    return block[index * slot:index * slot + size]


class _BlockReader:
    """Random access to one level's blocks, caching the last one read (the parent of the next)."""

    def __init__(self, f: BinaryIO, start_block: int, block_size: int):
        self._f, self._start, self._bs = f, start_block, block_size
        self._index = -1
        self._block = b""

    def get(self, index: int) -> bytes:
        if index != self._index:
            self._f.seek((self._start + index) * self._bs)
            self._block = self._f.read(self._bs)
            self._index = index
        return self._block


# ---------------------------------------------------------------------------------------
# the table on the kernel command line

#: The kernel parameter that carries the verity table of a bundle's application root:
#: ``blindbox.root="<table>"`` (double quotes, since the table has spaces; the kernel
#: passes such a parameter through to /proc/cmdline, where the guest's init reads it).
CMDLINE_PARAM = "blindbox.root"
_MAX_TABLE = 1024


@dataclass(frozen=True)
class VerityTable:
    """A parsed ``verity`` target line (hash format 1), as ``dmsetup create --table`` takes it."""

    start_sector: int
    sectors: int
    data_device: str
    hash_device: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    hash_start_block: int
    algorithm: str
    root_hash: bytes
    salt: bytes
    options: tuple[str, ...]

    @property
    def on_corruption(self) -> str:
        """``eio`` (the kernel's default: a corrupted block fails the read), ``restart``, ``panic`` or ``ignore``."""
        modes = [o for o in self.options if o in CORRUPTION_MODES]
        return modes[0].split("_", 1)[0] if modes else "eio"

    def params(self, *, uuid: uuid_mod.UUID | None = None) -> VerityParams:
        """The hashing parameters the table implies (a superblock when the tree starts after block 0)."""
        superblock = self.hash_start_block > 0
        return VerityParams(data_block_size=self.data_block_size, hash_block_size=self.hash_block_size,
                            algorithm=self.algorithm, salt=self.salt,
                            uuid=uuid if uuid is not None or not superblock else uuid_mod.UUID(int=0),
                            superblock=superblock,
                            hash_offset=(self.hash_start_block - 1) * self.hash_block_size if superblock else 0)


def _table_int(text: str, what: str, lo: int, hi: int) -> int:
    if not text.isdigit() or len(text) > 20 or not lo <= int(text) <= hi:
        raise InputError(f"the verity table's {what} is {text[:40]!r}, not a number from {lo} to {hi}.")
    return int(text)


def parse_table(text: str) -> VerityTable:
    """Parse a verity table line; anything but a whole-device format-1 line is bad input (one sentence)."""
    if len(text) > _MAX_TABLE:
        raise InputError(f"the verity table is {len(text)} characters, more than any table blindbox writes "
                         f"({_MAX_TABLE}).")
    f = text.split()
    if len(f) < 13 or f[2] != "verity":
        raise InputError(f"{text[:80]!r} is not a verity table line (start, length, 'verity', version, data "
                         f"device, hash device, block sizes, data blocks, hash start, algorithm, root hash, "
                         f"salt).")
    if f[3] != str(HASH_TYPE):
        raise InputError(f"the verity table has hash format {f[3]!r}; only format {HASH_TYPE} is supported.")
    dbs = _table_int(f[6], "data block size", MIN_BLOCK, KERNEL_MAX_BLOCK)
    hbs = _table_int(f[7], "hash block size", MIN_BLOCK, KERNEL_MAX_BLOCK)
    _check_block_size(dbs, "data")
    _check_block_size(hbs, "hash")
    algorithm = f[10]
    if algorithm not in ALGORITHMS:
        raise InputError(f"the verity table's algorithm is {algorithm[:40]!r}; blindbox knows "
                         f"{', '.join(ALGORITHMS)}.")
    try:
        root = bytes.fromhex(f[11])
        salt = b"" if f[12] == "-" else bytes.fromhex(f[12])
    except ValueError:
        raise InputError("the verity table's root hash or salt is not hexadecimal.") from None
    if len(root) != ALGORITHMS[algorithm]:
        raise InputError(f"the verity table's root hash has {len(root)} bytes; {algorithm} gives "
                         f"{ALGORITHMS[algorithm]}.")
    if len(salt) > MAX_SALT:
        raise InputError(f"the verity table's salt has {len(salt)} bytes, more than {MAX_SALT}.")
    options: tuple[str, ...] = ()
    if len(f) > 13:
        count = _table_int(f[13], "option count", 1, len(TABLE_OPTIONS))
        options = tuple(f[14:])
        if len(options) != count:
            raise InputError(f"the verity table announces {count} options but has {len(options)}.")
        unknown = [o for o in options if o not in TABLE_OPTIONS]
        if unknown:
            raise InputError(f"the verity table has the option {unknown[0][:40]!r}, which blindbox does not know.")
        if len(set(options)) != len(options) or len([o for o in options if o in CORRUPTION_MODES]) > 1:
            raise InputError("the verity table repeats an option or names two corruption modes.")
    table = VerityTable(start_sector=_table_int(f[0], "start sector", 0, 0),
                        sectors=_table_int(f[1], "length", 1, 1 << 60), data_device=f[4], hash_device=f[5],
                        data_block_size=dbs, hash_block_size=hbs,
                        data_blocks=_table_int(f[8], "number of data blocks", 1, 1 << 60),
                        hash_start_block=_table_int(f[9], "hash start block", 0, 1 << 60),
                        algorithm=algorithm, root_hash=root, salt=salt, options=options)
    if table.sectors * SECTOR != table.data_blocks * dbs:
        raise InputError(f"the verity table maps {table.sectors} sectors but covers {table.data_blocks} data "
                         f"blocks of {dbs} bytes; they must be the same size.")
    return table


def cmdline_table(cmdline: str) -> str | None:
    """The table in ``blindbox.root="..."`` of a kernel command line, None without one.

    More than one such parameter, or one without its closing quote, is bad input: the
    guest would be left to pick one.
    """
    key = CMDLINE_PARAM + "="
    found: list[str] = []
    pos = 0
    while True:
        at = cmdline.find(key, pos)
        if at < 0:
            break
        pos = at + len(key)
        if at > 0 and not cmdline[at - 1].isspace():
            continue  # part of another word (e.g. x.blindbox.root=)
        if not cmdline.startswith('"', pos):
            raise InputError(f"the command line's {CMDLINE_PARAM}= is not followed by a double-quoted table.")
        end = cmdline.find('"', pos + 1)
        if end < 0:
            raise InputError(f"the command line's {CMDLINE_PARAM}=\" has no closing quote.")
        found.append(cmdline[pos + 1:end])
        pos = end + 1
    if len(found) > 1:
        raise InputError(f"the command line carries {CMDLINE_PARAM} {len(found)} times; a guest must have "
                         f"exactly one root table.")
    return found[0] if found else None


def derived_salt(recipe_sha256: str, lock_sha256: str) -> bytes:
    """The salt blindbox build uses for a bundle's root: SHA-256 over the recipe's and lock's digests.

    Never random, so a rebuild reproduces the root hash; and re-derivable by an auditor from
    the two digests the manifest publishes.
    """
    return hashlib.sha256(f"blindbox-guest verity salt\0{recipe_sha256}\0{lock_sha256}".encode()).digest()


def derived_uuid(purpose: str, recipe_sha256: str, lock_sha256: str) -> uuid_mod.UUID:
    """A UUID (RFC 9562 version 8: name-based, our own hash) for ``purpose`` (``verity``, ``erofs``)."""
    digest = hashlib.sha256(f"blindbox-guest {purpose} uuid\0{recipe_sha256}\0{lock_sha256}".encode()).digest()
    value = int.from_bytes(digest[:16], "big")
    value = (value & ~(0xF << 76)) | (8 << 76)          # version 8
    value = (value & ~(0x3 << 62)) | (0x2 << 62)        # RFC variant
    return uuid_mod.UUID(int=value)
