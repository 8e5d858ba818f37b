"""Render a page in headless Chromium (Debian's ``chromium``) and read back where its labels landed.

The page is copied with a script that measures ``getBoundingClientRect()`` of every
``<text>`` of the map's SVG and writes the boxes as JSON into a ``<pre>``; Chromium's
``--dump-dom`` prints the document after the script ran.  Nothing is read by OCR.

CI runs as root, where Chromium needs ``--no-sandbox``; every run gets its own profile
directory so parallel test workers do not share one.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

PROBE = """
<pre id="label-boxes"></pre>
<script>
(function () {
  const svg = document.querySelector("svg.measure-map");
  const box = (r) => [r.left, r.top, r.right, r.bottom];
  const out = {viewport: [0, 0, window.innerWidth, window.innerHeight], svg: box(svg.getBoundingClientRect()),
               labels: []};
  for (const t of svg.querySelectorAll("text")) {
    out.labels.push({text: t.textContent, cls: t.getAttribute("class") || "",
                     box: box(t.getBoundingClientRect())});
  }
  document.getElementById("label-boxes").textContent = JSON.stringify(out);
})();
</script>
"""


@dataclass(frozen=True)
class Label:
    text: str
    cls: str
    box: tuple[float, float, float, float]   # left, top, right, bottom (CSS px)


@dataclass(frozen=True)
class Rendered:
    viewport: tuple[float, float, float, float]
    svg: tuple[float, float, float, float]
    labels: list[Label]


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def render(page: str, workdir: Path, *, size: tuple[int, int] = (1600, 2400)) -> Rendered:
    """Load ``page`` (an HTML document with one ``svg.measure-map``) and measure its labels."""
    assert "</body>" in page
    probed = workdir / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    proc = chromium("--dump-dom", "--virtual-time-budget=5000", f"--window-size={size[0]},{size[1]}",
                    probed.as_uri(), profile=workdir / "chromium-profile")
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="label-boxes">(.*?)</pre>', proc.stdout, re.S)
    assert found and found.group(1), f"the probe wrote nothing; chromium said: {proc.stderr[-2000:]}"
    data = json.loads(html.unescape(found.group(1)))
    return Rendered(tuple(data["viewport"]), tuple(data["svg"]),
                    [Label(x["text"], x["cls"], tuple(x["box"])) for x in data["labels"]])


def _inside(inner: tuple[float, ...], outer: tuple[float, ...]) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def problems(r: Rendered) -> list[str]:
    """Every label that is empty, invisible, outside the SVG or the viewport, or overlaps another."""
    out = []
    for lab in r.labels:
        left, top, right, bottom = lab.box
        if not lab.text.strip() or right - left <= 0 or bottom - top <= 0:
            out.append(f"label {lab.text!r} has no visible size {lab.box}")
        if not _inside(lab.box, r.svg):
            out.append(f"label {lab.text!r} {lab.box} is not inside the SVG {r.svg}")
        if not _inside(lab.box, r.viewport):
            out.append(f"label {lab.text!r} {lab.box} is not inside the viewport {r.viewport}")
    for i, a in enumerate(r.labels):
        for b in r.labels[i + 1:]:
            if _overlap(a.box, b.box) > 0:
                out.append(f"labels {a.text!r} {a.box} and {b.text!r} {b.box} overlap")
    return out
