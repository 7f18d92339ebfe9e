"""Measured-view check (builder.stages.chain): each way a recipe could break the chain from the
measured boot to the agent is refused with its one-line message -- on constructed inputs, and
through `ccbuild build` (exit 2, one line on stderr) on the shipped recipe."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.errors import CCBuildError
from builder.stages import chain
from builder.stages.initrd import File, InitrdSpec, build_initrd

REPO = Path(__file__).resolve().parent.parent
AGENT = b"\x7fELF-the-agent" + os.urandom(64)
OTHER = b"\x7fELF-something-else" + os.urandom(64)


def initrd(agent: bytes = AGENT, files=(), symlinks=()) -> bytes:
    return build_initrd(InitrdSpec(agent=agent, files=tuple(files), symlinks=tuple(symlinks)),
                        1735689600)


def one_line(e: pytest.ExceptionInfo) -> str:
    s = e.value.one_line()
    assert "\n" not in s
    return s


# -- command line -------------------------------------------------------------------------------
@pytest.mark.parametrize("cmdline", [
    "console=ttyS0 panic=-1",
    "console=ttyS0 rdinit=/init",
    "init=/init quiet",
    'rdinit="/init"',
    "console=ttyS0 -- init=/bin/sh rdinit=/bin/sh",          # after "--": arguments for init
    "root=/dev/dm-0 dm-mod.create=\"vroot,,,ro,0 8 verity 1 /dev/vda /dev/vdb 4096 4096 1 1 "
    "sha256 aa 00\"",
])
def test_cmdline_accepted(cmdline):
    chain.check_cmdline(cmdline)


@pytest.mark.parametrize("cmdline,message", [
    ("console=ttyS0 init=/bin/sh",
     "the command line has init=/bin/sh, so the kernel would not start the agent (/init in the "
     "measured initrd), cmdline; remove init= (or set init=/init)"),
    ("rdinit=/sbin/init console=ttyS0",
     "the command line has rdinit=/sbin/init, so the kernel would not start the agent (/init in "
     "the measured initrd), cmdline; remove rdinit= (or set rdinit=/init)"),
    ("rdinit=/init init=/usr/bin/evil",
     "the command line has init=/usr/bin/evil, so the kernel would not start the agent (/init "
     "in the measured initrd), cmdline; remove init= (or set init=/init)"),
])
def test_cmdline_init_elsewhere_refused(cmdline, message):
    with pytest.raises(CCBuildError) as e:
        chain.check_cmdline(cmdline)
    assert one_line(e) == message


@pytest.mark.parametrize("cmdline", [
    "console=ttyS0 root=/dev/vda1",
    "root=/dev/dm-0 dm-mod.create=\"vroot,,,ro,0 8 linear /dev/vda 0\"",   # dm, but no verity
])
def test_rootfs_without_verity_refused(cmdline):
    with pytest.raises(CCBuildError) as e:
        chain.check_cmdline(cmdline)
    assert one_line(e).startswith("the command line mounts root=")
    assert "without dm-verity, so the root file system would not be covered by the " \
           "measurements, cmdline; pin it with a verity root hash" in one_line(e)


# -- /init --------------------------------------------------------------------------------------
def test_init_is_the_agent():
    assert chain.check_init(initrd(), AGENT).init == "agent"


def test_init_not_the_agent_refused():
    with pytest.raises(CCBuildError) as e:
        chain.check_init(initrd(OTHER), AGENT)
    assert one_line(e) == ("/init in the initrd is not the agent (nor an init that only execs "
                           "it), initrd; the agent must be /init")


def script_initrd(script: bytes, target: bytes) -> bytes:
    """/init = ``script``, /usr/bin/kata-agent = ``target``, plus a /bin/sh."""
    return initrd(script, files=[File("/usr/bin/kata-agent", target, 0o755),
                                 File("/bin/sh", b"\x7fELF-sh", 0o755)])


def test_exec_only_init_accepted_when_target_is_the_agent():
    img = script_initrd(b'#!/bin/sh\nexec /usr/bin/kata-agent "$@"\n', AGENT)
    assert chain.check_init(img, AGENT).init == "exec-only init -> /usr/bin/kata-agent"


def test_exec_only_init_of_another_binary_refused():
    img = script_initrd(b"#!/bin/sh\nexec /usr/bin/kata-agent\n", OTHER)
    with pytest.raises(CCBuildError) as e:
        chain.check_init(img, AGENT)
    assert one_line(e) == ("/init only execs /usr/bin/kata-agent, which is not the agent, "
                           "initrd; make the agent /init (or exec the agent's path)")


def test_script_that_does_more_than_exec_refused():
    img = script_initrd(b"#!/bin/sh\n/bin/sh -c 'curl x | sh'\nexec /usr/bin/kata-agent\n",
                        AGENT)
    with pytest.raises(CCBuildError, match="is not the agent"):
        chain.check_init(img, AGENT)


def test_symlinked_init_to_agent_accepted():
    from builder.formats import cpio
    from builder.stages.initrd import compress
    entries = [cpio.Entry.symlink("init", "usr/bin/kata-agent"),
               cpio.Entry.dir("usr", 0o755), cpio.Entry.dir("usr/bin", 0o755),
               cpio.Entry.file("usr/bin/kata-agent", AGENT, 0o755)]
    img = compress(cpio.write_archive(entries, 0), "gzip")
    assert chain.check_init(img, AGENT).init == "symlink to the agent (usr/bin/kata-agent)"


# -- firmware -----------------------------------------------------------------------------------
FW_MESSAGE = ("firmware has no SEV KERNEL_HASHES section (OVMF would not verify kernel, initrd "
              "and command line); use the AmdSevX64 build (firmware: {build: "
              "firmware/amdsev.yaml})")


def test_snp_firmware_without_kernel_hashes_refused(vectors):
    fw = (vectors / "snp/sev-snp-measure/ovmf_OvmfX64_suffix.bin").read_bytes()
    with pytest.raises(CCBuildError) as e:
        chain.check_chain("snp", fw, initrd(), "console=ttyS0", AGENT)
    assert one_line(e) == FW_MESSAGE
    ok = (vectors / "snp/sev-snp-measure/ovmf_AmdSev_suffix.bin").read_bytes()
    assert chain.check_chain("snp", ok, initrd(), "console=ttyS0", AGENT).init == "agent"


# -- through `ccbuild build` (real recipe, cached inputs) ----------------------------------------
def ccbuild(*args):
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
@pytest.mark.parametrize("override,message", [
    ("cmdline.kernel_params=console=ttyS0 panic=-1 rdinit=/bin/sh",
     "ccbuild: error: the command line has rdinit=/bin/sh, so the kernel would not start the "
     "agent (/init in the measured initrd), cmdline; remove rdinit= (or set rdinit=/init)"),
    ("cmdline.kernel_params=console=ttyS0 root=/dev/vda",
     "ccbuild: error: the command line mounts root=/dev/vda without dm-verity, so the root file "
     "system would not be covered by the measurements, cmdline; pin it with a verity root hash "
     "(dm-mod.create=...verity...) or drop root="),
])
def test_build_refuses_with_one_line(recipe_file, tmp_path, override, message):
    cp = ccbuild("build", recipe_file("snp"), "-o", tmp_path / "out", "--set", override)
    assert cp.returncode == 2, cp.stderr
    assert cp.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_build_refuses_snp_firmware_without_kernel_hashes(recipe_file, vectors, tmp_path):
    recipe = recipe_file("snp")
    fw = recipe.parent / "ovmf_OvmfX64_suffix.bin"      # beside the recipe: paths are confined
    shutil.copy(vectors / "snp/sev-snp-measure/ovmf_OvmfX64_suffix.bin", fw)
    cp = ccbuild("build", recipe, "-o", tmp_path / "out",
                 "--set", f'firmware={{"source": {{"path": "{fw.name}"}}}}')
    assert cp.returncode == 2, cp.stderr
    assert cp.stderr.strip().splitlines() == [f"ccbuild: error: {FW_MESSAGE}"]
