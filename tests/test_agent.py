"""The test agent: reproducible static build, its SHA-256 routine against hashlib, its PID-1 path
(in a PID namespace when the host allows one), and the pinned-agent checks."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.errors import CCBuildError
from builder.stages import agent

SRC = agent.default_source()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    try:
        agent.find_compiler()
    except CCBuildError as e:
        pytest.skip(str(e))
    return agent.build_test_agent(SRC, tmp_path_factory.mktemp("one"), version="9.9.9-test")


@pytest.fixture(scope="module")
def exe(built, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("bin") / "ccbuild-test-agent"
    p.write_bytes(built.data)
    p.chmod(0o755)
    return p


def test_rebuild_in_another_directory_is_identical(built, tmp_path):
    log = tmp_path / "build.log"
    deep = tmp_path / "a" / "much" / "longer" / "build directory name"
    again = agent.build_test_agent(SRC, deep, log, version="9.9.9-test")
    assert again.data == built.data and again.sha256 == built.sha256
    assert str(deep) not in again.data.decode("latin-1")
    assert "ccbuild-test-agent.c" in log.read_text()      # command and output captured
    other = agent.build_test_agent(SRC, tmp_path / "v2", version="9.9.10")
    assert other.data != built.data                      # the version is compiled in


def test_static_and_identity(built, exe):
    out = subprocess.run(["file", str(exe)], capture_output=True, text=True, check=True).stdout
    assert "statically linked" in out and "ELF" in out
    assert built.sha256 == hashlib.sha256(built.data).hexdigest()
    assert built.origin == "built" and built.version == "9.9.9-test"
    compiler = built.argv[0]
    first = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    assert built.toolchain.splitlines()[0] == first.strip()
    if "musl" in compiler:
        assert re.search(r"^musl \d+\.\d+\.\d+$", built.toolchain, re.M)
        assert len(built.data) < 100_000
    assert not any("/" in a for a in built.argv[1:])     # no paths recorded


@pytest.mark.parametrize("size", [0, 1, 55, 56, 63, 64, 65, 119, 120, 4095, 4096, 4097, 1_000_003])
def test_sha256_routine_matches_hashlib(exe, tmp_path, size):
    f = tmp_path / f"in{size}"
    f.write_bytes(os.urandom(size))
    out = subprocess.run([str(exe), "--sha256", str(f)], capture_output=True, text=True, check=True)
    assert out.stdout == hashlib.sha256(f.read_bytes()).hexdigest() + "\n"


def test_sha256_of_itself_and_errors(exe, built):
    out = subprocess.run([str(exe), "--sha256", str(exe)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == built.sha256
    bad = subprocess.run([str(exe), "--sha256", "/nonexistent/x"], capture_output=True, text=True)
    assert bad.returncode == 1 and "No such file" in bad.stdout


def test_version_and_refusal_outside_pid1(exe):
    assert subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout == "9.9.9-test\n"
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    assert r.returncode == 2 and "must run as PID 1" in r.stdout


def test_runs_as_pid1_in_a_namespace(exe, built):
    """The full init path: mounts, readiness line, cmdline, power off. reboot(2) inside a child PID
    namespace ends its init with SIGINT instead of powering anything off."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--propagation", "private", str(exe)],
                       capture_output=True, text=True, timeout=30)
    if "Operation not permitted" in r.stderr or "unshare failed" in r.stderr:
        pytest.skip(f"no PID/mount namespaces here: {r.stderr.strip()}")
    lines = r.stdout.splitlines()
    assert lines[0] == f"ccbuild-test-agent: ready sha256={built.sha256} version=9.9.9-test"
    assert lines[1] == "ccbuild-test-agent: cmdline " + Path("/proc/cmdline").read_text().strip()
    assert r.returncode in (130, -2), r    # killed by SIGINT: the power-off request was made


def test_compile_error_is_one_line(tmp_path):
    bad = tmp_path / "broken.c"
    bad.write_text("int main(void) { return undefined_symbol; }\n")
    with pytest.raises(CCBuildError) as e:
        agent.build_test_agent(bad, tmp_path / "w")
    assert "undefined_symbol" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CCBuildError, match="cannot read the agent source"):
        agent.build_test_agent(tmp_path / "missing.c", tmp_path / "w")
    with pytest.raises(CCBuildError, match="bad agent version"):
        agent.build_test_agent(SRC, tmp_path / "w", version='1"; system("x')


def test_pinned_agent_checks(built):
    ok = agent.pinned_agent(built.data, built.sha256.upper(), "kata-agent")
    assert ok.data == built.data and ok.origin == "pinned"
    with pytest.raises(CCBuildError, match="does not match the pin"):
        agent.pinned_agent(built.data, "00" * 32, "kata-agent")
    dynamic = Path(shutil.which("ls") or "/bin/ls").read_bytes()
    with pytest.raises(CCBuildError, match=r"dynamically linked \(interpreter /lib"):
        agent.pinned_agent(dynamic, hashlib.sha256(dynamic).hexdigest(), "ls")
    script = b"#!/bin/sh\nexec /agent\n"
    with pytest.raises(CCBuildError, match="not an ELF executable"):
        agent.pinned_agent(script, hashlib.sha256(script).hexdigest(), "script")
    truncated = built.data[:70]
    with pytest.raises(CCBuildError):
        agent.pinned_agent(truncated, hashlib.sha256(truncated).hexdigest(), "cut")


def test_build_cached_builds_once(built, tmp_path, monkeypatch):
    """The default test agent goes through the shared cached-stage helper: the second call takes
    the verified blob from the store and compiles nothing; a changed source is a new key."""
    from builder.store import Store
    store = Store.open(tmp_path / "cache")
    data, toolchain = agent.build_cached(store)
    assert toolchain == built.toolchain
    agent.check_static_elf(data, "cached")
    key = agent.cache_key(SRC.read_bytes(), toolchain)
    assert store.get_ref("agent-build", key)["sha256"] == hashlib.sha256(data).hexdigest()

    def no_compile(*a, **k):
        raise AssertionError("compiled again")
    monkeypatch.setattr(agent, "build_test_agent", no_compile)
    assert agent.build_cached(store) == (data, toolchain)
    changed = tmp_path / "changed.c"
    changed.write_bytes(SRC.read_bytes() + b"\n/* changed */\n")
    assert agent.cache_key(changed.read_bytes(), toolchain) != key
    with pytest.raises(AssertionError, match="compiled again"):
        agent.build_cached(store, changed)
    assert not list((tmp_path / "cache" / "tmp").iterdir())     # scratch directories removed
