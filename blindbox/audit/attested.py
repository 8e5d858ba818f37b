"""Decide whether the evidence an attestation agent sent on one TLS connection is acceptable.

:func:`verify_evidence` runs :func:`blindbox.audit.verify.verify_report` on the evidence's
report with what a client of attested TLS requires, and adds what only the connection
knows: REPORT_DATA must equal :func:`measure.attested_tls.report_data` of this connection's
certificate key, the nonce just sent and the evidence's policy digest.  The checks, by name:

* ``chain``, ``signature``, ``chip_id``, ``reported_tcb``: the report is signed by a VCEK or
  VLEK that chains to a pinned AMD root (or a root given explicitly); certificates come
  from the evidence's certificate table, the caller, the KDS cache or the KDS;
* ``measurement.manifest``: MEASUREMENT is a digest the (already verified) manifest
  publishes, for the shape asked for if any;
* ``runtime_policy``: the evidence's ``policy_sha256`` is the SHA-256 of the manifest's runtime
  policy (null when the manifest has none);
* ``runtime_policy.debug`` (a manifest with a runtime policy only): the runtime policy does not
  allow debugging, unless allowed;
* ``report_data binds this TLS key and nonce``: computed with the *manifest's* runtime policy
  digest, so the guest's report itself commits to the policy the client expects;
* ``policy.debug`` (the SNP guest policy's DEBUG bit off unless allowed), ``vmpl``, ``min_tcb.*``
  when asked for.

A failure is returned in the verdict; :meth:`AttestedVerdict.raise_for_failure` turns the
first one into :class:`AttestationFailed` (exit status 3), whose message names the check.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from measure.attested_tls import Evidence, ProtocolError, certificate_spki, report_data
from measure.errors import InputError
from measure.runtime_policy import RuntimePolicy, runtime_policy_sha256

from .certs import Certificate, CertificateError, load_certificates
from .certtable import parse_cert_table
from .errors import VerificationError
from .kds import Fetched, KdsClient, KdsUnavailable, fetch_missing
from .manifest import read_manifest, runtime_policy_of
from .report import cpuid_product, parse_report
from .verify import (FAIL, PASS, Check, ManifestEntry, Requirements, Verdict, VerifyRequest, manifest_entries_of,
                     verify_report)

#: The name of the check that ties the report to this connection.
BINDING_CHECK = "report_data binds this TLS key and nonce"
#: The name of the check that fails when the evidence cannot even be read.
EVIDENCE_CHECK = "evidence"
#: The checks that the evidence names the manifest's runtime policy, and that it allows no debugging.
RUNTIME_POLICY_CHECK = "runtime_policy"
RUNTIME_POLICY_DEBUG_CHECK = "runtime_policy.debug"


class AttestationFailed(VerificationError):
    """The attested endpoint did not prove what it must; nothing was sent to it."""

    def __init__(self, message: str, *, check: str, checks: Sequence[Check] = ()):
        super().__init__(message)
        self.check = check
        self.checks = tuple(checks)


def failed(check: str, reason: str, checks: Sequence[Check] = ()) -> AttestationFailed:
    """An :class:`AttestationFailed` whose one sentence names ``check``."""
    reason = reason.rstrip(".")
    return AttestationFailed(f"the attested endpoint failed the check {check!r}: {reason}; nothing was sent "
                             f"to it.", check=check, checks=checks)


def _read(manifest: Mapping[str, Any] | bytes, source: str) -> dict[str, Any]:
    data = manifest if isinstance(manifest, bytes) else json.dumps(dict(manifest)).encode()
    return read_manifest(data, source)


def manifest_expectations(manifest: Mapping[str, Any] | bytes, *, source: str = "manifest.json"
                          ) -> tuple[tuple[ManifestEntry, ...], RuntimePolicy | None]:
    """The measurements and the runtime policy (None: none) a manifest publishes, read once through the one
    reader."""
    doc = _read(manifest, source)
    return manifest_entries_of(doc), runtime_policy_of(doc)


def _runtime_policy_checks(evidence: Evidence, policy: RuntimePolicy | None, expected: bytes | None,
                           allow_debug: bool) -> list[Check]:
    claimed = "no runtime policy" if evidence.policy_sha256 is None else \
        f"runtime policy sha256 {evidence.policy_sha256.hex()}"
    wanted = "none" if expected is None else f"sha256 {expected.hex()}"
    if evidence.policy_sha256 == expected:
        checks = [Check(RUNTIME_POLICY_CHECK, PASS, f"the evidence names {claimed}, as the manifest does")]
    else:
        err = VerificationError(f"the evidence names {claimed}, but the manifest's runtime policy is {wanted}: "
                                f"the guest does not enforce the runtime policy the manifest publishes")
        checks = [Check(RUNTIME_POLICY_CHECK, FAIL, str(err), err)]
    if policy is not None:
        if not policy.debug:
            checks.append(Check(RUNTIME_POLICY_DEBUG_CHECK, PASS, "the runtime policy does not allow debugging"))
        elif allow_debug:
            checks.append(Check(RUNTIME_POLICY_DEBUG_CHECK, PASS, "the runtime policy allows debugging, accepted "
                                                                  "with --allow-debug"))
        else:
            err = VerificationError("the manifest's runtime policy allows debugging (debug: true), which exposes "
                                    "the data inside the guest; pass --allow-debug only for a test guest")
            checks.append(Check(RUNTIME_POLICY_DEBUG_CHECK, FAIL, str(err), err))
    return checks


@dataclass(frozen=True)
class AttestedVerdict:
    """The checks made on one connection's evidence."""

    checks: tuple[Check, ...]
    attester: str
    report: Verdict | None = None
    table: tuple[str, ...] = ()           # the names in the evidence's certificate table
    fetched: tuple[Fetched, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status != FAIL for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == FAIL)

    @property
    def matching_shapes(self) -> tuple[str, ...]:
        return () if self.report is None else self.report.matching_shapes

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def raise_for_failure(self) -> None:
        if self.ok:
            return
        first = self.failures[0]
        raise failed(first.name, first.detail, self.checks)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict": PASS if self.ok else FAIL, "attester": self.attester,
                               "certificate_table": list(self.table),
                               "checks": [c.to_json() for c in self.checks],
                               "matching_shapes": list(self.matching_shapes),
                               "fetched": [f.to_json() for f in self.fetched]}
        if self.report is not None:
            rep = self.report.to_json()
            out["report"] = rep["report"]
            out["certificates"] = rep["certificates"]
            out["product"] = rep["product"]
        return out


def _evidence_failure(attester: str, reason: str) -> AttestedVerdict:
    reason = reason.rstrip(".")
    return AttestedVerdict(checks=(Check(EVIDENCE_CHECK, FAIL, reason),), attester=attester)


def verify_evidence(evidence: Evidence, *, peer_cert_der: bytes, nonce: bytes,
                    manifest: Mapping[str, Any] | bytes | Sequence[ManifestEntry],
                    manifest_source: str = "manifest.json",
                    shape: str | None = None, trust_roots: Sequence[Certificate] = (),
                    certificates: Sequence[Certificate] = (), kds: KdsClient | None = None,
                    allow_debug: bool = False, vmpl: int | None = None,
                    min_tcb: Mapping[str, int] | None = None, at: datetime | None = None,
                    runtime_policy: RuntimePolicy | None = None) -> AttestedVerdict:
    """Check ``evidence`` received on a connection whose peer presented ``peer_cert_der``.

    ``manifest`` is a manifest whose signature was verified (the document, its bytes or its
    measurements); the runtime policy expected is the document's, or ``runtime_policy`` when
    only measurements are given (None: the guest must bind none); ``kds``,
    when given, supplies a missing VCEK from its cache (or the KDS unless offline).
    Malformed evidence is a failed ``evidence`` check, not an error: it came from the peer.
    An option that cannot apply (``shape`` not in the manifest) is :class:`InputError`.
    """
    if isinstance(manifest, (bytes, Mapping)):
        if runtime_policy is not None:
            raise InputError("give a runtime policy only with bare measurements; a manifest document carries its own.")
        manifest, runtime_policy = manifest_expectations(manifest, source=manifest_source)
    if shape is not None and shape not in {e.shape for e in manifest}:
        raise InputError(f"--shape {shape!r} is not in {manifest_source}; its shapes are "
                         f"{', '.join(sorted({e.shape for e in manifest}))}.")
    policy_sha256 = None if runtime_policy is None else runtime_policy_sha256(runtime_policy)
    try:
        spki = certificate_spki(peer_cert_der)
    except ProtocolError as e:
        return _evidence_failure(evidence.attester, f"the server's TLS certificate cannot be read: {e}")
    expected = report_data(spki, nonce, policy_sha256)
    try:
        table = parse_cert_table(evidence.certs, source="the evidence's certificate table")
        from_table = [c for name, data in table.items()
                      for c in load_certificates(data, source=f"evidence {name.upper()}")]
        report = parse_report(evidence.report, what="the evidence's report")
    except (InputError, CertificateError) as e:
        return _evidence_failure(evidence.attester, str(e))
    certs = list(certificates) + from_table
    fetched: tuple[Fetched, ...] = ()
    if kds is None and not any(not c.is_ca for c in certs):
        names = ", ".join(n.upper() for n in table) or "nothing"
        return AttestedVerdict(checks=(Check("chain", FAIL, (
            f"no VCEK or VLEK for this report: the evidence's certificate table holds {names} and none was "
            f"given; pass --fetch to take the VCEK from the KDS cache or AMD's KDS, or give it with --certs")),),
            attester=evidence.attester, table=tuple(table))
    if kds is not None:
        try:
            fetched = fetch_missing(report, certs, cpuid_product(report), kds)
        except KdsUnavailable as e:
            return AttestedVerdict(checks=(Check("chain", FAIL, str(e).rstrip(".")),), attester=evidence.attester,
                                   table=tuple(table))
        certs += [c for f in fetched for c in f.certificates]
    need = Requirements(manifest=tuple(manifest), manifest_source=manifest_source, shape=shape,
                        report_data=expected, allow_debug=allow_debug, vmpl=vmpl,
                        min_tcb=dict(min_tcb) if min_tcb else None)
    try:
        verdict = verify_report(VerifyRequest(report=evidence.report, certificates=tuple(certs),
                                              trust_roots=tuple(trust_roots), at=at, requirements=need,
                                              report_source="the evidence's report"))
    except InputError as e:
        if str(e).startswith("--min-tcb"):
            raise  # the option does not fit this product: the caller's input
        # anything else (no VCEK anywhere, a report that contradicts itself) came from the peer
        return AttestedVerdict(checks=(Check("chain" if "certificate" in str(e) else EVIDENCE_CHECK, FAIL,
                                             str(e).rstrip(".")),),
                               attester=evidence.attester, table=tuple(table), fetched=fetched)
    checks = []
    for check in verdict.checks:
        if check.name == "report_data":
            checks += _runtime_policy_checks(evidence, runtime_policy, policy_sha256, allow_debug)
            if check.status == PASS:
                check = Check(BINDING_CHECK, PASS,
                              f"REPORT_DATA is SHA-512 of this connection's key (SPKI sha256 "
                              f"{hashlib.sha256(spki).hexdigest()[:16]}...), the nonce sent and the manifest's "
                              f"runtime policy digest")
            else:
                err = VerificationError(
                    f"REPORT_DATA {report.report_data.hex()[:32]}... is not {expected.hex()[:32]}..., the binding "
                    f"of this TLS connection's key, the nonce just sent and the manifest's runtime policy digest: "
                    f"the evidence was made for another connection (a relaying proxy or a replayed report) or "
                    f"binds another runtime policy")
                check = Check(BINDING_CHECK, FAIL, str(err), err)
        checks.append(check)
    return AttestedVerdict(checks=tuple(checks), attester=evidence.attester, report=verdict,
                           table=tuple(table), fetched=fetched)


__all__ = ["AttestationFailed", "AttestedVerdict", "BINDING_CHECK", "EVIDENCE_CHECK", "RUNTIME_POLICY_CHECK",
           "RUNTIME_POLICY_DEBUG_CHECK", "failed", "manifest_expectations", "verify_evidence"]
