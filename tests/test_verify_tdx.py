"""`ccbuild verify OUT --tdx-quote Q --ccel TABLE DATA` on the real GCE TDX evidence in
tests/vectors/tdx: the quote's registers, the log's replay, every self-describing event
against its own data, and an altered copy of the log reported as the event that was altered.

The expected event list is made with the engine's digest functions (separator, EFI action
strings, UEFI variable events) from what each event says it measured; events whose content the
engine cannot know (GCE's firmware volume, TD HOB, ACPI tables, shim and GRUB images) are
copied from the log, and only those. MRTD and RTMR0-3 expected come from the quote."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from builder.formats import ccel
from builder.formats.tcg import EventType, parse_uefi_variable_data
from builder.measure import tdx_events as te

REPO = Path(__file__).resolve().parent.parent


def ccbuild(*args):
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def engine_digest(type_name: str, data: bytes) -> bytes | None:
    if type_name == "EV_SEPARATOR":
        assert data == te.SEPARATOR_DATA
        return te.separator_digest()
    if type_name == "EV_EFI_ACTION":
        return te.efi_action_digest(data.decode("ascii"))
    if type_name in ("EV_EFI_VARIABLE_DRIVER_CONFIG", "EV_EFI_VARIABLE_AUTHORITY"):
        return te.variable_driver_config_digest(*parse_uefi_variable_data(data))
    if type_name == "EV_EFI_VARIABLE_BOOT":
        return te.variable_boot_digest(parse_uefi_variable_data(data)[2])
    return None


@pytest.fixture
def tdx(vectors):
    d = vectors / "tdx/go-tdx-guest"
    return d / "cos-113-tdx-quote.dat", d / "ccel_table.dat", d / "ccel_data.dat"


def expected_out(tmp_path: Path, quote: Path, log_bytes: bytes) -> tuple[Path, int]:
    from builder.formats.tdx_quote import parse_quote
    body = parse_quote(quote.read_bytes()).body
    log = ccel.parse_event_log(log_bytes)
    events, from_engine = [], 0
    for ev in log.events:
        if ev.event_type == EventType.EV_NO_ACTION:
            continue
        d = engine_digest(ev.type_name, ev.data)
        if d is not None:
            from_engine += 1
        else:
            d = ev.digest(ccel.TPM_ALG_SHA384)
        events.append({"register": f"rtmr{ev.rtmr}", "event_type": ev.type_name,
                       "description": ev.describe(), "digest": d.hex()})
    rec = {"mrtd": body.mrtd.hex(), **{f"rtmr{i}": body.rtmrs[i].hex() for i in range(4)},
           "profile": {}, "events": events}
    out = tmp_path / "out"
    out.mkdir()
    (out / "measurements.json").write_text(json.dumps({"tdx": rec}))
    (out / "SHA256SUMS").write_text("")
    return out, from_engine


def quote_verdict(cp) -> dict:
    doc = json.loads(cp.stdout)
    return next(v for v in doc["verdicts"] if "TDX evidence" in v["title"])


def by_item(v: dict) -> dict:
    return {c["item"]: c for c in v["checks"]}


def test_real_log_and_quote_agree(tdx, tmp_path):
    quote, table, data = tdx
    out, from_engine = expected_out(tmp_path, quote, data.read_bytes())
    assert from_engine >= 14          # variables, boot variables, separators, actions
    cp = ccbuild("verify", out, "--tdx-quote", quote, "--ccel", table, data, "--json")
    v = quote_verdict(cp)
    assert v["ok"], json.dumps([c for c in v["checks"] if c["status"] == "FAIL"], indent=1)
    rows = by_item(v)
    for i in range(4):
        assert rows[f"log replay rtmr{i}"]["status"] == "ok"
        assert rows[f"log rtmr{i} events"]["status"] == "ok"
    assert rows["ccel table"]["detail"].startswith("CC type Intel TDX, checksum valid")
    assert rows["log event data"]["detail"].startswith("16 self-describing events")
    assert rows["mrconfigid"]["status"] == "ok"


def _record(log_bytes: bytes, number: int):
    log = ccel.parse_event_log(log_bytes)
    ev = next(e for e in log.events if e.number == number)
    end = next((e.offset for e in log.events if e.number == number + 1), log.end_offset)
    digest = ev.digest(ccel.TPM_ALG_SHA384)
    d_at = log_bytes.index(digest, ev.offset, end)
    data_at = end - len(ev.data)
    assert log_bytes[data_at - 4:data_at] == struct.pack("<I", len(ev.data))
    return ev, d_at, data_at


def test_altered_variable_is_reported_as_that_event(tdx, tmp_path):
    """The db variable (log event #6) with one byte changed, measured as a firmware would
    (its digest recomputed over the new UEFI_VARIABLE_DATA)."""
    quote, table, data = tdx
    raw = data.read_bytes()
    out, _ = expected_out(tmp_path, quote, raw)
    ev, d_at, data_at = _record(raw, 6)
    assert ev.describe().startswith("db (")
    new_data = bytearray(ev.data)
    new_data[-10] ^= 0x01
    new_digest = hashlib.sha384(bytes(new_data)).digest()   # TCG: over UEFI_VARIABLE_DATA
    b = bytearray(raw)
    b[data_at:data_at + len(new_data)] = new_data
    b[d_at:d_at + 48] = new_digest
    (tmp_path / "log").write_bytes(bytes(b))
    cp = ccbuild("verify", out, "--tdx-quote", quote, "--ccel", table, tmp_path / "log", "--json")
    assert cp.returncode == 1
    rows = by_item(quote_verdict(cp))
    bad = rows["log rtmr0 events"]
    assert bad["status"] == "FAIL"
    assert bad["detail"].startswith("event 6 (log #6 @0x")
    assert "EV_EFI_VARIABLE_DRIVER_CONFIG 'db (" in bad["detail"]
    assert bad["actual"] == new_digest.hex() and bad["expected"] != bad["actual"]
    assert rows["log replay rtmr0"]["status"] == "FAIL"       # the quote disagrees too
    assert rows["log rtmr1 events"]["status"] == "ok"


def test_data_changed_without_its_digest_is_named(tdx, tmp_path):
    quote, table, data = tdx
    raw = data.read_bytes()
    out, _ = expected_out(tmp_path, quote, raw)
    ev, _, data_at = _record(raw, 13)                   # Boot0001
    b = bytearray(raw)
    b[data_at + len(ev.data) - 3] ^= 0x20
    (tmp_path / "log").write_bytes(bytes(b))
    cp = ccbuild("verify", out, "--tdx-quote", quote, "--ccel", table, tmp_path / "log", "--json")
    assert cp.returncode == 1
    row = by_item(quote_verdict(cp))["log event data"]
    assert row["status"] == "FAIL"
    assert row["detail"].startswith("log #13 @0x2320 rtmr0 EV_EFI_VARIABLE_BOOT 'Boot0001")


def test_quote_registers_compared(tdx, tmp_path):
    quote, _, data = tdx
    out, _ = expected_out(tmp_path, quote, data.read_bytes())
    m = json.loads((out / "measurements.json").read_text())
    m["tdx"]["rtmr2"] = "00" * 48
    m["tdx"]["rtmr0"] = None
    m["tdx"]["rtmr0_reason"] = "no VMM profile given"
    (out / "measurements.json").write_text(json.dumps(m))
    cp = ccbuild("verify", out, "--tdx-quote", quote, "--json")
    rows = by_item(quote_verdict(cp))
    assert rows["mrtd"]["status"] == "ok" and rows["rtmr1"]["status"] == "ok"
    assert rows["rtmr2"]["status"] == "FAIL"
    assert rows["rtmr0"]["status"] == "skip" and "no VMM profile" in rows["rtmr0"]["detail"]



def test_malformed_variable_event_is_not_recomputable_not_an_error():
    """A variable event whose UEFI_VARIABLE_DATA lengths lie cannot be recomputed from its data:
    that is a finding about the log (None), not bad input ending the whole check."""
    from builder.verify.tdx import _digest_from_data
    bad = bytes(16) + struct.pack("<QQ", 1000, 5) + b"x" * 10
    assert _digest_from_data("EV_EFI_VARIABLE_DRIVER_CONFIG", bad) is None
    good = te.uefi_variable_data(te.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01")
    assert _digest_from_data("EV_EFI_VARIABLE_DRIVER_CONFIG", good) == \
        te.variable_driver_config_digest(te.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01")


def test_out_schema_records_exactly_the_knobs_tdxparams_records():
    """measurements.json's tdx.profile schema (builder/outschema.py) and TdxParams.to_record()
    name the same knobs: a knob added to TdxParams without the schema (or the reverse) fails."""
    from dataclasses import fields

    from builder.measure.tdx import TdxParams
    from builder.outschema import TdxProfileRecord
    assert {f.name for f in fields(TdxProfileRecord)} == set(TdxParams().to_record())
