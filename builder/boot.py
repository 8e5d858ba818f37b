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

import lzma
import os
import re
import uuid
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import BuildError, ToolMissing
from builder.limits import MAX_FIRMWARE_VOLUME_BYTES
from builder.steps import init as markers
from measure import layout
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
@dataclass(frozen=True)
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


def qemu_command(kernel: Path, initrd: Path, cmdline: bytes, *, firmware: Path | None, memory_mib: int = 512,
                 qemu: str = QEMU, drives: Sequence[Path] = ()) -> list[str]:
    """The QEMU argv of a smoke boot (software emulation, serial console on stdout).

    ``drives``: raw disk images attached read-only as virtio-blk, in order (the guest sees
    ``/dev/vda``, ``/dev/vdb``, ...).
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
    return cmd


def smoke_boot(kernel: str | Path, initrd: str | Path, cmdline: bytes, *, firmware: str | Path | None,
               timeout: float = DEFAULT_TIMEOUT, memory_mib: int = 512, method: str | None = None,
               drives: Sequence[str | Path] = ()) -> BootResult:
    """Boot under TCG until the guest powers off; parse its marker lines.

    ``firmware``: None for QEMU's direct kernel boot, or a generic OVMF image (a single
    ``OVMF.fd`` with code and variables, given to ``-bios``).  ``cmdline``: the ``-append``
    bytes, without the NUL QEMU adds.  ``method``: see :func:`boot_method` (which is
    used when None).  ``drives``: raw disk images attached read-only (:func:`qemu_command`).
    Raises :class:`BootError` when QEMU is missing or
    fails, or the guest never reached its init; :class:`BootTimeout` after ``timeout``
    seconds.  The console log is kept in the result and in every error.
    """
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise ToolMissing(QEMU, QEMU_PACKAGE)
    kernel, initrd = Path(kernel), Path(initrd)
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
                       memory_mib=memory_mib, qemu=qemu, drives=disks)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": "/nonexistent"}
    with tempfile.TemporaryDirectory(prefix="blindbox-boot-") as tmp:
        log_path = Path(tmp) / "console.log"
        start = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=tmp, start_new_session=True)
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                console = log_path.read_bytes().decode("utf-8", "replace")
                raise BootTimeout(f"the {method} smoke boot did not power off within {timeout:.0f} s; the console "
                                  f"ended with: {_tail(console)}", console=console, command=cmd) from None
        seconds = time.monotonic() - start
        console = log_path.read_bytes().decode("utf-8", "replace")
    result = BootResult(method, tuple(cmd), returncode, seconds, console, parse_markers(console))
    if returncode != 0:
        raise BootError(f"QEMU exited with status {returncode} in the {method} smoke boot: {_tail(console)}",
                        console=console, command=cmd)
    if not result.booted:
        raise BootError(f"the guest did not reach its init in the {method} smoke boot (no {markers.MARKER_BOOT} "
                        f"line); the console ended with: {_tail(console)}", console=console, command=cmd)
    return result


def _tail(console: str, lines: int = 8) -> str:
    text = [ln for ln in console.replace("\r", "").split("\n") if ln.strip()]
    return " | ".join(text[-lines:]) or "(no output)"
