"""`ccbuild lock RECIPE`: re-resolve the recipe's Debian pins against what the mirror serves now.

A Debian mirror serves only current versions: a stable point release replaces ``+debNNuM``
packages and a kernel ABI bump renames the kernel package itself. ``lock`` finds, for every
Debian pin of a recipe (and of the EDK2 descriptor it builds), whether the pinned version is still
served; if not, the newest version of the same package, or, for a renamed package such as
``linux-image-6.12.117+deb13-cloud-amd64``, the newest package of the same name pattern (only the
numbers may change). It downloads the replacement, checks the member exists, and with ``--write``
rewrites version, package, member and sha256 in place (comments and layout are kept: only the
scalar values' text spans are replaced).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

import yaml

from builder.errors import CCBuildError
from builder.sources.debian import Apt, deb_member, fetch_deb, fetch_source
from builder.store import Store, atomic_write


@dataclass(frozen=True)
class Change:
    file: str           # the YAML file (as the user named it)
    path: str           # YAML path of the pin, e.g. kernel.source
    old: dict
    new: dict

    def line(self) -> str:
        diffs = [f"{k} {self.old.get(k)} -> {self.new[k]}" for k in sorted(self.new)
                 if self.new[k] != self.old.get(k)]
        return f"{self.file}: {self.path}: " + ("; ".join(diffs) if diffs else "up to date")


def _vercmp(a: str, b: str) -> int:
    if a == b:
        return 0
    r = subprocess.run(["dpkg", "--compare-versions", a, "lt", b])
    return -1 if r.returncode == 0 else 1


def newest(versions: list[str]) -> str:
    return sorted(versions, key=cmp_to_key(_vercmp))[-1]


def name_pattern(package: str) -> re.Pattern:
    """The package name with every number free: linux-image-6.12.117+deb13-cloud-amd64 ->
    linux-image-6.12.N+debN-cloud-amd64 (major.minor kept: a 6.12 pin stays on 6.12)."""
    m = re.match(r"^(\D*\d+\.\d+)(.*)$", package)
    head, tail = (m[1], m[2]) if m else ("", package)
    parts = re.split(r"(\d+)", tail)
    rx = re.escape(head) + "".join(r"\d+" if p.isdigit() else re.escape(p) for p in parts)
    return re.compile(f"^{rx}$")


def _core(package: str) -> str:
    """The part of a package name from its first digit on (what file names inside repeat)."""
    m = re.search(r"\d", package)
    return package[m.start():] if m else ""


def resolve_current(store: Store, package: str, version: str, suite: str,
                    member: str | None) -> dict:
    """The pin as the mirror serves it now: {debian, version, member, sha256}."""
    apt = Apt(store, suite)
    apt.update(force=True)
    if version in apt.versions(package):
        new_pkg, new_ver = package, version
    else:
        served = apt.versions(package)
        if served:
            new_pkg, new_ver = package, newest(served)
        else:
            rx = name_pattern(package)
            prefix = package[:max(1, len(package) - len(_core(package)))]
            names = [n for n in apt.cache("pkgnames", prefix).split() if rx.match(n)]
            cands = [(n, v) for n in names for v in apt.versions(n)]
            if not cands:
                raise CCBuildError(f"no package like {package} in {suite}", package,
                                   "pin another package by hand, or give the file by 'path'")
            best = newest([v for _, v in cands])
            new_pkg = sorted(n for n, v in cands if v == best)[-1]
            new_ver = best
    deb, digest = fetch_deb(store, new_pkg, new_ver, suite)
    new_member = member
    if member and new_pkg != package and _core(package):
        new_member = member.replace(_core(package), _core(new_pkg))
    if new_member:
        deb_member(deb, new_member)  # raises when the member is gone
    out = {"debian": new_pkg, "version": new_ver, "sha256": digest}
    if member:
        out["member"] = new_member
    return out


# -- rewriting YAML scalars in place -----------------------------------------------------------
def _node_at(root: yaml.Node, path: list[str]) -> yaml.Node | None:
    node = root
    for key in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and key.isdigit():
            idx = int(key)
            node = node.value[idx] if idx < len(node.value) else None
        else:
            return None
        if node is None:
            return None
    return node


def rewrite_scalars(text: str, edits: list[tuple[list[str], str]]) -> str:
    """Replace the text of the scalars at the given YAML paths (keys must exist)."""
    root = yaml.compose(text)
    spans = []
    for path, value in edits:
        node = _node_at(root, path)
        if not isinstance(node, yaml.ScalarNode):
            raise CCBuildError("cannot rewrite: no scalar at " + ".".join(path))
        spans.append((node.start_mark.index, node.end_mark.index, value))
    for start, end, value in sorted(spans, reverse=True):
        text = text[:start] + value + text[end:]
    return text


def _pins(raw: dict) -> list[tuple[list[str], dict]]:
    """(yaml path, source mapping) of every Debian pin in a raw recipe."""
    out = []
    for path in (["firmware", "source"], ["kernel", "source"], ["kernel", "build", "source"],
                 ["agent", "source"]):
        node = raw
        for k in path:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get("debian"):
            out.append((path, node))
    for i, f in enumerate(((raw.get("initrd") or {}).get("files") or [])):
        src = f.get("source") if isinstance(f, dict) else None
        if isinstance(src, dict) and src.get("debian"):
            out.append((["initrd", "files", str(i), "source"], src))
    return out


def lock_recipe(recipe: Path, store: Store, write: bool, display: str | None = None
                ) -> list[Change]:
    shown = display or str(recipe)
    text = recipe.read_text()
    raw = yaml.safe_load(text) or {}
    changes: list[Change] = []
    edits: list[tuple[list[str], str]] = []
    for path, src in _pins(raw):
        new = resolve_current(store, src["debian"], str(src.get("version")), src["suite"],
                              src.get("member"))
        old = {k: src.get(k) for k in new}
        changes.append(Change(shown, ".".join(path), old, new))
        for k, v in new.items():
            if old.get(k) != v:
                if k not in src:
                    raise CCBuildError(f"{shown}: {'.'.join(path)}.{k}: add the key, then lock")
                edits.append((path + [k], v))
    fw = (raw.get("firmware") or {}).get("build")
    if isinstance(fw, str):
        desc = recipe.parent / fw
        changes += lock_descriptor(desc, store, write, display=fw)
    if write and edits:
        atomic_write(recipe, rewrite_scalars(text, edits).encode())
    return changes


def lock_descriptor(desc: Path, store: Store, write: bool, display: str) -> list[Change]:
    """An EDK2 descriptor's source package: if the pinned version is gone, the newest served
    one; its tarball pins are rewritten and the output pin cleared (the build re-measures it)."""
    text = desc.read_text()
    raw = yaml.safe_load(text) or {}
    src = raw.get("source") or {}
    apt = Apt(store, src["suite"])
    apt.update(force=True)
    served = apt.source_versions(src["package"])
    if str(src["version"]) in served:
        return [Change(display, "source", {"version": src["version"]},
                       {"version": src["version"]})]
    if not served:
        raise CCBuildError(f"source package {src['package']} is not served in {src['suite']}",
                           display)
    new_ver = newest(served)
    files = fetch_source(store, src["package"], new_ver, src["suite"])
    from builder.store import sha256_file
    new_files = {n: sha256_file(p) for n, p in sorted(files.items())}
    ch = Change(display, "source", {"version": src["version"], "files": src.get("files")},
                {"version": new_ver, "files": new_files})
    if write:
        root = yaml.compose(text)
        files_node = _node_at(root, ["source", "files"])
        ver_node = _node_at(root, ["source", "version"])
        indent = " " * files_node.start_mark.column
        block = "\n".join(f"{indent}{n}: {d}" if i else f"{n}: {d}"
                          for i, (n, d) in enumerate(new_files.items()))
        spans = [(files_node.start_mark.index, files_node.end_mark.index, block + "\n"),
                 (ver_node.start_mark.index, ver_node.end_mark.index, new_ver)]
        sha_node = _node_at(root, ["sha256"])
        if isinstance(sha_node, yaml.ScalarNode):
            spans.append((sha_node.start_mark.index, sha_node.end_mark.index, "null"))
        for start, end, value in sorted(spans, reverse=True):
            text = text[:start] + value + text[end:]
        atomic_write(desc, text.encode())
    return [ch]
