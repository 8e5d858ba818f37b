"""Reading input files with errors a user can act on, and hashing them in a stream.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

from .errors import InputError
from .limits import DEFAULT_READ_LIMIT, MAX_STREAM_BYTES

TYPE_CHECKING = False  # importing typing costs ~2 ms (bench/targets.py); type checkers read the block
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any, TypeVar

    T = TypeVar("T")

_CHUNK = 1 << 20


def in_background(fn: Callable[..., T], *args: Any) -> Callable[[], T]:
    """Start ``fn(*args)`` in a thread; the returned function waits for it and returns its
    result or raises its exception, as if ``fn`` had been called there.

    hashlib releases the interpreter lock while it hashes a buffer, so hashing one input
    in the background overlaps with hashing another in the caller.  The thread is a
    daemon: a caller that fails before waiting does not keep the process alive.
    """
    import threading  # imported when a launch is measured, not with the calculator

    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, fn(*args)))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller as is
            box.append((False, e))

    thread = threading.Thread(target=run, name=f"blindbox-{getattr(fn, '__name__', 'hash')}", daemon=True)
    thread.start()

    def wait() -> T:
        thread.join()
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    return wait


def _open_error(path: str | Path, what: str, err: OSError) -> InputError:
    reason = err.strerror or str(err)
    return InputError(f"cannot read the {what} file {str(path)!r}: {reason}; check the path.")


def too_large(path: str | Path, what: str, limit: int) -> InputError:
    """The error for an input over its documented size limit (docs/limits.md)."""
    return InputError(f"the {what} file {str(path)!r} is larger than {limit:,} bytes, more than any "
                      f"{what} can be (docs/limits.md); give the right file.")


def is_fifo_or_socket(path: str | Path) -> bool:
    """Whether ``path`` is a FIFO or a socket, found without opening it (opening a FIFO that
    nobody writes to waits for ever).  A missing or unreadable path is not: the read names it."""
    try:
        return stat.S_IFMT(os.stat(path).st_mode) in (stat.S_IFIFO, stat.S_IFSOCK)
    except (OSError, ValueError):
        return False


def read_bounded(path: str | Path, what: str, limit: int) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them; OSError (IsADirectoryError for a
    directory) propagates for callers with their own wording, a larger input is refused.

    A regular file is refused by its size before it is read; a pipe or device is read
    up to ``limit + 1`` bytes, so ``/dev/zero`` costs at most that much memory and time.
    A regular file is read with a buffer of its own size (plus one byte, to see a file
    that grew since): asking for ``limit + 1`` bytes would make Python allocate the whole
    limit and fault in its pages, ten times the cost of reading a 4 MiB firmware.
    """
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if stat.S_ISREG(st.st_mode):
            if st.st_size > limit:
                raise too_large(path, what, limit)
            data = fh.read(st.st_size + 1)
            if len(data) > st.st_size:
                data += fh.read(limit + 1 - len(data))
        else:
            data = fh.read(limit + 1)
    if len(data) > limit:
        raise too_large(path, what, limit)
    return data


def read_input(path: str | Path, what: str, *, limit: int = DEFAULT_READ_LIMIT) -> bytes:
    """Read a whole input of at most ``limit`` bytes (see :func:`read_bounded`)."""
    try:
        return read_bounded(path, what, limit)
    except IsADirectoryError as e:
        raise InputError(f"the {what} path {str(path)!r} is a directory; give a file.") from e
    except OSError as e:
        raise _open_error(path, what, e) from e


def file_digest(path: str | Path, what: str, algorithm: str = "sha256") -> bytes:
    """Digest of a file read in 1 MiB chunks (kernels and initrds can be large).

    A regular file is hashed whatever its size; anything else (a pipe, a device) is
    hashed up to :data:`~measure.limits.MAX_STREAM_BYTES` and refused beyond, since a
    stream such as ``/dev/zero`` never ends.
    """
    h = hashlib.new(algorithm)
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError
            left = None if stat.S_ISREG(st.st_mode) else MAX_STREAM_BYTES + 1
            while chunk := fh.read(_CHUNK if left is None else min(_CHUNK, left)):
                h.update(chunk)
                if left is not None:
                    left -= len(chunk)
                    if not left:
                        raise InputError(
                            f"the {what} {str(path)!r} is not a regular file and gives more than "
                            f"{MAX_STREAM_BYTES:,} bytes (docs/limits.md); write it to a file and "
                            f"give that file.")
    except IsADirectoryError as e:
        raise InputError(f"the {what} path {str(path)!r} is a directory; give a file.") from e
    except OSError as e:
        raise _open_error(path, what, e) from e
    return h.digest()
