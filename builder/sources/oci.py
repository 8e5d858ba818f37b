"""Reading a container image from disk: an OCI image layout (a directory or a tar of one) or a
``docker save`` archive.  No registry and no network.

:func:`read_oci_image` finds the linux/amd64 image (through nested indexes, bounded), checks
every blob it reads against its descriptor (size first, then SHA-256, streamed) and returns
an :class:`OciImage`: the config's Entrypoint, Cmd, Env, WorkingDir and User, the layer
descriptors in order and the manifest digest.  :func:`apply_oci_layers` verifies each layer
again while it streams it into a tree by the one extraction rule of
:mod:`builder.rootfs_tree`.  Bounds come from :mod:`builder.limits` (docs/limits.md).

A layout directory holds ``oci-layout``, ``index.json`` and ``blobs/<alg>/<hex>``; an OCI
archive is the same packed in an uncompressed tar; a ``docker save`` archive holds
``manifest.json``, the config (``<hex>.json``) and one tar per layer, pinned by the config's
``rootfs.diff_ids`` (an archive that also holds ``index.json``, as Docker 25 writes, is
read as an OCI layout).

This module works on files already on disk: it needs nothing from apt, the network or the
cache (no import of the other :mod:`builder.sources` modules), and never the command line
(``blindbox.cli``).  Only zstd-compressed layers run a tool (``zstd``).  Nothing here
prints or exits.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SourceError
from ..limits import (MAX_OCI_ARCHIVE_MEMBERS, MAX_OCI_BLOB_BYTES, MAX_OCI_INDEX_DEPTH, MAX_OCI_INDEX_ENTRIES,
                      MAX_OCI_JSON_BYTES, MAX_OCI_LAYERS, MAX_ROOTFS_UNPACKED_BYTES, MAX_TREE_ENTRIES)
from ..rootfs_tree import BoundedTarInfo, Compression, TreeWriter, open_tar_stream

__all__ = ["Descriptor", "OciImage", "apply_oci_layers", "read_oci_image"]

_CHUNK = 1 << 20
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
#: layer media type -> compression of the tar
LAYER_TYPES: dict[str, Compression] = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gz",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zst",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gz",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zst",
    "application/vnd.docker.image.rootfs.diff.tar": "",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gz",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gz",
}
#: the media type given to a ``docker save`` layer (an uncompressed tar pinned by its diff_id)
DOCKER_SAVE_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
#: the annotation that tags a manifest in an index
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a blob is, its ``sha256:<hex>`` digest and its size in bytes."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class OciImage:
    """The linux/amd64 image of a layout or archive, every blob of it verified."""

    #: the layout directory or archive read
    source: str
    #: ``sha256:<hex>`` of the image manifest; None for a ``docker save`` archive, which has none
    manifest_digest: str | None
    config: Descriptor
    #: bottom layer first
    layers: tuple[Descriptor, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    #: ``NAME=value`` strings, in the config's order
    env: tuple[str, ...]
    working_dir: str
    user: str
    #: bytes of the image manifest; None for a ``docker save`` archive
    manifest_size: int | None = None


class _HashingReader(io.RawIOBase):
    """Reads ``size`` bytes of a blob, hashing them; :meth:`check` compares with the descriptor."""

    def __init__(self, raw, size: int):
        self._raw, self._left, self._h = raw, size, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._left)
        if n <= 0:
            return 0
        data = self._raw.read(n)
        b[:len(data)] = data
        self._h.update(data)
        self._left -= len(data)
        return len(data)

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()


class _Store:
    """The files of a layout directory or of a tar archive, by their path inside it."""

    def __init__(self, path: Path):
        self.path = path
        self._dir = path.is_dir()
        self._members: dict[str, tarfile.TarInfo] = {}
        self._tf: tarfile.TarFile | None = None
        if self._dir:
            return
        if not path.is_file():
            raise SourceError(f"{path} does not exist or is neither a directory nor a file; give an OCI image "
                              f"layout directory or an image archive (.tar).", source=str(path))
        try:
            tf = tarfile.open(path, "r:", tarinfo=_ImageTarInfo)
            count = 0
            for m in iter(tf.next, None):
                count += 1
                if count > MAX_OCI_ARCHIVE_MEMBERS:
                    raise SourceError(f"{path} holds more than {MAX_OCI_ARCHIVE_MEMBERS:,} files, more than any "
                                      f"image archive (docs/limits.md); it is not an image archive.",
                                      source=str(path))
                name = "/".join(p for p in m.name.split("/") if p not in ("", "."))
                if m.isreg():
                    self._members[name] = m
        except (tarfile.TarError, EOFError, OSError) as e:
            raise SourceError(f"{path} is not an uncompressed tar archive ({e}); give an OCI image layout "
                              f"directory, an OCI archive or a `docker save` archive (decompress it first).",
                              source=str(path)) from e
        self._tf = tf

    def close(self) -> None:
        if self._tf is not None:
            self._tf.close()

    def has(self, name: str) -> bool:
        if self._dir:
            return (self.path / name).is_file()
        return name in self._members

    def open(self, name: str) -> tuple[Any, int] | None:
        """(a binary reader, size) of the file ``name``, or None if there is none."""
        if name.startswith("/") or ".." in name.split("/"):
            raise SourceError(f"{self.path} names the file {name[:80]!r}, outside the image (path traversal); "
                              f"refusing the image.", source=str(self.path))
        if self._dir:
            p = self.path / name
            try:
                st = os.stat(p)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if not stat.S_ISREG(st.st_mode):
                return None
            return open(p, "rb"), st.st_size
        m = self._members.get(name)
        if m is None:
            return None
        assert self._tf is not None
        f = self._tf.extractfile(m)
        assert f is not None  # a regular member
        return f, m.size


class _ImageTarInfo(BoundedTarInfo):
    NEEDS = "any image needs"
    SPARSE = "which no image contains"


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


class _Reader:
    def __init__(self, store: _Store):
        self.store, self.src = store, str(store.path)

    def fail(self, text: str) -> SourceError:
        return SourceError(f"{self.src}: {text}", source=self.src)

    def json_file(self, name: str, what: str, *, expect: Descriptor | None = None) -> Any:
        """A JSON file of the store, bounded, checked against ``expect`` when given."""
        opened = self.store.open(name)
        if opened is None:
            if expect is not None:
                raise self.fail(f"the {what} blob {expect.digest} is missing; the image is incomplete, "
                                f"export it again.")
            raise self.fail(f"has no {name}; give an OCI image layout directory or image archive.")
        f, size = opened
        with f:
            if expect is not None and size != expect.size:
                raise self.fail(f"the {what} blob {expect.digest} has {size:,} bytes where its descriptor says "
                                f"{expect.size:,}; the image is damaged, export it again.")
            if size > MAX_OCI_JSON_BYTES:
                raise self.fail(f"its {what} ({name}) has {size:,} bytes, more than the {MAX_OCI_JSON_BYTES:,} "
                                f"of any image (docs/limits.md); it is not an image.")
            data = f.read(size)
        if expect is not None and "sha256:" + hashlib.sha256(data).hexdigest() != expect.digest:
            raise self.fail(f"the {what} blob {expect.digest} does not match its digest; the image is "
                            f"damaged, export it again.")
        try:
            return json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise self.fail(f"its {what} ({name}) is not valid JSON ({str(e)[:80]}); the image is damaged, "
                            f"export it again.") from None

    def descriptor(self, obj: Any, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise self.fail(f"a {what} descriptor is not a JSON object; the image is malformed.")
        mt, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        if not isinstance(mt, str) or not isinstance(digest, str) or type(size) is not int:
            raise self.fail(f"a {what} descriptor lacks a string mediaType, a string digest or an integer "
                            f"size; the image is malformed.")
        if not _DIGEST.fullmatch(digest):
            raise self.fail(f"the {what} digest {digest[:80]!r} is not sha256:<64 hex digits>; only sha256 "
                            f"images are read.")
        if not 0 <= size <= MAX_OCI_BLOB_BYTES:
            raise self.fail(f"the {what} {digest} claims {size:,} bytes, outside 0..{MAX_OCI_BLOB_BYTES:,} "
                            f"(docs/limits.md); the image is malformed.")
        return Descriptor(mt, digest, size)

    def verify_blob(self, d: Descriptor, what: str) -> None:
        """Stream a blob once: its size and its SHA-256 must be the descriptor's."""
        opened = self.store.open(_blob_path(d.digest))
        if opened is None:
            raise self.fail(f"the {what} blob {d.digest} is missing; the image is incomplete, export it again.")
        f, size = opened
        with f:
            if size != d.size:
                raise self.fail(f"the {what} blob {d.digest} has {size:,} bytes where its descriptor says "
                                f"{d.size:,}; the image is damaged, export it again.")
            reader = _HashingReader(f, size)
            reader.drain()
        if reader.digest() != d.digest:
            raise self.fail(f"the {what} blob {d.digest} does not match its digest; the image is damaged, "
                            f"export it again.")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _strings(r: _Reader, cfg: dict, key: str) -> tuple[str, ...]:
    v = cfg.get(key)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise r.fail(f"the image config's {key} is not a list of strings; the image is malformed.")
    return tuple(v)


def _string(r: _Reader, cfg: dict, key: str) -> str:
    v = cfg.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise r.fail(f"the image config's {key} is not a string; the image is malformed.")
    return v


def _config_fields(r: _Reader, doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise r.fail("its image config is not a JSON object; the image is malformed.")
    cfg = doc.get("config") or {}
    if not isinstance(cfg, dict):
        raise r.fail("the image config's config is not a JSON object; the image is malformed.")
    if doc.get("os", "linux") != "linux" or doc.get("architecture", "amd64") != "amd64":
        raise r.fail(f"the image is for {doc.get('os')!r}/{doc.get('architecture')!r}, not linux/amd64; "
                     f"give a linux/amd64 image.")
    return {"entrypoint": _strings(r, cfg, "Entrypoint"), "cmd": _strings(r, cfg, "Cmd"),
            "env": _strings(r, cfg, "Env"), "working_dir": _string(r, cfg, "WorkingDir"),
            "user": _string(r, cfg, "User")}


def _pick(r: _Reader, index: Any, what: str, depth: int, ref: str | None = None) -> Descriptor:
    """The linux/amd64 manifest of an index (tagged ``ref`` when given), through nested indexes."""
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise r.fail(f"its {what} has no manifests list; the image is malformed.")
    entries = index["manifests"]
    if len(entries) > MAX_OCI_INDEX_ENTRIES:
        raise r.fail(f"its {what} lists {len(entries):,} manifests, more than the {MAX_OCI_INDEX_ENTRIES:,} of "
                     f"any image (docs/limits.md); it is not an image.")
    found: list[Descriptor] = []
    for e in entries:
        d = r.descriptor(e, "manifest")
        if ref is not None:
            notes = e.get("annotations")
            if not isinstance(notes, dict) or notes.get(REF_NAME) != ref:
                continue
        plat = e.get("platform")
        if plat is not None and not isinstance(plat, dict):
            raise r.fail(f"a platform in its {what} is not a JSON object; the image is malformed.")
        if plat is not None and (plat.get("os"), plat.get("architecture")) != ("linux", "amd64"):
            continue
        if d.media_type in MANIFEST_TYPES or d.media_type in INDEX_TYPES:
            found.append(d)
    if not found:
        tagged = f" tagged {ref!r}" if ref is not None else ""
        raise r.fail(f"its {what} lists no linux/amd64 image manifest{tagged}; give an image built for "
                     f"linux/amd64{' and check the tag' if tagged else ''}.")
    if len(found) > 1:
        raise r.fail(f"its {what} lists {len(found)} linux/amd64 manifests; name the one to use by its tag "
                     f"(its {REF_NAME} annotation).")
    d = found[0]
    if d.media_type in INDEX_TYPES:
        if depth >= MAX_OCI_INDEX_DEPTH:
            raise r.fail(f"its indexes nest more than {MAX_OCI_INDEX_DEPTH} deep (docs/limits.md); the image "
                         f"is malformed.")
        return _pick(r, r.json_file(_blob_path(d.digest), "index", expect=d), f"index {d.digest}", depth + 1)
    return d


def _read_oci(r: _Reader, ref: str | None) -> OciImage:
    layout = r.json_file("oci-layout", "oci-layout file")
    if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
        raise r.fail("its oci-layout file has no imageLayoutVersion; it is not an OCI image layout.")
    md = _pick(r, r.json_file("index.json", "index"), "index.json", 1, ref)
    manifest = r.json_file(_blob_path(md.digest), "manifest", expect=md)
    if not isinstance(manifest, dict):
        raise r.fail(f"its manifest {md.digest} is not a JSON object; the image is malformed.")
    config = r.descriptor(manifest.get("config"), "config")
    if config.media_type not in CONFIG_TYPES:
        raise r.fail(f"its config has the media type {config.media_type[:80]!r}, not an image config; give "
                     f"a container image.")
    raw_layers = manifest.get("layers")
    if not isinstance(raw_layers, list):
        raise r.fail(f"its manifest {md.digest} has no layers list; the image is malformed.")
    if len(raw_layers) > MAX_OCI_LAYERS:
        raise r.fail(f"its manifest has {len(raw_layers):,} layers, more than the {MAX_OCI_LAYERS} of any "
                     f"image (docs/limits.md); refusing it.")
    layers = tuple(r.descriptor(x, "layer") for x in raw_layers)
    for d in layers:
        if d.media_type not in LAYER_TYPES:
            raise r.fail(f"layer {d.digest} has the unknown media type {d.media_type[:80]!r}; only tar, "
                         f"tar+gzip and tar+zstd layers (OCI or Docker) are read.")
    fields = _config_fields(r, r.json_file(_blob_path(config.digest), "config", expect=config))
    for d in layers:
        r.verify_blob(d, "layer")
    return OciImage(source=r.src, manifest_digest=md.digest, config=config, layers=layers, manifest_size=md.size,
                    **fields)


def _read_docker(r: _Reader) -> OciImage:
    doc = r.json_file("manifest.json", "manifest.json")
    if not isinstance(doc, list) or not doc or not all(isinstance(x, dict) for x in doc):
        raise r.fail("its manifest.json is not a list of image entries; it is not a `docker save` archive.")
    if len(doc) != 1:
        raise r.fail(f"its manifest.json lists {len(doc)} images; save one image per archive.")
    entry = doc[0]
    cfg_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(cfg_name, str) or not isinstance(layer_names, list) or \
            not all(isinstance(x, str) for x in layer_names):
        raise r.fail("its manifest.json lacks a Config name or a Layers list; it is not a `docker save` archive.")
    if len(layer_names) > MAX_OCI_LAYERS:
        raise r.fail(f"its manifest.json lists {len(layer_names):,} layers, more than the {MAX_OCI_LAYERS} of "
                     f"any image (docs/limits.md); refusing it.")
    hexpart = cfg_name.rsplit("/", 1)[-1].removesuffix(".json")
    opened = r.store.open(cfg_name)
    if not re.fullmatch(r"[0-9a-f]{64}", hexpart) or opened is None:
        raise r.fail(f"its config {cfg_name[:80]!r} is missing or not named by its sha256; the archive is "
                     f"damaged, save the image again.")
    opened[0].close()
    config = Descriptor(CONFIG_TYPES[1], "sha256:" + hexpart, opened[1])
    cfg = r.json_file(cfg_name, "config", expect=config)
    fields = _config_fields(r, cfg)
    rootfs = cfg.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names) or \
            not all(isinstance(x, str) and _DIGEST.fullmatch(x) for x in diff_ids):
        raise r.fail("the image config's rootfs.diff_ids do not pin each layer of manifest.json with a sha256; "
                     "the archive is damaged, save the image again.")
    layers = []
    for name, digest in zip(layer_names, diff_ids, strict=True):
        opened = r.store.open(name)
        if opened is None:
            raise r.fail(f"the layer blob {digest} ({name[:80]}) is missing; the archive is incomplete, save "
                         f"the image again.")
        opened[0].close()
        layers.append(Descriptor(DOCKER_SAVE_LAYER, digest, opened[1]))
    image = OciImage(source=r.src, manifest_digest=None, config=config, layers=tuple(layers), **fields)
    for name, d in zip(layer_names, image.layers, strict=True):
        _verify_named(r, name, d)
    return image


def _verify_named(r: _Reader, name: str, d: Descriptor) -> None:
    opened = r.store.open(name)
    assert opened is not None  # listed above
    f, size = opened
    with f:
        reader = _HashingReader(f, size)
        reader.drain()
    if reader.digest() != d.digest:
        raise r.fail(f"the layer blob {d.digest} does not match its digest; the image is damaged, export it "
                     f"again.")


def _layer_names(store: _Store, image: OciImage) -> list[str]:
    """Where each layer is: its blob, or for a ``docker save`` archive the name manifest.json gives."""
    if image.manifest_digest is not None:
        return [_blob_path(d.digest) for d in image.layers]
    doc = _Reader(store).json_file("manifest.json", "manifest.json")
    names = doc[0].get("Layers") if isinstance(doc, list) and doc and isinstance(doc[0], dict) else None
    if not isinstance(names, list) or len(names) != len(image.layers) or not all(isinstance(x, str) for x in names):
        raise SourceError(f"{image.source}: its manifest.json changed since it was read; make sure nothing "
                          f"writes to the image while it is read.", source=image.source)
    return names


def read_oci_image(path: os.PathLike | str, *, ref: str | None = None) -> OciImage:
    """The linux/amd64 image of an OCI layout directory, OCI archive or ``docker save`` archive.

    ``ref`` picks, in an OCI layout's ``index.json``, the manifest whose
    ``org.opencontainers.image.ref.name`` annotation is ``ref`` (``umoci``'s and skopeo's tag);
    without it the index must list one linux/amd64 image.
    Every blob it names is checked (size, then SHA-256) before anything is taken from it;
    bad input raises :class:`~builder.errors.SourceError` with one sentence naming ``path``.
    """
    store = _Store(Path(path))
    try:
        r = _Reader(store)
        if store.has("index.json") or store.has("oci-layout"):
            return _read_oci(r, ref)
        if store.has("manifest.json"):
            return _read_docker(r)
        raise r.fail("has neither index.json (an OCI image layout) nor manifest.json (a `docker save` archive); "
                     "give an image layout directory or an image archive.")
    finally:
        store.close()


def apply_oci_layers(image: OciImage, dest: os.PathLike | str, *, epoch: int) -> None:
    """Apply ``image``'s layers in order into ``dest`` (which must not exist), by the rule of
    :mod:`builder.rootfs_tree` with absolute symlinks kept and every mtime set to ``epoch``.

    Each layer is hashed again while it is read and must still match its digest.  On any
    error ``dest`` is removed: no partial tree is left.
    """
    dest = Path(dest)
    if os.path.lexists(dest):
        raise SourceError(f"Cannot apply the layers of {image.source} into {dest}: it exists; pass a new "
                          f"directory.", source=image.source)
    store = _Store(Path(image.source))
    dest.mkdir(parents=True)
    try:
        writer = TreeWriter(dest, owner=image.source, unit="image", keep_absolute_links=True, epoch=epoch,
                            max_members=MAX_TREE_ENTRIES, max_bytes=MAX_ROOTFS_UNPACKED_BYTES,
                            limit_why="any root filesystem this tool builds")
        names = _layer_names(store, image)
        for n, (d, name) in enumerate(zip(image.layers, names, strict=True), 1):
            opened = store.open(name)
            if opened is None:
                raise SourceError(f"{image.source}: the layer blob {d.digest} is missing; the image is "
                                  f"incomplete, export it again.", source=image.source)
            f, size = opened
            where = f"{image.source}: layer {n} ({d.digest})"
            with f:
                reader = _HashingReader(f, size)
                with open_tar_stream(reader, LAYER_TYPES[d.media_type], owner=image.source,
                                     member=f"layer {n} ({d.digest})",
                                     remedy="it is not a tar of its media type, export the image again",
                                     tarinfo=_ImageTarInfo) as tf:
                    writer.apply(tf, where=where)
                reader.drain()
            if reader.digest() != d.digest or size != d.size:
                raise SourceError(f"{where} changed since it was verified; make sure nothing writes to the "
                                  f"image while it is read.", source=image.source)
        writer.finish()
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        store.close()
