"""``rvps-reference-values.json``: the measurements as a Trustee RVPS message.

Trustee's Reference Value Provider Service takes ``{"version": "0.1.0", "type": "sample",
"payload": base64(JSON {name: [values]})}`` (the "sample" extractor), and the attestation
service's default policy reads these names: ``snp_launch_measurement`` (SNP MEASUREMENT),
``mr_td``, ``rtmr_1`` and ``rtmr_2`` (TDX); ``rtmr_0`` and ``rtmr_3`` follow the same pattern
and are given when the build could compute them. Values are lowercase hex, as the policy's
evidence claims are. A Kata recipe lists the values of every pod size it measured.
"""

from __future__ import annotations

import base64
import json

from builder.emit.manifest import dumps, unencodable
from builder.errors import CCBuildError

NAME = "rvps-reference-values.json"
MESSAGE_VERSION = "0.1.0"


def reference_values(measurements: dict) -> dict[str, list[str]]:
    """Every value a launch of these artifacts may report: the SNP matrix, the TDX record and,
    for a Kata recipe, every pod size's values (each pod's own command line and vCPUs)."""
    pods = (measurements.get("kata") or {}).get("pods", [])
    rv: dict[str, set[str]] = {}
    if "snp" in measurements:
        rv["snp_launch_measurement"] = {e["launch_digest"] for e in measurements["snp"]}
        for p in pods:
            rv["snp_launch_measurement"].update((p.get("launch_digests") or {}).values())
    if "tdx" in measurements:
        for rec in [measurements["tdx"], *pods]:
            for key, reg in [("mr_td", "mrtd")] + [(f"rtmr_{i}", f"rtmr{i}") for i in range(4)]:
                if rec.get(reg) is not None:
                    rv.setdefault(key, set()).add(rec[reg])
    return {k: sorted(v) for k, v in rv.items()}


def message(measurements: dict) -> dict:
    rv = reference_values(measurements)
    bad = unencodable(rv)
    if bad:  # json.dumps would write a lone surrogate as an escape strict parsers refuse
        raise CCBuildError(f"reference value {bad[0]} cannot be written as JSON: {bad[1]}", NAME)
    payload = json.dumps(rv, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return {"version": MESSAGE_VERSION, "type": "sample",
            "payload": base64.standard_b64encode(payload).decode()}


def emit(view, files: dict[str, bytes]) -> dict[str, bytes]:
    return {NAME: dumps(message(view.measurements), NAME)}
