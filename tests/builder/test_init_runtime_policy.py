"""The rootfs init with a runtime policy (builder.steps.init.PolicyLaunch): what the script does, in order."""

from __future__ import annotations

import pytest

from builder.steps.init import AgentLaunch, AppConfig, InitError, PolicyLaunch, render_rootfs_init

SHA = "ab" * 32
POLICY = PolicyLaunch(SHA)
APP = AppConfig(argv=("/bin/app",), uid=1000, gid=1000)


def init(policy=POLICY, agent=None, app=APP):
    return render_rootfs_init(modules=[], app=app, network=True, agent=agent, policy=policy).decode()


def test_modules_checked_digest_rules_loaded_and_printed_before_switch_root():
    text = init()
    for m in ("nf_tables", "nft_ct"):
        assert f"modprobe {m} " in text
    steps = ["BLINDBOX-NET ", "blindbox\\.runtime_policy=", "sha256sum /etc/blindbox/runtime-policy.json",
             "/usr/sbin/nft -f /etc/blindbox/runtime-policy.nft", "/usr/sbin/nft list ruleset", "BLINDBOX-NFT",
             'echo "BLINDBOX-RUNTIME-POLICY-OK $want"', "switch_root"]
    at = [text.index(s) for s in steps]
    assert at == sorted(at)
    assert 'policy_failed() { echo "BLINDBOX-RUNTIME-POLICY-FAILED $(flat "$*")"; stop; }' in text
    assert text.count("policy_failed \"") == 5


def test_without_a_policy_nothing_of_it():
    text = init(policy=None)
    assert "nft" not in text and "RUNTIME-POLICY" not in text and "runtime-policy" not in text


def test_the_agent_gets_the_policy_and_quiet_logs_filter_the_console():
    agent = AgentLaunch(listen=8443, app=8080, attester="auto")
    text = init(policy=PolicyLaunch(SHA, ("app",)), agent=agent)
    assert "--runtime-policy /etc/blindbox/runtime-policy.json" in text
    assert "busybox cp /etc/blindbox/runtime-policy.json /newroot/run/blindbox/agent/etc/blindbox/" in text
    assert "| $b tee /run/blindbox/agent.log | $b grep '^BLINDBOX-AGENT-' &" in text
    assert ">/dev/null 2>&1\nstatus=$?" not in text
    text = init(policy=PolicyLaunch(SHA, ("agent",)), agent=agent)
    assert "| $b tee /run/blindbox/agent.log &" in text
    assert "-- '/bin/app' >/dev/null 2>&1\nstatus=$?" in text
    text = init(policy=PolicyLaunch(SHA, ("agent", "app")), agent=agent)
    assert "| $b tee /run/blindbox/agent.log &" in text and ">/dev/null 2>&1\nstatus" not in text


def test_root_and_bad_digests_are_refused():
    with pytest.raises(InitError, match="would run as uid 0 under a runtime policy"):
        init(app=AppConfig(argv=("/bin/app",)))
    with pytest.raises(InitError, match="is not 64 lower-case hex digits"):
        init(policy=PolicyLaunch("AB" * 32))
