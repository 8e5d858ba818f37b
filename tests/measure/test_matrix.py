"""``SnpLaunch.measure_matrix``: many launch shapes from one firmware, against sev-snp-measure 0.0.13."""

from __future__ import annotations

import random

import pytest

from measure import Firmware, KernelHashes, SnpLaunch, VmShape, profile
from measure.cpu import CPU_SIGS
from measure.errors import InputError
from tests.conftest import VECTORS
from tests.measure import oracle

AMDSEV = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"
TYPES = ["EPYC-v4", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa", "EPYC-Turin"]
VMMS = {"qemu": "QEMU", "ec2": "ec2"}


def test_matrix_of_640_matches_the_oracle_on_a_sample(tmp_path):
    kernel, initrd = tmp_path / "k", tmp_path / "i"
    kernel.write_bytes(b"kernel" * 1000)
    initrd.write_bytes(b"initrd" * 3000)
    append = "console=ttyS0"
    launch = SnpLaunch(Firmware.load(AMDSEV))
    shapes = [VmShape(1, CPU_SIGS[t], 0x1, profile(p)) for t in TYPES for p in VMMS]
    rows = launch.measure_matrix(shapes, range(1, 65), KernelHashes.from_files(kernel, initrd, append))
    assert [sorted(row) for row in rows] == [list(range(1, 65))] * 10
    got = {(VmShape(n, s.vcpu_sig, s.guest_features, s.profile), n): m
           for s, row in zip(shapes, rows, strict=True) for n, m in row.items()}
    assert len(got) == 640
    # EC2 puts 0x600 in rdx whatever the vCPU type, so its five types share their digests.
    assert len({m.digest for m in got.values()}) == 5 * 64 + 64
    sample = random.Random(12).sample(sorted(got, key=lambda k: (k[0].vcpu_sig, k[0].profile.name, k[1])), 12)
    sample.append(next(k for k in got if k[1] == 64))
    for shape, n in sample:
        assert shape.vcpus == n
        expected = oracle.oracle_digest("snp", ovmf=AMDSEV, vcpus=n, vcpu_sig=shape.vcpu_sig, kernel=kernel,
                                        initrd=initrd, append=append, vmm=VMMS[shape.profile.name])
        assert got[(shape, n)].digest == expected, (shape, n)
        assert got[(shape, n)].pages == launch.measure(shape, KernelHashes.from_files(kernel, initrd, append)).pages


def test_matrix_equals_one_digest_at_a_time_traced_or_not():
    fw = Firmware.load(AMDSEV)
    shapes = [VmShape(1, CPU_SIGS["EPYC-Milan"], 0x21), VmShape(1, None, 0x1, profile("ec2"))]
    got = SnpLaunch(fw).measure_matrix(shapes, [3, 1, 2])
    traced = SnpLaunch(fw, trace=True).measure_matrix(shapes, [2])
    for s, row, traced_row in zip(shapes, got, traced, strict=True):
        for n in (1, 2, 3):
            assert row[n] == SnpLaunch(fw).measure(VmShape(n, s.vcpu_sig, s.guest_features, s.profile))
        assert traced_row[2].digest == row[2].digest
        assert traced_row[2].log is not None and len(traced_row[2].log) == traced_row[2].pages


def test_matrix_refuses_a_bad_count_like_one_digest():
    launch = SnpLaunch(Firmware.load(AMDSEV))
    with pytest.raises(InputError, match="--vcpus 0 is invalid"):
        launch.measure_matrix([VmShape(1, CPU_SIGS["EPYC-Milan"])], [0, 1])


@pytest.mark.parametrize("counts, features, sig, message", [
    ([3, 4097, 9000, 0], 0x1, 0xA00F11, "--vcpus 0 is invalid"),
    ([3, 4097, 9000], 0x1, 0xA00F11, "--vcpus 4097 is invalid"),
    ([3, 4097], 1 << 64, 0xA00F11, "--guest-features 0x10000000000000000 does not fit"),
    ([0, 5], 1 << 64, 0xA00F11, "--vcpus 0 is invalid"),
    ([2, 5000], 0x1, None, "needs the vCPU type"),
    ([2, 7], 0x1, 1 << 32, "--vcpu-sig 0x100000000 does not fit"),
])
def test_counts_are_refused_as_checking_each_in_order_would(counts, features, sig, message):
    """The first problem that checking every count's shape, smallest count first, would meet."""
    shapes = [VmShape(n, sig, features, profile("qemu")) for n in sorted(set(counts))]
    problems = []
    for one in shapes:
        try:
            one.check()
        except InputError as e:
            problems.append(str(e))
    launch = SnpLaunch(Firmware.load(AMDSEV))
    with pytest.raises(InputError) as refused:
        launch.measure_vcpu_counts(shapes[0], counts)
    assert message in problems[0]
    assert str(refused.value) == problems[0]
