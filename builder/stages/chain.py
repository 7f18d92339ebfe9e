"""Measured-view check: everything the guest runs before the agent must be inside what the TEE
measures, or the launch digest / RTMRs say nothing about the agent.

The chain a build must make true:

* the firmware verifies kernel, initrd and command line (SNP: an OVMF with the SEV
  KERNEL_HASHES section and ``kernel-hashes=on``; TDX: TDVF measures the kernel and the EFI stub
  measures command line and initrd);
* the command line does not send the kernel elsewhere: no ``rdinit=``/``init=`` other than
  ``/init``, and a ``root=`` only when dm-verity pins it (a root file system the measurements do
  not cover would be the agent's real source);
* the initrd's ``/init`` is the agent (its bytes, or a symlink to it), or a known minimal init
  that does nothing but ``exec`` the agent; or, booting a verity rootfs (no initrd), the command
  line carries that rootfs' dm-verity table and ``root=/dev/dm-0``, so the rootfs holding the
  agent at ``/sbin/init`` is pinned by the measured root hash.

Each refusal is one line (CCBuildError, exit 2) that says what breaks the chain and how to fix it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from builder.errors import CCBuildError
from builder.formats import cpio
from builder.stages.initrd import decompress, init_of
from builder.stages.rootfs import AGENT_PATH as ROOTFS_AGENT_PATH
from builder.stages.rootfs import ROOT_DEV, Rootfs

AGENT_PATH = "/init"
# "#!/bin/sh" + an optional "set -e" + one "exec PATH" (optionally passing "$@"): nothing else.
_EXEC_INIT = re.compile(rb'#!(/\S+)[ \t]*\n(?:set -eu?[ \t]*\n)?exec[ \t]+(/[^\s"\'$;&|`]+)'
                        rb'(?:[ \t]+"\$@")?[ \t]*\n?')


@dataclass(frozen=True)
class Chain:
    """What was checked, for the build summary."""
    init: str          # "agent" | "symlink to the agent (PATH)" | "exec-only init -> PATH"


def kernel_params(cmdline: str) -> list[tuple[str, str | None]]:
    """(name, value) of the kernel's own parameters, in order: the words before a ``--`` (the
    kernel hands the rest to init). Double quotes around a value are removed as the kernel does."""
    out = []
    for word in _split(cmdline):
        if word == "--":
            break
        name, eq, value = word.partition("=")
        # the kernel compares parameter names with '-' and '_' as equal
        out.append((name.replace("_", "-"), value.replace('"', "") if eq else None))
    return out


def _split(cmdline: str) -> list[str]:
    """Split like the kernel's next_arg(): spaces separate words, except inside double quotes."""
    words, cur, quoted = [], [], False
    for ch in cmdline:
        if ch == '"':
            quoted = not quoted
        if ch.isspace() and not quoted:
            if cur:
                words.append("".join(cur))
                cur = []
            continue
        cur.append(ch)
    if cur:
        words.append("".join(cur))
    return words


def check_cmdline(cmdline: str, where: str = "cmdline", rootfs: "Rootfs | None" = None) -> None:
    """Refuse parameters that make the kernel start something other than the agent. With an
    initrd boot the agent is ``/init`` and a ``root=`` must be verity-pinned; with a verity
    rootfs boot the command line must carry exactly that rootfs' dm-verity table, ``root=`` the
    verity device once, and any ``init=`` must be the agent's path in the rootfs."""
    params = kernel_params(cmdline)
    agent_path = AGENT_PATH if rootfs is None else ROOTFS_AGENT_PATH
    where_agent = "the measured initrd" if rootfs is None else "the verity rootfs"
    if rootfs is not None:
        table = rootfs.dm_mod_create()
        if table not in cmdline:
            raise CCBuildError("the command line does not carry the rootfs' dm-verity table, so "
                               "the measurement would not pin the rootfs", where,
                               "put {{ verity_params }} in the template")
        if [v for n, v in params if n == "dm-mod.create"] != [table.split("=", 1)[1].strip('"')]:
            raise CCBuildError("the command line sets up other device-mapper tables besides the "
                               "rootfs' one", where, "use only {{ verity_params }}")
        if [v for n, v in params if n == "root"] != [ROOT_DEV]:
            raise CCBuildError(f"the root must be the verity device, root={ROOT_DEV}, once", where,
                               "use {{ verity_params }} and no other root=")
    for name, value in params:
        if name in ("init", "rdinit") and value != agent_path:
            raise CCBuildError(
                f"the command line has {name}={value}, so the kernel would not start the agent "
                f"({agent_path} in {where_agent})", where,
                f"remove {name}= (or set {name}={agent_path})")
    roots = [v for n, v in params if n == "root"]
    if rootfs is None and roots and not _verity_root(params):
        raise CCBuildError(
            f"the command line mounts root={roots[-1]} without dm-verity, so the root file system "
            "would not be covered by the measurements", where,
            "pin it with a verity root hash (dm-mod.create=...verity...) or drop root=")


def _verity_root(params: list[tuple[str, str | None]]) -> bool:
    tables = [v or "" for n, v in params if n == "dm-mod.create"]
    roots = [v or "" for n, v in params if n == "root"]
    if not tables or not any(re.search(r"\bverity\b", t) for t in tables):
        return False
    return all(r.startswith("/dev/dm-") or r.startswith("/dev/mapper/") for r in roots)


def check_init(initrd: bytes, agent: bytes, where: str = "initrd") -> Chain:
    """/init must be the agent, or an exec-only init whose target is the agent."""
    init = init_of(initrd)
    members = {m.name: m for m in cpio.read_archive(decompress(initrd))}
    link = members.get("init")
    if init == agent:
        if link is not None and link.kind == "symlink":
            return Chain(f"symlink to the agent ({link.data.decode(errors='replace')})")
        return Chain("agent")
    m = _EXEC_INIT.fullmatch(init)
    if m:
        interp, target = (x.decode() for x in m.groups())
        tgt = members.get(target.lstrip("/"))
        if interp.lstrip("/") not in members:
            raise CCBuildError(f"/init is a script for {interp}, which is not in the initrd",
                               where, "make the agent /init")
        if tgt is not None and tgt.kind == "file" and tgt.data == agent:
            return Chain(f"exec-only init -> {target}")
        raise CCBuildError(f"/init only execs {target}, which is not the agent", where,
                           "make the agent /init (or exec the agent's path)")
    raise CCBuildError("/init in the initrd is not the agent (nor an init that only execs it)",
                       where, "the agent must be /init")


def check_firmware(platform: str, fw: bytes) -> None:
    """The firmware must verify what it boots: the same check (and message) as the firmware
    stage, so a firmware that reaches the chain by another route gets the same refusal."""
    from builder.stages.firmware import check_firmware as stage_check
    stage_check(platform, fw, where="firmware")


def check_chain(platform: str, firmware: bytes, boot: "bytes | Rootfs", cmdline: str,
                agent: bytes) -> Chain:
    """The build's measured view, for either boot kind: ``boot`` is the initrd (its /init must
    be the agent) or the verity rootfs (its table and root on the command line; the rootfs stage
    put the agent at /sbin/init)."""
    check_firmware(platform, firmware)
    if isinstance(boot, (bytes, bytearray)):
        check_cmdline(cmdline)
        return check_init(boot, agent)
    check_cmdline(cmdline, "cmdline.template", rootfs=boot)
    return Chain(f"agent at {ROOTFS_AGENT_PATH} in the dm-verity rootfs ({boot.format})")
