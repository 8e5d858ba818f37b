"""The manifest's optional agent section, written by the build and checked by the one reader."""

from __future__ import annotations

import pytest

from blindbox.audit.manifest import ManifestInvalid, ManifestMalformed, check_manifest
from builder.manifest import Manifest
from tests.audit.test_manifest_rootfs import _copy, _make_bundle, _with_cmdline

SIM = "blindbox.attester=simulated:10.0.2.100:4050"
AGENT = {"listen": 8443, "app": 8080, "attester": "simulated",
         "packages": [{"name": "openssl", "version": "3.0.22-1~deb12u2", "sha256": "ab" * 32},
                      {"name": "python3.11-minimal", "version": "3.11.2-6+deb12u9", "sha256": "cd" * 32}]}


@pytest.fixture
def doc(tmp_path):
    _, d = _make_bundle(tmp_path)
    d = _with_cmdline(d, d["cmdline"].replace("console=ttyS0 ", f"console=ttyS0 {SIM} "))
    d["agent"] = _copy(AGENT)
    for pkg in AGENT["packages"]:
        d["inputs"].append({"name": f"agent:{pkg['name']}", "kind": "debian", "version": pkg["version"],
                            "sha256": pkg["sha256"], "size": 1,
                            "origin": f"debian:bookworm/{pkg['name']}={pkg['version']} (pool/x.deb)"})
    return d


def test_a_consistent_agent_section_is_accepted_and_round_trips(doc):
    assert check_manifest(_copy(doc)) is not None
    m = Manifest.from_dict(_copy(doc))
    assert m.agent == AGENT
    assert m.to_dict()["agent"] == AGENT and list(m.to_dict())[-1] == "agent"


def test_a_hardware_agent_has_no_attester_in_the_cmdline(doc):
    d = _with_cmdline(doc, doc["cmdline"].replace(f" {SIM}", ""))
    d["agent"]["attester"] = "hardware"
    assert check_manifest(d) is not None
    d["cmdline"] = doc["cmdline"]
    with pytest.raises(ManifestInvalid) as e:
        check_manifest(_with_cmdline(d, doc["cmdline"]))
    assert e.value.path == "cmdline" and "but agent.attester is 'hardware'" in str(e.value)


@pytest.mark.parametrize("change, path, kind, words", [
    (lambda d: d["agent"].update(attester="simulated", listen=8080), "agent.app", ManifestInvalid,
     "the port the agent itself listens on"),
    (lambda d: d["agent"].update(listen=0), "agent.listen", ManifestInvalid, ""),
    (lambda d: d["agent"].update(app="8080"), "agent.app", ManifestMalformed, "not an integer"),
    (lambda d: d["agent"].update(attester="sev"), "agent.attester", ManifestInvalid, ""),
    (lambda d: d["agent"].pop("packages"), "agent.packages", ManifestInvalid, ""),
    (lambda d: d["agent"]["packages"][0].update(sha256="xy"), "agent.packages[0].sha256", ManifestMalformed, ""),
    (lambda d: d["agent"]["packages"].append(dict(d["agent"]["packages"][0])), "agent.packages[2].name",
     ManifestInvalid, "listed twice"),
    (lambda d: d["rootfs"].update(network=False), "agent", ManifestInvalid, "no rootfs with network"),
    (lambda d: d["agent"]["packages"][1].update(version="3.11.9-1"), "agent.packages[1]", ManifestInvalid,
     "the inputs have no agent:python3.11-minimal of that version and sha256"),
    (lambda d: d["agent"]["packages"].pop(0), "agent.packages", ManifestInvalid,
     "does not list openssl, which the inputs pin as agent:openssl"),
])
def test_each_false_or_malformed_agent_value_is_named(doc, change, path, kind, words):
    d = _copy(doc)
    change(d)
    with pytest.raises(kind) as e:
        check_manifest(d)
    assert e.value.path == path and words in str(e.value), str(e.value)


def test_a_simulated_agent_needs_the_attester_in_the_measured_cmdline(doc):
    d = _with_cmdline(doc, doc["cmdline"].replace(f" {SIM}", ""))
    with pytest.raises(ManifestInvalid) as e:
        check_manifest(d)
    assert e.value.path == "agent.attester" and "does not carry exactly one blindbox.attester=simulated" in \
        str(e.value)


def test_agent_pins_without_an_agent_are_refused(doc):
    d = _with_cmdline(doc, doc["cmdline"].replace(f" {SIM}", ""))
    d.pop("agent")
    with pytest.raises(ManifestInvalid) as e:
        check_manifest(d)
    assert e.value.path == "inputs" and "pin agent:openssl, but the manifest has no agent" in str(e.value)


def test_an_attester_in_the_cmdline_without_an_agent_is_refused(doc):
    d = _copy(doc)
    d.pop("agent")
    with pytest.raises(ManifestInvalid) as e:
        check_manifest(d)
    assert e.value.path == "cmdline" and f"carries {SIM}, but the manifest has no agent" in str(e.value)
