"""Writing output files: never over one of the command's inputs, always atomically.

Every command that writes a file goes through this module:

* :func:`refuse_inputs` refuses an output path that is, or resolves to, one of the
  command's inputs: the same path, a symlink to it, or a hard link to it (same device
  and inode);
* :func:`write_atomic` writes one file through a temporary file in the same directory,
  fsync and ``os.replace``, so a reader sees the old bytes or the new ones, never half;
* :func:`write_all_atomic` writes several files all or none: every temporary file is
  prepared and every target checked before the first one is replaced, and a replace
  that still fails puts back what was replaced before it.

Failures name the file that could not be written.

Shared by every part, so it imports only the standard library and :mod:`measure.errors`:
never the calculator's other modules, the auditor, the builder, the command line or a
third-party package.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from measure.errors import InputError



def cache_root() -> Path:
    """The blindbox cache: ``$BLINDBOX_CACHE``, else ``$XDG_CACHE_HOME/blindbox``, else ``~/.cache/blindbox``."""
    env = os.environ.get("BLINDBOX_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "blindbox"
    return Path.home() / ".cache" / "blindbox"

class OutputError(InputError):
    """An output cannot be written where it was asked to go (or would overwrite an input)."""

    def __init__(self, message: str, *, path: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.path = path
        #: why the file cannot be written (e.g. the OS error), without the path
        self.reason = reason


def _umask_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` are, or resolve to, the same file (symlinks and hard links too)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def refuse_inputs(output: str | os.PathLike[str], inputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
                  option: str) -> None:
    """Raise :class:`OutputError` if ``output`` is one of ``inputs`` ((what, path) pairs)."""
    for what, path in inputs:
        if path is not None and same_file(output, path):
            raise OutputError(
                f"{option} {str(output)!r} is the {what} {str(path)!r}, which this command reads; writing "
                f"there would destroy it, so choose another output path.", path=str(output))


def _cannot(path: Path, what: str, err: OSError | str) -> OutputError:
    reason = err if isinstance(err, str) else (err.strerror or str(err))
    return OutputError(f"cannot write the {what} {str(path)!r}: {reason}; check the path and permissions.",
                       path=str(path), reason=reason)


def _prepare(path: Path, data: bytes, mode: int, what: str) -> str:
    """A temporary file beside ``path`` holding ``data``, fsync'ed; its name."""
    if os.path.isdir(path):
        raise _cannot(path, what, "it is a directory")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        pass                                    # a new file (or a dangling symlink's name)
    except OSError as e:                         # a symlink loop, a path through a non-directory
        raise _cannot(path, what, e) from None
    else:
        if not stat.S_ISREG(st.st_mode):
            # Replacing it would put a regular file where a device, FIFO or socket was
            # (e.g. /dev/null), which is never what an output path means.
            raise _cannot(path, what, "it is a device, FIFO or socket, not a regular file")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _cannot(path, what, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except BaseException as e:
        _unlink(tmp)
        if isinstance(e, OSError):
            raise _cannot(path, what, e) from None
        raise
    return tmp


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_atomic(path: str | os.PathLike[str], data: bytes, *, what: str = "output file",
                 mode: int | None = None) -> Path:
    """Replace ``path`` with ``data`` atomically; ``mode`` defaults to 0666 minus the umask."""
    return write_all_atomic([(path, data)], what=what, mode=mode)[0]


def write_all_atomic(files: Iterable[tuple[str | os.PathLike[str], bytes]], *, what: str = "output file",
                     mode: int | None = None) -> list[Path]:
    """Write every ``(path, data)`` or none of them; returns the paths."""
    mode = _umask_mode() if mode is None else mode
    targets = [(Path(p), bytes(d)) for p, d in files]
    temps: list[str] = []
    try:
        for path, data in targets:
            temps.append(_prepare(path, data, mode, what))
    except BaseException:
        for tmp in temps:
            _unlink(tmp)
        raise
    done: list[tuple[Path, str | None, bool]] = []   # replaced: (target, link to its old bytes, existed)
    try:
        for (path, _), tmp in zip(targets, temps, strict=True):
            backup = None
            existed = os.path.lexists(path)
            if len(targets) > 1 and os.path.isfile(path) and not os.path.islink(path):
                backup = tmp + ".old"
                try:
                    os.link(path, backup)
                except OSError:
                    backup = None
            try:
                os.replace(tmp, path)
            except OSError as e:
                if backup is not None:
                    _unlink(backup)
                raise _cannot(path, what, e) from None
            done.append((path, backup, existed))
    except BaseException:
        for tmp in temps:
            _unlink(tmp)
        for path, backup, existed in reversed(done):   # put back what was replaced before the failure
            try:
                if backup is not None:
                    os.replace(backup, path)
                elif not existed:
                    os.unlink(path)
            except OSError:
                pass
        for tmp in temps:
            _unlink(tmp + ".old")                       # a backup made just before an interrupt
        raise
    for _, backup, _ in done:
        if backup is not None:
            _unlink(backup)
    for parent in {p.parent for p, _ in targets}:
        try:
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
    return [p for p, _ in targets]
