"""manifest.json: stable bytes, exact measurement contract, strict round trip."""

from __future__ import annotations

import hashlib
import json

import pytest

from builder.manifest import (InputRecord, Manifest, ManifestError, MeasurementRecord, OutputRecord)


CMDLINE = "console=ttyS0 wörld"


def sample() -> Manifest:
    """A complete manifest whose parts agree with each other (the reader checks that)."""
    sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    return Manifest(
        name="hello", tool={"name": "blindbox-guest", "version": "0.1.0", "initrd_compressor": "gzip"},
        recipe={"file": "hello.yaml", "sha256": "1" * 64}, lock={"file": "hello.lock", "sha256": "2" * 64},
        source_date_epoch=1735689600, cmdline=CMDLINE,
        kernel_hashes={"kernel": "3" * 64, "initrd": "4" * 64, "cmdline": sha(CMDLINE.encode() + b"\0")},
        firmware={"file": "OVMF.amdsev.fd", "ovmf_hash": "9" * 96, "sev_es_reset_eip": "0x80b004",
                  "sev_hashes_table": {"gpa": "0x810c00", "size": 1024},
                  "sev_metadata_sections": [{"type": "SNP_SEC_MEM", "gpa": "0x800000", "size": 36864},
                                            {"type": "SNP_KERNEL_HASHES", "gpa": "0x810000", "size": 4096}]},
        launch={"memory_mib": 512, "policy": "0x30000", "kernel_release": "6.1.0-56-amd64"},
        inputs=(InputRecord("firmware", "debian", "2026.08+ds-2", "6" * 64, 717000,
                            "debian:sid/ovmf-amdsev=2026.08+ds-2 (pool/...)"),),
        outputs=(OutputRecord("OVMF.amdsev.fd", "firmware", "7" * 64, 2097152),
                 OutputRecord("bzImage", "kernel", "3" * 64, 8000000),
                 OutputRecord("initrd", "initrd", "4" * 64, 1000000),
                 OutputRecord("cmdline", "cmdline", sha(CMDLINE.encode()), len(CMDLINE.encode())),
                 OutputRecord("launch-snp.sh", "launch", "5" * 64, 7000)),
        measurements=(MeasurementRecord("qemu:EPYC-v4:4:0x1", "qemu", 4, "EPYC-v4", 0x800F12, 0x1, "8" * 96),))


def test_measurement_entry_is_exactly_the_verify_report_contract():
    doc = json.loads(sample().to_json())
    assert doc["measurements"] == [{
        "shape": "qemu:EPYC-v4:4:0x1", "mode": "snp", "vmm_profile": "qemu", "vcpus": 4,
        "vcpu_type": "EPYC-v4", "vcpu_sig": "0x800f12", "guest_features": "0x1", "measurement": "8" * 96}]
    assert list(doc["measurements"][0]) == ["shape", "mode", "vmm_profile", "vcpus", "vcpu_type", "vcpu_sig",
                                            "guest_features", "measurement"]


def test_key_order_is_fixed_and_bytes_are_stable():
    data = sample().to_json()
    assert list(json.loads(data)) == ["schema", "name", "tool", "recipe", "lock", "source_date_epoch", "cmdline",
                                      "kernel_hashes", "firmware", "launch", "inputs", "outputs", "measurements"]
    assert data == sample().to_json()
    assert data.endswith(b"}\n") and "wörld".encode() in data
    assert list(json.loads(data)["inputs"][0]) == ["name", "kind", "version", "sha256", "size", "origin"]


def test_round_trip():
    m = sample()
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert again.to_json() == m.to_json()
    assert again.measurement("qemu:EPYC-v4:4:0x1").vcpu_sig == 0x800F12
    assert again.output("firmware").size == 2097152


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(schema="other/9"), "schema"),
    (lambda d: d.update(schema="blindbox-manifest/9"), "schema is 'blindbox-manifest/9', a schema version"),
    (lambda d: d["measurements"][0].update(measurement="zz"), "measurements\\[0\\].measurement .* not 96 "),
    (lambda d: d["outputs"][0].update(sha256="1"), "outputs\\[0\\].sha256 .* not 64 "),
    (lambda d: d["measurements"][0].pop("vcpu_sig"), "measurements\\[0\\].vcpu_sig is missing"),
    (lambda d: d.update(extra=1), "extra is not a key of this schema"),
])
def test_damaged_manifest_is_refused(mutate, words):
    doc = json.loads(sample().to_json())
    mutate(doc)
    with pytest.raises(ManifestError, match=words):
        Manifest.from_json(json.dumps(doc).encode())


def test_verify_report_reads_the_measurements():
    """The contract with `blindbox verify-report --manifest` (blindbox.audit.verify.load_manifest)."""
    from blindbox.audit.verify import load_manifest

    entries = load_manifest(sample().to_json())
    assert [(e.shape, e.measurement.hex()) for e in entries] == [("qemu:EPYC-v4:4:0x1", "8" * 96)]
