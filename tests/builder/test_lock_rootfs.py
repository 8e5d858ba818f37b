"""Lock pins of the root filesystem: OCI images, trees (directory, tarball) and Debian package closures."""

from __future__ import annotations

import functools
import gzip
import json
import lzma
import tarfile
from pathlib import Path

import pytest

from builder.errors import BuildError, RecipeError, SourceError
from builder.lock import LockMismatch, check_lock, lock_recipe, parse_lock
from builder.recipe import load_recipe

from . import ocifakes
from .fakes import FakeArchive

HEAD = """\
name: t
source_date_epoch: 1700000000
firmware: {debian: ovmf-amdsev, suite: sid, path: /usr/share/ovmf/OVMF.amdsev.fd}
kernel: {debian: linux-image-amd64, suite: bookworm}
initrd:
  busybox: {debian: busybox-static, suite: bookworm}
cmdline: "console=ttyS0"
shapes:
  - {vmm_profile: qemu, vcpus: [1], vcpu_types: [EPYC-v4]}
"""


@pytest.fixture
def archive(tmp_path):
    a = FakeArchive(tmp_path / "archive")
    a.add("ovmf-amdsev", "2026.08-1", "sid", {"/usr/share/ovmf/OVMF.amdsev.fd": b"fw1"})
    a.add("linux-image-6.1.0-1-amd64", "6.1.1-1", "bookworm", {"/boot/vmlinuz-6.1.0-1-amd64": b"k1"})
    a.add("linux-image-amd64", "6.1.1-1", "bookworm", {}, depends=["linux-image-6.1.0-1-amd64"])
    a.add("busybox-static", "1:1.35-4", "bookworm", {"/bin/busybox": b"bb"})
    a.add("dmsetup", "2:1.02.185-2", "bookworm", {"/sbin/dmsetup": b"dm"}, depends=["libdevmapper1.02.1"])
    a.add("libdevmapper1.02.1", "2:1.02.185-2", "bookworm", {"/lib/libdevmapper.so.1.02.1": b"l"}, depends=["libc6"])
    a.add("libc6", "2.36-9", "bookworm", {"/lib/x86_64-linux-gnu/libc.so.6": b"libc"}, depends=["libgcc-s1"])
    a.add("libgcc-s1", "12.2-14", "bookworm", {"/lib/x86_64-linux-gnu/libgcc_s.so.1": b"gcc"}, depends=["libc6"])
    a.add("app", "1.0-1", "bookworm", {"/usr/bin/app": b"#!/bin/sh\n"}, depends=["libc6", "tzdata"])
    a.add("tzdata", "2024a-1", "bookworm", {"/usr/share/zoneinfo/UTC": b"tz"})
    return a


def write_recipe(tmp_path: Path, rootfs: str) -> Path:
    d = tmp_path / "r"
    d.mkdir(parents=True, exist_ok=True)
    (d / "t.yaml").write_text(HEAD + "rootfs:\n" + rootfs)
    return d / "t.yaml"


def relock(path: Path, archive, **kw):
    r = load_recipe(path)
    result = lock_recipe(r, archive, **kw)
    return r, result


def round_trip(lock):
    again = parse_lock(lock.to_json(), Path("t.lock"))
    assert again.inputs == lock.inputs
    return again


# -- Debian closures -------------------------------------------------------------------------------

def test_debian_rootfs_pins_the_listed_packages_and_their_closure(tmp_path, archive):
    path = write_recipe(tmp_path, "  debian: {suite: bookworm, packages: [app]}\n")
    r, result = relock(path, archive)
    lock = result.lock
    names = lock.names()
    assert [n for n in names if n.startswith("rootfs:")] == ["rootfs:app", "rootfs:libc6", "rootfs:libgcc-s1",
                                                             "rootfs:tzdata"]
    assert "binary:/sbin/dmsetup" in names and "library:libdevmapper1.02.1" in names and "rootfs" not in names
    app = lock.get("rootfs:app")
    assert app.kind == "debian" and app.version == "1.0-1"
    assert app.wants == {"rootfs_packages": ["app"], "suite": "bookworm", "arch": "amd64"}
    assert app.sha256 == archive.resolve("app", "bookworm").sha256
    check_lock(r, round_trip(lock))


def test_debian_rootfs_relock_keeps_pins_and_update_input_rootfs_repins(tmp_path, archive):
    path = write_recipe(tmp_path, "  debian: {suite: bookworm, packages: [app]}\n")
    r, first = relock(path, archive)
    archive.add("tzdata", "2025a-1", "bookworm", {"/usr/share/zoneinfo/UTC": b"tz2"})
    _, kept = relock(path, archive, previous=first.lock)
    assert kept.lock.inputs == first.lock.inputs and kept.changes == []
    _, other = relock(path, archive, previous=first.lock, update=True, only=["kernel"])
    assert other.lock.get("rootfs:tzdata").version == "2024a-1"
    _, upd = relock(path, archive, previous=first.lock, update=True, only=["rootfs"])
    assert upd.lock.get("rootfs:tzdata").version == "2025a-1"
    assert [c.name for c in upd.changed_pins] == ["rootfs:tzdata"] and upd.changes[0].reason == "update"
    _, one = relock(path, archive, previous=first.lock, update=True, only=["rootfs:tzdata"])
    assert one.lock.get("rootfs:tzdata").version == "2025a-1"


def test_debian_rootfs_drift_is_refused(tmp_path, archive):
    path = write_recipe(tmp_path, "  debian: {suite: bookworm, packages: [app]}\n")
    _, result = relock(path, archive)
    lock = result.lock
    write_recipe(tmp_path, "  debian: {suite: bookworm, packages: [app, tzdata]}\n")
    with pytest.raises(LockMismatch, match="input 'rootfs:app': .* now asks for Debian packages app, tzdata from "
                                           "bookworm .amd64. but .* was made for another root filesystem"):
        check_lock(load_recipe(path), lock)
    # relocking follows the recipe, and reports why
    r2, again = relock(path, archive, previous=lock)
    check_lock(r2, again.lock)
    assert {c.reason for c in again.changes} == {"recipe changed"}
    # a recipe without rootfs refuses the leftover pins
    path.write_text(HEAD)
    with pytest.raises(LockMismatch, match="pins the root filesystem .'rootfs:app'., which .* no longer declares"):
        check_lock(load_recipe(path), lock)
    # and a listed package the lock does not pin
    write_recipe(tmp_path, "  debian: {suite: bookworm, packages: [app]}\n")
    pruned = type(lock)(lock.recipe, tuple(i for i in lock.inputs if i.name != "rootfs:app"))
    with pytest.raises(LockMismatch, match="input 'rootfs:app' .Debian package app of the root filesystem. is "
                                           "declared"):
        check_lock(load_recipe(path), pruned)


def test_an_unresolvable_dependency_names_the_chain(tmp_path, archive):
    archive.add("web", "1-1", "bookworm", {"/usr/bin/web": b"w"}, depends=["app", "libc6", "httpd-cgi"])
    path = write_recipe(tmp_path, "  debian: {suite: bookworm, packages: [web]}\n")
    with pytest.raises(SourceError) as ei:
        relock(path, archive)
    assert str(ei.value) == ("rootfs: the package httpd-cgi, needed by web -> httpd-cgi, cannot be pinned: Debian "
                             "bookworm (amd64) has no package of that name in main (it is a virtual package or not "
                             "in main); add a package that provides it to rootfs.debian.packages.")
    archive.add("app2", "1-1", "bookworm", {}, depends=["libc6", "web"])
    write_recipe(tmp_path, "  debian: {suite: bookworm, packages: [app2]}\n")
    with pytest.raises(SourceError, match="needed by app2 -> web -> httpd-cgi, cannot be pinned"):
        relock(path, archive)


def test_a_provided_virtual_dependency_is_satisfied_by_its_provider(tmp_path, archive):
    class Providing(FakeArchive):
        def control(self, pkg):
            fields = super().control(pkg)
            if pkg.name == "mini-httpd":
                fields["Provides"] = "httpd-cgi, httpd (= 1)"
            return fields
    a = Providing(tmp_path / "archive2")
    for (name, suite), entries in archive.packages.items():
        for pkg, files, deps in entries:
            a.add(name, pkg.version, suite, files, deps)
    a.add("web", "1-1", "bookworm", {}, depends=["httpd-cgi"])
    a.add("mini-httpd", "1-1", "bookworm", {})
    path = write_recipe(tmp_path, "  debian: {suite: bookworm, packages: [web, mini-httpd]}\n")
    _, result = relock(path, a)
    assert [n for n in result.lock.names() if n.startswith("rootfs:")] == ["rootfs:mini-httpd", "rootfs:web"]


def test_cli_unresolvable_dependency_exits_2(tmp_path, archive, monkeypatch, capsys):
    from .test_lock_fields import _lock_cli
    archive.add("web", "1-1", "bookworm", {}, depends=["httpd-cgi"])
    path = write_recipe(tmp_path, "  debian: {suite: bookworm, packages: [web]}\n")
    rc, _, err = _lock_cli(path, archive, monkeypatch, capsys, tmp_path)
    assert rc == 2 and "rootfs: the package httpd-cgi, needed by web -> httpd-cgi, cannot be pinned" in err
    assert not path.with_suffix(".lock").exists()


def test_update_input_must_name_an_input(tmp_path, archive):
    path = write_recipe(tmp_path, "  directory: app\n")
    (path.parent / "app").mkdir()
    r, first = relock(path, archive)
    with pytest.raises(BuildError, match="its inputs are .*, libraries, rootfs"):
        lock_recipe(r, archive, previous=first.lock, update=True, only=["rootfz"])


# -- OCI images ------------------------------------------------------------------------------------

def test_oci_image_is_pinned_by_its_manifest_digest(tmp_path, archive):
    path = write_recipe(tmp_path, "  oci: {path: image/}\n")
    _, manifest = ocifakes.make_layout(path.parent / "image", [[ocifakes.f("bin/app", "x", 0o755)]])
    r, result = relock(path, archive)
    pin = result.lock.get("rootfs")
    assert (pin.kind, pin.sha256, pin.size, pin.path, pin.origin, pin.wants) == (
        "oci", manifest["digest"].split(":")[1], manifest["size"], "image/", "oci:image/",
        {"oci": "image/", "ref": None})
    check_lock(r, round_trip(result.lock))
    # the tag is part of what the pin was made for
    write_recipe(tmp_path, "  oci: {path: image/, ref: v2}\n")
    with pytest.raises(LockMismatch, match="input 'rootfs': .* now asks for OCI image image/ .tag v2."):
        check_lock(load_recipe(path), result.lock)


def test_docker_save_archive_is_pinned_by_its_config_digest(tmp_path, archive):
    path = write_recipe(tmp_path, "  oci: {path: app.tar}\n")
    ocifakes.make_docker_save(path.parent / "app.tar", [[ocifakes.f("bin/app", "x", 0o755)]])
    _, result = relock(path, archive)
    pin = result.lock.get("rootfs")
    with tarfile.open(path.parent / "app.tar") as tf:
        cfg = next(m for m in tf.getmembers() if m.name.endswith(".json") and m.name != "manifest.json")
    assert (pin.kind, pin.sha256, pin.size) == ("oci", cfg.name.removesuffix(".json"), cfg.size)


def test_oci_update_repins_a_changed_image(tmp_path, archive):
    path = write_recipe(tmp_path, "  oci: {path: image/}\n")
    ocifakes.make_layout(path.parent / "image", [[ocifakes.f("bin/app", "x", 0o755)]])
    _, first = relock(path, archive)
    import shutil
    shutil.rmtree(path.parent / "image")
    _, m2 = ocifakes.make_layout(path.parent / "image", [[ocifakes.f("bin/app", "y", 0o755)]])
    _, kept = relock(path, archive, previous=first.lock)
    assert kept.lock.get("rootfs") == first.lock.get("rootfs")
    _, upd = relock(path, archive, previous=first.lock, update=True, only=["rootfs"])
    assert upd.lock.get("rootfs").sha256 == m2["digest"].split(":")[1]
    assert [c.name for c in upd.changed_pins] == ["rootfs"]


# -- directories and tarballs -----------------------------------------------------------------------

def _tree_entries():
    return [ocifakes.d("srv"), ocifakes.f("srv/app.py", "print('hi')\n", 0o644),
            ocifakes.f("bin/run", "#!/bin/sh\n", 0o755), ocifakes.sym("bin/py", "/usr/bin/python3")]


def test_directory_and_tarballs_of_one_tree_get_one_pin(tmp_path, archive):
    d = tmp_path / "r"
    d.mkdir()
    raw = ocifakes.tar_bytes(_tree_entries())
    (d / "app.tar").write_bytes(raw)
    (d / "app.tar.gz").write_bytes(gzip.compress(raw, mtime=0))
    (d / "app.tar.xz").write_bytes(lzma.compress(raw))
    (d / "app").mkdir()
    with tarfile.open(d / "app.tar") as tf:
        for m in tf.getmembers():
            target = d / "app" / m.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if m.issym():
                target.symlink_to(m.linkname)
            elif m.isdir():
                target.mkdir(exist_ok=True)
            else:
                target.write_bytes(tf.extractfile(m).read())
                target.chmod(m.mode)
    (d / "app" / "srv" / "app.py").chmod(0o4644)     # setuid bits are dropped by the rule: the same tree
    pins = {}
    for source in ("tarball: app.tar", "tarball: app.tar.gz", "tarball: app.tar.xz", "directory: app"):
        path = write_recipe(tmp_path, f"  {source}\n")
        r, result = relock(path, archive)
        pin = result.lock.get("rootfs")
        assert pin.kind == "tree" and pin.path == source.split(": ")[1]
        assert pin.origin == source.replace(": ", ":") and pin.wants == dict([source.split(": ")])
        check_lock(r, round_trip(result.lock))
        pins[source] = (pin.sha256, pin.size)
    assert len(set(pins.values())) == 1, pins
    assert pins["directory: app"][1] == len("print('hi')\n") + len("#!/bin/sh\n")
    # one changed byte is another pin
    (d / "app" / "bin" / "run").write_text("#!/bin/sh \n")
    _, result = relock(write_recipe(tmp_path, "  directory: app\n"), archive)
    assert result.lock.get("rootfs").sha256 != pins["directory: app"][0]


def test_a_tree_source_that_breaks_the_rule_is_refused_at_lock_time(tmp_path, archive):
    d = tmp_path / "r"
    d.mkdir()
    (d / "app.tar").write_bytes(ocifakes.tar_bytes([ocifakes.f("../evil", "x")]))
    path = write_recipe(tmp_path, "  tarball: app.tar\n")
    with pytest.raises(SourceError, match="app.tar contains the member name '../evil' with '..'"):
        relock(path, archive)
    (d / "app").mkdir()
    (d / "app" / "out").symlink_to("../../../etc")
    path = write_recipe(tmp_path, "  directory: app\n")
    with pytest.raises(SourceError, match=r"symlink 'out' -> '../../../etc' points outside the directory tree"):
        relock(path, archive)
    path = write_recipe(tmp_path, "  directory: missing\n")
    with pytest.raises(SourceError, match="missing does not exist or is not a directory"):
        relock(path, archive)


# -- the lock file's own checks ----------------------------------------------------------------------

def _doc(tmp_path, archive, rootfs: str, setup=None) -> dict:
    path = write_recipe(tmp_path, rootfs)
    if setup:
        setup(path.parent)
    _, result = relock(path, archive)
    return json.loads(result.lock.to_json())


def _pin(doc):
    return next(e for e in doc["inputs"] if e["name"] == "rootfs")


@pytest.mark.parametrize("source, setup, mutate, words", [
    ("  oci: {path: image/}\n", "oci", lambda e: e.update(path="other/"), "'path' 'other/' is not the image"),
    ("  oci: {path: image/}\n", "oci", lambda e: e.update(origin="oci:x"), "'origin' is 'oci:x'"),
    ("  oci: {path: image/}\n", "oci", lambda e: e["wants"].pop("ref"), "'wants' is not what an OCI image entry"),
    ("  oci: {path: image/}\n", "oci", lambda e: e["wants"].update(ref=5), "'wants' is not what an OCI image"),
    ("  oci: {path: image/}\n", "oci", lambda e: e.update(version="1"), "'version' does not belong to a oci input"),
    ("  oci: {path: image/}\n", "oci", lambda e: e.pop("path"), "entry 'rootfs' has no valid 'path'"),
    ("  directory: app\n", "dir", lambda e: e.update(wants={"folder": "app"}), "'wants' is not what a tree entry"),
    ("  directory: app\n", "dir", lambda e: e.update(path="app2"), "'path' 'app2' is not the directory the entry"),
    ("  directory: app\n", "dir", lambda e: e.update(origin="tarball:app"), "'origin' is 'tarball:app'"),
    ("  directory: app\n", "dir", lambda e: e.update(debian={}), "'debian' does not belong to a tree input"),
    ("  directory: app\n", "dir", lambda e: e.update(kind="tarball"), "has unknown kind 'tarball'"),
    ("  directory: app\n", "dir", lambda e: e.update(sha256="x" * 64), "has a malformed sha256"),
])
def test_rootfs_lock_entries_are_checked(tmp_path, archive, source, setup, mutate, words):
    def prepare(d):
        if setup == "oci":
            ocifakes.make_layout(d / "image", [[ocifakes.f("bin/app", "x", 0o755)]])
        else:
            (d / "app").mkdir()
    doc = _doc(tmp_path, archive, source, prepare)
    parse_lock(json.dumps(doc).encode(), Path("t.lock"))
    mutate(_pin(doc))
    with pytest.raises(RecipeError) as ei:
        parse_lock(json.dumps(doc).encode(), Path("t.lock"))
    assert words in str(ei.value) and str(ei.value).startswith("t.lock: ")


def test_kind_change_is_drift(tmp_path, archive):
    d = tmp_path / "r"
    d.mkdir()
    (d / "app").mkdir()
    (d / "app.tar").write_bytes(ocifakes.tar_bytes([]))
    _, result = relock(write_recipe(tmp_path, "  directory: app\n"), archive)
    with pytest.raises(LockMismatch, match="input 'rootfs': .* now asks for tarball app.tar"):
        check_lock(load_recipe(write_recipe(tmp_path, "  tarball: app.tar\n")), result.lock)


# -- the real archive -----------------------------------------------------------------------------

PYTHON_ROOTFS = ("  debian: {suite: bookworm, packages: [python3.11]}\n  entrypoint: [python3.11]\n"
                 "  cmd: [-c, 'print(6 * 7)']\n")


@functools.lru_cache(maxsize=None)
def python_closure(directory: str):
    """The recipe with PYTHON_ROOTFS in ``directory`` and its closure in the real bookworm (once per process)."""
    from builder.lock import rootfs_closure
    from tests import realinputs
    path = write_recipe(Path(directory), PYTHON_ROOTFS)
    r = load_recipe(path)
    return r, tuple(rootfs_closure(r, realinputs.archive()))


@pytest.mark.network
def test_python_closure_from_bookworm(tmp_path_factory):
    _, closure = python_closure(str(tmp_path_factory.getbasetemp() / "python-rootfs"))
    pins = {e.name[len("rootfs:"):]: e for e in closure}
    assert {"python3.11", "python3.11-minimal", "libpython3.11-stdlib", "libpython3.11-minimal", "libc6",
            "libssl3", "zlib1g", "libexpat1", "media-types"} <= set(pins), sorted(pins)
    for name, e in pins.items():
        assert e.kind == "debian" and e.debian["name"] == name and e.debian["suite"] == "bookworm"
        assert e.wants == {"rootfs_packages": ["python3.11"], "suite": "bookworm", "arch": "amd64"}
    assert pins["python3.11"].version == pins["python3.11-minimal"].version


def test_cli_lock_and_update_input_rootfs(tmp_path, archive, monkeypatch, capsys):
    from .test_lock_fields import _lock_cli
    path = write_recipe(tmp_path, "  tarball: app.tar\n")
    (path.parent / "app.tar").write_bytes(ocifakes.tar_bytes(_tree_entries()))
    rc, out, err = _lock_cli(path, archive, monkeypatch, capsys, tmp_path)
    assert rc == 0, err
    first = parse_lock(path.with_suffix(".lock").read_bytes(), path.with_suffix(".lock")).get("rootfs")
    assert first.kind == "tree" and "rootfs: pinned tarball app.tar" in out
    (path.parent / "app.tar").write_bytes(ocifakes.tar_bytes(_tree_entries()[:2]))
    rc, out, err = _lock_cli(path, archive, monkeypatch, capsys, tmp_path, "--update", "--input", "rootfs")
    assert rc == 0, err
    assert f"rootfs: tarball app.tar -> tarball app.tar (sha256 {first.sha256[:16]}..." in out
    rc, out, err = _lock_cli(path, archive, monkeypatch, capsys, tmp_path, "--update", "--input", "rootfz")
    assert rc == 2 and "--input 'rootfz' is not an input of" in err


def test_rootfs_files_are_pinned_like_initrd_files(tmp_path, archive):
    path = write_recipe(tmp_path, "  directory: app\n  files:\n    - {path: /srv/app.py, file: app.py}\n"
                                  "    - {path: /srv/motd, content: hi}\n")
    (path.parent / "app").mkdir()
    (path.parent / "app.py").write_text("print(1)\n")
    r, result = relock(path, archive)
    pin = result.lock.get("rootfs_file:/srv/app.py")
    assert (pin.kind, pin.path, pin.size, pin.wants) == ("file", "app.py", 9, {"file": "app.py"})
    assert [n for n in result.lock.names() if n.startswith("rootfs")] == ["rootfs_file:/srv/app.py", "rootfs"]
    check_lock(r, round_trip(result.lock))
    path.write_text(path.read_text().replace("file: app.py", "file: app2.py"))
    with pytest.raises(LockMismatch, match="input 'rootfs_file:/srv/app.py': .* now asks for file=app2.py"):
        check_lock(load_recipe(path), result.lock)
