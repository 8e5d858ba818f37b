"""Re-derive every value a bundle's manifest publishes, from the bundle's own files.

An auditor's first check of a published bundle: does the manifest follow its schema and
agree with itself (:mod:`blindbox.audit.manifest`, the one reader), do the files hash to what it
says, and does every published value that the files determine follow from them — the
firmware facts and OVMF hash, the command line, the kernel's release (read from its
bzImage setup header by :mod:`measure.bzimage`, as the builder reads it), the kernel hashes,
the launch digest of each shape, the ID blocks and their key digests, what
``launch-snp.sh`` launches, whether the initrd carries and loads the published runtime policy
(its canonical JSON, the nftables rule set rendered from it, and the agent's ``--runtime-policy``), and
whether provenance.intoto.json is the in-toto statement of the manifest (:mod:`blindbox.audit.provenance`)?
It needs no builder code.  Values the files cannot determine (input origins, the recipe
and lock digests, ...) are listed in docs/auditing.md.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uuid

from measure import runtime_policy as rp
from measure import verity
from measure.cpio import Initrd, normalize_name, read_initrd
from measure.bzimage import bzimage_version, kernel_release
from measure.errors import InputError, MeasureError
from .errors import VerificationError
from measure.inputs import file_digest, is_fifo_or_socket, read_input
from measure.kernel_hashes import KernelHashes
from .manifest import ATTESTER_PARAM, SINGLE_ROLES, ManifestInvalid, outputs_by_role, read_manifest, runtime_policy_of
from measure.limits import MAX_CMDLINE_FILE_BYTES
from .limits import (MAX_INITRD_BYTES, MAX_INITRD_MEMBERS, MAX_INITRD_UNPACKED_BYTES, MAX_MANIFEST_BYTES,
                     MAX_PROVENANCE_BYTES)
from .provenance import PROVENANCE, first_difference, statement, to_json
from measure.ovmf import Firmware
from measure.snp import SnpLaunch, VmShape
from measure.vmm import profile

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str


def _manifest_bytes(bundle: Path) -> bytes:
    path = bundle / MANIFEST
    if is_fifo_or_socket(path):
        # reading a FIFO nobody writes to waits for ever; a bundle holds its manifest as a file
        raise InputError(f"the manifest {str(path)!r} is a FIFO or socket, not a file; a bundle's "
                         f"manifest.json is a regular file, so rebuild or re-download the bundle.")
    return read_input(path, "manifest", limit=MAX_MANIFEST_BYTES)


def _manifest(bundle: Path) -> dict[str, Any]:
    return read_manifest(_manifest_bytes(bundle), str(bundle / MANIFEST))


def _inside(bundle: Path, name: str, field: str, source: str) -> Path:
    """``bundle/name``, refused when it resolves (through symlinks) outside the bundle."""
    path = bundle / name
    root = os.path.realpath(bundle)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise ManifestInvalid(f"{source}: {field} is {name!r}, which resolves to {real}, outside the bundle "
                              f"directory; do not trust this bundle (a bundle holds its files itself).", path=field)
    return path


def bundle_role_files(bundle: Path, doc: dict[str, Any]) -> dict[str, Path]:
    """role -> path of each file a bundle has once (firmware, kernel, initrd, cmdline, launch)."""
    source = str(bundle / MANIFEST)
    index = {rec["file"]: i for i, rec in enumerate(doc["outputs"])}
    return {role: _inside(bundle, rec["file"], f"outputs[{index[rec['file']]}].file", source)
            for role, rec in outputs_by_role(doc).items()}


def load_bundle(bundle: str | Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The checked manifest of a bundle directory and its files by role."""
    bundle = Path(bundle)
    doc = _manifest(bundle)
    return doc, bundle_role_files(bundle, doc)


def _file_findings(bundle: Path, doc: dict[str, Any], source: str) -> tuple[list[Finding], set[str]]:
    """One finding per listed output; the set of files that are present (as published or not)."""
    findings: list[Finding] = []
    present: set[str] = set()
    for i, out in enumerate(doc["outputs"]):
        name, sha, size = out["file"], out["sha256"], out["size"]
        path = _inside(bundle, name, f"outputs[{i}].file", source)
        if not path.is_file():
            findings.append(Finding(f"file {name}", False, f"{path} is missing (or not a regular file)"))
            continue
        present.add(name)
        actual = file_digest(path, name).hex()
        actual_size = path.stat().st_size
        ok = actual == sha and actual_size == size
        findings.append(Finding(f"file {name}", ok, f"sha256 {actual}, {actual_size} bytes" if ok else
                                f"sha256 {actual} ({actual_size} bytes), manifest says {sha} ({size} bytes)"))
    return findings, present


def _provenance_finding(bundle: Path, doc: dict[str, Any], manifest_bytes: bytes) -> Finding:
    """provenance.intoto.json is the in-toto statement of the published manifest, field for field and byte for byte."""
    path = bundle / PROVENANCE
    if is_fifo_or_socket(path) or not path.is_file():
        return Finding(PROVENANCE, False, f"{path} is missing (or not a regular file); a blindbox bundle carries its "
                                          f"build provenance beside manifest.json, so rebuild the bundle or ask its "
                                          f"publisher for the file")
    data = read_input(path, "provenance", limit=MAX_PROVENANCE_BYTES)
    try:
        got = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        return Finding(PROVENANCE, False, f"{path} is not UTF-8 JSON with unique keys ({e}), so not the in-toto "
                                          f"statement blindbox writes")
    want = statement(doc, manifest_bytes)
    wrong = first_difference(got, want)
    if wrong is not None:
        return Finding(PROVENANCE, False, f"differs from the statement of the published manifest: {wrong}")
    if data != to_json(want):
        return Finding(PROVENANCE, False, "holds the statement of the published manifest, but not in the bytes "
                                          "blindbox writes (sorted keys, two-space indentation, one final newline)")
    deps = want["predicate"]["buildDefinition"]["resolvedDependencies"]
    return Finding(PROVENANCE, True, f"the in-toto statement of the published manifest: {len(want['subject'])} "
                                     f"subjects, {len(deps)} resolved dependencies")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"the key {key!r} appears twice in one object")
        obj[key] = value
    return obj


def _compare(name: str, published: object, derived: object, what: str) -> Finding:
    if published == derived:
        return Finding(name, True, f"{what} {derived}")
    return Finding(name, False, f"the bundle's files give {derived}, manifest says {published}")


def _firmware_findings(fw: Firmware, launch: SnpLaunch, published: dict[str, Any]) -> list[Finding]:
    facts = fw.describe()
    return [
        _compare("firmware.ovmf_hash", published["ovmf_hash"], launch.firmware_digest.hex(),
                 "SHA-384 launch digest after the firmware pages"),
        _compare("firmware.sev_es_reset_eip", published["sev_es_reset_eip"], facts["sev_es_reset_eip"],
                 "SEV-ES reset address"),
        _compare("firmware.sev_hashes_table", published["sev_hashes_table"], facts["sev_hashes_table"],
                 "SEV hashes table"),
        _compare("firmware.sev_metadata_sections", published["sev_metadata_sections"],
                 facts["sev_metadata_sections"], "SEV metadata sections:")
        if published["sev_metadata_sections"] != facts["sev_metadata_sections"] else
        Finding("firmware.sev_metadata_sections", True, f"all {len(facts['sev_metadata_sections'])} SEV metadata "
                                                        f"sections as published"),
    ]


def _sh_quote(text: str) -> str:
    """The single-quoted shell word launch-snp.sh writes for ``text``."""
    return "'" + text.replace("'", "'\\''") + "'"


_SCRIPT_POLICY = re.compile(r'^snp="sev-snp-guest,[^"\n]*,policy=(0x[0-9a-f]+)"$', re.M)
_SCRIPT_MEMORY = re.compile(r"^memory=([0-9]{1,20})$", re.M)  # a bounded number: int() refuses 4300+ digits
_SCRIPT_CMDLINE = re.compile(r"^cmdline=(.*)$", re.M)
_SCRIPT_SHAPES = re.compile(r"^shapes=\(\n((?:  '[^'\n]*'\n)*)\)$", re.M)
_SCRIPT_FILES = re.compile(r"^files=\(\n((?:  '[^'\n]*'\n)*)\)$", re.M)
_SCRIPT_DISK = re.compile(r'^argv\+=\(-drive "if=none,id=(rootfs|verity),file=\$\{here//,/,,\}/([^,"\n]+),'
                          r'format=raw,readonly=on"$', re.M)


def _one(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.findall(text)
    return found[0] if len(found) == 1 else None


def _launch_script_findings(path: Path, doc: dict[str, Any]) -> list[Finding]:
    """What launch-snp.sh hands QEMU: the published policy, memory, command line and shapes."""
    try:
        text = read_input(path, "launch script").decode("utf-8")
    except UnicodeDecodeError:
        return [Finding("launch-snp.sh", False, f"{path} is not UTF-8 text, so not a blindbox launch script")]
    launch = doc["launch"]
    rows = _one(_SCRIPT_SHAPES, text)
    expected_rows = "".join(
        f"  '{m['shape']} {m['vcpus']} {m['vcpu_type']} {m['guest_features']} {m['measurement']} "
        f"{m.get('id_block') or '-'} {m.get('id_auth') or '-'} {'on' if m.get('author_key_digest') else 'off'}'\n"
        for m in doc["measurements"])
    cmdline = _one(_SCRIPT_CMDLINE, text)
    memory = _one(_SCRIPT_MEMORY, text)
    return _launch_disk_findings(text, doc) + [
        _compare("launch.policy", launch["policy"], _one(_SCRIPT_POLICY, text),
                 "launch-snp.sh launches with GUEST_POLICY"),
        _compare("launch.memory_mib", launch["memory_mib"],
                 None if memory is None else int(memory),
                 "launch-snp.sh's default guest memory in MiB is"),
        Finding("launch-snp.sh cmdline", cmdline == _sh_quote(doc["cmdline"]),
                "launch-snp.sh passes the published cmdline" if cmdline == _sh_quote(doc["cmdline"]) else
                f"launch-snp.sh passes cmdline={cmdline}, manifest says {_sh_quote(doc['cmdline'])}"),
        Finding("launch-snp.sh shapes", rows == expected_rows,
                "launch-snp.sh launches exactly the published shapes" if rows == expected_rows else
                "launch-snp.sh's shapes table is not the published measurements (shape, vCPUs, type, "
                "features, digest, ID block files)"),
    ]


def _launch_disk_findings(text: str, doc: dict[str, Any]) -> list[Finding]:
    """The files launch-snp.sh checks before it launches, and the root's disks it attaches, in order."""
    published = {rec["file"]: rec["sha256"] for rec in doc["outputs"]}
    rows = _one(_SCRIPT_FILES, text)
    listed = dict(row.strip().strip("'").split(" ", 1) for row in (rows or "").splitlines() if " " in row.strip())
    wrong = sorted(name for name, sha in listed.items() if published.get(name) != sha)
    needed = {rec["file"] for rec in doc["outputs"] if rec["role"] in ("firmware", "kernel", "initrd", "rootfs",
                                                                           "rootfs-verity")}
    missing = sorted(needed - set(listed))
    findings = [Finding("launch-snp.sh files", rows is not None and not wrong and not missing,
                        "launch-snp.sh checks every file it passes against its published sha256"
                        if rows is not None and not wrong and not missing else
                        f"launch-snp.sh's files table differs from outputs: wrong sha256 for {wrong or 'none'}, "
                        f"missing {missing or 'none'}")]
    disks = _SCRIPT_DISK.findall(text)
    expected = [("rootfs", doc["rootfs"]["image"]["file"]), ("verity", doc["rootfs"]["verity"]["file"])] \
        if "rootfs" in doc else []
    findings.append(Finding("launch-snp.sh disks", disks == expected,
                            ("launch-snp.sh attaches the root image, then its hash device, read-only" if expected
                             else "launch-snp.sh attaches no disks (the bundle has no root filesystem)")
                            if disks == expected else f"launch-snp.sh attaches {disks}, the manifest says {expected}"))
    return findings


def _kernel_release_finding(kernel: Path, published: str) -> Finding:
    """The release the kernel's setup header names, read as the builder reads it to record it."""
    try:
        release = kernel_release(bzimage_version(kernel))
    except MeasureError as e:
        return Finding("launch.kernel_release", False, f"cannot be read from the kernel: {e}")
    return _compare("launch.kernel_release", published, release, "the kernel's setup header names release")


def _read_b64(path: Path, what: str) -> bytes | None:
    try:
        text = read_input(path, what).decode("ascii")
        return base64.b64decode(text.rstrip("\n"), validate=True)
    except (UnicodeDecodeError, binascii.Error):
        return None


def _id_block_finding(bundle: Path, entry: dict[str, Any], launch: dict[str, Any]) -> Finding:
    """The shape's ID block signs its published digest and launch fields with the published keys."""
    from .idblock import IdAuthInfo, IdBlock, verify_id_auth  # auditor side: needs cryptography

    name = f"id_block {entry['shape']}"
    block_raw = _read_b64(bundle / entry["id_block"], "ID block")
    auth_raw = _read_b64(bundle / entry["id_auth"], "ID auth")
    if block_raw is None or auth_raw is None:
        return Finding(name, False, f"{entry['id_block']} or {entry['id_auth']} is not base64")
    try:
        block = IdBlock.from_bytes(block_raw, what=entry["id_block"])
        auth = IdAuthInfo.from_bytes(auth_raw, what=entry["id_auth"])
        verify_id_auth(block_raw, auth_raw)
    except (MeasureError, VerificationError) as e:  # malformed, or a signature that does not verify
        return Finding(name, False, str(e))
    spec = launch["id_block"]
    author = hashlib.sha384(auth.author_pubkey.to_bytes()).hexdigest() if auth.auth_key_algo else None
    derived = {
        "measurements[].measurement": (entry["measurement"], block.ld.hex()),
        "launch.id_block.family_id": (spec["family_id"], block.family_id.hex()),
        "launch.id_block.image_id": (spec["image_id"], block.image_id.hex()),
        "launch.id_block.guest_svn": (spec["guest_svn"], block.guest_svn),
        "launch.id_block.policy": (spec["policy"], f"{block.policy:#x}"),
        "launch.id_block.author_key": (spec["author_key"], bool(auth.auth_key_algo)),
        "measurements[].id_key_digest": (entry["id_key_digest"], hashlib.sha384(auth.id_pubkey.to_bytes()).hexdigest()),
        "measurements[].author_key_digest": (entry["author_key_digest"], author),
    }
    wrong = [f"{k} (manifest {p}, ID block {d})" for k, (p, d) in derived.items() if p != d]
    if block.version != 1:
        wrong.append(f"ID block version {block.version}, not 1")
    if wrong:
        return Finding(name, False, "differs from the manifest: " + "; ".join(wrong))
    return Finding(name, True, "signed by the published ID key (and author key) over the published digest, "
                               "family and image IDs, SVN and policy")


def _id_bin_findings(bundle: Path, doc: dict[str, Any], present: set[str]) -> list[Finding]:
    """Each raw ID block / ID auth file holds the bytes of its base64 twin."""
    findings = []
    listed = {rec["file"]: rec["role"] for rec in doc["outputs"]}
    for name, role in listed.items():
        if role not in ("id-block-bin", "id-auth-bin"):
            continue
        twin = name[:-len(".bin")] + ".b64" if name.endswith(".bin") else None
        if twin is None or listed.get(twin) != role[:-len("-bin")]:
            findings.append(Finding(f"file {name}", False, f"no {role[:-len('-bin')]} file {twin!r} is listed "
                                                           f"beside it"))
            continue
        if name not in present or twin not in present:
            continue
        same = read_input(bundle / name, role) == _read_b64(bundle / twin, role)
        findings.append(Finding(f"file {name}", same, f"the bytes of {twin}" if same else
                                f"differs from the base64 in {twin}"))
    return findings


def _rootfs_findings(bundle: Path, doc: dict[str, Any], present: set[str]) -> list[Finding]:
    """The application root: its root hash, recomputed from the image, is the one the measured cmdline carries,
    and the hash device holds the tree the guest checks every block against."""
    rf = doc["rootfs"]
    image, hashes = rf["image"]["file"], rf["verity"]["file"]
    if image not in present or hashes not in present:
        return [Finding("rootfs.verity.root_hash", False, "not re-derived: the image or its hash file is missing")]
    table = verity.parse_table(verity.cmdline_table(doc["cmdline"]) or "")  # the manifest reader checked both
    params = table.params(uuid=uuid.UUID(rf["verity"]["uuid"]))
    tree = verity.root_hash(bundle / image, params, table.data_blocks)
    findings = [_compare("rootfs.verity.root_hash", table.root_hash.hex(), tree.root_hash.hex(),
                         f"the root hash of {image}, as the measured cmdline's table says, is")]
    salt = verity.derived_salt(doc["recipe"]["sha256"], doc["lock"]["sha256"])
    findings.append(_compare("rootfs.verity.salt", table.salt.hex(), salt.hex(),
                             "derived from the published recipe and lock digests:"))
    wanted_uuid = str(verity.derived_uuid("verity", doc["recipe"]["sha256"], doc["lock"]["sha256"]))
    findings.append(_compare("rootfs.verity.uuid", rf["verity"]["uuid"], wanted_uuid,
                             "derived from the published recipe and lock digests:"))
    verdict = verity.verify_files(bundle / image, bundle / hashes, params, table.root_hash, table.data_blocks)
    findings.append(Finding(f"file {hashes} (verity)", verdict.ok,
                            f"every hash block of the tree over {table.data_blocks} data blocks verifies"
                            if verdict.ok else f"the guest would refuse its root: {verdict.corruption}"))
    return findings


#: what the init does with the runtime policy, as the builder writes it: checks the JSON against the measured
#: cmdline, loads the rule set, and (with an agent) starts the agent with the JSON
_INIT_CHECKS = f"sha256sum {rp.GUEST_PATH} "
_INIT_LOADS = f"nft -f {rp.RULESET_PATH} "
_AGENT_OPTION = f" --runtime-policy {rp.GUEST_PATH} "


def _first_difference(carried: bytes, expected: bytes) -> str:
    got, want = carried.decode("utf-8", "replace").split("\n"), expected.decode("utf-8").split("\n")
    for n, (a, b) in enumerate(zip(got, want, strict=False), start=1):
        if a != b:
            return f"line {n} is {a[:160]!r}, the manifest's runtime policy gives {b[:160]!r}"
    n = min(len(got), len(want)) + 1
    if len(got) > len(want):
        return f"line {n} is {got[n - 1][:160]!r}, beyond the end of the rule set the manifest's runtime policy gives"
    return f"it ends before line {n}, which the manifest's runtime policy gives as {want[n - 1][:160]!r}"


def _simulated_attester(doc: dict[str, Any]) -> tuple[str, int] | None:
    """The (address, port) of the cmdline's ``blindbox.attester=simulated:HOST:PORT`` word, if the agent uses one."""
    if doc.get("agent", {}).get("attester") != "simulated":
        return None
    word = next(w for w in doc["cmdline"].split(" ") if w.startswith(ATTESTER_PARAM + "=simulated:"))
    host, port = word[len(ATTESTER_PARAM + "=simulated:"):].rsplit(":", 1)
    return host, int(port)


def _runtime_policy_findings(path: Path, doc: dict[str, Any]) -> list[Finding]:
    """The initrd carries exactly the published runtime policy and the rule set rendered from it, and its init
    checks and loads them (read as the kernel unpacks it: the last occurrence of a path counts)."""
    initrd = read_initrd(read_input(path, "initrd", limit=MAX_INITRD_BYTES), f"the initrd {str(path)!r}",
                         max_bytes=MAX_INITRD_UNPACKED_BYTES, max_members=MAX_INITRD_MEMBERS)
    policy = runtime_policy_of(doc)
    if policy is None:
        carried = sorted({normalize_name(m.name, initrd.what) for m in initrd.members}
                         & {normalize_name(p, initrd.what) for p in (rp.GUEST_PATH, rp.RULESET_PATH)})
        return [Finding("initrd runtime policy", not carried,
                        "the manifest publishes no runtime policy and the initrd carries none" if not carried else
                        f"the manifest publishes no runtime policy, but the initrd carries /{carried[0]}")]
    findings = []
    json_data, why = initrd.lookup(rp.GUEST_PATH)
    expected_json = rp.canonical_json(policy)
    findings.append(Finding(f"initrd {rp.GUEST_PATH}", json_data == expected_json,
                            "the canonical JSON of the published runtime policy" if json_data == expected_json else
                            why if json_data is None else
                            f"holds {json_data[:200]!r}, the canonical JSON of the published runtime policy is "
                            f"{expected_json[:200]!r}"))
    try:
        attester = _simulated_attester(doc)
        listen = doc["agent"]["listen"] if "agent" in doc else None
        expected_nft = rp.render_ruleset(policy, agent_listen=listen, simulated_attester=attester).encode("utf-8")
    except ValueError as e:
        return findings + [Finding(f"initrd {rp.RULESET_PATH}", False, f"the manifest's simulated attester "
                                                                       f"address cannot be rendered: {e}")]
    nft_data, why = initrd.lookup(rp.RULESET_PATH)
    findings.append(Finding(f"initrd {rp.RULESET_PATH}", nft_data == expected_nft,
                            "the rule set rendered from the published runtime policy"
                            + (f", agent port {listen}" if listen is not None else ", no agent")
                            + (f", simulated attester {attester[0]}:{attester[1]}" if attester else "")
                            if nft_data == expected_nft else why if nft_data is None else
                            "differs from the rule set rendered from the published runtime policy: "
                            + _first_difference(nft_data, expected_nft)))
    findings.append(_init_finding(initrd, "agent" in doc, doc["cmdline"]))
    return findings


def _init_finding(initrd: Initrd, agent: bool, cmdline: str) -> Finding:
    """The init text checks the JSON's digest, loads the rule set and hands the JSON to the agent (a textual
    check: that the script does what its lines say is what a rebuild proves), and the kernel runs it."""
    other = [w for w in cmdline.split(" ") if w.startswith("rdinit=")]
    if other:
        return Finding("initrd init", False, f"the measured cmdline carries {other[0][:100]}, so the kernel does not "
                                             f"run the initrd's /init")
    data, why = initrd.lookup("init")
    if data is None:
        return Finding("initrd init", False, why)
    text = data.decode("utf-8", "replace")
    wanted = [_INIT_CHECKS, _INIT_LOADS] + ([_AGENT_OPTION] if agent else [])
    missing = [w.strip() for w in wanted if w not in text]
    return Finding("initrd init", not missing,
                   "checks the runtime policy's digest, loads its rule set" + (" and starts the agent with it"
                                                                                if agent else "")
                   if not missing else f"the initrd's /init does not contain {missing[0]!r}, so it does not "
                                       f"enforce the published runtime policy as a blindbox init does")


def rederive(bundle: str | Path) -> list[Finding]:
    """One finding per published value; all ``ok`` means the bundle is what its manifest says."""
    bundle = Path(bundle)
    source = str(bundle / MANIFEST)
    manifest_bytes = _manifest_bytes(bundle)
    doc = read_manifest(manifest_bytes, source)
    roles = bundle_role_files(bundle, doc)
    # Everything below is derived from the files as they are, so that a changed file shows
    # which published values it changes (its own finding above already fails).
    findings, present = _file_findings(bundle, doc, source)
    findings.append(_provenance_finding(bundle, doc, manifest_bytes))
    files = outputs_by_role(doc)
    have = {role for role in SINGLE_ROLES if files[role]["file"] in present}

    if "cmdline" in have:
        data = read_input(roles["cmdline"], "cmdline", limit=MAX_CMDLINE_FILE_BYTES)
        published = doc["cmdline"].encode("utf-8")
        findings.append(Finding("cmdline", data == published, "the cmdline file holds the published cmdline"
                                if data == published else f"the cmdline file holds {data!r}, manifest says "
                                                         f"{published!r}"))
    if "launch" in have:
        findings.extend(_launch_script_findings(roles["launch"], doc))

    if "kernel" in have:
        findings.append(_kernel_release_finding(roles["kernel"], doc["launch"]["kernel_release"]))

    hashes = None
    if {"kernel", "initrd", "cmdline"} <= have:
        hashes = KernelHashes.from_files(roles["kernel"], roles["initrd"], data)
        got = {"kernel": hashes.kernel.hex(), "initrd": hashes.initrd.hex(), "cmdline": hashes.cmdline.hex()}
        wrong = [f"kernel_hashes.{k}" for k, v in got.items() if doc["kernel_hashes"][k] != v]
        findings.append(Finding("kernel_hashes", not wrong, "kernel, initrd and cmdline SHA-256 as published"
                                if not wrong else f"{', '.join(wrong)}: recomputed {got}, manifest says "
                                                  f"{doc['kernel_hashes']}"))

    launch = None
    if "firmware" in have:
        try:
            fw = Firmware.load(roles["firmware"])
            launch = SnpLaunch(fw)
        except MeasureError as e:
            findings.append(Finding("firmware", False, f"cannot be measured: {e}"))
        else:
            findings.extend(_firmware_findings(fw, launch, doc["firmware"]))

    for entry in doc["measurements"]:
        sid = entry["shape"]
        if launch is None or hashes is None:
            findings.append(Finding(f"shape {sid}", False, "not re-derived: the firmware, kernel, initrd or "
                                                           "cmdline file is missing or cannot be measured"))
            continue
        shape = VmShape(entry["vcpus"], int(entry["vcpu_sig"], 16), int(entry["guest_features"], 16),
                        profile(entry["vmm_profile"]))
        digest = launch.measure(shape, hashes).digest.hex()
        expected = entry["measurement"]
        findings.append(Finding(f"shape {sid}", digest == expected,
                                digest if digest == expected else f"recomputed {digest}, manifest says {expected}"))
        if "id_block" in entry:
            if entry["id_block"] in present and entry["id_auth"] in present:
                findings.append(_id_block_finding(bundle, entry, doc["launch"]))
            else:
                findings.append(Finding(f"id_block {sid}", False, "not checked: its files are missing"))
    findings.extend(_id_bin_findings(bundle, doc, present))
    if "rootfs" in doc:
        findings.extend(_rootfs_findings(bundle, doc, present))
    if "initrd" in have:
        try:
            findings.extend(_runtime_policy_findings(roles["initrd"], doc))
        except MeasureError as e:  # an initrd that cannot be read whole cannot show which runtime policy it carries
            findings.append(Finding("initrd runtime policy", False, f"cannot be read: {e}"))
    return findings


def manifest_sha256(bundle: str | Path) -> str:
    return hashlib.sha256(read_input(Path(bundle) / MANIFEST, "manifest", limit=MAX_MANIFEST_BYTES)).hexdigest()


__all__ = ["Finding", "bundle_role_files", "load_bundle", "manifest_sha256", "rederive"]
