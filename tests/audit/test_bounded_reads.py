"""Every file a command reads whole is bounded by its format's limit (docs/limits.md).

An endless stream (``/dev/zero``) or a huge file given as a report, certificate, VMSA,
key, manifest, signature or cmdline gives exit 2 and one sentence, quickly, instead of
a MemoryError after seconds.  The CLI cases run in this process; a few run in a child
limited to 512 MiB of address space, where the old unbounded reads died.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from blindbox.cli import main
from blindbox.audit import limits as audit_limits
from measure import limits
from tests.builder.keys import derived_key, write_key
from tests.audit.manifestdoc import entry, manifest_doc
from tests.conftest import VECTORS
from tests.memlimit import assert_refused, run_blindbox

REPORT = VECTORS / "go-sev-guest" / "attestation.bin"
AMDSEV = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"
MEASUREMENT = "00" * 48
ZERO = "/dev/zero"


@pytest.fixture
def files(tmp_path):
    key = write_key(tmp_path / "id.pem", derived_key("bounded"))
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    return {"key": key, "manifest": manifest, "tmp": tmp_path}


def _big(tmp_path, size: int):
    """A sparse regular file one page over ``size``: refused by its size, never read."""
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(size + 4096)
    return path


# name -> (argv given the files and the hostile path, the "what" and limit the message names)
CASES = {
    "report": (lambda f, p: ["verify-report", p, "--no-signature"], "attestation report",
               audit_limits.MAX_REPORT_FILE_BYTES),
    "explain-report": (lambda f, p: ["explain-report", p, "--ovmf", AMDSEV], "attestation report",
                       audit_limits.MAX_REPORT_FILE_BYTES),
    "certs-file": (lambda f, p: ["verify-report", REPORT, "--certs", p], "certificate",
                   audit_limits.MAX_CERTIFICATE_FILE_BYTES),
    "trust-root": (lambda f, p: ["verify-report", REPORT, "--trust-root", p], "trust root",
                   audit_limits.MAX_CERTIFICATE_FILE_BYTES),
    "verify-report-manifest": (lambda f, p: ["verify-report", REPORT, "--no-signature", "--manifest", p],
                               "manifest", audit_limits.MAX_MANIFEST_BYTES),
    "vmsa": (lambda f, p: ["explain-vmsa", p, p], "VMSA", limits.MAX_VMSA_FILE_BYTES),
    "id-key": (lambda f, p: ["id-block", MEASUREMENT, "--id-key", p], "ID key", audit_limits.MAX_KEY_FILE_BYTES),
    "author-key": (lambda f, p: ["id-block", MEASUREMENT, "--id-key", f["key"], "--author-key", p],
                   "author key", audit_limits.MAX_KEY_FILE_BYTES),
    "sign-manifest": (lambda f, p: ["sign-manifest", p, "--key", f["key"], "--output", f["tmp"] / "sig"],
                      "manifest", audit_limits.MAX_MANIFEST_BYTES),
    "signing-key": (lambda f, p: ["sign-manifest", f["manifest"], "--key", p], "signing key",
                    audit_limits.MAX_KEY_FILE_BYTES),
    "verify-manifest": (lambda f, p: ["verify-manifest", p, "--key", f["key"], "--signature", f["manifest"]],
                        "manifest", audit_limits.MAX_MANIFEST_BYTES),
    "signature": (lambda f, p: ["verify-manifest", f["manifest"], "--key", f["key"], "--signature", p],
                  "signature", audit_limits.MAX_SIGNATURE_FILE_BYTES),
    "public-key": (lambda f, p: ["verify-manifest", f["manifest"], "--key", p, "--signature", f["manifest"]],
                   "public key", audit_limits.MAX_KEY_FILE_BYTES),
    "provenance": (lambda f, p: ["sign-manifest", "--provenance", p, "--key", f["key"], "--envelope",
                                 f["tmp"] / "envelope"], "provenance", audit_limits.MAX_PROVENANCE_BYTES),
    "envelope": (lambda f, p: ["verify-manifest", "--envelope", p, "--key", f["key"]], "envelope",
                 audit_limits.MAX_ENVELOPE_BYTES),
    "vars-file": (lambda f, p: ["measure", "--mode", "snp:svsm", "--vcpus", "1", "--vcpu-type", "EPYC-v4",
                                "--ovmf", AMDSEV, "--svsm", AMDSEV, "--vars-file", p],
                  "OVMF variable store", limits.MAX_VARS_FILE_BYTES),
}


def _refused(argv, capsys, what, limit, path):
    start = time.monotonic()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert time.monotonic() - start < 10
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"the {what} file '{path}' is larger than {limit:,} bytes" in err, err


@pytest.mark.parametrize("name", CASES)
def test_endless_stream_refused(name, files, capsys):
    argv, what, limit = CASES[name]
    _refused(argv(files, ZERO), capsys, what, limit, ZERO)


@pytest.mark.parametrize("name", CASES)
def test_huge_file_refused_by_its_size(name, files, capsys):
    argv, what, limit = CASES[name]
    path = _big(files["tmp"], limit)
    _refused(argv(files, path), capsys, what, limit, path)


@pytest.mark.parametrize("name", ["report", "certs-file", "vmsa", "id-key", "verify-report-manifest", "signature"])
def test_endless_stream_under_a_memory_limit(name, files):
    argv, what, limit = CASES[name]
    assert_refused(run_blindbox(argv(files, ZERO)), f"the {what} file '{ZERO}' is larger than {limit:,} bytes")


def test_exactly_the_limit_is_read(tmp_path):
    """The limit is the format's maximum: a VMSA page of exactly 4096 bytes is read."""
    from measure.inputs import read_input
    path = tmp_path / "vmsa.bin"
    path.write_bytes(bytes(limits.MAX_VMSA_FILE_BYTES))
    assert len(read_input(path, "VMSA", limit=limits.MAX_VMSA_FILE_BYTES)) == 4096
    path.write_bytes(bytes(limits.MAX_VMSA_FILE_BYTES + 1))
    with pytest.raises(Exception, match="larger than 4,096 bytes"):
        read_input(path, "VMSA", limit=limits.MAX_VMSA_FILE_BYTES)


def test_a_pipe_within_the_limit_is_read(tmp_path):
    """Process substitution (a pipe) still works for a report of the right size."""
    from measure.inputs import read_input
    r, w = os.pipe()
    os.write(w, REPORT.read_bytes())
    os.close(w)
    try:
        assert read_input(f"/proc/self/fd/{r}", "attestation report",
                          limit=audit_limits.MAX_REPORT_FILE_BYTES) == REPORT.read_bytes()
    finally:
        os.close(r)


def test_certs_directory_entry_too_large(files, capsys):
    certs = files["tmp"] / "certs"
    certs.mkdir()
    (certs / "vcek.der").write_bytes((VECTORS / "go-sev-guest" / "vcek.testcer").read_bytes())
    big = _big(files["tmp"], audit_limits.MAX_CERTIFICATE_FILE_BYTES)
    os.rename(big, certs / "zz-huge.pem")
    _refused(["verify-report", REPORT, "--certs", certs], capsys, "certificate",
             audit_limits.MAX_CERTIFICATE_FILE_BYTES, certs / "zz-huge.pem")


def _bundle(tmp_path, cmdline_size):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    with open(bundle / "cmdline", "wb") as f:  # sparse: a regular file far larger than any command line
        f.truncate(cmdline_size)
    doc = manifest_doc([entry(1, "EPYC-v4", 1, "00" * 48)])
    (bundle / "manifest.json").write_text(json.dumps(doc))
    return bundle


def test_rederive_cmdline_stream(tmp_path, capsys):
    bundle = _bundle(tmp_path, 64 << 20)
    _refused(["rederive", bundle], capsys, "cmdline", limits.MAX_CMDLINE_FILE_BYTES, bundle / "cmdline")


def test_rederive_manifest_stream(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").symlink_to(ZERO)
    _refused(["rederive", bundle], capsys, "manifest", audit_limits.MAX_MANIFEST_BYTES, bundle / "manifest.json")


@pytest.mark.parametrize("option", ["--kernel", "--initrd"])
def test_kernel_and_initrd_streams_are_bounded(option, capsys):
    argv = ["measure", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", AMDSEV]
    argv += ["--kernel", ZERO] if option == "--kernel" else ["--kernel", "/dev/null", "--initrd", ZERO]
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"'{ZERO}' is not a regular file and gives more than 268,435,456 bytes" in err
    assert "write it to a file" in err


def test_kernel_from_dev_null_still_measures(capsys):
    """/dev/null is a device too, and the published test vectors use it as an empty initrd."""
    rc = main(["measure", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", str(AMDSEV),
               "--kernel", "/dev/null", "--initrd", "/dev/null"])
    assert rc == 0, capsys.readouterr().err


@pytest.mark.parametrize("target", [ZERO, "/nonexistent/vcek.der"])
def test_certs_directory_entry_that_is_not_a_regular_file(target, files, capsys):
    """A stream in a --certs directory was skipped without a word; now it is named (exit 2)."""
    certs = files["tmp"] / "certs"
    certs.mkdir()
    (certs / "vcek.der").write_bytes((VECTORS / "go-sev-guest" / "vcek.testcer").read_bytes())
    (certs / "subdir").mkdir()   # directories are still passed over
    (certs / "zero.pem").symlink_to(target)
    rc = main(["verify-report", str(REPORT), "--certs", str(certs)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"'{certs / 'zero.pem'}' in the --certs directory is not a regular file" in err
    assert len(err.strip().splitlines()) == 1
