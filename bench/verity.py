#!/usr/bin/env python3
"""Benchmark: blindbox's pure-Python dm-verity beside `veritysetup format` on the same image.

Writes a deterministic pseudo-random data image (256 MiB by default), or takes a real one
(--image, e.g. a bundle's rootfs.erofs), formats it with both (sha256, 4096-byte blocks, a
superblock, the same salt and UUID), checks that the hash devices and root hashes are
identical, and prints the best wall time of each and the ratio (blindbox / veritysetup).

    .venv/bin/python bench/verity.py [--mib 256 | --image out/python-app/rootfs.erofs] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from measure import verity  # noqa: E402
from bench.timing import best_of  # noqa: E402

SALT = bytes.fromhex("9c1f3a7be0d245866f0c2e9d4b7a1835e6c0f2a9d8b3471560ae2c9f1d7b4e03")
UUID = uuid.UUID("5f1e8a2c-0d4b-4e6f-9a7c-3b2d1e0f4a5b")


def compare(data: Path, repeat: int, tmp: Path) -> tuple[float, float, bool]:
    """Format ``data`` with both implementations: (best blindbox s, best veritysetup s, identical)."""
    tool = shutil.which("veritysetup") or "/usr/sbin/veritysetup"
    params = verity.VerityParams(salt=SALT, uuid=UUID)
    ours, theirs = tmp / "ours.hash", tmp / "theirs.hash"

    def run_theirs() -> str:
        theirs.unlink(missing_ok=True)
        out = subprocess.run([tool, "format", str(data), str(theirs), "--salt", SALT.hex(),
                              "--uuid", str(UUID)], capture_output=True, text=True, check=True).stdout
        found = re.search(r"^Root hash:\s*([0-9a-f]+)$", out, re.M)
        assert found, out
        return found.group(1)

    t_ours, tree = best_of(repeat, lambda: verity.format_files(data, ours, params))
    t_theirs, root = best_of(repeat, run_theirs)
    return t_ours, t_theirs, tree.root_hash.hex() == root and ours.read_bytes() == theirs.read_bytes()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="data image size in MiB")
    ap.add_argument("--image", type=Path, help="hash this image instead (a whole number of 4096-byte blocks)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-verity-") as tmp:
        data = Path(tmp, "data.img")
        if args.image is not None:
            shutil.copyfile(args.image, data)     # the same file system for both
            args.mib = data.stat().st_size / (1 << 20)
        else:
            rng = random.Random(256)
            with open(data, "wb") as f:
                for _ in range(args.mib):
                    f.write(rng.randbytes(1 << 20))
        t_ours, t_theirs, same = compare(data, args.repeat, Path(tmp))
    what = f"{args.image} ({args.mib:.1f} MiB)" if args.image is not None else f"{args.mib} MiB of pseudo-random bytes"
    print(f"data image        {what}, sha256, 4096-byte blocks, superblock")
    print(f"blindbox          {t_ours:8.3f} s  ({args.mib / t_ours:7.1f} MiB/s)")
    print(f"veritysetup       {t_theirs:8.3f} s  ({args.mib / t_theirs:7.1f} MiB/s)")
    print(f"ratio             {t_ours / t_theirs:8.2f}  (blindbox / veritysetup, best of {args.repeat})")
    print(f"identical output  {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
