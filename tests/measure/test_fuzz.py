"""Fuzz targets for the calculator's parsers: OVMF footer table, SEV metadata, VMSA pages, dm-verity.

Seeds are real firmware tails (tests/fixtures) and synthetic images with every footer
entry (tests/measure/synth.py); mutations keep most of the structure so that the checks
deep inside the parser are reached.  Only a BlindboxError may escape.
"""

from __future__ import annotations

import hashlib

from hypothesis import example, given
from hypothesis import strategies as st

from measure.errors import BlindboxError
from measure.kernel_hashes import KernelHashes
from measure.ovmf import Firmware
from measure.snp import SnpLaunch, VmShape
from measure.vmsa import SaveArea, diff
from measure.vmm import profile
from tests.conftest import VECTORS
from tests.fuzzing import budget, mutations
from tests.measure import synth

AMDSEV = (VECTORS / "sev-snp-measure/ovmf_AmdSev_suffix.bin").read_bytes()
OVMFX64 = (VECTORS / "sev-snp-measure/ovmf_OvmfX64_suffix.bin").read_bytes()
SYNTH = synth.image(0x10000, sections=synth.AMDSEV_LIKE_SECTIONS, hashes_table=(0x80B000, 0x400))
SVSM = synth.svsm_image()
HASHES = KernelHashes(kernel=hashlib.sha256(b"k").digest(), initrd=hashlib.sha256(b"").digest(),
                      cmdline=hashlib.sha256(b"\0").digest())
#: measuring is linear in the sections' size; bounding that is a separate check, not this target's
MEASURE_LIMIT = 1 << 24

_LAST_PAGE = (len(SYNTH) - 0x1000, len(SYNTH))  # the footer table and the SEV metadata
firmware_bytes = st.one_of(
    mutations(AMDSEV, resize=False), mutations(OVMFX64, resize=False), mutations(SVSM, resize=False),
    mutations(SYNTH, resize=False, region=_LAST_PAGE),
    mutations(SYNTH, region=_LAST_PAGE),  # truncated or shifted: the size check
    mutations(SYNTH[-0x1000:], resize=False).map(lambda tail: SYNTH[:-0x1000] + tail))


def _parse_and_use(data: bytes) -> None:
    fw = Firmware(data, name="fuzz.fd")
    fw.describe()
    for probe in (fw.require_sev_es_reset_eip, fw.svsm_entry_offset):
        try:
            probe()
        except BlindboxError:
            pass
    if sum(s.size for s in fw.sections) > MEASURE_LIMIT:
        return
    launch = SnpLaunch(fw)
    for hashes in (None, HASHES):
        launch.measure(VmShape(2, 0x800F12), hashes)


@budget(600, deadline_ms=3000)
@given(firmware_bytes)
@example(SYNTH[:-0x1000] + bytes(0x1000))  # no footer at all
def test_mutated_firmware_parses_or_raises_blindbox_error(data):
    try:
        _parse_and_use(data)
    except BlindboxError:
        pass


@budget(100)
@given(st.binary(min_size=0, max_size=8192).map(lambda b: b + bytes(-len(b) % 4096)))
def test_random_pages_as_firmware(data):
    try:
        _parse_and_use(data)
    except BlindboxError:
        pass


def _vmsa_seed() -> bytes:
    launch = SnpLaunch(Firmware(SYNTH))
    return launch.vmsa_pages(VmShape(1, 0x800F12, 0x21, profile("qemu")))[1]


VMSA = _vmsa_seed()


@budget(200)
@given(mutations(VMSA))
def test_mutated_vmsa_pages_parse_or_raise_blindbox_error(data):
    try:
        page = SaveArea.from_bytes(data, what="fuzz vmsa")
    except BlindboxError:
        return
    diff(page, SaveArea.from_bytes(VMSA))
    assert page.to_bytes() == data


# -- a bundle's manifest.json, as rederive and explain-report read it -------------------------

import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from blindbox.audit.rederive import load_bundle  # noqa: E402

MANIFEST = {"schema": 1, "name": "fuzz",
            "outputs": [{"file": "OVMF.fd", "role": "firmware", "sha256": "00" * 32, "size": 1},
                        {"file": "bzImage", "role": "kernel", "sha256": "00" * 32, "size": 1},
                        {"file": "initrd", "role": "initrd", "sha256": "00" * 32, "size": 1},
                        {"file": "cmdline", "role": "cmdline", "sha256": "00" * 32, "size": 1}],
            "measurements": [{"shape": "qemu:EPYC-v4:1:0x1", "vcpus": 1, "vcpu_sig": "0x800f12",
                              "guest_features": "0x1", "vmm_profile": "qemu", "measurement": "00" * 48}]}
json_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10),
                                    st.sampled_from(["../x", "/etc/passwd", "", ".", "a/../../b", "firmware"])),
                          lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                 st.dictionaries(st.text(max_size=6), kids, max_size=3)),
                          max_leaves=5)


@st.composite
def manifests(draw):
    doc = json.loads(json.dumps(MANIFEST))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "outputs", "output", "measurements", "entry"]))
        key = draw(st.sampled_from(["outputs", "measurements", "file", "role", "vcpus", "shape", "x"]))
        new = draw(json_value)
        if where == "top":
            doc[key] = new
        elif where in ("outputs", "measurements") and isinstance(doc.get(where), list):
            doc[where].append(new)
        elif where == "output" and isinstance(doc.get("outputs"), list) and doc["outputs"] and \
                isinstance(doc["outputs"][0], dict):
            doc["outputs"][0][key] = new
        elif where == "entry" and isinstance(doc.get("measurements"), list) and doc["measurements"] and \
                isinstance(doc["measurements"][0], dict):
            doc["measurements"][0][key] = new
    return json.dumps(doc).encode()


@budget(150)
@given(st.one_of(manifests(), mutations(json.dumps(MANIFEST).encode())))
def test_mutated_bundle_manifests_load_or_raise_blindbox_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "manifest.json").write_bytes(data)
        try:
            doc, roles = load_bundle(tmp)
        except BlindboxError:
            return
        for path in roles.values():  # every role names a file inside the bundle
            assert Path(tmp) in path.parents


# -- a dm-verity hash device, as the verifier reads it ------------------------------------

import dataclasses  # noqa: E402
import random  # noqa: E402
import uuid  # noqa: E402

from measure import verity  # noqa: E402

VERITY_DATA = random.Random(7).randbytes(40 * 512)
VERITY_PARAMS = verity.VerityParams(data_block_size=512, hash_block_size=512, salt=b"\x5a" * 32,
                                    uuid=uuid.UUID("0b6f5c1e-8d2a-4c3b-9e7f-1a2b3c4d5e6f"))
#: the hash area appended to the data file; the verifier takes the data block count from its superblock
VERITY_APPENDED = dataclasses.replace(VERITY_PARAMS, hash_offset=len(VERITY_DATA))


def _verity_seed(appended: bool) -> tuple[bytes, bytes]:
    """(the hash device, or data file with its hash area appended; the root hash)."""
    with tempfile.TemporaryDirectory() as tmp:
        data, hash_ = Path(tmp) / "data", Path(tmp) / "hash"
        data.write_bytes(VERITY_DATA)
        if appended:
            tree = verity.format_files(data, data, VERITY_APPENDED, data_blocks=len(VERITY_DATA) // 512)
            return data.read_bytes(), tree.root_hash
        tree = verity.format_files(data, hash_, VERITY_PARAMS)
        return hash_.read_bytes(), tree.root_hash


VERITY_HASH, VERITY_ROOT = _verity_seed(appended=False)
VERITY_IMAGE, _ROOT = _verity_seed(appended=True)
assert _ROOT == VERITY_ROOT
_SB = (len(VERITY_DATA), len(VERITY_DATA) + verity.SUPERBLOCK_SIZE)  # the appended superblock


@budget(150)
@given(st.one_of(st.tuples(st.just(False), mutations(VERITY_HASH, resize=False)),
                 st.tuples(st.just(False), mutations(VERITY_HASH)),
                 st.tuples(st.just(False), mutations(VERITY_HASH, resize=False, region=(0, verity.SUPERBLOCK_SIZE))),
                 st.tuples(st.just(True), mutations(VERITY_IMAGE, resize=False, region=_SB)),
                 st.tuples(st.just(True), mutations(VERITY_IMAGE, region=(_SB[0], len(VERITY_IMAGE))))))
def test_mutated_verity_hash_devices_verify_or_raise_blindbox_error(case):
    appended, data = case
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "data"
        if appended:  # one file: the data, then the hash area
            data_path.write_bytes(data)
            hash_path, params = data_path, VERITY_APPENDED
        else:
            data_path.write_bytes(VERITY_DATA)
            hash_path, params = Path(tmp) / "hash", VERITY_PARAMS
            hash_path.write_bytes(data)
        try:
            verdict = verity.verify_files(data_path, hash_path, params, VERITY_ROOT)
        except BlindboxError:
            return
        if verdict.ok:  # only the formatted tree over the formatted data verifies
            assert verdict.data_blocks == len(VERITY_DATA) // 512
