"""`ccbuild boot`: the shipped SNP and TDX recipes, built with their real default firmware, boot
in QEMU (non-confidential; TCG here) to the test agent's readiness line, and the agent that ran
is the one the manifest's chain names. A broken /init, a timeout and a bad OUT fail as they
should."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.stages.initrd import InitrdSpec, build_initrd, init_of

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.boot]
READY = re.compile(r"ccbuild-test-agent: ready sha256=([0-9a-f]{64}) version=\S+")


def ccbuild(*args, timeout=3600):
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def default_out(tmp_path_factory, recipe_file):
    """default_out(platform) -> OUT of the shipped recipe (default firmware build), once."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    done = {}

    def get(platform: str) -> Path:
        if platform not in done:
            out = tmp_path_factory.mktemp(f"boot-{platform}") / "out"
            cp = ccbuild("build", recipe_file(platform), "-o", out)
            assert cp.returncode == 0, cp.stderr
            done[platform] = out
        return done[platform]

    return get


def boot(out: Path, *args, timeout=900):
    cp = ccbuild("boot", out, "--json", *args, timeout=timeout)
    return cp, (json.loads(cp.stdout) if cp.stdout.strip() else None)


@pytest.mark.parametrize("platform,firmware", [("snp", "SeaBIOS"), ("tdx", "built TDVF")])
def test_default_recipe_boots_to_the_agent(default_out, platform, firmware, tmp_path):
    out = default_out(platform)
    log = tmp_path / "serial.log"
    cp, r = boot(out, "--timeout", "600", "--log", log)
    assert cp.returncode == 0, (cp.stderr, log.read_text(errors="replace")[-2000:])
    assert r["ready"] and firmware in r["firmware"]
    m = READY.fullmatch(r["line"])          # the clean line, no firmware console codes
    assert m, r["line"]
    manifest = json.loads((out / "manifest.json").read_bytes())
    # the agent that ran hashed itself: the chain's agent, the manifest's agent input, and
    # (independently) the bytes of /init in OUT's initrd
    agent = hashlib.sha256(init_of((out / "initrd.img").read_bytes())).hexdigest()
    assert m.group(1) == manifest["chain"]["agent"] == agent
    assert agent in {i["sha256"] for i in manifest["inputs"] if i["role"] == "agent"}
    # it was booted with exactly cmdline.txt and OUT's files; the agent saw the line on serial
    assert r["qemu"][r["qemu"].index("-append") + 1] == (out / "cmdline.txt").read_text()
    assert r["qemu"][r["qemu"].index("-kernel") + 1] == str(out / "vmlinuz")
    assert ("-bios" in r["qemu"]) == (platform == "tdx")
    assert READY.search(log.read_text(errors="replace"))
    assert f"serial log: {log}" in cp.stderr and "firmware:" in cp.stderr
    assert re.search(r"boot: agent ready after \d+\.\d s \((tcg|kvm)\)", cp.stderr)


def rewrite(out: Path, dest: Path, name: str, data: bytes) -> Path:
    """A copy of OUT with one file replaced and manifest.json updated to match (so only the
    content, not the integrity check, is wrong)."""
    shutil.copytree(out, dest)
    (dest / name).write_bytes(data)
    man = json.loads((dest / "manifest.json").read_bytes())
    for o in man["outputs"]:
        if o["path"] == name:
            o["sha256"], o["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (dest / "manifest.json").write_text(json.dumps(man))
    return dest


def test_broken_init_never_reaches_readiness(default_out, tmp_path):
    out = default_out("snp")
    broken = build_initrd(InitrdSpec(agent=b"#!/nonexistent/interpreter\n"), 1735689600)
    bad = rewrite(out, tmp_path / "bad", "initrd.img", broken)
    cp, r = boot(bad, "--accel", "tcg", "--timeout", "300")
    assert cp.returncode == 1, cp.stderr
    assert not r["ready"] and "without the readiness line" in r["reason"]
    assert "boot: agent NOT ready" in cp.stderr
    assert "Kernel panic" in Path(r["serial_log"]).read_text(errors="replace")


def test_timeout_is_a_failed_check(default_out):
    cp, r = boot(default_out("snp"), "--accel", "tcg", "--timeout", "0.5")
    assert cp.returncode == 1 and r["reason"] == "no readiness line within 0.5 s"


def test_bad_out_is_exit_2(default_out, tmp_path):
    out = default_out("snp")
    cp, _ = boot(tmp_path / "missing")
    assert cp.returncode == 2 and cp.stderr.startswith("ccbuild: error: not a directory")
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    (tampered / "cmdline.txt").write_text("console=ttyS0 init=/bin/sh")
    cp, _ = boot(tampered)
    assert cp.returncode == 2
    assert cp.stderr.strip().splitlines() == [
        f"ccbuild: error: cmdline.txt does not match manifest.json (changed after the build), "
        f"{tampered}; rebuild OUT"]
    cp, _ = boot(out, "--firmware", "built")
    assert cp.returncode == 2 and "cannot direct-boot outside an SEV-SNP guest" in cp.stderr
