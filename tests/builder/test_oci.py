"""builder.sources.oci: OCI layouts, OCI archives and docker save archives, read and applied.

Images are written by test code (tests/builder/ocifakes.py) and, once, by Debian's umoci.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from builder.errors import SourceError
from builder.rootfs_tree import resolve_inside, tree_digest
from builder.sources.oci import OciImage, apply_oci_layers, read_oci_image
from tests.builder.ocifakes import (LAYER_TAR, OCI_INDEX, OCI_MANIFEST, Layout, d, digest, entry, f, make_docker_save,
                                    make_layout, pack_dir, snapshot, sym, tar_bytes)
from tests.tools import require

EPOCH = 1735689600

BASE = [d("usr"), d("usr/bin"), d("usr/lib"), d("usr/lib/old"), d("etc"), d("opt"), d("opt/sub"),
        f("usr/bin/python3.11", "#!python\n", 0o755), sym("usr/bin/python3", "/usr/bin/python3.11"),
        f("usr/bin/tool", "old tool\n", 0o755), f("usr/bin/su", "setuid\n", 0o4755),
        f("usr/lib/old/a", "a"), f("usr/lib/old/b", "b"), d("usr/lib/old/deep"), f("usr/lib/old/deep/c", "c"),
        f("etc/removed", "gone"), f("etc/kept", "kept"), f("opt/sub/x", "x"),
        entry("usr/bin/tool-hard", tarfile.LNKTYPE, linkname="usr/bin/tool")]
TOP = [f("usr/bin/tool", "new tool\n", 0o700), f("etc/.wh.removed"), f("usr/lib/old/new", "new"),
       f("usr/lib/old/.wh..wh..opq"), f("opt", "opt is a file now"), f("usr/.wh..wh.plnk"),
       sym("etc/passwd-link", "/etc/kept")]
#: the tree BASE then TOP give, as container runtimes apply them
EXPECTED = {
    "usr": ("d", 0o755), "usr/bin": ("d", 0o755), "usr/lib": ("d", 0o755), "usr/lib/old": ("d", 0o755),
    "etc": ("d", 0o755),
    "usr/bin/python3.11": ("f", 0o755, b"#!python\n"), "usr/bin/python3": ("l", "/usr/bin/python3.11"),
    "usr/bin/tool": ("f", 0o700, b"new tool\n"), "usr/bin/su": ("f", 0o755, b"setuid\n"),
    "usr/bin/tool-hard": ("f", 0o755, b"old tool\n"),
    "usr/lib/old/new": ("f", 0o644, b"new"), "etc/kept": ("f", 0o644, b"kept"),
    "opt": ("f", 0o644, b"opt is a file now"), "etc/passwd-link": ("l", "/etc/kept"),
}


def _check_tree(out: Path) -> None:
    assert snapshot(out) == EXPECTED
    for p in [out, *out.rglob("*")]:
        assert os.lstat(p).st_mtime == EPOCH, p
    # an absolute link is followed inside the root, never on the host
    assert resolve_inside(out, "usr/bin/python3") == out / "usr/bin/python3.11"
    assert resolve_inside(out, "/etc/passwd-link") == out / "etc/kept"


def test_layout_with_whiteouts_opaque_dirs_and_replaced_files(tmp_path):
    lay, manifest = make_layout(tmp_path / "img", [BASE, TOP])
    image = read_oci_image(tmp_path / "img")
    assert isinstance(image, OciImage)
    assert image.manifest_digest == manifest["digest"]
    assert image.entrypoint == ("/usr/bin/python3", "-m", "app") and image.cmd == ("--port", "8080")
    assert image.env == ("PATH=/usr/bin:/bin", "LANG=C.UTF-8")
    assert (image.working_dir, image.user) == ("/srv/app", "1000:1000")
    assert [layer.digest for layer in image.layers] == \
        [digest(gzip.compress(tar_bytes(t), mtime=0)) for t in (BASE, TOP)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.user = "root"  # type: ignore[misc]  # frozen
    apply_oci_layers(image, tmp_path / "out", epoch=EPOCH)
    _check_tree(tmp_path / "out")


def test_oci_archive_uncompressed_layers_and_docker_save_give_the_same_tree(tmp_path):
    make_layout(tmp_path / "img", [BASE, TOP], gzip_layers=False)
    archive = pack_dir(tmp_path / "img", tmp_path / "img.tar")
    docker = make_docker_save(tmp_path / "docker.tar", [BASE, TOP])
    trees = []
    for n, src in enumerate([tmp_path / "img", archive, docker]):
        image = read_oci_image(src)
        apply_oci_layers(image, tmp_path / f"out{n}", epoch=EPOCH)
        _check_tree(tmp_path / f"out{n}")
        trees.append(tree_digest(tmp_path / f"out{n}"))
    assert len(set(trees)) == 1
    docker_image = read_oci_image(docker)
    assert docker_image.manifest_digest is None
    assert [x.media_type for x in docker_image.layers] == ["application/vnd.docker.image.rootfs.diff.tar"] * 2
    assert docker_image.entrypoint == ("/usr/bin/python3", "-m", "app")


def test_nested_index_and_platform_selection(tmp_path):
    lay, manifest = make_layout(tmp_path / "img", [[f("hello", "hi")]])
    arm = dict(manifest, platform={"architecture": "arm64", "os": "linux"})
    inner = lay.blob(json.dumps({"schemaVersion": 2, "manifests": [
        arm, dict(manifest, platform={"architecture": "amd64", "os": "linux"})]}).encode(), OCI_INDEX)
    lay.index([dict(inner, platform={"architecture": "amd64", "os": "linux"})])
    assert read_oci_image(tmp_path / "img").manifest_digest == manifest["digest"]
    lay.index([arm])
    with pytest.raises(SourceError) as e:
        read_oci_image(tmp_path / "img")
    assert str(e.value) == (f"{tmp_path / 'img'}: its index.json lists no linux/amd64 image manifest; give an "
                            f"image built for linux/amd64.")
    # indexes nested five deep
    top = manifest
    for _ in range(4):
        top = lay.blob(json.dumps({"schemaVersion": 2, "manifests": [top]}).encode(), OCI_INDEX)
    lay.index([top])
    with pytest.raises(SourceError, match=r"its indexes nest more than 4 deep \(docs/limits.md\)"):
        read_oci_image(tmp_path / "img")


def test_a_tag_picks_one_of_several_images(tmp_path):
    lay, manifest = make_layout(tmp_path / "img", [[f("a", "a")]])
    other = lay.blob(json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                 "config": json.loads(lay.path(manifest).read_text())["config"],
                                 "layers": []}).encode(), OCI_MANIFEST)
    tag = "org.opencontainers.image.ref.name"
    lay.index([dict(manifest, annotations={tag: "app"}), dict(other, annotations={tag: "base"})])
    with pytest.raises(SourceError, match="its index.json lists 2 linux/amd64 manifests; name the one to use by"):
        read_oci_image(tmp_path / "img")
    assert read_oci_image(tmp_path / "img", ref="app").manifest_digest == manifest["digest"]
    assert read_oci_image(tmp_path / "img", ref="base").layers == ()


# -- bad input: one sentence naming the input and what to do --------------------------------

def _layer_desc(lay: Layout, manifest: dict, n: int = 0) -> dict:
    return json.loads(lay.path(manifest).read_text())["layers"][n]


def _rewrite_manifest(lay: Layout, manifest: dict, **changes) -> None:
    doc = json.loads(lay.path(manifest).read_text())
    doc.update(changes)
    lay.index([lay.blob(json.dumps(doc).encode(), OCI_MANIFEST)])


def _missing_blob(root, lay, manifest):
    layer = _layer_desc(lay, manifest)
    lay.path(layer).unlink()
    return f"{root}: the layer blob {layer['digest']} is missing; the image is incomplete, export it again."


def _digest_mismatch(root, lay, manifest):
    layer = _layer_desc(lay, manifest)
    data = bytearray(lay.path(layer).read_bytes())
    data[-5] ^= 1
    lay.path(layer).write_bytes(data)
    return f"{root}: the layer blob {layer['digest']} does not match its digest; the image is damaged, export it again."


def _size_mismatch(root, lay, manifest):
    layer = _layer_desc(lay, manifest)
    with open(lay.path(layer), "ab") as out:
        out.write(b"\0")
    return (f"{root}: the layer blob {layer['digest']} has {layer['size'] + 1:,} bytes where its descriptor says "
            f"{layer['size']:,}; the image is damaged, export it again.")


def _manifest_digest_mismatch(root, lay, manifest):
    p = lay.path(manifest)
    p.write_text(p.read_text().replace('"schemaVersion": 2', '"schemaVersion": 3'))
    return (f"{root}: the manifest blob {manifest['digest']} does not match its digest; the image is damaged, "
            f"export it again.")


def _malformed_index(root, lay, manifest):
    (root / "index.json").write_text('{"manifests": [')
    return (f"{root}: its index (index.json) is not valid JSON (Expecting value: line 1 column 16 (char 15)); "
            f"the image is damaged, export it again.")


def _malformed_config(root, lay, manifest):
    cfg = lay.blob(b'{"config": NaN}', "application/vnd.oci.image.config.v1+json")
    _rewrite_manifest(lay, manifest, config=cfg)
    return (f"{root}: its config (blobs/sha256/{cfg['digest'][7:]}) is not valid JSON (NaN is not JSON); the "
            f"image is damaged, export it again.")


def _config_wrong_type(root, lay, manifest):
    cfg = lay.blob(b'{"config": {"Env": "A=1"}}', "application/vnd.oci.image.config.v1+json")
    _rewrite_manifest(lay, manifest, config=cfg)
    return f"{root}: the image config's Env is not a list of strings; the image is malformed."


def _unknown_media_type(root, lay, manifest):
    layer = dict(_layer_desc(lay, manifest), mediaType="application/vnd.oci.image.layer.v1.tar+bzip2")
    _rewrite_manifest(lay, manifest, layers=[layer])
    return (f"{root}: layer {layer['digest']} has the unknown media type "
            f"'application/vnd.oci.image.layer.v1.tar+bzip2'; only tar, tar+gzip and tar+zstd layers (OCI or "
            f"Docker) are read.")


def _bad_digest_syntax(root, lay, manifest):
    layer = dict(_layer_desc(lay, manifest), digest="sha512:abcd")
    _rewrite_manifest(lay, manifest, layers=[layer])
    return f"{root}: the layer digest 'sha512:abcd' is not sha256:<64 hex digits>; only sha256 images are read."


def _no_index(root, lay, manifest):
    (root / "index.json").unlink()
    (root / "oci-layout").unlink()
    return (f"{root}: has neither index.json (an OCI image layout) nor manifest.json (a `docker save` archive); "
            f"give an image layout directory or an image archive.")


def _wrong_platform(root, lay, manifest):
    cfg = lay.blob(b'{"os": "linux", "architecture": "arm64", "config": {}}',
                   "application/vnd.oci.image.config.v1+json")
    _rewrite_manifest(lay, manifest, config=cfg)
    return f"{root}: the image is for 'linux'/'arm64', not linux/amd64; give a linux/amd64 image."


READ_ERRORS = {"missing-blob": _missing_blob, "digest-mismatch": _digest_mismatch, "size-mismatch": _size_mismatch,
               "manifest-digest-mismatch": _manifest_digest_mismatch, "malformed-index": _malformed_index,
               "malformed-config": _malformed_config, "config-wrong-type": _config_wrong_type,
               "unknown-media-type": _unknown_media_type, "bad-digest-syntax": _bad_digest_syntax,
               "no-index": _no_index, "wrong-platform": _wrong_platform}


@pytest.mark.parametrize("case", sorted(READ_ERRORS))
def test_bad_image_is_refused_with_one_sentence(tmp_path, case):
    root = tmp_path / "img"
    lay, manifest = make_layout(root, [[d("etc"), f("etc/x", "x" * 100)]])
    message = READ_ERRORS[case](root, lay, manifest)
    with pytest.raises(SourceError) as e:
        read_oci_image(root)
    assert str(e.value) == message
    assert e.value.exit_code == 2


#: layers read fine but refused while applied: (layers, exact message after "<root>: ")
APPLY_ERRORS = {
    "not-a-tar": (None, "its layer 1 ({digest}) is corrupt (invalid header); it is not a tar of its media type, "
                        "export the image again."),
    "traversal": ([[f("usr/../../escaped", "evil")]],
                  "layer 1 ({digest}) contains the member name 'usr/../../escaped' with '..'; refusing to unpack "
                  "an image that writes outside its tree (path traversal)."),
    "absolute-name": ([[f("/tmp/escaped-oci", "evil")]],
                      "layer 1 ({digest}) contains the absolute member name '/tmp/escaped-oci'; refusing to unpack "
                      "an image that writes outside its tree."),
    "write-through-link": ([[sym("lnk", "/tmp")], [f("lnk/escaped", "evil")]],
                           "layer 2 ({digest}): member 'lnk/escaped' lies under lnk, which is not a directory (a "
                           "symlink or file); refusing to write through it."),
    "whiteout-through-link": ([[sym("lnk", "/tmp")], [f("lnk/.wh.escaped")]],
                              "layer 2 ({digest}): whiteout 'lnk/.wh.escaped' lies under lnk, which is not a "
                              "directory (a symlink or file); refusing to delete through it."),
    "hardlink-out": ([[entry("x", tarfile.LNKTYPE, linkname="../escaped")]],
                     "layer 1 ({digest}) contains the hard link target name '../escaped' with '..'; refusing to "
                     "unpack an image that writes outside its tree (path traversal)."),
    "symlink-out": ([[sym("x", "../../escaped")]],
                    "layer 1 ({digest}): symlink 'x' -> '../../escaped' points outside the image tree; refusing it."),
    "device": ([[entry("dev/null", tarfile.CHRTYPE)]],
               "layer 1 ({digest}) contains the device node 'dev/null'; refusing to unpack special files from an "
               "image."),
    "fifo": ([[entry("run/fifo", tarfile.FIFOTYPE)]],
             "layer 1 ({digest}) contains the FIFO 'run/fifo'; refusing to unpack special files from an image."),
    "symlink-chain-out": ([[d("a"), d("a/b"), sym("a/b/up", "../.."), sym("t", "a/b/up/..")]],
                          "symlink /t resolves outside the image tree (through other symlinks); refusing the "
                          "image."),
}


@pytest.mark.parametrize("case", sorted(APPLY_ERRORS))
def test_bad_layer_is_refused_and_leaves_nothing(tmp_path, case):
    layers, message = APPLY_ERRORS[case]
    root = tmp_path / "img"
    if layers is None:
        lay = Layout(root)
        blob = lay.blob(b"this is not a tar archive" * 40, LAYER_TAR)
        cfg = lay.blob(b'{"config": {}}', "application/vnd.oci.image.config.v1+json")
        lay.index([lay.blob(json.dumps({"schemaVersion": 2, "config": cfg, "layers": [blob]}).encode(),
                            OCI_MANIFEST)])
    else:
        make_layout(root, layers)
    image = read_oci_image(root)
    sandbox = tmp_path / "s1" / "s2"
    with pytest.raises(SourceError) as e:
        apply_oci_layers(image, sandbox / "out", epoch=EPOCH)
    assert str(e.value) == f"{root}: " + message.format(digest=image.layers[-1].digest)
    assert e.value.exit_code == 2
    assert not (sandbox / "out").exists() and not (sandbox / "escaped").exists()
    assert not Path("/tmp/escaped").exists() and not Path("/tmp/escaped-oci").exists()


def test_a_layer_changed_after_reading_is_refused(tmp_path):
    lay, manifest = make_layout(tmp_path / "img", [[f("a", "a" * 1000)]], gzip_layers=False)
    image = read_oci_image(tmp_path / "img")
    p = lay.path(_layer_desc(lay, manifest))
    p.write_bytes(p.read_bytes().replace(b"a" * 1000, b"b" * 1000))
    with pytest.raises(SourceError, match=r"layer 1 \(sha256:[0-9a-f]{64}\) changed since it was verified"):
        apply_oci_layers(image, tmp_path / "out", epoch=EPOCH)
    assert not (tmp_path / "out").exists()


def test_damaged_archives_are_refused(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x1f\x8b" + os.urandom(600))
    with pytest.raises(SourceError, match=r"junk.tar is not an uncompressed tar archive \(.*\); give an OCI image "
                                          r"layout directory, an OCI archive or a `docker save` archive"):
        read_oci_image(junk)
    with pytest.raises(SourceError, match="does not exist or is neither a directory nor a file"):
        read_oci_image(tmp_path / "nothing")
    docker = make_docker_save(tmp_path / "d.tar", [[f("a", "a")]])
    with tarfile.open(docker) as tf:
        manifest = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
    manifest[0]["Layers"] = ["../../etc/passwd"]
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "manifest.json").write_text(json.dumps(manifest))
    with tarfile.open(docker) as tf:
        cfg = tf.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
    (evil / manifest[0]["Config"]).write_bytes(cfg)
    with pytest.raises(SourceError) as e:
        read_oci_image(evil)
    assert str(e.value) == (f"{evil} names the file '../../etc/passwd', outside the image (path traversal); "
                            f"refusing the image.")
    lost = make_docker_save(tmp_path / "lost.tar", [[f("a", "a")]])
    data = lost.read_bytes()
    diff_id = digest(tar_bytes([f("a", "a")]))[7:]
    lost.write_bytes(data.replace(diff_id.encode(), b"0" * 64))
    with pytest.raises(SourceError, match="config .* is missing or not named by its sha256|does not match its digest"):
        read_oci_image(lost)


# -- a layout made by a real tool ---------------------------------------------------------------

def _umoci(*args: str, cwd: Path) -> None:
    subprocess.run([require("umoci", "umoci"), *args], cwd=cwd, check=True, capture_output=True)


def test_layout_made_by_umoci(tmp_path):
    """umoci writes the layers (gzip, with its own whiteouts) and the config; umoci's own
    unpack of the final image is the reference tree."""
    _umoci("init", "--layout", "L", cwd=tmp_path)
    _umoci("new", "--image", "L:app", cwd=tmp_path)
    _umoci("unpack", "--rootless", "--image", "L:app", "b1", cwd=tmp_path)
    root = tmp_path / "b1" / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib/app").mkdir(parents=True)
    (root / "usr/bin/app").write_text("#!/bin/sh\necho app\n")
    (root / "usr/bin/app").chmod(0o755)
    (root / "usr/lib/app/data").write_bytes(bytes(range(256)) * 40)
    (root / "usr/lib/app/gone").write_text("removed by the next layer")
    (root / "etc").mkdir()
    (root / "etc/conf").write_text("v1")
    os.symlink("/usr/bin/app", root / "usr/bin/entry")
    _umoci("repack", "--image", "L:app", "b1", cwd=tmp_path)
    shutil.rmtree(tmp_path / "b1")
    _umoci("unpack", "--rootless", "--image", "L:app", "b2", cwd=tmp_path)
    root = tmp_path / "b2" / "rootfs"
    (root / "usr/lib/app/gone").unlink()  # a whiteout in the second layer
    (root / "etc/conf").write_text("v2")  # a replaced file
    shutil.rmtree(root / "etc")  # and then a removed directory
    (root / "etc").mkdir()
    (root / "etc/new").write_text("new")
    _umoci("repack", "--image", "L:app", "b2", cwd=tmp_path)
    _umoci("config", "--image", "L:app", "--config.entrypoint", "/usr/bin/entry", "--config.cmd", "serve",
           "--config.env", "MODE=prod", "--config.workingdir", "/usr/lib/app", "--config.user", "1000:1000",
           cwd=tmp_path)
    _umoci("unpack", "--rootless", "--image", "L:app", "ref", cwd=tmp_path)

    image = read_oci_image(tmp_path / "L", ref="app")
    assert len(image.layers) == 2 and all(x.media_type.endswith("tar+gzip") for x in image.layers)
    assert (image.entrypoint, image.cmd, image.working_dir, image.user) == \
        (("/usr/bin/entry",), ("serve",), "/usr/lib/app", "1000:1000")
    assert "MODE=prod" in image.env
    index = json.loads((tmp_path / "L/index.json").read_text())
    assert image.manifest_digest == index["manifests"][0]["digest"]
    apply_oci_layers(image, tmp_path / "ours", epoch=EPOCH)
    ours, theirs = snapshot(tmp_path / "ours"), snapshot(tmp_path / "ref" / "rootfs")
    # umoci's rootless unpack adds u+rwx to directories, like the extraction rule
    assert ours == theirs
    assert ours["usr/bin/entry"] == ("l", "/usr/bin/app")
    assert ours["etc/new"] == ("f", 0o644, b"new") and "usr/lib/app/gone" not in ours and "etc/conf" not in ours
    assert resolve_inside(tmp_path / "ours", "/usr/bin/entry") == tmp_path / "ours/usr/bin/app"


# -- limits (docs/limits.md) ---------------------------------------------------------------------

LIMITS = {
    "MAX_OCI_JSON_BYTES": (100, "its index (index.json) has {index_size:,} bytes, more than the 100 of any image "
                                "(docs/limits.md); it is not an image."),
    # the first descriptor checked is the manifest's, in index.json
    "MAX_OCI_BLOB_BYTES": (10, "the manifest {manifest} claims {manifest_size:,} bytes, outside 0..10 "
                               "(docs/limits.md); the image is malformed."),
    "MAX_OCI_LAYERS": (1, "its manifest has 2 layers, more than the 1 of any image (docs/limits.md); refusing it."),
    "MAX_OCI_INDEX_ENTRIES": (0, "its index.json lists 1 manifests, more than the 0 of any image (docs/limits.md); "
                                 "it is not an image."),
}


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_each_image_limit_is_checked(tmp_path, monkeypatch, name):
    from builder.sources import oci
    value, message = LIMITS[name]
    root = tmp_path / "img"
    lay, manifest = make_layout(root, [[f("a", "a" * 50)], [f("b", "b")]])
    monkeypatch.setattr(oci, name, value)
    with pytest.raises(SourceError) as e:
        read_oci_image(root)
    assert str(e.value) == f"{root}: " + message.format(index_size=(root / "index.json").stat().st_size,
                                                        manifest=manifest["digest"], manifest_size=manifest["size"])


def test_archive_member_limit(tmp_path, monkeypatch):
    from builder.sources import oci
    make_layout(tmp_path / "img", [[f("a", "a")]])
    archive = pack_dir(tmp_path / "img", tmp_path / "img.tar")
    monkeypatch.setattr(oci, "MAX_OCI_ARCHIVE_MEMBERS", 3)
    with pytest.raises(SourceError) as e:
        read_oci_image(archive)
    assert str(e.value) == (f"{archive} holds more than 3 files, more than any image archive (docs/limits.md); it "
                            f"is not an image archive.")
