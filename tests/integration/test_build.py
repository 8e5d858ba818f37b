"""recipes/hello.yaml end to end with real Debian inputs (locked afresh, see hellobuild.py).

- the bundle holds what the manifest says, and the manifest what the lock pins;
- every published digest equals what sev-snp-measure 0.0.13 (the test-only oracle)
  computes for the bundle's own files and the same shape;
- launch-snp.sh, run with a stand-in QEMU, passes the bundle's files and the measured
  command line byte for byte;
- the bundle's kernel and initrd boot under TCG and the guest reports the command line
  whose hash is in the kernel-hashes table;
- no-op rebuilds, offline builds, withdrawn pins and unsuitable firmware behave as documented.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from builder.boot import expected_proc_cmdline, smoke_boot
from builder.manifest import Manifest
from measure.kernel_hashes import KernelHashes, cmdline_bytes
from tests.realinputs import ALLOW_STALE

from .hellobuild import ROOT, built_hello, lock_copy, locked_hello, scratch

pytestmark = [pytest.mark.integration, pytest.mark.network]
STALE = [a for s in ALLOW_STALE for a in ("--allow-stale", s)]


def cli(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "blindbox.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def hello():
    res = built_hello()
    return res, Manifest.from_json((res.out / "manifest.json").read_bytes())


def test_bundle_matches_manifest_and_lock(hello):
    res, m = hello
    names = sorted(p.name for p in res.out.iterdir())
    assert names == ["OVMF.amdsev.fd", "bzImage", "cmdline", "initrd", "launch-snp.sh", "manifest.json",
                     "provenance.intoto.json"]
    for o in m.outputs:
        data = (res.out / o.file).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (o.sha256, o.size), o.file
    recipe = locked_hello()
    lock = json.loads(recipe.lock_path.read_bytes())
    assert [(i.name, i.version, i.sha256, i.origin) for i in m.inputs] == \
        [(e["name"], e["version"], e["sha256"], e["origin"]) for e in lock["inputs"]]
    assert m.lock["sha256"] == hashlib.sha256(recipe.lock_path.read_bytes()).hexdigest()
    assert m.recipe["sha256"] == hashlib.sha256(recipe.path.read_bytes()).hexdigest()
    assert (res.out / "cmdline").read_bytes() == b"console=ttyS0 panic=-1 quiet"
    kernel = next(i for i in m.inputs if i.name == "kernel")
    assert kernel.origin.startswith("debian:bookworm/linux-image-6.") and "-amd64=" in kernel.origin
    assert m.firmware["sev_hashes_table"]["gpa"] == "0x810c00"
    # the initrd carries the module the recipe asked for, with its dependency data
    assert any(line.endswith("modules.dep") or " lib/modules/" in line for line in res.initrd_listing)
    assert any("sev-guest.ko" in line for line in res.initrd_listing)
    # the preflight ran and found what an SNP guest needs
    assert any("CONFIG_AMD_MEM_ENCRYPT=y" in line for line in res.preflight)
    kh = KernelHashes.from_files(res.out / "bzImage", res.out / "initrd", m.cmdline)
    assert m.kernel_hashes == {"kernel": kh.kernel.hex(), "initrd": kh.initrd.hex(), "cmdline": kh.cmdline.hex()}


def test_digests_equal_the_sev_snp_measure_oracle(hello):
    from sevsnpmeasure import guest
    from sevsnpmeasure.sev_mode import SevMode
    from sevsnpmeasure.vcpu_types import CPU_SIGS as ORACLE_SIGS
    from sevsnpmeasure.vmm_types import VMMType

    res, m = hello
    assert len(m.measurements) == 12
    for e in m.measurements:
        assert e.vcpu_sig == ORACLE_SIGS[e.vcpu_type]
        expected = guest.calc_launch_digest(
            SevMode.SEV_SNP, e.vcpus, ORACLE_SIGS[e.vcpu_type], str(res.out / "OVMF.amdsev.fd"),
            str(res.out / "bzImage"), str(res.out / "initrd"), (res.out / "cmdline").read_bytes().decode(),
            e.guest_features, vmm_type=VMMType.QEMU)
        assert e.measurement == expected.hex(), e.shape


def test_launch_script_passes_the_measured_bundle(hello, tmp_path):
    res, m = hello
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv"
    (bindir / "qemu-system-x86_64").write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > '{record}'\n")
    (bindir / "qemu-system-x86_64").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    listed = subprocess.run([str(res.out / "launch-snp.sh"), "--list-shapes"], capture_output=True, text=True,
                            env=env, check=True).stdout.splitlines()
    assert [line.split()[0] for line in listed] == [e.shape for e in m.measurements]
    assert [line.rsplit("measurement=", 1)[1] for line in listed] == [e.measurement for e in m.measurements]
    p = subprocess.run([str(res.out / "launch-snp.sh"), "--shape", "qemu:EPYC-Genoa:8:0x1"], capture_output=True,
                       env=env)
    assert p.returncode == 0, p.stderr
    argv = record.read_bytes().split(b"\0")[:-1]
    opt = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith(b"-")}
    assert opt[b"-append"] == (res.out / "cmdline").read_bytes()
    assert opt[b"-bios"] == str(res.out / "OVMF.amdsev.fd").encode()
    assert opt[b"-kernel"] == str(res.out / "bzImage").encode()
    assert opt[b"-initrd"] == str(res.out / "initrd").encode()
    assert opt[b"-cpu"] == b"EPYC-Genoa" and opt[b"-smp"] == b"8" and opt[b"-m"] == b"512M"
    assert m.measurement("qemu:EPYC-Genoa:8:0x1").measurement.encode() in p.stderr


def test_smoke_boot_reports_the_measured_command_line(hello):
    """Direct kernel boot under TCG (the AmdSev firmware cannot boot without SEV hardware)."""
    res, m = hello
    measured = cmdline_bytes((res.out / "cmdline").read_bytes())          # what the hashes table covers
    boot = smoke_boot(res.out / "bzImage", res.out / "initrd", (res.out / "cmdline").read_bytes(), firmware=None)
    seen = boot.cmdline_bytes                                                # /proc/cmdline, as the guest read it
    assert seen == expected_proc_cmdline(measured, "direct")                 # direct boot: append bytes + "\n"
    assert boot.cmdline_sha256 == hashlib.sha256(seen).hexdigest()
    # the guest's command line, with the kernel's "\n" replaced by QEMU's NUL, is what was measured
    assert hashlib.sha256(seen[:-1] + b"\0").hexdigest() == m.kernel_hashes["cmdline"]
    # sev-guest was tried; without SEV hardware the driver has no device to bind
    assert boot.sev_guest is not None and boot.sev_guest != "not-in-initrd"
    assert boot.sev_device in ("present", "absent")


def test_noop_rebuild_and_offline_build(hello, tmp_path):
    res, m = hello
    recipe = locked_hello()
    p = cli("build", str(recipe.path), "--out", str(res.out), "--json", *STALE)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["up_to_date"] is True and list(doc["timings"]) == ["recipe", "current"]
    p = cli("build", str(recipe.path), "--out", str(tmp_path / "offline"), "--offline")
    assert p.returncode == 0, p.stderr
    for name in ("bzImage", "initrd", "manifest.json", "launch-snp.sh"):
        assert (tmp_path / "offline" / name).read_bytes() == (res.out / name).read_bytes()


def test_withdrawn_pin_names_the_input_and_the_fix(hello, tmp_path):
    recipe = locked_hello()
    d = scratch("blindbox-gone-")
    (d / "hello.yaml").write_bytes(recipe.path.read_bytes())
    lock = json.loads(recipe.lock_path.read_bytes())
    entry = next(e for e in lock["inputs"] if e["name"] == "busybox")
    gone_sha = hashlib.sha256(b"a version Debian never served").hexdigest()
    for rec in (entry, entry["debian"]):
        rec["version"] = "1:0.0-withdrawn1"
        rec["sha256"] = gone_sha
    # a pin as `blindbox lock` would have written it for that version: origin and pool file agree
    deb = entry["debian"]
    deb["filename"] = "pool/main/b/busybox/busybox-static_0.0-withdrawn1_amd64.deb"
    entry["origin"] = f"debian:{deb['suite']}/{deb['name']}={deb['version']} ({deb['filename']})"
    (d / "hello.lock").write_text(json.dumps(lock, indent=2))
    p = cli("build", str(d / "hello.yaml"), "--out", str(tmp_path / "out"), *STALE)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "input 'busybox'" in p.stderr and "1:0.0-withdrawn1" in p.stderr
    assert f"blindbox lock {d / 'hello.yaml'} --update --input busybox" in p.stderr
    assert "launch digest" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("member, words", [
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "has no SEV metadata"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "no SNP_KERNEL_HASHES metadata section"),
])
def test_firmware_that_cannot_measure_the_kernel_is_refused(member, words, tmp_path):
    text = (ROOT / "recipes" / "hello.yaml").read_text().replace(
        "  debian: ovmf-amdsev\n  suite: sid\n  path: /usr/share/ovmf/OVMF.amdsev.fd\n",
        f"  debian: ovmf\n  suite: bookworm\n  path: {member}\n")
    assert member in text
    recipe = lock_copy(text)
    p = cli("build", str(recipe.path), "--out", str(tmp_path / "out"), *STALE)
    assert p.returncode == 2, p.stderr
    assert words in p.stderr and "ovmf-amdsev" in p.stderr and "Traceback" not in p.stderr


def test_lock_cli_keeps_pins_and_update_reports(tmp_path):
    recipe = locked_hello()
    d = scratch("blindbox-relock-")
    for f in (recipe.path, recipe.lock_path):
        (d / f.name).write_bytes(f.read_bytes())
    before = (d / "hello.lock").read_bytes()
    p = cli("lock", str(d / "hello.yaml"), *STALE)
    assert p.returncode == 0, p.stderr
    assert "unchanged" in p.stdout and (d / "hello.lock").read_bytes() == before
    p = cli("lock", str(d / "hello.yaml"), "--update", "--input", "busybox", "--json", *STALE)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [c["name"] for c in doc["changes"]] == ["busybox"]
    p = cli("lock", str(d / "hello.yaml"), "--input", "busybox")
    assert p.returncode == 2 and "add --update" in p.stderr


def test_dynamically_linked_binary_runs_in_the_guest(tmp_path):
    """coreutils' sha256sum with the libraries of its (Pre-)Depends closure, run by the default init."""
    from builder.pipeline import BuildRequest, build

    text = (ROOT / "recipes" / "hello.yaml").read_text().replace(
        "  modules: [sev-guest]",
        "  binaries:\n    - {debian: coreutils, suite: bookworm, path: /usr/bin/sha256sum, dest: /bin/sha256sum-gnu}\n"
        "  app_command: /bin/sha256sum-gnu /proc/cmdline\n  modules: [sev-guest]")
    recipe = lock_copy(text)
    lock = json.loads(recipe.lock_path.read_bytes())
    libs = [e["name"] for e in lock["inputs"] if e["name"].startswith("library:")]
    assert "library:libc6" in libs and "library:libselinux1" in libs   # coreutils' Pre-Depends
    res = build(BuildRequest(recipe=recipe.path, out=tmp_path / "out", allow_stale=ALLOW_STALE))
    listing = "\n".join(res.initrd_listing)
    assert " bin/sha256sum-gnu " in listing and "libc.so.6" in listing and "ld-linux-x86-64.so.2" in listing
    boot = smoke_boot(res.out / "bzImage", res.out / "initrd", (res.out / "cmdline").read_bytes(), firmware=None)
    assert boot.marker("BLINDBOX-APP-EXIT") == "0"
    assert f"{boot.cmdline_sha256}  /proc/cmdline" in boot.console       # GNU sha256sum agrees with busybox
