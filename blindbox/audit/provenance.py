"""provenance.intoto.json: a bundle's build provenance in the supply-chain ecosystem's format.

An in-toto Statement v1 (``_type`` https://in-toto.io/Statement/v1) whose predicate is SLSA
provenance v1 (https://slsa.dev/provenance/v1).  It restates, in that format, what the
bundle's manifest.json already publishes, and nothing else:

* ``subject``: every file of the bundle but the statement itself (the manifest's outputs and
  manifest.json), each ``{name, digest: {sha256}}``, sorted by name;
* ``predicate.buildDefinition``: :data:`BUILD_TYPE`; ``externalParameters`` the recipe (name,
  file name, sha256 of its bytes) and the lock (file name, sha256); ``internalParameters`` the
  tool (name, version and what else the manifest records of it) and the recipe's
  ``source_date_epoch``; ``resolvedDependencies`` the recipe and the lock, then every pinned
  input of the manifest in its order (a Debian package as ``pkg:deb/debian/NAME@VERSION?arch=
  ARCH&distro=SUITE``, any other input by its origin), each with its sha256;
* ``predicate.runDetails``: ``builder.id`` :data:`BUILDER_ID` with the tool's version; no
  ``invocationId`` (a build has no identity beyond its inputs); ``startedOn`` and ``finishedOn``
  are both the recipe's ``source_date_epoch``, the time every output of the build carries,
  never the clock.

So the statement is a function of the manifest's bytes alone (:func:`statement`): the builder
writes it from the manifest it writes, and ``blindbox rederive`` computes it again from the
published manifest and names the first field where the bundle's copy differs.  The bytes are
fixed too (:func:`to_json`: sorted keys, two-space indentation, UTF-8, one trailing newline), so
the file is compared byte for byte by check-repro like every other bundle file.  It is not
measured: no launch digest depends on it.  docs/provenance.md describes the build type.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

PROVENANCE = "provenance.intoto.json"
MANIFEST = "manifest.json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
#: the build type this module writes; a change of its meaning gets a new version (docs/provenance.md)
BUILD_TYPE = "https://blindbox-guest.invalid/provenance/build-type/bundle/v1"
BUILDER_ID = "https://blindbox-guest.invalid/provenance/builder/blindbox-build"

_DEBIAN_ORIGIN = re.compile(r"debian:(?P<suite>[^/ ]+)/(?P<name>[^=/ ]+)=(?P<version>[^ ]+) "
                            r"\((?P<filename>[^ ()]+_(?P<arch>[A-Za-z0-9-]+)\.deb)\)")


def purl(origin: str) -> str | None:
    """The package URL of a Debian input's origin (``debian:SUITE/NAME=VERSION (pool/..._ARCH.deb)``), or None.

    The version is percent-encoded as the purl specification asks ('+' becomes %2B; the epoch's
    ':' stays); the qualifiers are in sorted order.
    """
    m = _DEBIAN_ORIGIN.fullmatch(origin)
    if m is None:
        return None
    return (f"pkg:deb/debian/{quote(m['name'], safe='')}@{quote(m['version'], safe=':')}"
            f"?arch={quote(m['arch'], safe='')}&distro={quote(m['suite'], safe='')}")


def _input_descriptor(record: dict[str, Any]) -> dict[str, Any]:
    origin = record["origin"]
    uri = purl(origin) if record["kind"] == "debian" else None
    return {"name": record["name"], "uri": uri or origin, "digest": {"sha256": record["sha256"]},
            "annotations": {"kind": record["kind"], "origin": origin, "size": record["size"]}}


def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def statement(manifest: dict[str, Any], manifest_bytes: bytes) -> dict[str, Any]:
    """The in-toto statement of a bundle whose checked manifest is ``manifest`` (parsed from ``manifest_bytes``)."""
    subjects = [{"name": rec["file"], "digest": {"sha256": rec["sha256"]}} for rec in manifest["outputs"]]
    subjects.append({"name": MANIFEST, "digest": {"sha256": hashlib.sha256(manifest_bytes).hexdigest()}})
    recipe, lock, tool = manifest["recipe"], manifest["lock"], manifest["tool"]
    epoch = _rfc3339(manifest["source_date_epoch"])
    dependencies = [
        {"name": recipe["file"], "uri": f"file:{quote(recipe['file'])}", "digest": {"sha256": recipe["sha256"]},
         "annotations": {"kind": "recipe"}},
        {"name": lock["file"], "uri": f"file:{quote(lock['file'])}", "digest": {"sha256": lock["sha256"]},
         "annotations": {"kind": "lock"}},
    ] + [_input_descriptor(rec) for rec in manifest["inputs"]]
    return {
        "_type": STATEMENT_TYPE,
        "subject": sorted(subjects, key=lambda s: s["name"]),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "recipe": {"name": manifest["name"], "path": recipe["file"], "sha256": recipe["sha256"]},
                    "lock": {"path": lock["file"], "sha256": lock["sha256"]},
                },
                "internalParameters": {"tool": dict(tool), "sourceDateEpoch": manifest["source_date_epoch"]},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {str(tool["name"]): str(tool["version"])}},
                "metadata": {"startedOn": epoch, "finishedOn": epoch},
            },
        },
    }


def to_json(doc: dict[str, Any]) -> bytes:
    """The bytes blindbox writes for a statement: sorted keys, two-space indentation, UTF-8, one newline."""
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def provenance_json(manifest: dict[str, Any], manifest_bytes: bytes) -> bytes:
    """The bytes of provenance.intoto.json for a bundle with this manifest."""
    return to_json(statement(manifest, manifest_bytes))


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 120 else text[:117] + "..."


def first_difference(got: object, want: object, path: str = "") -> str | None:
    """Where ``got`` first differs from ``want``, as ``FIELD is X, the manifest gives Y``; None when equal."""
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(set(want) | set(got)):
            here = f"{path}.{key}" if path else key
            if key not in got:
                return f"{here} is missing, the manifest gives {_short(want[key])}"
            if key not in want:
                return f"{here} is {_short(got[key])}, which the manifest does not give"
            found = first_difference(got[key], want[key], here)
            if found is not None:
                return found
        return None
    if isinstance(want, list) and isinstance(got, list):
        for i, (a, b) in enumerate(zip(got, want, strict=False)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found is not None:
                name = b.get("name") if isinstance(b, dict) else None
                return found + (f" (the entry for {name!r})" if isinstance(name, str) else "")
        if len(got) != len(want):
            return f"{path} has {len(got)} entries, the manifest gives {len(want)}"
        return None
    if type(got) is not type(want) or got != want:
        return f"{path or 'the statement'} is {_short(got)}, the manifest gives {_short(want)}"
    return None


__all__ = ["BUILDER_ID", "BUILD_TYPE", "PREDICATE_TYPE", "PROVENANCE", "STATEMENT_TYPE", "first_difference",
           "provenance_json", "purl", "statement", "to_json"]
