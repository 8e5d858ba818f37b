"""Rebuilding after Debian moves on: vendored inputs, offline builds from them, the snapshot fallback.

The offline builds run in a subprocess with an empty HOME and cache and with every network
origin pointed at a closed port on 127.0.0.1 (the Debian mirrors, http(s) proxies), so a
build that reached for the network would fail.  The quick-start test serves sid's real
signed index from a local "archive" that has no pool file, and the firmware from a local
snapshot archive; snapshot.debian.org itself is never contacted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from builder.lock import read_lock
from builder.manifest import Manifest
from builder.sources import ContentCache, DebianPackage
from tests.builder.localarchive import serve, sid_archive_routes, snapshot_routes
from tests.realinputs import ALLOW_STALE

from .hellobuild import ROOT, built_hello, locked_hello, locked_hello_with_id_block, scratch

pytestmark = [pytest.mark.integration, pytest.mark.network]
STALE = [a for s in ALLOW_STALE for a in ("--allow-stale", s)]
TS = "20261117T000000Z"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]                # nothing listens there once the socket is closed


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "blindbox.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """An empty HOME and cache, and every network origin at a closed local port."""
    dead = f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("BLINDBOX_CACHE", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), BLINDBOX_DEBIAN_MIRROR=f"{dead}/debian",
               BLINDBOX_DEBIAN_SECURITY_MIRROR=f"{dead}/debian-security", http_proxy=dead, https_proxy=dead,
               HTTP_PROXY=dead, HTTPS_PROXY=dead, no_proxy="", NO_PROXY="")
    env.update(extra)
    return env


def run_isolated(args, env):
    return subprocess.run([sys.executable, "-m", "blindbox.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env)


@pytest.fixture(scope="module")
def vendored():
    recipe = locked_hello()
    out = scratch("blindbox-vendor-") / "inputs"
    p = cli("vendor", str(recipe.path), "--out", str(out), "--json", *STALE)
    assert p.returncode == 0, p.stderr
    return recipe, out, json.loads(p.stdout)


def _copy(vendor_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "inputs"
    shutil.copytree(vendor_dir, dest)
    return dest


def test_vendor_writes_every_pin_with_its_index(vendored):
    recipe, out, doc = vendored
    lock = read_lock(recipe.lock_path)
    index = json.loads((out / "inputs.json").read_bytes())
    assert index["lock_sha256"] == lock.sha256 and index["recipe"] == "hello"
    assert [i["name"] for i in index["inputs"]] == lock.names()
    for item, entry in zip(index["inputs"], lock.inputs, strict=True):
        assert (item["kind"], item["sha256"], item["size"], item["origin"]) == \
            (entry.kind, entry.sha256, entry.size, entry.origin)
        assert (out / item["file"]).stat().st_size == entry.size
    assert sorted(p.name for p in out.iterdir()) == ["debian", "inputs.json"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]        # no temporary left behind


def test_offline_build_from_vendored_inputs_alone_matches_a_normal_build(vendored, tmp_path):
    recipe, out, _ = vendored
    normal = built_hello().out
    home = tmp_path / "home"
    home.mkdir()
    env = isolated_env(home)
    p = run_isolated(["build", str(recipe.path), "--inputs", str(out), "--offline", "--out", str(tmp_path / "b")],
                     env)
    assert p.returncode == 0, p.stderr
    files = sorted(f.name for f in normal.iterdir())
    assert sorted(f.name for f in (tmp_path / "b").iterdir()) == files
    for name in files:
        assert (tmp_path / "b" / name).read_bytes() == (normal / name).read_bytes(), name
    assert not (home / ".cache" / "blindbox" / "apt").exists()          # apt was never run
    # without the vendored inputs, the same empty cache cannot build: the directory was what it used
    shutil.rmtree(home / ".cache")
    p = run_isolated(["build", str(recipe.path), "--offline", "--out", str(tmp_path / "c")], env)
    assert p.returncode == 2 and "--offline forbids fetching it" in p.stderr


def test_tampered_vendored_file_is_refused_with_exit_2(vendored, tmp_path):
    recipe, out, doc = vendored
    inputs = _copy(out, tmp_path)
    item = next(i for i in doc["inputs"] if i["name"] == "firmware")
    with open(inputs / item["file"], "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    home = tmp_path / "home"
    home.mkdir()
    p = run_isolated(["build", str(recipe.path), "--inputs", str(inputs), "--offline", "--out", str(tmp_path / "b")],
                     isolated_env(home))
    assert p.returncode == 2, p.stderr
    assert f"{inputs / item['file']} has sha256" in p.stderr
    assert f"but the lock pins {item['sha256']} for input 'firmware'" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "b").exists()


def test_missing_vendored_file_is_refused_with_exit_2(vendored, tmp_path):
    recipe, out, doc = vendored
    inputs = _copy(out, tmp_path)
    item = next(i for i in doc["inputs"] if i["name"] == "busybox")
    (inputs / item["file"]).unlink()
    home = tmp_path / "home"
    home.mkdir()
    p = run_isolated(["build", str(recipe.path), "--inputs", str(inputs), "--offline", "--out", str(tmp_path / "b")],
                     isolated_env(home))
    assert p.returncode == 2, p.stderr
    assert f"{inputs / item['file']} is missing: it should hold input 'busybox'" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "b").exists()
    p = run_isolated(["build", str(recipe.path), "--inputs", str(tmp_path), "--offline", "--out",
                      str(tmp_path / "b")], isolated_env(home))
    assert p.returncode == 2 and f"{tmp_path} has no inputs.json" in p.stderr


def test_vendor_refuses_a_foreign_directory_and_replaces_its_own(vendored, tmp_path):
    recipe, out, _ = vendored
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    p = cli("vendor", str(recipe.path), "--out", str(busy), "--offline")
    assert p.returncode == 2
    assert f"--out {busy} is not empty: it holds 1 entries that blindbox did not write (e.g. 'notes.txt')" \
        in p.stderr
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    again = _copy(out, tmp_path)
    (again / "debian" / "stale-leftover.deb").write_bytes(b"x")
    p = cli("vendor", str(recipe.path), "--out", str(again), "--offline")
    assert p.returncode == 0, p.stderr
    assert "replaced the previous copy" in p.stdout and not (again / "debian" / "stale-leftover.deb").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("vendor", str(recipe.path), "--out", str(empty), "--offline").returncode == 0
    assert (empty / "inputs.json").is_file()


def test_vendor_that_fails_leaves_no_directory(tmp_path):
    recipe = locked_hello()
    d = tmp_path / "recipe"
    d.mkdir()
    shutil.copy(recipe.path, d / "hello.yaml")
    lock = json.loads(recipe.lock_path.read_bytes())
    fw = next(e for e in lock["inputs"] if e["name"] == "firmware")
    for rec in (fw, fw["debian"]):
        rec["sha256"] = "0" * 64                 # never cached, and --offline may not fetch it
    (d / "hello.lock").write_text(json.dumps(lock, indent=2))
    p = cli("vendor", str(d / "hello.yaml"), "--out", str(tmp_path / "v"), "--offline")
    assert p.returncode == 2, p.stderr
    assert "offline mode forbids downloading it" in p.stderr and "Traceback" not in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["recipe"]


def test_quick_start_survives_a_package_the_archive_no_longer_serves(tmp_path):
    """hello with its lock's snapshot at a local server: the archive (sid's real signed index, no pool
    files) no longer serves the pinned firmware, so it comes from the snapshot, verified by its pin."""
    recipe = locked_hello()
    normal = built_hello()
    lock = json.loads(recipe.lock_path.read_bytes())
    fw = DebianPackage.from_dict(next(e for e in lock["inputs"] if e["name"] == "firmware")["debian"])
    shared = ContentCache()
    fresh = ContentCache(tmp_path / "cache")
    for entry in lock["inputs"]:            # the other pins are cached already: only the firmware is fetched
        if entry["name"] != "firmware":
            fresh.put_file(shared.entry(entry["sha256"]), entry["sha256"])
    d = tmp_path / "recipe"
    d.mkdir()
    shutil.copy(recipe.path, d / "hello.yaml")
    with serve(sid_archive_routes()) as archive, \
            serve(snapshot_routes(TS, {fw.filename: shared.entry(fw.sha256)})) as snap:
        lock["snapshot"] = {"base": snap.base, "timestamp": TS}
        (d / "hello.lock").write_text(json.dumps(lock, indent=2))
        env = {"BLINDBOX_CACHE": str(fresh.root), "BLINDBOX_DEBIAN_MIRROR": f"{archive.base}/debian"}
        p = cli("build", str(d / "hello.yaml"), "--out", str(tmp_path / "b"), "--allow-stale", "sid", env=env)
        assert p.returncode == 0, p.stderr
        assert snap.requests == [f"/archive/debian/{TS}/{fw.filename}"]
        assert any(r.startswith("/debian/pool/") for r in archive.requests)       # asked first, 404
    for name in ("OVMF.amdsev.fd", "bzImage", "initrd", "cmdline", "launch-snp.sh"):
        assert (tmp_path / "b" / name).read_bytes() == (normal.out / name).read_bytes(), name
    got = Manifest.from_json((tmp_path / "b" / "manifest.json").read_bytes())
    assert [(m.shape, m.measurement) for m in got.measurements] == \
        [(m.shape, m.measurement) for m in normal.manifest.measurements]
    # without the snapshot the same build stops with the message that names the fix
    lock.pop("snapshot")
    (d / "hello.lock").write_text(json.dumps(lock, indent=2))
    fresh2 = tmp_path / "cache2"
    shutil.copytree(fresh.root / "sha256", fresh2 / "sha256")
    (fresh2 / "sha256" / fw.sha256).unlink()
    with serve(sid_archive_routes()) as archive:
        env = {"BLINDBOX_CACHE": str(fresh2), "BLINDBOX_DEBIAN_MIRROR": f"{archive.base}/debian"}
        p = cli("build", str(d / "hello.yaml"), "--out", str(tmp_path / "c"), "--allow-stale", "sid", env=env)
    assert p.returncode == 2 and "input 'firmware'" in p.stderr and "no longer serves its file" in p.stderr


def test_vendor_never_copies_the_id_block_keys(tmp_path):
    recipe = locked_hello_with_id_block()
    out = tmp_path / "inputs"
    p = cli("vendor", str(recipe.path), "--out", str(out), "--offline")
    assert p.returncode == 0, p.stderr
    index = json.loads((out / "inputs.json").read_bytes())
    keys = {i["name"]: i["file"] for i in index["inputs"] if i["name"] in ("id_key", "author_key")}
    assert keys == {"id_key": None, "author_key": None}
    assert not [f for f in out.rglob("*") if f.suffix == ".pem"]
    private = {(recipe.directory / "keys" / n).read_bytes() for n in ("id.pem", "author.pem")}
    assert not [f for f in out.rglob("*") if f.is_file() and f.read_bytes() in private]
