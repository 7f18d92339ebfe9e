"""Initdata digests (builder.measure.initdata) against hashlib over the exact file bytes, and the
per-platform fitting rules of the Kata runtime (govmm adjustProperLength: truncate or zero-pad)."""

from __future__ import annotations

import base64
import gzip
import hashlib

import pytest

from builder.errors import CCBuildError
from builder.measure.initdata import kata_annotation, parse_initdata

# Not canonical TOML on purpose (comments, odd spacing, CRLF-free multi-line string): the digest
# must be over these bytes, not over a re-serialization.
DOC = b'''# a comment the runtime hashes too
algorithm   = "ALG"
version = "0.1.0"

[data]
"aa.toml" = \'\'\'
[token_configs]
[token_configs.kbs]
url = 'http://kbs.example:8080'
\'\'\'
"policy.rego" = "package agent_policy"
'''


def doc(alg: str) -> bytes:
    return DOC.replace(b"ALG", alg.encode())


@pytest.mark.parametrize("alg,snp,tdx", [
    # (algorithm, HOST_DATA = first 32 bytes + zero padding to 32, MRCONFIGID likewise to 48)
    ("sha256", lambda d: d, lambda d: d + bytes(16)),
    ("sha384", lambda d: d[:32], lambda d: d),
    ("sha512", lambda d: d[:32], lambda d: d[:48]),
])
def test_digest_and_fitting_per_algorithm(alg, snp, tdx):
    raw = doc(alg)
    expect = hashlib.new(alg, raw).digest()
    i = parse_initdata(raw)
    assert i.algorithm == alg and i.digest == expect
    assert i.snp_host_data == snp(expect) and len(i.snp_host_data) == 32
    assert i.tdx_mrconfigid == tdx(expect) and len(i.tdx_mrconfigid) == 48
    rs, rt = i.record("snp"), i.record("tdx")
    assert rs["digest"] == expect.hex() and rs["snp_host_data"] == snp(expect).hex()
    assert base64.b64decode(rs["snp_host_data_base64"]) == snp(expect)
    assert base64.b64decode(rt["tdx_mrconfigid_base64"]) == tdx(expect)
    assert rs["file_sha256"] == hashlib.sha256(raw).hexdigest()
    assert rs["data_keys"] == ["aa.toml", "policy.rego"]


def test_digest_is_over_exact_bytes_not_the_parsed_document():
    a = doc("sha384")
    b = a.replace(b"# a comment", b"#  a comment")          # same document, other bytes
    assert parse_initdata(a).digest != parse_initdata(b).digest
    assert parse_initdata(b).digest == hashlib.sha384(b).digest()


def test_annotation_round_trips_to_the_same_bytes():
    raw = doc("sha256")
    value = kata_annotation(raw)
    assert gzip.decompress(base64.b64decode(value)) == raw
    assert kata_annotation(raw) == value                   # mtime 0: reproducible


@pytest.mark.parametrize("raw,msg", [
    (b'version = "0.2.0"\nalgorithm = "sha256"\n[data]\n', "version '0.2.0' is not supported"),
    (b'version = "0.1.0"\nalgorithm = "md5"\n[data]\n', "algorithm 'md5' is not supported"),
    (b'version = "0.1.0"\n[data]\n', "algorithm None is not supported"),
    (b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\nx = 1\n', "table of strings"),
    (b'version = "0.1.0"\nalgorithm = "sha256"\nextra = "x"\n', "unknown top-level keys"),
    (b'version = \n', "not valid TOML"),
    (b'\xff\xfe', "not UTF-8"),
])
def test_refusals(raw, msg):
    with pytest.raises(CCBuildError, match=msg) as e:
        parse_initdata(raw, "x.toml")
    assert "\n" not in e.value.one_line() and "x.toml" in e.value.one_line()
