"""VMM profiles for TDX: one YAML file per QEMU/OVMF generation, turned into TdxParams.

The schema is :class:`TdxProfile` (reference: docs/tdx-profile.md, generated from it). Every knob
is optional except ``name``; unknown keys are errors. Files (ACPI blobs, event data) are relative
to the profile file and must lie inside its directory. Profiles come from others, so they are read
through builder.inputs (regular files, capped) and builder.safeyaml; errors name the file and the
key (``p.yaml: runtime_events[0].digest: ...``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from builder import deps
from builder.inputs import MiB, is_within, read_regular
from builder.measure.tdx import TdxParams
from builder.measure.tdx_events import (Event, EventType, ovmf_boot_manager_menu_option,
                                        ovmf_firmware_setup_option, ovmf_uiapp_boot_option)
from builder.measure.tdx_mrtd import PageAddOrder
from builder.safeyaml import load_yaml
from builder.schema import HEX96, Ctx, SchemaError, build, doc, render_reference

#: The profiles a bare name (``measure tdx --profile NAME``) finds: package data
#: (``builder/data/profiles``, in a checkout a link to recipes/profiles, where recipes name them by
#: path), found through importlib.resources so an installed wheel has them too.
PROFILE_DIR = Path(str(resources.files("builder") / "data" / "profiles"))
PROFILE_NAME = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}"
MAX_MEMORY = 1 << 46          # 64 TiB: beyond any TD a host can give
MIN_MEMORY = 64 * MiB           # the recipe schema's launch.memory_mib minimum
DATA_LIMIT = 16 * MiB         # an ACPI blob or event data file
#: Named OVMF boot options a profile's boot_options can give instead of hex (tdx_events).
BOOT_OPTIONS = {"uiapp": ovmf_uiapp_boot_option,                      # EDK2 < stable202505
                "boot-manager-menu": ovmf_boot_manager_menu_option,   # >= stable202505 Boot0000
                "firmware-setup": ovmf_firmware_setup_option}         # >= stable202505 Boot0001


class ProfileError(SchemaError):
    """A TDX profile mistake: ``<file>: <key>: <what>``."""


@dataclass(frozen=True)
class ProfileEvent:
    description: str = doc("what the event is (shown in the event list)", max_length=1024)
    event_type: str | None = doc("TCG event type name (default EV_PLATFORM_CONFIG_FLAGS in RTMR0, "
                                 "EV_EVENT_TAG in RTMR3)", default=None, max_length=64)
    digest: str | None = doc("SHA-384 of the event data, 96 hex digits", default=None,
                             pattern=HEX96)
    data_hex: str | None = doc("the event data, hex", default=None,
                               pattern=r"(?:[0-9a-fA-F]{2})*", max_length=2 * DATA_LIMIT)
    data_file: str | None = doc("a file holding the event data, relative to the profile",
                                default=None, max_length=4096)
    vmm_data: str | None = doc("instead of a digest: which VMM data the event hashes and where "
                               "to get it; the digest is then unknown and the register is not "
                               "computed", default=None, max_length=1024)

    def validate(self, ctx: Ctx, where: str) -> None:
        given = [k for k in ("digest", "data_hex", "data_file", "vmm_data")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            ctx.fail(where, "an event needs exactly one of digest, data_hex, data_file or "
                     "vmm_data")
        if self.event_type is not None and self.event_type not in EventType.__members__:
            ctx.fail(f"{where}.event_type", f"unknown event type {self.event_type[:64]!r}; use a "
                     "name such as EV_PLATFORM_CONFIG_FLAGS")


@dataclass(frozen=True)
class TdxProfile:
    """One QEMU/OVMF generation (recipes/profiles/*.yaml)."""
    name: str = doc("profile name (letters, digits, . _ + -)", pattern=PROFILE_NAME)
    description: str = doc("free text", default="", max_length=4096)
    sources: dict[str, str] = doc("knob -> where its value comes from (documentation only)",
                                  default_factory=dict)
    page_add_order: Literal["interleaved", "two-pass"] = doc(
        "TDH.MEM.PAGE.ADD / MR.EXTEND order of the host's KVM", default="interleaved")
    memory: int | str = doc("guest RAM: bytes or '<n>M' / '<n>G' (QEMU -m)", default="2G")
    qemu_setup_header_patch: bool = doc("QEMU <= 9.2 patches the bzImage setup header before "
                                        "OVMF measures it; QEMU >= 10.1 with a confidential "
                                        "guest does not", default=False)
    acpi_data_size: int = doc("QEMU's ACPI reserve below 4 GiB used when placing the initrd",
                              default=0x28000, minimum=0, maximum=16 * MiB)
    load_options_initrd_first: bool = doc("EDK2 >= stable202508 puts 'initrd=initrd' before "
                                          "-append", default=True)
    secure_boot_feature: bool = doc("firmware built with SECURE_BOOT_ENABLE (variables from the "
                                    "CFV store) or not (all five measured empty)", default=True)
    acpi_blobs: tuple[str, ...] | None = doc("three files: etc/table-loader, etc/acpi/rsdp, "
                                             "etc/acpi/tables of that QEMU and command line; "
                                             "absent -> RTMR0 null", default=None)
    boot_order: tuple[int, ...] = doc("boot option numbers", default=(0,))
    boot_options: dict[str, str] = doc(
        "Boot#### -> hex, or a named OVMF option: 'uiapp' (Boot0000 before edk2-stable202505), "
        "'boot-manager-menu' (Boot0000 from edk2-stable202505 on, edk2 9d9e3a2ba8), "
        "'firmware-setup' (Boot0001 from edk2-stable202505 on, edk2 d433b4c8e4)",
        default_factory=lambda: {"Boot0000": "uiapp"})
    ready_to_boot_separator: Literal["rtmr0", "rtmr1"] = doc(
        "where the ReadyToBoot separator is measured: rtmr0 before edk2-stable202411 (commit "
        "efaf8931bb 'OvmfPkg/TdTcg2Dxe: Fix the SeparatorEvent issue in RTMRs'), rtmr1 after",
        default="rtmr1")
    fw_cfg_items: tuple[str, ...] = doc(
        "fw_cfg items EDK2 >= stable202505 measures into RTMR0 (PlatformPei, QemuFwCfgCacheInit"
        ".c), in measuring order: those QEMU provides", default=())
    fw_cfg_files: dict[str, str] = doc("fw_cfg item name -> file holding its data (relative to "
                                       "the profile); items without one make RTMR0 null",
                                       default_factory=dict)
    smbios_measured: bool = doc("EDK2 >= stable202505 (SmbiosMeasurementDxe, edk2 cd76265f1a) "
                                "measures QEMU's SMBIOS tables into RTMR0: EV_EFI_HANDOFF_TABLES "
                                "after the ACPI (and extra) events, before BootOrder",
                                default=False)
    smbios_digest: str | None = doc("SHA-384 of the measured SMBIOS tables (96 hex digits, QEMU "
                                    "data: take it from a TD's log); absent -> RTMR0 null when "
                                    "smbios_measured", default=None, pattern=HEX96)
    extra_rtmr0_events: tuple[ProfileEvent, ...] = doc(
        "other RTMR0 events, measured after the ACPI events, before the SMBIOS event and "
        "BootOrder", default=())
    runtime_events: tuple[ProfileEvent, ...] = doc("RTMR3 events", default=())

    def validate(self, ctx: Ctx, where: str) -> None:
        memory_bytes(ctx, self.memory)
        if self.acpi_blobs is not None and len(self.acpi_blobs) != 3:
            ctx.fail("acpi_blobs", "acpi_blobs lists exactly three files (etc/table-loader, "
                     "etc/acpi/rsdp, etc/acpi/tables)")
        if len(self.boot_order) > 256:
            ctx.fail("boot_order", "at most 256 entries")
        for i, n in enumerate(self.boot_order):
            if not 0 <= n <= 0xFFFF:
                ctx.fail(f"boot_order[{i}]", f"{n} is out of range 0..65535")
        if len(self.boot_options) > 256:
            ctx.fail("boot_options", "at most 256 options")
        for k, v in self.boot_options.items():
            if not re.fullmatch(r"Boot[0-9A-Fa-f]{4}", k):
                ctx.fail(f"boot_options.{k[:40]}", "keys are Boot#### (4 hex digits)")
            if v not in BOOT_OPTIONS and not re.fullmatch(r"(?:[0-9a-fA-F]{2}){1,32768}", v):
                ctx.fail(f"boot_options.{k}", "value is hex or one of "
                         + ", ".join(repr(n) for n in BOOT_OPTIONS))
        if len(self.fw_cfg_items) > 64:
            ctx.fail("fw_cfg_items", "at most 64 items")
        for i, n in enumerate(self.fw_cfg_items):
            if not re.fullmatch(r"[\x21-\x7e]{1,55}", n):
                ctx.fail(f"fw_cfg_items[{i}]", f"{n[:60]!r} is not a fw_cfg name (1..55 "
                         "printable ASCII characters)")
        for k in self.fw_cfg_files:
            if k not in self.fw_cfg_items:
                ctx.fail(f"fw_cfg_files.{k[:60]}", "names an item fw_cfg_items does not list")
        if self.smbios_digest is not None and not self.smbios_measured:
            ctx.fail("smbios_digest", "given, but smbios_measured is false (the digest is of "
                     "the SMBIOS event smbios_measured adds)")
        for key in ("extra_rtmr0_events", "runtime_events"):
            if len(getattr(self, key)) > 1024:
                ctx.fail(key, "at most 1024 events")


def memory_bytes(ctx: Ctx, v: int | str, where: str = "memory") -> int:
    """Guest RAM in bytes from an integer or '<n>M'/'<n>G' (QEMU -m), within what a TD can have."""
    if isinstance(v, int):
        n = v
    else:
        m = re.fullmatch(r"\s*(\d{1,12})\s*([MG])i?B?\s*", v, re.I)
        if not m:
            ctx.fail(where, f"cannot read memory size {v[:40]!r}; write e.g. 2G or 2048M")
        n = int(m.group(1)) << (20 if m.group(2).upper() == "M" else 30)
    if not MIN_MEMORY <= n <= MAX_MEMORY:
        ctx.fail(where, f"memory size {n} bytes is out of range {MIN_MEMORY}..{MAX_MEMORY} "
                 "(64 MiB .. 64 TiB)")
    return n


def resolve_profile(name_or_path: str) -> Path:
    """A profile path, or a bare name looked up in the shipped profiles (:data:`PROFILE_DIR`)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or deps.exists(p) or \
            not re.fullmatch(PROFILE_NAME, name_or_path):
        return p
    return PROFILE_DIR / f"{name_or_path}.yaml"


def _data_file(ctx: Ctx, path: Path, where: str, rel: str) -> bytes:
    """A file the profile names, relative to (and confined to) the profile's directory."""
    f = path.parent / rel
    if not is_within(f, path.parent):
        ctx.fail(where, f"{rel[:80]!r} lies outside the profile's directory")
    return read_regular(f, "profile data", f"{path}: {where}", limit=DATA_LIMIT)


def _events(ctx: Ctx, path: Path, key: str, items: tuple[ProfileEvent, ...], rtmr: int,
            default_type: EventType) -> tuple[Event, ...]:
    out = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        etype = EventType[item.event_type] if item.event_type else default_type
        if item.vmm_data is not None:
            out.append(Event(rtmr, etype, item.description, None,
                             f"{item.description}: {item.vmm_data}"))
            continue
        if item.digest is not None:
            digest = bytes.fromhex(item.digest)
        elif item.data_hex is not None:
            digest = hashlib.sha384(bytes.fromhex(item.data_hex)).digest()
        else:
            digest = hashlib.sha384(_data_file(ctx, path, f"{where}.data_file",
                                               item.data_file)).digest()
        out.append(Event(rtmr, etype, item.description, digest))
    return tuple(out)


def parse_profile(text: bytes, path: Path) -> TdxProfile:
    """The validated profile document (no files read beyond ``text``)."""
    shown = str(path)
    raw = load_yaml(text, shown, ProfileError)
    if not isinstance(raw, dict):
        raise ProfileError(shown, "", "a TDX profile is a mapping")
    return build(Ctx(shown, error=ProfileError), TdxProfile, raw, "")


def load_profile(path: Path | str) -> TdxParams:
    path = resolve_profile(str(path))
    text = read_regular(path, "profile", str(path))
    prof = parse_profile(text, path)
    ctx = Ctx(str(path), error=ProfileError)
    # The recorded knobs the profile names alike are taken as they are; the others converted below.
    params: dict = {k: getattr(prof, k) for k in TdxParams.recorded_knobs()
                    if k in TdxProfile.__dataclass_fields__}
    params["profile"] = prof.name
    params["page_add_order"] = PageAddOrder(prof.page_add_order)
    params["memory"] = memory_bytes(ctx, prof.memory)
    params.pop("acpi_blobs", None)
    if prof.acpi_blobs is None:
        params["rtmr0_missing"] = (f"profile {prof.name} gives no acpi_blobs (QEMU's "
                                   "etc/table-loader, etc/acpi/rsdp, etc/acpi/tables for this "
                                   "machine and command line), so RTMR0 cannot be computed")
    else:
        params["acpi_blobs"] = tuple(_data_file(ctx, path, f"acpi_blobs[{i}]", b)
                                     for i, b in enumerate(prof.acpi_blobs))
    params["ready_to_boot_separator"] = int(prof.ready_to_boot_separator[-1])
    params["fw_cfg_digests"] = tuple(
        hashlib.sha384(_data_file(ctx, path, f"fw_cfg_files.{n}", prof.fw_cfg_files[n])).digest()
        if n in prof.fw_cfg_files else None for n in prof.fw_cfg_items)
    params["smbios_digest"] = (None if prof.smbios_digest is None
                               else bytes.fromhex(prof.smbios_digest))
    params["boot_options"] = tuple(
        (int(k[4:], 16), BOOT_OPTIONS[v]() if v in BOOT_OPTIONS else bytes.fromhex(v))
        for k, v in prof.boot_options.items())
    params["extra_rtmr0_events"] = _events(ctx, path, "extra_rtmr0_events",
                                           prof.extra_rtmr0_events, 0,
                                           EventType.EV_PLATFORM_CONFIG_FLAGS)
    params["runtime_events"] = _events(ctx, path, "runtime_events", prof.runtime_events, 3,
                                       EventType.EV_EVENT_TAG)
    return TdxParams(**params)


def render_profile_doc() -> str:
    """docs/tdx-profile.md, generated from the schema (``python -m builder.measure.tdx_profile``)."""
    return render_reference(TdxProfile, "TDX profile reference", [
        "Generated from `builder/measure/tdx_profile.py` "
        "(`python -m builder.measure.tdx_profile > docs/tdx-profile.md`);",
        "a test keeps the two in step. Files are relative to (and must lie inside) the profile's "
        "directory.",
        "`events` entries (extra_rtmr0_events, runtime_events) take exactly one of digest, "
        "data_hex, data_file, vmm_data."])


if __name__ == "__main__":
    import sys
    sys.stdout.write(render_profile_doc())
