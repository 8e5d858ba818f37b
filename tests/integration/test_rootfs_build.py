"""A root filesystem from a plain directory: built, booted without network, and the build's guards.

- the guest runs the directory's program and reports its exit status (no NIC: the init
  skips the network);
- a no-op rebuild is current only while the directory is unchanged: after an edit the build
  names the input and the fix instead of calling the old bundle current;
- an --out inside the root's source directory, and a command line that the root's table
  makes longer than the kernel keeps, are refused with one sentence (exit status 2).
"""

from __future__ import annotations

import os
import shutil

import pytest

from builder.boot import smoke_boot
from builder.bundle import BundleError
from builder.errors import InputDigestMismatch
from builder.pipeline import BuildRequest, CmdlineTooLong, build
from measure import verity
from tests.realinputs import ALLOW_STALE, busybox_static

from .hellobuild import HELLO, lock_copy, scratch

pytestmark = [pytest.mark.integration, pytest.mark.network]

RUN = "#!/bin/sh\necho \"dir-app: running as $(id -u) in $(pwd) with $*\"\nexit 7\n"


def _recipe(directory, cmdline: str | None = None):
    app = directory / "app"
    (app / "bin").mkdir(parents=True)
    busybox, _ = busybox_static()
    shutil.copyfile(busybox, app / "bin" / "busybox")
    (app / "bin" / "busybox").chmod(0o755)
    for applet in ("sh", "id", "pwd", "echo"):
        os.symlink("busybox", app / "bin" / applet)
    (app / "run.sh").write_text(RUN)
    (app / "run.sh").chmod(0o755)
    text = HELLO.read_text(encoding="utf-8").replace("name: hello", "name: dir-app")
    if cmdline is not None:
        text = text.replace('cmdline: "console=ttyS0 panic=-1 quiet"', f'cmdline: "{cmdline}"')
        assert cmdline in text
    text += "\nrootfs:\n  directory: app\n  entrypoint: [/run.sh, one, two]\n  workdir: /tmp\n"
    return lock_copy(text, "dir-app.yaml", directory=directory)


def test_directory_root_boots_and_a_changed_directory_is_not_current(tmp_path):
    directory = scratch("blindbox-dir-app-")
    recipe = _recipe(directory)
    out = tmp_path / "dir-app"
    res = build(BuildRequest(recipe=recipe.path, out=out, allow_stale=ALLOW_STALE))
    assert res.manifest.rootfs is not None and not res.manifest.rootfs["network"]
    assert res.manifest.rootfs["sources"][0]["kind"] == "tree"
    boot = smoke_boot(out / "bzImage", out / "initrd", (out / "cmdline").read_bytes(), firmware=None,
                      drives=[out / "rootfs.erofs", out / "rootfs.verity"])
    console = boot.console.replace("\r", "")
    assert "dir-app: running as 0 in /tmp with one two" in console, console[-2000:]
    assert boot.marker("BLINDBOX-APP-EXIT") == "7"
    assert "BLINDBOX-NET" not in boot.markers and "BLINDBOX-NET-FAILED" not in boot.markers

    assert build(BuildRequest(recipe=recipe.path, out=out, allow_stale=ALLOW_STALE)).up_to_date
    (directory / "app" / "run.sh").write_text(RUN.replace("exit 7", "exit 8"))
    with pytest.raises(InputDigestMismatch) as e:
        build(BuildRequest(recipe=recipe.path, out=out, allow_stale=ALLOW_STALE))
    assert e.value.exit_code == 2
    assert "input 'rootfs'" in str(e.value) and f"blindbox lock {recipe.path} --update --input rootfs" in str(e.value)
    assert (out / "rootfs.erofs").exists()                  # the published bundle is left as it was


def test_out_inside_the_root_source_and_an_overlong_cmdline_are_refused(tmp_path):
    directory = scratch("blindbox-dir-app-")
    recipe = _recipe(directory)
    with pytest.raises(BundleError, match="lies inside the root filesystem source .*app; the bundle would") as e:
        build(BuildRequest(recipe=recipe.path, out=directory / "app" / "out", allow_stale=ALLOW_STALE))
    assert e.value.exit_code == 2 and not (directory / "app" / "out").exists()
    with pytest.raises(BundleError, match="lies inside the root filesystem source"):
        build(BuildRequest(recipe=recipe.path, out=directory / "app", allow_stale=ALLOW_STALE))
    assert (directory / "app" / "run.sh").read_text() == RUN

    long = "console=ttyS0 " + "x" * 1850
    recipe = _recipe(scratch("blindbox-dir-app-"), cmdline=long)
    with pytest.raises(CmdlineTooLong) as e:
        build(BuildRequest(recipe=recipe.path, out=tmp_path / "long", allow_stale=ALLOW_STALE))
    assert e.value.exit_code == 2
    assert "is 2" in str(e.value) and "more than the 2047 the kernel keeps" in str(e.value)
    assert "shorten the recipe's cmdline" in str(e.value) and not (tmp_path / "long").exists()
    assert verity.CMDLINE_PARAM == "blindbox.root"
