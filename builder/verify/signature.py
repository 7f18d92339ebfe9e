"""``ccbuild verify OUT --signature --pubkey PEM``: manifest.json.sig against manifest.json."""

from __future__ import annotations

from pathlib import Path

from builder.emit.signature import verify_manifest
from builder.verify.out import SIGNATURE_FILE, load_out
from builder.verify.report import FAIL, OK, Check, Verdict


def check_signature(out_path: str | Path, pubkey_pem: bytes,
                    pubkey_where: str = "--pubkey") -> Verdict:
    out = load_out(out_path)
    v = Verdict(f"verify {out.path.name}: manifest signature")
    e = out.entries.get(SIGNATURE_FILE)
    if e is None:
        v.add(Check("signature", FAIL, f"{SIGNATURE_FILE} is missing (build with --sign-key)"))
    elif e.kind != "file":
        v.add(Check("signature", FAIL, f"{SIGNATURE_FILE} is {e.kind}, not a regular file"))
    elif out.manifest_raw is None:
        v.add(Check("signature", FAIL, "manifest.json is missing"))
    else:
        ok, what = verify_manifest(out.manifest_raw, out.artifact(SIGNATURE_FILE), pubkey_pem,
                                   pubkey_where)
        v.add(Check("signature", OK if ok else FAIL, what))
    return v
