"""Console logging: step timings, optional command echo, progress bars only on a terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterator

_state = {"verbose": False, "debug": False, "quiet": False}


def configure(verbose: bool = False, debug: bool = False, quiet: bool = False) -> None:
    _state.update(verbose=verbose or debug, debug=debug, quiet=quiet)


def verbose() -> bool:
    return _state["verbose"]


def info(msg: str) -> None:
    if not _state["quiet"]:
        print(msg, file=sys.stderr, flush=True)


def echo_command(argv: list[str]) -> None:
    """Echo an external command (``--verbose``) before it runs."""
    if _state["verbose"]:
        import shlex
        info("+ " + shlex.join(str(a) for a in argv))


def progress_enabled() -> bool:
    """Bars only on an interactive terminal, never in CI."""
    return (not _state["quiet"] and sys.stderr.isatty() and not os.environ.get("CI"))


def bar(total: int | None, desc: str, unit: str = "B"):
    """A tqdm bar on a terminal, a no-op object elsewhere."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", leave=False,
                disable=not progress_enabled(), file=sys.stderr)


@contextlib.contextmanager
def step(name: str, timings: list | None = None) -> Iterator[None]:
    """Log a pipeline step with its duration; append (name, seconds) to ``timings``."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        dt = time.monotonic() - t0
        if timings is not None:
            timings.append((name, dt))
        if _state["verbose"]:
            info(f"  {name}: {dt:.2f}s")
