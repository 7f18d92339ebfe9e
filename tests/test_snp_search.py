"""The SEV-SNP launch search (builder.measure.snp_search) against an independent oracle.

Targets are computed by sev-snp-measure (PyPI, test dependency) or taken from published vectors;
the search must recover exactly the parameters they were computed with, and name exactly the one
input changed in edited-evidence cases. Firmware: the sev-snp-measure AmdSev fixture page, a
synthetic 1 MiB image ending with it, and (slow) the real AmdSevX64 build.

Real SNP reports in tests/vectors (go-sev-guest attestation.bin, virtee-sev report_milan.hex):
their launch inputs (firmware, kernel, initrd, command line) are not published, so no test can
recover their launch; the published launch-digest vectors with known inputs are used instead.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from helpers import SnpOracle

from builder.errors import CCBuildError
from builder.measure.cpu import REAL_EPYC_PARTS, known_signatures, vcpu_type
from builder.measure.snp_search import (
    ALL_FEATURE_BITS,
    DEFAULT_SPACE,
    FEATURE_BITS,
    HOST_FEATURE_BITS,
    SearchSpace,
    feature_combinations,
    search,
    standard_variants,
)
from builder.measure.vmsa import Vmm

guest = pytest.importorskip("sevsnpmeasure.guest")

KERNEL = random.Random(1).randbytes(3 * 4096 + 17)
INITRD = random.Random(2).randbytes(5000)
CMDLINE = "console=ttyS0 root=/dev/vda1 agent.log=debug"
MILAN = vcpu_type("EPYC-Milan").signature
GENOA = vcpu_type("EPYC-Genoa").signature
# A small space for the many edited-evidence cases (the default space is searched below too).
SMALL = SearchSpace(vcpus=tuple(range(1, 65)), vcpu_sigs=tuple(known_signatures()),
                    guest_features=(0x1, 0x21, 0x201, 0x221, 0x8001, 0x200021))


class Oracle(SnpOracle):
    """The shared sev-snp-measure oracle with this module's default kernel, initrd, cmdline."""

    def digest(self, fw: bytes, vcpus: int, sig: int, vmm: Vmm, features: int,
               kernel=KERNEL, initrd=INITRD, append=CMDLINE) -> bytes:
        return super().digest(fw, vcpus, sig, vmm, features, kernel, initrd, append)


@pytest.fixture
def oracle(tmp_path) -> Oracle:
    return Oracle(tmp_path)


@pytest.fixture(scope="module")
def suffix_fw(vectors) -> bytes:
    return (vectors / "snp/sev-snp-measure/ovmf_AmdSev_suffix.bin").read_bytes()


@pytest.fixture(scope="module")
def synthetic_fw(suffix_fw) -> bytes:
    """1 MiB: random pages ending with the real AmdSev footer/metadata page."""
    return random.Random(0).randbytes(1024 * 1024 - 4096) + suffix_fw


VARIANTS = standard_variants(CMDLINE, kernel=KERNEL, initrd=INITRD)


def recovered(result) -> tuple:
    m = result.match
    assert m is not None, result.searched
    return (m.vcpus, m.vcpu_sig, m.vmm, m.guest_features, m.variant.label)


# --- recovery of non-default launches --------------------------------------------------------

@pytest.mark.parametrize("fw_name", ["suffix_fw", "synthetic_fw"])
def test_recovers_non_default_launch_in_default_space(request, oracle, fw_name):
    fw = request.getfixturevalue(fw_name)
    host_genoa = REAL_EPYC_PARTS["Genoa stepping 1"].signature
    target = oracle.digest(fw, 37, host_genoa, Vmm.QEMU, 0x221, append=CMDLINE + "\n")
    r = search(fw, VARIANTS, target)
    assert recovered(r) == (37, host_genoa, Vmm.QEMU, 0x221, "cmdline + trailing newline")
    assert r.match.vcpu_types == ("host:Genoa stepping 1",)
    assert r.match.variant.cmdline == CMDLINE + "\n" and r.match.variant.initrd
    d = r.as_dict()["match"]
    assert d["vcpus"] == 37 and d["vcpu_sig"] == "0xa10f11" and d["guest_features"] == "0x221"
    assert d["guest_feature_names"] == ["SNPActive", "DebugSwap", "SecureTSC"]
    assert r.searched["vcpus"] == 512 and r.searched["vmms"] == 3
    assert r.searched["guest_features"] == 2 ** len(HOST_FEATURE_BITS)
    assert r.searched["vcpu_sigs"] == len(known_signatures())
    assert 0 < r.examined < r.searched["candidates"]


def test_recovers_from_kernel_and_initrd_sha256(suffix_fw, oracle):
    target = oracle.digest(suffix_fw, 3, GENOA, Vmm.QEMU, 0x21)
    variants = standard_variants(CMDLINE, kernel_sha256=hashlib.sha256(KERNEL).digest(),
                                 initrd_sha256=hashlib.sha256(INITRD).digest())
    assert recovered(search(suffix_fw, variants, target, SMALL)) == \
        (3, GENOA, Vmm.QEMU, 0x21, "cmdline")


def test_workers_do_not_change_the_answer(synthetic_fw, oracle):
    target = oracle.digest(synthetic_fw, 50, MILAN, Vmm.GCE, 0x8001, append=None)
    one = search(synthetic_fw, VARIANTS, target, SMALL, workers=1)
    two = search(synthetic_fw, VARIANTS, target, SMALL, workers=2)
    assert one == two
    assert one.match.vmm is Vmm.GCE and one.match.vcpus == 50 and one.match.guest_features == 0x8001
    assert one.match.variant.label == "no -append"


# --- edited evidence: one input changed at a time -------------------------------------------

BASE = dict(vcpus=4, sig=MILAN, vmm=Vmm.QEMU, features=0x1)


@pytest.mark.parametrize("change,expect", [
    ({}, {}),
    ({"vcpus": 5}, {"vcpus": 5}),
    ({"vcpus": 64}, {"vcpus": 64}),
    ({"sig": GENOA}, {"sig": GENOA}),
    ({"sig": REAL_EPYC_PARTS["Turin Dense stepping 0"].signature},
     {"sig": REAL_EPYC_PARTS["Turin Dense stepping 0"].signature}),
    ({"features": 0x21}, {"features": 0x21}),
    ({"features": 0x8001}, {"features": 0x8001}),
    ({"features": 0x200021}, {"features": 0x200021}),
    ({"vmm": Vmm.GCE}, {"vmm": Vmm.GCE, "sig": None}),
    ({"vmm": Vmm.EC2}, {"vmm": Vmm.EC2, "sig": None}),
])
def test_edited_launch_parameter(suffix_fw, oracle, change, expect):
    p = {**BASE, **change}
    target = oracle.digest(suffix_fw, p["vcpus"], p["sig"], p["vmm"], p["features"])
    want = {**BASE, **expect}
    assert recovered(search(suffix_fw, VARIANTS, target, SMALL)) == \
        (want["vcpus"], want["sig"], want["vmm"], want["features"], "cmdline")


def test_ec2_and_gce_do_not_measure_the_signature(suffix_fw, oracle):
    target = oracle.digest(suffix_fw, 4, GENOA, Vmm.EC2, 0x1)
    m = search(suffix_fw, VARIANTS, target, SMALL).match
    assert m.vcpu_sig is None and m.vcpu_sigs == tuple(known_signatures())
    assert "EPYC-Milan" in m.vcpu_types and "host:Turin stepping 1" in m.vcpu_types


@pytest.mark.parametrize("append,initrd,label", [
    (CMDLINE + "\n", INITRD, "cmdline + trailing newline"),
    (CMDLINE + " ", INITRD, "cmdline + trailing space"),
    (None, INITRD, "no -append"),
    (CMDLINE, None, "cmdline, no initrd"),
    (CMDLINE + "\n", None, "cmdline + trailing newline, no initrd"),
])
def test_edited_command_line_or_initrd(suffix_fw, oracle, append, initrd, label):
    target = oracle.digest(suffix_fw, **_base_args(), initrd=initrd, append=append)
    assert recovered(search(suffix_fw, VARIANTS, target, SMALL)) == \
        (4, MILAN, Vmm.QEMU, 0x1, label)


def test_kernel_hashes_off(suffix_fw, oracle):
    target = oracle.digest(suffix_fw, **_base_args(), kernel=None, initrd=None, append=None)
    m = search(suffix_fw, VARIANTS, target, SMALL).match
    assert m.variant.label == "no kernel hashes (kernel-hashes=off)" and m.variant.hashes is None


def test_one_command_line_byte(suffix_fw, oracle):
    edited = CMDLINE.replace("debug", "debuG")
    target = oracle.digest(suffix_fw, **_base_args(), append=edited)
    # Not among the standard variants: nothing matches, and the counts say what was searched.
    r = search(suffix_fw, VARIANTS, target, SMALL)
    assert r.match is None
    assert r.searched == {"variants": len(VARIANTS), "hashes_pages": len(VARIANTS), "vmms": 3,
                          "guest_features": 6, "vcpu_sigs": len(known_signatures()), "vcpus": 64,
                          "candidates": len(VARIANTS) * 3 * 6 * len(known_signatures()) * 64,
                          "digests": r.searched["digests"]}
    assert r.examined == r.searched["candidates"]
    # Offered as a candidate command line (e.g. a Kata runtime's composition), it is named.
    variants = standard_variants(CMDLINE, kernel=KERNEL, initrd=INITRD,
                                 extra_cmdlines=(("kata 3.13", edited),))
    assert recovered(search(suffix_fw, variants, target, SMALL)) == \
        (4, MILAN, Vmm.QEMU, 0x1, "kata 3.13")


def _base_args() -> dict:
    return dict(vcpus=BASE["vcpus"], sig=BASE["sig"], vmm=BASE["vmm"], features=BASE["features"])


def test_no_match_in_default_space_counts_every_axis(suffix_fw):
    target = hashlib.sha384(b"no launch has this digest").digest()
    r = search(suffix_fw, VARIANTS[:1], target)
    assert r.match is None
    n_sigs, n_gf = len(known_signatures()), 2 ** len(HOST_FEATURE_BITS)
    assert r.searched["candidates"] == 1 * 3 * n_sigs * n_gf * 512
    # EC2 and GCE share one chain for every signature: fewer digests than candidates.
    assert r.searched["digests"] == (n_sigs + 2) * n_gf * 512
    assert r.as_dict()["match"] is None


def test_sparse_vcpu_set(suffix_fw, oracle):
    target = oracle.digest(suffix_fw, 16, MILAN, Vmm.QEMU, 0x1)
    space = SearchSpace(vcpus=(1, 2, 8, 16), vcpu_sigs=(MILAN,), guest_features=(0x1,))
    assert search(suffix_fw, VARIANTS, target, space).match.vcpus == 16
    space = SearchSpace(vcpus=(1, 2, 8, 17), vcpu_sigs=(MILAN,), guest_features=(0x1,))
    assert search(suffix_fw, VARIANTS, target, space).match is None


# --- published vectors with known inputs -----------------------------------------------------

def test_readme_vector(vectors, suffix_fw):
    # tests/vectors/README.md: fixture, 1 vCPU EPYC-v4, kernel = initrd = empty,
    # append "console=ttyS0 loglevel=7", guest features 0x21.
    expected = ("803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba"
                "7e534442e7e1e17895dfe778d0228977")
    assert expected in (vectors / "README.md").read_text()
    variants = standard_variants("console=ttyS0 loglevel=7", kernel=b"", initrd=b"")
    m = search(suffix_fw, variants, bytes.fromhex(expected)).match
    assert (m.vcpus, m.vcpu_sig, m.vmm, m.guest_features) == (1, 0x800F12, Vmm.QEMU, 0x21)
    assert m.variant.cmdline == "console=ttyS0 loglevel=7"
    assert "EPYC" in m.vcpu_types
    # An empty initrd hashes like no initrd: both spellings are reported.
    assert {v.label for v in m.variants} == {"cmdline", "cmdline, no initrd"}


def test_published_gce_vector(suffix_fw):
    # virtee/sev-snp-measure @8f2b337 tests/test_guest.py: GCE, 4 vCPUs, 0x1, empty kernel and
    # initrd, no append (also in tests/test_snp_vectors.py).
    expected = ("5c5debf100fc339f90276e761ee1f1658d08922c3b20e2a2e6c7a6c3370b2452"
                "a15a00eae11886a93d6fd1e7ab81e29d")
    variants = standard_variants(None, kernel=b"", initrd=b"")
    m = search(suffix_fw, variants, bytes.fromhex(expected)).match
    assert (m.vcpus, m.vmm, m.guest_features, m.vcpu_sig) == (4, Vmm.GCE, 0x1, None)
    assert m.variant.cmdline is None


# --- inputs ----------------------------------------------------------------------------------

def test_standard_variants_shape():
    labels = [v.label for v in VARIANTS]
    assert labels == ["cmdline", "cmdline, no initrd", "cmdline + trailing newline",
                      "cmdline + trailing newline, no initrd", "cmdline + trailing space",
                      "cmdline + trailing space, no initrd", "no -append", "no -append, no initrd",
                      "no kernel hashes (kernel-hashes=off)"]
    stripped = standard_variants("a b \n", kernel=b"k", no_kernel_hashes=False)
    assert [v.cmdline for v in stripped] == ["a b \n", "a b \n\n", "a b \n ", "a b", None]
    for bad in (dict(), dict(kernel=b"k", kernel_sha256=bytes(32)),
                dict(kernel=b"k", initrd=b"i", initrd_sha256=bytes(32)),
                dict(kernel_sha256=bytes(31))):
        with pytest.raises(CCBuildError):
            standard_variants("x", **bad)


def test_bad_search_input(suffix_fw, vectors):
    with pytest.raises(CCBuildError, match="48"):
        search(suffix_fw, VARIANTS, bytes(47))
    with pytest.raises(CCBuildError, match="SNPActive"):
        search(suffix_fw, VARIANTS, bytes(48), SearchSpace(guest_features=(0x20,)))
    with pytest.raises(CCBuildError, match="at least one"):
        search(suffix_fw, (), bytes(48))
    ovmfx64 = (vectors / "snp/sev-snp-measure/ovmf_OvmfX64_suffix.bin").read_bytes()
    with pytest.raises(CCBuildError, match="KERNEL_HASHES"):
        search(ovmfx64, VARIANTS, bytes(48))


def test_feature_space():
    combos = feature_combinations()
    assert combos[:2] == (0x1, 0x21) and len(combos) == 256 == len(set(combos))
    assert all(c & 1 for c in combos) and DEFAULT_SPACE.guest_features == combos
    # AMD64 APM / Linux MSR_AMD64_SNP_*_BIT (SEV_STATUS bit = SEV_FEATURES bit + 2).
    msr_bits = {"DebugSwap": 7, "PreventHostIBS": 8, "BTBIsolation": 9, "SecureTSC": 11,
                "IBSVirt": 14, "VmsaRegProt": 16, "SMTProtection": 17, "SecureAVIC": 18,
                "IBPBOnEntry": 23, "RestrictedInjection": 5, "AlternateInjection": 6}
    for name, msr_bit in msr_bits.items():
        assert FEATURE_BITS[name] == 1 << (msr_bit - 2), name
    assert FEATURE_BITS["RestrictedInjection"] not in HOST_FEATURE_BITS
    assert FEATURE_BITS["VmsaRegProt"] in ALL_FEATURE_BITS


def test_real_parts_are_linux_microcode_signatures():
    # Linux arch/x86/kernel/cpu/microcode/amd.c, Entrysign table keys (cur_rev >> 8) of the
    # server parts: ext family, ext model, reserved, model, stepping nibbles.
    linux_keys = {0xa0010, 0xa0011, 0xa0012, 0xa1011, 0xa1012, 0xaa001, 0xaa002, 0xb0021,
                  0xb1010}
    keys = set()
    for c in REAL_EPYC_PARTS.values():
        keys.add(((c.family - 0xF) << 16) | ((c.model >> 4) << 12) | ((c.model & 0xF) << 4)
                 | c.stepping)
    assert keys == linux_keys
    sigs = known_signatures()
    assert len(sigs) == len(set(sigs)) == 13


# --- real firmware (slow) --------------------------------------------------------------------

@pytest.mark.slow
def test_recovers_launch_of_real_amdsev_build(amdsev_firmware, oracle):
    target = oracle.digest(amdsev_firmware, 96, REAL_EPYC_PARTS["Turin stepping 1"].signature,
                           Vmm.QEMU, 0x8221, append=CMDLINE + " ")
    r = search(amdsev_firmware, VARIANTS, target)
    assert recovered(r) == (96, 0xB00F21, Vmm.QEMU, 0x8221, "cmdline + trailing space")
    target = oracle.digest(amdsev_firmware, 2, MILAN, Vmm.EC2, 0x21, initrd=None)
    assert recovered(search(amdsev_firmware, VARIANTS, target)) == \
        (2, None, Vmm.EC2, 0x21, "cmdline, no initrd")
