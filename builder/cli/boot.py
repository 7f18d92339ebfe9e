"""`ccbuild boot OUT [--accel auto|tcg|kvm] [--timeout S] [--firmware auto|generic|built] [--log F]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from builder.errors import EXIT_CHECK_FAILED


def register(sub) -> None:
    p = sub.add_parser("boot", help="boot OUT's kernel, initrd and command line in QEMU "
                       "(non-confidential) and wait for the agent's readiness line")
    p.add_argument("out", type=Path, help="a 'ccbuild build' output directory")
    p.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto",
                   help="auto: KVM only if a short probe boot works, else TCG (default)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="seconds to wait for the readiness line (default 300)")
    p.add_argument("--firmware", choices=("auto", "generic", "built"), default="auto",
                   help="built: OUT's firmware.fd (TDX default); generic: QEMU's SeaBIOS "
                   "(SNP default: the AmdSev build cannot boot outside an SEV guest)")
    p.add_argument("--log", type=Path, help="serial log file (default: in the cache's logs/)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from builder.boot import BootOptions, boot
    r = boot(args.out, BootOptions(accel=args.accel, timeout=args.timeout,
                                   firmware=args.firmware, log=args.log))
    if args.json:
        json.dump({"ready": r.ready, "seconds": round(r.seconds, 3), "accel": r.accel,
                   "firmware": r.firmware, "reason": r.reason, "line": r.line,
                   "serial_log": str(r.log), "notes": r.notes, "qemu": r.argv},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    err = sys.stderr
    for n in r.notes:
        print(f"  note: {n}", file=err)
    print(f"  firmware: {r.firmware}", file=err)
    if r.ready:
        print(f"boot: agent ready after {r.seconds:.1f} s ({r.accel})", file=err)
        print(f"  {r.line}", file=err)
    else:
        print(f"boot: agent NOT ready ({r.accel}, {r.seconds:.1f} s): {r.reason}", file=err)
    print(f"  serial log: {r.log}", file=err)
    return 0 if r.ready else EXIT_CHECK_FAILED
