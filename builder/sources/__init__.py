"""Inputs of a build: Debian packages, sha256-pinned URLs and local files.

Everything fetched lands in a content-addressed cache (:class:`ContentCache`,
``<root>/sha256/<hex>``) and is verified against its sha256 on the way in and on every
later use, so a build can run offline once its inputs have been fetched, and two builds
on different machines see the same bytes or fail.  One module per concern:

* :mod:`.cache`  -- sha256 of files and the content-addressed cache (locks, atomic commit);
* :mod:`.deb`    -- the ar container, member tars and control stanzas of a .deb file;
* :mod:`.remote` -- sha256-pinned URLs and local files;
* :mod:`.debian` -- the private apt configuration that resolves and downloads packages;
* :mod:`.oci`    -- container images on disk (OCI layouts and archives, ``docker save``);
* :mod:`.snapshot` -- a lock's snapshot archive: pinned .deb files Debian no longer serves;
* :mod:`.vendor` -- every pinned input of a lock in one directory, and a build's use of it.

The arrows point one way: ``debian -> deb, cache``, ``remote -> cache`` and
``snapshot -> remote, cache`` (the archive reaches the snapshot only through the callable in
``DebianArchive.fallback``); ``vendor`` may use them all and :mod:`builder.lock`; ``deb``,
``oci`` and ``cache`` import no other module of this package.  The builder never imports the command
line (``blindbox.cli``).  This file only re-exports the public names: those of :mod:`.cache`
at once, the others on first use, so that a build which is already current (it reads the cache
and hashes files) does not import tar, compression, OCI or download code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import ContentCache, cache_root, sha256_file

if TYPE_CHECKING:
    from .deb import extract_deb, read_deb_control
    from .debian import SUITES, DebianArchive, DebianPackage, SuiteSources
    from .oci import OciImage, apply_oci_layers, read_oci_image
    from .remote import fetch_url, local_file


def __getattr__(name: str) -> Any:
    """The re-exported names not imported above, each module imported when one of its names is first used."""
    if name in ("extract_deb", "read_deb_control"):
        from . import deb
        value = getattr(deb, name)
    elif name in ("SUITES", "DebianArchive", "DebianPackage", "SuiteSources"):
        from . import debian
        value = getattr(debian, name)
    elif name in ("OciImage", "apply_oci_layers", "read_oci_image"):
        from . import oci
        value = getattr(oci, name)
    elif name in ("fetch_url", "local_file"):
        from . import remote
        value = getattr(remote, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = [
    "ContentCache", "DebianArchive", "DebianPackage", "OciImage", "SUITES", "SuiteSources", "apply_oci_layers",
    "cache_root", "extract_deb", "fetch_url", "local_file", "read_deb_control", "read_oci_image", "sha256_file",
]
