"""Fuzz targets for the container image reader: index, manifest and config JSON, and layer tars.

Seeds are a valid two-layer layout written by tests/builder/ocifakes.py.  JSON documents are
edited structurally (values replaced by values of other types) and stored again under their
new digest, so the edit reaches the checks behind the digest; layer tars get hostile entries
(whiteouts, links, ``..``) and byte mutations.  Only a BlindboxError may escape, a refused
image leaves no tree, and nothing is ever written outside the destination.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from builder.sources.oci import apply_oci_layers, read_oci_image
from measure.errors import BlindboxError
from tests.builder.ocifakes import LAYER_TAR, OCI_CONFIG, OCI_MANIFEST, d, entry, f, make_layout, sym, tar_bytes
from tests.fuzzing import INTERESTING, budget, json_paths, mutations

EPOCH = 1735689600
LOWER = [d("usr"), d("usr/bin"), f("usr/bin/app", "#!/bin/sh\n", 0o755), sym("usr/bin/abs", "/usr/bin/app"),
         d("etc"), f("etc/conf", "x")]
UPPER = [f("etc/.wh.conf"), f("usr/bin/.wh..wh..opq"), f("usr/bin/new", "n")]

leaf = st.one_of(st.none(), st.booleans(), st.sampled_from(INTERESTING), st.integers(-2**70, 2**70),
                 st.text(max_size=12),
                 st.sampled_from(["", "..", "/", "../../etc/passwd", "sha256:" + "0" * 64, "sha256:xyz", "linux",
                                  "amd64", "arm64", OCI_MANIFEST, OCI_CONFIG, LAYER_TAR,
                                  "application/vnd.oci.image.index.v1+json"]))
value = st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                  st.dictionaries(st.text(max_size=8), kids, max_size=3)),
                     max_leaves=6)


def _replace(doc, path, new):
    if not path:
        return new
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return doc


def _outside(sandbox: Path, keep: set[Path]) -> list[str]:
    return sorted(str(p) for p in sandbox.rglob("*") if not any(k in (p, *p.parents) for k in keep))


def _read_and_apply(root: Path, sandbox: Path) -> None:
    dest = sandbox / "out"
    try:
        image = read_oci_image(root)
        apply_oci_layers(image, dest, epoch=EPOCH)
    except BlindboxError:
        assert not dest.exists(), "a refused image left a tree behind"
    assert _outside(sandbox, {root, dest}) == []
    assert not (sandbox.parent / "escaped").exists()


@budget(60, deadline_ms=5000)
@given(st.sampled_from(["index", "manifest", "config"]), st.data())
def test_edited_json_documents_raise_blindbox_error_or_apply_inside(which, data):
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp) / "s"
        root = sandbox / "img"
        lay, manifest = make_layout(root, [LOWER, UPPER])
        mdoc = json.loads(lay.path(manifest).read_text())
        if which == "index":
            doc = json.loads((root / "index.json").read_text())
        elif which == "manifest":
            doc = mdoc
        else:
            doc = json.loads(lay.path(mdoc["config"]).read_text())
        path = data.draw(st.sampled_from(list(json_paths(doc))))
        doc = _replace(doc, path, data.draw(value))
        if which == "index":
            (root / "index.json").write_text(json.dumps(doc))
        elif which == "manifest":
            lay.index([dict(lay.blob(json.dumps(doc).encode(), OCI_MANIFEST),
                            platform={"os": "linux", "architecture": "amd64"})])
        else:
            mdoc["config"] = lay.blob(json.dumps(doc).encode(), OCI_CONFIG)
            lay.index([lay.blob(json.dumps(mdoc).encode(), OCI_MANIFEST)])
        _read_and_apply(root, sandbox)


_NAMES = ["a", "a/b", "./a", "a/../../escaped", "/abs", "lnk/x", ".wh.a", "a/.wh..wh..opq", ".wh..wh..opq",
          ".wh.", ".wh...", "lnk", "a/b/c", "usr/bin/app", "etc"]
_TYPES = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]
_LINKS = ["", "a", "/", "/etc", "..", "../../escaped", "a/b", "/usr/bin/app", "lnk", "usr/bin/app"]
layer_entry = st.builds(lambda n, k, ln, m, body: entry(n, k, body if k == tarfile.REGTYPE else b"", linkname=ln,
                                                        mode=m),
                        st.sampled_from(_NAMES), st.sampled_from(_TYPES), st.sampled_from(_LINKS),
                        st.sampled_from([0o644, 0o755, 0o4755, 0o7777, 0o500, 0]), st.binary(max_size=16))
GOOD_LAYER = tar_bytes(LOWER)
layers = st.one_of(st.lists(layer_entry, max_size=6).map(tar_bytes),
                   mutations(GOOD_LAYER, resize=False), mutations(GOOD_LAYER))


@budget(150, deadline_ms=5000)
@given(st.lists(layers, min_size=1, max_size=3))
# found by the fuzzer: a file replacing a lower directory that holds a symlink to "/"
@example([tar_bytes([d("a")]), tar_bytes([sym("a/b", "/"), f("a", "")])])
def test_hostile_and_mutated_layers_raise_blindbox_error_or_apply_inside(tars):
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp) / "s"
        root = sandbox / "img"
        lay, manifest = make_layout(root, [LOWER], gzip_layers=False)
        mdoc = json.loads(lay.path(manifest).read_text())
        mdoc["layers"] = [lay.blob(t, LAYER_TAR) for t in tars]
        lay.index([lay.blob(json.dumps(mdoc).encode(), OCI_MANIFEST)])
        assert all(hashlib.sha256(t).hexdigest() in {p.name for p in (root / "blobs/sha256").iterdir()} for t in tars)
        _read_and_apply(root, sandbox)
