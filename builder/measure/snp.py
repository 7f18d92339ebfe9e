"""SEV-SNP launch digest: the guest-context (GCTX) page-update chain the PSP computes while the VMM
adds pages with SNP_LAUNCH_UPDATE.

AMD SEV-SNP ABI spec, "SNP_LAUNCH_UPDATE" and Table "PAGE_INFO": for every 4 KiB page,
``LD = SHA-384(PAGE_INFO)`` with PAGE_INFO (0x70 bytes) = ``DIGEST_CUR (48) | CONTENTS (48) |
u16 LENGTH 0x70 | u8 PAGE_TYPE | u8 IMI_PAGE | u8 VMPL3_PERMS | u8 VMPL2_PERMS | u8 VMPL1_PERMS |
u8 reserved | u64 GPA``; CONTENTS is SHA-384 of the page for NORMAL and VMSA pages, zero otherwise.
The chain starts from 48 zero bytes.

Order of the QEMU launch: the whole firmware image (NORMAL pages ending at 4 GiB), then each SEV
metadata section in table order, then one VMSA per vCPU (BSP first) at VMSA_GPA. EC2 measures the
CPUID page after all other sections; GCE adds SEC_MEM as UNMEASURED pages.

Everything here is a pure function of bytes and one frozen parameters object.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass, field

from builder.errors import CCBuildError
from builder.formats.ovmf import (
    PAGE_SIZE,
    SectionType,
    SevMetadata,
    SevSection,
    firmware_gpa,
    parse_sev_metadata,
    sev_es_reset_eip,
    sev_hashes_table_location,
)
from builder.measure.cpu import vcpu_type as resolve_vcpu_type
from builder.measure.sev_hashes import PADDED_TABLE_SIZE, KernelHashes
from builder.measure.vmsa import BSP_EIP, Vmm, VmsaParams, vmsa_page

LD_SIZE = 48
PAGE_INFO_LENGTH = 0x70
# The RMP records a VMSA page at GPA (u64)-1, page aligned and with bits above 51 cleared.
VMSA_GPA = 0xFFFFFFFFF000
# KVM_MAX_VCPUS on x86-64.
MAX_VCPUS = 4096
SEV_FEATURES_SNP_ACTIVE = 0x1

_ZERO_LD = bytes(LD_SIZE)
_TAIL = struct.Struct("<HBBBBBBQ")  # LENGTH, PAGE_TYPE, IMI_PAGE, VMPL3/2/1_PERMS, reserved, GPA
_sha384 = hashlib.sha384


class PageType(enum.IntEnum):
    """SNP_LAUNCH_UPDATE page types (SEV-SNP ABI spec, PAGE_TYPE)."""

    NORMAL = 1
    VMSA = 2
    ZERO = 3
    UNMEASURED = 4
    SECRETS = 5
    CPUID = 6


@dataclass(frozen=True)
class SnpParams:
    """Everything but the firmware bytes that the launch digest depends on."""

    vcpus: int
    vcpu_sig: int
    vmm: Vmm = Vmm.QEMU
    guest_features: int = SEV_FEATURES_SNP_ACTIVE
    kernel_hashes: KernelHashes | None = None
    ovmf_hash: bytes | None = None  # firmware-only digest to start from (mode snp:ovmf-hash)


@dataclass(frozen=True)
class PageOp:
    """A run of consecutive page updates of one kind."""

    type: str      # PageType name
    gpa: int       # first gpa
    pages: int
    section: str   # firmware, a metadata section type, vmsa-bsp, vmsa-ap

    def as_dict(self) -> dict:
        return {"type": self.type, "gpa": f"0x{self.gpa:x}", "pages": self.pages,
                "section": self.section}


@dataclass(frozen=True)
class SnpMeasurement:
    launch_digest: bytes
    transcript: tuple[PageOp, ...] = field(default=())


def page_info_suffix(page_type: PageType, gpa: int, contents: bytes = _ZERO_LD) -> bytes:
    """PAGE_INFO without its leading DIGEST_CUR: ``CONTENTS | LENGTH .. GPA`` (0x40 bytes).
    One step of the chain is ``SHA-384(DIGEST_CUR + suffix)``."""
    return contents + _TAIL.pack(PAGE_INFO_LENGTH, page_type, 0, 0, 0, 0, 0, gpa)


def page_info_digest(ld: bytes, page_type: PageType, gpa: int, contents: bytes = _ZERO_LD) -> bytes:
    """One step of the chain: SHA-384 of the PAGE_INFO built from the current digest."""
    return _sha384(ld + page_info_suffix(page_type, gpa, contents)).digest()


def vmsa_suffix(page_digest: bytes) -> bytes:
    """The PAGE_INFO suffix of one VMSA page update (the page's SHA-384 at VMSA_GPA)."""
    return page_info_suffix(PageType.VMSA, VMSA_GPA, page_digest)


class _Gctx:
    """The running launch digest, with a transcript of merged page operations."""

    __slots__ = ("ld", "ops")

    def __init__(self, seed: bytes = _ZERO_LD):
        self.ld = seed
        self.ops: list[PageOp] = []

    def _record(self, ptype: PageType, gpa: int, pages: int, section: str) -> None:
        last = self.ops[-1] if self.ops else None
        if (last and last.type == ptype.name and last.section == section
                and (ptype == PageType.VMSA or last.gpa + last.pages * PAGE_SIZE == gpa)):
            self.ops[-1] = PageOp(last.type, last.gpa, last.pages + pages, section)
        else:
            self.ops.append(PageOp(ptype.name, gpa, pages, section))

    def normal_pages(self, gpa: int, data: bytes, section: str) -> None:
        mv = memoryview(data)
        ld, suffix, sha = self.ld, page_info_suffix, _sha384
        for off in range(0, len(mv), PAGE_SIZE):
            ld = sha(ld + suffix(PageType.NORMAL, gpa + off,
                                 sha(mv[off:off + PAGE_SIZE]).digest())).digest()
        self.ld = ld
        self._record(PageType.NORMAL, gpa, len(mv) // PAGE_SIZE, section)

    def blank_pages(self, ptype: PageType, gpa: int, pages: int, section: str) -> None:
        ld, suffix, sha = self.ld, page_info_suffix, _sha384
        for i in range(pages):
            ld = sha(ld + suffix(ptype, gpa + i * PAGE_SIZE)).digest()
        self.ld = ld
        self._record(ptype, gpa, pages, section)

    def vmsa(self, page_digest: bytes, section: str) -> None:
        self.ld = page_info_digest(self.ld, PageType.VMSA, VMSA_GPA, page_digest)
        self._record(PageType.VMSA, VMSA_GPA, 1, section)


# --- firmware ------------------------------------------------------------------------------

def ovmf_hash(fw: bytes) -> bytes:
    """The firmware-only digest (mode ``snp:ovmf-hash``): the chain after the firmware pages."""
    g = _Gctx()
    g.normal_pages(firmware_gpa(fw), fw, "firmware")
    return g.ld


@dataclass(frozen=True)
class SnpFirmware:
    """What the launch needs from the image, checked once."""

    meta: SevMetadata
    ap_eip: int | None
    table_gpa: int | None  # None when the image cannot take kernel hashes
    gpa: int


def inspect_firmware(fw: bytes) -> SnpFirmware:
    """What a launch needs from ``fw`` (SEV metadata, AP reset vector, hashes-table gpa), checked:
    a firmware no SEV-SNP guest can launch from, or that QEMU could not fill, is refused."""
    meta = parse_sev_metadata(fw)
    if meta is None:
        raise CCBuildError("firmware has no SEV metadata, so no SEV-SNP guest can launch from it "
                           "and its digest would never be reported",
                           hint="use an OVMF build with SEV-SNP support (OvmfPkg/AmdSev/AmdSevX64.dsc)")
    loc = sev_hashes_table_location(fw)
    table_gpa = None
    sections = meta.of_type(SectionType.SNP_KERNEL_HASHES)
    if len(sections) > 1:
        raise CCBuildError(f"firmware has {len(sections)} KERNEL_HASHES sections; QEMU fills one",
                           f"offset 0x{sections[1].offset:x}")
    if sections and loc is not None:
        sec = sections[0]
        if not (sec.gpa <= loc.gpa and loc.gpa + PADDED_TABLE_SIZE <= sec.gpa + sec.size):
            raise CCBuildError(f"SEV hashes table at 0x{loc.gpa:x} lies outside the KERNEL_HASHES "
                               f"section at 0x{sec.gpa:x}")
        if loc.size < PADDED_TABLE_SIZE:
            raise CCBuildError(f"SEV hashes table area is {loc.size} bytes, smaller than the "
                               f"{PADDED_TABLE_SIZE}-byte table")
        table_gpa = loc.gpa
    return SnpFirmware(meta, sev_es_reset_eip(fw), table_gpa, firmware_gpa(fw))


def check_params(fwi: SnpFirmware, p: SnpParams) -> None:
    if not 1 <= p.vcpus <= MAX_VCPUS:
        raise CCBuildError(f"{p.vcpus} vCPUs is out of range", hint=f"1..{MAX_VCPUS}")
    if p.vcpus > 1 and fwi.ap_eip is None:
        raise CCBuildError("firmware has no SEV-ES AP reset vector, so only 1 vCPU can start")
    if not (0 <= p.guest_features < 1 << 64 and p.guest_features & SEV_FEATURES_SNP_ACTIVE):
        raise CCBuildError(f"guest features 0x{p.guest_features:x} lack bit 0 (SNPActive)",
                           hint="SEV-SNP guests always have it; the usual values are 0x1 and 0x21")
    if p.kernel_hashes is not None and fwi.table_gpa is None:
        raise CCBuildError("firmware has no KERNEL_HASHES section, so it cannot verify a kernel, "
                           "initrd or command line",
                           hint="use the AmdSevX64 OVMF build (OvmfPkg/AmdSev/AmdSevX64.dsc)")
    if p.ovmf_hash is not None and len(p.ovmf_hash) != LD_SIZE:
        raise CCBuildError(f"ovmf hash has {len(p.ovmf_hash)} bytes, expected {LD_SIZE}")


def _section(g: _Gctx, s: SevSection, fwi: SnpFirmware, vmm: Vmm,
             hashes: KernelHashes | None) -> None:
    name = s.type.name
    if s.type in (SectionType.SNP_SEC_MEM, SectionType.SVSM_CAA):
        blank = PageType.UNMEASURED if (vmm is Vmm.GCE and s.type == SectionType.SNP_SEC_MEM) \
            else PageType.ZERO
        g.blank_pages(blank, s.gpa, s.pages, name)
    elif s.type == SectionType.SNP_SECRETS:
        g.blank_pages(PageType.SECRETS, s.gpa, 1, name)
    elif s.type == SectionType.CPUID:
        if vmm is not Vmm.EC2:
            g.blank_pages(PageType.CPUID, s.gpa, 1, name)
    elif s.type == SectionType.SNP_KERNEL_HASHES:
        if hashes is None:
            g.blank_pages(PageType.ZERO, s.gpa, s.pages, name)
        else:
            g.normal_pages(s.gpa, hashes.page(fwi.table_gpa & (PAGE_SIZE - 1)), name)


def _metadata(g: _Gctx, fwi: SnpFirmware, vmm: Vmm, hashes: KernelHashes | None) -> None:
    for s in fwi.meta.sections:
        _section(g, s, fwi, vmm, hashes)
    if vmm is Vmm.EC2:
        for s in fwi.meta.of_type(SectionType.CPUID):
            g.blank_pages(PageType.CPUID, s.gpa, 1, s.type.name)


def metadata_prefix(fwi: SnpFirmware, fw_ld: bytes, vmm: Vmm, hashes: KernelHashes | None) -> bytes:
    """The chain after the firmware pages (``fw_ld``, see :func:`ovmf_hash`) and every metadata
    page as ``vmm`` adds them: what all vCPU counts, CPU types and guest features extend."""
    g = _Gctx(fw_ld)
    _metadata(g, fwi, vmm, hashes)
    return g.ld


def vmsa_digests(fwi: SnpFirmware, vmm: Vmm, sig: int, features: int) -> tuple[bytes, bytes | None]:
    """SHA-384 of the BSP's and of an AP's VMSA page (None without an AP reset vector)."""
    bsp = _sha384(vmsa_page(VmsaParams(BSP_EIP, features, sig, vmm))).digest()
    ap = None
    if fwi.ap_eip is not None:
        ap = _sha384(vmsa_page(VmsaParams(fwi.ap_eip, features, sig, vmm))).digest()
    return bsp, ap


# --- one launch ----------------------------------------------------------------------------

def measure(fw: bytes, p: SnpParams) -> SnpMeasurement:
    """The launch digest of ``fw`` under ``p``, with the transcript of page operations."""
    fwi = inspect_firmware(fw)
    check_params(fwi, p)
    vmm = Vmm(p.vmm)
    if p.ovmf_hash is not None:
        g = _Gctx(p.ovmf_hash)
        g.ops.append(PageOp(PageType.NORMAL.name, fwi.gpa, len(fw) // PAGE_SIZE,
                            "firmware (given ovmf hash)"))
    else:
        g = _Gctx()
        g.normal_pages(fwi.gpa, fw, "firmware")
    _metadata(g, fwi, vmm, p.kernel_hashes)
    bsp, ap = vmsa_digests(fwi, vmm, p.vcpu_sig, p.guest_features)
    g.vmsa(bsp, "vmsa-bsp")
    for _ in range(p.vcpus - 1):
        g.vmsa(ap, "vmsa-ap")
    return SnpMeasurement(g.ld, tuple(g.ops))


def launch_digest(fw: bytes, p: SnpParams) -> bytes:
    return measure(fw, p).launch_digest


def measure_firmware_only(fw: bytes) -> SnpMeasurement:
    """Mode ``snp:ovmf-hash``: the digest after the firmware pages, for a firmware that an SNP
    guest can launch from (refused without SEV metadata)."""
    fwi = inspect_firmware(fw)
    g = _Gctx()
    g.normal_pages(fwi.gpa, fw, "firmware")
    return SnpMeasurement(g.ld, tuple(g.ops))


# --- the matrix ----------------------------------------------------------------------------

def snp_matrix(fw: bytes, hashes: KernelHashes | None, vcpus: list[int], vcpu_types: list[str],
               vmms: list[str], guest_features: list[int]) -> list[dict]:
    """Launch digests for every (VMM, vCPU type, guest features, vCPU count), in that nesting
    order (vCPU counts sorted, duplicates dropped). Entries: ``{"vcpus": int, "vcpu_type": str
    (canonical QEMU name), "vcpu_sig": "0x..", "vmm": "qemu"|"ec2"|"gce", "guest_features":
    "0x..", "launch_digest": 96 lowercase hex}``. ``hashes`` None means no kernel (firmware-only).

    The firmware pages are hashed once, the metadata once per VMM, each distinct VMSA page once,
    and each vCPU count extends the chain of the previous one (VMSAs that do not depend on the
    CPU type, as on EC2 and GCE, share one chain)."""
    fwi = inspect_firmware(fw)
    counts = sorted(set(vcpus))
    types = [resolve_vcpu_type(t) for t in vcpu_types]
    vmm_list = [Vmm.parse(v) if isinstance(v, str) else Vmm(v) for v in vmms]
    if not counts or not types or not vmm_list or not guest_features:
        raise CCBuildError("the SNP matrix needs at least one vCPU count, vCPU type, VMM and "
                           "guest-features value")
    for gf in guest_features:
        check_params(fwi, SnpParams(counts[-1], types[0].signature, vmm_list[0], gf, hashes))
    check_params(fwi, SnpParams(counts[0], types[0].signature, vmm_list[0], guest_features[0], hashes))

    fw_ld = ovmf_hash(fw)
    chains: dict[tuple, dict[int, bytes]] = {}
    out: list[dict] = []
    for vmm in vmm_list:
        prefix = metadata_prefix(fwi, fw_ld, vmm, hashes)
        for t in types:
            for gf in guest_features:
                bsp, ap = vmsa_digests(fwi, vmm, t.signature, gf)
                key = (vmm, bsp, ap)
                if key not in chains:
                    chains[key] = _extend(prefix, bsp, ap, counts)
                digests = chains[key]
                for n in counts:
                    out.append({"vcpus": n, "vcpu_type": t.name, "vcpu_sig": f"0x{t.signature:x}",
                                "vmm": vmm.value, "guest_features": f"0x{gf:x}",
                                "launch_digest": digests[n].hex()})
    return out


def _extend(prefix: bytes, bsp: bytes, ap: bytes | None, counts: list[int]) -> dict[int, bytes]:
    wanted = set(counts)
    ld = _sha384(prefix + vmsa_suffix(bsp)).digest()
    found = {1: ld} if 1 in wanted else {}
    if counts[-1] > 1:
        ap_tail = vmsa_suffix(ap)
        for n in range(2, counts[-1] + 1):
            ld = _sha384(ld + ap_tail).digest()
            if n in wanted:
                found[n] = ld
    return found
