"""TCG definitions shared by the event-log parser (formats/ccel.py) and the expected-event model
(measure/tdx_events.py): event types, digest algorithm IDs, the UEFI variable event codec, and
the extend operation.

Sources (facts only): TCG PC Client Platform Firmware Profile (PFP) 1.05, section 10.4.1 table 9
(event types) and section 10.2.3 (UEFI_VARIABLE_DATA); TCG Algorithm Registry (TPM_ALG_ID);
Intel TDX module spec, TDG.MR.RTMR.EXTEND (``RTMR_new = SHA-384(RTMR_old | digest)`` from 48 zero
bytes); UEFI 2.10 section 38.4.1 (CC MR index 0 = MRTD, 1..4 = RTMR0..3).
"""

from __future__ import annotations

import enum
import hashlib
import struct
import uuid
from typing import Iterable, NamedTuple

from builder.errors import FormatError


class EventType(enum.IntEnum):
    """TCG PFP event types (table 9)."""

    EV_PREBOOT_CERT = 0x00000000
    EV_POST_CODE = 0x00000001
    EV_UNUSED = 0x00000002
    EV_NO_ACTION = 0x00000003
    EV_SEPARATOR = 0x00000004
    EV_ACTION = 0x00000005
    EV_EVENT_TAG = 0x00000006
    EV_S_CRTM_CONTENTS = 0x00000007
    EV_S_CRTM_VERSION = 0x00000008
    EV_CPU_MICROCODE = 0x00000009
    EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
    EV_TABLE_OF_DEVICES = 0x0000000B
    EV_COMPACT_HASH = 0x0000000C
    EV_IPL = 0x0000000D
    EV_IPL_PARTITION_DATA = 0x0000000E
    EV_NONHOST_CODE = 0x0000000F
    EV_NONHOST_CONFIG = 0x00000010
    EV_NONHOST_INFO = 0x00000011
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
    EV_POST_CODE2 = 0x00000013
    EV_EFI_EVENT_BASE = 0x80000000
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
    EV_EFI_VARIABLE_BOOT = 0x80000002
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
    EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
    EV_EFI_GPT_EVENT = 0x80000006
    EV_EFI_ACTION = 0x80000007
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
    EV_EFI_HANDOFF_TABLES = 0x80000009
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
    EV_EFI_HANDOFF_TABLES2 = 0x8000000B
    EV_EFI_VARIABLE_BOOT2 = 0x8000000C
    EV_EFI_GPT_EVENT2 = 0x8000000D
    EV_EFI_HCRTM_EVENT = 0x80000010
    EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
    EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
    EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2
    EV_EFI_SPDM_DEVICE_POLICY = 0x800000E3
    EV_EFI_SPDM_DEVICE_AUTHORITY = 0x800000E4


def event_type_name(event_type: int) -> str:
    """The PFP name of an event type, or its hex value."""
    try:
        return EventType(event_type).name
    except ValueError:
        return f"0x{event_type:08x}"


# Variable events (their data is a UEFI_VARIABLE_DATA).
VARIABLE_EVENTS = frozenset({EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, EventType.EV_EFI_VARIABLE_BOOT,
                             EventType.EV_EFI_VARIABLE_BOOT2, EventType.EV_EFI_VARIABLE_AUTHORITY})

# -- TCG algorithm registry (TPM_ALG_ID) -------------------------------------------------------
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D
TPM_ALG_SM3_256 = 0x0012
TPM_ALG_SHA3_256 = 0x0027
TPM_ALG_SHA3_384 = 0x0028
TPM_ALG_SHA3_512 = 0x0029
ALGORITHM_NAMES = {
    TPM_ALG_SHA1: "sha1", TPM_ALG_SHA256: "sha256", TPM_ALG_SHA384: "sha384",
    TPM_ALG_SHA512: "sha512", TPM_ALG_SM3_256: "sm3_256", TPM_ALG_SHA3_256: "sha3_256",
    TPM_ALG_SHA3_384: "sha3_384", TPM_ALG_SHA3_512: "sha3_512",
}


def algorithm_name(alg_id: int) -> str:
    return ALGORITHM_NAMES.get(alg_id, f"alg_0x{alg_id:04x}")


# -- RTMR extend (TDG.MR.RTMR.EXTEND) -----------------------------------------------------------
RTMR_SIZE = 48
RTMR_COUNT = 4
ZERO = bytes(RTMR_SIZE)


def extend(value: bytes, digest: bytes) -> bytes:
    """``SHA-384(value | digest)``; both 48 bytes."""
    if len(value) != RTMR_SIZE or len(digest) != RTMR_SIZE:
        raise ValueError("RTMR values and digests are 48 bytes (SHA-384)")
    return hashlib.sha384(value + digest).digest()


def replay(digests: Iterable[bytes], start: bytes = ZERO) -> bytes:
    """Extend ``start`` with each digest in turn."""
    value = start
    for d in digests:
        value = extend(value, d)
    return value


# -- UEFI_VARIABLE_DATA (PFP 10.2.3) ------------------------------------------------------------
class UefiVariableData(NamedTuple):
    """VariableName GUID | u64 UnicodeNameLength (characters, no NUL) | u64 VariableDataLength |
    UnicodeName (UTF-16LE) | VariableData."""
    vendor_guid: uuid.UUID
    name: str
    data: bytes


def uefi_variable_data(vendor: uuid.UUID, name: str, data: bytes | None) -> bytes:
    """Encode a UEFI_VARIABLE_DATA structure."""
    data = data or b""
    return (vendor.bytes_le + struct.pack("<QQ", len(name), len(data))
            + name.encode("utf-16-le") + data)


def parse_uefi_variable_data(event_data: bytes, exact: bool = True) -> UefiVariableData:
    """Decode a UEFI_VARIABLE_DATA. With ``exact`` the lengths must account for every byte (what a
    verifier needs); without, trailing bytes are ignored (for display). FormatError names the offset."""
    if len(event_data) < 32:
        raise FormatError("UEFI_VARIABLE_DATA shorter than its 32-byte header", len(event_data))
    vendor = uuid.UUID(bytes_le=bytes(event_data[:16]))
    nlen, dlen = struct.unpack_from("<QQ", event_data, 16)
    end = 32 + 2 * nlen + dlen
    if end > len(event_data) or (exact and end != len(event_data)):
        raise FormatError(f"UEFI_VARIABLE_DATA lengths ({nlen} characters, {dlen} bytes) do not "
                          f"match the event size ({len(event_data)} bytes)", 16)
    name = bytes(event_data[32:32 + 2 * nlen]).decode("utf-16-le", errors="replace")
    return UefiVariableData(vendor, name, bytes(event_data[32 + 2 * nlen:end]))
