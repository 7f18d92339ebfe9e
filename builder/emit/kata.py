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
