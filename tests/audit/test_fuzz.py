"""Hostile input never escapes as anything but a named BlindboxError (no traceback for users)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from blindbox.audit.certs import CertificateError, amd_key_info, load_certificates, parse_certificate
from measure.errors import BlindboxError
from blindbox.audit.report import parse_report
from blindbox.audit.verify import Requirements, VerifyRequest, verify_report
from tests.conftest import VECTORS
from tests.fuzzing import budget

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


@budget(300)
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


@budget(100)
@given(st.binary(max_size=64))
def test_garbage_pem_raises_certificate_error(junk):
    data = b"-----BEGIN CERTIFICATE-----\n" + junk + b"\n-----END CERTIFICATE-----\n"
    try:
        load_certificates(data, source="fuzz")
    except CertificateError:
        pass


@budget(200)
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


@budget(100)
@given(st.binary(min_size=0, max_size=2400))
def test_random_bytes_as_report(data):
    try:
        parse_report(data)
    except BlindboxError:
        pass


# -- ID blocks, keys and manifests -----------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

from blindbox.audit.idblock import load_private_key as load_id_key  # noqa: E402
from blindbox.audit.idblock import make_id_auth, verify_id_auth  # noqa: E402
from blindbox.audit.manifest_sig import load_public_key  # noqa: E402
from blindbox.audit.verify import load_manifest  # noqa: E402
from tests.fuzzing import mutations  # noqa: E402

KEYS = VECTORS / "sev-snp-measure/keyfile"
ID_PEM = (KEYS / "id_key_test.pem").read_bytes()
AUTHOR_PEM = (KEYS / "author_key_test.pem").read_bytes()
ID_BLOCK, ID_AUTH = make_id_auth(bytes(range(48)), KEYS / "id_key_test.pem", KEYS / "author_key_test.pem")


def _as_file(data: bytes, suffix: str):
    fd, name = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return name


@budget(150)
@given(st.one_of(st.tuples(mutations(ID_BLOCK), st.just(ID_AUTH)),
                 st.tuples(st.just(ID_BLOCK), mutations(ID_AUTH, resize=False, region=(0, 0x200))),
                 st.tuples(st.just(ID_BLOCK), mutations(ID_AUTH, region=(0x200, len(ID_AUTH))))))
def test_mutated_id_block_and_auth_verify_or_raise_blindbox_error(pair):
    block, auth = pair
    try:
        verify_id_auth(block, auth)
    except BlindboxError:
        return
    # it verified: then nothing that is signed may have changed
    assert block == ID_BLOCK


def _der(pem: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(pem, password=None)
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@budget(150)
@given(st.one_of(mutations(ID_PEM), mutations(_der(ID_PEM)), mutations(_der(AUTHOR_PEM), resize=False)))
def test_mutated_key_files_load_or_raise_blindbox_error(data):
    path = _as_file(data, ".pem")
    try:
        for load in (lambda: load_id_key(path, "ID key"), lambda: load_public_key(path)):
            try:
                load()
            except BlindboxError:
                pass
    finally:
        os.unlink(path)


MANIFEST = json.dumps({"schema": 1, "measurements": [
    {"shape": "qemu:EPYC-v4:1:0x1", "measurement": "ab" * 48, "vcpus": 1, "vcpu_sig": "0x800f12",
     "guest_features": "0x1", "vmm_profile": "qemu"}]}).encode()


@budget(150)
@given(st.one_of(mutations(MANIFEST), st.binary(max_size=64)))
def test_mutated_manifest_measurements_load_or_raise_blindbox_error(data):
    try:
        load_manifest(data, source="fuzz.json")
    except BlindboxError:
        pass


def _pem_ders(data: bytes) -> list[bytes]:
    return [c.der for c in load_certificates(data, source="chain")]


ASK_DER, ARK_DER = _pem_ders(BUNDLE)


@budget(150, deadline_ms=3000)
@given(st.sampled_from(["vcek", "ask", "ark"]), st.data())
def test_mutated_chain_certificates_fail_by_name(which, data):
    seeds = {"vcek": VCEK, "ask": ASK_DER, "ark": ARK_DER}
    mutated = data.draw(mutations(seeds[which], max_edits=3))
    ders = {**seeds, which: mutated}
    try:
        certs = tuple(parse_certificate(ders[k], source=k) for k in ("vcek", "ask", "ark"))
        verdict = verify_report(VerifyRequest(report=REPORT, certificates=certs, at=AT,
                                              requirements=Requirements(allow_debug=True)))
    except BlindboxError:
        return
    if which == "vcek" and certs[0].tbs != parse_certificate(VCEK).tbs:
        # a VCEK whose signed part changed no longer chains to AMD's pinned ASK (a changed ASK
        # or ARK is only an extra candidate: the bundled, pinned ones still verify the chain)
        assert not verdict.ok
    for check in verdict.failures:
        assert isinstance(check.error, BlindboxError)
