"""`ccbuild release` and `ccbuild verify DIST` (builder/release.py, builder/verify/release.py).

Real builds are ``slow`` (they need the cache of Debian packages and EDK2 builds, then each
release takes about a second); the schema reference and the hostile DIST shapes that need no
build are not."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import assert_one_line_error, run_cli

REPO = Path(__file__).resolve().parent.parent
RECIPES = ("snp", "tdx", "snp-verity")
ROOT = {"reference-values.json", "rvps-reference-values.json", "provenance.intoto.json",
        "SHA256SUMS", "reference-values.json.sig"}


def tree(d: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(d.rglob("*")):
        assert not p.is_symlink()
        if p.is_file():
            out[p.relative_to(d).as_posix()] = p.read_bytes()
    return out


def test_generated_schema_reference_is_in_step():
    from builder.release import reference
    assert (REPO / "docs" / "release-schema.md").read_text() == reference(), \
        "run: python -m builder.release > docs/release-schema.md"


# --- hostile DIST shapes that need no build ------------------------------------------------------

def test_verify_dist_that_is_a_symlink_is_one_line(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "reference-values.json").write_text("{}")
    (tmp_path / "link").symlink_to(real)
    line = assert_one_line_error(run_cli(["verify", str(tmp_path / "link")]), (2,))
    assert "symlink" in line


@pytest.mark.parametrize("content", [b"not json", b"{", b"\xff\xfe", b"[]",
                                     b'{"schema": "ccbuild-release/1"}', b'{"a": 1, "a": 2}'])
def test_verify_bundle_that_is_not_a_release_document_is_one_line(tmp_path, content):
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "reference-values.json").write_bytes(content)
    line = assert_one_line_error(run_cli(["verify", str(tmp_path / "dist")]), (2,))
    assert "reference-values.json" in line


@pytest.mark.parametrize("kind", ["fifo", "dir", "symlink"])
def test_verify_bundle_that_is_not_a_regular_file_is_one_line(tmp_path, kind):
    d = tmp_path / "dist"
    d.mkdir()
    b = d / "reference-values.json"
    if kind == "fifo":
        os.mkfifo(b)
    elif kind == "dir":
        b.mkdir()
    else:
        b.symlink_to("/dev/zero")
    line = assert_one_line_error(run_cli(["verify", str(d)]), (2,))
    assert "reference-values.json" in line


@pytest.mark.parametrize("setup", ["symlink", "file", "foreign"])
def test_release_refuses_a_dist_it_may_not_replace_before_building(tmp_path, setup):
    dist = tmp_path / "dist"
    if setup == "symlink":
        (tmp_path / "elsewhere").mkdir()
        dist.symlink_to(tmp_path / "elsewhere")
    elif setup == "file":
        dist.write_text("x")
    else:
        dist.mkdir()
        (dist / "precious.txt").write_text("mine")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    o = run_cli(["release", str(REPO / "recipes" / "snp.yaml"), "-o", str(dist), "--offline"])
    line = assert_one_line_error(o, (2,))
    assert "DIST" in line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dist.")]


def test_release_refuses_two_recipes_with_one_name(tmp_path):
    o = run_cli(["release", str(REPO / "recipes" / "snp.yaml"), str(REPO / "recipes" / "snp.yaml"),
                 "-o", str(tmp_path / "new" / "dist"), "--offline"], timeout=120)
    line = assert_one_line_error(o, (2,))
    assert "name 'snp'" in line
    assert not list(tmp_path.iterdir())     # no DIST, no temporary, no parent it created


# --- real releases -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    d = tmp_path_factory.mktemp("keys")
    k = ec.generate_private_key(ec.SECP384R1())
    (d / "key.pem").write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    (d / "pub.pem").write_bytes(k.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return d


@pytest.fixture(scope="module")
def dists(tmp_path_factory, recipe_file, keys):
    """The same release made twice, in two directories (and two working directories)."""
    recipes = [str(recipe_file(n)) for n in RECIPES]
    out = []
    for i in range(2):
        work = tmp_path_factory.mktemp(f"release-{i}")
        dist = work / "sub" / f"dist{i}"     # its parent is created
        o = run_cli(["release", *recipes, "-o", str(dist), "--sign-key",
                     str(keys / "key.pem")], cwd=work, timeout=3600)
        assert o.rc == 0, o.stderr
        out.append(dist)
    return out


@pytest.mark.slow
def test_release_twice_in_different_directories_is_byte_identical(dists, recipe_file):
    a, b = (tree(d) for d in dists)
    assert a == b
    names = {p.name for p in dists[0].iterdir()}
    assert names == ROOT | {"snp", "tdx", "snp-verity"}
    for n in ("snp", "tdx", "snp-verity"):
        assert "manifest.json" in os.listdir(dists[0] / n)
    blob = b"".join(a.values())
    for p in (*dists, Path(recipe_file("snp")).parent.parent):   # no machine paths
        assert str(p).encode() not in blob, p


@pytest.mark.slow
def test_bundle_validates_and_rvps_decodes_to_each_outs_measurements(dists):
    from builder.emit.rvps import reference_values
    from builder.outschema import load_document
    from builder.release import Release
    d = dists[0]
    doc = load_document(d / "reference-values.json", Release, "measurements")
    assert set(doc.recipes) == set(RECIPES)
    bundle = json.loads((d / "reference-values.json").read_text())
    msg = json.loads((d / "rvps-reference-values.json").read_text())
    assert msg["version"] == "0.1.0" and msg["type"] == "sample"
    payload = json.loads(base64.b64decode(msg["payload"]))
    union: dict[str, set] = {}
    for n in RECIPES:
        m = json.loads((d / n / "measurements.json").read_text())
        rv = reference_values(m)
        assert bundle["recipes"][n]["reference_values"] == rv
        for k, vals in rv.items():
            assert set(vals) <= set(payload[k]), (n, k)
            union.setdefault(k, set()).update(vals)
        for sec in ("snp", "tdx", "snp_id", "initdata", "kata"):
            assert bundle["recipes"][n].get(sec) == m.get(sec), (n, sec)
        assert bundle["recipes"][n]["platform"] == json.loads(
            (d / n / "manifest.json").read_text())["recipe"]["platform"]
        # each OUT's own RVPS message carries the same values
        own = json.loads((d / n / "rvps-reference-values.json").read_text())
        assert json.loads(base64.b64decode(own["payload"])) == rv
    assert {k: sorted(v) for k, v in union.items()} == payload
    assert bundle["platforms"] == {"snp": ["snp", "snp-verity"], "tdx": ["tdx"]}
    # one provenance: every file of every OUT and the bundle
    prov = json.loads((d / "provenance.intoto.json").read_text())
    subjects = {s["name"] for s in prov["subject"]}
    assert "reference-values.json" in subjects and "snp/firmware.fd" in subjects
    assert "tdx/vmlinuz" in subjects and "snp-verity/rootfs.img" in subjects
    assert prov["predicateType"] == "https://slsa.dev/provenance/v1"


@pytest.mark.slow
def test_verify_release_passes_with_signature(dists, keys):
    o = run_cli(["verify", str(dists[0]), "--signature", "--pubkey", str(keys / "pub.pem")],
                timeout=300)
    assert o.rc == 0, o.stderr
    assert "PASS" in o.stdout and "reference-values.json.sig" in o.stdout


@pytest.mark.slow
def test_sha256sums_checks_with_sha256sum(dists):
    import subprocess
    cp = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=dists[0],
                        capture_output=True)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def _tampered(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "dist"
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _flip(p: Path, offset: int) -> None:
    b = bytearray(p.read_bytes())
    offset %= len(b)
    b[offset] ^= 0x01
    p.write_bytes(bytes(b))


# every artifact of every recipe, and the root files
TAMPER = [(n, f) for n in RECIPES for f in ("firmware.fd", "vmlinuz", "cmdline.txt",
                                            "measurements.json", "manifest.json",
                                            "qemu-snp.sh" if n != "tdx" else "qemu-tdx.sh",
                                            "provenance.intoto.json",
                                            "rvps-reference-values.json", "SHA256SUMS",
                                            "initrd.img" if n != "snp-verity" else "rootfs.img")]


@pytest.mark.slow
@pytest.mark.parametrize("recipe,name", TAMPER)
def test_verify_names_recipe_and_file_of_a_changed_artifact_byte(dists, tmp_path, recipe, name):
    d = _tampered(dists[0], tmp_path)
    _flip(d / recipe / name, 7 if name != "cmdline.txt" else 3)
    line = assert_one_line_error(run_cli(["verify", str(d)], timeout=300), (1, 2))
    assert f"{recipe}" in line and name.split(".")[0] in line, line


@pytest.mark.slow
@pytest.mark.parametrize("name,needle", [
    ("reference-values.json", '"launch_digest": "'),
    ("reference-values.json", '"mrtd": "'),
    ("reference-values.json", '"manifest_sha256": "'),
    ("rvps-reference-values.json", '"payload": "'),
    ("provenance.intoto.json", '"sha256": "'),
    ("SHA256SUMS", ""),
    ("reference-values.json.sig", ""),
])
def test_verify_fails_when_a_bundle_byte_changes(dists, tmp_path, keys, name, needle):
    d = _tampered(dists[0], tmp_path)
    p = d / name
    text = p.read_bytes()
    at = text.index(needle.encode()) + len(needle) + 5 if needle else 9
    _flip(p, at)
    args = ["verify", str(d)]
    if name.endswith(".sig"):
        args += ["--signature", "--pubkey", str(keys / "pub.pem")]
    line = assert_one_line_error(run_cli(args, timeout=300), (1, 2))
    assert name.split(".")[0] in line or "reference-values.json" in line, line


@pytest.mark.slow
def test_verify_bundle_value_change_names_recipe(dists, tmp_path):
    d = _tampered(dists[0], tmp_path)
    bundle = json.loads((d / "reference-values.json").read_text())
    v = bundle["recipes"]["tdx"]["tdx"]["mrtd"]
    bundle["recipes"]["tdx"]["tdx"]["mrtd"] = ("0" if v[0] != "0" else "1") + v[1:]
    from builder.emit.manifest import dumps
    (d / "reference-values.json").write_bytes(dumps(bundle))
    line = assert_one_line_error(run_cli(["verify", str(d)], timeout=300), (1,))
    assert "tdx" in line and "reference-values.json" in line and "mrtd" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("what", ["file", "dir", "symlink", "in-out"])
def test_verify_dist_with_extra_entries_fails_one_line(dists, tmp_path, what):
    d = _tampered(dists[0], tmp_path)
    if what == "file":
        (d / "extra.txt").write_text("x")
    elif what == "dir":
        (d / "extra").mkdir()
    elif what == "symlink":
        (d / "extra").symlink_to(d / "snp")
    else:
        (d / "tdx" / "extra.txt").write_text("x")
    line = assert_one_line_error(run_cli(["verify", str(d)], timeout=300), (1,))
    assert "extra" in line, line


@pytest.mark.slow
def test_verify_recipe_directory_replaced_by_symlink_fails(dists, tmp_path):
    d = _tampered(dists[0], tmp_path)
    shutil.rmtree(d / "snp")
    (d / "snp").symlink_to(dists[0] / "snp")
    line = assert_one_line_error(run_cli(["verify", str(d)], timeout=300), (1,))
    assert "snp" in line and "symlink" in line, line


@pytest.mark.slow
def test_release_replaces_previous_release_atomically_and_refuses_other_options(dists, tmp_path,
                                                                                 recipe_file):
    d = _tampered(dists[0], tmp_path)
    o = run_cli(["release", str(recipe_file("snp")), "-o", str(d)], timeout=600)
    assert o.rc == 0, o.stderr
    assert {p.name for p in d.iterdir()} == ROOT - {"reference-values.json.sig"} | {"snp"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dist.")]
    assert run_cli(["verify", str(d)], timeout=300).rc == 0
    o = run_cli(["verify", str(d), "--rebuild", str(recipe_file("snp")), "--set", "name=x"])
    assert_one_line_error(o, (2,), "release")


# --- verify DIST --rebuild RECIPE... ------------------------------------------------------------

def _rebuild_args(recipe_file, names=RECIPES) -> list[str]:
    return [a for n in names for a in ("--rebuild", str(recipe_file(n)))]


@pytest.mark.slow
def test_verify_dist_rebuild_reproduces_every_file_of_a_signed_release(dists, recipe_file, keys):
    o = run_cli(["verify", str(dists[1]), *_rebuild_args(recipe_file), "--share-cache",
                 "--signature", "--pubkey", str(keys / "pub.pem"), "--json"], timeout=1800)
    assert o.rc == 0, o.stderr
    checks = {c["item"]: c for c in json.loads(o.stdout)["verdicts"][0]["checks"]}
    # every file of every OUT (but the signature, which needs the key) and every root file
    # was compared with the rebuild, and the given recipes are the ones the release names
    for n in RECIPES:
        for f in os.listdir(dists[1] / n):
            if f != "manifest.json.sig":
                assert checks[f"{n}: rebuild {f}"]["status"] == "ok", (n, f)
        assert checks[f"{n}: recipe {n}.yaml"]["status"] == "ok"
    for f in ROOT - {"reference-values.json.sig"}:
        assert checks[f"rebuild {f}"]["status"] == "ok", f
    assert checks["reference-values.json.sig"]["status"] == "ok"


@pytest.mark.slow
def test_verify_dist_rebuild_catches_a_consistent_release_of_another_recipe(recipe_file,
                                                                             tmp_path):
    """A release built from an edited recipe is consistent in itself (``verify DIST`` passes);
    rebuilding it from the published recipe names the recipe, the file and the first
    difference."""
    original = recipe_file("snp")
    edited = original.parent / "snp-edited.yaml"
    text = original.read_text()
    assert 'kernel_params: "console=ttyS0 panic=-1 quiet"' in text
    edited.write_text("name: snp\n" + text.replace('panic=-1 quiet"', 'panic=-1 quiet x=1"'))
    dist = tmp_path / "dist"
    assert run_cli(["release", str(edited), "-o", str(dist)], timeout=1800).rc == 0
    assert run_cli(["verify", str(dist)], timeout=300).rc == 0
    o = run_cli(["verify", str(dist), "--rebuild", str(original), "--share-cache"], timeout=1800)
    line = assert_one_line_error(o, (1,))
    assert "snp: recipe snp.yaml" in line and "differs" in line, line
    rows = {item: r for r in o.stdout.splitlines() if r.startswith("  FAIL")
            for item in ("snp: rebuild cmdline.txt", "snp: rebuild measurements.json",
                         "rebuild reference-values.json") if item in r}
    off = (dist / "snp" / "cmdline.txt").read_bytes().index(b" x=1")   # the edit, in the file
    assert f"first differing byte at offset 0x{off:x}" in rows["snp: rebuild cmdline.txt"]
    assert "first difference at .snp" in rows["snp: rebuild measurements.json"]
    assert "first difference at .recipes.snp" in rows["rebuild reference-values.json"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "foreign", "twice"])
def test_verify_dist_rebuild_refuses_recipes_that_do_not_match_before_building(
        dists, recipe_file, tmp_path, case):
    if case == "missing":
        args = _rebuild_args(recipe_file, ("snp", "tdx"))
        want = "snp-verity"
    elif case == "foreign":
        args = _rebuild_args(recipe_file) + _rebuild_args(recipe_file, ("tdx-verity",))
        want = "tdx-verity"
    else:
        args = _rebuild_args(recipe_file) + _rebuild_args(recipe_file, ("snp",))
        want = "twice"
    o = run_cli(["verify", str(dists[0]), *args, "--offline"], timeout=120)
    line = assert_one_line_error(o, (2,))
    assert want in line, line
    assert "rebuild" not in o.stdout


def test_verify_out_rebuild_takes_one_recipe(tmp_path):
    (tmp_path / "out").mkdir()
    o = run_cli(["verify", str(tmp_path / "out"), "--rebuild", "a.yaml", "--rebuild", "b.yaml"])
    line = assert_one_line_error(o, (2,))
    assert "2 recipes" in line and "release" in line, line


# --- progress without a terminal (builder/log.py, builder/run.py run_streamed) -------------------

@pytest.fixture
def progress(monkeypatch):
    from builder import log
    monkeypatch.setattr(log, "HEARTBEAT", 0.5)
    monkeypatch.delenv("CCBUILD_PROGRESS", raising=False)
    log.configure()
    yield log
    log.set_progress(None)
    log.configure()


def _stream(tmp_path, script: str, total: int | None = 8):
    import re
    from builder import log
    from builder.run import run_streamed
    with log.step("edk2 test"), log.bar(total, "edk2 test", unit="module") as bar:
        run_streamed(["sh", "-c", script], cwd=tmp_path, log_path=tmp_path / "log",
                     what="test build", progress=bar, count=re.compile(rb"^Building "))


def test_non_tty_long_build_prints_a_progress_line_at_most_every_interval(tmp_path, progress,
                                                                          capsys):
    import time
    t0 = time.monotonic()
    _stream(tmp_path, 'for i in 1 2 3 4 5 6 7 8; do echo "Building m$i"; echo noise; '
                      'sleep 0.3; done')
    dt = time.monotonic() - t0
    err = capsys.readouterr().err.splitlines()
    beats = [ln for ln in err if ln.startswith("ccbuild: edk2 test: ")]
    assert len(beats) >= int(dt / 0.5) - 1 >= 2, err
    assert all("/8 modules" in b for b in beats), beats
    assert "8/8" not in beats[0]
    assert err == beats          # heartbeat mode: no step lines, nothing else


def test_a_silent_tool_still_shows_life(tmp_path, progress, capsys):
    _stream(tmp_path, "sleep 2", total=None)
    beats = capsys.readouterr().err.splitlines()
    assert len(beats) >= 2, beats
    assert all(b.startswith("ccbuild: edk2 test: 0 modules") for b in beats)


def test_a_long_step_without_a_bar_says_it_is_running(progress, capsys):
    import time
    with progress.step("edk2 amdsev: BaseTools"):
        time.sleep(1.8)
    with progress.step("quick"):
        pass
    err = capsys.readouterr().err.splitlines()
    assert len(err) >= 2, err
    assert all(ln.startswith("ccbuild: step edk2 amdsev: BaseTools: running, ") for ln in err)


def test_a_bar_opened_late_in_a_step_speaks_within_the_interval_of_the_last_line(progress,
                                                                                 capsys):
    import time
    with progress.step("firmware"):
        time.sleep(0.4)                       # silent, shorter than the interval
        with progress.step("edk2 build"), progress.bar(10, "edk2", unit="module"):
            time.sleep(0.35)                  # the bar alone is younger than the interval
    err = capsys.readouterr().err.splitlines()
    assert err and err[0].startswith("ccbuild: edk2: 0/10 modules"), err


def test_silence_is_measured_from_the_last_line_not_from_the_inner_step(progress, capsys):
    import time
    with progress.step("firmware"):
        time.sleep(0.35)                      # "unpack": silent, shorter than the interval
        with progress.step("BaseTools"):
            time.sleep(0.4)                   # younger than the interval, the run is not
    err = capsys.readouterr().err.splitlines()
    assert err and err[0].startswith("ccbuild: step BaseTools: running, "), err


def test_a_short_step_prints_nothing_without_a_terminal(progress, capsys):
    with progress.step("firmware"):
        pass
    assert capsys.readouterr().err == ""


def test_tty_mode_prints_no_heartbeat_lines(tmp_path, progress, capsys):
    progress.set_progress("off")
    _stream(tmp_path, 'echo "Building a"; sleep 1.2')
    assert capsys.readouterr().err == ""


def test_lines_mode_prints_step_start_and_end(tmp_path, progress, capsys):
    progress.set_progress("lines")
    with progress.step("firmware"):
        progress.note_cache(True, "ref amdsev")
    with pytest.raises(ZeroDivisionError):
        with progress.step("kernel"):
            1 / 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "ccbuild: step firmware: start"
    assert err[1].startswith("ccbuild: step firmware: end ") and "(cache hit: ref amdsev)" in err[1]
    assert err[2] == "ccbuild: step kernel: start"
    assert err[3].startswith("ccbuild: step kernel: failed ")


def test_json_mode_prints_one_event_per_step(tmp_path, progress, capsys):
    progress.set_progress("json")
    with progress.step("outer"):
        with progress.step("inner"):
            progress.note_cache(False, "no ref for key 12ab")
    _stream(tmp_path, 'echo "Building a"; sleep 0.7; echo "Building b"')
    events = [json.loads(ln) for ln in capsys.readouterr().err.splitlines()]
    assert [(e["event"], e["step"]) for e in events[:4]] == [
        ("start", "outer"), ("start", "inner"), ("end", "inner"), ("end", "outer")]
    assert events[2]["cache"] == "miss" and events[2]["why"] == "no ref for key 12ab"
    assert "cache" not in events[3] and events[3]["duration"] >= 0
    assert any(e["event"] == "progress" and e["unit"] == "module" for e in events[4:])
    assert events[-1]["event"] == "end" and events[-1]["step"] == "edk2 test"


@pytest.mark.slow
def test_release_json_keeps_stdout_one_document_and_events_on_stderr(tmp_path, recipe_file):
    o = run_cli(["release", str(recipe_file("snp")), "-o", str(tmp_path / "d"), "--json"],
                timeout=600)
    assert o.rc == 0, o.stderr
    summary = json.loads(o.stdout)
    assert summary["recipes"]["snp"]["platform"] == "snp"
    events = [json.loads(ln) for ln in o.stderr.splitlines()]
    steps = {e["step"] for e in events if e["event"] == "end"}
    assert {"firmware", "kernel", "measure", "write"} <= steps
    assert all(isinstance(e["duration"], float) for e in events if e["event"] == "end")


@pytest.mark.slow
def test_build_json_contract_is_unchanged(tmp_path, recipe_file):
    o = run_cli(["build", str(recipe_file("snp")), "-o", str(tmp_path / "o"), "--json"],
                timeout=600)
    assert o.rc == 0, o.stderr
    assert json.loads(o.stdout)["name"] == "snp"
    assert o.stderr == ""


# --- the no-op: tool versions cached with the binary's identity (builder/run.py) -----------------

@pytest.fixture
def fake_tool(tmp_path, monkeypatch):
    """A tool ``faketool`` on PATH printing a version, and a private cache directory."""
    from builder import run as runmod
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "faketool"
    tool.write_text("#!/bin/sh\necho 'faketool 1.0'\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("CCBUILD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runmod, "_tool_memo", {})
    return tool


def _count_spawns(monkeypatch) -> list:
    import subprocess
    calls: list = []
    real = subprocess.run

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)
    monkeypatch.setattr(subprocess, "run", counting)
    return calls


def test_tool_version_runs_a_tool_once_per_binary_identity(fake_tool, monkeypatch):
    from builder import run as runmod
    calls = _count_spawns(monkeypatch)
    assert runmod.tool_version(["faketool", "--version"]) == "faketool 1.0"
    assert runmod.tool_version(["faketool", "--version"]) == "faketool 1.0"
    assert len(calls) == 1
    # another process (an empty memo) reads the persistent cache: no spawn either
    monkeypatch.setattr(runmod, "_tool_memo", {})
    assert runmod.tool_version(["faketool", "--version"]) == "faketool 1.0"
    assert len(calls) == 1
    # other arguments are another question
    runmod.tool_version(["faketool", "-v"])
    assert len(calls) == 2


def test_tool_version_asks_again_when_the_binary_changes(fake_tool, monkeypatch):
    from builder import run as runmod
    calls = _count_spawns(monkeypatch)
    assert runmod.tool_version(["faketool", "--version"]) == "faketool 1.0"
    st = fake_tool.stat()
    fake_tool.write_text("#!/bin/sh\necho 'faketool 2.0'\n")   # same size, new content
    os.utime(fake_tool, ns=(st.st_atime_ns, st.st_mtime_ns))   # even with the old mtime
    monkeypatch.setattr(runmod, "_tool_memo", {})
    assert runmod.tool_version(["faketool", "--version"]) == "faketool 2.0"
    assert len(calls) == 2


@pytest.mark.parametrize("content", [b"not json", b'{"schema": 1, "entries": []}',
                                     b'{"schema": 1, "entries": {"x": 1}}', b"\xff" * 10])
def test_a_damaged_tool_cache_is_ignored(fake_tool, monkeypatch, tmp_path, content):
    from builder import run as runmod
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / runmod.TOOL_CACHE_NAME).write_bytes(content)
    assert runmod.tool_version(["faketool", "--version"]) == "faketool 1.0"
    doc = json.loads((tmp_path / "cache" / runmod.TOOL_CACHE_NAME).read_text())
    assert list(doc["entries"].values()) == ["faketool 1.0"]


def test_a_missing_tool_is_still_an_error(fake_tool):
    from builder.errors import CCBuildError
    from builder.run import tool_version
    with pytest.raises(CCBuildError, match="not installed"):
        tool_version(["no-such-tool-ccbuild", "--version"])


@pytest.mark.slow
def test_noop_rebuild_runs_no_tool_version_subprocess(tmp_path, recipe_file, monkeypatch):
    """The firmware stage's toolchain versions come from the cache on a no-op (the agent's
    toolchain_identity in builder/stages/agent.py still runs its compiler: see the report)."""
    import subprocess
    from builder import log
    from builder.build import BuildOptions, build
    log.configure(quiet=True)
    build(recipe_file("snp"), BuildOptions(out=tmp_path / "o"))
    calls = _count_spawns(monkeypatch)
    real_popen = subprocess.Popen
    popen: list = []

    class Counting(real_popen):
        def __init__(self, args, *a, **k):
            popen.append(args)
            super().__init__(args, *a, **k)
    monkeypatch.setattr(subprocess, "Popen", Counting)
    res = build(recipe_file("snp"), BuildOptions(out=tmp_path / "o"))
    assert res.up_to_date
    firmware_tools = {"gcc", "nasm", "iasl", "patch", "python3"}
    spawned = {os.path.basename(str(a[0])) for a in popen}
    assert not (spawned & firmware_tools), spawned
    assert not [c for c in calls if os.path.basename(str(c[0])) in firmware_tools]


def test_stale_temporaries_of_a_killed_release_are_removed_and_nothing_else(tmp_path):
    import subprocess
    from builder.release import clean_stale
    dead = subprocess.Popen(["true"])
    dead.wait()
    dist = tmp_path / "dist"
    stale = tmp_path / f".dist.tmp-{dead.pid}"
    (stale / "snp").mkdir(parents=True)
    (stale / "SHA256SUMS").write_text("x")
    foreign = tmp_path / f".dist.tmp-{dead.pid + 1}"     # holds something a release never writes
    foreign.mkdir()
    (foreign / "precious.txt").write_text("mine")
    alive = tmp_path / f".dist.tmp-{os.getpid()}"
    alive.mkdir()
    other = tmp_path / f".other.tmp-{dead.pid}"
    other.mkdir()
    link = tmp_path / f".dist.tmp-{dead.pid + 2}"
    link.symlink_to(other)
    assert clean_stale(dist) == [stale.name]
    assert not stale.exists()
    assert foreign.exists() and alive.exists() and other.exists() and link.is_symlink()


# A cold EDK2 build in a CI log (a line at least every 30 s) is checked on the one cold AmdSev
# build the suite makes anyway: tests/test_verify_rebuild.py, the fresh-cache rebuild.
