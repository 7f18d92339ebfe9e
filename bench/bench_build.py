"""No-op rebuild of the default recipe (everything cached) vs the floor any rebuild check has:
reading and hashing the output directory once. Run after `make demo` (or it builds first)."""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

from builder import log
from builder.build import BuildOptions, build

REPO = Path(__file__).resolve().parent.parent


def _best(fn, n=5) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    log.configure(quiet=True)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out"
        for name in ("snp", "tdx"):
            recipe = REPO / "recipes" / f"{name}.yaml"
            t = time.perf_counter()
            build(recipe, BuildOptions(out=out / name))
            first = time.perf_counter() - t
            noop = _best(lambda: build(recipe, BuildOptions(out=out / name)))

            def hash_out():
                for p in sorted((out / name).iterdir()):
                    hashlib.sha256(p.read_bytes()).digest()

            floor = _best(hash_out)
            print(f"{name}: first build (with this cache) {first:.2f}s; no-op rebuild "
                  f"{noop * 1000:.0f} ms (target < 1 s) = {noop / floor:.1f}x hashing OUT once "
                  f"({floor * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
