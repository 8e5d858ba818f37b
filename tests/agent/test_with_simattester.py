"""The agent against tests/simattester.py, the simulated PSP: its evidence verifies with verify-report.

The simulator signs with a test chain (never AMD's) and computes MEASUREMENT with sev-snp-measure;
the agent binds its TLS key and the client's nonce into REPORT_DATA; ``blindbox verify-report``
then accepts the report the client received, with the REPORT_DATA the client computes itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid

import pytest

from blindbox.audit.report import parse_report
from blindbox.cli import main as blindbox_main
from measure import MeasureRequest, SevMode, attested_tls, launch_digest
from measure.cpu import CPU_SIGS
from tests.audit.manifestdoc import CMDLINE, entry, write_bundle
from tests.conftest import VECTORS
from tests.simattester import CHIP_ID_MARKER, listening, simulator_argv

from .standin import LoopbackApp
from .test_server import OPENSSL, Running, client_context

FIRMWARE = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"
GUIDS = {uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "vcek", uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"):
         "ask", uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ark"}


@pytest.fixture(scope="module")
def simulator(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundle")
    write_bundle(d, FIRMWARE.read_bytes(), [])
    digest = launch_digest(MeasureRequest(mode=SevMode.SEV_SNP, ovmf=d / "OVMF.amdsev.fd", vcpus=2,
                                          vcpu_sig=CPU_SIGS["EPYC-Milan"], guest_features=0x1, kernel=d / "bzImage",
                                          initrd=d / "initrd", append=CMDLINE)).digest
    write_bundle(d, FIRMWARE.read_bytes(), [entry(2, "EPYC-Milan", 0x1, digest)])
    argv = simulator_argv(ovmf=d / "OVMF.amdsev.fd", kernel=d / "bzImage", initrd=d / "initrd",
                          append_file=d / "cmdline", vcpus=2, vcpu_type="EPYC-Milan", chain_dir=d / "chain",
                          listen="127.0.0.1:0")
    with listening(argv) as port:
        yield d, port


def table_entries(table: bytes) -> dict[str, bytes]:
    out, pos = {}, 0
    while table[pos:pos + 16] != bytes(16):
        start = int.from_bytes(table[pos + 16:pos + 20], "little")
        size = int.from_bytes(table[pos + 20:pos + 24], "little")
        out[GUIDS[uuid.UUID(bytes=table[pos:pos + 16])]] = table[start:start + size]
        pos += 24
    return out


def test_evidence_from_the_simulated_psp_verifies_with_verify_report(simulator, tmp_path, capsys):
    bundle, sim_port = simulator
    with LoopbackApp() as app:
        run = Running(["--listen", "127.0.0.1:0", "--app", f"127.0.0.1:{app.port}", "--attester",
                       f"simulated:127.0.0.1:{sim_port}", "--state-dir", str(tmp_path / "state"), "--openssl", OPENSSL])
        try:
            port = run.ready_port()
            with client_context().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30)) as tls:
                nonce = os.urandom(32)
                tls.sendall(attested_tls.encode_hello(nonce))
                evidence = attested_tls.read_evidence(tls.makefile("rb").read)
                bound = attested_tls.report_data(attested_tls.certificate_spki(tls.getpeercert(binary_form=True)),
                                                 nonce)
        finally:
            run.stop()
    report = parse_report(evidence.report)
    assert report.report_data == bound and report.chip_id.startswith(CHIP_ID_MARKER)
    (tmp_path / "report.bin").write_bytes(evidence.report)
    certs = table_entries(evidence.certs)
    for name, der in certs.items():
        (tmp_path / f"{name}.der").write_bytes(der)
    # the root to trust is the simulator's own file, not what the evidence carries
    trust_root = bundle / "chain" / "milan" / "ark.pem"
    assert certs["ark"] == subprocess.run([OPENSSL, "x509", "-outform", "DER", "-in", str(trust_root)],
                                          capture_output=True, check=True).stdout
    argv = ["verify-report", str(tmp_path / "report.bin"), "--certs", str(tmp_path / "vcek.der"), "--certs",
            str(tmp_path / "ask.der"), "--trust-root", str(trust_root), "--manifest",
            str(bundle / "manifest.json"), "--report-data", bound.hex(), "--vmpl", "0"]
    assert blindbox_main(argv) == 0, capsys.readouterr().out
    assert "NOT AMD's" in capsys.readouterr().out
    # another nonce's binding is refused
    other = attested_tls.report_data(b"\x30\x00", bytes(32)).hex()
    assert blindbox_main(argv[:-4] + ["--report-data", other, "--vmpl", "0"]) == 3
    assert "FAIL  report_data" in capsys.readouterr().out
