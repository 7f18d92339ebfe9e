"""The no-op rebuild does only what it needs (issue 14): a command imports only its own verb's
module, signing code is imported only to sign, a build digests each byte string once (a damaged
store ref is a miss, a tampered .deb is still refused), the provenance does not load the recipe
file again when there are no overrides, and the emitters' templates come compiled ahead from
builder/emit/tmpl_*.py while they are in step. Timings are in bench/bench_noop.py, never here."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# -- the command line: one verb, one module -----------------------------------------------------

def test_verb_of_module_names_exactly_what_each_module_registers():
    import importlib

    from builder.cli import VERB_MODULES, VERB_OF_MODULE
    assert set(VERB_OF_MODULE) == set(VERB_MODULES)
    for name in VERB_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(name).register(sub)
        assert set(sub.choices) == {VERB_OF_MODULE[name]}, name


@pytest.mark.parametrize("argv,want", [
    (["build", "recipes/snp.yaml"], ["builder.cli.build"]),
    (["--debug", "-v", "build", "r.yaml"], ["builder.cli.build"]),
    (["id-block", "--help"], ["builder.cli.idblock"]),
    (["measure", "snp"], ["builder.cli.measure"]),
])
def test_a_command_line_needs_only_its_verb_module(argv, want):
    from builder.cli import verb_modules
    assert verb_modules(argv) == want


@pytest.mark.parametrize("argv", [[], ["--help"], ["-v"], ["no-such-verb"], ["--", "build"],
                                  ["idblock"], None])
def test_without_a_certain_verb_every_module_is_registered(argv):
    from builder.cli import VERB_MODULES, verb_modules
    assert verb_modules(argv) == VERB_MODULES


def test_every_global_option_takes_no_value():
    """verb_modules skips every argument before the verb that starts with '-': that holds only
    while no global option takes a value."""
    from builder.cli import make_parser
    p = make_parser([])
    opts = [a for a in p._actions if a.option_strings]
    assert opts and all(a.nargs == 0 for a in opts), [(a.option_strings, a.nargs) for a in opts]


def _help(parser, argv) -> str:
    out = io.StringIO()
    real = sys.stdout
    sys.stdout = out
    try:
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    finally:
        sys.stdout = real
    return out.getvalue()


@pytest.mark.parametrize("verb", ["build", "release", "lock", "measure", "id-block", "inspect",
                                  "boot", "verify", "kata", "explain"])
def test_a_verbs_help_is_the_same_with_only_its_module(verb):
    from builder.cli import make_parser
    full = _help(make_parser(), [verb, "--help"])
    assert full.startswith(f"usage: ccbuild {verb}")
    assert _help(make_parser([verb, "--help"]), [verb, "--help"]) == full


def test_an_unknown_verb_is_refused_with_every_verb_listed():
    from builder.cli import main
    err = io.StringIO()
    real = sys.stderr
    sys.stderr = err
    try:
        with pytest.raises(SystemExit) as e:
            main(["no-such-verb"])
    finally:
        sys.stderr = real
    assert e.value.code == 2
    assert "id-block" in err.getvalue() and "build" in err.getvalue()


def _modules_after(code: str) -> set[str]:
    cp = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                         "print(json.dumps(sorted(sys.modules)))"],
                        cwd=REPO, capture_output=True, check=True)
    return set(json.loads(cp.stdout.decode().splitlines()[-1]))


def test_build_imports_no_other_verb_and_no_signing_code():
    mods = _modules_after("from builder.cli import make_parser\n"
                          "make_parser(['build', 'r.yaml'])\nimport builder.build")
    assert "builder.cli.build" in mods and "builder.build" in mods
    unwanted = {"builder.cli.idblock", "builder.cli.kata", "builder.cli.verify",
                "builder.cli.inspect", "builder.cli.measure", "builder.emit.signature",
                "builder.keys", "cryptography"}
    assert not (mods & unwanted), sorted(mods & unwanted)


# -- one digest per byte string -------------------------------------------------------------------

def test_digests_hash_each_byte_string_once(monkeypatch):
    from builder.emit import manifest
    calls = []
    real = manifest.sha256_hex

    def counting(b):
        calls.append(len(b))
        return real(b)
    monkeypatch.setattr(manifest, "sha256_hex", counting)
    d = manifest.Digests()
    big = bytes(range(256)) * 1000
    assert d(big) == hashlib.sha256(big).hexdigest()
    assert d(big) == hashlib.sha256(big).hexdigest()
    assert len(calls) == 1
    other = big[:1] + big[1:]  # equal content, another object: hashed (and equal)
    assert other is not big
    assert d(other) == d(big) and len(calls) == 2


def test_digests_never_remember_a_mutable_buffer():
    from builder.emit.manifest import Digests
    d = Digests()
    buf = bytearray(b"abc")
    first = d(buf)
    buf[0] = ord("x")
    assert d(buf) != first and d(buf) == hashlib.sha256(b"xbc").hexdigest()


def test_manifest_and_sums_take_the_builds_digests():
    from builder.emit.manifest import Digests, make_manifest, sha256sums
    files = {"a": b"1", "b": b"22"}
    seen = []
    d = Digests()

    def spy(b):
        seen.append(b)
        return d(b)
    plain = sha256sums(files)
    assert sha256sums(files, spy) == plain and len(seen) == 2
    m = make_manifest(name="n", platform="snp", recipe_sha256="0" * 64, recipe_digest="0" * 64,
                      source_date_epoch=0, inputs=[], outputs=files, chain={}, build_key="k",
                      boot={}, sha256=spy)
    assert [o["sha256"] for o in m["outputs"]] == [hashlib.sha256(files[n]).hexdigest()
                                                   for n in sorted(files)]
    assert len(seen) == 4


def test_an_input_record_digests_its_data_once(monkeypatch):
    from builder.sources.resolve import Resolved
    r = Resolved("path", "k", "", "0" * 64, b"kernel")
    calls = []

    def digest(b):
        calls.append(b)
        return hashlib.sha256(b).hexdigest()
    rec = r.record("kernel", digest)
    assert rec["file_sha256"] == hashlib.sha256(b"kernel").hexdigest() and len(calls) == 1
    assert r.data_sha256 is r.data_sha256   # a property computed once
    same = Resolved("path", "k", "", hashlib.sha256(b"kernel").hexdigest(), b"kernel")
    assert "file_sha256" not in same.record("kernel")


# -- a Debian member already in the store ------------------------------------------------------

MEMBER = "boot/vmlinuz-test"
KERNEL = b"MZ" + bytes(range(256)) * 40


def _ar(name: bytes, data: bytes) -> bytes:
    head = (name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
            + str(len(data)).encode().ljust(10) + b"`\n")
    return head + data + (b"\n" if len(data) % 2 else b"")


def _deb() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("./" + MEMBER)
        info.size = len(KERNEL)
        t.addfile(info, io.BytesIO(KERNEL))
    return b"!<arch>\n" + _ar(b"debian-binary", b"2.0\n") + _ar(b"data.tar", buf.getvalue())


@pytest.fixture
def deb_store(tmp_path, monkeypatch):
    """A private store holding a small .deb (pinned by sha256) and a counter of the blobs
    re-hashed and compared with their name (Store._check, behind verified_path and get_bytes)."""
    from builder.recipe import Source
    from builder.sources.resolve import ResolveOptions
    from builder.store import Store
    store = Store.open(tmp_path / "store")
    pin = store.put_bytes(_deb())
    verified: list[str] = []
    real = Store._check

    def counting(p, sha256, actual, what):
        verified.append(sha256)
        return real(p, sha256, actual, what)
    monkeypatch.setattr(Store, "_check", staticmethod(counting))
    src = Source(debian="linux-image-test", version="1.0", suite="trixie", member=MEMBER,
                 sha256=pin)
    opts = ResolveOptions(store, tmp_path, offline=True)
    return store, src, opts, pin, verified


def test_a_member_extracted_before_comes_from_the_store_and_its_deb_is_still_verified(deb_store):
    from builder.sources.resolve import resolve
    store, src, opts, pin, verified = deb_store
    first = resolve(src, opts, "kernel.source")          # extracts from the verified .deb
    assert first.data == KERNEL and first.sha256 == pin and pin in verified
    verified.clear()
    again = resolve(src, opts, "kernel.source")          # the member's ref
    assert again.data == KERNEL and again.sha256 == pin
    assert verified == [pin, hashlib.sha256(KERNEL).hexdigest()]


def test_a_tampered_deb_is_refused_even_with_its_member_cached(deb_store):
    from builder.errors import CCBuildError
    from builder.sources.resolve import resolve
    store, src, opts, pin, _ = deb_store
    resolve(src, opts, "kernel.source")
    blob = store.blob_path(pin)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(CCBuildError, match="corrupt"):
        resolve(src, opts, "kernel.source")


def test_a_corrupt_member_blob_is_still_refused(deb_store):
    from builder.errors import CCBuildError
    from builder.sources.resolve import resolve
    store, src, opts, pin, _ = deb_store
    resolve(src, opts, "kernel.source")
    blob = store.blob_path(hashlib.sha256(KERNEL).hexdigest())
    blob.chmod(0o644)
    blob.write_bytes(b"MZ" + b"\0" * (len(KERNEL) - 2))
    with pytest.raises(CCBuildError, match="corrupt"):
        resolve(src, opts, "kernel.source")


@pytest.mark.parametrize("content", [b"not json", b'{"key": "x"}', b"[]"])
def test_a_damaged_member_ref_means_extracting_again(deb_store, content):
    from builder.sources.resolve import resolve
    store, src, opts, pin, verified = deb_store
    resolve(src, opts, "kernel.source")
    ref = next((store.root / "refs" / "deb-member").iterdir())
    ref.write_bytes(content)
    verified.clear()
    assert resolve(src, opts, "kernel.source").data == KERNEL
    assert pin in verified     # the .deb was read (and verified) again


def test_a_missing_deb_is_still_needed_when_the_member_is_cached(deb_store):
    """The member's ref stands for the .deb of that sha256: without the .deb in the store an
    offline build fails as before, whatever the member cache holds."""
    from builder.errors import CCBuildError
    from builder.sources.resolve import resolve
    store, src, opts, pin, _ = deb_store
    resolve(src, opts, "kernel.source")
    p = store.blob_path(pin)
    p.unlink()
    with pytest.raises(CCBuildError, match="not in the store"):
        resolve(src, opts, "kernel.source")


def test_a_ref_contradicting_the_pin_is_still_an_error(deb_store):
    from builder.errors import CCBuildError
    from builder.sources.debian import deb_ref_key
    from builder.sources.resolve import resolve
    store, src, opts, pin, _ = deb_store
    resolve(src, opts, "kernel.source")
    store.set_ref("debian-deb", deb_ref_key(src.debian, src.version, src.suite),
                  {"sha256": "1" * 64})
    with pytest.raises(CCBuildError, match="mismatch"):
        resolve(src, opts, "kernel.source")


# -- the provenance's overrides without loading the recipe again -----------------------------------

RECIPE = REPO / "recipes" / "snp.yaml"


def test_no_overrides_means_no_second_load(monkeypatch):
    from builder.emit import provenance
    from builder.recipe import load_recipe
    lr = load_recipe(RECIPE)
    assert lr.file_recipe is lr.recipe

    def refuse(*a, **k):
        raise AssertionError("the recipe file was loaded again")
    monkeypatch.setattr(provenance, "load_recipe", refuse)
    assert provenance.overrides_of(lr) == {}


def test_overrides_are_still_found_by_loading_the_file():
    from builder.emit.provenance import overrides_of
    from builder.recipe import load_recipe
    lr = load_recipe(RECIPE, ["launch.memory_mib=4096"])
    assert lr.file_recipe is None
    assert overrides_of(lr) == {"launch.memory_mib": 4096}


def test_a_recipe_replaced_after_loading_is_compared_with_the_file():
    from builder.emit.provenance import overrides_of
    from builder.recipe import load_recipe
    lr = load_recipe(RECIPE)
    other = load_recipe(RECIPE, ["launch.memory_mib=1024"]).recipe
    changed = replace(lr, recipe=other)
    assert overrides_of(changed) == {"launch.memory_mib": 1024}


# -- templates compiled ahead (builder/emit/tmpl_*.py) ---------------------------------------------

def _templates() -> list[str]:
    from builder.emit.templating import _ENV
    return _ENV.loader.list_templates()


def test_there_are_templates_to_compile():
    assert {"qemu.sh.j2", "kata-configuration.toml.j2"} <= set(_templates())


@pytest.mark.parametrize("name", ["qemu.sh.j2", "kata-configuration.toml.j2"])
def test_compiled_templates_are_in_step(name):
    """Regenerate with `python -m builder.emit.templating` when this fails (a template, the
    environment's options or the jinja2 version changed)."""
    from builder.emit.templating import compiled_module, compiled_source
    path = REPO / (compiled_module(name).replace(".", "/") + ".py")
    assert path.read_text() == compiled_source(name)


def test_the_compiled_key_covers_source_jinja2_version_and_options(monkeypatch):
    import jinja2

    from builder.emit import templating
    key = templating.compiled_key("{{ a | text('a') }}")
    assert templating.compiled_key("{{ a | text('a') }} ") != key
    monkeypatch.setattr(jinja2, "__version__", "0.0")
    assert templating.compiled_key("{{ a | text('a') }}") != key
    monkeypatch.undo()
    monkeypatch.setitem(templating._OPTIONS, "trim_blocks", False)
    assert templating.compiled_key("{{ a | text('a') }}") != key


def _fresh_template(name: str):
    from builder.emit.templating import environment
    return environment().get_template(name)


@pytest.mark.parametrize("name", ["qemu.sh.j2", "kata-configuration.toml.j2"])
def test_a_compiled_template_is_used_only_while_its_key_matches(name, monkeypatch):
    import importlib

    from builder.emit.templating import compiled_module
    mod = importlib.import_module(compiled_module(name))
    assert _fresh_template(name).root_render_func.__globals__ is mod.__dict__
    monkeypatch.setattr(mod, "KEY", "0" * 64)      # stale: compiled from the source instead
    assert _fresh_template(name).root_render_func.__globals__ is not mod.__dict__


def _snp_view():
    from builder.emit import BuildView
    from builder.recipe import load_recipe
    lr = load_recipe(RECIPE)
    entry = {"vmm": "qemu", "vcpus": 1, "vcpu_type": "EPYC-v4", "vcpu_sig": "0xa00f11",
             "guest_features": "0x1", "launch_digest": "ab" * 48}
    return BuildView(lr, b"F", b"K", b"I", "console=ttyS0 it's \"quoted\"", b"A",
                     {"snp": [entry, {**entry, "vcpus": 2, "guest_features": "0x21"}]}, (), None)


def test_compiled_and_source_templates_write_the_same_bytes(monkeypatch):
    import importlib

    from builder.emit import kata, qemu, templating
    view = _snp_view()
    compiled = {**qemu.emit(view, {}), **kata.emit(view, {})}
    for name in _templates():
        monkeypatch.setattr(importlib.import_module(templating.compiled_module(name)), "KEY",
                            "stale")
    monkeypatch.setattr(templating, "_ENV", templating.environment())
    assert templating._ENV.get_template("qemu.sh.j2").root_render_func.__module__ != \
        templating.compiled_module("qemu.sh.j2")
    from_source = {**qemu.emit(view, {}), **kata.emit(view, {})}
    assert set(compiled) == {"qemu-snp.sh", "kata-configuration-qemu-snp.toml"}
    assert compiled == from_source
