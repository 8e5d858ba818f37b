#!/usr/bin/env python3
"""Regenerate the bad-input corpus: tests/corpus/cases/<id>/ and tests/corpus/cases.json.

Every case is a small malformed input derived from a fixture or a synthetic builder, the
command that reads it, and what the user must see: exit status, a message substring and
why the input is bad.  tests/test_corpus.py runs the checked-in bytes; this script only
documents where they came from (run it from the repository root, then review the diff).

argv placeholders: ``{case}`` is the case's directory (a scratch copy of it at test time),
``{fixtures}`` is tests/fixtures/vectors.  A case may also ask for ``symlinks``
(name -> target, created in the scratch copy, since a symlink loop is easier to make than
to check in).  Adding a case by hand is a data-only change: a directory and an entry.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import shutil
import struct
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from measure.spec import OVMF_SEV_METADATA_GUID, SEV_ES_RESET_BLOCK_GUID, SectionType  # noqa: E402
from builder.launch import LaunchFiles, LaunchShape, render  # noqa: E402
from measure.kernel_hashes import KernelHashes  # noqa: E402
from measure.ovmf import Firmware  # noqa: E402
from measure.snp import SnpLaunch, VmShape  # noqa: E402
from measure.vmm import profile  # noqa: E402
from tests.audit.manifestdoc import entry, manifest_doc, write_bundle  # noqa: E402
from tests.builder.stepfakes import make_bzimage, make_elf, make_module  # noqa: E402
from tests.builder.fakes import ar_archive  # noqa: E402
from tests.measure import synth  # noqa: E402

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE / "cases"
VECTORS = ROOT / "tests" / "fixtures" / "vectors"

CASES: list[dict] = []


def case(id: str, argv: list[str], exit: int, message: str, why: str, files: dict[str, bytes] | None = None,
         symlinks: dict[str, str] | None = None, stream: str | None = None) -> None:
    entry = {"id": id, "argv": argv, "exit": exit, "message": message, "why": why}
    if stream:
        entry["stream"] = stream
    if symlinks:
        entry["symlinks"] = symlinks
    CASES.append(entry)
    d = CASES_DIR / id
    d.mkdir(parents=True)
    for name, data in (files or {}).items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    if not files:
        (d / ".keep").write_bytes(b"")


# -- firmware ------------------------------------------------------------------------------
SNP = [(0x800000, 0x1000, SectionType.SNP_SEC_MEM), (0x801000, 0x1000, SectionType.SNP_SECRETS),
       (0x802000, 0x1000, SectionType.CPUID), (0x803000, 0x1000, SectionType.SNP_KERNEL_HASHES)]
FW = synth.image(0x2000, sections=SNP, hashes_table=(0x803000, 0x400))
FOOTER_END = len(FW) - synth.RESET_AREA          # the footer entry ends here
META = len(FW) - 0x1000                           # the SEV metadata header


def patched(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def measure(fw_name: str = "fw.fd", *extra: str) -> list[str]:
    return ["measure", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", "{case}/" + fw_name,
            *extra]


def firmware_cases() -> None:
    case("fw-empty", measure(), 2, "size 0 bytes is not a positive multiple of 4096",
         "an empty file is not a firmware image", {"fw.fd": b""})
    case("fw-truncated", measure(), 2, "is not a positive multiple of 4096; the file is truncated",
         "a firmware image cut in the middle of a page", {"fw.fd": FW[:-100]})
    case("fw-wrong-magic-is-not-snp", measure(), 2, "has no SEV metadata",
         "a footer GUID that is not the OVMF table footer: no table, so no SEV metadata",
         {"fw.fd": patched(FW, FOOTER_END - 16, bytes(16))})
    case("fw-footer-size-outside", measure(), 2, "declares size 0xffff, outside the image",
         "the footer table claims more bytes than precede it",
         {"fw.fd": patched(FW, FOOTER_END - 18, struct.pack("<H", 0xFFFF))})
    first_entry = FOOTER_END - 18  # the last table entry ends at the footer
    case("fw-entry-size-too-small", measure(), 2, "has invalid size 0x4; the firmware is corrupt",
         "a footer table entry shorter than its own header",
         {"fw.fd": patched(FW, first_entry - 18, struct.pack("<H", 4))})
    dup = synth.image(0x2000, sections=SNP, hashes_table=(0x803000, 0x400),
                      extra_entries=synth.entry(SEV_ES_RESET_BLOCK_GUID, struct.pack("<I", 0xFFFFF000)))
    case("fw-duplicate-guid", measure(), 2, "lists 00f771de-1a7e-4fcb-890e-68c77e2fb44e twice",
         "two SEV-ES reset blocks in one footer table", {"fw.fd": dup})
    footer = FW[FOOTER_END - 18:FOOTER_END]
    size = struct.unpack("<H", footer[:2])[0]
    case("fw-stray-bytes", measure(), 2, "stray byte(s) at offset",
         "the table size leaves bytes that do not form an entry",
         {"fw.fd": patched(FW, FOOTER_END - 18, struct.pack("<H", size + 3))})
    meta_entry = synth.entry(OVMF_SEV_METADATA_GUID, struct.pack("<I", 0x1000))
    at = FW.index(meta_entry)
    case("fw-metadata-offset-outside", measure(), 2, "points outside the image",
         "the SEV metadata offset lies before the start of the file",
         {"fw.fd": patched(FW, at, struct.pack("<I", 0x100000))})
    case("fw-metadata-wrong-magic", measure(), 2, "expected b'ASEV'",
         "the SEV metadata header does not start with ASEV", {"fw.fd": patched(FW, META, b"XSEV")})
    case("fw-metadata-version", measure(), 2, "has version 2; only version 1 is known",
         "an SEV metadata version this tool does not know", {"fw.fd": patched(FW, META + 8, struct.pack("<I", 2))})
    case("fw-metadata-huge-count", measure(), 2, "for 4294967295 section(s)",
         "the metadata claims 2^32-1 sections in a 40-byte header",
         {"fw.fd": patched(FW, META + 12, struct.pack("<I", 0xFFFFFFFF))})
    case("fw-metadata-size-past-end", measure(), 2, "declares size 0x7fffffff",
         "the metadata size runs past the end of the image",
         {"fw.fd": patched(FW, META + 4, struct.pack("<I", 0x7FFFFFFF))})
    case("fw-section-unknown-type", measure(), 2, "section_type at offset 0x1018 has unknown value 0x9",
         "a metadata section of a type no firmware defines",
         {"fw.fd": patched(FW, META + 16 + 8, struct.pack("<I", 9))})
    case("fw-section-not-page-aligned", measure(), 2, "not whole pages; the firmware is corrupt",
         "a metadata section that starts inside a page",
         {"fw.fd": patched(FW, META + 16, struct.pack("<I", 0x800010))})
    case("fw-section-zero-size", measure(), 2, "covers 0x800000+0x0, not whole pages",
         "a metadata section of zero bytes", {"fw.fd": patched(FW, META + 20, struct.pack("<I", 0))})
    short_reset = synth.image(0x2000, sections=SNP, reset_eip=None, hashes_table=(0x803000, 0x400),
                              extra_entries=synth.entry(SEV_ES_RESET_BLOCK_GUID, b"\x00\x10"))
    case("fw-reset-block-short", measure(), 2, "has 2 data bytes, too short",
         "the SEV-ES reset block entry holds 2 bytes instead of an address", {"fw.fd": short_reset})
    case("fw-no-reset-block", measure(), 2, "has no SEV-ES reset block",
         "firmware without an AP reset address cannot start SNP vCPUs",
         {"fw.fd": synth.image(0x2000, sections=SNP, reset_eip=None)})
    case("fw-no-metadata", measure(), 2, "has no SEV metadata, so QEMU cannot launch it as an SNP guest",
         "firmware whose footer table has no SEV metadata entry", {"fw.fd": synth.image(0x2000)})
    no_hashes = synth.image(0x2000, sections=SNP[:3])
    case("fw-kernel-without-hashes-section", measure("fw.fd", "--kernel", "{case}/bzImage"), 2,
         "has no SNP_KERNEL_HASHES section",
         "a measured direct boot needs firmware with a kernel hashes section",
         {"fw.fd": no_hashes, "bzImage": make_bzimage("6.1.0-test")})
    case("fw-hashes-table-outside-section", measure("fw.fd", "--kernel", "{case}/bzImage"), 2,
         "is not in the first page of the SNP_KERNEL_HASHES section",
         "the hashes table GPA does not lie in the kernel hashes section",
         {"fw.fd": synth.image(0x2000, sections=SNP, hashes_table=(0x900000, 0x400)),
          "bzImage": make_bzimage("6.1.0-test")})
    case("manifest-is-a-directory", ["rederive", "{case}/bundle"], 2, "is a directory; give a file",
         "manifest.json is a directory", {"bundle/manifest.json/x": b""})
    case("fw-missing", measure("nothing.fd"), 2, "cannot read the firmware file",
         "a firmware path that does not exist")
    case("fw-symlink-loop", measure("loop.fd"), 2, "Too many levels of symbolic links",
         "a firmware path that is a symlink loop", symlinks={"loop.fd": "loop2.fd", "loop2.fd": "loop.fd"})
    case("svsm-not-svsm", ["measure", "--mode", "snp:svsm", "--vcpus", "1", "--vcpu-type", "EPYC-v4",
                           "--ovmf", "{case}/fw.fd", "--svsm", "{case}/fw.fd", "--vars-size", "0x1000"], 2,
         "has no SVSM_INFO entry in its footer table", "an OVMF image given as the SVSM binary", {"fw.fd": FW})
    case("vars-file-missing", ["measure", "--mode", "snp:svsm", "--vcpus", "1", "--vcpu-type", "EPYC-v4",
                               "--ovmf", "{case}/fw.fd", "--svsm", "{case}/fw.fd", "--vars-file",
                               "{case}/vars.fd"], 2, "cannot read the OVMF variable store file",
         "the variable store file does not exist", {"fw.fd": FW})
    case("ovmf-hash-wrong-length", measure("fw.fd", "--snp-ovmf-hash", "abcd"), 2, "must be 96 hex digits",
         "a precalculated OVMF hash of 2 bytes", {"fw.fd": FW})
    case("vcpus-zero", ["measure", "--mode", "snp", "--vcpus", "0", "--vcpu-type", "EPYC-v4", "--ovmf", "{case}/fw.fd"],
         2, "--vcpus 0 is invalid; a guest has 1 to 4096 vCPUs", "a guest without vCPUs", {"fw.fd": FW})
    case("vmm-profile-unknown", measure("fw.fd", "--vmm-profile", "nope"), 2, "unknown VMM profile 'nope'",
         "a VMM profile that does not exist", {"fw.fd": FW})
    case("guest-features-too-wide", measure("fw.fd", "--guest-features", "0x1ffffffffffffffff"), 2,
         "does not fit in 64 bits", "SEV features wider than the VMSA field", {"fw.fd": FW})
    case("guest-features-without-snp-active", measure("fw.fd", "--guest-features", "0x20"), 2,
         "--guest-features 0x20 lacks SNPActive (bit 0)", "SEV features no SNP guest's VMSA has, measured today",
         {"fw.fd": FW})
    case("ovmf-hash-not-hex", measure("fw.fd", "--snp-ovmf-hash", "xyz"), 2, "is not hexadecimal",
         "a precalculated OVMF hash that is not hex", {"fw.fd": FW})


# -- VMSA pages ------------------------------------------------------------------------------
    case("fw-sections-overlap", measure(), 2, "which overlaps section 0 (SNP_SEC_MEM) at 0x800000+0x2000",
         "two SEV metadata sections that share a page (SNP_LAUNCH_UPDATE takes a page once)",
         {"fw.fd": synth.image(0x2000, sections=[(0x800000, 0x2000, SectionType.SNP_SEC_MEM), *SNP[1:]],
                               hashes_table=(0x803000, 0x400))})
    case("fw-section-wraps-4gib", measure(), 2, "region 0xfffff000+0x2000 ends at 0x100001000, beyond 0x100000000",
         "a section whose GPA range runs past 4 GiB",
         {"fw.fd": synth.image(0x2000, sections=[*SNP, (0xFFFFF000, 0x2000, SectionType.SNP_SEC_MEM)],
                               hashes_table=(0x803000, 0x400))})
    case("fw-section-overlaps-firmware", measure(), 2, "which overlaps the firmware image itself at "
         "0xffffe000-0x100000000", "a section that covers the firmware's own pages",
         {"fw.fd": synth.image(0x2000, sections=[*SNP, (0xFFFFE000, 0x1000, SectionType.SNP_SEC_MEM)],
                               hashes_table=(0x803000, 0x400))})
    case("fw-sec-mem-huge", measure(), 2, "covers 0x0+0xfffff000, which overlaps the firmware image",
         "a 0xFFFFF000-byte SNP_SEC_MEM section (nearly 4 GiB of pages to measure)",
         {"fw.fd": synth.image(0x2000, sections=[(0x0, 0xFFFFF000, SectionType.SNP_SEC_MEM), *SNP[1:]],
                               hashes_table=(0x803000, 0x400))})
    case("fw-sections-total-huge", measure(), 2, "more than the 67,108,864 any firmware declares",
         "a 2 GiB SNP_SEC_MEM section below the firmware: more pages than any firmware declares",
         {"fw.fd": synth.image(0x2000, sections=[(0x0, 0x80000000, SectionType.SNP_SEC_MEM), *SNP[1:]],
                               hashes_table=(0x803000, 0x400))})


def vmsa_cases() -> None:
    from measure.ovmf import Firmware
    from measure.snp import SnpLaunch, VmShape
    page = SnpLaunch(Firmware(FW)).vmsa_pages(VmShape(1, 0x800F12))[0]
    argv = ["explain-vmsa", "{case}/expected.bin", "{case}/actual.bin"]
    case("vmsa-truncated", argv, 2, "must be exactly 0x1000 bytes, got 0xfff",
         "a VMSA page one byte short", {"expected.bin": page, "actual.bin": page[:-1]})
    reserved = patched(page, 0x0FF0, b"\x01")
    case("vmsa-reserved-nonzero", argv, 2, "reserved byte at offset 0xff0 is 0x01, expected zero",
         "a nonzero byte where the save area is reserved", {"expected.bin": page, "actual.bin": reserved})
    case("vmsa-differs", argv, 3, "cs.selector", "two valid VMSA pages that differ: a comparison that fails",
         {"expected.bin": page, "actual.bin": patched(page, 0x10, b"\x08")}, stream="stdout")


# -- attestation reports and certificates ----------------------------------------------------
REPORT = (VECTORS / "oak/genoa_oc_attestation_report.bin").read_bytes()
VCEK = (VECTORS / "oak/genoa_oc_vcek.der").read_bytes()
CHAIN = (VECTORS / "go-sev-guest/ask_ark_genoa.pem").read_bytes()


def verify(*extra: str) -> list[str]:
    return ["verify-report", "{case}/report.bin", "--certs", "{fixtures}/oak/genoa_oc_vcek.der",
            "--certs", "{fixtures}/go-sev-guest/ask_ark_genoa.pem", "--at", "2025-09-01T00:00:00Z",
            "--allow-debug", *extra]


def report_cases() -> None:
    case("report-truncated", verify(), 2, "is 1000 bytes, which is neither a binary ATTESTATION_REPORT",
         "a report cut short", {"report.bin": REPORT[:1000]})
    case("report-wrong-version", verify(), 2, "has VERSION 9 at offset 0x0",
         "an unknown report version", {"report.bin": patched(REPORT, 0, struct.pack("<I", 9))})
    case("report-reserved-nonzero", verify(), 2, "so the report is corrupt or was altered",
         "a reserved byte of the report is set", {"report.bin": patched(REPORT, 0x210, b"\xff")})
    case("report-signature-algo", verify(), 2, "has SIGNATURE_ALGO 2 at offset 0x34",
         "a signature algorithm the specification does not define",
         {"report.bin": patched(REPORT, 0x34, struct.pack("<I", 2))})
    case("report-policy-bit17", verify(), 2, "GUEST_POLICY bit 17 (offset 0x8) is zero",
         "a guest policy no firmware accepts",
         {"report.bin": patched(REPORT, 0x8, struct.pack("<Q", struct.unpack_from("<Q", REPORT, 8)[0] & ~(1 << 17)))})
    case("report-hex-garbage", ["explain-report", "{case}/report.txt", "--ovmf", "{case}/report.txt"], 2,
         "nor its hex text", "hex text with the wrong number of digits", {"report.txt": b"0x" + b"ab" * 100})
    case("report-altered-measurement", verify(), 3, "signature",
         "a report whose signed MEASUREMENT was changed: the signature must fail",
         {"report.bin": patched(REPORT, 0x90, bytes(48))})
    case("report-measurement-mismatch", verify("--measurement", "00" * 48), 3, "MEASUREMENT",
         "a genuine report checked against another launch digest", {"report.bin": REPORT})
    case("certs-pem-garbage", ["verify-report", "{fixtures}/oak/genoa_oc_attestation_report.bin", "--certs",
                               "{case}/vcek.pem"], 2, "vcek.pem",
         "a PEM block whose body is not a certificate",
         {"vcek.pem": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"})
    case("certs-der-truncated", ["verify-report", "{fixtures}/oak/genoa_oc_attestation_report.bin", "--certs",
                                 "{case}/vcek.der"], 2, "vcek.der",
         "a DER certificate cut in half", {"vcek.der": VCEK[:len(VCEK) // 2]})
    case("certs-not-certificates", ["verify-report", "{fixtures}/oak/genoa_oc_attestation_report.bin",
                                    "--certs", "{case}/notes.txt"], 2, "notes.txt",
         "a text file given as a certificate", {"notes.txt": b"hello\n"})
    case("trust-root-garbage", verify("--trust-root", "{case}/root.pem"), 2, "root.pem",
         "a trust root that is not a certificate", {"report.bin": REPORT, "root.pem": b"not a cert\n"})
    case("verify-manifest-not-json", verify("--manifest", "{case}/manifest.json"), 2,
         "is not UTF-8 JSON (Expecting property name",
         "a manifest that is not JSON", {"report.bin": REPORT, "manifest.json": b"{measurements: [}"})
    case("verify-manifest-wrong-type", verify("--manifest", "{case}/manifest.json"), 2,
         'measurements is the string "abc", not a list', "measurements given as a string",
         {"report.bin": REPORT, "manifest.json": json.dumps({**manifest_doc([]), "measurements": "abc"}).encode()})
    case("verify-manifest-bad-digest", verify("--manifest", "{case}/manifest.json"), 2,
         "measurements[0].measurement is \"zzzz", "a published measurement that is not a SHA-384 digest",
         {"report.bin": REPORT, "manifest.json": json.dumps(
             manifest_doc([entry(1, "EPYC-v4", 0x1, "zz" * 48)])).encode()})
    case("verify-min-tcb-garbage", verify("--min-tcb", "snp=x"), 2, "--min-tcb item 'snp=x' is not COMPONENT=LEVEL",
         "a minimum TCB that is not COMPONENT=LEVEL", {"report.bin": REPORT})
    case("verify-at-garbage", ["verify-report", "{case}/report.bin", "--no-signature", "--at", "yesterday"], 2,
         "--at 'yesterday' is not an ISO 8601 time", "a verification time that is not a time", {"report.bin": REPORT})
    case("verify-host-data-length", verify("--host-data", "abcd"), 2, "--host-data 'abcd' is not 32 bytes",
         "an expected HOST_DATA of the wrong length", {"report.bin": REPORT})


# -- bundles and manifests -------------------------------------------------------------------
def bundle(manifest, **files: bytes) -> dict[str, bytes]:
    doc = manifest if isinstance(manifest, bytes) else json.dumps(manifest, indent=1).encode()
    return {"bundle/manifest.json": doc, **{f"bundle/{k}": v for k, v in files.items()}}


def good_bundle(change: Callable[[dict], object] | None = None, *, firmware: bytes = FW,
                shapes: tuple[tuple[int, str], ...] = ((1, "EPYC-v4"),)) -> dict[str, bytes]:
    """A small bundle that `blindbox rederive` passes (every published value re-derives), with
    ``change`` then applied to its manifest; the files are left as they are."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        doc = write_bundle(d, firmware, [entry(n, t, 0x1, "00" * 48) for n, t in shapes])
        try:
            fw = Firmware.load(d / "OVMF.amdsev.fd")
            launch = SnpLaunch(fw)
        except Exception:  # noqa: BLE001 - a corrupt firmware keeps the placeholder facts
            launch = None
        if launch is not None:
            facts = fw.describe()
            doc["firmware"].update(ovmf_hash=launch.firmware_digest.hex(), sev_es_reset_eip=facts["sev_es_reset_eip"],
                                   sev_hashes_table=facts["sev_hashes_table"],
                                   sev_metadata_sections=facts["sev_metadata_sections"])
            hashes = KernelHashes.from_files(d / "bzImage", d / "initrd", doc["cmdline"].encode())
            for m in doc["measurements"]:
                shape = VmShape(m["vcpus"], int(m["vcpu_sig"], 16), 0x1, profile("qemu"))
                m["measurement"] = launch.measure(shape, hashes).digest.hex()
        files = {n: (d / n).read_bytes() for n in ("OVMF.amdsev.fd", "bzImage", "initrd", "cmdline")}
        sha = {n: hashlib.sha256(v).hexdigest() for n, v in files.items()}
        files["launch-snp.sh"] = render(
            name=doc["name"], tool="blindbox-guest 0.1.0", files=LaunchFiles("OVMF.amdsev.fd", "bzImage", "initrd"),
            sha256=sha, cmdline=doc["cmdline"].encode(), memory_mib=doc["launch"]["memory_mib"],
            policy=int(doc["launch"]["policy"], 16),
            shapes=[LaunchShape(m["shape"], m["vcpus"], m["vcpu_type"], 0x1, m["measurement"])
                    for m in doc["measurements"]])
        out = next(o for o in doc["outputs"] if o["role"] == "launch")
        out["sha256"] = hashlib.sha256(files["launch-snp.sh"]).hexdigest()
        out["size"] = len(files["launch-snp.sh"])
    if change is not None:
        change(doc)
    return bundle(doc, **files)


def bundle_cases() -> None:
    rederive = ["rederive", "{case}/bundle"]
    case("manifest-not-json", rederive, 2, "is not UTF-8 JSON (Expecting value", "a manifest.json that is not JSON",
         bundle(b"{\"outputs\": ["))
    case("manifest-not-utf8", rederive, 2, "is not UTF-8 JSON ('utf-8' codec can't decode byte 0xe9",
         "a manifest.json in Latin-1", bundle(b"{\"name\": \"caf\xe9\"}"))
    # from here on a schema-complete manifest of a bundle that re-derives, with one field changed
    case("manifest-wrong-types", rederive, 2, "outputs is an object, not a list; the manifest is malformed",
         "outputs given as a mapping", good_bundle(lambda d: d.update(outputs={})))
    case("manifest-output-not-mapping", rederive, 2, "outputs[0] is an integer, not an object",
         "an outputs entry that is a number", good_bundle(lambda d: d["outputs"].__setitem__(0, 1)))
    case("manifest-file-not-string", rederive, 2, "outputs[0].file is null, not a string",
         "an output whose file name is null", good_bundle(lambda d: d["outputs"][0].update(file=None)))
    case("manifest-role-not-string", ["explain-report", "--measurement", "00" * 48, "--bundle", "{case}/bundle"], 2,
         "outputs[0].role is a list, not a string", "an output whose role is a list",
         good_bundle(lambda d: d["outputs"][0].update(role=[None])))
    case("manifest-path-traversal", rederive, 3, "outputs[0].file is '../../etc/passwd', which leaves the bundle",
         "an output file name that climbs out of the bundle",
         good_bundle(lambda d: d["outputs"][0].update(file="../../etc/passwd")))
    case("manifest-absolute-path", rederive, 3, "outputs[1].file is '/etc/passwd', an absolute path",
         "an absolute output file name", good_bundle(lambda d: d["outputs"][1].update(file="/etc/passwd")))
    case("manifest-missing-roles", rederive, 3, "outputs lists 0 files with role 'firmware', not exactly one",
         "a manifest without the files a launch digest needs (firmware, kernel, cmdline)",
         good_bundle(lambda d: d.update(outputs=[o for o in d["outputs"]
                                                 if o["role"] not in ("firmware", "kernel", "cmdline")])))
    case("manifest-shape-malformed", rederive, 2, 'measurements[0].vcpus is the string "many", not an integer',
         "a shape whose vcpus is not a number", good_bundle(lambda d: d["measurements"][0].update(vcpus="many")))
    case("manifest-shape-mode", rederive, 3, 'measurements[0].mode is "sev"; a bundle publishes SEV-SNP digests only',
         "a shape of another SEV mode", good_bundle(lambda d: d["measurements"][0].update(mode="sev")))
    case("manifest-symlink-loop", rederive, 2, "Too many levels of symbolic links",
         "manifest.json is a symlink loop", {"bundle/.keep": b""},
         symlinks={"bundle/manifest.json": "manifest.json"})
    case("bundle-firmware-corrupt", rederive, 3, "has signature b'XXXX', expected b'ASEV'",
         "the bundle's firmware has a damaged SEV metadata header (its digest as published)",
         good_bundle(firmware=patched(FW, META, b"XXXX")), stream="stdout")
    case("explain-report-no-manifest", ["explain-report", "--measurement", "00" * 48, "--bundle",
                                        "{case}/bundle"], 2, "cannot read the manifest file",
         "a bundle directory without manifest.json", {"bundle/.keep": b""})
    case("explain-measurement-not-hex", ["explain-report", "--measurement", "xyz", "--ovmf", "{case}/fw.fd"], 2,
         "--measurement 'xyz' is not 48 bytes; give 96 hex digits", "a measurement that is not hex",
         {"fw.fd": FW})


# -- a hostile user's inputs: each value a manifest or option states is checked ------------------
def manifest_edit_cases() -> None:
    rederive = ["rederive", "{case}/bundle"]

    def shape(**fields: object) -> Callable[[dict], object]:
        return lambda d: d["measurements"][0].update(fields)

    edits = [
        ("manifest-ovmf-hash-zeros", lambda d: d["firmware"].update(ovmf_hash="0" * 96), 3,
         "FAIL  firmware.ovmf_hash", "an OVMF hash of 96 zeros, re-derived from the firmware", "stdout"),
        ("manifest-reset-eip-changed", lambda d: d["firmware"].update(sev_es_reset_eip="0xffffe000"), 3,
         "FAIL  firmware.sev_es_reset_eip", "a published reset address the firmware does not have", "stdout"),
        ("manifest-hashes-table-moved", lambda d: d["firmware"]["sev_hashes_table"].update(gpa="0x803400"), 3,
         "FAIL  firmware.sev_hashes_table", "a published hashes table address the firmware does not have", "stdout"),
        ("manifest-policy-changed", lambda d: d["launch"].update(policy="0x70000"), 3,
         "FAIL  launch.policy", "a published policy the launch script does not use", "stdout"),
        ("manifest-sections-empty", lambda d: d["firmware"].update(sev_metadata_sections=[]), 3,
         "firmware.sev_metadata_sections is an empty list", "the firmware's SEV metadata sections emptied", None),
        ("manifest-cmdline-differs", lambda d: d.update(cmdline="console=ttyS0 init=/bin/sh"), 3,
         "cmdline is \"console=ttyS0 init=/bin/sh\", but outputs[3] (cmdline) lists a file with other contents",
         "a published cmdline that is not the bundle's cmdline file", None),
        ("manifest-schema-unknown", lambda d: d.update(schema="blindbox-manifest/9"), 3,
         "schema is 'blindbox-manifest/9', a schema version this blindbox does not know",
         "a schema version this blindbox does not read", None),
        ("manifest-vcpu-type-unknown", shape(vcpu_type="Pentium", shape="qemu:Pentium:1:0x1"), 3,
         'measurements[0].vcpu_type is "Pentium", not a vCPU type this blindbox knows',
         "a vCPU type no VMM profile has", None),
        ("manifest-firmware-deleted", lambda d: d.pop("firmware"), 3, "firmware is missing",
         "the firmware section deleted", None),
        ("manifest-firmware-file-traversal", lambda d: d["firmware"].update(file="../../../../etc/passwd"), 3,
         "firmware.file is '../../../../etc/passwd', which leaves the bundle directory",
         "a firmware file that climbs out of the bundle", None),
        ("manifest-no-measurements", lambda d: d.update(measurements=[]), 3, "measurements is an empty list",
         "a manifest that publishes no launch digest", None),
        ("manifest-duplicate-shape", lambda d: d["measurements"].append(dict(d["measurements"][0])), 3,
         "measurements[1].shape is 'qemu:EPYC-v4:1:0x1', already published by measurements[0]",
         "one shape published twice", None),
        ("manifest-shape-id-contradicts-vcpus", shape(shape="qemu:EPYC-v4:2:0x1"), 3,
         "measurements[0].vcpus is 1, but the shape id 'qemu:EPYC-v4:2:0x1' says 2",
         "a shape id naming 2 vCPUs on a 1-vCPU entry (a report of one launch accepted as the other)", None),
        ("manifest-digest-64-hex", shape(measurement="ab" * 32), 2,
         "measurements[0].measurement is \"abab", "a SHA-256-sized launch digest", None),
        ("manifest-digest-98-hex", shape(measurement="ab" * 49), 2,
         "measurements[0].measurement is \"abab", "a launch digest one byte too long", None),
        ("manifest-digest-not-hex", shape(measurement="zz" * 48), 2,
         "measurements[0].measurement is \"zzzz", "a launch digest of non-hex digits", None),
        ("manifest-digest-integer", shape(measurement=12345), 2,
         "measurements[0].measurement is 12345, not 96 lower-case hex digits", "a launch digest given as a number",
         None),
    ]
    for cid, change, code, message, why, stream in edits:
        case(cid, rederive, code, message, why, good_bundle(change), stream=stream)
    dup = good_bundle()
    dup["bundle/manifest.json"] = dup["bundle/manifest.json"].replace(b'"vcpus": 1', b'"vcpus": 2, "vcpus": 1')
    case("manifest-duplicate-key", rederive, 3, "measurements[0].vcpus appears twice in one object",
         "a key given twice, which two JSON readers may read differently", dup)
    case("verify-manifest-shape-id-contradicts-vcpus",
         verify("--manifest", "{case}/bundle/manifest.json", "--shape", "qemu:EPYC-v4:2:0x1"), 3,
         "measurements[0].vcpus is 1, but the shape id 'qemu:EPYC-v4:2:0x1' says 2",
         "verify-report trusting a shape id that contradicts its entry",
         {**good_bundle(shape(shape="qemu:EPYC-v4:2:0x1")), "report.bin": REPORT})
    case("explain-report-shape-id-contradicts-vcpus",
         ["explain-report", "--measurement", "00" * 48, "--bundle", "{case}/bundle"], 3,
         "measurements[0].vcpus is 1, but the shape id 'qemu:EPYC-v4:2:0x1' says 2",
         "explain-report reading a manifest whose shape id contradicts its entry",
         good_bundle(shape(shape="qemu:EPYC-v4:2:0x1")))
    case("manifest-too-many-shapes", rederive, 2, "publishes 4,097 measurements, more than the 4,096 shapes",
         "more published shapes than re-derivation is bounded to (docs/limits.md)",
         good_bundle(lambda d: d.update(measurements=[{}] * 4097)))
    case("manifest-too-many-vcpus", rederive, 2, "publishes shapes with 266,240 vCPUs in all, more than the 262,144",
         "shapes whose vCPUs together would take minutes to re-derive (docs/limits.md)",
         good_bundle(lambda d: d.update(measurements=[{"vcpus": 4096}] * 65)))
    case("manifest-dev-zero", ["verify-report", "{case}/report.bin", "--no-signature", "--manifest", "/dev/zero"],
         2, "the manifest file '/dev/zero' is larger than 16,777,216 bytes",
         "an endless stream given as the manifest", {"report.bin": REPORT})
    case("rederive-manifest-dev-zero", rederive, 2, "manifest.json' is larger than 16,777,216 bytes",
         "a bundle whose manifest.json is /dev/zero",
         {"bundle/.keep": b""}, symlinks={"bundle/manifest.json": "/dev/zero"})


def option_cases() -> None:
    for cid, extra, message, why in [
        ("verify-vmpl-negative", ("--vmpl", "-1"), "--vmpl '-1' is not a valid VMPL; give 0 to 3", "a VMPL below 0"),
        ("verify-vmpl-too-high", ("--vmpl", "9"), "--vmpl '9' is not a valid VMPL; give 0 to 3",
         "a VMPL above 3"),
        ("verify-policy-too-wide", ("--policy", "0x1ffffffffffffffff"), "0x1ffffffffffffffff does not fit in 64 bits",
         "a guest policy of 65 bits"),
        ("verify-min-guest-svn-negative", ("--min-guest-svn", "-1"), "--min-guest-svn '-1' is not a valid SVN",
         "a negative minimum guest SVN"),
        ("verify-min-tcb-component-twice", ("--min-tcb", "bl=1,bl=2"), "--min-tcb gives 'bl' twice, 1 and 2",
         "one TCB component with two minimums, of which one was silently used"),
    ]:
        case(cid, verify(*extra), 2, message, why, {"report.bin": REPORT})
    case("measure-vcpus-not-integer", measure("fw.fd", "--vcpus", "1.5"), 2,
         "Invalid value for '--vcpus': '1.5' is not a valid integer; see 'blindbox measure --help'.",
         "a usage error, reported on one line like every other error", {"fw.fd": b""})
    case("report-dev-zero", ["verify-report", "/dev/zero", "--no-signature"], 2,
         "the attestation report file '/dev/zero' is larger than 8,192 bytes",
         "an endless stream given as the report")
    case("vmsa-dev-zero", ["explain-vmsa", "/dev/zero", "/dev/zero"], 2,
         "the VMSA file '/dev/zero' is larger than 4,096 bytes",
         "an endless stream given as a VMSA page")
    case("id-key-dev-zero", ["id-block", "ab" * 48, "--id-key", "/dev/zero", "--out-dir", "{case}/out"], 2,
         "the ID key file '/dev/zero' is larger than 65,536 bytes", "an endless stream given as the ID key")
    id_pem = (VECTORS / "sev-snp-measure/keyfile/id_key_test.pem").read_bytes()
    case("id-block-policy-reserved-bit", ["id-block", "ab" * 48, "--id-key", "{case}/id.pem", "--policy",
                                          hex(0x30000 | 1 << 51), "--out-dir", "{case}/out"], 2,
         "0x8000000030000 sets reserved bit 51", "a guest policy with reserved bit 51 set", {"id.pem": id_pem})
    case("certs-dir-garbage", ["verify-report", "{fixtures}/oak/genoa_oc_attestation_report.bin", "--certs",
                               "{case}/certs", "--at", "2025-09-01T00:00:00Z", "--allow-debug"], 2,
         "garbage.pem is not a valid DER X.509 certificate",
         "a file named as a certificate in a --certs directory that is none (not skipped)",
         {"certs/vcek.der": VCEK, "certs/ark.pem": (VECTORS / "go-sev-guest/ask_ark_genoa.pem").read_bytes(),
          "certs/garbage.pem": b"hello\n"})
    case("certs-dev-zero", ["verify-report", "{fixtures}/oak/genoa_oc_attestation_report.bin", "--certs",
                            "/dev/zero"], 2, "the certificate file '/dev/zero' is larger than 65,536 bytes",
         "an endless stream given as a certificate file")
    case("id-block-out-file-is-directory", ["id-block", "ab" * 48, "--id-key", "{case}/id.pem", "--out-dir",
                                            "{case}/out"], 2, "id_auth.bin': it is a directory",
         "one of the two outputs cannot be written: neither may be left behind", {"id.pem": id_pem,
                                                                                  "out/id_auth.bin/.keep": b""})
    case("certs-dir-dev-zero", ["verify-report", "{fixtures}/oak/genoa_oc_attestation_report.bin", "--certs",
                                "{case}/certs", "--at", "2025-09-01T00:00:00Z", "--allow-debug"], 2,
         "zero.pem' in the --certs directory is not a regular file", "a --certs directory entry that is /dev/zero",
         {"certs/vcek.der": VCEK}, symlinks={"certs/zero.pem": "/dev/zero"})


# -- keys, ID blocks, manifest signatures ----------------------------------------------------
def key_cases() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    id_pem = (VECTORS / "sev-snp-measure/keyfile/id_key_test.pem").read_bytes()
    p256 = ec.derive_private_key(12345, ec.SECP256R1())
    p256_pem = p256.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    p384 = serialization.load_pem_private_key(id_pem, password=None)
    encrypted = PREVIOUS.get("id-key-encrypted/id.pem") or p384.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))  # random salt: keep the checked-in file
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    ed_pem = ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    digest = "ab" * 48
    idb = ["id-block", digest, "--id-key", "{case}/id.pem", "--out-dir", "{case}/out"]
    case("id-key-garbage", idb, 2, "is not a private key in PEM or DER", "a key file holding text",
         {"id.pem": b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"})
    case("id-key-truncated-der", idb, 2, "is not a private key in PEM or DER", "a DER key cut in half",
         {"id.pem": p384.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())[:60]})
    case("id-key-wrong-curve", idb, 2, "P-384", "an ECDSA key on P-256", {"id.pem": p256_pem})
    case("id-key-not-ecdsa", idb, 2, "is not an ECDSA key; SEV-SNP needs P-384", "an Ed25519 key",
         {"id.pem": ed_pem})
    case("id-key-encrypted", idb, 2, "is encrypted; decrypt it first", "a password-protected key",
         {"id.pem": encrypted})
    case("id-block-measurement-not-hex", ["id-block", "xyz", "--id-key", "{case}/id.pem", "--out-dir",
                                          "{case}/out"], 2, "MEASUREMENT 'xyz' is not 48 bytes",
         "a launch digest that is neither hex nor base64", {"id.pem": id_pem})
    case("id-block-family-id-length", idb + ["--family-id", "0011"], 2, "--family-id", "a FAMILY_ID of 2 bytes",
         {"id.pem": id_pem})
    manifest = json.dumps({"schema": 1, "measurements": []}).encode()
    ed_pub = ed.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    case("verify-manifest-private-key", ["verify-manifest", "{case}/manifest.json", "--key", "{case}/key.pem"], 2,
         "that is a private key: give its public half", "the signer's private key given as the public key",
         {"manifest.json": manifest, "manifest.json.sig": b"x", "key.pem": ed_pem})
    case("verify-manifest-bad-signature", ["verify-manifest", "{case}/manifest.json", "--key", "{case}/key.pem"],
         3, "do not trust this manifest", "a signature file of the wrong bytes",
         {"manifest.json": manifest, "manifest.json.sig": base64.b64encode(bytes(64)) + b"\n", "key.pem": ed_pub})
    sign = ["sign-manifest", "{case}/manifest.json", "--key", "{case}/key.pem", "--output"]
    case("sign-manifest-output-is-manifest", [*sign, "{case}/manifest.json"], 2, "manifest.json' is the manifest '",
         "a signature written over the manifest it signs", {"manifest.json": manifest, "key.pem": ed_pem})
    case("sign-manifest-output-is-key", [*sign, "{case}/key.pem"], 2, "key.pem' is the signing key '",
         "a signature written over the private key", {"manifest.json": manifest, "key.pem": ed_pem})
    case("sign-manifest-output-links-to-manifest", [*sign, "{case}/sig"], 2, "sig' is the manifest '",
         "an output symlink that resolves to the manifest", {"manifest.json": manifest, "key.pem": ed_pem},
         symlinks={"sig": "manifest.json"})
    case("sign-manifest-output-symlink-loop", [*sign, "{case}/sig"], 2,
         "cannot write the signature file '", "an output path that is a symlink loop, replaced today by a file",
         {"manifest.json": manifest, "key.pem": ed_pem}, symlinks={"sig": "sig"})
    case("verify-manifest-key-sha256-garbage", ["verify-manifest", "{case}/manifest.json", "--key", "{case}/key.pem",
                                                "--key-sha256", "xyz"], 2,
         "--key-sha256 'xyz' is not 32 bytes; give 64 hex digits",
         "a key fingerprint that is not hex", {"manifest.json": manifest, "manifest.json.sig": b"x",
                                               "key.pem": ed_pub})
    case("sign-manifest-key-garbage", ["sign-manifest", "{case}/manifest.json", "--key", "{case}/key.pem"], 2,
         "is not a private key in PEM or DER", "a signing key file holding text",
         {"manifest.json": manifest, "key.pem": b"hello\n"})


# -- recipes and lock files ------------------------------------------------------------------
RECIPE = (ROOT / "recipes/hello.yaml").read_text()
LOCK = (ROOT / "recipes/hello.lock").read_bytes()


def recipe_files(text: str, lock: bytes | None = None, **extra: bytes) -> dict[str, bytes]:
    """A recipe (and a lock file, for the cases that get as far as reading it)."""
    files = {"r.yaml": text.encode() if isinstance(text, str) else text, **extra}
    if lock is not None:
        files["r.lock"] = lock
    return files


def build(*extra: str) -> list[str]:
    return ["build", "{case}/r.yaml", "--offline", "--out", "{case}/out", *extra]


def recipe_cases() -> None:
    sub = RECIPE.replace
    case("recipe-wrong-type", build(), 2, "name", "the bundle name given as a list",
         recipe_files(sub("name: hello", "name: [1, 2]")))
    case("recipe-duplicate-key", build(), 2, "'name' is given twice (first at line 6)",
         "the same key twice in one mapping",
         recipe_files(sub("name: hello", "name: hello\nname: again")))
    case("recipe-unknown-key", build(), 2, "colour", "a key the schema does not have",
         recipe_files(sub("name: hello", "name: hello\ncolour: blue")))
    case("recipe-not-utf8", build(), 2, "the recipe is not UTF-8", "a recipe in Latin-1",
         recipe_files(sub("name: hello", "name: hello # caf").encode() .replace(b"caf", b"caf\xe9")))
    case("recipe-nul-character", build(), 2, "r.yaml:26: not valid YAML: character U+0000 at column 47 is not allowed",
         "a NUL in a comment on line 26 of the recipe, reported today on two lines as line 1",
         recipe_files(sub('cmdline: "console=ttyS0 panic=-1 quiet"',
                          'cmdline: "console=ttyS0 panic=-1 quiet"  # caf\0')))
    case("recipe-two-documents", build(), 2, "exactly one YAML document", "two YAML documents in one file",
         recipe_files(RECIPE + "\n---\nname: other\n"))
    case("recipe-bad-yaml", build(), 2, "not valid YAML", "an unclosed flow sequence",
         recipe_files(sub("vcpus: [1, 2, 4, 8]", "vcpus: [1, 2, 4, 8")))
    case("recipe-not-mapping", build(), 2, "a recipe is a mapping of keys", "a recipe that is a list",
         recipe_files("- a\n- b\n"))
    case("recipe-missing-epoch", build(), 2, "source_date_epoch", "the required time stamp is missing",
         recipe_files(sub("source_date_epoch: 1735689600", "")))
    case("recipe-epoch-negative", build(), 2, "source_date_epoch", "a negative time stamp",
         recipe_files(sub("source_date_epoch: 1735689600", "source_date_epoch: -1")))
    case("recipe-file-traversal", build(), 2, "..", "a local file outside the recipe directory",
         recipe_files(sub("  modules: [sev-guest]", "  modules: [sev-guest]\n  files:\n"
                                                       "    - path: /etc/x\n      file: ../../etc/passwd")))
    case("recipe-guest-path-not-normal", build(), 2, "/etc/../x", "a guest path with '..'",
         recipe_files(sub("  modules: [sev-guest]", "  modules: [sev-guest]\n  files:\n"
                                                       "    - path: /etc/../x\n      content: hi")))
    case("recipe-cmdline-control-char", build(), 2, "cmdline", "a command line with a newline",
         recipe_files(sub('cmdline: "console=ttyS0 panic=-1 quiet"', 'cmdline: "console=ttyS0\\npanic=-1"')))
    case("recipe-huge-vcpus", build(), 2, "vcpus", "a shape with 2^40 vCPUs",
         recipe_files(sub("vcpus: [1, 2, 4, 8]", "vcpus: [1099511627776]")))
    case("recipe-unknown-vcpu-type", build(), 2, "EPYC-Nope", "a vCPU type that does not exist",
         recipe_files(sub("vcpu_types: [EPYC-v4, EPYC-Milan, EPYC-Genoa]", "vcpu_types: [EPYC-Nope]")))
    bomb = ("[&a [x, x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], "
            "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c], "
            "[*d, *d, *d, *d, *d, *d, *d, *d, *d]]")
    case("recipe-alias-bomb", build(), 2, "initrd.modules[0]: expected a string, got a list",
         "YAML aliases that would expand to 9^5 strings", recipe_files(sub("modules: [sev-guest]", f"modules: {bomb}")))
    case("recipe-symlink-loop", build(), 2, "cannot read the recipe", "the recipe path is a symlink loop",
         symlinks={"r.yaml": "r.yaml"})
    case("recipe-missing", ["lock", "{case}/none.yaml", "--offline"], 2, "no such recipe file",
         "a recipe path that does not exist")
    case("recipe-is-directory", ["lock", "{case}/dir.yaml", "--offline"], 2, "is a directory",
         "a directory given as the recipe", {"dir.yaml/x": b""})
    case("check-repro-bad-recipe", ["check-repro", "{case}/r.yaml"], 2, "r.yaml:1: source_date_epoch: missing "
         "required key", "a recipe without its time stamp, checked for reproducibility", recipe_files("name: x\n"))
    case("fetch-unknown-suite", ["fetch", "ovmf", "--suite", "forky", "--offline"], 2,
         "Unknown Debian suite 'forky'", "a suite the fetcher does not serve")
    case("fetch-bad-version", ["fetch", "ovmf", "--suite", "bookworm", "--version", "1:bad version", "--offline"], 2,
         "'1:bad version' is not a valid Debian version", "a version string with a space")
    case("lock-not-json", build(), 2, "the lock file is not valid JSON", "a lock file that is not JSON",
         recipe_files(RECIPE, b"{\"lock_version\": 1,"))
    case("lock-wrong-version", build(), 2, "not a blindbox lock file of version 1", "a lock file of version 7",
         recipe_files(RECIPE, LOCK.replace(b'"lock_version": 1', b'"lock_version": 7')))
    case("lock-inputs-wrong-type", build(), 2, "'inputs' must be a list", "inputs given as a string",
         recipe_files(RECIPE, b'{"lock_version": 1, "inputs": "all"}'))
    lock = json.loads(LOCK)
    lock["inputs"].append(lock["inputs"][0])
    case("lock-duplicate-input", build(), 2, "is pinned twice", "one input pinned twice",
         recipe_files(RECIPE, json.dumps(lock).encode()))
    lock = json.loads(LOCK)
    lock["inputs"][0]["sha256"] = "xyz"
    case("lock-bad-sha256", build(), 2, "sha256", "a pin whose sha256 is not 64 hex digits",
         recipe_files(RECIPE, json.dumps(lock).encode()))
    lock = json.loads(LOCK)
    lock["recipe"] = "../../etc/passwd"
    case("lock-names-another-recipe", build(), 2, "says it pins the recipe '../../etc/passwd', not 'r.yaml' beside it",
         "a lock file written for another recipe, used today as if it were this one's",
         recipe_files(RECIPE, json.dumps(lock).encode()))
    lock = json.loads(LOCK)
    del lock["inputs"][0]["debian"]["name"]
    case("lock-package-without-name", build(), 2, "entry 'firmware' has a package record without a package name",
         "a pinned Debian package whose record lost its name", recipe_files(RECIPE, json.dumps(lock).encode()))
    for cid, value, message, why in (
            ("lock-size-negative", -1, "entry 'firmware': 'size' is -1, not a size in bytes", "a pinned size of -1"),
            ("lock-size-boolean", True, "entry 'firmware' has no valid 'size'", "a pinned size that is a boolean")):
        lock = json.loads(LOCK)
        lock["inputs"][0]["size"] = value
        case(cid, build(), 2, message, why, recipe_files(RECIPE, json.dumps(lock).encode()))
    case("lock-deeply-nested", build(), 2, "the lock file nests brackets too deeply to be a lock file",
         "a lock file of 5,000 nested brackets", recipe_files(RECIPE, b"[" * 5000 + b"]" * 5000))
    case("lock-is-directory", build(), 2, "r.lock: the lock file is a directory; remove it",
         "a directory where the lock file goes", recipe_files(RECIPE, None, **{"r.lock/x": b""}))
    case("recipe-deeply-nested", build(), 2, "r.yaml:1: the recipe nests collections more than 32 levels deep",
         "a recipe of 5,000 nested brackets", recipe_files("name: " + "[" * 5000 + "]" * 5000 + "\n"))
    case("recipe-not-utf8-line-26", build(), 2, "r.yaml:26: the recipe is not UTF-8: byte 0xe9 at column 47",
         "a Latin-1 byte in a comment on line 26 of the recipe",
         recipe_files(sub('cmdline: "console=ttyS0 panic=-1 quiet"',
                          'cmdline: "console=ttyS0 panic=-1 quiet"  # caf').encode().replace(b"# caf", b"# caf\xe9")))
    case("recipe-file-symlink-to-host", ["lock", "{case}/r.yaml", "--offline"], 2,
         "'link.txt' is a symbolic link (or lies under one) that resolves to /etc/hostname, outside",
         "an initrd.files local file that is a symlink to a host file (it must stay in the recipe directory)",
         recipe_files(sub("  modules: [sev-guest]", "  modules: [sev-guest]\n  files:\n"
                                                       "    - path: /etc/x\n      file: link.txt"), LOCK),
         symlinks={"link.txt": "/etc/hostname"})
    case("check-repro-no-lock", ["check-repro", "{case}/r.yaml"], 2, "r.lock does not exist: the recipe's inputs "
         "are not pinned yet", "a reproducibility check of a recipe that has no lock file", recipe_files(RECIPE))
    case("lock-missing", build(), 2, "the recipe's inputs are not pinned yet", "a recipe built before it is locked",
         recipe_files(RECIPE, None))


# -- builder readers without a command of their own -------------------------------------------
    with_root = RECIPE.replace('cmdline: "console=ttyS0 panic=-1 quiet"', 'cmdline: "console=ttyS0"')
    for cid, root, message, why in (
            ("recipe-rootfs-two-sources", "{directory: a, tarball: b.tar}",
             "give exactly one source of the root filesystem", "a root filesystem from a directory and a tarball"),
            ("recipe-rootfs-ignore-corruption", "{directory: app, on_corruption: ignore}",
             "lets the guest read blocks that fail verification", "dm-verity told to ignore corruption"),
            ("recipe-rootfs-escapes", "{directory: ../..}", "without '..', so the recipe can be moved",
             "a root filesystem source outside the recipe's directory"),
            ("recipe-rootfs-bad-user", "{directory: app, user: 'x:y:z'}", "'x:y:z' is not a user",
             "a user with two colons")):
        case(cid, build(), 2, message, why, recipe_files(with_root + f"\nrootfs: {root}\n"))

def _tar(entries, mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tf:
        for name, kind, link, body in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, link, 0o755
            info.size = len(body)
            info.mtime = 1735689600
            info.uname = info.gname = "root"
            tf.addfile(info, io.BytesIO(body) if body else None)
    return buf.getvalue()


CONTROL = gzip.compress(_tar([("./control", tarfile.REGTYPE, "", b"Package: bad\nVersion: 1\nArchitecture: all\n")]),
                        mtime=0)


def deb(entries, *, data_name: str = "data.tar", data: bytes | None = None, first=("debian-binary", b"2.0\n"),
        extra=()) -> bytes:
    return ar_archive([first, ("control.tar.gz", CONTROL), *extra,
                (data_name, _tar(entries) if data is None else data)])


R, D, S, L = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def reader_cases() -> None:
    p = ["parse-file", "deb", "{case}/p.deb"]
    good = deb([("./usr", D, "", b""), ("./usr/x", R, "", b"hi\n")])
    case("deb-not-ar", p, 2, "does not start with an ar archive header", "a zip file named .deb",
         {"p.deb": b"PK\x03\x04" + bytes(60)})
    case("deb-truncated", p, 2, "is truncated (member", "a package cut in its data member",
         {"p.deb": good[:-200]})
    case("deb-member-header-damaged", p, 2, "damaged ar member header at offset 8",
         "an ar member header without its terminator", {"p.deb": patched(good, 8 + 58, b"xx")})
    case("deb-member-size-not-number", p, 2, "unreadable ar member header at offset 8",
         "an ar member size that is not a number", {"p.deb": patched(good, 8 + 48, b"12ab      ")})
    case("deb-member-huge-size", p, 2, "claims 9999999999 bytes", "an ar member claiming 10 GB",
         {"p.deb": patched(good, 8 + 48, b"9999999999")})
    case("deb-first-member", p, 2, "its first member is not debian-binary", "control first, then the rest",
         {"p.deb": deb([], first=("control.tar.gz", CONTROL))})
    case("deb-format-version", p, 2, "has package format b'3.0', not 2.x", "a package format this tool cannot read",
         {"p.deb": deb([], first=("debian-binary", b"3.0\n"))})
    case("deb-unexpected-member", p, 2, "contains an unexpected member 'evil'", "an extra ar member",
         {"p.deb": deb([], extra=[("evil", b"x")])})
    case("deb-no-data", p, 2, "lacks its data.tar member", "a package with no data member",
         {"p.deb": ar_archive([("debian-binary", b"2.0\n"), ("control.tar.gz", CONTROL)])})
    case("deb-unknown-compression", p, 2, "uses an unsupported compression ('.lzma')", "data.tar.lzma",
         {"p.deb": deb([], data_name="data.tar.lzma", data=b"\x5d\x00\x00")})
    case("deb-corrupt-gzip", p, 2, "is corrupt", "a data.tar.gz whose deflate stream is damaged",
         {"p.deb": deb([], data_name="data.tar.gz",
                       data=patched(gzip.compress(_tar([("./x", R, "", b"a" * 4000)]), mtime=0), 20, bytes(8)))})
    damaged = gzip.compress(_tar([("./x", R, "", b"a" * 4000)]), mtime=0)
    fextra = damaged[:3] + b"\x04" + damaged[4:]  # FEXTRA: the deflate data read as an extra field
    case("deb-gzip-extra-field", p, 2, "its data.tar.gz is corrupt (damaged gzip header)",
         "a data.tar.gz whose header announces an extra field that is not there",
         {"p.deb": deb([], data_name="data.tar.gz", data=fextra)})
    case("deb-control-gzip-extra-field", ["parse-file", "deb-control", "{case}/p.deb"], 2,
         "its control.tar.gz is corrupt (damaged gzip header)", "the same damage in control.tar.gz",
         {"p.deb": ar_archive([("debian-binary", b"2.0\n"), ("control.tar.gz", CONTROL[:3] + b"\x04" + CONTROL[4:]),
                        ("data.tar", _tar([]))])})
    case("deb-path-traversal", p, 2, "(path traversal)", "a member named ./usr/../../escaped",
         {"p.deb": deb([("./usr/../../escaped", R, "", b"evil")])})
    case("deb-absolute-name", p, 2, "contains the absolute member name '/tmp/escaped'", "an absolute member name",
         {"p.deb": deb([("/tmp/escaped", R, "", b"evil")])})
    case("deb-device-node", p, 2, "contains the device node './dev/sda'", "a block device in a package",
         {"p.deb": deb([("./dev/sda", tarfile.BLKTYPE, "", b"")])})
    case("deb-fifo", p, 2, "contains the FIFO './run/f'", "a FIFO in a package",
         {"p.deb": deb([("./run/f", tarfile.FIFOTYPE, "", b"")])})
    case("deb-symlink-out", p, 2, "points outside the package tree", "a symlink to ../../../..",
         {"p.deb": deb([("./etc/x", S, "../../../../escaped", b"")])})
    case("deb-hardlink-out", p, 2, "with '..'", "a hard link to ../escaped",
         {"p.deb": deb([("./x", L, "../escaped", b"")])})
    case("deb-symlink-chain-out", p, 2, "resolves outside the package tree",
         "two symlinks that each stay inside but leave the tree when followed together",
         {"p.deb": deb([("./a", D, "", b""), ("./a/b", D, "", b""), ("./a/b/up", S, "../..", b""),
                        ("./t", S, "a/b/up/..", b"")])})
    case("deb-write-through-symlink", p, 2, "refusing to write through it", "a file written under a symlink",
         {"p.deb": deb([("./lnk", S, "usr", b""), ("./usr", D, "", b""), ("./lnk/escaped", R, "", b"evil")])})
    case("deb-control-missing", ["parse-file", "deb-control", "{case}/p.deb"], 2, "has no control file",
         "a control.tar without ./control",
         {"p.deb": ar_archive([("debian-binary", b"2.0\n"),
                        ("control.tar.gz", gzip.compress(_tar([("./md5sums", R, "", b"x")]), mtime=0)),
                        ("data.tar", _tar([]))])})
    bz = make_bzimage("6.1.0-test")
    case("bzimage-wrong-magic", ["parse-file", "bzimage", "{case}/vmlinuz"], 2, "is not a bzImage (no 'HdrS'",
         "a kernel image without the boot header magic", {"vmlinuz": patched(bz, 0x202, b"HdrX")})
    case("bzimage-truncated", ["parse-file", "bzimage", "{case}/vmlinuz"], 2, "is not a bzImage",
         "a kernel image shorter than its setup header", {"vmlinuz": bz[:0x200]})
    case("bzimage-no-version", ["parse-file", "bzimage", "{case}/vmlinuz"], 2, "has no kernel version string",
         "the version pointer aims at zeros", {"vmlinuz": patched(bz, 0x20E, struct.pack("<H", 0xE00))})
    mod = make_module("sev-guest", depends=["tsm"])
    case("module-not-elf", ["parse-file", "module", "{case}/sev-guest.ko"], 2, "is not an ELF file",
         "a kernel module that is text", {"sev-guest.ko": b"not a module\n"})
    case("module-section-table-outside", ["parse-file", "module", "{case}/sev-guest.ko"], 2,
         "is a damaged ELF file (section header table out of range)", "section headers past the end of the file",
         {"sev-guest.ko": patched(mod, 0x28, struct.pack("<Q", 0xFFFFFFFF))})
    elf = make_elf(interp="/lib64/ld-linux-x86-64.so.2", needed=["libc.so.6"])
    at = elf.rindex(struct.pack("<q", 5))
    case("elf-not-elf", ["parse-file", "elf", "{case}/prog"], 2, "is not an ELF file",
         "a shell script given as a program", {"prog": b"#!/bin/sh\necho hi\n"})
    case("elf-no-string-table", ["parse-file", "elf", "{case}/prog"], 2, "its headers contradict each other",
         "a dynamic segment without DT_STRTAB", {"prog": patched(elf, at, struct.pack("<q", 0x6FFFFEF5))})
    case("elf-truncated", ["parse-file", "elf", "{case}/prog"], 2, "as ELF:", "an ELF file cut after its header",
         {"prog": elf[:70]})
    from builder.steps import cpio
    a = cpio.Archive()
    a.add_file("/init", b"#!/bin/sh\n", 0o755)
    arch = a.to_bytes(mtime=0)
    case("cpio-truncated", ["parse-file", "cpio", "{case}/initrd"], 2, "is truncated", "an archive cut in a member",
         {"initrd": arch[:130]})
    case("cpio-wrong-magic", ["parse-file", "cpio", "{case}/initrd"], 2, "no newc header magic at offset 0",
         "an old-style (odc) cpio header", {"initrd": b"070707" + arch[6:]})
    case("cpio-bad-hex", ["parse-file", "cpio", "{case}/initrd"], 2, "malformed newc header at offset 0",
         "a header field that is not hexadecimal", {"initrd": patched(arch, 6, b"zzzzzzzz")})
    import uuid

    from measure import verity
    with tempfile.TemporaryDirectory() as tmp:
        data, hash_ = Path(tmp) / "data", Path(tmp) / "hash"
        data.write_bytes(bytes(8 * 4096))
        verity.format_files(data, hash_, verity.VerityParams(salt=b"\x01" * 32, uuid=uuid.UUID(int=1)))
        sb = hash_.read_bytes()[:verity.SUPERBLOCK_SIZE]
    v = ["parse-file", "verity-superblock", "{case}/hash.img"]
    case("verity-superblock-truncated", v, 2, "must be exactly 0x200 bytes, got 0x64",
         "a hash device cut inside its superblock", {"hash.img": sb[:100]})
    case("verity-superblock-wrong-magic", v, 2, "has no verity superblock at byte 0",
         "a superblock whose signature is not \"verity\"", {"hash.img": patched(sb, 0, b"VERITY")})
    case("verity-superblock-version-2", v, 2, "has no verity superblock at byte 0",
         "a superblock of a version veritysetup does not write", {"hash.img": patched(sb, 8, b"\x02")})


#: inputs that cannot be made again byte for byte (an encrypted key has a random salt)
PREVIOUS: dict[str, bytes] = {}


def main() -> None:
    for name in ("id-key-encrypted/id.pem",):
        if (CASES_DIR / name).is_file():
            PREVIOUS[name] = (CASES_DIR / name).read_bytes()
    shutil.rmtree(CASES_DIR, ignore_errors=True)
    CASES_DIR.mkdir()
    firmware_cases()
    vmsa_cases()
    report_cases()
    bundle_cases()
    manifest_edit_cases()
    option_cases()
    key_cases()
    recipe_cases()
    reader_cases()
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    # one case per line: adding or editing a case is a one-line change
    (HERE / "cases.json").write_text("[\n" + ",\n".join(json.dumps(c) for c in CASES) + "\n]\n")
    sys.stdout.write(f"{len(CASES)} cases in {CASES_DIR.relative_to(ROOT)}\n")


if __name__ == "__main__":
    main()
