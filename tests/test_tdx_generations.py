"""The RTMR0 events of the TDX profiles for EDK2 >= edk2-stable202505 against a real TD.

No full CC event log of an edk2-stable202505+ TD is published in what was searched (trustee,
go-tdx-guest, evidence-api, dstack, canonical/tdx test data are all older firmware); the nearest
real evidence is tests/vectors/tdx/dstack/stable202505_rtmr0.json: the RTMR0 layout of a dstack
0.5.10 TD (OVMF IntelTdxX64 at edk2 6951dfe7d5 = edk2-stable202505) and the digests captured from
its log, whose replay equalled the quote. Oracles:

- the order of the 17 events and the captured digests (BootOrder, Boot0000, Boot0001, the
  bootorder fw_cfg item, the SMBIOS event): the real log;
- event types and event data, hand-derived from the edk2 source at edk2-stable202505:
  QemuFwCfgCacheInit.c (FW_CFG_EVENT: "QEMU FW CFG" NUL + the name in QEMU_FW_CFG_FNAME_SIZE = 56
  bytes, EV_PLATFORM_CONFIG_FLAGS, MR index 1, digest over the item's bytes);
  SmbiosMeasurementDxe.c (EV_EFI_HANDOFF_TABLES while PcdTcgPfpMeasurementRevision is below 105,
  which OvmfPkg leaves at its MdeModulePkg.dec default 0; data EFI_HANDOFF_TABLE_POINTERS);
  TdTcg2Dxe.c ReadAndMeasureBootVariable (EV_EFI_VARIABLE_BOOT).
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from builder.formats import ccel
from builder.formats.tcg import EventType, uefi_variable_data
from builder.formats.tdvf import parse_tdvf_metadata
from builder.measure.tdx import measure_tdx, rtmr0_events
from builder.measure.tdx_events import ovmf_uiapp_boot_option
from builder.measure.tdx_profile import load_profile
from builder.verify.explain_tdx import TdxInputs, explain_tdx
from builder.verify.tdx import log_events
from helpers import ccel_log

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "recipes" / "profiles"
NEW = ("qemu-9.2-ovmf-202505-fwcfg", "qemu-10.1-ovmf-202508", "qemu-10.1-ovmf-202511")
ACPI = (b"table-loader", b"rsdp", b"tables")
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
SMBIOS3_TABLE_GUID = uuid.UUID("f2fd1544-9794-4a2c-992e-e5bbcf20e394")   # gEfiSmbios3TableGuid

# Event type of each kind, from the edk2-stable202505 source (module docstring).
TYPES = {"td-hob": "EV_EFI_HANDOFF_TABLES2", "cfv": "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
         "fw_cfg": "EV_PLATFORM_CONFIG_FLAGS", "variable": "EV_EFI_VARIABLE_DRIVER_CONFIG",
         "separator": "EV_SEPARATOR", "acpi": "EV_PLATFORM_CONFIG_FLAGS",
         "smbios": "EV_EFI_HANDOFF_TABLES", "boot-variable": "EV_EFI_VARIABLE_BOOT"}


@pytest.fixture(scope="module")
def real(vectors) -> list[dict]:
    return json.loads((vectors / "tdx/dstack/stable202505_rtmr0.json").read_text())["rtmr0"]


def _fw_cfg_event_data(name: str) -> bytes:
    return b"QEMU FW CFG\0" + name.encode().ljust(56, b"\0")


def _qemu_fw_cfg(real: list[dict]) -> dict[str, bytes]:
    return {e["name"]: bytes.fromhex(e["data_hex"]) for e in real if e["event"] == "fw_cfg"}


def _profile_copy(tmp: Path, name: str, real: list[dict], smbios: str | None = None) -> Path:
    """The shipped profile with the VMM data of the real TD given as files (fw_cfg items, ACPI
    test blobs) and, when ``smbios``, the SMBIOS tables' digest."""
    d = tmp / name
    d.mkdir()
    text = (PROFILES / f"{name}.yaml").read_text()
    for n, data in _qemu_fw_cfg(real).items():
        (d / f"fw_cfg-{n}").write_bytes(data)
    for i, b in enumerate(ACPI):
        (d / f"acpi{i}").write_bytes(b)
    text += "fw_cfg_files:\n" + "".join(f"  {n}: fw_cfg-{n}\n" for n in _qemu_fw_cfg(real))
    text += "acpi_blobs: [acpi0, acpi1, acpi2]\n"
    if smbios is not None:
        text += f"smbios_digest: {smbios}\n"
    (d / f"{name}.yaml").write_text(text)
    return d / f"{name}.yaml"


def _kind(e) -> tuple[str, str | None]:
    """An engine event as (kind, name) in the vector's terms."""
    t, desc = e.type.name, e.description
    if desc == "TD HOB":
        return "td-hob", None
    if desc == "CFV":
        return "cfv", None
    if desc.startswith("QEMU FW CFG ("):
        return "fw_cfg", desc[13:-1]
    if desc.startswith("ACPI DATA ("):
        return "acpi", desc[11:-1]
    if t == "EV_EFI_VARIABLE_DRIVER_CONFIG":
        return "variable", desc
    if t == "EV_EFI_VARIABLE_BOOT":
        return "boot-variable", desc
    if t == "EV_SEPARATOR":
        return "separator", None
    if t == "EV_EFI_HANDOFF_TABLES" or "SMBIOS" in desc.upper():
        return "smbios", None
    return t, desc


@pytest.mark.parametrize("name", NEW)
def test_rtmr0_events_follow_the_real_202505_layout(name, real, tdvf_firmware):
    params = load_profile(PROFILES / f"{name}.yaml")
    ev = rtmr0_events(tdvf_firmware, parse_tdvf_metadata(tdvf_firmware), params)
    assert [_kind(e) for e in ev] == [(r["event"], r.get("name")) for r in real]
    assert [e.type.name for e in ev] == [TYPES[r["event"]] for r in real]


@pytest.mark.parametrize("name", NEW)
def test_boot_variables_are_the_real_logs(name, real, tdvf_firmware):
    params = load_profile(PROFILES / f"{name}.yaml")
    ev = rtmr0_events(tdvf_firmware, parse_tdvf_metadata(tdvf_firmware), params)
    got = {e.description: e.digest.hex() for e in ev if e.type == EventType.EV_EFI_VARIABLE_BOOT}
    want = {r["name"]: r["digest"] for r in real if r["event"] == "boot-variable"}
    assert got == want


def test_pre_202505_profile_has_none_of_the_new_events(real, tdvf_firmware):
    """qemu-9.2-ovmf-202505 models EDK2 202411..202502 (the recipes' Debian 2025.02): its
    RTMR0 is the real layout without the five events edk2-stable202505 added."""
    params = load_profile(PROFILES / "qemu-9.2-ovmf-202505.yaml")
    ev = rtmr0_events(tdvf_firmware, parse_tdvf_metadata(tdvf_firmware), params)
    added = [("fw_cfg", "BootMenu"), ("fw_cfg", "bootorder"), ("smbios", None),
             ("boot-variable", "Boot0001")]
    assert [_kind(e) for e in ev] == [(r["event"], r.get("name")) for r in real
                                      if (r["event"], r.get("name")) not in added]


def test_fw_cfg_digests_from_qemus_data_are_the_real_logs(real, tdvf_firmware, tmp_path):
    """QEMU's bootorder for a -kernel boot ('/rom@genroms/linuxboot_dma.bin' NUL, QEMU
    x86_load_linux) hashes to the captured digest, and the profile's fw_cfg_files give it."""
    data = _qemu_fw_cfg(real)
    logged = {r["name"]: r.get("digest") for r in real if r["event"] == "fw_cfg"}
    assert hashlib.sha384(data["bootorder"]).hexdigest() == logged["bootorder"]
    assert data["BootMenu"] == b"\0\0"                     # QEMU FW_CFG_BOOT_MENU, no -boot menu
    params = load_profile(_profile_copy(tmp_path, "qemu-10.1-ovmf-202508", real))
    ev = rtmr0_events(tdvf_firmware, parse_tdvf_metadata(tdvf_firmware), params)
    got = {_kind(e)[1]: e.digest for e in ev if _kind(e)[0] == "fw_cfg"}
    assert got == {n: hashlib.sha384(b).digest() for n, b in data.items()}


def _real_layout_log(real, tdvf_firmware, params, kernel, initrd, append) -> bytes:
    """A CCEL log in the real TD's RTMR0 order and event shapes: the captured digests where the
    vector has them, this firmware's TD HOB/CFV/Secure Boot digests and the test ACPI blobs
    elsewhere (not under test); RTMR1/RTMR2 as the engine computes them."""
    r = measure_tdx(tdvf_firmware, None, initrd, append, params, kernel_authenticode=kernel)
    own = {_kind(e): e.digest for e in r.events if e.rtmr == 0}
    acpi = dict(zip(("etc/table-loader", "etc/acpi/rsdp", "etc/acpi/tables"), ACPI))
    evs = []
    for x in real:
        k, n = x["event"], x.get("name")
        if "digest" in x:
            dg = bytes.fromhex(x["digest"])
        elif k == "acpi":
            dg = hashlib.sha384(acpi[n]).digest()
        elif k == "fw_cfg":
            dg = hashlib.sha384(bytes.fromhex(x["data_hex"])).digest()
        else:
            dg = own[(k, n)]
        data = {"fw_cfg": lambda: _fw_cfg_event_data(n),
                "acpi": lambda: b"ACPI DATA",
                "separator": lambda: b"\0\0\0\0",
                "smbios": lambda: struct.pack("<Q", 1) + SMBIOS3_TABLE_GUID.bytes_le
                + struct.pack("<Q", 0x7F8EF000),
                "boot-variable": lambda: uefi_variable_data(EFI_GLOBAL_VARIABLE, n, b"\0\0\1\0")
                if n == "BootOrder" else None}.get(k, lambda: None)()
        evs.append({"register": 0, "event_type": TYPES[k], "digest": dg, "data": data,
                    "description": f"{k} {n or ''}"})
    evs += [{"register": e.rtmr, "event_type": e.type.name, "digest": e.digest,
             "description": e.description} for e in r.events if e.rtmr != 0]
    return ccel_log(evs)


@pytest.fixture(scope="module")
def launch():
    """(the kernel's Authenticode SHA-384, initrd, command line): RTMR1/RTMR2 are not under
    test, so the kernel is given by digest (with or without QEMU's setup-header patch)."""
    return hashlib.sha384(b"kernel").digest(), b"initrd" * 9, "console=hvc0"


@pytest.mark.parametrize("name", NEW)
def test_explain_agrees_with_a_real_layout_log(name, real, tdvf_firmware, tmp_path, launch):
    """`ccbuild explain --ccel` of a log in the real layout against the shipped profile (with the
    TD's VMM data given): no divergence, so RTMR0 is reproduced event by event."""
    smbios = next(r["digest"] for r in real if r["event"] == "smbios")
    prof = _profile_copy(tmp_path, name, real, smbios=smbios)
    kernel, initrd, append = launch
    log = _real_layout_log(real, tdvf_firmware, load_profile(prof), kernel, initrd, append)
    files = {"log": log, "fw": tdvf_firmware, "initrd": initrd}
    for k, b in files.items():
        (tmp_path / k).write_bytes(b)
    cp = subprocess.run([sys.executable, "-m", "builder.cli", "explain", "--ccel",
                         tmp_path / "log", "--firmware", tmp_path / "fw",
                         "--kernel-authenticode", kernel.hex(), "--initrd", tmp_path / "initrd", "--append", append,
                         "--profile", prof, "--json"], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
    doc = json.loads(cp.stdout)
    assert doc["divergences"] == [] and cp.returncode == 0, (doc["divergences"], cp.stderr)


def _explain(real, tdvf_firmware, params, launch, log_params=None):
    kernel, initrd, append = launch
    log = _real_layout_log(real, tdvf_firmware, log_params or params, kernel, initrd, append)
    ex = explain_tdx(log_events(ccel.parse_event_log(log)),
                     TdxInputs(firmware=tdvf_firmware, kernel_authenticode=kernel, initrd=initrd,
                               append=append, params=params))
    return [(d.register, d.cause, d.explained) for d in ex.divergences], ex


def _rtmr0(real, tdvf_firmware, params, launch, log_params):
    """(RTMR0 the engine expects with ``params``, RTMR0 the real-layout log replays to)."""
    kernel, initrd, append = launch
    log = _real_layout_log(real, tdvf_firmware, log_params, kernel, initrd, append)
    r = measure_tdx(tdvf_firmware, None, initrd, append, params, kernel_authenticode=kernel)
    return r.rtmr[0], ccel.replay(ccel.parse_event_log(log))[0]


def _real_profile(real, tmp_path):
    """qemu-10.1-ovmf-202508 with the real TD's VMM data (fw_cfg items, SMBIOS digest)."""
    smbios = next(r["digest"] for r in real if r["event"] == "smbios")
    return load_profile(_profile_copy(tmp_path, "qemu-10.1-ovmf-202508", real, smbios=smbios))


def test_the_pre_fix_202508_knobs_do_not_reproduce_the_real_layout(real, tdvf_firmware,
                                                                  tmp_path, launch):
    """What the 202508 profile said before (one UiApp boot option, no fw_cfg items, no SMBIOS
    event) is told apart from the real layout, each of the three named: the tests above can
    fail."""
    good = _real_profile(real, tmp_path)
    old = replace(good, fw_cfg_items=(), fw_cfg_digests=(), smbios_measured=False,
                  smbios_digest=None, boot_order=(0,),
                  boot_options=((0, ovmf_uiapp_boot_option()),))
    causes, ex = _explain(real, tdvf_firmware, old, launch, log_params=good)
    assert causes == [("rtmr0", "firmware-generation", True)] * 2 + [
        ("rtmr0", "boot-options", True)]
    fw_cfg, smbios, boot = ex.divergences
    assert "fw_cfg_items: ['BootMenu', 'bootorder']" in fw_cfg.fix
    assert "smbios_measured: true" in smbios.fix
    assert smbios.log_event == 1 + [r["event"] for r in real].index("smbios")
    assert "boot_order: [0, 1]" in boot.fix and "Boot0000: boot-manager-menu" in boot.fix \
        and "Boot0001: firmware-setup" in boot.fix
    for d in ex.divergences:
        assert "qemu-10.1-ovmf-202508" in d.fix and "qemu-9.2-ovmf-202505-fwcfg" in d.fix
    want, logged = _rtmr0(real, tdvf_firmware, old, launch, log_params=good)
    assert want != logged
    want, logged = _rtmr0(real, tdvf_firmware, good, launch, log_params=good)
    assert want == logged


def test_smbios_knob_puts_the_event_where_the_real_td_logs_it(real, tdvf_firmware, tmp_path,
                                                              launch):
    """smbios_measured logs EV_EFI_HANDOFF_TABLES after the ACPI events, before BootOrder, as the
    real TD does: with the real SMBIOS digest RTMR0 is the real layout's; without the knob it is
    not, and explain names the SMBIOS event it finds in the log (EV_EFI_HANDOFF_TABLES with
    EFI_HANDOFF_TABLE_POINTERS of the SMBIOS 3.0 GUID, not a ..._TABLES2 "SmbiosTable")."""
    good = _real_profile(real, tmp_path)
    assert _explain(real, tdvf_firmware, good, launch)[0] == []
    want, logged = _rtmr0(real, tdvf_firmware, good, launch, log_params=good)
    assert want == logged
    without = replace(good, smbios_measured=False, smbios_digest=None)
    want, logged = _rtmr0(real, tdvf_firmware, without, launch, log_params=good)
    assert want is not None and want != logged
    causes, ex = _explain(real, tdvf_firmware, without, launch, log_params=good)
    assert causes == [("rtmr0", "firmware-generation", True)]
    assert "the log measures the SMBIOS tables" in ex.divergences[0].detail
    assert ex.params.smbios_digest.hex() == next(r["digest"] for r in real
                                                 if r["event"] == "smbios")


def test_smbios_event_in_the_pfp_105_form_is_recognised(real, tdvf_firmware, tmp_path, launch):
    """A firmware built with PcdTcgPfpMeasurementRevision >= 105 logs the same SMBIOS digest as
    EV_EFI_HANDOFF_TABLES2 with EFI_HANDOFF_TABLE_POINTERS2 (TableDescription "SmbiosTable"):
    the same event to explain, while a handoff-tables event of another table is not."""
    good = _real_profile(real, tmp_path)
    kernel, initrd, append = launch
    log = ccel.parse_event_log(_real_layout_log(real, tdvf_firmware, good, kernel, initrd,
                                                append))
    events = log_events(log)
    k = next(i for i, e in enumerate(events) if e["event_type"] == "EV_EFI_HANDOFF_TABLES")
    tables = struct.pack("<Q", 1) + SMBIOS3_TABLE_GUID.bytes_le + struct.pack("<Q", 0x7F8EF000)
    pfp105 = dict(events[k], event_type="EV_EFI_HANDOFF_TABLES2",
                  data=bytes([12]) + b"SmbiosTable\0" + tables)
    inputs = TdxInputs(firmware=tdvf_firmware, kernel_authenticode=kernel, initrd=initrd,
                       append=append, params=good)
    ex = explain_tdx(events[:k] + [pfp105] + events[k + 1:], inputs)
    assert ex.divergences == []
    acpi_guid = uuid.UUID("8868e871-e4f1-11d3-bc22-0080c73c8881")   # gEfiAcpi20TableGuid
    other = dict(events[k], data=struct.pack("<Q", 1) + acpi_guid.bytes_le + bytes(8))
    ex = explain_tdx(events[:k] + [other] + events[k + 1:], inputs)
    assert [(d.cause, "has no SMBIOS event" in d.detail) for d in ex.divergences] == [
        ("firmware-generation", True)]


def test_vector_is_vendored_with_its_source(vectors):
    text = (vectors / "README.md").read_text()
    assert "tdx/dstack/stable202505_rtmr0.json" in text and "Dstack-TEE/dstack" in text
