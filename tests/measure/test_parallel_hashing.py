"""Kernel, initrd and firmware hashed side by side: same digests, errors in the same order as one by one."""

from __future__ import annotations

import hashlib

import pytest

from measure import Firmware, KernelHashes, SnpLaunch, VmShape
from measure.errors import InputError
from measure.inputs import in_background
from tests.conftest import VECTORS
from tests.measure import oracle

AMDSEV = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"


@pytest.fixture
def files(tmp_path):
    kernel, initrd = tmp_path / "kernel", tmp_path / "initrd"
    kernel.write_bytes(b"k" * (3 << 20))
    initrd.write_bytes(b"i" * (5 << 20 | 7))
    return kernel, initrd


def test_digests_are_those_of_the_whole_files(files):
    kernel, initrd = files
    h = KernelHashes.from_files(kernel, initrd, "a b")
    assert h.kernel == hashlib.sha256(kernel.read_bytes()).digest()
    assert h.initrd == hashlib.sha256(initrd.read_bytes()).digest()
    assert h.cmdline == hashlib.sha256(b"a b\0").digest()
    assert SnpLaunch(Firmware.load(AMDSEV)).measure(VmShape(2, 0xA00F11), h).digest == oracle.oracle_digest(
        "snp", ovmf=AMDSEV, vcpus=2, vcpu_sig=0xA00F11, kernel=kernel, initrd=initrd, append="a b")


def test_errors_come_kernel_first_then_initrd_then_cmdline(files, tmp_path):
    kernel, initrd = files
    missing = tmp_path / "missing"
    with pytest.raises(InputError, match=r"cannot read the kernel file .*missing"):
        KernelHashes.from_files(missing, initrd, "bad\0")
    with pytest.raises(InputError, match=r"cannot read the kernel file .*missing"):
        KernelHashes.from_files(missing, tmp_path, "x")
    with pytest.raises(InputError, match=r"the initrd path .* is a directory"):
        KernelHashes.from_files(kernel, tmp_path, "bad\0")
    with pytest.raises(InputError, match="the kernel command line contains a NUL byte"):
        KernelHashes.from_files(kernel, initrd, "bad\0")


def test_background_work_hands_back_its_result_or_its_error():
    assert in_background(sum, [1, 2, 3])() == 6
    wait = in_background(int, "x")
    with pytest.raises(ValueError, match="invalid literal"):
        wait()


def test_firmware_hashed_in_the_background_equals_a_seeded_launch():
    fw = Firmware.load(AMDSEV)
    launch = SnpLaunch(fw)
    seeded = SnpLaunch(fw, ovmf_hash=launch.firmware_digest)
    shape = VmShape(3, 0x800F12)
    assert launch.measure(shape).digest == seeded.measure(shape).digest
    assert launch.firmware_digest == oracle.oracle_ovmf_hash(AMDSEV)
