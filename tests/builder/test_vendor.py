"""builder.sources.vendor with the in-memory archive: local files, the index, and what a build takes from it.

The real packages, the empty-cache offline build and the CLI are tested in
tests/integration/test_rebuild.py; here the pieces that need no Debian archive.
"""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest

from builder.errors import InputDigestMismatch, OfflineMiss
from measure.errors import InputError
from builder.lock import read_lock
from builder.sources import ContentCache
from builder.sources.vendor import INDEX, VendorError, seed, vendor

from builder.lock import lock_recipe, write_lock
from builder.recipe import load_recipe

from .test_pipeline import RECIPE, hello_archive, locked, run


@pytest.fixture
def env(tmp_path):
    """test_pipeline's recipe (with a local file input) locked against the in-memory archive."""
    return locked(tmp_path)


def _vendor(env, out):
    lock = read_lock(env.recipe.lock_path)
    cache = ContentCache(env.cache)
    return vendor(env.recipe, lock, out, archive=env.archive, cache=cache,
                  fetch_url=lambda url, sha: pytest.fail("no URL input here"))


def test_local_files_are_vendored_and_the_build_uses_the_verified_copy(env, tmp_path):
    res = _vendor(env, tmp_path / "v")
    index = json.loads((tmp_path / "v" / INDEX).read_bytes())
    assert index == res.index
    item = next(i for i in index["inputs"] if i["name"] == "file:/etc/app.conf")
    assert item["file"] == "file/app.conf" and item["kind"] == "file"
    assert (tmp_path / "v" / "file" / "app.conf").read_text() == "greeting=hello\n"
    assert sorted(i["file"].split("/")[0] for i in index["inputs"]) == ["debian"] * 4 + ["file"]
    # the recipe's copy changes after vendoring: a normal build refuses it, a build from the inputs does not
    (env.recipe.directory / "app.conf").write_text("greeting=changed\n")
    with pytest.raises(InputDigestMismatch, match="has changed"):
        run(env, force=True)
    run(env, force=True, inputs=tmp_path / "v")


def test_seed_checks_the_lock_not_the_index(env, tmp_path):
    _vendor(env, tmp_path / "v")
    index_path = tmp_path / "v" / INDEX
    index = json.loads(index_path.read_bytes())
    lock = read_lock(env.recipe.lock_path)
    item = next(i for i in index["inputs"] if i["name"] == "file:/etc/app.conf")
    (tmp_path / "v" / item["file"]).write_text("greeting=other\n")
    item["sha256"] = "0" * 64                 # an index edited to match proves nothing: the lock decides
    index_path.write_text(json.dumps(index))
    with pytest.raises(InputDigestMismatch, match="but the lock pins .* for input 'file:/etc/app.conf'"):
        seed(lock, tmp_path / "v", ContentCache(tmp_path / "c2"))


@pytest.mark.parametrize("mangle, words", [
    (lambda d: d["inputs"][0].update(file="../../etc/passwd"), "lists no file for input 'firmware'"),
    (lambda d: d["inputs"][0].update(file=None), "lists no file for input 'firmware'"),
    (lambda d: d["inputs"].pop(0), "lists no file for input 'firmware'"),
    (lambda d: d.update(format="something else"), "is not an index of vendored inputs"),
])
def test_a_damaged_index_is_refused_naming_the_entry(env, tmp_path, mangle, words):
    _vendor(env, tmp_path / "v")
    index_path = tmp_path / "v" / INDEX
    index = json.loads(index_path.read_bytes())
    mangle(index)
    index_path.write_text(json.dumps(index))
    with pytest.raises(VendorError, match=words):
        seed(read_lock(env.recipe.lock_path), tmp_path / "v", ContentCache(tmp_path / "c2"))


def test_index_that_is_not_json_and_out_that_is_a_file(env, tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / INDEX).write_bytes(b"\xff not json")
    with pytest.raises(VendorError, match="is not an index of vendored inputs"):
        seed(read_lock(env.recipe.lock_path), tmp_path / "v", ContentCache(tmp_path / "c2"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(VendorError, match="exists and is not a directory"):
        _vendor(env, tmp_path / "f")
    with pytest.raises(VendorError, match="holds 1 entries that blindbox did not write"):
        _vendor(env, tmp_path / "v")


def test_url_inputs_are_vendored_and_an_offline_build_finds_them(tmp_path):
    """A URL input (https, never reachable from a test) is vendored from the cache and seeded back."""
    body = b"fetched once from the publisher\n"
    sha = hashlib.sha256(body).hexdigest()
    archive = hello_archive(tmp_path)
    d = tmp_path / "recipe"
    d.mkdir()
    (d / "t.yaml").write_text(RECIPE.replace(
        "    - {path: /etc/app.conf, file: app.conf}\n",
        f"    - {{path: /etc/app.conf, file: app.conf}}\n"
        f"    - {{path: /etc/remote.conf, url: 'https://files.invalid/conf/remote.conf', sha256: {sha}}}\n"))
    (d / "app.conf").write_text("greeting=hello\n")
    cache = ContentCache(tmp_path / "cache")
    served = cache.put_bytes(body)

    def fetch(url, pinned):
        assert url == "https://files.invalid/conf/remote.conf" and pinned == sha
        return served

    recipe = load_recipe(d / "t.yaml")
    write_lock(recipe.lock_path, lock_recipe(recipe, archive, fetch).lock)
    lock = read_lock(recipe.lock_path)
    res = vendor(recipe, lock, tmp_path / "v", archive=archive, cache=cache, fetch_url=fetch)
    item = next(i for i in res.index["inputs"] if i["kind"] == "url")
    assert item["file"] == "url/remote.conf" and (tmp_path / "v" / "url" / "remote.conf").read_bytes() == body
    env = SimpleNamespace(archive=archive, recipe=recipe, out=tmp_path / "out" / "t", cache=tmp_path / "empty")
    with pytest.raises(OfflineMiss, match="files.invalid"):
        run(env, offline=True)                  # an empty cache, offline: the URL cannot be had
    run(env, offline=True, inputs=tmp_path / "v")


def test_an_endless_or_fifo_index_is_refused(env, tmp_path):
    import os

    lock = read_lock(env.recipe.lock_path)
    (tmp_path / "big").mkdir()
    with open(tmp_path / "big" / INDEX, "wb") as f:
        f.truncate(5 << 20)                     # sparse: refused by its size, never read
    with pytest.raises(InputError, match="vendored inputs index"):
        seed(lock, tmp_path / "big", ContentCache(tmp_path / "c"))
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / INDEX)
    with pytest.raises(VendorError, match="is a FIFO or socket, not an index file"):
        seed(lock, tmp_path / "fifo", ContentCache(tmp_path / "c"))
