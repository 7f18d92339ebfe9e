"""Measured root file system: a read-only ext4 or erofs image holding the agent (``/sbin/init``,
as Kata's ``AGENT_INIT=yes`` image) and the recipe's files, plus its dm-verity hash tree, laid
out as Kata's ``tools/osbuilder/image-builder/image_builder.sh`` lays out a measured image
(``MEASURED_ROOTFS=yes``, ``SKIP_DAX_HEADER=yes``; kata-containers 4.1.0,
ddcb1ad8d23cbb4323f86c209f132b89592902df, ``create_disk``, ``format_loop``,
``create_erofs_rootfs_image``, ``setup_verity``) and booted as Kata boots it: no initrd, the
kernel maps the root with ``dm-mod.create=`` (DM_INIT) from the measured command line.

``rootfs.img`` (one file, attach it as the first virtio-blk disk, read-only)::

    LBA 0      MBR (``parted mklabel msdos``; disk signature derived from the recipe), two
               primary type-0x83 partitions, p1 bootable (``set 1 boot on``)
    1 MiB      p1 /dev/vda1: the file system, up to ``floor(0.99 * size)`` MiB (``hash_start``)
    hash_start p2 /dev/vda2: the dm-verity hash tree of all of p1 (``veritysetup format
               --no-superblock p1 p2``: format 1, sha256, 4096/4096), to the last sector

Sizes as image_builder.sh computes them: ext4 images are a multiple of
``IMAGE_SIZE_ALIGNMENT_MB`` (128) MiB and mkfs.ext4 formats all of p1 (``-b 4096``, the
journal, 3 % reserved blocks as ``tune2fs -m 3``); an erofs image is ``((size + 1 MiB) / 1 MiB)
+ 2`` MiB, scaled by ``* 100 / 99 + 1`` for the hash partition, and p1 holds the erofs image
followed by zeros (``dd``). Kata's ``kernel_verity_params`` (``build_kernel_verity_params``:
``root_hash=...,salt=...,data_blocks=...,data_block_size=...,hash_block_size=...``) are
:meth:`Rootfs.kernel_verity_params`. Not reproduced: the NVDIMM/DAX header (a confidential
guest uses virtio-blk; the measured images Kata ships set ``SKIP_DAX_HEADER=yes`` for erofs),
parted's CHS fields (LBA-only here) and ``fsck.ext4 -D`` (directory re-indexing).

Reproducible: every file's mode is fixed, owner root, every timestamp ``source_date_epoch``:
erofs ``-T``; ext4 ``E2FSPROGS_FAKE_TIME`` for what mke2fs stamps itself, and then every
inode's atime/ctime/mtime/crtime set with debugfs, because ``mke2fs -d`` copies the staged
files' ``st_ctime`` (the moment this build wrote them, which no utime() can change). mke2fs
reads a fixed configuration (``MKE2FS_CONFIG``: e2fsprogs' own defaults), not the host's
/etc/mke2fs.conf. The file system UUID, the ext4 directory hash seed, the verity salt and the
MBR signature are derived from the recipe digest, never random. mkfs reads a staging directory
whose walk order does not matter to either tool's output (both sort directory entries).

The hash tree is computed by :mod:`builder.formats.verity` (tests compare it with veritysetup).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from builder.errors import CCBuildError
from builder.formats.verity import BLOCK_SIZE, VerityParams, VerityTree, hash_tree
from builder.run import run
from builder.stages import tree
from builder.stages.tree import Dir, File

AGENT_PATH = "/sbin/init"
DEFAULT_DIRS = tree.DEFAULT_DIRS + (Dir("/sbin"),)
DATA_DEV, HASH_DEV = "/dev/vda1", "/dev/vda2"
ROOT_DEV = "/dev/dm-0"
P1_START_LBA = 2048             # 1 MiB: image_builder.sh rootfs_start=1 (MiB)
SECTOR = 512
MIB = 1 << 20
FORMATS = ("erofs", "ext4")
IMAGE_SIZE_ALIGNMENT_MB = 128   # image_builder.sh: ext4 image sizes are a multiple of this
RESERVED_BLOCKS_PERCENTAGE = 3  # image_builder.sh reserved_blocks_percentage (tune2fs -m 3)

# e2fsprogs 1.47's misc/mke2fs.conf.in (what Debian installs as /etc/mke2fs.conf), the defaults
# Kata's build container formats with; given to mke2fs explicitly so the host's file cannot
# change the image.
MKE2FS_CONF = """[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\tsmall = {
\t\tblocksize = 1024
\t\tinode_ratio = 4096
\t}
\tfloppy = {
\t\tblocksize = 1024
\t\tinode_ratio = 8192
\t}
\tbig = {
\t\tinode_ratio = 32768
\t}
\thuge = {
\t\tinode_ratio = 65536
\t}
"""


@dataclass(frozen=True)
class RootfsSpec:
    format: str
    agent: bytes
    files: tuple[File, ...] = ()
    dirs: tuple[Dir, ...] = ()    # beyond DEFAULT_DIRS
    source_date_epoch: int = 0
    seed: str = ""              # the recipe digest: UUIDs, hash seed, salt and MBR id


@dataclass(frozen=True)
class Rootfs:
    image: bytes                # rootfs.img: MBR + p1 file system + p2 hash tree
    fs: bytes                   # the p1 file system image (padded)
    verity: VerityTree
    fs_uuid: str
    format: str

    @property
    def root_hash(self) -> str:
        return self.verity.root_hash.hex()

    def cmdline_variables(self) -> dict[str, str]:
        """Template variables: ``verity_params`` is what the measured command line must carry."""
        return {"verity_params": self.root_params(),
                "kata_verity_params": self.kernel_verity_params(),
                "root_hash": self.root_hash, "verity_salt": self.verity.params.salt.hex()}

    def kernel_verity_params(self) -> str:
        """Kata's ``kernel_verity_params`` for this image (image_builder.sh
        ``build_kernel_verity_params``)."""
        return self.verity.kata_params()

    def dm_mod_create(self) -> str:
        return self.verity.dm_mod_create(DATA_DEV, HASH_DEV)

    def root_params(self) -> str:
        return f"{self.dm_mod_create()} root={ROOT_DEV} rootfstype={self.format} ro"


# -- derived identifiers ------------------------------------------------------------------------
def derive(seed: str, label: str, n: int) -> bytes:
    return hashlib.sha256(f"ccbuild rootfs {label}\0{seed}".encode()).digest()[:n]


def derived_uuid(seed: str, label: str) -> str:
    return str(uuid.UUID(bytes=derive(seed, label, 16), version=4))


def verity_salt(seed: str) -> bytes:
    return derive(seed, "verity salt", 32)


# -- staging and mkfs --------------------------------------------------------------------------
def _stage(spec: RootfsSpec, root: Path) -> None:
    """Write the tree into ``root`` with its modes and ``source_date_epoch`` times (mkfs copies
    them; owners are set by mkfs: erofs --all-root, ext4 root_owner and -d as this user)."""
    entries: dict[str, tuple[bytes | None, int]] = {}
    for d in DEFAULT_DIRS + tuple(spec.dirs):
        entries[tree.image_path(d.path, "rootfs")] = (None, tree.check_mode(d.path, d.mode, "rootfs"))
    for f in spec.files:
        entries[tree.image_path(f.path, "rootfs")] = (f.data, tree.check_mode(f.path, f.mode, "rootfs"))
    entries[tree.image_path(AGENT_PATH)] = (spec.agent, 0o755)
    for p, (data, mode) in sorted(entries.items()):
        target = root / p
        target.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            target.mkdir(exist_ok=True)
        else:
            if target.is_dir():
                raise CCBuildError(f"/{p} is both a directory and a file", "rootfs.files")
            target.write_bytes(data)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            q = Path(dirpath) / n
            rel = q.relative_to(root).as_posix()
            os.chmod(q, entries[rel][1] if rel in entries else 0o755)
            os.utime(q, (spec.source_date_epoch, spec.source_date_epoch))
    os.chmod(root, 0o755)
    os.utime(root, (spec.source_date_epoch, spec.source_date_epoch))


def _content_size(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        total += BLOCK_SIZE * (len(dirnames) + 1)
        for n in filenames:
            total += -(-(Path(dirpath) / n).stat().st_size // BLOCK_SIZE) * BLOCK_SIZE
    return total


def make_fs(spec: RootfsSpec, work: Path, log_path: Path | None = None,
            size: int | None = None) -> tuple[bytes, str]:
    """The file system image (padded to whole blocks; ext4: exactly ``size`` bytes, default
    :func:`ext4_partition_size`) and its UUID."""
    if spec.format not in FORMATS:
        raise CCBuildError(f"unknown rootfs format {spec.format!r}", "rootfs.format")
    root = work / "root"
    root.mkdir(parents=True)
    _stage(spec, root)
    img = work / "fs.img"
    fs_uuid = derived_uuid(spec.seed, "fs uuid")
    epoch = str(spec.source_date_epoch)
    env = {"E2FSPROGS_FAKE_TIME": epoch, "SOURCE_DATE_EPOCH": epoch, "TZ": "UTC"}
    if spec.format == "erofs":
        run(["mkfs.erofs", "--quiet", f"-T{epoch}", "--all-root", f"-U{fs_uuid}", "-x-1",
             img, root], log_path=log_path, what="mkfs.erofs")
    else:
        if size is None:
            size = ext4_partition_size(_content_size(root))
        conf = work / "mke2fs.conf"
        conf.write_text(MKE2FS_CONF)
        seed = derived_uuid(spec.seed, "ext4 hash seed")
        run(["mkfs.ext4", "-q", "-F", "-t", "ext4", "-b", str(BLOCK_SIZE),
             "-m", str(RESERVED_BLOCKS_PERCENTAGE), "-U", fs_uuid,
             "-E", f"hash_seed={seed},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
             "-d", root, img, f"{size // 1024}k"],
            env={**env, "MKE2FS_CONFIG": str(conf)}, log_path=log_path, what="mkfs.ext4")
        _fix_ext4_times(img, root, spec.source_date_epoch, env, work, log_path)
    data = img.read_bytes()
    if len(data) % BLOCK_SIZE:
        data += bytes(BLOCK_SIZE - len(data) % BLOCK_SIZE)
    return data, fs_uuid


def _fix_ext4_times(img: Path, root: Path, epoch: int, env: dict, work: Path,
                    log_path: Path | None) -> None:
    """Every inode mke2fs copied from the staging directory gets ``epoch`` as atime, ctime,
    mtime and crtime (nanoseconds 0): ``mke2fs -d`` takes ``st_ctime`` from the staged file,
    i.e. the wall clock of this build. debugfs runs with the same fake time, so the superblock
    it writes back is stamped with ``epoch`` too."""
    paths = ["/"]
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames + filenames):
            paths.append("/" + (Path(dirpath) / n).relative_to(root).as_posix())
    lines = []
    for p in sorted(paths):
        for f in ("atime", "ctime", "mtime", "crtime"):
            lines.append(f'set_inode_field "{p}" {f} @{epoch}')
        for f in ("atime_extra", "ctime_extra", "mtime_extra", "crtime_extra"):
            lines.append(f'set_inode_field "{p}" {f} 0')
    script = work / "debugfs.cmds"
    script.write_text("\n".join(lines) + "\n")
    run(["debugfs", "-w", "-f", script, img], env=env, log_path=log_path, what="debugfs")


def ext4_partition_size(content: int) -> int:
    """p1's size for ``content`` bytes of files: the image is the smallest multiple of 128 MiB
    (image_builder.sh ``calculate_img_size``) whose p1 holds the content twice over plus the
    journal and reserved blocks (image_builder.sh searches with mounts and ``df``; the layout,
    not that search, is reproduced), then p1 = [1 MiB, hash_start)."""
    need = 2 * content + 64 * MIB
    img_mib = IMAGE_SIZE_ALIGNMENT_MB
    while (hash_start_mib(img_mib) - 1) * MIB < need:
        img_mib += IMAGE_SIZE_ALIGNMENT_MB
    return (hash_start_mib(img_mib) - 1) * MIB


def hash_start_mib(img_mib: int) -> int:
    """create_disk: ``hash_start=$(echo img_size | awk '{print $1 * 0.99}' | cut -d. -f1)``."""
    return img_mib * 99 // 100


def erofs_image_mib(fs_size: int) -> int:
    """create_erofs_rootfs_image: ``((size + 1048576) / 1048576) + 1 + rootfs_start``, then with
    MEASURED_ROOTFS ``img_size_mb * 100 / 99 + 1``."""
    mib = (fs_size + MIB) // MIB + 1 + 1
    return mib * 100 // 99 + 1


# -- the disk image ------------------------------------------------------------------------------
def mbr(disk_id: bytes, parts: list[tuple[int, int]], boot: int | None = 0) -> bytes:
    """A classic MBR with type-0x83 partitions given as (start LBA, sectors); partition
    ``boot`` (index) carries the boot flag (parted ``set 1 boot on``)."""
    sector = bytearray(SECTOR)
    sector[440:444] = disk_id
    for i, (start, count) in enumerate(parts):
        struct.pack_into("<B3sB3sII", sector, 446 + 16 * i, 0x80 if i == boot else 0,
                         b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", start, count)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def disk_image(p1: bytes, tree: bytes, disk_id: bytes, img_mib: int) -> bytes:
    """MBR + p1 (exactly [1 MiB, hash_start)) + p2 (the hash tree, zero-padded to the end)."""
    hs = hash_start_mib(img_mib) * MIB
    if P1_START_LBA * SECTOR + len(p1) != hs:
        raise AssertionError("p1 does not end at hash_start")   # a code bug
    total = img_mib * MIB
    if hs + len(tree) > total:
        raise CCBuildError(f"the hash tree ({len(tree)} bytes) does not fit the hash partition",
                           "rootfs")
    head = mbr(disk_id, [(P1_START_LBA, len(p1) // SECTOR), (hs // SECTOR, (total - hs) // SECTOR)])
    return head + bytes(P1_START_LBA * SECTOR - len(head)) + p1 + tree + \
        bytes(total - hs - len(tree))


def build_rootfs(spec: RootfsSpec, work: Path, log_path: Path | None = None) -> Rootfs:
    fs, fs_uuid = make_fs(spec, work, log_path)
    if spec.format == "ext4":
        img_mib = next(m for m in range(IMAGE_SIZE_ALIGNMENT_MB, 1 << 24, IMAGE_SIZE_ALIGNMENT_MB)
                       if (hash_start_mib(m) - 1) * MIB == len(fs))
        p1 = fs
    else:
        img_mib = erofs_image_mib(len(fs))
        p1 = fs + bytes((hash_start_mib(img_mib) - 1) * MIB - len(fs))
    tree = hash_tree(p1, VerityParams(salt=verity_salt(spec.seed)))
    image = disk_image(p1, tree.tree, derive(spec.seed, "mbr id", 4), img_mib)
    return Rootfs(image, fs, tree, fs_uuid, spec.format)


def build_rootfs_tmp(store, spec: RootfsSpec) -> Rootfs:
    work = store.tmpdir()
    try:
        return build_rootfs(spec, work, store.log_path("rootfs"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
