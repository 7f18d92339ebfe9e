"""The AMD SEV-SNP attestation report (ATTESTATION_REPORT, 0x4A0 bytes).

Source (facts only): AMD SEV Secure Nested Paging Firmware ABI Specification (publication 56860),
table "ATTESTATION_REPORT Structure", "TCB_VERSION Structure", "GUEST_POLICY" and "PLATFORM_INFO".
Integers are little-endian.

======  ====  ====================================================================
offset  size  field
======  ====  ====================================================================
0x000   4     VERSION (2, 3 or 5 in published firmware)
0x004   4     GUEST_SVN
0x008   8     POLICY
0x010   16    FAMILY_ID
0x020   16    IMAGE_ID
0x030   4     VMPL
0x034   4     SIGNATURE_ALGO (1 = ECDSA P-384 with SHA-384)
0x038   8     CURRENT_TCB
0x040   8     PLATFORM_INFO
0x048   4     bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY (0 VCEK, 1 VLEK, 7 none)
0x050   64    REPORT_DATA
0x090   48    MEASUREMENT
0x0C0   32    HOST_DATA
0x0E0   48    ID_KEY_DIGEST
0x110   48    AUTHOR_KEY_DIGEST
0x140   32    REPORT_ID
0x160   32    REPORT_ID_MA
0x180   8     REPORTED_TCB
0x188   3     CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP (version >= 3; zero before)
0x1A0   64    CHIP_ID
0x1E0   8     COMMITTED_TCB
0x1E8   3     CURRENT_BUILD, CURRENT_MINOR, CURRENT_MAJOR
0x1EC   3     COMMITTED_BUILD, COMMITTED_MINOR, COMMITTED_MAJOR
0x1F0   8     LAUNCH_TCB
0x1F8   8     LAUNCH_MIT_VECTOR (version >= 5)
0x200   8     CURRENT_MIT_VECTOR (version >= 5)
0x2A0   512   SIGNATURE: R (72 bytes, little-endian) | S (72 bytes, little-endian) | reserved
======  ====  ====================================================================

The signature covers bytes 0x000..0x29F.

TCB_VERSION (8 bytes): Milan and Genoa: BOOT_LOADER, TEE, 4 reserved, SNP, MICROCODE.
Turin: FMC, BOOT_LOADER, TEE, SNP, 3 reserved, MICROCODE.
"""

from __future__ import annotations

import binascii
import re
import struct
from dataclasses import dataclass, field

from builder.errors import FormatError
from builder.formats.bytesreader import take, u8, u32, u64
from builder.formats.snp_policy import POLICY_FLAG_BITS

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIGNATURE_OFFSET = 0x2A0
SIG_COMPONENT_SIZE = 72
SUPPORTED_VERSIONS = (2, 3, 4, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1
# The SNP_GUEST_REQUEST response (MSG_REPORT_RSP): u32 status | u32 report size | 24 reserved | report
MSG_REPORT_RSP_HEADER = 0x20

SIGNING_KEYS = {0: "VCEK", 1: "VLEK", 7: "none"}

# GUEST_POLICY bit names (one table for the project: builder.formats.snp_policy)
POLICY_BITS = {bit: name.upper() for name, bit in POLICY_FLAG_BITS.items()} | {17: "RESERVED_1"}
PLATFORM_INFO_BITS = {
    0: "SMT_EN", 1: "TSME_EN", 2: "ECC_EN", 3: "RAPL_DIS", 4: "CIPHERTEXT_HIDING_EN",
    5: "ALIAS_CHECK_COMPLETE", 7: "TIO_EN",
}

# CPUID family (extended + base) and model ranges of the EPYC generations with SEV-SNP
PRODUCTS = (
    (0x19, range(0x00, 0x10), "milan"),
    (0x19, range(0x10, 0x20), "genoa"),
    (0x19, range(0xA0, 0xB0), "genoa"),   # Bergamo, Siena: Genoa keys
    (0x1A, range(0x00, 0x20), "turin"),
    (0x1A, range(0x90, 0xB0), "turin"),   # Turin dense
)


def product_from_cpuid(family: int, model: int) -> str | None:
    for fam, models, name in PRODUCTS:
        if family == fam and model in models:
            return name
    return None


@dataclass(frozen=True)
class TcbVersion:
    raw: int
    turin_layout: bool = False

    @property
    def parts(self) -> dict[str, int]:
        b = self.raw.to_bytes(8, "little")
        if self.turin_layout:
            return {"fmc": b[0], "bootloader": b[1], "tee": b[2], "snp": b[3], "microcode": b[7]}
        return {"bootloader": b[0], "tee": b[1], "snp": b[6], "microcode": b[7]}

    def __str__(self) -> str:
        parts = " ".join(f"{k}={v}" for k, v in self.parts.items())
        return f"0x{self.raw:016x} ({parts})"

    def to_json(self) -> dict:
        return {"raw": self.raw, "hex": f"{self.raw:016x}", **self.parts}


def _bit_names(value: int, names: dict[int, str]) -> list[str]:
    return [names.get(b, f"bit{b}") for b in range(64) if value >> b & 1]


@dataclass(frozen=True)
class SnpReport:
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current_version: tuple[int, int, int]    # (major, minor, build)
    committed_version: tuple[int, int, int]  # (major, minor, build)
    launch_tcb: TcbVersion
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: bytes   # 72 bytes, little-endian as stored
    signature_s: bytes
    raw: bytes = field(repr=False)  # the whole 0x4A0-byte report

    # --- decoded views ---
    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def r(self) -> int:
        return int.from_bytes(self.signature_r, "little")

    @property
    def s(self) -> int:
        return int.from_bytes(self.signature_s, "little")

    @property
    def author_key_en(self) -> bool:
        return bool(self.flags & 1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.flags >> 1 & 1)

    @property
    def signing_key(self) -> int:
        return self.flags >> 2 & 7

    @property
    def signing_key_name(self) -> str:
        return SIGNING_KEYS.get(self.signing_key, f"reserved ({self.signing_key})")

    @property
    def policy_abi(self) -> tuple[int, int]:
        return (self.policy >> 8 & 0xFF, self.policy & 0xFF)

    @property
    def policy_flags(self) -> list[str]:
        return _bit_names(self.policy & ~0xFFFF, POLICY_BITS)

    @property
    def debug(self) -> bool:
        return bool(self.policy >> POLICY_FLAG_BITS["debug"] & 1)

    @property
    def platform_info_flags(self) -> list[str]:
        return _bit_names(self.platform_info, PLATFORM_INFO_BITS)

    @property
    def product(self) -> str | None:
        """milan/genoa/turin from the CPUID fields (version >= 3), else None."""
        if self.cpuid_fam_id is None or self.cpuid_mod_id is None:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    def to_json(self) -> dict:
        out = {
            "kind": "snp-report", "version": self.version, "guest_svn": self.guest_svn,
            "policy": f"0x{self.policy:x}",
            "policy_decoded": {"abi_major": self.policy_abi[0], "abi_minor": self.policy_abi[1],
                               "flags": self.policy_flags, "debug": self.debug},
            "family_id": self.family_id.hex(), "image_id": self.image_id.hex(),
            "vmpl": self.vmpl, "signature_algo": self.signature_algo,
            "current_tcb": self.current_tcb.to_json(),
            "platform_info": f"0x{self.platform_info:x}",
            "platform_info_flags": self.platform_info_flags,
            "author_key_en": self.author_key_en, "mask_chip_key": self.mask_chip_key,
            "signing_key": self.signing_key_name,
            "report_data": self.report_data.hex(), "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(), "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(), "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(), "reported_tcb": self.reported_tcb.to_json(),
            "chip_id": self.chip_id.hex(), "committed_tcb": self.committed_tcb.to_json(),
            "current_version": "{}.{}.{}".format(*self.current_version),
            "committed_version": "{}.{}.{}".format(*self.committed_version),
            "launch_tcb": self.launch_tcb.to_json(),
            "signature_r": self.signature_r.hex(), "signature_s": self.signature_s.hex(),
        }
        if self.cpuid_fam_id is not None:
            out.update(cpuid_fam_id=self.cpuid_fam_id, cpuid_mod_id=self.cpuid_mod_id,
                       cpuid_step=self.cpuid_step, product=self.product)
        if self.launch_mit_vector is not None:
            out.update(launch_mit_vector=f"0x{self.launch_mit_vector:x}",
                       current_mit_vector=f"0x{self.current_mit_vector:x}")
        return out


_HEX_TEXT = re.compile(rb"^[0-9a-fA-F\s:]*$")


def decode_report_bytes(data: bytes) -> bytes:
    """The 0x4A0 report bytes from a binary report, an SNP_GUEST_REQUEST response (report after a
    0x20-byte header) or hex text (whitespace and colons ignored, optional 0x prefix)."""
    if len(data) == REPORT_SIZE:
        return bytes(data)
    if len(data) == MSG_REPORT_RSP_HEADER + REPORT_SIZE and \
            struct.unpack_from("<II", data, 0) == (0, REPORT_SIZE):
        return bytes(data[MSG_REPORT_RSP_HEADER:])
    text = bytes(data).strip()
    if text[:2] in (b"0x", b"0X"):
        text = text[2:]
    if text and _HEX_TEXT.match(text):
        digits = re.sub(rb"[\s:]", b"", text)
        if len(digits) % 2 == 0:
            raw = binascii.unhexlify(digits)
            if len(raw) == REPORT_SIZE:
                return raw
            raise FormatError(f"hex text decodes to {len(raw)} bytes, an SNP attestation report "
                              f"is {REPORT_SIZE} (0x{REPORT_SIZE:x})", 0)
    raise FormatError(f"an SNP attestation report is {REPORT_SIZE} (0x{REPORT_SIZE:x}) bytes or "
                      f"their hex text, this is {len(data)} bytes", min(len(data), REPORT_SIZE))


def looks_like_report(data: bytes) -> bool:
    try:
        raw = decode_report_bytes(data)
    except FormatError:
        return False
    return u32(raw, 0, "version") in SUPPORTED_VERSIONS


def parse_report(data: bytes) -> SnpReport:
    """Parse an SNP attestation report (binary, MSG_REPORT_RSP or hex text)."""
    raw = decode_report_bytes(data)
    version = u32(raw, 0x000, "VERSION")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"attestation report version {version} is not supported "
                          f"({', '.join(map(str, SUPPORTED_VERSIONS))})", 0)
    has_cpuid = version >= 3
    fam = u8(raw, 0x188, "CPUID_FAM_ID") if has_cpuid else None
    mod = u8(raw, 0x189, "CPUID_MOD_ID") if has_cpuid else None
    turin = fam is not None and mod is not None and product_from_cpuid(fam, mod) == "turin"

    def tcb(off: int, what: str) -> TcbVersion:
        return TcbVersion(u64(raw, off, what), turin)

    def ver(off: int) -> tuple[int, int, int]:
        return (raw[off + 2], raw[off + 1], raw[off])

    has_mit = version >= 5
    return SnpReport(
        version=version, guest_svn=u32(raw, 0x004, "GUEST_SVN"), policy=u64(raw, 0x008, "POLICY"),
        family_id=take(raw, 0x010, 16, "FAMILY_ID"), image_id=take(raw, 0x020, 16, "IMAGE_ID"),
        vmpl=u32(raw, 0x030, "VMPL"), signature_algo=u32(raw, 0x034, "SIGNATURE_ALGO"),
        current_tcb=tcb(0x038, "CURRENT_TCB"), platform_info=u64(raw, 0x040, "PLATFORM_INFO"),
        flags=u32(raw, 0x048, "signer info"),
        report_data=take(raw, 0x050, 64, "REPORT_DATA"),
        measurement=take(raw, 0x090, 48, "MEASUREMENT"),
        host_data=take(raw, 0x0C0, 32, "HOST_DATA"),
        id_key_digest=take(raw, 0x0E0, 48, "ID_KEY_DIGEST"),
        author_key_digest=take(raw, 0x110, 48, "AUTHOR_KEY_DIGEST"),
        report_id=take(raw, 0x140, 32, "REPORT_ID"), report_id_ma=take(raw, 0x160, 32, "REPORT_ID_MA"),
        reported_tcb=tcb(0x180, "REPORTED_TCB"),
        cpuid_fam_id=fam, cpuid_mod_id=mod,
        cpuid_step=u8(raw, 0x18A, "CPUID_STEP") if has_cpuid else None,
        chip_id=take(raw, 0x1A0, 64, "CHIP_ID"), committed_tcb=tcb(0x1E0, "COMMITTED_TCB"),
        current_version=ver(0x1E8), committed_version=ver(0x1EC),
        launch_tcb=tcb(0x1F0, "LAUNCH_TCB"),
        launch_mit_vector=u64(raw, 0x1F8, "LAUNCH_MIT_VECTOR") if has_mit else None,
        current_mit_vector=u64(raw, 0x200, "CURRENT_MIT_VECTOR") if has_mit else None,
        signature_r=take(raw, SIGNATURE_OFFSET, SIG_COMPONENT_SIZE, "signature R"),
        signature_s=take(raw, SIGNATURE_OFFSET + SIG_COMPONENT_SIZE, SIG_COMPONENT_SIZE,
                         "signature S"),
        raw=raw,
    )


def format_report(r: SnpReport) -> str:
    major, minor = r.policy_abi
    flags = ", ".join(r.policy_flags) or "none"
    lines = [
        f"SEV-SNP attestation report v{r.version}, signed by {r.signing_key_name}"
        + (f", CPU family 0x{r.cpuid_fam_id:x} model 0x{r.cpuid_mod_id:x} stepping "
           f"{r.cpuid_step} ({r.product or 'unknown product'})" if r.cpuid_fam_id is not None else ""),
        f"  MEASUREMENT:       {r.measurement.hex()}",
        f"  HOST_DATA:         {r.host_data.hex()}",
        f"  REPORT_DATA:       {r.report_data.hex()}",
        f"  POLICY:            0x{r.policy:x} (ABI >= {major}.{minor}; {flags})",
        f"  GUEST_SVN:         {r.guest_svn}",
        f"  VMPL:              {r.vmpl}",
        f"  FAMILY_ID:         {r.family_id.hex()}",
        f"  IMAGE_ID:          {r.image_id.hex()}",
        f"  ID_KEY_DIGEST:     {r.id_key_digest.hex()}",
        f"  AUTHOR_KEY_DIGEST: {r.author_key_digest.hex()} (AUTHOR_KEY_EN={int(r.author_key_en)})",
        f"  REPORT_ID:         {r.report_id.hex()}",
        f"  REPORT_ID_MA:      {r.report_id_ma.hex()}",
        f"  CHIP_ID:           {r.chip_id.hex()}"
        + (" (masked)" if r.mask_chip_key else ""),
        f"  PLATFORM_INFO:     0x{r.platform_info:x} ({', '.join(r.platform_info_flags) or 'none'})",
        f"  CURRENT_TCB:       {r.current_tcb}",
        f"  REPORTED_TCB:      {r.reported_tcb}",
        f"  COMMITTED_TCB:     {r.committed_tcb}",
        f"  LAUNCH_TCB:        {r.launch_tcb}",
        "  firmware:          current {}.{}.{}, committed {}.{}.{}".format(
            *r.current_version, *r.committed_version),
    ]
    if r.launch_mit_vector is not None:
        lines.append(f"  MIT_VECTOR:        launch 0x{r.launch_mit_vector:x}, "
                     f"current 0x{r.current_mit_vector:x}")
    lines.append(f"  SIGNATURE_ALGO:    {r.signature_algo}"
                 + (" (ECDSA P-384 with SHA-384)" if r.signature_algo == 1 else ""))
    return "\n".join(lines)
