"""Reproducibility: two independent builds of hello under varied conditions are identical,
and a build that is not reproducible is reported with the file and its first differing offset.

The identical-builds test uses hello with an id_block (test keys), so the signed ID auth
files of every shape are covered too: their ECDSA signatures must be deterministic.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.repro import check_repro, first_difference
from builder.sources import cache_root
from tests.realinputs import ALLOW_STALE
from tests.tools import require

from .appbuild import built_app
from .hellobuild import ROOT, locked_hello, locked_hello_with_id_block, scratch

pytestmark = [pytest.mark.integration, pytest.mark.network]
LOCALE_PROBE = "import locale; print(locale.setlocale(locale.LC_ALL, ''), locale.localeconv()['decimal_point'])"
STALE = [a for s in ALLOW_STALE for a in ("--allow-stale", s)]

#: Build B's interpreter loads this: it stamps the process id into launch-snp.sh, the kind
#: of leak (pid, time, host) that makes a build unreproducible.
LEAK = '''
import os
import builder.launch as launch
_render = launch.render
def render(**kw):
    return _render(**kw) + ("# built by process %d\\n" % os.getpid()).encode()
launch.render = render
'''


def test_hello_builds_are_byte_identical_under_varied_conditions():
    require("faketime", "faketime")
    recipe = locked_hello_with_id_block()
    res = check_repro(recipe, cache=cache_root(), allow_stale=ALLOW_STALE)
    assert res.identical, [d.describe() for d in res.differences]
    id_files = sorted(f"{s.id.replace(':', '_')}{suffix}" for s in recipe.shapes()
                      for suffix in (".id-auth.b64", ".id-auth.bin", ".id-block.b64", ".id-block.bin"))
    assert len(id_files) == 48
    assert res.files == sorted(["OVMF.amdsev.fd", "bzImage", "cmdline", "initrd", "launch-snp.sh",
                                "manifest.json", "provenance.intoto.json", *id_files])
    varied = {c: (a, b) for c, a, b in res.variations}
    assert varied["umask"] == ("022", "077") and varied["SOURCE_DATE_EPOCH env"] == ("unset", "1")
    assert varied["TZ"][0] != varied["TZ"][1]
    assert varied["locale"] == ("C.UTF-8", "tr_TR.UTF-8"), "run scripts/setup: it generates tr_TR.UTF-8"
    assert varied["clock"][1].startswith("faketime 2041")
    a, b = res.runs
    # build B's locale is really in effect: a process with its environment selects it
    probe = subprocess.run([sys.executable, "-c", LOCALE_PROBE], env=b.env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["tr_TR.UTF-8", ","]
    assert a.result["measurements"] == b.result["measurements"]
    assert a.result["bundle"] != b.result["bundle"]
    assert not res.workdir.exists()                      # cleaned up when identical


def test_injected_difference_is_named_with_file_and_offset():
    require("diffoscope", "diffoscope-minimal")
    recipe = locked_hello()
    site = scratch("blindbox-leak-")
    (site / "sitecustomize.py").write_text(LEAK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    p = subprocess.run([sys.executable, "-m", "blindbox.cli", "check-repro", str(recipe.path), *STALE],
                       capture_output=True, text=True, cwd=ROOT, env=env)
    assert p.returncode == 3, p.stderr
    lines = p.stdout.splitlines()
    report = [line for line in lines if line.startswith("NOT REPRODUCIBLE: ")]
    work = Path(next(line for line in lines if line.startswith("both bundles are kept in "))[25:])
    try:
        a = next(work.glob("a/out/*"))
        b = next(work.glob("b*/out/*"))
        offset = first_difference(a / "launch-snp.sh", b / "launch-snp.sh")
        marker = (a / "launch-snp.sh").read_bytes().index(b"# built by process ")
        assert marker < offset < marker + 30                      # inside the leaked process id
        manifest_offset = first_difference(a / "manifest.json", b / "manifest.json")
        provenance_offset = first_difference(a / "provenance.intoto.json", b / "provenance.intoto.json")
        # the script, its sha256 in the manifest, and the two sha256 in the provenance; nothing else
        assert report == [
            f"NOT REPRODUCIBLE: launch-snp.sh: first differing byte at offset {offset} ({offset:#x})",
            f"NOT REPRODUCIBLE: manifest.json: first differing byte at offset {manifest_offset} "
            f"({manifest_offset:#x})",
            f"NOT REPRODUCIBLE: provenance.intoto.json: first differing byte at offset {provenance_offset} "
            f"({provenance_offset:#x})"]
        provenance = [json.loads((d / "provenance.intoto.json").read_bytes())["subject"] for d in (a, b)]
        assert [s["name"] for s in provenance[0] if s not in provenance[1]] == ["launch-snp.sh", "manifest.json"]
        assert "built by process" in p.stdout                     # diffoscope's explanation follows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_kept_work_directory_holds_no_private_keys():
    """With --keep (or after a difference) both bundles stay for inspection; the key copies do not."""
    recipe = locked_hello_with_id_block()
    res = check_repro(recipe, cache=cache_root(), allow_stale=ALLOW_STALE, keep=True)
    try:
        assert res.identical and res.workdir.exists()
        kept = sorted(p.name for p in res.workdir.rglob("*") if p.is_file())
        assert "manifest.json" in kept
        for key in recipe.id_block.keys():
            assert not any(p.name == Path(key.file).name for p in res.workdir.rglob("*")), key.file
    finally:
        shutil.rmtree(res.workdir, ignore_errors=True)


def test_python_app_builds_are_byte_identical_under_varied_conditions(tmp_path_factory):
    """The root image, its hash device and root hash included, and equal to the shared test build."""
    require("faketime", "faketime")
    bundle, _, recipe = built_app(tmp_path_factory)
    res = check_repro(recipe, cache=cache_root(), allow_stale=ALLOW_STALE, reference=bundle)
    assert res.identical, [d.describe() for d in res.differences]
    assert {"rootfs.erofs", "rootfs.verity", "manifest.json", "provenance.intoto.json"} <= set(res.files)


def test_python_app_from_two_fresh_clones_is_byte_identical(tmp_path, tmp_path_factory):
    """Two clones of this repository, each building python-app with its own code, give the same bytes."""
    git = require("git", "git")
    bundle, _, recipe = built_app(tmp_path_factory)
    outs = []
    for name in ("one", "two"):
        clone = tmp_path / name
        subprocess.run([git, "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
        # the lock made today (the committed one may pin versions the archive no longer serves)
        shutil.copyfile(recipe.lock_path, clone / "recipes" / "python-app.lock")
        env = {**os.environ, "PYTHONPATH": str(clone)}
        where = subprocess.run([sys.executable, "-c", "import builder, measure; print(builder.__file__, "
                                                      "measure.__file__)"], capture_output=True, text=True,
                               env=env, cwd=clone, check=True).stdout.split()
        assert all(w.startswith(str(clone)) for w in where), where    # the clone's code builds
        out = tmp_path / f"out-{name}"
        p = subprocess.run([sys.executable, "-m", "blindbox.cli", "build", "recipes/python-app.yaml", "--out",
                            str(out), *STALE], capture_output=True, text=True, cwd=clone, env=env)
        assert p.returncode == 0, p.stderr
        outs.append(out)
    names = sorted(p.name for p in bundle.iterdir())
    assert "rootfs.erofs" in names
    for out in outs:
        assert sorted(p.name for p in out.iterdir()) == names
        for n in names:
            assert first_difference(bundle / n, out / n) is None, n
