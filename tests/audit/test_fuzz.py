"""Hostile input never escapes as anything but a named BlindboxError (no traceback for users)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from measure.certs import CertificateError, amd_key_info, load_certificates, parse_certificate
from measure.errors import BlindboxError
from measure.report import parse_report
from measure.verify import Requirements, VerifyRequest, verify_report
from tests.conftest import VECTORS

VCEK = (VECTORS / "oak/genoa_oc_vcek.der").read_bytes()
BUNDLE = (VECTORS / "go-sev-guest/ask_ark_genoa.pem").read_bytes()
REPORT = (VECTORS / "oak/genoa_oc_attestation_report.bin").read_bytes()
AT = dt.datetime(2025, 9, 1, tzinfo=dt.timezone.utc)

edits = st.lists(st.tuples(st.integers(0, len(VCEK) - 1), st.integers(0, 255)), min_size=1, max_size=4)


def _apply(data: bytes, changes) -> bytes:
    out = bytearray(data)
    for pos, value in changes:
        out[pos % len(out)] = value
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(edits, st.integers(0, len(VCEK)))
def test_mutated_certificates_parse_or_raise_certificate_error(changes, cut):
    data = _apply(VCEK, changes)[:cut] if cut else _apply(VCEK, changes)
    try:
        cert = parse_certificate(data, source="fuzz")
    except CertificateError:
        return
    cert.fingerprint  # noqa: B018 - must not raise
    for probe in (lambda: cert.public_key, lambda: amd_key_info(cert), lambda: cert.is_ca):
        try:
            probe()
        except CertificateError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_pem_raises_certificate_error(junk):
    data = b"-----BEGIN CERTIFICATE-----\n" + junk + b"\n-----END CERTIFICATE-----\n"
    try:
        load_certificates(data, source="fuzz")
    except CertificateError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(REPORT) - 1), st.integers(0, 255)), min_size=1, max_size=3))
def test_mutated_reports_fail_by_name(changes):
    data = _apply(REPORT, changes)
    certs = tuple(load_certificates(VCEK, source="vcek"))
    try:
        verdict = verify_report(VerifyRequest(report=data, certificates=certs, at=AT,
                                              requirements=Requirements(allow_debug=True)))
    except BlindboxError:
        return
    if data[:0x2A0] != REPORT[:0x2A0] or parse_report(data).signature != parse_report(REPORT).signature:
        assert not verdict.ok
    for check in verdict.failures:
        assert isinstance(check.error, BlindboxError)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=2400))
def test_random_bytes_as_report(data):
    try:
        parse_report(data)
    except BlindboxError:
        pass
