"""`ccbuild verify OUT`: the auditor's checks.

  ccbuild verify OUT                                   outputs vs manifest.json/SHA256SUMS, every
                                                       measurement recomputed from OUT
  ccbuild verify --rebuild RECIPE OUT [--share-cache] [--allow-outside]
                                                       rebuild in a fresh directory and compare
  ccbuild verify DIST --rebuild RECIPE [--rebuild RECIPE ...]
                                                       a release: rebuild every recipe with
                                                       `ccbuild release`, compare every file
  ccbuild verify OUT --snp-report R [--vcek C] [--chain ASK_ARK]
  ccbuild verify OUT --tdx-quote Q [--ccel TABLE DATA]
  ccbuild verify OUT --signature --pubkey PEM

Exit 0 when everything agrees, 1 with a table of what differs, 2 for unreadable input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from builder.cli.common import read_input
from builder.errors import EXIT_CHECK_FAILED, CCBuildError, printable


def register(sub) -> None:
    p = sub.add_parser("verify", help="check OUT, rebuild and compare, compare with TEE evidence",
                       description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="a `ccbuild build` output directory or a "
                   "`ccbuild release` DIST")
    p.add_argument("--rebuild", metavar="RECIPE", action="append", default=[],
                   help="rebuild RECIPE into a fresh directory and compare every file with OUT; "
                   "for a release DIST, give every recipe of the release, each with --rebuild")
    p.add_argument("--share-cache", action="store_true",
                   help="with --rebuild: reuse the normal store instead of a fresh, empty one")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --rebuild: the overrides the original build used (repeatable)")
    p.add_argument("--offline", action="store_true", help="with --rebuild: fetch nothing")
    p.add_argument("--allow-outside", action="store_true",
                   help="with --rebuild: the recipe's paths may leave its directory")
    p.add_argument("--cache", type=Path, help="with --rebuild --share-cache: store directory")
    p.add_argument("--snp-report", metavar="R",
                   help="SEV-SNP attestation report (binary, hex text or SNP_GUEST_REQUEST reply)")
    p.add_argument("--vcek", metavar="C", help="the VCEK (or VLEK) certificate, DER or PEM")
    p.add_argument("--chain", metavar="ASK_ARK",
                   help="ASK + ARK PEM bundle (default: AMD's keys shipped with ccbuild)")
    p.add_argument("--tdx-quote", metavar="Q", help="TDX quote (v4/v5) or TDREPORT")
    p.add_argument("--ccel", nargs=2, metavar=("TABLE", "DATA"),
                   help="with --tdx-quote: the CCEL ACPI table and the event log it points to")
    p.add_argument("--signature", action="store_true",
                   help="check manifest.json.sig (needs --pubkey)")
    p.add_argument("--pubkey", metavar="PEM", help="ECDSA public key for --signature")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--failures", action="store_true", help="show only rows that are not ok")
    p.set_defaults(func=run)


def _check_options(args) -> None:
    if args.signature and not args.pubkey:
        raise CCBuildError("--signature needs --pubkey PEM")
    if args.pubkey and not args.signature:
        raise CCBuildError("--pubkey is only used with --signature")
    if (args.vcek or args.chain) and not args.snp_report:
        raise CCBuildError("--vcek and --chain go with --snp-report")
    if args.ccel and not args.tdx_quote:
        raise CCBuildError("--ccel goes with --tdx-quote", hint="inspect a log alone with "
                           "`ccbuild inspect --ccel TABLE DATA`")
    if (args.share_cache or args.overrides or args.offline or args.allow_outside) \
            and not args.rebuild:
        raise CCBuildError("--share-cache, --set, --offline and --allow-outside go with "
                           "--rebuild")
    if args.cache and not args.share_cache:
        raise CCBuildError("--cache goes with --rebuild --share-cache",
                           hint="without --share-cache the rebuild uses a fresh, empty store")


def run(args) -> int:
    from builder import verify as vf
    _check_options(args)
    verdicts = []
    from builder.verify.release import (
        check_release,
        is_release,
        rebuild_release,
    )
    release = is_release(args.out)
    if release:   # a `ccbuild release` DIST: the whole release
        if args.snp_report or args.tdx_quote or args.overrides:
            raise CCBuildError("--snp-report, --tdx-quote and --set take one OUT, not a "
                               "release", str(args.out), "give DIST/<recipe name>")
        pubkey = read_input(args.pubkey, "--pubkey", "key") if args.signature else None
        if args.rebuild:
            verdicts.append(rebuild_release(args.out, args.rebuild, share_cache=args.share_cache,
                                            offline=args.offline, store_root=args.cache,
                                            allow_outside=args.allow_outside,
                                            pubkey_pem=pubkey,
                                            pubkey_where=f"--pubkey {args.pubkey}"))
        else:
            verdicts.append(check_release(args.out, pubkey, f"--pubkey {args.pubkey}"))
    elif args.rebuild:
        if len(args.rebuild) > 1:
            raise CCBuildError(f"{len(args.rebuild)} recipes given with --rebuild for one OUT",
                               str(args.out), "several recipes go with a release DIST")
        verdicts.append(vf.rebuild_and_compare(args.rebuild[0], args.out,
                                               share_cache=args.share_cache,
                                               overrides=tuple(args.overrides),
                                               offline=args.offline, store_root=args.cache,
                                               allow_outside=args.allow_outside))
    else:
        verdicts.append(vf.check_out(args.out))
    if args.snp_report:
        verdicts.append(vf.check_snp_report(
            args.out, read_input(args.snp_report, "--snp-report", "report"),
            read_input(args.vcek, "--vcek", "certificate"),
            read_input(args.chain, "--chain", "certificate"),
            vcek_what=f"--vcek {args.vcek}" if args.vcek else None,
            chain_what=f"--chain {args.chain}"))
    if args.tdx_quote:
        table, data = args.ccel or (None, None)
        verdicts.append(vf.check_tdx_quote(args.out,
                                           read_input(args.tdx_quote, "--tdx-quote", "quote"),
                                           read_input(table, "--ccel TABLE", "acpi table"),
                                           read_input(data, "--ccel DATA", "event log")))
    if args.signature and not release:   # a release's signature is checked above
        verdicts.append(vf.check_signature(args.out, read_input(args.pubkey, "--pubkey", "key"),
                                           f"--pubkey {args.pubkey}"))
    ok = all(v.ok for v in verdicts)
    if args.json:
        json.dump({"ok": ok, "verdicts": [v.to_json() for v in verdicts]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print("\n\n".join(v.text(all_rows=not args.failures) for v in verdicts))
    if not ok:
        # the one-line error contract: the table is on stdout, the verdict on stderr
        fails = [c for v in verdicts for c in v.failures]
        first = fails[0]
        sys.stdout.flush()
        print(f"ccbuild: error: verification failed: {len(fails)} check(s) differ; first: "
              f"{printable(first.item)}: {printable(first.detail)[:200]}", file=sys.stderr)
    return 0 if ok else EXIT_CHECK_FAILED
