"""``blindbox build``, ``blindbox lock`` and ``blindbox check-repro``: recipes -> bundles.

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import click

from .build_core import result_json, result_lines
from .progress import reporting


STALE_HELP = ("Accept an expired Release file for this Debian suite (sid, trixie, bookworm); apt's signature "
              "checks stay on. Repeatable. See docs/recipes.md.")


QUIET_HELP = "Show no progress on stderr (errors are still shown). See docs/progress.md."


@click.command("build")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Bundle directory (default: ./out/<name>). Replaced atomically.")
@click.option("--offline", is_flag=True, help="Use only the local cache; fail if an input is not there.")
@click.option("--force", is_flag=True, help="Rebuild even if the bundle is up to date.")
@click.option("--allow-stale", multiple=True, metavar="SUITE", help=STALE_HELP)
@click.option("--check-repro", "check_repro_flag", is_flag=True,
              help="Then build twice more under varied conditions (see check-repro) and compare all three.")
@click.option("--inputs", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Take the pinned inputs from DIR, written by `blindbox vendor`; each file is checked against "
                   "the lock's sha256. With --offline, builds from DIR alone.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result on stdout.")
@click.option("--quiet", "-q", is_flag=True, help=QUIET_HELP)
def build(recipe, out, offline, force, allow_stale, check_repro_flag, inputs, as_json, quiet):
    """Build the guest bundle of RECIPE from its lock file.

    Uses only the inputs pinned in the lock file next to RECIPE (run `blindbox lock`
    first). Prints the bundle path and the expected launch digest of every shape.
    """
    from builder.pipeline import BuildRequest, build as run_build

    with reporting("build", quiet):
        res = run_build(BuildRequest(recipe=recipe, out=out, offline=offline, allow_stale=tuple(allow_stale),
                                     force=force, inputs=inputs))
    if as_json and not check_repro_flag:
        click.echo(json.dumps(result_json(res), indent=2, ensure_ascii=False))
    elif not as_json:
        for line in result_lines(res):
            click.echo(line)
    if check_repro_flag:
        _check_repro(recipe, allow_stale, keep=False, as_json=as_json, extra={"build": result_json(res)},
                     reference=res.out, quiet=quiet)


def _check_repro(recipe, allow_stale, keep, as_json, extra=None, reference=None, quiet=False):
    from builder.recipe import load_recipe
    from builder.repro import check_repro as run_check
    from builder.sources import cache_root

    r = load_recipe(recipe)
    with reporting("check-repro", quiet):
        res = run_check(r, cache=cache_root(), allow_stale=tuple(allow_stale), keep=keep, reference=reference)
    if as_json:
        doc = dict(extra or {})
        doc.update({
            "identical": res.identical,
            "files": res.files,
            "workdir": str(res.workdir) if (keep or not res.identical) else None,
            "variations": [{"condition": c, "a": a, "b": b} for c, a, b in res.variations],
            "differences": [{"file": d.file, "kind": d.kind, "offset": d.offset, "size_a": d.size_a,
                             "size_b": d.size_b, "detail": d.detail} for d in res.differences],
        })
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        click.echo("builds compared (A vs B):")
        for c, a, b in res.variations:
            click.echo(f"  {c:<28} {a}  |  {b}")
        if res.identical:
            click.echo(f"reproducible: the bundles are byte-identical ({', '.join(res.files)}).")
        for d in res.differences:
            click.echo(f"NOT REPRODUCIBLE: {d.describe()}")
            if d.detail and d.kind == "content":
                click.echo("  diffoscope:\n    " + d.detail.replace("\n", "\n    "))
        if not res.identical:
            click.echo(f"both bundles are kept in {res.workdir}")
    if not res.identical:
        raise click.exceptions.Exit(3)


@click.command("check-repro")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--allow-stale", multiple=True, metavar="SUITE", help=STALE_HELP)
@click.option("--keep", is_flag=True, help="Keep both bundles (and the work directory) even if identical.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result on stdout.")
@click.option("--quiet", "-q", is_flag=True, help=QUIET_HELP)
def check_repro(recipe, allow_stale, keep, as_json, quiet):
    """Build RECIPE twice in separate processes under varied conditions and compare.

    The second build runs in another directory, with another clock (if faketime is
    installed), time zone, locale (if one is generated: scripts/setup makes tr_TR.UTF-8),
    umask, user, HOME, a fresh copy of the input cache (offline) and SOURCE_DATE_EPOCH set
    in the environment (it must not leak in); the output lists what was varied. Exit 0
    when every file is byte-identical, 3 when not, naming each differing file and its
    first differing offset.
    """
    _check_repro(recipe, allow_stale, keep, as_json, quiet=quiet)


@click.command("lock")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--update", is_flag=True,
              help="Re-pin inputs to what their sources serve now (all, or those named by --input). "
                   "This changes the launch measurement, unless only id_block keys change.")
@click.option("--input", "only", multiple=True, metavar="NAME",
              help="With --update: only this input (e.g. kernel, firmware, busybox; 'libraries' for all "
                   "library:* pins). Repeatable.")
@click.option("--offline", is_flag=True, help="Resolve from cached package lists only.")
@click.option("--allow-stale", multiple=True, metavar="SUITE", help=STALE_HELP)
@click.option("--snapshot", metavar="URL@TIMESTAMP",
              help="Record a snapshot archive (e.g. https://snapshot.debian.org@20261030T000000Z) that serves "
                   "pinned packages once the Debian archive no longer does. See docs/rebuilding.md.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result on stdout.")
@click.option("--quiet", "-q", is_flag=True, help=QUIET_HELP)
def lock(recipe, update, only, offline, allow_stale, snapshot, as_json, quiet):
    """Pin every input of RECIPE to an exact version and sha256 in the lock file beside it.

    Existing pins are kept unless the recipe now declares that input differently or
    --update asks for a new pin. Every change is listed.
    """
    from builder.lock import LockMissing, lock_recipe, read_lock, write_lock
    from builder.recipe import load_recipe
    from builder.sources import ContentCache, DebianArchive, fetch_url
    from builder.sources.snapshot import Snapshot
    from measure.errors import InputError
    from blindbox.files import same_file

    if only and not update:
        raise click.UsageError("--input selects what --update re-pins; add --update.")
    pinned_snapshot = Snapshot.parse(snapshot) if snapshot is not None else None
    r = load_recipe(recipe)
    if same_file(r.lock_path, r.path):
        raise InputError(f"{r.path}: the lock file of a recipe is its path with .lock ({r.lock_path}), which is "
                         f"the recipe itself here; rename the recipe to end in .yaml.")
    try:
        previous = read_lock(r.lock_path)
    except LockMissing:
        previous = None
    cache = ContentCache()
    archive = DebianArchive(cache=cache, offline=offline, allow_stale=tuple(allow_stale))
    with reporting("lock", quiet):
        res = lock_recipe(r, archive, lambda url, sha: fetch_url(url, sha, cache=cache, offline=offline),
                          previous=previous, update=update, only=only, snapshot=pinned_snapshot)
    new_bytes = res.lock.to_json()
    rewritten = previous is None or previous.sha256 != hashlib.sha256(new_bytes).hexdigest()
    if rewritten:
        written = write_lock(r.lock_path, res.lock)
    else:                                     # the file already holds exactly these bytes: leave it alone
        assert previous is not None
        written = previous
    if as_json:
        click.echo(json.dumps({
            "lock": str(written.path), "sha256": written.sha256,
            "changes": [{"name": c.name, "reason": c.reason,
                         "old": c.old.to_dict() if c.old else None,
                         "new": c.new.to_dict() if c.new else None} for c in res.changes],
            "measurement_changes": bool(res.measured_changes),
            "id_key_changes": bool(res.key_changes),
            "inputs": [i.to_dict() for i in written.inputs],
            "written": rewritten,
        }, indent=2, ensure_ascii=False))
        return
    assert written.path is not None  # write_lock records where it wrote
    rel = os.path.relpath(written.path)
    if pinned_snapshot is not None and (previous is None or previous.snapshot != pinned_snapshot):
        click.echo(f"{rel}: records the snapshot archive {pinned_snapshot}.")
    if not res.changes and not rewritten:
        click.echo(f"{rel}: unchanged; every input of {r.path} is pinned.")
    elif not res.changes:
        click.echo(f"{rel}: rewritten in blindbox's canonical form; no pin changed, every input of {r.path} "
                   f"is pinned.")
    else:
        click.echo(f"{rel}: written.")
        for c in res.changes:
            click.echo(f"  {c.describe()}")
    if res.measured_changes:
        click.echo(f"note: {len(res.measured_changes)} measured input pin(s) changed, so the bundle and its "
                   f"launch measurement change: rebuild and publish the new manifest.json.")
    if res.key_changes:
        click.echo(f"note: {len(res.key_changes)} ID key pin(s) changed: the ID blocks and the key digests a "
                   f"report carries change, the launch measurement does not; rebuild and publish the new "
                   f"manifest.json.")


@click.command("vendor")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Directory to write (new, empty, or a previous vendor directory of the same lock).")
@click.option("--offline", is_flag=True, help="Use only the local cache; fail if an input is not there.")
@click.option("--allow-stale", multiple=True, metavar="SUITE", help=STALE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result on stdout.")
def vendor(recipe, out, offline, allow_stale, as_json):
    """Write every pinned input of RECIPE's lock into DIR, with an index (DIR/inputs.json).

    The .deb files, URL inputs and local files are fetched through the cache and checked
    against the lock's sha256. `blindbox build RECIPE --inputs DIR --offline` then builds
    from DIR alone, with an empty cache. See docs/rebuilding.md.
    """
    from builder.lock import check_lock, read_lock
    from builder.recipe import load_recipe
    from builder.sources import ContentCache, DebianArchive, fetch_url
    from builder.sources.snapshot import fallback
    from builder.sources.vendor import vendor as run_vendor

    r = load_recipe(recipe)
    lk = read_lock(r.lock_path)
    check_lock(r, lk)
    cache = ContentCache()
    archive = DebianArchive(cache=cache, offline=offline, allow_stale=tuple(allow_stale))
    if lk.snapshot is not None:
        archive.fallback = fallback(lk.snapshot, cache)
    res = run_vendor(r, lk, out, archive=archive, cache=cache,
                     fetch_url=lambda url, sha: fetch_url(url, sha, cache=cache, offline=offline))
    if as_json:
        click.echo(json.dumps({"out": str(res.out), "replaced": res.replaced, **res.index}, indent=2,
                              ensure_ascii=False))
        return
    files = [i for i in res.index["inputs"] if i["file"] is not None]
    size = sum(i["size"] for i in files)
    click.echo(f"{res.out}: {len(files)} pinned input(s), {size} bytes, of lock sha256 {res.index['lock_sha256']}"
               f"{' (replaced the previous copy)' if res.replaced else ''}")
    for i in res.index["inputs"]:
        click.echo(f"  {i['name']:<28} {i['file'] or '(read from the recipe directory)'}")
