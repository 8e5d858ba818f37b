"""The rootfs init in a real guest: verify, mount, network, switch_root, run the app as its user.

A hand-made application root (no pipeline): bookworm's static busybox as the app's tools,
an app script that prints who and where it is, then serves HTTP with ``busybox httpd``
on port 8080 and exits with a known status when a CGI asks it to.  The tree becomes an
image with our EROFS writer, ``measure.verity`` hashes it, and the table goes into the
command line as ``blindbox.root="..."``.  The initrd carries busybox-static, the modules
the init loads (``ROOTFS_MODULES`` + ``NET_MODULES`` and their dependencies) and
Debian's ``dmsetup`` with its ELF closure; its ``/init`` is :func:`render_rootfs_init`.

One TCG boot with the image and hash file as read-only virtio-blk disks and a
``restrict=on`` user NIC forwarding a free 127.0.0.1 port to the guest's 8080: the test
waits for ``BLINDBOX-APP-START``, fetches a page through the forward, asks the app to exit
and checks the exit status, the power-off and what the app saw (uid, gid, working
directory, environment, argv).  A second boot runs the same root with one byte of the
app script flipped in the image, and again with one byte of the hash tree flipped: the
init must refuse to start the app.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid

import pytest

from builder.boot import BootError, free_port, nic_argument, running_guest
from builder.steps import erofs
from builder.steps.init import (DMSETUP_PATH, NET_MODULES, ROOT_DATA_DEVICE, ROOT_HASH_DEVICE, ROOT_PARAM,
                                ROOTFS_MODULES, AppConfig, render_rootfs_init)
from builder.steps.initrd import build_initrd
from builder.steps.kernel import find_kernel
from measure import verity
from tests import realinputs
from tests.integration.test_rootfs_kernel import library_trees

pytestmark = [pytest.mark.integration, pytest.mark.network]

EPOCH = 1735689600
SALT = bytes.fromhex("a1" * 32)
VERITY_UUID = uuid.UUID("0d6f3a52-7c1e-4b8a-9e2d-5a4b3c2d1e0f")
EROFS_UUID = uuid.UUID("6b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9")
EXIT_STATUS = 42
GREETING = "it's \"quoted\" $HOME `id` \\n; a|b & c"
ARGS = ("two words", "it's", "$PATH", "`true`", "line\nbreak", "")
APPLETS = ("sh", "id", "pwd", "env", "sort", "httpd", "kill", "sleep", "cat", "echo", "printf")

APP = f"""#!/bin/busybox sh
echo "BLINDBOX-TEST-APP uid=$(id -u) gid=$(id -g) pwd=$(pwd)"
env | sort | while IFS= read -r line; do echo "BLINDBOX-TEST-ENV $line"; done
for a in "$@"; do printf 'BLINDBOX-TEST-ARG [%s]\\n' "$a" | tr '\\n' '~'; echo; done
httpd -f -p 8080 -h /www &
echo $! > /tmp/httpd.pid
wait
echo BLINDBOX-TEST-APP-DONE
exit {EXIT_STATUS}
"""
HELLO = """#!/bin/busybox sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo "hello from the verified root as $(id -u):$(id -g) in $(pwd)"
"""
STOP = """#!/bin/busybox sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo stopping
(sleep 1; kill $(cat /tmp/httpd.pid)) >/dev/null 2>&1 &
"""


def app_config() -> AppConfig:
    return AppConfig(argv=("/app/run.sh", *ARGS), env=(("PATH", "/bin"), ("GREETING", GREETING)),
                     workdir="/app", uid=1000, gid=1000)


@pytest.fixture(scope="module")
def guest_inputs(tmp_path_factory):
    tree = realinputs.kernel_tree("bookworm")
    kernel = find_kernel(tree)
    busybox, _ = realinputs.busybox_static()
    trees = library_trees(realinputs.archive(), "dmsetup")
    modules = list(ROOTFS_MODULES + NET_MODULES)
    init = render_rootfs_init(modules=modules, app=app_config(), network=True, sev_guest="absent")
    built = build_initrd(busybox=busybox, source_date_epoch=EPOCH, kernel_tree=tree, kernel_release=kernel.release,
                         modules=modules, init_script=init,
                         binaries=[(trees[0] / "sbin/dmsetup", DMSETUP_PATH, trees)],
                         deflate=realinputs.pinned_deflate())
    out = tmp_path_factory.mktemp("guest")
    initrd = out / "initrd.gz"
    initrd.write_bytes(built.data)
    return kernel, initrd, busybox


def make_root(root, busybox):
    for d in ("bin", "dev", "proc", "sys", "tmp", "run", "app", "www/cgi-bin"):
        (root / d).mkdir(parents=True)
    (root / "bin/busybox").write_bytes(busybox.read_bytes())
    (root / "bin/busybox").chmod(0o755)
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for path, text in (("app/run.sh", APP), ("www/cgi-bin/hello", HELLO), ("www/cgi-bin/stop", STOP)):
        (root / path).write_text(text)
        (root / path).chmod(0o755)
    (root / "www/index.html").write_text("static page\n")


def build_root(tmp_path, busybox, *, flip=None):
    """The image, hash file and command line; ``flip``: 'app' or 'hash' to corrupt one byte after the build."""
    root = tmp_path / "root"
    root.mkdir()
    make_root(root, busybox)
    image = tmp_path / "root.img"
    erofs.write_image_from_directory(root, image, erofs.ErofsParams(epoch=EPOCH, uuid=EROFS_UUID))
    hashes = tmp_path / "root.hash"
    params = verity.VerityParams(salt=SALT, uuid=VERITY_UUID)
    tree = verity.format_files(image, hashes, params)
    if flip == "app":  # a byte of the entrypoint's file data, as an attacker on the disk would change it
        data = bytearray(image.read_bytes())
        at = data.find(APP.encode())
        assert at > 0 and data.find(APP.encode(), at + 1) < 0
        data[at + APP.index("BLINDBOX-TEST-APP")] ^= 0x20
        image.write_bytes(bytes(data))
    elif flip == "hash":  # the first digest of level 0 (data block 0, the EROFS superblock)
        data = bytearray(hashes.read_bytes())
        data[tree.levels[0].start_block * params.hash_block_size] ^= 0x01
        hashes.write_bytes(bytes(data))
    assert flip is None or not verity.verify_files(image, hashes, params, tree.root_hash).ok
    cmdline = f'console=ttyS0 panic=-1 {ROOT_PARAM}="{tree.table(ROOT_DATA_DEVICE, ROOT_HASH_DEVICE)}"'
    return image, hashes, cmdline.encode()


def get(url: str, deadline: float) -> str:
    """GET ``url``, retrying while the guest's server is not up yet."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=20) as r:
                return r.read().decode()
        except (OSError, urllib.error.URLError) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer from {url}: {e}") from e
            time.sleep(1)


def test_app_runs_from_the_verified_root_with_network(guest_inputs, tmp_path):
    kernel, initrd, busybox = guest_inputs
    image, hashes, cmdline = build_root(tmp_path, busybox)
    port = free_port()
    with running_guest(kernel.bzimage, initrd, cmdline, firmware=None, drives=[image, hashes],
                       nic=nic_argument([("127.0.0.1", port, 8080)])) as guest:
        try:
            assert guest.wait_for("BLINDBOX-APP-START", 240) == "/app/run.sh"
            who = guest.wait_for("BLINDBOX-TEST-APP", 60)
            deadline = time.monotonic() + 90
            page = get(f"http://127.0.0.1:{port}/cgi-bin/hello", deadline)
            static = get(f"http://127.0.0.1:{port}/index.html", deadline)
            stopping = get(f"http://127.0.0.1:{port}/cgi-bin/stop", deadline)
            r = guest.finish(120)
        except BootError as e:
            raise AssertionError(e.console[-6000:]) from e
    tail = r.console.replace("\r", "")[-6000:]
    assert who == "uid=1000 gid=1000 pwd=/app", tail
    assert page == "hello from the verified root as 1000:1000 in /www/cgi-bin\n"
    assert static == "static page\n" and stopping == "stopping\n"

    size = image.stat().st_size
    assert r.marker("BLINDBOX-VERITY-OK") == str(size), tail
    assert r.marker("BLINDBOX-NET").startswith("10.0.2.15/"), tail
    assert r.markers["BLINDBOX-MODULE"] == tuple(f"{m} loaded" for m in ROOTFS_MODULES + NET_MODULES), tail
    env = dict(line.split("=", 1) for line in r.markers["BLINDBOX-TEST-ENV"])
    assert env["GREETING"] == GREETING and env["PATH"] == "/bin", tail
    assert set(env) <= {"GREETING", "PATH", "PWD", "SHLVL"}, env  # nothing of the kernel's (HOME, TERM)
    assert r.markers["BLINDBOX-TEST-ARG"] == tuple(f"[{a}]~".replace("\n", "~") for a in ARGS), tail
    assert "BLINDBOX-TEST-APP-DONE" in r.markers, tail
    assert r.markers["BLINDBOX-APP-EXIT"] == (str(EXIT_STATUS),), tail
    assert r.markers["BLINDBOX-POWEROFF"] == ("",), tail
    assert "BLINDBOX-VERITY-FAILED" not in r.markers and "BLINDBOX-DMESG" not in r.markers, tail
    order = [r.console.index(m) for m in ("BLINDBOX-VERITY-OK", "BLINDBOX-NET ", "BLINDBOX-APP-START",
                                          "BLINDBOX-TEST-APP ", "BLINDBOX-APP-EXIT", "BLINDBOX-POWEROFF")]
    assert order == sorted(order), tail


@pytest.mark.parametrize("flip, kernel_says", [("app", "data block"), ("hash", "metadata block")])
def test_a_flipped_byte_stops_the_guest_before_the_app(guest_inputs, tmp_path, flip, kernel_says):
    kernel, initrd, busybox = guest_inputs
    image, hashes, cmdline = build_root(tmp_path, busybox, flip=flip)
    with running_guest(kernel.bzimage, initrd, cmdline, firmware=None, drives=[image, hashes],
                       nic=nic_argument()) as guest:
        r = guest.finish(240)
    tail = r.console.replace("\r", "")[-6000:]
    assert r.marker("BLINDBOX-VERITY-FAILED").startswith("reading the verified root:"), tail
    assert r.markers["BLINDBOX-DMESG"] and all("device-mapper: verity: " in m for m in r.markers["BLINDBOX-DMESG"])
    assert any(f"{kernel_says} " in m and "is corrupted" in m for m in r.markers["BLINDBOX-DMESG"]), tail
    for never in ("BLINDBOX-VERITY-OK", "BLINDBOX-NET", "BLINDBOX-APP-START", "BLINDBOX-TEST-APP",
                  "BLINDBOX-APP-EXIT"):
        assert never not in r.markers, tail
    assert r.markers["BLINDBOX-POWEROFF"] == ("",), tail
