"""Running external tools: argument lists only, echoed with --verbose, output captured to a log."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from builder import log
from builder.errors import CCBuildError


def run(argv: list[str | os.PathLike], *, cwd: Path | None = None, env: dict | None = None,
        log_path: Path | None = None, what: str | None = None, check: bool = True,
        input: bytes | None = None, inherit_env: bool = True) -> subprocess.CompletedProcess:
    """Run ``argv``; on failure raise a one-line CCBuildError naming the command (and the log).

    ``env`` is added to this process's environment, or with ``inherit_env=False`` is the whole
    environment. Output (stdout and stderr) is captured (appended to ``log_path`` when given)
    and returned."""
    args = [str(a) for a in argv]
    log.echo_command(args)
    full_env = None
    if env is not None:
        full_env = dict(os.environ) if inherit_env else {}
        full_env.update(env)
    try:
        cp = subprocess.run(args, cwd=cwd, env=full_env, input=input,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except FileNotFoundError:
        raise CCBuildError(f"{args[0]} is not installed", what or args[0],
                           "run 'make deps' (scripts/install-deps)") from None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as f:
            f.write(b"+ " + " ".join(args).encode() + b"\n" + cp.stdout)
    if check and cp.returncode != 0:
        tail = cp.stdout.decode(errors="replace").strip().splitlines()[-1:] or [""]
        where = f"log: {log_path}" if log_path else None
        raise CCBuildError(f"{what or args[0]} failed (exit {cp.returncode}): {tail[0][:200]}", where)
    return cp


def run_streamed(argv: list[str | os.PathLike], *, cwd: Path, log_path: Path, what: str,
                 env: dict | None = None, unset: tuple[str, ...] = (), progress=None,
                 count: "re.Pattern[bytes] | None" = None) -> None:
    """Run a long ``argv`` with its output streamed into ``log_path`` (never held in memory);
    each output line matching ``count`` advances ``progress`` (a :func:`builder.log.bar`).
    ``env`` is added to this process's environment, after removing the ``unset`` names.
    On failure the error quotes the last error lines and names the log."""
    import collections
    args = [str(a) for a in argv]
    log.echo_command(args)
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    full_env.update(env or {})
    tail: collections.deque = collections.deque(maxlen=100)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab", buffering=0) as lf:      # unbuffered: `tail -f` follows it
        lf.write(b"+ " + " ".join(args).encode() + b"\n")
        try:
            proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise CCBuildError(f"{args[0]} is not installed", what,
                               "run 'make deps' (scripts/install-deps)") from None
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lf.write(line)
                tail.append(line)
                if progress is not None and count is not None and count.search(line):
                    progress.update(1)
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if code != 0:
        lines = [ln for ln in (b.decode(errors="replace").strip() for b in tail) if ln]
        errors = [ln for ln in lines if re.search(r"\berror\b", ln, re.I)]
        shown = " | ".join(errors[-2:] if errors else lines[-3:])[:300]
        raise CCBuildError(f"{what} failed (exit {code}): {shown}", f"log: {log_path}")


def tool_version(argv: list[str], pattern: str | None = None, what: str | None = None) -> str:
    """The first non-empty line a tool prints about its version (the first matching ``pattern``,
    if given and any does): part of the cache keys of builds that tool takes part in."""
    try:
        cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    except FileNotFoundError:
        raise CCBuildError(f"{argv[0]} is not installed", what or argv[0],
                           "run 'make deps' (scripts/install-deps)") from None
    lines = [ln.strip() for ln in cp.stdout.decode(errors="replace").splitlines() if ln.strip()]
    if pattern:
        lines = [ln for ln in lines if re.search(pattern, ln, re.I)] or lines
    return lines[0] if lines else ""
