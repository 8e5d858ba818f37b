"""The runtime policy: strict reader, RFC 8785 canonical form, digest vector and plain words."""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json

import pytest

from measure import attested_tls
from measure import runtime_policy as rp
from measure.errors import InputError, InternalError

WHERE = "recipes/x.yaml"
CLIENT_A = "1f" * 32                       # sorts before CLIENT_B
CLIENT_B = "a0" * 32

#: The sample runtime policy of docs/runtime-policy.md, as a recipe would write it.
SAMPLE = {
    "clients": [CLIENT_B, CLIENT_A],
    "egress": [
        {"network": "2001:db8::/32", "port": 53, "protocol": "udp"},
        {"network": "192.0.2.10", "port": 8443, "protocol": "tcp"},
        {"network": "198.51.100.0/24", "port": 123, "protocol": "udp"},
    ],
    "debug": False,
    "logs": ["app"],
}
SAMPLE_CANONICAL = (
    b'{"clients":["' + CLIENT_A.encode() + b'","' + CLIENT_B.encode() + b'"],"debug":false,'
    b'"egress":[{"network":"192.0.2.10/32","port":8443,"protocol":"tcp"},'
    b'{"network":"198.51.100.0/24","port":123,"protocol":"udp"},'
    b'{"network":"2001:db8::/32","port":53,"protocol":"udp"}],'
    b'"ingress":"agent-only","logs":["app"],"version":1}')
#: Published in docs/runtime-policy.md.
SAMPLE_SHA256 = "f71a69061b3e6b7e7d25dc236f4987407cbcc49e812e92f2615cbac712ea6beb"


def parse(doc):
    return rp.parse_runtime_policy(doc, WHERE)


# --- RFC 8785 -------------------------------------------------------------------------------

def test_jcs_string_escaping_rfc8785_example():
    """RFC 8785 section 3.2.2.2's string: control characters as \\u00xx in lower case, '/' and non-ASCII as is."""
    value = json.loads(r'"\u20ac$\u000F\u000aA\u0027\u0042\u0022\u005c\\\"\/"')
    assert rp.jcs(value) == '"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"'.encode()


@pytest.mark.parametrize("text, expected", [
    ("\x00", b'"\\u0000"'),
    ("\x1f", b'"\\u001f"'),
    ("\x0b", b'"\\u000b"'),
    ("\b\f\n\r\t", b'"\\b\\f\\n\\r\\t"'),
    ('"\\', b'"\\"\\\\"'),
    ("/", b'"/"'),
    ("\x7f", b'"\x7f"'),
    ("é€😀", '"é€😀"'.encode()),
])
def test_jcs_string_escapes(text, expected):
    assert rp.jcs(text) == expected


def test_jcs_key_order_is_by_utf16_code_units():
    """RFC 8785 section 3.2.3's names: U+1F600 (surrogates D83D DE00) sorts before U+FB33."""
    names = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    doc = {name: index for index, name in enumerate(names)}
    out = rp.jcs(doc).decode()
    assert out == '{"\\r":1,"1":3,"\u0080":5,"\u00f6":6,"\u20ac":0,"\U0001f600":4,"\ufb33":2}'


def test_jcs_values_and_no_whitespace():
    doc = {"b": [True, False, None, 0, -1, 2**53 - 1], "a": {"y": "", "x": []}}
    assert rp.jcs(doc) == b'{"a":{"x":[],"y":""},"b":[true,false,null,0,-1,9007199254740991]}'


@pytest.mark.parametrize("value, message", [
    (2**53, "not exactly representable"),
    ("\ud800", "lone surrogate"),
    (1.5, "float is not a value type"),
])
def test_jcs_refuses_what_it_cannot_serialise(value, message):
    with pytest.raises(InternalError, match=message):
        rp.jcs(value)


# --- canonical form and digest ---------------------------------------------------------------

def test_default_canonical_form():
    assert rp.canonical_json(rp.RuntimePolicy()) == (
        b'{"clients":null,"debug":false,"egress":[],"ingress":"agent-only","logs":["agent","app"],"version":1}')
    assert parse({}) == rp.RuntimePolicy()


def test_sample_digest_vector():
    policy = parse(SAMPLE)
    assert rp.canonical_json(policy) == SAMPLE_CANONICAL
    digest = rp.runtime_policy_sha256(policy)
    assert digest == hashlib.sha256(SAMPLE_CANONICAL).digest()
    assert digest.hex() == SAMPLE_SHA256
    # it is what attested TLS binds
    assert len(attested_tls.report_data(b"spki", bytes(32), digest)) == 64


def test_order_in_the_recipe_does_not_change_the_digest():
    expected = rp.runtime_policy_sha256(parse(SAMPLE))
    for rules in itertools.permutations(SAMPLE["egress"]):
        for clients in (SAMPLE["clients"], SAMPLE["clients"][::-1]):
            doc = {"logs": ["agent", "app"], "egress": list(rules), "clients": clients}
            other = {**doc, "logs": ["app", "agent"]}
            assert rp.runtime_policy_sha256(parse(doc)) == rp.runtime_policy_sha256(parse(other))
            assert rp.runtime_policy_sha256(parse({**doc, "logs": ["app"]})) == expected


@pytest.mark.parametrize("change", [
    {"clients": None},
    {"clients": [CLIENT_A]},
    {"debug": True},
    {"logs": []},
    {"logs": ["app", "agent"]},
    {"egress": SAMPLE["egress"][:2]},
    {"egress": [{**SAMPLE["egress"][0], "port": 54}] + SAMPLE["egress"][1:]},
    {"egress": [{**SAMPLE["egress"][0], "protocol": "tcp"}] + SAMPLE["egress"][1:]},
    {"egress": [{**SAMPLE["egress"][0], "network": "2001:db8::/48"}] + SAMPLE["egress"][1:]},
])
def test_every_value_changes_the_digest(change):
    assert rp.runtime_policy_sha256(parse({**SAMPLE, **change})).hex() != SAMPLE_SHA256


def test_ipv4_and_ipv6_networks():
    policy = parse({"egress": [
        {"network": "192.0.2.10", "port": 1, "protocol": "tcp"},
        {"network": "10.0.0.0/8", "port": 65535, "protocol": "udp"},
        {"network": "2001:DB8:0:0::1", "port": 443, "protocol": "tcp"},
        {"network": "::/0", "port": 443, "protocol": "udp"},
    ]})
    assert [rule.network for rule in policy.egress] == [
        ipaddress.IPv4Network("192.0.2.10/32"), ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv6Network("2001:db8::1/128"), ipaddress.IPv6Network("::/0")]
    assert b'"network":"2001:db8::1/128"' in rp.canonical_json(policy)
    assert b'"network":"::/0"' in rp.canonical_json(policy)


# --- refusals --------------------------------------------------------------------------------

def rule(**fields):
    return {"network": "192.0.2.10", "port": 443, "protocol": "tcp", **fields}


@pytest.mark.parametrize("doc, message", [
    ("clients: []", "runtime_policy is a string; write a mapping"),
    ({"egres": []}, "runtime_policy.egres is not a known key; a runtime policy has clients, egress, debug, logs."),
    ({"ingress": "all"}, "runtime_policy.ingress cannot be set, because only the attestation agent's port"),
    ({"egress": {"network": "192.0.2.10"}}, "runtime_policy.egress is a mapping; write a list of egress rules."),
    ({"egress": ["192.0.2.10:443"]}, "runtime_policy.egress[0] is a string; each egress rule is a mapping"),
    ({"egress": [rule(host="x")]}, "runtime_policy.egress[0].host is not a known key; an egress rule has exactly"),
    ({"egress": [{"network": "192.0.2.10", "port": 443}]}, "runtime_policy.egress[0].protocol is missing"),
    ({"egress": [rule(network="192.0.2.10/24")]},
     "runtime_policy.egress[0].network is '192.0.2.10/24', which has host bits set; write 192.0.2.0/24 if that "
     "network was meant"),
    ({"egress": [rule(network="2001:db8::1/32")]}, "has host bits set; write 2001:db8::/32 if that network"),
    ({"egress": [rule(network="api.example.com")]},
     "runtime_policy.egress[0].network is the host name 'api.example.com'; write an IP address or a CIDR instead, "
     "because a name would be resolved outside the measurement."),
    ({"egress": [rule(network="localhost")]}, "a name would be resolved outside the measurement"),
    ({"egress": [rule(network="192.0.2.300")]}, "'192.0.2.300', which is not an IP address or a CIDR"),
    ({"egress": [rule(network="192.0.2.10:443")]}, "'192.0.2.10:443', which is not an IP address or a CIDR"),
    ({"egress": [rule(network="fe80::1%eth0")]}, "which has a zone index (after %)"),
    ({"egress": [rule(network=3221225994)]}, "runtime_policy.egress[0].network is an integer; write an IP address"),
    ({"egress": [rule(port=0)]}, "runtime_policy.egress[0].port is 0; a port is a number from 1 to 65535."),
    ({"egress": [rule(port=70000)]}, "runtime_policy.egress[0].port is 70000; a port is a number from 1 to 65535."),
    ({"egress": [rule(port=-1)]}, "port is -1; a port is a number from 1 to 65535."),
    ({"egress": [rule(port="443")]}, "port is a string; write a port number from 1 to 65535."),
    ({"egress": [rule(port=True)]}, "port is a boolean; write a port number"),
    ({"egress": [rule(protocol="icmp")]}, "runtime_policy.egress[0].protocol is 'icmp'; write tcp or udp."),
    ({"egress": [rule(protocol="TCP")]}, "protocol is 'TCP'; write tcp or udp."),
    ({"egress": [rule(protocol=None)]}, "protocol is null; write tcp or udp."),
    ({"egress": [rule(), rule(port=80), rule(network="192.0.2.10/32")]},
     "runtime_policy.egress[2] repeats egress[0]; list each rule once."),
    ({"clients": CLIENT_A}, "runtime_policy.clients is a string; write a list of SHA-256 digests"),
    ({"clients": []}, "runtime_policy.clients is an empty list, which would let no client query the service"),
    ({"clients": [CLIENT_A.upper()]}, "runtime_policy.clients[0] is '" + CLIENT_A.upper()
     + "', not 64 lower-case hex digits"),
    ({"clients": [CLIENT_A, CLIENT_B[:63]]}, "runtime_policy.clients[1] is '" + CLIENT_B[:63] + "', not 64"),
    ({"clients": [7]}, "runtime_policy.clients[0] is an integer, not 64 lower-case hex digits"),
    ({"clients": [CLIENT_A, CLIENT_B, CLIENT_A]}, "runtime_policy.clients[2] repeats clients[0]"),
    ({"debug": "no"}, "runtime_policy.debug is a string; write true or false."),
    ({"debug": 0}, "runtime_policy.debug is an integer; write true or false."),
    ({"logs": "app"}, "runtime_policy.logs is a string; write a list of log sources (app and agent)."),
    ({"logs": ["app", "kernel"]}, "runtime_policy.logs[1] is 'kernel', not a known log source; write app or agent."),
    ({"logs": ["agent", "agent"]}, "runtime_policy.logs[1] repeats 'agent'; list each log source once."),
])
def test_refusals(doc, message):
    with pytest.raises(rp.RuntimePolicyError) as caught:
        rp.parse_runtime_policy(doc, WHERE)
    text = str(caught.value)
    assert text.startswith(WHERE + ": runtime_policy")
    assert message in text
    assert isinstance(caught.value, InputError) and caught.value.exit_code == 2
    # one sentence
    assert text.endswith(".") and "\n" not in text


# --- plain words ------------------------------------------------------------------------------

def test_describe_defaults():
    assert rp.describe(rp.RuntimePolicy()) == [
        "any client that completes attestation may query the service",
        "only the attestation agent's port is reachable from outside the guest; the application listens on loopback",
        "the application may reach nothing outside the guest",
        "debugging is off",
        "the application's and the attestation agent's own output may leave the guest on the console",
        "kernel errors and init's status lines always reach the console",
    ]


def test_describe_one_rule():
    lines = rp.describe(parse({"egress": [rule(network="192.0.2.10", port=8443)]}))
    assert "the application may reach 192.0.2.10:8443 over TCP and nothing else" in lines


def test_describe_sample():
    lines = rp.describe(parse({**SAMPLE, "debug": True}))
    assert lines[0] == ("only clients presenting one of these TLS keys may query (SHA-256 of the "
                        f"SubjectPublicKeyInfo): {CLIENT_A}, {CLIENT_B}")
    assert lines[2] == ("the application may reach 192.0.2.10:8443 over TCP, any address in 198.51.100.0/24 on port "
                        "123 over UDP and any address in 2001:db8::/32 on port 53 over UDP, and nothing else")
    assert lines[3].startswith("debugging is ON")
    assert lines[4] == ("the application's own output may leave the guest on the console, the attestation agent's "
                        "may not")


@pytest.mark.parametrize("logs, expected", [
    (["agent"], "the attestation agent's own output may leave the guest on the console, the application's may not"),
    ([], "neither the application's nor the attestation agent's output may leave the guest on the console"),
])
def test_describe_logs(logs, expected):
    assert expected in rp.describe(parse({"logs": logs}))


def test_describe_ipv6_host():
    lines = rp.describe(parse({"egress": [rule(network="2001:db8::1", protocol="udp", port=53)]}))
    assert "the application may reach [2001:db8::1]:53 over UDP and nothing else" in lines


# -- the canonical object, as a manifest and the guest carry it --------------------------------

def test_canonical_bytes_read_back_to_the_same_runtime_policy():
    policy = parse(SAMPLE)          # read back in canonical order, so compare canonical forms
    back = rp.parse_canonical(SAMPLE_CANONICAL, "guest")
    assert rp.canonical_json(back) == rp.canonical_json(policy) and back.clients == (CLIENT_A, CLIENT_B)
    assert rp.canonical_json(rp.from_json_value(json.loads(SAMPLE_CANONICAL), "m.json")) == SAMPLE_CANONICAL
    default = rp.RuntimePolicy()
    assert rp.canonical_json(rp.parse_canonical(rp.canonical_json(default), "guest")) == rp.canonical_json(default)


def test_manifest_record_and_cmdline_word():
    policy = parse(SAMPLE)
    record = rp.manifest_record(policy)
    assert record == {"sha256": SAMPLE_SHA256, "policy": json.loads(SAMPLE_CANONICAL)}
    assert rp.cmdline_word(policy) == f"blindbox.runtime_policy={SAMPLE_SHA256}"
    assert rp.CMDLINE_PARAM == "blindbox.runtime_policy" and rp.GUEST_PATH == "/etc/blindbox/runtime-policy.json"


@pytest.mark.parametrize("data, words", [
    (SAMPLE_CANONICAL.replace(b'"version":1}', b'"version":1} '), "is not in canonical form"),
    (SAMPLE_CANONICAL.replace(b",", b", ", 1), "is not in canonical form"),
    (SAMPLE_CANONICAL.replace(b'"version":1', b'"version":2'), "runtime_policy.version is 2; this blindbox reads"),
    (SAMPLE_CANONICAL.replace(b'"version":1', b'"version":true'), "runtime_policy.version is True"),
    (SAMPLE_CANONICAL.replace(b'"agent-only"', b'"any"'), "runtime_policy.ingress is 'any', not 'agent-only'"),
    (SAMPLE_CANONICAL.replace(b',"version":1', b''), "lacks version; the canonical form has exactly"),
    (SAMPLE_CANONICAL.replace(b'"version":1', b'"version":1,"zz":0'), "has the unknown member 'zz'"),
    (SAMPLE_CANONICAL.replace(b'"port":53', b'"port":0'), "runtime_policy.egress[2].port is 0"),
    (b"[]", "runtime_policy is a list, not the canonical runtime policy object"),
    (b"{", "runtime_policy is not JSON"),
    (b"\xff", "runtime_policy is not JSON"),
])
def test_canonical_bytes_that_are_not_exactly_canonical_are_refused(data, words):
    with pytest.raises(rp.RuntimePolicyError) as ei:
        rp.parse_canonical(data, "initrd:/etc/blindbox/runtime-policy.json")
    assert str(ei.value).startswith("initrd:/etc/blindbox/runtime-policy.json: runtime_policy")
    assert words in str(ei.value)


def test_refusals_carry_the_key_path_and_the_problem():
    with pytest.raises(rp.RuntimePolicyError) as ei:
        parse({"egress": [{"network": "192.0.2.1", "port": 0, "protocol": "tcp"}]})
    assert (ei.value.path, ei.value.problem) == ("egress[0].port", "is 0; a port is a number from 1 to 65535.")
