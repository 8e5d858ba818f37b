"""Why two SEV-SNP launch digests differ: the first PAGE_INFO where their chains part, and its cause.

Each side is a :class:`Side`: the page trace of one launch (what ``blindbox measure --json
--trace`` writes, or what a bundle's files give for one of its manifest's shapes) with the
parameters that produced it.  :func:`compare` walks both traces and explains the first page
that differs in words: firmware bytes at an offset inside a firmware volume, a page of a
SEV metadata section, the kernel, initrd or command-line hash, a VMSA field (with the
launch parameter that sets it), the number of vCPUs, or the order and addresses of pages.

Only ``blindbox measure-diff`` imports this module.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import InputError
from .inputs import file_digest, read_input
from .kernel_hashes import cmdline_bytes
from .record import field, record
from .spec import BSP_RESET_EIP, PAGE_SIZE
from .vmm import profile
from .vmsa import SaveArea, diff, reset_vmsa
from .volumes import firmware_volumes

#: A measure JSON file with its trace (a 4 MiB firmware gives ~1,100 pages, ~300 KiB).
MAX_TRACE_JSON_BYTES = 64 << 20



@record
class Side:
    """One launch: its page trace and what produced it."""

    label: str                                        # how messages name it, e.g. "A (hello.json)"
    trace: tuple[tuple[str, int, bytes, bytes], ...]  # (page type, GPA, contents digest, digest after)
    digest: bytes
    vcpus: int
    vcpu_sig: int | None
    guest_features: int
    profile: str
    firmware: dict[str, Any]                          # Firmware.describe()
    kernel_hashes: dict[str, str] | None              # kernel, initrd, cmdline: SHA-256 hex
    firmware_data: bytes | None = field(default=None, repr=False)  # the image, when its file is at hand

    @property
    def fw_gpa(self) -> int:
        return int(self.firmware["gpa"], 16)


@record
class Parting:
    """Where two chains part: the PAGE_INFO index (0-based), its GPA, and the cause in words."""

    index: int
    gpa: int | None
    page_types: tuple[str | None, str | None]
    cause: str
    details: tuple[str, ...] = ()


def _need(doc: dict[str, Any], key: str, where: str) -> Any:
    if key not in doc:
        raise InputError(f"{where} has no {key!r} field; it is not what `blindbox measure --json --trace` "
                         f"writes; rerun that command and compare its output.")
    return doc[key]


def side_from_json(path: str | Path, label: str) -> Side:
    """The side that a ``blindbox measure --json --trace`` file describes."""
    where = f"{label} ({path})"
    raw = read_input(path, "measure JSON", limit=MAX_TRACE_JSON_BYTES)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{where} is not JSON; give the output of `blindbox measure --json --trace` or "
                         f"MANIFEST#SHAPE.") from None
    if isinstance(doc, list):
        raise InputError(f"{where} holds {len(doc)} shapes (a matrix); measure one shape with "
                         f"`blindbox measure --json --trace` and compare that.")
    if not isinstance(doc, dict):
        raise InputError(f"{where} is not a `blindbox measure --json` object; rerun with --json --trace.")
    if doc.get("trace") is None:
        raise InputError(f"{where} has no page trace; rerun `blindbox measure` with --json --trace and "
                         f"compare that file.")
    if _need(doc, "mode", where) != "snp":
        raise InputError(f"{where} is a --mode {doc['mode']} measurement; measure-diff compares SEV-SNP "
                         f"launches (--mode snp).")
    if not isinstance(doc["trace"], list) or not doc["trace"]:
        raise InputError(f"{where} has an empty or malformed page trace; rerun `blindbox measure` with --json "
                         f"--trace and compare that file.")
    try:
        trace = tuple((p["page_type"], int(p["gpa"], 16), bytes.fromhex(p["contents"]), bytes.fromhex(p["digest"]))
                      for p in doc["trace"])
        sig = doc.get("vcpu_sig")
        inputs = _need(doc, "inputs", where)
        hashes = None
        if "kernel" in inputs:
            empty = hashlib.sha256(b"").hexdigest()
            hashes = {"kernel": inputs["kernel"]["sha256"], "initrd": inputs.get("initrd", {}).get("sha256", empty),
                      "cmdline": hashlib.sha256(cmdline_bytes(doc.get("append"))).hexdigest()}
        side = Side(label=where, trace=trace, digest=bytes.fromhex(_need(doc, "measurement", where)),
                    vcpus=int(_need(doc, "vcpus", where)), vcpu_sig=None if sig is None else int(sig, 16),
                    guest_features=int(_need(doc, "guest_features", where), 16),
                    profile=_need(doc, "vmm_profile", where)["name"], firmware=_need(doc, "firmware", where),
                    kernel_hashes=hashes)
        int(side.firmware["gpa"], 16), int(side.firmware["size"]), _sections(side)
        reset = side.firmware.get("sev_es_reset_eip")
        if reset is not None:
            int(reset, 16)
        if any(len(p[2]) != 48 or len(p[3]) != 48 or not isinstance(p[0], str) for p in trace):
            raise ValueError("a trace entry")
        if not isinstance(inputs, dict) or not isinstance(inputs.get("ovmf", {}), dict):
            raise ValueError("inputs")
        profile(side.profile)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(f"{where} is not a well-formed `blindbox measure --json --trace` object ({e!r} is "
                         f"missing or malformed); rerun that command and compare its output.") from None
    return _with_firmware(side, inputs.get("ovmf", {}))


def _with_firmware(side: Side, ovmf: dict[str, Any]) -> Side:
    """``side`` with its firmware image, when the file it names is there with the same SHA-256."""
    path = ovmf.get("path")
    if not path or not Path(path).is_file():
        return side
    try:
        if file_digest(path, "firmware").hex() != ovmf.get("sha256"):
            return side
        data = read_input(path, "firmware", limit=64 << 20)
    except InputError:
        return side
    return Side(**{**side.__dict__, "firmware_data": data})


def _sections(side: Side) -> list[tuple[str, int, int]]:
    return [(s["type"], int(s["gpa"], 16), int(s["size"])) for s in side.firmware.get("sev_metadata_sections", [])]


def where_is(side: Side, gpa: int) -> str:
    """The region of ``side``'s launch that holds ``gpa``, in words."""
    if side.fw_gpa <= gpa < side.fw_gpa + int(side.firmware["size"]):
        return f"the firmware image (file offset {gpa - side.fw_gpa:#x})"
    for kind, start, size in _sections(side):
        if start <= gpa < start + size:
            return f"the {kind} metadata section {start:#x}+{size:#x}"
    if gpa == 0xFFFF_FFFF_F000:
        return "the VMSA address"
    return "no region of the firmware's layout"


def _firmware_cause(a: Side, b: Side, gpa: int) -> tuple[str, tuple[str, ...]]:
    page = gpa - a.fw_gpa
    if a.firmware_data is not None and b.firmware_data is not None:
        pa = a.firmware_data[page:page + PAGE_SIZE]
        pb = b.firmware_data[page:page + PAGE_SIZE]
        first = next((i for i in range(min(len(pa), len(pb))) if pa[i] != pb[i]), 0)
        offset = page + first
        exact = f"at file offset {offset:#x}"
        changed = sum(1 for x, y in zip(pa, pb, strict=False) if x != y)
        details: tuple[str, ...] = (f"{changed} of the page's {PAGE_SIZE} bytes differ; first: "
                                    f"{pa[first]:#04x} in A, {pb[first]:#04x} in B",)
    else:
        offset = page
        exact = f"in the page at file offset {offset:#x}"
        details = ("the firmware files are not at hand (or changed since), so the byte is not named; "
                   "run `blindbox measure` on them and compare again",)
    data = a.firmware_data if a.firmware_data is not None else b.firmware_data
    region = "the firmware image"
    if data is not None:
        for v in firmware_volumes(data):
            if v.offset <= offset < v.offset + v.length:
                region = f"firmware volume {v.offset:#x}+{v.length:#x} ({v.kind})"
                break
        else:
            region = "the firmware image, outside its firmware volumes"
    return (f"the firmware bytes differ {exact} (GPA {a.fw_gpa + offset:#x}) inside {region}",
            details + _section_hint(a, b))


def _section_hint(a: Side, b: Side) -> tuple[str, ...]:
    if _sections(a) == _sections(b):
        return ()
    return ("the firmware's SEV metadata sections differ: A "
            + ", ".join(f"{k} {g:#x}+{s:#x}" for k, g, s in _sections(a)) + "; B "
            + ", ".join(f"{k} {g:#x}+{s:#x}" for k, g, s in _sections(b)),)


def _vmsa_cause(a: Side, b: Side, nth: int) -> tuple[str, tuple[str, ...]]:
    """The VMSA of vCPU ``nth`` (0: the bootstrap processor) as each side's parameters give it."""
    def page(side: Side) -> SaveArea:
        reset = side.firmware.get("sev_es_reset_eip")
        eip = BSP_RESET_EIP if nth == 0 or reset is None else int(reset, 16)
        return reset_vmsa(profile(side.profile), eip, side.guest_features, side.vcpu_sig)

    rows = diff(page(a), page(b))

    def fmt(v: object) -> str:
        return v.hex() if isinstance(v, bytes) else f"{v:#x}"

    details = tuple(f"{name:<22} @{off:#06x}  A {fmt(v1)}  B {fmt(v2)}" for name, off, v1, v2 in rows)
    names = {n for n, _, _, _ in rows}
    why = []
    if "rdx" in names:
        why.append(f"rdx holds the vCPU signature ({_sig(a)} in A, {_sig(b)} in B)"
                   if a.profile == b.profile else
                   f"rdx differs between the VMM profiles ({a.profile} in A, {b.profile} in B)")
    if "sev_features" in names:
        why.append(f"sev_features is the guest features ({a.guest_features:#x} in A, {b.guest_features:#x} in B)")
    other = sorted(n for n in names if n not in ("rdx", "sev_features"))
    if other:
        why.append(f"the VMM profiles set {', '.join(other)} differently ({a.profile} in A, {b.profile} in B)")
    who = "the bootstrap processor's" if nth == 0 else f"vCPU {nth}'s"
    if not rows:
        return (f"{who} VMSA page differs, but the parameters the files name give the same VMSA; one file "
                f"was not written by `blindbox measure` for these parameters"), ()
    return f"{who} VMSA differs: {'; '.join(why)}", details


def _sig(side: Side) -> str:
    return "none" if side.vcpu_sig is None else f"{side.vcpu_sig:#x}"


def _hashes_cause(a: Side, b: Side, gpa: int) -> tuple[str, tuple[str, ...]]:
    ha, hb = a.kernel_hashes, b.kernel_hashes
    if ha is None or hb is None:
        return (f"the kernel hashes page at GPA {gpa:#x} differs: "
                f"{'A' if hb is not None else 'B'} measures no kernel"), ()
    wrong = [k for k in ("kernel", "initrd", "cmdline") if ha[k] != hb[k]]
    what = {"kernel": "the kernel hash", "initrd": "the initrd hash", "cmdline": "the cmdline hash"}
    if not wrong:
        return f"the kernel hashes page at GPA {gpa:#x} differs, though both name the same hashes", ()
    return (f"the kernel hashes page at GPA {gpa:#x} differs: {' and '.join(what[k] for k in wrong)} "
            f"{'differs' if len(wrong) == 1 else 'differ'}",
            tuple(f"{k:<8} A {ha[k]}  B {hb[k]}" for k in wrong))


def compare(a: Side, b: Side) -> Parting | None:
    """Where the chains of ``a`` and ``b`` part and why; None when the launches are the same."""
    ta, tb = a.trace, b.trace
    for i, (pa, pb) in enumerate(zip(ta, tb, strict=False)):
        if pa[:3] == pb[:3]:
            if pa[3] != pb[3]:
                return Parting(i, pa[1], (pa[0], pb[0]),
                               "the chains start from different digests (a precomputed --snp-ovmf-hash, or a "
                               "trace that does not start at the firmware)")
            continue
        return _part(a, b, i)
    if len(ta) == len(tb):
        return None if a.digest == b.digest else Parting(
            len(ta), None, (None, None), "the traces agree but the final digests differ; a file was edited")
    return _extra(a, b, len(ta)) if len(ta) > len(tb) else _flip(_extra(b, a, len(tb)))


def _extra(longer: Side, shorter: Side, _n: int) -> Parting:
    i = len(shorter.trace)
    rest = longer.trace[i:]
    page_type, gpa = rest[0][0], rest[0][1]
    if all(p[0] == "VMSA" for p in rest):
        return Parting(i, gpa, (page_type, None),
                       f"the number of vCPUs differs: {longer.vcpus} in {_who(longer)}, {shorter.vcpus} in "
                       f"{_who(shorter)} ({len(rest)} more VMSA page{'s' if len(rest) > 1 else ''})")
    return Parting(i, gpa, (page_type, None),
                   f"{_who(longer)} measures {len(rest)} more pages after {_who(shorter)}'s last, starting with "
                   f"a {page_type} page at GPA {gpa:#x} in {where_is(longer, gpa)}")


def _who(side: Side) -> str:
    return side.label.split(" ", 1)[0]


def _flip(p: Parting) -> Parting:
    return Parting(p.index, p.gpa, (p.page_types[1], p.page_types[0]), p.cause, p.details)


def _part(a: Side, b: Side, i: int) -> Parting:
    (ka, ga, ca, _), (kb, gb, cb, _) = a.trace[i], b.trace[i]
    types = (ka, kb)
    if ga != gb:
        return Parting(i, ga, types,
                       f"the page order or addresses differ: A measures a {ka} page at GPA {ga:#x} in "
                       f"{where_is(a, ga)}, B a {kb} page at GPA {gb:#x} in {where_is(b, gb)}",
                       _layout_hints(a, b))
    if ka != kb:
        return Parting(i, ga, types,
                       f"the page at GPA {ga:#x} in {where_is(a, ga)} is measured as {ka} in A, {kb} in B",
                       _layout_hints(a, b))
    if ka == "VMSA":
        nth = sum(1 for p in a.trace[:i] if p[0] == "VMSA")
        cause, details = _vmsa_cause(a, b, nth)
        return Parting(i, ga, types, cause, details)
    hashes_gpa = [start for kind, start, _ in _sections(a) if kind == "SNP_KERNEL_HASHES"]
    if ka == "NORMAL" and ga in hashes_gpa:
        cause, details = _hashes_cause(a, b, ga)
        return Parting(i, ga, types, cause, details)
    if ka == "NORMAL" and a.fw_gpa <= ga < a.fw_gpa + int(a.firmware["size"]):
        cause, details = _firmware_cause(a, b, ga)
        return Parting(i, ga, types, cause, details)
    return Parting(i, ga, types, f"the {ka} page at GPA {ga:#x} in {where_is(a, ga)} has other contents "
                                 f"({ca.hex()[:16]}... in A, {cb.hex()[:16]}... in B)")


def _layout_hints(a: Side, b: Side) -> tuple[str, ...]:
    out = []
    if a.profile != b.profile:
        out.append(f"the VMM profiles differ ({a.profile} in A, {b.profile} in B): they measure SNP_SEC_MEM "
                   f"and the CPUID page differently")
    if (a.kernel_hashes is None) != (b.kernel_hashes is None):
        out.append(f"{'A' if a.kernel_hashes is None else 'B'} measures no kernel, so its kernel hashes section "
                   f"is ZERO pages")
    for key in ("gpa", "size"):
        if a.firmware.get(key) != b.firmware.get(key):
            out.append(f"the firmware {key} differs ({a.firmware.get(key)} in A, {b.firmware.get(key)} in B)")
    return tuple(out) + _section_hint(a, b)
