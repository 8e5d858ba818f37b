"""``blindbox connect``, end to end: python-app with its attestation agent under TCG, a signed manifest.

The guest is built with a runtime policy that admits one TLS client key (``clients``) and lets the
application reach nothing (``egress: []``): its nftables rules let in only the agent's port and
let out only the agent's connection to the simulated PSP, the agent binds the runtime policy's
digest into REPORT_DATA, and only the listed key is served.

The guest reaches the simulated PSP (tests/simattester.py, MEASUREMENT computed with
sev-snp-measure from exactly the files QEMU was given) through a guestfwd; the agent's port is
forwarded to 127.0.0.1 on a free port (``restrict=on``).  The manifest is signed with a test
publisher key, and ``connect`` checks it as ``verify-manifest`` does.

One boot serves the success and the refusals that need no other guest:

- ``connect`` with the listed key verifies, prints the runtime policy and the application's answer;
- without a client key ``connect`` refuses before connecting (exit 2); with another key the
  agent refuses it (exit 3, the key's digest named) and the application sees nothing;
- the same guest against another bundle's manifest fails ``measurement.manifest``;
- a relaying proxy with its own TLS key, passing on the genuine agent's evidence for the
  client's own nonce, fails ``report_data binds this TLS key and nonce``;
- without ``--trust-root`` the test chain fails ``chain``;
- the simulated PSP, told per connection through a file, signs with another chip's key
  (``signature``), presents an expired VCEK (``chain``) or reports a launch whose policy allows
  debugging (``policy.debug``).

Two more boots: a changed initrd (a second cpio archive appended, which the kernel unpacks
too) fails ``measurement.manifest``; a tampered root image stops the guest at dm-verity, so
``connect`` exits 3 saying no attested endpoint answered.  Every refusal exits 3 and nothing
reaches the application (it logs every request on the console).  A replayed nonce needs a
dishonest agent, so it is tested on the host (tests/audit/test_connect.py).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from builder.boot import free_port, nic_argument, running_guest
from builder.steps import cpio
from measure import attested_tls as at

from .appbuild import built_app
from .hellobuild import ROOT
from .test_agent_boot import SHAPE, _sim_command, variant

pytestmark = [pytest.mark.integration, pytest.mark.network]
BOOT_TIMEOUT = 300
BINDING = "report_data binds this TLS key and nonce"


def _client_key(name: str, directory: Path) -> tuple[Path, str]:
    """A TLS client key derived from ``name`` (the same in every run, so the recipe is too): (PEM path, digest)."""
    secret = int.from_bytes(hashlib.sha256(f"blindbox test client {name}".encode()).digest(), "big")
    key = ec.derive_private_key(secret, ec.SECP256R1())
    path = directory / f"{name}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, hashlib.sha256(der).hexdigest()


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    """(listed key, its digest, an unlisted key)."""
    d = tmp_path_factory.mktemp("clients")
    listed, digest = _client_key("listed", d)
    other, _ = _client_key("other", d)
    return listed, digest, other


def policy_variant(digest: str) -> str:
    """python-app behind a simulated-attester agent, under a runtime policy admitting the key ``digest``."""
    return variant("simulated") + f"\nruntime_policy:\n  clients: [\"{digest}\"]\n  egress: []\n"


@pytest.fixture(scope="module")
def app(tmp_path_factory, clients):
    return built_app(tmp_path_factory, "python-app-agent-sim-policy", recipe_text=policy_variant(clients[1]))


@pytest.fixture(scope="module")
def publisher(tmp_path_factory):
    """A test publisher key: (private PEM path, public PEM path, sha256 of the public key's DER)."""
    d = tmp_path_factory.mktemp("publisher")
    key = ec.generate_private_key(ec.SECP384R1())
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    pub = key.public_key()
    (d / "pub.pem").write_bytes(pub.public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return d / "key.pem", d / "pub.pem", hashlib.sha256(der).hexdigest()


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blindbox.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def _signed(manifest: Path, publisher, directory: Path) -> Path:
    """A copy of ``manifest`` with its detached signature beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    copy = directory / "manifest.json"
    shutil.copyfile(manifest, copy)
    p = _cli("sign-manifest", str(copy), "--key", str(publisher[0]))
    assert p.returncode == 0, p.stderr
    return copy


def _connect(port: int, manifest: Path, publisher, chain_dir: Path | None, *extra: str, client: Path | None = None):
    """``blindbox connect`` to the agent on ``port``, presenting the TLS client key ``client``."""
    args = ["connect", f"https://127.0.0.1:{port}/", "--manifest", str(manifest), "--key", str(publisher[1]),
            "--key-sha256", publisher[2], "--shape", f"qemu:{SHAPE[0]}:{SHAPE[1]}:0x1", *extra]
    if client is not None:
        args += ["--client-key", str(client)]
    if chain_dir is not None:
        args += ["--trust-root", str(chain_dir / "milan" / "ark.pem")]
    return _cli(*args)


def _boot(bundle: Path, tmp: Path, *, initrd: Path | None = None, image: Path | None = None):
    """Start the guest: (running guest, the agent's host port, the simulator's chain directory)."""
    from tests.simattester import SimulatedPsp

    port = free_port()
    run = tmp / "run"
    run.mkdir(exist_ok=True)
    for name in ("OVMF.amdsev.fd", "bzImage", "cmdline"):
        shutil.copyfile(bundle / name, run / name)
    shutil.copyfile(initrd or bundle / "initrd", run / "initrd")        # what QEMU is given, the PSP measures
    # the test chain, made now so that a guest that never asks for a report still has a root to name
    SimulatedPsp(ovmf=run / "OVMF.amdsev.fd", kernel=run / "bzImage", initrd=run / "initrd",
                 append=(run / "cmdline").read_text(), vcpus=SHAPE[1], vcpu_type=SHAPE[0], chain_dir=tmp / "chain")
    command = _sim_command(run, tmp / "chain") + f" --fault-file {tmp / 'fault'}"   # read per guest request
    nic = nic_argument([("127.0.0.1", port, 8443)], [("10.0.2.100", 4050, command)])
    guest = running_guest(run / "bzImage", run / "initrd", (run / "cmdline").read_bytes(), firmware=None,
                          drives=[image or bundle / "rootfs.erofs", bundle / "rootfs.verity"], nic=nic)
    return guest, port, tmp / "chain"


def _wait_console(guest, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in guest.console:
        assert time.monotonic() < deadline, guest.console[-2000:]
        time.sleep(0.5)


class RelayingProxy:
    """A TLS server with its own key that passes the client's hello to the genuine agent and its
    evidence back: what a host could do to borrow a genuine guest's report."""

    def __init__(self, tmp: Path, upstream: int):
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = tmp / "proxy-key.pem"
        key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        subprocess.run(["openssl", "req", "-x509", "-key", str(key_pem), "-subj", "/CN=proxy", "-days", "1",
                        "-out", str(tmp / "proxy.pem")], check=True, capture_output=True)
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.minimum_version = ssl.TLSVersion.TLSv1_3
        self.server.load_cert_chain(tmp / "proxy.pem", key_pem)
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client.check_hostname, self.client.verify_mode = False, ssl.CERT_NONE
        self.upstream = upstream
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.relayed_after_evidence = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with self.server.wrap_socket(conn, server_side=True) as down, \
                self.client.wrap_socket(socket.create_connection(("127.0.0.1", self.upstream), timeout=120)) as up:
            up.sendall(at.recv_exactly(down, len(at.HELLO) + at.NONCE_SIZE))
            head = at.recv_exactly(up, len(at.EVIDENCE) + 4)
            down.sendall(head + at.recv_exactly(up, int.from_bytes(head[-4:], "big")))
            down.settimeout(30)
            try:
                self.relayed_after_evidence = len(down.recv(65536))
            except (TimeoutError, OSError):
                pass


def test_connect_verifies_the_guest_then_talks_and_refuses_impostors(app, clients, publisher, tmp_path):
    bundle, manifest, _ = app
    published = _signed(bundle / "manifest.json", publisher, tmp_path / "published")
    guest_ctx, port, chain_dir = _boot(bundle, tmp_path)
    with guest_ctx as guest:
        guest.wait_for("BLINDBOX-AGENT-READY", BOOT_TIMEOUT)
        guest.wait_for("BLINDBOX-APP-START", 120)
        _wait_console(guest, "python-app: listening on")                 # Python starts slowly under TCG
        ok = _connect(port, published, publisher, chain_dir, "--json", client=clients[0])
        assert ok.returncode == 0, ok.stderr + guest.console[-2000:]
        doc = json.loads(ok.stdout)
        failed = [c for c in doc["checks"] if c["status"] != "pass"]
        assert failed == [] and doc["verdict"] == "pass", failed
        assert json.loads(doc["response"]["body"])["service"] == "python-app"
        names = {c["name"] for c in doc["checks"]}
        assert {"measurement.manifest", BINDING, "chain"} <= names
        # the runtime policy: published, bound into REPORT_DATA (the binding check above), loaded in the guest
        sha = json.loads((bundle / "manifest.json").read_text())["runtime_policy"]["sha256"]
        assert doc["runtime_policy"]["sha256"] == sha and doc["client_key"] == clients[1]
        assert f"blindbox.runtime_policy={sha}" in (bundle / "cmdline").read_text()
        assert f"BLINDBOX-RUNTIME-POLICY-OK {sha}" in guest.console
        nft = [line.split(" ", 1)[1].strip() for line in guest.console.splitlines()
               if line.startswith("BLINDBOX-NFT ")]
        assert "tcp dport 8443 ct state new accept" in nft                  # the agent's port, and only it, in
        assert "ip daddr 10.0.2.100 tcp dport 4050 meta skuid 0 ct state new accept" in nft   # the PSP, agent only

        human = _connect(port, published, publisher, chain_dir, client=clients[0])
        assert human.returncode == 0, human.stderr
        assert f"Runtime policy of python-app (sha256 {sha}):" in human.stderr
        assert "only clients presenting one of these TLS keys may query" in human.stderr
        assert "the application may reach nothing outside the guest" in human.stderr

        no_key = _connect(port, published, publisher, chain_dir)
        assert no_key.returncode == 2 and "admits only listed client keys" in no_key.stderr, no_key.stderr
        other = _connect(port, published, publisher, chain_dir, client=clients[2])
        assert other.returncode == 3, other.stderr
        assert "is not listed in the runtime policy" in other.stderr, other.stderr
        assert _wait_console(guest, "client refused", 30) is None

        no_root = _connect(port, published, publisher, None, client=clients[0])
        assert no_root.returncode == 3 and "'chain'" in no_root.stderr and "nothing was sent" in no_root.stderr

        hello = built_app_hello_manifest(tmp_path, publisher)
        wrong = _connect(port, hello, publisher, chain_dir, client=clients[0])
        assert wrong.returncode == 3, wrong.stderr
        assert "measurement" in wrong.stderr and "nothing was sent" in wrong.stderr

        # the simulated PSP misbehaves, one way per connection (QEMU starts it per connection)
        for fault, check in (("other-chip", "signature"), ("expired-vcek", "chain"),
                             ("policy=0xb0000", "policy.debug")):          # 0xb0000: DEBUG (bit 19) allowed
            (tmp_path / "fault").write_text(fault)
            bad = _connect(port, published, publisher, chain_dir, client=clients[0])
            assert bad.returncode == 3, (fault, bad.stderr)
            assert f"failed the check '{check}'" in bad.stderr and "nothing was sent" in bad.stderr, (fault, bad.stderr)
        (tmp_path / "fault").write_text("")

        proxy = RelayingProxy(tmp_path, port)
        relayed = _connect(proxy.port, published, publisher, chain_dir, client=clients[0])
        assert relayed.returncode == 3 and BINDING in relayed.stderr, relayed.stderr
        assert proxy.relayed_after_evidence == 0                     # the client sent nothing after the evidence
        requests = guest.console.count('"GET / HTTP/1.1" 200')
    assert requests == 2, "only the two verified sessions with the listed key reached the application"


def built_app_hello_manifest(tmp_path: Path, publisher) -> Path:
    """A genuine signed manifest of another bundle (the hello recipe): a digest this guest does not have."""
    from .hellobuild import built_hello
    return _signed(built_hello().out / "manifest.json", publisher, tmp_path / "hello-published")


def test_a_changed_initrd_is_refused_by_its_measurement(app, clients, publisher, tmp_path):
    bundle, _, _ = app
    published = _signed(bundle / "manifest.json", publisher, tmp_path / "published")
    extra = cpio.Archive()
    extra.add_file("etc/injected", b"not in the measured initrd\n")
    changed = tmp_path / "changed-initrd"
    changed.write_bytes((bundle / "initrd").read_bytes() + gzip.compress(extra.to_bytes(mtime=0), mtime=0))
    guest_ctx, port, chain_dir = _boot(bundle, tmp_path, initrd=changed)
    with guest_ctx as guest:
        guest.wait_for("BLINDBOX-AGENT-READY", BOOT_TIMEOUT)
        refused = _connect(port, published, publisher, chain_dir, client=clients[0])
        console = guest.console
    assert refused.returncode == 3, refused.stderr
    assert "'measurement.manifest'" in refused.stderr and "nothing was sent" in refused.stderr
    assert '"GET / HTTP/1.1"' not in console


def test_a_tampered_root_never_reaches_the_agent(app, clients, publisher, tmp_path):
    bundle, _, _ = app
    published = _signed(bundle / "manifest.json", publisher, tmp_path / "published")
    image = tmp_path / "rootfs.erofs"
    data = bytearray((bundle / "rootfs.erofs").read_bytes())
    data[len(data) // 2] ^= 0x01
    image.write_bytes(bytes(data))
    guest_ctx, port, chain_dir = _boot(bundle, tmp_path, image=image)
    with guest_ctx as guest:
        result = guest.finish(BOOT_TIMEOUT)
        refused = _connect(port, published, publisher, chain_dir, client=clients[0])
    assert "BLINDBOX-VERITY-FAILED" in result.markers and "BLINDBOX-AGENT-READY" not in result.markers
    assert refused.returncode == 3 and "no attested endpoint answered" in refused.stderr, refused.stderr
