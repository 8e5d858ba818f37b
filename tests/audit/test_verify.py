"""verify_report: every real report verifies; every kind of tampering is refused by name."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from blindbox.audit.certs import load_certificates
from blindbox.audit.errors import ChainInvalid, MeasurementMismatch, PolicyViolation, SignatureInvalid
from measure import record
from measure.errors import InputError, LayoutError
from blindbox.audit.report import SIGNED_SIZE, EcdsaSignature, Product, SigningKey, parse_report
from blindbox.audit.verify import (PASS, SKIP, UNAUTHENTICATED, ManifestEntry, Verdict, Requirements, VerifyRequest,
                                   kds_url, load_manifest, parse_min_tcb, verify_report)
from blindbox.audit.manifest import ManifestInvalid, ManifestMalformed
from tests.audit.manifestdoc import entry, manifest_doc
from tests.audit.testchain import CHIP_ID, make_chain, make_report, sign_report
from tests.conftest import VECTORS

# report, certificates, a time inside the certificates' validity, product, needs --allow-debug
REAL = {
    "virtee-milan-v2": ("virtee-sev/certs_data/report_milan.hex", ["virtee-sev/certs_data/vcek_milan.der"],
                        "2025-01-01", Product.MILAN, False),
    "go-milan-v2": ("go-sev-guest/attestation.bin", ["go-sev-guest/vcek.testcer"], "2025-01-01",
                    Product.MILAN, True),
    "oak-milan-v3": ("oak/milan_oc_release_attestation_report.bin", ["oak/milan_oc_release_vcek.der"],
                     "2025-06-01", Product.MILAN, False),
    "oak-genoa-v5": ("oak/genoa_oc_attestation_report.bin", ["oak/genoa_oc_vcek.der"], "2025-09-01",
                     Product.GENOA, False),
    "oak-turin-v5": ("oak/turin_oc_attestation_report.bin", ["oak/turin_oc_vcek.der"], "2025-09-01",
                     Product.TURIN, False),
    "trustee-vlek-v3": ("trustee/test-vlek-report.bin",
                        ["trustee/test-vlek.der", "go-sev-guest/ask_ark_milan_vlek.pem"], "2025-06-01",
                        Product.MILAN, False),
}


def certs_of(paths):
    return tuple(c for p in paths for c in load_certificates((VECTORS / p).read_bytes(), source=p))


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)


def run(name: str, *, report: bytes | None = None, certs=None, **need) -> Verdict:
    rel, cert_paths, at, _, debug = REAL[name]
    need.setdefault("allow_debug", debug)
    return verify_report(VerifyRequest(
        report=(VECTORS / rel).read_bytes() if report is None else report,
        certificates=certs_of(cert_paths) if certs is None else certs,
        at=when(at), requirements=Requirements(**need)))


def status(verdict, name):
    return verdict.check(name).status


@pytest.mark.parametrize("name", REAL)
def test_every_real_report_verifies(name):
    verdict = run(name)
    assert verdict.ok, [c.detail for c in verdict.failures]
    assert verdict.product is REAL[name][3]
    assert [c.name for c in verdict.checks][:4] == ["chain", "signature", "chip_id", "reported_tcb"]
    assert status(verdict, "chain") == status(verdict, "signature") == status(verdict, "reported_tcb") == PASS
    assert status(verdict, "chip_id") == (SKIP if "vlek" in name else PASS)
    assert verdict.chain.amd_product is REAL[name][3]
    json.dumps(verdict.to_json())


def test_real_report_with_its_measurement_and_fields():
    rel = REAL["oak-turin-v5"][0]
    report = parse_report((VECTORS / rel).read_bytes())
    verdict = run("oak-turin-v5", measurement=report.measurement, report_data=report.report_data,
                  host_data=report.host_data, vmpl=0, policy=0x30000, min_guest_svn=0,
                  min_tcb=dict(fmc=0, boot_loader=1, tee=0, snp=2, microcode=0x47),
                  signing_key=SigningKey.VCEK, product=Product.TURIN)
    assert verdict.ok
    names = [c.name for c in verdict.checks]
    for name in ("product", "measurement", "report_data", "host_data", "policy.debug", "policy", "vmpl",
                 "guest_svn", "min_tcb.fmc", "min_tcb.microcode", "signing_key"):
        assert name in names and status(verdict, name) == PASS


def test_debug_policy_refused_unless_allowed():
    verdict = run("go-milan-v2", allow_debug=False)
    assert not verdict.ok
    assert [c.name for c in verdict.failures] == ["policy.debug"]
    assert isinstance(verdict.check("policy.debug").error, PolicyViolation)
    assert "--allow-debug" in verdict.check("policy.debug").detail
    assert run("go-milan-v2", allow_debug=True).ok


def _field_offsets(report, names):
    cls = type(report)
    out = set()
    for f in record.fields(cls):
        if f.name in names:
            spec = f.metadata["layout"]
            out.update(range(spec.offset, spec.offset + spec.size))
    return out


FREE_FIELDS = ("family_id", "image_id", "report_data", "measurement", "host_data", "id_key_digest",
               "author_key_digest", "report_id", "report_id_ma", "chip_id", "guest_svn", "vmpl",
               "platform_info")


@pytest.mark.parametrize("name", ["virtee-milan-v2", "oak-genoa-v5", "oak-turin-v5", "trustee-vlek-v3"])
def test_a_flipped_bit_anywhere_in_the_signed_region_is_refused(name):
    rel = REAL[name][0]
    data = parse_report((VECTORS / rel).read_bytes()).to_bytes()
    report = parse_report(data)
    all_fields = {f.name for f in record.fields(type(report))}
    used = _field_offsets(report, all_fields)
    free = _field_offsets(report, FREE_FIELDS)
    outcomes = {"layout": 0, "signature": 0}
    for pos in range(0, SIGNED_SIZE, 8):
        pos += pos // 8 % 8  # vary the byte within each 8-byte stride
        bad = bytearray(data)
        bad[pos] ^= 1 << (pos % 8)
        try:
            verdict = run(name, report=bytes(bad))
        except LayoutError:
            assert pos not in free, f"byte {pos:#x} is free data but was refused as malformed"
            outcomes["layout"] += 1
            continue
        assert pos in used, f"byte {pos:#x} is reserved but parsed"
        assert not verdict.ok
        assert isinstance(verdict.check("signature").error, SignatureInvalid), f"byte {pos:#x}"
        outcomes["signature"] += 1
    assert outcomes["signature"] > 40 and outcomes["layout"] > 5


def test_vcek_of_another_chip_is_refused():
    verdict = run("go-milan-v2", certs=certs_of(["virtee-sev/certs_data/vcek_milan.der"]))
    assert status(verdict, "chain") == PASS  # a genuine AMD VCEK ...
    assert isinstance(verdict.check("signature").error, SignatureInvalid)  # ... of another chip
    assert isinstance(verdict.check("chip_id").error, ChainInvalid)
    assert isinstance(verdict.check("reported_tcb").error, ChainInvalid)
    turin = run("oak-turin-v5", certs=certs_of(["virtee-sev/certs_data/vcek_turin.der"]))
    assert isinstance(turin.check("signature").error, SignatureInvalid)
    assert "1e550a8ee5cf9f4d" in turin.check("chip_id").detail


def test_chain_of_another_product_is_refused():
    # A Genoa report (its CPUID says so) with a Milan VCEK.
    verdict = run("oak-genoa-v5", certs=certs_of(["oak/milan_oc_release_vcek.der"]))
    err = verdict.check("chain").error
    assert isinstance(err, ChainInvalid) and "Milan chain" in str(err) and "Genoa" in str(err)
    # A version 2 report says nothing; --product Genoa does, and the Milan chain contradicts it.
    verdict = run("virtee-milan-v2", product=Product.GENOA)
    assert isinstance(verdict.check("chain").error, ChainInvalid)
    assert "--product says the chip is a Genoa" in verdict.check("chain").detail
    # A version 3 report names its product; --product must agree.
    verdict = run("oak-milan-v3", product=Product.TURIN)
    assert isinstance(verdict.check("product").error, PolicyViolation)
    # A Turin VCEK for a Milan v2 report: the TCB layout does not fit: a check, not malformed input.
    verdict = run("go-milan-v2", certs=certs_of(["oak/turin_oc_vcek.der"]))
    assert isinstance(verdict.check("tcb_layout").error, ChainInvalid)
    assert isinstance(verdict.check("signature").error, SignatureInvalid)


def test_expired_certificate_and_the_at_option():
    rel, certs, _, _, _ = REAL["trustee-vlek-v3"]
    verdict = verify_report(VerifyRequest(report=(VECTORS / rel).read_bytes(), certificates=certs_of(certs),
                                          at=when("2026-06-01")))
    assert isinstance(verdict.check("chain").error, ChainInvalid)
    assert "--at" in verdict.check("chain").detail and status(verdict, "signature") == PASS


def test_measurement_and_manifest_checks():
    report = parse_report((VECTORS / REAL["oak-genoa-v5"][0]).read_bytes())
    other = bytes(48)
    manifest = (ManifestEntry("4cpu-genoa", report.measurement), ManifestEntry("2cpu-genoa", other),
                ManifestEntry("4cpu-genoa-copy", report.measurement))
    ok = run("oak-genoa-v5", manifest=manifest)
    assert ok.ok and ok.matching_shapes == ("4cpu-genoa", "4cpu-genoa-copy")
    narrowed = run("oak-genoa-v5", manifest=manifest, shape="2cpu-genoa")
    err = narrowed.check("measurement.manifest").error
    assert isinstance(err, MeasurementMismatch) and err.actual == report.measurement and err.expected == [other]
    assert narrowed.matching_shapes == ()
    wrong = run("oak-genoa-v5", measurement=other)
    err = wrong.check("measurement").error
    assert isinstance(err, MeasurementMismatch) and (err.expected, err.actual) == (other, report.measurement)
    with pytest.raises(InputError, match="--shape 'nope' is not in .* 2cpu-genoa, 4cpu-genoa"):
        run("oak-genoa-v5", manifest=manifest, shape="nope")


def test_manifest_reader():
    """verify-report reads a manifest through the one reader (blindbox.audit.manifest): anything that
    is not a blindbox manifest is bad input (exit 2), a blindbox manifest that breaks the
    schema is a failed verification (exit 3) naming the field."""
    good = manifest_doc([entry(1, "EPYC-v4", 0x1, "ab" * 48)])
    (e,) = load_manifest(json.dumps(good).encode())
    assert (e.shape, e.measurement) == ("qemu:EPYC-v4:1:0x1", bytes([0xAB]) * 48)
    for doc, match in [(b"{", "not UTF-8 JSON"), (b"[]", "not a blindbox manifest"),
                       (b'{"measurements": [{"shape": "a", "measurement": "' + b"00" * 48 + b'"}]}',
                        "not a blindbox manifest")]:
        with pytest.raises(InputError, match=match) as info:
            load_manifest(doc, source="m.json")
        assert info.value.exit_code == 2
    for change, path, kind in [
            (lambda d: d["measurements"][0].update(measurement="00"), "measurements[0].measurement", ManifestMalformed),
            (lambda d: d["measurements"][0].update(measurement=5), "measurements[0].measurement", ManifestMalformed),
            (lambda d: d["measurements"][0].pop("shape"), "measurements[0].shape", ManifestInvalid),
            (lambda d: d.update(measurements=[]), "measurements", ManifestInvalid)]:
        doc = manifest_doc([entry(1, "EPYC-v4", 0x1, "ab" * 48)])
        change(doc)
        with pytest.raises(kind) as info:
            load_manifest(json.dumps(doc).encode(), source="m.json")
        assert info.value.path == path and f"m.json: {path} " in str(info.value)
        assert info.value.exit_code == (2 if kind is ManifestMalformed else 3)


@pytest.fixture(scope="module")
def chain():
    return make_chain(Product.GENOA, label="verify")


def test_test_chain_needs_an_explicit_root(chain):
    from cryptography.hazmat.primitives import serialization
    data = make_report(chain, measurement=b"\x11" * 48)
    ours = load_certificates(chain.vcek.public_bytes(serialization.Encoding.DER), source="vcek") + \
        load_certificates(chain.ask.public_bytes(serialization.Encoding.PEM), source="ask")
    root = load_certificates(chain.ark.public_bytes(serialization.Encoding.PEM), source="ark")
    request = VerifyRequest(report=data, certificates=tuple(ours))
    refused = verify_report(request)
    assert isinstance(refused.check("chain").error, ChainInvalid)
    assert "not a trusted root" in refused.check("chain").detail
    assert status(refused, "signature") == PASS  # the key matches; only the trust is missing
    accepted = verify_report(dataclasses.replace(request, trust_roots=tuple(root)))
    assert accepted.ok and accepted.chain.amd_product is None
    assert "NOT AMD's" in accepted.check("chain").detail
    # Giving the test ARK among --certs is not trusting it.
    refused_again = verify_report(dataclasses.replace(request, certificates=tuple(ours + root)))
    assert not refused_again.ok


def _verify_test(chain, report: bytes, **need):
    from cryptography.hazmat.primitives import serialization
    certs = load_certificates(chain.vcek.public_bytes(serialization.Encoding.DER), source="vcek") + \
        load_certificates(chain.ask.public_bytes(serialization.Encoding.PEM), source="ask")
    root = load_certificates(chain.ark.public_bytes(serialization.Encoding.PEM), source="ark")
    return verify_report(VerifyRequest(report=report, certificates=tuple(certs), trust_roots=tuple(root),
                                       requirements=Requirements(**need)))


def test_every_field_check_passes_and_fails_by_name(chain):
    fields = dict(host_data=b"\x01" * 32, report_data=b"\x02" * 64, id_key_digest=b"\x03" * 48,
                  author_key_digest=b"\x04" * 48, family_id=b"\x05" * 16, image_id=b"\x06" * 16)
    data = make_report(chain, guest_svn=7, vmpl=2, signer_info=1, **fields)
    good = _verify_test(chain, data, policy=0x30000, vmpl=2, min_guest_svn=7,
                        min_tcb=dict(boot_loader=4, snp=24), signing_key=SigningKey.VCEK, **fields)
    assert good.ok and {c.name for c in good.checks} >= set(fields) | {"policy", "vmpl", "guest_svn",
                                                                       "min_tcb.snp", "signing_key"}
    for name, value in fields.items():
        bad = _verify_test(chain, data, **{name: bytes(len(value))})
        assert [c.name for c in bad.failures] == [name]
        assert isinstance(bad.check(name).error, PolicyViolation)
    for need, failing in [(dict(policy=0x30001), "policy"), (dict(vmpl=0), "vmpl"),
                          (dict(min_guest_svn=8), "guest_svn"), (dict(min_tcb=dict(snp=25)), "min_tcb.snp"),
                          (dict(signing_key=SigningKey.VLEK), "signing_key")]:
        bad = _verify_test(chain, data, **need)
        assert [c.name for c in bad.failures] == [failing]
    with pytest.raises(InputError, match="no fmc component"):
        _verify_test(chain, data, min_tcb=dict(fmc=0))


def test_masked_chip_id_and_unsigned_reports(chain):
    masked = make_report(chain, chip_id=bytes(64), signer_info=0b10)
    verdict = _verify_test(chain, masked)
    assert verdict.ok and status(verdict, "chip_id") == SKIP
    unsigned = parse_report(make_report(chain, signer_info=7 << 2))
    verdict = _verify_test(chain, unsigned.to_bytes())
    assert isinstance(verdict.check("signature").error, SignatureInvalid)


def test_no_signature_mode_and_missing_certificates():
    rel = REAL["go-milan-v2"][0]
    data = (VECTORS / rel).read_bytes()
    verdict = verify_report(VerifyRequest(report=data, check_signature=False,
                                          requirements=Requirements(allow_debug=True, product=Product.MILAN)))
    assert verdict.ok and status(verdict, "signature") == SKIP and verdict.product is Product.MILAN
    assert verdict.outcome == UNAUTHENTICATED and not verdict.signature_checked
    assert verdict.to_json()["verdict"] == "unauthenticated"
    with pytest.raises(InputError, match=r"no VCEK .*--certs"):
        verify_report(VerifyRequest(report=data))
    report = parse_report((VECTORS / REAL["oak-milan-v3"][0]).read_bytes())
    url = kds_url(report, Product.MILAN)
    assert url == (f"https://kdsintf.amd.com/vcek/v1/Milan/{report.chip_id.hex()}"
                   f"?blSPL=04&teeSPL=00&snpSPL=24&ucodeSPL=219")
    with pytest.raises(InputError, match="kdsintf.amd.com/vcek/v1/Milan/a3fdc2c6"):
        verify_report(VerifyRequest(report=report.to_bytes()))
    turin = parse_report((VECTORS / REAL["oak-turin-v5"][0]).read_bytes())
    assert kds_url(turin, Product.TURIN) == ("https://kdsintf.amd.com/vcek/v1/Turin/3b42092f69c656d3"
                                             "?fmcSPL=00&blSPL=01&teeSPL=00&snpSPL=02&ucodeSPL=71")


def test_the_right_vcek_is_picked_among_several():
    certs = certs_of(["virtee-sev/certs_data/vcek_milan.der", "go-sev-guest/vcek.testcer",
                      "oak/milan_oc_release_vcek.der", "go-sev-guest/ask_ark_milan.pem"])
    assert run("go-milan-v2", certs=certs).ok
    assert run("oak-milan-v3", certs=certs).ok


def test_min_tcb_spec():
    assert parse_min_tcb("bl=3, tee=0,snp=8,ucode=115") == dict(boot_loader=3, tee=0, snp=8, microcode=115)
    assert parse_min_tcb("fmc=1,microcode=0x47") == dict(fmc=1, microcode=0x47)
    with pytest.raises(InputError, match="--min-tcb gives 'bl' twice, 1 and 2; give each component once."):
        parse_min_tcb("bl=1,bl=2")
    with pytest.raises(InputError, match="--min-tcb gives 'ucode' twice, 115 and 114; give each component once."):
        parse_min_tcb("microcode=115,ucode=114")
    for bad in ("", "x=1", "snp", "snp=-1", "snp=256", "snp=a"):
        with pytest.raises(InputError, match="min-tcb"):
            parse_min_tcb(bad)


def test_resigned_report_with_changed_measurement_is_refused(chain):
    """Re-signing with a key that is not the VCEK does not help an attacker."""
    from cryptography.hazmat.primitives.asymmetric import ec
    report = parse_report(make_report(chain, measurement=b"\x11" * 48))
    forged = sign_report(record.replace(report, measurement=b"\x22" * 48),
                         ec.generate_private_key(ec.SECP384R1()))
    verdict = _verify_test(chain, forged, measurement=b"\x22" * 48)
    assert isinstance(verdict.check("signature").error, SignatureInvalid)
    assert status(verdict, "measurement") == PASS and not verdict.ok
    assert EcdsaSignature.SIZE == 0x200 and CHIP_ID[:2] == b"\x01\x02"
