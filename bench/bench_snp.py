"""SEV-SNP launch digest: one digest against sev-snp-measure on the same inputs, against the hashing
it cannot avoid, and the 9,216-digest matrix (1..512 vCPUs x 6 CPU types x 3 VMMs).

Inputs: a 4 MiB firmware (random pages ending with the published AmdSev fixture page, so it has a
real footer table and SEV metadata), a 12 MiB kernel, a 24 MiB initrd. Times are the best of a few
runs; ratios are what to read."""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from pathlib import Path

FIXTURE = (Path(__file__).resolve().parents[1] / "tests" / "vectors" / "snp" / "sev-snp-measure"
           / "ovmf_AmdSev_suffix.bin")
CMDLINE = "console=ttyS0 root=/dev/vda1 ro agent.log=debug"
MATRIX_TYPES = ["EPYC", "EPYC-v4", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa", "EPYC-Turin"]
MATRIX_VMMS = ["qemu", "ec2", "gce"]


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def inputs() -> tuple[bytes, bytes, bytes]:
    rng = random.Random(0)
    fw = rng.randbytes(4 * 1024 * 1024 - 4096) + FIXTURE.read_bytes()
    return fw, rng.randbytes(12 * 1024 * 1024), rng.randbytes(24 * 1024 * 1024)


def required_hashing(fw: bytes, kernel: bytes, initrd: bytes, vcpus: int) -> None:
    """What any implementation must hash: SHA-384 of every firmware page and one 112-byte PAGE_INFO
    per measured page, SHA-256 of kernel, initrd and cmdline, SHA-384 of two VMSA pages."""
    sha384, mv, info = hashlib.sha384, memoryview(fw), bytes(0x70)
    for off in range(0, len(fw), 4096):
        sha384(mv[off:off + 4096]).digest()
        sha384(info).digest()
    for _ in range(36 + vcpus):  # metadata pages of this firmware + VMSA steps
        sha384(info).digest()
    for blob in (kernel, initrd, CMDLINE.encode() + b"\0"):
        hashlib.sha256(blob).digest()
    sha384(bytes(4096)).digest()
    sha384(bytes(4096)).digest()


def main() -> None:
    if not FIXTURE.is_file():
        print(f"skipped: {FIXTURE.name} (tests/vectors) is absent")
        return
    from builder.measure.cpu import vcpu_type
    from builder.measure.sev_hashes import KernelHashes
    from builder.measure.snp import SnpParams, launch_digest, snp_matrix

    fw, kernel, initrd = inputs()
    sig = vcpu_type("EPYC-Milan").signature
    vcpus = 4

    def ours() -> bytes:
        return launch_digest(fw, SnpParams(vcpus, sig, kernel_hashes=KernelHashes.of(kernel, initrd, CMDLINE)))

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, data in (("fw", fw), ("kernel", kernel), ("initrd", initrd)):
            paths[name] = os.path.join(tmp, name)
            Path(paths[name]).write_bytes(data)
        try:
            from sevsnpmeasure import guest
        except ImportError:
            guest = None

        def oracle() -> bytes:
            return guest.snp_calc_launch_digest(vcpus, sig, paths["fw"], paths["kernel"],
                                                paths["initrd"], CMDLINE, 0x1, "")

        t_ours = best(ours)
        t_base = best(lambda: required_hashing(fw, kernel, initrd, vcpus))
        print(f"single digest (4 MiB firmware, 12 MiB kernel, 24 MiB initrd, {vcpus} vCPUs): "
              f"{t_ours * 1000:.1f} ms")
        print(f"  vs required hashing alone ({t_base * 1000:.1f} ms): {t_ours / t_base:.2f}x "
              "(target <= 1.2x)")
        if guest is not None:
            assert oracle() == ours(), "digest differs from sev-snp-measure"
            t_oracle = best(oracle)
            print(f"  vs sev-snp-measure ({t_oracle * 1000:.1f} ms, same inputs, same digest): "
                  f"{t_oracle / t_ours:.2f}x faster")
            fw_only = SnpParams(255, sig)
            t_mine_fw = best(lambda: launch_digest(fw, fw_only))
            t_oracle_fw = best(lambda: guest.snp_calc_launch_digest(
                255, sig, paths["fw"], None, None, None, 0x1, ""))
            print(f"firmware-only digest, 255 vCPUs: {t_mine_fw * 1000:.1f} ms vs sev-snp-measure "
                  f"{t_oracle_fw * 1000:.1f} ms: {t_oracle_fw / t_mine_fw:.2f}x faster")
        else:
            print("  sev-snp-measure not installed: no oracle ratio")

    hashes = KernelHashes.of(kernel, initrd, CMDLINE)
    counts = list(range(1, 513))
    n = len(counts) * len(MATRIX_TYPES) * len(MATRIX_VMMS)
    t_matrix = best(lambda: snp_matrix(fw, hashes, counts, MATRIX_TYPES, MATRIX_VMMS, [0x1]))
    print(f"matrix 1..512 vCPUs x {len(MATRIX_TYPES)} CPU types x {len(MATRIX_VMMS)} VMMs = {n} "
          f"digests: {t_matrix:.3f} s (target <= 2 s; {t_matrix / t_ours:.1f} single digests)")
    t_matrix2 = best(lambda: snp_matrix(fw, hashes, counts, MATRIX_TYPES, MATRIX_VMMS, [0x1, 0x21]),
                     repeat=1)
    print(f"  with guest features 0x1 and 0x21 ({2 * n} digests): {t_matrix2:.3f} s")


if __name__ == "__main__":
    main()
