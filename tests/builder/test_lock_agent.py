"""Lock pins of the attestation agent's runtime: `agent:<package>`, the same closure as a Debian root's."""

from __future__ import annotations

import pytest

from builder.errors import BuildError
from builder.lock import LockMismatch, check_lock, lock_recipe, parse_lock

from .fakes import FakeArchive
from .test_lock_rootfs import HEAD, relock

AGENT = "rootfs:\n  directory: app/\n  network: true\nagent: {attester: simulated}\n"


@pytest.fixture
def archive(tmp_path):
    a = FakeArchive(tmp_path / "archive")
    a.add("ovmf-amdsev", "2026.08-1", "sid", {"/usr/share/ovmf/OVMF.amdsev.fd": b"fw1"})
    a.add("linux-image-6.1.0-1-amd64", "6.1.1-1", "bookworm", {"/boot/vmlinuz-6.1.0-1-amd64": b"k1"})
    a.add("linux-image-amd64", "6.1.1-1", "bookworm", {}, depends=["linux-image-6.1.0-1-amd64"])
    a.add("busybox-static", "1:1.35-4", "bookworm", {"/bin/busybox": b"bb"})
    a.add("dmsetup", "2:1.02.185-2", "bookworm", {"/sbin/dmsetup": b"dm"}, depends=["libc6"])
    a.add("libc6", "2.36-9", "bookworm", {"/lib/x86_64-linux-gnu/libc.so.6": b"libc"})
    a.add("python3.11-minimal", "3.11.2-6", "bookworm", {"/usr/bin/python3.11": b"py"},
          depends=["libpython3.11-minimal", "libc6"])
    a.add("libpython3.11-minimal", "3.11.2-6", "bookworm", {"/usr/lib/python3.11/os.py": b"os"})
    a.add("libpython3.11-stdlib", "3.11.2-6", "bookworm", {"/usr/lib/python3.11/ssl.py": b"ssl"},
          depends=["libssl3"])
    a.add("openssl", "3.0.22-1", "bookworm", {"/usr/bin/openssl": b"o"}, depends=["libssl3"])
    a.add("libssl3", "3.0.22-1", "bookworm", {"/usr/lib/x86_64-linux-gnu/libssl.so.3": b"s"}, depends=["libc6"])
    return a


def write(tmp_path, text: str):
    d = tmp_path / "r"
    d.mkdir(parents=True, exist_ok=True)
    (d / "app").mkdir(exist_ok=True)
    (d / "app" / "x").write_text("x")
    (d / "t.yaml").write_text(HEAD + text)
    return d / "t.yaml"


def test_the_agents_packages_and_their_closure_are_pinned(tmp_path, archive):
    r, result = relock(write(tmp_path, AGENT), archive)
    pins = {i.name: i for i in result.lock.inputs if i.name.startswith("agent:")}
    assert sorted(pins) == ["agent:libc6", "agent:libpython3.11-minimal", "agent:libpython3.11-stdlib",
                            "agent:libssl3", "agent:openssl", "agent:python3.11-minimal"]
    assert all(p.kind == "debian" and p.wants == r.agent.wants() for p in pins.values())
    assert pins["agent:openssl"].version == "3.0.22-1"
    lock = parse_lock(result.lock.to_json(), tmp_path / "r" / "t.lock")
    check_lock(r, lock)                      # what lock wrote is what build accepts


def test_pins_are_kept_and_only_updated_on_request(tmp_path, archive):
    path = write(tmp_path, AGENT)
    r, first = relock(path, archive)
    archive.add("openssl", "3.0.23-1", "bookworm", {"/usr/bin/openssl": b"o2"}, depends=["libssl3"])
    _, kept = relock(path, archive, previous=first.lock)
    assert kept.lock.get("agent:openssl").version == "3.0.22-1" and not kept.changes
    _, updated = relock(path, archive, previous=first.lock, update=True, only=["agent"])
    assert updated.lock.get("agent:openssl").version == "3.0.23-1"
    assert [c.name for c in updated.changed_pins] == ["agent:openssl"]


def test_input_agent_is_refused_without_an_agent(tmp_path, archive):
    path = write(tmp_path, "rootfs:\n  directory: app/\n  network: true\n")
    with pytest.raises(BuildError, match="--input 'agent' is not an input of"):
        relock(path, archive, update=True, only=["agent"])


def test_a_lock_without_the_agent_or_with_a_stray_one_is_refused(tmp_path, archive):
    with_agent, locked = relock(write(tmp_path, AGENT), archive)
    without = [i for i in locked.lock.inputs if not i.name.startswith("agent:")]
    short = type(locked.lock)(locked.lock.recipe, tuple(i for i in without))
    with pytest.raises(LockMismatch, match=r"input 'agent:python3.11-minimal' \(Debian package python3.11-minimal "
                                           r"of the attestation agent\) is declared in .* but not pinned"):
        check_lock(with_agent, short)
    plain = write(tmp_path, "rootfs:\n  directory: app/\n  network: true\n")
    from builder.recipe import load_recipe
    with pytest.raises(LockMismatch, match="pins the attestation agent's package 'libc6', but .* has no agent"):
        check_lock(load_recipe(plain), locked.lock)


def test_a_dependency_the_suite_does_not_have_names_the_chain(tmp_path, archive):
    archive.add("openssl", "3.0.24-1", "bookworm", {"/usr/bin/openssl": b"o3"}, depends=["libssl3", "no-such"])
    from builder.errors import SourceError
    with pytest.raises(SourceError, match=r"agent: the package no-such, needed by openssl -> no-such, cannot be "
                                          r"pinned.*to the agent's packages"):
        relock(write(tmp_path, AGENT), archive)


def test_lock_recipe_accepts_agent_entries_in_its_own_order(tmp_path, archive):
    r, result = relock(write(tmp_path, AGENT), archive)
    names = result.lock.names()
    assert names.index("rootfs") < names.index("agent:libc6")      # rootfs, then the agent's pins, sorted
    again = lock_recipe(r, archive, previous=result.lock)
    assert again.lock.to_json() == result.lock.to_json()


def test_build_refuses_a_lock_without_the_agents_pins_with_exit_status_2(tmp_path, archive):
    import subprocess
    import sys

    from builder.lock import write_lock
    from tests.builder.test_recipe import ROOT

    path = write(tmp_path, AGENT)
    r, result = relock(path, archive)
    stripped = type(result.lock)(result.lock.recipe, tuple(i for i in result.lock.inputs
                                                            if not i.name.startswith("agent:")))
    write_lock(r.lock_path, stripped)
    p = subprocess.run([sys.executable, "-m", "blindbox.cli", "build", str(path), "--out", str(tmp_path / "out"),
                        "--offline"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert "input 'agent:python3.11-minimal' (Debian package python3.11-minimal of the attestation agent) is " \
           "declared in" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()
