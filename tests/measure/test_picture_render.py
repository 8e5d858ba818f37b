"""The measure map as a person sees it: pages rendered by headless Chromium (Debian's ``chromium``).

Every label of the map is read back from the rendered page (its text and bounding box, see
tests/chromium.py) and must be present, visible, inside the SVG and the window, and clear of
every other label: for hello's real inputs (the firmware and kernel hello.yaml uses, its
command line) with 1 and 64 vCPUs, and for an explain-report page with a highlighted
difference.  A page built to break the rules shows the checker sees each breach.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blindbox.cli import main
from tests.chromium import render, problems
from tests.realinputs import debian_kernel, ovmf_amdsev

from .test_picture import explain_bundle

HELLO_CMDLINE = "console=ttyS0 panic=-1 quiet"   # recipes/hello.yaml's measured command line


def labels_of(page: Path, tmp_path: Path) -> list[str]:
    r = render(page.read_text(encoding="utf-8"), tmp_path)
    assert problems(r) == []
    return [lab.text for lab in r.labels]


@pytest.mark.network
@pytest.mark.parametrize("vcpus", [1, 64])
def test_hello_map_renders_every_label_apart(tmp_path, capsys, vcpus):
    ovmf, _ = ovmf_amdsev()
    kernel, _ = debian_kernel("bookworm")
    page = tmp_path / "hello.html"
    rc = main(["measure", "--mode", "snp", "--vcpus", str(vcpus), "--vcpu-type", "EPYC-Genoa", "--ovmf", str(ovmf),
               "--kernel", str(kernel), "--append", HELLO_CMDLINE, "--html", str(page)])
    digest = capsys.readouterr().out.strip()
    assert rc == 0 and len(digest) == 96
    texts = labels_of(page, tmp_path)
    vmsas = ["VMSA vCPU0 · VMSA · 1 page"] if vcpus == 1 else ["VMSA vCPU0..63 (64 VMSAs) · VMSA · 64 pages"]
    expected = [
        "SEV-SNP launch digest (MEASUREMENT)", digest,
        *("NORMAL", "ZERO", "UNMEASURED", "SECRETS", "CPUID", "VMSA"),
        "NV variable store · NORMAL · 132 pages", "SECFV · NORMAL · 52 pages",
        "SNP_SECRETS · SECRETS · 1 page", "CPUID · CPUID · 1 page", "SVSM_CAA · ZERO · 1 page",
        "kernel hashes page (table at 0x810c00) · NORMAL · 1 page", *vmsas]
    missing = [t for t in expected if t not in texts]
    assert missing == []
    assert any(t.startswith("FVMAIN_COMPACT · NORMAL · ") for t in texts)
    assert sum(t.startswith("SNP_SEC_MEM · ZERO · ") for t in texts) >= 2
    assert sum(t.startswith("gap of ") for t in texts) >= 2


def test_explain_report_page_renders_its_highlighted_bands_apart(tmp_path, capsys):
    bundle, digest = explain_bundle(tmp_path)
    page = tmp_path / "explain.html"
    rc = main(["explain-report", "--measurement", digest[3].hex(), "--bundle", str(bundle), "--max-vcpus", "4",
               "--html", str(page)])
    capsys.readouterr()
    assert rc == 0
    texts = labels_of(page, tmp_path)
    assert [f"VMSA vCPU{i} · VMSA · 1 page · differs: vCPU count" for i in range(3)] == \
        [t for t in texts if t.startswith("VMSA vCPU")]
    assert digest[3].hex() in texts and "kernel hashes page (table at 0x810c00) · NORMAL · 1 page" in texts


def test_the_checker_sees_overlapping_hidden_and_stray_labels(tmp_path):
    page = ("<!DOCTYPE html><html><body>"
            '<svg xmlns="http://www.w3.org/2000/svg" class="measure-map" width="300" height="100">'
            '<text x="10" y="20" font-size="12">first label</text>'
            '<text x="14" y="22" font-size="12">second label</text>'
            '<text x="10" y="60" font-size="0">hidden</text>'
            '<text x="250" y="90" font-size="12">beyond the edge</text>'
            "</svg></body></html>")
    found = problems(render(page, tmp_path))
    assert any("'first label'" in p and "'second label'" in p and "overlap" in p for p in found)
    assert any(p.startswith("label 'hidden' has no visible size") for p in found)
    assert any(p.startswith("label 'beyond the edge'") and "not inside the SVG" in p for p in found)
