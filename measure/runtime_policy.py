"""The runtime policy: what a measured guest lets its application do, its canonical form and digest.

A runtime policy says who may query the service (``clients``), where the application may send
anything (``egress``), whether the guest may be debugged (``debug``) and whose output may leave
the guest on the console (``logs``).  Ingress is not a choice: only the attestation agent's port
is reachable from outside, and the canonical form records it as ``"agent-only"``.

This module only defines the runtime policy: the strict reader of a plain mapping
(:func:`parse_runtime_policy`), the canonical serialisation (:func:`canonical_json`, RFC 8785
JSON Canonicalization Scheme), its SHA-256 (:func:`runtime_policy_sha256`, the
``policy_sha256`` input of :func:`measure.attested_tls.report_data`) and a description in plain
words (:func:`describe`), and the nftables rule set the guest enforces it with
(:func:`render_ruleset`: one definition for the builder, which puts it into the initrd, and the
auditor, which checks that the initrd carries exactly it).  docs/runtime-policy.md has the schema
and the threat model.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, :mod:`builder` or :mod:`blindbox` (docs/architecture.md);
the recipe reader, the guest and the client will all use it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from .errors import InputError, InternalError

VERSION = 1
#: Whose output may leave the guest on the console, beyond the kernel's errors and init's status.
LOG_SOURCES = ("app", "agent")
PROTOCOLS = ("tcp", "udp")
INGRESS = "agent-only"
#: The kernel parameter that carries the runtime policy's SHA-256 (64 lower-case hex digits) on the
#: measured command line, so that every launch digest commits to the runtime policy.
CMDLINE_PARAM = "blindbox.runtime_policy"
#: Where the measured initrd carries the canonical runtime policy (:func:`canonical_json` bytes); the
#: attestation agent's root holds a copy at the same path.
GUEST_PATH = "/etc/blindbox/runtime-policy.json"
#: Where the measured initrd carries the rendered rule set (:func:`render_ruleset`), beside GUEST_PATH.
RULESET_PATH = "/etc/blindbox/runtime-policy.nft"
#: The nftables table the rule set defines.
NFT_TABLE = "blindbox"
#: ICMPv6 types neighbour discovery needs (only with an IPv6 egress rule), in numeric order as
#: ``nft list ruleset`` prints them (133 router solicit, 134 advert, 135 neighbour solicit, 136 advert)
ND_OUT = ("nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert")
ND_IN = ("nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert")

Network: TypeAlias = "ipaddress.IPv4Network | ipaddress.IPv6Network"
Protocol = Literal["tcp", "udp"]

_KEYS = ("clients", "egress", "debug", "logs")
_RULE_KEYS = ("network", "port", "protocol")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Something that reads as a DNS name rather than an address: labels of letters, digits and hyphens.
_HOST_NAME = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?(/\d+)?")
# Integers that an IEEE 754 double (JCS's number model) holds exactly.
_MAX_SAFE_INTEGER = 2**53 - 1


class RuntimePolicyError(InputError):
    """A runtime policy is malformed: an unknown key, a wrong type or an unusable value.

    ``path`` is the key path inside the runtime policy (``egress[1].port``; empty for the whole
    policy) and ``problem`` the sentence after it, so that a reader which knows where each key
    came from (the recipe's file:line) can say so.
    """

    def __init__(self, message: str, *, path: str = "", problem: str = ""):
        super().__init__(message)
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class EgressRule:
    """One destination the application may reach: a network, a port and a transport protocol."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int
    protocol: Protocol


@dataclass(frozen=True)
class RuntimePolicy:
    """A validated runtime policy; the defaults are the strictest choices but ``clients``."""

    #: None: any client that completed attestation; otherwise the lower-case hex SHA-256 digests of
    #: the SubjectPublicKeyInfos of the TLS client keys that may query the service.
    clients: tuple[str, ...] | None = None
    #: The destinations the application may reach; everything else is dropped.
    egress: tuple[EgressRule, ...] = ()
    debug: bool = False
    logs: tuple[str, ...] = ("app", "agent")


def _refuse(where: str, path: str, problem: str) -> RuntimePolicyError:
    return RuntimePolicyError(f"{where}: runtime_policy.{path} {problem}", path=path, problem=problem)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _parse_network(value: object, where: str, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise _refuse(where, path, f"is {_type_name(value)}; write an IP address or a CIDR such as "
                                   f"192.0.2.10 or 2001:db8::/32.")
    text = value.strip()
    if "%" in text:
        raise _refuse(where, path, f"is {text[:60]!r}, which has a zone index (after %); it names an interface "
                                   f"of the guest, not a destination, so write the address alone.")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        meant = ipaddress.ip_network(text, strict=False)
    except ValueError:
        meant = None
    if meant is not None:
        raise _refuse(where, path, f"is {text!r}, which has host bits set; write {meant} if that network was "
                                   f"meant, or the address alone for one host.")
    if _HOST_NAME.fullmatch(text):
        raise _refuse(where, path, f"is the host name {text!r}; write an IP address or a CIDR instead, because "
                                   f"a name would be resolved outside the measurement.")
    raise _refuse(where, path, f"is {text[:60]!r}, which is not an IP address or a CIDR such as 192.0.2.10, "
                               f"198.51.100.0/24 or 2001:db8::1.")


def _parse_rule(value: object, where: str, path: str) -> EgressRule:
    if not isinstance(value, Mapping):
        raise _refuse(where, path, f"is {_type_name(value)}; each egress rule is a mapping with network, port "
                                   f"and protocol.")
    for key in value:
        if key not in _RULE_KEYS:
            raise _refuse(where, f"{path}.{key}", f"is not a known key; an egress rule has exactly "
                                                  f"{', '.join(_RULE_KEYS)}.")
    for key in _RULE_KEYS:
        if key not in value:
            raise _refuse(where, f"{path}.{key}", f"is missing; an egress rule has exactly "
                                                  f"{', '.join(_RULE_KEYS)}.")
    network = _parse_network(value["network"], where, f"{path}.network")
    port = value["port"]
    if not isinstance(port, int) or isinstance(port, bool):
        raise _refuse(where, f"{path}.port", f"is {_type_name(port)}; write a port number from 1 to 65535.")
    if not 1 <= port <= 65535:
        raise _refuse(where, f"{path}.port", f"is {port}; a port is a number from 1 to 65535.")
    protocol = value["protocol"]
    if protocol == "tcp":
        return EgressRule(network, port, "tcp")
    if protocol == "udp":
        return EgressRule(network, port, "udp")
    shown = repr(protocol[:20]) if isinstance(protocol, str) else _type_name(protocol)
    raise _refuse(where, f"{path}.protocol", f"is {shown}; write tcp or udp.")


def _parse_list(value: object, where: str, path: str, what: str) -> list[object]:
    if not isinstance(value, (list, tuple)):
        raise _refuse(where, path, f"is {_type_name(value)}; write a list of {what}.")
    return list(value)


def parse_runtime_policy(doc: Mapping[str, object], where: str) -> RuntimePolicy:
    """The runtime policy in a plain mapping; anything malformed is a :class:`RuntimePolicyError`.

    ``where`` names the source (a file, later a file and line) at the start of every message.
    """
    if not isinstance(doc, Mapping):
        problem = f"is {_type_name(doc)}; write a mapping with any of {', '.join(_KEYS)}."
        raise RuntimePolicyError(f"{where}: runtime_policy {problem}", problem=problem)
    for key in doc:
        if key == "ingress":
            raise _refuse(where, "ingress", "cannot be set, because only the attestation agent's port is ever "
                                            "reachable from outside the guest; remove it.")
        if key not in _KEYS:
            raise _refuse(where, str(key), f"is not a known key; a runtime policy has {', '.join(_KEYS)}.")

    clients: tuple[str, ...] | None = None
    if doc.get("clients") is not None:
        items = _parse_list(doc["clients"], where, "clients", "SHA-256 digests of TLS client keys, or null for "
                                                              "any client that completed attestation")
        if not items:
            raise _refuse(where, "clients", "is an empty list, which would let no client query the service; "
                                            "list client key digests, or write null for any attested client.")
        seen: list[str] = []
        for index, item in enumerate(items):
            if not isinstance(item, str) or not _HEX64.fullmatch(item):
                shown = repr(item[:70]) if isinstance(item, str) else _type_name(item)
                quote = "; quote it, so that YAML does not read it as a number" \
                    if isinstance(item, (int, float)) and not isinstance(item, bool) else ""
                raise _refuse(where, f"clients[{index}]", f"is {shown}, not 64 lower-case hex digits (the SHA-256 "
                                                          f"of a TLS client key's SubjectPublicKeyInfo){quote}.")
            if item in seen:
                raise _refuse(where, f"clients[{index}]", f"repeats clients[{seen.index(item)}]; list each client "
                                                          f"key once.")
            seen.append(item)
        clients = tuple(seen)

    rules: list[EgressRule] = []
    for index, item in enumerate(_parse_list(doc.get("egress", []), where, "egress", "egress rules")):
        rule = _parse_rule(item, where, f"egress[{index}]")
        if rule in rules:
            raise _refuse(where, f"egress[{index}]", f"repeats egress[{rules.index(rule)}]; list each rule once.")
        rules.append(rule)

    debug = doc.get("debug", False)
    if not isinstance(debug, bool):
        raise _refuse(where, "debug", f"is {_type_name(debug)}; write true or false.")

    logs: list[str] = []
    for index, item in enumerate(_parse_list(doc.get("logs", list(LOG_SOURCES)), where, "logs",
                                             f"log sources ({' and '.join(LOG_SOURCES)})")):
        if item not in LOG_SOURCES:
            shown = repr(item[:40]) if isinstance(item, str) else _type_name(item)
            raise _refuse(where, f"logs[{index}]", f"is {shown}, not a known log source; write "
                                                   f"{' or '.join(LOG_SOURCES)}.")
        assert isinstance(item, str)
        if item in logs:
            raise _refuse(where, f"logs[{index}]", f"repeats {item!r}; list each log source once.")
        logs.append(item)

    return RuntimePolicy(clients=clients, egress=tuple(rules), debug=debug, logs=tuple(logs))


# ---------------------------------------------------------------------------------------------
# RFC 8785 (JSON Canonicalization Scheme), for the value types a runtime policy uses.

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

JsonValue: TypeAlias = "None | bool | int | str | list[JsonValue] | dict[str, JsonValue]"


def _jcs_string(text: str) -> str:
    # RFC 8785 section 3.2.2.2: the two-character escapes where JSON has them, \u00xx in lower-case hex
    # for the other control characters, every other character (non-ASCII and "/" included) as itself.
    out = ['"']
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        elif "\ud800" <= char <= "\udfff":
            raise InternalError(f"a lone surrogate (U+{ord(char):04X}) cannot be serialised as I-JSON.")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _jcs(value: JsonValue) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        # JCS serialises numbers as ECMAScript does doubles; an integer within 2**53 is its decimal form.
        if abs(value) > _MAX_SAFE_INTEGER:
            raise InternalError(f"the integer {value} is not exactly representable in I-JSON.")
        return str(value)
    if isinstance(value, str):
        return _jcs_string(value)
    if isinstance(value, list):
        return "[" + ",".join(_jcs(item) for item in value) + "]"
    if isinstance(value, dict):
        # Members sorted by the UTF-16 code units of their names (RFC 8785 section 3.2.3).
        keys = sorted(value, key=lambda name: name.encode("utf-16-be"))
        return "{" + ",".join(_jcs_string(key) + ":" + _jcs(value[key]) for key in keys) + "}"
    raise InternalError(f"{type(value).__name__} is not a value type of the runtime policy's JSON.")


def jcs(value: JsonValue) -> bytes:
    """``value`` in RFC 8785 canonical form, UTF-8 encoded (null, booleans, integers, strings, lists, objects)."""
    return _jcs(value).encode("utf-8")


def _rule_order(rule: EgressRule) -> tuple[int, int, int, int, str]:
    return (rule.network.version, int(rule.network.network_address), rule.network.prefixlen, rule.port,
            rule.protocol)


def to_json_value(policy: RuntimePolicy) -> dict[str, JsonValue]:
    """The runtime policy as the JSON object that is canonicalised: lists sorted, ingress fixed, version 1."""
    egress: list[JsonValue] = [
        {"network": str(rule.network), "port": rule.port, "protocol": rule.protocol}
        for rule in sorted(policy.egress, key=_rule_order)]
    clients: JsonValue = None if policy.clients is None else list(sorted(policy.clients))
    logs: list[JsonValue] = list(sorted(policy.logs))
    return {"version": VERSION, "clients": clients, "egress": egress, "ingress": INGRESS,
            "debug": policy.debug, "logs": logs}


def canonical_json(policy: RuntimePolicy) -> bytes:
    """The runtime policy's canonical serialisation: RFC 8785 JSON of :func:`to_json_value`.

    Egress rules are sorted by IP version, network address (numerically), prefix length, port and
    protocol; client digests and log sources by their text; so the order in which a recipe lists
    them does not change the bytes or the digest.
    """
    return jcs(to_json_value(policy))


def runtime_policy_sha256(policy: RuntimePolicy) -> bytes:
    """SHA-256 (32 bytes) of :func:`canonical_json`: the runtime policy digest a guest commits to."""
    return hashlib.sha256(canonical_json(policy)).digest()


def cmdline_word(policy: RuntimePolicy) -> str:
    """The word a build appends to the measured kernel command line: ``blindbox.runtime_policy=<hex>``."""
    return f"{CMDLINE_PARAM}={runtime_policy_sha256(policy).hex()}"


def from_json_value(value: object, where: str) -> RuntimePolicy:
    """The runtime policy in its canonical object form (:func:`to_json_value`, as a manifest carries it).

    Every member must be there, ``version`` must be 1 and ``ingress`` ``"agent-only"``; the rest is
    checked as :func:`parse_runtime_policy` checks a recipe's section.
    """
    if not isinstance(value, Mapping):
        problem = f"is {_type_name(value)}, not the canonical runtime policy object."
        raise RuntimePolicyError(f"{where}: runtime_policy {problem}", problem=problem)
    members = {"version", "clients", "egress", "ingress", "debug", "logs"}
    if set(value) != members:
        extra, missing = sorted(set(map(str, value)) - members), sorted(members - set(value))
        problem = ("has " + ", ".join(f"the unknown member {k!r}" for k in extra) if extra else
                   "lacks " + ", ".join(missing)) + f"; the canonical form has exactly {', '.join(sorted(members))}."
        raise RuntimePolicyError(f"{where}: runtime_policy {problem}", problem=problem)
    if value["version"] != VERSION or isinstance(value["version"], bool):
        raise _refuse(where, "version", f"is {value['version']!r}; this blindbox reads runtime policy version "
                                        f"{VERSION} only.")
    if value["ingress"] != INGRESS:
        raise _refuse(where, "ingress", f"is {value['ingress']!r}, not {INGRESS!r}.")
    return parse_runtime_policy({k: value[k] for k in _KEYS}, where)


def parse_canonical(data: bytes, where: str) -> RuntimePolicy:
    """The runtime policy from its canonical bytes (the guest's copy); bytes that are not exactly the
    canonical form of what they describe are refused, so the digest of ``data`` is the policy's."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        problem = f"is not JSON ({e})."
        raise RuntimePolicyError(f"{where}: runtime_policy {problem}", problem=problem) from None
    policy = from_json_value(value, where)
    if canonical_json(policy) != data:
        problem = "is not in canonical form (RFC 8785, rules sorted); its digest would not be the runtime policy's."
        raise RuntimePolicyError(f"{where}: runtime_policy {problem}", problem=problem)
    return policy


def manifest_record(policy: RuntimePolicy) -> dict[str, JsonValue]:
    """The ``runtime_policy`` section of manifest.json: the canonical object and its SHA-256 (hex)."""
    return {"sha256": runtime_policy_sha256(policy).hex(), "policy": to_json_value(policy)}


# ---------------------------------------------------------------------------------------------
# Plain words.

def _destination(rule: EgressRule) -> str:
    network = rule.network
    if network.num_addresses == 1:
        address = str(network.network_address)
        where = f"[{address}]:{rule.port}" if network.version == 6 else f"{address}:{rule.port}"
    else:
        where = f"any address in {network} on port {rule.port}"
    return f"{where} over {rule.protocol.upper()}"


def describe(policy: RuntimePolicy) -> list[str]:
    """The runtime policy in plain words, one statement a line, in a fixed order."""
    lines: list[str] = []
    if policy.clients is None:
        lines.append("any client that completes attestation may query the service")
    else:
        lines.append("only clients presenting one of these TLS keys may query (SHA-256 of the "
                     "SubjectPublicKeyInfo): " + ", ".join(sorted(policy.clients)))
    lines.append("only the attestation agent's port is reachable from outside the guest; the application "
                 "listens on loopback")
    rules = sorted(policy.egress, key=_rule_order)
    if not rules:
        lines.append("the application may reach nothing outside the guest")
    elif len(rules) == 1:
        lines.append(f"the application may reach {_destination(rules[0])} and nothing else")
    else:
        lines.append("the application may reach " + ", ".join(_destination(rule) for rule in rules[:-1])
                     + f" and {_destination(rules[-1])}, and nothing else")
    if policy.debug:
        lines.append("debugging is ON: the guest may be inspected, which exposes the data inside it")
    else:
        lines.append("debugging is off")
    sources = set(policy.logs)
    if sources == {"app", "agent"}:
        logs = "the application's and the attestation agent's own output may leave the guest on the console"
    elif sources == {"app"}:
        logs = "the application's own output may leave the guest on the console, the attestation agent's may not"
    elif sources == {"agent"}:
        logs = "the attestation agent's own output may leave the guest on the console, the application's may not"
    else:
        logs = "neither the application's nor the attestation agent's output may leave the guest on the console"
    lines.append(logs)
    lines.append("kernel errors and init's status lines always reach the console")
    return lines


def _egress_rule(rule: EgressRule) -> str:
    net, port, protocol = ipaddress.ip_network(rule.network), rule.port, rule.protocol
    family = "ip" if net.version == 4 else "ip6"
    # a host is written as its address, as `nft list ruleset` prints it
    dest = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    return f"{family} daddr {dest} {protocol} dport {port} ct state new accept"


def render_ruleset(policy: RuntimePolicy, *, agent_listen: int | None = None,
                   simulated_attester: tuple[str, int] | None = None) -> str:
    """The ``nft -f`` text of ``policy``: one ``table inet`` (IPv4 and IPv6), base chains
    ``input``, ``forward`` and ``output`` with policy drop.  Input accepts loopback, established
    flows and the agent's port; output accepts loopback, established flows, the agent's connection
    to a simulated attester (as uid 0 only) and one rule per egress rule; with an IPv6 egress rule,
    neighbour discovery too (docs/runtime-policy.md, :mod:`builder.steps.nft`).

    ``agent_listen``: the attestation agent's TCP port (None: no agent, no inbound port);
    ``simulated_attester``: (IPv4 address, port) the agent reaches for reports in simulation.
    """
    # in the canonical form's order (IP version, address, prefix length, port, protocol)
    egress = sorted(policy.egress, key=lambda r: (r.network.version, int(r.network.network_address),
                                                  r.network.prefixlen, r.port, r.protocol))
    rules = [_egress_rule(r) for r in egress]
    ipv6 = any(r.network.version == 6 for r in egress)
    lines = [f"table inet {NFT_TABLE} {{",
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
