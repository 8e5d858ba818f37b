"""explain-report: find the launch that produced a measurement, checked against the oracle."""

from __future__ import annotations

import json

import pytest

from blindbox.cli import main
from measure.kernel_hashes import KernelHashes
from measure.ovmf import Firmware
from blindbox.audit.search import SearchSpace, feature_combinations, find_launches
from measure.vmm import profile
from tests.conftest import VECTORS
from tests.measure import oracle

AMDSEV = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"
SMALL = SearchSpace(max_vcpus=20)


@pytest.mark.parametrize("vmm,vcpus,sig,features,kernel", [
    ("QEMU", 6, 0xA00F11, 0x21, True),
    ("QEMU", 17, 0xB00F00, 0x1 | 0x40 | 0x4000, True),
    ("QEMU", 3, 0x800F12, 0x1, False),
    ("ec2", 2, None, 0x21, True),
    ("gce", 9, None, 0x1, False),
])
def test_finds_the_launch_the_oracle_measured(vmm, vcpus, sig, features, kernel, tmp_path):
    k = tmp_path / "k"
    k.write_bytes(b"kernel")
    target = oracle.oracle_digest("snp", ovmf=AMDSEV, vcpus=vcpus, vcpu_sig=sig, guest_features=features,
                                  kernel=k if kernel else None, append="console=ttyS0" if kernel else None, vmm=vmm)
    hashes = KernelHashes.from_files(k, None, "console=ttyS0")
    result = find_launches(Firmware.load(AMDSEV), target, hashes, SMALL)
    assert len(result.found) == 1
    hit = result.found[0]
    assert (hit.profile.vmm_type.value, hit.vcpus, hit.guest_features, hit.kernel_hashes) == \
        (vmm, vcpus, features, kernel)
    if vmm == "QEMU":
        assert hit.vcpu_sig == sig


def test_old_ec2_vmsa_is_recognised():
    target = bytes.fromhex("7d3756157c805bf6adf617064c8552e8c1688fa1c8756f11cbf56ba5d25c9270fb69c0505c1cbe1"
                           "c5c66c0e34c6ed3be")  # virtee/sev's EC2 vector (rdx 0, kernel hashes of empty files)
    hashes = KernelHashes.from_files("/dev/null", "/dev/null", None)
    found = find_launches(Firmware.load(AMDSEV), target, hashes, SMALL).found
    assert [(f.profile.name, f.vcpus, f.guest_features) for f in found] == [("ec2-rdx0", 1, 0x1)]


def test_unknown_measurement_finds_nothing():
    result = find_launches(Firmware.load(AMDSEV), bytes(48), None, SMALL)
    # qemu: 5 vCPU signatures x 32 feature sets; ec2, ec2-rdx0, gce fix rdx: 32 each; 20 counts
    assert result.found == () and result.tried == (5 * 32 + 3 * 32) * 20


def test_search_space_defaults():
    space = SearchSpace()
    assert [p.name for p in space.profiles] == ["qemu", "ec2", "ec2-rdx0", "gce"]
    assert len(feature_combinations()) == 32 and all(f & 1 for f in feature_combinations())
    assert profile("qemu-svsm-fcw0") not in space.profiles


def run(argv, capsys):
    rc = main(["explain-report", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_cli_with_report_file(tmp_path, capsys):
    from blindbox.audit.report import Product
    from tests.audit.testchain import make_chain, make_report
    target = oracle.oracle_digest("snp", ovmf=AMDSEV, vcpus=5, vcpu_sig=0xA10F10, guest_features=0x21)
    report = tmp_path / "report.bin"
    report.write_bytes(make_report(make_chain(Product.GENOA, label="explain"), measurement=target))
    rc, out, _ = run([report, "--ovmf", AMDSEV, "--max-vcpus", 8], capsys)
    assert rc == 0
    assert "5 vCPU(s) of EPYC-Genoa (0xa10f10)" in out and "0x21 (SNP_ACTIVE|DEBUG_SWAP)" in out
    rc, out, _ = run(["--measurement", target.hex(), "--ovmf", AMDSEV, "--max-vcpus", 8, "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["found"][0]["vcpus"] == 5 and data["searched"]["max_vcpus"] == 8


def test_cli_not_found_exits_3(capsys):
    rc, out, _ = run(["--measurement", "00" * 48, "--ovmf", AMDSEV, "--max-vcpus", 2], capsys)
    assert rc == 3 and "no launch" in out


@pytest.mark.parametrize("argv,needle", [
    (["--ovmf", str(AMDSEV)], "exactly one"),
    (["--measurement", "zz", "--ovmf", str(AMDSEV)], "96 hex digits"),
    (["--measurement", "00" * 48], "--bundle"),
    (["--measurement", "00" * 48, "--ovmf", str(AMDSEV), "--max-vcpus", "0"], "--max-vcpus 0"),
    (["--measurement", "00" * 48, "--ovmf", str(AMDSEV), "--append", "x"], "need --kernel"),
    (["--measurement", "00" * 48, "--bundle", "/nonexistent"], "manifest"),
])
def test_cli_bad_input(argv, needle, capsys):
    rc, _, err = run(argv, capsys)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_bundle_shape_whose_digest_another_launch_produces_is_flagged(tmp_path, capsys):
    """A manifest may keep a shape's fields and id consistent yet publish another launch's digest;
    explain-report names the contradiction and exits 3, where it used to print both facts and pass."""
    from measure import SnpLaunch, VmShape
    from tests.audit.manifestdoc import CMDLINE, entry, write_bundle

    k, i = tmp_path / "k", tmp_path / "i"
    k.write_bytes(b"kernel"), i.write_bytes(b"initrd")  # the bundle's kernel and initrd
    hashes = KernelHashes.from_files(k, i, CMDLINE)
    launch = SnpLaunch(Firmware.load(AMDSEV))
    digest = {n: launch.measure(VmShape(n, 0x800F12, 0x1, profile("qemu")), hashes).digest for n in (1, 2, 3)}
    honest = tmp_path / "honest"
    write_bundle(honest, AMDSEV.read_bytes(),
                 [entry(1, "EPYC-v4", 0x1, digest[1]), entry(2, "EPYC-v4", 0x1, digest[2])])
    rc, out, err = run(["--measurement", digest[2].hex(), "--bundle", honest, "--max-vcpus", 4], capsys)
    assert rc == 0 and "CONTRADICTION" not in out and err == ""
    assert "published in the bundle's manifest for qemu:EPYC-v4:2:0x1" in out

    lying = tmp_path / "lying"  # the 2-vCPU shape publishes the digest of a 3-vCPU launch
    write_bundle(lying, AMDSEV.read_bytes(), [entry(1, "EPYC-v4", 0x1, digest[1]), entry(2, "EPYC-v4", 0x1, digest[3])])
    rc, out, err = run(["--measurement", digest[3].hex(), "--bundle", lying, "--max-vcpus", 4], capsys)
    assert rc == 3
    assert "CONTRADICTION: the manifest publishes this MEASUREMENT for qemu:EPYC-v4:2:0x1 (VMM profile qemu, " \
           "2 vCPU(s) of EPYC-v4" in out and "produced by VMM profile qemu, 3 vCPU(s)" in out
    assert err.startswith("blindbox: error: the manifest publishes this MEASUREMENT for qemu:EPYC-v4:2:0x1")
    rc, out, _ = run(["--measurement", digest[3].hex(), "--bundle", lying, "--max-vcpus", 4, "--json"], capsys)
    assert rc == 3 and [c["shape"] for c in json.loads(out)["contradictions"]] == ["qemu:EPYC-v4:2:0x1"]


def test_bundle_whose_shape_id_contradicts_its_fields_is_refused(tmp_path, capsys):
    """The issue's case: shape id says 2 vCPUs, its vcpus field 1 (with the 1-vCPU digest)."""
    from tests.audit.manifestdoc import entry, write_bundle

    bad = entry(1, "EPYC-v4", 0x1, "11" * 48)
    bad["shape"] = "qemu:EPYC-v4:2:0x1"
    write_bundle(tmp_path / "b", AMDSEV.read_bytes(), [bad])
    rc, out, err = run(["--measurement", "11" * 48, "--bundle", tmp_path / "b", "--max-vcpus", 2], capsys)
    assert rc == 3 and out == ""
    assert "manifest.json: measurements[0].vcpus is 1, but the shape id 'qemu:EPYC-v4:2:0x1' says 2" in err
