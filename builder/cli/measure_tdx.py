"""`ccbuild measure tdx`: MRTD and RTMR0-3 of a TDX direct-boot launch, with the event log.

The kernel and initrd may be given as files or as published digests (``--kernel-authenticode``:
the Authenticode SHA-384 OVMF measures; ``--initrd-sha384``); the results are the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from builder.cli.common import read_input, text_arg
from builder.errors import CCBuildError
from builder.measure.tdx import TdxParams, measure_tdx, result_to_dict
from builder.measure.tdx_mrtd import PageAddOrder

REGISTERS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")


def sha384_arg(text: str | None, option: str) -> bytes | None:
    """A SHA-384 given as 96 hex digits (None when the option is absent)."""
    if text is None:
        return None
    hint = "give the 48-byte digest as 96 hex digits"
    t = text.strip()
    if len(t) != 96 or any(c not in "0123456789abcdefABCDEF" for c in t):
        raise CCBuildError(f"{option} is not a SHA-384 (96 hex digits; got {len(text)} "
                           "characters)", hint=hint)
    return bytes.fromhex(t)


def memory_arg(text: str | None, option: str = "--memory") -> int | None:
    """Guest RAM from bytes or '<n>M' / '<n>G' (QEMU -m), within what a TD can have."""
    if text is None:
        return None
    from builder.measure.tdx_profile import ProfileError, memory_bytes
    from builder.schema import Ctx
    try:
        return memory_bytes(Ctx(option, error=ProfileError),
                            int(text) if text.strip().isdigit() else text, option)
    except ProfileError as e:
        raise CCBuildError(e.one_line().split(": ", 1)[-1], option,
                           "write e.g. 2G, 2048M or a byte count") from None


def add_input_options(p, *, files: bool = True) -> None:
    """--kernel/--initrd (with files) and their digest forms, --profile, --memory."""
    if files:
        k = p.add_mutually_exclusive_group()
        k.add_argument("--kernel", metavar="K",
                       help="kernel (QEMU -kernel); needed for RTMR1/RTMR2")
        k.add_argument("--kernel-authenticode", metavar="HEX",
                       help="the kernel's Authenticode SHA-384 as OVMF measures it (instead of K)")
        i = p.add_mutually_exclusive_group()
        i.add_argument("--initrd", metavar="I", help="initrd (QEMU -initrd)")
        i.add_argument("--initrd-sha384", metavar="HEX",
                       help="the initrd's SHA-384 (instead of I)")
    p.add_argument("--profile", metavar="P",
                   help="VMM profile: a shipped name (see docs/tdx-profile.md) or a YAML path")
    p.add_argument("--memory", metavar="SIZE",
                   help="guest RAM (QEMU -m: bytes, 2048M, 2G); overrides the profile's")


def register(sub) -> None:
    p = sub.add_parser("tdx", help="TDX MRTD and RTMR0-3",
                       description="Print a TDX launch measurement (MRTD by default).")
    p.add_argument("--firmware", required=True, metavar="F", help="the TDVF (OVMF IntelTdx) image")
    p.add_argument("--append", metavar="STR", help="the final kernel command line (QEMU -append)")
    add_input_options(p)
    p.add_argument("--page-add-order", choices=[o.value for o in PageAddOrder],
                   help="how the VMM adds and extends TDVF pages (default: the profile's, "
                        "else interleaved)")
    p.add_argument("--register", choices=REGISTERS, help="print only this register")
    p.add_argument("--json", action="store_true", help="all registers and the expected event log "
                   "(every RTMR0 event, digest null with the reason where VMM data is missing)")
    p.set_defaults(func=run)


def params_from_args(args) -> TdxParams:
    if args.profile:
        from builder.measure.tdx_profile import load_profile
        params = load_profile(args.profile)
    else:
        params = TdxParams()
    if getattr(args, "page_add_order", None):
        params = replace(params, page_add_order=PageAddOrder(args.page_add_order))
    memory = memory_arg(getattr(args, "memory", None))
    if memory is not None:
        params = replace(params, memory=memory)
    return params


def run(args) -> int:
    append = text_arg(args.append, "--append")
    fw = read_input(args.firmware, "--firmware", "firmware")
    kernel = read_input(args.kernel, "--kernel", "kernel")
    kernel_ac = sha384_arg(args.kernel_authenticode, "--kernel-authenticode")
    initrd_sha = sha384_arg(args.initrd_sha384, "--initrd-sha384")
    initrd = read_input(args.initrd, "--initrd", "initrd")
    has_kernel = kernel is not None or kernel_ac is not None
    if (initrd is not None or initrd_sha is not None) and not has_kernel:
        raise CCBuildError("--initrd needs --kernel (direct kernel boot)")
    if append is not None and not has_kernel:
        raise CCBuildError("--append needs --kernel (direct kernel boot)")
    params = params_from_args(args)
    result = measure_tdx(fw, kernel, initrd, append, params, kernel_authenticode=kernel_ac,
                         initrd_sha384=initrd_sha)
    record = result_to_dict(result, params)
    if args.json:
        inputs = {name: {"path": path, "sha256": hashlib.sha256(data).hexdigest()}
                  for name, path, data in (("firmware", args.firmware, fw),
                                           ("kernel", args.kernel, kernel),
                                           ("initrd", args.initrd, initrd)) if data is not None}
        if kernel_ac is not None:
            inputs["kernel"] = {"authenticode_sha384": kernel_ac.hex()}
        if initrd_sha is not None:
            inputs["initrd"] = {"sha384": initrd_sha.hex()}
        record = {"inputs": inputs, "append": append, **record}
        if args.register:
            record = {"register": args.register, "value": record[args.register], **record}
        print(json.dumps(record, indent=2))
        return 0
    name = args.register or "mrtd"
    value = record[name]
    if value is None:
        raise CCBuildError(f"{name} is unknown: {record.get(name + '_reason', 'not computed')}",
                           hint="give --profile with acpi_blobs" if name == "rtmr0"
                           else "give --kernel")
    print(value)
    return 0
