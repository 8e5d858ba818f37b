"""``blindbox measure``: a drop-in for ``sev-snp-measure`` with JSON output and VMM profiles.

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from measure import __version__
from measure.cpu import CPU_SIGS
from measure.inputs import read_input
from measure.limits import MAX_VMSA_FILE_BYTES
from measure.vmm import PROFILES
from measure.vmsa import SaveArea, diff

from .measure_core import MODES, Many, is_list, run
from .params import AutoInt


class _Listable(click.ParamType):
    """One value of ``inner``, or (with a comma, or a range where allowed) a list that run() reads."""

    def __init__(self, inner: click.ParamType, *, ranges: bool = False):
        self.inner, self.ranges, self.name = inner, ranges, inner.name

    def convert(self, value, param, ctx):
        if isinstance(value, str) and is_list(value, self.ranges):
            return Many(value)
        return self.inner.convert(value, param, ctx)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="blindbox measure",
                      message="%(prog)s %(version)s (sev-snp-measure 0.0.13 compatible)")
@click.option("-v", "--verbose", is_flag=True, help="Print 'Calculated <MODE> guest measurement: ...'.")
@click.option("--mode", required=True, type=click.Choice(MODES, case_sensitive=False), help="Guest mode.")
@click.option("--vcpus", type=_Listable(click.INT, ranges=True), metavar="N",
              help="Number of guest vCPUs; a list or ranges (1-64, 1,2,4,8) give one row per count.")
@click.option("--vcpu-type", type=_Listable(click.STRING), metavar="CPUTYPE",
              help=f"Type of guest vCPU ({', '.join(CPU_SIGS)}); a comma list gives one row per type.")
@click.option("--vcpu-sig", type=_Listable(AutoInt()),
              help="Guest vCPU signature value (CPUID Fn0000_0001_EAX); a comma list gives one row each.")
@click.option("--vcpu-family", type=int, metavar="FAMILY", help="Guest vCPU family.")
@click.option("--vcpu-model", type=int, metavar="MODEL", help="Guest vCPU model.")
@click.option("--vcpu-stepping", type=int, metavar="STEPPING", help="Guest vCPU stepping.")
@click.option("--vmm-type", default="QEMU", type=_Listable(click.STRING), metavar="VMMTYPE",
              help="Type of guest VMM (QEMU, ec2, gce; any case); selects that VMM's current profile. "
                   "A comma list gives one row per VMM.")
@click.option("--vmm-profile", type=_Listable(click.STRING), metavar="PROFILE",
              help=f"Exact VMM profile, older ones included ({', '.join(PROFILES)}); overrides --vmm-type. "
                   f"A comma list gives one row per profile; a --vmm-type list with it is refused.")
@click.option("--ovmf", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="OVMF firmware image.")
@click.option("--kernel", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Kernel for measured direct boot.")
@click.option("--initrd", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Initrd (with --kernel).")
@click.option("--append", metavar="CMDLINE", help="Kernel command line (with --kernel).")
@click.option("--guest-features", type=_Listable(AutoInt()), default=0x1, show_default="0x1",
              help="SEV_FEATURES of the VMSA (hex), e.g. 0x1 SNPActive, 0x21 SNPActive|DebugSwap; "
                   "a comma list gives one row each.")
@click.option("--output-format", type=click.Choice(["hex", "base64", "json"]), default="hex",
              help="hex and base64 print what sev-snp-measure prints; json adds every parameter.")
@click.option("--json", "as_json", is_flag=True, help="Same as --output-format json.")
@click.option("--snp-ovmf-hash", metavar="HASH", help="Precalculated digest of the OVMF pages (96 hex digits).")
@click.option("--dump-vmsa", is_flag=True, help="Write the measured VMSA pages to vmsa<N>.bin.")
@click.option("--svsm", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="SVSM binary (snp:svsm mode).")
@click.option("--vars-size", type=AutoInt(), metavar="SIZE", help="Size of OVMF_VARS in bytes (snp:svsm).")
@click.option("--vars-file", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="OVMF_VARS file (snp:svsm; conflicts with --vars-size).")
@click.option("--trace", is_flag=True, help="With JSON output: list every PAGE_INFO folded into the digest.")
@click.option("--map", "map_out", type=click.Path(dir_okay=False, path_type=Path), metavar="SVG",
              help="Also draw the measured guest-physical layout into this SVG file (--mode snp).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), metavar="HTML",
              help="Also write a self-contained page: map, measured ranges, inputs, parameters (--mode snp).")
def measure(verbose, mode, vcpus, vcpu_type, vcpu_sig, vcpu_family, vcpu_model, vcpu_stepping, vmm_type,
            vmm_profile, ovmf, kernel, initrd, append, guest_features, output_format, as_json, snp_ovmf_hash,
            dump_vmsa, svsm, vars_size, vars_file, trace, map_out, html_out):
    """Calculate the launch measurement of an AMD SEV, SEV-ES or SEV-SNP guest.

    Accepts every option of sev-snp-measure 0.0.13 with the same meaning and prints the
    same line, so switching is a change of program name.

    Lists in --vcpus, --vcpu-type, --vcpu-sig, --vmm-type, --vmm-profile and --guest-features
    (--mode snp) measure every combination: one table row, or with --json one object, per shape.
    """
    click.echo(run(verbose, mode, vcpus, vcpu_type, vcpu_sig, vcpu_family, vcpu_model, vcpu_stepping, vmm_type,
                   vmm_profile, ovmf, kernel, initrd, append, guest_features, output_format, as_json,
                   snp_ovmf_hash, dump_vmsa, svsm, vars_size, vars_file, trace, map_out=map_out, html_out=html_out))


@click.command("explain-vmsa")
@click.argument("expected", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("actual", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def explain_vmsa(expected, actual, as_json):
    """Compare two VMSA pages field by field, with save-area names and offsets.

    EXPECTED and ACTUAL are 4096-byte VMSA pages, such as the vmsa<N>.bin files that
    --dump-vmsa writes. Exit 0 when identical, 3 when they differ.
    """
    a = SaveArea.from_bytes(read_input(expected, "VMSA", limit=MAX_VMSA_FILE_BYTES), what=str(expected))
    b = SaveArea.from_bytes(read_input(actual, "VMSA", limit=MAX_VMSA_FILE_BYTES), what=str(actual))
    rows = diff(a, b)
    if as_json:
        click.echo(json.dumps([{"field": n, "offset": f"{o:#x}",
                                "expected": v1.hex() if isinstance(v1, bytes) else f"{v1:#x}",
                                "actual": v2.hex() if isinstance(v2, bytes) else f"{v2:#x}"}
                               for n, o, v1, v2 in rows], indent=2))
    elif not rows:
        click.echo("identical")

    def fmt(v):
        return v.hex() if isinstance(v, bytes) else f"{v:#x}"

    for name, off, v1, v2 in ([] if as_json else rows):
        click.echo(f"{name:<22} @{off:#06x}  expected {fmt(v1)}  actual {fmt(v2)}")
    if rows:
        raise click.exceptions.Exit(3)
