"""SEV-SNP attestation report parsing.

Independent evidence: go-sev-guest's expectations for its testdata/attestation.bin
(tools/check/check_test.go: the "good" flag values and goodPolicy = {Debug, SMT}), and the report
signature verifying with AMD's keys (tests/test_verify_snp.py), which pins the signed area and
the R/S positions.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.errors import CCBuildError, FormatError
from builder.formats import snp_report

GSG = "snp/go-sev-guest/attestation.bin"
VIRTEE_HEX = "snp/virtee-sev/report_milan.hex"

# go-sev-guest tools/check/check_test.go, values that must pass for attestation.bin
GSG_EXPECT = {
    "report_data": "0102030405" + "00" * 59,
    "host_data": "00" * 32,
    "family_id": "00" * 16,
    "image_id": "00" * 16,
    "report_id": "8edc638e1857c555d21f6b11bda3c8b1b5a09dba4852b4c8ee7aa2f16f22cc0a",
    "report_id_ma": "ff" * 32,
    "measurement": "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
                   "6bdf8a9ece31a5a608eb0cf2e4872b01",
    "chip_id": "3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e5378618"
               "4ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d",
    "tcb": 4901323769462652930,
}
# abi.SnpPolicyToBytes({Debug, SMT}): SMT bit 16, reserved-1 bit 17, DEBUG bit 19 (SNP ABI)
GSG_POLICY = (1 << 16) | (1 << 17) | (1 << 19)


@pytest.fixture(scope="module")
def gsg(vectors):
    return (vectors / GSG).read_bytes()


def test_go_sev_guest_report_fields(gsg):
    r = snp_report.parse_report(gsg)
    assert r.version == 2
    for name in ("report_data", "host_data", "family_id", "image_id", "report_id",
                 "report_id_ma", "measurement", "chip_id"):
        assert getattr(r, name).hex() == GSG_EXPECT[name], name
    assert r.reported_tcb.raw == GSG_EXPECT["tcb"]      # minimum_tcb passes
    assert r.launch_tcb.raw == GSG_EXPECT["tcb"]        # minimum_launch_tcb passes
    assert r.policy == GSG_POLICY and r.debug and "SMT" in r.policy_flags
    assert r.vmpl == 0 and r.platform_info == 1 and r.platform_info_flags == ["SMT_EN"]
    assert r.current_version[:2] >= (1, 49)             # min_version 1.49 passes
    assert not r.author_key_en and r.signing_key_name == "VCEK"
    assert r.signature_algo == 1
    assert r.cpuid_fam_id is None and r.launch_mit_vector is None  # a version 2 report


def test_hex_text_and_binary_agree(vectors, gsg):
    text = (vectors / VIRTEE_HEX).read_bytes()
    r = snp_report.parse_report(text)
    assert r.raw == bytes.fromhex(text.decode().strip())
    # the same report as binary, as spaced/wrapped hex, and inside an SNP_GUEST_REQUEST response
    assert snp_report.parse_report(r.raw) == r
    wrapped = b"\n".join(text.strip()[i:i + 64] for i in range(0, len(text.strip()), 64))
    assert snp_report.parse_report(wrapped + b"\n") == r
    rsp = struct.pack("<II", 0, 0x4A0) + bytes(24) + gsg
    assert snp_report.parse_report(rsp).raw == gsg
    assert snp_report.looks_like_report(text) and snp_report.looks_like_report(gsg)


def _edited(raw: bytes, **fields) -> bytes:
    b = bytearray(raw)
    for off, value in fields.values():
        b[off:off + len(value)] = value
    return bytes(b)


def test_version_3_and_5_fields(gsg):
    v3 = _edited(gsg, version=(0, struct.pack("<I", 3)), cpuid=(0x188, bytes([0x19, 0x11, 0x01])))
    r = snp_report.parse_report(v3)
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (0x19, 0x11, 1)
    assert r.product == "genoa" and r.launch_mit_vector is None
    v5 = _edited(gsg, version=(0, struct.pack("<I", 5)), cpuid=(0x188, bytes([0x1A, 0x02, 0x01])),
                 mit=(0x1F8, struct.pack("<QQ", 0x3, 0x7)),
                 tcb=(0x180, bytes([1, 2, 3, 4, 0, 0, 0, 5])))
    r = snp_report.parse_report(v5)
    assert r.product == "turin"
    assert (r.launch_mit_vector, r.current_mit_vector) == (3, 7)
    # Turin TCB_VERSION: FMC, BOOT_LOADER, TEE, SNP, 3 reserved, MICROCODE
    assert r.reported_tcb.parts == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 5}
    # Milan/Genoa: BOOT_LOADER, TEE, 4 reserved, SNP, MICROCODE (0x4405000000000002 = bl 2, snp 5,
    # microcode 0x44)
    assert snp_report.parse_report(gsg).reported_tcb.parts == {
        "bootloader": 2, "tee": 0, "snp": 5, "microcode": 0x44}
    j = r.to_json()
    assert j["product"] == "turin" and j["launch_mit_vector"] == "0x3"


def test_signature_components_little_endian(gsg):
    r = snp_report.parse_report(gsg)
    assert r.signature_r == gsg[0x2A0:0x2E8] and r.signature_s == gsg[0x2E8:0x330]
    assert r.r == int.from_bytes(gsg[0x2A0:0x2E8], "little")
    assert r.r.bit_length() <= 384 and r.s.bit_length() <= 384
    assert r.signed_bytes == gsg[:0x2A0]


def test_signer_flags(gsg):
    vlek = _edited(gsg, flags=(0x48, struct.pack("<I", (1 << 2) | 1 | 2)))
    r = snp_report.parse_report(vlek)
    assert r.signing_key_name == "VLEK" and r.author_key_en and r.mask_chip_key


def test_format_and_json(vectors, gsg):
    r = snp_report.parse_report(gsg)
    text = snp_report.format_report(r)
    assert GSG_EXPECT["measurement"] in text and "DEBUG" in text and "signed by VCEK" in text
    j = r.to_json()
    assert j["measurement"] == GSG_EXPECT["measurement"]
    assert j["policy_decoded"]["debug"] is True


@pytest.mark.parametrize("data,match", [
    (b"", "0x4a0"),
    (bytes(100), "0x4a0"),
    (b"abcd" * 10, "0x4a0"),
    (b"00" * 0x4A1, "decodes to 1185 bytes"),
    (b"zz" * 0x4A0, "0x4a0"),
])
def test_bad_inputs(data, match):
    with pytest.raises(FormatError, match=match):
        snp_report.parse_report(data)


def test_unsupported_version(gsg):
    with pytest.raises(FormatError, match="version 1") as e:
        snp_report.parse_report(_edited(gsg, v=(0, struct.pack("<I", 1))))
    assert e.value.offset == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=0x4A0 * 2 + 10))
def test_random_bytes_only_raise_project_errors(raw):
    for candidate in (raw, raw.hex().encode()):
        try:
            r = snp_report.parse_report(candidate)
        except CCBuildError:
            continue
        snp_report.format_report(r)
        r.to_json()


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0x4A0, max_size=0x4A0), st.sampled_from([2, 3, 4, 5]))
def test_any_report_sized_input_with_known_version_parses(raw, version):
    r = snp_report.parse_report(struct.pack("<I", version) + raw[4:])
    assert r.version == version
    snp_report.format_report(r)
    r.to_json()
