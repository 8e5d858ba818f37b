"""The per-page PAGE_INFO fast path of :class:`measure.gctx.LaunchDigest` against the declared layout."""

from __future__ import annotations

import hashlib

import pytest

from measure.errors import LayoutError
from measure.gctx import LaunchDigest, PageInfo, _tail
from measure.spec import PAGE_SIZE, PageType


def slow_fold(ld: bytes, page_type: PageType, gpa: int, contents: bytes) -> bytes:
    info = PageInfo(digest_cur=ld, contents=contents, page_type=page_type, gpa=gpa)
    return hashlib.sha384(info.to_bytes()).digest()


@pytest.mark.parametrize("page_type", list(PageType), ids=lambda t: t.name)
@pytest.mark.parametrize("gpa", [0, 0x1000, 0xFFFF_F000, 0xFFFF_FFFF_F000, (1 << 64) - 0x1000])
def test_update_equals_the_layout(page_type, gpa):
    contents = hashlib.sha384(bytes([page_type])).digest()
    ld = LaunchDigest(hashlib.sha384(b"seed").digest())
    before = ld.digest
    ld.update(page_type, gpa, contents)
    assert ld.digest == slow_fold(before, page_type, gpa, contents)
    assert PageInfo(page_type=page_type).to_bytes()[0x60:0x68] == _tail(page_type)


def test_normal_pages_equal_the_layout_and_the_traced_path():
    data = bytes(range(256)) * (3 * PAGE_SIZE // 256)
    fast = LaunchDigest()
    fast.update_normal_pages(0xFFC0_0000, data)
    traced = LaunchDigest(trace=True)
    traced.update_normal_pages(0xFFC0_0000, data)
    ld = bytes(48)
    for i in range(3):
        page = data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
        ld = slow_fold(ld, PageType.NORMAL, 0xFFC0_0000 + i * PAGE_SIZE, hashlib.sha384(page).digest())
    assert fast.digest == traced.digest == ld
    assert fast.pages == traced.pages == 3
    assert [entry[1] for entry in traced.log or []] == [0xFFC0_0000 + i * PAGE_SIZE for i in range(3)]


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_repeated_pages_reuse_a_digest_but_fold_every_page(kind):
    """Runs of equal pages (erased flash) are hashed once in the fast path; every page still
    has its own PAGE_INFO, and a page equal to an earlier but not the previous one is hashed."""
    erased, zero, other = b"\xff" * PAGE_SIZE, bytes(PAGE_SIZE), bytes(range(256)) * (PAGE_SIZE // 256)
    nearly = b"\xff" * (PAGE_SIZE - 1) + b"\xfe"    # differs from an erased page in its last byte only
    pages = [erased, erased, zero, erased, erased, erased, nearly, erased, other, other, zero]
    data = b"".join(pages)
    fast = LaunchDigest()
    fast.update_normal_pages(0x1000, kind(data))
    traced = LaunchDigest(trace=True)
    traced.update_normal_pages(0x1000, data)
    ld = bytes(48)
    for i, page in enumerate(pages):
        ld = slow_fold(ld, PageType.NORMAL, 0x1000 + i * PAGE_SIZE, hashlib.sha384(page).digest())
    assert fast.digest == traced.digest == ld
    assert fast.pages == len(pages)


def test_out_of_range_values_still_name_the_field():
    ld = LaunchDigest()
    with pytest.raises(LayoutError, match="PageInfo.gpa"):
        ld.update(PageType.NORMAL, 1 << 64)
    with pytest.raises(LayoutError, match="PageInfo.contents must be 48 bytes"):
        ld.update(PageType.NORMAL, 0, b"short")
    assert ld.pages == 0
    with pytest.raises(LayoutError, match="PageInfo.gpa"):
        ld.update_normal_pages((1 << 64) - PAGE_SIZE, bytes(2 * PAGE_SIZE))
