"""SEV-SNP ID block and ID authentication information, passed at SNP_LAUNCH_FINISH.

SEV-SNP ABI spec, "ID_BLOCK" (96 bytes): LD (48) | FAMILY_ID (16) | IMAGE_ID (16) | u32 VERSION (1)
| u32 GUEST_SVN | u64 POLICY. "ID_AUTH_INFO" (4096 bytes): u32 ID_KEY_ALGO @0, u32 AUTH_KEY_ALGO @4,
ID_BLOCK_SIG @0x40, ID_KEY @0x240, ID_KEY_SIG @0x680 (author key over the ID key structure),
AUTHOR_KEY @0x880. Algorithm 1 is ECDSA P-384 with SHA-384. "ECDSA signature" format: R then S,
72 bytes little-endian each, in 512 bytes; "ECDSA public key" format: u32 CURVE (2 = P-384),
QX, QY (72 bytes little-endian each), in 0x404 bytes. The report carries SHA-384 of the ID key
and author key structures (ID_KEY_DIGEST, AUTHOR_KEY_DIGEST).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from builder.errors import CCBuildError, CheckFailed
from builder.keys import load_ec_private_key
from builder.formats.snp_policy import KATA_DEFAULT_POLICY, GuestPolicy

ID_BLOCK_SIZE = 0x60
ID_BLOCK_VERSION = 1
ID_AUTH_SIZE = 0x1000
SIG_ALGO_ECDSA_P384_SHA384 = 1
ECDSA_CURVE_P384 = 2
ECDSA_COMPONENT_SIZE = 72
ECDSA_SIG_SIZE = 0x200
ECDSA_PUBKEY_SIZE = 0x404

OFF_ID_KEY_ALGO = 0x000
OFF_AUTH_KEY_ALGO = 0x004
OFF_ID_BLOCK_SIG = 0x040
OFF_ID_KEY = 0x240
OFF_ID_KEY_SIG = 0x680
OFF_AUTHOR_KEY = 0x880

_ID_BLOCK = struct.Struct("<48s16s16sIIQ")


@dataclass(frozen=True)
class IdBlockParams:
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    guest_svn: int = 0
    policy: int = KATA_DEFAULT_POLICY


@dataclass(frozen=True)
class IdBlockResult:
    id_block: bytes
    id_auth: bytes
    id_key_digest: bytes
    author_key_digest: bytes

    def qemu_options(self) -> str:
        """The sev-snp-guest object options that carry both structures."""
        return (f"id-block={base64.b64encode(self.id_block).decode()},"
                f"id-auth={base64.b64encode(self.id_auth).decode()}")


def id_block(ld: bytes, p: IdBlockParams) -> bytes:
    if len(ld) != 48:
        raise CCBuildError(f"launch digest has {len(ld)} bytes, expected 48")
    for name in ("family_id", "image_id"):
        if len(getattr(p, name)) != 16:
            raise CCBuildError(f"{name} has {len(getattr(p, name))} bytes, expected 16")
    if not 0 <= p.guest_svn < 1 << 32:
        raise CCBuildError(f"guest SVN {p.guest_svn} does not fit 32 bits")
    GuestPolicy.decode(p.policy)  # refuses reserved bits
    return _ID_BLOCK.pack(ld, p.family_id, p.image_id, ID_BLOCK_VERSION, p.guest_svn, p.policy)


def load_private_key(pem: bytes, what: str = "key") -> ec.EllipticCurvePrivateKey:
    """An unencrypted PEM ECDSA P-384 private key (errors name ``what`` and what was expected)."""
    return load_ec_private_key(pem, what, ("secp384r1",),
                               "openssl ecparam -name secp384r1 -genkey -noout")


def _public(key) -> ec.EllipticCurvePublicKey:
    return key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key


def public_key_bytes(key) -> bytes:
    """The 0x404-byte ECDSA public key structure of a P-384 key (private or public)."""
    n = _public(key).public_numbers()
    out = struct.pack("<I", ECDSA_CURVE_P384) + n.x.to_bytes(ECDSA_COMPONENT_SIZE, "little") \
        + n.y.to_bytes(ECDSA_COMPONENT_SIZE, "little")
    return out + bytes(ECDSA_PUBKEY_SIZE - len(out))


def key_digest(key) -> bytes:
    """SHA-384 of the public key structure, as the report's ID_KEY_DIGEST / AUTHOR_KEY_DIGEST."""
    return hashlib.sha384(public_key_bytes(key)).digest()


def sign(key: ec.EllipticCurvePrivateKey, data: bytes, deterministic: bool = False) -> bytes:
    """ECDSA P-384/SHA-384 signature of ``data`` in the 512-byte SNP format (``deterministic``:
    RFC 6979 nonces, so a rebuild with the same key gives the same bytes)."""
    algo = ec.ECDSA(hashes.SHA384(), deterministic_signing=deterministic)
    r, s = utils.decode_dss_signature(key.sign(data, algo))
    out = r.to_bytes(ECDSA_COMPONENT_SIZE, "little") + s.to_bytes(ECDSA_COMPONENT_SIZE, "little")
    return out + bytes(ECDSA_SIG_SIZE - len(out))


def verify(key, data: bytes, sig: bytes) -> bool:
    """True when ``sig`` (SNP format) is a valid signature of ``data`` by ``key``."""
    if len(sig) != ECDSA_SIG_SIZE or any(sig[2 * ECDSA_COMPONENT_SIZE:]):
        return False
    r = int.from_bytes(sig[:ECDSA_COMPONENT_SIZE], "little")
    s = int.from_bytes(sig[ECDSA_COMPONENT_SIZE:2 * ECDSA_COMPONENT_SIZE], "little")
    try:
        _public(key).verify(utils.encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        return False
    return True


def public_key_from_bytes(raw: bytes) -> ec.EllipticCurvePublicKey:
    """Parse a 0x404-byte ECDSA public key structure."""
    if len(raw) != ECDSA_PUBKEY_SIZE or struct.unpack_from("<I", raw)[0] != ECDSA_CURVE_P384:
        raise CCBuildError("public key structure is not a P-384 key")
    x = int.from_bytes(raw[4:4 + ECDSA_COMPONENT_SIZE], "little")
    y = int.from_bytes(raw[4 + ECDSA_COMPONENT_SIZE:4 + 2 * ECDSA_COMPONENT_SIZE], "little")
    try:
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1()).public_key()
    except ValueError as e:
        raise CCBuildError(f"public key structure is not a point on P-384 ({e})") from None


def id_auth(block_sig: bytes, id_key, id_key_sig: bytes, author_key) -> bytes:
    """Assemble ID_AUTH_INFO from signatures and keys."""
    out = bytearray(ID_AUTH_SIZE)
    struct.pack_into("<II", out, OFF_ID_KEY_ALGO, SIG_ALGO_ECDSA_P384_SHA384,
                     SIG_ALGO_ECDSA_P384_SHA384)
    out[OFF_ID_BLOCK_SIG:OFF_ID_BLOCK_SIG + ECDSA_SIG_SIZE] = block_sig
    out[OFF_ID_KEY:OFF_ID_KEY + ECDSA_PUBKEY_SIZE] = public_key_bytes(id_key)
    out[OFF_ID_KEY_SIG:OFF_ID_KEY_SIG + ECDSA_SIG_SIZE] = id_key_sig
    out[OFF_AUTHOR_KEY:OFF_AUTHOR_KEY + ECDSA_PUBKEY_SIZE] = public_key_bytes(author_key)
    return bytes(out)


def make_id_block(ld: bytes, id_key: ec.EllipticCurvePrivateKey,
                  author_key: ec.EllipticCurvePrivateKey, p: IdBlockParams,
                  deterministic: bool = False) -> IdBlockResult:
    """Build and sign the ID block and ID auth for launch digest ``ld``."""
    block = id_block(ld, p)
    auth = id_auth(sign(id_key, block, deterministic), id_key,
                   sign(author_key, public_key_bytes(id_key), deterministic), author_key)
    return IdBlockResult(block, auth, key_digest(id_key), key_digest(author_key))


def verify_id_auth(block: bytes, auth: bytes) -> None:
    """Check both signatures of ``auth`` over ``block`` as the PSP does; CheckFailed otherwise."""
    if len(block) != ID_BLOCK_SIZE or len(auth) != ID_AUTH_SIZE:
        raise CheckFailed("ID block or ID auth has the wrong size")
    id_key = public_key_from_bytes(auth[OFF_ID_KEY:OFF_ID_KEY + ECDSA_PUBKEY_SIZE])
    author = public_key_from_bytes(auth[OFF_AUTHOR_KEY:OFF_AUTHOR_KEY + ECDSA_PUBKEY_SIZE])
    if struct.unpack_from("<II", auth) != (SIG_ALGO_ECDSA_P384_SHA384,) * 2:
        raise CheckFailed("ID auth key algorithms are not ECDSA P-384 with SHA-384")
    if not verify(id_key, block, auth[OFF_ID_BLOCK_SIG:OFF_ID_BLOCK_SIG + ECDSA_SIG_SIZE]):
        raise CheckFailed("ID block signature does not verify with the ID key")
    if not verify(author, auth[OFF_ID_KEY:OFF_ID_KEY + ECDSA_PUBKEY_SIZE],
                  auth[OFF_ID_KEY_SIG:OFF_ID_KEY_SIG + ECDSA_SIG_SIZE]):
        raise CheckFailed("ID key signature does not verify with the author key")
