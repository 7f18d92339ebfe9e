"""Which launch reproduces a reported SEV-SNP MEASUREMENT? A search of the launch space.

Given the firmware, a set of kernel-hashes variants (command-line spellings, with or without the
initrd, no kernel hashes at all) and the 48-byte MEASUREMENT of a report, find the vCPU count,
CPU signature, VMM and guest features (SEV_FEATURES) whose launch digest equals it.

The digest is a chain (see :mod:`builder.measure.snp`), so the search never recomputes a digest:
- the prefix (firmware pages, then the metadata pages with the hashes-table page) is computed once
  per (hashes variant, VMM), the firmware pages once in all;
- each distinct VMSA page (it depends on VMM, CPU signature, guest features, BSP or AP) is hashed
  once; signatures that give the same pages (EC2 and GCE do not put the signature in the VMSA)
  share one chain;
- the vCPU axis is incremental: digest(N+1) = SHA-384(digest(N) | AP VMSA suffix), one SHA-384 of
  0x70 bytes per candidate, compared with the target at every N.

Axes by default (:data:`DEFAULT_SPACE`):
- vCPUs 1..512;
- CPU signatures: :func:`builder.measure.cpu.known_signatures` (the QEMU EPYC models and the real
  EPYC parts with SEV-SNP under ``-cpu host``);
- VMMs qemu, ec2, gce;
- guest features: SNPActive (bit 0) with every subset of :data:`HOST_FEATURE_BITS`. SEV_FEATURES
  bits (AMD64 APM vol. 2, "SEV_FEATURES" field of the VMSA, offset 0x3B0; Linux
  ``MSR_AMD64_SNP_*`` gives the same bits shifted by 2 in SEV_STATUS) are in :data:`FEATURE_BITS`.
  A host sets them in the VMSA; a Linux guest terminates at boot (``snp_check_features``) when a bit
  of ``SNP_FEATURES_IMPL_REQ`` is set that it does not implement (``SNP_FEATURES_PRESENT``:
  DebugSwap, SecureTSC, SecureAVIC), so no report can come from such a launch. The default set is
  therefore the bits a Linux guest runs with: those it implements (DebugSwap, SecureTSC,
  SecureAVIC) and those that need no guest support (PreventHostIBS, BTBIsolation, IBSVirt,
  SMTProtection, IBPBOnEntry): 2**8 = 256 values. vTOM, ReflectVC, RestrictedInjection,
  AlternateInjection, VmplSSS, VmgexitParameter and VmsaRegProt are for paravisor/SVSM guests; pass
  ``guest_features=feature_combinations(ALL_FEATURE_BITS)`` (or any list) to search them too.

Order: hashes variants as given, then VMMs, then guest features by number of bits set (0x1, then
0x21 ...), then CPU signatures, then vCPUs ascending; the first launch in that order that
reproduces the target is reported, with every other searched parameter that gives the very same
digest (equivalent signatures, variants with the same hashes page).
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
from dataclasses import dataclass, field

from builder.errors import CCBuildError
from builder.measure.cpu import known_signatures, signature_names
from builder.measure.sev_hashes import KernelHashes
from builder.measure.snp import (
    LD_SIZE,
    SEV_FEATURES_SNP_ACTIVE,
    SnpParams,
    check_params,
    inspect_firmware,
    metadata_prefix,
    ovmf_hash,
    vmsa_digests,
    vmsa_suffix,
)
from builder.measure.vmsa import Vmm

MAX_SEARCH_VCPUS = 512

# SEV_FEATURES bits (VMSA offset 0x3B0), AMD64 APM vol. 2 "SEV_FEATURES"; the SEV_STATUS MSR
# (Linux arch/x86/include/asm/msr-index.h MSR_AMD64_SNP_*_BIT) carries bit n at n + 2.
FEATURE_BITS: dict[str, int] = {
    "SNPActive": 1 << 0,
    "vTOM": 1 << 1,
    "ReflectVC": 1 << 2,
    "RestrictedInjection": 1 << 3,
    "AlternateInjection": 1 << 4,
    "DebugSwap": 1 << 5,
    "PreventHostIBS": 1 << 6,
    "BTBIsolation": 1 << 7,
    "VmplSSS": 1 << 8,
    "SecureTSC": 1 << 9,
    "VmgexitParameter": 1 << 10,
    "IBSVirt": 1 << 12,
    "VmsaRegProt": 1 << 14,
    "SMTProtection": 1 << 15,
    "SecureAVIC": 1 << 16,
    "IBPBOnEntry": 1 << 21,
}
# Bits a host can set for a Linux guest that still boots and asks for a report (module doc).
HOST_FEATURE_BITS: tuple[int, ...] = tuple(FEATURE_BITS[n] for n in (
    "DebugSwap", "PreventHostIBS", "BTBIsolation", "SecureTSC", "IBSVirt", "SMTProtection",
    "SecureAVIC", "IBPBOnEntry"))
ALL_FEATURE_BITS: tuple[int, ...] = tuple(b for n, b in FEATURE_BITS.items() if n != "SNPActive")
_ALL_VMMS = (Vmm.QEMU, Vmm.EC2, Vmm.GCE)
_sha384 = hashlib.sha384


def feature_names(features: int) -> list[str]:
    """The named SEV_FEATURES bits of ``features`` (unknown bits as hex)."""
    names = [n for n, b in FEATURE_BITS.items() if features & b]
    rest = features & ~sum(FEATURE_BITS.values())
    return names + ([f"0x{rest:x}"] if rest else [])


def feature_combinations(bits: tuple[int, ...] = HOST_FEATURE_BITS) -> tuple[int, ...]:
    """SNPActive with every subset of ``bits``, fewest bits first (0x1, 0x21, ...)."""
    out = []
    for k in range(len(bits) + 1):
        for combo in itertools.combinations(bits, k):
            out.append(SEV_FEATURES_SNP_ACTIVE | sum(combo))
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class SearchSpace:
    """The launch parameters searched (besides the hashes variants)."""

    vcpus: tuple[int, ...] = tuple(range(1, MAX_SEARCH_VCPUS + 1))
    vcpu_sigs: tuple[int, ...] = tuple(known_signatures())
    vmms: tuple[Vmm, ...] = _ALL_VMMS
    guest_features: tuple[int, ...] = feature_combinations()


DEFAULT_SPACE = SearchSpace()


@dataclass(frozen=True)
class HashesVariant:
    """One way the kernel, initrd and command line may have been given to the VMM.

    ``hashes`` None: no kernel hashes (QEMU ``kernel-hashes=off`` or no ``-kernel``), the
    KERNEL_HASHES section is measured as zero pages."""

    label: str
    hashes: KernelHashes | None
    cmdline: str | None = None   # the -append string (None: no -append)
    initrd: bool = False         # whether the initrd was given


def standard_variants(cmdline: str | None, *, kernel: bytes | None = None,
                      kernel_sha256: bytes | None = None, initrd: bytes | None = None,
                      initrd_sha256: bytes | None = None,
                      extra_cmdlines: tuple[tuple[str, str | None], ...] = (),
                      no_kernel_hashes: bool = True) -> tuple[HashesVariant, ...]:
    """The usual ways a launch departs from the intended one: the command line as given, with a
    trailing newline, with a trailing space, stripped of trailing white space (when it has some),
    no ``-append``, then ``extra_cmdlines`` (label, string), each with the initrd (when one is
    given) and without it; last, no kernel hashes at all. Kernel and initrd are given as bytes or
    as their SHA-256 (exactly one of ``kernel``/``kernel_sha256``; at most one for the initrd).
    Variants whose hashes table is the same are kept (their labels are reported together)."""
    if (kernel is None) == (kernel_sha256 is None):
        raise CCBuildError("give the kernel as bytes or as its SHA-256, not both or neither")
    if initrd is not None and initrd_sha256 is not None:
        raise CCBuildError("give the initrd as bytes or as its SHA-256, not both")
    k256 = hashlib.sha256(kernel).digest() if kernel is not None else kernel_sha256
    i256 = hashlib.sha256(initrd).digest() if initrd is not None else initrd_sha256
    for name, d in (("kernel", k256), ("initrd", i256)):
        if d is not None and len(d) != 32:
            raise CCBuildError(f"{name} SHA-256 has {len(d)} bytes, expected 32")

    lines: list[tuple[str, str | None]] = []
    if cmdline is not None:
        lines += [("cmdline", cmdline), ("cmdline + trailing newline", cmdline + "\n"),
                  ("cmdline + trailing space", cmdline + " ")]
        if cmdline != cmdline.rstrip():
            lines.append(("cmdline stripped of trailing white space", cmdline.rstrip()))
    lines.append(("no -append", None))
    lines += list(extra_cmdlines)
    initrds = [True, False] if i256 is not None else [False]
    out = []
    for label, line in lines:
        for with_initrd in initrds:
            hashes = KernelHashes.of_digests(k256, i256 if with_initrd else None, line)
            suffix = "" if with_initrd or i256 is None else ", no initrd"
            out.append(HashesVariant(label + suffix, hashes, line, with_initrd))
    if no_kernel_hashes:
        out.append(HashesVariant("no kernel hashes (kernel-hashes=off)", None, None, False))
    return tuple(out)


@dataclass(frozen=True)
class SnpMatch:
    """The launch found. ``vcpu_sig`` is None when the VMM does not measure the signature (EC2,
    GCE): every searched signature then matches and ``vcpu_sigs`` lists them."""

    vcpus: int
    vmm: Vmm
    guest_features: int
    vcpu_sig: int | None
    vcpu_sigs: tuple[int, ...]
    vcpu_types: tuple[str, ...]       # names of the signatures (QEMU models, host:<part>)
    variant: HashesVariant            # the first variant in the order given
    variants: tuple[HashesVariant, ...]  # every variant with the same hashes page

    def as_dict(self) -> dict:
        """Typed as in measurements.json: ints, lowercase hex strings."""
        return {"vcpus": self.vcpus,
                "vcpu_sig": None if self.vcpu_sig is None else f"0x{self.vcpu_sig:x}",
                "vcpu_sigs": [f"0x{s:x}" for s in self.vcpu_sigs],
                "vcpu_type": list(self.vcpu_types), "vmm": self.vmm.value,
                "guest_features": f"0x{self.guest_features:x}",
                "guest_feature_names": feature_names(self.guest_features),
                "cmdline": self.variant.cmdline, "initrd": self.variant.initrd,
                "kernel_hashes": self.variant.hashes is not None,
                "variant": self.variant.label, "variants": [v.label for v in self.variants]}


@dataclass(frozen=True)
class SnpSearchResult:
    match: SnpMatch | None
    searched: dict[str, int]   # size of each axis, "candidates" (their product), "digests"
    examined: int              # candidate launches before (and including) the match, in order
    digests: int = field(default=0)  # SHA-384 chain steps computed for them

    def as_dict(self) -> dict:
        return {"match": None if self.match is None else self.match.as_dict(),
                "searched": dict(self.searched), "examined": self.examined}


# --- the search ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Chain:
    """One chain to walk: prefix of a (page, VMM), and the VMSA suffixes of a signature group."""

    prefix_key: int
    bsp: bytes
    ap: bytes | None
    vmm: Vmm
    features: int
    sigs: tuple[int, ...]


def _walk(prefix: bytes, bsp: bytes, ap: bytes | None, top: int, target: bytes) -> int:
    """The vCPU count 1..top whose digest is ``target``, or 0."""
    sha = _sha384
    ld = sha(prefix + bsp).digest()
    if ld == target:
        return 1
    if ap is None:
        return 0
    for n in range(2, top + 1):
        ld = sha(ld + ap).digest()
        if ld == target:
            return n
    return 0


# Worker state, set before the pool forks (read-only in the workers).
_W: dict = {}


def _walk_chunk(bounds: tuple[int, int]) -> tuple[int, int]:
    """First (chain index, vCPU count) with a hit in chains[lo:hi], or (-1, 0)."""
    chains, prefixes, top, target = _W["chains"], _W["prefixes"], _W["top"], _W["target"]
    for i in range(*bounds):
        c = chains[i]
        n = _walk(prefixes[c.prefix_key], c.bsp, c.ap, top, target)
        if n:
            return i, n
    return -1, 0


def _parallel(chains: list[_Chain], prefixes: list[bytes], top: int, target: bytes,
              workers: int, wanted: set[int]) -> tuple[int, int]:
    """Walk the chains in order on ``workers`` processes; the first hit in chain order wins, so
    the answer is the serial one. Hits at a vCPU count outside ``wanted`` are ignored by
    re-walking serially from there (they cannot happen with real evidence)."""
    _W.update(chains=chains, prefixes=prefixes, top=top, target=target)
    step = max(1, min(64, len(chains) // (workers * 8) or 1))
    bounds = [(lo, min(lo + step, len(chains))) for lo in range(0, len(chains), step)]
    try:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers) as pool:
            for i, n in pool.imap(_walk_chunk, bounds):
                if i >= 0:
                    if n in wanted:
                        return i, n
                    return _serial(chains, prefixes, top, target, wanted, i)
    finally:
        _W.clear()
    return -1, 0


def _serial(chains: list[_Chain], prefixes: list[bytes], top: int, target: bytes,
            wanted: set[int], start: int = 0) -> tuple[int, int]:
    full = len(wanted) == top
    for i in range(start, len(chains)):
        c = chains[i]
        if full:
            n = _walk(prefixes[c.prefix_key], c.bsp, c.ap, top, target)
            if n:
                return i, n
            continue
        # A sparse vCPU set: walk the whole chain, keep only the counts searched.
        sha, ld = _sha384, _sha384(prefixes[c.prefix_key] + c.bsp).digest()
        if ld == target and 1 in wanted:
            return i, 1
        if c.ap is not None:
            for n in range(2, top + 1):
                ld = sha(ld + c.ap).digest()
                if ld == target and n in wanted:
                    return i, n
    return -1, 0


def search(fw: bytes, variants: tuple[HashesVariant, ...] | list[HashesVariant], target: bytes,
           space: SearchSpace = DEFAULT_SPACE, *, ovmf_digest: bytes | None = None,
           workers: int | None = 1) -> SnpSearchResult:
    """Search ``space`` x ``variants`` for the launch of ``fw`` whose digest is ``target``.

    ``ovmf_digest``: the firmware-only digest (mode snp:ovmf-hash) when ``fw`` stands only for the
    SEV metadata layout of the firmware launched. ``workers``: processes to walk the chains on
    (None: os.cpu_count()); the result does not depend on it (the first hit in search order wins),
    and 1 (default) is as fast as 2 on a machine whose other core is busy. Raises CCBuildError for a firmware no SNP guest can launch from, a target that is not
    48 bytes, or an empty axis."""
    if len(target) != LD_SIZE:
        raise CCBuildError(f"MEASUREMENT has {len(target)} bytes, expected {LD_SIZE}")
    variants = tuple(variants)
    if not (variants and space.vcpus and space.vcpu_sigs and space.vmms and space.guest_features):
        raise CCBuildError("the SNP search needs at least one hashes variant, vCPU count, CPU "
                           "signature, VMM and guest-features value")
    fwi = inspect_firmware(fw)
    wanted = set(space.vcpus)
    top = max(wanted)
    vmms = tuple(dict.fromkeys(Vmm(v) for v in space.vmms))
    sigs = tuple(dict.fromkeys(space.vcpu_sigs))
    features = tuple(dict.fromkeys(space.guest_features))
    for gf in features:
        check_params(fwi, SnpParams(top if fwi.ap_eip is not None else 1, sigs[0], vmms[0], gf))
    if min(wanted) < 1:
        raise CCBuildError(f"{min(wanted)} vCPUs is out of range", hint=f"1..{top}")
    if fwi.ap_eip is None:
        top, wanted = 1, wanted & {1}
    for v in variants:
        check_params(fwi, SnpParams(1, sigs[0], vmms[0], features[0], v.hashes))
    if ovmf_digest is not None and len(ovmf_digest) != LD_SIZE:
        raise CCBuildError(f"ovmf hash has {len(ovmf_digest)} bytes, expected {LD_SIZE}")

    # Variants with the same hashes page launch the same pages: one prefix each.
    pages: dict[bytes | None, list[HashesVariant]] = {}
    offset = (fwi.table_gpa or 0) & 0xFFF
    for v in variants:
        pages.setdefault(None if v.hashes is None else v.hashes.page(offset), []).append(v)
    groups = list(pages.values())

    fw_ld = ovmf_digest if ovmf_digest is not None else ovmf_hash(fw)
    prefixes: list[bytes] = []
    prefix_of: list[tuple[tuple[HashesVariant, ...], Vmm]] = []
    for group in groups:
        for vmm in vmms:
            prefixes.append(metadata_prefix(fwi, fw_ld, vmm, group[0].hashes))
            prefix_of.append((tuple(group), vmm))

    # Each distinct (BSP, AP) VMSA pair once per (VMM, features); signatures grouped by it.
    order = sorted(features, key=lambda f: (bin(f).count("1"), f))
    vmsa: dict[tuple[Vmm, int], list[tuple[bytes, bytes | None, tuple[int, ...]]]] = {}
    for vmm in vmms:
        for gf in order:
            by_pair: dict[tuple[bytes, bytes | None], list[int]] = {}
            for sig in sigs:
                by_pair.setdefault(vmsa_digests(fwi, vmm, sig, gf), []).append(sig)
            vmsa[vmm, gf] = [(vmsa_suffix(b), None if a is None else vmsa_suffix(a), tuple(s))
                             for (b, a), s in by_pair.items()]

    chains: list[_Chain] = []
    for key, (_, vmm) in enumerate(prefix_of):
        for gf in order:
            for bsp, ap, group_sigs in vmsa[vmm, gf]:
                chains.append(_Chain(key, bsp, ap, vmm, gf, group_sigs))

    n_workers = (os.cpu_count() or 1) if workers is None else workers
    if n_workers > 1 and len(chains) >= 4 * n_workers:
        hit, n = _parallel(chains, prefixes, top, target, n_workers, wanted)
    else:
        hit, n = _serial(chains, prefixes, top, target, wanted)

    per_chain = len(wanted)
    searched = {"variants": len(variants), "hashes_pages": len(groups), "vmms": len(vmms),
                "guest_features": len(features), "vcpu_sigs": len(sigs), "vcpus": len(wanted)}
    searched["candidates"] = len(variants) * len(vmms) * len(sigs) * len(features) * per_chain
    searched["digests"] = len(chains) * top
    if hit < 0:
        return SnpSearchResult(None, searched, searched["candidates"], searched["digests"])

    c = chains[hit]
    variants_hit, vmm = prefix_of[c.prefix_key]
    examined = sum(len(prefix_of[chains[i].prefix_key][0]) * len(chains[i].sigs) * per_chain
                   for i in range(hit))
    examined += len(variants_hit) * len(c.sigs) * sum(1 for k in wanted if k <= n)
    names = tuple(dict.fromkeys(name for s in c.sigs for name in signature_names(s)))
    match = SnpMatch(vcpus=n, vmm=vmm, guest_features=c.features,
                     vcpu_sig=c.sigs[0] if len(c.sigs) == 1 else None, vcpu_sigs=c.sigs,
                     vcpu_types=names, variant=variants_hit[0], variants=variants_hit)
    return SnpSearchResult(match, searched, examined, hit * top + n)

