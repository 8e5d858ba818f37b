"""ID_BLOCK / ID_AUTH_INFO: virtee/sev's vector, sev-snp-measure's bytes, RFC 6979 nonces."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from measure.errors import InputError, LayoutError
from blindbox.audit.errors import SignatureInvalid
from blindbox.audit.idblock import (DEFAULT_POLICY, EcdsaPublicKey, IdAuthInfo, IdBlock, assemble_id_auth,
                                    create_id_block, key_digest, load_private_key, make_id_auth, sign, verify_id_auth)
from blindbox.audit.report import EcdsaSignature
from tests.conftest import VECTORS

VIRTEE = VECTORS / "virtee-sev"
SSM_KEYS = VECTORS / "sev-snp-measure" / "keyfile"


def virtee_case():
    return json.loads((VIRTEE / "expected.json").read_text())["id_block_cases"][0]


def keys(base, id_name, author_name):
    return load_private_key(base / id_name, "ID key"), load_private_key(base / author_name, "author key")


def test_layouts():
    assert (IdBlock.SIZE, IdAuthInfo.SIZE, EcdsaPublicKey.SIZE) == (0x60, 0x1000, 0x404)
    assert [IdAuthInfo.offset_of(n) for n in ("id_block_sig", "id_pubkey", "id_key_sig", "author_pubkey")] \
        == [0x40, 0x240, 0x680, 0x880]
    assert IdBlock().version == 1


def test_virtee_id_block_and_key_digests():
    case = virtee_case()
    id_key, author_key = keys(VIRTEE / "measurement", "test_id_key.pem", "test_auth_key.pem")
    result = create_id_block(bytes.fromhex(case["launch_digest"]), id_key, author_key)
    assert base64.b64encode(result.id_block_bytes).decode() == case["expected_id_block_b64"]
    assert base64.b64encode(result.id_key_digest).decode() == case["expected_id_key_digest_b64"]
    assert base64.b64encode(result.author_key_digest).decode() == case["expected_author_key_digest_b64"]
    verify_id_auth(result.id_block_bytes, result.id_auth_bytes)


def test_virtee_auth_block_exactly_from_its_premade_signatures():
    case = virtee_case()
    id_key, author_key = keys(VIRTEE / "measurement", "test_id_key.pem", "test_auth_key.pem")
    id_sig = EcdsaSignature.from_bytes((VIRTEE / "measurement/test_id_sig.bin").read_bytes())
    auth_sig = EcdsaSignature.from_bytes((VIRTEE / "measurement/test_auth_sig.bin").read_bytes())
    auth = assemble_id_auth(id_key.public_key(), author_key.public_key(), id_sig, auth_sig)
    expected = (VIRTEE / "measurement/test_auth_block.bin").read_bytes()
    assert auth.to_bytes() == expected
    # The pre-made signatures really sign that ID block and that ID key: the formats agree.
    block = create_id_block(bytes.fromhex(case["launch_digest"]), id_key, author_key).id_block_bytes
    assert IdAuthInfo.from_bytes(expected).to_bytes() == expected
    verify_id_auth(block, expected)


def _oracle(digest: bytes):
    from sevsnpmeasure import id_block as oracle  # test-only oracle; the product never imports it
    text = oracle.snp_calc_id_block(digest, str(SSM_KEYS / "id_key_test.pem"),
                                    str(SSM_KEYS / "author_key_test.pem"))
    first, id_hash, author_hash = text.splitlines()
    fields = dict(item.split("=", 1) for item in first.split(","))
    return (base64.b64decode(fields["id-block"]), base64.b64decode(fields["id-auth"]),
            base64.b64decode(id_hash.split(": ")[1]), base64.b64decode(author_hash.split(": ")[1]))


@pytest.mark.parametrize("digest", [bytes(48), bytes(range(48)), bytes.fromhex(virtee_case()["launch_digest"])])
def test_sev_snp_measure_defaults_reproduced_byte_for_byte(digest):
    o_block, o_auth, o_id_hash, o_author_hash = _oracle(digest)
    id_key, author_key = keys(SSM_KEYS, "id_key_test.pem", "author_key_test.pem")
    ours = create_id_block(digest, id_key, author_key)  # our defaults are the oracle's fixed values
    assert ours.id_block_bytes == o_block
    assert (ours.id_key_digest, ours.author_key_digest) == (o_id_hash, o_author_hash)
    # The oracle's ECDSA nonces are random: take its two signatures, and every other byte agrees.
    theirs = IdAuthInfo.from_bytes(o_auth)
    rebuilt = assemble_id_auth(id_key.public_key(), author_key.public_key(), theirs.id_block_sig,
                               theirs.id_key_sig)
    assert rebuilt.to_bytes() == o_auth
    verify_id_auth(o_block, o_auth)
    assert len(ours.id_auth_bytes) == len(o_auth) == 4096


def test_signatures_are_deterministic_and_inputs_matter():
    id_key, author_key = keys(SSM_KEYS, "id_key_test.pem", "author_key_test.pem")
    a = make_id_auth(b"\x01" * 48, id_key, author_key, family_id=b"\x02" * 16, image_id=b"\x03" * 16,
                     guest_svn=5, policy=0x30001)
    b = make_id_auth(b"\x01" * 48, SSM_KEYS / "id_key_test.pem", str(SSM_KEYS / "author_key_test.pem"),
                     family_id=b"\x02" * 16, image_id=b"\x03" * 16, guest_svn=5, policy=0x30001)
    assert a == b
    verify_id_auth(*a)
    block = IdBlock.from_bytes(a[0])
    assert (block.family_id, block.image_id, block.guest_svn, block.policy, block.version) == \
        (b"\x02" * 16, b"\x03" * 16, 5, 0x30001, 1)
    c = make_id_auth(b"\x01" * 48, id_key, author_key, guest_svn=6)
    assert c[1] != a[1] and c[0] != a[0]


def test_without_author_key():
    id_key, _ = keys(SSM_KEYS, "id_key_test.pem", "author_key_test.pem")
    result = create_id_block(bytes(48), id_key, None)
    auth = result.id_auth
    assert (auth.id_key_algo, auth.auth_key_algo) == (1, 0)
    assert auth.author_pubkey == EcdsaPublicKey() and auth.id_key_sig == EcdsaSignature()
    assert result.author_key_digest is None and result.id_key_digest == key_digest(id_key)
    verify_id_auth(result.id_block_bytes, result.id_auth_bytes)


def test_rfc6979_p384_sha384_vectors():
    """RFC 6979 appendix A.2.6: the nonces are the RFC's, so the signatures are its (r, s)."""
    key = ec.derive_private_key(int(
        "6B9D3DAD2E1B8C1C05B19875B6659F4DE23C3B667BF297BA9AA47740787137D896D5724E4C70A825F872C9EA60D2EDF5",
        16), ec.SECP384R1())
    expected = {
        b"sample": ("94EDBB92A5ECB8AAD4736E56C691916B3F88140666CE9FA73D64C4EA95AD133C81A648152E44ACF96E36DD1E80FABE46",
                    "99EF4AEB15F178CEA1FE40DB2603138F130E740A19624526203B6351D0A3A94FA329C145786E679E7B82C71A38628AC8"),
        b"test": ("8203B63D3C853E8D77227FB377BCF7B7B772E97892A80F36AB775D509D7A5FEB0542A7F0812998DA8F1DD3CA3CF023DB",
                  "DDD0760448D42D8A43AF45AF836FCE4DE8BE06B485E9B61B827C2F13173923E06A739F040649A667BF3B828246BAA5A5"),
    }
    for message, (r, s) in expected.items():
        sig = sign(key, message)
        assert (sig.r_int, sig.s_int) == (int(r, 16), int(s, 16))


def test_tampering_is_detected():
    id_key, author_key = keys(SSM_KEYS, "id_key_test.pem", "author_key_test.pem")
    block, auth = make_id_auth(bytes(48), id_key, author_key)
    changed = bytearray(block)
    changed[0] ^= 1
    with pytest.raises(SignatureInvalid, match="ID block signature"):
        verify_id_auth(bytes(changed), auth)
    swapped = IdAuthInfo.from_bytes(auth)
    other = make_id_auth(bytes(48), author_key, id_key)[1]
    mixed = IdAuthInfo(id_key_algo=1, auth_key_algo=1, id_block_sig=swapped.id_block_sig,
                       id_pubkey=swapped.id_pubkey, id_key_sig=IdAuthInfo.from_bytes(other).id_key_sig,
                       author_pubkey=swapped.author_pubkey)
    with pytest.raises(SignatureInvalid, match="ID key signature"):
        verify_id_auth(block, mixed.to_bytes())
    reserved = bytearray(auth)
    reserved[0x10] = 1
    with pytest.raises(LayoutError, match="0x10"):
        verify_id_auth(block, bytes(reserved))


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate(),
                                 rsa.generate_private_key(public_exponent=65537, key_size=1024)],
                         ids=["p256", "ed25519", "rsa"])
def test_only_p384_keys(key):
    with pytest.raises(InputError, match="P-384"):
        create_id_block(bytes(48), key, None)


def test_bad_parameters():
    id_key, _ = keys(SSM_KEYS, "id_key_test.pem", "author_key_test.pem")
    for kwargs, match in [(dict(launch_digest=bytes(47)), "48 bytes"),
                          (dict(family_id=bytes(15)), "family ID must be 16"),
                          (dict(image_id=bytes(17)), "image ID must be 16"),
                          (dict(policy=0x10000), "bit 17"), (dict(guest_svn=1 << 32), "32 bits")]:
        args = dict(launch_digest=bytes(48), id_key=id_key, author_key=None)
        args.update(kwargs)
        with pytest.raises(InputError, match=match):
            create_id_block(args.pop("launch_digest"), args.pop("id_key"), args.pop("author_key"), **args)
    assert DEFAULT_POLICY == 0x30000


def test_key_files(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        load_private_key(tmp_path / "missing.pem", "ID key")
    (tmp_path / "junk.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(InputError, match="not a private key"):
        load_private_key(tmp_path / "junk.pem", "ID key")
    from cryptography.hazmat.primitives import serialization
    enc = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"))
    (tmp_path / "enc.pem").write_bytes(enc)
    with pytest.raises(InputError, match="encrypted"):
        load_private_key(tmp_path / "enc.pem", "ID key")
