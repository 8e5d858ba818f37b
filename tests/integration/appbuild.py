"""recipes/python-app.yaml (and variants), locked afresh and built once per test run.

Like hellobuild.py, the recipe is copied with its application into a scratch directory and
locked against what the archive serves today.  A python-app build is costly (an EROFS image
of the Python runtime, hashed by dm-verity), so it is built once per *run*, not per
pytest-xdist worker: the first worker to ask builds it into the run's shared temporary
directory under a file lock, the others wait and use it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from builder.lock import lock_recipe, write_lock
from builder.manifest import Manifest
from builder.pipeline import BuildRequest, build
from builder.recipe import Recipe, load_recipe
from builder.sources import fetch_url
from tests.realinputs import ALLOW_STALE, archive

from .hellobuild import ROOT

APP = ROOT / "recipes" / "python-app.yaml"
APP_FILES = ROOT / "recipes" / "python-app"


def shared_dir(tmp_path_factory) -> Path:
    """A directory every xdist worker of this run sees (the run's base temp), and only this run."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """``make(directory)`` run once per test run under a lock; the directory it filled."""
    root = shared_dir(tmp_path_factory)
    done = root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        target = root / name
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            make(target)
            done.write_text("ok\n")
    return root / name


def copy_app(directory: Path, *, app_source: bytes | None = None, recipe_text: str | None = None) -> Recipe:
    """The python-app recipe and its application in ``directory``, locked afresh."""
    (directory / "python-app").mkdir(parents=True)
    (directory / "python-app.yaml").write_text(recipe_text or APP.read_text(encoding="utf-8"), encoding="utf-8")
    (directory / "python-app" / "app.py").write_bytes(app_source if app_source is not None
                                                      else (APP_FILES / "app.py").read_bytes())
    recipe = load_recipe(directory / "python-app.yaml")
    write_lock(recipe.lock_path, lock_recipe(recipe, archive(), fetch_url).lock)
    return recipe


def built_app(tmp_path_factory, name: str = "python-app", **kw) -> tuple[Path, Manifest, Recipe]:
    """(bundle, manifest, recipe) of python-app (or a variant: ``copy_app`` keywords), built once per run."""

    def make(target: Path) -> None:
        recipe = copy_app(target / "recipe", **kw)
        build(BuildRequest(recipe=recipe.path, out=target / "bundle", allow_stale=ALLOW_STALE))

    target = once(tmp_path_factory, name, make)
    bundle = target / "bundle"
    manifest = Manifest.from_dict(json.loads((bundle / "manifest.json").read_text()))
    return bundle, manifest, load_recipe(target / "recipe" / "python-app.yaml")
