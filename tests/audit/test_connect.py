"""Verify, then talk: AttestedSession, serve_forward and `blindbox connect` against a test agent.

The test agent is a TLS server in this process that speaks measure.attested_tls and records
every byte a client sends after its hello: each refusal must name its check and leave that
record empty.  Reports are signed by the test chain of tests/audit/testchain.py, which the
client accepts only through an explicit trust root.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blindbox.audit.attested import BINDING_CHECK, AttestationFailed
from blindbox.audit.certs import parse_certificate
from blindbox.audit.certtable import encode_cert_table
from blindbox.audit.connect import NO_ENDPOINT, AttestedSession, client_context, serve_forward
from blindbox.audit.manifest_sig import public_key_fingerprint, public_key_pem, sign_manifest
from blindbox.cli import main
from measure import attested_tls as at
from tests.audit.manifestdoc import entry, manifest_doc
from tests.audit import testchain
from tests.audit.testchain import CHIP_ID, make_chain, make_report

MEASUREMENT = bytes(range(48))
OTHER_MEASUREMENT = bytes(range(1, 49))
REPLY = b"hello from the application\n"


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, _der(cert)


@dataclass
class Agent:
    """A test attestation agent: one thread, any number of sequential connections."""

    chain: testchain.TestChain
    tmp: Path
    measurement: bytes = MEASUREMENT
    policy: int = 0x30000
    mode: str = "ok"            # ok | replay | relay | plain
    signer: ec.EllipticCurvePrivateKey | None = None
    tls12: bool = False
    psp: object = None          # a tests.simattester.SimulatedPsp: it makes the reports instead
    empty_table: bool = False   # a host that supplies no certificates
    policy_claimed: bytes | None = None   # the runtime policy digest the evidence names
    policy_bound: bytes | None = None     # the one REPORT_DATA binds
    refuse_client: str | None = None      # a reason: the verdict refuses every client
    client_certs: list[bytes] = field(default_factory=list)   # what each client presented
    nonces: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)   # application bytes, per connection

    def __post_init__(self):
        cert, key, self.cert_der = _self_signed(self.tmp, "agent")
        _, _, other_der = _self_signed(self.tmp, "proxy-victim")
        self.other_spki = at.certificate_spki(other_der)
        self.old_nonce = bytes(range(32))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if self.tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        else:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.stop = threading.Event()
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(10)
            try:
                self._one(raw)
            except (OSError, ssl.SSLError, at.ProtocolError):
                pass
            finally:
                raw.close()

    def _one(self, raw: socket.socket):
        if self.mode == "plain":
            raw.recv(1024)
            raw.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        sock = self.ctx.wrap_socket(raw, server_side=True)
        got = bytearray()
        self.received.append(b"")

        nonce = at.read_hello(lambda n: at.recv_exactly(sock, n))
        self.nonces.append(nonce)
        spki = at.certificate_spki(self.cert_der)
        if self.mode == "replay":
            nonce = self.old_nonce
        if self.mode == "relay":
            spki = self.other_spki
        rd = at.report_data(spki, nonce, self.policy_bound)
        report = make_report(self.chain, measurement=self.measurement, policy=self.policy, report_data=rd)
        if self.signer is not None:
            from blindbox.audit.report import parse_report
            from tests.audit.testchain import sign_report
            report = sign_report(parse_report(report), self.signer)
        table = encode_cert_table({"vcek": _der(self.chain.vcek), "ask": _der(self.chain.ask),
                                   "ark": _der(self.chain.ark)})
        if self.psp is not None:
            report, table = self.psp.report(rd), self.psp.cert_table()
        if self.empty_table:
            table = b""
        sock.sendall(at.encode_evidence(at.Evidence(report=report, certs=table, attester="simulated",
                                                    policy_sha256=self.policy_claimed)))
        try:
            presented = at.read_client(lambda n: at.recv_exactly(sock, n))
        except at.ProtocolError:
            return                                  # the client refused the evidence and closed
        self.client_certs.append(presented)
        accepted = self.refuse_client is None
        sock.sendall(at.encode_verdict(at.ClientVerdict(accepted, None, self.refuse_client or "any client")))
        if not accepted:
            return
        # the application: record everything, answer one HTTP request
        while b"\r\n\r\n" not in got:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
            self.received[-1] = bytes(got)
        if got:
            head, _, body = bytes(got).partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                body += chunk
            self.received[-1] = head + b"\r\n\r\n" + body
            echo = b"" if not body else b"got " + body
            payload = REPLY + echo
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(payload)
                         + payload)
        sock.close()

    def join(self):
        """Wait until the agent saw the client close (every record is then final)."""
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        self.listener.close()

    def nothing_sent(self) -> bool:
        return all(r == b"" for r in self.received)


@pytest.fixture(scope="module")
def chain():
    return make_chain()


@pytest.fixture
def agent_factory(tmp_path, chain):
    agents = []

    def make(**kwargs):
        kwargs.setdefault("chain", chain)
        a = Agent(tmp=tmp_path, **kwargs)
        agents.append(a)
        return a
    yield make
    for a in agents:
        a.listener.close()


def _manifest(measurement=MEASUREMENT):
    return manifest_doc([entry(1, "EPYC-v4", 1, measurement)])


def _roots(chain):
    return (parse_certificate(_der(chain.ark)),)


def _session(agent, chain, **kwargs):
    kwargs.setdefault("manifest", _manifest())
    kwargs.setdefault("trust_roots", _roots(chain))
    return AttestedSession("127.0.0.1", agent.port, **kwargs)


def test_success_then_request(agent_factory, chain):
    agent = agent_factory()
    with _session(agent, chain) as s:
        assert s.verified
        names = [c.name for c in s.checks]
        assert {"chain", "signature", "measurement.manifest", BINDING_CHECK, "policy.debug"} <= set(names)
        assert all(c.status != "fail" for c in s.checks)
        status, headers, body = s.request("POST", "/echo", body=b"payload")
    agent.join()
    assert status == 200 and body == REPLY + b"got payload"
    assert agent.received[0].startswith(b"POST /echo HTTP/1.1\r\n")


@pytest.mark.parametrize("setup, session_kwargs, check, message", [
    (dict(), dict(manifest=_manifest(OTHER_MEASUREMENT)), "measurement.manifest",
     "matches no digest in manifest.json"),
    (dict(mode="replay"), dict(), BINDING_CHECK, "a relaying proxy or a replayed report"),
    (dict(mode="relay"), dict(), BINDING_CHECK, "the evidence was made for another connection"),
    (dict(policy=0x30000 | 1 << 19), dict(), "policy.debug", "allows debugging (bit 19)"),
    (dict(signer="other chip"), dict(), "signature", "the report signature does not verify"),
    (dict(), dict(at=dt.datetime(2050, 1, 1, tzinfo=dt.timezone.utc)), "chain", "2050"),
    (dict(), dict(trust_roots="other chain"), "chain", "trusted root"),
    (dict(), dict(vmpl=1), "vmpl", "requested at VMPL 0, expected 1"),
])
def test_refusals_name_the_check_and_send_nothing(agent_factory, chain, setup, session_kwargs, check, message):
    if setup.get("signer") == "other chip":
        setup = dict(setup, signer=make_chain(chip_id=bytes(64 * [7])).vcek_key)
    if session_kwargs.get("trust_roots") == "other chain":
        session_kwargs = dict(session_kwargs, trust_roots=_roots(make_chain(label="other")))
    agent = agent_factory(**setup)
    session = _session(agent, chain, **session_kwargs)
    with pytest.raises(AttestationFailed) as info:
        session.connect()
    agent.join()
    err = info.value
    assert err.check == check
    assert f"failed the check {check!r}" in str(err) and message in str(err)
    assert str(err).endswith("nothing was sent to it.")
    assert err.exit_code == 3
    assert session.verdict is not None and not session.verdict.ok
    assert agent.nonces and agent.nothing_sent()
    with pytest.raises(RuntimeError, match="not verified"):
        session.socket  # noqa: B018 - the property refuses


def test_vcek_from_certs_or_kds_when_the_host_supplies_none(agent_factory, chain, tmp_path):
    from blindbox.audit.kds import KdsClient
    agent = agent_factory(empty_table=True)
    with pytest.raises(AttestationFailed) as info:
        _session(agent, chain).connect()
    assert info.value.check == "chain"
    assert "the evidence's certificate table holds nothing and none was given; pass --fetch" in str(info.value)
    with pytest.raises(AttestationFailed) as info:
        _session(agent, chain, kds=KdsClient(offline=True, cache_dir=tmp_path / "kds")).connect()
    assert info.value.check == "chain" and "KDS" in str(info.value)
    certs = tuple(parse_certificate(_der(c)) for c in (chain.vcek, chain.ask))
    with _session(agent, chain, certs=certs) as s:
        assert s.request("GET", "/")[0] == 200
    agent.join()
    assert agent.received[0] == agent.received[1] == b""
    assert agent.received[2].startswith(b"GET / HTTP/1.1")


def test_a_real_relaying_proxy_is_refused(agent_factory, chain, tmp_path):
    """A proxy with its own TLS key passes the client's hello to the genuine agent and relays the
    genuine evidence (right measurement, right nonce): the agent's key is not the proxy's."""
    agent = agent_factory()
    cert, key, _ = _self_signed(tmp_path, "proxy")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    after_evidence: list[bytes] = []

    def proxy():
        raw, _ = listener.accept()
        with ctx.wrap_socket(raw, server_side=True) as down:
            hello = down.recv(len(at.HELLO) + at.NONCE_SIZE)
            upstream = socket.create_connection(("127.0.0.1", agent.port), timeout=10)
            with client_context().wrap_socket(upstream) as up:
                up.sendall(hello)
                evidence = at.read_evidence(up.makefile("rb").read)
                down.sendall(at.encode_evidence(evidence))
                down.settimeout(10)
                after_evidence.append(down.recv(4096))
    t = threading.Thread(target=proxy, daemon=True)
    t.start()
    session = AttestedSession("127.0.0.1", listener.getsockname()[1], manifest=_manifest(), trust_roots=_roots(chain))
    with pytest.raises(AttestationFailed) as info:
        session.connect()
    t.join(10)
    listener.close()
    agent.join()
    assert info.value.check == BINDING_CHECK
    assert {c.name: c.status for c in info.value.checks}["measurement.manifest"] == "pass"
    assert agent.nonces == [session.nonce]  # the genuine agent did answer this very nonce
    assert after_evidence == [b""] and agent.nothing_sent()


def test_tls12_server_is_refused(agent_factory, chain):
    agent = agent_factory(tls12=True)
    with pytest.raises(AttestationFailed) as info:
        _session(agent, chain).connect()
    agent.join()
    assert info.value.check == "TLS 1.3" and "does not speak TLS 1.3" in str(info.value)
    assert agent.nonces == [] and agent.nothing_sent()


def test_not_the_protocol_and_nothing_listening(agent_factory, chain):
    agent = agent_factory(mode="plain")
    with pytest.raises(AttestationFailed) as info:
        _session(agent, chain).connect()
    assert info.value.check == "endpoint" and NO_ENDPOINT in str(info.value) and info.value.exit_code == 3
    agent.join()
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(AttestationFailed) as info:
        AttestedSession("127.0.0.1", port, manifest=_manifest(), trust_roots=_roots(chain)).connect()
    assert f"{NO_ENDPOINT} at 127.0.0.1:{port}: cannot connect" in str(info.value)


def test_agent_that_answers_with_something_else(tmp_path, chain):
    """A TLS 1.3 server that does not speak the protocol (say, a plain HTTPS server)."""
    cert, key, _ = _self_signed(tmp_path, "https")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        raw, _ = listener.accept()
        with ctx.wrap_socket(raw, server_side=True) as sock:
            sock.recv(1024)
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with pytest.raises(AttestationFailed) as info:
        AttestedSession("127.0.0.1", listener.getsockname()[1], manifest=_manifest(),
                        trust_roots=_roots(chain)).connect()
    t.join(10)
    listener.close()
    assert "does not speak blindbox attested TLS" in str(info.value) and NO_ENDPOINT in str(info.value)


def test_no_session_resumption_and_a_fresh_nonce_each_time(agent_factory, chain):
    agent = agent_factory()
    for _ in range(2):
        with _session(agent, chain) as s:
            assert s._sock is not None and not s._sock.session_reused
            s.request("GET", "/")
    agent.join()
    assert len(agent.nonces) == 2 and agent.nonces[0] != agent.nonces[1]


def test_shape_not_in_manifest_is_bad_input(agent_factory, chain):
    agent = agent_factory()
    from measure.errors import InputError
    with pytest.raises(InputError, match="--shape 'nope' is not in manifest.json"):
        _session(agent, chain, shape="nope")


def test_forwarding_verifies_each_connection(agent_factory, chain):
    agent = agent_factory()
    events = []
    server = serve_forward("127.0.0.1:0", lambda: _session(agent, chain, timeout=1.0),
                           on_event=lambda what, s, e: events.append(what))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for idle in (0, 1.5):  # a verified session outlives the attestation timeout when idle
            with socket.create_connection(server.address, timeout=10) as c:
                time.sleep(idle)
                c.sendall(b"GET /fwd HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = b""
                while chunk := c.recv(4096):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(REPLY)
    finally:
        server.close()
    agent.join()
    assert events == ["verified", "verified"]
    assert len(set(agent.nonces)) == 2


def test_forwarding_refuses_an_unverified_guest(agent_factory, chain):
    agent = agent_factory(mode="relay")
    events = []
    server = serve_forward(("127.0.0.1", 0), lambda: _session(agent, chain),
                           on_event=lambda what, s, e: events.append((what, e)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(server.address, timeout=10) as c:
            c.sendall(b"GET / HTTP/1.1\r\n\r\n")
            try:
                assert c.recv(4096) == b""
            except ConnectionResetError:
                pass  # closed with the request unread: cut off either way
    finally:
        server.close()
    agent.join()
    assert events[0][0] == "refused" and isinstance(events[0][1], AttestationFailed)
    assert agent.nothing_sent()


# ---------------------------------------------------------------------------------------
# the command line


@pytest.fixture
def published(tmp_path):
    """manifest.json, its signature and the publisher's key files."""
    key = ec.generate_private_key(ec.SECP384R1())
    data = json.dumps(_manifest()).encode()
    (tmp_path / "manifest.json").write_bytes(data)
    (tmp_path / "manifest.json.sig").write_bytes(sign_manifest(data, key).signature)
    (tmp_path / "pub.pem").write_bytes(public_key_pem(key))
    return tmp_path, public_key_fingerprint(key)


def _argv(agent, chain, published, *extra):
    d, fp = published
    (d / "ark.pem").write_bytes(chain.ark.public_bytes(serialization.Encoding.PEM))
    return ["connect", f"https://127.0.0.1:{agent.port}/hello", "--manifest", d / "manifest.json",
            "--key", d / "pub.pem", "--key-sha256", fp, "--trust-root", d / "ark.pem", *extra]


def cli(argv, capfd):
    rc = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def test_cli_prints_the_reply(agent_factory, chain, published, capfd):
    agent = agent_factory()
    rc, out, err = cli(_argv(agent, chain, published), capfd)
    agent.join()
    assert rc == 0 and out == REPLY.decode()
    assert agent.received[0].startswith(b"GET /hello HTTP/1.1")


def test_cli_request_data_and_json(agent_factory, chain, published, capfd):
    agent = agent_factory()
    (published[0] / "body").write_bytes(b"abc")
    rc, out, err = cli(_argv(agent, chain, published, "--request", "PUT /x", "--data", published[0] / "body",
                             "--json"), capfd)
    agent.join()
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["verdict"] == "pass" and doc["response"]["status"] == 200
    assert doc["response"]["body"] == (REPLY + b"got abc").decode()
    names = [c["name"] for c in doc["checks"]]
    assert names[0] == "manifest.signature" and BINDING_CHECK in names
    assert agent.received[0].startswith(b"PUT /x HTTP/1.1")


def test_cli_refusal_exits_3_naming_the_check(agent_factory, chain, published, capfd):
    agent = agent_factory(mode="relay")
    rc, out, err = cli(_argv(agent, chain, published), capfd)
    agent.join()
    assert rc == 3 and out == ""
    assert f"failed the check {BINDING_CHECK!r}" in err
    assert agent.nothing_sent()
    agent = agent_factory(policy=0x30000 | 1 << 19)
    rc, out, err = cli(_argv(agent, chain, published, "--json"), capfd)
    agent.join()
    doc = json.loads(out)
    assert rc == 3 and doc["verdict"] == "fail" and doc["error"]["check"] == "policy.debug"
    assert agent.nothing_sent()
    agent = agent_factory(policy=0x30000 | 1 << 19)
    rc, out, err = cli(_argv(agent, chain, published, "--allow-debug"), capfd)
    agent.join()
    assert rc == 0 and out == REPLY.decode()


def test_cli_without_the_test_root_fails_the_chain(agent_factory, chain, published, capfd):
    agent = agent_factory()
    argv = _argv(agent, chain, published)
    argv = argv[:argv.index("--trust-root")]
    rc, out, err = cli(argv, capfd)
    agent.join()
    assert rc == 3 and "failed the check 'chain'" in err and agent.nothing_sent()


def test_cli_no_endpoint(chain, published, capfd):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    d, fp = published
    rc, out, err = cli(["connect", f"127.0.0.1:{port}", "--manifest", d / "manifest.json", "--key", d / "pub.pem",
                        "--key-sha256", fp], capfd)
    assert rc == 3 and f"blindbox: error: {NO_ENDPOINT} at 127.0.0.1:{port}" in err


@pytest.mark.parametrize("change, rc, message", [
    (lambda d: (d / "manifest.json").write_bytes((d / "manifest.json").read_bytes() + b" "), 3,
     "the signature does not verify over"),
    ("wrong fingerprint", 3, "not the pinned sha256:" + "00" * 32),
    ("bad url", 2, "is not https://HOST:PORT[/PATH]"),
    ("bad request", 2, "--request 'GET x' is not 'METHOD /PATH'"),
    ("listen and request", 2, "--listen forwards local connections"),
    ("bad listen", 2, "--listen 'nope' is not HOST:PORT"),
    ("bad min-tcb", 2, "--min-tcb item 'x' is not COMPONENT=LEVEL"),
])
def test_cli_bad_input_and_manifest(chain, published, capfd, change, rc, message):
    d, fp = published
    argv = ["connect", "https://127.0.0.1:1/", "--manifest", d / "manifest.json", "--key", d / "pub.pem",
            "--key-sha256", fp]
    if callable(change):
        change(d)
    elif change == "wrong fingerprint":
        argv[-1] = "00" * 32
    elif change == "bad url":
        argv[1] = "http://127.0.0.1:80/"
    elif change == "bad request":
        argv += ["--request", "GET x"]
    elif change == "listen and request":
        argv += ["--listen", "127.0.0.1:0", "--request", "GET /"]
    elif change == "bad listen":
        argv += ["--listen", "nope"]
    elif change == "bad min-tcb":
        argv += ["--min-tcb", "x"]
    got, out, err = cli(argv, capfd)
    assert got == rc and message in err, err
    assert "no attested endpoint" not in err  # refused before any connection


def test_chip_id_of_the_test_chain_is_ours():
    assert CHIP_ID == bytes(range(1, 65))


def test_documented_openssl_commands_fetch_a_report_that_verifies(agent_factory, chain, tmp_path, capfd):
    """docs/attested-tls.md: openssl s_client reaches the agent, and the report it fetched verifies with
    blindbox verify-report (REPORT_DATA computed with openssl, the test root given explicitly)."""
    import re
    import subprocess
    from tests.tools import require
    require("openssl", "openssl")
    doc = (Path(__file__).resolve().parents[2] / "docs" / "attested-tls.md").read_text()
    m = re.search(r"<!-- test:openssl-evidence -->\n```sh\n(.*?)```", doc, re.S)
    assert m, "docs/attested-tls.md has no block marked test:openssl-evidence"
    agent = agent_factory()
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", m.group(1)], cwd=work, capture_output=True,
                         text=True, env={**os.environ, "AGENT": f"127.0.0.1:{agent.port}"}, timeout=60)
    agent.join()
    assert run.returncode == 0, run.stderr
    assert agent.nothing_sent()
    (work / "ark.pem").write_bytes(chain.ark.public_bytes(serialization.Encoding.PEM))
    (work / "manifest.json").write_text(json.dumps(_manifest()))
    rd = (work / "report_data.hex").read_text().strip()
    assert len(rd) == 128 and bytes.fromhex(rd) == at.report_data(
        at.certificate_spki(agent.cert_der), (work / "nonce.bin").read_bytes())
    rc, out, err = cli(["verify-report", work / "report.bin", "--certs", work / "certs", "--report-data", rd,
                        "--manifest", work / "manifest.json", "--trust-root", work / "ark.pem"], capfd)
    assert rc == 0, out + err
    assert "verdict: PASS" in out
    rc, out, err = cli(["verify-report", work / "report.bin", "--certs", work / "certs", "--report-data", "00" * 64,
                        "--manifest", work / "manifest.json", "--trust-root", work / "ark.pem"], capfd)
    assert rc == 3 and "REPORT_DATA" in err


def test_cli_listen_forwards_through_verified_sessions(agent_factory, chain, published):
    import subprocess
    import sys
    agent = agent_factory()
    argv = [str(a) for a in _argv(agent, chain, published, "--listen", "127.0.0.1:0")]
    proc = subprocess.Popen([sys.executable, "-m", "blindbox.cli", *argv], stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("blindbox: forwarding 127.0.0.1:"), line
        port = int(line.split()[2].rsplit(":", 1)[1])
        assert "test has no runtime policy: its application is not restricted" in proc.stderr.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"GET /through HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := c.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(REPLY)
        assert "verified a new attested session" in proc.stderr.readline()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    agent.join()
    assert agent.received[0].startswith(b"GET /through HTTP/1.1")


def test_a_report_binding_another_runtime_policy_is_refused(agent_factory, chain, published, capfd):
    # the evidence names the manifest's (no) runtime policy, but REPORT_DATA binds another one
    agent = agent_factory(policy_bound=b"\x11" * 32)
    rc, out, err = cli(_argv(agent, chain, published), capfd)
    agent.join()
    assert rc == 3 and out == ""
    assert f"failed the check '{BINDING_CHECK}'" in err and "binds another runtime policy" in err
    assert agent.nothing_sent() and agent.client_certs == []


def test_evidence_naming_a_runtime_policy_the_manifest_lacks_is_refused(agent_factory, chain, published, capfd):
    agent = agent_factory(policy_claimed=b"\x11" * 32, policy_bound=b"\x11" * 32)
    rc, out, err = cli(_argv(agent, chain, published, "--json"), capfd)
    agent.join()
    assert rc == 3
    doc = json.loads(out)
    assert doc["error"]["check"] == "runtime_policy" and doc["runtime_policy"] is None
    assert "the evidence names runtime policy sha256 " + "11" * 32 + ", but the manifest's runtime policy is none" \
        in doc["error"]["message"]
    assert agent.nothing_sent() and agent.client_certs == []
