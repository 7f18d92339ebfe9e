"""Hostile binary inputs and command-line values (issue 10, defects 5, 7 and 8).

Every CLI case runs ``python -m builder.cli`` in a subprocess under helpers.run_cli (2 GiB of
address space, 20 s) and must end with exit 1 or 2, one ``ccbuild: error:`` line and no
traceback. The firmware images are built here byte by byte (SEV metadata and TDVF metadata behind
an OVMF footer GUID table); the valid ones must still measure to the value an independent source
gives (sev-snp-measure for SNP, the MRTD stream written out by hand for TDX), so these tests fail
when a bound is too tight as well as when it is missing. The Debian archive reader is exercised
in-process on .deb files assembled here (ar + tar + xz/gz/zst), under an alarm so a parser that
loops fails the test instead of hanging it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import signal
import struct
import tarfile
import uuid
from pathlib import Path

import pytest

from helpers import assert_one_line_error, run_cli


def _guid(s: str) -> bytes:
    return uuid.UUID(s).bytes_le


FOOTER_GUID = _guid("96b582de-1fb2-45f7-baea-a366c55a082d")
SEV_META_GUID = _guid("dc886566-984a-4798-a75e-5585a7bf67cc")
SEV_HASHES_GUID = _guid("7255371f-3a3b-4b04-927b-1da6efa8d454")
SEV_ES_GUID = _guid("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
TDX_META_GUID = _guid("e47a6535-984a-4798-865e-4685a7bf8ec2")
TDVF_GUID = _guid("e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae")

FW_SIZE = 0x10000            # 16 pages, mapped at 0xFFFF0000
DESC_OFF = FW_SIZE - 0x1000  # the metadata descriptor starts the last page
GIB = 1 << 30


def footer_table(entries: list[tuple[bytes, bytes]], total: int | None = None) -> bytes:
    """``data | u16 len | GUID`` per entry (first entry nearest the start), then the footer."""
    body = b"".join(data + struct.pack("<H", len(data) + 18) + guid for guid, data in entries)
    return body + struct.pack("<H", len(body) + 18 if total is None else total) + FOOTER_GUID


def image(size: int, table: bytes) -> bytearray:
    img = bytearray((i * 7 + 3) & 0xFF for i in range(size))
    end = size - 32
    img[end - len(table):end] = table
    return img


# SEC_MEM 3 pages, SECRETS, CPUID, KERNEL_HASHES (gpa, size, type), as OvmfSevMetadata.asm lays
# them out in low memory.
SEV_SECTIONS = [(0x800000, 0x3000, 1), (0x803000, 0x1000, 2), (0x804000, 0x1000, 3),
                (0x805000, 0x1000, 0x10)]


def sev_fw(sections=SEV_SECTIONS, count: int | None = None, length: int | None = None,
           meta_from_end: int | None = None, total: int | None = None,
           hashes=(0x805C00, 0x400), ap_eip: int = 0xFFFFF000, size: int = FW_SIZE,
           desc_off: int | None = None) -> bytes:
    desc_off = DESC_OFF if desc_off is None else desc_off
    count = len(sections) if count is None else count
    length = 16 + 12 * len(sections) if length is None else length
    entries = [(SEV_HASHES_GUID, struct.pack("<II", *hashes)),
               (SEV_ES_GUID, struct.pack("<I", ap_eip)),
               (SEV_META_GUID, struct.pack("<I", size - desc_off if meta_from_end is None
                                           else meta_from_end))]
    img = image(size, footer_table(entries, total))
    desc = b"ASEV" + struct.pack("<III", length, 1, count)
    desc += b"".join(struct.pack("<III", *s) for s in sections)
    img[desc_off:desc_off + len(desc)] = desc
    return bytes(img)


# BFV: the first 8 pages of the image at 0xFFFF0000 (MR.EXTEND); TD_HOB; TEMP_MEM (PAGE.AUG).
TDVF_SECTIONS = [(0, 0x8000, 0xFFFF0000, 0x8000, 0, 1), (0, 0, 0x800000, 0x1000, 2, 0),
                 (0, 0, 0x801000, 0x2000, 3, 2)]


def tdvf_fw(sections=TDVF_SECTIONS, count: int | None = None, length: int | None = None,
            meta_from_end: int | None = None, total: int | None = None,
            size: int = FW_SIZE) -> bytes:
    count = len(sections) if count is None else count
    length = 16 + 32 * count if length is None else length
    entries = [(TDX_META_GUID, struct.pack("<I", size - DESC_OFF if meta_from_end is None
                                           else meta_from_end))]
    img = image(size, footer_table(entries, total))
    desc = TDVF_GUID + b"TDVF" + struct.pack("<III", length, 1, count)
    desc += b"".join(struct.pack("<IIQQII", *s) for s in sections)
    img[DESC_OFF - 16:DESC_OFF - 16 + len(desc)] = desc
    return bytes(img)


def _rec(tag: bytes, gpa: int) -> bytes:
    return tag + bytes(16 - len(tag)) + gpa.to_bytes(8, "little") + bytes(104)


def mrtd_by_hand(fw: bytes, sections) -> str:
    """The interleaved MRTD stream written out from the TDX module spec, page by page."""
    stream = bytearray()
    for off, raw, gpa, size, _type, attrs in sections:
        if attrs & 2:
            continue
        data = fw[off:off + raw] + bytes(size - raw)
        for p in range(0, size, 0x1000):
            stream += _rec(b"MEM.PAGE.ADD", gpa + p)
            if attrs & 1:
                for c in range(p, p + 0x1000, 256):
                    stream += _rec(b"MR.EXTEND", gpa + c) + data[c:c + 256]
    return hashlib.sha384(stream).hexdigest()


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Valid synthetic inputs plus the hostile non-regular files."""
    out = {"sev": tmp_path / "sev.fd", "tdvf": tmp_path / "tdvf.fd",
           "kernel": tmp_path / "kernel", "initrd": tmp_path / "initrd"}
    out["sev"].write_bytes(sev_fw())
    out["tdvf"].write_bytes(tdvf_fw())
    out["kernel"].write_bytes(os.urandom(3 * 4096 + 5))
    out["initrd"].write_bytes(os.urandom(5000))
    return out


def hostile_file(kind: str, tmp_path: Path) -> str:
    if kind == "dev-zero":
        return "/dev/zero"
    p = tmp_path / f"hostile-{kind}"
    if kind == "fifo":
        os.mkfifo(p)  # nobody writes: a blocking open would hang the case
    elif kind == "sparse-8g":
        with open(p, "wb") as f:
            f.truncate(8 * GIB)
    elif kind == "directory":
        p.mkdir()
    elif kind == "symlink-dev-zero":
        p.symlink_to("/dev/zero")
    return str(p)


FILE_KINDS = ["dev-zero", "fifo", "sparse-8g", "directory", "symlink-dev-zero"]
TARGETS = ["snp --firmware", "snp --kernel", "snp --initrd", "tdx --firmware", "tdx --kernel",
           "tdx --initrd", "inspect"]


def target_args(target: str, bad: str, files) -> tuple[list[str], str]:
    """Arguments for one target with ``bad`` in the tested position, and the word the message
    must name."""
    if target == "inspect":
        return ["inspect", bad], bad
    platform, option = target.split()
    fw = str(files["sev" if platform == "snp" else "tdvf"])
    args = {"--firmware": fw, "--kernel": str(files["kernel"]), "--initrd": str(files["initrd"])}
    args[option] = bad
    argv = ["measure", platform]
    for k, v in args.items():
        argv += [k, v]
    if platform == "snp":
        argv += ["--vcpus", "1", "--vcpu-type", "EPYC-Milan"]
    return argv, option


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("target", TARGETS)
def test_non_regular_or_huge_file_is_refused(target, kind, files, tmp_path):
    argv, word = target_args(target, hostile_file(kind, tmp_path), files)
    line = assert_one_line_error(run_cli(argv), (2,), contains=word)
    assert ("not a regular file" in line) == (kind != "sparse-8g"), line
    if kind == "sparse-8g":
        assert "too large" in line


# --- the valid inputs still measure to the independent value ------------------------------

def test_valid_synthetic_sev_firmware_matches_sev_snp_measure(files):
    guest = pytest.importorskip("sevsnpmeasure.guest")
    from sevsnpmeasure.vmm_types import VMMType
    append = "console=ttyS0 quiet"
    o = run_cli(["measure", "snp", "--firmware", str(files["sev"]), "--kernel",
                 str(files["kernel"]), "--initrd", str(files["initrd"]), "--append", append,
                 "--vcpus", "4", "--vcpu-sig", "0xA00F11", "--guest-features", "0x21"])
    assert o.rc == 0, o.stderr
    expected = guest.snp_calc_launch_digest(4, 0xA00F11, str(files["sev"]), str(files["kernel"]),
                                            str(files["initrd"]), append, 0x21, "",
                                            VMMType.QEMU).hex()
    assert o.stdout.strip() == expected


def test_valid_synthetic_tdvf_matches_the_stream_by_hand(files):
    o = run_cli(["measure", "tdx", "--firmware", str(files["tdvf"])])
    assert o.rc == 0, o.stderr
    assert o.stdout.strip() == mrtd_by_hand(tdvf_fw(), TDVF_SECTIONS)


def test_zero_tail_of_an_extended_section_is_measured_as_zeros(tmp_path):
    # RawDataSize ends mid-page: the rest of the section is extended as zero bytes.
    sections = [(0, 0x1800, 0xFFFF0000, 0x3000, 0, 1), (0, 0, 0x800000, 0x1000, 2, 0)]
    fw = tmp_path / "tail.fd"
    fw.write_bytes(tdvf_fw(sections))
    o = run_cli(["measure", "tdx", "--firmware", str(fw)])
    assert o.rc == 0, o.stderr
    assert o.stdout.strip() == mrtd_by_hand(tdvf_fw(sections), sections)


def test_largest_legal_sev_section_measures_in_time(tmp_path):
    # SEC_MEM may cover everything below the firmware: 0xFFFF0 zero pages, still a digest.
    guest = pytest.importorskip("sevsnpmeasure.guest")
    from sevsnpmeasure.vmm_types import VMMType
    fw = tmp_path / "big.fd"
    fw.write_bytes(sev_fw([(0, 0xFFFF0000, 1)], hashes=(0, 0)))
    o = run_cli(["measure", "snp", "--firmware", str(fw), "--vcpus", "1", "--vcpu-sig",
                 "0xA00F11"])
    assert o.rc == 0, o.stderr
    assert o.stdout.strip() == guest.snp_calc_launch_digest(
        1, 0xA00F11, str(fw), None, None, None, 1, "", VMMType.QEMU).hex()


def test_page_aug_section_of_any_size_is_not_measured(tmp_path):
    # PAGE.AUG pages are never added, so a huge one costs nothing and changes nothing.
    sections = TDVF_SECTIONS + [(0, 0, 1 << 40, 1 << 44, 3, 2)]
    fw = tmp_path / "aug.fd"
    fw.write_bytes(tdvf_fw(sections))
    o = run_cli(["measure", "tdx", "--firmware", str(fw)])
    assert o.rc == 0, o.stderr
    assert o.stdout.strip() == mrtd_by_hand(tdvf_fw(sections), sections)


# --- hostile SEV metadata -------------------------------------------------------------------

SEV_HOSTILE = {
    "section-huge-size": (dict(sections=[(0x1000, 0xFFFFF000, 1)]), "firmware"),
    "section-wraps-4g": (dict(sections=[(0xFFFFF000, 0x2000, 1)]), "crosses 4 GiB"),
    "section-overlaps-firmware": (dict(sections=[(0xFFFE0000, 0x20000, 1)]), "overlaps"),
    "sections-overlap": (dict(sections=[(0x800000, 0x3000, 1), (0x802000, 0x1000, 2)]),
                         "overlaps"),
    "count-huge": (dict(count=0xFFFFFFFF), "section"),
    "count-many": (dict(sections=[(0x1000 * i, 0x1000, 1) for i in range(1, 300)],
                        desc_off=FW_SIZE - 0x2000 + 0x100), "sections"),
    "length-past-end": (dict(length=0x2000), "length"),
    "meta-offset-zero": (dict(meta_from_end=0), "SEV metadata offset"),
    "meta-offset-outside": (dict(meta_from_end=0xFFFFFFFF), "SEV metadata offset"),
    "meta-offset-truncated": (dict(meta_from_end=8), "SEV metadata"),
    "footer-total-outside": (dict(total=0xFFFF), "footer GUID table length"),
    "footer-total-short": (dict(total=3), "footer GUID table length"),
    "unaligned-section": (dict(sections=[(0x800800, 0x1000, 1)]), "page aligned"),
    "unknown-type": (dict(sections=[(0x800000, 0x1000, 7)]), "unknown SEV metadata section"),
    "hashes-outside-section": (dict(hashes=(0x900000, 0x400)), "hashes table"),
    "secrets-many-pages": (dict(sections=[(0x800000, 0x100000, 2)]), "single page"),
}


@pytest.mark.parametrize("case", sorted(SEV_HOSTILE))
def test_hostile_sev_metadata(case, files, tmp_path):
    kwargs, contains = SEV_HOSTILE[case]
    fw = tmp_path / "fw.fd"
    fw.write_bytes(sev_fw(**kwargs))
    o = run_cli(["measure", "snp", "--firmware", str(fw), "--kernel", str(files["kernel"]),
                 "--vcpus", "2", "--vcpu-type", "EPYC-Milan"])
    assert_one_line_error(o, (2,), contains=contains)


def test_footer_entry_length_pointing_outside(tmp_path):
    img = bytearray(sev_fw())
    # the SEV metadata entry is the last one: its u16 length sits 18 + 18 bytes before the end
    struct.pack_into("<H", img, FW_SIZE - 32 - 18 - 18, 0xFFFF)
    fw = tmp_path / "fw.fd"
    fw.write_bytes(bytes(img))
    o = run_cli(["measure", "snp", "--firmware", str(fw), "--mode", "snp:ovmf-hash"])
    assert_one_line_error(o, (2,), contains="bad length")


@pytest.mark.parametrize("size", [0, 4095, 4097])
def test_firmware_not_whole_pages(size, tmp_path):
    fw = tmp_path / "fw.fd"
    fw.write_bytes(bytes(size))
    o = run_cli(["measure", "snp", "--firmware", str(fw), "--mode", "snp:ovmf-hash"])
    assert_one_line_error(o, (2,), contains="firmware")


# --- hostile TDVF metadata ------------------------------------------------------------------

TDVF_HOSTILE = {
    # a measured section as large as the 52-bit space: 2^39 PAGE.ADD records
    "page-add-2^51": ([(0, 0, 0x100000000, 1 << 51, 3, 0)], "4 GiB"),
    "page-add-above-4g": ([(0, 0, 1 << 40, 0x1000, 2, 0)], "4 GiB"),
    "extend-zero-tail-4g": ([(0, 0x1000, 0x1000, 0xFFFFE000, 1, 1)], "MR.EXTEND"),
    "wraps-64-bit": ([(0, 0, 0xFFFFFFFFFFFFF000, 0x2000, 3, 2)], "52-bit"),
    "overlap-memory": ([(0, 0x8000, 0xFFFF0000, 0x8000, 0, 1),
                        (0, 0, 0xFFFF4000, 0x1000, 2, 0)], "overlap"),
    "data-outside-file": ([(0x8000, 0x100000, 0xFFF00000, 0x100000, 0, 0)], "outside"),
    "unaligned": ([(0, 0, 0x800800, 0x1000, 2, 0)], "aligned"),
    "raw-exceeds-memory": ([(0, 0x2000, 0xFFFF0000, 0x1000, 0, 1)], "exceeds"),
    "unknown-type": ([(0, 0, 0x800000, 0x1000, 9, 0)], "unknown type"),
    "extend-and-aug": ([(0, 0x1000, 0xFFFF0000, 0x1000, 0, 3)], "PAGE.AUG"),
}


@pytest.mark.parametrize("case", sorted(TDVF_HOSTILE))
def test_hostile_tdvf_sections(case, tmp_path):
    sections, contains = TDVF_HOSTILE[case]
    fw = tmp_path / "fw.fd"
    fw.write_bytes(tdvf_fw(sections))
    assert_one_line_error(run_cli(["measure", "tdx", "--firmware", str(fw)]), (2,),
                          contains=contains)


TDVF_TABLE_HOSTILE = {
    "count-huge": (dict(count=0xFFFFFFFF, length=16), "sections"),
    "count-many": (dict(sections=[(0, 0, 0x1000 * i, 0x1000, 3, 2) for i in range(1, 300)],
                        size=0x40000), "sections"),
    "length-mismatch": (dict(length=0x1000), "TDVF descriptor length"),
    "offset-outside": (dict(meta_from_end=0x7FFFFFFF), "TDX metadata offset"),
    "offset-truncated": (dict(meta_from_end=4), "TDX metadata offset"),
    "footer-total-outside": (dict(total=0xFFF0), "footer GUID table length"),
}


@pytest.mark.parametrize("case", sorted(TDVF_TABLE_HOSTILE))
def test_hostile_tdvf_tables(case, tmp_path):
    kwargs, contains = TDVF_TABLE_HOSTILE[case]
    if case == "count-many":  # keep the descriptor inside a larger image
        kwargs = dict(kwargs)
        size = kwargs.pop("size")
        fw_bytes = _tdvf_big(size, kwargs["sections"])
    else:
        fw_bytes = tdvf_fw(**kwargs)
    fw = tmp_path / "fw.fd"
    fw.write_bytes(fw_bytes)
    assert_one_line_error(run_cli(["measure", "tdx", "--firmware", str(fw)]), (2,),
                          contains=contains)


def _tdvf_big(size: int, sections) -> bytes:
    desc_off = size - 0x4000
    img = image(size, footer_table([(TDX_META_GUID, struct.pack("<I", size - desc_off))]))
    desc = TDVF_GUID + b"TDVF" + struct.pack("<III", 16 + 32 * len(sections), 1, len(sections))
    desc += b"".join(struct.pack("<IIQQII", *s) for s in sections)
    img[desc_off - 16:desc_off - 16 + len(desc)] = desc
    return bytes(img)


# --- hostile kernels (the PE Authenticode hash of RTMR1) -------------------------------------

def _pe(nsections: int = 1, size_of_headers: int = 0x200, raw=(0x200, 0x200),
        cert=(0, 0)) -> bytes:
    img = bytearray(0x400)
    img[0:2] = b"MZ"
    struct.pack_into("<I", img, 0x3C, 0x40)
    img[0x40:0x44] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", img, 0x44, 0x8664, nsections, 0, 0, 0, 0x70 + 16 * 8, 0x22)
    opt = 0x58
    struct.pack_into("<H", img, opt, 0x20B)
    struct.pack_into("<III", img, opt + 56, 0x2000, size_of_headers, 0)
    struct.pack_into("<I", img, opt + 108, 16)
    struct.pack_into("<II", img, opt + 112 + 32, *cert)
    sec = opt + 0x70 + 16 * 8
    if sec + 40 <= len(img):
        struct.pack_into("<8sIIII", img, sec, b".text", 0x200, 0x1000, raw[1], raw[0])
    return bytes(img)


PE_HOSTILE = {
    "not-pe": b"\x7fELF" + bytes(4092),
    "sections-65535": _pe(nsections=0xFFFF),
    "headers-beyond-file": _pe(size_of_headers=0x7FFFFFFF),
    "section-beyond-file": _pe(raw=(0x200, 0x7FFFFFFF)),
    "cert-beyond-file": _pe(cert=(0x400, 0x7FFFFFFF)) + bytes(16),
}


@pytest.mark.parametrize("case", sorted(PE_HOSTILE))
def test_hostile_kernel_pe(case, files, tmp_path):
    k = tmp_path / "vmlinuz"
    k.write_bytes(PE_HOSTILE[case])
    o = run_cli(["measure", "tdx", "--firmware", str(files["tdvf"]), "--kernel", str(k),
                 "--register", "rtmr1"])
    assert_one_line_error(o, (2,), contains="PE")


# --- hostile command-line values ------------------------------------------------------------

BIG = "9" * 5000

SNP_ARGS_HOSTILE = {
    "vcpus-5000-digits": (["--vcpus", BIG], "--vcpus"),
    "vcpus-negative": (["--vcpus", "-1"], "--vcpus"),
    "vcpus-zero": (["--vcpus", "0"], "--vcpus"),
    "vcpus-huge": (["--vcpus", str(1 << 80)], "--vcpus"),
    "guest-features-negative": (["--guest-features", "-1"], "--guest-features"),
    "guest-features-65-bits": (["--guest-features", hex(1 << 64)], "--guest-features"),
    "guest-features-5000-digits": (["--guest-features", BIG], "--guest-features"),
    "vcpu-sig-negative": (["--vcpu-sig", "-0x1"], "--vcpu-sig"),
    "vcpu-sig-huge": (["--vcpu-sig", hex(1 << 100)], "--vcpu-sig"),
    "vcpu-family-negative": (["--vcpu-family", "-5", "--vcpu-model", "1", "--vcpu-stepping",
                              "1"], "--vcpu-family"),
    "vcpu-model-5000-digits": (["--vcpu-family", "25", "--vcpu-model", BIG, "--vcpu-stepping",
                                "1"], "--vcpu-model"),
    "ovmf-hash-not-hex": (["--ovmf-hash", "zz" * 48], "--ovmf-hash"),
    "ovmf-hash-short": (["--ovmf-hash", "ab" * 10], "--ovmf-hash"),
}


@pytest.mark.parametrize("case", sorted(SNP_ARGS_HOSTILE))
def test_hostile_snp_arguments(case, files):
    extra, option = SNP_ARGS_HOSTILE[case]
    argv = ["measure", "snp", "--firmware", str(files["sev"])]
    if not any(a == "--vcpus" for a in extra):
        argv += ["--vcpus", "1"]
    if not any(a.startswith("--vcpu-") for a in extra):
        argv += ["--vcpu-type", "EPYC-Milan"]
    line = assert_one_line_error(run_cli(argv + extra), (2,), contains=option)
    assert "0x-" not in line and "set_int_max_str_digits" not in line, line
    assert len(line) < 400, line


@pytest.mark.parametrize("platform", ["snp", "tdx"])
def test_undecodable_append_is_refused(platform, files):
    argv = ["measure", platform, "--firmware", str(files["sev" if platform == "snp" else "tdvf"]),
            "--kernel", str(files["kernel"]), "--append", b"console=ttyS0 \xff"]
    if platform == "snp":
        argv += ["--vcpus", "1", "--vcpu-type", "EPYC-Milan"]
    assert_one_line_error(run_cli(argv), (2,), contains="--append")


def test_undecodable_path_is_reported(tmp_path):
    o = run_cli(["measure", "snp", "--firmware", os.fsencode(str(tmp_path)) + b"/\xff.fd",
                 "--mode", "snp:ovmf-hash"])
    assert_one_line_error(o, (2,), contains="--firmware")


# --- the Debian archive reader (in-process) -------------------------------------------------

@pytest.fixture
def alarm():
    """A reader that loops fails here instead of hanging the suite."""
    def on_alarm(signum, frame):
        raise TimeoutError("the .deb reader did not finish within 20 s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def ar_member(name: bytes, data: bytes, size_field: bytes | None = None) -> bytes:
    size = size_field if size_field is not None else str(len(data)).encode()
    hdr = (name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
           + size.ljust(10) + b"`\n")
    return hdr + data + (b"\n" if len(data) % 2 else b"")


def tar_bytes(entries: list[tuple[str, bytes | str]]) -> bytes:
    """A ustar archive: (name, bytes) is a file, (name, 'link:TARGET') a symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type = tarfile.SYMTYPE
                info.linkname = content.removeprefix("link:")
                t.addfile(info)
            else:
                info.size = len(content)
                t.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def deb(data_tar: bytes, name: bytes = b"data.tar.xz", compress=None) -> bytes:
    payload = compress(data_tar) if compress else data_tar
    return (b"!<arch>\n" + ar_member(b"debian-binary", b"2.0\n")
            + ar_member(b"control.tar.xz", lzma.compress(tar_bytes([("./control", b"x")])))
            + ar_member(name, payload))


def zstd(data: bytes) -> bytes:
    import zstandard
    return zstandard.ZstdCompressor().compress(data)


FW_DATA = bytes(range(256)) * 64
GOOD_TAR = tar_bytes([("./usr/share/ovmf/OVMF.fd", FW_DATA),
                      ("./usr/share/qemu/OVMF.fd", "link:../ovmf/OVMF.fd")])


def write(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "pkg_1.0_amd64.deb"
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("name,compress", [(b"data.tar.xz", lzma.compress),
                                           (b"data.tar.gz", gzip.compress),
                                           (b"data.tar.zst", zstd), (b"data.tar", None)])
def test_deb_valid_member_and_symlink(name, compress, tmp_path, alarm):
    from builder.sources.debian import deb_member
    p = write(tmp_path, deb(GOOD_TAR, name, compress))
    assert deb_member(p, "usr/share/ovmf/OVMF.fd") == FW_DATA
    assert deb_member(p, "/usr/share/qemu/OVMF.fd") == FW_DATA


def _deb_error(tmp_path: Path, data: bytes, member: str = "usr/share/ovmf/OVMF.fd", **kw) -> str:
    from builder.errors import CCBuildError
    from builder.sources.debian import deb_member
    p = write(tmp_path, data)
    with pytest.raises(CCBuildError) as e:
        deb_member(p, member, **kw)
    line = e.value.one_line()
    assert "\n" not in line and p.name in line, line
    return line


def _ar_with(size_field: bytes, data: bytes = b"x" * 10) -> bytes:
    return (b"!<arch>\n" + ar_member(b"debian-binary", b"2.0\n")
            + ar_member(b"data.tar", data, size_field))


DEB_HOSTILE = {
    "negative-size": (lambda: _ar_with(b"-60"), "size"),
    "size-beyond-file": (lambda: _ar_with(b"999999999"), "size"),
    "size-not-a-number": (lambda: _ar_with(b"0x10"), "size"),
    "bad-magic": (lambda: b"!<arch>\r" + deb(GOOD_TAR)[8:], "ar"),
    "truncated-header": (lambda: deb(GOOD_TAR)[:8 + 30], "header"),
    "no-data-tar": (lambda: b"!<arch>\n" + ar_member(b"debian-binary", b"2.0\n"), "data.tar"),
    "corrupt-xz": (lambda: deb(b"\xfd7zXZ\x00" + b"\x01" * 200, b"data.tar.xz"), "data.tar.xz"),
    "corrupt-gz": (lambda: deb(b"\x1f\x8b\x08\x00" + b"\x01" * 200, b"data.tar.gz"),
                   "data.tar.gz"),
    "corrupt-zst": (lambda: deb(b"\x28\xb5\x2f\xfd" + b"\x01" * 200, b"data.tar.zst"),
                    "data.tar.zst"),
    "truncated-xz": (lambda: deb(lzma.compress(GOOD_TAR)[:-40], b"data.tar.xz"), "data.tar.xz"),
    "corrupt-tar": (lambda: deb(b"\x01" * 1024, b"data.tar"), "data.tar"),
    "missing-symlink-target": (lambda: deb(tar_bytes([("./usr/share/qemu/OVMF.fd",
                                                        "link:../ovmf/OVMF.fd")]),
                                           compress=lzma.compress), "usr/share/ovmf/OVMF.fd"),
    "symlink-loop": (lambda: deb(tar_bytes([("./a", "link:b"), ("./b", "link:a")]),
                                 compress=lzma.compress), "loop"),
    "symlink-escapes": (lambda: deb(tar_bytes([("./usr/share/qemu/OVMF.fd",
                                                "link:../../../../../etc/passwd")]),
                                    compress=lzma.compress), "outside"),
    "dotdot-member-name": (lambda: deb(tar_bytes([("../../usr/share/qemu/OVMF.fd", FW_DATA)]),
                                       compress=lzma.compress), "../"),
}


@pytest.mark.parametrize("case", sorted(DEB_HOSTILE))
def test_hostile_deb(case, tmp_path, alarm):
    build, contains = DEB_HOSTILE[case]
    member = {"missing-symlink-target": "usr/share/qemu/OVMF.fd", "symlink-loop": "a",
              "symlink-escapes": "usr/share/qemu/OVMF.fd",
              "dotdot-member-name": "usr/share/qemu/OVMF.fd"}.get(case, "usr/share/ovmf/OVMF.fd")
    line = _deb_error(tmp_path, build(), member)
    assert contains in line, line
    if case == "missing-symlink-target":
        assert "link 'usr/share/qemu/OVMF.fd' points to 'usr/share/ovmf/OVMF.fd'" in line, line


def test_deb_member_bomb_is_capped(tmp_path, alarm):
    # 100 MiB of zeros compresses to a few KiB; a firmware member is capped at 64 MiB.
    zeros = tar_bytes([("./usr/share/ovmf/OVMF.fd", bytes(100 << 20))])
    line = _deb_error(tmp_path, deb(zeros, compress=lambda d: lzma.compress(d, preset=0)),
                      kind="firmware")
    assert "too large" in line and "OVMF.fd" in line, line


def test_deb_data_tar_bomb_is_capped(tmp_path, alarm, monkeypatch):
    # The whole decompressed data.tar is capped too (lowered here so the test stays small).
    from builder.sources import debian
    monkeypatch.setattr(debian, "DATA_TAR_LIMIT", 1 << 20)
    big = tar_bytes([("./usr/share/doc/filler", bytes(4 << 20)),
                     ("./usr/share/ovmf/OVMF.fd", FW_DATA)])
    line = _deb_error(tmp_path, deb(big, b"data.tar.gz", gzip.compress))
    assert "data.tar" in line and "too large" in line, line
