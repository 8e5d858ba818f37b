"""Re-derive every launch digest a bundle's manifest publishes, from the bundle's own files.

An auditor's first check of a published bundle: do the files hash to what the manifest
says, and does each published MEASUREMENT follow from those files and the shape's
parameters?  This reads ``manifest.json`` as plain JSON (no builder code) and recomputes
with the measure library alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .inputs import file_digest, read_input
from .kernel_hashes import KernelHashes
from .ovmf import Firmware
from .snp import SnpLaunch, VmShape
from .vmm import profile


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str


def _manifest(bundle: Path) -> dict:
    path = bundle / "manifest.json"
    try:
        doc = json.loads(read_input(path, "manifest"))
    except ValueError as e:
        raise InputError(f"{path} is not JSON ({e}); give the directory `blindbox build` wrote.") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list) or \
            not isinstance(doc.get("measurements"), list):
        raise InputError(f"{path} has no \"outputs\" and \"measurements\" lists; it is not a blindbox "
                         f"manifest.")
    return doc


def bundle_role_files(bundle: Path, doc: dict) -> dict[str, Path]:
    """role -> path of each output the manifest lists (firmware, kernel, initrd, cmdline, ...)."""
    roles = {}
    for out in doc["outputs"]:
        try:
            name, role = out["file"], out.get("role")
        except (KeyError, TypeError, AttributeError):
            raise InputError(f"{bundle / 'manifest.json'}: an outputs entry has no file name; the manifest "
                             f"is malformed.") from None
        if not isinstance(name, str) or not (role is None or isinstance(role, str)):
            raise InputError(f"{bundle / 'manifest.json'}: an outputs entry has file {name!r} and role {role!r}; "
                             f"both must be strings. The manifest is malformed.")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise InputError(f"{bundle / 'manifest.json'} names output {name!r} outside the bundle.")
        if role:
            roles[role] = bundle / name
    missing = [r for r in ("firmware", "kernel", "cmdline") if r not in roles]
    if missing:
        raise InputError(f"{bundle / 'manifest.json'} lists no output with role {', '.join(missing)}; "
                         f"cannot re-derive the launch digests.")
    return roles


def load_bundle(bundle: str | Path) -> tuple[dict, dict[str, Path]]:
    """The manifest of a bundle directory and its outputs by role."""
    bundle = Path(bundle)
    doc = _manifest(bundle)
    return doc, bundle_role_files(bundle, doc)


def rederive(bundle: str | Path) -> list[Finding]:
    """One finding per output file and per published shape; all ``ok`` means the bundle is consistent."""
    bundle = Path(bundle)
    doc, roles = load_bundle(bundle)
    findings: list[Finding] = []
    for out in doc["outputs"]:
        try:
            name, sha, size = out["file"], out["sha256"], out["size"]
        except (KeyError, TypeError):
            raise InputError(f"{bundle / 'manifest.json'}: an outputs entry lacks file/sha256/size; the "
                             f"manifest is malformed.") from None
        path = bundle / name
        if not path.is_file():
            findings.append(Finding(f"file {name}", False, f"{path} is missing"))
            continue
        actual = file_digest(path, name).hex()
        actual_size = path.stat().st_size
        ok = actual == sha and actual_size == size
        findings.append(Finding(f"file {name}", ok, f"sha256 {actual}, {actual_size} bytes" if ok else
                                f"sha256 {actual} ({actual_size} bytes), manifest says {sha} ({size} bytes)"))
    cmdline = read_input(roles["cmdline"], "cmdline")
    hashes = KernelHashes.from_files(roles["kernel"], roles.get("initrd"), cmdline)
    published = doc.get("kernel_hashes")
    if isinstance(published, dict):
        got = {"kernel": hashes.kernel.hex(), "initrd": hashes.initrd.hex(), "cmdline": hashes.cmdline.hex()}
        ok = all(published.get(k) == v for k, v in got.items())
        findings.append(Finding("kernel_hashes", ok, "kernel, initrd and cmdline SHA-256 as published" if ok
                                else f"recomputed {got}, manifest says {published}"))
    launch = SnpLaunch(Firmware.load(roles["firmware"]))
    for entry in doc["measurements"]:
        try:
            shape = VmShape(int(entry["vcpus"]),
                            None if entry.get("vcpu_sig") is None else int(entry["vcpu_sig"], 16),
                            int(entry["guest_features"], 16), profile(entry["vmm_profile"]))
            expected = entry["measurement"]
            sid = entry["shape"]
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{bundle / 'manifest.json'}: a measurements entry is malformed "
                             f"({type(e).__name__}: {e}).") from None
        if entry.get("mode", "snp") != "snp":
            raise InputError(f"{bundle / 'manifest.json'}: shape {sid!r} has mode {entry.get('mode')!r}; "
                             f"only snp shapes can be re-derived.")
        digest = launch.measure(shape, hashes).digest.hex()
        findings.append(Finding(f"shape {sid}", digest == expected,
                                digest if digest == expected else f"recomputed {digest}, manifest says {expected}"))
    return findings


def manifest_sha256(bundle: str | Path) -> str:
    return hashlib.sha256(read_input(Path(bundle) / "manifest.json", "manifest")).hexdigest()
