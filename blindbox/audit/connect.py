"""Verify, then talk: a client session of attested TLS (docs/attested-tls.md).

:class:`AttestedSession` opens a TLS 1.3 connection to a guest's attestation agent (no
session tickets, no resumption: every session attests afresh), sends the hello with a fresh
nonce, reads the evidence and verifies it with :func:`blindbox.audit.attested.verify_evidence`.
Until every check has passed, no application byte is written to the socket; a failure
closes the connection and raises :class:`AttestationFailed` (exit status 3) naming the
check.  The server's certificate is not checked against any CA: the report binds its key.

:func:`serve_forward` listens locally and gives each accepted connection its own attested
session (its own nonce), relaying bytes only once that session is verified.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import http.client
import os
import selectors
import socket
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from measure.attested_tls import NONCE_SIZE, Evidence, ProtocolError, encode_hello, read_evidence, recv_exactly
from measure.errors import InputError

from .attested import AttestationFailed, AttestedVerdict, failed, manifest_entries, verify_evidence
from .certs import Certificate
from .kds import KdsClient
from .verify import Check, ManifestEntry

#: What a client says when nothing that speaks the protocol answered.
NO_ENDPOINT = "no attested endpoint answered"
ENDPOINT_CHECK = "endpoint"
TLS_CHECK = "TLS 1.3"
DEFAULT_TIMEOUT = 30.0


def no_endpoint(host: str, port: int, reason: str) -> AttestationFailed:
    reason = reason.rstrip(".")
    return AttestationFailed(f"{NO_ENDPOINT} at {host}:{port}: {reason}; check the address and that the guest "
                             f"booted (its agent prints BLINDBOX-AGENT-READY).", check=ENDPOINT_CHECK)


def client_context() -> ssl.SSLContext:
    """TLS 1.3 only, no tickets, no CA check (the report binds the key instead)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_TICKET
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
                 timeout: float = DEFAULT_TIMEOUT):
        self.host, self.port = host, port
        if isinstance(manifest, (bytes, Mapping)):
            self.manifest = manifest_entries(manifest, source=manifest_source)
        else:
            self.manifest = tuple(manifest)
        if shape is not None and shape not in {e.shape for e in self.manifest}:
            raise InputError(f"--shape {shape!r} is not in {manifest_source}; its shapes are "
                             f"{', '.join(sorted({e.shape for e in self.manifest}))}.")
        self.manifest_source, self.shape = manifest_source, shape
        self.trust_roots, self.certs, self.kds = tuple(trust_roots), tuple(certs), kds
        self.allow_debug, self.vmpl, self.min_tcb, self.at = allow_debug, vmpl, min_tcb, at
        self.timeout = timeout
        self.nonce: bytes | None = None
        self.evidence: Evidence | None = None
        self.verdict: AttestedVerdict | None = None
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
        return () if self.verdict is None else self.verdict.checks

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
            sock = client_context().wrap_socket(raw, server_hostname=None)
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
            min_tcb=self.min_tcb, at=self.at)
        self.verdict.raise_for_failure()
        self._verified = True

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


__all__ = ["AttestationFailed", "AttestedSession", "ForwardServer", "NO_ENDPOINT", "client_context", "parse_listen",
           "serve_forward"]
