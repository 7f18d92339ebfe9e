"""`ccbuild explain --snp-report` end to end (a subprocess: CLI start-up, OUT read and hashed,
report parsed, the search over the default space, the text written) against two baselines in the
same run: `python -c pass` (interpreter start-up) and the search alone in this process
(builder.measure.snp_search.search on the same inputs and variants).

OUT: a small OUT written with the build's own writers (4 MiB firmware ending with the published
AmdSev fixture page, 12 MiB kernel, 24 MiB initrd, as bench_snp), published values 1, 2, 8 vCPUs
x EPYC-v4 x qemu x 0x1. Two reports: one found late in the search order (a launch with a
trailing newline on the command line, VMM gce, 200 vCPUs), and one nothing reproduces (the whole
default space searched). Ratios are what to read."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_snp import CMDLINE, FIXTURE, inputs

REPO = Path(__file__).resolve().parents[1]


def _report(measurement: bytes) -> bytes:
    raw = bytearray(0x4A0)
    struct.pack_into("<I", raw, 0, 2)
    struct.pack_into("<I", raw, 0x34, 1)
    raw[0x90:0xC0] = measurement
    return bytes(raw)


def _write_out(d: Path, fw: bytes, kernel: bytes, initrd: bytes) -> Path:
    from builder.emit.manifest import dumps, make_manifest, sha256sums
    from builder.measure.sev_hashes import KernelHashes
    from builder.measure.snp import snp_matrix
    entries = snp_matrix(fw, KernelHashes.of(kernel, initrd, CMDLINE), [1, 2, 8], ["EPYC-v4"],
                         ["qemu"], [0x1])
    files = {"firmware.fd": fw, "vmlinuz": kernel, "initrd.img": initrd,
             "cmdline.txt": CMDLINE.encode(), "measurements.json": dumps({"snp": entries})}
    manifest = make_manifest(
        name="bench", platform="snp", recipe_sha256="1" * 64, recipe_digest="2" * 64,
        source_date_epoch=0, inputs=[], outputs=files, chain={}, build_key="3" * 64,
        boot={"readiness": "ready", "memory_mib": 512})
    files["manifest.json"] = dumps(manifest)
    files["SHA256SUMS"] = sha256sums(files)
    d.mkdir()
    for n, b in files.items():
        (d / n).write_bytes(b)
    return d


def _time(cmd: list[str], runs: int = 3) -> tuple[float, int]:
    best, rc = float("inf"), -1
    for _ in range(runs):
        t = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).returncode
        best = min(best, time.perf_counter() - t)
    return best, rc


def main() -> None:
    if not FIXTURE.is_file():
        print(f"skipped: {FIXTURE.name} (tests/vectors) is absent")
        return
    from builder.measure.sev_hashes import KernelHashes
    from builder.measure.snp import SnpParams, launch_digest
    from builder.measure.snp_search import search, standard_variants
    from builder.measure.vmsa import Vmm

    fw, kernel, initrd = inputs()
    late = launch_digest(fw, SnpParams(200, 0x800F12, Vmm.GCE, 0x1,
                                       KernelHashes.of(kernel, initrd, CMDLINE + "\n")))
    none = hashlib.sha384(b"no launch has this digest").digest()
    with tempfile.TemporaryDirectory() as tmp:
        out = _write_out(Path(tmp) / "out", fw, kernel, initrd)
        t_pass, _ = _time([sys.executable, "-c", "pass"], 5)
        print(f"python -c pass: {t_pass * 1000:.0f} ms")
        variants = standard_variants(CMDLINE, kernel=kernel, initrd=initrd)
        for name, target in (("late match", late), ("no match", none)):
            rp = Path(tmp) / f"{name.replace(' ', '-')}.bin"
            rp.write_bytes(_report(target))
            t = time.perf_counter()
            res = search(fw, variants, target)
            t_search = time.perf_counter() - t
            t_cli, rc = _time([sys.executable, "-m", "builder.cli", "explain", "--snp-report",
                               str(rp), str(out)], 1 if name == "no match" else 2)
            want = 0 if res.match is not None else 1
            assert rc == want, (name, rc)
            print(f"explain, {name} ({res.examined:,} of {res.searched['candidates']:,} "
                  f"launches): CLI {t_cli:.2f} s (exit {rc}) = {t_cli / t_pass:.0f}x "
                  f"`python -c pass`, {t_cli / t_search:.2f}x the search alone "
                  f"({t_search:.2f} s)")


if __name__ == "__main__":
    main()
