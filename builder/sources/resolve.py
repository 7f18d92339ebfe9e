"""Resolve a recipe ``Source`` (debian | path | url) to verified bytes and a manifest record."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from builder.errors import CCBuildError
from builder.recipe import LoadedRecipe, Source
from builder.store import Store


@dataclass(frozen=True)
class Resolved:
    kind: str          # debian | path | url | build
    name: str          # package name, file name or URL
    version: str       # Debian version, or "" for files
    sha256: str        # the pinned object's sha256 (the .deb for debian, else the file)
    data: bytes        # the file's bytes (the member, for debian)

    @cached_property
    def data_sha256(self) -> str:   # computed once (a kernel is ~12 MB)
        return hashlib.sha256(self.data).hexdigest()

    def record(self, role: str, sha256=None) -> dict:
        """The manifest's input record (``sha256``: a function digesting ``data``, e.g. a
        build's memo; default :attr:`data_sha256`)."""
        rec = {"role": role, "kind": self.kind, "name": self.name, "version": self.version,
               "sha256": self.sha256}
        data_sha256 = sha256(self.data) if sha256 is not None else self.data_sha256
        if data_sha256 != self.sha256:
            rec["file_sha256"] = data_sha256
        return rec


@dataclass(frozen=True)
class ResolveOptions:
    store: Store
    base: Path            # the recipe's directory
    offline: bool = False
    locked: bool = False
    recipe: LoadedRecipe | None = None   # confines path: sources (LoadedRecipe.resolve)


def resolve(src: Source, opts: ResolveOptions, where: str) -> Resolved:
    """Fetch (or take from the store) and verify one pinned input."""
    if opts.locked and not src.sha256:
        raise CCBuildError("no sha256 pin (--locked)", where)
    if src.debian:
        from builder.sources.debian import deb_member, fetch_deb
        store = opts.store
        # The .deb is verified even when its member comes from the store: the manifest names
        # the .deb's sha256 as the input, and a tampered .deb is refused (tests/test_build.py).
        deb, digest = fetch_deb(store, src.debian, src.version, src.suite, src.sha256,
                                offline=opts.offline)
        member = _member_ref(store, digest, src.member)
        if member is not None:
            data = store.get_bytes(member, f"{src.debian}:{src.member}")
        else:
            data = deb_member(deb, src.member, what=f"{src.debian}_{src.version}.deb")
            store.set_ref("deb-member", f"{digest}:{src.member}", {"sha256": store.put_bytes(data)})
        return Resolved("debian", src.debian, src.version, digest, data)
    if src.path:
        from builder.sources.path import read_path
        p = _confined(src, opts, where)
        data = read_path(p, src.sha256, f"{where}.path: {src.path}")
        return Resolved("path", Path(src.path).name, "", hashlib.sha256(data).hexdigest(), data)
    from builder.sources.url import fetch_url
    data = fetch_url(opts.store, src.url, src.sha256, offline=opts.offline, where=where)
    return Resolved("url", src.url, "", src.sha256, data)


def _member_ref(store: Store, deb_sha256: str, member: str) -> str | None:
    """The sha256 of ``member`` of the .deb ``deb_sha256`` as extracted before, when its blob is
    in the store (a damaged ref is a miss)."""
    ref = store.get_ref("deb-member", f"{deb_sha256}:{member}")
    digest = ref.get("sha256") if ref else None
    return digest if isinstance(digest, str) and store.has(digest) else None


def _confined(src: Source, opts: ResolveOptions, where: str) -> Path:
    """A ``path:`` source's file, through the recipe's confinement rule (LoadedRecipe.resolve);
    without a recipe, the same rule with ``opts.base`` as the recipe's directory."""
    field = f"{where.split(': ')[-1]}.path"
    lr = opts.recipe
    if lr is None:
        lr = LoadedRecipe(None, Path(opts.base).resolve() / "recipe.yaml", "", "", b"")
    return lr.resolve(src.path, field, pinned=bool(src.sha256))
