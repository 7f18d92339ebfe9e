"""`ccbuild measure tdx`, the profile loader, and RTMR1/RTMR2 composed by hand from the specs."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from builder.cli import main
from builder.errors import CCBuildError
from builder.measure.linux_setup import qemu_patch_setup_header
from builder.measure.tdx_profile import PROFILE_DIR, load_profile
from helpers import authenticode_oracle as _oracle, minimal_pe
from helpers import synthetic_tdvf


def _chain(digests):
    v = bytes(48)
    for d in digests:
        v = hashlib.sha384(v + d).digest()
    return v


@pytest.fixture
def files(tmp_path):
    fw = tmp_path / "fw.fd"
    fw.write_bytes(synthetic_tdvf())
    k = tmp_path / "k.efi"
    k.write_bytes(minimal_pe())
    i = tmp_path / "initrd"
    i.write_bytes(b"INITRD" * 100)
    return fw, k, i


def run(capsys, *argv):
    rc = main(["measure", "tdx", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_rtmr1_rtmr2_by_hand(capsys, files):
    fw, k, i = files
    sha = lambda b: hashlib.sha384(b).digest()  # noqa: E731
    rc, out, _ = run(capsys, "--firmware", str(fw), "--kernel", str(k), "--initrd", str(i),
                     "--append", "console=ttyS0", "--register", "rtmr1")
    assert rc == 0
    expected1 = _chain([_oracle(k.read_bytes(), "sha384"),
                        sha(b"Calling EFI Application from Boot Option"), sha(bytes(4)),
                        sha(b"Exit Boot Services Invocation"),
                        sha(b"Exit Boot Services Returned with Success")])
    assert out == expected1.hex() + "\n"
    rc, out, _ = run(capsys, "--firmware", str(fw), "--kernel", str(k), "--initrd", str(i),
                     "--append", "console=ttyS0", "--register", "rtmr2")
    expected2 = _chain([sha("initrd=initrd console=ttyS0\0".encode("utf-16-le")),
                        sha(i.read_bytes())])
    assert out == expected2.hex() + "\n"
    rc, out, _ = run(capsys, "--firmware", str(fw), "--register", "rtmr3")
    assert out == "00" * 48 + "\n"


def test_rtmr0_null_without_acpi_and_json_shape(capsys, files):
    fw, k, _ = files
    rc, out, err = run(capsys, "--firmware", str(fw), "--register", "rtmr0")
    assert rc == 2 and out == "" and err.startswith("ccbuild: error: rtmr0 is unknown")
    rc, out, _ = run(capsys, "--firmware", str(fw), "--kernel", str(k), "--profile",
                     "qemu-10.1-ovmf-202508", "--json")
    rec = json.loads(out)
    assert rec["rtmr0"] is None and "acpi_blobs" in rec["rtmr0_reason"]
    assert rec["profile"]["name"] == "qemu-10.1-ovmf-202508"
    assert {e["register"] for e in rec["events"]} == {"rtmr0", "rtmr1", "rtmr2"}
    assert all(set(e) == {"register", "event_type", "description", "digest"}
               for e in rec["events"] if e["digest"] is not None)
    # every RTMR0 event is listed; the ones hashing VMM data carry null and the reason
    r0 = [e for e in rec["events"] if e["register"] == "rtmr0"]
    assert r0[0]["description"] == "TD HOB" and r0[0]["digest"] is not None
    nulls = [e for e in r0 if e["digest"] is None]
    assert nulls and all(e["reason"] for e in nulls)


def test_page_add_order_option(capsys, files):
    fw, _, _ = files
    _, a, _ = run(capsys, "--firmware", str(fw))
    _, b, _ = run(capsys, "--firmware", str(fw), "--page-add-order", "two-pass")
    assert a != b and len(a.strip()) == 96


def test_non_tdvf_firmware_is_bad_input(capsys, tmp_path):
    f = tmp_path / "x.fd"
    f.write_bytes(bytes(0x4000))
    rc, _, err = run(capsys, "--firmware", str(f))
    assert rc == 2 and "no TDVF metadata" in err


def test_rtmr0_with_acpi_blobs_in_profile(capsys, files, tmp_path):
    """A profile with blobs gives an RTMR0; its event list starts with the TD HOB and CFV... the
    synthetic TDVF has no CFV, which is reported as the reason."""
    for n in ("loader", "rsdp", "tables"):
        (tmp_path / n).write_bytes(n.encode())
    prof = tmp_path / "p.yaml"
    prof.write_text("name: t\nacpi_blobs: [loader, rsdp, tables]\nmemory: 1G\n")
    fw, _, _ = files
    rc, out, _ = run(capsys, "--firmware", str(fw), "--profile", str(prof), "--json")
    assert json.loads(out)["rtmr0_reason"] == "the firmware's TDVF metadata has no CFV section"


@pytest.mark.parametrize("text,key", [
    ("name: t\nbogus: 1\n", "bogus"),
    ("name: t\nmemory: lots\n", "memory"),
    ("name: t\npage_add_order: sideways\n", "page_add_order"),
    ("name: t\nacpi_blobs: [a]\n", "acpi_blobs"),
    ("name: t\nboot_options: {Boot0: uiapp}\n", "boot_options.Boot0"),
    ("name: t\nruntime_events: [{description: x, digest: abcd}]\n", "runtime_events[0].digest"),
    ("description: no name\n", "name"),
])
def test_profile_errors_name_file_and_key(tmp_path, text, key):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(CCBuildError) as e:
        load_profile(p)
    assert f"{p}: {key}" in e.value.one_line()


def test_shipped_profiles_load_and_document_their_knobs():
    import yaml
    names = sorted(PROFILE_DIR.glob("*.yaml"))
    assert len(names) >= 2
    for p in names:
        params = load_profile(p)
        doc = yaml.safe_load(p.read_text())
        knobs = set(doc) - {"name", "description", "sources"}
        assert knobs <= set(doc["sources"]) | {"memory", "page_add_order", "boot_order"}, p
        assert params.profile == doc["name"]


def test_runtime_events_extend_rtmr3(tmp_path, capsys, files):
    prof = tmp_path / "p.yaml"
    prof.write_text("name: t\nruntime_events: [{description: agent policy, data_hex: '00ff'}]\n")
    fw, _, _ = files
    _, out, _ = run(capsys, "--firmware", str(fw), "--profile", str(prof), "--register", "rtmr3")
    assert out.strip() == _chain([hashlib.sha384(b"\x00\xff").digest()]).hex()


def test_qemu_setup_header_patch_fields():
    k = bytearray(0x2000)
    struct.pack_into("<IH", k, 0x202, 0x53726448, 0x20F)   # "HdrS", protocol 2.15
    k[0x211] = 0x01                                         # LOADED_HIGH
    struct.pack_into("<H", k, 0x236, 0x40)                  # XLF_CAN_BE_LOADED_ABOVE_4G
    p = qemu_patch_setup_header(bytes(k), "console=ttyS0", 0x1234, 2 << 30)
    assert p[0x210] == 0xB0 and p[0x211] == 0x81
    assert struct.unpack_from("<H", p, 0x224)[0] == 0x20000 - 0x10000 - 0x200
    assert struct.unpack_from("<I", p, 0x228)[0] == 0x20000
    initrd_max = (2 << 30) - 0x28000 - 1   # below_4g (2 GiB < 0xB0000000) minus ACPI, minus 1
    assert struct.unpack_from("<II", p, 0x218) == ((initrd_max - 0x1234) & ~4095, 0x1234)
    assert p[:0x1FA] == bytes(k[:0x1FA]) and p[0x240:] == bytes(k[0x240:])


def test_docs_tdx_profile_md_is_generated_from_the_schema():
    from builder.measure.tdx_profile import render_profile_doc
    repo = Path(__file__).resolve().parent.parent
    assert (repo / "docs" / "tdx-profile.md").read_text() == render_profile_doc(), \
        "run: python -m builder.measure.tdx_profile > docs/tdx-profile.md"
