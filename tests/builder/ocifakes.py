"""Container images written by test code: OCI image layouts (directory or tar) and
``docker save`` archives, with layers given as lists of tar entries."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *, linkname: str = "",
          mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, mode, 1600000000
    info.uid = info.gid = 1000
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def d(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.DIRTYPE, mode=mode)


def f(name: str, data: bytes | str = b"", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, data=data.encode() if isinstance(data, str) else data, mode=mode)


def sym(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def tar_bytes(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layout:
    """An OCI image layout being written into ``root``; :meth:`blob` adds a blob."""

    def __init__(self, root: Path):
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes, media_type: str) -> dict:
        (self.root / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()).write_bytes(data)
        return {"mediaType": media_type, "digest": digest(data), "size": len(data)}

    def path(self, desc: dict) -> Path:
        return self.root / "blobs" / "sha256" / desc["digest"].split(":")[1]

    def index(self, manifests: list[dict]) -> None:
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                          "manifests": manifests}))


def config_doc(layers: list[bytes], **cfg) -> dict:
    return {"architecture": "amd64", "os": "linux", "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [digest(t) for t in layers]}}


DEFAULT_CONFIG = {"Entrypoint": ["/usr/bin/python3", "-m", "app"], "Cmd": ["--port", "8080"],
                  "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"], "WorkingDir": "/srv/app", "User": "1000:1000"}


def make_layout(root: Path, layers: list[list], *, gzip_layers: bool = True, config: dict | None = None,
                platform: bool = True) -> tuple[Layout, dict]:
    """A one-image layout; returns it and the manifest's descriptor."""
    lay = Layout(root)
    tars = [tar_bytes(entries) for entries in layers]
    descs = [lay.blob(gzip.compress(t, mtime=0) if gzip_layers else t, LAYER_GZIP if gzip_layers else LAYER_TAR)
             for t in tars]
    cfg = lay.blob(json.dumps(config_doc(tars, **(DEFAULT_CONFIG if config is None else config))).encode(),
                   OCI_CONFIG)
    manifest = lay.blob(json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg,
                                    "layers": descs}).encode(), OCI_MANIFEST)
    entry = dict(manifest)
    if platform:
        entry["platform"] = {"architecture": "amd64", "os": "linux"}
    lay.index([entry])
    return lay, manifest


def pack_dir(root: Path, out: Path) -> Path:
    """``root`` packed into an uncompressed tar (an OCI archive, as ``skopeo copy oci-archive:`` writes)."""
    with tarfile.open(out, "w") as tf:
        for p in sorted(root.rglob("*")):
            tf.add(p, str(p.relative_to(root)), recursive=False)
    return out


def make_docker_save(out: Path, layers: list[list], *, config: dict | None = None) -> Path:
    """A ``docker save`` archive (the pre-25 layout): manifest.json, <hex>.json, <id>/layer.tar."""
    tars = [tar_bytes(entries) for entries in layers]
    cfg = json.dumps(config_doc(tars, **(DEFAULT_CONFIG if config is None else config))).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    files = {cfg_name: cfg}
    names = []
    for i, t in enumerate(tars):
        name = f"{hashlib.sha256(b'%d' % i).hexdigest()}/layer.tar"
        files[name] = t
        names.append(name)
    files["manifest.json"] = json.dumps([{"Config": cfg_name, "RepoTags": ["app:latest"], "Layers": names}]).encode()
    with tarfile.open(out, "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out


def snapshot(root: Path) -> dict:
    """path -> (type, mode bits, content or link target) of every entry under ``root``."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("d", st.st_mode & 0o7777)
            else:
                out[rel] = ("f", st.st_mode & 0o7777, p.read_bytes())
    return out
