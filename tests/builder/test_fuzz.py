"""Fuzz targets for the builder's readers: recipe and lock files, .deb (ar + tar), bzImage
header, kernel module .modinfo, ELF dynamic section, newc cpio.

Seeds are valid inputs (a recipe using every section, hello.lock, packages and ELF files
built by the test helpers); mutations work on the structure (YAML and JSON values replaced
by values of other types, tar entries with hostile names and links) as well as on bytes.
Only a BlindboxError may escape; extraction never writes outside its directory.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import tarfile
import tempfile
from pathlib import Path

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from builder.lock import parse_lock
from builder.recipe import parse_recipe
from builder.sources import extract_deb, read_deb_control
from builder.steps import cpio
from builder.steps.elf import read_elf
from builder.steps.kernel import bzimage_version, modinfo
from measure.errors import BlindboxError
from tests.builder.stepfakes import make_bzimage, make_elf, make_module
from tests.builder.fakes import ar_archive
from tests.fuzzing import INTERESTING, budget, json_paths, mutations

ROOT = Path(__file__).resolve().parents[2]

RECIPE = {
    "schema": 1, "name": "fuzz", "source_date_epoch": 1735689600,
    "firmware": {"debian": "ovmf-amdsev", "suite": "sid", "path": "/usr/share/ovmf/OVMF.amdsev.fd"},
    "kernel": {"debian": "linux-image-amd64", "suite": "bookworm", "require_config": ["CONFIG_TSM_REPORTS"]},
    "initrd": {
        "busybox": {"debian": "busybox-static", "suite": "bookworm"},
        "modules": ["sev-guest"], "compression": "xz", "app_command": "/app/run",
        "files": [{"path": "/etc/app.conf", "content": "greeting=hi\n", "mode": "0644"},
                  {"path": "/app/run", "file": "app/run.sh", "mode": "0755"},
                  {"path": "/etc/x", "url": "https://example.invalid/x", "sha256": "ab" * 32}],
        "binaries": [{"debian": "coreutils", "suite": "bookworm", "path": "/usr/bin/sha256sum",
                      "dest": "/bin/sha256sum"}],
    },
    "cmdline": "console=ttyS0 panic=-1",
    "shapes": [{"vmm_profile": "qemu", "vcpus": [1, 2], "vcpu_types": ["EPYC-v4", "EPYC-Genoa"],
                "guest_features": [1, 0x21]}],
    "launch": {"memory_mib": 2048, "policy": 0x30000},
    "id_block": {"id_key": "keys/id.pem", "author_key": "keys/author.pem",
                 "family_id": "00112233445566778899aabbccddeeff", "image_id": "0" * 32, "guest_svn": 1,
                 "policy": 0x30000},
    "rootfs": {"oci": {"path": "image/", "ref": "v1"}, "files": [{"path": "/srv/app.py", "content": "x"}],
               "entrypoint": ["/usr/bin/python3"], "cmd": ["/srv/app.py"], "env": {"A": "1"}, "workdir": "/srv",
               "user": "1000:1000", "network": True, "on_corruption": "eio",
               "dmsetup": {"debian": "dmsetup", "suite": "bookworm"}},
}
LOCK = json.loads((ROOT / "recipes/hello.lock").read_text())

# values of every YAML/JSON type, including the awkward ones
leaf = st.one_of(st.none(), st.booleans(), st.sampled_from(INTERESTING), st.integers(-2**70, 2**70),
                 st.floats(allow_nan=True), st.text(max_size=12),
                 st.sampled_from(["", "..", "/", "../../etc/passwd", "/etc/passwd", "0x1", "0o777", "\x00",
                                  "a" * 300, "sid", "forky", "qemu", "ec2", "EPYC-v4", "~", "1e400"]))
value = st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                  st.dictionaries(st.text(max_size=8), kids, max_size=3)),
                     max_leaves=6)


def _edit(doc, path, op, new):
    import copy
    doc = copy.deepcopy(doc)
    if not path:
        return new if op == "replace" else doc
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if op == "replace":
        parent[last] = new
    elif op == "delete":
        del parent[last]
    elif op == "add" and isinstance(parent, dict):
        parent[f"extra_{len(parent)}"] = new
    elif op == "add" and isinstance(parent, list):
        parent.append(new)
    return doc


def structured(doc):
    """``doc`` with a few values replaced, deleted or added anywhere in the tree."""
    paths = list(json_paths(doc))
    edit = st.tuples(st.sampled_from(paths), st.sampled_from(["replace", "delete", "add"]), value)

    def run(edits):
        out = doc
        for path, op, new in edits:
            try:
                out = _edit(out, path, op, new)
            except (KeyError, IndexError, TypeError):
                pass
        return out
    return st.lists(edit, min_size=1, max_size=3).map(run)


def _yaml(doc) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()


RECIPE_BYTES = _yaml(RECIPE)
HELLO = (ROOT / "recipes/hello.yaml").read_bytes()


def _parse_recipe(data: bytes) -> None:
    try:
        recipe = parse_recipe(data, Path("/nonexistent/recipes/fuzz.yaml"))
    except BlindboxError:
        return
    recipe.shapes()
    recipe.inputs()
    assert isinstance(recipe.cmdline_bytes, bytes)


@budget(400)
@given(structured(RECIPE).map(_yaml))
@example(RECIPE_BYTES)
def test_structurally_mutated_recipes_parse_or_raise_blindbox_error(data):
    _parse_recipe(data)


@budget(150)
@given(st.one_of(mutations(HELLO), mutations(RECIPE_BYTES)))
@example(b"name: a\nname: b\n")
@example(b"&a [*a]")
@example(b"a: &x [*x, *x]\n")
def test_byte_mutated_recipes_parse_or_raise_blindbox_error(data):
    _parse_recipe(data)


def _lock_without_package_name() -> bytes:
    doc = json.loads(json.dumps(LOCK))
    del doc["inputs"][0]["debian"]["name"]
    return json.dumps(doc).encode()


@budget(200)
@given(st.one_of(structured(LOCK).map(lambda d: json.dumps(d).encode()),
                 mutations(json.dumps(LOCK, indent=2).encode())))
@example(_lock_without_package_name())  # found by the fuzzer: describe() raised KeyError
def test_mutated_lock_files_parse_or_raise_blindbox_error(data):
    try:
        lock = parse_lock(data, Path("/nonexistent/fuzz.lock"))
    except BlindboxError:
        return
    for name in lock.names():
        lock.get(name).describe()
    lock.to_json()


# -- binary readers -------------------------------------------------------------------------

def _in_file(data: bytes, body):
    fd, name = tempfile.mkstemp()
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    try:
        return body(Path(name))
    finally:
        os.unlink(name)


BZIMAGE = make_bzimage("6.1.0-test-amd64 (debian-kernel@lists.debian.org) #1 SMP")


@budget(150)
@given(mutations(BZIMAGE, region=(0x1F0, 0x410)))
def test_mutated_bzimage_headers_give_a_version_or_raise_blindbox_error(data):
    try:
        version = _in_file(data, bzimage_version)
    except BlindboxError:
        return
    assert isinstance(version, str) and version


MODULE = make_module("sev-guest", depends=["tsm"], aliases=["platform:sev-guest"], softdeps=["ccp"])


@budget(200)
@given(st.one_of(mutations(MODULE, resize=False), mutations(MODULE),
                 mutations(MODULE, resize=False).map(lambda m: m[:4] + b"\x01\x01" + m[6:])))  # ELF32: pyelftools
def test_mutated_kernel_modules_give_modinfo_or_raise_blindbox_error(data):
    try:
        modinfo(data, where="module fuzz.ko")
    except BlindboxError:
        pass


ELF = make_elf(interp="/lib64/ld-linux-x86-64.so.2", needed=["libc.so.6", "libfoo.so.1"],
               runpath="$ORIGIN/../lib", rpath="/opt/lib")


@budget(200)
@given(st.one_of(mutations(ELF, resize=False), mutations(ELF)))
def test_mutated_elf_files_read_or_raise_blindbox_error(data):
    try:
        _in_file(data, lambda p: read_elf(p, what="binary /bin/fuzz"))
    except BlindboxError:
        pass


def _cpio_seed() -> bytes:
    a = cpio.Archive()
    a.add_dir("/etc")
    a.add_file("/etc/app.conf", b"greeting=hi\n")
    a.add_symlink("/bin/sh", "busybox")
    a.add_char_device("/dev/console", 5, 1)
    return a.to_bytes(mtime=0)


CPIO = _cpio_seed()


@budget(150)
@given(st.one_of(mutations(CPIO, resize=False), mutations(CPIO)))
def test_mutated_cpio_archives_parse_or_raise_blindbox_error(data):
    try:
        cpio.parse(data)
    except BlindboxError:
        pass


# -- .deb: ar + tar ------------------------------------------------------------------------



_NAMES = ["./usr", "./usr/bin", "./usr/bin/x", "usr/lib/y", "./a/../b", "../escaped", "/abs", "./",
          "./usr/bin/x/deeper", "./lnk/through", "./lnk", "./loop", "./loop2", "./a" * 40]
_LINKS = ["", "x", "/usr/bin/x", "../..", "../../..", "usr", "/", ".", "loop2", "loop", "./usr/bin/x",
          "/etc/passwd", "../escaped"]
_TYPES = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE,
          tarfile.CONTTYPE, b"V", b"9"]

tar_entry = st.tuples(st.sampled_from(_NAMES), st.sampled_from(_TYPES), st.sampled_from(_LINKS),
                      st.sampled_from([0o644, 0o755, 0o4755, 0o7777, 0]), st.binary(max_size=16))


def _tar(entries, mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tf:
        for name, kind, link, perm, body in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, link, perm
            info.size = len(body) if kind in (tarfile.REGTYPE, tarfile.CONTTYPE) else 0
            tf.addfile(info, io.BytesIO(body) if info.size else None)
    return buf.getvalue()


CONTROL = b"Package: fuzz\nVersion: 1\nArchitecture: all\nDescription: x\n continued\n"


def _compress(data: bytes, compression: str) -> bytes:
    # fixed bytes (no time stamp in the gzip header), so that CI runs are repeatable
    if compression == "w:gz":
        return gzip.compress(data, mtime=0)
    if compression == "w:xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ)
    return data


def deb(entries, compression: str) -> bytes:
    control = _compress(_tar([("./control", tarfile.REGTYPE, "", 0o644, CONTROL)], "w"), "w:gz")
    suffix = {"w": "", "w:gz": ".gz", "w:xz": ".xz"}[compression]
    return ar_archive([("debian-binary", b"2.0\n"), ("control.tar.gz", control),
                (f"data.tar{suffix}", _compress(_tar(entries, "w"), compression))])


_GOOD_TREE = [("./usr", tarfile.DIRTYPE, "", 0o755, b""), ("./usr/bin", tarfile.DIRTYPE, "", 0o755, b""),
              ("./usr/bin/x", tarfile.REGTYPE, "", 0o755, b"#!/bin/sh\n"),
              ("./usr/bin/y", tarfile.SYMTYPE, "x", 0o777, b"")]
GOOD_DEB = deb(_GOOD_TREE, "w")
GOOD_DEB_GZ, GOOD_DEB_XZ = deb(_GOOD_TREE, "w:gz"), deb(_GOOD_TREE, "w:xz")

debs = st.one_of(
    st.builds(deb, st.lists(tar_entry, max_size=6), st.sampled_from(["w", "w:gz", "w:xz"])),
    mutations(GOOD_DEB, resize=False),  # uncompressed: ar and tar headers are reached
    mutations(GOOD_DEB, region=(0, 0x90)),  # ar headers and debian-binary
    mutations(GOOD_DEB_GZ, resize=False), mutations(GOOD_DEB_XZ, resize=False),  # the decompressors
)


def _outside(sandbox: Path, dest: Path) -> list[str]:
    return sorted(str(p) for p in sandbox.rglob("*") if dest not in (p, *p.parents))


@budget(300, deadline_ms=5000)
@given(debs)
@example(deb([("./loop", tarfile.SYMTYPE, "loop2", 0o777, b""),
              ("./loop2", tarfile.SYMTYPE, "loop", 0o777, b"")], "w"))
@example(GOOD_DEB[:135] + b"\x04" + GOOD_DEB[136:])  # found by the fuzzer: FEXTRA in control.tar.gz
def test_mutated_debs_extract_inside_their_tree_or_raise_blindbox_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp) / "s"
        (sandbox / "pkg").mkdir(parents=True)
        path = sandbox / "pkg" / "fuzz.deb"
        path.write_bytes(data)
        dest = sandbox / "pkg" / "tree"
        try:
            extract_deb(path, dest)
        except BlindboxError:
            assert not dest.exists(), "a refused package left files behind"
        try:
            read_deb_control(path)
        except BlindboxError:
            pass
        assert _outside(sandbox / "pkg", dest) == [str(path)]
        assert not (sandbox / "escaped").exists()


# -- firmware volumes, searched for the OVMF loader's initrd token ----------------------------

from builder.boot import OVMF_INITRD_PREFIX, ovmf_initrd_placement  # noqa: E402


def _lzma_section(payload: bytes) -> bytes:
    """An EFI GUID-defined section holding ``payload`` LZMA-compressed (edk2's LzmaCompress)."""
    guid = bytes.fromhex("98584eee14395942 9d6edc7bd79403cf")
    body = lzma.compress(payload, format=lzma.FORMAT_ALONE)
    offset = 4 + 16 + 4
    size = offset + len(body)
    return size.to_bytes(3, "little") + b"\x02" + guid + offset.to_bytes(2, "little") + b"\x01\x00" + body


VOLUME = b"\xff" * 64 + _lzma_section(b"\x00" * 32 + _lzma_section(b"loader " + OVMF_INITRD_PREFIX + b"\0")) + \
    b"\xff" * 64


@budget(150)
@given(st.one_of(mutations(VOLUME, resize=False), mutations(VOLUME)))
@example(VOLUME)
def test_mutated_firmware_volumes_never_crash_the_initrd_token_search(data):
    assert ovmf_initrd_placement(data) in ("ovmf-prefix", "ovmf-suffix", None)
