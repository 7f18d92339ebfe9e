"""SEV-SNP guest policy (SEV-SNP ABI spec, "GUEST_POLICY" structure; Linux psp-sev.h
SNP_POLICY_MASK_*): a u64 given at SNP_LAUNCH_START, copied into the ID block and the report.

Bits: 7:0 ABI_MINOR, 15:8 ABI_MAJOR, 16 SMT, 17 reserved (must be one), 18 MIGRATE_MA, 19 DEBUG,
20 SINGLE_SOCKET, 21 CXL_ALLOW, 22 MEM_AES_256_XTS, 23 RAPL_DIS, 24 CIPHERTEXT_HIDING_DRAM,
25 PAGE_SWAP_DISABLE, 63:26 reserved (must be zero).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from builder.errors import CCBuildError

POLICY_ABI_MINOR_SHIFT = 0
POLICY_ABI_MAJOR_SHIFT = 8
POLICY_RESERVED_MBO = 1 << 17

# Named single-bit fields in bit order.
POLICY_FLAG_BITS: dict[str, int] = {
    "smt": 16,
    "migrate_ma": 18,
    "debug": 19,
    "single_socket": 20,
    "cxl_allow": 21,
    "mem_aes_256_xts": 22,
    "rapl_dis": 23,
    "ciphertext_hiding_dram": 24,
    "page_swap_disable": 25,
}
_KNOWN_MASK = 0xFFFF | POLICY_RESERVED_MBO | sum(1 << b for b in POLICY_FLAG_BITS.values())

KATA_DEFAULT_POLICY = 0x30000  # SMT allowed, reserved bit 17 set, ABI 0.0


@dataclass(frozen=True)
class GuestPolicy:
    abi_major: int = 0
    abi_minor: int = 0
    smt: bool = True
    migrate_ma: bool = False
    debug: bool = False
    single_socket: bool = False
    cxl_allow: bool = False
    mem_aes_256_xts: bool = False
    rapl_dis: bool = False
    ciphertext_hiding_dram: bool = False
    page_swap_disable: bool = False

    def encode(self) -> int:
        for name in ("abi_major", "abi_minor"):
            v = getattr(self, name)
            if not 0 <= v <= 0xFF:
                raise CCBuildError(f"guest policy {name} {v} is out of range", hint="0..255")
        value = (self.abi_major << POLICY_ABI_MAJOR_SHIFT) | (self.abi_minor << POLICY_ABI_MINOR_SHIFT)
        value |= POLICY_RESERVED_MBO
        for name, bit in POLICY_FLAG_BITS.items():
            if getattr(self, name):
                value |= 1 << bit
        return value

    @classmethod
    def decode(cls, value: int) -> "GuestPolicy":
        if not 0 <= value < 1 << 64:
            raise CCBuildError(f"guest policy 0x{value:x} does not fit 64 bits")
        if value & ~_KNOWN_MASK:
            raise CCBuildError(f"guest policy 0x{value:x} sets reserved bits "
                               f"0x{value & ~_KNOWN_MASK:x}", hint="bits 63:26 must be zero")
        if not value & POLICY_RESERVED_MBO:
            raise CCBuildError(f"guest policy 0x{value:x} clears bit 17, which must be one",
                               hint="the Kata default is 0x30000")
        flags = {name: bool(value >> bit & 1) for name, bit in POLICY_FLAG_BITS.items()}
        return cls(abi_major=value >> POLICY_ABI_MAJOR_SHIFT & 0xFF,
                   abi_minor=value >> POLICY_ABI_MINOR_SHIFT & 0xFF, **flags)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
