"""The recipe's YAML is scanned once: the depth check's events feed the composer.

The nodes and the errors must be those of composing the text again (what the loader did
before), so these tests compare the two on the shipped recipes and on broken documents.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builder import recipe as recipe_module
from builder.errors import RecipeError
from builder.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))

BROKEN = [
    "name: [a, b\n",                       # parser error
    "name: *nowhere\n",                    # composer error: undefined alias
    "a: &x 1\nb: &x 2\nc: *x\n",           # an anchor defined twice (PyYAML allows it)
    "name: x\n---\nname: y\n",             # two documents
    "",                                    # no document
    "name: [" * 40 + "]" * 40 + "\n",      # nested too deep
    "a: 1\n\tb: 2\n",                      # a tab where YAML wants spaces
    "? [a, b]\n: c\n",                     # a complex key
]


def composed_twice(text: str):
    """What the loader did before: parse once for the depth check, then compose from the text again."""
    recipe_module._check_depth(text, Path("r.yaml"))
    return list(yaml.compose_all(text, Loader=yaml.SafeLoader))


def outcome(fn, text: str):
    try:
        return "nodes", repr(fn(text))
    except (yaml.YAMLError, RecipeError) as e:
        return type(e).__name__, str(e)


@pytest.mark.parametrize("text", [p.read_text(encoding="utf-8") for p in RECIPES] + BROKEN)
def test_composing_the_parsed_events_gives_the_same_nodes_and_errors(text):
    def once(t):
        return recipe_module._EventComposer(recipe_module._check_depth(t, Path("r.yaml"))).documents()

    assert outcome(once, text) == outcome(composed_twice, text)


def test_a_recipe_is_scanned_once(monkeypatch):
    assert RECIPES
    scans = []
    real = yaml.scanner.Scanner.__init__

    def counting(self):
        scans.append(1)
        real(self)

    monkeypatch.setattr(yaml.scanner.Scanner, "__init__", counting)
    load_recipe(ROOT / "recipes" / "hello.yaml")
    assert len(scans) == 1


def test_errors_of_the_composer_keep_their_line():
    with pytest.raises(RecipeError) as e:
        parse_recipe(b"name: t\nkernel: *nowhere\n", "r.yaml")
    assert str(e.value).startswith("r.yaml:2: not valid YAML: found undefined alias 'nowhere'")
