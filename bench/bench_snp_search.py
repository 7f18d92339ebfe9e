"""SEV-SNP launch search (builder.measure.snp_search): candidate launches per second against
looping the single-digest path (builder.measure.snp.launch_digest) over a sample of the same
candidates, and the absolute time for 10^6 candidates.

A candidate is one (hashes variant, VMM, CPU signature, guest features, vCPU count) launch. The
search computes one SHA-384 per distinct digest (EC2 and GCE share one chain for every signature),
so candidates are counted two ways: every launch searched, and distinct digests computed (the
conservative count, used for the 10^6 target). Inputs as bench_snp: a 4 MiB firmware ending with
the published AmdSev fixture page, a 12 MiB kernel, a 24 MiB initrd. Ratios are what to read."""

from __future__ import annotations

import hashlib
import random
import time

from bench.bench_snp import CMDLINE, FIXTURE, inputs

SAMPLE = 12


def main() -> None:
    if not FIXTURE.is_file():
        print(f"skipped: {FIXTURE.name} (../shared/vectors) is absent")
        return
    from builder.measure.sev_hashes import KernelHashes
    from builder.measure.snp import SnpParams, launch_digest
    from builder.measure.snp_search import DEFAULT_SPACE, search, standard_variants

    fw, kernel, initrd = inputs()
    variants = standard_variants(CMDLINE, kernel=kernel, initrd=initrd)
    target = hashlib.sha384(b"no launch has this digest").digest()  # worst case: no match

    t = time.perf_counter()
    one = search(fw, variants[:1], target)
    t_one = time.perf_counter() - t
    n_digests, n_launches = one.searched["digests"], one.searched["candidates"]
    per_digest = t_one / n_digests
    print(f"search, 1 hashes variant, default space ({n_launches:,} launches = "
          f"{one.searched['vmms']} VMMs x {one.searched['vcpu_sigs']} CPU signatures x "
          f"{one.searched['guest_features']} guest features x {one.searched['vcpus']} vCPU counts; "
          f"{n_digests:,} distinct digests): {t_one:.2f} s, no match")
    print(f"  {n_digests / t_one:,.0f} digests/s, {n_launches / t_one:,.0f} launches/s; "
          f"10^6 candidates (digests) in {per_digest * 1e6:.2f} s (target < 10 s)")

    # The single-digest path over a sample of the same candidates (the kernel and initrd are
    # hashed once, as a caller looping over launches would).
    rng = random.Random(0)
    sample = [(rng.randint(1, 512), rng.choice(DEFAULT_SPACE.vcpu_sigs),
               rng.choice(DEFAULT_SPACE.vmms), rng.choice(DEFAULT_SPACE.guest_features))
              for _ in range(SAMPLE)]
    hashes = KernelHashes.of(kernel, initrd, CMDLINE)
    t = time.perf_counter()
    for vcpus, sig, vmm, gf in sample:
        launch_digest(fw, SnpParams(vcpus, sig, vmm, gf, hashes))
    per_single = (time.perf_counter() - t) / SAMPLE
    print(f"single-digest path, {SAMPLE} sampled candidates: {per_single * 1000:.1f} ms each; "
          f"10^6 would take {per_single * 1e6 / 3600:.1f} h")
    print(f"  search vs single-digest loop: {per_single / per_digest:,.0f}x faster per digest, "
          f"{per_single * n_launches / t_one:,.0f}x per launch")

    t = time.perf_counter()
    two = search(fw, variants[:1], target, workers=2)
    t_two = time.perf_counter() - t
    assert two == one
    print(f"  same search on 2 processes: {t_two:.2f} s ({t_one / t_two:.2f}x; same result)")

    t = time.perf_counter()
    full = search(fw, variants, target)
    t_full = time.perf_counter() - t
    print(f"search, all {len(variants)} standard hashes variants ({full.searched['candidates']:,} "
          f"launches, {full.searched['digests']:,} digests): {t_full:.2f} s, no match")


if __name__ == "__main__":
    main()
