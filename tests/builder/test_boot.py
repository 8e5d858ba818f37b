"""builder.boot without booting: the /proc/cmdline relation, firmware detection, the runner."""

from __future__ import annotations

import hashlib
import os
import lzma
import uuid
from pathlib import Path

import pytest

from builder import boot
from builder.boot import BootError, BootTimeout, CmdlineError, expected_proc_cmdline
from builder.errors import ToolMissing
from measure.kernel_hashes import cmdline_bytes

LZMA_GUID = uuid.UUID("EE4E5898-3914-4259-9D6E-DC7BD79403CF").bytes_le


# -- what the guest sees -------------------------------------------------------------------
def test_direct_boot_passes_the_append_string_unchanged():
    measured = cmdline_bytes("console=ttyS0 panic=-1 note=café")
    assert expected_proc_cmdline(measured, "direct") == "console=ttyS0 panic=-1 note=café\n".encode()


def test_ovmf_adds_its_token_and_widens_bytes_as_latin1():
    measured = cmdline_bytes("console=ttyS0 note=café")  # é is C3 A9 in UTF-8
    assert expected_proc_cmdline(measured, "ovmf-prefix") == \
        b"initrd=initrd console=ttyS0 note=caf\xc3\x83\xc2\xa9\n"
    assert expected_proc_cmdline(measured, "ovmf-suffix") == \
        b"console=ttyS0 note=caf\xc3\x83\xc2\xa9 initrd=initrd\n"
    assert expected_proc_cmdline(measured, "ovmf-prefix", initrd=False) == b"console=ttyS0 note=caf\xc3\x83\xc2\xa9\n"


def test_the_measured_form_is_required():
    with pytest.raises(CmdlineError, match="exactly one NUL"):
        expected_proc_cmdline(b"console=ttyS0", "direct")
    with pytest.raises(CmdlineError, match="exactly one NUL"):
        expected_proc_cmdline(b"a\0b\0", "direct")
    with pytest.raises(CmdlineError, match="boot method 'uefi'"):
        expected_proc_cmdline(b"\0", "uefi")


def test_too_long_for_the_guest():
    ok = b"a" * (boot.MAX_CMDLINE - len(boot.OVMF_INITRD_PREFIX))
    assert len(expected_proc_cmdline(ok + b"\0", "ovmf-prefix")) == boot.MAX_CMDLINE + 1
    with pytest.raises(CmdlineError, match="2048-byte command line .*cut"):
        expected_proc_cmdline(ok + b"b\0", "ovmf-prefix")
    expected_proc_cmdline(ok + b"b\0", "direct")


# -- firmware ------------------------------------------------------------------------------
def lzma_section(payload: bytes) -> bytes:
    """An EFI GUID-defined section holding LZMA ('alone' format) data, as edk2 writes it."""
    body = lzma.compress(payload, format=lzma.FORMAT_ALONE)
    header_len = 4 + 16 + 2 + 2
    size = header_len + len(body)
    return size.to_bytes(3, "little") + b"\x02" + LZMA_GUID + header_len.to_bytes(2, "little") + b"\x01\x00" + body


@pytest.mark.parametrize("literal, method", [(b"initrd=initrd \0", "ovmf-prefix"),
                                             (b" initrd=initrd\0", "ovmf-suffix")])
def test_placement_found_inside_compressed_volume(literal, method):
    inner = b"\0" * 100 + b"%a%a\0" + literal + b"etc/\0"
    fw = b"\xff" * 4096 + lzma_section(b"FV" + lzma_section(inner)) + b"\xff" * 4096  # nested, as in OVMF
    assert boot.ovmf_initrd_placement(fw) == method
    assert literal not in fw


def test_placement_unknown():
    assert boot.ovmf_initrd_placement(b"\xff" * 8192) is None
    both = lzma_section(b"initrd=initrd \0 initrd=initrd\0")
    assert boot.ovmf_initrd_placement(both) is None
    corrupt = (100).to_bytes(3, "little") + b"\x02" + LZMA_GUID + (24).to_bytes(2, "little") + bytes(80)
    assert boot.ovmf_initrd_placement(corrupt) is None


def test_boot_method(tmp_path):
    assert boot.boot_method(None) == "direct"
    fw = tmp_path / "fw.fd"
    fw.write_bytes(lzma_section(b" initrd=initrd\0"))
    assert boot.boot_method(fw) == "ovmf-suffix"
    fw.write_bytes(b"\0" * 4096)
    with pytest.raises(BootError, match="cannot tell where the firmware"):
        boot.boot_method(fw)


# -- markers and the QEMU runner -----------------------------------------------------------
def test_parse_markers_tolerates_console_noise():
    console = ("\x1bc\x1b[2J[    0.1] Linux version\r\nBLINDBOX-BOOT-OK\r\n"
               "BLINDBOX-CMDLINE-SHA256 ab12\r\n[    1.2] random: crng\r\n"
               "BLINDBOX-MODULE virtio_blk loaded\r\nBLINDBOX-MODULE erofs loaded  \r\n"
               "BLINDBOX-SEV-GUEST not-loaded: modprobe: can't load module sev-guest: No such device\r\n")
    m = boot.parse_markers(console)
    assert m["BLINDBOX-BOOT-OK"] == ("",)
    assert m["BLINDBOX-CMDLINE-SHA256"] == ("ab12",)
    assert m["BLINDBOX-MODULE"] == ("virtio_blk loaded", "erofs loaded")
    assert m["BLINDBOX-SEV-GUEST"][0].startswith("not-loaded: modprobe:")


def test_qemu_command():
    cmd = boot.qemu_command(Path("/k"), Path("/i"), "a=é b".encode(), firmware=Path("/fw.fd"))
    assert cmd[:5] == ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg"]
    assert "-no-reboot" in cmd and "-nographic" in cmd and cmd[cmd.index("-m") + 1] == "512"
    assert cmd[cmd.index("-bios") + 1] == "/fw.fd"
    assert "-bios" not in boot.qemu_command(Path("/k"), Path("/i"), b"", firmware=None)
    with pytest.raises(CmdlineError, match="NUL"):
        boot.qemu_command(Path("/k"), Path("/i"), b"a\0", firmware=None)


def test_qemu_command_drives_are_read_only_virtio_in_order():
    cmd = boot.qemu_command(Path("/k"), Path("/i"), b"", firmware=None, drives=[Path("/d/a.img"), Path("/d/b")])
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "-drive"] == [
        "file=/d/a.img,if=virtio,format=raw,readonly=on", "file=/d/b,if=virtio,format=raw,readonly=on"]
    assert "-drive" not in boot.qemu_command(Path("/k"), Path("/i"), b"", firmware=None)
    with pytest.raises(boot.BootError, match="contains a comma, which QEMU's -drive option cannot take"):
        boot.qemu_command(Path("/k"), Path("/i"), b"", firmware=None, drives=[Path("/d/a,b")])


@pytest.fixture
def files(tmp_path):
    for name in ("bzImage", "initrd"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def fake_qemu(tmp_path: Path, monkeypatch, body: str) -> Path:
    """A stand-in qemu-system-x86_64 on PATH that records its argv (NUL-separated) and runs ``body``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "qemu-system-x86_64"
    script.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > {tmp_path / 'argv'}\n" + body)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    return script


def test_smoke_boot_parses_a_console(files, monkeypatch, tmp_path):
    fake_qemu(tmp_path, monkeypatch,
              "printf 'SeaBIOS\\r\\nBLINDBOX-BOOT-OK\\r\\nBLINDBOX-CMDLINE-SHA256 %s\\r\\n' abc\n"
              "echo 'BLINDBOX-SEV-GUEST not-loaded: No such device'\necho BLINDBOX-SEV-DEVICE absent\n")
    append = "console=ttyS0 note=é".encode()
    r = boot.smoke_boot(files / "bzImage", files / "initrd", append, firmware=None, timeout=30)
    assert (r.method, r.returncode, r.booted) == ("direct", 0, True)
    assert r.cmdline_sha256 == "abc" and r.sev_guest == "not-loaded: No such device" and r.sev_device == "absent"
    args = (tmp_path / "argv").read_bytes().split(b"\0")
    assert args[args.index(b"-append") + 1] == append  # exact bytes, non-ASCII included
    assert "SeaBIOS" in r.console


def test_smoke_boot_failures(files, monkeypatch, tmp_path):
    script = fake_qemu(tmp_path, monkeypatch, "")
    script.write_text("#!/bin/sh\necho 'Kernel panic - not syncing: no init found'\n")
    with pytest.raises(BootError, match="did not reach its init .* Kernel panic - not syncing: no init found") as e:
        boot.smoke_boot(files / "bzImage", files / "initrd", b"", firmware=None, timeout=30)
    assert "Kernel panic" in e.value.console and e.value.command[0].endswith("qemu-system-x86_64")
    script.write_text("#!/bin/sh\necho 'qemu: could not load kernel'\nexit 1\n")
    with pytest.raises(BootError, match="QEMU exited with status 1 .*could not load kernel"):
        boot.smoke_boot(files / "bzImage", files / "initrd", b"", firmware=None, timeout=30)
    script.write_text("#!/bin/sh\necho BLINDBOX-BOOT-OK\nexec sleep 30\n")
    with pytest.raises(BootTimeout, match="did not power off within 1 s; the console ended with: BLINDBOX-BOOT-OK"):
        boot.smoke_boot(files / "bzImage", files / "initrd", b"", firmware=None, timeout=1)


def test_smoke_boot_without_qemu_or_inputs(files, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolMissing) as e:
        boot.smoke_boot(files / "bzImage", files / "initrd", b"", firmware=None)
    assert (e.value.tool, e.value.package) == ("qemu-system-x86_64", "qemu-system-x86")
    fake_qemu(tmp_path, monkeypatch, "")
    with pytest.raises(BootError, match="the initrd .*/nope for the smoke boot is not a file"):
        boot.smoke_boot(files / "bzImage", files / "nope", b"", firmware=None)
    with pytest.raises(BootError, match="the disk image .*/disk.img for the smoke boot is not a file"):
        boot.smoke_boot(files / "bzImage", files / "initrd", b"", firmware=None, drives=[files / "disk.img"])
    with pytest.raises(BootError, match="does not fit firmware"):
        boot.smoke_boot(files / "bzImage", files / "initrd", b"", firmware=None, method="ovmf-prefix")


@pytest.mark.network
def test_debian_firmware_placements():
    """Read from the images (the boots in tests/integration confirm two of them)."""
    from tests import realinputs

    archive = realinputs.archive()
    bookworm = archive.resolve("ovmf", "bookworm")
    assert boot.ovmf_initrd_placement(archive.member(bookworm, "/usr/share/ovmf/OVMF.fd").read_bytes()) == \
        "ovmf-suffix"
    amdsev, _ = realinputs.ovmf_amdsev()
    # the firmware of measured boot: /proc/cmdline starts with "initrd=initrd "
    assert boot.ovmf_initrd_placement(amdsev.read_bytes()) == "ovmf-prefix"
    assert hashlib.sha256(expected_proc_cmdline(cmdline_bytes("console=ttyS0"), "ovmf-prefix")).hexdigest() == \
        hashlib.sha256(b"initrd=initrd console=ttyS0\n").hexdigest()


# -- network and interaction ---------------------------------------------------------------
def test_nic_argument_forwards_tcp_ports_to_a_restricted_user_nic():
    assert boot.nic_argument() == "user,model=virtio-net-pci,restrict=on"
    assert boot.nic_argument([("127.0.0.1", 18080, 8080), ("0.0.0.0", 2222, 22)]) == (
        "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=tcp:0.0.0.0:2222-:22")
    cmd = boot.qemu_command(Path("/k"), Path("/i"), b"", firmware=None, nic=boot.nic_argument([("127.0.0.1", 1, 2)]))
    assert cmd[cmd.index("-nic") + 1] == "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:1-:2"
    assert "-nic" not in boot.qemu_command(Path("/k"), Path("/i"), b"", firmware=None)


@pytest.mark.parametrize("forward, message", [
    (("localhost", 80, 80), "is not \\(IPv4 address, host port, guest port\\)"),
    (("127.0.0.1", 80), "is not \\(IPv4 address, host port, guest port\\)"),
    (("127.0.0.1", 0, 80), "the port 0 of the forward .* is not from 1 to 65535"),
    (("127.0.0.1", 80, 65536), "the port 65536 .* is not from 1 to 65535"),
    (("127.0.0.1", "80", 80), "the port '80' .* is not from 1 to 65535"),
])
def test_nic_argument_refuses_bad_forwards(forward, message):
    with pytest.raises(BootError, match=message):
        boot.nic_argument([forward])


def test_free_port_can_be_bound():
    import socket

    port = boot.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_running_guest_waits_for_markers_and_kills_qemu(files, monkeypatch, tmp_path):
    fake_qemu(tmp_path, monkeypatch, f"echo $$ > {tmp_path / 'pid'}\necho BLINDBOX-BOOT-OK\nsleep 1\n"
                                     "echo 'BLINDBOX-NET 10.0.2.15/24'\nexec sleep 60\n")
    with boot.running_guest(files / "bzImage", files / "initrd", b"", firmware=None,
                            nic=boot.nic_argument([("127.0.0.1", 5555, 80)])) as guest:
        assert guest.wait_for("BLINDBOX-NET", 30) == "10.0.2.15/24"
        assert "BLINDBOX-BOOT-OK" in guest.console
        with pytest.raises(BootTimeout, match="did not print BLINDBOX-APP-EXIT within 0 s .*BLINDBOX-NET"):
            guest.wait_for("BLINDBOX-APP-EXIT", 0.2)
        pid = int((tmp_path / "pid").read_text())
    assert b"hostfwd=tcp:127.0.0.1:5555-:80" in (tmp_path / "argv").read_bytes()
    with pytest.raises(ProcessLookupError):  # QEMU was killed and reaped when the block ended
        os.kill(pid, 0)


def test_running_guest_reports_a_guest_that_stops_early(files, monkeypatch, tmp_path):
    fake_qemu(tmp_path, monkeypatch, "echo BLINDBOX-BOOT-OK\necho 'BLINDBOX-VERITY-FAILED bad'\n"
                                     "echo BLINDBOX-POWEROFF\n")
    with boot.running_guest(files / "bzImage", files / "initrd", b"", firmware=None) as guest:
        with pytest.raises(BootError, match="stopped \\(QEMU exit status 0\\) without printing BLINDBOX-APP-START "
                                            ".*BLINDBOX-VERITY-FAILED bad"):
            guest.wait_for("BLINDBOX-APP-START", 30)
        r = guest.finish(30)
    assert r.marker("BLINDBOX-VERITY-FAILED") == "bad" and r.returncode == 0


def test_nic_argument_adds_guest_forwards_to_host_commands():
    value = boot.nic_argument([("127.0.0.1", 18443, 8443)],
                              [("10.0.2.100", 4050, "/usr/bin/env python3 -m tests.simattester --a 1,2")])
    assert value == ("user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:18443-:8443,"
                     "guestfwd=tcp:10.0.2.100:4050-cmd:/usr/bin/env python3 -m tests.simattester --a 1,,2")


@pytest.mark.parametrize("fwd, message", [
    (("10.0.2", 4050, "x"), "the guest forward .* is not \\(IPv4 address, port, command\\)"),
    (("10.0.2.100", 0, "x"), "the port 0 of the guest forward .* is not from 1 to 65535"),
    (("10.0.2.100", 4050, " "), "the command of the guest forward .* is empty or holds a NUL or line break"),
    (("10.0.2.100", 4050, "a\nb"), "is empty or holds a NUL or line break"),
])
def test_nic_argument_refuses_bad_guest_forwards(fwd, message):
    with pytest.raises(BootError, match=message):
        boot.nic_argument(guestfwds=[fwd])
