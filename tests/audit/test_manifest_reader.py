"""blindbox.audit.manifest: the one reader of manifest.json, field by field (no bundle needed)."""

from __future__ import annotations

import json

import pytest

from measure.errors import InputError
from blindbox.audit.manifest import ManifestMalformed, ManifestInvalid, read_manifest
from tests.audit.manifestdoc import entry, manifest_doc


def doc(*entries) -> dict:
    return manifest_doc(list(entries) or [entry(1, "EPYC-v4", 0x1, "11" * 48)])


def refused(d: dict | bytes) -> ManifestInvalid | ManifestMalformed:
    """The error, with the exit status of its kind: 2 for a value of the wrong type or syntax, else 3."""
    data = d if isinstance(d, bytes) else json.dumps(d).encode()
    with pytest.raises((ManifestInvalid, ManifestMalformed)) as info:
        read_manifest(data, "m.json")
    assert info.value.exit_code == (2 if isinstance(info.value, ManifestMalformed) else 3)
    assert str(info.value).startswith(f"m.json: {info.value.path} ")
    return info.value


def test_a_complete_manifest_is_read():
    d = doc()
    assert read_manifest(json.dumps(d).encode()) == d


def test_what_is_no_manifest_at_all_is_bad_input():
    for data in (b"\xff", b"[1]", b"{}", b'{"schema": "other/1"}', b"[" * 100000):
        with pytest.raises(InputError) as info:
            read_manifest(data, "m.json")
        assert info.value.exit_code == 2 and str(info.value).startswith("m.json ")


@pytest.mark.parametrize("change, path, words", [
    (lambda d: d.update(extra=1), "extra", "is not a key of this schema"),
    (lambda d: d["tool"].pop("initrd_compressor"), "tool.initrd_compressor", "is missing"),
    (lambda d: d.update(source_date_epoch=True), "source_date_epoch", "is a boolean, not an integer"),
    (lambda d: d["launch"].update(memory_mib=-1), "launch.memory_mib", "is -1, outside 1"),
    (lambda d: d["launch"].update(policy="0x10000"), "launch.policy", "bit 17 must be set"),
    (lambda d: d["launch"].update(policy="0x030000"), "launch.policy", "no leading zeros"),
    (lambda d: d["firmware"].update(ovmf_hash="AB" * 48), "firmware.ovmf_hash", "not 96 lower-case hex"),
    (lambda d: d["firmware"]["sev_metadata_sections"][0].update(type="BOGUS"),
     "firmware.sev_metadata_sections[0].type", "not a SEV metadata section type"),
    (lambda d: d["firmware"].update(sev_metadata_sections=d["firmware"]["sev_metadata_sections"][:1]),
     "firmware.sev_metadata_sections", "has no SNP_KERNEL_HASHES section"),
    (lambda d: d["firmware"].update(file="/etc/passwd"), "firmware.file", "an absolute path"),
    (lambda d: d["outputs"][1].update(file="a\\..\\b"), "outputs[1].file", "leaves the bundle directory"),
    (lambda d: d["outputs"][1].update(file="manifest.json"), "outputs[1].file", "the manifest itself"),
    (lambda d: d["outputs"][4].update(role="firmware"), "outputs", "2 files with role 'firmware'"),
    (lambda d: d["inputs"].append(dict(d["inputs"][0])), "inputs[1].name", "listed twice"),
    (lambda d: d["inputs"][0].update(size="2"), "inputs[0].size", "not an integer"),
    (lambda d: d["kernel_hashes"].update(kernel="0" * 64), "kernel_hashes.kernel", "but outputs[1] (bzImage)"),
    (lambda d: d["kernel_hashes"].update(cmdline="0" * 64), "kernel_hashes.cmdline", "its NUL byte is"),
    (lambda d: d.update(cmdline="console=ttyS1"), "cmdline", "lists a file with other contents"),
    (lambda d: d["measurements"][0].update(mode="sev"), "measurements[0].mode", "SEV-SNP digests only"),
    (lambda d: d["measurements"][0].update(vmm_profile="xen"), "measurements[0].vmm_profile", "not a VMM profile"),
    (lambda d: d["measurements"][0].update(vcpu_sig="0xa10f10"), "measurements[0].vcpu_sig",
     "vCPU type EPYC-v4 has signature 0x800f12"),
    (lambda d: d["measurements"][0].update(guest_features="0x20", shape="qemu:EPYC-v4:1:0x20"),
     "measurements[0].guest_features", "without SNPActive"),
    (lambda d: d["measurements"][0].update(shape="qemu:EPYC-Genoa:1:0x1"), "measurements[0].vcpu_type",
     "the shape id 'qemu:EPYC-Genoa:1:0x1' says EPYC-Genoa"),
    (lambda d: d["measurements"][0].update(shape="one-cpu"), "measurements[0].shape", "not VMM_PROFILE:"),
    (lambda d: d["measurements"][0].update(id_key_digest="00" * 48), "measurements[0].id_key_digest",
     "is not a key of this schema"),
])
def test_each_broken_field_is_named(change, path, words):
    d = doc()
    change(d)
    err = refused(d)
    assert err.path == path and words in str(err)


@pytest.mark.parametrize("change, path, kind", [
    (lambda d: d.update(source_date_epoch=True), "source_date_epoch", ManifestMalformed),
    (lambda d: d["inputs"][0].update(size="2"), "inputs[0].size", ManifestMalformed),
    (lambda d: d["firmware"].update(ovmf_hash="ab" * 32), "firmware.ovmf_hash", ManifestMalformed),
    (lambda d: d["firmware"].update(ovmf_hash="zz" * 48), "firmware.ovmf_hash", ManifestMalformed),
    (lambda d: d["launch"].update(policy=196608), "launch.policy", ManifestMalformed),
    (lambda d: d.update(outputs={}), "outputs", ManifestMalformed),
    (lambda d: d["inputs"][0].update(size=-1), "inputs[0].size", ManifestInvalid),
    (lambda d: d.update(schema="blindbox-manifest/9"), "schema", ManifestInvalid),
    (lambda d: d.pop("firmware"), "firmware", ManifestInvalid),
    (lambda d: d.update(measurements=[]), "measurements", ManifestInvalid),
])
def test_a_malformed_value_exits_2_and_a_false_statement_exits_3(change, path, kind):
    """Like a malformed option: wrong type or syntax is bad input (2); a well-formed lie fails verification (3)."""
    d = doc()
    change(d)
    err = refused(d)
    assert type(err) is kind and err.path == path


def test_json_that_two_readers_could_read_differently_is_refused():
    data = json.dumps(doc()).encode()
    assert refused(data.replace(b'"vcpus": 1', b'"vcpus": 2, "vcpus": 1')).path == "measurements[0].vcpus"
    assert "not UTF-8 JSON" in str(pytest.raises(InputError, read_manifest, data.replace(b'"size": 2,',
                                                                                         b'"size": NaN,', 1)).value)


def test_shapes_sharing_a_digest_must_name_one_launch():
    same = doc(entry(1, "EPYC", 0x1, "11" * 48), entry(1, "EPYC-v4", 0x1, "11" * 48))  # one signature
    assert read_manifest(json.dumps(same).encode())
    err = refused(doc(entry(1, "EPYC-v4", 0x1, "11" * 48), entry(1, "EPYC-Genoa", 0x1, "11" * 48)))
    assert err.path == "measurements[1].measurement" and "differ in vcpu_sig" in str(err)


def test_id_block_fields_follow_launch_id_block():
    d = doc()
    d["launch"]["id_block"] = {"family_id": "00" * 16, "image_id": "00" * 16, "guest_svn": 0,
                               "policy": "0x30000", "author_key": False}
    assert refused(d).path == "measurements[0].id_block"
    d["measurements"][0].update(id_block="s.id-block.b64", id_auth="s.id-auth.b64", id_key_digest="22" * 48,
                                author_key_digest=None)
    assert refused(d).path == "measurements[0].id_block"  # not a listed output
    d["outputs"] += [{"file": "s.id-block.b64", "role": "id-block", "sha256": "3" * 64, "size": 1},
                     {"file": "s.id-auth.b64", "role": "id-auth", "sha256": "4" * 64, "size": 1}]
    assert read_manifest(json.dumps(d).encode())
    d["measurements"][0]["author_key_digest"] = "55" * 48
    assert refused(d).path == "measurements[0].author_key_digest"
    d["measurements"][0]["author_key_digest"] = None
    d["launch"]["id_block"]["policy"] = "0x70000"
    assert refused(d).path == "launch.id_block.policy"


@pytest.mark.parametrize("change, path", [
    (lambda d: d["outputs"][0].update(role=[None]), "outputs[0].role"),
    (lambda d: d["inputs"][0].update(kind={}), "inputs[0].kind"),
    (lambda d: d["measurements"][0].update(mode=1), "measurements[0].mode"),
    (lambda d: d["measurements"][0].update(vmm_profile=["qemu"]), "measurements[0].vmm_profile"),
    (lambda d: d["measurements"][0].update(vcpu_type={"EPYC-v4": 1}), "measurements[0].vcpu_type"),
    (lambda d: d["firmware"]["sev_metadata_sections"][0].update(type=[]), "firmware.sev_metadata_sections[0].type"),
])
def test_a_name_field_of_another_type_is_malformed_not_a_crash(change, path):
    """A list or object where a name from a fixed set goes is bad input (exit 2), never an internal error."""
    d = doc()
    change(d)
    err = refused(d)
    assert type(err) is ManifestMalformed and err.path == path and ", not a string;" in str(err)


def test_an_unknown_name_is_a_false_statement():
    d = doc()
    d["measurements"][0].update(vcpu_type="Pentium", shape="qemu:Pentium:1:0x1")
    err = refused(d)
    assert type(err) is ManifestInvalid and err.path == "measurements[0].vcpu_type"
    assert 'is "Pentium", not a vCPU type this blindbox knows (EPYC' in str(err)


def test_author_key_of_another_type_is_malformed():
    d = doc()
    d["launch"]["id_block"] = {"family_id": "00" * 16, "image_id": "00" * 16, "guest_svn": 0,
                               "policy": "0x30000", "author_key": "yes"}
    err = refused(d)
    assert type(err) is ManifestMalformed and err.path == "launch.id_block.author_key"
    assert 'is the string "yes", not true or false' in str(err)
