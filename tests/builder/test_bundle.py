"""Atomic bundle output and bundle comparison."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from builder import bundle
from builder.bundle import BundleError, write_bundle
from builder.repro import compare_bundles, first_difference

MANIFEST = b'{\n  "schema": "blindbox-manifest/1"\n}\n'


def files(tag: bytes) -> dict:
    return {"manifest.json": (MANIFEST, 0o644), "initrd": (b"initrd " + tag, 0o644),
            "launch-snp.sh": (b"#!/bin/sh\n" + tag, 0o755)}


def snapshot(d: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mode & 0o7777) for p in d.iterdir()}


def test_new_and_replaced_bundle(tmp_path):
    target = tmp_path / "out" / "b"
    write_bundle(target, files(b"1"))
    assert snapshot(target)["launch-snp.sh"] == (b"#!/bin/sh\n1", 0o755)
    old_umask = os.umask(0o077)
    try:
        write_bundle(target, files(b"2"))
    finally:
        os.umask(old_umask)
    assert snapshot(target) == {n: v for n, v in files(b"2").items()}
    assert sorted(p.name for p in target.parent.iterdir()) == [".b.build-lock", "b"]


def test_fallback_without_exchange(tmp_path, monkeypatch):
    target = tmp_path / "b"
    write_bundle(target, files(b"1"))
    monkeypatch.setattr(bundle, "exchange", lambda a, b: False)
    write_bundle(target, files(b"2"))
    assert snapshot(target)["initrd"][0] == b"initrd 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.build-lock", "b"]


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path):
    target = tmp_path / "home"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(BundleError, match="not a blindbox bundle"):
        write_bundle(target, files(b"1"))
    assert (target / "thesis.tex").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    write_bundle(empty, files(b"1"))


def test_recovers_from_an_interrupted_fallback_swap(tmp_path):
    target = tmp_path / "b"
    write_bundle(target, files(b"1"))
    os.rename(target, tmp_path / ".b.old-4242")          # killed between the two renames
    (tmp_path / ".b.tmp-abandoned").mkdir()               # and a temp dir of a killed build
    bundle.recover(target)
    assert snapshot(target)["initrd"][0] == b"initrd 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.build-lock", "b"]


def test_killed_writer_leaves_previous_bundle(tmp_path):
    target = tmp_path / "b"
    write_bundle(target, files(b"old"))
    before = snapshot(target)
    # a writer that is SIGKILLed while writing a large file into its temp dir
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from builder import bundle
real = bundle._write_file
def slow(path, data, mode):
    real(path, data, mode)
    print("wrote", path.name, flush=True)
    if path.name == "initrd":
        import time; time.sleep(60)
bundle._write_file = slow
bundle.write_bundle({str(target)!r}, {{"manifest.json": ({MANIFEST!r}, 0o644), "initrd": (b"x" * (8 << 20), 0o644)}})
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            if line.startswith("wrote initrd"):
                break
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    assert snapshot(target) == before
    assert any(x.name.startswith(".b.tmp-") for x in tmp_path.iterdir())  # the killed writer's leftovers
    write_bundle(target, files(b"new"))                                   # ... cleaned by the next build
    assert not any(x.name.startswith(".b.tmp-") for x in tmp_path.iterdir())


def test_concurrent_build_of_same_bundle_is_refused(tmp_path):
    target = tmp_path / "b"
    with bundle.bundle_lock(target):
        with pytest.raises(BundleError, match="another build"):
            write_bundle(target, files(b"1"))


def test_compare_bundles_names_file_and_first_offset(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_bundle(a, files(b"same"))
    write_bundle(b, files(b"same"))
    assert compare_bundles(a, b) == []
    data = bytearray((b / "initrd").read_bytes())
    data[5] ^= 1
    os.chmod(b / "initrd", 0o644)
    (b / "initrd").write_bytes(bytes(data))
    (b / "extra").write_bytes(b"")
    os.chmod(b / "launch-snp.sh", 0o700)
    diffs = compare_bundles(a, b, explain=False)
    assert [(d.file, d.kind, d.offset) for d in diffs] == [
        ("extra", "only-in-b", None), ("initrd", "content", 5), ("launch-snp.sh", "mode", None)]
    assert diffs[1].describe() == "initrd: first differing byte at offset 5 (0x5)"
    assert diffs[2].describe() == "launch-snp.sh: file modes differ (0755 and 0700)"


def test_first_difference_across_chunks_and_prefixes(tmp_path):
    x, y = tmp_path / "x", tmp_path / "y"
    big = os.urandom(3 << 20)
    x.write_bytes(big)
    y.write_bytes(big[:(2 << 20) + 7] + bytes([big[(2 << 20) + 7] ^ 0xFF]) + big[(2 << 20) + 8:])
    assert first_difference(x, y) == (2 << 20) + 7
    y.write_bytes(big[:1000])
    assert first_difference(x, y) == 1000
    y.write_bytes(big)
    assert first_difference(x, y) is None


def test_a_large_file_given_by_path_is_copied_in_chunks(tmp_path):
    big = tmp_path / "work" / "rootfs.erofs"
    big.parent.mkdir()
    data = bytes(range(256)) * (3 * (1 << 20) // 256 + 7)      # more than two 1 MiB chunks, not a multiple
    big.write_bytes(data)
    target = tmp_path / "out" / "b"
    write_bundle(target, {**files(b"1"), "rootfs.erofs": (big, 0o644)})
    assert (target / "rootfs.erofs").read_bytes() == data
    assert (target / "rootfs.erofs").stat().st_mode & 0o7777 == 0o644
    assert big.read_bytes() == data                           # the work file is left alone
    big.unlink()
    with pytest.raises(BundleError, match="cannot write the bundle"):
        write_bundle(target, {**files(b"2"), "rootfs.erofs": (big, 0o644)})
    assert (target / "rootfs.erofs").read_bytes() == data     # the previous bundle stays
