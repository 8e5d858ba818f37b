"""Upper bounds on what the builder reads from recipes, lock files, Debian packages and images.

Like :mod:`measure.limits` (the firmware, VMSA and cmdline) and :mod:`blindbox.audit.limits`
(reports, certificates, keys and manifests),
each value is far above any real input and far below what would let a hostile or
damaged input exhaust memory, disk or time.  Everything is checked before it is used:
files by their size (read through :func:`measure.inputs.read_bounded`), size fields in
archives before anything is allocated or written for them.  docs/limits.md lists the
same values; keep the two in step.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

from measure.limits import KIB, MIB

#: A recipe (YAML).  The example recipes are under 4 KiB.
MAX_RECIPE_BYTES = 1 * MIB

#: A lock file (JSON).  One pin is about 400 bytes; a recipe with a hundred libraries
#: needs about 50 KiB.
MAX_LOCK_BYTES = 4 * MIB

#: Nesting of YAML collections in a recipe.  Recipes nest four levels; deeper nesting
#: would only exhaust the YAML composer's recursion.
MAX_RECIPE_DEPTH = 32

#: Members of a .deb's ar container: debian-binary, control.tar, data.tar and perhaps
#: a few signatures (``_gpgorigin``).
MAX_AR_MEMBERS = 64

#: Members of one .deb's data.tar.  Debian's kernel packages hold about 6,000 files.
MAX_DEB_MEMBERS = 200_000

#: Bytes unpacked from one .deb's data.tar (the sum of its regular files' sizes).  A
#: Debian kernel package unpacks to about 450 MiB.
MAX_DEB_UNPACKED_BYTES = 4096 * MIB

#: One tar extended header (pax or GNU long name): read into memory whole by tarfile.
MAX_TAR_HEADER_BYTES = 1 * MIB

#: The ``control`` file of a .deb (read whole to learn Package and Version).
MAX_DEB_CONTROL_BYTES = 1 * MIB

#: One kernel module, decompressed.  The largest Debian 6.x modules are about 10 MiB.
MAX_MODULE_BYTES = 256 * MIB

#: A kernel's text metadata: its config (about 250 KiB) and modules.builtin (30 KiB).
MAX_KERNEL_TEXT_BYTES = 16 * MIB

#: The kernel image (bzImage) a build reads whole; Debian's are about 8 MiB.
MAX_KERNEL_BYTES = 256 * MIB

#: One file put into the initrd (a local file, the init script, a program or library):
#: the initrd is assembled in memory.  Busybox is about 2 MiB.
MAX_INITRD_FILE_BYTES = 512 * MIB

#: One decompressed LZMA section of a firmware image (searched for OVMF's initrd token).
MAX_FIRMWARE_VOLUME_BYTES = 64 * MIB

#: Inodes (files, directories, symlinks; hard links count once) in one EROFS image.  An
#: application rootfs holds thousands; a whole distribution image a few hundred thousand.
MAX_EROFS_INODES = 1_000_000

#: One EROFS image, metadata and data, in bytes.  An application rootfs is tens to
#: hundreds of MiB; the format itself addresses 16 TiB.
MAX_EROFS_IMAGE_BYTES = 16 * 1024 * MIB

#: Entries of a root filesystem tree: members applied across all layers of an image, and
#: entries listed by the canonical serialisation.  Debian's python3 closure has ~2,000
#: files; a full distribution image ~100,000.
MAX_TREE_ENTRIES = 1_000_000

#: Bytes of regular files unpacked into a root filesystem tree, across all layers.
MAX_ROOTFS_UNPACKED_BYTES = 16384 * MIB

#: An OCI index, manifest or image config, or a ``docker save`` manifest.json (JSON, read
#: whole).  Real ones are a few KiB; an index of every platform ~20 KiB.
MAX_OCI_JSON_BYTES = 4 * MIB

#: One OCI blob (a compressed layer), checked against its descriptor's size before it is read.
MAX_OCI_BLOB_BYTES = 16384 * MIB

#: Layers of one image (Docker's own limit is 127).
MAX_OCI_LAYERS = 128

#: Manifests listed by one index, and indexes nested in indexes.
MAX_OCI_INDEX_ENTRIES = 1024
MAX_OCI_INDEX_DEPTH = 4

#: Members of an image archive (OCI layout or ``docker save`` tar): its blobs and a few
#: metadata files.
MAX_OCI_ARCHIVE_MEMBERS = 10_000

__all__ = ["KIB", "MIB", "MAX_RECIPE_BYTES", "MAX_LOCK_BYTES", "MAX_RECIPE_DEPTH", "MAX_AR_MEMBERS", "MAX_DEB_MEMBERS",
           "MAX_DEB_UNPACKED_BYTES", "MAX_TAR_HEADER_BYTES", "MAX_DEB_CONTROL_BYTES", "MAX_MODULE_BYTES",
           "MAX_KERNEL_BYTES", "MAX_KERNEL_TEXT_BYTES", "MAX_INITRD_FILE_BYTES", "MAX_FIRMWARE_VOLUME_BYTES",
           "MAX_EROFS_INODES", "MAX_EROFS_IMAGE_BYTES",
           "MAX_TREE_ENTRIES", "MAX_ROOTFS_UNPACKED_BYTES", "MAX_OCI_JSON_BYTES", "MAX_OCI_BLOB_BYTES",
           "MAX_OCI_LAYERS", "MAX_OCI_INDEX_ENTRIES", "MAX_OCI_INDEX_DEPTH", "MAX_OCI_ARCHIVE_MEMBERS"]
