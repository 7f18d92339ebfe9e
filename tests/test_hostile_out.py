"""Hostile OUT directories (`-o`), hostile recipe paths (`path:` sources, descriptors, fragments,
keys, initdata, profiles) and hostile `lock` inputs, all through the real CLI (subprocess,
memory limit, timeout): one `ccbuild: error:` line, exit 1 or 2, no traceback, and nothing
outside the process's own temporaries changed (a tree snapshot of the surrounding directory).

The recipes here never get far: every case fails before the first stage (OUT and recipe paths are
checked up front), or, where an escape is allowed, at the firmware check of a 100-byte
"firmware" (no download, no build). The success path of the OUT exchange is unit-tested on
builder.emit.outdir directly at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import assert_one_line_error, run_cli, tree_snapshot

FW = bytes(range(100))          # not a firmware: a build that gets past the paths stops at it
FW_SHA = hashlib.sha256(FW).hexdigest()


class WS:
    """tmp/w: the watched tree (recipe dir r/, a valid-looking OUT old/); tmp/cache: the store."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.w = tmp / "w"
        self.r = self.w / "r"
        self.r.mkdir(parents=True)
        (self.r / "fw.bin").write_bytes(FW)
        self.recipe = self.r / "r.yaml"
        self.write_recipe()
        self.old = self.w / "old"             # an existing ccbuild-looking output
        self.old.mkdir()
        (self.old / "firmware.fd").write_bytes(b"old firmware")
        (self.old / "manifest.json").write_text(json.dumps(
            {"outputs": [{"path": "firmware.fd", "sha256": "0" * 64, "size": 12}]}))
        (self.old / "SHA256SUMS").write_text("0" * 64 + "  firmware.fd\n")
        self.cache = tmp / "cache"

    def write_recipe(self, firmware: str = "{source: {path: fw.bin}}", extra: str = "",
                     platform: str = "snp", kernel: str = "{source: {path: fw.bin}}") -> Path:
        self.recipe.write_text(f"platform: {platform}\nfirmware: {firmware}\nkernel: {kernel}\n"
                               f"agent: {{build: test-agent}}\n{extra}")
        return self.recipe

    def build(self, *args: str, recipe: Path | None = None, cwd: Path | None = None):
        return run_cli(["build", str(recipe or self.recipe), *args, "--cache", str(self.cache)],
                       cwd=cwd)

    def snap(self) -> dict:
        return tree_snapshot(self.w)


@pytest.fixture
def ws(tmp_path) -> WS:
    return WS(tmp_path)


def check(ws: WS, outcome, contains: str | None = None, before: dict | None = None) -> str:
    line = assert_one_line_error(outcome, contains=contains)
    if before is not None:
        assert ws.snap() == before, "the tree changed"
    assert outcome.seconds < 20
    return line


# -- OUT (-o) ------------------------------------------------------------------------------------
def test_glob_out_leaves_sibling_temporaries_alone(ws):
    """-o 'DIR/*': nothing is globbed; others' `.X.tmp-*`/`.X.old-*` (even with a marker and a
    dead pid) survive."""
    d = ws.w / "d"
    for n in (".X.tmp-1", ".X.old-1", ".X.tmp-999999999", ".*.tmp-1", ".x.old-4000000000"):
        (d / n).mkdir(parents=True)
        (d / n / ".ccbuild-tmp").write_text("")
        (d / n / "precious").write_text(n)
    before = ws.snap()
    check(ws, ws.build("-o", str(d / "*")), "firmware", before)  # gets past OUT, fails later


@pytest.mark.parametrize("force", [[], ["-f"]])
def test_symlink_to_an_out_is_refused(ws, force):
    (ws.w / "link").symlink_to(ws.old)
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "link"), *force), "symlink", before)


def test_dangling_symlink_is_refused(ws):
    (ws.w / "dangling").symlink_to(ws.w / "nowhere")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "dangling")), "symlink", before)
    assert not (ws.w / "nowhere").exists()


def test_symlink_loop_as_out_is_refused(ws):
    (ws.w / "a").symlink_to(ws.w / "b")
    (ws.w / "b").symlink_to(ws.w / "a")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "a")), "symlink", before)


@pytest.mark.parametrize("out", ["/proc/ccbuild-x", "/sys/ccbuild-x", "/proc/nope/x",
                                 "/proc/self/ccbuild-x"])
def test_pseudo_file_systems(ws, out):
    before = ws.snap()
    check(ws, ws.build("-o", out), "-o", before)
    assert not os.path.lexists(out)


@pytest.mark.parametrize("n", [240, 255, 300, 5000])
def test_long_names(ws, n):
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / ("a" * n))), "-o", before)


@pytest.mark.parametrize("out", [".", "..", "/", "", "./", "sub/..", "../."])
def test_out_must_name_its_own_directory(ws, out):
    (ws.w / "sub").mkdir()
    before = ws.snap()
    line = check(ws, ws.build("-o", out, cwd=ws.w), None, before)
    assert "OUT must name a directory" in line, line


@pytest.mark.parametrize("force", [[], ["-f"]])
def test_existing_regular_file(ws, force):
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.recipe), *force), "not a directory", before)


def test_fifo_as_out(ws):
    os.mkfifo(ws.w / "fifo")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "fifo"), "-f"), "not a directory", before)


def test_parent_is_a_file(ws):
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.recipe / "out")), "-o", before)


def test_non_ccbuild_dir_needs_force(ws):
    d = ws.w / "docs"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    before = ws.snap()
    check(ws, ws.build("-o", str(d)), "not a ccbuild output", before)
    # the recipe directory itself is no output either
    check(ws, ws.build("-o", str(ws.r)), "not a ccbuild output", before)


def _fake(ws, name: str) -> Path:
    d = ws.w / name
    d.mkdir()
    (d / "SHA256SUMS").write_text("")
    return d


def test_fake_out_with_unrelated_files(ws):
    d = _fake(ws, "fake")
    (d / "manifest.json").write_text(json.dumps({"outputs": []}))
    (d / "thesis.tex").write_text("years of work")
    before = ws.snap()
    check(ws, ws.build("-o", str(d)), "not a ccbuild output", before)


def test_fake_out_whose_manifest_is_a_symlink(ws):
    d = _fake(ws, "fake")
    (d / "manifest.json").symlink_to(ws.old / "manifest.json")
    (d / "firmware.fd").write_text("x")
    before = ws.snap()
    check(ws, ws.build("-o", str(d)), "not a ccbuild output", before)


def test_fake_out_with_a_subdirectory(ws):
    d = _fake(ws, "fake")
    (d / "manifest.json").write_text(json.dumps({"outputs": [{"path": "firmware.fd"}]}))
    (d / "firmware.fd").mkdir()
    (d / "firmware.fd" / "data").write_text("x")
    before = ws.snap()
    check(ws, ws.build("-o", str(d)), "not a ccbuild output", before)


def test_fake_out_with_a_symlinked_artifact(ws):
    d = _fake(ws, "fake")
    (d / "manifest.json").write_text(json.dumps({"outputs": [{"path": "firmware.fd"}]}))
    (d / "firmware.fd").symlink_to("/dev/zero")
    before = ws.snap()
    check(ws, ws.build("-o", str(d)), "not a ccbuild output", before)


@pytest.mark.parametrize("manifest", ["not json", "[]", '{"outputs": 1}', '{"outputs": [1]}',
                                      '{"outputs": [{"path": "../x"}]}', "[" * 100000])
def test_fake_out_with_a_broken_manifest(ws, manifest):
    d = _fake(ws, "fake")
    (d / "manifest.json").write_text(manifest)
    before = ws.snap()
    check(ws, ws.build("-o", str(d)), "not a ccbuild output", before)


def test_read_only_parent(ws):
    ro = ws.w / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores modes: make the directory immutable instead
        if shutil.which("chattr") is None or subprocess.run(
                ["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i support")
    else:
        ro.chmod(0o555)
    try:
        before = ws.snap()
        check(ws, ws.build("-o", str(ro / "out")), "-o", before)
        check(ws, ws.build("-o", str(ro / "new" / "out")), "-o", before)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(ro)])
        ro.chmod(0o755)


def test_existing_out_unchanged_when_the_build_fails(ws):
    """A real (looking) OUT passes the checks; the build then fails: OUT is as it was, no
    temporary is left beside it."""
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.old)), "firmware", before)


# -- recipe paths ----------------------------------------------------------------------------
def _outside(ws) -> Path:
    p = ws.w / "outside.bin"
    p.write_bytes(FW)
    return p


@pytest.mark.parametrize("field,template", [
    ("firmware.source.path", "firmware"),
    ("kernel.source.path", "kernel"),
    ("agent.source.path", "agent"),
    ("initrd.files[0].source.path", "initrd"),
    ("rootfs.files[0].source.path", "rootfs"),
])
@pytest.mark.parametrize("path", ["../../../../../../etc/passwd", "/etc/passwd", "../outside.bin"])
def test_path_sources_outside_are_refused(ws, field, template, path):
    _outside(ws)
    p = json.dumps(path)
    src = f"{{source: {{path: {p}}}}}"
    if template == "firmware":
        ws.write_recipe(firmware=src)
    elif template == "kernel":
        ws.write_recipe(kernel=src)
    elif template == "agent":
        ws.recipe.write_text(ws.write_recipe().read_text().replace(
            "agent: {build: test-agent}", f"agent: {src}"))
    else:
        ws.write_recipe(extra=f"{template}: {{files: [{{path: /etc/x, source: {{path: {p}}}}}]}}\n")
    before = ws.snap()
    line = check(ws, ws.build("-o", str(ws.w / "out")), "outside", before)
    assert field in line and path in line, line


def test_symlink_escaping_the_recipe_dir(ws):
    (ws.r / "innocent.bin").symlink_to("/etc/passwd")
    ws.write_recipe(firmware="{source: {path: innocent.bin}}")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "out")), "firmware.source.path", before)


def test_symlinked_directory_escaping_the_recipe_dir(ws):
    (ws.r / "etc").symlink_to("/etc")
    ws.write_recipe(firmware="{source: {path: etc/passwd}}")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "out")), "outside", before)


def test_symlink_loop_as_path_source(ws):
    (ws.r / "a").symlink_to("b")
    (ws.r / "b").symlink_to("a")
    ws.write_recipe(firmware="{source: {path: a}}")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "out")), "firmware.source", before)


def test_fifo_as_path_source(ws):
    os.mkfifo(ws.r / "fifo")
    ws.write_recipe(firmware="{source: {path: fifo}}")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "out")), "FIFO", before)


def test_dev_zero_pinned_is_allowed_outside_but_refused_as_a_device(ws):
    ws.write_recipe(firmware=f"{{source: {{path: /dev/zero, sha256: '{'0' * 64}'}}}}")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "out")), "character device", before)


def test_dev_zero_with_allow_outside(ws):
    ws.write_recipe(firmware="{source: {path: /dev/zero}}")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "out")), "outside", before)
    check(ws, ws.build("-o", str(ws.w / "out"), "--allow-outside"), "character device", before)


def test_directory_as_path_source(ws):
    (ws.r / "dir").mkdir()
    ws.write_recipe(firmware="{source: {path: dir}}")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "out")), "directory", before)


@pytest.mark.parametrize("field,yaml_text", [
    ("firmware.build", "firmware: {build: ../../etc/passwd}\n"),
    ("firmware.build", "firmware: {build: ../firmware/../../etc/x.yaml}\n"),
    ("kernel.build.fragments[0]", "kernel: {build: {source: {path: fw.bin}, fragments: "
                                  "[../../etc/x.config]}}\n"),
    ("initdata", "initdata: /etc/passwd\n"),
    ("launch.snp.id_key", "launch: {snp: {id_key: /etc/hostname, author_key: key.pem}}\n"),
    ("launch.snp.author_key", "launch: {snp: {id_key: key.pem, author_key: ../../x.pem}}\n"),
])
def test_other_recipe_paths_outside_are_refused(ws, field, yaml_text):
    text = "platform: snp\nagent: {build: test-agent}\n"
    if not yaml_text.startswith("firmware"):
        text += "firmware: {source: {path: fw.bin}}\n"
    if not yaml_text.startswith("kernel"):
        text += "kernel: {source: {path: fw.bin}}\n"
    ws.recipe.write_text(text + yaml_text)
    before = ws.snap()
    line = check(ws, ws.build("-o", str(ws.w / "out")), "outside", before)
    assert field in line, line


def test_tdx_profile_outside_is_refused(ws):
    ws.write_recipe(platform="tdx", extra="launch: {tdx: {profile: ../../etc/x.yaml}}\n")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "out")), "launch.tdx.profile", before)


def test_pinned_sha256_lets_a_path_source_leave_the_dir(ws):
    out = _outside(ws)
    ws.write_recipe(firmware=f"{{source: {{path: {out}}}}}")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "out")), "outside", before)
    ws.write_recipe(firmware=f"{{source: {{path: {out}, sha256: '{FW_SHA}'}}}}")
    before = ws.snap()
    line = check(ws, ws.build("-o", str(ws.w / "out")), "firmware", before)
    assert "outside" not in line, line          # got past the paths: stopped at the firmware check
    ws.write_recipe(firmware=f"{{source: {{path: {out}, sha256: '{'1' * 64}'}}}}")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "out")), "sha256 mismatch", before)


def test_allow_outside_lifts_the_rule(ws):
    _outside(ws)
    ws.write_recipe(firmware="{source: {path: ../outside.bin}}")
    before = ws.snap()
    line = check(ws, ws.build("-o", str(ws.w / "out"), "--allow-outside"), "firmware", before)
    assert "outside" not in line, line


def test_sibling_firmware_dir_is_allowed_for_descriptors_only(ws):
    """The shipped layout: recipes/ beside firmware/ (descriptors) and kernel/ (fragments)."""
    (ws.w / "firmware").mkdir()
    (ws.w / "firmware" / "d.yaml").write_text("name: [unterminated\n")
    (ws.w / "firmware" / "fw.bin").write_bytes(FW)
    ws.write_recipe(firmware="{build: ../firmware/d.yaml}")
    before = ws.snap()
    line = check(ws, ws.build("-o", str(ws.w / "out")), "d.yaml", before)
    assert "outside" not in line, line          # confined OK; the descriptor itself is bad
    ws.write_recipe(firmware="{source: {path: ../firmware/fw.bin}}")
    before = ws.snap()
    check(ws, ws.build("-o", str(ws.w / "out")), "outside", before)


# -- lock ------------------------------------------------------------------------------------
def test_lock_refuses_a_descriptor_outside(ws):
    ws.write_recipe(firmware="{build: ../../../etc/passwd}")
    before = ws.snap()
    check(ws, run_cli(["lock", str(ws.recipe), "--write", "--cache", str(ws.cache)]),
          "firmware.build", before)


@pytest.mark.parametrize("text", [
    "firmware: {source: {debian: ovmf}}\n",                        # unvalidated raw dicts
    "platform: snp\nfirmware: {source: [1, 2]}\nkernel: 1\nagent: {}\n",
    "a: &a [*a]\n",
    "- just a list\n",
])
def test_lock_validates_the_recipe_first(ws, text):
    ws.recipe.write_text(text)
    before = ws.snap()
    check(ws, run_cli(["lock", str(ws.recipe), "--write", "--cache", str(ws.cache)]), None, before)


def test_lock_write_refuses_a_symlinked_recipe(ws):
    (ws.w / "link.yaml").symlink_to(ws.recipe)
    before = ws.snap()
    check(ws, run_cli(["lock", str(ws.w / "link.yaml"), "--write", "--cache", str(ws.cache)]),
          "symlink", before)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_lock_refuses_special_files(ws, target):
    os.mkfifo(ws.w / "fifo")
    before = ws.snap()
    path = target if target.startswith("/") else str(ws.w / target)
    check(ws, run_cli(["lock", path, "--cache", str(ws.cache)]), "recipe", before)


# -- the OUT exchange itself (unit level) ----------------------------------------------------
def _files(tag: bytes) -> dict[str, bytes]:
    return {"firmware.fd": tag, "manifest.json": json.dumps(
        {"outputs": [{"path": "firmware.fd"}]}).encode(), "SHA256SUMS": b""}


def test_write_outdir_replaces_and_cleans_only_its_own_stale_temporaries(tmp_path):
    from builder.emit.outdir import MARKER, is_ccbuild_output, write_outdir
    out = tmp_path / "p" / "out"
    write_outdir(out, _files(b"1"))
    assert is_ccbuild_output(out) and (out / "firmware.fd").read_bytes() == b"1"
    stale = tmp_path / "p" / ".out.tmp-999999999"     # ours: marker, dead pid -> removed
    stale.mkdir()
    (stale / MARKER).write_text("")
    moved = tmp_path / "p" / ".out.old-999999998"      # a previous OUT moved aside -> removed
    shutil.copytree(out, moved)
    (tmp_path / "p" / ".out.tmp-999999996").mkdir()    # killed before the marker -> removed
    keep = {n: tmp_path / "p" / n for n in (".out.tmp-1", ".out.tmp-999999997", ".out.tmp-x",
                                            ".outx.tmp-999999999", ".out.tmp-0999999999")}
    for n, p in keep.items():
        p.mkdir()
        (p / MARKER if n != ".out.tmp-999999997" else p / "precious").write_text("")
    write_outdir(out, _files(b"2"))
    assert (out / "firmware.fd").read_bytes() == b"2" and not (out / MARKER).exists()
    assert not stale.exists() and not moved.exists()
    assert not (tmp_path / "p" / ".out.tmp-999999996").exists()
    assert all(p.is_dir() for p in keep.values())
    assert sorted(os.listdir(out.parent)) == sorted(["out", *keep])


def test_write_outdir_refuses_without_touching(tmp_path):
    from builder.emit.outdir import write_outdir
    from builder.errors import CCBuildError
    d = tmp_path / "d"
    d.mkdir()
    (d / "x").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    before = tree_snapshot(tmp_path)
    for out, force in ((d, False), (tmp_path / "link", True), (tmp_path / ("x" * 300), True)):
        with pytest.raises(CCBuildError):
            write_outdir(out, _files(b"1"), force=force)
    assert tree_snapshot(tmp_path) == before
    write_outdir(d, _files(b"1"), force=True)           # -f replaces a non-output directory
    assert sorted(os.listdir(d)) == ["SHA256SUMS", "firmware.fd", "manifest.json"]
    assert sorted(os.listdir(tmp_path)) == ["d", "link"]


def test_write_outdir_failure_removes_its_temporary_and_created_parents(tmp_path, monkeypatch):
    from builder.emit import outdir
    out = tmp_path / "a" / "b" / "out"

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(outdir, "_write_files", lambda *a, **k: boom())
    with pytest.raises(OSError):
        outdir.write_outdir(out, _files(b"1"))
    assert os.listdir(tmp_path) == []
