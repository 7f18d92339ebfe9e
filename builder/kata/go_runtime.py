"""The Go Kata runtime (``src/runtime``, containerd-shim-kata-v2) with QEMU on x86-64: the kernel
command line it passes to ``-append`` and the shape of the confidential launch.

Read from kata-containers/kata-containers at the tags in :mod:`builder.kata.versions`:
3.31.0 (cec98e0d976bbf4cae016298ffea269f57294264), 3.32.0 (337b6002681479fb6a605ca8a7a1138e81b6098c),
4.0.0 (cf82bb35c80320178bf7570252fe75d6fb263209), 4.1.0 (ddcb1ad8d23cbb4323f86c209f132b89592902df).
Every function below is named after the Kata function it models; where a function did not change
between these tags its docstring says so. What changed (see docs/kata.md):

* 3.31.0 -> 3.32.0: ``qemu.go`` ``kernelParameters`` stops adding ``nr_cpus=`` for confidential
  guests, ``qemu_arch_base.go`` ``cpuTopology`` drops ``sockets=``/``maxcpus=`` from ``-smp`` for
  them (no CPU hotplug), and ``kata_agent.go`` ``KataAgentKernelParams`` learns
  ``agent.visible_cdi_devices`` (``[agent.kata] visible_cdi_devices``).
* 3.32.0 -> 4.0.0: ``kernelParameters`` appends one ``kata.extension.<name>.verity_params`` per
  ``[[hypervisor.qemu.guest_extension_images]]`` after the configured parameters.
* 4.0.0 -> 4.1.0: nothing that shapes the command line or the launch.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from dataclasses import dataclass, field

from builder.errors import CCBuildError
from builder.kata.config import KataConfig
from builder.kata.versions import KataRelease

# A Param is (key, value), as virtcontainers' ``Param{Key, Value}``.
Param = tuple[str, str]

GOVMM_MAX_VCPUS = 240              # src/runtime/pkg/govmm/vmm_amd64.go MaxVCPUs()
MIN_HYPERVISOR_MEMORY = 256        # virtcontainers/hypervisor.go MinHypervisorMemory
DEFAULT_MEM_SIZE = 2048            # katautils/config-settings.go.in defaultMemSize
DEFAULT_VCPU_COUNT = 1             # katautils/config-settings.go.in defaultVCPUCount
SYSTEMD_UNIT_NAME = "kata-containers.target"   # katautils/config-settings.go.in systemdUnitName
DEBUG_CONSOLE_VPORT = "1026"       # kata_agent.go kernelParamDebugConsoleVPortValue
BLOCK_DRIVERS = ("virtio-scsi", "virtio-blk", "virtio-mmio", "nvdimm", "virtio-blk-ccw")

# qemu_amd64.go `var kernelParams` (unchanged 3.31.0..4.1.0).
AMD64_KERNEL_PARAMS: tuple[Param, ...] = (
    ("tsc", "reliable"), ("no_timer_check", ""), ("rcupdate.rcu_expedited", "1"),
    ("i8042.direct", "1"), ("i8042.dumbkbd", "1"), ("i8042.nopnp", "1"), ("i8042.noaux", "1"),
    ("noreplace-smp", ""), ("reboot", "k"), ("cryptomgr.notests", ""), ("net.ifnames", "0"),
    ("pci", "lastbus=0"),
)
# qemu_arch_base.go kernelParamsNonDebug / kernelParamsSystemdNonDebug / kernelParamsDebug /
# kernelParamsSystemdDebug.
KERNEL_PARAMS_NON_DEBUG: tuple[Param, ...] = (("quiet", ""),)
KERNEL_PARAMS_SYSTEMD_NON_DEBUG: tuple[Param, ...] = (("systemd.show_status", "false"),)
KERNEL_PARAMS_DEBUG: tuple[Param, ...] = (("debug", ""),)
KERNEL_PARAMS_SYSTEMD_DEBUG: tuple[Param, ...] = (("systemd.show_status", "true"),
                                                  ("systemd.log_level", "debug"))
# qemu.go defaultKernelParameters.
DEFAULT_KERNEL_PARAMETERS: tuple[Param, ...] = (("panic", "1"),)


def f32(x: float) -> float:
    """``x`` rounded to an IEEE binary32, as Go's float32 arithmetic does."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


# --- virtcontainers/hypervisor.go -------------------------------------------------------------

def serialize_params(params: list[Param], delim: str = "=") -> list[str]:
    """``SerializeParams`` (virtcontainers/hypervisor.go, unchanged 3.31.0..4.1.0): ``key=value``,
    a key alone when the value is empty, the value alone when the key is empty."""
    out: list[str] = []
    for k, v in params:
        if not k and not v:
            continue
        if not k:
            out.append(v)
        elif not v:
            out.append(k)
        elif not delim:
            out += [k, v]
        else:
            out.append(f"{k}{delim}{v}")
    return out


def deserialize_params(fields: list[str]) -> list[Param]:
    """``DeserializeParams`` (virtcontainers/hypervisor.go): split each field at its first ``=``."""
    out: list[Param] = []
    for f in fields:
        if not f:
            continue
        k, sep, v = f.partition("=")
        out.append((k, v if sep else ""))
    return out


def kernel_param_fields(s: str) -> list[str]:
    """``KernelParamFields`` (virtcontainers/hypervisor.go, 3.31.0..4.1.0): split on ASCII spaces
    that are outside double quotes; each field trimmed of whitespace (Go ``strings.TrimSpace``)."""
    out: list[str] = []
    start, in_quote = 0, False
    for i, c in enumerate(s):
        if c == '"':
            in_quote = not in_quote
        elif c == " " and not in_quote:
            p = s[start:i].strip()
            if p:
                out.append(p)
            start = i + 1
    p = s[start:].strip()
    if p:
        out.append(p)
    return out


@dataclass(frozen=True)
class VerityConfig:
    root_hash: str
    salt: str
    data_blocks: int
    data_block_size: int
    hash_block_size: int


VERITY_BLOCK_SIZE_BYTES = 512
_U64 = re.compile(r"\+?[0-9]+")  # strconv.ParseUint base 10 (a sign is refused below)


def parse_kernel_verity_params(params: str, key: str = "kernel_verity_params") -> VerityConfig | None:
    """``ParseKernelVerityParams`` (virtcontainers/hypervisor.go, unchanged 3.31.0..4.1.0):
    ``root_hash=...,salt=...,data_blocks=N,data_block_size=N,hash_block_size=N``; None when
    blank. Errors name ``key`` (the TOML key)."""
    if not params.strip():
        return None
    values: dict[str, str] = {}
    for f in params.split(","):
        f = f.strip()
        if not f:
            continue
        k, sep, v = f.partition("=")
        if not sep:
            raise CCBuildError(f"invalid {key} entry {f!r} (want name=value)", key)
        values[k] = v
    root_hash, salt = values.get("root_hash", ""), values.get("salt", "")
    if not root_hash:
        raise CCBuildError(f"{key} has no root_hash", key)

    def uint(name: str) -> int:
        v = values.get(name, "")
        if not v:
            raise CCBuildError(f"{key} has no {name}", key)
        if not v.isascii() or not v.isdigit():
            raise CCBuildError(f"invalid {key} {name} {v!r} (want a decimal integer)", key)
        n = int(v)
        if n >= 1 << 64:
            raise CCBuildError(f"invalid {key} {name} {v!r} (out of range for uint64)", key)
        return n

    data_blocks = uint("data_blocks")
    data_block_size = uint("data_block_size")
    hash_block_size = uint("hash_block_size")
    if not salt:
        raise CCBuildError(f"{key} has no salt", key)
    for name, n in (("data_blocks", data_blocks), ("data_block_size", data_block_size),
                    ("hash_block_size", hash_block_size)):
        if n == 0:
            raise CCBuildError(f"invalid {key} {name}: must be non-zero", key)
    for name, n in (("data_block_size", data_block_size), ("hash_block_size", hash_block_size)):
        if n % VERITY_BLOCK_SIZE_BYTES:
            raise CCBuildError(f"invalid {key} {name}: must be a multiple of "
                               f"{VERITY_BLOCK_SIZE_BYTES}", key)
    return VerityConfig(root_hash, salt, data_blocks, data_block_size, hash_block_size)


ROOTFS_TYPES = ("ext4", "xfs", "erofs")


def _unsupported_rootfs(rootfstype: str) -> CCBuildError:
    return CCBuildError(f"unsupported rootfs_type {rootfstype!r}", "hypervisor.qemu.rootfs_type",
                        f"Kata knows {', '.join(ROOTFS_TYPES)}")


def kernel_verity_root_flags(rootfstype: str) -> str:
    """``kernelVerityRootFlags`` (virtcontainers/hypervisor.go)."""
    rootfstype = rootfstype or "ext4"
    if rootfstype in ("erofs", "xfs"):
        return "ro"
    if rootfstype == "ext4":
        return "data=ordered,errors=remount-ro ro"
    raise _unsupported_rootfs(rootfstype)


def get_kernel_root_params(rootfstype: str, disable_nvdimm: bool, dax: bool,
                           kernel_verity_params: str) -> list[Param]:
    """``GetKernelRootParams`` (virtcontainers/hypervisor.go, unchanged 3.31.0..4.1.0): the root
    device, its flags and type; with ``kernel_verity_params`` a ``dm-mod.create`` verity target over
    partition 1 (data) and partition 2 (hash tree) and ``root=/dev/dm-0``."""
    cfg = parse_kernel_verity_params(kernel_verity_params, "hypervisor.qemu.kernel_verity_params")
    rootfstype = rootfstype or "ext4"
    if cfg is not None:
        root_dev, hash_dev = ("/dev/vda1", "/dev/vda2") if disable_nvdimm else \
                             ("/dev/pmem0p1", "/dev/pmem0p2")
        sectors = (cfg.data_block_size // 512) * cfg.data_blocks
        cmd = (f"dm-verity,,,ro,0 {sectors} verity 1 {root_dev} {hash_dev} {cfg.data_block_size} "
               f"{cfg.hash_block_size} {cfg.data_blocks} 0 sha256 {cfg.root_hash} {cfg.salt}")
        flags = kernel_verity_root_flags(rootfstype)
        return [("dm-mod.create", f'"{cmd}"'), ("root", "/dev/dm-0"), ("rootflags", flags),
                ("rootfstype", rootfstype)]
    if disable_nvdimm and dax:
        raise CCBuildError("Virtio-Blk does not support DAX", "hypervisor.qemu.disable_image_nvdimm")
    params: list[Param] = [("root", "/dev/vda1" if disable_nvdimm else "/dev/pmem0p1")]
    if rootfstype in ("erofs", "xfs"):
        params.append(("rootflags", "dax ro" if dax else "ro"))
    elif rootfstype == "ext4":
        params.append(("rootflags", "dax,data=ordered,errors=remount-ro ro" if dax
                       else "data=ordered,errors=remount-ro ro"))
    else:
        raise _unsupported_rootfs(rootfstype)
    params.append(("rootfstype", rootfstype))
    return params


# --- virtcontainers/qemu_arch_base.go, qemu_amd64.go -------------------------------------------

def append_console(legacy_serial: bool) -> list[Param]:
    """The kernel parameters ``appendConsole`` (qemu_arch_base.go, unchanged 3.31.0..4.1.0) adds:
    ``console=hvc0 console=hvc1`` (virtio-console), ``console=ttyS0`` with ``use_legacy_serial``."""
    return [("console", "ttyS0")] if legacy_serial else [("console", "hvc0"), ("console", "hvc1")]


@dataclass
class ArchParams:
    """The three parameter lists of a ``qemuArchBase`` (kernelParams, kernelParamsNonDebug,
    kernelParamsDebug) as ``newQemuArch``, ``handleImagePath`` and ``appendConsole`` leave them."""
    kernel_params: list[Param]
    non_debug: list[Param]
    debug: list[Param]


def new_qemu_arch(*, iommu: bool, image: bool, rootfs_type: str, kernel_verity_params: str,
                  confidential: bool, disable_image_nvdimm: bool) -> ArchParams:
    """The kernel parameter lists of ``newQemuArch`` (qemu_amd64.go, unchanged 3.31.0..4.1.0):
    the amd64 list, ``intel_iommu=on iommu=pt`` with ``enable_iommu``, then ``handleImagePath``
    (qemu_arch_base.go): root parameters and the systemd show_status/log_level parameters when the
    guest boots an image. A confidential guest never uses NVDIMM (``disableNvdimm`` forced)."""
    arch = ArchParams(list(AMD64_KERNEL_PARAMS), list(KERNEL_PARAMS_NON_DEBUG),
                      list(KERNEL_PARAMS_DEBUG))
    if iommu:
        arch.kernel_params += [("intel_iommu", "on"), ("iommu", "pt")]
    disable_nvdimm = disable_image_nvdimm or confidential
    if image:  # handleImagePath
        root = get_kernel_root_params(rootfs_type, disable_nvdimm, False, kernel_verity_params)
        if not disable_nvdimm:
            root = get_kernel_root_params(rootfs_type, disable_nvdimm, True, kernel_verity_params)
        arch.kernel_params += root
        arch.non_debug += KERNEL_PARAMS_SYSTEMD_NON_DEBUG
        arch.debug += KERNEL_PARAMS_SYSTEMD_DEBUG
    return arch


def arch_kernel_parameters(arch: ArchParams, debug: bool) -> list[Param]:
    """``qemuArchBase.kernelParameters(debug)`` (qemu_arch_base.go)."""
    return list(arch.kernel_params) + list(arch.debug if debug else arch.non_debug)


@dataclass(frozen=True)
class SMP:
    cpus: int
    sockets: int
    cores: int
    threads: int
    max_cpus: int

    def qemu_arg(self) -> str:
        """``appendCPUs`` (src/runtime/pkg/govmm/qemu/qemu.go): ``-smp`` value, zero fields
        omitted."""
        parts = [str(self.cpus)]
        if self.cores:
            parts.append(f"cores={self.cores}")
        if self.threads:
            parts.append(f"threads={self.threads}")
        if self.sockets:
            parts.append(f"sockets={self.sockets}")
        if self.max_cpus:
            if self.max_cpus < self.cpus:
                raise CCBuildError(f"MaxCPUs {self.max_cpus} must be equal to or greater than CPUs "
                                   f"{self.cpus}")
            parts.append(f"maxcpus={self.max_cpus}")
        return ",".join(parts)


def cpu_topology(vcpus: int, maxvcpus: int, confidential: bool, release: KataRelease) -> SMP:
    """``qemuArchBase.cpuTopology`` (qemu_arch_base.go) for one NUMA node. 3.31.0:
    ``{CPUs: vcpus, Sockets: maxvcpus, Cores: 1, Threads: 1, MaxCPUs: maxvcpus}`` for every guest;
    3.32.0 and later zero Sockets and MaxCPUs for a confidential guest (no CPU hotplug)."""
    smp = SMP(vcpus, maxvcpus, 1, 1, maxvcpus)
    if confidential and release.at_least(3, 32):
        smp = SMP(vcpus, 0, 1, 1, 0)
    return smp


def cpu_model(protection: str, snp_guest: bool) -> str:
    """``qemuAmd64.cpuModel`` (qemu_amd64.go, unchanged 3.31.0..4.1.0): ``EPYC-v4`` when the host
    offers SNP and the configuration asks for an SNP guest, else ``host``."""
    return "EPYC-v4" if protection == "snp" and snp_guest else "host"


def available_guest_protection(host: "HostFacts") -> str:
    """``availableGuestProtection`` (hypervisor_linux_amd64.go): ``tdx`` when kvm_intel's ``tdx``
    parameter is Y, else ``snp`` when kvm_amd's ``sev_snp`` is Y, else none."""
    return host.tee if host.tee in ("tdx", "snp") else "none"


def enable_protection(host: "HostFacts", snp_guest: bool) -> str:
    """``qemuAmd64.enableProtection`` (qemu_amd64.go): SNP downgraded to SEV when the
    configuration does not ask for an SNP guest; no protection is an error for a confidential
    guest."""
    p = available_guest_protection(host)
    if p == "snp" and not snp_guest:
        p = "sev"
    if p == "none":
        raise CCBuildError("Kata refuses a confidential guest on a host without TDX or SEV-SNP "
                           "(kvm_amd sev_snp off)", "host", "use --snp-host or --host-tee tdx")
    return p


# --- virtcontainers/kata_agent.go, pkg/katautils ---------------------------------------------

def kata_agent_kernel_params(cfg: KataConfig, release: KataRelease) -> list[Param]:
    """``KataAgentKernelParams`` (virtcontainers/kata_agent.go). ``agent.container_pipe_size``
    comes from an annotation only, never from the TOML, so it is not produced here.
    ``agent.visible_cdi_devices`` exists from 3.32.0 (3.31.0's TOML decoder ignores the key)."""
    params: list[Param] = []
    if cfg.agent_debug:
        params.append(("agent.log", "debug"))
    if cfg.agent_tracing:
        params.append(("agent.trace", "true"))
    if cfg.agent_debug_console:
        params += [("agent.debug_console", ""), ("agent.debug_console_vport", DEBUG_CONSOLE_VPORT)]
    if cfg.agent_cdh_api_timeout > 0:
        params.append(("agent.cdh_api_timeout", str(cfg.agent_cdh_api_timeout)))
    if cfg.agent_launch_process_timeout > 0:
        params.append(("agent.launch_process_timeout", str(cfg.agent_launch_process_timeout)))
    if cfg.agent_visible_cdi_devices and release.at_least(3, 32):
        params.append(("agent.visible_cdi_devices", "true"))
    return params


def get_kernel_params(need_systemd: bool) -> list[Param]:
    """``getKernelParams`` (pkg/katautils/create.go): the systemd unit and masks, image only
    (``needSystemd``: an image is configured)."""
    if not need_systemd:
        return []
    return [("systemd.unit", SYSTEMD_UNIT_NAME), ("systemd.mask", "systemd-networkd.service"),
            ("systemd.mask", "systemd-networkd.socket")]


def _add_kernel_param(params: list[Param], p: Param, key: str) -> None:
    """``HypervisorConfig.AddKernelParam``: an empty key is an error."""
    if not p[0]:
        raise CCBuildError(f"empty kernel parameter key in {p[1]!r}", key,
                           "Kata refuses a parameter that starts with '='")
    params.append(p)


def set_kernel_params(cfg: KataConfig, release: KataRelease, image: bool) -> list[Param]:
    """``SetKernelParams`` (pkg/katautils/config.go, unchanged 3.31.0..4.1.0): the systemd
    parameters (image only), ``scsi_mod.scan=none`` for virtio-scsi, the agent's parameters, then
    the TOML ``kernel_params`` (``DeserializeParams(KernelParamFields(...))``), so the configured
    ones come last and win."""
    key = "hypervisor.qemu.kernel_params"
    user = deserialize_params(kernel_param_fields(cfg.kernel_params))
    out: list[Param] = []
    for p in get_kernel_params(image):
        _add_kernel_param(out, p, key)
    if block_device_driver(cfg) == "virtio-scsi":
        _add_kernel_param(out, ("scsi_mod.scan", "none"), key)
    for p in kata_agent_kernel_params(cfg, release):
        _add_kernel_param(out, p, key)
    for p in user:
        _add_kernel_param(out, p, key)
    return out


def block_device_driver(cfg: KataConfig) -> str:
    """``hypervisor.blockDeviceDriver`` (pkg/katautils/config.go): default virtio-scsi
    (``DEFBLOCKSTORAGEDRIVER_QEMU``), one of Kata's drivers, else an error."""
    d = cfg.block_device_driver or "virtio-scsi"
    if d not in BLOCK_DRIVERS:
        raise CCBuildError(f"invalid block_device_driver {d!r}", "hypervisor.qemu.block_device_driver",
                           f"Kata knows {', '.join(BLOCK_DRIVERS)}")
    return d


def check_for_fips(params: list[Param], fips: bool) -> list[Param]:
    """``checkForFIPS`` (pkg/katautils/create.go): ``fips=1`` appended when the host's
    /proc/sys/crypto/fips_enabled is 1."""
    return params + [("fips", "1")] if fips else params


def kernel_parameters(arch_params: list[Param], *, confidential: bool, max_vcpus: int,
                      disable_guest_selinux: bool, config_params: list[Param],
                      release: KataRelease,
                      extension_params: list[Param] = ()) -> str:
    """``qemu.kernelParameters`` (virtcontainers/qemu.go): the arch parameters (debug or not),
    ``panic=1``, ``nr_cpus=<DefaultMaxVCPUs>`` (every guest in 3.31.0; only non-confidential ones
    from 3.32.0), ``selinux=0|1``, the configuration's parameters and (4.0.0+) one
    ``kata.extension.<name>.verity_params`` per guest extension image."""
    params = list(arch_params) + list(DEFAULT_KERNEL_PARAMETERS)
    if not confidential or not release.at_least(3, 32):
        params.append(("nr_cpus", str(max_vcpus)))
    params.append(("selinux", "0" if disable_guest_selinux else "1"))
    params += config_params
    if release.at_least(4, 0):
        params += list(extension_params)
    return " ".join(serialize_params(params, "="))


_EXT_NAME = re.compile(r"[A-Za-z0-9_-]+")


def guest_extension_params(cfg: KataConfig, release: KataRelease) -> list[Param]:
    """``toGuestExtensionImages`` (pkg/katautils/config.go, 4.0.0+) validation and the parameters
    ``kernelParameters`` emits for them; before 4.0.0 the key is unknown to Kata and ignored."""
    if not release.at_least(4, 0):
        return []
    out: list[Param] = []
    for i, e in enumerate(cfg.guest_extension_images):
        key = f"hypervisor.qemu.guest_extension_images[{i}]"
        if not e.name:
            raise CCBuildError(f"{key} has no name", key)
        if not _EXT_NAME.fullmatch(e.name) or not e.name.isascii():
            raise CCBuildError(f"{key}.name {e.name!r} is invalid", key,
                               "only ASCII letters, digits, '-' and '_'")
        if e.verity_params.strip():
            parse_kernel_verity_params(e.verity_params, f"{key}.verity_params")
        out.append((f"kata.extension.{e.name}.verity_params", e.verity_params))
    return out


# --- host facts, pod sizing, launch shape ----------------------------------------------------

@dataclass(frozen=True)
class HostFacts:
    """What the runtime reads from the host. ``tee``: ``snp`` (kvm_amd ``sev_snp`` = Y), ``tdx``
    (kvm_intel ``tdx`` = Y) or ``none``; ``fips``: /proc/sys/crypto/fips_enabled = 1;
    ``host_cpus``: the number of ``processor`` lines in /proc/cpuinfo (needed only where Kata
    clamps to it); ``cbitpos``: CPUID 0x8000001F EBX[5:0] (51 on EPYC 7003/9004)."""
    tee: str = "snp"
    fips: bool = False
    host_cpus: int | None = None
    cbitpos: int = 51


@dataclass(frozen=True)
class Pod:
    """The pod's limits, as the sandbox annotations give them: CPUs (quota/period, may be
    fractional) and memory in MiB."""
    cpus: float = 0.0
    memory_mib: int = 0


@dataclass
class Launch:
    runtime: str
    kata_version: str
    kata_commit: str
    protection: str
    mode: str                         # image | initrd
    append: str
    vcpus: int
    smp: str
    cpu: str
    memory: str
    machine: str
    kernel: str
    firmware: str
    image: str | None
    initrd: str | None
    guest_object: dict
    guest_object_arg: str
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {k: getattr(self, k) for k in (
            "runtime", "kata_version", "kata_commit", "protection", "mode", "append", "vcpus",
            "smp", "cpu", "memory", "machine", "kernel", "firmware", "image", "initrd",
            "guest_object", "guest_object_arg", "notes")}


def _host_cpus(host: HostFacts, why: str) -> int:
    if host.host_cpus is None:
        raise CCBuildError(f"the host's CPU count is needed ({why})", "--host-cpus",
                           "Kata clamps to /proc/cpuinfo; give it")
    return host.host_cpus


def default_vcpus(cfg: KataConfig, host: HostFacts) -> float:
    """``hypervisor.defaultVCPUs`` (pkg/katautils/config.go): a negative value or one above the
    host's CPU count (capped at 240) becomes that count; 0 becomes 1."""
    n = cfg.default_vcpus
    if n == 0:
        return float(DEFAULT_VCPU_COUNT)
    if n < 0 or n > 1:  # only a value above 1 can exceed a real host's CPU count
        cpus = min(_host_cpus(host, f"default_vcpus = {n:g}"), GOVMM_MAX_VCPUS)
        if n < 0 or n > cpus:
            return float(cpus)
    return f32(n)


def default_max_vcpus(cfg: KataConfig, host: HostFacts) -> int:
    """``hypervisor.defaultMaxVCPUs`` (pkg/katautils/config.go): 0 or at least the host's CPU
    count becomes the host's CPU count, capped at govmm's 240."""
    host_cpus = _host_cpus(host, "default_maxvcpus without static_sandbox_resource_mgmt")
    req = cfg.default_maxvcpus
    if req >= host_cpus or req == 0:
        req = host_cpus
    return min(req, GOVMM_MAX_VCPUS)


def default_mem_sz(cfg: KataConfig) -> int:
    """``hypervisor.defaultMemSz`` (pkg/katautils/config.go): below 256 MiB becomes 2048 MiB."""
    return DEFAULT_MEM_SIZE if cfg.default_memory < MIN_HYPERVISOR_MEMORY else cfg.default_memory


def sandbox_sizing(cfg: KataConfig, host: HostFacts, pod: Pod) -> tuple[int, int, int]:
    """(vCPUs, DefaultMaxVCPUs, memory MiB) at boot. ``SandboxConfig`` (pkg/oci/utils.go,
    unchanged 3.31.0..4.1.0) with ``static_sandbox_resource_mgmt`` adds the pod's CPUs and
    memory to the defaults and sets DefaultMaxVCPUs to ``NumVCPUs()`` (``RoundUpNumVCPUs``:
    ceil of the float32 sum)."""
    num = default_vcpus(cfg, host)
    mem = default_mem_sz(cfg)
    if cfg.static_sandbox_resource_mgmt:
        num = f32(num + f32(pod.cpus))
        mem = mem + pod.memory_mib
        vcpus = math.ceil(num)
        max_vcpus = vcpus
    else:
        vcpus = math.ceil(num)
        max_vcpus = None  # resolved only where it is used
    if vcpus > GOVMM_MAX_VCPUS:
        raise CCBuildError(f"{vcpus} vCPUs exceed govmm's maximum of {GOVMM_MAX_VCPUS}",
                           "--pod-cpus")
    if max_vcpus is None:
        max_vcpus = -1
    return vcpus, max_vcpus, mem


def snp_object(cfg: KataConfig, host: HostFacts, firmware: str,
               initdata_digest: bytes | None) -> tuple[dict, str]:
    """``qemuAmd64.appendProtectionDevice`` for SNP (qemu_amd64.go) and its ``-object`` rendering
    in govmm ``Object.QemuParams`` (pkg/govmm/qemu/qemu.go): id-block/id-auth only together,
    ``policy`` only when the TOML sets ``snp_guest_policy``, ``host-data`` = the initdata digest
    zero-padded or cut to 32 bytes, base64."""
    if bool(cfg.snp_id_block) != bool(cfg.snp_id_auth):
        which = "snp_id_block" if cfg.snp_id_block else "snp_id_auth"
        raise CCBuildError(f"{which} is set without its pair", f"hypervisor.qemu.{which}",
                           "Kata refuses an SNP ID block without its ID auth and the reverse")
    props: dict = {"qom-type": "sev-snp-guest", "id": "snp", "cbitpos": host.cbitpos,
                   "reduced-phys-bits": 1, "kernel-hashes": "on"}
    if cfg.snp_id_block:
        props["id-block"] = cfg.snp_id_block
        props["id-auth"] = cfg.snp_id_auth
    if cfg.snp_guest_policy is not None:
        props["policy"] = cfg.snp_guest_policy
    if initdata_digest:
        props["host-data"] = base64.b64encode(initdata_digest[:32].ljust(32, b"\0")).decode()
    arg = ",".join(["sev-snp-guest"] + [f"{k}={v}" for k, v in props.items() if k != "qom-type"])
    return props, arg


def tdx_object(cfg: KataConfig, initdata_digest: bytes | None) -> tuple[dict, str]:
    """``prepareTDXObject`` (pkg/govmm/qemu/qemu.go): a JSON ``-object`` with ``mrconfigid`` =
    the initdata digest zero-padded or cut to 48 bytes, base64 (absent without initdata). The
    quote-generation socket is not measured: a port from the TOML is vsock CID 2; port 0 is the
    host's QGS Unix socket when it exists, else vsock port 4050 (recorded as such)."""
    props: dict = {"qom-type": "tdx-guest", "id": "tdx"}
    if initdata_digest:
        props["mrconfigid"] = base64.b64encode(initdata_digest[:48].ljust(48, b"\0")).decode()
    if cfg.tdx_qgs_port:
        props["quote-generation-socket"] = {"type": "vsock", "cid": "2", "port": str(cfg.tdx_qgs_port)}
    else:
        props["quote-generation-socket"] = {"type": "vsock", "cid": "2", "port": "4050"}
    return props, json.dumps(props, separators=(",", ":"))


def check_config(cfg: KataConfig) -> None:
    """Refuse what the model does not cover and Kata would use to change the measured launch."""
    if not cfg.confidential_guest:
        raise CCBuildError("the model covers confidential guests only",
                           "hypervisor.qemu.confidential_guest", "set confidential_guest = true")
    if cfg.machine_type not in ("", "q35"):
        raise CCBuildError(f"machine_type {cfg.machine_type!r} is not modelled",
                           "hypervisor.qemu.machine_type", "the model covers q35")
    if cfg.enable_numa or cfg.numa_mapping:
        key = "enable_numa" if cfg.enable_numa else "numa_mapping"
        raise CCBuildError("guest NUMA changes -smp and is not modelled", f"hypervisor.qemu.{key}")
    if cfg.pflashes:
        raise CCBuildError("pflash images change the measured firmware and are not modelled",
                           "hypervisor.qemu.pflashes")
    if cfg.firmware_volume:
        raise CCBuildError("a separate firmware volume is not modelled",
                           "hypervisor.qemu.firmware_volume")
    if not cfg.kernel:
        raise CCBuildError("no kernel configured (Kata would use its build-time default path)",
                           "hypervisor.qemu.kernel")
    if not cfg.firmware:
        raise CCBuildError("no firmware configured (Kata would use its build-time default path)",
                           "hypervisor.qemu.firmware")
    if cfg.image and cfg.initrd:
        raise CCBuildError("image and initrd are both set (Kata: \"Image and initrd path cannot "
                           "be both set\")", "hypervisor.qemu.initrd")
    if not cfg.image and not cfg.initrd:
        raise CCBuildError("neither image nor initrd is set", "hypervisor.qemu.image")
    if block_device_driver(cfg) == "virtio-mmio":
        raise CCBuildError("Kata refuses virtio-mmio for confidential guests",
                           "hypervisor.qemu.block_device_driver")


def compose(cfg: KataConfig, release: KataRelease, host: HostFacts = HostFacts(),
            pod: Pod = Pod(), initdata_digest: bytes | None = None) -> Launch:
    """The kernel command line and launch shape the Go runtime produces for ``cfg``. Errors name
    the configuration file and the TOML key."""
    try:
        return _compose(cfg, release, host, pod, initdata_digest)
    except CCBuildError as e:
        if e.where and (e.where.startswith("hypervisor.") or e.where.startswith("agent.")
                        or e.where.startswith("runtime.")):
            raise CCBuildError(e.what, cfg.where(e.where), e.hint) from None
        raise


def _compose(cfg: KataConfig, release: KataRelease, host: HostFacts, pod: Pod,
             initdata_digest: bytes | None) -> Launch:
    check_config(cfg)
    image = bool(cfg.image)
    protection = enable_protection(host, cfg.sev_snp_guest)
    if protection == "sev":
        raise CCBuildError("an SEV (not SNP) guest is not modelled", "hypervisor.qemu.sev_snp_guest",
                           "set sev_snp_guest = true on an SNP host")
    vcpus, max_vcpus, mem = sandbox_sizing(cfg, host, pod)
    if max_vcpus < 0:
        max_vcpus = default_max_vcpus(cfg, host) if (
            not release.at_least(3, 32)) else max(vcpus, 1)
    arch = new_qemu_arch(iommu=cfg.enable_iommu, image=image, rootfs_type=cfg.rootfs_type,
                         kernel_verity_params=cfg.kernel_verity_params, confidential=True,
                         disable_image_nvdimm=cfg.disable_image_nvdimm)
    arch.kernel_params += append_console(cfg.use_legacy_serial)
    config_params = check_for_fips(set_kernel_params(cfg, release, image), host.fips)
    append = kernel_parameters(
        arch_kernel_parameters(arch, cfg.enable_debug), confidential=True, max_vcpus=max_vcpus,
        disable_guest_selinux=cfg.disable_guest_selinux, config_params=config_params,
        release=release, extension_params=guest_extension_params(cfg, release))
    smp = cpu_topology(vcpus, max_vcpus, True, release)
    features = ",".join(f.strip() for f in cfg.cpu_features.split(",") if f).strip(",")
    cpu = cpu_model(protection, cfg.sev_snp_guest) + "," + features
    if protection == "snp":
        obj, obj_arg = snp_object(cfg, host, cfg.firmware, initdata_digest)
    else:
        obj, obj_arg = tdx_object(cfg, initdata_digest)
    machine = ",".join(["q35", "accel=kvm", "kernel_irqchip=split",
                        f"confidential-guest-support={protection}"])
    notes = []
    if cfg.agent_visible_cdi_devices and not release.at_least(3, 32):
        notes.append("agent.kata.visible_cdi_devices is unknown to Kata 3.31.0 and has no effect")
    if cfg.guest_extension_images and not release.at_least(4, 0):
        notes.append("hypervisor.qemu.guest_extension_images is unknown to Kata before 4.0.0")
    if not cfg.tdx_qgs_port and protection == "tdx":
        notes.append("quote-generation-socket: the host's QGS Unix socket when it exists, else "
                     "vsock port 4050 (not measured)")
    return Launch(
        runtime="go", kata_version=release.tag, kata_commit=release.commit, protection=protection,
        mode="image" if image else "initrd", append=append, vcpus=vcpus, smp=smp.qemu_arg(),
        cpu=cpu, memory=f"{mem}M", machine=machine, kernel=cfg.kernel, firmware=cfg.firmware,
        image=cfg.image or None, initrd=cfg.initrd or None, guest_object=obj,
        guest_object_arg=obj_arg, notes=notes)
