"""CCEL ACPI table and CC event log: real GCE TDX evidence, hand-built logs, malformed input."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.errors import CCBuildError, FormatError
from builder.formats import ccel
from builder.formats.tcg import EventType, parse_uefi_variable_data

GO_TDX = "tdx/go-tdx-guest"
# TDX quote v4: 48-byte header, TD report body at 0x30, RTMR0 at body + 0x148 (Intel TDX DCAP
# quote library, sgx_quote_4.h). Read raw here so the replay is checked without our quote parser.
RTMR0_IN_QUOTE = 0x30 + 0x148


@pytest.fixture(scope="module")
def real_log(vectors):
    return (vectors / GO_TDX / "ccel_data.dat").read_bytes()


def test_real_table(vectors):
    t = ccel.parse_ccel_table((vectors / GO_TDX / "ccel_table.dat").read_bytes())
    assert t.signature == b"CCEL" and t.length == 56 and t.revision == 1
    assert t.checksum_valid
    assert t.cc_type == 2 and t.cc_type_name == "Intel TDX" and t.cc_subtype == 0
    # the log area is the 256 KiB of ccel_data.dat
    assert t.laml == 0x40000 == len((vectors / GO_TDX / "ccel_data.dat").read_bytes())
    assert t.lasa == 0xBEDBF000
    assert t.oem_id.rstrip() == b"INTEL"


def test_real_log_replays_to_the_quote_rtmrs(vectors, real_log):
    quote = (vectors / GO_TDX / "cos-113-tdx-quote.dat").read_bytes()
    expected = tuple(quote[RTMR0_IN_QUOTE + 48 * i:RTMR0_IN_QUOTE + 48 * (i + 1)]
                     for i in range(4))
    log = ccel.parse_event_log(real_log)
    assert log.replay() == expected
    assert expected[3] == bytes(48)  # nothing extended RTMR3 on that TD


def test_real_log_replays_to_quote_rtmrs_via_quote_parser(vectors, real_log):
    from builder.formats import tdx_quote
    q = tdx_quote.parse_quote((vectors / GO_TDX / "cos-113-tdx-quote.dat").read_bytes())
    assert ccel.parse_event_log(real_log).replay() == q.body.rtmrs


def test_real_log_structure(real_log):
    log = ccel.parse_event_log(real_log)
    assert log.spec_id.algorithms == (ccel.Algorithm(ccel.TPM_ALG_SHA384, 48),)
    assert log.spec_id.spec_version == (2, 0, 0)
    # the log ends where the 0xFF fill of the log area begins
    assert log.end_offset == len(real_log.rstrip(b"\xff"))
    assert len(log.events) == 43
    first, last = log.events[0], log.events[-1]
    assert first.type_name == "EV_EFI_HANDOFF_TABLES2" and first.rtmr == 0
    assert last.type_name == "EV_EFI_ACTION" and last.rtmr == 1
    assert last.data == b"Exit Boot Services Returned with Success"


def test_real_log_digests_follow_the_tcg_rules(real_log):
    """TCG PFP: EV_SEPARATOR and EV_EFI_ACTION digests are the hash of the event data itself.
    A parser that lost its alignment by one byte could not reproduce these."""
    log = ccel.parse_event_log(real_log)
    checked = 0
    for ev in log.events:
        if ev.event_type in (EventType.EV_SEPARATOR, EventType.EV_EFI_ACTION):
            assert ev.digest() == hashlib.sha384(ev.data).digest(), ev.number
            checked += 1
    assert checked == 5
    seps = [ev for ev in log.events if ev.event_type == EventType.EV_SEPARATOR]
    assert [ev.rtmr for ev in seps] == [0, 1]
    assert all(ev.data == b"\0\0\0\0" for ev in seps)


def test_real_log_variables_decode(real_log):
    log = ccel.parse_event_log(real_log)
    names = [parse_uefi_variable_data(ev.data, exact=False).name for ev in log.events
             if ev.event_type == EventType.EV_EFI_VARIABLE_DRIVER_CONFIG]
    assert names == ["SecureBoot", "PK", "KEK", "db", "dbx"]


def test_pretty_print_and_json(vectors, real_log):
    log = ccel.parse_event_log(real_log)
    text = ccel.format_log(log)
    assert "Exit Boot Services Invocation" in text and "EV_EFI_VARIABLE_BOOT" in text
    assert "Boot0000" in text
    j = log.to_json()
    assert j["rtmrs"][0] == log.replay()[0].hex()
    assert j["events"][7]["event_type_name"] == "EV_SEPARATOR"
    t = ccel.parse_ccel_table((vectors / GO_TDX / "ccel_table.dat").read_bytes())
    assert "Intel TDX" in ccel.format_table(t)


# --- hand-built logs --------------------------------------------------------------------------

def spec_id_event(algs=((0x000B, 32), (0x000C, 48)), mr_index=0) -> bytes:
    body = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algs))
    body += b"".join(struct.pack("<HH", a, s) for a, s in algs) + b"\0"
    return struct.pack("<II", mr_index, 3) + bytes(20) + struct.pack("<I", len(body)) + body


def event2(mr_index: int, event_type: int, data: bytes, digests) -> bytes:
    out = struct.pack("<III", mr_index, event_type, len(digests))
    for alg, d in digests:
        out += struct.pack("<H", alg) + d
    return out + struct.pack("<I", len(data)) + data


def both(data: bytes):
    return [(0x000B, hashlib.sha256(data).digest()), (0x000C, hashlib.sha384(data).digest())]


def test_hand_built_log_two_algorithms_and_zero_fill():
    a, b, c = b"one", b"two", b"three"
    raw = (spec_id_event()
           + event2(1, EventType.EV_EFI_ACTION, a, both(a))
           + event2(3, EventType.EV_NO_ACTION, b"ignored", both(b"ignored"))
           + event2(3, EventType.EV_IPL, b, both(b))
           + event2(4, EventType.EV_EVENT_TAG, c, both(c))
           + bytes(100))
    log = ccel.parse_event_log(raw)
    assert len(log.events) == 4
    assert log.events[0].digest(0x000B) == hashlib.sha256(a).digest()
    z = bytes(48)
    expected = (
        hashlib.sha384(z + hashlib.sha384(a).digest()).digest(),
        z,
        hashlib.sha384(z + hashlib.sha384(b).digest()).digest(),
        hashlib.sha384(z + hashlib.sha384(c).digest()).digest(),
    )
    assert log.replay() == expected
    assert log.end_offset == len(raw) - 100


def test_log_without_fill_ends_at_end_of_data():
    raw = spec_id_event(((0x000C, 48),)) + event2(2, EventType.EV_SEPARATOR, b"\0" * 4,
                                                   [(0x000C, hashlib.sha384(b"\0" * 4).digest())])
    log = ccel.parse_event_log(raw)
    assert len(log.events) == 1 and log.end_offset == len(raw)
    assert log.replay()[1] == hashlib.sha384(bytes(48) + log.events[0].digest()).digest()


def test_truncated_event_names_offset():
    raw = spec_id_event() + event2(1, EventType.EV_EFI_ACTION, b"x" * 10, both(b"x" * 10))
    with pytest.raises(FormatError) as e:
        ccel.parse_event_log(raw[:-3])
    assert e.value.offset is not None and "offset 0x" in str(e.value)


def test_unknown_algorithm_rejected():
    head = spec_id_event(((0x000C, 48),))
    raw = head + event2(1, EventType.EV_EFI_ACTION, b"x", [(0x000B, bytes(32))])
    with pytest.raises(FormatError, match="algorithm 0x000b") as e:
        ccel.parse_event_log(raw)
    assert e.value.offset == len(head) + 12


def test_first_event_must_be_spec_id():
    raw = bytearray(spec_id_event())
    raw[32:36] = b"Spec"[::-1]
    with pytest.raises(FormatError, match="Spec ID Event03"):
        ccel.parse_event_log(bytes(raw))
    with pytest.raises(FormatError, match="EV_NO_ACTION"):
        ccel.parse_event_log(event2(1, EventType.EV_EFI_ACTION, b"x", both(b"x")))


def test_replay_rejects_mrtd_and_missing_sha384():
    raw = spec_id_event() + event2(0, EventType.EV_EFI_ACTION, b"x", both(b"x"))
    with pytest.raises(FormatError, match="MR index 0"):
        ccel.parse_event_log(raw).replay()
    assert "MR index 0" in ccel.parse_event_log(raw).to_json()["replay_error"]
    raw = spec_id_event() + event2(1, EventType.EV_EFI_ACTION, b"x", both(b"x")[:1])
    with pytest.raises(FormatError, match="SHA-384"):
        ccel.parse_event_log(raw).replay()


def test_table_errors():
    good = bytearray(56)
    good[0:4] = b"CCEL"
    good[4:8] = struct.pack("<I", 56)
    good[36] = 2
    good[9] = (-sum(good)) % 256
    assert ccel.parse_ccel_table(bytes(good)).checksum_valid
    bad = bytearray(good)
    bad[40] = 1
    assert not ccel.parse_ccel_table(bytes(bad)).checksum_valid
    with pytest.raises(FormatError, match="not 'CCEL'"):
        ccel.parse_ccel_table(b"FACP" + bytes(good[4:]))
    with pytest.raises(FormatError, match="length"):
        ccel.parse_ccel_table(bytes(good[:50]))
    with pytest.raises(FormatError):
        ccel.parse_ccel_table(b"CC")


# --- property tests ---------------------------------------------------------------------------

def _exercise(raw: bytes) -> None:
    try:
        log = ccel.parse_event_log(raw)
    except CCBuildError:
        return
    ccel.format_log(log)
    j = log.to_json()
    assert (j["rtmrs"] is None) == (j["replay_error"] is not None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_project_errors(raw):
    _exercise(raw)
    try:
        ccel.parse_ccel_table(raw)
    except CCBuildError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_real_log_only_raises_project_errors(real_log, data):
    raw = bytearray(real_log[:0x2600])  # spec ID event, variables, separators, boot events
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _exercise(bytes(raw[:cut]))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=56, max_size=56))
def test_random_tables_with_signature(raw):
    raw = b"CCEL" + struct.pack("<I", 56) + raw[8:]
    t = ccel.parse_ccel_table(raw)
    assert t.length == 56
    ccel.format_table(t)
    t.to_json()
