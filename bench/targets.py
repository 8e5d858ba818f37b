#!/usr/bin/env python3
"""Benchmark: every performance target, blindbox beside its reference, on real Debian inputs.

One row per target: our figure, the reference figure, the ratio, the target ratio and
PASS/MISS.  Inputs are fetched and cached by the project's own code (tests/realinputs.py
and `blindbox build`):

  firmware     sid ovmf-amdsev's OVMF.amdsev.fd
  kernel       the bookworm kernel that linux-image-amd64 depends on
  small initrd bookworm busybox-static's /bin/busybox (about 2 MiB)
  large initrd a real built initrd (recipes/python-app-attested.yaml, built into the
               blindbox cache) followed by a second newc archive of the bookworm kernel's
               modules, to about 40 MiB -- the kernel unpacks concatenated archives
  rootfs       the rootfs.erofs of that same build (for the verity row)

Whole-process rows alternate `blindbox measure` and `sev-snp-measure` (this venv's
console scripts, the same arguments) and report medians; in-process rows report the best
of several runs.  Every digest pair (ours, sev-snp-measure) is compared; any difference
ends the run with status 1.

    .venv/bin/python bench/targets.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import compileall
import fcntl
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import build as bench_build  # noqa: E402
from bench import verity as bench_verity  # noqa: E402
from bench.timing import best_of  # noqa: E402
from builder.sources import cache_root  # noqa: E402
from builder.steps import cpio  # noqa: E402
from measure import Firmware, KernelHashes, SnpLaunch, VmShape  # noqa: E402
from measure.cpu import CPU_SIGS  # noqa: E402
from measure.vmm import PROFILES  # noqa: E402
from tests.measure import oracle  # noqa: E402
from tests.realinputs import ALLOW_STALE, busybox_static, debian_kernel, kernel_tree, ovmf_amdsev  # noqa: E402

BIN = Path(sys.executable).parent
OURS_CLI = BIN / "blindbox"
THEIRS_CLI = BIN / "sev-snp-measure"
APPEND = "console=ttyS0 root=/dev/vda ro"
VCPU_TYPES = ("EPYC-v4", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa", "EPYC-Turin")
VMMS = (("qemu", "QEMU"), ("ec2", "ec2"))          # (our profile, sev-snp-measure --vmm-type)
COUNTS = range(1, 65)
LARGE_INITRD = 40 << 20
BIG_RECIPE = ROOT / "recipes" / "python-app-attested.yaml"
STALE = [a for s in ALLOW_STALE for a in ("--allow-stale", s)]


class Mismatch(Exception):
    """A digest pair differed: the benchmark's figures would mean nothing."""


@dataclass
class Row:
    target: str
    ours: str
    reference: str
    ratio: float | None
    goal: str                     # e.g. "<= 0.90"
    status: str                   # PASS, MISS or n/a
    note: str = ""


def judge(ratio: float, op: str, limit: float) -> str:
    ok = {"<=": ratio <= limit, "<": ratio < limit, ">=": ratio >= limit}[op]
    return "PASS" if ok else "MISS"


def row(target: str, ours: str, reference: str, ratio: float, op: str, limit: float, note: str = "") -> Row:
    return Row(target, ours, reference, ratio, f"{op} {limit:g}", judge(ratio, op, limit), note)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# -- inputs -----------------------------------------------------------------------------------

def built_bundle(recipe: Path, tmp: Path) -> Path:
    """The bundle of ``recipe``, built (or found current) under the blindbox cache.

    The committed lock first; if the archive no longer serves what it pins, a copy of the
    recipe locked against what the archive serves today.
    """
    out = cache_root() / "bench" / recipe.stem

    def build(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(OURS_CLI), "build", str(path), "--out", str(out), *STALE],
                              capture_output=True, text=True, cwd=ROOT)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{recipe.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # concurrent runs (parallel tests) build it once
        p = build(recipe)
        if p.returncode != 0:
            p = build(bench_build.locked_copy(recipe, tmp / "relocked").path)
    if p.returncode != 0:
        raise SystemExit(f"building {recipe.name} for the benchmark inputs failed: {p.stderr.strip()}")
    return out


def large_initrd(bundle_initrd: Path, dest: Path) -> Path:
    """A real initrd followed by an uncompressed newc archive of kernel modules, ~40 MiB in all."""
    head = bundle_initrd.read_bytes()
    archive = cpio.Archive()
    budget = LARGE_INITRD - len(head)
    tree = kernel_tree()
    for path in sorted((tree / "lib" / "modules").rglob("*.ko*")):
        data = path.read_bytes()
        if budget - len(data) - 512 < 0:
            continue
        rel = path.relative_to(tree).as_posix()
        for parent in reversed(Path(rel).parents[:-1]):
            if parent.as_posix() not in archive:
                archive.add_dir(parent.as_posix())
        archive.add_file(rel, data)
        budget -= len(data) + 512
    dest.write_bytes(head + archive.to_bytes(mtime=0))
    return dest


def describe(path: Path, what: str) -> str:
    return f"{what:<13} {path.name} ({path.stat().st_size / 2**20:.2f} MiB)"


# -- processes --------------------------------------------------------------------------------

def run_process(argv: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout) of one process; its exit status must be 0."""
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True)
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{argv[0]} exited {p.returncode}: {p.stderr.decode(errors='replace').strip()}")
    return elapsed, p.stdout.decode().strip()


def peak_rss_kib(argv: list[str], tmp: Path) -> int:
    """Peak RSS of one process, as GNU time reports it.

    Not this process's own wait4(): Linux carries a process's peak RSS across fork and
    exec, so a child of this (large) process would report at least this process's RSS.
    GNU time is small, and its child's figure is that child's own.
    """
    report = tmp / "rss"
    p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(report), *argv], capture_output=True)
    if p.returncode != 0:
        raise SystemExit(f"{argv[0]} exited {p.returncode}: {p.stderr.decode(errors='replace').strip()}")
    return int(report.read_text().split()[-1])


def measure_args(fw: Path, kernel: Path, initrd: Path, vcpus: int, vcpu_type: str, vmm: str) -> list[str]:
    return ["--mode", "snp", "--vcpus", str(vcpus), "--vcpu-type", vcpu_type, "--vmm-type", vmm,
            "--ovmf", str(fw), "--kernel", str(kernel), "--initrd", str(initrd), "--append", APPEND]


def digest_hex(stdout: str) -> str:
    return stdout.split()[-1].lower()


def alternate(pairs: int, ours: list[str], theirs: list[str]) -> tuple[list[float], list[float]]:
    """Alternate the two commands ``pairs`` times: their wall times; every digest pair compared."""
    t_ours, t_theirs = [], []
    for _ in range(pairs):
        t_o, out_o = run_process(ours)
        t_t, out_t = run_process(theirs)
        if digest_hex(out_o) != digest_hex(out_t):
            raise Mismatch(f"blindbox measure printed {out_o!r}, sev-snp-measure {out_t!r}")
        t_ours.append(t_o)
        t_theirs.append(t_t)
    return t_ours, t_theirs


def import_cost(runs: int) -> tuple[float, float]:
    """Median wall seconds of `python -c "import measure"` and of `python -c pass`, alternated."""
    with_import, bare = [], []
    for _ in range(runs):
        with_import.append(run_process([sys.executable, "-c", "import measure"])[0])
        bare.append(run_process([sys.executable, "-c", "pass"])[0])
    return statistics.median(with_import), statistics.median(bare)


def cli_matrix(fw: Path, kernel: Path, initrd: Path, runs: int, expected: dict) -> float:
    """Median wall seconds of one `blindbox measure` command printing all 640 digests, each
    compared with ``expected`` (keyed (type, vmm, vcpus)), over ``runs`` processes."""
    argv = [str(OURS_CLI), "measure", "--mode", "snp", "--vcpus", f"{min(COUNTS)}-{max(COUNTS)}",
            "--vcpu-type", ",".join(VCPU_TYPES), "--vmm-type", ",".join(v for _, v in VMMS), "--ovmf", str(fw),
            "--kernel", str(kernel), "--initrd", str(initrd), "--append", APPEND]
    times = []
    for _ in range(runs):
        elapsed, out = run_process(argv)
        lines = out.splitlines()
        if lines[0].split() != ["vcpu_type", "vmm_type", "vcpus", "measurement"]:
            raise Mismatch(f"blindbox measure printed the table header {lines[0]!r}")
        got = {(t, v, int(n)): d for t, v, n, d in (line.split() for line in lines[1:])}
        want = {k: d.hex() for k, d in expected.items()}
        if got != want:
            bad = sorted(k for k in want.keys() | got.keys() if got.get(k) != want.get(k))
            raise Mismatch(f"blindbox measure's table differs from the library for {len(bad)} shapes, "
                           f"first {bad[0]}")
        times.append(elapsed)
    return statistics.median(times)


# -- in process -------------------------------------------------------------------------------

def hashing_floor(fw: Path, kernel: Path, initrd: Path, page_infos: int) -> Callable[[], None]:
    """Read the files, SHA-384 every firmware page, one SHA-384 per PAGE_INFO, SHA-256 kernel+initrd."""
    filler = bytes(0x70)                                       # a PAGE_INFO is 0x70 bytes
    sha384 = hashlib.sha384

    def floor() -> None:
        data = fw.read_bytes()
        view = memoryview(data)
        for off in range(0, len(data), 4096):
            sha384(view[off:off + 4096]).digest()
        for _ in range(page_infos):
            sha384(filler).digest()
        hashlib.sha256(kernel.read_bytes()).digest()
        hashlib.sha256(initrd.read_bytes()).digest()
    return floor


def page_runs(fw: Path) -> int:
    """How many firmware pages differ from the page before them (the ones blindbox hashes)."""
    data = fw.read_bytes()
    pages = [data[off:off + 4096] for off in range(0, len(data), 4096)]
    return sum(1 for i, page in enumerate(pages) if i == 0 or page != pages[i - 1])


def shapes() -> list[VmShape]:
    return [VmShape(max(COUNTS), CPU_SIGS[t], 0x1, PROFILES[p]) for t in VCPU_TYPES for p, _ in VMMS]


def ours_matrix(fw: Path, kernel: Path, initrd: Path) -> tuple[dict, str]:
    """All 640 digests in this process: (digests keyed (type, vmm, vcpus), the API used)."""
    launch = SnpLaunch(Firmware.load(fw))
    hashes = KernelHashes.from_files(kernel, initrd, APPEND)
    got = {}
    keys = [(t, v) for t in VCPU_TYPES for _, v in VMMS]
    if hasattr(launch, "measure_matrix"):
        try:
            result = launch.measure_matrix(shapes(), COUNTS, hashes)
        except TypeError:
            pass                   # a signature this script does not know yet: use the loop
        else:
            for key, per_count in zip(keys, result, strict=True):
                for n in COUNTS:
                    got[(*key, n)] = per_count[n].digest
            return got, "SnpLaunch.measure_matrix"
    for key, shape in zip(keys, shapes(), strict=True):
        for n, m in launch.measure_vcpu_counts(shape, COUNTS, hashes).items():
            got[(*key, n)] = m.digest
    return got, "a loop over SnpLaunch.measure_vcpu_counts"


# -- the run ----------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer pairs and repeats (a smoke run; figures are rough)")
    ap.add_argument("--json", action="store_true", help="print the header and rows as JSON")
    args = ap.parse_args()
    pairs, repeat, sample, builds = (3, 2, 3, 1) if args.quick else (11, 7, 10, 3)
    try:
        return run(args, pairs, repeat, sample, builds)
    except Mismatch as e:
        print(f"MISMATCH: {e}", file=sys.stderr)
        return 1


def compile_sources() -> None:
    """Write the bytecode of the project's packages, as installing it would (pip compiles on install).

    Without it, a checkout run under PYTHONDONTWRITEBYTECODE (or on a read-only tree) compiles every
    module it imports on every run, and the whole-process and import rows would time the compiler.
    sev-snp-measure, installed by pip, has its bytecode already.
    """
    for package in ("measure", "blindbox", "builder"):
        if not compileall.compile_dir(str(ROOT / package), quiet=2):
            raise SystemExit(f"bench: compiling {package}/ failed; run `python -m compileall {package}` to see why")


def run(args, pairs: int, repeat: int, sample: int, builds: int) -> int:
    compile_sources()
    fw, fw_pkg = ovmf_amdsev()
    kernel, kernel_pkg = debian_kernel()
    small, small_pkg = busybox_static()
    rows: list[Row] = []
    compared = 0
    with tempfile.TemporaryDirectory(prefix="bench-targets-") as tmp_name:
        tmp = Path(tmp_name)
        bundle = built_bundle(BIG_RECIPE, tmp)
        large = large_initrd(bundle / "initrd", tmp / "initrd-40m")
        header = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.machine()}",
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "mode": "quick (rough figures)" if args.quick else "full",
            "inputs": [
                f"{describe(fw, 'firmware')}  {fw_pkg}",
                f"{describe(kernel, 'kernel')}  {kernel_pkg}",
                f"{describe(small, 'small initrd')}  {small_pkg}",
                f"{describe(large, 'large initrd')}  {BIG_RECIPE.stem} bundle initrd "
                f"({(bundle / 'initrd').stat().st_size / 2**20:.2f} MiB) + {kernel_pkg.name} modules",
                f"{describe(bundle / 'rootfs.erofs', 'rootfs')}  {BIG_RECIPE.stem} bundle",
                f"cmdline       {APPEND!r}",
            ],
        }

        # whole process, one digest, 40 MiB initrd: time and peak RSS
        argv = measure_args(fw, kernel, large, 4, "EPYC-Milan", "QEMU")
        ours_argv, theirs_argv = [str(OURS_CLI), "measure", *argv], [str(THEIRS_CLI), *argv]
        whole_o, whole_t = alternate(pairs, ours_argv, theirs_argv)
        compared += pairs
        t_o, t_t = statistics.median(whole_o), statistics.median(whole_t)
        rows.append(row("whole process, one SNP digest (40 MiB initrd)", ms(t_o), ms(t_t), t_o / t_t, "<=", 0.9,
                        f"median of {pairs} alternating pairs"))

        runs = 2 * pairs - 1
        t_imp, t_bare = import_cost(runs)
        rows.append(row("import measure, vs sev-snp-measure's whole run", ms(t_imp - t_bare), ms(t_t),
                        (t_imp - t_bare) / t_t, "<=", 0.1,
                        f"median `python -c 'import measure'` {ms(t_imp)} - `python -c pass` {ms(t_bare)}, "
                        f"{runs} each"))

        # in process, one digest (small initrd)
        sig = CPU_SIGS["EPYC-Milan"]

        def ours_one():
            return SnpLaunch(Firmware.load(fw)).measure(VmShape(4, sig, 0x1, PROFILES["qemu"]),
                                                        KernelHashes.from_files(kernel, small, APPEND))

        def theirs_one():
            return oracle.oracle_digest("snp", ovmf=fw, vcpus=4, vcpu_sig=sig, kernel=kernel, initrd=small,
                                        append=APPEND, guest_features=0x1)

        t_one, m_one = best_of(repeat, ours_one)
        t_lib, d_lib = best_of(repeat, theirs_one)
        if m_one.digest != d_lib:
            raise Mismatch(f"in process: blindbox {m_one.digest.hex()}, sev-snp-measure {d_lib.hex()}")
        compared += 1
        t_floor, _ = best_of(repeat, hashing_floor(fw, kernel, small, m_one.pages))
        rows.append(row("in process, one digest, vs the hashing floor", ms(t_one), ms(t_floor), t_one / t_floor,
                        "<=", 1.25, f"floor: {fw.stat().st_size // 4096} firmware pages + {m_one.pages} "
                        f"PAGE_INFO SHA-384s + SHA-256 of kernel and initrd, files read; best of {repeat}; "
                        f"blindbox hashes a page equal to the one before it once, {page_runs(fw)} "
                        f"firmware page SHA-384s here"))
        rows.append(row("in process, one digest, speed-up vs sev-snp-measure library", ms(t_one), ms(t_lib),
                        t_lib / t_one, ">=", 1.4, f"best of {repeat}"))

        # the shape matrix
        t_mat, (got, api) = best_of(repeat, lambda: ours_matrix(fw, kernel, small))
        n = len(got)
        rows.append(row(f"{n} digests in one process vs one digest", ms(t_mat), ms(t_one), t_mat / t_one,
                        "<=", 2.0, f"{api}; best of {repeat}"))
        combos = [(t, v) for t in VCPU_TYPES for _, v in VMMS]
        picked = [(*combos[(3 * i) % len(combos)], 1 + (i * 63) // max(1, sample - 1)) for i in range(sample)]
        times = []
        for t, v, count in picked:
            elapsed, out = run_process([str(THEIRS_CLI), *measure_args(fw, kernel, small, count, t, v)])
            if digest_hex(out) != got[(t, v, count)].hex():
                raise Mismatch(f"{t} {v} {count} vCPUs: blindbox {got[(t, v, count)].hex()}, "
                               f"sev-snp-measure {digest_hex(out)}")
            times.append(elapsed)
        compared += len(picked)
        t_640 = statistics.mean(times) * n
        t_cli = cli_matrix(fw, kernel, small, 2 * pairs - 1, got)
        compared += n
        rows.append(row(f"{n} digests, one `blindbox measure` command vs {n} sev-snp-measure processes",
                        ms(t_cli), f"{t_640:.1f} s", t_640 / t_cli, ">=", 300,
                        f"median of {2 * pairs - 1} commands (`--vcpus 1-64 --vcpu-type <5> --vmm-type "
                        f"QEMU,ec2`), every row equal to the library's; sev-snp-measure extrapolated: mean of "
                        f"{len(picked)} processes (vCPUs spread 1-64) x {n}"))
        rows.append(row(f"{n} digests, library in one process vs {n} sev-snp-measure processes",
                        ms(t_mat), f"{t_640:.1f} s", t_640 / t_mat, ">=", 300,
                        f"extrapolated: mean of {len(picked)} processes (vCPUs spread 1-64) x {n}"))

        # peak RSS with the 40 MiB initrd (from the whole-process runs)
        rss_runs = 3
        r_o = statistics.median(peak_rss_kib(ours_argv, tmp) for _ in range(rss_runs))
        r_t = statistics.median(peak_rss_kib(theirs_argv, tmp) for _ in range(rss_runs))
        rows.append(row("peak RSS, one digest (40 MiB initrd)", f"{r_o / 1024:.1f} MiB", f"{r_t / 1024:.1f} MiB",
                        r_o / r_t, "<", 1.0, f"GNU time %M, median of {rss_runs} processes each"))

        # blindbox build of the default recipe
        recipe = bench_build.locked_copy(ROOT / "recipes" / "hello.yaml", tmp / "build")
        t_warm, t_noop, _ = bench_build.warm_and_noop(recipe, tmp / "build" / "out" / recipe.name,
                                                      {**os.environ}, builds)
        rows.append(row("blindbox build hello.yaml: no-op rebuild vs warm build", f"{t_noop:.2f} s",
                        f"{t_warm:.2f} s", t_noop / t_warm, "<=", 0.3, f"median of {builds} processes"))

        # verity hashing of the built rootfs
        image = tmp / "rootfs.erofs"
        shutil.copyfile(bundle / "rootfs.erofs", image)
        v_o, v_t, same = bench_verity.compare(image, repeat, tmp)
        if not same:
            raise Mismatch("blindbox's verity hash device differs from veritysetup's")
        compared += 1
        rows.append(row("verity hashing of rootfs.erofs vs veritysetup format", f"{v_o:.3f} s", f"{v_t:.3f} s",
                        v_o / v_t, "<=", 1.2, f"best of {repeat}; identical hash devices"))

    header["compared"] = f"all {compared} digest pairs equal (blindbox = sev-snp-measure / veritysetup)"
    if args.json:
        print(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print_table(header, rows)
    return 0


def print_table(header: dict, rows: list[Row]) -> None:
    print(f"# bench/targets.py  {header['date']}  {header['mode']}")
    print(f"# machine: {header['machine']}")
    print(f"# python:  {header['python']}")
    for line in header["inputs"]:
        print(f"# input:   {line}")
    print()
    print("| target | blindbox | reference | ratio | target | result |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}"
        print(f"| {r.target} | {r.ours} | {r.reference} | {ratio} | {r.goal} | {r.status} |")
    print()
    for r in rows:
        if r.note:
            print(f"- {r.target}: {r.note}")
    print(f"\n# {header['compared']}")


if __name__ == "__main__":
    sys.exit(main())
