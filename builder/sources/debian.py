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
import lzma
import os
import posixpath
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from builder import log
from builder.errors import CCBuildError
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


def fetch_deb(store: Store, package: str, version: str, suite: str, sha256: str | None = None,
              offline: bool = False) -> tuple[Path, str]:
    """The .deb of ``package=version`` from ``suite``, in the store, verified. Returns (path, sha256)."""
    what = f"{package}_{version}.deb"
    key = deb_ref_key(package, version, suite)
    ref = store.get_ref("debian-deb", key)
    if ref and sha256 and ref["sha256"] != sha256:
        raise CCBuildError(f"sha256 mismatch: the archive served {ref['sha256']}, pinned {sha256}",
                           what, "the package was rebuilt or the pin is wrong; re-pin with "
                           "'ccbuild lock RECIPE'")
    if ref and store.has(ref["sha256"]):
        return store.verified_path(ref["sha256"], what), ref["sha256"]
    if sha256 and store.has(sha256):
        return store.verified_path(sha256, what), sha256
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


def _ar_members(data: bytes, what: str) -> dict[str, bytes]:
    if not data.startswith(b"!<arch>\n"):
        raise CCBuildError("not a Debian package (no ar header)", what)
    pos, out = 8, {}
    while pos + 60 <= len(data):
        hdr = data[pos:pos + 60]
        name = hdr[:16].decode(errors="replace").strip().rstrip("/")
        try:
            size = int(hdr[48:58].decode().strip())
        except ValueError:
            raise CCBuildError("corrupt ar header", f"{what} offset 0x{pos:x}") from None
        out[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    return out


def _data_tar(deb: bytes, what: str) -> tarfile.TarFile:
    members = _ar_members(deb, what)
    for name, payload in members.items():
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                import zstandard
                payload = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload)).read()
            elif name.endswith(".xz"):
                payload = lzma.decompress(payload)
            elif name.endswith(".gz"):
                import gzip
                payload = gzip.decompress(payload)
            return tarfile.open(fileobj=io.BytesIO(payload), mode="r:")
    raise CCBuildError("no data.tar member", what)


def deb_member(deb_path: Path, member: str, what: str | None = None) -> bytes:
    """The bytes of file ``member`` (e.g. ``usr/share/ovmf/OVMF.fd``) inside a .deb; symlinks
    inside the package are followed."""
    what = what or deb_path.name
    tar = _data_tar(deb_path.read_bytes(), what)
    index = {posixpath.normpath(m.name.lstrip("./")) if m.name not in (".", "./") else ".": m
             for m in tar.getmembers()}
    path = posixpath.normpath(member.lstrip("/"))
    for _ in range(16):
        m = index.get(path)
        if m is None:
            near = sorted(n for n in index if posixpath.basename(n) == posixpath.basename(path))
            hint = f"did you mean {near[0]}?" if near else "list it with 'dpkg-deb -c'"
            raise CCBuildError(f"no member {member!r} in the package", what, hint)
        if m.issym():
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), m.linkname)
                                      if not m.linkname.startswith("/") else m.linkname.lstrip("/"))
            continue
        if not m.isfile():
            raise CCBuildError(f"member {member!r} is not a regular file", what)
        return tar.extractfile(m).read()
    raise CCBuildError(f"symlink loop at member {member!r}", what)


def deb_members(deb_path: Path) -> list[str]:
    tar = _data_tar(deb_path.read_bytes(), deb_path.name)
    return sorted(m.name.lstrip("./") for m in tar.getmembers() if m.isfile() or m.issym())


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
