"""SEV-SNP report verification against AMD's chain, with real reports from real chips.

The reports, VCEKs and ASK/ARK chains are published by go-sev-guest and virtee/sev; the ARK and ASK
shipped in builder/data/amd/ are AMD KDS's (as published by virtee/sev). A signature made by an AMD
chip can only verify if our parsing of R, S and the signed area is right, and any single-byte
change anywhere must break it, naming the link.
"""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from builder.errors import CCBuildError, CheckFailed
from builder.verify_snp import builtin_chain, load_chain, verify_snp_report

SNP = "snp"
CASES = {
    "go-sev-guest": ("go-sev-guest/attestation.bin", "go-sev-guest/vcek.testcer",
                     "go-sev-guest/milan.testcer"),
    "virtee": ("virtee-sev/report_milan.hex", "virtee-sev/vcek_milan.der",
               "virtee-sev/cert_chain_milan"),
}


def files(vectors, case):
    return tuple((vectors / SNP / p).read_bytes() for p in CASES[case])


@pytest.mark.parametrize("case", sorted(CASES))
def test_real_reports_verify_with_given_chain(vectors, case):
    report, vcek, chain = files(vectors, case)
    v = verify_snp_report(report, vcek, chain)
    assert (v.product, v.signer, v.chain_source) == ("milan", "VCEK", "given")
    assert (v.vcek_subject, v.ask_subject, v.ark_subject) == ("SEV-VCEK", "SEV-Milan", "ARK-Milan")


@pytest.mark.parametrize("case", sorted(CASES))
def test_real_reports_verify_with_builtin_amd_keys(vectors, case):
    report, vcek, _ = files(vectors, case)
    v = verify_snp_report(report, vcek, None)
    assert v.chain_source == "built-in AMD KDS keys" and v.product == "milan"


def test_builtin_keys_are_the_kds_keys(vectors):
    for product in ("milan", "genoa", "turin"):
        ask, ark = builtin_chain(product)
        kds = vectors / SNP / "amd-kds" / product
        assert ark == x509.load_pem_x509_certificate((kds / "ark.pem").read_bytes())
        assert ask == x509.load_pem_x509_certificate((kds / "ask.pem").read_bytes())
        assert ark.subject.rfc4514_string().startswith(f"CN=ARK-{product.capitalize()}")


def test_turin_vcek_chains_to_the_turin_root(vectors):
    """No Turin report is published with it, but its VCEK must chain to AMD's Turin keys."""
    ask, ark = load_chain((vectors / SNP / "virtee-sev/cert_chain_turin").read_bytes())
    b_ask, b_ark = builtin_chain("turin")
    assert ark == b_ark and ask == b_ask


# --- single-byte flips ------------------------------------------------------------------------

def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x01
    return bytes(b)


def _report_bytes(raw: bytes) -> bytes:
    return bytes.fromhex(raw.decode().strip()) if raw[:1].isalnum() and len(raw) != 0x4A0 else raw


SIGNED_POSITIONS = [0x000, 0x008, 0x010, 0x038, 0x048, 0x050, 0x08F, 0x090, 0x0BF, 0x0C0, 0x0E0,
                    0x110, 0x140, 0x180, 0x1A0, 0x1E0, 0x1F0, 0x25F, 0x29F]
SIGNATURE_POSITIONS = [0x2A0, 0x2A1, 0x2C0, 0x2CF, 0x2D0, 0x2E7, 0x2E8, 0x2F0, 0x317, 0x318,
                       0x32F]
RESERVED_SIGNATURE_POSITIONS = [0x330, 0x400, 0x49F]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("pos", SIGNED_POSITIONS + SIGNATURE_POSITIONS + RESERVED_SIGNATURE_POSITIONS)
def test_flipping_a_report_byte_fails(vectors, case, pos):
    report, vcek, chain = files(vectors, case)
    raw = _report_bytes(report)
    bad = _flip(raw, pos)
    with pytest.raises(CCBuildError) as e:
        verify_snp_report(bad, vcek, chain)
    err = e.value
    if pos >= 0x330:
        assert isinstance(err, CheckFailed) and "reserved bytes after R and S" in str(err)
    elif 0x1A0 <= pos < 0x1E0:
        assert isinstance(err, CheckFailed) and "chip" in str(err)
    elif 0x180 <= pos < 0x188:
        assert isinstance(err, CheckFailed) and ("TCB" in str(err) or "report signature" in str(err))
    else:
        assert isinstance(err, CheckFailed) and str(err).startswith("VCEK -> report: the report signature")
    assert "\n" not in str(err)


def _pem_certs(data: bytes) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(data)]


def _to_pem(ders: list[bytes]) -> bytes:
    out = b""
    for der in ders:
        body = base64.encodebytes(der).replace(b"\n", b"")
        lines = b"\n".join(body[i:i + 64] for i in range(0, len(body), 64))
        out += b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"
    return out


def _cert_positions(der: bytes) -> list[int]:
    """Positions spread over a certificate: inside the signed TBS part and inside the signature."""
    n = len(der)
    return [n // 10, n // 4, n // 3, n // 2, 2 * n // 3, n - 200, n - 40, n - 1]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("which", range(8))
def test_flipping_a_vcek_byte_fails(vectors, case, which):
    report, vcek, chain = files(vectors, case)
    der = vcek if vcek[:1] == b"\x30" else _pem_certs(vcek)[0]
    bad = _flip(der, _cert_positions(der)[which])
    with pytest.raises(CCBuildError) as e:
        verify_snp_report(report, bad, chain)
    msg = str(e.value)
    if isinstance(e.value, CheckFailed):
        assert msg.startswith(("ASK -> VCEK", "VCEK -> ", "ARK")), msg
    else:
        assert "VCEK is not a readable X.509 certificate" in msg


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("cert", [0, 1])  # 0 = ASK, 1 = ARK (the order in the published chains)
@pytest.mark.parametrize("which", range(8))
def test_flipping_a_chain_byte_fails(vectors, case, cert, which):
    report, vcek, chain = files(vectors, case)
    ders = _pem_certs(chain)
    ders[cert] = _flip(ders[cert], _cert_positions(ders[cert])[which])
    with pytest.raises(CCBuildError) as e:
        verify_snp_report(report, vcek, _to_pem(ders))
    msg = str(e.value)
    if isinstance(e.value, CheckFailed):
        expected = ("ARK -> ASK", "ASK -> VCEK") if cert == 0 else ("ARK", )
        assert msg.startswith(expected), msg
    else:
        assert "chain" in msg, msg


def test_wrong_vcek_names_the_chip(vectors):
    report, _, chain = files(vectors, "virtee")
    _, other_vcek, _ = files(vectors, "go-sev-guest")
    with pytest.raises(CheckFailed, match="VCEK -> chip"):
        verify_snp_report(report, other_vcek, chain)


def test_chain_of_another_product_is_refused(vectors):
    report, vcek, _ = files(vectors, "virtee")
    turin = (vectors / SNP / "virtee-sev/cert_chain_turin").read_bytes()
    with pytest.raises(CheckFailed, match="turin root, the VCEK is for milan"):
        verify_snp_report(report, vcek, turin)


def test_self_made_root_is_refused(vectors, tmp_path):
    """A chain whose ARK is not AMD's fails even if it is internally consistent."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    import datetime
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "ARK-Milan")])
    now = datetime.datetime(2024, 1, 1)
    ark = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(key.public_key()).serial_number(1).not_valid_before(now)
           .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    report, vcek, chain = files(vectors, "virtee")
    ask_der = _pem_certs(chain)[0]
    bundle = _to_pem([ask_der, ark.public_bytes(serialization.Encoding.DER)])
    with pytest.raises(CheckFailed, match="not one of AMD's root keys"):
        verify_snp_report(report, vcek, bundle)


@pytest.mark.parametrize("bad,match", [
    (b"not a certificate", "VCEK is not a readable"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "VCEK is not a readable"),
])
def test_unreadable_vcek_is_bad_input(vectors, bad, match):
    report, _, chain = files(vectors, "virtee")
    with pytest.raises(CCBuildError, match=match) as e:
        verify_snp_report(report, bad, chain)
    assert not isinstance(e.value, CheckFailed) and e.value.exit_code == 2


def test_chain_with_one_certificate_is_bad_input(vectors):
    report, vcek, chain = files(vectors, "virtee")
    one = _to_pem(_pem_certs(chain)[:1])
    with pytest.raises(CCBuildError, match="holds 1 certificates") as e:
        verify_snp_report(report, vcek, one)
    assert e.value.exit_code == 2


def test_unsigned_report_fails(vectors):
    report, vcek, chain = files(vectors, "go-sev-guest")
    b = bytearray(report)
    b[0x48] = 7 << 2  # SIGNING_KEY = none
    with pytest.raises(CheckFailed, match="signed by none") as e:
        verify_snp_report(bytes(b), vcek, chain)
    assert e.value.exit_code == 1
