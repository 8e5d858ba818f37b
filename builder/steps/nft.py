"""The guest's nftables rule set, rendered from the recipe's runtime policy at build time.

One ``table inet blindbox`` (IPv4 and IPv6 in one table), three base chains, each with
policy drop:

``input``
    ``iif "lo"``, ``ct state established,related``, and with an attestation agent its
    listen port (``tcp dport <listen>``).
``forward``
    nothing: the guest routes nothing.
``output``
    ``oif "lo"``, ``ct state established,related``; with a simulated attester the agent's
    connection to it (``meta skuid 0``: the application never runs as uid 0 under a runtime
    policy); then one rule per egress rule (``ip``/``ip6 daddr``, ``tcp``/``udp dport``,
    ``ct state new``).

With an IPv6 egress rule, ICMPv6 neighbour discovery (solicit and advert, and router
solicit/advert) is accepted too: without it no IPv6 destination can be reached at all.
DHCP needs nothing: the init takes its one lease before it loads the rules and never renews.

The init (:mod:`.init`) loads :data:`NFT_MODULES`, then ``nft -f`` :data:`RULESET_PATH`, and
prints ``nft list ruleset`` line by line; a failure stops the guest before the agent and the
application start.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import ipaddress

from builder.recipe import NFT_DEST
from measure.runtime_policy import EgressRule, RuntimePolicy

__all__ = ["NFT_DEST", "NFT_MODULES", "RULESET_PATH", "render_ruleset"]
#: where the initrd carries the rendered rule set (beside measure.runtime_policy.GUEST_PATH)
RULESET_PATH = "/etc/blindbox/runtime-policy.nft"
#: the kernel modules the rule set needs in bookworm's 6.1 (nf_tables with the inet, ipv4 and ipv6
#: families built in; nft_ct for ``ct state``; their dependencies come with the module closure)
NFT_MODULES = ("nf_tables", "nft_ct")
#: the table the rule set defines
TABLE = "blindbox"
#: ICMPv6 types neighbour discovery needs (only with an IPv6 egress rule), in numeric order as
#: ``nft list ruleset`` prints them (133 router solicit, 134 advert, 135 neighbour solicit, 136 advert)
ND_OUT = ("nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert")
ND_IN = ("nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert")


def _egress_rule(rule: EgressRule) -> str:
    net, port, protocol = ipaddress.ip_network(rule.network), rule.port, rule.protocol
    family = "ip" if net.version == 4 else "ip6"
    # a host is written as its address, as `nft list ruleset` prints it
    dest = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    return f"{family} daddr {dest} {protocol} dport {port} ct state new accept"


def render_ruleset(policy: RuntimePolicy, *, agent_listen: int | None = None,
                   simulated_attester: tuple[str, int] | None = None) -> str:
    """The ``nft -f`` text of ``policy``: see the module's docstring.

    ``agent_listen``: the attestation agent's TCP port (None: no agent, no inbound port);
    ``simulated_attester``: (IPv4 address, port) the agent reaches for reports in simulation.
    """
    # in the canonical form's order (IP version, address, prefix length, port, protocol)
    egress = sorted(policy.egress, key=lambda r: (r.network.version, int(r.network.network_address),
                                                  r.network.prefixlen, r.port, r.protocol))
    rules = [_egress_rule(r) for r in egress]
    ipv6 = any(r.network.version == 6 for r in egress)
    lines = [f"table inet {TABLE} {{",
             "\tchain input {",
             "\t\ttype filter hook input priority filter; policy drop;",
             '\t\tiif "lo" accept',
             "\t\tct state established,related accept"]
    if ipv6:
        lines.append(f"\t\ticmpv6 type {{ {', '.join(ND_IN)} }} accept")
    if agent_listen is not None:
        lines.append(f"\t\ttcp dport {agent_listen} ct state new accept")
    lines += ["\t}",
              "\tchain forward {",
              "\t\ttype filter hook forward priority filter; policy drop;",
              "\t}",
              "\tchain output {",
              "\t\ttype filter hook output priority filter; policy drop;",
              '\t\toif "lo" accept',
              "\t\tct state established,related accept"]
    if ipv6:
        lines.append(f"\t\ticmpv6 type {{ {', '.join(ND_OUT)} }} accept")
    if simulated_attester is not None:
        address, port = simulated_attester
        lines.append(f"\t\tip daddr {ipaddress.IPv4Address(address)} tcp dport {int(port)} meta skuid 0 "
                     f"ct state new accept")
    lines += [f"\t\t{r}" for r in rules]
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"
