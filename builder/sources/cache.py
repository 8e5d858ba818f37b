"""The content-addressed cache every build input lands in, and the sha256 checks around it.

:class:`ContentCache` stores files as ``<root>/sha256/<hex>``: writes go to ``<root>/tmp``
and are renamed into place under an inter-process ``flock`` (the atomic commit), entries are
re-hashed whenever they are handed out, and a damaged entry is moved to
``<root>/quarantine``.  Unpacked trees are committed the same way under ``<root>/unpacked``.

Files are hashed by :func:`measure.inputs.file_digest`, the one file streamer of the
project.  This module knows nothing about what is stored: it must not depend on the other
modules of :mod:`builder.sources` (no .deb parsing, no network, no apt), nor on the command
line (``blindbox.cli``).  Nothing here prints or exits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from blindbox.files import cache_root  # the one definition of where blindbox caches things
from measure.inputs import file_digest

from ..errors import InputDigestMismatch, SourceError

_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- hashing

def sha256_file(path: os.PathLike | str, what: str = "input") -> str:
    """Hex sha256 of a file's bytes, streamed by :func:`measure.inputs.file_digest` (the one
    file streamer); a file that cannot be read is an :class:`~measure.errors.InputError`
    naming it as the ``what`` file."""
    return file_digest(os.fspath(path), what).hex()


def _check_sha256(value: str, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value.lower()):
        raise SourceError(f"The sha256 given for {what} ({value!r}) is not 64 hexadecimal digits; "
                          f"copy the full digest from the lock file or from `sha256sum`.",
                          source=what)
    return value.lower()


# --------------------------------------------------------------------------- cache

@contextlib.contextmanager
def _flock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold ``flock`` on ``path`` (created if needed) for the ``with`` block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _rename_same_fs(src: Path, dest: Path) -> bool:
    """Rename ``src`` over ``dest``; False (nothing done) when they are on different file systems."""
    try:
        os.replace(src, dest)
        return True
    except OSError as e:
        if e.errno == errno.EXDEV:
            return False
        raise


def _copy_synced(src: Path, dest: Path) -> None:
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)
        fout.flush()
        os.fsync(fout.fileno())


class ContentCache:
    """A content-addressed file store: ``<root>/sha256/<hex>``.

    Writes go to ``<root>/tmp`` first and are renamed into place, so a reader never sees
    a partial file.  ``flock`` locks under ``<root>/locks`` serialise writers of the same
    entry across processes (pytest-xdist workers, parallel builds), and callers that
    fetch use :meth:`lock` so that only one of them downloads.  Entries are verified
    against their name whenever :meth:`path` hands them out; a corrupt entry is moved to
    ``<root>/quarantine`` and reported, and the next fetch replaces it.
    """

    def __init__(self, root: os.PathLike | str | None = None):
        self.root = Path(root) if root is not None else cache_root()

    def __repr__(self) -> str:
        return f"ContentCache({str(self.root)!r})"

    # -- layout
    def _dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def entry(self, sha256: str) -> Path:
        """Where the entry for ``sha256`` lives (whether or not it exists)."""
        return self.root / "sha256" / _check_sha256(sha256, "a cache entry")

    # -- locking
    def lock(self, name: str, *, shared: bool = False) -> contextlib.AbstractContextManager:
        """Hold an inter-process ``flock`` named ``name`` (not reentrant)."""
        safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
        return _flock(self._dir("locks") / f"{safe}.lock", shared=shared)

    @contextlib.contextmanager
    def tempdir(self, prefix: str = "work") -> Iterator[Path]:
        """A private scratch directory on the cache's file system, removed afterwards."""
        d = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self._dir("tmp")))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    # -- entries
    def path(self, sha256: str, *, verify: bool = True) -> Path | None:
        """The cached file with this sha256, or None.

        With ``verify`` (the default) the file is hashed first; if it does not match,
        it is moved to ``<root>/quarantine`` and :class:`InputDigestMismatch` is raised
        (fetching again then stores a fresh copy).
        """
        entry = self.entry(sha256)
        if not entry.is_file():
            return None
        if not verify:
            return entry
        if sha256_file(entry, "cached") == entry.name:
            return entry
        with self.lock(f"entry-{entry.name}"):
            # again: a writer may have just replaced it, or a reader quarantined it (both hold this lock)
            if not entry.is_file():
                return None
            actual = sha256_file(entry, "cached")
            if actual == entry.name:
                return entry
            moved = self._quarantine(entry)
        raise InputDigestMismatch(
            f"The cached file {entry} should have sha256 {entry.name} but has {actual} (the cache "
            f"was damaged or modified); it was moved to {moved or 'quarantine'}, and fetching the "
            f"input again replaces it.",
            expected=entry.name, actual=actual, path=str(entry))

    def _quarantine(self, entry: Path) -> Path | None:
        target = self._dir("quarantine") / f"{entry.name}.{time.time_ns()}"
        try:
            os.replace(entry, target)
        except FileNotFoundError:
            return None  # another process got there first
        return target

    def put_file(self, src: os.PathLike | str, sha256: str | None = None, *,
                 move: bool = False) -> Path:
        """Store a copy of ``src`` and return the entry.

        When ``sha256`` is given, the bytes must match it or :class:`InputDigestMismatch`
        is raised and nothing is stored.  With ``move`` the file is renamed into the
        cache when it can be (same file system) and ``src`` is consumed either way,
        also when it does not match.
        """
        src = Path(src)
        expected = _check_sha256(sha256, str(src)) if sha256 is not None else None
        fd, tmp_name = tempfile.mkstemp(prefix="put-", dir=self._dir("tmp"))
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if not (move and _rename_same_fs(src, tmp)):
                _copy_synced(src, tmp)
                if move:
                    src.unlink()
            actual = sha256_file(tmp)
            if expected is not None and actual != expected:
                raise InputDigestMismatch(
                    f"{src} has sha256 {actual}, but {expected} was expected; it was not stored. "
                    f"If the new content is intended, update the pinned sha256 (this changes the "
                    f"measurement); otherwise fetch it again from a trusted origin.",
                    source=str(src), expected=expected, actual=actual, path=str(src))
            return self._commit(tmp, actual)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes) -> Path:
        """Store ``data``; return its entry."""
        fd, tmp_name = tempfile.mkstemp(prefix="put-", dir=self._dir("tmp"))
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return self._commit(tmp, hashlib.sha256(data).hexdigest())
        finally:
            tmp.unlink(missing_ok=True)

    def _commit(self, tmp: Path, sha256: str) -> Path:
        entry = self._dir("sha256") / sha256
        os.chmod(tmp, 0o444)
        with self.lock(f"entry-{sha256}"):
            if entry.is_file():
                if sha256_file(entry, "cached") == sha256:
                    return entry
                self._quarantine(entry)
            os.replace(tmp, entry)
        with contextlib.suppress(OSError):
            dfd = os.open(entry.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return entry

    # -- unpacked trees
    def tree(self, key: str, build: Callable[[Path], None]) -> Path:
        """A directory ``<root>/unpacked/<key>``, created once by ``build(dest)``.

        ``build`` receives a path that does not exist yet and must create it; the
        result is renamed into place only when ``build`` returns, so a tree that exists
        is complete.  Treat it as read-only.
        """
        final = self.root / "unpacked" / key
        if final.is_dir():
            return final
        with self.lock(f"tree-{key}"):
            if final.is_dir():
                return final
            final.parent.mkdir(parents=True, exist_ok=True)
            with self.tempdir("tree") as work:
                build(work / "t")
                os.replace(work / "t", final)
        return final
