"""Recipe validation: every mistake names file:line and the key; nothing is silently ignored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from builder.errors import RecipeError, SourceError
from builder.recipe import SUITES, load_recipe, parse_recipe
from builder.sources import SUITES as FETCHER_SUITES
from builder.sources import DebianArchive

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
name: t
source_date_epoch: 1700000000
firmware:
  debian: ovmf-amdsev
  suite: sid
  path: /usr/share/ovmf/OVMF.amdsev.fd
kernel:
  debian: linux-image-amd64
  suite: bookworm
initrd:
  busybox:
    debian: busybox-static
    suite: bookworm
  init:
    content: "#!/bin/sh\\n"
cmdline: "console=ttyS0"
shapes:
  - vmm_profile: qemu
    vcpus: [1, 4]
    vcpu_types: [EPYC-v4]
"""


def parse(text: str, name: str = "r.yaml"):
    return parse_recipe(text.encode(), Path("/recipes") / name)


def error(text: str) -> RecipeError:
    with pytest.raises(RecipeError) as ei:
        parse(text)
    return ei.value


def test_base_recipe_parses():
    r = parse(BASE)
    assert r.name == "t"
    assert r.source_date_epoch == 1700000000
    assert r.firmware.kind == "debian" and r.firmware.member == "/usr/share/ovmf/OVMF.amdsev.fd"
    assert r.initrd.busybox.member == "/bin/busybox"
    assert r.initrd.init.mode == 0o755 and r.initrd.init.content == b"#!/bin/sh\n"
    assert [s.id for s in r.shapes()] == ["qemu:EPYC-v4:1:0x1", "qemu:EPYC-v4:4:0x1"]
    assert r.lock_path == Path("/recipes/r.lock")


def test_recipe_is_frozen():
    r = parse(BASE)
    with pytest.raises(AttributeError):
        r.name = "x"  # type: ignore[misc]


def test_shipped_hello_recipe_parses():
    r = load_recipe(ROOT / "recipes" / "hello.yaml")
    assert r.name == "hello"
    assert "sev-guest" in r.initrd.modules
    assert len(r.shapes()) == 12
    assert all(s.vmm_profile == "qemu" for s in r.shapes())


@pytest.mark.parametrize("text, line, key, words", [
    (BASE + "colour: blue\n", 21, "colour", "unknown key 'colour'"),
    (BASE.replace("  suite: sid\n", "  suite: sid\n  sute: x\n"), 6, "firmware.sute", "unknown key"),
    (BASE.replace("name: t\n", ""), 1, "name", "missing required key 'name'"),
    (BASE.replace("source_date_epoch: 1700000000", "source_date_epoch: soon"), 2,
     "source_date_epoch", "expected an integer"),
    (BASE.replace("vcpus: [1, 4]", "vcpus: 4"), 19, "shapes[0].vcpus", "expected a list"),
    (BASE.replace("vcpus: [1, 4]", "vcpus: [1, 0]"), 19, "shapes[0].vcpus[1]", "out of range"),
    (BASE.replace("[EPYC-v4]", "[EPYC-v9]"), 20, "shapes[0].vcpu_types[0]", "unknown vCPU type"),
    (BASE.replace("vmm_profile: qemu", "vmm_profile: ec2"), 18, "shapes[0].vmm_profile",
     "Amazon EC2 launches SNP guests with its own firmware"),
    (BASE.replace("vmm_profile: qemu", "vmm_profile: gce"), 18, "shapes[0].vmm_profile",
     "Google Compute Engine"),
    (BASE.replace("  suite: bookworm\ninitrd", "initrd"), 7, "kernel.suite", "missing required key 'suite'"),
    (BASE.replace("suite: sid", "suite: buster"), 5, "firmware.suite", "unknown suite"),
    (BASE.replace("  path: /usr/share/ovmf/OVMF.amdsev.fd\n", ""), 3, "firmware.path", "missing required"),
    (BASE.replace('cmdline: "console=ttyS0"', "cmdline: 42"), 16, "cmdline", "must be a string"),
    (BASE.replace('cmdline: "console=ttyS0"', 'cmdline: |\n  console=ttyS0\n'), 16, "cmdline",
     "control character"),
    (BASE.replace('cmdline: "console=ttyS0"', f'cmdline: "{"x" * 2048}"'), 16, "cmdline", "at most 2047"),
    (BASE + "rootfs:\n  erofs: app/\n", 22, "rootfs.erofs", "unknown key 'erofs'"),
    (BASE + "name: u\n", 21, "name", "given twice (first at line 1)"),
    (BASE.replace("name: t", "name: ../escape"), 1, "name", "must be 1-64 letters"),
    (BASE + "schema: 2\n", 21, "schema", "reads recipe schema 1"),
    (BASE.replace("    vcpu_types: [EPYC-v4]\n", "    vcpu_types: [EPYC-v4]\n    guest_features: [0x0]\n"),
     21, "shapes[0].guest_features[0]", "lacks SNPActive"),
    (BASE.replace("    vcpu_types: [EPYC-v4]\n", "    vcpu_types: [EPYC-v4]\n    guest_features: [0x3]\n"),
     21, "shapes[0].guest_features[0]", "cannot request from QEMU"),
    (BASE.split("shapes:")[0] + "shapes: []\n", 17, "shapes", "at least one"),
    (BASE + "initrd: {}\n", 21, "initrd", "given twice"),
])
def test_errors_name_file_line_and_key(text, line, key, words):
    e = error(text)
    assert e.line == line, str(e)
    assert e.key == key, str(e)
    assert e.path == "/recipes/r.yaml"
    assert str(e).startswith(f"/recipes/r.yaml:{line}: {key}: "), str(e)
    assert words in str(e)


def test_unknown_key_suggests_the_close_one():
    e = error(BASE.replace("vcpu_types:", "vcpu-types:"))
    assert "Did you mean 'vcpu_types'?" in str(e)


def test_initrd_files_and_binaries():
    extra = (
        "  modules: [sev-guest, virtio_blk]\n"
        "  compression: none\n"
        "  files:\n"
        "    - path: /etc/motd\n"
        "      content: \"hi\\n\"\n"
        "    - path: /app/run.sh\n"
        "      file: app/run.sh\n"
        "      mode: \"0755\"\n"
        "    - path: /etc/os-release\n"
        "      debian: base-files\n"
        "      suite: bookworm\n"
        "      member: /usr/lib/os-release\n"
        "    - path: /opt/data\n"
        "      url: https://example.org/data\n"
        f"      sha256: \"{'ab' * 32}\"\n"
        "  binaries:\n"
        "    - debian: coreutils\n"
        "      suite: bookworm\n"
        "      path: /usr/bin/sha256sum\n")
    text = BASE.replace("  init:\n", extra + "  init:\n")
    r = parse(text)
    i = r.initrd
    assert i.modules == ("sev-guest", "virtio_blk")
    assert i.compression == "none"
    assert [f.path for f in i.files] == ["/etc/motd", "/app/run.sh", "/etc/os-release", "/opt/data"]
    assert i.files[0].content == b"hi\n" and i.files[0].mode == 0o644
    assert i.files[1].source.kind == "file" and i.files[1].mode == 0o755
    assert i.files[2].source.member == "/usr/lib/os-release"
    assert i.files[3].source.wants() == {"url": "https://example.org/data", "sha256": "ab" * 32}
    assert i.binaries[0].dest == "/usr/bin/sha256sum"
    names = [x.name for x in r.inputs()]
    assert names == ["firmware", "kernel", "busybox", "file:/app/run.sh", "file:/etc/os-release",
                     "file:/opt/data", "binary:/usr/bin/sha256sum"]


@pytest.mark.parametrize("entry, key, words", [
    ('{path: etc/motd, content: x}', "initrd.files[0].path", "normalized absolute path"),
    ('{path: /etc/motd, content: x, mode: 0644}', "initrd.files[0].mode", "quoted octal strings"),
    ('{path: /etc/motd, content: x, mode: "999"}', "initrd.files[0].mode", "not an octal file mode"),
    ('{path: /etc/motd}', "initrd.files[0]", "give the file's 'content' inline"),
    ('{path: /etc/motd, content: x, file: y}', "initrd.files[0].content", "not both"),
    ('{path: /x, file: ../secret}', "initrd.files[0].file", "relative to the recipe's directory"),
    ('{path: /x, url: "http://example.org/x", sha256: "%s"}' % ("0" * 64), "initrd.files[0].url", "only https"),
    ('{path: /x, url: "https://example.org/x"}', "initrd.files[0].sha256", "needs its sha256"),
    ('{path: /x, file: a, sha256: "xyz"}', "initrd.files[0].sha256", "64 hexadecimal digits"),
    ('{path: /x, debian: base-files, suite: bookworm}', "initrd.files[0].member", "missing required"),
    ('{path: /init, content: x}', "initrd.files[0]", "already placed"),
])
def test_file_entry_errors(entry, key, words):
    text = BASE.replace("  init:\n", f"  files:\n    - {entry}\n  init:\n")
    e = error(text)
    assert e.key == key, str(e)
    assert e.line == 15
    assert words in str(e)


def test_yaml_syntax_error_has_a_line():
    e = error(BASE.replace("vcpus: [1, 4]", "vcpus: [1, 4"))
    assert e.line >= 20 and "not valid YAML" in str(e)


def test_top_level_must_be_a_mapping():
    assert "mapping" in str(error("- a\n- b\n"))
    assert "exactly one YAML document" in str(error(""))


def test_not_utf8():
    with pytest.raises(RecipeError, match="not UTF-8"):
        parse_recipe(b"name: \xff\n", Path("r.yaml"))


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_guest_features_as_hex_strings_and_debug_swap():
    r = parse(BASE.replace("    vcpu_types: [EPYC-v4]\n",
                           "    vcpu_types: [EPYC-v4, epyc-milan]\n    guest_features: [\"0x21\", 1]\n"))
    ids = [s.id for s in r.shapes()]
    assert ids == ["qemu:EPYC-v4:1:0x21", "qemu:EPYC-v4:4:0x21", "qemu:EPYC-v4:1:0x1", "qemu:EPYC-v4:4:0x1",
                   "qemu:EPYC-Milan:1:0x21", "qemu:EPYC-Milan:4:0x21", "qemu:EPYC-Milan:1:0x1",
                   "qemu:EPYC-Milan:4:0x1"]


def test_cmdline_is_utf8_bytes_exactly():
    r = parse(BASE.replace('cmdline: "console=ttyS0"', 'cmdline: "console=ttyS0  app.name=\'héllo wörld\'"'))
    assert r.cmdline_bytes == "console=ttyS0  app.name='héllo wörld'".encode()


def test_launch_section():
    r = parse(BASE + "launch:\n  memory_mib: 1024\n  policy: 0x30000\n")
    assert r.launch.memory_mib == 1024 and r.launch.policy == 0x30000
    assert "bit 17" in str(error(BASE + "launch:\n  policy: 0x0\n"))
@pytest.mark.parametrize("suite", ["forky", "stable", "testing", "unstable", "bullseye"])
def test_recipe_refuses_a_suite_the_fetcher_does_not_fetch(suite, tmp_path):
    with pytest.raises(SourceError, match="Unknown Debian suite"):
        DebianArchive._suite(suite)                     # the fetcher would refuse it later
    e = error(BASE.replace("suite: sid", f"suite: {suite}"))
    assert str(e) == (f"/recipes/r.yaml:5: firmware.suite: unknown suite {suite!r}; use one of bookworm, "
                      f"trixie, sid (codenames, as blindbox fetches them: sid, not unstable).")
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("suite: sid", f"suite: {suite}"))
    p = subprocess.run([sys.executable, "-m", "blindbox.cli", "lock", str(bad)], capture_output=True, text=True,
                       cwd=ROOT)
    assert p.returncode == 2, p.stderr
    assert f"{bad}:5: firmware.suite: unknown suite {suite!r}" in p.stderr and "Traceback" not in p.stderr


def test_every_suite_a_recipe_accepts_is_one_the_fetcher_resolves():
    assert SUITES == tuple(FETCHER_SUITES) == ("bookworm", "trixie", "sid")
    for suite in SUITES:
        assert DebianArchive._suite(suite).name == suite
        assert parse(BASE.replace("suite: sid", f"suite: {suite}")).firmware.suite == suite


def test_cli_bad_recipe_exits_2_with_file_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "colour: blue\n")
    for args in (["build", str(bad), "--out", str(tmp_path / "out")], ["lock", str(bad)]):
        p = subprocess.run([sys.executable, "-m", "blindbox.cli", *args], capture_output=True, text=True,
                           cwd=ROOT)
        assert p.returncode == 2, p.stderr
        assert f"{bad}:21: colour: unknown key 'colour'" in p.stderr
        assert "Traceback" not in p.stderr
