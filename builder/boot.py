"""Smoke boots under QEMU's software emulation, and what the guest's /proc/cmdline must be.

No SEV hardware here (and no KVM): the AmdSev firmware refuses to boot a ``-kernel``
without SEV, so a smoke boot runs the bundle's own kernel, initrd and command line either
by QEMU's direct kernel boot (``firmware=None``: SeaBIOS's linuxboot option ROM) or
through a generic OVMF (Debian ``ovmf``'s ``OVMF.fd``).  The initrd's init prints marker
lines (:mod:`builder.steps.init`) that :func:`smoke_boot` parses.

The command line the guest sees is not the one that is measured:

- QEMU hashes the ``-append`` bytes plus a terminating NUL into the kernel-hashes table
  (:func:`measure.kernel_hashes.cmdline_bytes`).
- Direct boot passes the ``-append`` bytes unchanged; ``/proc/cmdline`` adds ``\\n``.
- OVMF's QEMU kernel loader builds the kernel's EFI load options from the command line
  and, whenever an initrd is given, an ``initrd=initrd`` token, widening every byte to
  UCS-2 (``%a``); the kernel's EFI stub converts the UCS-2 back to UTF-8.  So a byte
  ``0x80..0xff`` arrives as its Latin-1 character in UTF-8 (two bytes), and the token is
  in ``/proc/cmdline`` but not in the measurement.  Where the token goes depends on the
  edk2 version, so it is a property of the firmware image:

  ``ovmf-suffix``  older edk2 (``X86QemuLoadImageLib`` of Debian bookworm's 2022.11
                   ``OVMF.fd``, seen in a boot here): ``cmdline + " initrd=initrd"``;
  ``ovmf-prefix``  newer edk2 (``GenericQemuLoadImageLib``/``X86QemuLoadImageLib`` of
                   current releases, AmdSevX64 included): ``"initrd=initrd " + cmdline``.

  :func:`ovmf_initrd_placement` finds out which by looking for the loader's ASCII
  literal inside the firmware's LZMA-compressed volumes.

:func:`expected_proc_cmdline` states the relation exactly; the integration test checks
it against real boots.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import ipaddress
import lzma
import os
import re
import socket
import uuid
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import BuildError, ToolMissing
from builder.limits import MAX_FIRMWARE_VOLUME_BYTES
from builder.steps import init as markers
from measure import layout
from measure.record import record
from measure.inputs import read_bounded
from measure.limits import MAX_FIRMWARE_BYTES

QEMU = "qemu-system-x86_64"
QEMU_PACKAGE = "qemu-system-x86"
BOOT_METHODS = ("direct", "ovmf-prefix", "ovmf-suffix")
OVMF_INITRD_PREFIX = b"initrd=initrd "
OVMF_INITRD_SUFFIX = b" initrd=initrd"
#: edk2 EFI_CUSTOMIZED_DECOMPRESS (LzmaCustomDecompress) GUID-defined section.
_LZMA_SECTION_GUID = uuid.UUID("EE4E5898-3914-4259-9D6E-DC7BD79403CF").bytes_le
_EFI_SECTION_GUID_DEFINED = 0x02
#: x86 COMMAND_LINE_SIZE is 2048 bytes with the NUL.
MAX_CMDLINE = 2047
DEFAULT_TIMEOUT = 240.0


class BootError(BuildError):
    """A smoke boot could not run or the guest did not reach its init."""

    def __init__(self, message: str, *, console: str = "", command: Sequence[str] = ()):
        super().__init__(message)
        self.console = console
        self.command = tuple(command)


class BootTimeout(BootError):
    """The guest did not power off in time."""


class CmdlineError(BuildError):
    """A command line cannot be passed to the guest as measured."""


@layout.struct(size=0x18, spec="UEFI PI spec vol. 3, EFI_GUID_DEFINED_SECTION")
@record
class GuidDefinedSection(layout.Struct):
    size: int = layout.u24(0x00)  # EFI_COMMON_SECTION_HEADER: the whole section, this header included
    type: int = layout.u8(0x03)
    guid: bytes = layout.raw(0x04, 16)  # SectionDefinitionGuid: how the data is encoded
    data_offset: int = layout.u16(0x14)  # from the start of the section
    attributes: int = layout.u16(0x16)


def _firmware_volumes(data: bytes):
    """The firmware bytes, then every LZMA-compressed section of it, decompressed."""
    yield data
    pos = 0
    while (i := data.find(_LZMA_SECTION_GUID, pos)) >= 0:
        pos = i + 1
        header = i - GuidDefinedSection.offset_of("guid")
        if header < 0 or header + GuidDefinedSection.SIZE > len(data):
            continue
        section = GuidDefinedSection.from_bytes(data[header:header + GuidDefinedSection.SIZE], base=header)
        if section.type != _EFI_SECTION_GUID_DEFINED:
            continue
        if section.size < section.data_offset or header + section.size > len(data):
            continue
        try:
            # at most MAX_FIRMWARE_VOLUME_BYTES: a section's size field cannot make us allocate more
            inner = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(
                data[header + section.data_offset:header + section.size], max_length=MAX_FIRMWARE_VOLUME_BYTES)
        except lzma.LZMAError:
            continue
        yield from _firmware_volumes(inner)


def ovmf_initrd_placement(firmware: bytes) -> str | None:
    """``ovmf-prefix`` or ``ovmf-suffix`` for an OVMF image, None if it cannot be told."""
    prefix = suffix = False
    for volume in _firmware_volumes(firmware):
        prefix = prefix or OVMF_INITRD_PREFIX + b"\0" in volume
        suffix = suffix or OVMF_INITRD_SUFFIX + b"\0" in volume
    if prefix != suffix:
        return "ovmf-prefix" if prefix else "ovmf-suffix"
    return None


def boot_method(firmware: str | Path | None) -> str:
    """The boot method for a smoke boot with this firmware (None: direct kernel boot)."""
    if firmware is None:
        return "direct"
    try:
        data = read_bounded(firmware, "firmware", MAX_FIRMWARE_BYTES)
    except OSError as e:
        raise BootError(f"cannot read the firmware {firmware}: {e.strerror}; check the path.") from e
    method = ovmf_initrd_placement(data)
    if method is None:
        raise BootError(f"cannot tell where the firmware {firmware} puts its 'initrd=initrd' token (no OVMF QEMU "
                        f"kernel loader found in it); pass the boot method explicitly.")
    return method


def expected_proc_cmdline(measured: bytes, method: str, *, initrd: bool = True) -> bytes:
    """The exact bytes of the guest's ``/proc/cmdline`` for a measured command line.

    ``measured`` is what QEMU hashes: the ``-append`` bytes and one NUL
    (:func:`measure.kernel_hashes.cmdline_bytes`).  ``method`` is ``direct`` (QEMU loads
    the kernel, no firmware) or ``ovmf`` (an OVMF loads it: generic or AmdSev).
    """
    if method not in BOOT_METHODS:
        raise CmdlineError(f"boot method {method!r} is unknown; use one of {', '.join(BOOT_METHODS)}.")
    if not measured.endswith(b"\0") or b"\0" in measured[:-1]:
        raise CmdlineError("the measured command line must end with exactly one NUL and contain no other "
                           "(as measure.kernel_hashes.cmdline_bytes returns it).")
    append = measured[:-1]
    if method == "direct":
        visible = append
    else:
        if initrd:
            visible = OVMF_INITRD_PREFIX + append if method == "ovmf-prefix" else append + OVMF_INITRD_SUFFIX
        else:
            visible = append
        visible = visible.decode("latin-1").encode("utf-8")
    if len(visible) > MAX_CMDLINE:
        raise CmdlineError(f"the guest would see a {len(visible)}-byte command line ({method} boot), longer than the "
                           f"kernel's {MAX_CMDLINE}; it would be cut and differ from the measured one. Shorten it.")
    return visible + b"\n"


@dataclass(frozen=True)
class BootResult:
    method: str
    command: tuple[str, ...]
    returncode: int
    seconds: float
    console: str = field(repr=False)
    markers: dict[str, tuple[str, ...]] = field(repr=False)

    def marker(self, name: str) -> str | None:
        """The value after the first line with marker ``name`` ('' if it has none)."""
        values = self.markers.get(name)
        return values[0] if values else None

    @property
    def booted(self) -> bool:
        return markers.MARKER_BOOT in self.markers

    @property
    def cmdline_sha256(self) -> str | None:
        return self.marker(markers.MARKER_CMDLINE_SHA256)

    @property
    def cmdline_bytes(self) -> bytes | None:
        value = self.marker(markers.MARKER_CMDLINE_HEX)
        return None if value is None else bytes.fromhex(value)

    @property
    def sev_guest(self) -> str | None:
        return self.marker(markers.MARKER_SEV_GUEST)

    @property
    def sev_device(self) -> str | None:
        return self.marker(markers.MARKER_SEV_DEVICE)


_MARKER_RE = re.compile(r"(BLINDBOX-[A-Z0-9-]+)(?:[ \t]+(.*?))?[ \t]*$")


def parse_markers(console: str) -> dict[str, tuple[str, ...]]:
    """Marker lines of a console log: name -> values in order of appearance."""
    found: dict[str, list[str]] = {}
    for line in console.replace("\r", "").split("\n"):
        m = _MARKER_RE.search(line)
        if m:
            found.setdefault(m.group(1), []).append(m.group(2) or "")
    return {k: tuple(v) for k, v in found.items()}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the kernel picks it: bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def nic_argument(forwards: Sequence[tuple[str, int, int]] = (),
                 guestfwds: Sequence[tuple[str, int, str]] = ()) -> str:
    """The ``-nic`` value of a user-mode (slirp) virtio-net NIC with ``restrict=on``.

    ``forwards``: (host address, host port, guest port) TCP forwards (``hostfwd``); the
    guest can reach nothing outside, only these ports reach it.  ``guestfwds``: (address,
    port, command): a guest connection to ``address:port`` (inside QEMU's user network, e.g.
    the simulated attester's 10.0.2.100:4050) runs ``command`` on the host with the
    connection as its standard input and output (``guestfwd=tcp:ADDR:PORT-cmd:COMMAND``; QEMU
    starts one per connection).  Commas in the command are doubled, as QEMU's option parser
    wants.
    """
    value = "user,model=virtio-net-pci,restrict=on"
    for forward in forwards:
        try:
            host, host_port, guest_port = forward
            address = ipaddress.IPv4Address(host)
        except (TypeError, ValueError):
            raise BootError(f"the port forward {forward!r} is not (IPv4 address, host port, guest port); give one "
                            f"such as ('127.0.0.1', 8080, 80).") from None
        for port in (host_port, guest_port):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise BootError(f"the port {port!r} of the forward {forward!r} is not from 1 to 65535; give a TCP "
                                f"port number.")
        value += f",hostfwd=tcp:{address}:{host_port}-:{guest_port}"
    for fwd in guestfwds:
        try:
            addr, port, command = fwd
            address = ipaddress.IPv4Address(addr)
        except (TypeError, ValueError):
            raise BootError(f"the guest forward {fwd!r} is not (IPv4 address, port, command); give one such as "
                            f"('10.0.2.100', 4050, 'python3 -m tests.simattester ...').") from None
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise BootError(f"the port {port!r} of the guest forward {fwd!r} is not from 1 to 65535; give a TCP "
                            f"port number.")
        if not isinstance(command, str) or not command.strip() or any(c in command for c in "\0\n\r"):
            raise BootError(f"the command of the guest forward {fwd!r} is empty or holds a NUL or line break; give "
                            f"one command line.")
        value += f",guestfwd=tcp:{address}:{port}-cmd:{command.replace(',', ',,')}"
    return value


def qemu_command(kernel: Path, initrd: Path, cmdline: bytes, *, firmware: Path | None, memory_mib: int = 512,
                 qemu: str = QEMU, drives: Sequence[Path] = (), nic: str | None = None) -> list[str]:
    """The QEMU argv of a smoke boot (software emulation, serial console on stdout).

    ``drives``: raw disk images attached read-only as virtio-blk, in order (the guest sees
    ``/dev/vda``, ``/dev/vdb``, ...).  ``nic``: a ``-nic`` value (:func:`nic_argument`), or
    None for a guest without network.
    """
    if b"\0" in cmdline:
        raise CmdlineError("the kernel command line contains a NUL byte, which QEMU cannot pass; remove it.")
    for drive in drives:
        if "," in str(drive):
            raise BootError(f"the disk image path {str(drive)!r} contains a comma, which QEMU's -drive option "
                            f"cannot take; move or rename it.")
    cmd = [qemu, "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", str(memory_mib), "-smp", "1",
           "-nodefaults", "-nographic", "-serial", "stdio", "-monitor", "none", "-no-reboot",
           "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", os.fsdecode(cmdline)]
    if firmware is not None:
        cmd += ["-bios", str(firmware)]
    for drive in drives:
        cmd += ["-drive", f"file={drive},if=virtio,format=raw,readonly=on"]
    if nic is not None:
        cmd += ["-nic", nic]
    return cmd


class RunningGuest:
    """A guest booting under TCG (see :func:`running_guest`): its console so far, markers as they come."""

    def __init__(self, proc: subprocess.Popen, log_path: Path, method: str, command: Sequence[str]):
        self._proc = proc
        self._log_path = log_path
        self.method = method
        self.command = tuple(command)
        self._start = time.monotonic()

    @property
    def console(self) -> str:
        """Everything the guest printed on its serial console so far."""
        return self._log_path.read_bytes().decode("utf-8", "replace")

    def wait_for(self, marker: str, timeout: float) -> str:
        """The value of the first ``marker`` line, waiting up to ``timeout`` seconds for it.

        Raises :class:`BootError` if QEMU exits without printing it, :class:`BootTimeout`
        when the time is up.
        """
        deadline = time.monotonic() + timeout
        while True:
            exited = self._proc.poll() is not None
            console = self.console
            values = parse_markers(console).get(marker)
            if values:
                return values[0]
            if exited:
                raise BootError(f"the guest stopped (QEMU exit status {self._proc.returncode}) without printing "
                                f"{marker} in the {self.method} smoke boot; the console ended with: "
                                f"{_tail(console)}", console=console, command=self.command)
            if time.monotonic() >= deadline:
                raise BootTimeout(f"the guest did not print {marker} within {timeout:.0f} s in the {self.method} "
                                  f"smoke boot; the console ended with: {_tail(console)}", console=console,
                                  command=self.command)
            time.sleep(0.1)

    def finish(self, timeout: float = DEFAULT_TIMEOUT) -> BootResult:
        """Wait until the guest powers off (QEMU exits) and parse its console.

        Raises :class:`BootTimeout` (QEMU is killed) after ``timeout`` seconds,
        :class:`BootError` if QEMU failed or the guest never reached its init.
        """
        try:
            returncode = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            console = self.console
            raise BootTimeout(f"the {self.method} smoke boot did not power off within {timeout:.0f} s; the console "
                              f"ended with: {_tail(console)}", console=console, command=self.command) from None
        seconds = time.monotonic() - self._start
        console = self.console
        result = BootResult(self.method, self.command, returncode, seconds, console, parse_markers(console))
        if returncode != 0:
            raise BootError(f"QEMU exited with status {returncode} in the {self.method} smoke boot: "
                            f"{_tail(console)}", console=console, command=self.command)
        if not result.booted:
            raise BootError(f"the guest did not reach its init in the {self.method} smoke boot (no "
                            f"{markers.MARKER_BOOT} line); the console ended with: {_tail(console)}",
                            console=console, command=self.command)
        return result

    def kill(self) -> None:
        """Stop QEMU now (nothing happens if it has exited)."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()


@contextlib.contextmanager
def running_guest(kernel: str | Path, initrd: str | Path, cmdline: bytes, *, firmware: str | Path | None,
                  memory_mib: int = 512, method: str | None = None, drives: Sequence[str | Path] = (),
                  nic: str | None = None) -> Iterator[RunningGuest]:
    """Start a TCG boot and yield it while it runs; QEMU is killed when the block ends.

    Arguments as for :func:`smoke_boot`; ``nic``: a ``-nic`` value (:func:`nic_argument`).
    """
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise ToolMissing(QEMU, QEMU_PACKAGE)
    kernel, initrd = Path(kernel).resolve(), Path(initrd).resolve()   # QEMU runs in a temporary directory
    firmware = None if firmware is None else Path(firmware).resolve()
    disks = tuple(Path(d).resolve() for d in drives)
    for what, p in (("kernel", kernel), ("initrd", initrd)) + ((("firmware", Path(firmware)),) if firmware else ()) \
            + tuple(("disk image", d) for d in disks):
        if not p.is_file():
            raise BootError(f"the {what} {p} for the smoke boot is not a file; build the bundle first.")
    if method is None:
        method = boot_method(firmware)
    elif method not in BOOT_METHODS or (method == "direct") != (firmware is None):
        raise BootError(f"boot method {method!r} does not fit firmware {firmware}; use 'direct' without firmware "
                        f"and 'ovmf-prefix' or 'ovmf-suffix' with an OVMF.")
    cmd = qemu_command(kernel, initrd, cmdline, firmware=None if firmware is None else Path(firmware),
                       memory_mib=memory_mib, qemu=qemu, drives=disks, nic=nic)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": "/nonexistent"}
    with tempfile.TemporaryDirectory(prefix="blindbox-boot-") as tmp:
        log_path = Path(tmp) / "console.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=tmp, start_new_session=True)
        guest = RunningGuest(proc, log_path, method, cmd)
        try:
            yield guest
        finally:
            guest.kill()


def smoke_boot(kernel: str | Path, initrd: str | Path, cmdline: bytes, *, firmware: str | Path | None,
               timeout: float = DEFAULT_TIMEOUT, memory_mib: int = 512, method: str | None = None,
               drives: Sequence[str | Path] = (), nic: str | None = None) -> BootResult:
    """Boot under TCG until the guest powers off; parse its marker lines.

    ``firmware``: None for QEMU's direct kernel boot, or a generic OVMF image (a single
    ``OVMF.fd`` with code and variables, given to ``-bios``).  ``cmdline``: the ``-append``
    bytes, without the NUL QEMU adds.  ``method``: see :func:`boot_method` (which is
    used when None).  ``drives``: raw disk images attached read-only (:func:`qemu_command`).
    ``nic``: a ``-nic`` value (:func:`nic_argument`), or None for no network.
    Raises :class:`BootError` when QEMU is missing or
    fails, or the guest never reached its init; :class:`BootTimeout` after ``timeout``
    seconds.  The console log is kept in the result and in every error.
    """
    with running_guest(kernel, initrd, cmdline, firmware=firmware, memory_mib=memory_mib, method=method,
                       drives=drives, nic=nic) as guest:
        return guest.finish(timeout)


def _tail(console: str, lines: int = 8) -> str:
    text = [ln for ln in console.replace("\r", "").split("\n") if ln.strip()]
    return " | ".join(text[-lines:]) or "(no output)"
