"""Launch digests against an independent implementation: sev-snp-measure 0.0.13 (PyPI), used as a
library oracle on the same firmware, kernel, initrd and command line.

Grid: every CPU type at 1 vCPU, every vCPU count (1/2/3/4/64/255) at one type, all three VMMs,
guest features 0x1 and 0x21, with and without kernel/initrd/cmdline, modes snp and snp:ovmf-hash.
Firmware: the sev-snp-measure fixtures now; real Debian OVMF and a real AmdSev build (slow).
"""

from __future__ import annotations

import hashlib
import os

import pytest

from helpers import SnpOracle

from builder.errors import CCBuildError
from builder.measure.cpu import vcpu_type
from builder.measure.sev_hashes import KernelHashes
from builder.measure.snp import SnpParams, launch_digest, measure_firmware_only, snp_matrix
from builder.measure.vmsa import Vmm

guest = pytest.importorskip("sevsnpmeasure.guest")
from sevsnpmeasure import vcpu_types as oracle_cpus  # noqa: E402

VCPU_COUNTS = [1, 2, 3, 4, 64, 255]
FEATURES = [0x1, 0x21]
# (kernel, initrd, append) variants; None = not given.
KERNEL = os.urandom(3 * 4096 + 17)
INITRD = os.urandom(5000)
BOOT_VARIANTS = {
    "no-kernel": (None, None, None),
    "kernel": (KERNEL, None, None),
    "kernel+initrd+cmdline": (KERNEL, INITRD, "console=ttyS0 root=/dev/vda1 quiet"),
    "empty-kernel+cmdline": (b"", b"", "console=ttyS0 loglevel=7"),
}


class Oracle(SnpOracle):
    """The shared sev-snp-measure oracle, values as hex (as measurements.json writes them)."""

    def digest(self, *args, **kw) -> str:
        return super().digest(*args, **kw).hex()

    def ovmf_hash(self, fw: bytes) -> str:
        return super().ovmf_hash(fw).hex()


@pytest.fixture
def oracle(tmp_path) -> Oracle:
    return Oracle(tmp_path)


@pytest.fixture(scope="module")
def amdsev(vectors) -> bytes:
    return (vectors / "snp/sev-snp-measure/ovmf_AmdSev_suffix.bin").read_bytes()


@pytest.fixture(scope="module")
def ovmfx64(vectors) -> bytes:
    return (vectors / "snp/sev-snp-measure/ovmf_OvmfX64_suffix.bin").read_bytes()


def mine(fw, vcpus, sig, vmm, features, kernel=None, initrd=None, append=None, ovmf_hash=None):
    hashes = KernelHashes.of(kernel, initrd, append) if kernel is not None else None
    return launch_digest(fw, SnpParams(vcpus, sig, vmm, features, hashes, ovmf_hash)).hex()


def check_grid(fw: bytes, oracle: Oracle, boot_variants: dict) -> int:
    """The sampled grid on one firmware; returns how many points were compared."""
    n = 0
    milan = vcpu_type("EPYC-Milan").signature
    for vmm in Vmm:
        for gf in FEATURES:
            for name, (k, i, a) in boot_variants.items():
                for t, sig in oracle_cpus.CPU_SIGS.items():
                    assert mine(fw, 1, sig, vmm, gf, k, i, a) == \
                        oracle.digest(fw, 1, sig, vmm, gf, k, i, a), (vmm, gf, name, t)
                    n += 1
                for vcpus in VCPU_COUNTS:
                    assert mine(fw, vcpus, milan, vmm, gf, k, i, a) == \
                        oracle.digest(fw, vcpus, milan, vmm, gf, k, i, a), (vmm, gf, name, vcpus)
                    n += 1
    return n


def test_grid_amdsev_fixture(amdsev, oracle):
    assert check_grid(amdsev, oracle, BOOT_VARIANTS) == 3 * 2 * 4 * (16 + 6)


def test_grid_ovmfx64_fixture_firmware_only(ovmfx64, oracle):
    assert check_grid(ovmfx64, oracle, {"no-kernel": (None, None, None)}) == 3 * 2 * (16 + 6)


def test_every_named_cpu_type_has_the_oracle_signature():
    # The oracle's table lacks newer -vN versions; versions never change family/model/stepping,
    # so each must have the signature the oracle gives its base model.
    from builder.measure.cpu import supported_vcpu_types
    for name in supported_vcpu_types():
        t = vcpu_type(name)
        base = name.split("-v")[0] if "-v" in name else name
        expected = oracle_cpus.CPU_SIGS.get(name, oracle_cpus.CPU_SIGS[base])
        assert t.signature == expected, name
    for name, sig in oracle_cpus.CPU_SIGS.items():
        assert vcpu_type(name).signature == sig


@pytest.mark.parametrize("fixture", ["amdsev", "ovmfx64"])
def test_mode_ovmf_hash(fixture, request, oracle):
    fw = request.getfixturevalue(fixture)
    assert measure_firmware_only(fw).launch_digest.hex() == oracle.ovmf_hash(fw)


@pytest.mark.parametrize("vmm", list(Vmm))
def test_mode_snp_from_given_ovmf_hash(amdsev, oracle, vmm):
    # Starting from an arbitrary given firmware digest: the firmware pages are not hashed.
    seed = hashlib.sha384(b"some other firmware").digest()
    sig = vcpu_type("EPYC-Genoa").signature
    for k, i, a in BOOT_VARIANTS.values():
        for vcpus in (1, 4):
            assert mine(amdsev, vcpus, sig, vmm, 0x21, k, i, a, ovmf_hash=seed) == \
                oracle.digest(amdsev, vcpus, sig, vmm, 0x21, k, i, a, ovmf_hash=seed.hex())


def test_family_model_stepping_signature_matches_oracle():
    from builder.measure.cpu import cpu_signature, decode_signature
    for fam in (0x6, 0xF, 0x17, 0x19, 0x1A, 0x10E):
        for model in (0, 1, 0x11, 0x31, 0xA0, 0xFF):
            for step in (0, 2, 0xF):
                sig = cpu_signature(fam, model, step)
                assert sig == oracle_cpus.cpu_sig(fam, model, step)
                d = decode_signature(sig)
                assert (d.family, d.model, d.stepping) == (fam, model, step)


def test_matrix_against_oracle(amdsev, oracle):
    k, i, a = BOOT_VARIANTS["kernel+initrd+cmdline"]
    types = ["EPYC", "EPYC-v4", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa", "EPYC-Turin"]
    entries = snp_matrix(amdsev, KernelHashes.of(k, i, a), [1, 2, 3, 64, 4, 255, 512], types,
                         ["qemu", "ec2", "gce"], [0x1, 0x21])
    assert len(entries) == 7 * 6 * 3 * 2
    assert len({(e["vcpus"], e["vcpu_type"], e["vmm"], e["guest_features"]) for e in entries}) \
        == len(entries)
    for e in entries[::7] + entries[-3:]:
        sig = oracle_cpus.CPU_SIGS[e["vcpu_type"]]
        assert e["vcpu_sig"] == f"0x{sig:x}"
        assert e["launch_digest"] == oracle.digest(amdsev, e["vcpus"], sig, Vmm(e["vmm"]),
                                                   int(e["guest_features"], 16), k, i, a), e


def test_matrix_firmware_only_against_oracle(ovmfx64, oracle):
    entries = snp_matrix(ovmfx64, None, list(range(1, 9)), ["EPYC-Milan"], ["gce"], [0x1])
    assert [e["vcpus"] for e in entries] == list(range(1, 9))
    for e in entries:
        assert e["launch_digest"] == oracle.digest(ovmfx64, e["vcpus"], 0xA00F11, Vmm.GCE, 0x1)


def test_refuses_kernel_without_kernel_hashes(ovmfx64):
    with pytest.raises(CCBuildError, match="KERNEL_HASHES.*AmdSevX64"):
        mine(ovmfx64, 1, 0xA00F11, Vmm.QEMU, 0x1, b"kernel")
    with pytest.raises(CCBuildError, match="KERNEL_HASHES"):
        snp_matrix(ovmfx64, KernelHashes.of(b"k"), [1], ["EPYC"], ["qemu"], [1])


def test_refuses_firmware_without_sev_metadata():
    fw = bytes(64 * 1024)
    with pytest.raises(CCBuildError, match="no SEV metadata"):
        mine(fw, 1, 0xA00F11, Vmm.QEMU, 0x1)
    with pytest.raises(CCBuildError, match="no SEV metadata"):
        measure_firmware_only(fw)


def test_refuses_impossible_parameters(amdsev):
    with pytest.raises(CCBuildError, match="SNPActive"):
        mine(amdsev, 1, 0xA00F11, Vmm.QEMU, 0x20)
    with pytest.raises(CCBuildError, match="vCPUs"):
        mine(amdsev, 0, 0xA00F11, Vmm.QEMU, 0x1)


# --- real firmware (downloads / builds) ------------------------------------------------------

DEBIAN_OVMF = ("ovmf", "2025.02-8+deb13u1", "trixie", "usr/share/ovmf/OVMF.fd")


@pytest.mark.slow
def test_debian_ovmf_firmware_only(debian_file, oracle):
    from builder.formats.ovmf import has_kernel_hashes, parse_sev_metadata
    fw = debian_file(*DEBIAN_OVMF)
    assert parse_sev_metadata(fw) is not None
    assert not has_kernel_hashes(fw)
    assert measure_firmware_only(fw).launch_digest.hex() == oracle.ovmf_hash(fw)
    for vmm in Vmm:
        for gf in FEATURES:
            for vcpus in (1, 4, 255):
                assert mine(fw, vcpus, 0xA10F10, vmm, gf) == \
                    oracle.digest(fw, vcpus, 0xA10F10, vmm, gf), (vmm, gf, vcpus)
    with pytest.raises(CCBuildError, match="AmdSevX64"):
        mine(fw, 1, 0xA10F10, Vmm.QEMU, 0x1, b"kernel")


@pytest.mark.slow
def test_real_amdsev_build(amdsev_firmware, oracle):
    from builder.formats.ovmf import has_kernel_hashes
    fw = amdsev_firmware
    assert has_kernel_hashes(fw)
    assert measure_firmware_only(fw).launch_digest.hex() == oracle.ovmf_hash(fw)
    sig = vcpu_type("EPYC-Milan").signature
    for vmm in Vmm:
        for gf in FEATURES:
            for name, (k, i, a) in BOOT_VARIANTS.items():
                for vcpus in (1, 2, 64):
                    assert mine(fw, vcpus, sig, vmm, gf, k, i, a) == \
                        oracle.digest(fw, vcpus, sig, vmm, gf, k, i, a), (vmm, gf, name, vcpus)


@pytest.mark.slow
def test_real_inteltdx_build_firmware_only(tdvf_firmware, oracle):
    """The IntelTdx build carries SEV metadata too (with an empty SVSM_CAA range at gpa 0):
    measurable firmware-only, and a kernel is refused (no KERNEL_HASHES)."""
    from builder.formats.ovmf import SectionType, parse_sev_metadata
    fw = tdvf_firmware
    meta = parse_sev_metadata(fw)
    assert any(s.type == SectionType.SVSM_CAA and s.size == 0 for s in meta.sections)
    assert measure_firmware_only(fw).launch_digest.hex() == oracle.ovmf_hash(fw)
    for vmm in Vmm:
        assert mine(fw, 2, 0xA00F11, vmm, 0x1) == oracle.digest(fw, 2, 0xA00F11, vmm, 0x1), vmm
    with pytest.raises(CCBuildError, match="AmdSevX64"):
        mine(fw, 1, 0xA00F11, Vmm.QEMU, 0x1, b"kernel")
