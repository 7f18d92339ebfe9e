"""The OVMF footer GUID table shared by SEV and TDX firmware.

OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm: the table ends 32 bytes before the end of the
firmware image (the last bytes hold the reset vector). The footer is ``u16 total_length | GUID``
(``96b582de-1fb2-45f7-baea-a366c55a082d``); entries are walked backwards from it, each stored as
``data | u16 entry_length | GUID`` with entry_length counting data + 18 bytes.
GUIDs are in EFI mixed-endian byte order (``uuid.UUID(...).bytes_le``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from builder.errors import FormatError
from builder.formats.bytesreader import take, u16

FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
SEV_METADATA_OFFSET_GUID = uuid.UUID("dc886566-984a-4798-a75e-5585a7bf67cc")
SEV_HASH_TABLE_RV_GUID = uuid.UUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
SEV_ES_RESET_BLOCK_GUID = uuid.UUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
SEV_SECRET_BLOCK_GUID = uuid.UUID("4c2eb361-7d9b-4cc3-8081-127c90d3d294")
TDX_METADATA_OFFSET_GUID = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2")

# The table's footer starts this many bytes before the end of the image.
FOOTER_END_OFFSET = 32
_ENTRY_HEADER = 18  # u16 length + 16-byte GUID


@dataclass(frozen=True)
class GuidEntry:
    guid: uuid.UUID
    data: bytes
    offset: int  # file offset of the entry's data


def parse_footer_table(fw: bytes) -> dict[uuid.UUID, GuidEntry]:
    """Parse the footer GUID table of a firmware image.

    Returns the entries by GUID (an empty dict when the image has no table at all).
    Raises FormatError when a table is present but malformed.
    """
    end = len(fw) - FOOTER_END_OFFSET
    if end - _ENTRY_HEADER < 0:
        raise FormatError(f"firmware too small for a footer GUID table ({len(fw)} bytes)", 0)
    guid_off = end - 16
    if uuid.UUID(bytes_le=take(fw, guid_off, 16, "footer GUID")) != FOOTER_GUID:
        return {}
    total = u16(fw, guid_off - 2, "footer table length")
    start = end - total
    if total < _ENTRY_HEADER or start < 0:
        raise FormatError(f"footer GUID table length {total} is out of range", guid_off - 2)
    entries: dict[uuid.UUID, GuidEntry] = {}
    pos = end - _ENTRY_HEADER  # skip the footer entry itself
    while pos > start:
        gpos = pos - 16
        if gpos - 2 < start:
            raise FormatError("truncated entry in footer GUID table", max(gpos - 2, 0))
        guid = uuid.UUID(bytes_le=take(fw, gpos, 16, "footer table entry GUID"))
        length = u16(fw, gpos - 2, "footer table entry length")
        data_off = pos - length
        if length < _ENTRY_HEADER or data_off < start:
            raise FormatError(f"footer table entry {guid} has bad length {length}", gpos - 2)
        if guid in entries:
            raise FormatError(f"footer table entry {guid} appears twice", gpos)
        entries[guid] = GuidEntry(guid, take(fw, data_off, length - _ENTRY_HEADER, "entry data"),
                                  data_off)
        pos = data_off
    return entries
