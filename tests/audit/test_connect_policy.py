"""`blindbox connect` and the runtime policy, against the real agent (a subprocess) and the simulated PSP.

Each bundle's measured command line commits to its runtime policy (blindbox.runtime_policy=<sha>),
so the simulated PSP's MEASUREMENT is that bundle's; the agent reads the policy's canonical bytes
with --runtime-policy, as the guest starts it.  The application behind the agent records every
request: a refused client must leave that record unchanged.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from blindbox.audit.attested import AttestationFailed
from blindbox.audit.connect import CLIENT_CHECK, AttestedSession
from blindbox.audit.manifest_sig import public_key_fingerprint, public_key_pem, sign_manifest
from measure import MeasureRequest, SevMode, launch_digest
from measure import runtime_policy as rp
from measure.cpu import CPU_SIGS
from tests.agent.standin import LoopbackApp
from tests.agent.test_server import OPENSSL, Running
from tests.audit.clientkeys import identity, lying_identity, new_client_key_file
from tests.audit.manifestdoc import entry, write_bundle
from tests.audit.test_manifest_rootfs import _make_bundle
from tests.audit.test_connect import cli
from tests.conftest import VECTORS
from tests.simattester import listening, simulator_argv

FIRMWARE = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"
EGRESS = [{"network": "192.0.2.10", "port": 8443, "protocol": "tcp"}]


def make_bundle(d: Path, policy: rp.RuntimePolicy | None) -> Path:
    """A signed bundle with a root file system and an agent, whose measured cmdline commits to ``policy``
    (and the policy's canonical file, for the agent)."""
    d.mkdir(parents=True, exist_ok=True)
    _, rootfs_doc = _make_bundle(d, "" if policy is None else " " + rp.cmdline_word(policy))
    cmdline = rootfs_doc["cmdline"]
    write_bundle(d, FIRMWARE.read_bytes(), [], cmdline=cmdline)
    digest = launch_digest(MeasureRequest(mode=SevMode.SEV_SNP, ovmf=d / "OVMF.amdsev.fd", vcpus=2,
                                          vcpu_sig=CPU_SIGS["EPYC-Milan"], guest_features=0x1, kernel=d / "bzImage",
                                          initrd=d / "initrd", append=cmdline)).digest
    doc = write_bundle(d, FIRMWARE.read_bytes(), [entry(2, "EPYC-Milan", 0x1, digest)], cmdline=cmdline)
    doc["outputs"] += [o for o in rootfs_doc["outputs"] if o["role"].startswith("rootfs")]
    doc["rootfs"] = rootfs_doc["rootfs"]
    pin = {"name": "python3.11-minimal", "version": "3.11.2-6", "sha256": "aa" * 32}
    doc["agent"] = {"listen": 8443, "app": 8080, "attester": "hardware", "packages": [pin]}
    doc["inputs"].append({"name": "agent:python3.11-minimal", "kind": "debian", "version": "3.11.2-6",
                          "sha256": "aa" * 32, "size": 1, "origin": "debian:bookworm"})
    if policy is not None:
        doc["runtime_policy"] = rp.manifest_record(policy)
        (d / "runtime-policy.json").write_bytes(rp.canonical_json(policy))
    data = (json.dumps(doc, indent=2) + "\n").encode()
    (d / "manifest.json").write_bytes(data)
    key = ec.generate_private_key(ec.SECP384R1())
    (d / "manifest.json.sig").write_bytes(sign_manifest(data, key).signature)
    (d / "pub.pem").write_bytes(public_key_pem(key))
    (d / "fingerprint").write_text(public_key_fingerprint(key))
    return d


@contextmanager
def simulator(bundle: Path):
    argv = simulator_argv(ovmf=bundle / "OVMF.amdsev.fd", kernel=bundle / "bzImage", initrd=bundle / "initrd",
                          append_file=bundle / "cmdline", vcpus=2, vcpu_type="EPYC-Milan", chain_dir=bundle / "chain",
                          listen="127.0.0.1:0")
    with listening(argv) as port:
        yield port


@contextmanager
def guest(bundle: Path, sim_port: int, state: Path, policy_file: Path | None):
    """The agent (as the guest starts it) with an application that records what it receives."""
    with LoopbackApp() as app:
        extra = [] if policy_file is None else ["--runtime-policy", str(policy_file)]
        run = Running(["--listen", "127.0.0.1:0", "--app", f"127.0.0.1:{app.port}", "--attester",
                       f"simulated:127.0.0.1:{sim_port}", "--state-dir", str(state), "--openssl", OPENSSL, *extra])
        try:
            run.port = run.ready_port()
            run.app = app
            yield run
        finally:
            run.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("client-keys")
    return {name: (d / f"{name}.pem", new_client_key_file(d / f"{name}.pem")) for name in ("listed", "other")}


@pytest.fixture(scope="module")
def listing(tmp_path_factory, keys):
    """A bundle whose runtime policy lists one client key, its simulator, and its agent."""
    policy = rp.parse_runtime_policy({"clients": [keys["listed"][1]], "egress": EGRESS}, "test")
    bundle = make_bundle(tmp_path_factory.mktemp("listing"), policy)
    with simulator(bundle) as sim, guest(bundle, sim, bundle / "state", bundle / "runtime-policy.json") as g:
        g.bundle, g.sim, g.policy = bundle, sim, policy
        yield g


@pytest.fixture(scope="module")
def open_policy(tmp_path_factory):
    """A bundle whose runtime policy lists no client keys, and its simulator."""
    policy = rp.parse_runtime_policy({"egress": EGRESS}, "test")
    bundle = make_bundle(tmp_path_factory.mktemp("open"), policy)
    with simulator(bundle) as sim:
        yield bundle, sim, policy


@pytest.fixture(scope="module")
def no_policy(tmp_path_factory):
    """A bundle without a runtime policy, and its simulator."""
    bundle = make_bundle(tmp_path_factory.mktemp("none"), None)
    with simulator(bundle) as sim:
        yield bundle, sim


def _wait_for_line(run: Running, suffix: str, timeout: float = 10) -> str:
    """The agent's console line ending with ``suffix`` (the agent writes it when the connection ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in list(run.lines) if line.endswith(suffix)]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no agent line ending with {suffix!r}: {run.lines}")


def argv(bundle: Path, port: int, *extra) -> list:
    return ["connect", f"https://127.0.0.1:{port}/hello", "--manifest", bundle / "manifest.json",
            "--key", bundle / "pub.pem", "--key-sha256", (bundle / "fingerprint").read_text(),
            "--trust-root", bundle / "chain" / "milan" / "ark.pem", *extra]


def session(g, **kw) -> AttestedSession:
    return AttestedSession("127.0.0.1", g.port, manifest=(g.bundle / "manifest.json").read_bytes(),
                           trust_roots=_roots(g.bundle), **kw)


def _roots(bundle: Path):
    from blindbox.audit.certs import load_certificates
    return load_certificates((bundle / "chain" / "milan" / "ark.pem").read_bytes(), source="test root")


# -- a runtime policy that lists client keys


def test_a_listed_key_is_served_and_the_policy_is_printed(listing, keys, capfd):
    before = len(listing.app.seen)
    rc, out, err = cli(argv(listing.bundle, listing.port, "--client-key", keys["listed"][0]), capfd)
    assert rc == 0, err
    assert out == "app saw: GET /hello HTTP/1.1"
    assert len(listing.app.seen) == before + 1 and listing.app.seen[-1].startswith(b"GET /hello HTTP/1.1")
    sha = rp.runtime_policy_sha256(listing.policy).hex()
    assert err.splitlines() == [f"Runtime policy of test (sha256 {sha}):"] + [
        f"  - {line}" for line in rp.describe(listing.policy)]
    assert "the application may reach 192.0.2.10:8443 over TCP and nothing else" in err
    assert f"only clients presenting one of these TLS keys may query (SHA-256 of the SubjectPublicKeyInfo): " \
           f"{keys['listed'][1]}" in err


def test_json_names_the_policy_and_the_client_check(listing, keys, capfd):
    rc, out, err = cli(argv(listing.bundle, listing.port, "--client-key", keys["listed"][0], "--json"), capfd)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["runtime_policy"] == {"sha256": rp.runtime_policy_sha256(listing.policy).hex(),
                                     "policy": rp.to_json_value(listing.policy),
                                     "description": rp.describe(listing.policy)}
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["runtime_policy"]["status"] == "pass" and checks["runtime_policy.debug"]["status"] == "pass"
    assert checks["report_data binds this TLS key and nonce"]["status"] == "pass"
    assert checks["client key"]["status"] == "pass" and keys["listed"][1] in checks["client key"]["detail"]
    assert doc["client_key"] == keys["listed"][1] and doc["verdict"] == "pass"


def test_an_unlisted_key_is_refused_with_the_agents_reason(listing, keys, capfd):
    before = len(listing.app.seen)
    rc, out, err = cli(argv(listing.bundle, listing.port, "--client-key", keys["other"][0]), capfd)
    digest = keys["other"][1]
    assert rc == 3 and out == ""
    assert (f"blindbox: error: the attested endpoint refused this client: the agent says: client key {digest} is "
            f"not listed in the runtime policy; nothing was sent to the application.") in err
    assert len(listing.app.seen) == before
    _wait_for_line(listing, f"client refused: client key {digest} is not listed in the runtime policy")


def test_no_key_is_refused_before_connecting(listing, capfd):
    before = len(listing.app.seen)
    rc, out, err = cli(argv(listing.bundle, listing.port), capfd)
    assert rc == 2 and out == ""
    assert "admits only listed client keys (1 listed), so the guest refuses a client without one; pass " \
           "--client-key with a listed key" in err
    assert len(listing.app.seen) == before


def test_no_key_is_refused_by_the_agent(listing):
    before = len(listing.app.seen)
    s = session(listing)
    with pytest.raises(AttestationFailed) as ei:
        s.connect()
    assert ei.value.check == CLIENT_CHECK
    assert "refused this client: the agent says: no client key was presented" in str(ei.value)
    assert [c.name for c in ei.value.checks if c.status == "fail"] == [CLIENT_CHECK]
    assert len(listing.app.seen) == before


def test_a_listed_certificate_without_its_key_is_refused(listing, keys):
    before = len(listing.app.seen)
    s = session(listing, client=lying_identity(keys["listed"][0], keys["other"][0]))
    with pytest.raises(AttestationFailed) as ei:
        s.connect()
    assert ei.value.check == CLIENT_CHECK
    assert f"the agent ended the connection when client key {keys['listed'][1]} was to prove possession" \
        in str(ei.value)
    assert len(listing.app.seen) == before


def test_a_client_certificate_of_another_key_is_bad_input(listing, keys, tmp_path, capfd):
    (tmp_path / "listed.crt").write_bytes(identity(keys["listed"][0]).cert_pem)
    rc, _, err = cli(argv(listing.bundle, listing.port, "--client-key", keys["other"][0], "--client-cert",
                          tmp_path / "listed.crt"), capfd)
    assert rc == 2 and f"is a certificate for key sha256 {keys['listed'][1]}, not for --client-key" in err
    rc, _, err = cli(argv(listing.bundle, listing.port, "--client-cert", tmp_path / "listed.crt"), capfd)
    assert rc == 2 and "--client-cert is the certificate of --client-key; give --client-key too." in err


def test_the_listed_keys_own_certificate_is_served(listing, keys, tmp_path, capfd):
    (tmp_path / "listed.crt").write_bytes(identity(keys["listed"][0]).cert_pem)
    rc, out, err = cli(argv(listing.bundle, listing.port, "--client-key", keys["listed"][0], "--client-cert",
                            tmp_path / "listed.crt"), capfd)
    assert rc == 0 and out == "app saw: GET /hello HTTP/1.1", err


# -- the runtime policy the evidence names must be the manifest's


def test_an_agent_bound_to_another_policy_is_refused(listing, open_policy, keys, tmp_path, capfd):
    # the listing bundle's launch (so MEASUREMENT matches), but an agent enforcing the open policy
    _, _, other = open_policy
    (tmp_path / "other.json").write_bytes(rp.canonical_json(other))
    with guest(listing.bundle, listing.sim, tmp_path / "state", tmp_path / "other.json") as g:
        rc, out, err = cli(argv(listing.bundle, g.port, "--client-key", keys["listed"][0]), capfd)
        assert g.app.seen == []
    assert rc == 3 and out == ""
    assert (f"failed the check 'runtime_policy': the evidence names runtime policy sha256 "
            f"{rp.runtime_policy_sha256(other).hex()}, but the manifest's runtime policy is sha256 "
            f"{rp.runtime_policy_sha256(listing.policy).hex()}") in err


def test_an_agent_with_a_policy_the_manifest_lacks_is_refused(no_policy, open_policy, tmp_path, capfd):
    bundle, sim = no_policy
    _, _, other = open_policy
    (tmp_path / "other.json").write_bytes(rp.canonical_json(other))
    with guest(bundle, sim, tmp_path / "state", tmp_path / "other.json") as g:
        rc, _, err = cli(argv(bundle, g.port), capfd)
        assert g.app.seen == []
    assert rc == 3 and "but the manifest's runtime policy is none" in err


def test_an_agent_without_the_manifests_policy_is_refused(open_policy, tmp_path, capfd):
    bundle, sim, _ = open_policy
    with guest(bundle, sim, tmp_path / "state", None) as g:
        rc, _, err = cli(argv(bundle, g.port), capfd)
        assert g.app.seen == []
    assert rc == 3 and "failed the check 'runtime_policy': the evidence names no runtime policy, but the " \
                       "manifest's runtime policy is sha256 " in err


# -- no client list: any attested client


def test_without_a_client_list_any_attested_client_is_served(open_policy, keys, tmp_path, capfd):
    bundle, sim, policy = open_policy
    with guest(bundle, sim, tmp_path / "state", bundle / "runtime-policy.json") as g:
        rc, out, err = cli(argv(bundle, g.port), capfd)
        rc2, out2, err2 = cli(argv(bundle, g.port, "--client-key", keys["other"][0]), capfd)
        assert len(g.app.seen) == 2
    assert rc == 0 and out == "app saw: GET /hello HTTP/1.1", err
    assert rc2 == 0 and out2 == out, err2
    assert "  - any client that completes attestation may query the service" in err.splitlines()


def test_without_a_runtime_policy_connect_says_so(no_policy, keys, tmp_path, capfd):
    bundle, sim = no_policy
    with guest(bundle, sim, tmp_path / "state", None) as g:
        rc, out, err = cli(argv(bundle, g.port, "--json"), capfd)
        rc2, out2, err2 = cli(argv(bundle, g.port, "--client-key", keys["listed"][0]), capfd)
    assert rc == 0 and json.loads(out)["runtime_policy"] is None, err
    assert rc2 == 0 and err2 == ("test has no runtime policy: its application is not restricted by a runtime policy "
                                 "(any attested client may query it, and nothing limits where it sends data).\n")


# -- debug: true


def test_a_debug_runtime_policy_is_refused_without_allow_debug(tmp_path, capfd):
    bundle = make_bundle(tmp_path / "debug", rp.parse_runtime_policy({"debug": True}, "test"))
    closed = 9                     # nothing listens: refusing before connecting is the only way to pass
    argv = ["connect", f"https://127.0.0.1:{closed}/", "--manifest", bundle / "manifest.json", "--key",
            bundle / "pub.pem", "--key-sha256", (bundle / "fingerprint").read_text()]
    rc, out, err = cli(argv, capfd)
    assert rc == 3 and out == ""
    assert "failed the check 'runtime_policy.debug': the runtime policy of " in err
    assert "allows debugging (debug: true), which exposes the data inside the guest; pass --allow-debug only" in err
    rc, _, err = cli(argv + ["--allow-debug"], capfd)
    assert rc == 3 and "no attested endpoint answered at 127.0.0.1:9" in err      # it went on to connect
