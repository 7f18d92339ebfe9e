"""TDX: the registers and event log recomputed from OUT, and OUT against TDX evidence.

- :func:`recompute_tdx`: MRTD from firmware.fd, RTMR0-3 by replaying the event list rebuilt from
  the artifacts with the knobs measurements.json records (:meth:`TdxParams.from_record`); the
  events that hash VMM data OUT does not hold are taken from the record.
- :func:`check_tdx_quote`: MRTD, RTMR0-3, MRCONFIGID of a quote or TDREPORT; with a CCEL event
  log, its replay against the quote, each self-describing event against its own data, and the log
  against the expected event log, naming the first event that differs per register.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from builder.errors import CCBuildError, CheckFailed, FormatError
from builder.formats import ccel, evidence, tcg, tdx_quote
from builder.formats.tcg import parse_uefi_variable_data
from builder.formats.tdvf import parse_tdvf_metadata
from builder.measure import tdx_events as te
from builder.measure.tdx import TdxParams, rtmr0_events, rtmr1_events, rtmr2_events
from builder.measure.tdx_mrtd import mrtd
from builder.verify.out import load_out
from builder.verify.report import FAIL, INFO, OK, SKIP, Check, Verdict


def tdx_params_from_record(rec: dict):
    """TdxParams from the ``profile`` record of a measurements.json ``tdx`` record
    (:meth:`builder.measure.tdx.TdxParams.from_record`)."""
    return TdxParams.from_record(rec.get("profile") or {})


def _event_dict(e) -> dict:
    return e.to_json()


def _vmm_supplied(ev: dict) -> bool:
    """Events hashing VMM data OUT does not hold (ACPI blobs, fw_cfg items, SMBIOS tables)."""
    return ev["description"].startswith("ACPI DATA") or ev["digest"] is None


def recompute_tdx_events(fw: bytes, kernel: bytes, initrd: bytes | None, cmdline: str,
                         rec: dict) -> tuple[bytes, list[dict], list[str]]:
    """(MRTD, the expected event list rebuilt from the artifacts, notes). RTMR0's ACPI events,
    the profile's extra RTMR0 events and RTMR3's runtime events hash VMM data that OUT does not
    hold: their digests come from the record, everything else from the engine."""
    params = tdx_params_from_record(rec)
    meta = parse_tdvf_metadata(fw)
    if meta is None:
        raise CheckFailed("firmware.fd has no TDVF metadata (not a TDX firmware)")
    recorded = rec.get("events", [])
    notes: list[str] = []
    events: list[dict] = []
    if rec.get("rtmr0") is not None:
        # The engine's RTMR0 with placeholder ACPI blobs; the VMM-supplied events (ACPI blobs and
        # the profile's extra events) are put back from the record in recorded order.
        base = [_event_dict(e) for e in
                rtmr0_events(fw, meta, replace(params, acpi_blobs=(b"", b"", b"")))]
        engine = [e for e in base if not _vmm_supplied(e)]
        rec0 = [e for e in recorded if e["register"] == "rtmr0"]
        known = {(e["event_type"], e["description"]) for e in engine}
        taken = [e for e in rec0 if (e["event_type"], e["description"]) not in known]
        # splice: engine events in engine order, VMM events where the record has them
        it = iter(engine)
        for e in rec0:
            if (e["event_type"], e["description"]) in known:
                events.append(next(it, e))
            else:
                events.append(e)
        events.extend(it)
        if taken:
            notes.append(f"rtmr0: {len(taken)} VMM-supplied event(s) (ACPI tables, profile "
                         "extras) taken from measurements.json; OUT does not hold their data")
    events += [_event_dict(e) for e in rtmr1_events(kernel, initrd, cmdline, params)]
    events += [_event_dict(e) for e in rtmr2_events(initrd, cmdline, params)]
    rt3 = [e for e in recorded if e["register"] == "rtmr3"]
    if rt3:
        notes.append(f"rtmr3: {len(rt3)} runtime event(s) declared by the profile, taken from "
                     "measurements.json")
    events += rt3
    return mrtd(fw, meta, params.page_add_order), events, notes


def replay_events(events: list[dict]) -> list[bytes]:
    regs = []
    for i in range(4):
        regs.append(tcg.replay(bytes.fromhex(e["digest"]) for e in events
                                    if e["register"] == f"rtmr{i}"))
    return regs


def diff_event_lists(expected: list[dict], actual: list[dict], registers=range(4),
                     what: str = "recomputed") -> list[Check]:
    """Per register, the first event whose type, description or digest differs (or that is
    missing or extra); one row per register."""
    rows = []
    for i in registers:
        reg = f"rtmr{i}"
        ex = [e for e in expected if e["register"] == reg]
        ac = [e for e in actual if e["register"] == reg]
        bad = None
        for k in range(max(len(ex), len(ac))):
            a = ac[k] if k < len(ac) else None
            e = ex[k] if k < len(ex) else None
            if a is None:
                bad = Check(f"{reg} events", FAIL, f"event {k + 1} {e['event_type']} "
                            f"{e['description']!r} expected, {what} log ends after {len(ac)}",
                            e["digest"], None)
            elif e is None:
                bad = Check(f"{reg} events", FAIL, f"event {k + 1} {a['event_type']} "
                            f"{a['description']!r}: not expected (expected {len(ex)} events)",
                            None, a["digest"])
            elif a["event_type"] != e["event_type"] or a["digest"] != e["digest"]:
                where = f" (log #{a['number']} @0x{a['offset']:x})" if "number" in a else ""
                bad = Check(f"{reg} events", FAIL, f"event {k + 1}{where} differs: "
                            f"{e['event_type']} {e['description']!r} expected; {what} "
                            f"{a['event_type']} {a['description']!r}", e["digest"], a["digest"])
            if bad:
                break
        rows.append(bad or Check(f"{reg} events", OK, f"{len(ex)} events agree"))
    return rows


def recompute_tdx(fw, kernel, initrd, cmdline, rec: dict) -> list[Check]:
    try:
        mrtd, events, notes = recompute_tdx_events(fw, kernel, initrd, cmdline, rec)
    except CheckFailed as e:
        return [Check("tdx", FAIL, e.one_line())]
    except CCBuildError as e:
        return [Check("tdx", FAIL, f"cannot recompute: {e.one_line()}")]
    rows = [Check("tdx mrtd", OK if mrtd.hex() == rec["mrtd"] else FAIL,
                  "recomputed from firmware.fd" if mrtd.hex() == rec["mrtd"]
                  else "MRTD recomputed from firmware.fd differs", rec["mrtd"], mrtd.hex())]
    regs = replay_events(events)
    for i in range(4):
        want = rec.get(f"rtmr{i}")
        if want is None:
            rows.append(Check(f"tdx rtmr{i}", SKIP, "not predicted: "
                              + rec.get(f"rtmr{i}_reason", "no reason recorded")))
            continue
        same = regs[i].hex() == want
        rows.append(Check(f"tdx rtmr{i}", OK if same else FAIL,
                          "replay of the recomputed events" if same
                          else "replay of the events recomputed from OUT differs",
                          want, regs[i].hex()))
    known = [i for i in range(4) if rec.get(f"rtmr{i}") is not None]
    rows += [replace(c, item="tdx " + c.item)
             for c in diff_event_lists(events, rec.get("events", []), known, "measurements.json")]
    rows += [Check("tdx note", INFO, n) for n in notes]
    return rows



# Event types whose digest the TCG PC Client spec / EDK2 define over the event data itself.
def _digest_from_data(type_name: str, data: bytes) -> bytes | None:
    if type_name in ("EV_SEPARATOR", "EV_EFI_ACTION", "EV_EFI_GPT_EVENT"):
        return te.sha384(data)
    if type_name in ("EV_EFI_VARIABLE_DRIVER_CONFIG", "EV_EFI_VARIABLE_AUTHORITY",
                     "EV_EFI_VARIABLE_BOOT"):
        try:
            vendor, name, value = parse_uefi_variable_data(data)
        except FormatError:       # malformed: the caller reports the event as not recomputable
            return None
        if type_name == "EV_EFI_VARIABLE_BOOT":
            return te.variable_boot_digest(value)
        return te.variable_driver_config_digest(vendor, name, value)
    return None


def log_events(log) -> list[dict]:
    """CCEL log events (EV_NO_ACTION dropped) in the measurements.json event shape."""
    out = []
    for ev in log.events:
        if ev.event_type == ccel.EventType.EV_NO_ACTION or ev.rtmr is None:
            continue
        d = ev.digest(ccel.TPM_ALG_SHA384)
        out.append({"register": f"rtmr{ev.rtmr}", "event_type": ev.type_name,
                    "description": ev.describe(), "digest": d.hex() if d else "",
                    "number": ev.number, "offset": ev.offset, "data": ev.data})
    return out


def check_event_data(events: list[dict]) -> list[Check]:
    """Each self-describing event's digest against its own data: catches a log whose data was
    altered after the fact (the first such event is named)."""
    checked = 0
    for e in events:
        want = _digest_from_data(e["event_type"], e["data"])
        if want is None:
            continue
        checked += 1
        if want.hex() != e["digest"]:
            return [Check("log event data", FAIL, f"log #{e['number']} @0x{e['offset']:x} "
                          f"{e['register']} {e['event_type']} {e['description']!r}: its data does "
                          "not hash to the digest it extended", want.hex(), e["digest"])]
    return [Check("log event data", OK, f"{checked} self-describing events hash to their "
                  f"digests ({len(events) - checked} others carry no hashable data)")]


def check_tdx_quote(out_path: str | Path, quote_bytes: bytes,
                    ccel_table: bytes | None = None, ccel_data: bytes | None = None) -> Verdict:
    out = load_out(out_path)
    v = Verdict(f"verify {out.path.name} against TDX evidence")
    kind = evidence.detect(quote_bytes)
    if kind == "tdx-quote":
        body = tdx_quote.parse_quote(quote_bytes).body
        v.add(Check("evidence", INFO, "TDX quote (its PCK signature is not verified here)"))
    elif kind == "tdreport":
        body = tdx_quote.parse_tdreport(quote_bytes).measurements
        v.add(Check("evidence", INFO, "TDREPORT (unsigned)"))
    else:
        raise CCBuildError("not a TDX quote (v4/v5) or TDREPORT", "--tdx-quote")
    rec = (out.measurements or {}).get("tdx")
    if rec is None:
        v.add(Check("tdx", FAIL, "measurements.json has no tdx record (not a TDX build?)"))
        return v
    v.add(Check("mrtd", OK if body.mrtd.hex() == rec["mrtd"] else FAIL, "MRTD",
                rec["mrtd"], body.mrtd.hex()))
    for i in range(4):
        want = rec.get(f"rtmr{i}")
        got = body.rtmrs[i].hex()
        if want is None:
            v.add(Check(f"rtmr{i}", SKIP, "not predicted: " + rec.get(f"rtmr{i}_reason", ""),
                        None, got))
        else:
            v.add(Check(f"rtmr{i}", OK if want == got else FAIL, f"RTMR{i}", want, got))
    init = (out.measurements or {}).get("initdata")
    if isinstance(init, dict) and init.get("tdx_mrconfigid"):
        want_cfg, why = bytes.fromhex(init["tdx_mrconfigid"]), "initdata MRCONFIGID"
    else:
        want_cfg, why = bytes(48), "no initdata in the build: MRCONFIGID must be zero"
    v.add(Check("mrconfigid", OK if body.mrconfigid == want_cfg else FAIL, why,
                want_cfg.hex(), body.mrconfigid.hex()))
    if body.debug:
        v.add(Check("td_attributes", FAIL, "DEBUG is set: the host can read TD memory"))
    if ccel_data is None:
        return v
    if ccel_table is not None:
        table = ccel.parse_ccel_table(ccel_table)
        v.add(Check("ccel table", OK if table.cc_type == 2 and table.checksum_valid else FAIL,
                    f"CC type {table.cc_type_name}, checksum "
                    f"{'valid' if table.checksum_valid else 'INVALID'}"))
    log = ccel.parse_event_log(ccel_data)
    events = log_events(log)
    regs = ccel.replay(log)
    for i in range(4):
        same = regs[i] == body.rtmrs[i]
        v.add(Check(f"log replay rtmr{i}", OK if same else FAIL,
                    "the event log replays to the quote's value" if same
                    else "the event log does not replay to the quote's value (log and quote "
                    "disagree)", body.rtmrs[i].hex(), regs[i].hex()))
    v.add(*check_event_data(events))
    expected = rec.get("events", [])
    known = [i for i in range(4) if rec.get(f"rtmr{i}") is not None]
    v.add(*[replace(c, item="log " + c.item)
            for c in diff_event_lists(expected, events, known, "the log has")])
    return v
