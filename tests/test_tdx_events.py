"""Event digests recomputed from the event data of a real TDX CCEL log (GCE, go-tdx-guest
testdata), with the project's own digest functions; our RTMR extend agrees with that log's
replay into the quote's RTMRs."""

from __future__ import annotations

import pytest

from builder.formats.ccel import parse_event_log, replay
from builder.formats import tcg as rtmr
from builder.formats.tcg import parse_uefi_variable_data
from builder.measure.tdx_events import (
    CALLING_EFI_APPLICATION, EXIT_BOOT_SERVICES_INVOCATION, EXIT_BOOT_SERVICES_SUCCEEDED,
    EventType, efi_action_digest, kernel_load_options, ovmf_uiapp_boot_option,
    separator_digest, variable_authority_digest, variable_boot_digest,
    variable_driver_config_digest)


@pytest.fixture(scope="module")
def log(vectors):
    return parse_event_log((vectors / "tdx" / "go-tdx-guest" / "ccel_data.dat").read_bytes())


def _of(log, t: EventType):
    return [e for e in log.events if e.event_type == t]


def test_separators(log):
    seps = _of(log, EventType.EV_SEPARATOR)
    assert len(seps) >= 2
    for e in seps:
        assert e.data == b"\0\0\0\0"
        assert separator_digest() == e.digest()


def test_efi_actions(log):
    actions = _of(log, EventType.EV_EFI_ACTION)
    texts = [e.data.decode("ascii") for e in actions]
    assert texts == [CALLING_EFI_APPLICATION, EXIT_BOOT_SERVICES_INVOCATION,
                     EXIT_BOOT_SERVICES_SUCCEEDED]
    for e, t in zip(actions, texts):
        assert efi_action_digest(t) == e.digest()


def test_secure_boot_variables_driver_config(log):
    evs = _of(log, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG)
    names = []
    for e in evs:
        vendor, name, data = parse_uefi_variable_data(e.data)
        names.append(name)
        assert variable_driver_config_digest(vendor, name, data) == e.digest()
    assert names == ["SecureBoot", "PK", "KEK", "db", "dbx"]


def test_boot_variables(log):
    evs = _of(log, EventType.EV_EFI_VARIABLE_BOOT)
    names = []
    for e in evs:
        vendor, name, data = parse_uefi_variable_data(e.data)
        names.append(name)
        assert variable_boot_digest(data) == e.digest()
    assert names[0] == "BootOrder"
    assert "Boot0000" in names


def test_uiapp_boot_option_built_from_its_fields_matches_the_log(log):
    """OVMF's Boot0000 (UiApp) as it appears in the real log equals the option we construct from
    EDK2's attributes, description, FV name and file GUIDs."""
    boot0000 = [parse_uefi_variable_data(e.data)[2] for e in _of(log, EventType.EV_EFI_VARIABLE_BOOT)
                if parse_uefi_variable_data(e.data)[1] == "Boot0000"]
    assert boot0000 == [ovmf_uiapp_boot_option()]


def test_variable_authority(log):
    for e in _of(log, EventType.EV_EFI_VARIABLE_AUTHORITY):
        vendor, name, data = parse_uefi_variable_data(e.data)
        assert variable_authority_digest(vendor, name, data) == e.digest()


def test_rtmr_extend_agrees_with_log_replay(log):
    by_reg: dict[int, list[bytes]] = {}
    for e in log.events:
        if e.rtmr is not None and e.event_type != 0x3:  # EV_NO_ACTION is not extended
            by_reg.setdefault(e.rtmr, []).append(e.digest())
    ours = tuple(rtmr.replay(by_reg.get(i, [])) for i in range(4))
    assert ours == replay(log)


def test_load_options_orders():
    def s(b):
        return b.decode("utf-16-le")
    assert s(kernel_load_options("console=ttyS0", True, True)) == "initrd=initrd console=ttyS0\0"
    assert s(kernel_load_options("console=ttyS0", True, False)) == "console=ttyS0 initrd=initrd\0"
    assert s(kernel_load_options("console=ttyS0", False, True)) == "console=ttyS0\0"
    assert s(kernel_load_options(None, True, False)) == "initrd=initrd\0"
