"""Boot helpers shared by the kernel and rootfs tests: one non-confidential QEMU/TCG boot of a
build output (SeaBIOS, direct kernel boot, serial log), initrd or verity rootfs."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

READY = b"ccbuild-test-agent: ready sha256="


@dataclass
class Boot:
    ready: bool
    seconds: float
    serial: str
    returncode: int | None


def need_qemu() -> str:
    q = shutil.which("qemu-system-x86_64")
    if q is None:
        pytest.skip("qemu-system-x86_64 is not installed (scripts/install-deps)")
    return q


def boot(out: Path, log: Path, *, kernel: Path | None = None, initrd: Path | None = None,
         rootfs: Path | None = None, cmdline: str | None = None,
         timeout: float = 240.0) -> Boot:
    """Boot OUT's vmlinuz with OUT's initrd.img or rootfs.img (virtio-blk, read-only) and the
    exact cmdline.txt; wait for the agent's readiness line and its power-off."""
    qemu = need_qemu()
    kernel = kernel or out / "vmlinuz"
    if initrd is None and rootfs is None:
        if (out / "initrd.img").exists():
            initrd = out / "initrd.img"
        else:
            rootfs = out / "rootfs.img"
    cmdline = cmdline if cmdline is not None else (out / "cmdline.txt").read_text()
    argv = [qemu, "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-monitor", "none", "-serial", f"file:{log}", "-kernel", str(kernel),
            "-append", cmdline]
    if initrd is not None:
        argv += ["-initrd", str(initrd)]
    if rootfs is not None:
        argv += ["-drive", f"file={rootfs},format=raw,if=none,id=root,readonly=on",
                 "-device", "virtio-blk-pci,drive=root"]
    t0 = time.monotonic()
    try:
        cp = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=timeout)
        rc = cp.returncode
    except subprocess.TimeoutExpired:
        rc = None
    dt = time.monotonic() - t0
    serial = log.read_bytes() if log.exists() else b""
    return Boot(READY in serial, dt, serial.decode(errors="replace"), rc)
