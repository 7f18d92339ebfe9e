"""The SEV hashes table QEMU writes into the KERNEL_HASHES page (``kernel-hashes=on``).

QEMU target/i386/sev.c (SevHashTable) and OVMF's BlobVerifierLib: a header
``GUID 9438d606-... | u16 length (168)`` followed by three entries ``GUID | u16 50 | SHA-256``
for the command line (bytes plus a trailing NUL), the initrd and the kernel, zero padded to a
multiple of 16 and placed at the table's offset inside a zeroed 4 KiB page.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

from builder.errors import CCBuildError

SEV_HASH_TABLE_HEADER_GUID = uuid.UUID("9438d606-4f22-4cc9-b479-a793d411fd21")
SEV_CMDLINE_ENTRY_GUID = uuid.UUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
SEV_INITRD_ENTRY_GUID = uuid.UUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
SEV_KERNEL_ENTRY_GUID = uuid.UUID("4de79437-abd2-427f-b835-d5b172d2045b")

ENTRY_SIZE = 16 + 2 + 32                 # 50
TABLE_SIZE = 16 + 2 + 3 * ENTRY_SIZE     # 168
PADDED_TABLE_SIZE = (TABLE_SIZE + 15) & ~15  # 176
PAGE_SIZE = 4096


def measured_cmdline(append: str | None) -> bytes:
    """The command-line bytes the table hashes: the UTF-8 of ``-append`` plus its trailing NUL
    (no -append: one NUL byte)."""
    return (append or "").encode() + b"\0"


@dataclass(frozen=True)
class KernelHashes:
    """SHA-256 digests of what QEMU direct-boots: kernel file, initrd file, command line."""

    kernel: bytes
    initrd: bytes
    cmdline: bytes

    @classmethod
    def of(cls, kernel: bytes, initrd: bytes | None = None,
           append: str | None = None) -> "KernelHashes":
        """Hash the raw kernel and initrd bytes and the command line plus its trailing NUL
        (no initrd: SHA-256 of nothing; no -append: SHA-256 of one NUL byte)."""
        return cls(hashlib.sha256(kernel).digest(), hashlib.sha256(initrd or b"").digest(),
                   hashlib.sha256(measured_cmdline(append)).digest())

    @classmethod
    def of_digests(cls, kernel_sha256: bytes, initrd_sha256: bytes | None = None,
                   append: str | None = None) -> "KernelHashes":
        """Like :meth:`of`, from the SHA-256 of the kernel and of the initrd (streamed by the
        caller: an initrd may be larger than what fits in memory)."""
        return cls(kernel_sha256,
                   hashlib.sha256(b"").digest() if initrd_sha256 is None else initrd_sha256,
                   hashlib.sha256(measured_cmdline(append)).digest())

    def table(self) -> bytes:
        """The padded table (176 bytes)."""
        out = SEV_HASH_TABLE_HEADER_GUID.bytes_le + struct.pack("<H", TABLE_SIZE)
        for guid, digest in ((SEV_CMDLINE_ENTRY_GUID, self.cmdline),
                             (SEV_INITRD_ENTRY_GUID, self.initrd),
                             (SEV_KERNEL_ENTRY_GUID, self.kernel)):
            if len(digest) != 32:
                raise CCBuildError(f"a SHA-256 digest has {len(digest)} bytes, expected 32")
            out += guid.bytes_le + struct.pack("<H", ENTRY_SIZE) + digest
        return out + bytes(PADDED_TABLE_SIZE - TABLE_SIZE)

    def page(self, offset_in_page: int) -> bytes:
        """A zeroed page holding the table at ``offset_in_page`` (the table gpa & 0xFFF)."""
        if not 0 <= offset_in_page <= PAGE_SIZE - PADDED_TABLE_SIZE:
            raise CCBuildError(f"SEV hashes table offset 0x{offset_in_page:x} leaves no room for "
                               f"the {PADDED_TABLE_SIZE}-byte table in its page")
        table = self.table()
        return bytes(offset_in_page) + table + bytes(PAGE_SIZE - offset_in_page - len(table))
