"""Kernel from source: a pinned kernel tarball + config fragments -> a reproducible bzImage.

Steps (in a fresh directory of the store's ``tmp/``):

1. unpack the tarball (Debian ``linux-source-6.12``'s ``usr/src/linux-source-6.12.tar.xz`` or a
   kernel.org ``linux-6.12.y.tar.xz``; its single top directory is stripped);
2. ``make tinyconfig``;
3. merge the fragments in recipe order (a later fragment overrides an earlier one, as
   ``scripts/kconfig/merge_config.sh`` does): every option a fragment names replaces that
   option's line in ``.config``;
4. ``make olddefconfig``, then check that every requested option has the requested value in
   the final ``.config``. Kconfig silently drops an option whose dependencies are off, so a
   dropped option fails the build, naming it and the fragment that asked for it;
5. ``make -jN bzImage`` with ``KBUILD_BUILD_TIMESTAMP`` (from the recipe's source_date_epoch),
   ``KBUILD_BUILD_USER``, ``KBUILD_BUILD_HOST`` and ``KBUILD_BUILD_VERSION`` fixed. Kbuild
   compiles with relative paths and ``-fmacro-prefix-map``, so the build directory does not
   reach the image: the same inputs give the same bzImage in any directory.

The result is cached in the store under :func:`cache_key`: the tarball's sha256, the fragments'
bytes, the epoch, the toolchain versions and :data:`BUILD_SCHEME` (bump it when this module
changes how it builds). The build log is ``logs/kernel-<key>.log`` in the store.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from builder import log
from builder.errors import CCBuildError
from builder.inputs import decode_utf8
from builder.run import run, run_streamed, tool_version
from builder.stages.cached import cached_stage

# Bump when build_kernel changes in a way that could change the output bytes.
BUILD_SCHEME = 1
BASE_CONFIG = "tinyconfig"
BUILD_USER = "ccbuild"
BUILD_HOST = "ccbuild"
BUILD_VERSION = "1"

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
# Lines of kbuild's quiet output that stand for one finished build step (progress only).
_STEP = re.compile(rb"^\s+(CC|AS|LD|AR|HOSTCC|OBJCOPY|GEN|CHK|VDSO\w*|RELOCS|MKPIGGY|ZOFFSET)\s")


@dataclass(frozen=True)
class Fragment:
    """A config fragment: ``name`` as shown in messages and the manifest, its text."""
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class KernelBuildSpec:
    tarball_sha256: str
    fragments: tuple[Fragment, ...]
    source_date_epoch: int

    def identity(self) -> dict:
        # contents only, in merge order: where a fragment lives does not change the kernel
        return {"tarball": self.tarball_sha256, "base": BASE_CONFIG,
                "fragments": [f.sha256 for f in self.fragments],
                "source_date_epoch": self.source_date_epoch}


@dataclass(frozen=True)
class KernelBuildResult:
    bzimage: bytes
    config: str
    seconds: float       # the build's wall time when it ran (informative; cached later)
    cached: bool
    log: Path


# -- fragments and .config ------------------------------------------------------------------------
def parse_config(text: str, name: str, strict: bool = True) -> dict[str, str]:
    """``CONFIG_X=v`` and ``# CONFIG_X is not set`` (value ``n``) lines of a fragment or a
    .config; with ``strict`` any other non-comment line is an error naming ``name:line``."""
    out: dict[str, str] = {}
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if m := _SET.match(line):
            out[m[1]] = m[2]
        elif m := _UNSET.match(line):
            out[m[1]] = "n"
        elif strict and line and not line.startswith("#"):
            raise CCBuildError(f"not a Kconfig line: {line[:80]!r}", f"{name}:{i}",
                               "use CONFIG_NAME=value or '# CONFIG_NAME is not set'")
    return out


def requested_options(fragments: tuple[Fragment, ...]) -> dict[str, tuple[str, str]]:
    """option -> (value, fragment name); a later fragment overrides an earlier one."""
    req: dict[str, tuple[str, str]] = {}
    for f in fragments:
        for k, v in parse_config(f.text, f.name).items():
            req[k] = (v, f.name)
    return req


def merge_config(base: str, requested: dict[str, tuple[str, str]]) -> str:
    """``base`` .config text with every requested option's line replaced (or appended)."""
    keep = []
    for line in base.splitlines():
        s = line.strip()
        m = _SET.match(s) or _UNSET.match(s)
        if m and m[1] in requested:
            continue
        keep.append(line)
    for k, (v, _) in requested.items():
        keep.append(f"# {k} is not set" if v == "n" else f"{k}={v}")
    return "\n".join(keep) + "\n"


def dropped_options(requested: dict[str, tuple[str, str]], final: str) -> list[tuple[str, str]]:
    """(option, fragment) of every requested option whose final value differs."""
    got = parse_config(final, ".config", strict=False)
    return [(k, frag) for k, (v, frag) in requested.items() if got.get(k, "n") != v]


def check_config(requested: dict[str, tuple[str, str]], final: str, where: str) -> None:
    bad = dropped_options(requested, final)
    if bad:
        listed = ", ".join(f"{k} (from {frag})" for k, frag in bad)
        raise CCBuildError(f"kernel fragment options dropped: {listed}", where,
                           "Kconfig turned them off: a 'depends on' is missing; add it to the "
                           "fragment (see the option's Kconfig entry)")


# -- toolchain and cache key ---------------------------------------------------------------------
def _version_line(argv: list[str]) -> str:
    return tool_version(argv, what="kernel build")


def toolchain_versions() -> dict[str, str]:
    """Versions of the tools whose behaviour reaches the bzImage (tool_version remembers each
    by the binary's identity, so asking again runs nothing and notes the lookup for the
    up-to-date record)."""
    return {t: _version_line([t, "--version"])
            for t in ("gcc", "ld", "make", "flex", "bison", "perl", "xz", "tar")}


def cache_key(spec: KernelBuildSpec, tools: dict[str, str]) -> str:
    record = {"scheme": BUILD_SCHEME, "spec": spec.identity(), "tools": dict(sorted(tools.items()))}
    return hashlib.sha256(json.dumps(record, sort_keys=True,
                                     separators=(",", ":")).encode()).hexdigest()


# -- build ---------------------------------------------------------------------------------------
def build_env(epoch: int) -> dict[str, str]:
    return {"KBUILD_BUILD_TIMESTAMP": email.utils.formatdate(epoch, usegmt=True),
            "KBUILD_BUILD_USER": BUILD_USER, "KBUILD_BUILD_HOST": BUILD_HOST,
            "KBUILD_BUILD_VERSION": BUILD_VERSION, "SOURCE_DATE_EPOCH": str(epoch),
            "LOCALVERSION": "", "TZ": "UTC", "LC_ALL": "C", "LANG": "C",
            # a caller's kbuild settings must not leak in
            "ARCH": "x86_64", "CROSS_COMPILE": "", "KCONFIG_CONFIG": ".config",
            "KBUILD_OUTPUT": "", "KCFLAGS": "", "KCPPFLAGS": "", "KAFLAGS": ""}


def build_kernel(tarball: Path, spec: KernelBuildSpec, work: Path, log_path: Path,
                 jobs: int = 2, where: str = "kernel.build") -> tuple[bytes, str]:
    """Unpack, configure, check and build; returns (bzImage bytes, final .config)."""
    src = work / "linux"
    src.mkdir(parents=True)
    env = build_env(spec.source_date_epoch)
    log.info("kernel: unpacking the source")
    run(["tar", "-xf", tarball, "-C", src, "--strip-components=1", "--no-same-owner"],
        log_path=log_path, what="unpack kernel source")
    if not (src / "Makefile").is_file() or not (src / "arch" / "x86").is_dir():
        raise CCBuildError("the tarball is not a Linux source tree (no Makefile, arch/x86)",
                           f"{where}.source")
    make = ["make", "ARCH=x86_64"]
    run_streamed([*make, BASE_CONFIG], cwd=src, env=env, log_path=log_path,
                 what=f"make {BASE_CONFIG}")
    requested = requested_options(spec.fragments)
    cfg = src / ".config"
    cfg.write_text(merge_config(cfg.read_text(), requested))
    run_streamed([*make, "olddefconfig"], cwd=src, env=env, log_path=log_path,
                 what="make olddefconfig")
    final = cfg.read_text()
    check_config(requested, final, where)
    log.info(f"kernel: building bzImage with -j{jobs} (log: {log_path.name})")
    with log.bar(None, "kernel", unit="step") as bar:
        run_streamed([*make, f"-j{jobs}", "bzImage"], cwd=src, env=env, log_path=log_path,
                     what="kernel build", progress=bar, count=_STEP)
    image = src / "arch" / "x86" / "boot" / "bzImage"
    if not image.is_file():
        raise CCBuildError("the kernel build produced no bzImage", f"log: {log_path}")
    return image.read_bytes(), final


def build_cached(store, tarball: Path, spec: KernelBuildSpec, jobs: int = 2,
                 where: str = "kernel.build", force: bool = False) -> KernelBuildResult:
    """The kernel ``spec`` describes: built once, then taken from ``store`` by its cache key."""
    tools = dict(toolchain_versions())
    key = cache_key(spec, tools)
    log_path = store.log_path(f"kernel-{key[:16]}")
    took: list[float] = []

    def build(work: Path):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_bytes(b"")
        t0 = time.monotonic()
        image, config = build_kernel(tarball, spec, work, log_path, jobs=jobs, where=where)
        took.append(time.monotonic() - t0)
        return ({"sha256": image, "config_sha256": config.encode()},
                {"seconds": round(took[0], 1), "tools": tools})

    c = cached_stage(store, "kernel-build", key,
                     {"sha256": "kernel build", "config_sha256": "kernel .config"}, build,
                     force=force)
    return KernelBuildResult(c.outputs["sha256"], c.outputs["config_sha256"].decode(),
                             took[0] if took else float(c.record.get("seconds", 0)), c.hit,
                             log_path)


def toolchain_summary(tools: dict[str, str]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in sorted(tools.items()))


def _display(p: Path, written: str) -> str:
    """A fragment's name in messages: relative to the working directory when inside it."""
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return written


def spec_for_recipe(lr, store, opts) -> tuple[Path, KernelBuildSpec, list[dict]]:
    """The recipe's ``kernel.build`` resolved: the tarball (verified, in the store), the build
    spec and the manifest input records of the source and the fragments."""
    from builder.sources.resolve import resolve
    kb = lr.recipe.kernel.build
    r = resolve(kb.source, opts, "kernel.build.source")
    records = [r.record("kernel-source")]
    frags = []
    for i, rel in enumerate(kb.fragments):
        field = f"kernel.build.fragments[{i}]"
        p = lr.resolve(rel, field)
        text = decode_utf8(lr.read(rel, field, "config fragment"), "config fragment",
                           f"{field}: {rel}")
        f = Fragment(_display(p, rel), text)
        parse_config(text, f.name)
        frags.append(f)
        records.append({"role": "kernel-fragment", "kind": "path", "name": rel, "version": "",
                        "sha256": f.sha256})
    tar_sha = store.put_bytes(r.data)
    spec = KernelBuildSpec(tar_sha, tuple(frags), lr.recipe.source_date_epoch)
    return store.verified_path(tar_sha, "kernel source"), spec, records


def build_for_recipe(lr, store, opts, jobs: int) -> tuple[bytes, list[dict]]:
    """The recipe's ``kernel.build``, built (or taken from the cache). Returns the bzImage and
    the manifest input records (source, fragments, the built kernel with its toolchain)."""
    tarball, spec, records = spec_for_recipe(lr, store, opts)
    res = build_cached(store, tarball, spec, jobs=jobs)
    if not res.cached:
        log.info(f"kernel: built in {res.seconds:.0f}s, {len(res.bzimage)} bytes")
    records.append({"role": "kernel", "kind": "build", "name": "linux",
                    "version": _kernel_version(res.bzimage),
                    "toolchain": toolchain_summary(toolchain_versions()),
                    "config_sha256": hashlib.sha256(res.config.encode()).hexdigest(),
                    "sha256": hashlib.sha256(res.bzimage).hexdigest()})
    return res.bzimage, records


def _kernel_version(image: bytes) -> str:
    from builder.stages.kernel import inspect_kernel
    return inspect_kernel(image, "kernel build").version
