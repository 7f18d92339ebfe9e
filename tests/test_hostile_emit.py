"""Hostile values in the files a build emits (issue 10, "injection into emitted files").

The emitters are called as pure functions on a build view whose recipe name, command line,
cmdline.kernel_params / runtime_params / template, TDX profile name, RTMR0 reason, ID block and
initdata values are hostile (newlines, quotes, $(), backquotes, ;, backslashes, NUL, non-ASCII,
#, a leading -, very long strings, bidi and line-separator characters, a here-document
delimiter). Each output is parsed back by a real parser of its format:

* qemu-tdx.sh / qemu-snp.sh: ``bash -n`` and ``sh -n``; run in list mode (``sh qemu-tdx.sh``)
  in a temporary directory where an injected ``touch CANARY`` would create a marker file; the
  listed values read back (verbatim, or as the JSON literal the comment encoding uses); the exec
  block split by shlex, and the shell's own word splitting (a QEMU stand-in that records argv),
  give the exact hostile command line back;
* kata-configuration-qemu-*.toml: tomllib, values equal to the inputs;
* provenance / rvps / manifest JSON: json.loads, values equal to the inputs.

Values that cannot be written (NUL in a shell word, lone surrogates) must be one-line
CCBuildErrors naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from functools import lru_cache
from pathlib import Path

import jinja2
import pytest

from builder.emit import BuildView, kata, provenance, qemu, rvps
from builder.emit.manifest import dumps
from builder.emit.templating import UnencodedValue, display, render
from builder.errors import CCBuildError
from builder.measure.cpu import vcpu_type
from builder.recipe import Cmdline, expand_vcpus, load_recipe

REPO = Path(__file__).resolve().parent.parent

CANARY = "CANARY"
INJECT = f"touch {CANARY}"

# (id, value): every value must come back exactly from each format it is written to.
HOSTILE = [
    ("newline", f"a\n{INJECT}\nb"),
    ("newline-end", f"x\n{INJECT}\n"),
    ("cr-lf", f"a\r\n{INJECT}\r\n"),
    ("heredoc-delimiter", f"x\nLIST\n{INJECT}\ncat <<'LIST'\ny"),
    ("command-substitution", f"$({INJECT})"),
    ("backquotes", f"`{INJECT}`"),
    ("semicolon", f"a; {INJECT}; b"),
    ("single-quote", f"'; {INJECT}; '"),
    ("double-quote", f'"; {INJECT}; "'),
    ("mixed-quotes", f"it's \"$HOME\" `{INJECT}` $((1+1)) ${{X:-y}}"),
    ("backslash", "a\\b\\\\c\\"),
    ("backslash-newline", f"a\\\n{INJECT}"),
    ("hash", f"# {INJECT}"),
    ("leading-dash", "-append evil"),
    ("non-ascii", "é 中文 🎉 ß"),
    ("tab", f"a\t{INJECT}"),
    ("control-chars", "\x01\x07\x1b[31m\x7f\x85\x9b"),
    ("unicode-line-separators", f"a\u2028{INJECT}\u2029b\u0085c"),
    ("bidi", "abc\u202edef\u2066x\u2069\u200b"),
    ("starts-with-quote", '"quoted" rest'),
    ("toml-syntax", f'"\n[hypervisor.evil]\nkey = "{INJECT}"\n#'),
    ("jinja-syntax", "{{ 7*7 }} {% if 1 %}x{% endif %} {# c #}"),
    ("qemu-commas", "a=b,c=d,,e"),
    ("empty", ""),
    ("spaces", "   "),
    ("very-long", ("A'\"$`\\;# é" * 2000)[:20000]),
]
IDS = [i for i, _ in HOSTILE]
VALUES = [v for _, v in HOSTILE]


@lru_cache(maxsize=None)
def _recipe(platform: str):
    return load_recipe(REPO / "recipes" / f"{platform}.yaml")


def _snp_matrix(r, id_block: str | None = None) -> list[dict]:
    out = []
    L = r.launch
    for n in expand_vcpus(L.vcpus):
        for t in L.vcpu_types:
            for gf in L.guest_features:
                for vmm in L.vmms:
                    e = {"vcpus": n, "vcpu_type": vcpu_type(t).name, "vcpu_sig": "0x800f12",
                         "vmm": vmm, "guest_features": f"0x{gf:x}",
                         "launch_digest": f"{n:02x}" * 48}
                    if id_block is not None:
                        e["id_block"], e["id_auth"] = id_block, id_block
                    out.append(e)
    return out


def make_view(platform: str = "tdx", *, name: str | None = None, cmdline: str = "console=ttyS0",
              kernel_params: str | None = None, runtime_params: str | None = None,
              template: str | None = None, profile: str | None = "qemu-9.2-ovmf-202505",
              reason: str = "profile gives no acpi_blobs", id_block: str | None = None,
              vcpu_types: tuple[str, ...] | None = None) -> BuildView:
    lr = _recipe(platform)
    r = lr.recipe
    c = r.cmdline
    r = dataclasses.replace(r, cmdline=Cmdline(
        template=c.template if template is None else template,
        kernel_params=c.kernel_params if kernel_params is None else kernel_params,
        runtime_params=c.runtime_params if runtime_params is None else runtime_params))
    if platform == "snp":
        m = {"snp": _snp_matrix(r, id_block)}
        if id_block is not None:
            m["snp_id"] = {"id_key_digest": "ab" * 48, "author_key_digest": "cd" * 48}
    else:
        m = {"tdx": {"mrtd": "aa" * 48, "rtmr0": None, "rtmr0_reason": reason,
                     "rtmr1": "b1" * 48, "rtmr2": "b2" * 48, "rtmr3": "00" * 48,
                     "profile": {"name": profile}}}
    lr = dataclasses.replace(lr, recipe=r, name=lr.name if name is None else name)
    if vcpu_types is not None:  # after the matrix: only the script's -cpu sees them
        for e, t in zip(m["snp"], vcpu_types * len(m["snp"])):
            e["vcpu_type"] = t
    return BuildView(lr, b"F", b"K", b"I", cmdline, b"A", m, (), None)


# -- running the script ------------------------------------------------------------------------
def install(tmp_path: Path, files: dict[str, bytes], cmdline: str) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    for n, b in files.items():
        (d / n).write_bytes(b)
    (d / "cmdline.txt").write_text(cmdline)
    return d


def shell_syntax_ok(script: Path):
    for sh in ("bash", "sh"):
        cp = subprocess.run([sh, "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert cp.returncode == 0, f"{sh} -n: {cp.stderr}"


def run_list(d: Path, script: str) -> str:
    cp = subprocess.run(["sh", script], cwd=d, capture_output=True, text=True, timeout=30,
                        env=dict(os.environ, ARTIFACTS=str(d)))
    assert cp.returncode == 0, cp.stderr
    assert not (d / CANARY).exists(), "an injected command ran in list mode"
    return cp.stdout


def read_display(s: str) -> str:
    """The value a comment/listing shows: verbatim, or the JSON literal the encoding uses."""
    return json.loads(s) if s.startswith('"') else s


# a quoted word may span lines (a command line with newlines), so the block is taken whole
EXEC = re.compile(r'^(\d+)\)\n  shift\n  exec "\$QEMU" \\\n    (.*?) \\\n    "\$@"\n  ;;$',
                  re.M | re.S)


def script_argv(text: str, d: Path) -> dict[int, list[str]]:
    """Configuration number -> argv, from the script text by shlex: one group of words per
    line, lines joined by ' \\' continuations."""
    out = {}
    for m in EXEC.finditer(text):
        body = m.group(2).replace(" \\\n    ", " ")
        out[int(m.group(1))] = [a.replace("$ARTIFACTS/", f"{d}/") for a in shlex.split(body)]
    return out


def run_launch(d: Path, script: str, n: int, tmp_path: Path) -> subprocess.CompletedProcess:
    dumper = tmp_path / "qemu-argv"
    dumper.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    dumper.chmod(0o755)
    return subprocess.run(["sh", script, str(n)], cwd=d, capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, QEMU=str(dumper), ARTIFACTS=str(d)))


def option(argv: list[str], opt: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == opt]


# -- qemu-tdx.sh: every hostile value everywhere it can go --------------------------------------
@pytest.mark.parametrize("value", VALUES, ids=IDS)
def test_tdx_script_carries_hostile_values(value, tmp_path):
    cmd = as_cmdline(value)
    view = make_view("tdx", name=value, cmdline=cmd, profile=value, reason=value)
    files = qemu.emit(view, {})
    text = files["qemu-tdx.sh"].decode()
    d = install(tmp_path, files, cmd)
    shell_syntax_ok(d / "qemu-tdx.sh")
    # no comment or listing line carries a raw line break or control character
    for ln in text.splitlines():
        if ln.startswith("#") or ln.startswith("     "):
            assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", ln), ln
    listing = run_list(d, "qemu-tdx.sh")
    rows = [ln for ln in listing.splitlines() if ln.startswith("     rtmr0 ")]
    n = len(expand_vcpus(view.lr.recipe.launch.vcpus))
    assert len(rows) == n
    assert {read_display(ln[len("     rtmr0 "):]) for ln in rows} == {f"null ({value})"}
    assert len([ln for ln in listing.splitlines() if re.match(r"\d+: ", ln)]) == n
    # the command lines: shlex on the text, then the shell itself, give the exact value back
    argvs = script_argv(text, d)
    assert sorted(argvs) == list(range(1, n + 1))
    for argv in argvs.values():
        assert option(argv, "-append") == [cmd]
    cp = run_launch(d, "qemu-tdx.sh", n, tmp_path)
    assert not (d / CANARY).exists()
    assert cp.returncode == 0, cp.stderr
    assert json.loads((tmp_path / "argv.json").read_text()) == argvs[n]


def test_command_line_ending_in_a_newline_is_refused_by_the_script(tmp_path):
    """$(cat cmdline.txt) drops trailing newlines, so such a command line never matches: the
    script refuses (exit 2) in every mode and runs nothing. (A build's command line has its
    whitespace folded and stripped, so it never ends in a newline.)"""
    cmd = f"console=ttyS0\n{INJECT}\n"
    files = qemu.emit(make_view("tdx", cmdline=cmd), {})
    d = install(tmp_path, files, cmd)
    shell_syntax_ok(d / "qemu-tdx.sh")
    for args in ([], ["1"]):
        cp = subprocess.run(["sh", "qemu-tdx.sh", *args], cwd=d, capture_output=True,
                            text=True, timeout=30, env=dict(os.environ, ARTIFACTS=str(d),
                                                            QEMU="false"))
        assert cp.returncode == 2 and "not the measured command line" in cp.stderr
    assert not (d / CANARY).exists()


def as_cmdline(value: str) -> str:
    """The hostile value as a command line the script can check against cmdline.txt."""
    return value + "end" if value.endswith(("\n", "\r")) else value


@pytest.mark.parametrize("value", VALUES, ids=IDS)
def test_kata_tdx_fragment_parses_back(value):
    view = make_view("tdx", name=value, cmdline=value, kernel_params=value,
                     runtime_params=value, template=value, profile=value, reason=value)
    text = kata.emit(view, {})["kata-configuration-qemu-tdx.toml"].decode()
    doc = tomllib.loads(text)
    q = doc["hypervisor"]["qemu"]
    assert set(doc) == {"hypervisor"} and set(doc["hypervisor"]) == {"qemu"}
    assert q["kernel_params"] == value
    assert q["kernel"] == "@ARTIFACTS@/vmlinuz" and q["default_vcpus"] == 1
    comments = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert "#   " + display(value) in comments        # runtime_params and cmdline, one line each
    assert f"# (VMM profile {display(value)}; RTMR0 {display('not computed: ' + value)})" \
        in comments


@pytest.mark.parametrize("value", VALUES[::2], ids=IDS[::2])
def test_snp_script_and_fragment(value, tmp_path):
    cmd = as_cmdline(value)
    view = make_view("snp", name=value, cmdline=cmd, kernel_params=value,
                     runtime_params=value, template=value)
    files = {**qemu.emit(view, {}), **kata.emit(view, {})}
    q = tomllib.loads(files["kata-configuration-qemu-snp.toml"].decode())["hypervisor"]["qemu"]
    assert q["kernel_params"] == value and q["snp_guest_policy"] == 0x30000
    d = install(tmp_path, files, cmd)
    shell_syntax_ok(d / "qemu-snp.sh")
    run_list(d, "qemu-snp.sh")
    argvs = script_argv(files["qemu-snp.sh"].decode(), d)
    assert len(argvs) == len(view.measurements["snp"])
    assert all(option(a, "-append") == [cmd] for a in argvs.values())
    cp = run_launch(d, "qemu-snp.sh", 1, tmp_path)
    assert cp.returncode == 0, cp.stderr
    assert json.loads((tmp_path / "argv.json").read_text()) == argvs[1]
    assert not (d / CANARY).exists()


# -- values the formats cannot carry -------------------------------------------------------------
def one_line(e: CCBuildError) -> str:
    msg = e.one_line()
    assert "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.mark.parametrize("platform", ["tdx", "snp"])
def test_nul_in_command_line_is_refused_naming_it(platform):
    with pytest.raises(CCBuildError) as ei:
        qemu.emit(make_view(platform, cmdline="console=ttyS0\0init=/bin/sh"), {})
    msg = one_line(ei.value)
    assert "cmdline" in msg and "NUL" in msg and f"qemu-{platform}.sh" in msg


def test_nul_where_text_is_shown_is_escaped_not_refused(tmp_path):
    """A NUL in a profile name is only displayed (comments, listing): escaped, shown, parsed."""
    view = make_view("tdx", profile="a\0b", reason=f"\0{INJECT}")
    files = qemu.emit(view, {})
    assert b"\0" not in files["qemu-tdx.sh"]
    d = install(tmp_path, files, view.cmdline)
    shell_syntax_ok(d / "qemu-tdx.sh")
    listing = run_list(d, "qemu-tdx.sh")
    shown = json.dumps("null (\0" + INJECT + ")")
    assert "     rtmr0 " + shown in listing.splitlines()
    # in TOML a NUL is an escape like any other
    text = kata.emit(make_view("tdx", kernel_params="a\0b", profile="p\0"), {})[
        "kata-configuration-qemu-tdx.toml"].decode()
    assert tomllib.loads(text)["hypervisor"]["qemu"]["kernel_params"] == "a\0b"


SURROGATE = "name-\udcff"   # what an undecodable file name byte becomes in Python


@pytest.mark.parametrize("emitter, field", [
    (lambda: qemu.emit(make_view("tdx", name=SURROGATE), {}), "recipe name"),
    (lambda: qemu.emit(make_view("tdx", cmdline=SURROGATE), {}), "cmdline"),
    (lambda: qemu.emit(make_view("tdx", profile=SURROGATE), {}), "tdx.profile.name"),
    (lambda: qemu.emit(make_view("snp", cmdline=SURROGATE), {}), "cmdline"),
    (lambda: kata.emit(make_view("tdx", kernel_params=SURROGATE), {}), "cmdline.kernel_params"),
    (lambda: kata.emit(make_view("snp", template=SURROGATE), {}), "cmdline.template"),
    (lambda: kata.emit(make_view("tdx", name=SURROGATE), {}), "recipe name"),
    (lambda: dumps({"recipe": {"name": SURROGATE}}, "manifest.json"), "recipe.name"),
    (lambda: dumps({"inputs": [{"name": "ok"}, {"name": SURROGATE}]}), "inputs[1].name"),
    (lambda: dumps({SURROGATE: 1}), SURROGATE[:5]),
    (lambda: rvps.message({"tdx": {"mrtd": SURROGATE}}), "mr_td[0]"),
    (lambda: provenance.emit(make_view("tdx", name=SURROGATE), {"f": b""}), "recipe.name"),
    (lambda: provenance.dependency({"role": "kernel", "kind": "debian", "name": SURROGATE,
                                     "version": "1", "sha256": "00"}), "input name"),
], ids=["qemu-name", "qemu-cmdline", "qemu-profile", "snp-cmdline", "kata-kernel-params",
        "kata-template", "kata-name", "manifest", "manifest-list", "json-key", "rvps",
        "provenance", "purl"])
def test_lone_surrogate_is_a_one_line_error_naming_the_field(emitter, field):
    with pytest.raises(CCBuildError) as ei:
        emitter()
    msg = one_line(ei.value)
    assert field in msg and "surrogate" in msg, msg


def test_nan_is_not_written_as_json():
    with pytest.raises(CCBuildError) as ei:
        dumps({"a": [1.0, float("nan")]})
    assert "a[1]" in one_line(ei.value)


# -- QEMU option strings ---------------------------------------------------------------------
def test_commas_in_option_values_cannot_add_properties(tmp_path):
    """A comma in a value inside -object is doubled (QEMU's escape): it stays one value."""
    evil = "AAAA,kernel-hashes=off,policy=0x0"
    view = make_view("snp", id_block=evil)
    d = install(tmp_path, qemu.emit(view, {}), view.cmdline)
    argv = script_argv((d / "qemu-snp.sh").read_text(), d)[1]
    obj = [o for o in option(argv, "-object") if o.startswith("sev-snp-guest,")][0]
    props = re.split(r"(?<!,),(?!,)", obj)[1:]    # QEMU: ',' separates, ',,' is a comma
    kv = dict(p.split("=", 1) for p in props)
    assert kv["id-block"].replace(",,", ",") == evil
    assert kv["kernel-hashes"] == "on" and kv["policy"] == "0x30000"


@pytest.mark.parametrize("cpu", ["EPYC-v4,+sev-es", "EPYC-v4 -smp 64", "$(x)", "-EPYC", ""])
def test_cpu_model_that_adds_features_is_refused(cpu):
    with pytest.raises(CCBuildError) as ei:
        qemu.emit(make_view("snp", vcpu_types=(cpu,)), {})
    assert "vcpu_type" in one_line(ei.value)


# -- JSON ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", VALUES, ids=IDS)
def test_json_outputs_round_trip(value):
    view = make_view("tdx", name=value, reason=value, profile=value)
    inputs = ({"role": "kernel", "kind": "debian", "name": value, "version": value,
               "sha256": "22" * 32},
              {"role": "firmware", "kind": "url", "name": value, "version": "",
               "sha256": "11" * 32})
    view = dataclasses.replace(view, inputs=inputs)
    files = {"measurements.json": dumps(view.measurements)}
    assert json.loads(files["measurements.json"]) == view.measurements
    st = json.loads(provenance.emit(view, files)["provenance.intoto.json"])
    assert st["predicate"]["buildDefinition"]["externalParameters"]["recipe"]["name"] == value
    deps = st["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert [d["name"] for d in deps] == [f"kernel:{value}", f"firmware:{value}"]
    assert deps[1]["uri"] == value
    from urllib.parse import unquote
    assert unquote(deps[0]["uri"].removeprefix("pkg:deb/debian/").split("@")[0]) == value
    msg = json.loads(rvps.emit(view, files)["rvps-reference-values.json"])
    assert msg["type"] == "sample"


# -- the template guard ----------------------------------------------------------------------
def test_a_template_cannot_write_a_value_without_a_quoting_filter():
    from builder.emit.templating import _ENV
    with pytest.raises(UnencodedValue):
        _ENV.from_string("x = {{ v }}\n").render(v="a\nb")
    with pytest.raises(UnencodedValue):
        _ENV.from_string("n = {{ v }}\n").render(v=3)
    assert _ENV.from_string("x = {{ v | sh('v') }}\n").render(v="a b") == "x = 'a b'\n"
    with pytest.raises(jinja2.TemplateNotFound):
        render("absent.j2", "x")


def test_every_interpolation_in_the_shipped_templates_has_a_filter():
    for t in (REPO / "builder/emit/templates").glob("*.j2"):
        for expr in re.findall(r"\{\{(.*?)\}\}", t.read_text(), re.S):
            assert re.search(r"\|\s*(sh|sh_dq|text|toml)\s*\(", expr) or \
                expr.strip() == "line", f"{t.name}: {{{{{expr}}}}}"


def test_normal_values_are_written_verbatim():
    """The encoding changes nothing for ordinary values (reproducible outputs stay identical)."""
    view = make_view("tdx")
    text = qemu.emit(view, {})["qemu-tdx.sh"].decode()
    assert "# (VMM profile" not in text  # that line belongs to the Kata fragment
    assert "CMDLINE=console=ttyS0\n" in text
    assert 'cover kernel, command line and initrd as the VMM profile "qemu-9.2-ovmf-202505"' in text
    assert "     rtmr0 null (profile gives no acpi_blobs)\n" in text
    assert '  echo "qemu-tdx.sh: no configuration $1" >&2\n' in text
    k = kata.emit(view, {})["kata-configuration-qemu-tdx.toml"].decode()
    assert f"#   {view.lr.recipe.cmdline.runtime_params}\n" in k
    assert f"kernel_params = \"{view.lr.recipe.cmdline.kernel_params}\"\n" in k
    assert "# (VMM profile qemu-9.2-ovmf-202505; RTMR0 not computed: profile gives no " \
        "acpi_blobs)\n" in k


# -- through the CLI (real builds; slow) ------------------------------------------------------
@pytest.mark.slow
def test_cli_build_with_hostile_kernel_params(recipe_file, tmp_path):
    """End to end: kernel_params with quotes, $(), backquotes, ; and non-ASCII: the build's
    qemu-tdx.sh lists without running anything and launches with the exact measured command
    line; the Kata fragment parses back to the exact value."""
    from helpers import run_cli
    recipe = recipe_file("tdx")
    params = f"console=ttyS0 x=\"a b\" y='$({INJECT})' `{INJECT}`; z=é中#c \\"  # (" #" would start a YAML comment in --set)
    out = tmp_path / "out"
    o = run_cli(["build", str(recipe), "-o", str(out),
                 "--set", f"cmdline.kernel_params={params}"], timeout=3600)
    assert o.rc == 0, o.stderr
    shell_syntax_ok(out / "qemu-tdx.sh")
    assert "rtmr1" in run_list(out, "qemu-tdx.sh")
    q = tomllib.loads((out / "kata-configuration-qemu-tdx.toml").read_text())["hypervisor"]["qemu"]
    assert q["kernel_params"] == params
    cmdline = (out / "cmdline.txt").read_text()
    assert params in cmdline
    argv = script_argv((out / "qemu-tdx.sh").read_text(), out)[1]
    assert option(argv, "-append") == [cmdline]
    cp = run_launch(out, "qemu-tdx.sh", 1, tmp_path)
    assert cp.returncode == 0, cp.stderr
    assert json.loads((tmp_path / "argv.json").read_text()) == argv
    assert not (out / CANARY).exists() and not (tmp_path / CANARY).exists()


@pytest.mark.slow
def test_cli_build_with_an_injecting_profile_name_is_refused(recipe_file, tmp_path):
    """A VMM profile whose name would inject a command is a one-line error, and no OUT."""
    from helpers import assert_one_line_error, run_cli
    recipe = recipe_file("tdx")
    prof = (recipe.parent / "profiles" / "qemu-9.2-ovmf-202505.yaml").read_text()
    (recipe.parent / "evil-profile.yaml").write_text(re.sub(
        r"(?m)^name: .*$", "name: " + json.dumps(f"p\n{INJECT} #\nLIST\n{INJECT}\n"), prof))
    out = tmp_path / "out"
    o = run_cli(["build", str(recipe), "-o", str(out),
                 "--set", "launch.tdx.profile=evil-profile.yaml"], timeout=3600)
    assert "name" in assert_one_line_error(o, (2,))
    assert not out.exists() and not (tmp_path / CANARY).exists()
