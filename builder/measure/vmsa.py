"""The initial VMSA page of a vCPU, as each VMM sets it up before SNP_LAUNCH_UPDATE.

Layout: AMD64 APM Vol. 2, Table B-4 (VMSA / SEV-ES save area); the PSP measures the page as a
VMSA page (SEV-SNP ABI spec, PAGE_INFO page type 2). Register values are the reset state KVM and
QEMU set (KVM_SEV_INIT2 hosts, kernel >= 6.10), and the variants EC2 and GCE are known to use.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from builder.errors import CCBuildError

VMSA_SIZE = 4096
BSP_EIP = 0xFFFFFFF0  # reset vector of the bootstrap processor

# Segment registers: 16 bytes each (u16 selector, u16 attrib, u32 limit, u64 base).
SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS = 0x000, 0x010, 0x020, 0x030, 0x040, 0x050
SEG_GDTR, SEG_LDTR, SEG_IDTR, SEG_TR = 0x060, 0x070, 0x080, 0x090
OFF_EFER = 0x0D0
OFF_CR4 = 0x148
OFF_CR0 = 0x158
OFF_DR7 = 0x160
OFF_DR6 = 0x168
OFF_RFLAGS = 0x170
OFF_RIP = 0x178
OFF_G_PAT = 0x268
OFF_RDX = 0x310
OFF_SEV_FEATURES = 0x3B0
OFF_XCR0 = 0x3E8
OFF_MXCSR = 0x408
OFF_X87_FCW = 0x410

EFER_SVME = 0x1000      # KVM sets EFER.SVME
CR4_MCE = 0x40          # KVM sets CR4.MCE
CR0_ET = 0x10
DR7_RESET = 0x400
DR6_RESET = 0xFFFF0FF0
RFLAGS_RESET = 0x2
XCR0_X87 = 0x1
G_PAT_RESET = 0x0007040600070406  # APM Vol. 2, A.3
G_PAT_GCE = 0x00070106
MXCSR_RESET = 0x1F80
X87_FCW_RESET = 0x37F
RDX_FIXED = 0x600  # EC2 and GCE do not put the CPUID signature in RDX

SEG_LIMIT = 0xFFFF
ATTR_DATA = 0x93       # present, writable, accessed data segment
ATTR_DATA_NA = 0x92    # same, not accessed (EC2 ss)
ATTR_CODE = 0x9B       # present, readable, accessed code segment
ATTR_CODE_NA = 0x9A    # same, not accessed (EC2 BSP cs)
ATTR_LDT = 0x82
ATTR_TSS_BUSY = 0x8B
ATTR_TSS_16 = 0x83     # EC2 tr
CS_SELECTOR = 0xF000


class Vmm(str, enum.Enum):
    QEMU = "qemu"
    EC2 = "ec2"
    GCE = "gce"

    @classmethod
    def parse(cls, name: str) -> "Vmm":
        try:
            return cls(name.lower())
        except ValueError:
            raise CCBuildError(f"unknown VMM {name!r}", hint="one of qemu, ec2, gce") from None


@dataclass(frozen=True)
class VmsaParams:
    eip: int             # BSP_EIP for the BSP, the SEV-ES AP reset vector for the others
    sev_features: int    # guest features (SEV_FEATURES; 0x1 SNP active, 0x21 adds DebugSwap)
    vcpu_sig: int        # CPUID Fn0000_0001_EAX
    vmm: Vmm = Vmm.QEMU


def _seg(page: bytearray, off: int, selector: int, attrib: int, limit: int, base: int) -> None:
    struct.pack_into("<HHIQ", page, off, selector, attrib, limit, base)


def vmsa_page(p: VmsaParams) -> bytes:
    """The 4096-byte VMSA of one vCPU."""
    if not 0 <= p.sev_features < 1 << 64:
        raise CCBuildError(f"guest features 0x{p.sev_features:x} do not fit 64 bits")
    if not 0 <= p.eip < 1 << 32:
        raise CCBuildError(f"reset eip 0x{p.eip:x} does not fit 32 bits")
    vmm = Vmm(p.vmm)
    cs_attr, ss_attr, tr_attr = ATTR_CODE, ATTR_DATA, ATTR_TSS_BUSY
    g_pat, rdx, mxcsr, fcw = G_PAT_RESET, p.vcpu_sig, MXCSR_RESET, X87_FCW_RESET
    if vmm is Vmm.EC2:
        cs_attr = ATTR_CODE_NA if p.eip == BSP_EIP else ATTR_CODE
        ss_attr, tr_attr = ATTR_DATA_NA, ATTR_TSS_16
        rdx, mxcsr, fcw = RDX_FIXED, 0, 0
    elif vmm is Vmm.GCE:
        g_pat, rdx, mxcsr, fcw = G_PAT_GCE, RDX_FIXED, 0, 0

    page = bytearray(VMSA_SIZE)
    for off in (SEG_ES, SEG_DS, SEG_FS, SEG_GS):
        _seg(page, off, 0, ATTR_DATA, SEG_LIMIT, 0)
    _seg(page, SEG_CS, CS_SELECTOR, cs_attr, SEG_LIMIT, p.eip & 0xFFFF0000)
    _seg(page, SEG_SS, 0, ss_attr, SEG_LIMIT, 0)
    _seg(page, SEG_GDTR, 0, 0, SEG_LIMIT, 0)
    _seg(page, SEG_IDTR, 0, 0, SEG_LIMIT, 0)
    _seg(page, SEG_LDTR, 0, ATTR_LDT, SEG_LIMIT, 0)
    _seg(page, SEG_TR, 0, tr_attr, SEG_LIMIT, 0)
    for off, value in ((OFF_EFER, EFER_SVME), (OFF_CR4, CR4_MCE), (OFF_CR0, CR0_ET),
                       (OFF_DR7, DR7_RESET), (OFF_DR6, DR6_RESET), (OFF_RFLAGS, RFLAGS_RESET),
                       (OFF_RIP, p.eip & 0xFFFF), (OFF_G_PAT, g_pat), (OFF_RDX, rdx),
                       (OFF_SEV_FEATURES, p.sev_features), (OFF_XCR0, XCR0_X87)):
        struct.pack_into("<Q", page, off, value)
    struct.pack_into("<I", page, OFF_MXCSR, mxcsr)
    struct.pack_into("<H", page, OFF_X87_FCW, fcw)
    return bytes(page)
