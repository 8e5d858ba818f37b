"""Bad input: one sentence naming the input and what to do, exit status 2, no traceback.

Several of these the oracle accepts silently (noted per case); blindbox refuses them.
"""

from __future__ import annotations

import struct

import pytest

from blindbox.cli import main
from measure.errors import FirmwareError, LayoutError, UnsupportedFirmware
from measure.ovmf import Firmware
from measure.spec import OVMF_SEV_METADATA_GUID, SectionType
from tests.conftest import VECTORS
from tests.measure import synth

AMDSEV = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"
OVMFX64 = VECTORS / "virtee-sev" / "measurement" / "ovmf_OvmfX64_suffix.bin"
GOOD = ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4"]


def run(argv, capsys):
    rc = main(["measure", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(argv, capsys, *needles):
    rc, out, err = run(argv, capsys)
    assert rc == 2, err
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("Usage:"), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _corrupt(tmp_path, name, mutate):
    data = bytearray(synth.image(0x10000, sections=synth.AMDSEV_LIKE_SECTIONS,
                                 hashes_table=(0x80B000 + 0xC00, 0x400)))
    mutate(data)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


FOOTER = 0x10000 - 32 - 18


def _meta_start(data):
    return len(data) - 0x1000


CORRUPTIONS = {
    "footer-size-too-large": (lambda d: d.__setitem__(slice(FOOTER, FOOTER + 2), struct.pack("<H", 0xFFFF)),
                              "footer table", "0xffce"),
    "entry-size-zero": (lambda d: d.__setitem__(slice(FOOTER - 18, FOOTER - 16), b"\0\0"), "invalid size"),
    "metadata-signature": (lambda d: d.__setitem__(slice(_meta_start(d), _meta_start(d) + 4), b"XSEV"),
                           "signature", "ASEV"),
    "metadata-version": (lambda d: d.__setitem__(slice(_meta_start(d) + 8, _meta_start(d) + 12),
                                                 struct.pack("<I", 2)), "version 2"),
    "metadata-count": (lambda d: d.__setitem__(slice(_meta_start(d) + 12, _meta_start(d) + 16),
                                               struct.pack("<I", 5000)), "5000 section"),
    "unknown-section-type": (lambda d: d.__setitem__(slice(_meta_start(d) + 16 + 8, _meta_start(d) + 16 + 12),
                                                     struct.pack("<I", 7)), "section 0", "unknown value 0x7"),
    "misaligned-section": (lambda d: d.__setitem__(slice(_meta_start(d) + 16, _meta_start(d) + 20),
                                                   struct.pack("<I", 0x800010)), "not whole pages"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_firmware(name, tmp_path, capsys):
    mutate, *needles = CORRUPTIONS[name]
    path = _corrupt(tmp_path, name, mutate)
    with pytest.raises(FirmwareError):
        Firmware.load(path)
    assert_refused(GOOD + ["--ovmf", str(path)], capsys, str(path), *needles)


def test_metadata_offset_outside_image(tmp_path, capsys):
    data = synth.image(0x4000, extra_entries=synth.entry(OVMF_SEV_METADATA_GUID, struct.pack("<I", 0x9000)))
    path = synth.write(tmp_path / "fw.fd", data)
    assert_refused(GOOD + ["--ovmf", str(path)], capsys, "outside the image")


@pytest.mark.parametrize("size", [0, 100, 4096 + 7])
def test_truncated_firmware(size, tmp_path, capsys):
    path = synth.write(tmp_path / "t.fd", AMDSEV.read_bytes()[:size] if size <= 4096 else bytes(size))
    assert_refused(GOOD + ["--ovmf", str(path)], capsys, "truncated")


def test_firmware_without_sev_metadata_in_snp_mode(tmp_path, capsys):
    """The oracle measures such firmware anyway; QEMU refuses to launch it."""
    path = synth.write(tmp_path / "plain.fd", synth.image(0x10000))
    err = assert_refused(GOOD + ["--ovmf", str(path)], capsys, "no SEV metadata", "ovmf-amdsev")
    assert "QEMU" in err
    # SEV and SEV-ES need no metadata
    assert run(["--mode", "sev", "--ovmf", str(path)], capsys)[0] == 0


def test_kernel_with_firmware_without_hashes_section(capsys):
    assert_refused(GOOD + ["--ovmf", str(OVMFX64), "--kernel", "/dev/null"], capsys, "SNP_KERNEL_HASHES")
    assert_refused(["--mode", "seves", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", str(OVMFX64),
                    "--kernel", "/dev/null"], capsys, "hashes table")


def test_hashes_table_outside_section(tmp_path):
    data = synth.image(0x10000, sections=synth.AMDSEV_LIKE_SECTIONS, hashes_table=(0x700000, 0x400))
    from measure.kernel_hashes import KernelHashes
    from measure.snp import SnpLaunch, VmShape
    with pytest.raises(UnsupportedFirmware, match="not in the first page"):
        SnpLaunch(Firmware(data)).measure(VmShape(1, 0), KernelHashes.from_files("/dev/null", None, None))


BASE = ["--mode", "snp", "--vcpus", "1", "--ovmf", str(AMDSEV)]
TYPE = ["--vcpu-type", "EPYC-v4"]


@pytest.mark.parametrize("argv,needles", [
    (["--vcpus", "0"] + TYPE, ["--vcpus 0", "1 to"]),                  # oracle: a digest without any VMSA
    (["--vcpus", "-3"] + TYPE, ["--vcpus -3"]),
    (["--vcpu-type", "EPYC-v9"], ["EPYC-v9", "EPYC-Milan"]),
    (["--vcpu-family", "25"], ["together"]),                          # oracle: TypeError traceback
    (["--vcpu-family", "25", "--vcpu-model", "256", "--vcpu-stepping", "0"], ["model 256"]),  # oracle: masks it
    (["--vcpu-sig", "0x800f12"] + TYPE, ["one way only"]),            # oracle: silently prefers one
    (["--vcpu-sig", "zz"], ["not an integer"]),
    (["--vcpu-sig", "0x1ffffffff"], ["32 bits"]),
    (["--guest-features", "0x1ffffffffffffffff"] + TYPE, ["64 bits"]),
    (["--guest-features", "0x0"] + TYPE, ["--guest-features 0x0 lacks SNPActive (bit 0)", "such as 0x1."]),
    (["--guest-features", "0x20"] + TYPE, ["--guest-features 0x20 lacks SNPActive (bit 0)", "such as 0x21."]),
    (["--snp-ovmf-hash", "abc"] + TYPE, ["not hexadecimal"]),
    (["--snp-ovmf-hash", "00" * 47] + TYPE, ["96 hex digits", "94"]),  # oracle: accepted, wrong digest
    (["--initrd", "/dev/null"] + TYPE, ["need --kernel"]),
    (["--kernel", "/nonexistent/vmlinuz"] + TYPE, ["/nonexistent/vmlinuz", "kernel"]),
    (["--kernel", "/tmp"] + TYPE, ["directory"]),
    (["--kernel", "/dev/null", "--append", "a\x00b"] + TYPE, ["NUL"]),
    (["--vmm-type", "xen"], ["xen", "QEMU"]),
    (["--vmm-profile", "qemu-9"], ["qemu-9", "ec2-rdx0"]),
    (["--vmm-type", "gce", "--vmm-profile", "ec2"], ["gce", "ec2"]),
    (["--svsm", "/dev/null"] + TYPE, ["snp:svsm"]),
])
def test_bad_options(argv, needles, capsys):
    assert_refused(BASE + argv, capsys, *needles)


def test_undecodable_cmdline_bytes_are_hashed_exactly(capsys):
    rc, out, err = run(BASE + TYPE + ["--kernel", "/dev/null", "--append", "x\udcffy"], capsys)
    assert rc == 0 and len(out.strip()) == 96
    from measure.kernel_hashes import cmdline_bytes
    assert cmdline_bytes("x\udcffy") == b"x\xffy\x00"


@pytest.mark.parametrize("argv,needle", [
    (["--mode", "snp", "--ovmf", str(AMDSEV)], "--vcpus"),
    (["--mode", "snp", "--vcpus", "2", "--ovmf", str(AMDSEV)], "vCPU type"),
    (["--mode", "sev", "--ovmf", str(AMDSEV), "--dump-vmsa"], "--dump-vmsa"),
    (["--mode", "seves", "--vcpus", "1", "--vcpu-type", "EPYC", "--ovmf", str(AMDSEV), "--snp-ovmf-hash",
      "00" * 48], "only applies to --mode snp"),                       # oracle: ValueError traceback
    (["--mode", "snp:svsm", "--vcpus", "1", "--vcpu-type", "EPYC", "--ovmf", str(AMDSEV)], "--svsm"),
    (["--mode", "snp:svsm", "--vcpus", "1", "--vcpu-type", "EPYC", "--ovmf", str(AMDSEV), "--svsm", "/dev/null",
      "--vars-size", "100"], "multiple of 4096"),
    (["--mode", "snp:ovmf-hash", "--ovmf", str(AMDSEV), "--kernel", "/dev/null"], "firmware alone"),
    (["--mode", "bogus", "--ovmf", str(AMDSEV)], "bogus"),
    (["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC", "--ovmf", str(AMDSEV), "--trace"], "json"),
])
def test_bad_combinations(argv, needle, capsys):
    assert_refused(argv, capsys, needle)


def test_reserved_bytes_are_checked():
    from measure.vmsa import SaveArea
    page = bytearray(4096)
    page[0xC8] = 1
    with pytest.raises(LayoutError, match="offset 0xc8"):
        SaveArea.from_bytes(bytes(page))


def test_enum_values_are_checked():
    from measure.ovmf import MetadataSection
    with pytest.raises(LayoutError, match="unknown value 0x11"):
        MetadataSection.from_bytes(struct.pack("<III", 0, 0x1000, 0x11))
    assert MetadataSection.from_bytes(struct.pack("<III", 0, 0x1000, 0x10)).section_type is \
        SectionType.SNP_KERNEL_HASHES


def test_internal_error_is_exit_1_and_says_bug(monkeypatch, capsys):
    import measure.api
    monkeypatch.setattr(measure.api, "launch_digest", lambda req: 1 / 0)
    import blindbox.cli.measure_core as cmd
    monkeypatch.setattr(cmd.api, "launch_digest", lambda req: 1 / 0)
    rc, out, err = run(GOOD + ["--ovmf", str(AMDSEV)], capsys)
    assert rc == 1 and "bug" in err and "Traceback" not in err


@pytest.mark.network
def test_real_4mib_ovmf_without_sev_metadata_is_refused_in_snp_mode(capsys):
    """Debian bookworm's 4 MiB OVMF has no SEV metadata: QEMU cannot launch it as SNP."""
    from tests.realinputs import bookworm_ovmf
    path = bookworm_ovmf("OVMF_CODE_4M.fd")[0]
    assert Firmware.load(path).sections == ()
    assert_refused(GOOD + ["--ovmf", str(path)], capsys, "no SEV metadata")
    rc, out, _ = run(["--mode", "seves", "--vcpus", "2", "--vcpu-type", "EPYC-v4", "--ovmf", str(path)], capsys)
    assert rc == 0 and len(out.strip()) == 64
