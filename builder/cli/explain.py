"""`ccbuild explain`: why does real evidence not match the published values?

  ccbuild explain --snp-report R [--vcek C [--chain ASK_ARK]] OUT
  ccbuild explain --snp-report R --firmware F --kernel K [--initrd I] [--append STR]
  ccbuild explain --snp-report R --firmware F --kernel-sha256 HEX [--initrd-sha256 HEX]
                  [--append STR] [--ovmf-hash HEX]
  ccbuild explain --tdx-quote Q [--ccel TABLE DATA] ...   (TDX, when builder.cli.explain_tdx exists)

SEV-SNP: verifies the report signature when a VCEK is given, then searches the launch space
(vCPUs, CPU signatures, VMMs, guest features, command-line and initrd variants) for the launch
that reproduces MEASUREMENT, and says how it differs from measurements.json. Files given with
OUT replace OUT's (and are named as the difference). Exit 0 when a launch reproducing the
measurement was found, 1 when none was (or the signature does not verify), 2 for bad input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from builder.cli.common import hash_input, int_arg, read_input, text_arg
from builder.cli.measure_snp import SIGNATURE_MAX, _ovmf_hash, sha256_arg
from builder.errors import EXIT_CHECK_FAILED, CCBuildError, CheckFailed
from builder.inputs import decode_utf8

try:  # the TDX half lives in its own module (the shared options are defined here)
    import builder.cli.explain_tdx as explain_tdx
except ModuleNotFoundError as _e:  # only when that module is absent, never hiding its errors
    if _e.name != "builder.cli.explain_tdx":
        raise
    explain_tdx = None

KATA_TOML = "kata-configuration-qemu-snp.toml"


def register(sub) -> None:
    p = sub.add_parser("explain", help="find the launch that reproduces real evidence and say "
                       "how it differs from the published values",
                       description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, nargs="?", help="a `ccbuild build` output directory (its "
                   "artifacts and measurements.json)")
    p.add_argument("--snp-report", metavar="R",
                   help="SEV-SNP attestation report (binary, hex text or SNP_GUEST_REQUEST reply)")
    p.add_argument("--vcek", metavar="C", help="the VCEK (or VLEK) certificate, DER or PEM: the "
                   "report signature is verified first")
    p.add_argument("--chain", metavar="ASK_ARK",
                   help="ASK + ARK PEM bundle (default: AMD's keys shipped with ccbuild)")
    p.add_argument("--firmware", metavar="F", help="the OVMF image (with --ovmf-hash: only its "
                   "SEV metadata layout is used)")
    kernel = p.add_mutually_exclusive_group()
    kernel.add_argument("--kernel", metavar="K", help="kernel file")
    kernel.add_argument("--kernel-sha256", metavar="HEX", help="the kernel's SHA-256")
    initrd = p.add_mutually_exclusive_group()
    initrd.add_argument("--initrd", metavar="I", help="initrd file")
    initrd.add_argument("--initrd-sha256", metavar="HEX", help="the initrd's SHA-256")
    p.add_argument("--append", metavar="STR", help="the kernel command line (QEMU -append)")
    p.add_argument("--ovmf-hash", metavar="HEX",
                   help="SNP: the firmware-only digest (`measure snp --mode snp:ovmf-hash`)")
    p.add_argument("--max-vcpus", metavar="N", default="512",
                   help="SNP: search vCPU counts 1..N (default 512)")
    p.add_argument("--vcpu-sig", metavar="S", action="append", default=[],
                   help="SNP: also search this CPUID signature (repeatable)")
    p.add_argument("--all-features", action="store_true",
                   help="SNP: search every SEV_FEATURES bit combination (vTOM, ReflectVC... for "
                   "paravisor/SVSM guests), 2^15 values instead of 2^8")
    p.add_argument("--workers", metavar="N", default="1",
                   help="SNP: processes to search on (default 1; the answer does not depend on it)")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    if explain_tdx is not None:
        explain_tdx.add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if explain_tdx is not None and (getattr(args, "tdx_quote", None) or
                                    getattr(args, "ccel", None)):
        if args.snp_report:
            raise CCBuildError("--snp-report and the TDX evidence options exclude each other",
                               hint="explain one report at a time")
        return explain_tdx.run(args)
    if not args.snp_report:
        tdx = " (or --tdx-quote Q / --ccel TABLE DATA)" if explain_tdx is not None else ""
        raise CCBuildError(f"nothing to explain: give --snp-report R{tdx}")
    return run_snp(args)


# --- SEV-SNP ----------------------------------------------------------------------------------

def _out_inputs(out_path: Path):
    """(OutDir, firmware bytes, kernel sha256, initrd sha256, cmdline, measurements) of OUT."""
    from builder.verify.out import load_out, sha256_stream
    out = load_out(out_path)

    def digest(name: str) -> bytes | None:
        e = out.files.get(name)
        if e is None:
            return None
        if e.sha256 is None:
            return bytes.fromhex(sha256_stream(out.path / name, str(out.path / name))[0])
        return bytes.fromhex(e.sha256)

    cmd_raw = out.artifact("cmdline.txt")
    cmdline = None if cmd_raw is None else decode_utf8(cmd_raw, "cmdline",
                                                       str(out.path / "cmdline.txt"))
    return out, out.artifact("firmware.fd"), digest("vmlinuz"), digest("initrd.img"), cmdline


def _kata_cmdlines(out, kata: dict | None) -> tuple[list[tuple[str, str]], list[str]]:
    """(label, command line) of every modelled Kata release composing OUT's Kata configuration
    for each pod CPU limit of measurements.json, and notes (releases the model refuses)."""
    if not kata or KATA_TOML not in out.files:
        return [], []
    from builder.kata.config import KIND, parse_kata_config
    from builder.kata.go_runtime import HostFacts, Pod, compose
    from builder.kata.versions import KATA_RELEASES
    shown = str(out.path / KATA_TOML)
    try:
        cfg = parse_kata_config(decode_utf8(out.read(KATA_TOML, KIND), KIND, shown), shown)
    except CCBuildError as e:   # the search goes on without the Kata compositions
        return [], [f"Kata compositions not searched: {e.one_line()}"]
    pods = [p["pod_cpus"] for p in kata.get("pods", [])] or [0]
    by_line: dict[str, list[str]] = {}
    notes = []
    for tag, release in KATA_RELEASES.items():
        for cpus in pods:
            try:
                line = compose(cfg, release, HostFacts(tee="snp"), Pod(cpus=float(cpus))).append
            except CCBuildError as e:
                notes.append(f"Kata {tag}: {e.one_line()}")
                continue
            by_line.setdefault(line, []).append(f"{tag} pod CPUs {cpus}")
    out_lines = []
    for line, labels in by_line.items():
        tags = list(dict.fromkeys(lb.split(" ")[0] for lb in labels))
        cpus = list(dict.fromkeys(lb.rsplit(" ", 1)[1] for lb in labels))
        out_lines.append((f"Kata {'/'.join(tags)} composition (pod CPUs {','.join(cpus)})", line))
    return out_lines, notes


def _signature(args, report_bytes: bytes) -> str | None:
    if not args.vcek:
        if args.chain:
            raise CCBuildError("--chain goes with --vcek")
        return None
    from builder.verify.snp import verify_snp_report
    vcek = read_input(args.vcek, "--vcek", "certificate")
    chain = read_input(args.chain, "--chain", "certificate")
    try:
        vr = verify_snp_report(report_bytes, vcek, chain, vcek_what=f"--vcek {args.vcek}",
                               chain_what=f"--chain {args.chain}")
    except ValueError as e:        # cryptography parses certificate fields lazily
        raise CheckFailed("a certificate of the chain is damaged and cannot be read "
                          f"({str(e).splitlines()[0][:160]})") from None
    return (f"{vr.signer} signature verifies; chain {vr.ark_subject} -> {vr.ask_subject} -> "
            f"{vr.vcek_subject} ({vr.chain_source}, {vr.product})")


def _given_sha256(args, name: str, current: bytes | None, sources: dict[str, str],
                  overridden: list[str]) -> bytes | None:
    """The SHA-256 of ``--NAME FILE`` or ``--NAME-sha256 HEX`` when given (replacing OUT's,
    named in ``overridden`` when it differs), else ``current``."""
    path, hexdigest = getattr(args, name), getattr(args, f"{name}_sha256")
    if path is not None:
        digest, src = hash_input(path, f"--{name}", name)[0], f"--{name} {path}"
    elif hexdigest is not None:
        digest = sha256_arg(hexdigest, f"--{name}-sha256")
        src = f"--{name}-sha256 {digest.hex()}"
    else:
        return current
    if current is not None and digest != current:
        overridden.append(name)
    sources[name] = src
    return digest


def _inputs(args):
    """The SnpInputs and Published of the command line (OUT and/or files and digests)."""
    from builder.verify.explain_snp import SnpInputs, published_from
    append = text_arg(args.append, "--append")
    sources: dict[str, str] = {}
    overridden: list[str] = []
    fw = kernel256 = initrd256 = cmdline = measurements = None
    extra: list[tuple[str, str | None]] = []
    notes: list[str] = []
    out = None
    if args.out is not None:
        out, fw, kernel256, initrd256, cmdline = _out_inputs(args.out)
        measurements = out.measurements
        for name, have in (("firmware", fw), ("kernel", kernel256), ("initrd", initrd256),
                           ("cmdline", cmdline)):
            if have is not None:
                sources[name] = f"OUT/{_OUT_NAMES[name]}"
        kata_lines, notes = _kata_cmdlines(out, (measurements or {}).get("kata"))
        extra += kata_lines

    given_fw = read_input(args.firmware, "--firmware", "firmware")
    if given_fw is not None:
        if fw is not None and given_fw != fw:
            overridden.append("firmware")
        fw = given_fw
        sources["firmware"] = f"--firmware {args.firmware}"
    kernel256 = _given_sha256(args, "kernel", kernel256, sources, overridden)
    initrd256 = _given_sha256(args, "initrd", initrd256, sources, overridden)
    reference = cmdline
    if append is not None:
        if cmdline is not None and append != cmdline:
            extra.insert(0, ("OUT's cmdline.txt", cmdline))
        cmdline = append
        sources["cmdline"] = "--append"
    ovmf = _ovmf_hash(args.ovmf_hash)
    if ovmf is not None:
        from builder.measure.snp import ovmf_hash
        if "firmware" not in overridden and fw is not None and args.out is not None \
                and ovmf_hash(fw) != ovmf:
            overridden.append("firmware")
        sources["ovmf_hash"] = f"--ovmf-hash {ovmf.hex()[:16]}..."
        if "firmware" in sources:
            sources["firmware"] += " (SEV metadata layout only)"

    if fw is None:
        raise CCBuildError("no firmware to search with", hint="give OUT or --firmware F")
    if kernel256 is None:
        raise CCBuildError("no kernel to search with",
                           hint="give OUT, --kernel K or --kernel-sha256 HEX")
    for n in notes:
        sources.setdefault("notes", "")
        sources["notes"] = (sources["notes"] + "; " if sources["notes"] else "") + n
    inputs = SnpInputs(firmware=fw, kernel_sha256=kernel256, initrd_sha256=initrd256,
                       cmdline=cmdline, ovmf_digest=ovmf, reference_cmdline=reference,
                       extra_cmdlines=tuple(extra), sources=sources,
                       overridden=tuple(overridden))
    return inputs, published_from(measurements)


_OUT_NAMES = {"firmware": "firmware.fd", "kernel": "vmlinuz", "initrd": "initrd.img",
              "cmdline": "cmdline.txt"}


def run_snp(args) -> int:
    from builder.formats.snp_report import parse_report
    from builder.verify.explain_snp import explain_snp, space_for
    report_bytes = read_input(args.snp_report, "--snp-report", "report")
    report = parse_report(report_bytes)
    max_vcpus = int_arg(args.max_vcpus, "--max-vcpus", 1, 512)
    workers = int_arg(args.workers, "--workers", 1, 64)
    sigs = tuple(int_arg(s, "--vcpu-sig", 0, SIGNATURE_MAX) for s in args.vcpu_sig)
    inputs, published = _inputs(args)
    signature = _signature(args, report_bytes)
    space = space_for(published, report, max_vcpus=max_vcpus, all_features=args.all_features,
                      extra_sigs=sigs)
    ex = explain_snp(report, inputs, published, signature=signature, space=space,
                     workers=workers)
    if args.json:
        json.dump(ex.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(ex.text())
    if ex.found:
        return 0
    sys.stdout.flush()
    print(f"ccbuild: error: no launch reproduces MEASUREMENT {report.measurement.hex()[:16]}...: "
          f"{ex.result.searched['candidates']:,} launches searched; check the firmware, kernel, "
          "initrd and command line", file=sys.stderr)
    return EXIT_CHECK_FAILED
