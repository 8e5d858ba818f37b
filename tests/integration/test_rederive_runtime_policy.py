"""blindbox rederive: the runtime policy the initrd carries and loads is the one the manifest publishes.

The attack this closes: a publisher ships an initrd whose rule set (or policy JSON) is not the
published policy's, and republishes everything the initrd determines (its sha256, the kernel
hashes, every launch digest, launch-snp.sh's files table), so that every other check agrees.
:func:`republish` does exactly that, so the runtime policy findings are the only ones that fail.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from blindbox.audit import rederive as rederive_module
from blindbox.audit.provenance import PROVENANCE, provenance_json
from blindbox.cli import main
from builder.steps.cpio import Archive, Kind
from measure import runtime_policy as rp
from measure.cpio import parse
from measure.kernel_hashes import KernelHashes
from measure.ovmf import Firmware
from measure.snp import SnpLaunch, VmShape
from measure.vmm import profile

from .hellobuild import built_hello
from .test_runtime_policy_build import variants  # noqa: F401  (the shared runtime policy builds)

pytestmark = [pytest.mark.integration, pytest.mark.network]

JSON_NAME, NFT_NAME = f"initrd {rp.GUEST_PATH}", f"initrd {rp.RULESET_PATH}"
PERMISSIVE = (b"table inet blindbox {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
              b"\t}\n\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t}\n}\n")


@pytest.fixture
def bundle(variants, tmp_path):  # noqa: F811
    out = tmp_path / "bundle"
    shutil.copytree(variants["base"], out)
    return out


def rederive(bundle: Path, capsys) -> tuple[int, dict[str, dict], str]:
    capsys.readouterr()
    rc = main(["rederive", str(bundle), "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if rc == 2:
        return rc, {}, err
    return rc, {f["name"]: f for f in json.loads(out)["findings"]}, out + err


def failed(findings: dict[str, dict]) -> list[str]:
    return sorted(name for name, f in findings.items() if not f["ok"])


def republish(bundle: Path, initrd: bytes) -> None:
    """Replace the bundle's initrd and republish every value it determines, as a dishonest publisher would."""
    doc = json.loads((bundle / "manifest.json").read_text())
    rec = next(o for o in doc["outputs"] if o["role"] == "initrd")
    old = rec["sha256"]
    (bundle / rec["file"]).write_bytes(initrd)
    rec["sha256"], rec["size"] = hashlib.sha256(initrd).hexdigest(), len(initrd)
    hashes = KernelHashes.from_files(bundle / "bzImage", bundle / rec["file"], (bundle / "cmdline").read_bytes())
    doc["kernel_hashes"]["initrd"] = hashes.initrd.hex()
    fw_file = next(o["file"] for o in doc["outputs"] if o["role"] == "firmware")
    launch = SnpLaunch(Firmware.load(bundle / fw_file))
    for m in doc["measurements"]:
        assert "id_block" not in m  # the bundle has no ID blocks to re-sign
        shape = VmShape(m["vcpus"], int(m["vcpu_sig"], 16), int(m["guest_features"], 16), profile(m["vmm_profile"]))
        m["measurement"] = launch.measure(shape, hashes).digest.hex()
    (bundle / "manifest.json").write_text(json.dumps(doc, indent=2))
    script = bundle / "launch-snp.sh"
    script.write_text(script.read_text().replace(old, rec["sha256"]))


def republish_launch_rows(bundle: Path, before: dict) -> None:
    """launch-snp.sh's shapes table carries every launch digest: replace the old ones by the new, and publish
    the script's new sha256."""
    after = json.loads((bundle / "manifest.json").read_text())
    rec = next(o for o in after["outputs"] if o["role"] == "launch")
    script = bundle / rec["file"]
    text = script.read_text()
    for a, b in zip(before["measurements"], after["measurements"], strict=True):
        text = text.replace(a["measurement"], b["measurement"])
    script.write_text(text)
    rec["sha256"], rec["size"] = hashlib.sha256(script.read_bytes()).hexdigest(), script.stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(after, indent=2))


def attack(bundle: Path, initrd: bytes) -> None:
    before = json.loads((bundle / "manifest.json").read_text())
    republish(bundle, initrd)
    republish_launch_rows(bundle, before)
    data = (bundle / "manifest.json").read_bytes()
    (bundle / PROVENANCE).write_bytes(provenance_json(json.loads(data), data))  # and the provenance


def repacked(bundle: Path, replace: dict[str, bytes]) -> bytes:
    """The bundle's (uncompressed) initrd written again with some files' contents replaced."""
    a = Archive()
    for m in parse((bundle / "initrd").read_bytes()):
        kind = Kind(m.mode & 0o170000)
        if kind == Kind.DIR:
            a.add_dir(m.name, m.mode & 0o7777)
        elif kind == Kind.SYMLINK:
            a.add_symlink(m.name, m.data.decode())
        elif kind == Kind.CHAR:
            a.add_char_device(m.name, *m.rdev, mode=m.mode & 0o7777)
        else:
            a.add_file(m.name, replace.get("/" + m.name, m.data), m.mode & 0o7777)
    return a.to_bytes(mtime=parse((bundle / "initrd").read_bytes())[0].mtime)


def raw_member(name: str, data: bytes) -> bytes:
    """One newc member (a regular file), without the parent directories an Archive adds."""
    fields = (1, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
    out = bytearray(b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0")
    out += bytes(-len(out) % 4) + data
    return bytes(out + bytes(-len(out) % 4))


def appended(bundle: Path, files: dict[str, bytes], *, compressed: bool) -> bytes:
    """The bundle's initrd with a second archive of ``files`` appended, as the kernel reads it."""
    a = Archive()
    for path, data in files.items():
        a.add_file(path, data)
    extra = a.to_bytes(mtime=0)
    return (bundle / "initrd").read_bytes() + (gzip.compress(extra) if compressed else extra)


def test_the_built_bundle_carries_and_loads_its_runtime_policy(bundle, capsys):
    rc, findings, out = rederive(bundle, capsys)
    assert rc == 0, out
    assert findings[JSON_NAME]["ok"] and findings[NFT_NAME]["ok"] and findings["initrd init"]["ok"]
    assert "agent port 8443, simulated attester 10.0.2.100:4050" in findings[NFT_NAME]["detail"]
    assert findings["initrd init"]["detail"] == ("checks the runtime policy's digest, loads its rule set and starts "
                                                 "the agent with it")


def test_repacking_reproduces_the_initrd_and_republishing_a_changed_one_passes_every_other_check(bundle, capsys):
    assert repacked(bundle, {}) == (bundle / "initrd").read_bytes()
    attack(bundle, (bundle / "initrd").read_bytes() + bytes(512))  # NUL padding: the same files
    rc, findings, out = rederive(bundle, capsys)
    assert rc == 0, out
    assert not findings["kernel_hashes"]["detail"].endswith(json.loads(out)["findings"][0]["detail"])


def test_a_repacked_initrd_with_a_permissive_rule_set_fails(bundle, capsys):
    attack(bundle, repacked(bundle, {rp.RULESET_PATH: PERMISSIVE}))
    rc, findings, out = rederive(bundle, capsys)
    assert rc == 3 and failed(findings) == [NFT_NAME], out
    assert findings[NFT_NAME]["detail"] == (
        "differs from the rule set rendered from the published runtime policy: line 3 is "
        "'\\t\\ttype filter hook input priority filter; policy accept;', the manifest's runtime policy gives "
        "'\\t\\ttype filter hook input priority filter; policy drop;'")


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_an_appended_archive_with_a_permissive_rule_set_fails(bundle, capsys, compressed):
    attack(bundle, appended(bundle, {rp.RULESET_PATH: PERMISSIVE}, compressed=compressed))
    rc, findings, out = rederive(bundle, capsys)
    assert rc == 3 and failed(findings) == [NFT_NAME], out
    assert "line 3 is '\\t\\ttype filter hook input priority filter; policy accept;'" in findings[NFT_NAME]["detail"]


def test_a_changed_policy_json_fails(bundle, capsys):
    doc = json.loads((bundle / "manifest.json").read_text())
    other = rp.from_json_value({**doc["runtime_policy"]["policy"], "debug": True}, "test")
    attack(bundle, appended(bundle, {rp.GUEST_PATH: rp.canonical_json(other)}, compressed=True))
    rc, findings, out = rederive(bundle, capsys)
    assert rc == 3 and failed(findings) == [JSON_NAME], out
    assert findings[JSON_NAME]["detail"].startswith("holds b'{\"clients\":[\"a0a0")
    assert "\"debug\":true" in findings[JSON_NAME]["detail"]


def test_a_rule_set_reached_through_a_symlink_fails(bundle, capsys):
    a = Archive()
    a.add_file("tmp/evil/runtime-policy.nft", PERMISSIVE)
    a.add_symlink("tmp/x", "/etc/blindbox")
    first = a.to_bytes(mtime=0)
    # written raw: an Archive would add tmp/x as a directory first, and the kernel would replace the symlink
    attack(bundle, (bundle / "initrd").read_bytes() + first + raw_member("tmp/x/runtime-policy.nft", PERMISSIVE)
           + raw_member("TRAILER!!!", b""))
    rc, findings, out = rederive(bundle, capsys)
    assert rc == 3 and NFT_NAME in failed(findings), out
    assert findings[NFT_NAME]["detail"] == ("the initrd writes 'tmp/x/runtime-policy.nft' through the symlink "
                                            "'tmp/x', so what /etc/blindbox/runtime-policy.nft holds cannot be told "
                                            "from the archive")


def test_an_init_that_does_not_start_the_agent_with_the_policy_fails(bundle, capsys):
    init = (bundle / "initrd").read_bytes()
    text = next(m.data for m in parse(init) if m.name == "init")
    assert text.count(b" --runtime-policy /etc/blindbox/runtime-policy.json ") == 1
    attack(bundle, repacked(bundle, {"/init": text.replace(b" --runtime-policy /etc/blindbox/runtime-policy.json ",
                                                           b" ")}))
    rc, findings, out = rederive(bundle, capsys)
    assert rc == 3 and failed(findings) == ["initrd init"], out
    assert "does not contain '--runtime-policy /etc/blindbox/runtime-policy.json'" in findings["initrd init"]["detail"]


def test_a_manifest_without_a_runtime_policy_whose_initrd_carries_one_fails(tmp_path, capsys):
    bundle = tmp_path / "hello"
    shutil.copytree(built_hello().out, bundle)
    rc, findings, out = rederive(bundle, capsys)
    assert rc == 0 and findings["initrd runtime policy"]["ok"], out
    attack(bundle, appended(bundle, {rp.RULESET_PATH: PERMISSIVE}, compressed=True))
    rc, findings, out = rederive(bundle, capsys)
    assert rc == 3 and failed(findings) == ["initrd runtime policy"], out
    assert findings["initrd runtime policy"]["detail"] == ("the manifest publishes no runtime policy, but the initrd "
                                                           "carries /etc/blindbox/runtime-policy.nft")


def test_a_truncated_initrd_fails_its_finding_in_one_sentence(bundle, capsys):
    data = (bundle / "initrd").read_bytes()
    attack(bundle, data[:len(data) // 2])
    rc, findings, out = rederive(bundle, capsys)
    assert rc == 3 and failed(findings) == ["initrd runtime policy"], out
    detail = findings["initrd runtime policy"]["detail"]
    assert detail.startswith("cannot be read: the initrd ") and "is truncated" in detail and "\n" not in detail


def test_an_initrd_beyond_the_member_limit_fails_its_finding(bundle, capsys, monkeypatch):
    monkeypatch.setattr(rederive_module, "MAX_INITRD_MEMBERS", 100)
    rc, findings, out = rederive(bundle, capsys)
    assert rc == 3 and failed(findings) == ["initrd runtime policy"], out
    assert ("holds more than 100 cpio members; that is more than an initrd holds, so it is refused"
            in findings["initrd runtime policy"]["detail"])
