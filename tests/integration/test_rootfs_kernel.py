"""Our EROFS writer and dm-verity hasher, checked by a real kernel: bookworm's, under QEMU TCG.

``builder.steps.erofs`` writes a small tree (a 1 MiB pseudo-random file, an empty file,
nested directories, a symlink) and ``measure.verity`` hashes the image into a separate
hash file and renders the ``dmsetup`` table.  One initrd (busybox-static, the modules
``virtio_pci``, ``virtio_blk``, ``dm-mod``, ``dm-verity`` and ``erofs`` with their
dependencies, and Debian's ``dmsetup`` with its ELF library closure) reads the tables from
``/proc/cmdline``, as the application root filesystem's init will, creates each verity
device with ``dmsetup create --readonly --noudevsync`` (``DM_DISABLE_UDEV=1``: there is
no udev in the initrd, libdevmapper makes the ``/dev/mapper`` node itself), mounts it read-only as erofs and prints the
SHA-256 of every file and the symlink's target.

One boot (a TCG boot costs 10-20 s) carries three verity devices, each a pair of read-only
virtio-blk drives:

``clean``     the image and its hash file: every digest must equal the host's;
``data``      the image with one byte of the 1 MiB file flipped, the clean hash file:
              reading that file fails and the kernel reports that exact data block;
``hash``      the clean image, the hash file with one byte flipped in the level-0
              hash block covering that data block: reading fails and the kernel reports
              that exact hash (metadata) block.

The kernel names each verity device in its messages by the data disk's major:minor, which
the init prints for each disk, so every message is attributed to its device.
"""

from __future__ import annotations

import hashlib
import random
import re
import uuid

import pytest

from builder.boot import smoke_boot
from builder.steps import erofs
from builder.steps.initrd import DEFAULT_APPLETS, build_initrd
from builder.steps.kernel import find_kernel
from measure import verity
from tests import realinputs

pytestmark = [pytest.mark.integration, pytest.mark.network]

EPOCH = 1735689600
APPEND = "console=ttyS0 panic=-1"
MODULES = ["virtio_pci", "virtio_blk", "dm-mod", "dm-verity", "erofs"]
SALT = bytes.fromhex("5a" * 16 + "0f1e2d3c4b5a69788796a5b4c3d2e1f0")
VERITY_UUID = uuid.UUID("2b9a0c1e-7d44-4b1f-9a63-5f0e8c2d7a10")
EROFS_UUID = uuid.UUID("c0ffee00-1234-4567-89ab-cdef01234567")
BIG = 1 << 20
#: Which block of the 1 MiB file to corrupt: far enough in that its level-0 hash block
#: covers only that file's blocks (not the superblock, inodes or directories).
BIG_BLOCK = 200
#: Devices: name -> (data disk, hash disk), as the guest sees them (drive order).
DEVICES = {"clean": ("vda", "vdb"), "data": ("vdc", "vdd"), "hash": ("vde", "vdf")}
FILES = ("big.bin", "dir/empty", "dir/sub/deep.txt", "hello.txt")
LINK = ("link", b"dir/sub/deep.txt")

INIT = r"""#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/printk
echo BLINDBOX-BOOT-OK
for m in @MODULES@; do
  if out=$(modprobe $m 2>&1); then echo "BLINDBOX-MODULE $m loaded"
  else echo "BLINDBOX-MODULE $m failed: $(echo "$out" | tr '\n' ' ')"; fi
done
for d in @DISKS@; do
  n=0; while [ ! -b /dev/$d ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
  echo "BLINDBOX-DISK $d $(cat /sys/block/$d/dev 2>&1) $(cat /sys/block/$d/size 2>&1) $(cat /sys/block/$d/ro 2>&1)"
done
DM_DISABLE_UDEV=1
export DM_DISABLE_UDEV
for name in @NAMES@; do
  table=$(sed -n "s/.*blindbox\.verity\.$name=\"\([^\"]*\)\".*/\1/p" /proc/cmdline)
  echo "BLINDBOX-TABLE $name $table"
  out=$(dmsetup create --readonly --noudevsync "$name" --table "$table" 2>&1); rc=$?
  echo "BLINDBOX-CREATE $name $rc $(echo "$out" | tr '\n' ' ')"
  mkdir -p /mnt/$name
  out=$(mount -t erofs -o ro /dev/mapper/$name /mnt/$name 2>&1); rc=$?
  echo "BLINDBOX-MOUNT $name $rc $(echo "$out" | tr '\n' ' ')"
  for f in @FILES@; do
    out=$(sha256sum /mnt/$name/$f 2>&1); rc=$?
    set -- $out
    if [ $rc = 0 ]; then echo "BLINDBOX-SHA256 $name $f $1"
    else echo "BLINDBOX-SHA256 $name $f FAILED $(echo "$out" | tr '\n' ' ')"; fi
  done
  echo "BLINDBOX-LINK $name @LINK@ $(readlink /mnt/$name/@LINK@ 2>&1)"
  find /mnt/$name | sort | sed "s|^/mnt/$name|BLINDBOX-FIND $name |"
  echo "BLINDBOX-STATUS $name $(dmsetup status $name 2>&1 | tr '\n' ' ')"
done
dmesg | grep -i verity | sed 's/^/BLINDBOX-DMESG /'
echo BLINDBOX-POWEROFF
poweroff -f
sleep 5
echo o > /proc/sysrq-trigger
while :; do sleep 60; done
"""


def render_init() -> bytes:
    disks = [d for pair in DEVICES.values() for d in pair]
    text = (INIT.replace("@MODULES@", " ".join(MODULES)).replace("@DISKS@", " ".join(disks))
            .replace("@NAMES@", " ".join(DEVICES)).replace("@FILES@", " ".join(FILES))
            .replace("@LINK@", LINK[0]))
    return text.encode()


def library_trees(archive, name: str, suite: str = "bookworm"):
    """The unpacked package ``name`` and its lib* Depends closure (where its ELF libraries are)."""
    seen: dict[str, object] = {}
    todo = [name]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen[n] = pkg = archive.resolve(n, suite)
        todo += [d for d in archive.depends(pkg) if d.startswith("lib")]
    return [archive.unpack(pkg) for pkg in seen.values()]


@pytest.fixture(scope="module")
def initrd(tmp_path_factory):
    tree = realinputs.kernel_tree("bookworm")
    kernel = find_kernel(tree)
    busybox, _ = realinputs.busybox_static()
    trees = library_trees(realinputs.archive(), "dmsetup")
    built = build_initrd(busybox=busybox, source_date_epoch=EPOCH, kernel_tree=tree, kernel_release=kernel.release,
                         modules=MODULES, init_script=render_init(),
                         binaries=[(trees[0] / "sbin/dmsetup", "/sbin/dmsetup", trees)],
                         applets=sorted(set(DEFAULT_APPLETS) | {"sort", "readlink", "find", "sed", "tr"}),
                         deflate=realinputs.pinned_deflate())
    assert built.modules is not None and not built.modules.builtin  # all are modules in bookworm's kernel
    path = tmp_path_factory.mktemp("initrd") / "initrd.gz"
    path.write_bytes(built.data)
    return kernel, path


def write_tree(root):
    big = random.Random(20250101).randbytes(BIG)
    (root / "dir/sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(big)
    (root / "dir/empty").write_bytes(b"")
    (root / "dir/sub/deep.txt").write_bytes(b"nested three levels down\n")
    (root / "hello.txt").write_bytes(b"hello from an erofs image behind dm-verity\n")
    (root / LINK[0]).symlink_to(LINK[1].decode())
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in FILES}


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_erofs_on_dm_verity_in_a_real_kernel(initrd, tmp_path):
    kernel, initrd_path = initrd
    root = tmp_path / "tree"
    root.mkdir()
    digests = write_tree(root)

    image = tmp_path / "clean.img"
    written = erofs.write_image_from_directory(root, image, erofs.ErofsParams(epoch=EPOCH, uuid=EROFS_UUID))
    params = verity.VerityParams(salt=SALT, uuid=VERITY_UUID)
    hashes = tmp_path / "clean.hash"
    tree = verity.format_files(image, hashes, params)
    assert tree.data_blocks == written.blocks

    # where the corrupted block lies: in the image, and in level 0 of the hash tree
    raw = image.read_bytes()
    big = (root / "big.bin").read_bytes()
    start = raw.find(big[:4096])
    assert start > 0 and start % 4096 == 0 and raw[start:start + BIG] == big
    block = start // 4096 + BIG_BLOCK
    level0 = tree.levels[0]
    per = params.hashes_per_block
    assert len(tree.levels) == 2 and block // per == 1  # that hash block covers only big.bin's blocks
    assert start // 4096 <= per and start // 4096 + BIG // 4096 >= 2 * per
    hash_block = level0.start_block + block // per

    data_img = tmp_path / "data.img"
    data_img.write_bytes(raw)
    flip(data_img, block * 4096 + 1234)
    hash_bad = tmp_path / "hash.hash"
    hash_bad.write_bytes(hashes.read_bytes())
    flip(hash_bad, hash_block * params.hash_block_size + (block % per) * params.digest_slot + 7)
    # our own verifier sees both
    assert not verity.verify_files(data_img, hashes, params, tree.root_hash).ok
    assert not verity.verify_files(image, hash_bad, params, tree.root_hash).ok

    drives = {"clean": (image, hashes), "data": (data_img, hashes), "hash": (tmp_path / "image2.img", hash_bad)}
    drives["hash"][0].write_bytes(raw)
    cmdline = APPEND
    for name, (data_dev, hash_dev) in DEVICES.items():
        cmdline += f' blindbox.verity.{name}="{tree.table("/dev/" + data_dev, "/dev/" + hash_dev)}"'
    r = smoke_boot(kernel.bzimage, initrd_path, cmdline.encode(), firmware=None,
                   drives=[p for pair in drives.values() for p in pair])
    console = r.console.replace("\r", "")
    tail = console[-4000:]

    assert r.markers["BLINDBOX-MODULE"] == tuple(f"{m} loaded" for m in MODULES), tail
    disks = {}
    for line in r.markers["BLINDBOX-DISK"]:
        d, devno, sectors, ro = line.split()
        disks[d] = devno
        assert ro == "1", line  # read-only drives
    for name in DEVICES:
        assert r.markers["BLINDBOX-TABLE"][list(DEVICES).index(name)].split(" ", 1)[1] == tree.table(
            *(f"/dev/{d}" for d in DEVICES[name])), tail
    assert r.markers["BLINDBOX-CREATE"] == tuple(f"{n} 0" for n in DEVICES), tail
    assert r.markers["BLINDBOX-MOUNT"] == tuple(f"{n} 0" for n in DEVICES), tail
    assert r.markers["BLINDBOX-LINK"] == tuple(f"{n} link {LINK[1].decode()}" for n in DEVICES), tail

    sums: dict[tuple[str, str], str] = {}
    for line in r.markers["BLINDBOX-SHA256"]:
        name, f, value = line.split(" ", 2)
        sums[name, f] = value
    expected_find = ["", "/big.bin", "/dir", "/dir/empty", "/dir/sub", "/dir/sub/deep.txt", "/hello.txt", "/link"]
    finds: dict[str, list[str]] = {}
    for line in r.markers["BLINDBOX-FIND"]:
        name, _, path = line.partition(" ")
        finds.setdefault(name, []).append(path)
    status = dict(line.split(" ", 1) for line in r.markers["BLINDBOX-STATUS"])
    messages = r.markers.get("BLINDBOX-DMESG", ())

    # clean: every byte the kernel read was verified and equals ours
    for f in FILES:
        assert sums["clean", f] == digests[f], (f, tail)
    assert finds["clean"] == expected_find
    assert status["clean"].split()[-1] == "V", status  # verity status: V verified, C corruption seen
    assert not [m for m in messages if f"verity: {disks['vda']}: " in m], messages

    # data: the flipped byte's block is refused, the other files still read
    assert sums["data", "big.bin"].startswith("FAILED"), sums
    assert "I/O error" in sums["data", "big.bin"] or "Input/output error" in sums["data", "big.bin"]
    for f in FILES[1:]:
        assert sums["data", f] == digests[f]
    assert status["data"].split()[-1] == "C", status
    assert any(f"verity: {disks['vdc']}: data block {block} is corrupted" in m for m in messages), messages

    # hash: a flipped digest in level 0 is caught against level 1 (a metadata block)
    assert sums["hash", "big.bin"].startswith("FAILED"), sums
    for f in FILES[1:]:
        assert sums["hash", f] == digests[f]
    assert status["hash"].split()[-1] == "C", status
    assert any(f"verity: {disks['vde']}: metadata block {hash_block} is corrupted" in m for m in messages), \
        messages
    assert re.search(r"device-mapper: verity: \d+:\d+: (data|metadata) block \d+ is corrupted", console)
