"""Recipes, lock files and --out directories that used to end in "internal error" (exit 1).

Each gives exit 2 and one sentence naming the file and what to do, and every recipe or
lock read is bounded (docs/limits.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from blindbox.cli import main
from builder import pipeline
from builder.limits import MAX_LOCK_BYTES, MAX_RECIPE_BYTES, MAX_RECIPE_DEPTH
from tests.memlimit import assert_refused, run_blindbox

from .test_pipeline import STEPS, env  # noqa: F401 - the fixture


def refused(argv, capsys, *needles):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture
def cli_build(env, monkeypatch):  # noqa: F811
    real_build = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda req, **kw: real_build(req, archive=env.archive, steps=STEPS, **kw))
    monkeypatch.setenv("BLINDBOX_CACHE", str(env.cache))
    return env


@pytest.mark.parametrize("command", ["build", "lock", "check-repro"])
def test_deeply_nested_recipe(command, tmp_path, capsys):
    recipe = tmp_path / "deep.yaml"
    recipe.write_text("name: " + "[" * 100_000 + "]" * 100_000 + "\n")
    refused([command, recipe], capsys, f"{recipe}:1: the recipe nests collections more than "
                                       f"{MAX_RECIPE_DEPTH} levels deep")


def test_nesting_within_the_limit_is_a_schema_error_not_a_depth_error(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    depth = MAX_RECIPE_DEPTH - 1  # the top-level mapping is the first level
    recipe.write_text("name: " + "[" * depth + "]" * depth + "\n")
    err = refused(["build", recipe], capsys, str(recipe))
    assert "levels deep" not in err


def test_deeply_nested_block_mapping(tmp_path, capsys):
    recipe = tmp_path / "deep.yaml"
    recipe.write_text("".join(" " * i + f"k{i}:\n" for i in range(MAX_RECIPE_DEPTH + 1)) + " " * 40 + "x: 1\n")
    refused(["build", recipe], capsys, f"{recipe}:{MAX_RECIPE_DEPTH + 1}: the recipe nests collections")


@pytest.mark.parametrize("command", ["build", "lock", "check-repro"])
def test_deeply_nested_lock(command, cli_build, capsys):
    lock = cli_build.recipe.lock_path
    lock.write_text("[" * 100_000 + "]" * 100_000)
    refused([command, cli_build.recipe.path, "--offline"] if command != "check-repro"
            else [command, cli_build.recipe.path], capsys,
            f"{lock}: the lock file nests brackets too deeply to be a lock file")


@pytest.mark.parametrize("command", ["build", "lock", "check-repro"])
def test_lock_path_is_a_directory(command, cli_build, capsys):
    lock = cli_build.recipe.lock_path
    lock.unlink()
    lock.mkdir()
    refused([command, cli_build.recipe.path], capsys, f"{lock}: the lock file is a directory",
            f"blindbox lock {lock.with_suffix('.yaml')}")


def test_check_repro_without_a_lock_names_the_users_lock(cli_build, capsys, monkeypatch, tmp_path):
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    lock = cli_build.recipe.lock_path
    lock.unlink()
    refused(["check-repro", cli_build.recipe.path], capsys, f"{lock} does not exist",
            f"Run `blindbox lock {cli_build.recipe.path}`")
    assert list(work.iterdir()) == []   # no work directory was made for a check that cannot run


@pytest.mark.parametrize("out", ["/proc/blindbox-out", "/proc/self/blindbox-out", "/sys/blindbox-out",
                                 "/proc/no/such/dir"])
def test_build_out_on_a_virtual_file_system(out, tmp_path, monkeypatch, capsys):
    """The pipeline's last step, writing the bundle, under /proc or /sys (which stop even root)."""
    from builder.bundle import write_bundle
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\n")
    monkeypatch.setattr(pipeline, "build",
                        lambda req, **kw: write_bundle(req.out, {"manifest.json": (b"{}", 0o644)}))
    refused(["build", recipe, "--out", out], capsys, f"cannot write the bundle {out}:",
            "choose a writable --out directory")


def test_recipe_larger_than_the_limit(tmp_path, capsys):
    recipe = tmp_path / "big.yaml"
    with open(recipe, "wb") as f:
        f.truncate(MAX_RECIPE_BYTES + 1)
    refused(["build", recipe], capsys, f"the recipe file '{recipe}' is larger than {MAX_RECIPE_BYTES:,} bytes")


def test_recipe_from_an_endless_stream(tmp_path):
    recipe = tmp_path / "zero.yaml"
    recipe.symlink_to("/dev/zero")
    assert_refused(run_blindbox(["build", recipe]),
                   f"the recipe file '{recipe}' is larger than {MAX_RECIPE_BYTES:,} bytes")


def test_lock_from_an_endless_stream(cli_build):
    lock = cli_build.recipe.lock_path
    lock.unlink()
    lock.symlink_to("/dev/zero")
    assert_refused(run_blindbox(["build", cli_build.recipe.path, "--offline"]),
                   f"the lock file '{lock}' is larger than {MAX_LOCK_BYTES:,} bytes")


def test_a_real_lock_still_reads(cli_build):
    from builder.lock import read_lock
    lock = read_lock(cli_build.recipe.lock_path)
    assert json.loads(cli_build.recipe.lock_path.read_bytes())["inputs"] and lock.inputs
    assert os.path.getsize(cli_build.recipe.lock_path) < MAX_LOCK_BYTES


def test_deeply_nested_manifest_in_the_out_directory():
    from builder.manifest import Manifest, ManifestError
    with pytest.raises(ManifestError, match="out/manifest.json nests brackets too deeply to be a manifest"):
        Manifest.from_json(b"[" * 100_000 + b"]" * 100_000, "out/manifest.json")


HELLO = (Path(__file__).resolve().parents[2] / "recipes" / "hello.yaml").read_text()


@pytest.mark.parametrize("command", ["build", "lock", "check-repro"])
@pytest.mark.parametrize("which", ["lock", "recipe"])
def test_a_recipe_or_lock_that_is_a_fifo_is_refused_rather_than_waited_on(command, which, tmp_path):
    recipe, lock = tmp_path / "r.yaml", tmp_path / "r.lock"
    if which == "lock":
        recipe.write_text(HELLO)
        os.mkfifo(lock)                     # nobody writes to it: opening it would wait for ever
        needle = f"{lock}: the lock file is a FIFO or socket, not a file; remove it and run `blindbox lock {recipe}`"
    else:
        os.mkfifo(recipe)
        needle = f"{recipe}: is a FIFO or socket; give the recipe's .yaml file"
    argv = [command, recipe] + (["--offline"] if command != "check-repro" else [])
    assert_refused(run_blindbox(argv, timeout=60), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["r.lock", "r.yaml"] if which == "lock" else ["r.yaml"])
