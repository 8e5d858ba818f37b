"""``blindbox explain-report``: why does a report's MEASUREMENT not match the published one?

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from measure.errors import InputError
from measure.inputs import read_input
from measure.kernel_hashes import KernelHashes
from measure.limits import MAX_CMDLINE_FILE_BYTES
from blindbox.audit.limits import MAX_REPORT_FILE_BYTES
from measure.ovmf import Firmware
from blindbox.audit.report import parse_report
from blindbox.audit.search import SearchSpace, feature_combinations, find_launches, published_contradictions

from .params import HexBytes


def _bundle_inputs(bundle: Path) -> tuple[Path, Path, Path | None, bytes, list[dict]]:
    from blindbox.audit.rederive import load_bundle
    doc, roles = load_bundle(bundle)
    cmdline = read_input(roles["cmdline"], "cmdline", limit=MAX_CMDLINE_FILE_BYTES)
    return roles["firmware"], roles["kernel"], roles.get("initrd"), cmdline, list(doc["measurements"])


def _compared(launch, entry: dict) -> list[tuple[str, object, object]]:
    """(what, the launch's value, the published shape's value) for what the search varies."""
    return [("VMM profile", launch.profile.name, entry.get("vmm_profile")),
            ("vCPU count", launch.vcpus, entry.get("vcpus")),
            ("vCPU type", None if launch.vcpu_sig is None else f"{launch.vcpu_sig:#x}", entry.get("vcpu_sig")),
            ("guest features", f"{launch.guest_features:#x}", entry.get("guest_features"))]


def _nearest(launch, published: list[dict]) -> tuple[dict, list[str]] | None:
    best = None
    for entry in published:
        diffs = [name for name, ours, theirs in _compared(launch, entry)
                 if theirs is not None and ours is not None and ours != theirs]
        if not launch.kernel_hashes:
            diffs.append("kernel hashes")
        rank = (len(diffs), abs(launch.vcpus - int(entry.get("vcpus") or 0)))
        if best is None or rank < best[2]:
            best = (entry, diffs, rank)
    return None if best is None else best[:2]


@click.command("explain-report")
@click.argument("report", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--measurement", type=HexBytes(48), metavar="HEX",
              help="The MEASUREMENT to explain (96 hex digits), instead of a REPORT file.")
@click.option("--bundle", type=click.Path(file_okay=False, path_type=Path),
              help="A bundle built by `blindbox build`: its firmware, kernel, initrd, cmdline and shapes.")
@click.option("--ovmf", type=click.Path(dir_okay=False, path_type=Path), help="Firmware (without --bundle).")
@click.option("--kernel", type=click.Path(dir_okay=False, path_type=Path), help="Kernel (without --bundle).")
@click.option("--initrd", type=click.Path(dir_okay=False, path_type=Path), help="Initrd (with --kernel).")
@click.option("--append", help="Kernel command line (with --kernel).")
@click.option("--max-vcpus", type=int, default=256, show_default=True, help="Largest vCPU count to try.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), metavar="HTML",
              help="Also write a self-contained page drawing the launch found, with its differences from the "
                   "nearest published shape highlighted.")
def explain_report(report, measurement, bundle, ovmf, kernel, initrd, append, max_vcpus, as_json, html_out):
    """Find which launch of the given inputs produces a report's MEASUREMENT.

    Tries every VMM profile, vCPU type, common SEV-features combination, vCPU count up to
    --max-vcpus, with and without measured kernel hashes, and names the launch that
    matches and how it differs from the nearest published shape. With --bundle, the
    manifest is checked first (as by `blindbox rederive`'s reader), and a published shape
    whose digest is the measurement but which the search finds produced by another launch
    is flagged as a contradiction. Exit 0 when a launch is found and nothing contradicts,
    3 when none in the search space produces the measurement or the manifest contradicts
    what was found.
    """
    if (report is None) == (measurement is None):
        raise InputError("give a REPORT file or --measurement HEX, exactly one of them.")
    if bundle is not None and any(v is not None for v in (ovmf, kernel, initrd, append)):
        raise InputError("--bundle already names firmware, kernel, initrd and cmdline; drop the others.")
    if bundle is None and ovmf is None:
        raise InputError("give --bundle DIR, or --ovmf (with --kernel/--initrd/--append for a measured boot).")
    if (initrd is not None or append is not None) and kernel is None and bundle is None:
        raise InputError("--initrd and --append describe a measured direct boot and need --kernel.")
    if not 1 <= max_vcpus <= 4096:
        raise InputError(f"--max-vcpus {max_vcpus} is invalid; use 1 to 4096.")
    if report is not None:
        target = parse_report(read_input(report, "attestation report", limit=MAX_REPORT_FILE_BYTES),
                              what=str(report)).measurement
    else:
        target = measurement
    published: list[dict] = []
    if bundle is not None:
        ovmf, kernel, initrd, cmdline, published = _bundle_inputs(bundle)
        append = cmdline
    if html_out is not None:
        from blindbox.files import refuse_inputs
        refuse_inputs(html_out, [("report", report), ("firmware", ovmf), ("kernel", kernel), ("initrd", initrd),
                                 ("manifest", None if bundle is None else bundle / "manifest.json")], "--html")
    hashes = KernelHashes.from_files(kernel, initrd, append) if kernel is not None else None
    space = SearchSpace(max_vcpus=max_vcpus)
    result = find_launches(Firmware.load(ovmf), target, hashes, space)
    published_hit = [e["shape"] for e in published if e.get("measurement") == target.hex()]
    contradictions = published_contradictions(result, target, published, space)

    if as_json:
        click.echo(json.dumps({
            "measurement": target.hex(),
            "published_shapes": published_hit,
            "contradictions": [{"shape": c.shape, "published": c.published, "description": c.describe()}
                               for c in contradictions],
            "found": [{"vmm_profile": f.profile.name, "vcpus": f.vcpus,
                       "vcpu_sig": None if f.vcpu_sig is None else f"{f.vcpu_sig:#x}",
                       "guest_features": f"{f.guest_features:#x}", "kernel_hashes": f.kernel_hashes,
                       "description": f.describe()} for f in result.found],
            "searched": {"launches": result.tried, "seconds": round(result.seconds, 3),
                         "profiles": [p.name for p in space.profiles], "max_vcpus": max_vcpus,
                         "guest_features": [f"{v:#x}" for v in feature_combinations()]},
        }, indent=2))
    else:
        click.echo(f"MEASUREMENT {target.hex()}")
        if published_hit:
            click.echo(f"  is published in the bundle's manifest for {', '.join(published_hit)}")
        if result.found:
            for f in result.found:
                click.echo(f"  is produced by: {f.describe()}")
                if published and not published_hit:
                    near = _nearest(f, published)
                    if near:
                        click.echo(f"  not a published shape; nearest published: {near[0]['shape']} "
                                   f"(differs in {', '.join(near[1]) or 'nothing the search varies'})")
        else:
            click.echo("  no launch of these inputs in the search space produces it: the firmware, kernel, "
                       "initrd or command line differ from the ones given, or the VMM launched a shape "
                       "outside the search space (see --json for what was searched).")
        for c in contradictions:
            click.echo(f"  CONTRADICTION: {c.describe()}")
        click.echo(f"  ({result.tried:,} launches tried in {result.seconds:.1f} s)")
    if html_out is not None:
        if result.found:
            _write_page(html_out, target, result.found[0], ovmf, kernel, initrd, append, published, published_hit)
        else:
            click.echo(f"blindbox: {html_out} not written: no launch of these inputs produces the measurement, "
                       f"so there is nothing to draw.", err=True)
    if contradictions:
        click.echo(f"blindbox: error: {contradictions[0].describe()}.", err=True)
    if not result.found or contradictions:
        raise click.exceptions.Exit(3)


def _write_page(out: Path, target: bytes, launch, ovmf, kernel, initrd, append, published: list[dict],
                published_hit: list[str]) -> None:
    """The page of ``blindbox measure --html`` for ``launch``, with its differences from the nearest
    published shape."""
    from blindbox.files import write_atomic
    from measure.api import MeasureRequest, launch_digest
    from measure.spec import SevMode

    from . import picture

    measured = launch.kernel_hashes
    result = launch_digest(MeasureRequest(
        mode=SevMode.SEV_SNP, ovmf=ovmf, vcpus=launch.vcpus, vcpu_sig=launch.vcpu_sig,
        guest_features=launch.guest_features, profile=launch.profile, kernel=kernel if measured else None,
        initrd=initrd if measured else None, append=append if measured else None, trace=True))
    if result.digest != target:
        raise AssertionError(f"the launch found ({launch.describe()}) measures {result.digest.hex()}")
    intro = f"Produced by: {launch.describe()}."
    differences = nearest_shape = None
    highlight: dict[str, str] = {}
    if published_hit:
        intro += f" Published in the bundle's manifest for {', '.join(published_hit)}."
    elif published:
        near = _nearest(launch, published)
        if near is not None:
            entry, diffs = near
            nearest_shape = str(entry.get("shape"))
            rows = [(name, str(ours), str(theirs)) for name, ours, theirs in _compared(launch, entry)
                    if name in diffs]
            if "kernel hashes" in diffs:
                rows.append(("kernel hashes", "not measured (the hashes page is ZERO)", "measured"))
            differences = rows
            for name in diffs:
                kinds = {"kernel hashes": [picture.KERNEL_HASHES],
                         "VMM profile": [picture.VMSA, picture.METADATA]}.get(name, [picture.VMSA])
                for kind in kinds:
                    highlight[kind] = f"{highlight[kind]}, {name}" if kind in highlight else name
    write_atomic(out, picture.render_html(result, heading="The launch behind a MEASUREMENT", intro=intro,
                                          differences=differences, nearest=nearest_shape,
                                          highlight=highlight).encode(), what="HTML page")


@click.command("rederive")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def rederive_cmd(bundle, as_json):
    """Re-derive every value BUNDLE's manifest.json publishes, from the bundle's own files.

    Checks the manifest against its schema and itself, each file's sha256 and size, the
    firmware facts and OVMF hash, the cmdline, the kernel hashes, the launch digest of
    every published shape, the ID blocks and key digests, what launch-snp.sh
    launches, and provenance.intoto.json (the in-toto statement of the manifest),
    with the auditor and calculator alone (no builder code). Exit 0 when all agree, 3 when anything
    differs or the manifest states something false (naming the field), 2 when BUNDLE has
    no readable blindbox manifest or it holds a malformed value (naming the field).
    """
    from blindbox.audit.rederive import manifest_sha256, rederive

    findings = rederive(bundle)
    if as_json:
        click.echo(json.dumps({"manifest_sha256": manifest_sha256(bundle),
                               "ok": all(f.ok for f in findings),
                               "findings": [{"name": f.name, "ok": f.ok, "detail": f.detail} for f in findings]},
                              indent=2))
    else:
        for f in findings:
            click.echo(f"  {'PASS' if f.ok else 'FAIL'}  {f.name:<34} {f.detail}")
        bad = sum(not f.ok for f in findings)
        click.echo(f"verdict: {'PASS' if not bad else 'FAIL'} ({len(findings) - bad} agree, {bad} differ)")
    if not all(f.ok for f in findings):
        raise click.exceptions.Exit(3)
