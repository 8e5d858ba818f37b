"""Verify, then talk: a client session of attested TLS (docs/attested-tls.md).

:class:`AttestedSession` opens a TLS 1.3 connection to a guest's attestation agent (no
session tickets, no resumption: every session attests afresh), sends the hello with a fresh
nonce, reads the evidence and verifies it with :func:`blindbox.audit.attested.verify_evidence`.
Until every check has passed, no application byte is written to the socket; a failure
closes the connection and raises :class:`AttestationFailed` (exit status 3) naming the
check.  The server's certificate is not checked against any CA: the report binds its key.
Once verified, the session presents its client certificate (a :class:`ClientIdentity`, or
none), answers the agent's post-handshake certificate request when the guest's runtime
policy lists client keys, and reads the agent's verdict: a refused client is
:class:`AttestationFailed` with the check ``client key`` and the agent's reason.

:class:`ClientIdentity` is a TLS client key with a certificate for it: the one given, or an
ephemeral self-signed one made for the key (the agent checks only the key's digest).

:func:`serve_forward` listens locally and gives each accepted connection its own attested
session (its own nonce), relaying bytes only once that session is verified.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import os
import selectors
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from measure.attested_tls import (NONCE_SIZE, PROVE, PROVEN, VERDICT, ClientVerdict, Evidence, ProtocolError,
                                  certificate_spki, encode_client, encode_hello, read_evidence, read_verdict,
                                  recv_exactly)
from measure.errors import InputError
from measure.runtime_policy import RuntimePolicy

from .attested import (AttestationFailed, AttestedVerdict, failed, manifest_expectations,
                       verify_evidence)
from .certs import Certificate
from .kds import KdsClient
from .verify import FAIL, PASS, Check, ManifestEntry

#: What a client says when nothing that speaks the protocol answered.
NO_ENDPOINT = "no attested endpoint answered"
ENDPOINT_CHECK = "endpoint"
TLS_CHECK = "TLS 1.3"
#: The check that names the agent's verdict about this client's key.
CLIENT_CHECK = "client key"
DEFAULT_TIMEOUT = 30.0


def no_endpoint(host: str, port: int, reason: str) -> AttestationFailed:
    reason = reason.rstrip(".")
    return AttestationFailed(f"{NO_ENDPOINT} at {host}:{port}: {reason}; check the address and that the guest "
                             f"booted (its agent prints BLINDBOX-AGENT-READY).", check=ENDPOINT_CHECK)


# ---------------------------------------------------------------------------------------
# client keys

_KeyTypes = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)
_KEY_KINDS = "an EC (P-256, P-384, P-521), RSA (2048 bits or more) or Ed25519 key"


def spki_sha256(public_key: Any) -> str:
    """SHA-256 (hex) of a public key's DER SubjectPublicKeyInfo: what a runtime policy's ``clients`` lists."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def load_client_key(data: bytes, source: str) -> Any:
    """A private key from PEM (unencrypted PKCS#8 or traditional); anything else is InputError."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InputError(f"{source} is an encrypted private key; give an unencrypted one (e.g. from "
                         f"'blindbox client-key new').") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{source} is not a PEM private key; give {_KEY_KINDS} in PEM.") from None
    if not isinstance(key, _KeyTypes) or isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        raise InputError(f"{source} holds a key TLS client authentication does not use here; give {_KEY_KINDS}.")
    return key


def pem_digest(data: bytes, source: str) -> str:
    """The SPKI SHA-256 of a PEM private key, public key or certificate."""
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            return spki_sha256(x509.load_pem_x509_certificate(data).public_key())
        except ValueError:
            raise InputError(f"{source} has a CERTIFICATE block that cannot be read; give a PEM certificate or "
                             f"key.") from None
    if b"-----BEGIN PUBLIC KEY-----" in data:
        try:
            return spki_sha256(serialization.load_pem_public_key(data))
        except (ValueError, UnsupportedAlgorithm):
            raise InputError(f"{source} has a PUBLIC KEY block that cannot be read; give a PEM certificate or "
                             f"key.") from None
    if b"PRIVATE KEY-----" not in data:
        raise InputError(f"{source} is neither a PEM certificate, a public key nor a private key.")
    return spki_sha256(load_client_key(data, source).public_key())


def new_client_key() -> bytes:
    """A fresh P-256 private key, unencrypted PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class ClientIdentity:
    """A TLS client key and a certificate for it.

    ``cert_der`` is what the session presents in its certificate message; ``cert_pem`` and
    ``key_pem`` are what its TLS stack proves possession with (the same certificate, unless a
    test builds a lying client).
    """

    cert_der: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def spki_sha256(self) -> str:
        return hashlib.sha256(certificate_spki(self.cert_der)).hexdigest()


def client_identity(key_pem: bytes, cert_pem: bytes | None = None, *, key_source: str = "--client-key",
                    cert_source: str = "--client-cert", now: datetime | None = None) -> ClientIdentity:
    """The identity for a private key: with ``cert_pem`` (which must be for that key), or an ephemeral
    self-signed certificate valid from an hour ago for a day."""
    key = load_client_key(key_pem, key_source)
    if cert_pem is not None:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise InputError(f"{cert_source} is not a PEM certificate.") from None
        if spki_sha256(cert.public_key()) != spki_sha256(key.public_key()):
            raise InputError(f"{cert_source} is a certificate for key sha256 {spki_sha256(cert.public_key())}, not "
                             f"for {key_source} (sha256 {spki_sha256(key.public_key())}); give the certificate of "
                             f"that key, or none.")
    else:
        now = now or datetime.now(dt.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blindbox client")])
        algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=1)).sign(key, algorithm))
    key_out = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ClientIdentity(cert_der=cert.public_bytes(serialization.Encoding.DER),
                          cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=key_out)


def client_context(identity: ClientIdentity | None = None) -> ssl.SSLContext:
    """TLS 1.3 only, no tickets, no CA check (the report binds the key instead); with an identity,
    ready to answer a post-handshake certificate request with it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_TICKET
    if identity is not None:
        ctx.post_handshake_auth = True
        with tempfile.TemporaryDirectory(prefix="blindbox-client-") as d:   # mode 0700: the key is not shared
            cert_path, key_path = Path(d) / "cert.pem", Path(d) / "key.pem"
            cert_path.write_bytes(identity.cert_pem)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(identity.key_pem)
            try:
                ctx.load_cert_chain(cert_path, key_path)
            except ssl.SSLError as e:
                raise InputError(f"the client certificate and key cannot be used for TLS ({e.reason or e}).") \
                    from None
    return ctx


class AttestedSession:
    """One verified connection to an attestation agent; see the module docstring.

    ``manifest`` is the publisher's manifest whose signature the caller has verified (the
    document, its bytes, or its measurements).  Use as a context manager::

        with AttestedSession("127.0.0.1", 8443, manifest=doc, trust_roots=roots) as s:
            status, headers, body = s.request("GET", "/")
    """

    def __init__(self, host: str, port: int, *,
                 manifest: Mapping[str, Any] | bytes | Sequence[ManifestEntry],
                 manifest_source: str = "manifest.json", shape: str | None = None,
                 trust_roots: Sequence[Certificate] = (), certs: Sequence[Certificate] = (),
                 kds: KdsClient | None = None, allow_debug: bool = False, vmpl: int | None = None,
                 min_tcb: Mapping[str, int] | None = None, at: datetime | None = None,
                 timeout: float = DEFAULT_TIMEOUT, client: ClientIdentity | None = None,
                 runtime_policy: RuntimePolicy | None = None):
        self.host, self.port = host, port
        if isinstance(manifest, (bytes, Mapping)):
            if runtime_policy is not None:
                raise InputError("give a runtime policy only with bare measurements; a manifest document carries "
                                 "its own.")
            self.manifest, self.runtime_policy = manifest_expectations(manifest, source=manifest_source)
        else:
            self.runtime_policy = runtime_policy
            self.manifest = tuple(manifest)
        if shape is not None and shape not in {e.shape for e in self.manifest}:
            raise InputError(f"--shape {shape!r} is not in {manifest_source}; its shapes are "
                             f"{', '.join(sorted({e.shape for e in self.manifest}))}.")
        self.manifest_source, self.shape = manifest_source, shape
        self.trust_roots, self.certs, self.kds = tuple(trust_roots), tuple(certs), kds
        self.allow_debug, self.vmpl, self.min_tcb, self.at = allow_debug, vmpl, min_tcb, at
        self.timeout = timeout
        self.client = client
        self.nonce: bytes | None = None
        self.evidence: Evidence | None = None
        self.verdict: AttestedVerdict | None = None
        self.client_check: Check | None = None
        self._sock: ssl.SSLSocket | None = None
        self._verified = False

    # -- the handshake
    def __enter__(self) -> AttestedSession:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def checks(self) -> tuple[Check, ...]:
        checks = () if self.verdict is None else self.verdict.checks
        return checks + (() if self.client_check is None else (self.client_check,))

    @property
    def verified(self) -> bool:
        return self._verified

    def connect(self) -> None:
        """Connect, attest and verify; raises :class:`AttestationFailed` with nothing sent."""
        if self._sock is not None:
            raise RuntimeError("this session is already connected; open a new one to attest again")
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            raise no_endpoint(self.host, self.port, f"cannot connect ({e.strerror or e})") from None
        try:
            sock = client_context(self.client).wrap_socket(raw, server_hostname=None)
        except InputError:
            raw.close()
            raise
        except ssl.SSLError as e:
            raw.close()
            if "PROTOCOL_VERSION" in str(e) or "UNSUPPORTED_PROTOCOL" in str(e):
                raise failed(TLS_CHECK, f"the server at {self.host}:{self.port} does not speak TLS 1.3 "
                                        f"({e.reason or e}); attested TLS uses TLS 1.3 only") from None
            raise no_endpoint(self.host, self.port, f"the TLS handshake failed ({e.reason or e})") from None
        except OSError as e:
            raw.close()
            raise no_endpoint(self.host, self.port, f"the TLS handshake failed ({e.strerror or e})") from None
        self._sock = sock
        try:
            self._attest(sock)
        except BaseException:
            self.close()
            raise

    def _attest(self, sock: ssl.SSLSocket) -> None:
        if sock.version() != "TLSv1.3":  # the context allows nothing else; belt and braces
            raise failed(TLS_CHECK, f"the connection negotiated {sock.version()}")
        peer = sock.getpeercert(binary_form=True)
        if not peer:
            raise no_endpoint(self.host, self.port, "the server presented no certificate")
        self.nonce = os.urandom(NONCE_SIZE)
        try:
            sock.sendall(encode_hello(self.nonce))
            self.evidence = read_evidence(lambda n: recv_exactly(sock, n))
        except ProtocolError as e:
            raise no_endpoint(self.host, self.port, f"the server does not speak blindbox attested TLS ({e})") \
                from None
        except (OSError, ssl.SSLError) as e:
            raise no_endpoint(self.host, self.port, f"the connection broke before the evidence arrived "
                                                    f"({getattr(e, 'strerror', None) or e})") from None
        self.verdict = verify_evidence(
            self.evidence, peer_cert_der=peer, nonce=self.nonce, manifest=self.manifest,
            manifest_source=self.manifest_source, shape=self.shape, trust_roots=self.trust_roots,
            certificates=self.certs, kds=self.kds, allow_debug=self.allow_debug, vmpl=self.vmpl,
            min_tcb=self.min_tcb, at=self.at, runtime_policy=self.runtime_policy)
        self.verdict.raise_for_failure()
        self._present_client(sock)
        self._verified = True

    def _refused(self, reason: str) -> AttestationFailed:
        reason = reason.rstrip(".")
        self.client_check = Check(CLIENT_CHECK, FAIL, reason)
        return AttestationFailed(f"the attested endpoint refused this client: {reason}; nothing was sent to the "
                                 f"application.", check=CLIENT_CHECK, checks=self.checks)

    def _present_client(self, sock: ssl.SSLSocket) -> None:
        """The certificate message, the proof of possession if the agent asks, and the agent's verdict."""
        digest = None if self.client is None else self.client.spki_sha256
        key = "no client key" if digest is None else f"client key {digest}"

        def read(n: int) -> bytes:
            return recv_exactly(sock, n)
        try:
            sock.sendall(encode_client(b"" if self.client is None else self.client.cert_der))
            first = read(len(PROVE))
            if first == PROVE:       # reading it answered the agent's certificate request with our key
                sock.sendall(PROVEN)
                verdict = read_verdict(read)
            elif first == VERDICT[:len(PROVE)]:
                verdict = self._verdict_after(first, read)
            else:
                raise ProtocolError(f"the agent sent {first!r} where its verdict about this client belongs.")
        except ProtocolError as e:
            raise no_endpoint(self.host, self.port, f"the server does not speak blindbox attested TLS ({e})") \
                from None
        except ssl.SSLError as e:
            raise self._refused(f"the agent ended the connection when {key} was to prove possession "
                                f"({e.reason or e}); it holds no key the runtime policy lists, or not the key of "
                                f"the certificate it presented") from None
        except OSError as e:
            raise self._refused(f"the agent closed the connection after {key} was presented "
                                f"({e.strerror or e})") from None
        self._accept(verdict)

    @staticmethod
    def _verdict_after(first: bytes, read: Callable[[int], bytes]) -> ClientVerdict:
        given = [first]

        def replay(n: int) -> bytes:
            if given:
                head = given.pop()
                return head + read(n - len(head))
            return read(n)
        return read_verdict(replay)

    def _accept(self, verdict: ClientVerdict) -> None:
        if not verdict.accepted:
            raise self._refused(f"the agent says: {verdict.reason}")
        self.client_check = Check(CLIENT_CHECK, PASS, f"the agent accepted this client: {verdict.reason}")

    # -- after verification
    @property
    def socket(self) -> ssl.SSLSocket:
        """The verified TLS socket (for relaying); only after every check passed."""
        if self._sock is None or not self._verified:
            raise RuntimeError("the session is not verified; nothing may be sent")
        return self._sock

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
        """One HTTP/1.1 request over the verified connection: (status, headers, body)."""
        sock = self.socket
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        conn.sock = sock  # already connected and verified: http.client must not open another
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise InputError(f"the application behind the attested endpoint {self.host}:{self.port} did not "
                             f"answer the {method} request with HTTP ({type(e).__name__}: {e}).") from None
        finally:
            conn.sock = None  # the session owns the socket
        return response.status, response.getheaders(), data

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------
# --listen: a local forwarder, one attested session per accepted connection


def _relay(local: socket.socket, remote: ssl.SSLSocket) -> None:
    """Copy bytes both ways until the remote side closes (TLS has no half-close to pass on)."""
    sel = selectors.DefaultSelector()
    sel.register(local, selectors.EVENT_READ, remote)
    sel.register(remote, selectors.EVENT_READ, local)
    try:
        while True:
            for key, _ in sel.select():
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                dst: socket.socket = key.data
                try:
                    data = src.recv(65536)
                    while isinstance(src, ssl.SSLSocket) and src.pending():
                        data += src.recv(src.pending())
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue
                except OSError:
                    data = b""
                if data:
                    try:
                        dst.sendall(data)
                    except OSError:
                        return
                elif src is remote:
                    return
                else:
                    sel.unregister(local)  # the local client is done sending; keep reading replies
    finally:
        sel.close()


class ForwardServer:
    """Accepts local connections and relays each through its own attested session."""

    def __init__(self, listener: socket.socket, open_session: Callable[[], AttestedSession],
                 on_event: Callable[[str, AttestedSession | None, Exception | None], None] | None = None):
        self.listener = listener
        self.open_session = open_session
        self.on_event = on_event
        self._closed = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return host, port

    def serve_forever(self) -> None:
        while not self._closed.is_set():
            try:
                local, _ = self.listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                raise
            threading.Thread(target=self._handle, args=(local,), daemon=True).start()

    def _handle(self, local: socket.socket) -> None:
        session: AttestedSession | None = None
        try:
            session = self.open_session()
            session.connect()
        except Exception as e:  # noqa: BLE001 - reported, and the local client is cut off
            local.close()
            if self.on_event is not None:
                self.on_event("refused", session, e)
            return
        if self.on_event is not None:
            self.on_event("verified", session, None)
        try:
            session.socket.settimeout(None)  # a verified session may idle as long as its client does
            local.settimeout(None)
            _relay(local, session.socket)
        finally:
            session.close()
            local.close()

    def close(self) -> None:
        self._closed.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept()
        except OSError:
            pass
        try:
            self.listener.close()
        except OSError:
            pass


def parse_listen(spec: str) -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"--listen {spec!r} is not HOST:PORT; give e.g. --listen 127.0.0.1:8080.")
    return host.strip("[]"), int(port)


def serve_forward(listen_addr: tuple[str, int] | str, open_session: Callable[[], AttestedSession], *,
                  on_event: Callable[[str, AttestedSession | None, Exception | None], None] | None = None
                  ) -> ForwardServer:
    """Listen on ``listen_addr``; each accepted connection gets ``open_session()`` (not yet
    connected), which is attested and verified before a byte is relayed.  Call
    :meth:`ForwardServer.serve_forever` to run it, :meth:`ForwardServer.close` to stop."""
    host, port = parse_listen(listen_addr) if isinstance(listen_addr, str) else listen_addr
    try:
        listener = socket.create_server((host, port), reuse_port=False)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose a free local port.") \
            from None
    return ForwardServer(listener, open_session, on_event)


__all__ = ["AttestationFailed", "AttestedSession", "CLIENT_CHECK", "ClientIdentity", "ForwardServer", "NO_ENDPOINT",
           "client_context", "client_identity", "load_client_key", "new_client_key", "parse_listen", "pem_digest",
           "serve_forward", "spki_sha256"]
