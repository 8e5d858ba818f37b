"""builder.steps.nft: the rule set rendered from a runtime policy (its loading is tested in a guest:
tests/integration/test_runtime_policy_boot.py)."""

from __future__ import annotations

from builder.steps.nft import NFT_DEST, NFT_MODULES, RULESET_PATH, render_ruleset
from measure.runtime_policy import GUEST_PATH, parse_runtime_policy


def policy(**doc):
    return parse_runtime_policy(doc, "test")


def lines(text):
    return [line.strip() for line in text.splitlines()]


def test_the_default_policy_drops_everything_but_loopback_and_replies():
    text = render_ruleset(policy())
    assert lines(text) == [
        "table inet blindbox {",
        "chain input {", "type filter hook input priority filter; policy drop;", 'iif "lo" accept',
        "ct state established,related accept", "}",
        "chain forward {", "type filter hook forward priority filter; policy drop;", "}",
        "chain output {", "type filter hook output priority filter; policy drop;", 'oif "lo" accept',
        "ct state established,related accept", "}",
        "}"]
    assert text.endswith("}\n") and "\t\t" in text


def test_one_rule_per_egress_rule_in_canonical_order_ipv6_with_neighbour_discovery():
    p = policy(egress=[{"network": "2001:db8::1", "port": 443, "protocol": "tcp"},
                       {"network": "198.51.100.0/24", "port": 123, "protocol": "udp"},
                       {"network": "192.0.2.10/32", "port": 8443, "protocol": "tcp"}])
    out = lines(render_ruleset(p, agent_listen=8443))
    output = out[out.index("chain output {"):]
    assert output[4:8] == [
        "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept",
        "ip daddr 192.0.2.10 tcp dport 8443 ct state new accept",
        "ip daddr 198.51.100.0/24 udp dport 123 ct state new accept",
        "ip6 daddr 2001:db8::1 tcp dport 443 ct state new accept"]
    inp = out[out.index("chain input {"):out.index("chain forward {")]
    assert inp[4:6] == ["icmpv6 type { nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept",
                        "tcp dport 8443 ct state new accept"]


def test_ipv4_only_policies_allow_no_icmpv6():
    text = render_ruleset(policy(egress=[{"network": "192.0.2.10", "port": 1, "protocol": "udp"}]))
    assert "icmpv6" not in text and "ip6" not in text


def test_the_simulated_attester_is_reachable_by_the_agent_only():
    out = lines(render_ruleset(policy(), agent_listen=9443, simulated_attester=("10.0.2.100", 4050)))
    assert "ip daddr 10.0.2.100 tcp dport 4050 meta skuid 0 ct state new accept" in out
    assert "tcp dport 9443 ct state new accept" in out


def test_the_order_of_the_recipe_does_not_change_the_rule_set():
    a = [{"network": "192.0.2.10", "port": 1, "protocol": "udp"}, {"network": "10.0.0.0/8", "port": 2,
                                                                     "protocol": "tcp"}]
    assert render_ruleset(policy(egress=a)) == render_ruleset(policy(egress=a[::-1]))


def test_paths_and_modules():
    assert NFT_DEST == "/usr/sbin/nft" and NFT_MODULES == ("nf_tables", "nft_ct")
    assert RULESET_PATH.rsplit("/", 1)[0] == GUEST_PATH.rsplit("/", 1)[0] == "/etc/blindbox"
