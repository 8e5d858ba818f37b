"""Writing a bundle directory atomically.

The new bundle is written into a temporary directory beside the target (same file
system), every file and the directory are fsync'ed, and only then does it take the
target's place: with ``renameat2(RENAME_EXCHANGE)`` where the kernel offers it (one
atomic step; the old bundle is then removed), otherwise with two renames whose
in-between state is repaired by the next build.  A build that fails or is killed at
any point leaves the previous bundle as it was; stale temporary directories are
removed by the next build of the same bundle.

Only a directory that is a blindbox bundle (or empty) is ever replaced, so a mistyped
``--out`` cannot delete someone's data.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

from builder.errors import BuildError

MANIFEST = "manifest.json"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class BundleError(BuildError):
    """The bundle cannot be written where it was asked to go."""


@functools.cache
def _libc_renameat2():
    """libc's ``renameat2``, or None; looked up when a bundle is first written, not at import: ctypes and
    ``find_library`` (which runs ``ldconfig -p``) cost a build that finds its bundle current some milliseconds."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False if the system cannot (then nothing happened)."""
    renameat2 = _libc_renameat2()
    if renameat2 is None:
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    import ctypes   # loaded by _libc_renameat2 already

    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_bundle(path: Path) -> bool:
    """Whether ``path`` is a directory this module may replace: empty, or a blindbox bundle."""
    if path.is_symlink() or not path.is_dir():
        return False
    names = os.listdir(path)
    if not names:
        return True
    if MANIFEST not in names:
        return False
    try:
        head = (path / MANIFEST).read_bytes()[:200]
    except OSError:
        return False
    return b'"schema": "blindbox-manifest/' in head


def _siblings(target: Path, kind: str) -> list[Path]:
    prefix = f".{target.name}.{kind}-"
    try:
        return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []


@contextmanager
def bundle_lock(target: Path) -> Iterator[None]:
    """Serialize builds of one bundle; the lock file lives beside it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.build-lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BundleError(f"another build is writing {target} right now; wait for it to finish.") from None
        yield
    finally:
        os.close(fd)


def recover(target: Path) -> None:
    """Repair what an interrupted earlier write left (call with the bundle lock held)."""
    olds = _siblings(target, "old")
    if not target.exists() and olds:
        # killed between the two renames of the fallback path: the old bundle goes back
        os.rename(olds[-1], target)
        olds = olds[:-1]
    for p in olds + _siblings(target, "tmp"):
        shutil.rmtree(p, ignore_errors=True)


_CHUNK = 1 << 20


def _write_file(path: Path, data: bytes | Path, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if isinstance(data, Path):          # a large output (a root filesystem image), streamed
            with open(data, "rb") as src:
                while chunk := src.read(_CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
        else:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bundle(target: str | Path, files: dict[str, tuple[bytes | Path, int]]) -> Path:
    """Replace ``target`` with a directory holding exactly ``files`` (name -> (bytes, mode)); the
    bytes of a large file may be given as the path of a file holding them (it is copied).

    File modes are set explicitly (the umask plays no part); files are written in name
    order.  Returns the target path.
    """
    target = Path(os.path.abspath(target))
    for name in files:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bad bundle file name {name!r}")
    try:
        return _replace_bundle(target, files)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise BundleError(f"cannot write the bundle {target}: {e.strerror or e}{where}; choose a writable "
                          f"--out directory on an ordinary file system.") from None


def _replace_bundle(target: Path, files: dict[str, tuple[bytes | Path, int]]) -> Path:
    with bundle_lock(target):
        recover(target)
        if target.exists() and not is_bundle(target):
            raise BundleError(f"{target} exists and is not a blindbox bundle (no blindbox manifest.json); "
                              f"choose another --out directory or remove it yourself.")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            os.chmod(tmp, 0o755)
            for name in sorted(files):
                data, mode = files[name]
                _write_file(tmp / name, data, mode)
            fsync_dir(tmp)
            if not target.exists():
                os.rename(tmp, target)
            elif exchange(tmp, target):
                shutil.rmtree(tmp)              # tmp now holds the previous bundle
            else:
                old = target.parent / f".{target.name}.old-{os.getpid()}"
                os.rename(target, old)
                os.rename(tmp, target)
                shutil.rmtree(old)
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
