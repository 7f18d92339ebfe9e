"""`ccbuild explain --snp-report` (builder/cli/explain.py, builder/verify/explain_snp.py).

Edited evidence: a report whose MEASUREMENT sev-snp-measure (the independent oracle) computes for
a launch that differs from OUT's published values in exactly one input; explain must name exactly
that input (exit 0). A report nothing reproduces: exit 1 with the counts searched. Bad input:
exit 2 with one line. A report made here carries no AMD signature, so signature verification is
tested with the real reports of tests/vectors/snp and their VCEKs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import struct
from pathlib import Path

import pytest

from helpers import write_small_out

guest = pytest.importorskip("sevsnpmeasure.guest")
from sevsnpmeasure.vmm_types import VMMType  # noqa: E402

KERNEL = random.Random(11).randbytes(3 * 4096 + 5)
INITRD = random.Random(12).randbytes(7000)
CMDLINE = "console=ttyS0 root=/dev/vda1 agent.log=debug quiet"
PUBLISHED_VCPUS = (1, 2, 8)
EPYC_V4 = 0x800F12     # QEMU target/i386/cpu.c: EPYC family 23 model 1 stepping 2
MILAN = 0xA00F11       # EPYC-Milan: family 25 model 1 stepping 1
ORACLE_VMM = {"qemu": VMMType.QEMU, "ec2": VMMType.ec2, "gce": VMMType.gce}


def run(args: list[str]) -> tuple[int, str, str]:
    """`ccbuild ARGS` in-process: (exit code, stdout, stderr)."""
    from builder.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(args)
        except SystemExit as e:        # argparse's own errors (exit 2, one line)
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def one_line_error(rc: int, err: str, code: int) -> str:
    assert rc == code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ccbuild: error: "), err
    assert "Traceback" not in err
    return lines[0]


def make_report(measurement: bytes, version: int = 2) -> bytes:
    """An ATTESTATION_REPORT (AMD SEV-SNP ABI spec, table "ATTESTATION_REPORT Structure") with
    MEASUREMENT at 0x90, VERSION and SIGNATURE_ALGO = 1 (ECDSA P-384); no valid signature."""
    raw = bytearray(0x4A0)
    struct.pack_into("<I", raw, 0x000, version)
    struct.pack_into("<Q", raw, 0x008, 0x30000)
    struct.pack_into("<I", raw, 0x034, 1)
    raw[0x90:0xC0] = measurement
    return bytes(raw)


@pytest.fixture(scope="module")
def fw(vectors) -> bytes:
    return (vectors / "snp/sev-snp-measure/ovmf_AmdSev_suffix.bin").read_bytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory, fw) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("explain-inputs")
    out = {}
    for name, data in (("fw", fw), ("kernel", KERNEL), ("initrd", INITRD)):
        out[name] = d / name
        out[name].write_bytes(data)
    return out


def oracle(files, vcpus=2, sig=EPYC_V4, vmm="qemu", features=0x1, append=CMDLINE,
           initrd=True, ovmf_hash="", fw=None) -> bytes:
    """sev-snp-measure's launch digest."""
    return guest.snp_calc_launch_digest(vcpus, sig, str(fw or files["fw"]), str(files["kernel"]),
                                        str(files["initrd"]) if initrd else None, append,
                                        features, ovmf_hash, ORACLE_VMM[vmm])


@pytest.fixture(scope="module")
def out(tmp_path_factory, fw) -> Path:
    """A small OUT: published SNP entries for 1, 2, 8 vCPUs, EPYC-v4, qemu, guest features 0x1."""
    from builder.measure.sev_hashes import KernelHashes
    from builder.measure.snp import snp_matrix
    entries = snp_matrix(fw, KernelHashes.of(KERNEL, INITRD, CMDLINE), list(PUBLISHED_VCPUS),
                         ["EPYC-v4"], ["qemu"], [0x1])
    return write_small_out(tmp_path_factory.mktemp("explain-out") / "out",
                           {"firmware.fd": fw, "vmlinuz": KERNEL, "initrd.img": INITRD,
                            "cmdline.txt": CMDLINE.encode()}, {"snp": entries})


def report_file(tmp_path, measurement: bytes, name="report.bin", version=2) -> str:
    p = tmp_path / name
    p.write_bytes(make_report(measurement, version))
    return str(p)


def explain_json(args: list[str]) -> tuple[int, dict, str]:
    rc, stdout, err = run(["explain", "--json", *args])
    return rc, json.loads(stdout), err


# --- the published launch itself ---------------------------------------------------------------

def test_published_launch_is_named_as_its_entry(out, files, tmp_path):
    r = report_file(tmp_path, oracle(files, vcpus=2))
    rc, doc, err = explain_json(["--snp-report", r, str(out)])
    assert rc == 0, err
    assert doc["differences"] == []
    m = doc["match"]
    assert (m["vcpus"], m["vcpu_sig"], m["vcpu_type"], m["vmm"], m["guest_features"]) == \
        (2, "0x800f12", "EPYC-v4", "qemu", "0x1")
    assert m["cmdline"] == CMDLINE and m["initrd"] is True
    assert m["published_entry"] == 2
    assert "entry 2" in doc["summary"]
    assert doc["published"]["vcpus"] == list(PUBLISHED_VCPUS)
    assert doc["published"]["guest_features"] == ["0x1"]
    # the text form says the same
    rc, text, _ = run(["explain", "--snp-report", r, str(out)])
    assert rc == 0 and "measurements.json entry 2" in text and "NOT authenticated" in text


# --- one input changed at a time ------------------------------------------------------------------

EDITS = {
    # id: (oracle kwargs, extra CLI args, differences prefix, match fields)
    "vcpus": (dict(vcpus=4), [], "vCPUs: launched with 4; measurements.json has 1,2,8",
              {"vcpus": 4}),
    "cpu-signature": (dict(sig=MILAN), [], "CPU signature: launched with 0xa00f11 (EPYC-Milan",
                      {"vcpu_sig": "0xa00f11", "vcpu_type": "EPYC-Milan"}),
    "vmm": (dict(vmm="ec2"), [], "VMM: launched by ec2; measurements.json has qemu",
            {"vmm": "ec2", "vcpu_sig": None, "vcpu_sig_measured": False}),
    "guest-features": (dict(features=0x21), [],
                       "guest features: launched with 0x21 (DebugSwap); measurements.json has 0x1",
                       {"guest_features": "0x21"}),
    "trailing-newline": (dict(append=CMDLINE + "\n"), [],
                         "command line: cmdline + trailing newline, not cmdline.txt",
                         {"cmdline": CMDLINE + "\n"}),
    "no-initrd": (dict(initrd=False), [], "initrd: launched without -initrd",
                  {"initrd": False}),
    "cmdline-byte": (dict(append=CMDLINE.replace("debug", "debuh")),
                     ["--append", CMDLINE.replace("debug", "debuh")],
                     "command line: the --append given, not cmdline.txt (first difference at "
                     f"byte {CMDLINE.index('debug') + 4}: b'h' where cmdline.txt has b'g'",
                     {"cmdline": CMDLINE.replace("debug", "debuh")}),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_one_change_is_named_exactly(out, files, tmp_path, case):
    kwargs, extra, prefix, fields = EDITS[case]
    r = report_file(tmp_path, oracle(files, **kwargs))
    rc, doc, err = explain_json(["--snp-report", r, *extra, str(out)])
    assert rc == 0, err
    assert len(doc["differences"]) == 1, doc["differences"]
    assert doc["differences"][0].startswith(prefix), doc["differences"][0]
    for k, v in fields.items():
        assert doc["match"][k] == v, (k, doc["match"])
    # every axis not edited keeps its published value
    base = {"vcpus": 2, "vmm": "qemu", "guest_features": "0x1"}
    for k, v in base.items():
        if k not in fields:
            assert doc["match"][k] == v, (k, doc["match"])
    assert isinstance(doc["match"]["vcpus"], int)
    assert doc["summary"].startswith("FOUND: launched with ")


def test_summary_reads_like_the_issue(out, files, tmp_path):
    """Two axes at once: "launched with 4 vCPUs and guest features 0x21 (DebugSwap);
    measurements.json has 1,2,8 and 0x1"."""
    r = report_file(tmp_path, oracle(files, vcpus=4, features=0x21))
    rc, text, err = run(["explain", "--snp-report", r, str(out)])
    assert rc == 0, err
    assert ("FOUND: launched with 4 vCPUs and guest features 0x21 (DebugSwap); "
            "measurements.json has 1,2,8 and 0x1") in text


def test_ec2_says_the_signature_is_not_measured(out, files, tmp_path):
    r = report_file(tmp_path, oracle(files, vmm="gce", sig=MILAN))
    rc, doc, _ = explain_json(["--snp-report", r, str(out)])
    assert rc == 0
    m = doc["match"]
    assert m["vmm"] == "gce" and m["vcpu_sig"] is None and m["vcpu_type"] is None
    assert "does not put the CPU signature in the VMSA" in m["vcpu_sig_note"]
    assert "0x800f12" in m["vcpu_sigs"] and "0xa00f11" in m["vcpu_sigs"]


def test_overridden_kernel_is_named(out, files, tmp_path):
    other = random.Random(99).randbytes(4096)
    k = tmp_path / "k2"
    k.write_bytes(other)
    digest = guest.snp_calc_launch_digest(2, EPYC_V4, str(files["fw"]), str(k),
                                          str(files["initrd"]), CMDLINE, 1, "", VMMType.QEMU)
    r = report_file(tmp_path, digest)
    rc, doc, err = explain_json(["--snp-report", r, "--kernel", str(k), str(out)])
    assert rc == 0, err
    assert doc["differences"] == [f"kernel: --kernel {k} was launched, not OUT's"]


# --- inputs as files and as digests, no OUT ------------------------------------------------------

def test_digests_instead_of_files(files, tmp_path):
    r = report_file(tmp_path, oracle(files, vcpus=3, features=0x21))
    rc, doc, err = explain_json([
        "--snp-report", r, "--firmware", str(files["fw"]),
        "--kernel-sha256", hashlib.sha256(KERNEL).hexdigest(),
        "--initrd-sha256", hashlib.sha256(INITRD).hexdigest(), "--append", CMDLINE])
    assert rc == 0, err
    assert (doc["match"]["vcpus"], doc["match"]["guest_features"]) == (3, "0x21")
    assert doc["published"] is None and doc["differences"] == []


def test_ovmf_hash_with_the_layout_only(files, fw, tmp_path):
    """The launched firmware is a 1 MiB image ending with the fixture page; explain gets only its
    firmware-only digest (sev-snp-measure's) and the fixture page for the SEV metadata layout."""
    big = tmp_path / "big.fd"
    big.write_bytes(random.Random(5).randbytes((1 << 20) - len(fw)) + fw)
    ovmf_hash = guest.calc_snp_ovmf_hash(str(big)).hex()
    r = report_file(tmp_path, oracle(files, vcpus=5, fw=big))
    rc, doc, err = explain_json(["--snp-report", r, "--firmware", str(files["fw"]),
                                 "--ovmf-hash", ovmf_hash, "--kernel", str(files["kernel"]),
                                 "--initrd", str(files["initrd"]), "--append", CMDLINE])
    assert rc == 0, err
    assert doc["match"]["vcpus"] == 5
    # without the digest the fixture page alone is not the launched firmware
    rc, doc, _ = explain_json(["--snp-report", r, "--firmware", str(files["fw"]),
                               "--kernel", str(files["kernel"]), "--initrd",
                               str(files["initrd"]), "--append", CMDLINE, "--max-vcpus", "6"])
    assert rc == 1 and doc["match"] is None


def test_measure_snp_from_digests_equals_sev_snp_measure(files):
    rc, stdout, err = run([
        "measure", "snp", "--firmware", str(files["fw"]),
        "--kernel-sha256", hashlib.sha256(KERNEL).hexdigest(),
        "--initrd-sha256", hashlib.sha256(INITRD).hexdigest(), "--append", CMDLINE,
        "--vcpus", "4", "--vcpu-type", "EPYC-Milan", "--guest-features", "0x21"])
    assert rc == 0, err
    assert stdout.strip() == oracle(files, vcpus=4, sig=MILAN, features=0x21).hex()
    big_hash = guest.calc_snp_ovmf_hash(str(files["fw"])).hex()
    rc, stdout2, _ = run([
        "measure", "snp", "--firmware", str(files["fw"]), "--ovmf-hash", big_hash,
        "--kernel-sha256", hashlib.sha256(KERNEL).hexdigest(), "--append", CMDLINE,
        "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--json"])
    assert rc == 0
    doc = json.loads(stdout2)
    assert doc["launch_digest"] == oracle(files, vcpus=1, initrd=False).hex()
    assert doc["inputs"]["kernel"] == {"sha256": hashlib.sha256(KERNEL).hexdigest(), "size": None}


# --- nothing matches ------------------------------------------------------------------------------

def test_no_match_exits_1_with_counts_and_culprits(out, tmp_path):
    r = report_file(tmp_path, hashlib.sha384(b"no launch has this digest").digest())
    rc, stdout, err = run(["explain", "--snp-report", r, "--max-vcpus", "4", str(out)])
    line = one_line_error(rc, err, 1)
    assert "no launch reproduces MEASUREMENT" in line
    assert "NOT FOUND" in stdout and "likely culprits" in stdout
    for word in ("firmware:", "kernel:", "initrd:", "command line:", "outside the space"):
        assert word in stdout
    rc, stdout, _ = run(["explain", "--json", "--snp-report", r, "--max-vcpus", "4", str(out)])
    doc = json.loads(stdout)
    s = doc["searched"]
    assert rc == 1 and doc["match"] is None
    assert s["vcpus"] == 4 and s["vmms"] == 3 and s["guest_features"] == 256
    assert s["variants"] == len(s["variant_labels"]) == 9
    assert s["candidates"] == s["variants"] * s["vmms"] * s["vcpu_sigs"] * 256 * 4
    assert len(doc["culprits"]) == 5


# --- real reports: the signature ------------------------------------------------------------------

def test_real_report_signature_verified_then_searched(out, vectors):
    d = vectors / "snp/virtee-sev"
    rc, stdout, err = run(["explain", "--snp-report", str(d / "report_milan.hex"),
                           "--vcek", str(d / "vcek_milan.der"), "--chain",
                           str(d / "cert_chain_milan"), "--max-vcpus", "2", str(out)])
    one_line_error(rc, err, 1)      # its launch inputs are not published: nothing matches
    assert "signature: VCEK signature verifies" in stdout


def test_real_report_go_sev_guest_builtin_chain(out, vectors):
    d = vectors / "snp/go-sev-guest"
    rc, stdout, err = run(["explain", "--json", "--snp-report", str(d / "attestation.bin"),
                           "--vcek", str(d / "vcek.testcer"), "--max-vcpus", "1", str(out)])
    if rc == 1 and "signature" in err:
        pytest.fail(err)
    assert rc == 1
    assert json.loads(stdout)["signature"].startswith("VCEK signature verifies")


def test_edited_real_report_fails_signature(out, vectors, tmp_path):
    d = vectors / "snp/virtee-sev"
    from builder.formats.snp_report import decode_report_bytes
    raw = bytearray(decode_report_bytes((d / "report_milan.hex").read_bytes()))
    raw[0x90] ^= 1                     # one bit of MEASUREMENT
    p = tmp_path / "edited.bin"
    p.write_bytes(bytes(raw))
    rc, stdout, err = run(["explain", "--snp-report", str(p), "--vcek",
                           str(d / "vcek_milan.der"), "--chain", str(d / "cert_chain_milan"),
                           str(out)])
    line = one_line_error(rc, err, 1)
    assert "does not verify" in line and stdout == ""


# --- bad input: exit 2, one line ------------------------------------------------------------------

def test_bad_inputs(out, files, tmp_path):
    good = report_file(tmp_path, bytes(48))
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a report")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = {
        "no evidence": ["explain", str(out)],
        "missing report": ["explain", "--snp-report", str(tmp_path / "nope"), str(out)],
        "junk report": ["explain", "--snp-report", str(junk), str(out)],
        "fifo report": ["explain", "--snp-report", str(fifo), str(out)],
        "no firmware": ["explain", "--snp-report", good, "--kernel", str(files["kernel"])],
        "no kernel": ["explain", "--snp-report", good, "--firmware", str(files["fw"])],
        "bad digest": ["explain", "--snp-report", good, "--firmware", str(files["fw"]),
                       "--kernel-sha256", "xyz"],
        "short digest": ["explain", "--snp-report", good, "--firmware", str(files["fw"]),
                         "--kernel-sha256", "ab" * 31],
        "both kernels": ["explain", "--snp-report", good, "--kernel", str(files["kernel"]),
                         "--kernel-sha256", "ab" * 32, str(out)],
        "max-vcpus 0": ["explain", "--snp-report", good, "--max-vcpus", "0", str(out)],
        "not an OUT": ["explain", "--snp-report", good, str(tmp_path)],
        "chain without vcek": ["explain", "--snp-report", good, "--chain", good, str(out)],
        "bad vcek": ["explain", "--snp-report", good, "--vcek", str(junk), str(out)],
        "bad ovmf hash": ["explain", "--snp-report", good, "--ovmf-hash", "00", str(out)],
        "firmware without SEV metadata": ["explain", "--snp-report", good, "--firmware",
                                          str(junk), "--kernel", str(files["kernel"])],
        "measure: bad digest": ["measure", "snp", "--firmware", str(files["fw"]),
                                "--kernel-sha256", "g" * 64, "--vcpus", "1",
                                "--vcpu-type", "EPYC"],
        "measure: initrd digest without kernel": [
            "measure", "snp", "--firmware", str(files["fw"]), "--initrd-sha256", "ab" * 32,
            "--vcpus", "1", "--vcpu-type", "EPYC"],
    }
    for name, args in cases.items():
        rc, _, err = run(args)
        assert rc == 2, (name, rc, err)
        one_line_error(rc, err, 2)


# --- Kata: the runtime release's composition ------------------------------------------------------

def test_kata_release_composition_is_named(fw, files, tmp_path):
    """OUT of a launch.kata recipe (Kata 4.1.0, pod CPU limits 0 and 2); the node runs Kata 3.31.0,
    which adds nr_cpus=<vCPUs> to the command line: explain names that release's composition."""
    from builder.kata.config import load_kata_config
    from builder.kata.go_runtime import HostFacts, Pod, compose
    from builder.kata.versions import KATA_RELEASES
    from builder.measure.sev_hashes import KernelHashes
    from builder.measure.snp import snp_matrix
    toml = Path(__file__).resolve().parent.parent / "recipes/kata/configuration-qemu-snp-4.1.toml"
    cfg = load_kata_config(toml)
    launches = {(tag, cpus): compose(cfg, KATA_RELEASES[tag], HostFacts(tee="snp"),
                                     Pod(cpus=float(cpus)))
                for tag in ("4.1.0", "3.31.0") for cpus in (0, 2)}
    first = launches["4.1.0", 0]
    pods = [{"pod_cpus": c, "vcpus": launches["4.1.0", c].vcpus, "smp": launches["4.1.0", c].smp,
             "cpu": launches["4.1.0", c].cpu, "memory_mib": 2048,
             "cmdline": launches["4.1.0", c].append,
             "cmdline_sha256": hashlib.sha256(launches["4.1.0", c].append.encode()).hexdigest(),
             "same_cmdline": launches["4.1.0", c].append == first.append} for c in (0, 2)]
    kata = {"version": "4.1.0", "commit": KATA_RELEASES["4.1.0"].commit, "runtime": "go",
            "configuration": "kata/configuration-qemu-snp-4.1.toml", "mode": "image",
            "pods": pods}
    entries = snp_matrix(fw, KernelHashes.of(KERNEL, None, first.append),
                         [p["vcpus"] for p in pods], ["EPYC-v4"], ["qemu"], [0x1])
    out = write_small_out(tmp_path / "out", {
        "firmware.fd": fw, "vmlinuz": KERNEL, "cmdline.txt": first.append.encode(),
        "kata-configuration-qemu-snp.toml": toml.read_bytes()}, {"snp": entries, "kata": kata})
    old = launches["3.31.0", 2]
    assert "nr_cpus=" in old.append and old.append != launches["4.1.0", 2].append
    r = report_file(tmp_path, guest.snp_calc_launch_digest(
        old.vcpus, EPYC_V4, str(files["fw"]), str(files["kernel"]), None, old.append, 1, "",
        VMMType.QEMU))
    rc, doc, err = explain_json(["--snp-report", r, str(out)])
    assert rc == 0, err
    assert doc["match"]["vcpus"] == old.vcpus == 3
    assert doc["match"]["cmdline"] == old.append
    assert len(doc["differences"]) == 1, doc["differences"]
    assert doc["differences"][0].startswith(
        "command line: Kata 3.31.0 composition (pod CPUs 2); OUT was composed for Kata 4.1.0")
