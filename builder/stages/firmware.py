"""Firmware stage: a prebuilt OVMF/TDVF image, or one built from pinned EDK2 source, then checked
for the metadata its platform needs.

An EDK2 build descriptor (``firmware/*.yaml``) pins Debian's ``edk2`` source package (orig +
debian tarballs by sha256), names the platform .dsc, the toolchain tag, target, arch, the ``-D``
defines, empty placeholder files to create (AmdSev's ``Grub/grub.efi``) and the output file under
``Build/``; once measured reproducible it also pins the output's sha256.

The build: unpack the orig tarball (it carries the submodules) and the debian tarball into
``<workdir>/edk2``, apply ``debian/patches/series`` in order with ``patch``, ``make -C BaseTools``,
then EDK2's ``build`` with ``edksetup.sh`` sourced. Every input of the output bytes is in
:func:`cache_key`: the descriptor, the tarballs' sha256s, the toolchain versions and
:data:`BUILD_SCHEME` (bump it when this module changes how it builds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import hashlib
import json
import os
import re
import secrets
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

from builder import log
from builder.errors import CCBuildError, FormatError
from builder.formats.ovmf import has_kernel_hashes, parse_sev_metadata
from builder.formats.tdvf import has_tdvf_metadata
from builder.inputs import read_regular
from builder.run import run, run_streamed, tool_version
from builder.safeyaml import load_yaml
from builder.schema import Ctx, SchemaError, build, doc, join, render_reference, short
from builder.sources.debian import fetch_source
from builder.stages.cached import cached_stage
from builder.store import sha256_file

# Bump when build_edk2 changes in a way that could change the output bytes.
# 2: the constant-length workspace path (see _fixed_length_workspace).
BUILD_SCHEME = 2

Platform = Literal["snp", "tdx"]
PLATFORMS: tuple[str, ...] = typing.get_args(Platform)

# The build to point users at when a firmware lacks what its platform needs.
SUGGESTED_BUILD = {
    "snp": ("AmdSevX64", "firmware/amdsev.yaml"),
    "tdx": ("IntelTdxX64", "firmware/inteltdx.yaml"),
}

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DEFINE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~_-]*")
_MODULE_LINE = re.compile(rb"^Building \.\.\. ")

# Environment variables of a previous EDK2 setup that must not leak into ours.
_EDK2_ENV = ("WORKSPACE", "EDK_TOOLS_PATH", "EDK_TOOLS_BIN", "CONF_PATH", "PACKAGES_PATH",
             "EFI_SOURCE", "EDK_SOURCE", "ECP_SOURCE", "PYTHONPATH", "ELF_PACKAGE_METADATA",
             # an outer make's jobserver and flags (e.g. under 'make demo')
             "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS")


# -- descriptor ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourcePin:
    """A Debian source package and the sha256 of each tarball the build needs."""
    package: str
    version: str
    suite: str
    file_pins: tuple[tuple[str, str], ...]  # (file name, sha256), sorted

    @property
    def files(self) -> dict[str, str]:
        return dict(self.file_pins)

    def tarball(self, kind: str) -> str:
        """The file name of the ``orig`` or ``debian`` tarball."""
        for name, _ in self.file_pins:
            if f".{kind}.tar." in name:
                return name
        raise KeyError(kind)  # load_descriptor guarantees both exist


@dataclass(frozen=True)
class FirmwareBuild:
    name: str
    platform: str
    source: SourcePin
    dsc: str
    arch: str
    toolchain: str
    target: str
    defines: tuple[tuple[str, str], ...]
    placeholders: tuple[str, ...]
    output: str
    modules: int | None = None  # progress-bar length only; not an input of the output
    sha256: str | None = None   # expected output; a check, not an input
    path: str = field(default="", compare=False)  # the descriptor file, for messages

    def build_args(self, jobs: int) -> list[str]:
        args = ["-a", self.arch, "-t", self.toolchain, "-b", self.target, "-p", self.dsc,
                "-n", str(jobs)]
        for k, v in self.defines:
            args += ["-D", f"{k}={v}"]
        return args

    def identity(self) -> dict[str, Any]:
        """Everything in the descriptor that determines the output bytes."""
        return {
            "name": self.name, "platform": self.platform,
            "source": {"package": self.source.package, "version": self.source.version,
                       "suite": self.source.suite, "files": self.source.files},
            "dsc": self.dsc, "arch": self.arch, "toolchain": self.toolchain,
            "target": self.target, "defines": dict(self.defines),
            "placeholders": list(self.placeholders), "output": self.output,
        }


class DescriptorError(SchemaError):
    """A firmware descriptor mistake: ``<file>: <key>: <what>``."""


def _relpath_error(value: str, suffix: str | None = None) -> str | None:
    """Why ``value`` is not a normalized relative path inside the EDK2 tree (None if it is)."""
    p = Path(value)
    if p.is_absolute() or ".." in p.parts or value != p.as_posix():
        return f"must be a normalized relative path inside the EDK2 tree, not {short(value)}"
    if suffix and not value.endswith(suffix):
        return f"must name a {suffix} file"
    return None


@dataclass(frozen=True)
class SourceSpec:
    """`source`: the Debian source package the build unpacks."""
    package: str = doc("Debian source package name (`edk2`)")
    version: str = doc("its exact Debian version")
    suite: str = doc("the suite apt resolves it in (e.g. `trixie`)")
    files: dict[str, str] = doc("tarball file name -> sha256 (64 lowercase hex digits); the "
                                "`*.orig.tar.*` (with the submodules) and `*.debian.tar.*` "
                                "tarballs are required")

    def validate(self, ctx: Ctx, where: str) -> None:
        if not self.files:
            ctx.fail(join(where, "files"), "required (a mapping of tarball file name to sha256)")
        for name, digest in self.files.items():
            if not _FILE_NAME.fullmatch(name):
                ctx.fail(join(where, "files"), f"{short(name)} is not a plain file name")
            if not _HEX64.fullmatch(digest):
                ctx.fail(join(where, f"files.{name}"),
                         "must be a sha256 (64 lowercase hex digits)")
        for kind in ("orig", "debian"):
            if not any(f".{kind}.tar." in n for n in self.files):
                ctx.fail(join(where, "files"), f"needs the {kind} tarball (*.{kind}.tar.*)")


@dataclass(frozen=True)
class FirmwareDescriptor:
    """One EDK2 build (`firmware/*.yaml`)."""
    name: str = doc("build name (messages, the store's log name)")
    platform: Platform = doc("the TEE the firmware is for; the built image is "
                                          "checked for that platform's metadata")
    source: SourceSpec = doc("the pinned Debian source package")
    dsc: str = doc("the platform description, relative to the EDK2 tree (`*.dsc`)")
    arch: Literal["X64"] = doc("EDK2 `build -a`")
    toolchain: Literal["GCC5", "GCC"] = doc("EDK2 `build -t`")
    target: Literal["RELEASE", "DEBUG", "NOOPT"] = doc("EDK2 `build -b`")
    output: str = doc("the image the build leaves, relative to the EDK2 tree (under `Build/`)")
    defines: dict[str, str | bool | int] | None = doc(
        "`build -D NAME=value` in order; true/false become TRUE/FALSE; a value is one word",
        default_factory=dict)
    placeholders: tuple[str, ...] | None = doc(
        "empty files created in the tree before the build (AmdSev's `Grub/grub.efi`)",
        default=())
    modules: int | None = doc("number of modules the build prints (progress bar length only)",
                              default=None)
    sha256: str | None = doc("sha256 of the output once measured reproducible (a check, not an "
                             "input: a different output is an error)", default=None)
    measured_with: dict[str, str] | None = doc("tool -> version the sha256 was measured with "
                                               "(informative; named when the output differs)",
                                               default=None)

    def validate(self, ctx: Ctx, where: str) -> None:
        for name, value in (self.defines or {}).items():
            if not _DEFINE_NAME.fullmatch(name):
                ctx.fail("defines", f"{short(name)} is not a valid -D name")
            if isinstance(value, str) and (not value or any(c.isspace() for c in value)):
                ctx.fail(f"defines.{name}", "must be TRUE/FALSE, a number or a word without spaces")
        for i, p in enumerate(self.placeholders or ()):
            if why := _relpath_error(p):
                ctx.fail(f"placeholders[{i}]", why)
        if why := _relpath_error(self.dsc, ".dsc"):
            ctx.fail("dsc", why)
        if why := _relpath_error(self.output):
            ctx.fail("output", why)
        if not self.output.startswith("Build/"):
            ctx.fail("output", f"must be a file under Build/, not {short(self.output)}")
        if self.modules is not None and self.modules <= 0:
            ctx.fail("modules", "must be a positive integer")
        if self.sha256 is not None and not _HEX64.fullmatch(self.sha256):
            ctx.fail("sha256", "must be a sha256 (64 lowercase hex digits) or null")


def _non_empty_strings(ctx: Ctx, cls, raw: Mapping, where: str = "") -> None:
    """Every string field of ``cls`` present in ``raw`` is a non-empty string (the schema checks
    the rest; this keeps the descriptor's message for a missing value or a wrong type)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name in raw and (tp is str or typing.get_origin(tp) is Literal):
            v = raw[f.name]
            if not isinstance(v, str) or not v.strip():
                ctx.fail(join(where, f.name), f"must be a non-empty string, not {type(v).__name__}")


def _define_value(v: str | bool | int) -> str:
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    return str(v)


def parse_descriptor(raw: Any, display: str) -> FirmwareBuild:
    """Validate a loaded descriptor mapping; errors name ``display`` and the YAML path."""
    if not isinstance(raw, dict):
        raise DescriptorError(display, "", "must be a YAML mapping")
    ctx = Ctx(display, error=DescriptorError)
    _non_empty_strings(ctx, FirmwareDescriptor, raw)
    if isinstance(raw.get("source"), dict):
        _non_empty_strings(ctx, SourceSpec, raw["source"], "source")
    d: FirmwareDescriptor = build(ctx, FirmwareDescriptor, raw)
    s = d.source
    return FirmwareBuild(
        name=d.name, platform=d.platform,
        source=SourcePin(s.package, s.version, s.suite, tuple(sorted(s.files.items()))),
        dsc=d.dsc, arch=d.arch, toolchain=d.toolchain, target=d.target,
        defines=tuple((k, _define_value(v)) for k, v in (d.defines or {}).items()),
        placeholders=tuple(d.placeholders or ()), output=d.output, modules=d.modules,
        sha256=d.sha256, path=display)


def _read_descriptor(path: Path, display: str) -> Any:
    if not path.exists() and not path.is_symlink():
        raise CCBuildError(f"{display}: no such firmware build descriptor",
                           hint="see firmware/*.yaml for the shipped builds")
    return load_yaml(read_regular(path, "firmware descriptor", display), display, DescriptorError)


def load_descriptor(path: Path | str, display: str | None = None) -> FirmwareBuild:
    """Read and validate ``firmware/*.yaml``; ``display`` is how errors name the file."""
    path = Path(path)
    return parse_descriptor(_read_descriptor(path, display or str(path)), display or str(path))


def measured_with(path: Path | str) -> dict[str, str]:
    """The toolchain versions the descriptor's sha256 was measured with (informative)."""
    path = Path(path)
    raw = _read_descriptor(path, str(path))
    if not isinstance(raw, dict):
        raise DescriptorError(str(path), "", "must be a YAML mapping")
    d = build(Ctx(str(path), error=DescriptorError), FirmwareDescriptor, raw)
    return dict(d.measured_with or {})


def render_descriptor_doc() -> str:
    """docs/firmware-descriptor.md, generated from the schema
    (``python -m builder.stages.firmware``)."""
    return render_reference(FirmwareDescriptor, "Firmware build descriptor reference", [
        "Generated from `builder/stages/firmware.py` "
        "(`python -m builder.stages.firmware > docs/firmware-descriptor.md`);",
        "a test keeps the two in step. A recipe names a descriptor with "
        "`firmware: {build: ../firmware/NAME.yaml}`; see `firmware/*.yaml` for the shipped ones.",
        "Every field except `modules`, `sha256` and `measured_with` is an input of the build's "
        "cache key. Paths are normalized, relative to the EDK2 tree, without `..`."])


# -- cache key -----------------------------------------------------------------------------------
def _first_line(argv: list[str], pattern: str | None = None) -> str:
    return tool_version(argv, pattern, "EDK2 build")


def toolchain_versions() -> dict[str, str]:
    """Versions of the tools whose behaviour reaches the firmware bytes."""
    return {
        "gcc": _first_line(["gcc", "--version"]),
        "ld": _first_line(["ld", "--version"]),
        "nasm": _first_line(["nasm", "-v"]),
        "iasl": _first_line(["iasl", "-v"], r"version"),
        "python3": _first_line(["python3", "--version"]),
        "patch": _first_line(["patch", "--version"]),
    }


def cache_key(desc: FirmwareBuild, tarball_sha256s: Mapping[str, str],
              tools: Mapping[str, str] | None = None) -> str:
    """sha256 over every input of the build: descriptor, tarballs, toolchain, build scheme."""
    record = {
        "scheme": BUILD_SCHEME,
        "descriptor": desc.identity(),
        "tarballs": dict(sorted(tarball_sha256s.items())),
        "tools": dict(sorted((tools if tools is not None else toolchain_versions()).items())),
    }
    blob = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


# -- build ---------------------------------------------------------------------------------------
def changelog_epoch(changelog: Path) -> int:
    """SOURCE_DATE_EPOCH as Debian derives it: the date of the changelog's first entry."""
    try:
        for line in changelog.read_text(errors="replace").splitlines():
            if line.startswith(" -- ") and "  " in line[4:]:
                return int(email.utils.parsedate_to_datetime(line[4:].split("  ", 1)[1])
                           .timestamp())
    except (OSError, ValueError, TypeError):
        pass
    raise CCBuildError("no dated entry in debian/changelog", str(changelog.name),
                       "the debian tarball is not a Debian source package's")


def _series(src: Path) -> list[tuple[str, str]]:
    """(patch file, -pN) from debian/patches/series, in order."""
    series = src / "debian" / "patches" / "series"
    if not series.is_file():
        return []
    out = []
    for line in series.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        strip = next((p for p in parts[1:] if re.fullmatch(r"-p\d", p)), "-p1")
        name = parts[0]
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CCBuildError(f"patch {name!r} escapes debian/patches", "debian/patches/series")
        out.append((name, strip))
    return out


def _build_env(epoch: int) -> dict[str, str]:
    """What the EDK2 build's environment sets (on top of ours, minus ``_EDK2_ENV``)."""
    return dict(SOURCE_DATE_EPOCH=str(epoch), TZ="UTC", LC_ALL="C.UTF-8", LANG="C.UTF-8",
                PYTHON_COMMAND="python3", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")


@contextlib.contextmanager
def _fixed_length_workspace(src: Path) -> Iterator[Path]:
    """A path of constant length naming ``src`` (a symlink under /tmp), used as WORKSPACE.

    GenFw sizes each PE image's debug-directory area by the length of the ELF file's absolute
    path (Elf64Convert.c: ``strlen(mInImageName)``), then the area is zeroed: the bytes do not
    depend on the path's content but the section layout does depend on its length. A build
    directory of constant length makes the image independent of where the caller's workdir is.
    """
    base = Path("/tmp") / f"ccbuild-edk2-{secrets.token_hex(8)}"
    os.mkdir(base, 0o700)
    link = base / "ws"
    try:
        link.symlink_to(src.resolve(), target_is_directory=True)
        yield link
    finally:
        link.unlink(missing_ok=True)
        base.rmdir()


# Source edksetup.sh with no positional arguments (it would parse ours), then exec build.
_BUILD_SCRIPT = 'args=("$@"); set --; . ./edksetup.sh >/dev/null || exit 1; exec build "${args[@]}"'


def build_edk2(desc: FirmwareBuild, tarballs: Mapping[str, Path], workdir: Path,
               log_path: Path, jobs: int = 2, check_sha256: bool = True) -> bytes:
    """Build the firmware ``desc`` describes from its pinned tarballs; return the image bytes.

    ``workdir`` is an empty scratch directory (the caller removes it); the tree lives in
    ``workdir/edk2``. The whole output of every step goes to ``log_path``. With ``check_sha256``
    a descriptor that pins the output's sha256 must get exactly those bytes.
    """
    where = desc.path or desc.name
    for name, digest in desc.source.file_pins:
        p = tarballs.get(name)
        if p is None:
            raise CCBuildError(f"tarball {name} was not supplied", where)
        actual = sha256_file(Path(p))
        if actual != digest:
            raise CCBuildError(f"sha256 mismatch: got {actual}, pinned {digest}", name,
                               "the input changed; re-pin it if the change is expected")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_bytes(b"")
    src = Path(workdir) / "edk2"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)

    with log.step(f"edk2 {desc.name}: unpack + patch"):
        run(["tar", "-xf", tarballs[desc.source.tarball("orig")], "-C", src,
             "--strip-components=1", "--no-same-owner"], log_path=log_path, what="unpack orig")
        run(["tar", "-xf", tarballs[desc.source.tarball("debian")], "-C", src,
             "--no-same-owner"], log_path=log_path, what="unpack debian tarball")
        for name, strip in _series(src):
            patch = src / "debian" / "patches" / name
            if not patch.is_file():
                raise CCBuildError(f"patch {name} listed in debian/patches/series is missing",
                                   desc.source.tarball("debian"))
            run(["patch", strip, "--forward", "--batch", "--no-backup-if-mismatch", "-s",
                 "-d", src, "-i", patch], log_path=log_path, what=f"patch {name}")
        for ph in desc.placeholders:
            target = src / ph
            if not target.parent.is_dir():
                raise CCBuildError(f"placeholder directory {Path(ph).parent} is not in the tree",
                                   f"{where}: placeholders")
            target.write_bytes(b"")

    epoch = changelog_epoch(src / "debian" / "changelog")
    with _fixed_length_workspace(src) as ws:
        env = _build_env(epoch)
        env["PWD"] = str(ws)  # bash's pwd (and so edksetup.sh's WORKSPACE) keeps the link path
        with log.step(f"edk2 {desc.name}: BaseTools"):
            run_streamed(["make", "-C", "BaseTools", f"-j{max(1, jobs)}"], cwd=ws, env=env,
                         unset=_EDK2_ENV, log_path=log_path, what="make -C BaseTools")
        with log.step(f"edk2 {desc.name}: build {desc.dsc}"), \
                log.bar(desc.modules, f"edk2 {desc.name}", unit="module") as bar:
            run_streamed(["bash", "-c", _BUILD_SCRIPT, "edk2-build", *desc.build_args(jobs)],
                         cwd=ws, env=env, unset=_EDK2_ENV, log_path=log_path,
                         what=f"EDK2 build of {desc.dsc}", progress=bar, count=_MODULE_LINE)

    out = src / desc.output
    if not out.is_file():
        raise CCBuildError(f"the build did not produce {desc.output}", f"log: {log_path}",
                           f"check 'output' in {where}")
    data = out.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if check_sha256 and desc.sha256 and got != desc.sha256:
        tools = toolchain_versions()
        expected = measured_with(desc.path) if desc.path and Path(desc.path).is_file() else {}
        diff = [f"{k} {tools.get(k)!r} (pinned with {v!r})" for k, v in sorted(expected.items())
                if tools.get(k) != v]
        why = ("the toolchain differs: " + "; ".join(diff)) if diff else \
            "same toolchain as the pin: the build is not reproducible here"
        raise CCBuildError(f"EDK2 build output has sha256 {got}, {where} pins {desc.sha256}",
                           f"log: {log_path}", why)
    return data


def build_cached(store, desc: FirmwareBuild, jobs: int = 2, offline: bool = False) -> bytes:
    """The firmware ``desc`` describes, built once and then taken from ``store`` by its
    :func:`cache_key` (a cached image that differs from a pinned ``sha256`` is rebuilt)."""
    def build(work: Path):
        tarballs = fetch_source(store, desc.source.package, desc.source.version,
                                desc.source.suite, desc.source.files, offline=offline)
        data = build_edk2(desc, tarballs, work, store.log_path(f"edk2-{desc.name}"), jobs=jobs)
        return {"sha256": data}, {"name": desc.name}

    return cached_stage(store, "firmware-build", cache_key(desc, desc.source.files),
                        {"sha256": f"firmware build {desc.name}"}, build,
                        accept=lambda ref: desc.sha256 in (None, ref["sha256"])
                        ).outputs["sha256"]


# -- checks --------------------------------------------------------------------------------------
def check_firmware(platform: str, fw: bytes, where: str = "firmware") -> None:
    """Refuse a firmware that cannot carry its platform's launch measurement chain."""
    if platform not in SUGGESTED_BUILD:
        raise CCBuildError(f"unknown platform {platform!r}", where,
                           f"use one of {', '.join(PLATFORMS)}")
    dsc, descriptor = SUGGESTED_BUILD[platform]
    hint = f"use the {dsc} build (firmware: {{build: {descriptor}}})"
    if platform == "snp":
        try:
            meta = parse_sev_metadata(fw)
            hashes = meta is not None and has_kernel_hashes(fw)
        except FormatError as e:
            raise CCBuildError(f"{where} has SEV metadata that cannot be used ({e.what} at "
                               f"{e.where}), so no SEV KERNEL_HASHES section", hint=hint) from None
        if meta is None:
            raise CCBuildError(f"{where} has no SEV metadata (not an SEV-capable OVMF), so no "
                               "SEV KERNEL_HASHES section", hint=hint)
        if not hashes:
            raise CCBuildError(f"{where} has no SEV KERNEL_HASHES section (OVMF would not verify "
                               "kernel, initrd and command line)", hint=hint)
    else:
        if not has_tdvf_metadata(fw):
            raise CCBuildError(f"{where} has no TDVF metadata (not a TDX-capable firmware)",
                               hint=hint)


def prebuilt_firmware(platform: str, data: bytes, where: str = "firmware") -> bytes:
    """A prebuilt image (e.g. a member of a Debian ``ovmf`` package): checked, returned as is."""
    if not data or len(data) % 4096:
        raise CCBuildError(f"size {len(data)} is not a non-zero multiple of 4096 (not a single "
                           "OVMF/TDVF image)", where, "give the single -bios image (OVMF.fd)")
    check_firmware(platform, data, where)
    return data


if __name__ == "__main__":
    import sys
    sys.stdout.write(render_descriptor_doc())
