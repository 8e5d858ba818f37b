"""The recipe's `runtime_policy:` section: refusals at file:line, and its checks against the rest of the recipe."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest

from builder.recipe import KERNEL_DEBUG_PARAMS

from .test_recipe import BASE, ROOT, error, parse

ROOTFS = BASE + """rootfs:
  directory: app/
  network: true
agent: {}
"""
POLICY_LINE = 25


def test_an_empty_section_is_the_strictest_runtime_policy():
    spec = parse(ROOTFS + "runtime_policy: {}\n").runtime_policy
    assert spec is not None and spec.line == POLICY_LINE
    p = spec.policy
    assert (p.clients, p.egress, p.debug, p.logs) == (None, (), False, ("app", "agent"))
    assert parse(ROOTFS + "runtime_policy:\n").runtime_policy.policy == p
    assert parse(ROOTFS).runtime_policy is None


def test_every_key_is_read():
    d = "ab" * 32
    spec = parse(ROOTFS + f"""runtime_policy:
  clients: [{d}]
  egress:
    - {{network: 192.0.2.10, port: 8443, protocol: tcp}}
    - {{network: "2001:db8::/32", port: 53, protocol: udp}}
  debug: false
  logs: [app]
""").runtime_policy
    assert spec.policy.clients == (d,)
    assert [(str(r.network), r.port, r.protocol) for r in spec.policy.egress] == [
        ("192.0.2.10/32", 8443, "tcp"), ("2001:db8::/32", 53, "udp")]
    assert spec.policy.egress[1].network == ipaddress.ip_network("2001:db8::/32")
    assert spec.policy.logs == ("app",)


@pytest.mark.parametrize("body, line, key, words", [
    ("  egres: []\n", 26, "runtime_policy.egres", "is not a known key; a runtime policy has clients, egress"),
    ("  ingress: [8443]\n", 26, "runtime_policy.ingress", "only the attestation agent's port"),
    ("  egress:\n    - network: 192.0.2.10/24\n      port: 443\n      protocol: tcp\n", 27,
     "runtime_policy.egress[0].network", "has host bits set; write 192.0.2.0/24"),
    ("  egress:\n    - network: 192.0.2.10\n      port: 0\n      protocol: tcp\n", 28,
     "runtime_policy.egress[0].port", "is 0; a port is a number from 1 to 65535"),
    ("  egress:\n    - network: 192.0.2.10\n      port: 70000\n      protocol: tcp\n", 28,
     "runtime_policy.egress[0].port", "is 70000"),
    ("  egress:\n    - {network: 192.0.2.10, port: 1, protocol: tcp}\n"
     "    - {network: 192.0.2.10/32, port: 1, protocol: tcp}\n", 28,
     "runtime_policy.egress[1]", "repeats egress[0]"),
    ("  egress:\n    - {network: api.example.com, port: 443, protocol: tcp}\n", 27,
     "runtime_policy.egress[0].network", "is the host name 'api.example.com'; write an IP address"),
    ("  egress:\n    - {network: 192.0.2.10, port: 443, protocol: icmp}\n", 27,
     "runtime_policy.egress[0].protocol", "is 'icmp'; write tcp or udp"),
    ("  egress:\n    - {network: 192.0.2.10, port: 443}\n", 27,
     "runtime_policy.egress[0].protocol", "is missing"),
    ("  clients: [abc]\n", 26, "runtime_policy.clients[0]", "not 64 lower-case hex digits"),
    ("  clients: []\n", 26, "runtime_policy.clients", "is an empty list"),
    ("  debug: yes please\n", 26, "runtime_policy.debug", "write true or false"),
    ("  logs: [kernel]\n", 26, "runtime_policy.logs[0]", "not a known log source"),
    ("  debug: true\n  debug: false\n", 27, "runtime_policy.debug", "'debug' is given twice (first at line 26)"),
])
def test_refusals_name_file_line_and_key(body, line, key, words):
    e = error(ROOTFS + "runtime_policy:\n" + body)
    assert f"/recipes/r.yaml:{line}: {key} " in str(e) or f"/recipes/r.yaml:{line}: {key}: " in str(e), str(e)
    assert words in str(e)
    assert e.line == line


def test_a_digest_yaml_reads_as_a_number_is_told_to_be_quoted():
    e = error(ROOTFS + "runtime_policy:\n  clients: [" + "1" * 64 + "]\n")
    assert "runtime_policy.clients[0] is an integer, not 64 lower-case hex digits" in str(e)
    assert "quote it, so that YAML does not read it as a number" in str(e)


def test_a_list_instead_of_a_mapping():
    e = error(ROOTFS + "runtime_policy: [egress]\n")
    assert f"r.yaml:{POLICY_LINE}: runtime_policy is a list; write a mapping" in str(e)


def test_needs_a_rootfs():
    e = error(BASE + "runtime_policy: {}\n")
    assert "r.yaml:21: runtime_policy: a runtime policy restricts the application in the root filesystem" in str(e)


def test_egress_needs_the_network():
    e = error(BASE + "rootfs:\n  directory: app/\nruntime_policy:\n  egress:\n"
                     "    - {network: 192.0.2.10, port: 443, protocol: tcp}\n")
    assert "r.yaml:24: runtime_policy.egress: egress rules need the network, but rootfs (line 21)" in str(e)
    # without egress rules a root without network may have a runtime policy
    assert parse(BASE + "rootfs:\n  directory: app/\nruntime_policy: {logs: []}\n").runtime_policy.policy.logs == ()


def test_client_keys_need_the_agent():
    e = error(BASE + "rootfs:\n  directory: app/\n  network: true\nruntime_policy:\n  clients: [" + "0a" * 32 + "]\n")
    assert "r.yaml:25: runtime_policy.clients: only the attestation agent can check client keys" in str(e)


def test_debug_off_refuses_the_guest_policy_debug_bit():
    text = ROOTFS + "launch:\n  policy: 0xb0000\nruntime_policy: {}\n"
    e = error(text)
    assert "r.yaml:26: launch.policy: 0xb0000 sets the SNP guest policy's DEBUG bit (19)" in str(e)
    assert "runtime_policy (line 27) has debug: false" in str(e)
    assert parse(text.replace("runtime_policy: {}", "runtime_policy: {debug: true}")).launch.policy == 0xB0000
    # without a runtime policy the guest policy is the recipe's business (verify-report checks the bit)
    assert parse(ROOTFS + "launch:\n  policy: 0xb0000\n").launch.policy == 0xB0000


@pytest.mark.parametrize("word", ["debug", "kgdboc=ttyS1", "kgdbwait", "rdinit=/bin/sh", "init=/bin/sh",
                                  "sysrq_always_enabled", "dyndbg=+p", "virtio_net.dyndbg=+p", "ftrace=function"])
def test_debug_off_refuses_kernel_debug_parameters(word):
    text = ROOTFS.replace('cmdline: "console=ttyS0"', f'cmdline: "console=ttyS0 {word}"') + "runtime_policy: {}\n"
    assert word in text
    e = error(text)
    assert f"cmdline: {word[:60]!r} is a kernel debugging option" in str(e)
    assert "has debug: false; remove it, or set runtime_policy.debug: true" in str(e)
    assert parse(text.replace("runtime_policy: {}", "runtime_policy: {debug: true}")).runtime_policy.policy.debug


def test_the_debug_parameter_list_is_plain_names():
    assert all("=" not in p and " " not in p for p in KERNEL_DEBUG_PARAMS)


def test_only_the_build_writes_the_runtime_policy_parameter():
    for text in (ROOTFS, ROOTFS + "runtime_policy: {}\n"):
        e = error(text.replace('cmdline: "console=ttyS0"', 'cmdline: "console=ttyS0 blindbox.runtime_policy=00"'))
        assert "cmdline: blindbox.runtime_policy is set by the build from runtime_policy; remove it" in str(e)


def test_cli_exits_2_on_a_bad_runtime_policy(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(ROOTFS + "runtime_policy:\n  egress:\n    - {network: 10.0.0.1/8, port: 53, protocol: udp}\n")
    p = subprocess.run([sys.executable, "-m", "blindbox.cli", "lock", str(bad)], capture_output=True, text=True,
                       cwd=ROOT)
    assert p.returncode == 2, p.stderr
    assert f"{bad}:27: runtime_policy.egress[0].network is '10.0.0.1/8', which has host bits set" in p.stderr
    assert "Traceback" not in p.stderr


def test_a_runtime_policy_brings_debians_nft_into_the_initrd():
    recipe = parse(ROOTFS + "runtime_policy: {}\n")
    nft = recipe.runtime_policy.nft
    assert nft is not None and recipe.initrd.binaries[-1] == nft
    assert (nft.path, nft.dest, nft.line) == ("/usr/sbin/nft", "/usr/sbin/nft", POLICY_LINE)
    src = nft.source
    assert (src.name, src.kind, src.package, src.suite, src.arch, src.member) == (
        "binary:/usr/sbin/nft", "debian", "nftables", "bookworm", "amd64", "/usr/sbin/nft")
    assert src in recipe.inputs()
    assert all(b.dest != "/usr/sbin/nft" for b in parse(ROOTFS).initrd.binaries)


def test_an_initrd_that_places_nft_itself_is_refused():
    text = ROOTFS.replace('  init:\n', '  binaries:\n    - {debian: nftables, suite: bookworm, path: /usr/sbin/nft}\n'
                                       '  init:\n', 1) + "runtime_policy: {}\n"
    msg = str(error(text))
    assert f"r.yaml:{POLICY_LINE + 2}: " in msg
    assert "the initrd already places /usr/sbin/nft (line 15)" in msg and "remove it from the initrd" in msg


def test_the_lock_pins_nft_and_its_libraries(tmp_path):
    from builder.lock import check_lock, lock_recipe
    from builder.recipe import load_recipe

    from .fakes import FakeArchive

    a = FakeArchive(tmp_path / "archive")
    a.add("ovmf-amdsev", "2026.08-1", "sid", {"/usr/share/ovmf/OVMF.amdsev.fd": b"fw1"})
    a.add("linux-image-6.1.0-1-amd64", "6.1.1-1", "bookworm", {"/boot/vmlinuz-6.1.0-1-amd64": b"k1"})
    a.add("linux-image-amd64", "6.1.1-1", "bookworm", {}, depends=["linux-image-6.1.0-1-amd64"])
    a.add("busybox-static", "1:1.35-4", "bookworm", {"/bin/busybox": b"bb"})
    a.add("dmsetup", "2:1.02.185-2", "bookworm", {"/sbin/dmsetup": b"dm"}, depends=["libc6"])
    a.add("nftables", "1.0.6-2", "bookworm", {"/usr/sbin/nft": b"nft"}, depends=["libnftables1", "libc6"])
    a.add("libnftables1", "1.0.6-2", "bookworm", {"/usr/lib/libnftables.so.1": b"l"}, depends=["libc6"])
    a.add("libc6", "2.36-9", "bookworm", {"/lib/x86_64-linux-gnu/libc.so.6": b"libc"})
    d = tmp_path / "r"
    (d / "app").mkdir(parents=True)
    (d / "app" / "run").write_text("#!/bin/sh\n")
    (d / "r.yaml").write_text(ROOTFS.replace("agent: {}\n", "") + "runtime_policy: {}\n")
    recipe = load_recipe(d / "r.yaml")
    lock = lock_recipe(recipe, a).lock
    names = lock.names()
    assert "binary:/usr/sbin/nft" in names and "library:libnftables1" in names, names
    assert lock.get("binary:/usr/sbin/nft").version == "1.0.6-2"
    check_lock(recipe, lock)
