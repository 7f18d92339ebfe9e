"""`ccbuild lock RECIPE [--write]`: check (and rewrite) the recipe's Debian pins."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("lock", help="re-resolve a recipe's Debian pins against the mirror")
    p.add_argument("recipe", type=Path)
    p.add_argument("--write", action="store_true",
                   help="rewrite stale pins in place (default: only report); only the recipe "
                   "file itself and the firmware descriptor it names are rewritten")
    p.add_argument("--cache", type=Path, help="store directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from builder.lock import lock_recipe
    from builder.store import Store
    # lock_recipe validates the recipe (and its descriptor) before anything is fetched
    changes = lock_recipe(args.recipe, Store.open(args.cache), args.write, str(args.recipe))
    stale = [c for c in changes if c.old != c.new]
    for c in changes:
        print(c.line())
    if stale and not args.write:
        print(f"{len(stale)} stale pin(s); run with --write to update them", file=sys.stderr)
        return 1
    return 0
