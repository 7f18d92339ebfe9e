"""``ccbuild verify OUT``: every hash of OUT (:mod:`builder.verify.out`) and every measurement
recomputed from the artifacts in OUT (SNP entries from their own parameters,
:mod:`builder.verify.snp`; TDX registers and the event log from the knobs measurements.json
records, :mod:`builder.verify.tdx`)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from builder.errors import CheckFailed
from builder.measure.sev_hashes import KernelHashes
from builder.measure.snp import snp_matrix
from builder.measure.tdx import TdxParams, tdx_measurements
from builder.verify.out import OutDir, check_hashes, load_out
from builder.verify.report import FAIL, OK, Check, Verdict
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
    if m.get("kata"):
        rows += recompute_kata(fw, kernel, initrd, cmdline, m)
    if not rows:
        rows.append(Check("measurements", FAIL, "measurements.json has neither snp nor tdx"))
    return rows


def recompute_kata(fw: bytes, kernel: bytes, initrd: bytes | None, cmdline: str,
                   m: dict) -> list[Check]:
    """The ``kata`` table: every pod's command line (its hash, and cmdline.txt where it says so)
    and its values recomputed with that command line and the pod's vCPUs, CPU model and memory.
    TDX RTMR0 and RTMR3 hash VMM data OUT does not hold: they are compared with the ``tdx`` record
    when the pod launches exactly that (same command line and memory)."""
    rows: list[Check] = []
    tdx = m.get("tdx")
    for pod in m["kata"]["pods"]:
        item = f"kata pod {pod['pod_cpus']} CPUs ({pod['vcpus']} vCPUs)"
        pc = pod["cmdline"]
        if hashlib.sha256(pc.encode()).hexdigest() != pod["cmdline_sha256"]:
            rows.append(Check(item, FAIL, "cmdline_sha256 is not the hash of its command line"))
            continue
        if pod["same_cmdline"] != (pc == cmdline):
            rows.append(Check(item, FAIL, "same_cmdline does not say whether the command line "
                              "is cmdline.txt"))
            continue
        if pod.get("launch_digests") is not None:
            fresh = snp_matrix(fw, KernelHashes.of(kernel, initrd, pc), [pod["vcpus"]],
                               [pod["cpu"].split(",")[0]], ["qemu"],
                               [int(f, 16) for f in pod["launch_digests"]])
            got = {f["guest_features"]: f["launch_digest"] for f in fresh}
            bad = [f for f, d in pod["launch_digests"].items() if got.get(f) != d]
            rows.append(Check(item, FAIL, f"launch digest for features {bad[0]} recomputed from "
                              "OUT differs", pod["launch_digests"][bad[0]], got.get(bad[0]))
                        if bad else Check(item, OK, "launch digests recomputed"))
        elif tdx is not None:
            params = replace(TdxParams.from_record(tdx.get("profile") or {}),
                             memory=pod["memory_mib"] << 20)
            fresh = tdx_measurements(fw, kernel, initrd, pc, params)
            regs = ["mrtd", "rtmr1", "rtmr2"]
            if pc == cmdline and params.memory == TdxParams.from_record(
                    tdx.get("profile") or {}).memory:
                fresh = {**fresh, "rtmr0": tdx.get("rtmr0"), "rtmr3": tdx.get("rtmr3")}
                regs += ["rtmr0", "rtmr3"]
            bad = [r for r in regs if fresh.get(r) != pod.get(r)]
            rows.append(Check(item, FAIL, f"{bad[0]} recomputed from OUT differs",
                              pod.get(bad[0]), fresh.get(bad[0]))
                        if bad else Check(item, OK, f"{', '.join(regs)} recomputed"))
    return rows


def check_out(path: str | Path) -> Verdict:
    out = load_out(path)
    v = Verdict(f"verify {out.path.name}: outputs and measurements")
    v.add(*check_hashes(out))
    v.add(*recompute_measurements(out))
    return v
