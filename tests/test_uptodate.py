"""The up-to-date record (builder/uptodate.py, issue 14): a rebuild with nothing changed runs no
stage, and any change to what the build consulted runs the full pipeline.

The oracle is the full pipeline itself (``--recheck``, or a build into a fresh OUT): a build the
record shows up to date must return what a full build returns, and after every kind of change
the record must let the pipeline run. The unit tests at the top build records from synthetic
builds (real files, real tools on PATH, a real package copy); the end-to-end tests build the
shipped SNP recipe with the shared cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# -- unit: a record of a synthetic build ---------------------------------------------------------

@pytest.fixture()
def rstore(tmp_path):
    from builder.store import Store
    return Store.open(tmp_path / "rstore")


def _record(rstore, tmp_path, consult, outputs=None, key="k" * 64):
    """Run ``consult()`` while recording, write OUT (``outputs``: name -> bytes), save a record."""
    import hashlib

    from builder import deps, uptodate
    from builder.build import BuildResult
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    outputs = outputs or {"manifest.json": b'{"outputs": [], "chain": {}}',
                          "measurements.json": b"{}"}
    for n, b in outputs.items():
        (out / n).write_bytes(b)
    with deps.recording() as c:
        consult()
    res = BuildResult(out, "r", "snp", dict(outputs), {}, {}, False,
                      digests={n: hashlib.sha256(b).hexdigest() for n, b in outputs.items()})
    return key, out, uptodate.save(rstore, key, c, res)


def test_a_record_holds_while_nothing_changes_and_names_the_file_that_did(rstore, tmp_path):
    from builder import uptodate
    from builder.inputs import read_regular
    dep = tmp_path / "in.yaml"
    dep.write_text("a: 1\n")
    key, out, saved = _record(rstore, tmp_path, lambda: read_regular(dep, "recipe"))
    assert saved
    hit, why = uptodate.check(rstore, key)
    assert hit is not None and why == "" and hit.files["measurements.json"] == b"{}"
    os.utime(dep, ns=(1, 1))                      # touched, same bytes: still up to date
    assert uptodate.check(rstore, key)[0] is not None
    dep.write_text("a: 2\n")                      # same size, other bytes
    hit, why = uptodate.check(rstore, key)
    assert hit is None and why == f"{dep} changed"


def test_a_change_is_named_on_one_line_whatever_the_path_holds(rstore, tmp_path, capsys):
    from builder import log, uptodate
    from builder.inputs import read_regular
    d = tmp_path / "a\nccbuild: step up-to-date: end 0.00s (cache hit: forged)\x1b[2J"
    d.mkdir()
    dep = d / "in.yaml"
    dep.write_text("a: 1\n")
    key, _, _ = _record(rstore, tmp_path, lambda: read_regular(dep, "recipe"))
    dep.write_text("a: 2\n")
    log.set_progress("lines")
    try:
        with log.step("up-to-date"):
            hit, why = uptodate.check(rstore, key)
            log.note_cache(hit is not None, why)
    finally:
        log.set_progress(None)
    err = capsys.readouterr().err
    assert hit is None and why == f"{dep} changed"
    assert len(err.splitlines()) == 2 and "\x1b" not in err, err
    assert err.splitlines()[1].endswith("in.yaml changed)"), err


def test_a_file_replaced_by_a_symlink_to_the_same_bytes_is_a_change(rstore, tmp_path):
    from builder import uptodate
    from builder.inputs import read_regular
    dep = tmp_path / "in.yaml"
    dep.write_text("a: 1\n")
    key, _, _ = _record(rstore, tmp_path, lambda: read_regular(dep, "recipe"))
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text("a: 1\n")
    dep.unlink()
    dep.symlink_to(elsewhere)      # a confinement check would judge the new target
    assert uptodate.check(rstore, key) == (None, f"{dep} changed")


def _tool(d: Path, name: str, body: str = "echo 1.0") -> Path:
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_text(f"#!/bin/sh\n{body}\n")
    p.chmod(0o755)
    return p


def test_a_tool_that_changes_appears_or_leaves_PATH_is_a_change(rstore, tmp_path, monkeypatch):
    from builder import deps, uptodate
    bin_a, bin_b = tmp_path / "a", tmp_path / "b"
    _tool(bin_a, "cc-tool")
    monkeypatch.setenv("PATH", f"{bin_b}:{bin_a}:/usr/bin:/bin")

    def consult():
        assert deps.which("cc-tool") is not None
        assert deps.which("cc-missing-tool") is None
    key, _, _ = _record(rstore, tmp_path, consult)
    assert uptodate.check(rstore, key)[0] is not None
    shadow = _tool(bin_b, "cc-tool")                         # another binary first on PATH
    assert uptodate.check(rstore, key) == (None, "tool cc-tool changed")
    shadow.unlink()
    assert uptodate.check(rstore, key)[0] is not None
    _tool(bin_a, "cc-tool", "echo 2.0")                      # rewritten in place
    assert uptodate.check(rstore, key) == (None, "tool cc-tool changed")
    key, _, _ = _record(rstore, tmp_path, consult, key="m" * 64)
    _tool(bin_b, "cc-missing-tool")
    assert uptodate.check(rstore, key) == (None, "tool cc-missing-tool appeared")


def test_a_tool_found_only_in_sbin_is_watched_there(rstore, tmp_path, monkeypatch):
    """An ordinary user's PATH has no sbin: run finds mkfs.* there, and the record watches
    that binary (and the tool appearing on PATH)."""
    from builder import run, uptodate
    sbin, bin_ = tmp_path / "sbin", tmp_path / "bin"
    tool = _tool(sbin, "mkfs.cc-probe")
    monkeypatch.setenv("PATH", f"{bin_}:/usr/bin:/bin")
    monkeypatch.setattr(run, "_SBIN", str(sbin))
    key, _, _ = _record(rstore, tmp_path,
                        lambda: run.run(["mkfs.cc-probe"]))
    assert uptodate.check(rstore, key)[0] is not None
    _tool(sbin, "mkfs.cc-probe", "echo 2.0")           # upgraded in place
    assert uptodate.check(rstore, key) == (None, "tool mkfs.cc-probe changed")
    key, _, _ = _record(rstore, tmp_path, lambda: run.run(["mkfs.cc-probe"]), key="n" * 64)
    _tool(bin_, "mkfs.cc-probe")
    assert uptodate.check(rstore, key) == (None, "tool mkfs.cc-probe appeared")
    assert tool.exists()


def test_a_path_looked_for_and_not_found_is_watched(rstore, tmp_path):
    from builder import deps, uptodate
    probe = tmp_path / "profile-name"
    key, _, _ = _record(rstore, tmp_path, lambda: deps.exists(probe))
    assert uptodate.check(rstore, key)[0] is not None
    probe.write_text("x")
    assert uptodate.check(rstore, key) == (None, f"{probe} appeared")


def test_an_input_changed_while_building_is_recorded_as_read(rstore, tmp_path):
    """The record holds the digest of the bytes the build read, not of the file afterwards:
    a change made while the build ran is a change the next build sees."""
    from builder import uptodate
    from builder.inputs import read_regular
    dep = tmp_path / "in.yaml"
    dep.write_text("a: 1\n")

    def consult():
        read_regular(dep, "recipe")
        dep.write_text("a: 2\n")         # same size, same second: after the build read it
    key, _, saved = _record(rstore, tmp_path, consult)
    assert saved
    assert uptodate.check(rstore, key) == (None, f"{dep} changed")


def test_a_file_read_twice_with_two_contents_leaves_no_record(rstore, tmp_path):
    from builder import uptodate
    from builder.inputs import read_regular
    dep = tmp_path / "in.yaml"
    dep.write_text("a: 1\n")

    def consult():
        read_regular(dep, "recipe")
        dep.write_text("a: 2\n")
        read_regular(dep, "recipe")
    key, _, saved = _record(rstore, tmp_path, consult)
    assert not saved and uptodate.check(rstore, key)[0] is None


def test_a_path_source_is_recorded_with_the_bytes_it_gave(rstore, tmp_path):
    from builder import uptodate
    from builder.sources.path import read_path
    dep = tmp_path / "agent.bin"
    dep.write_bytes(b"\x7fELF" + bytes(100))
    key, _, saved = _record(rstore, tmp_path, lambda: read_path(dep, None, "agent.source"))
    rec = json.loads(rstore.ref_path(uptodate.NAMESPACE, key).read_text())
    assert saved and [f[0] for f in rec["files"]] == [str(dep)]
    assert uptodate.check(rstore, key)[0] is not None
    dep.write_bytes(b"\x7fELF" + bytes(99) + b"\x01")
    assert uptodate.check(rstore, key) == (None, f"{dep} changed")


def test_a_file_streamed_without_its_bytes_reported_leaves_no_record(rstore, tmp_path):
    from builder.inputs import open_regular
    dep = tmp_path / "big.img"
    dep.write_bytes(b"x" * 10)

    def consult():
        with open_regular(dep, "file") as (f, _):
            f.read()
    assert not _record(rstore, tmp_path, consult)[2]


def test_an_input_inside_OUT_leaves_no_record(rstore, tmp_path):
    from builder import uptodate
    from builder.inputs import read_regular
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_bytes(b'{"outputs": [], "chain": {}}')
    key, _, saved = _record(rstore, tmp_path,
                            lambda: read_regular(out / "manifest.json", "manifest"))
    assert not saved and uptodate.check(rstore, key)[0] is None


def test_the_stores_own_blobs_are_not_inputs(rstore, tmp_path):
    from builder import uptodate
    from builder.inputs import read_regular
    digest = rstore.put_bytes(b"cached")
    key, _, saved = _record(rstore, tmp_path,
                            lambda: read_regular(rstore.blob_path(digest), "file"))
    rec = json.loads(rstore.ref_path(uptodate.NAMESPACE, key).read_text())
    assert saved and rec["files"] == []


@pytest.mark.parametrize("change,why", [
    (lambda o: (o / "measurements.json").write_bytes(b"{ }"), "differs"),   # size
    (lambda o: (o / "measurements.json").write_bytes(b"[]"), "differs"),    # same size
    (lambda o: (o / "extra").write_bytes(b""), "other files"),
    (lambda o: (o / "measurements.json").unlink(), "other files"),
])
def test_OUT_must_hold_exactly_what_the_build_wrote(rstore, tmp_path, change, why):
    from builder import uptodate
    key, out, _ = _record(rstore, tmp_path, lambda: None)
    assert uptodate.check(rstore, key)[0] is not None
    change(out)
    hit, reason = uptodate.check(rstore, key)
    assert hit is None and why in reason


def test_an_OUT_file_that_became_a_symlink_to_its_own_bytes_is_refused(rstore, tmp_path):
    from builder import uptodate
    key, out, _ = _record(rstore, tmp_path, lambda: None)
    (tmp_path / "copy").write_bytes(b"{}")
    (out / "measurements.json").unlink()
    (out / "measurements.json").symlink_to(tmp_path / "copy")
    hit, reason = uptodate.check(rstore, key)
    assert hit is None and "measurements.json differs" in reason


HOSTILE_RECORDS = [
    b"", b"not json", b"[]", b"{}", b'{"scheme": 1}',
    b"\xff\xfe", b"{" * 100000,
]


@pytest.mark.parametrize("i", range(len(HOSTILE_RECORDS) + 6))
def test_a_damaged_or_hostile_record_is_a_miss_never_an_error(rstore, tmp_path, i):
    from builder import uptodate
    key, out, _ = _record(rstore, tmp_path, lambda: None)
    path = rstore.ref_path(uptodate.NAMESPACE, key)
    good = json.loads(path.read_text())
    if i < len(HOSTILE_RECORDS):
        path.write_bytes(HOSTILE_RECORDS[i])
    else:
        bad = [dict(good, outputs=[["../escape", 2, "0" * 64]]),
               dict(good, outputs=[["a/b", 2, "0" * 64]]),
               dict(good, files=[["/etc/passwd", "/etc/passwd", "x", "0" * 64]]),
               dict(good, key="0" * 64),
               dict(good, libraries={"json.tool": None}),     # would import json first
               dict(good, code="not hex")][i - len(HOSTILE_RECORDS)]
        path.write_text(json.dumps(bad))
    hit, why = uptodate.check(rstore, key)
    assert hit is None and "no record" in why


def test_a_record_of_other_code_is_a_miss(rstore, tmp_path):
    from builder import uptodate
    key, _, _ = _record(rstore, tmp_path, lambda: None)
    path = rstore.ref_path(uptodate.NAMESPACE, key)
    assert json.loads(path.read_text())["code"] == uptodate.code_digest()
    path.write_text(json.dumps(dict(json.loads(path.read_text()), code="0" * 64)))
    assert uptodate.check(rstore, key) == (None, "ccbuild's code changed")


def test_a_huge_or_special_record_file_is_a_miss(rstore, tmp_path):
    from builder import uptodate
    from builder.store import REF_LIMIT
    key, out, _ = _record(rstore, tmp_path, lambda: None)
    path = rstore.ref_path(uptodate.NAMESPACE, key)
    with open(path, "r+b") as f:
        f.truncate(REF_LIMIT + 1)              # sparse, never read
    assert uptodate.check(rstore, key)[0] is None
    path.unlink()
    os.mkfifo(path)                                       # would block a plain open
    assert uptodate.check(rstore, key)[0] is None


def test_only_the_newest_records_are_kept_and_nothing_else_is_touched(rstore, tmp_path,
                                                                       monkeypatch):
    from builder import uptodate
    monkeypatch.setattr(uptodate, "MAX_RECORDS", 3)
    d = rstore.ref_path(uptodate.NAMESPACE, "0" * 64).parent
    d.mkdir(parents=True)
    (d / "notes.json").write_text("mine")              # not a record's name
    os.mkdir(d / ("9" * 64 + ".json"))                  # not a regular file
    keys = [c * 64 for c in "abcdef"]
    for i, k in enumerate(keys):
        _record(rstore, tmp_path, lambda: None, key=k)
        os.utime(rstore.ref_path(uptodate.NAMESPACE, k), ns=(i * 10**9, i * 10**9))
    names = sorted(p.name for p in d.iterdir())
    assert names == sorted(["notes.json", "9" * 64 + ".json"] +
                           [k + ".json" for k in keys[-3:]])
    assert uptodate.check(rstore, keys[-1])[0] is not None


def test_the_code_digest_follows_every_package_file_but_not_bytecode(tmp_path):
    """A copy of the package: editing one module changes the digest, a __pycache__ does not."""
    shutil.copytree(REPO / "builder", tmp_path / "builder", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = "from builder.uptodate import code_digest; print(code_digest())"
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")

    def digest():
        cp = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True)
        return cp.stdout.strip()
    first = digest()
    (tmp_path / "builder" / "__pycache__").mkdir()
    (tmp_path / "builder" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    assert digest() == first
    with open(tmp_path / "builder" / "measure" / "snp.py", "a") as f:
        f.write("\n# an edit\n")
    assert digest() != first
    data = tmp_path / "builder" / "data" / "agent" / "ccbuild-test-agent.c"
    before = digest()
    data.write_bytes(data.read_bytes() + b"\n")
    assert digest() != before


def test_a_library_reinstalled_is_a_change(tmp_path, monkeypatch):
    from builder import uptodate
    site = tmp_path / "site-packages"
    (site / "cclib_probe").mkdir(parents=True)
    init = site / "cclib_probe" / "__init__.py"
    init.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(site))
    import importlib
    importlib.invalidate_caches()
    importlib.import_module("cclib_probe")
    try:
        libs = uptodate.loaded_libraries()
        assert libs["cclib_probe"][0] == str(init)
        assert "__main__" not in libs and "builder" not in libs
        assert uptodate._library_now("cclib_probe") == libs["cclib_probe"]
        init.unlink()
        init.write_text("X = 2\n")      # pip writes a new file
        assert uptodate._library_now("cclib_probe") != libs["cclib_probe"]
    finally:
        sys.modules.pop("cclib_probe", None)


def test_the_request_key_follows_every_option_that_reaches_OUT():
    from builder.uptodate import request_key
    base = dict(recipe="r.yaml", out=None, overrides=(), locked=False, allow_outside=False,
                sign_key=None)
    keys = {request_key(**base)}
    for k, v in [("recipe", "./r.yaml"), ("out", "o"), ("overrides", ("launch.vcpus=[1]",)),
                 ("locked", True), ("allow_outside", True), ("sign_key", "k.pem")]:
        keys.add(request_key(**dict(base, **{k: v})))
    assert len(keys) == 7
    assert request_key(**base) == request_key(**base)


# -- end to end: the shipped SNP recipe ------------------------------------------------------------

def _ccbuild(*args, cwd=REPO, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=cwd,
                          env=e, capture_output=True, text=True, timeout=1800)


@pytest.fixture()
def snp(tmp_path, recipe_file):
    """A private copy of the (re-locked) recipes/ and firmware/ trees, to edit."""
    root = recipe_file("snp").parent.parent
    for d in ("recipes", "firmware"):
        shutil.copytree(root / d, tmp_path / d)
    return tmp_path / "recipes" / "snp.yaml"


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.slow
def test_a_hit_returns_what_the_full_pipeline_returns_and_imports_no_stage(snp, tmp_path):
    from builder.build import BuildOptions, build
    out = tmp_path / "out"
    first = build(snp, BuildOptions(out=out))
    assert not first.up_to_date
    hit = build(snp, BuildOptions(out=out))
    full = build(snp, BuildOptions(out=out, recheck=True))
    assert hit.up_to_date and full.up_to_date
    assert [k for k, _ in hit.timings] == ["up-to-date", "total"]
    assert "firmware" in dict(full.timings) and "up-to-date" not in dict(full.timings)
    assert hit.files == full.files == _files(out)
    assert (hit.manifest, hit.measurements, hit.digests) == \
        (full.manifest, full.measurements, full.digests)
    strip = lambda s: {k: v for k, v in s.items() if k != "timings"}  # noqa: E731
    assert strip(hit.summary()) == strip(full.summary())
    # In a new process, a hit loads none of the pipeline: no stage, no YAML, no Jinja.
    code = ("import sys\nfrom builder.build import BuildOptions, build\n"
            f"r = build({str(snp)!r}, BuildOptions(out={str(out)!r}))\n"
            "assert r.up_to_date and [k for k, _ in r.timings] == ['up-to-date', 'total']\n"
            "print(' '.join(sorted(sys.modules)))\n")
    cp = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    mods = set(cp.stdout.split())
    loaded = {m for m in mods if m.startswith(("builder.pipeline", "builder.stages",
                                               "builder.recipe", "builder.emit",
                                               "builder.measure", "yaml", "jinja2"))}
    assert not loaded, sorted(loaded)


@pytest.mark.slow
def test_every_change_runs_the_pipeline_and_the_result_is_a_fresh_builds(snp, tmp_path):
    """Each edit: the record misses (naming what changed), the pipeline runs, and OUT is what
    a build into a fresh OUT gives; then the record holds again."""
    from builder.build import BuildOptions, build
    out = tmp_path / "out"
    build(snp, BuildOptions(out=out))
    desc = snp.parent.parent / "firmware" / "amdsev.yaml"
    edits = [
        ("recipe", lambda: snp.write_text(snp.read_text().replace("panic=-1", "panic=1"))),
        ("descriptor", lambda: desc.write_text(desc.read_text() + "\n# a comment\n")),
        ("OUT file", lambda: (out / "cmdline.txt").write_bytes(
            (out / "cmdline.txt").read_bytes().replace(b"quiet", b"QUIET"))),
        ("OUT extra", lambda: (out / "notes.txt").write_text("x")),
    ]
    for i, (what, edit) in enumerate(edits):
        edit()
        if what == "OUT extra":   # the record misses; the pipeline refuses such an OUT
            cp = _ccbuild("build", snp, "-o", out, env={"CCBUILD_PROGRESS": "json"})
            assert cp.returncode == 2 and "not a ccbuild output" in cp.stderr, cp.stderr
            events = [json.loads(ln) for ln in cp.stderr.splitlines() if ln.startswith("{")]
            end = next(e for e in events if e.get("step") == "up-to-date"
                       and e.get("event") == "end")
            assert end["cache"] == "miss" and "other files" in end["why"], end
            continue
        res = build(snp, BuildOptions(out=out))
        assert "firmware" in dict(res.timings), what
        fresh = build(snp, BuildOptions(out=tmp_path / f"fresh{i}"))
        assert res.files == fresh.files == _files(out), what
        assert build(snp, BuildOptions(out=out)).timings[0][0] == "up-to-date"
        assert len(build(snp, BuildOptions(out=out)).timings) == 2, what


@pytest.mark.slow
def test_the_cli_says_why_the_record_missed_and_recheck_runs_every_step(snp, tmp_path):
    out = tmp_path / "out"
    assert _ccbuild("build", snp, "-o", out).returncode == 0
    cp = _ccbuild("build", snp, "-o", out, env={"CCBUILD_PROGRESS": "lines"})
    assert cp.returncode == 0 and "up to date (nothing changed)" in cp.stderr
    assert "step up-to-date: end" in cp.stderr and "(cache hit: nothing changed" in cp.stderr
    assert "step firmware" not in cp.stderr
    snp.write_text(snp.read_text() + "\n# an edit\n")
    cp = _ccbuild("build", snp, "-o", out, "--json", env={"CCBUILD_PROGRESS": "json"})
    assert cp.returncode == 0, cp.stderr
    events = [json.loads(ln) for ln in cp.stderr.splitlines() if ln.startswith("{")]
    end = next(e for e in events if e.get("step") == "up-to-date" and e.get("event") == "end")
    assert end["cache"] == "miss" and end["why"] == f"{snp} changed", end
    assert any(e.get("step") == "firmware" for e in events)
    assert json.loads(cp.stdout)["up_to_date"] is False   # the recipe's sha256 is in the manifest
    cp = _ccbuild("build", snp, "-o", out, "--recheck", env={"CCBUILD_PROGRESS": "lines"})
    assert cp.returncode == 0 and "step firmware: start" in cp.stderr
    assert "step up-to-date" not in cp.stderr


@pytest.mark.slow
def test_a_tampered_OUT_with_matching_sums_is_rebuilt(snp, tmp_path):
    """Someone edits OUT and its SHA256SUMS and manifest consistently: the record (in the
    store, not in OUT) still catches it and the build restores OUT."""
    import hashlib
    from builder.build import BuildOptions, build
    out = tmp_path / "out"
    good = build(snp, BuildOptions(out=out)).files
    (out / "cmdline.txt").write_bytes(b"init=/bin/sh")
    sums = "".join(f"{hashlib.sha256((out / n).read_bytes()).hexdigest()}  {n}\n"
                   for n in sorted(good) if n != "SHA256SUMS")
    (out / "SHA256SUMS").write_text(sums)
    res = build(snp, BuildOptions(out=out))
    assert not res.up_to_date and _files(out) == good
