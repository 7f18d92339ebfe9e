"""TDVF metadata parser: rejections name offsets; property test: only CCBuildError escapes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from builder.errors import CCBuildError, FormatError
from builder.formats.tdvf import SectionType, has_tdvf_metadata, parse_tdvf_metadata
from helpers import synthetic_tdvf

DESC = 0x3C00


def _patch(fw: bytes, off: int, fmt: str, *vals) -> bytes:
    b = bytearray(fw)
    struct.pack_into(fmt, b, off, *vals)
    return bytes(b)


def test_parses_synthetic():
    meta = parse_tdvf_metadata(synthetic_tdvf())
    assert [s.type for s in meta.sections] == [SectionType.BFV, SectionType.TD_HOB,
                                                SectionType.TEMP_MEM]
    assert meta.sections[0].mr_extend and meta.sections[2].page_aug
    assert meta.offset == DESC


def test_no_footer_table_is_not_tdvf():
    assert parse_tdvf_metadata(bytes(0x4000)) is None
    assert not has_tdvf_metadata(bytes(0x4000))


@pytest.mark.parametrize("off,fmt,val,needle,where", [
    (DESC - 16, "<I", 0, "GUID missing", DESC - 16),
    (DESC + 8, "<I", 2, "version 2", DESC + 8),
    (DESC + 16 + 8, "<Q", 0xFFFFD800, "not 4 KiB aligned", DESC + 16 + 8),
    (DESC + 16 + 32 + 8, "<Q", 0xFFFFE000, "overlap in guest memory", DESC + 16 + 32 + 8),
    (DESC + 16, "<I", 0x3000, "outside the", DESC + 16),
    (DESC + 16 + 4, "<I", 0x3000, "exceeds its memory size", DESC + 16 + 4),
    (DESC + 16 + 24, "<I", 9, "unknown type 9", DESC + 16 + 24),
    (DESC + 16 + 28, "<I", 3, "both MR.EXTEND and PAGE.AUG", DESC + 16 + 28),
])
def test_rejections_name_offsets(off, fmt, val, needle, where):
    fw = _patch(synthetic_tdvf(), off, fmt, val)
    with pytest.raises(FormatError) as e:
        parse_tdvf_metadata(fw)
    assert needle in str(e.value)
    assert e.value.offset == where
    assert f"offset 0x{where:x}" in e.value.one_line()
    assert not has_tdvf_metadata(fw)


def test_overlapping_data_in_file():
    fw = synthetic_tdvf()
    # give the TD_HOB section raw data overlapping the BFV's file range
    fw = _patch(fw, DESC + 16 + 32, "<II", 0x1800, 0x800)
    with pytest.raises(FormatError, match="overlap in the image"):
        parse_tdvf_metadata(fw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_only_project_errors(data):
    fw = bytearray(synthetic_tdvf())
    for _ in range(data.draw(st.integers(1, 8))):
        region = data.draw(st.sampled_from([(DESC - 16, DESC + 16 + 96), (0x4000 - 72, 0x4000)]))
        pos = data.draw(st.integers(*region).filter(lambda p: p < 0x4000))
        fw[pos] = data.draw(st.integers(0, 255))
    try:
        parse_tdvf_metadata(bytes(fw))
    except CCBuildError:
        pass


@given(st.binary(max_size=300))
def test_property_random_bytes(blob):
    try:
        parse_tdvf_metadata(blob)
    except CCBuildError:
        pass
