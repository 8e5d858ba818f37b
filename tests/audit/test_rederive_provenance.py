"""blindbox rederive checks provenance.intoto.json against the published manifest, field by field.

The bundle is the corpus's small one: its stand-in kernel and initrd fail two findings of their
own (the kernel release and the runtime policy), so each test compares the failed findings with
those two; tests/integration/test_rederive.py checks a real bundle that passes whole.
"""

from __future__ import annotations

import json

import pytest

from blindbox.audit.provenance import PROVENANCE, provenance_json
from blindbox.cli import main
from tests.corpus.make_corpus import good_bundle


@pytest.fixture
def bundle(tmp_path):
    """A small bundle every other finding of rederive passes, with the provenance blindbox writes for it."""
    for name, data in good_bundle().items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    d = tmp_path / "bundle"
    manifest = (d / "manifest.json").read_bytes()
    (d / PROVENANCE).write_bytes(provenance_json(json.loads(manifest), manifest))
    return d


#: what the stand-in kernel and initrd fail whatever the provenance holds
STAND_IN_FAILURES = ["launch.kernel_release", "initrd runtime policy"]


def rederive(bundle, capsys):
    rc = main(["rederive", str(bundle)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "bug" not in err, err
    line = next(line for line in out.splitlines() if line[8:].startswith(PROVENANCE + " "))
    failed = [line[8:43].rstrip() for line in out.splitlines() if line.startswith("  FAIL  ")]
    return rc, line, failed


def edit(bundle, change):
    doc = json.loads((bundle / PROVENANCE).read_bytes())
    change(doc)
    (bundle / PROVENANCE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def test_the_provenance_blindbox_writes_passes(bundle, capsys):
    _, line, failed = rederive(bundle, capsys)
    assert failed == STAND_IN_FAILURES
    assert line.startswith(f"  PASS  {PROVENANCE}")
    assert "the in-toto statement of the published manifest: 6 subjects, 3 resolved dependencies" in line


def test_a_missing_provenance_is_a_failed_finding(bundle, capsys):
    (bundle / PROVENANCE).unlink()
    rc, line, failed = rederive(bundle, capsys)
    assert failed == [PROVENANCE, *STAND_IN_FAILURES]
    assert rc == 3 and line.startswith(f"  FAIL  {PROVENANCE}")
    assert (f"{bundle / PROVENANCE} is missing (or not a regular file); a blindbox bundle carries its build "
            f"provenance beside manifest.json") in line


def _set_subject_digest(doc):
    next(s for s in doc["subject"] if s["name"] == "initrd")["digest"]["sha256"] = "ab" * 32


def _set_dependency_digest(doc):
    doc["predicate"]["buildDefinition"]["resolvedDependencies"][1]["digest"]["sha256"] = "cd" * 32


def _add_dependency(doc):
    doc["predicate"]["buildDefinition"]["resolvedDependencies"].append(
        {"name": "extra", "uri": "pkg:deb/debian/evil@1?arch=amd64&distro=sid", "digest": {"sha256": "00" * 32}})


def _set_started_on(doc):
    doc["predicate"]["runDetails"]["metadata"]["startedOn"] = "2026-11-30T19:00:00Z"


def _set_build_type(doc):
    doc["predicate"]["buildDefinition"]["buildType"] = "https://example.org/other/v1"


@pytest.mark.parametrize("change, message", [
    (_set_subject_digest, "subject[3].digest.sha256 is \"" + "ab" * 32 + "\", the manifest gives \""),
    (_set_dependency_digest, "predicate.buildDefinition.resolvedDependencies[1].digest.sha256 is \"" + "cd" * 32
     + "\", the manifest gives \""),
    (_add_dependency, "predicate.buildDefinition.resolvedDependencies has 4 entries, the manifest gives 3"),
    (_set_started_on, "predicate.runDetails.metadata.startedOn is \"2026-11-30T19:00:00Z\", the manifest gives "
                      "\"1970-01-01T00:00:00Z\""),
    (_set_build_type, "predicate.buildDefinition.buildType is \"https://example.org/other/v1\""),
], ids=["subject-digest", "dependency-digest", "extra-dependency", "timestamp", "build-type"])
def test_a_tampered_provenance_differs_naming_the_field(bundle, capsys, change, message):
    edit(bundle, change)
    rc, line, failed = rederive(bundle, capsys)
    assert failed == [PROVENANCE, *STAND_IN_FAILURES]
    assert rc == 3 and line.startswith(f"  FAIL  {PROVENANCE}")
    assert "differs from the statement of the published manifest: " + message in line


def test_the_entry_named_is_given_with_its_index(bundle, capsys):
    edit(bundle, _set_subject_digest)
    _, line, _ = rederive(bundle, capsys)
    assert line.endswith("(the entry for 'initrd')")


def test_a_manifest_changed_after_the_build_makes_the_provenance_differ(bundle, capsys):
    """The manifest.json subject is the digest of the published manifest's bytes."""
    manifest = bundle / "manifest.json"
    manifest.write_bytes(manifest.read_bytes() + b" ")
    rc, line, failed = rederive(bundle, capsys)
    assert failed == [PROVENANCE, *STAND_IN_FAILURES]
    assert rc == 3 and "subject[5].digest.sha256 is" in line and "(the entry for 'manifest.json')" in line


def test_other_bytes_for_the_same_statement_differ(bundle, capsys):
    doc = json.loads((bundle / PROVENANCE).read_bytes())
    (bundle / PROVENANCE).write_text(json.dumps(doc))
    rc, line, failed = rederive(bundle, capsys)
    assert failed == [PROVENANCE, *STAND_IN_FAILURES]
    assert rc == 3 and "holds the statement of the published manifest, but not in the bytes blindbox writes" in line


@pytest.mark.parametrize("data, message", [
    (b"{\"_type\": 1, \"_type\": 2}", "is not UTF-8 JSON with unique keys (the key '_type' appears twice"),
    (b"\xff", "is not UTF-8 JSON with unique keys ('utf-8' codec can't decode byte 0xff"),
], ids=["duplicate-key", "not-utf8"])
def test_a_provenance_that_is_not_json_is_a_failed_finding(bundle, capsys, data, message):
    (bundle / PROVENANCE).write_bytes(data)
    rc, line, failed = rederive(bundle, capsys)
    assert failed == [PROVENANCE, *STAND_IN_FAILURES]
    assert rc == 3 and message in line


def test_a_statement_that_is_not_an_object_is_named(bundle, capsys):
    (bundle / PROVENANCE).write_text("[]\n")
    rc, line, _ = rederive(bundle, capsys)
    assert rc == 3 and "differs from the statement of the published manifest: the statement is [], the manifest " \
                       "gives {" in line
