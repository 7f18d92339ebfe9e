"""Initrd assembly: tree, device nodes, path refusal, compression checked with the system tools,
reproducibility across umask/TZ/working directory."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from builder.errors import CCBuildError, FormatError
from builder.formats import cpio
from builder.stages import initrd
from builder.stages.initrd import Device, Dir, File, InitrdSpec, Symlink

EPOCH = 1700000000
REPO = Path(__file__).resolve().parent.parent
AGENT = b"\x7fELF" + bytes(range(256)) * 40 + b"agent"

SPEC = InitrdSpec(
    agent=AGENT,
    compression="none",
    files=(File("/etc/hostname", b"guest\n"), File("/etc/ssl/certs/ca.pem", b"-----BEGIN-----\n", 0o444),
           File("usr/lib/x", b"", 0o600)),
    symlinks=(Symlink("/sbin/init", "/init"), Symlink("/bin", "usr/bin")),
)


def members(data: bytes) -> dict[str, cpio.Member]:
    return {m.name: m for m in cpio.read_archive(initrd.decompress(data))}


def test_tree_layout():
    ms = members(initrd.build_initrd(SPEC, EPOCH))
    init = ms["init"]
    assert init.kind == "file" and stat.S_IMODE(init.mode) == 0o755 and init.data == AGENT
    assert (ms["dev/console"].kind, ms["dev/console"].rdevmajor, ms["dev/console"].rdevminor,
            stat.S_IMODE(ms["dev/console"].mode)) == ("chardev", 5, 1, 0o600)
    assert (ms["dev/null"].kind, ms["dev/null"].rdevmajor, ms["dev/null"].rdevminor,
            stat.S_IMODE(ms["dev/null"].mode)) == ("chardev", 1, 3, 0o666)
    for d in ("dev", "proc", "sys", "tmp", "run", "etc", "root"):
        assert ms[d].kind == "dir", d
    assert stat.S_IMODE(ms["tmp"].mode) == 0o1777
    # implicit parents
    for d in ("etc/ssl", "etc/ssl/certs", "usr", "usr/lib", "sbin"):
        assert ms[d].kind == "dir" and stat.S_IMODE(ms[d].mode) == 0o755, d
    assert ms["sbin/init"].data == b"/init" and ms["bin"].data == b"usr/bin"
    assert stat.S_IMODE(ms["etc/ssl/certs/ca.pem"].mode) == 0o444
    assert all(m.mtime == EPOCH and m.uid == 0 and m.gid == 0 for m in ms.values())
    assert [m.ino for m in ms.values()] == list(range(1, len(ms) + 1))
    assert initrd.init_of(initrd.build_initrd(SPEC, EPOCH)) == AGENT


def test_gnu_cpio_lists_and_extracts(tmp_path):
    if shutil.which("cpio") is None:
        pytest.skip("GNU cpio is not installed")
    data = initrd.build_initrd(SPEC, EPOCH)
    env = {**os.environ, "TZ": "UTC", "LC_ALL": "C"}
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=data, capture_output=True,
                             check=True, env=env).stdout.decode().splitlines()
    by_name = {line.split()[-1] if " -> " not in line else line.split(" -> ")[0].split()[-1]: line
               for line in listing}
    assert by_name["init"].split()[:5] == ["-rwxr-xr-x", "1", "root", "root", str(len(AGENT))]
    assert by_name["dev/console"].split()[:6] == ["crw-------", "1", "root", "root", "5,", "1"]
    assert by_name["dev/null"].split()[:6] == ["crw-rw-rw-", "1", "root", "root", "1,", "3"]
    assert by_name["tmp"].startswith("drwxrwxrwt")
    assert by_name["sbin/init"].endswith("sbin/init -> /init")
    assert all("Nov 14  2023" in line for line in listing)
    dest = tmp_path / "root"
    dest.mkdir()
    subprocess.run(["cpio", "-idm", "--no-absolute-filenames", "--quiet", "--nonmatching", "dev/*"],
                   cwd=dest, input=data, check=True, capture_output=True)
    assert (dest / "init").read_bytes() == AGENT
    assert stat.S_IMODE(os.stat(dest / "init").st_mode) == 0o755
    assert os.stat(dest / "init").st_mtime == EPOCH
    assert (dest / "etc/ssl/certs/ca.pem").read_bytes() == b"-----BEGIN-----\n"
    assert os.readlink(dest / "bin") == "usr/bin"


@pytest.mark.parametrize("method,tool", [("gzip", "gzip"), ("zstd", "zstd"), ("xz", "xz")])
def test_system_tools_decompress(method, tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    raw = initrd.pack(SPEC, EPOCH)
    img = initrd.build_initrd(InitrdSpec(**{**SPEC.__dict__, "compression": method}), EPOCH)
    assert initrd.detect_compression(img) == method
    out = subprocess.run([tool, "-dc"], input=img, capture_output=True, check=True).stdout
    assert out == raw
    assert initrd.decompress(img) == raw


def test_compression_parameters_are_fixed():
    raw = initrd.pack(SPEC, EPOCH)
    gz = initrd.compress(raw, "gzip")
    # ID1 ID2 CM=deflate FLG=0 (no name/comment/extra) MTIME=0 XFL=2 (level 9) OS=3
    assert gz[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"
    xz = initrd.compress(raw, "xz")
    assert xz[:6] == b"\xfd7zXZ\x00" and xz[6:8] == b"\x00\x01"      # stream flags: check = CRC32
    listed = subprocess.run(["xz", "--robot", "--list", "-"], input=xz, capture_output=True)
    if listed.returncode == 0:        # older xz cannot list from stdin
        assert b"CRC32" in listed.stdout
    import zstandard
    zs = initrd.compress(raw, "zstd")
    fp = zstandard.get_frame_parameters(zs)
    assert fp.content_size == len(raw) and fp.has_checksum and fp.dict_id == 0
    assert initrd.compress(raw, "none") == raw


def test_unknown_compression_refused():
    with pytest.raises(CCBuildError, match="unknown initrd compression 'lz4'"):
        initrd.build_initrd(InitrdSpec(agent=AGENT, compression="lz4"), EPOCH)
    with pytest.raises(FormatError, match="not an initrd"):
        initrd.decompress(b"PK\x03\x04 zip")
    with pytest.raises(FormatError, match="corrupt gzip"):
        initrd.decompress(initrd.compress(b"x" * 1000, "gzip")[:20])


def test_two_builds_equal_and_epoch_changes_only_mtimes():
    for method in initrd.COMPRESSIONS:
        spec = InitrdSpec(**{**SPEC.__dict__, "compression": method})
        assert initrd.build_initrd(spec, EPOCH) == initrd.build_initrd(spec, EPOCH)
    d = cpio.diff_archives(initrd.pack(SPEC, EPOCH), initrd.pack(SPEC, EPOCH + 60))
    assert d == f"member 'bin': mtime {EPOCH} != {EPOCH + 60}"


_CHILD = """
import hashlib, os, sys
os.umask(int(sys.argv[1], 8))
from builder.stages import initrd
from tests.test_initrd import SPEC, EPOCH
for m in initrd.COMPRESSIONS:
    spec = initrd.InitrdSpec(**{**SPEC.__dict__, "compression": m})
    print(m, hashlib.sha256(initrd.build_initrd(spec, EPOCH)).hexdigest())
"""


def test_reproducible_across_umask_tz_and_cwd(tmp_path):
    outs = []
    for umask, tz, cwd in (("022", "UTC", REPO), ("077", "Pacific/Kiritimati", tmp_path)):
        env = {**os.environ, "TZ": tz, "PYTHONPATH": str(REPO), "LC_ALL": "C"}
        outs.append(subprocess.run([sys.executable, "-c", _CHILD, umask], cwd=cwd, env=env,
                                   capture_output=True, check=True, text=True).stdout)
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 4


@pytest.mark.parametrize("path", ["../x", "/../x", "/etc/../../x", "etc/../hostname", "a/..", "..",
                                  "/", "", "./.", "a\0b"])
def test_escaping_or_empty_paths_refused(path):
    spec = InitrdSpec(agent=AGENT, files=(File(path, b"x"),))
    with pytest.raises(CCBuildError) as e:
        initrd.build_initrd(spec, EPOCH)
    assert repr(path) in str(e.value)


def test_symlink_and_dir_paths_checked_too():
    with pytest.raises(CCBuildError, match=r"'\.\./evil'"):
        initrd.build_initrd(InitrdSpec(agent=AGENT, symlinks=(Symlink("../evil", "/"),)), EPOCH)
    with pytest.raises(CCBuildError, match=r"'/x/\.\./\.\.'"):
        initrd.build_initrd(InitrdSpec(agent=AGENT, dirs=(Dir("/x/../.."),)), EPOCH)


def test_paths_through_symlinks_or_files_refused():
    # /lib is a symlink that could point anywhere: writing /lib/x would go through it
    spec = InitrdSpec(agent=AGENT, symlinks=(Symlink("/lib", "../../.."),), files=(File("/lib/x", b""),))
    with pytest.raises(CCBuildError, match="'/lib/x' lies below '/lib', which is a symlink"):
        initrd.build_initrd(spec, EPOCH)
    spec = InitrdSpec(agent=AGENT, files=(File("/init/x", b""),))
    with pytest.raises(CCBuildError, match="'/init/x' lies below '/init \\(the agent\\)', which is a file"):
        initrd.build_initrd(spec, EPOCH)


def test_duplicates_refused():
    with pytest.raises(CCBuildError, match="'/init' is given twice"):
        initrd.build_initrd(InitrdSpec(agent=AGENT, files=(File("/init", b"other"),)), EPOCH)
    with pytest.raises(CCBuildError, match="'etc//hostname' is given twice"):
        initrd.build_initrd(InitrdSpec(agent=AGENT, files=(File("/etc/hostname", b"a"),
                                                           File("etc//hostname", b"b"))), EPOCH)
    with pytest.raises(CCBuildError, match="given twice"):
        initrd.build_initrd(InitrdSpec(agent=AGENT, devices=initrd.DEFAULT_DEVICES * 2), EPOCH)
    with pytest.raises(CCBuildError, match="'/etc' is given twice"):
        initrd.build_initrd(InitrdSpec(agent=AGENT, dirs=initrd.DEFAULT_DIRS + (Dir("/etc", 0o700),)), EPOCH)
    # the same directory with the same mode twice (recipe dirs added to the defaults) is one entry
    same = initrd.pack(InitrdSpec(agent=AGENT, dirs=initrd.DEFAULT_DIRS + (Dir("etc/"),)), EPOCH)
    assert same == initrd.pack(InitrdSpec(agent=AGENT), EPOCH)


def test_bad_fields_refused():
    with pytest.raises(CCBuildError, match="bad mode"):
        initrd.build_initrd(InitrdSpec(agent=AGENT, files=(File("/a", b"", 0o20000),)), EPOCH)
    with pytest.raises(CCBuildError, match="agent binary is empty"):
        initrd.build_initrd(InitrdSpec(agent=b""), EPOCH)
    with pytest.raises(CCBuildError, match="kind 'fifo'"):
        initrd.build_initrd(InitrdSpec(agent=AGENT, devices=(Device("/dev/x", "fifo", 0, 0),)), EPOCH)
    with pytest.raises(CCBuildError, match="SOURCE_DATE_EPOCH"):
        initrd.build_initrd(SPEC, 2**32)


def test_diff_initrds_names_member_and_field():
    a = initrd.build_initrd(SPEC, EPOCH)
    other = InitrdSpec(**{**SPEC.__dict__, "files": (File("/etc/hostname", b"gueSt\n"),) + SPEC.files[1:]})
    d = initrd.diff_initrds(a, initrd.build_initrd(other, EPOCH))
    assert d.startswith("member 'etc/hostname': content differs")
    moded = InitrdSpec(**{**SPEC.__dict__, "files": (File("/etc/hostname", b"guest\n", 0o600),) + SPEC.files[1:]})
    assert initrd.diff_initrds(a, initrd.build_initrd(moded, EPOCH)) == \
        "member 'etc/hostname': mode 0o0644 != 0o0600"
    gz = initrd.build_initrd(InitrdSpec(**{**SPEC.__dict__, "compression": "gzip"}), EPOCH)
    assert initrd.diff_initrds(a, gz) == "same archive, different compression: none vs gzip"
    assert initrd.diff_initrds(gz, gz) is None
    damaged = gz[:10] + bytes([gz[10] ^ 1]) + gz[11:]
    assert initrd.diff_initrds(gz, damaged).startswith("the second initrd cannot be read: corrupt gzip")


def test_init_of_follows_symlink_and_refuses_missing():
    raw = cpio.write_archive([cpio.Entry.symlink("init", "sbin/agent"), cpio.Entry.dir("sbin"),
                              cpio.Entry.file("sbin/agent", b"A", 0o755)], EPOCH)
    assert initrd.init_of(raw) == b"A"
    with pytest.raises(CCBuildError, match="no regular file /init"):
        initrd.init_of(cpio.write_archive([cpio.Entry.file("sbin", b"")], EPOCH))


# ---- the kernel's own decompressors and cpio unpacker accept the image (real boot) ----

@pytest.fixture(scope="module")
def recipe_kernel() -> bytes:
    from builder.recipe import load_recipe
    from builder.sources.resolve import ResolveOptions, resolve
    from builder.store import Store
    lr = load_recipe(REPO / "recipes" / "snp.yaml")
    store = Store.open()
    return resolve(lr.recipe.kernel.source, ResolveOptions(store, lr.path.parent), "kernel.source").data


@pytest.mark.slow
@pytest.mark.boot
@pytest.mark.parametrize("method", ["gzip", "zstd", "xz"])
def test_kernel_unpacks_and_runs_the_agent(method, recipe_kernel, tmp_path):
    """Boot the recipe's kernel (non-confidential, SeaBIOS, TCG) with each compression and the test
    agent as /init: its readiness line proves decompression, unpacking, /dev/console and /init."""
    from builder.stages import agent
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    built = agent.build_test_agent(agent.default_source(), tmp_path / "agent")
    (tmp_path / "vmlinuz").write_bytes(recipe_kernel)
    (tmp_path / "initrd").write_bytes(
        initrd.build_initrd(InitrdSpec(agent=built.data, compression=method), EPOCH))
    serial = tmp_path / "serial.log"
    cmdline = f"console=ttyS0 panic=-1 quiet ccbuild.test={method}"
    subprocess.run(["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1",
                    "-m", "512", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                    "-monitor", "none", "-serial", f"file:{serial}", "-kernel", str(tmp_path / "vmlinuz"),
                    "-initrd", str(tmp_path / "initrd"), "-append", cmdline],
                   check=True, capture_output=True, timeout=120)
    log = serial.read_bytes().decode(errors="replace").replace("\r", "")
    assert f"ccbuild-test-agent: ready sha256={built.sha256} version={built.version}\n" in log, log[-2000:]
    assert f"ccbuild-test-agent: cmdline {cmdline}\n" in log
