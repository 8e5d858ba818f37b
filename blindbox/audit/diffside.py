"""One side of ``blindbox measure-diff`` from a bundle: ``manifest.json#SHAPE``.

The trace is recomputed from the bundle's own files (the firmware, kernel, initrd and
cmdline next to the manifest), each checked against the SHA-256 the manifest publishes,
for the shape the manifest names; the recomputed digest must be the published one.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path

from measure.diff import Side
from measure.errors import InputError
from measure.inputs import file_digest, read_input
from measure.kernel_hashes import KernelHashes
from measure.limits import MAX_CMDLINE_FILE_BYTES
from measure.ovmf import Firmware
from measure.snp import SnpLaunch, VmShape
from measure.vmm import profile

from .errors import VerificationError
from .limits import MAX_MANIFEST_BYTES
from .manifest import outputs_by_role, read_manifest
from .rederive import bundle_role_files


def side_from_manifest(manifest: str | Path, shape: str, label: str) -> Side:
    """The launch of ``shape`` as the bundle holding ``manifest`` measures it, with its page trace."""
    path = Path(manifest)
    where = f"{label} ({path}#{shape})"
    doc = read_manifest(read_input(path, "manifest", limit=MAX_MANIFEST_BYTES), str(path))
    entries = {e["shape"]: e for e in doc["measurements"]}
    if shape not in entries:
        raise InputError(f"{path} publishes no shape {shape!r}; it publishes {', '.join(entries) or 'none'}.")
    entry = entries[shape]
    roles = bundle_role_files(path.parent, doc)
    records = outputs_by_role(doc)
    for role in ("firmware", "kernel", "initrd", "cmdline"):
        if role not in roles:
            raise InputError(f"{path} lists no {role} file, so {shape} cannot be measured from the bundle.")
        file = roles[role]
        if not file.is_file():
            raise InputError(f"{where}: the bundle's {role} file {file} is missing; measure-diff recomputes "
                             f"the launch from the files next to the manifest.")
        actual = file_digest(file, role).hex()
        if actual != records[role]["sha256"]:
            raise VerificationError(f"{where}: the bundle's {role} file {file} has SHA-256 {actual}, the manifest "
                                    f"says {records[role]['sha256']}; it is not the published file (see "
                                    f"`blindbox rederive`).")
    cmdline = read_input(roles["cmdline"], "cmdline", limit=MAX_CMDLINE_FILE_BYTES)
    fw = Firmware.load(roles["firmware"])
    hashes = KernelHashes.from_files(roles["kernel"], roles["initrd"], cmdline)
    sig = int(entry["vcpu_sig"], 16)
    features = int(entry["guest_features"], 16)
    m = SnpLaunch(fw, trace=True).measure(VmShape(entry["vcpus"], sig, features, profile(entry["vmm_profile"])),
                                          hashes)
    if m.digest.hex() != entry["measurement"]:
        raise VerificationError(f"{where}: the bundle's files give {m.digest.hex()} for {shape}, the manifest "
                                f"publishes {entry['measurement']}; see `blindbox rederive`.")
    assert m.log is not None  # traced
    return Side(label=where, trace=tuple((t.name, gpa, c, d) for t, gpa, c, d in m.log), digest=m.digest,
                vcpus=entry["vcpus"], vcpu_sig=sig, guest_features=features, profile=entry["vmm_profile"],
                firmware=fw.describe(), kernel_hashes={"kernel": hashes.kernel.hex(), "initrd": hashes.initrd.hex(),
                                                       "cmdline": hashes.cmdline.hex()},
                firmware_data=fw.data)
