"""A snapshot archive of Debian as the second origin of pinned .deb files.

A lock may name a snapshot archive laid out like snapshot.debian.org: a base URL and a
timestamp, under which every archive state is served as
``<base>/archive/<archive>/<YYYYMMDDTHHMMSSZ>/<pool path>`` (``<archive>`` is ``debian``,
or ``debian-security`` for the security archive's ``pool/updates/...`` files).  When the
Debian archive no longer serves a pinned package, the .deb is fetched from there by the
pool path the lock records and verified against the lock's sha256, which is the only
trust anchor: a snapshot's Release files are past their Valid-Until and their signing
keys may have left the keyring, so none is fetched or checked for a pinned input.

This module needs the cache (:mod:`.cache`) and the URL fetcher (:mod:`.remote`); it does
not import the apt side (:mod:`.debian`), which calls it through
``DebianArchive.fallback``.  Nothing here prints or exits.
"""

from __future__ import annotations

import datetime as _dt
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import InputDigestMismatch, SourceError
from .cache import ContentCache, _check_sha256
from .remote import download_checked

#: snapshot.debian.org's timestamp form, always UTC
_TIMESTAMP = re.compile(r"\d{8}T\d{6}Z")
_POOL_FILE = re.compile(r"pool/[A-Za-z0-9._+~:%/-]+\.deb")
#: the real snapshot archive of Debian (documentation and examples; the code takes any base)
DEBIAN_SNAPSHOT = "https://snapshot.debian.org"


class _Pinned(Protocol):
    @property
    def filename(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    @property
    def source(self) -> str: ...


@dataclass(frozen=True)
class Snapshot:
    """A snapshot archive (``base``) at one moment (``timestamp``, ``YYYYMMDDTHHMMSSZ``)."""

    base: str
    timestamp: str

    def __post_init__(self) -> None:
        base = self.base.rstrip("/") if isinstance(self.base, str) else self.base
        object.__setattr__(self, "base", base)
        check_base(base)
        check_timestamp(self.timestamp)

    def __str__(self) -> str:
        return f"{self.base}@{self.timestamp}"

    def to_dict(self) -> dict:
        return {"base": self.base, "timestamp": self.timestamp}

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """``URL@TIMESTAMP``, as ``blindbox lock --snapshot`` takes it."""
        base, sep, stamp = str(text).rpartition("@")
        if not sep or not base:
            raise SourceError(f"--snapshot {text!r} is not of the form URL@TIMESTAMP; give e.g. "
                              f"{DEBIAN_SNAPSHOT}@20261030T000000Z.", source=str(text))
        return cls(base, stamp)

    @staticmethod
    def archive_of(filename: str) -> str:
        """The archive a pool path belongs to: the security archive keeps its files under ``pool/updates/``."""
        return "debian-security" if filename.startswith("pool/updates/") else "debian"

    def url(self, filename: str) -> str:
        """Where the snapshot serves the pool file ``filename``."""
        if not isinstance(filename, str) or not _POOL_FILE.fullmatch(filename) or ".." in filename.split("/"):
            raise SourceError(f"{filename!r} is not a pool path of a .deb file, so it cannot be looked up in "
                              f"the snapshot archive {self}; run `blindbox lock` again.", source=str(filename))
        return f"{self.base}/archive/{self.archive_of(filename)}/{self.timestamp}/{filename}"


def check_base(base: object) -> str:
    if not isinstance(base, str):
        raise SourceError(f"The snapshot archive's base URL {base!r} is not a string; give an https:// or "
                          f"http:// URL such as {DEBIAN_SNAPSHOT}.")
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise SourceError(f"The snapshot archive's base URL {base!r} is not an https:// or http:// URL without "
                          f"query; give one such as {DEBIAN_SNAPSHOT}.", source=base)
    return base


def check_timestamp(stamp: object) -> str:
    m = _TIMESTAMP.fullmatch(stamp) if isinstance(stamp, str) else None
    try:
        if m is None:
            raise ValueError
        _parse_timestamp(m.group(0))
    except ValueError:
        raise SourceError(f"The snapshot timestamp {stamp!r} is not of the form YYYYMMDDTHHMMSSZ (UTC), e.g. "
                          f"20261030T000000Z.", source=str(stamp)) from None
    assert isinstance(stamp, str)
    return stamp


def _parse_timestamp(stamp: str) -> _dt.datetime:
    """A ``\\d{8}T\\d{6}Z`` string as a time; ValueError where ``datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")``
    raises it.  With ASCII digits each field must take its full width, so reading them by position is the
    same, without the milliseconds the first strptime costs (it imports _strptime and builds locale tables)."""
    if not stamp.isascii():   # other Unicode digits: strptime's own rules
        return _dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")
    return _dt.datetime(int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[9:11]), int(stamp[11:13]),
                        int(stamp[13:15]))


def fetch_deb(snapshot: Snapshot, pkg: _Pinned, cache: ContentCache, *, timeout: float = 120.0) -> Path:
    """The .deb of ``pkg`` from ``snapshot`` into ``cache``, verified against ``pkg.sha256``.

    A cached copy is returned as is.  HTTP 404/410 raises :class:`~builder.errors.SourceGone`,
    other failures :class:`~builder.errors.SourceError`, other bytes
    :class:`~builder.errors.InputDigestMismatch` (nothing is cached then).
    """
    expected = _check_sha256(pkg.sha256, pkg.source)
    hit = cache.path(expected)
    if hit is not None:
        return hit
    url = snapshot.url(pkg.filename)
    try:
        return download_checked(cache, url, expected, timeout)
    except InputDigestMismatch as e:
        raise InputDigestMismatch(
            f"The snapshot archive served {pkg.filename} with sha256 {e.actual}, but the lock pins "
            f"{expected} ({url}); nothing was cached. The snapshot is not the archive the lock was made "
            f"from, or it is damaged: check the lock's snapshot base and timestamp.",
            source=pkg.source, expected=expected, actual=e.actual, path=url) from None


def fallback(snapshot: Snapshot, cache: ContentCache) -> Callable[[_Pinned], Path]:
    """A ``DebianArchive.fallback``: fetch a package the archive no longer serves from ``snapshot``."""
    return lambda pkg: fetch_deb(snapshot, pkg, cache)
