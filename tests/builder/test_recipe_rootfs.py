"""The recipe's `rootfs:` section: sources, files, start settings, and the dmsetup it adds to the initrd."""

from __future__ import annotations

import subprocess
import sys

import pytest

from builder.errors import RecipeError
from builder.recipe import DMSETUP_DEST, load_recipe, rootfs_path

from .test_recipe import BASE, ROOT, error, parse

DEB = BASE + """rootfs:
  debian: {suite: bookworm, packages: [python3.11, ca-certificates]}
  files:
    - {path: /srv/app.py, file: app.py}
    - {path: /etc/motd, content: "hi", mode: "0600"}
  entrypoint: [python3.11]
  cmd: [/srv/app.py]
  env: {PYTHONDONTWRITEBYTECODE: "1", LANG: C.UTF-8}
  workdir: /srv
  user: "1000:1000"
  network: true
  on_corruption: panic
"""


def test_debian_rootfs_parses_with_every_setting():
    r = parse(DEB)
    fs = r.rootfs
    assert fs is not None and fs.line == 21
    assert (fs.source, fs.packages, fs.suite, fs.arch, fs.path) == ("debian", ("python3.11", "ca-certificates"),
                                                                   "bookworm", "amd64", None)
    assert fs.wants() == {"rootfs_packages": ["ca-certificates", "python3.11"], "suite": "bookworm", "arch": "amd64"}
    assert [(f.path, f.mode) for f in fs.files] == [("/srv/app.py", 0o644), ("/etc/motd", 0o600)]
    assert fs.files[0].source.name == "rootfs_file:/srv/app.py" and fs.files[1].content == b"hi"
    assert fs.entrypoint == ("python3.11",) and fs.cmd == ("/srv/app.py",)
    assert fs.env == (("PYTHONDONTWRITEBYTECODE", "1"), ("LANG", "C.UTF-8"))
    assert (fs.workdir, fs.user, fs.network, fs.on_corruption) == ("/srv", "1000:1000", True, "panic")
    # the file input is an input of the recipe (pinned and fetched like initrd files)
    assert "rootfs_file:/srv/app.py" in [s.name for s in r.inputs()]


def test_defaults_and_dmsetup_joins_the_initrd_binaries():
    r = parse(BASE + "rootfs:\n  directory: app/\n")
    fs = r.rootfs
    assert (fs.source, fs.path, fs.wants()) == ("directory", "app/", {"directory": "app/"})
    assert (fs.network, fs.on_corruption, fs.entrypoint, fs.cmd, fs.env, fs.workdir, fs.user) == \
        (False, "eio", None, None, (), None, None)
    dm = r.initrd.binaries[-1]
    assert dm is fs.dmsetup
    assert (dm.path, dm.dest, dm.source.name, dm.source.package, dm.source.suite) == \
        ("/sbin/dmsetup", DMSETUP_DEST, "binary:/sbin/dmsetup", "dmsetup", "bookworm")
    assert "binary:/sbin/dmsetup" in [s.name for s in r.inputs()]
    assert parse(BASE).rootfs is None and not parse(BASE).initrd.binaries


def test_dmsetup_from_another_suite():
    r = parse(BASE + "rootfs:\n  tarball: app.tar.gz\n  dmsetup: {debian: dmsetup, suite: trixie}\n")
    dm = r.rootfs.dmsetup
    assert (dm.source.suite, dm.path, dm.dest, dm.line) == ("trixie", "/usr/sbin/dmsetup", "/sbin/dmsetup", 23)
    assert r.rootfs.wants() == {"tarball": "app.tar.gz"}


def test_oci_source_with_and_without_ref():
    fs = parse(BASE + "rootfs:\n  oci: {path: image/, ref: v1}\n").rootfs
    assert (fs.source, fs.path, fs.ref, fs.wants()) == ("oci", "image/", "v1", {"oci": "image/", "ref": "v1"})
    assert parse(BASE + "rootfs:\n  oci: {path: img.tar}\n").rootfs.wants() == {"oci": "img.tar", "ref": None}


def test_empty_entrypoint_clears_it():
    fs = parse(BASE + "rootfs:\n  oci: {path: i}\n  entrypoint: []\n  cmd: [/bin/app]\n").rootfs
    assert fs.entrypoint == () and fs.cmd == ("/bin/app",)


R = BASE + "rootfs:\n"


@pytest.mark.parametrize("text, line, key, words", [
    (R + "  network: true\n", 21, "rootfs",
     "give exactly one source of the root filesystem: 'oci', 'directory', 'tarball' or 'debian' (got none)"),
    (R + "  directory: a\n  tarball: b.tar\n", 21, "rootfs", "(got directory and tarball)"),
    (R + "  oci: image/\n", 22, "rootfs.oci", "write the image as a mapping: oci: {path: image/, ref: TAG}"),
    (R + "  oci: {ref: v1}\n", 22, "rootfs.oci.path", "missing required key 'path'"),
    (R + "  oci: {path: i, ref: 'a b'}\n", 22, "rootfs.oci.ref", "'a b' is not an image tag"),
    (R + "  directory: /srv/app\n", 22, "rootfs.directory",
     "'/srv/app' must be a directory relative to the recipe's directory, without '..'"),
    (R + "  tarball: ../app.tar\n", 22, "rootfs.tarball", "'../app.tar' must be a tarball relative"),
    (R + "  debian: {suite: bookworm}\n", 22, "rootfs.debian.packages", "missing required key 'packages'"),
    (R + "  debian: {suite: stable, packages: [x]}\n", 22, "rootfs.debian.suite", "unknown suite 'stable'"),
    (R + "  debian: {suite: sid, packages: [x], arch: arm64}\n", 22, "rootfs.debian.arch", "only amd64"),
    (R + "  debian: {suite: sid, packages: []}\n", 22, "rootfs.debian.packages", "at least one"),
    (R + "  debian: {suite: sid, packages: [Bad]}\n", 22, "rootfs.debian.packages[0]", "'Bad' is not a Debian"),
    (R + "  debian: {suite: sid, packages: [a1, a1]}\n", 22, "rootfs.debian.packages[1]", "listed twice"),
    (R + "  directory: a\n  on_corruption: ignore\n", 23, "rootfs.on_corruption",
     "'ignore' (dm-verity's ignore_corruption) lets the guest read blocks that fail verification"),
    (R + "  directory: a\n  on_corruption: reboot\n", 23, "rootfs.on_corruption",
     "unknown value 'reboot'; use one of eio, restart, panic"),
    (R + "  directory: a\n  network: yes please\n", 23, "rootfs.network", "expected true or false"),
    (R + "  directory: a\n  entrypoint: /bin/app --x\n", 23, "rootfs.entrypoint", "there is no shell form"),
    (R + "  directory: a\n  cmd: [1]\n", 23, "rootfs.cmd[0]", "must be a string; quote it"),
    (R + "  directory: a\n  env: {A: 1}\n", 23, "rootfs.env.A", "environment values are strings; quote it"),
    (R + "  directory: a\n  env: {1A: x}\n", 23, "rootfs.env", "'1A' is not an environment variable name"),
    (R + "  directory: a\n  env: {A: x, A: y}\n", 23, "rootfs.env.A", "'A' is given twice"),
    (R + "  directory: a\n  workdir: srv\n", 23, "rootfs.workdir", "normalized absolute path"),
    (R + "  directory: a\n  user: 1000\n", 23, "rootfs.user", "quote the user"),
    (R + "  directory: a\n  user: 'a:b:c'\n", 23, "rootfs.user", "'a:b:c' is not a user"),
    (R + "  directory: a\n  files:\n    - {path: /x, content: a}\n    - {path: /x, content: b}\n", 25,
     "rootfs.files[1]", "/x is already placed in the root filesystem (line 24)"),
    (R + "  directory: a\n  files:\n    - {path: /bin/su, content: a, mode: \"4755\"}\n", 24, "rootfs.files[0]",
     "mode 0o4755 has setuid, setgid or sticky bits"),
    (R + "  directory: a\n  files:\n    - {path: /tmp/x, content: a}\n", 24, "rootfs.files[0]",
     "/tmp/x would be hidden: the init mounts a file system over /tmp"),
    (R + "  directory: a\n  files:\n    - {path: rel, content: a}\n", 24, "rootfs.files[0].path",
     "normalized absolute path"),
    (R + "  directory: a\n  dmsetup: {debian: dmsetup}\n", 23, "rootfs.dmsetup.suite", "missing required key"),
    (R + "  directory: a\n  dmsetup: {file: dmsetup}\n", 23, "rootfs.dmsetup.file", "unknown key 'file'"),
    (R + "  directory: a\n  colour: red\n", 23, "rootfs.colour", "unknown key 'colour'"),
])
def test_rootfs_errors_name_file_line_and_key(text, line, key, words):
    e = error(text)
    assert (e.line, e.key) == (line, key), str(e)
    assert words in str(e)
    assert str(e).startswith(f"/recipes/r.yaml:{line}: {key}: ")


def test_initrd_that_places_dmsetup_itself_is_refused():
    text = BASE.replace("  init:\n", "  binaries:\n    - {debian: dmsetup, suite: bookworm, path: /sbin/dmsetup}\n"
                        "  init:\n") + "rootfs:\n  directory: a\n"
    e = error(text)
    assert str(e) == ("/recipes/r.yaml:23: rootfs: the initrd already places /sbin/dmsetup (line 15), but with rootfs "
                      "the initrd carries dmsetup from rootfs.dmsetup; remove it from the initrd (name another package "
                      "in rootfs.dmsetup if needed).")


def test_rootfs_path_stays_inside_the_recipe_directory(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (tmp_path / "outside").mkdir()
    (d / "app").symlink_to(tmp_path / "outside")
    (d / "t.yaml").write_text(BASE + "rootfs:\n  directory: app\n")
    r = load_recipe(d / "t.yaml")
    with pytest.raises(RecipeError) as ei:
        rootfs_path(r)
    assert f"{d / 't.yaml'}:21: rootfs.directory: 'app' is a symbolic link" in str(ei.value)
    assert "outside the recipe's directory" in str(ei.value)
    (d / "app").unlink()
    (d / "app").mkdir()
    assert rootfs_path(load_recipe(d / "t.yaml")) == d / "app"


@pytest.mark.parametrize("tail, words", [
    ("rootfs:\n  directory: a\n  on_corruption: ignore\n", ":23: rootfs.on_corruption: 'ignore'"),
    ("rootfs:\n  network: true\n", ":21: rootfs: give exactly one source"),
])
def test_cli_exits_2_on_a_bad_rootfs(tmp_path, tail, words):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + tail)
    p = subprocess.run([sys.executable, "-m", "blindbox.cli", "lock", str(bad)], capture_output=True, text=True,
                       cwd=ROOT)
    assert p.returncode == 2, p.stderr
    assert f"{bad}{words}" in p.stderr and "Traceback" not in p.stderr



def test_docs_show_the_rootfs_schema():
    text = (ROOT / "docs" / "recipes.md").read_text()
    assert "not supported yet" not in text
    for key in ("oci:", "directory:", "tarball:", "debian:", "entrypoint:", "on_corruption:", "dmsetup:"):
        assert key in text.split("## Root filesystem")[0], key
    section = text.split("## Root filesystem inputs")[1]
    for words in ("Essential set is not added", "Maintainer scripts are not run", "reproducible", "| `oci` |",
                  "| `tree` |", "re-compressed"):
        assert words in section, words
