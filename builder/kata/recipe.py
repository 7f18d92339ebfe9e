"""A recipe's ``launch.kata``: the Go runtime model (:mod:`builder.kata.go_runtime`) fed the node's
Kata configuration, completed with what the build made (the boot image kind, its file system and
``kernel_verity_params``), once per pod CPU limit.

The configuration is the recipe's file with these keys replaced by the build's values (exactly
what :mod:`builder.emit.kata` writes to OUT): ``image``/``initrd`` (the built image, the other one
empty), ``rootfs_type`` (must already equal ``rootfs.format``) and ``kernel_verity_params`` (the
built tree; a value in the file must parse, and is then replaced). Everything else is read as Kata
reads it, so a key the model refuses is refused here, naming the file and the TOML key.

The measured command line is the model's ``-append`` string when the recipe keeps the default
``cmdline.template``; a recipe that gives a template renders it with ``kata_cmdline`` (that
string) among the variables. Kata 3.31.0 adds ``nr_cpus=<vCPUs>``, so the command line may differ
per pod CPU limit: cmdline.txt is the first entry's, and measurements.json's ``kata.pods`` gives
each entry its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from builder.errors import CCBuildError
from builder.inputs import decode_utf8
from builder.kata.config import KIND, KataConfig, parse_kata_config
from builder.kata.go_runtime import (HostFacts, Launch, Pod, compose, parse_kernel_verity_params,
                                     kernel_verity_root_flags)
from builder.kata.versions import KataRelease, resolve_release

FIELD = "launch.kata.configuration"
# Where the built image is attached (virtio-blk, no NVDIMM for a confidential guest): the
# partitions hypervisor.go GetKernelRootParams names with disable_image_nvdimm.
DATA_DEV, HASH_DEV = "/dev/vda1", "/dev/vda2"

_DM_VERITY = re.compile(
    r'dm-mod\.create="dm-verity,,,ro,0 (?P<sectors>\d+) verity 1 /dev/vda1 /dev/vda2 '
    r'(?P<dbs>\d+) (?P<hbs>\d+) (?P<blocks>\d+) 0 sha256 (?P<root>[0-9a-f]+) (?P<salt>[0-9a-f]+)"')


@dataclass(frozen=True)
class KataPod:
    pod_cpus: int
    launch: Launch
    cmdline: str          # the measured command line for this pod


def release_of(lr) -> KataRelease:
    return resolve_release(lr.recipe.launch.kata.version, f"{lr.path.name}: launch.kata.version")


def read_config(lr) -> KataConfig:
    """The recipe's Kata configuration (confined like every recipe path, at most 1 MiB, UTF-8
    TOML); errors name the recipe field, the file as the recipe gives it and the TOML key."""
    rel = lr.recipe.launch.kata.configuration
    shown = f"{lr.path.name}: {FIELD} {lr._shown(rel)}"
    data = lr.read(rel, FIELD, KIND)
    return parse_kata_config(decode_utf8(data, KIND, shown), shown)


def config_text(lr) -> str:
    rel = lr.recipe.launch.kata.configuration
    return decode_utf8(lr.read(rel, FIELD, KIND), KIND, f"{lr.path.name}: {FIELD}")


def completed(cfg: KataConfig, image_file: str, rootfs_format: str | None,
              kernel_verity_params: str) -> KataConfig:
    """``cfg`` with the build's boot image, file system and verity parameters (see module doc)."""
    if cfg.kernel_verity_params.strip():   # the node's value must be one Kata accepts
        try:
            parse_kernel_verity_params(cfg.kernel_verity_params,
                                       "hypervisor.qemu.kernel_verity_params")
        except CCBuildError as e:
            raise CCBuildError(e.what, cfg.where(e.where), "the build replaces it with the "
                               "built image's parameters, but the file must be valid") from None
    if rootfs_format is not None:
        try:
            kernel_verity_root_flags(cfg.rootfs_type)
        except CCBuildError as e:
            raise CCBuildError(e.what, cfg.where(e.where), e.hint) from None
        if (cfg.rootfs_type or "ext4") != rootfs_format:
            raise CCBuildError(f"rootfs_type {cfg.rootfs_type or 'ext4'!r} (Kata's default when "
                               f"empty: 'ext4') but the recipe builds {rootfs_format!r}",
                               cfg.where("hypervisor.qemu.rootfs_type"),
                               "make rootfs.format and rootfs_type agree")
        return replace(cfg, image=f"@ARTIFACTS@/{image_file}", initrd="",
                       rootfs_type=cfg.rootfs_type, kernel_verity_params=kernel_verity_params)
    return replace(cfg, image="", initrd=f"@ARTIFACTS@/{image_file}", kernel_verity_params="")


def host_facts(lr) -> HostFacts:
    h = lr.recipe.launch.kata.host
    tee = lr.recipe.platform if (lr.recipe.platform == "tdx" or h.snp) else "none"
    return HostFacts(tee=tee, fips=h.fips, host_cpus=h.host_cpus)


def vcpu_type(launch: Launch) -> str:
    """The QEMU CPU model of ``-cpu`` (``EPYC-v4,pmu=off`` -> ``EPYC-v4``): what the VMSA's
    CPUID signature comes from; the features after the comma do not change CPUID(1).EAX."""
    return launch.cpu.split(",")[0]


def verity_from_cmdline(cmdline: str) -> tuple[str, str] | None:
    """(``kernel_verity_params``, the ``dm-mod.create=...`` string) Kata's image boot put on
    ``cmdline`` (the inverse of GetKernelRootParams' verity table), or None without one."""
    m = _DM_VERITY.search(cmdline)
    if m is None:
        return None
    kvp = (f"root_hash={m['root']},salt={m['salt']},data_blocks={m['blocks']},"
           f"data_block_size={m['dbs']},hash_block_size={m['hbs']}")
    return kvp, m.group(0)


def is_default_template(lr) -> bool:
    from builder.recipe import Cmdline
    return lr.recipe.cmdline.template == Cmdline().template


def compose_pods(lr, cfg: KataConfig, render=None) -> list[KataPod]:
    """One :class:`KataPod` per ``launch.kata.pod_cpus`` entry. ``render(kata_cmdline)`` renders
    the recipe's template (only when the recipe gives one)."""
    k = lr.recipe.launch.kata
    release, host = release_of(lr), host_facts(lr)
    out = []
    for i, cpus in enumerate(k.pod_cpus):
        try:
            launch = compose(cfg, release, host, Pod(cpus=float(cpus)))
        except CCBuildError as e:
            if e.where == "--pod-cpus":
                raise CCBuildError(e.what, f"{lr.path.name}: launch.kata.pod_cpus[{i}]") from None
            if e.where in ("--host-cpus", "host"):
                raise CCBuildError(e.what, f"{lr.path.name}: launch.kata.host", e.hint) from None
            raise
        if lr.recipe.platform == "snp" and launch.protection != "snp":
            raise CCBuildError("the Kata configuration does not start an SNP guest",
                               cfg.where("hypervisor.qemu.sev_snp_guest"))
        if lr.recipe.platform == "tdx" and launch.protection != "tdx":
            raise CCBuildError("the Kata configuration does not start a TDX guest", cfg.source)
        cmdline = launch.append if render is None or is_default_template(lr) else \
            render(launch.append)
        out.append(KataPod(cpus, launch, cmdline))
    return out


def rootfs_variables(fmt: str, kernel_verity_params: str) -> dict[str, str]:
    """The template variables a rootfs build gives (builder.stages.rootfs
    ``Rootfs.cmdline_variables``), from its format and ``kernel_verity_params``."""
    cfg = parse_kernel_verity_params(kernel_verity_params)
    sectors = cfg.data_blocks * cfg.data_block_size // 512
    dm = (f'dm-mod.create="dm-verity,,,ro,0 {sectors} verity 1 {DATA_DEV} {HASH_DEV} '
          f'{cfg.data_block_size} {cfg.hash_block_size} {cfg.data_blocks} 0 sha256 '
          f'{cfg.root_hash} {cfg.salt}"')
    return {"verity_params": f"{dm} root=/dev/dm-0 rootfstype={fmt} ro",
            "kata_verity_params": kernel_verity_params, "root_hash": cfg.root_hash,
            "verity_salt": cfg.salt}


def kata_pods(lr, rootfs_format: str | None, kernel_verity_params: str,
              variables: dict[str, str]) -> list[KataPod]:
    """The recipe's Kata configuration completed with the build (``rootfs_format`` None: an
    initrd boot), composed once per pod CPU limit, each with its measured command line
    (``variables``: the template's other variables)."""
    from builder.stages.cmdline import render_cmdline
    cfg = read_config(lr)
    image_file = "rootfs.img" if rootfs_format is not None else "initrd.img"
    cfg = completed(cfg, image_file, rootfs_format, kernel_verity_params)

    def render(append: str) -> str:
        return render_cmdline(lr.recipe.cmdline, {**variables, "kata_cmdline": append})
    return compose_pods(lr, cfg, render)
