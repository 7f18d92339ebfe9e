"""An output directory as an auditor may trust it, and its hashes.

:func:`load_out` sees every entry of OUT with ``lstat``, reads manifest.json and
measurements.json under their caps as strict JSON and schema-checked (builder.outschema), and
hashes the regular files they list by streaming; :func:`check_hashes` compares every output with
manifest.json and SHA256SUMS and fails on any entry that is not a listed regular file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from builder.errors import CCBuildError
from builder.inputs import file_type_name, open_regular, read_regular
from builder.outschema import Manifest, Measurements, load_document
from builder.verify.report import FAIL, OK, Check


# Files OUT may hold beyond manifest.json's outputs: the manifest itself, its sums, its signature.
META_FILES = ("manifest.json", "SHA256SUMS")
SIGNATURE_FILE = "manifest.json.sig"   # builder.emit.signature.SIGNATURE_NAME
MAX_OUT_ENTRIES = 10_000


@dataclass(frozen=True)
class Entry:
    """One entry of OUT as ``lstat`` sees it (symlinks are not followed)."""
    name: str
    kind: str                      # "file" or file_type_name(): "a symlink", "a FIFO", ...
    size: int
    sha256: str | None = None      # regular files listed in manifest.json or SHA256SUMS


@dataclass(frozen=True)
class OutDir:
    path: Path
    entries: dict[str, Entry]      # every entry of OUT
    manifest: dict | None          # schema-checked (builder.outschema), None when missing
    measurements: dict | None      # schema-checked, None when missing or not a regular file
    manifest_raw: bytes | None = None

    @property
    def files(self) -> dict[str, Entry]:
        """The regular files of OUT."""
        return {n: e for n, e in self.entries.items() if e.kind == "file"}

    def read(self, name: str, kind: str = "artifact", limit: int | None = None) -> bytes | None:
        """The bytes of a regular file of OUT (capped), None when it is absent or not regular."""
        if name not in self.files:
            return None
        return _read_sized(self.path / name, kind, f"{self.path / name}", limit)

    def artifact(self, name: str) -> bytes | None:
        return self.read(name, _ARTIFACT_KINDS.get(name, "artifact"),
                         _ARTIFACT_LIMITS.get(name))


# What each artifact is read as when its bytes are needed (the caps of builder.inputs).
_ARTIFACT_KINDS = {"firmware.fd": "firmware", "vmlinuz": "kernel", "initrd.img": "initrd",
                   "cmdline.txt": "cmdline", SIGNATURE_FILE: "signature"}
_ARTIFACT_LIMITS = {"cmdline.txt": 1 << 20}


def _read_sized(path: Path, kind: str, where: str, limit: int | None = None) -> bytes:
    """:func:`builder.inputs.read_regular`, but asking the OS for the file's size (+1) rather than
    for the whole cap: a 2 GiB read buffer is allocated up front otherwise."""
    with open_regular(path, kind, where, limit) as (f, size):
        try:
            data = f.read(size + 1)
        except OSError as e:
            raise CCBuildError(f"cannot read {kind} ({e.strerror or e})", where) from None
    if len(data) > size:
        raise CCBuildError(f"{kind} changed while it was read", where)
    return data


def _plain(obj):
    """A schema instance as the JSON it came from: optional fields that were absent (None with a
    None default) are left out, so ``.get`` and ``in`` behave as on the parsed document."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if v is None and f.default is None:
                continue
            out[f.name] = _plain(v)
        return out
    if isinstance(obj, (tuple, list)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def sha256_stream(path: Path, where: str) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open_regular(path, "artifact", where) as (f, _):
        try:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                n += len(chunk)
        except OSError as e:
            raise CCBuildError(f"cannot read artifact ({e.strerror or e})", where) from None
    return h.hexdigest(), n


def _scan(p: Path) -> dict[str, Entry]:
    entries = {}
    try:
        with os.scandir(p) as it:
            for d in it:
                st = d.stat(follow_symlinks=False)
                kind = "file" if stat.S_ISREG(st.st_mode) else file_type_name(st.st_mode)
                entries[d.name] = Entry(d.name, kind, st.st_size)
                if len(entries) > MAX_OUT_ENTRIES:
                    raise CCBuildError(f"more than {MAX_OUT_ENTRIES} entries", str(p),
                                       "not a ccbuild output")
    except OSError as e:
        raise CCBuildError(f"cannot list the output directory ({e.strerror})", str(p)) from None
    return dict(sorted(entries.items()))


def _document(p: Path, entries: dict[str, Entry], name: str, kind: str, cls):
    """A schema-checked OUT document; None when absent. Not a regular file: an error for the
    manifest (nothing can be checked without it), None (a failed check) for measurements."""
    e = entries.get(name)
    if e is None:
        return None, None
    if e.kind != "file":
        if name == "manifest.json":
            raise CCBuildError(f"{name} is {e.kind}, not a regular file", str(p / name),
                               "OUT has been tampered with")
        return None, None
    raw = read_regular(p / name, kind, str(p / name))
    doc = load_document(p / name, cls, kind, str(p / name))
    return _plain(doc), raw


def load_out(path: str | Path) -> OutDir:
    """OUT as an auditor may trust it: every entry seen with ``lstat``, manifest.json and
    measurements.json read under their caps as strict JSON and schema-checked
    (builder.outschema), the regular files manifest.json or SHA256SUMS list hashed by streaming."""
    p = Path(path)
    if not p.is_dir():
        raise CCBuildError("output directory not found", str(p), "give the OUT of `ccbuild build`")
    entries = _scan(p)
    if "manifest.json" not in entries and "SHA256SUMS" not in entries:
        raise CCBuildError("not a ccbuild output (no manifest.json, no SHA256SUMS)", str(p))
    manifest, manifest_raw = _document(p, entries, "manifest.json", "manifest", Manifest)
    measurements, _ = _document(p, entries, "measurements.json", "measurements", Measurements)
    sums = _read_sums(p, entries) or {}
    wanted = {o["path"] for o in (manifest or {}).get("outputs", [])} | set(sums) \
        | {"manifest.json", SIGNATURE_FILE}
    for name in wanted:
        e = entries.get(name)
        if e is not None and e.kind == "file":
            digest, size = sha256_stream(p / name, str(p / name))
            entries[name] = replace(e, sha256=digest, size=size)
    return OutDir(p, entries, manifest, measurements, manifest_raw)


def _read_sums(p: Path, entries: dict[str, Entry]) -> dict[str, str] | None:
    e = entries.get("SHA256SUMS")
    if e is None or e.kind != "file":
        return None
    return parse_sums(read_regular(p / "SHA256SUMS", "manifest", str(p / "SHA256SUMS")))


_SUMS_LINE = re.compile(r"([0-9a-f]{64})  ([^\x00/]{1,255})")


def parse_sums(text: bytes, line_re: re.Pattern = _SUMS_LINE) -> dict[str, str] | None:
    """name -> sha256 of a ``sha256sum`` file whose every line matches ``line_re`` (hash, two
    spaces, name), no name twice; None when it is not one."""
    out = {}
    try:
        lines = text.decode().splitlines()
    except UnicodeDecodeError:
        return None
    for line in lines:
        m = line_re.fullmatch(line)
        if not m or m[2] in out:
            return None
        out[m[2]] = m[1]
    return out


def check_hashes(out: OutDir) -> list[Check]:
    """Every output against manifest.json and SHA256SUMS; every entry of OUT that is not a listed
    regular file (an added file, a subdirectory, a FIFO, a symlink, a device) is a failure."""
    rows: list[Check] = []
    files = out.files
    listed: dict[str, dict] = {}
    if out.manifest is None:
        rows.append(Check("manifest.json", FAIL, "missing"))
    else:
        for rec in out.manifest["outputs"]:
            listed[rec["path"]] = rec
    for name, rec in sorted(listed.items()):
        item = f"sha256 {name}"
        e = out.entries.get(name)
        if e is None:
            rows.append(Check(item, FAIL, "listed in manifest.json, missing from OUT"))
        elif e.kind != "file":
            rows.append(Check(item, FAIL, f"listed in manifest.json as a file, but it is "
                              f"{e.kind} (not a regular file)"))
        elif e.sha256 != rec["sha256"] or e.size != rec["size"]:
            rows.append(Check(item, FAIL, f"differs from manifest.json (size {rec['size']} -> "
                              f"{e.size})", rec["sha256"], e.sha256))
        else:
            rows.append(Check(item, OK, f"{rec['size']} bytes, matches manifest.json"))
    sums_entry = out.entries.get("SHA256SUMS")
    sums = _read_sums(out.path, out.entries)
    if sums is None:
        what = (f"is {sums_entry.kind}, not a regular file" if sums_entry is not None and
                sums_entry.kind != "file" else "missing or not in `sha256sum` format")
        rows.append(Check("SHA256SUMS", FAIL, what))
    for name, digest in sorted((sums or {}).items()):
        item = f"SHA256SUMS {name}"
        e = out.entries.get(name)
        if e is None:
            rows.append(Check(item, FAIL, "listed in SHA256SUMS, missing from OUT"))
        elif e.kind != "file":
            rows.append(Check(item, FAIL, f"listed in SHA256SUMS, but it is {e.kind}"))
        elif digest != e.sha256:
            rows.append(Check(item, FAIL, "differs from SHA256SUMS", digest, e.sha256))
        elif name in listed and listed[name]["sha256"] != digest:
            rows.append(Check(item, FAIL, "SHA256SUMS and manifest.json disagree",
                              listed[name]["sha256"], digest))
        else:
            rows.append(Check(item, OK, "matches"))
    known = set(listed) | set(META_FILES) | {SIGNATURE_FILE}
    if out.manifest is None:
        known |= set(sums or {})
    for name, e in out.entries.items():
        if name in listed:
            continue
        if name in known and e.kind == "file":
            continue
        what = "an added file" if e.kind == "file" else e.kind
        rows.append(Check(f"entry {name}", FAIL, f"in OUT but not listed in manifest.json "
                          f"({what})", None, e.sha256))
    for name in sorted(set(listed) - set(sums or {})):
        if name in files and sums is not None:
            rows.append(Check(f"SHA256SUMS {name}", FAIL, "listed in manifest.json, not in "
                              "SHA256SUMS"))
    if "manifest.json" in files and sums is not None and "manifest.json" not in sums:
        rows.append(Check("SHA256SUMS manifest.json", FAIL, "manifest.json is not in SHA256SUMS"))
    return rows
