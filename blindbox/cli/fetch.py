"""``blindbox fetch``: get one Debian package (or a file in it) exactly as the builder does.

Auditors use it to re-derive a published digest from the same inputs: the package is
resolved through blindbox's private apt configuration, verified by sha256, unpacked in
Python and kept in the content cache; the command prints the path.

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from __future__ import annotations

import json

import click


@click.command("fetch")
@click.argument("package")
@click.option("--suite", required=True, help="Debian suite: bookworm, trixie or sid.")
@click.option("--version", "version", help="Exact version (default: what the suite serves today).")
@click.option("--member", metavar="PATH", help="A file inside the package, e.g. /usr/share/ovmf/OVMF.amdsev.fd.")
@click.option("--allow-stale", is_flag=True,
              help="Accept the suite's Release file even if its Valid-Until has passed "
                   "(signatures are still checked).")
@click.option("--offline", is_flag=True, help="Use only the local cache.")
@click.option("--json", "as_json", is_flag=True, help="Print package name, version, sha256 and path as JSON.")
@click.option("--quiet", "-q", is_flag=True,
              help="Show no progress on stderr (errors are still shown). See docs/progress.md.")
def fetch(package, suite, version, member, allow_stale, offline, as_json, quiet):
    """Download PACKAGE from Debian, verify it, and print the path of it or of --member."""
    from builder.sources import DebianArchive, sha256_file

    from .progress import reporting

    archive = DebianArchive(offline=offline, allow_stale=[suite] if allow_stale else ())
    with reporting("fetch", quiet) as report:
        report.step("resolve")
        pkg = archive.resolve(package, suite, version)
        report.step("download" if not member else "unpack")
        path = archive.member(pkg, member) if member else archive.download(pkg)
    if as_json:
        click.echo(json.dumps({**pkg.to_dict(), "path": str(path), "path_sha256": sha256_file(path)}, indent=2))
    else:
        click.echo(str(path))
