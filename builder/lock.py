"""`ccbuild lock RECIPE`: re-resolve the recipe's Debian pins against what the mirror serves now.

A Debian mirror serves only current versions: a stable point release replaces ``+debNNuM``
packages and a kernel ABI bump renames the kernel package itself. ``lock`` finds, for every
Debian pin of a recipe (and of the EDK2 descriptor it builds), whether the pinned version is still
served; if not, the newest version of the same package, or, for a renamed package such as
``linux-image-6.12.117+deb13-cloud-amd64``, the newest package of the same name pattern (only the
numbers may change). It downloads the replacement, checks the member exists, and with ``--write``
rewrites version, package, member and sha256 in place (comments and layout are kept: only the
scalar values' text spans are replaced).

Hostile recipes: the recipe is validated first (``load_recipe``: the one YAML loader, the
schema), the descriptor is found through ``LoadedRecipe.resolve`` (confined like a build's) and
validated (``load_descriptor``), so every mistake is a one-line error before anything is
fetched. ``--write`` replaces only the recipe file it was given (never through a symlink) and the
descriptor it names, each atomically.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

import yaml

from builder.errors import CCBuildError
from builder.inputs import decode_utf8, read_regular
from builder.safeyaml import load_yaml
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


def _pins(recipe) -> list[tuple[list[str], dict]]:
    """(yaml path, pin fields) of every Debian pin of a validated recipe."""
    r = recipe
    out = []
    cands = [(["firmware", "source"], r.firmware.source), (["kernel", "source"], r.kernel.source),
             (["kernel", "build", "source"],
              r.kernel.build.source if r.kernel.build is not None else None),
             (["agent", "source"], r.agent.source)]
    cands += [(["initrd", "files", str(i), "source"], f.source)
              for i, f in enumerate(r.initrd.files)]
    if r.rootfs is not None:
        cands += [(["rootfs", "files", str(i), "source"], f.source)
                  for i, f in enumerate(r.rootfs.files)]
    for path, src in cands:
        if src is not None and src.debian:
            out.append((path, {k: getattr(src, k) for k in
                               ("debian", "version", "suite", "member", "sha256")}))
    return out


def _raw_at(raw, path: list[str]):
    node = raw
    for k in path:
        if isinstance(node, dict):
            node = node.get(k)
        elif isinstance(node, list) and k.isdigit() and int(k) < len(node):
            node = node[int(k)]
        else:
            return None
    return node


def _writable(path: Path, shown: str) -> None:
    """--write replaces exactly this file: a regular file, not a symlink."""
    if path.is_symlink() or not path.is_file():
        raise CCBuildError("--write replaces only a regular file, not a symlink or anything else",
                           shown, "run lock --write on the file itself")


def lock_recipe(recipe: Path, store: Store, write: bool, display: str | None = None
                ) -> list[Change]:
    from builder.recipe import RecipeError, load_recipe
    shown = display or str(recipe)
    recipe = Path(recipe)
    lr = load_recipe(recipe, display=shown)    # validated: hostile recipes stop here
    text = decode_utf8(lr.text, "recipe", shown)
    raw = load_yaml(text, shown, RecipeError) or {}
    if write:
        _writable(recipe, shown)
    desc = None
    if lr.recipe.firmware.build:
        desc = lr.resolve(lr.recipe.firmware.build, "firmware.build")   # confined, as in a build
    changes: list[Change] = []
    edits: list[tuple[list[str], str]] = []
    for path, src in _pins(lr.recipe):
        new = resolve_current(store, src["debian"], str(src["version"]), src["suite"],
                              src.get("member"))
        old = {k: src.get(k) for k in new}
        changes.append(Change(shown, ".".join(path), old, new))
        node = _raw_at(raw, path)
        for k, v in new.items():
            if old.get(k) != v:
                if not isinstance(node, dict) or k not in node:
                    raise CCBuildError(f"{shown}: {'.'.join(path)}.{k}: add the key, then lock")
                edits.append((path + [k], v))
    if desc is not None:
        changes += lock_descriptor(desc, store, write, display=lr.recipe.firmware.build)
    if write and edits:
        new_text = rewrite_scalars(text, edits)
        load_recipe_text_check(new_text, shown)
        atomic_write(recipe, new_text.encode(), mode=recipe.stat().st_mode & 0o7777)
    return changes


def load_recipe_text_check(text: str, shown: str) -> None:
    """The rewritten text still parses (a rewrite never produces a broken recipe)."""
    from builder.recipe import RecipeError
    load_yaml(text, shown, RecipeError)


def lock_descriptor(desc: Path, store: Store, write: bool, display: str) -> list[Change]:
    """An EDK2 descriptor's source package: if the pinned version is gone, the newest served
    one; its tarball pins are rewritten and the output pin cleared (the build re-measures it)."""
    from builder.stages.firmware import load_descriptor
    d = load_descriptor(desc, display)          # validated: hostile descriptors stop here
    text = decode_utf8(read_regular(desc, "firmware descriptor", display),
                       "firmware descriptor", display)
    pin = d.source
    apt = Apt(store, pin.suite)
    apt.update(force=True)
    served = apt.source_versions(pin.package)
    if str(pin.version) in served:
        return [Change(display, "source", {"version": pin.version}, {"version": pin.version})]
    if not served:
        raise CCBuildError(f"source package {pin.package} is not served in {pin.suite}", display)
    new_ver = newest(served)
    files = fetch_source(store, pin.package, new_ver, pin.suite)
    from builder.store import sha256_file
    new_files = {n: sha256_file(p) for n, p in sorted(files.items())}
    ch = Change(display, "source", {"version": pin.version, "files": pin.files},
                {"version": new_ver, "files": new_files})
    if write:
        _writable(desc, display)
        root = yaml.compose(text)
        files_node = _node_at(root, ["source", "files"])
        ver_node = _node_at(root, ["source", "version"])
        if not isinstance(files_node, yaml.MappingNode) or \
                not isinstance(ver_node, yaml.ScalarNode):
            raise CCBuildError("cannot rewrite: source.files must be a block mapping and "
                               "source.version a scalar", display)
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
        atomic_write(desc, text.encode(), mode=desc.stat().st_mode & 0o7777)
    return [ch]
