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

The rule set is rendered by :func:`measure.runtime_policy.render_ruleset` (the calculator), so that
the auditor checks an initrd's rule set against the same definition; this module keeps what only
the builder needs.  The init (:mod:`.init`) loads :data:`NFT_MODULES`, then ``nft -f`` :data:`RULESET_PATH`, and
prints ``nft list ruleset`` line by line; a failure stops the guest before the agent and the
application start.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

from builder.recipe import NFT_DEST
# one definition of the rule set for the builder and the auditor (blindbox rederive)
from measure.runtime_policy import ND_IN, ND_OUT, RULESET_PATH, render_ruleset
from measure.runtime_policy import NFT_TABLE as TABLE

__all__ = ["ND_IN", "ND_OUT", "NFT_DEST", "NFT_MODULES", "RULESET_PATH", "TABLE", "render_ruleset"]
#: the kernel modules the rule set needs in bookworm's 6.1 (nf_tables with the inet, ipv4 and ipv6
#: families built in; nft_ct for ``ct state``; their dependencies come with the module closure)
NFT_MODULES = ("nf_tables", "nft_ct")
