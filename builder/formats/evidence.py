"""What a piece of attestation evidence is, from its bytes alone (one place for the sniffing that
``ccbuild inspect`` and ``ccbuild verify`` both need).

Recognised, tried in this order (the first that fits wins):

- ``ccel-table``: the ``CCEL`` ACPI table signature;
- ``ccel-log``: a CC event log, whose first event is an EV_NO_ACTION carrying the TCG spec ID
  event (``Spec ID Event03``);
- ``tdx-quote``: a quote header of version 4 or 5 with TEE type 0x81;
- ``tdreport``: a 1024-byte TDREPORT of type 0x81;
- ``snp-report``: an SEV-SNP attestation report (0x4A0 bytes, its hex text, or an
  SNP_GUEST_REQUEST response).
"""

from __future__ import annotations

from typing import Callable

from builder.formats import ccel, snp_report, tdx_quote
from builder.formats.tcg import EventType

KINDS = ("ccel-table", "ccel-log", "tdx-quote", "tdreport", "snp-report")

PARSERS: dict[str, Callable[[bytes], object]] = {
    "ccel-table": ccel.parse_ccel_table,
    "ccel-log": ccel.parse_event_log,
    "tdx-quote": tdx_quote.parse_quote,
    "tdreport": tdx_quote.parse_tdreport,
    "snp-report": snp_report.parse_report,
}


def looks_like_event_log(data: bytes) -> bool:
    return (len(data) >= 48 and data[4:8] == EventType.EV_NO_ACTION.to_bytes(4, "little")
            and data[32:32 + len(ccel.SPEC_ID_SIGNATURE)] == ccel.SPEC_ID_SIGNATURE)


_SNIFFERS: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("ccel-table", lambda d: d[:4] == ccel.CCEL_SIGNATURE),
    ("ccel-log", looks_like_event_log),
    ("tdx-quote", tdx_quote.looks_like_quote),
    ("tdreport", tdx_quote.looks_like_tdreport),
    ("snp-report", snp_report.looks_like_report),
)


def detect(data: bytes) -> str | None:
    """The kind of evidence ``data`` is (one of :data:`KINDS`), None when it is none of them.
    Only looks: the bytes are parsed (and may still be refused) by :func:`parse`."""
    for kind, looks in _SNIFFERS:
        if looks(data):
            return kind
    return None


def parse(kind: str, data: bytes) -> object:
    """Parse ``data`` as evidence of ``kind`` (FormatError names the offset when it is damaged)."""
    return PARSERS[kind](data)
