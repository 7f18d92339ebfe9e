"""``kata-configuration-qemu-snp.toml`` / ``-tdx.toml``: the fragment of Kata's
configuration.toml ([hypervisor.qemu]) that launches the built guest as it was measured.

``kernel_params`` holds only the recipe's ``cmdline.kernel_params``: the Kata runtime prepends
its own parameters (the recipe's ``runtime_params``), and the measured command line is that
final string (cmdline.txt). Paths use the placeholder ``@ARTIFACTS@`` (where OUT's files are
installed); no path of the build machine is written.

Values are serialized for TOML by tomli_w, and the comments show each value as one line of
printable text (builder.emit.templating), so a multi-line template or a quote in
``kernel_params`` cannot end a string or a comment early; the result always parses with tomllib.
"""

from __future__ import annotations

import hashlib

from builder import __version__
from builder.emit import BuildView
from builder.emit.templating import render, toml_value
from builder.errors import CCBuildError
from builder.recipe import expand_vcpus

PLACEHOLDER = "@ARTIFACTS@"


def toml_str(s: str, field: str = "value") -> str:
    """A TOML basic string, written by tomli_w."""
    return toml_value(s, field)


def snp_entry(view: BuildView, vcpus: int) -> dict:
    """The matrix entry the fragment launches: default_vcpus, the recipe's first CPU type and
    guest-features value, VMM qemu."""
    L = view.lr.recipe.launch
    from builder.measure.cpu import vcpu_type
    want = vcpu_type(L.vcpu_types[0]).name
    for e in view.measurements["snp"]:
        if (e["vmm"], e["vcpus"], e["vcpu_type"], int(e["guest_features"], 16)) == \
                ("qemu", vcpus, want, L.guest_features[0]):
            return e
    raise AssertionError("the matrix lacks the default entry")  # a code bug


def emit(view: BuildView, files: dict[str, bytes]) -> dict[str, bytes]:
    r = view.lr.recipe
    if r.platform not in ("snp", "tdx"):
        raise CCBuildError(f"unknown platform {r.platform!r}", "platform", "snp or tdx")
    out_name = f"kata-configuration-qemu-{r.platform}.toml"
    if r.launch.kata is not None:
        return {out_name: full_configuration(view, out_name).encode()}
    vcpus = expand_vcpus(r.launch.vcpus)[0]
    entry = snp_entry(view, vcpus) if r.platform == "snp" else None
    init = view.measurements.get("initdata")
    annotation = None
    if r.initdata:
        from builder.measure.initdata import kata_annotation
        raw = view.lr.read(r.initdata, "initdata", "initdata")
        measured = (init or {}).get("file_sha256")
        if measured and hashlib.sha256(raw).hexdigest() != measured:
            raise CCBuildError("the initdata file changed during the build", "initdata",
                               "build again")
        annotation = kata_annotation(raw)
    tdx = view.measurements.get("tdx")
    if tdx is not None and tdx.get("profile", {}).get("name") is None:
        # shown as it always was ("None") when no VMM profile is given
        tdx = {**tdx, "profile": {**tdx.get("profile", {}), "name": "None"}}
    text = render("kata-configuration.toml.j2", out_name, platform=r.platform, name=view.lr.name,
                  version=__version__, art=PLACEHOLDER,
                  kata_file=f"configuration-qemu-{r.platform}.toml",
                  image_file=view.image_file, recipe=r,
                  cmdline=view.cmdline, vcpus=vcpus, entry=entry,
                  snp_id=view.measurements.get("snp_id"), initdata=init,
                  annotation=annotation, tdx=tdx)
    return {out_name: text.encode()}


# -- launch.kata: the node's whole configuration, completed --------------------------------------
_KEY_LINE = r'^(?P<key>[A-Za-z0-9_-]+)[ \t]*=[ \t]*(?P<value>.*)$'


def full_configuration(view: BuildView, out_name: str) -> str:
    """The recipe's Kata configuration (launch.kata.configuration) as Kata reads it, with the
    [hypervisor.qemu] keys the build decides set to the build's values: ``kernel``, ``image`` /
    ``initrd``, ``firmware`` (under ``@ARTIFACTS@``), ``rootfs_type``, ``kernel_verity_params``
    and, for SNP, ``snp_id_block`` / ``snp_id_auth`` of the first pod's launch (empty without an
    ID key). Each key's line is rewritten in place, so Kata's comments and every other key stay
    as the file has them; the result is parsed back and compared with the intended document."""
    import re
    import tomllib

    from builder.kata.recipe import config_text
    r = view.lr.recipe
    k = view.measurements["kata"]
    pod = k["pods"][0]
    image = view.rootfs is not None
    values: dict[str, str] = {
        "kernel": f"{PLACEHOLDER}/vmlinuz",
        "image": f"{PLACEHOLDER}/rootfs.img" if image else "",
        "initrd": "" if image else f"{PLACEHOLDER}/initrd.img",
        "firmware": f"{PLACEHOLDER}/firmware.fd",
        "kernel_verity_params": k.get("kernel_verity_params") or "",
    }
    if image:
        values["rootfs_type"] = r.rootfs.format
    if r.platform == "snp":
        entry = next((e for e in view.measurements["snp"] if e["vcpus"] == pod["vcpus"]
                      and int(e["guest_features"], 16) == r.launch.guest_features[0]), {})
        values["snp_id_block"] = entry.get("id_block", "")
        values["snp_id_auth"] = entry.get("id_auth", "")
    text = config_text(view.lr)
    doc = tomllib.loads(text)
    lines = text.split("\n")
    section, seen, header_at = None, set(), None
    key_re = re.compile(_KEY_LINE)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
            if stripped == "[hypervisor.qemu]":
                header_at = i
            continue
        m = key_re.match(line)
        if section == "[hypervisor.qemu]" and m and m["key"] in values and m["key"] not in seen:
            lines[i] = f"{m['key']} = {toml_str(values[m['key']], m['key'])}"
            seen.add(m["key"])
    missing = [key for key in values if key not in seen]
    if header_at is None:
        raise CCBuildError("no [hypervisor.qemu] table", f"{view.lr.path.name}: "
                           "launch.kata.configuration")
    lines[header_at + 1:header_at + 1] = [f"{key} = {toml_str(values[key], key)}"
                                          for key in missing]
    want = doc
    want["hypervisor"]["qemu"].update(values)
    digests = ", ".join(f"{p['pod_cpus']} -> {p['vcpus']} vCPUs" for p in k["pods"])
    head = [
        f"# {out_name}: the Kata configuration {k['configuration']} with the artifacts of "
        f"\"{view.lr.name}\" (ccbuild {__version__}).",
        f"# Replace {PLACEHOLDER} with the directory where OUT's files are installed; Kata "
        f"{k['version']} (Go runtime) reads it as it is.",
        f"# Measured per pod CPU limit ({digests}): measurements.json kata.pods.",
        "",
    ]
    out = "\n".join(head + lines)
    try:
        back = tomllib.loads(out)
    except tomllib.TOMLDecodeError as e:   # a key line we rewrote was a multi-line value
        back = {"error": str(e)}
    if back != want:
        import tomli_w
        out = "\n".join(head) + tomli_w.dumps(want)
    for ch in out:
        if ord(ch) < 0x20 and ch not in "\n\t":
            raise CCBuildError("control character in the Kata configuration", out_name)
    return out
