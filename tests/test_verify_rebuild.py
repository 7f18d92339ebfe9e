"""`ccbuild verify --rebuild` on the shipped recipes (re-locked copies): a rebuild in a fresh
directory agrees byte for byte; a damaged OUT is named by file and, for the initrd, by cpio
member and field. One rebuild uses a fresh, empty cache (firmware rebuilt from EDK2 source);
the others share the cache."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def ccbuild(*args, timeout=3600):
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory, recipe_file):
    done = {}

    def get(platform: str) -> tuple[Path, Path]:
        if platform not in done:
            out = tmp_path_factory.mktemp(f"verify-{platform}") / "out"
            cp = ccbuild("build", recipe_file(platform), "-o", out)
            assert cp.returncode == 0, cp.stderr
            done[platform] = (recipe_file(platform), out)
        return done[platform]

    return get


@pytest.mark.parametrize("platform", ["snp", "tdx"])
def test_rebuild_agrees(built, platform):
    recipe, out = built(platform)
    cp = ccbuild("verify", "--rebuild", recipe, out, "--share-cache")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "rebuild initrd.img" in cp.stdout and "PASS" in cp.stdout


def test_rebuild_with_fresh_cache_agrees(built):
    recipe, out = built("snp")
    cp = ccbuild("verify", "--rebuild", recipe, out)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "fresh, empty cache" in cp.stdout


def test_damaged_outputs_are_named(built, tmp_path):
    recipe, src = built("snp")
    out = tmp_path / "out"
    shutil.copytree(src, out)
    # one byte of the firmware
    fw = bytearray((out / "firmware.fd").read_bytes())
    fw[0x1000] ^= 0x01
    (out / "firmware.fd").write_bytes(bytes(fw))
    # one byte of /etc/hostname inside the initrd's cpio archive (recompressed)
    archive = bytearray(gzip.decompress((out / "initrd.img").read_bytes()))
    at = bytes(archive).index(b"kata-snp\n")
    archive[at] ^= 0x20
    (out / "initrd.img").write_bytes(gzip.compress(bytes(archive), mtime=0))
    cp = ccbuild("verify", "--rebuild", recipe, out, "--share-cache", "--failures")
    assert cp.returncode == 1
    assert "FAIL  sha256 firmware.fd" in cp.stdout
    assert "rebuild firmware.fd" in cp.stdout and "first differing byte at offset 0x1000" in cp.stdout
    assert "member 'etc/hostname': content differs" in cp.stdout, cp.stdout
    assert "launch digest recomputed from OUT differs" in cp.stdout


def test_raw_initrd_byte_flip_is_named(built, tmp_path):
    recipe, src = built("snp")
    out = tmp_path / "out"
    shutil.copytree(src, out)
    b = bytearray((out / "initrd.img").read_bytes())
    b[len(b) // 2] ^= 0x01
    (out / "initrd.img").write_bytes(bytes(b))
    cp = ccbuild("verify", "--rebuild", recipe, out, "--share-cache", "--failures")
    assert cp.returncode == 1
    assert "FAIL  rebuild initrd.img" in cp.stdout
    assert "initrd" in cp.stdout and ("member" in cp.stdout or "cannot be read" in cp.stdout)
