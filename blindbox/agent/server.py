"""The attested-TLS server: its key, its TLS 1.3 context, and one thread per connection.

At start, :func:`make_identity` creates a P-256 key and a self-signed certificate with the
given ``openssl`` in the state directory (a tmpfs in the guest; the key file is 0600 and its
bytes are never logged).  For each connection (:meth:`Agent.handle`): TLS 1.3 handshake, the
client's hello and nonce (within :attr:`Agent.hello_timeout`), a report whose REPORT_DATA is
:func:`measure.attested_tls.report_data` of this certificate's SubjectPublicKeyInfo and that
nonce and the runtime policy's digest, the evidence message, the client's certificate message,
and the verdict about the client; then every byte relayed between the client and the
application on loopback until either side closes.  One bad connection never stops the server;
each one is described by exactly one log line.

When the runtime policy lists client keys, each connection gets its own TLS context, set for
TLS 1.3 post-handshake authentication: the client's claimed certificate is refused unless its
key's digest is listed; otherwise that one certificate becomes the only trust anchor of this
connection's context, the agent requests the client's certificate with
``verify_client_post_handshake`` (the client's TLS stack must answer with a certificate that
verifies against that anchor and a CertificateVerify signed by its key), and checks that the
certificate TLS verified is the one claimed.  Python's ``ssl`` has no verification callback,
so this is how a TLS stack that only knows trust stores checks one exact key.  A refused
client never reaches the application.

Part of the attestation agent: it may import only the standard library and :mod:`measure`,
never ``cryptography``, :mod:`builder` or another part of :mod:`blindbox` (docs/architecture.md).
Library code: it reports through the ``log`` callable it is given and never prints.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from measure.attested_tls import (
    DOMAIN,
    PROVE,
    PROVEN,
    ClientVerdict,
    Evidence,
    ProtocolError,
    certificate_spki,
    encode_evidence,
    encode_verdict,
    read_client,
    read_hello,
    report_data,
)
from measure.errors import BlindboxError, InputError
from measure.runtime_policy import RuntimePolicy, parse_canonical, runtime_policy_sha256

from .attesters import Attester

KEY_FILE = "agent-key.pem"
CERT_FILE = "agent-cert.pem"
#: the openssl configuration the certificate is made with: nothing but a distinguished name
OPENSSL_CONFIG = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = blindbox-agent\n"
#: REPORT_DATA of the report requested once at start to show that reports can be had; it binds
#: no key and no nonce, so no client accepts it.
SELF_TEST = hashlib.sha512(DOMAIN + b"agent self-test, binds nothing").digest()
#: The largest runtime policy file the agent reads (a canonical policy with a thousand rules is
#: under 100 KiB).
MAX_RUNTIME_POLICY_BYTES = 1024 * 1024


class AgentError(InputError):
    """The agent cannot start (its key, its certificate, its address)."""


@dataclass(frozen=True)
class Identity:
    cert_path: Path
    key_path: Path
    cert_der: bytes
    spki: bytes

    @property
    def spki_sha256(self) -> str:
        return hashlib.sha256(self.spki).hexdigest()


def make_identity(openssl: str, state_dir: Path, *, timeout: float = 60.0) -> Identity:
    """A fresh P-256 key (file mode 0600) and a two-day self-signed certificate in ``state_dir``."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise AgentError(f"cannot create the state directory {state_dir}: {e.strerror}.") from None
    key, cert, config = state_dir / KEY_FILE, state_dir / CERT_FILE, state_dir / "openssl.cnf"
    try:
        for stale in (key, cert, config):
            stale.unlink(missing_ok=True)
        config.write_text(OPENSSL_CONFIG, encoding="ascii")
        os.close(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))   # 0600 before a byte is in it
    except OSError as e:
        raise AgentError(f"cannot write in the state directory {state_dir}: {e.strerror}.") from None
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
               "-subj", "/CN=blindbox-agent", "-days", "2", "-config", str(config),
               "-keyout", str(key), "-out", str(cert)]
    try:
        proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              umask=0o077, check=False)
    except FileNotFoundError:
        raise AgentError(f"the openssl binary {openssl} does not exist; pass --openssl with its path.") from None
    except subprocess.TimeoutExpired:
        raise AgentError(f"{openssl} did not create the TLS key within {timeout:g} seconds.") from None
    except OSError as e:
        raise AgentError(f"cannot run {openssl}: {e.strerror}.") from None
    if proc.returncode != 0:
        first = (proc.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[0][:200]
        raise AgentError(f"{openssl} could not create the TLS key and certificate (exit status {proc.returncode}: "
                         f"{first}).")
    try:
        cert_der = ssl.PEM_cert_to_DER_cert(cert.read_text(encoding="ascii"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise AgentError(f"{openssl} did not write a PEM certificate to {cert}.") from None
    try:
        spki = certificate_spki(cert_der)
    except ProtocolError as e:
        raise AgentError(f"the certificate {openssl} wrote cannot be read: {e}") from None
    return Identity(cert_path=cert, key_path=key, cert_der=cert_der, spki=spki)


def load_runtime_policy(path: Path) -> RuntimePolicy:
    """The runtime policy in ``path`` (its canonical bytes, as the guest stores them); anything else is
    an :class:`AgentError` or a :class:`~measure.runtime_policy.RuntimePolicyError`, and the agent does not start."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_RUNTIME_POLICY_BYTES + 1)
    except OSError as e:
        raise AgentError(f"cannot read the runtime policy {path}: {e.strerror or e}; the guest must carry it "
                         f"there.") from None
    if len(data) > MAX_RUNTIME_POLICY_BYTES:
        raise AgentError(f"the runtime policy {path} is larger than {MAX_RUNTIME_POLICY_BYTES} bytes; it is not "
                         f"one the build wrote.")
    return parse_canonical(data, str(path))


def server_context(identity: Identity, *, client_auth: bool = False) -> ssl.SSLContext:
    """TLS 1.3 only, no session tickets (no resumption across attestations).

    ``client_auth``: a context for one connection, ready for post-handshake client authentication
    (nothing is asked of the client during the handshake itself; its trust store starts empty).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    if client_auth:
        context.post_handshake_auth = True
        context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(identity.cert_path, identity.key_path)
    except (OSError, ssl.SSLError) as e:
        raise AgentError(f"the TLS key and certificate in {identity.cert_path.parent} cannot be loaded: {e}.") \
            from None
    return context


def parse_address(text: str, what: str) -> tuple[str, int]:
    """HOST:PORT (port 0 allowed for --listen: any free port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InputError(f"{what} {text!r} is not HOST:PORT with a port from 0 to 65535.")
    return host.strip("[]"), int(port)


class Agent:
    """The listening agent.  :meth:`bind` then :meth:`serve_forever`; :meth:`close` stops it."""

    def __init__(self, *, listen: tuple[str, int], app: tuple[str, int], attester: Attester, identity: Identity,
                 log: Callable[[str], None], max_connections: int = 64, hello_timeout: float = 10.0,
                 io_timeout: float = 300.0, vmpl: int = 0, runtime_policy: RuntimePolicy | None = None) -> None:
        self.listen, self.app, self.attester, self.identity = listen, app, attester, identity
        self.runtime_policy = runtime_policy
        self.policy_sha256 = None if runtime_policy is None else runtime_policy_sha256(runtime_policy)
        self.log = log
        self.hello_timeout = hello_timeout
        self.io_timeout = io_timeout
        self.vmpl = vmpl
        self.context = server_context(identity)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._attest_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._closed = threading.Event()

    def self_test(self) -> None:
        """Obtain one report (REPORT_DATA :data:`SELF_TEST`), so that an agent that cannot attest refuses at start."""
        with self._attest_lock:
            self.attester.get_report(SELF_TEST, self.vmpl)

    def bind(self) -> str:
        """Listen; returns the address as HOST:PORT (the real port when 0 was asked)."""
        host, port = self.listen
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, address = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError as e:
            raise AgentError(f"cannot listen on {host}:{port}: {e.strerror or e}.") from None
        self._sock = sock
        return f"{host}:{sock.getsockname()[1]}"

    def serve_forever(self) -> None:
        assert self._sock is not None, "bind() first"
        while not self._closed.is_set():
            try:
                conn, peer = self._sock.accept()
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.05)       # out of descriptors, say: do not spin
                continue
            name = _peer_name(peer)
            if not self._slots.acquire(blocking=False):
                self.log(f"{name} dropped: too many connections at once")
                _close(conn)
                continue
            threading.Thread(target=self._run, args=(conn, name), daemon=True, name=f"agent {name}").start()

    def close(self) -> None:
        self._closed.set()
        if self._sock is not None:
            _close(self._sock)

    def _run(self, conn: socket.socket, name: str) -> None:
        try:
            self.log(f"{name} {self.handle(conn)}")
        except Exception as e:  # noqa: BLE001 - one connection must never stop the server; the line says a bug
            self.log(f"{name} dropped: internal error (a bug in the agent): {type(e).__name__}: {e}")
        finally:
            _close(conn)
            self._slots.release()

    def handle(self, conn: socket.socket) -> str:
        """Serve one connection; returns what happened, for the log line."""
        tls_or_why = self._hello(conn)
        if isinstance(tls_or_why, str):
            return tls_or_why
        tls, nonce, context = tls_or_why
        try:
            try:
                with self._attest_lock:
                    got = self.attester.get_report(report_data(self.identity.spki, nonce, self.policy_sha256),
                                                   self.vmpl)
                message = encode_evidence(Evidence(report=got.report, certs=got.certs, attester=self.attester.name,
                                                   policy_sha256=self.policy_sha256))
            except BlindboxError as e:
                return f"not attested: {e}"
            tls.settimeout(self.io_timeout)
            try:
                tls.sendall(message)
            except (ssl.SSLError, OSError) as e:
                return f"dropped: the evidence could not be sent ({_why(e)})"
            verdict_or_why = self._client(tls, context)
            if isinstance(verdict_or_why, str):
                return verdict_or_why
            who = "any attested client" if verdict_or_why.client_sha256 is None or self.runtime_policy is None \
                or self.runtime_policy.clients is None else f"client key {verdict_or_why.client_sha256}"
            try:
                tls.sendall(encode_verdict(verdict_or_why))
            except (ssl.SSLError, OSError) as e:
                return f"dropped: the verdict could not be sent ({_why(e)})"
            if not verdict_or_why.accepted:
                return f"attested ({self.attester.name}), client refused: {verdict_or_why.reason}"
            try:
                app = socket.create_connection(self.app, timeout=self.io_timeout)
            except OSError as e:
                return (f"attested ({self.attester.name}), {who} accepted, but the application at "
                        f"{self.app[0]}:{self.app[1]} cannot be reached ({_why(e)})")
            with app:
                ended = _relay(tls, app, self.io_timeout)
            try:                       # send close_notify (the client sees a clean end); do not wait for its own
                tls.settimeout(0.0)
                tls.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass
            return f"attested ({self.attester.name}), {who} accepted, relayed to {self.app[0]}:{self.app[1]}: {ended}"
        finally:
            _close(tls)

    def _client(self, tls: ssl.SSLSocket, context: ssl.SSLContext) -> ClientVerdict | str:
        """Read the client's certificate message and decide; a string is a connection dropped without a verdict."""
        deadline = time.monotonic() + self.io_timeout
        try:
            cert_der = read_client(lambda n: _read_exactly(tls, n, deadline))
        except TimeoutError:
            return f"dropped: no client certificate message within {self.io_timeout:g} seconds"
        except ProtocolError as e:
            return f"dropped: {e}"
        except (ssl.SSLError, OSError) as e:
            return f"dropped: the client closed after the evidence ({_why(e)})"
        digest: str | None = None
        if cert_der:
            try:
                digest = hashlib.sha256(certificate_spki(cert_der)).hexdigest()
            except ProtocolError as e:
                if self.runtime_policy is not None and self.runtime_policy.clients is not None:
                    return ClientVerdict(False, None, f"the client certificate cannot be read: {e}")
        listed = None if self.runtime_policy is None else self.runtime_policy.clients
        if listed is None:
            return ClientVerdict(True, digest, "the runtime policy admits any client that completes attestation")
        if digest is None:
            return ClientVerdict(False, None, "no client key was presented, and the runtime policy admits only "
                                              "listed client keys; connect with a listed key")
        if digest not in listed:
            return ClientVerdict(False, digest, f"client key {digest} is not listed in the runtime policy")
        refused = f"attested ({self.attester.name}), client refused: client key {digest}"
        try:
            context.load_verify_locations(cadata=cert_der)
        except ssl.SSLError as e:
            return ClientVerdict(False, digest, f"the certificate of client key {digest} cannot be loaded "
                                                f"({_why(e)})")
        try:
            tls.verify_client_post_handshake()
            tls.sendall(PROVE)
        except ssl.SSLError as e:
            return ClientVerdict(False, digest, f"the client did not offer TLS 1.3 post-handshake authentication, "
                                                f"so it cannot prove it holds client key {digest} ({_why(e)})")
        except OSError as e:
            return f"{refused}: the connection failed ({_why(e)})"
        try:
            answer = _read_exactly(tls, len(PROVEN), deadline)
        except TimeoutError:
            return f"{refused}: no proof of possession within {self.io_timeout:g} seconds"
        except ssl.SSLError as e:
            return f"{refused}: the client did not prove it holds that key ({_why(e)})"
        except OSError as e:
            return f"{refused}: the connection failed ({_why(e)})"
        if answer != PROVEN:
            return f"{refused}: the client did not answer {PROVEN[:-1].decode()}"
        proven = tls.getpeercert(binary_form=True)
        if proven != cert_der:
            return ClientVerdict(False, digest, f"the certificate the client proved with is not the one it "
                                                f"presented for client key {digest}")
        return ClientVerdict(True, digest, f"client key {digest} is listed in the runtime policy and its holder "
                                           f"proved possession")

    def _context(self) -> ssl.SSLContext:
        """The shared context, or a fresh one for this connection when client keys are checked."""
        if self.runtime_policy is None or self.runtime_policy.clients is None:
            return self.context
        return server_context(self.identity, client_auth=True)

    def _hello(self, conn: socket.socket) -> tuple[ssl.SSLSocket, bytes, ssl.SSLContext] | str:
        """The TLS handshake and the client's hello, within hello_timeout in all.

        The ssl module bounds a whole handshake, and each read, by the socket's timeout (not
        each byte), so a client that dribbles its bytes is dropped in time too.
        """
        too_late = f"dropped: no hello within {self.hello_timeout:g} seconds"
        deadline = time.monotonic() + self.hello_timeout
        conn.settimeout(self.hello_timeout)
        try:
            context = self._context()
        except AgentError as e:
            return f"dropped: {e}"
        try:
            tls = context.wrap_socket(conn, server_side=True)
        except TimeoutError:
            return too_late
        except (ssl.SSLError, OSError) as e:
            return f"dropped: no TLS 1.3 handshake ({_why(e)})"
        try:
            return tls, read_hello(lambda n: _read_exactly(tls, n, deadline)), context
        except TimeoutError:
            _close(tls)
            return too_late
        except ProtocolError as e:
            _close(tls)
            return f"dropped: {e}"
        except (ssl.SSLError, OSError) as e:
            _close(tls)
            return f"dropped: the connection failed before the hello ({_why(e)})"


def _read_exactly(tls: ssl.SSLSocket, n: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        tls.settimeout(remaining)
        chunk = tls.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _relay(tls: ssl.SSLSocket, app: socket.socket, idle: float) -> str:
    """Copy bytes both ways until both sides are done or one fails; returns how it ended."""
    tls.settimeout(idle)
    app.settimeout(idle)
    client_open, app_open = True, True
    ready: list[socket.socket]
    while client_open or app_open:
        if client_open and tls.pending():
            ready = [tls]
        else:
            watch: list[socket.socket] = ([tls] if client_open else []) + ([app] if app_open else [])
            ready, _, _ = select.select(watch, [], [], idle)
            if not ready:
                return f"idle for {idle:g} seconds"
        for sock in ready:
            try:
                data = sock.recv(65536)
            except (ssl.SSLError, OSError) as e:
                return f"{'client' if sock is tls else 'application'} connection failed ({_why(e)})"
            try:
                if sock is tls:
                    if data:
                        app.sendall(data)
                    else:
                        client_open = False
                        app.shutdown(socket.SHUT_WR)
                elif data:
                    tls.sendall(data)
                else:
                    return "the application closed the connection"
            except (ssl.SSLError, OSError) as e:
                return f"{'application' if sock is tls else 'client'} connection failed ({_why(e)})"
    return "the client closed the connection"


def _why(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _peer_name(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
