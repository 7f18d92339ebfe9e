"""Intel TDX evidence: DCAP quotes (version 4 and 5) and the TDREPORT they are made from.

Sources (facts only): Intel TDX DCAP Quoting Library API, appendix "Quote format" (v4, v5);
Intel TDX Module ABI specification, TDREPORT_STRUCT, REPORTMACSTRUCT, TEE_TCB_INFO, TDINFO_STRUCT;
the TDX attribute bit names as the Linux kernel prints them (arch/x86/coco/tdx/debug.c).

Quote v4::

    0x000  header (48): u16 version | u16 attestation key type | u32 TEE type (0x81 = TDX) |
           u16 QE SVN | u16 PCE SVN | QE vendor ID (16) | user data (20)
    0x030  TD report body, TD 1.0 layout (584 bytes)
    0x278  u32 signature data length, then the signature data

Quote v5: after the header, ``u16 body type`` (2 = TD 1.0 body of 584 bytes, 3 = TD 1.5 body of 648
bytes) and ``u32 body size``; the body starts at 0x36.

TD report body (offsets within the body): TEE_TCB_SVN 0x00 (16), MRSEAM 0x10, MRSIGNERSEAM 0x40,
SEAMATTRIBUTES 0x70 (8), TDATTRIBUTES 0x78 (8), XFAM 0x80 (8), MRTD 0x88, MRCONFIGID 0xB8,
MROWNER 0xE8, MROWNERCONFIG 0x118, RTMR0..3 0x148/0x178/0x1A8/0x1D8, REPORTDATA 0x208 (64);
TD 1.5 adds TEE_TCB_SVN2 0x248 (16) and MRSERVICETD 0x258 (48).

Signature data (ECDSA attestation key): signature (64) | attestation public key (64) |
certification data (u16 type | u32 size | data). Type 6 (QE report certification data) holds
the QE report (384) | QE report signature (64) | u16 QE auth data size | QE auth data |
certification data again (type 5: the PCK certificate chain, PEM).

TDREPORT (1024 bytes): REPORTMACSTRUCT (256) | TEE_TCB_INFO (239) | reserved (17) | TDINFO (512).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from builder.errors import FormatError
from builder.formats.bytesreader import take, u16, u32

HEADER_SIZE = 0x30
TEE_TYPE_TDX = 0x81
TEE_TYPE_SGX = 0x00
ATTESTATION_KEY_TYPES = {2: "ECDSA-256-with-P-256", 3: "ECDSA-384-with-P-384"}
BODY_TYPES = {1: "SGX enclave report", 2: "TD report 1.0", 3: "TD report 1.5"}
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
V5_DESCRIPTOR_SIZE = 6  # u16 body type + u32 body size
MR_SIZE = 48

CERT_DATA_TYPES = {
    1: "PPID in plain text, CPUSVN, PCESVN",
    2: "PPID encrypted with RSA-2048-OAEP, CPUSVN, PCESVN",
    3: "PPID encrypted with RSA-3072-OAEP, CPUSVN, PCESVN",
    4: "PCK leaf certificate",
    5: "PCK certificate chain (PEM)",
    6: "QE report certification data",
    7: "platform manifest",
}
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6
ENCLAVE_REPORT_SIZE = 384

TDREPORT_SIZE = 1024
TDREPORT_TYPE_TDX = 0x81

# TD attribute bits (TDX module ABI; names as the Linux kernel prints them)
TD_ATTRIBUTE_BITS = {
    0: "DEBUG", 4: "HGS_PLUS_PROF", 5: "PERF_PROF", 6: "PMT_PROF", 16: "ICSSD", 27: "LASS",
    28: "SEPT_VE_DISABLE", 29: "MIGRATABLE", 30: "PKS", 31: "KL", 62: "TPA", 63: "PERFMON",
}


def td_attribute_names(attributes: bytes) -> list[str]:
    value = int.from_bytes(attributes, "little")
    names = []
    for bit in range(64):
        if value >> bit & 1:
            names.append(TD_ATTRIBUTE_BITS.get(bit, f"bit{bit}"))
    return names


# --- Data classes -----------------------------------------------------------------------------

@dataclass(frozen=True)
class QuoteHeader:
    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdMeasurements:
    """The fields a TD report body (in a quote) and a TDREPORT share."""
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None   # TD 1.5 only
    mrservicetd: bytes | None = None    # TD 1.5 only (SERVTD_HASH in a TDREPORT)

    @property
    def td_attribute_names(self) -> list[str]:
        return td_attribute_names(self.td_attributes)

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes[0] & 1)

    def to_json(self) -> dict:
        out = {
            "tee_tcb_svn": self.tee_tcb_svn.hex(), "mrseam": self.mrseam.hex(),
            "mrsignerseam": self.mrsignerseam.hex(), "seam_attributes": self.seam_attributes.hex(),
            "td_attributes": self.td_attributes.hex(),
            "td_attribute_names": self.td_attribute_names,
            "xfam": self.xfam.hex(), "mrtd": self.mrtd.hex(), "mrconfigid": self.mrconfigid.hex(),
            "mrowner": self.mrowner.hex(), "mrownerconfig": self.mrownerconfig.hex(),
        }
        for i, r in enumerate(self.rtmrs):
            out[f"rtmr{i}"] = r.hex()
        out["report_data"] = self.report_data.hex()
        if self.tee_tcb_svn2 is not None:
            out["tee_tcb_svn2"] = self.tee_tcb_svn2.hex()
        if self.mrservicetd is not None:
            out["mrservicetd"] = self.mrservicetd.hex()
        return out


@dataclass(frozen=True)
class EnclaveReport:
    """The SGX report of the quoting enclave (384 bytes)."""
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes
    raw: bytes


@dataclass(frozen=True)
class CertificationData:
    cert_type: int
    data: bytes
    offset: int  # file offset of the type field

    @property
    def type_name(self) -> str:
        return CERT_DATA_TYPES.get(self.cert_type, f"unknown ({self.cert_type})")


@dataclass(frozen=True)
class QuoteSignature:
    length: int
    signature: bytes          # ECDSA r|s (big-endian halves) over the signed area
    attestation_key: bytes    # raw x|y of the attestation public key
    certification: CertificationData
    qe_report: EnclaveReport | None = None          # with certification type 6
    qe_report_signature: bytes | None = None
    qe_auth_data: bytes | None = None
    pck_chain: CertificationData | None = None      # the inner certification data

    @property
    def pck_chain_pem(self) -> bytes | None:
        if self.pck_chain is not None and self.pck_chain.cert_type == CERT_TYPE_PCK_CHAIN:
            return self.pck_chain.data.rstrip(b"\0")
        return None


@dataclass(frozen=True)
class Quote:
    header: QuoteHeader
    body_type: int          # 2 or 3 (v4 quotes always carry a TD 1.0 body)
    body: TdMeasurements
    body_offset: int
    signature: QuoteSignature
    signed_area: bytes      # header + (v5 descriptor) + body: what the attestation key signed
    trailing: int           # bytes after the signature data (0 in a quote as produced)

    @property
    def version(self) -> int:
        return self.header.version

    def to_json(self) -> dict:
        h = self.header
        s = self.signature
        out = {
            "kind": "tdx-quote", "version": h.version,
            "attestation_key_type": h.attestation_key_type,
            "attestation_key_type_name": ATTESTATION_KEY_TYPES.get(h.attestation_key_type, "unknown"),
            "tee_type": h.tee_type, "qe_svn": h.qe_svn, "pce_svn": h.pce_svn,
            "qe_vendor_id": h.qe_vendor_id.hex(), "user_data": h.user_data.hex(),
            "body_type": self.body_type, "body_type_name": BODY_TYPES.get(self.body_type, "unknown"),
            "body": self.body.to_json(),
            "signature_data_length": s.length,
            "certification_data_type": s.certification.cert_type,
            "certification_data_type_name": s.certification.type_name,
            "trailing_bytes": self.trailing,
        }
        if s.qe_report is not None:
            out["qe_report"] = {"mrenclave": s.qe_report.mrenclave.hex(),
                                "mrsigner": s.qe_report.mrsigner.hex(),
                                "isv_prod_id": s.qe_report.isv_prod_id,
                                "isv_svn": s.qe_report.isv_svn}
        if s.pck_chain is not None:
            out["pck_certification_data_type"] = s.pck_chain.cert_type
            out["pck_certification_data_type_name"] = s.pck_chain.type_name
        return out


@dataclass(frozen=True)
class TdReport:
    """TDREPORT_STRUCT as returned by TDG.MR.REPORT (1024 bytes)."""
    report_type: int
    report_subtype: int
    report_version: int
    cpu_svn: bytes
    tee_tcb_info_hash: bytes
    tee_info_hash: bytes
    mac: bytes
    tcb_valid: bytes
    measurements: TdMeasurements   # seam_attributes = TEE_TCB_INFO.ATTRIBUTES, mrservicetd = SERVTD_HASH
    tee_tcb_info: bytes            # the 239 raw bytes (TEE_TCB_INFO_HASH = SHA-384 of these)
    td_info: bytes                 # the 512 raw bytes (TEE_INFO_HASH = SHA-384 of these)

    def to_json(self) -> dict:
        return {
            "kind": "tdreport", "report_type": self.report_type,
            "report_subtype": self.report_subtype, "report_version": self.report_version,
            "cpu_svn": self.cpu_svn.hex(), "tee_tcb_info_hash": self.tee_tcb_info_hash.hex(),
            "tee_info_hash": self.tee_info_hash.hex(), "mac": self.mac.hex(),
            "body": self.measurements.to_json(),
        }


# --- Parsers ----------------------------------------------------------------------------------

def _mr(data: bytes, off: int, what: str) -> bytes:
    return take(data, off, MR_SIZE, what)


def _parse_body(data: bytes, off: int, body_type: int) -> TdMeasurements:
    td15 = body_type == BODY_TYPE_TD15
    return TdMeasurements(
        tee_tcb_svn=take(data, off, 16, "TEE_TCB_SVN"),
        mrseam=_mr(data, off + 0x10, "MRSEAM"),
        mrsignerseam=_mr(data, off + 0x40, "MRSIGNERSEAM"),
        seam_attributes=take(data, off + 0x70, 8, "SEAMATTRIBUTES"),
        td_attributes=take(data, off + 0x78, 8, "TDATTRIBUTES"),
        xfam=take(data, off + 0x80, 8, "XFAM"),
        mrtd=_mr(data, off + 0x88, "MRTD"),
        mrconfigid=_mr(data, off + 0xB8, "MRCONFIGID"),
        mrowner=_mr(data, off + 0xE8, "MROWNER"),
        mrownerconfig=_mr(data, off + 0x118, "MROWNERCONFIG"),
        rtmrs=tuple(_mr(data, off + 0x148 + MR_SIZE * i, f"RTMR{i}") for i in range(4)),  # type: ignore[arg-type]
        report_data=take(data, off + 0x208, 64, "REPORTDATA"),
        tee_tcb_svn2=take(data, off + 0x248, 16, "TEE_TCB_SVN2") if td15 else None,
        mrservicetd=_mr(data, off + 0x258, "MRSERVICETD") if td15 else None,
    )


def _parse_enclave_report(data: bytes, off: int) -> EnclaveReport:
    raw = take(data, off, ENCLAVE_REPORT_SIZE, "QE report")
    return EnclaveReport(
        cpu_svn=raw[0:16], misc_select=struct.unpack_from("<I", raw, 16)[0],
        attributes=raw[48:64], mrenclave=raw[64:96], mrsigner=raw[128:160],
        isv_prod_id=struct.unpack_from("<H", raw, 256)[0],
        isv_svn=struct.unpack_from("<H", raw, 258)[0], report_data=raw[320:384], raw=raw,
    )


def _parse_cert_data(data: bytes, off: int, end: int, what: str) -> tuple[CertificationData, int]:
    ctype = u16(data, off, f"{what} type")
    size = u32(data, off + 2, f"{what} size")
    if off + 6 + size > end:
        raise FormatError(f"{what} of {size} bytes runs past the signature data "
                          f"(which ends at 0x{end:x})", off + 2)
    return CertificationData(ctype, take(data, off + 6, size, what), off), off + 6 + size


def _parse_signature(data: bytes, off: int) -> tuple[QuoteSignature, int]:
    length = u32(data, off, "signature data length")
    start = off + 4
    end = start + length
    if end > len(data):
        raise FormatError(f"signature data length {length} runs past the end of the quote "
                          f"({len(data)} bytes)", off)
    if length < 128 + 6:
        raise FormatError(f"signature data length {length} is below the 134 bytes of signature, "
                          "attestation key and certification data header", off)
    sig = take(data, start, 64, "quote signature")
    key = take(data, start + 64, 64, "attestation key")
    cert, cert_end = _parse_cert_data(data, start + 128, end, "certification data")
    if cert_end != end:
        raise FormatError(f"certification data ends at 0x{cert_end:x}, the signature data at "
                          f"0x{end:x}", start + 128)
    if cert.cert_type != CERT_TYPE_QE_REPORT:
        return QuoteSignature(length, sig, key, cert), end
    p = start + 128 + 6
    qe_report = _parse_enclave_report(data, p)
    qe_sig = take(data, p + ENCLAVE_REPORT_SIZE, 64, "QE report signature")
    p += ENCLAVE_REPORT_SIZE + 64
    auth_size = u16(data, p, "QE auth data size")
    if p + 2 + auth_size > end:
        raise FormatError(f"QE auth data of {auth_size} bytes runs past the signature data", p)
    auth = take(data, p + 2, auth_size, "QE auth data")
    pck, pck_end = _parse_cert_data(data, p + 2 + auth_size, end, "PCK certification data")
    if pck_end != end:
        raise FormatError(f"PCK certification data ends at 0x{pck_end:x}, the QE report "
                          f"certification data at 0x{end:x}", p + 2 + auth_size)
    return QuoteSignature(length, sig, key, cert, qe_report, qe_sig, auth, pck), end


def parse_quote_header(data: bytes) -> QuoteHeader:
    h = QuoteHeader(
        version=u16(data, 0, "quote version"),
        attestation_key_type=u16(data, 2, "attestation key type"),
        tee_type=u32(data, 4, "TEE type"),
        qe_svn=u16(data, 8, "QE SVN"), pce_svn=u16(data, 10, "PCE SVN"),
        qe_vendor_id=take(data, 12, 16, "QE vendor ID"),
        user_data=take(data, 28, 20, "user data"),
    )
    if h.version not in (4, 5):
        raise FormatError(f"quote version {h.version} is not supported (4 or 5)", 0)
    if h.tee_type != TEE_TYPE_TDX:
        raise FormatError(f"TEE type 0x{h.tee_type:x} is not TDX (0x81)", 4)
    return h


def parse_quote(data: bytes) -> Quote:
    """Parse a TDX quote (v4 or v5). Bytes after the signature data are counted in ``trailing``."""
    header = parse_quote_header(data)
    if header.version == 4:
        body_type, body_off = BODY_TYPE_TD10, HEADER_SIZE
        body_size = TD10_BODY_SIZE
    else:
        body_type = u16(data, HEADER_SIZE, "quote body type")
        body_size = u32(data, HEADER_SIZE + 2, "quote body size")
        body_off = HEADER_SIZE + V5_DESCRIPTOR_SIZE
        expected = {BODY_TYPE_TD10: TD10_BODY_SIZE, BODY_TYPE_TD15: TD15_BODY_SIZE}
        if body_type not in expected:
            raise FormatError(f"quote body type {body_type} "
                              f"({BODY_TYPES.get(body_type, 'unknown')}) is not a TD report body",
                              HEADER_SIZE)
        if body_size != expected[body_type]:
            raise FormatError(f"quote body size {body_size} does not match body type {body_type} "
                              f"({expected[body_type]} bytes)", HEADER_SIZE + 2)
    body = _parse_body(data, body_off, body_type)
    sig, end = _parse_signature(data, body_off + body_size)
    return Quote(header=header, body_type=body_type, body=body, body_offset=body_off,
                 signature=sig, signed_area=take(data, 0, body_off + body_size, "signed area"),
                 trailing=len(data) - end)


def parse_tdreport(data: bytes) -> TdReport:
    """Parse a TDREPORT_STRUCT (exactly 1024 bytes)."""
    if len(data) != TDREPORT_SIZE:
        raise FormatError(f"a TDREPORT is {TDREPORT_SIZE} bytes, this is {len(data)}",
                          min(len(data), TDREPORT_SIZE))
    rtype = data[0]
    if rtype != TDREPORT_TYPE_TDX:
        raise FormatError(f"report type 0x{rtype:02x} is not TDX (0x81)", 0)
    tcb = 256
    info = 512
    svn2 = take(data, tcb + 128, 16, "TEE_TCB_SVN2")
    version = data[2]
    m = TdMeasurements(
        tee_tcb_svn=take(data, tcb + 8, 16, "TEE_TCB_SVN"),
        mrseam=_mr(data, tcb + 24, "MRSEAM"),
        mrsignerseam=_mr(data, tcb + 72, "MRSIGNERSEAM"),
        seam_attributes=take(data, tcb + 120, 8, "TEE_TCB_INFO attributes"),
        td_attributes=take(data, info, 8, "TD attributes"),
        xfam=take(data, info + 8, 8, "XFAM"),
        mrtd=_mr(data, info + 16, "MRTD"),
        mrconfigid=_mr(data, info + 64, "MRCONFIGID"),
        mrowner=_mr(data, info + 112, "MROWNER"),
        mrownerconfig=_mr(data, info + 160, "MROWNERCONFIG"),
        rtmrs=tuple(_mr(data, info + 208 + MR_SIZE * i, f"RTMR{i}") for i in range(4)),  # type: ignore[arg-type]
        report_data=take(data, 128, 64, "REPORTDATA"),
        tee_tcb_svn2=svn2 if version >= 1 else None,
        mrservicetd=_mr(data, info + 400, "SERVTD_HASH"),
    )
    return TdReport(
        report_type=rtype, report_subtype=data[1], report_version=version,
        cpu_svn=take(data, 16, 16, "CPUSVN"), tee_tcb_info_hash=_mr(data, 32, "TEE_TCB_INFO_HASH"),
        tee_info_hash=_mr(data, 80, "TEE_INFO_HASH"), mac=take(data, 224, 32, "MAC"),
        tcb_valid=take(data, tcb, 8, "TEE_TCB_INFO valid"), measurements=m,
        tee_tcb_info=take(data, tcb, 239, "TEE_TCB_INFO"), td_info=take(data, info, 512, "TDINFO"),
    )


def looks_like_quote(data: bytes) -> bool:
    return (len(data) >= HEADER_SIZE and struct.unpack_from("<H", data, 0)[0] in (4, 5)
            and struct.unpack_from("<I", data, 4)[0] == TEE_TYPE_TDX)


def looks_like_tdreport(data: bytes) -> bool:
    return len(data) == TDREPORT_SIZE and data[0] == TDREPORT_TYPE_TDX


# --- Pretty print -----------------------------------------------------------------------------

def format_measurements(m: TdMeasurements, indent: str = "  ") -> list[str]:
    attrs = ", ".join(m.td_attribute_names) or "none"
    lines = [
        f"{indent}MRTD:          {m.mrtd.hex()}",
        *(f"{indent}RTMR{i}:         {r.hex()}" for i, r in enumerate(m.rtmrs)),
        f"{indent}MRCONFIGID:    {m.mrconfigid.hex()}",
        f"{indent}MROWNER:       {m.mrowner.hex()}",
        f"{indent}MROWNERCONFIG: {m.mrownerconfig.hex()}",
        f"{indent}REPORTDATA:    {m.report_data.hex()}",
        f"{indent}TD attributes: {m.td_attributes.hex()} ({attrs})",
        f"{indent}XFAM:          {m.xfam.hex()}",
        f"{indent}TEE_TCB_SVN:   {m.tee_tcb_svn.hex()}",
        f"{indent}MRSEAM:        {m.mrseam.hex()}",
        f"{indent}MRSIGNERSEAM:  {m.mrsignerseam.hex()}",
    ]
    if m.tee_tcb_svn2 is not None:
        lines.append(f"{indent}TEE_TCB_SVN2:  {m.tee_tcb_svn2.hex()}")
    if m.mrservicetd is not None:
        lines.append(f"{indent}MRSERVICETD:   {m.mrservicetd.hex()}")
    return lines


def format_quote(q: Quote) -> str:
    h = q.header
    s = q.signature
    lines = [
        f"TDX quote v{h.version}: {BODY_TYPES.get(q.body_type, q.body_type)}, attestation key "
        f"{ATTESTATION_KEY_TYPES.get(h.attestation_key_type, h.attestation_key_type)}, "
        f"QE SVN {h.qe_svn}, PCE SVN {h.pce_svn}, QE vendor {h.qe_vendor_id.hex()}",
        *format_measurements(q.body),
        f"  signature data: {s.length} bytes, certification data type {s.certification.cert_type} "
        f"({s.certification.type_name})",
    ]
    if s.pck_chain is not None:
        lines.append(f"  inner certification data type {s.pck_chain.cert_type} "
                     f"({s.pck_chain.type_name}), {len(s.pck_chain.data)} bytes")
    if q.trailing:
        lines.append(f"  {q.trailing} bytes follow the signature data")
    return "\n".join(lines)


def format_tdreport(r: TdReport) -> str:
    return "\n".join([
        f"TDREPORT: type 0x{r.report_type:02x} subtype {r.report_subtype} version "
        f"{r.report_version}, CPUSVN {r.cpu_svn.hex()}",
        *format_measurements(r.measurements),
    ])
