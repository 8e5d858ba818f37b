"""Run exactly the openssl commands that the README shows for verifying a manifest."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from blindbox.cli import main
from tests.tools import require

DOC = Path(__file__).resolve().parents[2] / "README.md"


def doc_block(name: str) -> str:
    m = re.search(rf"<!-- test:{re.escape(name)} -->\n```sh\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"README.md has no block marked test:{name}"
    return m.group(1)


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, capture_output=True,
                          text=True)


@pytest.mark.parametrize("algorithm,make_key", [
    ("ecdsa-p384", lambda: ec.generate_private_key(ec.SECP384R1())),
    ("ed25519", ed25519.Ed25519PrivateKey.generate),
])
def test_documented_openssl_commands_verify_blindbox_signatures(algorithm, make_key, tmp_path, capsys):
    require("openssl", "openssl")
    key = make_key()
    (tmp_path / "publisher.key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "publisher.pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{\n  "measurements": [{"shape": "s", "measurement": "' + "0" * 96 + '"}]\n}\n')
    assert main(["sign-manifest", str(manifest), "--key", str(tmp_path / "publisher.key.pem")]) == 0
    printed = capsys.readouterr().out
    fingerprint = re.search(r"sha256:([0-9a-f]{64})", printed).group(1)

    done = sh(doc_block("openssl-fingerprint"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == fingerprint

    verify = doc_block(f"openssl-verify-{algorithm}")
    done = sh(verify, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Verified OK" in done.stdout or "Signature Verified Successfully" in done.stdout

    manifest.write_bytes(manifest.read_bytes().replace(b'"s"', b'"t"'))
    done = sh(verify, tmp_path)
    assert done.returncode != 0
    # And blindbox agrees with openssl.
    assert main(["verify-manifest", str(manifest), "--key", str(tmp_path / "publisher.pub.pem")]) == 3


def test_the_readme_section_shows_every_tested_command():
    text = DOC.read_text()
    start = text.index("### Verifying a published manifest")
    section = text[start:text.index("\n## ", start)]
    for name in ("openssl-fingerprint", "openssl-verify-ecdsa-p384", "openssl-verify-ed25519"):
        assert f"<!-- test:{name} -->" in section
