"""Firmware stage: build descriptors, cache key, the platform check, and real EDK2 builds from the
pinned Debian edk2 source (slow: AmdSev ~2.5 min, IntelTdx ~5.5 min on 2 cores, built once per
cache by the ``amdsev_firmware`` / ``tdvf_firmware`` fixtures)."""

from __future__ import annotations

import hashlib
import struct
import uuid
from pathlib import Path

import pytest
import yaml

from builder.errors import CCBuildError
from builder.stages import firmware as fws

REPO = Path(__file__).resolve().parent.parent
AMDSEV = REPO / "firmware" / "amdsev.yaml"
INTELTDX = REPO / "firmware" / "inteltdx.yaml"

# Debian's stock OVMF from the same edk2 source version: its 4M code image carries SEV metadata
# (SNP_SEC_MEM, SECRETS, CPUID, SVSM_CAA) but no KERNEL_HASHES section.
OVMF_DEB = ("ovmf", "2025.02-8+deb13u1", "trixie", "usr/share/OVMF/OVMF_CODE_4M.fd")


# -- independent readers (a few lines of struct, not the project's parsers) ----------------------
def _footer_entries(fw: bytes) -> dict[uuid.UUID, bytes]:
    """The OVMF footer GUID table: ``data | u16 len | GUID`` entries walked back from the footer
    that ends 32 bytes before the end of the image."""
    end = len(fw) - 32
    assert uuid.UUID(bytes_le=fw[end - 16:end]) == uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
    (total,) = struct.unpack_from("<H", fw, end - 18)
    out, pos = {}, end - 18
    while pos > end - total:
        guid = uuid.UUID(bytes_le=fw[pos - 16:pos])
        (n,) = struct.unpack_from("<H", fw, pos - 18)
        out[guid] = fw[pos - n:pos - 18]
        pos -= n
    return out


def _sev_section_types(fw: bytes) -> list[int]:
    entries = _footer_entries(fw)
    data = entries.get(uuid.UUID("dc886566-984a-4798-a75e-5585a7bf67cc"))
    if data is None:
        return []
    (off,) = struct.unpack_from("<I", data)
    sig, _size, _ver, count = struct.unpack_from("<4sIII", fw, len(fw) - off)
    assert sig == b"ASEV"
    return [struct.unpack_from("<III", fw, len(fw) - off + 16 + 12 * i)[2] for i in range(count)]


def _tdvf_section_types(fw: bytes) -> list[int]:
    data = _footer_entries(fw).get(uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2"))
    if data is None:
        return []
    (off,) = struct.unpack_from("<I", data)
    sig, _size, _ver, count = struct.unpack_from("<4sIII", fw, len(fw) - off)
    assert sig == b"TDVF"
    return [struct.unpack_from("<IIQQII", fw, len(fw) - off + 16 + 32 * i)[4] for i in range(count)]


SNP_KERNEL_HASHES = 0x10
TDVF_BFV, TDVF_CFV = 0, 1


# -- descriptors ---------------------------------------------------------------------------------
def test_shipped_descriptors_load():
    a = fws.load_descriptor(AMDSEV, display="firmware/amdsev.yaml")
    assert (a.platform, a.dsc, a.toolchain, a.target, a.arch) == \
        ("snp", "OvmfPkg/AmdSev/AmdSevX64.dsc", "GCC5", "RELEASE", "X64")
    assert a.placeholders == ("OvmfPkg/AmdSev/Grub/grub.efi",)
    assert a.output == "Build/AmdSev/RELEASE_GCC5/FV/OVMF.fd"
    assert a.source.files == {
        "edk2_2025.02.orig.tar.xz":
            "b63b6053d6d89c74d9291f9e96fde1584be99e6fb9c169ba9511505129d6b049",
        "edk2_2025.02-8+deb13u1.debian.tar.xz":
            "e2a7f6fc58640818416a028d6d5e9dfc255697a7cdc60c14566c236df6bd9b08"}
    assert a.build_args(2) == ["-a", "X64", "-t", "GCC5", "-b", "RELEASE", "-p",
                               "OvmfPkg/AmdSev/AmdSevX64.dsc", "-n", "2"]
    t = fws.load_descriptor(INTELTDX)
    assert (t.platform, t.dsc, t.defines) == \
        ("tdx", "OvmfPkg/IntelTdx/IntelTdxX64.dsc", (("SECURE_BOOT_ENABLE", "TRUE"),))
    assert t.build_args(1)[-2:] == ["-D", "SECURE_BOOT_ENABLE=TRUE"]
    assert a.source.tarball("orig") == "edk2_2025.02.orig.tar.xz"
    assert a.source.tarball("debian") == "edk2_2025.02-8+deb13u1.debian.tar.xz"


def _amdsev_doc() -> dict:
    return yaml.safe_load(AMDSEV.read_text())


def _set(doc: dict, dotted: str, value) -> dict:
    keys = dotted.split(".")
    d = doc
    for k in keys[:-1]:
        d = d[k]
    if value is _DELETE:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value
    return doc


_DELETE = object()
BAD = [
    ("colour", "blue", "colour: unknown key"),
    ("dsc", _DELETE, "dsc: required"),
    ("platform", "sev", "platform: must be one of snp, tdx"),
    ("toolchain", "CLANG", "toolchain: must be one of GCC5, GCC"),
    ("target", 3, "target: must be a non-empty string"),
    ("dsc", "/abs/AmdSevX64.dsc", "dsc: must be a normalized relative path"),
    ("dsc", "OvmfPkg/../../x.dsc", "dsc: must be a normalized relative path"),
    ("dsc", "OvmfPkg/AmdSev/AmdSevX64.fdf", "dsc: must name a .dsc file"),
    ("output", "FV/OVMF.fd", "output: must be a file under Build/"),
    ("sha256", "abc", "sha256: must be a sha256"),
    ("modules", 0, "modules: must be a positive integer"),
    ("defines", {"A B": "TRUE"}, "defines: 'A B' is not a valid -D name"),
    ("defines", {"X": "two words"}, "defines.X: must be TRUE/FALSE"),
    ("placeholders", ["../grub.efi"], "placeholders[0]: must be a normalized relative path"),
    ("source.files", {"edk2_2025.02.orig.tar.xz": "b63b" * 16},
     "source.files: needs the debian tarball"),
    ("source.files.edk2_2025.02.orig.tar.xz", "zz", "source.files.edk2_2025.02.orig.tar.xz: "
     "must be a sha256"),
    ("source.version", _DELETE, "source.version: required"),
    ("source.mirror", "x", "source.mirror: unknown key"),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_descriptor_names_file_and_key(tmp_path, key, value, message):
    doc = _amdsev_doc()
    if key.startswith("source.files.") and key != "source.files":
        doc["source"]["files"]["edk2_2025.02.orig.tar.xz"] = value
    else:
        _set(doc, key, value)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(CCBuildError) as e:
        fws.load_descriptor(p, display="firmware/bad.yaml")
    msg = str(e.value)
    assert msg.startswith("firmware/bad.yaml: "), msg
    assert message in msg, msg
    assert "\n" not in msg


def test_descriptor_file_errors(tmp_path):
    with pytest.raises(CCBuildError, match="no such firmware build descriptor"):
        fws.load_descriptor(tmp_path / "missing.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(CCBuildError, match="broken.yaml: not valid YAML at line"):
        fws.load_descriptor(p)
    p.write_text("- a list\n")
    with pytest.raises(CCBuildError, match="must be a YAML mapping"):
        fws.load_descriptor(p)


def test_descriptor_schema_paths_and_null_lists(tmp_path):
    """Declared with builder.schema: nested paths, wrong types, and null lists read as empty."""
    doc = _amdsev_doc()
    doc.update(placeholders=None, defines=None)
    d = fws.parse_descriptor(doc, "x.yaml")
    assert (d.placeholders, d.defines) == ((), ())
    doc = _amdsev_doc()
    doc["defines"] = {"FLAG": False, "SIZE": 4, "WORD": "yes"}
    assert fws.parse_descriptor(doc, "x.yaml").defines == \
        (("FLAG", "FALSE"), ("SIZE", "4"), ("WORD", "yes"))
    for key, value, message in [("source", "edk2", "x.yaml: source: must be a mapping"),
                                ("defines", {"X": [1]}, "x.yaml: defines.X: must be "),
                                ("modules", "many", "x.yaml: modules: must be an integer")]:
        doc = _amdsev_doc()
        doc[key] = value
        with pytest.raises(CCBuildError, match="^" + message):
            fws.parse_descriptor(doc, "x.yaml")


def test_docs_firmware_descriptor_md_is_generated_from_the_schema():
    text = (REPO / "docs" / "firmware-descriptor.md").read_text()
    assert text == fws.render_descriptor_doc(), \
        "run: python -m builder.stages.firmware > docs/firmware-descriptor.md"
    for key in ("source.files", "placeholders", "measured_with", "toolchain"):
        assert f"| `{key}` |" in text


# -- cache key -----------------------------------------------------------------------------------
TOOLS = {"gcc": "gcc 12.2.0", "nasm": "NASM 2.16.01"}


def test_cache_key_covers_inputs_only():
    a = fws.load_descriptor(AMDSEV)
    tar = a.source.files
    k = fws.cache_key(a, tar, TOOLS)
    assert k == fws.cache_key(fws.load_descriptor(AMDSEV), dict(reversed(tar.items())), TOOLS)
    # not inputs: the expected output hash, the progress length, where the descriptor lives
    doc = _amdsev_doc()
    doc.update(sha256="0" * 64, modules=7)
    same = fws.parse_descriptor(doc, "elsewhere.yaml")
    assert fws.cache_key(same, tar, TOOLS) == k
    # inputs: flags, tarballs, toolchain
    doc["defines"] = {"SECURE_BOOT_ENABLE": True}
    assert fws.cache_key(fws.parse_descriptor(doc, "x"), tar, TOOLS) != k
    other_tar = dict(tar, **{"edk2_2025.02.orig.tar.xz": "1" * 64})
    assert fws.cache_key(a, other_tar, TOOLS) != k
    assert fws.cache_key(a, tar, dict(TOOLS, gcc="gcc 14.2.0")) != k


def test_toolchain_versions_are_read():
    v = fws.toolchain_versions()
    assert set(v) >= {"gcc", "nasm", "iasl", "python3"}
    assert "nasm" in v["nasm"].lower() and "version" in v["iasl"].lower()


# -- source handling -----------------------------------------------------------------------------
def test_series_and_changelog_epoch(tmp_path):
    patches = tmp_path / "debian" / "patches"
    patches.mkdir(parents=True)
    (patches / "series").write_text("# comment\na.patch\n\nsub/b.diff -p0\nc.patch # trailing\n")
    assert fws._series(tmp_path) == [("a.patch", "-p1"), ("sub/b.diff", "-p0"),
                                     ("c.patch", "-p1")]
    (patches / "series").write_text("../evil.patch\n")
    with pytest.raises(CCBuildError, match="escapes debian/patches"):
        fws._series(tmp_path)
    cl = tmp_path / "debian" / "changelog"
    cl.write_text("edk2 (2025.02-8+deb13u1) trixie-security; urgency=medium\n\n  * Fix.\n\n"
                  " -- Some One <one@example.org>  Tue, 04 Nov 2025 10:00:00 +0100\n\n"
                  "edk2 (2025.02-8) unstable; urgency=medium\n\n"
                  " -- Some One <one@example.org>  Mon, 01 Sep 2025 10:00:00 +0000\n")
    assert fws.changelog_epoch(cl) == 1762246800
    cl.write_text("nothing dated\n")
    with pytest.raises(CCBuildError, match="no dated entry"):
        fws.changelog_epoch(cl)


def test_build_refuses_a_changed_tarball(tmp_path):
    a = fws.load_descriptor(AMDSEV)
    fake = {}
    for name in a.source.files:
        fake[name] = tmp_path / name
        fake[name].write_bytes(b"not the pinned tarball")
    with pytest.raises(CCBuildError, match="sha256 mismatch"):
        fws.build_edk2(a, fake, tmp_path / "w", tmp_path / "log", jobs=1)
    with pytest.raises(CCBuildError, match="was not supplied"):
        fws.build_edk2(a, {}, tmp_path / "w", tmp_path / "log", jobs=1)


def test_build_failure_names_the_log(tmp_path):
    from builder.run import run_streamed
    log_path = tmp_path / "b.log"
    with pytest.raises(CCBuildError) as e:
        run_streamed(["sh", "-c", "echo compiling; echo 'x.c:1: error: boom' ; exit 3"],
                     cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, log_path=log_path,
                     what="EDK2 build of X.dsc")
    msg = str(e.value)
    assert "EDK2 build of X.dsc failed (exit 3): x.c:1: error: boom" in msg
    assert f"log: {log_path}" in msg
    assert b"compiling" in log_path.read_bytes()


# -- the platform check --------------------------------------------------------------------------
def test_check_refuses_an_image_without_metadata():
    blank = bytes(64 * 1024)
    with pytest.raises(CCBuildError) as e:
        fws.check_firmware("snp", blank, where="firmware.fd")
    assert str(e.value).startswith("firmware.fd has no SEV metadata")
    assert str(e.value).endswith(
        "; use the AmdSevX64 build (firmware: {build: firmware/amdsev.yaml})")
    with pytest.raises(CCBuildError, match="^firmware has no TDVF metadata.*; use the IntelTdxX64 "
                       "build"):
        fws.check_firmware("tdx", blank)
    with pytest.raises(CCBuildError, match="not a non-zero multiple of 4096"):
        fws.prebuilt_firmware("snp", b"\0" * 100)


@pytest.mark.parametrize("size,message", [
    (100, "size 100 is not a non-zero multiple of 4096"),
    (8192, "firmware has no SEV metadata"),
])
def test_build_checks_a_prebuilt_firmware_source(tmp_path, size, message):
    """A recipe's firmware.source goes through prebuilt_firmware before the other stages run."""
    from helpers import assert_one_line_error, run_cli
    (tmp_path / "fw.bin").write_bytes(bytes(size))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("platform: snp\nfirmware: {source: {path: fw.bin}}\n"
                      "kernel: {source: {path: fw.bin}}\nagent: {build: test-agent}\n")
    out = run_cli(["build", str(recipe), "-o", str(tmp_path / "out"),
                   "--cache", str(tmp_path / "cache")])
    line = assert_one_line_error(out, contains=message)
    assert "AmdSevX64" in line or "single -bios image" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_debian_ovmf_code_4m_is_refused_for_snp(debian_file):
    fw = debian_file(*OVMF_DEB)
    types = _sev_section_types(fw)  # independent reader
    assert types and SNP_KERNEL_HASHES not in types
    with pytest.raises(CCBuildError) as e:
        fws.prebuilt_firmware("snp", fw, where="OVMF_CODE_4M.fd")
    msg = str(e.value)
    assert msg.startswith("OVMF_CODE_4M.fd has no SEV KERNEL_HASHES section")
    assert "use the AmdSevX64 build (firmware: {build: firmware/amdsev.yaml})" in msg


# -- real builds ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_amdsev_build_has_kernel_hashes(amdsev_firmware):
    from builder.formats.ovmf import has_kernel_hashes
    fw = amdsev_firmware
    assert len(fw) % 4096 == 0
    assert SNP_KERNEL_HASHES in _sev_section_types(fw)
    assert has_kernel_hashes(fw)
    assert fws.prebuilt_firmware("snp", fw) == fw
    pinned = fws.load_descriptor(AMDSEV).sha256
    if pinned:
        assert hashlib.sha256(fw).hexdigest() == pinned


@pytest.mark.slow
def test_inteltdx_build_has_tdvf_metadata(tdvf_firmware):
    from builder.formats.tdvf import has_tdvf_metadata
    fw = tdvf_firmware
    types = _tdvf_section_types(fw)
    assert TDVF_BFV in types and TDVF_CFV in types
    assert has_tdvf_metadata(fw)
    assert fws.prebuilt_firmware("tdx", fw) == fw
    # The TDVF carries SEV metadata but no kernel-hashes section: refused for SNP.
    assert SNP_KERNEL_HASHES not in _sev_section_types(fw)
    with pytest.raises(CCBuildError, match=r"SEV KERNEL_HASHES section.*; use the AmdSevX64 build"):
        fws.check_firmware("snp", fw)
    pinned = fws.load_descriptor(INTELTDX).sha256
    if pinned:
        assert hashlib.sha256(fw).hexdigest() == pinned
