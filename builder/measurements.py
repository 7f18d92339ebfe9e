"""The measurements a build publishes (out/measurements.json), from the built bytes and the
recipe (its launch section, profile, keys and initdata, read here; the engines in measure/ only
see bytes and parameters).

``{"snp": [matrix entries]}`` for SNP recipes (every vCPU count x CPU type x VMM x guest
features of the recipe's launch section), ``{"tdx": {...}}`` for TDX recipes (MRTD, RTMR0-3 with
the expected event log; the VMM profile supplies the version-dependent knobs, the recipe's launch
section the memory size and page-add order)."""

from __future__ import annotations

from dataclasses import replace

from builder.errors import CCBuildError
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
        out = {"snp": entries}
        if r.launch.snp.id_key:
            out["snp_id"] = _sign_entries(lr, entries)
        return _with_initdata(lr, out)
    from builder.measure.tdx import TdxParams, tdx_measurements
    from builder.measure.tdx_profile import load_profile
    t = r.launch.tdx
    params = load_profile(lr.resolve(t.profile, "launch.tdx.profile")) if t.profile else TdxParams()
    params = replace(params, memory=r.launch.memory_mib << 20)
    return _with_initdata(lr, {"tdx": tdx_measurements(fw, kernel, initrd, cmdline, params,
                                                       page_add_order=t.page_add_order)})


def _with_initdata(lr: LoadedRecipe, out: dict) -> dict:
    """``"initdata"``: the digest of the recipe's initdata document (exact bytes) and the value
    it takes in the TEE (SNP HOST_DATA, TDX MRCONFIGID)."""
    r = lr.recipe
    if r.initdata:
        from builder.measure.initdata import parse_initdata
        where = f"{lr.path.name}: initdata"
        out["initdata"] = parse_initdata(lr.read(r.initdata, "initdata", "initdata"), where).record(
            r.platform)
    return out


def _sign_entries(lr: LoadedRecipe, entries: list[dict]) -> dict:
    """ID block + ID auth (base64) for every matrix entry, signed with the recipe's keys
    (deterministic ECDSA, so a rebuild gives the same bytes); the keys stay out of OUT."""
    import base64

    from builder.measure import idblock as ib
    s = lr.recipe.launch.snp
    if not s.author_key:
        raise CCBuildError("an ID key needs an author key too", f"{lr.path.name}: "
                           "launch.snp.author_key", "give both PEM files (P-384)")
    id_key = ib.load_private_key(lr.read(s.id_key, "launch.snp.id_key", "key"), "launch.snp.id_key")
    author = ib.load_private_key(lr.read(s.author_key, "launch.snp.author_key", "key"),
                                 "launch.snp.author_key")
    params = ib.IdBlockParams(bytes.fromhex(s.family_id), bytes.fromhex(s.image_id),
                              s.guest_svn, s.policy)
    id_key_sig = ib.sign(author, ib.public_key_bytes(id_key), deterministic=True)
    for e in entries:
        block = ib.id_block(bytes.fromhex(e["launch_digest"]), params)
        auth = ib.id_auth(ib.sign(id_key, block, deterministic=True), id_key, id_key_sig, author)
        e["id_block"] = base64.b64encode(block).decode()
        e["id_auth"] = base64.b64encode(auth).decode()
    return {"id_key_digest": ib.key_digest(id_key).hex(),
            "author_key_digest": ib.key_digest(author).hex(),
            "policy": f"0x{s.policy:x}", "family_id": s.family_id, "image_id": s.image_id,
            "guest_svn": s.guest_svn}
