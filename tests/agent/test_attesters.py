"""The three report sources of the agent, at the boundaries this machine has.

There is no SEV-SNP hardware here: /dev/sev-guest is tested through a stand-in for the
kernel's ioctl (it follows the pointers the agent packs, as the kernel's copy_from_user does),
and configfs-tsm through a temporary directory that behaves like the kernel's configfs
attribute files (a stand-in: the real files are made by the kernel on mkdir).
"""

from __future__ import annotations

import ctypes
import errno
import shutil
import socket
import ssl
import threading
import uuid
from pathlib import Path

import pytest

from blindbox.agent import attesters as a
from blindbox.audit.report import parse_report
from measure.attested_tls import SIM_MAGIC
from measure.errors import InputError
from tests.conftest import VECTORS

from .standin import CERTS, VCEK, StandInSim, certificate_table, fake_report

DATA = bytes(range(100, 164))


# -- /dev/sev-guest --------------------------------------------------------------------------

class FakeKernel:
    """Plays sev-guest's SNP_GET_EXT_REPORT: reads the request through its pointers, answers through them."""

    def __init__(self, certs: bytes = CERTS, *, need: int | None = None, busy: int = 0, status: int = 0,
                 report_size: int = 1184, report: bytes | None = None) -> None:
        self.certs, self.need, self.busy, self.status, self.report_size = certs, need, busy, status, report_size
        self.report = report
        self.calls: list[tuple[int, a.SnpGuestRequestIoctl, a.SnpExtReportReq]] = []

    def ioctl(self, fd: int, request: int, arg: ctypes.Array, mutate: bool) -> int:
        assert mutate is True
        head = a.SnpGuestRequestIoctl.from_bytes(arg.raw[:a.SnpGuestRequestIoctl.SIZE])
        req = a.SnpExtReportReq.from_bytes(ctypes.string_at(head.req_data, a.SnpExtReportReq.SIZE))
        self.calls.append((request, head, req))

        def fail(vmm: int) -> None:
            arg[24:32] = (vmm << 32).to_bytes(8, "little")
            raise OSError(errno.EIO, "Input/output error")

        if self.busy:
            self.busy -= 1
            fail(a.SNP_GUEST_VMM_ERR_BUSY)
        if req.certs_len < len(self.certs) or (self.need is not None and req.certs_len < self.need):
            needed = self.need if self.need is not None else len(self.certs)
            back = a.SnpExtReportReq(data=req.data, certs_address=req.certs_address, certs_len=needed)
            ctypes.memmove(head.req_data, back.to_bytes(), a.SnpExtReportReq.SIZE)
            fail(a.SNP_GUEST_VMM_ERR_INVALID_LEN)
        ctypes.memmove(req.certs_address, self.certs, len(self.certs))
        rsp = a.MsgReportRsp(status=self.status, report_size=self.report_size,
                             report=self.report or fake_report(req.data.user_data, req.data.vmpl)).to_bytes()
        ctypes.memmove(head.resp_data, rsp, len(rsp))
        return 0


@pytest.fixture
def device(tmp_path):
    path = tmp_path / "sev-guest"
    path.write_bytes(b"")
    return path


def use(monkeypatch, kernel: FakeKernel) -> FakeKernel:
    monkeypatch.setattr(a.fcntl, "ioctl", kernel.ioctl)
    return kernel


def test_ext_report_packs_the_request_and_returns_report_and_certificates(monkeypatch, device):
    kernel = use(monkeypatch, FakeKernel())
    got = a.SevGuestDevice(device).get_report(DATA, vmpl=1)
    assert got.report == fake_report(DATA, 1) and got.certs == CERTS
    [(request, head, req)] = kernel.calls
    assert request == a.SNP_GET_EXT_REPORT
    assert head.msg_version == 1 and head.exitinfo2 == 0
    assert req.data.user_data == DATA and req.data.vmpl == 1
    assert req.certs_len == a.FIRST_CERTS_PAGES * 4096


def test_a_real_report_and_amd_certificates_pass_through_the_ioctl_path(monkeypatch, device):
    # a Genoa report captured by Project Oak and AMD's Genoa VCEK, ASK and ARK in a certificate table:
    # REPORT_DATA is found where the auditor's own report layout has it, and the table is cut at its end
    real = (VECTORS / "oak" / "genoa_oc_attestation_report.bin").read_bytes()
    ask, ark = (ssl.PEM_cert_to_DER_cert(pem + "-----END CERTIFICATE-----\n") for pem in
                (VECTORS / "go-sev-guest" / "ask_ark_genoa.pem").read_text().split("-----END CERTIFICATE-----\n")[:2])
    table = certificate_table([(VCEK, (VECTORS / "oak" / "genoa_oc_vcek.der").read_bytes()),
                               (uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"), ask),
                               (uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"), ark)])
    use(monkeypatch, FakeKernel(table, report=real))
    got = a.SevGuestDevice(device).get_report(parse_report(real).report_data)
    assert got.report == real and got.certs == table and len(table) > 3000


def test_a_larger_certificate_table_is_asked_again_with_the_pages_the_host_needs(monkeypatch, device):
    big = certificate_table([(VCEK, b"v" * 20000)])
    kernel = use(monkeypatch, FakeKernel(big))
    got = a.SevGuestDevice(device).get_report(DATA)
    assert got.certs == big
    assert [req.certs_len for _, _, req in kernel.calls] == [4 * 4096, 5 * 4096]   # 20072 bytes: 5 pages


def test_a_host_that_keeps_asking_for_more_is_refused(monkeypatch, device):
    use(monkeypatch, FakeKernel(need=1 << 20))
    with pytest.raises(a.AttesterError, match=r"the host's certificate table needs 1048576 bytes, more than the "
                                              r"32768 the agent accepts\."):
        a.SevGuestDevice(device).get_report(DATA)


def test_a_busy_host_is_asked_again_then_refused(monkeypatch, device):
    kernel = use(monkeypatch, FakeKernel(busy=2))
    assert a.SevGuestDevice(device, busy_wait=0).get_report(DATA).report == fake_report(DATA, 0)
    assert len(kernel.calls) == 3
    use(monkeypatch, FakeKernel(busy=10))
    with pytest.raises(a.AttesterError, match=r"SNP_GET_EXT_REPORT on .* failed: Input/output error \(firmware "
                                              r"error 0x0, hypervisor error 0x2\)\."):
        a.SevGuestDevice(device, busy_wait=0, busy_retries=3).get_report(DATA)


def test_firmware_refusal_and_wrong_size_are_one_sentence(monkeypatch, device):
    use(monkeypatch, FakeKernel(status=0x16))
    with pytest.raises(a.AttesterError, match=r"^the SEV firmware refused the report request with status 0x16\.$"):
        a.SevGuestDevice(device).get_report(DATA)
    use(monkeypatch, FakeKernel(report_size=1000))
    with pytest.raises(a.AttesterError, match=r"^the SEV firmware's report is 1000 bytes, not 1184\.$"):
        a.SevGuestDevice(device).get_report(DATA)


def test_a_missing_device_and_a_file_that_is_not_the_device(tmp_path, device):
    with pytest.raises(a.AttesterUnavailable, match=r"^.*/nothing does not exist \(is this an SEV-SNP guest with "
                                                    r"the sev-guest module loaded\?\)\.$"):
        a.SevGuestDevice(tmp_path / "nothing").get_report(DATA)
    # the real ioctl on a regular file and on /dev/null: the kernel answers ENOTTY
    for path in (device, Path("/dev/null")):
        with pytest.raises(a.AttesterError, match=rf"^{path} is not the SEV-SNP guest device \(the "
                                                  r"SNP_GET_EXT_REPORT ioctl is not supported there: "):
            a.SevGuestDevice(path).get_report(DATA)


def test_request_arguments_are_checked_before_any_device_is_opened(tmp_path):
    with pytest.raises(a.AttesterError, match=r"^REPORT_DATA is 64 bytes, not 63\.$"):
        a.SevGuestDevice(tmp_path / "nothing").get_report(DATA[:63])
    with pytest.raises(a.AttesterError, match=r"^the VMPL of a report request is 0 to 3, not 4\.$"):
        a.SevGuestDevice(tmp_path / "nothing").get_report(DATA, vmpl=4)


def test_certificate_table_extent():
    assert a.certificate_table_extent(CERTS + bytes(4000)) == len(CERTS)
    assert a.certificate_table_extent(bytes(4096)) == 0
    assert a.certificate_table_extent(b"") == 0
    assert a.certificate_table_extent(b"\x01" * 30) == 30     # no terminator: kept whole for the client to judge


# -- configfs-tsm ----------------------------------------------------------------------------

class StandInConfigfs(a.ConfigfsOps):
    """A stand-in for the kernel's configfs-tsm: mkdir makes the attribute files; writes count generations."""

    def __init__(self, provider: str = "sev_guest", *, races: int = 0, wrong_data: bool = False,
                 floor: int = 0) -> None:
        self.provider, self.races, self.wrong_data, self.floor = provider, races, wrong_data, floor
        self.made: list[Path] = []
        self.removed: list[Path] = []

    def mkdir(self, path: Path) -> None:
        super().mkdir(path)
        self.made.append(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        (path / "privlevel_floor").write_text(f"{self.floor}\n")
        for name in ("privlevel", "inblob"):
            (path / name).write_bytes(b"")

    def rmdir(self, path: Path) -> None:
        shutil.rmtree(path)
        self.removed.append(path)

    def _bump(self, entry: Path) -> None:
        (entry / "generation").write_text(f"{int((entry / 'generation').read_text()) + 1}\n")

    def write(self, path: Path, data: bytes) -> None:
        assert path.name in ("privlevel", "inblob"), path
        super().write(path, data)
        self._bump(path.parent)

    def read(self, path: Path, limit: int) -> bytes:
        if path.name == "outblob":
            entry = path.parent
            if self.races:
                self.races -= 1
                self._bump(entry)                     # another process wrote inblob meanwhile
            data = (entry / "inblob").read_bytes()
            vmpl = int((entry / "privlevel").read_text())
            return fake_report(bytes(64) if self.wrong_data else data, vmpl)
        if path.name == "auxblob":
            return CERTS + bytes(100)
        return super().read(path, limit)


@pytest.fixture
def tsm(tmp_path):
    base = tmp_path / "tsm" / "report"
    base.mkdir(parents=True)
    return base


def test_configfs_report_writes_privlevel_and_inblob_and_removes_its_entry(tsm):
    ops = StandInConfigfs()
    got = a.ConfigfsTsm(tsm, ops=ops).get_report(DATA, vmpl=2)
    assert got.report == fake_report(DATA, 2) and got.certs == CERTS
    assert ops.made == ops.removed and len(ops.made) == 1 and list(tsm.iterdir()) == []


def test_configfs_concurrent_writer_is_retried_then_refused(tsm):
    ops = StandInConfigfs(races=1)
    assert a.ConfigfsTsm(tsm, ops=ops).get_report(DATA).report == fake_report(DATA, 0)
    assert len(ops.made) == 2 and ops.made == ops.removed
    ops = StandInConfigfs(races=99)
    with pytest.raises(a.AttesterError, match=r"another writer changed the configfs-tsm report entry under .* during "
                                              r"each of 3 attempts; no report could be trusted"):
        a.ConfigfsTsm(tsm, ops=ops).get_report(DATA)
    assert len(ops.removed) == 3 and list(tsm.iterdir()) == []


def test_configfs_other_provider_and_wrong_report_data_are_refused(tsm):
    ops = StandInConfigfs("tdx_guest")
    with pytest.raises(a.AttesterUnavailable, match=r"^the configfs-tsm provider is 'tdx_guest', not 'sev_guest'; "
                                                    r"this guest is not an SEV-SNP guest\.$"):
        a.ConfigfsTsm(tsm, ops=ops).get_report(DATA)
    assert ops.made == ops.removed
    with pytest.raises(a.AttesterError, match=r"returned a report whose REPORT_DATA is not the one requested\.$"):
        a.ConfigfsTsm(tsm, ops=StandInConfigfs(wrong_data=True)).get_report(DATA)


def test_configfs_privlevel_below_the_floor_is_refused_before_writing(tsm):
    ops = StandInConfigfs(floor=2)
    with pytest.raises(a.AttesterError, match=r"^this guest can request reports at VMPL 2 or above \(privlevel_floor "
                                              r"of configfs-tsm\), not at VMPL 0\.$"):
        a.ConfigfsTsm(tsm, ops=ops).get_report(DATA)
    assert a.ConfigfsTsm(tsm, ops=ops).get_report(DATA, vmpl=2).report == fake_report(DATA, 2)
    assert ops.made == ops.removed


def test_configfs_missing_is_unavailable(tmp_path):
    with pytest.raises(a.AttesterUnavailable, match=r"/absent does not exist \(configfs-tsm needs Linux 6\.7 or "
                                                    r"later with CONFIG_TSM_REPORTS and configfs mounted\)\.$"):
        a.ConfigfsTsm(tmp_path / "absent").get_report(DATA)


# -- the simulated attester ------------------------------------------------------------------

def test_simulated_round_trip():
    with StandInSim() as sim:
        got = a.Simulated("127.0.0.1", sim.port).get_report(DATA, vmpl=3)
        assert got.report == fake_report(DATA, 3) and got.certs == CERTS
        assert sim.requests == [(DATA, 3)]


def _one_shot_server(answer: bytes | None) -> tuple[socket.socket, threading.Thread]:
    server = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(len(SIM_MAGIC) + 65)
            if answer is None:
                conn.recv(1)          # says nothing until the client gives up
            else:
                conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize("answer, message", [
    (b"HTTP/1.0 400 Bad Request\r\n\r\n", r"does not speak the simulated attester's protocol\.$"),
    (SIM_MAGIC + (1 << 20).to_bytes(4, "big"), r"announces a report of 1048576 bytes\.$"),
    (SIM_MAGIC + (1184).to_bytes(4, "big") + fake_report(DATA, 0) + (1 << 24).to_bytes(4, "big"),
     r"announces a certificate table of 16777216 bytes, more than the 32768 accepted\.$"),
    (SIM_MAGIC + (1184).to_bytes(4, "big") + b"x" * 10, r"closed the connection after 10 of 1184 bytes\.$"),
    (SIM_MAGIC + (1184).to_bytes(4, "big") + fake_report(bytes(64), 0) + bytes(4),
     r"returned a report whose REPORT_DATA is not the one requested\.$"),
    (None, r"did not answer within 0\.5 seconds\.$"),
])
def test_simulated_attester_misbehaving_is_one_sentence(answer, message):
    server, thread = _one_shot_server(answer)
    with server:
        port = server.getsockname()[1]
        with pytest.raises(a.AttesterError, match=rf"the simulated attester at 127\.0\.0\.1:{port} " + message):
            a.Simulated("127.0.0.1", port, timeout=0.5).get_report(DATA)
        thread.join(5)


def test_simulated_attester_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]        # bound, not listening: connections are refused
        with pytest.raises(a.AttesterError, match=rf"^cannot reach the simulated attester at 127\.0\.0\.1:{port}: "
                                                  r"Connection refused\.$"):
            a.Simulated("127.0.0.1", port).get_report(DATA)


# -- choosing one ----------------------------------------------------------------------------

def test_open_attester_auto_prefers_configfs_then_the_device(tmp_path):
    configfs, device = tmp_path / "tsm", tmp_path / "sev-guest"
    with pytest.raises(a.AttesterUnavailable) as e:
        a.open_attester("auto", configfs=configfs, device=device)
    assert str(e.value) == (f"no SEV-SNP attestation device: neither {configfs} nor {device} exists (is this an "
                            f"SEV-SNP guest with the sev-guest module loaded?).")
    device.write_bytes(b"")
    assert isinstance(a.open_attester("auto", configfs=configfs, device=device), a.SevGuestDevice)
    configfs.mkdir()
    assert isinstance(a.open_attester("auto", configfs=configfs, device=device), a.ConfigfsTsm)


def test_open_attester_simulated_and_refusals():
    sim = a.open_attester("simulated:10.0.2.100:4050")
    assert isinstance(sim, a.Simulated) and (sim.host, sim.port) == ("10.0.2.100", 4050)
    for spec in ("simulated:10.0.2.100", "simulated:host:0", "simulated::4050", "simulated:h:99999"):
        with pytest.raises(InputError, match=r"^the simulated attester's address .* is not HOST:PORT with a port "
                                             r"from 1 to 65535\.$"):
            a.open_attester(spec)
    with pytest.raises(InputError, match=r"^the attester 'sev' is neither 'auto' nor 'simulated:HOST:PORT'\.$"):
        a.open_attester("sev")
