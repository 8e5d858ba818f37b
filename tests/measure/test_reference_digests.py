"""blindbox reproduces every reference digest in reference_digests/.

A reference digest pins its inputs by sha256.  Shipped fixtures must still have those
bytes.  A Debian input is fetched at the pinned version; when Debian no longer serves
it (sid and kernel point releases move), the test measures the version served today
with both blindbox and the oracle live, asserts they agree, and warns that the file
should be regenerated with scripts/regen-reference-digests.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest

from measure.api import MeasureRequest, launch_digest
from measure.spec import SevMode
from measure.vmm import VmmType, profile_for

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "reference_digests").glob("*.json"))


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Stale(Exception):
    pass


def _input(desc: dict, live: bool) -> str:
    if desc.get("empty"):
        return "/dev/null"
    if "file" in desc:
        path = ROOT / desc["file"]
        assert _sha256(path) == desc["sha256"], f"fixture {desc['file']} changed"
        return str(path)
    from builder.errors import SourceGone
    from tests import realinputs
    d = desc["debian"]
    if live and d["member"].startswith("/boot/vmlinuz"):
        # a kernel ABI bump renames the package itself: follow linux-image-amd64
        return str(realinputs.debian_kernel(d["suite"])[0])
    archive = realinputs.archive()
    try:
        pkg = archive.resolve(d["package"], d["suite"], None if live else d["version"])
    except SourceGone as e:
        raise Stale(str(e)) from e
    path = archive.member(pkg, d["member"])
    if not live:
        assert _sha256(path) == desc["sha256"], f"{d['package']} {d['version']} {d['member']} changed"
    return str(path)


def _measure(record: dict, live: bool) -> bytes:
    p = record["params"]
    paths = {k: _input(v, live) for k, v in record["inputs"].items()}
    if p["mode"] == "snp:ovmf-hash":
        from measure.api import ovmf_hash
        return ovmf_hash(paths["ovmf"])
    req = MeasureRequest(
        mode=SevMode.parse(p["mode"]), ovmf=Path(paths["ovmf"]), vcpus=p.get("vcpus"),
        vcpu_sig=int(p["vcpu_sig"], 16) if "vcpu_sig" in p else None,
        guest_features=int(p.get("guest_features", "0x1"), 16),
        profile=profile_for(VmmType.parse(p.get("vmm_type", "QEMU"))),
        kernel=paths.get("kernel"), initrd=paths.get("initrd"), append=p.get("append"))
    return launch_digest(req).digest


def _params():
    for f in FILES:
        record = json.loads(f.read_text())
        debian = any("debian" in v for v in record["inputs"].values())
        yield pytest.param(record, id=f.stem, marks=[pytest.mark.network] if debian else [])


@pytest.mark.parametrize("record", list(_params()))
def test_reference_digest(record):
    try:
        assert _measure(record, live=False).hex() == record["expected"]
    except Stale as e:
        from tests.measure import oracle
        got = _measure(record, live=True)
        p = record["params"]
        paths = {k: _input(v, True) for k, v in record["inputs"].items()}
        expected = oracle.oracle_digest(p["mode"], ovmf=paths["ovmf"], vcpus=p.get("vcpus"),
                                        vcpu_sig=int(p["vcpu_sig"], 16) if "vcpu_sig" in p else None,
                                        kernel=paths.get("kernel"), initrd=paths.get("initrd"),
                                        append=p.get("append"), guest_features=int(p.get("guest_features", "0x1"), 16),
                                        vmm=p.get("vmm_type", "QEMU"))
        assert got == expected
        warnings.warn(f"{record['name']}: pinned input no longer served ({e}); checked today's version against "
                      f"the oracle instead. Regenerate with scripts/regen-reference-digests.", stacklevel=2)


def test_reference_digests_exist_for_every_mode():
    modes = {json.loads(f.read_text())["params"]["mode"] for f in FILES}
    assert {"snp", "seves", "sev", "snp:ovmf-hash"} <= modes
    assert len(FILES) >= 8
