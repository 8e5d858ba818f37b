"""builder.steps.cpio: the newc writer, checked against GNU cpio, file, gzip and xz."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import stat
import subprocess

import pytest

from builder.steps import cpio
from builder.steps.cpio import Archive, CpioError
from tests.realinputs import pinned_compressor, pinned_deflate
from tests.tools import require

EPOCH = 1735689600  # 2025-01-01T00:00:00Z
TOOL_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}


PACKAGES = {"cpio": "cpio", "file": "file", "gzip": "gzip", "xz": "xz-utils"}


def need(tool: str) -> str:
    return require(tool, PACKAGES[tool])


def sample() -> Archive:
    a = Archive()
    a.add_file("/usr/bin/app", b"#!/bin/sh\necho app\n", 0o755)
    a.add_file("etc/conf", b"key=value\n")
    a.add_symlink("bin/sh", "busybox")
    a.add_file("bin/busybox", b"\x7fELF" + bytes(100), 0o755)
    a.add_dir("tmp", 0o1777)
    a.add_char_device("dev/console", 5, 1)
    a.add_file("empty", b"")
    a.add_file("odd-name_+=.txt", b"x" * 5)
    return a


def test_entries_sorted_with_parents_and_fixed_fields():
    members = cpio.parse(sample().to_bytes(mtime=EPOCH))
    names = [m.name for m in members]
    assert names == ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "empty", "etc", "etc/conf",
                     "odd-name_+=.txt", "tmp", "usr", "usr/bin", "usr/bin/app"]
    assert [m.ino for m in members] == list(range(1, len(members) + 1))
    for m in members:
        assert (m.uid, m.gid, m.mtime) == (0, 0, EPOCH)
    by = {m.name: m for m in members}
    assert by["usr"].mode == stat.S_IFDIR | 0o755 and by["usr"].nlink == 3  # one subdirectory
    assert by["usr/bin"].nlink == 2
    assert by["tmp"].mode == stat.S_IFDIR | 0o1777
    assert by["usr/bin/app"].mode == stat.S_IFREG | 0o755 and by["usr/bin/app"].nlink == 1
    assert by["etc/conf"].mode == stat.S_IFREG | 0o644
    assert by["bin/sh"].mode == stat.S_IFLNK | 0o777 and by["bin/sh"].data == b"busybox"
    assert by["dev/console"].mode == stat.S_IFCHR | 0o600 and by["dev/console"].rdev == (5, 1)


def test_order_of_calls_does_not_matter():
    a, b = Archive(), Archive()
    items = [("x/y/z", b"1"), ("a", b"2"), ("x/a", b"3"), ("x-y", b"4"), ("x/y", None)]
    for path, data in items:
        a.add_dir(path) if data is None else a.add_file(path, data)
    for path, data in reversed(items):
        b.add_dir(path) if data is None else b.add_file(path, data)
    assert a.to_bytes(mtime=EPOCH) == b.to_bytes(mtime=EPOCH)
    # component order: the contents of x come before x-y even though '-' < '/'
    assert [m.name for m in cpio.parse(a.to_bytes(mtime=EPOCH))] == ["a", "x", "x/a", "x/y", "x/y/z", "x-y"]


def test_header_layout_and_padding_golden():
    a = Archive()
    a.add_file("f", b"abc", 0o644)
    data = a.to_bytes(mtime=0x12345678)
    expected_first = (b"070701" + b"00000001" + b"000081A4" + b"00000000" * 2 + b"00000001" + b"12345678"
                      + b"00000003" + b"00000000" * 4 + b"00000002" + b"00000000" + b"f\0")
    assert data.startswith(expected_first)
    assert data[len(expected_first):len(expected_first) + 4] == b"abc\0"  # 112 bytes, then data padded to 4
    assert len(data) % 512 == 0
    assert b"TRAILER!!!\0" in data
    # Pinned: a change of these bytes changes every published initrd digest.
    assert hashlib.sha256(sample().to_bytes(mtime=EPOCH)).hexdigest() == \
        "851e7f4efaf3ab4d9766453452f5357bae8f808ff8215546dc865c3948cdd7c7"


@pytest.mark.network
def test_compressed_streams_golden():
    """The deflate stream comes from the pinned zlib, the LZMA2 stream from the liblzma Python links
    (which is why recipes cannot ask for xz)."""
    raw = sample().to_bytes(mtime=EPOCH)
    assert hashlib.sha256(cpio.compress(raw, "gzip", pinned_deflate())).hexdigest() == \
        "3e7e778d4dd3d8cd546b48859fa779d44a144c9d996f9aeb5bafb7cfb9c91d42", \
        cpio.compressor_identity("gzip", pinned_deflate())
    assert hashlib.sha256(cpio.compress(raw, "xz")).hexdigest() == \
        "df7a4037b0688443dfa2af8144b28cd780cb899b0d310ff135ce3c0cac2badb6", cpio.compressor_identity("xz")


def test_gnu_cpio_lists_exactly_our_entries(tmp_path):
    tool = need("cpio")
    data = sample().to_bytes(mtime=EPOCH)
    listing = subprocess.run([tool, "-itv", "--quiet"], input=data, capture_output=True, check=True,
                             env=TOOL_ENV).stdout.decode().splitlines()
    names = [m.name for m in cpio.parse(data)]
    assert len(listing) == len(names)
    rows = {}
    for line in listing:
        fields = line.split()
        rows[fields[-1] if "->" not in fields else fields[-3]] = line
    assert sorted(rows) == sorted(names)
    assert rows["bin/sh"].startswith("lrwxrwxrwx") and rows["bin/sh"].endswith("bin/sh -> busybox")
    assert rows["usr/bin/app"].startswith("-rwxr-xr-x   1 root     root")
    assert rows["tmp"].startswith("drwxrwxrwt")
    assert rows["dev/console"].startswith("crw-------") and "5,   1" in rows["dev/console"]
    assert "Jan  1  2025" in rows["etc/conf"]


def test_gnu_cpio_extracts_contents_and_modes(tmp_path):
    tool = need("cpio")
    a = sample()
    # device nodes need CAP_MKNOD, which a container may lack: extract the rest
    plain = Archive()
    for e in a.entries():
        if e.kind == cpio.Kind.FILE:
            plain.add_file(e.path, e.data, e.mode)
        elif e.kind == cpio.Kind.SYMLINK:
            plain.add_symlink(e.path, e.data.decode())
        elif e.kind == cpio.Kind.DIR:
            plain.add_dir(e.path, e.mode)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["sh", "-c", f"umask 000 && exec {tool} -idm --quiet --no-absolute-filenames"], cwd=out,
                   input=plain.to_bytes(mtime=EPOCH), check=True, env=TOOL_ENV)
    assert (out / "usr/bin/app").read_bytes() == b"#!/bin/sh\necho app\n"
    assert stat.S_IMODE((out / "usr/bin/app").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "etc/conf").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "tmp").stat().st_mode) == 0o1777
    assert os.readlink(out / "bin/sh") == "busybox"
    assert (out / "empty").read_bytes() == b""
    assert int((out / "etc/conf").stat().st_mtime) == EPOCH


@pytest.mark.network
def test_file_recognises_archive_and_compressions(tmp_path):
    tool = need("file")
    raw = sample().to_bytes(mtime=EPOCH)
    for method, expect in (("none", "ASCII cpio archive (SVR4 with no CRC)"), ("gzip", "gzip compressed data"),
                           ("xz", "XZ compressed data")):
        p = tmp_path / f"initrd.{method}"
        p.write_bytes(cpio.compress(raw, method, pinned_deflate()))
        out = subprocess.run([tool, "-b", str(p)], capture_output=True, text=True, check=True, env=TOOL_ENV).stdout
        assert expect in out, out
        if method == "gzip":
            assert "max compression" in out and "was " not in out and "last modified" not in out


@pytest.mark.network
def test_gzip_fixed_header_and_roundtrip():
    raw = sample().to_bytes(mtime=EPOCH)
    gz = cpio.compress(raw, "gzip", pinned_deflate())
    assert gz[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # no name, mtime 0, XFL 2, OS unknown
    assert gzip.decompress(gz) == raw == cpio.decompress(gz, "gzip")
    assert cpio.compress(raw, "gzip", pinned_deflate()) == gz
    need("gzip")
    assert subprocess.run(["gzip", "-dc"], input=gz, capture_output=True, check=True).stdout == raw


def test_xz_uses_crc32_and_1mib_dictionary(tmp_path):
    raw = sample().to_bytes(mtime=EPOCH)
    xz = cpio.compress(raw, "xz")
    assert lzma.decompress(xz) == raw == cpio.decompress(xz, "xz")
    assert xz[6:8] == b"\x00\x01"  # stream flags: check type 1 = CRC32 (the kernel's decoder needs it)
    assert cpio.compress(raw, "xz") == xz
    tool = need("xz")
    p = tmp_path / "i.xz"
    p.write_bytes(xz)
    robot = subprocess.run([tool, "--list", "--robot", "-vv", str(p)], capture_output=True, text=True, check=True,
                           env=TOOL_ENV).stdout
    assert "\tCRC32\t" in robot
    summary = [ln for ln in robot.splitlines() if ln.startswith("summary")][0].split("\t")
    assert int(summary[1]) <= 1 << 20 + 1  # memory needed to decompress: about the 1 MiB dictionary


def test_unknown_compression_refused():
    with pytest.raises(CpioError, match="zstd.*gzip, xz, none"):
        cpio.compress(b"", "zstd")


@pytest.mark.parametrize("path", ["", "/", "a/../b", "..", "a\0b", "./."])
def test_bad_paths_refused(path):
    with pytest.raises(CpioError):
        Archive().add_file(path, b"")


def test_paths_normalized():
    a = Archive()
    a.add_file("//usr/./bin//x", b"1")
    assert [e.path for e in a.entries()] == ["usr", "usr/bin", "usr/bin/x"]
    assert "/usr/bin/x" in a


def test_conflicts_refused_and_identical_duplicates_allowed():
    a = Archive()
    a.add_file("x", b"1")
    a.add_file("/x", b"1")
    with pytest.raises(CpioError, match="'x' was added twice"):
        a.add_file("x", b"2")
    a.add_dir("d", 0o755)
    with pytest.raises(CpioError, match="modes"):
        a.add_dir("d", 0o700)
    b = Archive()
    b.add_symlink("lib64", "usr/lib64")
    b.add_file("lib64/ld.so", b"")
    with pytest.raises(CpioError, match="lies below 'lib64', which is a symlink"):
        b.to_bytes(mtime=0)


@pytest.mark.parametrize("mtime", [-1, 1 << 32, True, 1.5])
def test_mtime_range(mtime):
    with pytest.raises(CpioError, match="SOURCE_DATE_EPOCH"):
        Archive().to_bytes(mtime=mtime)


@pytest.mark.parametrize("mode", [-1, 0o10000, "0755"])
def test_mode_range(mode):
    with pytest.raises(CpioError, match="mode"):
        Archive().add_file("x", b"", mode)


def test_empty_symlink_target_refused():
    with pytest.raises(CpioError, match="empty target"):
        Archive().add_symlink("x", "")


def test_parse_rejects_garbage():
    with pytest.raises(cpio.CpioReadError, match="not an uncompressed newc"):
        cpio.parse(b"x" * 200)
    with pytest.raises(cpio.CpioReadError, match="truncated"):
        cpio.parse(sample().to_bytes(mtime=0)[:50])


@pytest.mark.network
def test_compressor_identity_names_the_library():
    _, pkg = pinned_compressor()
    identity = cpio.compressor_identity("gzip", pinned_deflate())
    assert f"zlib 1.2.13 from the pinned Debian package zlib1g {pkg.version} (sha256 {pkg.sha256})" in identity
    assert "CRC32" in cpio.compressor_identity("xz")


@pytest.mark.parametrize("namesize,needle", [(0, "name size 0"), (0xFFFFFFFF, "name size 4294967295")])
def test_parse_checks_the_name_size_against_the_data(namesize, needle):
    data = bytearray(sample().to_bytes(mtime=EPOCH))
    data[6 + 8 * 11:6 + 8 * 12] = f"{namesize:08X}".encode()
    with pytest.raises(cpio.CpioReadError, match=f"cpio header at offset 0 gives {needle}, which is not within the"):
        cpio.parse(bytes(data))


def test_parse_checks_the_file_size_against_the_data():
    data = bytearray(sample().to_bytes(mtime=EPOCH))
    data[6 + 8 * 6:6 + 8 * 7] = b"FFFFFFFF"
    with pytest.raises(cpio.CpioReadError, match="at offset 0 is truncated"):
        cpio.parse(bytes(data))
