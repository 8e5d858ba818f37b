"""``blindbox build`` parsed without click: the same output, errors and exit statuses as through click."""

from __future__ import annotations

import json
import re
import shutil

import pytest

import blindbox.cli.build_core as core
from blindbox.cli import main
from builder import pipeline

from .test_pipeline import STEPS, locked

#: {recipe}, {out}, {file} (an existing regular file), {dir} (the recipe's directory) are filled in per test
CASES = [
    ["{recipe}", "--out", "{out}"], ["{recipe}", "--out", "{out}", "--json"],
    ["--json", "{recipe}", "-q", "--out", "{out}"],
    ["{recipe}", "--out", "{out}", "--force"], ["{recipe}", "--out", "{out}", "--offline", "--quiet"],
    ["{recipe}", "--out", "{out}", "--allow-stale", "sid", "--allow-stale", "trixie"],
    ["{recipe}", "--out", "{out}", "--allow-stale", "bogus"], ["{recipe}", "--out", "{file}"],
    ["{recipe}", "--out", "{out}", "--out", "{dir}/../out/t2"], ["{recipe}", "--out={out}"],
    ["{recipe}", "--out", "-x"], ["{recipe}", "--out"], ["{recipe}", "--bogus"], ["{recipe}", "{recipe}"], [],
    ["{recipe}", "--help"], ["--", "{recipe}", "--out", "{out}"], ["{recipe}", "--out", "{out}", "-q", "-q"],
    ["{recipe}", "--out", "{out}", "--inputs", "{dir}/missing"], ["{recipe}", "--out", "{out}", "--inputs", "{file}"],
    ["{dir}/nonexistent.yaml", "--out", "{out}"], ["{dir}", "--out", "{out}"], ["", "--out", "{out}"],
    ["{recipe}", "--out", "{out}", "--allow-stale", ""], ["{recipe}", "--out", "{out}/./x/../y//"],
    ["{recipe}", "--out", "{out}", "--json", "--json"], ["{recipe}", "--out", "{out}", "-qq"],
]


@pytest.fixture
def env(tmp_path, monkeypatch):
    env = locked(tmp_path)
    real_build = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda req, **kw: real_build(req, archive=env.archive, steps=STEPS, **kw))
    monkeypatch.setenv("BLINDBOX_CACHE", str(env.cache))
    env.file = tmp_path / "a-file"
    env.file.write_text("not a directory\n")
    env.cwd = tmp_path / "cwd"          # where relative --out values (and ./out) land
    env.cwd.mkdir()
    monkeypatch.chdir(env.cwd)
    return env


def _reset(env) -> None:
    """No bundle anywhere: every run of a pair starts from the same files."""
    for p in [env.out, env.out.parent / "t2", env.out.parent / "y"] + list(env.cwd.iterdir()):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _argv(case: list[str], env) -> list[str]:
    return ["build"] + [a.format(recipe=env.recipe.path, out=env.out, file=env.file, dir=env.recipe.path.parent)
                        for a in case]


def _normalized(rc: int, out: str, err: str) -> tuple:
    """The run's status and output, without the seconds it took."""
    out = re.sub(r"\(\d+\.\d s\)", "(T s)", out)
    out = re.sub(r'("(recipe|current|fetch|firmware|kernel|rootfs|agent|initrd|cmdline|measure|idblock|launch|'
                 r'manifest|write)": )[0-9.e-]+', r"\1T", out)
    return rc, out, err


def _run(argv, capsys, monkeypatch, *, fast: bool) -> tuple:
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(core, "fast_options", lambda args: None)
        rc = main(argv)
    captured = capsys.readouterr()
    return _normalized(rc, captured.out, captured.err)


@pytest.mark.parametrize("case", CASES, ids=lambda c: " ".join(c) or "(none)")
def test_fast_path_answers_exactly_as_click(case, env, capsys, monkeypatch):
    argv = _argv(case, env)
    for bundle_there in (False, True):    # a build, then a no-op rebuild
        results = []
        for fast in (False, True):
            _reset(env)
            if bundle_there:
                assert main(["build", str(env.recipe.path), "--out", str(env.out), "-q"]) == 0
                capsys.readouterr()
            results.append(_run(argv, capsys, monkeypatch, fast=fast))
        assert results[1] == results[0], argv


def test_common_invocations_take_the_fast_path(env):
    for case in (["{recipe}"], ["{recipe}", "--out", "{out}", "--json", "--quiet"],
                 ["{recipe}", "--allow-stale", "sid", "--offline", "--force", "-q", "--inputs", "{dir}"]):
        assert core.fast_options(_argv(case, env)[1:]) is not None, case


def test_fast_options_are_those_click_passes(env, monkeypatch):
    # what the click command hands to the pipeline, compared with what the fast path hands to it
    seen = []

    def record(req, **kw):
        seen.append(req)
        raise RuntimeError("stop")    # reported as an internal error; only the request matters here

    monkeypatch.setattr(pipeline, "build", record)
    argv = _argv(["--json", "{recipe}", "--out", "{out}", "--allow-stale", "sid", "--allow-stale", "trixie",
                  "--offline", "--force", "-q", "--inputs", "{dir}"], env)
    with monkeypatch.context() as m:
        m.setattr(core, "fast_options", lambda args: None)
        main(argv)
    main(argv)
    assert len(seen) == 2 and seen[0] == seen[1]


def test_an_escape_sequence_in_the_bundle_path_is_printed_as_click_prints_it(env, capsys, monkeypatch):
    out = env.out.parent / "a\x1b[31mred"
    argv = ["build", str(env.recipe.path), "--out", str(out)]
    assert main(argv + ["-q"]) == 0
    capsys.readouterr()
    through_click = _run(argv, capsys, monkeypatch, fast=False)
    assert "\x1b" not in through_click[1]     # click strips it when stdout is not a terminal
    assert _run(argv, capsys, monkeypatch, fast=True) == through_click


def test_no_op_build_json_is_valid(env, capsys):
    assert main(["build", str(env.recipe.path), "--out", str(env.out), "-q"]) == 0
    capsys.readouterr()
    assert main(["build", str(env.recipe.path), "--out", str(env.out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["up_to_date"] and list(doc["timings"]) == ["recipe", "current"]
