"""``blindbox measure`` against ``sev-snp-measure``'s command line: same stdout, same files."""

from __future__ import annotations

import json
import os

import pytest

from blindbox.cli import main
from tests.conftest import VECTORS
from tests.measure import oracle, synth

AMDSEV = str(VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin")
OVMFX64 = str(VECTORS / "virtee-sev" / "measurement" / "ovmf_OvmfX64_suffix.bin")
SEED = "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"

ARGVS = [
    ["--mode", "snp", "--vcpus", "4", "--vcpu-type", "EPYC-v4", "--ovmf", AMDSEV],
    ["--mode", "snp", "--vcpus", "4", "--vcpu-type", "EPYC-v4", "--ovmf", AMDSEV, "-v"],
    ["--mode", "snp", "--vcpus", "4", "--vcpu-type", "EPYC-v4", "--ovmf", AMDSEV, "--output-format", "base64"],
    ["--mode", "snp", "--vcpus", "4", "--vcpu-type", "EPYC-v4", "--ovmf", AMDSEV, "--output-format", "base64", "-v"],
    ["--mode", "snp", "--vcpus=2", "--vcpu-sig=0xa00f11", "--ovmf", AMDSEV, "--guest-features", "0x21"],
    ["--mode", "snp", "--vcpus", "3", "--vcpu-family", "25", "--vcpu-model", "17", "--vcpu-stepping", "1",
     "--ovmf", AMDSEV, "--kernel", "/dev/null", "--initrd", "/dev/null", "--append", "console=ttyS0 ø"],
    ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-Milan", "--ovmf", AMDSEV, "--kernel", "/dev/null"],
    ["--mode", "snp", "--vcpus", "1", "--vmm-type", "ec2", "--ovmf", AMDSEV, "--kernel", "/dev/null"],
    ["--mode", "snp", "--vcpus", "8", "--vmm-type", "gce", "--ovmf", AMDSEV, "-v"],
    ["--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-Genoa", "--ovmf", AMDSEV, "--snp-ovmf-hash", SEED],
    ["--mode", "snp:ovmf-hash", "--ovmf", AMDSEV],
    ["--mode", "snp:ovmf-hash", "--ovmf", AMDSEV, "-v", "--output-format", "base64"],
    ["--mode", "seves", "--vcpus", "2", "--vcpu-type", "EPYC-Rome", "--ovmf", AMDSEV, "-v"],
    ["--mode", "seves", "--vcpus", "2", "--vcpu-type", "EPYC-Rome", "--ovmf", AMDSEV, "--kernel", "/dev/null"],
    ["--mode", "sev", "--ovmf", AMDSEV, "--kernel", "/dev/null", "--append", "a b", "-v"],
    ["--mode", "sev", "--ovmf", OVMFX64, "--output-format", "base64"],
    ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-Turin", "--ovmf", OVMFX64],
]


def ours(argv, capsys):
    if argv and argv[0] not in ("measure", "explain-vmsa"):
        argv = ["measure", *argv]
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv", ARGVS, ids=lambda a: " ".join(a[:6]).replace(AMDSEV, "amdsev"))
def test_same_stdout_as_oracle(argv, capsys):
    rc_o, out_o, err_o = oracle.oracle_cli(argv)
    assert rc_o == 0, err_o
    rc, out, err = ours(argv, capsys)
    assert (rc, out) == (0, out_o)
    assert err == ""


def test_dump_vmsa_writes_the_same_files(tmp_path, capsys, monkeypatch):
    argv = ["--mode", "snp", "--vcpus", "3", "--vcpu-type", "EPYC-Milan", "--ovmf", AMDSEV, "--dump-vmsa"]
    (tmp_path / "o").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "o")
    assert oracle.oracle_cli(argv)[0] == 0
    monkeypatch.chdir(tmp_path / "b")
    assert ours(argv, capsys)[0] == 0
    names = sorted(os.listdir(tmp_path / "o"))
    assert names == ["vmsa0.bin", "vmsa1.bin", "vmsa2.bin"] == sorted(os.listdir(tmp_path / "b"))
    for n in names:
        assert (tmp_path / "o" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()


def test_vmm_type_any_case(capsys):
    base = ["--mode", "snp", "--vcpus", "2", "--ovmf", AMDSEV]
    outs = {ours(base + ["--vmm-type", t], capsys)[1] for t in ("ec2", "EC2", "Ec2")}
    assert len(outs) == 1 and outs == {oracle.oracle_cli(base + ["--vmm-type", "ec2"])[1]}


def test_json_output(capsys):
    rc, out, _ = ours(["--mode", "snp", "--vcpus", "2", "--vcpu-type", "epyc-milan", "--ovmf", AMDSEV,
                       "--kernel", "/dev/null", "--append", "x", "--output-format", "json"], capsys)
    data = json.loads(out)
    assert rc == 0
    assert data["measurement"] == oracle.oracle_cli(["--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-Milan",
                                                     "--ovmf", AMDSEV, "--kernel", "/dev/null", "--append",
                                                     "x"])[1].strip()
    assert data["vcpu_type"] == "EPYC-Milan" and data["vcpu_sig"] == "0xa00f11"
    assert data["vmm_profile"]["name"] == "qemu" and data["mode"] == "snp"
    import hashlib
    assert data["inputs"]["ovmf"]["sha256"] == hashlib.sha256(open(AMDSEV, "rb").read()).hexdigest()
    assert data["inputs"]["kernel"] == {"path": "/dev/null", "sha256": hashlib.sha256(b"").hexdigest(), "size": 0}
    assert "initrd" not in data["inputs"]
    assert data["tool"]["name"] == "blindbox-guest"
    assert "SNP_KERNEL_HASHES" in [s["type"] for s in data["firmware"]["sev_metadata_sections"]]


def test_json_trace_lists_every_page(capsys):
    rc, out, _ = ours(["--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-v4", "--ovmf", AMDSEV,
                       "--json", "--trace"], capsys)
    data = json.loads(out)
    assert rc == 0 and len(data["trace"]) == data["pages_measured"]
    assert data["trace"][-1]["digest"] == data["measurement"]
    assert [p["page_type"] for p in data["trace"][-2:]] == ["VMSA", "VMSA"]


def test_ec2_rdx0_profile_selectable(capsys):
    """The pre-change EC2 VMSA (virtee/sev's EC2 vector) by an explicit option."""
    rc, out, _ = ours(["--mode", "snp", "--vcpus", "1", "--vmm-type", "ec2", "--vmm-profile", "ec2-rdx0",
                       "--ovmf", AMDSEV, "--kernel", "/dev/null", "--initrd", "/dev/null", "--snp-ovmf-hash", SEED],
                      capsys)
    assert (rc, out.strip()) == (0, "7d3756157c805bf6adf617064c8552e8c1688fa1c8756f11cbf56ba5d25c9270fb69c0505c1cbe1"
                                    "c5c66c0e34c6ed3be")


def test_explain_vmsa(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ovmf = synth.write(tmp_path / "o.fd", synth.image(0x10000, sections=synth.AMDSEV_LIKE_SECTIONS))
    assert ours(["measure", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", str(ovmf),
                 "--dump-vmsa"], capsys)[0] == 0
    os.rename("vmsa0.bin", "a.bin")
    assert ours(["measure", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-Milan", "--ovmf", str(ovmf),
                 "--dump-vmsa", "--guest-features", "0x21"], capsys)[0] == 0
    rc, out, _ = ours(["explain-vmsa", "a.bin", "vmsa0.bin"], capsys)
    assert rc == 3
    assert "rdx" in out and "0x800f12" in out and "0xa00f11" in out and "sev_features" in out
    assert ours(["explain-vmsa", "a.bin", "a.bin"], capsys)[:2] == (0, "identical\n")


@pytest.mark.parametrize("argv,sig", [
    (["--vcpu-sig", "0"], 0),
    (["--vcpu-family", "0", "--vcpu-model", "1", "--vcpu-stepping", "2"], 0x12),
    (["--vcpu-family", "26", "--vcpu-model", "0", "--vcpu-stepping", "0"], 0xB00F00),
])
def test_zero_values_are_taken_as_given(argv, sig, capsys):
    """0.0.13's CLI skips a family or signature of 0 (falsy); its library and blindbox do not."""
    rc, out, _ = ours(["--mode", "snp", "--vcpus", "2", "--ovmf", AMDSEV, *argv], capsys)
    expected = oracle.oracle_digest("snp", ovmf=AMDSEV, vcpus=2, vcpu_sig=sig)
    assert (rc, out.strip()) == (0, expected.hex())


def test_version_option_like_the_oracle(capsys):
    rc, out, _ = ours(["--version"], capsys)
    assert rc == 0 and out.startswith("blindbox measure ") and "0.0.13" in out
    assert oracle.oracle_cli(["--version"])[0] == 0


@pytest.mark.parametrize("argv, message", [
    (["measure", "--mode", "snp", "--vcpus", "1.5", "--ovmf", "x"],
     "Invalid value for '--vcpus': '1.5' is not a valid integer; see 'blindbox measure --help'."),
    (["measure", "--mode", "snp", "--vcpus", "1", "--ovmf", "/"],
     "Invalid value for '--ovmf': File '/' is a directory; see 'blindbox measure --help'."),
    (["explain-vmsa", "a"], "Missing argument 'ACTUAL'; see 'blindbox explain-vmsa --help'."),
    (["mesure"], "No such command 'mesure'; see 'blindbox --help'."),
])
def test_usage_errors_are_one_line_with_exit_2(argv, message, capsys):
    from blindbox.cli import main
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and err == f"blindbox: error: {message}\n", err
