"""The /dev/sev-guest structures and ioctl numbers, against the kernel's own uapi header.

A small C program includes ``linux/sev-guest.h`` (Debian's linux-libc-dev), is compiled with
gcc and prints ``sizeof``, ``offsetof`` and the ioctl numbers; the layouts declared in
:mod:`blindbox.agent.attesters` must agree with every value.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from blindbox.agent import attesters as a
from measure.errors import LayoutError

HEADER = Path("/usr/include/linux/sev-guest.h")

PROGRAM = r"""
#include <stddef.h>
#include <stdio.h>
#include <sys/ioctl.h>   /* _IOWR, which the header uses without including */
#include <linux/sev-guest.h>
#define S(t) printf("sizeof %s %zu\n", #t, sizeof(struct t))
#define O(t, f) printf("offsetof %s.%s %zu\n", #t, #f, offsetof(struct t, f))
int main(void) {
    S(snp_report_req); O(snp_report_req, user_data); O(snp_report_req, vmpl); O(snp_report_req, rsvd);
    S(snp_report_resp); O(snp_report_resp, data);
    S(snp_guest_request_ioctl); O(snp_guest_request_ioctl, msg_version); O(snp_guest_request_ioctl, req_data);
    O(snp_guest_request_ioctl, resp_data); O(snp_guest_request_ioctl, exitinfo2);
    O(snp_guest_request_ioctl, fw_error); O(snp_guest_request_ioctl, vmm_error);
    S(snp_ext_report_req); O(snp_ext_report_req, data); O(snp_ext_report_req, certs_address);
    O(snp_ext_report_req, certs_len);
    printf("ioctl SNP_GET_REPORT %lu\n", (unsigned long)SNP_GET_REPORT);
    printf("ioctl SNP_GET_EXT_REPORT %lu\n", (unsigned long)SNP_GET_EXT_REPORT);
    printf("const SNP_GUEST_VMM_ERR_INVALID_LEN %d\n", SNP_GUEST_VMM_ERR_INVALID_LEN);
    printf("const SNP_GUEST_VMM_ERR_BUSY %d\n", SNP_GUEST_VMM_ERR_BUSY);
    return 0;
}
"""


@pytest.fixture(scope="module")
def uapi(tmp_path_factory) -> dict[str, int]:
    # scripts/setup installs gcc and linux-libc-dev; a machine without them fails here, it does not skip
    assert shutil.which("gcc"), "gcc is needed to compile the uapi check (scripts/setup installs it)"
    assert HEADER.is_file(), f"{HEADER} is needed (linux-libc-dev; scripts/setup installs it)"
    d = tmp_path_factory.mktemp("uapi")
    (d / "uapi.c").write_text(PROGRAM)
    cc = subprocess.run(["gcc", "-std=c11", "-Wall", "-Werror", "-o", str(d / "uapi"), str(d / "uapi.c")],
                        capture_output=True, text=True, timeout=60)
    assert cc.returncode == 0, cc.stderr
    out = subprocess.run([str(d / "uapi")], check=True, capture_output=True, text=True, timeout=10).stdout
    values = {}
    for line in out.splitlines():
        kind, name, value = line.split()
        values[f"{kind} {name}"] = int(value)
    assert len(values) == 21
    return values


def test_sizes_match_the_header(uapi):
    assert uapi["sizeof snp_report_req"] == a.SnpReportReq.SIZE == 96
    assert uapi["sizeof snp_report_resp"] == a.SnpReportResp.SIZE
    assert uapi["sizeof snp_guest_request_ioctl"] == a.SnpGuestRequestIoctl.SIZE
    assert uapi["sizeof snp_ext_report_req"] == a.SnpExtReportReq.SIZE


@pytest.mark.parametrize("cls, struct, fields", [
    (a.SnpReportReq, "snp_report_req", ["user_data", "vmpl"]),
    (a.SnpReportResp, "snp_report_resp", ["data"]),
    (a.SnpGuestRequestIoctl, "snp_guest_request_ioctl", ["msg_version", "req_data", "resp_data", "exitinfo2"]),
    (a.SnpExtReportReq, "snp_ext_report_req", ["data", "certs_address", "certs_len"]),
])
def test_offsets_match_the_header(uapi, cls, struct, fields):
    for field in fields:
        assert cls.offset_of(field) == uapi[f"offsetof {struct}.{field}"], field


def test_reserved_bytes_and_the_union_match_the_header(uapi):
    # rsvd[28] of snp_report_req is the layout's reserved tail: it starts where vmpl ends
    assert uapi["offsetof snp_report_req.rsvd"] == a.SnpReportReq.offset_of("vmpl") + 4
    assert uapi["offsetof snp_guest_request_ioctl.fw_error"] == a.SnpGuestRequestIoctl.FW_ERROR_OFFSET
    assert uapi["offsetof snp_guest_request_ioctl.vmm_error"] == a.SnpGuestRequestIoctl.VMM_ERROR_OFFSET
    # the two union members, read through the layout of exitinfo2, are its low and high halves (little endian)
    raw = bytearray(a.SnpGuestRequestIoctl.SIZE)
    fw, vmm = uapi["offsetof snp_guest_request_ioctl.fw_error"], uapi["offsetof snp_guest_request_ioctl.vmm_error"]
    raw[fw:fw + 4] = (0x16).to_bytes(4, "little")
    raw[vmm:vmm + 4] = (1).to_bytes(4, "little")
    parsed = a.SnpGuestRequestIoctl.from_bytes(bytes(raw))
    assert (parsed.fw_error, parsed.vmm_error) == (0x16, 1)


def test_ioctl_numbers_and_vmm_errors_match_the_header(uapi):
    assert uapi["ioctl SNP_GET_REPORT"] == a.SNP_GET_REPORT == 0xC0205300
    assert uapi["ioctl SNP_GET_EXT_REPORT"] == a.SNP_GET_EXT_REPORT == 0xC0205302
    assert uapi["const SNP_GUEST_VMM_ERR_INVALID_LEN"] == a.SNP_GUEST_VMM_ERR_INVALID_LEN
    assert uapi["const SNP_GUEST_VMM_ERR_BUSY"] == a.SNP_GUEST_VMM_ERR_BUSY


def test_request_packing_puts_each_value_where_the_kernel_reads_it(uapi):
    req = a.SnpExtReportReq(data=a.SnpReportReq(user_data=bytes(range(1, 65)), vmpl=2),
                            certs_address=0x1122334455667788, certs_len=0x4000).to_bytes()
    expected = bytearray(uapi["sizeof snp_ext_report_req"])
    data = uapi["offsetof snp_ext_report_req.data"]
    user, vmpl = data + uapi["offsetof snp_report_req.user_data"], data + uapi["offsetof snp_report_req.vmpl"]
    address, length = uapi["offsetof snp_ext_report_req.certs_address"], uapi["offsetof snp_ext_report_req.certs_len"]
    expected[user:user + 64] = bytes(range(1, 65))
    expected[vmpl:vmpl + 4] = (2).to_bytes(4, "little")
    expected[address:address + 8] = (0x1122334455667788).to_bytes(8, "little")
    expected[length:length + 4] = (0x4000).to_bytes(4, "little")
    assert req == bytes(expected)
    ioctl = a.SnpGuestRequestIoctl(msg_version=1, req_data=0xAABB, resp_data=0xCCDD).to_bytes()
    expected = bytearray(uapi["sizeof snp_guest_request_ioctl"])
    expected[uapi["offsetof snp_guest_request_ioctl.msg_version"]] = 1
    for field, value in (("req_data", 0xAABB), ("resp_data", 0xCCDD)):
        at = uapi[f"offsetof snp_guest_request_ioctl.{field}"]
        expected[at:at + 8] = value.to_bytes(8, "little")
    assert ioctl == bytes(expected)


def test_firmware_response_layout():
    # MSG_REPORT_RSP: status, report_size, 24 reserved bytes, then the 1184-byte report
    assert a.MsgReportRsp.SIZE == 0x20 + 1184 and a.MsgReportRsp.offset_of("report") == 0x20
    raw = bytearray(a.MsgReportRsp.SIZE)
    raw[4:8] = (1184).to_bytes(4, "little")
    raw[0x20:] = b"\x5a" * 1184
    rsp = a.MsgReportRsp.from_bytes(bytes(raw))
    assert (rsp.status, rsp.report_size, rsp.report) == (0, 1184, b"\x5a" * 1184)
    raw[0x10] = 1
    with pytest.raises(LayoutError, match="reserved byte at offset 0x10"):
        a.MsgReportRsp.from_bytes(bytes(raw))
