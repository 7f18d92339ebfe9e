"""SEV-related structures of an OVMF image: the SEV metadata, the SEV hashes-table location and
the SEV-ES AP reset vector, all found through the footer GUID table (see guid_table.py).

SEV metadata (OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm; AMD SEV-SNP ABI spec, SNP_LAUNCH_UPDATE):
a footer entry holds a u32 offset, counted from the end of the image, of the descriptor
``"ASEV" | u32 length | u32 version (1) | u32 count`` followed by ``count`` sections of
``u32 gpa | u32 size | u32 type``. Sections are measured in table order.

Every malformed input is a FormatError that names the offset; nothing else escapes.

Bounds: at most MAX_SECTIONS sections (OvmfSevMetadata.asm declares under ten; the checks and
the launch do work per pair of sections); every section is page aligned, lies below 4 GiB (the
gpa and size are u32 fields and SNP_LAUNCH_UPDATE pages of the initial image are below the
firmware, which ends at 4 GiB) and below the image itself, and no two overlap. So the pages a
launch measures are at most 2^20 whatever the metadata says.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from builder.errors import FormatError
from builder.formats.bytesreader import take, u32
from builder.formats.guid_table import (
    SEV_ES_RESET_BLOCK_GUID,
    SEV_HASH_TABLE_RV_GUID,
    SEV_METADATA_OFFSET_GUID,
    GuidEntry,
    parse_footer_table,
)

PAGE_SIZE = 4096
FOUR_GIB = 1 << 32

SEV_METADATA_SIGNATURE = b"ASEV"
SEV_METADATA_VERSION = 1
_HEADER_SIZE = 16
_SECTION_SIZE = 12
MAX_SECTIONS = 256


class SectionType(enum.IntEnum):
    """OVMF SEV metadata section types (OvmfSevMetadata.asm)."""

    SNP_SEC_MEM = 1
    SNP_SECRETS = 2
    CPUID = 3
    SVSM_CAA = 4
    SNP_KERNEL_HASHES = 0x10


# Sections that QEMU fills with exactly one special page.
_ONE_PAGE_TYPES = (SectionType.SNP_SECRETS, SectionType.CPUID, SectionType.SNP_KERNEL_HASHES)


@dataclass(frozen=True)
class SevSection:
    gpa: int
    size: int
    type: SectionType
    offset: int  # file offset of this section descriptor

    @property
    def pages(self) -> int:
        return self.size // PAGE_SIZE


@dataclass(frozen=True)
class SevMetadata:
    offset: int  # file offset of the "ASEV" descriptor
    version: int
    sections: tuple[SevSection, ...]

    def has(self, section_type: SectionType) -> bool:
        return any(s.type == section_type for s in self.sections)

    def of_type(self, section_type: SectionType) -> tuple[SevSection, ...]:
        return tuple(s for s in self.sections if s.type == section_type)


@dataclass(frozen=True)
class HashesTableLocation:
    """Where QEMU writes the SEV hashes table (footer entry SEV_HASH_TABLE_RV_GUID)."""

    gpa: int
    size: int


def firmware_gpa(fw: bytes) -> int:
    """Guest-physical address of the first byte: the image ends at 4 GiB."""
    check_firmware_size(fw)
    return FOUR_GIB - len(fw)


def check_firmware_size(fw: bytes) -> None:
    """The image is mapped page by page below 4 GiB: a whole number of pages, at most 4 GiB."""
    if len(fw) == 0 or len(fw) % PAGE_SIZE:
        raise FormatError(f"firmware size {len(fw)} is not a non-zero multiple of {PAGE_SIZE}",
                          len(fw) - len(fw) % PAGE_SIZE,
                          hint="give the single -bios image (e.g. OVMF.fd), not a truncated file")
    if len(fw) > FOUR_GIB:
        raise FormatError(f"firmware size {len(fw)} exceeds 4 GiB", FOUR_GIB)


def _table(fw: bytes) -> dict:
    check_firmware_size(fw)
    return parse_footer_table(fw)


def _entry_u32s(entry: GuidEntry, count: int, what: str) -> tuple[int, ...]:
    if len(entry.data) < 4 * count:
        raise FormatError(f"{what} entry holds {len(entry.data)} bytes, expected {4 * count}",
                          entry.offset)
    return tuple(u32(entry.data, 4 * i, what) for i in range(count))


def parse_sev_metadata(fw: bytes) -> SevMetadata | None:
    """Parse the SEV metadata of ``fw``; None when the image carries none."""
    entry = _table(fw).get(SEV_METADATA_OFFSET_GUID)
    if entry is None:
        return None
    (from_end,) = _entry_u32s(entry, 1, "SEV metadata offset")
    start = len(fw) - from_end
    if from_end == 0 or start < 0:
        raise FormatError(f"SEV metadata offset 0x{from_end:x} (from the end) points outside the "
                          f"firmware ({len(fw)} bytes)", entry.offset)
    signature = take(fw, start, 4, "SEV metadata signature")
    if signature != SEV_METADATA_SIGNATURE:
        raise FormatError(f"SEV metadata signature is {signature!r}, expected b'ASEV'", start)
    length = u32(fw, start + 4, "SEV metadata length")
    version = u32(fw, start + 8, "SEV metadata version")
    count = u32(fw, start + 12, "SEV metadata section count")
    if version != SEV_METADATA_VERSION:
        raise FormatError(f"SEV metadata version {version} is not supported (expected 1)", start + 8)
    if length < _HEADER_SIZE + _SECTION_SIZE * count or start + length > len(fw):
        raise FormatError(f"SEV metadata length {length} does not fit {count} sections inside the "
                          "firmware", start + 4)
    if count > MAX_SECTIONS:
        raise FormatError(f"SEV metadata declares {count} sections; at most {MAX_SECTIONS} are "
                          "accepted (OVMF declares under ten)", start + 12)
    sections: list[SevSection] = []
    for i in range(count):
        off = start + _HEADER_SIZE + _SECTION_SIZE * i
        gpa = u32(fw, off, "SEV metadata section gpa")
        size = u32(fw, off + 4, "SEV metadata section size")
        raw_type = u32(fw, off + 8, "SEV metadata section type")
        sections.append(_check_section(fw, gpa, size, raw_type, off, sections))
    return SevMetadata(start, version, tuple(sections))


def _check_section(fw: bytes, gpa: int, size: int, raw_type: int, off: int,
                   previous: list[SevSection]) -> SevSection:
    try:
        stype = SectionType(raw_type)
    except ValueError:
        raise FormatError(f"unknown SEV metadata section type 0x{raw_type:x}", off + 8,
                          hint="this firmware is newer than ccbuild knows how to measure") from None
    if size == 0 and stype in (SectionType.SNP_SEC_MEM, SectionType.SVSM_CAA):
        # An empty range (e.g. the IntelTdx build's SVSM_CAA at gpa 0): QEMU and the reference
        # tools validate no page for it, so it adds nothing to the launch digest.
        return SevSection(gpa, 0, stype, off)
    if size == 0 or gpa % PAGE_SIZE or size % PAGE_SIZE:
        raise FormatError(f"SEV metadata section {stype.name} gpa 0x{gpa:x} size 0x{size:x} is "
                          "empty or not page aligned", off)
    if gpa + size > FOUR_GIB:
        raise FormatError(f"SEV metadata section {stype.name} at 0x{gpa:x} size 0x{size:x} "
                          "crosses 4 GiB", off)
    if stype in _ONE_PAGE_TYPES and size != PAGE_SIZE:
        raise FormatError(f"SEV metadata section {stype.name} is 0x{size:x} bytes; only a single "
                          "page is measured the same way by QEMU and the reference tools", off + 4)
    fw_gpa = FOUR_GIB - len(fw)
    if gpa + size > fw_gpa:
        raise FormatError(f"SEV metadata section {stype.name} at 0x{gpa:x} overlaps the firmware "
                          f"image at 0x{fw_gpa:x}", off)
    for p in previous:
        if gpa < p.gpa + p.size and p.gpa < gpa + size:
            raise FormatError(f"SEV metadata section {stype.name} at 0x{gpa:x} overlaps section "
                              f"{p.type.name} at 0x{p.gpa:x}", off)
    return SevSection(gpa, size, stype, off)


def sev_hashes_table_location(fw: bytes) -> HashesTableLocation | None:
    """Location of the SEV hashes table; None when absent (or zero, as stock OvmfPkgX64 has it)."""
    entry = _table(fw).get(SEV_HASH_TABLE_RV_GUID)
    if entry is None:
        return None
    gpa, size = _entry_u32s(entry, 2, "SEV hashes table location")
    if gpa == 0:
        return None
    return HashesTableLocation(gpa, size)


def sev_es_reset_eip(fw: bytes) -> int | None:
    """The SEV-ES AP reset vector (u32 eip), or None when the image has none."""
    entry = _table(fw).get(SEV_ES_RESET_BLOCK_GUID)
    if entry is None:
        return None
    (eip,) = _entry_u32s(entry, 1, "SEV-ES reset block")
    return eip


def has_kernel_hashes(fw: bytes) -> bool:
    """True when the image can verify a kernel, initrd and command line (QEMU kernel-hashes=on):
    its SEV metadata has a SNP_KERNEL_HASHES section and its footer table a hashes-table location
    (only the AmdSevX64 build has both). Raises FormatError on a malformed image."""
    meta = parse_sev_metadata(fw)
    return (meta is not None and meta.has(SectionType.SNP_KERNEL_HASHES)
            and sev_hashes_table_location(fw) is not None)
