"""Emitters: files written into OUT beside the artifacts, from the same data the measurements
used (launch snippets, provenance, reference values ...).

Each module listed in ``EMITTERS`` defines ``emit(view: BuildView, files: dict[str, bytes]) ->
dict[str, bytes]``: given the build and the files so far (artifacts + measurements.json and what
earlier emitters added), it returns the new files (name -> bytes). Emitters never read the
clock or write paths of this machine; they run in list order, so a later one may digest an
earlier one's output. manifest.json and SHA256SUMS are written after all of them.

Values from the recipe, profiles and file names are hostile: every value an emitter writes goes
through a serializer for its format (shell words, TOML values, JSON; see
:mod:`builder.emit.templating` and :func:`builder.emit.manifest.dumps`), and a value that cannot
be represented is a one-line :class:`~builder.errors.CCBuildError` naming it, never a broken file.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

from builder.emit.manifest import sha256_hex
from builder.recipe import LoadedRecipe
from builder.store import Store

EMITTERS: list[str] = [
    "builder.emit.qemu",
    "builder.emit.kata",
    # keep these two last: provenance's subjects are every file written before it
    "builder.emit.rvps",
    "builder.emit.provenance",
]


@dataclass(frozen=True)
class BuildView:
    """Everything a build produced, for emitters and checks (read-only)."""
    lr: LoadedRecipe
    firmware: bytes
    kernel: bytes
    initrd: bytes | None        # None when the guest boots a verity rootfs instead
    cmdline: str
    agent: bytes
    measurements: dict
    inputs: tuple[dict, ...]
    store: Store
    rootfs: bytes | None = None   # rootfs.img (file system + dm-verity tree) when the recipe has one
    # the build's SHA-256 memo (builder.emit.manifest.Digests): emitters digest files through it
    sha256: Callable[[bytes], str] = field(default=sha256_hex, compare=False, repr=False)

    @property
    def image_file(self) -> str:
        """The file in OUT the guest's root comes from: initrd.img or rootfs.img."""
        return "initrd.img" if self.rootfs is None else "rootfs.img"


_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def run_emitters(view: BuildView, files: dict[str, bytes]) -> Iterator[dict[str, bytes]]:
    for name in EMITTERS:
        extra = importlib.import_module(name).emit(view, dict(files))
        odd = [n for n in extra if not _FILE_NAME.fullmatch(n) or not isinstance(extra[n], bytes)]
        if odd:
            raise RuntimeError(f"emitter {name} writes odd files {odd!r}")  # a code bug
        clash = set(extra) & set(files)
        if clash:
            raise RuntimeError(f"emitter {name} overwrites {sorted(clash)}")  # a code bug
        files.update(extra)
        yield extra
