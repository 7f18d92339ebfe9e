"""Initrd stage: the agent as ``/init`` plus a minimal tree, packed as a reproducible newc cpio
and compressed with fixed parameters.

Everything is built in memory from the spec; nothing touches the file system, so umask, TZ,
the working directory and the build user cannot leak into the bytes. Device nodes are header
fields only, so no root is needed. The tree (entry kinds, default directories, path rule) is
stages/tree.py, shared with the verity rootfs.

Compression parameters are fixed (part of the output's identity):

* ``gzip``: deflate level 9, header mtime 0, no file name (Python's :func:`gzip.compress`);
* ``zstd``: level 19 parameters pinned for any input size, single-threaded, frame content size
  and checksum written, no dictionary id (the ``zstandard`` package);
* ``xz``: preset 9 with check CRC32 — the kernel's xz decoder accepts only CRC32 or no check.
"""

from __future__ import annotations

import gzip
import lzma
import posixpath
import struct
import zlib
from dataclasses import dataclass, field

from builder.errors import CCBuildError, FormatError
from builder.formats import cpio
from builder.stages import tree
from builder.stages.tree import DEFAULT_DIRS, Device, Dir, File, Symlink

COMPRESSIONS = ("none", "gzip", "zstd", "xz")

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"


DEFAULT_DEVICES = (Device("/dev/console", "chardev", 5, 1, 0o600),
                   Device("/dev/null", "chardev", 1, 3, 0o666))


@dataclass(frozen=True)
class InitrdSpec:
    """What goes into the initrd. ``agent`` becomes ``/init`` with mode 0755."""

    agent: bytes
    compression: str = "gzip"
    files: tuple[File, ...] = ()
    symlinks: tuple[Symlink, ...] = ()
    dirs: tuple[Dir, ...] = DEFAULT_DIRS
    devices: tuple[Device, ...] = DEFAULT_DEVICES
    init_mode: int = field(default=0o755)


def image_path(path: str) -> str:
    return tree.image_path(path, "initrd")


def _mode(path: str, mode: int) -> int:
    return tree.check_mode(path, mode, "initrd")


def initrd_entries(spec: InitrdSpec) -> list[cpio.Entry]:
    """The archive members of ``spec``: explicit entries, then implicit parent directories
    (mode 0755). A path given twice, or a path below a non-directory, is refused."""
    if not isinstance(spec.agent, (bytes, bytearray)) or not spec.agent:
        raise CCBuildError("initrd: the agent binary is empty")
    entries: dict[str, cpio.Entry] = {}
    origin: dict[str, str] = {}

    def add(entry: cpio.Entry, given: str) -> None:
        if entry.path in entries:
            if entry.kind == "dir" and entries[entry.path] == entry:
                return                       # the same directory named twice: harmless
            raise CCBuildError(f"initrd path {given!r} is given twice "
                               f"(already {origin[entry.path]!r} as {entries[entry.path].kind})")
        entries[entry.path] = entry
        origin[entry.path] = given

    add(cpio.Entry.file("init", spec.agent, _mode("/init", spec.init_mode)), "/init (the agent)")
    for d in spec.dirs:
        add(cpio.Entry.dir(image_path(d.path), _mode(d.path, d.mode)), d.path)
    for dev in spec.devices:
        if dev.kind not in ("chardev", "blockdev"):
            raise CCBuildError(f"initrd device {dev.path!r}: kind {dev.kind!r} is not chardev or blockdev")
        for v in (dev.major, dev.minor):
            if not isinstance(v, int) or not 0 <= v <= 0xFFFFFFFF:
                raise CCBuildError(f"initrd device {dev.path!r}: bad device number {v!r}")
        add(cpio.Entry(image_path(dev.path), dev.kind, _mode(dev.path, dev.mode), b"",
                       (dev.major, dev.minor)), dev.path)
    for s in spec.symlinks:
        if not isinstance(s.target, str) or not s.target or "\0" in s.target:
            raise CCBuildError(f"initrd symlink {s.path!r}: bad target {s.target!r}")
        add(cpio.Entry.symlink(image_path(s.path), s.target), s.path)
    for f in spec.files:
        if not isinstance(f.data, (bytes, bytearray)):
            raise CCBuildError(f"initrd file {f.path!r}: content must be bytes")
        add(cpio.Entry.file(image_path(f.path), f.data, _mode(f.path, f.mode)), f.path)

    for name in list(entries):
        parent = name.rpartition("/")[0]
        while parent:
            existing = entries.get(parent)
            if existing is None:
                entries[parent] = cpio.Entry.dir(parent, 0o755)
                origin[parent] = "(implicit parent)"
            elif existing.kind != "dir":
                raise CCBuildError(f"initrd path {origin[name]!r} lies below {origin[parent]!r}, "
                                   f"which is a {existing.kind}, not a directory")
            parent = parent.rpartition("/")[0]
    return list(entries.values())


def pack(spec: InitrdSpec, source_date_epoch: int) -> bytes:
    """The uncompressed newc archive of ``spec``."""
    return cpio.write_archive(initrd_entries(spec), source_date_epoch)


def compress(data: bytes, method: str) -> bytes:
    """Compress with the fixed parameters of ``method`` (see the module docstring)."""
    if method == "none":
        return bytes(data)
    if method == "gzip":
        return _gzip(data)
    if method == "zstd":
        import zstandard
        params = zstandard.ZstdCompressionParameters.from_level(
            19, write_content_size=1, write_checksum=1, write_dict_id=0, threads=0)
        return zstandard.ZstdCompressor(compression_params=params).compress(data)
    if method == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=9)
    raise CCBuildError(f"unknown initrd compression {method!r}",
                       hint="use one of " + ", ".join(COMPRESSIONS))


def _gzip(data: bytes) -> bytes:
    """RFC 1952 member written field by field, so no Python version can change the header:
    no name, mtime 0, XFL 2 (best compression), OS 3 (Unix, as ``gzip -n`` writes); raw deflate
    level 9, window 2^15, memLevel 8, default strategy."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
    body = z.compress(data) + z.flush()
    return b"".join((b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03", body,
                     struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)))


def build_initrd(spec: InitrdSpec, source_date_epoch: int) -> bytes:
    """The initrd image: :func:`pack` then :func:`compress` with ``spec.compression``."""
    if spec.compression not in COMPRESSIONS:
        raise CCBuildError(f"unknown initrd compression {spec.compression!r}",
                           hint="use one of " + ", ".join(COMPRESSIONS))
    if not isinstance(source_date_epoch, int) or not 0 <= source_date_epoch <= 0xFFFFFFFF:
        raise CCBuildError(f"SOURCE_DATE_EPOCH {source_date_epoch!r} does not fit a cpio mtime",
                           hint="use seconds since 1970 below 2^32")
    return compress(pack(spec, source_date_epoch), spec.compression)


def detect_compression(data: bytes) -> str:
    """``gzip`` | ``zstd`` | ``xz`` | ``none`` (a cpio archive), from the leading magic bytes."""
    head = bytes(data[:6])
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    if head.startswith(_XZ_MAGIC):
        return "xz"
    if head in (cpio.MAGIC, cpio.MAGIC_CRC):
        return "none"
    raise FormatError(f"not an initrd: unknown magic {head!r} (expected cpio, gzip, zstd or xz)", 0)


def decompress(data: bytes) -> bytes:
    """The cpio archive inside an initrd image (any of :data:`COMPRESSIONS`)."""
    import zstandard
    method = detect_compression(data)
    try:
        if method == "gzip":
            return gzip.decompress(data)
        if method == "zstd":
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        if method == "xz":
            return lzma.decompress(data, format=lzma.FORMAT_XZ)
    except (OSError, EOFError, lzma.LZMAError, zlib.error, zstandard.ZstdError) as e:
        raise FormatError(f"corrupt {method} initrd: {e}", 0) from None
    return bytes(data)


def diff_initrds(a: bytes, b: bytes) -> str | None:
    """None when equal; else the first differing member and field, the compression difference,
    or which image cannot be read (corrupt compression or archive)."""
    if bytes(a) == bytes(b):
        return None
    unpacked = []
    for which, img in (("first", a), ("second", b)):
        try:
            unpacked.append((detect_compression(img), decompress(img)))
            cpio.read_archive(unpacked[-1][1])
        except FormatError as e:       # a damaged image is a difference, not bad input
            return f"the {which} initrd cannot be read: {e}"
    (ca, ra), (cb, rb) = unpacked
    d = cpio.diff_archives(ra, rb)
    if d:
        return d
    if ca != cb:
        return f"same archive, different compression: {ca} vs {cb}"
    return f"same archive, compressed bytes differ ({ca} parameters or library version)"


def init_of(data: bytes) -> bytes:
    """The bytes of ``/init`` in an initrd image (following a symlink inside the image)."""
    members = {m.name: m for m in cpio.read_archive(decompress(data))}
    name, seen = "init", set()
    while name in members and members[name].kind == "symlink" and name not in seen:
        seen.add(name)
        target = members[name].data.decode(errors="replace")
        base = "/" if target.startswith("/") else "/" + name.rpartition("/")[0]
        name = posixpath.normpath(posixpath.join(base, target)).lstrip("/")  # ".." stops at /
    m = members.get(name)
    if m is None or m.kind != "file":
        raise CCBuildError("initrd has no regular file /init", hint="the agent must be /init")
    return m.data
