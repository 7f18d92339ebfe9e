"""Why a TD's evidence does not match the expected values: classify every divergence by cause.

The log (CCEL) is replayed and checked against the quote; then each register's logged events are
aligned with the expected events the engine computes (builder.measure.tdx) and every difference
is given a cause, with the profile knob or recipe field that fixes it:

- firmware generation: the ReadyToBoot separator in RTMR0 (EDK2 before stable202411) or RTMR1
  (edk2 efaf8931bb); the fw_cfg "QEMU FW CFG" and SMBIOS (EV_EFI_HANDOFF_TABLES) RTMR0 events and
  the two boot options of EDK2 >= stable202505; each names the shipped profiles of that
  generation;
- TD HOB: the memory size that reproduces the logged digest (searched);
- ACPI blobs and fw_cfg items (named), Secure Boot variables, boot options;
- kernel Authenticode (and QEMU's setup-header patch), initrd digest;
- LoadOptions order (`` initrd=initrd`` before/after), the command line itself (candidates:
  ``--append`` when OUT gives the expected one, strings the log carries);
- MRTD page-add order (both orders tried).

Each cause is tested by recomputing with that one knob changed: a divergence is *explained* only
when the changed knob reproduces the logged digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from builder.formats import tcg
from builder.formats.tdvf import parse_tdvf_metadata
from builder.measure.tdx import (FW_CFG_EVENT_TAG, TdxParams, measure_tdx)
from builder.measure.tdx_events import (EventType, is_smbios_event, kernel_load_options,
                                        variable_boot_digest)
from builder.measure.tdx_hob import td_hob
from builder.measure.tdx_mrtd import PageAddOrder, mrtd
from builder.measure.tdx_profile import BOOT_OPTIONS

MiB, GiB = 1 << 20, 1 << 30
# The shipped profiles (recipes/profiles) of each firmware generation, by what the log shows (a
# test checks every name against its profile file).
BEFORE_202411 = ("qemu-8.2-ovmf-202402",)
FROM_202411_TO_202502 = ("qemu-9.2-ovmf-202505",)
FROM_202505 = ("qemu-10.1-ovmf-202508", "qemu-10.1-ovmf-202511", "qemu-9.2-ovmf-202505-fwcfg")
SHIPPED_SEPARATOR = {0: BEFORE_202411, 1: FROM_202411_TO_202502 + FROM_202505}
SHIPPED_FW_CFG = {(): BEFORE_202411 + FROM_202411_TO_202502, ("BootMenu", "bootorder"): FROM_202505}
SHIPPED_SMBIOS = {False: BEFORE_202411 + FROM_202411_TO_202502, True: FROM_202505}
# OVMF's boot options on a direct kernel boot, per generation: (what, BootOrder, Boot####, shipped)
BOOT_GENERATIONS = (
    ("EDK2 before edk2-stable202505: Boot0000 UiApp", (0,), ((0, "uiapp"),),
     BEFORE_202411 + FROM_202411_TO_202502),
    ("EDK2 >= edk2-stable202505: Boot0000 BootManagerMenuApp (edk2 9d9e3a2ba8), Boot0001 'EFI "
     "Firmware Setup' (d433b4c8e4)", (0, 1), ((0, "boot-manager-menu"), (1, "firmware-setup")),
     FROM_202505))


def _shipped(names: tuple[str, ...]) -> str:
    return ("shipped profile " if len(names) == 1 else "shipped profiles ") + ", ".join(names)


@dataclass
class TdxInputs:
    firmware: bytes | None
    kernel: bytes | None = None
    kernel_authenticode: bytes | None = None
    initrd: bytes | None = None
    initrd_sha384: bytes | None = None
    append: str | None = None                    # the expected command line
    params: TdxParams = field(default_factory=TdxParams)
    cmdline_candidates: tuple[tuple[str, str], ...] = ()   # (label, string) for the actual one


@dataclass
class Divergence:
    register: str
    cause: str
    detail: str
    fix: str | None
    explained: bool
    log_event: int | None = None

    def as_dict(self) -> dict:
        return {"register": self.register, "cause": self.cause, "detail": self.detail,
                "fix": self.fix, "explained": self.explained, "log_event": self.log_event}


@dataclass
class TdxExplanation:
    quote: dict | None
    divergences: list[Divergence]
    notes: list[str]
    params: TdxParams

    @property
    def explained(self) -> bool:
        return all(d.explained for d in self.divergences)

    def as_dict(self) -> dict:
        return {"quote": self.quote, "divergences": [d.as_dict() for d in self.divergences],
                "explained": self.explained, "notes": self.notes,
                "profile": self.params.to_record()}

    def text(self) -> str:
        lines = []
        if self.quote:
            lines.append("quote: " + ", ".join(f"{k} {v}" for k, v in self.quote.items()))
        if not self.divergences:
            lines.append("the log agrees with the expected events")
        for d in self.divergences:
            mark = "explained" if d.explained else "UNEXPLAINED"
            at = f" (log #{d.log_event})" if d.log_event else ""
            lines.append(f"{d.register} [{d.cause}, {mark}]{at}: {d.detail}")
            if d.fix:
                lines.append(f"    fix: {d.fix}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _reg(events: list[dict], i: int) -> list[dict]:
    return [e for e in events if e["register"] == f"rtmr{i}"]


def _is_fw_cfg(e: dict) -> bool:
    return e["event_type"] == "EV_PLATFORM_CONFIG_FLAGS" and \
        e.get("data", b"").startswith(FW_CFG_EVENT_TAG)


def _fw_cfg_name(e: dict) -> str:
    return e["data"][len(FW_CFG_EVENT_TAG):].split(b"\0", 1)[0].decode("ascii", "replace")


def _is_smbios(e: dict) -> bool:
    return e["event_type"] in ("EV_EFI_HANDOFF_TABLES", "EV_EFI_HANDOFF_TABLES2") and \
        is_smbios_event(EventType[e["event_type"]], e.get("data") or b"")


def _is_acpi(e: dict) -> bool:
    return e["event_type"] == "EV_PLATFORM_CONFIG_FLAGS" and \
        e.get("data", b"").startswith(b"ACPI DATA")


def _boot_generation(logged: list[str]):
    """The entry of BOOT_GENERATIONS whose BootOrder and Boot#### digests are ``logged``."""
    for what, order, options, shipped in BOOT_GENERATIONS:
        want = [variable_boot_digest(b"".join(n.to_bytes(2, "little") for n in order))]
        want += [variable_boot_digest(BOOT_OPTIONS[v]()) for _, v in options]
        if [d.hex() for d in want] == logged:
            return what, order, options, shipped
    return None


def memory_candidates(limit: int = 1 << 40):
    """Plausible guest RAM sizes, likeliest first: whole GiB, 256 MiB steps to 64 GiB, every MiB
    to 16 GiB (64 MiB .. ``limit``)."""
    seen = set()
    for step, top in ((GiB, limit), (256 * MiB, 64 * GiB), (MiB, 16 * GiB)):
        for m in range(max(step, 64 * MiB), min(top, limit) + 1, step):
            if m not in seen:
                seen.add(m)
                yield m


def infer_memory(fw: bytes, digest: bytes) -> int | None:
    """The first plausible memory size whose TD HOB hashes to ``digest`` (None: none does)."""
    meta = parse_tdvf_metadata(fw)
    for m in memory_candidates():
        if hashlib.sha384(td_hob(meta, m)).digest() == digest:
            return m
    return None


def _size(m: int) -> str:
    return f"{m >> 30}G" if m % GiB == 0 else f"{m >> 20}M"


def first_difference(a: str, b: str) -> int:
    ea, eb = a.encode(), b.encode()
    n = next((k for k in range(min(len(ea), len(eb))) if ea[k] != eb[k]), min(len(ea), len(eb)))
    return n


def _log_cmdlines(log: list[dict]) -> list[tuple[str, str]]:
    """Command lines the log itself carries (GRUB's kernel_cmdline events, a UTF-16 tag)."""
    out = []
    for e in log:
        d = e.get("data", b"")
        if d.startswith(b"kernel_cmdline: "):
            out.append((f"log #{e['number']} kernel_cmdline",
                        d[16:].rstrip(b"\0").decode("utf-8", "replace")))
    return out


def explain_tdx(log: list[dict], inputs: TdxInputs, quote_rtmrs=None, quote_mrtd=None,
                log_rtmrs=None) -> TdxExplanation:
    """``log``: the CCEL events (builder.verify.tdx.log_events shape, with data)."""
    params = inputs.params
    divs: list[Divergence] = []
    notes: list[str] = []
    quote = None
    if quote_rtmrs is not None and log_rtmrs is not None:
        quote = {}
        for i in range(4):
            same = quote_rtmrs[i] == log_rtmrs[i]
            quote[f"rtmr{i}"] = "log replays to the quote" if same else "log and quote disagree"
            if not same:
                divs.append(Divergence(f"rtmr{i}", "log-quote", "the event log does not replay "
                                       "to the quote's value: the log is not this TD's, or was "
                                       "altered", None, False))
    if quote_mrtd is not None and inputs.firmware is not None:
        meta = parse_tdvf_metadata(inputs.firmware)
        orders = {o: mrtd(inputs.firmware, meta, o) for o in PageAddOrder}
        if orders[params.page_add_order] != quote_mrtd:
            hit = [o for o, v in orders.items() if v == quote_mrtd]
            if hit:
                divs.append(Divergence("mrtd", "page-add-order", f"MRTD is the {hit[0].value} "
                                       f"page-add order's, not {params.page_add_order.value}",
                                       f"profile page_add_order: {hit[0].value} (measure tdx "
                                       f"--page-add-order {hit[0].value})", True))
                params = replace(params, page_add_order=hit[0])
            else:
                divs.append(Divergence("mrtd", "firmware", "MRTD matches neither page-add order: "
                                       "the TD booted a different firmware image", "use the "
                                       "firmware the host boots (recipe firmware)", False))

    have_kernel = inputs.kernel is not None or inputs.kernel_authenticode is not None

    def expected(p: TdxParams) -> list[dict]:
        if inputs.firmware is None:
            return []
        r = measure_tdx(inputs.firmware, inputs.kernel, inputs.initrd, inputs.append, p,
                        kernel_authenticode=inputs.kernel_authenticode,
                        initrd_sha384=inputs.initrd_sha384)
        return [e.to_json() for e in r.events]

    # --- firmware generation: separator placement, fw_cfg and SMBIOS events ---------------
    l0, l1, l2 = _reg(log, 0), _reg(log, 1), _reg(log, 2)
    seps0 = sum(e["event_type"] == "EV_SEPARATOR" for e in l0)
    seps1 = sum(e["event_type"] == "EV_SEPARATOR" for e in l1)
    logged_sep = 0 if (seps0 >= 2 and seps1 == 0) else 1 if seps1 >= 1 else None
    if logged_sep is not None and logged_sep != params.ready_to_boot_separator:
        gen = ("EDK2 before edk2-stable202411" if logged_sep == 0
               else "EDK2 edk2-stable202411 or later (efaf8931bb)")
        divs.append(Divergence(f"rtmr{logged_sep}", "firmware-generation",
                               f"the ReadyToBoot separator is in RTMR{logged_sep} ({seps0} "
                               f"separator(s) in RTMR0, {seps1} in RTMR1): {gen}",
                               f"profile ready_to_boot_separator: rtmr{logged_sep} "
                               f"({_shipped(SHIPPED_SEPARATOR[logged_sep])})", True))
        params = replace(params, ready_to_boot_separator=logged_sep)
    logged_cfg = tuple(_fw_cfg_name(e) for e in l0 if _is_fw_cfg(e))
    cfg_digests = tuple(bytes.fromhex(e["digest"]) for e in l0 if _is_fw_cfg(e))
    if logged_cfg != params.fw_cfg_items:
        shipped = SHIPPED_FW_CFG.get(logged_cfg)
        divs.append(Divergence("rtmr0", "firmware-generation",
                               f"the log measures fw_cfg items {list(logged_cfg)}, expected "
                               f"{list(params.fw_cfg_items)} (EDK2 >= stable202505 measures "
                               "the items QEMU provides, edk2 2eac71a1ee)",
                               f"profile fw_cfg_items: {list(logged_cfg)} ("
                               + (_shipped(shipped) if shipped else "no shipped profile lists "
                                  "these items; start from " + ", ".join(FROM_202505)
                                  + " and give fw_cfg_files") + ")", True))
        params = replace(params, fw_cfg_items=logged_cfg, fw_cfg_digests=cfg_digests)
    else:   # the items' data is QEMU's: where the profile gives none, the log's is taken
        known = params.fw_cfg_digests + (None,) * (len(logged_cfg) - len(params.fw_cfg_digests))
        for name, want, got, e in zip(logged_cfg, known, cfg_digests,
                                      [e for e in l0 if _is_fw_cfg(e)]):
            if want is None:
                notes.append(f"fw_cfg {name}: logged {got.hex()[:16]}..., not computed (QEMU "
                             "data: the profile gives no fw_cfg_files entry)")
            elif want != got:
                divs.append(Divergence("rtmr0", "fw-cfg", f"QEMU's fw_cfg item {name} differs "
                                       "(another QEMU command line: -boot, devices with a "
                                       "bootindex, ...)", f"profile fw_cfg_files: {name}: the "
                                       "item's bytes from the host's QEMU", True, e["number"]))
        params = replace(params, fw_cfg_digests=cfg_digests)
    logged_smbios = [e for e in l0 if _is_smbios(e)]
    if bool(logged_smbios) != params.smbios_measured:
        flag = bool(logged_smbios)
        divs.append(Divergence("rtmr0", "firmware-generation",
                               ("the log measures the SMBIOS tables" if flag else
                                "the log has no SMBIOS event") + " (EV_EFI_HANDOFF_TABLES of "
                               "SmbiosMeasurementDxe: EDK2 >= stable202505, edk2 cd76265f1a)",
                               f"profile smbios_measured: {str(flag).lower()} "
                               f"({_shipped(SHIPPED_SMBIOS[flag])})", True,
                               logged_smbios[0]["number"] if flag else None))
        params = replace(params, smbios_measured=flag)
    if logged_smbios:   # its content is the VMM's: taken from the log, not a divergence
        params = replace(params, smbios_digest=bytes.fromhex(logged_smbios[0]["digest"]))
        notes.append(f"SMBIOS tables: logged {logged_smbios[0]['digest'][:16]}..., taken from "
                     "the log (QEMU data; profile smbios_digest)")

    # --- RTMR0 ---------------------------------------------------------------------------
    exp = expected(params)
    e0 = _reg(exp, 0)
    if inputs.firmware is not None and l0:
        # TD HOB
        lh, eh = l0[0], e0[0]
        if lh["event_type"] == "EV_EFI_HANDOFF_TABLES2" and lh["digest"] != eh["digest"]:
            m = infer_memory(inputs.firmware, bytes.fromhex(lh["digest"]))
            if m is not None:
                divs.append(Divergence("rtmr0", "td-hob", f"the TD HOB is that of {_size(m)} "
                                       f"({m} bytes) of guest RAM, expected "
                                       f"{_size(params.memory)}",
                                       f"memory: {_size(m)} (recipe launch.memory_mib, profile "
                                       f"memory or --memory {_size(m)})", True, lh["number"]))
                params = replace(params, memory=m)
            else:
                divs.append(Divergence("rtmr0", "td-hob", "no memory size from 64 MiB to 1 TiB "
                                       "reproduces the logged TD HOB: the firmware's TD_HOB/"
                                       "TEMP_MEM layout differs from the given firmware's, or "
                                       "the VMM builds another HOB list", "use the firmware the "
                                       "host boots", False, lh["number"]))
        # CFV
        lc = next((e for e in l0 if e["event_type"] == "EV_EFI_PLATFORM_FIRMWARE_BLOB2"), None)
        ec = next((e for e in e0 if e["description"] == "CFV"), None)
        if lc and ec and ec["digest"] is not None and lc["digest"] != ec["digest"]:
            divs.append(Divergence("rtmr0", "firmware", "the CFV (variable store) differs: a "
                                   "different firmware build", "use the firmware the host boots "
                                   "(recipe firmware)", False, lc["number"]))
        # Secure Boot variables
        lv = [e for e in l0 if e["event_type"] == "EV_EFI_VARIABLE_DRIVER_CONFIG"]
        ev = [e for e in e0 if e["event_type"] == "EV_EFI_VARIABLE_DRIVER_CONFIG"]
        if [e["digest"] for e in lv] != [e["digest"] for e in ev]:
            alt = _reg(expected(replace(params, secure_boot_feature=not
                                        params.secure_boot_feature)), 0)
            av = [e["digest"] for e in alt if e["event_type"] == "EV_EFI_VARIABLE_DRIVER_CONFIG"]
            if av == [e["digest"] for e in lv]:
                flag = str(not params.secure_boot_feature).lower()
                divs.append(Divergence("rtmr0", "secure-boot", "the Secure Boot variables are "
                                       "those of a firmware built " + ("with" if flag == "true"
                                                                       else "without") +
                                       " SECURE_BOOT_ENABLE", f"profile secure_boot_feature: "
                                       f"{flag}", True, lv[0]["number"] if lv else None))
                params = replace(params, secure_boot_feature=not params.secure_boot_feature)
            else:
                bad = next((a for a, b in zip(lv, ev) if a["digest"] != b["digest"]),
                           lv[0] if lv else None)
                divs.append(Divergence("rtmr0", "secure-boot", "Secure Boot variable "
                                       f"{bad['description'] if bad else '?'!s} differs: the "
                                       "firmware's enrolled keys differ", "use the firmware the "
                                       "host boots", False, bad["number"] if bad else None))
        # ACPI blobs
        la = [e for e in l0 if _is_acpi(e)]
        ea = [e for e in e0 if e["description"].startswith("ACPI DATA")]
        for a, b in zip(la, ea):
            name = b["description"][len("ACPI DATA ("):-1]
            if b["digest"] is None:
                notes.append(f"{name}: logged {a['digest'][:16]}..., not computed ({b['reason']})")
            elif a["digest"] != b["digest"]:
                divs.append(Divergence("rtmr0", "acpi", f"QEMU's {name} blob differs (another "
                                       "QEMU version, machine or command line)",
                                       f"profile acpi_blobs: dump {name} from the host's QEMU",
                                       True, a["number"]))
        # boot variables
        lb = [e for e in l0 if e["event_type"] == "EV_EFI_VARIABLE_BOOT"]
        eb = [e for e in e0 if e["event_type"] == "EV_EFI_VARIABLE_BOOT"]
        if [e["digest"] for e in lb] != [e["digest"] for e in eb]:
            gen = _boot_generation([e["digest"] for e in lb])
            if gen is not None:
                what, order, options, shipped = gen
                named = ", ".join(f"Boot{n:04X}: {v}" for n, v in options)
                divs.append(Divergence("rtmr0", "boot-options", f"the boot variables are those "
                                       f"of {what}", f"profile boot_order: {list(order)}, "
                                       f"boot_options {named} ({_shipped(shipped)})", True,
                                       lb[0]["number"]))
                params = replace(params, boot_order=order, boot_options=tuple(
                    (n, BOOT_OPTIONS[v]()) for n, v in options))
            else:
                order = None
                if lb and lb[0].get("data"):
                    raw = tcg.parse_uefi_variable_data(lb[0]["data"], exact=False)[2]
                    order = [int.from_bytes(raw[k:k + 2], "little")
                             for k in range(0, len(raw), 2)]
                divs.append(Divergence("rtmr0", "boot-options", f"the boot variables differ "
                                       f"(logged BootOrder {order})", f"profile boot_order: "
                                       f"{order} and boot_options (hex of each logged "
                                       "Boot####)", True, lb[0]["number"] if lb else None))
    elif inputs.firmware is None:
        notes.append("no firmware given: RTMR0 and MRTD are not compared")

    # --- RTMR1 ---------------------------------------------------------------------------
    apps = [e for e in l1 if e["event_type"] == "EV_EFI_BOOT_SERVICES_APPLICATION"]
    indirect = [e for e in l1 if e["event_type"] == "EV_EFI_GPT_EVENT"] or len(apps) > 1
    if indirect:
        divs.append(Divergence("rtmr1", "boot-path", f"the TD booted from disk ({len(apps)} EFI "
                               "applications, e.g. shim/GRUB, and a GPT event): not a direct "
                               "kernel boot", "ccbuild models direct kernel boot (QEMU -kernel); "
                               "RTMR1/RTMR2 of this boot path are not predicted", True,
                               apps[0]["number"] if apps else None))
    elif have_kernel and apps:
        e1 = _reg(exp, 1)
        ek = e1[0]
        if apps[0]["digest"] != ek["digest"]:
            alt = None
            if inputs.kernel is not None:
                p2 = replace(params, qemu_setup_header_patch=not params.qemu_setup_header_patch)
                alt = _reg(expected(p2), 1)[0]["digest"]
            if alt == apps[0]["digest"]:
                flag = str(not params.qemu_setup_header_patch).lower()
                divs.append(Divergence("rtmr1", "kernel", "the kernel was measured "
                                       + ("with" if flag == "true" else "without") +
                                       " QEMU's setup-header patch (QEMU <= 9.2 patches it)",
                                       f"profile qemu_setup_header_patch: {flag}", True,
                                       apps[0]["number"]))
                params = replace(params, qemu_setup_header_patch=not
                                 params.qemu_setup_header_patch)
            else:
                divs.append(Divergence("rtmr1", "kernel", "the kernel's Authenticode SHA-384 "
                                       f"differs: logged {apps[0]['digest'][:16]}..., expected "
                                       f"{ek['digest'][:16]}...", "recipe kernel (or "
                                       f"--kernel-authenticode {apps[0]['digest']})", False,
                                       apps[0]["number"]))
    elif not have_kernel:
        notes.append("no kernel given: the kernel's Authenticode digest is not compared")

    # --- RTMR2: LoadOptions and initrd -----------------------------------------------------
    tags = [e for e in l2 if e["event_type"] == "EV_EVENT_TAG"]
    has_initrd = inputs.initrd is not None or inputs.initrd_sha384 is not None
    if not indirect and tags and inputs.append is not None:
        logged = tags[0]["digest"]
        want = hashlib.sha384(kernel_load_options(inputs.append, has_initrd,
                                                  params.load_options_initrd_first)).hexdigest()
        if logged != want:
            explained = False
            flip = hashlib.sha384(kernel_load_options(
                inputs.append, has_initrd, not params.load_options_initrd_first)).hexdigest()
            if flip == logged:
                first = not params.load_options_initrd_first
                divs.append(Divergence("rtmr2", "load-options-order", "' initrd=initrd' is "
                                       + ("before" if first else "after") + " the command line "
                                       "(EDK2 " + (">= stable202508" if first else
                                                   "<= stable202505") + ")",
                                       f"profile load_options_initrd_first: "
                                       f"{str(first).lower()}", True, tags[0]["number"]))
                explained = True
            else:
                cands = list(inputs.cmdline_candidates) + _log_cmdlines(log)
                for label, s in cands:
                    for first in (params.load_options_initrd_first,
                                  not params.load_options_initrd_first):
                        for ini in (has_initrd, not has_initrd):
                            d = hashlib.sha384(kernel_load_options(s, ini, first)).hexdigest()
                            if d == logged and not explained:
                                k = first_difference(inputs.append, s)
                                divs.append(Divergence(
                                    "rtmr2", "cmdline", f"the command line differs from byte "
                                    f"{k}: expected {inputs.append!r}, the TD measured {s!r} "
                                    f"({label})", "recipe cmdline (cmdline.template) / QEMU "
                                    "-append", True, tags[0]["number"]))
                                explained = True
            if not explained:
                divs.append(Divergence("rtmr2", "cmdline", "LoadOptions digest matches neither "
                                       f"order of {inputs.append!r} nor any candidate command "
                                       "line (give the TD's /proc/cmdline with --append and "
                                       "OUT)", "recipe cmdline / QEMU -append", False,
                                       tags[0]["number"]))
        if len(tags) > 1 and (inputs.initrd is not None or inputs.initrd_sha384 is not None):
            want_i = (inputs.initrd_sha384 or hashlib.sha384(inputs.initrd).digest()).hex()
            if tags[1]["digest"] != want_i:
                divs.append(Divergence("rtmr2", "initrd", f"the initrd differs: logged SHA-384 "
                                       f"{tags[1]['digest']}", "recipe initrd (or "
                                       f"--initrd-sha384 {tags[1]['digest']})", False,
                                       tags[1]["number"]))
    elif inputs.append is None and not indirect:
        notes.append("no command line given: LoadOptions are not compared")

    # --- what remains: recompute with every fix and compare register by register ----------
    if inputs.firmware is not None and have_kernel and not indirect:
        final = expected(params)
        explained_regs = {d.register for d in divs}
        for i in range(3):
            le = _reg(log, i)
            fe = _reg(final, i)
            if any(e["digest"] is None for e in fe) or f"rtmr{i}" in explained_regs:
                continue
            if [e["digest"] for e in le] != [e["digest"] for e in fe]:
                k = next((k for k in range(max(len(le), len(fe)))
                          if k >= len(le) or k >= len(fe) or le[k]["digest"] != fe[k]["digest"]))
                what = (fe[k]["description"] if k < len(fe) else le[k]["description"])
                divs.append(Divergence(f"rtmr{i}", "other", f"event {k + 1} ({what!r}) differs "
                                       "for no modelled cause", None, False,
                                       le[k]["number"] if k < len(le) else None))
    return TdxExplanation(quote, divs, notes, params)
