"""``python -m tests.corpus.run ARGS...``: the blindbox CLI plus one test-only command.

``parse-file KIND FILE`` feeds FILE to a builder reader that no command reaches with a
file of the user's choosing (a .deb, a bzImage, a kernel module, an ELF program, a newc
archive), or to the calculator's dm-verity superblock reader, which no command reaches
yet.  Everything else is the real ``blindbox`` entry point, so the corpus sees the exit
status, message and absence of tracebacks a user would.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from blindbox import cli

KINDS = ("deb", "deb-control", "bzimage", "module", "elf", "cpio", "verity-superblock")


@click.command("parse-file")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("path", type=click.Path(path_type=Path))
def parse_file(kind: str, path: Path) -> None:
    from measure.inputs import read_input

    if kind == "deb":
        from builder.sources import extract_deb
        with tempfile.TemporaryDirectory() as tmp:
            extract_deb(path, Path(tmp) / "tree")
    elif kind == "deb-control":
        from builder.sources import read_deb_control
        read_deb_control(path)
    elif kind == "bzimage":
        from builder.steps.kernel import bzimage_version
        bzimage_version(path)
    elif kind == "module":
        from builder.steps.kernel import modinfo
        modinfo(read_input(path, "kernel module"), where=f"module {path.name}")
    elif kind == "elf":
        from builder.steps.elf import read_elf
        read_elf(path, what=f"binary /bin/{path.name}")
    elif kind == "verity-superblock":
        from measure import verity
        verity.read_superblock(path)
    else:
        from builder.steps import cpio
        cpio.parse(read_input(path, "initrd"))
    click.echo("ok")


if __name__ == "__main__":
    cli.COMMANDS["parse-file"] = f"{__name__}:parse_file"
    sys.exit(cli.main(sys.argv[1:]))
