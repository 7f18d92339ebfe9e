"""`ccbuild inspect`: recognition of every evidence kind, text and JSON output, exit codes.
Values are checked against published expectations (go-sev-guest, go-tdx-guest), not against the
parsers' own output."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.cli import main
from builder.cli.inspect import identify
from builder.errors import CCBuildError

GO_TDX = "tdx/go-tdx-guest"
# go-sev-guest tools/check/check_test.go and go-tdx-guest validate/validate_test.go
SNP_MEASUREMENT = ("b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
                   "6bdf8a9ece31a5a608eb0cf2e4872b01")
PROD_MRTD = ("6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f"
             "22fc00b8dcd404bc10d5e119d7215cbb")


def run_json(capsys, *argv):
    assert main(["inspect", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("path,kind", [
    ("snp/go-sev-guest/attestation.bin", "snp-report"),
    ("snp/virtee-sev/report_milan.hex", "snp-report"),
    (f"{GO_TDX}/cos-113-tdx-quote.dat", "tdx-quote"),
    (f"{GO_TDX}/tdx_prod_quote_SPR_E4.dat", "tdx-quote"),
    (f"{GO_TDX}/quote_v5_sample.dat", "tdx-quote"),
    (f"{GO_TDX}/ccel_table.dat", "ccel-table"),
    (f"{GO_TDX}/ccel_data.dat", "ccel-log"),
])
def test_each_kind_is_recognised(vectors, capsys, path, kind):
    doc = run_json(capsys, str(vectors / path))
    assert doc["kind"] == kind
    assert main(["inspect", str(vectors / path)]) == 0
    assert capsys.readouterr().out.strip()


def test_snp_report_json(vectors, capsys):
    doc = run_json(capsys, str(vectors / "snp/go-sev-guest/attestation.bin"))
    assert doc["measurement"] == SNP_MEASUREMENT
    assert doc["report_data"].startswith("0102030405")
    assert doc["policy_decoded"]["debug"] is True and doc["signing_key"] == "VCEK"


def test_quote_json(vectors, capsys):
    doc = run_json(capsys, str(vectors / GO_TDX / "tdx_prod_quote_SPR_E4.dat"))
    assert doc["version"] == 4 and doc["body"]["mrtd"] == PROD_MRTD
    assert doc["certification_data_type"] == 6


def test_ccel_pair_replays_to_the_quote(vectors, capsys):
    quote = (vectors / GO_TDX / "cos-113-tdx-quote.dat").read_bytes()
    rtmrs = [quote[0x30 + 0x148 + 48 * i:0x30 + 0x148 + 48 * (i + 1)].hex() for i in range(4)]
    doc = run_json(capsys, "--ccel", str(vectors / GO_TDX / "ccel_table.dat"),
                   str(vectors / GO_TDX / "ccel_data.dat"))
    assert doc["kind"] == "ccel" and doc["table"]["cc_type_name"] == "Intel TDX"
    assert doc["log"]["rtmrs"] == rtmrs
    assert main(["inspect", "--ccel", str(vectors / GO_TDX / "ccel_table.dat"),
                 str(vectors / GO_TDX / "ccel_data.dat")]) == 0
    text = capsys.readouterr().out
    assert "CCEL table" in text and f"RTMR0: {rtmrs[0]}" in text


def test_ccel_and_quote_together(vectors, capsys):
    docs = run_json(capsys, "--ccel", str(vectors / GO_TDX / "ccel_table.dat"),
                    str(vectors / GO_TDX / "ccel_data.dat"),
                    str(vectors / GO_TDX / "cos-113-tdx-quote.dat"))
    assert [d["kind"] for d in docs] == ["ccel", "tdx-quote"]
    assert docs[0]["log"]["rtmrs"] == [docs[1]["body"][f"rtmr{i}"] for i in range(4)]


def test_unknown_and_missing_inputs_exit_2(tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello world")
    assert main(["inspect", str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ccbuild: error: cannot tell what") and err.count("\n") == 1
    assert main(["inspect", str(tmp_path / "absent")]) == 2
    assert main(["inspect"]) == 2
    capsys.readouterr()


def test_truncated_quote_exit_2_names_offset(vectors, tmp_path, capsys):
    q = tmp_path / "q"
    q.write_bytes((vectors / GO_TDX / "quote_v5_sample.dat").read_bytes()[:700])
    assert main(["inspect", str(q)]) == 2
    assert "offset 0x" in capsys.readouterr().err


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=2000),
                 st.binary(min_size=1024, max_size=1024),
                 st.binary(min_size=0x4A0, max_size=0x4A0),
                 st.binary(max_size=600).map(lambda b: b"CCEL" + b)))
def test_identify_only_raises_project_errors(raw):
    try:
        ev = identify(raw)
    except CCBuildError:
        return
    ev.text()
    ev.to_json()
