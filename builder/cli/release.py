"""`ccbuild release RECIPE... -o DIST [--sign-key PEM] [-j N] [-P M] [--json]`: build every recipe
(M at once in worker processes, N jobs in all) into DIST/<name>/ and write one bundle of reference values, one RVPS message, one provenance and
SHA256SUMS beside them (builder.release)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("release", help="build several recipes into one release directory with "
                       "one bundle of reference values")
    p.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe YAML files")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="DIST",
                   help="release directory (replaced atomically)")
    p.add_argument("--sign-key", type=Path, metavar="PEM",
                   help="ECDSA private key: sign the bundle (reference-values.json.sig) and "
                   "every manifest.json")
    p.add_argument("-j", "--jobs", type=int, default=0, metavar="N",
                   help="the release's budget of parallel jobs (default: cores), shared by the "
                   "recipes building at once: each build runs N // M jobs")
    p.add_argument("-P", "--parallel", type=int, default=0, metavar="M",
                   help="recipes built at once, each in a worker process (default: min(N, "
                   "recipes)); -P 1 builds them one after the other with N jobs each. Stages "
                   "they share are built once (the others wait for it) and the release is "
                   "byte-identical whatever M")
    p.add_argument("--offline", action="store_true", help="use only the store; fetch nothing")
    p.add_argument("--locked", action="store_true",
                   help="fail on any input without a sha256 pin or whose pin changed")
    p.add_argument("-f", "--force", action="store_true",
                   help="replace DIST even if it is not a ccbuild release (never a symlink or a "
                   "file)")
    p.add_argument("--allow-outside", action="store_true",
                   help="let recipes name files outside their directory")
    p.add_argument("--cache", type=Path, help="store directory (default $CCBUILD_CACHE or "
                   "~/.cache/ccbuild)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout and, "
                   "without a terminal, one JSON event per step on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    from builder import log
    from builder.errors import CCBuildError
    from builder.release import ReleaseOptions, release
    if args.json and not log.progress_enabled():
        log.set_progress("json")   # one JSON event per step on stderr; the summary on stdout
    if args.jobs < 0:
        raise CCBuildError(f"--jobs {args.jobs} must be 0 (all cores) or more")
    if args.parallel < 0:
        raise CCBuildError(f"--parallel {args.parallel} must be 0 (as many as --jobs) or more")
    res = release(args.recipes, ReleaseOptions(
        dist=args.out, sign_key=args.sign_key, jobs=args.jobs, parallel=args.parallel,
        offline=args.offline,
        locked=args.locked, force=args.force, allow_outside=args.allow_outside,
        store_root=args.cache))
    if args.json:
        json.dump(res.summary(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        for r in res.results:
            print(f"{r.name} ({r.platform}) -> {res.dist / r.name}", file=sys.stderr)
        print(f"release: {len(res.results)} recipe(s), bundle {res.dist / 'reference-values.json'}",
              file=sys.stderr)
    return 0
