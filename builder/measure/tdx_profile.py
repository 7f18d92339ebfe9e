"""VMM profiles for TDX: one YAML file per QEMU/OVMF generation, turned into TdxParams.

Every knob is optional except ``name``; unknown keys are errors. Paths (ACPI blobs, event data
files) are relative to the profile file. Errors name the file and the key.

Keys:
  name                      profile name (string)
  description               free text
  sources                   mapping knob -> where its value comes from (documentation only)
  page_add_order            interleaved | two-pass
  memory                    guest RAM: integer bytes or "<n>M" / "<n>G" (QEMU -m)
  qemu_setup_header_patch   bool: QEMU <= 9.2 patches the bzImage setup header before OVMF
                            measures it; QEMU >= 10.1 with a confidential guest does not
  acpi_data_size            QEMU's ACPI reserve below 4 GiB used when placing the initrd
  load_options_initrd_first bool: EDK2 >= stable202508 puts "initrd=initrd" before -append
  secure_boot_feature       bool: firmware built with SECURE_BOOT_ENABLE (variables come from the
                            CFV variable store) or not (all five measured empty)
  acpi_blobs                list of three files: etc/table-loader, etc/acpi/rsdp, etc/acpi/tables
                            as that QEMU and command line produce them; absent -> RTMR0 null
  boot_order                list of boot option numbers (default [0])
  boot_options              mapping "Boot####" -> "uiapp" (OVMF's UiApp option) or a hex string
  extra_rtmr0_events        list of {event_type, description, data_hex | data_file | digest}
                            measured after the ACPI events (newer OVMF's fw_cfg/SMBIOS events)
  runtime_events            list of {description, digest | data_hex | data_file} for RTMR3
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import yaml

from builder.errors import CCBuildError
from builder.measure.tdx import TdxParams
from builder.measure.tdx_events import Event, EventType, ovmf_uiapp_boot_option
from builder.measure.tdx_mrtd import PageAddOrder

PROFILE_DIR = Path(__file__).resolve().parent.parent.parent / "recipes" / "profiles"
_KEYS = {"name", "description", "sources", "page_add_order", "memory", "qemu_setup_header_patch",
         "acpi_data_size", "load_options_initrd_first", "secure_boot_feature", "acpi_blobs",
         "boot_order", "boot_options", "extra_rtmr0_events", "runtime_events"}


def resolve_profile(name_or_path: str) -> Path:
    """A profile path, or a bare name looked up in recipes/profiles/."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return PROFILE_DIR / f"{name_or_path}.yaml"


def _err(path: Path, key: str, what: str, hint: str | None = None) -> CCBuildError:
    return CCBuildError(what, f"{path}: {key}", hint)


def _memory(path: Path, v) -> int:
    if isinstance(v, bool):
        raise _err(path, "memory", "memory must be bytes or '<n>M'/'<n>G'")
    if isinstance(v, int) and v > 0:
        return v
    m = re.fullmatch(r"\s*(\d+)\s*([MG])i?B?\s*", str(v), re.I)
    if not m:
        raise _err(path, "memory", f"cannot read memory size {v!r}", "write e.g. 2G or 2048M")
    return int(m.group(1)) << (20 if m.group(2).upper() == "M" else 30)


def _bool(path: Path, doc: dict, key: str, default: bool) -> bool:
    v = doc.get(key, default)
    if not isinstance(v, bool):
        raise _err(path, key, f"{key} must be true or false, not {v!r}")
    return v


def _data(path: Path, key: str, item: dict) -> bytes:
    if "data_hex" in item:
        try:
            return bytes.fromhex(str(item["data_hex"]))
        except ValueError:
            raise _err(path, key, "data_hex is not hex") from None
    f = path.parent / str(item["data_file"])
    try:
        return f.read_bytes()
    except OSError as e:
        raise _err(path, key, f"cannot read {f}: {e.strerror}") from None


def _events(path: Path, key: str, items, rtmr: int, default_type: EventType) -> tuple:
    if not isinstance(items, list):
        raise _err(path, key, f"{key} must be a list")
    out = []
    for i, item in enumerate(items):
        k = f"{key}[{i}]"
        if not isinstance(item, dict) or "description" not in item:
            raise _err(path, k, "each event needs a description")
        try:
            etype = EventType[item["event_type"]] if "event_type" in item else default_type
        except KeyError:
            raise _err(path, k + ".event_type", f"unknown event type {item['event_type']!r}",
                       "use a name such as EV_PLATFORM_CONFIG_FLAGS") from None
        if "digest" in item:
            try:
                digest = bytes.fromhex(str(item["digest"]))
            except ValueError:
                digest = b""
            if len(digest) != 48:
                raise _err(path, k + ".digest", "digest must be 96 hex digits (SHA-384)")
        elif "data_hex" in item or "data_file" in item:
            digest = hashlib.sha384(_data(path, k, item)).digest()
        else:
            raise _err(path, k, "an event needs digest, data_hex or data_file")
        out.append(Event(rtmr, etype, str(item["description"]), digest))
    return tuple(out)


def load_profile(path: Path | str) -> TdxParams:
    path = resolve_profile(str(path))
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise CCBuildError(f"cannot read TDX profile: {e.strerror}", str(path),
                           f"profiles live in {PROFILE_DIR.name}/ or give a path") from None
    except yaml.YAMLError as e:
        raise CCBuildError(f"TDX profile is not valid YAML: {e}".replace("\n", " "),
                           str(path)) from None
    if not isinstance(doc, dict):
        raise _err(path, "(top)", "a TDX profile is a mapping")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise _err(path, unknown[0], f"unknown key {unknown[0]!r}",
                   "known keys: " + ", ".join(sorted(_KEYS)))
    if not isinstance(doc.get("name"), str):
        raise _err(path, "name", "a profile needs a name")
    try:
        order = PageAddOrder(doc.get("page_add_order", "interleaved"))
    except ValueError:
        raise _err(path, "page_add_order", "page_add_order must be interleaved or two-pass"
                   ) from None
    params: dict = {"profile": doc["name"], "page_add_order": order}
    params["memory"] = _memory(path, doc.get("memory", "2G"))
    params["qemu_setup_header_patch"] = _bool(path, doc, "qemu_setup_header_patch", False)
    params["load_options_initrd_first"] = _bool(path, doc, "load_options_initrd_first", True)
    params["secure_boot_feature"] = _bool(path, doc, "secure_boot_feature", True)
    ads = doc.get("acpi_data_size", 0x28000)
    if not isinstance(ads, int) or isinstance(ads, bool) or ads < 0:
        raise _err(path, "acpi_data_size", "acpi_data_size must be a non-negative integer")
    params["acpi_data_size"] = ads
    blobs = doc.get("acpi_blobs")
    if blobs is None:
        params["rtmr0_missing"] = (f"profile {doc['name']} gives no acpi_blobs (QEMU's "
                                   "etc/table-loader, etc/acpi/rsdp, etc/acpi/tables for this "
                                   "machine and command line), so RTMR0 cannot be computed")
    else:
        if not isinstance(blobs, list) or len(blobs) != 3:
            raise _err(path, "acpi_blobs", "acpi_blobs lists exactly three files",
                       "etc/table-loader, etc/acpi/rsdp, etc/acpi/tables")
        params["acpi_blobs"] = tuple(_data(path, f"acpi_blobs[{i}]", {"data_file": b})
                                     for i, b in enumerate(blobs))
    order_list = doc.get("boot_order", [0])
    if not isinstance(order_list, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 0xFFFF
            for n in order_list):
        raise _err(path, "boot_order", "boot_order is a list of numbers 0..65535")
    params["boot_order"] = tuple(order_list)
    options = doc.get("boot_options", {"Boot0000": "uiapp"})
    if not isinstance(options, dict):
        raise _err(path, "boot_options", "boot_options maps Boot#### to 'uiapp' or hex")
    opts = []
    for k, v in options.items():
        m = re.fullmatch(r"Boot([0-9A-Fa-f]{4})", str(k))
        if not m:
            raise _err(path, f"boot_options.{k}", "keys are Boot#### (4 hex digits)")
        if v == "uiapp":
            data = ovmf_uiapp_boot_option()
        else:
            try:
                data = bytes.fromhex(str(v))
            except ValueError:
                raise _err(path, f"boot_options.{k}", "value is 'uiapp' or hex") from None
        opts.append((int(m.group(1), 16), data))
    params["boot_options"] = tuple(opts)
    params["extra_rtmr0_events"] = _events(path, "extra_rtmr0_events",
                                           doc.get("extra_rtmr0_events", []), 0,
                                           EventType.EV_PLATFORM_CONFIG_FLAGS)
    params["runtime_events"] = _events(path, "runtime_events", doc.get("runtime_events", []), 3,
                                       EventType.EV_EVENT_TAG)
    params["knobs"] = (("memory", params["memory"]),
                       ("qemu_setup_header_patch", params["qemu_setup_header_patch"]),
                       ("load_options_initrd_first", params["load_options_initrd_first"]),
                       ("secure_boot_feature", params["secure_boot_feature"]),
                       ("acpi_blobs", blobs is not None))
    return TdxParams(**params)
