"""An application from an OCI image made by a real tool (Debian's umoci), built and booted.

umoci writes a two-layer image: the first layer holds a static busybox, a web root and a
start script, the second deletes a file of the first (umoci records a whiteout); its config
names the entrypoint, cmd, environment, working directory and user.  blindbox builds the
bundle from that layout, pinned by the image's manifest digest, and the guest runs the
start script with exactly those settings: the test reads them back over HTTP through a
hostfwd and sees the whiteout applied, then stops the service and sees its exit status.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from builder.boot import free_port, nic_argument, running_guest
from builder.manifest import Manifest
from builder.pipeline import BuildRequest, build
from tests.realinputs import ALLOW_STALE, busybox_static
from tests.tools import require

from .hellobuild import HELLO, lock_copy, scratch

pytestmark = [pytest.mark.integration, pytest.mark.network]

START = """#!/bin/sh
echo "oci-app: argv=$* uid=$(id -u) gid=$(id -g) pwd=$(pwd)"
/bin/busybox httpd -f -p 8080 -h /www &
echo $! > /tmp/httpd.pid
wait
exit 42
"""
INFO = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo "uid=$(id -u) gid=$(id -g) greeting=$GREETING mode=$APP_MODE"
"""
STOP = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\nstopping\\n'
kill "$(cat /tmp/httpd.pid)"
"""


def _umoci(*args: str, cwd: Path) -> None:
    subprocess.run([require("umoci", "umoci"), *args], cwd=cwd, check=True, capture_output=True)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def make_image(directory: Path) -> None:
    """The OCI layout ``directory/image``, tag ``app``, written by umoci."""
    _umoci("init", "--layout", "image", cwd=directory)
    _umoci("new", "--image", "image:app", cwd=directory)
    _umoci("unpack", "--rootless", "--image", "image:app", "b1", cwd=directory)
    root = directory / "b1" / "rootfs"
    busybox, _ = busybox_static()
    (root / "bin").mkdir()
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    for applet in ("sh", "id", "pwd", "echo", "printf", "cat", "kill"):
        os.symlink("busybox", root / "bin" / applet)
    _write(root / "app" / "start.sh", START, 0o755)
    _write(root / "www" / "index.html", "served from an OCI image behind dm-verity\n")
    _write(root / "www" / "secret.txt", "deleted by the second layer\n")
    _write(root / "www" / "cgi-bin" / "info", INFO, 0o755)
    _write(root / "www" / "cgi-bin" / "stop", STOP, 0o755)
    _umoci("repack", "--image", "image:app", "b1", cwd=directory)
    shutil.rmtree(directory / "b1")
    _umoci("unpack", "--rootless", "--image", "image:app", "b2", cwd=directory)
    (directory / "b2" / "rootfs" / "www" / "secret.txt").unlink()
    _umoci("repack", "--image", "image:app", "b2", cwd=directory)
    shutil.rmtree(directory / "b2")
    _umoci("config", "--image", "image:app", "--config.entrypoint=/app/start.sh", "--config.cmd=from-the-image",
           "--config.env=GREETING=hello from umoci", "--config.env=APP_MODE=image",
           "--config.workingdir=/app", "--config.user=1000:1000", cwd=directory)


def _recipe_text() -> str:
    text = HELLO.read_text(encoding="utf-8").replace("name: hello", "name: oci-app")
    assert "name: oci-app" in text
    return text + "\nrootfs:\n  oci: {path: image, ref: app}\n  env: {APP_MODE: recipe}\n  network: true\n"


def _get(port: int, path: str, timeout: float = 120) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_an_app_from_a_umoci_image_runs_with_its_config(tmp_path):
    directory = scratch("blindbox-oci-app-")
    make_image(directory)
    recipe = lock_copy(_recipe_text(), "oci-app.yaml", directory=directory)
    res = build(BuildRequest(recipe=recipe.path, out=tmp_path / "oci-app", allow_stale=ALLOW_STALE))
    m = Manifest.from_json((res.out / "manifest.json").read_bytes())

    # pinned by the manifest digest umoci recorded in the layout's index
    index = json.loads((directory / "image" / "index.json").read_text())
    digest = next(d["digest"] for d in index["manifests"]
                  if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == "app")
    rootfs_input = next(i for i in m.inputs if i.name == "rootfs")
    assert (rootfs_input.kind, "sha256:" + rootfs_input.sha256) == ("oci", digest)
    manifest_doc = json.loads((directory / "image" / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    kinds = [(s["kind"], s["sha256"]) for s in m.rootfs["sources"]]
    assert kinds[:3] == [("oci-config", manifest_doc["config"]["digest"].split(":")[1])] + \
        [("oci-layer", layer["digest"].split(":")[1]) for layer in manifest_doc["layers"]]
    assert m.rootfs["app"] == {"argv": ["/app/start.sh", "from-the-image"], "workdir": "/app", "uid": 1000,
                               "gid": 1000, "env": ["GREETING=hello from umoci", "APP_MODE=recipe",
                                                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}

    port = free_port()
    b = res.out
    with running_guest(b / "bzImage", b / "initrd", (b / "cmdline").read_bytes(), firmware=None,
                       drives=[b / "rootfs.erofs", b / "rootfs.verity"],
                       nic=nic_argument([("127.0.0.1", port, 8080)])) as guest:
        guest.wait_for("BLINDBOX-APP-START", 300)
        index_page = _get(port, "/index.html")
        info = _get(port, "/cgi-bin/info")
        secret = _get(port, "/secret.txt")
        stop = _get(port, "/cgi-bin/stop")
        result = guest.finish(120)
    tail = result.console[-3000:]
    assert index_page == (200, "served from an OCI image behind dm-verity\n"), tail
    assert info == (200, "uid=1000 gid=1000 greeting=hello from umoci mode=recipe\n"), tail
    assert secret[0] == 404, secret        # the second layer's whiteout deleted it
    assert stop[0] == 200
    assert "oci-app: argv=from-the-image uid=1000 gid=1000 pwd=/app" in result.console.replace("\r", ""), tail
    assert result.marker("BLINDBOX-APP-EXIT") == "42", tail
    assert result.marker("BLINDBOX-APP-START") == "/app/start.sh"
