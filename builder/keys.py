"""Loading certificates and keys from hostile files: the one boundary where ``cryptography``
exceptions become one-line errors.

Every certificate and key ccbuild reads (the VCEK and ASK/ARK chain of ``verify --snp-report``,
the ID and author keys of ``id-block`` and recipes, the manifest signing key and the public key of
``verify --signature``) is loaded here. Each loader names the file (``what``: the option and the
path, or the recipe field) and what was expected, and it refuses, as :class:`CCBuildError`
(exit 2):

- bytes that are not the expected encoding (garbage PEM, DER where PEM is expected, truncation),
- certificates ``cryptography`` parses lazily and would fail on later (an invalid X.509 version,
  a public key of an algorithm it cannot load, damaged extensions): their fields are read here,
- encrypted private keys (ccbuild never asks for a passphrase),
- keys of another type or curve than the caller needs (``EC key on secp256r1, expected P-384
  (secp384r1)``, ``Ed25519 key, expected ECDSA P-384``).
"""

from __future__ import annotations

import warnings

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import (
    dsa,
    ec,
    ed448,
    ed25519,
    rsa,
    x448,
    x25519,
)

from builder.errors import CCBuildError

PEM_CERT = b"-----BEGIN CERTIFICATE-----"
# What cryptography raises on malformed input: ValueError (parse errors), TypeError (encrypted
# keys, wrong object), UnsupportedAlgorithm, x509.InvalidVersion (an Exception of its own).
_LOAD_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion)

CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = text.split(" See https://")[0]     # cryptography's FAQ pointer
    return text[:120]


def key_type_name(key) -> str:
    """'EC key on secp256r1', 'RSA-2048 key', 'Ed25519 key' ... (for messages)."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return f"EC key on {key.curve.name}"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"RSA-{key.key_size} key"
    if isinstance(key, (dsa.DSAPrivateKey, dsa.DSAPublicKey)):
        return f"DSA-{key.key_size} key"
    for cls, name in (((ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey), "Ed25519 key"),
                      ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "Ed448 key"),
                      ((x25519.X25519PrivateKey, x25519.X25519PublicKey), "X25519 key"),
                      ((x448.X448PrivateKey, x448.X448PublicKey), "X448 key")):
        if isinstance(key, cls):
            return name
    return f"{type(key).__name__.lstrip('_')} key"


def _curve_wanted(curves: tuple[str, ...]) -> str:
    return " or ".join(f"{CURVE_NAMES.get(c, c)} ({c})" for c in curves)


def check_ec_key(key, what: str, curves: tuple[str, ...], hint: str | None = None):
    """``key`` if it is an EC key on one of ``curves``, else a message naming what it is."""
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        raise CCBuildError(f"{what}: {key_type_name(key)}, expected ECDSA "
                           f"{_curve_wanted(curves)}", hint=hint)
    if key.curve.name not in curves:
        raise CCBuildError(f"{what}: {key_type_name(key)}, expected {_curve_wanted(curves)}",
                           hint=hint)
    return key


# --- certificates -------------------------------------------------------------------------------

def _checked(cert: x509.Certificate, what: str) -> x509.Certificate:
    """Read now every field ccbuild uses later, so a lazily parsed damage surfaces here."""
    try:
        _ = (cert.version, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
             cert.public_key(), list(cert.extensions), cert.signature, cert.tbs_certificate_bytes,
             cert.public_bytes(serialization.Encoding.DER))
    except _LOAD_ERRORS as e:
        raise CCBuildError(f"{what}: a damaged or unsupported X.509 certificate ({_reason(e)})",
                           hint="certificates with RSA or EC keys, as AMD's KDS serves them"
                           ) from None
    return cert


def load_certificate(data: bytes, what: str) -> x509.Certificate:
    """Exactly one X.509 certificate, PEM or DER."""
    try:
        with warnings.catch_warnings():
            # AMD KDS VCEKs carry serial numbers cryptography calls non-positive
            warnings.simplefilter("ignore")
            if PEM_CERT in data:
                certs = x509.load_pem_x509_certificates(data)
                if len(certs) != 1:
                    raise CCBuildError(f"{what}: holds {len(certs)} certificates, expected one")
                cert = certs[0]
            else:
                cert = x509.load_der_x509_certificate(data)
    except _LOAD_ERRORS as e:
        raise CCBuildError(f"{what}: not an X.509 certificate (PEM or DER) ({_reason(e)})",
                           hint="give the certificate as DER or PEM as AMD's KDS serves it"
                           ) from None
    return _checked(cert, what)


def load_pem_certificates(data: bytes, what: str, count: int | None = None) -> list[x509.Certificate]:
    """The certificates of a PEM bundle (``count`` of them when given)."""
    if PEM_CERT not in data:
        looks_der = data[:1] == b"\x30"
        raise CCBuildError(f"{what}: not a PEM bundle of certificates"
                           + (" (it looks like DER)" if looks_der else ""),
                           hint="give the certificates as PEM, as AMD KDS's cert_chain")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            certs = x509.load_pem_x509_certificates(data)
    except _LOAD_ERRORS as e:
        raise CCBuildError(f"{what}: not a PEM bundle of X.509 certificates ({_reason(e)})",
                           hint="give the certificates as PEM, as AMD KDS's cert_chain") from None
    if count is not None and len(certs) != count:
        raise CCBuildError(f"{what}: holds {len(certs)} certificates, expected {count}")
    return [_checked(c, f"{what} (certificate {i + 1})") for i, c in enumerate(certs)]


# --- keys -----------------------------------------------------------------------------------------

def load_private_key(pem: bytes, what: str) -> object:
    """An unencrypted PEM private key of any type (callers check the type)."""
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError as e:
        if "encrypted" in str(e).lower():
            raise CCBuildError(f"{what}: the private key is encrypted",
                               hint="give an unencrypted PEM key (openssl pkey -in K -out K2)"
                               ) from None
        raise CCBuildError(f"{what}: not a PEM private key ({_reason(e)})") from None
    except _LOAD_ERRORS as e:
        raise CCBuildError(f"{what}: not a PEM private key ({_reason(e)})",
                           hint="give an unencrypted PEM private key") from None

def load_ec_private_key(pem: bytes, what: str, curves: tuple[str, ...],
                        hint: str | None = None) -> ec.EllipticCurvePrivateKey:
    return check_ec_key(load_private_key(pem, what), what, curves, hint)

def load_public_key(pem: bytes, what: str) -> object:
    """A PEM public key, or the public half of a PEM private key."""
    if b"PRIVATE KEY" in pem:
        return load_private_key(pem, what).public_key()
    try:
        return serialization.load_pem_public_key(pem)
    except _LOAD_ERRORS as e:
        raise CCBuildError(f"{what}: not a PEM public key ({_reason(e)})",
                           hint="give a PEM public key (openssl pkey -pubout)") from None

def load_ec_public_key(pem: bytes, what: str, curves: tuple[str, ...],
                       hint: str | None = None) -> ec.EllipticCurvePublicKey:
    return check_ec_key(load_public_key(pem, what), what, curves, hint)
