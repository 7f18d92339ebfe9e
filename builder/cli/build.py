"""`ccbuild build RECIPE [-o OUT] [--set KEY=VALUE] [--offline] [--locked] [--json] [-f]
[--allow-outside] [--recheck]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("build", help="build a recipe's artifacts and measurements into OUT")
    p.add_argument("recipe", help="recipe YAML file (e.g. recipes/snp.yaml)")
    p.add_argument("-o", "--out", type=Path, help="output directory (default out/<recipe name>/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set launch.vcpus=[1,2] (repeatable)")
    p.add_argument("--offline", action="store_true", help="use only the store; fetch nothing")
    p.add_argument("--locked", action="store_true",
                   help="fail on any input without a sha256 pin or whose pin changed")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("-f", "--force", action="store_true",
                   help="replace OUT even if it is not a ccbuild output (never a symlink or a "
                   "file)")
    p.add_argument("--allow-outside", action="store_true",
                   help="let the recipe name files outside its directory (path sources, "
                   "descriptors, fragments, keys, initdata); default: only a sha256-pinned "
                   "path source may")
    p.add_argument("-j", "--jobs", type=int, default=0, help="parallel build jobs (default: cores)")
    p.add_argument("--cache", type=Path, help="store directory (default $CCBUILD_CACHE or "
                   "~/.cache/ccbuild)")
    p.add_argument("--sign-key", type=Path, metavar="PEM",
                   help="ECDSA private key: sign manifest.json into manifest.json.sig")
    p.add_argument("--recheck", action="store_true",
                   help="run every step even when the record of the last build shows that "
                   "nothing changed (see 'Up to date' in the README)")
    p.set_defaults(func=run)


def run(args) -> int:
    from builder.build import BuildOptions, build
    res = build(args.recipe, BuildOptions(out=args.out, overrides=tuple(args.overrides),
                                          offline=args.offline, locked=args.locked,
                                          force=args.force, allow_outside=args.allow_outside,
                                          store_root=args.cache,
                                          jobs=args.jobs, sign_key=args.sign_key,
                                          recheck=args.recheck))
    if args.json:
        json.dump(res.summary(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print_summary(res)
    return 0


def print_summary(res) -> None:
    out = sys.stderr
    state = "up to date (nothing changed)" if res.up_to_date else "written"
    print(f"{res.name} ({res.platform}): {state} -> {res.out}", file=out)
    rows = [(o["path"], o["sha256"][:16], str(o["size"])) for o in res.manifest["outputs"]]
    w0 = max(len(r[0]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    for path, digest, size in rows:
        print(f"  {path:<{w0}}  {size:>{w2}}  sha256:{digest}…", file=out)
    ch = res.manifest["chain"]
    image = (f"initrd {ch['initrd'][:12]}" if "initrd" in ch else
             f"cmdline {ch['cmdline'][:12]} -> verity root {ch['verity_root_hash'][:12]} "
             f"(rootfs {ch['rootfs'][:12]})")
    print(f"  chain: firmware {ch['firmware'][:12]} -> kernel {ch['kernel'][:12]} -> {image} "
          f"-> agent {ch['agent'][:12]}", file=out)
    m = res.measurements
    if "snp" in m:
        e = m["snp"]
        print(f"  snp: {len(e)} launch digests; e.g. {e[0]['vcpus']} vCPU {e[0]['vcpu_type']} "
              f"{e[0]['vmm']}: {e[0]['launch_digest'][:32]}…", file=out)
    if "tdx" in m:
        t = m["tdx"]
        for reg in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"):
            v = t.get(reg)
            print(f"  {reg}: {v if v else 'null (' + t.get(reg + '_reason', '') + ')'}", file=out)
    steps = ", ".join(f"{k} {v:.2f}s" for k, v in res.timings)
    print(f"  time: {steps}", file=out)
