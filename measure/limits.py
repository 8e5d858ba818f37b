"""Upper bounds on every input the calculator reads (the auditor's: blindbox.audit.limits).

Each limit is far above what any real input needs and far below what would let a
hostile input exhaust memory or time.  A file larger than its limit is refused before
it is read whole (:func:`measure.inputs.read_input` reads at most the limit plus one
byte); a size field that claims more than its limit, or more than the data present, is
refused before anything is allocated for it.  docs/limits.md lists the same values with
the reasoning; keep the two in step.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

#: A firmware image (OVMF, SVSM).  Debian's largest OVMF build is 4 MiB and the
#: firmware is mapped in the 4 GiB below which it ends, next to the guest's RAM.
MAX_FIRMWARE_BYTES = 64 * MIB

#: Sum of the sizes of the SEV metadata sections of one firmware image: the pages
#: measured as zero, unmeasured, secrets, CPUID or kernel hashes.  Real AmdSev and
#: OvmfX64 images declare under 128 KiB; 64 MiB is 16384 pages (about 0.2 s).
MAX_METADATA_BYTES = 64 * MIB

#: The file given as an OVMF variable store (only its size is used).
MAX_VARS_FILE_BYTES = MAX_FIRMWARE_BYTES

#: A VMSA page as written by ``--dump-vmsa``: exactly one 4 KiB page.
MAX_VMSA_FILE_BYTES = 4 * KIB

#: The ``cmdline`` file of a bundle.  Linux on x86 takes at most 2048 bytes
#: (COMMAND_LINE_SIZE); QEMU passes longer strings, so allow some room.
MAX_CMDLINE_FILE_BYTES = 64 * KIB

#: Any other whole-file input read by :func:`measure.inputs.read_input` without a
#: tighter limit of its own.
DEFAULT_READ_LIMIT = 64 * MIB

#: Kernels and initrds are hashed in a stream and may be large when they are regular
#: files.  A pipe or device (``<(zcat vmlinuz.gz)``, ``/dev/null``) is hashed up to this
#: many bytes; a longer stream (``/dev/zero``) is refused.
MAX_STREAM_BYTES = 256 * MIB
