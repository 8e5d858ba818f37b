"""No command overwrites its own inputs; outputs are written atomically, all or none."""

from __future__ import annotations

import os
import socket

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from blindbox.cli import main
from blindbox.files import OutputError, refuse_inputs, same_file, write_all_atomic, write_atomic
from tests.conftest import VECTORS

SSM_KEYS = VECTORS / "sev-snp-measure" / "keyfile"
AMDSEV = VECTORS / "virtee-sev" / "measurement" / "ovmf_AmdSev_suffix.bin"


def cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


@pytest.fixture
def signing(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(b'{"measurements": []}\n')
    key = tmp_path / "key.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return manifest, key


def _snapshot(*paths):
    return {p: p.read_bytes() for p in paths}


@pytest.mark.parametrize("target", ["manifest", "key", "symlink-to-manifest", "hardlink-to-key"])
def test_sign_manifest_refuses_to_overwrite_an_input(target, signing, tmp_path, capsys):
    manifest, key = signing
    before = _snapshot(manifest, key)
    output = {"manifest": manifest, "key": key}.get(target)
    if target == "symlink-to-manifest":
        output = tmp_path / "sig"
        output.symlink_to(manifest)
    elif target == "hardlink-to-key":
        output = tmp_path / "sig"
        os.link(key, output)
    rc, out, err = cli(["sign-manifest", manifest, "--key", key, "--output", output], capsys)
    what = "manifest" if "manifest" in target else "signing key"
    assert rc == 2 and f"--output '{output}' is the {what} " in err, err
    assert "choose another output path" in err
    assert _snapshot(manifest, key) == before


def test_sign_manifest_writes_atomically_and_leaves_no_temp(signing, capsys):
    manifest, key = signing
    rc, out, err = cli(["sign-manifest", manifest, "--key", key], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["key.pem", "manifest.json", "manifest.json.sig"]
    public = manifest.parent / "key.pub"
    public.write_bytes(serialization.load_pem_private_key(key.read_bytes(), None).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    rc, out, err = cli(["verify-manifest", manifest, "--key", public], capsys)
    assert rc == 0 and out.startswith("OK: "), err


def test_id_block_refuses_an_output_that_is_its_key(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    key = out / "id_block.bin"
    key.write_bytes((SSM_KEYS / "id_key_test.pem").read_bytes())
    rc, _, err = cli(["id-block", "00" * 48, "--id-key", key, "--out-dir", out], capsys)
    assert rc == 2 and f"--out-dir '{key}' is the ID key '{key}'" in err, err
    assert key.read_bytes() == (SSM_KEYS / "id_key_test.pem").read_bytes()


def test_id_block_out_dir_is_all_or_nothing_and_names_the_file(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "id_auth.bin").mkdir(parents=True)
    rc, _, err = cli(["id-block", "00" * 48, "--id-key", SSM_KEYS / "id_key_test.pem", "--out-dir", out], capsys)
    assert rc == 2 and f"cannot write the ID block file '{out / 'id_auth.bin'}': it is a directory" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["id_auth.bin"]      # no id_block.bin, no temp files


def test_dump_vmsa_refuses_to_overwrite_the_firmware(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vmsa1.bin").write_bytes(AMDSEV.read_bytes())
    rc, _, err = cli(["measure", "--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-v4", "--ovmf", "vmsa1.bin",
                      "--dump-vmsa"], capsys)
    assert rc == 2 and "--dump-vmsa 'vmsa1.bin' is the input file of --ovmf 'vmsa1.bin'" in err, err
    assert (tmp_path / "vmsa1.bin").read_bytes() == AMDSEV.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["vmsa1.bin"]


def test_same_file_sees_symlinks_and_hard_links(tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"x")
    (tmp_path / "sym").symlink_to(a)
    os.link(a, tmp_path / "hard")
    (tmp_path / "b").write_bytes(b"x")
    assert same_file(a, tmp_path / "sym") and same_file(a, tmp_path / "hard")
    assert not same_file(a, tmp_path / "b") and not same_file(a, tmp_path / "missing")
    with pytest.raises(OutputError, match="is the key"):
        refuse_inputs(tmp_path / "hard", [("manifest", tmp_path / "b"), ("key", a)], "--output")
    refuse_inputs(tmp_path / "new", [("manifest", a), ("key", None)], "--output")


def test_write_all_atomic_restores_earlier_files_when_a_later_replace_fails(tmp_path, monkeypatch):
    first, second = tmp_path / "one", tmp_path / "two"
    first.write_bytes(b"old one")
    second.write_bytes(b"old two")
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if str(dst) == str(second):
            raise PermissionError(13, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError, match=f"cannot write the output file '{second}': Permission denied"):
        write_all_atomic([(first, b"new one"), (second, b"new two")])
    monkeypatch.setattr(os, "replace", real_replace)
    assert (first.read_bytes(), second.read_bytes()) == (b"old one", b"old two")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


def test_write_atomic_replaces_a_symlink_not_its_target(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    link = tmp_path / "link"
    link.symlink_to(target)
    write_atomic(link, b"new", mode=0o600)
    assert target.read_bytes() == b"keep" and link.read_bytes() == b"new" and not link.is_symlink()
    assert link.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("kind", ["fifo", "socket", "symlink-loop"])
def test_an_output_that_is_a_fifo_device_or_link_loop_is_refused_and_left_alone(kind, signing, tmp_path, capsys):
    manifest, key = signing
    output = tmp_path / "sig"
    if kind == "fifo":
        os.mkfifo(output)
        reason = "it is a device, FIFO or socket, not a regular file"
    elif kind == "socket":               # stands in for a device such as /dev/null, which root could replace
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(output))
        sock.close()
        reason = "it is a device, FIFO or socket, not a regular file"
    else:
        output.symlink_to(output)
        reason = "Too many levels of symbolic links"
    before = os.lstat(output)
    rc, out, err = cli(["sign-manifest", manifest, "--key", key, "--output", output], capsys)
    assert rc == 2 and f"cannot write the signature file '{output}': {reason}; check the path" in err, err
    after = os.lstat(output)
    assert (after.st_ino, after.st_mode, after.st_rdev) == (before.st_ino, before.st_mode, before.st_rdev)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem", "manifest.json", "sig"]


def test_id_block_out_dir_refuses_a_fifo_in_place_of_an_output(tmp_path, capsys):
    key = tmp_path / "id.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    os.mkfifo(out_dir / "id_auth.bin")
    rc, out, err = cli(["id-block", "ab" * 48, "--id-key", key, "--out-dir", out_dir], capsys)
    assert rc == 2 and f"'{out_dir / 'id_auth.bin'}': it is a device, FIFO or socket" in err, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["id_auth.bin"]   # and no id_block.bin
