"""The initrd's deflate compressor: a pinned zlib, loaded by path, never the host's.

A deflate stream is not defined by its input alone: two zlib builds (zlib 1.2.13 and 1.3,
zlib-ng on Fedora, a patched zlib) may encode the same data at the same level into other
bytes, and the initrd's bytes are measured.  So the builder does not use the zlib its Python
interpreter links.  The lock pins a Debian package that ships a zlib shared object
(:data:`PACKAGE` from :data:`SUITE`, :data:`ARCH`), fetched and verified like every other
input; :func:`load` opens *that* file with :mod:`ctypes` (``RTLD_DEEPBIND``, so its own calls
stay inside it even though the interpreter has another libz loaded) and checks that its
``zlibVersion()`` is the pinned package's upstream version.  :meth:`Deflate.raw` then drives
``deflateInit2_`` / ``deflate`` / ``deflateEnd`` with fixed parameters.

The library is an x86-64 ELF object, so the builder runs on amd64 hosts only; another host
is refused (:class:`UnsupportedHost`) rather than served by its own zlib.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from builder.recipe import COMPRESSOR

#: the Debian package whose zlib compresses the initrd, as the lock pins it (input ``compressor``)
PACKAGE = COMPRESSOR.package
SUITE = COMPRESSOR.suite
ARCH = COMPRESSOR.arch
#: the lock entry's name
INPUT = COMPRESSOR.name
#: where the package keeps the library (usr-merged and older layouts)
_LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")
_LIB_NAME = re.compile(r"libz\.so\.1\.\d+(\.\d+)*")
_HOST_MACHINES = ("x86_64", "amd64")

# zlib.h constants
Z_OK = 0
Z_STREAM_END = 1
Z_FINISH = 4
Z_DEFLATED = 8
Z_DEFAULT_STRATEGY = 0

LEVEL = 9
WINDOW_BITS = -15      # a raw deflate stream: the gzip member's header and trailer are written by the caller
MEM_LEVEL = 8


class CompressorError(BuildError):
    """The pinned compressor library is missing, unusable, or not the pinned version."""


class UnsupportedHost(BuildError):
    """This host cannot run the pinned (amd64) compressor library."""


class ZStream(ctypes.Structure):
    """``z_stream`` of zlib.h (zlib 1.2.x and 1.3.x, LP64)."""

    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


def upstream_version(debian_version: str) -> str:
    """``1:1.2.13.dfsg-1`` -> ``1.2.13``: what ``zlibVersion()`` of that package reports."""
    m = re.match(r"(?:\d+:)?(\d+(?:\.\d+)*)", debian_version)
    if m is None:
        raise CompressorError(f"the compressor's Debian version {debian_version!r} has no upstream version; "
                              f"the lock file is damaged. Restore it from version control.")
    return m.group(1)


def check_host(machine: str | None = None) -> None:
    """Refuse a host that cannot run the pinned amd64 library."""
    machine = platform.machine() if machine is None else machine
    if machine.lower() not in _HOST_MACHINES:
        raise UnsupportedHost(
            f"this host is {machine or 'of an unknown architecture'}, but the initrd's gzip compressor is the pinned "
            f"{ARCH} zlib ({PACKAGE} from Debian {SUITE}), which runs only on x86_64; build on an x86_64 (amd64) "
            f"host (the bundle is the same on every one), or use `compression: none` for the initrd.")


def find_library(tree: Path) -> Path:
    """The one ``libz.so.1.x.y`` regular file of the unpacked package ``tree``."""
    found = sorted(p for d in _LIB_DIRS if (tree / d).is_dir() for p in (tree / d).iterdir()
                   if _LIB_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink())
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise CompressorError(f"the compressor package {PACKAGE} unpacked at {tree} holds {what} libz.so.1.x "
                              f"library under {' or '.join(_LIB_DIRS)}; pin the Debian package {PACKAGE} "
                              f"({ARCH}), which ships exactly one.")
    return found[0]


@dataclass(frozen=True)
class Deflate:
    """A loaded, version-checked zlib: :meth:`raw` deflates with the fixed parameters."""

    path: Path
    version: str                  # zlibVersion() of the loaded library
    package: str                  # "zlib1g 1:1.2.13.dfsg-1"
    sha256: str                   # of the pinned .deb
    _lib: ctypes.CDLL

    def describe(self) -> str:
        return (f"gzip: deflate level {LEVEL}, zlib {self.version} from the pinned Debian package {self.package} "
                f"(sha256 {self.sha256}), mtime 0, no name, OS 255")

    def crc32(self, data: bytes) -> int:
        crc = self._lib.crc32
        crc.restype = ctypes.c_ulong
        crc.argtypes = [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_uint]
        value = 0
        view = memoryview(data)
        step = 1 << 30
        for i in range(0, len(view), step):
            chunk = bytes(view[i:i + step])
            value = crc(value, chunk, len(chunk))
        return value & 0xFFFFFFFF

    def raw(self, data: bytes) -> bytes:
        """``data`` as one raw deflate stream (level 9, 32 KiB window, memLevel 8, default strategy)."""
        if len(data) > 0xFFFFFFFF:
            raise CompressorError(f"the initrd is {len(data)} bytes; the compressor takes at most 4 GiB - 1 in one "
                                  f"piece. Make the initrd smaller.")
        lib = self._lib
        lib.deflateInit2_.restype = ctypes.c_int
        lib.deflateInit2_.argtypes = [ctypes.POINTER(ZStream), ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.deflateBound.restype = ctypes.c_ulong
        lib.deflateBound.argtypes = [ctypes.POINTER(ZStream), ctypes.c_ulong]
        lib.deflate.restype = ctypes.c_int
        lib.deflate.argtypes = [ctypes.POINTER(ZStream), ctypes.c_int]
        lib.deflateEnd.restype = ctypes.c_int
        lib.deflateEnd.argtypes = [ctypes.POINTER(ZStream)]

        stream = ZStream()
        rc = lib.deflateInit2_(ctypes.byref(stream), LEVEL, Z_DEFLATED, WINDOW_BITS, MEM_LEVEL, Z_DEFAULT_STRATEGY,
                               self.version.encode("ascii"), ctypes.sizeof(ZStream))
        if rc != Z_OK:
            raise CompressorError(f"the pinned zlib {self.path} refused deflateInit2 (code {rc}); this is a bug in "
                                  f"blindbox, please report it.")
        try:
            bound = lib.deflateBound(ctypes.byref(stream), len(data))
            out = ctypes.create_string_buffer(bound)
            src = ctypes.c_char_p(data)
            stream.next_in = ctypes.cast(src, ctypes.c_void_p)
            stream.avail_in = len(data)
            stream.next_out = ctypes.cast(out, ctypes.c_void_p)
            stream.avail_out = bound
            rc = lib.deflate(ctypes.byref(stream), Z_FINISH)
            if rc != Z_STREAM_END or stream.avail_in != 0:
                raise CompressorError(f"the pinned zlib {self.path} did not finish the stream (code {rc}); this is "
                                      f"a bug in blindbox, please report it.")
            return out.raw[:stream.total_out]
        finally:
            lib.deflateEnd(ctypes.byref(stream))


def load(tree: Path, debian_version: str, sha256: str) -> Deflate:
    """Load the zlib of the unpacked pinned package ``tree`` (of ``debian_version``, whose .deb has ``sha256``)."""
    check_host()
    path = find_library(Path(tree))
    try:
        lib = ctypes.CDLL(os.fspath(path), mode=os.RTLD_LOCAL | getattr(os, "RTLD_DEEPBIND", 0))
    except OSError as e:
        raise CompressorError(f"the pinned compressor library {path} cannot be loaded ({e}); remove the blindbox "
                              f"cache's copy of {PACKAGE} so that it is fetched and verified again.") from None
    lib.zlibVersion.restype = ctypes.c_char_p
    lib.zlibVersion.argtypes = []
    version = lib.zlibVersion().decode("ascii", "replace")
    want = upstream_version(debian_version)
    if version != want:
        raise CompressorError(f"the compressor library {path} reports zlib {version}, but the lock pins {PACKAGE} "
                              f"{debian_version} (zlib {want}); remove the blindbox cache's copy of {PACKAGE} so "
                              f"that it is fetched and verified again.")
    return Deflate(path, version, f"{PACKAGE} {debian_version}", sha256, lib)
