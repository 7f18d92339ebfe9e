"""`ccbuild explain` for TDX: real TD logs (tests/vectors/tdx) are classified as the logs show
(separator placement, TD HOB memory), and logs built from the engine's expected events with one
input changed are explained as exactly that change.

Oracles: the real logs (which register holds the ReadyToBoot separator is read off the log; the
trustee Kata log's TD HOB is the one QEMU builds for Kata's default 2048 MiB); the CCEL serializer
in tests/helpers.py round-trips the real trustee log to the same replay."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from builder.formats import ccel
from builder.formats.tcg import uefi_variable_data
from builder.formats.tdvf import parse_tdvf_metadata
from builder.measure.tdx import fw_cfg_event_data, measure_tdx
from builder.measure.tdx_events import EFI_GLOBAL_VARIABLE
from builder.measure.tdx_mrtd import PageAddOrder, mrtd
from builder.measure.tdx_profile import load_profile
from builder.verify.explain_tdx import TdxInputs, explain_tdx
from builder.verify.tdx import log_events
from helpers import ccel_log, minimal_pe

REPO = Path(__file__).resolve().parent.parent
APPEND = "console=hvc0 quiet agent.log=debug"


def ccbuild(*args):
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def fw_file(tdvf_firmware, tmp_path_factory):
    p = tmp_path_factory.mktemp("fw") / "tdvf.fd"
    p.write_bytes(tdvf_firmware)
    return p


def test_ccel_helper_round_trips_a_real_log(vectors):
    log = ccel.parse_event_log((vectors / "tdx/trustee/CCEL_data_ovmf").read_bytes())
    evs = [{"register": f"rtmr{e.rtmr}", "event_type": e.event_type, "digest": e.digest(),
            "data": e.data} for e in log.events if e.rtmr is not None]
    assert ccel.replay(ccel.parse_event_log(ccel_log(evs))) == ccel.replay(log)


def test_trustee_kata_log_separator_in_rtmr0_and_memory_inferred(vectors, fw_file):
    cp = ccbuild("explain", "--ccel", vectors / "tdx/trustee/CCEL_data_ovmf", "--firmware",
                 fw_file, "--profile", "qemu-10.1-ovmf-202508", "--memory", "4G", "--json")
    doc = json.loads(cp.stdout)
    causes = {(d["register"], d["cause"]): d for d in doc["divergences"]}
    sep = causes[("rtmr0", "firmware-generation")]
    assert "ready_to_boot_separator: rtmr0" in sep["fix"]
    hob = causes[("rtmr0", "td-hob")]
    assert hob["explained"] and "2G" in hob["detail"] and hob["log_event"] == 1
    assert doc["profile"]["memory"] == 2 << 30
    assert cp.returncode == 0, cp.stderr


def test_trustee_kata_log_agrees_with_the_202402_profile(vectors, fw_file):
    cp = ccbuild("explain", "--ccel", vectors / "tdx/trustee/CCEL_data_ovmf", "--firmware",
                 fw_file, "--profile", "qemu-8.2-ovmf-202402", "--json")
    doc = json.loads(cp.stdout)
    assert cp.returncode == 0 and doc["divergences"] == [], doc["divergences"]


def test_gce_log_separator_in_rtmr1_and_disk_boot(vectors, fw_file):
    d = vectors / "tdx/go-tdx-guest"
    cp = ccbuild("explain", "--ccel", d / "ccel_table.dat", d / "ccel_data.dat", "--tdx-quote",
                 d / "cos-113-tdx-quote.dat", "--firmware", fw_file, "--json")
    doc = json.loads(cp.stdout)
    causes = [d["cause"] for d in doc["divergences"]]
    assert "firmware-generation" not in causes          # separator in RTMR1 as expected
    assert "boot-path" in causes and "log-quote" not in causes
    assert doc["quote"]["rtmr0"] == "log replays to the quote"
    assert cp.returncode == 1     # a GCE firmware: its MRTD/TD HOB/CFV are not the given ones


def test_evidence_api_log_separator_in_rtmr0(vectors, fw_file):
    d = vectors / "tdx/evidence-api"
    cp = ccbuild("explain", "--ccel", d / "ccel_data.bin", "--tdx-quote", d / "quote.bin",
                 "--firmware", fw_file, "--json")
    doc = json.loads(cp.stdout)
    sep = [x for x in doc["divergences"] if x["cause"] == "firmware-generation"]
    assert sep and "rtmr0" in sep[0]["fix"]


# --- edited evidence: a log built from the engine's events with one input changed -----------

ACPI = (b"table-loader", b"rsdp", b"tables")


def _data(e) -> bytes | None:
    if e.description.startswith("ACPI DATA"):
        return b"ACPI DATA"
    if e.description.startswith("QEMU FW CFG"):
        return fw_cfg_event_data(e.description[13:-1])
    if e.description == "BootOrder":
        return uefi_variable_data(EFI_GLOBAL_VARIABLE, "BootOrder", b"\0\0")
    return None


@pytest.fixture(scope="module")
def base(tdvf_firmware):
    params = replace(load_profile("qemu-10.1-ovmf-202508"), acpi_blobs=ACPI)
    return TdxInputs(firmware=tdvf_firmware, kernel=minimal_pe(b"kernel"), initrd=b"initrd" * 9,
                     append=APPEND, params=params)


def _log(inputs: TdxInputs, params=None, append=None, initrd=None):
    r = measure_tdx(inputs.firmware, inputs.kernel, initrd or inputs.initrd,
                    append or inputs.append, params or inputs.params)
    evs = [{"register": e.rtmr, "event_type": e.type.name, "digest": e.digest,
            "data": _data(e), "description": e.description} for e in r.events]
    return log_events(ccel.parse_event_log(ccel_log(evs)))


def _explain(inputs, log, **kw):
    ex = explain_tdx(log, inputs, **kw)
    return ex, [(d.register, d.cause) for d in ex.divergences]


def test_unchanged_log_has_no_divergence(base):
    ex, causes = _explain(base, _log(base))
    assert causes == [] and ex.explained


def test_one_command_line_byte(base):
    changed = APPEND.replace("quiet", "quieT")
    ex, causes = _explain(replace(base, cmdline_candidates=(("--append", changed),)),
                          _log(base, append=changed))
    assert causes == [("rtmr2", "cmdline")] and ex.explained
    d = ex.divergences[0].detail
    assert f"byte {APPEND.index('quiet') + 4}" in d and repr(changed) in d and repr(APPEND) in d


def test_memory_size(base):
    ex, causes = _explain(base, _log(base, params=replace(base.params, memory=3 << 30)))
    assert causes == [("rtmr0", "td-hob")] and ex.explained and ex.params.memory == 3 << 30
    assert "3G" in ex.divergences[0].fix


def test_firmware_generation_separator(base):
    ex, causes = _explain(base, _log(base, params=replace(base.params,
                                                            ready_to_boot_separator=0)))
    assert causes == [("rtmr0", "firmware-generation")] and ex.explained
    assert "qemu-8.2-ovmf-202402" in ex.divergences[0].fix


def test_firmware_generation_fw_cfg_events(base):
    p = replace(base.params, fw_cfg_items=("BootMenu", "bootorder"),
                fw_cfg_digests=(b"\1" * 48, b"\2" * 48))
    ex, causes = _explain(base, _log(base, params=p))
    assert causes == [("rtmr0", "firmware-generation")] and ex.explained
    assert "fw_cfg_items: ['BootMenu', 'bootorder']" in ex.divergences[0].fix


def test_load_options_order(base):
    ex, causes = _explain(base, _log(base, params=replace(base.params,
                                                            load_options_initrd_first=False)))
    assert causes == [("rtmr2", "load-options-order")] and ex.explained
    assert "load_options_initrd_first: false" in ex.divergences[0].fix


def test_initrd(base):
    ex, causes = _explain(base, _log(base, initrd=b"another initrd"))
    assert causes == [("rtmr2", "initrd")] and not ex.explained


def test_page_add_order(base):
    fw = base.firmware
    two = mrtd(fw, parse_tdvf_metadata(fw), PageAddOrder.TWO_PASS)
    log = _log(base)
    ex, causes = _explain(base, log, quote_mrtd=two)
    assert causes == [("mrtd", "page-add-order")] and ex.explained
    assert "two-pass" in ex.divergences[0].fix


def test_diagnosis_under_one_second(base):
    log = _log(base, params=replace(base.params, memory=(16 << 30) - (1 << 20)))
    t = time.perf_counter()
    ex, causes = _explain(base, log)
    assert time.perf_counter() - t < 1.0
    assert causes == [("rtmr0", "td-hob")]
