"""The manifest's rootfs section: read by the one reader, checked against the measured cmdline, re-derived."""

from __future__ import annotations

import copy
import hashlib
import json
import uuid

import pytest

from blindbox.audit.errors import VerificationError
from blindbox.audit.manifest import ManifestInvalid, ManifestMalformed, check_manifest
from blindbox.audit.rederive import _rootfs_findings
from measure import verity
from measure.errors import InputError
from tests.audit.manifestdoc import entry, manifest_doc

RECIPE_SHA, LOCK_SHA = hashlib.sha256(b"recipe").hexdigest(), hashlib.sha256(b"lock").hexdigest()  # manifestdoc's
SALT = verity.derived_salt(RECIPE_SHA, LOCK_SHA)
VUUID = verity.derived_uuid("verity", RECIPE_SHA, LOCK_SHA)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def bundle(tmp_path):
    return _make_bundle(tmp_path)


def _make_bundle(tmp_path, cmdline_tail: str = ""):
    """A bundle directory with a 7-block image and its hash file, and a manifest doc describing them
    (``cmdline_tail`` is appended to the measured cmdline)."""
    image = bytes((i * 7) & 0xFF for i in range(7 * 4096))
    (tmp_path / "rootfs.erofs").write_bytes(image)
    params = verity.VerityParams(salt=SALT, uuid=VUUID)
    tree = verity.format_files(tmp_path / "rootfs.erofs", tmp_path / "rootfs.verity", params)
    table = tree.table("/dev/vda", "/dev/vdb")
    cmdline = f'console=ttyS0 {verity.CMDLINE_PARAM}="{table}"{cmdline_tail}'
    doc = manifest_doc([entry(1, "EPYC-v4", 1, "ab" * 48)], cmdline=cmdline)
    hashes = (tmp_path / "rootfs.verity").read_bytes()
    doc["outputs"] += [{"file": "rootfs.erofs", "role": "rootfs", "sha256": _sha(image), "size": len(image)},
                       {"file": "rootfs.verity", "role": "rootfs-verity", "sha256": _sha(hashes),
                        "size": len(hashes)}]
    doc["rootfs"] = {
        "image": {"file": "rootfs.erofs", "format": "erofs", "uuid": str(uuid.UUID(int=3)), "tree_sha256": "cd" * 32},
        "verity": {"file": "rootfs.verity", "table": table, "hash_type": 1, "algorithm": "sha256",
                   "data_block_size": 4096, "hash_block_size": 4096, "data_blocks": 7, "hash_start_block": 1,
                   "salt": SALT.hex(), "uuid": str(VUUID), "root_hash": tree.root_hash.hex(),
                   "on_corruption": "eio"},
        "app": {"argv": ["/bin/app", ""], "env": ["PATH=/bin"], "workdir": "/", "uid": 1000, "gid": 1000},
        "network": True,
        "sources": [{"kind": "debian", "name": "busybox-static", "version": "1:1.35", "sha256": "ef" * 32,
                     "size": 1}],
    }
    return tmp_path, doc


def _copy(doc):
    return json.loads(json.dumps(doc))


def test_a_consistent_rootfs_section_is_accepted(bundle):
    _, doc = bundle
    assert check_manifest(_copy(doc)) is not None


@pytest.mark.parametrize("change, path, kind", [
    (lambda d: d["rootfs"]["verity"].update(root_hash="00" * 32), "rootfs.verity.root_hash", ManifestInvalid),
    (lambda d: d["rootfs"]["verity"].update(data_blocks=8), "rootfs.verity.data_blocks", ManifestInvalid),
    (lambda d: d["rootfs"]["verity"].update(on_corruption="panic"), "rootfs.verity.on_corruption",
     ManifestInvalid),
    (lambda d: d["rootfs"]["verity"].update(salt="0g"), "rootfs.verity.salt", ManifestMalformed),
    (lambda d: d["rootfs"]["image"].update(uuid="not-a-uuid"), "rootfs.image.uuid", ManifestMalformed),
    (lambda d: d["rootfs"]["image"].update(file="other.img"), "rootfs.image.file", ManifestInvalid),
    (lambda d: d["rootfs"]["app"].update(argv=[]), "rootfs.app.argv", ManifestInvalid),
    (lambda d: d["rootfs"]["app"].update(env=["NOEQUALS"]), "rootfs.app.env[0]", ManifestMalformed),
    (lambda d: d["rootfs"]["app"].update(workdir="srv"), "rootfs.app.workdir", ManifestInvalid),
    (lambda d: d["rootfs"].update(network="yes"), "rootfs.network", ManifestMalformed),
    (lambda d: d["rootfs"]["sources"][0].update(kind="npm"), "rootfs.sources[0].kind", ManifestInvalid),
    (lambda d: d["rootfs"].pop("sources"), "rootfs.sources", ManifestInvalid),
    (lambda d: d["outputs"][5].update(size=4096), "outputs[5].size", ManifestInvalid),
    (lambda d: d["outputs"].pop(6), "outputs", ManifestInvalid),
    (lambda d: d.pop("rootfs"), "outputs[5].role", ManifestInvalid),
])
def test_each_false_or_malformed_rootfs_value_is_named(bundle, change, path, kind):
    _, doc = bundle
    doc = _copy(doc)
    change(doc)
    with pytest.raises(kind) as e:
        check_manifest(doc)
    assert e.value.path == path, str(e.value)


def _with_cmdline(doc, cmdline):
    doc = _copy(doc)
    doc["cmdline"] = cmdline
    doc["kernel_hashes"]["cmdline"] = _sha(cmdline.encode() + b"\0")
    for out in doc["outputs"]:
        if out["role"] == "cmdline":
            out["sha256"], out["size"] = _sha(cmdline.encode()), len(cmdline.encode())
    return doc


def test_the_table_must_be_the_one_the_measured_cmdline_carries(bundle):
    _, doc = bundle
    other = doc["rootfs"]["verity"]["table"].replace("/dev/vdb", "/dev/vdc")
    with pytest.raises(ManifestInvalid, match="not the table the measured cmdline carries") as e:
        check_manifest(_with_cmdline(doc, f'console=ttyS0 {verity.CMDLINE_PARAM}="{other}"'))
    assert e.value.path == "rootfs.verity.table"
    twice = doc["cmdline"] + f' {verity.CMDLINE_PARAM}="{doc["rootfs"]["verity"]["table"]}"'
    with pytest.raises(ManifestInvalid, match="2 times") as e:
        check_manifest(_with_cmdline(doc, twice))
    assert e.value.path == "cmdline"


def test_a_root_table_without_a_rootfs_section_is_refused(bundle):
    _, doc = bundle
    doc = _copy(doc)
    del doc["rootfs"]
    doc["outputs"] = doc["outputs"][:5]
    with pytest.raises(ManifestInvalid, match="carries blindbox.root, but the manifest has no rootfs"):
        check_manifest(doc)


def test_rederive_recomputes_the_root_hash_and_checks_the_hash_device(bundle):
    path, doc = bundle
    present = {"rootfs.erofs", "rootfs.verity"}
    assert all(f.ok for f in _rootfs_findings(path, doc, present))
    data = bytearray((path / "rootfs.erofs").read_bytes())
    data[5 * 4096 + 17] ^= 1
    (path / "rootfs.erofs").write_bytes(bytes(data))
    found = {f.name: f for f in _rootfs_findings(path, doc, present)}
    assert not found["rootfs.verity.root_hash"].ok
    assert not found["file rootfs.verity (verity)"].ok
    assert "data block 5" in found["file rootfs.verity (verity)"].detail
    data[5 * 4096 + 17] ^= 1
    (path / "rootfs.erofs").write_bytes(bytes(data))
    hashes = bytearray((path / "rootfs.verity").read_bytes())
    hashes[4096 + 3] ^= 1
    (path / "rootfs.verity").write_bytes(bytes(hashes))
    found = {f.name: f for f in _rootfs_findings(path, doc, present)}
    assert found["rootfs.verity.root_hash"].ok  # the image is intact
    assert not found["file rootfs.verity (verity)"].ok
    assert "hash block 1" in found["file rootfs.verity (verity)"].detail
    assert not _rootfs_findings(path, doc, {"rootfs.erofs"})[0].ok


def test_rederive_checks_that_salt_and_uuid_derive_from_the_recipe_and_lock(bundle):
    path, doc = bundle
    present = {"rootfs.erofs", "rootfs.verity"}
    assert {f.name for f in _rootfs_findings(path, doc, present) if f.ok} >= {"rootfs.verity.salt",
                                                                              "rootfs.verity.uuid"}
    doc = _copy(doc)
    doc["lock"]["sha256"] = "00" * 32
    found = {f.name: f for f in _rootfs_findings(path, doc, present)}
    assert not found["rootfs.verity.salt"].ok and not found["rootfs.verity.uuid"].ok
    assert found["rootfs.verity.root_hash"].ok
    assert verity.derived_uuid("verity", RECIPE_SHA, LOCK_SHA).version == 8
    assert verity.derived_uuid("erofs", RECIPE_SHA, LOCK_SHA) != VUUID


def test_parse_table_round_trips_what_the_tree_renders(bundle):
    _, doc = bundle
    v = doc["rootfs"]["verity"]
    t = verity.parse_table(v["table"])
    assert (t.data_blocks, t.hash_start_block, t.root_hash.hex(), t.salt, t.on_corruption) == \
        (7, 1, v["root_hash"], SALT, "eio")
    tree = verity.VerityTree(t.params(uuid=VUUID), 7, t.root_hash, verity.tree_levels(t.params(uuid=VUUID), 7))
    for opts, mode in (((), "eio"), (("panic_on_corruption",), "panic"), (("restart_on_corruption",), "restart")):
        line = tree.table("/dev/vda", "/dev/vdb", opts)
        assert verity.parse_table(line).on_corruption == mode
        assert verity.parse_table(line).options == opts
    assert copy.copy(t) == t


@pytest.mark.parametrize("text, message", [
    ("0 56 linear /dev/vda 0", "not a verity table line"),
    ("0 56 verity 0 /dev/vda /dev/vdb 4096 4096 7 1 sha256 " + "00" * 32 + " -", "hash format '0'"),
    ("0 56 verity 1 /dev/vda /dev/vdb 4096 4096 7 1 md5 " + "00" * 32 + " -", "algorithm is 'md5'"),
    ("0 56 verity 1 /dev/vda /dev/vdb 4096 4096 7 1 sha256 " + "00" * 31 + " -", "has 31 bytes"),
    ("0 56 verity 1 /dev/vda /dev/vdb 4096 4096 7 1 sha256 " + "zz" * 32 + " -", "not hexadecimal"),
    ("0 57 verity 1 /dev/vda /dev/vdb 4096 4096 7 1 sha256 " + "00" * 32 + " -", "must be the same size"),
    ("0 56 verity 1 /dev/vda /dev/vdb 8192 4096 7 1 sha256 " + "00" * 32 + " -", "data block size"),
    ("0 56 verity 1 /dev/vda /dev/vdb 4096 4096 7 1 sha256 " + "00" * 32 + " - 2 panic_on_corruption",
     "announces 2 options but has 1"),
    ("0 56 verity 1 /dev/vda /dev/vdb 4096 4096 7 1 sha256 " + "00" * 32 + " - 1 bogus", "option 'bogus'"),
    ("0 56 verity 1 /dev/vda /dev/vdb 4096 4096 7 1 sha256 " + "00" * 32 +
     " - 2 panic_on_corruption restart_on_corruption", "two corruption modes"),
    ("1 56 verity 1 /dev/vda /dev/vdb 4096 4096 7 1 sha256 " + "00" * 32 + " -", "start sector"),
    ("x" * 2000, "more than any table"),
])
def test_parse_table_refuses_what_blindbox_never_writes(text, message):
    with pytest.raises(InputError, match=message):
        verity.parse_table(text)


@pytest.mark.parametrize("cmdline, found", [
    ("console=ttyS0", None),
    ('a blindbox.root="0 8 verity" b', "0 8 verity"),
    ('blindbox.root="x"', "x"),
    ('x.blindbox.root="y" z', None),
])
def test_cmdline_table(cmdline, found):
    assert verity.cmdline_table(cmdline) == found


@pytest.mark.parametrize("cmdline, message", [
    ("blindbox.root=0", "not followed by a double-quoted table"),
    ('blindbox.root="0 8', "no closing quote"),
    ('blindbox.root="a" blindbox.root="a"', "2 times"),
])
def test_cmdline_table_refuses_ambiguity(cmdline, message):
    with pytest.raises(InputError, match=message):
        verity.cmdline_table(cmdline)


def test_verification_errors_are_exit_3_and_malformed_exit_2():
    assert issubclass(ManifestInvalid, VerificationError) and issubclass(ManifestMalformed, InputError)


# -- fuzz: any value anywhere in the rootfs section (or the cmdline) is read or refused ----------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from measure.errors import BlindboxError  # noqa: E402
from tests.fuzzing import INTERESTING, budget, json_paths  # noqa: E402

_VALUES = st.one_of(st.none(), st.booleans(), st.sampled_from(INTERESTING), st.integers(-2, 2 ** 70),
                    st.text(max_size=40), st.sampled_from(["", "-", "0" * 64, "/dev/vda", "eio", "panic",
                                                           "blindbox.root=\"x\"", "0 8 verity 1"]),
                    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.none()))


@pytest.fixture(scope="module")
def rootfs_doc(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz-bundle")
    return _make_bundle(path)[1]


@budget(200)
@given(data=st.data())
def test_fuzzed_rootfs_sections_are_read_or_refused(rootfs_doc, data):
    doc = _copy(rootfs_doc)
    paths = [p for p in json_paths(doc) if p and p[0] in ("rootfs", "cmdline")]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = doc
        for key in path[:-1]:
            if not isinstance(node, (dict, list)) or (isinstance(node, list) and not
                                                      (isinstance(key, int) and key < len(node))) \
                    or (isinstance(node, dict) and key not in node):
                break
            node = node[key]
        else:
            if isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int)
                                          and path[-1] < len(node)):
                node[path[-1]] = data.draw(_VALUES)
    try:
        check_manifest(doc)
    except BlindboxError:
        pass
