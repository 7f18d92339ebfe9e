"""OVMF SEV structures: the parse agrees with sev-snp-measure's parser on real fixtures, every
malformed image is a FormatError naming the offset, and random or mutated images never raise
anything but the project's own errors (hypothesis)."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from builder.errors import CCBuildError, FormatError
from builder.formats.guid_table import (
    FOOTER_GUID,
    SEV_HASH_TABLE_RV_GUID,
    SEV_METADATA_OFFSET_GUID,
    parse_footer_table,
)
from builder.formats.ovmf import (
    SectionType,
    has_kernel_hashes,
    parse_sev_metadata,
    sev_es_reset_eip,
    sev_hashes_table_location,
)
from builder.measure.sev_hashes import KernelHashes
from builder.measure.snp import SnpParams, measure

oracle_ovmf = pytest.importorskip("sevsnpmeasure.ovmf")

FIXTURES = ["ovmf_AmdSev_suffix.bin", "ovmf_OvmfX64_suffix.bin"]


@pytest.fixture(scope="module")
def fixtures(vectors) -> dict[str, bytes]:
    return {n: (vectors / "snp/sev-snp-measure" / n).read_bytes() for n in FIXTURES}


def oracle_view(path) -> tuple:
    o = oracle_ovmf.OVMF(str(path))
    items = tuple((d.gpa, d.size, d.section_type_int) for d in o.metadata_items())
    loc = o.sev_hashes_table_gpa() if o.is_sev_hashes_table_supported() else None
    return items, loc, o.sev_es_reset_eip()


def my_view(fw: bytes) -> tuple:
    meta = parse_sev_metadata(fw)
    loc = sev_hashes_table_location(fw)
    return (tuple((s.gpa, s.size, int(s.type)) for s in meta.sections),
            loc.gpa if loc else None, sev_es_reset_eip(fw))


@pytest.mark.parametrize("name", FIXTURES)
def test_agrees_with_oracle_parser(vectors, fixtures, name):
    assert my_view(fixtures[name]) == oracle_view(vectors / "snp/sev-snp-measure" / name)


def test_kernel_hashes_support(fixtures):
    assert has_kernel_hashes(fixtures["ovmf_AmdSev_suffix.bin"])
    assert not has_kernel_hashes(fixtures["ovmf_OvmfX64_suffix.bin"])
    assert not has_kernel_hashes(bytes(8192))  # no footer table at all
    assert parse_sev_metadata(bytes(8192)) is None


@pytest.mark.slow
def test_debian_ovmf_agrees_with_oracle(debian_file, tmp_path):
    fw = debian_file("ovmf", "2025.02-8+deb13u1", "trixie", "usr/share/ovmf/OVMF.fd")
    p = tmp_path / "OVMF.fd"
    p.write_bytes(fw)
    assert my_view(fw) == oracle_view(p)
    meta = parse_sev_metadata(fw)
    assert meta is not None and not meta.has(SectionType.SNP_KERNEL_HASHES)
    assert not has_kernel_hashes(fw)


# --- malformed images -------------------------------------------------------------------------

def meta_offset(fw: bytes) -> int:
    return parse_sev_metadata(fw).offset


def patch(fw: bytes, off: int, data: bytes) -> bytes:
    return fw[:off] + data + fw[off + len(data):]


def test_truncated_and_unaligned(fixtures):
    fw = fixtures["ovmf_AmdSev_suffix.bin"]
    for bad in (fw[:-1], fw[1:], fw + b"\0", b"", fw[:100]):
        with pytest.raises(FormatError, match="offset 0x"):
            parse_sev_metadata(bad)


def test_metadata_pointer_outside_file(fixtures):
    fw = fixtures["ovmf_AmdSev_suffix.bin"]
    ptr = parse_footer_table(fw)[SEV_METADATA_OFFSET_GUID].offset
    for value in (len(fw) + 4096, 0, 2):
        with pytest.raises(FormatError, match=f"offset 0x{ptr:x}|offset 0x{len(fw) - 2:x}"):
            parse_sev_metadata(patch(fw, ptr, struct.pack("<I", value)))


def test_bad_signature_version_length(fixtures):
    fw = fixtures["ovmf_AmdSev_suffix.bin"]
    m = meta_offset(fw)
    with pytest.raises(FormatError, match=f"signature.*offset 0x{m:x}"):
        parse_sev_metadata(patch(fw, m, b"XSEV"))
    with pytest.raises(FormatError, match=f"version.*offset 0x{m + 8:x}"):
        parse_sev_metadata(patch(fw, m + 8, struct.pack("<I", 2)))
    with pytest.raises(FormatError, match=f"length.*offset 0x{m + 4:x}"):
        parse_sev_metadata(patch(fw, m + 12, struct.pack("<I", 1000)))


def test_unknown_section_type(fixtures):
    fw = fixtures["ovmf_AmdSev_suffix.bin"]
    sec = parse_sev_metadata(fw).sections[2]
    with pytest.raises(FormatError, match=f"unknown SEV metadata section type 0x7.*offset 0x{sec.offset + 8:x}"):
        parse_sev_metadata(patch(fw, sec.offset + 8, struct.pack("<I", 7)))


def test_overlapping_sections(fixtures):
    fw = fixtures["ovmf_AmdSev_suffix.bin"]
    secs = parse_sev_metadata(fw).sections
    # Move the SECRETS page into the first SEC_MEM range.
    with pytest.raises(FormatError, match=f"overlaps section SNP_SEC_MEM.*offset 0x{secs[2].offset:x}"):
        parse_sev_metadata(patch(fw, secs[2].offset, struct.pack("<I", secs[0].gpa + 0x1000)))


def test_unaligned_and_oversized_sections(fixtures):
    fw = fixtures["ovmf_AmdSev_suffix.bin"]
    secs = parse_sev_metadata(fw).sections
    with pytest.raises(FormatError, match="page aligned"):
        parse_sev_metadata(patch(fw, secs[0].offset, struct.pack("<I", secs[0].gpa + 8)))
    with pytest.raises(FormatError, match="single page"):
        parse_sev_metadata(patch(fw, secs[3].offset + 4, struct.pack("<I", 0x2000)))
    with pytest.raises(FormatError, match="overlaps the firmware"):
        parse_sev_metadata(patch(fw, secs[4].offset, struct.pack("<I", 0xFFFFF000)))


def test_short_footer_entries(fixtures):
    # A hashes-table entry with 2 bytes of data instead of 8.
    fw = build_image([(SEV_HASH_TABLE_RV_GUID, b"\x01\x02")])
    with pytest.raises(FormatError, match="offset 0x"):
        sev_hashes_table_location(fw)


def build_image(entries: list[tuple[uuid.UUID, bytes]], size: int = 8192) -> bytes:
    """A synthetic image with a footer GUID table holding ``entries``."""
    body = b""
    for guid, data in entries:
        body += data + struct.pack("<H", len(data) + 18) + guid.bytes_le
    table = body + struct.pack("<H", len(body) + 18) + FOOTER_GUID.bytes_le
    return bytes(size - 32 - len(table)) + table + bytes(32)


# --- property tests ---------------------------------------------------------------------------

def run_everything(fw: bytes) -> None:
    """Every parser and the digest itself; only CCBuildError may escape."""
    for f in (parse_sev_metadata, sev_hashes_table_location, sev_es_reset_eip, has_kernel_hashes):
        try:
            f(fw)
        except CCBuildError:
            pass
    for hashes in (None, KernelHashes.of(b"k", b"i", "c")):
        try:
            measure(fw, SnpParams(2, 0xA00F11, kernel_hashes=hashes))
        except CCBuildError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=9000))
def test_random_bytes(data):
    run_everything(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 4095), st.integers(0, 4095), st.binary(min_size=1, max_size=8))
def test_random_images_with_footer_guid(pos, length, junk):
    # Random images that do carry the footer GUID, so the table walk is exercised.
    fw = bytearray(4096)
    fw[4096 - 48:4096 - 32] = FOOTER_GUID.bytes_le
    struct.pack_into("<H", fw, 4096 - 50, length)
    fw[pos:pos + len(junk)] = junk[:4096 - pos]
    run_everything(bytes(fw))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_fixtures(fixtures, data):
    fw = bytearray(data.draw(st.sampled_from(sorted(fixtures.values()))))
    # Mutate the region holding the footer table and the SEV metadata.
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0xA80, 4095))
        fw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        fw = bytearray(4096 * data.draw(st.integers(0, 3))) + fw
    run_everything(bytes(fw))
