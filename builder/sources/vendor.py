"""Vendored inputs: every pinned input of a lock as plain files in one directory, with an index.

:func:`vendor` writes the .deb files, URL inputs and local files a lock pins into a
directory, fetched through the content cache (and so verified against the lock), plus
``inputs.json``: for each input its lock name, kind, origin, file name in the directory,
size and sha256, and the lock's own sha256 and the recipe's name.  A publisher ships that
directory next to the bundle; :func:`seed` later checks each file against the lock's
sha256 (never the index's, which only says where to look) and puts it into a content
cache, so that an offline build with an empty cache finds everything it needs there.

The directory is written beside its final place and renamed into it, so it is complete
or absent.  An existing directory is replaced only when it is empty or a vendor directory
of the same lock.

The root filesystem's OCI images and directory trees (lock kinds ``oci`` and ``tree``) are
read from the recipe's directory, like the recipe itself, and so are the ID block's keys
(``id_key``, ``author_key``: private keys have no place in a directory that is published);
the index lists them without a file.  Nothing here prints or exits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.errors import BuildError, InputDigestMismatch
from builder.limits import MAX_LOCK_BYTES
from builder.lock import ID_KEY_INPUTS, Lock, LockedInput
from builder.recipe import Recipe, local_path
from measure.inputs import is_fifo_or_socket, read_bounded

from .cache import ContentCache, sha256_file
from .debian import DebianArchive, DebianPackage

#: the index file of a vendor directory
INDEX = "inputs.json"
FORMAT = "blindbox-vendored-inputs"
FORMAT_VERSION = 1
#: an index is smaller than the lock it lists (docs/limits.md)
MAX_INDEX_BYTES = MAX_LOCK_BYTES
_SAFE = re.compile(r"[^A-Za-z0-9._+~-]")
#: lock kinds whose bytes are vendored (oci and tree are read from the recipe's directory)
VENDORED_KINDS = ("debian", "url", "file")


class VendorError(BuildError):
    """A vendor directory cannot be written, or does not hold what a build needs."""


@dataclass(frozen=True)
class VendorResult:
    out: Path
    index: dict
    replaced: bool          #: a previous vendor directory of the same lock was replaced


def _file_name(entry: LockedInput) -> str:
    """The entry's file name inside the vendor directory: ``<kind>/<readable name>``."""
    if entry.kind == "debian":
        assert entry.debian is not None  # LockedInput.from_dict requires it
        base = PurePosixPath(entry.debian["filename"]).name
    elif entry.kind == "url":
        assert entry.url is not None
        base = PurePosixPath(urllib.parse.urlsplit(entry.url).path).name or "download"
    else:
        assert entry.path is not None
        base = PurePosixPath(entry.path).name or "file"
    base = _SAFE.sub("_", base).lstrip(".") or "input"
    return f"{entry.kind}/{base}"


def read_index(directory: Path) -> dict:
    """``directory``'s ``inputs.json``, checked for the form :func:`vendor` writes."""
    path = directory / INDEX
    fix = "give a directory written by `blindbox vendor`"
    if is_fifo_or_socket(path):     # opening a FIFO nobody writes to would wait for ever
        raise VendorError(f"{path} is a FIFO or socket, not an index file; {fix}.")
    try:
        data = read_bounded(path, "vendored inputs index", MAX_INDEX_BYTES)
    except FileNotFoundError:
        raise VendorError(f"{directory} has no {INDEX}, so it is not a directory of vendored inputs; {fix}.") \
            from None
    except OSError as e:
        raise VendorError(f"Cannot read {path} ({e.strerror or e}); check its permissions.") from None
    try:
        doc = json.loads(data.decode("utf-8"))
        ok = (isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("version") == FORMAT_VERSION
              and isinstance(doc.get("inputs"), list) and all(isinstance(i, dict) for i in doc["inputs"]))
    except (UnicodeDecodeError, ValueError, RecursionError):
        ok = False
    if not ok:
        raise VendorError(f"{path} is not an index of vendored inputs (format {FORMAT} version {FORMAT_VERSION}); "
                          f"{fix}.")
    return doc


def _index_entry(lock_entry: LockedInput, file: str | None) -> dict:
    return {"name": lock_entry.name, "kind": lock_entry.kind, "origin": lock_entry.origin, "file": file,
            "size": lock_entry.size, "sha256": lock_entry.sha256}


def vendor(recipe: Recipe, lock: Lock, out: os.PathLike | str, *, archive: DebianArchive,
           fetch_url: Callable[[str, str], Path], cache: ContentCache) -> VendorResult:
    """Write every pinned input of ``lock`` (the lock of ``recipe``) into ``out`` with its index."""
    out = Path(os.path.abspath(out))
    assert lock.sha256 is not None  # read_lock records it
    replaced = _check_target(out, lock)
    files: dict[str, str] = {}          # vendored file name -> sha256
    entries: list[dict] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for entry in lock.inputs:
            if not _vendored(entry):
                entries.append(_index_entry(entry, None))
                continue
            src = _fetch(recipe, entry, archive, fetch_url)
            name = _file_name(entry)
            if files.get(name, entry.sha256) != entry.sha256:     # two inputs with one file name
                name = f"{entry.kind}/{entry.sha256[:16]}-{name.split('/', 1)[1]}"
            if name not in files:
                dest = tmp / name
                dest.parent.mkdir(exist_ok=True)
                shutil.copyfile(src, dest)
                if sha256_file(dest, "vendored") != entry.sha256:   # the copy, not only the cache entry
                    raise InputDigestMismatch(f"The copy of input {entry.name!r} in {dest} does not have the "
                                              f"pinned sha256 {entry.sha256}; the disk may be failing, so try "
                                              f"again.", source=entry.origin, expected=entry.sha256,
                                              path=str(dest))
                files[name] = entry.sha256
            entries.append(_index_entry(entry, name))
        index = {"format": FORMAT, "version": FORMAT_VERSION, "recipe": recipe.name,
                 "lock": os.path.basename(lock.path or recipe.lock_path), "lock_sha256": lock.sha256}
        if lock.snapshot is not None:
            index["snapshot"] = lock.snapshot.to_dict()
        index["inputs"] = entries
        (tmp / INDEX).write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _sync_tree(tmp)
        os.chmod(tmp, 0o755)
        _install(tmp, out, replaced)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return VendorResult(out=out, index=index, replaced=replaced)


def _fetch(recipe: Recipe, entry: LockedInput, archive: DebianArchive, fetch_url) -> Path:
    if entry.kind == "debian":
        assert entry.debian is not None
        return archive.download(DebianPackage.from_dict(entry.debian))
    if entry.kind == "url":
        assert entry.url is not None
        return Path(fetch_url(entry.url, entry.sha256))
    spec = next(s for s in recipe.inputs() if s.name == entry.name)   # check_lock matched them
    path = local_path(recipe, spec)
    from .remote import local_file

    return local_file(path, entry.sha256)


def _check_target(out: Path, lock: Lock) -> bool:
    """True when ``out`` is a previous vendor directory of ``lock`` (to be replaced); False when absent or
    empty; otherwise refused."""
    if not os.path.lexists(out):
        return False
    if out.is_symlink() or not out.is_dir():
        raise VendorError(f"--out {out} exists and is not a directory; choose another --out or remove it.")
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return False
    try:
        doc = read_index(out)
    except VendorError:
        doc = None
    if doc is not None and doc.get("lock_sha256") == lock.sha256:
        return True
    what = (f"the vendored inputs of another lock (sha256 {doc.get('lock_sha256')}, recipe {doc.get('recipe')!r})"
            if doc is not None else f"{len(present)} entries that blindbox did not write (e.g. {present[0]!r})")
    raise VendorError(f"--out {out} is not empty: it holds {what}; choose an empty or new directory, or remove "
                      f"it first.")


def _sync_tree(root: Path) -> None:
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            fd = os.open(os.path.join(dirpath, n), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _install(tmp: Path, out: Path, replaced: bool) -> None:
    """Rename the finished ``tmp`` into ``out`` (absent, empty, or the previous vendor directory)."""
    if not replaced:
        if out.is_dir():
            out.rmdir()                      # empty: checked by _check_target
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def seed(lock: Lock, directory: os.PathLike | str, cache: ContentCache) -> dict[str, Path]:
    """Check every vendored input ``lock`` pins against the lock's sha256 and put it into ``cache``.

    Returns the verified file of each input by lock name.  A file that is missing, or whose
    bytes are not the pinned ones, raises :class:`VendorError` / :class:`InputDigestMismatch`
    naming the file and the lock entry.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise VendorError(f"--inputs {directory} is not a directory; give the directory `blindbox vendor` wrote.")
    doc = read_index(directory)
    by_name = {i.get("name"): i for i in doc["inputs"]}
    where = lock.path or "the lock file"
    out: dict[str, Path] = {}
    for entry in lock.inputs:
        if not _vendored(entry):
            continue
        label = f"input {entry.name!r} ({entry.describe()}, pinned in {where})"
        item = by_name.get(entry.name)
        rel = item.get("file") if item is not None else None
        if not isinstance(rel, str) or not _inside(rel):
            raise VendorError(f"{directory / INDEX} lists no file for {label}; vendor the inputs of this lock "
                              f"again with `blindbox vendor`.")
        path = directory / rel
        if not path.is_file():
            raise VendorError(f"{path} is missing: it should hold {label}; restore the vendored directory or "
                              f"vendor the inputs of this lock again with `blindbox vendor`.")
        actual = sha256_file(path, "vendored")
        if actual != entry.sha256:
            raise InputDigestMismatch(
                f"{path} has sha256 {actual}, but the lock pins {entry.sha256} for {label}; the vendored file "
                f"was modified or damaged, so restore it from the publisher's copy.",
                source=entry.origin, expected=entry.sha256, actual=actual, path=str(path))
        # local files are read where they are; packages and downloads go where the build looks for them
        out[entry.name] = path if entry.kind == "file" else cache.put_file(path, entry.sha256)
    return out


def _vendored(entry: LockedInput) -> bool:
    """Whether ``entry``'s bytes go into a vendor directory: never an ID block's private keys, which a
    vendor directory (shipped with the bundle) must not carry."""
    return entry.kind in VENDORED_KINDS and entry.name not in ID_KEY_INPUTS


def _inside(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel
