"""The recipe's `agent:` section: the attestation agent's ports, attester and suite, and what it refuses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from builder.recipe import AGENT_PACKAGES, ATTESTER_PARAM, SIMULATED_ATTESTER

from .test_recipe import BASE, ROOT, error, parse

ROOTFS = BASE + """rootfs:
  directory: app/
  network: true
"""


def test_defaults_are_hardware_on_8443_relaying_to_8080():
    r = parse(ROOTFS + "agent: {}\n")
    a = r.agent
    assert a is not None and a.line == 24
    assert (a.listen, a.app, a.attester, a.suite, a.arch) == (8443, 8080, "hardware", "bookworm", "amd64")
    assert a.attester_argument == "auto" and a.cmdline_parameter is None
    assert a.packages == AGENT_PACKAGES == ("python3.11-minimal", "libpython3.11-stdlib", "openssl")
    assert a.wants() == {"agent_packages": ["libpython3.11-stdlib", "openssl", "python3.11-minimal"],
                         "suite": "bookworm", "arch": "amd64"}


def test_an_empty_agent_key_means_the_defaults():
    assert parse(ROOTFS + "agent:\n").agent.attester == "hardware"


def test_simulated_attester_marks_the_measured_cmdline():
    a = parse(ROOTFS + "agent: {listen: 9443, app: 8000, attester: simulated, suite: bookworm}\n").agent
    assert (a.listen, a.app) == (9443, 8000)
    assert a.attester_argument == f"simulated:{SIMULATED_ATTESTER}" == "simulated:10.0.2.100:4050"
    assert a.cmdline_parameter == "blindbox.attester=simulated:10.0.2.100:4050"


def test_no_agent_without_a_rootfs():
    e = error(BASE + "agent: {attester: simulated}\n")
    assert "r.yaml:21: agent: the attestation agent serves clients over the network" in str(e)
    assert "there is no rootfs" in str(e)


def test_no_agent_without_network():
    e = error(BASE + "rootfs:\n  directory: app/\nagent: {}\n")
    assert "r.yaml:23: agent:" in str(e) and "rootfs (line 21) has no network: true" in str(e)


@pytest.mark.parametrize("body, where, text", [
    ("{attester: sev}", "agent.attester", "unknown attester 'sev'; use hardware"),
    ("{listen: 0}", "agent.listen", "0 is out of range (1 to 65535)"),
    ("{app: 70000}", "agent.app", "70000 is out of range"),
    ("{listen: 8080}", "agent.listen", "cannot both use port 8080"),
    ("{suite: trixie}", "agent.suite", "only bookworm has"),
    ("{suite: stable}", "agent.suite", "unknown suite 'stable'"),
    ("{port: 1}", "agent.port", "unknown key 'port'"),
])
def test_bad_values_are_refused_with_file_line_and_key(body, where, text):
    e = error(ROOTFS + f"agent: {body}\n")
    assert f"r.yaml:24: {where}: " in str(e) and text in str(e), str(e)


def test_the_attester_parameter_is_the_builds_not_the_recipes():
    e = error(ROOTFS.replace('"console=ttyS0"', f'"console=ttyS0 {ATTESTER_PARAM}=auto"') + "agent: {}\n")
    assert "r.yaml:16: cmdline: blindbox.attester is set by the build from agent.attester" in str(e)


def test_cli_exit_status_2_for_an_agent_without_rootfs(tmp_path):
    (tmp_path / "r.yaml").write_text(BASE + "agent: {}\n")
    p = subprocess.run([sys.executable, "-m", "blindbox.cli", "lock", str(tmp_path / "r.yaml")], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert "r.yaml:21: agent: the attestation agent serves clients" in p.stderr and "Traceback" not in p.stderr
