"""Launch snippets and launch-time values in OUT, from a real build of the shipped SNP and TDX
recipes with the virtee test keys and an initdata document:

* qemu-snp.sh is parsed back (shlex) and every launch parameter (vCPUs, CPU model, policy,
  kernel-hashes=on, id-block/id-auth, host-data) must equal the one behind the digest printed
  beside it; the digest is recomputed independently with sev-snp-measure from the parsed
  arguments; the shell itself is run with a QEMU stand-in that records argv;
* ID block / ID auth of every matrix entry verify with the keys; the key digests are SHA-384 of
  the keys' public structures; the keys never enter OUT; a rebuild gives the same bytes;
* initdata: HOST_DATA / MRCONFIGID equal hashlib over the exact file bytes, fitted as Kata does;
* the Kata fragments parse as TOML and carry the same values; no machine path anywhere in OUT.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpers import parse_script, qemu_options as options

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

INITDATA = b'''algorithm = "ALG"
version = "0.1.0"

[data]
"aa.toml" = \'\'\'
[token_configs.kbs]
url = "http://kbs.example:8080"
\'\'\'
'''
ID_KEY, AUTHOR_KEY = "test_id_key.pem", "test_auth_key.pem"


def ccbuild(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=3600)


@pytest.fixture(scope="module")
def launch_build(tmp_path_factory, recipe_file, vectors):
    """build(platform, algorithm) -> (OUT, recipe dir): the shipped recipe with keys (SNP) and
    an initdata file beside it, built once per module."""
    done = {}

    def get(platform: str, alg: str) -> tuple[Path, Path]:
        if (platform, alg) not in done:
            recipe = recipe_file(platform)
            d = recipe.parent
            (d / f"initdata-{alg}.toml").write_bytes(INITDATA.replace(b"ALG", alg.encode()))
            sets = ["--set", f"initdata=initdata-{alg}.toml"]
            if platform == "snp":
                for k in (ID_KEY, AUTHOR_KEY):
                    shutil.copy(vectors / "snp/virtee-sev" / k, d / k)
                sets += ["--set", f"launch.snp.id_key={ID_KEY}",
                         "--set", f"launch.snp.author_key={AUTHOR_KEY}"]
            out = tmp_path_factory.mktemp(f"launch-{platform}-{alg}") / "out"
            cp = ccbuild("build", recipe, "-o", out, *sets)
            assert cp.returncode == 0, cp.stderr
            done[(platform, alg)] = (out, d)
        return done[(platform, alg)]

    return get


# -- parsing the generated script back --------------------------------------------------------
def props(obj: str) -> tuple[str, dict[str, str]]:
    kind, *rest = obj.split(",")
    return kind, dict(p.split("=", 1) for p in rest)


# -- SNP ----------------------------------------------------------------------------------------
def test_snp_script_parameters_match_the_digest_beside_them(launch_build, vectors, recipe_file):
    from sevsnpmeasure import guest, vcpu_types
    from sevsnpmeasure.vmm_types import VMMType

    from builder.measure.idblock import (OFF_AUTHOR_KEY, OFF_ID_KEY, ECDSA_PUBKEY_SIZE,
                                         verify_id_auth)
    out, rdir = launch_build("snp", "sha384")
    m = json.loads((out / "measurements.json").read_bytes())
    import yaml
    recipe = yaml.safe_load((rdir / "snp.yaml").read_text())
    policy = recipe["launch"]["snp"]["policy"]
    text = (out / "qemu-snp.sh").read_text()
    configs = parse_script(text, out)
    qemu_entries = [e for e in m["snp"] if e["vmm"] == "qemu"]
    assert len(configs) == len(qemu_entries) > 0
    by_digest = {e["launch_digest"]: e for e in m["snp"]}
    initdata = (rdir / "initdata-sha384.toml").read_bytes()
    seen = set()
    for c in configs:
        digest = c["values"]["launch_digest"]
        e = by_digest[digest]                       # the entry the printed digest belongs to
        seen.add(digest)
        o = options(c["argv"])
        assert int(o["-smp"][0]) == e["vcpus"]
        assert o["-cpu"] == [e["vcpu_type"]]
        kind, p = props(o["-object"][1])
        assert kind == "sev-snp-guest"
        assert p["kernel-hashes"] == "on"
        assert int(p["policy"], 0) == policy
        assert "confidential-guest-support=sev0" in o["-machine"][0] and p["id"] == "sev0"
        block = base64.b64decode(p["id-block"])
        auth = base64.b64decode(p["id-auth"])
        assert p["id-block"] == e["id_block"] and p["id-auth"] == e["id_auth"]
        ld, fam, img, ver, svn, pol = struct.unpack("<48s16s16sIIQ", block)
        assert ld.hex() == digest and pol == policy and ver == 1
        verify_id_auth(block, auth)
        assert hashlib.sha384(auth[OFF_ID_KEY:OFF_ID_KEY + ECDSA_PUBKEY_SIZE]).hexdigest() \
            == c["values"]["id_key_digest"] == m["snp_id"]["id_key_digest"]
        assert hashlib.sha384(auth[OFF_AUTHOR_KEY:OFF_AUTHOR_KEY + ECDSA_PUBKEY_SIZE]) \
            .hexdigest() == c["values"]["author_key_digest"]
        assert p["author-key-enabled"] == "on"
        # host-data: sha384 of the exact file, truncated to 32 bytes (Kata's rule)
        assert base64.b64decode(p["host-data"]) == hashlib.sha384(initdata).digest()[:32]
        assert c["values"]["host_data"] == hashlib.sha384(initdata).digest()[:32].hex()
        # the command line is exactly cmdline.txt; the files are OUT's
        assert o["-append"] == [(out / "cmdline.txt").read_text()]
        assert o["-bios"] == [f"{out}/firmware.fd"] and o["-kernel"] == [f"{out}/vmlinuz"]
        # independent recomputation from the parsed arguments only
        oracle = guest.snp_calc_launch_digest(
            int(o["-smp"][0]), vcpu_types.CPU_SIGS[o["-cpu"][0]], o["-bios"][0],
            o["-kernel"][0], o["-initrd"][0], o["-append"][0], int(e["guest_features"], 16),
            "", VMMType.QEMU)
        assert oracle.hex() == digest
    assert seen == {e["launch_digest"] for e in qemu_entries}


def test_snp_script_runs_as_parsed(launch_build, tmp_path):
    """The shell's own word splitting gives the argv the shlex parse gave."""
    out, _ = launch_build("snp", "sha384")
    dumper = tmp_path / "qemu-argv"
    dumper.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    dumper.chmod(0o755)
    configs = parse_script((out / "qemu-snp.sh").read_text(), out)
    listing = subprocess.run(["sh", str(out / "qemu-snp.sh")], capture_output=True, text=True,
                             timeout=60, env=dict(os.environ, ARTIFACTS=str(out)))
    assert listing.returncode == 0
    for c in configs:
        assert c["values"]["launch_digest"] in listing.stdout
    for c in (configs[0], configs[-1]):
        cp = subprocess.run(["sh", str(out / "qemu-snp.sh"), str(c["number"]), "-device", "x"],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, QEMU=str(dumper)))
        assert cp.returncode == 0, cp.stderr
        assert json.loads((tmp_path / "argv.json").read_text()) == c["argv"] + ["-device", "x"]
    # a cmdline.txt that is not the measured one is refused before QEMU starts
    other = tmp_path / "other"
    shutil.copytree(out, other)
    (other / "cmdline.txt").write_text("console=ttyS0 init=/bin/sh")
    cp = subprocess.run(["sh", str(other / "qemu-snp.sh"), "1"], capture_output=True, text=True,
                        timeout=60, env=dict(os.environ, QEMU=str(dumper), ARTIFACTS=str(other)))
    assert cp.returncode == 2 and "not the measured command line" in cp.stderr


def test_snp_id_blocks_every_entry_and_reproducible(launch_build, vectors, tmp_path,
                                                   recipe_file):
    from cryptography.hazmat.primitives import serialization

    from builder.measure.idblock import public_key_bytes, verify_id_auth
    out, rdir = launch_build("snp", "sha384")
    m = json.loads((out / "measurements.json").read_bytes())
    assert all("id_block" in e and "id_auth" in e for e in m["snp"])
    for e in m["snp"]:
        block = base64.b64decode(e["id_block"])
        assert block[:48].hex() == e["launch_digest"]
        verify_id_auth(block, base64.b64decode(e["id_auth"]))
    # a flipped byte fails
    from builder.errors import CheckFailed
    bad = bytearray(base64.b64decode(m["snp"][0]["id_block"]))
    bad[60] ^= 1
    with pytest.raises(CheckFailed):
        verify_id_auth(bytes(bad), base64.b64decode(m["snp"][0]["id_auth"]))
    for name, field in ((ID_KEY, "id_key_digest"), (AUTHOR_KEY, "author_key_digest")):
        key = serialization.load_pem_private_key((vectors / "snp/virtee-sev" / name)
                                                 .read_bytes(), None)
        assert hashlib.sha384(public_key_bytes(key)).hexdigest() == m["snp_id"][field]
    # the private keys never enter OUT
    for name in (ID_KEY, AUTHOR_KEY):
        pem = (vectors / "snp/virtee-sev" / name).read_bytes()
        der = b"".join(base64.b64decode(ln) for ln in pem.splitlines() if not ln.startswith(b"-"))
        for f in out.iterdir():
            data = f.read_bytes()
            assert b"PRIVATE KEY" not in data and der not in data and der[-48:] not in data
    # deterministic signatures: a rebuild gives the same measurements.json
    again = tmp_path / "again"
    cp = ccbuild("build", rdir / "snp.yaml", "-o", again, "--set", "initdata=initdata-sha384.toml",
                 "--set", f"launch.snp.id_key={ID_KEY}", "--set",
                 f"launch.snp.author_key={AUTHOR_KEY}")
    assert cp.returncode == 0, cp.stderr
    assert (again / "measurements.json").read_bytes() == (out / "measurements.json").read_bytes()


def test_snp_kata_fragment(launch_build):
    import yaml
    out, rdir = launch_build("snp", "sha384")
    recipe = yaml.safe_load((rdir / "snp.yaml").read_text())
    m = json.loads((out / "measurements.json").read_bytes())
    k = tomllib.loads((out / "kata-configuration-qemu-snp.toml").read_text())["hypervisor"]["qemu"]
    cmd = recipe["cmdline"]
    assert k["kernel_params"] == cmd["kernel_params"]
    # measured = the runtime's parameters, then kernel_params (the shipped template)
    assert f"{cmd['runtime_params']} {k['kernel_params']}" == (out / "cmdline.txt").read_text()
    assert k["snp_guest_policy"] == recipe["launch"]["snp"]["policy"]
    assert k["kernel"] == "@ARTIFACTS@/vmlinuz" and k["firmware"] == "@ARTIFACTS@/firmware.fd"
    assert k["initrd"] == "@ARTIFACTS@/initrd.img"
    vcpus = min(v for v in recipe["launch"]["vcpus"] if isinstance(v, int))
    assert k["default_vcpus"] == vcpus == k["default_maxvcpus"]
    assert k["default_memory"] == recipe["launch"]["memory_mib"]
    e = next(e for e in m["snp"] if e["vcpus"] == vcpus and e["vmm"] == "qemu"
             and e["vcpu_type"] == recipe["launch"]["vcpu_types"][0])
    assert k["snp_id_block"] == e["id_block"] and k["snp_id_auth"] == e["id_auth"]
    assert e["launch_digest"] in (out / "kata-configuration-qemu-snp.toml").read_text()


def test_no_machine_paths_in_out(launch_build, tmp_path_factory):
    out, rdir = launch_build("snp", "sha384")
    needles = [str(out), str(rdir), str(REPO), str(Path.home())]
    host = re.compile(rb"(?<![\w.-])" + re.escape(socket.gethostname().encode()) + rb"(?![\w.-])")
    for f in out.iterdir():
        if f.name in ("firmware.fd", "vmlinuz", "initrd.img"):
            continue
        text = f.read_bytes()
        for n in needles:
            assert n.encode() not in text, (f.name, n)
        assert not host.search(text), (f.name, "host name")


# -- TDX ----------------------------------------------------------------------------------------
def test_tdx_script_and_fragment(launch_build):
    import yaml
    out, rdir = launch_build("tdx", "sha256")
    m = json.loads((out / "measurements.json").read_bytes())
    recipe = yaml.safe_load((rdir / "tdx.yaml").read_text())
    initdata = (rdir / "initdata-sha256.toml").read_bytes()
    # sha256 is zero-padded to 48 bytes for MRCONFIGID (Kata's adjustProperLength)
    mrconfigid = hashlib.sha256(initdata).digest() + bytes(16)
    assert m["initdata"]["tdx_mrconfigid"] == mrconfigid.hex()
    configs = parse_script((out / "qemu-tdx.sh").read_text(), out)
    from builder.recipe import expand_vcpus
    assert [int(options(c["argv"])["-smp"][0]) for c in configs] == \
        expand_vcpus(tuple(recipe["launch"]["vcpus"]))
    for c in configs:
        o = options(c["argv"])
        kind, p = props(o["-object"][0])
        assert kind == "tdx-guest" and base64.b64decode(p["mrconfigid"]) == mrconfigid
        assert c["values"]["mrtd"] == m["tdx"]["mrtd"]
        assert c["values"]["rtmr1"] == m["tdx"]["rtmr1"]
        assert c["values"]["rtmr2"] == m["tdx"]["rtmr2"]
        assert c["values"]["mrconfigid"] == mrconfigid.hex()
        assert o["-append"] == [(out / "cmdline.txt").read_text()]
        assert o["-bios"] == [f"{out}/firmware.fd"]
        assert o["-m"] == [f"{recipe['launch']['memory_mib']}M"]
    k = tomllib.loads((out / "kata-configuration-qemu-tdx.toml").read_text())["hypervisor"]["qemu"]
    assert k["kernel_params"] == recipe["cmdline"]["kernel_params"]
    assert not any(x.startswith("snp_") for x in k)
    assert k["firmware"] == "@ARTIFACTS@/firmware.fd"


def test_snp_without_keys_or_initdata(recipe_file, tmp_path):
    out = tmp_path / "out"
    cp = ccbuild("build", recipe_file("snp"), "-o", out)
    assert cp.returncode == 0, cp.stderr
    m = json.loads((out / "measurements.json").read_bytes())
    assert "snp_id" not in m and "initdata" not in m
    assert not any("id_block" in e for e in m["snp"])
    configs = parse_script((out / "qemu-snp.sh").read_text(), out)
    assert len(configs) == len([e for e in m["snp"] if e["vmm"] == "qemu"])
    for c in configs:
        kind, p = props(options(c["argv"])["-object"][1])
        assert kind == "sev-snp-guest" and p["kernel-hashes"] == "on"
        assert not {"id-block", "id-auth", "host-data", "author-key-enabled"} & set(p)
    k = tomllib.loads((out / "kata-configuration-qemu-snp.toml").read_text())["hypervisor"]["qemu"]
    assert k["snp_id_block"] == "" and k["snp_id_auth"] == ""
