"""builder.sources against the real Debian archive, real apt and real .deb files.

Tests marked ``network`` talk to the Debian archive through the private apt trees; they
share the package lists of the user's cache (``tests.realinputs.archive()``) but put the
packages they corrupt, pin wrongly or race for into a per-test content cache.  Nothing
here mocks apt or the archive.  The .deb files for the extraction tests are built in
the test, by ``dpkg-deb`` (well-formed ones) or by hand (hostile ones).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from builder.errors import (InputDigestMismatch, OfflineMiss, SourceError, SourceGone, StaleSuite,
                            ToolMissing)
from builder.sources import (ContentCache, DebianArchive, DebianPackage, cache_root, extract_deb, fetch_url,
                             local_file, read_deb_control, sha256_file)
from builder.sources.debian import _depends_names
from measure.errors import InputError
from measure.inputs import file_digest
from tests import realinputs
from tests.builder.fakes import ar_archive

REPO = Path(__file__).resolve().parents[2]
SMALL = ("busybox-static", "bookworm")      # 0.9 MB, amd64
TINY_ALL = ("ovmf-amdsev", "sid")           # 0.7 MB, Architecture: all, no dependencies


def _archive(tmp_path: Path, *, fresh_lists: bool = False, **kw) -> DebianArchive:
    """An archive with its own content cache; package lists shared unless ``fresh_lists``."""
    kw.setdefault("allow_stale", realinputs.ALLOW_STALE)
    apt_dir = tmp_path / "apt" if fresh_lists else realinputs.archive().apt_dir
    return DebianArchive(cache=ContentCache(tmp_path / "cache"), apt_dir=apt_dir, **kw)


def _empty_path(tmp_path: Path, monkeypatch) -> None:
    """From here on no external program can be started by name (apt-get, apt-cache, zstd)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))


# =========================================================================== the cache

def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("BLINDBOX_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("BLINDBOX_CACHE")
    assert cache_root() == tmp_path / "xdg" / "blindbox"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "blindbox"


def test_cache_put_and_path(tmp_path):
    cache = ContentCache(tmp_path)
    data = b"blindbox content cache\n"
    digest = hashlib.sha256(data).hexdigest()
    assert cache.path(digest) is None
    p = cache.put_bytes(data)
    assert p == tmp_path / "sha256" / digest and p.read_bytes() == data
    assert cache.path(digest) == p and cache.path(digest.upper()) == p
    src = tmp_path / "src"
    src.write_bytes(data)
    assert cache.put_file(src, digest) == p and src.exists()          # copy, source kept
    assert cache.put_file(src, digest, move=True) == p and not src.exists()
    assert list((tmp_path / "tmp").iterdir()) == []                    # no staging leftovers
    with pytest.raises(SourceError, match="64 hexadecimal digits"):
        cache.path("abc")


def test_cache_put_file_refuses_wrong_sha256(tmp_path):
    cache = ContentCache(tmp_path)
    src = tmp_path / "src"
    src.write_bytes(b"one")
    wrong = hashlib.sha256(b"two").hexdigest()
    with pytest.raises(InputDigestMismatch) as e:
        cache.put_file(src, wrong)
    assert e.value.expected == wrong and e.value.actual == sha256_file(src)
    assert wrong in str(e.value) and e.value.actual in str(e.value)
    assert cache.path(wrong) is None and cache.path(e.value.actual) is None
    assert list((tmp_path / "tmp").iterdir()) == []


def test_cache_corrupt_entry_is_quarantined_then_replaced(tmp_path):
    cache = ContentCache(tmp_path)
    p = cache.put_bytes(b"x" * 10000)
    digest = p.name
    os.chmod(p, 0o644)
    with open(p, "r+b") as f:
        f.seek(5000)
        f.write(b"y")
    with pytest.raises(InputDigestMismatch, match="moved to") as e:
        cache.path(digest)
    assert e.value.expected == digest and e.value.actual != digest
    assert not p.exists() and len(list((tmp_path / "quarantine").iterdir())) == 1
    assert cache.path(digest) is None
    assert cache.put_bytes(b"x" * 10000) == p and cache.path(digest) == p


def _put_in_child(root: str, data: bytes, barrier_file: str) -> str:
    # runs in a child process: wait until both children exist, then race
    while not os.path.exists(barrier_file):
        time.sleep(0.001)
    return str(ContentCache(root).put_bytes(data))


def test_cache_concurrent_puts_from_processes(tmp_path):
    import multiprocessing
    data = os.urandom(3 << 20)
    barrier = tmp_path / "go"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = [pool.apply_async(_put_in_child, (str(tmp_path / "c"), data, str(barrier)))
                   for _ in range(4)]
        barrier.touch()
        paths = {r.get(timeout=60) for r in results}
    assert len(paths) == 1
    entry = Path(paths.pop())
    assert sha256_file(entry) == hashlib.sha256(data).hexdigest()
    assert os.listdir(tmp_path / "c" / "sha256") == [entry.name]
    assert os.listdir(tmp_path / "c" / "tmp") == []


# =========================================================================== lock entries

def test_debian_package_round_trip_and_validation():
    pkg = DebianPackage(name="ovmf", version="2022.11-6+deb12u2", arch="all", suite="bookworm",
                        filename="pool/main/e/edk2/ovmf_2022.11-6+deb12u2_all.deb", size=7683456,
                        sha256="E73D3D1A8799F7F6FC16B73501D913EDCDD86237556FBFF30693E747E6DC262E")
    assert pkg.sha256 == pkg.sha256.lower()
    d = pkg.to_dict()
    assert list(d) == ["name", "version", "arch", "suite", "filename", "size", "sha256"]
    assert DebianPackage.from_dict(json.loads(json.dumps(d))) == pkg
    with pytest.raises(SourceError, match="missing sha256"):
        DebianPackage.from_dict({k: v for k, v in d.items() if k != "sha256"})
    with pytest.raises(SourceError, match="unknown colour"):
        DebianPackage.from_dict({**d, "colour": "red"})
    with pytest.raises(SourceError, match="wrong type"):
        DebianPackage.from_dict({**d, "size": "7683456"})
    with pytest.raises(SourceError, match="64 hexadecimal"):
        DebianPackage.from_dict({**d, "sha256": "e73d"})


def test_depends_field_names():
    assert _depends_names("linux-image-6.1.0-56-amd64 (= 6.1.192-2)") == ["linux-image-6.1.0-56-amd64"]
    assert _depends_names("kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | "
                          "linux-initramfs-tool") == ["kmod", "linux-base", "initramfs-tools"]
    assert _depends_names("libc6:any (>= 2.34), python3:any [amd64]") == ["libc6", "python3"]
    assert _depends_names("") == []


# =========================================================================== extract_deb

def _dpkg_deb(tmp_path: Path, compression: str, name: str = "bbtest") -> Path:
    """A well-formed .deb built by dpkg-deb, with files, dirs, symlinks and a hard link."""
    root = tmp_path / f"root-{compression}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: Test <t@example.org>\n"
        f"Depends: libc6 (>= 2.36), foo | bar\nDescription: blindbox extraction test\n")
    (root / "usr/share/bb/sub").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/share/bb/data.bin").write_bytes(os.urandom(70000))
    (root / "usr/share/bb/sub/empty").write_bytes(b"")
    tool = root / "usr/bin/bbtool"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    os.link(root / "usr/share/bb/data.bin", root / "usr/share/bb/hardlink.bin")
    os.symlink("data.bin", root / "usr/share/bb/relative-link")
    os.symlink("/usr/bin/bbtool", root / "usr/share/bb/absolute-link")
    os.symlink("sub", root / "usr/share/bb/dir-link")
    for p in root.rglob("*"):
        os.utime(p, (1700000000, 1700000000), follow_symlinks=False)
    deb = tmp_path / f"{name}-{compression}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def _snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                out[rel] = ("file", st.st_mode & 0o7777, int(st.st_mtime), sha256_file(p))
    return out


@pytest.mark.parametrize("compression", ["xz", "gzip", "zstd", "none"])
def test_extract_deb_matches_dpkg_deb(tmp_path, compression):
    deb = _dpkg_deb(tmp_path, compression)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    extract_deb(deb, ours)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(theirs)], check=True)
    a, b = _snapshot(ours), _snapshot(theirs)
    # the one intended difference: absolute symlink targets become relative to the tree
    assert b.pop("usr/share/bb/absolute-link") == ("link", "/usr/bin/bbtool")
    assert a.pop("usr/share/bb/absolute-link") == ("link", "../../../usr/bin/bbtool")
    assert a == b
    assert (ours / "usr/share/bb/absolute-link").resolve() == (ours / "usr/bin/bbtool").resolve()
    assert os.stat(ours / "usr/share/bb/hardlink.bin").st_ino == os.stat(ours / "usr/share/bb/data.bin").st_ino
    assert a["usr/bin/bbtool"][1] == 0o755 and a["usr/bin/bbtool"][2] == 1700000000
    control = read_deb_control(deb)
    assert (control["Package"], control["Version"]) == ("bbtest", "1.0-1")
    assert _depends_names(control["Depends"]) == ["libc6", "foo"]


def test_extract_deb_zstd_without_zstd_refuses_clearly(tmp_path, monkeypatch):
    deb = _dpkg_deb(tmp_path, "zstd")
    _empty_path(tmp_path, monkeypatch)
    with pytest.raises(ToolMissing, match="install the Debian package zstd") as e:
        extract_deb(deb, tmp_path / "out")
    assert (e.value.tool, e.value.package) == ("zstd", "zstd")




def _hand_deb(path: Path, entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> Path:
    """A .deb assembled byte by byte, so it can contain what dpkg-deb would never write."""
    control = io.BytesIO()
    with tarfile.open(fileobj=control, mode="w:gz") as tf:
        text = b"Package: hostile\nVersion: 1\nArchitecture: all\nDescription: x\n"
        info = tarfile.TarInfo("./control")
        info.size = len(text)
        tf.addfile(info, io.BytesIO(text))
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz", format=tarfile.GNU_FORMAT) as tf:
        for e in entries:
            info, body = e if isinstance(e, tuple) else (e, b"")
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body) if body else None)
    path.write_bytes(ar_archive([("debian-binary", b"2.0\n"), ("control.tar.gz", control.getvalue()),
                          ("data.tar.xz", data.getvalue())]))
    return path


def _ti(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info


HOSTILE = {
    "parent-traversal": ([(_ti("./usr/../../escaped"), b"evil")], "path traversal"),
    "absolute-name": ([(_ti("/tmp/escaped"), b"evil")], "absolute member name"),
    "char-device": ([_ti("./dev/null", tarfile.CHRTYPE)], "device node"),
    "block-device": ([_ti("./dev/sda", tarfile.BLKTYPE)], "device node"),
    "fifo": ([_ti("./run/fifo", tarfile.FIFOTYPE)], "FIFO"),
    "symlink-out": ([_ti("./etc/x", tarfile.SYMTYPE, "../../../../escaped")], "outside the package tree"),
    "write-through-symlink": ([_ti("./lnk", tarfile.SYMTYPE, "usr"), _ti("./usr", tarfile.DIRTYPE, mode=0o755),
                               (_ti("./lnk/escaped"), b"evil")], "refusing to write through it"),
    "hardlink-out": ([_ti("./x", tarfile.LNKTYPE, "../escaped")], "path traversal"),
    "hardlink-to-missing": ([_ti("./x", tarfile.LNKTYPE, "./nothing")], "not a regular file"),
    # each link alone looks inside; followed together they leave the tree
    "symlink-chain-out": ([_ti("./a", tarfile.DIRTYPE, mode=0o755), _ti("./a/b", tarfile.DIRTYPE, mode=0o755),
                           _ti("./a/b/up", tarfile.SYMTYPE, "../.."),
                           _ti("./t", tarfile.SYMTYPE, "a/b/up/..")], "resolves outside"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_extract_deb_refuses_hostile_members(tmp_path, case):
    entries, message = HOSTILE[case]
    deb = _hand_deb(tmp_path / f"{case}.deb", entries)
    sandbox = tmp_path / "a" / "b" / "c"
    with pytest.raises(SourceError, match=message):
        extract_deb(deb, sandbox / "dest")
    assert not (sandbox / "escaped").exists() and not (sandbox.parent / "escaped").exists()
    assert not Path("/tmp/escaped").exists()


def test_extract_deb_rewrites_absolute_symlinks_inside_the_tree(tmp_path):
    deb = _hand_deb(tmp_path / "abs.deb", [_ti("./usr", tarfile.DIRTYPE, mode=0o755),
                                           (_ti("./usr/target"), b"inside"),
                                           _ti("./usr/deep", tarfile.DIRTYPE, mode=0o755),
                                           _ti("./usr/deep/link", tarfile.SYMTYPE, "/usr/target"),
                                           _ti("./etc-link", tarfile.SYMTYPE, "/etc/passwd")])
    extract_deb(deb, tmp_path / "t")
    assert os.readlink(tmp_path / "t/usr/deep/link") == "../../usr/target"
    assert (tmp_path / "t/usr/deep/link").read_bytes() == b"inside"
    # a link to a file the package does not ship dangles inside the tree, never on the host
    assert os.readlink(tmp_path / "t/etc-link") == "etc/passwd"
    assert not (tmp_path / "t/etc-link").exists()


def test_extract_deb_rejects_damaged_files(tmp_path):
    good = _dpkg_deb(tmp_path, "xz")
    not_deb = tmp_path / "not.deb"
    not_deb.write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(SourceError, match="not a Debian package"):
        extract_deb(not_deb, tmp_path / "o1")
    truncated = tmp_path / "truncated.deb"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SourceError, match="truncated"):
        extract_deb(truncated, tmp_path / "o2")
    corrupt = tmp_path / "corrupt.deb"
    blob = bytearray(good.read_bytes())
    blob[len(blob) // 2: len(blob) // 2 + 100] = bytes(100)  # inside data.tar.xz
    corrupt.write_bytes(blob)
    with pytest.raises(SourceError, match="corrupt"):
        extract_deb(corrupt, tmp_path / "o3")
    busy = tmp_path / "busy"
    (busy / "x").mkdir(parents=True)
    with pytest.raises(SourceError, match="not empty"):
        extract_deb(good, busy)


# =========================================================================== URLs and files

@pytest.fixture
def http_dir(tmp_path):
    """A directory served on 127.0.0.1 by http.server for the duration of one test."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield root, base, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_fetch_url_http(tmp_path, http_dir):
    root, base, server = http_dir
    data = os.urandom(200000)
    digest = hashlib.sha256(data).hexdigest()
    (root / "firmware.fd").write_bytes(data)
    cache = ContentCache(tmp_path / "cache")

    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(InputDigestMismatch) as e:
        fetch_url(f"{base}/firmware.fd", wrong, cache=cache)
    assert (e.value.expected, e.value.actual) == (wrong, digest)
    assert f"{base}/firmware.fd" in str(e.value)
    assert cache.path(digest) is None and cache.path(wrong) is None

    p = fetch_url(f"{base}/firmware.fd", digest, cache=cache)
    assert p.read_bytes() == data and p == cache.entry(digest)

    with pytest.raises(SourceGone, match="HTTP 404"):
        fetch_url(f"{base}/missing.fd", wrong, cache=cache)

    server.shutdown()  # from now on the origin is gone: the cache must answer
    assert fetch_url(f"{base}/firmware.fd", digest, cache=cache) == p
    assert fetch_url(f"{base}/firmware.fd", digest, cache=cache, offline=True) == p


def test_fetch_url_offline_miss_and_unreachable(tmp_path):
    cache = ContentCache(tmp_path)
    digest = hashlib.sha256(b"x").hexdigest()
    with pytest.raises(OfflineMiss, match="without --offline"):
        fetch_url("https://example.invalid/x", digest, cache=cache, offline=True)
    with pytest.raises(SourceError, match="Could not download"):
        fetch_url("http://127.0.0.1:9/x", digest, cache=cache, timeout=5)  # port 9: discard, closed
    with pytest.raises(SourceError, match="unsupported scheme"):
        fetch_url("ftp://example.org/x", digest, cache=cache)


def test_fetch_url_file(tmp_path):
    src = tmp_path / "kernel with space"
    src.write_bytes(b"bzImage" * 1000)
    digest = sha256_file(src)
    cache = ContentCache(tmp_path / "cache")
    url = src.as_uri()
    assert "%20" in url
    with pytest.raises(InputDigestMismatch):
        fetch_url(url, hashlib.sha256(b"").hexdigest(), cache=cache)
    p = fetch_url(url, digest, cache=cache, offline=True)  # a local file needs no network
    assert p.read_bytes() == src.read_bytes() and p != src
    src.unlink()
    assert fetch_url(url, digest, cache=cache) == p
    with pytest.raises(SourceError, match="does not exist"):
        fetch_url((tmp_path / "nope").as_uri(), hashlib.sha256(b"1").hexdigest(), cache=cache)


def test_local_file(tmp_path):
    f = tmp_path / "app.img"
    f.write_bytes(b"app")
    assert local_file(f, None) == f
    assert local_file(f, sha256_file(f).upper()) == f
    with pytest.raises(InputDigestMismatch, match="update the pin"):
        local_file(f, hashlib.sha256(b"other").hexdigest())
    with pytest.raises(SourceError, match="does not exist"):
        local_file(tmp_path / "missing", None)


def test_sha256_file_is_the_calculators_streamer(tmp_path):
    f = tmp_path / "big.img"
    f.write_bytes(bytes(range(256)) * 9000)  # more than one 1 MiB chunk
    assert sha256_file(f) == file_digest(f, "input").hex() == hashlib.sha256(f.read_bytes()).hexdigest()
    with pytest.raises(InputError, match=r"cannot read the input file '.*missing': No such file or directory; "
                                         r"check the path\."):
        sha256_file(tmp_path / "missing")
    with pytest.raises(InputError, match=r"the cached path '.*' is a directory; give a file\."):
        sha256_file(tmp_path, "cached")


# =========================================================================== Debian, for real

@pytest.mark.network
def test_resolve_download_and_verify_small_package(tmp_path):
    arch = _archive(tmp_path)
    pkg = arch.resolve(*SMALL)
    assert (pkg.name, pkg.suite, pkg.arch) == ("busybox-static", "bookworm", "amd64")
    assert pkg.filename.startswith("pool/main/b/busybox/") and pkg.filename.endswith(".deb")
    assert arch.resolve(*SMALL, version=pkg.version) == pkg
    deb = arch.download(pkg)
    assert deb == arch.cache.entry(pkg.sha256)
    assert deb.stat().st_size == pkg.size and sha256_file(deb) == pkg.sha256
    control = read_deb_control(deb)
    assert (control["Package"], control["Version"]) == (pkg.name, pkg.version)
    assert arch.fetched == [pkg]
    assert arch.download(pkg) == deb and arch.fetched == [pkg]   # second time: cache
    assert (pkg.version, "bookworm") in arch.served_versions(*SMALL)


@pytest.mark.network
def test_unpack_and_member_of_real_ovmf_amdsev():
    arch = realinputs.archive()
    pkg = arch.resolve(*TINY_ALL)
    assert pkg.arch == "all" and arch.depends(pkg) == []
    fd = arch.member(pkg, "/usr/share/ovmf/OVMF.amdsev.fd")
    assert fd.is_file() and fd.stat().st_size % 4096 == 0 and fd.stat().st_size >= 1 << 20
    tree = arch.unpack(pkg)
    assert fd == tree / "usr/share/ovmf/OVMF.amdsev.fd" and arch.unpack(pkg) == tree
    with pytest.raises(SourceError, match=r"no file /usr/share/OVMF/OVMF.amdsev.fd \(similar names in "
                                          r"the package: /usr/share/ovmf/OVMF.amdsev.fd"):
        arch.member(pkg, "/usr/share/OVMF/OVMF.amdsev.fd")
    with pytest.raises(SourceError, match="is a directory"):
        arch.member(pkg, "/usr/share/ovmf")
    with pytest.raises(SourceError, match="not a file path"):
        arch.member(pkg, "/usr/../../etc/passwd")


@pytest.mark.network
def test_real_inputs_have_the_documented_shape():
    ovmf, pkg = realinputs.bookworm_ovmf()
    assert pkg.suite == "bookworm" and ovmf.name == "OVMF_CODE.fd" and ovmf.stat().st_size <= 2 << 20
    generic = realinputs.bookworm_ovmf("OVMF.fd")[0]
    assert generic.parent.name == "ovmf" and generic.stat().st_size == 2 << 20
    assert realinputs.bookworm_ovmf("OVMF_CODE_4M.fd")[0].stat().st_size > 2 << 20
    bzimage, kpkg = realinputs.debian_kernel()
    assert kpkg.name.startswith("linux-image-6.1.0-") and kpkg.name.endswith("-amd64")
    assert bzimage.name == "vmlinuz-" + kpkg.name[len("linux-image-"):]
    head = bzimage.read_bytes()[:0x210]
    assert head[0x202:0x206] == b"HdrS"                                # x86 boot protocol header
    # Debian ships modules.order but not modules.dep (depmod writes that at install time)
    modules = realinputs.kernel_tree() / "lib/modules" / bzimage.name[len("vmlinuz-"):]
    assert (modules / "modules.order").is_file() and not (modules / "modules.dep").exists()
    assert next(modules.rglob("dm-verity.ko*")).is_file()
    busybox, bpkg = realinputs.busybox_static()
    assert busybox.read_bytes()[:4] == b"\x7fELF" and bpkg.name == "busybox-static"


@pytest.mark.network
def test_cache_hit_needs_no_apt_even_offline(tmp_path, monkeypatch):
    online = _archive(tmp_path)
    pkg = online.resolve(*TINY_ALL)
    deb = online.download(pkg)
    _empty_path(tmp_path, monkeypatch)  # any apt-get / apt-cache call would now raise ToolMissing
    offline = DebianArchive(cache=ContentCache(tmp_path / "cache"), apt_dir=tmp_path / "no-lists",
                            offline=True)
    assert offline.download(pkg) == deb
    assert offline.depends(pkg) == []                   # read from the cached .deb, not apt
    assert offline.member(pkg, "/usr/share/ovmf/OVMF.amdsev.fd").is_file()
    assert offline.fetched == [] and offline.updated == []
    assert not (tmp_path / "no-lists").exists()
    with pytest.raises(ToolMissing, match="apt"):       # proof that apt really is unreachable now
        online.resolve("ovmf", "bookworm")


@pytest.mark.network
def test_corrupted_cache_entry_is_detected_then_fetched_again(tmp_path):
    arch = _archive(tmp_path)
    pkg = arch.resolve(*SMALL)
    deb = arch.download(pkg)
    os.chmod(deb, 0o644)
    with open(deb, "r+b") as f:
        f.seek(pkg.size // 2)
        byte = f.read(1)
        f.seek(pkg.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(InputDigestMismatch) as e:
        arch.download(pkg)
    assert e.value.expected == pkg.sha256 and e.value.actual != pkg.sha256
    assert pkg.sha256 in str(e.value) and e.value.actual in str(e.value)
    again = arch.download(pkg)
    assert again == deb and sha256_file(again) == pkg.sha256
    assert arch.fetched == [pkg, pkg]


@pytest.mark.network
def test_pinned_version_gone(tmp_path):
    arch = _archive(tmp_path)
    current = arch.resolve(*SMALL)
    with pytest.raises(SourceGone) as e:
        arch.resolve(*SMALL, version="0.1-blindbox-never-existed")
    msg = str(e.value)
    assert "busybox-static 0.1-blindbox-never-existed is no longer served by Debian bookworm" in msg
    assert "run `blindbox lock --update RECIPE`" in msg and "this changes the measurement" in msg
    assert current.version in msg
    ghost = DebianPackage(**{**current.to_dict(), "version": "0.1-blindbox-never-existed",
                             "sha256": hashlib.sha256(b"ghost").hexdigest()})
    with pytest.raises(SourceGone, match="lock --update"):
        arch.download(ghost)
    with pytest.raises(SourceError, match="no package named blindbox-no-such-package") as e:
        arch.resolve("blindbox-no-such-package", "bookworm")
    assert not isinstance(e.value, SourceGone)


@pytest.mark.network
def test_pinned_sha256_differs_from_the_archive(tmp_path):
    arch = _archive(tmp_path)
    pkg = arch.resolve(*SMALL)
    tampered = DebianPackage(**{**pkg.to_dict(), "sha256": hashlib.sha256(b"other").hexdigest()})
    with pytest.raises(InputDigestMismatch) as e:
        arch.download(tampered)
    assert e.value.actual == pkg.sha256 and e.value.expected == tampered.sha256
    assert arch.cache.path(tampered.sha256) is None and arch.fetched == []


def test_offline_miss(tmp_path):
    arch = DebianArchive(cache=ContentCache(tmp_path / "cache"), apt_dir=tmp_path / "apt", offline=True)
    with pytest.raises(OfflineMiss, match="package lists .* are missing"):
        arch.resolve("ovmf", "bookworm")
    pkg = DebianPackage(name="ovmf", version="1", arch="all", suite="bookworm",
                        filename="pool/main/e/edk2/ovmf_1_all.deb", size=1,
                        sha256=hashlib.sha256(b"not cached").hexdigest())
    with pytest.raises(OfflineMiss, match="not in the cache"):
        arch.download(pkg)
    with pytest.raises(OfflineMiss):
        arch.unpack(pkg)


def test_bad_requests_are_source_errors(tmp_path):
    arch = DebianArchive(cache=ContentCache(tmp_path), offline=True)
    with pytest.raises(SourceError, match="Unknown Debian suite 'stable'"):
        arch.resolve("ovmf", "stable")
    with pytest.raises(SourceError, match="not a valid Debian package name"):
        arch.resolve("../ovmf", "bookworm")
    with pytest.raises(SourceError, match="not a valid Debian version"):
        arch.resolve("ovmf", "bookworm", version="1.0; rm -rf /")
    with pytest.raises(SourceError, match="Unknown Debian suite"):
        DebianArchive(cache=ContentCache(tmp_path), allow_stale=["bullseye"])


_CONCURRENT = """
import json, sys
from builder.sources import ContentCache, DebianArchive
arch = DebianArchive(cache=ContentCache(sys.argv[1]), apt_dir=sys.argv[2], allow_stale=["sid"])
pkg = arch.resolve("ovmf-amdsev", "sid")
path = arch.download(pkg)
print(json.dumps({"path": str(path), "sha256": pkg.sha256, "fetched": len(arch.fetched),
                  "updated": arch.updated}))
"""


@pytest.mark.network
@pytest.mark.parametrize("caches", ["one-cache", "two-caches"])
def test_two_processes_download_the_same_package(tmp_path, caches):
    """Both processes race for the first `apt-get update` of fresh lists and for the download.

    With one content cache, one process downloads and the other waits and reuses it.
    With two caches sharing the package lists, both download, but apt still runs once.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = []
    for i in range(2):
        cache = tmp_path / ("cache" if caches == "one-cache" else f"cache{i}")
        argv = [sys.executable, "-c", _CONCURRENT, str(cache), str(tmp_path / "apt")]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(len(r["updated"]) for r in results) == [0, 1]
    assert results[0]["sha256"] == results[1]["sha256"]
    if caches == "one-cache":
        assert results[0]["path"] == results[1]["path"]
        assert sorted(r["fetched"] for r in results) == [0, 1]
    else:
        assert [r["fetched"] for r in results] == [1, 1]
    for r in results:
        cache = Path(r["path"]).parent.parent
        assert os.listdir(cache / "sha256") == [r["sha256"]]
        assert sha256_file(r["path"]) == r["sha256"]
        assert os.listdir(cache / "tmp") == []


# =========================================================================== the private apt tree

def _dump_values(dump: str) -> dict[str, str]:
    out = {}
    for line in dump.splitlines():
        key, _, value = line.partition(" ")
        out[key] = value.rstrip(";").strip('"')
    return out


@pytest.fixture
def hostile_apt_env(tmp_path, monkeypatch):
    """APT_CONFIG pointing at a parts directory that tries to weaken and redirect apt."""
    parts = tmp_path / "hostile-parts"
    parts.mkdir()
    (parts / "99hostile").write_text(
        'Acquire::Check-Valid-Until "false";\nAPT::Architecture "arm64";\n'
        f'Dir::Etc::SourceParts "{tmp_path}/hostile-sources";\nAcquire::AllowInsecureRepositories "true";\n')
    conf = tmp_path / "hostile.conf"
    conf.write_text(f'Dir::Etc::Parts "{parts}";\n')
    monkeypatch.setenv("APT_CONFIG", str(conf))
    return conf


def test_private_apt_config_reads_nothing_from_the_host(tmp_path, hostile_apt_env):
    arch = DebianArchive(cache=ContentCache(tmp_path / "cache"))
    tree = arch.apt_config("bookworm").parent
    values = _dump_values(arch.apt_config_dump("bookworm"))
    for key in ("Dir::Etc", "Dir::Etc::parts", "Dir::Etc::main", "Dir::Etc::sourcelist",
                "Dir::Etc::sourceparts", "Dir::Etc::preferences", "Dir::Etc::preferencesparts",
                "Dir::Etc::trusted", "Dir::Etc::trustedparts", "Dir::State::lists", "Dir::State::status",
                "Dir::Cache", "Dir::Cache::archives"):
        assert values[key].startswith(str(tree) + "/"), (key, values[key])
    assert values["Acquire::Check-Valid-Until"] == "true"
    assert values["APT::Architecture"] == "amd64"
    assert values["Acquire::AllowInsecureRepositories"] == "false"
    assert list((tree / "etc" / "apt.conf.d").iterdir()) == []
    assert Path(values["Dir::State::status"]).read_bytes() == b""
    # nothing points back into the host's /etc/apt (whose apt.conf.d here turns the check off)
    assert not [k for k, v in values.items() if v.startswith("/etc/apt") or v == "etc/apt"]
    sources = (tree / "etc" / "sources.d" / "debian.sources").read_text()
    assert "Suites: bookworm bookworm-updates" in sources and "Suites: bookworm-security" in sources
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in sources
    assert "Check-Valid-Until" not in sources
    assert "Check-Valid-Until: no" in (tree / "etc" / "sources-stale.d" / "debian.sources").read_text()


@pytest.mark.network
def test_freshness_check_is_apts_own_and_hostile_config_cannot_disable_it(tmp_path, hostile_apt_env):
    # Any Release file older than 1 s is expired for this archive.  Were the hostile parts
    # directory read, apt would accept it (Check-Valid-Until false) and write the lists.
    strict = DebianArchive(cache=ContentCache(tmp_path / "cache"), apt_dir=tmp_path / "apt",
                           max_release_age=1)
    with pytest.raises(StaleSuite, match=r"apt refuses Debian bookworm.*--allow-stale bookworm") as e:
        strict.resolve(*SMALL)
    assert e.value.suite == "bookworm"
    lists = tmp_path / "apt" / "bookworm-amd64" / "lists"
    assert not any(p.name.endswith("Packages") for p in lists.iterdir())

    # the explicit choice: the same archive age limit, but bookworm allowed to be stale
    lenient = DebianArchive(cache=ContentCache(tmp_path / "cache"), apt_dir=tmp_path / "apt",
                            max_release_age=1, allow_stale=["bookworm"])
    pkg = lenient.resolve(*SMALL)
    assert pkg.name == "busybox-static" and lenient.updated == ["bookworm"]

    # lists fetched under allow_stale are not used silently by an archive without it
    offline_strict = DebianArchive(cache=ContentCache(tmp_path / "cache"), apt_dir=tmp_path / "apt",
                                   max_release_age=1, offline=True)
    with pytest.raises(StaleSuite, match="cached Release file of bookworm.*offline mode cannot refresh"):
        offline_strict.resolve(*SMALL)


STALE_ADVICE = ("if you accept package lists that may lack security updates, allow it explicitly for this suite "
                "with --allow-stale sid (blindbox build, lock and check-repro; blindbox fetch --suite sid takes "
                "--allow-stale alone; allow_stale=[\"sid\"] in Python); apt's signature checks stay on.")


def _expired_sid_lists(cache: Path) -> None:
    """Cached sid lists whose Release file expired (as the lagging archive here serves them)."""
    tree = DebianArchive(cache=ContentCache(cache), offline=True)._tree("sid", "amd64")
    (tree.lists / "deb.debian.org_debian_dists_sid_InRelease").write_text(
        "Origin: Debian\nSuite: unstable\nCodename: sid\nDate: Fri, 30 Oct 2026 08:00:00 UTC\n"
        "Valid-Until: Fri, 06 Nov 2026 08:00:00 UTC\n")


def test_expired_release_names_the_allow_stale_option(tmp_path):
    _expired_sid_lists(tmp_path / "cache")
    archive = DebianArchive(cache=ContentCache(tmp_path / "cache"), offline=True)
    with pytest.raises(StaleSuite) as e:
        archive.resolve(*TINY_ALL)
    assert str(e.value) == ("Debian sid cannot be used: the cached Release file of sid (dated Fri, 30 Oct 2026 "
                            "08:00:00 UTC) expired on 2026-11-06 08:00 UTC (Valid-Until) and offline mode "
                            "cannot refresh it; " + STALE_ADVICE)
    p = subprocess.run([sys.executable, "-m", "blindbox.cli", "fetch", TINY_ALL[0], "--suite", "sid", "--offline"],
                       capture_output=True, text=True, env={**os.environ, "BLINDBOX_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 2, p.stderr
    assert STALE_ADVICE in p.stderr and "Traceback" not in p.stderr
    assert "option later" not in p.stderr


@pytest.mark.network
def test_sid_is_refused_by_apt_exactly_when_its_release_file_expired(tmp_path):
    """Without allow_stale, sid works exactly when its Release file has not expired.

    On 2026-11-26 it had: Valid-Until 2026-11-06, and apt refused it.
    """
    import datetime
    import email.utils
    import urllib.request
    strict = DebianArchive(cache=ContentCache(tmp_path / "cache"), apt_dir=tmp_path / "apt")
    with urllib.request.urlopen(f"{strict.mirror}/dists/sid/InRelease", timeout=60) as resp:
        text = resp.read().decode(errors="replace")
    valid_until = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                        if ln.startswith("Valid-Until:")), None)
    expired = valid_until is not None and \
        email.utils.parsedate_to_datetime(valid_until) < datetime.datetime.now(datetime.timezone.utc)
    if expired:
        with pytest.raises(StaleSuite, match=r'apt refuses Debian sid.*is expired.*--allow-stale sid'):
            strict.resolve(*TINY_ALL)
    else:
        assert strict.resolve(*TINY_ALL).name == TINY_ALL[0]
