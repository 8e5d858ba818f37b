"""Many VM shapes of one SEV-SNP launch: what ``blindbox measure`` computes for lists of shape options.

:func:`launch_matrix` reads and hashes the inputs once (as :func:`measure.api.launch_digest`
does for one shape), then lets :meth:`SnpLaunch.measure_matrix` extend the chain per vCPU
type, VMM profile, guest features and vCPU count.  Only the matrix form of the command
imports this module.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from .api import MeasureRequest, MeasureResult, _check, _inputs, _is_regular, _sha256
from .errors import InputError
from .inputs import in_background
from .kernel_hashes import KernelHashes
from .ovmf import Firmware
from .record import replace
from .snp import SnpLaunch, VmShape, firmware_pages
from .spec import GuestFeatures, SevMode
from .vmm import VmmProfile

#: The most shapes one command computes (a bound on time and output, docs/limits.md).
MAX_SHAPES = 100_000

#: One shape without its vCPU count: (vCPU signature, guest features, VMM profile).
Shape = tuple[int | None, int, VmmProfile]


def check_shapes(shapes: Sequence[Shape], counts: Sequence[int]) -> None:
    """Refuse any shape the matrix cannot measure, before anything is read or hashed."""
    for sig, features, prof in shapes:
        for n in (min(counts), max(counts)):
            VmShape(n, sig, features, prof).check()
        if not features & GuestFeatures.SNP_ACTIVE:
            raise InputError(f"--guest-features {features:#x} lacks SNPActive (bit 0), which every SEV-SNP "
                             f"guest's VMSA has; give a value with bit 0 set, such as "
                             f"{features | GuestFeatures.SNP_ACTIVE:#x}.")


def launch_matrix(req: MeasureRequest, shapes: Sequence[Shape], counts: Sequence[int]) -> list[MeasureResult]:
    """One result per (shape, count), shapes outer and counts (ascending) inner.

    ``req`` gives the mode (SEV-SNP only) and the inputs; its own vCPU count, signature,
    guest features and profile are replaced by each shape's.
    """
    counts = sorted(set(counts))
    if req.mode is not SevMode.SEV_SNP or req.ovmf_hash_only:
        raise InputError("lists of shape options need --mode snp.")
    if not shapes or not counts:
        raise InputError("a shape matrix needs at least one shape and one vCPU count.")
    _check(replace(req, vcpus=counts[0]))
    check_shapes(shapes, counts)
    pending = None
    if req.kernel is not None and _is_regular(req.kernel):
        pending = in_background(KernelHashes.from_files, req.kernel, req.initrd, req.append)
    fw = Firmware.load(req.ovmf)
    fw_sha256 = in_background(_sha256, fw.data)
    pages = in_background(firmware_pages, fw, req.trace) if req.ovmf_hash is None else None
    if pending is not None:
        hashes: KernelHashes | None = pending()
    else:
        hashes = KernelHashes.from_files(req.kernel, req.initrd, req.append) if req.kernel is not None else None
    launch = SnpLaunch(fw, ovmf_hash=req.ovmf_hash, trace=req.trace, pages=pages)
    rows = launch.measure_matrix([VmShape(counts[0], sig, features, prof) for sig, features, prof in shapes],
                                 counts, hashes)
    inputs = _inputs(req, fw, hashes, sha256=fw_sha256())
    out = []
    for (sig, features, prof), row in zip(shapes, rows, strict=True):
        for n in counts:
            m = row[n]
            shape_req = replace(req, vcpus=n, vcpu_sig=sig, guest_features=features, profile=prof)
            out.append(MeasureResult(shape_req, m.digest, m, fw, inputs))
    return out
