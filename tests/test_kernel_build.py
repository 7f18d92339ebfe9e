"""Kernel from source (builder.stages.kernel_build): fragment merge and the dropped-option check,
then the real thing on the pinned Debian linux-source-6.12: one build per cache (a session
fixture; later sessions take it from the store), a second build in another directory that must
be bit-identical, a fragment whose option Kconfig drops, and boots of the minimal kernel."""

from __future__ import annotations

import hashlib
import time

import pytest

from builder.errors import CCBuildError
from builder.stages import kernel_build as kb

# -- fragments and the check (fast) ----------------------------------------------------------


def test_parse_config_lines():
    text = "# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\n\nCONFIG_D=0x10\n"
    assert kb.parse_config(text, "f") == {"CONFIG_A": "y", "CONFIG_B": "n",
                                          "CONFIG_C": '"x y"', "CONFIG_D": "0x10"}


def test_parse_config_names_the_bad_line():
    with pytest.raises(CCBuildError, match=r"kernel/fragments/x\.config:2") as e:
        kb.parse_config("CONFIG_A=y\nA=y\n", "kernel/fragments/x.config")
    assert "not a Kconfig line" in str(e.value)


def test_later_fragment_overrides_and_merge_replaces_lines():
    req = kb.requested_options((kb.Fragment("a", "CONFIG_X=y\nCONFIG_Y=y\n"),
                                kb.Fragment("b", "# CONFIG_X is not set\n")))
    assert req == {"CONFIG_X": ("n", "b"), "CONFIG_Y": ("y", "a")}
    merged = kb.merge_config("CONFIG_X=y\n# CONFIG_Y is not set\nCONFIG_Z=y\n", req)
    assert kb.parse_config(merged, ".config") == {"CONFIG_X": "n", "CONFIG_Y": "y",
                                                  "CONFIG_Z": "y"}
    assert merged.count("CONFIG_Y") == 1


def test_dropped_options_listed_in_one_line():
    req = {"CONFIG_A": ("y", "kernel/fragments/a.config"),
           "CONFIG_B": ("y", "kernel/fragments/b.config"),
           "CONFIG_C": ("n", "kernel/fragments/b.config"),
           "CONFIG_D": ("y", "kernel/fragments/b.config")}
    final = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=m\n"
    with pytest.raises(CCBuildError) as e:
        kb.check_config(req, final, "kernel.build")
    msg = str(e.value)
    assert msg.startswith("kernel fragment options dropped: CONFIG_B (from "
                          "kernel/fragments/b.config), CONFIG_D (from kernel/fragments/b.config)")
    assert "CONFIG_A" not in msg and "CONFIG_C" not in msg and "\n" not in msg
    kb.check_config(req, final.replace("# CONFIG_B is not set", "CONFIG_B=y")
                    .replace("CONFIG_D=m", "CONFIG_D=y"), "kernel.build")


def test_cache_key_covers_inputs():
    tools = {"gcc": "gcc 12"}
    s = kb.KernelBuildSpec("0" * 64, (kb.Fragment("a", "CONFIG_X=y\n"),), 1)
    k = kb.cache_key(s, tools)
    assert kb.cache_key(kb.KernelBuildSpec("1" * 64, s.fragments, 1), tools) != k
    assert kb.cache_key(kb.KernelBuildSpec(s.tarball_sha256,
                                           (kb.Fragment("a", "CONFIG_X=n\n"),), 1), tools) != k
    assert kb.cache_key(kb.KernelBuildSpec(s.tarball_sha256, s.fragments, 2), tools) != k
    assert kb.cache_key(s, {"gcc": "gcc 13"}) != k
    assert kb.cache_key(s, dict(tools)) == k
    moved = kb.KernelBuildSpec(s.tarball_sha256, (kb.Fragment("../elsewhere/a", "CONFIG_X=y\n"),), 1)
    assert kb.cache_key(moved, tools) == k          # contents, not where the fragment lives


def test_build_env_is_fixed():
    env = kb.build_env(1735689600)
    assert env["KBUILD_BUILD_TIMESTAMP"] == "Wed, 01 Jan 2025 00:00:00 GMT"
    assert (env["KBUILD_BUILD_USER"], env["KBUILD_BUILD_HOST"],
            env["KBUILD_BUILD_VERSION"]) == ("ccbuild", "ccbuild", "1")


def test_recipe_kernel_needs_exactly_one(tmp_path):
    from builder.recipe import RecipeError, load_recipe
    base = ("platform: snp\nfirmware: {source: {path: fw.fd}}\nagent: {build: test-agent}\n")
    (tmp_path / "both.yaml").write_text(
        base + "kernel: {source: {path: k}, build: {source: {path: t}, fragments: [a.config]}}\n")
    with pytest.raises(RecipeError, match=r"kernel: exactly one of source, build"):
        load_recipe(tmp_path / "both.yaml")
    (tmp_path / "nofrag.yaml").write_text(
        base + "kernel: {build: {source: {path: t}, fragments: []}}\n")
    with pytest.raises(RecipeError, match=r"kernel\.build\.fragments: at least one"):
        load_recipe(tmp_path / "nofrag.yaml")


def test_shipped_recipes_share_one_kernel():
    """snp/tdx minimal and verity recipes name the same source and fragments: one build (and one
    cache entry) serves all four, so CI builds the kernel once."""
    from pathlib import Path
    from builder.recipe import load_recipe
    repo = Path(__file__).resolve().parent.parent
    builds = {n: load_recipe(repo / "recipes" / f"{n}.yaml").recipe.kernel.build
              for n in ("snp-minimal", "tdx-minimal", "snp-verity", "tdx-verity")}
    assert len(set(builds.values())) == 1 and None not in builds.values()
    b = builds["snp-minimal"]
    assert b.source.debian == "linux-source-6.12" and b.source.sha256
    for rel in b.fragments:
        kb.parse_config((repo / "recipes" / rel).read_text(), rel)


# -- the real kernel (slow) ------------------------------------------------------------------


@pytest.fixture(scope="session")
def kernel_recipe(recipe_file, store):
    """(loaded recipe, tarball path, spec) of recipes/snp-minimal.yaml's kernel."""
    from builder.recipe import load_recipe
    from builder.sources.resolve import ResolveOptions
    p = recipe_file("snp-minimal")
    lr = load_recipe(p)
    tarball, spec, _ = kb.spec_for_recipe(lr, store, ResolveOptions(store, p.parent))
    return lr, tarball, spec


@pytest.fixture(scope="session")
def minimal_kernel(kernel_recipe, store) -> kb.KernelBuildResult:
    """The minimal kernel, built once per cache (the first session pays ~4 min on 2 cores)."""
    _, tarball, spec = kernel_recipe
    return kb.build_cached(store, tarball, spec, jobs=2)


@pytest.fixture(scope="session")
def minimal_out(recipe_file, minimal_kernel, tmp_path_factory):
    """recipes/snp-minimal.yaml built into OUT (its kernel from the store)."""
    from builder.build import BuildOptions, build
    out = tmp_path_factory.mktemp("snp-minimal") / "out"
    return build(recipe_file("snp-minimal"), BuildOptions(out=out, jobs=2))


@pytest.mark.slow
def test_minimal_kernel_has_every_requested_option(kernel_recipe, minimal_kernel):
    _, _, spec = kernel_recipe
    final = kb.parse_config(minimal_kernel.config, ".config", strict=False)
    for opt, (value, frag) in kb.requested_options(spec.fragments).items():
        assert final.get(opt, "n") == value, (opt, frag)
    from builder.stages.kernel import inspect_kernel
    info = inspect_kernel(minimal_kernel.bzimage, "bzImage")      # PE + setup header
    assert info.release == (6, 12)
    assert "ccbuild@ccbuild" in info.version and "#1" in info.version
    assert minimal_kernel.bzimage[:2] == b"MZ"


@pytest.mark.slow
def test_rebuild_in_another_directory_is_bit_identical(kernel_recipe, minimal_kernel, store,
                                                      tmp_path):
    """A second, uncached build in a directory with a longer, different path: same bytes."""
    _, tarball, spec = kernel_recipe
    work = tmp_path / "a-second-build-directory-with-a-much-longer-path"
    log = tmp_path / "rebuild.log"
    t0 = time.monotonic()
    image, config = kb.build_kernel(tarball, spec, work, log, jobs=2)
    seconds = time.monotonic() - t0
    assert config == minimal_kernel.config
    assert hashlib.sha256(image).hexdigest() == hashlib.sha256(minimal_kernel.bzimage).hexdigest()
    assert str(work).encode() not in image and str(tmp_path).encode() not in image
    print(f"\nkernel rebuild in a second directory: {seconds:.0f} s, bit-identical "
          f"({len(image)} bytes)")


@pytest.mark.slow
def test_fragment_with_a_dropped_option_fails_naming_it(kernel_recipe, tmp_path):
    """TDX guest support without its dependencies (PARAVIRT, X2APIC, HYPERVISOR_GUEST): Kconfig
    drops both options, the build stops before compiling and names them and their fragment."""
    lr, tarball, spec = kernel_recipe
    base = next(f for f in spec.fragments if f.name.endswith("base.config"))
    bad = kb.Fragment("kernel/fragments/bad-tdx.config",
                      "CONFIG_INTEL_TDX_GUEST=y\nCONFIG_TDX_GUEST_DRIVER=y\n")
    bad_spec = kb.KernelBuildSpec(spec.tarball_sha256, (base, bad), spec.source_date_epoch)
    with pytest.raises(CCBuildError) as e:
        kb.build_kernel(tarball, bad_spec, tmp_path / "w", tmp_path / "log", jobs=2)
    assert str(e.value).startswith(
        "kernel fragment options dropped: CONFIG_INTEL_TDX_GUEST (from "
        "kernel/fragments/bad-tdx.config), CONFIG_TDX_GUEST_DRIVER (from "
        "kernel/fragments/bad-tdx.config)")
    assert not (tmp_path / "w" / "linux" / "vmlinux").exists()   # stopped before compiling


@pytest.mark.slow
def test_manifest_records_kernel_inputs(minimal_out, minimal_kernel):
    inputs = minimal_out.manifest["inputs"]
    roles = [i["role"] for i in inputs]
    assert "kernel-source" in roles and roles.count("kernel-fragment") == 4
    k = next(i for i in inputs if i["role"] == "kernel")
    assert k["kind"] == "build" and k["sha256"] == hashlib.sha256(minimal_kernel.bzimage).hexdigest()
    assert "gcc" in k["toolchain"]
    assert minimal_out.files["vmlinuz"] == minimal_kernel.bzimage


@pytest.mark.slow
@pytest.mark.boot
def test_minimal_kernel_boots_the_agent_next_to_debian_kernel(minimal_out, minimal_kernel,
                                                              recipe_file, debian_file, tmp_path,
                                                              capsys):
    """The minimal kernel boots the test agent from the initrd with the exact measured cmdline;
    the Debian cloud kernel of recipes/snp.yaml boots the same initrd for comparison."""
    import guestboot
    from builder.recipe import load_recipe
    out = minimal_out.out
    b = guestboot.boot(out, tmp_path / "minimal.log")
    assert b.ready, b.reason + guestboot.serial_text(b)[-2000:]
    assert "cmdline " + minimal_out.files["cmdline.txt"].decode() in guestboot.serial_text(b)

    src = load_recipe(recipe_file("snp")).recipe.kernel.source
    debian = debian_file(src.debian, src.version, src.suite, src.member)
    d = guestboot.boot_replaced(out, tmp_path, "vmlinuz", debian, tmp_path / "debian.log")
    assert d.ready, d.reason + guestboot.serial_text(d)[-2000:]
    with capsys.disabled():
        print(f"\n  minimal kernel (source, fragments): {len(minimal_kernel.bzimage):>9} bytes, "
              f"build {minimal_kernel.seconds:5.0f} s (2 cores), boot to ready {b.seconds:5.1f} s")
        print(f"  Debian {src.debian}: {len(debian):>9} bytes, build n/a (prebuilt, "
              f"modules not counted), boot to ready {d.seconds:5.1f} s")
    assert len(minimal_kernel.bzimage) < len(debian) / 2
