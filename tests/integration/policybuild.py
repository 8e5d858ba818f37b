"""tests/integration/egress_probe/egress-probe.yaml with a runtime policy, locked afresh and built once per run.

Each variant is the test-only recipe with one ``runtime_policy:`` section appended (and,
for ``rewrite``, text replaced), copied with probe.sh into a scratch directory of the run,
locked against today's archive and built; pytest-xdist workers share each build
(:func:`tests.integration.appbuild.once`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from builder.lock import lock_recipe, write_lock
from builder.manifest import Manifest
from builder.pipeline import BuildRequest, build
from builder.recipe import Recipe, load_recipe
from builder.sources import fetch_url
from tests.realinputs import ALLOW_STALE, archive

from .appbuild import once

PROBE = Path(__file__).resolve().parent / "egress_probe"
RECIPE = PROBE / "egress-probe.yaml"
#: the probe's destinations (egress-probe.yaml's entrypoint): guestfwds lead both to 127.0.0.1 servers
ALLOWED = ("10.0.2.101", 5001)
DENIED = ("10.0.2.102", 5001)

#: the policy of the enforcement tests: TCP to ALLOWED (tested live), a UDP and an IPv6 rule (checked in
#: the printed rule set only)
POLICY = """
runtime_policy:
  egress:
    - {network: 10.0.2.101, port: 5001, protocol: tcp}
    - {network: 198.51.100.0/24, port: 123, protocol: udp}
    - {network: "2001:db8::/32", port: 443, protocol: tcp}
  logs: [app]
"""
#: the control: the same, and DENIED allowed too
CONTROL = POLICY.replace("  logs: [app]\n", "    - {network: 10.0.2.102, port: 5001, protocol: tcp}\n"
                                             "  logs: [app]\n")


def recipe_text(policy: str, rewrite: tuple[tuple[str, str], ...] = ()) -> str:
    text = RECIPE.read_text(encoding="utf-8") + policy
    for old, new in rewrite:
        assert old in text, old
        text = text.replace(old, new)
    return text


def copy_probe(directory: Path, text: str) -> Recipe:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROBE / "probe.sh", directory / "probe.sh")
    (directory / "egress-probe.yaml").write_text(text, encoding="utf-8")
    recipe = load_recipe(directory / "egress-probe.yaml")
    write_lock(recipe.lock_path, lock_recipe(recipe, archive(), fetch_url).lock)
    return recipe


def built_probe(tmp_path_factory, name: str, policy: str = POLICY, *, rewrite: tuple[tuple[str, str], ...] = (),
                before: Callable[[], object] | None = None) -> tuple[Path, Manifest]:
    """(bundle, manifest) of the probe with ``policy``, built once per run under ``name``."""

    def make(target: Path) -> None:
        recipe = copy_probe(target / "recipe", recipe_text(policy, rewrite))
        if before is not None:
            before()
        build(BuildRequest(recipe=recipe.path, out=target / "bundle", allow_stale=ALLOW_STALE))

    bundle = once(tmp_path_factory, name, make) / "bundle"
    return bundle, Manifest.from_dict(json.loads((bundle / "manifest.json").read_text()))
