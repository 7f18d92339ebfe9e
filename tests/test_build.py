"""`ccbuild build` end to end on the shipped recipes: real Debian packages, real EDK2 builds.

Reproducibility is checked the way a second party would see it: another working directory,
another TZ and umask, and another cache directory (so the firmware is rebuilt from source)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

OUTPUTS = {"firmware.fd", "vmlinuz", "initrd.img", "cmdline.txt", "measurements.json",
           "manifest.json", "SHA256SUMS"}


def ccbuild(*args, cwd=REPO, env=None, umask=None, timeout=1800):
    e = dict(os.environ)
    e.update(env or {})
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=pre)


def seeded_cache(store, dest: Path, builds: bool = False) -> Path:
    """A new cache holding only the verified downloads (and, with ``builds``, the cached
    firmware/agent builds): hard links into the shared store, so nothing is downloaded twice
    but, without ``builds``, every build step runs again."""
    subs = ["refs/debian-deb", "refs/debian-src"]
    if builds:
        subs += ["refs/firmware-build", "refs/agent-build", "refs/deb-member"]
    for sub in subs:
        src = store.root / sub
        if src.is_dir():
            shutil.copytree(src, dest / sub)
    for p in (store.root / "blobs").rglob("*"):
        if p.is_file():
            q = dest / p.relative_to(store.root)
            q.parent.mkdir(parents=True, exist_ok=True)
            os.link(p, q)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory, recipe_file):
    """recipes/<p>.yaml (re-locked copy) built once into A with the shared cache."""
    done = {}

    def get(platform: str) -> Path:
        if platform not in done:
            out = tmp_path_factory.mktemp(f"A-{platform}") / "out"
            cp = ccbuild("build", recipe_file(platform), "-o", out)
            assert cp.returncode == 0, cp.stderr
            done[platform] = out
        return done[platform]

    return get


def assert_complete(out: Path) -> None:
    """OUT holds exactly what its manifest lists (plus manifest.json and SHA256SUMS), and the
    core artifacts are among them."""
    import json
    listed = {o["path"] for o in json.loads((out / "manifest.json").read_text())["outputs"]}
    assert set(os.listdir(out)) == listed | {"manifest.json", "SHA256SUMS"}
    assert OUTPUTS <= set(os.listdir(out))


def files_of(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("platform", ["snp", "tdx"])
def test_sha256sums_is_what_sha256sum_accepts(built, platform):
    chk = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=built(platform),
                         capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr


@pytest.mark.parametrize("platform", ["tdx"])
def test_rebuild_elsewhere_is_bit_identical(built, store, tmp_path, platform, recipe_file):
    """TDVF from source in another store, directory, umask, time zone and locale. (SNP's
    AmdSev build gets the same treatment in test_verify_rebuild's fresh-cache rebuild.)"""
    a = built(platform)
    assert_complete(a)
    cache_b = seeded_cache(store, tmp_path / "cache-b")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    recipe = recipe_file(platform)
    cp = ccbuild("build", recipe, "-o", "B", cwd=workdir, umask=0o077,
                 env={"TZ": "Pacific/Kiritimati", "CCBUILD_CACHE": str(cache_b), "LC_ALL": "C"})
    assert cp.returncode == 0, cp.stderr
    fa, fb = files_of(a), files_of(workdir / "B")
    assert fa.keys() == fb.keys()
    differing = [n for n in fa if fa[n] != fb[n]]
    assert not differing, f"differ: {differing}"
    # the firmware really was rebuilt in B's cache, not copied
    assert list((cache_b / "refs" / "firmware-build").glob("*.json"))


def test_manifest_lists_inputs_and_outputs(built):
    import json
    a = built("snp")
    m = json.loads((a / "manifest.json").read_text())
    outs = {o["path"]: o for o in m["outputs"]}
    for name in OUTPUTS - {"manifest.json", "SHA256SUMS"}:
        data = (a / name).read_bytes()
        assert outs[name] == {"path": name, "sha256": hashlib.sha256(data).hexdigest(),
                              "size": len(data)}
    roles = {i["role"] for i in m["inputs"]}
    assert {"kernel", "agent", "firmware", "firmware-source"} <= roles
    assert all(len(i["sha256"]) == 64 for i in m["inputs"])
    assert m["source_date_epoch"] == 1735689600
    text = (a / "manifest.json").read_text()
    assert str(REPO) not in text and os.environ.get("HOME", "/root") not in text


def test_cmdline_has_no_trailing_newline_and_initrd_lists_with_gnu_cpio(built):
    a = built("snp")
    cmd = (a / "cmdline.txt").read_bytes()
    assert cmd and not cmd.endswith(b"\n") and b"  " not in cmd
    raw = subprocess.run(["gzip", "-dc", str(a / "initrd.img")], capture_output=True, check=True)
    ls = subprocess.run(["cpio", "-itv"], input=raw.stdout, capture_output=True, check=True)
    listing = ls.stdout.decode()
    assert " init\n" in listing and "dev/console" in listing and "etc/hostname" in listing


def test_noop_rebuild_says_so_and_leaves_out_alone(built, recipe_file):
    a = built("snp")
    before = {p.name: p.stat().st_mtime_ns for p in a.iterdir()}
    t = time.monotonic()
    cp = ccbuild("build", recipe_file("snp"), "-o", a)
    dt = time.monotonic() - t
    assert cp.returncode == 0 and "up to date" in cp.stderr, cp.stderr
    assert before == {p.name: p.stat().st_mtime_ns for p in a.iterdir()}
    print(f"no-op rebuild (whole CLI process): {dt:.2f}s")


def test_interrupted_build_never_leaves_a_partial_out(built, tmp_path, recipe_file):
    """kill -9 at many moments of a (cached) build: OUT is absent or complete, and the next
    build succeeds."""
    built("snp")
    out = tmp_path / "out"
    for delay in (0.05, 0.2, 0.4, 0.6, 0.8, 1.0):
        p = subprocess.Popen([sys.executable, "-m", "builder.cli", "build", str(recipe_file("snp")),
                              "-o", str(out), "--set", f"launch.vcpus=[{int(delay * 10) + 1}]"],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if out.exists():
            assert_complete(out)
            chk = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out)
            assert chk.returncode == 0
    cp = ccbuild("build", recipe_file("snp"), "-o", out)
    assert cp.returncode == 0, cp.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_firmware_without_kernel_hashes_is_refused_and_out_untouched(built, tmp_path, store,
                                                                      recipe_file):
    """A real Debian OVMF_CODE_4M.fd has no SEV metadata at all; Debian's OVMF.fd has SEV
    metadata but no KERNEL_HASHES: both are refused for SNP, naming the build to use."""
    a = built("snp")
    before = files_of(a)
    for member in ("usr/share/OVMF/OVMF_CODE_4M.fd", "usr/share/ovmf/OVMF.fd"):
        src = ('{"source": {"debian": "ovmf", "version": "2025.02-8+deb13u1", '
               '"suite": "trixie", "member": "%s"}}' % member)
        cp = ccbuild("build", recipe_file("snp"), "-o", a, "--set", f"firmware={src}")
        assert cp.returncode == 2, cp.stderr
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1 and "KERNEL_HASHES" in lines[0] and "AmdSevX64" in lines[0], lines
    assert files_of(a) == before


def test_tampered_store_entry_is_refused(built, store, tmp_path, recipe_file):
    built("snp")
    cache = seeded_cache(store, tmp_path / "cache", builds=True)
    kernel_deb = next((cache / "refs" / "debian-deb").glob("linux-image-6.12*"))
    import json
    digest = json.loads(kernel_deb.read_text())["sha256"]
    blob = cache / "blobs" / "sha256" / digest[:2] / digest
    data = bytearray(blob.read_bytes())
    blob.unlink()  # break the hard link before writing
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    cp = ccbuild("build", recipe_file("snp"), "-o", tmp_path / "out", "--offline",
                 env={"CCBUILD_CACHE": str(cache)})
    assert cp.returncode == 2 and "store entry is corrupt" in cp.stderr, cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
