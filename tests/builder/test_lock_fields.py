"""Every field of a lock file is checked, and `blindbox lock` says what it does to the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from builder.errors import RecipeError
from builder.lock import lock_recipe, parse_lock, write_lock
from builder.recipe import load_recipe

from .test_lock import archive, recipe  # noqa: F401 - fixtures


def _entry(doc, name):
    return next(e for e in doc["inputs"] if e["name"] == name)


@pytest.mark.parametrize("mutate, words", [
    (lambda d: _entry(d, "kernel").update(size=-1), "entry 'kernel': 'size' is -1, not a size in bytes"),
    (lambda d: _entry(d, "kernel").update(size=True), "entry 'kernel' has no valid 'size'"),
    (lambda d: _entry(d, "kernel").update(size="12"), "entry 'kernel' has no valid 'size'"),
    (lambda d: _entry(d, "kernel").update(size=7), "entry 'kernel': 'debian' size"),
    (lambda d: _entry(d, "kernel").update(origin="debian:bookworm/evil (see https://example.org)"),
     "entry 'kernel': 'origin' is 'debian:bookworm/evil (see https://example.org)', but the entry's own fields"),
    (lambda d: _entry(d, "init").update(origin="file:/etc/shadow"), "entry 'init': 'origin' is 'file:/etc/shadow'"),
    (lambda d: _entry(d, "init").update(path="../init.sh", origin="file:../init.sh"),
     "entry 'init': 'path' '../init.sh' is not the file the entry was made for"),
    (lambda d: _entry(d, "init").update(version="1.0"), "entry 'init': 'version' does not belong to a file input"),
    (lambda d: _entry(d, "kernel").update(colour="red"), "entry 'kernel': 'colour' is not a lock entry field"),
    (lambda d: _entry(d, "kernel").update(version=["6.1"]), "entry 'kernel' has no valid 'version'"),
    (lambda d: _entry(d, "kernel").update(via="anything at all"), "entry 'kernel': 'via' is not a package=version"),
    (lambda d: _entry(d, "kernel")["debian"].update(suite="hamm"), "'debian' suite 'hamm' is not a valid"),
    (lambda d: _entry(d, "kernel")["debian"].update(arch="arm64"), "'debian' arch 'arm64' is not a valid"),
    (lambda d: _entry(d, "kernel")["debian"].update(filename="/etc/passwd"), "'debian' filename '/etc/passwd'"),
    (lambda d: _entry(d, "kernel")["debian"].update(filename="pool/../../x.deb"), "'debian' filename"),
    (lambda d: _entry(d, "kernel")["debian"].update(name="Bad Name"), "'debian' name 'Bad Name'"),
    (lambda d: _entry(d, "kernel")["debian"].update(extra=1), "'debian' has unknown field 'extra'"),
    (lambda d: _entry(d, "kernel")["debian"].pop("filename"), "'debian' has no 'filename'"),
    (lambda d: _entry(d, "kernel").update(name="Kernel!"), "entry 'Kernel!': 'name' is not an input name"),
    (lambda d: d.update(extra=1), "t.lock: unknown key 'extra'"),
    (lambda d: d.update(recipe=5), "t.lock: 'recipe' must be a string"),
])
def test_every_lock_field_is_checked(recipe, archive, mutate, words):  # noqa: F811 - the fixture
    doc = json.loads(lock_recipe(recipe, archive).lock.to_json())
    parse_lock(json.dumps(doc).encode(), Path("t.lock"))          # the untouched lock is fine
    mutate(doc)
    with pytest.raises(RecipeError) as ei:
        parse_lock(json.dumps(doc).encode(), Path("t.lock"))
    assert words in str(ei.value)
    assert str(ei.value).startswith("t.lock: ")


def _lock_cli(recipe_path, archive, monkeypatch, capsys, tmp_path, *args):  # noqa: F811 - given the fixture's value
    from blindbox.cli import main
    monkeypatch.setattr("builder.sources.DebianArchive", lambda **kw: archive)
    monkeypatch.setenv("BLINDBOX_CACHE", str(tmp_path / "cache"))
    rc = main(["lock", str(recipe_path), *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def test_lock_leaves_an_unchanged_file_alone_and_says_when_it_reformats(recipe, archive, monkeypatch, capsys,  # noqa: F811 - the fixture
                                                                        tmp_path):
    rc, out, err = _lock_cli(recipe.path, archive, monkeypatch, capsys, tmp_path)
    assert rc == 0 and "t.lock: written." in out, err
    inode = os.stat(recipe.lock_path).st_ino
    rc, out, _ = _lock_cli(recipe.path, archive, monkeypatch, capsys, tmp_path)
    assert rc == 0 and "t.lock: unchanged; every input of" in out
    assert os.stat(recipe.lock_path).st_ino == inode                  # not even replaced by the same bytes
    # the same pins, formatted differently: the file is rewritten and the message says so
    compact = json.dumps(json.loads(recipe.lock_path.read_bytes())).encode()
    recipe.lock_path.write_bytes(compact)
    rc, out, _ = _lock_cli(recipe.path, archive, monkeypatch, capsys, tmp_path, "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["written"] is True and doc["changes"] == []
    recipe.lock_path.write_bytes(compact)
    rc, out, _ = _lock_cli(recipe.path, archive, monkeypatch, capsys, tmp_path)
    assert rc == 0 and "t.lock: rewritten in blindbox's canonical form; no pin changed" in out
    assert recipe.lock_path.read_bytes() != compact and ": unchanged" not in out


def test_lock_refuses_a_recipe_that_is_its_own_lock_path(tmp_path, archive, monkeypatch, capsys):  # noqa: F811 - the fixture
    from .test_lock import RECIPE
    d = tmp_path / "r2"
    d.mkdir()
    (d / "init.sh").write_text("#!/bin/sh\n")
    path = d / "t.lock"
    path.write_text(RECIPE)
    rc, _, err = _lock_cli(path, archive, monkeypatch, capsys, tmp_path)
    assert rc == 2 and "which is the recipe itself here; rename the recipe to end in .yaml" in err, err
    assert path.read_text() == RECIPE


def test_written_lock_is_read_back_identically(recipe, archive):  # noqa: F811 - the fixture
    lock = lock_recipe(recipe, archive).lock
    written = write_lock(recipe.lock_path, lock)
    assert parse_lock(recipe.lock_path.read_bytes(), recipe.lock_path).inputs == written.inputs
    assert load_recipe(recipe.path).lock_path == recipe.lock_path


def _edit_lock(path: Path, name: str, **changes):
    doc = json.loads(path.read_bytes())
    entry = _entry(doc, name)
    entry.update(changes)
    if entry.get("debian") and "size" in changes:
        entry["debian"]["size"] = changes["size"]
    path.write_text(json.dumps(doc, indent=2))


@pytest.mark.parametrize("name", ["firmware", "file:/etc/app.conf"])
def test_build_cross_checks_the_pinned_size_with_the_fetched_bytes(name, tmp_path, monkeypatch, capsys):
    from tests.builder.test_pipeline import STEPS, hello_archive, RECIPE
    from builder import pipeline
    from blindbox.cli import main

    archive = hello_archive(tmp_path)  # noqa: F811 - not the fixture: this test builds its own
    d = tmp_path / "recipe"
    d.mkdir()
    (d / "t.yaml").write_text(RECIPE)
    (d / "app.conf").write_text("greeting=hello\n")
    r = load_recipe(d / "t.yaml")
    lock = write_lock(r.lock_path, lock_recipe(r, archive).lock)
    size = lock.get(name).size
    _edit_lock(r.lock_path, name, size=size + 1)
    real_build = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda req, **kw: real_build(req, archive=archive, steps=STEPS, **kw))
    monkeypatch.setenv("BLINDBOX_CACHE", str(tmp_path / "cache"))
    rc = main(["build", str(r.path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and f"pins input {name!r}" in err, err
    assert f"with size {size + 1}, but its verified bytes are {size} bytes long" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("named", ["other.yaml", "../../etc/passwd"])
def test_build_refuses_a_lock_that_names_another_recipe(named, tmp_path, monkeypatch, capsys):
    from tests.builder.test_pipeline import STEPS, hello_archive, RECIPE
    from builder import pipeline
    from blindbox.cli import main

    archive = hello_archive(tmp_path)  # noqa: F811 - not the fixture: this test builds its own
    d = tmp_path / "recipe"
    d.mkdir()
    (d / "t.yaml").write_text(RECIPE)
    (d / "app.conf").write_text("greeting=hello\n")
    r = load_recipe(d / "t.yaml")
    write_lock(r.lock_path, lock_recipe(r, archive).lock)
    doc = json.loads(r.lock_path.read_bytes())
    assert doc["recipe"] == "t.yaml"
    doc["recipe"] = named
    r.lock_path.write_text(json.dumps(doc, indent=2))
    real_build = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda req, **kw: real_build(req, archive=archive, steps=STEPS, **kw))
    monkeypatch.setenv("BLINDBOX_CACHE", str(tmp_path / "cache"))
    rc = main(["build", str(r.path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"{r.lock_path} says it pins the recipe {named!r}, not 't.yaml' beside it; restore it" in err, err
    assert not (tmp_path / "out").exists()
