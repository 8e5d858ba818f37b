"""provenance.intoto.json: the in-toto Statement v1 / SLSA provenance v1 every bundle carries.

The in-toto project's own Python messages (PyPI ``in-toto-attestation``) parse it, refusing
any field their schema does not have, and its validators accept it; its contents are checked
against the bundle's files and manifest.  The pipeline runs with the in-memory archive and the
stand-in kernel and initrd steps of tests/builder/test_pipeline.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement

from blindbox.audit.provenance import BUILD_TYPE, BUILDER_ID, PROVENANCE, purl, to_json
from builder.pipeline import BuildRequest, build

from .test_pipeline import STEPS, locked

EPOCH = 1700000000  # RECIPE's source_date_epoch


@pytest.fixture
def built(tmp_path):
    env = locked(tmp_path)
    recipe = env.recipe
    env.run = lambda out=env.out, **kw: build(BuildRequest(recipe=recipe.path, out=out, cache_root=env.cache, **kw),
                                              steps=STEPS, archive=env.archive)
    env.run()
    return env


def parse(data: bytes) -> tuple[statement_pb2.Statement, provenance_pb2.Provenance]:
    """The statement and its predicate as the in-toto messages, unknown fields refused, then validated."""
    stmt = json_format.Parse(data.decode("utf-8"), statement_pb2.Statement(), ignore_unknown_fields=False)
    Statement.copy_from_pb(stmt).validate()
    pred = json_format.ParseDict(json.loads(data)["predicate"], provenance_pb2.Provenance(),
                                 ignore_unknown_fields=False)
    for dep in pred.build_definition.resolved_dependencies:
        ResourceDescriptor.copy_from_pb(dep).validate()
    return stmt, pred


def test_the_in_toto_messages_parse_and_validate_it(built):
    data = (built.out / PROVENANCE).read_bytes()
    stmt, pred = parse(data)
    assert stmt.type == "https://in-toto.io/Statement/v1"
    assert stmt.predicate_type == "https://slsa.dev/provenance/v1"
    assert pred.build_definition.build_type == BUILD_TYPE
    assert pred.run_details.builder.id == BUILDER_ID
    # the only times are the recipe's source_date_epoch; no invocation id
    assert pred.run_details.metadata.started_on.seconds == EPOCH
    assert pred.run_details.metadata.finished_on.seconds == EPOCH
    assert pred.run_details.metadata.invocation_id == ""


def test_an_unknown_field_is_refused_by_the_messages(built):
    """The parse above can fail: the in-toto messages refuse a field their schema lacks."""
    doc = json.loads((built.out / PROVENANCE).read_bytes())
    doc["predicate"]["runDetails"]["metadata"]["hostname"] = "build-7"
    with pytest.raises(json_format.ParseError, match="hostname"):
        parse(json.dumps(doc).encode())
    doc = json.loads((built.out / PROVENANCE).read_bytes())
    doc["subjects"] = doc.pop("subject")
    with pytest.raises(json_format.ParseError, match="subjects"):
        parse(json.dumps(doc).encode())


def test_subjects_are_every_bundle_file_but_the_statement(built):
    stmt, _ = parse((built.out / PROVENANCE).read_bytes())
    subjects = {s.name: dict(s.digest) for s in stmt.subject}
    files = {p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in built.out.iterdir() if p.name != PROVENANCE}
    assert subjects == files and "manifest.json" in subjects and len(files) == 6
    assert [s.name for s in stmt.subject] == sorted(subjects)


def test_dependencies_and_parameters_are_the_manifest_s(built):
    manifest = json.loads((built.out / "manifest.json").read_bytes())
    _, pred = parse((built.out / PROVENANCE).read_bytes())
    deps = pred.build_definition.resolved_dependencies
    recipe_sha = hashlib.sha256(built.recipe.path.read_bytes()).hexdigest()
    lock_sha = hashlib.sha256(built.recipe.lock_path.read_bytes()).hexdigest()
    assert [(d.name, d.uri, dict(d.digest)) for d in deps[:2]] == [
        ("t.yaml", "file:t.yaml", {"sha256": recipe_sha}), ("t.lock", "file:t.lock", {"sha256": lock_sha})]
    assert [(d.name, d.digest["sha256"]) for d in deps[2:]] == [(i["name"], i["sha256"]) for i in manifest["inputs"]]
    assert [d.uri for d in deps[2:]] == [
        "pkg:deb/debian/ovmf-amdsev@2026.08-1?arch=amd64&distro=sid",
        "pkg:deb/debian/linux-image-6.1.0-1-amd64@6.1.1-1?arch=amd64&distro=bookworm",
        "pkg:deb/debian/busybox-static@1:1.35-4?arch=amd64&distro=bookworm",
        "file:app.conf",
        "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&distro=bookworm"]  # the initrd's pinned deflate
    ext = json_format.MessageToDict(pred.build_definition.external_parameters)
    assert ext == {"recipe": {"name": "t", "path": "t.yaml", "sha256": recipe_sha},
                   "lock": {"path": "t.lock", "sha256": lock_sha}}
    internal = json_format.MessageToDict(pred.build_definition.internal_parameters)
    assert internal == {"tool": manifest["tool"], "sourceDateEpoch": EPOCH}
    assert dict(pred.run_details.builder.version) == {"blindbox-guest": manifest["tool"]["version"]}


@pytest.mark.parametrize("origin, expected", [
    ("debian:bookworm/busybox-static=1:1.35.0-4+deb12u1+b1 (pool/main/b/busybox/"
     "busybox-static_1.35.0-4+deb12u1+b1_amd64.deb)",
     "pkg:deb/debian/busybox-static@1:1.35.0-4%2Bdeb12u1%2Bb1?arch=amd64&distro=bookworm"),
    ("debian:bookworm/libudev1=252.39-1~deb12u2 (pool/main/s/systemd/libudev1_252.39-1~deb12u2_amd64.deb)",
     "pkg:deb/debian/libudev1@252.39-1~deb12u2?arch=amd64&distro=bookworm"),
    ("debian:sid/ovmf-amdsev=2026.08+ds-2 (pool/main/e/edk2/ovmf-amdsev_2026.08+ds-2_all.deb)",
     "pkg:deb/debian/ovmf-amdsev@2026.08%2Bds-2?arch=all&distro=sid"),
    ("https://example.org/app.tar.gz", None),
], ids=["epoch-and-plus", "tilde", "arch-all", "not-debian"])
def test_package_urls_follow_the_purl_specification(origin, expected):
    assert purl(origin) == expected


def test_its_bytes_are_canonical_and_hold_no_host_detail(built):
    data = (built.out / PROVENANCE).read_bytes()
    assert data == to_json(json.loads(data)) and data.endswith(b"}\n")
    assert str(built.out.parent.parent).encode() not in data
    other = built.run(out=built.out.parent / "elsewhere", force=True)
    assert (other.out / PROVENANCE).read_bytes() == data


def test_a_noop_rebuild_keeps_it_and_a_damaged_one_is_rebuilt(built):
    data = (built.out / PROVENANCE).read_bytes()
    assert built.run().up_to_date
    (built.out / PROVENANCE).write_bytes(data.replace(b"sha256", b"sha512", 1))
    assert built.run().up_to_date is False
    assert (built.out / PROVENANCE).read_bytes() == data
    (built.out / PROVENANCE).unlink()
    assert built.run().up_to_date is False
    assert (built.out / PROVENANCE).read_bytes() == data
