"""Reading input files with errors a user can act on, and hashing them in a stream."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:  # not imported at run time: the calculator does not need cryptography
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

_CHUNK = 1 << 20


def _open_error(path: str | Path, what: str, err: OSError) -> InputError:
    reason = err.strerror or str(err)
    return InputError(f"cannot read the {what} file {str(path)!r}: {reason}; check the path.")


def cache_root() -> Path:
    """The blindbox cache: ``$BLINDBOX_CACHE``, else ``$XDG_CACHE_HOME/blindbox``, else ``~/.cache/blindbox``."""
    env = os.environ.get("BLINDBOX_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "blindbox"
    return Path.home() / ".cache" / "blindbox"


def read_input(path: str | Path, what: str) -> bytes:
    """Read a whole (small) input such as a firmware image."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except IsADirectoryError as e:
        raise InputError(f"the {what} path {str(path)!r} is a directory; give a file.") from e
    except OSError as e:
        raise _open_error(path, what, e) from e


def file_digest(path: str | Path, what: str, algorithm: str = "sha256") -> bytes:
    """Digest of a file read in 1 MiB chunks (kernels and initrds can be large)."""
    h = hashlib.new(algorithm)
    try:
        with open(path, "rb") as fh:
            if os.path.isdir(path):
                raise IsADirectoryError
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    except IsADirectoryError as e:
        raise InputError(f"the {what} path {str(path)!r} is a directory; give a file.") from e
    except OSError as e:
        raise _open_error(path, what, e) from e
    return h.digest()


def read_private_key(path: str | Path, what: str) -> PrivateKeyTypes:
    """An unencrypted private key from a PEM or DER file, any algorithm (callers check which)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = read_input(path, what)
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise InputError(f"the {what} {str(path)!r} is encrypted; decrypt it first "
                         f"(openssl pkey -in KEY -out PLAIN).") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise InputError(f"the {what} {str(path)!r} is not a private key in PEM or DER ({e}).") from None
