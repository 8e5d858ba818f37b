"""The same lock builds the same bundle on another host: Debian 13 (trixie) against this Debian 12.

A trixie root made by mmdebstrap has its own Python (3.13) and its own zlib (1.3.x), and takes
blindbox from this checkout with its dependencies from trixie's apt (python3-click, -yaml,
-pyelftools, -cryptography), not from PyPI.  recipes/hello.yaml and recipes/python-app.yaml,
locked once, are built here and inside that root (chroot in a private mount namespace, the
content-addressed input cache bind-mounted, ``--offline``: only pinned inputs, no network), and
the two bundles must be identical byte for byte; a difference is reported by file and offset
with check-repro's comparison (builder.repro.compare_bundles).

The root's tarball is cached under the blindbox cache (``cross-host/``), keyed by the
mmdebstrap command line, so only the first run pays for it (about a minute).  Needs root (CI
runs as root): mmdebstrap's root mode, mount and chroot.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.repro import compare_bundles
from builder.sources import cache_root
from tests.tools import require

from .appbuild import built_app
from .hellobuild import ROOT, built_hello, locked_hello

pytestmark = [pytest.mark.integration, pytest.mark.network]

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-click", "python3-yaml", "python3-pyelftools", "python3-cryptography")
MMDEBSTRAP = ["--quiet", "--variant=apt", "--include=" + ",".join(PACKAGES),
              # the reachable archive may lag; apt still checks every signature
              "--aptopt=Acquire::Check-Valid-Until \"false\""]
SOURCES = ("blindbox", "builder", "measure")
ENV = {"HOME": "/root", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": "/opt/blindbox"}


def _root_tarball() -> Path:
    """The trixie root as a tarball in the blindbox cache, made once (under a lock) per mmdebstrap command."""
    tool = require("mmdebstrap", "mmdebstrap")
    key = hashlib.sha256(json.dumps([SUITE, MIRROR, MMDEBSTRAP]).encode()).hexdigest()[:16]
    where = cache_root() / "cross-host"
    where.mkdir(parents=True, exist_ok=True)
    tarball = where / f"{SUITE}-{key}.tar"
    with open(where / f"{SUITE}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            part = where / f"{SUITE}-{key}.part.tar"  # mmdebstrap picks the format by the name
            part.unlink(missing_ok=True)
            p = subprocess.run([tool, *MMDEBSTRAP, SUITE, str(part), MIRROR], capture_output=True, text=True)
            assert p.returncode == 0, f"mmdebstrap failed ({p.returncode}): {p.stderr[-3000:]}"
            os.replace(part, tarball)
    return tarball


@pytest.fixture(scope="module")
def trixie(tmp_path_factory) -> Path:
    """A trixie root with blindbox from this checkout in /opt/blindbox."""
    if os.geteuid() != 0:
        pytest.fail("the cross-host test makes a chroot and mounts in it, so it runs as root (CI does): run it "
                    "as root.", pytrace=False)
    root = tmp_path_factory.mktemp("trixie-root")
    subprocess.run(["tar", "-xf", str(_root_tarball()), "-C", str(root)], check=True)
    for name in SOURCES:
        shutil.copytree(ROOT / name, root / "opt" / "blindbox" / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


def in_root(root: Path, *argv: str) -> subprocess.CompletedProcess:
    """Run ``argv`` chrooted into ``root`` in a private mount namespace, with /proc, /dev and the
    host's blindbox cache (at the same path, content-addressed) mounted."""
    cache = str(cache_root())
    (root / cache.lstrip("/")).mkdir(parents=True, exist_ok=True)
    script = ('mount --bind "$1" "$2$1" && mount -t proc proc "$2/proc" && mount --rbind /dev "$2/dev" '
              '&& root="$2" && shift 2 && exec chroot "$root" "$@"')
    env = [f"{k}={v}" for k, v in {**ENV, "BLINDBOX_CACHE": cache}.items()]
    return subprocess.run([require("unshare", "util-linux"), "--mount", "--fork", "sh", "-c", script, "sh", cache,
                           str(root), "env", "-i", *env, *argv], capture_output=True, text=True, timeout=900)


def test_the_root_is_trixie_with_its_own_python_and_zlib(trixie):
    p = in_root(trixie, "python3", "-c", "import sys, zlib; print(sys.version_info[:2], zlib.ZLIB_RUNTIME_VERSION)")
    assert p.returncode == 0, p.stderr
    version, zlib_version = p.stdout.split(") ")
    assert version == "(3, 13", p.stdout
    assert (trixie / "etc/debian_version").read_text().startswith("13"), "the root is not Debian 13"
    # the interpreter's own zlib there (1.3.1 when written) is not what compresses the initrd
    assert re.fullmatch(r"\d+\.\d+(\.\d+)*\S*", zlib_version.strip()), p.stdout


def _build_inside(trixie: Path, recipe_dir: Path, recipe_name: str, name: str) -> Path:
    inside = Path("/work") / name
    shutil.copytree(recipe_dir, trixie / inside.relative_to("/") / "recipe", symlinks=True)
    p = in_root(trixie, "python3", "-m", "blindbox.cli", "build", str(inside / "recipe" / recipe_name),
                "--out", str(inside / "out"), "--offline")
    assert p.returncode == 0, f"the build inside trixie failed ({p.returncode}): {p.stderr[-3000:]}"
    return trixie / inside.relative_to("/") / "out"


def assert_identical(host: Path, other: Path) -> None:
    diffs = compare_bundles(host, other, explain=True)
    assert not diffs, "the trixie build differs from the bookworm build:\n" + "\n".join(
        d.describe() + (f"\n{d.detail}" if d.detail else "") for d in diffs)


def test_hello_is_byte_identical_on_trixie(trixie):
    host = built_hello()
    recipe = locked_hello()
    bundle = _build_inside(trixie, recipe.directory, recipe.path.name, "hello")
    assert_identical(host.out, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "from the pinned Debian package zlib1g" in manifest["tool"]["initrd_compressor"]


def test_python_app_is_byte_identical_on_trixie(trixie, tmp_path_factory):
    host, _, recipe = built_app(tmp_path_factory)
    bundle = _build_inside(trixie, recipe.directory, recipe.path.name, "python-app")
    assert_identical(host, bundle)


def test_a_difference_is_named_by_file_and_offset(tmp_path):
    """The report the two tests above give when the bundles differ (check-repro's comparison)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d, initrd in ((a, b"\x1f\x8b\x08\x00same-prefix-X"), (b, b"\x1f\x8b\x08\x00same-prefix-Y")):
        d.mkdir()
        (d / "initrd").write_bytes(initrd)
        (d / "cmdline").write_bytes(b"console=ttyS0")
    with pytest.raises(AssertionError, match=r"initrd: first differing byte at offset 16 \(0x10\)"):
        assert_identical(a, b)
