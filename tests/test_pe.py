"""Authenticode digest vs the virt-firmware package (test-only oracle), Debian kernels signed and
unsigned; EDK2's no-padding rule; property test: only CCBuildError escapes."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings, strategies as st

from builder.errors import CCBuildError, FormatError
from builder.formats.pe import authenticode_digest
from helpers import authenticode_oracle as _oracle, minimal_pe

KERNELS = [
    # (package, version, suite, member, published sha256 prefix, published authenticode prefix)
    ("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", "bookworm-security",
     "boot/vmlinuz-6.1.0-56-cloud-amd64", "51349501", "85ac7473"),
    ("linux-image-6.1.0-56-cloud-amd64-unsigned", "6.1.192-2", "bookworm-security",
     "boot/vmlinuz-6.1.0-56-cloud-amd64", None, "85ac7473"),
    ("linux-image-6.12.117+deb13-cloud-amd64", "6.12.117-1", "trixie",
     "boot/vmlinuz-6.12.117+deb13-cloud-amd64", None, None),
]


@pytest.mark.slow
@pytest.mark.parametrize("package,version,suite,member,sha_prefix,auth_prefix", KERNELS,
                         ids=[k[0] for k in KERNELS])
def test_debian_kernel_matches_virt_firmware(debian_file, package, version, suite, member,
                                             sha_prefix, auth_prefix):
    image = debian_file(package, version, suite, member)
    if sha_prefix:
        assert hashlib.sha256(image).hexdigest().startswith(sha_prefix)
    for alg in ("sha384", "sha256"):
        assert authenticode_digest(image, alg, pad_to=8) == _oracle(image, alg)
    if len(image) % 8 == 0:  # no padding needed: EDK2's rule gives the same digest
        assert authenticode_digest(image, "sha384") == _oracle(image, "sha384")
    if auth_prefix:
        assert authenticode_digest(image).hex().startswith(auth_prefix)


def _by_hand(img: bytes, trailer_len: int, pad: int = 0) -> bytes:
    opt = 0x40 + 24
    h = hashlib.sha384()
    h.update(img[:opt + 64])
    h.update(img[opt + 68:opt + 112 + 32])
    h.update(img[opt + 112 + 40:0x200])
    h.update(img[0x200:0x400])   # .a (lower file offset first)
    h.update(img[0x400:0x600])   # .b
    h.update(img[0x600:0x600 + trailer_len])
    h.update(bytes(pad))
    return h.digest()


def test_minimal_pe_by_hand_sorted_sections_and_checksum():
    img = minimal_pe()
    assert authenticode_digest(img) == _by_hand(img, 0)
    changed = bytearray(img)
    struct.pack_into("<I", changed, 0x40 + 24 + 64, 0)  # CheckSum is not hashed
    assert authenticode_digest(bytes(changed)) == authenticode_digest(img)


def test_trailing_data_certificate_and_padding():
    trailer = b"TRAILER"  # 7 bytes: not a multiple of 8
    img = minimal_pe(trailer)
    assert authenticode_digest(img) == _by_hand(img, 7)            # EDK2: no padding
    assert authenticode_digest(img, pad_to=8) == _by_hand(img, 7, 1)
    assert authenticode_digest(img, pad_to=8) == _oracle(img, "sha384")
    signed = minimal_pe(trailer + b"\0", cert=b"C" * 16)
    assert authenticode_digest(signed) == _by_hand(signed, 8)      # cert table not hashed
    assert authenticode_digest(signed) == _oracle(signed, "sha384")


def test_malformed_pe_is_format_error():
    with pytest.raises(FormatError):
        authenticode_digest(b"not a pe at all" * 10)
    img = bytearray(minimal_pe())
    struct.pack_into("<I", img, 0x40 + 24 + 112 + 32 + 4, 0x10000)  # cert size > file
    img += b"x" * 8
    with pytest.raises(FormatError, match="certificate table"):
        authenticode_digest(bytes(img))


@settings(max_examples=200)
@given(st.data())
def test_property_only_project_errors(data):
    img = bytearray(minimal_pe(b"t" * 9))
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, 0x1FF))
        img[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(img)))
    try:
        authenticode_digest(bytes(img[:cut]) if data.draw(st.booleans()) else bytes(img))
    except CCBuildError:
        pass
