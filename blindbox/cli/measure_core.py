"""``blindbox measure`` without click: the command's work, and a parser for its common form.

:func:`run` is what ``blindbox measure`` does once its options are parsed; it returns the
text to print.  :func:`fast_options` parses the usual invocations (the options that
sev-snp-measure scripts pass, with well-formed values) with the standard library alone,
so that the ``blindbox`` entry point can measure without importing click (~20 ms of a
~60 ms run).  Anything it is not certain to read exactly as click would (an unknown or
repeated option, ``--help``, a value click would convert or refuse, a path click would
normalise) makes it return None, and click parses the command line instead: the same
output, errors and exit statuses either way (tests/measure/test_cli_fast.py).

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any

from measure import __version__
from measure import api
from measure.api import MeasureRequest, MeasureResult
from measure.cpu import CPU_SIGS, cpu_sig, sig_for_type
from measure.errors import InputError
from measure.inputs import read_input
from measure.limits import MAX_VARS_FILE_BYTES
from measure.spec import SevMode
from measure.vmm import VmmType, profile, profile_for

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


def run(verbose, mode, vcpus, vcpu_type, vcpu_sig, vcpu_family, vcpu_model, vcpu_stepping, vmm_type,
        vmm_profile, ovmf, kernel, initrd, append, guest_features, output_format, as_json, snp_ovmf_hash,
        dump_vmsa, svsm, vars_size, vars_file, trace, *, map_out=None, html_out=None) -> str:
    """Compute what ``blindbox measure`` prints (without the final newline).

    ``map_out`` and ``html_out`` (paths) also draw the launch (blindbox.cli.picture); what is
    printed stays the same.
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
    pictures = [(opt, p) for opt, p in (("--map", map_out), ("--html", html_out)) if p is not None]
    if pictures:
        _check_pictures(mode, seed, pictures)
    sig, type_name = _vcpu_sig(sev_mode, vcpu_type, vcpu_sig, vcpu_family, vcpu_model, vcpu_stepping)
    req = MeasureRequest(
        mode=sev_mode, ovmf=ovmf, vcpus=vcpus, vcpu_sig=sig, guest_features=guest_features,
        profile=prof, kernel=kernel, initrd=initrd, append=append, ovmf_hash=seed, svsm=svsm,
        vars_size=vars_size, ovmf_hash_only=ovmf_hash_only, trace=trace or bool(pictures))
    result = api.launch_digest(req)
    if pictures:
        from pathlib import Path

        from blindbox.files import refuse_inputs, write_all_atomic

        from . import picture
        inputs = [("--ovmf", ovmf), ("--kernel", kernel), ("--initrd", initrd)]
        for opt, path in pictures:
            refuse_inputs(Path(path), [(f"input file of {o}", p) for o, p in inputs], opt)
        drawn = {"--map": lambda: picture.render_svg(result), "--html": lambda: picture.render_html(result)}
        write_all_atomic([(path, drawn[opt]().encode()) for opt, path in pictures], what="picture")

    if dump_vmsa and result.measurement is not None:
        from pathlib import Path

        from blindbox.files import refuse_inputs, write_all_atomic
        pages = [(Path(f"vmsa{i}.bin"), page) for i, page in enumerate(result.measurement.vmsas)]
        inputs = [("--ovmf", ovmf), ("--kernel", kernel), ("--initrd", initrd), ("--svsm", svsm),
                  ("--vars-file", vars_file)]
        for path, _ in pages:
            refuse_inputs(path, [(f"input file of {opt}", p) for opt, p in inputs], "--dump-vmsa")
        write_all_atomic(pages, what="VMSA dump")
    if fmt == "json":
        return json.dumps(_json(result, type_name, trace), indent=2)
    if ovmf_hash_only:
        return result.digest.hex()
    text = result.digest.hex() if fmt == "hex" else base64.b64encode(result.digest).decode()
    return f"Calculated {sev_mode.name} guest measurement: {text}" if verbose else text


def _check_pictures(mode: str, seed: bytes | None, pictures: list) -> None:
    """--map and --html draw every page of one SEV-SNP launch."""
    opts = " and ".join(opt for opt, _ in pictures)
    draw = "draw" if len(pictures) > 1 else "draws"
    if mode != "snp":
        raise InputError(f"{opts} {draw} the pages of an SEV-SNP launch; use --mode snp (not {mode}) or drop {opts}.")
    if seed is not None:
        raise InputError(f"{opts} {draw} every measured page, but with --snp-ovmf-hash the firmware pages are not "
                         f"measured here; give the firmware with --ovmf alone.")
    if len(pictures) == 2 and os.path.abspath(pictures[0][1]) == os.path.abspath(pictures[1][1]):
        raise InputError(f"--map and --html name the same file {pictures[0][1]}; give each its own.")


#: Options the fast parser reads: name -> (keyword, kind).  The rest go to click.
_FAST: dict[str, tuple[str, str]] = {
    "-v": ("verbose", "flag"), "--verbose": ("verbose", "flag"),
    "--mode": ("mode", "mode"),
    "--vcpus": ("vcpus", "int"),
    "--vcpu-type": ("vcpu_type", "str"),
    "--vcpu-sig": ("vcpu_sig", "autoint"),
    "--vcpu-family": ("vcpu_family", "int"),
    "--vcpu-model": ("vcpu_model", "int"),
    "--vcpu-stepping": ("vcpu_stepping", "int"),
    "--vmm-type": ("vmm_type", "str"),
    "--vmm-profile": ("vmm_profile", "str"),
    "--ovmf": ("ovmf", "path"),
    "--kernel": ("kernel", "path"),
    "--initrd": ("initrd", "path"),
    "--append": ("append", "str"),
    "--guest-features": ("guest_features", "autoint"),
    "--output-format": ("output_format", "format"),
    "--json": ("as_json", "flag"),
    "--snp-ovmf-hash": ("snp_ovmf_hash", "str"),
    "--trace": ("trace", "flag"),
}
_DEFAULTS: dict[str, Any] = {
    "verbose": False, "mode": None, "vcpus": None, "vcpu_type": None, "vcpu_sig": None, "vcpu_family": None,
    "vcpu_model": None, "vcpu_stepping": None, "vmm_type": "QEMU", "vmm_profile": None, "ovmf": None,
    "kernel": None, "initrd": None, "append": None, "guest_features": 0x1, "output_format": "hex",
    "as_json": False, "snp_ovmf_hash": None, "dump_vmsa": False, "svsm": None, "vars_size": None,
    "vars_file": None, "trace": False,
}
_DECIMAL = re.compile(r"[0-9]+")
_AUTOINT = re.compile(r"0|[1-9][0-9]*|0[xX][0-9a-fA-F]+")


def _plain_path(value: str) -> bool:
    """Whether pathlib gives ``value`` back unchanged (no empty or '.' component, no trailing '/')."""
    parts = value.split("/")
    if value.startswith("/"):
        parts = parts[1:]
    return bool(parts) and all(p not in ("", ".") for p in parts)


def fast_options(args: list[str]) -> dict[str, Any] | None:
    """The keyword arguments of :func:`run` for ``blindbox measure ARGS``, or None to let click parse."""
    out = dict(_DEFAULTS)
    seen: set[str] = set()
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        name, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        spec = _FAST.get(name)
        if spec is None or name in seen:
            return None
        key, kind = spec
        if key in seen:  # -v and --verbose
            return None
        seen.update((name, key))
        if kind == "flag":
            if eq:
                return None
            out[key] = True
            continue
        if eq:
            value = inline
        else:
            if i == len(args):
                return None
            value = args[i]
            i += 1
        if value.startswith("-") or not value.isascii() and kind != "str":
            return None
        if kind == "int":
            if not _DECIMAL.fullmatch(value):
                return None
            out[key] = int(value)
        elif kind == "autoint":
            if not _AUTOINT.fullmatch(value):
                return None
            out[key] = int(value, 0)
        elif kind == "mode":
            if value.lower() not in MODES:
                return None
            out[key] = value.lower()
        elif kind == "format":
            if value not in ("hex", "base64", "json"):
                return None
            out[key] = value
        elif kind == "path":
            if not _plain_path(value) or os.path.isdir(value):
                return None
            out[key] = value
        else:
            out[key] = value
    if out["mode"] is None or out["ovmf"] is None:
        return None
    return out
