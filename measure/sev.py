"""SEV and SEV-ES launch digests: SHA-256 over what LAUNCH_UPDATE_DATA/VMSA encrypt.

SEV measures the firmware image followed, for a measured direct boot, by QEMU's SEV
hashes table; SEV-ES appends the VMSA page of every vCPU (SEV features 0).

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib

from .errors import UnsupportedFirmware
from .kernel_hashes import KernelHashes
from .ovmf import Firmware
from .snp import Measurement, VmShape, check_hashes_table_size
from .spec import BSP_RESET_EIP
from .vmsa import reset_vmsa


def _firmware_and_hashes(fw: Firmware, hashes: KernelHashes | None) -> "hashlib._Hash":
    h = hashlib.sha256(fw.data)
    if hashes is not None:
        table = fw.hashes_table()
        if table is None:
            raise UnsupportedFirmware(
                f"a kernel was given but {fw.name} has no SEV hashes table, so the kernel, initrd "
                f"and command line cannot be measured; use an AmdSev OVMF build (Debian's "
                f"ovmf-amdsev) or drop --kernel/--initrd/--append.", missing="SEV_HASH_TABLE")
        check_hashes_table_size(fw, table)
        h.update(hashes.table())
    return h


def sev_launch(fw: Firmware, hashes: KernelHashes | None = None) -> Measurement:
    return Measurement(_firmware_and_hashes(fw, hashes).digest(), (), 0)


def sev_es_launch(fw: Firmware, shape: VmShape, hashes: KernelHashes | None = None) -> Measurement:
    shape.check()
    ap_eip = fw.require_sev_es_reset_eip()
    h = _firmware_and_hashes(fw, hashes)
    bsp = reset_vmsa(shape.profile, BSP_RESET_EIP, 0, shape.vcpu_sig).to_bytes()
    ap = reset_vmsa(shape.profile, ap_eip, 0, shape.vcpu_sig).to_bytes()
    pages = tuple(bsp if i == 0 else ap for i in range(shape.vcpus))
    for page in pages:
        h.update(page)
    return Measurement(h.digest(), pages, 0)
