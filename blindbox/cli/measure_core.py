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
from measure.vmm import VmmProfile, VmmType, profile, profile_for

MODES = ["sev", "seves", "snp", "snp:ovmf-hash", "snp:svsm"]


def _check_vmm_type(vmm_type: str, prof: VmmProfile) -> None:
    """--vmm-profile names the VMM itself; a --vmm-type other than the default must agree with it."""
    if vmm_type.lower() != "qemu" and VmmType.parse(vmm_type) is not prof.vmm_type:
        raise InputError(f"--vmm-profile {prof.name} is a {prof.vmm_type.value} profile but "
                         f"--vmm-type says {vmm_type}; drop one of them.")


def _seed(snp_ovmf_hash: str | None) -> bytes | None:
    """The bytes of --snp-ovmf-hash, if given."""
    if snp_ovmf_hash is None:
        return None
    try:
        return bytes.fromhex(snp_ovmf_hash)
    except ValueError:
        raise InputError(f"--snp-ovmf-hash {snp_ovmf_hash!r} is not hexadecimal; give the 96 hex "
                         f"digits printed by --mode snp:ovmf-hash.") from None


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
    if any(isinstance(v, Many) for v in (vcpus, vcpu_type, vcpu_sig, guest_features, vmm_type, vmm_profile)):
        asked = [opt for opt, p in (("--map", map_out), ("--html", html_out)) if p is not None]
        if asked:
            raise InputError(f"{' and '.join(asked)} {'draw' if len(asked) > 1 else 'draws'} one launch; give "
                             f"single shape values, not lists, or drop {' and '.join(asked)}.")
        return _run_matrix(verbose, mode, vcpus, vcpu_type, vcpu_sig, vcpu_family, vcpu_model, vcpu_stepping,
                           vmm_type, vmm_profile, ovmf, kernel, initrd, append, guest_features, output_format,
                           as_json, snp_ovmf_hash, dump_vmsa, svsm, vars_size, vars_file, trace)
    mode = mode.lower()
    ovmf_hash_only = mode == "snp:ovmf-hash"
    sev_mode = SevMode.SEV_SNP if ovmf_hash_only else SevMode.parse(mode)
    fmt = "json" if as_json else output_format
    prof = profile(vmm_profile) if vmm_profile else profile_for(VmmType.parse(vmm_type))
    if vmm_profile:
        _check_vmm_type(vmm_type, prof)
    if vars_size is not None and vars_file is not None:
        raise InputError("give --vars-size or --vars-file, not both.")
    if vars_file is not None:
        vars_size = len(read_input(vars_file, "OVMF variable store", limit=MAX_VARS_FILE_BYTES))
    if dump_vmsa and sev_mode is SevMode.SEV:
        raise InputError("--dump-vmsa needs a mode with VMSAs (seves, snp, snp:svsm).")
    if trace and fmt != "json":
        raise InputError("--trace lists pages in JSON; add --output-format json.")
    seed = _seed(snp_ovmf_hash)
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


class Many(str):
    """An option value that lists several values (commas, or a range of vCPU counts): one row each."""


def is_list(value: str, ranges: bool = False) -> bool:
    """Whether ``value`` of a shape option lists several values (click and the fast parser agree)."""
    return "," in value or (ranges and "-" in value.strip()[1:])


def _items(option: str, text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if "" in items:
        raise InputError(f"{option} {text!r} has an empty entry; separate the values with single commas.")
    return items


def _unique(option: str, text: str, values: list[Any], names: list[str] | None = None) -> None:
    seen: set[Any] = set()
    for i, v in enumerate(values):
        if v in seen:
            raise InputError(f"{option} {text!r} lists {(names or values)[i]} twice; give each value once.")
        seen.add(v)


def _counts(text: str) -> list[int]:
    from measure.snp import MAX_VCPUS
    out: list[int] = []
    for item in _items("--vcpus", text):
        m = re.fullmatch(r"([0-9]+)(?:\s*-\s*([0-9]+))?", item)
        if m is None:
            raise InputError(f"--vcpus {text!r}: {item!r} is neither a count nor a range; write counts and "
                             f"ranges such as 1-64, 1,2,4,8 or 1-4,8.")
        lo = int(m[1])
        hi = lo if m[2] is None else int(m[2])
        if hi < lo:
            raise InputError(f"--vcpus {text!r}: the range {item!r} is empty (reversed); write the low end "
                             f"first, as in {hi}-{lo}.")
        if lo < 1 or hi > MAX_VCPUS:
            raise InputError(f"--vcpus {text!r}: {item!r} is out of range; a guest has 1 to {MAX_VCPUS} vCPUs.")
        out.extend(range(lo, hi + 1))
    _unique("--vcpus", text, out)
    return out


def _ints(option: str, value: Any) -> list[int]:
    if not isinstance(value, Many):
        return [value]
    out = []
    for item in _items(option, value):
        try:
            out.append(int(item, 0))
        except ValueError:
            raise InputError(f"{option} {value!r}: {item!r} is not an integer (use decimal or 0x-prefixed "
                             f"hex).") from None
    _unique(option, value, out, [f"{v:#x}" for v in out])
    return out


def _texts(option: str, value: Any) -> list[str]:
    if not isinstance(value, Many):
        return [value]
    return _items(option, value)


def _run_matrix(verbose, mode, vcpus, vcpu_type, vcpu_sig, vcpu_family, vcpu_model, vcpu_stepping, vmm_type,
                vmm_profile, ovmf, kernel, initrd, append, guest_features, output_format, as_json, snp_ovmf_hash,
                dump_vmsa, svsm, vars_size, vars_file, trace) -> str:
    """``blindbox measure`` with lists of shape options: a table (or a JSON array), one row per shape.

    Every option is checked and every list read before anything is hashed; an error names the
    option and the entry, and nothing is printed.
    """
    from measure.matrix import MAX_SHAPES, launch_matrix
    if mode.lower() != "snp":
        raise InputError(f"lists of shape options need --mode snp (one row per SEV-SNP launch); with "
                         f"--mode {mode} give single values.")
    if dump_vmsa:
        raise InputError("--dump-vmsa writes the VMSA pages of one launch; give single shape values with it, "
                         "not lists.")
    fmt = "json" if as_json else output_format
    if trace and fmt != "json":
        raise InputError("--trace lists pages in JSON; add --output-format json.")
    if vcpus is None:
        raise InputError("--vcpus N is required in guest mode 'snp'.")
    counts = _counts(vcpus) if isinstance(vcpus, Many) else [vcpus]
    if vmm_profile is not None:
        if isinstance(vmm_type, Many):
            raise InputError("--vmm-profile fixes the VMM, so --vmm-type cannot be a list with it; list the "
                             "exact profiles in --vmm-profile instead (e.g. --vmm-profile qemu,ec2).")
        listed = _texts("--vmm-profile", vmm_profile)
        profiles = [profile(n) for n in listed]
        for prof in profiles:
            _check_vmm_type(vmm_type, prof)
        vmm_column, vmm_names = "vmm_profile", [p.name for p in profiles]
    else:
        types = [VmmType.parse(t) for t in _texts("--vmm-type", vmm_type)]
        profiles = [profile_for(t) for t in types]
        vmm_column, vmm_names = "vmm_type", [t.value for t in types]
    _unique("--vmm-profile" if vmm_profile is not None else "--vmm-type", str(vmm_profile or vmm_type),
            [p.name for p in profiles], vmm_names)
    if vars_size is not None or vars_file is not None or svsm is not None:
        raise InputError("--svsm, --vars-size and --vars-file only apply to --mode snp:svsm.")
    seed = _seed(snp_ovmf_hash)
    cpus: list[tuple[int | None, str | None]] = []
    if isinstance(vcpu_type, Many):
        for name in _items("--vcpu-type", vcpu_type):
            cpus.append(_vcpu_sig(SevMode.SEV_SNP, name, vcpu_sig, vcpu_family, vcpu_model, vcpu_stepping))
        _unique("--vcpu-type", vcpu_type, [n for _, n in cpus], [str(n) for _, n in cpus])
        cpu_column = "vcpu_type"
    else:
        for sig in _ints("--vcpu-sig", vcpu_sig):
            cpus.append(_vcpu_sig(SevMode.SEV_SNP, vcpu_type, sig, vcpu_family, vcpu_model, vcpu_stepping))
        cpu_column = "vcpu_sig" if isinstance(vcpu_sig, Many) else ""
    features = _ints("--guest-features", guest_features)
    size = len(cpus) * len(profiles) * len(features) * len(counts)
    if size > MAX_SHAPES:
        raise InputError(f"the lists give {size:,} shapes, more than the {MAX_SHAPES:,} one command computes; "
                         f"split the matrix over several commands.")
    shapes = [(sig, f, prof) for sig, _ in cpus for prof in profiles for f in features]
    req = MeasureRequest(mode=SevMode.SEV_SNP, ovmf=ovmf, vcpus=counts[0], kernel=kernel, initrd=initrd,
                         append=append, ovmf_hash=seed, trace=trace)
    results = launch_matrix(req, shapes, counts)
    names: list[str | None] = [name for _, name in cpus for _p in profiles for _f in features for _n in sorted(counts)]
    if fmt == "json":
        return json.dumps([_json(r, name, trace) for r, name in zip(results, names, strict=True)], indent=2)
    columns = [c for c, varies in ((cpu_column, bool(cpu_column)), (vmm_column, len(profiles) > 1),
                                   ("guest_features", len(features) > 1), ("vcpus", len(counts) > 1)) if varies]
    vmm_name = dict(zip((p.name for p in profiles), vmm_names, strict=True))
    table = [columns + ["measurement"]]
    for r, type_name in zip(results, names, strict=True):
        q = r.request
        cells = {"vcpu_type": str(type_name), "vcpu_sig": f"{q.vcpu_sig or 0:#x}", "vmm_type": vmm_name[q.profile.name],
                 "vmm_profile": q.profile.name, "guest_features": f"{q.guest_features:#x}", "vcpus": str(q.vcpus)}
        digest = r.digest.hex() if fmt == "hex" else base64.b64encode(r.digest).decode()
        table.append([cells[c] for c in columns] + [digest])
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join("  ".join([cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)] + [row[-1]])
                     for row in table)


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
    "--vcpu-type": ("vcpu_type", "strs"),
    "--vcpu-sig": ("vcpu_sig", "autoint"),
    "--vcpu-family": ("vcpu_family", "int"),
    "--vcpu-model": ("vcpu_model", "int"),
    "--vcpu-stepping": ("vcpu_stepping", "int"),
    "--vmm-type": ("vmm_type", "strs"),
    "--vmm-profile": ("vmm_profile", "strs"),
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
        if value.startswith("-") or not value.isascii() and kind not in ("str", "strs"):
            return None
        if kind == "int":
            if is_list(value, ranges=True):  # a list or range of counts, read by run() as click passes it
                out[key] = Many(value)
                continue
            if not _DECIMAL.fullmatch(value):
                return None
            out[key] = int(value)
        elif kind == "autoint":
            if is_list(value):
                out[key] = Many(value)
                continue
            if not _AUTOINT.fullmatch(value):
                return None
            out[key] = int(value, 0)
        elif kind == "strs":
            out[key] = Many(value) if is_list(value) else value
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
