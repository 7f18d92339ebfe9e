"""``kata-configuration-qemu-snp.toml`` / ``-tdx.toml``: the fragment of Kata's
configuration.toml ([hypervisor.qemu]) that launches the built guest as it was measured.

``kernel_params`` holds only the recipe's ``cmdline.kernel_params``: the Kata runtime prepends
its own parameters (the recipe's ``runtime_params``), and the measured command line is that
final string (cmdline.txt). Paths use the placeholder ``@ARTIFACTS@`` (where OUT's files are
installed); no path of the build machine is written.
"""

from __future__ import annotations

import json

from builder import __version__
from builder.emit import BuildView
from builder.emit.templating import render
from builder.recipe import expand_vcpus

PLACEHOLDER = "@ARTIFACTS@"


def toml_str(s: str) -> str:
    """A TOML basic string (JSON string escapes are valid TOML for these values)."""
    return json.dumps(s, ensure_ascii=False)


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
    vcpus = expand_vcpus(r.launch.vcpus)[0]
    entry = snp_entry(view, vcpus) if r.platform == "snp" else None
    init = view.measurements.get("initdata")
    annotation = None
    if r.initdata:
        from builder.measure.initdata import kata_annotation
        annotation = kata_annotation(view.lr.resolve(r.initdata).read_bytes())
    text = render("kata-configuration.toml.j2", platform=r.platform, name=view.lr.name,
                  version=__version__, art=PLACEHOLDER,
                  image_file=view.image_file, s=toml_str, recipe=r,
                  cmdline=view.cmdline, vcpus=vcpus, entry=entry,
                  snp_id=view.measurements.get("snp_id"), initdata=init,
                  annotation=annotation, tdx=view.measurements.get("tdx"))
    return {f"kata-configuration-qemu-{r.platform}.toml": text.encode()}
