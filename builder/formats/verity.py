"""dm-verity hash tree, format (version) 1, as ``veritysetup format --no-superblock`` writes it.

Computed here rather than by running veritysetup so the builder needs no device-mapper tool and
the tree is a pure function of (data, salt, geometry) that tests can compare, byte for byte and
by root hash, with ``veritysetup`` (cryptsetup-bin) as an independent implementation.

The tree (Documentation/admin-guide/device-mapper/verity.rst; cryptsetup lib/verity/verity_hash.c):

* the data is ``data_blocks`` blocks of ``data_block_size`` bytes;
* a block's digest is ``H(salt || block)`` (version 1 puts the salt first; version 0 after);
* level 0 holds the digests of the data blocks, packed ``hash_block_size // digest_size`` to a
  hash block and zero padded; level i+1 holds the digests of level i's hash blocks, until a
  level fits in one block. The number of levels is the smallest ``L`` with
  ``(data_blocks - 1) >> (L * bits) == 0`` where ``bits = log2(hashes per block)``;
* on disk the top level comes first, level 0 last;
* the root hash is ``H(salt || top hash block)`` (with no levels, of the single data block).

The kernel table for it (dm-mod.create= / dmsetup)::

    <dev> <hash_dev> <data_block_size> <hash_block_size> <data_blocks> <hash_start_block>
    <algorithm> <root_hash> <salt>

preceded by ``verity 1`` and followed by nothing (no optional arguments).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from builder.errors import CCBuildError

VERSION = 1
ALGORITHM = "sha256"
BLOCK_SIZE = 4096
SECTOR = 512


@dataclass(frozen=True)
class VerityParams:
    salt: bytes
    data_block_size: int = BLOCK_SIZE
    hash_block_size: int = BLOCK_SIZE
    algorithm: str = ALGORITHM


@dataclass(frozen=True)
class VerityTree:
    params: VerityParams
    data_blocks: int
    root_hash: bytes
    tree: bytes           # the hash area (no superblock): top level first

    @property
    def data_sectors(self) -> int:
        return self.data_blocks * self.params.data_block_size // SECTOR

    def table(self, data_dev: str, hash_dev: str, hash_start_block: int = 0) -> str:
        """The dm-verity target line (``0 <sectors> verity 1 ...``)."""
        p = self.params
        return (f"0 {self.data_sectors} verity {VERSION} {data_dev} {hash_dev} "
                f"{p.data_block_size} {p.hash_block_size} {self.data_blocks} {hash_start_block} "
                f"{p.algorithm} {self.root_hash.hex()} {p.salt.hex() or '-'}")

    def dm_mod_create(self, data_dev: str, hash_dev: str, name: str = "dm-verity") -> str:
        """``dm-mod.create="<name>,,,ro,<table>"`` for DM_INIT, the form Kata's image boot uses."""
        return f'dm-mod.create="{name},,,ro,{self.table(data_dev, hash_dev)}"'

    def kata_params(self) -> str:
        """Kata's ``kernel_verity_params`` (runtime-rs configuration.toml)."""
        p = self.params
        return (f"root_hash={self.root_hash.hex()},salt={p.salt.hex()},"
                f"data_blocks={self.data_blocks},data_block_size={p.data_block_size},"
                f"hash_block_size={p.hash_block_size}")


def _levels(data_blocks: int, per_block: int) -> list[int]:
    """Blocks per level, level 0 first."""
    bits = per_block.bit_length() - 1
    n = 0
    while bits * n < 64 and (data_blocks - 1) >> (bits * n):
        n += 1
    return [(data_blocks + (1 << (bits * (i + 1))) - 1) >> (bits * (i + 1)) for i in range(n)]


def hash_tree(data: bytes, params: VerityParams) -> VerityTree:
    """The hash tree and root hash of ``data`` (a multiple of the data block size)."""
    bs, hbs = params.data_block_size, params.hash_block_size
    for v, what in ((bs, "data block size"), (hbs, "hash block size")):
        if v < 512 or v & (v - 1):
            raise CCBuildError(f"verity {what} {v} is not a power of two >= 512")
    if not data or len(data) % bs:
        raise CCBuildError(f"verity data ({len(data)} bytes) is not a non-zero multiple of "
                           f"{bs}-byte blocks")
    if len(params.salt) > 256:
        raise CCBuildError("verity salt longer than 256 bytes")
    h0 = hashlib.new(params.algorithm)
    h0.update(params.salt)
    digest_size = h0.digest_size
    per_block = 1 << ((hbs // digest_size).bit_length() - 1)
    n = len(data) // bs

    def digests(buf: bytes, size: int) -> list[bytes]:
        out = []
        mv = memoryview(buf)
        for off in range(0, len(buf), size):
            h = h0.copy()
            h.update(mv[off:off + size])
            out.append(h.digest())
        return out

    def pack(ds: list[bytes]) -> bytes:
        blocks = []
        for i in range(0, len(ds), per_block):
            chunk = b"".join(ds[i:i + per_block])
            blocks.append(chunk + bytes(hbs - len(chunk)))
        return b"".join(blocks)

    sizes = _levels(n, per_block)
    levels: list[bytes] = []
    cur = digests(data, bs)
    for expect in sizes:
        level = pack(cur)
        assert len(level) == expect * hbs
        levels.append(level)
        cur = digests(level, hbs)
    root = cur[0]        # the top block's digest (with no levels: the single data block's)
    return VerityTree(params, n, root, b"".join(reversed(levels)))
