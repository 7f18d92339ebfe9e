"""``ccbuild verify OUT``: every hash of OUT (:mod:`builder.verify.out`) and every measurement
recomputed from the artifacts in OUT (SNP entries from their own parameters,
:mod:`builder.verify.snp`; TDX registers and the event log from the knobs measurements.json
records, :mod:`builder.verify.tdx`)."""

from __future__ import annotations

from pathlib import Path

from builder.errors import CheckFailed
from builder.verify.out import OutDir, check_hashes, load_out
from builder.verify.report import FAIL, Check, Verdict
from builder.verify.snp import recompute_snp
from builder.verify.tdx import recompute_tdx


def _artifacts(out: OutDir) -> tuple[bytes, bytes, bytes | None, str]:
    need = ("firmware.fd", "vmlinuz", "cmdline.txt")
    missing = [n for n in need if n not in out.entries]
    if missing:
        raise CheckFailed(f"cannot recompute measurements: {', '.join(missing)} missing from OUT")
    odd = [f"{n} is {out.entries[n].kind}" for n in need + ("initrd.img",)
           if n in out.entries and out.entries[n].kind != "file"]
    if odd:
        raise CheckFailed(f"cannot recompute measurements: {', '.join(odd)}, not a regular file")
    try:
        cmdline = out.artifact("cmdline.txt").decode()
    except UnicodeDecodeError:
        raise CheckFailed("cmdline.txt is not UTF-8") from None
    return out.artifact("firmware.fd"), out.artifact("vmlinuz"), out.artifact("initrd.img"), \
        cmdline


def recompute_measurements(out: OutDir) -> list[Check]:
    m = out.measurements
    if m is None:
        return [Check("measurements.json", FAIL, "missing or not valid JSON")]
    try:
        fw, kernel, initrd, cmdline = _artifacts(out)
    except CheckFailed as e:
        return [Check("measurements", FAIL, e.one_line())]
    rows: list[Check] = []
    if "snp" in m:
        rows += recompute_snp(fw, kernel, initrd, cmdline, m["snp"])
    if "tdx" in m:
        rows += recompute_tdx(fw, kernel, initrd, cmdline, m["tdx"])
    if not rows:
        rows.append(Check("measurements", FAIL, "measurements.json has neither snp nor tdx"))
    return rows


def check_out(path: str | Path) -> Verdict:
    out = load_out(path)
    v = Verdict(f"verify {out.path.name}: outputs and measurements")
    v.add(*check_hashes(out))
    v.add(*recompute_measurements(out))
    return v
