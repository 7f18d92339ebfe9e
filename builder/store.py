"""Content-addressed store under ``$CCBUILD_CACHE`` (default ``~/.cache/ccbuild``).

Layout::

    blobs/sha256/ab/abcdef...     file contents, named by their SHA-256
    refs/<namespace>/<key>.json   a resolved name -> {"sha256": ..., ...} (e.g. a Debian pin, a build)
    logs/<name>.log               logs of external builds
    tmp/                          staging for atomic writes

Every read re-hashes the blob and refuses one whose content no longer matches its name, so a
tampered or truncated entry never reaches a build. Every write is atomic (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from builder.errors import CCBuildError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def default_root() -> Path:
    env = os.environ.get("CCBUILD_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ccbuild"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically: a reader sees the old file or the new one, never part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@dataclass(frozen=True)
class Store:
    root: Path

    @classmethod
    def open(cls, root: Path | str | None = None) -> "Store":
        r = Path(root).expanduser() if root else default_root()
        try:
            for sub in ("blobs/sha256", "refs", "logs", "tmp"):
                (r / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CCBuildError(f"cannot create the cache directory ({e.strerror})", str(r),
                               "set CCBUILD_CACHE to a writable directory") from None
        return cls(r)

    # -- blobs ---------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def tmpdir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="work-", dir=self.root / "tmp"))

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        p = self.blob_path(digest)
        if not p.is_file():
            atomic_write(p, data, 0o444)
        return digest

    def put_file(self, src: Path, expect_sha256: str | None = None, what: str | None = None) -> str:
        """Move/copy a file into the store, checking it against ``expect_sha256`` if given."""
        digest = sha256_file(src)
        if expect_sha256 and digest != expect_sha256:
            raise CCBuildError(f"sha256 mismatch: got {digest}, pinned {expect_sha256}",
                               what or src.name,
                               "the input changed; re-pin it (ccbuild lock) if the change is expected")
        p = self.blob_path(digest)
        if not p.is_file():
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".in.", dir=p.parent)
            os.close(fd)
            try:
                with open(src, "rb") as fi, open(tmp, "wb") as fo:
                    while chunk := fi.read(_CHUNK):
                        fo.write(chunk)
                    fo.flush()
                    os.fsync(fo.fileno())
                os.chmod(tmp, 0o444)
                os.replace(tmp, p)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return digest

    def verified_path(self, sha256: str, what: str) -> Path:
        """Path of a blob after re-hashing it; a changed entry is refused."""
        if not _HEX64.match(sha256 or ""):
            raise CCBuildError(f"not a sha256: {sha256!r}", what)
        p = self.blob_path(sha256)
        if not p.is_file():
            raise CCBuildError("not in the store", what, "run without --offline to fetch it")
        actual = sha256_file(p)
        if actual != sha256:
            raise CCBuildError(f"store entry is corrupt (content hashes to {actual[:16]}…)",
                               f"{what} in {p.parent.name}/{p.name[:16]}…",
                               "delete that entry from the cache and run again to fetch it")
        return p

    def get_bytes(self, sha256: str, what: str) -> bytes:
        p = self.verified_path(sha256, what)
        data = p.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:  # changed between check and read
            raise CCBuildError("store entry changed while reading", what)
        return data

    # -- refs: small JSON records naming blobs -------------------------------------------------
    def _ref_path(self, namespace: str, key: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._+-]", "_", key)
        return self.root / "refs" / namespace / f"{safe}.json"

    def get_ref(self, namespace: str, key: str) -> dict | None:
        p = self._ref_path(namespace, key)
        try:
            rec = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a damaged ref is just a cache miss
        return rec if isinstance(rec, dict) and rec.get("key") == key else None

    def set_ref(self, namespace: str, key: str, record: dict) -> None:
        rec = dict(record, key=key)
        atomic_write(self._ref_path(namespace, key), json.dumps(rec, sort_keys=True).encode())

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{re.sub(r'[^A-Za-z0-9._+-]', '_', name)}.log"
