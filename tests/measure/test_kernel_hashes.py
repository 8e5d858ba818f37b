"""The SEV hashes table: byte-identical to the oracle's copy of QEMU's layout, streamed."""

from __future__ import annotations

import hashlib
import tracemalloc

import pytest
from sevsnpmeasure.sev_hashes import SevHashes as OracleHashes

from measure.gctx import LaunchDigest
from measure.kernel_hashes import HashTable, KernelHashes, cmdline_bytes
from measure.ovmf import Firmware
from measure.snp import SnpLaunch, VmShape
from tests.measure import synth


@pytest.mark.parametrize("append", [None, "", "console=ttyS0", "a  b\tc — ✓ grüße"])
def test_table_matches_oracle(tmp_path, append):
    kernel = tmp_path / "k"
    kernel.write_bytes(b"kernel" * 1000)
    initrd = tmp_path / "i"
    initrd.write_bytes(b"initrd")
    ours = KernelHashes.from_files(kernel, initrd, append)
    theirs = OracleHashes(str(kernel), str(initrd), append)
    assert ours.table() == theirs.construct_table()
    assert len(ours.table()) == HashTable.SIZE == 0xB0
    for off in (0, 0xC00, 0x1000 - 0xB0):
        assert ours.page(off) == theirs.construct_page(off)


def test_cmdline_is_nul_terminated_utf8():
    assert cmdline_bytes(None) == cmdline_bytes("") == b"\0"
    assert cmdline_bytes("ä") == b"\xc3\xa4\0"
    assert cmdline_bytes(b"raw\xff") == b"raw\xff\0"


def test_table_parses_back():
    h = KernelHashes(kernel=b"\1" * 32, initrd=b"\2" * 32, cmdline=b"\3" * 32)
    table = HashTable.from_bytes(h.table())
    assert (table.kernel.hash, table.initrd.hash, table.cmdline.hash) == (h.kernel, h.initrd, h.cmdline)
    assert table.length == 0xA8 and table.kernel.length == 0x32


def test_large_kernel_is_streamed(tmp_path):
    """A 256 MiB kernel is hashed with bounded memory (not read whole)."""
    big = tmp_path / "big"
    with open(big, "wb") as fh:
        fh.truncate(256 << 20)
    tracemalloc.start()
    h = KernelHashes.from_files(big, None, None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20
    h2 = hashlib.sha256()
    zeros = bytes(1 << 20)
    for _ in range(256):
        h2.update(zeros)
    assert h.kernel == h2.digest()


def test_multi_page_kernel_hashes_section():
    """QEMU writes the table into the first page and measures the whole section as NORMAL pages."""
    data = synth.image(0x10000, sections=synth.AMDSEV_LIKE_SECTIONS, hashes_table=(0x80B000 + 0xC00, 0x400))
    fw = Firmware(data)
    hashes = KernelHashes(kernel=b"\1" * 32, initrd=b"\2" * 32, cmdline=b"\3" * 32)
    got = SnpLaunch(fw).measure(VmShape(1, 0x800F12), hashes)
    # replay by hand: firmware, SEC_MEM, SECRETS, CPUID, 2 NORMAL pages (table + zeros), SEC_MEM, VMSA
    ld = LaunchDigest()
    ld.update_normal_pages(fw.gpa, data)
    ld.update_zero_pages(0x800000, 0x9000)
    ld.update_secrets_page(0x809000)
    ld.update_cpuid_page(0x80A000)
    ld.update_normal_pages(0x80B000, bytes(0xC00) + hashes.table() + bytes(0x2000 - 0xC00 - 0xB0))
    ld.update_zero_pages(0x80D000, 0x3000)
    ld.update_vmsa_page(got.vmsas[0])
    assert got.digest == ld.digest and got.pages == ld.pages
