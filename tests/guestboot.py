"""Boot helpers shared by the kernel and rootfs tests, on top of builder.boot (``ccbuild boot``):
a TCG boot of a build output, or of a copy of it with one file replaced (another kernel, a
modified rootfs) that the manifest check of ``ccbuild boot`` would rightly refuse."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from builder import boot as bt


def need_qemu() -> None:
    if shutil.which(bt.QEMU) is None:
        pytest.skip(f"{bt.QEMU} is not installed (scripts/install-deps)")


def boot(out: Path, serial: Path, timeout: float = 240.0) -> bt.BootResult:
    """``ccbuild boot OUT --accel tcg``: the exact artifacts and measured cmdline."""
    need_qemu()
    return bt.boot(out, bt.BootOptions(accel="tcg", timeout=timeout, log=serial))


def boot_replaced(out: Path, work: Path, name: str, data: bytes, serial: Path,
                  timeout: float = 240.0) -> bt.BootResult:
    """Boot a copy of OUT whose file ``name`` is ``data`` (same QEMU command line otherwise)."""
    need_qemu()
    o = bt.load_out(out)
    copy = work / "out-copy"
    shutil.copytree(out, copy)
    (copy / name).write_bytes(data)
    o = dataclasses.replace(o, path=copy)
    bios, fw = bt.firmware_args(o, "auto")
    argv = bt.qemu_argv(o, "tcg", bios, serial)
    ready, secs, reason, line = bt.run_qemu(argv, serial, o.readiness, timeout)
    return bt.BootResult(ready, secs, serial, "tcg", fw, reason, line, argv)


def serial_text(r: bt.BootResult) -> str:
    return r.log.read_bytes().decode(errors="replace") if r.log.exists() else ""
