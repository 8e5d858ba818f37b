"""builder.rootfs_tree: the one extraction rule (layer semantics, links, modes, times) and the
canonical listing of a tree that pins a directory or tarball input."""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from builder.errors import SourceError
from builder.rootfs_tree import TreeWriter, extract_tarball, resolve_inside, tree_digest, tree_listing
from tests.builder.ocifakes import d, entry, f, snapshot, sym, tar_bytes

EPOCH = 1735689600


def _apply(dest: Path, *layers: list, epoch: int | None = EPOCH) -> None:
    dest.mkdir()
    w = TreeWriter(dest, owner="img", unit="image", keep_absolute_links=True, epoch=epoch, max_members=1000,
                   max_bytes=1 << 20, limit_why="a test image")
    for n, layer in enumerate(layers, 1):
        with tarfile.open(fileobj=io.BytesIO(tar_bytes(layer)), mode="r|") as tf:
            w.apply(tf, where=f"img: layer {n}")
    w.finish()


def test_whiteouts_apply_to_lower_layers_only(tmp_path):
    # the spec: a whiteout never hides an entry of its own layer, whatever the order
    _apply(tmp_path / "t", [f("a", "lower"), f("b", "lower"), d("dir"), f("dir/old", "x")],
           [f(".wh.a"), f("a", "same layer"), f("b", "same layer"), f(".wh.b"), f("dir/mine", "m"),
            f("dir/.wh..wh..opq"), f(".wh.nothing-there")])
    assert snapshot(tmp_path / "t") == {"a": ("f", 0o644, b"same layer"), "b": ("f", 0o644, b"same layer"),
                                        "dir": ("d", 0o755), "dir/mine": ("f", 0o644, b"m")}


def test_a_file_replaces_a_lower_directory_but_not_one_of_its_own_layer(tmp_path):
    _apply(tmp_path / "t", [d("x", 0o555), d("x/y", 0o500), f("x/y/z", "z", 0o400)], [f("x", "file")])
    assert snapshot(tmp_path / "t") == {"x": ("f", 0o644, b"file")}
    with pytest.raises(SourceError) as e:
        _apply(tmp_path / "u", [d("x"), f("x", "file")])
    assert str(e.value) == "img: layer 1: member 'x' would replace a directory; refusing to unpack this image."


def test_modes_owners_times_and_links(tmp_path):
    hard = entry("bin/hard", tarfile.LNKTYPE, linkname="bin/tool")
    _apply(tmp_path / "t", [d("bin", 0o711), f("bin/tool", "t", 0o6755), hard, d("tmp", 0o1777),
                            sym("bin/abs", "/bin/tool"), sym("loop", "loop"), sym("dangling", "/nowhere/x")])
    t = tmp_path / "t"
    assert snapshot(t) == {"bin": ("d", 0o711), "bin/tool": ("f", 0o755, b"t"), "bin/hard": ("f", 0o755, b"t"),
                           "tmp": ("d", 0o777), "bin/abs": ("l", "/bin/tool"), "loop": ("l", "loop"),
                           "dangling": ("l", "/nowhere/x")}
    assert os.stat(t / "bin/hard").st_ino == os.stat(t / "bin/tool").st_ino
    assert {os.lstat(p).st_mtime for p in [t, *t.rglob("*")]} == {EPOCH}
    assert resolve_inside(t, "bin/abs") == t / "bin/tool"
    assert resolve_inside(t, "/dangling") == t / "nowhere/x"
    assert resolve_inside(t, "loop") == t / "loop"  # 40 links, then it stops where it is
    assert resolve_inside(t, "../x") is None
    # the members' owner (1000:1000 in the tar) is not kept: the writer never calls chown
    assert os.lstat(t / "bin/tool").st_uid == os.getuid()


def test_without_an_epoch_member_mtimes_are_kept(tmp_path):
    _apply(tmp_path / "t", [f("a", "a")], epoch=None)
    assert os.lstat(tmp_path / "t" / "a").st_mtime == 1600000000


def test_limits_count_every_layer(tmp_path):
    (tmp_path / "t").mkdir()
    w = TreeWriter(tmp_path / "t", owner="img", unit="image", keep_absolute_links=True, epoch=EPOCH, max_members=3,
                   max_bytes=10, limit_why="a test image")
    with tarfile.open(fileobj=io.BytesIO(tar_bytes([f("a", "12345"), f("b", "12345")])), mode="r|") as tf:
        w.apply(tf)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes([f("c", "1")])), mode="r|") as tf, \
            pytest.raises(SourceError) as e:
        w.apply(tf, where="img: layer 2")
    assert str(e.value) == ("img: layer 2: member 'c' (1 bytes) takes what the image unpacks beyond 10 bytes "
                            "(docs/limits.md); refusing to unpack it.")
    with tarfile.open(fileobj=io.BytesIO(tar_bytes([d("e")])), mode="r|") as tf, pytest.raises(SourceError) as e:
        w.apply(tf, where="img: layer 3")
    assert str(e.value) == ("img: layer 3 holds more than 3 files, more than a test image (docs/limits.md); "
                            "refusing to unpack it.")


@pytest.mark.parametrize("compress", ["none", "gz", "xz", "zst"])
def test_a_tarball_is_one_layer_and_its_listing_pins_it(tmp_path, compress):
    layer = [d("app"), f("app/run", "#!/bin/sh\n", 0o755), sym("app/py", "/usr/bin/python3"),
             f("app/.wh.ignored"), f("top", "x")]
    raw = tar_bytes(layer)
    data = {"none": raw, "gz": gzip.compress(raw), "xz": lzma.compress(raw),
            "zst": subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout}[compress]
    (tmp_path / "in.tar").write_bytes(data)
    extract_tarball(tmp_path / "in.tar", tmp_path / "t", epoch=EPOCH)
    h = hashlib.sha256(b"#!/bin/sh\n").hexdigest()
    x = hashlib.sha256(b"x").hexdigest()
    assert tree_listing(tmp_path / "t") == (
        b"blindbox-tree 1\n"
        b"/ d 0755 0 -\n"
        b"/app d 0755 0 -\n"
        b"/app/py l 0777 16 /usr/bin/python3\n"
        b"/app/run f 0755 10 " + h.encode() + b"\n"
        b"/top f 0644 1 " + x.encode() + b"\n")
    assert tree_digest(tmp_path / "t") == hashlib.sha256(tree_listing(tmp_path / "t")).hexdigest()


def test_a_damaged_tarball_leaves_nothing(tmp_path):
    (tmp_path / "bad.tar.gz").write_bytes(gzip.compress(tar_bytes([f("a", os.urandom(5000))]))[:2000])
    with pytest.raises(SourceError) as e:
        extract_tarball(tmp_path / "bad.tar.gz", tmp_path / "t", epoch=EPOCH)
    assert str(e.value).startswith(f"{tmp_path / 'bad.tar.gz'}: its tar stream is corrupt (")
    assert str(e.value).endswith("); give an uncompressed, gzip, xz, bzip2 or zstd tar archive.")
    assert not (tmp_path / "t").exists()


def test_listing_quotes_names_sorts_bytes_and_ignores_owner_and_time(tmp_path):
    t = tmp_path / "t"
    t.mkdir()
    (t / "a").mkdir()
    (t / "a b").write_bytes(b"")
    (t / "a-b").write_bytes(b"")
    (t / "a" / "b").write_bytes(b"")
    (t / "100%").write_bytes(b"")
    (t / os.fsdecode(b"caf\xe9\n")).write_bytes(b"")
    os.symlink("target with space", t / "l")
    for p in [t, *t.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o600, follow_symlinks=False) if not p.is_symlink() else None
    empty = hashlib.sha256(b"").hexdigest().encode()
    listing = tree_listing(t).splitlines()
    assert [line.split(b" ")[0] for line in listing[1:]] == \
        [b"/", b"/100%25", b"/a", b"/a%20b", b"/a-b", b"/a/b", b"/caf%E9%0A", b"/l"]
    assert listing[2] == b"/100%25 f 0600 0 " + empty
    assert listing[-1] == b"/l l 0777 17 target%20with%20space"
    before = tree_digest(t)
    os.utime(t / "a" / "b", (1, 1))
    os.utime(t, (2, 2))
    assert tree_digest(t) == before
    os.chmod(t / "a" / "b", 0o644)
    assert tree_digest(t) != before


def test_listing_refuses_special_files_and_too_many_entries(tmp_path):
    t = tmp_path / "t"
    t.mkdir()
    (t / "a").write_text("a")
    with pytest.raises(SourceError) as e:
        tree_listing(t, max_entries=1)
    assert str(e.value) == f"{t} holds more than 1 entries (docs/limits.md); a root filesystem this large is refused."
    os.mkfifo(t / "fifo")
    with pytest.raises(SourceError) as e:
        tree_listing(t)
    assert str(e.value) == (f"{t}: /fifo is not a directory, regular file or symlink (a device, FIFO or socket); "
                            f"remove it from the tree.")


def test_directories_no_member_names_are_0755_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        _apply(tmp_path / "t", [f("implied/parent/file", "x")])
    finally:
        os.umask(old)
    assert tree_listing(tmp_path / "t").splitlines()[1:4] == \
        [b"/ d 0755 0 -", b"/implied d 0755 0 -", b"/implied/parent d 0755 0 -"]


def test_a_directory_replaced_by_a_link_out_is_never_followed_to_set_modes(tmp_path):
    outside = tmp_path / "host"
    (outside / "y").mkdir(parents=True)
    os.chmod(outside / "y", 0o700)
    os.utime(outside / "y", (5, 5))
    _apply(tmp_path / "t", [d("x"), d("x/y", 0o555)], [sym("x", str(outside))])
    assert snapshot(tmp_path / "t") == {"x": ("l", str(outside))}
    assert os.stat(outside / "y").st_mode & 0o7777 == 0o700 and os.stat(outside / "y").st_mtime == 5
    # a lower directory holding a link to a host directory is removed without touching the host
    _apply(tmp_path / "u", [d("a"), sym("a/b", "/")], [f("a", "file")])
    assert snapshot(tmp_path / "u") == {"a": ("f", 0o644, b"file")}
