"""Helpers shared by test modules (test modules never import each other).

The hostile-input corpus (tests/test_hostile_*.py) runs every case through the real CLI in a
subprocess, under an address-space limit and a timeout, and checks the error contract: exit 1
or 2, exactly one line on stderr starting ``ccbuild: error:``, no traceback.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import struct
import uuid
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

HOSTILE_TIMEOUT = 20            # seconds per case (the bound)
HOSTILE_MEMORY = 2 << 30        # bytes of address space per case


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def stderr_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def _limit_memory():  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (HOSTILE_MEMORY, HOSTILE_MEMORY))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_cli(args: list[str], *, cwd: Path | None = None, env: dict | None = None,
            timeout: float = HOSTILE_TIMEOUT, stdin: bytes | None = None) -> Outcome:
    """``python -m builder.cli ARGS`` in a subprocess with a memory limit and a timeout. A timeout
    is a test failure (the process is killed), not an exception the caller must handle."""
    full_env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    full_env.pop("CCBUILD_DEBUG", None)
    t0 = time.monotonic()
    try:
        cp = subprocess.run([sys.executable, "-m", "builder.cli", *args], cwd=cwd or REPO,
                            env=full_env, input=stdin, capture_output=True, timeout=timeout,
                            preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"ccbuild {' '.join(map(str, args))[:200]} did not finish within "
                             f"{timeout} s (stderr so far: {(e.stderr or b'')[-300:]!r})") from None
    return Outcome(cp.returncode, cp.stdout.decode(errors="replace"),
                   cp.stderr.decode(errors="replace"), time.monotonic() - t0)


def assert_one_line_error(o: Outcome, codes: tuple[int, ...] = (1, 2),
                          contains: str | None = None) -> str:
    """The error contract: exit code in ``codes``, one ``ccbuild: error:`` line, no traceback.
    Returns the line."""
    assert "Traceback" not in o.stderr, o.stderr[-2000:]
    assert o.rc in codes, f"exit {o.rc} (want {codes}); stderr: {o.stderr[-1000:]}"
    lines = o.stderr_lines
    assert len(lines) == 1, f"stderr has {len(lines)} lines: {o.stderr[-1000:]}"
    assert lines[0].startswith("ccbuild: error: "), lines[0]
    if contains is not None:
        assert contains in lines[0], f"{contains!r} not in {lines[0]!r}"
    return lines[0]


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Everything under ``root`` (not following symlinks): relative path -> (type, mode, size,
    sha256 or link target). Two equal snapshots mean nothing under ``root`` changed."""
    snap: dict[str, tuple] = {}
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        return snap
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                snap[rel] = ("link", os.readlink(p))
            elif p.is_file():
                snap[rel] = ("file", st.st_mode, st.st_size,
                             hashlib.sha256(p.read_bytes()).hexdigest())
            elif p.is_dir():
                snap[rel] = ("dir", st.st_mode)
            else:
                snap[rel] = ("other", st.st_mode)
    return snap


# -- synthetic firmware ------------------------------------------------------------------------
def guid_le(s: str) -> bytes:
    """A GUID in EFI mixed-endian byte order."""
    return uuid.UUID(s).bytes_le


def synthetic_tdvf() -> bytes:
    """An 16 KiB image: a 2-page BFV at 0xFFFFC000 (data at file offset 0x1000, MR.EXTEND), a
    1-page TD_HOB (no data), a 1-page PAGE.AUG TempMem; the descriptor in the last page, found
    through the footer table."""
    size = 0x4000
    img = bytearray(size)
    for i in range(0x2000):
        img[0x1000 + i] = (i * 7 + 3) & 0xFF
    desc_off = 0x3C00
    sections = [
        (0x1000, 0x2000, 0xFFFFC000 + 0x1000, 0x2000, 0, 1),   # BFV, MR.EXTEND
        (0, 0, 0x800000, 0x1000, 2, 0),                         # TD_HOB
        (0, 0, 0x900000, 0x1000, 3, 2),                         # TempMem, PAGE.AUG
    ]
    img[desc_off - 16:desc_off] = guid_le("e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae")
    img[desc_off:desc_off + 16] = b"TDVF" + struct.pack("<III", 16 + 32 * 3, 1, 3)
    for i, s in enumerate(sections):
        struct.pack_into("<IIQQII", img, desc_off + 16 + 32 * i, *s)
    # footer table: [TDX entry: u32 offset-from-end | u16 len 22 | GUID][u16 total | footer GUID]
    end = size - 32
    entry = struct.pack("<I", size - desc_off) + struct.pack("<H", 22) + guid_le(
        "e47a6535-984a-4798-865e-4685a7bf8ec2")
    footer = struct.pack("<H", 22 + 18) + guid_le("96b582de-1fb2-45f7-baea-a366c55a082d")
    img[end - 18 - 22:end] = entry + footer
    return bytes(img)


# -- PE images and their oracle -------------------------------------------------------------
def authenticode_oracle(image: bytes, alg: str) -> bytes:
    """Authenticode digest by virt-firmware (an independent implementation)."""
    pefile = pytest.importorskip("pefile")
    pesign = pytest.importorskip("virt.peutils.pesign")
    return pesign.pe_authenticode_hash(pefile.PE(data=image), alg)


def minimal_pe(trailer: bytes = b"", cert: bytes = b"") -> bytes:
    """A PE32+ image built field by field: DOS header, PE header, optional header with 16
    directories, two sections stored out of order in the section table."""
    e_lfanew = 0x40
    opt_size = 0x70 + 16 * 8
    sec_table = e_lfanew + 4 + 20 + opt_size
    size_of_headers = 0x200
    img = bytearray(size_of_headers + 0x400)
    img[0:2] = b"MZ"
    struct.pack_into("<I", img, 0x3C, e_lfanew)
    img[e_lfanew:e_lfanew + 4] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", img, e_lfanew + 4, 0x8664, 2, 0, 0, 0, opt_size, 0x22)
    opt = e_lfanew + 24
    struct.pack_into("<H", img, opt, 0x20B)
    struct.pack_into("<I", img, opt + 32, 0x1000)           # SectionAlignment
    struct.pack_into("<I", img, opt + 36, 0x200)            # FileAlignment
    struct.pack_into("<I", img, opt + 56, 0x3000)           # SizeOfImage
    struct.pack_into("<I", img, opt + 60, size_of_headers)  # SizeOfHeaders
    struct.pack_into("<I", img, opt + 64, 0xDEADBEEF)       # CheckSum (skipped)
    struct.pack_into("<I", img, opt + 108, 16)              # NumberOfRvaAndSizes
    # section table: .b at file 0x400 listed first, .a at file 0x200 second
    struct.pack_into("<8sIIIIIIHHI", img, sec_table, b".b", 0x200, 0x2000, 0x200, 0x400,
                     0, 0, 0, 0, 0)
    struct.pack_into("<8sIIIIIIHHI", img, sec_table + 40, b".a", 0x200, 0x1000, 0x200, 0x200,
                     0, 0, 0, 0, 0)
    for i in range(0x400):
        img[0x200 + i] = (i * 13) & 0xFF
    img += trailer
    if cert:
        struct.pack_into("<II", img, opt + 112 + 8 * 4, len(img), len(cert))
        img += cert
    return bytes(img)


# -- the emitted QEMU launch scripts -----------------------------------------------------------
BLOCK = re.compile(r'^# config (\d+): ([^\n]*)\n((?:# [^\n]*\n)*)\1\)\n  shift\n'
                   r'  exec "\$QEMU" \\\n((?:    [^\n]* \\\n)*)    "\$@"\n  ;;$', re.M)


def parse_script(text: str, out: Path) -> list[dict]:
    """[{number, title, values: {name: value}, argv: [...]}] from the script text, argv split
    with shlex and "$ARTIFACTS" resolved to OUT."""
    configs = []
    for m in BLOCK.finditer(text):
        values = dict(ln[2:].split("=", 1) for ln in m.group(3).splitlines()
                      if not ln.startswith("# note:"))
        body = m.group(4).replace(" \\\n", " ")
        argv = [a.replace("$ARTIFACTS/", f"{out}/") for a in shlex.split(body)]
        configs.append({"number": int(m.group(1)), "title": m.group(2), "values": values,
                        "argv": argv})
    return configs


def qemu_options(argv: list[str]) -> dict[str, list[str]]:
    """QEMU options of an argv: option -> its values, in order."""
    opts: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-nographic", "-nodefaults"):
            opts.setdefault(a, []).append("")
            i += 1
        else:
            opts.setdefault(a, []).append(argv[i + 1])
            i += 2
    return opts


# -- a small OUT directory ---------------------------------------------------------------------
def write_small_out(d: Path, artifacts: dict[str, bytes], measurements: dict) -> Path:
    """A small but complete OUT made with the build's own manifest writers (verify accepts it)."""
    from builder.emit.manifest import dumps, make_manifest, sha256sums

    files = dict(artifacts)
    files["measurements.json"] = dumps(measurements)
    manifest = make_manifest(
        name="hostile", platform="snp", recipe_sha256="1" * 64, recipe_digest="2" * 64,
        source_date_epoch=1735689600,
        inputs=[{"role": "kernel", "kind": "path", "name": "vmlinuz", "version": "",
                 "sha256": "3" * 64}],
        outputs=files,
        chain={"firmware": "4" * 64, "kernel": "5" * 64, "initrd": "6" * 64,
               "cmdline": "7" * 64, "agent": "8" * 64},
        build_key="9" * 64, boot={"readiness": "ready", "memory_mib": 512})
    files["manifest.json"] = dumps(manifest)
    files["SHA256SUMS"] = sha256sums(files)
    d.mkdir(parents=True)
    for n, b in files.items():
        (d / n).write_bytes(b)
    return d


def ccel_log(events) -> bytes:
    """A CC event log (TCG PFP 1.05 crypto-agile format, SHA-384 only) of ``events``: objects
    or dicts with register (``rtmr<i>`` or int), event type (name or int), digest (hex or
    bytes) and optional data (default: the description, ASCII)."""
    from builder.formats.tcg import EventType as _ET
    spec = (b"Spec ID Event03\0" + struct.pack("<IBBBB", 0, 0, 2, 0, 2)
            + struct.pack("<I", 1) + struct.pack("<HH", 0x000C, 48) + b"\0")
    out = struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(spec)) + spec
    for e in events:
        get = (lambda k: e[k]) if isinstance(e, dict) else (lambda k: getattr(e, k))
        reg = get("register") if isinstance(e, dict) else get("rtmr")
        reg = int(reg[4:]) if isinstance(reg, str) else reg
        et = get("event_type") if isinstance(e, dict) else get("type")
        et = int(_ET[et]) if isinstance(et, str) else int(et)
        dg = get("digest")
        dg = bytes.fromhex(dg) if isinstance(dg, str) else dg
        data = (e.get("data") if isinstance(e, dict) else None)
        if data is None:
            data = get("description").encode("ascii", "replace")
        out += (struct.pack("<III", reg + 1, et, 1) + struct.pack("<H", 0x000C) + dg
                + struct.pack("<I", len(data)) + data)
    return out


# -- sev-snp-measure as the independent SNP oracle ------------------------------------------------
class SnpOracle:
    """sev-snp-measure (a second implementation, test-only) over inputs written to ``folder``.
    ``vmm`` is a builder.measure.vmsa.Vmm or its name (qemu, ec2, gce)."""

    def __init__(self, folder: Path):
        self.folder, self.n = folder, 0

    def _file(self, data: bytes | None) -> str | None:
        if data is None:
            return None
        self.n += 1
        p = self.folder / f"in{self.n}"
        p.write_bytes(data)
        return str(p)

    def digest(self, fw: bytes, vcpus: int, sig: int, vmm, features: int, kernel=None,
               initrd=None, append=None, ovmf_hash: str = "") -> bytes:
        guest = pytest.importorskip("sevsnpmeasure.guest")
        from sevsnpmeasure.vmm_types import VMMType
        vmm_type = {"qemu": VMMType.QEMU, "ec2": VMMType.ec2, "gce": VMMType.gce}[
            getattr(vmm, "value", vmm)]
        return guest.snp_calc_launch_digest(vcpus, sig, self._file(fw), self._file(kernel),
                                            self._file(initrd), append, features, ovmf_hash,
                                            vmm_type)

    def ovmf_hash(self, fw: bytes) -> bytes:
        guest = pytest.importorskip("sevsnpmeasure.guest")
        return guest.calc_snp_ovmf_hash(self._file(fw))
