"""The manifest's runtime_policy section: the canonical object, its digest, and the measured cmdline's commitment."""

from __future__ import annotations

import copy

import pytest

from blindbox.audit.manifest import ManifestInvalid, check_manifest, runtime_policy_of
from measure import runtime_policy as rp
from tests.audit.test_manifest_rootfs import _make_bundle

POLICY = rp.parse_runtime_policy({"egress": [{"network": "192.0.2.10", "port": 8443, "protocol": "tcp"}],
                                  "logs": ["app"]}, "test")


def _with_policy(tmp_path, policy: rp.RuntimePolicy = POLICY, committed: rp.RuntimePolicy | None = POLICY) -> dict:
    """A manifest with ``policy``, whose measured cmdline commits to ``committed`` (None: to nothing)."""
    tail = "" if committed is None else " " + rp.cmdline_word(committed)
    _, doc = _make_bundle(tmp_path, tail)
    doc["runtime_policy"] = rp.manifest_record(policy)
    return doc


def test_a_runtime_policy_committed_to_by_the_cmdline_is_read(tmp_path):
    doc = check_manifest(_with_policy(tmp_path))
    back = runtime_policy_of(doc)
    assert back is not None and rp.canonical_json(back) == rp.canonical_json(POLICY)
    (tmp_path / "b").mkdir()
    _, plain = _make_bundle(tmp_path / "b")
    assert runtime_policy_of(check_manifest(plain)) is None


def _refused(doc) -> ManifestInvalid:
    with pytest.raises(ManifestInvalid) as ei:
        check_manifest(doc)
    return ei.value


def test_a_policy_the_cmdline_does_not_commit_to_is_refused(tmp_path):
    doc = _with_policy(tmp_path, committed=None)
    assert "runtime_policy.sha256 is " in str(_refused(doc))
    assert "the measured cmdline does not carry exactly one blindbox.runtime_policy=" in str(_refused(doc))


def test_a_policy_edited_after_the_build_is_refused(tmp_path):
    doc = _with_policy(tmp_path)
    doc["runtime_policy"]["policy"]["egress"][0]["port"] = 443
    e = _refused(doc)
    assert "runtime_policy.sha256 is " in str(e) and "but the SHA-256 of the canonical form" in str(e)
    # editing the digest too does not help: the measured cmdline still names the built policy
    doc["runtime_policy"]["sha256"] = rp.runtime_policy_sha256(
        rp.from_json_value(doc["runtime_policy"]["policy"], "t")).hex()
    assert "does not carry exactly one blindbox.runtime_policy=" in str(_refused(doc))


def test_a_cmdline_commitment_without_a_policy_is_refused(tmp_path):
    doc = _with_policy(tmp_path)
    del doc["runtime_policy"]
    assert "cmdline carries blindbox.runtime_policy=" in str(_refused(doc))
    assert "but the manifest has no runtime_policy" in str(_refused(doc))


@pytest.mark.parametrize("change, words", [
    (lambda p: p.update(ingress="any"), "runtime_policy.policy.ingress is 'any', not 'agent-only'"),
    (lambda p: p.pop("logs"), "runtime_policy.policy lacks logs"),
    (lambda p: p["egress"][0].update(network="example.com"), "runtime_policy.policy.egress[0].network is the host"),
    (lambda p: p.update(clients=["ab" * 32]), "runtime_policy.policy.clients lists client keys, but the manifest "
                                               "has no agent"),
])
def test_each_broken_field_is_named(tmp_path, change, words):
    doc = _with_policy(tmp_path)
    policy = copy.deepcopy(doc["runtime_policy"]["policy"])
    change(policy)
    doc["runtime_policy"]["policy"] = policy
    if "clients" in words:     # a consistent digest, so that the missing agent is what is refused
        new = rp.from_json_value(policy, "t")
        (tmp_path / "c").mkdir()
        doc = _with_policy(tmp_path / "c", new, new)
    assert words in str(_refused(doc))
