"""VMSA pages per VMM profile, compared with the oracle's pages byte for byte."""

from __future__ import annotations

from measure.record import record

import pytest
from sevsnpmeasure.sev_mode import SevMode as OMode
from sevsnpmeasure.vmm_types import VMMType as OVmm
from sevsnpmeasure.vmsa import VMSA as OVMSA

from measure import layout
from measure.errors import LayoutError
from measure.ovmf import Firmware
from measure.snp import SnpLaunch, VmShape
from measure.vmm import PROFILES, profile
from measure.vmsa import SaveArea, Segment, reset_vmsa
from tests.conftest import VECTORS

ORACLE_VMM = {"qemu": OVmm.QEMU, "ec2": OVmm.ec2, "gce": OVmm.gce}


@pytest.mark.parametrize("name", ["qemu", "ec2", "gce"])
@pytest.mark.parametrize("eip", [0xFFFFFFF0, 0xFFFFF000, 0x80B004])
@pytest.mark.parametrize("features", [0x1, 0x21, 0])
def test_reset_vmsa_matches_oracle(name, eip, features):
    theirs = bytes(OVMSA.build_save_area(eip, features, 0xA00F11, ORACLE_VMM[name]))
    assert reset_vmsa(profile(name), eip, features, 0xA00F11).to_bytes() == theirs


def test_ec2_rdx0_differs_only_in_rdx():
    a = reset_vmsa(profile("ec2"), 0xFFFFFFF0, 1, None)
    b = reset_vmsa(profile("ec2-rdx0"), 0xFFFFFFF0, 1, None)
    assert (a.rdx, b.rdx) == (0x600, 0)
    from measure.vmsa import diff
    assert [r[0] for r in diff(a, b)] == ["rdx"]


def test_vmsa_round_trips():
    page = reset_vmsa(profile("qemu"), 0xFFFFF000, 0x21, 0x800F12).to_bytes()
    assert SaveArea.from_bytes(page).to_bytes() == page
    assert SaveArea.offset_of("sev_features") == 0x3B0 and SaveArea.offset_of("x87_fcw") == 0x410


def test_every_profile_is_documented():
    for p in PROFILES.values():
        assert p.summary and p.name == p.name.lower()


def test_vcpu_counts_extend_one_state():
    fw = Firmware.load(VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin")
    launch = SnpLaunch(fw)
    shape = VmShape(1, 0x800F12, 0x21)
    many = launch.measure_vcpu_counts(shape, [1, 2, 3, 64])
    for n, m in many.items():
        assert SnpLaunch(fw).measure(VmShape(n, 0x800F12, 0x21)).digest == m.digest
        assert len(m.vmsas) == n


def test_oracle_dump_matches_ours():
    fw_path = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"
    fw = Firmware.load(fw_path)
    theirs = list(OVMSA(OMode.SEV_SNP, fw.sev_es_reset_eip(), 0x800F12, 0x21, OVmm.QEMU).pages(3))
    ours = SnpLaunch(fw).measure(VmShape(3, 0x800F12, 0x21)).vmsas
    assert list(ours) == theirs


# -- the layout helper itself ------------------------------------------------------------

def test_layout_rejects_overlaps_and_overflow():
    with pytest.raises(TypeError, match="overlaps"):
        @layout.struct(size=8, spec="test")
        @record
        class Bad:
            a: int = layout.u32(0)
            b: int = layout.u32(2)
        layout.check(Bad)
    with pytest.raises(TypeError, match="beyond"):
        @layout.struct(size=4, spec="test")
        @record
        class Bad2:
            a: int = layout.u64(0)
        layout.check(Bad2)


def test_layout_values_and_lengths_are_checked():
    with pytest.raises(LayoutError, match="does not fit"):
        Segment(selector=0x10000).to_bytes()
    with pytest.raises(LayoutError, match="exactly 0x10"):
        Segment.from_bytes(bytes(15))
    with pytest.raises(TypeError):
        Segment(selectr=1)  # a misspelled field name is an error, not silently ignored


def test_layout_u24_round_trips_and_checks_its_range():
    @layout.struct(size=8, spec="test")
    @record
    class Three(layout.Struct):
        size: int = layout.u24(0)
        kind: int = layout.u8(3)
        tail: int = layout.u32(4)

    data = bytes.fromhex("563412" "02" "78563412")
    three = Three.from_bytes(data)
    assert (three.size, three.kind, three.tail) == (0x123456, 2, 0x12345678)
    assert three.to_bytes() == data
    assert Three(size=0xFFFFFF).to_bytes()[:3] == b"\xff\xff\xff"
    with pytest.raises(LayoutError, match=r"Three.size = 0x1000000 does not fit in 3 byte\(s\) at offset 0x0"):
        Three(size=0x1000000).to_bytes()
