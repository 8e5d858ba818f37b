#!/usr/bin/env python3
"""Benchmark: how long `blindbox build` takes for a recipe, side by side.

Each figure is the wall time of a complete `blindbox build` process (interpreter start
included), the median of --repeat runs, on a copy of the recipe locked against what the
archive serves today (so the benchmark does not depend on the committed lock being served):

  warm         the downloads and the unpacked packages are in the cache (--force)
  warm-debs    only the downloaded .debs are cached: packages are unpacked again
  no-op        the bundle is already current: nothing but verification happens
  digests      blindbox: all the recipe's launch digests from the built bundle
               (firmware hashed once)  vs  sev-snp-measure 0.0.13 run once per shape
               on the same files (the oracle does not share work between shapes)

Ratios are printed against the warm build, and oracle/blindbox for the digests.

    .venv/bin/python bench/build.py [RECIPE] [--repeat 3]      (e.g. recipes/python-app.yaml)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.lock import lock_recipe, read_lock, write_lock  # noqa: E402
from builder.manifest import Manifest  # noqa: E402
from builder.recipe import load_recipe  # noqa: E402
from builder.sources import cache_root, fetch_url  # noqa: E402
from measure.kernel_hashes import KernelHashes  # noqa: E402
from measure.ovmf import Firmware  # noqa: E402
from measure.snp import SnpLaunch, VmShape  # noqa: E402
from measure.vmm import PROFILES  # noqa: E402
from tests.realinputs import ALLOW_STALE, archive  # noqa: E402

STALE = [a for s in ALLOW_STALE for a in ("--allow-stale", s)]


def build_once(recipe: Path, out: Path, env: dict, *extra: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "blindbox.cli", "build", str(recipe), "--out", str(out), "--json",
                        *STALE, *extra], capture_output=True, text=True, cwd=ROOT, env=env)
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"build failed: {p.stderr}")
    return elapsed, json.loads(p.stdout)


def median(fn, repeat: int) -> tuple[float, object]:
    times, last = [], None
    for _ in range(repeat):
        t, last = fn()
        times.append(t)
    return statistics.median(times), last


def locked_copy(recipe_path, tmp: Path):
    """A copy of the recipe in ``tmp``, locked against what the archive serves today."""
    src = load_recipe(recipe_path)
    # the recipe's directory (its local inputs, such as python-app/app.py), without lock files
    shutil.copytree(src.directory, tmp / "r", ignore=shutil.ignore_patterns("*.lock"))
    recipe = load_recipe(tmp / "r" / src.path.name)
    write_lock(recipe.lock_path, lock_recipe(recipe, archive(), fetch_url).lock)
    return recipe


def warm_and_noop(recipe, out: Path, env: dict, repeat: int) -> tuple[float, float, dict]:
    """Median seconds of a warm build (--force) and of a no-op rebuild, and the warm build's result."""
    build_once(recipe.path, out, env)                        # warm the cache (downloads, unpacking)
    t_warm, res = median(lambda: build_once(recipe.path, out, env, "--force"), repeat)
    t_noop, noop = median(lambda: build_once(recipe.path, out, env), repeat)
    assert noop["up_to_date"], "the second build was not a no-op"
    return t_warm, t_noop, res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "hello.yaml"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="blindbox-bench-") as tmp:
        tmp = Path(tmp)
        recipe = locked_copy(args.recipe, tmp)
        env = {**os.environ}
        out = tmp / "out" / recipe.name
        t_warm, t_noop, res = warm_and_noop(recipe, out, env, args.repeat)

        def debs_only():
            cache = tmp / f"cache-{time.perf_counter_ns()}"
            (cache / "sha256").mkdir(parents=True)
            for e in read_lock(recipe.lock_path).inputs:
                if e.kind in ("debian", "url"):   # local inputs are read from the recipe directory
                    shutil.copy2(cache_root() / "sha256" / e.sha256, cache / "sha256" / e.sha256)
            r = build_once(recipe.path, tmp / "out-debs", {**env, "BLINDBOX_CACHE": str(cache)}, "--force",
                           "--offline")
            shutil.rmtree(cache)
            return r
        t_debs, debs = median(debs_only, args.repeat)

        m = Manifest.from_json((out / "manifest.json").read_bytes())
        files = {o.role: out / o.file for o in m.outputs}

        def ours():
            t0 = time.perf_counter()
            launch = SnpLaunch(Firmware.load(files["firmware"]))
            hashes = KernelHashes.from_files(files["kernel"], files["initrd"], m.cmdline)
            groups: dict[tuple, list] = {}
            for e in m.measurements:
                groups.setdefault((e.vmm_profile, e.vcpu_sig, e.guest_features), []).append(e.vcpus)
            got = {}
            for (prof, sig, gf), counts in groups.items():
                for n, d in launch.measure_vcpu_counts(VmShape(max(counts), sig, gf, PROFILES[prof]), counts,
                                                        hashes).items():
                    got[(prof, sig, gf, n)] = d.digest.hex()
            return time.perf_counter() - t0, got

        def theirs():
            from sevsnpmeasure import guest
            from sevsnpmeasure.sev_mode import SevMode
            from sevsnpmeasure.vmm_types import VMMType
            t0 = time.perf_counter()
            got = {(e.vmm_profile, e.vcpu_sig, e.guest_features, e.vcpus): guest.calc_launch_digest(
                SevMode.SEV_SNP, e.vcpus, e.vcpu_sig, str(files["firmware"]), str(files["kernel"]),
                str(files["initrd"]), m.cmdline, e.guest_features, vmm_type=VMMType.QEMU).hex()
                for e in m.measurements}
            return time.perf_counter() - t0, got

        t_ours, got_ours = median(ours, args.repeat)
        t_theirs, got_theirs = median(theirs, args.repeat)
        published = {(e.vmm_profile, e.vcpu_sig, e.guest_features, e.vcpus): e.measurement for e in m.measurements}
        if not (got_ours == got_theirs == published):
            print("MISMATCH between blindbox, sev-snp-measure and the manifest", file=sys.stderr)
            return 1

    steps = ", ".join(f"{k} {v:.2f}" for k, v in res["timings"].items())
    print(f"# bench/build.py  {recipe.path.name}  python {platform.python_version()}  {platform.machine()}  "
          f"{os.cpu_count()} cpus  median of {args.repeat}  {time.strftime('%Y-%m-%d')}")
    print(f"{'what':<44} {'seconds':>8} {'vs warm':>8}")
    print(f"{'warm build (debs and unpacked trees cached)':<44} {t_warm:>8.2f} {1.0:>8.2f}")
    print(f"{'warm build, packages unpacked again':<44} {t_debs:>8.2f} {t_debs / t_warm:>8.2f}")
    print(f"{'no-op rebuild (bundle current)':<44} {t_noop:>8.2f} {t_noop / t_warm:>8.2f}")
    n = len(m.measurements)
    print(f"{f'{n} digests: blindbox (firmware hashed once)':<44} {t_ours:>8.3f}")
    print(f"{f'{n} digests: sev-snp-measure, once per shape':<44} {t_theirs:>8.3f} "
          f"{'(oracle/blindbox ' + format(t_theirs / t_ours, '.1f') + 'x)':>8}")
    print(f"# warm build steps (s): {steps}")
    print(f"# all {n} digests agree: blindbox = sev-snp-measure = manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
