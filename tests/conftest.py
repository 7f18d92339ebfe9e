"""Shared fixtures. Real inputs (Debian packages, EDK2 builds) are fetched once into a cache
that outlives the test run (CCBUILD_CACHE, default ~/.cache/ccbuild) and reused."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO.parent / "shared" / "vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not VECTORS.is_dir():
        pytest.skip("../shared/vectors is absent (a plain clone outside the workspace)")
    return VECTORS
