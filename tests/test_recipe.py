"""Recipe validation: every mistake is one line naming the file and YAML path, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from builder.recipe import RecipeError, expand_vcpus, load_recipe, schema_doc

REPO = Path(__file__).resolve().parent.parent

GOOD = {
    "platform": "snp",
    "firmware": {"source": {"path": "fw.fd"}},
    "kernel": {"source": {"debian": "linux-image-x", "version": "1", "suite": "trixie",
                          "member": "boot/vmlinuz", "sha256": "a" * 64}},
    "agent": {"build": "test-agent"},
}


def _with(path: str, value, base=GOOD):
    import copy
    raw = copy.deepcopy(base)
    node = raw
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return raw


_DELETE = object()

# (yaml document or mapping, expected one-line message after "bad.yaml: ")
BAD = [
    (_with("platform", "sev"), "platform: must be one of snp, tdx (got 'sev')"),
    (_with("platform", _DELETE), "platform: required"),
    (_with("colour", "blue"), "colour: unknown key"),
    (_with("kernel.source.sha256", "xyz"), "kernel.source.sha256: 'xyz' is malformed"),
    (_with("kernel.source.version", _DELETE), "kernel.source.version: required"),
    (_with("kernel.source.path", "k"), "kernel.source: give only one of debian, path"),
    (_with("kernel.source", {}), "kernel.source: exactly one of debian, path, url is required"),
    (_with("firmware", {"build": "a.yaml", "source": {"path": "x"}}),
     "firmware: exactly one of build, source is required"),
    (_with("firmware.source", {"url": "ftp://x/y", "sha256": "b" * 64}),
     "firmware.source.url: must be an http(s) URL"),
    (_with("firmware.source", {"url": "https://x/y"}), "firmware.source.sha256: required"),
    (_with("agent", {"build": "kata"}), "agent.build: must be one of test-agent (got 'kata')"),
    (_with("initrd", {"compression": "lz4"}),
     "initrd.compression: must be one of none, gzip, zstd, xz (got 'lz4')"),
    (_with("initrd", {"files": [{"path": "../etc/x", "content": "a"}]}),
     "initrd.files[0].path: '../etc/x' must be an absolute path inside the image"),
    (_with("initrd", {"files": [{"path": "/etc/../../x", "content": "a"}]}),
     "initrd.files[0].path: '/etc/../../x' escapes the image root"),
    (_with("initrd", {"files": [{"path": "/init", "content": "#!/bin/sh"}]}),
     "initrd.files[0].path: /init is the agent; it cannot be replaced"),
    (_with("initrd", {"files": [{"path": "/a", "content": "x", "mode": 0o17777}]}),
     "initrd.files[0].mode: 8191 is out of range 0..4095"),
    (_with("launch", {"vcpus": ["4-2"]}), "launch.vcpus: empty vCPU range '4-2'"),
    (_with("launch", {"vcpus": [0]}), "launch.vcpus: vCPU count out of range 1..512: 0"),
    (_with("launch", {"vcpus": 4}), "launch.vcpus: must be a list, not int"),
    (_with("launch", {"vmms": ["firecracker"]}),
     "launch.vmms[0]: must be one of qemu, ec2, gce (got 'firecracker')"),
    (_with("launch", {"memory_mib": "lots"}),
     "launch.memory_mib: must be an integer, not str 'lots'"),
    (_with("launch", {"snp": {"family_id": "00"}}), "launch.snp.family_id: '00' is malformed"),
    (_with("launch", {"snp": {"author_key": "a.pem"}}),
     "launch.snp.id_key: required when author_key is given"),
    (_with("cmdline", "console=ttyS0"), "cmdline: must be a mapping, not str"),
    (_with("source_date_epoch", -1), "source_date_epoch: -1 is out of range"),
    ("platform: snp\n  firmware: [", "line 2"),
    ("- a\n- b\n", "the top level must be a mapping"),
]


@pytest.mark.parametrize("doc,expected", BAD, ids=[e[1][:40] for e in BAD])
def test_bad_recipe_is_one_line_naming_the_path(tmp_path, doc, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    with pytest.raises(RecipeError) as ei:
        load_recipe(f, display="bad.yaml")
    msg = ei.value.one_line()
    assert msg.startswith("bad.yaml: ") and expected in msg, msg
    assert "\n" not in msg


def test_locked_requires_every_pin(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(_with("firmware.source", {"path": "fw.fd"})))
    load_recipe(f)  # fine unlocked
    with pytest.raises(RecipeError, match=r"firmware\.source\.sha256: required \(--locked\)"):
        load_recipe(f, locked=True)


def test_set_overrides_any_field_and_is_validated(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(GOOD))
    r = load_recipe(f, ["launch.vcpus=[1, '3-4']", "initrd.compression=xz",
                        "launch.snp.policy=0x30000"]).recipe
    assert r.launch.vcpus == (1, "3-4") and r.initrd.compression == "xz"
    assert r.launch.snp.policy == 0x30000
    with pytest.raises(RecipeError, match=r"initrd\.compression: must be one of"):
        load_recipe(f, ["initrd.compression=bzip2"])
    with pytest.raises(RecipeError, match=r"platform: is not a mapping"):
        load_recipe(f, ["platform.x=1"])


def test_recipe_digest_ignores_layout_but_not_content(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(GOOD))
    b.write_text("# comment\n" + yaml.safe_dump(GOOD, default_flow_style=True))
    assert load_recipe(a).digest == load_recipe(b).digest
    assert load_recipe(a).digest != load_recipe(a, ["launch.vcpus=[2]"]).digest


def test_vcpu_expansion():
    assert expand_vcpus((1, "4-6", 8, 5)) == [1, 4, 5, 6, 8]
    assert len(expand_vcpus(("1-512",))) == 512


@pytest.mark.parametrize("name", ["snp.yaml", "tdx.yaml"])
def test_shipped_recipes_are_valid_and_locked(name):
    lr = load_recipe(REPO / "recipes" / name, locked=True)
    assert lr.recipe.platform == name.split(".")[0]


def test_schema_doc_covers_every_field():
    paths = {r[0] for r in schema_doc()}
    assert {"platform", "kernel.source.sha256", "initrd.files[].mode", "launch.snp.policy"} <= paths


@pytest.mark.parametrize("doc,expected", BAD[:6], ids=[e[1][:30] for e in BAD[:6]])
def test_cli_bad_recipe_exit_2_one_line_no_traceback(tmp_path, doc, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    cp = subprocess.run([sys.executable, "-m", "builder.cli", "build", str(f), "-o", str(out)],
                        capture_output=True, text=True, cwd=REPO,
                        env={"CCBUILD_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})
    assert cp.returncode == 2, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ccbuild: error: ") and expected in lines[0]
    assert "Traceback" not in cp.stderr and cp.stdout == ""
    assert not out.exists()


def test_docs_recipe_md_is_generated_from_the_schema():
    from builder.recipe import render_schema_doc
    assert (REPO / "docs" / "recipe.md").read_text() == render_schema_doc(), \
        "run: python -m builder.recipe > docs/recipe.md"
