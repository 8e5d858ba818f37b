"""Decide, with reasons, whether an attestation report is the guest that was built.

:func:`verify_report` runs every check a :class:`VerifyRequest` asks for and returns a
:class:`Verdict` listing each one by name with its outcome; it raises only for input
it cannot read (a :class:`~measure.errors.BlindboxError` with exit status 2).  A failed
check carries the named :class:`~blindbox.audit.errors.VerificationError` that explains it
(:class:`SignatureInvalid`, :class:`ChainInvalid`, :class:`MeasurementMismatch`,
:class:`PolicyViolation`).

Checks always made when certificates are checked: ``chain`` (VCEK -> ASK -> ARK or
VLEK -> ASVK -> ARK to a trusted root), ``signature`` (ECDSA P-384 / SHA-384 over bytes
[0x000, 0x2A0)), ``chip_id`` (VCEK hwID against CHIP_ID) and ``reported_tcb`` (the
certificate's SPL extensions against REPORTED_TCB).  ``policy.debug`` is always checked:
a debuggable guest is refused unless explicitly allowed.  Everything else is on request.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from .certs import HW_ID_SIZE, Certificate, Chain, amd_key_info, build_chain, issuer_product
from .errors import ChainInvalid, MeasurementMismatch, PolicyViolation, SignatureInvalid, VerificationError
from measure.errors import InputError, LayoutError
from .kds import vcek_url
from .manifest import read_manifest
from .report import (POLICY_BITS, Product, ReportV2, SigningKey, TCB_LAYOUT, cpuid_product, describe, mask_chip_key,
                     parse_report, signed_region, signing_key, tcb_components)

MEASUREMENT_SIZE = 48

# ---------------------------------------------------------------------------------------
# manifest.json


@dataclass(frozen=True)
class ManifestEntry:
    """One expected launch digest of a published manifest (one VM shape)."""

    shape: str
    measurement: bytes
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False)


def load_manifest(data: bytes, *, source: str = "manifest.json") -> tuple[ManifestEntry, ...]:
    """The ``measurements`` of a manifest.json, after the whole manifest passed the one reader.

    A file that is not a blindbox manifest is :class:`InputError` (exit 2); one that breaks
    the schema or contradicts itself (a shape id against the shape's fields, ...) is
    :class:`~blindbox.audit.manifest.ManifestInvalid` (exit 3), naming the field.
    """
    return manifest_entries_of(read_manifest(data, source))


def manifest_entries_of(doc: dict[str, Any]) -> tuple[ManifestEntry, ...]:
    """The ``measurements`` of a manifest document the one reader accepted."""
    return tuple(ManifestEntry(e["shape"], bytes.fromhex(e["measurement"]), dict(e)) for e in doc["measurements"])


# ---------------------------------------------------------------------------------------
# Request and result


@dataclass(frozen=True)
class Requirements:
    """What the relying party expects; ``None`` means "not checked"."""

    measurement: bytes | None = None
    manifest: tuple[ManifestEntry, ...] | None = None
    manifest_source: str = "manifest.json"
    shape: str | None = None
    host_data: bytes | None = None
    report_data: bytes | None = None
    id_key_digest: bytes | None = None
    author_key_digest: bytes | None = None
    family_id: bytes | None = None
    image_id: bytes | None = None
    allow_debug: bool = False
    policy: int | None = None
    vmpl: int | None = None
    min_tcb: Mapping[str, int] | None = None
    min_guest_svn: int | None = None
    signing_key: SigningKey | None = None
    product: Product | None = None


@dataclass(frozen=True)
class VerifyRequest:
    report: bytes
    certificates: tuple[Certificate, ...] = ()
    trust_roots: tuple[Certificate, ...] = ()
    at: datetime | None = None  # None: now
    check_signature: bool = True
    requirements: Requirements = Requirements()
    report_source: str = "attestation report"


PASS, FAIL, SKIP = "pass", "fail", "skip"
#: The verdict when every check passed but the signature was not checked (--no-signature):
#: nothing then proves that the report comes from AMD hardware.
UNAUTHENTICATED = "unauthenticated"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    error: VerificationError | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "detail": self.detail}
        if self.error is not None:
            out["error"] = type(self.error).__name__
        return out


@dataclass(frozen=True)
class Verdict:
    report: ReportV2
    product: Product | None
    product_source: str | None
    checks: tuple[Check, ...]
    chain: Chain | None = None
    leaf: Certificate | None = None
    matching_shapes: tuple[str, ...] = ()
    at: datetime | None = None

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    @property
    def signature_checked(self) -> bool:
        """False when the request skipped the signature (``check_signature=False``)."""
        return any(c.name == "signature" and c.status != SKIP for c in self.checks)

    @property
    def outcome(self) -> str:
        """PASS, FAIL, or UNAUTHENTICATED: every check passed but the signature was not checked."""
        if not self.ok:
            return FAIL
        return PASS if self.signature_checked else UNAUTHENTICATED

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == FAIL)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.outcome,
            "signature_checked": self.signature_checked,
            "checks": [c.to_json() for c in self.checks],
            "matching_shapes": list(self.matching_shapes),
            "product": None if self.product is None else self.product.value,
            "product_source": self.product_source,
            "signing_key": signing_key(self.report).name,
            "checked_at": None if self.at is None else self.at.isoformat(),
            "certificates": None if self.chain is None else {
                "leaf": _cert_json(self.chain.leaf),
                "intermediate": _cert_json(self.chain.intermediate),
                "root": _cert_json(self.chain.root),
                "root_is_amd": self.chain.amd_product is not None,
            },
            "report": describe(self.report, self.product),
        }


def _cert_json(cert: Certificate) -> dict[str, Any]:
    return {"subject": str(cert.subject), "issuer": str(cert.issuer), "sha256": cert.fingerprint,
            "not_before": cert.not_before.isoformat(), "not_after": cert.not_after.isoformat(),
            "source": cert.source}


# ---------------------------------------------------------------------------------------
# The checks


def _leaf_kind(cert: Certificate) -> SigningKey | None:
    info = amd_key_info(cert)
    if info.csp_id is not None or "VLEK" in (cert.issuer.common_name or ""):
        return SigningKey.VLEK
    if info.hw_id is not None or (cert.issuer.common_name or "").startswith("SEV-"):
        return SigningKey.VCEK
    return None


def _is_leaf(cert: Certificate) -> bool:
    if cert.is_ca:
        return False
    key = cert.public_key
    return isinstance(key, ec.EllipticCurvePublicKey)


def kds_url(report: ReportV2, product: Product) -> str:
    """Where AMD's key distribution service serves the VCEK for this report."""
    return vcek_url(report, product)


def select_leaf(report: ReportV2, certs: Sequence[Certificate], product: Product | None) -> Certificate:
    """The VCEK or VLEK among ``certs`` that belongs to ``report``."""
    kind = signing_key(report)
    leaves = [c for c in certs if _is_leaf(c)]
    typed = [c for c in leaves if _leaf_kind(c) in (kind, None)]
    if len(typed) > 1:
        # Prefer the certificates issued for this chip and TCB.
        def fits(c: Certificate) -> bool:
            info = amd_key_info(c)
            if info.hw_id is not None and report.chip_id[:len(info.hw_id)] != info.hw_id:
                return False
            p = product or issuer_product(c)
            if p is None:
                return True
            try:
                tcb = tcb_components(report.reported_tcb, p, what="REPORTED_TCB")
            except InputError:
                return True
            return all(info.spl.get(k) == v for k, v in tcb.items())
        fitting = [c for c in typed if fits(c)]
        typed = fitting or typed
    if len(typed) == 1:
        return typed[0]
    if len(typed) > 1:
        raise InputError(f"several {kind.name} certificates were given ({', '.join(c.label for c in typed)}) "
                         f"and none is clearly this report's; give only the right one with --certs.")
    hint = ""
    p = product or cpuid_product(report)
    if kind is SigningKey.VCEK and p is not None and not mask_chip_key(report):
        hint = f" (AMD serves it at {kds_url(report, p)}; --fetch downloads it)"
    given = f" (given: {', '.join(c.label for c in certs)})" if certs else ""
    raise InputError(f"no {kind.name} certificate for this report was given{given}; pass it with "
                     f"--certs FILE_OR_DIR{hint}, or --no-signature to check fields only.")


def _check_signature(report: ReportV2, leaf: Certificate) -> Check:
    key = leaf.public_key
    assert isinstance(key, ec.EllipticCurvePublicKey)  # select_leaf takes only ECDSA leaves
    try:
        key.verify(report.signature.to_der(), signed_region(report), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        err = SignatureInvalid(
            f"the report signature does not verify with the {signing_key(report).name} "
            f"{leaf.label}: the report was altered, or the certificate belongs to another chip or "
            f"TCB; get the certificate for this report's CHIP_ID and REPORTED_TCB.")
        return Check("signature", FAIL, str(err), err)
    return Check("signature", PASS, "ECDSA P-384 with SHA-384 over bytes [0x000, 0x2a0) verifies "
                                    f"with {leaf.subject} (sha256 {leaf.fingerprint[:16]}...)")


def _check_chip_id(report: ReportV2, leaf: Certificate, product: Product) -> Check:
    info = amd_key_info(leaf)
    if signing_key(report) is SigningKey.VLEK:
        return Check("chip_id", SKIP, "a VLEK is not bound to one chip; no hwID to compare")
    if info.hw_id is None:
        err = ChainInvalid(f"the VCEK {leaf.label} has no hwID extension, so it cannot be tied to a "
                           f"chip; give the VCEK AMD's KDS serves for this chip.")
        return Check("chip_id", FAIL, str(err), err)
    size = HW_ID_SIZE[product]
    if len(info.hw_id) != size:
        err = ChainInvalid(f"the VCEK {leaf.label} has a {len(info.hw_id)}-byte hwID, but a "
                           f"{product.value} VCEK has {size}; the certificate is for another product.")
        return Check("chip_id", FAIL, str(err), err)
    if mask_chip_key(report):
        return Check("chip_id", SKIP, "MASK_CHIP_KEY is set: the host zeroed CHIP_ID in the report")
    if report.chip_id[:size] != info.hw_id or any(report.chip_id[size:]):
        err = ChainInvalid(f"the VCEK {leaf.label} was issued for chip {info.hw_id.hex()[:16]}..., "
                           f"but the report's CHIP_ID is {report.chip_id.hex()[:16]}...; give the VCEK "
                           f"of the chip that produced the report.")
        return Check("chip_id", FAIL, str(err), err)
    return Check("chip_id", PASS, f"CHIP_ID matches the VCEK's {size}-byte hwID {info.hw_id.hex()[:16]}...")


def _fmt_tcb(tcb: Mapping[str, int | None]) -> str:
    return " ".join(f"{k}={'-' if v is None else v}" for k, v in tcb.items())


def _check_reported_tcb(report: ReportV2, leaf: Certificate, product: Product) -> Check:
    info = amd_key_info(leaf)
    tcb = tcb_components(report.reported_tcb, product, what="REPORTED_TCB")
    cert_tcb = {k: info.spl.get(k) for k in tcb}
    if cert_tcb != tcb:
        err = ChainInvalid(f"the {signing_key(report).name} {leaf.label} was issued for TCB "
                           f"{_fmt_tcb(cert_tcb)}, but the report's REPORTED_TCB is {_fmt_tcb(tcb)}; "
                           f"get the certificate for the report's REPORTED_TCB.")
        return Check("reported_tcb", FAIL, str(err), err)
    return Check("reported_tcb", PASS, f"REPORTED_TCB {_fmt_tcb(tcb)} matches the certificate's SPLs")


def _equal(name: str, label: str, expected: bytes | None, actual: bytes) -> Check | None:
    if expected is None:
        return None
    if expected == actual:
        return Check(name, PASS, f"{label} is {actual.hex()}")
    err = PolicyViolation(f"the report's {label} is {actual.hex()}, expected {expected.hex()}; this "
                          f"guest was launched with different {label}.")
    return Check(name, FAIL, str(err), err)


def _measurement_checks(report: ReportV2, req: Requirements) -> tuple[list[Check], tuple[str, ...]]:
    checks: list[Check] = []
    actual = report.measurement
    if req.measurement is not None:
        if actual == req.measurement:
            checks.append(Check("measurement", PASS, f"MEASUREMENT is {actual.hex()}"))
        else:
            err = MeasurementMismatch(
                f"the report's MEASUREMENT is {actual.hex()}, expected {req.measurement.hex()}; the "
                f"guest launched different firmware, kernel, command line or VM shape.",
                expected=req.measurement, actual=actual)
            checks.append(Check("measurement", FAIL, str(err), err))
    matching: tuple[str, ...] = ()
    if req.manifest is not None:
        entries = req.manifest
        if req.shape is not None:
            entries = tuple(e for e in entries if e.shape == req.shape)
            if not entries:
                raise InputError(f"--shape {req.shape!r} is not in {req.manifest_source}; its shapes are "
                                 f"{', '.join(sorted({e.shape for e in req.manifest}))}.")
        matching = tuple(dict.fromkeys(e.shape for e in entries if e.measurement == actual))
        scope = f"shape {req.shape!r} of {req.manifest_source}" if req.shape else \
            f"{req.manifest_source} ({len(entries)} shapes)"
        if matching:
            checks.append(Check("measurement.manifest", PASS,
                                f"MEASUREMENT {actual.hex()[:16]}... matches {', '.join(matching)}"))
            matched = [e for e in entries if e.shape in matching]
            checks.extend(_manifest_key_checks(report, req, matched))
        else:
            err = MeasurementMismatch(
                f"the report's MEASUREMENT {actual.hex()} matches no digest in {scope}; the guest is "
                f"not one of the published builds (or was launched with another VM shape).",
                expected=[e.measurement for e in entries], actual=actual)
            checks.append(Check("measurement.manifest", FAIL, str(err), err))
    return checks, matching


def _manifest_key_checks(report: ReportV2, req: Requirements, matched: list[ManifestEntry]) -> list[Check]:
    """A bundle built with an ID block publishes its key digests per shape: the guest must carry them.

    Done for each digest the manifest names and the user did not give explicitly.
    """
    checks: list[Check] = []
    for key, label, given, actual in (
            ("id_key_digest", "ID_KEY_DIGEST", req.id_key_digest, report.id_key_digest),
            ("author_key_digest", "AUTHOR_KEY_DIGEST", req.author_key_digest, report.author_key_digest)):
        if given is not None or not all(key in e.fields for e in matched):
            continue
        published = {e.fields[key] for e in matched}
        if len(published) != 1:
            continue  # the matching shapes disagree; only an explicit option can decide
        value = published.pop()
        try:
            expected = bytes(len(actual)) if value is None else bytes.fromhex(value)
        except (TypeError, ValueError):
            raise InputError(f"{req.manifest_source}: {key} {value!r} of shape {matched[0].shape!r} is not "
                             f"hex; the manifest is malformed, rebuild or re-download it.") from None
        check = _equal(f"{key}.manifest", label, expected, actual)
        assert check is not None  # expected is bytes
        if check.status == FAIL:
            err = PolicyViolation(
                f"the report's {label} is {actual.hex()}, but {req.manifest_source} publishes "
                f"{expected.hex()} for {', '.join(e.shape for e in matched)}; the guest was not launched "
                f"with the bundle's ID block (or was signed with another key).")
            check = Check(check.name, FAIL, str(err), err)
        checks.append(check)
    return checks


def _policy_checks(report: ReportV2, req: Requirements) -> list[Check]:
    checks = []
    debug = bool(report.policy >> POLICY_BITS["debug"] & 1)
    if not debug:
        checks.append(Check("policy.debug", PASS, "GUEST_POLICY forbids debugging"))
    elif req.allow_debug:
        checks.append(Check("policy.debug", PASS, "GUEST_POLICY allows debugging; accepted because "
                                                  "--allow-debug was given"))
    else:
        err = PolicyViolation(
            f"GUEST_POLICY {report.policy:#x} allows debugging (bit 19): the host can read and change "
            f"this guest's memory; accept it only for test guests, with --allow-debug.")
        checks.append(Check("policy.debug", FAIL, str(err), err))
    if req.policy is not None:
        if report.policy == req.policy:
            checks.append(Check("policy", PASS, f"GUEST_POLICY is {report.policy:#x}"))
        else:
            err = PolicyViolation(f"the report's GUEST_POLICY is {report.policy:#x}, expected "
                                  f"{req.policy:#x}; the guest was launched with another policy.")
            checks.append(Check("policy", FAIL, str(err), err))
    return checks


def _tcb_layout_error(report: ReportV2, product: Product | None) -> LayoutError | None:
    """Why the report's TCB fields do not fit ``product``'s layout, or None when they do."""
    if product is None:
        return None
    try:
        for name in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
            tcb_components(getattr(report, name), product, what=name.upper())
    except LayoutError as e:
        return e
    return None


def _scalar_checks(report: ReportV2, req: Requirements, product: Product | None,
                   claimed: Product | None = None) -> list[Check]:
    checks = []
    if req.vmpl is not None:
        if report.vmpl == req.vmpl:
            checks.append(Check("vmpl", PASS, f"VMPL is {report.vmpl}"))
        else:
            err = PolicyViolation(f"the report was requested at VMPL {report.vmpl}, expected "
                                  f"{req.vmpl}; software at another privilege level asked for it.")
            checks.append(Check("vmpl", FAIL, str(err), err))
    if req.min_guest_svn is not None:
        if report.guest_svn >= req.min_guest_svn:
            checks.append(Check("guest_svn", PASS, f"GUEST_SVN {report.guest_svn} >= {req.min_guest_svn}"))
        else:
            err = PolicyViolation(f"the report's GUEST_SVN is {report.guest_svn}, below the minimum "
                                  f"{req.min_guest_svn}; the guest image is older than required.")
            checks.append(Check("guest_svn", FAIL, str(err), err))
    if req.min_tcb and product is None and claimed is not None:
        err = PolicyViolation("the minimum TCB cannot be checked: the report's TCB layout does not fit "
                              "the product its certificate names.")
        checks.append(Check("min_tcb", FAIL, str(err), err))
    elif req.min_tcb:
        if product is None:
            raise InputError("the TCB layout depends on the product, which neither the report nor a "
                             "certificate names; give --product.")
        tcb = tcb_components(report.reported_tcb, product, what="REPORTED_TCB")
        for comp, minimum in req.min_tcb.items():
            if comp not in tcb:
                raise InputError(f"--min-tcb {comp}: a {product.value} TCB has no {comp} component; "
                                 f"use {', '.join(tcb)}.")
            name = f"min_tcb.{comp}"
            if tcb[comp] >= minimum:
                checks.append(Check(name, PASS, f"REPORTED_TCB {comp} {tcb[comp]} >= {minimum}"))
            else:
                err = PolicyViolation(f"the report's REPORTED_TCB {comp} is {tcb[comp]}, below the "
                                      f"minimum {minimum}; the platform firmware must be updated.")
                checks.append(Check(name, FAIL, str(err), err))
    if req.signing_key is not None:
        actual = signing_key(report)
        if actual is req.signing_key:
            checks.append(Check("signing_key", PASS, f"signed by a {actual.name}"))
        else:
            err = PolicyViolation(f"the report is signed by a {actual.name}, expected a "
                                  f"{req.signing_key.name}.")
            checks.append(Check("signing_key", FAIL, str(err), err))
    return checks


def verify_report(req: VerifyRequest) -> Verdict:
    """Run every requested check on ``req.report``; see the module docstring."""
    report = parse_report(req.report, what=req.report_source)
    at = req.at or datetime.now(timezone.utc)
    need = req.requirements
    checks: list[Check] = []

    product, product_source = cpuid_product(report), "report CPUID"
    if product is not None and need.product is not None and need.product is not product:
        err: VerificationError = PolicyViolation(
            f"the report comes from a {product.value} (its CPUID fields say so), but --product says "
            f"{need.product.value}.")
        checks.append(Check("product", FAIL, str(err), err))
    elif need.product is not None and product is not None:
        checks.append(Check("product", PASS, f"the report comes from a {product.value}"))

    chain = leaf = None
    kind = signing_key(report)
    if not req.check_signature:
        checks.append(Check("signature", SKIP, "not checked (--no-signature): nothing below proves "
                                               "the report comes from AMD hardware"))
        if product is None and need.product is not None:
            product, product_source = need.product, "--product"
    elif kind is SigningKey.NONE:
        err = SignatureInvalid("the report is unsigned (SIGNING_KEY is 7, none), so nothing proves it "
                               "comes from AMD hardware; request a signed report.")
        checks.append(Check("signature", FAIL, str(err), err))
    else:
        leaf = select_leaf(report, req.certificates, product or need.product)
        if product is None:
            named = issuer_product(leaf)
            if named is not None:
                product, product_source = named, f"{kind.name} issuer"
            elif need.product is not None:
                product, product_source = need.product, "--product"
        expected = product
        reason = "the report"
        if product_source != "report CPUID" and need.product is not None:
            expected, reason = need.product, "--product"
        try:
            chain = build_chain(leaf, kind=kind, product=expected, product_reason=reason,
                                candidates=req.certificates, trust_roots=req.trust_roots, at=at)
            checks.append(Check("chain", PASS, chain.describe()))
        except ChainInvalid as e:
            checks.append(Check("chain", FAIL, str(e), e))
        if chain is not None and chain.amd_product is not None and product is None:
            product, product_source = chain.amd_product, "AMD chain"
        checks.append(_check_signature(report, leaf))
        if product is None:
            raise InputError(f"cannot tell which product produced the report (version {report.version} "
                             f"has no CPUID fields and {leaf.label} names none); give --product.")

    tcb_product = product
    layout_error = _tcb_layout_error(report, product)
    if layout_error is not None:
        if product_source == "report CPUID":
            raise layout_error  # the report contradicts itself: malformed
        tcb_product = None
        assert product is not None  # there is no layout error without a product
        err = ChainInvalid(f"the report's TCB fields have nonzero bytes where the {product.value} TCB "
                           f"layout (implied by the {product_source}) has reserved ones, so the "
                           f"certificate or --product is for another product.")
        checks.append(Check("tcb_layout", FAIL, str(err), err))
    if leaf is not None:
        assert product is not None  # with a leaf, a product was found or InputError raised
        checks.append(_check_chip_id(report, leaf, product))
        if tcb_product is not None:
            checks.append(_check_reported_tcb(report, leaf, tcb_product))
        else:
            checks.append(Check("reported_tcb", SKIP, "not comparable: the TCB layout is unknown"))

    measurement_checks, matching = _measurement_checks(report, need)
    checks.extend(measurement_checks)
    for check in (
        _equal("host_data", "HOST_DATA", need.host_data, report.host_data),
        _equal("report_data", "REPORT_DATA", need.report_data, report.report_data),
        _equal("id_key_digest", "ID_KEY_DIGEST", need.id_key_digest, report.id_key_digest),
        _equal("author_key_digest", "AUTHOR_KEY_DIGEST", need.author_key_digest, report.author_key_digest),
        _equal("family_id", "FAMILY_ID", need.family_id, report.family_id),
        _equal("image_id", "IMAGE_ID", need.image_id, report.image_id),
    ):
        if check is not None:
            checks.append(check)
    checks.extend(_policy_checks(report, need))
    checks.extend(_scalar_checks(report, need, tcb_product, product))
    return Verdict(report=report, product=tcb_product, product_source=product_source if tcb_product else None,
                   checks=tuple(checks), chain=chain, leaf=leaf, matching_shapes=matching, at=at)


def parse_min_tcb(spec: str) -> dict[str, int]:
    """``bl=3,tee=0,snp=8,ucode=115[,fmc=0]`` -> {component: minimum}."""
    from .report import TCB_ALIASES
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = item.partition("=")
        comp = TCB_ALIASES.get(name.strip().lower())
        try:
            level = int(value, 0)
        except ValueError:
            level = -1
        if not sep or comp is None or not 0 <= level <= 255:
            raise InputError(f"--min-tcb item {item!r} is not COMPONENT=LEVEL with COMPONENT one of "
                             f"bl, tee, snp, ucode, fmc and LEVEL 0-255; e.g. --min-tcb bl=3,snp=8.")
        if comp in out and out[comp] != level:
            raise InputError(f"--min-tcb gives {name.strip()!r} twice, {out[comp]} and {level}; give each component "
                             f"once.")
        out[comp] = level
    if not out:
        raise InputError("--min-tcb is empty; give e.g. --min-tcb bl=3,tee=0,snp=8,ucode=115.")
    return out


__all__ = ["Check", "ManifestEntry", "Requirements", "Verdict", "VerifyRequest", "TCB_LAYOUT",
           "kds_url", "load_manifest", "manifest_entries_of", "parse_min_tcb", "select_leaf", "verify_report"]
