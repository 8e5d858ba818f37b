"""check-repro leaves no work directory (and no private key copy) behind, and names the user's files."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from builder import repro
from builder.errors import BuildError
from builder.lock import lock_recipe, write_lock
from builder.recipe import load_recipe

from .keys import write_test_keys
from .test_id_block import ID_BLOCK
from .test_pipeline import RECIPE, hello_archive


@pytest.fixture
def tmpdir_root(tmp_path, monkeypatch):
    """The system temporary directory, empty, so whatever check-repro leaves there is seen."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _locked_recipe_with_id_block(tmp_path: Path) -> Path:
    d = tmp_path / "mine"
    d.mkdir()
    (d / "t.yaml").write_text(RECIPE + ID_BLOCK)
    (d / "app.conf").write_text("greeting=hello\n")
    write_test_keys(d)
    r = load_recipe(d / "t.yaml")
    write_lock(r.lock_path, lock_recipe(r, hello_archive(tmp_path)).lock)
    # the recipe changes after locking: every build of it now fails in its first step
    (d / "t.yaml").write_text((RECIPE + ID_BLOCK).replace("busybox-static, suite: bookworm",
                                                          "busybox-static, suite: trixie"))
    return d / "t.yaml"


def test_failed_build_removes_the_work_directory_and_names_the_users_files(tmp_path, tmpdir_root):
    path = _locked_recipe_with_id_block(tmp_path)
    with pytest.raises(BuildError) as ei:
        repro.check_repro(load_recipe(path), cache=tmp_path / "cache", use_faketime=False, explain=False)
    msg = str(ei.value)
    assert msg.startswith(f"check-repro: build A of {path} failed (exit 2): input 'busybox': {path} now asks for "
                          f"debian=busybox-static, suite=trixie"), msg
    assert f"but {path.with_suffix('.lock')} was made for" in msg
    assert "blindbox-repro-" not in msg and "blindbox: error:" not in msg
    assert list(tmpdir_root.iterdir()) == []


def test_cli_check_repro_failure_exits_2_and_leaves_nothing(tmp_path, tmpdir_root, monkeypatch, capsys):
    from blindbox.cli import main
    path = _locked_recipe_with_id_block(tmp_path)
    monkeypatch.setenv("BLINDBOX_CACHE", str(tmp_path / "cache"))
    rc = main(["check-repro", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and f"build A of {path} failed (exit 2): input 'busybox': {path} now asks for" in err, err
    assert list(tmpdir_root.iterdir()) == []


def test_interrupt_removes_the_work_directory(tmp_path, tmpdir_root, monkeypatch):
    path = _locked_recipe_with_id_block(tmp_path)
    seen = []

    def interrupted(run, cwd):
        seen.extend(p.name for p in cwd.rglob("*.pem"))        # the key copies were there ...
        raise KeyboardInterrupt

    monkeypatch.setattr(repro, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        repro.check_repro(load_recipe(path), cache=tmp_path / "cache", use_faketime=False)
    assert sorted(seen) == ["author.pem", "id.pem"]
    assert list(tmpdir_root.iterdir()) == []                   # ... and are gone with the directory


def _fake_builds(monkeypatch, contents):
    def fake_run(run, cwd):
        run.out.mkdir(parents=True)
        (run.out / "initrd").write_bytes(contents[run.label])
        run.returncode = 0
    monkeypatch.setattr(repro, "_run", fake_run)


def test_differing_builds_keep_the_bundles_but_no_key_copies(tmp_path, tmpdir_root, monkeypatch):
    path = _locked_recipe_with_id_block(tmp_path)
    _fake_builds(monkeypatch, {"A": b"same start, then A", "B": b"same start, then B"})
    res = repro.check_repro(load_recipe(path), cache=tmp_path / "cache", use_faketime=False, explain=False)
    assert not res.identical and res.differences[0].describe() == "initrd: first differing byte at offset 17 (0x11)"
    assert [p for p in tmpdir_root.iterdir()] == [res.workdir]
    kept = sorted(str(p.relative_to(res.workdir)) for p in res.workdir.rglob("*") if p.is_file())
    assert kept == ["a/out/t/initrd", "b dir with spaces — ü/out/t/initrd"]


def test_identical_builds_leave_nothing(tmp_path, tmpdir_root, monkeypatch):
    path = _locked_recipe_with_id_block(tmp_path)
    _fake_builds(monkeypatch, {"A": b"same", "B": b"same"})
    res = repro.check_repro(load_recipe(path), cache=tmp_path / "cache", use_faketime=False, explain=False)
    assert res.identical and list(tmpdir_root.iterdir()) == []
