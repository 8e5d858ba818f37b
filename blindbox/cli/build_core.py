"""``blindbox build`` without click: the result as text or JSON, and a parser for the command's common form.

:func:`run` is what ``blindbox build`` does once its options are parsed (without
``--check-repro``); it returns the text to print.  :func:`fast_options` reads the usual
invocations (a recipe and the options CI pipelines pass, each in its own argument) with the
standard library alone, so that a no-op rebuild does not import click.  Anything it is not
certain to read exactly as click would (an unknown, repeated or ``=`` option, ``--help``,
``--check-repro``, a value that starts with ``-``, a path click's ``Path`` type would refuse)
makes it return None, and click parses the command line instead: the same output, errors
and exit statuses either way (tests/builder/test_build_cli_fast.py).

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

#: option -> keyword of :func:`run`
_FLAGS = {"--offline": "offline", "--force": "force", "--json": "as_json", "--quiet": "quiet", "-q": "quiet"}
#: option with a value -> (keyword of :func:`run`, whether click's Path type refuses an existing file)
_VALUES = {"--out": ("out", True), "--inputs": ("inputs", True), "--allow-stale": ("allow_stale", None)}


def result_json(res) -> dict:
    """A build's result as ``blindbox build --json`` prints it."""
    m = res.manifest
    return {
        "bundle": str(res.out),
        "up_to_date": res.up_to_date,
        "name": m.name,
        "recipe": m.recipe,
        "lock": m.lock,
        "outputs": [o.to_dict() for o in m.outputs],
        "measurements": [x.to_dict() for x in m.measurements],
        "timings": {name: round(t, 3) for name, t in res.timings},
        "downloaded": list(res.downloaded),
        "preflight": list(res.preflight),
    }


def result_lines(res) -> list[str]:
    """A build's result as ``blindbox build`` prints it: the bundle, then every shape's launch digest."""
    state = "up to date" if res.up_to_date else "built"
    lines = [f"{res.out}: {state} ({sum(t for _, t in res.timings):.1f} s)"]
    lines += [f"  {m.shape:<28} {m.measurement}" for m in res.manifest.measurements]
    return lines


def _click_takes(value: str, refuse_file: bool | None) -> bool:
    """Whether click's ``Path`` type gives this value back as ``Path(value)`` without a check failing."""
    if not value or value.startswith("-") or "\x00" in value:
        return False
    if refuse_file is None:          # not a path
        return True
    try:
        st = os.stat(value)
    except OSError:
        return True                  # a path that does not exist (yet) is not checked
    if refuse_file and stat.S_ISREG(st.st_mode):
        return False
    return os.access(value, os.R_OK)


def fast_options(args: list[str]) -> dict[str, Any] | None:
    """The keyword arguments of :func:`run` for ``blindbox build ARGS``, or None to let click parse."""
    out: dict[str, Any] = {"recipe": None, "out": None, "offline": False, "force": False, "allow_stale": [],
                           "inputs": None, "as_json": False, "quiet": False}
    seen: set[str] = set()
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token in _FLAGS:
            key = _FLAGS[token]
            if key in seen:
                return None
            seen.add(key)
            out[key] = True
        elif token in _VALUES:
            key, refuse_file = _VALUES[token]
            if (key in seen and key != "allow_stale") or i == len(args) or not _click_takes(args[i], refuse_file):
                return None
            seen.add(key)
            if key == "allow_stale":
                out[key].append(args[i])
            else:
                out[key] = Path(args[i])
            i += 1
        elif out["recipe"] is None and _click_takes(token, False):
            out["recipe"] = Path(token)
        else:
            return None
    if out["recipe"] is None:
        return None
    return out


def run(*, recipe: Path, out: Path | None, offline: bool, force: bool, allow_stale: list[str], inputs: Path | None,
        as_json: bool, quiet: bool) -> str:
    """Build ``recipe`` as ``blindbox build`` does; the text it prints."""
    from builder.pipeline import BuildRequest, build as run_build

    from .progress import reporting

    with reporting("build", quiet):
        res = run_build(BuildRequest(recipe=recipe, out=out, offline=offline, allow_stale=tuple(allow_stale),
                                     force=force, inputs=inputs))
    if as_json:
        return json.dumps(result_json(res), indent=2, ensure_ascii=False)
    return "\n".join(result_lines(res))
