"""`ccbuild boot OUT`: boot what a build produced and wait for the agent to say it is ready.

The boot is NOT confidential (no SEV-SNP or TDX here): it proves that the kernel, the initrd and
the exact measured command line (cmdline.txt) reach the agent. Debian's qemu-system-x86, q35,
serial console to a log file, memory from the manifest. Firmware:

* TDX: the built TDVF (firmware.fd) boots as a normal VM under TCG, so ``built`` is the default;
* SNP: the AmdSev build refuses to direct-boot outside an SEV guest (its verifier finds no hashes
  table), so the default is ``generic``: QEMU's own SeaBIOS, which needs no download. Which
  firmware was used is always reported.

KVM is used only when ``/dev/kvm`` passes a short probe boot (on some hosts it opens but fails
with "KVM internal error"); TCG otherwise. Every QEMU run has a timeout.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from builder import log
from builder.stages.chain import kernel_params
from builder.errors import CCBuildError
from builder.inputs import decode_utf8, file_type_name, open_regular, read_regular

QEMU = "qemu-system-x86_64"
BOOT_FILES = ("vmlinuz", "cmdline.txt", "firmware.fd")
# The guest's image: an initrd, or (Kata's image boot) a dm-verity rootfs on the first virtio-blk
# disk, read-only, whose root hash the measured cmdline carries.
IMAGES = ("initrd.img", "rootfs.img")
KVM_PROBE_TIMEOUT = 20.0       # a KVM boot of these guests takes ~2 s; a broken KVM fails at once
POWEROFF_GRACE = 15.0          # after the ready line, time for the agent to power the VM off
_KVM_FAILURE = re.compile(rb"KVM internal error|failed to initialize kvm|Could not access KVM",
                          re.I)
_ANSI = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")  # firmware console codes
_AGENT_SHA = re.compile(r"\bsha256=([0-9a-f]{64})\b")
# Where Debian's QEMU finds SeaBIOS (q35 loads bios-256k.bin by default).
_SEABIOS = (Path("/usr/share/qemu/bios-256k.bin"), Path("/usr/share/seabios/bios-256k.bin"))


@dataclass(frozen=True)
class BootOptions:
    accel: str = "auto"            # auto | tcg | kvm
    timeout: float = 300.0         # seconds for the whole boot (each attempt)
    firmware: str = "auto"         # auto | generic | built
    log: Path | None = None        # serial log (default: in the cache's logs/)
    qemu: str = QEMU


@dataclass(frozen=True)
class OutDir:
    path: Path
    name: str
    platform: str
    readiness: str
    memory_mib: int
    agent_sha256: str | None
    image: str = "initrd.img"      # initrd.img | rootfs.img


@dataclass
class BootResult:
    ready: bool
    seconds: float
    log: Path
    accel: str
    firmware: str                  # what firmware was used, in words
    reason: str                    # "ready" or why not
    line: str | None = None        # the readiness line
    argv: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- OUT -----------------------------------------------------------------------------------------
def load_out(out: Path) -> OutDir:
    """Read OUT's manifest (strict JSON, schema-checked: builder.outschema) and check the files to
    boot against it: regular files (not symlinks, FIFOs, devices) whose streamed SHA-256 is the
    manifest's (exit 2 when OUT is bad)."""
    from builder.outschema import load_manifest
    out = Path(out)
    where = str(out)
    if not out.is_dir():
        raise CCBuildError("not a directory", where, "give a 'ccbuild build' output directory")
    mpath = out / "manifest.json"
    if not mpath.exists() and not mpath.is_symlink():
        raise CCBuildError("no manifest.json (not a ccbuild output)", where)
    if mpath.is_symlink():
        raise CCBuildError("manifest.json is a symlink, not a regular file", str(mpath))
    manifest = load_manifest(mpath, str(mpath))
    platform = manifest.recipe.platform
    readiness, memory = manifest.boot.readiness, manifest.boot.memory_mib
    if readiness is None or memory is None:
        missing = "boot.readiness" if readiness is None else "boot.memory_mib"
        raise CCBuildError(f"manifest.json lacks {missing} (built by an older ccbuild?)", where,
                           "rebuild OUT")
    outputs = {o.path: o.sha256 for o in manifest.outputs}
    try:
        re.compile(readiness)
    except (re.error, RecursionError, OverflowError) as e:
        raise CCBuildError(f"bad readiness regex in manifest.json ({e})", where) from None
    image = next((n for n in IMAGES if n in outputs), IMAGES[0])
    for name in BOOT_FILES + (image,):
        p = out / name
        if not p.exists() and not p.is_symlink():
            raise CCBuildError(f"{name} is missing", where, "rebuild OUT")
        st = p.lstat()
        if not stat.S_ISREG(st.st_mode):
            raise CCBuildError(f"{name} is {file_type_name(st.st_mode)}, not a regular file",
                               where, "OUT has been tampered with; rebuild OUT")
        if outputs.get(name) != _sha256(p):
            raise CCBuildError(f"{name} does not match manifest.json (changed after the build)",
                               where, "rebuild OUT")
    return OutDir(out, manifest.recipe.name or out.name, platform, readiness, memory,
                  manifest.chain.agent, image)


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open_regular(p, "artifact", str(p)) as (f, _):
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_cmdline(o: OutDir) -> str:
    """cmdline.txt of OUT (regular, at most 1 MiB, UTF-8)."""
    p = o.path / "cmdline.txt"
    return decode_utf8(read_regular(p, "cmdline", str(p), limit=1 << 20), "cmdline", str(p))


# -- firmware and accelerator --------------------------------------------------------------------
def firmware_args(o: OutDir, choice: str) -> tuple[list[str], str]:
    """(-bios arguments, description) for ``choice`` (auto | generic | built)."""
    if choice == "auto":
        choice = "built" if o.platform == "tdx" else "generic"
    if choice == "built":
        if o.platform == "snp":
            raise CCBuildError("the SNP firmware (AmdSev build) cannot direct-boot outside an "
                               "SEV-SNP guest (its verifier finds no hashes table)", str(o.path),
                               "use --firmware generic (SeaBIOS) for a non-confidential boot")
        fw = o.path / "firmware.fd"
        return ["-bios", str(fw)], f"built TDVF (firmware.fd sha256 {_sha256(fw)[:16]}…)"
    if choice != "generic":
        raise CCBuildError(f"unknown firmware choice {choice!r}", hint="use generic or built")
    found = next((p for p in _SEABIOS if p.is_file()), None)
    what = f"bios-256k.bin sha256 {_sha256(found)[:16]}…" if found else "bios-256k.bin"
    note = "; the AmdSev build needs an SEV guest" if o.platform == "snp" else ""
    return [], f"generic: SeaBIOS, QEMU's default ({what}){note}"


def kvm_usable() -> bool:
    """/dev/kvm exists and can be opened read-write (a probe boot decides the rest)."""
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def qemu_argv(o: OutDir, accel: str, bios: list[str], serial_log: Path,
              qemu: str = QEMU) -> list[str]:
    cmdline = read_cmdline(o)
    return [qemu, "-machine", "q35", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-smp", "1", "-m", str(o.memory_mib), "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-monitor", "none",
            *console_args(cmdline, serial_log), *bios,
            "-kernel", str(o.path / "vmlinuz"), *image_args(o), "-append", cmdline]


def console_args(cmdline: str, log: Path) -> list[str]:
    """Where the guest's console goes: the serial port, or, when the command line names a
    virtio console (Kata's ``console=hvc0``, virtcontainers/qemu_arch_base.go appendConsole), a
    virtconsole on a virtio-serial bus as Kata attaches it; the firmware's serial output then
    goes to ``LOG.firmware``. Either way the guest's console lands in ``log``."""
    consoles = [v for n, v in kernel_params(cmdline) if n == "console" and v]
    if not any(c.split(",")[0] == "hvc0" for c in consoles):
        return ["-serial", f"file:{log}"]
    return ["-serial", f"file:{log}.firmware", "-device", "virtio-serial-pci,id=ser0",
            "-chardev", f"file,id=con0,path={_qemu_opt(log)}", "-device", "virtconsole,chardev=con0"]


def _qemu_opt(value) -> str:
    """A value inside a QEMU ``key=value,...`` option: commas doubled (QEMU's escape)."""
    return str(value).replace(",", ",,")


def image_args(o: OutDir) -> list[str]:
    if o.image == "rootfs.img":      # /dev/vda: p1 the file system, p2 its verity tree
        return ["-drive", f"file={_qemu_opt(o.path / o.image)},format=raw,if=none,id=rootfs,readonly=on",
                "-device", "virtio-blk-pci,drive=rootfs"]
    return ["-initrd", str(o.path / o.image)]


# -- one QEMU run --------------------------------------------------------------------------------
def run_qemu(argv: list[str], serial_log: Path, readiness: str, timeout: float,
             fail_fast: re.Pattern | None = None) -> tuple[bool, float, str, str | None]:
    """Run QEMU until the readiness regex appears on the serial log, QEMU exits, or ``timeout``.
    Returns (ready, seconds to ready or end, reason, the ready line)."""
    pattern = re.compile(readiness)
    serial_log.parent.mkdir(parents=True, exist_ok=True)
    serial_log.write_bytes(b"")
    err_path = serial_log.with_suffix(serial_log.suffix + ".stderr")
    log.echo_command(argv)
    t0 = time.monotonic()
    with open(err_path, "wb") as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        except FileNotFoundError:
            raise CCBuildError(f"{argv[0]} is not installed", "boot",
                               "apt-get install qemu-system-x86") from None
        try:
            line, reason = None, ""
            while True:
                done = proc.poll() is not None
                line = _find(serial_log, pattern, final=done)
                elapsed = time.monotonic() - t0
                if line is not None:
                    reason = "ready"
                    break
                if done:
                    reason = f"QEMU exited (status {proc.returncode}) without the readiness line"
                    tail = _tail(err_path)
                    if tail:
                        reason += f"; QEMU said: {tail}"
                    break
                if fail_fast is not None and fail_fast.search(err_path.read_bytes()):
                    reason = f"QEMU failed: {_tail(err_path, fail_fast)}"
                    break
                if elapsed > timeout:
                    reason = f"no readiness line within {timeout:g} s"
                    break
                time.sleep(0.05)
            if line is not None:
                try:                                  # the agent powers the VM off itself
                    proc.wait(timeout=POWEROFF_GRACE)
                except subprocess.TimeoutExpired:
                    pass
            return line is not None, elapsed, reason, line
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _find(serial_log: Path, pattern: re.Pattern, final: bool = False) -> str | None:
    """The first line matching ``pattern``; only complete lines unless QEMU has exited
    (``final``), so a line still being written is never cut short."""
    try:
        text = serial_log.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None
    if not final:
        text = text[:text.rfind("\n") + 1]
    for ln in text.splitlines():
        if pattern.search(ln):
            return _ANSI.sub("", ln).strip()
    return None


def _tail(p: Path, pattern: re.Pattern | None = None) -> str:
    try:
        lines = [ln for ln in p.read_bytes().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    if pattern is not None:
        lines = [ln for ln in lines if pattern.search(ln.encode())] or lines
    return lines[-1].strip()[:200] if lines else ""


# -- the verb ------------------------------------------------------------------------------------
def default_log(name: str) -> Path:
    from builder.store import Store
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return Store.open().log_path(f"boot-{name}-{stamp}-{os.getpid()}")


def boot(out: Path, options: BootOptions = BootOptions()) -> BootResult:
    o = load_out(out)
    if options.accel not in ("auto", "tcg", "kvm"):
        raise CCBuildError(f"unknown accelerator {options.accel!r}", hint="use tcg or kvm")
    if not options.timeout > 0:
        raise CCBuildError("--timeout must be positive")
    bios, fw_desc = firmware_args(o, options.firmware)
    serial = Path(options.log) if options.log else default_log(o.name)
    notes: list[str] = []

    attempts: list[tuple[str, float, re.Pattern | None]] = []
    if options.accel == "kvm":
        attempts.append(("kvm", options.timeout, _KVM_FAILURE))
    elif options.accel == "tcg":
        attempts.append(("tcg", options.timeout, None))
    else:
        if kvm_usable():
            attempts.append(("kvm", min(KVM_PROBE_TIMEOUT, options.timeout), _KVM_FAILURE))
        else:
            notes.append("KVM: /dev/kvm is absent or not accessible; using TCG")
        attempts.append(("tcg", options.timeout, None))

    result = None
    for i, (accel, timeout, fail_fast) in enumerate(attempts):
        argv = qemu_argv(o, accel, bios, serial, options.qemu)
        ready, secs, reason, line = run_qemu(argv, serial, o.readiness, timeout, fail_fast)
        result = BootResult(ready, secs, serial, accel, fw_desc, reason, line, argv, notes)
        if ready or i == len(attempts) - 1:
            break
        notes.append(f"KVM probe boot failed ({reason}); using TCG")
    assert result is not None
    if result.ready and o.agent_sha256:
        m = _AGENT_SHA.search(result.line or "")
        if m and m.group(1) != o.agent_sha256:
            result.ready = False
            result.reason = (f"the agent that ran reports sha256 {m.group(1)}, but the manifest's "
                             f"chain has agent {o.agent_sha256}")
    return result
