"""runtime-rs (``src/runtime-rs``, the Rust shim) with QEMU: the kernel command line only.

Read from kata-containers/kata-containers at the tags in :mod:`builder.kata.versions` (3.31.0
cec98e0d..., 3.32.0 337b6002..., 4.0.0 cf82bb35..., 4.1.0 ddcb1ad8...). runtime-rs composes a
different string from the Go runtime's, in a different order: no amd64 parameter list, no
``quiet``/``debug``, no ``nr_cpus``, one ``console=hvc0`` at the very end, the agent's parameters
sorted by key (a ``BTreeMap``) and always ``agent.cdh_api_timeout`` (its default is 50000 ms).
The launch shape of runtime-rs is not modelled (``ccbuild kata launch --runtime rs`` is refused).
"""

from __future__ import annotations

from builder.errors import CCBuildError
from builder.kata.config import KataConfig
from builder.kata.go_runtime import HostFacts, parse_kernel_verity_params
from builder.kata.versions import KataRelease

Param = tuple[str, str]

VSOCK_LOGS_PORT = "1025"                  # hypervisor/src/kernel_param.rs
DEFAULT_AGENT_DBG_CONSOLE_PORT = "1026"   # kata-types/src/config/default.rs
DEFAULT_CDH_API_TIMEOUT_MS = 50_000       # kata-types/src/config/agent.rs default_cdh_api_timeout_ms
DEFAULT_BLOCK_DEVICE_TYPE = "virtio-blk-pci"
ROOTFS_DRIVERS_BLK = ("virtio-blk-pci", "virtio-blk-ccw", "virtio-blk-mmio")
ROOTFS_DRIVER_PMEM = "virtio-pmem"


def param_to_string(p: Param, key: str) -> str:
    """``Param::to_string`` (hypervisor/src/kernel_param.rs): an empty key is an error."""
    k, v = p
    if not k:
        raise CCBuildError(f"empty kernel parameter key in {v!r}", key)
    return k if not v else f"{k}={v}"


def split_kernel_params(s: str) -> list[str]:
    """``split_kernel_params`` (hypervisor/src/kernel_param.rs): split on spaces outside double
    quotes, each piece trimmed."""
    out, cur, in_quote = [], [], False
    for c in s:
        if c == '"':
            in_quote = not in_quote
            cur.append(c)
            continue
        if c == " " and not in_quote:
            t = "".join(cur).strip()
            if t:
                out.append(t)
            cur = []
            continue
        cur.append(c)
    t = "".join(cur).strip()
    if t:
        out.append(t)
    return out


def kernel_params_from_string(s: str) -> list[Param]:
    """``KernelParams::from_string``."""
    out: list[Param] = []
    for p in split_kernel_params(s):
        k, sep, v = p.partition("=")
        out.append((k, v if sep else ""))
    return out


def kernel_params_new(debug: bool) -> list[Param]:
    """``KernelParams::new(debug)``: the fixed head of every runtime-rs command line."""
    params = [("reboot", "k"), ("panic", "1"), ("systemd.unit", "kata-containers.target"),
              ("systemd.mask", "systemd-networkd.service"), ("systemd.mask", "systemd-networkd.socket")]
    if debug:
        params.append(("agent.log_vport", VSOCK_LOGS_PORT))
    return params


def new_rootfs_kernel_params(kernel_verity_params: str, rootfs_driver: str, rootfs_type: str,
                             use_dax: bool) -> list[Param]:
    """``KernelParams::new_rootfs_kernel_params`` (hypervisor/src/kernel_param.rs)."""
    key = "hypervisor.qemu.rootfs_type"
    flags_blk = {"ext4": "data=ordered,errors=remount-ro ro", "xfs": "ro", "erofs": "ro"}
    flags_dax = {"ext4": "dax,data=ordered,errors=remount-ro ro", "xfs": "dax ro", "erofs": "dax ro"}
    if rootfs_driver == ROOTFS_DRIVER_PMEM:
        root, table = "/dev/pmem0p1", (flags_dax if use_dax else flags_blk)
        devs = ("/dev/pmem0p1", "/dev/pmem0p2")
    elif rootfs_driver in ROOTFS_DRIVERS_BLK:
        root, table, devs = "/dev/vda1", flags_blk, ("/dev/vda1", "/dev/vda2")
    else:
        raise CCBuildError(f"unsupported vm_rootfs_driver {rootfs_driver!r}",
                           "hypervisor.qemu.vm_rootfs_driver")
    if rootfs_type not in table:
        raise CCBuildError(f"unsupported rootfs_type {rootfs_type!r}", key,
                           "runtime-rs knows ext4, xfs, erofs")
    params = [("root", root), ("rootflags", table[rootfs_type]), ("rootfstype", rootfs_type)]
    cfg = parse_kernel_verity_params(kernel_verity_params, "hypervisor.qemu.kernel_verity_params")
    if cfg is None:
        return params
    sectors = (cfg.data_block_size // 512) * cfg.data_blocks
    cmd = (f"dm-verity,,,ro,0 {sectors} verity 1 {devs[0]} {devs[1]} {cfg.data_block_size} "
           f"{cfg.hash_block_size} {cfg.data_blocks} 0 sha256 {cfg.root_hash} {cfg.salt}")
    params = [p for p in params if p[0] not in ("root", "rootflags", "rootfstype")]
    return params + [("dm-mod.create", f'"{cmd}"'), ("root", "/dev/dm-0"),
                     ("rootflags", flags_blk[rootfs_type]), ("rootfstype", rootfs_type)]


def get_agent_kernel_params(cfg: KataConfig, release: KataRelease) -> list[Param]:
    """``TomlConfig::get_agent_kernel_params`` (kata-types/src/config/mod.rs): a BTreeMap, so the
    parameters come out sorted by key. ``agent.visible_cdi_devices`` from 3.32.0."""
    if cfg.agent_mem_agent_enable:
        raise CCBuildError("the memory agent's parameters are not modelled",
                           "agent.kata.mem_agent.enable")
    kv: dict[str, str] = {}
    if cfg.agent_debug:
        kv["agent.log"] = "debug"
    if cfg.agent_tracing:
        kv["agent.trace"] = "true"
    if cfg.agent_container_pipe_size > 0:
        kv["agent.container_pipe_size"] = str(cfg.agent_container_pipe_size)
    if cfg.agent_launch_process_timeout > 0:
        kv["agent.launch_process_timeout"] = str(cfg.agent_launch_process_timeout)
    ms = DEFAULT_CDH_API_TIMEOUT_MS if cfg.agent_cdh_api_timeout_ms is None else cfg.agent_cdh_api_timeout_ms
    if ms > 0:
        kv["agent.cdh_api_timeout"] = str(ms // 1000)
    if cfg.agent_debug_console:
        kv["agent.debug_console"] = ""
        kv["agent.debug_console_vport"] = DEFAULT_AGENT_DBG_CONSOLE_PORT
    if cfg.agent_visible_cdi_devices and release.at_least(3, 32):
        kv["agent.visible_cdi_devices"] = "true"
    return sorted(kv.items(), key=lambda p: p[0].encode())


def kernel_cmdline(cfg: KataConfig, release: KataRelease, host: HostFacts = HostFacts()) -> str:
    """``Kernel::new`` (hypervisor/src/qemu/cmdline_generator.rs) after ``update_agent_kernel_params``
    (runtimes/src/manager.rs, agent parameters put before the TOML ``kernel_params``), then
    ``QemuCmdLine::add_console`` (``console=hvc0``). FIPS is not read by runtime-rs."""
    try:
        return _kernel_cmdline(cfg, release)
    except CCBuildError as e:
        if e.where and e.where.startswith(("hypervisor.", "agent.")):
            raise CCBuildError(e.what, cfg.where(e.where), e.hint) from None
        raise


def _kernel_cmdline(cfg: KataConfig, release: KataRelease) -> str:
    if cfg.image and cfg.initrd:
        raise CCBuildError("image and initrd are both set", "hypervisor.qemu.initrd")
    params = kernel_params_new(cfg.enable_debug)
    if not cfg.initrd:
        params += new_rootfs_kernel_params(cfg.kernel_verity_params,
                                           cfg.vm_rootfs_driver or DEFAULT_BLOCK_DEVICE_TYPE,
                                           cfg.rootfs_type or "ext4", True)
    agent = [param_to_string(p, "agent.kata") for p in get_agent_kernel_params(cfg, release)]
    boot_params = " ".join(agent + ([cfg.kernel_params] if cfg.kernel_params else []))
    params += kernel_params_from_string(boot_params)
    params += [("selinux", "0" if cfg.disable_guest_selinux else "1")]
    if release.at_least(4, 0):
        for e in cfg.guest_extension_images:
            params += kernel_params_from_string(f"kata.extension.{e.name}.verity_params={e.verity_params}")
    params.append(("console", "hvc0"))
    return " ".join(param_to_string(p, "hypervisor.qemu.kernel_params") for p in params)
