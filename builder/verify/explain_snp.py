"""Why does an SEV-SNP report not match? The launch that reproduces its MEASUREMENT, and how it
differs from the published reference values (``ccbuild explain --snp-report``).

The caller gives the report (parsed), the launch inputs (firmware bytes, or its firmware-only
digest with the bytes giving only the SEV metadata layout; the kernel and initrd as SHA-256; the
command line) and, when it has OUT, the published values of measurements.json. This module
builds the command-line variants (the given line, trailing newline/space, no ``-append``, each
Kata release's composition, with and without the initrd, no kernel hashes), widens the default
search space with the published values and the report's own CPUID signature, runs
:func:`builder.measure.snp_search.search` and turns its answer into sentences:

- a match: what was launched, and each axis on which it differs from measurements.json (vCPUs,
  CPU signature, VMM, guest features, command line with the first differing byte, initrd, kernel
  hashes), or "this is published entry N";
- no match: the size of every axis searched, and the inputs that are then the likely culprits.

No file is read here: the CLI (builder/cli/explain.py) reads and caps every input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from builder.formats.snp_report import SnpReport
from builder.measure.cpu import cpu_signature, signature_names
from builder.measure.snp_search import (
    ALL_FEATURE_BITS,
    DEFAULT_SPACE,
    MAX_SEARCH_VCPUS,
    SearchSpace,
    SnpMatch,
    SnpSearchResult,
    feature_combinations,
    feature_names,
    search,
    standard_variants,
)

EC2_GCE_NOTE = ("the VMM ({vmm}) does not put the CPU signature in the VMSA, so the measurement "
                "does not tell it; every searched signature gives this digest")


@dataclass(frozen=True)
class SnpInputs:
    """The launch inputs explain searches around. ``cmdline`` None: no ``-append``.
    ``reference_cmdline``: OUT's cmdline.txt (what the command line is compared with).
    ``extra_cmdlines``: (label, command line) further variants (Kata compositions, OUT's line
    when ``--append`` replaced it). ``sources``: where each input came from, for the text."""

    firmware: bytes
    kernel_sha256: bytes
    initrd_sha256: bytes | None
    cmdline: str | None
    ovmf_digest: bytes | None = None
    reference_cmdline: str | None = None
    extra_cmdlines: tuple[tuple[str, str | None], ...] = ()
    sources: dict[str, str] = field(default_factory=dict)
    overridden: tuple[str, ...] = ()   # inputs given on the command line in place of OUT's


@dataclass(frozen=True)
class Published:
    """The reference values of measurements.json (SNP entries and the Kata pods)."""

    entries: tuple[dict, ...]
    kata: dict | None = None

    @property
    def vcpus(self) -> list[int]:
        vals = {e["vcpus"] for e in self.entries}
        vals |= {p["vcpus"] for p in (self.kata or {}).get("pods", [])}
        return sorted(vals)

    @property
    def vcpu_sigs(self) -> list[int]:
        return list(dict.fromkeys(int(e["vcpu_sig"], 16) for e in self.entries))

    @property
    def vmms(self) -> list[str]:
        return list(dict.fromkeys(e["vmm"] for e in self.entries))

    @property
    def guest_features(self) -> list[int]:
        vals = [int(e["guest_features"], 16) for e in self.entries]
        for p in (self.kata or {}).get("pods", []):
            vals += [int(k, 16) for k in (p.get("launch_digests") or {})]
        return list(dict.fromkeys(vals))

    def type_name(self, sig: int) -> str | None:
        return next((e["vcpu_type"] for e in self.entries if int(e["vcpu_sig"], 16) == sig), None)

    def sig_text(self) -> str:
        return ", ".join(f"0x{s:x} ({self.type_name(s)})" for s in self.vcpu_sigs)

    def as_dict(self) -> dict:
        d = {"entries": len(self.entries), "vcpus": self.vcpus,
             "vcpu_types": list(dict.fromkeys(e["vcpu_type"] for e in self.entries)),
             "vcpu_sigs": [f"0x{s:x}" for s in self.vcpu_sigs], "vmms": self.vmms,
             "guest_features": [f"0x{f:x}" for f in self.guest_features]}
        if self.kata:
            d["kata_version"] = self.kata.get("version")
            d["kata_pod_cpus"] = [p["pod_cpus"] for p in self.kata.get("pods", [])]
        return d


def published_from(measurements: dict | None) -> Published | None:
    """The published values of a schema-checked measurements.json (None without SNP entries)."""
    if not measurements:
        return None
    entries = tuple(measurements.get("snp") or ())
    kata = measurements.get("kata")
    if not entries and not (kata and kata.get("pods")):
        return None
    return Published(entries, kata)


@dataclass(frozen=True)
class SnpExplanation:
    measurement: bytes
    result: SnpSearchResult
    inputs: SnpInputs
    published: Published | None
    signature: str | None           # "VCEK signature verifies ..." or None (not checked)
    differences: tuple[str, ...]    # one sentence per axis that differs from OUT
    summary: str                    # one line
    culprits: tuple[str, ...]       # no match: what to check, in order
    seconds: float
    published_entry: int | None = None   # 1-based measurements.json entry the match is
    variant_labels: tuple[str, ...] = ()  # every command-line/initrd variant searched

    @property
    def found(self) -> bool:
        return self.result.match is not None

    def match_dict(self) -> dict | None:
        m = self.result.match
        if m is None:
            return None
        d = m.as_dict()
        names = list(m.vcpu_types)
        measured = m.vcpu_sig is not None
        d["vcpu_type"] = None
        if measured:
            pub = self.published.type_name(m.vcpu_sig) if self.published else None
            d["vcpu_type"] = pub or (names[0] if names else None)
        # every name the signature goes by, the measurements.json one first
        d["vcpu_types"] = [n for n in dict.fromkeys([d["vcpu_type"], *names]) if n]
        d["vcpu_sig_measured"] = measured
        if not measured:
            d["vcpu_sig_note"] = EC2_GCE_NOTE.format(vmm=m.vmm.value)
        d["published_entry"] = self.published_entry
        return d

    def as_dict(self) -> dict:
        searched = dict(self.result.searched)
        searched["variant_labels"] = list(self.variant_labels)
        searched["examined"] = self.result.examined
        searched["seconds"] = round(self.seconds, 3)
        return {"measurement": self.measurement.hex(), "signature": self.signature,
                "found": self.found, "summary": self.summary, "match": self.match_dict(),
                "differences": list(self.differences), "searched": searched,
                "published": None if self.published is None else self.published.as_dict(),
                "culprits": list(self.culprits), "inputs": dict(self.inputs.sources)}

    def text(self) -> str:
        lines = [f"SEV-SNP MEASUREMENT {self.measurement.hex()}",
                 f"  signature: {self.signature or 'not checked (no --vcek): the report is NOT authenticated'}"]
        for k, v in self.inputs.sources.items():
            lines.append(f"  {k}: {v}")
        s = self.result.searched
        if self.found:
            lines.append(f"searched {self.result.examined:,} launches in {self.seconds:.1f} s "
                         f"until the match, of a space of {s['candidates']:,} ({_axes(s)})")
        else:
            lines.append(f"searched {s['candidates']:,} launches ({_axes(s)}) in "
                         f"{self.seconds:.1f} s")
        lines.append("")
        lines.append(self.summary)
        m = self.result.match
        if m is not None:
            d = self.match_dict()
            names = [n for n in dict.fromkeys([d["vcpu_type"], *m.vcpu_types]) if n]
            cpu = (f"signature {d['vcpu_sig']} ({', '.join(names) or 'a part ccbuild does not name'})"
                   if m.vcpu_sig is not None else
                   f"signature not measured ({EC2_GCE_NOTE.format(vmm=m.vmm.value)})")
            lines += ["  launch:",
                      f"    vCPUs           {m.vcpus}",
                      f"    CPU             {cpu}",
                      f"    VMM             {m.vmm.value}",
                      f"    guest features  0x{m.guest_features:x} "
                      f"({', '.join(feature_names(m.guest_features))})",
                      f"    command line    {_cmdline_text(m.variant.cmdline)}",
                      f"    variant         {m.variant.label}"
                      + (f" (same hashes: {'; '.join(v.label for v in m.variants[1:])})"
                         if len(m.variants) > 1 else "")]
            if self.differences:
                lines.append("  differs from the published values:")
                lines += [f"    - {d}" for d in self.differences]
        else:
            lines.append("  likely culprits, in the order to check:")
            lines += [f"    - {c}" for c in self.culprits]
        return "\n".join(lines)


def _axes(s: dict) -> str:
    return (f"{s['variants']} command-line/initrd variants ({s['hashes_pages']} distinct hashes "
            f"pages) x {s['vmms']} VMMs x {s['vcpu_sigs']} CPU signatures x "
            f"{s['guest_features']} guest-feature values x {s['vcpus']} vCPU counts")


def _cmdline_text(cmdline: str | None) -> str:
    if cmdline is None:
        return "(no -append)"
    return repr(cmdline) if len(cmdline) <= 120 else repr(cmdline[:117]) + f"... ({len(cmdline)} characters)"


def first_difference(a: str, b: str) -> str:
    """Where UTF-8 strings ``a`` (found) and ``b`` (published) first differ, in words."""
    x, y = a.encode(), b.encode()
    n = next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), min(len(x), len(y)))
    if n == len(x) == len(y):
        return "identical"
    if n == len(y):
        return f"it has {len(x) - n} more byte(s) at the end: {x[n:][:40]!r}"
    if n == len(x):
        return f"it lacks the last {len(y) - n} byte(s): {y[n:][:40]!r}"
    lo = max(0, n - 12)
    return (f"first difference at byte {n}: {x[n:n + 1]!r} where cmdline.txt has "
            f"{y[n:n + 1]!r} (...{x[lo:n + 12]!r} vs ...{y[lo:n + 12]!r})")


def space_for(published: Published | None, report: SnpReport | None, *,
              max_vcpus: int = MAX_SEARCH_VCPUS, all_features: bool = False,
              extra_sigs: tuple[int, ...] = ()) -> SearchSpace:
    """The default space, widened with the published CPU signatures and guest features, the
    report's CPUID signature (version >= 3: the host's part) and ``extra_sigs``."""
    sigs = list(DEFAULT_SPACE.vcpu_sigs) + list(extra_sigs)
    feats = list(feature_combinations(ALL_FEATURE_BITS) if all_features
                 else DEFAULT_SPACE.guest_features)
    if published is not None:
        sigs += published.vcpu_sigs
        feats += [f for f in published.guest_features if f & 1]
    if report is not None and report.cpuid_fam_id is not None and report.cpuid_fam_id:
        try:
            sigs.append(cpu_signature(report.cpuid_fam_id, report.cpuid_mod_id or 0,
                                      report.cpuid_step or 0))
        except Exception:   # noqa: BLE001 -- an impossible CPUID in a report adds nothing
            pass
    return replace(DEFAULT_SPACE, vcpus=tuple(range(1, max_vcpus + 1)),
                   vcpu_sigs=tuple(dict.fromkeys(sigs)), guest_features=tuple(dict.fromkeys(feats)))


def _join(vals) -> str:
    return ",".join(str(v) for v in vals)


def _differences(m: SnpMatch, inputs: SnpInputs, published: Published | None
                 ) -> tuple[list[str], list[str], int | None]:
    """(sentences, short phrases for the summary, the published entry it is)."""
    diffs: list[str] = []
    short: list[str] = []
    entry = None
    if published is not None:
        if m.vcpus not in published.vcpus:
            diffs.append(f"vCPUs: launched with {m.vcpus}; measurements.json has "
                         f"{_join(published.vcpus)}")
            short.append(f"{m.vcpus} vCPUs")
        if m.vcpu_sig is not None and m.vcpu_sig not in published.vcpu_sigs:
            names = ", ".join(signature_names(m.vcpu_sig)) or "a part ccbuild does not name"
            diffs.append(f"CPU signature: launched with 0x{m.vcpu_sig:x} ({names}); "
                         f"measurements.json has {published.sig_text()}")
            short.append(f"CPU signature 0x{m.vcpu_sig:x} ({names})")
        if m.vmm.value not in published.vmms:
            diffs.append(f"VMM: launched by {m.vmm.value}; measurements.json has "
                         f"{_join(published.vmms)}")
            short.append(f"VMM {m.vmm.value}")
        if m.guest_features not in published.guest_features:
            extra = feature_names(m.guest_features & ~1) or ["no bit but SNPActive"]
            diffs.append(f"guest features: launched with 0x{m.guest_features:x} "
                         f"({', '.join(extra)}); measurements.json has "
                         f"{_join(f'0x{f:x}' for f in published.guest_features)}")
            short.append(f"guest features 0x{m.guest_features:x} ({', '.join(extra)})")
        for i, e in enumerate(published.entries):
            if (e["vcpus"], e["vmm"], int(e["guest_features"], 16)) == \
                    (m.vcpus, m.vmm.value, m.guest_features) and \
                    (m.vcpu_sig is None or int(e["vcpu_sig"], 16) == m.vcpu_sig or
                     int(e["vcpu_sig"], 16) in m.vcpu_sigs):
                entry = i + 1
                break
    v = m.variant
    ref = inputs.reference_cmdline
    kata_pub = (published.kata or {}).get("version") if published and published.kata else None
    if v.hashes is None:
        diffs.append("kernel hashes: launched without them (QEMU kernel-hashes=off, or no "
                     "-kernel): the KERNEL_HASHES page was measured as zeros, so the kernel, "
                     "initrd and command line are NOT measured")
        short.append("kernel-hashes=off")
    else:
        if ref is not None and v.cmdline != ref:
            where = first_difference(v.cmdline or "", ref) if v.cmdline is not None else \
                "no -append at all"
            label = v.label.removesuffix(", no initrd")
            if inputs.sources.get("cmdline") == "--append" and label.startswith("cmdline"):
                label = "the --append given" + label[len("cmdline"):]
            if label.startswith("Kata "):
                more = f"; OUT was composed for Kata {kata_pub}" if kata_pub else ""
                diffs.append(f"command line: {label}{more} ({where})")
                short.append(f"the command line of {label}")
            else:
                diffs.append(f"command line: {label}, not cmdline.txt ({where})")
                short.append(f"command line: {label}")
        elif ref is None and inputs.cmdline is not None and v.cmdline != inputs.cmdline:
            diffs.append(f"command line: {v.label.removesuffix(', no initrd')}, not the "
                         f"--append given ({first_difference(v.cmdline or '', inputs.cmdline) if v.cmdline is not None else 'no -append'})")
            short.append(f"command line: {v.label.removesuffix(', no initrd')}")
        if inputs.initrd_sha256 is not None and not v.initrd:
            diffs.append("initrd: launched without -initrd (the hashes table has the SHA-256 "
                         "of nothing for it)")
            short.append("no initrd")
    for name in inputs.overridden:
        src = inputs.sources.get(name, "given")
        if name == "firmware" and inputs.ovmf_digest is not None and "firmware" in src \
                and src.startswith("OUT/"):
            src = f"the firmware of {inputs.sources['ovmf_hash']}"
        diffs.append(f"{name}: {src} was launched, not OUT's")
        short.append(f"another {name}")
    return diffs, short, entry


def _summary(m: SnpMatch, short: list[str], published: Published | None, entry: int | None,
             diffs: list[str]) -> str:
    if not diffs:
        if published is None:
            return (f"FOUND: launched with {m.vcpus} vCPUs, VMM {m.vmm.value}, guest features "
                    f"0x{m.guest_features:x}")
        if entry is not None:
            return (f"FOUND: the report is measurements.json entry {entry} "
                    f"(`ccbuild verify --snp-report` agrees)")
        return ("FOUND: every launch parameter is a published value, but measurements.json has "
                "no entry for this combination")
    tail = ""
    if published is not None:
        pieces = []
        if any(s.endswith("vCPUs") for s in short):
            pieces.append(_join(published.vcpus))
        if any(s.startswith("CPU signature") for s in short):
            pieces.append(_join(f"0x{s:x}" for s in published.vcpu_sigs))
        if any(s.startswith("VMM") for s in short):
            pieces.append(_join(published.vmms))
        if any(s.startswith("guest features") for s in short):
            pieces.append(_join(f"0x{f:x}" for f in published.guest_features))
        if pieces:
            tail = "; measurements.json has " + " and ".join(pieces)
    return "FOUND: launched with " + " and ".join(short) + tail


def _culprits(inputs: SnpInputs, space: SearchSpace, n_variants: int) -> list[str]:
    fw = ("firmware: the firmware bytes launched are not "
          + (inputs.sources.get("firmware", "the firmware given")) +
          " (another OVMF build or version); compare `ccbuild measure snp --mode snp:ovmf-hash` "
          "of the host's file")
    if inputs.ovmf_digest is not None:
        fw = ("firmware: the --ovmf-hash given is not the launched firmware's, or --firmware "
              "does not have its SEV metadata layout")
    out = [fw,
           f"kernel: the launched kernel's SHA-256 is not {inputs.kernel_sha256.hex()} "
           f"({inputs.sources.get('kernel', 'given')})",
           ("initrd: the launched initrd's SHA-256 is not "
            f"{inputs.initrd_sha256.hex()} ({inputs.sources.get('initrd', 'given')})"
            if inputs.initrd_sha256 is not None else
            "initrd: an initrd was launched and none was given (-initrd)"),
           f"command line: the launched -append string is none of the {n_variants} variants "
           "searched (another parameter, a kernel_params annotation, a Kata version not "
           "modelled); give it with --append",
           f"launch parameters outside the space: more than {max(space.vcpus)} vCPUs, a CPU "
           "signature ccbuild does not know (QEMU -cpu with another family/model/stepping), or "
           "guest features outside the bits searched (--all-features adds vTOM, ReflectVC and "
           "the other paravisor bits)"]
    return out


def explain_snp(report: SnpReport, inputs: SnpInputs, published: Published | None = None, *,
                signature: str | None = None, space: SearchSpace | None = None,
                workers: int | None = 1) -> SnpExplanation:
    """Search for the launch of ``inputs`` that gives ``report.measurement`` and explain it."""
    variants = standard_variants(inputs.cmdline, kernel_sha256=inputs.kernel_sha256,
                                 initrd_sha256=inputs.initrd_sha256,
                                 extra_cmdlines=inputs.extra_cmdlines)
    if space is None:
        space = space_for(published, report)
    t = time.perf_counter()
    result = search(inputs.firmware, variants, report.measurement, space,
                    ovmf_digest=inputs.ovmf_digest, workers=workers)
    seconds = time.perf_counter() - t
    m = result.match
    if m is not None:
        diffs, short, entry = _differences(m, inputs, published)
        summary = _summary(m, short, published, entry, diffs)
        culprits: list[str] = []
    else:
        diffs, entry = [], None
        summary = (f"NOT FOUND: no launch of these inputs in the space searched gives this "
                   f"MEASUREMENT ({result.searched['candidates']:,} launches)")
        culprits = _culprits(inputs, space, len(variants))
    return SnpExplanation(report.measurement, result, inputs, published, signature,
                          tuple(diffs), summary, tuple(culprits), seconds, entry,
                          tuple(v.label for v in variants))
