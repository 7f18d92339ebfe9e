"""Reading a Kata configuration TOML (``configuration-qemu-snp.toml`` and friends) as a node has it.

The file is read through :func:`builder.inputs.read_regular` (regular file, at most 1 MiB), parsed
with :mod:`tomllib`, and the keys that shape the kernel command line or the launch are type-checked
here; errors are one line naming the file and the TOML key (``hypervisor.qemu.rootfs_type``). The
runtime modules decide what the values mean for a given Kata release; this module only knows the
key names and their TOML types, which are those of the Go runtime's ``src/runtime/pkg/katautils/
config.go`` (``type hypervisor``, ``type agent``, ``type runtime``) and of runtime-rs's
``src/libs/kata-types/src/config/`` at the releases in :mod:`builder.kata.versions`.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from builder.errors import CCBuildError
from builder.inputs import decode_utf8, read_regular

KIND = "kata configuration"
LIMIT = 1 << 20

_TOML_POS = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")
_TOML_EOF = re.compile(r"^(?P<msg>.*?)\s*\(at end of document\)$")


@dataclass(frozen=True)
class ExtensionImage:
    """One ``[[hypervisor.qemu.guest_extension_images]]`` entry (Kata 4.x)."""
    name: str
    path: str
    verity_params: str


@dataclass(frozen=True)
class KataConfig:
    """The values of a Kata configuration that the model reads, with ``source`` (the file as shown
    in messages). Absent keys hold the value Kata's TOML decoder gives an absent key (zero values),
    not the template's default: Kata itself applies its defaults after decoding."""
    source: str
    # [hypervisor.qemu]
    kernel: str = ""
    image: str = ""
    initrd: str = ""
    firmware: str = ""
    firmware_volume: str = ""
    machine_type: str = ""
    rootfs_type: str = ""
    kernel_params: str = ""
    kernel_verity_params: str = ""
    confidential_guest: bool = False
    sev_snp_guest: bool = False
    snp_id_block: str = ""
    snp_id_auth: str = ""
    snp_guest_policy: int | None = None
    cpu_features: str = ""
    default_vcpus: float = 0.0
    default_maxvcpus: int = 0
    default_memory: int = 0
    block_device_driver: str = ""
    vm_rootfs_driver: str = ""          # runtime-rs only
    enable_iommu: bool = False
    use_legacy_serial: bool = False
    disable_guest_selinux: bool = False
    disable_image_nvdimm: bool = False
    enable_debug: bool = False
    enable_numa: bool = False
    numa_mapping: tuple[str, ...] = ()
    pflashes: tuple[str, ...] = ()
    tdx_qgs_port: int = 0
    guest_extension_images: tuple[ExtensionImage, ...] = ()
    # [agent.kata]
    agent_debug: bool = False
    agent_tracing: bool = False
    agent_debug_console: bool = False
    agent_launch_process_timeout: int = 0
    agent_cdh_api_timeout: int = 0      # Go runtime: seconds (cdh_api_timeout)
    agent_cdh_api_timeout_ms: int | None = None   # runtime-rs: milliseconds (cdh_api_timeout_ms)
    agent_container_pipe_size: int = 0  # runtime-rs only (Go: an annotation)
    agent_visible_cdi_devices: bool = False
    agent_mem_agent_enable: bool = False  # runtime-rs only
    # [runtime]
    static_sandbox_resource_mgmt: bool = False
    present: frozenset[str] = field(default_factory=frozenset)

    def where(self, key: str) -> str:
        return f"{self.source}: {key}"


def _toml_error(e: tomllib.TOMLDecodeError, shown: str) -> CCBuildError:
    text = str(e).replace("\n", " ")
    m = _TOML_POS.match(text)
    if m:
        return CCBuildError(f"Kata configuration is not TOML ({m['msg']})",
                            f"{shown}:{m['line']}:{m['col']}")
    m = _TOML_EOF.match(text)
    if m:
        return CCBuildError(f"Kata configuration is not TOML ({m['msg']})", f"{shown}: end of file")
    return CCBuildError(f"Kata configuration is not TOML ({text})", shown)


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "a table"}


class _Reader:
    def __init__(self, shown: str, table: dict, prefix: str):
        self.shown, self.table, self.prefix = shown, table, prefix
        self.present: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def get(self, name: str, typ: type, default: Any = None, lo: int | None = None,
            hi: int | None = None) -> Any:
        if name not in self.table:
            return default
        self.present.add(self.key(name))
        v = self.table[name]
        ok = (isinstance(v, typ) and not (typ is int and isinstance(v, bool))) or \
             (typ is float and isinstance(v, int) and not isinstance(v, bool))
        if not ok:
            raise CCBuildError(f"{self.key(name)} must be {_TYPE_NAMES[typ]}, not {_shown(v)}",
                               self.shown)
        if typ is float:
            v = float(v)
        if typ in (int, float) and ((lo is not None and v < lo) or (hi is not None and v > hi)):
            raise CCBuildError(f"{self.key(name)} = {v} is out of range {lo}..{hi}", self.shown)
        return v

    def strings(self, name: str) -> tuple[str, ...]:
        v = self.get(name, list, [])
        for i, item in enumerate(v):
            if not isinstance(item, str):
                raise CCBuildError(f"{self.key(name)}[{i}] must be a string, not {_shown(item)}",
                                   self.shown)
        return tuple(v)


def _shown(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _single(doc: dict, section: str, wanted: str, shown: str) -> dict:
    tables = doc.get(section, {})
    if not isinstance(tables, dict):
        raise CCBuildError(f"{section} must be a table", shown)
    names = sorted(tables)
    if names != [wanted]:
        have = ", ".join(f"[{section}.{n}]" for n in names) or "none"
        raise CCBuildError(f"the model reads exactly one [{section}.{wanted}] table (found: {have})",
                           shown, "the model covers QEMU with the Kata agent")
    t = tables[wanted]
    if not isinstance(t, dict):
        raise CCBuildError(f"{section}.{wanted} must be a table", shown)
    return t


def parse_kata_config(text: str, shown: str) -> KataConfig:
    """A :class:`KataConfig` from the text of a Kata configuration TOML."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _toml_error(e, shown) from None
    h = _Reader(shown, _single(doc, "hypervisor", "qemu", shown), "hypervisor.qemu")
    a = _Reader(shown, _single(doc, "agent", "kata", shown), "agent.kata")
    rt_table = doc.get("runtime", {})
    if not isinstance(rt_table, dict):
        raise CCBuildError("runtime must be a table", shown)
    r = _Reader(shown, rt_table, "runtime")
    u32 = (0, (1 << 32) - 1)
    policy = h.get("snp_guest_policy", int, None, 0, (1 << 64) - 1)

    exts = []
    for i, item in enumerate(h.get("guest_extension_images", list, [])):
        if not isinstance(item, dict):
            raise CCBuildError(f"hypervisor.qemu.guest_extension_images[{i}] must be a table", shown)
        e = _Reader(shown, item, f"hypervisor.qemu.guest_extension_images[{i}]")
        exts.append(ExtensionImage(e.get("name", str, ""), e.get("path", str, ""),
                                   e.get("verity_params", str, "")))
    mem_agent = a.get("mem_agent", dict, {})
    mem_enable = _Reader(shown, mem_agent, "agent.kata.mem_agent").get("enable", bool, False)

    cfg = KataConfig(
        source=shown,
        kernel=h.get("kernel", str, ""),
        image=h.get("image", str, ""),
        initrd=h.get("initrd", str, ""),
        firmware=h.get("firmware", str, ""),
        firmware_volume=h.get("firmware_volume", str, ""),
        machine_type=h.get("machine_type", str, ""),
        rootfs_type=h.get("rootfs_type", str, ""),
        kernel_params=h.get("kernel_params", str, ""),
        kernel_verity_params=h.get("kernel_verity_params", str, ""),
        confidential_guest=h.get("confidential_guest", bool, False),
        sev_snp_guest=h.get("sev_snp_guest", bool, False),
        snp_id_block=h.get("snp_id_block", str, ""),
        snp_id_auth=h.get("snp_id_auth", str, ""),
        snp_guest_policy=policy,
        cpu_features=h.get("cpu_features", str, ""),
        default_vcpus=h.get("default_vcpus", float, 0.0, -(1 << 31), 1 << 31),
        default_maxvcpus=h.get("default_maxvcpus", int, 0, *u32),
        default_memory=h.get("default_memory", int, 0, *u32),
        block_device_driver=h.get("block_device_driver", str, ""),
        vm_rootfs_driver=h.get("vm_rootfs_driver", str, ""),
        enable_iommu=h.get("enable_iommu", bool, False),
        use_legacy_serial=h.get("use_legacy_serial", bool, False),
        disable_guest_selinux=h.get("disable_guest_selinux", bool, False),
        disable_image_nvdimm=h.get("disable_image_nvdimm", bool, False),
        enable_debug=h.get("enable_debug", bool, False),
        enable_numa=h.get("enable_numa", bool, False),
        numa_mapping=h.strings("numa_mapping"),
        pflashes=h.strings("pflashes"),
        tdx_qgs_port=h.get("tdx_quote_generation_service_socket_port", int, 0, *u32),
        guest_extension_images=tuple(exts),
        agent_debug=a.get("enable_debug", bool, False),
        agent_tracing=a.get("enable_tracing", bool, False),
        agent_debug_console=a.get("debug_console_enabled", bool, False),
        agent_launch_process_timeout=a.get("launch_process_timeout", int, 0, *u32),
        agent_cdh_api_timeout=a.get("cdh_api_timeout", int, 0, *u32),
        agent_cdh_api_timeout_ms=a.get("cdh_api_timeout_ms", int, None, *u32),
        agent_container_pipe_size=a.get("container_pipe_size", int, 0, *u32),
        agent_visible_cdi_devices=a.get("visible_cdi_devices", bool, False),
        agent_mem_agent_enable=mem_enable,
        static_sandbox_resource_mgmt=r.get("static_sandbox_resource_mgmt", bool, False),
        present=frozenset(h.present | a.present | r.present),
    )
    return cfg


def load_kata_config(path: str | os.PathLike) -> KataConfig:
    """Read and parse a Kata configuration file (regular file, at most 1 MiB, UTF-8 TOML)."""
    shown = str(path)
    data = read_regular(path, KIND, shown, limit=LIMIT)
    return parse_kata_config(decode_utf8(data, KIND, shown), shown)
