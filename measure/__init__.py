"""SEV, SEV-ES and SEV-SNP launch digests, computed in pure Python.

Public API::

    from measure import MeasureRequest, launch_digest, SnpLaunch, VmShape, Firmware, KernelHashes

The distribution is ``blindbox-guest``; this top-level package name is generic and
other PyPI projects use it too (see README, "Package names").

The calculator imports only the standard library and itself, never ``cryptography``,
``yaml``, ``click``, ``elftools``, :mod:`builder` or anything under :mod:`blindbox`, so an
auditor can read it and run it anywhere, and measuring loads nothing else
(docs/architecture.md; tests/test_architecture.py checks it).
"""

from .api import MeasureRequest, MeasureResult, launch_digest, ovmf_hash
from .errors import BlindboxError, MeasureError
from .kernel_hashes import KernelHashes, cmdline_bytes
from .ovmf import Firmware
from .snp import Measurement, SnpLaunch, VmShape
from .spec import SevMode
from .vmm import PROFILES, VmmProfile, VmmType, profile, profile_for

__version__ = "0.1.0"

__all__ = [
    "BlindboxError", "Firmware", "KernelHashes", "MeasureError", "MeasureRequest", "MeasureResult",
    "Measurement", "PROFILES", "SevMode", "SnpLaunch", "VmShape", "VmmProfile", "VmmType",
    "cmdline_bytes", "launch_digest", "ovmf_hash", "profile", "profile_for",
]
