"""`ccbuild measure snp`: the SEV-SNP launch digest of a firmware (+ kernel, initrd, cmdline)."""

from __future__ import annotations

import base64
import hashlib
import json

from builder.cli.common import hash_input, int_arg, read_input, shown, text_arg
from builder.errors import CCBuildError
from builder.measure.cpu import (
    BASE_FAMILY_MAX, cpu_signature, decode_signature, supported_vcpu_types, vcpu_type)
from builder.measure.sev_hashes import KernelHashes, measured_cmdline
from builder.measure.snp import LD_SIZE, MAX_VCPUS, SnpParams, measure, measure_firmware_only
from builder.measure.vmsa import Vmm

MODES = ("snp", "snp:ovmf-hash")
SIGNATURE_MAX = 0x0FFF_FFFF   # CPUID Fn0000_0001_EAX: bits 27:0 carry family/model/stepping
GUEST_FEATURES_MAX = (1 << 64) - 1  # SEV_FEATURES is a u64 VMSA field (offset 0x3B0)
MAX_DIGEST_TEXT = 256   # a hex digest option longer than this is not a digest


def register(sub) -> None:
    p = sub.add_parser("snp", help="SEV-SNP launch digest",
                       description="Print the SEV-SNP launch digest (MEASUREMENT) of a launch.")
    p.add_argument("--firmware", required=True, metavar="F", help="the single -bios OVMF image")
    kernel = p.add_mutually_exclusive_group()
    kernel.add_argument("--kernel", metavar="K", help="kernel file (QEMU -kernel, kernel-hashes=on)")
    kernel.add_argument("--kernel-sha256", metavar="HEX",
                        help="the kernel's SHA-256 instead of the file (a published manifest)")
    initrd = p.add_mutually_exclusive_group()
    initrd.add_argument("--initrd", metavar="I", help="initrd file (QEMU -initrd)")
    initrd.add_argument("--initrd-sha256", metavar="HEX",
                        help="the initrd's SHA-256 instead of the file")
    p.add_argument("--append", metavar="STR", help="the final kernel command line (QEMU -append)")
    p.add_argument("--vcpus", metavar="N", help=f"number of vCPUs (1..{MAX_VCPUS})")
    cpu = p.add_mutually_exclusive_group()
    cpu.add_argument("--vcpu-type", metavar="T", help="QEMU CPU model: "
                     + ", ".join(supported_vcpu_types()))
    cpu.add_argument("--vcpu-sig", metavar="S", help="CPUID Fn0000_0001_EAX signature")
    cpu.add_argument("--vcpu-family", metavar="F", help="vCPU family (with --vcpu-model and "
                     "--vcpu-stepping)")
    p.add_argument("--vcpu-model", metavar="M")
    p.add_argument("--vcpu-stepping", metavar="S")
    p.add_argument("--vmm", default="qemu", choices=[v.value for v in Vmm])
    p.add_argument("--guest-features", default="0x1", metavar="0x1",
                   help="SEV_FEATURES of the VMSAs (0x1; 0x21 when the host enables DebugSwap)")
    p.add_argument("--mode", default="snp", choices=MODES,
                   help="snp: the launch digest; snp:ovmf-hash: only the firmware part")
    p.add_argument("--ovmf-hash", metavar="HEX",
                   help="start from this firmware-only digest instead of hashing the firmware "
                   "(--firmware then gives only the SEV metadata layout)")
    p.add_argument("--format", default="hex", choices=("hex", "base64"))
    p.add_argument("--json", action="store_true",
                   help="print the full record: inputs, parameters, page-operation transcript")
    p.set_defaults(func=run)


def _vcpu(args) -> tuple[str | None, int]:
    model_args = (args.vcpu_model, args.vcpu_stepping)
    if args.vcpu_family is not None:
        if None in model_args:
            raise CCBuildError("--vcpu-family needs --vcpu-model and --vcpu-stepping")
        return None, cpu_signature(
            int_arg(args.vcpu_family, "--vcpu-family", 0, BASE_FAMILY_MAX + 0xFF),
            int_arg(args.vcpu_model, "--vcpu-model", 0, 0xFF),
            int_arg(args.vcpu_stepping, "--vcpu-stepping", 0, 0xF))
    if any(a is not None for a in model_args):
        raise CCBuildError("--vcpu-model and --vcpu-stepping go with --vcpu-family")
    if args.vcpu_type is not None:
        t = vcpu_type(args.vcpu_type)
        return t.name, t.signature
    if args.vcpu_sig is not None:
        return None, int_arg(args.vcpu_sig, "--vcpu-sig", 0, SIGNATURE_MAX)
    raise CCBuildError("missing vCPU identity",
                       hint="give --vcpu-type, --vcpu-sig or --vcpu-family/--vcpu-model/--vcpu-stepping")


def _file_record(data: bytes | None) -> dict | None:
    if data is None:
        return None
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def sha256_arg(text: str | None, option: str) -> bytes | None:
    """A SHA-256 given on the command line as 64 hex digits (None when the option is absent)."""
    if text is None:
        return None
    hint = "give the 32-byte digest as 64 hex digits"
    if len(text) > 2 * MAX_DIGEST_TEXT:
        raise CCBuildError(f"{option} is not a SHA-256 ({len(text)} characters)", hint=hint)
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise CCBuildError(f"{option} {shown(text)} is not hex", hint=hint) from None
    if len(value) != 32:
        raise CCBuildError(f"{option} has {len(value)} bytes, expected 32", hint=hint)
    return value


def _ovmf_hash(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        raise CCBuildError(f"--ovmf-hash {shown(text)} is not hex",
                           hint=f"give the {LD_SIZE}-byte digest as {2 * LD_SIZE} hex digits") \
            from None
    if len(seed) != LD_SIZE:
        raise CCBuildError(f"--ovmf-hash has {len(seed)} bytes, expected {LD_SIZE}",
                           hint=f"give the {LD_SIZE}-byte digest as {2 * LD_SIZE} hex digits")
    return seed


def run(args) -> int:
    append = text_arg(args.append, "--append")
    fw = read_input(args.firmware, "--firmware", "firmware")
    kernel = read_input(args.kernel, "--kernel", "kernel")
    kernel_sha256 = sha256_arg(args.kernel_sha256, "--kernel-sha256")
    if kernel is not None:
        kernel_sha256 = hashlib.sha256(kernel).digest()
    # The initrd is only hashed: streamed, never held in memory (it may be 2 GiB).
    initrd = hash_input(args.initrd, "--initrd", "initrd")
    initrd_sha256 = sha256_arg(args.initrd_sha256, "--initrd-sha256")
    if initrd_sha256 is not None:
        initrd = (initrd_sha256, None)
    if kernel_sha256 is None and (initrd is not None or append is not None):
        raise CCBuildError("--initrd and --append need --kernel (or --kernel-sha256)",
                           hint="QEMU measures them only with a kernel")
    params_record: dict = {"mode": args.mode}
    if args.mode == "snp:ovmf-hash":
        if kernel_sha256 is not None or initrd is not None or append is not None \
                or args.ovmf_hash is not None:
            raise CCBuildError("mode snp:ovmf-hash measures the firmware alone",
                               hint="drop --kernel/--initrd/--append/--ovmf-hash and the digests")
        result = measure_firmware_only(fw)
    else:
        if args.vcpus is None:
            raise CCBuildError("missing --vcpus N")
        vcpus = int_arg(args.vcpus, "--vcpus", 1, MAX_VCPUS)
        name, sig = _vcpu(args)
        features = int_arg(args.guest_features, "--guest-features", 0, GUEST_FEATURES_MAX)
        seed = _ovmf_hash(args.ovmf_hash)
        hashes = None
        if kernel_sha256 is not None:
            hashes = KernelHashes.of_digests(kernel_sha256,
                                             None if initrd is None else initrd[0], append)
        params = SnpParams(vcpus=vcpus, vcpu_sig=sig, vmm=Vmm.parse(args.vmm),
                           guest_features=features, kernel_hashes=hashes, ovmf_hash=seed)
        result = measure(fw, params)
        cpuid = decode_signature(sig)
        params_record.update(
            vcpus=params.vcpus, vcpu_type=name, vcpu_sig=f"0x{sig:x}",
            vcpu_family=cpuid.family, vcpu_model=cpuid.model, vcpu_stepping=cpuid.stepping,
            vmm=params.vmm.value, guest_features=f"0x{params.guest_features:x}",
            ovmf_hash=args.ovmf_hash.lower() if args.ovmf_hash else None)
    digest = result.launch_digest
    value = digest.hex() if args.format == "hex" else base64.b64encode(digest).decode()
    if not args.json:
        print(value)
        return 0
    record = {
        "platform": "snp",
        "launch_digest": digest.hex(),
        "value": value,
        "format": args.format,
        "inputs": {"firmware": _file_record(fw),
                   "kernel": (_file_record(kernel) if kernel is not None or kernel_sha256 is None
                              else {"sha256": kernel_sha256.hex(), "size": None}),
                   "initrd": (None if initrd is None
                              else {"sha256": initrd[0].hex(), "size": initrd[1]}),
                   "append": append,
                   "cmdline_sha256": (hashlib.sha256(measured_cmdline(append)).hexdigest()
                                      if kernel_sha256 is not None else None)},
        "parameters": params_record,
        "transcript": [op.as_dict() for op in result.transcript],
    }
    print(json.dumps(record, indent=2))
    return 0
