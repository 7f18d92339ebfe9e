"""The pipeline of `ccbuild build`: recipe -> pinned inputs -> stages -> measurements -> OUT.

Each stage is cached in the store by the hash of everything it consumes, so a rebuild with
nothing changed only re-reads verified blobs, recomputes the (cheap) initrd and measurements,
finds OUT identical and leaves it alone. (:func:`builder.build.build` runs this only when the
up-to-date record does not already show that, :mod:`builder.uptodate`.)
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from builder import __version__, log
from builder.emit import BuildView, run_emitters
from builder.emit.manifest import Digests, dumps, make_manifest, sha256sums
from builder.emit.outdir import check_out, write_outdir
from builder.inputs import read_exact
from builder.measurements import measure_recipe
from builder.recipe import LoadedRecipe, load_recipe
from builder.sources.resolve import ResolveOptions, Resolved, resolve
from builder.stages import agent as ag
from builder.stages import firmware as fws
from builder.stages import initrd as ini
from builder.stages import tree
from builder.stages.chain import check_chain
from builder.stages.cmdline import check_template, render_cmdline
from builder.stages.kernel import check_kernel_for_platform, inspect_kernel
from builder.store import Store

if TYPE_CHECKING:
    from builder.build import BuildOptions


@dataclass
class _Ctx:
    lr: LoadedRecipe
    store: Store
    opts: ResolveOptions
    jobs: int
    inputs: list[dict] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)
    sha256: Digests = field(default_factory=Digests)   # every digest of this build, once

    def add(self, r: Resolved, role: str) -> Resolved:
        self.inputs.append(r.record(role, self.sha256))
        return r


# -- stages --------------------------------------------------------------------------------------
def _firmware(c: _Ctx) -> bytes:
    fw = c.lr.recipe.firmware
    if fw.source is not None:   # a prebuilt image: one OVMF/TDVF image for the platform
        data = c.add(resolve(fw.source, c.opts, "firmware.source"), "firmware").data
        return fws.prebuilt_firmware(c.lr.recipe.platform, data, where="firmware")
    desc = fws.load_descriptor(c.lr.resolve(fw.build), display=fw.build)
    for name, digest in sorted(desc.source.files.items()):
        c.inputs.append({"role": "firmware-source", "kind": "debian-source",
                         "name": name, "version": desc.source.version, "sha256": digest})
    data = fws.build_cached(c.store, desc, jobs=c.jobs, offline=c.opts.offline)
    c.inputs.append({"role": "firmware", "kind": "build", "name": desc.name,
                     "version": desc.dsc, "sha256": c.sha256(data)})
    fws.check_firmware(c.lr.recipe.platform, data, where="firmware")
    return data


def _kernel(c: _Ctx) -> bytes:
    if c.lr.recipe.kernel.build is not None:
        from builder.stages.kernel_build import build_for_recipe
        data, records = build_for_recipe(c.lr, c.store, c.opts, c.jobs)
        c.inputs.extend(records)
        where = "kernel.build"
    else:
        data = c.add(resolve(c.lr.recipe.kernel.source, c.opts, "kernel.source"), "kernel").data
        where = "kernel.source"
    info = inspect_kernel(data, where)
    check_kernel_for_platform(info, c.lr.recipe.platform, where)
    return data


def _agent(c: _Ctx) -> bytes:
    a = c.lr.recipe.agent
    if a.source is not None:
        r = c.add(resolve(a.source, c.opts, "agent.source"), "agent")
        return ag.pinned_agent(r.data, r.data_sha256, "agent").data
    data, toolchain = ag.build_cached(c.store)
    c.inputs.append({"role": "agent", "kind": "build", "name": "ccbuild-test-agent",
                     "version": __version__, "toolchain": "; ".join(toolchain.splitlines()),
                     "sha256": c.sha256(data)})
    return data


def _file_contents(c: _Ctx, section: str) -> list[tuple[str, bytes, int]]:
    """(path, bytes, mode) of the recipe's ``<section>.files`` (inline or pinned sources)."""
    out = []
    for i, f in enumerate(getattr(c.lr.recipe, section).files):
        if f.source is not None:
            data = c.add(resolve(f.source, c.opts, f"{section}.files[{i}].source"),
                         f"{section}:{f.path}").data
        else:
            data = f.content.encode()
        out.append((f.path, data, f.mode))
    return out


def _initrd(c: _Ctx, agent: bytes) -> bytes:
    spec_r = c.lr.recipe.initrd
    files = [tree.File(*f) for f in _file_contents(c, "initrd")]
    spec = ini.InitrdSpec(agent=agent, compression=spec_r.compression, files=tuple(files),
                          symlinks=tuple(tree.Symlink(s.path, s.target) for s in spec_r.symlinks),
                          dirs=tree.DEFAULT_DIRS + tuple(tree.Dir(d) for d in spec_r.dirs))
    return ini.build_initrd(spec, c.lr.recipe.source_date_epoch)


def _rootfs(c: _Ctx, agent: bytes):
    from builder.stages import rootfs as rfs
    spec_r = c.lr.recipe.rootfs
    files = [tree.File(*f) for f in _file_contents(c, "rootfs")]
    spec = rfs.RootfsSpec(spec_r.format, agent, tuple(files),
                          tuple(tree.Dir(d) for d in spec_r.dirs),
                          c.lr.recipe.source_date_epoch, c.lr.digest)
    return rfs.build_rootfs_tmp(c.store, spec)


def _cmdline(c: _Ctx, rootfs=None) -> str:
    """The measured command line: the recipe's template, or with ``launch.kata`` what the Kata
    runtime model composes (for the first pod CPU limit; builder.kata.recipe)."""
    r = c.lr.recipe
    extra = rootfs.cmdline_variables() if rootfs is not None else {}
    variables = {"platform": r.platform, "name": c.lr.name, **extra}
    if r.launch.kata is not None:
        from builder.kata.recipe import kata_pods
        return kata_pods(c.lr, rootfs.format if rootfs is not None else None,
                         rootfs.kernel_verity_params() if rootfs is not None else "",
                         variables)[0].cmdline
    return render_cmdline(r.cmdline, variables)


def _check_cmdline_template(lr: LoadedRecipe) -> None:
    """A bad template, or (``launch.kata``) a Kata configuration the model refuses, fails now,
    before the long stages."""
    r = lr.recipe
    variables = {"platform": r.platform, "name": lr.name}
    if r.launch.kata is not None:
        from builder.kata.recipe import kata_pods, rootfs_variables
        from builder.stages.cmdline import KATA_VARIABLES
        fmt = r.rootfs.format if r.rootfs is not None else None
        kvp = ("root_hash=" + "0" * 64 + ",salt=" + "0" * 64 + ",data_blocks=1,"
               "data_block_size=4096,hash_block_size=4096") if fmt else ""
        kata_pods(lr, fmt, kvp, {**variables, **(rootfs_variables(fmt, kvp) if fmt else {})})
        variables.update({k: "0" for k in KATA_VARIABLES})
    check_template(r.cmdline, variables, r.rootfs is not None)


def _measure(c: _Ctx, fw: bytes, kernel: bytes, initrd: bytes | None, cmdline: str) -> dict:
    return measure_recipe(c.lr, fw, kernel, initrd, cmdline)


# -- the pipeline ------------------------------------------------------------------------------
def run(recipe_path: str | Path, options: BuildOptions, timings: list[tuple[str, float]],
        t0: float):
    """Build ``recipe_path`` into OUT; a :class:`builder.build.BuildResult` (``timings`` is
    the list the steps' durations are appended to)."""
    from builder.build import BuildResult
    lr = load_recipe(recipe_path, list(options.overrides), locked=options.locked)
    lr = replace(lr, allow_outside=options.allow_outside)
    _check_cmdline_template(lr)   # a bad template fails now, not after the stages
    out = Path(options.out) if options.out else Path("out") / lr.name
    check_out(out, options.force)   # an OUT that cannot be written fails now, not after the build
    lr.check_paths()                # every file the recipe names is confined, before any work
    store = Store.open(options.store_root)
    c = _Ctx(lr, store, ResolveOptions(store, lr.path.parent, options.offline, options.locked, lr),
             options.jobs or os.cpu_count() or 1, timings=timings)
    with log.step("firmware", c.timings):
        fw = _firmware(c)
    with log.step("kernel", c.timings):
        kernel = _kernel(c)
    with log.step("agent", c.timings):
        agent = _agent(c)
    rootfs = initrd = None
    if lr.recipe.rootfs is not None:   # Kata's image boot: verity root, no initrd
        with log.step("rootfs", c.timings):
            rootfs = _rootfs(c, agent)
    else:
        with log.step("initrd", c.timings):
            initrd = _initrd(c, agent)
    with log.step("cmdline", c.timings):
        cmdline = _cmdline(c, rootfs)
    with log.step("measure", c.timings):
        measurements = _measure(c, fw, kernel, initrd, cmdline)

    image = {"initrd.img": initrd} if rootfs is None else {"rootfs.img": rootfs.image}
    artifacts = {"firmware.fd": fw, "vmlinuz": kernel, **image,
                 "cmdline.txt": cmdline.encode(), "measurements.json": dumps(measurements)}
    with log.step("chain", c.timings):   # the measured view reaches the agent, or refuse
        check_chain(lr.recipe.platform, fw, initrd if rootfs is None else rootfs, cmdline, agent)
    view = BuildView(lr, fw, kernel, initrd, cmdline, agent, measurements, tuple(c.inputs),
                     store, rootfs.image if rootfs is not None else None, c.sha256)
    with log.step("emit", c.timings):
        for extra in run_emitters(view, artifacts):
            artifacts.update(extra)
    _h = c.sha256
    image_chain = ({"initrd": _h(initrd)} if rootfs is None else
                   {"rootfs": _h(rootfs.image), "verity_root_hash": rootfs.root_hash})
    chain = {"firmware": _h(fw), "kernel": _h(kernel), **image_chain,
             "cmdline": _h(artifacts["cmdline.txt"]), "agent": _h(agent)}
    build_key = hashlib.sha256(dumps([lr.digest, c.inputs, __version__])).hexdigest()
    manifest = make_manifest(name=lr.name, platform=lr.recipe.platform,
                             recipe_sha256=_h(lr.text), recipe_digest=lr.digest,
                             source_date_epoch=lr.recipe.source_date_epoch, inputs=c.inputs,
                             outputs=artifacts, chain=chain, build_key=build_key,
                             boot={"readiness": lr.recipe.agent.readiness,
                                   "memory_mib": lr.recipe.launch.memory_mib}, sha256=_h)
    files = dict(artifacts)
    files["manifest.json"] = dumps(manifest)
    files["SHA256SUMS"] = sha256sums(files, _h)
    if options.sign_key is not None:   # cryptography is imported only to sign
        from builder.emit.signature import SIGNATURE_NAME, sign_manifest_file
        files[SIGNATURE_NAME] = sign_manifest_file(files["manifest.json"], options.sign_key)
    with log.step("write", c.timings):   # comparing OUT with the files is part of writing
        up_to_date = _same_as_disk(out, files)
        if not up_to_date:
            write_outdir(out, files, force=options.force)
    c.timings.append(("total", time.monotonic() - t0))
    return BuildResult(out, lr.name, lr.recipe.platform, files, manifest, measurements,
                       up_to_date, c.timings, {n: _h(b) for n, b in files.items()})


def _same_as_disk(out: Path, files: dict[str, bytes]) -> bool:
    """OUT already holds exactly ``files``: a real directory of regular files (never followed
    through a symlink, never read past the expected size)."""
    try:
        if out.is_symlink() or not out.is_dir() or set(os.listdir(out)) != set(files):
            return False
    except OSError:
        return False
    return all(read_exact(out / n, len(b)) == b for n, b in files.items())
