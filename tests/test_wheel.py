"""Installed like a tool (issue 15): the wheel ships every file the code reads at run time, and an
ordinary user builds from it, with a read-only checkout, the same bytes root builds from the
checkout.

The slow test builds the sdist and the wheel (``python -m build``, from a copy of the source so
nothing is written into the checkout), installs the wheel (not editable) into a fresh venv and,
as ``nobody`` (setpriv, its own HOME, an ordinary user's PATH without sbin), builds the SNP
recipe from a read-only copy of the recipes, compares OUT byte for byte with root's build of the
same recipe by the checkout's ccbuild, and runs ``ccbuild verify`` on it.

nobody's store is seeded from root's warm store with the entries root's build used (the refs that
name a hash its manifest lists, transitively, and the blobs they name), except the test agent's
build, which nobody compiles from the wheel's package data: the EDK2 build (minutes cold) is not
repeated, yet every file the build reads from the installation is read. A copy of the whole store
would work as well but costs ~0.5 GB per run; pointing nobody at root's store itself would let
the build write root's cache.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from helpers import tree_snapshot

REPO = Path(__file__).resolve().parent.parent
ORDINARY_PATH = "/usr/local/bin:/usr/bin:/bin"      # Debian's PATH for a user: no sbin


# -- fast checks ---------------------------------------------------------------------------------

def _package_data_patterns() -> list[str]:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    return cfg["tool"]["setuptools"]["package-data"]["builder"]


def _runtime_data_files() -> list[str]:
    """Every file under builder/ that is not Python source: what the code reads at run time."""
    out = []
    for dirpath, dirnames, filenames in os.walk(REPO / "builder", followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in filenames:
            rel = (Path(dirpath) / f).relative_to(REPO / "builder").as_posix()
            if not rel.endswith((".py", ".pyc")):
                out.append(rel)
    return sorted(out)


def test_package_data_covers_every_runtime_file():
    pats = _package_data_patterns()
    files = _runtime_data_files()
    assert any(f.startswith("data/agent/") for f in files)
    assert any(f.startswith("data/profiles/") for f in files)
    missing = [f for f in files if not any(fnmatch(f, p) for p in pats)]
    assert not missing, f"not shipped in the wheel (pyproject package-data): {missing}"


def test_no_runtime_file_is_found_through___file__():
    offenders = []
    for p in sorted((REPO / "builder").rglob("*.py")):
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if "__file__" in line and not line.lstrip().startswith("#"):
                offenders.append(f"{p.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_agent_source_and_profiles_are_package_data():
    from builder.measure.tdx_profile import PROFILE_DIR, resolve_profile
    from builder.stages.agent import default_source
    assert default_source().is_file()
    assert default_source().relative_to(REPO / "builder" / "data")
    names = {p.name for p in PROFILE_DIR.glob("*.yaml")}
    # every profile a shipped recipe names (by path, beside it) is also found by its bare name
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        for m in re.finditer(r"^\s+profile:\s*(\S+)", recipe.read_text(), re.M):
            assert (recipe.parent / m.group(1)).is_file(), (recipe.name, m.group(1))
            assert Path(m.group(1)).name in names
            stem = Path(m.group(1)).stem
            assert resolve_profile(stem).read_bytes() == (recipe.parent / m.group(1)).read_bytes()


def test_store_defaults_to_xdg_cache_home(monkeypatch, tmp_path):
    from builder.store import default_root
    monkeypatch.delenv("CCBUILD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "ccbuild"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".cache" / "ccbuild"
    monkeypatch.setenv("CCBUILD_CACHE", str(tmp_path / "c"))
    assert default_root() == tmp_path / "c"


@pytest.mark.parametrize("tool,package", [
    ("musl-gcc", "musl-tools"), ("mkfs.erofs", "erofs-utils"), ("mkfs.ext4", "e2fsprogs"),
    ("veritysetup", "cryptsetup-bin"), ("qemu-system-x86_64", "qemu-system-x86"),
    ("nasm", "nasm"), ("iasl", "acpica-tools"), ("make", "make"), ("patch", "patch"),
    ("apt-get", "apt"),
])
def test_a_missing_tool_names_its_debian_package(monkeypatch, tmp_path, tool, package):
    from builder.errors import CCBuildError
    from builder.run import run, run_streamed, tool_version
    monkeypatch.setenv("PATH", str(tmp_path))                  # nothing on PATH
    monkeypatch.setattr("builder.run._SBIN", str(tmp_path))    # nor in sbin
    for call in (lambda: run([tool, "x"]), lambda: tool_version([tool, "--version"]),
                 lambda: run_streamed([tool], cwd=tmp_path, log_path=tmp_path / "l", what=tool)):
        with pytest.raises(CCBuildError) as e:
            call()
        line = e.value.one_line()
        assert line.startswith(f"{tool} is not installed"), line
        assert f"apt-get install {package}" in line, line


def test_sbin_tools_run_from_an_ordinary_users_path(monkeypatch, tmp_path):
    from builder.run import run
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    tool = sbin / "mkfs.fake"
    tool.write_text("#!/bin/sh\necho made \"$@\"\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", ORDINARY_PATH)
    monkeypatch.setattr("builder.run._SBIN", str(sbin))
    assert run(["mkfs.fake", "a"]).stdout == b"made a\n"


def test_version_lists_the_tools_found(monkeypatch, tmp_path):
    from builder.cli import main
    from builder.run import REPORTED_TOOLS
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CCBUILD_CACHE", str(tmp_path / "cache"))   # its tool-versions.json
    monkeypatch.setattr("builder.run._SBIN", str(tmp_path))
    fake = tmp_path / "veritysetup"
    fake.write_text("#!/bin/sh\necho veritysetup 9.8.7 flags: X\n")
    fake.chmod(0o755)
    import io
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    lines = buf.getvalue().splitlines()
    from builder import __version__
    assert lines[0] == f"ccbuild {__version__}"
    shown = dict(ln.split(None, 1) for ln in lines[1:])
    assert list(shown) == [t for t, _ in REPORTED_TOOLS]
    assert shown["veritysetup"] == "veritysetup 9.8.7 flags: X"
    assert shown["mkfs.erofs"] == "not found (Debian package erofs-utils)"
    assert shown["musl-gcc"] == "not found (Debian package musl-tools)"


# -- the wheel, installed, used by an ordinary user ----------------------------------------------

def _run(argv, *, user=None, env=None, cwd=None, timeout=1800) -> subprocess.CompletedProcess:
    """``argv`` (as ``user``: (uid, gid) through setpriv, else as this process) with stdout and
    stderr captured; fails the test with both on a non-zero exit."""
    if user is not None:
        argv = ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups", *argv]
    cp = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True,
                        timeout=timeout)
    assert cp.returncode == 0, (f"{' '.join(map(str, argv))[:300]} exit {cp.returncode}\n"
                                f"stdout: {cp.stdout.decode(errors='replace')[-2000:]}\n"
                                f"stderr: {cp.stderr.decode(errors='replace')[-2000:]}")
    return cp


def _ordinary_user() -> tuple[int, int] | None:
    """(uid, gid) of nobody:nogroup to setpriv to when running as root; None when this process is
    already an ordinary user. Skips when root cannot become one (no setpriv, no nobody)."""
    if os.geteuid() != 0:
        return None
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot build as an ordinary user")
    try:
        uid = pwd.getpwnam("nobody").pw_uid
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("no nobody user / nogroup group to build as")
    return uid, gid


def _hashes(text: str) -> set[str]:
    return set(re.findall(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])", text))


def _seed_store(src: Path, dst: Path, manifest: dict) -> tuple[int, int]:
    """Copy into ``dst`` the refs of ``src`` that root's build used (those naming a hash its
    manifest names, transitively) and the blobs they name; never the test agent's build.
    Returns (refs, bytes) copied."""
    wanted = _hashes(json.dumps(manifest))
    refs = {p: p.name + p.read_text() for p in (src / "refs").glob("*/*.json")
            if p.parent.name != "agent-build"}
    chosen: set[Path] = set()
    while True:
        new = {p for p, text in refs.items() if p not in chosen and _hashes(text) & wanted}
        if not new:
            break
        chosen |= new
        for p in new:
            wanted |= _hashes(refs[p])
    size = 0
    for p in chosen:
        t = dst / p.relative_to(src)
        t.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, t)
    for h in wanted:
        b = src / "blobs" / "sha256" / h[:2] / h
        if b.is_file():
            t = dst / b.relative_to(src)
            t.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(b, t)
            size += b.stat().st_size
    return len(chosen), size


def _read_only(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for f in filenames:
            p = Path(dirpath) / f
            if not p.is_symlink():
                p.chmod(p.stat().st_mode & ~0o222 | 0o444)
        Path(dirpath).chmod(0o555)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(Path(dirpath) / name, uid, gid, follow_symlinks=False)


@pytest.mark.slow
def test_wheel_installed_by_an_ordinary_user_builds_root_s_bytes(recipe_file, store):
    user = _ordinary_user()
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    # Not under pytest's tmp_path: that is private to root (0700), and nobody must reach the venv.
    shared = Path(tempfile.mkdtemp(prefix="ccbuild-wheel-"))
    try:
        shared.chmod(0o755)

        # 1. sdist + wheel from a copy of the source (python -m build writes beside its input)
        src = shared / "src"
        shutil.copytree(REPO / "builder", src / "builder", symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copytree(REPO / "recipes" / "profiles", src / "recipes" / "profiles")
        for f in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / f, src / f)
        _run([sys.executable, "-m", "build", "-o", shared / "dist", src], timeout=900)
        wheels = sorted((shared / "dist").glob("ccbuild-*.whl"))
        assert len(wheels) == 1 and sorted((shared / "dist").glob("ccbuild-*.tar.gz"))
        import zipfile
        names = set(zipfile.ZipFile(wheels[0]).namelist())
        for rel in _runtime_data_files():
            assert f"builder/{rel}" in names, f"the wheel lacks builder/{rel}"
        timings["build wheel"] = time.monotonic() - t0

        # 2. a fresh venv, the wheel installed (not editable); dependencies from the index
        t = time.monotonic()
        venv = shared / "venv"
        _run([sys.executable, "-m", "venv", venv])
        _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheels[0]], timeout=900)
        site = _run([venv / "bin" / "python", "-c",
                     "import builder, sys; print(builder.__file__)"], cwd=shared).stdout.decode()
        assert site.strip().startswith(str(venv)), f"builder imported from {site.strip()}"
        timings["venv + install"] = time.monotonic() - t

        # 3. root: the checkout's ccbuild builds the (re-locked) recipe with root's store
        recipe = recipe_file("snp")
        tree = recipe.parent.parent                 # recipes/, firmware/, kernel/ (re-locked)
        t = time.monotonic()
        out_root = shared / "out-root"
        # (with the user's PATH: the tools found, e.g. python3 for EDK2, are part of cache keys)
        _run([sys.executable, "-m", "builder.cli", "build", recipe, "-o", out_root],
             env={**os.environ, "CCBUILD_CACHE": str(store.root), "PATH": ORDINARY_PATH},
             cwd=REPO)
        timings["root build"] = time.monotonic() - t
        manifest = json.loads((out_root / "manifest.json").read_text())

        # 4. the ordinary user's world: a read-only copy of the repository's recipe tree, its own
        #    HOME and a store seeded with root's entries (not the agent: it compiles that)
        repo_ro = shared / "repo"
        for d in ("recipes", "firmware", "kernel"):
            shutil.copytree(tree / d, repo_ro / d, symlinks=True)
        _read_only(repo_ro)
        home, cache, work = shared / "home", shared / "cache", shared / "work"
        for d in (home, cache, work):
            d.mkdir()
        n_refs, n_bytes = _seed_store(store.root, cache, manifest)
        assert n_refs > 0
        if user is not None:
            for d in (home, cache, work):
                _chown_tree(d, *user)
        env = {"PATH": ORDINARY_PATH, "HOME": str(home), "CCBUILD_CACHE": str(cache),
               "LANG": "C.UTF-8"}
        ccbuild = venv / "bin" / "ccbuild"
        before = tree_snapshot(repo_ro)

        who = _run(["id", "-u"], user=user, env=env).stdout.decode().strip()
        assert who == str(user[0] if user else os.geteuid())

        version = _run([ccbuild, "--version"], user=user, env=env, cwd=work).stdout.decode()
        assert version.startswith("ccbuild ") and "mkfs.ext4" in version, version

        t = time.monotonic()
        out_user = work / "out"
        _run([ccbuild, "build", "recipes/snp.yaml", "-o", out_user], user=user, env=env,
             cwd=repo_ro)
        timings["ordinary-user build"] = time.monotonic() - t
        t = time.monotonic()   # again: the up-to-date record (code digest of the installed wheel)
        again = _run([ccbuild, "build", "recipes/snp.yaml", "-o", out_user], user=user,
                     env=dict(env, CCBUILD_PROGRESS="lines"), cwd=repo_ro).stderr.decode()
        assert "(cache hit: nothing changed since the last build)" in again, again
        assert "step firmware" not in again and "up to date (nothing changed)" in again, again
        timings["ordinary-user no-op"] = time.monotonic() - t
        t = time.monotonic()
        lock = _run([ccbuild, "lock", "recipes/snp.yaml"], user=user, env=env, cwd=repo_ro)
        timings["ordinary-user lock"] = time.monotonic() - t
        assert tree_snapshot(repo_ro) == before, "the build or lock wrote into the checkout"
        assert (cache / "refs" / "agent-build").is_dir(), "the agent was not built by the user"

        # 5. byte for byte root's OUT, and verify holds
        names_root = sorted(p.name for p in out_root.iterdir())
        names_user = sorted(p.name for p in out_user.iterdir())
        assert names_user == names_root
        for name in names_root:
            assert (out_user / name).read_bytes() == (out_root / name).read_bytes(), name
        if user is not None:
            assert out_user.stat().st_uid == user[0]
            for p in out_user.iterdir():
                assert p.stat().st_uid == user[0] and not stat.S_ISLNK(p.lstat().st_mode)
        t = time.monotonic()
        _run([ccbuild, "verify", out_user], user=user, env=env, cwd=work)
        timings["ordinary-user verify"] = time.monotonic() - t
        timings["total"] = time.monotonic() - t0
        print(f"\nseeded {n_refs} refs, {n_bytes >> 20} MiB of blobs; lock: "
              f"{lock.stdout.decode().strip()[:200]!r}; timings (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    finally:
        for dirpath, dirnames, _ in os.walk(shared):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(shared, ignore_errors=True)
