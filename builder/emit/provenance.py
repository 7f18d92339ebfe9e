"""``provenance.intoto.json``: an in-toto Statement v1 carrying a SLSA Provenance v1 predicate.

- subject: every file written before this emitter (artifacts, measurements.json, earlier
  emitters' files), by name with its sha256;
- buildDefinition: buildType :data:`BUILD_TYPE`; externalParameters: the recipe (file sha256,
  canonical digest, canonical content) and the overrides that made it differ from its file;
  internalParameters: SOURCE_DATE_EPOCH; resolvedDependencies: every input of manifest.json with
  its sha256 (Debian packages as ``pkg:deb/debian/NAME@VERSION`` purls);
- runDetails: builder id and ccbuild version, metadata without any timestamp, so the file is as
  reproducible as the artifacts it describes.

Absolute paths a recipe or override may name (a local firmware file) are reduced to their file
name: the statement never carries a path of the build machine.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

from builder import __version__
from builder.emit.manifest import dumps
from builder.emit.templating import check_unicode
from builder.errors import CCBuildError
from builder.recipe import load_recipe, to_jsonable

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:ccbuild:build-type:recipe:v1"
BUILDER_ID = "urn:ccbuild:builder:local"
NAME = "provenance.intoto.json"


def _redact(obj, key: str = ""):
    """Absolute local source paths (``...source.path``) -> '…/basename', recursively."""
    if isinstance(obj, dict):
        return {k: _redact(v, f"{key}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact(v, key) for v in obj]
    if isinstance(obj, str) and key.endswith("source.path") and obj.startswith("/"):
        return "…/" + obj.rstrip("/").rpartition("/")[2]
    return obj


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict) and obj:
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: obj}


def overrides_of(lr) -> dict | str:
    """The fields whose effective value differs from the recipe file alone (``--set``)."""
    if lr.file_recipe is not None and lr.file_recipe is lr.recipe:
        return {}   # loaded without overrides: nothing differs (and the file is not read again)
    try:
        plain = load_recipe(lr.path)
    except CCBuildError:
        return "unknown: the recipe file alone does not validate"
    a, b = _flatten(to_jsonable(plain.recipe)), _flatten(to_jsonable(lr.recipe))
    return {k: b.get(k) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _purl_name(s: str, field: str = "input name") -> str:
    """A purl name/version component: percent-encoded UTF-8."""
    return quote(check_unicode(s, field, NAME), safe="+.-_~")


def dependency(rec: dict) -> dict:
    """A SLSA ResourceDescriptor for one manifest input."""
    kind, name, version = rec["kind"], rec["name"], rec.get("version", "")
    d: dict = {"name": f"{rec['role']}:{name}", "digest": {"sha256": rec["sha256"]}}
    if kind == "debian":
        d["uri"] = f"pkg:deb/debian/{_purl_name(name)}@{_purl_name(version, 'input version')}"
    elif kind == "debian-source":
        pkg = name.partition("_")[0]
        d["uri"] = (f"pkg:deb/debian/{_purl_name(pkg)}@{_purl_name(version, 'input version')}"
                    "?arch=source")
    elif kind == "url":
        d["uri"] = name
    ann = {k: v for k, v in rec.items() if k not in ("role", "name", "sha256")}
    if ann:
        d["annotations"] = ann
    return d


def statement(view, files: dict[str, bytes]) -> dict:
    lr = view.lr
    canonical = to_jsonable(lr.recipe)
    subjects = [{"name": n, "digest": {"sha256": view.sha256(files[n])}} for n in sorted(files)]
    invocation = hashlib.sha256(dumps([lr.digest, list(view.inputs), __version__],
                                      NAME)).hexdigest()
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "recipe": {"name": lr.name, "platform": lr.recipe.platform,
                               "file_sha256": hashlib.sha256(lr.text).hexdigest(),
                               "digest": lr.digest,
                               "canonical": _redact(canonical)},
                    "overrides": _redact(overrides_of(lr)),
                },
                "internalParameters": {"source_date_epoch": lr.recipe.source_date_epoch},
                "resolvedDependencies": [dependency(r) for r in view.inputs],
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"ccbuild": __version__}},
                "metadata": {"invocationId": f"urn:ccbuild:build:{invocation}"},
            },
        },
    }


def emit(view, files: dict[str, bytes]) -> dict[str, bytes]:
    return {NAME: dumps(statement(view, files), NAME)}

