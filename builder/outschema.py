"""The schema of OUT's two documents, manifest.json and measurements.json, and their one loader.

An auditor runs ``ccbuild verify`` (and ``ccbuild boot``) on directories others wrote, so both
documents are hostile input: each is read as a regular file under its cap (builder.inputs),
parsed as strict JSON (UTF-8, no duplicate keys, no NaN/Infinity, integers of at most
:data:`MAX_INT_DIGITS` digits, nesting bounded) and checked against the dataclasses below with
the recipe schema machinery (builder.schema) before any code looks into them. A mistake is one
:class:`~builder.schema.SchemaError` naming the file and the path
(``manifest.json: outputs[2].sha256: 'x' is malformed (expected [0-9a-f]{64})``).

:func:`reference` renders the generated reference of both documents (docs/out-schema.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from builder.errors import CCBuildError
from builder.inputs import decode_utf8, read_regular
from builder.schema import (
    HEX64,
    HEX96,
    Ctx,
    SchemaError,
    build,
    doc,
    render_reference,
    short,
)

MAX_INT_DIGITS = 40               # no number in either document comes near 10**40
MAX_ENTRIES = 100_000             # SNP matrix entries, TDX events, inputs, outputs
HEXBYTES = r"(?:[0-9a-f]{2})*"
HEXINT = r"0x[0-9a-f]{1,16}"
B64 = r"[A-Za-z0-9+/]*={0,2}"
# An OUT file name: one path component, no hidden files, no separators.
FILE_NAME = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}"


# --- manifest.json ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Tool:
    name: str = doc("the tool that wrote OUT", max_length=64)
    version: str = doc("its version", max_length=64)


@dataclass(frozen=True)
class RecipeRef:
    name: str = doc("the recipe's name (OUT's default directory name)", max_length=255)
    platform: Literal["snp", "tdx"] = doc("the TEE the guest is built for")
    sha256: str = doc("SHA-256 of the recipe file's bytes", pattern=HEX64)
    digest: str = doc("digest of the recipe's canonical form (after overrides)", pattern=HEX64)


@dataclass(frozen=True)
class InputRecord:
    role: str = doc("what the input is for (firmware, kernel, agent, ...)", max_length=64)
    kind: str = doc("debian | path | url | build | debian-source | ...", max_length=64)
    name: str = doc("package, file, URL or build name", max_length=4096)
    version: str = doc("Debian version, build version, or empty", max_length=255)
    sha256: str = doc("SHA-256 of the pinned object", pattern=HEX64)
    file_sha256: str | None = doc("SHA-256 of the file used when it differs from the pinned "
                                  "object (a .deb member)", default=None, pattern=HEX64)
    toolchain: str | None = doc("the tools of a build input", default=None, max_length=4096)
    config_sha256: str | None = doc("SHA-256 of a built kernel's .config", default=None,
                                    pattern=HEX64)


@dataclass(frozen=True)
class OutputRecord:
    path: str = doc("file name inside OUT (one component)", pattern=FILE_NAME)
    sha256: str = doc("SHA-256 of the file", pattern=HEX64)
    size: int = doc("size in bytes", minimum=0, maximum=1 << 44)


@dataclass(frozen=True)
class Chain:
    firmware: str | None = doc("SHA-256 of the firmware", default=None, pattern=HEX64)
    kernel: str | None = doc("SHA-256 of the kernel", default=None, pattern=HEX64)
    initrd: str | None = doc("SHA-256 of the initrd", default=None, pattern=HEX64)
    rootfs: str | None = doc("SHA-256 of the verity rootfs image", default=None, pattern=HEX64)
    verity_root_hash: str | None = doc("dm-verity root hash on the command line", default=None,
                                       pattern=r"[0-9a-f]{64,128}")
    cmdline: str | None = doc("SHA-256 of the command line", default=None, pattern=HEX64)
    agent: str | None = doc("SHA-256 of the agent binary", default=None, pattern=HEX64)


@dataclass(frozen=True)
class Boot:
    readiness: str | None = doc("regular expression the agent prints when ready", default=None,
                                max_length=4096)
    memory_mib: int | None = doc("guest memory", default=None, minimum=64, maximum=1 << 22)


@dataclass(frozen=True)
class Manifest:
    schema: Literal["ccbuild-manifest/1"] = doc("document version")
    tool: Tool = doc("the writer")
    recipe: RecipeRef = doc("the recipe built")
    source_date_epoch: int = doc("timestamp of every file in the artifacts", minimum=0,
                                 maximum=(1 << 32) - 1)
    build_key: str = doc("cache key of the build (recipe digest, inputs, tool version)",
                         pattern=HEX64)
    inputs: tuple[InputRecord, ...] = doc("every resolved input")
    outputs: tuple[OutputRecord, ...] = doc("every file of OUT except manifest.json, "
                                            "SHA256SUMS and manifest.json.sig")
    chain: Chain = doc("digests of what the guest runs, firmware to agent")
    boot: Boot = doc("what `ccbuild boot` needs")

    def validate(self, ctx: Ctx, where: str) -> None:
        for name in ("inputs", "outputs"):
            if len(getattr(self, name)) > MAX_ENTRIES:
                ctx.fail(name, f"more than {MAX_ENTRIES} entries")
        seen: set[str] = set()
        for i, o in enumerate(self.outputs):
            if o.path in seen:
                ctx.fail(f"outputs[{i}].path", f"{short(o.path)} is listed twice")
            if o.path in ("manifest.json", "SHA256SUMS", "manifest.json.sig"):
                ctx.fail(f"outputs[{i}].path", f"{o.path} cannot be an output of itself")
            seen.add(o.path)

    def output(self, name: str) -> OutputRecord | None:
        return next((o for o in self.outputs if o.path == name), None)


# --- measurements.json ------------------------------------------------------------------------

@dataclass(frozen=True)
class SnpEntry:
    vcpus: int = doc("vCPU count", minimum=1, maximum=512)
    vcpu_type: str = doc("QEMU CPU model name", max_length=64)
    vcpu_sig: str = doc("CPUID Fn0000_0001_EAX of the model", pattern=r"0x[0-9a-f]{1,8}")
    vmm: Literal["qemu", "ec2", "gce"] = doc("the VMM type (VMSA differences)")
    guest_features: str = doc("SEV_FEATURES of the VMSAs", pattern=HEXINT)
    launch_digest: str = doc("the SNP MEASUREMENT", pattern=HEX96)
    id_block: str | None = doc("signed ID block (base64), with an ID key", default=None,
                               pattern=B64, max_length=4096)
    id_auth: str | None = doc("ID authentication information (base64)", default=None,
                              pattern=B64, max_length=16384)


@dataclass(frozen=True)
class SnpId:
    id_key_digest: str = doc("SHA-384 of the ID public key structure", pattern=HEX96)
    author_key_digest: str | None = doc("SHA-384 of the author public key structure",
                                        default=None, pattern=HEX96)
    policy: str | None = doc("the guest policy the ID block carries", default=None,
                             pattern=HEXINT)
    family_id: str | None = doc("16 bytes, hex", default=None, pattern=r"[0-9a-fA-F]{32}")
    image_id: str | None = doc("16 bytes, hex", default=None, pattern=r"[0-9a-fA-F]{32}")
    guest_svn: int | None = doc("guest SVN", default=None, minimum=0, maximum=(1 << 32) - 1)


@dataclass(frozen=True)
class InitdataRecord:
    algorithm: str | None = doc("digest algorithm", default=None, max_length=32)
    version: str | None = doc("initdata version", default=None, max_length=32)
    file_sha256: str | None = doc("SHA-256 of the initdata file", default=None, pattern=HEX64)
    digest: str | None = doc("initdata digest", default=None, pattern=r"[0-9a-f]{64,128}")
    data_keys: tuple[str, ...] | None = doc("the keys of its data table", default=None)
    snp_host_data: str | None = doc("SNP HOST_DATA (32 bytes)", default=None, pattern=HEX64)
    snp_host_data_base64: str | None = doc("the same, base64", default=None, pattern=B64,
                                           max_length=64)
    host_data: str | None = doc("SNP HOST_DATA (older name)", default=None, pattern=HEX64)
    tdx_mrconfigid: str | None = doc("TDX MRCONFIGID (48 bytes)", default=None, pattern=HEX96)
    tdx_mrconfigid_base64: str | None = doc("the same, base64", default=None, pattern=B64,
                                            max_length=96)


@dataclass(frozen=True)
class TdxEvent:
    register: Literal["rtmr0", "rtmr1", "rtmr2", "rtmr3"] = doc("the register it extends")
    event_type: str = doc("TCG event type name", pattern=r"[A-Za-z0-9_]{1,64}")
    description: str = doc("what it measures", max_length=4096)
    digest: str | None = doc("SHA-384 digest extended; null when it hashes VMM data not given",
                             pattern=HEX96)
    reason: str | None = doc("why the digest is null", default=None, max_length=4096)


@dataclass(frozen=True)
class MrtdSection:
    type: str = doc("TDVF section type", max_length=64)
    gpa: str = doc("guest physical address", pattern=HEXINT)
    pages: int = doc("pages", minimum=0, maximum=1 << 40)
    page_add: int = doc("pages added", minimum=0, maximum=1 << 40)
    mr_extend: int = doc("pages extended into MRTD", minimum=0, maximum=1 << 40)


@dataclass(frozen=True)
class TdxProfileRecord:
    name: str | None = doc("the VMM profile", default=None, max_length=255)
    page_add_order: Literal["interleaved", "two-pass"] | None = doc("TDH.MEM.PAGE.ADD order",
                                                                    default=None)
    memory: int | None = doc("guest memory in bytes", default=None, minimum=1 << 20,
                             maximum=1 << 42)
    qemu_setup_header_patch: bool | None = doc("QEMU patches the setup header", default=None)
    acpi_data_size: int | None = doc("ACPI data size", default=None, minimum=0,
                                     maximum=(1 << 32) - 1)
    load_options_initrd_first: bool | None = doc("load options order", default=None)
    secure_boot_feature: bool | None = doc("Secure Boot variables measured", default=None)
    acpi_blobs: bool | None = doc("the profile supplies the ACPI blobs", default=None)
    boot_order: tuple[int, ...] | None = doc("BootOrder", default=None)
    boot_options: dict[str, str] | None = doc("Boot#### variables (hex)", default=None)
    ready_to_boot_separator: Literal["rtmr0", "rtmr1"] | None = doc(
        "where the ReadyToBoot separator is measured", default=None)
    fw_cfg_items: tuple[str, ...] | None = doc("fw_cfg items measured into RTMR0", default=None)
    smbios_measured: bool | None = doc("SMBIOS tables measured into RTMR0", default=None)

    def validate(self, ctx: Ctx, where: str) -> None:
        for i, n in enumerate(self.fw_cfg_items or ()):
            if not re.fullmatch(r"[\x21-\x7e]{1,55}", n):
                ctx.fail(f"{where}.fw_cfg_items[{i}]", f"{short(n)} is not a fw_cfg name")
        for i, n in enumerate(self.boot_order or ()):
            if not 0 <= n <= 0xFFFF:
                ctx.fail(f"{where}.boot_order[{i}]", f"{short(n)} is out of range 0..65535")
        for k, v in (self.boot_options or {}).items():
            if not re.fullmatch(r"Boot[0-9A-F]{4}", k):
                ctx.fail(f"{where}.boot_options", f"{short(k)} is not Boot#### (hex)")
            if not re.fullmatch(HEXBYTES, v) or len(v) > 65536:
                ctx.fail(f"{where}.boot_options.{k}", "is not hex bytes")


@dataclass(frozen=True)
class TdxRecord:
    mrtd: str = doc("MRTD", pattern=HEX96)
    rtmr0: str | None = doc("RTMR0, null when not predicted", pattern=HEX96)
    rtmr1: str | None = doc("RTMR1", pattern=HEX96)
    rtmr2: str | None = doc("RTMR2", pattern=HEX96)
    rtmr3: str | None = doc("RTMR3", pattern=HEX96)
    rtmr0_reason: str | None = doc("why RTMR0 is not predicted", default=None, max_length=4096)
    rtmr1_reason: str | None = doc("why RTMR1 is not predicted", default=None, max_length=4096)
    rtmr2_reason: str | None = doc("why RTMR2 is not predicted", default=None, max_length=4096)
    rtmr3_reason: str | None = doc("why RTMR3 is not predicted", default=None, max_length=4096)
    profile: TdxProfileRecord | None = doc("the knobs the values depend on", default=None)
    events: tuple[TdxEvent, ...] = doc("the expected event log", default=())
    mrtd_sections: tuple[MrtdSection, ...] | None = doc("MRTD page operations per section",
                                                        default=None)

    def validate(self, ctx: Ctx, where: str) -> None:
        if len(self.events) > MAX_ENTRIES:
            ctx.fail(f"{where}.events", f"more than {MAX_ENTRIES} events")


@dataclass(frozen=True)
class KataPodRecord:
    pod_cpus: int = doc("the pod's CPU limit (launch.kata.pod_cpus)", minimum=0, maximum=512)
    vcpus: int = doc("vCPUs the runtime starts QEMU with", minimum=1, maximum=512)
    smp: str = doc("QEMU -smp", max_length=256)
    cpu: str = doc("QEMU -cpu", max_length=4096)
    memory_mib: int = doc("QEMU -m, MiB", minimum=1, maximum=1 << 32)
    cmdline: str = doc("the measured kernel command line of this launch", max_length=4096)
    cmdline_sha256: str = doc("SHA-256 of that command line (UTF-8)", pattern=HEX64)
    same_cmdline: bool = doc("the command line is cmdline.txt (Kata 3.31.0 adds nr_cpus=, so "
                             "another pod size may have its own)")
    launch_digests: dict[str, str] | None = doc("SNP: guest features (hex) -> launch digest",
                                                default=None)
    mrtd: str | None = doc("TDX MRTD", default=None, pattern=HEX96)
    rtmr0: str | None = doc("TDX RTMR0 (null when not predicted)", default=None, pattern=HEX96)
    rtmr1: str | None = doc("TDX RTMR1", default=None, pattern=HEX96)
    rtmr2: str | None = doc("TDX RTMR2", default=None, pattern=HEX96)
    rtmr3: str | None = doc("TDX RTMR3", default=None, pattern=HEX96)

    def validate(self, ctx: Ctx, where: str) -> None:
        for k, v in (self.launch_digests or {}).items():
            if not re.fullmatch(HEXINT, k) or not re.fullmatch(HEX96, v):
                ctx.fail(f"{where}.launch_digests", f"{short(k)}: not a guest features value "
                         "and a launch digest")


@dataclass(frozen=True)
class KataRecord:
    version: str = doc("the Kata release modelled", pattern=r"\d{1,3}\.\d{1,3}\.\d{1,3}")
    commit: str = doc("its commit", pattern=r"[0-9a-f]{40}")
    runtime: Literal["go"] = doc("the runtime flavour")
    configuration: str = doc("the Kata configuration the recipe names", max_length=4096)
    mode: Literal["image", "initrd"] = doc("how the guest boots")
    kernel_verity_params: str | None = doc("the image's kernel_verity_params", default=None,
                                           max_length=1024)
    pods: tuple[KataPodRecord, ...] = doc("pod CPU limit -> vCPUs -> launch digest / registers",
                                          default=())

    def validate(self, ctx: Ctx, where: str) -> None:
        if len(self.pods) > MAX_ENTRIES:
            ctx.fail(f"{where}.pods", f"more than {MAX_ENTRIES} entries")


@dataclass(frozen=True)
class Measurements:
    snp: tuple[SnpEntry, ...] | None = doc("SNP launch digests, one per launch configuration",
                                           default=None)
    snp_id: SnpId | None = doc("the ID block's keys and policy", default=None)
    tdx: TdxRecord | None = doc("TDX registers and expected event log", default=None)
    initdata: InitdataRecord | None = doc("the initdata document's digest and TEE value",
                                          default=None)
    kata: KataRecord | None = doc("launch.kata: what the Kata runtime launches per pod CPU limit",
                                  default=None)

    def validate(self, ctx: Ctx, where: str) -> None:
        if self.snp is not None and len(self.snp) > MAX_ENTRIES:
            ctx.fail("snp", f"more than {MAX_ENTRIES} entries")


# --- strict JSON --------------------------------------------------------------------------------

def _no_duplicates(where: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise CCBuildError(f"duplicate key {short(k)} in a JSON object", where)
            out[k] = v
        return out
    return hook


def _constant(where: str):
    def refuse(name: str):
        raise CCBuildError(f"{name} is not a JSON number", where)
    return refuse


def _int(where: str):
    def parse(text: str) -> int:
        if len(text.lstrip("-")) > MAX_INT_DIGITS:
            raise CCBuildError(f"an integer of {len(text.lstrip('-'))} digits (at most "
                               f"{MAX_INT_DIGITS})", where)
        return int(text)
    return parse


def parse_json(data: bytes, where: str, kind: str = "JSON document") -> Any:
    """Strict JSON from hostile bytes; every failure is one :class:`CCBuildError`."""
    text = decode_utf8(data, kind, where)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(where),
                          parse_constant=_constant(where), parse_int=_int(where))
    except json.JSONDecodeError as e:
        raise CCBuildError(f"{kind} is not valid JSON ({e.msg} at line {e.lineno} column "
                           f"{e.colno})", where) from None
    except RecursionError:
        raise CCBuildError(f"{kind} is nested too deeply", where) from None
    except MemoryError:
        raise CCBuildError(f"{kind} is too large to parse", where) from None
    except ValueError as e:            # e.g. float overflow in the C scanner
        raise CCBuildError(f"{kind} is not valid JSON ({str(e)[:80]})", where) from None


def load_document(path: Path, cls, kind: str, where: str | None = None):
    """``cls`` from the JSON file ``path`` (regular, capped per ``kind``), schema-checked."""
    shown = where or path.name
    raw = parse_json(read_regular(path, kind, shown), shown, path.name)
    try:
        return build(Ctx(shown, error=SchemaError), cls, raw)
    except SchemaError as e:
        raise CCBuildError(e.what, e.where, e.hint) from None
    except RecursionError:
        raise CCBuildError(f"{path.name} is nested too deeply", shown) from None


def load_manifest(path: Path, where: str | None = None) -> Manifest:
    return load_document(path, Manifest, "manifest", where)


def load_measurements(path: Path, where: str | None = None) -> Measurements:
    return load_document(path, Measurements, "measurements", where)


def reference() -> str:
    """The generated reference of OUT's documents (``python -m builder.outschema > docs/out-schema.md``)."""
    intro = [("Generated from `builder/outschema.py`. `ccbuild verify` and `ccbuild boot` "
              "refuse a document that does not follow it (strict JSON: UTF-8, no duplicate keys, "
              f"no NaN/Infinity, integers of at most {MAX_INT_DIGITS} digits).")]
    return (render_reference(Manifest, "OUT/manifest.json", intro) + "\n"
            + render_reference(Measurements, "OUT/measurements.json", []))


if __name__ == "__main__":
    import sys
    sys.stdout.write(reference())
