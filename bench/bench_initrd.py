"""Initrd packing + gzip -9 against ``find . | sort | cpio -o -H newc | gzip -9`` on the same tree.

The tree is realistic in size and mix: the test agent built static with glibc when possible
(~700 KB of machine code; the musl build is far smaller), plus generated configuration-like text
and binary blobs, ~4 MB in all. Both sides read the tree from disk. The ratio is
ours / baseline over the median of several runs; the target is <= 1.0x (not slower).
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from builder.stages import agent, initrd

EPOCH = 1700000000
RUNS = 7


def make_tree(root: Path) -> bytes:
    """Write the bench tree under ``root``; return the agent bytes (also at ``root/init``)."""
    try:
        built = agent.build_test_agent(agent.default_source(), root.parent / "agent-build",
                                       compiler="gcc")
    except Exception:
        built = agent.build_test_agent(agent.default_source(), root.parent / "agent-build")
    (root / "init").write_bytes(built.data)
    rng = random.Random(1)
    words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 12))))
             for _ in range(3000)]
    for d in range(12):
        sub = root / "usr" / "share" / f"pkg{d:02d}"
        sub.mkdir(parents=True)
        for i in range(20):
            lines = (" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) + "\n"
                     for _ in range(rng.randint(50, 400)))
            (sub / f"conf{i:02d}.txt").write_text("".join(lines))
        (sub / "blob.bin").write_bytes(rng.randbytes(rng.randint(20_000, 120_000)))
    return built.data


def ours(root: Path) -> bytes:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath, name)
            rel = "/" + p.relative_to(root).as_posix()
            if rel != "/init":
                files.append(initrd.File(rel, p.read_bytes(), 0o644))
    spec = initrd.InitrdSpec(agent=(root / "init").read_bytes(), compression="gzip", files=tuple(files))
    return initrd.build_initrd(spec, EPOCH)


def baseline(root: Path) -> bytes:
    return subprocess.run(
        ["sh", "-c", "find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9"],
        cwd=root, check=True, capture_output=True).stdout


def _median_time(fn, root: Path) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(RUNS):
        t0 = time.perf_counter()
        size = len(fn(root))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), size


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ccbuild-bench-") as tmp:
        root = Path(tmp) / "tree"
        root.mkdir()
        make_tree(root)
        total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        ours(root), baseline(root)                      # warm the page cache and imports
        t_ours, s_ours = _median_time(ours, root)
        t_base, s_base = _median_time(baseline, root)
    print(f"initrd tree: {total / 1e6:.2f} MB, median of {RUNS} runs")
    print(f"  ccbuild pack + gzip -9:                 {t_ours * 1000:7.1f} ms  -> {s_ours} bytes")
    print(f"  find | sort | cpio -o -H newc | gzip -9: {t_base * 1000:7.1f} ms  -> {s_base} bytes")
    print(f"  ratio ccbuild/baseline: {t_ours / t_base:.2f}x (target <= 1.0x)")


if __name__ == "__main__":
    main()
