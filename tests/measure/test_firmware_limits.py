"""Firmware that no launch can produce is refused before anything is allocated for it.

Each hostile image runs through ``blindbox measure`` in a child process limited to
512 MiB of address space: a section claiming gigabytes must give exit 2 and one
sentence naming the section and its offset, quickly, not a digest after minutes.
"""

from __future__ import annotations

import struct
import time

import pytest

from measure.errors import FirmwareError, UnsupportedFirmware
from measure.kernel_hashes import KernelHashes
from measure.limits import MAX_FIRMWARE_BYTES, MAX_METADATA_BYTES
from measure.ovmf import Firmware
from measure.snp import SnpLaunch, VmShape
from measure.spec import SectionType as T
from tests.measure import synth
from tests.memlimit import assert_refused, run_blindbox

SIZE = 0x10000
META_OFF = SIZE - 0x1000  # synth places the metadata 0x1000 bytes before the end
SNP = ["measure", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4"]


def _section_offset(i: int) -> str:
    return f"offset {META_OFF + 16 + 12 * i:#x}"


def _fw(tmp_path, sections, hashes_table=(0x80B000 + 0xC00, 0x400), name="fw.fd"):
    return synth.write(tmp_path / name, synth.image(SIZE, sections=sections, hashes_table=hashes_table))


HOSTILE = {
    # sections that claim gigabytes: measured page by page (or allocated) before this check
    "sec-mem-3-gib": ([(0x0, 0xC000_0000, T.SNP_SEC_MEM)], 0, ["more than the 67,108,864"]),
    "kernel-hashes-1-gib": ([(0x800000, 0x1000, T.SNP_SEC_MEM), (0x80B000, 0x4000_0000, T.SNP_KERNEL_HASHES)],
                            1, ["SNP_KERNEL_HASHES", "more than the 67,108,864"]),
    "many-sections-add-up": ([(0x100_0000 * i, 0x100_0000, T.SNP_SEC_MEM) for i in range(1, 6)], 4,
                             ["83,886,080 bytes"]),
    # GPA ranges outside the 4 GiB the 32-bit metadata fields address
    "ends-beyond-4-gib": ([(0xF000_0000, 0x2000_0000, T.SNP_SEC_MEM)], 0, ["ends at 0x110000000", "4 GiB"]),
    "last-page-beyond-4-gib": ([(0xFFFF_F000, 0x2000, T.SNP_SEC_MEM)], 0, ["beyond 0x100000000"]),
    # pages that no launch can measure twice
    "overlapping-sections": ([(0x800000, 0x3000, T.SNP_SEC_MEM), (0x802000, 0x1000, T.SNP_SECRETS)], 1,
                             ["section 1 (SNP_SECRETS)", "overlaps section 0 (SNP_SEC_MEM)"]),
    "overlap-out-of-order": ([(0x900000, 0x1000, T.CPUID), (0x8FF000, 0x2000, T.SNP_SEC_MEM)], 1,
                             ["overlaps section 0 (CPUID)"]),
    "overlaps-the-image": ([(0xFFFF_8000, 0x1000, T.SNP_SEC_MEM)], 0, ["overlaps the firmware image"]),
    "two-kernel-hashes": ([(0x80B000, 0x1000, T.SNP_KERNEL_HASHES), (0x90B000, 0x1000, T.SNP_KERNEL_HASHES)],
                          1, ["second SNP_KERNEL_HASHES"]),
    "zero-length": ([(0x800000, 0, T.SNP_SEC_MEM)], 0, ["not whole pages"]),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_impossible_sections_refused_in_the_library(name, tmp_path):
    sections, index, needles = HOSTILE[name]
    with pytest.raises(FirmwareError) as info:
        Firmware.load(_fw(tmp_path, sections))
    message = str(info.value)
    assert f"section {index}" in message and _section_offset(index) in message, message
    assert info.value.offset == META_OFF + 16 + 12 * index
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.mark.parametrize("name", ["sec-mem-3-gib", "kernel-hashes-1-gib", "ends-beyond-4-gib",
                                  "overlapping-sections"])
def test_impossible_sections_refused_under_a_memory_limit(name, tmp_path):
    sections, index, needles = HOSTILE[name]
    path = _fw(tmp_path, sections)
    start = time.monotonic()
    kernel = ["--kernel", "/dev/null"] if any(t == T.SNP_KERNEL_HASHES for _, _, t in sections) else []
    result = run_blindbox(SNP + ["--ovmf", path] + kernel)
    assert time.monotonic() - start < 30
    assert_refused(result, str(path), f"section {index}", _section_offset(index), *needles)


def test_largest_allowed_metadata_is_measured(tmp_path):
    """The limit is inclusive: sections adding up to exactly 64 MiB still give a digest."""
    sections = [(0x100_0000, MAX_METADATA_BYTES - 0x2000, T.SNP_SEC_MEM),
                (0x80B000, 0x1000, T.SNP_KERNEL_HASHES), (0x80C000, 0x1000, T.SNP_SECRETS)]
    fw = Firmware.load(_fw(tmp_path, sections))
    digest = SnpLaunch(fw).measure(VmShape(1, 0), KernelHashes(bytes(32), bytes(32), bytes(32))).digest
    assert len(digest) == 48


def test_hashes_table_smaller_than_the_table(tmp_path, capsys):
    """QEMU refuses a hashes table area that cannot hold its 0xb0-byte table."""
    from blindbox.cli import main
    path = _fw(tmp_path, synth.AMDSEV_LIKE_SECTIONS, hashes_table=(0x80B000 + 0xC00, 0x10))
    assert main(SNP + ["--ovmf", str(path), "--kernel", "/dev/null"]) == 2
    err = capsys.readouterr().err
    assert "the SEV hashes table area at 0x80bc00 is 0x10 bytes, smaller than the 0xb0-byte table" in err
    assert main(["measure", "--mode", "sev", "--ovmf", str(path), "--kernel", "/dev/null"]) == 2
    assert "smaller than the 0xb0-byte table" in capsys.readouterr().err
    # without a kernel the table is not used and the firmware measures
    assert main(SNP + ["--ovmf", str(path)]) == 0


def test_the_real_hashes_table_fits(tmp_path):
    path = _fw(tmp_path, synth.AMDSEV_LIKE_SECTIONS, hashes_table=(0x80B000 + 0xC00, 0xB0))
    SnpLaunch(Firmware.load(path)).measure(VmShape(1, 0), KernelHashes(bytes(32), bytes(32), bytes(32)))


def test_firmware_larger_than_the_limit_is_refused_by_its_size(tmp_path):
    path = tmp_path / "huge.fd"
    with open(path, "wb") as f:
        f.truncate(MAX_FIRMWARE_BYTES + 0x1000)   # sparse: the size alone must refuse it
    start = time.monotonic()
    result = run_blindbox(SNP + ["--ovmf", path], memory=256 * 1024 * 1024)
    assert time.monotonic() - start < 30
    assert_refused(result, f"the firmware file '{path}' is larger than 67,108,864 bytes")


def test_firmware_from_an_endless_stream(tmp_path):
    result = run_blindbox(SNP + ["--ovmf", "/dev/zero"])
    assert_refused(result, "the firmware file '/dev/zero' is larger than 67,108,864 bytes")


def test_firmware_bytes_over_the_limit_in_the_library():
    with pytest.raises(FirmwareError, match="larger than any firmware image can be"):
        Firmware(bytes(MAX_FIRMWARE_BYTES + 0x1000))


def test_metadata_count_beyond_the_image_is_refused_before_parsing(tmp_path):
    data = bytearray(synth.image(SIZE, sections=synth.AMDSEV_LIKE_SECTIONS))
    data[META_OFF + 12:META_OFF + 16] = struct.pack("<I", 0xFFFF_FFFF)
    with pytest.raises(FirmwareError, match="4294967295 section"):
        Firmware(bytes(data))


def test_unsupported_kernel_hashes_placement_still_named(tmp_path):
    path = _fw(tmp_path, synth.AMDSEV_LIKE_SECTIONS, hashes_table=(0x700000, 0x400))
    with pytest.raises(UnsupportedFirmware, match="not in the first page"):
        SnpLaunch(Firmware.load(path)).measure(VmShape(1, 0), KernelHashes(bytes(32), bytes(32), bytes(32)))
