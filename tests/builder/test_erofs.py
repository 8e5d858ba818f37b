"""EROFS images written by builder.steps.erofs, checked and read back by Debian's erofs-utils.

Every image must pass ``fsck.erofs``; ``fsck.erofs --extract`` must give back the input tree
(content, modes with setuid/setgid/sticky, uid/gid, symlink targets); hard links are
checked with ``dump.erofs`` (one nid, the right link count), since erofs-utils 1.5
extracts each name as its own file.  ``dump.erofs --path`` looks names up the way the
kernel does (binary search over sorted blocks, then dirents).
"""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.steps import erofs
from measure.errors import BlindboxError
from tests.tools import require

PARAMS = erofs.ErofsParams(epoch=1_700_000_000, uuid=uuid.UUID("0b6c3f5e-8d21-4c7a-9e0f-2a4b6d8c1e35"),
                           volume_name=b"rootfs")
MIB = 1 << 20


def fsck() -> str:
    return require("fsck.erofs", "erofs-utils")


def dump() -> str:
    return require("dump.erofs", "erofs-utils")


def check(image: Path) -> None:
    run = subprocess.run([fsck(), str(image)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def extract(image: Path, dest: Path, *opts: str) -> Path:
    run = subprocess.run([fsck(), f"--extract={dest}", *opts, str(image)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return dest


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (``.`` included): type, mode, uid, gid, content or target."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames] if Path(dirpath) == root else [*dirnames, *filenames]:
            p = Path(dirpath, name) if name != "." else root
            st_ = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st_.st_mode):
                body: bytes | None = os.fsencode(os.readlink(p))
            elif stat.S_ISREG(st_.st_mode):
                body = p.read_bytes()
            else:
                body = None
            out[rel] = (stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid, body)
    return out


def assert_round_trip(src: Path, image: Path, work: Path) -> None:
    """The image passes fsck, and both extractions give back ``src`` (owners, then modes)."""
    check(image)
    want = tree(src)
    owners = tree(extract(image, work / "owners"))
    perms = tree(extract(image, work / "perms", "--preserve-perms", "--no-preserve-owner"))
    assert set(owners) == set(want) == set(perms)
    for rel, (kind, mode, uid, gid, body) in want.items():
        assert owners[rel][0] == kind, rel
        assert owners[rel][4] == body, rel
        assert owners[rel][2:4] == (uid, gid), rel
        if kind != stat.S_IFLNK:  # a symlink's own mode is always 0777 on Linux
            assert perms[rel][1] == mode, rel


def build(src: Path, image: Path, params: erofs.ErofsParams = PARAMS) -> erofs.ErofsImage:
    result = erofs.write_image_from_directory(src, image, params)
    assert image.stat().st_size == result.blocks * erofs.BLOCK_SIZE == result.size
    return result


def inode_info(image: Path, path: str) -> dict[str, str]:
    run = subprocess.run([dump(), f"--path={path}", str(image)], capture_output=True, text=True)
    info = dict(re.findall(r"(NID|Links|Size|Inode size): (\d+)", run.stdout))
    # dump.erofs 1.5 exits 0 even when the path is not found
    assert run.returncode == 0 and "NID" in info, f"{path}: {run.stdout}{run.stderr}"
    return info


def read_dir(data: bytes, nid: int) -> list[tuple[bytes, int]]:
    """(name, nid) of a compact FLAT_PLAIN directory inode's dirents, block by block."""
    inode = erofs.CompactInode.from_bytes(data[nid * 32:nid * 32 + 32])
    assert inode.i_format == 0 and stat.S_ISDIR(inode.i_mode)
    out: list[tuple[bytes, int]] = []
    for block in range(-(-inode.i_size // 4096)):
        base = (inode.raw_blkaddr + block) * 4096
        end = min(inode.i_size - block * 4096, 4096)
        chunk = data[base:base + end]
        count = erofs.Dirent.from_bytes(chunk[:12]).nameoff // 12
        dirents = [erofs.Dirent.from_bytes(chunk[i * 12:i * 12 + 12]) for i in range(count)]
        offsets = [d.nameoff for d in dirents] + [end]
        out += [(chunk[offsets[i]:offsets[i + 1]], d.nid) for i, d in enumerate(dirents)]
    return out


# -- round trips ---------------------------------------------------------------------------

def test_empty_root(tmp_path):
    image = tmp_path / "empty.img"
    result = erofs.write_image([], image, PARAMS)
    check(image)
    # block 0: superblock and root inode; block 1: the root's "." and ".." entries
    assert (result.blocks, result.inodes) == (2, 1)
    extracted = tree(extract(image, tmp_path / "x"))
    assert list(extracted) == ["."]
    assert extracted["."][:4] == (stat.S_IFDIR, 0o755, 0, 0)
    sb = erofs.SuperBlock.from_bytes(image.read_bytes()[1024:1152])
    assert (sb.magic, sb.root_nid, sb.inos, sb.blocks, sb.build_time) == (0xE0F5E1E2, 36, 1, 2, PARAMS.epoch)
    assert sb.uuid == PARAMS.uuid.bytes and sb.volume_name == b"rootfs".ljust(16, b"\0")


def test_nested_dirs_files_symlinks_and_special_modes(tmp_path):
    src = tmp_path / "src"
    deep = src / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"leaf\n")
    (src / "a" / "empty").write_bytes(b"")
    (src / "a" / "page").write_bytes(bytes(range(256)) * 16)           # exactly 4096
    (src / "a" / "page+1").write_bytes(b"\x01" * 4096 + b"\x02")        # 4097
    (src / "mib").write_bytes(os.urandom(MIB))
    os.symlink("b/c/d/leaf", src / "a" / "short")
    long_target = ("x" * 200 + "/") * 20 + "y" * 75  # 4095 bytes: the longest target
    os.symlink(long_target, src / "a" / "long")
    os.symlink("/absolute/dangling", src / "dangling")
    (src / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "suid", 0o4755)
    (src / "sgid").write_bytes(b"")
    os.chmod(src / "sgid", 0o2711)
    (src / "tmp").mkdir()
    os.chmod(src / "tmp", 0o1777)
    (src / "shared").mkdir()
    os.chmod(src / "shared", 0o2775)
    os.chown(src / "shared", 0, 50)
    (src / "private").write_bytes(b"secret")
    os.chmod(src / "private", 0o600)
    os.chown(src / "private", 1000, 1000)
    (src / "wide-ids").write_bytes(b"needs the 64-byte inode")
    os.chown(src / "wide-ids", 70000, 123456)
    image = tmp_path / "img"
    build(src, image)
    assert_round_trip(src, image, tmp_path)
    assert inode_info(image, "/wide-ids")["Inode size"] == "64"
    assert inode_info(image, "/private")["Inode size"] == "32"
    assert inode_info(image, "/a/long")["Size"] == "4095"


def test_names_of_one_and_255_bytes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "Z" * 255, "é" * 127, "-", "!"):
        (src / name).write_bytes(name.encode())
    (src / ("d" * 255)).mkdir()
    (src / ("d" * 255) / ("f" * 255)).write_bytes(b"x")
    image = tmp_path / "img"
    build(src, image)
    assert_round_trip(src, image, tmp_path)
    assert inode_info(image, "/" + "d" * 255 + "/" + "f" * 255)["Size"] == "1"


def test_a_directory_spanning_several_blocks_is_sorted_for_lookup(tmp_path):
    src = tmp_path / "src"
    big = src / "big"
    big.mkdir(parents=True)
    names = [f"{prefix}{i:03d}-{'n' * (i % 40)}" for i in range(300) for prefix in ("", "-")][:500]
    for n in names:
        (big / n).write_bytes(n.encode())
    (big / "sub").mkdir()
    image = tmp_path / "img"
    build(src, image)
    assert_round_trip(src, image, tmp_path)
    info = inode_info(image, "/big")
    assert int(info["Size"]) > 4 * erofs.BLOCK_SIZE
    assert info["Links"] == "3"
    # The kernel binary-searches the blocks by their first name, then the dirents of one
    # block; dump.erofs looks up the same way, so every name must be found.
    for n in [min(names), max(names), *names[::37]]:
        assert inode_info(image, f"/big/{n}")["Size"] == str(len(n.encode())), n
    assert inode_info(image, "/big/sub")["Size"] == "27"  # "." and "..": two dirents, three bytes of names
    # Parse the directory ourselves: names sorted bytewise, '.' and '..' among them, and no
    # dirent crossing a block.
    seen = [name for name, _ in read_dir(image.read_bytes(), int(info["NID"]))]
    assert seen == sorted(seen) and b"." in seen and b".." in seen and b"-000-" in seen
    assert seen.index(b"-000-") < seen.index(b".")  # '-' sorts before '.'
    assert len(seen) == len(names) + 3


def test_no_inode_straddles_a_block_boundary(tmp_path):
    """Compact and extended inodes mixed so that the metadata spans blocks 0 to 2."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(150):
        (src / f"f{i:03d}").write_bytes(b"x" * i)
        if i % 3:
            os.chown(src / f"f{i:03d}", 100000 + i, 0)  # a wide uid: the 64-byte inode
    image = tmp_path / "img"
    build(src, image)
    assert_round_trip(src, image, tmp_path)
    data = image.read_bytes()
    sizes = {}
    for name, nid in read_dir(data, 36):
        if name.startswith(b"f"):
            extended = data[nid * 32] & 1
            sizes[nid] = 64 if extended else 32
            assert extended == (int(name[1:]) % 3 != 0), name
    assert max(sizes) * 32 > 2 * 4096
    for nid, size in sizes.items():
        assert nid * 32 % 4096 + size <= 4096, nid


def test_hard_links_share_one_inode(tmp_path):
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "busybox").write_bytes(b"\x7fELF" + bytes(5000))
    os.chmod(src / "bin" / "busybox", 0o4755)
    for name in ("sh", "ls", "cat"):
        os.link(src / "bin" / "busybox", src / "bin" / name)
    os.link(src / "bin" / "busybox", src / "top")
    image = tmp_path / "img"
    result = build(src, image)
    assert_round_trip(src, image, tmp_path)
    infos = [inode_info(image, p) for p in ("/bin/busybox", "/bin/sh", "/bin/ls", "/bin/cat", "/top")]
    assert {i["NID"] for i in infos} == {infos[0]["NID"]}
    assert infos[0]["Links"] == "5"
    assert result.inodes == 3  # root, bin, busybox


def test_in_memory_entries_with_implicit_parents_and_hard_links(tmp_path):
    E, K = erofs.Entry, erofs.Kind
    entries = [
        E("usr/bin/python3", K.FILE, 0o755, data=b"py"),
        E("usr/bin/python", K.SYMLINK, data=b"python3"),
        E("usr/bin/py3", K.HARDLINK, link="usr/bin/python3"),
        E("etc", K.DIR, 0o700, uid=5, gid=6),
        E(".", K.DIR, 0o555),
    ]
    image = tmp_path / "img"
    erofs.write_image(entries, image, PARAMS)
    check(image)
    got = tree(extract(image, tmp_path / "owners"))
    perms = tree(extract(image, tmp_path / "perms", "--preserve-perms", "--no-preserve-owner"))
    assert got["usr/bin/python3"][4] == got["usr/bin/py3"][4] == b"py"
    assert got["usr/bin/python"][4] == b"python3"
    assert got["etc"][2:4] == (5, 6)
    assert (perms["."][1], perms["usr"][1], perms["etc"][1]) == (0o555, 0o755, 0o700)
    assert inode_info(image, "/usr/bin/py3")["NID"] == inode_info(image, "/usr/bin/python3")["NID"]


# -- reproducibility -----------------------------------------------------------------------

def _make_tree(root: Path, reverse: bool) -> None:
    files = {"etc/os-release": b"ID=blindbox\n", "usr/bin/app": b"\x7fELF app", "usr/lib/x/y": bytes(9000),
             "srv/data": b"d" * 4096}
    dirs = sorted({str(Path(p).parent) for p in files} | {"usr", "srv/empty"}, reverse=reverse)
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for p, body in sorted(files.items(), reverse=reverse):
        (root / p).write_bytes(body)
    for d in ["etc", "usr", "usr/bin", "usr/lib", "usr/lib/x", "srv", "srv/empty", "."]:
        os.chmod(root / d, 0o755)
    for p in files:
        os.chmod(root / p, 0o755 if "bin" in p else 0o644)
    os.symlink("usr/bin", root / "bin")


def test_same_tree_gives_identical_bytes_whatever_the_order_umask_and_place(tmp_path):
    images = []
    for i, (reverse, umask) in enumerate([(False, 0o022), (True, 0o077)]):
        src = tmp_path.joinpath(f"place{i}", *["nested"] * i, "src")
        src.mkdir(parents=True)
        old = os.umask(umask)
        try:
            _make_tree(src, reverse)
            image = tmp_path / f"{i}.img"
            build(src, image)
        finally:
            os.umask(old)
        images.append(image.read_bytes())
    assert images[0] == images[1]
    # In-memory entries in any order give the same bytes too.
    entries = erofs.entries_from_directory(tmp_path / "place0" / "src")
    erofs.write_image(list(reversed(entries)), tmp_path / "rev.img", PARAMS)
    assert (tmp_path / "rev.img").read_bytes() == images[0]


def test_one_changed_byte_or_parameter_changes_the_image(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _make_tree(src, False)
    build(src, tmp_path / "a.img")
    body = bytearray((src / "usr/lib/x/y").read_bytes())
    body[4321] ^= 1
    (src / "usr/lib/x/y").write_bytes(body)
    build(src, tmp_path / "b.img")
    a, b = (tmp_path / "a.img").read_bytes(), (tmp_path / "b.img").read_bytes()
    assert len(a) == len(b) and [i for i in range(len(a)) if a[i] != b[i]] != []
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    assert len(diff) == 1  # exactly that byte, in the file's data block
    for params in (erofs.ErofsParams(epoch=PARAMS.epoch + 1, uuid=PARAMS.uuid, volume_name=b"rootfs"),
                   erofs.ErofsParams(epoch=PARAMS.epoch, uuid=uuid.UUID(int=1), volume_name=b"rootfs"),
                   erofs.ErofsParams(epoch=PARAMS.epoch, uuid=PARAMS.uuid, volume_name=b"other")):
        build(src, tmp_path / "c.img", params)
        assert (tmp_path / "c.img").read_bytes() != b


# -- refusals ------------------------------------------------------------------------------

def _refused(call, *substrings: str) -> erofs.ErofsError | BlindboxError:
    with pytest.raises(BlindboxError) as info:
        call()
    assert info.value.exit_code == 2
    for s in substrings:
        assert s in str(info.value)
    return info.value


@pytest.mark.parametrize("kind", ["fifo", "socket", "chardev"])
def test_special_files_in_the_staging_tree_are_refused(tmp_path, kind):
    src = tmp_path / "src"
    (src / "dev").mkdir(parents=True)
    node = src / "dev" / kind
    if kind == "fifo":
        os.mkfifo(node)
        what = "a FIFO"
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(node))
        sock.close()
        what = "a socket"
    else:
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        what = "a device node"
    image = tmp_path / "img"
    err = _refused(lambda: build(src, image), str(node), what, "remove it")
    assert isinstance(err, erofs.ErofsError) and err.path == str(node)
    assert not image.exists() and os.listdir(tmp_path) == ["src"]  # nothing half-written


@pytest.mark.parametrize(("entries", "message"), [
    ([erofs.Entry("../etc", erofs.Kind.FILE)], "'../etc' is not a relative path"),
    ([erofs.Entry("/etc", erofs.Kind.FILE)], "is not a relative path"),
    ([erofs.Entry("a//b", erofs.Kind.FILE)], "is not a relative path"),
    ([erofs.Entry("n" * 256, erofs.Kind.FILE)], "has a name of 256 bytes"),
    ([erofs.Entry("a", erofs.Kind.FILE), erofs.Entry("a", erofs.Kind.FILE)], "'a' is given twice"),
    ([erofs.Entry("a", erofs.Kind.FILE), erofs.Entry("a/b", erofs.Kind.FILE)], "which is not a directory"),
    ([erofs.Entry("a/b", erofs.Kind.FILE), erofs.Entry("a", erofs.Kind.FILE)], "conflicts with another entry"),
    ([erofs.Entry("h", erofs.Kind.HARDLINK, link="missing")], "names 'missing', which is not"),
    ([erofs.Entry("d", erofs.Kind.DIR), erofs.Entry("h", erofs.Kind.HARDLINK, link="d")], "names 'd', which is not"),
    ([erofs.Entry("s", erofs.Kind.SYMLINK, data=b"")], "has a target of 0 bytes"),
    ([erofs.Entry("s", erofs.Kind.SYMLINK, data=b"x" * 4096)], "has a target of 4096 bytes"),
    ([erofs.Entry("f", erofs.Kind.FILE, mode=0o100644)], "has mode 0o100644"),
    ([erofs.Entry("f", erofs.Kind.FILE, uid=1 << 32)], "outside 0..2**32-1"),
    ([erofs.Entry(".", erofs.Kind.FILE)], "root '.' must be a directory"),
])
def test_bad_entries_are_refused_before_anything_is_written(tmp_path, entries, message):
    image = tmp_path / "img"
    _refused(lambda: erofs.write_image(entries, image, PARAMS), message)
    assert os.listdir(tmp_path) == []


def test_bad_parameters_are_refused():
    _refused(lambda: erofs.ErofsParams(epoch=-1, uuid=PARAMS.uuid), "build time -1")
    _refused(lambda: erofs.ErofsParams(epoch=0, uuid="x"), "not a uuid.UUID")  # type: ignore[arg-type]
    _refused(lambda: erofs.ErofsParams(epoch=0, uuid=PARAMS.uuid, volume_name=b"x" * 17), "at most 16 bytes")


def test_limits_are_enforced(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / str(i)).write_bytes(b"x" * 5000)
    monkeypatch.setattr(erofs, "MAX_EROFS_INODES", 4)
    _refused(lambda: build(src, tmp_path / "img"), "more than 4 entries", "builder/limits.py")
    _refused(lambda: erofs.write_image([erofs.Entry(str(i), erofs.Kind.FILE) for i in range(5)],
                                       tmp_path / "img", PARAMS), "more than 4 entries")
    monkeypatch.setattr(erofs, "MAX_EROFS_INODES", 100)
    monkeypatch.setattr(erofs, "MAX_EROFS_IMAGE_BYTES", 8 * 4096)
    _refused(lambda: build(src, tmp_path / "img"), "would exceed 32768 bytes", "builder/limits.py")
    assert os.listdir(tmp_path) == ["src"]


def test_output_problems_are_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    _refused(lambda: build(src, src / "img"), "lies inside the staging tree")
    _refused(lambda: build(src, tmp_path), "it is a directory")
    _refused(lambda: build(src, tmp_path / "missing" / "img"), "cannot write the EROFS image")
    _refused(lambda: build(src / "f", tmp_path / "img"), "is not a directory")
    _refused(lambda: build(tmp_path / "nope", tmp_path / "img"), "cannot read the staging directory")


def test_a_file_that_changes_size_during_the_build_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"abc")
    entries = erofs.entries_from_directory(src)
    (src / "f").write_bytes(b"abcd")
    _refused(lambda: erofs.write_image(entries, tmp_path / "img", PARAMS), "changed size while the image")
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_an_existing_image_is_replaced_whole(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    image = tmp_path / "img"
    image.write_bytes(b"old")
    build(src, image)
    check(image)
    assert sorted(os.listdir(tmp_path)) == ["img", "src"]


# -- property: random small trees round-trip through fsck.erofs --extract -------------------

_NAMES = st.text(alphabet="ab-!.~_Zé", min_size=1, max_size=10).filter(lambda s: s not in (".", ".."))


def _node(depth: int) -> st.SearchStrategy:
    leaf = st.one_of(
        st.tuples(st.just("file"), st.binary(max_size=5000), st.sampled_from([0o644, 0o755, 0o4755, 0o600])),
        st.tuples(st.just("link"), st.text(alphabet="ab/.", min_size=1, max_size=300), st.just(0o777)),
    )
    if depth == 0:
        return leaf
    return st.one_of(leaf, st.tuples(st.just("dir"), st.dictionaries(_NAMES, _node(depth - 1), max_size=6),
                                     st.sampled_from([0o755, 0o1777, 0o2750])))


def _materialize(root: Path, children: dict, ids: st.DataObject) -> None:
    for name, (kind, body, mode) in children.items():
        p = root / name
        if kind == "dir":
            p.mkdir()
            _materialize(p, body, ids)
        elif kind == "file":
            p.write_bytes(body)
        else:
            os.symlink(body, p)
            continue
        os.chmod(p, mode)
        os.chown(p, ids.draw(st.sampled_from([0, 1, 65534, 70000])), ids.draw(st.sampled_from([0, 7, 100000])))


@settings(max_examples=12, deadline=None)
@given(top=st.dictionaries(_NAMES, _node(2), max_size=8), ids=st.data())
def test_random_trees_round_trip(top, ids):
    with tempfile.TemporaryDirectory(prefix="erofs-prop-") as tmp:
        work = Path(tmp)
        src = work / "src"
        src.mkdir()
        _materialize(src, top, ids)
        image = work / "img"
        build(src, image)
        assert_round_trip(src, image, work)
