"""Find which launch of known inputs produces a given MEASUREMENT.

The question an operator asks when a report does not match: *what was launched instead?*
Given the firmware (and kernel, initrd, command line) and a measurement, this replays
every VM shape in a search space (VMM profile, vCPU type, SEV features, vCPU count, and
whether QEMU measured the kernel hashes) and returns the ones that produce it.  The
firmware is hashed once, the metadata once per profile, and each vCPU count extends the
previous one, so ~10^5 launches take about a second.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from measure import record
from measure.cpu import CPU_SIGS
from measure.gctx import LaunchDigest
from measure.kernel_hashes import KernelHashes
from measure.ovmf import Firmware
from measure.snp import SnpLaunch
from measure.spec import BSP_RESET_EIP, VMSA_GPA, GuestFeatures, PageType, SectionType
from measure.vmm import PROFILES, VmmProfile
from measure.vmsa import reset_vmsa

#: SEV_FEATURES bits a host commonly sets on top of SNP_ACTIVE; the default search tries
#: every combination of them.
COMMON_FEATURE_BITS = (GuestFeatures.DEBUG_SWAP, GuestFeatures.PREVENT_HOST_IBS, GuestFeatures.SECURE_TSC,
                       GuestFeatures.VMSA_REG_PROT, GuestFeatures.RESTRICTED_INJECTION)


def feature_combinations(bits: tuple[GuestFeatures, ...] = COMMON_FEATURE_BITS) -> tuple[int, ...]:
    out = []
    for r in range(len(bits) + 1):
        for combo in itertools.combinations(bits, r):
            out.append(int(GuestFeatures.SNP_ACTIVE) | sum(int(b) for b in combo))
    return tuple(sorted(out))


def feature_names(value: int) -> str:
    names = [f.name for f in GuestFeatures if value & f.value and f.name is not None]
    rest = value & ~sum(f.value for f in GuestFeatures)
    if rest:
        names.append(f"{rest:#x}")
    return "|".join(names) or "0"


def _measures_as(p: VmmProfile) -> VmmProfile:
    """What of a profile changes a non-SVSM guest's digest (qemu-svsm-fcw0 measures as qemu)."""
    return record.replace(p, name="", summary="", svsm_x87_fcw=0, sev_snp_measure_0_0_13=True)


def _distinct_profiles() -> tuple[VmmProfile, ...]:
    """Profiles that measure differently for non-SVSM guests (qemu-svsm-fcw0 equals qemu there)."""
    seen, out = set(), []
    for p in PROFILES.values():
        key = _measures_as(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return tuple(out)


@dataclass(frozen=True)
class SearchSpace:
    profiles: tuple[VmmProfile, ...] = field(default_factory=_distinct_profiles)
    vcpu_sigs: tuple[int, ...] = tuple(sorted(set(CPU_SIGS.values())))
    guest_features: tuple[int, ...] = field(default_factory=feature_combinations)
    max_vcpus: int = 256


@dataclass(frozen=True)
class Launch:
    """One launch that produces the measurement."""

    profile: VmmProfile
    vcpu_sig: int | None
    vcpus: int
    guest_features: int
    kernel_hashes: bool  # False: QEMU ran without kernel-hashes=on (the hashes area measured as zeros)

    def describe(self) -> str:
        if self.vcpu_sig is None:
            cpu = "any vCPU type (this VMM fixes rdx)"
        else:
            names = [n for n, s in CPU_SIGS.items() if s == self.vcpu_sig]
            cpu = f"{names[0] if names else 'vCPU'} ({self.vcpu_sig:#x})"
        return (f"VMM profile {self.profile.name}, {self.vcpus} vCPU(s) of {cpu}, guest features "
                f"{self.guest_features:#x} ({feature_names(self.guest_features)}), kernel hashes "
                f"{'measured' if self.kernel_hashes else 'not measured (kernel-hashes=off or no -kernel)'}")


@dataclass(frozen=True)
class SearchResult:
    found: tuple[Launch, ...]
    tried: int
    seconds: float


def find_launches(fw: Firmware, measurement: bytes, hashes: KernelHashes | None = None,
                  space: SearchSpace = SearchSpace()) -> SearchResult:
    """Every launch in ``space`` of ``fw`` (with ``hashes``) whose digest is ``measurement``."""
    t0 = time.perf_counter()
    launch = SnpLaunch(fw)
    variants: list[KernelHashes | None] = [None]
    if hashes is not None and fw.has_section(SectionType.SNP_KERNEL_HASHES):
        variants.insert(0, hashes)
    found, tried = [], 0
    for profile in space.profiles:
        sigs = space.vcpu_sigs if profile.rdx is None else (None,)
        for variant in variants:
            base = launch.after_metadata(profile, variant)
            for sig, features in itertools.product(sigs, space.guest_features):
                bsp = hashlib.sha384(reset_vmsa(profile, BSP_RESET_EIP, features, sig).to_bytes()).digest()
                ap = hashlib.sha384(reset_vmsa(profile, launch.ap_eip, features, sig).to_bytes()).digest()
                ld: LaunchDigest = base.copy()
                for n in range(1, space.max_vcpus + 1):
                    ld.update(PageType.VMSA, VMSA_GPA, bsp if n == 1 else ap)
                    tried += 1
                    if ld.digest == measurement:
                        found.append(Launch(profile, sig, n, features, variant is not None))
    return SearchResult(tuple(found), tried, time.perf_counter() - t0)


@dataclass(frozen=True)
class Contradiction:
    """A published shape whose digest is the measurement, but which no launch found produces."""

    shape: str
    published: str      # the shape's fields as the manifest states them
    found: tuple[Launch, ...]

    def describe(self) -> str:
        made_by = "; ".join(f.describe() for f in self.found) or "no launch in the search space"
        return (f"the manifest publishes this MEASUREMENT for {self.shape} ({self.published}), but it is produced "
                f"by {made_by}: the manifest's digest is not its shape's, so do not trust it (run `blindbox "
                f"rederive` on the bundle)")


def published_contradictions(result: SearchResult, measurement: bytes, published: list[dict[str, Any]],
                             space: SearchSpace = SearchSpace()) -> tuple[Contradiction, ...]:
    """Published shapes (manifest ``measurements`` entries) that claim ``measurement`` but whose
    fields name a launch the search did not find producing it.  Entries outside ``space`` are not
    judged."""
    out = []
    for e in published:
        if e.get("measurement") != measurement.hex():
            continue
        prof = PROFILES.get(e["vmm_profile"])
        vcpus, sig, features = e["vcpus"], int(e["vcpu_sig"], 16), int(e["guest_features"], 16)
        if prof is None or vcpus > space.max_vcpus or features not in space.guest_features or \
                (prof.rdx is None and sig not in space.vcpu_sigs):
            continue
        agrees = any(_measures_as(f.profile) == _measures_as(prof) and f.vcpus == vcpus and
                     f.guest_features == features and f.kernel_hashes and f.vcpu_sig in (None, sig)
                     for f in result.found)
        if not agrees:
            fields = (f"VMM profile {e['vmm_profile']}, {vcpus} vCPU(s) of {e['vcpu_type']} ({e['vcpu_sig']}), "
                      f"guest features {e['guest_features']}, kernel hashes measured")
            out.append(Contradiction(e["shape"], fields, result.found))
    return tuple(out)
