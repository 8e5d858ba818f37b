"""``blindbox measure-diff A B``: the first PAGE_INFO where two launches part and its cause, one test per
cause; exit 0 equal, 3 different, 2 bad input."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from blindbox.cli import main
from measure.diff import Side, compare, side_from_json
from measure.snp import VmShape
from measure.spec import BSP_RESET_EIP, SectionType
from measure.vmm import profile
from measure.vmsa import reset_vmsa
from tests import realinputs
from tests.audit.manifestdoc import entry, write_bundle
from tests.measure import synth
from tests.measure.test_cli import AMDSEV


def cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "bug" not in err, err
    return rc, out, err


@pytest.fixture
def inputs(tmp_path):
    files = {}
    for name in ("kernel", "kernel2", "initrd", "initrd2"):
        files[name] = tmp_path / name
        files[name].write_bytes(name.encode() * 100)
    return files


def traced(tmp_path, name, capsys, *extra, ovmf=AMDSEV, kernel=True, inputs=None):
    argv = ["measure", "--mode", "snp", "--ovmf", ovmf, "--json", "--trace", "--vcpus", "2",
            "--vcpu-type", "EPYC-Milan"]
    if kernel:
        argv += ["--kernel", inputs["kernel"], "--initrd", inputs["initrd"], "--append", "console=ttyS0"]
    argv += extra  # a repeated option: the last one counts
    rc, out, err = cli(argv, capsys)
    assert rc == 0, err
    path = tmp_path / f"{name}.json"
    path.write_text(out)
    return path


def diff(a, b, capsys, *extra):
    return cli(["measure-diff", a, b, *extra], capsys)


def test_the_same_launch_is_identical(tmp_path, capsys, inputs):
    a = traced(tmp_path, "a", capsys, inputs=inputs)
    b = traced(tmp_path, "b", capsys, inputs=inputs)
    rc, out, err = diff(a, b, capsys)
    assert (rc, err) == (0, "")
    assert out.splitlines()[-1] == "identical: both launches measure the same 34 pages"


@pytest.mark.parametrize("extra, part, cause, detail", [
    (["--vcpu-type", "EPYC-Genoa"], "PAGE_INFO 32 (VMSA in A, VMSA in B, GPA 0xfffffffff000)",
     "the bootstrap processor's VMSA differs: rdx holds the vCPU signature (0xa00f11 in A, 0xa10f10 in B)",
     "rdx                    @0x0310  A 0xa00f11  B 0xa10f10"),
    (["--guest-features", "0x21"], "PAGE_INFO 32 (VMSA in A, VMSA in B, GPA 0xfffffffff000)",
     "the bootstrap processor's VMSA differs: sev_features is the guest features (0x1 in A, 0x21 in B)",
     "sev_features           @0x03b0  A 0x1  B 0x21"),
    (["--vcpus", "3"], "PAGE_INFO 34 (nothing in A, VMSA in B, GPA 0xfffffffff000)",
     "the number of vCPUs differs: 3 in B, 2 in A (1 more VMSA page)", None),
    (["--append", "console=ttyS1"], "PAGE_INFO 16 (NORMAL in A, NORMAL in B, GPA 0x810000)",
     "the kernel hashes page at GPA 0x810000 differs: the cmdline hash differs", "cmdline  A "),
    (["--vmm-type", "gce"], "PAGE_INFO 1 (ZERO in A, UNMEASURED in B, GPA 0x800000)",
     "the page at GPA 0x800000 in the SNP_SEC_MEM metadata section 0x800000+0x9000 is measured as ZERO in A, "
     "UNMEASURED in B", "the VMM profiles differ (qemu in A, gce in B)"),
    (["--vmm-type", "ec2"], "PAGE_INFO 14 (CPUID in A, ZERO in B, GPA 0x80e000)",
     "the page order or addresses differ: A measures a CPUID page at GPA 0x80e000 in the CPUID metadata section "
     "0x80e000+0x1000, B a ZERO page at GPA 0x80f000 in the SVSM_CAA metadata section 0x80f000+0x1000",
     "the VMM profiles differ (qemu in A, ec2 in B)"),
], ids=["vcpu-sig", "guest-features", "vcpus", "cmdline", "sec-mem-type", "page-order"])
def test_each_cause_is_named(tmp_path, capsys, inputs, extra, part, cause, detail):
    a = traced(tmp_path, "a", capsys, inputs=inputs)
    b = traced(tmp_path, "b", capsys, *extra, inputs=inputs)
    rc, out, err = diff(a, b, capsys)
    assert (rc, err) == (3, "")
    lines = out.splitlines()
    assert lines[2] == f"the chains part at {part}"
    assert lines[3] == f"cause: {cause}"
    if detail is not None:
        assert lines[4].startswith(f"  {detail}"), lines


@pytest.mark.parametrize("which", ["kernel", "initrd"])
def test_the_kernel_or_initrd_hash(tmp_path, capsys, inputs, which):
    a = traced(tmp_path, "a", capsys, inputs=inputs)
    other = {**inputs, which: inputs[f"{which}2"]}
    b = traced(tmp_path, "b", capsys, inputs=other)
    rc, out, _ = diff(a, b, capsys)
    want = [hashlib.sha256(side[which].read_bytes()).hexdigest() for side in (inputs, other)]
    assert rc == 3
    assert f"cause: the kernel hashes page at GPA 0x810000 differs: the {which} hash differs\n" in out
    assert f"  {which:<8} A {want[0]}  B {want[1]}\n" in out


def test_a_launch_without_a_kernel(tmp_path, capsys, inputs):
    a = traced(tmp_path, "a", capsys, inputs=inputs)
    b = traced(tmp_path, "b", capsys, kernel=False)
    rc, out, _ = diff(a, b, capsys)
    assert rc == 3
    assert ("cause: the page at GPA 0x810000 in the SNP_KERNEL_HASHES metadata section 0x810000+0x1000 is "
            "measured as NORMAL in A, ZERO in B\n  B measures no kernel, so its kernel hashes section is ZERO pages"
            ) in out


def test_the_vmm_segment_attributes(tmp_path, capsys, inputs):
    """Two VMM profiles measured in the same page order, whose VMSAs differ in segment attributes."""
    a = side_from_json(traced(tmp_path, "a", capsys, inputs=inputs), "A")
    ec2 = profile("ec2")
    eip = int(a.firmware["sev_es_reset_eip"], 16)
    pages = [hashlib.sha384(reset_vmsa(ec2, e, 0x1, a.vcpu_sig).to_bytes()).digest() for e in (BSP_RESET_EIP, eip)]
    trace = list(a.trace)
    vmsa = [i for i, p in enumerate(trace) if p[0] == "VMSA"]
    for n, i in enumerate(vmsa):
        trace[i] = ("VMSA", trace[i][1], pages[min(n, 1)], b"\x01" * 48)
    b = Side(**{**a.__dict__, "label": "B (synthetic)", "trace": tuple(trace), "profile": "ec2"})
    parting = compare(a, b)
    assert parting is not None and parting.index == vmsa[0]
    assert parting.cause == ("the bootstrap processor's VMSA differs: rdx differs between the VMM profiles (qemu "
                             "in A, ec2 in B); the VMM profiles set cs.attrib, mxcsr, ss.attrib, tr.attrib, x87_fcw "
                             "differently (qemu in A, ec2 in B)")
    assert any(d.startswith("cs.attrib ") and "A 0x9b  B 0x9a" in d for d in parting.details)


def test_the_metadata_sections(tmp_path, capsys):
    sections = [(0x800000, 0x9000, SectionType.SNP_SEC_MEM), (0x809000, 0x1000, SectionType.SNP_SECRETS),
                (0x80A000, 0x1000, SectionType.CPUID)]
    wider = [(0x800000, 0xA000, SectionType.SNP_SEC_MEM), (0x80A000, 0x1000, SectionType.SNP_SECRETS),
             (0x80B000, 0x1000, SectionType.CPUID)]
    fa = synth.write(tmp_path / "a.fd", synth.image(0x10000, sections=sections))
    fb = synth.write(tmp_path / "b.fd", synth.image(0x10000, sections=wider))
    a = traced(tmp_path, "a", capsys, ovmf=fa, kernel=False)
    b = traced(tmp_path, "b", capsys, ovmf=fb, kernel=False)
    rc, out, _ = diff(a, b, capsys)
    assert rc == 3
    # the second byte of the first section's little-endian size (the metadata is at 0xf000, its sections at 0xf010)
    assert ("cause: the firmware bytes differ at file offset 0xf015 (GPA 0xfffff015) inside the firmware image, "
            "outside its firmware volumes\n  3 of the page's 4096 bytes differ; first: 0x90 in A, 0xa0 in B\n") in out
    assert ("  the firmware's SEV metadata sections differ: A SNP_SEC_MEM 0x800000+0x9000, SNP_SECRETS "
            "0x809000+0x1000, CPUID 0x80a000+0x1000; B SNP_SEC_MEM 0x800000+0xa000, SNP_SECRETS 0x80a000+0x1000, "
            "CPUID 0x80b000+0x1000\n") in out


@pytest.mark.network
def test_firmware_bytes_at_an_offset_inside_a_firmware_volume(tmp_path, capsys, inputs):
    ovmf, _ = realinputs.ovmf_amdsev()
    data = bytearray(ovmf.read_bytes())
    data[0x100123] ^= 0xFF
    changed = tmp_path / "changed.fd"
    changed.write_bytes(bytes(data))
    original = tmp_path / "original.fd"
    shutil.copyfile(ovmf, original)
    a = traced(tmp_path, "a", capsys, ovmf=original, inputs=inputs)
    b = traced(tmp_path, "b", capsys, ovmf=changed, inputs=inputs)
    rc, out, _ = diff(a, b, capsys)
    assert rc == 3
    assert "the chains part at PAGE_INFO 256 (NORMAL in A, NORMAL in B, GPA 0xffd00000)\n" in out
    assert ("cause: the firmware bytes differ at file offset 0x100123 (GPA 0xffd00123) inside firmware volume "
            "0x84000+0x348000 (FFS2)\n  1 of the page's 4096 bytes differ; first: ") in out
    changed.unlink()  # without the file only the page is known
    rc, out, _ = diff(a, b, capsys)
    assert rc == 3
    assert ("cause: the firmware bytes differ in the page at file offset 0x100000 (GPA 0xffd00000) inside firmware "
            "volume 0x84000+0x348000 (FFS2)\n  the firmware files are not at hand") in out


def test_json_output(tmp_path, capsys, inputs):
    a = traced(tmp_path, "a", capsys, inputs=inputs)
    b = traced(tmp_path, "b", capsys, "--vcpus", "3", inputs=inputs)
    rc, out, _ = diff(a, b, capsys, "--json")
    doc = json.loads(out)
    assert rc == 3 and doc["equal"] is False
    assert doc["parting"] == {"index": 34, "gpa": "0xfffffffff000", "page_type_a": None, "page_type_b": "VMSA",
                              "cause": "the number of vCPUs differs: 3 in B, 2 in A (1 more VMSA page)", "details": []}
    rc, out, _ = diff(a, a, capsys, "--json")
    assert rc == 0 and json.loads(out)["equal"] is True and json.loads(out)["parting"] is None


@pytest.fixture
def bundle(tmp_path):
    """A bundle whose manifest publishes two shapes, with their real digests."""
    from measure import Firmware, KernelHashes, SnpLaunch
    from measure.cpu import CPU_SIGS
    directory = tmp_path / "bundle"
    with open(AMDSEV, "rb") as f:
        write_bundle(directory, f.read(), [])
    launch = SnpLaunch(Firmware.load(directory / "OVMF.amdsev.fd"))
    hashes = KernelHashes.from_files(directory / "bzImage", directory / "initrd", b"console=ttyS0")
    entries = [entry(n, t, 0x1, launch.measure(VmShape(n, CPU_SIGS[t], 0x1, profile("qemu")), hashes).digest)
               for n, t in ((4, "EPYC-Genoa"), (2, "EPYC-Genoa"))]
    write_bundle(directory, (directory / "OVMF.amdsev.fd").read_bytes(), entries)
    return directory


def test_a_manifest_shape_against_the_measure_json(tmp_path, capsys, bundle):
    argv = ["measure", "--mode", "snp", "--ovmf", bundle / "OVMF.amdsev.fd", "--kernel", bundle / "bzImage",
            "--initrd", bundle / "initrd", "--append", "console=ttyS0", "--vcpu-type", "EPYC-Genoa", "--json",
            "--trace", "--vcpus"]
    for n in (4, 3):
        rc, out, _ = cli(argv + [n], capsys)
        (tmp_path / f"{n}.json").write_text(out)
    shape = f"{bundle / 'manifest.json'}#qemu:EPYC-Genoa:4:0x1"
    rc, out, err = diff(shape, tmp_path / "4.json", capsys)
    assert (rc, err) == (0, "") and "identical" in out
    rc, out, _ = diff(shape, tmp_path / "3.json", capsys)
    assert rc == 3 and "cause: the number of vCPUs differs: 4 in A, 3 in B (1 more VMSA page)" in out
    rc, out, _ = diff(shape, f"{bundle / 'manifest.json'}#qemu:EPYC-Genoa:2:0x1", capsys)
    assert rc == 3 and "cause: the number of vCPUs differs: 4 in A, 2 in B (2 more VMSA pages)" in out


def test_a_bundle_file_that_is_not_the_published_one(capsys, bundle):
    (bundle / "initrd").write_bytes(b"other")
    rc, out, err = diff(f"{bundle / 'manifest.json'}#qemu:EPYC-Genoa:4:0x1",
                        f"{bundle / 'manifest.json'}#qemu:EPYC-Genoa:2:0x1", capsys)
    assert (rc, out) == (3, "")
    assert f"the bundle's initrd file {bundle / 'initrd'} has SHA-256 " in err
    assert "it is not the published file (see `blindbox rederive`)." in err


def test_bad_inputs(tmp_path, capsys, bundle, inputs):
    a = traced(tmp_path, "a", capsys, inputs=inputs)
    rc, out, _ = cli(["measure", "--mode", "snp", "--ovmf", AMDSEV, "--json", "--vcpus", "1",
                      "--vcpu-type", "EPYC"], capsys)
    (tmp_path / "plain.json").write_text(out)
    rc, out, _ = cli(["measure", "--mode", "snp", "--ovmf", AMDSEV, "--json", "--trace", "--vcpus", "1-2",
                      "--vcpu-type", "EPYC"], capsys)
    (tmp_path / "matrix.json").write_text(out)
    (tmp_path / "text").write_text("not json")
    cases = [
        (tmp_path / "plain.json", f"B ({tmp_path / 'plain.json'}) has no page trace; rerun `blindbox measure` "
                                  f"with --json --trace and compare that file."),
        (tmp_path / "matrix.json", "holds 2 shapes (a matrix); measure one shape with `blindbox measure --json "
                                   "--trace` and compare that."),
        (tmp_path / "text", "is not JSON; give the output of `blindbox measure --json --trace` or MANIFEST#SHAPE."),
        (f"{bundle / 'manifest.json'}#qemu:EPYC-v4:9:0x1", "publishes no shape 'qemu:EPYC-v4:9:0x1'; it publishes "
                                                          "qemu:EPYC-Genoa:4:0x1, qemu:EPYC-Genoa:2:0x1."),
        (tmp_path / "missing.json", "missing.json"),
    ]
    for b, message in cases:
        rc, out, err = diff(a, b, capsys)
        assert (rc, out) == (2, ""), (b, err)
        assert err.startswith("blindbox: error: ") and message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("path, value", [
    (("trace",), {}), (("trace",), "x"), (("trace", 0, "gpa"), 5), (("trace", 0, "contents"), "zz"),
    (("trace", 0, "digest"), "00"), (("trace", 0, "page_type"), 3), (("vmm_profile",), "qemu"),
    (("vmm_profile", "name"), "qemu-9"), (("firmware",), None), (("firmware", "size"), "big"),
    (("firmware", "sev_metadata_sections"), [{"type": "CPUID"}]), (("firmware", "sev_es_reset_eip"), "q"),
    (("inputs",), []), (("inputs", "kernel"), {}), (("vcpu_sig",), 7), (("guest_features",), None),
    (("measurement",), "xyz"), (("vcpus",), "many"), (("mode",), "sev"), (("append",), 3),
], ids=lambda v: str(v)[:40])
def test_a_malformed_measure_json_is_bad_input(tmp_path, capsys, inputs, path, value):
    a = traced(tmp_path, "a", capsys, inputs=inputs)
    doc = json.loads(a.read_text())
    where = doc
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    b = tmp_path / "b.json"
    b.write_text(json.dumps(doc))
    rc, out, err = diff(a, b, capsys)
    assert (rc, out) == (2, ""), err
    assert err.startswith(f"blindbox: error: B ({b})") and len(err.splitlines()) == 1, err
