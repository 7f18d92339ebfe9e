"""Recipe schema, loading and validation.

A recipe is YAML. The schema is the dataclasses below: one table that drives validation, the
JSON dump in the manifest and the documentation (docs/recipe.md). Every error names the file and
the YAML path (``recipes/snp.yaml: kernel.source.sha256: required``). ``--set a.b=VALUE``
overrides any field before validation (VALUE is parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from builder.errors import CCBuildError

HEX64 = r"[0-9a-f]{64}"


class RecipeError(CCBuildError):
    """A recipe mistake: ``<file>: <yaml.path>: <what>``."""

    def __init__(self, file: str, path: str, what: str):
        self.file, self.path = file, path
        super().__init__(f"{file}: {path}: {what}" if path else f"{file}: {what}")


def doc(text: str, **kw) -> Any:
    """A field with documentation (shown in docs/recipe.md and --help-recipe)."""
    md = {"doc": text}
    for k in ("pattern", "minimum", "maximum", "choices_doc"):
        if k in kw:
            md[k] = kw.pop(k)
    return field(metadata=md, **kw)


# -- schema ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """A pinned input: exactly one of ``debian``, ``path`` or ``url``."""
    debian: str | None = doc("Debian binary package name (fetched with apt from the host's mirror)",
                             default=None)
    version: str | None = doc("exact Debian package version (debian)", default=None)
    suite: str | None = doc("Debian suite: bookworm, bookworm-security, trixie, sid, ... (debian)",
                            default=None)
    member: str | None = doc("file inside the package, e.g. usr/share/ovmf/OVMF.fd (debian)",
                             default=None)
    path: str | None = doc("local file, relative to the recipe's directory", default=None)
    url: str | None = doc("https URL (for users with internet access)", default=None)
    sha256: str | None = doc("sha256 of the .deb (debian) or of the file (path, url)",
                             default=None, pattern=HEX64)

    @property
    def kind(self) -> str:
        return "debian" if self.debian else "path" if self.path else "url"

    def validate(self, ctx: "_Ctx", where: str) -> None:
        kinds = [k for k in ("debian", "path", "url") if getattr(self, k)]
        if len(kinds) != 1:
            ctx.fail(where, "exactly one of debian, path, url is required"
                     if not kinds else f"give only one of {', '.join(kinds)}")
        if self.debian:
            for k in ("version", "suite", "member"):
                if not getattr(self, k):
                    ctx.fail(f"{where}.{k}", "required")
        else:
            for k in ("version", "suite", "member"):
                if getattr(self, k):
                    ctx.fail(f"{where}.{k}", "only for debian sources")
        if self.url and not re.match(r"^https?://", self.url):
            ctx.fail(f"{where}.url", "must be an http(s) URL")
        if self.url and not self.sha256:
            ctx.fail(f"{where}.sha256", "required")
        if ctx.locked and not self.sha256:
            ctx.fail(f"{where}.sha256", "required (--locked)")


@dataclass(frozen=True)
class Firmware:
    build: str | None = doc("EDK2 build descriptor (firmware/*.yaml), relative to the recipe",
                            default=None)
    source: Source | None = doc("prebuilt firmware image", default=None)

    def validate(self, ctx: "_Ctx", where: str) -> None:
        if (self.build is None) == (self.source is None):
            ctx.fail(where, "exactly one of build, source is required")


@dataclass(frozen=True)
class KernelBuild:
    source: Source = doc("kernel source tarball: Debian linux-source-6.12 (member "
                         "usr/src/linux-source-6.12.tar.xz) or a kernel.org tarball (url + sha256)")
    fragments: tuple[str, ...] = doc("Kconfig fragments merged in order on top of tinyconfig "
                                     "(kernel/fragments/*.config), relative to the recipe")

    def validate(self, ctx: "_Ctx", where: str) -> None:
        if not self.fragments:
            ctx.fail(f"{where}.fragments", "at least one fragment is required")
        for i, f in enumerate(self.fragments):
            if not f.endswith(".config"):
                ctx.fail(f"{where}.fragments[{i}]", f"{f!r} must name a .config fragment")


@dataclass(frozen=True)
class Kernel:
    source: Source | None = doc("the kernel image (a bzImage with an EFI stub)", default=None)
    build: KernelBuild | None = doc("build the kernel from pinned source and config fragments",
                                    default=None)

    def validate(self, ctx: "_Ctx", where: str) -> None:
        if (self.build is None) == (self.source is None):
            ctx.fail(where, "exactly one of source, build is required")


@dataclass(frozen=True)
class Agent:
    build: Literal["test-agent"] | None = doc("build the project's test agent from agent/*.c",
                                               default=None)
    source: Source | None = doc("a pinned agent binary (the real Kata agent)", default=None)
    readiness: str = doc("regular expression the agent prints when ready (used by 'boot')",
                         default=r"ccbuild-test-agent: ready")

    def validate(self, ctx: "_Ctx", where: str) -> None:
        if (self.build is None) == (self.source is None):
            ctx.fail(where, "exactly one of build, source is required")
        try:
            re.compile(self.readiness)
        except re.error as e:
            ctx.fail(f"{where}.readiness", f"bad regular expression ({e})")


@dataclass(frozen=True)
class InitrdFile:
    path: str = doc("absolute path inside the image (initrd or rootfs)")
    content: str | None = doc("file content (UTF-8 text)", default=None)
    source: Source | None = doc("file content from a pinned input", default=None)
    mode: int = doc("permission bits", default=0o644, minimum=0, maximum=0o7777)

    def validate(self, ctx: "_Ctx", where: str) -> None:
        if (self.content is None) == (self.source is None):
            ctx.fail(where, "exactly one of content, source is required")
        _check_image_path(ctx, f"{where}.path", self.path)


@dataclass(frozen=True)
class Symlink:
    path: str = doc("absolute path of the link inside the initrd")
    target: str = doc("link target")

    def validate(self, ctx: "_Ctx", where: str) -> None:
        _check_image_path(ctx, f"{where}.path", self.path)


@dataclass(frozen=True)
class Initrd:
    compression: Literal["none", "gzip", "zstd", "xz"] = doc("compression (fixed parameters)",
                                                             default="gzip")
    files: tuple[InitrdFile, ...] = doc("extra files", default=())
    symlinks: tuple[Symlink, ...] = doc("extra symlinks", default=())
    dirs: tuple[str, ...] = doc("extra empty directories", default=())

    def validate(self, ctx: "_Ctx", where: str) -> None:
        for i, d in enumerate(self.dirs):
            _check_image_path(ctx, f"{where}.dirs[{i}]", d)
        seen: dict[str, str] = {}
        for kind, items in (("files", self.files), ("symlinks", self.symlinks)):
            for i, it in enumerate(items):
                p = "/" + it.path.strip("/")
                if p == "/init":
                    ctx.fail(f"{where}.{kind}[{i}].path", "/init is the agent; it cannot be replaced")
                if p in seen:
                    ctx.fail(f"{where}.{kind}[{i}].path", f"duplicate of {seen[p]}")
                seen[p] = f"{where}.{kind}[{i}]"


@dataclass(frozen=True)
class Rootfs:
    format: Literal["erofs", "ext4"] = doc("file system of the read-only root image",
                                           default="erofs")
    verity: bool = doc("dm-verity hash tree whose root hash the measured cmdline carries "
                       "(required: an unmeasured rootfs breaks the chain)", default=True)
    files: tuple[InitrdFile, ...] = doc("extra files (the agent is /sbin/init)", default=())
    dirs: tuple[str, ...] = doc("extra empty directories", default=())

    def validate(self, ctx: "_Ctx", where: str) -> None:
        if not self.verity:
            ctx.fail(f"{where}.verity", "a rootfs without dm-verity is not measured; the agent "
                     "it holds would run outside the attested chain (set verity: true)")
        for i, d in enumerate(self.dirs):
            _check_image_path(ctx, f"{where}.dirs[{i}]", d)
        seen: dict[str, str] = {}
        for i, f in enumerate(self.files):
            p = "/" + f.path.strip("/")
            if p == "/sbin/init":
                ctx.fail(f"{where}.files[{i}].path", "/sbin/init is the agent; it cannot be "
                         "replaced")
            if p in seen:
                ctx.fail(f"{where}.files[{i}].path", f"duplicate of {seen[p]}")
            seen[p] = f"{where}.files[{i}]"


@dataclass(frozen=True)
class Cmdline:
    template: str = doc("jinja2 template of the final (measured) kernel command line; variables: "
                        "kernel_params, runtime_params, platform, name; with a rootfs also "
                        "verity_params (dm-mod.create=... root=/dev/dm-0 ...), "
                        "kata_verity_params, root_hash, verity_salt",
                        default="{{ kernel_params }} {{ runtime_params }}")
    kernel_params: str = doc("what goes in Kata's configuration.toml kernel_params", default="")
    runtime_params: str = doc("what the Kata runtime appends itself (measured too)", default="")


@dataclass(frozen=True)
class SnpLaunch:
    policy: int = doc("guest policy (Kata default 0x30000)", default=0x30000, minimum=0,
                      maximum=(1 << 64) - 1)
    id_key: str | None = doc("PEM of the ID key (never copied to the output)", default=None)
    author_key: str | None = doc("PEM of the author key (never copied to the output)",
                                 default=None)
    family_id: str = doc("16-byte family ID, hex", default="00" * 16, pattern=r"[0-9a-f]{32}")
    image_id: str = doc("16-byte image ID, hex", default="00" * 16, pattern=r"[0-9a-f]{32}")
    guest_svn: int = doc("guest SVN", default=0, minimum=0, maximum=0xFFFFFFFF)

    def validate(self, ctx: "_Ctx", where: str) -> None:
        if self.author_key and not self.id_key:
            ctx.fail(f"{where}.id_key", "required when author_key is given")


@dataclass(frozen=True)
class TdxLaunch:
    profile: str | None = doc("VMM profile (recipes/profiles/*.yaml) for RTMR0; none -> null",
                              default=None)
    page_add_order: Literal["interleaved", "two-pass"] = doc("TDH.MEM.PAGE.ADD / MR.EXTEND order",
                                                             default="interleaved")


@dataclass(frozen=True)
class Launch:
    vcpus: tuple[int | str, ...] = doc("vCPU counts: numbers and 'a-b' ranges", default=(1,))
    vcpu_types: tuple[str, ...] = doc("QEMU CPU models (SNP)", default=("EPYC-v4",))
    vmms: tuple[Literal["qemu", "ec2", "gce"], ...] = doc("VMM variants (SNP)", default=("qemu",))
    guest_features: tuple[int, ...] = doc("SEV_FEATURES values (SNP)", default=(0x1,))
    memory_mib: int = doc("guest memory", default=2048, minimum=64, maximum=1 << 22)
    snp: SnpLaunch = doc("SNP launch parameters", default=SnpLaunch())
    tdx: TdxLaunch = doc("TDX launch parameters", default=TdxLaunch())

    def validate(self, ctx: "_Ctx", where: str) -> None:
        try:
            counts = expand_vcpus(self.vcpus)
        except ValueError as e:
            ctx.fail(f"{where}.vcpus", str(e))
        if not counts:
            ctx.fail(f"{where}.vcpus", "at least one vCPU count is required")
        for i, t in enumerate(self.vcpu_types):
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", t):
                ctx.fail(f"{where}.vcpu_types[{i}]", f"bad CPU model name {t!r}")
        for i, g in enumerate(self.guest_features):
            if not 0 <= g < 1 << 64:
                ctx.fail(f"{where}.guest_features[{i}]", "must be a 64-bit value")


@dataclass(frozen=True)
class Recipe:
    platform: Literal["snp", "tdx"] = doc("the TEE: snp (AMD SEV-SNP) or tdx (Intel TDX)")
    firmware: Firmware = doc("OVMF/TDVF image")
    kernel: Kernel = doc("guest kernel")
    agent: Agent = doc("the Kata agent (or the test agent) that becomes /init")
    name: str = doc("name of the output directory (default: the recipe file's stem)", default="",
                    pattern=r"[A-Za-z0-9][A-Za-z0-9._-]*|")
    source_date_epoch: int = doc("timestamp of every file in the artifacts",
                                 default=1735689600, minimum=0, maximum=(1 << 32) - 1)
    initrd: Initrd = doc("initrd contents and compression", default=Initrd())
    rootfs: Rootfs | None = doc("dm-verity root image holding the agent (then no initrd is "
                                "used: Kata's image boot)", default=None)
    cmdline: Cmdline = doc("kernel command line", default=Cmdline())
    launch: Launch = doc("launch parameters the measurements cover", default=Launch())
    initdata: str | None = doc("Kata/Trustee initdata TOML file, relative to the recipe",
                               default=None)

    def validate(self, ctx: "_Ctx", where: str) -> None:
        if self.rootfs is not None and self.initrd != Initrd():
            ctx.fail("initrd", "a recipe with a rootfs boots without an initrd; put the files "
                     "in rootfs.files")


# -- helpers -----------------------------------------------------------------------------------
def expand_vcpus(spec: tuple[int | str, ...]) -> list[int]:
    """[1, '4-6', 8] -> [1, 4, 5, 6, 8] (sorted, unique); each count 1..512."""
    out: set[int] = set()
    for item in spec:
        if isinstance(item, bool):
            raise ValueError(f"bad vCPU count {item!r}")
        if isinstance(item, int):
            lo = hi = item
        else:
            m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", item)
            if not m:
                raise ValueError(f"bad vCPU range {item!r} (use 'a-b')")
            lo, hi = int(m[1]), int(m[2])
            if lo > hi:
                raise ValueError(f"empty vCPU range {item!r}")
        if lo < 1 or hi > 512:
            raise ValueError(f"vCPU count out of range 1..512: {item!r}")
        out.update(range(lo, hi + 1))
    return sorted(out)


def _check_image_path(ctx: "_Ctx", where: str, p: str) -> None:
    if not p.startswith("/"):
        ctx.fail(where, f"{p!r} must be an absolute path inside the image")
    parts = [x for x in p.split("/") if x]
    if not parts or any(x in ("..", ".") for x in parts) or "\0" in p:
        ctx.fail(where, f"{p!r} escapes the image root or is not a plain path")


@dataclass
class _Ctx:
    file: str
    locked: bool = False

    def fail(self, path: str, what: str) -> typing.NoReturn:
        raise RecipeError(self.file, path, what)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if origin in (tuple, list):
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _convert(ctx: _Ctx, tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        alts = [a for a in args if a is not type(None)]
        errors = []
        for a in alts:
            try:
                return _convert(ctx, a, value, where)
            except RecipeError as e:
                errors.append(e)
        if len(alts) == 1:
            raise errors[0]
        ctx.fail(where, f"must be {' or '.join(_type_name(a) for a in alts)}, "
                        f"not {type(value).__name__}")
    if origin is Literal:
        if value not in args:
            ctx.fail(where, f"must be one of {', '.join(map(str, args))} (got {value!r})")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list):
            ctx.fail(where, f"must be a list, not {type(value).__name__}")
        return tuple(_convert(ctx, args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(ctx, tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            ctx.fail(where, f"must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and re.fullmatch(r"0[xX][0-9a-fA-F]+|0o[0-7]+|\d+", value):
                return int(value, 0)
            ctx.fail(where, f"must be an integer, not {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            ctx.fail(where, f"must be a string, not {type(value).__name__} {value!r}")
        return value
    raise TypeError(tp)  # schema bug


def _build(ctx: _Ctx, cls, raw, where: str):
    if not isinstance(raw, dict):
        ctx.fail(where, f"must be a mapping, not {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in fields:
            near = [n for n in fields if n.replace("_", "") == str(k).replace("_", "").replace("-", "")]
            hint = f" (did you mean {near[0]}?)" if near else ""
            ctx.fail(_join(where, str(k)), f"unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        p = _join(where, name)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                ctx.fail(p, "required")
            continue
        v = _convert(ctx, hints[name], raw[name], p)
        md = f.metadata
        if isinstance(v, str) and "pattern" in md and not re.fullmatch(md["pattern"], v):
            ctx.fail(p, f"{v!r} is malformed (expected {md['pattern']})")
        if isinstance(v, int) and "minimum" in md and not md["minimum"] <= v <= md["maximum"]:
            ctx.fail(p, f"{v} is out of range {md['minimum']}..{md['maximum']}")
        kwargs[name] = v
    obj = cls(**kwargs)
    obj.validate(ctx, where) if hasattr(obj, "validate") else None
    return obj


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


# -- loading -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedRecipe:
    recipe: Recipe
    path: Path          # the recipe file
    name: str           # output name
    digest: str         # sha256 of the canonical JSON of the validated recipe
    text: bytes         # the recipe file's bytes

    def resolve(self, rel: str) -> Path:
        """A path from the recipe, relative to the recipe's directory."""
        p = Path(rel)
        return p if p.is_absolute() else (self.path.parent / p)


def apply_override(raw: dict, assignment: str, file: str) -> None:
    """Apply ``a.b.c=VALUE`` (VALUE parsed as YAML) to the raw recipe mapping."""
    if "=" not in assignment:
        raise RecipeError(file, assignment, "--set needs KEY=VALUE")
    key, value = assignment.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(file, key, "bad --set key")
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise RecipeError(file, ".".join(parts[:i + 1]), "is not a mapping (cannot --set inside)")
        node = nxt
    node[parts[-1]] = parsed


def to_jsonable(obj) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_jsonable(x) for x in obj]
    return obj


def load_recipe(path: str | Path, overrides: list[str] = (), locked: bool = False,
                display: str | None = None) -> LoadedRecipe:
    """Load, override and validate a recipe; errors name ``display`` (default: the path given)."""
    p = Path(path)
    shown = display or str(path)
    try:
        text = p.read_bytes()
    except FileNotFoundError:
        raise CCBuildError("recipe not found", shown) from None
    except OSError as e:
        raise CCBuildError(f"cannot read recipe ({e.strerror})", shown) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "YAML"
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise RecipeError(shown, "", f"{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(shown, "", "the top level must be a mapping")
    for a in overrides:
        apply_override(raw, a, shown)
    ctx = _Ctx(shown, locked=locked)
    recipe = _build(ctx, Recipe, raw, "")
    name = recipe.name or p.stem
    canon = json.dumps(to_jsonable(recipe), sort_keys=True, separators=(",", ":")).encode()
    return LoadedRecipe(recipe, p.resolve(), name, hashlib.sha256(canon).hexdigest(), text)


def schema_doc(cls=Recipe, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(yaml path, type, default, doc) rows for every field: the recipe reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = _join(prefix, f.name)
        default = ("required" if f.default is dataclasses.MISSING else
                   "" if dataclasses.is_dataclass(f.default) else repr(f.default))
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)] or (
            [tp] if dataclasses.is_dataclass(tp) else [])
        rows.append((path, _pretty_type(tp), default, f.metadata.get("doc", "")))
        for sub in inner:
            rows.extend(schema_doc(sub, path + ("[]" if typing.get_origin(tp) is tuple else "")))
    return rows


def _pretty_type(tp) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        alts = " | ".join(_pretty_type(a) for a in args if a is not type(None))
        return alts + " (optional)" if type(None) in args else alts
    if origin is tuple:
        return f"list of {_pretty_type(args[0])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def render_schema_doc() -> str:
    """docs/recipe.md, generated from the schema (``python -m builder.recipe > docs/recipe.md``)."""
    lines = ["# Recipe reference", "",
             "Generated from `builder/recipe.py` (`python -m builder.recipe > docs/recipe.md`);",
             "a test keeps the two in step. Paths are relative to the recipe file.",
             "Any field can be overridden with `ccbuild build RECIPE --set path.to.field=VALUE`.",
             "", "| field | type | default | meaning |", "|---|---|---|---|"]
    for path, tp, default, text in schema_doc():
        d = default if default else "(mapping)"
        tp = tp.replace(" | ", " or ")
        lines.append(f"| `{path}` | {tp} | `{d}` | {text} |".replace("`(mapping)`", ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys
    sys.stdout.write(render_schema_doc())
