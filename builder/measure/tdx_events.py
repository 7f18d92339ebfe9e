"""The events TDVF and the Linux EFI stub measure into RTMRs, and their digests.

Event types and data layouts: TCG PC Client Platform Firmware Profile (PFP) spec, section 10
(``UEFI_VARIABLE_DATA``: VariableName GUID | u64 UnicodeNameLength (characters, no NUL) | u64
VariableDataLength | UnicodeName (UTF-16LE) | VariableData). Which bytes are hashed follows EDK2
OvmfPkg/Tcg/TdTcg2Dxe: EV_EFI_VARIABLE_DRIVER_CONFIG hashes the whole UEFI_VARIABLE_DATA,
EV_EFI_VARIABLE_BOOT hashes only VariableData, EV_SEPARATOR hashes the u32 0, EV_EFI_ACTION hashes
the ASCII string without NUL.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

from builder.formats.tcg import EventType, uefi_variable_data


EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")

# EV_EFI_ACTION strings (TCG PFP section 10.4.4 / EDK2 MdePkg IndustryStandard/UefiTcgPlatform.h).
CALLING_EFI_APPLICATION = "Calling EFI Application from Boot Option"
EXIT_BOOT_SERVICES_INVOCATION = "Exit Boot Services Invocation"
EXIT_BOOT_SERVICES_SUCCEEDED = "Exit Boot Services Returned with Success"

SEPARATOR_DATA = b"\x00\x00\x00\x00"


def sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def separator_digest() -> bytes:
    return sha384(SEPARATOR_DATA)


def efi_action_digest(action: str) -> bytes:
    return sha384(action.encode("ascii"))


def variable_driver_config_digest(vendor: uuid.UUID, name: str, data: bytes | None) -> bytes:
    """EV_EFI_VARIABLE_DRIVER_CONFIG: the digest covers the whole UEFI_VARIABLE_DATA."""
    return sha384(uefi_variable_data(vendor, name, data))


def variable_boot_digest(data: bytes) -> bytes:
    """EV_EFI_VARIABLE_BOOT as EDK2 measures it: the digest covers VariableData only."""
    return sha384(data)


def variable_authority_digest(vendor: uuid.UUID, name: str, data: bytes) -> bytes:
    return sha384(uefi_variable_data(vendor, name, data))


# --- SMBIOS (MdeModulePkg/Universal/SmbiosMeasurementDxe) --------------------------------------

# MdePkg/Include/Guid/SmBios.h: gEfiSmbiosTableGuid, gEfiSmbios3TableGuid.
SMBIOS_TABLE_GUID = uuid.UUID("eb9d2d31-2d88-11d3-9a16-0090273fc14d")
SMBIOS3_TABLE_GUID = uuid.UUID("f2fd1544-9794-4a2c-992e-e5bbcf20e394")
SMBIOS_TABLE2_DESCRIPTION = b"SmbiosTable"
MAX_HANDOFF_TABLES = 64


def handoff_table_guids(event_type: EventType, data: bytes) -> tuple[uuid.UUID, ...] | None:
    """The VendorGuids of an EV_EFI_HANDOFF_TABLES event's EFI_HANDOFF_TABLE_POINTERS (TCG PFP
    10.4.2: u64 NumberOfTables | EFI_CONFIGURATION_TABLE {GUID, u64 VendorTable}[]), or None when
    the data is not one. EV_EFI_HANDOFF_TABLES2 (EFI_HANDOFF_TABLE_POINTERS2: u8
    TableDescriptionSize | TableDescription | the same) gives its tables too."""
    if event_type == EventType.EV_EFI_HANDOFF_TABLES2:
        if not data:
            return None
        data = data[1 + data[0]:]
    elif event_type != EventType.EV_EFI_HANDOFF_TABLES:
        return None
    if len(data) < 8:
        return None
    n = int.from_bytes(data[:8], "little")
    if not 1 <= n <= MAX_HANDOFF_TABLES or len(data) != 8 + 24 * n:
        return None
    return tuple(uuid.UUID(bytes_le=bytes(data[8 + 24 * k:24 + 24 * k])) for k in range(n))


def is_smbios_event(event_type: EventType, data: bytes) -> bool:
    """SmbiosMeasurementDxe's event: EV_EFI_HANDOFF_TABLES whose table is the SMBIOS (3.0) entry
    point (OVMF, PcdTcgPfpMeasurementRevision < 105), or EV_EFI_HANDOFF_TABLES2 described as
    "SmbiosTable" (EFI_HANDOFF_TABLE_POINTERS2, TCG PFP 1.05; SmbiosMeasurementDxe logs that
    form when PcdTcgPfpMeasurementRevision >= 105)."""
    guids = handoff_table_guids(event_type, data)
    if not guids or not set(guids) & {SMBIOS_TABLE_GUID, SMBIOS3_TABLE_GUID}:
        return False
    return (event_type == EventType.EV_EFI_HANDOFF_TABLES
            or bytes(data[1:1 + data[0]]).rstrip(b"\0") == SMBIOS_TABLE2_DESCRIPTION)


# --- load options -----------------------------------------------------------------------------

def load_option(attributes: int, description: str, file_path: bytes,
                optional_data: bytes = b"") -> bytes:
    """EFI_LOAD_OPTION (UEFI spec 3.1.3): u32 Attributes | u16 FilePathListLength |
    Description (UTF-16LE, NUL) | FilePathList | OptionalData."""
    return (struct.pack("<IH", attributes, len(file_path))
            + (description + "\0").encode("utf-16-le") + file_path + optional_data)


def fv_file_device_path(fv_name: uuid.UUID, file_name: uuid.UUID) -> bytes:
    """MEDIA_PIWG_FW_VOL_DP (4/7) + MEDIA_PIWG_FW_FILE_DP (4/6) + END (7F/FF)."""
    return (struct.pack("<BBH", 4, 7, 20) + fv_name.bytes_le
            + struct.pack("<BBH", 4, 6, 20) + file_name.bytes_le
            + struct.pack("<BBH", 0x7F, 0xFF, 4))


LOAD_OPTION_ACTIVE = 0x1
LOAD_OPTION_HIDDEN = 0x8
LOAD_OPTION_CATEGORY_APP = 0x100

# OVMF's DXE firmware volume name (OvmfPkg/OvmfPkgX64.fdf, FvNameGuid of DXEFV) and the UiApp
# module's FILE_GUID (MdeModulePkg/Application/UiApp/UiApp.inf).
OVMF_DXEFV_NAME = uuid.UUID("7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1")
UIAPP_FILE_GUID = uuid.UUID("462caa21-7614-4503-836e-8ab6f4662331")


# MdeModulePkg/Application/BootManagerMenuApp/BootManagerMenuApp.inf FILE_GUID.
BOOT_MANAGER_MENU_APP_FILE_GUID = uuid.UUID("eec25bdc-67f2-4d95-b1d5-f81b2039d11d")


def ovmf_uiapp_boot_option() -> bytes:
    """The Boot0000 "UiApp" option OVMF's boot manager registers (BmRegisterBootManagerMenu)
    while PcdBootManagerMenuFile names UiApp: EDK2 before edk2-stable202505."""
    return load_option(LOAD_OPTION_ACTIVE | LOAD_OPTION_HIDDEN | LOAD_OPTION_CATEGORY_APP,
                       "UiApp", fv_file_device_path(OVMF_DXEFV_NAME, UIAPP_FILE_GUID))


def ovmf_boot_manager_menu_option() -> bytes:
    """The Boot0000 option of EDK2 >= edk2-stable202505: edk2 9d9e3a2ba8 "OvmfPkg: use
    BootManagerMenuApp as BootManagerMenu" points PcdBootManagerMenuFile at BootManagerMenuApp, and
    MdeModulePkg UefiBootManagerLib BmRegisterBootManagerMenu registers it with
    CATEGORY_APP | ACTIVE | HIDDEN, the file's user-interface section ("BootManagerMenuApp") as
    description and the FV it lives in (DXEFV in OvmfPkg/IntelTdx/IntelTdxX64.fdf up to
    edk2-stable202511) in the device path."""
    return load_option(LOAD_OPTION_ACTIVE | LOAD_OPTION_HIDDEN | LOAD_OPTION_CATEGORY_APP,
                       "BootManagerMenuApp",
                       fv_file_device_path(OVMF_DXEFV_NAME, BOOT_MANAGER_MENU_APP_FILE_GUID))


def ovmf_firmware_setup_option() -> bytes:
    """The Boot0001 option of EDK2 >= edk2-stable202505: edk2 d433b4c8e4 "OvmfPkg/
    PlatformBootManagerLib: Register UiApp as an optional boot option" (BdsPlatform.c
    PlatformBootManagerBeforeConsole: PlatformRegisterFvBootOption with gUiAppFileGuid,
    "EFI Firmware Setup", ACTIVE | CATEGORY_APP; removed again when QEMU's fw_cfg
    opt/org.tianocore/FirmwareSetupSupport says no)."""
    return load_option(LOAD_OPTION_ACTIVE | LOAD_OPTION_CATEGORY_APP, "EFI Firmware Setup",
                       fv_file_device_path(OVMF_DXEFV_NAME, UIAPP_FILE_GUID))


def kernel_load_options(append: str | None, has_initrd: bool, initrd_first: bool) -> bytes:
    """LoadOptions OVMF hands the kernel on direct boot, as the EFI stub measures them:
    UTF-16LE of the string plus a NUL character.

    OVMF (QemuLoadImageLib) adds ``initrd=initrd`` when QEMU supplied an initrd: EDK2 up to
    stable202505 appends it after the command line, from stable202508 on it comes first.
    """
    append = append or ""
    if has_initrd:
        if initrd_first:
            s = "initrd=initrd" + (" " + append if append else "")
        else:
            s = (append + " " if append else "") + "initrd=initrd"
    else:
        s = append
    return (s + "\0").encode("utf-16-le")


@dataclass(frozen=True)
class Event:
    """One expected event: which RTMR it extends, its type, a description, its digest (None when
    it hashes VMM data that was not given; ``reason`` says which)."""

    rtmr: int
    type: EventType
    description: str
    digest: bytes | None
    reason: str | None = None   # why the digest is None (data only the VMM holds)

    def to_json(self) -> dict:
        out = {"register": f"rtmr{self.rtmr}", "event_type": self.type.name,
               "description": self.description,
               "digest": None if self.digest is None else self.digest.hex()}
        if self.digest is None:
            out["reason"] = self.reason
        return out
