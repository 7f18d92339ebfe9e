"""``qemu-snp.sh`` / ``qemu-tdx.sh``: the confidential QEMU command line of every measured
configuration, from the same data the measurements used, each with the values it yields
printed beside it.

The argument lists are built here (one list per configuration) and only rendered by the
template, so a test can parse them back and recompute the digest. Artifacts are referenced as
``"$ARTIFACTS"/<file>`` (default: the script's directory); no path of the build machine is
written. The command line is the exact measured string (cmdline.txt), quoted in place.

Every value is serialized for where it lands (builder.emit.templating): arguments are shell
words (``shlex.quote``), values inside a QEMU ``-object``/``-machine`` option have their commas
doubled (QEMU's own escape, so a value cannot add a property), and the titles, values and notes
in comments and in the listing are one line of printable text each. A value that cannot be
written (NUL, a lone surrogate) is a one-line error naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from builder import __version__
from builder.emit import BuildView
from builder.emit.templating import Encoded, check_unicode, render, sh_word
from builder.errors import CCBuildError

# C-bit position and physical address reduction of current EPYC parts (CPUID 0x8000001F); they
# are not measured, but QEMU wants them. Check yours with `cpuid -1 -l 0x8000001f`.
SNP_CBITPOS = 51
SNP_REDUCED_PHYS_BITS = 1


@dataclass(frozen=True)
class Artifact:
    """An argument that names a file in OUT (rendered as prefix"$ARTIFACTS"/name suffix)."""
    name: str
    prefix: str = ""
    suffix: str = ""


@dataclass(frozen=True)
class Launch:
    number: int
    title: str                      # one line: the parameters
    values: tuple[tuple[str, str], ...]   # (name, value) printed beside the command
    groups: tuple[tuple[str | Artifact, ...], ...]   # QEMU arguments: (option[, value]) each
    notes: tuple[str, ...] = ()
    script: str = "the QEMU script"       # the file it is written to (named in errors)

    @property
    def argv(self) -> list[str | Artifact]:
        return [a for g in self.groups for a in g]

    @property
    def lines(self) -> list[Encoded]:
        """One line of shell words per group (option and its value)."""
        return [Encoded(" ".join(shell_word(a, f"configuration {self.number} {g[0]} argument",
                                            self.script) for a in g))
                for g in self.groups]


_ARTIFACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def shell_word(a: str | Artifact, field: str = "QEMU argument", where: str | None = None) -> str:
    """One shell word; an Artifact becomes ``prefix"$ARTIFACTS"/name suffix`` (quoted parts)."""
    if isinstance(a, Artifact):
        if not _ARTIFACT_NAME.fullmatch(a.name):
            raise AssertionError(f"artifact name {a.name!r}")  # names are ccbuild's own
        return (sh_word(a.prefix, field, where) if a.prefix else "") + \
            f'"$ARTIFACTS"/{a.name}' + (sh_word(a.suffix, field, where) if a.suffix else "")
    return sh_word(a, field, where)


def qemu_opt(value: str, field: str, where: str | None = None) -> str:
    """A value inside a QEMU option string (``kind,key=value,...``): commas doubled, as QEMU's
    option parser reads them, so the value stays one property value."""
    return check_unicode(value, field, where).replace(",", ",,")


_CPU_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _cpu_model(name: str, where: str) -> str:
    """``-cpu`` takes ``model[,feature...]``: a model name only, nothing that adds features."""
    if not isinstance(name, str) or not _CPU_MODEL.fullmatch(name):
        raise CCBuildError(f"vcpu_type {name!r} is not a QEMU CPU model name", where,
                           "use a name such as EPYC-v4")
    return name


def _boot_files(view: BuildView) -> tuple[tuple[str | Artifact, ...], ...]:
    """Firmware, kernel, command line and the root: the initrd, or the verity rootfs image as a
    read-only virtio disk (its root hash is on the measured command line; no initrd, so the SNP
    hashes table holds the SHA-256 of an empty initrd)."""
    if view.rootfs is None:
        root = (("-initrd", Artifact("initrd.img")),)
    else:
        root = (("-drive", Artifact("rootfs.img", prefix="file=",
                                    suffix=",format=raw,if=none,id=rootfs,readonly=on")),
                ("-device", "virtio-blk-pci,drive=rootfs"))
    return (("-bios", Artifact("firmware.fd")), ("-kernel", Artifact("vmlinuz")), *root,
            ("-append", view.cmdline), ("-nographic",), ("-nodefaults",), ("-serial", "stdio"))


def snp_launches(view: BuildView) -> tuple[list[Launch], list[dict]]:
    """(QEMU launches, matrix entries that are not QEMU launches)."""
    m = view.measurements
    s = view.lr.recipe.launch.snp
    mem = view.lr.recipe.launch.memory_mib
    host_data = (m.get("initdata") or {}).get("snp_host_data_base64")
    out, other = [], []
    where = "qemu-snp.sh"
    for e in m["snp"]:
        if e["vmm"] != "qemu":
            other.append(e)
            continue
        obj = ["sev-snp-guest", "id=sev0", f"cbitpos={SNP_CBITPOS}",
               f"reduced-phys-bits={SNP_REDUCED_PHYS_BITS}", f"policy=0x{s.policy:x}",
               "kernel-hashes=on"]
        if "id_block" in e:
            obj += [f"id-block={qemu_opt(e['id_block'], 'id_block', where)}",
                    f"id-auth={qemu_opt(e['id_auth'], 'id_auth', where)}",
                    "author-key-enabled=on"]
        if host_data:
            obj.append(f"host-data={qemu_opt(host_data, 'initdata host-data', where)}")
        groups = (("-machine", "q35,confidential-guest-support=sev0,memory-backend=ram0"),
                  ("-object",
                   f"memory-backend-memfd,id=ram0,size={mem}M,share=true,prealloc=false"),
                  ("-object", ",".join(obj)),
                  ("-accel", "kvm"), ("-cpu", _cpu_model(e["vcpu_type"], where)), ("-smp", str(e["vcpus"])),
                  ("-m", f"{mem}M"), *_boot_files(view))
        values = [("launch_digest", e["launch_digest"])]
        if "id_block" in e:
            values += [("id_key_digest", m["snp_id"]["id_key_digest"]),
                       ("author_key_digest", m["snp_id"]["author_key_digest"])]
        if host_data:
            values.append(("host_data", m["initdata"]["snp_host_data"]))
        notes = ()
        if int(e["guest_features"], 16) != 0x1:
            notes = (f"guest features {e['guest_features']} (SEV_FEATURES) come from the host "
                     "KVM (e.g. DebugSwap), not from this command line",)
        out.append(Launch(len(out) + 1,
                          f"vcpus={e['vcpus']} vcpu_type={e['vcpu_type']} "
                          f"vcpu_sig={e['vcpu_sig']} vmm=qemu "
                          f"guest_features={e['guest_features']} policy=0x{s.policy:x}",
                          tuple(values), groups, notes, where))
    return out, other


def tdx_launches(view: BuildView) -> list[Launch]:
    from builder.recipe import expand_vcpus
    t = view.measurements["tdx"]
    mem = view.lr.recipe.launch.memory_mib
    init = view.measurements.get("initdata") or {}
    where = "qemu-tdx.sh"
    obj = ["tdx-guest", "id=tdx0"]
    if init.get("tdx_mrconfigid_base64"):
        obj.append(f"mrconfigid={qemu_opt(init['tdx_mrconfigid_base64'], 'initdata mrconfigid', where)}")
    def values_of(rec: dict) -> tuple:
        values = [("mrtd", rec["mrtd"])]
        for r in ("rtmr0", "rtmr1", "rtmr2", "rtmr3"):
            values.append((r, rec.get(r) or f"null ({t.get(r + '_reason', 'not computed')})"))
        if init:
            values.append(("mrconfigid", init["tdx_mrconfigid"]))
        return tuple(values)

    kata = view.measurements.get("kata")
    if kata:   # the launches the Kata runtime makes, one per pod size whose cmdline is cmdline.txt
        shapes = {(p["vcpus"], p["memory_mib"]): values_of(p) for p in kata["pods"]
                  if p["same_cmdline"]}
    else:
        shapes = {(n, mem): values_of(t) for n in expand_vcpus(view.lr.recipe.launch.vcpus)}
    out = []
    for (n, m), values in shapes.items():
        groups = (("-machine", "q35,kernel-irqchip=split,confidential-guest-support=tdx0"),
                  ("-object", ",".join(obj)),
                  ("-accel", "kvm"), ("-cpu", "host"), ("-smp", str(n)), ("-m", f"{m}M"),
                  *_boot_files(view))
        out.append(Launch(len(out) + 1, f"vcpus={n} memory={m}M", values, groups,
                          script=where))
    return out


def emit(view: BuildView, files: dict[str, bytes]) -> dict[str, bytes]:
    r = view.lr.recipe
    if r.platform not in ("snp", "tdx"):
        raise CCBuildError(f"unknown platform {r.platform!r}", "platform", "snp or tdx")
    script = f"qemu-{r.platform}.sh"
    if r.platform == "snp":
        launches, other = snp_launches(view)
    else:
        launches, other = tdx_launches(view), []
    profile = (view.measurements.get("tdx") or {}).get("profile", {}).get("name")
    text = render("qemu.sh.j2", script, script=script, platform=r.platform, name=view.lr.name,
                  version=__version__, recipe_sha256=_sha256(view.lr.text), launches=launches,
                  other=other, cmdline=view.cmdline, profile=_text_or_none(profile),
                  image_file=view.image_file)
    return {script: text.encode()}


def _text_or_none(v):
    """The profile name as the script has always shown it ("None" when there is none)."""
    return "None" if v is None else v


def _sha256(b: bytes) -> str:
    import hashlib
    return hashlib.sha256(b).hexdigest()
