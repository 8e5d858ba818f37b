"""Upper bounds on every input the auditor reads: reports, certificates, keys, signatures, manifests.

The same rules as :mod:`measure.limits` (the calculator's bounds): a file larger than
its limit is refused before it is read whole.  docs/limits.md lists the values with the
reasoning; keep the two in step.  Depends only on :mod:`measure.limits`.
"""

from __future__ import annotations

from measure.limits import KIB, MIB

#: An attestation report file: 1184 bytes binary, or its 2368 hex digits with any
#: whitespace (one byte per line is 3552 bytes plus line ends).
MAX_REPORT_FILE_BYTES = 8 * KIB

#: One certificate file (DER or PEM, possibly a chain such as KDS's ASK+ARK bundle of
#: about 4.5 KiB).  Also the bound for every entry of a ``--certs`` directory, for a
#: ``--trust-root`` file and for a cached KDS response.
MAX_CERTIFICATE_FILE_BYTES = 64 * KIB

#: A private or public key file (PEM or DER).  A P-384 key in PEM is about 300 bytes.
MAX_KEY_FILE_BYTES = 64 * KIB

#: A detached manifest signature: DER ECDSA P-384 is at most 104 bytes, Ed25519 64.
MAX_SIGNATURE_FILE_BYTES = 1 * KIB

#: ``manifest.json``.  A bundle with the maximum number of shapes below needs about
#: 2 MiB.
MAX_MANIFEST_BYTES = 16 * MIB

#: ``provenance.intoto.json``: it restates the manifest's inputs and outputs, never more than it.
MAX_PROVENANCE_BYTES = MAX_MANIFEST_BYTES

#: Its DSSE envelope: the statement in base64 (4/3 of its size) and a few signatures.
MAX_ENVELOPE_BYTES = MAX_PROVENANCE_BYTES * 4 // 3 + 64 * KIB

#: Measurement entries (shapes) in one manifest.  Recipes publish a dozen; 4096 shapes
#: of a few vCPUs re-derive in about a second.
MAX_MANIFEST_SHAPES = 4096

#: The sum of the vCPU counts of a manifest's shapes: each vCPU is one VMSA page to fold
#: in (about 10 us).  262,144 is e.g. 1,024 shapes of 256 vCPUs, about 3 s.
MAX_MANIFEST_VCPUS = 262_144

#: An initrd ``rederive`` opens to read the runtime policy it carries: the file as stored (the
#: builder's are about 25 MiB with the attestation agent's Python), the archive bytes after
#: decompression (about 60 MiB there), and its members (about 1,300 there).  The bounds leave
#: room for large applications while keeping a hostile initrd (a compression bomb, millions of
#: empty members) from exhausting memory.
MAX_INITRD_BYTES = 256 * MIB
MAX_INITRD_UNPACKED_BYTES = 1024 * MIB
MAX_INITRD_MEMBERS = 200_000
