"""``blindbox show-policy`` and ``blindbox client-key``: a bundle's runtime policy in plain words, and
the TLS client keys its ``clients`` list names.

Exit status: 0 done, 2 bad input (an unreadable bundle, a file that is no key, a key file that
already exists), 3 a manifest that breaks its schema, 1 an internal error.

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from measure.errors import InputError
from measure.inputs import read_input
from measure.runtime_policy import RuntimePolicy, describe, runtime_policy_sha256, to_json_value
from blindbox.audit.connect import new_client_key, pem_digest
from blindbox.audit.limits import MAX_KEY_FILE_BYTES, MAX_MANIFEST_BYTES
from blindbox.audit.manifest import read_manifest, runtime_policy_of
from blindbox.files import write_atomic

_CTX = {"help_option_names": ["-h", "--help"]}


def policy_lines(name: str, policy: RuntimePolicy | None) -> list[str]:
    """What show-policy and connect print: a heading and the plain-word statements."""
    if policy is None:
        return [f"{name} has no runtime policy: its application is not restricted by a runtime policy (any "
                f"attested client may query it, and nothing limits where it sends data)."]
    return ([f"Runtime policy of {name} (sha256 {runtime_policy_sha256(policy).hex()}):"]
            + [f"  - {line}" for line in describe(policy)])


def policy_json(policy: RuntimePolicy | None) -> dict[str, Any] | None:
    if policy is None:
        return None
    return {"sha256": runtime_policy_sha256(policy).hex(), "policy": to_json_value(policy),
            "description": describe(policy)}


@click.command("show-policy", context_settings=_CTX)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the policy, its digest and its description as JSON.")
def show_policy(bundle: Path, as_json: bool) -> None:
    """Print the runtime policy of BUNDLE (a bundle directory or its manifest.json) in plain words."""
    manifest = bundle / "manifest.json" if bundle.is_dir() else bundle
    doc = read_manifest(read_input(manifest, "manifest", limit=MAX_MANIFEST_BYTES), str(manifest))
    policy = runtime_policy_of(doc)
    if as_json:
        click.echo(json.dumps({"name": doc["name"], "manifest": str(manifest), "runtime_policy": policy_json(policy)},
                              indent=2))
        return
    for line in policy_lines(doc["name"], policy):
        click.echo(line)


@click.group("client-key", context_settings=_CTX)
def client_key() -> None:
    """Make a TLS client key for `blindbox connect --client-key`, or print a key's digest for
    a runtime policy's `clients` list."""


@client_key.command("new", context_settings=_CTX)
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the path and the digest as JSON.")
def client_key_new(path: Path, as_json: bool) -> None:
    """Write a new P-256 private key to PATH (PEM, mode 0600; never overwrites) and print its
    SHA-256 (of the SubjectPublicKeyInfo), the value to list in runtime_policy.clients."""
    if path.exists() or path.is_symlink():
        raise InputError(f"{str(path)!r} already exists; client-key new never overwrites a key, so choose "
                         f"another path.")
    pem = new_client_key()
    digest = pem_digest(pem, str(path))
    write_atomic(path, pem, what="client key", mode=0o600)
    if as_json:
        click.echo(json.dumps({"path": str(path), "sha256": digest}, indent=2))
    else:
        click.echo(digest)


@client_key.command("digest", context_settings=_CTX)
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the path and the digest as JSON.")
def client_key_digest(path: Path, as_json: bool) -> None:
    """Print the SHA-256 of the SubjectPublicKeyInfo of the key in PATH (a PEM private key, public
    key or certificate): the value to list in runtime_policy.clients."""
    digest = pem_digest(read_input(path, "client key", limit=MAX_KEY_FILE_BYTES), str(path))
    if as_json:
        click.echo(json.dumps({"path": str(path), "sha256": digest}, indent=2))
    else:
        click.echo(digest)
