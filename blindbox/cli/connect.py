"""``blindbox connect``: verify a guest's attestation over TLS, then send one request (or forward).

Exit status: 0 verified and answered, 3 the endpoint failed a check, refused this client, or
no attested endpoint answered (nothing was sent), 2 bad input (including a manifest whose
runtime policy admits only listed client keys and no --client-key: nothing to try), 1 an
internal error.

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from measure import __version__
from measure.errors import InputError
from measure.inputs import read_input
from blindbox.audit.attested import RUNTIME_POLICY_DEBUG_CHECK, AttestationFailed, failed
from blindbox.audit.certs import collect_certificates, load_certificates
from blindbox.audit.connect import AttestedSession, ClientIdentity, client_identity, parse_listen, serve_forward
from blindbox.audit.errors import SignatureInvalid
from blindbox.audit.kds import KdsClient
from blindbox.audit.limits import (MAX_CERTIFICATE_FILE_BYTES, MAX_KEY_FILE_BYTES, MAX_MANIFEST_BYTES,
                                   MAX_SIGNATURE_FILE_BYTES)
from blindbox.audit.manifest import read_manifest, runtime_policy_of
from blindbox.audit.manifest_sig import SIGNATURE_SUFFIX, load_public_key, public_key_fingerprint, verify_manifest
from blindbox.audit.verify import FAIL, PASS, SKIP, Check, parse_min_tcb
from measure.runtime_policy import RuntimePolicy

from .params import HexBytes, Vmpl
from .policy import policy_json, policy_lines

_CTX = {"help_option_names": ["-h", "--help"]}
_STATUS = {PASS: "PASS", FAIL: "FAIL", SKIP: "skip"}
#: The largest request body --data sends.
MAX_DATA_BYTES = 64 * 1024 * 1024


def parse_url(url: str) -> tuple[str, int, str]:
    """``https://HOST:PORT/path``, ``HOST:PORT/path`` or ``HOST:PORT`` -> (host, port, path)."""
    text = url if "://" in url else f"https://{url}"
    parsed = urllib.parse.urlsplit(text)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "https" or not parsed.hostname or port is None:
        raise InputError(f"URL {url!r} is not https://HOST:PORT[/PATH]; give the attestation agent's address, "
                         f"e.g. https://127.0.0.1:8443/.")
    path = parsed.path or "/"
    if parsed.query:
        path += "?" + parsed.query
    return parsed.hostname, port, path


def parse_request(spec: str | None, default_path: str) -> tuple[str, str]:
    if spec is None:
        return "GET", default_path
    parts = spec.split()
    if len(parts) == 1 and parts[0].isalpha():
        return parts[0].upper(), default_path
    if len(parts) != 2 or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise InputError(f"--request {spec!r} is not 'METHOD /PATH'; give e.g. --request 'GET /health'.")
    return parts[0].upper(), parts[1]


def checked_manifest(manifest: Path, key: Path, key_sha256: bytes, signature: Path | None) -> tuple[bytes, Check]:
    """The manifest's bytes, after its signature verified exactly as verify-manifest checks it."""
    data = read_input(manifest, "manifest", limit=MAX_MANIFEST_BYTES)
    sig_path = signature or manifest.with_name(manifest.name + SIGNATURE_SUFFIX)
    sig = read_input(sig_path, "signature", limit=MAX_SIGNATURE_FILE_BYTES)
    public = load_public_key(key)
    fingerprint = public_key_fingerprint(public)
    if fingerprint != key_sha256.hex():
        raise SignatureInvalid(f"the public key {str(key)!r} has fingerprint sha256:{fingerprint}, not the pinned "
                               f"sha256:{key_sha256.hex()}; get the publisher's key from a trusted source.")
    algorithm = verify_manifest(data, sig, public, source=str(manifest))
    return data, Check("manifest.signature", PASS, f"{manifest} is signed by {algorithm} key sha256:{fingerprint}")


def _print_checks(checks: tuple[Check, ...]) -> None:
    width = max(len(c.name) for c in checks)
    for check in checks:
        click.echo(f"  {_STATUS[check.status]}  {check.name:<{width}}  {check.detail}", err=True)


@click.command("connect", context_settings=_CTX)
@click.argument("url")
@click.option("--manifest", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="The publisher's manifest.json: the guest's MEASUREMENT must be one of its digests.")
@click.option("--key", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="PEM",
              help="The publisher's public key (PEM or DER SubjectPublicKeyInfo).")
@click.option("--key-sha256", required=True, type=HexBytes(32, prefix="sha256:"), metavar="FINGERPRINT",
              help="The SHA-256 fingerprint the publisher's key must have (DER SubjectPublicKeyInfo).")
@click.option("--signature", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help=f"The manifest's signature (default: MANIFEST{SIGNATURE_SUFFIX}).")
@click.option("--trust-root", multiple=True, type=click.Path(dir_okay=False, path_type=Path), metavar="PEM",
              help="Also trust this root certificate (e.g. the simulated attester's test root). AMD's roots are "
                   "bundled and pinned; real guests never need this.")
@click.option("--certs", multiple=True, type=click.Path(path_type=Path), metavar="PATH",
              help="VCEK/VLEK/ASK/ARK certificates to use besides those the guest sends (file or directory). "
                   "Repeatable.")
@click.option("--fetch", is_flag=True,
              help="When neither the guest nor --certs supplies the VCEK, take it from the KDS cache or AMD's KDS.")
@click.option("--allow-debug", is_flag=True,
              help="Accept a guest whose SNP guest policy or runtime policy allows debugging (test guests only).")
@click.option("--min-tcb", metavar="SPEC", help="Minimum REPORTED_TCB per component, e.g. bl=3,tee=0,snp=8,ucode=115.")
@click.option("--vmpl", type=Vmpl(), metavar="N", help="Required VMPL of the report request (0-3).")
@click.option("--shape", metavar="ID", help="Accept only this shape's digest of the manifest.")
@click.option("--request", "request_spec", metavar="'METHOD /PATH'",
              help="The HTTP request to send after verification (default: GET and the URL's path).")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Send this file as the request body.")
@click.option("--json", "as_json", is_flag=True, help="Print every check and the reply as JSON.")
@click.option("--listen", metavar="HOST:PORT",
              help="Instead of one request, forward each local connection through its own verified session.")
@click.option("--client-key", type=click.Path(dir_okay=False, path_type=Path), metavar="PEM",
              help="Present this TLS client key (a PEM private key, e.g. from 'blindbox client-key new') to a guest "
                   "whose runtime policy lists client keys; an ephemeral self-signed certificate is made for it.")
@click.option("--client-cert", type=click.Path(dir_okay=False, path_type=Path), metavar="PEM",
              help="Present this certificate of --client-key instead of an ephemeral one.")
def connect(url, manifest, key, key_sha256, signature, trust_root, certs, fetch, allow_debug, min_tcb, vmpl,
            shape, request_spec, data, as_json, listen, client_key, client_cert):
    """Verify the attestation of the guest at URL (https://HOST:PORT[/PATH]), then talk to it.

    The manifest's signature is checked as verify-manifest does. Then, on a TLS 1.3
    connection, the guest's report must chain to AMD's pinned roots (or --trust-root),
    allow no debugging (unless --allow-debug), carry a MEASUREMENT the manifest publishes
    and bind this connection's TLS key, a fresh nonce and the manifest's runtime policy.
    The runtime policy is printed in plain words; a guest whose runtime policy lists client
    keys then checks --client-key. Only then is the request sent and the reply body
    printed. A failed check or a refused client key exits 3 and nothing is sent.
    """
    host, port, path = parse_url(url)
    if listen is not None and (request_spec is not None or data is not None):
        raise InputError("--listen forwards local connections; drop --request/--data, or --listen.")
    if client_cert is not None and client_key is None:
        raise InputError("--client-cert is the certificate of --client-key; give --client-key too.")
    method, req_path = parse_request(request_spec, path)
    min_tcb_spec = parse_min_tcb(min_tcb) if min_tcb is not None else None
    listen_addr = parse_listen(listen) if listen is not None else None
    body = read_input(data, "request body", limit=MAX_DATA_BYTES) if data is not None else None
    manifest_bytes, manifest_check = checked_manifest(manifest, key, key_sha256, signature)
    doc = read_manifest(manifest_bytes, str(manifest))
    runtime_policy = runtime_policy_of(doc)
    identity = _identity(client_key, client_cert)
    if runtime_policy is not None and runtime_policy.debug and not allow_debug:
        raise failed(RUNTIME_POLICY_DEBUG_CHECK, f"the runtime policy of {manifest} allows debugging (debug: true), "
                                                 f"which exposes the data inside the guest; pass --allow-debug only "
                                                 f"for a test guest")
    if runtime_policy is not None and runtime_policy.clients is not None and identity is None:
        raise InputError(f"the runtime policy of {manifest} admits only listed client keys "
                         f"({len(runtime_policy.clients)} listed), so the guest refuses a client without one; pass "
                         f"--client-key with a listed key ('blindbox show-policy {manifest}' lists them).")
    certificates, _ignored = collect_certificates(certs)
    roots = [c for p in trust_root
             for c in load_certificates(read_input(p, "trust root", limit=MAX_CERTIFICATE_FILE_BYTES), source=str(p))]

    def open_session() -> AttestedSession:
        return AttestedSession(host, port, manifest=manifest_bytes, manifest_source=str(manifest), shape=shape,
                               trust_roots=roots, certs=certificates, kds=KdsClient() if fetch else None,
                               allow_debug=allow_debug, vmpl=vmpl, min_tcb=min_tcb_spec, client=identity)

    if listen_addr is not None:
        _listen(listen_addr, open_session, as_json, doc["name"], runtime_policy)
        return

    session = open_session()
    try:
        try:
            session.connect()
        except AttestationFailed as e:
            if as_json:
                click.echo(json.dumps(_json(manifest_check, session, e, runtime_policy), indent=2))
            elif session.checks:
                _print_checks(session.checks)
            raise
        if not as_json:
            _print_policy(doc["name"], runtime_policy)
        status, headers, reply = session.request(method, req_path, body=body)
    finally:
        session.close()
    if as_json:
        out = _json(manifest_check, session, None, runtime_policy)
        out["response"] = {"status": status, "headers": [[k, v] for k, v in headers],
                           **_body_json(reply)}
        click.echo(json.dumps(out, indent=2))
        return
    if status >= 400:
        click.echo(f"blindbox: the attested endpoint answered HTTP {status}.", err=True)
    _write_body(reply)


def _write_body(reply: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(reply)
    sys.stdout.buffer.flush()


def _body_json(reply: bytes) -> dict[str, str]:
    try:
        return {"body": reply.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(reply).decode()}


def _identity(client_key: Path | None, client_cert: Path | None) -> ClientIdentity | None:
    if client_key is None:
        return None
    key_pem = read_input(client_key, "client key", limit=MAX_KEY_FILE_BYTES)
    cert_pem = None if client_cert is None else read_input(client_cert, "client certificate",
                                                           limit=MAX_CERTIFICATE_FILE_BYTES)
    return client_identity(key_pem, cert_pem, key_source=f"--client-key {client_key}",
                           cert_source=f"--client-cert {client_cert}")


def _print_policy(name: str, policy: RuntimePolicy | None) -> None:
    for line in policy_lines(name, policy):
        click.echo(line, err=True)
    sys.stderr.flush()


def _json(manifest_check: Check, session: AttestedSession, error: AttestationFailed | None,
          runtime_policy: RuntimePolicy | None) -> dict[str, Any]:
    verdict = session.verdict
    out: dict[str, Any] = verdict.to_json() if verdict is not None else {"verdict": FAIL, "checks": []}
    out["checks"] = [manifest_check.to_json(), *out["checks"]]
    if session.client_check is not None:
        out["checks"].append(session.client_check.to_json())
        if session.client_check.status == FAIL:
            out["verdict"] = FAIL
    out["runtime_policy"] = policy_json(runtime_policy)
    out["client_key"] = None if session.client is None else session.client.spki_sha256
    out["endpoint"] = f"{session.host}:{session.port}"
    out["nonce"] = None if session.nonce is None else session.nonce.hex()
    out["error"] = None if error is None else {"check": error.check, "message": str(error)}
    out["tool"] = {"name": "blindbox-guest", "version": __version__}
    return out


def _listen(addr: tuple[str, int], open_session: Callable[[], AttestedSession], as_json: bool, name: str,
            runtime_policy: RuntimePolicy | None) -> None:
    def on_event(what: str, session: AttestedSession | None, error: Exception | None) -> None:
        if as_json:
            doc: dict[str, Any] = {"event": what, "error": None if error is None else str(error)}
            if session is not None and session.verdict is not None:
                doc["checks"] = [c.to_json() for c in session.checks]
                doc["runtime_policy"] = policy_json(runtime_policy)
            click.echo(json.dumps(doc), err=True)
        elif error is not None:
            click.echo(f"blindbox: connection refused to the local client: {error}", err=True)
        else:
            click.echo("blindbox: verified a new attested session; relaying.", err=True)

    server = serve_forward(addr, open_session, on_event=on_event)
    host, port = server.address
    click.echo(f"blindbox: forwarding {host}:{port} through attested sessions (Ctrl-C stops).", err=True)
    if not as_json:      # every session verifies that the guest binds exactly this policy
        _print_policy(name, runtime_policy)
    sys.stderr.flush()
    try:
        server.serve_forever()
    finally:
        server.close()
