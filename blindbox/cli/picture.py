"""A picture of what was measured: an SVG map of the guest-physical layout and an HTML page.

:func:`bands` turns a traced :class:`~measure.api.MeasureResult` (every PAGE_INFO folded into
the digest: page type, GPA, contents digest) and its firmware (volumes, SEV metadata sections,
the kernel-hashes page) into coalesced ranges; :func:`render_svg` draws them as bands along
the GPA axis (low addresses at the top; gaps compressed to a marked strip; every band at least
one text line high, so a one-page section and each VMSA stay visible), coloured by page type
and labelled; :func:`render_html` puts the map, the table of ranges, the inputs and the
parameters on one self-contained page.  Same inputs, same bytes: nothing here reads a clock,
a host name or a locale.

Imported only by ``blindbox measure --map/--html`` and ``blindbox explain-report --html``:
plain ``blindbox measure`` never loads it (tests/measure/test_cli_fast.py).

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from __future__ import annotations

import bisect
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from measure import volumes
from measure.api import MeasureResult
from measure.cpu import CPU_SIGS
from measure.ovmf import Firmware
from measure.spec import PAGE_SIZE, PageType, SectionType

#: More VMSAs than this are drawn as one band labelled with their count.
VMSA_BANDS_MAX = 8

#: Fill colour of each page type (the legend shows them in this order).
COLOURS = {
    "NORMAL": "#4e79a7",
    "ZERO": "#bab0ac",
    "UNMEASURED": "#f1ce63",
    "SECRETS": "#b07aa1",
    "CPUID": "#59a14f",
    "VMSA": "#e15759",
}
HIGHLIGHT = "#d62728"

#: Band kinds a difference between two launches can touch.
FIRMWARE, METADATA, KERNEL_HASHES, VMSA = "firmware", "metadata", "kernel-hashes", "vmsa"


@dataclass(frozen=True)
class Region:
    start: int
    end: int      # exclusive
    name: str
    kind: str


def firmware_volumes(fw: Firmware) -> list[Region]:
    """The firmware volumes of ``fw`` (measure.volumes), as named GPA ranges."""
    out = []
    for v in volumes.firmware_volumes(fw.data):
        fs = v.file_system or "firmware volume"
        name = v.name or (fs if fs == "NV variable store" else f"{fs} volume at +{v.offset:#x}")
        out.append(Region(fw.gpa + v.offset, fw.gpa + v.offset + v.length, name, FIRMWARE))
    return out


def _section_regions(fw: Firmware) -> list[Region]:
    out = []
    for s in fw.sections:
        if s.section_type == SectionType.SNP_KERNEL_HASHES:
            table = fw.hashes_table()
            where = f" (table at {table.gpa:#x})" if table is not None else ""
            out.append(Region(s.gpa, s.gpa + s.size, f"kernel hashes page{where}", KERNEL_HASHES))
        else:
            out.append(Region(s.gpa, s.gpa + s.size, s.section_type.name, METADATA))
    return sorted(out, key=lambda r: r.start)


def _find(regions: list[Region], starts: list[int], gpa: int) -> Region | None:
    i = bisect.bisect_right(starts, gpa) - 1
    return regions[i] if i >= 0 and regions[i].start <= gpa < regions[i].end else None


@dataclass(frozen=True)
class Band:
    """Consecutive measured pages of one type and region: one band on the map, one table row."""

    start: int          # GPA of the first page
    end: int            # GPA after the last page (a VMSA band: its page's end)
    page_type: str
    region: str
    kind: str
    pages: int
    first: int          # position of the first page in the measurement (0-based)


def bands(result: MeasureResult) -> list[Band]:
    """The coalesced ranges of ``result``'s trace, ordered by GPA (then by measurement order)."""
    m = result.measurement
    if m is None or m.log is None:
        raise AssertionError("a picture needs a traced SNP measurement")
    fw = result.firmware
    fw_pages = fw.size // PAGE_SIZE if result.request.ovmf_hash is None else 0
    volumes = firmware_volumes(fw)
    sections = _section_regions(fw)
    vstarts, sstarts = [r.start for r in volumes], [r.start for r in sections]
    out: list[Band] = []
    vmsa = 0
    for i, (ptype, gpa, _contents, _digest) in enumerate(m.log):
        name = PageType(ptype).name
        if ptype == PageType.VMSA:
            out.append(Band(gpa, gpa + PAGE_SIZE, name, f"VMSA vCPU{vmsa}", VMSA, 1, i))
            vmsa += 1
            continue
        if i < fw_pages:
            region = _find(volumes, vstarts, gpa) or Region(gpa, gpa + PAGE_SIZE, "firmware image", FIRMWARE)
        else:
            region = _find(sections, sstarts, gpa) or Region(gpa, gpa + PAGE_SIZE, "other page", METADATA)
        last = out[-1] if out else None
        if last is not None and last.kind != VMSA and last.end == gpa and last.page_type == name \
                and last.region == region.name and last.first + last.pages == i:
            out[-1] = replace(last, end=gpa + PAGE_SIZE, pages=last.pages + 1)
        else:
            out.append(Band(gpa, gpa + PAGE_SIZE, name, region.name, region.kind, 1, i))
    vmsas = [b for b in out if b.kind == VMSA]
    if len(vmsas) > VMSA_BANDS_MAX:
        first = vmsas[0]
        merged = replace(first, region=f"VMSA vCPU0..{len(vmsas) - 1} ({len(vmsas)} VMSAs)", pages=len(vmsas))
        out = [b for b in out if b.kind != VMSA] + [merged]
    return sorted(out, key=lambda b: (b.start, b.first))


# -- parameters and inputs ------------------------------------------------------------------

def _cpu(sig: int | None) -> str | None:
    names = [n for n, s in CPU_SIGS.items() if s == sig]
    return None if sig is None else (f"{names[0]} ({sig:#x})" if names else f"{sig:#x}")


def parameters(result: MeasureResult) -> list[tuple[str, str]]:
    """What the launch was, as (name, value) rows."""
    req = result.request
    cpu = _cpu(req.vcpu_sig) or "not used by this VMM"
    m = result.measurement
    append = req.append.decode("utf-8", "replace") if isinstance(req.append, bytes) else req.append
    rows = [
        ("mode", req.mode.value),
        ("vCPUs", str(req.vcpus)),
        ("vCPU type", cpu),
        ("guest features", f"{req.guest_features:#x}"),
        ("VMM profile", f"{req.profile.name} ({req.profile.summary})"),
        ("kernel hashes", "measured" if req.kernel is not None else "not measured (the hashes page is ZERO)"),
        ("kernel command line", "(none)" if append is None else repr(append)),
        ("pages measured", "?" if m is None else f"{m.pages:,}"),
    ]
    return rows


def _title(result: MeasureResult) -> str:
    req = result.request
    cpu = _cpu(req.vcpu_sig)
    return (f"{req.mode.value} · {req.vcpus} vCPU(s){f' of {cpu}' if cpu else ''} · "
            f"guest features {req.guest_features:#x} · "
            f"VMM profile {req.profile.name}")


# -- SVG ------------------------------------------------------------------------------------

FONT = 12           # px, labels
SMALL = 11          # px, addresses and gap marks
CHAR = 0.62         # advance of a monospace character, in em (DejaVu Sans Mono: 0.602)
MIN_BAND = 22       # px: every band is at least one label line high
GAP = 18            # px: a compressed gap
SCALE_HEIGHT = 560  # px shared by all bands in proportion to their pages
PAD = 16


def _w(text: str, size: int = FONT) -> float:
    return len(text) * size * CHAR


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _size(nbytes: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            value = nbytes / (1 << shift)
            return f"{value:.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{nbytes} bytes"


def _band_label(b: Band, differs: str | None) -> str:
    text = f"{b.region} · {b.page_type} · {b.pages:,} page{'s' if b.pages != 1 else ''}"
    return text + (f" · differs: {differs}" if differs else "")


def render_svg(result: MeasureResult, *, highlight: Mapping[str, str] | None = None) -> str:
    """The map as a standalone SVG document.

    ``highlight`` maps band kinds (:data:`VMSA`, :data:`METADATA`, :data:`KERNEL_HASHES`,
    :data:`FIRMWARE`) to the words saying what differs there; those bands get a red outline.
    """
    highlight = dict(highlight or {})
    rows = bands(result)
    total = sum(b.pages for b in rows) or 1
    digest = result.digest.hex()
    title = "SEV-SNP launch digest (MEASUREMENT)"
    subtitle = _title(result) + f" · {total:,} pages measured"

    addr_w = _w("0x" + "f" * 12 + "–0x" + "f" * 12, SMALL)
    bar_x = PAD + addr_w + 12
    bar_w = 150
    label_x = bar_x + bar_w + 14
    labels = [_band_label(b, highlight.get(b.kind)) for b in rows]
    legend_items = [(name, colour) for name, colour in COLOURS.items()]
    legend_w = sum(16 + 6 + _w(n) + 22 for n, _ in legend_items)
    width = int(max(label_x + max((_w(t) for t in labels), default=0), PAD + _w(digest, FONT + 1),
                    PAD + _w(subtitle), PAD + legend_w, PAD + _w(title, FONT + 4)) + PAD)

    out: list[str] = []
    y = PAD
    body: list[str] = []
    # title, digest, parameters
    y += FONT + 4
    body.append(f'<text class="label title" x="{PAD}" y="{y}" font-size="{FONT + 4}" font-weight="bold">'
                f'{_e(title)}</text>')
    y += FONT + 9
    body.append(f'<text class="label digest" x="{PAD}" y="{y}" font-size="{FONT + 1}">{_e(digest)}</text>')
    y += FONT + 8
    body.append(f'<text class="label params" x="{PAD}" y="{y}" font-size="{FONT}">{_e(subtitle)}</text>')
    # legend
    y += 14
    x = float(PAD)
    for name, colour in legend_items:
        body.append(f'<rect class="legend-swatch" x="{x:.1f}" y="{y}" width="16" height="14" fill="{colour}" '
                    f'stroke="#333" stroke-width="0.5"/>')
        body.append(f'<text class="label legend" x="{x + 22:.1f}" y="{y + 11}" font-size="{FONT}">'
                    f'{_e(name)}</text>')
        x += 16 + 6 + _w(name) + 22
    y += 14 + 14

    prev: Band | None = None
    for b, label in zip(rows, labels, strict=True):
        if prev is not None and b.start > prev.end:
            gap = b.start - prev.end
            mid = y + GAP / 2
            body.append(f'<g class="gap" data-bytes="{gap}"><title>{_e(f"not measured: {gap:#x} bytes")}</title>'
                        f'<line x1="{bar_x:.1f}" y1="{mid - 3:.1f}" x2="{bar_x + bar_w:.1f}" y2="{mid + 3:.1f}" '
                        f'stroke="#777" stroke-dasharray="4 3"/>'
                        f'<text class="label gap-label" x="{label_x:.1f}" y="{mid + 4:.1f}" font-size="{SMALL}" '
                        f'fill="#666">{_e(f"gap of {_size(gap)}, not measured")}</text></g>')
            y += GAP
        h = max(MIN_BAND, round(SCALE_HEIGHT * b.pages / total)) if b.kind != VMSA else MIN_BAND
        mark = b.kind in highlight
        stroke = f'stroke="{HIGHLIGHT}" stroke-width="3"' if mark else 'stroke="#fff" stroke-width="1"'
        emphasis = f' fill="{HIGHLIGHT}" font-weight="bold"' if mark else ""
        last = b.end - 1
        addr = f"{b.start:#x}–{last:#x}"
        body.append(
            f'<g class="band{" differs" if mark else ""}" data-gpa="{b.start:#x}" data-end="{b.end:#x}" '
            f'data-type="{b.page_type}" data-region="{_e(b.region)}" data-pages="{b.pages}" '
            f'data-first="{b.first}">'
            f'<title>{_e(f"{addr}: {b.region}, {b.pages:,} {b.page_type} page(s), measured from page {b.first}")}'
            f'</title>'
            f'<rect x="{bar_x:.1f}" y="{y}" width="{bar_w}" height="{h}" fill="{COLOURS[b.page_type]}" {stroke}/>'
            f'<text class="label addr" x="{PAD}" y="{y + h / 2 + 4:.1f}" font-size="{SMALL}">{_e(addr)}</text>'
            f'<text class="label region" x="{label_x:.1f}" y="{y + h / 2 + 4:.1f}" font-size="{FONT}"{emphasis}>'
            f'{_e(label)}</text></g>')
        y += h
        prev = b
    height = int(y + PAD)
    out.append(f'<svg xmlns="http://www.w3.org/2000/svg" class="measure-map" width="{width}" height="{height}" '
               f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans Mono, Liberation Mono, monospace" '
               f'role="img" aria-label="{_e(f"guest-physical pages measured into {digest}")}">')
    out.append(f'<title>{_e(f"{title} {digest}")}</title>')
    out.append(f'<rect width="{width}" height="{height}" fill="#fff"/>')
    out.extend(body)
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- HTML -----------------------------------------------------------------------------------

_CSS = """
body { font-family: "DejaVu Sans", "Liberation Sans", sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px 0; }
h2 { font-size: 16px; margin: 22px 0 6px 0; }
code, td.mono { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; }
p.digest code { font-size: 14px; word-break: break-all; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; }
tr.total td { font-weight: bold; }
section.differences { border: 2px solid #d62728; background: #fdecea; padding: 8px 12px; margin: 12px 0; }
tr.differs td { color: #d62728; font-weight: bold; }
table.ranges tr.differs td { background: #fdecea; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: -1px;
          border: 1px solid #333; }
figure { margin: 16px 0; }
"""


def _cls(names: str) -> str:
    return f' class="{names}"' if names else ""


def _table(head: Sequence[str] | None, rows: Sequence[Sequence[str]], *, cls: str = "",
           mono: Sequence[int] = (), num: Sequence[int] = (), row_cls: Sequence[str] | None = None) -> str:
    """A table of already escaped cells; ``head`` (plain text) may be None."""
    out = [f"<table{_cls(cls)}>"]
    if head is not None:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>")
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            classes = " ".join(c for c, on in (("mono", j in mono), ("num", j in num)) if on)
            cells.append(f"<td{_cls(classes)}>{cell}</td>")
        out.append(f"<tr{_cls(row_cls[i] if row_cls else '')}>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def render_html(result: MeasureResult, *, heading: str = "SEV-SNP launch measurement",
                intro: str | None = None,
                differences: Sequence[tuple[str, str, str]] | None = None,
                nearest: str | None = None,
                highlight: Mapping[str, str] | None = None) -> str:
    """One self-contained page (inline CSS and SVG, no script, nothing fetched): the map, the
    differences from ``nearest`` (rows of (what, this launch, nearest)), the parameters, the
    inputs and the measured ranges."""
    digest = result.digest.hex()
    rows = bands(result)
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{_e(f'{heading} {digest[:16]}…')}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             f"<h1>{_e(heading)}</h1>", f'<p class="digest">MEASUREMENT <code>{_e(digest)}</code></p>']
    if intro:
        parts.append(f'<p class="intro">{_e(intro)}</p>')
    if differences is not None:
        parts.append('<section class="differences">')
        parts.append(f"<h2>{_e(f'Differences from the nearest published shape, {nearest}')}</h2>")
        if differences:
            parts.append(_table(["", "this launch", f"published {nearest}"],
                                [[_e(a), _e(b), _e(c)] for a, b, c in differences], cls="diff", mono=(1, 2),
                                row_cls=["differs"] * len(differences)))
        else:
            parts.append("<p>none of the parameters the search varies differ.</p>")
        parts.append("</section>")
    parts.append("<figure>")
    parts.append(render_svg(result, highlight=highlight).rstrip("\n"))
    parts.append("</figure>")
    parts.append("<h2>Parameters</h2>")
    parts.append(_table(None, [[_e(a), _e(b)] for a, b in parameters(result)], cls="params", mono=(1,)))
    parts.append("<h2>Inputs</h2>")
    parts.append(_table(["input", "file", "sha256", "bytes"],
                        [[_e(k), _e(str(v.get("path", ""))), _e(str(v.get("sha256", ""))), f"{v.get('size', 0):,}"]
                         for k, v in result.inputs.items()], cls="inputs", mono=(1, 2), num=(3,)))
    parts.append("<h2>Measured ranges</h2>")
    total = sum(b.pages for b in rows)
    table_rows = [[_e(f"{b.start:#x}–{b.end - 1:#x}"),
                   f'<span class="swatch" style="background:{COLOURS[b.page_type]}"></span>{_e(b.page_type)}',
                   _e(b.region), f"{b.pages:,}"] for b in rows]
    table_rows.append(["", "", "total", f"{total:,}"])
    row_cls = ["differs" if b.kind in (highlight or {}) else "" for b in rows] + ["total"]
    parts.append(_table(["GPA range", "page type", "region", "pages"], table_rows, cls="ranges", mono=(0,),
                        num=(3,), row_cls=row_cls))
    parts.append("</body>")
    parts.append("</html>")
    return "\n".join(parts) + "\n"
