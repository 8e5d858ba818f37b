"""Inputs named by a sha256-pinned URL or a local file.

:func:`fetch_url` serves ``https://``, ``http://`` and ``file://`` URLs through the
content cache (offline once fetched); :func:`local_file` checks a file of the recipe
against its pin.  Both verify the bytes against the pinned sha256.

This module needs the cache (:mod:`.cache`) and nothing else of :mod:`builder.sources`: no
.deb parsing and no apt; never the command line (``blindbox.cli``).  Nothing here prints
or exits.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import BinaryIO

from .. import progress
from ..errors import InputDigestMismatch, OfflineMiss, SourceError, SourceGone
from .cache import _CHUNK, ContentCache, _check_sha256, sha256_file


def local_file(path: os.PathLike | str, sha256: str | None) -> Path:
    """``path`` after checking it is a readable file and, if pinned, that its sha256 matches."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"The input file {p} does not exist or is not a regular file; check the path "
                          f"(relative paths are resolved against the recipe's directory).",
                          source=str(p))
    if sha256 is not None:
        expected = _check_sha256(sha256, str(p))
        actual = sha256_file(p)
        if actual != expected:
            raise InputDigestMismatch(
                f"The input file {p} has sha256 {actual}, but {expected} is pinned; if the change is "
                f"intended, update the pin (this changes the measurement), otherwise restore the file.",
                source=str(p), expected=expected, actual=actual, path=str(p))
    return p


def fetch_url(url: str, sha256: str, *, cache: ContentCache | None = None,
              offline: bool = False, timeout: float = 60.0) -> Path:
    """The cached file for a sha256-pinned ``https://``, ``http://`` or ``file://`` URL.

    Served from the cache without network when present (also offline).  ``file://``
    URLs are read even offline.  The bytes must match ``sha256``.
    """
    expected = _check_sha256(sha256, url)
    cache = cache if cache is not None else ContentCache()
    hit = cache.path(expected)
    if hit is not None:
        return hit
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SourceError(f"The URL {url} names a remote host in a file:// URL; use file:///path "
                              f"for a local file.", source=url)
        local = Path(urllib.parse.unquote(parsed.path))
        if not local.is_file():
            raise SourceError(f"The URL {url} points at {local}, which does not exist or is not a "
                              f"regular file; check the URL.", source=url)
        return _put_checked(cache, local, expected, url, move=False)
    if scheme not in ("http", "https"):
        raise SourceError(f"The URL {url} has the unsupported scheme {scheme or '(none)'!r}; use "
                          f"https://, http:// or file://.", source=url)
    if offline:
        raise OfflineMiss(f"{url} (sha256 {expected}) is not in the cache at {cache.root} and offline "
                          f"mode forbids downloading it; run once without --offline to fetch it.",
                          source=url)
    return download_checked(cache, url, expected, timeout)


def download_checked(cache: ContentCache, url: str, expected: str, timeout: float) -> Path:
    """Download ``url`` into ``cache`` unless another process has meanwhile, verified against ``expected``.

    One download per digest at a time (the cache's lock); other bytes raise
    :class:`~builder.errors.InputDigestMismatch` and nothing is cached.
    """
    with cache.lock(f"fetch-{expected}"):
        hit = cache.path(expected)
        if hit is not None:
            return hit
        with cache.tempdir("download") as tmp:
            dest = tmp / "download"
            _http_get(url, dest, timeout)
            return _put_checked(cache, dest, expected, url, move=True)


def _put_checked(cache: ContentCache, src: Path, expected: str, url: str, *, move: bool) -> Path:
    try:
        return cache.put_file(src, expected, move=move)
    except InputDigestMismatch as e:
        raise InputDigestMismatch(
            f"{url} delivered bytes with sha256 {e.actual}, but {expected} is pinned; nothing was "
            f"cached. If the publisher changed the file on purpose, review it and update the pin "
            f"(this changes the measurement).",
            source=url, expected=expected, actual=e.actual) from None


def _copy_reporting(resp: BinaryIO, out: BinaryIO, name: str, length: str | None) -> None:
    """Copy a response body to ``out``, telling the current progress receiver how far it got."""
    report = progress.current()
    total = int(length) if length is not None and length.strip().isdigit() else None
    done = 0
    report.download(name, 0, total)
    while chunk := resp.read(_CHUNK // 16):
        out.write(chunk)
        done += len(chunk)
        report.download(name, done, total)
    report.downloaded(name, done)


def _http_get(url: str, dest: Path, timeout: float) -> None:
    # Imported on the first download, not with the module: urllib.request loads http.client,
    # email and ssl, about 10 ms, a twentieth of a no-op rebuild that downloads nothing.
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, headers={"User-Agent": "blindbox-guest"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
            _copy_reporting(resp, out, url, resp.headers.get("Content-Length"))
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):
            raise SourceGone(f"{url} answered HTTP {e.code} (the file is no longer served there) and it is "
                             f"not in the cache; find where the publisher moved it and update the URL, "
                             f"or pin a new file (this changes the measurement).", source=url) from None
        raise SourceError(f"{url} answered HTTP {e.code} {e.reason}; check the URL or try again later.",
                          source=url) from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise SourceError(f"Could not download {url} ({reason}); check the URL and the network, or "
                          f"put the file in the cache from another machine.", source=url) from None
