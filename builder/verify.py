"""The auditor's side: check an output directory, rebuild and compare, compare with evidence.

Every check yields :class:`Check` rows (item, status, expected, actual, detail); a
:class:`Verdict` groups them, fails when any row fails and prints as a table.

- :func:`check_out`: every output's sha256 and size against manifest.json and SHA256SUMS, every
  measurement recomputed from the artifacts in OUT (SNP entries from their own parameters, TDX
  registers and the event log from the knobs measurements.json records).
- :func:`rebuild_and_compare`: build the recipe again into a fresh directory (own cache unless
  shared) and compare byte for byte; an initrd difference names the first differing cpio member
  and field, a JSON difference the first differing key.
- :func:`check_snp_report`: chain and signature (:func:`builder.verify_snp.verify_snp_report`),
  which matrix entry MEASUREMENT is, HOST_DATA, ID key digest, the policy decoded.
- :func:`check_tdx_quote`: MRTD, RTMR0-3, MRCONFIGID; with a CCEL event log, its replay against
  the quote, each self-describing event against its own data, and the log against the expected
  event log, naming the first event that differs per register.

Measurement code is the engines'; this module only reads OUT and compares.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from builder.errors import CCBuildError, CheckFailed
from builder.inputs import file_type_name, open_regular, read_regular

OK, FAIL, SKIP, INFO = "ok", "FAIL", "skip", "info"
# Files OUT may hold beyond manifest.json's outputs: the manifest itself, its sums, its signature.
META_FILES = ("manifest.json", "SHA256SUMS")
SIGNATURE_FILE = "manifest.json.sig"   # builder.emit.signature.SIGNATURE_NAME
ARTIFACTS = ("firmware.fd", "vmlinuz", "initrd.img", "cmdline.txt")
MAX_OUT_ENTRIES = 10_000


@dataclass
class Check:
    item: str
    status: str                  # ok | FAIL | skip | info
    detail: str = ""
    expected: str | None = None
    actual: str | None = None

    def to_json(self) -> dict:
        d = {"item": self.item, "status": self.status, "detail": self.detail}
        if self.expected is not None or self.actual is not None:
            d.update(expected=self.expected, actual=self.actual)
        return d


@dataclass
class Verdict:
    title: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == FAIL for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def add(self, *checks: Check) -> None:
        self.checks.extend(checks)

    def to_json(self) -> dict:
        return {"title": self.title, "ok": self.ok,
                "counts": {s: sum(c.status == s for c in self.checks)
                           for s in (OK, FAIL, SKIP, INFO)},
                "checks": [c.to_json() for c in self.checks]}

    def text(self, all_rows: bool = True) -> str:
        rows = self.checks if all_rows else [c for c in self.checks if c.status != OK]
        w = max((len(c.item) for c in rows), default=4)
        lines = [self.title]
        for c in rows:
            lines.append(f"  {c.status:<4}  {c.item:<{w}}  {c.detail}".rstrip())
            if c.status == FAIL and (c.expected is not None or c.actual is not None):
                lines.append(f"  {'':<4}  {'':<{w}}    expected {c.expected}")
                lines.append(f"  {'':<4}  {'':<{w}}    actual   {c.actual}")
        n = {s: sum(c.status == s for c in self.checks) for s in (OK, FAIL, SKIP)}
        verdict = "PASS" if self.ok else "FAIL"
        lines.append(f"{verdict}: {n[OK]} agree, {n[FAIL]} differ, {n[SKIP]} not checked")
        return "\n".join(lines)


def _h(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# --- OUT --------------------------------------------------------------------------------------

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


def _sha256_stream(path: Path, where: str) -> tuple[str, int]:
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
    from builder.outschema import load_document
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
    from builder.outschema import Manifest, Measurements
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
            digest, size = _sha256_stream(p / name, str(p / name))
            entries[name] = replace(e, sha256=digest, size=size)
    return OutDir(p, entries, manifest, measurements, manifest_raw)


def _read_sums(p: Path, entries: dict[str, Entry]) -> dict[str, str] | None:
    e = entries.get("SHA256SUMS")
    if e is None or e.kind != "file":
        return None
    return _parse_sums(read_regular(p / "SHA256SUMS", "manifest", str(p / "SHA256SUMS")))


_SUMS_LINE = re.compile(r"([0-9a-f]{64})  ([^\x00/]{1,255})")


def _parse_sums(text: bytes) -> dict[str, str] | None:
    out = {}
    try:
        lines = text.decode().splitlines()
    except UnicodeDecodeError:
        return None
    for line in lines:
        m = _SUMS_LINE.fullmatch(line)
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
    sums = None
    if sums_entry is not None and sums_entry.kind == "file":
        sums = _parse_sums(read_regular(out.path / "SHA256SUMS", "manifest",
                                        str(out.path / "SHA256SUMS")))
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


# --- recomputing measurements from OUT ----------------------------------------------------------

def _artifacts(out: OutDir) -> tuple[bytes, bytes, bytes | None, str]:
    need = ("firmware.fd", "vmlinuz", "cmdline.txt")
    missing = [n for n in need if n not in out.entries]
    if missing:
        raise CheckFailed(f"cannot recompute measurements: {', '.join(missing)} missing from OUT")
    odd = [f"{n} is {out.entries[n].kind}" for n in need + ("initrd.img",)
           if n in out.entries and out.entries[n].kind != "file"]
    if odd:
        raise CheckFailed(f"cannot recompute measurements: {', '.join(odd)}, not a regular file")
    try:
        cmdline = out.artifact("cmdline.txt").decode()
    except UnicodeDecodeError:
        raise CheckFailed("cmdline.txt is not UTF-8") from None
    return out.artifact("firmware.fd"), out.artifact("vmlinuz"), out.artifact("initrd.img"), \
        cmdline


def recompute_snp(fw: bytes, kernel: bytes, initrd: bytes | None, cmdline: str,
                  entries: list[dict]) -> list[Check]:
    """Each recorded SNP entry recomputed from its own parameters (entries sharing VMM, CPU type
    and features in one incremental run)."""
    from builder.measure.sev_hashes import KernelHashes
    from builder.measure.snp import snp_matrix
    hashes = KernelHashes.of(kernel, initrd, cmdline)
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e["vmm"], e["vcpu_type"], e["guest_features"]), []).append(e)
    rows = []
    for (vmm, vtype, gf), group in groups.items():
        try:
            fresh = snp_matrix(fw, hashes, [e["vcpus"] for e in group], [vtype], [vmm],
                               [int(gf, 16)])
        except CCBuildError as err:
            for e in group:
                rows.append(Check(_snp_item(e), FAIL, f"cannot recompute: {err.one_line()}"))
            continue
        by_n = {f["vcpus"]: f for f in fresh}
        for e in group:
            f = by_n[e["vcpus"]]
            item = _snp_item(e)
            if f["vcpu_sig"] != e["vcpu_sig"]:
                rows.append(Check(item, FAIL, "vCPU signature of the CPU type differs",
                                  e["vcpu_sig"], f["vcpu_sig"]))
            elif f["launch_digest"] != e["launch_digest"]:
                rows.append(Check(item, FAIL, "launch digest recomputed from OUT differs",
                                  e["launch_digest"], f["launch_digest"]))
            else:
                rows.append(Check(item, OK, f"launch digest {e['launch_digest'][:24]}… recomputed"))
    return rows


def _snp_item(e: dict) -> str:
    return f"snp {e['vcpus']} vCPU {e['vcpu_type']} {e['vmm']} features {e['guest_features']}"


def tdx_params_from_record(rec: dict):
    """TdxParams from the ``profile`` record of a measurements.json ``tdx`` record
    (:meth:`builder.measure.tdx.TdxParams.from_record`)."""
    from builder.measure.tdx import TdxParams
    return TdxParams.from_record(rec.get("profile") or {})


def _event_dict(e) -> dict:
    return e.to_json()


def _vmm_supplied(ev: dict) -> bool:
    return ev["description"].startswith("ACPI DATA")


def recompute_tdx_events(fw: bytes, kernel: bytes, initrd: bytes | None, cmdline: str,
                         rec: dict) -> tuple[bytes, list[dict], list[str]]:
    """(MRTD, the expected event list rebuilt from the artifacts, notes). RTMR0's ACPI events,
    the profile's extra RTMR0 events and RTMR3's runtime events hash VMM data that OUT does not
    hold: their digests come from the record, everything else from the engine."""
    from builder.formats.tdvf import parse_tdvf_metadata
    from builder.measure.tdx import rtmr0_events, rtmr1_events, rtmr2_events
    from builder.measure.tdx_mrtd import mrtd
    params = tdx_params_from_record(rec)
    meta = parse_tdvf_metadata(fw)
    if meta is None:
        raise CheckFailed("firmware.fd has no TDVF metadata (not a TDX firmware)")
    recorded = rec.get("events", [])
    notes: list[str] = []
    events: list[dict] = []
    if rec.get("rtmr0") is not None:
        # The engine's RTMR0 with placeholder ACPI blobs; the VMM-supplied events (ACPI blobs and
        # the profile's extra events) are put back from the record in recorded order.
        base = [_event_dict(e) for e in
                rtmr0_events(fw, meta, replace(params, acpi_blobs=(b"", b"", b"")))]
        engine = [e for e in base if not _vmm_supplied(e)]
        rec0 = [e for e in recorded if e["register"] == "rtmr0"]
        known = {(e["event_type"], e["description"]) for e in engine}
        taken = [e for e in rec0 if (e["event_type"], e["description"]) not in known]
        # splice: engine events in engine order, VMM events where the record has them
        it = iter(engine)
        for e in rec0:
            if (e["event_type"], e["description"]) in known:
                events.append(next(it, e))
            else:
                events.append(e)
        events.extend(it)
        if taken:
            notes.append(f"rtmr0: {len(taken)} VMM-supplied event(s) (ACPI tables, profile "
                         "extras) taken from measurements.json; OUT does not hold their data")
    events += [_event_dict(e) for e in rtmr1_events(kernel, initrd, cmdline, params)]
    events += [_event_dict(e) for e in rtmr2_events(initrd, cmdline, params)]
    rt3 = [e for e in recorded if e["register"] == "rtmr3"]
    if rt3:
        notes.append(f"rtmr3: {len(rt3)} runtime event(s) declared by the profile, taken from "
                     "measurements.json")
    events += rt3
    return mrtd(fw, meta, params.page_add_order), events, notes


def replay_events(events: list[dict]) -> list[bytes]:
    from builder.formats import tcg
    regs = []
    for i in range(4):
        regs.append(tcg.replay(bytes.fromhex(e["digest"]) for e in events
                                    if e["register"] == f"rtmr{i}"))
    return regs


def diff_event_lists(expected: list[dict], actual: list[dict], registers=range(4),
                     what: str = "recomputed") -> list[Check]:
    """Per register, the first event whose type, description or digest differs (or that is
    missing or extra); one row per register."""
    rows = []
    for i in registers:
        reg = f"rtmr{i}"
        ex = [e for e in expected if e["register"] == reg]
        ac = [e for e in actual if e["register"] == reg]
        bad = None
        for k in range(max(len(ex), len(ac))):
            a = ac[k] if k < len(ac) else None
            e = ex[k] if k < len(ex) else None
            if a is None:
                bad = Check(f"{reg} events", FAIL, f"event {k + 1} {e['event_type']} "
                            f"{e['description']!r} expected, {what} log ends after {len(ac)}",
                            e["digest"], None)
            elif e is None:
                bad = Check(f"{reg} events", FAIL, f"event {k + 1} {a['event_type']} "
                            f"{a['description']!r}: not expected (expected {len(ex)} events)",
                            None, a["digest"])
            elif a["event_type"] != e["event_type"] or a["digest"] != e["digest"]:
                where = f" (log #{a['number']} @0x{a['offset']:x})" if "number" in a else ""
                bad = Check(f"{reg} events", FAIL, f"event {k + 1}{where} differs: "
                            f"{e['event_type']} {e['description']!r} expected; {what} "
                            f"{a['event_type']} {a['description']!r}", e["digest"], a["digest"])
            if bad:
                break
        rows.append(bad or Check(f"{reg} events", OK, f"{len(ex)} events agree"))
    return rows


def recompute_measurements(out: OutDir) -> list[Check]:
    m = out.measurements
    if m is None:
        return [Check("measurements.json", FAIL, "missing or not valid JSON")]
    try:
        fw, kernel, initrd, cmdline = _artifacts(out)
    except CheckFailed as e:
        return [Check("measurements", FAIL, e.one_line())]
    rows: list[Check] = []
    if "snp" in m:
        rows += recompute_snp(fw, kernel, initrd, cmdline, m["snp"])
    if "tdx" in m:
        rows += _recompute_tdx(fw, kernel, initrd, cmdline, m["tdx"])
    if not rows:
        rows.append(Check("measurements", FAIL, "measurements.json has neither snp nor tdx"))
    return rows


def _recompute_tdx(fw, kernel, initrd, cmdline, rec: dict) -> list[Check]:
    try:
        mrtd, events, notes = recompute_tdx_events(fw, kernel, initrd, cmdline, rec)
    except CheckFailed as e:
        return [Check("tdx", FAIL, e.one_line())]
    except CCBuildError as e:
        return [Check("tdx", FAIL, f"cannot recompute: {e.one_line()}")]
    rows = [Check("tdx mrtd", OK if mrtd.hex() == rec["mrtd"] else FAIL,
                  "recomputed from firmware.fd" if mrtd.hex() == rec["mrtd"]
                  else "MRTD recomputed from firmware.fd differs", rec["mrtd"], mrtd.hex())]
    regs = replay_events(events)
    for i in range(4):
        want = rec.get(f"rtmr{i}")
        if want is None:
            rows.append(Check(f"tdx rtmr{i}", SKIP, "not predicted: "
                              + rec.get(f"rtmr{i}_reason", "no reason recorded")))
            continue
        same = regs[i].hex() == want
        rows.append(Check(f"tdx rtmr{i}", OK if same else FAIL,
                          "replay of the recomputed events" if same
                          else "replay of the events recomputed from OUT differs",
                          want, regs[i].hex()))
    known = [i for i in range(4) if rec.get(f"rtmr{i}") is not None]
    rows += [replace(c, item="tdx " + c.item)
             for c in diff_event_lists(events, rec.get("events", []), known, "measurements.json")]
    rows += [Check("tdx note", INFO, n) for n in notes]
    return rows


def check_out(path: str | Path) -> Verdict:
    out = load_out(path)
    v = Verdict(f"verify {out.path.name}: outputs and measurements")
    v.add(*check_hashes(out))
    v.add(*recompute_measurements(out))
    return v


# --- rebuild and compare ------------------------------------------------------------------------

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
    from builder.formats import cpio
    from builder.stages.initrd import diff_initrds
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
    from builder.outschema import parse_json
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
            want = _h(rebuilt[name])
            digest = e.sha256 or _sha256_stream(out.path / name, str(out.path / name))[0]
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
                        jobs: int = 0, store_root: Path | None = None) -> Verdict:
    """Rebuild ``recipe`` into a fresh temporary directory (with a fresh store unless
    ``share_cache``) and compare every file with OUT, after OUT's own checks."""
    from builder.build import BuildOptions, build
    out = load_out(out_path)
    v = Verdict(f"verify --rebuild {Path(recipe).name} against {out.path.name}")
    v.add(*check_hashes(out))
    v.add(*recompute_measurements(out))
    tmp = Path(tempfile.mkdtemp(prefix="ccbuild-verify-"))
    try:
        store = store_root if share_cache else tmp / "cache"
        res = build(recipe, BuildOptions(out=tmp / "out", overrides=tuple(overrides),
                                         offline=offline, store_root=store, jobs=jobs))
        v.add(Check("rebuild", INFO, "with the shared cache" if share_cache
                    else "with a fresh, empty cache (every input fetched and built again)"))
        v.add(*compare_files(out, res.files))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return v


# --- SNP evidence -----------------------------------------------------------------------------

def match_snp_entries(measurement: bytes, entries: list[dict]) -> list[dict]:
    return [e for e in entries if e["launch_digest"] == measurement.hex()]


def _expected_host_data(m: dict) -> tuple[bytes, str]:
    init = m.get("initdata")
    if isinstance(init, dict):
        for key in ("snp_host_data", "host_data"):
            if init.get(key):
                return bytes.fromhex(init[key]), "initdata HOST_DATA from measurements.json"
        if init.get("digest"):
            return (bytes.fromhex(init["digest"]) + bytes(32))[:32], \
                "initdata digest from measurements.json (first 32 bytes)"
    return bytes(32), "no initdata in the build: HOST_DATA must be zero"


def _expected_id_key_digest(m: dict, entry: dict | None) -> tuple[bytes, str] | None:
    for src, where in ((entry or {}), "the matched entry"), (m.get("snp_id") or {}, "snp_id"):
        for key in ("id_key_digest",):
            if isinstance(src, dict) and src.get(key):
                return bytes.fromhex(src[key]), f"ID key digest from measurements.json ({where})"
    return None


def check_snp_report(out_path: str | Path, report_bytes: bytes, vcek: bytes | None = None,
                     chain: bytes | None = None, vcek_what: str | None = None,
                     chain_what: str = "certificate chain") -> Verdict:
    from builder.formats.snp_report import parse_report
    from builder.formats.snp_policy import GuestPolicy
    from builder.verify_snp import verify_snp_report
    out = load_out(out_path)
    v = Verdict(f"verify {out.path.name} against an SEV-SNP attestation report")
    report = parse_report(report_bytes)
    if vcek is None:
        v.add(Check("signature", SKIP, "no --vcek given: the report is NOT authenticated; "
                    "only its fields are compared"))
    else:
        try:
            vr = verify_snp_report(report_bytes, vcek, chain, vcek_what=vcek_what,
                                   chain_what=chain_what)
            v.add(Check("signature", OK, f"{vr.signer} signature verifies; chain {vr.ark_subject}"
                        f" -> {vr.ask_subject} -> {vr.vcek_subject} ({vr.chain_source}, "
                        f"{vr.product})"))
        except CheckFailed as e:
            v.add(Check("signature", FAIL, e.one_line()))
        except ValueError as e:        # cryptography parses certificate fields lazily
            v.add(Check("signature", FAIL, "a certificate of the chain is damaged and cannot be "
                        f"read ({str(e).splitlines()[0][:160]})"))
    m = out.measurements or {}
    entries = m.get("snp")
    matched = None
    if not entries:
        v.add(Check("measurement", FAIL, "measurements.json has no SNP entries (not an SNP "
                    "build?)", None, report.measurement.hex()))
    else:
        hits = match_snp_entries(report.measurement, entries)
        if len(hits) == 1:
            matched = hits[0]
            v.add(Check("measurement", OK, f"matches entry {entries.index(matched) + 1} of "
                        f"{len(entries)}: {matched['vcpus']} vCPU, {matched['vcpu_type']} "
                        f"(sig {matched['vcpu_sig']}), VMM {matched['vmm']}, guest features "
                        f"{matched['guest_features']}"))
        elif hits:
            matched = hits[0]
            names = "; ".join(f"entry {entries.index(h) + 1}: {h['vcpus']} vCPU, "
                              f"{h['vcpu_type']}, VMM {h['vmm']}, features {h['guest_features']}"
                              for h in hits)
            v.add(Check("measurement", OK, f"matches {len(hits)} entries of {len(entries)} that "
                        "share this digest (it does not depend on what differs between them): "
                        + names))
        else:
            v.add(Check("measurement", FAIL, f"MEASUREMENT matches none of the {len(entries)} "
                        "entries: other artifacts, or launch parameters outside the recipe's "
                        "matrix (vCPUs, CPU type, VMM, guest features)",
                        f"one of the {len(entries)} launch digests", report.measurement.hex()))
    want, why = _expected_host_data(m)
    v.add(Check("host_data", OK if report.host_data == want else FAIL, why,
                want.hex(), report.host_data.hex()))
    idk = _expected_id_key_digest(m, matched)
    if idk is None:
        zero = not any(report.id_key_digest)
        v.add(Check("id_key_digest", OK if zero else FAIL,
                    "the build has no ID key: the report's ID_KEY_DIGEST must be zero" if zero
                    else "the build has no ID key, but the launch carried an ID block",
                    bytes(48).hex(), report.id_key_digest.hex()))
    else:
        v.add(Check("id_key_digest", OK if report.id_key_digest == idk[0] else FAIL, idk[1],
                    idk[0].hex(), report.id_key_digest.hex()))
    try:
        pol = GuestPolicy.decode(report.policy)
        flags = ", ".join(f"{k}={'yes' if val else 'no'}" for k, val in pol.as_dict().items()
                          if isinstance(val, bool))
        v.add(Check("policy", INFO, f"0x{report.policy:x}: ABI >= {pol.abi_major}.{pol.abi_minor}"
                    f", {flags}"))
        if pol.debug:
            v.add(Check("policy debug", FAIL, "the guest policy allows debugging: the host can "
                        "read guest memory"))
        pol_rec = (m.get("snp_id") or {}).get("policy")
        want_pol = int(pol_rec, 16) if isinstance(pol_rec, str) else None
        if want_pol is not None and want_pol != report.policy:
            v.add(Check("policy", FAIL, "differs from the build's policy", hex(want_pol),
                        hex(report.policy)))
    except CCBuildError as e:
        v.add(Check("policy", FAIL, e.one_line()))
    v.add(Check("report", INFO, f"VMPL {report.vmpl}, guest SVN {report.guest_svn}, reported TCB "
                f"{report.reported_tcb}, report_data {report.report_data.hex()[:32]}…"))
    return v


# --- TDX evidence -----------------------------------------------------------------------------

# Event types whose digest the TCG PC Client spec / EDK2 define over the event data itself.
def _digest_from_data(type_name: str, data: bytes) -> bytes | None:
    from builder.formats.tcg import parse_uefi_variable_data
    from builder.measure import tdx_events as te
    if type_name in ("EV_SEPARATOR", "EV_EFI_ACTION", "EV_EFI_GPT_EVENT"):
        return te.sha384(data)
    if type_name in ("EV_EFI_VARIABLE_DRIVER_CONFIG", "EV_EFI_VARIABLE_AUTHORITY",
                     "EV_EFI_VARIABLE_BOOT"):
        try:
            vendor, name, value = parse_uefi_variable_data(data)
        except (ValueError, UnicodeDecodeError):
            return None
        if type_name == "EV_EFI_VARIABLE_BOOT":
            return te.variable_boot_digest(value)
        return te.variable_driver_config_digest(vendor, name, value)
    return None


def log_events(log) -> list[dict]:
    """CCEL log events (EV_NO_ACTION dropped) in the measurements.json event shape."""
    from builder.formats import ccel
    out = []
    for ev in log.events:
        if ev.event_type == ccel.EventType.EV_NO_ACTION or ev.rtmr is None:
            continue
        d = ev.digest(ccel.TPM_ALG_SHA384)
        out.append({"register": f"rtmr{ev.rtmr}", "event_type": ev.type_name,
                    "description": ev.describe(), "digest": d.hex() if d else "",
                    "number": ev.number, "offset": ev.offset, "data": ev.data})
    return out


def check_event_data(events: list[dict]) -> list[Check]:
    """Each self-describing event's digest against its own data: catches a log whose data was
    altered after the fact (the first such event is named)."""
    checked = 0
    for e in events:
        want = _digest_from_data(e["event_type"], e["data"])
        if want is None:
            continue
        checked += 1
        if want.hex() != e["digest"]:
            return [Check("log event data", FAIL, f"log #{e['number']} @0x{e['offset']:x} "
                          f"{e['register']} {e['event_type']} {e['description']!r}: its data does "
                          "not hash to the digest it extended", want.hex(), e["digest"])]
    return [Check("log event data", OK, f"{checked} self-describing events hash to their "
                  f"digests ({len(events) - checked} others carry no hashable data)")]


def check_tdx_quote(out_path: str | Path, quote_bytes: bytes,
                    ccel_table: bytes | None = None, ccel_data: bytes | None = None) -> Verdict:
    from builder.formats import ccel, evidence, tdx_quote
    out = load_out(out_path)
    v = Verdict(f"verify {out.path.name} against TDX evidence")
    kind = evidence.detect(quote_bytes)
    if kind == "tdx-quote":
        body = tdx_quote.parse_quote(quote_bytes).body
        v.add(Check("evidence", INFO, "TDX quote (its PCK signature is not verified here)"))
    elif kind == "tdreport":
        body = tdx_quote.parse_tdreport(quote_bytes).measurements
        v.add(Check("evidence", INFO, "TDREPORT (unsigned)"))
    else:
        raise CCBuildError("not a TDX quote (v4/v5) or TDREPORT", "--tdx-quote")
    rec = (out.measurements or {}).get("tdx")
    if rec is None:
        v.add(Check("tdx", FAIL, "measurements.json has no tdx record (not a TDX build?)"))
        return v
    v.add(Check("mrtd", OK if body.mrtd.hex() == rec["mrtd"] else FAIL, "MRTD",
                rec["mrtd"], body.mrtd.hex()))
    for i in range(4):
        want = rec.get(f"rtmr{i}")
        got = body.rtmrs[i].hex()
        if want is None:
            v.add(Check(f"rtmr{i}", SKIP, "not predicted: " + rec.get(f"rtmr{i}_reason", ""),
                        None, got))
        else:
            v.add(Check(f"rtmr{i}", OK if want == got else FAIL, f"RTMR{i}", want, got))
    init = (out.measurements or {}).get("initdata")
    if isinstance(init, dict) and init.get("tdx_mrconfigid"):
        want_cfg, why = bytes.fromhex(init["tdx_mrconfigid"]), "initdata MRCONFIGID"
    else:
        want_cfg, why = bytes(48), "no initdata in the build: MRCONFIGID must be zero"
    v.add(Check("mrconfigid", OK if body.mrconfigid == want_cfg else FAIL, why,
                want_cfg.hex(), body.mrconfigid.hex()))
    if body.debug:
        v.add(Check("td_attributes", FAIL, "DEBUG is set: the host can read TD memory"))
    if ccel_data is None:
        return v
    if ccel_table is not None:
        table = ccel.parse_ccel_table(ccel_table)
        v.add(Check("ccel table", OK if table.cc_type == 2 and table.checksum_valid else FAIL,
                    f"CC type {table.cc_type_name}, checksum "
                    f"{'valid' if table.checksum_valid else 'INVALID'}"))
    log = ccel.parse_event_log(ccel_data)
    events = log_events(log)
    regs = ccel.replay(log)
    for i in range(4):
        same = regs[i] == body.rtmrs[i]
        v.add(Check(f"log replay rtmr{i}", OK if same else FAIL,
                    "the event log replays to the quote's value" if same
                    else "the event log does not replay to the quote's value (log and quote "
                    "disagree)", body.rtmrs[i].hex(), regs[i].hex()))
    v.add(*check_event_data(events))
    expected = rec.get("events", [])
    known = [i for i in range(4) if rec.get(f"rtmr{i}") is not None]
    v.add(*[replace(c, item="log " + c.item)
            for c in diff_event_lists(expected, events, known, "the log has")])
    return v


# --- manifest signature -----------------------------------------------------------------------

def check_signature(out_path: str | Path, pubkey_pem: bytes,
                    pubkey_where: str = "--pubkey") -> Verdict:
    from builder.emit.signature import verify_manifest
    out = load_out(out_path)
    v = Verdict(f"verify {out.path.name}: manifest signature")
    e = out.entries.get(SIGNATURE_FILE)
    if e is None:
        v.add(Check("signature", FAIL, f"{SIGNATURE_FILE} is missing (build with --sign-key)"))
    elif e.kind != "file":
        v.add(Check("signature", FAIL, f"{SIGNATURE_FILE} is {e.kind}, not a regular file"))
    elif out.manifest_raw is None:
        v.add(Check("signature", FAIL, "manifest.json is missing"))
    else:
        ok, what = verify_manifest(out.manifest_raw, out.artifact(SIGNATURE_FILE), pubkey_pem,
                                   pubkey_where)
        v.add(Check("signature", OK if ok else FAIL, what))
    return v
