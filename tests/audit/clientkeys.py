"""TLS client keys for tests of a runtime policy's ``clients`` list (and for a guest built with one).

:func:`new_client_key_file` writes a key as ``blindbox client-key new`` does and returns the
digest to list in ``runtime_policy.clients``; :func:`lying_identity` is a client that presents
one key's certificate but holds another key, to show that the agent checks possession.
"""

from __future__ import annotations

import os
from pathlib import Path

from blindbox.audit.connect import ClientIdentity, client_identity, new_client_key, pem_digest


def new_client_key_file(path: Path) -> str:
    """A fresh P-256 key in ``path`` (PEM, 0600); returns its SPKI SHA-256 (hex) for runtime_policy.clients."""
    pem = new_client_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return pem_digest(pem, str(path))


def identity(path: Path) -> ClientIdentity:
    """The identity `blindbox connect --client-key PATH` presents (an ephemeral self-signed certificate)."""
    return client_identity(path.read_bytes(), key_source=str(path))


def lying_identity(claimed: Path, held: Path) -> ClientIdentity:
    """Presents the certificate of the key in ``claimed`` but can prove possession only of ``held``."""
    shown, real = identity(claimed), identity(held)
    return ClientIdentity(cert_der=shown.cert_der, cert_pem=real.cert_pem, key_pem=real.key_pem)
