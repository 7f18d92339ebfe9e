"""The TDX half of `ccbuild explain`: options and run (builder/cli/explain.py calls both).

  ccbuild explain --tdx-quote Q --ccel TABLE DATA [OUT] [--firmware F] [--kernel K |
                  --kernel-authenticode HEX] [--initrd I | --initrd-sha384 HEX] [--append STR]
                  [--profile P] [--memory SIZE] [--json]

Expected values come from OUT (artifacts + measurements.json's tdx.profile) and/or the files,
digests and profile given; with OUT, ``--append`` is a candidate for the command line the TD
actually used (e.g. its /proc/cmdline). Exit 0 when every divergence is explained (or there is
none), 1 when something remains unexplained, 2 for bad input.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from builder.cli.common import read_input, text_arg
from builder.cli.measure_tdx import memory_arg, sha384_arg
from builder.errors import EXIT_CHECK_FAILED, CCBuildError
from builder.inputs import decode_utf8


def add_arguments(p) -> None:
    p.add_argument("--tdx-quote", metavar="Q", help="TDX: the quote (v4/v5) or TDREPORT")
    p.add_argument("--ccel", nargs="+", metavar="FILE",
                   help="TDX: the CCEL ACPI table and its event log (TABLE DATA), or the log alone")
    p.add_argument("--profile", metavar="P", help="TDX: the VMM profile the values were "
                   "computed with (a shipped name or a YAML path; default OUT's record)")
    p.add_argument("--memory", metavar="SIZE", help="TDX: guest RAM expected (overrides the "
                   "profile's and OUT's)")
    p.add_argument("--kernel-authenticode", metavar="HEX",
                   help="TDX: the kernel's Authenticode SHA-384 (instead of --kernel)")
    p.add_argument("--initrd-sha384", metavar="HEX",
                   help="TDX: the initrd's SHA-384 (instead of --initrd)")


def _evidence(args):
    from builder.formats import ccel, evidence, tdx_quote
    from builder.verify.tdx import log_events
    ccel_args = args.ccel or []
    if len(ccel_args) > 2:
        raise CCBuildError("--ccel takes TABLE DATA or DATA alone", "--ccel")
    if not ccel_args:
        raise CCBuildError("TDX explain needs the event log", "--ccel",
                           "give --ccel TABLE DATA (/sys/firmware/acpi/tables/CCEL and "
                           "/sys/firmware/acpi/tables/data/CCEL)")
    if len(ccel_args) == 2:
        table = ccel.parse_ccel_table(read_input(ccel_args[0], "--ccel", "certificate"))
        if table.cc_type != 2:
            raise CCBuildError(f"the CCEL table is of CC type {table.cc_type_name}, not Intel TDX",
                               "--ccel")
    data = read_input(ccel_args[-1], "--ccel", "event log")
    log = ccel.parse_event_log(data)
    body = None
    if args.tdx_quote:
        q = read_input(args.tdx_quote, "--tdx-quote", "report")
        kind = evidence.detect(q)
        if kind == "tdx-quote":
            body = tdx_quote.parse_quote(q).body
        elif kind == "tdreport":
            body = tdx_quote.parse_tdreport(q).measurements
        else:
            raise CCBuildError("not a TDX quote (v4/v5) or TDREPORT", "--tdx-quote")
    return log, log_events(log), body


def _inputs(args):
    from builder.measure.tdx import TdxParams
    from builder.verify.explain_tdx import TdxInputs
    fw = kernel = initrd = cmdline = None
    params = TdxParams()
    if args.out is not None:
        from builder.verify.out import load_out
        out = load_out(args.out)
        fw, kernel, initrd = (out.artifact(n) for n in ("firmware.fd", "vmlinuz", "initrd.img"))
        raw = out.artifact("cmdline.txt")
        cmdline = None if raw is None else decode_utf8(raw, "cmdline", str(out.path))
        rec = (out.measurements or {}).get("tdx")
        if rec is None:
            raise CCBuildError(f"{out.path}: measurements.json has no tdx record", "OUT",
                               "give a TDX build's OUT")
        params = TdxParams.from_record(rec.get("profile") or {})
    if args.profile:
        from builder.measure.tdx_profile import load_profile
        params = load_profile(args.profile)
    memory = memory_arg(args.memory)
    if memory is not None:
        params = replace(params, memory=memory)
    fw = read_input(args.firmware, "--firmware", "firmware") or fw
    k = read_input(getattr(args, "kernel", None), "--kernel", "kernel")
    kac = sha384_arg(args.kernel_authenticode, "--kernel-authenticode")
    if k is not None and kac is not None:
        raise CCBuildError("--kernel and --kernel-authenticode exclude each other")
    i = read_input(getattr(args, "initrd", None), "--initrd", "initrd")
    isha = sha384_arg(args.initrd_sha384, "--initrd-sha384")
    if i is not None and isha is not None:
        raise CCBuildError("--initrd and --initrd-sha384 exclude each other")
    if k is not None or kac is not None:
        kernel = k
    if i is not None or isha is not None:
        initrd = i
    append = text_arg(args.append, "--append")
    candidates = ()
    if cmdline is not None and append is not None and append != cmdline:
        candidates = (("--append", append),)
        append = cmdline
    elif append is None:
        append = cmdline
    return TdxInputs(firmware=fw, kernel=kernel, kernel_authenticode=kac, initrd=initrd,
                     initrd_sha384=isha, append=append, params=params,
                     cmdline_candidates=candidates)


def run(args) -> int:
    from builder.formats import ccel
    from builder.verify.explain_tdx import explain_tdx
    log, events, body = _evidence(args)
    inputs = _inputs(args)
    ex = explain_tdx(events, inputs,
                     quote_rtmrs=None if body is None else body.rtmrs,
                     quote_mrtd=None if body is None else body.mrtd,
                     log_rtmrs=ccel.replay(log) if body is not None else None)
    if args.json:
        json.dump(ex.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(ex.text())
    if ex.explained:
        return 0
    sys.stdout.flush()
    bad = [d for d in ex.divergences if not d.explained]
    print(f"ccbuild: error: {len(bad)} divergence(s) unexplained, first {bad[0].register} "
          f"{bad[0].cause}: {bad[0].detail[:160]}", file=sys.stderr)
    return EXIT_CHECK_FAILED
