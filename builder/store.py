"""Content-addressed store under ``$CCBUILD_CACHE`` (default ``~/.cache/ccbuild``).

Layout::

    blobs/sha256/ab/abcdef...     file contents, named by their SHA-256
    refs/<namespace>/<key>.json   a resolved name -> {"sha256": ..., ...} (e.g. a Debian pin, a build)
    logs/<name>.log               logs of external builds
    locks/<namespace>/<key>.lock  one build of a key at a time (flock; holds the holder's pid)
    tmp/                          staging for atomic writes (each scratch directory its own)

Every read re-hashes the blob and refuses one whose content no longer matches its name, so a
tampered or truncated entry never reaches a build. Every write is atomic (temp file + rename), so
two processes writing the same content-addressed blob or ref (two recipes of a release, two CI
jobs sharing a cache) leave one complete copy. :meth:`Store.lock` serializes the builds of one
key across processes (see :mod:`builder.stages.cached`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from builder.errors import CCBuildError

SHA256_HEX = re.compile(r"[0-9a-f]{64}")   # fullmatch: a SHA-256 in hex
_CHUNK = 1 << 20
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
REF_LIMIT = 4 << 20           # a ref's own size (refs are small JSON; a bigger file is no ref)
LOCK_TIMEOUT_ENV = "CCBUILD_LOCK_TIMEOUT"
LOCK_TIMEOUT = 4 * 3600.0     # seconds: longer than any stage's cold build on a small machine
_held: set[str] = set()       # the lock files this process holds (a lock is not re-entrant)


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
    import tempfile
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
    def at(cls, root: Path | str | None = None) -> "Store":
        """The store at ``root`` (default :func:`default_root`), as it is: nothing created."""
        return cls(Path(root).expanduser() if root else default_root())

    @classmethod
    def open(cls, root: Path | str | None = None) -> "Store":
        r = cls.at(root).root
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
        import tempfile
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
            import tempfile
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

    def _present(self, sha256: str, what: str) -> Path:
        if not SHA256_HEX.fullmatch(sha256 or ""):
            raise CCBuildError(f"not a sha256: {sha256!r}", what)
        p = self.blob_path(sha256)
        if not p.is_file():
            raise CCBuildError("not in the store", what, "run without --offline to fetch it")
        return p

    @staticmethod
    def _check(p: Path, sha256: str, actual: str, what: str) -> None:
        if actual != sha256:
            raise CCBuildError(f"store entry is corrupt (content hashes to {actual[:16]}…)",
                               f"{what} in {p.parent.name}/{p.name[:16]}…",
                               "delete that entry from the cache and run again to fetch it")

    def verified_path(self, sha256: str, what: str) -> Path:
        """Path of a blob after re-hashing it; a changed entry is refused."""
        p = self._present(sha256, what)
        self._check(p, sha256, sha256_file(p), what)
        return p

    def get_bytes(self, sha256: str, what: str) -> bytes:
        """A blob's bytes, hashed once as read (the bytes returned are the bytes checked)."""
        p = self._present(sha256, what)
        data = p.read_bytes()
        self._check(p, sha256, hashlib.sha256(data).hexdigest(), what)
        return data

    # -- refs: small JSON records naming blobs -------------------------------------------------
    def ref_path(self, namespace: str, key: str) -> Path:
        return self.root / "refs" / namespace / f"{_safe_name(key)}.json"

    def get_ref(self, namespace: str, key: str) -> dict | None:
        """The ref, or None when it is missing, damaged or foreign (a cache miss): read as a
        regular file of at most :data:`REF_LIMIT` bytes, so a FIFO or a huge file in its place
        neither blocks nor fills memory."""
        from builder.inputs import read_regular
        try:
            rec = json.loads(read_regular(self.ref_path(namespace, key), "ref", namespace,
                                          limit=REF_LIMIT))
        except (CCBuildError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("key") == key else None

    def set_ref(self, namespace: str, key: str, record: dict) -> None:
        rec = dict(record, key=key)
        atomic_write(self.ref_path(namespace, key), json.dumps(rec, sort_keys=True).encode())

    # -- locks: one build of a key at a time, across processes -----------------------------------
    def lock(self, namespace: str, key: str) -> "StoreLock":
        """The lock file ``locks/<namespace>/<key>.lock``, opened (created) without following a
        symlink anywhere below the store's root; not yet locked (:meth:`StoreLock.acquire`)."""
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(f"bad lock namespace {namespace!r}")   # a code bug
        name = f"{_safe_name(key)}.lock"
        shown = f"locks/{namespace}/{name}"
        try:
            dfd = self._subdir("locks", namespace, create=True)
        except OSError as e:
            raise _lock_error(shown, self.root, e) from None
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK |
                         os.O_CLOEXEC | os.O_NOCTTY, 0o644, dir_fd=dfd)
        except OSError as e:
            raise _lock_error(shown, self.root, e) from None
        finally:
            os.close(dfd)
        try:
            st = os.fstat(fd)
        except OSError as e:
            os.close(fd)
            raise _lock_error(shown, self.root, e) from None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise CCBuildError("the store's lock file is not a regular file",
                               f"{shown} in {self.root}", "remove it")
        return StoreLock(fd, shown, f"{self.root}/{shown}")

    def _subdir(self, *parts: str, create: bool = False) -> int:
        """A descriptor of the directory ``root/parts...``, reached without following a symlink
        below the root (each part made first with ``create``); OSError if it cannot be."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=dfd)
                    except FileExistsError:
                        pass
                nfd = os.open(part, flags, dir_fd=dfd)
                os.close(dfd)
                dfd = nfd
        except BaseException:
            os.close(dfd)
            raise
        return dfd

    def prune_refs(self, namespace: str, keep: int) -> None:
        """Keep the ``keep`` newest refs of ``namespace`` (by mtime); best effort. Only regular
        files named like a ref of a SHA-256 key are removed, and never through a symlink."""
        try:
            dfd = self._subdir("refs", namespace)
        except OSError:
            return
        try:
            entries = []
            for name in os.listdir(dfd):
                if not (name.endswith(".json") and SHA256_HEX.fullmatch(name[:-5])):
                    continue
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    entries.append((st.st_mtime_ns, name))
            for _, name in sorted(entries)[:max(0, len(entries) - keep)]:
                try:
                    os.unlink(name, dir_fd=dfd)
                except OSError:
                    pass
        finally:
            os.close(dfd)

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{re.sub(r'[^A-Za-z0-9._+-]', '_', name)}.log"


def seed_store(src: Path, dst: Path) -> Store:
    """A new store at ``dst`` holding ``src``'s blobs (hard links where the file system allows:
    a blob is never written in place, only replaced) and copies of its refs and tool versions;
    ``src`` is only read. For benchmarks and tests that must not disturb the user's store."""
    import shutil
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise FileExistsError(dst)

    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src / "blobs", dst / "blobs", copy_function=link_or_copy, symlinks=True)
    shutil.copytree(src / "refs", dst / "refs", symlinks=True)
    for name in ("tool-versions.json",):
        if (src / name).is_file() and not (src / name).is_symlink():
            shutil.copy2(src / name, dst / name)
    return Store.open(dst)


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", key)


def _lock_error(shown: str, root: Path, e: OSError) -> CCBuildError:
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return CCBuildError("the store's lock file or its directory is a symlink or not a "
                            "directory", f"{shown} in {root}",
                            "remove it; ccbuild never follows links inside its store")
    return CCBuildError(f"cannot open the store's lock file ({e.strerror})", f"{shown} in {root}",
                        "set CCBUILD_CACHE to a writable directory")


def lock_timeout() -> float:
    """How long a build waits for another process's build of the same key
    (``CCBUILD_LOCK_TIMEOUT`` seconds, default :data:`LOCK_TIMEOUT`)."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if raw is None or raw == "":
        return LOCK_TIMEOUT
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not (0 < v < float("inf")):
        raise CCBuildError(f"{LOCK_TIMEOUT_ENV}={raw[:40]!r} is not a number of seconds > 0",
                           LOCK_TIMEOUT_ENV)
    return v


class StoreLock:
    """An exclusive ``flock`` on one lock file of the store (released when this process exits,
    however it exits; never inherited by the tools a build runs). While held, the file holds
    the holder's pid, which a waiter shows."""

    def __init__(self, fd: int, shown: str, path: str):
        self.fd, self.shown, self.path = fd, shown, path
        self.held = False

    def try_acquire(self) -> bool:
        if self.path in _held:
            raise RuntimeError(f"{self.shown} is already held by this process")  # a code bug
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as e:
            raise CCBuildError(f"cannot lock the store ({e.strerror})", self.shown) from None
        self.held = True
        _held.add(self.path)
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass   # the pid is only shown to waiters
        return True

    def holder(self) -> str:
        """``pid N`` of the process holding the lock, as its file says ("" when it says
        nothing readable)."""
        try:
            raw = os.pread(self.fd, 32, 0)
        except OSError:
            return ""
        text = raw.decode("ascii", "replace").strip()
        return f"pid {text}" if text.isdigit() and len(text) <= 10 else ""

    def acquire(self, timeout: float, poll: float = 0.5) -> None:
        """Wait until the lock is ours, or raise a one-line error after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while not self.try_acquire():
            now = time.monotonic()
            if now >= deadline:
                holder = self.holder()
                raise CCBuildError(
                    f"waited {int(timeout)} s for another build of the same stage "
                    f"({holder or 'holder unknown'})", self.path,
                    f"wait for that build, or stop it; {LOCK_TIMEOUT_ENV} sets the wait")
            time.sleep(min(delay, poll, deadline - now))
            delay *= 2

    def release(self) -> None:
        if self.held:
            _held.discard(self.path)
            self.held = False
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
        if self.fd >= 0:
            os.close(self.fd)   # closing the file releases the flock
            self.fd = -1

    def __enter__(self) -> "StoreLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
