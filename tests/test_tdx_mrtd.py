"""MRTD: published Debian vectors (slow, real packages) and a hand-derived synthetic TDVF."""

from __future__ import annotations

import hashlib

import pytest

from builder.formats.tdvf import parse_tdvf_metadata
from builder.measure.tdx_mrtd import mrtd
from helpers import synthetic_tdvf

# tests/vectors/README.md: MRTD (interleaved page adds), each agreed by two independent
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
