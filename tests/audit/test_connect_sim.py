"""`blindbox connect` against an agent whose reports come from the simulated PSP (tests/simattester.py).

MEASUREMENT is what sev-snp-measure computes for the launch; the manifest carries the digest
blindbox's calculator computes, so a verified connection also means the two agree.  The
simulated chain is accepted only with its root given as --trust-root.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from blindbox.audit.manifest_sig import public_key_fingerprint, public_key_pem, sign_manifest
from measure import MeasureRequest, SevMode, launch_digest
from measure.cpu import CPU_SIGS
from tests.audit.manifestdoc import CMDLINE, entry, write_bundle
from tests.audit.test_connect import REPLY, Agent, cli
from tests.conftest import VECTORS
from tests.simattester import SimulatedPsp

FIRMWARE = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"
SHAPE = dict(vcpus=2, vcpu_type="EPYC-Milan", guest_features=0x1)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("connect-sim-bundle")
    write_bundle(d, FIRMWARE.read_bytes(), [])
    digest = launch_digest(MeasureRequest(
        mode=SevMode.SEV_SNP, ovmf=d / "OVMF.amdsev.fd", vcpus=SHAPE["vcpus"], vcpu_sig=CPU_SIGS[SHAPE["vcpu_type"]],
        guest_features=SHAPE["guest_features"], kernel=d / "bzImage", initrd=d / "initrd", append=CMDLINE)).digest
    write_bundle(d, FIRMWARE.read_bytes(), [entry(SHAPE["vcpus"], SHAPE["vcpu_type"], SHAPE["guest_features"],
                                                   digest)])
    key = ec.generate_private_key(ec.SECP384R1())
    data = (d / "manifest.json").read_bytes()
    (d / "manifest.json.sig").write_bytes(sign_manifest(data, key).signature)
    (d / "pub.pem").write_bytes(public_key_pem(key))
    (d / "fingerprint").write_text(public_key_fingerprint(key))
    return d


def _psp(bundle: Path, tmp: Path, initrd: Path | None = None) -> SimulatedPsp:
    return SimulatedPsp(ovmf=bundle / "OVMF.amdsev.fd", kernel=bundle / "bzImage", initrd=initrd or bundle / "initrd",
                        append=CMDLINE, chain_dir=tmp / "chain", **SHAPE)


def _argv(bundle: Path, agent: Agent, *extra) -> list:
    return ["connect", f"https://127.0.0.1:{agent.port}/", "--manifest", bundle / "manifest.json",
            "--key", bundle / "pub.pem", "--key-sha256", (bundle / "fingerprint").read_text(), *extra]


def test_simulated_guest_verifies_only_with_its_root(bundle, tmp_path, capfd):
    psp = _psp(bundle, tmp_path)
    (tmp_path / "sim-ark.pem").write_bytes(psp.trust_root_pem())
    agent = Agent(chain=psp.chain, tmp=tmp_path, psp=psp)
    rc, out, err = cli(_argv(bundle, agent, "--trust-root", tmp_path / "sim-ark.pem", "--json"), capfd)
    rc2, out2, err2 = cli(_argv(bundle, agent), capfd)
    agent.join()
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["attester"] == "simulated" and doc["response"]["body"] == REPLY.decode()
    assert "- not AMD" in doc["certificates"]["root"]["subject"] and not doc["certificates"]["root_is_amd"]
    assert doc["matching_shapes"] == [json.loads((bundle / "manifest.json").read_text())["measurements"][0]["shape"]]
    assert rc2 == 3 and "failed the check 'chain'" in err2 and out2 == ""
    assert agent.received[1] == b""


def test_changed_initrd_fails_the_measurement(bundle, tmp_path, capfd):
    initrd = tmp_path / "initrd"
    initrd.write_bytes((bundle / "initrd").read_bytes() + b"\0")
    psp = _psp(bundle, tmp_path, initrd=initrd)
    (tmp_path / "sim-ark.pem").write_bytes(psp.trust_root_pem())
    agent = Agent(chain=psp.chain, tmp=tmp_path, psp=psp)
    rc, out, err = cli(_argv(bundle, agent, "--trust-root", tmp_path / "sim-ark.pem"), capfd)
    agent.join()
    assert rc == 3 and "failed the check 'measurement.manifest'" in err
    assert agent.nothing_sent()
