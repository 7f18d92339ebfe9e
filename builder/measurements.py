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
    if r.launch.kata is not None:
        return _with_initdata(lr, measure_kata(lr, fw, kernel, initrd, cmdline))
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


# -- launch.kata -------------------------------------------------------------------------------
def measure_kata(lr: LoadedRecipe, fw: bytes, kernel: bytes, initrd: bytes | None,
                 cmdline: str) -> dict:
    """What the Kata runtime launches, per pod CPU limit (builder.kata.recipe): the vCPUs, CPU
    model, memory and command line come from the runtime model. ``"snp"`` / ``"tdx"`` hold the
    launches whose command line is ``cmdline`` (cmdline.txt, the first pod's; Kata 3.31.0 adds
    ``nr_cpus=<vCPUs>``, so other pods may have their own), ``"kata"`` the whole table: pod CPU
    limit -> vCPUs -> launch digests / registers, each pod with its own command line."""
    from builder.kata.recipe import (kata_pods, release_of, rootfs_variables, vcpu_type,
                                     verity_from_cmdline)
    r = lr.recipe
    k = r.launch.kata
    fmt = r.rootfs.format if r.rootfs is not None else None
    kvp = ""
    variables = {"platform": r.platform, "name": lr.name}
    if fmt is not None:
        found = verity_from_cmdline(cmdline)
        if found is None:
            raise CCBuildError("the Kata command line carries no dm-verity table for the rootfs",
                               f"{lr.path.name}: cmdline.template",
                               "keep {{ kata_cmdline }} in the template")
        kvp = found[0]
        variables.update(rootfs_variables(fmt, kvp))
    pods = kata_pods(lr, fmt, kvp, variables)
    if pods[0].cmdline != cmdline:   # the build and this table composed differently: a bug
        raise AssertionError("the Kata model's command line differs from cmdline.txt")
    release = release_of(lr)
    table: dict = {"version": release.tag, "commit": release.commit, "runtime": k.runtime,
                   "configuration": k.configuration, "mode": pods[0].launch.mode,
                   "kernel_verity_params": kvp or None, "pods": []}
    out: dict = {}
    if r.platform == "snp":
        from builder.measure.sev_hashes import KernelHashes
        from builder.measure.snp import snp_matrix
        entries = []
        for pod in pods:
            hashes = KernelHashes.of(kernel, initrd, pod.cmdline)
            rows = snp_matrix(fw, hashes, [pod.launch.vcpus], [vcpu_type(pod.launch)], ["qemu"],
                              list(r.launch.guest_features))
            if pod.cmdline == cmdline:
                entries += [e for e in rows if e not in entries]
            table["pods"].append(_pod_row(pod, cmdline) | {
                "launch_digests": {e["guest_features"]: e["launch_digest"] for e in rows}})
        entries.sort(key=lambda e: (e["vcpus"], int(e["guest_features"], 16)))
        out["snp"] = entries
        if r.launch.snp.id_key:
            out["snp_id"] = _sign_entries(lr, entries)
    else:
        from builder.measure.tdx import TdxParams, tdx_measurements
        from builder.measure.tdx_profile import load_profile
        t = r.launch.tdx
        base = load_profile(lr.resolve(t.profile, "launch.tdx.profile")) if t.profile else \
            TdxParams()
        done: dict = {}
        for pod in pods:
            mem = int(pod.launch.memory.rstrip("M"))
            key = (pod.cmdline, mem)
            if key not in done:
                done[key] = tdx_measurements(fw, kernel, initrd, pod.cmdline,
                                             replace(base, memory=mem << 20),
                                             page_add_order=t.page_add_order)
            m = done[key]
            if "tdx" not in out and pod.cmdline == cmdline:
                out["tdx"] = m
            table["pods"].append(_pod_row(pod, cmdline) | {
                reg: m.get(reg) for reg in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")})
    out["kata"] = table
    return out


def _pod_row(pod, cmdline: str) -> dict:
    import hashlib
    L = pod.launch
    return {"pod_cpus": pod.pod_cpus, "vcpus": L.vcpus, "smp": L.smp, "cpu": L.cpu,
            "memory_mib": int(L.memory.rstrip("M")), "cmdline": pod.cmdline,
            "cmdline_sha256": hashlib.sha256(pod.cmdline.encode()).hexdigest(),
            "same_cmdline": pod.cmdline == cmdline}
