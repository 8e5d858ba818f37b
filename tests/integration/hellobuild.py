"""recipes/hello.yaml, locked afresh and built once per test process.

The committed recipes/hello.lock pins versions that Debian will replace (sid moves daily,
bookworm kernels at every point release), so the integration tests never build from it:
they copy the recipe into a temporary directory, lock it against what the archive serves
today, and build that.  Results are cached per process; pytest-xdist workers share the
content cache (and its downloads) through its file locks.

``locked_hello_with_id_block`` is the same recipe with an ``id_block`` section whose keys
are the label-derived test keys of tests/builder/keys.py, written beside the copy.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from builder.lock import lock_recipe, write_lock
from builder.pipeline import BuildRequest, BuildResult, build
from builder.recipe import Recipe, load_recipe
from builder.sources import fetch_url
from tests.builder.keys import write_test_keys
from tests.realinputs import ALLOW_STALE, archive

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "recipes" / "hello.yaml"
ID_BLOCK = """
id_block:                        # test-only keys (tests/builder/keys.py)
  id_key: keys/id.pem
  author_key: keys/author.pem
  family_id: "0123456789abcdef0123456789abcdef"
  image_id: "fedcba9876543210fedcba9876543210"
  guest_svn: 3
"""


def scratch(prefix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, d, True)
    return d


def lock_copy(recipe_text: str, name: str = "hello.yaml", *, keys: bool = False,
              directory: Path | None = None) -> Recipe:
    """Write ``recipe_text`` (and with ``keys`` the test keys) into a fresh directory (or
    ``directory``, which may hold the recipe's local inputs) and lock it against today's archive."""
    d = directory if directory is not None else scratch("blindbox-recipe-")
    (d / name).write_text(recipe_text, encoding="utf-8")
    if keys:
        write_test_keys(d)
    recipe = load_recipe(d / name)
    write_lock(recipe.lock_path, lock_recipe(recipe, archive(), fetch_url).lock)
    return recipe


@functools.lru_cache(maxsize=None)
def locked_hello() -> Recipe:
    return lock_copy(HELLO.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def built_hello() -> BuildResult:
    recipe = locked_hello()
    out = scratch("blindbox-bundle-") / "hello"
    return build(BuildRequest(recipe=recipe.path, out=out, allow_stale=ALLOW_STALE))


@functools.lru_cache(maxsize=None)
def locked_hello_with_id_block() -> Recipe:
    return lock_copy(HELLO.read_text(encoding="utf-8") + ID_BLOCK, keys=True)


@functools.lru_cache(maxsize=None)
def built_hello_with_id_block() -> BuildResult:
    recipe = locked_hello_with_id_block()
    out = scratch("blindbox-bundle-") / "hello"
    return build(BuildRequest(recipe=recipe.path, out=out, allow_stale=ALLOW_STALE))
