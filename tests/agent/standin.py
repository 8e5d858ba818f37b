"""Test helpers for the agent: a stand-in for the simulated attester, and a tiny loopback application.

The stand-in speaks the simulated attester's wire format (measure.attested_tls.SIM_MAGIC) and
answers with a report that is NOT a real attestation report: 1184 bytes of a fixed pattern with
the requested REPORT_DATA at offset 0x50 and the VMPL at 0x30, and a two-entry certificate
table.  It checks what the agent sends, not what a verifier would accept (tests/simattester.py
signs real-looking reports for that).
"""

from __future__ import annotations

import socket
import socketserver
import threading
import uuid

from measure.attested_tls import SIM_MAGIC

VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")


def certificate_table(entries: list[tuple[uuid.UUID, bytes]]) -> bytes:
    """AMD's GUID table (GUIDs in RFC 4122 byte order, as go-sev-guest and the sev crate write them)."""
    head = bytearray()
    body = bytearray()
    start = 24 * (len(entries) + 1)
    for guid, blob in entries:
        head += guid.bytes + (start + len(body)).to_bytes(4, "little") + len(blob).to_bytes(4, "little")
        body += blob
    return bytes(head + bytes(24) + body)


CERTS = certificate_table([(VCEK, b"0\x82 stand-in VCEK, not a certificate")])


def fake_report(report_data: bytes, vmpl: int) -> bytes:
    report = bytearray(b"\xa5" * 1184)
    report[0x30:0x34] = vmpl.to_bytes(4, "little")
    report[0x50:0x90] = report_data
    return bytes(report)


class _SimHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: StandInSim = self.server  # type: ignore[assignment]
        self.request.settimeout(5)
        data = b""
        want = len(SIM_MAGIC) + 64 + 1
        while len(data) < want:
            chunk = self.request.recv(want - len(data))
            if not chunk:
                return
            data += chunk
        assert data.startswith(SIM_MAGIC)
        report_data, vmpl = data[len(SIM_MAGIC):-1], data[-1]
        server.requests.append((report_data, vmpl))
        report = server.make_report(report_data, vmpl)
        self.request.sendall(SIM_MAGIC + len(report).to_bytes(4, "big") + report
                             + len(server.certs).to_bytes(4, "big") + server.certs)


class StandInSim(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SimHandler)
        self.requests: list[tuple[bytes, int]] = []
        self.certs = CERTS
        self.make_report = fake_report
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def __enter__(self) -> StandInSim:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _AppHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        # a tiny HTTP/1.0 application: answers every request with what it received
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            request += chunk
        self.server.seen.append(request)  # type: ignore[attr-defined]
        body = b"app saw: " + request.split(b"\r\n", 1)[0]
        self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class LoopbackApp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _AppHandler)
        self.seen: list[bytes] = []          # every request the application received
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def __enter__(self) -> LoopbackApp:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
