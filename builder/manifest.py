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
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from builder.errors import BuildError

SCHEMA = "blindbox-manifest/1"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX96 = re.compile(r"[0-9a-f]{96}")


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
    role: str           # firmware | kernel | initrd | cmdline | launch | id-block | id-auth | id-block-bin | id-auth-bin
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
    schema: str = field(default=SCHEMA)

    def to_dict(self) -> dict:
        return {
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

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    def output(self, role: str) -> OutputRecord:
        return next(o for o in self.outputs if o.role == role)

    def measurement(self, shape: str) -> MeasurementRecord | None:
        return next((m for m in self.measurements if m.shape == shape), None)

    @classmethod
    def from_json(cls, data: bytes, where: str = "manifest.json") -> "Manifest":
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"{where} is not UTF-8 JSON ({e}); rebuild the bundle.") from None
        except RecursionError:
            raise ManifestError(f"{where} nests brackets too deeply to be a manifest; rebuild the bundle.") from None
        return cls.from_dict(doc, where)

    @classmethod
    def from_dict(cls, doc: dict, where: str = "manifest.json") -> "Manifest":
        def bad(what: str) -> ManifestError:
            return ManifestError(f"{where}: {what}; the manifest is damaged or not written by blindbox build.")

        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise bad(f"schema is not {SCHEMA!r}")
        try:
            inputs = tuple(InputRecord(**d) for d in doc["inputs"])
            outputs = tuple(OutputRecord(**d) for d in doc["outputs"])
            ms = []
            for d in doc["measurements"]:
                d = dict(d)
                d["vcpu_sig"] = int(d["vcpu_sig"], 16)
                d["guest_features"] = int(d["guest_features"], 16)
                ms.append(MeasurementRecord(**d))
            m = cls(name=doc["name"], tool=doc["tool"], recipe=doc["recipe"], lock=doc["lock"],
                    source_date_epoch=doc["source_date_epoch"], cmdline=doc["cmdline"],
                    kernel_hashes=doc["kernel_hashes"], firmware=doc["firmware"], launch=doc["launch"],
                    inputs=inputs, outputs=outputs, measurements=tuple(ms))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise bad(f"missing or malformed field ({type(e).__name__}: {e})") from None
        for r in m.inputs + m.outputs:
            if not _HEX64.fullmatch(r.sha256):
                raise bad(f"sha256 of {getattr(r, 'name', None) or r.file} is not 64 hex digits")
        for r in m.measurements:
            if not _HEX96.fullmatch(r.measurement):
                raise bad(f"measurement of shape {r.shape} is not 96 hex digits")
            if r.id_block is not None:
                if not (isinstance(r.id_auth, str) and isinstance(r.id_key_digest, str)
                        and _HEX96.fullmatch(r.id_key_digest)
                        and (r.author_key_digest is None or _HEX96.fullmatch(str(r.author_key_digest)))):
                    raise bad(f"the ID block fields of shape {r.shape} are incomplete or not 96 hex digits")
            elif (r.id_auth, r.id_key_digest, r.author_key_digest) != (None, None, None):
                raise bad(f"shape {r.shape} has ID key fields but no id_block")
        if list(doc) != list(m.to_dict()):
            raise bad("unexpected keys or key order")
        return m
