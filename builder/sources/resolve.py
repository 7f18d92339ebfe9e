"""Resolve a recipe ``Source`` (debian | path | url) to verified bytes and a manifest record."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
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

    @property
    def data_sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def record(self, role: str) -> dict:
        rec = {"role": role, "kind": self.kind, "name": self.name, "version": self.version,
               "sha256": self.sha256}
        if self.data_sha256 != self.sha256:
            rec["file_sha256"] = self.data_sha256
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
        deb, digest = fetch_deb(opts.store, src.debian, src.version, src.suite, src.sha256,
                                offline=opts.offline)
        key = f"{digest}:{src.member}"
        ref = opts.store.get_ref("deb-member", key)
        if ref and opts.store.has(ref["sha256"]):
            data = opts.store.get_bytes(ref["sha256"], f"{src.debian}:{src.member}")
        else:
            data = deb_member(deb, src.member, what=f"{src.debian}_{src.version}.deb")
            opts.store.set_ref("deb-member", key, {"sha256": opts.store.put_bytes(data)})
        return Resolved("debian", src.debian, src.version, digest, data)
    if src.path:
        from builder.sources.path import read_path
        p = _confined(src, opts, where)
        data = read_path(p, src.sha256, f"{where}.path: {src.path}")
        return Resolved("path", Path(src.path).name, "", hashlib.sha256(data).hexdigest(), data)
    from builder.sources.url import fetch_url
    data = fetch_url(opts.store, src.url, src.sha256, offline=opts.offline, where=where)
    return Resolved("url", src.url, "", src.sha256, data)


def _confined(src: Source, opts: ResolveOptions, where: str) -> Path:
    """A ``path:`` source's file, through the recipe's confinement rule (LoadedRecipe.resolve);
    without a recipe, the same rule with ``opts.base`` as the recipe's directory."""
    field = f"{where.split(': ')[-1]}.path"
    lr = opts.recipe
    if lr is None:
        lr = LoadedRecipe(None, Path(opts.base).resolve() / "recipe.yaml", "", "", b"")
    return lr.resolve(src.path, field, pinned=bool(src.sha256))
