"""The agent with --runtime-policy: the digest in REPORT_DATA and the evidence, the client-key verdicts,
and a policy file that is not exactly canonical (the agent then never starts).

The attester is the stand-in of tests/agent/standin.py; tests/audit/test_connect_policy.py runs the
same agent against the simulated PSP with `blindbox connect`.
"""

from __future__ import annotations

import json
import os
import socket

import pytest

from measure import attested_tls as at
from measure import runtime_policy as rp
from tests.audit.clientkeys import identity, lying_identity, new_client_key_file
from blindbox.audit.connect import client_context

from .standin import LoopbackApp, StandInSim, fake_report
from .test_server import BASE, OPENSSL, Running, refused


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("client-keys")
    return {name: (d / f"{name}.pem", new_client_key_file(d / f"{name}.pem")) for name in ("listed", "other")}


@pytest.fixture(scope="module")
def guest(tmp_path_factory, keys):
    d = tmp_path_factory.mktemp("policy-agent")
    policy = rp.parse_runtime_policy({"clients": [keys["listed"][1]]}, "test")
    (d / "runtime-policy.json").write_bytes(rp.canonical_json(policy))
    with StandInSim() as sim, LoopbackApp() as app:
        run = Running(["--listen", "127.0.0.1:0", "--app", f"127.0.0.1:{app.port}", "--attester",
                       f"simulated:127.0.0.1:{sim.port}", "--state-dir", str(d / "state"), "--openssl", OPENSSL,
                       "--runtime-policy", str(d / "runtime-policy.json")])
        run.port = run.ready_port()
        run.sha256, run.sim, run.app = rp.runtime_policy_sha256(policy), sim, app
        try:
            yield run
        finally:
            run.stop()


def _connect(guest, ident=None, claimed: bytes | None = None):
    """Hello, evidence, the certificate message (and the proof when asked); (evidence, nonce, spki, verdict, peer)."""
    tls = client_context(ident).wrap_socket(socket.create_connection(("127.0.0.1", guest.port), timeout=10))
    with tls:
        nonce = os.urandom(32)
        tls.sendall(at.encode_hello(nonce))
        evidence = at.read_evidence(lambda n: at.recv_exactly(tls, n))
        spki = at.certificate_spki(tls.getpeercert(binary_form=True))
        tls.sendall(at.encode_client(claimed if claimed is not None else ident.cert_der if ident else b""))
        peer = f"127.0.0.1:{tls.getsockname()[1]}"
        try:
            first = at.recv_exactly(tls, len(at.PROVE))
            if first == at.PROVE:
                tls.sendall(at.PROVEN)
                verdict = at.read_verdict(lambda n: at.recv_exactly(tls, n))
            else:
                verdict = at.read_verdict(lambda n, head=[first]: head.pop() + at.recv_exactly(tls, n - len(first))
                                          if head else at.recv_exactly(tls, n))
            if verdict.accepted:
                tls.sendall(b"GET /policy HTTP/1.0\r\n\r\n")
                answer = b""
                while chunk := tls.recv(4096):
                    answer += chunk
                return evidence, nonce, spki, verdict, peer, answer
        except OSError as e:                   # ssl.SSLError too: the agent ended the connection
            return evidence, nonce, spki, e, peer, b""
        return evidence, nonce, spki, verdict, peer, b""


def test_the_policy_digest_is_in_the_evidence_and_report_data(guest):
    evidence, nonce, spki, verdict, _, _ = _connect(guest)
    assert evidence.policy_sha256 == guest.sha256
    assert evidence.report == fake_report(at.report_data(spki, nonce, guest.sha256), 0)
    assert evidence.report != fake_report(at.report_data(spki, nonce), 0)


def test_a_listed_key_is_proven_then_served(guest, keys):
    before = len(guest.app.seen)
    _, _, _, verdict, peer, answer = _connect(guest, identity(keys["listed"][0]))
    digest = keys["listed"][1]
    assert verdict == at.ClientVerdict(True, digest, f"client key {digest} is listed in the runtime policy and its "
                                                     f"holder proved possession")
    assert answer.endswith(b"app saw: GET /policy HTTP/1.0") and len(guest.app.seen) == before + 1
    assert f"attested (simulated), client key {digest} accepted, relayed" in \
        guest.wait_line(f"BLINDBOX-AGENT-CONNECTION {peer} ")


def test_an_unlisted_key_is_refused_with_its_digest(guest, keys):
    before = len(guest.app.seen)
    _, _, _, verdict, peer, _ = _connect(guest, identity(keys["other"][0]))
    digest = keys["other"][1]
    assert verdict == at.ClientVerdict(False, digest, f"client key {digest} is not listed in the runtime policy")
    assert guest.wait_line(f"BLINDBOX-AGENT-CONNECTION {peer} ").endswith(
        f"attested (simulated), client refused: client key {digest} is not listed in the runtime policy")
    assert len(guest.app.seen) == before


def test_no_key_is_refused(guest):
    before = len(guest.app.seen)
    _, _, _, verdict, peer, _ = _connect(guest)
    assert not verdict.accepted and verdict.client_sha256 is None
    assert "no client key was presented, and the runtime policy admits only listed client keys" in verdict.reason
    assert "client refused: no client key was presented" in guest.wait_line(f"BLINDBOX-AGENT-CONNECTION {peer} ")
    assert len(guest.app.seen) == before


def test_a_listed_certificate_without_its_private_key_is_refused(guest, keys):
    before = len(guest.app.seen)
    liar = lying_identity(keys["listed"][0], keys["other"][0])
    _, _, _, outcome, peer, _ = _connect(guest, liar)
    assert isinstance(outcome, OSError)            # no verdict: TLS itself refused the proof
    assert guest.wait_line(f"BLINDBOX-AGENT-CONNECTION {peer} ").endswith(
        f"client refused: client key {keys['listed'][1]}: the client did not prove it holds that key "
        f"(CERTIFICATE_VERIFY_FAILED)")
    assert len(guest.app.seen) == before


def test_a_listed_certificate_from_a_client_without_post_handshake_auth_is_refused(guest, keys):
    # a client that never offered post-handshake authentication cannot be asked to prove anything
    _, _, _, verdict, peer, _ = _connect(guest, None, claimed=identity(keys["listed"][0]).cert_der)
    assert not verdict.accepted and "did not offer TLS 1.3 post-handshake authentication" in verdict.reason
    assert "client refused" in guest.wait_line(f"BLINDBOX-AGENT-CONNECTION {peer} ")


def test_a_client_certificate_that_is_not_der_is_refused(guest):
    _, _, _, verdict, _, _ = _connect(guest, None, claimed=b"not a certificate")
    assert not verdict.accepted and verdict.reason.startswith("the client certificate cannot be read: ")


# -- refusals at start -----------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (None, "cannot read the runtime policy {path}: No such file or directory; the guest must carry it there."),
    (json.dumps(rp.to_json_value(rp.RuntimePolicy()), indent=1).encode(),
     "{path}: runtime_policy is not in canonical form (RFC 8785, rules sorted); its digest would not be the "
     "runtime policy's."),
    (b'{"version":1}', "{path}: runtime_policy lacks clients, debug, egress, ingress, logs; the canonical form has "
                       "exactly clients, debug, egress, ingress, logs, version."),
    (b"\xff", "{path}: runtime_policy is not JSON ("),
    (b" " * (1024 * 1024 + 1), "the runtime policy {path} is larger than 1048576 bytes; it is not one the build "
                               "wrote."),
])
def test_a_bad_runtime_policy_file_refuses_to_start(tmp_path, content, message):
    path = tmp_path / "runtime-policy.json"
    if content is not None:
        path.write_bytes(content)
    out, _ = refused(BASE + ["--attester", "auto", "--state-dir", str(tmp_path / "s"), "--runtime-policy",
                             str(path)], tmp_path)
    assert out.startswith("BLINDBOX-AGENT-REFUSED " + message.format(path=path)), out
    assert not (tmp_path / "s").exists()       # refused before a key was made
