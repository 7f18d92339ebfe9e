"""Hostile OUT directories, certificates and keys through the real CLI (issue 10, defects 4 and 6).

The base OUT is small but complete, made with the build's own writers (builder.emit.manifest)
over the sev-snp-measure AmdSev firmware fixture and tiny kernel/initrd/cmdline: `ccbuild verify
OUT` accepts it (exit 0), so every case below fails only because of what it changes. Each case
must end with exit 1 or 2, exactly one ``ccbuild: error:`` line on stderr and no traceback, within
the helpers' memory and time limits.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from helpers import assert_one_line_error, run_cli, write_small_out as _write_out

from builder.emit.manifest import dumps
from builder.emit.signature import sign_manifest
from builder.measure.sev_hashes import KernelHashes
from builder.measure.snp import snp_matrix

P384_PEM = serialization.Encoding.PEM


@pytest.fixture(scope="module")
def base_out(vectors, tmp_path_factory) -> Path:
    fw = (vectors / "snp/sev-snp-measure/ovmf_AmdSev_suffix.bin").read_bytes()
    kernel, initrd, cmdline = b"K" * 4096, b"I" * 2048, "console=ttyS0"
    entries = snp_matrix(fw, KernelHashes.of(kernel, initrd, cmdline), [1, 2], ["EPYC-v4"],
                         ["qemu"], [0x1])
    return _write_out(tmp_path_factory.mktemp("base") / "out",
                      {"firmware.fd": fw, "vmlinuz": kernel, "initrd.img": initrd,
                       "cmdline.txt": cmdline.encode()}, {"snp": entries})


@pytest.fixture
def out(base_out, tmp_path) -> Path:
    d = tmp_path / "out"
    shutil.copytree(base_out, d, symlinks=True)
    return d


def test_clean_out_verifies(base_out):
    o = run_cli(["verify", str(base_out)])
    assert o.rc == 0, o.stdout + o.stderr
    assert "PASS" in o.stdout and o.stderr == ""


# --- manifest.json and measurements.json, tampered ----------------------------------------------

def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _measurements(out: Path) -> dict:
    return json.loads((out / "measurements.json").read_text())


def _set(doc: dict, path: str, value) -> dict:
    doc = copy.deepcopy(doc)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    cur = doc
    for k in keys[:-1]:
        cur = cur[k]
    if value is _DELETE:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return doc


_DELETE = object()

# (name, path, value, text expected in the error line)
MANIFEST_EDITS = [
    ("schema-version", "schema", "ccbuild-manifest/99", "schema"),
    ("tool-list", "tool", ["ccbuild"], "tool"),
    ("recipe-missing", "recipe", _DELETE, "recipe: required"),
    ("platform-unknown", "recipe.platform", "arm-cca", "recipe.platform"),
    ("recipe-sha-nonhex", "recipe.sha256", "z" * 64, "recipe.sha256"),
    ("sde-string", "source_date_epoch", "yesterday", "source_date_epoch"),
    ("sde-huge", "source_date_epoch", 10 ** 30, "source_date_epoch"),
    ("sde-float", "source_date_epoch", 1.5, "source_date_epoch"),
    ("sde-negative", "source_date_epoch", -1, "source_date_epoch"),
    ("outputs-dict", "outputs", {"vmlinuz": "x"}, "outputs"),
    ("outputs-null", "outputs", None, "outputs"),
    ("output-no-sha", "outputs.0.sha256", _DELETE, "outputs[0].sha256"),
    ("output-sha-upper", "outputs.0.sha256", "A" * 64, "outputs[0].sha256"),
    ("output-sha-int", "outputs.0.sha256", 12, "outputs[0].sha256"),
    ("output-size-bool", "outputs.0.size", True, "outputs[0].size"),
    ("output-size-negative", "outputs.0.size", -5, "outputs[0].size"),
    ("output-size-huge", "outputs.0.size", 10 ** 39, "outputs[0].size"),
    ("output-path-traversal", "outputs.0.path", "../../etc/passwd", "outputs[0].path"),
    ("output-path-manifest", "outputs.0.path", "manifest.json", "outputs[0].path"),
    ("output-is-list", "outputs.0", ["firmware.fd"], "outputs[0]"),
    ("inputs-string", "inputs", "everything", "inputs"),
    ("input-sha-short", "inputs.0.sha256", "ab", "inputs[0].sha256"),
    ("chain-list", "chain", [], "chain"),
    ("boot-memory-string", "boot.memory_mib", "lots", "boot.memory_mib"),
    ("unknown-key", "extra", 1, "extra: unknown key"),
    ("control-key", "bad\rkey\n\x1b[2J", 1, "unknown key"),
]


@pytest.mark.parametrize("name,path,value,text", MANIFEST_EDITS, ids=[e[0] for e in MANIFEST_EDITS])
def test_tampered_manifest(out, name, path, value, text):
    (out / "manifest.json").write_bytes(dumps(_set(_manifest(out), path, value)))
    line = assert_one_line_error(run_cli(["verify", str(out)]), (2,), "manifest.json")
    assert text in line, line


def test_duplicate_output_path(out):
    m = _manifest(out)
    m["outputs"].append(dict(m["outputs"][0]))
    (out / "manifest.json").write_bytes(dumps(m))
    assert_one_line_error(run_cli(["verify", str(out)]), (2,), "listed twice")


MEASUREMENT_EDITS = [
    ("snp-dict", "snp", {"a": 1}, "snp"),
    ("vcpus-string", "snp.0.vcpus", "many", "snp[0].vcpus"),
    ("vcpus-huge", "snp.0.vcpus", 10 ** 6, "snp[0].vcpus"),
    ("vcpus-float", "snp.0.vcpus", 2.0, "snp[0].vcpus"),
    ("digest-nonhex", "snp.0.launch_digest", "g" * 96, "snp[0].launch_digest"),
    ("digest-list", "snp.0.launch_digest", ["00"], "snp[0].launch_digest"),
    ("digest-missing", "snp.0.launch_digest", _DELETE, "snp[0].launch_digest"),
    ("vmm-unknown", "snp.0.vmm", "xen", "snp[0].vmm"),
    ("features-nonhex", "snp.0.guest_features", "0xzz", "snp[0].guest_features"),
    ("sig-null", "snp.0.vcpu_sig", None, "snp[0].vcpu_sig"),
    ("tdx-string", "tdx", "yes", "tdx"),
    ("tdx-mrtd-int", "tdx", {"mrtd": 5, "rtmr0": None, "rtmr1": None, "rtmr2": None,
                             "rtmr3": None}, "tdx.mrtd"),
    ("tdx-event-register", "tdx", {"mrtd": "0" * 96, "rtmr0": None, "rtmr1": None,
                                   "rtmr2": None, "rtmr3": None,
                                   "events": [{"register": "rtmr9", "event_type": "EV_X",
                                               "description": "", "digest": "0" * 96}]},
     "tdx.events[0].register"),
    ("tdx-boot-option", "tdx", {"mrtd": "0" * 96, "rtmr0": None, "rtmr1": None, "rtmr2": None,
                                "rtmr3": None, "profile": {"boot_options": {"Boot00ZZ": "00"}}},
     "boot_options"),
    ("snp-id-list", "snp_id", ["id"], "snp_id"),
    ("host-data-short", "initdata", {"snp_host_data": "00"}, "initdata.snp_host_data"),
]


@pytest.mark.parametrize("name,path,value,text", MEASUREMENT_EDITS,
                         ids=[e[0] for e in MEASUREMENT_EDITS])
def test_tampered_measurements(out, name, path, value, text):
    (out / "measurements.json").write_bytes(dumps(_set(_measurements(out), path, value)))
    line = assert_one_line_error(run_cli(["verify", str(out)]), (2,), "measurements.json")
    assert text in line, line


def _deep(n: int) -> bytes:
    return b'{"snp": ' + b"[" * n + b"]" * n + b"}"


RAW_DOCUMENTS = [  # (name, bytes, text)
    ("duplicate-key", None, "duplicate key"),
    ("nan", None, "NaN"),
    ("infinity", None, "Infinity"),
    ("deep", _deep(10_000), "nested too deeply"),
    ("non-utf8", b'{"schema": "\xff\xfe"}', "not UTF-8"),
    ("empty", b"", "not valid JSON"),
    ("truncated", b'{"schema": "ccbuild-manifest/1", "outputs": [', "not valid JSON"),
    ("top-list", b"[1, 2, 3]", "must be a mapping"),
    ("int-digits", b'{"source_date_epoch": ' + b"9" * 5000 + b"}", "digits"),
    ("bom", b"\xef\xbb\xbf{}", "JSON"),
]


def _raw(name: str, doc: dict) -> bytes:
    text = json.dumps(doc)
    if name == "duplicate-key":
        return text.replace("{", '{"dup": 1, "dup": 2, ', 1).encode()
    if name == "nan":
        return text.replace("{", '{"nan": NaN, ', 1).encode()
    if name == "infinity":
        return text.replace("{", '{"inf": -Infinity, ', 1).encode()
    raise AssertionError(name)


@pytest.mark.parametrize("doc", ["manifest.json", "measurements.json"])
@pytest.mark.parametrize("name,data,text", RAW_DOCUMENTS, ids=[r[0] for r in RAW_DOCUMENTS])
def test_malformed_json(out, doc, name, data, text):
    if data is None:
        data = _raw(name, json.loads((out / doc).read_text()))
    (out / doc).write_bytes(data)
    line = assert_one_line_error(run_cli(["verify", str(out)]), (2,), doc)
    assert text in line, line


@pytest.mark.parametrize("doc,code", [("manifest.json", (2,)), ("measurements.json", (1, 2))])
@pytest.mark.parametrize("how", ["sparse-100MB", "fifo", "dev-zero", "directory", "dangling"])
def test_document_not_a_small_regular_file(out, doc, code, how):
    p = out / doc
    p.unlink()
    if how == "sparse-100MB":
        with open(p, "wb") as f:
            f.truncate(100 << 20)
    elif how == "fifo":
        os.mkfifo(p)
    elif how == "dev-zero":
        p.symlink_to("/dev/zero")
    elif how == "directory":
        p.mkdir()
    else:
        p.symlink_to(out / "nowhere")
    assert_one_line_error(run_cli(["verify", str(out)]), code, doc)


# --- entries of OUT the manifest does not list, listed entries that are not regular files -------

def _make(p: Path, how: str, out: Path) -> None:
    if how == "file":
        p.write_bytes(b"extra")
    elif how == "dir":
        p.mkdir()
        (p / "inner").write_bytes(b"x")
    elif how == "fifo":
        os.mkfifo(p)
    elif how == "symlink":
        p.symlink_to(out / "vmlinuz")
    elif how == "dev-zero":
        p.symlink_to("/dev/zero")
    elif how == "dangling":
        p.symlink_to("/nonexistent/x")
    elif how == "symlink-outside":
        (out.parent / "copy").write_bytes((out / "vmlinuz").read_bytes() if (out / "vmlinuz").exists()
                                          else b"")
        p.symlink_to(out.parent / "copy")
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["file", "dir", "fifo", "symlink", "dev-zero", "dangling"])
def test_unlisted_entry_fails(out, how):
    _make(out / "extra.bin", how, out)
    o = run_cli(["verify", str(out)])
    assert_one_line_error(o, (1,), "extra.bin")
    assert "FAIL  entry extra.bin" in o.stdout


def test_hidden_unlisted_entry_fails(out):
    (out / ".hidden").mkdir()
    assert_one_line_error(run_cli(["verify", str(out)]), (1,), ".hidden")


@pytest.mark.parametrize("name", ["vmlinuz", "firmware.fd", "cmdline.txt"])
@pytest.mark.parametrize("how", ["symlink-outside", "fifo", "dir", "dev-zero"])
def test_listed_file_replaced(out, name, how):
    data = (out / name).read_bytes()
    (out.parent / "copy").write_bytes(data)      # same bytes, reached through a symlink
    (out / name).unlink()
    if how == "symlink-outside":
        (out / name).symlink_to(out.parent / "copy")
    else:
        _make(out / name, how, out)
    o = run_cli(["verify", str(out)])
    assert_one_line_error(o, (1,), name)
    assert f"FAIL  sha256 {name}" in o.stdout and "not a regular file" in o.stdout


def test_sums_replaced_by_fifo(out):
    (out / "SHA256SUMS").unlink()
    os.mkfifo(out / "SHA256SUMS")
    assert_one_line_error(run_cli(["verify", str(out)]), (1,), "SHA256SUMS")


def test_rebuild_reads_out_through_the_same_loader(out):
    (out / "manifest.json").write_bytes(b'{"a": 1, "a": 2}')
    assert_one_line_error(run_cli(["verify", "--rebuild", "recipes/snp.yaml", "--offline",
                                   str(out)]), (2,), "duplicate key")


@pytest.mark.parametrize("how", ["dup", "dev-zero", "vmlinuz-fifo", "vmlinuz-symlink",
                                 "missing-boot"])
def test_boot_reads_out_through_the_same_loader(out, how):
    if how == "dup":
        (out / "manifest.json").write_bytes(b'{"schema": 1, "schema": 2}')
    elif how == "dev-zero":
        (out / "manifest.json").unlink()
        (out / "manifest.json").symlink_to("/dev/zero")
    elif how == "missing-boot":
        (out / "manifest.json").write_bytes(dumps(_set(_manifest(out), "boot.readiness", _DELETE)))
    else:
        data = (out / "vmlinuz").read_bytes()
        (out / "vmlinuz").unlink()
        if how == "vmlinuz-fifo":
            os.mkfifo(out / "vmlinuz")
        else:
            (out.parent / "k").write_bytes(data)
            (out / "vmlinuz").symlink_to(out.parent / "k")
    assert_one_line_error(run_cli(["boot", str(out), "--accel", "tcg", "--timeout", "5"]), (2,))


# --- certificates and keys ------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(key, cn: str = "SEV-VCEK", issuer: str = "SEV-Milan", signer=None) -> x509.Certificate:
    signer = signer or key
    t = datetime.datetime(2024, 1, 1)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(7).not_valid_before(t)
         .not_valid_after(t + datetime.timedelta(days=365)))
    algo = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA384()
    return b.sign(signer, algo)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def evidence(vectors):
    s = vectors / "snp/go-sev-guest"
    return s / "attestation.bin", s / "vcek.testcer", s / "milan.testcer"


def test_real_evidence_signature_verifies(out, evidence):
    """The control: the real VCEK and chain verify (exit 1 only because the report is another
    guest's)."""
    report, vcek, chain = evidence
    o = run_cli(["verify", str(out), "--snp-report", str(report), "--vcek", str(vcek),
                 "--chain", str(chain), "--json"])
    doc = json.loads(o.stdout)
    sig = [c for v in doc["verdicts"] for c in v["checks"] if c["item"] == "signature"][0]
    assert sig["status"] == "ok", sig
    assert_one_line_error(o, (1,), "measurement")


def _vcek_variant(how: str, vcek: bytes, tmp: Path) -> bytes:
    if how == "bad-version":
        i = vcek.index(b"\xa0\x03\x02\x01\x02")
        return vcek[:i + 4] + b"\x07" + vcek[i + 5:]
    if how == "truncated":
        return vcek[:len(vcek) // 2]
    if how == "garbage-pem":
        return b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n"
    if how == "two-certs":
        c = x509.load_der_x509_certificate(vcek).public_bytes(P384_PEM)
        return c + c
    if how == "empty":
        return b""
    if how == "ed25519":
        return _cert(ed25519.Ed25519PrivateKey.generate()).public_bytes(P384_PEM)
    if how == "rsa":
        return _cert(rsa.generate_private_key(65537, 2048)).public_bytes(
            serialization.Encoding.DER)
    if how == "p256":
        return _cert(ec.generate_private_key(ec.SECP256R1())).public_bytes(P384_PEM)
    if how == "private-key":
        return _pem_key(ec.generate_private_key(ec.SECP384R1()))
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["bad-version", "truncated", "garbage-pem", "two-certs", "empty",
                                 "ed25519", "rsa", "p256", "private-key"])
def test_hostile_vcek(out, evidence, tmp_path, how):
    report, vcek, chain = evidence
    bad = tmp_path / "vcek.bin"
    bad.write_bytes(_vcek_variant(how, vcek.read_bytes(), tmp_path))
    line = assert_one_line_error(run_cli(["verify", str(out), "--snp-report", str(report),
                                          "--vcek", str(bad), "--chain", str(chain)]))
    assert "VCEK" in line or str(bad) in line, line


def _chain_variant(how: str, chain: bytes) -> bytes:
    ask, ark = x509.load_pem_x509_certificates(chain)
    if how == "der":
        return ask.public_bytes(serialization.Encoding.DER)
    if how == "garbage":
        return b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"
    if how == "one-cert":
        return ark.public_bytes(P384_PEM)
    if how == "ec-ask":
        k = ec.generate_private_key(ec.SECP384R1())
        return _cert(k, "SEV-Milan", "ARK-Milan").public_bytes(P384_PEM) + ark.public_bytes(
            P384_PEM)
    if how == "ed25519-ask":
        k = ed25519.Ed25519PrivateKey.generate()
        return _cert(k, "SEV-Milan", "ARK-Milan").public_bytes(P384_PEM) + ark.public_bytes(
            P384_PEM)
    if how == "no-root":
        return ask.public_bytes(P384_PEM) + ask.public_bytes(P384_PEM)
    if how == "bad-version-ask":
        der = ask.public_bytes(serialization.Encoding.DER)
        i = der.index(b"\xa0\x03\x02\x01\x02")
        der = der[:i + 4] + b"\x09" + der[i + 5:]
        import base64
        return (b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der)
                + b"-----END CERTIFICATE-----\n" + ark.public_bytes(P384_PEM))
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["der", "garbage", "one-cert", "ec-ask", "ed25519-ask", "no-root",
                                 "bad-version-ask"])
def test_hostile_chain(out, evidence, tmp_path, how):
    report, vcek, chain = evidence
    bad = tmp_path / "chain.pem"
    bad.write_bytes(_chain_variant(how, chain.read_bytes()))
    line = assert_one_line_error(run_cli(["verify", str(out), "--snp-report", str(report),
                                          "--vcek", str(vcek), "--chain", str(bad)]))
    assert "chain" in line or "ASK" in line, line


def _key_variant(how: str, tmp: Path) -> Path:
    p = tmp / f"key-{how}"
    if how == "fifo":
        os.mkfifo(p)
        return p
    if how == "dev-zero":
        p.symlink_to("/dev/zero")
        return p
    if how == "garbage":
        data = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    elif how == "encrypted":
        data = ec.generate_private_key(ec.SECP384R1()).private_bytes(
            P384_PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"))
    elif how == "p256":
        data = _pem_key(ec.generate_private_key(ec.SECP256R1()))
    elif how == "ed25519":
        data = _pem_key(ed25519.Ed25519PrivateKey.generate())
    elif how == "rsa":
        data = _pem_key(rsa.generate_private_key(65537, 2048))
    elif how == "der":
        data = ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
    elif how == "public-only":
        data = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
            P384_PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    elif how == "certificate":
        data = _cert(ec.generate_private_key(ec.SECP384R1())).public_bytes(P384_PEM)
    else:
        raise AssertionError(how)
    p.write_bytes(data)
    return p


KEYS = ["garbage", "encrypted", "p256", "ed25519", "rsa", "der", "public-only", "certificate",
        "fifo", "dev-zero"]


def test_id_block_with_good_keys(vectors):
    s = vectors / "snp/virtee-sev"
    o = run_cli(["id-block", "--measurement", "00" * 48, "--id-key", str(s / "test_id_key.pem"),
                 "--author-key", str(s / "test_auth_key.pem")])
    assert o.rc == 0, o.stderr
    assert o.stdout.startswith("id-block=")


@pytest.mark.parametrize("which", ["--id-key", "--author-key"])
@pytest.mark.parametrize("how", KEYS)
def test_hostile_id_block_key(vectors, tmp_path, which, how):
    s = vectors / "snp/virtee-sev"
    keys = {"--id-key": str(s / "test_id_key.pem"), "--author-key": str(s / "test_auth_key.pem")}
    keys[which] = str(_key_variant(how, tmp_path))
    o = run_cli(["id-block", "--measurement", "00" * 48, "--id-key", keys["--id-key"],
                 "--author-key", keys["--author-key"]])
    line = assert_one_line_error(o, (2,), keys[which])
    if how == "p256":
        assert "EC key on secp256r1, expected P-384 (secp384r1)" in line, line
    if how == "encrypted":
        assert "encrypted" in line, line


@pytest.fixture
def signed_out(out, tmp_path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP384R1())
    (out / "manifest.json.sig").write_bytes(sign_manifest((out / "manifest.json").read_bytes(),
                                                          _pem_key(key)))
    pub = tmp_path / "pub.pem"
    pub.write_bytes(key.public_key().public_bytes(P384_PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return out, pub


def test_signed_out_verifies(signed_out):
    out, pub = signed_out
    o = run_cli(["verify", str(out), "--signature", "--pubkey", str(pub)])
    assert o.rc == 0, o.stdout + o.stderr


@pytest.mark.parametrize("how", ["garbage", "encrypted", "ed25519", "rsa", "der", "certificate",
                                 "fifo"])
def test_hostile_pubkey(signed_out, tmp_path, how):
    out, _ = signed_out
    bad = _key_variant(how, tmp_path)
    assert_one_line_error(run_cli(["verify", str(out), "--signature", "--pubkey", str(bad)]),
                          (2,), str(bad))


@pytest.mark.parametrize("how", ["garbage", "fifo", "dir", "huge"])
def test_hostile_signature_file(signed_out, how):
    out, pub = signed_out
    sig = out / "manifest.json.sig"
    sig.unlink()
    if how == "garbage":
        sig.write_bytes(b"\x30\x03\x02\x01")
    elif how == "fifo":
        os.mkfifo(sig)
    elif how == "dir":
        sig.mkdir()
    else:
        with open(sig, "wb") as f:
            f.truncate(100 << 20)
    assert_one_line_error(run_cli(["verify", str(out), "--signature", "--pubkey", str(pub)]),
                          (1, 2), "manifest.json.sig" if how != "huge" else None)
