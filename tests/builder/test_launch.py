"""launch-snp.sh, run with a stand-in qemu-system-x86_64 that records its argv byte for byte.

Every QEMU option the script passes is checked against QEMU's documented interface:
qapi/qom.json SevCommonProperties / SevSnpGuestProperties (QEMU 9.1, plus what 10.2 added)
and the memory-backend-memfd / machine properties the SNP launch uses.
"""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from builder.launch import LaunchFiles, LaunchShape, render, sh_quote

# qapi/qom.json: property -> (QAPI type, QEMU version that added it to sev-snp-guest).
DOCUMENTED_SNP_GUEST = {
    # SevCommonProperties
    "sev-device": ("str", "9.1"), "cbitpos": ("uint32", "9.1"), "reduced-phys-bits": ("uint32", "9.1"),
    "kernel-hashes": ("bool", "9.1"), "debug-swap": ("bool", "10.2"),
    # SevSnpGuestProperties
    "policy": ("uint64", "9.1"), "guest-visible-workarounds": ("str", "9.1"), "id-block": ("str", "9.1"),
    "id-auth": ("str", "9.1"), "author-key-enabled": ("bool", "9.1"), "host-data": ("str", "9.1"),
    "vcek-disabled": ("bool", "9.1"), "secure-tsc": ("bool", "10.2"), "tsc-frequency": ("uint32", "10.2"),
}
REQUIRED_SNP_GUEST = {"reduced-phys-bits"}  # the only non-optional member ('*' marks optional)
MEMFD_PROPS = {"size", "share", "prealloc", "hugetlb", "hugetlbsize", "seal", "merge", "dump",
               "host-nodes", "policy", "prealloc-threads", "reserve", "x-use-canonical-path-for-ramblock-id"}
MACHINE_PROPS = {"confidential-guest-support", "memory-backend"}

CMDLINE = "console=ttyS0  app.greeting='héllo wörld' x=\"a b\" \\ $HOME `id` 日本 end".encode()
DIGEST_A = "ab" * 48
DIGEST_B = "cd" * 48


@pytest.fixture
def bundle(tmp_path):
    d = tmp_path / "bundle dir with spaces"
    d.mkdir()
    files = {"OVMF.amdsev.fd": b"firmware", "bzImage": b"kernel", "initrd": b"initrd"}
    for n, data in files.items():
        (d / n).write_bytes(data)
    script = render(
        name="t", tool="blindbox-guest test", files=LaunchFiles("OVMF.amdsev.fd", "bzImage", "initrd"),
        sha256={n: hashlib.sha256(v).hexdigest() for n, v in files.items()}, cmdline=CMDLINE,
        shapes=[LaunchShape("qemu:EPYC-v4:4:0x1", 4, "EPYC-v4", 0x1, DIGEST_A),
                LaunchShape("qemu:EPYC-Milan:2:0x21", 2, "EPYC-Milan", 0x21, DIGEST_B)],
        memory_mib=512, policy=0x30000)
    (d / "launch-snp.sh").write_bytes(script)
    (d / "launch-snp.sh").chmod(0o755)
    return d


@pytest.fixture
def fake_qemu(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv.bin"
    stub = bindir / "qemu-system-x86_64"
    stub.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$0\" \"$@\" > '{record}'\n")
    stub.chmod(0o755)
    return bindir, record


def run(bundle, fake_qemu, *args, env_extra=None):
    bindir, record = fake_qemu
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "LANG": "C", **(env_extra or {})}
    p = subprocess.run([str(bundle / "launch-snp.sh"), *args], capture_output=True, env=env)
    argv = record.read_bytes().split(b"\0")[:-1] if record.exists() else None
    return p, argv


def options(argv: list[bytes]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    i = 1
    while i < len(argv):
        opt = argv[i].decode()
        assert opt.startswith("-"), f"unexpected bare argument {argv[i]!r}"
        if opt in ("-nographic", "-no-reboot"):
            out.setdefault(opt, []).append(b"")
            i += 1
        else:
            out.setdefault(opt, []).append(argv[i + 1])
            i += 2
    return out


def props(value: bytes) -> tuple[str, dict[str, str]]:
    head, *rest = value.decode().split(",")
    kv = dict(p.split("=", 1) for p in rest)
    assert len(kv) == len(rest), f"duplicate property in {value!r}"
    return head, kv


def check_qapi_value(name: str, value: str) -> None:
    typ, _ = DOCUMENTED_SNP_GUEST[name]
    if typ == "bool":
        assert value in ("on", "off", "true", "false"), (name, value)
    elif typ.startswith("uint"):
        n = int(value, 0)
        assert 0 <= n < (1 << int(typ[4:])), (name, value)


def test_default_shape_argv_matches_qemu_documentation(bundle, fake_qemu):
    p, argv = run(bundle, fake_qemu)
    assert p.returncode == 0, p.stderr
    assert argv[0].endswith(b"/qemu-system-x86_64")
    o = options(argv)
    # the measured inputs
    assert o["-append"] == [CMDLINE]                    # byte-exact, spaces, quotes, $, `, UTF-8
    assert o["-bios"] == [str(bundle / "OVMF.amdsev.fd").encode()]
    assert o["-kernel"] == [str(bundle / "bzImage").encode()]
    assert o["-initrd"] == [str(bundle / "initrd").encode()]
    assert o["-cpu"] == [b"EPYC-v4"] and o["-smp"] == [b"4"]
    # sev-snp-guest: every property documented, the required one present, measured boot on
    objects = [props(v) for v in o["-object"]]
    snp = [kv for kind, kv in objects if kind == "sev-snp-guest"]
    assert len(snp) == 1
    snp = snp[0]
    for name, value in snp.items():
        if name == "id":
            continue
        assert name in DOCUMENTED_SNP_GUEST, f"sev-snp-guest has no documented property {name!r}"
        check_qapi_value(name, value)
    assert REQUIRED_SNP_GUEST <= set(snp)
    assert snp["kernel-hashes"] == "on"
    assert int(snp["policy"], 0) == 0x30000
    assert "debug-swap" not in snp                    # shape 0x1: SNPActive only
    assert all(DOCUMENTED_SNP_GUEST[n][1] == "9.1" for n in snp if n != "id")
    # machine wiring: confidential-guest-support names the SNP object, memfd backs RAM
    machine, mkv = props(o["-machine"][0])
    assert machine == "q35" and set(mkv) <= MACHINE_PROPS
    assert mkv["confidential-guest-support"] == snp["id"]
    memfd = [kv for kind, kv in objects if kind == "memory-backend-memfd"]
    assert len(memfd) == 1 and set(memfd[0]) - {"id"} <= MEMFD_PROPS
    assert memfd[0]["id"] == mkv["memory-backend"]
    assert memfd[0]["size"] == "512M" and o["-m"] == [b"512M"]
    assert o["-accel"] == [b"kvm"]
    assert b"shape qemu:EPYC-v4:4:0x1, expected launch digest " + DIGEST_A.encode() in p.stderr


def test_debug_swap_shape_and_options(bundle, fake_qemu):
    p, argv = run(bundle, fake_qemu, "--shape", "qemu:EPYC-Milan:2:0x21", "--memory", "1024",
                  "--cbitpos", "47", "--", "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0")
    assert p.returncode == 0, p.stderr
    o = options(argv)
    snp = next(kv for kind, kv in [props(v) for v in o["-object"]] if kind == "sev-snp-guest")
    assert snp["debug-swap"] == "on" and DOCUMENTED_SNP_GUEST["debug-swap"][1] == "10.2"
    assert snp["cbitpos"] == "47"
    assert o["-cpu"] == [b"EPYC-Milan"] and o["-smp"] == [b"2"] and o["-m"] == [b"1024M"]
    assert argv[-4:] == [b"-netdev", b"user,id=n0", b"-device", b"virtio-net-pci,netdev=n0"]
    assert o["-append"] == [CMDLINE]


def test_shape_from_environment(bundle, fake_qemu):
    p, argv = run(bundle, fake_qemu, env_extra={"BLINDBOX_SHAPE": "qemu:EPYC-Milan:2:0x21"})
    assert p.returncode == 0 and options(argv)["-cpu"] == [b"EPYC-Milan"]


def test_unknown_shape_is_refused(bundle, fake_qemu):
    p, argv = run(bundle, fake_qemu, "--shape", "qemu:EPYC-v4:3:0x1")
    assert p.returncode == 2 and argv is None
    assert b"no shape qemu:EPYC-v4:3:0x1" in p.stderr and b"qemu:EPYC-Milan:2:0x21" in p.stderr


def test_tampered_file_is_refused_unless_no_verify(bundle, fake_qemu):
    (bundle / "initrd").write_bytes(b"other")
    p, argv = run(bundle, fake_qemu)
    assert p.returncode == 2 and argv is None
    assert b"initrd has sha256" in p.stderr and b"launch digest would differ" in p.stderr
    p, argv = run(bundle, fake_qemu, "--no-verify")
    assert p.returncode == 0 and argv is not None


def test_list_shapes_and_dry_run(bundle, fake_qemu):
    p, _ = run(bundle, fake_qemu, "--list-shapes")
    assert p.returncode == 0
    lines = p.stdout.decode().splitlines()
    assert lines == [f"qemu:EPYC-v4:4:0x1  vcpus=4 cpu=EPYC-v4 guest_features=0x1 measurement={DIGEST_A}",
                     f"qemu:EPYC-Milan:2:0x21  vcpus=2 cpu=EPYC-Milan guest_features=0x21 "
                     f"measurement={DIGEST_B}"]
    p, argv = run(bundle, fake_qemu, "--dry-run")
    assert p.returncode == 0 and argv is None and b"qemu-system-x86_64" in p.stdout


def test_qemu_env_and_help(bundle, fake_qemu, tmp_path):
    bindir, record = fake_qemu
    alt = tmp_path / "my-qemu"
    alt.write_bytes((bindir / "qemu-system-x86_64").read_bytes())
    alt.chmod(0o755)
    p, argv = run(bundle, fake_qemu, env_extra={"QEMU": str(alt)})
    assert p.returncode == 0 and argv[0] == str(alt).encode()
    p, _ = run(bundle, fake_qemu, "--help")
    assert p.returncode == 0 and b"--shape ID" in p.stdout and b"set -euo" not in p.stdout


def test_sh_quote_round_trips_every_byte(tmp_path):
    data = bytes(range(1, 256))
    script = b"printf '%s' " + sh_quote(data) + b" > out\n"
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True)
    assert (tmp_path / "out").read_bytes() == data
    with pytest.raises(ValueError):
        sh_quote(b"a\0b")


def test_script_is_deterministic(bundle):
    first = (bundle / "launch-snp.sh").read_bytes()
    assert b"'\\''" in first  # the single quotes of the cmdline are escaped
    assert os.fsdecode(bundle).encode() not in first  # no build path inside


# -- the application root and the network ---------------------------------------------------
@pytest.fixture
def app_bundle(tmp_path):
    d = tmp_path / "app bundle, with a comma"
    d.mkdir()
    files = {"OVMF.amdsev.fd": b"firmware", "bzImage": b"kernel", "initrd": b"initrd", "rootfs.erofs": b"image",
             "rootfs.verity": b"hashes"}
    for n, data in files.items():
        (d / n).write_bytes(data)
    script = render(
        name="app", tool="blindbox-guest test",
        files=LaunchFiles("OVMF.amdsev.fd", "bzImage", "initrd", rootfs="rootfs.erofs", verity="rootfs.verity"),
        sha256={n: hashlib.sha256(v).hexdigest() for n, v in files.items()}, cmdline=CMDLINE,
        shapes=[LaunchShape("qemu:EPYC-v4:4:0x1", 4, "EPYC-v4", 0x1, DIGEST_A)], memory_mib=512, policy=0x30000,
        network=True)
    (d / "launch-snp.sh").write_bytes(script)
    (d / "launch-snp.sh").chmod(0o755)
    return d


def test_rootfs_disks_are_read_only_virtio_blk_in_order(app_bundle, fake_qemu):
    p, argv = run(app_bundle, fake_qemu)
    assert p.returncode == 0, p.stderr
    o = options(argv)
    here = str(app_bundle).replace(",", ",,")  # QEMU's escape for a comma inside an option value
    assert o["-drive"] == [f"if=none,id=rootfs,file={here}/rootfs.erofs,format=raw,readonly=on".encode(),
                           f"if=none,id=verity,file={here}/rootfs.verity,format=raw,readonly=on".encode()]
    blk = [v for v in o["-device"] if v.startswith(b"virtio-blk-pci,")]
    assert blk == [b"virtio-blk-pci,drive=rootfs,disable-legacy=on,iommu_platform=on",
                   b"virtio-blk-pci,drive=verity,disable-legacy=on,iommu_platform=on"]
    assert argv.index(blk[0]) < argv.index(blk[1])
    # the network device without forwards
    assert o["-netdev"] == [b"user,id=net0"]
    assert argv.index(b"-drive") < argv.index(b"-netdev")  # the disks take the first PCI slots
    assert b"virtio-net-pci,netdev=net0,disable-legacy=on,iommu_platform=on" in o["-device"]


def test_rootfs_files_are_checked_like_the_others(app_bundle, fake_qemu):
    (app_bundle / "rootfs.verity").write_bytes(b"other")
    p, argv = run(app_bundle, fake_qemu)
    assert p.returncode == 2 and argv is None
    assert b"rootfs.verity has sha256" in p.stderr and b"launch digest would differ" in p.stderr
    (app_bundle / "rootfs.erofs").unlink()
    p, argv = run(app_bundle, fake_qemu, "--no-verify", "--dry-run")
    assert p.returncode == 0 and b"rootfs.erofs" in p.stdout


def test_forwards(app_bundle, fake_qemu):
    p, argv = run(app_bundle, fake_qemu, "--forward", "8080:80", "--forward=0.0.0.0:2222:22", "--", "-S")
    assert p.returncode == 0, p.stderr
    assert options(argv[:-1])["-netdev"] == [
        b"user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:0.0.0.0:2222-:22"]
    assert argv[-1] == b"-S"
    p, _ = run(app_bundle, fake_qemu, "--forward", "18080:8080", "--dry-run")
    assert p.returncode == 0 and b"hostfwd=tcp:127.0.0.1:18080-:8080" in p.stdout
    p, _ = run(app_bundle, fake_qemu, "--help")
    assert b"--forward [ADDR:]HOSTPORT:GUESTPORT" in p.stdout and b"repeatable" in p.stdout


@pytest.mark.parametrize("value, message", [
    ("80", b"--forward 80 is not [ADDR:]HOSTPORT:GUESTPORT; give e.g. 8080:80"),
    ("8080:http", b"--forward 8080:http: 'http' is not a port"),
    ("0:80", b"--forward 0:80: port 0 is not from 1 to 65535"),
    ("65536:80", b"--forward 65536:80: port 65536 is not from 1 to 65535"),
    ("8080:", b"--forward 8080:: '' is not a port"),
    ("localhost:8080:80", b"--forward localhost:8080:80: localhost is not an IPv4 address"),
    ("1.2.3.4:5:6:7", b"--forward 1.2.3.4:5:6:7: '6:7' is not a port"),
])
def test_bad_forward_is_refused_with_one_sentence(app_bundle, fake_qemu, value, message):
    p, argv = run(app_bundle, fake_qemu, "--forward", value)
    assert p.returncode == 2 and argv is None
    assert message in p.stderr and p.stderr.count(b"\n") == 1, p.stderr
    assert b"Traceback" not in p.stderr


def test_forward_needs_a_network_bundle(bundle, fake_qemu):
    p, argv = run(bundle, fake_qemu, "--forward", "8080:80")
    assert p.returncode == 2 and argv is None
    assert b"--forward 8080:80 needs a network device, and this bundle was built without one" in p.stderr
    p, _ = run(bundle, fake_qemu, "--forward")
    assert p.returncode == 2 and b"--forward needs a value" in p.stderr
    p, _ = run(bundle, fake_qemu, "--help")
    assert b"--forward" not in p.stdout


def test_bundle_without_rootfs_or_network_has_no_devices(bundle, fake_qemu):
    p, argv = run(bundle, fake_qemu)
    o = options(argv)
    assert not {"-drive", "-device", "-netdev", "-nic"} & set(o)


def test_rootfs_and_verity_go_together():
    with pytest.raises(ValueError, match="go together"):
        render(name="t", tool="t", files=LaunchFiles("f", "k", "i", rootfs="r"), sha256={}, cmdline=b"",
               shapes=[LaunchShape("s", 1, "EPYC", 1, DIGEST_A)], memory_mib=1, policy=0)
