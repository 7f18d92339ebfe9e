"""``ccbuild verify --rebuild RECIPE OUT``: build the recipe again into a fresh directory (own
cache unless shared) and compare byte for byte; an initrd difference names the first differing
cpio member and field, a JSON difference the first differing key."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zlib
from pathlib import Path

from builder.build import BuildOptions, build
from builder.errors import CCBuildError
from builder.formats import cpio
from builder.outschema import parse_json
from builder.stages.initrd import diff_initrds
from builder.verify.measurements import recompute_measurements
from builder.verify.out import SIGNATURE_FILE, OutDir, sha256_stream, check_hashes, load_out
from builder.verify.report import FAIL, INFO, OK, Check, Verdict


def _lenient_gunzip(data: bytes) -> bytes | None:
    """Best-effort inflate of a damaged gzip member (no CRC check), to name what changed."""
    if data[:3] != b"\x1f\x8b\x08" or data[3] != 0:
        return None
    d = zlib.decompressobj(-15)
    try:
        return d.decompress(data[10:])
    except zlib.error:
        return None


def diff_initrd(expected: bytes, actual: bytes) -> str:
    d = diff_initrds(expected, actual) or "identical"
    if "cannot be read" in d:
        a, b = _lenient_gunzip(expected), _lenient_gunzip(actual)
        if a is not None and b is not None:
            try:
                inner = cpio.diff_archives(a, b)
            except CCBuildError:
                inner = None
            if inner:
                d += f"; inflating without the CRC check: {inner}"
    return d


def _json_diff(a, b, path: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{path or '(top)'}: {json.dumps(a)[:80]} vs {json.dumps(b)[:80]}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: present only in the " + ("rebuilt" if k in b else "given")
            d = _json_diff(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _json_diff(x, y, f"{path}[{i}]")
            if d:
                return d
        if len(a) != len(b):
            return f"{path}: {len(a)} items vs {len(b)}"
        return None
    return None if a == b else f"{path or '(top)'}: {json.dumps(a)[:100]} vs {json.dumps(b)[:100]}"


def _json_or_none(data: bytes | None):
    if data is None:
        return None
    try:
        return parse_json(data, "OUT")
    except CCBuildError:
        return None


def explain_difference(name: str, given: bytes, rebuilt: bytes) -> str:
    if name == "initrd.img":
        return diff_initrd(rebuilt, given)
    if name.endswith(".json"):
        a, b = _json_or_none(given), _json_or_none(rebuilt)
        if a is not None and b is not None:
            d = _json_diff(a, b)
            if d:
                return f"first difference at {d}"
        elif a is None:
            return "the given file is not valid JSON"
    first = next((i for i, (x, y) in enumerate(zip(given, rebuilt)) if x != y),
                 min(len(given), len(rebuilt)))
    return f"first differing byte at offset 0x{first:x} (sizes {len(given)} vs {len(rebuilt)})"


def compare_files(out: OutDir, rebuilt: dict[str, bytes]) -> list[Check]:
    """Every file of OUT against the rebuild, by SHA-256 (OUT is streamed); a difference reads
    OUT's file (under the artifact caps) to name the first difference."""
    rows = []
    given = out.entries
    for name in sorted((set(given) | set(rebuilt)) - {SIGNATURE_FILE}):
        item = f"rebuild {name}"
        e = given.get(name)
        if e is None:
            rows.append(Check(item, FAIL, "produced by the rebuild, missing from OUT"))
        elif name not in rebuilt:
            rows.append(Check(item, FAIL, "in OUT, not produced by the rebuild"))
        elif e.kind != "file":
            rows.append(Check(item, FAIL, f"in OUT it is {e.kind}, not a regular file"))
        else:
            want = hashlib.sha256(rebuilt[name]).hexdigest()
            digest = e.sha256 or sha256_stream(out.path / name, str(out.path / name))[0]
            if digest == want:
                rows.append(Check(item, OK, f"identical ({e.size} bytes)"))
                continue
            try:
                data = out.read(name, "initrd")       # 2 GiB: enough to explain, bounded
                why = explain_difference(name, data, rebuilt[name])
            except CCBuildError as err:
                why = f"differs ({err.what})"
            rows.append(Check(item, FAIL, why, want, digest))
    return rows


def rebuild_and_compare(recipe: str | Path, out_path: str | Path, share_cache: bool = False,
                        overrides: tuple[str, ...] = (), offline: bool = False,
                        jobs: int = 0, store_root: Path | None = None,
                        allow_outside: bool = False) -> Verdict:
    """Rebuild ``recipe`` into a fresh temporary directory (with a fresh store unless
    ``share_cache``) and compare every file with OUT, after OUT's own checks.
    ``allow_outside``: the recipe's paths may leave its directory (``--allow-outside``)."""
    out = load_out(out_path)
    v = Verdict(f"verify --rebuild {Path(recipe).name} against {out.path.name}")
    v.add(*check_hashes(out))
    v.add(*recompute_measurements(out))
    tmp = Path(tempfile.mkdtemp(prefix="ccbuild-verify-"))
    try:
        store = store_root if share_cache else tmp / "cache"
        res = build(recipe, BuildOptions(out=tmp / "out", overrides=tuple(overrides),
                                         offline=offline, store_root=store, jobs=jobs,
                                         allow_outside=allow_outside,
                                         recheck=True, keep_record=False))
        v.add(Check("rebuild", INFO, "with the shared cache" if share_cache
                    else "with a fresh, empty cache (every input fetched and built again)"))
        v.add(*compare_files(out, res.files))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return v
