"""MRTD: published Debian vectors (slow, real packages) and a hand-derived synthetic TDVF."""

from __future__ import annotations

import hashlib
import struct
import uuid

import pytest

from builder.formats.tdvf import parse_tdvf_metadata
from builder.measure.tdx_mrtd import mrtd

# /work/shared/vectors/README.md: MRTD (interleaved page adds), each agreed by two independent
# implementations.
DEBIAN_MRTD = [
    ("ovmf", "2022.11-6+deb12u2", "bookworm", "usr/share/ovmf/OVMF.fd",
     "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057"
     "fb887fed0744d5631a212967fb231c47"),
    ("ovmf", "2025.02-8+deb13u1", "trixie", "usr/share/ovmf/OVMF.fd",
     "bdc6fb145880f06f30c8b346b8dce2a99d9351b56892df22f80fcf6574caa9f9"
     "c31df8e8576d53b4d0cd1c3f28910e11"),
    ("ovmf-inteltdx", "2026.08+ds-2", "sid", "usr/share/ovmf/OVMF.inteltdx.ms.fd",
     "a7a1f751abc454f9cbab198ca8d2edb2821935df525c74182b5e776cb0929e8c"
     "59aefecce725b0d08a5e9d3d3183bd08"),
]


@pytest.mark.slow
@pytest.mark.parametrize("package,version,suite,member,expected", DEBIAN_MRTD,
                         ids=[v[1] for v in DEBIAN_MRTD])
def test_debian_firmware_mrtd(debian_file, package, version, suite, member, expected):
    fw = debian_file(package, version, suite, member)
    meta = parse_tdvf_metadata(fw)
    assert meta is not None
    assert mrtd(fw, meta, "interleaved").hex() == expected
    assert mrtd(fw, meta, "two-pass").hex() != expected


# --- a synthetic TDVF, built here byte by byte ------------------------------------------------

def _guid(s: str) -> bytes:
    return uuid.UUID(s).bytes_le


def synthetic_tdvf() -> bytes:
    """An 16 KiB image: a 2-page BFV at 0xFFFFC000 (data at file offset 0x1000, MR.EXTEND), a
    1-page TD_HOB (no data), a 1-page PAGE.AUG TempMem; the descriptor in the last page, found
    through the footer table."""
    size = 0x4000
    img = bytearray(size)
    for i in range(0x2000):
        img[0x1000 + i] = (i * 7 + 3) & 0xFF
    desc_off = 0x3C00
    sections = [
        (0x1000, 0x2000, 0xFFFFC000 + 0x1000, 0x2000, 0, 1),   # BFV, MR.EXTEND
        (0, 0, 0x800000, 0x1000, 2, 0),                         # TD_HOB
        (0, 0, 0x900000, 0x1000, 3, 2),                         # TempMem, PAGE.AUG
    ]
    img[desc_off - 16:desc_off] = _guid("e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae")
    img[desc_off:desc_off + 16] = b"TDVF" + struct.pack("<III", 16 + 32 * 3, 1, 3)
    for i, s in enumerate(sections):
        struct.pack_into("<IIQQII", img, desc_off + 16 + 32 * i, *s)
    # footer table: [TDX entry: u32 offset-from-end | u16 len 22 | GUID][u16 total | footer GUID]
    end = size - 32
    entry = struct.pack("<I", size - desc_off) + struct.pack("<H", 22) + _guid(
        "e47a6535-984a-4798-865e-4685a7bf8ec2")
    footer = struct.pack("<H", 22 + 18) + _guid("96b582de-1fb2-45f7-baea-a366c55a082d")
    img[end - 18 - 22:end] = entry + footer
    return bytes(img)


def _rec(tag: bytes, gpa: int) -> bytes:
    return tag + bytes(16 - len(tag)) + gpa.to_bytes(8, "little") + bytes(104)


def test_synthetic_interleaved_and_two_pass_by_hand():
    fw = synthetic_tdvf()
    meta = parse_tdvf_metadata(fw)
    bfv = fw[0x1000:0x3000]
    base = 0xFFFFD000

    def extends(page: int) -> bytes:
        out = b""
        for c in range(16):
            gpa = base + page * 0x1000 + c * 256
            out += _rec(b"MR.EXTEND", gpa) + bfv[page * 0x1000 + c * 256:page * 0x1000 + c * 256 + 256]
        return out

    hob = _rec(b"MEM.PAGE.ADD", 0x800000)
    interleaved = (_rec(b"MEM.PAGE.ADD", base) + extends(0)
                   + _rec(b"MEM.PAGE.ADD", base + 0x1000) + extends(1) + hob)
    two_pass = (_rec(b"MEM.PAGE.ADD", base) + _rec(b"MEM.PAGE.ADD", base + 0x1000)
                + extends(0) + extends(1) + hob)
    assert len(interleaved) == len(two_pass) == 3 * 128 + 32 * 128 + 0x2000
    assert mrtd(fw, meta, "interleaved") == hashlib.sha384(interleaved).digest()
    assert mrtd(fw, meta, "two-pass") == hashlib.sha384(two_pass).digest()
    assert hashlib.sha384(interleaved).digest() != hashlib.sha384(two_pass).digest()
