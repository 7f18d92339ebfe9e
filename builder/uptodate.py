"""The up-to-date record: a rebuild with nothing changed runs no stage (issue 14).

After a build, the store keeps a record of it under ``refs/uptodate/<request>.json``, where the
request is the recipe path and the options as given (with the working directory, the Python and
zlib in use). The record holds everything the build consulted outside its store
(:mod:`builder.deps`): each file it read (path, resolved path, size, SHA-256), each path it
looked for, each tool it looked up on PATH (path, size, mtime, inode, ctime); ccbuild's own
code (the SHA-256 of every file of the package) and the libraries the build had loaded; and the
size and SHA-256 of every file it wrote to OUT.

The next build of the same request checks the record before anything else: every file is read
and hashed again, every tool and path looked up again, and every OUT file read and hashed. When
all of it holds, a full build would write exactly the bytes OUT already has, and the build
stops there; the first thing that does not hold is the reason (``why``) the full build runs.
Files of the store itself (blobs, tool versions) are not inputs: they are caches keyed by what
the record already covers. A record that cannot be read, is damaged or foreign is a miss, never
an error. ``ccbuild build --recheck`` skips the record.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from builder import deps
from builder.errors import CCBuildError
from builder.inputs import open_regular, read_exact
from builder.store import SHA256_HEX

SCHEME = 2
NAMESPACE = "uptodate"
MAX_RECORDS = 256           # the newest records kept (one per recipe, OUT and options)


# -- what identifies the request and the code --------------------------------------------------
def request_key(recipe: str | os.PathLike, out: str | os.PathLike | None,
                overrides: tuple[str, ...], locked: bool, allow_outside: bool,
                sign_key: str | os.PathLike | None) -> str:
    """SHA-256 of the build request: what the user asked, where, with which interpreter."""
    import zlib
    req = {"scheme": SCHEME, "cwd": os.getcwd(), "recipe": os.fspath(recipe),
           "out": None if out is None else os.fspath(out), "overrides": list(overrides),
           "locked": locked, "allow_outside": allow_outside,
           "sign_key": None if sign_key is None else os.path.abspath(os.fspath(sign_key)),
           "python": [sys.version, sys.implementation.cache_tag, sys.prefix],
           "zlib": zlib.ZLIB_RUNTIME_VERSION}
    return hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()


def code_digest() -> str:
    """SHA-256 over every file of the ``builder`` package (its name and bytes; bytecode
    caches left out): any change to ccbuild's code or data is a change."""
    import builder   # its directory (importlib.resources would cost the typing module here)
    root = builder.__path__[0]
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            if f.endswith(".pyc"):
                continue
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                data = fh.read()
            rel = p[len(root):].encode()   # os.walk joins onto root as given
            h.update(len(rel).to_bytes(4, "little") + rel + len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def _origin_identity(origin: str | None) -> list | None:
    if not origin:
        return None
    try:
        st = os.stat(origin)
    except OSError:
        return None
    return [origin, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def loaded_libraries() -> dict[str, list | None]:
    """The third-party packages loaded in this process (top-level names from site-packages or
    dist-packages), each with the identity of the file it was loaded from."""
    out = {}
    for name, mod in list(sys.modules.items()):
        spec = getattr(mod, "__spec__", None)
        origin = getattr(spec, "origin", None)
        if "." in name or name == "builder" or name.startswith("__") or \
                not isinstance(origin, str):
            continue   # __main__ (python -m X) is the program, not a library
        parts = Path(origin).parts
        if "site-packages" in parts or "dist-packages" in parts:
            out[name] = _origin_identity(origin)
    return dict(sorted(out.items()))


def _library_now(name: str) -> list | None:
    import importlib.util
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return _origin_identity(spec.origin if spec is not None else None)


# -- reading files for the check -----------------------------------------------------------------
def _file_sha256(path: str, size: int) -> str | None:
    """SHA-256 of the regular file ``path`` when it still has ``size`` bytes, else None."""
    try:
        with open_regular(path, "file") as (f, now):
            return hashlib.file_digest(f, "sha256").hexdigest() if now == size else None
    except (CCBuildError, OSError):
        return None


# -- the record ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    """OUT as the record says it is: its files' bytes (each checked against its SHA-256) and
    digests, its manifest and measurements parsed."""
    out: Path
    name: str
    platform: str
    files: dict[str, bytes]
    digests: dict[str, str]
    manifest: dict
    measurements: dict


def _hex64(v) -> bool:
    return isinstance(v, str) and SHA256_HEX.fullmatch(v) is not None


def _valid(rec) -> bool:
    """The record's shape (a damaged or foreign record is a miss)."""
    try:
        ok = (rec["scheme"] == SCHEME and _hex64(rec["code"])
              and isinstance(rec["name"], str) and isinstance(rec["platform"], str)
              and isinstance(rec["out"], str) and rec["out"] != ""
              and isinstance(rec["libraries"], dict)
              and all(n.isidentifier() for n in rec["libraries"])   # find_spec imports no parent
              and all(isinstance(t, list) and len(t) == 3 and isinstance(t[0], str)
                      and (t[1] is None or isinstance(t[1], str))
                      and (t[2] is None or isinstance(t[2], list)) for t in rec["tools"])
              and all(isinstance(f, list) and len(f) == 4 and isinstance(f[0], str)
                      and isinstance(f[1], str) and isinstance(f[2], int) and _hex64(f[3])
                      for f in rec["files"])
              and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                      and isinstance(p[1], bool) for p in rec["probes"])
              and all(isinstance(o, list) and len(o) == 3 and isinstance(o[0], str)
                      and o[0] not in ("", ".", "..") and "/" not in o[0]
                      and isinstance(o[1], int) and o[1] >= 0 and _hex64(o[2])
                      for o in rec["outputs"]))
    except (KeyError, TypeError):
        return False
    return bool(ok)


def _read_record(store, key: str):
    rec = store.get_ref(NAMESPACE, key)
    return rec if rec is not None and _valid(rec) else None


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (as a user named it)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def check(store, key: str) -> tuple[Hit | None, str]:
    """(Hit, "") when everything the recorded build consulted is as it was and OUT holds what
    it wrote; else (None, why the build must run)."""
    rec = _read_record(store, key)
    if rec is None:
        return None, "no record of an earlier build of this recipe with these options"
    for name, path, ident in rec["tools"]:
        if deps.tool_identity(name, path) != ident:
            return None, f"tool {name} changed" if ident else f"tool {name} appeared"
    for path, there in rec["probes"]:
        if os.path.exists(path) != there:
            return None, f"{_shown(path)} {'disappeared' if there else 'appeared'}"
    for path, real, size, digest in rec["files"]:
        if os.path.realpath(path) != real or _file_sha256(path, size) != digest:
            return None, f"{_shown(path)} changed"
    for name, ident in rec["libraries"].items():
        if _library_now(name) != ident:
            return None, f"library {name} changed"
    if code_digest() != rec["code"]:
        return None, "ccbuild's code changed"
    out = Path(rec["out"])
    try:
        if out.is_symlink() or not out.is_dir():
            return None, f"{out} is not a directory"
        present = set(os.listdir(out))
    except OSError:
        return None, f"{out} cannot be read"
    if present != {o[0] for o in rec["outputs"]}:
        return None, f"{out} holds other files than the last build wrote"
    files = {}
    for name, size, digest in rec["outputs"]:
        data = read_exact(out / name, size)
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            return None, f"{out / name} differs from what the last build wrote"
        files[name] = data
    try:
        manifest = json.loads(files["manifest.json"])
        measurements = json.loads(files["measurements.json"])
        ok = (isinstance(manifest, dict) and isinstance(manifest.get("outputs"), list)
              and isinstance(manifest.get("chain"), dict) and isinstance(measurements, dict))
    except (KeyError, ValueError):
        ok = False
    if not ok:
        return None, f"{out}'s manifest.json or measurements.json cannot be read"
    return Hit(out, rec["name"], rec["platform"], files,
               {o[0]: o[2] for o in rec["outputs"]}, manifest, measurements), ""


def save(store, key: str, consulted: deps.Consulted, res) -> bool:
    """Record the finished build ``res`` (a :class:`builder.build.BuildResult`). Each input file is recorded with the digest of the
    bytes the build read (:func:`builder.deps.note_read`), so a file changed while the build
    ran misses next time. Nothing is recorded when a file was read twice with two contents,
    lies inside OUT, or was streamed by a reader that does not report its bytes (then every
    build runs in full). Best effort: a store that cannot be written keeps no record."""
    from builder.store import default_root
    real_out = os.path.realpath(res.out)
    store_root = os.path.realpath(store.root)
    tool_cache = os.path.realpath(default_root() / "tool-versions.json")
    if consulted.conflicts:
        return False   # a file read twice changed in between
    files = []
    for path, (real, size, digest) in sorted(consulted.files.items()):
        if real.startswith(store_root + os.sep) or real == tool_cache:
            continue   # the store's own caches, keyed by what the record already covers
        if real == real_out or real.startswith(real_out + os.sep) or digest is None:
            return False   # an input inside OUT; bytes streamed past the record
        files.append([path, real, size, digest])
    rec = {"scheme": SCHEME, "code": code_digest(), "libraries": loaded_libraries(),
           "tools": [[n, p, ident] for (n, p), ident in
                     sorted(consulted.tools.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))],
           "probes": [[p, t] for p, t in sorted(consulted.probes.items())],
           "files": files, "out": str(res.out), "name": res.name, "platform": res.platform,
           "outputs": [[n, len(res.files[n]), d] for n, d in sorted(res.digests.items())]}
    try:
        if _read_record(store, key) != dict(rec, key=key):
            store.set_ref(NAMESPACE, key, rec)
            store.prune_refs(NAMESPACE, MAX_RECORDS)
    except OSError:
        return False
    return True
