"""``blindbox measure``: a drop-in for ``sev-snp-measure`` with JSON output and VMM profiles.

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import click

from measure import __version__
from measure.api import MeasureRequest, MeasureResult, launch_digest
from measure.cpu import CPU_SIGS, cpu_sig, sig_for_type
from measure.errors import InputError
from measure.inputs import read_input
from blindbox.files import refuse_inputs, write_all_atomic
from measure.limits import MAX_VARS_FILE_BYTES, MAX_VMSA_FILE_BYTES
from measure.spec import SevMode
from measure.vmm import PROFILES, VmmType, profile, profile_for
from measure.vmsa import SaveArea, diff

from .params import AutoInt

MODES = ["sev", "seves", "snp", "snp:ovmf-hash", "snp:svsm"]


def _vcpu_sig(mode: SevMode, vcpu_type, vcpu_sig, family, model, stepping) -> tuple[int | None, str | None]:
    if mode is SevMode.SEV:
        return None, None
    fms = (family, model, stepping)
    given = [name for name, v in (("--vcpu-type", vcpu_type), ("--vcpu-sig", vcpu_sig)) if v is not None]
    if any(v is not None for v in fms):
        given.append("--vcpu-family/--vcpu-model/--vcpu-stepping")
        if any(v is None for v in fms):
            raise InputError("--vcpu-family, --vcpu-model and --vcpu-stepping must be given together.")
    if len(given) > 1:
        raise InputError(f"give the vCPU type one way only, not {' and '.join(given)}.")
    if vcpu_type is not None:
        sig = sig_for_type(vcpu_type)
        return sig, next(n for n in CPU_SIGS if n.lower() == vcpu_type.lower())
    if vcpu_sig is not None:
        return vcpu_sig, None
    if family is not None:
        return cpu_sig(family, model, stepping), None
    return None, None


def _json(result: MeasureResult, vcpu_type: str | None, trace: bool) -> dict[str, Any]:
    req = result.request
    mode = "snp:ovmf-hash" if req.ovmf_hash_only else req.mode.value
    out: dict[str, Any] = {
        "measurement": result.digest.hex(),
        "measurement_base64": base64.b64encode(result.digest).decode(),
        "mode": mode,
        "vcpus": req.vcpus,
        "vcpu_type": vcpu_type,
        "vcpu_sig": None if req.vcpu_sig is None else f"{req.vcpu_sig:#x}",
        "guest_features": f"{req.guest_features:#x}",
        "vmm_type": req.profile.vmm_type.value,
        "vmm_profile": {"name": req.profile.name, "summary": req.profile.summary},
        "append": req.append,
        "snp_ovmf_hash": None if req.ovmf_hash is None else req.ovmf_hash.hex(),
        "vars_size": req.vars_size,
        "inputs": result.inputs,
        "firmware": result.firmware.describe(),
        "pages_measured": None if result.measurement is None else result.measurement.pages,
        "tool": {"name": "blindbox-guest", "version": __version__},
    }
    if trace and result.measurement is not None and result.measurement.log is not None:
        out["trace"] = [{"page_type": t.name, "gpa": f"{gpa:#x}", "contents": c.hex(), "digest": d.hex()}
                        for t, gpa, c, d in result.measurement.log]
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="blindbox measure",
                      message="%(prog)s %(version)s (sev-snp-measure 0.0.13 compatible)")
@click.option("-v", "--verbose", is_flag=True, help="Print 'Calculated <MODE> guest measurement: ...'.")
@click.option("--mode", required=True, type=click.Choice(MODES, case_sensitive=False), help="Guest mode.")
@click.option("--vcpus", type=int, metavar="N", help="Number of guest vCPUs.")
@click.option("--vcpu-type", metavar="CPUTYPE", help=f"Type of guest vCPU ({', '.join(CPU_SIGS)}).")
@click.option("--vcpu-sig", type=AutoInt(), help="Guest vCPU signature value (CPUID Fn0000_0001_EAX).")
@click.option("--vcpu-family", type=int, metavar="FAMILY", help="Guest vCPU family.")
@click.option("--vcpu-model", type=int, metavar="MODEL", help="Guest vCPU model.")
@click.option("--vcpu-stepping", type=int, metavar="STEPPING", help="Guest vCPU stepping.")
@click.option("--vmm-type", default="QEMU", metavar="VMMTYPE",
              help="Type of guest VMM (QEMU, ec2, gce; any case); selects that VMM's current profile.")
@click.option("--vmm-profile", metavar="PROFILE",
              help=f"Exact VMM profile, older ones included ({', '.join(PROFILES)}); overrides --vmm-type.")
@click.option("--ovmf", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="OVMF firmware image.")
@click.option("--kernel", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Kernel for measured direct boot.")
@click.option("--initrd", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Initrd (with --kernel).")
@click.option("--append", metavar="CMDLINE", help="Kernel command line (with --kernel).")
@click.option("--guest-features", type=AutoInt(), default=0x1, show_default="0x1",
              help="SEV_FEATURES of the VMSA (hex), e.g. 0x1 SNPActive, 0x21 SNPActive|DebugSwap.")
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
def measure(verbose, mode, vcpus, vcpu_type, vcpu_sig, vcpu_family, vcpu_model, vcpu_stepping, vmm_type,
            vmm_profile, ovmf, kernel, initrd, append, guest_features, output_format, as_json, snp_ovmf_hash,
            dump_vmsa, svsm, vars_size, vars_file, trace):
    """Calculate the launch measurement of an AMD SEV, SEV-ES or SEV-SNP guest.

    Accepts every option of sev-snp-measure 0.0.13 with the same meaning and prints the
    same line, so switching is a change of program name.
    """
    mode = mode.lower()
    ovmf_hash_only = mode == "snp:ovmf-hash"
    sev_mode = SevMode.SEV_SNP if ovmf_hash_only else SevMode.parse(mode)
    fmt = "json" if as_json else output_format
    prof = profile(vmm_profile) if vmm_profile else profile_for(VmmType.parse(vmm_type))
    if vmm_profile and vmm_type.lower() != "qemu" and VmmType.parse(vmm_type) is not prof.vmm_type:
        raise InputError(f"--vmm-profile {prof.name} is a {prof.vmm_type.value} profile but "
                         f"--vmm-type says {vmm_type}; drop one of them.")
    if vars_size is not None and vars_file is not None:
        raise InputError("give --vars-size or --vars-file, not both.")
    if vars_file is not None:
        vars_size = len(read_input(vars_file, "OVMF variable store", limit=MAX_VARS_FILE_BYTES))
    if dump_vmsa and sev_mode is SevMode.SEV:
        raise InputError("--dump-vmsa needs a mode with VMSAs (seves, snp, snp:svsm).")
    if trace and fmt != "json":
        raise InputError("--trace lists pages in JSON; add --output-format json.")
    seed = None
    if snp_ovmf_hash is not None:
        try:
            seed = bytes.fromhex(snp_ovmf_hash)
        except ValueError:
            raise InputError(f"--snp-ovmf-hash {snp_ovmf_hash!r} is not hexadecimal; give the 96 hex "
                             f"digits printed by --mode snp:ovmf-hash.") from None
    sig, type_name = _vcpu_sig(sev_mode, vcpu_type, vcpu_sig, vcpu_family, vcpu_model, vcpu_stepping)
    req = MeasureRequest(
        mode=sev_mode, ovmf=ovmf, vcpus=vcpus, vcpu_sig=sig, guest_features=guest_features,
        profile=prof, kernel=kernel, initrd=initrd, append=append, ovmf_hash=seed, svsm=svsm,
        vars_size=vars_size, ovmf_hash_only=ovmf_hash_only, trace=trace)
    result = launch_digest(req)

    if dump_vmsa and result.measurement is not None:
        pages = [(Path(f"vmsa{i}.bin"), page) for i, page in enumerate(result.measurement.vmsas)]
        inputs = [("--ovmf", ovmf), ("--kernel", kernel), ("--initrd", initrd), ("--svsm", svsm),
                  ("--vars-file", vars_file)]
        for path, _ in pages:
            refuse_inputs(path, [(f"input file of {opt}", p) for opt, p in inputs], "--dump-vmsa")
        write_all_atomic(pages, what="VMSA dump")
    if fmt == "json":
        click.echo(json.dumps(_json(result, type_name, trace), indent=2))
    elif ovmf_hash_only:
        click.echo(result.digest.hex())
    else:
        text = result.digest.hex() if fmt == "hex" else base64.b64encode(result.digest).decode()
        click.echo(f"Calculated {sev_mode.name} guest measurement: {text}" if verbose else text)


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
