"""manifest.json: what a bundle is made of and the launch digests it must produce.

The manifest is an output of the build like any other, so it is byte-for-byte
reproducible: fixed key order, no host paths, users or times (the recipe and lock are
named by file name and sha256 only), UTF-8, two-space indentation, one trailing newline.

Its ``measurements`` list is a contract with ``blindbox verify-report --manifest``: each
entry starts with exactly ``shape, mode, vmm_profile, vcpus, vcpu_type, vcpu_sig,
guest_features, measurement`` (hex strings for the last four but vcpus).  A bundle built
with an ``id_block`` adds, after those, ``id_block`` and ``id_auth`` (the bundle's base64
files for QEMU) and ``id_key_digest`` / ``author_key_digest`` (96 hex digits, or null
without an author key): the values the report's ID_KEY_DIGEST / AUTHOR_KEY_DIGEST carry.

A bundle with an attestation agent has an ``agent`` section: ``listen`` and ``app`` (TCP
ports), ``attester`` (``hardware`` or ``simulated``; a simulated one is also written into the
measured command line as ``blindbox.attester=simulated:HOST:PORT``) and ``packages`` (name,
version, sha256 of each Debian package of its runtime).  They are claims about the measured
initrd, which carries the agent and the init that starts it.

A bundle with a runtime policy has a ``runtime_policy`` section, ``{sha256, policy}``
(:func:`measure.runtime_policy.manifest_record`): the policy the measured initrd carries and
enforces, whose digest the measured command line names (``blindbox.runtime_policy=<sha256>``).

The schema is checked by the auditor's reader, :mod:`blindbox.audit.manifest`, both when a
manifest is read back and when one is written (:meth:`Manifest.checked_json`).

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from builder.errors import BuildError
from measure.errors import BlindboxError, InternalError
from blindbox.audit.manifest import SCHEMA, check_manifest, parse_json


class ManifestError(BuildError):
    """A manifest.json is malformed or of an unknown schema."""


@dataclass(frozen=True)
class InputRecord:
    name: str
    kind: str
    version: str | None
    sha256: str
    size: int
    origin: str

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "version": self.version, "sha256": self.sha256,
                "size": self.size, "origin": self.origin}


@dataclass(frozen=True)
class OutputRecord:
    file: str
    role: str  # firmware | kernel | initrd | cmdline | launch | id-block | id-auth | id-block-bin | id-auth-bin
    #          | rootfs | rootfs-verity
    sha256: str
    size: int

    def to_dict(self) -> dict:
        return {"file": self.file, "role": self.role, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class MeasurementRecord:
    shape: str
    vmm_profile: str
    vcpus: int
    vcpu_type: str
    vcpu_sig: int
    guest_features: int
    measurement: str    # 96 hex digits
    mode: str = "snp"
    #: with an ID block: the bundle files QEMU takes (base64) and the key digests a report carries
    id_block: str | None = None
    id_auth: str | None = None
    id_key_digest: str | None = None        # 96 hex digits
    author_key_digest: str | None = None    # 96 hex digits, None without an author key

    def to_dict(self) -> dict:
        out = {"shape": self.shape, "mode": self.mode, "vmm_profile": self.vmm_profile, "vcpus": self.vcpus,
               "vcpu_type": self.vcpu_type, "vcpu_sig": f"{self.vcpu_sig:#x}",
               "guest_features": f"{self.guest_features:#x}", "measurement": self.measurement}
        if self.id_block is not None:
            out.update({"id_block": self.id_block, "id_auth": self.id_auth, "id_key_digest": self.id_key_digest,
                        "author_key_digest": self.author_key_digest})
        return out


@dataclass(frozen=True)
class Manifest:
    name: str
    tool: dict                      # {"name", "version"}
    recipe: dict                    # {"file", "sha256"}
    lock: dict                      # {"file", "sha256"}
    source_date_epoch: int
    cmdline: str                    # exactly the -append string (UTF-8); QEMU hashes it plus a NUL
    kernel_hashes: dict             # {"kernel", "initrd", "cmdline"}: the SHA-256 in the hashes table
    firmware: dict                  # what the firmware step found: metadata sections, hashes table
    launch: dict                    # {"memory_mib", "policy"}
    inputs: tuple[InputRecord, ...]
    outputs: tuple[OutputRecord, ...]
    measurements: tuple[MeasurementRecord, ...]
    #: with an application root: its image, verity parameters and root hash, the app, the sources
    rootfs: dict | None = None
    #: with an attestation agent: {listen, app, attester, packages} (claims about the measured initrd)
    agent: dict | None = None
    #: with a runtime policy: measure.runtime_policy.manifest_record ({sha256, policy})
    runtime_policy: dict | None = None
    schema: str = field(default=SCHEMA)

    def to_dict(self) -> dict:
        out = {
            "schema": self.schema,
            "name": self.name,
            "tool": self.tool,
            "recipe": self.recipe,
            "lock": self.lock,
            "source_date_epoch": self.source_date_epoch,
            "cmdline": self.cmdline,
            "kernel_hashes": self.kernel_hashes,
            "firmware": self.firmware,
            "launch": self.launch,
            "inputs": [i.to_dict() for i in self.inputs],
            "outputs": [o.to_dict() for o in self.outputs],
            "measurements": [m.to_dict() for m in self.measurements],
        }
        if self.rootfs is not None:
            out["rootfs"] = self.rootfs
        if self.agent is not None:
            out["agent"] = self.agent
        if self.runtime_policy is not None:
            out["runtime_policy"] = self.runtime_policy
        return out

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    def checked_json(self) -> bytes:
        """:meth:`to_json`, refused unless the auditor's reader accepts it (a failure is a bug)."""
        data = self.to_json()
        try:
            check_manifest(parse_json(data, "the manifest being written"), "the manifest being written")
        except BlindboxError as e:
            raise InternalError(f"blindbox build wrote a manifest its own reader refuses: {e}") from None
        return data

    def output(self, role: str) -> OutputRecord:
        return next(o for o in self.outputs if o.role == role)

    def measurement(self, shape: str) -> MeasurementRecord | None:
        return next((m for m in self.measurements if m.shape == shape), None)

    @classmethod
    def from_json(cls, data: bytes, where: str = "manifest.json") -> "Manifest":
        try:
            doc = parse_json(data, where)
        except BlindboxError as e:
            raise ManifestError(str(e)) from None
        return cls.from_dict(doc, where)

    @classmethod
    def from_dict(cls, doc: dict, where: str = "manifest.json") -> "Manifest":
        """The manifest in ``doc``, checked by the auditor's reader (blindbox.audit.manifest), the only one."""
        try:
            check_manifest(doc, where)
        except BlindboxError as e:
            raise ManifestError(str(e)) from None
        ms = []
        for d in doc["measurements"]:
            d = dict(d)
            d["vcpu_sig"] = int(d["vcpu_sig"], 16)
            d["guest_features"] = int(d["guest_features"], 16)
            ms.append(MeasurementRecord(**d))
        return cls(name=doc["name"], tool=dict(doc["tool"]), recipe=dict(doc["recipe"]), lock=dict(doc["lock"]),
                   source_date_epoch=doc["source_date_epoch"], cmdline=doc["cmdline"],
                   kernel_hashes=dict(doc["kernel_hashes"]), firmware=_plain(doc["firmware"]),
                   launch=_plain(doc["launch"]), inputs=tuple(InputRecord(**d) for d in doc["inputs"]),
                   outputs=tuple(OutputRecord(**d) for d in doc["outputs"]), measurements=tuple(ms),
                   rootfs=_plain(doc["rootfs"]) if "rootfs" in doc else None,
                   agent=_plain(doc["agent"]) if "agent" in doc else None,
                   runtime_policy=_plain(doc["runtime_policy"]) if "runtime_policy" in doc else None)


def _plain(value):
    """A JSON value with its objects as plain dicts (the reader's remember duplicate keys)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
