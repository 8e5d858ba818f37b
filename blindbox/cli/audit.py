"""Auditor commands: ``verify-report``, ``id-block``, ``sign-manifest``, ``verify-manifest``.

Exit status: 0 every requested check passed, 3 a signature, chain or check failed, 2 the
input is unreadable or malformed, 1 an internal error.

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import click

from measure import __version__
from blindbox.audit.certs import collect_certificates, load_certificates
from measure.errors import InputError
from blindbox.audit.idblock import DEFAULT_GUEST_SVN, DEFAULT_POLICY, create_id_block, load_private_key
from measure.inputs import read_input
from blindbox.audit.limits import (MAX_CERTIFICATE_FILE_BYTES, MAX_ENVELOPE_BYTES, MAX_MANIFEST_BYTES,
                                   MAX_PROVENANCE_BYTES, MAX_REPORT_FILE_BYTES, MAX_SIGNATURE_FILE_BYTES)
from blindbox.audit.dsse import ENVELOPE_SUFFIX, envelope_path_for, read_envelope, sign_envelope, verify_envelope
from blindbox.audit.provenance import STATEMENT_TYPE
from blindbox.audit.kds import Fetched, KdsClient, fetch_missing
from blindbox.audit.manifest_sig import (SIGNATURE_SUFFIX, load_private_key as load_signing_key, load_public_key,
                                         public_key_fingerprint, sign_manifest, verify_manifest)
from blindbox.files import refuse_inputs, write_all_atomic, write_atomic
from blindbox.audit.report import Product, SigningKey, cpuid_product, parse_report, signing_key as report_signing_key
from blindbox.audit.verify import (FAIL, PASS, SKIP, UNAUTHENTICATED, Requirements, VerifyRequest, load_manifest,
                                   parse_min_tcb, verify_report)

from .params import GuestPolicy, HexBytes, Svn, Vmpl

_CTX = {"help_option_names": ["-h", "--help"]}


def _time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InputError(f"--at {value!r} is not an ISO 8601 time; give e.g. 2025-06-01 or "
                         f"2025-06-01T12:00:00Z (UTC when no zone is given).") from None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


_STATUS = {PASS: "PASS", FAIL: "FAIL", SKIP: "skip"}


@click.command("verify-report", context_settings=_CTX)
@click.argument("report", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--certs", multiple=True, type=click.Path(path_type=Path), metavar="PATH",
              help="The VCEK or VLEK (and any ASK/ASVK/ARK): a DER or PEM file, or a directory of "
                   "them. Repeatable.")
@click.option("--trust-root", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="PEM", help="Also trust this root certificate (e.g. a test chain's). AMD's "
                                  "roots are bundled and pinned; real reports never need this.")
@click.option("--product", type=click.Choice([p.value for p in Product], case_sensitive=False),
              help="The AMD product, for version 2 reports whose certificate does not name it.")
@click.option("--at", "at", metavar="TIME",
              help="Check certificate validity at this time (ISO 8601, UTC by default) instead of now.")
@click.option("--no-signature", is_flag=True,
              help="Check report fields only; nothing then proves the report comes from AMD hardware, "
                   "and the verdict is UNAUTHENTICATED, never PASS.")
@click.option("--measurement", type=HexBytes(48, base64_ok=True), metavar="HEX",
              help="Expected MEASUREMENT (96 hex digits or base64).")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="manifest.json: MEASUREMENT must equal one of its digests; matching shapes are printed.")
@click.option("--shape", metavar="ID", help="With --manifest: accept only this shape's digest.")
@click.option("--host-data", type=HexBytes(32), metavar="HEX", help="Expected HOST_DATA (32 bytes).")
@click.option("--report-data", type=HexBytes(64), metavar="HEX", help="Expected REPORT_DATA (64 bytes).")
@click.option("--id-key-digest", type=HexBytes(48, base64_ok=True), metavar="HEX",
              help="Expected ID_KEY_DIGEST (48 bytes).")
@click.option("--author-key-digest", type=HexBytes(48, base64_ok=True), metavar="HEX",
              help="Expected AUTHOR_KEY_DIGEST (48 bytes).")
@click.option("--family-id", type=HexBytes(16), metavar="HEX", help="Expected FAMILY_ID (16 bytes).")
@click.option("--image-id", type=HexBytes(16), metavar="HEX", help="Expected IMAGE_ID (16 bytes).")
@click.option("--allow-debug", is_flag=True, help="Accept a guest whose policy allows debugging.")
@click.option("--policy", type=GuestPolicy(), help="Expected GUEST_POLICY, exactly (e.g. 0x30000).")
@click.option("--vmpl", type=Vmpl(), help="Expected VMPL of the report request (0-3).")
@click.option("--min-tcb", metavar="SPEC",
              help="Minimum REPORTED_TCB per component, e.g. bl=3,tee=0,snp=8,ucode=115 (fmc= on Turin).")
@click.option("--min-guest-svn", type=Svn(), metavar="N", help="Minimum GUEST_SVN.")
@click.option("--signing-key", type=click.Choice(["vcek", "vlek"], case_sensitive=False),
              help="Require this kind of signing key.")
@click.option("--fetch", "fetch", is_flag=True,
              help="When --certs holds no VCEK, get it from AMD's KDS ($BLINDBOX_KDS_URL overrides the "
                   "address) and cache it; a VLEK cannot be fetched.")
@click.option("--offline", is_flag=True, help="With --fetch: use only certificates already in the KDS cache.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable verdict.")
def verify_report_cmd(report, certs, trust_root, product, at, no_signature, measurement, manifest, shape,
                      host_data, report_data, id_key_digest, author_key_digest, family_id, image_id,
                      allow_debug, policy, vmpl, min_tcb, min_guest_svn, signing_key, fetch, offline,
                      as_json):
    """Verify an SEV-SNP attestation REPORT (binary or hex) and check what it claims.

    The signature chain (VCEK -> ASK -> ARK, or VLEK -> ASVK -> ARK) must end at AMD's
    bundled, fingerprint-pinned roots. Every check is listed by name. Exit 0 when all
    pass, 3 when one fails, 2 for unreadable or malformed input.
    """
    if shape is not None and manifest is None:
        raise InputError("--shape narrows --manifest; give --manifest too.")
    if no_signature and (certs or trust_root or fetch):
        raise InputError("--no-signature skips the certificates; drop --certs/--trust-root/--fetch or "
                         "--no-signature.")
    if offline and not fetch:
        raise InputError("--offline restricts --fetch to the KDS cache; give --fetch too.")
    entries = None
    if manifest is not None:
        entries = load_manifest(read_input(manifest, "manifest", limit=MAX_MANIFEST_BYTES), source=str(manifest))
    need = Requirements(
        measurement=measurement,
        manifest=entries, manifest_source=str(manifest) if manifest else "manifest.json", shape=shape,
        host_data=host_data, report_data=report_data, id_key_digest=id_key_digest,
        author_key_digest=author_key_digest, family_id=family_id, image_id=image_id,
        allow_debug=allow_debug, policy=policy, vmpl=vmpl,
        min_tcb=parse_min_tcb(min_tcb) if min_tcb is not None else None,
        min_guest_svn=min_guest_svn,
        signing_key=SigningKey[signing_key.upper()] if signing_key else None,
        product=Product.parse(product) if product else None,
    )
    certificates, ignored = collect_certificates(certs)
    roots = [c for path in trust_root
             for c in load_certificates(read_input(path, "trust root", limit=MAX_CERTIFICATE_FILE_BYTES),
                                        source=str(path))]
    report_bytes = read_input(report, "attestation report", limit=MAX_REPORT_FILE_BYTES)
    fetched: tuple[Fetched, ...] = ()
    if fetch:
        parsed = parse_report(report_bytes, what=str(report))
        fetched = fetch_missing(parsed, certificates, cpuid_product(parsed) or need.product,
                                KdsClient(offline=offline))
        certificates += [c for f in fetched for c in f.certificates]
    verdict = verify_report(VerifyRequest(
        report=report_bytes, certificates=tuple(certificates),
        trust_roots=tuple(roots), at=_time(at), check_signature=not no_signature,
        requirements=need, report_source=str(report)))

    if as_json:
        out = verdict.to_json()
        out["ignored_files"] = ignored
        out["fetched"] = [f.to_json() for f in fetched]
        out["tool"] = {"name": "blindbox-guest", "version": __version__}
        click.echo(json.dumps(out, indent=2))
    else:
        r = verdict.report
        product_text = f"{verdict.product.value} ({verdict.product_source})" if verdict.product else \
            "unknown product"
        click.echo(f"report: version {r.version}, {product_text}, signing key {report_signing_key(r).name}, "
                   f"measurement {r.measurement.hex()}")
        for path in ignored:
            click.echo(f"  (ignored {path}: not a certificate)")
        for f in fetched:
            click.echo(f"  ({f.describe()})")
        width = max(len(c.name) for c in verdict.checks)
        for check in verdict.checks:
            click.echo(f"  {_STATUS[check.status]}  {check.name:<{width}}  {check.detail}")
        if verdict.matching_shapes:
            click.echo(f"matching shapes: {', '.join(verdict.matching_shapes)}")
        counts = {s: sum(c.status == s for c in verdict.checks) for s in (PASS, FAIL, SKIP)}
        summary = f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped"
        if verdict.outcome == UNAUTHENTICATED:
            click.echo(f"verdict: UNAUTHENTICATED ({summary}): every requested check passed, but the "
                       f"signature was not checked (--no-signature), so nothing proves that this report "
                       f"comes from AMD hardware")
        else:
            unchecked = "" if verdict.signature_checked else "; the signature was not checked (--no-signature)"
            click.echo(f"verdict: {'PASS' if verdict.ok else 'FAIL'} ({summary}){unchecked}")
    if not verdict.ok:
        error = verdict.failures[0].error
        assert error is not None  # every failed check carries its error
        raise error


def _measurement_arg(positional: bytes | None, option: bytes | None) -> bytes:
    if positional is not None and option is not None and positional != option:
        raise InputError("give the launch digest once, as MEASUREMENT or --measurement.")
    value = positional if positional is not None else option
    if value is None:
        raise InputError("give the launch digest (MEASUREMENT, 96 hex digits or base64), e.g. from "
                         "blindbox measure.")
    return value


@click.command("id-block", context_settings=_CTX)
@click.argument("measurement_arg", metavar="MEASUREMENT", required=False, type=HexBytes(48, base64_ok=True))
@click.option("--measurement", type=HexBytes(48, base64_ok=True), metavar="DIGEST",
              help="Same as MEASUREMENT (snp-create-id-block spelling).")
@click.option("--id-key", "--idkey", "id_key", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="PEM", help="ID private key (ECDSA P-384).")
@click.option("--author-key", "--authorkey", "author_key", type=click.Path(dir_okay=False, path_type=Path),
              metavar="PEM", help="Author private key (ECDSA P-384); optional.")
@click.option("--family-id", type=HexBytes(16), metavar="HEX", help="FAMILY_ID, 16 bytes (default zero).")
@click.option("--image-id", type=HexBytes(16), metavar="HEX", help="IMAGE_ID, 16 bytes (default zero).")
@click.option("--guest-svn", type=Svn(), default=DEFAULT_GUEST_SVN, show_default=True,
              help="GUEST_SVN.")
@click.option("--policy", type=GuestPolicy(), default=DEFAULT_POLICY, show_default="0x30000",
              help="Guest POLICY the launch must use.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also write id_block.bin and id_auth.bin (raw) there.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def id_block_cmd(measurement_arg, measurement, id_key, author_key, family_id, image_id, guest_svn, policy,
                 out_dir, as_json):
    """Create the ID block and ID auth for a launch digest MEASUREMENT (hex or base64).

    Signatures are deterministic (RFC 6979): the same inputs give the same bytes. With
    sev-snp-measure's defaults (zero IDs, SVN 0, policy 0x30000) the ID block is
    identical to its snp-create-id-block output. Prints QEMU's sev-snp-guest options.
    """
    digest = _measurement_arg(measurement_arg, measurement)
    id_priv = load_private_key(id_key, "ID key")
    author_priv = load_private_key(author_key, "author key") if author_key is not None else None
    result = create_id_block(digest, id_priv, author_priv,
                             family_id=family_id, image_id=image_id,
                             guest_svn=guest_svn, policy=policy)
    block_b64 = base64.b64encode(result.id_block_bytes).decode()
    auth_b64 = base64.b64encode(result.id_auth_bytes).decode()
    qemu = f"id-block={block_b64},id-auth={auth_b64}"
    if author_priv is not None:
        qemu += ",author-key-enabled=on"
    if out_dir is not None:
        outputs = [(out_dir / "id_block.bin", result.id_block_bytes), (out_dir / "id_auth.bin", result.id_auth_bytes)]
        for path, _ in outputs:
            refuse_inputs(path, [("ID key", id_key), ("author key", author_key)], "--out-dir")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create --out-dir {str(out_dir)!r}: {e.strerror or e}; check "
                             f"the path and permissions.") from None
        write_all_atomic(outputs, what="ID block file")
    if as_json:
        click.echo(json.dumps({
            "measurement": digest.hex(),
            "family_id": result.id_block.family_id.hex(),
            "image_id": result.id_block.image_id.hex(),
            "guest_svn": guest_svn,
            "policy": f"{policy:#x}",
            "id_block": block_b64,
            "id_auth": auth_b64,
            "qemu_sev_snp_guest": qemu,
            "id_key_digest": result.id_key_digest.hex(),
            "author_key_digest": None if result.author_key_digest is None else result.author_key_digest.hex(),
            "files": None if out_dir is None else [str(out_dir / "id_block.bin"), str(out_dir / "id_auth.bin")],
        }, indent=2))
        return
    click.echo(qemu)
    click.echo(f"id_key_digest: {result.id_key_digest.hex()}")
    if result.author_key_digest is not None:
        click.echo(f"author_key_digest: {result.author_key_digest.hex()}")


def _statement(path: Path) -> bytes:
    """The bytes of an in-toto statement file (refused when it is not one)."""
    data = read_input(path, "provenance", limit=MAX_PROVENANCE_BYTES)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"--provenance {str(path)!r} is not UTF-8 JSON ({e}); give a bundle's "
                         f"provenance.intoto.json.") from None
    if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_TYPE:
        raise InputError(f"--provenance {str(path)!r} is not an in-toto statement (its _type is not "
                         f"{STATEMENT_TYPE}); give a bundle's provenance.intoto.json.")
    return data


@click.command("sign-manifest", context_settings=_CTX)
@click.argument("manifest", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="PEM",
              help="Publisher's private key: ECDSA P-384 or Ed25519.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help=f"Signature file (default: MANIFEST{SIGNATURE_SUFFIX}).")
@click.option("--provenance", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also (or only) sign this provenance.intoto.json, as a DSSE envelope.")
@click.option("--envelope", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help=f"With --provenance: the envelope file (default: provenance.intoto{ENVELOPE_SUFFIX} beside it).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sign_manifest_cmd(manifest, key, output, provenance, envelope, as_json):
    """Write a detached signature over the exact bytes of MANIFEST, and with --provenance
    a DSSE envelope around the bundle's in-toto provenance statement.

    ECDSA P-384 signatures are DER over SHA-384 (deterministic, RFC 6979); Ed25519
    signatures are the raw 64 bytes. openssl alone verifies both (docs/auditing.md). The
    envelope (docs/provenance.md) is signed with the same key over DSSE's PAE encoding.
    """
    if manifest is None and provenance is None:
        raise InputError("give the MANIFEST to sign, --provenance FILE, or both.")
    if output is not None and manifest is None:
        raise InputError("--output names the manifest's signature file; give MANIFEST too, or drop --output.")
    if envelope is not None and provenance is None:
        raise InputError("--envelope names the provenance's envelope file; give --provenance too, or drop "
                         "--envelope.")
    inputs = [("manifest", manifest), ("signing key", key), ("provenance", provenance)]
    if manifest is not None:
        output = output or manifest.with_name(manifest.name + SIGNATURE_SUFFIX)
        refuse_inputs(output, inputs, "--output")
    if provenance is not None:
        envelope = envelope or provenance.with_name(envelope_path_for(provenance.name))
        refuse_inputs(envelope, inputs, "--envelope")
        if output is not None:
            refuse_inputs(envelope, [("manifest signature file", output)], "--envelope")
    signing_key = load_signing_key(key)
    result = None
    if manifest is not None:
        data = read_input(manifest, "manifest", limit=MAX_MANIFEST_BYTES)
        result = sign_manifest(data, signing_key)
    sealed = None
    if provenance is not None:
        statement = _statement(provenance)
        sealed = sign_envelope(statement, signing_key)
    if result is not None:
        write_atomic(output, result.signature, what="signature file")
    if sealed is not None:
        write_atomic(envelope, sealed.data, what="envelope file")
    if as_json:
        out: dict = {}
        if result is not None:
            out.update({"manifest": str(manifest), "manifest_sha256": result.manifest_sha256,
                        "signature": str(output), "algorithm": result.algorithm, "key_sha256": result.key_sha256})
        if sealed is not None:
            out["provenance"] = {"statement": str(provenance),
                                 "statement_sha256": hashlib.sha256(sealed.payload).hexdigest(),
                                 "envelope": str(envelope), "payload_type": sealed.payload_type,
                                 "algorithm": sealed.algorithm, "key_sha256": sealed.key_sha256}
        click.echo(json.dumps(out, indent=2))
        return
    if result is not None:
        click.echo(f"signed {manifest} (sha256 {result.manifest_sha256}) with {result.algorithm} key "
                   f"sha256:{result.key_sha256}; signature written to {output}")
    if sealed is not None:
        click.echo(f"signed {provenance} (sha256 {hashlib.sha256(sealed.payload).hexdigest()}) as a DSSE envelope "
                   f"({sealed.payload_type}) with {sealed.algorithm} key sha256:{sealed.key_sha256}; envelope "
                   f"written to {envelope}")


@click.command("verify-manifest", context_settings=_CTX)
@click.argument("manifest", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="PEM",
              help="Publisher's public key (PEM or DER SubjectPublicKeyInfo).")
@click.option("--signature", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help=f"Signature file (default: MANIFEST{SIGNATURE_SUFFIX}).")
@click.option("--provenance", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also (or only) check that this provenance.intoto.json is what its DSSE envelope signs.")
@click.option("--envelope", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help=f"The DSSE envelope (default with --provenance: provenance.intoto{ENVELOPE_SUFFIX} beside it); "
                   f"alone, check the envelope's signature only.")
@click.option("--key-sha256", type=HexBytes(32, prefix="sha256:"), metavar="HEX",
              help="Also require the public key to have this SHA-256 fingerprint (DER SubjectPublicKeyInfo).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify_manifest_cmd(manifest, key, signature, provenance, envelope, key_sha256, as_json):
    """Check the detached signature over MANIFEST with the publisher's public key, and with
    --provenance (or --envelope) the DSSE envelope of the bundle's provenance statement.

    Exit 0 when everything asked verifies, 3 when any byte of the manifest, statement,
    signature or envelope changed or the key differs, 2 when a file is unreadable.
    """
    from blindbox.audit.errors import SignatureInvalid

    if manifest is None and provenance is None and envelope is None:
        raise InputError("give the MANIFEST to check, --provenance FILE (or --envelope FILE), or both.")
    if signature is not None and manifest is None:
        raise InputError("--signature is the manifest's signature file; give MANIFEST too, or drop --signature.")
    data = sig = statement = sealed = None
    sig_path = env_path = None
    if manifest is not None:
        data = read_input(manifest, "manifest", limit=MAX_MANIFEST_BYTES)
        sig_path = signature or manifest.with_name(manifest.name + SIGNATURE_SUFFIX)
        sig = read_input(sig_path, "signature", limit=MAX_SIGNATURE_FILE_BYTES)
    if provenance is not None or envelope is not None:
        statement = _statement(provenance) if provenance is not None else None
        env_path = envelope or provenance.with_name(envelope_path_for(provenance.name))
        sealed = read_input(env_path, "envelope", limit=MAX_ENVELOPE_BYTES)
        read_envelope(sealed, str(env_path))   # malformed: bad input, before any verdict
    public = load_public_key(key)
    fingerprint = public_key_fingerprint(public)
    error = env_error = None
    algorithm = None
    if key_sha256 is not None and fingerprint != key_sha256.hex():
        error = env_error = SignatureInvalid(
            f"the public key {str(key)!r} has fingerprint sha256:{fingerprint}, not the pinned "
            f"sha256:{key_sha256.hex()}; get the publisher's key from a trusted source.")
    else:
        if data is not None and sig is not None:
            try:
                algorithm = verify_manifest(data, sig, public, source=str(manifest))
            except SignatureInvalid as e:
                error = e
        if sealed is not None:
            try:
                opened = verify_envelope(sealed, public, source=str(env_path))
                algorithm = algorithm or opened.algorithm
                if statement is not None and opened.payload != statement:
                    raise SignatureInvalid(
                        f"{env_path} is signed by the key, but over another statement than {provenance} "
                        f"(sha256 {hashlib.sha256(opened.payload).hexdigest()}, the file has "
                        f"{hashlib.sha256(statement).hexdigest()}): the provenance was changed after it was "
                        f"signed; do not trust it.")
            except SignatureInvalid as e:
                env_error = e
    failed = error if data is not None and error is not None else env_error
    if as_json:
        out: dict = {"verdict": FAIL if failed else PASS}
        if data is not None:
            out.update({"manifest": str(manifest), "signature": str(sig_path)})
        out.update({"algorithm": algorithm, "key_sha256": fingerprint,
                    "error": None if failed is None else str(failed)})
        if sealed is not None:
            out["provenance"] = {"verdict": FAIL if env_error else PASS,
                                 "statement": None if provenance is None else str(provenance),
                                 "envelope": str(env_path), "error": None if env_error is None else str(env_error)}
        click.echo(json.dumps(out, indent=2))
    else:
        if data is not None and error is None:
            click.echo(f"OK: {manifest} is signed by {algorithm} key sha256:{fingerprint}")
        if sealed is not None and env_error is None:
            what = f"{provenance} is the statement" if provenance is not None else "it holds a statement"
            click.echo(f"OK: {env_path} verifies with {algorithm} key sha256:{fingerprint}; {what} it signs")
    if failed is not None:
        raise failed
