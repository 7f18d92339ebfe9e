"""`ccbuild measure snp|tdx ...`: print one measurement value (or the full record with --json)."""

from __future__ import annotations

import importlib

# One module per platform under builder/cli/, each with ``register(subparsers)``.
PLATFORM_MODULES: list[str] = [
    "builder.cli.measure_snp",
    "builder.cli.measure_tdx",
]


def register(sub) -> None:
    p = sub.add_parser("measure", help="compute launch measurements from artifact bytes")
    psub = p.add_subparsers(dest="platform", metavar="PLATFORM", parser_class=type(p))
    psub.required = True
    for name in PLATFORM_MODULES:
        importlib.import_module(name).register(psub)
