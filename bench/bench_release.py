"""`ccbuild release` of recipes/snp.yaml, tdx.yaml and snp-verity.yaml: one recipe after the
other (`-P 1`, every job to each build: the baseline, measured in the same run) against recipes
in worker processes (the default: min(cores, recipes) at once, the cores shared), end to end as
CLI processes with `--offline`, in a private store seeded from yours (builder.store.seed_store:
blobs hard-linked, refs copied; your store is only read). Prints ratios, never asserts a time;
checks that both releases are byte-identical.

    python -m bench.bench_release            # warm store: best of 3 each, interleaved
    python -m bench.bench_release --cold     # also: the AmdSev firmware stage (shared by snp
                                             # and snp-verity) evicted: one EDK2 build per
                                             # release, minutes

Run after `ccbuild release` of the three recipes once (the store must hold them)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPES = [str(REPO / "recipes" / f"{n}.yaml") for n in ("snp", "tdx", "snp-verity")]
MODES = {"sequential (-P 1)": ["-P", "1"], "parallel (default)": []}


def _release(store: Path, dist: Path, args: list[str]) -> float:
    env = {**os.environ, "CCBUILD_CACHE": str(store)}
    env.pop("CCBUILD_PROGRESS", None)
    t = time.perf_counter()
    cp = subprocess.run([sys.executable, "-m", "builder.cli", "release", *RECIPES, "-o",
                         str(dist), "--offline", "-f", *args], cwd=REPO, env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if cp.returncode != 0:
        sys.exit(f"release failed: {cp.stderr.decode(errors='replace')[-2000:]}")
    return dt


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file()}


def _evict_amdsev(store: Path) -> None:
    import json
    refs = [p for p in (store / "refs" / "firmware-build").glob("*.json")
            if json.loads(p.read_text()).get("name") == "amdsev"]
    if len(refs) != 1:
        sys.exit("the store holds no AmdSev firmware build: release the recipes first")
    refs[0].unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="also time the release with the "
                    "AmdSev firmware stage evicted")
    ap.add_argument("-n", type=int, default=3, help="warm runs per mode (best of)")
    a = ap.parse_args()
    from builder.store import default_root, seed_store
    print(f"{os.cpu_count()} cores; recipes: snp, tdx, snp-verity")
    with tempfile.TemporaryDirectory(prefix="bench-release-") as d:
        d = Path(d)
        seed_store(default_root(), d / "store")
        best = {m: float("inf") for m in MODES}
        trees = {}
        _release(d / "store", d / "warmup", [])        # page cache, tool versions
        for i in range(a.n):
            for m, args in MODES.items():
                dist = d / f"dist-{len(trees)}"
                best[m] = min(best[m], _release(d / "store", dist, args))
                trees.setdefault(m, _tree(dist))
        assert len({tuple(sorted(t.items())) for t in trees.values()}) == 1, "DISTs differ"
        base = best["sequential (-P 1)"]
        for m, t in best.items():
            print(f"warm store, {m}: {t:.2f} s = {t / base:.2f}x sequential (best of {a.n})")
        if a.cold:
            for m, args in MODES.items():
                store = d / f"cold-{m.split()[0]}"
                seed_store(d / "store", store)
                _evict_amdsev(store)
                dist = d / f"cold-dist-{m.split()[0]}"
                t = _release(store, dist, args)
                assert _tree(dist) == trees[m], "a cold DIST differs from the warm one"
                best[f"cold {m}"] = t
                print(f"AmdSev firmware evicted, {m}: {t:.1f} s", flush=True)
            cb = best["cold sequential (-P 1)"]
            print(f"cold firmware: parallel = {best['cold parallel (default)'] / cb:.2f}x "
                  "sequential")


if __name__ == "__main__":
    main()
