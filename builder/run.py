"""Running external tools: argument lists only, echoed with --verbose, output captured to a log."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from builder import deps, log
from builder.errors import CCBuildError

#: The Debian package that provides each external tool ccbuild (or a build it drives) runs: a
#: missing tool's error names it. scripts/install-deps installs them all.
DEBIAN_PACKAGES = {
    "gcc": "gcc", "cc": "gcc", "musl-gcc": "musl-tools", "ld": "binutils", "make": "make",
    "patch": "patch", "nasm": "nasm", "iasl": "acpica-tools", "flex": "flex", "bison": "bison",
    "bc": "bc", "perl": "perl-base", "bash": "bash", "tar": "tar", "xz": "xz-utils",
    "zstd": "zstd", "gzip": "gzip", "cpio": "cpio", "python3": "python3",
    "mkfs.erofs": "erofs-utils", "fsck.erofs": "erofs-utils", "mkfs.ext4": "e2fsprogs",
    "mke2fs": "e2fsprogs", "debugfs": "e2fsprogs", "e2fsck": "e2fsprogs",
    "veritysetup": "cryptsetup-bin", "qemu-system-x86_64": "qemu-system-x86",
    "apt-get": "apt", "apt-cache": "apt", "apt-helper": "apt", "dpkg": "dpkg",
    "dpkg-deb": "dpkg", "dpkg-source": "dpkg-dev",
}


def debian_package(tool: str | os.PathLike) -> str | None:
    """The Debian package providing ``tool`` (a name or a path), None if unknown."""
    return DEBIAN_PACKAGES.get(Path(tool).name)


def not_installed(tool: str | os.PathLike, what: str | None = None) -> CCBuildError:
    """The one-line error for a tool that is not on PATH, naming the Debian package to install."""
    name = Path(tool).name
    pkg = debian_package(tool)
    hint = (f"install the Debian package {pkg} (apt-get install {pkg}; 'make deps' installs "
            "everything ccbuild needs)" if pkg else "run 'make deps' (scripts/install-deps)")
    return CCBuildError(f"{name} is not installed", what, hint)


#: Where administration tools (mkfs.*, debugfs, veritysetup) live on Debian: not on an ordinary
#: user's PATH, yet they run fine unprivileged on image files.
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def _executable(tool: str) -> str:
    """``tool`` as given, or its path in an sbin directory when it is a bare name that is not on
    PATH but is there (an ordinary user's PATH has no sbin)."""
    if os.sep in tool or deps.which(tool):   # noted: a tool that appears on PATH changes this
        return tool
    found = deps.which(tool, path=_SBIN)
    return found[0] if found else tool


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
        cp = subprocess.run([_executable(args[0]), *args[1:]], cwd=cwd, env=full_env, input=input,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except FileNotFoundError:
        raise not_installed(args[0], what) from None
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
            proc = subprocess.Popen([_executable(args[0]), *args[1:]], cwd=cwd, env=full_env,
                                    stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise not_installed(args[0], what) from None
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lf.write(line)
                tail.append(line)
                if progress is not None:   # a tqdm bar, or a log.Heartbeat without a terminal
                    if count is not None and count.search(line):
                        progress.update(1)
                    elif hasattr(progress, "line"):
                        progress.line()    # log lines count as life too
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
    if given and any does): part of the cache keys of builds that tool takes part in.

    Cached with the binary's identity (resolved path, size, mtime, inode, device) in this process
    and in the store directory (``tool-versions.json``), so a rebuild with nothing changed runs no
    tool: a replaced or upgraded binary has another identity and is asked again."""
    key = _tool_key(argv, pattern)
    if key is not None:
        cached = _tool_cache().get(key)
        if isinstance(cached, str):
            return cached
    try:
        cp = subprocess.run([_executable(str(argv[0])), *argv[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, check=False)
    except FileNotFoundError:
        raise not_installed(argv[0], what) from None
    lines = [ln.strip() for ln in cp.stdout.decode(errors="replace").splitlines() if ln.strip()]
    if pattern:
        lines = [ln for ln in lines if re.search(pattern, ln, re.I)] or lines
    version = lines[0] if lines else ""
    if key is not None and _tool_key(argv, pattern) == key:   # not replaced while it ran
        _tool_cache_put(key, version)
    return version


TOOL_CACHE_NAME = "tool-versions.json"
_TOOL_CACHE_MAX = 4096
_tool_memo: dict = {}


def _tool_key(argv: list[str], pattern: str | None) -> str | None:
    """The identity of the binary ``argv[0]`` resolves to, with the arguments and pattern;
    None when it cannot be found (tool_version then runs it and reports it missing)."""
    import hashlib
    import json
    found = deps.which(_executable(str(argv[0])))
    if found is None:
        return None
    exe, real, size, mtime, ino, dev, ctime = found
    ident = [[str(a) for a in argv], pattern, exe, real, size, mtime, ino, dev, ctime]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()


def _tool_cache_path() -> Path:
    from builder.store import default_root
    return default_root() / TOOL_CACHE_NAME


def _tool_cache() -> dict:
    """The persistent cache (read once per process): a damaged or foreign file is ignored."""
    if "entries" not in _tool_memo:
        entries: dict = {}
        try:
            from builder.inputs import read_regular
            import json
            doc = json.loads(read_regular(_tool_cache_path(), "manifest", TOOL_CACHE_NAME))
            if isinstance(doc, dict) and doc.get("schema") == 1 and \
                    isinstance(doc.get("entries"), dict):
                entries = {k: v for k, v in doc["entries"].items()
                           if isinstance(k, str) and re.fullmatch(r"[0-9a-f]{64}", k)
                           and isinstance(v, str) and len(v) <= 4096}
        except (CCBuildError, OSError, ValueError):
            pass
        _tool_memo["entries"] = entries
    return _tool_memo["entries"]


def _tool_cache_put(key: str, version: str) -> None:
    """Remember ``version``; written atomically (a temporary and a rename), best effort."""
    import json
    entries = _tool_cache()
    entries[key] = version
    while len(entries) > _TOOL_CACHE_MAX:
        entries.pop(next(iter(entries)))
    path = _tool_cache_path()
    tmp = path.with_name(f".{TOOL_CACHE_NAME}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump({"schema": 1, "entries": entries}, f, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass



#: The external tools ``ccbuild --version`` reports, with the arguments that print a version.
REPORTED_TOOLS = (
    ("musl-gcc", ["--version"]), ("gcc", ["--version"]), ("mkfs.erofs", ["--version"]),
    ("mkfs.ext4", ["-V"]), ("veritysetup", ["--version"]), ("qemu-system-x86_64", ["--version"]),
    ("apt-get", ["--version"]),
)


def found_tools() -> list[tuple[str, str]]:
    """(tool, version line or 'not found (Debian package P)') for :data:`REPORTED_TOOLS`. A tool
    that prints no version (mkfs.erofs before 1.6) is reported with its package's version."""
    out = []
    for tool, args in REPORTED_TOOLS:
        pkg = debian_package(tool)
        try:
            line = tool_version([tool, *args], pattern=r"\d+\.\d+")
        except CCBuildError:
            out.append((tool, "not found" + (f" (Debian package {pkg})" if pkg else "")))
            continue
        if not re.search(r"\d+\.\d+", line) and pkg:
            try:
                v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], check=False,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
            except FileNotFoundError:
                v = b""
            line = f"{pkg} {v.decode(errors='replace').strip()}" if v.strip() else "version unknown"
        out.append((tool, line))
    return out
