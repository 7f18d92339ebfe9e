"""PE/COFF Authenticode image hash, as EDK2 computes it when it measures an image.

Microsoft "Windows Authenticode Portable Executable Signature Format" and PE/COFF spec appendix A;
EDK2 SecurityPkg DxeTpm2MeasureBootLib / Tcg2Dxe (and OvmfPkg TdTcg2Dxe) MeasureBootPeCoff.c:

1. hash the headers from 0 to the optional header's CheckSum, skip the 4-byte CheckSum;
2. hash up to the Certificate Table data directory entry (index 4), skip its 8 bytes (when the
   image has fewer than 5 directory entries there is nothing to skip);
3. hash the rest of the headers up to SizeOfHeaders;
4. hash each section with a non-zero SizeOfRawData, sorted by PointerToRawData;
5. if the file is longer than SizeOfHeaders + the sum of the raw sizes, hash the extra data from
   that sum up to (file size - certificate table size).

Padding: EDK2 measures exactly those bytes (no padding). Signing tools (pesign, sbsign) pad the
file to a multiple of 8 before appending the certificate table, and hash the same zero padding
when they compute the digest of an unpadded unsigned image; ``pad_to=8`` reproduces that. A
signed image is already padded, so both give the same digest there.
"""

from __future__ import annotations

import hashlib
import warnings

from builder.errors import FormatError

DIRECTORY_ENTRY_SECURITY = 4
_PE32_MAGIC = 0x10B
_PE32PLUS_MAGIC = 0x20B


def _load(image: bytes):
    import pefile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pefile.PE(data=image, fast_load=True)
        except pefile.PEFormatError as e:
            raise FormatError(f"not a PE image: {e}", 0) from None
        except Exception as e:  # pefile raises assorted errors on hostile input
            raise FormatError(f"malformed PE image: {type(e).__name__}: {e}", 0) from None


def authenticode_digest(image: bytes, algorithm: str = "sha384", pad_to: int = 0) -> bytes:
    """The Authenticode digest of a PE image (``sha384`` for TDX RTMR1, ``sha256`` for SB db).

    ``pad_to=0`` hashes exactly what EDK2 measures; ``pad_to=8`` adds the zero padding signing
    tools hash for an unsigned image whose length is not a multiple of 8.
    """
    pe = _load(image)
    size = len(image)
    try:
        opt = pe.OPTIONAL_HEADER
        magic = opt.Magic
        csum_off = opt.get_field_absolute_offset("CheckSum")
        size_of_headers = opt.SizeOfHeaders
        ndirs = opt.NumberOfRvaAndSizes
        dirs_off = opt.get_file_offset() + (0x60 if magic == _PE32_MAGIC else 0x70)
        sec_hdr_off = (pe.FILE_HEADER.get_file_offset() + 20
                       + pe.FILE_HEADER.SizeOfOptionalHeader)
        nsections = pe.FILE_HEADER.NumberOfSections
    except AttributeError:
        raise FormatError("PE image has no optional header", 0) from None
    if magic not in (_PE32_MAGIC, _PE32PLUS_MAGIC):
        raise FormatError(f"PE optional header magic 0x{magic:x} is neither PE32 nor PE32+",
                          opt.get_file_offset())
    if size_of_headers > size or csum_off + 4 > size_of_headers:
        raise FormatError(f"PE SizeOfHeaders 0x{size_of_headers:x} is inconsistent with the "
                          f"{size}-byte image", opt.get_field_absolute_offset("SizeOfHeaders"))
    h = hashlib.new(algorithm)
    image = memoryview(image)  # slices below hash in place: no copy of a large section
    h.update(image[:csum_off])
    cert_size = 0
    if ndirs <= DIRECTORY_ENTRY_SECURITY:
        h.update(image[csum_off + 4:size_of_headers])
    else:
        sec_entry = dirs_off + 8 * DIRECTORY_ENTRY_SECURITY
        if sec_entry + 8 > size_of_headers:
            raise FormatError("PE certificate table entry lies beyond SizeOfHeaders", sec_entry)
        h.update(image[csum_off + 4:sec_entry])
        h.update(image[sec_entry + 8:size_of_headers])
        cert_size = int.from_bytes(image[sec_entry + 4:sec_entry + 8], "little")
    if sec_hdr_off + 40 * nsections > size:
        raise FormatError(f"PE section table ({nsections} entries) runs past the end of the "
                          "image", sec_hdr_off)
    sections = []
    for i in range(nsections):
        off = sec_hdr_off + 40 * i
        raw_size = int.from_bytes(image[off + 16:off + 20], "little")
        raw_ptr = int.from_bytes(image[off + 20:off + 24], "little")
        if raw_size == 0:
            continue
        if raw_ptr + raw_size > size:
            raise FormatError(f"PE section {i} data 0x{raw_ptr:x}+0x{raw_size:x} lies outside "
                              f"the {size}-byte image", off + 16)
        sections.append((raw_ptr, i, raw_size))
    hashed = size_of_headers
    for raw_ptr, _, raw_size in sorted(sections):
        h.update(image[raw_ptr:raw_ptr + raw_size])
        hashed += raw_size
    end = size
    if size > hashed:
        if size < hashed + cert_size:
            raise FormatError(f"PE certificate table size 0x{cert_size:x} exceeds the data after "
                              "the sections", dirs_off + 8 * DIRECTORY_ENTRY_SECURITY)
        end = size - cert_size
        h.update(image[hashed:end])
    if pad_to and end % pad_to:
        h.update(bytes(pad_to - end % pad_to))
    return h.digest()
