"""Reading the auditor's private keys (ID block keys, manifest signing keys) with errors a user can act on.

Depends on :mod:`measure.inputs` for the bounded read, and on ``cryptography``.

It never imports :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from measure.errors import InputError
from measure.inputs import read_input

from .limits import MAX_KEY_FILE_BYTES


def read_private_key(path: str | Path, what: str) -> PrivateKeyTypes:
    """An unencrypted private key from a PEM or DER file, any algorithm (callers check which)."""
    data = read_input(path, what, limit=MAX_KEY_FILE_BYTES)
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise InputError(f"the {what} {str(path)!r} is encrypted; decrypt it first "
                         f"(openssl pkey -in KEY -out PLAIN).") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise InputError(f"the {what} {str(path)!r} is not a private key in PEM or DER ({e}).") from None
