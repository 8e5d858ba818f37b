"""builder.steps.initrd and builder.steps.init: layout, determinism, errors, the default init."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from builder.errors import BuildError
from builder.steps import cpio
from builder.steps.init import InitError, render_init
from builder.steps.initrd import InitrdError, build_initrd
from tests.realinputs import pinned_deflate
from tests.tools import require

from .stepfakes import make_elf, make_kernel_tree

REL = "6.1.0-test-amd64"
EPOCH = 1735689600
INTERP = "/lib64/ld-linux-x86-64.so.2"
MODULES = {
    "kernel/drivers/virt/coco/sev-guest/sev-guest.ko": {"aliases": ["platform:sev-guest"]},
    "kernel/drivers/block/virtio_blk.ko": {"depends": ["virtio"]},
    "kernel/drivers/virtio/virtio.ko": {},
}


@pytest.fixture
def inputs(tmp_path):
    busybox = tmp_path / "busybox"
    busybox.write_bytes(make_elf(static=True))
    tree = make_kernel_tree(tmp_path / "kernel", REL, modules=MODULES, builtin=["kernel/fs/squashfs/squashfs.ko"])
    root = tmp_path / "libc6"
    (root / "lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").write_bytes(make_elf())
    (root / "lib/x86_64-linux-gnu/libc.so.6").write_bytes(make_elf(needed=["ld-linux-x86-64.so.2"]))
    (root / "lib64").mkdir()
    os.symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root / "lib64/ld-linux-x86-64.so.2")
    app = tmp_path / "app"
    app.write_bytes(make_elf(interp=INTERP, needed=["libc.so.6"]))
    conf = tmp_path / "app.conf"
    conf.write_text("x=1\n")
    return {"busybox": busybox, "tree": tree, "root": root, "app": app, "conf": conf}


def build(inputs, **kw):
    args = dict(busybox=inputs["busybox"], source_date_epoch=EPOCH, kernel_tree=inputs["tree"],
                kernel_release=REL, modules=["sev-guest", "virtio-blk", "squashfs"],
                files=[(inputs["conf"], "/etc/app.conf", 0o600)],
                binaries=[(inputs["app"], "/usr/bin/app", inputs["root"])], deflate=pinned_deflate())
    args.update(kw)
    return build_initrd(**args)


def members(initrd) -> dict[str, cpio.Member]:
    return {m.name: m for m in cpio.parse(cpio.decompress(initrd.data, initrd.compression))}


def test_layout(inputs):
    r = build(inputs)
    m = members(r)
    assert m["init"].mode == 0o100755 and m["init"].data == r.init
    assert m["bin/busybox"].mode == 0o100755
    assert m["bin/sh"].data == b"busybox" and m["sbin/modprobe"].data == b"../bin/busybox"
    assert m["dev/console"].mode == 0o020600 and m["dev/console"].rdev == (5, 1)
    assert m["tmp"].mode == 0o041777 and m["root"].mode == 0o040700
    assert m["etc/app.conf"].mode == 0o100600 and m["etc/app.conf"].data == b"x=1\n"
    assert m["usr/bin/app"].mode == 0o100755
    base = f"lib/modules/{REL}"
    assert m[f"{base}/modules.dep"].data.decode().splitlines() == [
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virt/coco/sev-guest/sev-guest.ko:",
        "kernel/drivers/virtio/virtio.ko:"]
    assert m[f"{base}/modules.alias"].data == b"alias platform:sev-guest sev_guest\n"
    # the interpreter file is executable; its PT_INTERP path links to it
    assert m["lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"].mode == 0o100755
    assert m["lib/x86_64-linux-gnu/libc.so.6"].mode == 0o100644
    assert m["lib64/ld-linux-x86-64.so.2"].data == b"../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert {(s.guest_path, s.name) for s in r.libraries} == {
        ("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "ld-linux-x86-64.so.2"),
        ("/lib/x86_64-linux-gnu/libc.so.6", "libc.so.6"), (INTERP, INTERP)}
    assert all(mm.uid == 0 and mm.gid == 0 and mm.mtime == EPOCH for mm in m.values())
    assert r.listing[0] == "040755 bin 0" and "020600 dev/console c 5,1" in r.listing
    assert r.modules.builtin == ("squashfs",)


def test_default_init_reflects_modules(inputs):
    init = build(inputs).init.decode()
    assert 'echo "BLINDBOX-MODULE squashfs builtin"' in init
    assert "modprobe virtio-blk" in init and "/sys/module/virtio_blk" in init
    assert "modprobe sev-guest" in init and "/sys/module/sev_guest" in init
    init = build(inputs, modules=["virtio_blk"]).init.decode()
    assert 'echo "BLINDBOX-SEV-GUEST not-in-initrd"' in init and "modprobe sev-guest" not in init


def test_reproducible_whatever_the_input_order_names_and_times(inputs, tmp_path):
    a = build(inputs, files=[(inputs["conf"], "/etc/app.conf", 0o600), (inputs["app"], "/opt/copy", 0o644)])
    other = tmp_path / "elsewhere"
    shutil.copytree(inputs["tree"], other / "kernel")
    shutil.copytree(inputs["root"], other / "root", symlinks=True)
    for name in ("busybox", "app", "conf"):
        shutil.copy(inputs[name], other / name)
        os.utime(other / name, (0, 0))
        (other / name).chmod(0o600)
    # the same inputs, listed in another order, from other host paths with other times and modes
    c = build_initrd(busybox=other / "busybox", source_date_epoch=EPOCH, kernel_tree=other / "kernel",
                     kernel_release=REL, modules=["sev-guest", "virtio-blk", "squashfs"],
                     files=[(other / "app", "opt/copy", 0o644), (other / "conf", "etc/app.conf", 0o600)],
                     binaries=[(other / "app", "usr/bin/app", other / "root")], deflate=pinned_deflate())
    assert c.data == a.data and c.sha256 == a.sha256
    assert build(inputs, source_date_epoch=EPOCH + 1).data != build(inputs).data


@pytest.mark.parametrize("compression", ["gzip", "xz", "none"])
def test_compressions_and_gnu_cpio_listing(inputs, compression):
    r = build(inputs, compression=compression)
    raw = cpio.decompress(r.data, compression)
    assert r.compression == compression
    tool = require("cpio", "cpio")
    names = subprocess.run([tool, "-it", "--quiet"], input=raw, capture_output=True, check=True).stdout.decode()
    assert names.splitlines() == [line.split(" ")[1] for line in r.listing]


def test_errors(inputs, tmp_path):
    dyn = tmp_path / "dynbusybox"
    dyn.write_bytes(make_elf(interp=INTERP, needed=["libc.so.6"]))
    with pytest.raises(InitrdError, match="dynamically linked; use the static build .*busybox-static"):
        build(inputs, busybox=dyn)
    with pytest.raises(InitrdError, match="is not a regular file"):
        build(inputs, busybox=tmp_path / "missing")
    with pytest.raises(InitrdError, match="compression 'lz4'"):
        build(inputs, compression="lz4")
    with pytest.raises(InitrdError, match="no kernel package tree"):
        build(inputs, kernel_tree=None)
    with pytest.raises(InitrdError, match="both an init script and an app command"):
        build(inputs, init_script=b"#!/bin/sh\n", app_command="true")
    with pytest.raises(cpio.CpioError, match="'init' was added twice"):
        build(inputs, files=[(inputs["conf"], "/init", 0o755)])
    with pytest.raises(InitrdError, match="destination '' of file"):
        build(inputs, files=[(inputs["conf"], "", 0o644)])
    with pytest.raises(BuildError, match="binary /usr/bin/app needs the program interpreter"):
        build(inputs, binaries=[(inputs["app"], "/usr/bin/app", tmp_path / "kernel")])


def test_custom_init_and_no_modules(inputs):
    r = build_initrd(busybox=inputs["busybox"], source_date_epoch=0, init_script=b"#!/bin/sh\nexec sh\n",
                     deflate=pinned_deflate())
    m = members(r)
    assert m["init"].data == b"#!/bin/sh\nexec sh\n"
    assert not any(name.startswith("lib/modules") for name in m) and r.modules is None


# -- the default init ----------------------------------------------------------------------
def test_render_init_is_valid_shell():
    sh = shutil.which("sh")
    script = render_init(modules=["virtio_blk", "dm-verity"], builtin=["erofs"], app_command="echo hi")
    proc = subprocess.run([sh, "-n"], input=script, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    text = script.decode()
    assert text.startswith("#!/bin/sh\n")
    for marker in ("BLINDBOX-BOOT-OK", "BLINDBOX-CMDLINE-SHA256", "BLINDBOX-CMDLINE-HEX", "BLINDBOX-SEV-GUEST",
                   "BLINDBOX-SEV-DEVICE", "BLINDBOX-MEM-ENCRYPT", "BLINDBOX-APP-EXIT", "BLINDBOX-POWEROFF"):
        assert marker in text
    assert "sha256sum /proc/cmdline" in text  # the exact bytes, newline included
    assert text.index("poweroff -f") > text.index("BLINDBOX-APP-EXIT")


def test_app_command_quoting_survives_the_shell():
    command = """printf '%s|%s\\n' "it's" 'a "b" $HOME `x`'"""
    text = render_init(app_command=command).decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("/bin/sh -c "))
    out = subprocess.run(["sh", "-c", line.replace("/bin/sh", "sh", 1)], capture_output=True, text=True,
                         env={"HOME": "/h", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert out.stdout == """it's|a "b" $HOME `x`\n"""


def test_render_init_refuses_bad_input():
    with pytest.raises(InitError, match="cannot be used in the init script"):
        render_init(modules=["a; reboot"])
    with pytest.raises(InitError, match="empty or contains a NUL"):
        render_init(app_command=" ")
    with pytest.raises(InitError, match="sev_guest"):
        render_init(sev_guest="maybe")


def test_sev_guest_variants():
    assert re.search(r"modprobe sev-guest", render_init(sev_guest="carried").decode())
    assert 'echo "BLINDBOX-SEV-GUEST builtin"' in render_init(sev_guest="builtin").decode()
    assert 'echo "BLINDBOX-SEV-GUEST not-in-initrd"' in render_init(sev_guest="absent").decode()
