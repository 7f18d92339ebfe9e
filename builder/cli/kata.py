"""`ccbuild kata cmdline|launch ...`: what the Kata runtime launches for a configuration TOML.

``cmdline`` prints exactly the string the runtime passes to QEMU ``-append`` (one line, like
``measure`` prints its value); ``launch --json`` prints the whole launch shape (vCPUs, -smp, -cpu,
-m, firmware, image or initrd, the confidential-guest object). See docs/kata.md.
"""

from __future__ import annotations

import dataclasses
import json
import math

from builder.cli.common import int_arg, shown, text_arg
from builder.errors import CCBuildError
from builder.kata import go_runtime, runtime_rs
from builder.kata.config import load_kata_config
from builder.kata.versions import DEFAULT_VERSION, KATA_RELEASES, resolve_release

# src/runtime/Makefile IMAGECONFIDENTIALPATH / INITRDCONFIDENTIALPATH (PREFIX=/usr), the paths a
# node's shipped configuration names.
KATA_CONFIDENTIAL_IMAGE = "/usr/share/kata-containers/kata-containers-confidential.img"
KATA_CONFIDENTIAL_INITRD = "/usr/share/kata-containers/kata-containers-initrd-confidential.img"


def _pod_cpus(text: str | None) -> float:
    if text is None:
        return 0.0
    if len(text) > 16:
        raise CCBuildError(f"--pod-cpus {shown(text)} is not a CPU count", hint="write e.g. 2 or 0.5")
    try:
        v = float(text)
    except ValueError:
        raise CCBuildError(f"--pod-cpus {shown(text)} is not a CPU count",
                           hint="write e.g. 2 or 0.5") from None
    if not math.isfinite(v) or v < 0 or v > go_runtime.GOVMM_MAX_VCPUS:
        raise CCBuildError(f"--pod-cpus {shown(text)} is out of range",
                           hint=f"give a value in 0..{go_runtime.GOVMM_MAX_VCPUS}")
    return v


def _digest(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        b = bytes.fromhex(text)
    except ValueError:
        raise CCBuildError(f"--initdata-digest {shown(text)} is not hex") from None
    if not 1 <= len(b) <= 64:
        raise CCBuildError("--initdata-digest must be 1..64 bytes (sha256/384/512 of the initdata)")
    return b


def _inputs(args):
    text_arg(args.config, "--config")
    cfg = load_kata_config(args.config)
    release = resolve_release(text_arg(args.kata_version, "--kata-version"))
    if args.mode == "initrd":
        cfg = dataclasses.replace(cfg, initrd=cfg.initrd or KATA_CONFIDENTIAL_INITRD, image="")
    elif args.mode == "image":
        cfg = dataclasses.replace(cfg, image=cfg.image or KATA_CONFIDENTIAL_IMAGE, initrd="")
    if args.kernel_verity_params is not None:
        cfg = dataclasses.replace(
            cfg, kernel_verity_params=text_arg(args.kernel_verity_params, "--kernel-verity-params"))
    if args.host_tee is not None:
        tee = args.host_tee
    elif args.snp_host is False:
        tee = "none"
    elif args.snp_host is True or cfg.sev_snp_guest:
        tee = "snp"
    else:
        tee = "tdx"
    host = go_runtime.HostFacts(
        tee=tee, fips=args.fips,
        host_cpus=None if args.host_cpus is None else int_arg(args.host_cpus, "--host-cpus", 1, 1 << 16),
        cbitpos=int_arg(args.cbitpos, "--cbitpos", 32, 63))
    mem = int_arg(args.pod_memory, "--pod-memory", 0, 1 << 24) if args.pod_memory else 0
    pod = go_runtime.Pod(cpus=_pod_cpus(args.pod_cpus), memory_mib=mem)
    return cfg, release, host, pod


def _cmdline(args) -> int:
    cfg, release, host, pod = _inputs(args)
    if args.runtime == "rs":
        print(runtime_rs.kernel_cmdline(cfg, release, host))
    else:
        print(go_runtime.compose(cfg, release, host, pod).append)
    return 0


def _launch(args) -> int:
    cfg, release, host, pod = _inputs(args)
    if args.runtime == "rs":
        raise CCBuildError("the launch shape of runtime-rs is not modelled", "--runtime rs",
                           "use 'ccbuild kata cmdline --runtime rs' for its command line")
    launch = go_runtime.compose(cfg, release, host, pod, _digest(args.initdata_digest))
    if args.json:
        print(json.dumps(launch.as_json(), indent=2))
        return 0
    for k, v in launch.as_json().items():
        if k in ("guest_object", "notes"):
            continue
        print(f"{k}: {v}")
    for n in launch.notes:
        print(f"note: {n}")
    return 0


def _common(p) -> None:
    p.add_argument("--config", required=True, metavar="FILE.toml", help="a Kata configuration TOML")
    p.add_argument("--kata-version", default=DEFAULT_VERSION, metavar="V",
                   help=f"Kata release ({', '.join(KATA_RELEASES)}; default {DEFAULT_VERSION})")
    p.add_argument("--runtime", choices=("go", "rs"), default="go",
                   help="Go runtime (containerd-shim-kata-v2) or runtime-rs (default go)")
    p.add_argument("--fips", action="store_true", help="the host runs in FIPS mode (fips=1)")
    p.add_argument("--snp-host", dest="snp_host", action="store_true", default=None,
                   help="the host's kvm_amd sev_snp is Y (default for an SNP configuration)")
    p.add_argument("--no-snp-host", dest="snp_host", action="store_false",
                   help="the host's kvm_amd sev_snp is not Y")
    p.add_argument("--host-tee", choices=("snp", "tdx", "none"), default=None,
                   help="what availableGuestProtection finds on the host (overrides --snp-host)")
    p.add_argument("--host-cpus", metavar="N", help="host CPU count, where Kata clamps to it")
    p.add_argument("--cbitpos", default="51", metavar="N", help="SEV C-bit position (default 51)")
    p.add_argument("--pod-cpus", metavar="N", help="the pod's CPU limit (e.g. 2 or 0.5)")
    p.add_argument("--pod-memory", metavar="MIB", help="the pod's memory limit in MiB")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--image", dest="mode", action="store_const", const="image",
                   help="boot the (verity) image (the configuration's, or Kata's confidential one)")
    g.add_argument("--initrd", dest="mode", action="store_const", const="initrd",
                   help="boot an initrd (the configuration's, or Kata's confidential one)")
    p.add_argument("--kernel-verity-params", metavar="P",
                   help="override kernel_verity_params (root_hash=...,salt=...,data_blocks=...,"
                        "data_block_size=...,hash_block_size=...)")


def register(sub) -> None:
    p = sub.add_parser("kata", help="model what the Kata runtime launches for a configuration")
    ksub = p.add_subparsers(dest="kata_verb", metavar="WHAT", parser_class=type(p))
    ksub.required = True
    c = ksub.add_parser("cmdline", help="print the kernel command line the runtime passes to -append")
    _common(c)
    c.set_defaults(func=_cmdline)
    lp = ksub.add_parser("launch", help="print the launch shape (vCPUs, -smp, -cpu, -m, firmware, ...)")
    _common(lp)
    lp.add_argument("--initdata-digest", metavar="HEX",
                    help="digest of the pod's initdata (SNP host-data, TDX mrconfigid)")
    lp.add_argument("--json", action="store_true", help="print the whole launch shape as JSON")
    lp.set_defaults(func=_launch)
