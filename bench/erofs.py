#!/usr/bin/env python3
"""Benchmark: blindbox's EROFS writer beside `mkfs.erofs` (uncompressed) on the same tree.

Makes a deterministic pseudo-random staging tree (by default 4,000 files in 200
directories, 128 MiB, plus symlinks and hard links), writes its image with both, checks
both with `fsck.erofs`, and prints the best wall time of each and the ratio
(blindbox / mkfs.erofs).  The bytes differ (mkfs.erofs packs tails inline and writes a
superblock checksum; blindbox does neither), so only the sizes are shown side by side.

    .venv/bin/python bench/erofs.py [--files 4000] [--mib 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.steps import erofs  # noqa: E402
from bench.timing import best_of  # noqa: E402

EPOCH = 1_700_000_000
UUID = uuid.UUID("3d9a6c1e-7b2f-4e85-a0c4-5f1b8e2d9a37")


def make_tree(root: Path, files: int, mib: int) -> None:
    rng = random.Random(9)
    dirs = [root]
    for i in range(max(1, files // 20)):
        d = rng.choice(dirs) / f"dir{i:04d}"
        d.mkdir()
        dirs.append(d)
    # sizes: mostly small, like a Python installation, scaled to the requested total
    sizes = [int(rng.paretovariate(1.2) * 2000) for _ in range(files)]
    scale = mib * (1 << 20) / sum(sizes)
    made: list[Path] = []
    for i, size in enumerate(sizes):
        p = rng.choice(dirs) / f"file{i:05d}.py"
        p.write_bytes(rng.randbytes(int(size * scale)))
        made.append(p)
    for i in range(files // 50):
        os.symlink(os.path.relpath(rng.choice(made), root), root / f"link{i:04d}")
        os.link(rng.choice(made), root / f"hard{i:04d}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=4000)
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    mkfs = shutil.which("mkfs.erofs") or "/usr/bin/mkfs.erofs"
    fsck = shutil.which("fsck.erofs") or "/usr/bin/fsck.erofs"
    params = erofs.ErofsParams(epoch=EPOCH, uuid=UUID, volume_name=b"bench")
    with tempfile.TemporaryDirectory(prefix="bench-erofs-") as tmp:
        src, ours, theirs = Path(tmp, "src"), Path(tmp, "ours.img"), Path(tmp, "theirs.img")
        src.mkdir()
        make_tree(src, args.files, args.mib)

        def run_theirs() -> None:
            theirs.unlink(missing_ok=True)
            subprocess.run([mkfs, "--quiet", f"-T{EPOCH}", f"-U{UUID}", "-x-1", str(theirs), str(src)],
                           capture_output=True, text=True, check=True)

        t_ours, image = best_of(args.repeat, lambda: erofs.write_image_from_directory(src, ours, params))
        t_theirs, _ = best_of(args.repeat, run_theirs)
        ok = all(subprocess.run([fsck, str(p)], capture_output=True).returncode == 0 for p in (ours, theirs))
        size_theirs = theirs.stat().st_size
    print(f"tree              {args.files} files, {args.mib} MiB, {image.inodes} inodes")
    print(f"blindbox          {t_ours:8.3f} s  image {image.size / (1 << 20):8.1f} MiB")
    print(f"mkfs.erofs        {t_theirs:8.3f} s  image {size_theirs / (1 << 20):8.1f} MiB")
    print(f"ratio             {t_ours / t_theirs:8.2f}  (blindbox / mkfs.erofs, best of {args.repeat})")
    print(f"fsck.erofs        {'both pass' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
