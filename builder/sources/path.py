"""A local file pinned by sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

from builder.errors import CCBuildError


def read_path(path: Path, sha256: str | None, where: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CCBuildError(f"file not found: {path.name}", where) from None
    except IsADirectoryError:
        raise CCBuildError(f"{path.name} is a directory, not a file", where) from None
    except OSError as e:
        raise CCBuildError(f"cannot read {path.name} ({e.strerror})", where) from None
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256:
        raise CCBuildError(f"sha256 mismatch for {path.name}: file is {digest}, pinned {sha256}",
                           where, "the file changed; re-pin it if the change is expected")
    return data
