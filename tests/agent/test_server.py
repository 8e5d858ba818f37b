"""The agent end to end on the host: a subprocess serving attested TLS 1.3 with the simulated attester.

The simulated attester is the stand-in of tests/agent/standin.py (its report is a pattern with
the requested REPORT_DATA, not a signed report); the client is written here with :mod:`ssl` and
:mod:`measure.attested_tls`, and ``openssl s_client`` is the independent one.
"""

from __future__ import annotations

import hashlib
import io
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from measure import attested_tls as at

from .standin import CERTS, LoopbackApp, StandInSim, fake_report, free_port

ROOT = Path(__file__).resolve().parents[2]
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


class Running:
    """An agent subprocess and the lines it writes, collected as they come."""

    def __init__(self, args: list[str], cwd: Path = ROOT, python: list[str] | None = None) -> None:
        self.proc = subprocess.Popen((python or [sys.executable, "-m", "blindbox.agent"]) + args, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.stderr = ""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def ready_port(self) -> int:
        """The port the agent says it listens on (waits for its ready line)."""
        return int(self.wait_line("BLINDBOX-AGENT-READY ").split()[1].rsplit(":", 1)[1])

    def wait_line(self, prefix: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None or any(x.startswith(prefix) for x in self.lines), \
                    f"no line {prefix!r}; got {self.lines}"
                self._changed.wait(min(left, 0.2) if left > 0 else 0.2)

    def stop(self) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        _, self.stderr = self.proc.communicate(timeout=10)
        self._reader.join(5)
        return "\n".join(self.lines), self.stderr


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    state = tmp_path_factory.mktemp("state") / "agent"
    with StandInSim() as sim, LoopbackApp() as app:
        run = Running(["--listen", "127.0.0.1:0", "--app", f"127.0.0.1:{app.port}", "--attester",
                       f"simulated:127.0.0.1:{sim.port}", "--state-dir", str(state), "--openssl", OPENSSL,
                       "--hello-timeout", "1"])
        ready = run.wait_line("BLINDBOX-AGENT-READY ")
        _, address, spki_sha256 = ready.split()
        run.port = int(address.rsplit(":", 1)[1])
        run.spki_sha256, run.state, run.sim = spki_sha256, state, sim
        try:
            yield run
        finally:
            out, err = run.stop()
            assert run.proc.returncode == 0, err        # SIGTERM stops it cleanly
            key = (state / "agent-key.pem").read_text()
            body = [line for line in key.splitlines() if line and not line.startswith("-----")]
            assert body and not any(line in out or line in err for line in body), "the TLS key reached the console"


def client_context(version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE          # the report, not a CA, vouches for the key
    context.minimum_version = context.maximum_version = version
    return context


def attest(port: int) -> tuple[ssl.SSLSocket, at.Evidence, bytes, bytes]:
    tls = client_context().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    nonce = os.urandom(32)
    tls.sendall(at.encode_hello(nonce))
    reader = tls.makefile("rb")
    evidence = at.read_evidence(reader.read)
    tls.sendall(at.encode_client(b""))          # no client key: this agent's runtime policy lists none
    verdict = at.read_verdict(reader.read)
    assert verdict == at.ClientVerdict(True, None, "the runtime policy admits any client that completes attestation")
    return tls, evidence, nonce, at.certificate_spki(tls.getpeercert(binary_form=True))


def test_evidence_binds_the_key_this_client_saw_and_its_nonce_then_relays(agent):
    tls, evidence, nonce, spki = attest(agent.port)
    with tls:
        assert evidence.attester == "simulated" and evidence.certs == CERTS and evidence.policy_sha256 is None
        expected = at.report_data(spki, nonce)
        assert evidence.report == fake_report(expected, 0)
        assert (expected, 0) in agent.sim.requests
        assert hashlib.sha256(spki).hexdigest() == agent.spki_sha256
        assert tls.version() == "TLSv1.3"
        tls.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
        assert answer.endswith(b"\r\n\r\napp saw: GET /hello HTTP/1.0")
        assert tls.session is None or not tls.session.has_ticket      # nothing to resume with
        peer = f"127.0.0.1:{tls.getsockname()[1]}"
    line = agent.wait_line(f"BLINDBOX-AGENT-CONNECTION {peer} ")
    assert f"{peer} attested (simulated), any attested client accepted, relayed to 127.0.0.1:" in line
    assert line.endswith(": the application closed the connection")


def test_two_connections_get_two_reports_with_their_own_nonces(agent):
    first, e1, n1, spki = attest(agent.port)
    second, e2, n2, _ = attest(agent.port)
    with first, second:
        assert n1 != n2 and e1.report != e2.report
        assert e1.report[0x50:0x90] == at.report_data(spki, n1) and e2.report[0x50:0x90] == at.report_data(spki, n2)


def test_tls_1_2_is_refused_and_the_server_lives_on(agent):
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as raw:
        peer = raw.getsockname()[1]
        with pytest.raises(ssl.SSLError):
            client_context(ssl.TLSVersion.TLSv1_2).wrap_socket(raw)
    line = agent.wait_line(f"BLINDBOX-AGENT-CONNECTION 127.0.0.1:{peer} ")
    assert "dropped: no TLS 1.3 handshake" in line
    attest(agent.port)[0].close()


def test_a_client_that_does_not_speak_the_protocol_is_dropped(agent):
    with client_context().wrap_socket(socket.create_connection(("127.0.0.1", agent.port), timeout=10)) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert tls.recv(100) == b""
        peer = tls.getsockname()[1]
    line = agent.wait_line(f"BLINDBOX-AGENT-CONNECTION 127.0.0.1:{peer} ")
    assert "dropped: the client did not start with BLINDBOX-ATTEST/2" in line


def test_a_silent_client_is_dropped_after_the_hello_timeout(agent):
    started = time.monotonic()
    with client_context().wrap_socket(socket.create_connection(("127.0.0.1", agent.port), timeout=10)) as tls:
        assert tls.recv(100) == b""
        peer = tls.getsockname()[1]
    assert time.monotonic() - started < 5
    assert agent.wait_line(f"BLINDBOX-AGENT-CONNECTION 127.0.0.1:{peer} ").endswith(
        "dropped: no hello within 1 seconds")


def test_a_client_dribbling_its_handshake_is_dropped_after_the_hello_timeout(agent):
    # a genuine ClientHello, one byte every 0.2 s: no single read waits longer than the timeout
    client = client_context().wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    assert len(hello) > 100
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as raw:
        peer = raw.getsockname()[1]
        for byte in hello[:40]:
            if select.select([raw], [], [], 0.2)[0]:
                break                                   # the agent closed the connection
            try:
                raw.sendall(bytes([byte]))
            except OSError:
                break
        elapsed = time.monotonic() - started
    assert elapsed < 3
    assert agent.wait_line(f"BLINDBOX-AGENT-CONNECTION 127.0.0.1:{peer} ").endswith(
        "dropped: no hello within 1 seconds")


def test_openssl_s_client_completes_a_tls_1_3_handshake(agent):
    proc = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{agent.port}", "-tls1_3"],
                          input="", capture_output=True, text=True, timeout=30)
    assert "Protocol  : TLSv1.3" in proc.stdout or "New, TLSv1.3" in proc.stdout, proc.stdout + proc.stderr
    assert "CN = blindbox-agent" in proc.stdout
    old = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{agent.port}", "-tls1_2"],
                         input="", capture_output=True, text=True, timeout=30)
    assert old.returncode != 0 and "New, TLSv1.2" not in old.stdout


def test_a_report_that_does_not_carry_the_binding_is_never_sent(agent):
    # the attester answers with another REPORT_DATA: the client gets no evidence, the agent lives on
    agent.sim.make_report = lambda data, vmpl: fake_report(bytes(64), vmpl)
    try:
        with client_context().wrap_socket(socket.create_connection(("127.0.0.1", agent.port), timeout=10)) as tls:
            tls.sendall(at.encode_hello(os.urandom(32)))
            assert tls.recv(100) == b""
            peer = tls.getsockname()[1]
    finally:
        agent.sim.make_report = fake_report
    line = agent.wait_line(f"BLINDBOX-AGENT-CONNECTION 127.0.0.1:{peer} ")
    assert line.endswith(f"not attested: the simulated attester at 127.0.0.1:{agent.sim.port} returned a report "
                         f"whose REPORT_DATA is not the one requested.")
    attest(agent.port)[0].close()


def test_an_unreachable_application_is_one_line(tmp_path):
    with StandInSim() as sim:
        app_port = free_port()
        run = Running(["--listen", "127.0.0.1:0", "--app", f"127.0.0.1:{app_port}", "--attester",
                       f"simulated:127.0.0.1:{sim.port}", "--state-dir", str(tmp_path / "s"), "--openssl", OPENSSL])
        try:
            port = run.ready_port()
            tls, _, _, _ = attest(port)
            with tls:
                assert tls.recv(100) == b""
                peer = tls.getsockname()[1]
            line = run.wait_line(f"BLINDBOX-AGENT-CONNECTION 127.0.0.1:{peer} ")
        finally:
            run.stop()
    assert line.endswith(f"attested (simulated), any attested client accepted, but the application at "
                         f"127.0.0.1:{app_port} cannot be reached "
                         f"(Connection refused)")


def test_openssl_s_client_fetches_evidence_bound_to_the_certificate_it_saw(agent, tmp_path):
    # what docs show: a nonce in, the evidence out, with nothing but openssl (then verify-report)
    nonce = os.urandom(32)
    proc = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{agent.port}", "-tls1_3", "-quiet",
                           "-ign_eof"],
                          input=at.encode_hello(nonce) + at.encode_client(b"") + b"GET /after HTTP/1.0\r\n\r\n",
                          capture_output=True, timeout=30)
    evidence = at.read_evidence(io.BytesIO(proc.stdout).read)
    assert proc.stdout.endswith(b"app saw: GET /after HTTP/1.0")
    shown = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{agent.port}", "-tls1_3"], input=b"",
                           capture_output=True, timeout=30).stdout.decode()
    cert = ssl.PEM_cert_to_DER_cert(shown[shown.index("-----BEGIN CERTIFICATE-----"):
                                          shown.index("-----END CERTIFICATE-----") + 25])
    assert evidence.report[0x50:0x90] == at.report_data(at.certificate_spki(cert), nonce)


def test_connections_beyond_the_bound_are_dropped_at_once(tmp_path):
    with StandInSim() as sim:
        run = Running(["--listen", "127.0.0.1:0", "--app", "127.0.0.1:1", "--attester",
                       f"simulated:127.0.0.1:{sim.port}", "--state-dir", str(tmp_path / "s"), "--openssl", OPENSSL,
                       "--max-connections", "1", "--hello-timeout", "3"])
        try:
            port = run.ready_port()
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                time.sleep(0.3)                             # the first one holds the only slot
                with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
                    peer = second.getsockname()[1]
                    assert second.recv(10) == b""
                line = run.wait_line(f"BLINDBOX-AGENT-CONNECTION 127.0.0.1:{peer} ")
        finally:
            run.stop()
    assert line.endswith("dropped: too many connections at once")


def test_key_file_is_private(agent):
    key = agent.state / "agent-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600 and (agent.state.stat().st_mode & 0o077) == 0
    assert "PRIVATE KEY" in key.read_text()


# -- refusals at start -----------------------------------------------------------------------

def refused(args: list[str], tmp_path: Path, **kw) -> tuple[str, str]:
    run = Running(args, **kw)
    assert run.proc.wait(timeout=30) == 2
    out, err = run.stop()
    assert err == "" and len(out.splitlines()) == 1 and out.startswith("BLINDBOX-AGENT-REFUSED "), (out, err)
    return out, err


BASE = ["--listen", "127.0.0.1:0", "--app", "127.0.0.1:8080"]


def test_auto_without_a_device_refuses_in_one_sentence(tmp_path):
    assert not Path("/dev/sev-guest").exists() and not Path("/sys/kernel/config/tsm/report").exists()
    out, _ = refused(BASE + ["--attester", "auto", "--state-dir", str(tmp_path / "s")], tmp_path)
    assert out == ("BLINDBOX-AGENT-REFUSED no SEV-SNP attestation device: neither /sys/kernel/config/tsm/report "
                   "nor /dev/sev-guest exists (is this an SEV-SNP guest with the sev-guest module loaded?).")
    assert not (tmp_path / "s").exists()       # refused before a key was made


def test_launcher_runs_isolated_from_a_copied_tree(tmp_path):
    # the guest's layout: /opt/blindbox/{agent.py, measure/, blindbox/__init__.py, blindbox/agent/}
    opt = tmp_path / "opt"
    shutil.copytree(ROOT / "measure", opt / "measure", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "blindbox" / "agent", opt / "blindbox" / "agent",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "blindbox" / "__init__.py", opt / "blindbox" / "__init__.py")
    shutil.copy(ROOT / "blindbox" / "agent" / "agent.py", opt / "agent.py")
    out, _ = refused(BASE + ["--attester", "auto", "--state-dir", str(tmp_path / "s")], tmp_path, cwd=tmp_path,
                     python=["/usr/bin/python3", "-I", str(opt / "agent.py")])
    assert out.startswith("BLINDBOX-AGENT-REFUSED no SEV-SNP attestation device: neither ")


@pytest.mark.parametrize("extra, message", [
    (["--attester", "simulated:127.0.0.1:{free}"], "cannot reach the simulated attester at 127.0.0.1:{free}: "
                                                   "Connection refused."),
    (["--attester", "tpm"], "the attester 'tpm' is neither 'auto' nor 'simulated:HOST:PORT'."),
    (["--attester", "auto", "--bogus"], "the agent's command line is wrong: unrecognized arguments: --bogus."),
    (["--attester", "simulated:127.0.0.1:{sim}", "--openssl", "{tmp}/no-openssl"],
     "the openssl binary {tmp}/no-openssl does not exist; pass --openssl with its path."),
])
def test_start_refusals_are_one_sentence_with_status_2(tmp_path, extra, message):
    with StandInSim() as sim:
        values = {"free": free_port(), "sim": sim.port, "tmp": tmp_path}
        extra = [x.format(**values) for x in extra]
        out, _ = refused(BASE + ["--state-dir", str(tmp_path / "s")] + extra, tmp_path)
    assert out == "BLINDBOX-AGENT-REFUSED " + message.format(**values)
