"""Optional fetching of VCEKs (and, when needed, their ASK/ARK chain) from AMD's KDS.

AMD's key distribution service (KDS) serves, per AMD's "Versioned Chip Endorsement Key
(VCEK) Certificate and KDS Interface Specification" (57230), relative to
``https://kdsintf.amd.com``:

* ``/vcek/v1/{product}/{hwID}?{SPLs}`` -- the DER VCEK of one chip at one TCB.  ``hwID``
  is CHIP_ID in lower-case hex: all 64 bytes on Milan and Genoa, the first 8 on Turin.
  The SPLs are REPORTED_TCB's components in decimal: ``blSPL``, ``teeSPL``, ``snpSPL``,
  ``ucodeSPL``, and on Turin also ``fmcSPL``.  We write them two-digit zero-padded with
  ``fmcSPL`` first, as AMD's own client (virtee/snpguest) does.
* ``/vcek/v1/{product}/cert_chain`` -- the ASK then the ARK, PEM.
* A VLEK is issued to one cloud provider and is not served by the KDS at all.

Nothing here is needed for verification: the ASK, ASVK and ARK of every product are
bundled and pinned (:mod:`blindbox.audit.certs`), so only the VCEK is fetched, and the
cert_chain only when the VCEK names an issuer that is neither bundled nor given.  A
fetched chain is accepted only when every certificate in it has a pinned fingerprint.

Fetched certificates are cached under ``<blindbox cache>/kds/`` (the cache root of
:func:`blindbox.files.cache_root`), one file per URL named by the URL's SHA-256, written
atomically; a cached certificate is used without network.  The KDS rate-limits its
clients: a request is made at most once per certificate and never retried here; HTTP 429
is reported with the server's Retry-After.  The base URL is ``$BLINDBOX_KDS_URL`` when set
(tests point it at a local server).

The library never prints or exits; every failure is a :class:`KdsUnavailable` (exit
status 2: the certificate cannot be obtained) or, for a served chain that is not AMD's,
a :class:`~blindbox.audit.errors.ChainInvalid` (exit status 3).

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

from .certs import (HW_ID_SIZE, PINNED, SPL_KDS_NAME, Certificate, CertificateError, amd_chains, load_certificates,
                    parse_certificate)
from .errors import ChainInvalid
from measure.errors import InputError
from blindbox.files import cache_root
from blindbox.files import OutputError, write_atomic
from .limits import MAX_CERTIFICATE_FILE_BYTES
from .report import Product, ReportV2, SigningKey, mask_chip_key, signing_key, tcb_components

AMD_KDS_URL = "https://kdsintf.amd.com"
ENV_KDS_URL = "BLINDBOX_KDS_URL"
#: A VCEK is about 1.4 KiB and the PEM chain about 4.5 KiB; anything much larger is not one.
MAX_RESPONSE = MAX_CERTIFICATE_FILE_BYTES
DEFAULT_TIMEOUT = 30.0
_SPL_ORDER = ("fmc", "boot_loader", "tee", "snp", "microcode")


class KdsUnavailable(InputError):
    """A certificate cannot be obtained from the KDS or its cache (exit status 2)."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


def base_url() -> str:
    """``$BLINDBOX_KDS_URL`` without a trailing slash, else AMD's KDS."""
    return (os.environ.get(ENV_KDS_URL) or AMD_KDS_URL).rstrip("/")


def vcek_url(report: ReportV2, product: Product, *, base: str | None = None) -> str:
    """Where the KDS serves the VCEK for ``report`` (AMD's KDS unless ``base`` is given)."""
    tcb = tcb_components(report.reported_tcb, product, what="REPORTED_TCB")
    hw_id = report.chip_id[:HW_ID_SIZE[product]].hex()
    query = "&".join(f"{SPL_KDS_NAME[c]}={tcb[c]:02d}" for c in _SPL_ORDER if c in tcb)
    return f"{(base or AMD_KDS_URL).rstrip('/')}/vcek/v1/{product.value}/{hw_id}?{query}"


def cert_chain_url(product: Product, *, base: str | None = None) -> str:
    """Where the KDS serves the ASK and ARK (PEM, in that order) of ``product``."""
    return f"{(base or AMD_KDS_URL).rstrip('/')}/vcek/v1/{product.value}/cert_chain"


@dataclass(frozen=True)
class Fetched:
    """One certificate file obtained from the KDS or from the cache."""

    what: str  # "VCEK" or "cert_chain"
    url: str
    path: Path  # the cache file
    from_cache: bool
    certificates: tuple[Certificate, ...]

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "url": self.url, "path": str(self.path), "from_cache": self.from_cache,
                "sha256": [c.fingerprint for c in self.certificates]}

    def describe(self) -> str:
        how = "from the KDS cache" if self.from_cache else "downloaded"
        return f"{self.what} {how}: {self.url} (cached at {self.path})"


def default_cache_dir() -> Path:
    return cache_root() / "kds"


class KdsClient:
    """Gets certificates by URL: from the cache, else (unless ``offline``) from the KDS."""

    def __init__(self, *, base: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 offline: bool = False, timeout: float = DEFAULT_TIMEOUT):
        self.base = (base or base_url()).rstrip("/")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.offline = offline
        self.timeout = timeout

    def cache_path(self, url: str, suffix: str) -> Path:
        return self.cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()}{suffix}"

    # -- the two documents
    def vcek(self, report: ReportV2, product: Product | None) -> Fetched:
        """The VCEK for ``report``; :class:`KdsUnavailable` when it cannot be had."""
        kind = signing_key(report)
        if kind is SigningKey.VLEK:
            raise KdsUnavailable(
                "the report is signed by a VLEK, which AMD's KDS does not serve (each VLEK is issued "
                "to one cloud provider); get it from the provider (e.g. the host's extended-report "
                "certificates) and pass it with --certs.")
        if kind is not SigningKey.VCEK:
            raise KdsUnavailable(f"the report is signed by no VCEK (SIGNING_KEY is {kind.name}), so "
                                 f"there is nothing to fetch; request a VCEK-signed report.")
        if product is None:
            raise KdsUnavailable(f"the KDS URL depends on the product, which a version {report.version} "
                                 f"report does not name; give --product (Milan, Genoa or Turin).")
        size = HW_ID_SIZE[product]
        if mask_chip_key(report) or not any(report.chip_id[:size]):
            raise KdsUnavailable(
                "the report's CHIP_ID is zero (masked by the host, MASK_CHIP_KEY), so the KDS cannot be "
                "asked for its VCEK; get the VCEK from the host and pass it with --certs.")
        url = vcek_url(report, product, base=self.base)
        return self._get("VCEK", url, ".der", self._parse_vcek)

    def cert_chain(self, product: Product) -> Fetched:
        """The ASK and ARK of ``product``; :class:`ChainInvalid` unless both are AMD's pinned ones."""
        url = cert_chain_url(product, base=self.base)
        pins = {PINNED[product]["ask"], PINNED[product]["ark"]}

        def parse(data: bytes, source: str) -> list[Certificate]:
            certs = load_certificates(data, source=source)
            for cert in certs:  # checked before anything is cached, and again on every cache read
                if cert.fingerprint not in pins:
                    raise ChainInvalid(
                        f"the certificate chain served at {url} holds {cert.subject} with SHA-256 "
                        f"{cert.fingerprint}, which is not AMD's pinned {product.value} ASK or ARK; do "
                        f"not trust that server (check {ENV_KDS_URL}), and give AMD's certificates "
                        f"with --certs.")
            return certs

        return self._get("cert_chain", url, ".pem", parse)

    # -- plumbing
    @staticmethod
    def _parse_vcek(data: bytes, source: str) -> list[Certificate]:
        cert = parse_certificate(data, source=source)
        if cert.is_ca:
            raise CertificateError(f"{source} is a CA certificate ({cert.subject}), not a VCEK.")
        return [cert]

    def _get(self, what: str, url: str, suffix: str,
             parse: Callable[[bytes, str], Sequence[Certificate]]) -> Fetched:
        path = self.cache_path(url, suffix)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_RESPONSE + 1)
        except FileNotFoundError:
            data = None
        except OSError as e:
            raise KdsUnavailable(f"cannot read the cached {what} {path}: {e.strerror or e}; check the "
                                 f"permissions of the blindbox cache.", url=url) from None
        if data is not None and len(data) > MAX_RESPONSE:
            data = None  # not a certificate: replaced by a fresh download below, or refused offline
            if self.offline:
                raise KdsUnavailable(f"the cached {what} {path} (from {url}) is larger than "
                                     f"{MAX_RESPONSE} bytes, so not a certificate; delete it and run again "
                                     f"without --offline.", url=url)
        if data is not None:
            try:
                return Fetched(what, url, path, True, tuple(parse(data, f"{path} (cached from {url})")))
            except CertificateError:
                if self.offline:
                    raise KdsUnavailable(f"the cached {what} {path} (from {url}) is not a valid "
                                         f"certificate; delete it and run again without --offline.",
                                         url=url) from None
                # A damaged cache entry is replaced by a fresh download below.
        if self.offline:
            raise KdsUnavailable(f"the {what} for this report is not in the KDS cache ({path}, for {url}) "
                                 f"and --offline forbids downloading it; run once without --offline, or "
                                 f"pass it with --certs.", url=url)
        data = self._download(what, url)
        try:
            certs = tuple(parse(data, url))
        except CertificateError as e:
            raise KdsUnavailable(f"{url} did not answer with a {what} certificate ({e}); check "
                                 f"{ENV_KDS_URL} if it is set, or pass the certificate with --certs.",
                                 url=url) from None
        self._store(path, data)
        return Fetched(what, url, path, False, certs)

    def _download(self, what: str, url: str) -> bytes:
        # One request, no retry: the KDS rate-limits, and a retry loop would only make it worse.
        req = urllib.request.Request(url, headers={"User-Agent": "blindbox-guest"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data: bytes = resp.read(MAX_RESPONSE + 1)
        except urllib.error.HTTPError as e:
            raise _http_error(what, url, e) from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            raise KdsUnavailable(f"cannot reach the KDS for the {what} at {url} ({reason}); check the "
                                 f"network (and {ENV_KDS_URL} if set), or pass the certificate with "
                                 f"--certs.", url=url) from None
        if len(data) > MAX_RESPONSE:
            raise KdsUnavailable(f"{url} answered with more than {MAX_RESPONSE} bytes, which is not a "
                                 f"{what}; check {ENV_KDS_URL} if it is set, or pass the certificate "
                                 f"with --certs.", url=url)
        return data

    def _store(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, what="KDS cache file", mode=0o644)
        except (OSError, OutputError) as e:
            reason = e.reason if isinstance(e, OutputError) else (e.strerror or e)
            raise KdsUnavailable(f"cannot write the KDS cache file {path}: {reason}; check the "
                                 f"permissions of the blindbox cache (BLINDBOX_CACHE).") from None


def _http_error(what: str, url: str, e: urllib.error.HTTPError) -> KdsUnavailable:
    if e.code == 429:
        after = (e.headers.get("Retry-After") or "").strip() if e.headers else ""
        wait = f"wait {after} seconds" if after.isdigit() else "wait a few minutes"
        return KdsUnavailable(
            f"the KDS refused the {what} request {url} with HTTP 429 (too many requests: it rate-limits "
            f"its clients); {wait} before trying once more, or pass the certificate with --certs "
            f"(each certificate fetched once is cached).", url=url, status=429)
    if e.code in (400, 404):
        return KdsUnavailable(
            f"the KDS has no {what} at {url} (HTTP {e.code}): AMD issued no certificate for this "
            f"product, CHIP_ID and REPORTED_TCB (a test or altered report, or the wrong --product); get "
            f"the {what} from the host that produced the report and pass it with --certs.",
            url=url, status=e.code)
    return KdsUnavailable(f"the KDS answered the {what} request {url} with HTTP {e.code} {e.reason}; try "
                          f"again later, or pass the certificate with --certs.", url=url, status=e.code)


def _has_leaf(certs: Sequence[Certificate]) -> bool:
    return any(not c.is_ca for c in certs)


def fetch_missing(report: ReportV2, certs: Sequence[Certificate], product: Product | None,
                  client: KdsClient) -> tuple[Fetched, ...]:
    """What must be added to ``certs`` to verify ``report``: nothing when a VCEK/VLEK is given.

    ``product`` comes from the report's CPUID fields or ``--product``.  The VCEK is
    fetched; its cert_chain only when the VCEK's issuer is neither a bundled AMD
    intermediate nor among ``certs``.
    """
    kind = signing_key(report)
    if _has_leaf(certs) or kind is SigningKey.NONE:
        return ()
    vcek = client.vcek(report, product)  # a VLEK, or a VCEK of no known product, is refused here
    assert product is not None
    known = {c.subject.der for ch in amd_chains().values() for c in (ch.ask, ch.asvk)}
    known |= {c.subject.der for c in certs if c.is_ca}
    if vcek.certificates[0].issuer.der in known:
        return (vcek,)
    return (vcek, client.cert_chain(product))


__all__ = ["AMD_KDS_URL", "ENV_KDS_URL", "Fetched", "KdsClient", "KdsUnavailable", "base_url",
           "cert_chain_url", "default_cache_dir", "fetch_missing", "vcek_url"]
