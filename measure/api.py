"""One request in, one result out: the library entry point behind ``blindbox measure``.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import os
import stat

from .errors import InputError
from .inputs import in_background
from .kernel_hashes import KernelHashes
from .ovmf import Firmware
from .record import field, record
from .snp import Measurement, SnpLaunch, VmShape, firmware_pages, svsm_launch
from .spec import LD_SIZE, PAGE_SIZE, SevMode
from .vmm import VmmProfile, profile_for, VmmType

TYPE_CHECKING = False  # importing typing costs ~2 ms (bench/targets.py); type checkers read the block
if TYPE_CHECKING:
    from pathlib import Path  # pathlib brings re, fnmatch and urllib.parse: ~8 ms (bench/targets.py)
    from typing import Any


@record
class MeasureRequest:
    mode: SevMode
    ovmf: Path
    vcpus: int | None = None
    vcpu_sig: int | None = None
    guest_features: int = 0x1
    profile: VmmProfile = field(default_factory=lambda: profile_for(VmmType.QEMU))
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | bytes | None = None
    ovmf_hash: bytes | None = None
    svsm: Path | None = None
    vars_size: int | None = None
    ovmf_hash_only: bool = False
    trace: bool = False


@record
class MeasureResult:
    request: MeasureRequest
    digest: bytes
    measurement: Measurement | None
    firmware: Firmware
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _check(req: MeasureRequest) -> None:
    if (req.initrd is not None or req.append is not None) and req.kernel is None:
        raise InputError("--initrd and --append describe a measured direct boot and need --kernel.")
    if req.ovmf_hash is not None:
        if req.mode is not SevMode.SEV_SNP or req.ovmf_hash_only:
            raise InputError("--snp-ovmf-hash only applies to --mode snp.")
        if len(req.ovmf_hash) != LD_SIZE:
            raise InputError(f"--snp-ovmf-hash must be {2 * LD_SIZE} hex digits (a SHA-384 digest), "
                             f"got {2 * len(req.ovmf_hash)}.")
    if req.mode is SevMode.SEV_SNP_SVSM:
        if req.svsm is None or req.vars_size is None:
            raise InputError("--mode snp:svsm needs --svsm and one of --vars-size or --vars-file.")
        if req.kernel is not None:
            raise InputError("--mode snp:svsm does not measure a kernel; drop --kernel/--initrd/--append.")
        if req.vars_size <= 0 or req.vars_size % PAGE_SIZE:
            raise InputError(f"the OVMF variable store size {req.vars_size} must be a positive "
                             f"multiple of 4096 bytes.")
    elif req.svsm is not None or req.vars_size is not None:
        raise InputError("--svsm, --vars-size and --vars-file only apply to --mode snp:svsm.")
    if req.ovmf_hash_only and req.kernel is not None:
        raise InputError("--mode snp:ovmf-hash hashes the firmware alone; drop --kernel/--initrd/--append.")
    if req.mode is not SevMode.SEV and not req.ovmf_hash_only and req.vcpus is None:
        raise InputError(f"--vcpus N is required in guest mode '{req.mode.value}'.")


def _inputs(req: MeasureRequest, fw: Firmware, hashes: KernelHashes | None,
            svsm: Firmware | None = None, *, sha256: str | None = None) -> dict[str, dict[str, Any]]:
    """Path, sha256 and size of every input, from bytes and digests already in hand (no re-read)."""
    out: dict[str, dict[str, Any]] = {
        "ovmf": {"path": str(req.ovmf), "sha256": sha256 or _sha256(fw.data), "size": fw.size}}
    if hashes is not None:
        assert req.kernel is not None  # the hashes are the kernel's
        out["kernel"] = {"path": str(req.kernel), "sha256": hashes.kernel.hex(),
                         "size": os.stat(req.kernel).st_size}
        if req.initrd is not None:
            out["initrd"] = {"path": str(req.initrd), "sha256": hashes.initrd.hex(),
                             "size": os.stat(req.initrd).st_size}
    if svsm is not None:
        out["svsm"] = {"path": str(req.svsm), "sha256": hashlib.sha256(svsm.data).hexdigest(), "size": svsm.size}
    return out


def launch_digest(req: MeasureRequest) -> MeasureResult:
    """Compute the launch digest that ``req`` describes."""
    _check(req)
    # The kernel and initrd are hashed in the background while the firmware is read and its
    # pages hashed (hashlib releases the interpreter lock); errors keep their order: the
    # firmware's, then the kernel's, initrd's and command line's, then the VM shape's.
    # A kernel that is not a regular file (a pipe) is read after the firmware, as before.
    pending = None
    if req.kernel is not None and _is_regular(req.kernel):
        pending = in_background(KernelHashes.from_files, req.kernel, req.initrd, req.append)
    fw = Firmware.load(req.ovmf)
    fw_sha256 = in_background(_sha256, fw.data)
    pages = None
    if (req.mode is SevMode.SEV_SNP and req.ovmf_hash is None) or req.ovmf_hash_only:
        pages = in_background(firmware_pages, fw, req.trace and not req.ovmf_hash_only)
    if pending is not None:
        hashes: KernelHashes | None = pending()
    else:
        hashes = KernelHashes.from_files(req.kernel, req.initrd, req.append) if req.kernel is not None else None
    shape = None
    if req.mode in (SevMode.SEV_ES, SevMode.SEV_SNP, SevMode.SEV_SNP_SVSM) and not req.ovmf_hash_only:
        assert req.vcpus is not None  # _check requires --vcpus here
        shape = VmShape(req.vcpus, req.vcpu_sig, req.guest_features, req.profile)
        shape.check()

    if req.ovmf_hash_only:
        assert pages is not None
        return MeasureResult(req, pages().digest, None, fw, _inputs(req, fw, None, sha256=fw_sha256()))
    svsm = None
    if req.mode is SevMode.SEV_SNP:
        assert shape is not None
        m = SnpLaunch(fw, ovmf_hash=req.ovmf_hash, trace=req.trace, pages=pages).measure(shape, hashes)
    elif req.mode is SevMode.SEV_SNP_SVSM:
        assert shape is not None and req.svsm is not None and req.vars_size is not None  # checked by _check
        end = fw.gpa - req.vars_size
        svsm = Firmware.load(req.svsm, end_gpa=end)
        m = svsm_launch(fw, svsm, shape.vcpus, req.vcpu_sig, req.profile, trace=req.trace)
    elif req.mode is SevMode.SEV_ES:
        from .sev import sev_es_launch
        assert shape is not None
        m = sev_es_launch(fw, shape, hashes)
    else:
        from .sev import sev_launch
        m = sev_launch(fw, hashes)
    return MeasureResult(req, m.digest, m, fw, _inputs(req, fw, hashes, svsm, sha256=fw_sha256()))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_regular(path: str | Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def ovmf_hash(path: str | Path) -> bytes:
    """sev-snp-measure's ``snp:ovmf-hash``: the digest after the firmware pages alone."""
    return firmware_pages(Firmware.load(path)).digest
