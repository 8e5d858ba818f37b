"""snp:svsm mode on synthetic OVMF + SVSM images, against the oracle.

The oracle's SVSM VMSA sets MXCSR to 0x1f80 but leaves x87 FCW at 0 (a misspelled
ctypes keyword).  blindbox's default ``qemu`` profile sets FCW 0x37f, the value KVM
syncs from QEMU's reset FPU state together with that MXCSR; the ``qemu-svsm-fcw0``
profile reproduces the oracle bit for bit.  See docs/decisions.md.
"""

from __future__ import annotations

import pytest

from measure.api import MeasureRequest, launch_digest
from measure.cpu import CPU_SIGS
from measure.ovmf import Firmware
from measure.snp import svsm_launch
from measure.spec import SevMode
from measure.vmm import profile
from measure.vmsa import SaveArea, diff
from tests.measure import oracle, synth

VARS_SIZES = [0x1000, 0x20000]


@pytest.fixture
def images(tmp_path):
    ovmf = synth.write(tmp_path / "ovmf.fd", synth.image(0x20000, sections=synth.AMDSEV_LIKE_SECTIONS,
                                                         hashes_table=(0x80B000 + 0xC00, 0x400)))
    svsm = synth.write(tmp_path / "svsm.bin", synth.svsm_image())
    return ovmf, svsm


@pytest.mark.parametrize("vars_size", VARS_SIZES)
@pytest.mark.parametrize("vcpus", [1, 2, 5])
@pytest.mark.parametrize("cpu", ["EPYC-Milan", "EPYC-Turin"])
def test_fcw0_profile_matches_oracle(images, vars_size, vcpus, cpu):
    ovmf, svsm = images
    expected = oracle.oracle_digest("snp:svsm", ovmf=ovmf, vcpus=vcpus, vcpu_sig=CPU_SIGS[cpu], svsm=svsm,
                                    vars_size=vars_size)
    req = MeasureRequest(mode=SevMode.SEV_SNP_SVSM, ovmf=ovmf, vcpus=vcpus, vcpu_sig=CPU_SIGS[cpu],
                         profile=profile("qemu-svsm-fcw0"), svsm=svsm, vars_size=vars_size)
    assert launch_digest(req).digest == expected


def test_default_profile_differs_from_oracle_only_in_fcw(images):
    ovmf, svsm = images
    fw = Firmware.load(ovmf)
    svsm_fw = Firmware.load(svsm, end_gpa=fw.gpa - 0x1000)
    ours = svsm_launch(fw, svsm_fw, 2, CPU_SIGS["EPYC-Milan"], profile("qemu"))
    compat = svsm_launch(fw, svsm_fw, 2, CPU_SIGS["EPYC-Milan"], profile("qemu-svsm-fcw0"))
    assert ours.digest != compat.digest
    rows = diff(SaveArea.from_bytes(compat.vmsas[0]), SaveArea.from_bytes(ours.vmsas[0]))
    assert rows == [("x87_fcw", 0x410, 0, 0x37F)]
    vmsa = SaveArea.from_bytes(ours.vmsas[0])
    assert vmsa.mxcsr == 0x1F80 and vmsa.rip == svsm_fw.gpa + 0x80 and vmsa.sev_features == 0x1


def test_svsm_entry_point_and_placement(images):
    ovmf, svsm = images
    fw = Firmware.load(ovmf)
    svsm_fw = Firmware.load(svsm, end_gpa=fw.gpa - 0x20000)
    assert svsm_fw.gpa == 0x1_0000_0000 - 0x20000 - 0x20000 - 0x10000
    m = svsm_launch(fw, svsm_fw, 1, CPU_SIGS["EPYC-Milan"], profile("qemu"))
    # OVMF pages, SVSM pages, 4 metadata sections (1+1+2+4 pages), 1 VMSA
    assert m.pages == 0x20 + 0x10 + 8 + 1


def test_cli_svsm_compat_profile_prints_the_oracles_line(images, tmp_path, capsys):
    from blindbox.cli import main
    ovmf, svsm = images
    vars_file = tmp_path / "OVMF_VARS.fd"
    vars_file.write_bytes(bytes(0x20000))
    argv = ["--mode", "snp:svsm", "--vcpus", "3", "--vcpu-type", "EPYC-Milan", "--ovmf", str(ovmf),
            "--svsm", str(svsm), "--vars-file", str(vars_file), "-v"]
    rc_o, out_o, _ = oracle.oracle_cli(argv)
    assert rc_o == 0 and out_o.startswith("Calculated SEV_SNP_SVSM guest measurement: ")
    assert main(["measure", *argv, "--vmm-profile", "qemu-svsm-fcw0"]) == 0
    assert capsys.readouterr().out == out_o
    assert main(["measure", *argv]) == 0
    default = capsys.readouterr().out
    assert default.startswith("Calculated SEV_SNP_SVSM guest measurement: ") and default != out_o
    assert main(["measure", *argv[:-3], "--vars-size", str(0x20000), "-v", "--vmm-profile", "qemu-svsm-fcw0"]) == 0
    assert capsys.readouterr().out == out_o
