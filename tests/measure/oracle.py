"""The reference implementation, sev-snp-measure 0.0.13 from PyPI, run in-process.

Test-only: the product never imports ``sevsnpmeasure``.
"""

from __future__ import annotations

import contextlib
import io
import sys

import sevsnpmeasure
from sevsnpmeasure import guest as oracle_guest
from sevsnpmeasure import vcpu_types as oracle_vcpu_types
from sevsnpmeasure.sev_mode import SevMode as OracleMode
from sevsnpmeasure.vmm_types import VMMType as OracleVmm

ORACLE_VERSION = "0.0.13"
MODES = {"snp": OracleMode.SEV_SNP, "seves": OracleMode.SEV_ES, "sev": OracleMode.SEV,
         "snp:svsm": OracleMode.SEV_SNP_SVSM}
VMMS = {"QEMU": OracleVmm.QEMU, "ec2": OracleVmm.ec2, "gce": OracleVmm.gce}
CPU_SIGS = oracle_vcpu_types.CPU_SIGS


def oracle_digest(mode: str, *, ovmf, vcpus=None, vcpu_sig=None, kernel=None, initrd=None, append=None,
                  guest_features=0x1, ovmf_hash=None, vmm="QEMU", svsm=None, vars_size=0) -> bytes:
    return oracle_guest.calc_launch_digest(
        MODES[mode], vcpus, vcpu_sig, str(ovmf), None if kernel is None else str(kernel),
        None if initrd is None else str(initrd), append, guest_features, ovmf_hash or "",
        VMMS[vmm], False, None if svsm is None else str(svsm), vars_size)


def oracle_ovmf_hash(ovmf) -> bytes:
    return oracle_guest.calc_snp_ovmf_hash(str(ovmf))


def oracle_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run sev-snp-measure's command line in-process: (exit status, stdout, stderr)."""
    from sevsnpmeasure import cli
    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["sev-snp-measure", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main()
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    return rc, out.getvalue(), err.getvalue()


assert sevsnpmeasure is not None
