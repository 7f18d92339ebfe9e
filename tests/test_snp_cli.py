"""`ccbuild measure snp` end to end: stdout is exactly the published digest; --json carries the
inputs' sha256, the parameters and a transcript that matches the firmware's SEV metadata as the
sev-snp-measure parser reads it; bad input is exit 2 with one line."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from builder.cli import main

README_DIGEST = ("803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba"
                 "7e534442e7e1e17895dfe778d0228977")
AMDSEV_OVMF_HASH = ("086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa"
                    "16aff8c374c2a55c467a50da6d466b74")


@pytest.fixture
def files(vectors, tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    d = vectors / "snp/sev-snp-measure"
    return {"amdsev": str(d / "ovmf_AmdSev_suffix.bin"), "x64": str(d / "ovmf_OvmfX64_suffix.bin"),
            "empty": str(tmp_path / "empty"), "tmp": tmp_path}


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["measure", "snp", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def readme_args(files, *cpu):
    return ["--firmware", files["amdsev"], "--kernel", files["empty"], "--initrd", files["empty"],
            "--append", "console=ttyS0 loglevel=7", "--vcpus", "1", "--guest-features", "0x21",
            *(cpu or ("--vcpu-type", "EPYC-v4"))]


def test_stdout_is_exactly_the_digest(files, capsys):
    assert run(capsys, *readme_args(files)) == (0, README_DIGEST + "\n", "")


@pytest.mark.parametrize("cpu", [("--vcpu-sig", "0x800f12"), ("--vcpu-type", "epyc"),
                                 ("--vcpu-family", "23", "--vcpu-model", "1", "--vcpu-stepping", "2")])
def test_cpu_spellings(files, capsys, cpu):
    assert run(capsys, *readme_args(files, *cpu))[1] == README_DIGEST + "\n"


def test_base64(files, capsys):
    rc, out, _ = run(capsys, *readme_args(files), "--format", "base64")
    assert out == base64.b64encode(bytes.fromhex(README_DIGEST)).decode() + "\n"


def test_modes(files, capsys):
    assert run(capsys, "--firmware", files["amdsev"], "--mode", "snp:ovmf-hash")[1] == \
        AMDSEV_OVMF_HASH + "\n"
    # virtee/sev measurement.rs test_snp_ovmf_hash_gen_snp_only: start from the published hash.
    rc, out, _ = run(capsys, "--firmware", files["amdsev"], "--ovmf-hash", AMDSEV_OVMF_HASH,
                     "--kernel", files["empty"], "--initrd", files["empty"], "--vcpus", "1",
                     "--vcpu-type", "EPYC-v4")
    assert out == "ddc5224521617a536ee7ce9dd6224d1b58a8d4fda1c741f3ac99fc4bfa04ba6e9fc98646d4a07a9079397fa3852819b5\n"


def test_json_record(files, capsys):
    from sevsnpmeasure.ovmf import OVMF
    rc, out, _ = run(capsys, *readme_args(files), "--json", "--vcpus", "4")
    rec = json.loads(out)
    fw = open(files["amdsev"], "rb").read()
    assert rec["inputs"]["firmware"]["sha256"] == hashlib.sha256(fw).hexdigest()
    assert rec["inputs"]["kernel"]["sha256"] == hashlib.sha256(b"").hexdigest()
    assert rec["inputs"]["cmdline_sha256"] == hashlib.sha256(b"console=ttyS0 loglevel=7\0").hexdigest()
    assert rec["parameters"]["vcpus"] == 4 and rec["parameters"]["vcpu_sig"] == "0x800f12"
    assert rec["parameters"]["guest_features"] == "0x21" and rec["parameters"]["vmm"] == "qemu"
    # The transcript follows the metadata table as the oracle's parser reads it.
    names = {1: "SNP_SEC_MEM", 2: "SNP_SECRETS", 3: "CPUID", 4: "SVSM_CAA", 0x10: "SNP_KERNEL_HASHES"}
    kinds = {1: "ZERO", 2: "SECRETS", 3: "CPUID", 4: "ZERO", 0x10: "NORMAL"}
    expected = [{"type": "NORMAL", "gpa": "0xfffff000", "pages": 1, "section": "firmware"}]
    for d in OVMF(files["amdsev"]).metadata_items():
        expected.append({"type": kinds[d.section_type_int], "gpa": hex(d.gpa),
                         "pages": d.size // 4096, "section": names[d.section_type_int]})
    expected += [{"type": "VMSA", "gpa": "0xfffffffff000", "pages": 1, "section": "vmsa-bsp"},
                 {"type": "VMSA", "gpa": "0xfffffffff000", "pages": 3, "section": "vmsa-ap"}]
    assert rec["transcript"] == expected


def test_json_ec2_measures_cpuid_last(files, capsys):
    rec = json.loads(run(capsys, "--firmware", files["amdsev"], "--vcpus", "1", "--vcpu-type",
                         "EPYC-Milan", "--vmm", "ec2", "--json")[1])
    kinds = [op["type"] for op in rec["transcript"]]
    assert kinds.count("CPUID") == 1 and kinds[-2] == "CPUID" and kinds[-1] == "VMSA"


@pytest.mark.parametrize("argv,needle", [
    (["--firmware", "{x64}", "--kernel", "{empty}", "--vcpus", "1", "--vcpu-type", "EPYC"], "AmdSevX64"),
    (["--firmware", "{empty}", "--vcpus", "1", "--vcpu-type", "EPYC"], "not a non-zero multiple"),
    (["--firmware", "{zeros}", "--vcpus", "1", "--vcpu-type", "EPYC"], "no SEV metadata"),
    (["--firmware", "{tmp}/missing", "--vcpus", "1", "--vcpu-type", "EPYC"], "cannot read --firmware"),
    (["--firmware", "{amdsev}", "--vcpus", "1", "--vcpu-type", "EPYC-Milan-v9"], "versions"),
    (["--firmware", "{amdsev}", "--vcpus", "1", "--vcpu-type", "Skylake"], "unknown vCPU type"),
    (["--firmware", "{amdsev}", "--vcpus", "1"], "missing vCPU"),
    (["--firmware", "{amdsev}", "--vcpu-type", "EPYC"], "--vcpus"),
    (["--firmware", "{amdsev}", "--vcpus", "1", "--vcpu-type", "EPYC", "--append", "x"], "need --kernel"),
    (["--firmware", "{amdsev}", "--vcpus", "1", "--vcpu-type", "EPYC", "--guest-features", "zz"], "integer"),
    (["--firmware", "{amdsev}", "--vcpus", "1", "--vcpu-type", "EPYC", "--ovmf-hash", "abcd"], "48"),
    (["--firmware", "{amdsev}", "--vcpus", "1", "--vcpu-family", "25"], "--vcpu-model"),
    (["--firmware", "{amdsev}", "--vcpus", "1", "--vcpu-type", "EPYC", "--vmm", "xen"], "invalid choice"),
])
def test_bad_input_is_exit_2_one_line(files, capsys, argv, needle):
    (files["tmp"] / "zeros").write_bytes(bytes(65536))
    argv = [a.format(**files, zeros=str(files["tmp"] / "zeros")) for a in argv]
    try:
        rc, out, err = run(capsys, *argv)
    except SystemExit as e:  # argparse's own errors
        rc, err = e.code, capsys.readouterr().err
        out = ""
    assert rc == 2 and out == ""
    assert err.startswith("ccbuild: error: ") and err.count("\n") == 1 and needle in err, err
