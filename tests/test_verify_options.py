"""`ccbuild verify --rebuild ... --allow-outside` reaches the rebuild: a recipe whose firmware lies
outside its directory is refused without it, and with it the rebuild gets past the paths (and stops
at the firmware check of a 100-byte "firmware": no download, no build). Through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import assert_one_line_error, run_cli, write_small_out

FW = bytes(range(100))          # not a firmware


@pytest.fixture
def ws(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "outside.bin").write_bytes(FW)
    r = tmp_path / "r"
    r.mkdir()
    (r / "fw.bin").write_bytes(FW)
    recipe = r / "r.yaml"
    recipe.write_text("platform: snp\nfirmware: {source: {path: ../outside.bin}}\n"
                      "kernel: {source: {path: fw.bin}}\nagent: {build: test-agent}\n")
    out = write_small_out(tmp_path / "out", {"firmware.fd": FW, "vmlinuz": FW,
                                              "cmdline.txt": b"console=ttyS0"}, {"snp": []})
    return recipe, out


def test_allow_outside_needs_rebuild(ws):
    _, out = ws
    assert_one_line_error(run_cli(["verify", str(out), "--allow-outside"]), (2,),
                          "--allow-outside go with --rebuild")


def test_rebuild_refuses_a_path_outside_the_recipe_dir(ws):
    recipe, out = ws
    line = assert_one_line_error(run_cli(["verify", "--rebuild", str(recipe), str(out)]), (2,),
                                 "outside")
    assert "firmware.source.path" in line and "--allow-outside" in line, line


def test_rebuild_with_allow_outside_gets_past_the_paths(ws):
    recipe, out = ws
    line = assert_one_line_error(run_cli(["verify", "--rebuild", str(recipe), str(out),
                                          "--allow-outside"]), (2,), "firmware")
    assert "outside" not in line, line
