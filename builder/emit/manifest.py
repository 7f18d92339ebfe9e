"""manifest.json and SHA256SUMS: what went in, what came out. No paths, no clocks."""

from __future__ import annotations

import hashlib
import json

from builder import __version__

MANIFEST_SCHEMA = "ccbuild-manifest/1"


def dumps(obj) -> bytes:
    """Canonical JSON for every file we write: sorted keys, 2-space indent, final newline."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def output_record(name: str, data: bytes) -> dict:
    return {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def make_manifest(*, name: str, platform: str, recipe_sha256: str, recipe_digest: str,
                  source_date_epoch: int, inputs: list[dict], outputs: dict[str, bytes],
                  chain: dict, build_key: str, boot: dict) -> dict:
    return {
        "schema": MANIFEST_SCHEMA,
        "tool": {"name": "ccbuild", "version": __version__},
        "recipe": {"name": name, "platform": platform, "sha256": recipe_sha256,
                   "digest": recipe_digest},
        "source_date_epoch": source_date_epoch,
        "build_key": build_key,
        "inputs": inputs,
        "outputs": [output_record(n, outputs[n]) for n in sorted(outputs)],
        "chain": chain,
        "boot": boot,
    }


def sha256sums(files: dict[str, bytes]) -> bytes:
    """``sha256sum``-compatible lines, sorted by name."""
    return "".join(f"{hashlib.sha256(files[n]).hexdigest()}  {n}\n"
                   for n in sorted(files)).encode()
