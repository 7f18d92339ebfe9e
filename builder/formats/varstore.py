"""EDK2 non-volatile variable store, as found in OVMF's configuration firmware volume (CFV).

EDK2 MdePkg/Include/Pi/PiFirmwareVolume.h and MdeModulePkg/Include/Guid/VariableFormat.h:
a firmware volume header ("_FVH" at offset 40, u16 HeaderLength at 48), then a
VARIABLE_STORE_HEADER (GUID | u32 Size | u8 Format 0x5A | u8 State 0xFE | 6 reserved bytes),
then variables, each 4-byte aligned: u16 StartId 0x55AA | u8 State | u8 reserved | u32 Attributes
| [u64 MonotonicCount | EFI_TIME (16) | u32 PubKeyIndex, authenticated stores only] | u32 NameSize
| u32 DataSize | VendorGuid | Name (UTF-16LE, NUL) | Data. A variable is live when its State is
VAR_ADDED (0x3F) or VAR_ADDED & VAR_IN_DELETED_TRANSITION (0x3E).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from builder.errors import FormatError
from builder.formats.bytesreader import take, u8, u16, u32

FVH_SIGNATURE = b"_FVH"
AUTH_VARIABLE_GUID = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
VARIABLE_GUID = uuid.UUID("ddcf3616-3275-4164-98b6-fe85707ffe7d")
VARIABLE_START_ID = 0x55AA
VAR_ADDED = 0x3F
VAR_ADDED_IN_DELETED_TRANSITION = 0x3E
_STORE_HEADER = 28


@dataclass(frozen=True)
class Variable:
    vendor: uuid.UUID
    name: str
    attributes: int
    data: bytes


def parse_varstore(fv: bytes, source: str | None = None) -> dict[tuple[uuid.UUID, str], Variable]:
    """Live variables of an EDK2 variable-store firmware volume, by (vendor GUID, name)."""
    if take(fv, 40, 4, "firmware volume signature") != FVH_SIGNATURE:
        raise FormatError("variable store is not a firmware volume (no _FVH)", 40, source)
    hdr = u16(fv, 48, "firmware volume header length")
    store_guid = uuid.UUID(bytes_le=take(fv, hdr, 16, "variable store GUID"))
    if store_guid == AUTH_VARIABLE_GUID:
        auth = True
    elif store_guid == VARIABLE_GUID:
        auth = False
    else:
        raise FormatError(f"unknown variable store GUID {store_guid}", hdr, source)
    size = u32(fv, hdr + 16, "variable store size")
    end = min(hdr + size, len(fv))
    if u8(fv, hdr + 20, "variable store format") != 0x5A:
        raise FormatError("variable store is not formatted", hdr + 20, source)
    head = 60 if auth else 32
    out: dict[tuple[uuid.UUID, str], Variable] = {}
    pos = (hdr + _STORE_HEADER + 3) & ~3
    while pos + head <= end and u16(fv, pos, "variable start id") == VARIABLE_START_ID:
        state = u8(fv, pos + 2, "variable state")
        attrs = u32(fv, pos + 4, "variable attributes")
        nsize = u32(fv, pos + head - 24, "variable name size")
        dsize = u32(fv, pos + head - 20, "variable data size")
        vendor = uuid.UUID(bytes_le=take(fv, pos + head - 16, 16, "variable vendor GUID"))
        if pos + head + nsize + dsize > end or nsize % 2:
            raise FormatError("variable runs past the end of the store", pos, source)
        raw_name = take(fv, pos + head, nsize, "variable name")
        try:
            name = raw_name.decode("utf-16-le").rstrip("\0")
        except UnicodeDecodeError:
            raise FormatError("variable name is not UTF-16", pos + head, source) from None
        if state in (VAR_ADDED, VAR_ADDED_IN_DELETED_TRANSITION):
            out[(vendor, name)] = Variable(vendor, name, attrs,
                                           take(fv, pos + head + nsize, dsize, "variable data"))
        pos = (pos + head + nsize + dsize + 3) & ~3
    return out
