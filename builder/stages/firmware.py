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
import email.utils
import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from builder import log
from builder.errors import CCBuildError
from builder.inputs import read_regular
from builder.run import run, run_streamed, tool_version
from builder.safeyaml import load_yaml

# Bump when build_edk2 changes in a way that could change the output bytes.
# 2: the constant-length workspace path (see _fixed_length_workspace).
BUILD_SCHEME = 2

PLATFORMS = ("snp", "tdx")
ARCHES = ("X64",)
TOOLCHAINS = ("GCC5", "GCC")
TARGETS = ("RELEASE", "DEBUG", "NOOPT")

# The build to point users at when a firmware lacks what its platform needs.
SUGGESTED_BUILD = {
    "snp": ("AmdSevX64", "firmware/amdsev.yaml"),
    "tdx": ("IntelTdxX64", "firmware/inteltdx.yaml"),
}

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DEFINE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+~_-]*$")
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


_KEYS = {"name", "platform", "source", "dsc", "arch", "toolchain", "target", "defines",
         "placeholders", "output", "modules", "sha256", "measured_with"}
_REQUIRED = ("name", "platform", "source", "dsc", "arch", "toolchain", "target", "output")
_SOURCE_KEYS = {"package", "version", "suite", "files"}


def _relpath(value: Any, fail, key: str, suffix: str | None = None) -> str:
    if not isinstance(value, str) or not value:
        fail(key, "must be a non-empty string")
    p = Path(value)
    if p.is_absolute() or ".." in p.parts or value != p.as_posix():
        fail(key, f"must be a normalized relative path inside the EDK2 tree, not {value!r}")
    if suffix and not value.endswith(suffix):
        fail(key, f"must name a {suffix} file")
    return value


def parse_descriptor(doc: Any, display: str) -> FirmwareBuild:
    """Validate a loaded descriptor mapping; errors name ``display`` and the key."""

    def fail(key: str, what: str):
        raise CCBuildError(f"{display}: {key}: {what}")

    def string(d: dict, key: str, prefix: str = "") -> str:
        v = d.get(key)
        if not isinstance(v, str) or not v.strip():
            fail(prefix + key, "required (a non-empty string)" if v is None
                 else f"must be a non-empty string, not {type(v).__name__}")
        return v

    def choice(d: dict, key: str, choices: tuple[str, ...]) -> str:
        v = string(d, key)
        if v not in choices:
            fail(key, f"must be one of {', '.join(choices)}, not {v!r}")
        return v

    if not isinstance(doc, dict):
        raise CCBuildError(f"{display}: must be a YAML mapping")
    for k in sorted(set(doc) - _KEYS, key=str):
        fail(str(k), f"unknown key (expected one of {', '.join(sorted(_KEYS))})")
    for k in _REQUIRED:
        if k not in doc:
            fail(k, "required")

    src = doc["source"]
    if not isinstance(src, dict):
        fail("source", "must be a mapping with package, version, suite, files")
    for k in sorted(set(src) - _SOURCE_KEYS, key=str):
        fail(f"source.{k}", "unknown key (expected package, version, suite, files)")
    files = src.get("files")
    if not isinstance(files, dict) or not files:
        fail("source.files", "required (a mapping of tarball file name to sha256)")
    pins = []
    for fname, digest in files.items():
        if not isinstance(fname, str) or not _FILE_NAME.match(fname):
            fail("source.files", f"{fname!r} is not a plain file name")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            fail(f"source.files.{fname}", "must be a sha256 (64 lowercase hex digits)")
        pins.append((fname, digest))
    for kind in ("orig", "debian"):
        if not any(f".{kind}.tar." in n for n, _ in pins):
            fail("source.files", f"needs the {kind} tarball (*.{kind}.tar.*)")
    source = SourcePin(string(src, "package", "source."), string(src, "version", "source."),
                       string(src, "suite", "source."), tuple(sorted(pins)))

    defines_doc = doc.get("defines") or {}
    if not isinstance(defines_doc, dict):
        fail("defines", "must be a mapping NAME: value")
    defines = []
    for k, v in defines_doc.items():
        if not isinstance(k, str) or not _DEFINE_NAME.match(k):
            fail("defines", f"{k!r} is not a valid -D name")
        if isinstance(v, bool):
            v = "TRUE" if v else "FALSE"
        elif isinstance(v, int):
            v = str(v)
        if not isinstance(v, str) or not v or any(c.isspace() for c in v):
            fail(f"defines.{k}", "must be TRUE/FALSE, a number or a word without spaces")
        defines.append((k, v))

    ph_doc = doc.get("placeholders") or []
    if not isinstance(ph_doc, list):
        fail("placeholders", "must be a list of paths")
    placeholders = tuple(_relpath(p, fail, f"placeholders[{i}]") for i, p in enumerate(ph_doc))

    output = _relpath(doc["output"], fail, "output")
    if not output.startswith("Build/"):
        fail("output", f"must be a file under Build/, not {output!r}")

    modules = doc.get("modules")
    if modules is not None and (isinstance(modules, bool) or not isinstance(modules, int)
                                or modules <= 0):
        fail("modules", "must be a positive integer")
    sha = doc.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not _HEX64.match(sha)):
        fail("sha256", "must be a sha256 (64 lowercase hex digits) or null")
    mw = doc.get("measured_with")
    if mw is not None and not (isinstance(mw, dict)
                               and all(isinstance(v, str) for v in mw.values())):
        fail("measured_with", "must be a mapping of tool name to version string")

    return FirmwareBuild(
        name=string(doc, "name"), platform=choice(doc, "platform", PLATFORMS), source=source,
        dsc=_relpath(doc["dsc"], fail, "dsc", ".dsc"), arch=choice(doc, "arch", ARCHES),
        toolchain=choice(doc, "toolchain", TOOLCHAINS), target=choice(doc, "target", TARGETS),
        defines=tuple(defines), placeholders=placeholders, output=output, modules=modules,
        sha256=sha, path=display)


def load_descriptor(path: Path | str, display: str | None = None) -> FirmwareBuild:
    """Read and validate ``firmware/*.yaml``; ``display`` is how errors name the file."""
    path = Path(path)
    display = display or str(path)
    if not path.exists() and not path.is_symlink():
        raise CCBuildError(f"{display}: no such firmware build descriptor",
                           hint="see firmware/*.yaml for the shipped builds")
    doc = load_yaml(read_regular(path, "firmware descriptor", display), display)
    return parse_descriptor(doc, display)


def measured_with(path: Path | str) -> dict[str, str]:
    """The toolchain versions the descriptor's sha256 was measured with (informative)."""
    doc = load_yaml(read_regular(path, "firmware descriptor"), str(path)) or {}
    mw = doc.get("measured_with") if isinstance(doc, dict) else None
    return {str(k): str(v) for k, v in mw.items()} if isinstance(mw, dict) else {}


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
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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
        actual = _sha256_file(Path(p))
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
    :func:`cache_key`."""
    key = cache_key(desc, desc.source.files)
    ref = store.get_ref("firmware-build", key)
    if ref and store.has(ref.get("sha256", "")) and ref["sha256"] == (desc.sha256 or ref["sha256"]):
        return store.get_bytes(ref["sha256"], f"firmware build {desc.name}")
    from builder.sources.debian import fetch_source
    tarballs = fetch_source(store, desc.source.package, desc.source.version, desc.source.suite,
                            desc.source.files, offline=offline)
    work = store.tmpdir()
    try:
        data = build_edk2(desc, tarballs, work, store.log_path(f"edk2-{desc.name}"), jobs=jobs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    store.set_ref("firmware-build", key, {"sha256": store.put_bytes(data), "name": desc.name})
    return data


# -- checks --------------------------------------------------------------------------------------
def check_firmware(platform: str, fw: bytes, where: str = "firmware") -> None:
    """Refuse a firmware that cannot carry its platform's launch measurement chain."""
    if platform not in SUGGESTED_BUILD:
        raise CCBuildError(f"unknown platform {platform!r}", where,
                           f"use one of {', '.join(PLATFORMS)}")
    dsc, descriptor = SUGGESTED_BUILD[platform]
    hint = f"use the {dsc} build (firmware: {{build: {descriptor}}})"
    if platform == "snp":
        from builder.errors import FormatError
        from builder.formats.ovmf import has_kernel_hashes, parse_sev_metadata
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
        from builder.formats.tdvf import has_tdvf_metadata
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
