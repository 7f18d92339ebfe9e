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
