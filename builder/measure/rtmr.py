"""RTMR extend: ``RTMR_new = SHA-384(RTMR_old | digest)``, starting from 48 zero bytes.

Intel TDX module spec, TDG.MR.RTMR.EXTEND. CC event logs (UEFI 2.10 section 38.4.1) name the
registers by MR index: 0 = MRTD, 1..4 = RTMR0..3.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

RTMR_SIZE = 48
ZERO = bytes(RTMR_SIZE)


def extend(value: bytes, digest: bytes) -> bytes:
    if len(value) != RTMR_SIZE or len(digest) != RTMR_SIZE:
        raise ValueError("RTMR values and digests are 48 bytes (SHA-384)")
    return hashlib.sha384(value + digest).digest()


def replay(digests: Iterable[bytes], start: bytes = ZERO) -> bytes:
    """Extend ``start`` with each digest in turn."""
    value = start
    for d in digests:
        value = extend(value, d)
    return value


def mr_index_to_rtmr(mr_index: int) -> int | None:
    """CC MR index -> RTMR number (None for MRTD, index 0)."""
    return mr_index - 1 if 1 <= mr_index <= 4 else None
