"""python-app with the attestation agent in its initrd: built for real, booted under TCG.

- the initrd carries the agent's runtime under /agent (bookworm's python3.11 and openssl, this
  blindbox's agent code byte for byte, no documentation), the manifest's agent section names its
  packages, and a simulated attester is written into the measured command line (a hardware one
  is not, so the two images never share a launch digest);
- simulated attester: the guest reaches tests/simattester.py through a guestfwd (QEMU starts it
  per connection; it computes MEASUREMENT with sev-snp-measure), prints BLINDBOX-AGENT-READY
  before the application starts, answers a client's hello with a report whose REPORT_DATA binds
  this connection's TLS key and nonce and whose MEASUREMENT is the manifest's digest, then
  relays the connection to the application, which is not reachable from outside by itself;
- hardware attester on this machine (no SEV-SNP): the agent refuses in one sentence and the
  guest powers off without starting the application.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request

import pytest

from blindbox.audit.report import parse_report
from builder.boot import free_port, nic_argument, running_guest
from builder.steps import cpio
from builder.steps.agent import DROPPED
from measure import attested_tls as at
from tests.integration.appbuild import APP, built_app
from tests.integration.hellobuild import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.network]
BOOT_TIMEOUT = 300
SHAPE = ("EPYC-v4", 1)


def variant(attester: str) -> str:
    """python-app with the application on loopback and an agent in front of it."""
    text = APP.read_text(encoding="utf-8")
    assert "  env:\n" in text and "\ncmdline:" in text
    text = text.replace("  env:\n", "  env:\n    HOST: 127.0.0.1\n")
    return text.replace("\ncmdline:", f"\nagent: {{listen: 8443, app: 8080, attester: {attester}}}\ncmdline:")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    return built_app(tmp_path_factory, "python-app-agent-sim", recipe_text=variant("simulated"))


@pytest.fixture(scope="module")
def hardware(tmp_path_factory):
    return built_app(tmp_path_factory, "python-app-agent-hw", recipe_text=variant("hardware"))


def initrd_members(bundle) -> dict[str, cpio.Member]:
    return {m.name: m for m in cpio.parse(cpio.decompress((bundle / "initrd").read_bytes(), "gzip"))}


def test_the_initrd_carries_the_agent_and_the_manifest_says_so(simulated, hardware):
    bundle, manifest, recipe = simulated
    members = initrd_members(bundle)
    for path in ("agent/usr/bin/python3.11", "agent/usr/bin/openssl", "agent/usr/lib/python3.11/ssl.py"):
        assert path in members and len(members[path].data) > 0, path
    assert members["agent/usr/bin/python3.11"].mode & 0o111 and members["agent/tmp"].mode & 0o7777 == 0o1777
    for d in ("proc", "sys", "dev", "run"):
        assert members[f"agent/{d}"].mode & 0o170000 == 0o040000
    own = ROOT / "blindbox" / "agent"
    assert members["agent/opt/blindbox/agent.py"].data == (own / "agent.py").read_bytes()
    for p in own.glob("*.py"):
        assert members[f"agent/opt/blindbox/blindbox/agent/{p.name}"].data == p.read_bytes(), p.name
    assert members["agent/opt/blindbox/measure/attested_tls.py"].data == \
        (ROOT / "measure" / "attested_tls.py").read_bytes()
    assert not any(n.startswith(f"agent/{d}/") for n in members for d in DROPPED)
    assert not any("__pycache__" in n for n in members)
    agent = manifest.agent
    assert agent is not None and (agent["listen"], agent["app"], agent["attester"]) == (8443, 8080, "simulated")
    names = {p["name"] for p in agent["packages"]}
    assert {"python3.11-minimal", "libpython3.11-stdlib", "openssl", "libssl3"} <= names
    pins = {e.name[6:]: e.sha256 for e in recipe_lock_inputs(recipe) if e.name.startswith("agent:")}
    assert {p["name"]: p["sha256"] for p in agent["packages"]} == pins
    assert " blindbox.attester=simulated:10.0.2.100:4050 blindbox.root=" in manifest.cmdline
    hw_bundle, hw_manifest, _ = hardware
    assert hw_manifest.agent["attester"] == "hardware" and "blindbox.attester" not in hw_manifest.cmdline
    assert not {m.measurement for m in hw_manifest.measurements} & {m.measurement for m in manifest.measurements}


def recipe_lock_inputs(recipe):
    from builder.lock import read_lock
    return read_lock(recipe.lock_path).inputs


def _sim_command(bundle, chain_dir) -> str:
    """The simulated PSP, run by QEMU per guest connection (no shell: QEMU splits the words)."""
    return (f"/usr/bin/env PYTHONPATH={ROOT} {sys.executable} -m tests.simattester --ovmf {bundle / 'OVMF.amdsev.fd'} "
            f"--kernel {bundle / 'bzImage'} --initrd {bundle / 'initrd'} --append-file {bundle / 'cmdline'} "
            f"--vcpus {SHAPE[1]} --vcpu-type {SHAPE[0]} --chain-dir {chain_dir}")


def test_simulated_attester_ready_before_the_app_then_attested_relay(simulated, tmp_path):
    bundle, manifest, _ = simulated
    for name in ("OVMF.amdsev.fd", "bzImage", "initrd", "cmdline"):
        assert " " not in str(bundle / name)
    port, direct = free_port(), free_port()
    nic = nic_argument([("127.0.0.1", port, 8443), ("127.0.0.1", direct, 8080)],
                       [("10.0.2.100", 4050, _sim_command(bundle, tmp_path / "chain"))])
    with running_guest(bundle / "bzImage", bundle / "initrd", (bundle / "cmdline").read_bytes(), firmware=None,
                       drives=[bundle / "rootfs.erofs", bundle / "rootfs.verity"], nic=nic) as guest:
        ready = guest.wait_for("BLINDBOX-AGENT-READY", BOOT_TIMEOUT)
        guest.wait_for("BLINDBOX-APP-START", 60)
        deadline = time.monotonic() + 120
        while "python-app: listening on 127.0.0.1 port 8080" not in guest.console:   # Python starts slowly
            assert time.monotonic() < deadline, guest.console[-2000:]
            time.sleep(0.5)
        console = guest.console
        assert console.index("BLINDBOX-AGENT-START 8443") < console.index("BLINDBOX-AGENT-READY") < \
            console.index("BLINDBOX-APP-START /usr/bin/python3.11")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE    # the report vouches for the key
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        reply = b""
        with socket.create_connection(("127.0.0.1", port), timeout=120) as raw, ctx.wrap_socket(raw) as tls:
            nonce = os.urandom(at.NONCE_SIZE)
            tls.sendall(at.encode_hello(nonce))
            evidence = at.read_evidence(lambda n: at.recv_exactly(tls, n))
            spki = at.certificate_spki(tls.getpeercert(binary_form=True))
            report = parse_report(evidence.report)
            assert evidence.attester == "simulated"
            assert report.report_data == at.report_data(spki, nonce)
            assert ready.split() == ["0.0.0.0:8443", hashlib.sha256(spki).hexdigest()]
            expected = manifest.measurement(f"qemu:{SHAPE[0]}:{SHAPE[1]}:0x1")
            assert expected is not None and report.measurement.hex() == expected.measurement
            assert report.chip_id.startswith(b"BLINDBOX SIMULATED PSP - NOT AMD")
            tls.sendall(at.encode_client(b""))        # protocol 2: no client key (this recipe lists none)
            assert at.read_verdict(lambda n: at.recv_exactly(tls, n)).accepted
            tls.sendall(b"GET /exit?status=3 HTTP/1.0\r\nHost: app\r\n\r\n")   # relayed to the app on loopback
            while chunk := tls.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.0 200") and json.loads(reply.split(b"\r\n\r\n", 1)[1]) == {"exiting": 3}
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{direct}/", timeout=10).read()   # the app is on loopback only
        result = guest.finish(BOOT_TIMEOUT)
    assert result.marker("BLINDBOX-APP-EXIT") == "3"
    assert "BLINDBOX-AGENT-CONNECTION" in result.markers


def test_hardware_attester_without_sev_snp_refuses_and_the_app_never_starts(hardware):
    bundle, _, _ = hardware
    with running_guest(bundle / "bzImage", bundle / "initrd", (bundle / "cmdline").read_bytes(), firmware=None,
                       drives=[bundle / "rootfs.erofs", bundle / "rootfs.verity"],
                       nic=nic_argument([("127.0.0.1", free_port(), 8443)])) as guest:
        result = guest.finish(BOOT_TIMEOUT)
    refused = result.marker("BLINDBOX-AGENT-REFUSED")
    assert refused is not None and "/dev/sev-guest" in refused and refused.endswith("."), result.console[-2000:]
    assert result.marker("BLINDBOX-AGENT-FAILED") == \
        "the attestation agent did not start, so the application is not started"
    assert "BLINDBOX-APP-START" not in result.markers and "BLINDBOX-APP-EXIT" not in result.markers
    assert list(result.markers)[-1] == "BLINDBOX-POWEROFF"
