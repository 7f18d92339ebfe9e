"""Bounds-checked little-endian reads over bytes: every out-of-range read is a FormatError
naming the offset, never an IndexError or struct.error."""

from __future__ import annotations

import struct

from builder.errors import FormatError


def take(data: bytes, offset: int, size: int, what: str) -> bytes:
    """Return ``data[offset:offset+size]`` or raise a FormatError naming ``what`` and the offset."""
    if offset < 0 or size < 0 or offset + size > len(data):
        raise FormatError(f"{what} ({size} bytes) lies outside the data ({len(data)} bytes)",
                          offset if offset >= 0 else None)
    return bytes(data[offset:offset + size])


def u8(data: bytes, offset: int, what: str) -> int:
    return take(data, offset, 1, what)[0]


def u16(data: bytes, offset: int, what: str) -> int:
    return struct.unpack("<H", take(data, offset, 2, what))[0]


def u32(data: bytes, offset: int, what: str) -> int:
    return struct.unpack("<I", take(data, offset, 4, what))[0]


def u64(data: bytes, offset: int, what: str) -> int:
    return struct.unpack("<Q", take(data, offset, 8, what))[0]
