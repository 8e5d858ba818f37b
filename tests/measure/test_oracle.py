"""Differential tests: the same inputs through blindbox and sev-snp-measure 0.0.13.

Factors: mode, VMM, vCPU signature (every distinct signature behind the vCPU type
names, plus family/model/stepping and raw-signature forms), vCPU count, guest
features, firmware (the two 4 KiB vector tails and, with network, Debian bookworm's
OVMF_CODE.fd and sid's OVMF.amdsev.fd) and the measured direct boot (none, empty
files, a real Debian kernel + initrd + a command line with spaces and non-ASCII).
Rows cover every pair of factor values (tests/measure/pairwise.py); combinations the
firmware cannot support must fail in both implementations.  The full product runs
with ``-m slow``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from measure.cpu import CPU_SIGS, cpu_sig
from measure.errors import MeasureError
from measure.kernel_hashes import KernelHashes
from measure.ovmf import Firmware
from measure.sev import sev_es_launch, sev_launch
from measure.snp import SnpLaunch, VmShape
from measure.vmm import VmmType, profile_for
from tests.conftest import VECTORS
from tests.measure import oracle
from tests.measure.pairwise import all_pairs, covered_pairs, pairwise

SUFFIX = VECTORS / "virtee-sev" / "measurement"
NON_ASCII_CMDLINE = "console=ttyS0 root=/dev/vda ro  quiet — blindbox=grüße ✓"

MODES = ["snp", "seves", "sev"]
VMMS = ["QEMU", "ec2", "gce"]
CPUS = [("type", "EPYC-v4"), ("type", "EPYC-Rome"), ("type", "EPYC-Milan"), ("type", "EPYC-Genoa"),
        ("type", "EPYC-Turin"), ("fms", (25, 17, 1)), ("sig", 0xA10F11), ("fms", (23, 0x31, 0))]
VCPUS = [1, 2, 3, 4, 16, 64, 255]
FEATURES = [0x1, 0x21, 0x3, 0x41, 0x4021, 0x1 | (1 << 63)]
FIRMWARES = ["amdsev-suffix", "ovmfx64-suffix", "bookworm-OVMF_CODE", "sid-OVMF.amdsev"]
KERNELS = ["none", "empty", "real"]
FACTORS = {"mode": MODES, "vmm": VMMS, "cpu": CPUS, "vcpus": VCPUS, "features": FEATURES,
           "firmware": FIRMWARES, "kernel": KERNELS}
ROWS = pairwise(FACTORS)
NETWORK = {"bookworm-OVMF_CODE", "sid-OVMF.amdsev", "real"}


def _sig(cpu) -> int:
    kind, value = cpu
    return {"type": lambda: CPU_SIGS[value], "fms": lambda: cpu_sig(*value), "sig": lambda: value}[kind]()


def _row_id(row) -> str:
    return "-".join(str(row[k]) if k != "cpu" else f"{row[k][0]}{row[k][1]}" for k in FACTORS).replace(" ", "")


def _params(rows):
    for row in rows:
        marks = [pytest.mark.network] if NETWORK & {row["firmware"], row["kernel"]} else []
        yield pytest.param(row, id=_row_id(row), marks=marks)


@pytest.fixture(scope="session")
def firmware_paths():
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            if name == "amdsev-suffix":
                cache[name] = SUFFIX / "ovmf_AmdSev_suffix.bin"
            elif name == "ovmfx64-suffix":
                cache[name] = SUFFIX / "ovmf_OvmfX64_suffix.bin"
            elif name == "bookworm-OVMF_CODE":
                from tests.realinputs import bookworm_ovmf
                cache[name] = bookworm_ovmf("OVMF_CODE.fd")[0]
            else:
                from tests.realinputs import ovmf_amdsev
                cache[name] = ovmf_amdsev()[0]
        return cache[name]
    return get


@pytest.fixture(scope="session")
def kernel_inputs(tmp_path_factory):
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            if name == "none":
                cache[name] = (None, None, None)
            elif name == "empty":
                cache[name] = ("/dev/null", "/dev/null", None)
            else:
                from builder.steps.initrd import build_initrd
                from builder.steps.kernel import find_kernel
                from tests.realinputs import busybox_static, debian_kernel, kernel_tree, pinned_deflate
                kernel = debian_kernel("bookworm")[0]
                image = find_kernel(kernel_tree("bookworm"))
                # a real initrd: busybox, the default init and sev-guest with its dependencies
                initrd = tmp_path_factory.mktemp("initrd") / "initrd.img"
                initrd.write_bytes(build_initrd(busybox=busybox_static()[0], source_date_epoch=0,
                                                kernel_tree=image.tree, kernel_release=image.release,
                                                modules=["sev-guest"], deflate=pinned_deflate()).data)
                cache[name] = (str(kernel), str(initrd), NON_ASCII_CMDLINE)
        return cache[name]
    return get


def ours(mode, fw_path, vmm, sig, vcpus, features, kernel, initrd, append) -> bytes:
    fw = Firmware.load(fw_path)
    hashes = KernelHashes.from_files(kernel, initrd, append) if kernel else None
    shape = VmShape(vcpus, sig, features, profile_for(VmmType.parse(vmm)))
    if mode == "snp":
        return SnpLaunch(fw).measure(shape, hashes).digest
    if mode == "seves":
        return sev_es_launch(fw, VmShape(vcpus, sig, 0, shape.profile), hashes).digest
    return sev_launch(fw, hashes).digest


def check_row(row, firmware_paths, kernel_inputs):
    fw = firmware_paths(row["firmware"])
    kernel, initrd, append = kernel_inputs(row["kernel"])
    sig = _sig(row["cpu"])
    try:
        expected = oracle.oracle_digest(row["mode"], ovmf=fw, vcpus=row["vcpus"], vcpu_sig=sig, kernel=kernel,
                                        initrd=initrd, append=append, guest_features=row["features"],
                                        vmm=row["vmm"])
    except RuntimeError as e:
        # The oracle refuses this combination; so must we, with a named error.
        with pytest.raises(MeasureError):
            ours(row["mode"], fw, row["vmm"], sig, row["vcpus"], row["features"], kernel, initrd, append)
        return f"refused: {e}"
    got = ours(row["mode"], fw, row["vmm"], sig, row["vcpus"], row["features"], kernel, initrd, append)
    assert got.hex() == expected.hex()
    return "agreed"


@pytest.mark.parametrize("row", list(_params(ROWS)))
def test_pairwise_against_oracle(row, firmware_paths, kernel_inputs):
    check_row(row, firmware_paths, kernel_inputs)


def test_rows_cover_every_pair():
    index = {name: {repr(v): i for i, v in enumerate(values)} for name, values in FACTORS.items()}
    names = list(FACTORS)
    covered = set()
    for row in ROWS:
        covered |= covered_pairs({names.index(k): index[k][repr(v)] for k, v in row.items()})
    assert covered == all_pairs(FACTORS)
    assert len(ROWS) < 100  # far below the full product of 36,288


def test_rows_include_refused_combinations():
    """Kernel hashes on firmware without a hashes section occur, and are error cases."""
    assert any(r["kernel"] != "none" and r["firmware"] in ("ovmfx64-suffix", "bookworm-OVMF_CODE") for r in ROWS)


@pytest.mark.parametrize("name", list(oracle.CPU_SIGS))
def test_every_vcpu_type_name(name, firmware_paths):
    """Each of the oracle's vCPU type names once, with the same signature and digest."""
    assert CPU_SIGS[name] == oracle.CPU_SIGS[name]
    fw = firmware_paths("amdsev-suffix")
    expected = oracle.oracle_digest("snp", ovmf=fw, vcpus=2, vcpu_sig=oracle.CPU_SIGS[name])
    assert ours("snp", fw, "QEMU", CPU_SIGS[name], 2, 0x1, None, None, None) == expected


def test_name_sets_equal():
    assert set(CPU_SIGS) == set(oracle.CPU_SIGS)


@pytest.mark.parametrize("fw_name", ["amdsev-suffix", "ovmfx64-suffix",
                                     pytest.param("bookworm-OVMF_CODE", marks=pytest.mark.network),
                                     pytest.param("sid-OVMF.amdsev", marks=pytest.mark.network)])
def test_ovmf_hash_and_seeded_digest(fw_name, firmware_paths):
    fw_path = firmware_paths(fw_name)
    seed = oracle.oracle_ovmf_hash(fw_path)
    launch = SnpLaunch(Firmware.load(fw_path))
    assert launch.firmware_digest == seed
    seeded = SnpLaunch(Firmware.load(fw_path), ovmf_hash=seed)
    shape = VmShape(4, CPU_SIGS["EPYC-Milan"], 0x21)
    expected = oracle.oracle_digest("snp", ovmf=fw_path, vcpus=4, vcpu_sig=CPU_SIGS["EPYC-Milan"],
                                    guest_features=0x21, ovmf_hash=seed.hex())
    assert seeded.measure(shape).digest == launch.measure(shape).digest == expected


@pytest.mark.network
def test_real_firmware_real_kernel_every_vcpu_count(firmware_paths, kernel_inputs):
    """sid's AmdSev firmware with a real kernel: vCPU counts extend one resumable state."""
    fw_path = firmware_paths("sid-OVMF.amdsev")
    kernel, initrd, append = kernel_inputs("real")
    launch = SnpLaunch(Firmware.load(fw_path))
    shape = VmShape(1, CPU_SIGS["EPYC-Genoa"], 0x21)
    hashes = KernelHashes.from_files(kernel, initrd, append)
    got = launch.measure_vcpu_counts(shape, VCPUS, hashes)
    for n in VCPUS:
        expected = oracle.oracle_digest("snp", ovmf=fw_path, vcpus=n, vcpu_sig=CPU_SIGS["EPYC-Genoa"],
                                        kernel=kernel, initrd=initrd, append=append, guest_features=0x21)
        assert got[n].digest == expected, n


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("mode,vmm,firmware,kernel", list(itertools.product(MODES, VMMS, FIRMWARES, KERNELS)))
def test_full_product_against_oracle(mode, vmm, firmware, kernel, firmware_paths, kernel_inputs):
    """The optional wide run: every combination (python -m pytest -m slow -n auto)."""
    for cpu, vcpus, features in itertools.product(CPUS, VCPUS, FEATURES):
        check_row({"mode": mode, "vmm": vmm, "cpu": cpu, "vcpus": vcpus, "features": features,
                   "firmware": firmware, "kernel": kernel}, firmware_paths, kernel_inputs)
