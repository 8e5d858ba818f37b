#!/usr/bin/env python3
"""Benchmark: blindbox's launch-digest calculator beside sev-snp-measure 0.0.13.

Runs both implementations in this process on the same inputs and prints wall time,
peak Python memory and the ratio (oracle / blindbox) for each scenario; every digest
pair is also compared, so a fast wrong answer cannot hide.

    .venv/bin/python bench/measure.py [--repeat 3] [--real]

Inputs: a deterministic 4 MiB firmware image with an AmdSev-like footer table, a
16 MiB "kernel" and a 64 MiB "initrd" (pseudo-random bytes), unless --real, which uses
Debian's sid OVMF.amdsev.fd and the bookworm kernel (fetched and cached).

The headline figures, every target on real inputs, come from bench/targets.py.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from measure import Firmware, KernelHashes, SnpLaunch, VmShape  # noqa: E402
from measure.cpu import CPU_SIGS  # noqa: E402
from tests.measure import oracle, synth  # noqa: E402


def pseudo_random(n: int, label: bytes) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha512(label + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:n])


def timed(fn, repeat):
    best, peak, result = float("inf"), 0, None
    for _ in range(repeat):
        tracemalloc.start()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return best, peak, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--real", action="store_true", help="use real Debian firmware and kernel")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.real:
            from tests.realinputs import busybox_static, debian_kernel, ovmf_amdsev
            fw_path, kernel, initrd = ovmf_amdsev()[0], debian_kernel()[0], busybox_static()[0]
        else:
            fw_path = synth.write(tmp / "ovmf.fd", synth.image(
                4 << 20,
                sections=synth.AMDSEV_LIKE_SECTIONS[:3] + [(0x80B000, 0x1000, synth.SectionType.SNP_KERNEL_HASHES)],
                hashes_table=(0x80BC00, 0x400), fill=pseudo_random(4 << 20, b"fw")))
            kernel = synth.write(tmp / "vmlinuz", pseudo_random(16 << 20, b"kernel"))
            initrd = synth.write(tmp / "initrd", pseudo_random(64 << 20, b"initrd"))
        append = "console=ttyS0 root=/dev/vda ro"
        sig = CPU_SIGS["EPYC-Milan"]
        counts = list(range(1, 65))
        types = sorted(set(CPU_SIGS.values()))
        features = [0x1, 0x21, 0x3, 0x41]

        def ours_one():
            return SnpLaunch(Firmware.load(fw_path)).measure(
                VmShape(4, sig, 0x21), KernelHashes.from_files(kernel, initrd, append)).digest

        def theirs_one():
            return oracle.oracle_digest("snp", ovmf=fw_path, vcpus=4, vcpu_sig=sig, kernel=kernel,
                                        initrd=initrd, append=append, guest_features=0x21)

        def ours_counts():
            launch = SnpLaunch(Firmware.load(fw_path))
            got = launch.measure_vcpu_counts(VmShape(1, sig, 0x21), counts,
                                             KernelHashes.from_files(kernel, initrd, append))
            return [got[n].digest for n in counts]

        def theirs_counts():
            return [oracle.oracle_digest("snp", ovmf=fw_path, vcpus=n, vcpu_sig=sig, kernel=kernel, initrd=initrd,
                                         append=append, guest_features=0x21) for n in counts]

        def ours_matrix():
            launch = SnpLaunch(Firmware.load(fw_path))
            return [launch.measure(VmShape(2, s, f)).digest for s in types for f in features]

        def theirs_matrix():
            return [oracle.oracle_digest("snp", ovmf=fw_path, vcpus=2, vcpu_sig=s, guest_features=f)
                    for s in types for f in features]

        scenarios = [
            ("one digest, kernel+initrd+cmdline", ours_one, theirs_one),
            (f"{len(counts)} vCPU counts (1..64), same inputs", ours_counts, theirs_counts),
            (f"{len(types) * len(features)} shapes (cpu x features), one firmware", ours_matrix, theirs_matrix),
        ]
        print(f"# bench/measure.py  python {platform.python_version()}  {platform.machine()}  "
              f"inputs: {'Debian (real)' if args.real else 'synthetic 4 MiB fw, 16 MiB kernel, 64 MiB initrd'}  "
              f"best of {args.repeat}")
        print(f"{'scenario':<48} {'blindbox s':>10} {'oracle s':>10} {'speed x':>8} "
              f"{'blindbox MiB':>12} {'oracle MiB':>10} {'memory x':>8}")
        for name, ours, theirs in scenarios:
            t_o, m_o, r_o = timed(ours, args.repeat)
            t_t, m_t, r_t = timed(theirs, args.repeat)
            if r_o != r_t:
                print(f"MISMATCH in {name!r}", file=sys.stderr)
                return 1
            print(f"{name:<48} {t_o:>10.3f} {t_t:>10.3f} {t_t / t_o:>8.1f} "
                  f"{m_o / 2**20:>12.1f} {m_t / 2**20:>10.1f} {m_t / max(m_o, 1):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
