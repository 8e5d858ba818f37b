"""vCPU signatures: the CPUID Fn0000_0001_EAX value QEMU puts in ``rdx`` at reset.

Encoding: AMD CPUID specification #25481, "Family, Model, Stepping Identifiers".
Names are QEMU's built-in x86 CPU models (``-cpu``), the same set sev-snp-measure knows.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

from .errors import InputError

MAX_FAMILY = 0xF + 0xFF


def cpu_sig(family: int, model: int, stepping: int) -> int:
    """Signature for family/model/stepping; every value is taken as given, 0 included."""
    if not 0 <= family <= MAX_FAMILY:
        raise InputError(f"vCPU family {family} is out of range; use 0 to {MAX_FAMILY}.")
    if not 0 <= model <= 0xFF:
        raise InputError(f"vCPU model {model} is out of range; use 0 to 255.")
    if not 0 <= stepping <= 0xF:
        raise InputError(f"vCPU stepping {stepping} is out of range; use 0 to 15.")
    family_low, family_ext = (0xF, family - 0xF) if family > 0xF else (family, 0)
    return (family_ext << 20) | ((model >> 4) << 16) | (family_low << 8) | ((model & 0xF) << 4) | stepping


_EPYC = cpu_sig(23, 1, 2)
_ROME = cpu_sig(23, 49, 0)
_MILAN = cpu_sig(25, 1, 1)
_GENOA = cpu_sig(25, 17, 0)
_TURIN = cpu_sig(26, 0, 0)

CPU_SIGS: dict[str, int] = {
    "EPYC": _EPYC, "EPYC-v1": _EPYC, "EPYC-v2": _EPYC, "EPYC-IBPB": _EPYC, "EPYC-v3": _EPYC,
    "EPYC-v4": _EPYC,
    "EPYC-Rome": _ROME, "EPYC-Rome-v1": _ROME, "EPYC-Rome-v2": _ROME, "EPYC-Rome-v3": _ROME,
    "EPYC-Milan": _MILAN, "EPYC-Milan-v1": _MILAN, "EPYC-Milan-v2": _MILAN,
    "EPYC-Genoa": _GENOA, "EPYC-Genoa-v1": _GENOA,
    "EPYC-Turin": _TURIN,
}


def sig_for_type(name: str) -> int:
    """Signature of a named vCPU type; exact names first, then case-insensitively."""
    if name in CPU_SIGS:
        return CPU_SIGS[name]
    for known, sig in CPU_SIGS.items():
        if known.lower() == name.lower():
            return sig
    raise InputError(f"unknown vCPU type {name!r}; valid types: {', '.join(CPU_SIGS)}.")
