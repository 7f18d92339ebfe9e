"""manifest.json and SHA256SUMS: what went in, what came out. No paths, no clocks."""

from __future__ import annotations

import hashlib
import json

from builder import __version__
from builder.errors import CCBuildError

MANIFEST_SCHEMA = "ccbuild-manifest/1"


def dumps(obj, name: str | None = None) -> bytes:
    """Canonical JSON for every file we write: sorted keys, 2-space indent, final newline,
    UTF-8. Every string goes through json.dumps; a value JSON or UTF-8 cannot carry (a lone
    surrogate, a NaN, a non-string key) is a one-line error naming its path (and ``name``, the
    file)."""
    bad = unencodable(obj)
    if bad:
        path, why = bad
        raise CCBuildError(f"{path or '(top)'} cannot be written as JSON: {why}", name,
                           "use UTF-8 text (file names and recipe values)")
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
            + "\n").encode()


def unencodable(obj, path: str = "") -> tuple[str, str] | None:
    """(path, reason) of the first value of ``obj`` that strict UTF-8 JSON cannot carry."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError as e:
            return path, (f"not valid Unicode (lone surrogate U+{ord(obj[e.start]):04X} at "
                          f"character {e.start})")
        return None
    if isinstance(obj, float):
        return None if obj == obj and obj not in (float("inf"), float("-inf")) else \
            (path, f"{obj} is not a JSON number")
    if obj is None or isinstance(obj, (bool, int)):
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                return path, f"key {k!r} is not a string"
            sub = f"{path}.{k}" if path else k
            bad = unencodable(k, sub) or unencodable(v, sub)
            if bad:
                return bad
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad = unencodable(v, f"{path}[{i}]")
            if bad:
                return bad
        return None
    return path, f"a {type(obj).__name__} is not a JSON value"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Digests:
    """SHA-256 (hex) of byte strings, each computed once: one build digests its kernel and
    firmware for the chain, the manifest, SHA256SUMS and the provenance subjects, and a kernel is
    ~12 MB. Keyed by the object (``bytes`` are immutable; the memo holds a reference, so an id is
    never reused while it is remembered); any other type is hashed every time."""

    def __init__(self) -> None:
        self._memo: dict[int, tuple[bytes, str]] = {}

    def __call__(self, data: bytes) -> str:
        if type(data) is not bytes:
            return sha256_hex(data)
        hit = self._memo.get(id(data))
        if hit is not None and hit[0] is data:
            return hit[1]
        digest = sha256_hex(data)
        self._memo[id(data)] = (data, digest)
        return digest


def output_record(name: str, data: bytes, sha256=sha256_hex) -> dict:
    return {"path": name, "sha256": sha256(data), "size": len(data)}


def make_manifest(*, name: str, platform: str, recipe_sha256: str, recipe_digest: str,
                  source_date_epoch: int, inputs: list[dict], outputs: dict[str, bytes],
                  chain: dict, build_key: str, boot: dict, sha256=sha256_hex) -> dict:
    return {
        "schema": MANIFEST_SCHEMA,
        "tool": {"name": "ccbuild", "version": __version__},
        "recipe": {"name": name, "platform": platform, "sha256": recipe_sha256,
                   "digest": recipe_digest},
        "source_date_epoch": source_date_epoch,
        "build_key": build_key,
        "inputs": inputs,
        "outputs": [output_record(n, outputs[n], sha256) for n in sorted(outputs)],
        "chain": chain,
        "boot": boot,
    }


def sha256sums(files: dict[str, bytes], sha256=sha256_hex) -> bytes:
    """``sha256sum``-compatible lines, sorted by name (``sha256``: e.g. a build's
    :class:`Digests`)."""
    return "".join(f"{sha256(files[n])}  {n}\n" for n in sorted(files)).encode()
