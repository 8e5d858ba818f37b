"""The one reader of ``manifest.json``: its schema, checked key by key.

Every consumer of a published manifest (``blindbox rederive``, ``verify-report
--manifest``, ``explain-report --bundle``, and the builder reading a bundle back) goes
through :func:`read_manifest` or :func:`check_manifest`; the builder's writer checks its own
output with :func:`check_manifest` too, so writer and reader cannot drift apart.

Three kinds of failure, with the exit statuses every command uses:

* the file is not a blindbox manifest at all (not JSON, not an object, no ``schema``
  naming ``blindbox-manifest/N``): :class:`~measure.errors.InputError`, exit 2 — the
  wrong file was given;
* a value is malformed for its field's type (a string where an integer goes, a digest that
  is not N lower-case hex digits, a hex number that is not ``0x...``):
  :class:`ManifestMalformed`, an :class:`~measure.errors.InputError`, exit 2 — the same
  value given as a command-line option is refused with exit 2 too;
* it is well formed but states something that does not verify: an unknown schema version,
  a missing, unknown or duplicate key or entry, an out-of-range value, a path leaving the
  bundle, a contradiction with itself (a shape id against the shape's fields, a vCPU type
  against its signature, the kernel hashes against the listed outputs, ...) or, in
  :mod:`blindbox.audit.rederive`, with its bundle: :class:`ManifestInvalid`, a
  :class:`~blindbox.audit.errors.VerificationError`, exit 3.

Both name the field by its JSON path (``measurements[1].vcpus``).

This module checks what the manifest can check about itself; :mod:`blindbox.audit.rederive`
compares the rest with the bundle's files.  It needs no builder code.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import Any, NoReturn

from measure import runtime_policy as rp
from measure import verity
from measure.cpu import CPU_SIGS
from measure.errors import InputError
from .errors import VerificationError
from .limits import MAX_MANIFEST_SHAPES, MAX_MANIFEST_VCPUS
from measure.spec import GuestFeatures, SectionType
from measure.vmm import PROFILES

SCHEMA = "blindbox-manifest/1"
SCHEMA_PREFIX = "blindbox-manifest/"
#: roles of the files a bundle holds (outputs[].role)
ROLES = ("firmware", "kernel", "initrd", "cmdline", "launch", "id-block", "id-auth", "id-block-bin",
         "id-auth-bin", "rootfs", "rootfs-verity")
#: roles every bundle has exactly one file of
SINGLE_ROLES = ("firmware", "kernel", "initrd", "cmdline", "launch")
#: roles a bundle with an application root (``rootfs`` in the manifest) has exactly one file of
ROOTFS_ROLES = ("rootfs", "rootfs-verity")
INPUT_KINDS = ("debian", "file", "url", "oci", "tree")
#: what the application root's image is, and where each of its sources came from
ROOTFS_FORMATS = ("erofs",)
ROOTFS_SOURCE_KINDS = ("oci-config", "oci-layer", "debian", "tree", "file")
CORRUPTION_MODES = ("eio", "restart", "panic")
MAX_VCPUS = 4096
POLICY_RESERVED_ONE = 1 << 17

_HEX = {n: re.compile(f"[0-9a-f]{{{n}}}") for n in (32, 64, 96)}
_HEX_INT = re.compile(r"0x(?:0|[1-9a-f][0-9a-f]*)")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class ManifestInvalid(VerificationError):
    """A manifest breaks its schema or contradicts itself or its bundle; ``path`` names the field."""

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        self.path = path


class ManifestMalformed(InputError):
    """A manifest value is not of its field's type or syntax; ``path`` names the field."""

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        self.path = path


class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it had more than once."""

    duplicates: tuple[str, ...] = ()


def _pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    dups = []
    for k, v in pairs:
        if k in obj and k not in dups:
            dups.append(k)
        obj[k] = v
    obj.duplicates = tuple(dups)
    return obj


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, problem: str, todo: str | None = None) -> ManifestInvalid:
        todo = todo or ("the manifest is not what blindbox build writes, so do not trust what it publishes "
                        "(get the bundle's own manifest, or rebuild the bundle)")
        return ManifestInvalid(f"{self.source}: {path} {problem}; {todo}.", path=path)

    def malformed(self, path: str, problem: str) -> ManifestMalformed:
        return ManifestMalformed(f"{self.source}: {path} {problem}; the manifest is malformed, so it was not "
                                 f"written by blindbox build (get the bundle's own manifest, or rebuild the "
                                 f"bundle).", path=path)

    # -- types -------------------------------------------------------------------------
    def obj(self, value: Any, path: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.malformed(path, f"is {_kind(value)}, not an object")
        for k in value:
            if k not in keys and k not in optional:
                raise self.fail(_join(path, k), f"is not a key of this schema ({SCHEMA})")
        for k in keys:
            if k not in value:
                raise self.fail(_join(path, k), "is missing")
        return value

    def str(self, value: Any, path: str, *, nonempty: bool = True) -> str:
        if not isinstance(value, str):
            raise self.malformed(path, f"is {_kind(value)}, not a string")
        if nonempty and not value:
            raise self.fail(path, "is empty")
        return value

    def int(self, value: Any, path: builtins.str, lo: int = 0, hi: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.malformed(path, f"is {_kind(value)}, not an integer")
        if value < lo or (hi is not None and value > hi):
            raise self.fail(path, f"is {value}, outside {lo} to {hi if hi is not None else 'any'}")
        return value

    def hex_digest(self, value: Any, path: builtins.str, digits: builtins.int) -> builtins.str:
        if not isinstance(value, str) or not _HEX[digits].fullmatch(value):
            raise self.malformed(path, f"is {_short(value)}, not {digits} lower-case hex digits")
        return value

    def hex_int(self, value: Any, path: builtins.str, hi: builtins.int = (1 << 64) - 1) -> builtins.int:
        if not isinstance(value, str) or not _HEX_INT.fullmatch(value):
            raise self.malformed(path, f"is {_short(value)}, not a hex number written as 0x... (lower case, "
                                  f"no leading zeros)")
        number = int(value, 16)
        if number > hi:
            raise self.fail(path, f"is {value}, larger than {hi:#x}")
        return number

    def choice(self, value: Any, path: builtins.str, choices: Any, what: builtins.str) -> builtins.str:
        """A string naming one of ``choices``: another type is malformed, another name is false."""
        name = self.str(value, path)
        if name not in choices:
            raise self.fail(path, f"is {_short(name)}, not {what} ({', '.join(choices)})")
        return name

    def list(self, value: Any, path: builtins.str, *, nonempty: bool = True) -> builtins.list[Any]:
        if not isinstance(value, list):
            raise self.malformed(path, f"is {_kind(value)}, not a list")
        if nonempty and not value:
            raise self.fail(path, "is an empty list")
        return value

    def bundle_path(self, value: object, path: builtins.str) -> builtins.str:
        """A file inside the bundle: relative, no '..', no empty or '.' parts, no backslash or NUL."""
        value = self.str(value, path)
        parts = value.split("/")
        if value.startswith("/") or PurePosixPath(value).is_absolute():
            raise self.fail(path, f"is {value!r}, an absolute path; bundle files are named relative to "
                                  f"the bundle directory")
        if any(p in ("", ".", "..") for p in parts) or "\\" in value or "\0" in value:
            raise self.fail(path, f"is {value!r}, which leaves the bundle directory or is not a plain "
                                  f"relative path")
        return value

    def plain_name(self, value: object, path: builtins.str) -> builtins.str:
        value = self.str(value, path)
        if not _PLAIN_NAME.fullmatch(value):
            raise self.fail(path, f"is {value!r}, not a plain file name")
        return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: f"the string {_short(value)}",
            list: "a list", dict: "an object", _Object: "an object"}.get(type(value), "a value")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_duplicate_keys(value: Any, path: str, c: _Checker) -> None:
    if isinstance(value, _Object) and value.duplicates:
        raise c.fail(_join(path, value.duplicates[0]), "appears twice in one object (a JSON reader may take "
                                                        "either value)")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_duplicate_keys(v, _join(path, k), c)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_duplicate_keys(v, _join(path, i), c)


def parse_json(data: bytes, source: str) -> Any:
    """``data`` as a JSON object whose duplicate keys are remembered (checked by :func:`check_manifest`)."""
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_no_constant)
    except RecursionError:
        raise InputError(f"{source} nests brackets too deeply to be a manifest; give the manifest.json of a "
                         f"bundle built by blindbox build.") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{source} is not UTF-8 JSON ({e}); give the manifest.json of a bundle built by "
                         f"blindbox build.") from None
    return doc


def read_manifest(data: bytes, source: str = "manifest.json") -> dict[str, Any]:
    """The checked manifest in ``data`` (a plain JSON document); see the module docstring."""
    return check_manifest(parse_json(data, source), source)


def shape_id(vmm_profile: str, vcpu_type: str, vcpus: int, guest_features: int) -> str:
    """The id of a VM shape, as the builder names it: ``qemu:EPYC-v4:4:0x1``."""
    return f"{vmm_profile}:{vcpu_type}:{vcpus}:{guest_features:#x}"


def check_work_bounds(doc: dict[str, Any], source: str) -> None:
    """Refuse a manifest whose re-derivation would take minutes (docs/limits.md)."""
    entries = doc.get("measurements")
    if not isinstance(entries, list):
        return  # the schema check names it
    if len(entries) > MAX_MANIFEST_SHAPES:
        raise InputError(f"{source} publishes {len(entries):,} measurements, more than the "
                         f"{MAX_MANIFEST_SHAPES:,} shapes blindbox re-derives (docs/limits.md); no "
                         f"blindbox build writes such a manifest.")
    vcpus = sum(e["vcpus"] for e in entries if isinstance(e, dict) and type(e.get("vcpus")) is int
                and e["vcpus"] > 0)
    if vcpus > MAX_MANIFEST_VCPUS:
        raise InputError(f"{source} publishes shapes with {vcpus:,} vCPUs in all, more than the "
                         f"{MAX_MANIFEST_VCPUS:,} blindbox re-derives (docs/limits.md); no blindbox "
                         f"build writes such a manifest.")


def check_manifest(doc: Any, source: str = "manifest.json") -> dict[str, Any]:
    """Check a parsed manifest against the schema and itself; return it unchanged."""
    c = _Checker(source)
    if not isinstance(doc, dict) or not isinstance(doc.get("schema"), str) or \
            not doc["schema"].startswith(SCHEMA_PREFIX):
        raise InputError(f"{source} has no \"schema\": \"{SCHEMA}\"; it is not a blindbox manifest (give the "
                         f"manifest.json of a bundle built by blindbox build).")
    check_work_bounds(doc, source)
    _check_duplicate_keys(doc, "", c)
    if doc["schema"] != SCHEMA:
        raise c.fail("schema", f"is {doc['schema']!r}, a schema version this blindbox does not know (it reads "
                               f"{SCHEMA!r})", "nothing in it is checked or trusted; audit it with the "
                                               "blindbox version that built the bundle")
    c.obj(doc, "", ("schema", "name", "tool", "recipe", "lock", "source_date_epoch", "cmdline", "kernel_hashes",
                    "firmware", "launch", "inputs", "outputs", "measurements"), optional=("rootfs", "agent",
                                                                                "runtime_policy"))
    c.plain_name(doc["name"], "name")
    tool = c.obj(doc["tool"], "tool", ("name", "version", "initrd_compressor"))
    for k in tool:
        c.str(tool[k], f"tool.{k}")
    for part in ("recipe", "lock"):
        rec = c.obj(doc[part], part, ("file", "sha256"))
        c.plain_name(rec["file"], f"{part}.file")
        c.hex_digest(rec["sha256"], f"{part}.sha256", 64)
    c.int(doc["source_date_epoch"], "source_date_epoch", 0, (1 << 63) - 1)
    cmdline = c.str(doc["cmdline"], "cmdline", nonempty=False)
    if "\0" in cmdline:
        raise c.fail("cmdline", "contains a NUL character, which QEMU cannot pass to the kernel")
    try:
        cmdline.encode("utf-8")
    except UnicodeEncodeError:
        raise c.fail("cmdline", "contains a lone surrogate, which is no UTF-8 text") from None
    hashes = c.obj(doc["kernel_hashes"], "kernel_hashes", ("kernel", "initrd", "cmdline"))
    for k in hashes:
        c.hex_digest(hashes[k], f"kernel_hashes.{k}", 64)
    _check_firmware(doc["firmware"], c)
    _check_launch(doc["launch"], c)
    _check_inputs(doc["inputs"], c)
    outputs = _check_outputs(doc["outputs"], c)
    _check_measurements(doc, outputs, c)
    _check_cross(doc, outputs, c)
    _check_rootfs(doc, outputs, c)
    _check_agent(doc, c)
    _check_runtime_policy(doc, c)
    return doc


def _check_firmware(fw: Any, c: _Checker) -> None:
    c.obj(fw, "firmware", ("file", "ovmf_hash", "sev_es_reset_eip", "sev_hashes_table", "sev_metadata_sections"))
    c.bundle_path(fw["file"], "firmware.file")
    c.hex_digest(fw["ovmf_hash"], "firmware.ovmf_hash", 96)
    c.hex_int(fw["sev_es_reset_eip"], "firmware.sev_es_reset_eip", 0xFFFFFFFF)
    table = c.obj(fw["sev_hashes_table"], "firmware.sev_hashes_table", ("gpa", "size"))
    c.hex_int(table["gpa"], "firmware.sev_hashes_table.gpa", 0xFFFFFFFF)
    c.int(table["size"], "firmware.sev_hashes_table.size", 1, 0x1000)
    sections = c.list(fw["sev_metadata_sections"], "firmware.sev_metadata_sections")
    for i, s in enumerate(sections):
        where = f"firmware.sev_metadata_sections[{i}]"
        c.obj(s, where, ("type", "gpa", "size"))
        c.choice(s["type"], f"{where}.type", SectionType.__members__, "a SEV metadata section type")
        c.hex_int(s["gpa"], f"{where}.gpa", 0xFFFFFFFF)
        c.int(s["size"], f"{where}.size", 0, 0xFFFFFFFF)
    if not any(s["type"] == SectionType.SNP_KERNEL_HASHES.name for s in sections):
        raise c.fail("firmware.sev_metadata_sections", "has no SNP_KERNEL_HASHES section, so the kernel, initrd "
                                                       "and command line would not be measured")


def _check_policy(value: Any, path: str, c: _Checker) -> int:
    policy = c.hex_int(value, path)
    if not policy & POLICY_RESERVED_ONE:
        raise c.fail(path, f"is {value}, not a valid SEV-SNP guest policy (bit 17 must be set)")
    return policy


def _check_launch(launch: Any, c: _Checker) -> None:
    c.obj(launch, "launch", ("memory_mib", "policy", "kernel_release"), optional=("id_block",))
    c.int(launch["memory_mib"], "launch.memory_mib", 1, 1 << 32)
    _check_policy(launch["policy"], "launch.policy", c)
    c.str(launch["kernel_release"], "launch.kernel_release")
    if "id_block" in launch:
        idb = c.obj(launch["id_block"], "launch.id_block", ("family_id", "image_id", "guest_svn", "policy",
                                                            "author_key"))
        c.hex_digest(idb["family_id"], "launch.id_block.family_id", 32)
        c.hex_digest(idb["image_id"], "launch.id_block.image_id", 32)
        c.int(idb["guest_svn"], "launch.id_block.guest_svn", 0, 0xFFFFFFFF)
        _check_policy(idb["policy"], "launch.id_block.policy", c)
        if idb["policy"] != launch["policy"]:
            raise c.fail("launch.id_block.policy", f"is {idb['policy']}, but launch.policy is {launch['policy']}; "
                                                   f"the firmware refuses a launch whose ID block policy differs")
        if not isinstance(idb["author_key"], bool):
            raise c.malformed("launch.id_block.author_key", f"is {_kind(idb['author_key'])}, not true or false")


def _check_inputs(inputs: Any, c: _Checker) -> None:
    names: set[str] = set()
    for i, rec in enumerate(c.list(inputs, "inputs")):
        where = f"inputs[{i}]"
        c.obj(rec, where, ("name", "kind", "version", "sha256", "size", "origin"))
        name = c.str(rec["name"], f"{where}.name")
        if name in names:
            raise c.fail(f"{where}.name", f"is {name!r}, listed twice")
        names.add(name)
        c.choice(rec["kind"], f"{where}.kind", INPUT_KINDS, "an input kind")
        if rec["version"] is not None:
            c.str(rec["version"], f"{where}.version")
        c.hex_digest(rec["sha256"], f"{where}.sha256", 64)
        c.int(rec["size"], f"{where}.size", 0, None)
        c.str(rec["origin"], f"{where}.origin")


def _check_outputs(outputs: Any, c: _Checker) -> dict[str, tuple[int, dict[str, Any]]]:
    """file -> (index, entry)."""
    by_file: dict[str, tuple[int, dict[str, Any]]] = {}
    for i, rec in enumerate(c.list(outputs, "outputs")):
        where = f"outputs[{i}]"
        c.obj(rec, where, ("file", "role", "sha256", "size"))
        name = c.bundle_path(rec["file"], f"{where}.file")
        if name in by_file or name == "manifest.json":
            raise c.fail(f"{where}.file", f"is {name!r}, listed twice" if name in by_file else
                         "is the manifest itself, which cannot list its own digest")
        by_file[name] = (i, rec)
        c.choice(rec["role"], f"{where}.role", ROLES, "a bundle file role")
        c.hex_digest(rec["sha256"], f"{where}.sha256", 64)
        c.int(rec["size"], f"{where}.size", 0, None)
    for role in SINGLE_ROLES:
        n = sum(rec["role"] == role for _, rec in by_file.values())
        if n != 1:
            raise c.fail("outputs", f"lists {n} files with role {role!r}, not exactly one")
    return by_file


_ENTRY_KEYS = ("shape", "mode", "vmm_profile", "vcpus", "vcpu_type", "vcpu_sig", "guest_features", "measurement")
_ID_KEYS = ("id_block", "id_auth", "id_key_digest", "author_key_digest")


def _check_measurements(doc: dict[str, Any], outputs: dict[str, tuple[int, dict[str, Any]]], c: _Checker) -> None:
    idb = doc["launch"].get("id_block")
    seen: dict[str, int] = {}
    digests: dict[str, int] = {}
    for i, e in enumerate(c.list(doc["measurements"], "measurements")):
        where = f"measurements[{i}]"
        c.obj(e, where, _ENTRY_KEYS + (_ID_KEYS if idb is not None else ()))
        sid = c.str(e["shape"], f"{where}.shape")
        if sid in seen:
            raise c.fail(f"{where}.shape", f"is {sid!r}, already published by measurements[{seen[sid]}]")
        seen[sid] = i
        if c.str(e["mode"], f"{where}.mode") != "snp":
            raise c.fail(f"{where}.mode", f"is {_short(e['mode'])}; a bundle publishes SEV-SNP digests only "
                                          f"(\"snp\")")
        c.choice(e["vmm_profile"], f"{where}.vmm_profile", PROFILES, "a VMM profile this blindbox knows")
        vcpus = c.int(e["vcpus"], f"{where}.vcpus", 1, MAX_VCPUS)
        c.choice(e["vcpu_type"], f"{where}.vcpu_type", CPU_SIGS, "a vCPU type this blindbox knows")
        sig = c.hex_int(e["vcpu_sig"], f"{where}.vcpu_sig", 0xFFFFFFFF)
        if sig != CPU_SIGS[e["vcpu_type"]]:
            raise c.fail(f"{where}.vcpu_sig", f"is {e['vcpu_sig']}, but vCPU type {e['vcpu_type']} has signature "
                                              f"{CPU_SIGS[e['vcpu_type']]:#x}")
        features = c.hex_int(e["guest_features"], f"{where}.guest_features")
        if not features & GuestFeatures.SNP_ACTIVE:
            raise c.fail(f"{where}.guest_features", f"is {e['guest_features']}, without SNPActive (bit 0), "
                                                    f"which every SNP guest has")
        c.hex_digest(e["measurement"], f"{where}.measurement", 96)
        _check_shape_id(sid, e, vcpus, features, where, c)
        if e["measurement"] in digests:
            _check_same_launch(doc["measurements"], digests[e["measurement"]], i, c)
        digests.setdefault(e["measurement"], i)
        if idb is not None:
            for key, role in (("id_block", "id-block"), ("id_auth", "id-auth")):
                name = c.bundle_path(e[key], f"{where}.{key}")
                if name not in outputs or outputs[name][1]["role"] != role:
                    raise c.fail(f"{where}.{key}", f"is {name!r}, which outputs does not list with role {role!r}")
            c.hex_digest(e["id_key_digest"], f"{where}.id_key_digest", 96)
            if idb["author_key"]:
                c.hex_digest(e["author_key_digest"], f"{where}.author_key_digest", 96)
            elif e["author_key_digest"] is not None:
                raise c.fail(f"{where}.author_key_digest", "is set, but launch.id_block.author_key is false "
                                                           "(it must be null without an author key)")


def _check_same_launch(entries: list[Any], first: int, i: int, c: _Checker) -> None:
    """Two shapes may share a digest only when the launches they name are the same (e.g. the vCPU
    types EPYC and EPYC-v4, which have one signature); otherwise one of the digests is not its
    shape's, and a report of one launch would be accepted as the other."""
    a, b = entries[first], entries[i]
    uses_sig = PROFILES[a["vmm_profile"]].rdx is None or PROFILES[b["vmm_profile"]].rdx is None
    for field in ("vcpus", "guest_features") + (("vcpu_sig",) if uses_sig else ()):
        if a[field] != b[field]:
            raise c.fail(f"measurements[{i}].measurement", f"is the digest measurements[{first}] publishes, but "
                                                          f"the two launches differ in {field} ({b[field]} and "
                                                          f"{a[field]}), so they cannot have one digest")


def _check_shape_id(sid: str, e: dict[str, Any], vcpus: int, features: int, where: str, c: _Checker) -> None:
    """The id names the shape's fields; a reader that goes by the id must get the same launch."""
    parts = sid.split(":")
    if len(parts) != 4:
        raise c.fail(f"{where}.shape", f"is {sid!r}, not VMM_PROFILE:VCPU_TYPE:VCPUS:GUEST_FEATURES")
    for field, said, actual in (("vmm_profile", parts[0], e["vmm_profile"]), ("vcpu_type", parts[1], e["vcpu_type"]),
                                ("vcpus", parts[2], str(vcpus)), ("guest_features", parts[3], f"{features:#x}")):
        if said != actual:
            raise c.fail(f"{where}.{field}", f"is {_short(e[field])}, but the shape id {sid!r} says {said}")
    assert sid == shape_id(e["vmm_profile"], e["vcpu_type"], vcpus, features)


def _check_cross(doc: dict[str, Any], outputs: dict[str, tuple[int, dict[str, Any]]], c: _Checker) -> None:
    """What one part of the manifest says about another."""
    by_role = {rec["role"]: (i, rec) for i, rec in outputs.values() if rec["role"] in SINGLE_ROLES}
    fw_file = doc["firmware"]["file"]
    if fw_file != by_role["firmware"][1]["file"]:
        raise c.fail("firmware.file", f"is {fw_file!r}, but the output with role 'firmware' is "
                                      f"{by_role['firmware'][1]['file']!r}")
    i, rec = by_role["cmdline"]
    data = doc["cmdline"].encode("utf-8")
    if rec["sha256"] != hashlib.sha256(data).hexdigest() or rec["size"] != len(data):
        raise c.fail("cmdline", f"is {_short(doc['cmdline'])}, but outputs[{i}] ({rec['file']}) lists a file "
                                f"with other contents (sha256 {rec['sha256']}, {rec['size']} bytes)")
    for key in ("kernel", "initrd"):
        i, rec = by_role[key]
        if doc["kernel_hashes"][key] != rec["sha256"]:
            raise c.fail(f"kernel_hashes.{key}", f"is {doc['kernel_hashes'][key]}, but outputs[{i}] ({rec['file']}) "
                                                  f"has sha256 {rec['sha256']}")
    expected = hashlib.sha256(doc["cmdline"].encode("utf-8") + b"\0").hexdigest()
    if doc["kernel_hashes"]["cmdline"] != expected:
        raise c.fail("kernel_hashes.cmdline", f"is {doc['kernel_hashes']['cmdline']}, but the SHA-256 of the "
                                              f"published cmdline and its NUL byte is {expected}")
    ids = [m for m in doc["measurements"] if "id_block" in m]
    if ids:
        id_outputs = {rec["file"] for _, rec in outputs.values() if rec["role"] in ("id-block", "id-auth")}
        used = {m[k] for m in ids for k in ("id_block", "id_auth")}
        for name in sorted(id_outputs - used):
            i, _ = outputs[name]
            raise c.fail(f"outputs[{i}].file", f"is {name!r}, an ID block file no measurement names")
    elif any(rec["role"].startswith("id-") for _, rec in outputs.values()):
        i, rec = next((i, rec) for i, rec in outputs.values() if rec["role"].startswith("id-"))
        raise c.fail(f"outputs[{i}].role", f"is {rec['role']!r}, but the manifest has no launch.id_block")


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_VERITY_KEYS = ("file", "table", "hash_type", "algorithm", "data_block_size", "hash_block_size", "data_blocks",
                "hash_start_block", "salt", "uuid", "root_hash", "on_corruption")


def _check_rootfs(doc: dict[str, Any], outputs: dict[str, tuple[int, dict[str, Any]]], c: _Checker) -> None:
    """The application root: its image and verity fields, against the outputs and the measured cmdline."""
    roles = {role: [(i, rec) for i, rec in outputs.values() if rec["role"] == role] for role in ROOTFS_ROLES}
    try:
        in_cmdline = verity.cmdline_table(doc["cmdline"])
    except InputError as e:
        raise c.fail("cmdline", f"cannot be read as the guest's init reads it: {str(e).rstrip('.')}") from None
    if "rootfs" not in doc:
        for role, found in roles.items():
            if found:
                raise c.fail(f"outputs[{found[0][0]}].role", f"is {role!r}, but the manifest has no rootfs")
        if in_cmdline is not None:
            raise c.fail("cmdline", f"carries {verity.CMDLINE_PARAM}, but the manifest has no rootfs")
        return
    rf = c.obj(doc["rootfs"], "rootfs", ("image", "verity", "app", "network", "sources"))
    for role, found in roles.items():
        if len(found) != 1:
            raise c.fail("outputs", f"lists {len(found)} files with role {role!r}, not exactly one (the manifest "
                                    f"has a rootfs)")
    img = c.obj(rf["image"], "rootfs.image", ("file", "format", "uuid", "tree_sha256"))
    c.choice(img["format"], "rootfs.image.format", ROOTFS_FORMATS, "a root filesystem format")
    _uuid(img["uuid"], "rootfs.image.uuid", c)
    c.hex_digest(img["tree_sha256"], "rootfs.image.tree_sha256", 64)
    v = c.obj(rf["verity"], "rootfs.verity", _VERITY_KEYS)
    if c.int(v["hash_type"], "rootfs.verity.hash_type", 0, None) != verity.HASH_TYPE:
        raise c.fail("rootfs.verity.hash_type", f"is {v['hash_type']}; only dm-verity hash format "
                                                f"{verity.HASH_TYPE} is built")
    c.choice(v["algorithm"], "rootfs.verity.algorithm", verity.ALGORITHMS, "a verity hash algorithm")
    for key in ("data_block_size", "hash_block_size", "data_blocks", "hash_start_block"):
        c.int(v[key], f"rootfs.verity.{key}", 0, None)
    salt = c.str(v["salt"], "rootfs.verity.salt", nonempty=False)
    if not re.fullmatch(r"(?:[0-9a-f]{2}){0,256}", salt):
        raise c.malformed("rootfs.verity.salt", f"is {_short(salt)}, not lower-case hex bytes")
    _uuid(v["uuid"], "rootfs.verity.uuid", c)
    c.hex_digest(v["root_hash"], "rootfs.verity.root_hash", 2 * verity.ALGORITHMS[v["algorithm"]])
    c.choice(v["on_corruption"], "rootfs.verity.on_corruption", CORRUPTION_MODES, "a corruption mode")
    text = c.str(v["table"], "rootfs.verity.table")
    try:
        table = verity.parse_table(text)
    except InputError as e:
        raise c.fail("rootfs.verity.table", f"is not a table the guest can use: {str(e).rstrip('.')}") from None
    said = {"algorithm": table.algorithm, "data_block_size": table.data_block_size,
            "hash_block_size": table.hash_block_size, "data_blocks": table.data_blocks,
            "hash_start_block": table.hash_start_block, "salt": table.salt.hex(), "root_hash": table.root_hash.hex(),
            "on_corruption": table.on_corruption}
    for key, value in said.items():
        if v[key] != value:
            raise c.fail(f"rootfs.verity.{key}", f"is {_short(v[key])}, but rootfs.verity.table says {_short(value)}")
    if in_cmdline != text:
        raise c.fail("rootfs.verity.table", "is not the table the measured cmdline carries in "
                                            f"{verity.CMDLINE_PARAM}=\"...\" (so the guest would verify another root)")
    for key, role in (("image", "rootfs"), ("verity", "rootfs-verity")):
        name = c.bundle_path(rf[key]["file"], f"rootfs.{key}.file")
        i, rec = roles[role][0]
        if rec["file"] != name:
            raise c.fail(f"rootfs.{key}.file", f"is {name!r}, but the output with role {role!r} is {rec['file']!r}")
    i, rec = roles["rootfs"][0]
    if rec["size"] != table.data_blocks * table.data_block_size:
        raise c.fail(f"outputs[{i}].size", f"is {rec['size']}, but the verity table covers {table.data_blocks} "
                                           f"blocks of {table.data_block_size} bytes")
    app = c.obj(rf["app"], "rootfs.app", ("argv", "env", "workdir", "uid", "gid"))
    for k, arg in enumerate(c.list(app["argv"], "rootfs.app.argv")):
        c.str(arg, f"rootfs.app.argv[{k}]", nonempty=k == 0)
    for k, item in enumerate(c.list(app["env"], "rootfs.app.env", nonempty=False)):
        if "=" not in c.str(item, f"rootfs.app.env[{k}]"):
            raise c.malformed(f"rootfs.app.env[{k}]", f"is {_short(item)}, not NAME=value")
    if not c.str(app["workdir"], "rootfs.app.workdir").startswith("/"):
        raise c.fail("rootfs.app.workdir", f"is {_short(app['workdir'])}, not an absolute path")
    c.int(app["uid"], "rootfs.app.uid", 0, 0xFFFFFFFE)
    c.int(app["gid"], "rootfs.app.gid", 0, 0xFFFFFFFE)
    if not isinstance(rf["network"], bool):
        raise c.malformed("rootfs.network", f"is {_kind(rf['network'])}, not true or false")
    for k, src in enumerate(c.list(rf["sources"], "rootfs.sources")):
        where = f"rootfs.sources[{k}]"
        c.obj(src, where, ("kind", "name", "version", "sha256", "size"))
        c.choice(src["kind"], f"{where}.kind", ROOTFS_SOURCE_KINDS, "a root filesystem source kind")
        c.str(src["name"], f"{where}.name")
        if src["version"] is not None:
            c.str(src["version"], f"{where}.version")
        c.hex_digest(src["sha256"], f"{where}.sha256", 64)
        c.int(src["size"], f"{where}.size", 0, None)


#: the kernel parameter a simulated attester puts into the measured command line, and the agent's attesters
ATTESTER_PARAM = "blindbox.attester"
AGENT_ATTESTERS = ("hardware", "simulated")


def _param_words(cmdline: str, param: str) -> list[str]:
    """The words of ``cmdline`` that set the kernel parameter ``param`` (``param`` or ``param=...``)."""
    return [w for w in cmdline.split(" ") if w == param or w.startswith(param + "=")]


def _check_agent(doc: dict[str, Any], c: _Checker) -> None:
    """The attestation agent: ports, attester (against the measured cmdline) and runtime packages."""
    words = _param_words(doc["cmdline"], ATTESTER_PARAM)
    if "agent" not in doc:
        if words:
            raise c.fail("cmdline", f"carries {words[0]}, but the manifest has no agent")
        pinned = next((i["name"] for i in doc["inputs"] if i["name"].startswith("agent:")), None)
        if pinned is not None:
            raise c.fail("inputs", f"pin {pinned}, but the manifest has no agent")
        return
    if "rootfs" not in doc or doc["rootfs"].get("network") is not True:
        raise c.fail("agent", "is given, but the manifest has no rootfs with network (the agent relays to the "
                              "application over the guest's network)")
    ag = c.obj(doc["agent"], "agent", ("listen", "app", "attester", "packages"))
    listen = c.int(ag["listen"], "agent.listen", 1, 65535)
    if c.int(ag["app"], "agent.app", 1, 65535) == listen:
        raise c.fail("agent.app", f"is {listen}, the port the agent itself listens on")
    attester = c.choice(ag["attester"], "agent.attester", AGENT_ATTESTERS, "an attester")
    if attester == "simulated":
        if len(words) != 1 or not words[0].startswith(ATTESTER_PARAM + "=simulated:"):
            raise c.fail("agent.attester", f"is 'simulated', but the measured cmdline does not carry exactly one "
                                           f"{ATTESTER_PARAM}=simulated:HOST:PORT")
    elif words:
        raise c.fail("cmdline", f"carries {words[0]}, but agent.attester is 'hardware'")
    names: set[str] = set()
    for k, pkg in enumerate(c.list(ag["packages"], "agent.packages")):
        where = f"agent.packages[{k}]"
        c.obj(pkg, where, ("name", "version", "sha256"))
        name = c.str(pkg["name"], f"{where}.name")
        if name in names:
            raise c.fail(f"{where}.name", f"is {name!r}, listed twice")
        names.add(name)
        c.str(pkg["version"], f"{where}.version")
        c.hex_digest(pkg["sha256"], f"{where}.sha256", 64)
        pinned = next((i for i in doc["inputs"] if i["name"] == f"agent:{name}"), None)
        if pinned is None or (pinned["version"], pinned["sha256"]) != (pkg["version"], pkg["sha256"]):
            raise c.fail(where, f"is {name} {_short(pkg['version'])}, but the inputs have no agent:{name} of that "
                                f"version and sha256")
    extra = sorted(i["name"] for i in doc["inputs"] if i["name"].startswith("agent:") and i["name"][6:] not in names)
    if extra:
        raise c.fail("agent.packages", f"does not list {extra[0][6:]}, which the inputs pin as {extra[0]}")


def _check_runtime_policy(doc: dict[str, Any], c: _Checker) -> None:
    """The runtime policy: its canonical object, its digest, and the digest the measured cmdline carries."""
    words = _param_words(doc["cmdline"], rp.CMDLINE_PARAM)
    if "runtime_policy" not in doc:
        if words:
            raise c.fail("cmdline", f"carries {words[0][:100]}, but the manifest has no runtime_policy")
        return
    rec = c.obj(doc["runtime_policy"], "runtime_policy", ("sha256", "policy"))
    sha = c.hex_digest(rec["sha256"], "runtime_policy.sha256", 64)
    try:
        policy = rp.from_json_value(rec["policy"], "")
    except rp.RuntimePolicyError as e:
        raise c.fail("runtime_policy.policy" + (f".{e.path}" if e.path else ""), e.problem.rstrip(".")) from None
    if rp.runtime_policy_sha256(policy).hex() != sha:
        raise c.fail("runtime_policy.sha256", f"is {sha}, but the SHA-256 of the canonical form of "
                                              f"runtime_policy.policy is {rp.runtime_policy_sha256(policy).hex()}")
    if words != [f"{rp.CMDLINE_PARAM}={sha}"]:
        raise c.fail("runtime_policy.sha256", f"is {sha}, but the measured cmdline does not carry exactly one "
                                              f"{rp.CMDLINE_PARAM}={sha}, so the launch digests do not commit to it")
    if "rootfs" not in doc:
        raise c.fail("runtime_policy", "is given, but the manifest has no rootfs for it to restrict")
    if policy.clients is not None and "agent" not in doc:
        raise c.fail("runtime_policy.policy.clients", "lists client keys, but the manifest has no agent to check "
                                                      "them")


def runtime_policy_of(doc: dict[str, Any]) -> rp.RuntimePolicy | None:
    """The runtime policy of a manifest :func:`check_manifest` accepted (None: the bundle has none)."""
    if "runtime_policy" not in doc:
        return None
    return rp.from_json_value(doc["runtime_policy"]["policy"], "manifest")


def _uuid(value: Any, path: str, c: _Checker) -> str:
    text = c.str(value, path)
    if not _UUID.fullmatch(text):
        raise c.malformed(path, f"is {_short(text)}, not a lower-case UUID")
    return text


def outputs_by_role(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """role -> output entry for the roles a bundle has once (firmware, kernel, initrd, cmdline, launch)."""
    return {rec["role"]: rec for rec in doc["outputs"] if rec["role"] in SINGLE_ROLES}

