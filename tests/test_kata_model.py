"""The Kata runtime model (builder/kata) against Kata's own unit tests and against command lines
derived by hand from Kata's sources.

Vectors marked "Kata unit test" are copied from the Go/Rust tests of kata-containers/
kata-containers at the commit named beside them. Vectors marked "derived by hand" were composed
by reading the named functions at the named tags, written here as literal text (never produced
by the code under test).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from builder.errors import CCBuildError
from builder.kata import go_runtime as go
from builder.kata import runtime_rs as rs
from builder.kata.config import KataConfig, load_kata_config, parse_kata_config
from builder.kata.versions import resolve_release
from helpers import REPO, assert_one_line_error, run_cli

R331, R332, R400, R410 = (resolve_release(v) for v in ("3.31.0", "3.32.0", "4.0.0", "4.1.0"))
KATA = REPO / "recipes" / "kata"

# ---------------------------------------------------------------------------------------------
# Kata unit test vectors
# ---------------------------------------------------------------------------------------------

FOO_BAR = [("foo", "foo"), ("bar", "bar")]


def test_qemu_kernel_parameters_332():
    # Kata unit test: src/runtime/virtcontainers/qemu_test.go TestQemuKernelParameters at 3.32.0
    # (337b6002681479fb6a605ca8a7a1138e81b6098c); arch is a bare qemuArchBase (no params),
    # newQemuConfig: DefaultMaxVCPUs = govmm.MaxVCPUs() = 240 on amd64, DisableGuestSeLinux = true.
    for debug in (True, False):
        assert go.kernel_parameters([], confidential=False, max_vcpus=240,
                                    disable_guest_selinux=True, config_params=FOO_BAR,
                                    release=R332) == "panic=1 nr_cpus=240 selinux=0 foo=foo bar=bar"
    assert go.kernel_parameters([], confidential=True, max_vcpus=240, disable_guest_selinux=True,
                                config_params=FOO_BAR, release=R332) == \
        "panic=1 selinux=0 foo=foo bar=bar"


def test_qemu_kernel_parameters_331():
    # Kata unit test: qemu_test.go TestQemuKernelParameters at 3.31.0 (cec98e0d976bbf4cae016298ff
    # ea269f57294264): "panic=1 nr_cpus=%d selinux=0 foo=foo bar=bar" with govmm.MaxVCPUs().
    # 3.31.0 kernelParameters adds nr_cpus unconditionally (derived by hand: qemu.go), so a
    # confidential guest gets it too.
    for confidential in (False, True):
        assert go.kernel_parameters([], confidential=confidential, max_vcpus=240,
                                    disable_guest_selinux=True, config_params=FOO_BAR,
                                    release=R331) == "panic=1 nr_cpus=240 selinux=0 foo=foo bar=bar"


NV, VB = "/dev/pmem0p1", "/dev/vda1"
EXT4_FLAGS = "data=ordered,errors=remount-ro ro"
# Kata unit test: src/runtime/virtcontainers/hypervisor_test.go TestGetKernelRootParams at 3.32.0
# (337b6002681479fb6a605ca8a7a1138e81b6098c); identical at 3.31.0 and 4.1.0.
# (rootfstype, disableNvdimm, dax, verityParams, expected or None for an error)
ROOT_PARAMS_CASES = [
    ("ext4", False, False, "", [("root", NV), ("rootflags", EXT4_FLAGS), ("rootfstype", "ext4")]),
    ("ext4", False, True, "", [("root", NV), ("rootflags", "dax," + EXT4_FLAGS), ("rootfstype", "ext4")]),
    ("ext4", True, False, "", [("root", VB), ("rootflags", EXT4_FLAGS), ("rootfstype", "ext4")]),
    ("xfs", False, False, "", [("root", NV), ("rootflags", "ro"), ("rootfstype", "xfs")]),
    ("xfs", False, True, "", [("root", NV), ("rootflags", "dax ro"), ("rootfstype", "xfs")]),
    ("xfs", True, False, "", [("root", VB), ("rootflags", "ro"), ("rootfstype", "xfs")]),
    ("erofs", False, False, "", [("root", NV), ("rootflags", "ro"), ("rootfstype", "erofs")]),
    ("erofs", False, True, "", [("root", NV), ("rootflags", "dax ro"), ("rootfstype", "erofs")]),
    ("erofs", True, False, "", [("root", VB), ("rootflags", "ro"), ("rootfstype", "erofs")]),
    ("foo", False, False, "", None),
    ("ext4", True, True, "", None),
    ("ext4", True, False,
     "root_hash=abc,salt=def,data_blocks=1,data_block_size=4096,hash_block_size=4096",
     [("dm-mod.create", '"dm-verity,,,ro,0 8 verity 1 /dev/vda1 /dev/vda2 4096 4096 1 0 sha256 abc def"'),
      ("root", "/dev/dm-0"), ("rootflags", EXT4_FLAGS), ("rootfstype", "ext4")]),
    ("ext4", False, False, "root_hash=abc,data_blocks=1,data_block_size=4096,hash_block_size=4096", None),
    ("ext4", False, False, "root_hash=abc,salt=def,data_block_size=4096,hash_block_size=4096", None),
    ("ext4", False, False,
     "root_hash=abc,salt=def,data_blocks=foo,data_block_size=4096,hash_block_size=4096", None),
    ("ext4", False, False,
     "root_hash=abc,salt=def,data_blocks=1,data_block_size=4096,hash_block_size=4096,badfield", None),
]


@pytest.mark.parametrize("rootfstype,disable_nvdimm,dax,verity,expected", ROOT_PARAMS_CASES)
def test_get_kernel_root_params(rootfstype, disable_nvdimm, dax, verity, expected):
    if expected is None:
        with pytest.raises(CCBuildError):
            go.get_kernel_root_params(rootfstype, disable_nvdimm, dax, verity)
    else:
        assert go.get_kernel_root_params(rootfstype, disable_nvdimm, dax, verity) == expected


def _cfg(**kw) -> KataConfig:
    return dataclasses.replace(KataConfig(source="t.toml"), **kw)


# Kata unit test: src/runtime/virtcontainers/kata_agent_test.go TestKataAgentKernelParams at 3.32.0
# (337b6002...). The container pipe size cases come from an annotation, not the TOML, and are
# not modelled; the test compares as a set (assert.Contains), so do we.
AGENT_CASES = [
    ({}, set()),
    ({"agent_debug": True}, {("agent.log", "debug")}),
    ({"agent_tracing": True}, {("agent.trace", "true")}),
    ({"agent_debug": True, "agent_tracing": True}, {("agent.log", "debug"), ("agent.trace", "true")}),
    ({"agent_launch_process_timeout": 60}, {("agent.launch_process_timeout", "60")}),
    ({"agent_debug": True, "agent_launch_process_timeout": 60},
     {("agent.log", "debug"), ("agent.launch_process_timeout", "60")}),
    ({"agent_visible_cdi_devices": True}, {("agent.visible_cdi_devices", "true")}),
]


@pytest.mark.parametrize("kw,expected", AGENT_CASES)
def test_kata_agent_kernel_params(kw, expected):
    got = go.kata_agent_kernel_params(_cfg(**kw), R332)
    assert len(got) == len(expected) and set(got) == expected


def test_kata_agent_kernel_params_331_has_no_visible_cdi_devices():
    # derived by hand: kata_agent.go KataAgentKernelParams at 3.31.0 has no VisibleCdiDevices, and
    # katautils/config.go `type agent` at 3.31.0 has no visible_cdi_devices key.
    assert go.kata_agent_kernel_params(_cfg(agent_visible_cdi_devices=True), R331) == []


def test_cpu_topology():
    # Kata unit test: qemu_arch_base_test.go TestQemuArchBaseCPUTopology at 3.32.0 (vcpus 2,
    # defaultMaxVCPUs 240): NonConfidentialGuest {2, Sockets 240, Cores 1, Threads 1, MaxCPUs 240},
    # ConfidentialGuest {2, 0, 1, 1, 0}. At 3.31.0 (cec98e0d...) the one case is {2, 240, 1, 1, 240}.
    assert go.cpu_topology(2, 240, False, R332) == go.SMP(2, 240, 1, 1, 240)
    assert go.cpu_topology(2, 240, True, R332) == go.SMP(2, 0, 1, 1, 0)
    assert go.cpu_topology(2, 240, True, R331) == go.SMP(2, 240, 1, 1, 240)
    # derived by hand: govmm qemu.go appendCPUs (zero fields omitted, this order)
    assert go.SMP(2, 0, 1, 1, 0).qemu_arg() == "2,cores=1,threads=1"
    assert go.SMP(2, 240, 1, 1, 240).qemu_arg() == "2,cores=1,threads=1,sockets=240,maxcpus=240"


def test_append_console():
    # Kata unit test: qemu_arch_base_test.go TestQemuArchBaseAppendConsoles /
    # TestQemuArchBaseAppendConsolesLegacy at 3.32.0 (kernelParams contains console=hvc0 and
    # console=hvc1; legacy: console=ttyS0).
    assert go.append_console(False) == [("console", "hvc0"), ("console", "hvc1")]
    assert go.append_console(True) == [("console", "ttyS0")]


def test_iommu():
    # Kata unit test: qemu_amd64_test.go TestQemuAmd64Iommu at 3.32.0 (contains intel_iommu=on).
    arch = go.new_qemu_arch(iommu=True, image=False, rootfs_type="", kernel_verity_params="",
                            confidential=True, disable_image_nvdimm=True)
    assert ("intel_iommu", "on") in go.arch_kernel_parameters(arch, False)


def test_tdx_object():
    # Kata unit test: src/runtime/pkg/govmm/qemu/qemu_test.go tdxObjectVsock at 3.32.0 (port 0,
    # no QGS socket on the host: vsock port 4050; no initdata: no mrconfigid).
    _, arg = go.tdx_object(_cfg(), None)
    assert arg == '{"qom-type":"tdx-guest","id":"tdx","quote-generation-socket":{"type":"vsock","cid":"2","port":"4050"}}'


def test_runtime_rs_rootfs_params():
    # Kata unit test: src/runtime-rs/crates/hypervisor/src/kernel_param.rs test_rootfs_kernel_params
    # and test_kernel_verity_params at 3.32.0 (337b6002...).
    assert rs.new_rootfs_kernel_params("", "virtio-pmem", "ext4", True) == \
        [("root", "/dev/pmem0p1"), ("rootflags", "dax,data=ordered,errors=remount-ro ro"), ("rootfstype", "ext4")]
    assert rs.new_rootfs_kernel_params("", "virtio-blk-pci", "ext4", True) == \
        [("root", "/dev/vda1"), ("rootflags", "data=ordered,errors=remount-ro ro"), ("rootfstype", "ext4")]
    assert rs.new_rootfs_kernel_params("", "virtio-pmem", "xfs", False) == \
        [("root", "/dev/pmem0p1"), ("rootflags", "ro"), ("rootfstype", "xfs")]
    assert rs.new_rootfs_kernel_params("", "virtio-pmem", "erofs", True) == \
        [("root", "/dev/pmem0p1"), ("rootflags", "dax ro"), ("rootfstype", "erofs")]
    assert rs.new_rootfs_kernel_params("", "virtio-blk-pci", "erofs", True) == \
        [("root", "/dev/vda1"), ("rootflags", "ro"), ("rootfstype", "erofs")]
    for driver, fstype in (("foo", "ext4"), ("virtio-blk-pci", "foo")):
        with pytest.raises(CCBuildError):
            rs.new_rootfs_kernel_params("", driver, fstype, True)
    s = " ".join(rs.param_to_string(p, "k") for p in rs.new_rootfs_kernel_params(
        "root_hash=abc,salt=def,data_blocks=1,data_block_size=4096,hash_block_size=4096",
        "virtio-blk-pci", "ext4", False))
    assert "dm-mod.create=" in s and "root=/dev/dm-0" in s and "rootfstype=ext4" in s


def test_runtime_rs_agent_params():
    # Kata unit test: src/libs/kata-types/src/config/mod.rs test_get_agent_kernel_params at 3.32.0
    # (container_pipe_size 20, launch_process_timeout 60, debug console, visible cdi devices).
    kv = dict(rs.get_agent_kernel_params(_cfg(
        agent_debug=True, agent_tracing=True, agent_container_pipe_size=20,
        agent_debug_console=True, agent_launch_process_timeout=60,
        agent_visible_cdi_devices=True), R332))
    assert kv["agent.log"] == "debug" and kv["agent.trace"] == "true"
    assert kv["agent.container_pipe_size"] == "20" and "agent.debug_console" in kv
    assert kv["agent.debug_console_vport"] == "1026" and kv["agent.launch_process_timeout"] == "60"
    assert kv["agent.visible_cdi_devices"] == "true"


# ---------------------------------------------------------------------------------------------
# Whole command lines for the shipped configurations, derived by hand
# ---------------------------------------------------------------------------------------------
# qemu_amd64.go `var kernelParams` (3.31.0..4.1.0):
AMD64 = ("tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 "
         "i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k cryptomgr.notests net.ifnames=0 "
         "pci=lastbus=0")
# hypervisor.go GetKernelRootParams, virtio-blk (confidential guests never use NVDIMM):
ROOT_EXT4 = "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
# qemu_arch_base.go appendConsole:
CONSOLE = "console=hvc0 console=hvc1"
# katautils/create.go getKernelParams (image only), config.go SetKernelParams (virtio-scsi):
SYSTEMD = ("systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service "
           "systemd.mask=systemd-networkd.socket")
# the shipped TOMLs: [agent.kata] launch_process_timeout = 6, kernel_params (amd64-options.mk)
TAIL = "scsi_mod.scan=none agent.launch_process_timeout=6 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1"

VERITY = "root_hash=ab12,salt=cd34,data_blocks=1000,data_block_size=4096,hash_block_size=4096"
ROOT_VERITY = ('dm-mod.create="dm-verity,,,ro,0 8000 verity 1 /dev/vda1 /dev/vda2 4096 4096 1000 0 '
               'sha256 ab12 cd34" root=/dev/dm-0 rootflags=data=ordered,errors=remount-ro ro '
               'rootfstype=ext4')


def _expected(version: str, mode: str) -> str:
    nr = " nr_cpus=1" if version == "3.31" else ""   # qemu.go kernelParameters, 3.31.0 only
    if mode == "initrd":
        return f"{AMD64} {CONSOLE} quiet panic=1{nr} selinux=0 {TAIL}"
    root = ROOT_VERITY if mode == "verity" else ROOT_EXT4
    if mode == "debug":   # kernelParamsDebug + kernelParamsSystemdDebug; agent.log (agent debug)
        return (f"{AMD64} {root} {CONSOLE} debug systemd.show_status=true systemd.log_level=debug "
                f"panic=1{nr} selinux=0 {SYSTEMD} scsi_mod.scan=none agent.log=debug "
                "agent.launch_process_timeout=6 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1")
    return f"{AMD64} {root} {CONSOLE} quiet systemd.show_status=false panic=1{nr} selinux=0 {SYSTEMD} {TAIL}"


def _mode(cfg: KataConfig, mode: str) -> KataConfig:
    if mode == "initrd":
        return dataclasses.replace(cfg, image="", initrd="/usr/share/kata-containers/i.img")
    if mode == "verity":
        return dataclasses.replace(cfg, kernel_verity_params=VERITY)
    if mode == "debug":
        return dataclasses.replace(cfg, enable_debug=True, agent_debug=True)
    return cfg


CASES = [(plat, ver, tag, mode) for plat in ("snp", "tdx")
         for ver, tag in (("3.31", "3.31.0"), ("3.32", "3.32.0"), ("4.1", "4.1.0"))
         for mode in ("image", "initrd", "verity", "debug")]


@pytest.mark.parametrize("plat,ver,tag,mode", CASES)
def test_shipped_configuration(plat, ver, tag, mode):
    cfg = _mode(load_kata_config(KATA / f"configuration-qemu-{plat}-{ver}.toml"), mode)
    host = go.HostFacts(tee=plat)
    launch = go.compose(cfg, resolve_release(tag), host)
    assert launch.append == _expected(ver, mode)


def test_shipped_configuration_also_under_other_versions():
    # The 3.32 TOML read by the 3.31.0 runtime still gets nr_cpus (the TOML is not the difference).
    cfg = load_kata_config(KATA / "configuration-qemu-snp-3.32.toml")
    assert go.compose(cfg, R331).append == _expected("3.31", "image")
    assert go.compose(cfg, R400).append == _expected("3.32", "image")


def test_fips_and_extensions():
    # derived by hand: create.go checkForFIPS appends fips=1 to HypervisorConfig.KernelParams after
    # SetKernelParams; qemu.go kernelParameters (4.0.0+) appends the extension params after them.
    from builder.kata.config import ExtensionImage
    cfg = dataclasses.replace(load_kata_config(KATA / "configuration-qemu-snp-4.1.toml"),
                              guest_extension_images=(ExtensionImage("gpu", "/x", ""),))
    s = go.compose(cfg, R410, go.HostFacts(fips=True)).append
    assert s.endswith(f"{TAIL} fips=1 kata.extension.gpu.verity_params")
    s = go.compose(cfg, R332, go.HostFacts(fips=True)).append
    assert s.endswith(f"{TAIL} fips=1")


def test_launch_shape():
    # derived by hand: qemu_arch_base.go cpuTopology, qemu_amd64.go cpuModel (EPYC-v4 on an SNP
    # host), qemu.go CreateVM (cpuModel + "," + cpu_features), oci/utils.go SandboxConfig (static
    # sizing: default_vcpus 1 + pod 2 = 3), memoryTopology (confidential: size only).
    cfg = load_kata_config(KATA / "configuration-qemu-snp-3.31.toml")
    l31 = go.compose(cfg, R331, go.HostFacts(tee="snp"), go.Pod(cpus=2))
    assert (l31.vcpus, l31.smp, l31.cpu, l31.memory) == (3, "3,cores=1,threads=1,sockets=3,maxcpus=3",
                                                        "EPYC-v4,pmu=off", "2048M")
    assert " nr_cpus=3 " in l31.append
    assert l31.guest_object_arg == ("sev-snp-guest,id=snp,cbitpos=51,reduced-phys-bits=1,"
                                    "kernel-hashes=on,policy=196608")
    cfg = load_kata_config(KATA / "configuration-qemu-snp-3.32.toml")
    l32 = go.compose(cfg, R332, go.HostFacts(tee="snp"), go.Pod(cpus=1.5, memory_mib=512))
    assert (l32.vcpus, l32.smp, l32.memory) == (3, "3,cores=1,threads=1", "2560M")
    assert "nr_cpus" not in l32.append
    tdx = go.compose(load_kata_config(KATA / "configuration-qemu-tdx-4.1.toml"), R410,
                     go.HostFacts(tee="tdx"), go.Pod(cpus=1), initdata_digest=b"\x01" * 32)
    assert (tdx.vcpus, tdx.cpu, tdx.firmware) == (2, "host,pmu=off", "/usr/share/ovmf/OVMF.inteltdx.fd")
    # mrconfigid: 32 bytes zero-padded to 48, base64 (govmm prepareTDXObject)
    assert tdx.guest_object["mrconfigid"] == "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEAAAAAAAAAAAAAAAAAAAAA"


def test_runtime_rs_cmdline():
    # derived by hand from runtime-rs at 3.32.0: KernelParams::new (reboot=k panic=1 systemd.unit
    # systemd.mask x2), new_rootfs_kernel_params (virtio-blk-pci default), agent params sorted
    # (BTreeMap; cdh_api_timeout_ms default 50000 -> 50) before the TOML kernel_params, selinux,
    # add_console (console=hvc0).
    cfg = load_kata_config(KATA / "configuration-qemu-snp-3.32.toml")
    assert rs.kernel_cmdline(cfg, R332) == (
        "reboot=k panic=1 systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service "
        "systemd.mask=systemd-networkd.socket root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro "
        "rootfstype=ext4 agent.cdh_api_timeout=50 agent.launch_process_timeout=6 cgroup_no_v1=all "
        "systemd.unified_cgroup_hierarchy=1 selinux=0 console=hvc0")


# ---------------------------------------------------------------------------------------------
# CLI and bad input
# ---------------------------------------------------------------------------------------------

def test_cli_cmdline_prints_only_the_string():
    o = run_cli(["kata", "cmdline", "--config", str(KATA / "configuration-qemu-tdx-3.31.toml"),
                 "--kata-version", "3.31.0", "--initrd"])
    assert o.rc == 0, o.stderr
    assert o.stdout == _expected("3.31", "initrd") + "\n" and o.stderr == ""


def test_cli_launch_json():
    o = run_cli(["kata", "launch", "--config", str(KATA / "configuration-qemu-snp-4.1.toml"),
                 "--kata-version", "4.1.0", "--pod-cpus", "2", "--json"])
    assert o.rc == 0, o.stderr
    d = json.loads(o.stdout)
    assert d["append"] == _expected("4.1", "image")
    assert (d["vcpus"], d["smp"], d["cpu"], d["kata_commit"]) == \
        (3, "3,cores=1,threads=1", "EPYC-v4,pmu=off", "ddcb1ad8d23cbb4323f86c209f132b89592902df")


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def _shipped_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (KATA / "configuration-qemu-snp-3.32.toml").read_text()
    assert old in text
    return _write(tmp_path, text.replace(old, new, 1))


def test_cli_not_toml(tmp_path):
    p = _write(tmp_path, "[hypervisor.qemu]\nkernel = \n")
    line = assert_one_line_error(run_cli(["kata", "cmdline", "--config", str(p)]), (2,))
    assert f"{p}:2:" in line and "not TOML" in line


def test_cli_unknown_rootfs_type(tmp_path):
    p = _shipped_with(tmp_path, 'rootfs_type = "ext4"', 'rootfs_type = "btrfs"')
    assert_one_line_error(run_cli(["kata", "cmdline", "--config", str(p)]), (2,),
                          "hypervisor.qemu.rootfs_type")


@pytest.mark.parametrize("bad", ["root_hash=abc", "root_hash=abc,salt=d,data_blocks=x,"
                                 "data_block_size=4096,hash_block_size=4096", "garbage"])
def test_cli_malformed_verity(tmp_path, bad):
    p = _shipped_with(tmp_path, 'kernel_verity_params = ""', f'kernel_verity_params = "{bad}"')
    assert_one_line_error(run_cli(["kata", "cmdline", "--config", str(p)]), (2,),
                          "hypervisor.qemu.kernel_verity_params")


def test_cli_unsupported_version():
    line = assert_one_line_error(run_cli(["kata", "cmdline", "--config",
                                          str(KATA / "configuration-qemu-snp-3.32.toml"),
                                          "--kata-version", "3.30.0"]), (2,), "--kata-version")
    assert "3.30.0" in line


def test_cli_wrong_type_names_key(tmp_path):
    p = _shipped_with(tmp_path, "default_vcpus = 1", 'default_vcpus = "one"')
    assert_one_line_error(run_cli(["kata", "launch", "--config", str(p)]), (2,),
                          "hypervisor.qemu.default_vcpus")


def test_non_confidential_refused():
    with pytest.raises(CCBuildError, match="confidential_guest"):
        go.compose(parse_kata_config('[hypervisor.qemu]\nkernel="k"\nimage="i"\nfirmware="f"\n'
                                     '[agent.kata]\n', "x.toml"), R410)
