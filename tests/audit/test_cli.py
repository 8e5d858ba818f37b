"""The auditor commands through blindbox.cli.main and as a subprocess: output and exit codes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from blindbox.cli import main
from blindbox.audit.idblock import IdAuthInfo, verify_id_auth
from tests.audit.test_verify import REAL
from tests.conftest import VECTORS

ROOT = Path(__file__).resolve().parents[2]
SSM_KEYS = VECTORS / "sev-snp-measure" / "keyfile"


def cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def real_argv(name):
    rel, certs, at, _, debug = REAL[name]
    argv = ["verify-report", VECTORS / rel, "--at", at]
    for c in certs:
        argv += ["--certs", VECTORS / c]
    return argv + (["--allow-debug"] if debug else [])


@pytest.mark.parametrize("name", REAL)
def test_every_real_report_passes(name, capsys):
    rc, out, err = cli(real_argv(name), capsys)
    assert (rc, err) == (0, "")
    assert out.rstrip().splitlines()[-1].startswith("verdict: PASS")
    for check in ("chain", "signature", "reported_tcb", "policy.debug"):
        assert any(line.split()[:2] == ["PASS", check] for line in out.splitlines())


def test_json_verdict(capsys):
    rc, out, _ = cli([*real_argv("oak-genoa-v5"), "--json"], capsys)
    doc = json.loads(out)
    assert rc == 0 and doc["verdict"] == "pass" and doc["product"] == "Genoa"
    assert doc["product_source"] == "report CPUID" and doc["signing_key"] == "VCEK"
    assert doc["certificates"]["root"]["sha256"].startswith("4c6598d1") and doc["certificates"]["root_is_amd"]
    assert doc["report"]["reported_tcb"]["snp"] == 25 and doc["report"]["version"] == 5
    assert [c["name"] for c in doc["checks"]][:2] == ["chain", "signature"]


def test_failures_exit_3_with_the_reason(capsys, tmp_path):
    rc, out, err = cli(real_argv("go-milan-v2")[:-1], capsys)  # without --allow-debug
    assert rc == 3 and "FAIL  policy.debug" in out and "allows debugging" in err
    rc, out, err = cli([*real_argv("oak-milan-v3"), "--measurement", "00" * 48, "--json"], capsys)
    assert rc == 3 and json.loads(out)["verdict"] == "fail" and "MEASUREMENT" in err
    data = bytearray((VECTORS / REAL["oak-milan-v3"][0]).read_bytes())
    data[0x90] ^= 0x80  # inside MEASUREMENT
    (tmp_path / "r.bin").write_bytes(data)
    argv = real_argv("oak-milan-v3")
    argv[1] = tmp_path / "r.bin"
    rc, out, err = cli(argv, capsys)
    assert rc == 3 and "FAIL  signature" in out and "does not verify" in err


@pytest.mark.parametrize("mutate,extra,match", [
    (lambda d: d[:0x4C] + b"\x01" + d[0x4D:], [], "reserved byte at offset 0x4c"),
    (lambda d: d[:0x1F8] + b"\x01" + d[0x1F9:], [], "reserved byte at offset 0x1f8"),  # v3: reserved
    (lambda d: d[:100], [], "neither a binary"),
    (lambda d: b"\x04" + d[1:], [], "VERSION 4"),
    (lambda d: d, ["--measurement", "abcd"], "--measurement 'abcd' is not 48 bytes"),
    (lambda d: d, ["--host-data", "zz" * 32], "--host-data"),
    (lambda d: d, ["--shape", "x"], "--shape narrows --manifest"),
    (lambda d: d, ["--min-tcb", "bl"], "--min-tcb item"),
    (lambda d: d, ["--at", "yesterday"], "--at 'yesterday' is not an ISO 8601"),
    (lambda d: d, ["--min-tcb", "fmc=1"], "no fmc component"),
])
def test_malformed_input_exits_2_without_traceback(mutate, extra, match, capsys, tmp_path):
    data = (VECTORS / REAL["oak-milan-v3"][0]).read_bytes()
    (tmp_path / "r.bin").write_bytes(mutate(data))
    argv = real_argv("oak-milan-v3")
    argv[1] = tmp_path / "r.bin"
    rc, out, err = cli([*argv, *extra], capsys)
    assert rc == 2, (out, err)
    assert out == "" and err.startswith("blindbox: error: ") and match in err
    assert err.count("\n") == 1


def test_unusable_files_exit_2(capsys, tmp_path):
    report = VECTORS / REAL["oak-milan-v3"][0]
    (tmp_path / "junk.pem").write_text("not a certificate")
    (tmp_path / "m.json").write_text("{}")
    cases = [
        (["verify-report", tmp_path / "missing.bin"], "cannot read"),
        (["verify-report", tmp_path], "is a directory"),
        (["verify-report", report, "--certs", tmp_path / "junk.pem"], "not a valid DER"),
        (["verify-report", report], "no VCEK certificate"),
        (["verify-report", report, "--certs", VECTORS / "oak", "--manifest", tmp_path / "m.json"],
         "not a blindbox manifest"),
        (["verify-report", report, "--no-signature", "--certs", VECTORS / "oak"], "--no-signature"),
    ]
    for argv, match in cases:
        rc, out, err = cli(argv, capsys)
        assert rc == 2 and match in err, (argv, err)


def test_directory_of_certificates_and_no_signature_mode(capsys):
    rc, out, _ = cli(["verify-report", VECTORS / REAL["oak-turin-v5"][0], "--certs", VECTORS / "oak",
                      "--at", "2025-09-01"], capsys)
    assert rc == 0 and "ignored" in out and "8-byte hwID" in out
    rc, out, _ = cli(["verify-report", VECTORS / REAL["go-milan-v2"][0], "--no-signature", "--allow-debug",
                      "--product", "milan"], capsys)
    assert rc == 0 and "skip  signature" in out and "Milan (--product)" in out


def test_no_signature_verdict_is_unauthenticated_never_pass(capsys):
    """Fields only: exit 0 when they pass, but the verdict says nothing proves the report is AMD's."""
    argv = ["verify-report", VECTORS / REAL["go-milan-v2"][0], "--no-signature", "--allow-debug",
            "--product", "milan"]
    measurement = (VECTORS / REAL["go-milan-v2"][0]).read_bytes()[0x90:0xC0].hex()
    rc, out, err = cli([*argv, "--measurement", measurement], capsys)
    assert (rc, err) == (0, "")
    assert "PASS  measurement" in out and "skip  signature" in out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("verdict: UNAUTHENTICATED (") and "PASS" not in last
    assert last.endswith("every requested check passed, but the signature was not checked (--no-signature), "
                         "so nothing proves that this report comes from AMD hardware")
    rc, out, err = cli([*argv, "--measurement", measurement, "--json"], capsys)
    doc = json.loads(out)
    assert (rc, err) == (0, "")
    assert doc["verdict"] == "unauthenticated" and doc["signature_checked"] is False
    # a failing field check still fails, and still says the signature was not checked
    rc, out, err = cli([*argv, "--measurement", "00" * 48], capsys)
    assert rc == 3 and "MEASUREMENT" in err
    assert out.rstrip().splitlines()[-1].startswith("verdict: FAIL (")
    assert out.rstrip().endswith("; the signature was not checked (--no-signature)")
    rc, out, _ = cli([*argv, "--measurement", "00" * 48, "--json"], capsys)
    assert rc == 3 and json.loads(out)["verdict"] == "fail" and json.loads(out)["signature_checked"] is False
    # with the signature checked, the verdict is PASS and says so
    rc, out, _ = cli([*real_argv("oak-genoa-v5"), "--json"], capsys)
    assert rc == 0 and (json.loads(out)["verdict"], json.loads(out)["signature_checked"]) == ("pass", True)


def test_id_block_command(capsys, tmp_path):
    digest = bytes(range(48))
    argv = ["id-block", digest.hex(), "--id-key", SSM_KEYS / "id_key_test.pem",
            "--author-key", SSM_KEYS / "author_key_test.pem", "--out-dir", tmp_path / "out"]
    rc, out, err = cli(argv, capsys)
    assert (rc, err) == (0, "")
    qemu, id_line, author_line = out.splitlines()
    fields = dict(item.split("=", 1) for item in qemu.split(","))
    assert fields["author-key-enabled"] == "on"
    block, auth = base64.b64decode(fields["id-block"]), base64.b64decode(fields["id-auth"])
    assert block == (tmp_path / "out/id_block.bin").read_bytes()
    assert auth == (tmp_path / "out/id_auth.bin").read_bytes()
    verify_id_auth(block, auth)
    # Same bytes again (deterministic), same ID block as snp-create-id-block's spelling gives.
    rc, out2, _ = cli(["id-block", "--measurement", base64.b64encode(digest).decode(), "--idkey",
                       SSM_KEYS / "id_key_test.pem", "--authorkey", SSM_KEYS / "author_key_test.pem"], capsys)
    assert rc == 0 and out2 == out
    from sevsnpmeasure.id_block import snp_calc_id_block  # test-only oracle
    oracle = snp_calc_id_block(digest, str(SSM_KEYS / "id_key_test.pem"), str(SSM_KEYS / "author_key_test.pem"))
    assert oracle.split(",")[0] == qemu.split(",")[0]  # the id-block= option
    assert base64.b64decode(oracle.splitlines()[1].split(": ")[1]).hex() == id_line.split(": ")[1]
    rc, out, _ = cli(["id-block", digest.hex(), "--id-key", SSM_KEYS / "id_key_test.pem", "--json",
                      "--family-id", "11" * 16, "--image-id", "22" * 16, "--guest-svn", "3", "--policy", "0x30001"],
                     capsys)
    doc = json.loads(out)
    assert rc == 0 and doc["author_key_digest"] is None and "author-key-enabled" not in doc["qemu_sev_snp_guest"]
    assert (doc["family_id"], doc["image_id"], doc["guest_svn"], doc["policy"]) == ("11" * 16, "22" * 16, 3, "0x30001")
    assert IdAuthInfo.from_bytes(base64.b64decode(doc["id_auth"])).auth_key_algo == 0


@pytest.mark.parametrize("argv,match", [
    (["id-block", "--id-key", SSM_KEYS / "id_key_test.pem"], "give the launch digest"),
    (["id-block", "00", "--id-key", SSM_KEYS / "id_key_test.pem"], "not 48 bytes"),
    (["id-block", "00" * 48, "--id-key", VECTORS / "oak/genoa_oc_vcek.der"], "not a private key"),
    (["id-block", "00" * 48, "--id-key", SSM_KEYS / "id_key_test.pem", "--policy", "0x10000"], "bit 17"),
    (["id-block", "00" * 48, "--id-key", SSM_KEYS / "id_key_test.pem", "--family-id", "00"], "--family-id"),
])
def test_id_block_bad_input(argv, match, capsys):
    rc, out, err = cli(argv, capsys)
    assert rc == 2 and match in err


@pytest.mark.parametrize("make_key", [lambda: ec.generate_private_key(ec.SECP384R1()),
                                      ed25519.Ed25519PrivateKey.generate], ids=["ecdsa-p384", "ed25519"])
def test_sign_and_verify_manifest_commands(make_key, capsys, tmp_path):
    key = make_key()
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"measurements": []}\n')
    rc, out, _ = cli(["sign-manifest", manifest, "--key", tmp_path / "key.pem", "--json"], capsys)
    doc = json.loads(out)
    assert rc == 0 and Path(doc["signature"]) == tmp_path / "manifest.json.sig"
    rc, out, _ = cli(["verify-manifest", manifest, "--key", tmp_path / "pub.pem"], capsys)
    assert rc == 0 and out.startswith("OK: ") and doc["key_sha256"] in out
    rc, out, _ = cli(["verify-manifest", manifest, "--key", tmp_path / "pub.pem", "--key-sha256",
                      doc["key_sha256"], "--json"], capsys)
    assert rc == 0 and json.loads(out)["verdict"] == "pass"
    rc, _, err = cli(["verify-manifest", manifest, "--key", tmp_path / "pub.pem", "--key-sha256", "00" * 32], capsys)
    assert rc == 3 and "pinned" in err
    manifest.write_text('{"measurements": [] }\n')
    rc, out, err = cli(["verify-manifest", manifest, "--key", tmp_path / "pub.pem", "--json"], capsys)
    assert rc == 3 and json.loads(out)["verdict"] == "fail" and "do not trust" in err
    rc, _, err = cli(["verify-manifest", manifest, "--key", tmp_path / "pub.pem", "--signature",
                      tmp_path / "none.sig"], capsys)
    assert rc == 2 and "cannot read" in err
    rc, _, err = cli(["verify-manifest", manifest, "--key", tmp_path / "key.pem"], capsys)
    assert rc == 2 and "public half" in err


def test_commands_are_registered(capsys):
    rc, out, _ = cli(["--help"], capsys)
    assert rc == 0
    for name in ("verify-report", "id-block", "sign-manifest", "verify-manifest"):
        assert name in out
        rc, out_cmd, _ = cli([name, "--help"], capsys)
        assert rc == 0 and "--json" in out_cmd


def _run(*argv):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("BLINDBOX_DEBUG", None)
    return subprocess.run([sys.executable, "-W", "always", "-m", "blindbox.cli", *map(str, argv)],
                          cwd=ROOT, env=env, capture_output=True, text=True)


def test_subprocess_no_warning_and_no_traceback(tmp_path):
    done = _run(*real_argv("trustee-vlek-v3")[0:], "--json")
    assert done.returncode == 0 and done.stderr == ""  # no CryptographyDeprecationWarning for serial 0
    assert json.loads(done.stdout)["verdict"] == "pass"
    bad = bytearray((VECTORS / REAL["oak-turin-v5"][0]).read_bytes())
    bad[0x3FF] = 7  # reserved part of the signature
    (tmp_path / "bad.bin").write_bytes(bad)
    done = _run("verify-report", tmp_path / "bad.bin", "--certs", VECTORS / "oak/turin_oc_vcek.der")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("blindbox: error: ") and "Traceback" not in done.stderr
    assert "0x3ff" in done.stderr
