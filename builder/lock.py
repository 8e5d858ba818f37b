"""The lock file: every input of a recipe pinned to an exact version, sha256 and origin.

``recipes/x.yaml`` is locked by ``recipes/x.lock`` (JSON, stable key order, one input per
entry).  ``blindbox lock`` writes it; ``blindbox build`` reads only what it pins.  Each
entry keeps the recipe's declaration it was made for (``wants``), so a recipe edited after
locking is caught instead of silently building the old input.

Locking never changes a pin it does not have to: an input keeps its pin unless the recipe
now declares it differently, the pin is new, or ``update`` asks for it (all inputs, or the
named ones).  Every changed pin is reported, because it changes the guest and therefore
its launch measurement.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable
from typing import TYPE_CHECKING

from builder import progress
from builder.errors import BuildError, InputDigestMismatch, RecipeError, SourceError
from builder.limits import MAX_LOCK_BYTES
from builder.recipe import COMPRESSOR, SUITES, InputSpec, Recipe, check_id_keys, local_path
from measure.inputs import file_digest, is_fifo_or_socket, read_bounded
from blindbox.files import write_atomic

if TYPE_CHECKING:
    from builder.sources.snapshot import Snapshot

#: lock entries of the id_block keys: they sign ID blocks and are not part of the launch digest
ID_KEY_INPUTS = frozenset({"id_key", "author_key"})

LOCK_VERSION = 1
_KERNEL_PKG = re.compile(r"linux-image-\d[\w.+-]*")
_ENTRY_KEYS = frozenset({"name", "kind", "wants", "version", "sha256", "size", "origin", "via", "debian", "path",
                         "url"})
_LOCK_KEYS = frozenset({"lock_version", "recipe", "comment", "snapshot", "inputs"})
_NAME = re.compile(r"[a-z_]+(:[^\x00-\x1f\x7f]+)?")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9.+-]+")
_DEB_VERSION = re.compile(r"[0-9A-Za-z.+~:-]+")
_VIA = re.compile(r"[a-z0-9][a-z0-9.+-]+=[0-9A-Za-z.+~:-]+")
_POOL_FILE = re.compile(r"pool/[A-Za-z0-9._+~:%/-]+\.deb")
_ARCHES = ("amd64", "all")
#: the kinds of lock entry: Debian packages, local files, URLs, and the root filesystem's OCI image and trees
KINDS = ("debian", "file", "url", "oci", "tree")
#: the keys of a ``tree`` entry's wants: the recipe's rootfs source kind
_TREE_SOURCES = ("directory", "tarball")


def _check_debian_record(deb: dict, size: int, bad) -> None:
    """The ``debian`` package record of a lock entry: the fields DebianPackage needs, of the right form."""
    fields = ("name", "version", "arch", "suite", "filename", "size", "sha256")
    unknown = sorted(set(deb) - set(fields))
    missing = [k for k in fields if k not in deb]
    if unknown or missing:
        raise bad("debian", f"has {'unknown field ' + repr(unknown[0]) if unknown else 'no ' + repr(missing[0])}")
    if not isinstance(deb["size"], int) or isinstance(deb["size"], bool) or deb["size"] != size:
        raise bad("debian", f"size {deb['size']!r} is not the entry's size {size}")
    if not all(isinstance(deb[k], str) for k in fields if k != "size"):
        raise bad("debian", "has a field of the wrong type (size is an integer, the rest are strings)")
    checks = {"name": _PACKAGE.fullmatch(deb["name"]), "arch": deb["arch"] in _ARCHES,
              "suite": deb["suite"] in SUITES,
              "filename": _POOL_FILE.fullmatch(deb["filename"]) and ".." not in deb["filename"].split("/")}
    for key, ok in checks.items():
        if not ok:
            raise bad("debian", f"{key} {deb[key]!r} is not a valid Debian package {key}")


class LockMissing(BuildError):
    """The recipe has no lock file yet."""


class LockMismatch(BuildError):
    """The lock file does not pin what the recipe declares."""


@dataclass(frozen=True)
class LockedInput:
    """One pinned input.  ``debian`` is the package record (DebianPackage.to_dict())."""

    name: str
    kind: str                       # "debian" | "file" | "url" | "oci" | "tree"
    wants: dict
    sha256: str
    size: int
    origin: str
    version: str | None = None
    debian: dict | None = None
    path: str | None = None         # file, oci, tree: relative to the recipe's directory
    url: str | None = None
    via: str | None = None          # debian: the metapackage that led to this package

    def to_dict(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "wants": self.wants, "version": self.version,
               "sha256": self.sha256, "size": self.size, "origin": self.origin}
        if self.via is not None:
            out["via"] = self.via
        if self.debian is not None:
            out["debian"] = self.debian
        if self.path is not None:
            out["path"] = self.path
        if self.url is not None:
            out["url"] = self.url
        return out

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "LockedInput":
        """One lock entry, every field checked: type, form, and agreement with the others."""
        label = d.get("name") if isinstance(d.get("name"), str) else "?"

        def bad(key, what):
            return RecipeError(f"{where}: entry {label!r}: {key!r} {what}; the lock file is damaged or was "
                               f"edited by hand. Restore it from version control or run `blindbox lock` again.",
                               path=where, key=key)

        def need(key, typ):
            if key not in d or not isinstance(d[key], typ) or (typ is int and isinstance(d[key], bool)):
                raise RecipeError(f"{where}: entry {label!r} has no valid {key!r}; the lock file "
                                  f"is damaged. Restore it from version control or run `blindbox lock` again.",
                                  path=where, key=key)
            return d[key]
        unknown = sorted(set(d) - _ENTRY_KEYS)
        if unknown:
            raise bad(unknown[0], f"is not a lock entry field (known: {', '.join(sorted(_ENTRY_KEYS))})")
        name = need("name", str)
        if not _NAME.fullmatch(name):
            raise bad("name", "is not an input name")
        kind = need("kind", str)
        if kind not in KINDS:
            raise RecipeError(f"{where}: entry {d.get('name')!r} has unknown kind {kind!r}.", path=where,
                              key="kind")
        if kind != "debian":
            need("url" if kind == "url" else "path", str)  # where the build reads the input from
        sha = need("sha256", str)
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise RecipeError(f"{where}: entry {d.get('name')!r} has a malformed sha256.", path=where,
                              key="sha256")
        size = need("size", int)
        if size < 0:
            raise bad("size", f"is {size}, not a size in bytes")
        wants = need("wants", dict)
        origin = need("origin", str)
        for key in {"debian": ("path", "url"), "file": ("debian", "url", "via", "version"),
                    "url": ("debian", "path", "via", "version"), "oci": ("debian", "url", "via", "version"),
                    "tree": ("debian", "url", "via", "version")}[kind]:
            if d.get(key) is not None:
                raise bad(key, f"does not belong to a {kind} input")
        entry = cls(name=name, kind=kind, wants=wants, sha256=sha, size=size, origin=origin,
                    version=d.get("version"), debian=d.get("debian"), path=d.get("path"), url=d.get("url"),
                    via=d.get("via"))
        if kind == "debian":
            deb = need("debian", dict)
            version = need("version", str)
            if not _DEB_VERSION.fullmatch(version):
                raise bad("version", f"{version!r} is not a Debian version")
            if not isinstance(deb.get("name"), str) or not deb["name"]:
                raise RecipeError(f"{where}: entry {entry.name!r} has a package record without a package name; "
                                  f"the lock file was edited by hand. Run `blindbox lock` again.", path=where,
                                  key="debian")
            if deb.get("sha256") != sha or deb.get("version") != entry.version:
                raise RecipeError(f"{where}: entry {entry.name!r} disagrees with its own package record "
                                  f"(version or sha256); the lock file was edited by hand. Run `blindbox "
                                  f"lock` again.", path=where, key="debian")
            _check_debian_record(deb, size, bad)
            if entry.via is not None and not (isinstance(entry.via, str) and _VIA.fullmatch(entry.via)):
                raise bad("via", "is not a package=version string")
            expected_origin = f"debian:{deb['suite']}/{deb['name']}={version} ({deb['filename']})"
        elif kind == "file":
            path = need("path", str)
            if path != wants.get("file"):
                raise bad("path", f"{path!r} is not the file the entry was made for ({wants.get('file')!r})")
            expected_origin = f"file:{path}"
        elif kind == "oci":
            path = need("path", str)
            ref = wants.get("ref")
            if set(wants) != {"oci", "ref"} or not (ref is None or isinstance(ref, str)):
                raise bad("wants", "is not what an OCI image entry is made for ({'oci': PATH, 'ref': TAG or null})")
            if path != wants["oci"]:
                raise bad("path", f"{path!r} is not the image the entry was made for ({wants['oci']!r})")
            expected_origin = f"oci:{path}"
        elif kind == "tree":
            path = need("path", str)
            if len(wants) != 1 or next(iter(wants)) not in _TREE_SOURCES:
                raise bad("wants", "is not what a tree entry is made for ({'directory': PATH} or {'tarball': PATH})")
            source = next(iter(wants))
            if path != wants[source]:
                raise bad("path", f"{path!r} is not the {source} the entry was made for ({wants[source]!r})")
            expected_origin = f"{source}:{path}"
        else:
            url = need("url", str)
            if url != wants.get("url") or not url.startswith("https://"):
                raise bad("url", f"{url!r} is not the https URL the entry was made for")
            expected_origin = url
        if origin != expected_origin:
            raise bad("origin", f"is {origin!r}, but the entry's own fields say {expected_origin!r}")
        return entry

    def describe(self) -> str:
        if self.kind == "debian":
            assert self.debian is not None  # from_dict requires it for a debian entry
            return f"{self.debian['name']} {self.version} from Debian {self.debian.get('suite')}"
        if self.kind == "file":
            return f"local file {self.path}"
        if self.kind == "oci":
            return f"OCI image {self.path}"
        if self.kind == "tree":
            return f"{self.origin.split(':', 1)[0]} {self.path}"
        return f"{self.url}"


@dataclass(frozen=True)
class Lock:
    recipe: str
    inputs: tuple[LockedInput, ...]
    path: Path | None = None
    sha256: str | None = None       # of the file's bytes, once written or read
    #: the snapshot archive pinned Debian packages are fetched from when the archive no longer serves them
    snapshot: Snapshot | None = None

    def get(self, name: str) -> LockedInput | None:
        return next((i for i in self.inputs if i.name == name), None)

    def names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def to_json(self) -> bytes:
        doc = {
            "lock_version": LOCK_VERSION,
            "recipe": self.recipe,
            "comment": "Written by `blindbox lock`; every pin here is part of the launch measurement. "
                       "Change pins with `blindbox lock RECIPE --update`, never by hand.",
        }
        if self.snapshot is not None:
            doc["snapshot"] = self.snapshot.to_dict()
        doc["inputs"] = [i.to_dict() for i in self.inputs]
        return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


@dataclass(frozen=True)
class Change:
    name: str
    old: LockedInput | None
    new: LockedInput | None
    reason: str

    def describe(self) -> str:
        if self.old is None:
            assert self.new is not None  # a change has an old or a new pin, or both
            return f"{self.name}: pinned {self.new.describe()} (sha256 {self.new.sha256[:16]}...) [{self.reason}]"
        if self.new is None:
            return f"{self.name}: removed (no longer in the recipe)"
        if self.old.sha256 == self.new.sha256:
            return f"{self.name}: unchanged, {self.new.describe()}"
        return (f"{self.name}: {self.old.describe()} -> {self.new.describe()} "
                f"(sha256 {self.old.sha256[:16]}... -> {self.new.sha256[:16]}...) [{self.reason}]")


@dataclass
class LockResult:
    lock: Lock
    changes: list[Change] = field(default_factory=list)

    @property
    def changed_pins(self) -> list[Change]:
        """Pins that existed and now point at other bytes (or are gone)."""
        return [c for c in self.changes if c.old is not None and (c.new is None or c.old.sha256 != c.new.sha256)]

    @property
    def measured_changes(self) -> list[Change]:
        """Changed pins of measured inputs: the launch digests change."""
        return [c for c in self.changed_pins if c.name not in ID_KEY_INPUTS]

    @property
    def key_changes(self) -> list[Change]:
        """Changed ID/author key pins: the ID blocks and key digests change, not the launch digests."""
        return [c for c in self.changed_pins if c.name in ID_KEY_INPUTS]


# --------------------------------------------------------------------------------------
# reading and writing
# --------------------------------------------------------------------------------------

def read_lock(path: str | Path) -> Lock:
    path = Path(path)
    if is_fifo_or_socket(path):
        # opening a FIFO nobody writes to waits for ever; the lock file is always a file
        raise RecipeError(f"{path}: the lock file is a FIFO or socket, not a file; remove it and run `blindbox "
                          f"lock {path.with_suffix('.yaml')}` to write the lock file.", path=str(path), line=0,
                          key="")
    try:
        data = read_bounded(path, "lock", MAX_LOCK_BYTES)
    except FileNotFoundError:
        raise LockMissing(f"{path} does not exist: the recipe's inputs are not pinned yet. Run `blindbox lock "
                          f"{path.with_suffix('.yaml')}` to pin them (and commit the lock file).") from None
    except IsADirectoryError:
        raise RecipeError(f"{path}: the lock file is a directory; remove it and run `blindbox lock "
                          f"{path.with_suffix('.yaml')}` to write the lock file.", path=str(path), line=0,
                          key="") from None
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the lock file ({e.strerror or e}); check its permissions.",
                          path=str(path), line=0, key="") from None
    return parse_lock(data, path)


def parse_lock(data: bytes, path: Path) -> Lock:
    where = str(path)
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RecipeError(f"{where}: the lock file is not UTF-8 JSON.", path=where, line=1, key="") from None
    except json.JSONDecodeError as e:
        raise RecipeError(f"{where}:{e.lineno}: the lock file is not valid JSON ({e.msg}); restore it from "
                          f"version control or run `blindbox lock` again.", path=where, line=e.lineno,
                          key="") from None
    except RecursionError:
        # json recurses once per nesting level; a lock nests three
        raise RecipeError(f"{where}: the lock file nests brackets too deeply to be a lock file; restore it "
                          f"from version control or run `blindbox lock` again.", path=where, line=1,
                          key="") from None
    if not isinstance(doc, dict) or doc.get("lock_version") != LOCK_VERSION:
        raise RecipeError(f"{where}: not a blindbox lock file of version {LOCK_VERSION}; run `blindbox lock` "
                          f"again.", path=where, key="lock_version")
    unknown = sorted(set(doc) - _LOCK_KEYS)
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r} (a lock file has {', '.join(sorted(_LOCK_KEYS))}); "
                          f"restore it from version control or run `blindbox lock` again.", path=where,
                          key=unknown[0])
    for key in ("recipe", "comment"):
        if key in doc and not isinstance(doc[key], str):
            raise RecipeError(f"{where}: {key!r} must be a string; restore the lock file from version control "
                              f"or run `blindbox lock` again.", path=where, key=key)
    raw = doc.get("inputs")
    if not isinstance(raw, list) or not all(isinstance(d, dict) for d in raw):
        raise RecipeError(f"{where}: 'inputs' must be a list of entries.", path=where, key="inputs")
    inputs = tuple(LockedInput.from_dict(d, where) for d in raw)
    names = [i.name for i in inputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RecipeError(f"{where}: input {dupes[0]!r} is pinned twice.", path=where, key="inputs")
    return Lock(recipe=str(doc.get("recipe", "")), inputs=inputs, path=path,
                sha256=hashlib.sha256(data).hexdigest(), snapshot=_parse_snapshot(doc.get("snapshot"), where))


def _parse_snapshot(raw: object, where: str) -> Snapshot | None:
    """The lock's ``snapshot``: ``{"base": URL, "timestamp": "YYYYMMDDTHHMMSSZ"}``, or absent."""
    from builder.sources.snapshot import Snapshot

    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"base", "timestamp"}:
        raise RecipeError(f"{where}: 'snapshot' must be a mapping with exactly 'base' and 'timestamp'; set it with "
                          f"`blindbox lock RECIPE --snapshot URL@TIMESTAMP`.", path=where, key="snapshot")
    try:
        return Snapshot(raw["base"], raw["timestamp"])
    except SourceError as e:
        raise RecipeError(f"{where}: 'snapshot': {e}", path=where, key="snapshot") from None


def write_lock(path: str | Path, lock: Lock) -> Lock:
    """Write ``lock`` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    data = lock.to_json()
    write_atomic(path, data, what="lock file", mode=0o644)
    return Lock(lock.recipe, lock.inputs, path, hashlib.sha256(data).hexdigest(), lock.snapshot)


# --------------------------------------------------------------------------------------
# the recipe's inputs, including the library packages its binaries need
# --------------------------------------------------------------------------------------

def library_wants(recipe: Recipe) -> dict:
    """The declaration the ``library:*`` pins are made for: the set of binary packages."""
    pkgs = sorted({(b.source.package, b.source.suite, b.source.arch) for b in recipe.initrd.binaries})
    return {"libraries_for": [f"{p}/{s}/{a}" for p, s, a in pkgs]}


def check_lock(recipe: Recipe, lock: Lock) -> None:
    """Refuse a lock that does not pin exactly what the recipe declares."""
    lock_file = lock.path or recipe.lock_path
    fix = f"run `blindbox lock {recipe.path}` to pin what the recipe now asks for"
    made_for = os.path.relpath(recipe.path, recipe.lock_path.parent)
    if lock.recipe != made_for:
        raise LockMismatch(f"{lock_file} says it pins the recipe {lock.recipe!r}, not {made_for!r} beside it; "
                           f"restore it from version control or {fix}.")
    for spec in recipe.inputs():
        entry = lock.get(spec.name)
        if entry is None and spec == COMPRESSOR:
            raise LockMismatch(
                f"{lock_file} does not pin the initrd's compressor (Debian package {spec.package} from {spec.suite}, "
                f"whose zlib writes the gzip initrd on every host alike); it was written by an older blindbox. Run "
                f"`blindbox lock {recipe.path}` to add that pin: the other pins stay as they are and the launch "
                f"digests do not change.")
        if entry is None:
            raise LockMismatch(f"input {spec.name!r} ({spec.describe()}) is declared in {recipe.path} but not "
                               f"pinned in {lock_file}; {fix}.")
        if entry.wants != spec.wants():
            raise LockMismatch(
                f"input {spec.name!r}: {recipe.path} now asks for {_fmt_wants(spec.wants())} but {lock_file} "
                f"was made for {_fmt_wants(entry.wants)}; {fix} (this changes the launch measurement).")
    wanted = {s.name for s in recipe.inputs()}
    libs = library_wants(recipe)
    _check_rootfs_pins(recipe, lock, lock_file, fix)
    _check_agent_pins(recipe, lock, lock_file, fix)
    for entry in lock.inputs:
        if is_rootfs_entry(entry.name) or is_agent_entry(entry.name):
            continue
        if entry.name.startswith("library:"):
            if not recipe.initrd.binaries or entry.wants.get("libraries_for") != libs["libraries_for"]:
                raise LockMismatch(f"{lock_file} pins library {entry.name[8:]!r} for binaries the recipe no "
                                   f"longer lists exactly; {fix}.")
        elif entry.name not in wanted:
            raise LockMismatch(f"{lock_file} pins input {entry.name!r}, which {recipe.path} does not declare; "
                               f"{fix}.")


def is_agent_entry(name: str) -> bool:
    """True for the lock entries of the attestation agent's runtime: ``agent:<package>``."""
    return name.startswith("agent:")


def _check_agent_pins(recipe: Recipe, lock: Lock, lock_file, fix: str) -> None:
    spec = recipe.agent
    pins = [e for e in lock.inputs if is_agent_entry(e.name)]
    if spec is None:
        if pins:
            raise LockMismatch(f"{lock_file} pins the attestation agent's package {pins[0].name[6:]!r}, but "
                               f"{recipe.path} has no agent; {fix}.")
        return
    for entry in pins:
        if entry.kind != "debian" or entry.wants != spec.wants():
            raise LockMismatch(f"input {entry.name!r}: {recipe.path} now asks for the agent's packages from "
                               f"{spec.suite} ({spec.arch}) but {lock_file} was made for "
                               f"{_fmt_wants(entry.wants)}; {fix} (this changes the launch measurement).")
    for pkg in spec.packages:
        if lock.get(f"agent:{pkg}") is None:
            raise LockMismatch(f"input 'agent:{pkg}' (Debian package {pkg} of the attestation agent) is declared "
                               f"in {recipe.path} but not pinned in {lock_file}; {fix}.")


def is_rootfs_entry(name: str) -> bool:
    """True for the lock entries of the root filesystem's source: ``rootfs`` and ``rootfs:<package>``."""
    return name == "rootfs" or name.startswith("rootfs:")


def rootfs_kind(recipe: Recipe) -> str | None:
    """The lock entry kind that pins ``recipe``'s root filesystem source (None without ``rootfs:``)."""
    if recipe.rootfs is None:
        return None
    return {"oci": "oci", "debian": "debian"}.get(recipe.rootfs.source, "tree")


def _check_rootfs_pins(recipe: Recipe, lock: Lock, lock_file, fix: str) -> None:
    spec = recipe.rootfs
    pins = [e for e in lock.inputs if is_rootfs_entry(e.name)]
    if spec is None:
        if pins:
            raise LockMismatch(f"{lock_file} pins the root filesystem ({pins[0].name!r}), which {recipe.path} no "
                               f"longer declares; {fix}.")
        return
    wants = spec.wants()
    changed = (f"{recipe.path} now asks for {spec.describe()} but {lock_file} was made for another root "
               f"filesystem; {fix} (this changes the launch measurement).")
    if spec.source == "debian":
        for entry in pins:
            if entry.name == "rootfs" or entry.kind != "debian" or entry.wants != wants:
                raise LockMismatch(f"input {entry.name!r}: {changed}")
        for pkg in spec.packages:
            if lock.get(f"rootfs:{pkg}") is None:
                raise LockMismatch(f"input 'rootfs:{pkg}' (Debian package {pkg} of the root filesystem) is declared "
                                   f"in {recipe.path} but not pinned in {lock_file}; {fix}.")
        return
    pin = lock.get("rootfs")
    if pin is None:
        raise LockMismatch(f"input 'rootfs' ({spec.describe()}) is declared in {recipe.path} but not pinned in "
                           f"{lock_file}; {fix}.")
    if pin.kind != rootfs_kind(recipe) or pin.wants != wants:
        raise LockMismatch(f"input 'rootfs': {changed}")
    extra = next((e for e in pins if e.name != "rootfs"), None)
    if extra is not None:
        raise LockMismatch(f"{lock_file} pins {extra.name!r}, a Debian package of a root filesystem {recipe.path} "
                           f"no longer builds from packages; {fix}.")


def _fmt_wants(w: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in w.items())


def _debian_entry(spec_name: str, wants: dict, pkg, via: str | None = None) -> LockedInput:
    d = pkg.to_dict()
    origin = f"debian:{pkg.suite}/{pkg.name}={pkg.version} ({pkg.filename})"
    return LockedInput(name=spec_name, kind="debian", wants=wants, sha256=pkg.sha256, size=pkg.size,
                       origin=origin, version=pkg.version, debian=d, via=via)


def _resolve_kernel(archive, spec: InputSpec):
    """A kernel metapackage (linux-image-amd64) resolves to the kernel package it depends on."""
    pkg = archive.resolve(spec.package, spec.suite, arch=spec.arch)
    if _KERNEL_PKG.fullmatch(pkg.name):
        return pkg, None
    for dep in archive.depends(pkg):
        if _KERNEL_PKG.fullmatch(dep):
            return archive.resolve(dep, spec.suite, arch=spec.arch), f"{pkg.name}={pkg.version}"
    return pkg, None


def resolve_input(spec: InputSpec, recipe: Recipe, archive, fetch_url) -> LockedInput:
    """Pin one declared input as the archive / file system / network serves it now."""
    wants = spec.wants()
    if spec.kind == "debian":
        if spec.name == "kernel":
            pkg, via = _resolve_kernel(archive, spec)
        else:
            pkg, via = archive.resolve(spec.package, spec.suite, arch=spec.arch), None
        return _debian_entry(spec.name, wants, pkg, via)
    if spec.kind == "file":
        path = local_path(recipe, spec)
        if not path.is_file():
            raise SourceError(f"input {spec.name!r}: {path} does not exist (the recipe names it relative to "
                              f"{recipe.directory}).", source=str(path))
        actual = file_digest(path, "input").hex()
        if spec.sha256 and actual != spec.sha256:
            raise InputDigestMismatch(
                f"input {spec.name!r}: {path} has sha256 {actual}, but {recipe.path} declares {spec.sha256}; "
                f"fix the file or the declared sha256.", source=str(path), expected=spec.sha256, actual=actual,
                path=str(path))
        return LockedInput(name=spec.name, kind="file", wants=wants, sha256=actual, size=path.stat().st_size,
                           origin=f"file:{spec.file}", path=spec.file)
    assert spec.url is not None and spec.sha256 is not None  # the recipe requires both for a url input
    fetched = Path(fetch_url(spec.url, spec.sha256))
    return LockedInput(name=spec.name, kind="url", wants=wants, sha256=spec.sha256, size=fetched.stat().st_size,
                       origin=spec.url, url=spec.url)


def _names(field_text: str) -> list[str]:
    """Package names of a Depends-style field: the first alternative of each, no versions."""
    out = []
    for group in field_text.split(","):
        first = group.split("|")[0].strip()
        name = re.split(r"[\s(\[<]", first, maxsplit=1)[0].split(":")[0] if first else ""
        if name and name not in out:
            out.append(name)
    return out


def package_dependencies(archive, pkg) -> list[str]:
    """Pre-Depends and Depends of ``pkg`` (essential packages such as coreutils declare their
    libraries as Pre-Depends, which DebianArchive.depends does not list)."""
    fields = _control(archive, pkg)
    names = _names(fields.get("Pre-Depends", ""))
    return names + [n for n in _names(fields.get("Depends", "")) if n not in names]


def resolve_libraries(recipe: Recipe, archive) -> list[LockedInput]:
    """Pin the dependency closure of every package that provides an initrd binary."""
    wants = library_wants(recipe)
    own = {(b.source.package, b.source.suite) for b in recipe.initrd.binaries}
    seen: dict[str, object] = {}
    queue = []
    for b in recipe.initrd.binaries:
        pkg = archive.resolve(b.source.package, b.source.suite, arch=b.source.arch)
        queue.append((pkg, b.source.suite, b.source.arch))
    while queue:
        pkg, suite, arch = queue.pop(0)
        for dep in package_dependencies(archive, pkg):
            if dep in seen or (dep, suite) in own:
                continue
            dpkg = archive.resolve(dep, suite, arch=arch)
            seen[dep] = dpkg
            queue.append((dpkg, suite, arch))
    return [_debian_entry(f"library:{name}", wants, seen[name]) for name in sorted(seen)]


def _control(archive, pkg) -> dict[str, str]:
    control = getattr(archive, "control", None)
    if control is not None:
        return control(pkg)
    from builder.sources import read_deb_control
    return read_deb_control(archive.download(pkg))


def rootfs_closure(recipe: Recipe, archive) -> list[LockedInput]:
    """Pin the root filesystem's Debian packages and their Pre-Depends/Depends closure (``rootfs:<name>``),
    by :func:`debian_closure`."""
    spec = recipe.rootfs
    assert spec is not None and spec.source == "debian" and spec.suite is not None
    return debian_closure(archive, spec.packages, spec.suite, spec.arch, prefix="rootfs", wants=spec.wants(),
                          listed_in="rootfs.debian.packages")


def agent_closure(recipe: Recipe, archive) -> list[LockedInput]:
    """Pin the attestation agent's runtime packages and their closure (``agent:<name>``), by
    :func:`debian_closure`."""
    spec = recipe.agent
    assert spec is not None
    return debian_closure(archive, spec.packages, spec.suite, spec.arch, prefix="agent", wants=spec.wants(),
                          listed_in="the agent's packages")


def debian_closure(archive, packages: Iterable[str], suite: str, arch: str, *, prefix: str, wants: dict,
                   listed_in: str) -> list[LockedInput]:
    """Pin ``packages`` and their Pre-Depends/Depends closure as ``<prefix>:<name>`` entries made for ``wants``.

    The first alternative of each dependency is taken, versions are not compared (the suite
    serves one version of each package); a dependency provided (``Provides``) by a package
    already in the closure is satisfied by it.  A dependency the suite has no package of
    (a purely virtual package, or one outside main) is refused, naming the chain that needs it;
    ``listed_in`` names where the packages were asked for.
    """
    from builder.errors import OfflineMiss, StaleSuite

    packages = list(packages)
    seen: dict[str, object] = {}
    chains: dict[str, tuple[str, ...]] = {}
    provided: set[str] = set()

    def resolve(name: str, chain: tuple[str, ...]):
        try:
            pkg = archive.resolve(name, suite, arch=arch)
        except (OfflineMiss, StaleSuite, InputDigestMismatch):
            raise
        except SourceError as e:
            if len(chain) == 1:
                raise SourceError(f"{listed_in}: {e}", source=e.source) from None
            raise SourceError(
                f"{prefix}: the package {name}, needed by {' -> '.join(chain)}, cannot be pinned: Debian "
                f"{suite} ({arch}) has no package of that name in main (it is a virtual package or "
                f"not in main); add a package that provides it to {listed_in}.",
                source=f"debian:{suite}/{name}") from None
        seen[name], chains[name] = pkg, chain
        provided.update(_names(_control(archive, pkg).get("Provides", "")))
        return pkg

    for name in packages:
        resolve(name, (name,))
    queue = list(packages)
    while queue:
        name = queue.pop(0)
        fields = _control(archive, seen[name])
        deps = _names(fields.get("Pre-Depends", ""))
        deps += [n for n in _names(fields.get("Depends", "")) if n not in deps]
        for dep in deps:
            if dep in seen or dep in provided:
                continue
            resolve(dep, chains[name] + (dep,))
            queue.append(dep)
    return [_debian_entry(f"{prefix}:{name}", wants, seen[name]) for name in sorted(seen)]


def resolve_rootfs(recipe: Recipe, archive) -> list[LockedInput]:
    """The lock entries of ``recipe``'s root filesystem source, as the source stands now.

    An OCI image is pinned by its manifest's SHA-256 (a ``docker save`` archive, which has no
    manifest, by its config's, which names every layer by its diff_id) and its size; a
    directory or tarball by :func:`builder.rootfs_tree.tree_digest` of the tree it extracts
    to, its size being the bytes of its regular files; Debian packages by
    :func:`rootfs_closure`.
    """
    import tempfile

    from builder.recipe import rootfs_path
    from builder.rootfs_tree import tree_listing
    from builder.sources.oci import read_oci_image
    from builder.steps.rootfs import extract_source_tree

    spec = recipe.rootfs
    assert spec is not None
    if spec.source == "debian":
        return rootfs_closure(recipe, archive)
    assert spec.path is not None
    path = rootfs_path(recipe)
    if spec.source == "oci":
        image = read_oci_image(path, ref=spec.ref)
        digest = image.manifest_digest or image.config.digest
        size = image.manifest_size if image.manifest_size is not None else image.config.size
        return [LockedInput(name="rootfs", kind="oci", wants=spec.wants(), sha256=digest.split(":", 1)[1],
                            size=size, origin=f"oci:{spec.path}", path=spec.path)]
    with tempfile.TemporaryDirectory(prefix="blindbox-rootfs-") as tmp:
        tree = Path(tmp) / "tree"
        extract_source_tree(recipe, tree)
        listing = tree_listing(tree)
    size = sum(int(line.split(b" ")[3]) for line in listing.splitlines()[1:] if line.split(b" ")[1] == b"f")
    return [LockedInput(name="rootfs", kind="tree", wants=spec.wants(), sha256=hashlib.sha256(listing).hexdigest(),
                        size=size, origin=f"{spec.source}:{spec.path}", path=spec.path)]


def lock_recipe(recipe: Recipe, archive, fetch_url=None, *, previous: Lock | None = None, update: bool = False,
                only: Iterable[str] = (), snapshot: Snapshot | None = None) -> LockResult:
    """Pin every input of ``recipe``, keeping the pins of ``previous`` that still apply.

    ``update`` re-pins every input (or, with ``only``, the named ones) to what is served
    now.  ``archive`` is a builder.sources.DebianArchive; ``fetch_url(url, sha256) -> path``
    fetches URL inputs (builder.sources.fetch_url).  ``snapshot`` names the snapshot archive
    the lock records (default: the one ``previous`` records).
    """
    check_id_keys(recipe)        # a key that cannot sign an ID block is refused before it is pinned
    only = set(only)
    known = {s.name for s in recipe.inputs()}
    has_libs = bool(recipe.initrd.binaries)
    has_rootfs = recipe.rootfs is not None
    has_agent = recipe.agent is not None
    unknown = sorted(n for n in only if n not in known and not (n == "libraries" and has_libs)
                     and not (n.startswith("library:") and has_libs) and not (is_rootfs_entry(n) and has_rootfs)
                     and not ((n == "agent" or is_agent_entry(n)) and has_agent))
    if unknown:
        groups = (["libraries"] if has_libs else []) + (["rootfs"] if has_rootfs else []) + \
            (["agent"] if has_agent else [])
        raise BuildError(f"--input {unknown[0]!r} is not an input of {recipe.path}; its inputs are "
                         f"{', '.join(sorted(known) + groups)}.")

    def wants_update(name: str) -> bool:
        return update and (not only or name in only
                           or (name.startswith("library:") and ("libraries" in only or name in only))
                           or (is_rootfs_entry(name) and "rootfs" in only)
                           or (is_agent_entry(name) and "agent" in only))

    out: list[LockedInput] = []
    changes: list[Change] = []
    for spec in recipe.inputs():
        old = previous.get(spec.name) if previous else None
        if old is not None and old.wants == spec.wants() and not wants_update(spec.name):
            out.append(old)
            continue
        reason = "new input" if old is None else ("recipe changed" if old.wants != spec.wants() else "update")
        progress.current().step(f"pin {spec.name}")
        new = resolve_input(spec, recipe, archive, fetch_url)
        out.append(new)
        changes.append(Change(spec.name, old, new, reason))

    if has_libs:
        old_libs = [i for i in previous.inputs if i.name.startswith("library:")] if previous else []
        libs_ok = old_libs and all(i.wants == library_wants(recipe) for i in old_libs)
        if libs_ok and not any(wants_update(i.name) for i in old_libs):
            out += old_libs
        else:
            progress.current().step("pin libraries")
            new_libs = resolve_libraries(recipe, archive)
            changes += _closure_changes(old_libs, new_libs, "update")
            out += new_libs
    if has_rootfs:
        out += _lock_rootfs(recipe, archive, previous, wants_update, changes)
    if has_agent:
        out += _lock_agent(recipe, archive, previous, wants_update, changes)
    if previous:
        kept = {i.name for i in out}
        reported = {c.name for c in changes}
        changes += [Change(i.name, i, None, "removed") for i in previous.inputs
                    if i.name not in kept and i.name not in reported and not i.name.startswith("library:")]
    rel = os.path.relpath(recipe.path, recipe.lock_path.parent)
    if snapshot is None and previous is not None:
        snapshot = previous.snapshot
    return LockResult(Lock(recipe=rel, inputs=tuple(out), snapshot=snapshot), changes)


def _closure_changes(old: list[LockedInput], new: list[LockedInput], reason: str) -> list[Change]:
    """What re-resolving a closure of pins changed: new entries, changed ones (``reason``), removed ones."""
    old_by = {i.name: i for i in old}
    out: list[Change] = []
    for entry in new:
        prev = old_by.pop(entry.name, None)
        if prev is None or prev.sha256 != entry.sha256 or prev.wants != entry.wants:
            out.append(Change(entry.name, prev, entry, "new input" if prev is None else reason))
    return out + [Change(n, o, None, "removed") for n, o in sorted(old_by.items())]


def _lock_rootfs(recipe: Recipe, archive, previous: Lock | None, wants_update, changes: list[Change]) \
        -> list[LockedInput]:
    """The root filesystem's pins: kept while the recipe declares the same source, else resolved anew."""
    spec = recipe.rootfs
    assert spec is not None
    kind = rootfs_kind(recipe)
    old = [i for i in previous.inputs if is_rootfs_entry(i.name)] if previous else []
    names = {i.name for i in old}
    same = bool(old) and all(i.kind == kind and i.wants == spec.wants() for i in old) and (
        all(f"rootfs:{p}" in names for p in spec.packages) if spec.source == "debian" else names == {"rootfs"})
    if same and not any(wants_update(i.name) for i in old):
        return old
    new = resolve_rootfs(recipe, archive)
    changes += _closure_changes(old, new, "update" if same else "recipe changed")
    return new


def _lock_agent(recipe: Recipe, archive, previous: Lock | None, wants_update, changes: list[Change]) \
        -> list[LockedInput]:
    """The agent's runtime pins: kept while the recipe asks for the same suite, else resolved anew."""
    spec = recipe.agent
    assert spec is not None
    old = [i for i in previous.inputs if is_agent_entry(i.name)] if previous else []
    names = {i.name for i in old}
    same = bool(old) and all(i.kind == "debian" and i.wants == spec.wants() for i in old) and \
        all(f"agent:{p}" in names for p in spec.packages)
    if same and not any(wants_update(i.name) for i in old):
        return old
    new = agent_closure(recipe, archive)
    changes += _closure_changes(old, new, "update" if same else "recipe changed")
    return new
