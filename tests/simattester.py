"""A simulated AMD secure processor for tests: signed SEV-SNP reports without SEV-SNP hardware.

Test-only.  It plays the part the PSP plays for a real guest: given the firmware, kernel,
initrd and command line a test passed to QEMU, it computes MEASUREMENT with
**sev-snp-measure** (the oracle, tests/measure/oracle.py; never blindbox's calculator, so a
calculator bug cannot hide itself) and signs ATTESTATION_REPORTs with a test VCEK chained to a
test ASK and ARK (RSASSA-PSS, like AMD's; tests/audit/testchain.py makes them).

It can never be mistaken for hardware: CHIP_ID starts with :data:`CHIP_ID_MARKER`, every
certificate name says "blindbox simulated ... - not AMD", and its ARK is a key of its own, so
a verifier accepts its reports only when told to trust that root (``--trust-root``).

Keys and certificates live in a chain directory, made once (under a lock, atomically) and
reused, so that every process serving the same directory signs with the same chain: QEMU's
``guestfwd=...-cmd:`` starts one simulator process per guest connection.

Wire format (measure.attested_tls.SIM_MAGIC): the request is SIM_MAGIC, 64 bytes of
REPORT_DATA and one byte VMPL (0-3); the answer is SIM_MAGIC, a 4-byte big-endian length and
the report, a 4-byte big-endian length and the certificate table (AMD's GUID table: VCEK, ASK,
ARK, DER).  A malformed request gets no answer; the connection is closed.

Chain directory: ``DIR/<product>/`` (``milan`` or ``genoa``) holds ``ark.pem`` (the root to pass
as ``--trust-root``), ``ask.pem``, ``vcek.der`` and their private keys; ``DIR/.lock`` serializes
their creation.

Command line (run from the repository, or use :func:`simulator_argv`, which works from anywhere)::

    python -m tests.simattester --ovmf F --kernel F --initrd F --append-file F --vcpus N
        --vcpu-type T [--guest-features 0x1] [--policy 0x30000] [--product milan|genoa]
        --chain-dir DIR [--listen HOST:PORT] [--log FILE] [--fault other-chip|expired-vcek]

The command line file holds the kernel command line byte for byte as passed to ``-append``
(no trailing newline, like a bundle's ``cmdline`` file).  Without ``--listen`` it answers one
request on stdin/stdout, for QEMU's ``guestfwd=tcp:10.0.2.100:4050-cmd:...`` (:func:`guestfwd`
writes that item).  QEMU hands such a command one socket as stdin, stdout *and* stderr, so when
stderr is that socket nothing is written to it: diagnostics go to ``--log`` or
``DIR/simattester.log``.  With ``--listen`` it prints ``BLINDBOX-SIM-LISTENING HOST:PORT`` (the
bound port when PORT is 0) on stdout and answers every connection until it is terminated.
``--fault`` makes a simulator whose evidence a verifier must refuse (:data:`FAULTS`).
Exit status: 0 answered, 2 bad input or a refused request, 1 a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import io
import os
import shutil
import shlex
import socketserver
import stat
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from blindbox.audit.report import POLICY_RESERVED_ONE, Product
from measure import layout
from measure.record import record
from measure.attested_tls import REPORT_DATA_SIZE, SIM_MAGIC
from measure.errors import BlindboxError, InputError
from tests.audit.testchain import TestChain, make_chain, make_report
from tests.measure import oracle

#: The first 32 bytes of every simulated CHIP_ID.
CHIP_ID_MARKER = b"BLINDBOX SIMULATED PSP - NOT AMD"
#: The O of every simulated certificate name; each common name says it too.
ORGANIZATION = "blindbox simulated PSP - not AMD"
REQUEST_SIZE = len(SIM_MAGIC) + REPORT_DATA_SIZE + 1
MAX_VMPL = 3
#: Seconds a --listen connection may take to send its request.
REQUEST_TIMEOUT = 10.0
READY = "BLINDBOX-SIM-LISTENING"

#: AMD's certificate-table GUIDs (GHCB specification).  On the wire their sixteen bytes are in the
#: order the text is written (RFC 4122, ``uuid.bytes``), as AMD's sev-guest tools (libuuid's
#: uuid_parse), go-sev-guest and virtee's sev crate write them; not EFI's mixed-endian order.
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")


@layout.struct(size=24, spec="GHCB specification, SNP extended guest request: certificate table entry")
@record
class CertTableEntry(layout.Struct):
    guid: bytes = layout.raw(0x00, 16)     # in the order the GUID's text is written (uuid.bytes)
    offset: int = layout.u32(0x10)         # from the start of the table
    length: int = layout.u32(0x14)


@dataclass(frozen=True)
class _Profile:
    """What a real part of this product reports: the values of the real Milan (version 3) and Genoa
    (version 5) reports in tests/fixtures/vectors/oak (a test compares them)."""

    version: int
    firmware: tuple[int, int, int]          # major, minor, build
    tcb: dict[str, int]
    platform_info: int
    mit_vector: int | None = None           # version 5 only


PROFILES = {
    Product.MILAN: _Profile(version=3, firmware=(1, 55, 29), platform_info=0x25,
                            tcb=dict(boot_loader=4, tee=0, snp=24, microcode=219)),
    Product.GENOA: _Profile(version=5, firmware=(1, 55, 43), platform_info=0x25, mit_vector=0x1,
                            tcb=dict(boot_loader=10, tee=0, snp=25, microcode=84)),
}


@dataclass(frozen=True)
class LaunchInputs:
    """What QEMU hands the PSP at launch, as far as MEASUREMENT depends on it."""

    ovmf: Path
    kernel: Path
    initrd: Path
    append: str
    vcpus: int
    vcpu_type: str
    guest_features: int


class Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


#: Faults a test can ask for, to check that a verifier refuses them (default: none).
FAULTS = {
    "other-chip": "reports are signed by another chip's key; the certificate table still holds this chip's VCEK",
    "expired-vcek": "the certificate table's VCEK (same key, same TCB) was valid only during 2020",
}
EXPIRED = (dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc))


class SimulatorError(InputError):
    """The simulated PSP cannot start with these inputs (exit status 2)."""


def chip_id(product: Product) -> bytes:
    """The simulated chip's 64-byte CHIP_ID: the marker, then 32 bytes naming the product."""
    return CHIP_ID_MARKER + hashlib.sha256(b"blindbox simulated chip " + product.value.encode()).digest()


def _names(product: Product) -> dict[str, str]:
    return {role: f"blindbox simulated {name} - not AMD"
            for role, name in (("ark", f"ARK-{product.value}"), ("ask", f"SEV-{product.value}"),
                               ("vcek", "SEV-VCEK"))}


# ---------------------------------------------------------------------------------------
# the chain directory

def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _new_chain(product: Product) -> tuple[TestChain, rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """A fresh chain for ``product``, with the ARK's and ASK's private keys."""
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    chain = make_chain(product, chip_id=chip_id(product), tcb=PROFILES[product].tcb, names=_names(product),
                       organization=ORGANIZATION,
                       keys={"ark": ark_key, "ask": ask_key, "vcek": ec.generate_private_key(ec.SECP384R1())})
    return chain, ark_key, ask_key


def _write_chain(chain: TestChain, ark_key, ask_key, *, directory: Path) -> None:
    pem, der = serialization.Encoding.PEM, serialization.Encoding.DER
    (directory / "ark.pem").write_bytes(chain.ark.public_bytes(pem))
    (directory / "ask.pem").write_bytes(chain.ask.public_bytes(pem))
    (directory / "vcek.der").write_bytes(chain.vcek.public_bytes(der))
    (directory / "ark.key.pem").write_bytes(_pem_key(ark_key))
    (directory / "ask.key.pem").write_bytes(_pem_key(ask_key))
    (directory / "vcek.key.pem").write_bytes(_pem_key(chain.vcek_key))


def _read_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise SimulatorError(f"the simulated chain's key {path} is missing or corrupt ({e}); delete "
                             f"{path.parent} and start the simulator again.") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SimulatorError(f"{path} is not an RSA key; delete {path.parent} and start the simulator again.")
    return key


def _read_chain(directory: Path, product: Product) -> TestChain:
    try:
        ark = x509.load_pem_x509_certificate((directory / "ark.pem").read_bytes())
        ask = x509.load_pem_x509_certificate((directory / "ask.pem").read_bytes())
        vcek = x509.load_der_x509_certificate((directory / "vcek.der").read_bytes())
        key = serialization.load_pem_private_key((directory / "vcek.key.pem").read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise SimulatorError(f"the simulated chain in {directory} is incomplete or corrupt ({e}); delete that "
                             f"directory and start the simulator again.") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != vcek.public_key():
        raise SimulatorError(f"the VCEK key in {directory} does not belong to its vcek.der; delete that directory "
                             f"and start the simulator again.")
    return TestChain(ark, ask, vcek, key, product)


def load_or_create_chain(chain_dir: Path, product: Product) -> TestChain:
    """The chain for ``product`` in ``chain_dir``: made once, atomically, under a lock; then reused."""
    chain_dir = Path(chain_dir)
    try:
        chain_dir.mkdir(parents=True, exist_ok=True)
        final = chain_dir / product.value.lower()
        with open(chain_dir / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not final.is_dir():
                tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=chain_dir))
                try:
                    _write_chain(*_new_chain(product), directory=tmp)
                    os.rename(tmp, final)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            return _read_chain(final, product)
    except OSError as e:
        raise SimulatorError(f"cannot use the chain directory {chain_dir} ({e.strerror or e}); give a writable "
                             f"--chain-dir.") from None


# ---------------------------------------------------------------------------------------
# the simulated PSP


def _path(value, what: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise SimulatorError(f"the {what} {str(path)!r} is not a readable file; give the file the test passes "
                             f"to QEMU.")
    return path


class SimulatedPsp:
    """The PSP of one simulated guest launch: its MEASUREMENT, and reports signed by a test VCEK."""

    def __init__(self, *, ovmf, kernel, initrd, append: str, vcpus: int, vcpu_type: str,
                 guest_features: int = 1, policy: int = 0x30000, chain_dir: Path | None = None,
                 product: Product = Product.MILAN, fault: str | None = None):
        if product not in PROFILES:
            raise SimulatorError(f"the simulated PSP cannot be a {product.value}: its CHIP_ID has only 8 bytes, too "
                                 f"few to say it is simulated; use {' or '.join(p.value for p in PROFILES)}.")
        if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= 512:
            raise SimulatorError(f"the vCPU count {vcpus!r} is not a number from 1 to 512.")
        if vcpu_type not in oracle.CPU_SIGS:
            raise SimulatorError(f"sev-snp-measure knows no vCPU type {vcpu_type!r}; use one of "
                                 f"{', '.join(oracle.CPU_SIGS)}.")
        if not 0 <= policy < 1 << 64 or not policy & POLICY_RESERVED_ONE:
            raise SimulatorError(f"the guest policy {policy:#x} is not a 64-bit value with bit 17 (reserved, "
                                 f"must be one) set; e.g. 0x30000.")
        if not 0 <= guest_features < 1 << 64:
            raise SimulatorError(f"the guest features {guest_features:#x} are not a 64-bit value.")
        if fault is not None and fault not in FAULTS:
            raise SimulatorError(f"there is no simulated fault {fault!r}; use one of {', '.join(FAULTS)}.")
        self.product = product
        self.policy = policy
        self.profile = PROFILES[product]
        self.inputs = LaunchInputs(ovmf=_path(ovmf, "firmware"), kernel=_path(kernel, "kernel"),
                                   initrd=_path(initrd, "initrd"), append=append, vcpus=vcpus,
                                   vcpu_type=vcpu_type, guest_features=guest_features)
        self.measurement: bytes = _oracle_measurement(self.inputs)
        if chain_dir is None:
            self.chain, _, ask_key = _new_chain(product)
        else:
            self.chain = load_or_create_chain(chain_dir, product)
            if fault == "expired-vcek":
                ask_key = _read_key(Path(chain_dir) / product.value.lower() / "ask.key.pem")
        self.chip_id = chip_id(product)
        self.fault = fault
        if fault == "expired-vcek":
            expired = make_chain(product, chip_id=self.chip_id, tcb=PROFILES[product].tcb, names=_names(product),
                                 organization=ORGANIZATION, vcek_validity=EXPIRED,
                                 keys={"ark": ask_key, "ask": ask_key, "vcek": self.chain.vcek_key})
            self.chain = replace(self.chain, vcek=expired.vcek)
        self._signer = self.chain
        if fault == "other-chip":
            self._signer = replace(self.chain, vcek_key=ec.generate_private_key(ec.SECP384R1()))

    def report(self, report_data: bytes, vmpl: int = 0) -> bytes:
        """A signed ATTESTATION_REPORT (1184 bytes) carrying ``report_data``, requested at ``vmpl``."""
        if len(report_data) != REPORT_DATA_SIZE:
            raise SimulatorError(f"REPORT_DATA is {REPORT_DATA_SIZE} bytes, not {len(report_data)}.")
        if isinstance(vmpl, bool) or not isinstance(vmpl, int) or not 0 <= vmpl <= MAX_VMPL:
            raise SimulatorError(f"VMPL {vmpl!r} is not 0 to {MAX_VMPL}.")
        p = self.profile
        major, minor, build = p.firmware
        fields = dict(report_data=bytes(report_data), vmpl=vmpl, platform_info=p.platform_info,
                      report_id=hashlib.sha256(b"blindbox simulated report id" + self.chip_id
                                               + self.measurement).digest(),
                      report_id_ma=b"\xff" * 32,   # no migration agent
                      current_major=major, current_minor=minor, current_build=build,
                      committed_major=major, committed_minor=minor, committed_build=build)
        if p.mit_vector is not None:
            fields.update(launch_mit_vector=p.mit_vector, current_mit_vector=p.mit_vector)
        return make_report(self._signer, measurement=self.measurement, policy=self.policy, chip_id=self.chip_id,
                           version=p.version, **fields)

    def certificates_der(self) -> tuple[bytes, bytes, bytes]:
        """(VCEK, ASK, ARK) as DER."""
        der = serialization.Encoding.DER
        return (self.chain.vcek.public_bytes(der), self.chain.ask.public_bytes(der),
                self.chain.ark.public_bytes(der))

    def cert_table(self) -> bytes:
        """AMD's certificate table: VCEK, ASK, ARK (DER), ended by an all-zero entry."""
        return encode_cert_table(zip((GUID_VCEK, GUID_ASK, GUID_ARK), self.certificates_der(), strict=True))

    def trust_root_pem(self) -> bytes:
        """The simulated ARK, for ``--trust-root``."""
        return self.chain.ark.public_bytes(serialization.Encoding.PEM)


def encode_cert_table(entries) -> bytes:
    """A GUID table for ``(uuid, DER)`` pairs: entries, the all-zero entry, then the certificates
    (offsets from the start of the table, GUIDs in RFC 4122 byte order)."""
    entries = list(entries)
    offset = (len(entries) + 1) * CertTableEntry.SIZE
    head, body = b"", b""
    for guid, der in entries:
        head += CertTableEntry(guid=guid.bytes, offset=offset + len(body), length=len(der)).to_bytes()
        body += der
    return head + CertTableEntry(guid=bytes(16), offset=0, length=0).to_bytes() + body


def _oracle_measurement(launch: LaunchInputs) -> bytes:
    """MEASUREMENT as sev-snp-measure computes it (its output never reaches stdout)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            digest = oracle.oracle_digest("snp", ovmf=launch.ovmf, vcpus=launch.vcpus,
                                          vcpu_sig=oracle.CPU_SIGS[launch.vcpu_type], kernel=launch.kernel,
                                          initrd=launch.initrd, append=launch.append,
                                          guest_features=launch.guest_features)
    except Exception as e:  # noqa: BLE001 - the oracle raises whatever its parsers raise
        raise SimulatorError(f"sev-snp-measure cannot measure these inputs ({type(e).__name__}: {e}); give the "
                             f"bundle's OVMF.amdsev.fd, kernel, initrd and command line.") from None
    if not isinstance(digest, bytes) or len(digest) != 48:
        raise SimulatorError("sev-snp-measure returned no 48-byte launch digest.")
    return digest


# ---------------------------------------------------------------------------------------
# the wire format


def encode_request(report_data: bytes, vmpl: int = 0) -> bytes:
    return SIM_MAGIC + bytes(report_data) + bytes([vmpl])


def encode_answer(report: bytes, cert_table: bytes) -> bytes:
    return SIM_MAGIC + len(report).to_bytes(4, "big") + report + len(cert_table).to_bytes(4, "big") + cert_table


def _read_exactly(rfile: Reader, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = rfile.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def parse_request(data: bytes) -> tuple[bytes, int]:
    """(REPORT_DATA, VMPL) of a request; a malformed one raises :class:`SimulatorError`."""
    if len(data) != REQUEST_SIZE:
        raise SimulatorError(f"the request is {len(data)} bytes, not {REQUEST_SIZE}.")
    if not data.startswith(SIM_MAGIC):
        raise SimulatorError(f"the request does not start with {SIM_MAGIC[:-1].decode()} (got {data[:24]!r}).")
    vmpl = data[-1]
    if vmpl > MAX_VMPL:
        raise SimulatorError(f"the request asks for VMPL {vmpl}; VMPLs are 0 to {MAX_VMPL}.")
    return data[len(SIM_MAGIC):-1], vmpl


def serve_one(psp: SimulatedPsp, rfile: Reader, wfile: Writer, *,
              on_error: Callable[[str], None] | None = None) -> None:
    """Answer one request read from ``rfile`` on ``wfile``.

    Reads at most :data:`REQUEST_SIZE` bytes.  A malformed or short request gets no answer:
    ``on_error`` (if given) receives one sentence, and the caller closes the connection.
    """
    try:
        report_data, vmpl = parse_request(_read_exactly(rfile, REQUEST_SIZE))
    except SimulatorError as e:
        if on_error is not None:
            on_error(f"refused a request: {e}")
        return
    except OSError as e:  # a reset or timed-out connection
        if on_error is not None:
            on_error(f"the connection failed before a whole request arrived ({e.strerror or e}).")
        return
    try:
        wfile.write(encode_answer(psp.report(report_data, vmpl), psp.cert_table()))
        wfile.flush()
    except OSError as e:  # the peer went away
        if on_error is not None:
            on_error(f"the connection failed while the answer was written ({e.strerror or e}).")


# ---------------------------------------------------------------------------------------
# command line


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message}; see --help.")


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (decimal or 0x hex)") from None


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:4050")
    return host.strip("[]"), int(port)


def _product(text: str) -> Product:
    try:
        return Product.parse(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e).rstrip(".")) from None


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m tests.simattester",
                description="Simulated AMD secure processor for tests (NOT AMD): signs SEV-SNP reports with a "
                            "test chain, MEASUREMENT computed by sev-snp-measure.")
    p.add_argument("--ovmf", required=True, type=Path, help="the firmware QEMU loads (OVMF.amdsev.fd)")
    p.add_argument("--kernel", required=True, type=Path)
    p.add_argument("--initrd", required=True, type=Path)
    p.add_argument("--append-file", required=True, type=Path,
                   help="a file holding the kernel command line, byte for byte as passed to -append")
    p.add_argument("--vcpus", required=True, type=_int)
    p.add_argument("--vcpu-type", required=True)
    p.add_argument("--guest-features", type=_int, default=0x1)
    p.add_argument("--policy", type=_int, default=0x30000)
    p.add_argument("--product", type=_product, default=Product.MILAN, help="milan (default) or genoa")
    p.add_argument("--chain-dir", required=True, type=Path,
                   help="where the simulated keys and certificates are made once and reused")
    p.add_argument("--listen", type=_hostport, metavar="HOST:PORT",
                   help="serve connections on HOST:PORT (default: one request on stdin/stdout)")
    p.add_argument("--fault", choices=sorted(FAULTS),
                   help="for negative tests: " + "; ".join(f"{k}: {v}" for k, v in FAULTS.items()))
    p.add_argument("--fault-file", type=Path, metavar="FILE",
                   help="read per request: empty or missing = no fault; a fault name; or policy=0x... (the "
                        "simulated launch's guest policy, e.g. with DEBUG set) -- lets one guest boot serve "
                        "several negative tests, since QEMU starts one simulator per connection")
    p.add_argument("--log", type=Path, metavar="FILE",
                   help="also append diagnostics to FILE (when stderr is the connection, as under QEMU's "
                        "guestfwd cmd:, they go only there, by default to CHAIN_DIR/simattester.log)")
    return p


def _append(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise SimulatorError(f"cannot read the command line file {str(path)!r} ({e.strerror or e}).") from None
    except UnicodeDecodeError:
        raise SimulatorError(f"the command line file {str(path)!r} is not UTF-8.") from None


class _Diagnostics:
    """One line per message on stderr, and appended to ``file`` when one is set."""

    def __init__(self) -> None:
        self.file: Path | None = None

    def __call__(self, message: str) -> None:
        line = f"simattester[{os.getpid()}]: {message}\n"
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(line)
            sys.stderr.flush()
        if self.file is not None:
            with contextlib.suppress(OSError):
                with open(self.file, "a", encoding="utf-8") as f:
                    f.write(line)


def _stderr_is_the_connection() -> bool:
    """True under QEMU's guestfwd ``cmd:``, which gives the command one socket as its stdin, stdout
    and stderr: anything written to stderr would reach the guest as part of the answer."""
    try:
        out, err = os.fstat(1), os.fstat(2)
    except OSError:
        return False
    return stat.S_ISSOCK(err.st_mode) and (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)


def _silence_stderr() -> None:
    """Point file descriptor 2 at /dev/null (warnings, stray output: nothing may reach the guest)."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)


_log = _Diagnostics()


def _serve_forever(psp: SimulatedPsp, host: str, port: int) -> None:
    class Handler(socketserver.StreamRequestHandler):
        timeout = REQUEST_TIMEOUT

        def handle(self) -> None:
            serve_one(psp, self.rfile, self.wfile, on_error=_log)

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

        def handle_error(self, request, client_address) -> None:
            _log(f"internal error (a bug in tests/simattester.py) serving {client_address}: {sys.exc_info()[1]!r}")

    try:
        server = Server((host, port), Handler)
    except OSError as e:
        raise SimulatorError(f"cannot listen on {host}:{port} ({e.strerror or e}); give a free local port.") \
            from None
    with server:
        bound_host, bound_port = server.socket.getsockname()[:2]
        sys.stdout.write(f"{READY} {bound_host}:{bound_port}\n")
        sys.stdout.flush()
        server.serve_forever()


ROOT = Path(__file__).resolve().parents[1]


def simulator_argv(*, ovmf, kernel, initrd, append_file, vcpus: int, vcpu_type: str, chain_dir,
                   guest_features: int = 0x1, policy: int = 0x30000, product: Product = Product.MILAN,
                   listen: str | None = None, log=None, fault: str | None = None,
                   python: str = sys.executable) -> list[str]:
    """The command that runs the simulator from any directory (``env PYTHONPATH=<repository>``)."""
    argv = ["env", f"PYTHONPATH={ROOT}", python, "-m", "tests.simattester",
            "--ovmf", str(Path(ovmf).resolve()), "--kernel", str(Path(kernel).resolve()),
            "--initrd", str(Path(initrd).resolve()), "--append-file", str(Path(append_file).resolve()),
            "--vcpus", str(vcpus), "--vcpu-type", vcpu_type, "--guest-features", f"{guest_features:#x}",
            "--policy", f"{policy:#x}", "--product", product.value, "--chain-dir", str(Path(chain_dir).resolve())]
    if listen is not None:
        argv += ["--listen", listen]
    if log is not None:
        argv += ["--log", str(Path(log).resolve())]
    if fault is not None:
        argv += ["--fault", fault]
    return argv


@contextlib.contextmanager
def listening(argv: Sequence[str], cwd: Path = ROOT) -> Iterator[int]:
    """Run the simulator command ``argv`` (with ``--listen HOST:0``) until the block ends; yields its port."""
    import subprocess

    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith(READY + " 127.0.0.1:"), line or proc.stderr.read()
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def guestfwd(argv: Sequence[str], address: str = "10.0.2.100", port: int = 4050) -> str:
    """A ``guestfwd=`` item for QEMU's ``-nic user,...`` / ``-netdev user,...`` value: a guest connection
    to ADDRESS:PORT starts ``argv`` with the connection as its stdin, stdout and stderr.

    libslirp splits the command with g_shell_parse_argv (no shell runs); QEMU's option parser
    needs each comma doubled.
    """
    return f"guestfwd=tcp:{address}:{port}-cmd:" + shlex.join(argv).replace(",", ",,")


def main(argv: Sequence[str] | None = None) -> int:
    connection_is_stderr = _stderr_is_the_connection()
    if connection_is_stderr:
        _silence_stderr()
    _log.file = None
    try:
        args = _parser().parse_args(argv)
    except _UsageError as e:
        _log(str(e))
        return 2
    if args.log is not None:
        _log.file = args.log
    elif connection_is_stderr:
        _log.file = args.chain_dir / "simattester.log"
    try:
        fault, policy = args.fault, args.policy
        if args.fault_file is not None and args.fault_file.is_file():
            said = args.fault_file.read_text().strip()
            if said.startswith("policy="):
                try:
                    policy = _int(said[len("policy="):])
                except argparse.ArgumentTypeError as e:
                    raise SimulatorError(f"{args.fault_file}: {e}.") from None
            elif said:
                fault = said
        psp = SimulatedPsp(ovmf=args.ovmf, kernel=args.kernel, initrd=args.initrd, append=_append(args.append_file),
                           vcpus=args.vcpus, vcpu_type=args.vcpu_type, guest_features=args.guest_features,
                           policy=policy, chain_dir=args.chain_dir, product=args.product, fault=fault)
        if args.listen is not None:
            _serve_forever(psp, *args.listen)
            return 0
        failed: list[str] = []

        def refuse(message: str) -> None:
            failed.append(message)
            _log(message)

        serve_one(psp, sys.stdin.buffer, sys.stdout.buffer, on_error=refuse)
        return 2 if failed else 0
    except BlindboxError as e:
        _log(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns bugs into exit 1
        _log(f"internal error (a bug in tests/simattester.py): {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
