"""Measured rootfs (builder.stages.rootfs): reproducible erofs/ext4 images, Kata's partition
layout, the verity pin on the command line, and real boots: the verity recipe reaches the agent,
a one-byte change in the image makes the kernel refuse the block."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess

import pytest

from builder.errors import CCBuildError
from builder.formats.verity import VerityParams, hash_tree
from builder.stages import chain, rootfs as rfs
from builder.stages.tree import Dir, File

AGENT = b"\x7fELF" + bytes(range(256)) * 40     # stand-in bytes; the boot tests use the real one
EPOCH = 1735689600


def _spec(fmt: str, seed: str = "ab" * 32, **kw) -> rfs.RootfsSpec:
    return rfs.RootfsSpec(fmt, kw.pop("agent", AGENT),
                          kw.pop("files", (File("/etc/hostname", b"kata\n"),
                                           File("/usr/share/x/data", b"d" * 9000, 0o600))),
                          kw.pop("dirs", (Dir("/var/lib/empty"),)), EPOCH, seed)


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/install-deps)")


def _partitions(image: bytes) -> list[tuple[int, int]]:
    assert image[510:512] == b"\x55\xaa"
    out = []
    for i in range(4):
        e = image[446 + 16 * i: 462 + 16 * i]
        ptype, start, count = e[4], *struct.unpack_from("<II", e, 8)
        if ptype:
            assert ptype == 0x83
            out.append((start * 512, count * 512))
    return out


@pytest.mark.parametrize("fmt", ["erofs", "ext4"])
def test_image_is_reproducible_across_dirs_and_umask(fmt, tmp_path):
    _need("mkfs.erofs" if fmt == "erofs" else "mkfs.ext4")
    (tmp_path / "a").mkdir()
    (tmp_path / "b-longer-name").mkdir()
    one = rfs.build_rootfs(_spec(fmt), tmp_path / "a")
    old = os.umask(0o077)
    try:
        two = rfs.build_rootfs(_spec(fmt), tmp_path / "b-longer-name")
    finally:
        os.umask(old)
    assert hashlib.sha256(one.image).digest() == hashlib.sha256(two.image).digest()
    assert one.root_hash == two.root_hash
    other = rfs.build_rootfs(_spec(fmt, seed="cd" * 32), tmp_path / "c")
    assert other.root_hash != one.root_hash and other.fs_uuid != one.fs_uuid
    assert other.verity.params.salt != one.verity.params.salt


@pytest.mark.parametrize("fmt", ["erofs", "ext4"])
def test_layout_is_katas_partitioned_image(fmt, tmp_path):
    """image_builder.sh (kata-containers 4.1.0, ddcb1ad8d23cbb4323f86c209f132b89592902df),
    MEASURED_ROOTFS=yes: create_disk's two primary partitions, p1 from 1 MiB (rootfs_start) to
    hash_start = floor(0.99 * size in MiB) MiB and bootable ('set 1 boot on'), p2 from
    hash_start to the last sector (-1s); ext4 sizes a multiple of IMAGE_SIZE_ALIGNMENT_MB=128;
    erofs ((size + 1 MiB) / 1 MiB) + 2, then * 100 / 99 + 1; the verity tree over all of p1."""
    _need("mkfs.erofs" if fmt == "erofs" else "mkfs.ext4")
    r = rfs.build_rootfs(_spec(fmt), tmp_path)
    (p1, n1), (p2, n2) = _partitions(r.image)
    size_mib = len(r.image) // (1 << 20)
    assert len(r.image) % (1 << 20) == 0
    if fmt == "ext4":
        assert size_mib % 128 == 0
    else:
        assert size_mib == (((len(r.fs) + (1 << 20)) // (1 << 20)) + 2) * 100 // 99 + 1
    assert p1 == 1 << 20 and p2 == (size_mib * 99 // 100) << 20 and p2 == p1 + n1
    assert p2 + n2 == len(r.image)
    assert r.image[446] == 0x80 and r.image[462] == 0     # p1 bootable, p2 not
    data = r.image[p1:p1 + n1]
    assert data[:len(r.fs)] == r.fs and not data[len(r.fs):].strip(b"\0")
    tree = hash_tree(data, VerityParams(salt=r.verity.params.salt))
    assert r.image[p2:p2 + len(tree.tree)] == tree.tree
    assert not r.image[p2 + len(tree.tree):].strip(b"\0")
    assert tree.root_hash.hex() == r.root_hash
    assert r.verity.data_blocks == n1 // 4096
    # build_kernel_verity_params' format
    assert r.kernel_verity_params() == (
        f"root_hash={r.root_hash},salt={r.verity.params.salt.hex()},data_blocks={n1 // 4096},"
        "data_block_size=4096,hash_block_size=4096")
    v = r.cmdline_variables()
    assert v["verity_params"] == (
        f'dm-mod.create="dm-verity,,,ro,0 {n1 // 512} verity 1 /dev/vda1 /dev/vda2 4096 4096 '
        f'{n1 // 4096} 0 sha256 {r.root_hash} {r.verity.params.salt.hex()}" root=/dev/dm-0 '
        f"rootfstype={fmt} ro")


@pytest.mark.parametrize("fmt", ["erofs", "ext4"])
def test_katas_get_kernel_root_params_reproduce_the_table(fmt, tmp_path):
    """The Kata model's GetKernelRootParams, fed this image's kernel_verity_params, gives the
    dm-verity table the chain check requires on the command line, byte for byte."""
    from builder.kata.go_runtime import get_kernel_root_params, serialize_params
    _need("mkfs.erofs" if fmt == "erofs" else "mkfs.ext4")
    r = rfs.build_rootfs(_spec(fmt), tmp_path)
    params = serialize_params(get_kernel_root_params(fmt, True, False, r.kernel_verity_params()))
    assert params[0] == r.dm_mod_create()
    assert params[1:] == ["root=/dev/dm-0", "rootflags=" + (
        "data=ordered,errors=remount-ro ro" if fmt == "ext4" else "ro"), f"rootfstype={fmt}"]


def _build_in_child(fmt: str, work, umask: int, tz: str):
    """build_rootfs in a fresh interpreter (its own umask, TZ and clock); returns the image."""
    import sys
    code = ("import os, sys, time; sys.path.insert(0, sys.argv[1]); time.tzset()\n"
            "from builder.stages import rootfs as rfs\n"
            "from builder.stages.tree import Dir, File\n"
            f"spec = rfs.RootfsSpec({fmt!r}, {AGENT!r}, (File('/etc/hostname', b'kata\\n'), "
            "File('/usr/share/x/data', b'd' * 9000, 0o600)), (Dir('/var/lib/empty'),), "
            f"{EPOCH}, 'ab' * 32)\n"
            "r = rfs.build_rootfs(spec, __import__('pathlib').Path(sys.argv[2]))\n"
            "open(sys.argv[3], 'wb').write(r.image)\n")
    out = work.with_suffix(".img")
    env = {**os.environ, "TZ": tz}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", f"import os; os.umask({umask}); exec({code!r})",
                    repo, str(work), str(out)], check=True, env=env, capture_output=True)
    return out.read_bytes()


@pytest.mark.parametrize("fmt", ["ext4", "erofs"])
def test_image_is_identical_when_built_apart_in_time(fmt, tmp_path):
    """Two images built more than a second apart (the staged files' ctime differs: mke2fs -d
    copies st_ctime), with different umask and TZ, are identical byte for byte."""
    import time
    _need("mkfs.erofs" if fmt == "erofs" else "mkfs.ext4")
    _need("debugfs")
    one = _build_in_child(fmt, tmp_path / "one", 0o022, "UTC")
    time.sleep(2.1)
    two = _build_in_child(fmt, tmp_path / "two-other", 0o077, "Pacific/Kiritimati")
    assert len(one) == len(two)
    if one != two:
        first = next(i for i in range(len(one)) if one[i] != two[i])
        pytest.fail(f"images differ first at byte {first} (p1 offset {first - (1 << 20)})")


def test_veritysetup_verifies_the_partitions(tmp_path):
    """veritysetup (independent) accepts p2 as the tree of p1 with the cmdline's root hash."""
    _need("veritysetup")
    _need("mkfs.erofs")
    r = rfs.build_rootfs(_spec("erofs"), tmp_path)
    (p1, n1), (p2, n2) = _partitions(r.image)
    assert r.verity.data_blocks * 4096 == n1
    (tmp_path / "p1").write_bytes(r.image[p1:p1 + n1])
    (tmp_path / "p2").write_bytes(r.image[p2:p2 + n2])
    cp = subprocess.run(["veritysetup", "verify", "--no-superblock", "--hash=sha256",
                         f"--salt={r.verity.params.salt.hex()}",
                         f"--data-blocks={r.verity.data_blocks}", str(tmp_path / "p1"),
                         str(tmp_path / "p2"), r.root_hash], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr


def test_erofs_contents_agent_modes_owner_times(tmp_path):
    _need("mkfs.erofs")
    if shutil.which("fsck.erofs") is None:
        pytest.skip("fsck.erofs is not installed (erofs-utils)")
    r = rfs.build_rootfs(_spec("erofs"), tmp_path / "w")
    (tmp_path / "fs.img").write_bytes(r.fs)
    ex = tmp_path / "x"
    subprocess.run(["fsck.erofs", f"--extract={ex}", str(tmp_path / "fs.img")], check=True,
                   capture_output=True)
    assert (ex / "sbin" / "init").read_bytes() == AGENT
    assert (ex / "etc" / "hostname").read_bytes() == b"kata\n"
    assert (ex / "usr/share/x/data").stat().st_mode & 0o7777 == 0o600
    assert (ex / "sbin" / "init").stat().st_mode & 0o7777 == 0o755
    for d in ("dev", "proc", "sys", "var/lib/empty"):
        assert (ex / d).is_dir()
    assert (ex / "sbin" / "init").stat().st_mtime == EPOCH


def test_ext4_contents_and_fsck(tmp_path):
    _need("mkfs.ext4")
    r = rfs.build_rootfs(_spec("ext4"), tmp_path / "w")
    img = tmp_path / "fs.img"
    img.write_bytes(r.fs)
    assert subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True).returncode == 0
    cat = subprocess.run(["debugfs", "-R", "cat /sbin/init", str(img)], capture_output=True)
    assert cat.stdout == AGENT
    stat = subprocess.run(["debugfs", "-R", "stat /etc/hostname", str(img)],
                          capture_output=True, text=True).stdout
    assert "User:     0   Group:     0" in stat and "2025" in stat


def _fake(tmp_path) -> rfs.Rootfs:
    tree = hash_tree(bytes(4096 * 4), VerityParams(salt=b"\x01" * 32))
    return rfs.Rootfs(b"", bytes(4096 * 4), tree, "u", "erofs")


@pytest.mark.parametrize("cmdline,msg", [
    ("console=ttyS0", "does not carry the rootfs' dm-verity table"),
    ("{v} root=/dev/vda1", "root must be the verity device"),
    ("{v} init=/bin/sh", "init=/bin/sh"),
    ('{v} dm-mod.create="x,,,ro,0 8 linear /dev/vda1 0"', "other device-mapper tables"),
])
def test_cmdline_must_pin_the_rootfs(tmp_path, cmdline, msg):
    r = _fake(tmp_path)
    with pytest.raises(CCBuildError, match=msg):
        chain.check_cmdline(cmdline.format(v=r.root_params()), rootfs=r)
    chain.check_cmdline("console=ttyS0 " + r.root_params() + " quiet", rootfs=r)


def test_recipe_refuses_unmeasured_rootfs_and_initrd_files(tmp_path):
    from builder.recipe import RecipeError, load_recipe
    base = ("platform: snp\nfirmware: {source: {path: fw.fd}}\nagent: {build: test-agent}\n"
            "kernel: {source: {path: k}}\n")
    (tmp_path / "a.yaml").write_text(base + "rootfs: {format: erofs, verity: false}\n")
    with pytest.raises(RecipeError, match=r"rootfs\.verity: a rootfs without dm-verity"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text(
        base + "rootfs: {format: ext4}\ninitrd: {files: [{path: /x, content: y}]}\n")
    with pytest.raises(RecipeError, match=r"initrd: a recipe with a rootfs boots without"):
        load_recipe(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text(base + "rootfs: {files: [{path: /sbin/init, content: x}]}\n")
    with pytest.raises(RecipeError, match=r"rootfs\.files\[0\]\.path: /sbin/init is the agent"):
        load_recipe(tmp_path / "c.yaml")


# -- the verity recipe, built and booted (slow, boot) ----------------------------------------


@pytest.fixture(scope="session")
def verity_out(recipe_file, tmp_path_factory):
    from builder.build import BuildOptions, build
    out = tmp_path_factory.mktemp("snp-verity") / "out"
    return build(recipe_file("snp-verity"), BuildOptions(out=out, jobs=2))


@pytest.mark.slow
def test_verity_build_outputs_and_chain(verity_out):
    files = verity_out.files
    assert "initrd.img" not in files and "rootfs.img" in files
    chain = verity_out.manifest["chain"]
    assert chain["rootfs"] == hashlib.sha256(files["rootfs.img"]).hexdigest()
    cmdline = files["cmdline.txt"].decode()
    assert f"sha256 {chain['verity_root_hash']} " in cmdline and "root=/dev/dm-0" in cmdline
    (p1, n1), _ = _partitions(files["rootfs.img"])
    assert hash_tree(files["rootfs.img"][p1:p1 + n1],
                     VerityParams(salt=bytes.fromhex(cmdline.split('"')[1].split()[-1]))
                     ).root_hash.hex() == chain["verity_root_hash"]


@pytest.mark.slow
def test_verity_rebuild_is_bit_identical(verity_out, recipe_file, tmp_path):
    from builder.build import BuildOptions, build
    again = build(recipe_file("snp-verity"), BuildOptions(out=tmp_path / "out", jobs=2))
    assert again.files["rootfs.img"] == verity_out.files["rootfs.img"]
    assert again.manifest["chain"]["verity_root_hash"] == \
        verity_out.manifest["chain"]["verity_root_hash"]
    assert again.measurements == verity_out.measurements


@pytest.mark.slow
@pytest.mark.boot
def test_verity_recipe_boots_the_agent(verity_out, tmp_path):
    import guestboot
    b = guestboot.boot(verity_out.out, tmp_path / "serial.log")
    serial = guestboot.serial_text(b)
    assert b.ready, b.reason + serial[-3000:]
    assert "-initrd" not in b.argv and any("virtio-blk" in a for a in b.argv)
    assert "cmdline " + verity_out.files["cmdline.txt"].decode() in serial
    print(f"\nverity rootfs boot to ready: {b.seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.boot
def test_one_changed_byte_makes_the_kernel_refuse_the_block(verity_out, tmp_path):
    """Flip one byte of the agent's data inside p1: dm-verity refuses that block, the kernel
    cannot run /sbin/init, and the agent never reports ready."""
    import guestboot
    image = bytearray(verity_out.files["rootfs.img"])
    (p1, n1), _ = _partitions(bytes(image))
    agent_sha = verity_out.manifest["chain"]["agent"]
    fs = bytes(image[p1:p1 + n1])
    # the agent's first full block: erofs stores plain file data block aligned
    off = next(o for o in range(0, len(fs), 4096) if fs[o:o + 4] == b"\x7fELF")
    image[p1 + off + 1000] ^= 0x01
    b = guestboot.boot_replaced(verity_out.out, tmp_path, "rootfs.img", bytes(image),
                                tmp_path / "serial.log", timeout=180)
    serial = guestboot.serial_text(b)
    assert not b.ready, "the guest ran a modified agent"
    assert "verity" in serial and "corrupted" in serial, b.reason + serial[-3000:]
    assert agent_sha not in serial


@pytest.mark.slow
def test_verity_launch_snippets_attach_the_rootfs_not_an_initrd(verity_out, tmp_path):
    """qemu-snp.sh of a verity build attaches rootfs.img read-only and passes no -initrd, and
    each printed digest is what sev-snp-measure computes from the parsed arguments (no initrd:
    the hashes table holds the SHA-256 of an empty one)."""
    import tomllib

    from sevsnpmeasure import guest, vcpu_types
    from sevsnpmeasure.vmm_types import VMMType
    from helpers import parse_script, qemu_options as options

    out = tmp_path / "out"
    out.mkdir()
    for name, data in verity_out.files.items():
        (out / name).write_bytes(data)
    configs = parse_script((out / "qemu-snp.sh").read_text(), out)
    assert configs
    for c in configs:
        o = options(c["argv"])
        assert "-initrd" not in o
        assert o["-drive"] == [f"file={out}/rootfs.img,format=raw,if=none,id=rootfs,readonly=on"]
        assert o["-device"] == ["virtio-blk-pci,drive=rootfs"]
        digest = guest.snp_calc_launch_digest(
            int(o["-smp"][0]), vcpu_types.CPU_SIGS[o["-cpu"][0]], o["-bios"][0],
            o["-kernel"][0], None, o["-append"][0], 0x1, "", VMMType.QEMU)
        assert digest.hex() == c["values"]["launch_digest"]
    kata = tomllib.loads((out / "kata-configuration-qemu-snp.toml").read_text())
    q = kata["hypervisor"]["qemu"]
    assert q["image"] == "@ARTIFACTS@/rootfs.img" and q["initrd"] == ""


@pytest.mark.parametrize("path,mode", [("/tmp", "1777"), ("/proc", "0555"), ("/root", "0700"),
                                       ("/sbin", "0755")])
def test_rootfs_default_dirs_have_the_initrds_modes(tmp_path, path, mode):
    """One tree spec (stages/tree.py): the rootfs' default directories carry the same modes as
    the initrd's (read back from the image with debugfs, an independent reader)."""
    _need("mkfs.ext4")
    r = rfs.build_rootfs(_spec("ext4"), tmp_path / "w")
    img = tmp_path / "fs.img"
    img.write_bytes(r.fs)
    stat = subprocess.run(["debugfs", "-R", f"stat {path}", str(img)],
                          capture_output=True, text=True).stdout
    import re
    m = re.search(r"Mode:\s+(\d+)", stat)
    assert m and int(m.group(1), 8) == int(mode, 8), stat[:300]
