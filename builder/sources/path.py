"""A local file pinned by sha256.

The file is read through :mod:`builder.inputs` (a regular file, at most ``LIMITS["file"]``), so a
FIFO, a device such as ``/dev/zero`` or a directory is refused without blocking. Where it may lie
is decided before, by ``LoadedRecipe.resolve`` (the recipe's directory, unless pinned or
``--allow-outside``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from builder import deps
from builder.errors import CCBuildError
from builder.inputs import LIMITS, open_regular


def read_path(path: Path, sha256: str | None, where: str) -> bytes:
    try:
        data = _read_capped(path, where)
    except CCBuildError as e:
        raise CCBuildError(f"{e.what}: {path.name}", where, e.hint) from None
    digest = hashlib.sha256(data).hexdigest()
    deps.note_read(path, len(data), digest)
    if sha256 and digest != sha256:
        raise CCBuildError(f"sha256 mismatch for {path.name}: file is {digest}, pinned {sha256}",
                           where, "the file changed; re-pin it if the change is expected")
    return data


def _read_capped(path: Path, where: str) -> bytes:
    """The file's bytes in chunks (``f.read(cap)`` would allocate the whole 2 GiB cap up front)."""
    cap = LIMITS["file"]
    chunks, got = [], 0
    with open_regular(path, "file", where) as (f, size):
        try:
            while chunk := f.read(min(1 << 24, cap + 1 - got)):
                chunks.append(chunk)
                got += len(chunk)
                if got > cap:
                    raise CCBuildError(f"file is too large (more than {cap} bytes)", where)
        except OSError as e:
            raise CCBuildError(f"cannot read file ({e.strerror or e})", where) from None
    return b"".join(chunks)
