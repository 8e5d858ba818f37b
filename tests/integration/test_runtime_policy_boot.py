"""The runtime policy enforced in a real guest (QEMU software emulation, ``-nic user,restrict=on``).

The test-only egress-probe guest (tests/integration/egress_probe) runs, as uid 65534, a script
that opens one TCP connection to 10.0.2.101:5001 and one to 10.0.2.102:5001 and prints what it
got.  Both addresses are QEMU ``guestfwd`` rules leading to test servers on 127.0.0.1 (through
tests/integration/tcprelay.py), so nothing can leave the host, and a packet that the guest's rule
set lets through does reach a server: the denied destination is forwarded too.

- the policy build: allowed reached (its server got the probe's bytes), denied blocked (its server
  got nothing, not even a connection), and the printed rule set is the policy's (UDP and IPv6 rules
  are checked there);
- the control build (its policy also allows 10.0.2.102) reaches both, in the same test;
- fail closed: the same recipe built with nft_ct left out of the initrd's modules (monkeypatched
  here, a test of a real failure, not a product switch) prints BLINDBOX-RUNTIME-POLICY-FAILED with
  nft's error and never starts the application.
"""

from __future__ import annotations

import socket
import sys
import threading

import pytest

from builder.boot import nic_argument, running_guest
from builder.steps import nft
from measure.runtime_policy import from_json_value

from .hellobuild import ROOT
from .policybuild import ALLOWED, CONTROL, DENIED, built_probe

pytestmark = [pytest.mark.integration, pytest.mark.network]

BOOT_TIMEOUT = 300


class Server:
    """A TCP server on 127.0.0.1 that records each connection's bytes and answers ``ok <name>``."""

    def __init__(self, name: str):
        self.name = name
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(20)
                try:
                    data = conn.recv(4096)
                    self.received.append(data)
                    conn.sendall(f"ok {self.name}\n".encode())
                except OSError as e:
                    self.received.append(f"error {e}".encode())

    def close(self) -> None:
        self.sock.close()


def _relay(port: int) -> str:
    return f"/usr/bin/env PYTHONPATH={ROOT} {sys.executable} -m tests.integration.tcprelay {port}"


def boot_probe(bundle):
    """Boot the probe with both destinations forwarded to fresh servers: (result, allowed server, denied server)."""
    allowed, denied = Server("allowed"), Server("denied")
    nic = nic_argument((), [(ALLOWED[0], ALLOWED[1], _relay(allowed.port)),
                            (DENIED[0], DENIED[1], _relay(denied.port))])
    try:
        with running_guest(bundle / "bzImage", bundle / "initrd", (bundle / "cmdline").read_bytes(), firmware=None,
                           drives=[bundle / "rootfs.erofs", bundle / "rootfs.verity"], nic=nic) as guest:
            r = guest.finish(BOOT_TIMEOUT)
    finally:
        allowed.close()
        denied.close()
    return r, allowed, denied


def probes(r) -> dict[str, str]:
    return {line.split(" ", 1)[0]: line.split(" ", 2)[1] for line in r.markers.get("BLINDBOX-TEST-PROBE", ())}


def dest(addr) -> str:
    return f"{addr[0]}:{addr[1]}"


def parse_ruleset(lines) -> dict[str, list[str]]:
    """``nft list ruleset`` (as printed by the guest) -> chain name -> its lines, whitespace-normalised."""
    chains: dict[str, list[str]] = {}
    current = None
    for line in lines:
        words = line.split()
        if words[:1] == ["chain"]:
            current = words[1]
            chains[current] = []
        elif words == ["}"]:
            current = None
        elif current is not None and words:
            chains[current].append(" ".join(words))
    return chains


@pytest.fixture(scope="module")
def policy_build(tmp_path_factory):
    return built_probe(tmp_path_factory, "egress-probe-policy")


def test_the_policy_lets_the_app_reach_the_allowed_destination_only_and_the_control_reaches_both(
        policy_build, tmp_path_factory):
    bundle, manifest = policy_build
    r, allowed, denied = boot_probe(bundle)
    tail = r.console.replace("\r", "")[-6000:]
    sha = manifest.runtime_policy["sha256"]
    assert r.marker("BLINDBOX-RUNTIME-POLICY-OK") == sha, tail
    assert r.marker("BLINDBOX-TEST-PROBE-UID") == "65534:65534", tail
    assert probes(r) == {dest(ALLOWED): "reached", dest(DENIED): "blocked"}, tail
    assert allowed.received == [f"probe {dest(ALLOWED)}\n".encode()], tail
    assert denied.received == [], tail
    modules = dict(m.split(" ", 1) for m in r.markers["BLINDBOX-MODULE"])
    assert {m: modules[m] for m in nft.NFT_MODULES} == {m: "loaded" for m in nft.NFT_MODULES}, tail
    order = [r.console.index(m) for m in ("BLINDBOX-NET ", "BLINDBOX-NFT ", "BLINDBOX-RUNTIME-POLICY-OK",
                                          "BLINDBOX-APP-START", "BLINDBOX-TEST-PROBE ", "BLINDBOX-APP-EXIT")]
    assert order == sorted(order), tail

    # the rule set the kernel holds, as the guest printed it, is the one rendered from the policy ...
    policy = from_json_value(manifest.runtime_policy["policy"], "manifest")
    assert len(policy.egress) == 3
    printed = r.markers["BLINDBOX-NFT"]
    assert printed[0] == "table inet blindbox {", tail
    chains = parse_ruleset(printed)
    assert chains == parse_ruleset(nft.render_ruleset(policy).splitlines()), printed
    # ... and says what the policy says: default drop, one accept per egress rule (UDP and IPv6 included)
    assert set(chains) == {"input", "forward", "output"}, chains
    for chain in chains:
        assert chains[chain][0] == f"type filter hook {chain} priority filter; policy drop;", chains
    assert chains["forward"] == ["type filter hook forward priority filter; policy drop;"]
    assert chains["input"][1:] == ['iif "lo" accept', "ct state established,related accept",
                                   "icmpv6 type { nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept"]
    assert chains["output"][1:] == [
        'oif "lo" accept', "ct state established,related accept",
        "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept",
        "ip daddr 10.0.2.101 tcp dport 5001 ct state new accept",
        "ip daddr 198.51.100.0/24 udp dport 123 ct state new accept",
        "ip6 daddr 2001:db8::/32 tcp dport 443 ct state new accept"], chains

    # the control: 10.0.2.102 allowed too; the same guest reaches both
    cbundle, cmanifest = built_probe(tmp_path_factory, "egress-probe-control", CONTROL)
    assert cmanifest.runtime_policy["sha256"] != sha
    c, callowed, cdenied = boot_probe(cbundle)
    ctail = c.console.replace("\r", "")[-6000:]
    assert c.marker("BLINDBOX-RUNTIME-POLICY-OK") == cmanifest.runtime_policy["sha256"], ctail
    assert probes(c) == {dest(ALLOWED): "reached", dest(DENIED): "reached"}, ctail
    assert callowed.received == [f"probe {dest(ALLOWED)}\n".encode()], ctail
    assert cdenied.received == [f"probe {dest(DENIED)}\n".encode()], ctail
    assert "ip daddr 10.0.2.102 tcp dport 5001 ct state new accept" in parse_ruleset(
        c.markers["BLINDBOX-NFT"])["output"], ctail


def test_a_rule_set_that_cannot_load_stops_the_guest_before_the_app(tmp_path_factory):
    def without_nft_ct():
        nft.NFT_MODULES = tuple(m for m in nft.NFT_MODULES if m != "nft_ct")

    saved = nft.NFT_MODULES
    try:
        bundle, manifest = built_probe(tmp_path_factory, "egress-probe-no-nft-ct", before=without_nft_ct)
    finally:
        nft.NFT_MODULES = saved
    r, allowed, denied = boot_probe(bundle)
    tail = r.console.replace("\r", "")[-6000:]
    failed = r.marker("BLINDBOX-RUNTIME-POLICY-FAILED")
    assert failed is not None and failed.startswith("nft -f /etc/blindbox/runtime-policy.nft: "), tail
    assert "Error:" in failed, tail           # nft's own message
    for never in ("BLINDBOX-RUNTIME-POLICY-OK", "BLINDBOX-APP-START", "BLINDBOX-TEST-PROBE", "BLINDBOX-APP-EXIT"):
        assert never not in r.markers, tail
    assert r.markers["BLINDBOX-POWEROFF"] == ("",), tail
    assert allowed.received == [] and denied.received == []
