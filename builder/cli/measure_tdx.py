"""`ccbuild measure tdx`: MRTD and RTMR0-3 of a TDX direct-boot launch, with the event log."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from builder.cli.common import read_input, text_arg
from builder.errors import CCBuildError
from builder.measure.tdx import TdxParams, measure_tdx, result_to_dict
from builder.measure.tdx_mrtd import PageAddOrder

REGISTERS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")


def register(sub) -> None:
    p = sub.add_parser("tdx", help="TDX MRTD and RTMR0-3",
                       description="Print a TDX launch measurement (MRTD by default).")
    p.add_argument("--firmware", required=True, metavar="F", help="the TDVF (OVMF IntelTdx) image")
    p.add_argument("--kernel", metavar="K", help="kernel (QEMU -kernel); needed for RTMR1/RTMR2")
    p.add_argument("--initrd", metavar="I", help="initrd (QEMU -initrd)")
    p.add_argument("--append", metavar="STR", help="the final kernel command line (QEMU -append)")
    p.add_argument("--profile", metavar="P",
                   help="VMM profile: a name in recipes/profiles/ or a YAML path (RTMR0 needs one)")
    p.add_argument("--page-add-order", choices=[o.value for o in PageAddOrder],
                   help="how the VMM adds and extends TDVF pages (default: the profile's, "
                        "else interleaved)")
    p.add_argument("--register", choices=REGISTERS, help="print only this register")
    p.add_argument("--json", action="store_true", help="all registers and the expected event log")
    p.set_defaults(func=run)


def params_from_args(args) -> TdxParams:
    if args.profile:
        from builder.measure.tdx_profile import load_profile
        params = load_profile(args.profile)
    else:
        params = TdxParams()
    if args.page_add_order:
        params = replace(params, page_add_order=PageAddOrder(args.page_add_order))
    return params


def run(args) -> int:
    append = text_arg(args.append, "--append")
    fw = read_input(args.firmware, "--firmware", "firmware")
    kernel = read_input(args.kernel, "--kernel", "kernel")
    initrd = read_input(args.initrd, "--initrd", "initrd")
    if initrd is not None and kernel is None:
        raise CCBuildError("--initrd needs --kernel (direct kernel boot)")
    if append is not None and kernel is None:
        raise CCBuildError("--append needs --kernel (direct kernel boot)")
    params = params_from_args(args)
    result = measure_tdx(fw, kernel, initrd, append, params)
    record = result_to_dict(result, params)
    if args.json:
        inputs = {name: {"path": path, "sha256": hashlib.sha256(data).hexdigest()}
                  for name, path, data in (("firmware", args.firmware, fw),
                                           ("kernel", args.kernel, kernel),
                                           ("initrd", args.initrd, initrd)) if data is not None}
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
