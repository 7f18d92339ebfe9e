"""`ccbuild verify --rebuild` on the shipped recipes (re-locked copies): a rebuild in a fresh
directory agrees byte for byte; a damaged OUT is named by file and, for the initrd, by cpio
member and field. One rebuild uses a fresh, empty cache (firmware rebuilt from EDK2 source);
the others share the cache."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import time
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


def test_rebuild_with_fresh_cache_elsewhere_agrees_and_its_log_never_sits_silent(built,
                                                                                 tmp_path):
    """One cold AmdSev build, three claims. The rebuild (firmware from EDK2 source, a fresh
    store) in another directory, umask, time zone and locale gives OUT's bytes; with stderr a
    pipe (a CI log) the gaps between its lines, from the first to the last, stay within
    30 s + slack, and the EDK2 build's lines count modules."""
    recipe, out = built("snp")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CCBUILD_PROGRESS"}
    env.update(TZ="Pacific/Kiritimati", LC_ALL="C")
    report = tmp_path / "stdout"
    t0 = time.monotonic()
    with open(report, "wb") as so:
        proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "verify", "--rebuild",
                                 recipe, out], cwd=work, env=env, umask=0o077,
                                stdout=so, stderr=subprocess.PIPE)
        stamps = [(time.monotonic() - t0, line.decode(errors="replace").rstrip())
                  for line in proc.stderr]
    stdout = report.read_text()
    assert proc.wait() == 0, stdout + "\n".join(t for _, t in stamps[-5:])
    assert "fresh, empty cache" in stdout and "rebuild firmware.fd" in stdout
    assert stamps[-1][0] - stamps[0][0] > 60, ("not a cold build", stamps)
    times = [t for t, _ in stamps]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= 33, (max(gaps), stamps)
    assert any("modules" in text for _, text in stamps), stamps


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
