"""Reading input files with errors a user can act on, and hashing them in a stream."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import InputError

_CHUNK = 1 << 20


def _open_error(path: str | Path, what: str, err: OSError) -> InputError:
    reason = err.strerror or str(err)
    return InputError(f"cannot read the {what} file {str(path)!r}: {reason}; check the path.")


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
