"""The simulated PSP (tests/simattester.py): what it measures, what it signs, how it answers.

Fast tests use sev-snp-measure's 4 KiB AmdSev firmware tail with a small kernel, initrd and
command line; the manifest they verify against carries the digest *blindbox's* calculator
computes, so a passing verify-report also means the calculator and the oracle agree.  One
test uses the real hello bundle (integration, network).
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from blindbox.audit.report import Product, parse_report
from blindbox.cli import main as blindbox_main
from measure import MeasureRequest, SevMode, launch_digest
from measure.attested_tls import SIM_MAGIC
from measure.cpu import CPU_SIGS
from tests.audit.manifestdoc import CMDLINE, entry, write_bundle
from tests.conftest import VECTORS
from tests.measure import oracle
from tests.simattester import (CHIP_ID_MARKER, READY, REQUEST_SIZE, SimulatedPsp, SimulatorError, encode_request,
                               guestfwd, serve_one, simulator_argv)

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"
SHAPE = dict(vcpus=2, vcpu_type="EPYC-Milan", guest_features=0x1)
GUIDS = {uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "VCEK",
         uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ASK",
         uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ARK"}
REPORT_DATA = bytes(range(0x40, 0x80))


# ---------------------------------------------------------------------------------------
# helpers


def parse_table(table: bytes) -> list[tuple[str, bytes]]:
    """A small, independent reader of AMD's GUID table: [(name, DER)], strict about its shape; GUIDs in
    the order their text is written (RFC 4122), as AMD's tools put them on the wire."""
    out, pos = [], 0
    while True:
        assert pos + 24 <= len(table), "the table has no terminating all-zero entry"
        guid, offset, length = table[pos:pos + 16], table[pos + 16:pos + 20], table[pos + 20:pos + 24]
        pos += 24
        if guid == bytes(16):
            assert offset == length == bytes(4)
            break
        start, size = int.from_bytes(offset, "little"), int.from_bytes(length, "little")
        assert start >= pos and start + size <= len(table)
        out.append((GUIDS[uuid.UUID(bytes=guid)], table[start:start + size]))
    return out


def read_answer(data: bytes) -> tuple[bytes, bytes]:
    assert data.startswith(SIM_MAGIC)
    pos = len(SIM_MAGIC)
    size = int.from_bytes(data[pos:pos + 4], "big")
    report = data[pos + 4:pos + 4 + size]
    pos += 4 + size
    size = int.from_bytes(data[pos:pos + 4], "big")
    table = data[pos + 4:pos + 4 + size]
    assert len(report) == 1184 and pos + 4 + size == len(data)
    return report, table


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A bundle whose manifest carries blindbox's own digest for SHAPE (not the oracle's)."""
    d = tmp_path_factory.mktemp("sim-bundle")
    write_bundle(d, FIRMWARE.read_bytes(), [])
    digest = launch_digest(MeasureRequest(
        mode=SevMode.SEV_SNP, ovmf=d / "OVMF.amdsev.fd", vcpus=SHAPE["vcpus"], vcpu_sig=CPU_SIGS[SHAPE["vcpu_type"]],
        guest_features=SHAPE["guest_features"], kernel=d / "bzImage", initrd=d / "initrd", append=CMDLINE)).digest
    write_bundle(d, FIRMWARE.read_bytes(), [entry(SHAPE["vcpus"], SHAPE["vcpu_type"], SHAPE["guest_features"],
                                                   digest)])
    return d


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sim-chain")


def psp_for(bundle: Path, chain_dir: Path | None, **overrides) -> SimulatedPsp:
    args = dict(ovmf=bundle / "OVMF.amdsev.fd", kernel=bundle / "bzImage", initrd=bundle / "initrd",
                append=(bundle / "cmdline").read_text(), chain_dir=chain_dir, **SHAPE)
    args.update(overrides)
    return SimulatedPsp(**args)


@pytest.fixture(scope="module")
def psp(bundle, chain_dir) -> SimulatedPsp:
    return psp_for(bundle, chain_dir)


def write_evidence(psp: SimulatedPsp, directory: Path, report: bytes) -> tuple[Path, list[Path], Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.bin").write_bytes(report)
    certs = []
    for name, der in parse_table(psp.cert_table()):
        certs.append(directory / f"{name.lower()}.der")
        certs[-1].write_bytes(der)
    (directory / "ark.pem").write_bytes(psp.trust_root_pem())
    return directory / "report.bin", certs, directory / "ark.pem"


def run_cli(argv, capsys) -> tuple[int, str]:
    rc = blindbox_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out + err


def sim_argv(bundle: Path, chain_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.simattester", "--ovmf", str(bundle / "OVMF.amdsev.fd"),
            "--kernel", str(bundle / "bzImage"), "--initrd", str(bundle / "initrd"),
            "--append-file", str(bundle / "cmdline"), "--vcpus", str(SHAPE["vcpus"]),
            "--vcpu-type", SHAPE["vcpu_type"], "--chain-dir", str(chain_dir), *extra]


# ---------------------------------------------------------------------------------------
# measurement and report


def test_measurement_is_the_oracles_and_matches_the_manifest(psp, bundle):
    expected = oracle.oracle_digest("snp", ovmf=bundle / "OVMF.amdsev.fd", vcpus=SHAPE["vcpus"],
                                    vcpu_sig=oracle.CPU_SIGS[SHAPE["vcpu_type"]], kernel=bundle / "bzImage",
                                    initrd=bundle / "initrd", append=CMDLINE, guest_features=0x1)
    assert psp.measurement == expected
    other = psp_for(bundle, None, append=CMDLINE + " blindbox.attester=simulated:10.0.2.100:4050")
    assert other.measurement != psp.measurement


def test_report_fields(psp):
    report = parse_report(psp.report(REPORT_DATA, vmpl=2))
    assert report.report_data == REPORT_DATA and report.vmpl == 2
    assert report.measurement == psp.measurement
    assert report.chip_id.startswith(CHIP_ID_MARKER)
    assert (report.version, report.signature_algo, report.policy) == (3, 1, 0x30000)
    assert (report.cpuid_fam_id, report.cpuid_mod_id) == (0x19, 0x01)
    assert report.current_tcb == report.reported_tcb == report.launch_tcb == report.committed_tcb != 0
    for cert in (psp.chain.ark, psp.chain.ask, psp.chain.vcek):
        text = cert.subject.rfc4514_string()
        assert "blindbox simulated" in text and "not AMD" in text


@pytest.mark.parametrize("product, real", [(Product.MILAN, "milan_oc_release"), (Product.GENOA, "genoa_oc")])
def test_report_fields_are_those_of_a_real_part(bundle, product, real):
    """Everything but the launch, the chip and the signature is what a real part of the product reports."""
    ours = parse_report(psp_for(bundle, None, product=product).report(REPORT_DATA))
    theirs = parse_report((VECTORS / "oak" / f"{real}_attestation_report.bin").read_bytes())
    same = ["version", "guest_svn", "policy", "vmpl", "signature_algo", "current_tcb", "platform_info", "signer_info",
            "reported_tcb", "committed_tcb", "launch_tcb", "report_id_ma", "current_build", "current_minor",
            "current_major", "committed_build", "committed_minor", "committed_major", "cpuid_fam_id",
            "cpuid_mod_id", "cpuid_step", "family_id", "image_id", "host_data", "id_key_digest",
            "author_key_digest"]
    if product is Product.GENOA:
        same += ["launch_mit_vector", "current_mit_vector"]
    assert {f: getattr(ours, f) for f in same} == {f: getattr(theirs, f) for f in same}
    assert type(ours) is type(theirs)


def test_genoa_report_is_version_5_and_turin_is_refused(bundle):
    report = parse_report(psp_for(bundle, None, product=Product.GENOA).report(REPORT_DATA))
    assert (report.version, report.cpuid_fam_id, report.cpuid_mod_id) == (5, 0x19, 0x11)
    with pytest.raises(SimulatorError, match="only 8 bytes"):
        psp_for(bundle, None, product=Product.TURIN)


def test_verify_report_passes_with_trust_root_and_manifest(psp, bundle, tmp_path, capsys):
    report, certs, root = write_evidence(psp, tmp_path, psp.report(REPORT_DATA))
    rc, out = run_cli(["verify-report", report, *[a for c in certs for a in ("--certs", c)], "--trust-root", root,
                       "--manifest", bundle / "manifest.json", "--report-data", REPORT_DATA.hex(), "--vmpl", "0"],
                      capsys)
    assert rc == 0, out
    assert "matching shapes: qemu:EPYC-Milan:2:0x1" in out
    assert "NOT AMD's" in out


def test_verify_report_fails_without_trust_root(psp, bundle, tmp_path, capsys):
    report, certs, _ = write_evidence(psp, tmp_path, psp.report(REPORT_DATA))
    rc, out = run_cli(["verify-report", report, *[a for c in certs for a in ("--certs", c)],
                       "--manifest", bundle / "manifest.json"], capsys)
    assert rc == 3
    assert "FAIL  chain" in out and "does not end at a trusted root" in out


def test_bad_inputs_are_one_sentence(bundle, tmp_path):
    with pytest.raises(SimulatorError, match="is not a readable file"):
        psp_for(bundle, None, kernel=tmp_path / "missing")
    with pytest.raises(SimulatorError, match="knows no vCPU type 'EPYC-Nope'"):
        psp_for(bundle, None, vcpu_type="EPYC-Nope")
    with pytest.raises(SimulatorError, match="bit 17"):
        psp_for(bundle, None, policy=0)
    with pytest.raises(SimulatorError, match="sev-snp-measure cannot measure these inputs"):
        psp_for(bundle, None, ovmf=bundle / "initrd")


# ---------------------------------------------------------------------------------------
# the chain directory


def test_cert_table_round_trips(psp):
    table = parse_table(psp.cert_table())
    assert [name for name, _ in table] == ["VCEK", "ASK", "ARK"]
    der = serialization.Encoding.DER
    assert [d for _, d in table] == [psp.chain.vcek.public_bytes(der), psp.chain.ask.public_bytes(der),
                                     psp.chain.ark.public_bytes(der)]
    ark = x509.load_pem_x509_certificate(psp.trust_root_pem())
    assert ark.public_bytes(der) == table[2][1]
    raw = psp.cert_table()
    assert raw[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")      # VCEK, bytes as the text reads
    assert int.from_bytes(raw[16:20], "little") == 4 * 24                   # past three entries and the end


def _table_in_new_process(args) -> bytes:
    bundle, chain_dir = args
    return psp_for(Path(bundle), Path(chain_dir)).cert_table()


def test_chain_is_made_once_and_shared_across_processes(bundle, tmp_path):
    chain_dir = tmp_path / "chain"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        tables = pool.map(_table_in_new_process, [(str(bundle), str(chain_dir))] * 3)
    assert len(set(tables)) == 1
    assert psp_for(bundle, chain_dir).cert_table() == tables[0]
    assert sorted(p.name for p in chain_dir.iterdir()) == [".lock", "milan"]


def test_corrupt_chain_dir_is_one_sentence(bundle, tmp_path):
    psp_for(bundle, tmp_path)
    (tmp_path / "milan" / "vcek.der").write_bytes(b"garbage")
    with pytest.raises(SimulatorError, match="incomplete or corrupt"):
        psp_for(bundle, tmp_path)


# ---------------------------------------------------------------------------------------
# serving


class _Bytes:
    def __init__(self, data: bytes):
        self.data = data
        self.read_sizes: list[int] = []

    def read(self, size: int) -> bytes:
        self.read_sizes.append(size)
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


class _Sink:
    def __init__(self):
        self.data = b""

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass


def test_serve_one_reads_a_bounded_request(psp):
    rfile, wfile = _Bytes(encode_request(REPORT_DATA, 1) + b"x" * 1000), _Sink()
    serve_one(psp, rfile, wfile)
    assert sum(rfile.read_sizes) == REQUEST_SIZE
    report, table = read_answer(wfile.data)
    assert parse_report(report).report_data == REPORT_DATA and parse_report(report).vmpl == 1
    assert table == psp.cert_table()


@pytest.mark.parametrize("request_bytes, reason", [
    (b"", "is 0 bytes"),
    (encode_request(REPORT_DATA)[:-1], "is 86 bytes"),
    (b"GET / HTTP/1.1\r\n" + bytes(71), "does not start with"),
    (encode_request(REPORT_DATA, 4), "VMPL 4"),
])
def test_malformed_request_gets_no_answer(psp, request_bytes, reason):
    wfile, errors = _Sink(), []
    serve_one(psp, _Bytes(request_bytes), wfile, on_error=errors.append)
    assert wfile.data == b""
    assert len(errors) == 1 and reason in errors[0]


class _TimesOut:
    def read(self, size: int) -> bytes:
        raise TimeoutError("timed out")


def test_a_stalled_peer_gets_no_answer(psp):
    wfile, errors = _Sink(), []
    serve_one(psp, _TimesOut(), wfile, on_error=errors.append)
    assert wfile.data == b""
    assert errors == ["the connection failed before a whole request arrived (timed out)."]


def test_stdio_mode_in_a_subprocess(bundle, chain_dir, psp):
    proc = subprocess.run(sim_argv(bundle, chain_dir), input=encode_request(REPORT_DATA, 0), capture_output=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report, table = read_answer(proc.stdout)
    assert table == psp.cert_table()        # the same chain as this process's
    assert parse_report(report).measurement == psp.measurement


def test_stdio_mode_refuses_a_malformed_request(bundle, chain_dir):
    proc = subprocess.run(sim_argv(bundle, chain_dir), input=b"hello\n", capture_output=True, cwd=ROOT, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert b"Traceback" not in proc.stderr and b"refused a request" in proc.stderr


@pytest.mark.parametrize("fault, check, message", [
    ("other-chip", "signature", "the report signature does not verify"),
    ("expired-vcek", "chain", "is valid from 2020-01-01 00:00 to 2021-01-01 00:00 UTC"),
])
def test_faults_are_refused_by_verify_report(bundle, chain_dir, psp, tmp_path, capsys, fault, check, message):
    proc = subprocess.run(sim_argv(bundle, chain_dir, "--fault", fault), input=encode_request(REPORT_DATA),
                          capture_output=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report, table = read_answer(proc.stdout)
    assert parse_report(report).chip_id == parse_report(psp.report(REPORT_DATA)).chip_id
    certs = dict(parse_table(table))
    assert certs["ASK"] == dict(parse_table(psp.cert_table()))["ASK"]      # the same chain otherwise
    (tmp_path / "report.bin").write_bytes(report)
    (tmp_path / "vcek.der").write_bytes(certs["VCEK"])
    (tmp_path / "ask.der").write_bytes(certs["ASK"])
    (tmp_path / "ark.pem").write_bytes(psp.trust_root_pem())
    rc, out = run_cli(["verify-report", tmp_path / "report.bin", "--certs", tmp_path / "vcek.der", "--certs",
                       tmp_path / "ask.der", "--trust-root", tmp_path / "ark.pem",
                       "--manifest", bundle / "manifest.json"], capsys)
    assert rc == 3
    assert f"FAIL  {check}" in out and message in out
    assert [line.split()[1] for line in out.splitlines() if line.lstrip().startswith("FAIL")] == [check]


def test_unknown_fault_is_one_sentence(bundle):
    with pytest.raises(SimulatorError, match="no simulated fault 'nope'"):
        psp_for(bundle, None, fault="nope")


def test_cli_bad_input_is_exit_2_without_traceback(bundle, chain_dir, tmp_path):
    argv = sim_argv(bundle, chain_dir)
    argv[argv.index("--kernel") + 1] = str(tmp_path / "missing")
    proc = subprocess.run(argv, input=b"", capture_output=True, cwd=ROOT, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert b"is not a readable file" in proc.stderr and b"Traceback" not in proc.stderr


def test_listen_mode(bundle, chain_dir, psp):
    proc = subprocess.Popen(sim_argv(bundle, chain_dir, "--listen", "127.0.0.1:0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith(READY + " 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(100))
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b""                    # closed without an answer
        for vmpl in (0, 3):                              # still serving
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(encode_request(REPORT_DATA, vmpl))
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            report, table = read_answer(data)
            assert parse_report(report).vmpl == vmpl and table == psp.cert_table()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err and b"refused a request" in err


def _spawn_like_slirp(item: str) -> tuple[subprocess.Popen, socket.socket]:
    """Start a guestfwd ``cmd:`` as libslirp does: its command split like a shell would (no shell runs),
    commas un-doubled, one socket as stdin, stdout and stderr, in another directory."""
    command = item.split("-cmd:", 1)[1].replace(",,", ",")
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(shlex.split(command), stdin=theirs, stdout=theirs, stderr=theirs, cwd="/",
                            start_new_session=True)
    theirs.close()
    return proc, ours


def _exchange(item: str, request: bytes, *, end: bool = True) -> tuple[int, bytes]:
    """Send ``request`` (then end the stream, or keep it open as a guest waiting for its answer)."""
    proc, sock = _spawn_like_slirp(item)
    with sock:
        sock.settimeout(60)
        sock.sendall(request)
        if end:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return proc.wait(timeout=60), data


def test_guestfwd_command_answers_on_its_one_socket(bundle, tmp_path, psp):
    chain_dir = tmp_path / "chain,with,commas"
    item = guestfwd(simulator_argv(ovmf=bundle / "OVMF.amdsev.fd", kernel=bundle / "bzImage",
                                   initrd=bundle / "initrd", append_file=bundle / "cmdline", chain_dir=chain_dir,
                                   **SHAPE))
    assert item.startswith("guestfwd=tcp:10.0.2.100:4050-cmd:env ") and "chain,,with,,commas" in item
    rc, data = _exchange(item, encode_request(REPORT_DATA, 0), end=False)
    assert rc == 0
    report, table = read_answer(data)          # nothing but the answer reached the socket
    assert parse_report(report).measurement == psp.measurement
    assert parse_table(table)[0][0] == "VCEK"
    # a malformed request: not one byte back, not even a diagnostic; that goes to the log
    rc, data = _exchange(item, b"GET / HTTP/1.0\r\n\r\n")
    assert (rc, data) == (2, b"")
    assert "refused a request" in (chain_dir / "simattester.log").read_text()


def test_debug_policy_is_reported_and_refused_by_verify_report(bundle, tmp_path, capsys):
    psp = psp_for(bundle, tmp_path / "chain", policy=0xB0000)
    report, certs, root = write_evidence(psp, tmp_path, psp.report(REPORT_DATA))
    assert parse_report(report.read_bytes()).policy == 0xB0000
    rc, out = run_cli(["verify-report", report, *[a for c in certs for a in ("--certs", c)], "--trust-root", root,
                       "--manifest", bundle / "manifest.json"], capsys)
    assert rc == 3 and "FAIL  policy.debug" in out


# ---------------------------------------------------------------------------------------
# the real hello bundle


@pytest.mark.integration
@pytest.mark.network
def test_hello_bundle(tmp_path, capsys):
    from builder.manifest import Manifest
    from tests.integration.hellobuild import built_hello

    out = built_hello().out
    manifest = Manifest.from_json((out / "manifest.json").read_bytes())
    files = {o.role: out / o.file for o in manifest.outputs}
    rec = manifest.measurements[0]
    launch = dict(ovmf=files["firmware"], kernel=files["kernel"], initrd=files["initrd"], vcpus=rec.vcpus,
                  guest_features=rec.guest_features)
    psp = SimulatedPsp(**launch, append=files["cmdline"].read_bytes().decode(), vcpu_type=rec.vcpu_type,
                       chain_dir=tmp_path / "chain")
    assert psp.measurement == oracle.oracle_digest("snp", **launch, vcpu_sig=oracle.CPU_SIGS[rec.vcpu_type],
                                                   append=manifest.cmdline)
    assert psp.measurement.hex() == rec.measurement
    report, certs, root = write_evidence(psp, tmp_path / "evidence", psp.report(REPORT_DATA))
    certs_args = [a for c in certs for a in ("--certs", c)]
    rc, text = run_cli(["verify-report", report, *certs_args, "--trust-root", root,
                        "--manifest", out / "manifest.json", "--shape", rec.shape], capsys)
    assert rc == 0, text
    rc, text = run_cli(["verify-report", report, *certs_args, "--manifest", out / "manifest.json"], capsys)
    assert rc == 3 and "FAIL  chain" in text


assert os.sep  # the module runs on POSIX only (fcntl locks)
