"""Recipes with an id_block: validation, key pins, the ID block files of every shape, launch-snp.sh.

The pipeline runs with the in-memory archive and the stand-in kernel and initrd steps of
test_pipeline.py; the keys are derived from labels (tests/builder/keys.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from builder.errors import InputDigestMismatch, RecipeError
from builder.lock import lock_recipe, write_lock
from builder.manifest import Manifest, ManifestError
from builder.pipeline import BuildRequest, build
from builder.recipe import check_id_keys, load_recipe
from blindbox.audit.idblock import IdAuthInfo, IdBlock, key_digest, verify_id_auth

from .fakes import FakeArchive
from .keys import derived_key, write_key, write_test_keys
from .test_launch import DOCUMENTED_SNP_GUEST, check_qapi_value, options, props
from .test_pipeline import RECIPE, STEPS, hello_archive
from .test_recipe import BASE, error, parse

ID_BLOCK = """\
id_block:
  id_key: keys/id.pem
  author_key: keys/author.pem
  family_id: "00112233445566778899aabbccddeeff"
  image_id: "ffeeddccbbaa99887766554433221100"
  guest_svn: 7
"""


# --------------------------------------------------------------------------------------
# the recipe section
# --------------------------------------------------------------------------------------

def test_id_block_section_parses_with_launch_policy_as_default():
    r = parse(BASE + "launch:\n  policy: 0x70000\n" + ID_BLOCK)
    spec = r.id_block
    assert spec.id_key.file == "keys/id.pem" and spec.author_key.file == "keys/author.pem"
    assert spec.family_id == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert spec.image_id == bytes.fromhex("ffeeddccbbaa99887766554433221100")
    assert spec.guest_svn == 7 and spec.policy == 0x70000
    assert [s.name for s in r.inputs()][-2:] == ["id_key", "author_key"]
    assert r.inputs()[-1].wants() == {"file": "keys/author.pem"}
    minimal = parse(BASE + "id_block:\n  id_key: id.pem\n  policy: 0x30000\n").id_block
    assert (minimal.author_key, minimal.family_id, minimal.image_id, minimal.guest_svn, minimal.policy) == \
        (None, bytes(16), bytes(16), 0, 0x30000)
    assert parse(BASE).id_block is None


@pytest.mark.parametrize("text, line, key, words", [
    (BASE + "launch:\n  policy: 0x30000\nid_block:\n  id_key: k.pem\n  policy: 0x70000\n", 25, "id_block.policy",
     "0x70000 is not the launch policy 0x30000 (launch.policy at line 22)"),
    (BASE + "id_block:\n  id_key: k.pem\n  policy: 0x70000\n", 23, "id_block.policy",
     "since launch.policy is not given"),
    (BASE + "id_block:\n  id_key: k.pem\n  family_id: \"0011\"\n", 23, "id_block.family_id",
     "is not 16 bytes; write exactly 32 hex digits"),
    (BASE + "id_block:\n  id_key: k.pem\n  image_id: \"" + "0" * 34 + "\"\n", 23, "id_block.image_id",
     "is not 16 bytes"),
    (BASE + "id_block:\n  id_key: k.pem\n  image_id: \"" + "zz" * 16 + "\"\n", 23, "id_block.image_id",
     "is not 16 bytes"),
    (BASE + "id_block:\n  id_key: k.pem\n  family_id: " + "0" * 32 + "\n", 23, "id_block.family_id",
     "quoted string of 32 hex digits"),
    (BASE + "id_block:\n  author_key: a.pem\n", 21, "id_block.id_key", "missing required key 'id_key'"),
    (BASE + "id_block:\n  id_key: /etc/key.pem\n", 22, "id_block.id_key", "relative to the recipe's directory"),
    (BASE + "id_block:\n  id_key: ../key.pem\n", 22, "id_block.id_key", "without '..'"),
    (BASE + "id_block:\n  id_key: k.pem\n  guest_svn: 0x100000000\n", 23, "id_block.guest_svn", "out of range"),
    (BASE + "id_block:\n  id_key: k.pem\n  idkey: x\n", 23, "id_block.idkey", "Did you mean 'id_key'?"),
])
def test_id_block_errors_name_file_line_and_key(text, line, key, words):
    e = error(text)
    assert (e.line, e.key) == (line, key), str(e)
    assert str(e).startswith(f"/recipes/r.yaml:{line}: {key}: ") and words in str(e), str(e)


def _recipe_with_keys(tmp_path: Path, id_key=None, author_key=None):
    (tmp_path / "r.yaml").write_text(BASE + ID_BLOCK)
    write_test_keys(tmp_path)
    if id_key is not None:
        (tmp_path / "keys" / "id.pem").write_bytes(id_key)
    if author_key is not None:
        (tmp_path / "keys" / "author.pem").write_bytes(author_key)
    return load_recipe(tmp_path / "r.yaml")


@pytest.mark.parametrize("which, setup, line, words", [
    ("id", lambda d: (d / "keys" / "id.pem").unlink(), 22, "cannot read the ID key file"),
    ("id", lambda d: write_key(d / "keys" / "id.pem", derived_key("p256", ec.SECP256R1())), 22,
     "is not an ECDSA P-384 key"),
    ("author", lambda d: (d / "keys" / "author.pem").write_text("not a key\n"), 23,
     "is not a private key in PEM or DER"),
    ("author", lambda d: (d / "keys" / "author.pem").unlink() or (d / "keys" / "author.pem").mkdir(), 23,
     "is a directory"),
])
def test_unusable_keys_are_recipe_errors_at_their_line(tmp_path, which, setup, line, words):
    recipe = _recipe_with_keys(tmp_path)
    setup(tmp_path)
    key = f"id_block.{which}_key"
    with pytest.raises(RecipeError) as ei:
        check_id_keys(recipe)
    e = ei.value
    assert (e.line, e.key, e.path) == (line, key, str(tmp_path / "r.yaml")), str(e)
    assert str(e).startswith(f"{tmp_path / 'r.yaml'}:{line}: {key}: ") and words in str(e), str(e)
    with pytest.raises(RecipeError):           # lock refuses to pin it too
        lock_recipe(recipe, FakeArchive(tmp_path / "archive"))


def test_cli_lock_with_a_wrong_curve_key_exits_2(tmp_path, monkeypatch, capsys):
    from blindbox.cli import main

    _recipe_with_keys(tmp_path)
    write_key(tmp_path / "keys" / "id.pem", derived_key("p256", ec.SECP256R1()))
    monkeypatch.setenv("BLINDBOX_CACHE", str(tmp_path / "cache"))
    assert main(["lock", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'r.yaml'}:22: id_block.id_key: " in err and "P-384" in err and "Traceback" not in err
    assert not (tmp_path / "r.lock").exists()


# --------------------------------------------------------------------------------------
# the build
# --------------------------------------------------------------------------------------

def keyed_env(tmp_path: Path, *, author: bool = True) -> SimpleNamespace:
    archive = hello_archive(tmp_path)
    d = tmp_path / "recipe"
    d.mkdir()
    section = ID_BLOCK if author else ID_BLOCK.replace("  author_key: keys/author.pem\n", "")
    (d / "t.yaml").write_text(RECIPE + section)
    (d / "app.conf").write_text("greeting=hello\n")
    write_test_keys(d, author=author)
    recipe = load_recipe(d / "t.yaml")
    write_lock(recipe.lock_path, lock_recipe(recipe, archive).lock)
    return SimpleNamespace(archive=archive, recipe=recipe, out=tmp_path / "out" / "t", cache=tmp_path / "cache")


def run(env, **kw):
    return build(BuildRequest(recipe=env.recipe.path, out=env.out, cache_root=env.cache, **kw), steps=STEPS,
                 archive=env.archive)


@pytest.fixture
def env(tmp_path):
    return keyed_env(tmp_path)


def stem(shape: str) -> str:
    return shape.replace(":", "_")


def test_every_shape_gets_a_signed_id_block_and_the_manifest_names_it(env):
    res = run(env)
    m = json.loads((env.out / "manifest.json").read_bytes())
    shapes = [e["shape"] for e in m["measurements"]]
    assert len(shapes) == 8
    expected = {"OVMF.amdsev.fd", "bzImage", "cmdline", "initrd", "launch-snp.sh", "manifest.json",
                "provenance.intoto.json"}
    expected |= {stem(s) + suffix for s in shapes
                 for suffix in (".id-block.b64", ".id-auth.b64", ".id-block.bin", ".id-auth.bin")}
    assert {p.name for p in env.out.iterdir()} == expected
    id_pub = derived_key("id")
    author_pub = derived_key("author")
    roles = {o["file"]: o["role"] for o in m["outputs"]}
    for e in m["measurements"]:
        # the verify-report contract comes first, unchanged; the ID block fields follow
        assert list(e) == ["shape", "mode", "vmm_profile", "vcpus", "vcpu_type", "vcpu_sig", "guest_features",
                           "measurement", "id_block", "id_auth", "id_key_digest", "author_key_digest"]
        s = stem(e["shape"])
        assert (e["id_block"], e["id_auth"]) == (s + ".id-block.b64", s + ".id-auth.b64")
        assert e["id_key_digest"] == key_digest(id_pub).hex()
        assert e["author_key_digest"] == key_digest(author_pub).hex()
        assert (roles[s + ".id-block.b64"], roles[s + ".id-auth.b64"], roles[s + ".id-block.bin"],
                roles[s + ".id-auth.bin"]) == ("id-block", "id-auth", "id-block-bin", "id-auth-bin")
        block = (env.out / (s + ".id-block.bin")).read_bytes()
        auth = (env.out / (s + ".id-auth.bin")).read_bytes()
        assert base64.b64decode((env.out / e["id_block"]).read_bytes()) == block
        assert base64.b64decode((env.out / e["id_auth"]).read_bytes()) == auth
        text = (env.out / e["id_block"]).read_bytes()
        assert text.endswith(b"\n") and b"\n" not in text[:-1]                 # one line of base64
        assert (len(block), len(auth)) == (0x60, 0x1000)
        ib = IdBlock.from_bytes(block)
        assert ib.ld.hex() == e["measurement"]                      # signs this shape's digest
        assert (ib.family_id.hex(), ib.image_id.hex(), ib.guest_svn, ib.policy) == \
            ("00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100", 7, 0x30000)
        info = verify_id_auth(block, auth)                          # both signatures verify
        assert hashlib.sha384(info.id_pubkey.to_bytes()).hexdigest() == e["id_key_digest"]
        assert hashlib.sha384(info.author_pubkey.to_bytes()).hexdigest() == e["author_key_digest"]
    assert m["launch"]["id_block"] == {"family_id": "00112233445566778899aabbccddeeff",
                                       "image_id": "ffeeddccbbaa99887766554433221100", "guest_svn": 7,
                                       "policy": "0x30000", "author_key": True}
    assert len({e["id_block"] for e in m["measurements"]}) == 8
    assert Manifest.from_json((env.out / "manifest.json").read_bytes()).to_json() == \
        (env.out / "manifest.json").read_bytes()
    assert res.manifest.measurement(shapes[0]).id_key_digest == key_digest(id_pub).hex()


def test_keys_are_pinned_inputs_and_never_leave_the_recipe(env):
    run(env)
    m = json.loads((env.out / "manifest.json").read_bytes())
    pins = {i["name"]: i for i in m["inputs"]}
    for name, file in (("id_key", "keys/id.pem"), ("author_key", "keys/author.pem")):
        data = (env.recipe.directory / file).read_bytes()
        assert (pins[name]["kind"], pins[name]["sha256"], pins[name]["origin"]) == \
            ("file", hashlib.sha256(data).hexdigest(), f"file:{file}")
    secrets = [(env.recipe.directory / f).read_bytes() for f in ("keys/id.pem", "keys/author.pem")]
    scalars = [k.private_numbers().private_value.to_bytes(48, order)
               for k in (derived_key("id"), derived_key("author")) for order in ("big", "little")]
    for p in env.out.iterdir():
        data = p.read_bytes()
        assert b"PRIVATE KEY" not in data, p.name
        for secret in secrets + scalars:
            assert secret not in data and base64.b64encode(secret) not in data, p.name


def test_rebuild_is_byte_identical_and_noop_covers_id_files(env, tmp_path):
    run(env)
    first = {p.name: p.read_bytes() for p in env.out.iterdir()}
    other = SimpleNamespace(**{**vars(env), "out": tmp_path / "elsewhere" / "t"})
    run(other)
    assert {p.name: p.read_bytes() for p in other.out.iterdir()} == first   # deterministic ECDSA
    assert run(env).up_to_date
    name = next(n for n in first if n.endswith(".id-auth.b64"))
    (env.out / name).write_bytes(b"tampered\n")
    assert not run(env).up_to_date and (env.out / name).read_bytes() == first[name]


def test_changed_key_file_names_the_input(env):
    write_key(env.recipe.directory / "keys" / "id.pem", derived_key("another id"))
    with pytest.raises(InputDigestMismatch) as ei:
        run(env)
    msg = str(ei.value)
    assert "input 'id_key'" in msg and "--update --input id_key" in msg
    assert "not the launch measurement" in msg and "changes the measurement" not in msg
    pinned = json.loads(env.recipe.lock_path.read_bytes())["inputs"]
    assert ei.value.expected == next(i["sha256"] for i in pinned if i["name"] == "id_key")
    assert ei.value.actual == hashlib.sha256((env.recipe.directory / "keys" / "id.pem").read_bytes()).hexdigest()
    assert ei.value.expected in msg and ei.value.actual in msg


def test_cli_build_with_a_key_that_became_unusable_exits_2_at_its_line(env, monkeypatch, capsys):
    """The key is checked before anything is fetched: a RecipeError at its line, not a digest mismatch."""
    from blindbox.cli import main
    from builder import pipeline

    real_build = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda req, **kw: real_build(req, archive=env.archive, steps=STEPS, **kw))
    monkeypatch.setenv("BLINDBOX_CACHE", str(env.cache))
    (env.recipe.directory / "keys" / "author.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    assert main(["build", str(env.recipe.path), "--out", str(env.out)]) == 2
    err = capsys.readouterr().err
    line = RECIPE.count("\n") + 3                     # id_block:, id_key:, author_key:
    assert f"{env.recipe.path}:{line}: id_block.author_key: the author key " in err, err
    assert "Traceback" not in err and not env.out.exists()


def test_without_author_key(tmp_path):
    env = keyed_env(tmp_path, author=False)
    run(env)
    m = json.loads((env.out / "manifest.json").read_bytes())
    e = m["measurements"][0]
    assert e["author_key_digest"] is None and m["launch"]["id_block"]["author_key"] is False
    auth = IdAuthInfo.from_bytes((env.out / (stem(e["shape"]) + ".id-auth.bin")).read_bytes())
    assert auth.auth_key_algo == 0 and auth.author_pubkey.to_bytes() == bytes(0x404)
    assert [i["name"] for i in m["inputs"]][-1] == "id_key"


# --------------------------------------------------------------------------------------
# launch-snp.sh
# --------------------------------------------------------------------------------------

@pytest.fixture
def fake_qemu(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv.bin"
    (bindir / "qemu-system-x86_64").write_text(f"#!/bin/sh\nprintf '%s\\0' \"$0\" \"$@\" > '{record}'\n")
    (bindir / "qemu-system-x86_64").chmod(0o755)
    return bindir, record


def launch(bundle: Path, fake_qemu, *args):
    bindir, record = fake_qemu
    record.unlink(missing_ok=True)
    p = subprocess.run([str(bundle / "launch-snp.sh"), *args], capture_output=True,
                       env={"PATH": f"{bindir}:/usr/bin:/bin", "LANG": "C"})
    return p, (record.read_bytes().split(b"\0")[:-1] if record.exists() else None)


def snp_object(argv) -> dict[str, str]:
    return next(kv for kind, kv in (props(v) for v in options(argv)["-object"]) if kind == "sev-snp-guest")


@pytest.mark.parametrize("author", [True, False])
def test_launch_script_passes_the_shapes_id_block(tmp_path, fake_qemu, author):
    env = keyed_env(tmp_path, author=author)
    run(env)
    m = Manifest.from_json((env.out / "manifest.json").read_bytes())
    for shape in ("qemu:EPYC-Genoa:4:0x21", "qemu:EPYC-v4:1:0x1"):
        p, argv = launch(env.out, fake_qemu, "--shape", shape)
        assert p.returncode == 0, p.stderr
        snp = snp_object(argv)
        for name, value in snp.items():
            if name != "id":
                assert name in DOCUMENTED_SNP_GUEST, name
                check_qapi_value(name, value)
        entry = m.measurement(shape)
        assert snp["id-block"] == (env.out / entry.id_block).read_text().strip()
        assert snp["id-auth"] == (env.out / entry.id_auth).read_text().strip()
        assert len(base64.b64decode(snp["id-block"], validate=True)) == 96      # QEMU: 96-byte blob
        assert len(base64.b64decode(snp["id-auth"], validate=True)) == 4096     # QEMU: 4096-byte blob
        assert IdBlock.from_bytes(base64.b64decode(snp["id-block"])).ld.hex() == entry.measurement
        assert snp["author-key-enabled"] == ("on" if author else "off")
        assert int(snp["policy"], 0) == IdBlock.from_bytes(base64.b64decode(snp["id-block"])).policy
    # a tampered ID block file is caught by the script's sha256 check before QEMU runs
    (env.out / m.measurements[0].id_auth).write_text("AAAA\n")
    p, argv = launch(env.out, fake_qemu, "--shape", m.measurements[0].shape)
    assert p.returncode == 2 and argv is None and m.measurements[0].id_auth.encode() in p.stderr


def test_launch_script_without_id_block_passes_none(tmp_path, fake_qemu):
    env = keyed_env(tmp_path)
    (env.recipe.path).write_text(RECIPE)
    recipe = load_recipe(env.recipe.path)
    write_lock(recipe.lock_path, lock_recipe(recipe, env.archive).lock)
    run(env)
    p, argv = launch(env.out, fake_qemu)
    assert p.returncode == 0, p.stderr
    assert not {"id-block", "id-auth", "author-key-enabled"} & set(snp_object(argv))


def test_manifest_refuses_incomplete_id_fields(env):
    run(env)
    doc = json.loads((env.out / "manifest.json").read_bytes())
    doc["measurements"][0]["id_key_digest"] = "00"
    with pytest.raises(ManifestError, match=r"measurements\[0\].id_key_digest is \"00\", not 96 "):
        Manifest.from_dict(doc)
    doc = json.loads((env.out / "manifest.json").read_bytes())
    for k in ("id_block", "id_auth"):
        del doc["measurements"][0][k]
    with pytest.raises(ManifestError, match=r"measurements\[0\].id_block is missing"):
        Manifest.from_dict(doc)


def test_relocking_a_changed_key_is_not_a_measurement_change(env):
    """`lock --update --input id_key` re-pins the key; the launch digests stay, the ID blocks change."""
    previous = json.loads(env.recipe.lock_path.read_bytes())
    from builder.lock import read_lock
    write_key(env.recipe.directory / "keys" / "id.pem", derived_key("another id"))
    res = lock_recipe(env.recipe, env.archive, previous=read_lock(env.recipe.lock_path), update=True,
                      only=("id_key",))
    assert [c.name for c in res.key_changes] == ["id_key"]
    assert res.measured_changes == []
    assert [c.name for c in res.changed_pins] == ["id_key"]
    assert previous["inputs"] != [i.to_dict() for i in res.lock.inputs]
