"""The measurements a build publishes (out/measurements.json), from the built bytes.

``{"snp": [matrix entries]}`` for SNP recipes (every vCPU count x CPU type x VMM x guest
features of the recipe's launch section), ``{"tdx": {...}}`` for TDX recipes (MRTD, RTMR0-3 with
the expected event log; the VMM profile supplies the version-dependent knobs, the recipe's launch
section the memory size and page-add order)."""

from __future__ import annotations

from dataclasses import replace

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
    from builder.measure.tdx import TdxParams, tdx_measurements
    from builder.measure.tdx_profile import load_profile
    t = r.launch.tdx
    params = load_profile(lr.resolve(t.profile)) if t.profile else TdxParams()
    params = replace(params, memory=r.launch.memory_mib << 20)
    return {"tdx": tdx_measurements(fw, kernel, initrd, cmdline, params,
                                    page_add_order=t.page_add_order)}
