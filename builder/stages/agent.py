"""Agent stage: the binary that becomes the initrd's ``/init``.

Two ways to obtain it:

* a pinned binary (the real Kata agent in production) whose bytes the source layer already fetched:
  :func:`pinned_agent` checks its sha256 and that it is a static ELF executable;
* the small test agent in C shipped as package data (``builder/data/agent/``), built static
  with the host compiler: :func:`build_test_agent`. The build is reproducible (fixed flags, no
  paths or dates compiled in, stripped), and the toolchain identity is returned so it can go
  into the manifest and cache key.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from builder import __version__, deps
from builder.errors import CCBuildError, FormatError
from builder.formats.bytesreader import take, u16, u32, u64
from builder.run import run, tool_version
from builder.stages.cached import cached_stage

AGENT_NAME = "ccbuild-test-agent"
SOURCE_NAME = AGENT_NAME + ".c"

#: Compilers tried in order: musl gives a ~30 KB static binary, glibc static ~700 KB.
COMPILERS = ("musl-gcc", "gcc")

#: Fixed flags. Together with building in a scratch directory under a fixed relative name they
#: make the output independent of where and when it is built.
CFLAGS = ("-static", "-Os", "-s", "-std=c99", "-D_DEFAULT_SOURCE", "-Wall", "-Werror",
          "-fno-ident", "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none")


@dataclass(frozen=True)
class AgentBinary:
    """The agent's bytes plus what produced them (for the manifest and the cache key)."""

    data: bytes
    sha256: str
    origin: str                 # "built" | "pinned"
    version: str = ""           # compiled-in version of the test agent
    toolchain: str = ""         # compiler and C library identity, "" for pinned binaries
    argv: tuple[str, ...] = ()  # the compile command (relative paths only)


def default_source() -> Path:
    """The test agent's C source: package data (``builder/data/agent/``), found through
    importlib.resources, so an installed wheel has it as well as a checkout."""
    return Path(str(resources.files("builder") / "data" / "agent" / SOURCE_NAME))


def _run(argv: list[str], cwd: Path | None = None, log: Path | None = None) -> str:
    """Run one external command in :func:`_clean_env` through builder.run, output captured
    (appended to ``log``); a failure quotes its first error line."""
    cp = run(argv, cwd=cwd, env=_clean_env(), inherit_env=False, log_path=log, check=False)
    text = cp.stdout.decode(errors="replace")
    if cp.returncode != 0:
        lines = text.strip().splitlines() or ["(no output)"]
        first = next((ln for ln in lines if "error" in ln.lower()), lines[-1])
        raise CCBuildError(f"{argv[0]} failed: {first.strip()}", where=str(cwd) if cwd else None,
                           hint="see the build log" if log else None)
    return text


def _clean_env() -> dict[str, str]:
    """A fixed environment: compiler messages and behaviour must not depend on the caller's."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
    for k in ("REALGCC",):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def find_compiler(preferred: str | None = None) -> str:
    """The compiler to use: ``preferred`` if given, else the first of :data:`COMPILERS` found."""
    for name in ((preferred,) if preferred else COMPILERS):
        if deps.which(name):
            return name
    raise CCBuildError(f"no C compiler found (tried {', '.join((preferred,) if preferred else COMPILERS)})",
                       hint="install musl-tools (preferred) or gcc")


def toolchain_identity(compiler: str) -> str:
    """Compiler, linker and (for musl-gcc) C library versions: one line each.

    Everything here goes into the cache key: a different toolchain may give different bytes."""
    lines = [tool_version([compiler, "--version"], what="the agent build")]
    ld = tool_version([compiler, "-print-prog-name=ld"])
    if ld and deps.which(ld):
        lines.append(tool_version([ld, "--version"]))
    if "musl" in Path(compiler).name:
        lines.append(_musl_version())
    return "\n".join(lines)


def _musl_version() -> str:
    """musl's dynamic loader prints its version when run without arguments (exit status 1)."""
    loader = Path(f"/lib/ld-musl-{platform.machine()}.so.1")
    if not deps.exists(loader):
        return "musl (version unknown)"
    line = tool_version([str(loader)], r"^Version ")
    return "musl " + line.split()[1] if line.startswith("Version ") else "musl (version unknown)"


def build_test_agent(src: Path, workdir: Path, log: Path | None = None, *,
                     version: str = __version__, compiler: str | None = None) -> AgentBinary:
    """Compile the test agent from ``src`` in ``workdir`` (created if needed).

    The source is copied to ``workdir/ccbuild-test-agent.c`` and compiled there with relative
    paths and ``-ffile-prefix-map``, so the bytes do not depend on either directory. ``log``
    (a file) receives every command and its output. Returns the binary and the toolchain identity.
    """
    src = Path(src)
    try:
        source = src.read_bytes()
    except OSError as e:
        raise CCBuildError(f"cannot read the agent source: {e.strerror}", where=str(src))
    if not version or any(c in version for c in '"\\\n') or not version.isprintable():
        raise CCBuildError(f"bad agent version string {version!r}",
                           hint="use printable characters without quotes or backslashes")
    cc = find_compiler(compiler)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / SOURCE_NAME).write_bytes(source)
    out = workdir / AGENT_NAME
    out.unlink(missing_ok=True)
    argv = [cc, *CFLAGS, f"-ffile-prefix-map={workdir.resolve()}=.",
            f"-DCCBUILD_AGENT_VERSION=\"{version}\"", "-o", AGENT_NAME, SOURCE_NAME]
    toolchain = toolchain_identity(cc)
    _run(argv, cwd=workdir, log=log)
    data = out.read_bytes()
    check_static_elf(data, AGENT_NAME)
    recorded = tuple(a for a in argv if not a.startswith("-ffile-prefix-map="))
    return AgentBinary(data=data, sha256=hashlib.sha256(data).hexdigest(), origin="built",
                       version=version, toolchain=toolchain, argv=recorded)


def cache_key(source: bytes, toolchain: str, version: str = __version__) -> str:
    """Everything that reaches the test agent's bytes: source, flags, toolchain, version."""
    return hashlib.sha256(json.dumps([source.hex(), list(CFLAGS), toolchain, version]).encode()
                          ).hexdigest()


def build_cached(store, src: Path | None = None, compiler: str | None = None
                 ) -> tuple[bytes, str]:
    """The test agent (``src``, default :func:`default_source`) built once, then taken from
    ``store`` by its :func:`cache_key`. Returns the binary and the toolchain identity."""
    src = Path(src) if src is not None else default_source()
    cc = find_compiler(compiler)
    toolchain = toolchain_identity(cc)

    def build(work: Path):
        built = build_test_agent(src, work, store.log_path("test-agent"), compiler=cc)
        return {"sha256": built.data}, {}

    c = cached_stage(store, "agent-build", cache_key(src.read_bytes(), toolchain),
                     {"sha256": "test agent build"}, build)
    return c.outputs["sha256"], toolchain


def pinned_agent(data: bytes, sha256: str, name: str = "agent") -> AgentBinary:
    """A pinned agent binary: its sha256 must match and it must be a static ELF executable."""
    got = hashlib.sha256(data).hexdigest()
    if got != sha256.lower():
        raise CCBuildError(f"agent {name}: sha256 {got} does not match the pin {sha256.lower()}",
                           hint="re-pin the agent or supply the right file")
    check_static_elf(data, name)
    return AgentBinary(data=bytes(data), sha256=got, origin="pinned")


# ELF constants (System V gABI)
_ET_EXEC, _ET_DYN = 2, 3
_PT_INTERP = 3


def check_static_elf(data: bytes, name: str) -> None:
    """Refuse anything that cannot run as /init of an initrd without libraries: not ELF, not an
    executable, or dynamically linked (has a PT_INTERP program header)."""
    if bytes(data[:4]) != b"\x7fELF":
        raise CCBuildError(f"agent {name} is not an ELF executable",
                           hint="the initrd's /init must be a static ELF binary")
    try:
        ei_class = data[4]
        if ei_class not in (1, 2) or data[5] != 1:
            raise FormatError(f"agent {name}: unsupported ELF class/byte order {ei_class}/{data[5]}", 4)
        is64 = ei_class == 2
        e_type = u16(data, 16, "e_type")
        if e_type not in (_ET_EXEC, _ET_DYN):
            raise CCBuildError(f"agent {name} is an ELF file of type {e_type}, not an executable")
        phoff = u64(data, 0x20, "e_phoff") if is64 else u32(data, 0x1C, "e_phoff")
        phentsize = u16(data, 0x36 if is64 else 0x2A, "e_phentsize")
        phnum = u16(data, 0x38 if is64 else 0x2C, "e_phnum")
        for i in range(phnum):
            off = phoff + i * phentsize
            if u32(data, off, f"program header {i}") == _PT_INTERP:
                p_off = u64(data, off + 8, "p_offset") if is64 else u32(data, off + 4, "p_offset")
                p_sz = u64(data, off + 32, "p_filesz") if is64 else u32(data, off + 16, "p_filesz")
                interp = take(data, p_off, p_sz, "PT_INTERP").rstrip(b"\0").decode(errors="replace")
                raise CCBuildError(f"agent {name} is dynamically linked (interpreter {interp})",
                                   hint="the initrd carries no libraries; use a statically linked agent")
    except IndexError:
        raise FormatError(f"agent {name}: truncated ELF header", 0)
