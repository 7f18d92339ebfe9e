"""The measurements a build publishes (out/measurements.json), from the built bytes.

``{"snp": [matrix entries]}`` for SNP recipes (every vCPU count x CPU type x VMM x guest
features of the recipe's launch section), ``{"tdx": {...}}`` for TDX recipes."""

from __future__ import annotations

from builder.recipe import LoadedRecipe, expand_vcpus


def measure_recipe(lr: LoadedRecipe, fw: bytes, kernel: bytes, initrd: bytes,
                   cmdline: str) -> dict:
    r = lr.recipe
    if r.platform == "snp":
        from builder.measure.sev_hashes import KernelHashes
        from builder.measure.snp import snp_matrix
        hashes = KernelHashes.of(kernel, initrd, cmdline)
        entries = snp_matrix(fw, hashes, expand_vcpus(r.launch.vcpus), list(r.launch.vcpu_types),
                             list(r.launch.vmms), list(r.launch.guest_features))
        return {"snp": entries}
    from builder.measure.tdx import tdx_measurements
    return {"tdx": tdx_measurements(fw, kernel, initrd, cmdline, lr)}
