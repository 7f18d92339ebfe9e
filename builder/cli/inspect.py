"""`ccbuild inspect FILE [--json]` and `ccbuild inspect --ccel TABLE DATA`: show attestation
evidence (SEV-SNP report, TDX quote v4/v5, TDREPORT, CCEL table and event log) in words or JSON.

The kind of FILE is recognised from its contents: the ``CCEL`` ACPI signature, a TCG spec ID event
(an event log), the quote header (version 4/5, TEE type 0x81), a 1024-byte TDREPORT (type 0x81),
or an SNP report (0x4A0 bytes, its hex text, or an SNP_GUEST_REQUEST response).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from builder.cli.common import read_input
from builder.errors import CCBuildError
from builder.formats import ccel, evidence, snp_report, tdx_quote
from builder.inputs import LIMITS

EVIDENCE_LIMIT = max(LIMITS[k] for k in ("report", "quote", "acpi table", "event log"))


@dataclass(frozen=True)
class Evidence:
    kind: str        # one of builder.formats.evidence.KINDS
    value: object    # the parsed structure

    def to_json(self) -> dict:
        if self.kind == "ccel-table":
            return {"kind": self.kind, "table": self.value.to_json()}
        if self.kind == "ccel-log":
            return {"kind": self.kind, "log": self.value.to_json()}
        return self.value.to_json()

    def text(self) -> str:
        if self.kind == "ccel-table":
            return ccel.format_table(self.value)
        if self.kind == "ccel-log":
            return ccel.format_log(self.value)
        if self.kind == "tdx-quote":
            return tdx_quote.format_quote(self.value)
        if self.kind == "tdreport":
            return tdx_quote.format_tdreport(self.value)
        return snp_report.format_report(self.value)


def identify(data: bytes, name: str = "input") -> Evidence:
    """Recognise (:func:`builder.formats.evidence.detect`) and parse one piece of evidence.
    Raises CCBuildError when it is none of them."""
    kind = evidence.detect(data)
    if kind is not None:
        return Evidence(kind, evidence.parse(kind, data))
    raise CCBuildError(f"cannot tell what {name} is ({len(data)} bytes)",
                       hint="expected an SEV-SNP report (0x4A0 bytes or hex), a TDX quote v4/v5, "
                            "a TDREPORT (1024 bytes), a CCEL ACPI table or a CC event log")


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show attestation evidence (SNP report, TDX quote, CCEL)",
                       description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="an SNP report, TDX quote, TDREPORT, CCEL table or event log")
    p.add_argument("--ccel", nargs=2, metavar=("TABLE", "DATA"),
                   help="a CCEL ACPI table and its event log (/sys/firmware/acpi/tables/CCEL and "
                        "/sys/firmware/acpi/tables/data/CCEL); the log is replayed into RTMR0-3")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.file is None and args.ccel is None:
        raise CCBuildError("inspect needs FILE or --ccel TABLE DATA")
    results: list[Evidence] = []
    if args.ccel is not None:
        table_path, data_path = args.ccel
        table = ccel.parse_ccel_table(read_input(table_path, "--ccel TABLE", "acpi table"))
        log = ccel.parse_event_log(read_input(data_path, "--ccel DATA", "event log"))
        results += [Evidence("ccel-table", table), Evidence("ccel-log", log)]
    if args.file is not None:
        # Any kind of evidence: capped at the largest of them (an event log).
        data = read_input(args.file, "FILE", "evidence", limit=EVIDENCE_LIMIT)
        results.append(identify(data, args.file))
    if args.json:
        docs = [r.to_json() for r in results]
        if args.ccel is not None:
            ccel_doc = {"kind": "ccel", "table": docs[0]["table"], "log": docs[1]["log"]}
            docs = [ccel_doc] + docs[2:]
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
    else:
        print("\n\n".join(r.text() for r in results))
    return 0
