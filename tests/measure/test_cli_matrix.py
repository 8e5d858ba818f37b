"""``blindbox measure`` with lists and ranges of shape options: one row per shape, each equal to
sev-snp-measure's single-shape answer; invalid matrices refused whole (exit 2, nothing printed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import blindbox.cli.measure_core as core
from blindbox.cli import main
from measure.cpu import CPU_SIGS
from tests import realinputs
from tests.measure import oracle
from tests.measure.test_cli import AMDSEV

TYPES = ["EPYC-v4", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa", "EPYC-Turin"]
MATRIX = ["--vcpus", "1-64", "--vcpu-type", ",".join(TYPES), "--vmm-type", "QEMU,ec2"]


def run(argv, capsys, monkeypatch=None, *, fast=True):
    if fast:
        rc = main(["measure", *map(str, argv)])
    else:
        assert monkeypatch is not None
        with monkeypatch.context() as m:
            m.setattr(core, "fast_options", lambda args: None)
            rc = main(["measure", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def table(out: str) -> list[dict[str, str]]:
    lines = out.splitlines()
    head = lines[0].split()
    return [dict(zip(head, line.split(), strict=True)) for line in lines[1:]]


@pytest.mark.network
def test_640_rows_in_one_command_match_sev_snp_measure_on_a_sample(tmp_path, capsys):
    ovmf, _ = realinputs.ovmf_amdsev()
    kernel, _ = realinputs.debian_kernel()
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd" * 5000)
    append = "console=ttyS0 quiet"
    inputs = ["--ovmf", ovmf, "--kernel", kernel, "--initrd", initrd, "--append", append]
    assert core.fast_options([str(a) for a in ["--mode", "snp", *MATRIX, *inputs]]) is not None
    rc, out, err = run(["--mode", "snp", *MATRIX, *inputs], capsys)
    assert (rc, err) == (0, "")
    rows = table(out)
    assert out.splitlines()[0].split() == ["vcpu_type", "vmm_type", "vcpus", "measurement"]
    # vCPU type outer, VMM next, vCPU counts ascending inner: the Cartesian product in the order given
    assert [(r["vcpu_type"], r["vmm_type"], int(r["vcpus"])) for r in rows] == \
        [(t, v, n) for t in TYPES for v in ("QEMU", "ec2") for n in range(1, 65)]
    sample = random.Random(14).sample(rows, 40) + [rows[0], rows[-1]]
    for row in sample:
        expected = oracle.oracle_digest("snp", ovmf=ovmf, vcpus=int(row["vcpus"]),
                                        vcpu_sig=CPU_SIGS[row["vcpu_type"]], kernel=kernel, initrd=initrd,
                                        append=append, vmm=row["vmm_type"])
        assert row["measurement"] == expected.hex(), row


def test_each_json_object_is_the_single_shape_object(tmp_path, capsys):
    argv = ["--mode", "snp", "--ovmf", AMDSEV, "--json", "--vcpus", "2,1", "--vcpu-sig", "0x800f12,0xa00f11",
            "--guest-features", "0x1,0x21"]
    rc, out, err = run(argv, capsys)
    assert (rc, err) == (0, "")
    objects = json.loads(out)
    assert [(o["vcpu_sig"], o["guest_features"], o["vcpus"]) for o in objects] == \
        [(s, f, n) for s in ("0x800f12", "0xa00f11") for f in ("0x1", "0x21") for n in (1, 2)]
    for o in objects:
        single = ["--mode", "snp", "--ovmf", AMDSEV, "--json", "--vcpus", str(o["vcpus"]),
                  "--vcpu-sig", o["vcpu_sig"], "--guest-features", o["guest_features"]]
        rc, out, _ = run(single, capsys)
        assert rc == 0 and json.loads(out) == o


def test_a_traced_matrix_lists_each_shapes_pages(capsys):
    argv = ["--mode", "snp", "--ovmf", AMDSEV, "--json", "--trace", "--vcpus", "1-2", "--vcpu-type", "EPYC-v4"]
    rc, out, _ = run(argv, capsys)
    one, two = json.loads(out)
    assert rc == 0 and len(two["trace"]) == len(one["trace"]) + 1 == two["pages_measured"]
    assert two["trace"][:-1] == one["trace"]


def test_vmm_profiles_and_base64_rows(capsys):
    argv = ["--mode", "snp", "--ovmf", AMDSEV, "--vcpus", "1", "--vcpu-type", "EPYC-Milan",
            "--vmm-profile", "qemu,ec2-rdx0", "--output-format", "base64"]
    rc, out, _ = run(argv, capsys)
    rows = table(out)
    assert rc == 0 and [r["vmm_profile"] for r in rows] == ["qemu", "ec2-rdx0"]
    for r in rows:
        rc, single, _ = run(["--mode", "snp", "--ovmf", AMDSEV, "--vcpus", "1", "--vcpu-type", "EPYC-Milan",
                             "--vmm-profile", r["vmm_profile"], "--output-format", "base64"], capsys)
        assert single.strip() == r["measurement"]


def test_vmms_that_need_no_vcpu_type(capsys):
    rc, out, err = run(["--mode", "snp", "--ovmf", AMDSEV, "--vcpus", "2", "--vmm-type", "ec2,gce"], capsys)
    assert (rc, err) == (0, "")
    rows = table(out)
    assert [r["vmm_type"] for r in rows] == ["ec2", "gce"]
    for r in rows:
        expected = oracle.oracle_digest("snp", ovmf=AMDSEV, vcpus=2, vmm=r["vmm_type"])
        assert r["measurement"] == expected.hex()


BAD = [
    (["--vcpus", "8-1"], "--vcpus '8-1': the range '8-1' is empty (reversed); write the low end first, as in 1-8."),
    (["--vcpus", "0-4"], "--vcpus '0-4': '0-4' is out of range; a guest has 1 to 4096 vCPUs."),
    (["--vcpus", "1-4,3"], "--vcpus '1-4,3' lists 3 twice; give each value once."),
    (["--vcpus", "1,,2"], "--vcpus '1,,2' has an empty entry"),
    (["--vcpus", "1-x"], "--vcpus '1-x': '1-x' is neither a count nor a range"),
    (["--vcpus", "1-2", "--vcpu-type", "EPYC-Milan,EPYC-v9"], "unknown vCPU type 'EPYC-v9'"),
    (["--vcpus", "1-2", "--vcpu-type", "EPYC-Milan,epyc-milan"], "--vcpu-type 'EPYC-Milan,epyc-milan' lists "
                                                                  "EPYC-Milan twice"),
    (["--vcpus", "1", "--vmm-type", "QEMU,xen"], "unknown VMM type 'xen'"),
    (["--vcpus", "1", "--vmm-type", "ec2,EC2"], "--vmm-type 'ec2,EC2' lists ec2 twice"),
    (["--vcpus", "1", "--guest-features", "0x1,0x2"], "--guest-features 0x2 lacks SNPActive (bit 0)"),
    (["--vcpus", "1", "--guest-features", "0x1,zz"], "--guest-features '0x1,zz': 'zz' is not an integer"),
    (["--vcpus", "1-2", "--mode", "seves"], "lists of shape options need --mode snp"),
    (["--vcpus", "1-2", "--dump-vmsa"], "--dump-vmsa writes the VMSA pages of one launch; give single shape values"),
    (["--vcpus", "1-2", "--vmm-type", "QEMU,ec2", "--vmm-profile", "qemu"],
     "--vmm-profile fixes the VMM, so --vmm-type cannot be a list with it"),
    (["--vcpus", "1", "--vmm-type", "gce", "--vmm-profile", "ec2,gce"], "--vmm-profile ec2 is a ec2 profile but"),
    (["--vcpus", "1", "--vcpu-sig", "0x800f12,0x800f12"], "--vcpu-sig '0x800f12,0x800f12' lists 0x800f12 twice"),
    (["--vcpus", "1", "--vcpu-sig", "0x800f12,0x1ffffffff"], "--vcpu-sig 0x1ffffffff does not fit in 32 bits"),
    (["--vcpus", "1-4000", "--guest-features", ",".join(hex(2 * i + 1) for i in range(26))],
     "the lists give 104,000 shapes, more than the 100,000 one command computes"),
    (["--vcpus", "1-2", "--trace"], "--trace lists pages in JSON"),
    (["--vcpus", "1-2", "--map", "never-written.svg"],
     "--map draws one launch; give single shape values, not lists, or drop --map."),
    (["--vcpus", "1", "--vmm-type", "QEMU,ec2", "--map", "never-written.svg", "--html", "never-written.html"],
     "--map and --html draw one launch; give single shape values, not lists"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "click"])
def test_an_invalid_matrix_fails_whole_before_printing(extra, message, fast, capsys, monkeypatch):
    argv = ["--mode", "snp", "--ovmf", AMDSEV, "--vcpu-type", "EPYC-v4", *extra]
    if "--vcpu-type" in extra or "--vcpu-sig" in extra:
        argv = argv[:4] + argv[6:]
    rc, out, err = run(argv, capsys, monkeypatch, fast=fast)
    assert (rc, out) == (2, "")
    assert err.startswith("blindbox: error: ") and message in err, err
    assert len(err.splitlines()) == 1
    assert not any(Path(a).exists() for a in extra if a.startswith("never-written"))


def test_a_matrix_imports_no_click_and_no_diff():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    argv = ["measure", "--mode", "snp", "--ovmf", AMDSEV, "--vcpus", "1-4", "--vcpu-type", "EPYC,EPYC-Rome"]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "blindbox.cli", *argv],
                          capture_output=True, text=True, cwd=root, check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 9
    loaded = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "measure.matrix" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("click", "builder", "cryptography")
                or m.startswith("blindbox.audit") or m == "measure.diff"}
