"""vCPU identity for the VMSA: the CPUID Fn0000_0001_EAX signature (family, model, stepping).

AMD CPUID Specification (pub. 25481), Fn0000_0001_EAX: Stepping [3:0], BaseModel [7:4],
BaseFamily [11:8], ExtModel [19:16], ExtFamily [27:20]; Family = BaseFamily + ExtFamily when
BaseFamily is 0xF, Model = ExtModel:BaseModel. The family/model/stepping of QEMU's named EPYC
models are those of target/i386/cpu.c ``builtin_x86_defs``; the ``-vN`` versions change only
features, never the signature.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from builder.errors import CCBuildError

BASE_FAMILY_MAX = 0xF


@dataclass(frozen=True)
class CpuId:
    family: int
    model: int
    stepping: int

    @property
    def signature(self) -> int:
        return cpu_signature(self.family, self.model, self.stepping)


def cpu_signature(family: int, model: int, stepping: int) -> int:
    """Encode family/model/stepping as CPUID Fn0000_0001_EAX."""
    if not (0 <= family <= BASE_FAMILY_MAX + 0xFF and 0 <= model <= 0xFF and 0 <= stepping <= 0xF):
        raise CCBuildError(f"vCPU family {family}, model {model}, stepping {stepping} is out of "
                           "range", hint="family 0..270, model 0..255, stepping 0..15")
    if family > BASE_FAMILY_MAX:
        base_family, ext_family = BASE_FAMILY_MAX, family - BASE_FAMILY_MAX
    else:
        base_family, ext_family = family, 0
    return ((ext_family << 20) | ((model >> 4) << 16) | (base_family << 8)
            | ((model & 0xF) << 4) | stepping)


def decode_signature(sig: int) -> CpuId:
    """Decode CPUID Fn0000_0001_EAX into family/model/stepping."""
    if not 0 <= sig <= 0x0FFF_FFFF:
        raise CCBuildError(f"vCPU signature 0x{sig:x} is out of range", hint="28 bits at most")
    base_family = (sig >> 8) & 0xF
    family = base_family + ((sig >> 20) & 0xFF if base_family == BASE_FAMILY_MAX else 0)
    model = (((sig >> 16) & 0xF) << 4) | ((sig >> 4) & 0xF)
    return CpuId(family, model, sig & 0xF)


# QEMU model name -> (family, model, stepping, highest -vN version known).
QEMU_EPYC_MODELS: dict[str, tuple[CpuId, int]] = {
    "EPYC": (CpuId(23, 1, 2), 5),        # Naples
    "EPYC-Rome": (CpuId(23, 49, 0), 5),
    "EPYC-Milan": (CpuId(25, 1, 1), 3),
    "EPYC-Genoa": (CpuId(25, 17, 0), 2),
    "EPYC-Turin": (CpuId(26, 0, 0), 2),
}
# Old alias kept by QEMU: EPYC-IBPB is EPYC-v2.
_ALIASES = {"EPYC-IBPB": "EPYC-v2"}
_NAME_RE = re.compile(r"^(?P<base>.+?)(?:-v(?P<ver>[1-9][0-9]*))?$")


@dataclass(frozen=True)
class VcpuType:
    name: str  # canonical QEMU spelling
    cpuid: CpuId

    @property
    def signature(self) -> int:
        return self.cpuid.signature


def vcpu_type(name: str) -> VcpuType:
    """Resolve a QEMU CPU model name (EPYC, EPYC-v4, EPYC-Milan-v2, ...; case-insensitive)."""
    canon = {k.lower(): k for k in list(QEMU_EPYC_MODELS) + list(_ALIASES)}
    m = _NAME_RE.match(name.strip())
    base = canon.get(m.group("base").lower()) if m else None
    if base in _ALIASES and m.group("ver") is None:
        base = _ALIASES[base]
        m = _NAME_RE.match(base)
        base = m.group("base")
    if base not in QEMU_EPYC_MODELS:
        raise CCBuildError(f"unknown vCPU type {name!r}",
                           hint="one of " + ", ".join(supported_vcpu_types())
                           + "; or give --vcpu-sig or --vcpu-family/--vcpu-model/--vcpu-stepping")
    cpuid, versions = QEMU_EPYC_MODELS[base]
    ver = m.group("ver")
    if ver is not None and int(ver) > versions:
        raise CCBuildError(f"unknown vCPU type {name!r}: {base} has versions v1..v{versions}",
                           hint="give the signature with --vcpu-sig if your QEMU is newer")
    return VcpuType(base + (f"-v{ver}" if ver else ""), cpuid)


def supported_vcpu_types() -> list[str]:
    names = []
    for base, (_, versions) in QEMU_EPYC_MODELS.items():
        names.append(base)
        names.extend(f"{base}-v{i}" for i in range(1, versions + 1))
    return names + list(_ALIASES)


# Real EPYC parts an SEV-SNP host runs on: with ``-cpu host`` the guest's CPUID(1).EAX, hence the
# VMSA's RDX, is the part's own family/model/stepping. Source: the server family 19h/1Ah
# signatures AMD ships microcode for, as listed by Linux arch/x86/kernel/cpu/microcode/amd.c (the
# Entrysign minimum-revision table, ``cur_rev >> 8`` = ext family, ext model, model, stepping;
# e.g. 0xa0011 -> family 0x19 model 0x01 stepping 1; 0xb1010 -> family 0x1a model 0x11 stepping 0),
# named by the codename of the model range and the stepping number. Rome and Naples (family 17h)
# do not support SEV-SNP; their signatures are those of the QEMU models EPYC and EPYC-Rome above.
# Client and workstation parts (Ryzen, Threadripper, EPYC 4004/4005 on AM5) are left out: they
# have no SEV-SNP.
REAL_EPYC_PARTS: dict[str, CpuId] = {
    "Milan stepping 0": CpuId(0x19, 0x01, 0),
    "Milan stepping 1": CpuId(0x19, 0x01, 1),
    "Milan stepping 2 (Milan-X)": CpuId(0x19, 0x01, 2),
    "Genoa stepping 1": CpuId(0x19, 0x11, 1),
    "Genoa stepping 2 (Genoa-X)": CpuId(0x19, 0x11, 2),
    "Bergamo/Siena stepping 1": CpuId(0x19, 0xA0, 1),
    "Bergamo/Siena stepping 2": CpuId(0x19, 0xA0, 2),
    "Turin stepping 1": CpuId(0x1A, 0x02, 1),
    "Turin Dense stepping 0": CpuId(0x1A, 0x11, 0),
}


def known_signatures() -> list[int]:
    """Every CPUID(1).EAX signature ccbuild knows, each once: the QEMU EPYC models in table order,
    then the real parts (``-cpu host``) not already listed."""
    sigs: list[int] = []
    for cpuid in [c for c, _ in QEMU_EPYC_MODELS.values()] + list(REAL_EPYC_PARTS.values()):
        if cpuid.signature not in sigs:
            sigs.append(cpuid.signature)
    return sigs


def signature_names(sig: int) -> tuple[str, ...]:
    """What launches with ``sig``: the QEMU models (any -vN version) and the real parts under
    ``-cpu host`` (written ``host:<part>``). Empty for a signature ccbuild does not know."""
    names = [name for name, (c, _) in QEMU_EPYC_MODELS.items() if c.signature == sig]
    names += [f"host:{part}" for part, c in REAL_EPYC_PARTS.items() if c.signature == sig]
    return tuple(names)
