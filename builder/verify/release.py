"""``ccbuild verify DIST``: a whole release (builder.release) checked as an auditor may trust it.

DIST is hostile: it must be a real directory (never followed through a symlink) holding only the
release's root files and one real directory per recipe the bundle names. Then, recipe by recipe,
every OUT is checked as ``ccbuild verify OUT`` does (hashes, every measurement recomputed) and
its measurements.json and manifest.json are compared with the bundle's entry; the bundle must be
in its canonical form, the RVPS message must decode to every recipe's values, the provenance's
subjects and SHA256SUMS must match every file of DIST, and (with ``--pubkey``) the bundle's
signature must verify. Every failed row names the recipe and the file
(``snp: sha256 firmware.fd: differs from manifest.json``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from builder.emit.manifest import dumps
from builder.emit.rvps import reference_values
from builder.emit.signature import SIGNATURE_NAME
from builder.errors import CCBuildError
from builder.inputs import read_regular
from builder.outschema import Measurements, load_document, parse_json
from builder.release import (
    BUNDLE,
    MAX_RECIPES,
    MEASUREMENT_SECTIONS,
    PROVENANCE,
    ROOT_FILES,
    RVPS,
    SIGNATURE,
    SUMS,
    Release,
    ReleaseOptions,
    bundle_files,
    merge_reference_values,
    release,
)
from builder.verify.measurements import recompute_measurements
from builder.verify.out import check_hashes, load_out, parse_sums, sha256_stream
from builder.verify.rebuild import compare_files, explain_difference
from builder.verify.report import FAIL, INFO, OK, Check, Verdict

MAX_DIST_ENTRIES = MAX_RECIPES + len(ROOT_FILES)
_SUMS_LINE = re.compile(r"([0-9a-f]{64})  ([A-Za-z0-9][A-Za-z0-9._+-]{0,254}"
                        r"(?:/[A-Za-z0-9][A-Za-z0-9._+-]{0,254})?)")


def is_release(path: str | Path) -> bool:
    """``ccbuild verify`` takes ``path`` for a release: it holds a bundle (a DIST that is a
    symlink counts, so that :func:`check_release` refuses it by name)."""
    return os.path.lexists(Path(path) / BUNDLE)


def _where(dist: Path, name: str = "") -> str:
    return str(dist / name) if name else str(dist)


def _scan(dist: Path) -> dict[str, str]:
    """name -> kind ("file", "dir" or what else lstat says) of DIST's entries."""
    from builder.inputs import file_type_name
    try:
        st = os.lstat(dist)
    except OSError as e:
        raise CCBuildError(f"cannot inspect the release directory ({e.strerror})",
                           str(dist)) from None
    if stat.S_ISLNK(st.st_mode):
        raise CCBuildError("the release directory is a symlink; verify does not follow it",
                           str(dist), "give the directory it points to")
    if not stat.S_ISDIR(st.st_mode):
        raise CCBuildError("not a directory", str(dist), "give the DIST of `ccbuild release`")
    out: dict[str, str] = {}
    try:
        with os.scandir(dist) as it:
            for d in it:
                m = d.stat(follow_symlinks=False).st_mode
                out[d.name] = ("file" if stat.S_ISREG(m) else "dir" if stat.S_ISDIR(m)
                               else file_type_name(m))
                if len(out) > MAX_DIST_ENTRIES:
                    raise CCBuildError(f"more than {MAX_DIST_ENTRIES} entries", str(dist),
                                       "not a ccbuild release")
    except OSError as e:
        raise CCBuildError(f"cannot list the release directory ({e.strerror})",
                           str(dist)) from None
    return dict(sorted(out.items()))


def _json_file(dist: Path, name: str, entries: dict[str, str], kind: str = "manifest"):
    """(raw bytes, parsed JSON) of a root file, or a CCBuildError naming it."""
    if entries.get(name) != "file":
        what = "missing" if name not in entries else f"{entries[name]}, not a regular file"
        raise CCBuildError(f"{name} is {what}", _where(dist, name), "not a ccbuild release")
    raw = read_regular(dist / name, kind, _where(dist, name))
    return raw, parse_json(raw, _where(dist, name), name)


def _canon(obj):
    """JSON with absent optional fields left out (as a document compares with its source)."""
    if isinstance(obj, dict):
        return {k: _canon(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_canon(v) for v in obj]
    return obj


def _first_diff(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_diff(x, y, f"{path}[{i}]")
    return path or "(top)"


def _check_recipe(dist: Path, name: str, entry: dict, kind: str | None) -> list[Check]:
    """One OUT: ``ccbuild verify OUT``'s checks, then OUT against the bundle's entry."""
    if kind != "dir":
        what = "missing" if kind is None else f"{kind}, not a directory"
        return [Check(f"{name}: directory", FAIL, f"{name}/ is {what}")]
    rows: list[Check] = []
    out = load_out(dist / name)
    for c in check_hashes(out) + recompute_measurements(out):
        rows.append(Check(f"{name}: {c.item}", c.status, c.detail, c.expected, c.actual))
    m_entry = out.entries.get("measurements.json")
    if m_entry is None or m_entry.kind != "file":
        return rows + [Check(f"{name}: measurements.json", FAIL, "missing")]
    raw_m = parse_json(read_regular(dist / name / "measurements.json", "measurements",
                                    _where(dist, f"{name}/measurements.json")),
                       _where(dist, f"{name}/measurements.json"), "measurements.json")
    load_document(dist / name / "measurements.json", Measurements, "measurements",
                  _where(dist, f"{name}/measurements.json"))
    for sec in MEASUREMENT_SECTIONS:
        a, b = _canon(entry.get(sec)), _canon(raw_m.get(sec))
        item = f"{name}: {BUNDLE} recipes.{name}.{sec}"
        if a != b:
            rows.append(Check(item, FAIL, f"differs from {name}/measurements.json at "
                              f"{_first_diff(a, b, sec)}"))
        elif a is not None:
            rows.append(Check(item, OK, f"same as {name}/measurements.json"))
    rv = reference_values(raw_m)
    rows.append(Check(f"{name}: {BUNDLE} recipes.{name}.reference_values",
                      OK if entry.get("reference_values") == rv else FAIL,
                      f"{'same as' if entry.get('reference_values') == rv else 'differs from'} "
                      f"the RVPS values of {name}/measurements.json"))
    man = out.entries.get("manifest.json")
    got = man.sha256 if man is not None else None
    rows.append(Check(f"{name}: {BUNDLE} recipes.{name}.manifest_sha256",
                      OK if got == entry.get("manifest_sha256") else FAIL,
                      f"{name}/manifest.json " + ("matches" if got == entry.get("manifest_sha256")
                                                  else "differs"),
                      entry.get("manifest_sha256"), got))
    if out.manifest is not None:
        r = out.manifest["recipe"]
        same = (r["platform"], r["sha256"], r["digest"]) == (
            entry.get("platform"), entry.get("recipe_sha256"), entry.get("recipe_digest"))
        rows.append(Check(f"{name}: {BUNDLE} recipes.{name}.platform/recipe", OK if same else FAIL,
                          f"{'matches' if same else 'differs from'} {name}/manifest.json's recipe"))
    return rows


def _read_sums(dist: Path, entries: dict[str, str]) -> dict[str, str] | None:
    if entries.get(SUMS) != "file":
        return None
    return parse_sums(read_regular(dist / SUMS, "manifest", _where(dist, SUMS)), _SUMS_LINE)


def _dist_files(dist: Path, entries: dict[str, str], names: list[str]) -> dict[str, str]:
    """Relative path -> sha256 of every regular file of DIST (root files, and the regular files
    of each recipe's real directory)."""
    files: dict[str, str] = {}
    for n, k in entries.items():
        if k == "file":
            files[n] = sha256_stream(dist / n, _where(dist, n))[0]
    for name in names:
        if entries.get(name) != "dir":
            continue
        for e in load_out(dist / name).files.values():
            rel = f"{name}/{e.name}"
            files[rel] = e.sha256 or sha256_stream(dist / rel, _where(dist, rel))[0]
    return files


def check_release(dist: str | Path, pubkey_pem: bytes | None = None,
                  pubkey_where: str = "--pubkey") -> Verdict:
    dist = Path(dist)
    entries = _scan(dist)
    raw, bundle_json = _json_file(dist, BUNDLE, entries, "measurements")
    load_document(dist / BUNDLE, Release, "measurements", _where(dist, BUNDLE))
    v = Verdict(f"verify {dist.name}: release")
    names = sorted(bundle_json["recipes"])
    # every recipe's OUT, and OUT against the bundle
    for name in names:
        v.add(*_check_recipe(dist, name, bundle_json["recipes"][name], entries.get(name)))
    # the bundle itself
    canon = dumps(bundle_json, BUNDLE) == raw
    v.add(Check(BUNDLE, OK if canon else FAIL, "canonical JSON" if canon else
                "not in the canonical form ccbuild writes (bytes were changed)"))
    merged = merge_reference_values([bundle_json["recipes"][n]["reference_values"]
                                     for n in names])
    ok = merged == bundle_json["reference_values"]
    v.add(Check(f"{BUNDLE} reference_values", OK if ok else FAIL,
                "every recipe's values together" if ok else
                f"differs from the union of the recipes' values at "
                f"{_first_diff(bundle_json['reference_values'], merged)}"))
    # the RVPS message
    try:
        _, msg = _json_file(dist, RVPS, entries)
        payload = None
        if isinstance(msg, dict) and msg.get("type") == "sample" and \
                isinstance(msg.get("payload"), str):
            payload = parse_json(base64.b64decode(msg["payload"], validate=True),
                                 _where(dist, RVPS), "RVPS payload")
        ok = payload == merged
        v.add(Check(RVPS, OK if ok else FAIL, "decodes to every recipe's values" if ok else
                    "its payload is not every recipe's values" +
                    (f" (first difference at {_first_diff(payload, merged)})"
                     if isinstance(payload, dict) else "")))
    except CCBuildError as e:
        v.add(Check(RVPS, FAIL, e.one_line()[:200]))
    except (binascii.Error, ValueError) as e:
        v.add(Check(RVPS, FAIL, f"its payload is not base64 ({str(e)[:100]})"))
    # the files: SHA256SUMS and the provenance's subjects
    allowed = set(ROOT_FILES) | set(names)
    for n, k in entries.items():
        if n not in allowed:
            v.add(Check(f"entry {n}", FAIL, f"in DIST but not part of the release ({k})"))
        elif n in ROOT_FILES and k != "file":
            v.add(Check(f"entry {n}", FAIL, f"is {k}, not a regular file"))
    files = _dist_files(dist, entries, names)
    sums = _read_sums(dist, entries)
    if sums is None:
        v.add(Check(SUMS, FAIL, "missing or not in `sha256sum` format"))
    else:
        for rel in sorted(set(sums) | set(files) - {SUMS}):
            item = f"{rel.partition('/')[0] + ': ' if '/' in rel else ''}{SUMS} {rel}"
            if rel not in files:
                v.add(Check(item, FAIL, "listed in SHA256SUMS, missing from DIST"))
            elif rel not in sums:
                v.add(Check(item, FAIL, "in DIST, not listed in SHA256SUMS"))
            elif sums[rel] != files[rel]:
                v.add(Check(item, FAIL, "differs from SHA256SUMS", sums[rel], files[rel]))
            else:
                v.add(Check(item, OK, "matches"))
    try:
        _, prov = _json_file(dist, PROVENANCE, entries)
        subjects = {s["name"]: s["digest"]["sha256"] for s in prov["subject"]}
        want = {n: d for n, d in files.items() if n not in (PROVENANCE, SUMS, SIGNATURE)}
        ok = subjects == want
        bad = sorted(n for n in set(subjects) | set(want) if subjects.get(n) != want.get(n))
        v.add(Check(f"{PROVENANCE} subjects", OK if ok else FAIL,
                    f"{len(want)} files of DIST" if ok else f"differ from DIST at {bad[0]}",
                    subjects.get(bad[0]) if bad else None, want.get(bad[0]) if bad else None))
    except CCBuildError as e:
        v.add(Check(PROVENANCE, FAIL, e.one_line()[:200]))
    except (KeyError, TypeError, AttributeError):
        v.add(Check(PROVENANCE, FAIL, "not an in-toto statement with subjects"))
    # the signature
    if pubkey_pem is not None:
        if entries.get(SIGNATURE) != "file":
            v.add(Check(SIGNATURE, FAIL, "missing (release with --sign-key)"))
        else:
            from builder.emit.signature import verify_manifest
            sig = read_regular(dist / SIGNATURE, "signature", _where(dist, SIGNATURE))
            ok, what = verify_manifest(raw, sig, pubkey_pem, pubkey_where)
            v.add(Check(SIGNATURE, OK if ok else FAIL,
                        what.replace("manifest.json.sig", SIGNATURE)
                        .replace("manifest.json", BUNDLE)))
    elif SIGNATURE in entries:
        v.add(Check(SIGNATURE, INFO, "not checked (give --signature --pubkey PEM)"))
    return v


# --- verify DIST --rebuild RECIPE... ------------------------------------------------------------

def _match_recipes(dist: Path, bundle_json: dict, recipes: list[str | Path]) -> dict[str, Path]:
    """Recipe name -> the recipe file given for it; every recipe of the release must be given
    once and no other (refused before any build, naming the recipe file)."""
    from builder.recipe import load_recipe
    names = sorted(bundle_json["recipes"])
    given: dict[str, Path] = {}
    for r in recipes:
        name = load_recipe(r).name
        if name not in bundle_json["recipes"]:
            raise CCBuildError(f"recipe {name!r} is not part of the release", str(r),
                               f"{dist.name} holds {', '.join(names)}")
        if name in given:
            raise CCBuildError(f"recipe {name!r} is given twice (also {given[name]})", str(r))
        given[name] = Path(r)
    missing = [n for n in names if n not in given]
    if missing:
        raise CCBuildError(f"no recipe given for {', '.join(missing)} of the release",
                           "--rebuild", "give every recipe of the release, each with --rebuild")
    return given


def _given_signature(path: Path, where: str) -> bytes | None:
    """A signature file of DIST, when it is a regular file (its validity is --signature's
    business; here it only takes its place in SHA256SUMS and the provenance)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    return read_regular(path, "signature", where)


def rebuild_release(dist: str | Path, recipes: list[str | Path], *, share_cache: bool = False,
                    offline: bool = False, store_root: Path | None = None,
                    allow_outside: bool = False, jobs: int = 0,
                    pubkey_pem: bytes | None = None, pubkey_where: str = "--pubkey") -> Verdict:
    """``ccbuild verify DIST --rebuild RECIPE...``: DIST's own checks (:func:`check_release`),
    then the whole release built again with ``ccbuild release`` into a fresh directory (with a
    fresh, empty store unless ``share_cache``) and every file of DIST compared byte for byte,
    each difference named by recipe, file and first differing key, cpio member or offset.

    Signatures cannot be recreated without the key: DIST's own ``manifest.json.sig`` and
    bundle signature are carried into the rebuilt SHA256SUMS and provenance; with
    ``pubkey_pem`` the bundle's signature is checked as :func:`check_release` does."""
    dist = Path(dist)
    # which recipe rebuilds which OUT: refused before anything long runs
    _, bundle_json = _json_file(dist, BUNDLE, _scan(dist), "measurements")
    load_document(dist / BUNDLE, Release, "measurements", _where(dist, BUNDLE))
    given = _match_recipes(dist, bundle_json, recipes)
    v = check_release(dist, pubkey_pem, pubkey_where)
    v.title = f"verify {dist.name} --rebuild: release"
    for name, path in given.items():
        want = bundle_json["recipes"][name]["recipe_sha256"]
        got = sha256_stream(path, str(path))[0]
        v.add(Check(f"{name}: recipe {path.name}", OK if got == want else FAIL,
                    "the file the release was built from" if got == want else
                    "differs from the recipe the release was built from", want, got))
    tmp = Path(tempfile.mkdtemp(prefix="ccbuild-verify-"))
    try:
        res = release([given[n] for n in sorted(given)], ReleaseOptions(
            dist=tmp / "dist", jobs=jobs, offline=offline, allow_outside=allow_outside,
            store_root=store_root if share_cache else tmp / "cache"))
        v.add(Check("rebuild", INFO, "with the shared cache" if share_cache
                    else "with a fresh, empty cache (every input fetched and built again)"))
        for r in sorted(res.results, key=lambda r: r.name):
            sig = _given_signature(dist / r.name / SIGNATURE_NAME,
                                   _where(dist, f"{r.name}/{SIGNATURE_NAME}"))
            r.files.pop(SIGNATURE_NAME, None)
            if sig is not None:
                r.files[SIGNATURE_NAME] = sig
            if (dist / r.name).is_dir() and not (dist / r.name).is_symlink():
                for c in compare_files(load_out(dist / r.name), r.files):
                    v.add(Check(f"{r.name}: {c.item}", c.status, c.detail, c.expected,
                                c.actual))
        root = bundle_files(res.results, signature=_given_signature(dist / SIGNATURE,
                                                                    _where(dist, SIGNATURE)))
        entries = _scan(dist)
        for n in sorted(set(root) - {SIGNATURE}):
            item = f"rebuild {n}"
            if entries.get(n) != "file":
                v.add(Check(item, FAIL, "produced by the rebuild, missing from DIST"))
                continue
            data = read_regular(dist / n, "manifest", _where(dist, n))
            if data == root[n]:
                v.add(Check(item, OK, f"identical ({len(data)} bytes)"))
            else:
                v.add(Check(item, FAIL, explain_difference(n, data, root[n]),
                            hashlib.sha256(root[n]).hexdigest(),
                            hashlib.sha256(data).hexdigest()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return v
