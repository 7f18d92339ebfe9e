"""recipes/kata-qemu-snp.yaml and kata-qemu-tdx.yaml: Kata's shipped confidential configurations
(image mode, ext4 + dm-verity, the test agent as init) measured as the Kata runtime launches them
(launch.kata; builder.kata.recipe). The SNP launch digests are recomputed independently with
sev-snp-measure from the firmware, the kernel, the image-mode command line (no initrd), the vCPUs
and EPYC-v4; the vCPUs expected are default_vcpus of the Kata TOML (read here with tomllib) plus
the pod's CPU limit (pkg/oci/utils.go SandboxConfig with static_sandbox_resource_mgmt, kata 4.1.0
ddcb1ad8d23cbb4323f86c209f132b89592902df). Bad input is a one-line error naming the key."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpers import assert_one_line_error, run_cli

REPO = Path(__file__).resolve().parent.parent


def ccbuild(*args, timeout=3600):
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def kata_out(tmp_path_factory, recipe_file):
    """kata_out(platform, *sets) -> OUT of recipes/kata-qemu-<platform>.yaml, built once."""
    done = {}

    def get(platform: str, *sets: str) -> Path:
        key = (platform, sets)
        if key not in done:
            out = tmp_path_factory.mktemp(f"kata-{platform}") / "out"
            args = [x for s in sets for x in ("--set", s)]
            cp = ccbuild("build", recipe_file(f"kata-qemu-{platform}"), "-o", out, *args)
            assert cp.returncode == 0, cp.stderr
            done[key] = out
        return done[key]
    return get


def _toml(platform: str) -> dict:
    return tomllib.loads((REPO / f"recipes/kata/configuration-qemu-{platform}-4.1.toml").read_text())


def _recipe(platform: str) -> dict:
    import yaml
    return yaml.safe_load((REPO / f"recipes/kata-qemu-{platform}.yaml").read_text())


def _sev_snp_measure(out: Path, vcpus: int, cmdline: str, guest_features: int) -> str:
    from sevsnpmeasure import guest, vcpu_types
    from sevsnpmeasure.vmm_types import VMMType
    return guest.snp_calc_launch_digest(vcpus, vcpu_types.CPU_SIGS["EPYC-v4"],
                                        str(out / "firmware.fd"), str(out / "vmlinuz"), None,
                                        cmdline, guest_features, "", VMMType.QEMU).hex()


@pytest.mark.slow
@pytest.mark.parametrize("version", ["4.1.0", "3.31.0"])
def test_snp_every_digest_equals_sev_snp_measure(kata_out, version):
    pytest.importorskip("sevsnpmeasure")
    out = kata_out("snp", f"launch.kata.version={version}")
    m = json.loads((out / "measurements.json").read_bytes())
    cmdline = (out / "cmdline.txt").read_text()
    toml = _toml("snp")["hypervisor"]["qemu"]
    pods = _recipe("snp")["launch"]["kata"]["pod_cpus"]
    k = m["kata"]
    assert k["version"] == version and k["mode"] == "image"
    assert [p["pod_cpus"] for p in k["pods"]] == pods
    checked = 0
    for p in k["pods"]:
        assert p["vcpus"] == toml["default_vcpus"] + p["pod_cpus"]
        assert p["cpu"] == "EPYC-v4," + toml["cpu_features"]       # qemu_amd64.go cpuModel
        assert p["memory_mib"] == toml["default_memory"]
        # image mode: the root params, no initrd; Kata 3.31.0 adds nr_cpus=<vCPUs>
        assert "root=/dev/dm-0" in p["cmdline"] and "rootfstype=ext4" in p["cmdline"]
        assert ("nr_cpus=%d" % p["vcpus"] in p["cmdline"].split()) == (version == "3.31.0")
        assert p["same_cmdline"] == (p["cmdline"] == cmdline)
        for gf, digest in p["launch_digests"].items():
            assert digest == _sev_snp_measure(out, p["vcpus"], p["cmdline"], int(gf, 16))
            checked += 1
    assert k["pods"][0]["cmdline"] == cmdline
    for e in m["snp"]:          # the launches of cmdline.txt
        assert e["vcpu_type"] == "EPYC-v4" and e["vmm"] == "qemu"
        assert e["launch_digest"] == _sev_snp_measure(out, e["vcpus"], cmdline,
                                                      int(e["guest_features"], 16))
        checked += 1
    assert checked >= len(pods) + 1
    if version == "4.1.0":
        assert sorted(e["vcpus"] for e in m["snp"]) == [1 + c for c in pods]


@pytest.mark.slow
def test_snp_cmdline_carries_katas_root_params_for_the_image(kata_out):
    """GetKernelRootParams (hypervisor.go) with the image's kernel_verity_params, composed by
    hand from image_builder.sh's format and the MBR of rootfs.img."""
    import struct
    out = kata_out("snp")
    m = json.loads((out / "measurements.json").read_bytes())
    kvp = dict(f.split("=", 1) for f in m["kata"]["kernel_verity_params"].split(","))
    image = (out / "rootfs.img").read_bytes()
    start, count = struct.unpack_from("<II", image, 446 + 8)
    assert start == 2048 and int(kvp["data_blocks"]) * 4096 == count * 512
    table = (f'dm-mod.create="dm-verity,,,ro,0 {count} verity 1 /dev/vda1 /dev/vda2 4096 4096 '
             f'{kvp["data_blocks"]} 0 sha256 {kvp["root_hash"]} {kvp["salt"]}" root=/dev/dm-0 '
             "rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4")
    cmdline = (out / "cmdline.txt").read_text()
    assert f"pci=lastbus=0 {table} console=hvc0 console=hvc1 quiet" in cmdline
    assert cmdline.endswith("agent.launch_process_timeout=6 cgroup_no_v1=all "
                            "systemd.unified_cgroup_hierarchy=1")


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["snp", "tdx"])
def test_kata_configuration_in_out_is_the_full_toml(kata_out, platform):
    out = kata_out(platform)
    text = (out / f"kata-configuration-qemu-{platform}.toml").read_text()
    doc = tomllib.loads(text)
    src = _toml(platform)
    m = json.loads((out / "measurements.json").read_bytes())
    q = doc["hypervisor"]["qemu"]
    assert q["kernel"] == "@ARTIFACTS@/vmlinuz" and q["firmware"] == "@ARTIFACTS@/firmware.fd"
    assert q["image"] == "@ARTIFACTS@/rootfs.img" and q["initrd"] == ""
    assert q["rootfs_type"] == "ext4"
    assert q["kernel_verity_params"] == m["kata"]["kernel_verity_params"]
    assert re.fullmatch(r"root_hash=[0-9a-f]{64},salt=[0-9a-f]{64},data_blocks=\d+,"
                        r"data_block_size=4096,hash_block_size=4096", q["kernel_verity_params"])
    if platform == "snp":
        assert q["snp_id_block"] == "" and q["snp_id_auth"] == ""   # the recipe has no ID key
    # everything else is Kata's file as it was, comments included
    changed = {"kernel", "image", "initrd", "firmware", "rootfs_type", "kernel_verity_params",
               "snp_id_block", "snp_id_auth"}
    assert {k: v for k, v in q.items() if k not in changed} == \
        {k: v for k, v in src["hypervisor"]["qemu"].items() if k not in changed}
    assert {k: v for k, v in doc.items() if k != "hypervisor"} == \
        {k: v for k, v in src.items() if k != "hypervisor"}
    assert "# If you want that qemu uses the default firmware leave this option empty" in text \
        or text.count("\n#") > 50
    # the model, reading this very file, composes cmdline.txt
    from builder.kata.config import parse_kata_config
    from builder.kata.go_runtime import HostFacts, Pod, compose
    from builder.kata.versions import resolve_release
    launch = compose(parse_kata_config(text, "out"), resolve_release("4.1.0"),
                     HostFacts(tee=platform), Pod(cpus=0))
    assert launch.append == (out / "cmdline.txt").read_text()


@pytest.mark.slow
def test_tdx_table_per_pod(kata_out):
    out = kata_out("tdx")
    m = json.loads((out / "measurements.json").read_bytes())
    toml = _toml("tdx")["hypervisor"]["qemu"]
    pods = _recipe("tdx")["launch"]["kata"]["pod_cpus"]
    assert [p["vcpus"] for p in m["kata"]["pods"]] == [toml["default_vcpus"] + c for c in pods]
    for p in m["kata"]["pods"]:
        assert p["cpu"].split(",")[0] == "host"              # qemu_amd64.go cpuModel for TDX
        assert p["same_cmdline"]
        for reg in ("mrtd", "rtmr1", "rtmr2", "rtmr3"):
            assert p[reg] == m["tdx"][reg]


@pytest.mark.slow
def test_ext4_image_rebuilt_later_is_identical(kata_out, recipe_file, tmp_path):
    """A second build of the SNP recipe (another process, seconds later, other umask and TZ)
    gives the same rootfs.img and measurements."""
    import os
    out = kata_out("snp")
    again = tmp_path / "again"
    env = {**os.environ, "TZ": "Pacific/Kiritimati"}
    cp = subprocess.run([sys.executable, "-c", "import os, runpy, sys; os.umask(0o077); "
                         "sys.argv = ['ccbuild'] + sys.argv[1:]; "
                         "runpy.run_module('builder.cli', run_name='__main__')",
                         "build", str(recipe_file("kata-qemu-snp")), "-o", str(again)],
                        cwd=REPO, capture_output=True, text=True, env=env, timeout=3600)
    assert cp.returncode == 0, cp.stderr
    for name in ("rootfs.img", "measurements.json", "cmdline.txt",
                 "kata-configuration-qemu-snp.toml"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def _virtconsole_boot(out: Path, tmp_path: Path) -> str:
    """QEMU as `ccbuild boot` runs it (builder.boot.qemu_argv), which gives the guest the virtio
    console Kata gives it (qemu_arch_base.go appendConsole: virtio-serial + virtconsole; the
    command line says console=hvc0); its output is the log."""
    from builder.boot import load_out, qemu_argv
    o = load_out(out)
    fw = ["-bios", str(out / "firmware.fd")] if o.platform == "tdx" else []
    hvc = tmp_path / "hvc0.log"
    argv = qemu_argv(o, "tcg", fw, hvc)
    assert argv[argv.index("-append") + 1] == (out / "cmdline.txt").read_text()
    # console=hvc0 on Kata's command line: the guest console is a virtconsole whose file is hvc
    assert f"file,id=con0,path={hvc}" in argv and "virtconsole,chardev=con0" in argv
    subprocess.run(argv, timeout=600, capture_output=True)
    return hvc.read_text(errors="replace")


@pytest.mark.slow
@pytest.mark.boot
@pytest.mark.parametrize("platform", ["snp", "tdx"])
def test_boots_to_the_agent_with_the_composed_cmdline(kata_out, platform, tmp_path):
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    out = kata_out(platform)
    log = _virtconsole_boot(out, tmp_path)
    manifest = json.loads((out / "manifest.json").read_bytes())
    m = re.search(r"ccbuild-test-agent: ready sha256=([0-9a-f]{64})", log)
    assert m, log[-2000:]
    assert m.group(1) == manifest["chain"]["agent"]
    assert f"ccbuild-test-agent: cmdline {(out / 'cmdline.txt').read_text()}\n" in log


@pytest.mark.slow
@pytest.mark.boot
def test_ccbuild_boot_reaches_the_agent(kata_out, tmp_path):
    out = kata_out("tdx")
    cp = ccbuild("boot", out, "--json", "--accel", "tcg", "--timeout", "300", "--log",
                 tmp_path / "serial.log", timeout=900)
    assert cp.returncode == 0, cp.stderr


# -- bad input: one line naming the key, exit 2 ---------------------------------------------
@pytest.fixture
def recipe_dir(tmp_path):
    d = tmp_path / "recipes"
    d.mkdir()
    shutil.copy(REPO / "recipes/kata-qemu-snp.yaml", d / "kata-qemu-snp.yaml")
    shutil.copytree(REPO / "recipes/kata", d / "kata")
    return d


def _variant(d: Path, name: str, old: str, new: str) -> str:
    text = (d / "kata/configuration-qemu-snp-4.1.toml").read_text()
    assert old in text
    (d / "kata" / name).write_text(text.replace(old, new, 1))
    return f"kata/{name}"


@pytest.mark.parametrize("case", ["not-toml", "rootfs-type", "verity-params", "version",
                                  "version-text", "rootfs-mismatch", "not-snp-host"])
def test_bad_kata_input_is_one_line_naming_the_key(recipe_dir, tmp_path, case):
    d = recipe_dir
    if case == "not-toml":
        (d / "kata/bad.toml").write_text("[hypervisor.qemu\nkernel = 1\n")
        sets, want = ["launch.kata.configuration=kata/bad.toml"], "launch.kata.configuration"
    elif case == "rootfs-type":
        rel = _variant(d, "x.toml", 'rootfs_type = "ext4"', 'rootfs_type = "btrfs"')
        sets, want = [f"launch.kata.configuration={rel}"], "hypervisor.qemu.rootfs_type"
    elif case == "verity-params":
        rel = _variant(d, "x.toml", 'kernel_verity_params = ""',
                       'kernel_verity_params = "root_hash=ab,salt=cd,data_blocks=x"')
        sets, want = [f"launch.kata.configuration={rel}"], "hypervisor.qemu.kernel_verity_params"
    elif case == "version":
        sets, want = ["launch.kata.version=3.30.0"], "launch.kata.version"
    elif case == "version-text":
        sets, want = ["launch.kata.version=latest"], "launch.kata.version"
    elif case == "rootfs-mismatch":
        sets, want = ["rootfs.format=erofs"], "hypervisor.qemu.rootfs_type"
    else:
        sets, want = ["launch.kata.host.snp=false"], "launch.kata.host"
    args = ["build", str(d / "kata-qemu-snp.yaml"), "-o", str(tmp_path / "out")]
    for s in sets:
        args += ["--set", s]
    line = assert_one_line_error(run_cli(args, timeout=120), codes=(2,), contains=want)
    assert str(tmp_path) not in line.replace(str(d / "kata-qemu-snp.yaml"), "")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["snp", "tdx"])
def test_verify_recomputes_every_pod(kata_out, platform, tmp_path):
    """`ccbuild verify OUT` recomputes the kata table's pods; a pod value changed (with the hashes
    made consistent again, so only the recomputation can notice) is a failed check naming it."""
    import hashlib
    out = kata_out(platform)
    cp = ccbuild("verify", out)
    assert cp.returncode == 0 and "kata pod" in cp.stdout, cp.stdout + cp.stderr
    bad = tmp_path / "out"
    shutil.copytree(out, bad)
    m = json.loads((bad / "measurements.json").read_text())
    pod = m["kata"]["pods"][-1]
    if platform == "snp":
        f = next(iter(pod["launch_digests"]))
        pod["launch_digests"][f] = "0" * 96
    else:
        pod["rtmr2"] = "0" * 96
    data = json.dumps(m, indent=2, sort_keys=True).encode() + b"\n"
    (bad / "measurements.json").write_bytes(data)
    man = json.loads((bad / "manifest.json").read_text())
    for o in man["outputs"]:
        if o["path"] == "measurements.json":
            o["sha256"], o["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (bad / "manifest.json").write_bytes(json.dumps(man, indent=2, sort_keys=True).encode() + b"\n")
    sums = "".join(f"{hashlib.sha256((bad / n).read_bytes()).hexdigest()}  {n}\n"
                   for n in sorted(p.name for p in bad.iterdir() if p.name != "SHA256SUMS"))
    (bad / "SHA256SUMS").write_text(sums)
    cp = ccbuild("verify", bad)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert f"kata pod {pod['pod_cpus']} CPUs" in cp.stdout + cp.stderr
