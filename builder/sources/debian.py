"""Debian packages through a private apt configuration derived from the host's mirror.

The host's apt sources (``/etc/apt/sources.list`` and ``sources.list.d/*.list|*.sources``) tell
which Debian mirror this machine uses; we never write a mirror into the repository. For each
suite (bookworm, trixie, sid, bookworm-security, ...) a private apt tree under the store
(``apt/<suite>/``) holds its own sources.list and package lists, so any suite can be used without
touching the host's apt state. Downloads go through apt itself (signed indexes, the host's
proxy settings), land in the content-addressed store and are checked against the pinned sha256.
Overrides: ``CCBUILD_DEBIAN_MIRROR`` and ``CCBUILD_DEBIAN_SECURITY_MIRROR``.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder import log
from builder.errors import CCBuildError, FormatError
from builder.inputs import LIMITS, open_regular
from builder.run import run
from builder.store import Store, atomic_write

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LISTS_MAX_AGE = 6 * 3600  # refresh package lists older than this when a pin is not found


# -- the host's mirror ------------------------------------------------------------------------
def _host_source_entries(etc: Path = Path("/etc/apt")) -> list[tuple[str, str]]:
    """(uri, suite) pairs of the host's binary 'deb' sources, one-line and deb822 formats."""
    out: list[tuple[str, str]] = []
    files = [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*.list"))
    for f in files:
        try:
            lines = f.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                out.append((line[1], line[2]))
    for f in sorted((etc / "sources.list.d").glob("*.sources")):
        try:
            text = f.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    out.append((uri, suite))
    return out


@dataclass(frozen=True)
class Mirrors:
    main: str
    security: str | None


def host_mirrors() -> Mirrors:
    """The Debian archive and security mirror URIs this machine's apt uses."""
    main = os.environ.get("CCBUILD_DEBIAN_MIRROR")
    sec = os.environ.get("CCBUILD_DEBIAN_SECURITY_MIRROR")
    entries = _host_source_entries()
    if not main:
        main = next((u for u, s in entries if not s.endswith("-security")
                     and "security" not in u and "debian" in u), None)
    if not sec:
        sec = next((u for u, s in entries if s.endswith("-security")), None)
    if not main:
        raise CCBuildError("no Debian mirror found in the host's apt sources", "/etc/apt",
                           "set CCBUILD_DEBIAN_MIRROR to your Debian mirror URI")
    return Mirrors(main.rstrip("/"), sec.rstrip("/") if sec else None)


# -- a private apt tree per suite ---------------------------------------------------------------
class Apt:
    """apt-get/apt-cache for one suite, with state kept under the store."""

    def __init__(self, store: Store, suite: str):
        if not re.fullmatch(r"[a-z][a-z0-9-]*", suite):
            raise CCBuildError(f"bad Debian suite name {suite!r}", "suite")
        self.store = store
        self.suite = suite
        self.dir = store.root / "apt" / suite
        self.log = store.log_path(f"apt-{suite}")

    def _sources(self) -> str:
        m = host_mirrors()
        if self.suite.endswith("-security"):
            if not m.security:
                raise CCBuildError("no Debian security mirror in the host's apt sources",
                                   f"suite {self.suite}",
                                   "set CCBUILD_DEBIAN_SECURITY_MIRROR")
            uri = m.security
        else:
            uri = m.main
        signed = f" [signed-by={KEYRING}]" if os.path.exists(KEYRING) else ""
        return (f"deb{signed} {uri} {self.suite} main\n"
                f"deb-src{signed} {uri} {self.suite} main\n")

    def _opts(self) -> list[str]:
        d = self.dir
        return ["-q", "-o", f"Dir::Etc::SourceList={d / 'sources.list'}",
                "-o", "Dir::Etc::SourceParts=/dev/null",
                "-o", f"Dir::State::Lists={d / 'lists'}",
                "-o", f"Dir::Cache={d / 'cache'}",
                "-o", "Dir::State::status=/dev/null",
                "-o", "APT::Sandbox::User=root",
                "-o", "Debug::NoLocking=1",
                "-o", "APT::Architecture=amd64",
                "-o", "Acquire::Languages=none"]

    def _stamp(self) -> Path:
        return self.dir / "updated"

    def update(self, force: bool = False) -> None:
        stamp = self._stamp()
        fresh = stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE
        src = self._sources()
        slist = self.dir / "sources.list"
        if not force and fresh and slist.exists() and slist.read_text() == src:
            return
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        atomic_write(slist, src.encode())
        log.info(f"apt: updating package lists for {self.suite}")
        run(["apt-get", *self._opts(), "update"], log_path=self.log,
            what=f"apt-get update ({self.suite})")
        stamp.touch()

    def cache(self, *args: str) -> str:
        return run(["apt-cache", *self._opts(), *args], log_path=self.log,
                   what="apt-cache", check=False).stdout.decode(errors="replace")

    def get(self, *args: str, cwd: Path, check: bool = True):
        return run(["apt-get", *self._opts(), *args], cwd=cwd, log_path=self.log,
                   what=f"apt-get {args[0]}", check=check)

    def versions(self, package: str) -> list[str]:
        """Versions of a binary package this suite serves now (newest first)."""
        out = self.cache("madison", package)
        vs = []
        for line in out.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) >= 3 and parts[0] == package and "Packages" in parts[2]:
                vs.append(parts[1])
        return vs

    def source_versions(self, package: str) -> list[str]:
        out = self.cache("showsrc", package)
        return re.findall(r"^Version: (\S+)", out, re.M)


def _not_served(kind: str, package: str, version: str, suite: str) -> CCBuildError:
    return CCBuildError(f"{kind} {package}={version} is not served by the mirror for {suite}",
                        f"debian {package}",
                        "the archive moved on: re-pin with 'ccbuild lock RECIPE' or give the file "
                        "by 'path'")


# -- binary packages ----------------------------------------------------------------------------
def deb_ref_key(package: str, version: str, suite: str) -> str:
    return f"{package}_{version}_{suite}"


def stored_deb(store: Store, package: str, version: str, suite: str,
               sha256: str | None = None) -> str | None:
    """The sha256 of the .deb of ``package=version`` from ``suite`` when the store holds it (by
    its resolved ref, else by the pin), without reading it; None when it must be fetched. A ref
    that contradicts the pin is an error."""
    ref = store.get_ref("debian-deb", deb_ref_key(package, version, suite))
    served = ref.get("sha256") if ref else None
    if not isinstance(served, str):
        served = None   # a damaged ref is a cache miss
    if served and sha256 and served != sha256:
        raise CCBuildError(f"sha256 mismatch: the archive served {served}, pinned {sha256}",
                           f"{package}_{version}.deb", "the package was rebuilt or the pin is "
                           "wrong; re-pin with 'ccbuild lock RECIPE'")
    if served and store.has(served):
        return served
    if sha256 and store.has(sha256):
        return sha256
    return None


def fetch_deb(store: Store, package: str, version: str, suite: str, sha256: str | None = None,
              offline: bool = False) -> tuple[Path, str]:
    """The .deb of ``package=version`` from ``suite``, in the store, verified. Returns (path, sha256)."""
    what = f"{package}_{version}.deb"
    key = deb_ref_key(package, version, suite)
    digest = stored_deb(store, package, version, suite, sha256)
    if digest is not None:
        return store.verified_path(digest, what), digest
    if offline:
        raise CCBuildError("not in the store and --offline is set", what,
                           "run once without --offline to fetch it")
    apt = Apt(store, suite)
    apt.update()
    work = store.tmpdir()
    try:
        cp = apt.get("download", f"{package}={version}", cwd=work, check=False)
        if cp.returncode != 0:
            apt.update(force=True)
            cp = apt.get("download", f"{package}={version}", cwd=work, check=False)
        debs = sorted(work.glob("*.deb"))
        if cp.returncode != 0 or len(debs) != 1:
            raise _not_served("package", package, version, suite)
        digest = store.put_file(debs[0], sha256, what)
    finally:
        _rmtree(work)
    store.set_ref("debian-deb", key, {"sha256": digest, "package": package, "version": version,
                                      "suite": suite})
    return store.verified_path(digest, what), digest


# -- reading a .deb ------------------------------------------------------------------------------
# A .deb is an ar archive (debian-binary, control.tar.*, data.tar.*; deb(5)); the files are in
# data.tar, compressed with xz, gzip, zstd or not at all. Everything here treats the archive as
# hostile: ar headers are bounds-checked, every decompressor and tar error becomes one FormatError
# naming the .deb and the member, the decompressed data.tar is streamed (never held whole) and
# capped, a member is capped at its kind's limit, and symlinks are resolved inside the package.

AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60
# The whole decompressed data.tar: Debian's largest binary packages (debug symbols, firmware
# bundles) unpack to well under this; a decompression bomb stops here.
DATA_TAR_LIMIT = 8 << 30
_MAX_SYMLINK_HOPS = 40  # as Linux's MAXSYMLINKS
_AR_NAME_RE = re.compile(r"[A-Za-z0-9_.+-]{1,16}")


@dataclass(frozen=True)
class _ArMember:
    name: str
    offset: int  # file offset of the member's data
    size: int


def _ar_members(f, file_size: int, what: str) -> list[_ArMember]:
    """The members of an ar archive, every header checked against the file's size."""
    f.seek(0)
    if f.read(len(AR_MAGIC)) != AR_MAGIC:
        raise FormatError("not a Debian package (no ar header '!<arch>')", 0, what)
    pos, out = len(AR_MAGIC), []
    while pos < file_size:
        if pos + AR_HEADER > file_size:
            raise FormatError(f"truncated ar member header ({file_size - pos} of {AR_HEADER} "
                              "bytes)", pos, what)
        f.seek(pos)
        hdr = f.read(AR_HEADER)
        if len(hdr) != AR_HEADER or hdr[58:60] != b"`\n":
            raise FormatError("corrupt ar member header (no '`\\n' terminator)", pos, what)
        name = hdr[:16].decode("ascii", "replace").rstrip(" ").removesuffix("/")
        if not _AR_NAME_RE.fullmatch(name):
            raise FormatError(f"ar member name {hdr[:16]!r} is not a plain file name", pos, what)
        size_text = hdr[48:58].rstrip(b" ")
        if not size_text.isdigit():  # ASCII digits only: no sign, no base prefix, no spaces
            raise FormatError(f"ar member {name} size {size_text!r} is not a decimal number",
                              pos + 48, what)
        size = int(size_text)
        data = pos + AR_HEADER
        if data + size > file_size:
            raise FormatError(f"ar member {name} size {size} runs past the end of the file "
                              f"({file_size} bytes)", pos + 48, what)
        out.append(_ArMember(name, data, size))
        pos = data + size + (size & 1)
    return out


class _Slice(io.RawIOBase):
    """Bytes ``[start, start + size)`` of an open file, as a readable stream."""

    def __init__(self, f, start: int, size: int):
        self.f, self.pos, self.end = f, start, start + size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.end - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.pos)
        data = self.f.read(n)
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


class _Capped(io.RawIOBase):
    """A decompressed stream that refuses to yield more than DATA_TAR_LIMIT bytes."""

    def __init__(self, stream, name: str, what: str):
        self.stream, self.name, self.what, self.total = stream, name, what, 0
        self.limit = DATA_TAR_LIMIT

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.stream.read(len(b))
        self.total += len(data)
        if self.total > self.limit:
            raise FormatError(f"{self.name} is too large: it decompresses to more than "
                              f"{self.limit} bytes (a decompression bomb?)", None, self.what)
        b[:len(data)] = data
        return len(data)


def _decompressor_errors() -> tuple[type[BaseException], ...]:
    import lzma
    import tarfile
    errors: list[type[BaseException]] = [lzma.LZMAError, zlib.error, EOFError, OSError,
                                         tarfile.TarError, ValueError]
    try:
        import zstandard
        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


@contextmanager
def _data_tar(deb_path: Path, what: str):
    """The package's data.tar as a streaming tarfile (mode ``r|``); every error while reading it
    (decompression, tar headers) is a FormatError naming the .deb and the member."""
    import gzip   # extraction only (a no-op takes the member from the store)
    import lzma
    import tarfile
    with open_regular(deb_path, "debian package", what) as (f, size):
        members = [m for m in _ar_members(f, size, what) if m.name.startswith("data.tar")]
        if not members:
            raise FormatError("no data.tar member in the package", None, what)
        if len(members) > 1:
            raise FormatError(f"{len(members)} data.tar members in the package", None, what)
        m = members[0]
        raw = io.BufferedReader(_Slice(f, m.offset, m.size), 1 << 16)
        try:
            if m.name == "data.tar":
                stream = raw
            elif m.name == "data.tar.xz":
                stream = lzma.LZMAFile(raw)
            elif m.name == "data.tar.gz":
                stream = gzip.GzipFile(fileobj=raw, mode="rb")
            elif m.name == "data.tar.zst":
                import zstandard
                stream = zstandard.ZstdDecompressor().stream_reader(raw)
            else:
                raise FormatError(f"unsupported data member {m.name}", m.offset, what,
                                  "expected data.tar, data.tar.xz, data.tar.gz or data.tar.zst")
            capped = io.BufferedReader(_Capped(stream, m.name, what), 1 << 16)
            tar = tarfile.open(fileobj=capped, mode="r|")
            yield tar, m.name
        except FormatError:
            raise
        except _decompressor_errors() as e:
            raise FormatError(f"corrupt {m.name} ({type(e).__name__}: {e})".replace("\n", " "),
                              None, what) from None


def _member_path(name: str, data_member: str, what: str) -> str:
    """A tar member name as a path inside the package (``./usr/x`` -> ``usr/x``); names that
    are absolute or climb out of the package with ``..`` are refused."""
    if name.startswith("/") or ".." in name.split("/"):
        raise FormatError(f"{data_member} member {name!r} lies outside the package (absolute or "
                          "'../' path)", None, what)
    path = posixpath.normpath(name)
    return "." if path in ("", ".") else path


@dataclass(frozen=True)
class _Entry:
    kind: str       # "file", "symlink", "hardlink", "other"
    link: str       # link target (symlinks, hard links)
    size: int


def _scan(deb_path: Path, what: str, want: str | None = None, limit: int = 0,
          kind: str = "file") -> tuple[dict[str, _Entry], bytes | None, str]:
    """One streaming pass over data.tar: the index of every member, and the bytes of member
    ``want`` when it is a regular file (capped at ``limit``)."""
    index: dict[str, _Entry] = {}
    found: bytes | None = None
    with _data_tar(deb_path, what) as (tar, data_member):
        for m in tar:
            path = _member_path(m.name, data_member, what)
            if m.issym():
                entry = _Entry("symlink", m.linkname, 0)
            elif m.islnk():
                entry = _Entry("hardlink", m.linkname, 0)
            elif m.isfile():
                entry = _Entry("file", "", m.size)
            else:
                entry = _Entry("other", "", 0)
            index[path] = entry
            if path == want and entry.kind == "file":
                if m.size > limit:
                    raise CCBuildError(f"member {want!r} is too large for a {kind} ({m.size} "
                                       f"bytes, limit {limit})", what)
                fobj = tar.extractfile(m)
                data = fobj.read(m.size) if fobj is not None else b""
                if len(data) != m.size:
                    raise FormatError(f"member {want!r} is truncated in {data_member}", None,
                                      what)
                found = data
    return index, found, data_member


def _resolve(index: dict[str, _Entry], member: str, path: str, what: str) -> str:
    """Follow symlinks and hard links from ``path`` to a regular file inside the package."""
    link = None  # the last link followed
    for _ in range(_MAX_SYMLINK_HOPS):
        entry = index.get(path)
        if entry is None:
            if path == posixpath.normpath(member.lstrip("/")):
                near = sorted(n for n in index if posixpath.basename(n) == posixpath.basename(path))
                hint = f"did you mean {near[0]}?" if near else "list it with 'dpkg-deb -c'"
                raise CCBuildError(f"no member {member!r} in the package", what, hint)
            via = "" if link == member.lstrip("/") else f" (reached from {member!r})"
            raise CCBuildError(f"link {link!r}{via} points to {path!r}, which is not in the "
                               "package", what)
        if entry.kind == "file":
            return path
        if entry.kind == "other":
            raise CCBuildError(f"member {member!r} is not a regular file", what)
        if entry.kind == "symlink" and not entry.link.startswith("/"):
            target = posixpath.join(posixpath.dirname(path), entry.link)
        else:  # absolute symlink (package root) or hard link (named from the archive root)
            target = entry.link.lstrip("/").removeprefix("./")
        target = posixpath.normpath(target)
        if target == ".." or target.startswith("../"):
            raise CCBuildError(f"member {path!r} links to {entry.link!r}, outside the package",
                               what)
        link, path = path, target
    raise CCBuildError(f"symlink loop at member {member!r}", what)


def deb_member(deb_path: Path, member: str, what: str | None = None,
               kind: str = "file") -> bytes:
    """The bytes of file ``member`` (e.g. ``usr/share/ovmf/OVMF.fd``) inside a .deb, at most
    the cap of ``kind`` (builder.inputs.LIMITS); symlinks inside the package are followed."""
    what = what or deb_path.name
    limit = LIMITS.get(kind, LIMITS["file"])
    want = posixpath.normpath(member.lstrip("/"))
    index, data, _ = _scan(deb_path, what, want, limit, kind)
    path = _resolve(index, member, want, what)
    if path == want and data is not None:
        return data
    _, data, _ = _scan(deb_path, what, path, limit, kind)
    if data is None:  # the archive changed between the passes
        raise CCBuildError(f"member {path!r} vanished while the package was read", what)
    return data



# -- source packages ---------------------------------------------------------------------------
def fetch_source(store: Store, package: str, version: str, suite: str,
                 sha256s: dict[str, str] | None = None, offline: bool = False
                 ) -> dict[str, Path]:
    """The tarballs of a Debian source package (orig, debian; the .dsc is optional), verified
    against the signed Sources index and against ``sha256s`` when pinned."""
    key = deb_ref_key(package, version, suite)
    ref = store.get_ref("debian-src", key)
    if ref is None and offline:
        raise CCBuildError("source package not in the store and --offline is set",
                           f"{package}_{version}", "run once without --offline")
    if ref is None:
        apt = Apt(store, suite)
        apt.update()
        work = store.tmpdir()
        try:
            cp = apt.get("source", "--print-uris", f"{package}={version}", cwd=work, check=False)
            if cp.returncode != 0:
                apt.update(force=True)
                cp = apt.get("source", "--print-uris", f"{package}={version}", cwd=work,
                             check=False)
            uris = re.findall(r"^'([^']+)' (\S+) (\d+) SHA256:([0-9a-f]{64})",
                              cp.stdout.decode(errors="replace"), re.M)
            if cp.returncode != 0 or not uris:
                raise _not_served("source package", package, version, suite)
            files: dict[str, str] = {}
            for uri, name, _size, digest in uris:
                if name.endswith(".dsc"):
                    continue  # tarballs carry everything we build from
                if not store.has(digest):
                    log.info(f"apt: downloading {name}")
                    run(["/usr/lib/apt/apt-helper", "download-file", uri, str(work / name),
                         f"SHA256:{digest}"], log_path=apt.log, what=f"download {name}")
                    store.put_file(work / name, digest, name)
                files[name] = digest
        finally:
            _rmtree(work)
        ref = {"files": files, "package": package, "version": version, "suite": suite}
        store.set_ref("debian-src", key, ref)
    out = {}
    for name, digest in ref["files"].items():
        pinned = (sha256s or {}).get(name)
        if pinned and pinned != digest:
            raise CCBuildError(f"sha256 mismatch: archive has {digest}, pinned {pinned}", name,
                               "re-pin with 'ccbuild lock RECIPE'")
        out[name] = store.verified_path(digest, name)
    for name in (sha256s or {}):
        if name not in out:
            raise CCBuildError("pinned file is not part of the source package", name)
    return out


def _rmtree(p: Path) -> None:
    import shutil
    shutil.rmtree(p, ignore_errors=True)
