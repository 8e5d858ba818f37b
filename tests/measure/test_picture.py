"""The measure map (blindbox.cli.picture): the SVG and HTML it writes, and the --map/--html options.

Rendering in a browser is tests/measure/test_picture_render.py; these read the files as XML
and HTML and check them against the trace of the measurement they draw.
"""

from __future__ import annotations

import html
import html.parser
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from blindbox.cli import main, picture
from measure.api import MeasureRequest, launch_digest
from measure.cpu import CPU_SIGS
from measure.ovmf import Firmware
from measure.spec import PAGE_SIZE, SevMode
from measure.vmm import profile
from measure.volumes import VolumeHeader
from tests.conftest import VECTORS

AMDSEV = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"
SVG = "{http://www.w3.org/2000/svg}"


def measured(tmp_path: Path, vcpus: int = 3, *, kernel: bool = True, ovmf: Path = AMDSEV, name: str = "bzImage"):
    k = tmp_path / name
    k.write_bytes(b"a kernel")
    return launch_digest(MeasureRequest(
        mode=SevMode.SEV_SNP, ovmf=ovmf, vcpus=vcpus, vcpu_sig=CPU_SIGS["EPYC-Genoa"], profile=profile("qemu"),
        kernel=k if kernel else None, append="console=ttyS0" if kernel else None, trace=True))


def svg_bands(svg: str) -> list[dict[str, str]]:
    root = ET.fromstring(svg)
    return [g.attrib for g in root.iter(f"{SVG}g") if g.get("class", "").split()[:1] == ["band"]]


class Tables(html.parser.HTMLParser):
    """The cells of every <table>, by its class."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = dict(attrs).get("class") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables(page: str) -> dict[str, list[list[str]]]:
    p = Tables()
    p.feed(page)
    return p.tables


def test_svg_bands_follow_the_gpa_axis_and_hold_every_page(tmp_path):
    result = measured(tmp_path)
    bands = svg_bands(picture.render_svg(result))
    gpas = [int(b["data-gpa"], 16) for b in bands]
    assert gpas == sorted(gpas)
    assert sum(int(b["data-pages"]) for b in bands) == result.measurement.pages == 35
    # every page type drawn is in the legend, and each band's region is named
    root = ET.fromstring(picture.render_svg(result))
    legend = {t.text for t in root.iter(f"{SVG}text") if "legend" in t.get("class", "")}
    assert {b["data-type"] for b in bands} <= legend == set(picture.COLOURS)
    regions = [b["data-region"] for b in bands]
    assert regions == ["SNP_SEC_MEM", "SNP_SEC_MEM", "SNP_SECRETS", "CPUID", "SVSM_CAA",
                       "kernel hashes page (table at 0x810c00)", "SNP_SEC_MEM", "firmware image",
                       "VMSA vCPU0", "VMSA vCPU1", "VMSA vCPU2"]
    hashes = bands[regions.index("kernel hashes page (table at 0x810c00)")]
    assert hashes["data-type"] == "NORMAL" and hashes["data-pages"] == "1"
    # the title holds the final digest and the parameters
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert result.digest.hex() in texts
    assert ("snp · 3 vCPU(s) of EPYC-Genoa (0xa10f10) · guest features 0x1 · VMM profile qemu · "
            "35 pages measured") in texts


def test_a_band_per_coalesced_range_in_measurement_order(tmp_path):
    """Each band is consecutive pages of one type and region; together they are the trace."""
    result = measured(tmp_path, kernel=False)
    log = result.measurement.log
    bands = sorted(picture.bands(result), key=lambda b: b.first)
    pos = 0
    for b in bands:
        assert b.first == pos
        for i in range(b.pages):
            ptype, gpa, _, _ = log[pos + i]
            assert ptype.name == b.page_type
            assert gpa == (b.start + i * PAGE_SIZE if b.kind != picture.VMSA else b.start)
        pos += b.pages
    assert pos == len(log) == result.measurement.pages
    assert next(b for b in bands if b.kind == picture.KERNEL_HASHES).page_type == "ZERO"


def test_the_ranges_table_accounts_for_every_page(tmp_path):
    result = measured(tmp_path, 5)
    rows = tables(picture.render_html(result))["ranges"]
    assert rows[0] == ["GPA range", "page type", "region", "pages"]
    body, total = rows[1:-1], rows[-1]
    assert sum(int(r[3].replace(",", "")) for r in body) == result.measurement.pages == int(total[3])
    assert body[0] == ["0x800000–0x808fff", "ZERO", "SNP_SEC_MEM", "9"]
    assert [r[2] for r in body][-5:] == [f"VMSA vCPU{i}" for i in range(5)]


def test_more_than_eight_vmsas_are_one_band_with_their_count(tmp_path):
    eight = [b for b in picture.bands(measured(tmp_path, 8)) if b.kind == picture.VMSA]
    assert [b.region for b in eight] == [f"VMSA vCPU{i}" for i in range(8)]
    nine = measured(tmp_path, 9)
    vmsas = [b for b in svg_bands(picture.render_svg(nine)) if b["data-type"] == "VMSA"]
    assert [(b["data-region"], b["data-pages"]) for b in vmsas] == [("VMSA vCPU0..8 (9 VMSAs)", "9")]
    assert sum(int(r[3]) for r in tables(picture.render_html(nine))["ranges"][1:-1]) == nine.measurement.pages


def test_firmware_volumes_are_named(tmp_path):
    """A volume header with an FvNameGuid OVMF uses gets OVMF's name; others their file system."""
    def volume(fs: str, name: str | None) -> bytes:
        hdr = VolumeHeader(
            file_system_guid=uuid.UUID(fs).bytes_le, fv_length=PAGE_SIZE, signature=b"_FVH",
            header_length=0x48, ext_header_offset=0x78 if name else 0, revision=2).to_bytes()
        page = bytearray(PAGE_SIZE)
        page[:len(hdr)] = hdr
        if name:
            page[0x78:0x88] = uuid.UUID(name).bytes_le
        return bytes(page)

    ffs2 = "8c8ce578-8a3d-4f1c-9935-896185c32dd3"
    image = (volume(ffs2, "763bed0d-de9f-48f5-81f1-3e90e1b1a015") + bytes(PAGE_SIZE)
             + volume(ffs2, None) + volume("fff12b8d-7696-4c8b-a985-2747075b4f50", None) + AMDSEV.read_bytes())
    fw_path = tmp_path / "fw.fd"
    fw_path.write_bytes(image)
    fw = Firmware.load(fw_path)
    assert [(r.start - fw.gpa, r.name) for r in picture.firmware_volumes(fw)] == [
        (0, "SECFV"), (0x2000, "FFS2 volume at +0x2000"), (0x3000, "NV variable store")]
    regions = [b.region for b in picture.bands(measured(tmp_path, ovmf=fw_path)) if b.kind == picture.FIRMWARE]
    assert regions == ["SECFV", "firmware image", "FFS2 volume at +0x2000", "NV variable store", "firmware image"]


def test_same_inputs_same_bytes_and_text_is_escaped(tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    result = measured(odd, name='k<&>"x.bin')
    page = picture.render_html(result)
    assert page == picture.render_html(measured(odd, name='k<&>"x.bin'))
    assert "k&lt;&amp;&gt;&quot;x.bin" in page and 'k<&>"x.bin' not in page
    ET.fromstring(picture.render_svg(result))  # well-formed XML
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in \
        page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


BASE = ["measure", "--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-Genoa", "--ovmf", AMDSEV]


def test_measure_map_and_html_leave_stdout_alone(tmp_path, capsys):
    rc, plain, _ = cli(BASE, capsys)
    assert rc == 0
    rc, out, err = cli([*BASE, "--map", tmp_path / "m.svg", "--html", tmp_path / "m.html"], capsys)
    assert (rc, out, err) == (0, plain, "")
    svg = (tmp_path / "m.svg").read_text()
    assert svg == picture.render_svg(launch_digest(MeasureRequest(
        mode=SevMode.SEV_SNP, ovmf=AMDSEV, vcpus=2, vcpu_sig=CPU_SIGS["EPYC-Genoa"], trace=True)))
    assert plain.strip() in svg and plain.strip() in (tmp_path / "m.html").read_text()
    rc, json_out, _ = cli([*BASE, "--json", "--html", tmp_path / "j.html"], capsys)
    rc2, json_plain, _ = cli([*BASE, "--json"], capsys)
    assert rc == rc2 == 0 and json_out == json_plain and '"trace"' not in json_out


@pytest.mark.parametrize("extra,needle", [
    (["--mode", "seves"], "--map draws the pages of an SEV-SNP launch; use --mode snp (not seves) or drop --map."),
    (["--snp-ovmf-hash", "00" * 48], "--map draws every measured page, but with --snp-ovmf-hash the firmware "
                                     "pages are not measured here"),
    (["--html", "{out}"], "--map and --html name the same file"),
])
def test_measure_map_refusals_exit_2(tmp_path, capsys, extra, needle):
    out = tmp_path / "m.svg"
    argv = [*BASE, "--map", out] + [str(out) if e == "{out}" else e for e in extra]
    rc, stdout, err = cli(argv, capsys)
    assert (rc, stdout) == (2, "") and needle in err and err.startswith("blindbox: error: ")
    assert not out.exists()


def test_measure_map_never_overwrites_an_input(tmp_path, capsys):
    fw = tmp_path / "fw.fd"
    fw.write_bytes(AMDSEV.read_bytes())
    argv = [*BASE[:-1], fw, "--html", tmp_path / "ok.html", "--map", fw]
    rc, out, err = cli(argv, capsys)
    assert rc == 2 and out == "" and f"--map '{fw}' is the input file of --ovmf" in err
    assert fw.read_bytes() == AMDSEV.read_bytes() and not (tmp_path / "ok.html").exists()
    rc, out, err = cli([*BASE, "--map", tmp_path / "no" / "m.svg"], capsys)
    assert rc == 2 and "cannot write the picture" in err and "No such file or directory" in err


def explain_bundle(tmp_path):
    from measure import SnpLaunch, VmShape
    from measure.kernel_hashes import KernelHashes
    from tests.audit.manifestdoc import CMDLINE, entry, write_bundle

    k, i = tmp_path / "k", tmp_path / "i"
    k.write_bytes(b"kernel"), i.write_bytes(b"initrd")  # the bundle's kernel and initrd
    hashes = KernelHashes.from_files(k, i, CMDLINE)
    launch = SnpLaunch(Firmware.load(AMDSEV))
    digest = {n: launch.measure(VmShape(n, 0x800F12, 0x1, profile("qemu")), hashes).digest for n in (1, 2, 3)}
    bundle = tmp_path / "bundle"
    write_bundle(bundle, AMDSEV.read_bytes(),
                 [entry(1, "EPYC-v4", 0x1, digest[1]), entry(2, "EPYC-v4", 0x1, digest[2])])
    return bundle, digest


def test_explain_report_html_highlights_the_differences(tmp_path, capsys):
    bundle, digest = explain_bundle(tmp_path)
    page_path = tmp_path / "e.html"
    argv = ["explain-report", "--measurement", digest[3].hex(), "--bundle", bundle, "--max-vcpus", 4]
    rc, plain, _ = cli(argv, capsys)
    rc2, out, err = cli([*argv, "--html", page_path], capsys)
    elapsed = re.compile(r"in [0-9.]+ s\)")  # the search's own timing differs between the two runs
    assert rc == rc2 == 0 and elapsed.sub("", out) == elapsed.sub("", plain) and err == ""
    page = page_path.read_text()
    assert tables(page)["diff"] == [["", "this launch", "published qemu:EPYC-v4:2:0x1"], ["vCPU count", "3", "2"]]
    assert '<section class="differences">' in page and digest[3].hex() in page
    svg = page[page.index("<svg"):page.index("</svg>") + 6]
    bands = svg_bands(svg)
    differing = [b["data-region"] for b in bands if "differs" in b["class"].split()]
    assert differing == ["VMSA vCPU0", "VMSA vCPU1", "VMSA vCPU2"]
    assert "VMSA vCPU2 · VMSA · 1 page · differs: vCPU count" in svg

    # a published shape: no differences table
    rc, _, _ = cli(["explain-report", "--measurement", digest[2].hex(), "--bundle", bundle, "--max-vcpus", 4,
                    "--html", page_path], capsys)
    page = page_path.read_text()
    assert rc == 0 and '<section class="differences">' not in page
    assert "Published in the bundle's manifest for qemu:EPYC-v4:2:0x1." in html.unescape(page)


def test_explain_report_html_without_a_launch_writes_nothing(tmp_path, capsys):
    page_path = tmp_path / "e.html"
    rc, out, err = cli(["explain-report", "--measurement", "00" * 48, "--ovmf", AMDSEV, "--max-vcpus", 2,
                        "--html", page_path], capsys)
    assert rc == 3 and "no launch" in out and not page_path.exists()
    assert f"blindbox: {page_path} not written: no launch of these inputs produces the measurement" in err


def test_explain_report_html_never_overwrites_the_manifest(tmp_path, capsys):
    bundle, digest = explain_bundle(tmp_path)
    before = (bundle / "manifest.json").read_bytes()
    rc, out, err = cli(["explain-report", "--measurement", digest[3].hex(), "--bundle", bundle,
                        "--html", bundle / "manifest.json"], capsys)
    assert rc == 2 and out == "" and "--html" in err and "is the manifest" in err
    assert (bundle / "manifest.json").read_bytes() == before
