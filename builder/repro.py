"""Reproducibility: compare two bundles byte for byte, and build twice under varied conditions.

:func:`compare_bundles` names every file that differs with the first differing offset
(and, when Debian's ``diffoscope`` is installed, its explanation).  :func:`check_repro`
runs two complete, independent ``blindbox build`` processes of one recipe and lock that
differ in everything a build must not depend on, then compares their bundles:

=====================  =====================================  ==========================================
condition              build A                                build B
=====================  =====================================  ==========================================
directory              <work>/a/...                           <work>/b/ dir with spaces — ü/...
recipe copy            files created in name order            files created in reverse order
input cache            the user's cache                       a fresh cache holding copies of the locked
                                                              packages (created in reverse order, then
                                                              unpacked anew), offline
clock                  the real clock                         ``faketime`` 2041-07-15 (if installed)
TZ / locale            UTC / C.UTF-8                          Pacific/Chatham / tr_TR.UTF-8 (or
                                                              de_DE.UTF-8; the first one generated)
umask                  022                                    077
USER, LOGNAME, HOME    blindbox-a, <work>/home-a              ünïcode-user, <work>/home b
SOURCE_DATE_EPOCH env  unset                                  1 (must not leak: the recipe defines it)
=====================  =====================================  ==========================================

A locale only varies anything if it is generated on this machine (``scripts/setup``
generates tr_TR.UTF-8): build B's locale is the first candidate that a child Python
process can actually select with ``setlocale``.  When none can, B runs under C.UTF-8 and
the variation list says the locale was not varied, and why.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from builder import progress
from builder.errors import BuildError

_CHUNK = 1 << 20
FAKE_DATE = "2041-07-15 03:04:05"
#: Build B's locale: the first of these that is generated here (Turkish case mapping of
#: i/I and a comma decimal point are what locale-dependent code gets wrong).
B_LOCALES = ("tr_TR.UTF-8", "de_DE.UTF-8")
_LOCALE_PROBE = "import locale; locale.setlocale(locale.LC_ALL, '')"


@dataclass(frozen=True)
class Difference:
    file: str
    kind: str                        # "content" | "mode" | "only-in-a" | "only-in-b"
    offset: int | None = None        # first differing byte (content)
    size_a: int | None = None
    size_b: int | None = None
    detail: str | None = None        # modes, or diffoscope's explanation

    def describe(self) -> str:
        if self.kind == "content":
            assert self.size_a is not None and self.size_b is not None  # set for every content difference
            if self.offset == min(self.size_a, self.size_b):
                what = f"one is a prefix of the other (sizes {self.size_a} and {self.size_b})"
            else:
                what = f"first differing byte at offset {self.offset} ({self.offset:#x})"
            return f"{self.file}: {what}"
        if self.kind == "mode":
            return f"{self.file}: file modes differ ({self.detail})"
        side = "first" if self.kind == "only-in-a" else "second"
        return f"{self.file}: only in the {side} bundle"


def first_difference(a: Path, b: Path) -> int | None:
    """Offset of the first byte where the files differ (the shorter length if one is a prefix)."""
    offset = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(_CHUNK), fb.read(_CHUNK)
            if ca != cb:
                n = min(len(ca), len(cb))
                for i in range(n):
                    if ca[i] != cb[i]:
                        return offset + i
                return offset + n
            if not ca:
                return None
            offset += len(ca)


def diffoscope_explain(a: Path, b: Path, *, limit: int = 4000, timeout: float = 120) -> str | None:
    """diffoscope's text report for two files, cut to ``limit`` characters; None if unavailable."""
    exe = shutil.which("diffoscope")
    if exe is None:
        return None
    try:
        p = subprocess.run([exe, "--text", "-", "--no-progress", "--max-report-size", str(limit * 4),
                            str(a), str(b)], capture_output=True, text=True, timeout=timeout,
                           errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = p.stdout.strip()
    if not text:
        return None
    return text if len(text) <= limit else text[:limit] + "\n[... cut]"


def compare_bundles(a: str | Path, b: str | Path, *, explain: bool = True) -> list[Difference]:
    """Every difference between two bundle directories, in file-name order."""
    a, b = Path(a), Path(b)
    names_a = {p.name for p in a.iterdir()}
    names_b = {p.name for p in b.iterdir()}
    out: list[Difference] = []
    for name in sorted(names_a | names_b):
        if name not in names_b:
            out.append(Difference(name, "only-in-a"))
            continue
        if name not in names_a:
            out.append(Difference(name, "only-in-b"))
            continue
        fa, fb = a / name, b / name
        off = first_difference(fa, fb)
        if off is not None:
            detail = diffoscope_explain(fa, fb) if explain else None
            out.append(Difference(name, "content", off, fa.stat().st_size, fb.stat().st_size, detail))
        ma, mb = fa.stat().st_mode & 0o7777, fb.stat().st_mode & 0o7777
        if ma != mb:
            out.append(Difference(name, "mode", detail=f"{ma:04o} and {mb:04o}"))
    return out


# --------------------------------------------------------------------------------------
# two builds under varied conditions
# --------------------------------------------------------------------------------------

@dataclass
class BuildRun:
    label: str
    out: Path
    argv: list[str]
    env: dict[str, str]
    umask: int
    faketime: str | None
    returncode: int = 0
    stderr: str = ""
    result: dict | None = None


@dataclass
class ReproResult:
    recipe: Path
    workdir: Path
    runs: list[BuildRun]
    differences: list[Difference] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    variations: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences


def _copy_reversed(src: Path, dest: Path) -> None:
    """Copy a tree creating entries in reverse name order (directory listings then differ)."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir(), key=lambda p: p.name, reverse=True):
        target = dest / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            _copy_reversed(entry, target)
        else:
            shutil.copy2(entry, target)


def _recipe_files(recipe) -> list[Path]:
    files = [recipe.path, recipe.lock_path]
    files += [recipe.directory / s.file for s in recipe.inputs() if s.kind == "file"]
    if recipe.rootfs is not None and recipe.rootfs.path is not None:   # an OCI layout, directory or tarball
        files.append(recipe.directory / recipe.rootfs.path)
    return files


def _copy_recipe(recipe, dest: Path, *, reverse: bool) -> Path:
    """Copy the recipe, its lock and its local files and trees (same relative layout) into ``dest``;
    with ``reverse``, directory entries are created in reverse name order."""
    files = sorted(_recipe_files(recipe), key=lambda p: str(p), reverse=reverse)
    for f in files:
        rel = Path(os.path.normpath(f)).relative_to(os.path.normpath(recipe.directory))
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if f.is_dir():
            if reverse:
                _copy_reversed(f, dest / rel)
            else:
                shutil.copytree(f, dest / rel, symlinks=True)
        else:
            shutil.copy2(f, dest / rel)
    return dest / recipe.path.name


def _base_env() -> dict[str, str]:
    keep = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "BLINDBOX_DEBIAN_MIRROR", "BLINDBOX_DEBIAN_SECURITY_MIRROR",
            "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
    return {k: os.environ[k] for k in keep if k in os.environ}


def locale_in_effect(name: str, env: dict[str, str] | None = None) -> bool:
    """True if a child Python process with ``LANG``/``LC_ALL`` = ``name`` can select that locale.

    For a locale that is not generated, setlocale fails and most programs carry on, silently,
    in the C locale; Python's ``setlocale(LC_ALL, "")`` raises instead, so a zero exit status
    of the probe shows that the variation is real.
    """
    env = {**(os.environ if env is None else env), "LANG": name, "LC_ALL": name}
    try:
        p = subprocess.run([sys.executable, "-c", _LOCALE_PROBE], env=env, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0


def _pick_locale(env: dict[str, str]) -> str | None:
    return next((name for name in B_LOCALES if locale_in_effect(name, env)), None)


def _locale_label(name: str | None) -> str:
    """What build B's locale was, as the variation list states it."""
    if name is not None:
        return name
    return (f"C.UTF-8 (not varied: none of {', '.join(B_LOCALES)} is generated here; scripts/setup "
            f"generates {B_LOCALES[0]})")


def _run(run: BuildRun, cwd: Path) -> None:
    """Run one build; its progress events (see builder.progress) go to the current receiver as
    ``build A: <step>``, and the rest of its stderr is kept for the error message."""
    report = progress.current()
    report.step(f"build {run.label}")
    report.task("building " + ("as usual" if run.label == "A" else "under varied conditions"))
    argv = list(run.argv)
    if run.faketime:
        argv = ["faketime", run.faketime, *argv]
    env = {**run.env, progress.EVENTS_ENV: "events"}   # always: no progress text may reach an error message
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out, \
            subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.PIPE, text=True,
                             errors="replace", preexec_fn=lambda: os.umask(run.umask)) as p:
        assert p.stderr is not None
        try:
            kept = [line for line in p.stderr
                    if not progress.forward_event(line.rstrip("\n"), report, f"build {run.label}: ")]
        except BaseException:          # e.g. an interrupt: do not leave the build running (as subprocess.run)
            p.kill()
            raise
        p.wait()
        out.seek(0)
        stdout = out.read()
    run.returncode, run.stderr = p.returncode, "".join(kept)
    try:
        run.result = json.loads(stdout) if stdout.strip() else None
    except json.JSONDecodeError:
        run.result = None


def _user_paths(text: str, copies: dict[Path, Path]) -> str:
    """``text`` (a build's error output) with the temporary recipe copies replaced by the user's paths."""
    for copy, original in copies.items():
        text = text.replace(str(copy), str(original))
    return text


def _build_failed(run: BuildRun, recipe, copies: dict[Path, Path]) -> BuildError:
    detail = _user_paths(run.stderr.strip()[-2000:], copies)
    detail = detail[len("blindbox: error: "):] if detail.startswith("blindbox: error: ") else detail
    return BuildError(f"check-repro: build {run.label} of {recipe.path} failed (exit {run.returncode}): {detail}")


def check_repro(recipe, *, cache: Path, workdir: Path | None = None, allow_stale=(), keep: bool = False,
                explain: bool = True, use_faketime: bool = True, reference: Path | None = None) -> ReproResult:
    """Build ``recipe`` twice in separate processes under different conditions and compare.

    ``cache`` is the content cache build A uses (it is warmed there if needed); build B
    works offline from a copy of it.  ``reference``: a bundle built before (e.g. the one
    ``build --check-repro`` just wrote) that must equal build A too.  Raises BuildError
    when a build itself fails; its message names the user's recipe and lock, not the copies.

    The work directory holds copies of the recipe's files, private ID keys included.  It
    is removed on every way out (success, failure, exception, interrupt), except after a
    difference or with ``keep``: then both bundles stay for inspection (``workdir`` in the
    result) and the recipe copies, with the keys, are removed.  A ``workdir`` given by
    the caller is never removed, only the recipe copies in it.
    """
    from builder.lock import read_lock
    read_lock(recipe.lock_path)  # a missing or unreadable lock is the user's to fix, as in `build`
    made_workdir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="blindbox-repro-")) if workdir is None else Path(workdir)
    keep_bundles = False
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        result = _check_repro(recipe, cache, workdir, allow_stale, explain, use_faketime, reference)
        keep_bundles = keep or not result.identical
        return result
    finally:
        if made_workdir and not keep_bundles:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for copy in _recipe_copies(workdir):
                shutil.rmtree(copy, ignore_errors=True)


def _recipe_copies(workdir: Path) -> list[Path]:
    return [workdir / "a" / "recipe", workdir / _DIR_B / "recipe"]


_DIR_B = "b dir with spaces — ü"


def _check_repro(recipe, cache: Path, workdir: Path, allow_stale, explain: bool, use_faketime: bool,
                 reference: Path | None) -> ReproResult:
    faketime = FAKE_DATE if use_faketime and shutil.which("faketime") else None
    cli = [sys.executable, "-m", "blindbox.cli", "build"]
    stale = [a for s in allow_stale for a in ("--allow-stale", s)]

    dir_a = workdir / "a"
    dir_b = workdir / _DIR_B
    copies = {dir_a / "recipe": recipe.directory, dir_b / "recipe": recipe.directory}
    recipe_a = _copy_recipe(recipe, dir_a / "recipe", reverse=False)
    recipe_b = _copy_recipe(recipe, dir_b / "recipe", reverse=True)
    (workdir / "home-a").mkdir(exist_ok=True)
    (workdir / "home b").mkdir(exist_ok=True)

    env_a = {**_base_env(), "TZ": "UTC", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "USER": "blindbox-a",
             "LOGNAME": "blindbox-a", "HOME": str(workdir / "home-a"), "BLINDBOX_CACHE": str(cache)}
    run_a = BuildRun("A", dir_a / "out" / recipe.name,
                     cli + [str(recipe_a), "--out", str(dir_a / "out" / recipe.name), "--force", "--json", *stale],
                     env_a, 0o022, None)
    _run(run_a, dir_a)
    if run_a.returncode != 0:
        raise _build_failed(run_a, recipe, copies)

    cache_b = workdir / "cache-b"
    (cache_b / "sha256").mkdir(parents=True, exist_ok=True)
    from builder.lock import read_lock
    for entry in sorted(read_lock(recipe.lock_path).inputs, key=lambda e: e.sha256, reverse=True):
        blob = cache / "sha256" / entry.sha256
        if entry.kind != "file" and blob.is_file():
            shutil.copy2(blob, cache_b / "sha256" / entry.sha256)
    locale_b = _pick_locale(_base_env())
    env_b = {**_base_env(), "TZ": "Pacific/Chatham", "LANG": locale_b or "C.UTF-8",
             "LC_ALL": locale_b or "C.UTF-8",
             "USER": "ünïcode-user", "LOGNAME": "ünïcode-user", "HOME": str(workdir / "home b"),
             "SOURCE_DATE_EPOCH": "1", "BLINDBOX_CACHE": str(cache_b)}
    run_b = BuildRun("B", dir_b / "out" / recipe.name,
                     cli + [str(recipe_b), "--out", str(dir_b / "out" / recipe.name), "--force", "--offline",
                            "--json", *stale],
                     env_b, 0o077, faketime)
    _run(run_b, dir_b)
    if run_b.returncode != 0:
        raise _build_failed(run_b, recipe, copies)

    progress.current().step("compare")
    result = ReproResult(recipe.path, workdir, [run_a, run_b])
    result.variations = [
        ("directory", str(dir_a), str(dir_b)),
        ("recipe file creation order", "name order", "reverse name order"),
        ("input cache", str(cache), f"{cache_b} (locked packages only, offline, unpacked anew)"),
        ("clock", "real", f"faketime {faketime}" if faketime else "real (faketime is not installed)"),
        ("TZ", env_a["TZ"], env_b["TZ"]),
        ("locale", env_a["LC_ALL"], _locale_label(locale_b)),
        ("umask", "022", "077"),
        ("user", env_a["USER"], env_b["USER"]),
        ("HOME", env_a["HOME"], env_b["HOME"]),
        ("SOURCE_DATE_EPOCH env", "unset", "1"),
    ]
    result.files = sorted(p.name for p in run_a.out.iterdir())
    result.differences = compare_bundles(run_a.out, run_b.out, explain=explain)
    if reference is not None:
        result.differences += [
            Difference(f"{d.file} (in {reference}, against build A)", d.kind, d.offset, d.size_a, d.size_b,
                       d.detail) for d in compare_bundles(reference, run_a.out, explain=explain)]
        result.variations.insert(0, ("also compared", str(reference), "build A"))
    return result
