"""Property-based fuzzing of the text-input loaders (bounded time, runs in CI): the recipe loader
(with --set), the command-line template sandbox and the TDX profile loader. The property: any
input either loads or raises CCBuildError with one short line; no other exception escapes.
The parser fuzz tests of the binary evidence formats live beside their parsers' tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.errors import CCBuildError
from builder.measure.tdx_profile import load_profile
from builder.recipe import Cmdline, load_recipe
from builder.stages.cmdline import render_cmdline

REPO = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# JSON/YAML-like values with the shapes that broke loaders: huge and negative numbers, hex-ish
# strings, control characters, lone surrogates, nesting, lists where scalars belong.
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(1 << 80), max_value=1 << 80),
    st.sampled_from([10 ** 100, -1, 0, 0x30000, 2 ** 64, 2 ** 64 - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["0x-1", "0x", "1-0", "2G", "-2G", "..", "../../etc/passwd", "/dev/zero",
                     "{{ 1/0 }}", "\ud800", "a\x00b", "$(touch x)", "`id`", "EPYC-v4", "snp",
                     "tdx", "f" * 64, "0" * 96, "Boot0000", "uiapp", "interleaved"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)


def _paths(doc, prefix=()):
    """Every key path of a nested mapping (lists indexed)."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _set(doc, path, value):
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def _mutated(base: dict, muts) -> dict:
    """A deep copy of ``base`` with each (path, value) set where the path still exists."""
    import copy
    doc = copy.deepcopy(base)
    for path, value in muts:
        try:
            _set(doc, path, value)
        except (KeyError, IndexError, TypeError):
            pass
    return doc


def _mutations(base: dict):
    paths = sorted(_paths(base), key=str)
    return st.lists(st.tuples(st.sampled_from(paths), values), min_size=1, max_size=3)


def _dump(doc) -> bytes:
    return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")


def _check_error(e: CCBuildError) -> None:
    line = e.one_line()
    assert "\n" not in line and len(line) < 1000, line


SNP = yaml.safe_load((REPO / "recipes" / "snp.yaml").read_text())
TDX = yaml.safe_load((REPO / "recipes" / "tdx.yaml").read_text())


@FUZZ
@given(st.sampled_from([SNP, TDX]).flatmap(lambda base: st.tuples(st.just(base), _mutations(base))))
def test_fuzz_recipe_mutations(tmp_path_factory, case):
    base, muts = case
    doc = _mutated(base, muts)
    p = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    p.write_bytes(_dump(doc))
    try:
        load_recipe(p, display="r.yaml")
    except CCBuildError as e:
        _check_error(e)


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_fuzz_recipe_bytes(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    p.write_bytes(b"platform: snp\n" + data)
    try:
        load_recipe(p, display="r.yaml")
    except CCBuildError as e:
        _check_error(e)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["platform", "launch.vcpus", "cmdline.template",
                                           "launch.snp.policy", "kernel.source.sha256",
                                           "initrd.files", "a.b.c", "launch", ""]),
                          st.text(max_size=60)), max_size=3))
def test_fuzz_set_overrides(tmp_path_factory, sets):
    p = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    p.write_bytes(_dump(SNP))
    try:
        load_recipe(p, [f"{k}={v}" for k, v in sets], display="r.yaml")
    except CCBuildError as e:
        _check_error(e)


TOKENS = ["{{", "}}", "{%", "%}", "kernel_params", "runtime_params", "name", "platform", "range",
          "(", ")", "[", "]", "10", "**", "*", "~", "+", "/", "0", "9", "'a'", "|", "join", "replace",
          "upper", "for", "in", "endfor", "if", "endif", "set", "x", "=", ".", "__class__", "split",
          "loop", "index", ",", " ", "macro", "endmacro", "m", "%", "format", "\ud800", "\x00"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map("".join))
def test_fuzz_cmdline_template(template):
    try:
        out = render_cmdline(Cmdline(template=template, kernel_params="console=ttyS0 quiet"),
                             {"platform": "snp", "name": "n"})
    except CCBuildError as e:
        _check_error(e)
        return
    assert len(out.encode()) <= 4095 and "\n" not in out


PROFILE = yaml.safe_load((REPO / "recipes" / "profiles" / "qemu-10.1-ovmf-202508.yaml").read_text())


@FUZZ
@given(_mutations(PROFILE))
def test_fuzz_tdx_profile(tmp_path_factory, muts):
    doc = _mutated(PROFILE, muts)
    p = tmp_path_factory.mktemp("fuzz") / "p.yaml"
    p.write_bytes(_dump(doc))
    try:
        load_profile(p)
    except CCBuildError as e:
        _check_error(e)


# -- verify OUT ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_out(vectors, tmp_path_factory) -> Path:
    """A small valid OUT (verify accepts it) built with the project's own writers."""
    from builder.measure.sev_hashes import KernelHashes
    from builder.measure.snp import snp_matrix
    from helpers import write_small_out
    fw = (vectors / "snp/sev-snp-measure/ovmf_AmdSev_suffix.bin").read_bytes()
    kernel, initrd, cmdline = b"K" * 4096, b"I" * 2048, "console=ttyS0"
    entries = snp_matrix(fw, KernelHashes.of(kernel, initrd, cmdline), [1], ["EPYC-v4"],
                         ["qemu"], [0x1])
    return write_small_out(tmp_path_factory.mktemp("fuzz-out") / "out",
                           {"firmware.fd": fw, "vmlinuz": kernel, "initrd.img": initrd,
                            "cmdline.txt": cmdline.encode()}, {"snp": entries})


def _verify(out: Path) -> int:
    """`ccbuild verify OUT` in-process: the exit code; any exception but the CLI's own escapes."""
    import contextlib
    import io

    from builder.cli import main
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(["verify", str(out)])
    assert rc in (0, 1, 2), rc
    if rc:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("ccbuild: error: "), err.getvalue()
    return rc


def test_small_out_verifies(small_out):
    assert _verify(small_out) == 0


@FUZZ
@given(st.sampled_from(["manifest.json", "measurements.json"]), st.data())
def test_fuzz_verify_out(small_out, tmp_path_factory, name, data):
    """Mutate manifest.json or measurements.json structurally (values, types, nesting) and run
    verify: it accepts or fails with one line (never a traceback)."""
    import json
    import shutil
    d = tmp_path_factory.mktemp("fuzz-verify") / "out"
    shutil.copytree(small_out, d)
    doc = json.loads((d / name).read_text())
    muts = data.draw(_mutations(doc))
    mutated = _mutated(doc, muts)
    (d / name).write_text(json.dumps(mutated, allow_nan=True, ensure_ascii=False)
                          .encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
    assert _verify(d) in (0, 1, 2)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_verify_out_bytes(small_out, tmp_path_factory, junk):
    """Arbitrary bytes as measurements.json: verify fails with one line."""
    import shutil
    d = tmp_path_factory.mktemp("fuzz-verify") / "out"
    shutil.copytree(small_out, d)
    (d / "measurements.json").write_bytes(junk)
    assert _verify(d) in (1, 2)
