"""Signing manifest.json with an ECDSA key (``ccbuild build --sign-key``) and checking it
(``ccbuild verify --signature --pubkey``).

``manifest.json.sig`` is a DER ECDSA signature over the exact bytes of manifest.json, hashed
with the curve's matching SHA-2 (P-256: SHA-256, P-384: SHA-384, P-521: SHA-512), so
``openssl dgst -sha384 -verify pub.pem -signature manifest.json.sig manifest.json`` checks a
P-384 signature too. Signatures are deterministic (RFC 6979): signing the same manifest with the
same key gives the same file, so a signed rebuild stays byte-identical. The key never enters OUT.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from builder.errors import CCBuildError
from builder.inputs import read_regular
from builder.keys import load_ec_private_key, load_ec_public_key

SIGNATURE_NAME = "manifest.json.sig"
_HASH_BY_CURVE = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384,
                  "secp521r1": hashes.SHA512}


def _hash_for(key) -> hashes.HashAlgorithm:
    name = key.curve.name
    if name not in _HASH_BY_CURVE:
        raise CCBuildError(f"unsupported ECDSA curve {name}", hint="use P-256, P-384 or P-521")
    return _HASH_BY_CURVE[name]()


def load_signing_key(pem: bytes, where: str = "--sign-key") -> ec.EllipticCurvePrivateKey:
    return load_ec_private_key(pem, where, tuple(_HASH_BY_CURVE),
                               "give an unencrypted PEM ECDSA private key "
                               "(openssl ecparam -name secp384r1 -genkey -noout)")


def load_public_key(pem: bytes, where: str = "--pubkey") -> ec.EllipticCurvePublicKey:
    return load_ec_public_key(pem, where, tuple(_HASH_BY_CURVE), "give a PEM ECDSA public key")


def sign_manifest(manifest: bytes, key_pem: bytes, where: str = "--sign-key") -> bytes:
    key = load_signing_key(key_pem, where)
    return key.sign(manifest, ec.ECDSA(_hash_for(key), deterministic_signing=True))


def verify_manifest(manifest: bytes, signature: bytes, pubkey_pem: bytes,
                    where: str = "--pubkey") -> tuple[bool, str]:
    key = load_public_key(pubkey_pem, where)
    h = _hash_for(key)
    try:
        key.verify(signature, manifest, ec.ECDSA(h))
    except InvalidSignature:
        return False, (f"manifest.json.sig does not verify with the given {key.curve.name} key "
                       "(manifest changed, other key, or damaged signature)")
    except ValueError as e:
        return False, f"manifest.json.sig is not a DER ECDSA signature ({e})"
    return True, f"ECDSA {key.curve.name} {h.name} signature over manifest.json verifies"


def sign_manifest_file(manifest: bytes, key_path) -> bytes:
    """:func:`sign_manifest` with the key read from ``key_path`` (``--sign-key``): a regular file
    of at most the key cap (builder.inputs)."""
    where = f"--sign-key {key_path}"
    return sign_manifest(manifest, read_regular(key_path, "key", where), where)
