"""Recipe schema, loading and validation.

A recipe is YAML. The schema is the dataclasses below: one table that drives validation, the
JSON dump in the manifest and the documentation (docs/recipe.md). Every error names the file and
the YAML path (``recipes/snp.yaml: kernel.source.sha256: required``). ``--set a.b=VALUE``
overrides any field before validation (VALUE is parsed as YAML).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Literal

from builder.errors import CCBuildError
from builder.inputs import check_text, read_regular
from builder.safeyaml import load_yaml
from builder.schema import HEX64, Ctx, SchemaError, build, doc, render_reference, to_jsonable

__all__ = ["HEX64", "RecipeError", "doc", "to_jsonable", "load_recipe", "expand_vcpus", "Recipe"]


class RecipeError(SchemaError):
    """A recipe mistake: ``<file>: <yaml.path>: <what>``."""


_Ctx = Ctx

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
        _check_tree(ctx, where, "/init", self.dirs, (("files", self.files),
                                                     ("symlinks", self.symlinks)))


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
        _check_tree(ctx, where, "/sbin/init", self.dirs, (("files", self.files),))


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
class KataHost:
    fips: bool = doc("the node runs in FIPS mode (/proc/sys/crypto/fips_enabled = 1): Kata "
                     "appends fips=1", default=False)
    snp: bool = doc("the node's kvm_amd sev_snp parameter is Y (SNP recipes: Kata then starts "
                    "QEMU with -cpu EPYC-v4; without it Kata refuses the guest)", default=True)
    host_cpus: int | None = doc("the node's CPU count (/proc/cpuinfo); needed only where Kata "
                                "clamps to it", default=None, minimum=1, maximum=4096)


@dataclass(frozen=True)
class KataLaunch:
    configuration: str = doc("the node's Kata configuration TOML (configuration-qemu-snp.toml / "
                             "-tdx.toml), relative to the recipe; read as Kata reads it "
                             "(docs/kata.md)")
    version: str = doc("the Kata release whose runtime composes the launch (modelled: "
                       "3.31.0, 3.32.0, 4.0.0, 4.1.0)", default="4.1.0",
                       pattern=r"v?\d{1,3}\.\d{1,3}\.\d{1,3}")
    runtime: Literal["go"] = doc("the runtime flavour: go (containerd-shim-kata-v2); runtime-rs "
                                 "is modelled for the command line only (ccbuild kata)",
                                 default="go")
    pod_cpus: tuple[int, ...] = doc("pod CPU limits to measure (with static_sandbox_resource_mgmt "
                                    "each adds to default_vcpus); one row per entry in "
                                    "measurements.json kata.pods", default=(0,),
                                    minimum=0, maximum=240)
    host: KataHost = doc("what the runtime reads from the node", default=KataHost())

    def validate(self, ctx: "_Ctx", where: str) -> None:
        if not self.pod_cpus:
            ctx.fail(f"{where}.pod_cpus", "at least one pod CPU limit is required")
        if len(set(self.pod_cpus)) != len(self.pod_cpus):
            ctx.fail(f"{where}.pod_cpus", "a pod CPU limit is given twice")
        from builder.kata.versions import resolve_release
        from builder.errors import CCBuildError
        try:
            resolve_release(self.version)
        except CCBuildError as e:
            ctx.fail(f"{where}.version", f"{e.what}; {e.hint}" if e.hint else e.what)


@dataclass(frozen=True)
class Launch:
    vcpus: tuple[int | str, ...] = doc("vCPU counts: numbers and 'a-b' ranges", default=(1,))
    vcpu_types: tuple[str, ...] = doc("QEMU CPU models (SNP)", default=("EPYC-v4",))
    vmms: tuple[Literal["qemu", "ec2", "gce"], ...] = doc("VMM variants (SNP)", default=("qemu",))
    guest_features: tuple[int, ...] = doc("SEV_FEATURES values (SNP)", default=(0x1,))
    memory_mib: int = doc("guest memory", default=2048, minimum=64, maximum=1 << 22)
    snp: SnpLaunch = doc("SNP launch parameters", default=SnpLaunch())
    tdx: TdxLaunch = doc("TDX launch parameters", default=TdxLaunch())
    kata: KataLaunch | None = doc("measure what the Kata runtime launches: the command line, the "
                                  "vCPUs per pod CPU limit and the CPU model come from a model of "
                                  "the runtime reading this Kata configuration (then vcpus, "
                                  "vcpu_types, vmms and cmdline.runtime_params are not used; "
                                  "docs/kata.md)", default=None)

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


def _check_tree(ctx: "_Ctx", where: str, agent_path: str, dirs: tuple[str, ...],
                groups: tuple[tuple[str, tuple], ...]) -> None:
    """The image tree of an initrd or a rootfs: plain absolute paths, none given twice, and
    none replacing the agent (``agent_path``)."""
    for i, d in enumerate(dirs):
        _check_image_path(ctx, f"{where}.dirs[{i}]", d)
    seen: dict[str, str] = {}
    for kind, items in groups:
        for i, it in enumerate(items):
            p = "/" + it.path.strip("/")
            if p == agent_path:
                ctx.fail(f"{where}.{kind}[{i}].path", f"{agent_path} is the agent; it cannot be "
                         "replaced")
            if p in seen:
                ctx.fail(f"{where}.{kind}[{i}].path", f"duplicate of {seen[p]}")
            seen[p] = f"{where}.{kind}[{i}]"


def _check_image_path(ctx: "_Ctx", where: str, p: str) -> None:
    if not p.startswith("/"):
        ctx.fail(where, f"{p!r} must be an absolute path inside the image")
    parts = [x for x in p.split("/") if x]
    if not parts or any(x in ("..", ".") for x in parts) or "\0" in p:
        ctx.fail(where, f"{p!r} escapes the image root or is not a plain path")


# -- loading -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe and where it came from.

    Every file a recipe names goes through :meth:`resolve`, which confines it: after symlinks are
    resolved the file must lie inside the recipe's directory (a firmware descriptor may also
    lie in the ``firmware/`` directory beside it and a kernel fragment in the ``kernel/``
    directory beside it: the layout ccbuild ships, ``recipes/ firmware/ kernel/``). A ``path:``
    source pinned by sha256 may lie anywhere (its bytes are checked), and ``allow_outside``
    (``--allow-outside``) lifts the rule. The error names the YAML field and the path.
    """
    recipe: Recipe
    path: Path          # the recipe file
    name: str           # output name
    digest: str         # sha256 of the canonical JSON of the validated recipe
    text: bytes         # the recipe file's bytes
    allow_outside: bool = False   # --allow-outside: recipe paths may point anywhere
    # the recipe of the file alone when ``recipe`` is that very object (no --set): what the
    # provenance compares to find the overrides, without loading the file again
    file_recipe: "Recipe | None" = dc_field(default=None, compare=False, repr=False)

    # fields whose files may also lie in a sibling directory of the recipe's directory
    _SIBLING_ROOTS = {"firmware.build": "firmware", "kernel.build.fragments": "kernel"}

    def paths(self) -> list[tuple[str, str, bool]]:
        """``(yaml field, path, pinned)`` of every file the recipe names; ``pinned`` is true for a
        ``path:`` source with a sha256."""
        r = self.recipe
        out: list[tuple[str, str, bool]] = []

        def src(field: str, s: "Source | None") -> None:
            if s is not None and s.path:
                out.append((f"{field}.path", s.path, bool(s.sha256)))

        src("firmware.source", r.firmware.source)
        if r.firmware.build:
            out.append(("firmware.build", r.firmware.build, False))
        src("kernel.source", r.kernel.source)
        if r.kernel.build is not None:
            src("kernel.build.source", r.kernel.build.source)
            out += [(f"kernel.build.fragments[{i}]", f, False)
                    for i, f in enumerate(r.kernel.build.fragments)]
        src("agent.source", r.agent.source)
        for section in ("initrd", "rootfs"):
            sec = getattr(r, section)
            for i, f in enumerate(sec.files if sec is not None else ()):
                src(f"{section}.files[{i}].source", f.source)
        if r.initdata:
            out.append(("initdata", r.initdata, False))
        for key in ("id_key", "author_key"):
            if getattr(r.launch.snp, key):
                out.append((f"launch.snp.{key}", getattr(r.launch.snp, key), False))
        if r.launch.tdx.profile:
            out.append(("launch.tdx.profile", r.launch.tdx.profile, False))
        if r.launch.kata is not None:
            out.append(("launch.kata.configuration", r.launch.kata.configuration, False))
        return out

    def check_paths(self) -> None:
        """Confine every path the recipe names (see :meth:`resolve`), before any work."""
        for field, rel, pinned in self.paths():
            self.resolve(rel, field, pinned=pinned)

    def read(self, rel: str, field: str, kind: str = "file") -> bytes:
        """The bytes of a file the recipe names at ``field`` (confined as :meth:`resolve` says,
        a regular file of at most the kind's cap, builder.inputs)."""
        return read_regular(self.resolve(rel, field), kind,
                            f"{self.path.name}: {field}: {self._shown(rel)}")

    def resolve(self, rel: str, field: str | None = None, *, pinned: bool = False) -> Path:
        """The file a recipe path names (relative to the recipe's directory), symlinks resolved,
        confined to the recipe's directory unless ``pinned`` (a sha256-pinned ``path:`` source)
        or ``allow_outside``. ``field`` is the YAML field, for errors (found from the value when
        not given)."""
        if field is None:
            field = next((f for f, p, _ in self.paths() if p == rel), "a recipe path")
        base = self.path.parent
        where = f"{self.path.name}: {field}"
        shown = self._shown(rel)
        if not isinstance(rel, str) or not rel or "\0" in rel:
            raise CCBuildError(f"not a file path: {shown}", where)
        check_text(rel, where, "the path")
        p = Path(rel)
        p = p if p.is_absolute() else base / p
        try:
            real = p.resolve()  # non-strict: a missing file fails when it is read
        except (OSError, RuntimeError, ValueError) as e:  # RuntimeError: a symlink loop
            raise CCBuildError(f"cannot resolve {shown} ({getattr(e, 'strerror', None) or e})",
                               where) from None
        if pinned or self.allow_outside:
            return real
        roots = [base]
        sibling = self._SIBLING_ROOTS.get(field.split("[")[0])
        if sibling:
            roots.append(base.parent / sibling)
        for root in roots:
            try:
                real.relative_to(root.resolve())
                return real
            except ValueError:
                continue
        allowed = " or ".join(("the recipe's directory", f"../{sibling}/")[:len(roots)])
        hint = ("pin its sha256, or pass --allow-outside" if field.endswith(".path") and
                ".source" in field else "copy it there, or pass --allow-outside")
        raise CCBuildError(f"{shown} is outside {allowed} (after resolving symlinks)", where, hint)

    @staticmethod
    def _shown(value) -> str:
        """A path for a one-line message (quoted, no control characters, bounded)."""
        s = repr(value)
        return s if len(s) <= 200 else s[:197] + "..."


def apply_override(raw: dict, assignment: str, file: str) -> None:
    """Apply ``a.b.c=VALUE`` (VALUE parsed as YAML) to the raw recipe mapping."""
    if "=" not in assignment:
        raise RecipeError(file, assignment, "--set needs KEY=VALUE")
    check_text(assignment, f"--set {assignment[:40]!r}", "the assignment")
    key, value = assignment.split("=", 1)
    try:
        parsed = load_yaml(value, f"--set {key}") if value != "" else ""
    except CCBuildError:
        parsed = value  # not YAML (e.g. a template such as {{ kernel_params }}): the plain string
    else:
        if re.search(r"(^|\s)#", value) and not value.strip().startswith(("'", '"')):
            raise RecipeError(file, key.strip(), "in --set, ' #' starts a YAML comment that would "
                              "drop the rest of the value; quote it: --set 'KEY=\"a #b\"'")
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


def load_recipe(path: str | Path, overrides: list[str] = (), locked: bool = False,
                display: str | None = None) -> LoadedRecipe:
    """Load, override and validate a recipe; errors name ``display`` (default: the path given)."""
    p = Path(path)
    shown = display or str(path)
    text = read_regular(p, "recipe", shown)
    raw = load_yaml(text, shown, RecipeError)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(shown, "", "the top level must be a mapping")
    for a in overrides:
        apply_override(raw, a, shown)
    recipe = build(_Ctx(shown, locked=locked, error=RecipeError), Recipe, raw, "")
    name = recipe.name or p.stem
    canon = json.dumps(to_jsonable(recipe), sort_keys=True, separators=(",", ":")).encode()
    return LoadedRecipe(recipe, p.resolve(), name, hashlib.sha256(canon).hexdigest(), text,
                        file_recipe=None if overrides else recipe)


def schema_doc(cls=None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(yaml path, type, default, doc) rows for every recipe field."""
    from builder.schema import schema_doc as rows
    return rows(cls or Recipe, prefix)


def render_schema_doc() -> str:
    """docs/recipe.md, generated from the schema (``python -m builder.recipe > docs/recipe.md``)."""
    return render_reference(Recipe, "Recipe reference", [
        "Generated from `builder/recipe.py` (`python -m builder.recipe > docs/recipe.md`);",
        "a test keeps the two in step. Paths are relative to the recipe file.",
        "Any field can be overridden with `ccbuild build RECIPE --set path.to.field=VALUE`."])


if __name__ == "__main__":
    import sys
    sys.stdout.write(render_schema_doc())
