"""Kernel stage: check that the image is an x86 bzImage with an EFI stub (a PE file) and read its
version from the setup header (Documentation/arch/x86/boot.rst: "HdrS" at 0x202, kernel_version
pointer at 0x20E, relative to 0x200)."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from builder.errors import CCBuildError

# TDX RTMR2 needs the EFI stub to measure the command line and initrd (Linux >= 6.9).
TDX_MIN_KERNEL = (6, 9)


@dataclass(frozen=True)
class KernelInfo:
    version: str          # e.g. "6.12.57+deb13-cloud-amd64 (debian-kernel@...) #1 SMP ..."
    release: tuple[int, int]
    boot_protocol: int    # e.g. 0x20f
    pe: bool


def inspect_kernel(data: bytes, where: str) -> KernelInfo:
    if len(data) < 0x1000 or data[0x202:0x206] != b"HdrS":
        raise CCBuildError("not an x86 bzImage (no 'HdrS' setup header at 0x202)", where)
    if data[:2] != b"MZ":
        raise CCBuildError("the kernel has no EFI stub (not a PE file: no 'MZ' at 0)", where,
                           "use a kernel built with CONFIG_EFI_STUB")
    (pe_off,) = struct.unpack_from("<I", data, 0x3C)
    if pe_off + 4 > len(data) or data[pe_off:pe_off + 4] != b"PE\0\0":
        raise CCBuildError("the kernel's PE header is missing", where)
    (proto,) = struct.unpack_from("<H", data, 0x206)
    (kver_ptr,) = struct.unpack_from("<H", data, 0x20E)
    version = ""
    if kver_ptr:
        start = kver_ptr + 0x200
        end = data.find(b"\0", start, start + 256)
        if end > start:
            version = data[start:end].decode("ascii", errors="replace")
    m = re.match(r"(\d+)\.(\d+)", version)
    release = (int(m[1]), int(m[2])) if m else (0, 0)
    return KernelInfo(version, release, proto, True)


def check_kernel_for_platform(info: KernelInfo, platform: str, where: str) -> None:
    if platform == "tdx" and info.release < TDX_MIN_KERNEL:
        raise CCBuildError(f"kernel {'.'.join(map(str, info.release))} is too old for TDX "
                           f"(the EFI stub measures cmdline and initrd into RTMR2 only from 6.9)",
                           where, "use a 6.12 kernel (linux-image-6.12.*-cloud-amd64)")
