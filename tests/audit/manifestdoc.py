"""A complete manifest.json document for tests that have digests but no bundle.

Its parts agree with each other as blindbox.audit.manifest requires (kernel hashes and the
listed outputs, the cmdline and its hash, shape ids and their fields); the file digests
are placeholders, so only `blindbox rederive` on a real bundle could tell it apart.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from measure.cpu import CPU_SIGS
from blindbox.audit.manifest import SCHEMA, shape_id

CMDLINE = "console=ttyS0"


def entry(vcpus: int, vcpu_type: str, guest_features: int, measurement: bytes | str,
          vmm_profile: str = "qemu") -> dict:
    """One measurements entry, its id made from its fields."""
    return {"shape": shape_id(vmm_profile, vcpu_type, vcpus, guest_features), "mode": "snp",
            "vmm_profile": vmm_profile, "vcpus": vcpus, "vcpu_type": vcpu_type,
            "vcpu_sig": f"{CPU_SIGS[vcpu_type]:#x}", "guest_features": f"{guest_features:#x}",
            "measurement": measurement if isinstance(measurement, str) else measurement.hex()}


def manifest_doc(measurements: list[dict], *, cmdline: str = CMDLINE) -> dict:
    sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    kernel, initrd = sha(b"kernel"), sha(b"initrd")
    return {
        "schema": SCHEMA, "name": "test",
        "tool": {"name": "blindbox-guest", "version": "0.1.0", "initrd_compressor": "gzip"},
        "recipe": {"file": "test.yaml", "sha256": sha(b"recipe")},
        "lock": {"file": "test.lock", "sha256": sha(b"lock")},
        "source_date_epoch": 0, "cmdline": cmdline,
        "kernel_hashes": {"kernel": kernel, "initrd": initrd, "cmdline": sha(cmdline.encode() + b"\0")},
        "firmware": {"file": "OVMF.amdsev.fd", "ovmf_hash": "ab" * 48, "sev_es_reset_eip": "0x80b004",
                     "sev_hashes_table": {"gpa": "0x810c00", "size": 1024},
                     "sev_metadata_sections": [{"type": "SNP_SEC_MEM", "gpa": "0x800000", "size": 36864},
                                               {"type": "SNP_KERNEL_HASHES", "gpa": "0x810000", "size": 4096}]},
        "launch": {"memory_mib": 512, "policy": "0x30000", "kernel_release": "6.1.0-56-amd64"},
        "inputs": [{"name": "firmware", "kind": "file", "version": None, "sha256": sha(b"fw"), "size": 2,
                    "origin": "file:OVMF.amdsev.fd"}],
        "outputs": [{"file": "OVMF.amdsev.fd", "role": "firmware", "sha256": sha(b"fw"), "size": 2},
                    {"file": "bzImage", "role": "kernel", "sha256": kernel, "size": 6},
                    {"file": "initrd", "role": "initrd", "sha256": initrd, "size": 6},
                    {"file": "cmdline", "role": "cmdline", "sha256": sha(cmdline.encode()),
                     "size": len(cmdline.encode())},
                    {"file": "launch-snp.sh", "role": "launch", "sha256": sha(b"launch"), "size": 6}],
        "measurements": measurements,
    }


def write_bundle(directory, firmware: bytes, measurements: list[dict], *, cmdline: str = CMDLINE) -> dict:
    """A bundle directory whose manifest lists the real digests of its files (a launch script
    that is not the builder's: enough for the reader and explain-report, not for rederive)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {"OVMF.amdsev.fd": firmware, "bzImage": b"kernel", "initrd": b"initrd",
             "cmdline": cmdline.encode(), "launch-snp.sh": b"#!/bin/sh\nexit 1\n"}
    doc = manifest_doc(measurements, cmdline=cmdline)
    for out in doc["outputs"]:
        data = files[out["file"]]
        out["sha256"], out["size"] = hashlib.sha256(data).hexdigest(), len(data)
        (directory / out["file"]).write_bytes(data)
    (directory / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc
