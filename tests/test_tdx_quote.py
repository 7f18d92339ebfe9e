"""TDX quotes v4/v5 and TDREPORTs.

Independent evidence: field values of the production quote as go-tdx-guest's own tests expect them
(validate/validate_test.go, TestTdxQuote "deep check"); the quote's ECDSA signature, checked by the
`cryptography` package over the signed area our parser delimits with the attestation key it
extracts; the QE report's REPORTDATA = SHA-256(attestation key | QE auth data) relation and the QE
report signature by the PCK leaf certificate of the embedded chain (Intel DCAP quote format).
"""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.errors import CCBuildError, FormatError
from builder.formats import tdx_quote

GO_TDX = "tdx/go-tdx-guest"

# go-tdx-guest validate/validate_test.go, expectations for testing/testdata/tdx_prod_quote_SPR_E4.dat
PROD = {
    "qe_vendor_id": "939a7233f79c4ca9940a0db3957f0607",
    "tee_tcb_svn": "03000400000000000000000000000000",
    "mrseam": "2fd279c16164a93dd5bf373d834328d46008c2b693af9ebb865b08b2ced320c9"
              "a89b4869a9fab60fbe9d0c5a5363c656",
    "td_attributes": "0000004000000000",
    "xfam": "e71a060000000000",
    "mrtd": "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f"
            "22fc00b8dcd404bc10d5e119d7215cbb",
    "rtmr0": "2927da70461cd63266f43230cc1849c03ef25ebe490062a801d8fcc80af42976"
             "823adf08f833c1e50b51779c6593f32a",
    "rtmr1": "2c700b8ba9b85783f8be9fb9443647bdc0bb3c50747f06297cc6538c25a5f589"
             "c4b56d035c59107c6bc5800db2cacb61",
    "rtmr2": "8652f0caaba7e215ea442dc36a4499d8fec3362f3a0b2ca151cbe4b3e6466fe5"
             "9c7368b3c2287fc7c3bf5c924eb4424e",
    "report_data": "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545"
                   "eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113",
}
QUOTES = ["cos-113-tdx-quote.dat", "tdx_prod_quote_SPR_E4.dat", "quote_v5_sample.dat"]


def load(vectors, name):
    return (vectors / GO_TDX / name).read_bytes()


def test_production_quote_fields_match_go_tdx_guest_expectations(vectors):
    q = tdx_quote.parse_quote(load(vectors, "tdx_prod_quote_SPR_E4.dat"))
    b = q.body
    assert q.version == 4 and q.body_type == tdx_quote.BODY_TYPE_TD10
    assert q.header.qe_svn == 0 and q.header.pce_svn == 0
    assert q.header.qe_vendor_id.hex() == PROD["qe_vendor_id"]
    assert b.tee_tcb_svn.hex() == PROD["tee_tcb_svn"]
    assert b.mrseam.hex() == PROD["mrseam"]
    assert b.td_attributes.hex() == PROD["td_attributes"]
    assert not b.debug  # go-tdx-guest: TdAttributesDebug false
    assert b.xfam.hex() == PROD["xfam"]
    assert b.mrtd.hex() == PROD["mrtd"]
    assert b.mrconfigid == b.mrowner == b.mrownerconfig == bytes(48)
    assert [r.hex() for r in b.rtmrs[:3]] == [PROD["rtmr0"], PROD["rtmr1"], PROD["rtmr2"]]
    assert b.rtmrs[3] == bytes(48)
    assert b.report_data.hex() == PROD["report_data"]
    # go-tdx-guest appends 39 bytes after the signature data of this file for its own tests
    assert q.trailing == 39


def test_cos_quote_report_data_is_the_nonce(vectors):
    """go-tdx-guest testing/testdata/ccel: the quote was requested with nonce.dat as REPORTDATA."""
    q = tdx_quote.parse_quote(load(vectors, "cos-113-tdx-quote.dat"))
    assert q.body.report_data == load(vectors, "nonce.dat")


def test_v5_quote_is_td15(vectors):
    q = tdx_quote.parse_quote(load(vectors, "quote_v5_sample.dat"))
    assert q.version == 5 and q.body_type == tdx_quote.BODY_TYPE_TD15
    assert q.body_offset == 0x36
    assert q.body.tee_tcb_svn2 is not None and q.body.mrservicetd is not None
    assert q.trailing == 0
    assert len(q.signed_area) == 0x36 + 648


def _p256_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicNumbers(int.from_bytes(raw[:32], "big"),
                                         int.from_bytes(raw[32:], "big"),
                                         ec.SECP256R1()).public_key()


def _der_sig(raw: bytes) -> bytes:
    return utils.encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                      int.from_bytes(raw[32:], "big"))


@pytest.mark.parametrize("name", QUOTES)
def test_quote_boundaries_confirmed_by_its_signatures(vectors, name):
    """If the parser cut the header, body or signature data at a wrong offset, these
    signatures (made by Intel's quoting enclave and PCK key) could not verify."""
    q = tdx_quote.parse_quote(load(vectors, name))
    s = q.signature
    assert s.certification.cert_type == tdx_quote.CERT_TYPE_QE_REPORT
    _p256_key(s.attestation_key).verify(_der_sig(s.signature), q.signed_area,
                                        ec.ECDSA(hashes.SHA256()))
    assert s.qe_report.report_data[:32] == hashlib.sha256(s.attestation_key
                                                          + s.qe_auth_data).digest()
    chain = x509.load_pem_x509_certificates(s.pck_chain_pem)
    assert [c.subject.rfc4514_string().split("CN=")[1] for c in chain] == [
        "Intel SGX PCK Certificate", "Intel SGX PCK Platform CA", "Intel SGX Root CA"]
    chain[0].public_key().verify(_der_sig(s.qe_report_signature), s.qe_report.raw,
                                 ec.ECDSA(hashes.SHA256()))
    # and a changed RTMR byte no longer verifies: the body really is in the signed area
    tampered = bytearray(q.signed_area)
    tampered[q.body_offset + 0x148] ^= 1
    with pytest.raises(InvalidSignature):
        _p256_key(s.attestation_key).verify(_der_sig(s.signature), bytes(tampered),
                                            ec.ECDSA(hashes.SHA256()))


def test_json_and_pretty_print(vectors):
    q = tdx_quote.parse_quote(load(vectors, "quote_v5_sample.dat"))
    j = q.to_json()
    assert j["version"] == 5 and j["body_type_name"] == "TD report 1.5"
    assert j["body"]["mrtd"] == q.body.mrtd.hex() and "mrservicetd" in j["body"]
    assert j["certification_data_type"] == 6 and j["pck_certification_data_type"] == 5
    text = tdx_quote.format_quote(q)
    assert "TDX quote v5" in text and q.body.rtmrs[0].hex() in text
    assert "SEPT_VE_DISABLE" in text


# --- malformed quotes -------------------------------------------------------------------------

def test_wrong_version_and_tee_type(vectors):
    raw = bytearray(load(vectors, "tdx_prod_quote_SPR_E4.dat"))
    raw[0] = 3
    with pytest.raises(FormatError, match="version 3"):
        tdx_quote.parse_quote(bytes(raw))
    raw = bytearray(load(vectors, "tdx_prod_quote_SPR_E4.dat"))
    raw[4:8] = struct.pack("<I", 0)  # SGX
    with pytest.raises(FormatError, match="not TDX") as e:
        tdx_quote.parse_quote(bytes(raw))
    assert e.value.offset == 4


def test_v5_body_type_and_size_checked(vectors):
    raw = bytearray(load(vectors, "quote_v5_sample.dat"))
    raw[0x30:0x32] = struct.pack("<H", 1)
    with pytest.raises(FormatError, match="body type 1"):
        tdx_quote.parse_quote(bytes(raw))
    raw = bytearray(load(vectors, "quote_v5_sample.dat"))
    raw[0x30:0x32] = struct.pack("<H", 2)  # TD 1.0 body type with a 648-byte size
    with pytest.raises(FormatError, match="size 648") as e:
        tdx_quote.parse_quote(bytes(raw))
    assert e.value.offset == 0x32


def test_signature_length_past_end(vectors):
    raw = bytearray(load(vectors, "tdx_prod_quote_SPR_E4.dat"))
    raw[0x278:0x27C] = struct.pack("<I", 0xFFFFFFFF)
    with pytest.raises(FormatError, match="runs past the end") as e:
        tdx_quote.parse_quote(bytes(raw))
    assert e.value.offset == 0x278


def test_truncated_quote(vectors):
    raw = load(vectors, "tdx_prod_quote_SPR_E4.dat")
    for cut in (0, 10, 0x100, 0x27A, 0x300, 2000):
        with pytest.raises(FormatError):
            tdx_quote.parse_quote(raw[:cut])


# --- TDREPORT ---------------------------------------------------------------------------------

def _tdreport_from_prod_quote(vectors) -> bytes:
    """A TDREPORT assembled by hand from the production quote's body, at the offsets of the TDX
    module ABI spec (REPORTMACSTRUCT 0, TEE_TCB_INFO 256, TDINFO 512)."""
    q = load(vectors, "tdx_prod_quote_SPR_E4.dat")
    body = q[0x30:0x30 + 584]
    r = bytearray(1024)
    r[0:4] = bytes([0x81, 0, 0, 0])
    r[128:192] = body[0x208:0x248]           # REPORTDATA
    r[256:264] = b"\xff" * 8                 # TEE_TCB_INFO.VALID
    r[264:280] = body[0x00:0x10]             # TEE_TCB_SVN
    r[280:328] = body[0x10:0x40]             # MRSEAM
    r[328:376] = body[0x40:0x70]             # MRSIGNERSEAM
    r[512:520] = body[0x78:0x80]             # ATTRIBUTES
    r[520:528] = body[0x80:0x88]             # XFAM
    r[528:720] = body[0x88:0x148]            # MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG
    r[720:912] = body[0x148:0x208]           # RTMR0..3
    r[32:80] = hashlib.sha384(bytes(r[256:495])).digest()   # TEE_TCB_INFO_HASH
    r[80:128] = hashlib.sha384(bytes(r[512:1024])).digest()  # TEE_INFO_HASH
    return bytes(r)


def test_tdreport_fields(vectors):
    rep = tdx_quote.parse_tdreport(_tdreport_from_prod_quote(vectors))
    m = rep.measurements
    assert rep.report_type == 0x81 and rep.report_version == 0
    assert m.mrtd.hex() == PROD["mrtd"] and m.mrseam.hex() == PROD["mrseam"]
    assert m.xfam.hex() == PROD["xfam"] and m.td_attributes.hex() == PROD["td_attributes"]
    assert m.tee_tcb_svn.hex() == PROD["tee_tcb_svn"]
    assert [r.hex() for r in m.rtmrs[:3]] == [PROD["rtmr0"], PROD["rtmr1"], PROD["rtmr2"]]
    assert m.report_data.hex() == PROD["report_data"]
    assert m.tee_tcb_svn2 is None  # version 0 = TDX 1.0
    assert rep.tee_tcb_info_hash == hashlib.sha384(rep.tee_tcb_info).digest()
    assert rep.tee_info_hash == hashlib.sha384(rep.td_info).digest()
    assert tdx_quote.looks_like_tdreport(_tdreport_from_prod_quote(vectors))
    assert "TDREPORT" in tdx_quote.format_tdreport(rep)
    assert rep.to_json()["body"]["mrtd"] == PROD["mrtd"]


def test_tdreport_errors():
    with pytest.raises(FormatError, match="1024 bytes"):
        tdx_quote.parse_tdreport(bytes(1000))
    with pytest.raises(FormatError, match="not TDX"):
        tdx_quote.parse_tdreport(bytes(1024))


# --- property tests ---------------------------------------------------------------------------

def _exercise(raw: bytes) -> None:
    try:
        q = tdx_quote.parse_quote(raw)
    except CCBuildError:
        return
    tdx_quote.format_quote(q)
    q.to_json()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1200))
def test_random_bytes_only_raise_project_errors(raw):
    _exercise(raw)
    _exercise(struct.pack("<HHI", 4, 2, 0x81) + raw)
    _exercise(struct.pack("<HHI", 5, 2, 0x81) + raw)
    try:
        tdx_quote.parse_tdreport(raw)
    except CCBuildError:
        pass


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_real_quotes_only_raise_project_errors(vectors, data):
    raw = bytearray(load(vectors, data.draw(st.sampled_from(QUOTES))))
    # mutate the structural fields most of the time: sizes and types in the signature data
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.one_of(st.integers(0, len(raw) - 1),
                                  st.sampled_from([0, 4, 0x30, 0x32, 0x278, 0x279, 0x27B, 0x2BE,
                                                   0x2FC, 0x2FE, 0x300, 0x302, 0x4C2, 0x4C3])))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _exercise(bytes(raw[:cut]))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1023, max_size=1023))
def test_random_tdreports_parse(raw):
    rep = tdx_quote.parse_tdreport(b"\x81" + raw)
    tdx_quote.format_tdreport(rep)
    rep.to_json()
