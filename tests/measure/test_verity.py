"""dm-verity (measure.verity) byte for byte against veritysetup, plus the published vector."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from measure import verity
from measure.errors import InputError
from tests.tools import require

UUID = uuid.UUID("5f1e8a2c-0d4b-4e6f-9a7c-3b2d1e0f4a5b")
SALT = bytes.fromhex("9c1f3a7be0d245866f0c2e9d4b7a1835e6c0f2a9d8b3471560ae2c9f1d7b4e03")


def pseudo_random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def veritysetup(data: Path, hash_: Path, params: verity.VerityParams, data_blocks: int | None = None) -> str:
    """Run ``veritysetup format`` with ``params``; return the root hash it prints (hex)."""
    tool = require("veritysetup", "cryptsetup-bin")
    args = [tool, "format", str(data), str(hash_), "--format", "1", "--hash", params.algorithm,
            "--salt", params.salt.hex() or "-",
            "--data-block-size", str(params.data_block_size),
            "--hash-block-size", str(params.hash_block_size)]
    if params.superblock:
        args += ["--uuid", str(params.uuid)]
    else:
        args.append("--no-superblock")
    if params.hash_offset:
        args += ["--hash-offset", str(params.hash_offset)]
    if data_blocks is not None:
        args += ["--data-blocks", str(data_blocks)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    found = re.search(r"^Root hash:\s*([0-9a-f]+)$", out, re.M)
    assert found, out
    return found.group(1)


def compare(tmp_path: Path, data_bytes: bytes, params: verity.VerityParams) -> verity.VerityTree:
    """Format the same data with both; assert identical hash files and root hashes."""
    data = tmp_path / "data.img"
    data.write_bytes(data_bytes)
    theirs, ours = tmp_path / "theirs.hash", tmp_path / "ours.hash"
    root = veritysetup(data, theirs, params)
    tree = verity.format_files(data, ours, params)
    assert tree.root_hash.hex() == root
    assert ours.read_bytes() == theirs.read_bytes()
    assert tree.hash_end == theirs.stat().st_size
    return tree


@pytest.mark.parametrize("superblock", [True, False], ids=["superblock", "no-superblock"])
@pytest.mark.parametrize("blocks", [1, 127, 128, 129, 16384, 16385])
def test_matches_veritysetup(tmp_path, blocks, superblock):
    params = verity.VerityParams(salt=SALT, uuid=UUID, superblock=superblock)
    tree = compare(tmp_path, pseudo_random(blocks * 4096, blocks), params)
    assert tree.data_blocks == blocks
    assert tree.hash_start_block == (1 if superblock else 0)
    assert len(tree.levels) == (0 if blocks == 1 else 1 if blocks <= 128 else 2 if blocks <= 16384 else 3)


@pytest.mark.parametrize("superblock", [True, False], ids=["superblock", "no-superblock"])
def test_matches_veritysetup_512_byte_blocks(tmp_path, superblock):
    params = verity.VerityParams(data_block_size=512, hash_block_size=512, salt=SALT, uuid=UUID,
                                 superblock=superblock)
    tree = compare(tmp_path, pseudo_random(300 * 512, 512), params)
    assert [level.blocks for level in tree.levels] == [19, 2, 1]  # 16 sha256 digests per block


@pytest.mark.parametrize("algorithm", ["sha1", "sha512"])
def test_matches_veritysetup_other_algorithms(tmp_path, algorithm):
    params = verity.VerityParams(data_block_size=1024, hash_block_size=2048, algorithm=algorithm,
                                 salt=SALT[:7], uuid=UUID)
    compare(tmp_path, pseudo_random(700 * 1024, 7), params)


def test_empty_and_longest_salt_match_veritysetup(tmp_path):
    compare(tmp_path, pseudo_random(5 * 4096, 1), verity.VerityParams(salt=b"", uuid=UUID))
    compare(tmp_path, pseudo_random(5 * 4096, 2), verity.VerityParams(salt=bytes(range(256)), uuid=UUID))


@pytest.mark.parametrize("superblock", [True, False], ids=["superblock", "no-superblock"])
def test_hash_area_appended_after_the_data_matches_veritysetup(tmp_path, superblock):
    data_bytes = pseudo_random(200 * 4096, 200)
    offset = 200 * 4096 + (4096 if superblock else 8192)
    params = verity.VerityParams(salt=SALT, uuid=UUID, superblock=superblock, hash_offset=offset)
    theirs, ours = tmp_path / "theirs.img", tmp_path / "ours.img"
    theirs.write_bytes(data_bytes)
    ours.write_bytes(data_bytes)
    root = veritysetup(theirs, theirs, params, data_blocks=200)
    tree = verity.format_files(ours, ours, params, data_blocks=200)
    assert tree.root_hash.hex() == root
    assert ours.read_bytes() == theirs.read_bytes()
    assert tree.hash_start_block == offset // 4096 + (1 if superblock else 0)
    assert verity.verify_files(ours, ours, params, tree.root_hash, None if superblock else 200).ok
    if not superblock:
        with pytest.raises(InputError, match="give the number of data blocks"):
            verity.verify_files(ours, ours, params, tree.root_hash)


def test_published_compatibility_vector(tmp_path):
    """cryptsetup's vector: 8 MiB of zeros, 4096-byte blocks, sha256, format 1, this salt."""
    data = tmp_path / "zero.img"
    data.write_bytes(bytes(8 << 20))
    salt = bytes.fromhex("e48da609055204e89ae53b655ca2216dd983cf3cb829f34f63a297d106d53e2d")
    expected = "e522df0f97da4febb882ac40f30b37dc0b444bf6df418929463fa25280f09d5c"
    for superblock in (True, False):
        params = verity.VerityParams(salt=salt, uuid=UUID, superblock=superblock)
        assert verity.format_files(data, tmp_path / "hash", params).root_hash.hex() == expected
    assert verity.root_hash(data, params).root_hash.hex() == expected


def test_superblock_reads_back_as_veritysetup_wrote_it(tmp_path):
    data, hash_ = tmp_path / "data", tmp_path / "hash"
    data.write_bytes(pseudo_random(9 * 2048, 9))
    params = verity.VerityParams(data_block_size=2048, hash_block_size=1024, salt=SALT, uuid=UUID)
    veritysetup(data, hash_, params)
    sb = verity.read_superblock(hash_)
    assert sb == params.superblock_for(9)
    assert (uuid.UUID(bytes=sb.uuid), sb.algorithm.rstrip(b"\0"), sb.data_blocks) == (UUID, b"sha256", 9)


def test_format_keeps_bytes_before_the_hash_offset_of_a_separate_file(tmp_path):
    data, hash_ = tmp_path / "data", tmp_path / "hash"
    data.write_bytes(pseudo_random(3 * 4096, 3))
    hash_.write_bytes(b"\xaa" * 8192 + b"old tree")
    tree = verity.format_files(data, hash_, verity.VerityParams(salt=SALT, uuid=UUID, hash_offset=4096))
    written = hash_.read_bytes()
    assert written[:4096] == b"\xaa" * 4096
    assert written[4096:4104] == b"verity\0\0"
    assert len(written) == tree.hash_end == 3 * 4096


# -- the kernel table --------------------------------------------------------------------------


def test_table_line(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(pseudo_random(129 * 4096, 4))
    tree = verity.format_files(data, tmp_path / "hash", verity.VerityParams(salt=SALT, uuid=UUID))
    assert tree.table("/dev/vda", "/dev/vdb") == (
        f"0 1032 verity 1 /dev/vda /dev/vdb 4096 4096 129 1 sha256 {tree.root_hash.hex()} {SALT.hex()}")
    assert tree.table("253:0", "253:1", ["panic_on_corruption", "check_at_most_once"]).endswith(
        f" {SALT.hex()} 2 panic_on_corruption check_at_most_once")
    unsalted = verity.root_hash(data, verity.VerityParams(superblock=False))
    assert unsalted.table("/dev/vda", "/dev/vda").split()[9:] == [
        "0", "sha256", unsalted.root_hash.hex(), "-"]


@pytest.mark.parametrize("options, message", [
    (["restart_on_corruption", "panic_on_corruption"], "exclude each other"),
    (["panic"], "unknown verity table option 'panic'"),
    (["check_at_most_once", "check_at_most_once"], "given twice"),
])
def test_table_refuses_bad_options(tmp_path, options, message):
    data = tmp_path / "data"
    data.write_bytes(bytes(4096))
    tree = verity.root_hash(data, verity.VerityParams(superblock=False))
    with pytest.raises(InputError, match=message):
        tree.table("/dev/vda", "/dev/vdb", options)
    with pytest.raises(InputError, match="white space"):
        tree.table("/dev/vda x", "/dev/vdb")


def test_table_refuses_block_sizes_the_kernel_cannot_activate(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(bytes(8192))
    tree = verity.root_hash(data, verity.VerityParams(data_block_size=8192, superblock=False))
    with pytest.raises(InputError, match="cannot activate a verity data block size of 8192"):
        tree.table("/dev/vda", "/dev/vdb")


# -- the verifier ------------------------------------------------------------------------------


@pytest.fixture
def formatted(tmp_path):
    data, hash_ = tmp_path / "data", tmp_path / "hash"
    data.write_bytes(pseudo_random(300 * 4096, 300))
    params = verity.VerityParams(salt=SALT, uuid=UUID)
    tree = verity.format_files(data, hash_, params)
    assert verity.verify_files(data, hash_, params, tree.root_hash).ok
    return data, hash_, params, tree


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


def test_verifier_names_a_flipped_data_byte(formatted):
    data, hash_, params, tree = formatted
    flip(data, 217 * 4096 + 1234)
    verdict = verity.verify_files(data, hash_, params, tree.root_hash)
    assert not verdict.ok
    bad = verdict.corruption
    assert (bad.device, bad.block, bad.offset, bad.level) == ("data", 217, 217 * 4096, None)
    assert "data block 217 " in str(bad)


@pytest.mark.parametrize("level", [0, 1])
def test_verifier_names_a_flipped_hash_byte(formatted, level):
    data, hash_, params, tree = formatted
    assert [lv.blocks for lv in tree.levels] == [3, 1]
    lv = tree.levels[level]
    block = lv.start_block + lv.blocks - 1
    flip(hash_, block * 4096 + 5)  # inside the first digest
    bad = verity.verify_files(data, hash_, params, tree.root_hash).corruption
    assert bad is not None
    assert (bad.device, bad.block, bad.level) == ("hash", block, level)
    assert f"hash block {block} (level {level}" in bad.reason


def test_verifier_names_nonzero_padding(formatted):
    data, hash_, params, tree = formatted
    lv = tree.levels[0]
    flip(hash_, (lv.start_block + lv.blocks) * 4096 - 1)  # after the last digest of level 0
    bad = verity.verify_files(data, hash_, params, tree.root_hash).corruption
    assert bad is not None
    assert bad.device == "hash" and bad.level == 0


def test_verifier_names_a_changed_superblock_and_a_wrong_root(formatted):
    data, hash_, params, tree = formatted
    wrong_root = bytes(32)
    bad = verity.verify_files(data, hash_, params, wrong_root).corruption
    assert bad is not None and bad.level == 1 and "root hash" in bad.reason
    flip(hash_, verity.Superblock.offset_of("data_blocks"))
    bad = verity.verify_files(data, hash_, params, tree.root_hash).corruption
    assert bad is not None
    assert (bad.device, bad.offset) == ("superblock", 0x48)
    assert "data_blocks" in bad.reason


def test_verifier_agrees_with_veritysetup_output(tmp_path):
    data, hash_ = tmp_path / "data", tmp_path / "hash"
    data.write_bytes(pseudo_random(40 * 4096, 40))
    params = verity.VerityParams(salt=SALT, superblock=False)
    root = bytes.fromhex(veritysetup(data, hash_, params))
    assert verity.verify_files(data, hash_, params, root).ok
    flip(data, 0)
    assert verity.verify_files(data, hash_, params, root).corruption.block == 0


def test_verifier_single_block_has_no_tree(tmp_path):
    data, hash_ = tmp_path / "data", tmp_path / "hash"
    data.write_bytes(pseudo_random(4096, 1))
    params = verity.VerityParams(salt=SALT, superblock=False)
    tree = verity.format_files(data, hash_, params)
    assert hash_.stat().st_size == 0 and tree.levels == ()
    flip(data, 4095)
    bad = verity.verify_files(data, hash_, params, tree.root_hash).corruption
    assert bad is not None and (bad.device, bad.block) == ("data", 0)


# -- bad parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"data_block_size": 1000}, "data block size 1000 is not a power of two from 512 to 524288"),
    ({"hash_block_size": 256}, "hash block size 256 is not a power of two"),
    ({"data_block_size": 1 << 20}, "data block size 1048576 is not a power of two"),
    ({"salt": bytes(257)}, "salt is 257 bytes, more than the 256"),
    ({"algorithm": "md5"}, "unsupported verity hash algorithm 'md5'"),
    ({"uuid": None}, "superblock needs a UUID"),
    ({"hash_offset": 100}, "hash offset 100 is not a nonnegative multiple of 512"),
    ({"hash_offset": 512, "superblock": False}, "must be a multiple of the hash block size 4096"),
])
def test_bad_parameters(kwargs, message):
    args = {"uuid": UUID, **kwargs}
    with pytest.raises(InputError, match=re.escape(message)):
        verity.VerityParams(**args)


@pytest.mark.parametrize("size", [0, 4095, 4097])
def test_data_not_a_whole_number_of_blocks(tmp_path, size):
    data = tmp_path / "data"
    data.write_bytes(bytes(size))
    with pytest.raises(InputError, match=f"is {size} bytes, not a positive multiple of the data block size 4096"):
        verity.format_files(data, tmp_path / "hash", verity.VerityParams(uuid=UUID))
    assert not (tmp_path / "hash").exists()


def test_bad_parameters_veritysetup_also_refuses(tmp_path):
    """The block-size rule is veritysetup's: it refuses what we refuse."""
    tool = require("veritysetup", "cryptsetup-bin")
    data = tmp_path / "data"
    data.write_bytes(bytes(1 << 20))
    for size in (256, 1000, 1 << 20):
        done = subprocess.run([tool, "format", str(data), str(tmp_path / "h"), "--no-superblock",
                               "--data-block-size", str(size)], capture_output=True, text=True)
        assert done.returncode != 0 and "Unsupported VERITY block size" in done.stderr


def test_appended_hash_area_must_follow_the_data(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(bytes(4 * 4096))
    with pytest.raises(InputError, match="lies inside the data"):
        verity.format_files(data, data, verity.VerityParams(uuid=UUID, hash_offset=8192))
    assert data.stat().st_size == 4 * 4096


def test_missing_data_file(tmp_path):
    with pytest.raises(InputError, match="cannot read the verity data file"):
        verity.root_hash(tmp_path / "absent", verity.VerityParams(superblock=False))


# -- property: random shapes agree with veritysetup ---------------------------------------------


@settings(max_examples=6, deadline=None)
@given(blocks=st.integers(1, 300), data_bs=st.sampled_from([512, 1024, 4096]),
       hash_bs=st.sampled_from([512, 2048, 4096]), algorithm=st.sampled_from(sorted(verity.ALGORITHMS)),
       salt=st.binary(max_size=256), superblock=st.booleans(), seed=st.integers(0, 2**32))
def test_property_random_shapes_match_veritysetup(tmp_path_factory, blocks, data_bs, hash_bs, algorithm, salt,
                                                  superblock, seed):
    tmp_path = tmp_path_factory.mktemp("prop")
    try:
        params = verity.VerityParams(data_block_size=data_bs, hash_block_size=hash_bs, algorithm=algorithm,
                                     salt=salt, uuid=UUID, superblock=superblock)
        compare(tmp_path, pseudo_random(blocks * data_bs, seed), params)
    finally:
        shutil.rmtree(tmp_path)


def test_appended_superblock_claiming_more_blocks_than_the_file_holds(tmp_path):
    # the count comes from the input: it is checked against the data file before any block is read
    image = tmp_path / "image"
    image.write_bytes(pseudo_random(16 * 4096, 16))
    params = verity.VerityParams(salt=SALT, uuid=UUID, hash_offset=16 * 4096)
    tree = verity.format_files(image, image, params, data_blocks=16)
    with open(image, "r+b") as f:
        f.seek(16 * 4096 + verity.Superblock.offset_of("data_blocks"))
        f.write((1 << 63).to_bytes(8, "little"))
    with pytest.raises(InputError, match=f"does not hold {1 << 63} blocks of 4096"):
        verity.verify_files(image, image, params, tree.root_hash)
