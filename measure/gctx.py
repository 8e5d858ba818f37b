"""The SEV-SNP launch digest: a SHA-384 chain over PAGE_INFO structures.

For every page given to SNP_LAUNCH_UPDATE the AMD secure processor computes
``digest = SHA-384(PAGE_INFO)`` where PAGE_INFO holds the previous digest, the
SHA-384 of the page contents (zero for page types without measured contents), the
page type and its guest physical address.  :class:`LaunchDigest` replays that chain.
It is a plain value: :meth:`LaunchDigest.copy` forks it, so the firmware part of a
launch is hashed once and extended for many VM shapes.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib

from . import layout
from .errors import InputError
from .record import record
from .spec import LD_SIZE, PAGE_SIZE, VMSA_GPA, PageType

ZERO_DIGEST = bytes(LD_SIZE)
U64_MAX = (1 << 64) - 1
_sha384 = hashlib.sha384

#: Guest physical address width per product (gce-tcb-verifier; SNP firmware ABI).
GPA_BITS = {"milan": 48, "genoa": 52, "turin": 52}


@layout.struct(size=0x70, spec="SEV-SNP Firmware ABI, PAGE_INFO")
@record
class PageInfo(layout.Struct):
    digest_cur: bytes = layout.raw(0x00, 48)
    contents: bytes = layout.raw(0x30, 48)
    length: int = layout.u16(0x60, default=0x70)
    page_type: PageType = layout.u8(0x62, enum=PageType, default=PageType.NORMAL)
    imi_page: int = layout.u8(0x63)
    vmpl3_perms: int = layout.u8(0x64)
    vmpl2_perms: int = layout.u8(0x65)
    vmpl1_perms: int = layout.u8(0x66)
    gpa: int = layout.u64(0x68)


#: _tail() of each page type met so far (functools.lru_cache would import functools: ~1 ms)
_TAILS: dict[int, bytes] = {}


def _tail(page_type: PageType) -> bytes:
    """PAGE_INFO from ``length`` up to ``gpa``: the bytes that depend on the page type only.

    A PAGE_INFO is then ``digest_cur || contents || _tail(type) || gpa`` (little endian),
    which is what :meth:`PageInfo.to_bytes` writes; the offsets are checked here, once, so
    the per-page code cannot drift from the declared layout (tests/measure/test_gctx_fast.py
    compares the two for every page type).
    """
    tail = _TAILS.get(page_type)
    if tail is not None:
        return tail
    head, gpa_off = PageInfo.offset_of("length"), PageInfo.offset_of("gpa")
    if (PageInfo.offset_of("digest_cur"), PageInfo.offset_of("contents"), head, gpa_off + 8) != \
            (0, LD_SIZE, 2 * LD_SIZE, PageInfo.SIZE):
        raise AssertionError("PAGE_INFO layout no longer matches the per-page fast path")
    tail = _TAILS[page_type] = PageInfo(page_type=page_type).to_bytes()[head:gpa_off]
    return tail


def gpa_range_problem(gpa: int, size: int, *, end: int | None = None, product: str = "milan") -> str | None:
    """Why the page range ``gpa``+``size`` cannot be given to SNP_LAUNCH_UPDATE, or None.

    ``end`` (exclusive) narrows the space further, e.g. to the 4 GiB that the 32-bit
    fields of the SEV metadata can address.
    """
    bits = GPA_BITS[product]
    if gpa % PAGE_SIZE:
        return f"guest physical address {gpa:#x} is not page aligned (misaligned start)"
    if size % PAGE_SIZE:
        return f"region size {size:#x} at {gpa:#x} is not a whole number of pages (misaligned size)"
    limit = ((1 << bits) - 1) & ~(PAGE_SIZE - 1)
    if gpa > limit:
        return f"guest physical address {gpa:#x} is unrepresentable on {product} ({bits}-bit addresses)"
    if size and gpa + size - PAGE_SIZE > limit:
        return f"region {gpa:#x}+{size:#x} has an unrepresentable end on {product} ({bits}-bit addresses)"
    if end is not None and gpa + size > end:
        return f"region {gpa:#x}+{size:#x} ends at {gpa + size:#x}, beyond {end:#x}"
    return None


class LaunchDigest:
    """Resumable SNP launch digest state (the guest context's LD field)."""

    __slots__ = ("_ld", "pages", "log")

    def __init__(self, seed: bytes = ZERO_DIGEST, *, trace: bool = False):
        if len(seed) != LD_SIZE:
            raise InputError(f"a launch digest seed must be {LD_SIZE} bytes (96 hex digits), "
                             f"got {len(seed)} bytes.")
        self._ld = bytes(seed)
        #: number of PAGE_INFO updates folded in so far
        self.pages = 0
        #: with ``trace``: one (page_type, gpa, contents, digest after) per update
        self.log: list[tuple[PageType, int, bytes, bytes]] | None = [] if trace else None

    def copy(self) -> "LaunchDigest":
        other = LaunchDigest(self._ld)
        other.pages = self.pages
        other.log = None if self.log is None else list(self.log)
        return other

    @property
    def digest(self) -> bytes:
        return self._ld

    def update(self, page_type: PageType, gpa: int, contents: bytes = ZERO_DIGEST) -> None:
        """Fold one PAGE_INFO into the chain."""
        if len(contents) != LD_SIZE or not 0 <= gpa <= U64_MAX:
            # Out of range for PAGE_INFO: let the declared layout name the field.
            PageInfo(digest_cur=self._ld, contents=contents, page_type=page_type, gpa=gpa).to_bytes()
        self._ld = _sha384(self._ld + contents + _tail(page_type) + gpa.to_bytes(8, "little")).digest()
        self.pages += 1
        if self.log is not None:
            self.log.append((page_type, gpa, contents, self._ld))

    def update_normal_pages(self, gpa: int, data: bytes) -> None:
        if len(data) % PAGE_SIZE:
            raise InputError(f"data measured at {gpa:#x} is {len(data)} bytes, "
                             f"not a whole number of 4 KiB pages.")
        if self.log is not None or not 0 <= gpa <= gpa + len(data) <= U64_MAX:
            view = memoryview(data)
            for off in range(0, len(data), PAGE_SIZE):
                self.update(PageType.NORMAL, gpa + off, _sha384(view[off:off + PAGE_SIZE]).digest())
            return
        # The hot loop of every launch: one SHA-384 of the page, one of its PAGE_INFO.  A page
        # equal to the one before it reuses its digest: most of a firmware volume is runs of
        # erased (0xFF) pages (843 of the 1024 pages of Debian's OVMF.amdsev.fd), and comparing
        # two pages costs a memcmp, a twentieth of hashing one.  The traced path above hashes
        # every page on its own, and tests hold the two equal.
        if not isinstance(data, bytes):
            data = bytes(data)      # bytes slices compare by memcmp; memoryview ones per element
        sha384 = _sha384
        tail = _tail(PageType.NORMAL)
        ld = self._ld
        previous, page_digest = None, b""
        for off in range(0, len(data), PAGE_SIZE):
            page = data[off:off + PAGE_SIZE]
            if page != previous:
                page_digest, previous = sha384(page).digest(), page
            ld = sha384(b"".join((ld, page_digest, tail, (gpa + off).to_bytes(8, "little")))).digest()
        self._ld = ld
        self.pages += len(data) // PAGE_SIZE

    def _update_empty(self, page_type: PageType, gpa: int, size: int) -> None:
        if size % PAGE_SIZE:
            raise InputError(f"a {page_type.name} region at {gpa:#x} has size {size:#x}, "
                             f"not a whole number of 4 KiB pages.")
        for off in range(0, size, PAGE_SIZE):
            self.update(page_type, gpa + off)

    def update_zero_pages(self, gpa: int, size: int) -> None:
        self._update_empty(PageType.ZERO, gpa, size)

    def update_unmeasured_pages(self, gpa: int, size: int) -> None:
        self._update_empty(PageType.UNMEASURED, gpa, size)

    def update_secrets_page(self, gpa: int) -> None:
        self.update(PageType.SECRETS, gpa)

    def update_cpuid_page(self, gpa: int) -> None:
        self.update(PageType.CPUID, gpa)

    def update_vmsa_page(self, page: bytes) -> None:
        if len(page) != PAGE_SIZE:
            raise InputError(f"a VMSA page must be 4096 bytes, got {len(page)}.")
        self.update(PageType.VMSA, VMSA_GPA, hashlib.sha384(page).digest())

    def update_vmsa_pages(self, contents: bytes, count: int) -> None:
        """``count`` VMSA pages whose contents hash to ``contents`` (the SHA-384 of the page)."""
        if self.log is not None:
            for _ in range(count):
                self.update(PageType.VMSA, VMSA_GPA, contents)
            return
        if len(contents) != LD_SIZE:
            self.update(PageType.VMSA, VMSA_GPA, contents)  # the layout names the bad field
        suffix = contents + _tail(PageType.VMSA) + VMSA_GPA.to_bytes(8, "little")
        sha384 = _sha384
        ld = self._ld
        for _ in range(count):
            ld = sha384(ld + suffix).digest()
        self._ld = ld
        self.pages += count
