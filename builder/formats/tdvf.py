"""TDVF metadata: the table a TDX firmware image carries to tell the VMM which pages to add.

Intel "TDX Virtual Firmware Design Guide", section 11 (TDVF metadata). The footer GUID table entry
``TDX_METADATA_OFFSET_GUID`` holds a u32 counted from the END of the image; at that offset the
descriptor starts, and the 16 bytes before it are ``TDVF_METADATA_GUID``::

    TDVF_DESCRIPTOR   Signature "TDVF" | u32 Length | u32 Version (1) | u32 NumberOfSectionEntry
    TDVF_SECTION[n]   u32 DataOffset | u32 RawDataSize | u64 MemoryAddress | u64 MemoryDataSize
                      | u32 Type | u32 Attributes                                   (32 bytes each)

A section whose Attributes has MR.EXTEND set has its page contents extended into MRTD; PAGE.AUG
marks pages the VMM does not add (accepted later by the guest), so they are not measured at all.

Bounds (hostile images must not make the measurement allocate or loop without end):

- at most MAX_SECTIONS sections (OVMF's IntelTdx metadata has under a dozen, hand-written in
  OvmfPkg/ResetVector; the TD HOB builder does work per pair of sections);
- every section lies within the 52-bit guest-physical space (TDX module: GPAW is 48 or 52 bits);
- every section the VMM adds (not PAGE.AUG) lies below 4 GiB: a TD vCPU starts in 32-bit
  protected mode without paging (TDX module base spec, initial vCPU state) and TDVF's reset
  vector uses these pages (the image's BFV/CFV, mapped so the image ends at 4 GiB, and the TD_HOB
  and TempMem it runs on) before it can address anything higher; with no overlaps this bounds the
  PAGE.ADD records of an image at 2^20 (128 MiB of MRTD stream);
- the pages extended with MR.EXTEND carry the image's own contents (QEMU copies BFV/CFV from the
  image; hw/i386/tdvf.c requires raw data for them), so together they are at most the image's
  size: the MR.EXTEND stream is at most 1.5 times the image.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from builder.errors import FormatError
from builder.formats.bytesreader import take, u32, u64
from builder.formats.guid_table import TDX_METADATA_OFFSET_GUID, parse_footer_table

TDVF_METADATA_GUID = uuid.UUID("e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae")
TDVF_SIGNATURE = b"TDVF"
TDVF_VERSION = 1
DESCRIPTOR_SIZE = 16
SECTION_SIZE = 32
PAGE_SIZE = 0x1000

MAX_SECTIONS = 256
FOUR_GIB = 1 << 32
GPA_SPACE = 1 << 52

ATTR_MR_EXTEND = 0x1
ATTR_PAGE_AUG = 0x2
_KNOWN_ATTRS = ATTR_MR_EXTEND | ATTR_PAGE_AUG


class SectionType(enum.IntEnum):
    """TDVF_SECTION.Type values (TDVF design guide, table 11-3)."""

    BFV = 0
    CFV = 1
    TD_HOB = 2
    TEMP_MEM = 3
    PERM_MEM = 4
    PAYLOAD = 5
    PAYLOAD_PARAM = 6


@dataclass(frozen=True)
class TdvfSection:
    data_offset: int
    raw_size: int
    memory_address: int
    memory_size: int
    type: SectionType
    attributes: int
    entry_offset: int  # file offset of this 32-byte entry (for error messages)

    @property
    def mr_extend(self) -> bool:
        return bool(self.attributes & ATTR_MR_EXTEND)

    @property
    def page_aug(self) -> bool:
        return bool(self.attributes & ATTR_PAGE_AUG)

    @property
    def pages(self) -> int:
        return self.memory_size // PAGE_SIZE


@dataclass(frozen=True)
class TdvfMetadata:
    offset: int  # file offset of the "TDVF" descriptor
    sections: tuple[TdvfSection, ...]

    def of_type(self, t: SectionType) -> list[TdvfSection]:
        return [s for s in self.sections if s.type == t]


def _descriptor_offset(fw: bytes) -> int | None:
    entry = parse_footer_table(fw).get(TDX_METADATA_OFFSET_GUID)
    if entry is None:
        return None
    if len(entry.data) < 4:
        raise FormatError("TDX metadata offset entry is shorter than 4 bytes", entry.offset)
    from_end = u32(entry.data, len(entry.data) - 4, "TDX metadata offset")
    off = len(fw) - from_end
    if from_end == 0 or off < 16 or off + DESCRIPTOR_SIZE > len(fw):
        raise FormatError(f"TDX metadata offset 0x{from_end:x} (from the end) points outside "
                          f"the {len(fw)}-byte image", entry.offset)
    return off


def _parse_section(fw: bytes, pos: int) -> TdvfSection:
    raw_type = u32(fw, pos + 24, "TDVF section type")
    attrs = u32(fw, pos + 28, "TDVF section attributes")
    try:
        stype = SectionType(raw_type)
    except ValueError:
        raise FormatError(f"TDVF section has unknown type {raw_type}", pos + 24) from None
    s = TdvfSection(data_offset=u32(fw, pos, "TDVF section data offset"),
                    raw_size=u32(fw, pos + 4, "TDVF section raw size"),
                    memory_address=u64(fw, pos + 8, "TDVF section memory address"),
                    memory_size=u64(fw, pos + 16, "TDVF section memory size"),
                    type=stype, attributes=attrs, entry_offset=pos)
    name = f"TDVF section {stype.name}"
    if attrs & ~_KNOWN_ATTRS:
        raise FormatError(f"{name} has unknown attribute bits 0x{attrs & ~_KNOWN_ATTRS:x}",
                          pos + 28)
    if s.mr_extend and s.page_aug:
        raise FormatError(f"{name} is both MR.EXTEND and PAGE.AUG (an unadded page cannot be "
                          "extended)", pos + 28)
    if s.memory_address % PAGE_SIZE:
        raise FormatError(f"{name} memory address 0x{s.memory_address:x} is not 4 KiB aligned",
                          pos + 8)
    if s.memory_size % PAGE_SIZE or s.memory_size == 0:
        raise FormatError(f"{name} memory size 0x{s.memory_size:x} is not a positive multiple "
                          "of 4 KiB", pos + 16)
    if s.memory_address + s.memory_size > GPA_SPACE:
        raise FormatError(f"{name} memory range 0x{s.memory_address:x}+0x{s.memory_size:x} ends "
                          "beyond the 52-bit guest physical space", pos + 8)
    if not s.page_aug and s.memory_address + s.memory_size > FOUR_GIB:
        raise FormatError(f"{name} memory range 0x{s.memory_address:x}+0x{s.memory_size:x} is "
                          "added by the VMM but ends above 4 GiB, where a TD's 32-bit start "
                          "cannot reach it", pos + 8)
    if s.mr_extend and s.memory_size > len(fw):
        raise FormatError(f"{name} extends 0x{s.memory_size:x} bytes with MR.EXTEND, more than "
                          f"the {len(fw)}-byte image holds", pos + 16)
    if s.raw_size > s.memory_size:
        raise FormatError(f"{name} raw size 0x{s.raw_size:x} exceeds its memory size "
                          f"0x{s.memory_size:x}", pos + 4)
    if s.data_offset + s.raw_size > len(fw):
        raise FormatError(f"{name} data 0x{s.data_offset:x}+0x{s.raw_size:x} lies outside the "
                          f"{len(fw)}-byte image", pos)
    return s


def parse_tdvf_metadata(fw: bytes) -> TdvfMetadata | None:
    """Parse the TDVF metadata of a firmware image.

    Returns None when the image has no TDX metadata entry in its footer table (not a TDVF);
    raises FormatError when the entry is present but the metadata is malformed.
    """
    off = _descriptor_offset(fw)
    if off is None:
        return None
    guid = uuid.UUID(bytes_le=take(fw, off - 16, 16, "TDVF metadata GUID"))
    if guid != TDVF_METADATA_GUID:
        raise FormatError(f"TDVF metadata GUID missing (found {guid}, expected "
                          f"{TDVF_METADATA_GUID})", off - 16)
    if take(fw, off, 4, "TDVF signature") != TDVF_SIGNATURE:
        raise FormatError("TDVF descriptor signature is not 'TDVF'", off)
    length = u32(fw, off + 4, "TDVF descriptor length")
    version = u32(fw, off + 8, "TDVF descriptor version")
    count = u32(fw, off + 12, "TDVF section count")
    if version != TDVF_VERSION:
        raise FormatError(f"TDVF metadata version {version} is not supported (expected 1)",
                          off + 8)
    if count > MAX_SECTIONS:
        raise FormatError(f"TDVF metadata declares {count} sections; at most {MAX_SECTIONS} are "
                          "accepted (TDVF images have about ten)", off + 12)
    if length != DESCRIPTOR_SIZE + SECTION_SIZE * count:
        raise FormatError(f"TDVF descriptor length {length} does not match {count} sections",
                          off + 4)
    if off + length > len(fw):
        raise FormatError(f"TDVF descriptor ({length} bytes) runs past the end of the image",
                          off)
    sections = tuple(_parse_section(fw, off + DESCRIPTOR_SIZE + SECTION_SIZE * i)
                     for i in range(count))
    _check_overlaps(sections)
    extended = sum(s.memory_size for s in sections if s.mr_extend)
    if extended > len(fw):
        raise FormatError(f"TDVF sections extend 0x{extended:x} bytes with MR.EXTEND, more than "
                          f"the {len(fw)}-byte image holds", off + 12)
    return TdvfMetadata(offset=off, sections=sections)


def _check_overlaps(sections: tuple[TdvfSection, ...]) -> None:
    by_mem = sorted(sections, key=lambda s: s.memory_address)
    for a, b in zip(by_mem, by_mem[1:]):
        if b.memory_address < a.memory_address + a.memory_size:
            raise FormatError(f"TDVF sections {a.type.name} and {b.type.name} overlap in guest "
                              f"memory at 0x{b.memory_address:x}", b.entry_offset + 8)
    with_data = sorted((s for s in sections if s.raw_size), key=lambda s: s.data_offset)
    for a, b in zip(with_data, with_data[1:]):
        if b.data_offset < a.data_offset + a.raw_size:
            raise FormatError(f"TDVF sections {a.type.name} and {b.type.name} overlap in the "
                              f"image at 0x{b.data_offset:x}", b.entry_offset)


def has_tdvf_metadata(fw: bytes) -> bool:
    """True when the image carries valid TDVF metadata (a TDX-capable firmware)."""
    try:
        return parse_tdvf_metadata(fw) is not None
    except FormatError:
        return False
