"""dm-verity hash tree (builder.formats.verity) against veritysetup (cryptsetup-bin), an
independent implementation: same hash area byte for byte, same root hash."""

from __future__ import annotations

import random
import re
import shutil
import subprocess

import pytest

from builder.errors import CCBuildError
from builder.formats.verity import VerityParams, hash_tree


def _veritysetup() -> str:
    v = shutil.which("veritysetup")
    if v is None:
        pytest.skip("veritysetup is not installed (cryptsetup-bin, scripts/install-deps)")
    return v


def _format(tmp_path, data: bytes, salt: bytes, data_bs: int = 4096, hash_bs: int = 4096):
    d, h = tmp_path / "data.img", tmp_path / "hash.img"
    d.write_bytes(data)
    h.unlink(missing_ok=True)
    cp = subprocess.run([_veritysetup(), "format", "--no-superblock", "--format=1",
                         "--hash=sha256", f"--data-block-size={data_bs}",
                         f"--hash-block-size={hash_bs}", f"--salt={salt.hex() or '-'}",
                         str(d), str(h)], capture_output=True, text=True, check=True)
    root = re.search(r"Root hash:\s+([0-9a-f]+)", cp.stdout)[1]
    return h.read_bytes(), root


# 1 block: no tree levels; 128/129: one level full / two levels; 16385: three levels.
@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 1000, 16384, 16385])
def test_tree_equals_veritysetup(tmp_path, blocks):
    rng = random.Random(blocks)
    data = rng.randbytes(4096 * blocks)
    salt = rng.randbytes(32)
    tree = hash_tree(data, VerityParams(salt=salt))
    ref_tree, ref_root = _format(tmp_path, data, salt)
    assert tree.root_hash.hex() == ref_root
    assert tree.tree == ref_tree
    assert tree.data_blocks == blocks


@pytest.mark.parametrize("salt,data_bs,hash_bs", [(b"", 4096, 4096), (b"\x01" * 7, 4096, 4096),
                                                  (b"s" * 32, 1024, 4096),
                                                  (b"s" * 32, 4096, 1024)])
def test_geometry_and_salt_variants(tmp_path, salt, data_bs, hash_bs):
    data = random.Random(7).randbytes(4096 * 300)
    tree = hash_tree(data, VerityParams(salt=salt, data_block_size=data_bs,
                                        hash_block_size=hash_bs))
    ref_tree, ref_root = _format(tmp_path, data, salt, data_bs, hash_bs)
    assert (tree.root_hash.hex(), tree.tree) == (ref_root, ref_tree)


def test_veritysetup_verify_accepts_and_detects_one_byte(tmp_path):
    data = bytearray(random.Random(3).randbytes(4096 * 200))
    salt = bytes(range(32))
    tree = hash_tree(bytes(data), VerityParams(salt=salt))
    (tmp_path / "d").write_bytes(data)
    (tmp_path / "h").write_bytes(tree.tree)
    argv = [_veritysetup(), "verify", "--no-superblock", "--format=1", "--hash=sha256",
            "--data-block-size=4096", "--hash-block-size=4096",
            f"--data-blocks={tree.data_blocks}", f"--salt={salt.hex()}",
            str(tmp_path / "d"), str(tmp_path / "h"), tree.root_hash.hex()]
    assert subprocess.run(argv, capture_output=True).returncode == 0
    data[4096 * 150 + 17] ^= 1
    (tmp_path / "d").write_bytes(data)
    assert subprocess.run(argv, capture_output=True).returncode != 0
    assert hash_tree(bytes(data), VerityParams(salt=salt)).root_hash != tree.root_hash


def test_kernel_table_is_katas_form():
    tree = hash_tree(bytes(4096 * 10), VerityParams(salt=b"\xab" * 32))
    want = (f'dm-mod.create="dm-verity,,,ro,0 80 verity 1 /dev/vda1 /dev/vda2 4096 4096 10 0 '
            f'sha256 {tree.root_hash.hex()} {"ab" * 32}"')
    assert tree.dm_mod_create("/dev/vda1", "/dev/vda2") == want
    assert tree.kata_params() == (f"root_hash={tree.root_hash.hex()},salt={'ab' * 32},"
                                  "data_blocks=10,data_block_size=4096,hash_block_size=4096")


@pytest.mark.parametrize("data,params", [(b"", VerityParams(b"")),
                                         (bytes(4095), VerityParams(b"")),
                                         (bytes(4096), VerityParams(b"", data_block_size=3000))])
def test_bad_input_is_refused(data, params):
    with pytest.raises(CCBuildError):
        hash_tree(data, params)
