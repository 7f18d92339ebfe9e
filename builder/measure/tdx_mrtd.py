"""MRTD: the TDX module's build-time measurement of the pages the VMM adds to a TD.

Intel TDX module base spec, TDH.MEM.PAGE.ADD and TDH.MR.EXTEND: MRTD is ONE running SHA-384 over
128-byte operation records, not an extend chain. TDH.MEM.PAGE.ADD feeds
``"MEM.PAGE.ADD" (zero-padded to 16) | u64 gpa | 104 zero bytes``; TDH.MR.EXTEND feeds, for each
256-byte chunk of a page, ``"MR.EXTEND" (padded to 16) | u64 chunk gpa | 104 zeros`` followed by
the 256 chunk bytes. TDH.MR.FINALIZE finishes the hash.

The VMM walks the TDVF sections in metadata order. PAGE.AUG sections are never added (nothing is
fed); MR.EXTEND sections have each added page extended. Whether the VMM extends a page right after
adding it ("interleaved": upstream KVM + QEMU >= 10.1 add and extend page by page) or adds all
pages of a section before extending them ("two-pass": some distribution TDX stacks) changes the
stream, so it is a parameter.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from builder.formats.tdvf import PAGE_SIZE, TdvfMetadata, TdvfSection

MR_EXTEND_CHUNK = 256
_RECORD = struct.Struct("<16sQ104x")  # 128 bytes
_PAGE_ADD_TAG = b"MEM.PAGE.ADD"
_MR_EXTEND_TAG = b"MR.EXTEND"


class PageAddOrder(str, enum.Enum):
    INTERLEAVED = "interleaved"
    TWO_PASS = "two-pass"


_BLOCK_PAGES = 64  # pages per buffer handed to the hashing thread


def _extend_parts(base_gpa: int, data: memoryview, parts: list) -> None:
    """Append the MR.EXTEND records and chunks of the pages in ``data`` (starting at base_gpa)."""
    pack = _RECORD.pack
    for off in range(0, len(data), MR_EXTEND_CHUNK):
        parts.append(pack(_MR_EXTEND_TAG, base_gpa + off))
        parts.append(data[off:off + MR_EXTEND_CHUNK])


_ZERO_PAGE = bytes(PAGE_SIZE)


def _page(fw: bytes, s: TdvfSection, off: int) -> bytes | memoryview:
    """Page ``off`` of the section's guest memory: raw data, zero-filled past RawDataSize
    (built page by page, so the zero tail is never allocated whole)."""
    if off + PAGE_SIZE <= s.raw_size:
        return memoryview(fw)[s.data_offset + off:s.data_offset + off + PAGE_SIZE]
    if off >= s.raw_size:
        return _ZERO_PAGE
    head = fw[s.data_offset + off:s.data_offset + s.raw_size]
    return head + bytes(PAGE_SIZE - len(head))


def _section_blocks(fw: bytes, s: TdvfSection, order: PageAddOrder) -> Iterator[bytes]:
    """Yield, in the VMM's order, the bytes a section feeds into MRTD, in blocks of at most
    _BLOCK_PAGES pages (memory stays bounded whatever the section size)."""
    if s.page_aug:
        return
    pack = _RECORD.pack
    step = _BLOCK_PAGES * PAGE_SIZE
    end = s.memory_address + s.memory_size
    if not s.mr_extend or order is PageAddOrder.TWO_PASS:
        for start in range(s.memory_address, end, step):
            yield b"".join([pack(_PAGE_ADD_TAG, g)
                            for g in range(start, min(start + step, end), PAGE_SIZE)])
    if not s.mr_extend:
        return
    for start in range(0, s.memory_size, step):
        parts: list[bytes | memoryview] = []
        for off in range(start, min(start + step, s.memory_size), PAGE_SIZE):
            gpa = s.memory_address + off
            if order is PageAddOrder.INTERLEAVED:
                parts.append(pack(_PAGE_ADD_TAG, gpa))
            _extend_parts(gpa, memoryview(_page(fw, s, off)), parts)
        yield b"".join(parts)


def mrtd(fw: bytes, meta: TdvfMetadata, order: PageAddOrder | str = PageAddOrder.INTERLEAVED
         ) -> bytes:
    """The 48-byte MRTD of firmware ``fw`` with parsed metadata ``meta``.

    The stream is built in blocks by this thread while one worker thread hashes the previous
    block (hashlib releases the GIL on large updates); updates stay strictly in order.
    """
    order = PageAddOrder(order)
    h = hashlib.sha384()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for s in meta.sections:
            for block in _section_blocks(fw, s, order):
                if pending is not None:
                    pending.result()
                pending = pool.submit(h.update, block)
        if pending is not None:
            pending.result()
    return h.digest()


def mrtd_summary(meta: TdvfMetadata) -> list[dict]:
    """Per-section page operations, for ``--json`` explanations."""
    out = []
    for s in meta.sections:
        out.append({"type": s.type.name, "gpa": f"0x{s.memory_address:x}", "pages": s.pages,
                    "page_add": 0 if s.page_aug else s.pages,
                    "mr_extend": s.pages if s.mr_extend else 0})
    return out
