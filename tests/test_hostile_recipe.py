"""Hostile recipes, --set values, command-line templates and TDX profiles, run through the CLI.

Every case runs `ccbuild` in a subprocess under a memory limit and a timeout (tests/helpers.py)
and must end with exit 1 or 2 and one `ccbuild: error:` line, no traceback; template cases also
check that nothing ran (a canary file that an escaped template would create stays absent). The
builds use an empty store and --offline, so a case that got past validation would stop at the
first stage with its own one-line error: each case therefore also names the message it expects,
which proves the refusal came from the check under test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import assert_one_line_error, run_cli, synthetic_tdvf, tree_snapshot


@pytest.fixture
def tdx_stub_firmware(tmp_path) -> Path:
    """A small synthetic TDVF image (enough for `measure tdx` to reach the profile)."""
    p = tmp_path / "tdvf.fd"
    p.write_bytes(synthetic_tdvf())
    return p

BASE = """\
platform: snp
firmware:
  source: {path: fw.fd, sha256: "%s"}
kernel:
  source: {path: vmlinuz, sha256: "%s"}
agent:
  build: test-agent
cmdline:
  kernel_params: "console=ttyS0"
  template: "{{ kernel_params }}"
launch:
  vcpus: [1]
  vcpu_types: [EPYC-v4]
""" % ("0" * 64, "1" * 64)


def _recipe(tmp: Path, text: str | bytes) -> Path:
    p = tmp / "r.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return p


def _build(tmp: Path, recipe: Path, *extra: str):
    env = {"CCBUILD_CACHE": str(tmp / "store")}
    return run_cli(["build", str(recipe), "-o", str(tmp / "out"), "--offline", *extra],
                   cwd=tmp, env=env)


CANARY = "CANARY"

# -- command-line templates: code execution, resource exhaustion, bad values -----------------------
TEMPLATES = [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "not allowed"),
    ("{{ cycler.__init__.__globals__.os.popen('touch CANARY').read() }}", "template"),
    ("{{ joiner.__init__.__globals__.os.system('touch CANARY') }}", "template"),
    ("{{ lipsum.__globals__['os'].system('touch CANARY') }}", "undefined"),
    ("{{ namespace.__init__.__globals__.os.system('touch CANARY') }}", "template"),
    ("{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch CANARY') }}",
     "not allowed"),
    ("{{ kernel_params.__class__.__base__.__subclasses__() }}", "not allowed"),
    ("{{ kernel_params.upper.__self__ }}", "not allowed"),
    ("{{ kernel_params.__len__() }}", "not allowed"),
    ("{{ ().__class__.__bases__[0] }}", "not allowed"),
    ("{{ config }}", "undefined"),
    ("{{ request.application.__globals__ }}", "undefined"),
    ("{% include '/etc/passwd' %}", "template"),
    ("{% import 'os' as os %}{{ os.system('touch CANARY') }}", "template"),
    ("{% extends '/etc/passwd' %}", "template"),
    ("{% for i in range(10**10) %}x{% endfor %}", "range of"),
    ("{% for i in range(4000) %}{% for j in range(4000) %}{% for k in range(4000) %}"
     "{% endfor %}{% endfor %}{% endfor %}", "longer than"),
    ("{{ 'a' * 10**9 }}", "repetition too large"),
    ("{{ [0] * 10**9 }}", "repetition too large"),
    ("{{ 10 ** 100000 }}", "number too large"),
    ("{% set x = 'a' * 60000 %}{{ x ~ x }}", "concatenation too long"),
    ("{{ range(4096)|join('x' * 60000) }}", "join result too long"),
    ("{{ ('a' * 60000)|replace('a', 'bb' * 1000) }}", "replace result too long"),
    ("{{ 'x'|center(10**9) }}", "filter"),
    ("{{ 'x'|indent(10**9) }}", "filter"),
    ("{{ 'x'|wordwrap(1) }}", "filter"),
    ("{{ '%*d' % (10**9, 1) }}", "not allowed"),
    ("{{ '{:>999999999}'.format(1) }}", "not allowed"),
    ("{{ kernel_params.ljust(10**9) }}", "not allowed"),
    ("{{ kernel_params.zfill(10**9) }}", "not allowed"),
    ("{{ kernel_params.encode() }}", "not allowed"),
    ("{{ 1/0 }}", "division by zero"),
    ("{{ 1 // 0 }}", "division"),
    ("{{ nope }}", "undefined template variable"),
    ("{{ kernel_params[10**20] }}", "template"),
    ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "template"),
    ("{{", "syntax error"),
    ("{% for %}", "syntax error"),
    ("{{ 'x' * 5000 }}", "command line too long"),
    ("{{ '\\x01' }}", "control characters"),
    ("{{ '\\x7f' }}", "control characters"),
    ("{{ '\\ud800' }}", "lone surrogate"),
    ("{{ {'a': 1}.items() }}", "not allowed"),
    ("{{ (range(3)|list).append(4) }}", "not allowed"),
]


@pytest.mark.parametrize("template,expected", TEMPLATES, ids=[t[:50] for t, _ in TEMPLATES])
def test_hostile_template_via_set(tmp_path, template, expected):
    """The template through --set: refused before any stage, nothing runs."""
    r = _recipe(tmp_path, BASE)
    o = _build(tmp_path, r, "--set", f"cmdline.template={template}")
    line = assert_one_line_error(o, (2,), contains="cmdline.template")
    assert expected in line, line
    assert not (tmp_path / CANARY).exists() and not (Path.cwd() / CANARY).exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("template,expected", TEMPLATES[:12], ids=[t[:50] for t, _ in TEMPLATES[:12]])
def test_hostile_template_in_recipe(tmp_path, template, expected):
    import json
    text = BASE.replace('template: "{{ kernel_params }}"', f"template: {json.dumps(template)}")
    o = _build(tmp_path, _recipe(tmp_path, text))
    line = assert_one_line_error(o, (2,), contains="cmdline.template")
    assert expected in line, line
    assert not (tmp_path / CANARY).exists()


def test_a_valid_template_passes_the_checks(tmp_path):
    """Control: the base recipe gets past validation and the template check and stops at the
    first stage (an empty store, --offline), so the refusals above came from the checks."""
    o = _build(tmp_path, _recipe(tmp_path, BASE), "--set",
               "cmdline.template={{ kernel_params|upper }} {{ name }} {% for i in range(2) %}"
               "x{{ loop.index }}{% endfor %}")
    line = assert_one_line_error(o, (2,))
    assert "cmdline.template" not in line and "r.yaml" not in line, line


# -- malformed YAML and recipe values --------------------------------------------------------------
def _bomb(levels: int = 30) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


RECIPES = [
    (BASE + _bomb(), "aliases"),
    (BASE.replace("launch:", "x: &x {a: 1}\ny: *x\nlaunch:"), "aliases"),
    (BASE.replace("platform: snp", "<<: *undefined\nplatform: snp"), "YAML"),
    ("[" * 10000 + "]" * 10000, "nested deeper"),
    ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 200)), "nested deeper"),
    ("{" * 5000, "nested deeper"),
    (BASE.replace("[1]", "[" + "9" * 5000 + "]"), "integer with 5000 digits"),
    (BASE.replace("[1]", "[0x" + "f" * 100 + "]"), "integer with"),
    (BASE + "source_date_epoch: " + "1" * 30 + "\n", "source_date_epoch"),
    (BASE + "source_date_epoch: -1\n", "source_date_epoch"),
    (BASE.replace("kernel_params: \"console=ttyS0\"", 'kernel_params: "\\ud800"'), "lone surrogate"),
    (BASE.replace("kernel_params: \"console=ttyS0\"", 'kernel_params: "\\udfff x"'), "lone surrogate"),
    (BASE.replace("platform: snp", "platform: snp\nplatform: tdx"), "duplicate key"),
    (BASE + "---\nplatform: tdx\n", "more than one YAML document"),
    (b"platform: snp\n\xff\xfe\n", "not UTF-8"),
    (b"\xef\xbb\xbfplatform: [", "not valid YAML"),
    ("platform: snp\x00\n", "unacceptable character"),
    ("platform: snp\x1b[31m\n", "unacceptable character"),
    ("platform: [unclosed\n", "not valid YAML at line"),
    ("\tplatform: snp\n", "not valid YAML at line"),
    ("platform: !!python/object/apply:os.system ['touch CANARY']\n", "constructor"),
    ("platform: !!python/name:os.system\n", "constructor"),
    ("!!binary AAAA\n", "mapping"),
    ("- a\n- b\n", "mapping"),
    ("just a string\n", "mapping"),
    ("? [a, b]\n: c\n", "unhashable"),
    (BASE.replace("platform: snp", "platform: [snp]"), "platform"),
    (BASE.replace("platform: snp", "platform: {a: 1}"), "platform"),
    (BASE.replace("vcpus: [1]", "vcpus: 1"), "launch.vcpus"),
    (BASE.replace("vcpus: [1]", "vcpus: [100000]"), "launch.vcpus"),
    (BASE.replace("vcpus: [1]", "vcpus: ['1-100000000000']"), "launch.vcpus"),
    (BASE.replace("vcpus: [1]", "vcpus: [[1]]"), "launch.vcpus"),
    (BASE.replace("vcpu_types: [EPYC-v4]", "vcpu_types: EPYC-v4"), "launch.vcpu_types"),
    (BASE.replace("vcpu_types: [EPYC-v4]", "vcpu_types: [{a: 1}]"), "launch.vcpu_types"),
    (BASE.replace("launch:", "launch:\n  memory_mib: " + "9" * 40), "launch.memory_mib"),
    (BASE.replace("launch:", "launch:\n  memory_mib: 1.5e300"), "launch.memory_mib"),
    (BASE.replace("launch:", "launch:\n  guest_features: [0x-1]"), "launch.guest_features"),
    (BASE.replace("launch:", "launch:\n  guest_features: [-1]"), "launch.guest_features"),
    (BASE.replace("launch:", "launch:\n  snp: {policy: " + "1" * 30 + "}"), "launch.snp.policy"),
    (BASE.replace("launch:", "launch:\n  snp: {policy: [1]}"), "launch.snp.policy"),
    (BASE.replace("launch:", "launch:\n  snp: {family_id: '\\u00e9'}"), "launch.snp.family_id"),
    (BASE.replace('"%s"' % ("0" * 64), '"' + "z" * 64 + '"'), "firmware.source.sha256"),
    (BASE.replace('"%s"' % ("0" * 64), '["%s"]' % ("0" * 64)), "firmware.source.sha256"),
    (BASE.replace("fw.fd", "[fw.fd]"), "firmware.source.path"),
    (BASE.replace("build: test-agent", "build: '$(touch CANARY)'"), "agent.build"),
    (BASE.replace("cmdline:", "cmdline: null\nx:"), "unknown key"),
    (BASE.replace("cmdline:", "cmdline:\n  template: 1\n  x:"), "duplicate key"),
    (BASE + "initrd:\n  files: [{path: ../etc/passwd, content: x}]\n", "initrd.files[0].path"),
    (BASE + 'initrd:\n  files: [{path: "/a\\0b", content: x}]\n', "initrd.files[0].path"),
    (BASE + "initrd:\n  files: {a: b}\n", "initrd.files"),
    (BASE + "initrd:\n  compression: lzma9000\n", "initrd.compression"),
    (BASE + "x" * 100 + ": 1\n", "unknown key"),
    ("", "required"),
    ("~\n", "required"),
]


@pytest.mark.parametrize("text,expected", RECIPES, ids=[f"r{i}" for i in range(len(RECIPES))])
def test_hostile_recipe(tmp_path, text, expected):
    o = _build(tmp_path, _recipe(tmp_path, text))
    line = assert_one_line_error(o, (2,))
    assert expected in line, line
    assert not (tmp_path / CANARY).exists()
    assert len(line) < 600, line          # messages quote hostile values briefly


SETS = [
    ("a=*b", None),                                   # an alias in --set: taken as a plain string
    ("cmdline.kernel_params=&a [*a]", None),
    ("launch.vcpus=" + "[" * 5000, None),             # not YAML -> a string -> a type error
    ("launch.vcpus=[" + "9" * 5000 + "]", "launch.vcpus"),
    ("platform.x=1", "platform"),
    ("=1", "--set"),
    ("nokey", "--set"),
    ("a..b=1", "--set"),
    ("launch.vcpus=!!python/object/apply:os.system ['touch CANARY']", "launch.vcpus"),
    ("platform=" + "x" * 100000, "platform"),
]


@pytest.mark.parametrize("assignment,expected", SETS, ids=[f"s{i}" for i in range(len(SETS))])
def test_hostile_set(tmp_path, assignment, expected):
    o = _build(tmp_path, _recipe(tmp_path, BASE), "--set", assignment)
    line = assert_one_line_error(o, (2,))
    if expected:
        assert expected in line, line
    assert not (tmp_path / CANARY).exists()
    assert len(line) < 600, line


def test_set_with_undecodable_bytes(tmp_path):
    """argv bytes that are not UTF-8 arrive as lone surrogates."""
    import subprocess
    import sys
    r = _recipe(tmp_path, BASE)
    cp = subprocess.run([sys.executable, "-m", "builder.cli", "build", str(r), "--offline",
                         "--set", b"cmdline.kernel_params=\xff\xfe"],
                        capture_output=True, timeout=20, cwd=tmp_path,
                        env={**os.environ, "CCBUILD_CACHE": str(tmp_path / "store")})
    err = cp.stderr.decode(errors="replace")
    assert cp.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "not valid Unicode" in err, err


# -- what a recipe file is --------------------------------------------------------------------------
def _special(tmp: Path, kind: str) -> Path:
    p = tmp / "special.yaml"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dir":
        p.mkdir()
    elif kind == "devzero":
        p.symlink_to("/dev/zero")
    elif kind == "sparse":
        with open(p, "wb") as f:
            f.truncate(8 << 30)
    elif kind == "big":
        p.write_bytes(b"#" * (2 << 20))
    elif kind == "loop":
        p.symlink_to(p)
    elif kind == "dangling":
        p.symlink_to(tmp / "nowhere")
    elif kind == "unreadable":
        p.write_text(BASE)
        p.chmod(0)
    return p


@pytest.mark.parametrize("kind,expected", [
    ("fifo", "FIFO"), ("dir", "directory"), ("devzero", "character device"),
    ("sparse", "too large"), ("big", "too large"), ("loop", "recipe"), ("dangling", "not found"),
])
def test_recipe_that_is_not_a_regular_file(tmp_path, kind, expected):
    o = _build(tmp_path, _special(tmp_path, kind))
    assert_one_line_error(o, (2,), contains=expected)


@pytest.mark.parametrize("recipe", ["/proc/self/mem", "/proc/self/environ", "/sys/kernel/notes",
                                    "/dev/stdin", "-", "\x01", "a" * 300])
def test_recipe_paths_that_are_not_recipes(tmp_path, recipe):
    o = _build(tmp_path, Path(recipe))
    assert_one_line_error(o, (2,))


# -- TDX profiles (measure tdx --profile) ------------------------------------------------------------
PROFILES = [
    ("name: 't\n$(touch CANARY)'\n", "name"),
    ("name: 't;touch CANARY'\n", "name"),
    ("name: [a, b]\n", "name"),
    ("name: t\nmemory: [1]\n", "memory"),
    ("name: t\nmemory: " + "9" * 40 + "\n", "memory"),
    ("name: t\nmemory: 999999999G\n", "memory"),
    ("name: t\nmemory: -1\n", "memory"),
    ("name: t\nmemory: 1\n", "memory"),
    ("name: t\nacpi_data_size: -0x28000\n", "acpi_data_size"),
    ("name: t\nacpi_data_size: " + "1" * 30 + "\n", "acpi_data_size"),
    ("name: t\nacpi_blobs: [/etc/passwd, /etc/passwd, /etc/passwd]\n", "acpi_blobs[0]"),
    ("name: t\nacpi_blobs: [../../x, a, b]\n", "acpi_blobs[0]"),
    ("name: t\nacpi_blobs: {a: b}\n", "acpi_blobs"),
    ("name: t\nboot_order: [70000]\n", "boot_order[0]"),
    ("name: t\nboot_order: 1\n", "boot_order"),
    ("name: t\nboot_options: {Boot0000: zz}\n", "boot_options.Boot0000"),
    ("name: t\nboot_options: [uiapp]\n", "boot_options"),
    ("name: t\nruntime_events: [{description: x, data_file: /dev/zero}]\n", "runtime_events[0]"),
    ("name: t\nruntime_events: [{description: x, data_hex: xyz}]\n", "runtime_events[0].data_hex"),
    ("name: t\nruntime_events: [{description: x}]\n", "runtime_events[0]"),
    ("name: t\nruntime_events: [{description: x, digest: '00', event_type: EV_NOPE}]\n",
     "runtime_events[0]"),
    ("name: t\nruntime_events: x\n", "runtime_events"),
    ("name: t\nsources: [a]\n", "sources"),
    ("name: t\npage_add_order: [interleaved]\n", "page_add_order"),
    ("name: t\nsecure_boot_feature: yes please\n", "secure_boot_feature"),
    (_bomb(), "aliases"),
    ("[" * 10000, "nested deeper"),
    ("name: t\nname: u\n", "duplicate key"),
]


@pytest.mark.parametrize("text,expected", PROFILES, ids=[f"p{i}" for i in range(len(PROFILES))])
def test_hostile_tdx_profile(tmp_path, text, expected, tdx_stub_firmware):
    p = tmp_path / "profile.yaml"
    p.write_text(text)
    o = run_cli(["measure", "tdx", "--firmware", str(tdx_stub_firmware), "--profile", str(p)],
                cwd=tmp_path)
    line = assert_one_line_error(o, (2,), contains=expected)
    assert str(p) in line, line
    assert not (tmp_path / CANARY).exists()


@pytest.mark.parametrize("raw,expected", [(b"name: t\xff\n", "not UTF-8"),
                                          (b"\x00\x01", "unacceptable character")])
def test_profile_bytes(tmp_path, raw, expected, tdx_stub_firmware):
    p = tmp_path / "profile.yaml"
    p.write_bytes(raw)
    o = run_cli(["measure", "tdx", "--firmware", str(tdx_stub_firmware), "--profile", str(p)])
    assert_one_line_error(o, (2,), contains=expected)


@pytest.mark.parametrize("kind", ["fifo", "dir", "devzero", "sparse"])
def test_profile_that_is_not_a_regular_file(tmp_path, kind, tdx_stub_firmware):
    o = run_cli(["measure", "tdx", "--firmware", str(tdx_stub_firmware),
                 "--profile", str(_special(tmp_path, kind))])
    assert_one_line_error(o, (2,))


def test_valid_profile_measures(tmp_path, tdx_stub_firmware):
    """Control: a well-formed profile is accepted by the same command."""
    p = tmp_path / "profile.yaml"
    p.write_text("name: t\nmemory: 4G\nruntime_events: [{description: x, data_hex: '00ff'}]\n")
    o = run_cli(["measure", "tdx", "--firmware", str(tdx_stub_firmware), "--profile", str(p)])
    assert o.rc == 0, o.stderr
    assert len(o.stdout.strip()) == 96


def test_a_hostile_recipe_leaves_the_directory_alone(tmp_path):
    """Nothing is created or removed next to a refused recipe (no store, no OUT, no temporaries)."""
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "f").write_text("x")
    r = _recipe(tmp_path, BASE + _bomb())
    before = tree_snapshot(tmp_path)
    o = _build(tmp_path, r)
    assert_one_line_error(o, (2,))
    assert tree_snapshot(tmp_path) == before


def test_debug_shows_the_traceback(tmp_path):
    """The one-line contract is for users; --debug still shows developers the traceback."""
    r = _recipe(tmp_path, BASE + _bomb())
    o = run_cli(["--debug", "build", str(r), "--offline"], cwd=tmp_path,
                env={"CCBUILD_CACHE": str(tmp_path / "store")})
    assert o.rc != 0 and "Traceback" in o.stderr and "aliases" in o.stderr
