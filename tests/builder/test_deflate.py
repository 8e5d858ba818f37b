"""The initrd compressor: the pinned zlib writes the same bytes on every host, or the build refuses.

The golden digests below were written by zlib 1.2.13 (Debian bookworm's zlib1g
1:1.2.13.dfsg-1, the pin of recipes/*.lock).  If they fail, the compressor the builder loads
is not the pinned one (or the pinned one changed), and every published initrd digest would
change with it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder.steps import cpio, deflate
from tests.realinputs import pinned_compressor, pinned_deflate

from builder import pipeline
from tests.builder.test_pipeline import STEPS, fake_initrd

from .test_bad_input_exits import refused
from .test_pipeline import env  # noqa: F401 - the fixture

pytestmark = pytest.mark.network

FIXTURES = Path(__file__).parent.parent / "fixtures" / "compressor"

#: sha256 of each fixture, and of its initrd gzip member (header, pinned deflate stream, trailer)
GOLDEN = {
    "empty.bin": ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                  "9ceffb7310338057cfe71a4ae1e2c98d2c485d81cdef906532a801f457a38d64"),
    "mixed.bin": ("fca856a7472e1a630467a5fac9ec8339663e325fe99046d993755850c91cdede",
                  "b5325d31900f060a172e64453842c241cb849a94cb6a0dbb33d85edde961bcb7"),
    "text.bin": ("2605504da5efcd85819b1d84ae434d44465006f485f3711ca345bddf4e29e8c1",
                 "048d6def4be97cd0cd7b3f16cf6078bc281969b1dbcf4400bf93310887e75719"),
}
#: the ~1 MiB synthetic initrd of synthetic_cpio(): its archive and its gzip member
SYNTHETIC_CPIO = "26b8e36b8cd06c8db6e88608c798d6f444dea5e3a2a7fa93b876dce211911124"
SYNTHETIC_GZIP = "f1689acfdece5c6443a65f7070c1b1c89b5f49044e3817568e7718702b75a970"


def _stream(seed: str, size: int) -> bytes:
    """Incompressible bytes that are the same under every Python: SHA-256 in counter mode."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{i}".encode()).digest()
        i += 1
    return bytes(out[:size])


def synthetic_cpio() -> bytes:
    """About 1 MiB shaped like an initrd: module-like files mixing incompressible runs, tables,
    text and repeats at every distance of the 32 KiB window, a few large files, many links."""
    a = cpio.Archive()
    text = (FIXTURES / "text.bin").read_bytes()
    for n in range(48):
        noise = _stream(f"module{n}", 1024 + 37 * n)
        table = b"".join((i * (n + 3)).to_bytes(4, "little") + b"\0\0\x80\x3f" for i in range(400 + n))
        body = noise + table + text[: 700 + 53 * n] + noise[: 300 + n] + table[::-1][: 2000]
        a.add_file(f"lib/modules/6.1.0-test/kernel/drivers/m{n:02d}.ko", body, 0o644)
    a.add_file("bin/busybox", _stream("busybox", 96 * 1024) + bytes(32 * 1024) + text * 4, 0o755)
    a.add_file("usr/lib/x86_64-linux-gnu/libc.so.6", (_stream("libc", 4096) + b"GLIBC_2.36\0") * 40, 0o644)
    for name in ("sh", "mount", "modprobe", "insmod", "cat", "echo", "sleep", "switch_root"):
        a.add_symlink(f"bin/{name}", "busybox")
    a.add_file("init", b"#!/bin/sh\nexec /bin/busybox sh\n", 0o755)
    a.add_char_device("dev/console", 5, 1)
    return a.to_bytes(mtime=1735689600)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_fixture_bytes_compress_to_the_golden_digest(name):
    data = (FIXTURES / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == GOLDEN[name][0], f"the fixture {name} itself changed"
    member = cpio.compress(data, "gzip", pinned_deflate())
    assert gzip.decompress(member) == data
    assert hashlib.sha256(member).hexdigest() == GOLDEN[name][1], (
        f"{name}: the initrd compressor ({cpio.compressor_identity('gzip', pinned_deflate())}) writes other bytes "
        f"than the pinned zlib 1.2.13 did")


def test_synthetic_initrd_compresses_to_the_golden_digest():
    raw = synthetic_cpio()
    assert 700_000 < len(raw) < 1_300_000
    assert hashlib.sha256(raw).hexdigest() == SYNTHETIC_CPIO, "the synthetic archive itself changed"
    member = cpio.compress(raw, "gzip", pinned_deflate())
    assert cpio.decompress(member, "gzip") == raw
    assert hashlib.sha256(member).hexdigest() == SYNTHETIC_GZIP, (
        f"the initrd compressor ({cpio.compressor_identity('gzip', pinned_deflate())}) writes other bytes than the "
        f"pinned zlib 1.2.13 did")


def test_the_pinned_library_is_the_one_loaded_not_the_hosts():
    d = pinned_deflate()
    tree, pkg = pinned_compressor()
    assert d.path == deflate.find_library(tree) and d.path.is_relative_to(tree)
    assert d.version == "1.2.13" and d.package == f"zlib1g {pkg.version}" and d.sha256 == pkg.sha256
    maps = Path("/proc/self/maps").read_text()
    assert str(d.path) in maps, "the pinned libz is not mapped into the process"
    # its crc32 is its own and agrees with the standard's
    assert d.crc32(b"123456789") == 0xCBF43926 == zlib.crc32(b"123456789")


def test_raw_stream_is_a_raw_deflate_of_the_whole_input():
    data = (FIXTURES / "mixed.bin").read_bytes() * 3
    raw = pinned_deflate().raw(data)
    assert zlib.decompressobj(-15).decompress(raw) == data


@pytest.mark.parametrize("version,zlib_version", [("1:1.2.13.dfsg-1", "1.2.13"), ("1:1.3.dfsg+really1.3.1-1", "1.3"),
                                                  ("1.2.11.dfsg-2+deb11u2", "1.2.11")])
def test_upstream_version(version, zlib_version):
    assert deflate.upstream_version(version) == zlib_version


def test_a_library_of_another_version_is_refused():
    tree, pkg = pinned_compressor()
    with pytest.raises(deflate.CompressorError, match=r"reports zlib 1\.2\.13, but the lock pins zlib1g 1:1\.3-1 "
                                                      r"\(zlib 1\.3\); remove the blindbox cache's copy of zlib1g"):
        deflate.load(tree, "1:1.3-1", pkg.sha256)


def test_a_package_without_the_library_is_refused(tmp_path):
    with pytest.raises(deflate.CompressorError, match="holds no libz.so.1.x library under usr/lib/x86_64-linux-gnu "
                                                      "or lib/x86_64-linux-gnu; pin the Debian package zlib1g"):
        deflate.find_library(tmp_path)
    tree, _ = pinned_compressor()
    lib = deflate.find_library(tree)
    for extra in ("usr/lib/x86_64-linux-gnu/libz.so.1.2.99", "lib/x86_64-linux-gnu/libz.so.1.2.13"):
        (tmp_path / extra).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lib, tmp_path / extra)
    with pytest.raises(deflate.CompressorError, match="holds 2 libz.so.1.x library"):
        deflate.find_library(tmp_path)


@pytest.mark.parametrize("machine", ["aarch64", "riscv64", ""])
def test_a_host_that_is_not_x86_64_is_refused(machine):
    with pytest.raises(deflate.UnsupportedHost, match="the initrd's gzip compressor is the pinned amd64 zlib "
                                                      r"\(zlib1g from Debian bookworm\), which runs only on x86_64"):
        deflate.check_host(machine)
    deflate.check_host("x86_64")


def test_without_the_pinned_zlib_gzip_is_a_bug_not_the_hosts_zlib():
    with pytest.raises(ValueError, match="needs the pinned zlib"):
        cpio.compress(b"x", "gzip")


# -- through the pipeline and the command line: exit 2, one sentence ------------------------

def initrd_with_pinned_zlib(b):
    """The test pipeline's initrd (its inputs' bytes, no ELF busybox needed), gzip-compressed by the
    pinned zlib the build loads from its lock."""
    d = pipeline._deflate(b)
    fake_initrd(b)
    b.initrd = SimpleNamespace(data=cpio.compress(b.initrd.data, "gzip", d),
                               compressor=cpio.compressor_identity("gzip", d), listing=())


Z_STEPS = tuple((n, initrd_with_pinned_zlib if n == "initrd" else f) for n, f in STEPS)


@pytest.fixture
def cli_build(env, monkeypatch):  # noqa: F811
    real_build = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda req, **kw: real_build(req, archive=env.archive, steps=Z_STEPS, **kw))
    monkeypatch.setenv("BLINDBOX_CACHE", str(env.cache))
    return env


def test_build_on_a_non_x86_64_host_exits_2(cli_build, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(deflate.platform, "machine", lambda: "aarch64")
    refused(["build", cli_build.recipe.path, "--out", cli_build.out], capsys,
            "this host is aarch64, but the initrd's gzip compressor is the pinned amd64 zlib",
            "build on an x86_64 (amd64) host")
    assert not cli_build.out.exists()


def test_a_lock_without_the_compressor_pin_exits_2_and_says_how_to_add_it(cli_build, capsys):  # noqa: F811
    lock_path = cli_build.recipe.lock_path
    doc = json.loads(lock_path.read_text())
    doc["inputs"] = [e for e in doc["inputs"] if e["name"] != "compressor"]
    lock_path.write_text(json.dumps(doc, indent=2) + "\n")
    refused(["build", cli_build.recipe.path, "--out", cli_build.out], capsys,
            "does not pin the initrd's compressor (Debian package zlib1g from bookworm",
            f"Run `blindbox lock {cli_build.recipe.path}` to add that pin: the other pins stay as they are and the "
            f"launch digests do not change.")


def test_lock_adds_only_the_compressor_pin(cli_build, monkeypatch):  # noqa: F811
    from builder.lock import lock_recipe, read_lock
    from builder.recipe import load_recipe

    recipe = load_recipe(cli_build.recipe.path)
    full = read_lock(recipe.lock_path)
    old = type(full)(full.recipe, tuple(e for e in full.inputs if e.name != "compressor"))
    res = lock_recipe(recipe, cli_build.archive, previous=old)
    assert [c.describe().split(" (")[0] for c in res.changes] == \
        [f"compressor: pinned zlib1g {full.get('compressor').version} from Debian bookworm"]
    assert res.lock.inputs == full.inputs and not res.changed_pins


def test_recipe_without_gzip_needs_no_compressor(env):  # noqa: F811
    from builder.recipe import load_recipe

    path = env.recipe.path
    path.write_text(path.read_text().replace("initrd:\n", "initrd:\n  compression: none\n", 1))
    assert "compressor" not in [s.name for s in load_recipe(path).inputs()]


def test_xz_is_refused_in_a_recipe(cli_build, capsys):  # noqa: F811
    path = cli_build.recipe.path
    path.write_text(path.read_text().replace("initrd:\n", "initrd:\n  compression: xz\n", 1))
    refused(["build", path, "--out", cli_build.out], capsys, f"{path}:",
            "compression 'xz' is not offered: its stream would come from this host's liblzma",
            "use gzip (compressed by the zlib the lock pins) or none.")


def test_the_pipeline_compresses_with_the_pinned_library(env, monkeypatch):  # noqa: F811
    from builder.pipeline import BuildRequest

    loaded = []
    real = deflate.load

    def spy(tree, version, sha256):
        d = real(tree, version, sha256)
        loaded.append(d)
        return d
    monkeypatch.setattr(deflate, "load", spy)
    pipeline.build(BuildRequest(recipe=env.recipe.path, out=env.out, cache_root=env.cache), steps=Z_STEPS,
                   archive=env.archive)
    assert len(loaded) == 1 and loaded[0].version == "1.2.13"
    m = json.loads((env.out / "manifest.json").read_bytes())
    assert m["tool"]["initrd_compressor"] == loaded[0].describe()
    pin = next(i for i in m["inputs"] if i["name"] == "compressor")
    assert pin["sha256"] == loaded[0].sha256 and pin["origin"].startswith("debian:bookworm/zlib1g=")
