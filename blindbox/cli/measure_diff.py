"""``blindbox measure-diff A B``: where and why two SEV-SNP launch digests part.

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from __future__ import annotations

import json
import os

import click

from measure.diff import Side, compare, side_from_json


def _side(spec: str, label: str) -> Side:
    if "#" in spec and not os.path.isfile(spec):
        from blindbox.audit.diffside import side_from_manifest
        manifest, _, shape = spec.rpartition("#")
        return side_from_manifest(manifest, shape, label)
    return side_from_json(spec, label)


@click.command("measure-diff")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def measure_diff(a, b, as_json):
    """Show the first PAGE_INFO where two launch digests part, and which input causes it.

    A and B are each the output of `blindbox measure --json --trace` (one shape), or a
    bundle's MANIFEST#SHAPE (e.g. out/hello/manifest.json#qemu:EPYC-Genoa:4:0x1), whose
    launch is recomputed from the files next to the manifest after checking their SHA-256.
    Exit 0 when the launches are the same, 3 when they differ.
    """
    side_a, side_b = _side(a, "A"), _side(b, "B")
    parting = compare(side_a, side_b)
    if as_json:
        click.echo(json.dumps({
            "a": {"source": a, "measurement": side_a.digest.hex(), "pages": len(side_a.trace)},
            "b": {"source": b, "measurement": side_b.digest.hex(), "pages": len(side_b.trace)},
            "equal": parting is None,
            "parting": None if parting is None else {
                "index": parting.index, "gpa": None if parting.gpa is None else f"{parting.gpa:#x}",
                "page_type_a": parting.page_types[0], "page_type_b": parting.page_types[1],
                "cause": parting.cause, "details": list(parting.details)}}, indent=2))
    else:
        click.echo(f"A: {side_a.label}  {side_a.digest.hex()}")
        click.echo(f"B: {side_b.label}  {side_b.digest.hex()}")
        if parting is None:
            click.echo(f"identical: both launches measure the same {len(side_a.trace)} pages")
        else:
            ta, tb = (t or "nothing" for t in parting.page_types)
            at = "" if parting.gpa is None else f", GPA {parting.gpa:#x}"
            click.echo(f"the chains part at PAGE_INFO {parting.index} ({ta} in A, {tb} in B{at})")
            click.echo(f"cause: {parting.cause}")
            for line in parting.details:
                click.echo(f"  {line}")
    if parting is not None:
        raise click.exceptions.Exit(3)
