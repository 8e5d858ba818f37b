"""The build keeps its hands off its inputs: --out may not hold them, local files stay in the recipe's directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder import pipeline
from builder.bundle import BundleError
from builder.errors import RecipeError
from builder.lock import lock_recipe
from builder.pipeline import BuildRequest, build
from builder.recipe import load_recipe

from .test_pipeline import RECIPE, STEPS, env, hello_archive, run  # noqa: F401 - env is a fixture


def _cli(argv, capsys):
    from blindbox.cli import main
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def test_out_that_holds_the_recipe_is_refused(env, monkeypatch, capsys):  # noqa: F811 - the fixture
    run(env)                                               # env.out is now a real bundle ...
    for name in ("t.yaml", "t.lock", "app.conf"):          # ... and the recipe moves into it
        shutil.copy(env.recipe.directory / name, env.out / name)
    recipe = env.out / "t.yaml"
    before = {p.name: p.read_bytes() for p in env.out.iterdir()}
    with pytest.raises(BundleError, match=f"--out {env.out} is or contains the recipe {recipe};"):
        build(BuildRequest(recipe=recipe, out=env.out, cache_root=env.cache, force=True), steps=STEPS,
              archive=env.archive)
    real_build = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda req, **kw: real_build(req, archive=env.archive, steps=STEPS, **kw))
    monkeypatch.setenv("BLINDBOX_CACHE", str(env.cache))
    rc, _, err = _cli(["build", recipe, "--out", env.out.parent / "x" / ".." / "t", "--force"], capsys)
    assert rc == 2 and "is or contains the recipe" in err and "choose an --out directory outside" in err, err
    assert {p.name: p.read_bytes() for p in env.out.iterdir()} == before


def test_out_that_is_an_ancestor_of_a_local_input_is_refused(env):  # noqa: F811 - the fixture
    with pytest.raises(BundleError, match="is or contains the recipe"):
        build(BuildRequest(recipe=env.recipe.path, out=env.recipe.directory.parent, cache_root=env.cache),
              steps=STEPS, archive=env.archive)


def _symlinked_recipe(tmp_path: Path, how: str) -> Path:
    d = tmp_path / "r"
    d.mkdir()
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "hostname").write_text("secret-host\n")
    if how == "file":
        (d / "app.conf").symlink_to(outside / "hostname")
        (d / "t.yaml").write_text(RECIPE)
    else:                                                  # a symlinked parent directory
        (d / "etc").symlink_to(outside)
        (d / "t.yaml").write_text(RECIPE.replace("file: app.conf", "file: etc/hostname"))
    return d / "t.yaml"


@pytest.mark.parametrize("how", ["file", "parent"])
def test_local_file_symlinked_outside_the_recipe_is_refused_at_lock(how, tmp_path, capsys, monkeypatch):
    path = _symlinked_recipe(tmp_path, how)
    rel = "app.conf" if how == "file" else "etc/hostname"
    with pytest.raises(RecipeError) as ei:
        lock_recipe(load_recipe(path), hello_archive(tmp_path))
    msg = str(ei.value)
    assert msg.startswith(f"{path}:8: file:/etc/app.conf: {rel!r} is a symbolic link")
    assert f"resolves to {tmp_path / 'host' / 'hostname'}, outside the recipe's directory" in msg
    assert ei.value.line == 8


def test_local_file_symlinked_outside_is_refused_at_build_even_if_locked(env, tmp_path):  # noqa: F811 - the fixture
    outside = tmp_path / "hostname"
    outside.write_text("greeting=hello\n")                  # same bytes as the locked app.conf
    conf = env.recipe.directory / "app.conf"
    conf.unlink()
    conf.symlink_to(outside)
    with pytest.raises(RecipeError, match=r"t\.yaml:8: file:/etc/app.conf: 'app.conf' is a symbolic link"):
        run(env, force=True)


def test_symlink_that_stays_inside_the_recipe_directory_is_fine(env):  # noqa: F811 - the fixture
    conf = env.recipe.directory / "app.conf"
    (env.recipe.directory / "real.conf").write_bytes(conf.read_bytes())
    conf.unlink()
    conf.symlink_to("real.conf")
    assert run(env, force=True).up_to_date is False


def test_cli_lock_refuses_the_symlink_with_exit_2(tmp_path, capsys, monkeypatch):
    path = _symlinked_recipe(tmp_path, "file")
    monkeypatch.setattr("builder.sources.DebianArchive", lambda **kw: hello_archive(tmp_path))
    rc, _, err = _cli(["lock", path, "--offline"], capsys)
    assert rc == 2 and f"{path}:8: file:/etc/app.conf: 'app.conf' is a symbolic link" in err, err
    assert not path.with_suffix(".lock").exists()
