"""recipes/python-app.yaml end to end: a Python HTTP service from Debian packages in a dm-verity root.

- the bundle's kernel, initrd and command line boot under TCG with its root image and hash
  device as read-only virtio-blk disks and a user-mode NIC (restrict=on, one hostfwd bound to
  127.0.0.1 on a free port); the init verifies the whole root, switch_roots into the service
  as nobody, and the test talks to it over HTTP, then asks it to exit with a status the guest
  reports before powering off;
- a flipped byte in the entrypoint's file data, and one in the hash tree, make the guest refuse
  to start the application, with the kernel's dm-verity message on the console;
- one changed byte of the application changes the root hash, the command line and every
  launch digest, and sev-snp-measure agrees with every digest of both bundles;
- rederive passes on the bundle and fails on the tampered copies.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import urllib.error
import urllib.request

import pytest

from blindbox.audit.rederive import rederive
from builder.boot import BootResult, expected_proc_cmdline, free_port, nic_argument, running_guest
from measure import verity
from measure.kernel_hashes import cmdline_bytes
from tests.realinputs import archive

from .appbuild import APP_FILES, built_app

pytestmark = [pytest.mark.integration, pytest.mark.network]
BOOT_TIMEOUT = 300


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return built_app(tmp_path_factory)


def _get(port: int, path: str, timeout: float = 120) -> dict:
    """GET http://127.0.0.1:port/path, retried until the service answers (it starts under TCG)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as r:
                assert r.status == 200
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _boot(bundle, image=None, hashes=None, *, port=None) -> tuple[BootResult, list]:
    """Boot the bundle (direct kernel boot: the AmdSev firmware needs SEV hardware); talk to it if ``port``."""
    drives = [image or bundle / "rootfs.erofs", hashes or bundle / "rootfs.verity"]
    nic = nic_argument([("127.0.0.1", port, 8080)] if port else [])
    answers = []
    with running_guest(bundle / "bzImage", bundle / "initrd", (bundle / "cmdline").read_bytes(), firmware=None,
                       drives=drives, nic=nic) as guest:
        if port:
            guest.wait_for("BLINDBOX-APP-START", BOOT_TIMEOUT)
            answers.append(_get(port, "/"))
            answers.append(_get(port, "/sha256?s=measured"))
            answers.append(_get(port, "/exit?status=3"))
        return guest.finish(BOOT_TIMEOUT), answers


def test_the_service_answers_from_the_verified_root(app):
    bundle, manifest, _ = app
    result, (info, digest, bye) = _boot(bundle, port=free_port())
    tail = result.console[-3000:]
    assert info["service"] == "python-app" and info["python"].startswith("3.11."), info
    assert (info["uid"], info["gid"], info["cwd"]) == (65534, 65534, "/srv/app"), info
    assert info["greeting"] == "hello from a measured guest"
    assert digest == {"s": "measured", "sha256": hashlib.sha256(b"measured").hexdigest()}
    assert bye == {"exiting": 3}
    assert result.marker("BLINDBOX-APP-EXIT") == "3", tail
    assert "BLINDBOX-POWEROFF" in result.markers, tail
    assert "BLINDBOX-VERITY-OK" in result.markers and "BLINDBOX-VERITY-FAILED" not in result.markers, tail
    # the guest ran with the measured command line: the table and root hash the manifest publishes
    seen = result.cmdline_bytes
    assert seen == expected_proc_cmdline(cmdline_bytes((bundle / "cmdline").read_bytes()), "direct")
    assert verity.cmdline_table(seen.decode().rstrip("\n")) == manifest.rootfs["verity"]["table"]


def _python_binary(manifest) -> bytes:
    """The bytes of /usr/bin/python3.11 as its Debian package ships them (the entrypoint)."""
    rec = next(i for i in manifest.inputs if i.name == "rootfs:python3.11-minimal")
    pkg = archive().resolve("python3.11-minimal", "bookworm")
    assert pkg.sha256 == rec.sha256, "the archive moved during the test run"
    return archive().member(pkg, "/usr/bin/python3.11").read_bytes()


def _tampered(tmp_path, source, offset):
    copy = tmp_path / source.name
    shutil.copyfile(source, copy)
    with open(copy, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))
    return copy


def _refused(result: BootResult, message: str) -> None:
    tail = result.console[-3000:]
    assert "BLINDBOX-VERITY-FAILED" in result.markers, tail
    assert "BLINDBOX-APP-START" not in result.markers and "BLINDBOX-APP-EXIT" not in result.markers, tail
    assert any(message in line for line in result.markers.get("BLINDBOX-DMESG", ())), tail
    assert "BLINDBOX-POWEROFF" in result.markers, tail


def test_a_flipped_byte_in_the_entrypoint_stops_the_guest(app, tmp_path):
    bundle, manifest, _ = app
    python = _python_binary(manifest)
    image = (bundle / "rootfs.erofs").read_bytes()
    start = image.find(python[:4096])
    assert start > 0 and start % 4096 == 0 and image[start:start + len(python)] == python
    offset = start + len(python) // 2
    bad = _tampered(tmp_path, bundle / "rootfs.erofs", offset)
    found = {f.name: f for f in rederive_copy(bundle, tmp_path, image=bad)}
    assert not found["rootfs.verity.root_hash"].ok
    result, _ = _boot(bundle, image=bad)
    _refused(result, f"data block {offset // 4096} is corrupted")


def test_a_flipped_byte_in_the_hash_tree_stops_the_guest(app, tmp_path):
    bundle, manifest, _ = app
    v = manifest.rootfs["verity"]
    params = verity.parse_table(v["table"]).params(uuid=None)
    levels = verity.tree_levels(params, v["data_blocks"])
    block = levels[0].start_block + levels[0].blocks // 2     # a level-0 hash block in the middle
    bad = _tampered(tmp_path, bundle / "rootfs.verity", block * 4096 + 100)
    result, _ = _boot(bundle, hashes=bad)
    _refused(result, f"metadata block {block} is corrupted")


def rederive_copy(bundle, tmp_path, *, image=None):
    """rederive on a copy of the bundle whose image is ``image``."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    if image is not None:
        shutil.copyfile(image, copy / "rootfs.erofs")
    return rederive(copy)


def test_rederive_passes_on_the_bundle(app):
    bundle, _, _ = app
    findings = rederive(bundle)
    assert [f for f in findings if not f.ok] == []
    names = {f.name for f in findings}
    assert {"rootfs.verity.root_hash", "rootfs.verity.salt", "rootfs.verity.uuid", "file rootfs.verity (verity)"} \
        <= names


def test_one_changed_application_byte_changes_every_digest(app, tmp_path_factory):
    from tests.measure.oracle import CPU_SIGS, oracle_digest

    bundle, manifest, _ = app
    source = (APP_FILES / "app.py").read_bytes()
    changed = source.replace(b'server_version = "blindbox-python-app/1"', b'server_version = "blindbox-python-app/2"')
    assert len(changed) == len(source) and sum(a != b for a, b in zip(source, changed, strict=True)) == 1
    other, m2, _ = built_app(tmp_path_factory, "python-app-changed", app_source=changed)
    assert m2.rootfs["verity"]["root_hash"] != manifest.rootfs["verity"]["root_hash"]
    assert m2.cmdline != manifest.cmdline
    # the init reads the root's table from the command line: the change reaches the digest through it
    assert m2.output("initrd").sha256 == manifest.output("initrd").sha256
    old = {e.shape: e.measurement for e in manifest.measurements}
    new = {e.shape: e.measurement for e in m2.measurements}
    assert old.keys() == new.keys() and len(old) == 12
    assert all(old[s] != new[s] for s in old)
    for b, m in ((bundle, manifest), (other, m2)):
        for e in m.measurements:
            expected = oracle_digest("snp", ovmf=b / m.firmware["file"], vcpus=e.vcpus, vcpu_sig=CPU_SIGS[e.vcpu_type],
                                     kernel=b / "bzImage", initrd=b / "initrd",
                                     append=(b / "cmdline").read_bytes().decode(), guest_features=e.guest_features)
            assert e.measurement == expected.hex(), e.shape



def test_rederive_checks_the_disks_and_files_launch_snp_passes(app, tmp_path):
    bundle, _, _ = app
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    script = (copy / "launch-snp.sh").read_text()
    swapped = script.replace("id=rootfs,file=${here//,/,,}/rootfs.erofs", "id=rootfs,file=${here//,/,,}/X") \
        .replace("id=verity,file=${here//,/,,}/rootfs.verity", "id=verity,file=${here//,/,,}/rootfs.erofs") \
        .replace("id=rootfs,file=${here//,/,,}/X", "id=rootfs,file=${here//,/,,}/rootfs.verity")
    assert swapped != script
    (copy / "launch-snp.sh").write_text(swapped)
    found = {f.name: f for f in rederive(copy)}
    assert not found["launch-snp.sh disks"].ok and found["launch-snp.sh files"].ok
    assert "('rootfs', 'rootfs.verity'), ('verity', 'rootfs.erofs')" in found["launch-snp.sh disks"].detail
    sha = hashlib.sha256((bundle / "rootfs.erofs").read_bytes()).hexdigest()
    (copy / "launch-snp.sh").write_text(script.replace(f"'rootfs.erofs {sha}'", f"'rootfs.erofs {'0' * 64}'"))
    found = {f.name: f for f in rederive(copy)}
    assert not found["launch-snp.sh files"].ok and found["launch-snp.sh disks"].ok
    assert "wrong sha256 for ['rootfs.erofs']" in found["launch-snp.sh files"].detail


def test_launch_script_attaches_the_root_and_forwards_a_port(app, tmp_path):
    """launch-snp.sh, run with a stand-in QEMU: the measured files, the root's disks in table order, the NIC."""
    import subprocess

    bundle, manifest, _ = app
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv"
    (bindir / "qemu-system-x86_64").write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > '{record}'\n")
    (bindir / "qemu-system-x86_64").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    listed = subprocess.run([str(bundle / "launch-snp.sh"), "--list-shapes"], capture_output=True, text=True,
                            env=env, check=True).stdout.splitlines()
    assert [line.split()[0] for line in listed] == [e.shape for e in manifest.measurements]
    p = subprocess.run([str(bundle / "launch-snp.sh"), "--shape", "qemu:EPYC-Milan:2:0x1", "--forward", "18080:8080"],
                       capture_output=True, env=env)
    assert p.returncode == 0, p.stderr
    argv = record.read_bytes().split(b"\0")[:-1]
    opt = lambda name: [argv[i + 1].decode() for i in range(len(argv) - 1) if argv[i] == name]  # noqa: E731
    assert opt(b"-append") == [(bundle / "cmdline").read_text()]
    drives = opt(b"-drive")
    assert drives == [f"if=none,id=rootfs,file={bundle}/rootfs.erofs,format=raw,readonly=on",
                      f"if=none,id=verity,file={bundle}/rootfs.verity,format=raw,readonly=on"]
    devices = opt(b"-device")
    assert [d.split(",")[0:2] for d in devices] == [["virtio-blk-pci", "drive=rootfs"],
                                                    ["virtio-blk-pci", "drive=verity"],
                                                    ["virtio-net-pci", "netdev=net0"]]
    assert opt(b"-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:18080-:8080"]
    bad = subprocess.run([str(bundle / "launch-snp.sh"), "--forward", "80"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--forward 80 is not [ADDR:]HOSTPORT:GUESTPORT" in bad.stderr
