"""The no-op: `ccbuild build recipes/snp.yaml -o OUT` when nothing changed (everything cached, OUT
current), end to end as a CLI process, against `python -c pass` (the interpreter's own start) and
`python -c "import builder.build, builder.cli"` (the import floor of a no-op) measured in the same
run; then the same with every core busy (a load of one spinning process per core). The no-op is
the up-to-date record's check (builder/uptodate.py); `--recheck` runs every step of the pipeline
with its caches (the no-op before the record) and is measured beside it. Also counts the
subprocesses both spawn (issue 14: none), splits each into its phases (interpreter, imports,
steps) and measures once more with Python's bytecode cached (as an installed wheel has it; a
checkout run with PYTHONDONTWRITEBYTECODE compiles every module on every start). Run after
`make demo` (or it builds first)."""

from __future__ import annotations

import json
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


def _best(argv: list[str], n: int = 7, env: dict | None = None) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True, env=env)
        best = min(best, time.perf_counter() - t)
    return best


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def _spawns(out: Path, recheck: bool = False) -> list[str]:
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
            f"r = build({str(RECIPE)!r}, BuildOptions(out={str(out)!r}, recheck={recheck}))\n"
            "print(' '.join(seen) if r.up_to_date else 'NOT-UP-TO-DATE')\n")
    cp = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, check=True)
    return cp.stdout.decode().split()


def _measure(out: Path, env: dict | None = None) -> tuple[float, float, float, float]:
    py = sys.executable
    cmd = [py, "-m", "builder.cli", "build", str(RECIPE), "-o", str(out)]
    noop = _best(cmd, env=env)
    recheck = _best(cmd + ["--recheck"], env=env)
    bare = _best([py, "-c", "pass"], env=env)
    imports = _best([py, "-c", "import builder.build, builder.cli"], env=env)
    return noop, recheck, bare, imports


_PHASES = """
import time
t0 = time.perf_counter()
from builder.cli import make_parser
argv = ["build", RECIPE, "-o", OUT]
args = make_parser(argv).parse_args(argv)
t1 = time.perf_counter()
from builder import log
from builder.build import BuildOptions, build
t2 = time.perf_counter()
if RECHECK:   # build() imports the pipeline itself; timed apart here
    import builder.pipeline
t2b = time.perf_counter()
log.configure(quiet=True)
r = build(RECIPE, BuildOptions(out=OUT, recheck=RECHECK))
t3 = time.perf_counter()
assert r.up_to_date
steps = dict(r.timings)
print(json.dumps({"import cli + parse": t1 - t0, "import builder.build": t2 - t1,
                  **({"import builder.pipeline": t2b - t2} if RECHECK else {}),
                  **{f"step {k}": v for k, v in steps.items() if k != "total"},
                  "build() other": (t3 - t2b) - sum(v for k, v in steps.items() if k != "total")}))
"""


def _phases(out: Path, recheck: bool, n: int = 5) -> dict[str, float]:
    """The best time of each phase of an in-process no-op (the interpreter's start is
    `python -c pass`)."""
    code = (f"import json\nRECIPE = {str(RECIPE)!r}\nOUT = {str(out)!r}\n"
            f"RECHECK = {recheck}\n" + _PHASES)
    best: dict[str, float] = {}
    for _ in range(n):
        cp = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            check=True)
        for k, v in json.loads(cp.stdout.decode().splitlines()[-1]).items():
            best[k] = min(best.get(k, v), v)
    return best


def _bytecode_env(d: str) -> dict:
    """The environment with Python's bytecode cache written to (and read from) ``d``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = d
    return env


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "snp"
        subprocess.run([sys.executable, "-m", "builder.cli", "build", str(RECIPE), "-o", str(out)],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for label, recheck in (("no-op", False), ("--recheck", True)):
            spawned = _spawns(out, recheck)
            print(f"{label} subprocesses: {len(spawned)}"
                  + (f" ({', '.join(os.path.basename(s) for s in spawned)})" if spawned else ""))
        pyc = tempfile.mkdtemp(prefix="pyc-", dir=d)
        subprocess.run([sys.executable, "-m", "builder.cli", "build", str(RECIPE), "-o",
                        str(out)], cwd=REPO, check=True, env=_bytecode_env(pyc),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)   # fills the cache
        for label, load in (("idle", 0), ("loaded", os.cpu_count() or 1)):
            stop = multiprocessing.Event()
            procs = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
                     for _ in range(load)]
            for p in procs:
                p.start()
            try:
                noop, recheck, bare, imports = _measure(out)
                cached, crecheck, cbare, cimports = _measure(out, _bytecode_env(pyc))
                phases = ({label: _phases(out, label == "--recheck")
                           for label in ("no-op", "--recheck")} if load == 0 else None)
            finally:
                stop.set()
                for p in procs:
                    p.join()
            print(f"{label} ({load} spinning): no-op build {noop * 1000:.0f} ms "
                  f"(target <= {TARGET * 1000:.0f} ms) = {noop / bare:.1f}x `python -c pass` "
                  f"({bare * 1000:.0f} ms); import floor {imports * 1000:.0f} ms = "
                  f"{imports / bare:.1f}x; --recheck {recheck * 1000:.0f} ms = "
                  f"{recheck / bare:.1f}x")
            print(f"  bytecode cached: no-op build {cached * 1000:.0f} ms = "
                  f"{cached / cbare:.1f}x `python -c pass` ({cbare * 1000:.0f} ms); import floor "
                  f"{cimports * 1000:.0f} ms = {cimports / cbare:.1f}x; --recheck "
                  f"{crecheck * 1000:.0f} ms = {crecheck / cbare:.1f}x")
            for what, ph in (phases or {}).items():
                total = sum(ph.values()) + bare
                rows = [("interpreter (python -c pass)", bare), *ph.items()]
                print(f"  phases of {what} (best of 5, in-process; share of their sum "
                      f"{total * 1000:.0f} ms):")
                for k, v in rows:
                    print(f"    {k:<30} {v * 1000:6.1f} ms  {v / total:5.1%}")


if __name__ == "__main__":
    main()
