"""VMSA pages byte for byte against sev-snp-measure's save-area builder (an independent ctypes
rendering of the APM Table B-4 layout), for every VMM, BSP and AP, and both feature values;
plus the register offsets the measurement notes list."""

from __future__ import annotations

import struct

import pytest

from builder.errors import CCBuildError
from builder.measure.cpu import decode_signature, vcpu_type
from builder.measure.vmsa import BSP_EIP, Vmm, VmsaParams, vmsa_page

oracle_vmsa = pytest.importorskip("sevsnpmeasure.vmsa")
from sevsnpmeasure.vmm_types import VMMType  # noqa: E402

ORACLE_VMM = {Vmm.QEMU: VMMType.QEMU, Vmm.EC2: VMMType.ec2, Vmm.GCE: VMMType.gce}


@pytest.mark.parametrize("vmm", list(Vmm))
@pytest.mark.parametrize("eip", [BSP_EIP, 0x80B004, 0x1234])
@pytest.mark.parametrize("features", [0x1, 0x21])
@pytest.mark.parametrize("sig", [0x800F12, 0xA10F10, 0xB00F00])
def test_vmsa_matches_oracle(vmm, eip, features, sig):
    expected = bytes(oracle_vmsa.VMSA.build_save_area(eip, features, sig, ORACLE_VMM[vmm]))
    assert vmsa_page(VmsaParams(eip, features, sig, vmm)) == expected


def test_notes_offsets_qemu():
    page = vmsa_page(VmsaParams(0x80B004, 0x21, 0xA00F11, Vmm.QEMU))
    q = lambda off: struct.unpack_from("<Q", page, off)[0]  # noqa: E731
    assert struct.unpack_from("<HHIQ", page, 0x10) == (0xF000, 0x9B, 0xFFFF, 0x80B004 & 0xFFFF0000)
    assert (q(0xD0), q(0x148), q(0x158), q(0x160), q(0x168), q(0x170), q(0x178)) == \
        (0x1000, 0x40, 0x10, 0x400, 0xFFFF0FF0, 2, 0xB004)
    assert (q(0x268), q(0x310), q(0x3B0), q(0x3E8)) == (0x0007040600070406, 0xA00F11, 0x21, 1)
    assert struct.unpack_from("<I", page, 0x408)[0] == 0x1F80
    assert struct.unpack_from("<H", page, 0x410)[0] == 0x37F


def test_signatures_from_notes():
    notes = {"EPYC": 0x800F12, "EPYC-v4": 0x800F12, "EPYC-Rome": 0x830F10, "EPYC-Milan": 0xA00F11,
             "EPYC-Genoa": 0xA10F10, "EPYC-Turin": 0xB00F00, "EPYC-Rome-v5": 0x830F10,
             "EPYC-Milan-v3": 0xA00F11, "EPYC-Genoa-v2": 0xA10F10, "EPYC-Turin-v1": 0xB00F00,
             "EPYC-IBPB": 0x800F12, "epyc-milan-v2": 0xA00F11}
    for name, sig in notes.items():
        assert vcpu_type(name).signature == sig, name
    d = decode_signature(0xB00F00)
    assert (d.family, d.model, d.stepping) == (0x1A, 0, 0)


@pytest.mark.parametrize("name", ["EPYC-v0", "EPYC-v6", "EPYC-Turin-v3", "Skylake", "", "EPYC-"])
def test_unknown_cpu_types(name):
    with pytest.raises(CCBuildError):
        vcpu_type(name)


def test_vmm_parse():
    assert Vmm.parse("EC2") is Vmm.EC2
    with pytest.raises(CCBuildError, match="qemu, ec2, gce"):
        Vmm.parse("xen")
