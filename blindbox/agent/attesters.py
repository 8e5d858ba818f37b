"""Getting an SEV-SNP attestation report inside the guest, the way real guests do.

Three attesters, one interface (:class:`Attester`: REPORT_DATA and VMPL in, the report and
the host's certificate table out):

- :class:`ConfigfsTsm`: the kernel's configfs-tsm report interface (Linux 6.7 and later),
  ``/sys/kernel/config/tsm/report/<name>/{provider,privlevel,inblob,outblob,auxblob,generation}``.
- :class:`SevGuestDevice`: the ``/dev/sev-guest`` ioctl ``SNP_GET_EXT_REPORT`` of the kernel's
  uapi header ``linux/sev-guest.h``; its structures are declared below with :mod:`measure.layout`
  and tested against that header's ``sizeof``/``offsetof`` compiled with gcc.
- :class:`Simulated`: a TCP client of the simulated attester (tests only; the wire format is
  :data:`measure.attested_tls.SIM_MAGIC`'s).

**Neither hardware path has run on SEV-SNP hardware.**  They are written from the kernel's
uapi header and Documentation/ABI/testing/configfs-tsm-report; the tests check their structures,
ioctl numbers, argument packing, the certificate-buffer retry and the configfs logic against
a stand-in directory, and their refusal when the device is missing or is not the device.

Part of the attestation agent: it may import only the standard library and :mod:`measure`,
never ``cryptography``, :mod:`builder` or another part of :mod:`blindbox` (docs/architecture.md).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from measure import layout
from measure.record import record
from measure.attested_tls import REPORT_DATA_SIZE, SIM_MAGIC
from measure.errors import InputError, LayoutError

#: The size of an ATTESTATION_REPORT (SEV-SNP Firmware ABI, versions 2, 3 and 5).
REPORT_SIZE = 0x4A0
#: Where REPORT_DATA sits in an ATTESTATION_REPORT (SEV-SNP Firmware ABI, Table "ATTESTATION_REPORT").
REPORT_DATA_OFFSET = 0x50
PAGE_SIZE = 4096
#: The largest certificate table accepted from the host (AMD's VCEK, ASK and ARK take about 5 KiB);
#: base64 in the evidence, it stays within measure.attested_tls.MAX_EVIDENCE_BYTES.
MAX_CERTS_BYTES = 8 * PAGE_SIZE
#: The first certificate buffer offered to SNP_GET_EXT_REPORT (grown once if the host asks for more):
#: SEV_FW_BLOB_MAX_SIZE of include/linux/psp-sev.h, the most the kernel accepts today.
FIRST_CERTS_PAGES = 4

CONFIGFS_TSM = Path("/sys/kernel/config/tsm/report")
SEV_GUEST = Path("/dev/sev-guest")


class AttesterError(InputError):
    """A report could not be obtained (a missing device, a refusal by the firmware or the host)."""


class AttesterUnavailable(AttesterError):
    """No way to obtain reports exists in this guest."""


@dataclass(frozen=True)
class Report:
    """What an attester returns: the ATTESTATION_REPORT and the host's certificate table (maybe empty)."""

    report: bytes
    certs: bytes


class Attester(Protocol):
    #: one of measure.attested_tls.ATTESTERS
    name: str

    def get_report(self, report_data: bytes, vmpl: int = 0) -> Report: ...


def _check_request(report_data: bytes, vmpl: int) -> None:
    if len(report_data) != REPORT_DATA_SIZE:
        raise AttesterError(f"REPORT_DATA is {REPORT_DATA_SIZE} bytes, not {len(report_data)}.")
    if not 0 <= vmpl <= 3:
        raise AttesterError(f"the VMPL of a report request is 0 to 3, not {vmpl}.")


def _check_report(report: bytes, report_data: bytes, source: str) -> bytes:
    if len(report) != REPORT_SIZE:
        raise AttesterError(f"{source} returned a report of {len(report)} bytes, not the {REPORT_SIZE} of an "
                            f"SEV-SNP ATTESTATION_REPORT.")
    if report[REPORT_DATA_OFFSET:REPORT_DATA_OFFSET + REPORT_DATA_SIZE] != report_data:
        raise AttesterError(f"{source} returned a report whose REPORT_DATA is not the one requested.")
    return report


# ---------------------------------------------------------------------------------------
# /dev/sev-guest (linux/sev-guest.h)

@layout.struct(size=96, spec="Linux uapi linux/sev-guest.h, struct snp_report_req")
@record
class SnpReportReq(layout.Struct):
    user_data: bytes = layout.raw(0, 64)
    vmpl: int = layout.u32(64)
    # rsvd[28] at 68: reserved, zero


@layout.struct(size=4000, spec="Linux uapi linux/sev-guest.h, struct snp_report_resp")
@record
class SnpReportResp(layout.Struct):
    data: bytes = layout.raw(0, 4000)


@layout.struct(size=32, spec="Linux uapi linux/sev-guest.h, struct snp_guest_request_ioctl")
@record
class SnpGuestRequestIoctl(layout.Struct):
    """``exitinfo2`` is a union with ``{u32 fw_error; u32 vmm_error}``: see the two properties."""

    msg_version: int = layout.u8(0)
    # 7 bytes of alignment padding
    req_data: int = layout.u64(8)
    resp_data: int = layout.u64(16)
    exitinfo2: int = layout.u64(24)

    #: offsets of the union's other members (checked against the header by the tests)
    FW_ERROR_OFFSET = 24
    VMM_ERROR_OFFSET = 28

    @property
    def fw_error(self) -> int:
        """The firmware's status (bits 31:0 of exitinfo2, psp-sev.h codes)."""
        return self.exitinfo2 & 0xFFFF_FFFF

    @property
    def vmm_error(self) -> int:
        """The hypervisor's status (bits 63:32 of exitinfo2)."""
        return self.exitinfo2 >> 32


@layout.struct(size=112, spec="Linux uapi linux/sev-guest.h, struct snp_ext_report_req")
@record
class SnpExtReportReq(layout.Struct):
    data: SnpReportReq = layout.nested(0, SnpReportReq)
    certs_address: int = layout.u64(96)
    certs_len: int = layout.u32(104)
    # 4 bytes of tail padding


@layout.struct(size=0x20 + REPORT_SIZE, spec="SEV-SNP Firmware ABI, MSG_REPORT_RSP")
@record
class MsgReportRsp(layout.Struct):
    status: int = layout.u32(0x0)
    report_size: int = layout.u32(0x4)
    # reserved[24] at 0x8
    report: bytes = layout.raw(0x20, REPORT_SIZE)


def _iowr(kind: str, nr: int, size: int) -> int:
    """Linux's _IOWR(type, nr, size) on x86: dir (read|write = 3) << 30 | size << 16 | type << 8 | nr."""
    return (3 << 30) | (size << 16) | (ord(kind) << 8) | nr


SNP_GUEST_REQ_IOC_TYPE = "S"
SNP_GET_REPORT = _iowr(SNP_GUEST_REQ_IOC_TYPE, 0x0, SnpGuestRequestIoctl.SIZE)
SNP_GET_EXT_REPORT = _iowr(SNP_GUEST_REQ_IOC_TYPE, 0x2, SnpGuestRequestIoctl.SIZE)
#: exitinfo2's VMM error codes (linux/sev-guest.h)
SNP_GUEST_VMM_ERR_INVALID_LEN = 1
SNP_GUEST_VMM_ERR_BUSY = 2
#: the message version the kernel requires to be non-zero
MSG_VERSION = 1


def certificate_table_extent(table: bytes) -> int:
    """How many bytes of a certificate buffer the GUID table and its certificates use (0 if none).

    Entries are {GUID 16 bytes, offset u32, length u32} up to an all-zero entry; offsets count
    from the table's start.  The host's buffer is whole pages; the rest is padding.
    """
    end = 0
    for pos in range(0, len(table) - _CertEntry.SIZE + 1, _CertEntry.SIZE):
        entry = _CertEntry.from_bytes(table[pos:pos + _CertEntry.SIZE])
        if entry.guid == bytes(16) and entry.offset == 0 and entry.length == 0:
            return 0 if pos == 0 else min(len(table), max(end, pos + _CertEntry.SIZE))
        end = max(end, entry.offset + entry.length)
    return len(table)              # no terminator: keep everything, the client's reader decides


@layout.struct(size=24, spec="GHCB specification, SNP Extended Guest Request certificate table entry")
@record
class _CertEntry(layout.Struct):
    guid: bytes = layout.raw(0, 16)
    offset: int = layout.u32(16)
    length: int = layout.u32(20)


class SevGuestDevice:
    """``SNP_GET_EXT_REPORT`` on ``/dev/sev-guest``.  Not yet run on SEV-SNP hardware.

    The certificate buffer starts at :data:`FIRST_CERTS_PAGES` pages; when the host needs more
    (exitinfo2's VMM error 1, SNP_GUEST_VMM_ERR_INVALID_LEN) the kernel writes the needed size
    into ``certs_len`` and the request is repeated once with that many pages (a kernel whose
    SEV_FW_BLOB_MAX_SIZE is smaller refuses that with EINVAL, reported as one sentence).  A busy
    host (VMM error 2) is asked again a few times.
    """

    name = "sev-guest"

    def __init__(self, path: Path = SEV_GUEST, *, busy_retries: int = 5, busy_wait: float = 0.2) -> None:
        self.path = path
        self.busy_retries = busy_retries
        self.busy_wait = busy_wait
        self._lock = threading.Lock()

    def get_report(self, report_data: bytes, vmpl: int = 0) -> Report:
        _check_request(report_data, vmpl)
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                raise AttesterUnavailable(f"{self.path} does not exist (is this an SEV-SNP guest with the "
                                          f"sev-guest module loaded?).") from None
            except OSError as e:
                raise AttesterError(f"cannot open {self.path}: {e.strerror} (the agent needs read and write "
                                    f"access to the SEV-SNP guest device).") from None
            try:
                return self._ext_report(fd, report_data, vmpl)
            finally:
                os.close(fd)

    def _ext_report(self, fd: int, report_data: bytes, vmpl: int) -> Report:
        pages = FIRST_CERTS_PAGES
        grown = False
        busy = 0
        while True:
            certs = ctypes.create_string_buffer(pages * PAGE_SIZE)
            req = ctypes.create_string_buffer(SnpExtReportReq(
                data=SnpReportReq(user_data=report_data, vmpl=vmpl),
                certs_address=ctypes.addressof(certs), certs_len=pages * PAGE_SIZE).to_bytes())
            resp = ctypes.create_string_buffer(SnpReportResp.SIZE)
            arg = ctypes.create_string_buffer(SnpGuestRequestIoctl(
                msg_version=MSG_VERSION, req_data=ctypes.addressof(req), resp_data=ctypes.addressof(resp)).to_bytes())
            error: OSError | None = None
            try:
                fcntl.ioctl(fd, SNP_GET_EXT_REPORT, arg, True)
            except OSError as e:
                error = e
            result = SnpGuestRequestIoctl.from_bytes(arg.raw[:SnpGuestRequestIoctl.SIZE],
                                                     what="snp_guest_request_ioctl")
            if error is not None:
                if error.errno == errno.ENOTTY:
                    raise AttesterError(f"{self.path} is not the SEV-SNP guest device (the SNP_GET_EXT_REPORT "
                                        f"ioctl is not supported there: {error.strerror}).")
                if result.vmm_error == SNP_GUEST_VMM_ERR_INVALID_LEN and not grown:
                    needed = SnpExtReportReq.from_bytes(req.raw[:SnpExtReportReq.SIZE]).certs_len
                    if needed > MAX_CERTS_BYTES:
                        raise AttesterError(f"the host's certificate table needs {needed} bytes, more than the "
                                            f"{MAX_CERTS_BYTES} the agent accepts.")
                    pages = max(1, -(-needed // PAGE_SIZE))
                    grown = True
                    continue
                if result.vmm_error == SNP_GUEST_VMM_ERR_BUSY and busy < self.busy_retries:
                    busy += 1
                    time.sleep(self.busy_wait)
                    continue
                raise AttesterError(f"SNP_GET_EXT_REPORT on {self.path} failed: {error.strerror} (firmware error "
                                    f"{result.fw_error:#x}, hypervisor error {result.vmm_error:#x}).")
            return self._parse(resp.raw[:SnpReportResp.SIZE], certs.raw, report_data)

    def _parse(self, resp: bytes, certs: bytes, report_data: bytes) -> Report:
        try:
            rsp = MsgReportRsp.from_bytes(resp[:MsgReportRsp.SIZE], what="MSG_REPORT_RSP")
        except LayoutError as e:
            raise AttesterError(f"the firmware's answer on {self.path} is malformed: {e}") from None
        if rsp.status != 0:
            raise AttesterError(f"the SEV firmware refused the report request with status {rsp.status:#x}.")
        if rsp.report_size != REPORT_SIZE:
            raise AttesterError(f"the SEV firmware's report is {rsp.report_size} bytes, not {REPORT_SIZE}.")
        report = _check_report(rsp.report, report_data, str(self.path))
        return Report(report=report, certs=certs[:certificate_table_extent(certs)])


# ---------------------------------------------------------------------------------------
# configfs-tsm (Documentation/ABI/testing/configfs-tsm-report)

class ConfigfsOps:
    """The file operations configfs-tsm needs; the tests replace them with a stand-in directory."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path, limit: int) -> bytes:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise AttesterError(f"{path} holds more than the {limit} bytes the agent reads.")
        return data

    def write(self, path: Path, data: bytes) -> None:
        with open(path, "wb", buffering=0) as f:
            f.write(data)


class ConfigfsTsm:
    """One report per request through a fresh configfs-tsm entry.  Not yet run on SEV-SNP hardware.

    ``generation`` counts the writes to the entry: read before and after, it must have grown by
    exactly this request's two writes (``privlevel``, ``inblob``), or another writer raced and
    the report may carry its REPORT_DATA; the request is repeated, then refused.
    """

    name = "configfs-tsm"
    PROVIDER = "sev_guest"

    def __init__(self, base: Path = CONFIGFS_TSM, *, ops: ConfigfsOps | None = None, attempts: int = 3) -> None:
        self.base = base
        self.ops = ops or ConfigfsOps()
        self.attempts = attempts
        self._lock = threading.Lock()
        self._counter = 0

    def get_report(self, report_data: bytes, vmpl: int = 0) -> Report:
        _check_request(report_data, vmpl)
        with self._lock:
            for _ in range(self.attempts):
                result = self._once(report_data, vmpl)
                if result is not None:
                    return result
        raise AttesterError(f"another writer changed the configfs-tsm report entry under {self.base} during each "
                            f"of {self.attempts} attempts; no report could be trusted to carry this REPORT_DATA.")

    def _entry(self) -> Path:
        while True:
            self._counter += 1
            entry = self.base / f"blindbox-agent-{os.getpid()}-{self._counter}"
            try:
                self.ops.mkdir(entry)
                return entry
            except FileExistsError:
                continue
            except FileNotFoundError:
                raise AttesterUnavailable(f"{self.base} does not exist (configfs-tsm needs Linux 6.7 or later with "
                                          f"CONFIG_TSM_REPORTS and configfs mounted).") from None
            except OSError as e:
                raise AttesterError(f"cannot create a report entry under {self.base}: {e.strerror}.") from None

    def _generation(self, entry: Path) -> int:
        text = self.ops.read(entry / "generation", 32).decode("ascii", "replace").strip()
        if not text.isdigit():
            raise AttesterError(f"{entry / 'generation'} holds {text[:20]!r}, not a number.")
        return int(text)

    def _once(self, report_data: bytes, vmpl: int) -> Report | None:
        entry = self._entry()
        try:
            provider = self.ops.read(entry / "provider", 64).decode("ascii", "replace").strip()
            if provider != self.PROVIDER:
                raise AttesterUnavailable(f"the configfs-tsm provider is {provider[:32]!r}, not {self.PROVIDER!r}; "
                                          f"this guest is not an SEV-SNP guest.")
            try:
                floor_text = self.ops.read(entry / "privlevel_floor", 32).decode("ascii", "replace").strip()
            except FileNotFoundError:
                floor_text = "0"
            if floor_text.isdigit() and vmpl < int(floor_text):
                raise AttesterError(f"this guest can request reports at VMPL {floor_text} or above (privlevel_floor "
                                    f"of configfs-tsm), not at VMPL {vmpl}.")
            before = self._generation(entry)
            self.ops.write(entry / "privlevel", f"{vmpl}\n".encode())
            self.ops.write(entry / "inblob", report_data)
            report = self.ops.read(entry / "outblob", 4 * PAGE_SIZE)
            try:
                certs = self.ops.read(entry / "auxblob", MAX_CERTS_BYTES)
            except FileNotFoundError:
                certs = b""
            after = self._generation(entry)
        except OSError as e:
            raise AttesterError(f"the configfs-tsm report entry {entry} failed: {e.strerror or e}.") from None
        finally:
            try:
                self.ops.rmdir(entry)
            except OSError:
                pass                   # the entry is the kernel's to reclaim; nothing secret is in it
        if after != before + 2:
            return None
        return Report(report=_check_report(report, report_data, str(entry / "outblob")),
                      certs=certs[:certificate_table_extent(certs)])


# ---------------------------------------------------------------------------------------
# the simulated attester (tests only)

class Simulated:
    """A client of the simulated attester: SIM_MAGIC + REPORT_DATA + VMPL out, report and table back."""

    name = "simulated"
    MAX_REPORT = 4 * PAGE_SIZE

    def __init__(self, host: str, port: int, *, timeout: float = 20.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout

    def get_report(self, report_data: bytes, vmpl: int = 0) -> Report:
        _check_request(report_data, vmpl)
        where = f"the simulated attester at {self.host}:{self.port}"
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as conn:
                conn.sendall(SIM_MAGIC + report_data + bytes([vmpl]))
                deadline = time.monotonic() + self.timeout

                def read(n: int) -> bytes:
                    data = bytearray()
                    while len(data) < n:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise TimeoutError
                        conn.settimeout(remaining)
                        chunk = conn.recv(min(65536, n - len(data)))
                        if not chunk:
                            raise AttesterError(f"{where} closed the connection after {len(data)} of {n} bytes.")
                        data += chunk
                    return bytes(data)

                if read(len(SIM_MAGIC)) != SIM_MAGIC:
                    raise AttesterError(f"{where} does not speak the simulated attester's protocol.")
                size = int.from_bytes(read(4), "big")
                if size > self.MAX_REPORT:
                    raise AttesterError(f"{where} announces a report of {size} bytes.")
                report = read(size)
                size = int.from_bytes(read(4), "big")
                if size > MAX_CERTS_BYTES:
                    raise AttesterError(f"{where} announces a certificate table of {size} bytes, more than the "
                                        f"{MAX_CERTS_BYTES} accepted.")
                certs = read(size)
        except TimeoutError:
            raise AttesterError(f"{where} did not answer within {self.timeout:g} seconds.") from None
        except OSError as e:
            raise AttesterError(f"cannot reach {where}: {e.strerror or e}.") from None
        return Report(report=_check_report(report, report_data, where), certs=certs)


# ---------------------------------------------------------------------------------------

def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{what} {text!r} is not HOST:PORT with a port from 1 to 65535.")
    return host, int(port)


def open_attester(spec: str, *, configfs: Path = CONFIGFS_TSM, device: Path = SEV_GUEST) -> Attester:
    """The attester ``spec`` names: ``auto`` (configfs-tsm, else /dev/sev-guest) or ``simulated:HOST:PORT``."""
    if spec == "auto":
        if configfs.is_dir():
            return ConfigfsTsm(configfs)
        if device.exists():
            return SevGuestDevice(device)
        raise AttesterUnavailable(f"no SEV-SNP attestation device: neither {configfs} nor {device} exists (is this "
                                  f"an SEV-SNP guest with the sev-guest module loaded?).")
    if spec.startswith("simulated:"):
        host, port = _host_port(spec[len("simulated:"):], "the simulated attester's address")
        return Simulated(host, port)
    raise InputError(f"the attester {spec[:60]!r} is neither 'auto' nor 'simulated:HOST:PORT'.")
