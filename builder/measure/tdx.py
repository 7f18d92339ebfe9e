"""TDX launch measurements: MRTD and RTMR0-3 with the expected event log.

Pure functions over bytes plus one frozen :class:`TdxParams`; callers read files (the profile
loader in :mod:`builder.measure.tdx_profile` turns a VMM profile into TdxParams).

Event order follows EDK2 OvmfPkg (TdTcg2Dxe, TdxHelperLib, QemuKernelLoaderFsDxe, AcpiPlatformDxe)
for a direct kernel boot under QEMU:

- RTMR0: TD HOB (EV_EFI_HANDOFF_TABLES2), CFV (EV_EFI_PLATFORM_FIRMWARE_BLOB2), with EDK2 >=
  stable202505 the cached fw_cfg items (EV_PLATFORM_CONFIG_FLAGS "QEMU FW CFG", PlatformPei), then
  SecureBoot, PK, KEK, db, dbx (+ dbt when present) as EV_EFI_VARIABLE_DRIVER_CONFIG, separator,
  the ACPI fw_cfg blobs (EV_PLATFORM_CONFIG_FLAGS "ACPI DATA"), extra events declared by the
  profile, with SmbiosMeasurementDxe (EDK2 >= stable202505, edk2 cd76265f1a) the SMBIOS tables
  (EV_EFI_HANDOFF_TABLES, ``smbios_measured``), BootOrder and each Boot####
  (EV_EFI_VARIABLE_BOOT); EDK2 before stable202411 measures the ReadyToBoot separator here too
  (``ready_to_boot_separator``).
- RTMR1: kernel Authenticode (EV_EFI_BOOT_SERVICES_APPLICATION), "Calling EFI Application from
  Boot Option", separator (EDK2 >= stable202411, edk2 commit efaf8931bb "OvmfPkg/TdTcg2Dxe: Fix
  the SeparatorEvent issue in RTMRs"), "Exit Boot Services Invocation", "... Returned with
  Success".

Events that hash data only the VMM holds (ACPI blobs, fw_cfg items, SMBIOS tables) are listed with
digest None and the reason when the profile does not give that data; RTMR0 is then None.
- RTMR2: Linux EFI stub (>= 6.9): LoadOptions, then the initrd (EV_EVENT_TAG).
- RTMR3: only runtime events the profile declares.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field, fields, replace

from builder.errors import CCBuildError, CheckFailed
from builder.formats.pe import authenticode_digest
from builder.formats.tdvf import SectionType, TdvfMetadata, parse_tdvf_metadata
from builder.formats.varstore import parse_varstore
from builder.formats import tcg as rtmr_mod
from builder.measure.linux_setup import QEMU_ACPI_DATA_SIZE, qemu_patch_setup_header
from builder.measure.tdx_events import (
    CALLING_EFI_APPLICATION, EFI_GLOBAL_VARIABLE, EFI_IMAGE_SECURITY_DATABASE,
    EXIT_BOOT_SERVICES_INVOCATION, EXIT_BOOT_SERVICES_SUCCEEDED, Event, EventType,
    efi_action_digest, kernel_load_options, ovmf_uiapp_boot_option, separator_digest, sha384,
    variable_boot_digest, variable_driver_config_digest)
from builder.measure.tdx_hob import td_hob
from builder.measure.tdx_mrtd import PageAddOrder, mrtd, mrtd_summary

ACPI_BLOB_NAMES = ("etc/table-loader", "etc/acpi/rsdp", "etc/acpi/tables")
# EDK2 SecurityPkg/Include/Guid/AuthenticatedVariableFormat.h: gEfiSecureBootEnableDisableGuid
SECURE_BOOT_ENABLE_GUID = uuid.UUID("f0a30bc7-af08-4556-99c4-001009c93a44")


def _same(v):
    return v


def _recorded(encode=_same, decode=_same, key: str | None = None, required: bool = True) -> dict:
    """Field metadata: the knob goes into the ``profile`` record of measurements.json (under
    ``key``, default its name) through ``encode``, and comes back through ``decode`` (None: recorded
    for the reader only, OUT cannot restore it). ``required``: a record without it is refused."""
    return {"record": (key, encode, decode, required)}


def _encode_boot_options(options: tuple[tuple[int, bytes], ...]) -> dict[str, str]:
    return {f"Boot{n:04X}": d.hex() for n, d in options}


def _decode_boot_options(rec: dict[str, str]) -> tuple[tuple[int, bytes], ...]:
    return tuple((int(k[4:], 16), bytes.fromhex(v)) for k, v in rec.items())


def _rtmr_index(s: str) -> int:
    if s not in ("rtmr0", "rtmr1"):
        raise CheckFailed(f"measurements.json tdx.profile ready_to_boot_separator is {s!r}, "
                          "not rtmr0 or rtmr1")
    return int(s[-1])


FW_CFG_EVENT_TAG = b"QEMU FW CFG\0"   # QemuFwCfgCacheInit.c FW_CFG_EVENT.FwCfg
FW_CFG_NAME_SIZE = 56                # QEMU_FW_CFG_FNAME_SIZE
SMBIOS_EVENT = "SMBIOS tables (SmbiosMeasurementDxe)"


def fw_cfg_event_data(name: str) -> bytes:
    """The event data EDK2 logs for a measured fw_cfg item: "QEMU FW CFG" NUL | name[56]."""
    return FW_CFG_EVENT_TAG + name.encode("ascii").ljust(FW_CFG_NAME_SIZE, b"\0")


@dataclass(frozen=True)
class TdxParams:
    """Every version-dependent choice, named. Defaults: upstream KVM + QEMU >= 10.1, EDK2 >=
    stable202508, no VMM profile (RTMR0 unknown).

    The knobs marked ``_recorded`` are the ``tdx.profile`` record of measurements.json
    (:meth:`to_record`), enough for ``ccbuild verify`` to recompute every artifact-derived event
    from OUT (:meth:`from_record`); a new knob is declared here once (and in the profile schema,
    builder.measure.tdx_profile, when a profile can set it)."""

    page_add_order: PageAddOrder = field(default=PageAddOrder.INTERLEAVED, metadata=_recorded(
        lambda v: v.value, PageAddOrder))
    memory: int = field(default=2 << 30, metadata=_recorded())
    qemu_setup_header_patch: bool = field(default=False, metadata=_recorded())
    acpi_data_size: int = field(default=QEMU_ACPI_DATA_SIZE, metadata=_recorded())
    load_options_initrd_first: bool = field(default=True, metadata=_recorded())
    secure_boot_feature: bool = field(default=True, metadata=_recorded())
    # RTMR0 needs the VMM's ACPI blobs (table-loader, rsdp, tables, in measuring order); the
    # record says only whether they were given (their digests are in the event log).
    acpi_blobs: tuple[bytes, ...] | None = field(default=None, metadata=_recorded(
        lambda v: v is not None, None))
    boot_order: tuple[int, ...] = field(default=(0,), metadata=_recorded(list, tuple))
    boot_options: tuple[tuple[int, bytes], ...] = field(
        default=((0, ovmf_uiapp_boot_option()),),
        metadata=_recorded(_encode_boot_options, _decode_boot_options))
    # EDK2 < stable202411 (before efaf8931bb) measures the ReadyToBoot separator into RTMR0 (a
    # second RTMR0 separator, none in RTMR1); later EDK2 into RTMR1.
    ready_to_boot_separator: int = field(default=1, metadata=_recorded(
        lambda v: f"rtmr{v}", lambda s: _rtmr_index(s)))
    # EDK2 >= stable202505 (81c2c92074 "OvmfPkg/PlatformPei: Cache and measure FwCfg items"):
    # the fw_cfg items QEMU provides among QemuFwCfgCacheInit.c's measured list, in that order.
    fw_cfg_items: tuple[str, ...] = field(default=(), metadata=_recorded(list, tuple))
    # their data's SHA-384 (VMM data: from the profile), one per item, None where unknown
    fw_cfg_digests: tuple[bytes | None, ...] = ()
    # EDK2 >= stable202505 (cd76265f1a "OvmfPkg: Enable Smbios measurement"): the SMBIOS tables
    # in RTMR0 (see rtmr0_events); their SHA-384 is VMM data (from the profile), None if unknown.
    smbios_measured: bool = field(default=False, metadata=_recorded())
    smbios_digest: bytes | None = None
    extra_rtmr0_events: tuple[Event, ...] = ()
    runtime_events: tuple[Event, ...] = ()
    profile: str | None = field(default=None, metadata=_recorded(key="name", required=False))
    rtmr0_missing: str = "no VMM profile given"

    @classmethod
    def recorded_knobs(cls) -> tuple[str, ...]:
        """The names of the fields the record carries, in field order."""
        return tuple(f.name for f in fields(cls) if "record" in f.metadata)

    def to_record(self) -> dict:
        """The measurements.json ``tdx.profile`` record: the profile name first, then every
        recorded knob with the value used (the recipe may override the profile's memory)."""
        out: dict = {}
        for f in fields(self):
            if "record" in f.metadata:
                key, encode, _, _ = f.metadata["record"]
                out[key or f.name] = encode(getattr(self, f.name))
        return {"name": out.pop("name"), **out}

    @classmethod
    def from_record(cls, rec: dict) -> "TdxParams":
        """TdxParams from a ``tdx.profile`` record (the knobs that depend on no VMM blob: the
        ACPI tables and declared extra events are not in OUT, their digests are taken from the
        recorded event log). CheckFailed names the knobs the record lacks."""
        knobs = [f for f in fields(cls) if "record" in f.metadata
                 and f.metadata["record"][2] is not None]
        missing = [f.name for f in knobs if f.metadata["record"][3]
                   and (f.metadata["record"][0] or f.name) not in rec]
        if missing:
            raise CheckFailed(f"measurements.json tdx.profile lacks {', '.join(missing)}",
                              hint="rebuild with this ccbuild version, which records every knob")
        kwargs = {}
        for f in knobs:
            key, _, decode, _ = f.metadata["record"]
            key = key or f.name
            if key in rec:
                kwargs[f.name] = decode(rec[key])
        return cls(**kwargs)


@dataclass(frozen=True)
class TdxResult:
    mrtd: bytes
    rtmr: tuple[bytes | None, bytes | None, bytes | None, bytes]
    reasons: dict
    events: tuple[Event, ...]
    summary: list


def _secure_boot_events(cfv: bytes, params: TdxParams) -> list[Event]:
    names = [(EFI_GLOBAL_VARIABLE, "SecureBoot"), (EFI_GLOBAL_VARIABLE, "PK"),
             (EFI_GLOBAL_VARIABLE, "KEK"), (EFI_IMAGE_SECURITY_DATABASE, "db"),
             (EFI_IMAGE_SECURITY_DATABASE, "dbx")]
    events = []
    if not params.secure_boot_feature:
        # Firmware built without SECURE_BOOT_ENABLE: no variable exists, each is measured
        # with an empty VariableData (TdTcg2Dxe ReadAndMeasureVariable, EFI_NOT_FOUND case).
        values = {n: None for _, n in names}
        dbt = None
    else:
        variables = parse_varstore(cfv, "CFV")
        store = {k[1]: v.data for k, v in variables.items()
                 if k[0] in (EFI_GLOBAL_VARIABLE, EFI_IMAGE_SECURITY_DATABASE)}
        sbe = variables.get((SECURE_BOOT_ENABLE_GUID, "SecureBootEnable"))
        # AuthVariableLib: user mode (PK enrolled) + SecureBootEnable (default enabled) -> 1.
        enabled = "PK" in store and (sbe is None or sbe.data[:1] != b"\x00")
        values = {"SecureBoot": b"\x01" if enabled else b"\x00",
                  **{n: store.get(n) for _, n in names[1:]}}
        dbt = store.get("dbt")
    for vendor, name in names:
        events.append(Event(0, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, name,
                            variable_driver_config_digest(vendor, name, values[name])))
    if dbt is not None:
        events.append(Event(0, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, "dbt",
                            variable_driver_config_digest(EFI_IMAGE_SECURITY_DATABASE, "dbt",
                                                          dbt)))
    return events


def _vmm_event(rtmr: int, etype: EventType, description: str, digest: bytes | None,
               reason: str) -> Event:
    return Event(rtmr, etype, description, digest, None if digest is not None else reason)


def rtmr0_events(fw: bytes, meta: TdvfMetadata, params: TdxParams) -> list[Event]:
    """Every RTMR0 event in measuring order; events hashing VMM data that was not given (ACPI
    blobs, fw_cfg items, SMBIOS tables) carry digest None and the reason."""
    cfvs = meta.of_type(SectionType.CFV)
    hob = (sha384(td_hob(meta, params.memory)) if meta.of_type(SectionType.TD_HOB) else None)
    ev = [Event(0, EventType.EV_EFI_HANDOFF_TABLES2, "TD HOB", hob,
                None if hob else "the firmware's TDVF metadata has no TD_HOB section")]
    no_cfv = "the firmware's TDVF metadata has no CFV section"
    cfv = (fw[cfvs[0].data_offset:cfvs[0].data_offset + cfvs[0].raw_size] if cfvs else None)
    ev.append(Event(0, EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2, "CFV",
                    None if cfv is None else sha384(cfv), None if cfv is not None else no_cfv))
    for i, name in enumerate(params.fw_cfg_items):
        d = params.fw_cfg_digests[i] if i < len(params.fw_cfg_digests) else None
        ev.append(_vmm_event(0, EventType.EV_PLATFORM_CONFIG_FLAGS, f"QEMU FW CFG ({name})", d,
                             f"fw_cfg item {name} is QEMU data: give the item's bytes in "
                             "the profile's fw_cfg_files"))
    if cfv is not None:
        ev += _secure_boot_events(cfv, params)
    else:   # the variables are read from the CFV store
        ev.append(Event(0, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, "Secure Boot variables",
                        None, no_cfv))
    ev.append(Event(0, EventType.EV_SEPARATOR, "separator", separator_digest()))
    blobs = params.acpi_blobs or (None, None, None)
    for name, blob in zip(ACPI_BLOB_NAMES, blobs):
        ev.append(_vmm_event(0, EventType.EV_PLATFORM_CONFIG_FLAGS, f"ACPI DATA ({name})",
                             None if blob is None else sha384(blob), params.rtmr0_missing))
    ev += list(params.extra_rtmr0_events)
    if params.smbios_measured:
        # MdeModulePkg SmbiosMeasurementDxe (in IntelTdxX64 from edk2-stable202505, cd76265f1a):
        # MeasureSmbiosTable, a ReadyToBoot callback that runs before TdTcg2Dxe's OnReadyToBoot
        # measures the boot variables, logs PCR 1 (= RTMR0) EV_EFI_HANDOFF_TABLES with
        # EFI_HANDOFF_TABLE_POINTERS (SMBIOS 3.0 GUID) as data while PcdTcgPfpMeasurementRevision
        # is below 105 (OvmfPkg leaves it 0); the digest is the SHA-384 of QEMU's SMBIOS
        # structure table after FilterSmbiosTable. A real edk2-stable202505 TD logs it here
        # (tests/vectors/tdx/dstack).
        ev.append(_vmm_event(0, EventType.EV_EFI_HANDOFF_TABLES, SMBIOS_EVENT,
                             params.smbios_digest, "the SMBIOS tables are QEMU data: give "
                             "their SHA-384 in the profile's smbios_digest (from a TD's log)"))
    order = b"".join(n.to_bytes(2, "little") for n in params.boot_order)
    ev.append(Event(0, EventType.EV_EFI_VARIABLE_BOOT, "BootOrder", variable_boot_digest(order)))
    options = dict(params.boot_options)
    for n in params.boot_order:
        if n in options:
            ev.append(Event(0, EventType.EV_EFI_VARIABLE_BOOT, f"Boot{n:04X}",
                            variable_boot_digest(options[n])))
    if params.ready_to_boot_separator == 0:
        ev.append(Event(0, EventType.EV_SEPARATOR, "separator (ReadyToBoot)",
                        separator_digest()))
    return ev


def rtmr0_value(events: list[Event]) -> tuple[bytes | None, str | None]:
    """(RTMR0, None) when every event's digest is known, else (None, the first reason)."""
    reasons = list(dict.fromkeys(e.reason for e in events if e.digest is None))
    if reasons:
        return None, "; ".join(r or "not computed" for r in reasons)
    return rtmr_mod.replay(e.digest for e in events), None


def rtmr1_events(kernel: bytes | None, initrd: bytes | None, append: str | None,
                 params: TdxParams, kernel_authenticode: bytes | None = None,
                 initrd_size: int | None = None) -> list[Event]:
    """RTMR1. The kernel is given as bytes or as its Authenticode SHA-384 (as loaded: with
    QEMU's setup-header patch that digest depends on memory and initrd size, so bytes are
    needed)."""
    if kernel is not None:
        image = kernel
        what = "kernel (Authenticode SHA-384)"
        if params.qemu_setup_header_patch:
            size = len(initrd) if initrd is not None else initrd_size
            image = qemu_patch_setup_header(kernel, append or "", size,
                                            params.memory, params.acpi_data_size)
            what = "kernel with QEMU-patched setup header (Authenticode SHA-384)"
        digest = authenticode_digest(image, "sha384")
    elif kernel_authenticode is not None:
        digest = kernel_authenticode
        what = ("kernel with QEMU-patched setup header (Authenticode SHA-384, given)"
                if params.qemu_setup_header_patch else "kernel (Authenticode SHA-384, given)")
    else:
        raise ValueError("rtmr1_events needs the kernel or its Authenticode digest")
    ev = [Event(1, EventType.EV_EFI_BOOT_SERVICES_APPLICATION, what, digest),
          Event(1, EventType.EV_EFI_ACTION, CALLING_EFI_APPLICATION,
                efi_action_digest(CALLING_EFI_APPLICATION))]
    if params.ready_to_boot_separator == 1:
        ev.append(Event(1, EventType.EV_SEPARATOR, "separator", separator_digest()))
    return ev + [Event(1, EventType.EV_EFI_ACTION, EXIT_BOOT_SERVICES_INVOCATION,
                       efi_action_digest(EXIT_BOOT_SERVICES_INVOCATION)),
                 Event(1, EventType.EV_EFI_ACTION, EXIT_BOOT_SERVICES_SUCCEEDED,
                       efi_action_digest(EXIT_BOOT_SERVICES_SUCCEEDED))]


def rtmr2_events(initrd: bytes | None, append: str | None, params: TdxParams,
                 initrd_sha384: bytes | None = None) -> list[Event]:
    has_initrd = initrd is not None or initrd_sha384 is not None
    opts = kernel_load_options(append, has_initrd, params.load_options_initrd_first)
    text = opts.decode("utf-16-le").rstrip("\0")
    ev = [Event(2, EventType.EV_EVENT_TAG, f"LOADED_IMAGE::LoadOptions {text!r}",
                hashlib.sha384(opts).digest())]
    if has_initrd:
        ev.append(Event(2, EventType.EV_EVENT_TAG, "Linux initrd",
                        sha384(initrd) if initrd is not None else initrd_sha384))
    return ev


def measure_tdx(fw: bytes, kernel: bytes | None, initrd: bytes | None, append: str | None,
                params: TdxParams, *, kernel_authenticode: bytes | None = None,
                initrd_sha384: bytes | None = None, initrd_size: int | None = None
                ) -> TdxResult:
    """MRTD, RTMR0-3 and the expected events. The kernel and initrd may be given as published
    digests instead (``kernel_authenticode``: Authenticode SHA-384 as OVMF loads it;
    ``initrd_sha384``); the results are the same as from the files."""
    meta = parse_tdvf_metadata(fw)
    if meta is None:
        raise CCBuildError("firmware has no TDVF metadata (not a TDX firmware)", "--firmware",
                           "use an IntelTdx/OvmfPkgX64 build with TDX support")
    if params.qemu_setup_header_patch and kernel is not None and initrd is None \
            and initrd_sha384 is not None and initrd_size is None:
        raise CCBuildError("QEMU's setup-header patch (qemu_setup_header_patch) writes the initrd "
                           "size into the kernel RTMR1 measures; a digest alone does not give it",
                           "--initrd-sha384", "give the initrd file, or --kernel-authenticode "
                           "with the digest of the kernel as QEMU patched it")
    reasons: dict = {}
    values: list[bytes | None] = [None, None, None, rtmr_mod.ZERO]
    ev0 = rtmr0_events(fw, meta, params)
    values[0], why = rtmr0_value(ev0)
    if why is not None:
        reasons["rtmr0_reason"] = why
    events: list[Event] = list(ev0)
    if kernel is not None or kernel_authenticode is not None:
        ev1 = rtmr1_events(kernel, initrd, append, params, kernel_authenticode, initrd_size)
        ev2 = rtmr2_events(initrd, append, params, initrd_sha384)
        values[1] = rtmr_mod.replay(e.digest for e in ev1)
        values[2] = rtmr_mod.replay(e.digest for e in ev2)
        events += ev1 + ev2
    else:
        reasons["rtmr1_reason"] = reasons["rtmr2_reason"] = \
            "no kernel given: RTMR1/RTMR2 are computed for direct kernel boot only"
    ev3 = list(params.runtime_events)
    values[3] = rtmr_mod.replay(e.digest for e in ev3)
    events += ev3
    return TdxResult(mrtd=mrtd(fw, meta, params.page_add_order),
                     rtmr=tuple(values),  # type: ignore[arg-type]
                     reasons=reasons, events=tuple(events), summary=mrtd_summary(meta))


def _hex(v: bytes | None) -> str | None:
    return None if v is None else v.hex()


def result_to_dict(r: TdxResult, params: TdxParams) -> dict:
    """The measurements.json ``"tdx"`` record."""
    out: dict = {"mrtd": r.mrtd.hex()}
    for i, v in enumerate(r.rtmr):
        out[f"rtmr{i}"] = _hex(v)
        if f"rtmr{i}_reason" in r.reasons:
            out[f"rtmr{i}_reason"] = r.reasons[f"rtmr{i}_reason"]
    out["profile"] = params.to_record()
    out["events"] = [e.to_json() for e in r.events]
    out["mrtd_sections"] = r.summary
    return out


def tdx_measurements(fw: bytes, kernel: bytes | None, initrd: bytes | None,
                     cmdline: str | None, params: TdxParams | None = None,
                     page_add_order: PageAddOrder | str | None = None) -> dict:
    """Entry point for ``ccbuild build``: the measurements.json ``"tdx"`` record."""
    params = params or TdxParams()
    if page_add_order is not None:
        params = replace(params, page_add_order=PageAddOrder(page_add_order))
    return result_to_dict(measure_tdx(fw, kernel, initrd, cmdline, params), params)
