"""ID_BLOCK and ID_AUTH_INFO for SNP_LAUNCH_FINISH, signed with P-384 ID and author keys.

Facts from the SEV-SNP Firmware ABI specification (SNP_LAUNCH_FINISH, ID_BLOCK,
ID_AUTH_INFO, ECDSA public key and signature formats):

* ID_BLOCK (0x60 bytes): the expected launch digest, FAMILY_ID, IMAGE_ID, VERSION (1),
  GUEST_SVN and the guest POLICY;
* ID_AUTH_INFO (0x1000 bytes): the algorithms (1 = ECDSA P-384 with SHA-384), the ID
  block signed by the ID key, the ID public key, the ID public key signed by the author
  key, and the author public key;
* a public key is CURVE (2 = P-384) then QX and QY as 72-byte little-endian fields;
  the report's ID_KEY_DIGEST / AUTHOR_KEY_DIGEST are SHA-384 over that 0x404-byte form.

Signatures this module makes are deterministic (RFC 6979, through cryptography's
``ECDSA(..., deterministic_signing=True)``, which needs cryptography >= 44 built with
OpenSSL >= 3.2), so a rebuilt bundle carries a byte-identical ID_AUTH_INFO.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from measure import layout
from measure.record import record
from measure.errors import InputError
from .errors import SignatureInvalid
from .keys import read_private_key
from .report import EcdsaSignature
from measure.spec import guest_policy_problem

ALGO_ECDSA_P384_SHA384 = 1
CURVE_P384 = 2
ID_BLOCK_VERSION = 1
#: sev-snp-measure's snp-create-id-block fixes these; they are our defaults too.
DEFAULT_POLICY = 0x30000
DEFAULT_GUEST_SVN = 0


@layout.struct(size=0x404, spec="SEV-SNP Firmware ABI, ECDSA public key format")
@record
class EcdsaPublicKey(layout.Struct):
    """QX and QY fill 48 bytes of their 72-byte fields; the rest is zero."""

    curve: int = layout.u32(0x000)
    qx: bytes = layout.raw(0x004, 48)
    qy: bytes = layout.raw(0x04C, 48)


@layout.struct(size=0x60, spec="SEV-SNP Firmware ABI, ID_BLOCK")
@record
class IdBlock(layout.Struct):
    ld: bytes = layout.raw(0x00, 48)
    family_id: bytes = layout.raw(0x30, 16)
    image_id: bytes = layout.raw(0x40, 16)
    version: int = layout.u32(0x50, default=ID_BLOCK_VERSION)
    guest_svn: int = layout.u32(0x54)
    policy: int = layout.u64(0x58)


@layout.struct(size=0x1000, spec="SEV-SNP Firmware ABI, ID_AUTH_INFO")
@record
class IdAuthInfo(layout.Struct):
    id_key_algo: int = layout.u32(0x000)
    auth_key_algo: int = layout.u32(0x004)
    id_block_sig: EcdsaSignature = layout.nested(0x040, EcdsaSignature)
    id_pubkey: EcdsaPublicKey = layout.nested(0x240, EcdsaPublicKey)
    id_key_sig: EcdsaSignature = layout.nested(0x680, EcdsaSignature)
    author_pubkey: EcdsaPublicKey = layout.nested(0x880, EcdsaPublicKey)


def _require_p384(key: object, what: str) -> None:
    curve = getattr(key, "curve", None)
    if not isinstance(curve, ec.SECP384R1):
        raise InputError(f"the {what} is not an ECDSA P-384 key; SEV-SNP ID blocks need P-384 "
                         f"(create one with: openssl ecparam -name secp384r1 -genkey -noout -out key.pem).")


def public_key_struct(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey,
                      what: str = "key") -> EcdsaPublicKey:
    """The AMD 0x404-byte form of a P-384 public key."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    _require_p384(key, what)
    nums = key.public_numbers()
    return EcdsaPublicKey(curve=CURVE_P384, qx=nums.x.to_bytes(48, "little"),
                          qy=nums.y.to_bytes(48, "little"))


def key_digest(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> bytes:
    """SHA-384 of the AMD public-key form: the report's ID_KEY_DIGEST / AUTHOR_KEY_DIGEST."""
    return hashlib.sha384(public_key_struct(key).to_bytes()).digest()


def deterministic_ecdsa() -> ec.ECDSA:
    """ECDSA with SHA-384 and RFC 6979 nonces; a clear error where the library lacks it."""
    try:
        return ec.ECDSA(hashes.SHA384(), deterministic_signing=True)
    except TypeError:
        raise InputError("deterministic ECDSA needs cryptography >= 44; upgrade it "
                         "(pip install 'cryptography>=44').") from None


def sign(private_key: ec.EllipticCurvePrivateKey, data: bytes, what: str = "key") -> EcdsaSignature:
    """Deterministic ECDSA P-384 / SHA-384 signature of ``data`` in AMD's format."""
    _require_p384(private_key, what)
    try:
        der = private_key.sign(data, deterministic_ecdsa())
    except UnsupportedAlgorithm:
        raise InputError("deterministic ECDSA needs cryptography built with OpenSSL >= 3.2; install "
                         "the PyPI wheel of cryptography >= 44.") from None
    return EcdsaSignature.from_der(der)


def verify(public_key: ec.EllipticCurvePublicKey, signature: EcdsaSignature, data: bytes) -> bool:
    try:
        public_key.verify(signature.to_der(), data, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


def _bytes16(value: bytes | None, name: str) -> bytes:
    value = bytes(16) if value is None else bytes(value)
    if len(value) != 16:
        raise InputError(f"{name} must be 16 bytes (32 hex digits), got {len(value)}.")
    return value


def id_block(launch_digest: bytes, *, family_id: bytes | None = None, image_id: bytes | None = None,
             guest_svn: int = DEFAULT_GUEST_SVN, policy: int = DEFAULT_POLICY) -> IdBlock:
    if len(launch_digest) != 48:
        raise InputError(f"the launch digest must be 48 bytes (96 hex digits), got {len(launch_digest)}.")
    if not 0 <= guest_svn <= 0xFFFFFFFF:
        raise InputError(f"guest SVN {guest_svn} does not fit in 32 bits.")
    problem = guest_policy_problem(policy)
    if problem is not None:
        raise InputError(f"guest policy {policy:#x} is not a valid GUEST_POLICY: {problem}; e.g. 0x30000.")
    return IdBlock(ld=bytes(launch_digest), family_id=_bytes16(family_id, "family ID"),
                   image_id=_bytes16(image_id, "image ID"), guest_svn=guest_svn, policy=policy)


def assemble_id_auth(id_pub: ec.EllipticCurvePublicKey, author_pub: ec.EllipticCurvePublicKey | None,
                     id_block_sig: EcdsaSignature,
                     id_key_sig: EcdsaSignature | None) -> IdAuthInfo:
    """ID_AUTH_INFO from public keys and signatures made elsewhere (e.g. by an HSM)."""
    return IdAuthInfo(
        id_key_algo=ALGO_ECDSA_P384_SHA384,
        auth_key_algo=ALGO_ECDSA_P384_SHA384 if author_pub is not None else 0,
        id_block_sig=id_block_sig,
        id_pubkey=public_key_struct(id_pub, "ID key"),
        id_key_sig=id_key_sig if id_key_sig is not None else EcdsaSignature(),
        author_pubkey=public_key_struct(author_pub, "author key") if author_pub is not None
        else EcdsaPublicKey())


@dataclass(frozen=True)
class IdBlockResult:
    id_block: IdBlock
    id_auth: IdAuthInfo
    id_key_digest: bytes
    author_key_digest: bytes | None

    @property
    def id_block_bytes(self) -> bytes:
        return self.id_block.to_bytes()

    @property
    def id_auth_bytes(self) -> bytes:
        return self.id_auth.to_bytes()


def create_id_block(launch_digest: bytes, id_key: ec.EllipticCurvePrivateKey,
                    author_key: ec.EllipticCurvePrivateKey | None, *, family_id: bytes | None = None,
                    image_id: bytes | None = None, guest_svn: int = DEFAULT_GUEST_SVN,
                    policy: int = DEFAULT_POLICY) -> IdBlockResult:
    """Build and sign an ID block (deterministically); ``author_key`` may be None."""
    _require_p384(id_key, "ID key")
    block = id_block(launch_digest, family_id=family_id, image_id=image_id, guest_svn=guest_svn,
                     policy=policy)
    id_pub_bytes = public_key_struct(id_key, "ID key").to_bytes()
    block_sig = sign(id_key, block.to_bytes(), "ID key")
    key_sig = sign(author_key, id_pub_bytes, "author key") if author_key is not None else None
    auth = assemble_id_auth(id_key.public_key(), None if author_key is None else author_key.public_key(),
                            block_sig, key_sig)
    return IdBlockResult(block, auth, key_digest(id_key),
                         None if author_key is None else key_digest(author_key))


def make_id_auth(launch_digest: bytes, id_key: ec.EllipticCurvePrivateKey | str | Path,
                 author_key: ec.EllipticCurvePrivateKey | str | Path | None, *, family_id: bytes | None = None,
                 image_id: bytes | None = None, guest_svn: int = DEFAULT_GUEST_SVN,
                 policy: int = DEFAULT_POLICY) -> tuple[bytes, bytes]:
    """(ID_BLOCK bytes, ID_AUTH_INFO bytes) for the builder; keys may be objects or PEM paths."""
    id_key = load_private_key(id_key, "ID key") if not isinstance(id_key, ec.EllipticCurvePrivateKey) \
        else id_key
    if author_key is not None and not isinstance(author_key, ec.EllipticCurvePrivateKey):
        author_key = load_private_key(author_key, "author key")
    result = create_id_block(launch_digest, id_key, author_key, family_id=family_id, image_id=image_id,
                             guest_svn=guest_svn, policy=policy)
    return result.id_block_bytes, result.id_auth_bytes


def verify_id_auth(block_bytes: bytes, auth_bytes: bytes) -> IdAuthInfo:
    """Check both signatures of an ID block / ID auth pair; raise SignatureInvalid if not."""
    block = IdBlock.from_bytes(block_bytes, what="ID block")
    auth = IdAuthInfo.from_bytes(auth_bytes, what="ID auth")

    def load(pk: EcdsaPublicKey, what: str) -> ec.EllipticCurvePublicKey:
        if pk.curve != CURVE_P384:
            raise InputError(f"the {what} in the ID auth block has curve {pk.curve}, not 2 (P-384).")
        try:
            return ec.EllipticCurvePublicNumbers(int.from_bytes(pk.qx, "little"),
                                                 int.from_bytes(pk.qy, "little"),
                                                 ec.SECP384R1()).public_key()
        except ValueError:
            raise InputError(f"the {what} in the ID auth block is not a point on P-384.") from None

    id_pub = load(auth.id_pubkey, "ID key")
    if not verify(id_pub, auth.id_block_sig, block.to_bytes()):
        raise SignatureInvalid("the ID block signature does not verify with the ID key in the ID auth "
                               "block; regenerate both with the same ID key.")
    if auth.auth_key_algo:
        author_pub = load(auth.author_pubkey, "author key")
        if not verify(author_pub, auth.id_key_sig, auth.id_pubkey.to_bytes()):
            raise SignatureInvalid("the ID key signature does not verify with the author key in the "
                                   "ID auth block; regenerate it with the same author key.")
    return auth


def load_private_key(path: str | Path, what: str) -> ec.EllipticCurvePrivateKey:
    """A P-384 private key from an unencrypted PEM (or DER) file."""
    key = read_private_key(path, what)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputError(f"the {what} {str(path)!r} is not an ECDSA key; SEV-SNP needs P-384.")
    _require_p384(key, f"{what} {str(path)!r}")
    return key
