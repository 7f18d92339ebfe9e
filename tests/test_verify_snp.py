"""`ccbuild verify OUT --snp-report`: the real reports in tests/vectors/snp through the CLI,
single-byte damage, and matching a report's MEASUREMENT to exactly one matrix entry.

OUT is a small but complete output directory made in the test: the sev-snp-measure AmdSev
firmware fixture (last 4 KiB of an edk2-stable202405 build), a kernel/initrd/cmdline, the
engine's matrix in measurements.json, manifest.json and SHA256SUMS written by the build's own
writers. The matching test writes a matrix digest into a copy of a real report: its signature
then cannot verify, and the test says so instead of pretending otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder.emit.manifest import dumps, make_manifest, sha256sums
from builder.measure.sev_hashes import KernelHashes
from builder.measure.snp import snp_matrix

REPO = Path(__file__).resolve().parent.parent
MEASUREMENT = 0x90


def ccbuild(*args):
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def write_out(d: Path, artifacts: dict[str, bytes], measurements: dict) -> Path:
    files = dict(artifacts)
    files["measurements.json"] = dumps(measurements)
    manifest = make_manifest(name="t", platform="snp" if "snp" in measurements else "tdx",
                             recipe_sha256="0" * 64, recipe_digest="0" * 64,
                             source_date_epoch=0, inputs=[], outputs=files, chain={},
                             build_key="0" * 64, boot={})
    files["manifest.json"] = dumps(manifest)
    files["SHA256SUMS"] = sha256sums(files)
    d.mkdir(parents=True, exist_ok=True)
    for n, b in files.items():
        (d / n).write_bytes(b)
    return d


@pytest.fixture
def snp_out(vectors, tmp_path) -> Path:
    fw = (vectors / "snp/sev-snp-measure/ovmf_AmdSev_suffix.bin").read_bytes()
    kernel, initrd, cmdline = b"K" * 5000, b"I" * 3000, "console=ttyS0"
    entries = snp_matrix(fw, KernelHashes.of(kernel, initrd, cmdline), [1, 2, 4],
                         ["EPYC-v4", "EPYC-Milan", "EPYC-Genoa"], ["qemu", "ec2"], [0x1, 0x21])
    return write_out(tmp_path / "out", {"firmware.fd": fw, "vmlinuz": kernel,
                                        "initrd.img": initrd, "cmdline.txt": cmdline.encode()},
                     {"snp": entries})


REPORTS = [  # (report, vcek, chain)
    ("virtee-sev/report_milan.hex", "virtee-sev/vcek_milan.der", "virtee-sev/cert_chain_milan"),
    ("go-sev-guest/attestation.bin", "go-sev-guest/vcek.testcer", "go-sev-guest/milan.testcer"),
]


def verdict(cp, title_part: str) -> dict:
    doc = json.loads(cp.stdout)
    return next(v for v in doc["verdicts"] if title_part in v["title"])


def rows(v: dict, item: str) -> list[dict]:
    return [c for c in v["checks"] if c["item"] == item]


def test_out_itself_verifies(snp_out):
    cp = ccbuild("verify", snp_out)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "PASS" in cp.stdout and "snp 4 vCPU EPYC-Genoa ec2 features 0x21" in cp.stdout


@pytest.mark.parametrize("report,vcek,chain", REPORTS)
def test_real_reports_verify_through_the_cli(vectors, snp_out, report, vcek, chain):
    s = vectors / "snp"
    cp = ccbuild("verify", snp_out, "--snp-report", s / report, "--vcek", s / vcek,
                 "--chain", s / chain, "--json")
    v = verdict(cp, "attestation report")
    sig = rows(v, "signature")[0]
    assert sig["status"] == "ok", sig
    assert "VCEK signature verifies" in sig["detail"] and "milan" in sig["detail"]
    # these reports come from other guests: no entry of this OUT may claim them
    assert rows(v, "measurement")[0]["status"] == "FAIL"
    assert "matches none of the 36 entries" in rows(v, "measurement")[0]["detail"]
    assert cp.returncode == 1


@pytest.mark.parametrize("what,offset", [("signed area (MEASUREMENT)", MEASUREMENT + 5),
                                         ("signed area (REPORT_DATA)", 0x50),
                                         ("signature R", 0x2A0 + 3),
                                         ("signature S", 0x2A0 + 72 + 10)])
def test_flipped_report_byte_fails_with_message(vectors, snp_out, tmp_path, what, offset):
    s = vectors / "snp/go-sev-guest"
    raw = bytearray((s / "attestation.bin").read_bytes())
    raw[offset] ^= 0x01
    bad = tmp_path / "report.bin"
    bad.write_bytes(bytes(raw))
    cp = ccbuild("verify", snp_out, "--snp-report", bad, "--vcek", s / "vcek.testcer",
                 "--chain", s / "milan.testcer")
    assert cp.returncode == 1, what
    assert "VCEK -> report: the report signature (bytes 0x0-0x29f) does not verify" in cp.stdout


@pytest.mark.parametrize("which", ["vcek", "ask"])
def test_flipped_certificate_byte_fails_with_message(vectors, snp_out, tmp_path, which):
    s = vectors / "snp/go-sev-guest"
    vcek = bytearray((s / "vcek.testcer").read_bytes())
    chain = (s / "milan.testcer").read_bytes()
    if which == "vcek":
        # a byte inside the signed TBS part (the subject public key), not the DER framing
        from cryptography import x509
        cert = x509.load_der_x509_certificate(bytes(vcek))
        tbs = cert.tbs_certificate_bytes
        at = bytes(vcek).index(tbs) + len(tbs) - 40
        vcek[at] ^= 0x01
        expect = "ASK -> VCEK"
    else:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding
        ask, ark = x509.load_pem_x509_certificates(chain)
        der = bytearray(ask.public_bytes(Encoding.DER))
        n = ask.public_key().public_numbers().n
        at = bytes(der).index(n.to_bytes((n.bit_length() + 7) // 8, "big")) + 100
        der[at] ^= 0x01                   # inside the ASK's RSA modulus: parses, fails to verify
        import base64
        pem = (b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der))
               + b"-----END CERTIFICATE-----\n")
        chain = pem + ark.public_bytes(Encoding.PEM)
        expect = "ARK -> ASK"
    (tmp_path / "vcek").write_bytes(bytes(vcek))
    (tmp_path / "chain").write_bytes(chain)
    cp = ccbuild("verify", snp_out, "--snp-report", s / "attestation.bin",
                 "--vcek", tmp_path / "vcek", "--chain", tmp_path / "chain")
    assert cp.returncode in (1, 2), cp.stderr
    assert expect in cp.stdout + cp.stderr, cp.stdout + cp.stderr


def test_structurally_damaged_certificate_is_a_clear_failure(vectors, snp_out, tmp_path):
    s = vectors / "snp/go-sev-guest"
    vcek = bytearray((s / "vcek.testcer").read_bytes())
    vcek[vcek.index(b"\x30\x7b\x31") if b"\x30\x7b\x31" in vcek else 60] ^= 0x40
    (tmp_path / "vcek").write_bytes(bytes(vcek))
    cp = ccbuild("verify", snp_out, "--snp-report", s / "attestation.bin",
                 "--vcek", tmp_path / "vcek", "--chain", s / "milan.testcer")
    assert cp.returncode in (1, 2)
    assert "Traceback" not in cp.stderr
    out = cp.stdout + cp.stderr
    assert "VCEK" in out or "certificate" in out, out


@pytest.mark.parametrize("index", [0, 7, 22, 35])
def test_measurement_matched_to_exactly_that_entry(vectors, snp_out, tmp_path, index):
    entries = json.loads((snp_out / "measurements.json").read_text())["snp"]
    e = entries[index]
    s = vectors / "snp/go-sev-guest"
    raw = bytearray((s / "attestation.bin").read_bytes())
    raw[MEASUREMENT:MEASUREMENT + 48] = bytes.fromhex(e["launch_digest"])
    forged = tmp_path / "report.bin"
    forged.write_bytes(bytes(raw))
    # matching alone (no --vcek: the CLI says the report is not authenticated)
    cp = ccbuild("verify", snp_out, "--snp-report", forged, "--json")
    v = verdict(cp, "attestation report")
    m = rows(v, "measurement")[0]
    assert m["status"] == "ok"
    same = [i for i, x in enumerate(entries) if x["launch_digest"] == e["launch_digest"]]
    if len(same) > 1:
        # EC2 VMSAs carry no CPU signature: those digests are shared by every CPU type
        assert e["vmm"] == "ec2" and len(same) == 3
        assert m["detail"].startswith("matches 3 entries of 36 that share this digest")
        for i in same:
            assert f"entry {i + 1}: " in m["detail"]
        return
    assert m["detail"].startswith(f"matches entry {index + 1} of 36: {e['vcpus']} vCPU, "
                                  f"{e['vcpu_type']} (sig {e['vcpu_sig']}), VMM {e['vmm']}, "
                                  f"guest features {e['guest_features']}")
    assert rows(v, "signature")[0]["status"] == "skip"
    assert "NOT authenticated" in rows(v, "signature")[0]["detail"]
    # with the VCEK the edited report is rejected: the match does not make it genuine
    cp = ccbuild("verify", snp_out, "--snp-report", forged, "--vcek", s / "vcek.testcer",
                 "--chain", s / "milan.testcer", "--json")
    v = verdict(cp, "attestation report")
    assert rows(v, "signature")[0]["status"] == "FAIL"
    assert rows(v, "measurement")[0]["status"] == "ok"
    assert cp.returncode == 1


def test_report_of_other_parameters_matches_nothing(vectors, snp_out, tmp_path):
    """A digest of a launch outside the matrix (8 vCPUs) is reported as matching no entry."""
    fw = (snp_out / "firmware.fd").read_bytes()
    other = snp_matrix(fw, KernelHashes.of(b"K" * 5000, b"I" * 3000, "console=ttyS0"), [8],
                       ["EPYC-v4"], ["qemu"], [0x1])[0]
    raw = bytearray((vectors / "snp/go-sev-guest/attestation.bin").read_bytes())
    raw[MEASUREMENT:MEASUREMENT + 48] = bytes.fromhex(other["launch_digest"])
    (tmp_path / "r").write_bytes(bytes(raw))
    cp = ccbuild("verify", snp_out, "--snp-report", tmp_path / "r")
    assert cp.returncode == 1
    assert "MEASUREMENT matches none of the 36 entries" in cp.stdout


def test_host_data_and_policy(vectors, snp_out, tmp_path):
    raw = bytearray((vectors / "snp/go-sev-guest/attestation.bin").read_bytes())
    raw[0xC0] = 0x42                       # HOST_DATA set, but the build has no initdata
    (tmp_path / "r").write_bytes(bytes(raw))
    cp = ccbuild("verify", snp_out, "--snp-report", tmp_path / "r", "--json")
    v = verdict(cp, "attestation report")
    assert rows(v, "host_data")[0]["status"] == "FAIL"
    pol = rows(v, "policy")[0]
    assert pol["status"] == "info" and pol["detail"].startswith("0xb0000: ABI >= 0.0")
    assert "debug=yes" in pol["detail"]
    assert rows(v, "policy debug")[0]["status"] == "FAIL"   # this test report allows debug


def test_damaged_out_is_named(snp_out):
    p = snp_out / "vmlinuz"
    b = bytearray(p.read_bytes())
    b[100] ^= 0xFF
    p.write_bytes(bytes(b))
    cp = ccbuild("verify", snp_out, "--failures")
    assert cp.returncode == 1
    assert "FAIL  sha256 vmlinuz" in cp.stdout
    assert "FAIL  SHA256SUMS vmlinuz" in cp.stdout
    assert "launch digest recomputed from OUT differs" in cp.stdout


def test_bad_option_combinations_are_exit_2(snp_out):
    cp = ccbuild("verify", snp_out, "--signature")
    assert cp.returncode == 2 and cp.stderr.startswith("ccbuild: error: --signature needs")
    cp = ccbuild("verify", snp_out / "nope")
    assert cp.returncode == 2 and "Traceback" not in cp.stderr


def test_host_data_and_id_key_from_the_build(vectors, snp_out, tmp_path):
    """HOST_DATA against measurements.json's initdata record, ID_KEY_DIGEST and policy against
    its snp_id record (the shapes builder.measurements writes)."""
    m = json.loads((snp_out / "measurements.json").read_text())
    raw = bytearray((vectors / "snp/go-sev-guest/attestation.bin").read_bytes())
    host = bytes(range(32))
    raw[0xC0:0xE0] = host
    m["initdata"] = {"snp_host_data": host.hex()}
    m["snp_id"] = {"id_key_digest": "ab" * 48, "policy": "0x30000"}
    write_out(snp_out, {n: (snp_out / n).read_bytes() for n in
                        ("firmware.fd", "vmlinuz", "initrd.img", "cmdline.txt")}, m)
    (tmp_path / "r").write_bytes(bytes(raw))
    cp = ccbuild("verify", snp_out, "--snp-report", tmp_path / "r", "--json")
    v = verdict(cp, "attestation report")
    assert rows(v, "host_data")[0]["status"] == "ok"
    idk = rows(v, "id_key_digest")[0]
    assert idk["status"] == "FAIL" and idk["expected"] == "ab" * 48
    assert [c for c in rows(v, "policy") if c["status"] == "FAIL"][0]["expected"] == "0x30000"
