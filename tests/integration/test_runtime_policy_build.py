"""`blindbox build` with a runtime policy: the manifest section, rederive, the oracle, every digest
committing to every value of the policy, and the uid-0 refusal.

The test-only egress-probe recipe (tests/integration/egress_probe) with an attestation agent (a
simulated attester: ``clients`` needs the agent) and an uncompressed initrd (quicker; every variant
is built the same way), locked once and built once per run for each variant: the base policy and
one variant per value (clients, egress network, port and protocol, debug, logs).  The base is built
through the CLI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from blindbox.cli import main
from builder.lock import lock_recipe, write_lock
from builder.manifest import Manifest
from builder.pipeline import BuildRequest, build
from builder.recipe import load_recipe
from builder.sources import fetch_url
from measure.runtime_policy import CMDLINE_PARAM
from tests.realinputs import ALLOW_STALE, archive

from .appbuild import once
from .policybuild import PROBE, recipe_text

pytestmark = [pytest.mark.integration, pytest.mark.network]

STALE = [a for s in ALLOW_STALE for a in ("--allow-stale", s)]
KEY_A, KEY_B = "a0" * 32, "1f" * 32
AGENT = """
agent:
  listen: 8443
  app: 8080
  attester: simulated
"""
BASE = {"clients": f'["{KEY_A}"]', "network": "10.0.2.101", "port": "5001", "protocol": "tcp", "debug": "false",
        "logs": "[app, agent]"}
#: one changed value each
VARIANTS = {"clients": {"clients": f'["{KEY_B}"]'}, "network": {"network": "10.0.2.103"},
            "port": {"port": "5002"}, "protocol": {"protocol": "udp"}, "debug": {"debug": "true"},
            "logs": {"logs": "[app]"}}


def policy(values: dict[str, str]) -> str:
    v = {**BASE, **values}
    return (f"{AGENT}\nruntime_policy:\n  clients: {v['clients']}\n  egress:\n"
            f"    - {{network: {v['network']}, port: {v['port']}, protocol: {v['protocol']}}}\n"
            f"  debug: {v['debug']}\n  logs: {v['logs']}\n")


def text(values: dict[str, str]) -> str:
    t = recipe_text(policy(values))
    # the probe recipe's initrd has no modules line: give the compression after busybox
    return t.replace("    debian: busybox-static\n    suite: bookworm\n\nrootfs:",
                     "    debian: busybox-static\n    suite: bookworm\n  compression: none\n\nrootfs:", 1)


def write_variant(directory: Path, values: dict[str, str], lock: Path | None) -> Path:
    directory.mkdir(parents=True)
    shutil.copy(PROBE / "probe.sh", directory / "probe.sh")
    path = directory / "egress-probe.yaml"
    path.write_text(text(values), encoding="utf-8")
    if lock is None:
        write_lock(path.with_suffix(".lock"), lock_recipe(load_recipe(path), archive(), fetch_url).lock)
    else:                                   # the same inputs: the base's pins
        shutil.copy(lock, path.with_suffix(".lock"))
    return path


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """name -> bundle: 'base' built by `blindbox build`, the others by the pipeline, all once per run."""

    def make(target: Path) -> None:
        base = write_variant(target / "base" / "recipe", {}, None)
        rc = main(["build", str(base), "--out", str(target / "base" / "bundle"), *STALE])
        assert rc == 0
        for name, values in VARIANTS.items():
            recipe = write_variant(target / name / "recipe", values, base.with_suffix(".lock"))
            build(BuildRequest(recipe=recipe, out=target / name / "bundle", allow_stale=ALLOW_STALE))

    target = once(tmp_path_factory, "runtime-policy-variants", make)
    return {name: target / name / "bundle" for name in ("base", *VARIANTS)}


def manifest(bundle: Path) -> Manifest:
    return Manifest.from_dict(json.loads((bundle / "manifest.json").read_text()))


def test_the_manifest_carries_the_policy_the_cmdline_commits_to_and_rederive_passes(variants, capsys):
    bundle = variants["base"]
    m = manifest(bundle)
    rec = m.runtime_policy
    assert rec is not None and rec["policy"]["clients"] == [KEY_A] and rec["policy"]["debug"] is False
    assert rec["policy"]["egress"] == [{"network": "10.0.2.101/32", "port": 5001, "protocol": "tcp"}]
    words = m.cmdline.split(" ")
    assert words.count(f"{CMDLINE_PARAM}={rec['sha256']}") == 1
    # after the attester parameter, before the verity table
    assert words.index("blindbox.attester=simulated:10.0.2.100:4050") < words.index(
        f"{CMDLINE_PARAM}={rec['sha256']}") < m.cmdline.split(" ").index(
        next(w for w in words if w.startswith('blindbox.root="')))
    capsys.readouterr()
    rc = main(["rederive", str(bundle), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and json.loads(out)["ok"], out + err


def test_sev_snp_measure_agrees_with_the_runtime_policy_build(variants):
    from tests.measure import oracle

    bundle = variants["base"]
    m = manifest(bundle)
    for entry in (m.measurements[0], m.measurements[-1]):
        expected = oracle.oracle_digest("snp", ovmf=bundle / m.firmware["file"], vcpus=entry.vcpus,
                                        vcpu_sig=entry.vcpu_sig, kernel=bundle / "bzImage", initrd=bundle / "initrd",
                                        append=(bundle / "cmdline").read_text(), guest_features=entry.guest_features)
        assert expected.hex() == entry.measurement


@pytest.mark.parametrize("name", list(VARIANTS))
def test_changing_any_value_changes_every_launch_digest(variants, name):
    base, other = manifest(variants["base"]), manifest(variants[name])
    assert other.runtime_policy["sha256"] != base.runtime_policy["sha256"]
    assert [m.shape for m in other.measurements] == [m.shape for m in base.measurements]
    assert len(base.measurements) == 4
    for a, b in zip(base.measurements, other.measurements, strict=True):
        assert a.measurement != b.measurement, (name, a.shape)
    # the policy is the only difference: same kernel, same root contents (the verity salt and UUIDs are
    # derived from the recipe's digest, so the table changes with any edit of the recipe)
    assert other.kernel_hashes["kernel"] == base.kernel_hashes["kernel"]
    assert other.rootfs["image"]["tree_sha256"] == base.rootfs["image"]["tree_sha256"]
    cut = [(m.cmdline.split(' blindbox.root="')[0]).split(" ") for m in (base, other)]
    changed = [(a, b) for a, b in zip(*cut, strict=True) if a != b]
    assert changed == [(f"{CMDLINE_PARAM}={base.runtime_policy['sha256']}",
                        f"{CMDLINE_PARAM}={other.runtime_policy['sha256']}")]


@pytest.mark.parametrize("user, says", [
    ('  user: "0:0"\n', 'rootfs.user \'0:0\' runs the application as root'),
    ("", "the image's default user is root, so the application runs as root"),
])
def test_an_application_running_as_root_is_refused(variants, tmp_path, capsys, user, says):
    recipe = write_variant(tmp_path / "recipe", {}, variants["base"].parent / "recipe" / "egress-probe.lock")
    recipe.write_text(recipe.read_text().replace('  user: "65534:65534"\n', user))
    rc = main(["build", str(recipe), "--out", str(tmp_path / "out"), *STALE])
    _, err = capsys.readouterr()
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    line = 32 if user else 23
    assert f"{recipe}:{line}: " in err and says in err, err
    assert "set rootfs.user to a non-root uid:gid" in err, err
    assert not (tmp_path / "out").exists()
