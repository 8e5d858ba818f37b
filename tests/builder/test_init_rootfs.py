"""The rootfs /init as text, and its quoting run through a real sh (no guest: see
tests/integration/test_rootfs_boot.py for the boot)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from builder.steps import init
from builder.steps.init import AppConfig, InitError, render_init, render_rootfs_init, render_stage2

HOSTILE = ("it's", 'say "hi"', "$HOME", "${PATH}", "`id`", "$(id)", "a\nb", "\\", "*", ";", "&&", "|", " lead",
           "trail ", "", "-n", "--", "tab\there", "'", "''", "\\'", "EOF", "ünï", "line\r\nend", "%s", "!x")


def app(**kw) -> AppConfig:
    base = dict(argv=("/usr/bin/app", *HOSTILE), env=(("PATH", "/bin"), ("X", "$y `z` 'q' \"w\"\nnext")),
                workdir="/srv/app", uid=1000, gid=1001)
    base.update(kw)
    return AppConfig(**base)  # type: ignore[arg-type]


def sh(script: str, *, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", "-c", script], capture_output=True, cwd=cwd, timeout=30)


# -- stage 2, run by a real sh with a stand-in busybox --------------------------------------
def run_stage2(tmp_path: Path, config: AppConfig, exit_status: int = 7) -> tuple[list[bytes], str, bytes]:
    """Run stage 2 with ``/run/blindbox`` at ``tmp_path``: the stand-in busybox records
    ``env``'s argv and working directory; every other applet does nothing."""
    text = render_stage2(config).decode()
    # the real one powers the machine off: keep that line out of a test run on a host
    assert "echo o > /proc/sysrq-trigger" in text and "$b poweroff -f" in text
    text = text.replace("echo o > /proc/sysrq-trigger", "exit 0").replace(init.STAGE2_DIR, str(tmp_path))
    record = tmp_path / "argv"
    fake = tmp_path / "busybox"
    fake.write_text(f"#!/bin/sh\ncase $1 in\n  env) shift; printf '%s\\0' \"$@\" > '{record}'; pwd > '{record}.pwd';"
                    f" exit {exit_status} ;;\n  *) exit 0 ;;\nesac\n")
    fake.chmod(0o755)
    (tmp_path / "dmesg-seen").write_text("0\n")
    script = tmp_path / "init"
    script.write_text(text)
    p = subprocess.run(["sh", str(script)], capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    argv = record.read_bytes().split(b"\0")[:-1] if record.exists() else []
    pwd = (tmp_path / "argv.pwd").read_text().strip() if (tmp_path / "argv.pwd").exists() else ""
    return argv, pwd, p.stdout


def test_stage2_passes_argv_and_env_exactly(tmp_path):
    workdir = tmp_path / "work dir 'q' $x"
    workdir.mkdir()
    config = app(workdir=str(workdir))
    argv, pwd, out = run_stage2(tmp_path, config)
    fake = str(tmp_path / "busybox").encode()
    env = [f"{k}={v}".encode() for k, v in config.env]
    assert argv == [b"-i", *env, fake, b"nsenter", b"-F", b"-S", b"1000", b"-G", b"1001", b"--",
                    *(w.encode() for w in config.argv)]
    assert pwd == str(workdir)
    assert out.decode().split("\n")[-3:] == ["BLINDBOX-APP-EXIT 7", "BLINDBOX-POWEROFF", ""]


def test_stage2_without_env_and_as_root(tmp_path):
    (tmp_path / "w").mkdir()
    argv, _, out = run_stage2(tmp_path, AppConfig(argv=("/bin/true",), workdir=str(tmp_path / "w")), exit_status=0)
    assert argv == [b"-i", str(tmp_path / "busybox").encode(), b"nsenter", b"-F", b"-S", b"0", b"-G", b"0", b"--",
                    b"/bin/true"]
    assert b"\nBLINDBOX-APP-EXIT 0\n" in out


def test_stage2_missing_workdir_stops_before_the_app(tmp_path):
    argv, _, out = run_stage2(tmp_path, app(workdir="/nonexistent/dir\nwith newline"))
    assert argv == []
    assert out.decode().split("\n") == [
        "BLINDBOX-ROOT-FAILED cannot enter the working directory /nonexistent/dir\\x0awith newline",
        "BLINDBOX-POWEROFF", ""]


# -- stage 1 -------------------------------------------------------------------------------
def test_stage1_writes_stage2_byte_for_byte(tmp_path):
    config = app()
    text = render_rootfs_init(modules=(), app=config, network=False).decode()
    m = re.search(r"^cat > /newroot/run/blindbox/init <<'(BLINDBOX_STAGE2_END_[0-9a-f]{16})'\n.*?^\1\n", text,
                  re.M | re.S)
    assert m, text
    p = sh(m.group(0).replace("/newroot/run/blindbox", str(tmp_path)))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "init").read_bytes() == render_stage2(config)


def test_app_start_line_is_one_console_line(tmp_path):
    config = app(argv=("/opt/my app/it's\n$(reboot)\\x",))
    text = render_rootfs_init(modules=(), app=config, network=True).decode()
    line = next(ln for ln in text.split("\n") if ln.startswith(f"printf '%s %s\\n' \"{init.MARKER_APP_START}\" "))
    assert sh(line).stdout == b"BLINDBOX-APP-START /opt/my app/it's\\x0a$(reboot)\\\\x\n"


@pytest.mark.parametrize("cmdline, table", [
    ('console=ttyS0 blindbox.root="0 8 verity 1 /dev/vda /dev/vdb 4096 4096 1 1 sha256 ab -" panic=-1\n',
     "0 8 verity 1 /dev/vda /dev/vdb 4096 4096 1 1 sha256 ab -"),
    ('blindbox.root="0 8 verity x" quiet\n', "0 8 verity x"),
    ('initrd=initrd a=1 blindbox.root="t 1"\n', "t 1"),
    ('xblindbox.root="wrong" a=1\n', ""),
    ('blindbox_root="wrong"\n', ""),
    ("console=ttyS0\n", ""),
])
def test_the_table_is_read_from_the_command_line(tmp_path, cmdline, table):
    text = render_rootfs_init(modules=(), app=app(), network=False).decode()
    line = next(ln for ln in text.split("\n") if ln.startswith("table=$("))
    (tmp_path / "cmdline").write_text(cmdline)
    p = sh("busybox() { \"$@\"; }\n" + line.replace("/proc/cmdline", str(tmp_path / "cmdline"))
           + '\nprintf "%s" "$table"')
    assert p.returncode == 0 and p.stdout.decode() == table, p.stderr


@pytest.mark.parametrize("dd_output, size, ok", [
    ("510+0 records in\n510+0 records out\n", 510 * 4096, True),
    ("509+0 records in\n509+0 records out\n", 510 * 4096, False),
    ("509+1 records in\n509+1 records out\n", 510 * 4096, False),
    ("", 4096, False),
])
def test_the_whole_device_must_have_been_read(dd_output, size, ok):
    text = render_rootfs_init(modules=(), app=app(), network=False).decode()
    start = text.index("records=$(")
    lines = text[start:].split("\n")[:2]
    p = sh("busybox() { \"$@\"; }\nverity_failed() { echo \"FAILED $*\"; exit 0; }\n"
           f"out='{dd_output}'\nsize={size}\n" + "\n".join(lines) + "\necho PASSED")
    assert p.stdout.decode().startswith("PASSED" if ok else f"FAILED read not all {size} bytes"), p


# -- the whole script ----------------------------------------------------------------------
def test_markers_and_order():
    text = render_rootfs_init(modules=["sev-guest-free"], app=app(), network=True, sev_guest="absent").decode()
    first = render_init(modules=["sev-guest-free", *init.ROOTFS_MODULES, *init.NET_MODULES],
                        sev_guest="absent").decode()
    # the common part is the default init's, up to its power-off
    assert text.startswith(first[:first.index('echo "BLINDBOX-POWEROFF"')])
    order = [init.MARKER_BOOT, init.MARKER_SEV_GUEST, init.MARKER_VERITY_FAILED, init.MARKER_DMESG,
             init.MARKER_ROOT_FAILED, "dmsetup create --readonly --noudevsync root --table \"$table\"",
             "busybox dd if=/dev/mapper/root of=/dev/null", init.MARKER_VERITY_OK, "mount -t erofs -o ro",
             "mode=1777", "mode=0755", init.MARKER_NET_FAILED, "busybox udhcpc -i eth0", init.MARKER_NET + " $addr",
             "busybox cp /bin/busybox /newroot/run/blindbox/busybox", init.MARKER_APP_EXIT,
             "mount --move /$d /newroot/$d", init.MARKER_APP_START,
             "exec busybox switch_root /newroot /run/blindbox/busybox sh /run/blindbox/init"]
    at = [text.index(s) for s in order]
    assert at == sorted(at)
    assert "DM_DISABLE_UDEV=1\nexport DM_DISABLE_UDEV\n" in text
    for marker in (init.MARKER_VERITY_OK, init.MARKER_VERITY_FAILED, init.MARKER_DMESG, init.MARKER_ROOT_FAILED,
                   init.MARKER_NET, init.MARKER_NET_FAILED, init.MARKER_APP_START, init.MARKER_APP_EXIT):
        assert f"``{marker}" in init.__doc__, marker  # documented


def test_network_off_has_no_network_step():
    text = render_rootfs_init(modules=(), app=app(), network=False).decode()
    for absent in ("udhcpc", "virtio_net", init.MARKER_NET, "eth0", "ip link"):
        assert absent not in text
    assert init.MARKER_APP_START in text


def test_rootfs_modules_follow_the_recipes_unless_named_or_builtin():
    text = render_rootfs_init(modules=["dm_mod", "tsm"], builtin=["virtio_pci"], app=app(), network=True,
                              sev_guest="builtin").decode()
    loaded = re.findall(r"^out=\$\(modprobe (\S+) 2>&1\)", text, re.M)
    assert loaded == ["dm_mod", "tsm", "virtio_blk", "dm-verity", "erofs", "virtio_net"]
    assert 'echo "BLINDBOX-MODULE virtio_pci builtin"' in text


def test_rendering_is_deterministic_and_utf8():
    a = render_rootfs_init(modules=(), app=app(), network=True)
    assert a == render_rootfs_init(modules=(), app=app(), network=True)
    assert a != render_rootfs_init(modules=(), app=app(uid=1001), network=True)
    a.decode("utf-8")


@pytest.mark.parametrize("kw, message", [
    (dict(argv=()), "the application has no command"),
    (dict(argv=("app",)), "the application program 'app' is not an absolute path"),
    (dict(argv=("/a", "b\0c")), "is not text without NUL bytes"),
    (dict(workdir="srv"), "the working directory 'srv' is not an absolute path"),
    (dict(env=(("A=B", "c"),)), "the environment variable 'A=B' cannot be passed"),
    (dict(env=(("", "c"),)), "the environment variable '' cannot be passed"),
    (dict(env=(("-i", "c"),)), "the environment variable '-i' cannot be passed"),
    (dict(env=(("A", "c\0"),)), "the environment variable 'A' cannot be passed"),
    (dict(uid=-1), "the application uid -1 is not a number from 0 to 4294967294"),
    (dict(gid=2 ** 32 - 1), "the application gid 4294967295 is not a number"),
    (dict(uid=True), "the application uid True is not a number"),
])
def test_bad_app_settings_are_refused(kw, message):
    with pytest.raises(InitError, match=re.escape(message)):
        render_rootfs_init(modules=(), app=app(**kw), network=False)
    with pytest.raises(InitError):
        render_stage2(app(**kw))


def test_bad_module_names_and_sev_guest_are_refused():
    with pytest.raises(InitError, match="kernel module name 'a b'"):
        render_rootfs_init(modules=["a b"], app=app(), network=False)
    with pytest.raises(InitError, match="sev_guest must be"):
        render_rootfs_init(modules=(), app=app(), network=False, sev_guest="maybe")
