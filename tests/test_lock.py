"""`ccbuild lock`: stale Debian pins are found and rewritten in place, comments kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from builder.lock import name_pattern, rewrite_scalars

REPO = Path(__file__).resolve().parent.parent


def test_name_pattern_frees_only_the_numbers_after_major_minor():
    rx = name_pattern("linux-image-6.12.117+deb13-cloud-amd64")
    assert rx.match("linux-image-6.12.118+deb13-cloud-amd64")
    assert rx.match("linux-image-6.12.9+deb14-cloud-amd64")
    assert not rx.match("linux-image-6.13.1+deb13-cloud-amd64")
    assert not rx.match("linux-image-6.12.118+deb13-amd64")
    assert name_pattern("ovmf").match("ovmf") and not name_pattern("ovmf").match("ovmf-ia32")


def test_rewrite_scalars_keeps_layout_and_comments():
    text = "a:\n  b: 1   # keep me\n  c: [x, y]\nd: 'q'\n"
    out = rewrite_scalars(text, [(["a", "b"], "2"), (["a", "c", "1"], "z"), (["d"], "r")])
    assert out == "a:\n  b: 2   # keep me\n  c: [x, z]\nd: r\n"
    assert yaml.safe_load(out) == {"a": {"b": 2, "c": ["x", "z"]}, "d": "r"}


STALE = """\
platform: snp
firmware:
  source:
    debian: ovmf   # comment kept
    version: 2025.02-8+deb13u0
    suite: trixie
    member: usr/share/ovmf/OVMF.fd
    sha256: "{z}"
kernel:
  source:
    debian: linux-image-6.12.99+deb13-cloud-amd64
    version: 6.12.99-1
    suite: trixie
    sha256: "{z}"
    member: boot/vmlinuz-6.12.99+deb13-cloud-amd64
agent: {{build: test-agent}}
""".format(z="0" * 64)


@pytest.mark.slow
def test_lock_finds_and_rewrites_stale_pins(tmp_path, store):
    r = tmp_path / "r.yaml"
    r.write_text(STALE)
    env = {"CCBUILD_CACHE": str(store.root), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    cmd = [sys.executable, "-m", "builder.cli", "lock", str(r)]
    cp = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert cp.returncode == 1 and "2 stale pin(s)" in cp.stderr, cp.stdout + cp.stderr
    assert r.read_text() == STALE  # report only
    cp = subprocess.run(cmd + ["--write"], capture_output=True, text=True, cwd=REPO, env=env)
    assert cp.returncode == 0, cp.stderr
    new = r.read_text()
    assert "# comment kept" in new
    doc = yaml.safe_load(new)
    k = doc["kernel"]["source"]
    assert k["debian"].startswith("linux-image-6.12.") and k["debian"] != \
        "linux-image-6.12.99+deb13-cloud-amd64"
    assert k["member"] == "boot/vmlinuz-" + k["debian"][len("linux-image-"):]
    assert doc["firmware"]["source"]["version"] != "2025.02-8+deb13u0"
    # the rewritten recipe is locked and valid, and a second lock finds nothing stale
    from builder.recipe import load_recipe
    load_recipe(r, locked=True)
    cp = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert cp.returncode == 0 and "stale" not in cp.stderr
