"""Shared fixtures. Real inputs (Debian packages, EDK2 builds) are fetched once into a cache
that outlives the test run (CCBUILD_CACHE, default ~/.cache/ccbuild) and reused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Public test evidence (real reports, quotes, event logs, fixtures), copied with its sources from
# the workspace's shared/vectors so a clone tests on its own; tests/vectors/README.md says where
# each file comes from.
VECTORS = REPO / "tests" / "vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not VECTORS.is_dir():
        if os.environ.get("CI"):   # CI must never pass by skipping every real-evidence test
            pytest.fail("tests/vectors is absent: the real-evidence tests cannot run")
        pytest.skip("tests/vectors (real SNP reports, TDX quotes and event logs) is absent")
    return VECTORS


@pytest.fixture(scope="session")
def store():
    """The shared download/build cache (CCBUILD_CACHE, default ~/.cache/ccbuild), reused across runs."""
    from builder.store import Store
    return Store.open()


@pytest.fixture(scope="session")
def debian_file(store):
    """``debian_file(package, version, suite, member) -> bytes``: a file from a real Debian
    package, downloaded once through the private apt configuration into the cache."""
    from builder.sources.debian import deb_member, fetch_deb

    cache: dict = {}

    def get(package: str, version: str, suite: str, member: str) -> bytes:
        k = (package, version, suite, member)
        if k not in cache:
            path, _ = fetch_deb(store, package, version, suite)
            cache[k] = deb_member(path, member)
        return cache[k]

    return get


def _edk2_firmware(store, descriptor: str) -> bytes:
    from builder.stages.firmware import build_cached, load_descriptor
    desc = load_descriptor(REPO / "firmware" / descriptor, display=f"firmware/{descriptor}")
    return build_cached(store, desc, jobs=2)


@pytest.fixture(scope="session")
def amdsev_firmware(store) -> bytes:
    """OVMF AmdSevX64 built from the pinned Debian edk2 source (firmware/amdsev.yaml), once per
    cache: later sessions take it from the store by the build's cache key."""
    return _edk2_firmware(store, "amdsev.yaml")


@pytest.fixture(scope="session")
def tdvf_firmware(store) -> bytes:
    """TDVF (OVMF IntelTdxX64) built from the pinned Debian edk2 source (firmware/inteltdx.yaml),
    once per cache."""
    return _edk2_firmware(store, "inteltdx.yaml")


@pytest.fixture(scope="session")
def recipe_file(tmp_path_factory, store):
    """``recipe_file("snp") -> Path``: the shipped recipe, re-locked against what the Debian
    mirror serves today (``ccbuild lock --write`` on a copy of recipes/ and firmware/). While the
    shipped pins are current the copy is byte-identical to them; when the archive has moved on,
    the tests keep testing the code instead of failing on a vanished download (the shipped
    pins are then re-pinned with the same command)."""
    import shutil
    from builder.lock import lock_recipe

    root = tmp_path_factory.mktemp("recipes-locked")
    for d in ("recipes", "firmware", "kernel"):
        if (REPO / d).is_dir():
            shutil.copytree(REPO / d, root / d)
    done: dict = {}

    def get(name: str) -> Path:
        if name not in done:
            p = root / "recipes" / f"{name}.yaml"
            changes = lock_recipe(p, store, write=True, display=f"recipes/{name}.yaml")
            stale = [c.line() for c in changes if c.old != c.new]
            if stale:
                import warnings
                warnings.warn("shipped pins are stale (tests use re-locked copies): "
                              + " | ".join(stale))
            done[name] = p
        return done[name]

    return get
