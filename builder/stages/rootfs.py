"""Measured root file system: a read-only erofs or ext4 image holding the agent (``/sbin/init``,
as Kata's ``AGENT_INIT=yes`` image) and the recipe's files, plus its dm-verity hash tree, laid
out as Kata's guest image is and booted as Kata boots it: no initrd, the kernel maps the root
with ``dm-mod.create=`` (DM_INIT) from the measured command line.

``rootfs.img`` (one file, attach it as the first virtio-blk disk, read-only)::

    LBA 0            MBR (disk signature derived from the recipe), two type-0x83 partitions
    1 MiB            p1 /dev/vda1: the file system image, padded to 4096-byte blocks
    after p1         p2 /dev/vda2: the dm-verity hash tree (format 1, sha256, 4096/4096, no
                     superblock: the command line carries every parameter)

Reproducible: every file's mode is fixed, owner root, every timestamp ``source_date_epoch``
(erofs ``-T``, ext4 ``E2FSPROGS_FAKE_TIME`` plus file mtimes); the file system UUID, the ext4
directory hash seed, the verity salt and the MBR signature are derived from the recipe digest,
never random. mkfs reads a staging directory whose walk order does not matter to either tool's
output (both sort directory entries themselves).

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
P1_START_LBA = 2048             # 1 MiB, as partitioning tools align the first partition
SECTOR = 512
FORMATS = ("erofs", "ext4")


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
                "kata_verity_params": self.verity.kata_params(),
                "root_hash": self.root_hash, "verity_salt": self.verity.params.salt.hex()}

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


def make_fs(spec: RootfsSpec, work: Path, log_path: Path | None = None) -> tuple[bytes, str]:
    """The file system image (padded to whole blocks) and its UUID."""
    if spec.format not in FORMATS:
        raise CCBuildError(f"unknown rootfs format {spec.format!r}", "rootfs.format")
    root = work / "root"
    root.mkdir(parents=True)
    _stage(spec, root)
    img = work / "fs.img"
    fs_uuid = derived_uuid(spec.seed, "fs uuid")
    epoch = str(spec.source_date_epoch)
    if spec.format == "erofs":
        run(["mkfs.erofs", "--quiet", f"-T{epoch}", "--all-root", f"-U{fs_uuid}", "-x-1",
             img, root], log_path=log_path, what="mkfs.erofs")
    else:
        size = max(8 << 20, 2 * _content_size(root) + (4 << 20))
        size = -(-size // (1 << 20)) << 20
        seed = derived_uuid(spec.seed, "ext4 hash seed")
        run(["mkfs.ext4", "-q", "-F", "-t", "ext4", "-b", str(BLOCK_SIZE), "-L", "rootfs",
             "-U", fs_uuid, "-E", f"hash_seed={seed},root_owner=0:0,lazy_itable_init=0",
             "-O", "^has_journal", "-m", "0", "-d", root, img, f"{size // 1024}k"],
            env={"E2FSPROGS_FAKE_TIME": epoch, "SOURCE_DATE_EPOCH": epoch, "TZ": "UTC"},
            log_path=log_path, what="mkfs.ext4")
    data = img.read_bytes()
    if len(data) % BLOCK_SIZE:
        data += bytes(BLOCK_SIZE - len(data) % BLOCK_SIZE)
    return data, fs_uuid


# -- the disk image ------------------------------------------------------------------------------
def mbr(disk_id: bytes, parts: list[tuple[int, int]]) -> bytes:
    """A classic MBR with type-0x83 partitions given as (start LBA, sectors)."""
    sector = bytearray(SECTOR)
    sector[440:444] = disk_id
    for i, (start, count) in enumerate(parts):
        struct.pack_into("<B3sB3sII", sector, 446 + 16 * i, 0, b"\xfe\xff\xff", 0x83,
                         b"\xfe\xff\xff", start, count)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def disk_image(fs: bytes, tree: bytes, disk_id: bytes) -> bytes:
    p1 = (P1_START_LBA, len(fs) // SECTOR)
    p2 = (P1_START_LBA + p1[1], max(len(tree), BLOCK_SIZE) // SECTOR)
    tree = tree or bytes(BLOCK_SIZE)       # a one-block file system has no tree levels
    head = mbr(disk_id, [p1, p2])
    return head + bytes(P1_START_LBA * SECTOR - len(head)) + fs + tree


def build_rootfs(spec: RootfsSpec, work: Path, log_path: Path | None = None) -> Rootfs:
    fs, fs_uuid = make_fs(spec, work, log_path)
    tree = hash_tree(fs, VerityParams(salt=verity_salt(spec.seed)))
    image = disk_image(fs, tree.tree, derive(spec.seed, "mbr id", 4))
    return Rootfs(image, fs, tree, fs_uuid, spec.format)


def build_rootfs_tmp(store, spec: RootfsSpec) -> Rootfs:
    work = store.tmpdir()
    try:
        return build_rootfs(spec, work, store.log_path("rootfs"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
