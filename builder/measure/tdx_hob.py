"""The TD HOB list QEMU hands TDVF, which TDVF measures into RTMR0 (EV_EFI_HANDOFF_TABLES2).

QEMU hw/i386/tdvf-hob.c and target/i386/kvm/tdx.c: the list is a PHIT header
(EFI_HOB_HANDOFF_INFO_TABLE, version 9, memory fields zero, EfiEndOfHobList = guest address just
past the END_OF_HOB_LIST header) followed by one EFI_HOB_RESOURCE_DESCRIPTOR per RAM range, sorted
by address. RAM ranges are the e820 RAM entries (q35: [0, below_4g) and [4 GiB, 4 GiB + above_4g))
split so that the TD_HOB and TEMP_MEM sections, which the VMM adds, become SYSTEM_MEMORY (type 0)
and the rest UNACCEPTED memory (type 7); both carry attributes PRESENT|INITIALIZED|TESTED (7).
TDVF (OvmfPkg/IntelTdx TdxHelperLib) hashes the list up to, not including, the END header.
"""

from __future__ import annotations

import struct

from builder.formats.tdvf import SectionType, TdvfMetadata

EFI_HOB_TYPE_HANDOFF = 0x0001
EFI_HOB_TYPE_RESOURCE_DESCRIPTOR = 0x0003
EFI_HOB_HANDOFF_TABLE_VERSION = 9
EFI_RESOURCE_SYSTEM_MEMORY = 0
EFI_RESOURCE_MEMORY_UNACCEPTED = 7
RESOURCE_ATTRIBUTES = 0x7  # PRESENT | INITIALIZED | TESTED
END_HOB_SIZE = 8

_PHIT = struct.Struct("<HHI I I QQQQQ")  # 56 bytes
_RESOURCE = struct.Struct("<HHI 16s I I QQ")  # 48 bytes


def q35_ram_ranges(memory: int) -> list[tuple[int, int]]:
    """(start, end) RAM ranges of a q35 machine with ``memory`` bytes (QEMU hw/i386/pc_q35.c:
    below 4 GiB up to 0x80000000 when memory >= 0xB0000000, else up to 0xB0000000)."""
    lowmem = 0x80000000 if memory >= 0xB0000000 else 0xB0000000
    below = min(memory, lowmem)
    ranges = [(0, below)]
    if memory > below:
        ranges.append((1 << 32, (1 << 32) + memory - below))
    return ranges


def td_hob(meta: TdvfMetadata, memory: int) -> bytes:
    """The measured bytes of the TD HOB list for a q35 TD with ``memory`` bytes of RAM."""
    hob_sections = meta.of_type(SectionType.TD_HOB)
    if not hob_sections:
        raise ValueError("TDVF metadata has no TD_HOB section")
    hob_addr = hob_sections[0].memory_address
    entries: list[tuple[int, int, bool]] = [(s, e, False) for s, e in q35_ram_ranges(memory)]
    for sec in meta.sections:
        if sec.type not in (SectionType.TD_HOB, SectionType.TEMP_MEM):
            continue
        a, b = sec.memory_address, sec.memory_address + sec.memory_size
        out = []
        for s, e, accepted in entries:
            if accepted or e <= a or s >= b or not (s <= a and b <= e):
                out.append((s, e, accepted))
                continue
            if s < a:
                out.append((s, a, False))
            out.append((a, b, True))
            if b < e:
                out.append((b, e, False))
        entries = out
    entries.sort()
    body = b"".join(
        _RESOURCE.pack(EFI_HOB_TYPE_RESOURCE_DESCRIPTOR, _RESOURCE.size, 0, bytes(16),
                       EFI_RESOURCE_SYSTEM_MEMORY if acc else EFI_RESOURCE_MEMORY_UNACCEPTED,
                       RESOURCE_ATTRIBUTES, s, e - s)
        for s, e, acc in entries)
    end_of_list = hob_addr + _PHIT.size + len(body) + END_HOB_SIZE
    phit = _PHIT.pack(EFI_HOB_TYPE_HANDOFF, _PHIT.size, 0, EFI_HOB_HANDOFF_TABLE_VERSION, 0,
                      0, 0, 0, 0, end_of_list)
    return phit + body
