"""Lock files: pins, keeping pins, updates, and the mismatches a build must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.errors import InputDigestMismatch, RecipeError
from builder.lock import LockMismatch, LockMissing, check_lock, lock_recipe, parse_lock, read_lock, write_lock
from builder.recipe import load_recipe

from .fakes import FakeArchive

RECIPE = """\
name: t
source_date_epoch: 1700000000
firmware: {debian: ovmf-amdsev, suite: sid, path: /usr/share/ovmf/OVMF.amdsev.fd}
kernel: {debian: linux-image-amd64, suite: bookworm}
initrd:
  busybox: {debian: busybox-static, suite: bookworm}
  init: {file: init.sh}
  binaries:
    - {debian: coreutils, suite: bookworm, path: /usr/bin/sha256sum}
cmdline: "console=ttyS0"
shapes:
  - {vmm_profile: qemu, vcpus: [1], vcpu_types: [EPYC-v4]}
"""


@pytest.fixture
def archive(tmp_path):
    a = FakeArchive(tmp_path / "archive")
    a.add("ovmf-amdsev", "2026.08-1", "sid", {"/usr/share/ovmf/OVMF.amdsev.fd": b"fw1"})
    a.add("linux-image-6.1.0-1-amd64", "6.1.1-1", "bookworm", {"/boot/vmlinuz-6.1.0-1-amd64": b"k1"})
    a.add("linux-image-amd64", "6.1.1-1", "bookworm", {}, depends=["linux-image-6.1.0-1-amd64"])
    a.add("busybox-static", "1:1.35-4", "bookworm", {"/bin/busybox": b"bb"})
    a.add("coreutils", "9.1-1", "bookworm", {"/usr/bin/sha256sum": b"elf"}, depends=["libc6"])
    a.add("libc6", "2.36-9", "bookworm", {"/lib/x86_64-linux-gnu/libc.so.6": b"libc"}, depends=["libgcc-s1"])
    a.add("libgcc-s1", "12.2-14", "bookworm", {"/lib/x86_64-linux-gnu/libgcc_s.so.1": b"gcc"},
          depends=["libc6"])
    return a


@pytest.fixture
def recipe(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "init.sh").write_text("#!/bin/sh\necho hi\n")
    (d / "t.yaml").write_text(RECIPE)
    return load_recipe(d / "t.yaml")


def test_lock_pins_every_input(recipe, archive):
    res = lock_recipe(recipe, archive)
    lock = res.lock
    assert lock.names() == ["firmware", "kernel", "busybox", "init", "binary:/usr/bin/sha256sum", "compressor",
                            "library:libc6", "library:libgcc-s1"]
    k = lock.get("kernel")
    assert k.debian["name"] == "linux-image-6.1.0-1-amd64" and k.version == "6.1.1-1"
    assert k.via == "linux-image-amd64=6.1.1-1"
    assert k.wants == {"debian": "linux-image-amd64", "suite": "bookworm", "arch": "amd64"}
    assert k.origin.startswith("debian:bookworm/linux-image-6.1.0-1-amd64=6.1.1-1")
    init = lock.get("init")
    assert init.kind == "file" and init.path == "init.sh" and init.size == len("#!/bin/sh\necho hi\n")
    assert all(c.old is None for c in res.changes) and len(res.changes) == 8
    check_lock(recipe, lock)


def test_lock_file_round_trip_and_stable_bytes(recipe, archive):
    lock = lock_recipe(recipe, archive).lock
    written = write_lock(recipe.lock_path, lock)
    data = recipe.lock_path.read_bytes()
    again = read_lock(recipe.lock_path)
    assert again.inputs == lock.inputs
    assert again.sha256 == written.sha256
    assert again.to_json() == data
    assert json.loads(data)["recipe"] == "t.yaml"
    assert list(recipe.lock_path.parent.glob(".t.lock.*")) == []  # no temp files left


def test_relock_keeps_pins_even_when_archive_moves_on(recipe, archive):
    first = lock_recipe(recipe, archive).lock
    archive.add("linux-image-6.1.0-2-amd64", "6.1.2-1", "bookworm", {"/boot/vmlinuz-6.1.0-2-amd64": b"k2"})
    archive.add("linux-image-amd64", "6.1.2-1", "bookworm", {}, depends=["linux-image-6.1.0-2-amd64"])
    res = lock_recipe(recipe, archive, previous=first)
    assert res.lock.inputs == first.inputs
    assert res.changes == [] and res.changed_pins == []


def test_update_repins_and_reports_the_change(recipe, archive):
    first = lock_recipe(recipe, archive).lock
    archive.add("linux-image-6.1.0-2-amd64", "6.1.2-1", "bookworm", {"/boot/vmlinuz-6.1.0-2-amd64": b"k2"})
    archive.add("linux-image-amd64", "6.1.2-1", "bookworm", {}, depends=["linux-image-6.1.0-2-amd64"])
    res = lock_recipe(recipe, archive, previous=first, update=True)
    assert res.lock.get("kernel").debian["name"] == "linux-image-6.1.0-2-amd64"
    assert [c.name for c in res.changed_pins] == ["kernel"]
    text = res.changed_pins[0].describe()
    assert "linux-image-6.1.0-1-amd64 6.1.1-1" in text and "linux-image-6.1.0-2-amd64 6.1.2-1" in text


def test_update_only_named_input(recipe, archive):
    first = lock_recipe(recipe, archive).lock
    archive.add("busybox-static", "1:1.36-1", "bookworm", {"/bin/busybox": b"bb2"})
    archive.add("ovmf-amdsev", "2026.09-1", "sid", {"/usr/share/ovmf/OVMF.amdsev.fd": b"fw2"})
    res = lock_recipe(recipe, archive, previous=first, update=True, only=["busybox"])
    assert res.lock.get("busybox").version == "1:1.36-1"
    assert res.lock.get("firmware").version == "2026.08-1"
    with pytest.raises(Exception, match="not an input"):
        lock_recipe(recipe, archive, previous=first, update=True, only=["nonesuch"])


def test_recipe_change_repins_that_input_and_build_check_catches_it(recipe, archive, tmp_path):
    first = lock_recipe(recipe, archive).lock
    archive.add("busybox-static", "1:1.36-1", "trixie", {"/bin/busybox": b"bb3"})
    text = recipe.path.read_text().replace("busybox: {debian: busybox-static, suite: bookworm}",
                                           "busybox: {debian: busybox-static, suite: trixie}")
    recipe.path.write_text(text)
    changed = load_recipe(recipe.path)
    with pytest.raises(LockMismatch) as ei:
        check_lock(changed, first)
    msg = str(ei.value)
    assert "'busybox'" in msg and "suite=trixie" in msg and "suite=bookworm" in msg
    assert "blindbox lock" in msg and "measurement" in msg
    res = lock_recipe(changed, archive, previous=first)
    assert [c.name for c in res.changes] == ["busybox"]
    assert res.lock.get("busybox").debian["suite"] == "trixie"
    assert res.lock.get("kernel") == first.get("kernel")
    check_lock(changed, res.lock)


def test_missing_input_and_extra_pin(recipe, archive):
    first = lock_recipe(recipe, archive).lock
    from builder.lock import Lock
    partial = Lock(first.recipe, tuple(i for i in first.inputs if i.name != "firmware"))
    with pytest.raises(LockMismatch, match="'firmware'.*not pinned"):
        check_lock(recipe, partial)
    extra = Lock(first.recipe, first.inputs + (first.get("init").__class__(**{**first.get("init").__dict__,
                                                                              "name": "file:/x"}),))
    with pytest.raises(LockMismatch, match="does not declare"):
        check_lock(recipe, extra)


def test_local_file_declared_sha256_is_checked(recipe, archive):
    text = recipe.path.read_text().replace("init: {file: init.sh}", f"init: {{file: init.sh, sha256: \"{'0' * 64}\"}}")
    recipe.path.write_text(text)
    with pytest.raises(InputDigestMismatch, match="init.sh has sha256"):
        lock_recipe(load_recipe(recipe.path), archive)


def test_missing_lock_says_what_to_run(recipe):
    with pytest.raises(LockMissing, match=r"blindbox lock .*t\.yaml"):
        read_lock(recipe.lock_path)


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(lock_version=9), "version 1"),
    (lambda d: d["inputs"][0].update(sha256="xyz"), "malformed sha256"),
    (lambda d: d["inputs"][0].update(version="other"), "edited by hand"),
    (lambda d: d["inputs"][0].pop("origin"), "'origin'"),
    (lambda d: d["inputs"].append(d["inputs"][0]), "pinned twice"),
])
def test_damaged_lock_is_refused(recipe, archive, mutate, words):
    doc = json.loads(lock_recipe(recipe, archive).lock.to_json())
    mutate(doc)
    with pytest.raises(RecipeError, match=words):
        parse_lock(json.dumps(doc).encode(), Path("t.lock"))


def test_lock_json_syntax_error_names_line():
    with pytest.raises(RecipeError) as ei:
        parse_lock(b'{\n  "lock_version": 1,\n  oops\n}', Path("t.lock"))
    assert ei.value.line == 3 and str(ei.value).startswith("t.lock:3:")


RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_committed_locks_pin_what_their_recipes_declare(path):
    """Every shipped lock is consistent with its shipped recipe (no archive needed)."""
    recipe = load_recipe(path)
    lock = read_lock(recipe.lock_path)
    check_lock(recipe, lock)
    assert lock.get("kernel").via.startswith("linux-image-amd64=")
    assert lock.recipe == path.name
    assert lock.to_json() == recipe.lock_path.read_bytes()


def test_every_recipe_ships():
    assert [p.stem for p in RECIPES] == ["hello", "python-app-attested", "python-app"]
