"""The build pipeline with an in-memory archive: steps, refusals, no-op rebuilds, atomicity.

The kernel and initrd steps are replaced by stand-ins here (their real versions are
tested in tests/builder/test_kernel.py etc. and end to end in tests/integration); the
firmware is the real last page of an AmdSev OVMF (tests/fixtures/vectors).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder import pipeline
from builder.errors import InputDigestMismatch, OfflineMiss, SourceGone
from builder.lock import LockMissing, lock_recipe, write_lock
from builder.pipeline import BuildRequest, FirmwareRefused, build, check_firmware
from builder.recipe import load_recipe
from measure.kernel_hashes import KernelHashes
from measure.ovmf import Firmware
from measure.snp import SnpLaunch, VmShape
from measure.cpu import CPU_SIGS

from .fakes import FakeArchive

VECTORS = Path(__file__).resolve().parents[1] / "fixtures" / "vectors" / "virtee-sev" / "measurement"
AMDSEV = (VECTORS / "ovmf_AmdSev_suffix.bin").read_bytes()
OVMFX64 = (VECTORS / "ovmf_OvmfX64_suffix.bin").read_bytes()

RECIPE = """\
name: t
source_date_epoch: 1700000000
firmware: {debian: ovmf-amdsev, suite: sid, path: /usr/share/ovmf/OVMF.amdsev.fd}
kernel: {debian: linux-image-amd64, suite: bookworm}
initrd:
  busybox: {debian: busybox-static, suite: bookworm}
  files:
    - {path: /etc/app.conf, file: app.conf}
cmdline: "console=ttyS0 wörld"
shapes:
  - {vmm_profile: qemu, vcpus: [1, 4], vcpu_types: [EPYC-v4, EPYC-Genoa], guest_features: [0x1, 0x21]}
"""


def fake_kernel(b):
    b.kernel = SimpleNamespace(release="6.1.0-test-amd64", tree=Path(b.inputs["kernel"]))
    b.kernel_bytes = (Path(b.inputs["kernel"]) / "boot/vmlinuz-6.1.0-test-amd64").read_bytes()


def fake_initrd(b):
    conf = Path(b.inputs["file:/etc/app.conf"]).read_bytes()
    busybox = Path(b.inputs["busybox"]).read_bytes()
    b.initrd = SimpleNamespace(data=b"initrd:" + busybox + conf, compressor="test", listing=())


STEPS = tuple((n, {"kernel": fake_kernel, "initrd": fake_initrd}.get(n, f)) for n, f in pipeline.STEPS)


def hello_archive(tmp_path: Path) -> FakeArchive:
    """An in-memory archive serving the packages RECIPE names."""
    archive = FakeArchive(tmp_path / "archive")
    archive.fetched = []
    archive.add("ovmf-amdsev", "2026.08-1", "sid", {"/usr/share/ovmf/OVMF.amdsev.fd": AMDSEV})
    archive.add("linux-image-6.1.0-1-amd64", "6.1.1-1", "bookworm",
                {"/boot/vmlinuz-6.1.0-test-amd64": b"bzImage bytes"})
    archive.add("linux-image-amd64", "6.1.1-1", "bookworm", {}, depends=["linux-image-6.1.0-1-amd64"])
    archive.add("busybox-static", "1:1.35-4", "bookworm", {"/bin/busybox": b"busybox bytes"})
    return archive


def locked(tmp_path, snapshot=None):
    """RECIPE (with its local file input) locked against the in-memory archive (naming ``snapshot``, a
    :class:`builder.sources.snapshot.Snapshot`, if given): archive, recipe, out, cache."""
    archive = hello_archive(tmp_path)
    d = tmp_path / "recipe"
    d.mkdir()
    (d / "t.yaml").write_text(RECIPE)
    (d / "app.conf").write_text("greeting=hello\n")
    recipe = load_recipe(d / "t.yaml")
    write_lock(recipe.lock_path, lock_recipe(recipe, archive, snapshot=snapshot).lock)
    return SimpleNamespace(archive=archive, recipe=recipe, out=tmp_path / "out" / "t", cache=tmp_path / "cache")


@pytest.fixture
def env(tmp_path):
    return locked(tmp_path)


def run(env, **kw):
    req = BuildRequest(recipe=env.recipe.path, out=env.out, cache_root=env.cache, **kw)
    return build(req, steps=STEPS, archive=env.archive)


def test_build_writes_bundle_with_measurements(env):
    res = run(env)
    assert not res.up_to_date
    assert [n for n, _ in res.timings] == [n for n, _ in pipeline.STEPS]
    names = sorted(p.name for p in env.out.iterdir())
    assert names == ["OVMF.amdsev.fd", "bzImage", "cmdline", "initrd", "launch-snp.sh", "manifest.json",
                     "provenance.intoto.json"]
    assert (env.out / "cmdline").read_bytes() == "console=ttyS0 wörld".encode()
    assert (env.out / "launch-snp.sh").stat().st_mode & 0o777 == 0o755
    assert (env.out / "bzImage").stat().st_mode & 0o777 == 0o644
    m = json.loads((env.out / "manifest.json").read_bytes())
    assert [i["name"] for i in m["inputs"]] == ["firmware", "kernel", "busybox", "file:/etc/app.conf", "compressor"]
    assert m["recipe"] == {"file": "t.yaml", "sha256": env.recipe.sha256}
    assert m["lock"]["sha256"] == hashlib.sha256(env.recipe.lock_path.read_bytes()).hexdigest()
    for o in m["outputs"]:
        data = (env.out / o["file"]).read_bytes()
        assert o["sha256"] == hashlib.sha256(data).hexdigest() and o["size"] == len(data)
    # every shape, computed independently: one SnpLaunch per shape, nothing shared
    hashes = KernelHashes.from_files(env.out / "bzImage", env.out / "initrd", "console=ttyS0 wörld")
    assert m["kernel_hashes"]["cmdline"] == hashes.cmdline.hex()
    assert len(m["measurements"]) == 8
    for e in m["measurements"]:
        fw = Firmware(AMDSEV)
        shape = VmShape(e["vcpus"], CPU_SIGS[e["vcpu_type"]], int(e["guest_features"], 16))
        assert SnpLaunch(fw).measure(shape, hashes).digest.hex() == e["measurement"], e["shape"]
    assert {e["shape"] for e in m["measurements"]} == {
        f"qemu:{t}:{n}:{gf}" for t in ("EPYC-v4", "EPYC-Genoa") for n in (1, 4) for gf in ("0x1", "0x21")}
    assert str(env.out.parent) not in (env.out / "manifest.json").read_text()


def test_noop_rebuild_and_what_defeats_it(env):
    run(env)
    before = {p.name: p.stat().st_ino for p in env.out.iterdir()}
    res = run(env)
    assert res.up_to_date and [n for n, _ in res.timings] == ["recipe", "current"]
    assert {p.name: p.stat().st_ino for p in env.out.iterdir()} == before
    assert run(env, force=True).up_to_date is False
    (env.out / "initrd").write_bytes(b"damaged")
    assert run(env).up_to_date is False
    assert (env.out / "initrd").read_bytes() != b"damaged"


def test_failed_build_leaves_previous_bundle_intact(env, tmp_path):
    run(env)
    snapshot = {p.name: p.read_bytes() for p in env.out.iterdir()}

    def explode(b):
        raise RuntimeError("disk on fire")

    def bad_write(b):
        # fail half-way through writing: after the temp dir exists, before the swap
        b.files["zzz-late"] = (b"x", 0o644)
        b.files["bad/name"] = (b"x", 0o644)
        pipeline.step_write(b)

    for broken in (explode, bad_write):
        steps = tuple((n, broken if n == ("measure" if broken is explode else "write") else f) for n, f in STEPS)
        with pytest.raises((RuntimeError, ValueError)):
            build(BuildRequest(env.recipe.path, out=env.out, cache_root=env.cache, force=True), steps=steps,
                  archive=env.archive)
        assert {p.name: p.read_bytes() for p in env.out.iterdir()} == snapshot
        assert [p.name for p in env.out.parent.iterdir() if p.name.startswith(".t.tmp")] == []


def test_gone_input_names_input_and_what_to_do(env):
    pkg = env.archive.resolve("linux-image-6.1.0-1-amd64", "bookworm")
    env.archive.withdraw(pkg)
    with pytest.raises(SourceGone) as ei:
        run(env)
    msg = str(ei.value)
    assert "input 'kernel'" in msg and "linux-image-6.1.0-1-amd64 6.1.1-1" in msg
    assert "--update --input kernel" in msg and "launch digest" in msg


def test_cached_input_still_builds_after_it_is_withdrawn(env):
    run(env)
    env.archive.withdraw(env.archive.resolve("linux-image-6.1.0-1-amd64", "bookworm"))
    assert run(env, force=True).up_to_date is False


def test_changed_local_file_names_input(env):
    (env.recipe.directory / "app.conf").write_text("greeting=tampered\n")
    with pytest.raises(InputDigestMismatch) as ei:
        run(env)
    assert "input 'file:/etc/app.conf'" in str(ei.value) and "--update --input file:/etc/app.conf" in str(ei.value)


def test_offline_without_cache(env):
    env.archive.offline = True
    with pytest.raises(OfflineMiss, match="input 'firmware'.*--offline"):
        run(env, offline=True)


def test_missing_lock(env):
    env.recipe.lock_path.unlink()
    with pytest.raises(LockMissing, match="blindbox lock"):
        run(env)


def test_firmware_without_kernel_hashes_is_refused(env):
    env.archive.add("ovmf-amdsev", "2026.09-1", "sid", {"/usr/share/ovmf/OVMF.amdsev.fd": OVMFX64})
    write_lock(env.recipe.lock_path, lock_recipe(env.recipe, env.archive).lock.__class__(
        "t.yaml", tuple(lock_recipe(env.recipe, env.archive, update=True, only=["firmware"]).lock.inputs)))
    with pytest.raises(FirmwareRefused, match="SNP_KERNEL_HASHES.*ovmf-amdsev"):
        run(env)
    assert not env.out.exists()


@pytest.mark.parametrize("data, words", [
    (AMDSEV, None),
    (OVMFX64, "no SNP_KERNEL_HASHES metadata section"),
    (bytes(4096), "no SEV metadata"),
])
def test_check_firmware(data, words):
    fw = Firmware(data, name="fw")
    if words is None:
        check_firmware(fw, "fw")
    else:
        with pytest.raises(FirmwareRefused, match=words):
            check_firmware(fw, "fw")


def test_cli_build_json_and_exit_codes(env, monkeypatch, capsys):
    from blindbox.cli import main
    real_build = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda req, **kw: real_build(req, archive=env.archive, steps=STEPS, **kw))
    monkeypatch.setenv("BLINDBOX_CACHE", str(env.cache))
    assert main(["build", str(env.recipe.path), "--out", str(env.out), "--json"]) == 0, capsys.readouterr().err
    doc = json.loads(capsys.readouterr().out)
    assert doc["bundle"] == str(env.out) and not doc["up_to_date"] and len(doc["measurements"]) == 8
    assert main(["build", str(env.recipe.path), "--out", str(env.out)]) == 0
    assert "up to date" in capsys.readouterr().out
    env.recipe.lock_path.unlink()
    assert main(["build", str(env.recipe.path), "--out", str(env.out)]) == 2
    err = capsys.readouterr().err
    assert "t.lock does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize("kind, key", [("file", "path"), ("url", "url")])
def test_cli_build_refuses_a_lock_entry_without_its_location(env, monkeypatch, capsys, kind, key):
    from blindbox.cli import main
    real_build = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda req, **kw: real_build(req, archive=env.archive, steps=STEPS, **kw))
    monkeypatch.setenv("BLINDBOX_CACHE", str(env.cache))
    doc = json.loads(env.recipe.lock_path.read_text())
    entry = next(e for e in doc["inputs"] if e["kind"] == "file")
    entry.update(kind=kind)
    entry.pop("path")
    env.recipe.lock_path.write_text(json.dumps(doc))
    assert main(["build", str(env.recipe.path), "--out", str(env.out)]) == 2
    err = capsys.readouterr().err
    assert f"entry 'file:/etc/app.conf' has no valid '{key}'; the lock file is damaged" in err
    assert "Traceback" not in err and not env.out.exists()
