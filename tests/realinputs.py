"""Real Debian inputs for tests: resolve what the archive serves today, return paths.

Debian suites move (sid is replaced continually, bookworm kernels at every point and
security release), so these helpers never pin a version: they resolve the current one,
download it once into the user's blindbox cache (``builder.sources.cache_root()``), and
hand back the path together with the :class:`DebianPackage` that says which version it
was.  Results are cached per process; parallel pytest-xdist workers share the on-disk
cache safely through its file locks, so each .deb is downloaded once.

Every test using these needs the Debian archive the first time: mark it
``@pytest.mark.network``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from builder.errors import SourceError
from builder.sources import DebianArchive, DebianPackage

#: Suites whose expired Release files the tests accept.  The archive reachable from the
#: project's machines is a snapshot that lags: on 2026-11-26 sid's Release file had been
#: expired since 2026-11-06 and apt refuses it, and the Valid-Until of bookworm-security,
#: trixie-updates and trixie-security (2026-12-02) will pass the same way if the snapshot
#: does not move.  These tests check what the packages contain, not how fresh the index
#: is; apt still verifies every Release signature.  (tests/builder/test_sources.py tests
#: that an archive *without* allow_stale refuses expired suites.)
ALLOW_STALE = ("sid", "bookworm", "trixie")


@functools.lru_cache(maxsize=None)
def archive() -> DebianArchive:
    """The shared archive for tests: default cache, stale suites allowed (see ALLOW_STALE)."""
    return DebianArchive(allow_stale=ALLOW_STALE)


@functools.lru_cache(maxsize=None)
def _current(name: str, suite: str) -> DebianPackage:
    return archive().resolve(name, suite)


@functools.lru_cache(maxsize=None)
def ovmf_amdsev() -> tuple[Path, DebianPackage]:
    """sid ``ovmf-amdsev``: ``/usr/share/ovmf/OVMF.amdsev.fd`` (SEV metadata + kernel hashes)."""
    pkg = _current("ovmf-amdsev", "sid")
    return archive().member(pkg, "/usr/share/ovmf/OVMF.amdsev.fd"), pkg


@functools.lru_cache(maxsize=None)
def bookworm_ovmf(member: str = "OVMF_CODE.fd") -> tuple[Path, DebianPackage]:
    """bookworm ``ovmf``: ``/usr/share/OVMF/<member>`` (OVMF_CODE.fd 2 MiB with SNP metadata,
    OVMF_CODE_4M.fd, ...), or ``/usr/share/ovmf/<member>`` for the one file that lives
    there, the generic ``OVMF.fd`` used for smoke boots."""
    pkg = _current("ovmf", "bookworm")
    tree = archive().unpack(pkg)
    where = "OVMF" if (tree / "usr/share/OVMF" / member).exists() or \
        not (tree / "usr/share/ovmf" / member).exists() else "ovmf"
    return archive().member(pkg, f"/usr/share/{where}/{member}"), pkg


@functools.lru_cache(maxsize=None)
def _kernel_package(suite: str) -> DebianPackage:
    meta = _current("linux-image-amd64", suite)
    images = [d for d in archive().depends(meta) if d.startswith("linux-image-")]
    if len(images) != 1:
        raise SourceError(f"{meta} depends on {images or 'no linux-image package'}, not on exactly one "
                          f"versioned kernel; tests/realinputs.py needs updating.")
    return archive().resolve(images[0], suite)


@functools.lru_cache(maxsize=None)
def kernel_tree(suite: str = "bookworm") -> Path:
    """The unpacked versioned kernel package of ``suite`` (``/boot``, ``/lib/modules/...``).

    Debian ships ``modules.order`` and ``modules.builtin`` but no ``modules.dep`` (depmod
    writes it at install time): whoever needs module dependencies computes them.
    """
    return archive().unpack(_kernel_package(suite))


@functools.lru_cache(maxsize=None)
def debian_kernel(suite: str = "bookworm") -> tuple[Path, DebianPackage]:
    """The bzImage (``/boot/vmlinuz-*``) of the kernel that ``linux-image-amd64`` depends on."""
    pkg = _kernel_package(suite)
    images = sorted((kernel_tree(suite) / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise SourceError(f"{pkg} ships {len(images)} /boot/vmlinuz-* files, not one; "
                          f"tests/realinputs.py needs updating.")
    return images[0], pkg


@functools.lru_cache(maxsize=None)
def busybox_static() -> tuple[Path, DebianPackage]:
    """bookworm ``busybox-static``: the static ``/bin/busybox``."""
    pkg = _current("busybox-static", "bookworm")
    return archive().member(pkg, "/bin/busybox"), pkg


@functools.lru_cache(maxsize=None)
def pinned_compressor() -> tuple[Path, DebianPackage]:
    """The initrd compressor's package exactly as ``recipes/hello.lock`` pins it (not the current
    version: the golden tests check the bytes that pin writes) and its unpacked tree."""
    import json

    lock = json.loads((Path(__file__).parent.parent / "recipes" / "hello.lock").read_text())
    entry = next(e for e in lock["inputs"] if e["name"] == "compressor")
    pkg = DebianPackage.from_dict(entry["debian"])
    return archive().unpack(pkg), pkg


@functools.lru_cache(maxsize=None)
def pinned_deflate():
    """The pinned zlib, loaded as the builder loads it (builder.steps.deflate.load)."""
    from builder.steps import deflate

    tree, pkg = pinned_compressor()
    return deflate.load(tree, pkg.version, pkg.sha256)
