"""``blindbox measure`` parsed without click: the same output, errors and exit statuses as through click,
and the measure path imports nothing of click, the builder, the auditor or cryptography."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import blindbox.cli.measure_core as core
from blindbox.cli import main
from tests.measure.test_cli import AMDSEV, ARGVS, SEED

BASE = ["--mode", "snp", "--vcpus", "1", "--ovmf", AMDSEV]
TYPE = ["--vcpu-type", "EPYC-v4"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = [a for a in ARGVS] + [BASE + a for a in (
    ["--vcpus", "0"] + TYPE, ["--vcpus", "-3"] + TYPE, ["--vcpus", "+3"] + TYPE, ["--vcpus", " 3"] + TYPE,
    ["--vcpus=1_0"] + TYPE, ["--vcpus", "1.5"], ["--vcpus"], ["--vcpu-type", "EPYC-v9"], ["--vcpu-family", "25"],
    ["--vcpu-family", "25", "--vcpu-model", "256", "--vcpu-stepping", "0"], ["--vcpu-sig", "0x800f12"] + TYPE,
    ["--vcpu-sig", "zz"], ["--vcpu-sig", "0x1ffffffff"], ["--vcpu-sig", "0o17"], ["--vcpu-sig", " 0x800f12 "],
    ["--vcpu-sig", "0X800F12"], ["--vcpu-sig", "08"], ["--guest-features", "0x1ffffffffffffffff"] + TYPE,
    ["--guest-features", "0x0"] + TYPE, ["--guest-features=0x21"] + TYPE, ["--snp-ovmf-hash", "abc"] + TYPE,
    ["--snp-ovmf-hash", SEED] + TYPE, ["--snp-ovmf-hash", "00" * 47] + TYPE, ["--initrd", "/dev/null"] + TYPE,
    ["--kernel", "/nonexistent/vmlinuz"] + TYPE, ["--kernel", "/tmp"] + TYPE, ["--kernel", "/tmp/"] + TYPE,
    ["--kernel", "/dev/null", "--append", "a\x00b"] + TYPE, ["--kernel", "/dev/null", "--append", "-x"] + TYPE,
    ["--kernel", "/dev/null", "--append", ""] + TYPE, ["--kernel", "/dev/null", "--append", "x\udcffy"] + TYPE,
    ["--kernel", "/dev//null"] + TYPE, ["--kernel", "./nonexistent"] + TYPE, ["--kernel", ""] + TYPE,
    ["--vmm-type", "xen"], ["--vmm-profile", "qemu-9"], ["--vmm-type", "gce", "--vmm-profile", "ec2"],
    ["--svsm", "/dev/null"] + TYPE, ["--mode", "SNP"] + TYPE, ["--mode", "bogus"], ["--output-format", "JSON"] + TYPE,
    ["--output-format", "json", "--trace"] + TYPE, ["--trace"] + TYPE, ["--json", "--json"] + TYPE,
    ["-v", "--verbose"] + TYPE, ["--verbose=1"] + TYPE, ["-vv"] + TYPE, ["-h"], ["--help"], ["--version"],
    ["--bogus"] + TYPE, ["extra"] + TYPE, ["--"] + TYPE, ["--vcpus", "2", "--vcpus", "3"] + TYPE,
    ["--vcpu-type", "épyc"],
)] + [
    ["--mode", "snp", "--ovmf", AMDSEV], ["--mode", "snp", "--vcpus", "2", "--ovmf", AMDSEV], ["--ovmf", AMDSEV],
    ["--mode", "snp", "--vcpus", "1"], [], ["--mode", "snp", "--vcpus", "1", "--ovmf", "/"],
    ["--mode", "snp:ovmf-hash", "--ovmf", AMDSEV, "--kernel", "/dev/null"],
    ["--mode", "seves", "--vcpus", "1", "--vcpu-type", "EPYC", "--ovmf", AMDSEV, "--snp-ovmf-hash", "00" * 48],
    ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC", "--ovmf", "/nonexistent.fd"],
] + [["--mode", "snp", "--ovmf", AMDSEV] + a for a in (
    # lists and ranges of shape options (tests/measure/test_cli_matrix.py)
    ["--vcpus", "1-3"] + TYPE, ["--vcpus", " 1 - 3 ,5"] + TYPE, ["--vcpus=2,1"] + TYPE, ["--vcpus", "3-1"] + TYPE,
    ["--vcpus", "1-4096", "--vcpu-type", "EPYC,EPYC-Rome", "--guest-features", ",".join(map(hex, range(1, 50, 2)))],
    ["--vcpus", "1,"] + TYPE, ["--vcpus", "1-２"] + TYPE, ["--vcpus", "1--2"] + TYPE, ["--vcpus", "+1-2"] + TYPE,
    ["--vcpus", "1", "--vcpu-type", "EPYC-v4,EPYC-Turin", "--json"], ["--vcpus", "1", "--vcpu-type", "EPYC,é"],
    ["--vcpus", "1-2", "--vcpu-sig", "0x800f12,0o17"], ["--vcpus", "1-2", "--vcpu-sig", "0x800f12,08"],
    ["--vcpus", "2", "--vmm-type", "ec2,gce"], ["--vcpus", "2", "--vmm-type", "ec2,gce"] + TYPE,
    ["--vcpus", "1", "--vmm-profile", "qemu,ec2-rdx0"] + TYPE, ["--vcpus", "1", "--vmm-profile", "qemu,"] + TYPE,
    ["--vcpus", "1", "--guest-features", "0x1,0x21", "--output-format", "base64"] + TYPE,
    ["--vcpus", "1-2", "--snp-ovmf-hash", SEED] + TYPE, ["--vcpus", "1-2", "--kernel", "/dev/null"] + TYPE,
    ["--vcpus", "1-2", "--mode", "snp:svsm", "--svsm", "/dev/null", "--vars-size", "4096"] + TYPE,
    ["--vcpus", "1-2", "--vcpu-family", "25", "--vcpu-model", "1", "--vcpu-stepping", "1"],
    ["--vcpus", "1-2", "--vcpu-family", "25", "--vcpu-model", "1", "--vcpu-stepping", "1"] + TYPE,
    ["--vcpus", "1-2", "--dump-vmsa"] + TYPE, ["--vcpus", "1-2", "-v"] + TYPE,
)]


def run(argv, capsys, monkeypatch, *, fast: bool):
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(core, "fast_options", lambda args: None)
        rc = main(["measure", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv", CASES, ids=lambda a: " ".join(a).replace(AMDSEV, "amdsev")[:90])
def test_fast_path_answers_exactly_as_click(argv, capsys, monkeypatch):
    assert run(argv, capsys, monkeypatch, fast=True) == run(argv, capsys, monkeypatch, fast=False)


def test_common_invocations_take_the_fast_path():
    taken = [a for a in ARGVS if core.fast_options(a) is not None]
    assert len(taken) == len(ARGVS)
    for argv in (["-h"], ["--version"], BASE + ["--dump-vmsa"], BASE + ["--vcpus=+3"], BASE + ["--kernel", "/tmp"]):
        assert core.fast_options(argv) is None, argv
    lists = core.fast_options(["--mode", "snp", "--ovmf", AMDSEV, "--vcpus", "1-64", "--vcpu-type", "EPYC,EPYC-Rome",
                               "--vmm-type", "QEMU,ec2", "--guest-features", "0x1,0x21", "--vcpu-sig", "1,2"])
    assert lists is not None
    for key in ("vcpus", "vcpu_type", "vmm_type", "guest_features", "vcpu_sig"):
        assert isinstance(lists[key], core.Many), key


def test_fast_options_are_those_click_passes():
    """The keyword arguments equal what the click command hands to the same function."""
    import blindbox.cli.measure as cmd
    seen = {}
    argv = BASE + TYPE + ["--kernel", "/dev/null", "--append", "a b", "-v", "--guest-features", "0x21",
                          "--output-format=base64"]
    original = core.run

    def spy(*args, **kwargs):
        seen["click"], seen["keywords"] = args, kwargs
        return original(*args, **kwargs)

    import inspect
    names = [n for n, p in inspect.signature(core.run).parameters.items() if p.kind is not p.KEYWORD_ONLY]
    cmd_run, cmd.run = cmd.run, spy
    try:
        # "+1" is read by click alone; the other options are the same
        assert main(["measure", "--mode", "snp", "--vcpus=+1", *argv[4:]]) == 0
    finally:
        cmd.run = cmd_run
    fast = core.fast_options(argv)
    assert fast is not None
    given = dict(zip(names, seen["click"], strict=True))
    assert seen["keywords"] == {"map_out": None, "html_out": None}  # the fast path never draws
    assert {k: (str(v) if k in ("ovmf", "kernel") and v is not None else v) for k, v in given.items()} == fast


def test_measure_command_imports_no_click_builder_auditor_or_cryptography():
    argv = ["measure", *BASE, *TYPE, "--kernel", "/dev/null", "--initrd", "/dev/null", "--append", "a"]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "blindbox.cli", *argv],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip()) == 96
    loaded = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "measure.snp" in loaded and "blindbox.cli.measure_core" in loaded
    bad = sorted(m for m in loaded if m.split(".")[0] in ("click", "builder", "cryptography", "yaml", "elftools")
                 or m.startswith("blindbox.audit") or m in ("blindbox.files", "blindbox.cli.picture"))
    assert bad == []
