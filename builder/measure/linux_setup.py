"""The bzImage setup-header fields QEMU's direct-kernel loader rewrites before the firmware sees
the image (QEMU hw/i386/x86.c ``x86_load_linux``), so a firmware that measures the kernel it gets
over fw_cfg measures the patched bytes. QEMU up to 9.2 does this for TDX guests too; QEMU >= 10.1
leaves a confidential guest's kernel untouched.

Patched (boot protocol field offsets, Documentation/arch/x86/boot.rst):
- 0x210 type_of_loader = 0xB0 (protocol >= 2.00);
- 0x211 loadflags |= CAN_USE_HEAP, 0x224 heap_end_ptr (u16) = cmdline_addr - real_addr - 0x200
  (protocol >= 2.01);
- 0x228 cmd_line_ptr = cmdline_addr (protocol >= 2.02; older: 0x20 = 0xA33F, 0x22 = offset);
- 0x1FA vid_mode from a ``vga=`` parameter;
- 0x218 ramdisk_image, 0x21C ramdisk_size when an initrd is given: the initrd is placed at
  ``(initrd_max - size) & ~4095`` where initrd_max is the kernel's limit clipped to
  ``below_4g_mem - acpi_data_size - 1``.
Not modelled: a ``-dtb`` setup_data entry (0x250), which TDX guests do not use.
"""

from __future__ import annotations

import struct

from builder.errors import CCBuildError

HDRS_MAGIC = 0x53726448  # "HdrS"
XLF_CAN_BE_LOADED_ABOVE_4G = 0x40
QEMU_ACPI_DATA_SIZE = 0x20000 + 0x8000  # hw/i386/pc.c: pcmc->acpi_data_size


def below_4g_memory(memory: int) -> int:
    lowmem = 0x80000000 if memory >= 0xB0000000 else 0xB0000000
    return min(memory, lowmem)


def _vga_mode(cmdline: str) -> int | None:
    i = cmdline.find("vga=")
    if i < 0:
        return None
    v = cmdline[i + 4:]
    if v.startswith("normal"):
        return 0xFFFF
    if v.startswith("ext"):
        return 0xFFFE
    if v.startswith("ask"):
        return 0xFFFD
    token = v.split(" ", 1)[0]
    try:
        return int(token, 0) & 0xFFFF
    except ValueError:
        raise CCBuildError(f"QEMU rejects the kernel parameter 'vga={token}'", "--append") from None


def qemu_patch_setup_header(kernel: bytes, cmdline: str, initrd_size: int | None,
                            memory: int, acpi_data_size: int = QEMU_ACPI_DATA_SIZE) -> bytes:
    """Return the kernel as QEMU's legacy loader hands it to the firmware."""
    if len(kernel) < 0x1000:
        raise CCBuildError(f"kernel image is too short ({len(kernel)} bytes)", "--kernel")
    k = bytearray(kernel)
    protocol = struct.unpack_from("<H", k, 0x206)[0] if struct.unpack_from(
        "<I", k, 0x202)[0] == HDRS_MAGIC else 0
    if protocol < 0x200 or not k[0x211] & 0x01:
        real_addr, cmdline_addr = 0x90000, 0x9A000 - (len(cmdline.encode()) + 1)
    elif protocol < 0x202:
        real_addr, cmdline_addr = 0x90000, 0x9A000 - (len(cmdline.encode()) + 1)
    else:
        real_addr, cmdline_addr = 0x10000, 0x20000
    if protocol >= 0x20C and struct.unpack_from("<H", k, 0x236)[0] & XLF_CAN_BE_LOADED_ABOVE_4G:
        initrd_max = 0xFFFFFFFF
    elif protocol >= 0x203:
        initrd_max = struct.unpack_from("<I", k, 0x22C)[0] or 0x37FFFFFF
    else:
        initrd_max = 0x37FFFFFF
    below = below_4g_memory(memory)
    if initrd_max >= below - acpi_data_size:
        initrd_max = below - acpi_data_size - 1
    if protocol >= 0x202:
        struct.pack_into("<I", k, 0x228, cmdline_addr)
    else:
        struct.pack_into("<HH", k, 0x20, 0xA33F, (cmdline_addr - real_addr) & 0xFFFF)
    vga = _vga_mode(cmdline)
    if vga is not None:
        struct.pack_into("<H", k, 0x1FA, vga)
    if protocol >= 0x200:
        k[0x210] = 0xB0
    if protocol >= 0x201:
        k[0x211] |= 0x80
        struct.pack_into("<H", k, 0x224, (cmdline_addr - real_addr - 0x200) & 0xFFFF)
    if initrd_size is not None:
        if protocol < 0x200:
            raise CCBuildError("kernel is too old (boot protocol < 2.00) to load an initrd",
                               "--kernel")
        if initrd_size >= initrd_max:
            raise CCBuildError(f"initrd ({initrd_size} bytes) is too large for QEMU to place "
                               f"below 0x{initrd_max:x}", "--initrd")
        struct.pack_into("<II", k, 0x218, (initrd_max - initrd_size) & ~4095, initrd_size)
    return bytes(k)
