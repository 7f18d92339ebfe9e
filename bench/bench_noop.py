"""The no-op: `ccbuild build recipes/snp.yaml -o OUT` when nothing changed (everything cached, OUT
current), end to end as a CLI process, against `python -c pass` (the interpreter's own start) and
`python -c "import builder.build"` (ccbuild's import floor) measured in the same run; then the same
with every core busy (a load of one spinning process per core). Also counts the subprocesses
the no-op spawns (issue 14: none). Run after `make demo` (or it builds first)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "snp.yaml"
TARGET = 0.3          # seconds, issue 14


def _best(argv: list[str], n: int = 7) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
        best = min(best, time.perf_counter() - t)
    return best


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def _spawns(out: Path) -> list[str]:
    """The external commands a no-op build runs (counted in-process)."""
    code = ("import subprocess, sys\n"
            "seen = []\n"
            "real = subprocess.Popen.__init__\n"
            "def init(self, args, *a, **k):\n"
            "    seen.append(str(args[0] if isinstance(args, (list, tuple)) else args))\n"
            "    return real(self, args, *a, **k)\n"
            "subprocess.Popen.__init__ = init\n"
            "from builder import log\n"
            "from builder.build import BuildOptions, build\n"
            "log.configure(quiet=True)\n"
            f"r = build({str(RECIPE)!r}, BuildOptions(out={str(out)!r}))\n"
            "print(' '.join(seen) if r.up_to_date else 'NOT-UP-TO-DATE')\n")
    cp = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, check=True)
    return cp.stdout.decode().split()


def _measure(out: Path) -> tuple[float, float, float]:
    py = sys.executable
    noop = _best([py, "-m", "builder.cli", "build", str(RECIPE), "-o", str(out)])
    bare = _best([py, "-c", "pass"])
    imports = _best([py, "-c", "import builder.build, builder.cli"])
    return noop, bare, imports


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "snp"
        subprocess.run([sys.executable, "-m", "builder.cli", "build", str(RECIPE), "-o", str(out)],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spawned = _spawns(out)
        print(f"no-op subprocesses: {len(spawned)}"
              + (f" ({', '.join(os.path.basename(s) for s in spawned)})" if spawned else ""))
        for label, load in (("idle", 0), ("loaded", os.cpu_count() or 1)):
            stop = multiprocessing.Event()
            procs = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
                     for _ in range(load)]
            for p in procs:
                p.start()
            try:
                noop, bare, imports = _measure(out)
            finally:
                stop.set()
                for p in procs:
                    p.join()
            print(f"{label} ({load} spinning): no-op build {noop * 1000:.0f} ms "
                  f"(target <= {TARGET * 1000:.0f} ms) = {noop / bare:.1f}x `python -c pass` "
                  f"({bare * 1000:.0f} ms); import floor {imports * 1000:.0f} ms = "
                  f"{imports / bare:.1f}x")


if __name__ == "__main__":
    main()
