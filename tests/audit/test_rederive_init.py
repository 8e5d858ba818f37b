"""blindbox rederive's check of the initrd's /init (the parts of it that enforce the runtime policy)."""

from __future__ import annotations

from blindbox.audit.rederive import _init_finding
from builder.steps.cpio import Archive
from measure.cpio import read_initrd


def test_rederive_names_an_init_the_kernel_would_not_run():
    text = (b"set -- $(sha256sum /etc/blindbox/runtime-policy.json 2>/dev/null)\n"
            b"/usr/sbin/nft -f /etc/blindbox/runtime-policy.nft 2>&1\n")
    a = Archive()
    a.add_file("init", text, 0o755)
    initrd = read_initrd(a.to_bytes(mtime=0), "the initrd", max_bytes=1 << 20, max_members=10)
    assert _init_finding(initrd, False, "console=ttyS0 quiet").ok
    finding = _init_finding(initrd, False, "console=ttyS0 rdinit=/bin/sh quiet")
    assert not finding.ok and finding.detail == ("the measured cmdline carries rdinit=/bin/sh, so the kernel does not "
                                                 "run the initrd's /init")
    finding = _init_finding(initrd, True, "console=ttyS0")
    assert not finding.ok and "does not contain '--runtime-policy /etc/blindbox/runtime-policy.json'" in finding.detail
