"""Boot a real initrd under QEMU TCG: bookworm's kernel and busybox-static, three ways.

Each boot takes 6-15 s under software emulation, so there are three, each covering a
different path from the measured command line to the guest's ``/proc/cmdline``:

- direct ``-kernel`` boot (no firmware), gzip initrd: the append string arrives unchanged;
- bookworm ``ovmf`` 2022.11 ``OVMF.fd``, xz initrd with a dynamically linked Debian
  program (jq) as the app: the loader appends `` initrd=initrd``;
- sid ``ovmf-generic`` ``OVMF.fd``, same edk2 release as sid's ``ovmf-amdsev`` (the
  firmware of measured boot): the loader prepends ``initrd=initrd ``.

Every boot checks the guest's SHA-256 of ``/proc/cmdline`` against the command line that
``measure.kernel_hashes`` hashes (the ``-append`` bytes plus a NUL), through
``builder.boot.expected_proc_cmdline``, and reports what ``modprobe sev-guest`` did.
"""

from __future__ import annotations

import hashlib

import pytest

from builder.boot import expected_proc_cmdline, ovmf_initrd_placement, smoke_boot
from builder.steps.initrd import build_initrd
from builder.steps.kernel import find_kernel
from measure.kernel_hashes import KernelHashes, cmdline_bytes
from tests import realinputs

pytestmark = [pytest.mark.integration, pytest.mark.network]

EPOCH = 1735689600
# non-ASCII on purpose: OVMF re-encodes bytes >= 0x80 (Latin-1 -> UTF-8), direct boot does not
APPEND = "console=ttyS0 panic=-1 blindbox.note=café".encode()
MODULES = ["sev-guest", "virtio_blk", "erofs", "dm-verity"]


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    tree = realinputs.kernel_tree("bookworm")
    kernel = find_kernel(tree)
    busybox, _ = realinputs.busybox_static()
    initrd = build_initrd(busybox=busybox, source_date_epoch=EPOCH, kernel_tree=tree,
                          kernel_release=kernel.release, modules=MODULES, deflate=realinputs.pinned_deflate())
    path = tmp_path_factory.mktemp("guest") / "initrd.gz"
    path.write_bytes(initrd.data)
    return kernel, path


def check_cmdline(result, kernel, initrd, method):
    """The guest's hash equals the hash of what must be in /proc/cmdline for the measured line."""
    measured = cmdline_bytes(APPEND)
    hashes = KernelHashes.from_files(kernel.bzimage, initrd, APPEND)
    assert hashes.cmdline == hashlib.sha256(measured).digest()  # the kernel-hashes table entry
    proc = expected_proc_cmdline(measured, method)
    assert result.method == method
    assert result.cmdline_bytes == proc, result.console[-2000:]
    assert result.cmdline_sha256 == hashlib.sha256(proc).hexdigest()
    return proc


def check_sev_guest(result):
    # No SEV under TCG: the driver finds no platform device and the kernel refuses it.
    # This is the real outcome as reported by the guest, not a value we put there.
    assert result.sev_guest.startswith("not-loaded: "), result.sev_guest
    assert "No such device" in result.sev_guest
    assert result.sev_device == "absent"
    assert result.marker("BLINDBOX-MEM-ENCRYPT") == "none"
    assert result.marker("BLINDBOX-POWEROFF") == ""


def test_direct_kernel_boot(guest):
    kernel, initrd = guest
    r = smoke_boot(kernel.bzimage, initrd, APPEND, firmware=None)
    proc = check_cmdline(r, kernel, initrd, "direct")
    # direct boot: /proc/cmdline is the measured bytes with the NUL turned into a newline
    assert proc == cmdline_bytes(APPEND)[:-1] + b"\n"
    assert r.markers["BLINDBOX-MODULE"] == ("virtio_blk loaded", "erofs loaded", "dm-verity loaded")
    check_sev_guest(r)


def test_bookworm_ovmf_xz_initrd_with_a_debian_program(guest, tmp_path):
    kernel, _ = guest
    archive = realinputs.archive()
    ovmf = archive.resolve("ovmf", "bookworm")
    firmware = archive.member(ovmf, "/usr/share/ovmf/OVMF.fd")
    trees = [archive.unpack(archive.resolve(n, "bookworm")) for n in ("jq", "libjq1", "libonig5", "libc6")]
    busybox, _ = realinputs.busybox_static()
    built = build_initrd(busybox=busybox, source_date_epoch=EPOCH, compression="xz", kernel_tree=kernel.tree,
                         kernel_release=kernel.release, modules=["sev-guest"],
                         binaries=[(trees[0] / "usr/bin/jq", "/usr/bin/jq", trees)],
                         app_command="jq -M -n '[40,2]|add'")  # -M: no colours on the tty
    assert built.data[:6] == b"\xfd7zXZ\x00"
    initrd = tmp_path / "initrd.xz"
    initrd.write_bytes(built.data)
    r = smoke_boot(kernel.bzimage, initrd, APPEND, firmware=firmware)
    proc = check_cmdline(r, kernel, initrd, "ovmf-suffix")
    assert proc == b"console=ttyS0 panic=-1 blindbox.note=caf\xc3\x83\xc2\xa9 initrd=initrd\n"
    assert r.marker("BLINDBOX-APP-EXIT") == "0", r.console[-2000:]
    assert "\n42" in r.console.replace("\r", "")
    check_sev_guest(r)


def test_sid_generic_ovmf_like_the_measured_firmware(guest):
    kernel, initrd = guest
    archive = realinputs.archive()
    generic = archive.resolve("ovmf-generic", "sid")
    firmware = archive.member(generic, "/usr/share/ovmf/OVMF.fd")
    amdsev, amdsev_pkg = realinputs.ovmf_amdsev()
    # same loader behaviour as the AmdSev firmware that a real SNP launch measures
    assert ovmf_initrd_placement(amdsev.read_bytes()) == ovmf_initrd_placement(firmware.read_bytes()) \
        == "ovmf-prefix", (generic, amdsev_pkg)
    r = smoke_boot(kernel.bzimage, initrd, APPEND, firmware=firmware)
    proc = check_cmdline(r, kernel, initrd, "ovmf-prefix")
    assert proc == b"initrd=initrd console=ttyS0 panic=-1 blindbox.note=caf\xc3\x83\xc2\xa9\n"
    check_sev_guest(r)
