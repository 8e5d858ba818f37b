"""measure.cpio: the initrd reader the auditor uses, on crafted archives (read as the kernel unpacks them)."""

from __future__ import annotations

import gzip
import lzma

import pytest

from builder.steps.cpio import Archive, compress
from tests.realinputs import pinned_deflate
from measure.cpio import CpioError, parse, read_initrd

EPOCH = 1_700_000_000
BIG = 1 << 30


def archive(**files: bytes) -> bytes:
    a = Archive()
    for path, data in files.items():
        a.add_file(path.replace("__", "/"), data)
    return a.to_bytes(mtime=EPOCH)


def header(name: bytes, *, mode: int = 0o100644, nlink: int = 1, size: int = 0, namesize: int | None = None,
           ino: int = 1) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1 if namesize is None else namesize, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def member(name: bytes, data: bytes = b"", **kw: int) -> bytes:
    out = bytearray(header(name, size=len(data), **kw) + name + b"\0")
    out += bytes(-len(out) % 4) + data
    return bytes(out + bytes(-len(out) % 4))


TRAILER = member(b"TRAILER!!!", mode=0, ino=0)


def read(data: bytes, **kw: int):
    return read_initrd(data, "the initrd", max_bytes=kw.get("max_bytes", BIG), max_members=kw.get("max_members", 1000))


def test_a_builder_archive_reads_back_whole():
    initrd = read(compress(archive(etc__x=b"one", bin__y=b"two"), "gzip", pinned_deflate()))
    assert initrd.lookup("/etc/x") == (b"one", "/etc/x (3 bytes)")
    assert initrd.lookup("bin/y")[0] == b"two"
    assert initrd.lookup("/etc/z") == (None, "the initrd has no /etc/z")


@pytest.mark.parametrize("method", ["gzip", "xz", "none"])
def test_an_appended_archive_overrides_earlier_members_in_any_compression(method):
    first = compress(archive(etc__x=b"honest", etc__y=b"kept"), "gzip", pinned_deflate())
    second = compress(archive(etc__x=b"permissive"), method, pinned_deflate())
    # the kernel reads an uncompressed archive only at an offset that is a multiple of 4
    initrd = read(first + bytes(-len(first) % 4) + second)
    assert initrd.lookup("etc/x")[0] == b"permissive"
    assert initrd.lookup("etc/y")[0] == b"kept"


def test_archives_concatenated_inside_one_stream_and_nul_padding_are_read():
    inner = archive(etc__x=b"honest") + bytes(8) + archive(etc__x=b"second")
    data = gzip.compress(mtime=0, data=inner) + bytes(3) + lzma.compress(archive(etc__z=b"z"))
    assert read(data).lookup("etc/x")[0] == b"second"


def test_names_are_the_paths_the_kernel_creates():
    data = archive(etc__x=b"a") + member(b"./etc//x", b"b") + TRAILER
    assert read(data).lookup("/etc/x")[0] == b"b"


MALFORMED = [
    (b"x" * 200, "neither a cpio archive, padding nor a gzip or xz stream"),
    (b"0" * 200, "no newc header magic at offset 0"),
    (b"070702" + b"0" * 200, "no newc header magic at offset 0"),
    (member(b"a", b"1")[:60], "ends inside a cpio header at offset 0"),
    (header(b"a").replace(b"00000002", b"0000_002", 1) + b"a\0" * 40, "malformed newc header at offset 0"),
    (header(b"a", namesize=0xFFFFFFFF) + b"a\0" * 40, "gives name size 4294967295, which is not within"),
    (header(b"a", namesize=0) + b"a\0" * 40, "gives name size 0, which is not within"),
    (header(b"a", size=0x7FFFFFFF) + b"a\0\0\0" * 40, "at offset 0 is truncated (2147483647 bytes announced"),
    (member(b"a", b"1"), "ends inside a cpio header at offset 116"),
    (gzip.compress(mtime=0, data=archive(a=b"1"))[:-20], "ends inside the gzip stream at offset 0"),
    (gzip.compress(mtime=0, data=archive(a=b"1")[:-512 + 10]), "of the gzip stream at offset 0"),
    (gzip.compress(mtime=0, data=archive(a=b"1") + b"junk"), "neither a cpio archive nor padding"),
    (b"\x28\xb5\x2f\xfd" + bytes(40), "holds a zstd stream at offset 0, which blindbox does not read"),
    (b"BZh9" + bytes(40), "holds a bzip2 stream at offset 0"),
    (b"\x1f\x8b" + bytes(40), "gzip stream at offset 0 that cannot be decompressed"),
    (bytes(4) + b"\xfd7zXZ\x00" + bytes(40), "xz stream at offset 4 that cannot be decompressed"),
    (b"\0" + archive(a=b"1"), "not a multiple of 4"),
    (bytes(512), "holds no cpio member"),
]


@pytest.mark.parametrize("data,needle", MALFORMED, ids=[f"{i}-{n[:30]}" for i, (_, n) in enumerate(MALFORMED)])
def test_a_malformed_initrd_is_refused_in_one_sentence(data, needle):
    with pytest.raises(CpioError, match="^the initrd") as e:
        read(data)
    assert needle in str(e.value)
    assert e.value.exit_code == 2 and str(e.value).count(". ") <= 2 and "\n" not in str(e.value)


def test_the_unpacked_size_is_bounded_before_it_is_held():
    bomb = gzip.compress(mtime=0, data=member(b"a", bytes(8 << 20)) + TRAILER)
    assert len(bomb) < 64 << 10
    with pytest.raises(CpioError, match="decompresses to more than 1048576 bytes"):
        read(bomb, max_bytes=1 << 20)
    with pytest.raises(CpioError, match="is 2000 bytes, more than the 1000 an initrd may hold"):
        read(bytes(2000), max_bytes=1000)
    assert read(bomb, max_bytes=9 << 20).lookup("a")[0] == bytes(8 << 20)


def test_the_member_count_is_bounded():
    data = b"".join(member(b"f%d" % i) for i in range(50)) + TRAILER
    with pytest.raises(CpioError, match="holds more than 49 cpio members"):
        read(data, max_members=49)
    assert len(read(data, max_members=50).members) == 50


def test_a_path_written_through_a_symlink_cannot_be_told():
    data = (archive(etc__blindbox__x=b"honest") + member(b"d", b"etc/blindbox", mode=0o120777)
            + member(b"d/x", b"permissive") + TRAILER)
    value, why = read(data).lookup("etc/blindbox/x")
    assert value is None and why == ("the initrd writes 'd/x' through the symlink 'd', so what etc/blindbox/x holds "
                                     "cannot be told from the archive")


def test_a_hard_linked_file_cannot_be_told():
    data = member(b"other", b"", nlink=2, ino=7) + member(b"x", b"honest", nlink=2, ino=7) + TRAILER
    assert read(data).lookup("x") == (None, "the initrd makes x a hard link (nlink 2), which blindbox never does")


@pytest.mark.parametrize("tail,needle", [
    (member(b"etc/x", mode=0o040755), "etc/x is not a regular file in the initrd (mode 0o40755)"),
    (member(b"etc/x", b"y", mode=0o120777), "etc/x is not a regular file"),
    (member(b"etc", b"", mode=0o100644), "'etc' is not a directory after unpacking"),
])
def test_a_path_that_is_not_a_file_in_a_directory_cannot_be_told(tail, needle):
    value, why = read(archive(etc__x=b"a") + tail + TRAILER).lookup("etc/x")
    assert value is None and needle in why


def test_a_file_written_before_its_directory_exists_cannot_be_told():
    assert read(member(b"etc/x", b"a") + TRAILER).lookup("etc/x") == (
        None, "the initrd writes etc/x while 'etc' is not a directory it created before")


def test_dot_dot_is_refused():
    with pytest.raises(CpioError, match="member named 'etc/../x', which contains '..'"):
        read(member(b"etc/../x", b"a") + TRAILER).lookup("x")


def test_parse_reads_one_archive_only():
    assert [m.name for m in parse(archive(a=b"1") + b"garbage")] == ["a"]


def test_a_directory_member_replaces_a_symlink_as_the_kernel_does():
    data = (archive(etc__blindbox__x=b"honest") + member(b"d", b"etc/blindbox", mode=0o120777)
            + member(b"d", mode=0o040755) + member(b"d/x", b"other") + TRAILER)
    initrd = read(data)
    assert initrd.lookup("etc/blindbox/x")[0] == b"honest" and initrd.lookup("d/x")[0] == b"other"

