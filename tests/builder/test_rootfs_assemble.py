"""Assembling the application's root filesystem: every source kind, the overlays, and the start settings."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from builder.errors import BuildError, InputDigestMismatch, SourceError
from builder.lock import lock_recipe
from builder.recipe import DEFAULT_PATH, load_recipe
from builder.rootfs_tree import tree_digest
from builder.steps.init import AppConfig
from builder.steps.rootfs import RootfsError, RootfsSource, assemble_rootfs

from . import ocifakes
from .fakes import ar_archive
from .ocifakes import d, f, sym
from .test_lock_rootfs import HEAD, archive  # noqa: F401 - the fixture

EPOCH = 1700000000
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:\napp:x:1001:\n"


def setup(tmp_path: Path, rootfs: str, archive, prepare=None):  # noqa: F811 - given the fixture's value
    rdir = tmp_path / "r"
    rdir.mkdir(exist_ok=True)
    (rdir / "t.yaml").write_text(HEAD + "rootfs:\n" + rootfs)
    if prepare is not None:
        prepare(rdir)
    recipe = load_recipe(rdir / "t.yaml")
    return recipe, lock_recipe(recipe, archive).lock


def base_layer(extra=()):
    return [d("usr"), d("usr/bin"), f("usr/bin/python3.11", "#!elf", 0o755),
            sym("usr/bin/python3", "/usr/bin/python3.11"), d("etc"), f("etc/passwd", PASSWD), f("etc/group", GROUP),
            f("usr/bin/notexec", "x", 0o644),
            d("usr/bin/adir"), *extra]


def assert_settled(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            assert os.lstat(os.path.join(dirpath, n)).st_mtime == EPOCH, os.path.join(dirpath, n)
    for m in ("proc", "sys", "dev", "tmp", "run"):
        assert stat.S_ISDIR(os.lstat(root / m).st_mode), m


# -- OCI images ------------------------------------------------------------------------------------

def test_oci_layout_gives_the_tree_and_the_image_config(tmp_path, archive):  # noqa: F811
    layers = [base_layer([d("srv"), f("srv/old", "gone")]), [f("srv/.wh.old"), f("srv/new", "n")]]
    recipe, lock = setup(tmp_path, "  oci: {path: image/}\n", archive,
                         lambda rd: ocifakes.make_layout(rd / "image", layers))
    tree = assemble_rootfs(recipe, lock, {}, tmp_path / "root")
    root = tree.root
    assert root == tmp_path / "root"
    assert not (root / "srv/old").exists() and (root / "srv/new").read_text() == "n"
    assert os.readlink(root / "usr/bin/python3") == "/usr/bin/python3.11"       # absolute links kept
    assert tree.app == AppConfig(argv=("/usr/bin/python3", "-m", "app", "--port", "8080"),
                                 env=(("PATH", "/usr/bin:/bin"), ("LANG", "C.UTF-8")), workdir="/srv/app",
                                 uid=1000, gid=1000)
    assert (root / "srv/app").is_dir()                                         # WorkingDir created
    assert tree.tree_sha256 == tree_digest(root)
    image_layers = [s for s in tree.sources if s.kind == "oci-layer"]
    assert [s.name for s in image_layers] == ["layer 1 (application/vnd.oci.image.layer.v1.tar+gzip)",
                                              "layer 2 (application/vnd.oci.image.layer.v1.tar+gzip)"]
    assert tree.sources[0].kind == "oci-config" and all(len(s.sha256) == 64 for s in tree.sources)
    assert_settled(root)


def test_docker_save_archive(tmp_path, archive):  # noqa: F811
    cfg = dict(ocifakes.DEFAULT_CONFIG, Env=["LANG=C"], User="", WorkingDir="")
    recipe, lock = setup(tmp_path, "  oci: {path: app.tar}\n", archive,
                         lambda rd: ocifakes.make_docker_save(rd / "app.tar", [base_layer()], config=cfg))
    tree = assemble_rootfs(recipe, lock, {}, tmp_path / "root")
    assert tree.app == AppConfig(argv=("/usr/bin/python3", "-m", "app", "--port", "8080"),
                                 env=(("LANG", "C"), ("PATH", DEFAULT_PATH)), workdir="/", uid=0, gid=0)
    assert [s.kind for s in tree.sources] == ["oci-config", "oci-layer"]


def test_oci_layout_written_by_umoci(tmp_path, archive):  # noqa: F811
    def prepare(rd: Path):
        img = rd / "image"

        def umoci(*args):
            subprocess.run(["umoci", *args], check=True, capture_output=True, cwd=rd)
        umoci("init", "--layout", str(img))
        umoci("new", "--image", f"{img}:v1")
        umoci("unpack", "--rootless", "--image", f"{img}:v1", str(rd / "bundle"))
        rootfs = rd / "bundle" / "rootfs"
        (rootfs / "bin").mkdir()
        (rootfs / "etc").mkdir()
        (rootfs / "bin" / "app").write_text("#!/bin/sh\necho hi\n")
        (rootfs / "bin" / "app").chmod(0o755)
        (rootfs / "etc" / "passwd").write_text(PASSWD)
        umoci("repack", "--image", f"{img}:v1", str(rd / "bundle"))
        umoci("config", "--image", f"{img}:v1", "--config.entrypoint=/bin/app", "--config.cmd=--serve",
              "--config.env=FOO=bar", "--config.workingdir=/work", "--config.user=app", "--tag", "v2")
        shutil.rmtree(rd / "bundle")
    recipe, lock = setup(tmp_path, "  oci: {path: image, ref: v2}\n  env: {FOO: baz, NEW: x}\n", archive, prepare)
    tree = assemble_rootfs(recipe, lock, {}, tmp_path / "root")
    assert (tree.root / "bin/app").read_text() == "#!/bin/sh\necho hi\n"
    assert tree.app.argv == ("/bin/app", "--serve")
    # the image's variables in its order (FOO overridden in place), then the recipe's new ones, then PATH
    assert tree.app.env == (("FOO", "baz"), ("NEW", "x"), ("PATH", DEFAULT_PATH))
    assert (tree.app.workdir, tree.app.uid, tree.app.gid) == ("/work", 1000, 1001)
    assert (tree.root / "work").is_dir()
    assert_settled(tree.root)


def test_a_changed_image_is_refused_and_nothing_is_left(tmp_path, archive):  # noqa: F811
    recipe, lock = setup(tmp_path, "  oci: {path: image/}\n", archive,
                         lambda rd: ocifakes.make_layout(rd / "image", [base_layer()]))
    shutil.rmtree(recipe.directory / "image")
    ocifakes.make_layout(recipe.directory / "image", [base_layer([f("extra", "x")])])
    with pytest.raises(InputDigestMismatch) as ei:
        assemble_rootfs(recipe, lock, {}, tmp_path / "root")
    msg = str(ei.value)
    assert msg.startswith("input 'rootfs' (OCI image image/, pinned in ") and "has changed: its manifest digest" in msg
    assert f"run `blindbox lock {recipe.path} --update --input rootfs`" in msg
    assert ei.value.exit_code == 2 and not (tmp_path / "root").exists()


def test_a_bad_layer_leaves_no_partial_tree(tmp_path, archive):  # noqa: F811
    recipe, lock = setup(tmp_path, "  oci: {path: image/}\n", archive,
                         lambda rd: ocifakes.make_layout(rd / "image", [base_layer(), [f("../../escape", "x")]]))
    with pytest.raises(SourceError, match="layer 2 .* contains the member name '../../escape' with '..'"):
        assemble_rootfs(recipe, lock, {}, tmp_path / "root")
    assert not (tmp_path / "root").exists()


# -- start settings --------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, argv", [
    ("  entrypoint: [/usr/bin/python3.11]\n", ("/usr/bin/python3.11",)),              # drops the image's Cmd
    ("  cmd: [-c, pass]\n", ("/usr/bin/python3", "-m", "app", "-c", "pass")),
    ("  entrypoint: [python3]\n  cmd: [x]\n", ("/usr/bin/python3", "x")),              # looked up in PATH
    ("  entrypoint: []\n  cmd: [python3.11]\n", ("/usr/bin/python3.11",)),
    ("  entrypoint: [../usr/bin/python3]\n  workdir: /etc\n", ("/usr/bin/python3",)),  # relative to workdir
])
def test_entrypoint_and_cmd_overrides(tmp_path, archive, overrides, argv):  # noqa: F811
    recipe, lock = setup(tmp_path, "  oci: {path: image/}\n" + overrides, archive,
                         lambda rd: ocifakes.make_layout(rd / "image", [base_layer()]))
    assert assemble_rootfs(recipe, lock, {}, tmp_path / "root").app.argv == argv


@pytest.mark.parametrize("user, ids", [
    ("app", (1000, 1001)), ("1000", (1000, 1001)), ("4242", (4242, 0)), ("app:staff", (1000, 50)),
    ("1000:7", (1000, 7)), ("0", (0, 0)), ("4242:app", (4242, 1001)), ("", (0, 0)),
])
def test_user_resolution(tmp_path, archive, user, ids):  # noqa: F811
    recipe, lock = setup(tmp_path, f"  oci: {{path: image/}}\n  user: \"{user}\"\n", archive,
                         lambda rd: ocifakes.make_layout(rd / "image", [base_layer()]))
    app = assemble_rootfs(recipe, lock, {}, tmp_path / "root").app
    assert (app.uid, app.gid) == ids


@pytest.mark.parametrize("overrides, words", [
    ("  user: nobody\n", "rootfs: user 'nobody' is not in the root filesystem's /etc/passwd; give a numeric uid"),
    ("  user: \"app:wheel\"\n", "rootfs: group 'wheel' is not in the root filesystem's /etc/group"),
    ("  entrypoint: [nothere]\n", "rootfs: the program 'nothere' is not an executable file in the root filesystem "
                                  "(looked for it at the PATH /usr/bin:/bin"),
    ("  entrypoint: [/usr/bin/notexec]\n", "the program '/usr/bin/notexec' is not an executable file in the root "
                                           "filesystem (looked for it at /usr/bin/notexec"),
    ("  entrypoint: [/usr/bin/adir]\n", "the program '/usr/bin/adir' is not an executable file"),
    ("  entrypoint: []\n  cmd: []\n", "rootfs: nothing to run: the image has no Entrypoint or Cmd; write "
                                      "rootfs.entrypoint"),
    ("  workdir: /usr/bin/python3.11\n", "is a file in the root filesystem, not a directory"),
])
def test_start_settings_refusals(tmp_path, archive, overrides, words):  # noqa: F811
    recipe, lock = setup(tmp_path, "  oci: {path: image/}\n" + overrides, archive,
                         lambda rd: ocifakes.make_layout(rd / "image", [base_layer()]))
    with pytest.raises(RootfsError) as ei:
        assemble_rootfs(recipe, lock, {}, tmp_path / "root")
    assert words in str(ei.value) and str(ei.value).startswith(f"{recipe.path}:")
    assert isinstance(ei.value, BuildError) and ei.value.exit_code == 2
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("config, words", [
    ({"Env": ["NOEQUALS"]}, "the image's Env entry 'NOEQUALS' is not NAME=value"),
    ({"Env": ["1X=a"]}, "the image's Env entry '1X=a' is not NAME=value"),
    ({"Cmd": ["a\0b"]}, "the image's Entrypoint or Cmd holds the argument 'a\\x00b' with a NUL byte"),
    ({"WorkingDir": "srv"}, "the image's WorkingDir 'srv' is not an absolute path; set rootfs.workdir"),
])
def test_bad_image_config_is_refused(tmp_path, archive, config, words):  # noqa: F811
    cfg = dict(ocifakes.DEFAULT_CONFIG, **config)
    recipe, lock = setup(tmp_path, "  oci: {path: image/}\n", archive,
                         lambda rd: ocifakes.make_layout(rd / "image", [base_layer()], config=cfg))
    with pytest.raises(RootfsError) as ei:
        assemble_rootfs(recipe, lock, {}, tmp_path / "root")
    assert words in str(ei.value), str(ei.value)
    assert not (tmp_path / "root").exists()


def test_a_symlink_chain_to_the_program_is_followed_inside_the_root(tmp_path, archive):  # noqa: F811
    layer = base_layer([sym("usr/bin/py", "python3"), sym("usr/local", "/usr"), d("bin"),
                        sym("bin/py", "../usr/local/bin/py")])
    recipe, lock = setup(tmp_path, "  oci: {path: image/}\n  entrypoint: [py]\n  cmd: []\n  env: {PATH: /sbin:/bin}\n",
                         archive, lambda rd: ocifakes.make_layout(rd / "image", [layer]))
    assert assemble_rootfs(recipe, lock, {}, tmp_path / "root").app.argv == ("/bin/py",)


# -- directories, tarballs and extra files -----------------------------------------------------------

def _make_dir(rd: Path):
    app = rd / "app"
    (app / "bin").mkdir(parents=True)
    (app / "bin" / "run").write_text("#!/bin/sh\n")
    (app / "bin" / "run").chmod(0o4755)
    (app / "lib").symlink_to("/bin")
    (app / "etc").mkdir()
    (app / "etc" / "motd").symlink_to("/etc/issue")


def test_directory_source_with_files(tmp_path, archive):  # noqa: F811
    files = ("  files:\n    - {path: /srv/app.py, file: app.py, mode: \"0755\"}\n"
             "    - {path: /etc/motd, content: hello}\n  entrypoint: [/bin/run]\n  env: {A: \"1\"}\n")

    def prepare(rd):
        _make_dir(rd)
        (rd / "app.py").write_text("print(1)\n")
    recipe, lock = setup(tmp_path, "  directory: app\n" + files, archive, prepare)
    inputs = {"rootfs_file:/srv/app.py": recipe.directory / "app.py"}
    tree = assemble_rootfs(recipe, lock, inputs, tmp_path / "root")
    root = tree.root
    assert stat.S_IMODE(os.lstat(root / "bin/run").st_mode) == 0o755            # setuid dropped by the rule
    assert (root / "srv/app.py").read_text() == "print(1)\n"
    assert stat.S_IMODE(os.lstat(root / "srv/app.py").st_mode) == 0o755
    assert (root / "etc/motd").read_text() == "hello" and not (root / "etc/motd").is_symlink()  # replaced
    assert tree.app == AppConfig(argv=("/bin/run",), env=(("A", "1"), ("PATH", DEFAULT_PATH)), workdir="/")
    assert tree.sources == (
        RootfsSource("tree", "app", lock.get("rootfs").sha256, len("#!/bin/sh\n")),
        RootfsSource("file", "/srv/app.py", hashlib.sha256(b"print(1)\n").hexdigest(), 9),
        RootfsSource("file", "/etc/motd", hashlib.sha256(b"hello").hexdigest(), 5))
    assert_settled(root)


def test_a_changed_directory_is_refused(tmp_path, archive):  # noqa: F811
    recipe, lock = setup(tmp_path, "  directory: app\n  entrypoint: [/bin/run]\n", archive, _make_dir)
    (recipe.directory / "app" / "bin" / "run").write_text("#!/bin/sh\nexit 1\n")
    with pytest.raises(InputDigestMismatch, match=r"input 'rootfs' \(directory app, pinned in .*\) has changed: its "
                                                  r"tree digest .* --update --input rootfs"):
        assemble_rootfs(recipe, lock, {}, tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_tarball_source(tmp_path, archive):  # noqa: F811
    raw = ocifakes.tar_bytes(base_layer([d("proc")]))
    recipe, lock = setup(tmp_path, "  tarball: app.tar.gz\n  entrypoint: [python3]\n", archive,
                         lambda rd: (rd / "app.tar.gz").write_bytes(gzip.compress(raw, mtime=0)))
    tree = assemble_rootfs(recipe, lock, {}, tmp_path / "root")
    assert tree.app.argv == ("/usr/bin/python3",)
    assert [s.kind for s in tree.sources] == ["tree"]
    assert_settled(tree.root)


@pytest.mark.parametrize("layer, files, words", [
    ([sym("run", "/var/run")], "",
     "the root filesystem has /run as a symlink, but the init mounts a file system there"),
    ([f("tmp", "x")], "", "the root filesystem has /tmp as a file"),
    ([sym("opt", "/usr")], "  files:\n    - {path: /opt/x, content: a}\n",
     "rootfs.files /opt/x: /opt is a symlink in the root filesystem, not a directory"),
    ([d("srv"), d("srv/x")], "  files:\n    - {path: /srv/x, content: a}\n",
     "rootfs.files /srv/x: the source has a directory there"),
])
def test_tree_refusals(tmp_path, archive, layer, files, words):  # noqa: F811
    raw = ocifakes.tar_bytes(base_layer(layer))
    recipe, lock = setup(tmp_path, "  tarball: app.tar\n  entrypoint: [python3]\n" + files, archive,
                         lambda rd: (rd / "app.tar").write_bytes(raw))
    with pytest.raises(RootfsError) as ei:
        assemble_rootfs(recipe, lock, {}, tmp_path / "root")
    assert words in str(ei.value) and str(ei.value).startswith(f"{recipe.path}:")
    assert not (tmp_path / "root").exists()


def test_dest_must_not_exist(tmp_path, archive):  # noqa: F811
    recipe, lock = setup(tmp_path, "  directory: app\n", archive, _make_dir)
    (tmp_path / "root").mkdir()
    with pytest.raises(RootfsError, match="it exists; pass a new directory"):
        assemble_rootfs(recipe, lock, {}, tmp_path / "root")
    assert (tmp_path / "root").is_dir()


# -- Debian packages ---------------------------------------------------------------------------------

def deb(path: Path, name: str, entries) -> Path:
    control = gzip.compress(ocifakes.tar_bytes([f("./control", f"Package: {name}\nVersion: 1\n")]), mtime=0)
    data = gzip.compress(ocifakes.tar_bytes(entries), mtime=0)
    path.write_bytes(ar_archive([("debian-binary", b"2.0\n"), ("control.tar.gz", control), ("data.tar.gz", data)]))
    return path


def repin(lock, debs: dict):
    """``lock`` with its rootfs:* pins made for the .deb files ``debs`` (as the cache would serve them)."""
    out = []
    for e in lock.inputs:
        if e.name in debs:
            sha = hashlib.sha256(debs[e.name].read_bytes()).hexdigest()
            e = dataclasses.replace(e, sha256=sha, debian=dict(e.debian, sha256=sha))
        out.append(e)
    return dataclasses.replace(lock, inputs=tuple(out))


def test_debian_packages_in_lock_order(tmp_path, archive):  # noqa: F811
    recipe, lock = setup(tmp_path, "  debian: {suite: bookworm, packages: [app]}\n  entrypoint: [app]\n"
                                   "  user: \"1000\"\n", archive)
    contents = {
        "app": [d("./usr"), d("./usr/bin"), f("./usr/bin/app", "#!/bin/sh\n", 0o755), f("./etc/shared", "app")],
        "libc6": [d("./lib"), f("./lib/libc.so.6", "libc", 0o644), sym("./lib64", "/lib"), f("./etc/shared", "libc"),
                  f("./etc/passwd", PASSWD)],
        "libgcc-s1": [f("./lib/libgcc_s.so.1", "gcc")],
        "tzdata": [f("./usr/share/zoneinfo/UTC", "tz")],
    }
    inputs = {f"rootfs:{n}": deb(tmp_path / f"{n}.deb", n, e) for n, e in contents.items()}
    lock = repin(lock, inputs)
    tree = assemble_rootfs(recipe, lock, inputs, tmp_path / "root")
    root = tree.root
    assert os.readlink(root / "lib64") == "/lib"                       # absolute links kept as written
    assert (root / "etc/shared").read_text() == "libc"                 # lock order: app, libc6, libgcc-s1, tzdata
    assert tree.app == AppConfig(argv=("/usr/bin/app",), env=(("PATH", DEFAULT_PATH),), workdir="/", uid=1000,
                                 gid=1001)
    assert [(s.kind, s.name, s.version) for s in tree.sources] == [
        ("debian", "app", "1.0-1"), ("debian", "libc6", "2.36-9"), ("debian", "libgcc-s1", "12.2-14"),
        ("debian", "tzdata", "2024a-1")]
    assert tree.sources[0].sha256 == lock.get("rootfs:app").sha256
    assert_settled(root)
    # a package that breaks the rule stops the whole tree
    bad = dict(inputs, **{"rootfs:tzdata": deb(tmp_path / "bad.deb", "tzdata", [sym("./x", "../../..")])})
    with pytest.raises(InputDigestMismatch, match=r"input 'rootfs:tzdata' \(tzdata 2024a-1 from Debian bookworm\): "
                                                  r".*bad.deb has sha256 [0-9a-f]{64}, not the pinned"):
        assemble_rootfs(recipe, lock, bad, tmp_path / "root2")
    assert not (tmp_path / "root2").exists()
    lock = repin(lock, bad)
    with pytest.raises(SourceError,
                       match=r"bad.deb \(tzdata 2024a-1\): symlink './x' -> '../../..' points outside the package "
                             r"tree;"):
        assemble_rootfs(recipe, lock, bad, tmp_path / "root2")
    assert not (tmp_path / "root2").exists()


@pytest.mark.network
def test_python_from_bookworm_packages_runs_from_the_tree(tmp_path, tmp_path_factory):
    from builder.lock import Lock
    from builder.sources import DebianPackage
    from tests import realinputs

    from .test_lock_rootfs import python_closure
    recipe, pins = python_closure(str(tmp_path_factory.getbasetemp() / "python-rootfs"))
    real = realinputs.archive()
    lock = Lock(recipe="t.yaml", inputs=pins)
    inputs = {e.name: real.download(DebianPackage.from_dict(e.debian)) for e in pins}
    tree = assemble_rootfs(recipe, lock, inputs, tmp_path / "root")
    root = tree.root
    assert tree.app.argv == ("/usr/bin/python3.11", "-c", "print(6 * 7)")
    assert {s.name for s in tree.sources} == {e.name[len("rootfs:"):] for e in pins}
    # the closure alone runs the interpreter: its own loader, libraries and standard library
    loader = root / "lib64/ld-linux-x86-64.so.2"
    loader = root / os.readlink(loader).lstrip("/") if loader.is_symlink() else loader
    libs = ":".join(str(root / p) for p in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"))
    p = subprocess.run([str(loader), "--library-path", libs, str(root / "usr/bin/python3.11"), "-I", "-c",
                        "print(6 * 7)"], capture_output=True, text=True, env={"PYTHONHOME": str(root / "usr")})
    assert p.returncode == 0 and p.stdout == "42\n", p.stderr


def test_directory_with_hard_links_and_a_fifo(tmp_path, archive):  # noqa: F811
    def prepare(rd):
        _make_dir(rd)
        os.link(rd / "app/bin/run", rd / "app/bin/run2")
    recipe, lock = setup(tmp_path, "  directory: app\n  entrypoint: [/bin/run2]\n", archive, prepare)
    tree = assemble_rootfs(recipe, lock, {}, tmp_path / "root")
    assert (tree.root / "bin/run2").read_text() == "#!/bin/sh\n" and tree.app.argv == ("/bin/run2",)
    os.mkfifo(recipe.directory / "app" / "pipe")
    with pytest.raises(SourceError, match=r"r/app contains the FIFO 'pipe'; refusing to unpack special files"):
        lock_recipe(recipe, archive)
    with pytest.raises(SourceError, match="contains the FIFO 'pipe'"):
        assemble_rootfs(recipe, lock, {}, tmp_path / "root2")
    assert not (tmp_path / "root2").exists()


def test_an_unlistable_subdirectory_is_an_error_not_a_missing_subtree(tmp_path, archive, monkeypatch):  # noqa: F811
    def prepare(rd):
        _make_dir(rd)
        (rd / "app" / "secret").mkdir()
    recipe, lock = setup(tmp_path, "  directory: app\n", archive, prepare)
    real_scandir = os.scandir

    def scandir(path="."):
        if isinstance(path, str) and path.endswith("secret"):    # an unreadable directory, to a non-root user
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(SourceError, match=r"r/app: cannot copy .*secret into the root filesystem \(Permission"):
        assemble_rootfs(recipe, lock, {}, tmp_path / "root")
    assert not (tmp_path / "root").exists()
