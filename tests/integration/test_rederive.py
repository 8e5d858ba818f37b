"""blindbox rederive: an auditor re-derives every published digest from a real bundle's files."""

from __future__ import annotations

import json
import shutil

import pytest

from blindbox.audit.provenance import PROVENANCE, provenance_json
from blindbox.cli import main
from tests.measure import oracle

from .hellobuild import built_hello_with_id_block

pytestmark = [pytest.mark.integration, pytest.mark.network]


@pytest.fixture
def bundle(tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(built_hello_with_id_block().out, out)
    return out


SHAPES = [f"qemu:{t}:{n}:0x1" for t in ("EPYC-v4", "EPYC-Milan", "EPYC-Genoa") for n in (1, 2, 4, 8)]


def run(argv, capsys):
    rc = main(["rederive", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_every_published_digest_follows_from_the_files(bundle, capsys):
    rc, out, _ = run([bundle, "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["ok"]
    shapes = [f for f in data["findings"] if f["name"].startswith("shape ")]
    assert len(shapes) == 12
    release = next(f for f in data["findings"] if f["name"] == "launch.kernel_release")
    manifest_release = json.loads((bundle / "manifest.json").read_text())["launch"]["kernel_release"]
    assert release["ok"] and release["detail"].endswith(f"names release {manifest_release}")
    # and an independent implementation agrees with one of them
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["measurements"][7]
    expected = oracle.oracle_digest("snp", ovmf=bundle / "OVMF.amdsev.fd", vcpus=entry["vcpus"],
                                    vcpu_sig=int(entry["vcpu_sig"], 16), kernel=bundle / "bzImage",
                                    initrd=bundle / "initrd", append=(bundle / "cmdline").read_text(),
                                    guest_features=int(entry["guest_features"], 16))
    assert expected.hex() == entry["measurement"]


def test_a_changed_initrd_is_named(bundle, capsys):
    data = bytearray((bundle / "initrd").read_bytes())
    data[1000] ^= 1
    (bundle / "initrd").write_bytes(bytes(data))
    rc, out, _ = run([bundle], capsys)
    assert rc == 3
    assert "FAIL  file initrd" in out and "FAIL  kernel_hashes" in out and "FAIL  shape qemu:EPYC-v4:1:0x1" in out
    assert "PASS  file bzImage" in out


def test_a_changed_published_digest_is_named(bundle, capsys):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["measurements"][0]["measurement"] = "00" * 48
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    rc, out, _ = run([bundle], capsys)
    failed = [line.split()[1:3] for line in out.splitlines() if line.startswith("  FAIL")]
    # the recomputed digest, the shapes table of launch-snp.sh and the signed ID block all disagree, and the
    # provenance names the manifest's bytes as they were built
    assert rc == 3 and failed == [["provenance.intoto.json", "differs"], ["launch-snp.sh", "shapes"],
                                  ["shape", "qemu:EPYC-v4:1:0x1"], ["id_block", "qemu:EPYC-v4:1:0x1"]]
    assert "manifest says " + "00" * 48 in out


def test_the_provenance_is_the_manifest_s_and_a_changed_one_is_named(bundle, capsys):
    rc, out, _ = run([bundle, "--json"], capsys)
    finding = next(f for f in json.loads(out)["findings"] if f["name"] == "provenance.intoto.json")
    subjects = len(list(bundle.iterdir())) - 1
    inputs = len(json.loads((bundle / "manifest.json").read_text())["inputs"])
    assert rc == 0 and finding["ok"] and finding["detail"] == (
        f"the in-toto statement of the published manifest: {subjects} subjects, {inputs + 2} resolved dependencies")
    doc = json.loads((bundle / "provenance.intoto.json").read_text())
    kernel = next(d for d in doc["predicate"]["buildDefinition"]["resolvedDependencies"] if d["name"] == "kernel")
    kernel["uri"] = kernel["uri"].replace("@6.", "@9.")
    (bundle / "provenance.intoto.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    rc, out, _ = run([bundle], capsys)
    failed = [line for line in out.splitlines() if line.startswith("  FAIL")]
    assert rc == 3 and len(failed) == 1 and "resolvedDependencies[3].uri is \"pkg:deb/debian/linux-image-" in failed[0]
    assert failed[0].endswith("(the entry for 'kernel')")
    (bundle / "provenance.intoto.json").unlink()
    rc, out, _ = run([bundle], capsys)
    failed = [line for line in out.splitlines() if line.startswith("  FAIL")]
    assert rc == 3 and len(failed) == 1 and "provenance.intoto.json is missing (or not a regular file)" in failed[0]


def test_not_a_bundle_is_bad_input(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text("{}")
    rc, _, err = run([tmp_path], capsys)
    assert rc == 2 and "not a blindbox manifest" in err
    rc, _, err = run([tmp_path / "nope"], capsys)
    assert rc == 2


# --- a published value edited in manifest.json: exit 3, naming the field -------------------------

def _edit(bundle, change):
    """Change the manifest and, as its publisher would, write the provenance of the changed manifest."""
    doc = json.loads((bundle / "manifest.json").read_text())
    change(doc)
    data = (json.dumps(doc, indent=2) + "\n").encode()
    (bundle / "manifest.json").write_bytes(data)
    (bundle / PROVENANCE).write_bytes(provenance_json(doc, data))
    return doc


def _set(path, value):
    def change(doc):
        *parents, last = path
        target = doc
        for key in parents:
            target = target[key]
        target[last] = value
    return change


def _shape_lie(doc):
    """The 2-vCPU shape keeps its id but publishes the 1-vCPU launch (fields and digest)."""
    one = next(m for m in doc["measurements"] if m["shape"] == "qemu:EPYC-v4:1:0x1")
    two = next(m for m in doc["measurements"] if m["shape"] == "qemu:EPYC-v4:2:0x1")
    doc["measurements"].remove(one)
    two.update(vcpus=1, measurement=one["measurement"])


def _both_policies(doc):
    doc["launch"]["policy"] = doc["launch"]["id_block"]["policy"] = "0x70000"


# Values the bundle's files contradict: rederive lists the finding that fails.
@pytest.mark.parametrize("change, failed", [
    (_set(("firmware", "ovmf_hash"), "0" * 96), ["firmware.ovmf_hash"]),
    (_set(("firmware", "sev_es_reset_eip"), "0x80b000"), ["firmware.sev_es_reset_eip"]),
    (_set(("firmware", "sev_hashes_table", "gpa"), "0x810d00"), ["firmware.sev_hashes_table"]),
    (_both_policies, ["launch.policy"] + [f"id_block {s}" for s in SHAPES]),
    (_set(("launch", "memory_mib"), 4096), ["launch.memory_mib"]),
    (_set(("launch", "kernel_release"), "6.1.0-99-amd64"), ["launch.kernel_release"]),
], ids=["ovmf_hash", "sev_es_reset_eip", "hashes_table_gpa", "policy", "memory", "kernel_release"])
def test_a_published_value_the_files_contradict_fails(bundle, capsys, change, failed):
    _edit(bundle, change)
    rc, out, _ = run([bundle], capsys)
    names = [line[8:42].strip() for line in out.splitlines() if line.startswith("  FAIL")]
    assert rc == 3 and names == failed and out.endswith(f", {len(failed)} differ)\n")


# Values the manifest cannot hold: refused before anything is compared.
@pytest.mark.parametrize("change, message", [
    (_set(("firmware", "sev_metadata_sections"), []), "firmware.sev_metadata_sections is an empty list"),
    (_set(("launch", "policy"), "0x70000"), "launch.id_block.policy is 0x30000, but launch.policy is 0x70000"),
    (_set(("cmdline",), "console=ttyS0 panic=-1"), "cmdline is \"console=ttyS0 panic=-1\", but outputs[3] "
                                                   "(cmdline) lists a file with other contents"),
    (lambda d: d["measurements"][0].update(vcpu_type="Pentium"), "measurements[0].vcpu_type is \"Pentium\", "
                                                                 "not a vCPU type this blindbox knows"),
    (_set(("schema",), "blindbox-manifest/9"), "schema is 'blindbox-manifest/9', a schema version this "
                                               "blindbox does not know"),
    (lambda d: d.pop("firmware"), "manifest.json: firmware is missing"),
    (_set(("firmware", "file"), "../../../../etc/passwd"), "firmware.file is '../../../../etc/passwd', which "
                                                          "leaves the bundle directory"),
    (lambda d: d["measurements"].append(dict(d["measurements"][3])), "measurements[12].shape is "
                                                                     "'qemu:EPYC-v4:8:0x1', already published"),
    (lambda d: d["outputs"].append(dict(d["outputs"][1])), "outputs[53].file is 'bzImage', listed twice"),
    (_set(("measurements",), []), "manifest.json: measurements is an empty list"),
    (lambda d: d["measurements"][1].update(vcpus=1), "measurements[1].vcpus is 1, but the shape id "
                                                     "'qemu:EPYC-v4:2:0x1' says 2"),
    (_shape_lie, "measurements[0].vcpus is 1, but the shape id 'qemu:EPYC-v4:2:0x1' says 2"),
    (lambda d: d["measurements"][1].update(measurement=d["measurements"][0]["measurement"]),
     "measurements[1].measurement is the digest measurements[0] publishes, but the two launches differ in vcpus"),
], ids=["sections_emptied", "policy", "cmdline", "pentium", "schema_9", "firmware_deleted", "passwd",
        "duplicate_shape", "duplicate_output", "no_measurements", "shape_id_vcpus", "shape_id_vcpus_with_digest",
        "one_digest_two_launches"])
def test_a_manifest_that_cannot_be_true_is_refused(bundle, capsys, change, message):
    _edit(bundle, change)
    rc, out, err = run([bundle], capsys)
    assert rc == 3 and out == "" and message in err and err.startswith(f"blindbox: error: {bundle}/manifest.json: ")
    assert len(err.strip().splitlines()) == 1


# Values of the wrong type or syntax: malformed input, exit 2, as the same value given as an option.
@pytest.mark.parametrize("change, message", [
    (lambda d: d["measurements"][0].update(measurement="ab" * 32), "measurements[0].measurement is \"abab"),
    (lambda d: d["measurements"][0].update(measurement="ab" * 49), "measurements[0].measurement is \"abab"),
    (lambda d: d["measurements"][0].update(measurement="zz" * 48), "measurements[0].measurement is \"zzzz"),
    (lambda d: d["measurements"][0].update(measurement=7), "measurements[0].measurement is 7, not 96 "),
], ids=["digest_64_hex", "digest_98_hex", "digest_not_hex", "digest_integer"])
def test_a_malformed_digest_is_bad_input(bundle, capsys, change, message):
    _edit(bundle, change)
    rc, out, err = run([bundle], capsys)
    assert rc == 2 and out == "" and message in err and err.startswith(f"blindbox: error: {bundle}/manifest.json: ")
    assert "the manifest is malformed" in err and len(err.strip().splitlines()) == 1


def test_a_duplicate_json_key_is_refused(bundle, capsys):
    text = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(text.replace('"cmdline": "', '"cmdline": "init=/bin/sh", "cmdline": "', 1))
    rc, out, err = run([bundle], capsys)
    assert rc == 3 and "manifest.json: cmdline appears twice in one object" in err


def test_a_cmdline_edited_everywhere_in_the_manifest_fails_against_the_files(bundle, capsys):
    """The manifest agrees with itself, but the cmdline file and launch-snp.sh say otherwise."""
    import hashlib
    new = "console=ttyS0 panic=-1 init=/bin/sh"

    def change(doc):
        doc["cmdline"] = new
        doc["kernel_hashes"]["cmdline"] = hashlib.sha256(new.encode() + b"\0").hexdigest()
        out = next(o for o in doc["outputs"] if o["role"] == "cmdline")
        out.update(sha256=hashlib.sha256(new.encode()).hexdigest(), size=len(new))
    _edit(bundle, change)
    rc, out, _ = run([bundle], capsys)
    names = [line[8:42].strip() for line in out.splitlines() if line.startswith("  FAIL")]
    assert rc == 3 and names == ["file cmdline", "cmdline", "launch-snp.sh cmdline", "kernel_hashes"]


def test_a_file_symlinked_outside_the_bundle_is_refused(bundle, capsys, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.write_bytes((bundle / "cmdline").read_bytes())  # even with the published bytes
    (bundle / "cmdline").unlink()
    (bundle / "cmdline").symlink_to(outside)
    rc, out, err = run([bundle], capsys)
    assert rc == 3 and f"outputs[3].file is 'cmdline', which resolves to {outside}, outside the bundle" in err


def test_an_id_block_signed_over_other_values_fails(bundle, capsys):
    """A published ID key digest that is not the key in the shape's ID auth structure."""
    _edit(bundle, lambda d: d["measurements"][2].update(id_key_digest="cd" * 48))
    rc, out, _ = run([bundle], capsys)
    names = [line[8:42].strip() for line in out.splitlines() if line.startswith("  FAIL")]
    assert rc == 3 and names == ["id_block qemu:EPYC-v4:4:0x1"] and "measurements[].id_key_digest" in out
