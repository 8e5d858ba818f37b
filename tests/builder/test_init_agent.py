"""The rootfs init with an attestation agent, run by a real sh with a stand-in busybox (no guest; see
tests/integration/test_agent_boot.py for the boot): the agent starts in its own root before the
application, which starts only after the agent's ready line."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from builder.steps import init
from builder.steps.init import AgentLaunch, AppConfig, InitError, render_rootfs_init, render_stage2

APP = AppConfig(argv=("/usr/bin/python3.11", "-I", "/srv/app/app.py"), env=(("HOST", "127.0.0.1"),),
                workdir="/", uid=65534, gid=65534)
AGENT = AgentLaunch(listen=8443, app=8080, attester="simulated:10.0.2.100:4050")

#: what the stand-in's ``chroot`` does, by scenario (it plays the agent)
AGENTS = {
    "ready": "echo 'BLINDBOX-AGENT-READY 0.0.0.0:8443 ab12'; exec sleep 1",
    "refused": "echo 'BLINDBOX-AGENT-REFUSED no SEV-SNP attestation device: neither exists.'; exit 2",
    "crash": "echo 'Traceback (most recent call last):'; exit 1",
    "silent": "exec sleep 2",
}


def run_stage2(tmp_path: Path, scenario: str, *, tries: int | None = None) -> tuple[str, str]:
    """Stage 2 with /run/blindbox at ``tmp_path``; (console, what the stand-in busybox was asked to do)."""
    text = render_stage2(APP, AGENT).decode()
    assert "echo o > /proc/sysrq-trigger" in text
    text = text.replace("echo o > /proc/sysrq-trigger", "exit 0").replace(init.STAGE2_DIR, str(tmp_path))
    if tries is not None:
        text = text.replace(f"-lt {init.AGENT_WAIT_SECONDS * 5} ]", f"-lt {tries} ]")
    log = tmp_path / "calls"
    fake = tmp_path / "busybox"
    fake.write_text(f"""#!/bin/sh
echo "$*" >> '{log}'
case $1 in
  chroot) {AGENTS[scenario]} ;;
  sleep) [ "$2" = 5 ] || exec sleep "$2" ;;    # not the 5 s wait for the power-off
  tee|grep|tail) cmd=$1; shift; exec $cmd "$@" ;;
  env) exit 5 ;;
  *) exit 0 ;;
esac
""")
    fake.chmod(0o755)
    (tmp_path / "dmesg-seen").write_text("0\n")
    (tmp_path / "init").write_text(text)
    p = subprocess.run(["sh", str(tmp_path / "init")], capture_output=True, timeout=60, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout, log.read_text()


def test_the_agent_starts_in_its_own_root_then_the_application(tmp_path):
    console, calls = run_stage2(tmp_path, "ready")
    a = tmp_path / "agent"
    lines = calls.splitlines()
    assert lines[:4] == [f"mount --bind /dev {a}/dev", f"mount --bind /proc {a}/proc", f"mount --bind /sys {a}/sys",
                         f"mount -t tmpfs -o mode=0700,nosuid,nodev tmpfs {a}/tmp"]
    assert f"chroot {a} /usr/bin/python3.11 -I /opt/blindbox/agent.py --listen 0.0.0.0:8443 --app 127.0.0.1:8080 " \
           f"--attester simulated:10.0.2.100:4050 --state-dir /tmp --openssl /usr/bin/openssl" in lines
    env = next(i for i, ln in enumerate(lines) if ln.startswith("env -i HOST=127.0.0.1 "))
    assert env > lines.index(next(ln for ln in lines if ln.startswith("chroot ")))
    shown = [ln for ln in console.splitlines() if ln.startswith("BLINDBOX-")]
    assert shown[:3] == ["BLINDBOX-AGENT-START 8443", "BLINDBOX-AGENT-READY 0.0.0.0:8443 ab12",
                         "BLINDBOX-APP-START /usr/bin/python3.11"]
    assert shown[3:5] == ["BLINDBOX-APP-EXIT 5", "BLINDBOX-POWEROFF"]


@pytest.mark.parametrize("scenario, line", [
    ("refused", "BLINDBOX-AGENT-REFUSED no SEV-SNP attestation device: neither exists."),
    ("crash", "BLINDBOX-AGENT-EXIT 1"),
])
def test_an_agent_that_does_not_start_stops_the_guest_before_the_application(tmp_path, scenario, line):
    console, calls = run_stage2(tmp_path, scenario)
    assert not any(ln.startswith("env ") for ln in calls.splitlines())          # the app never ran
    shown = [ln for ln in console.splitlines() if ln.startswith("BLINDBOX-")]
    assert line in shown
    assert shown[-2:] == ["BLINDBOX-AGENT-FAILED the attestation agent did not start, so the application is not "
                          "started", "BLINDBOX-POWEROFF"]
    assert "BLINDBOX-APP-START" not in console


def test_no_ready_line_in_time_stops_the_guest(tmp_path):
    console, calls = run_stage2(tmp_path, "silent", tries=3)
    assert not any(ln.startswith("env ") for ln in calls.splitlines())
    shown = [ln for ln in console.splitlines() if ln.startswith("BLINDBOX-")]
    assert shown[1:3] == [
        f"BLINDBOX-AGENT-FAILED no BLINDBOX-AGENT-READY line within {init.AGENT_WAIT_SECONDS} s; the application is "
        f"not started", "BLINDBOX-POWEROFF"]


def test_stage1_copies_the_agent_and_leaves_the_app_start_line_to_stage2():
    text = render_rootfs_init(modules=(), app=APP, network=True, agent=AGENT).decode()
    copy = text.index("busybox cp -a /agent /newroot/run/blindbox/ ||")
    assert text.index("busybox chmod 0700 /newroot/run/blindbox/agent") > copy
    stage1 = text[:text.index("cat > /newroot/run/blindbox/init")] + text[text.rindex("BLINDBOX_STAGE2_END_"):]
    assert "BLINDBOX-APP-START" not in stage1 and copy < text.index("exec busybox switch_root")
    m = re.search(r"^cat > /newroot/run/blindbox/init <<'(BLINDBOX_STAGE2_END_[0-9a-f]{16})'\n(.*?)^\1\n", text,
                  re.M | re.S)
    assert m and m.group(2).encode() == render_stage2(APP, AGENT)
    assert subprocess.run(["sh", "-n", "-c", text]).returncode == 0


def test_without_an_agent_nothing_changes():
    text = render_rootfs_init(modules=(), app=APP, network=True).decode()
    assert "/agent" not in text and "chroot" not in text
    assert text.count("BLINDBOX-APP-START") == 1


@pytest.mark.parametrize("agent, message", [
    (AgentLaunch(8443, 8443, "auto"), "cannot both use port 8443"),
    (AgentLaunch(0, 8080, "auto"), "listen port 0 is not from 1 to 65535"),
    (AgentLaunch(8443, 8080, "auto; reboot"), "attester 'auto; reboot' cannot be used in the init script"),
    (AgentLaunch(8443, 8080, "auto", openssl="/usr/bin/open ssl"), "openssl '/usr/bin/open ssl' cannot be used"),
])
def test_bad_agent_settings_are_refused(agent, message):
    with pytest.raises(InitError, match=re.escape(message)):
        render_stage2(APP, agent)


def test_the_agent_needs_the_network():
    with pytest.raises(InitError, match="the attestation agent needs the network"):
        render_rootfs_init(modules=(), app=APP, network=False, agent=AGENT)
