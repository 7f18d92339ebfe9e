"""The CC Event Log: the CCEL ACPI table and the crypto-agile event log it points to.

Sources (facts only): ACPI 6.5, section 5.2.34 "CC Event Log ACPI Table"; TCG PC Client Platform
Firmware Profile 1.05, sections 10.2 (TCG_PCR_EVENT, TCG_PCR_EVENT2), 10.4.5 (TCG_EfiSpecIDEvent)
and 10.4.1 (event types); UEFI 2.10, section 38.4.1 (CC measurement: MR index 0 = MRTD, 1..4 =
RTMR0..3).

CCEL ACPI table (56 bytes, integers little-endian):

======  ====  =============================================================
offset  size  field
======  ====  =============================================================
0       4     signature ``"CCEL"``
4       4     length (whole table)
8       1     revision
9       1     checksum (all table bytes sum to 0 mod 256)
10      6     OEM ID
16      8     OEM table ID
24      4     OEM revision
28      4     creator ID
32      4     creator revision
36      1     CC type (1 = AMD SEV, 2 = Intel TDX)
37      1     CC subtype
38      2     reserved
40      8     LAML, log area minimum length
48      8     LASA, log area start address
======  ====  =============================================================

Event log: one TCG_PCR_EVENT (SHA-1 format) carrying the "Spec ID Event03" structure, which lists
the digest algorithms and sizes; then TCG_PCR_EVENT2 records
(``u32 mr_index | u32 event_type | u32 digest_count | (u16 alg_id | digest)* | u32 size | data``)
until the unused tail of the log area (0xFF or 0x00 fill).

Replay: RTMR[mr_index - 1] = SHA-384(RTMR | sha384_digest), from 48 zero bytes; EV_NO_ACTION
events are not extended.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from builder.errors import FormatError
from builder.formats.bytesreader import take, u8, u16, u32, u64
from builder.formats.tcg import (RTMR_COUNT, TPM_ALG_SHA384, VARIABLE_EVENTS,
                                 EventType, algorithm_name, event_type_name, extend,
                                 parse_uefi_variable_data)

# --- ACPI table -------------------------------------------------------------------------------

CCEL_SIGNATURE = b"CCEL"
CCEL_TABLE_LENGTH = 56
CC_TYPES = {0: "reserved", 1: "AMD SEV", 2: "Intel TDX"}

SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
SHA384_SIZE = 48


# --- Data classes -----------------------------------------------------------------------------

@dataclass(frozen=True)
class CcelTable:
    signature: bytes
    length: int
    revision: int
    checksum: int
    oem_id: bytes
    oem_table_id: bytes
    oem_revision: int
    creator_id: bytes
    creator_revision: int
    cc_type: int
    cc_subtype: int
    laml: int   # log area minimum length
    lasa: int   # log area start address
    checksum_valid: bool

    @property
    def cc_type_name(self) -> str:
        return CC_TYPES.get(self.cc_type, f"unknown ({self.cc_type})")

    def to_json(self) -> dict:
        return {
            "signature": self.signature.decode("ascii"), "length": self.length,
            "revision": self.revision, "checksum": self.checksum,
            "checksum_valid": self.checksum_valid,
            "oem_id": self.oem_id.decode("latin-1").rstrip(),
            "oem_table_id": self.oem_table_id.decode("latin-1").rstrip(),
            "oem_revision": self.oem_revision,
            "creator_id": self.creator_id.decode("latin-1").rstrip(),
            "creator_revision": self.creator_revision,
            "cc_type": self.cc_type, "cc_type_name": self.cc_type_name,
            "cc_subtype": self.cc_subtype, "laml": self.laml, "lasa": self.lasa,
        }


@dataclass(frozen=True)
class Algorithm:
    alg_id: int
    digest_size: int

    @property
    def name(self) -> str:
        return algorithm_name(self.alg_id)


@dataclass(frozen=True)
class SpecIdEvent:
    """The first event of the log (TCG_PCR_EVENT holding TCG_EfiSpecIDEvent)."""
    offset: int
    mr_index: int
    platform_class: int
    spec_version: tuple[int, int, int]  # (major, minor, errata)
    uintn_size: int
    algorithms: tuple[Algorithm, ...]
    vendor_info: bytes


@dataclass(frozen=True)
class Event:
    """One TCG_PCR_EVENT2 record."""
    number: int        # position in the log, the spec ID event is 0
    offset: int        # file offset of the record
    mr_index: int
    event_type: int
    digests: tuple[tuple[int, bytes], ...]  # (alg_id, digest) in log order
    data: bytes

    @property
    def type_name(self) -> str:
        return event_type_name(self.event_type)

    @property
    def rtmr(self) -> int | None:
        """The RTMR index (0..3) this event extends, or None (MRTD or out of range)."""
        return self.mr_index - 1 if 1 <= self.mr_index <= RTMR_COUNT else None

    def digest(self, alg_id: int = TPM_ALG_SHA384) -> bytes | None:
        for a, d in self.digests:
            if a == alg_id:
                return d
        return None

    def describe(self) -> str:
        return describe_event_data(self.event_type, self.data)

    def to_json(self) -> dict:
        return {
            "number": self.number, "offset": self.offset, "mr_index": self.mr_index,
            "register": f"rtmr{self.rtmr}" if self.rtmr is not None else None,
            "event_type": self.event_type, "event_type_name": self.type_name,
            "digests": {algorithm_name(a): d.hex() for a, d in self.digests},
            "description": self.describe(),
            "data": self.data.hex(),
        }


@dataclass(frozen=True)
class EventLog:
    spec_id: SpecIdEvent
    events: tuple[Event, ...]
    end_offset: int  # where the log ends (start of the fill, or the end of the data)

    def replay(self) -> tuple[bytes, bytes, bytes, bytes]:
        return replay(self)

    def to_json(self) -> dict:
        try:
            rtmrs: list[str] | None = [r.hex() for r in replay(self)]
            replay_error = None
        except FormatError as e:
            rtmrs, replay_error = None, e.one_line()
        return {
            "spec_id": {
                "mr_index": self.spec_id.mr_index,
                "platform_class": self.spec_id.platform_class,
                "spec_version": ".".join(str(v) for v in self.spec_id.spec_version),
                "uintn_size": self.spec_id.uintn_size,
                "algorithms": [{"alg_id": a.alg_id, "name": a.name, "digest_size": a.digest_size}
                               for a in self.spec_id.algorithms],
            },
            "events": [e.to_json() for e in self.events],
            "end_offset": self.end_offset,
            "rtmrs": rtmrs,
            "replay_error": replay_error,
        }


# --- Parsers ----------------------------------------------------------------------------------

def parse_ccel_table(data: bytes) -> CcelTable:
    """Parse a CCEL ACPI table (the bytes of /sys/firmware/acpi/tables/CCEL)."""
    sig = take(data, 0, 4, "ACPI table signature")
    if sig != CCEL_SIGNATURE:
        raise FormatError(f"ACPI table signature is {sig!r}, not 'CCEL'", 0)
    length = u32(data, 4, "CCEL table length")
    if length < CCEL_TABLE_LENGTH:
        raise FormatError(f"CCEL table length {length} is below {CCEL_TABLE_LENGTH}", 4)
    if length != len(data):
        raise FormatError(f"CCEL table length field says {length} bytes, data has {len(data)}", 4)
    return CcelTable(
        signature=sig, length=length, revision=u8(data, 8, "revision"),
        checksum=u8(data, 9, "checksum"), oem_id=take(data, 10, 6, "OEM ID"),
        oem_table_id=take(data, 16, 8, "OEM table ID"), oem_revision=u32(data, 24, "OEM revision"),
        creator_id=take(data, 28, 4, "creator ID"),
        creator_revision=u32(data, 32, "creator revision"),
        cc_type=u8(data, 36, "CC type"), cc_subtype=u8(data, 37, "CC subtype"),
        laml=u64(data, 40, "log area minimum length"), lasa=u64(data, 48, "log area start address"),
        checksum_valid=sum(data) % 256 == 0,
    )


def _parse_spec_id(data: bytes) -> tuple[SpecIdEvent, int]:
    off = 0
    mr_index = u32(data, off, "spec ID event MR index")
    event_type = u32(data, off + 4, "spec ID event type")
    if event_type != EventType.EV_NO_ACTION:
        raise FormatError(f"first event has type {event_type_name(event_type)}, expected "
                          "EV_NO_ACTION with the spec ID event", off + 4)
    take(data, off + 8, 20, "spec ID event SHA-1 digest")
    size = u32(data, off + 28, "spec ID event size")
    body_off = off + 32
    body = take(data, body_off, size, "spec ID event data")
    if body[:16] != SPEC_ID_SIGNATURE:
        raise FormatError(f"first event signature is {body[:16]!r}, expected 'Spec ID Event03'",
                          body_off)
    p = 16
    platform_class = _body_u32(body, p, body_off, "platform class")
    minor = _body_u8(body, p + 4, body_off, "spec version minor")
    major = _body_u8(body, p + 5, body_off, "spec version major")
    errata = _body_u8(body, p + 6, body_off, "spec errata")
    uintn = _body_u8(body, p + 7, body_off, "uintn size")
    count = _body_u32(body, p + 8, body_off, "number of algorithms")
    p += 12
    if count == 0 or count * 4 > len(body) - p:
        raise FormatError(f"spec ID event lists {count} algorithms, which do not fit its "
                          f"{size} bytes", body_off + p - 4)
    algs = []
    seen = set()
    for _ in range(count):
        alg = _body_u16(body, p, body_off, "algorithm ID")
        dsize = _body_u16(body, p + 2, body_off, "digest size")
        if alg in seen:
            raise FormatError(f"algorithm 0x{alg:04x} listed twice in the spec ID event",
                              body_off + p)
        if dsize == 0:
            raise FormatError(f"algorithm 0x{alg:04x} has digest size 0", body_off + p + 2)
        seen.add(alg)
        algs.append(Algorithm(alg, dsize))
        p += 4
    vsize = _body_u8(body, p, body_off, "vendor info size")
    vendor = body[p + 1:p + 1 + vsize]
    if len(vendor) != vsize:
        raise FormatError("vendor info runs past the spec ID event", body_off + p)
    spec = SpecIdEvent(offset=off, mr_index=mr_index, platform_class=platform_class,
                       spec_version=(major, minor, errata), uintn_size=uintn,
                       algorithms=tuple(algs), vendor_info=vendor)
    return spec, body_off + size


def _body_u8(body: bytes, p: int, base: int, what: str) -> int:
    if p + 1 > len(body):
        raise FormatError(f"{what} runs past the spec ID event", base + p)
    return body[p]


def _body_u16(body: bytes, p: int, base: int, what: str) -> int:
    if p + 2 > len(body):
        raise FormatError(f"{what} runs past the spec ID event", base + p)
    return struct.unpack_from("<H", body, p)[0]


def _body_u32(body: bytes, p: int, base: int, what: str) -> int:
    if p + 4 > len(body):
        raise FormatError(f"{what} runs past the spec ID event", base + p)
    return struct.unpack_from("<I", body, p)[0]


def _at_end(data: bytes, off: int) -> bool:
    """True at the end of the data or where the unused, filled part of the log area begins."""
    head = data[off:off + 8]
    return head == b"" or head == b"\xff" * len(head) or head == b"\x00" * len(head)


def parse_event_log(data: bytes) -> EventLog:
    """Parse a CC event log (the log area of a CCEL table, e.g. /sys/firmware/acpi/tables/data/CCEL).

    Parsing stops at the end of the data or where the record header reads all 0xFF or all 0x00
    (the unused part of the log area)."""
    spec, off = _parse_spec_id(data)
    sizes = {a.alg_id: a.digest_size for a in spec.algorithms}
    events: list[Event] = []
    number = 1
    while not _at_end(data, off):
        start = off
        mr_index = u32(data, off, "event MR index")
        event_type = u32(data, off + 4, "event type")
        count = u32(data, off + 8, "event digest count")
        off += 12
        if count > len(sizes):
            raise FormatError(f"event {number} has {count} digests, the spec ID event lists "
                              f"{len(sizes)} algorithms", off - 4)
        digests = []
        for _ in range(count):
            alg = u16(data, off, "digest algorithm ID")
            if alg not in sizes:
                raise FormatError(f"event {number} uses algorithm 0x{alg:04x}, which the spec ID "
                                  "event does not list", off)
            if any(a == alg for a, _ in digests):
                raise FormatError(f"event {number} has two digests of algorithm 0x{alg:04x}", off)
            digests.append((alg, take(data, off + 2, sizes[alg], "event digest")))
            off += 2 + sizes[alg]
        size = u32(data, off, "event data size")
        payload = take(data, off + 4, size, f"event {number} data")
        off += 4 + size
        events.append(Event(number=number, offset=start, mr_index=mr_index, event_type=event_type,
                            digests=tuple(digests), data=payload))
        number += 1
    return EventLog(spec_id=spec, events=tuple(events), end_offset=min(off, len(data)))


# --- Replay -----------------------------------------------------------------------------------

def replay(log: EventLog) -> tuple[bytes, bytes, bytes, bytes]:
    """Replay the log into RTMR0..3 (SHA-384 digests; EV_NO_ACTION events are skipped)."""
    rtmrs = [bytes(SHA384_SIZE)] * RTMR_COUNT
    for ev in log.events:
        if ev.event_type == EventType.EV_NO_ACTION:
            continue
        if ev.rtmr is None:
            raise FormatError(f"event {ev.number} ({ev.type_name}) has MR index {ev.mr_index}, "
                              "software can only extend RTMR0..3 (MR index 1..4)", ev.offset)
        d = ev.digest(TPM_ALG_SHA384)
        if d is None or len(d) != SHA384_SIZE:
            raise FormatError(f"event {ev.number} ({ev.type_name}) has no 48-byte SHA-384 digest",
                              ev.offset + 8)
        rtmrs[ev.rtmr] = extend(rtmrs[ev.rtmr], d)
    return tuple(rtmrs)  # type: ignore[return-value]


# --- Event data decoding (for display; never raises) ------------------------------------------

def _printable(b: bytes) -> str:
    """ASCII text (NUL-terminated or not) as a one-line string, anything else as hex."""
    s = b.rstrip(b"\0")
    try:
        text = s.decode("ascii")
    except UnicodeDecodeError:
        return b.hex()
    if s and all(c.isprintable() or c in "\n\t" for c in text):
        return text.replace("\n", "\\n").replace("\t", "\\t")
    return b.hex()


def _utf16(b: bytes) -> str | None:
    if len(b) % 2 or len(b) < 2:
        return None
    try:
        text = b.decode("utf-16-le").rstrip("\0")
    except UnicodeDecodeError:
        return None
    return text if text and all(c.isprintable() for c in text) else None


# Events whose data is (usually) ASCII text.
_TEXT_EVENTS = frozenset({EventType.EV_EFI_ACTION, EventType.EV_ACTION, EventType.EV_IPL,
                          EventType.EV_EVENT_TAG, EventType.EV_S_CRTM_VERSION, EventType.EV_POST_CODE,
                          EventType.EV_NO_ACTION, EventType.EV_PLATFORM_CONFIG_FLAGS})


def describe_event_data(event_type: int, data: bytes) -> str:
    """A short human-readable summary of an event's data (hex when it cannot be decoded)."""
    try:
        if event_type in VARIABLE_EVENTS:
            v = parse_uefi_variable_data(data, exact=False)
            return f"{v.name} ({v.vendor_guid}), {len(v.data)} bytes"
        if event_type in (EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2,
                          EventType.EV_EFI_HANDOFF_TABLES2):
            n = u8(data, 0, "description size")
            desc = _printable(take(data, 1, n, "description"))
            if event_type == EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2:
                base = u64(data, 1 + n, "blob base")
                length = u64(data, 9 + n, "blob length")
                return f"{desc} @0x{base:x}, {length} bytes"
            count = u64(data, 1 + n, "table count")
            return f"{desc}, {count} table(s)"
        if event_type == EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB:
            return f"blob @0x{u64(data, 0, 'base'):x}, {u64(data, 8, 'length')} bytes"
        if event_type in (EventType.EV_EFI_BOOT_SERVICES_APPLICATION,
                          EventType.EV_EFI_BOOT_SERVICES_DRIVER,
                          EventType.EV_EFI_RUNTIME_SERVICES_DRIVER):
            loc = u64(data, 0, "image location")
            length = u64(data, 8, "image length")
            return f"image @0x{loc:x}, {length} bytes"
        if event_type == EventType.EV_SEPARATOR:
            return f"separator {data.hex()}"
        if event_type == EventType.EV_NO_ACTION and data.startswith(SPEC_ID_SIGNATURE[:-1]):
            return _printable(data[:16])
        if event_type in _TEXT_EVENTS:
            text = _utf16(data) if b"\0" in data.rstrip(b"\0") else None
            return text if text is not None else _printable(data)
    except FormatError:
        pass
    return data[:64].hex() + ("..." if len(data) > 64 else "")


# --- Pretty print -----------------------------------------------------------------------------

def format_table(table: CcelTable) -> str:
    return "\n".join([
        f"CCEL table: revision {table.revision}, length {table.length}, checksum "
        f"0x{table.checksum:02x} ({'valid' if table.checksum_valid else 'INVALID'})",
        f"  OEM: {table.oem_id.decode('latin-1').rstrip()!r} "
        f"{table.oem_table_id.decode('latin-1').rstrip()!r} revision {table.oem_revision}",
        f"  CC type: {table.cc_type} ({table.cc_type_name}), subtype {table.cc_subtype}",
        f"  log area: start 0x{table.lasa:x}, minimum length 0x{table.laml:x}",
    ])


def format_log(log: EventLog) -> str:
    s = log.spec_id
    algs = ", ".join(f"{a.name} ({a.digest_size} bytes)" for a in s.algorithms)
    lines = [f"event log: spec {'.'.join(map(str, s.spec_version))}, algorithms: {algs}, "
             f"{len(log.events)} events, ends at 0x{log.end_offset:x}"]
    for ev in log.events:
        reg = f"RTMR{ev.rtmr}" if ev.rtmr is not None else f"MR{ev.mr_index}"
        lines.append(f"  #{ev.number:<3} @0x{ev.offset:05x} {reg:<6} {ev.type_name}")
        lines.append(f"       {ev.describe()}")
        for alg, d in ev.digests:
            lines.append(f"       {algorithm_name(alg)}: {d.hex()}")
    try:
        regs = replay(log)
    except FormatError as e:
        lines.append(f"replay: not possible ({e.one_line()})")
    else:
        for i, r in enumerate(regs):
            lines.append(f"RTMR{i}: {r.hex()}")
    return "\n".join(lines)
