"""The "newc" cpio format (magic ``070701``), as the Linux kernel unpacks an initramfs.

Each member is a 110-byte ASCII header of 13 eight-digit hex fields, the NUL-terminated name padded
so that header + name is a multiple of 4, then the data (file content, or a symlink's target
without NUL) padded to a multiple of 4. The archive ends with a member named ``TRAILER!!!``.

The writer is deterministic: members sorted by the bytes of their path, every mtime the given
SOURCE_DATE_EPOCH, uid/gid 0, inode numbers assigned in order, device numbers of the archive
(devmajor/devminor) 0, nlink as a file system reports it (directories 2 + their subdirectories,
everything else 1; hard links are not written). With ``first_ino=0`` and the default 512-byte block
padding the output is byte-identical to ``cpio -o -H newc --reproducible --owner=0:0`` (GNU cpio 2.13)
over the same tree fed in ``LC_ALL=C sort`` order.

The reader (:func:`read_archive`) checks every field and reports malformed input as a
:class:`~builder.errors.FormatError` with the offset; :func:`diff_archives` names the first member
and field in which two archives differ.
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from typing import Iterable

from builder.errors import CCBuildError, FormatError

MAGIC = b"070701"
MAGIC_CRC = b"070702"          # same layout plus a checksum of the data; read, never written
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"
BLOCK = 512                    # GNU cpio pads the archive to its I/O block size

KINDS = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK,
         "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK}
_KIND_OF = {v: k for k, v in KINDS.items()}

_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
           "rdevmajor", "rdevminor", "namesize", "check")
_HEADER_FMT = "070701" + "%08X" * 13
_HEXDIGITS = b"0123456789abcdefABCDEF"


@dataclass(frozen=True)
class Entry:
    """One member to write. ``path`` is relative to the archive root, without leading ``/`` or
    ``./``; ``mode`` holds only the permission bits (0o7777); ``data`` is a file's content or a
    symlink's target; ``rdev`` is (major, minor) of a device node."""

    path: str
    kind: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @classmethod
    def dir(cls, path: str, mode: int = 0o755) -> "Entry":
        return cls(path, "dir", mode)

    @classmethod
    def file(cls, path: str, data: bytes, mode: int = 0o644) -> "Entry":
        return cls(path, "file", mode, bytes(data))

    @classmethod
    def symlink(cls, path: str, target: str) -> "Entry":
        return cls(path, "symlink", 0o777, target.encode())

    @classmethod
    def chardev(cls, path: str, major: int, minor: int, mode: int = 0o600) -> "Entry":
        return cls(path, "chardev", mode, b"", (major, minor))

    @classmethod
    def blockdev(cls, path: str, major: int, minor: int, mode: int = 0o600) -> "Entry":
        return cls(path, "blockdev", mode, b"", (major, minor))


@dataclass(frozen=True)
class Member:
    """One member as read back, with every header field and where it starts."""

    name: str
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    check: int
    data: bytes
    offset: int

    @property
    def kind(self) -> str:
        return _KIND_OF.get(stat.S_IFMT(self.mode), f"type 0o{stat.S_IFMT(self.mode):o}")

    @property
    def filesize(self) -> int:
        return len(self.data)


def _pad4(n: int) -> int:
    return -n % 4


def _check_entry(e: Entry) -> bytes:
    if e.kind not in KINDS:
        raise CCBuildError(f"{e.path!r}: unknown entry kind {e.kind!r}")
    if not 0 <= e.mode <= 0o7777:
        raise CCBuildError(f"{e.path!r}: mode 0o{e.mode:o} has bits outside 0o7777")
    name = e.path.encode()
    if (not name or name.startswith(b"/") or b"\0" in name or name == TRAILER.encode()
            or any(p in (b"", b".", b"..") for p in name.split(b"/"))):
        raise CCBuildError(f"bad archive path {e.path!r}")
    if e.kind not in ("file", "symlink") and e.data:
        raise CCBuildError(f"{e.path!r}: a {e.kind} carries no data")
    return name


def write_archive(entries: Iterable[Entry], mtime: int, *, first_ino: int = 1,
                  block: int = BLOCK) -> bytes:
    """Serialize ``entries`` (any order; duplicates refused) as a newc archive.

    ``mtime`` is SOURCE_DATE_EPOCH. ``block`` pads the whole archive with zeros to a multiple of
    it (GNU cpio's 512; 4 for no extra padding). Parent directories are not invented here."""
    if not 0 <= mtime <= 0xFFFFFFFF:
        raise CCBuildError(f"mtime {mtime} does not fit the 32-bit newc field")
    named = sorted(((_check_entry(e), e) for e in entries), key=lambda t: t[0])
    for (a, _), (b, _) in zip(named, named[1:]):
        if a == b:
            raise CCBuildError(f"duplicate archive path {a.decode()!r}")
    subdirs: dict[bytes, int] = {}
    for name, e in named:
        if e.kind == "dir":
            parent = name.rpartition(b"/")[0]
            subdirs[parent] = subdirs.get(parent, 0) + 1
    out: list[bytes] = []
    size = 0
    ino = first_ino
    for name, e in named:
        nlink = 2 + subdirs.get(name, 0) if e.kind == "dir" else 1
        namesize = len(name) + 1
        hdr = (_HEADER_FMT % (ino, KINDS[e.kind] | e.mode, 0, 0, nlink, mtime, len(e.data), 0, 0,
                              e.rdev[0], e.rdev[1], namesize, 0)).encode()
        pad1 = _pad4(HEADER_SIZE + namesize)
        pad2 = _pad4(len(e.data))
        out += (hdr, name, b"\0" * (1 + pad1), e.data, b"\0" * pad2)
        size += HEADER_SIZE + namesize + pad1 + len(e.data) + pad2
        ino += 1
    trailer = (_HEADER_FMT % (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(TRAILER) + 1, 0)).encode()
    out += (trailer, TRAILER.encode(), b"\0" * (1 + _pad4(HEADER_SIZE + len(TRAILER) + 1)))
    size += HEADER_SIZE + len(TRAILER) + 1 + _pad4(HEADER_SIZE + len(TRAILER) + 1)
    out.append(b"\0" * (-size % block))
    return b"".join(out)


def _hex_field(data: bytes, off: int, name: str) -> int:
    raw = data[off:off + 8]
    try:
        if len(raw) != 8 or raw.strip(_HEXDIGITS):
            raise ValueError
        return int(raw, 16)
    except ValueError:
        raise FormatError(f"cpio header field {name} is not 8 hex digits: {raw!r}", off) from None


def read_archive(data: bytes) -> list[Member]:
    """Parse a newc archive (or several concatenated, as the kernel accepts, with zero padding
    between them) up to its last trailer. Raises FormatError on anything malformed."""
    data = bytes(data)
    members: list[Member] = []
    off = 0
    n = len(data)
    seen_trailer = False
    while True:
        if seen_trailer:
            while off < n and data[off] == 0:       # padding after a trailer
                off += 1
            if off >= n:
                return members
            seen_trailer = False
        if off + HEADER_SIZE > n:
            raise FormatError("cpio archive ends inside a header (no TRAILER!!!)", off)
        magic = data[off:off + 6]
        if magic not in (MAGIC, MAGIC_CRC):
            raise FormatError(f"not a newc cpio header (magic {magic!r}, expected b'070701')", off)
        f = {name: _hex_field(data, off + 6 + 8 * i, name) for i, name in enumerate(_FIELDS)}
        namesize = f["namesize"]
        name_off = off + HEADER_SIZE
        if namesize < 1 or name_off + namesize > n:
            raise FormatError(f"cpio name size {namesize} is out of range", off + 6 + 8 * 11)
        raw_name = data[name_off:name_off + namesize]
        if raw_name[-1] != 0 or b"\0" in raw_name[:-1]:
            raise FormatError("cpio member name is not NUL-terminated", name_off)
        try:
            name = raw_name[:-1].decode()
        except UnicodeDecodeError:
            raise FormatError(f"cpio member name is not UTF-8: {raw_name[:-1]!r}", name_off) from None
        data_off = name_off + namesize + _pad4(HEADER_SIZE + namesize)
        size = f["filesize"]
        if data_off + size > n:
            raise FormatError(f"cpio member {name!r}: data ({size} bytes) runs past the end", data_off)
        body = data[data_off:data_off + size]
        if magic == MAGIC_CRC and sum(body) & 0xFFFFFFFF != f["check"]:
            raise FormatError(f"cpio member {name!r}: checksum mismatch", off + 6 + 8 * 12)
        next_off = data_off + size + _pad4(size)
        if next_off > n:
            raise FormatError(f"cpio member {name!r}: data padding runs past the end", data_off + size)
        if name == TRAILER:
            seen_trailer = True
        else:
            members.append(Member(name=name, ino=f["ino"], mode=f["mode"], uid=f["uid"],
                                  gid=f["gid"], nlink=f["nlink"], mtime=f["mtime"],
                                  devmajor=f["devmajor"], devminor=f["devminor"],
                                  rdevmajor=f["rdevmajor"], rdevminor=f["rdevminor"],
                                  check=f["check"], data=body, offset=off))
        off = next_off


def _describe(m: Member, field: str):
    if field == "type":
        return m.kind
    if field == "mode":
        return f"0o{stat.S_IMODE(m.mode):04o}"
    if field == "rdev":
        return f"{m.rdevmajor},{m.rdevminor}"
    if field == "dev":
        return f"{m.devmajor},{m.devminor}"
    return getattr(m, field)


# Compared in this order; the first that differs is reported.
_DIFF_FIELDS = ("type", "mode", "uid", "gid", "mtime", "rdev", "nlink", "ino", "dev", "check")


def _diff_member(a: Member, b: Member) -> str | None:
    for field in _DIFF_FIELDS:
        va, vb = _describe(a, field), _describe(b, field)
        if va != vb:
            label = "owner " + field if field in ("uid", "gid") else field
            return f"member {a.name!r}: {label} {va} != {vb}"
    if a.data != b.data:
        what = "symlink target" if a.kind == "symlink" else "content"
        if a.kind == "symlink":
            detail = f"{a.data.decode(errors='replace')!r} != {b.data.decode(errors='replace')!r}"
        else:
            first = next((i for i, (x, y) in enumerate(zip(a.data, b.data)) if x != y),
                         min(len(a.data), len(b.data)))
            detail = (f"size {len(a.data)} vs {len(b.data)}, first difference at byte {first}, "
                      f"sha256 {hashlib.sha256(a.data).hexdigest()[:16]}… vs "
                      f"{hashlib.sha256(b.data).hexdigest()[:16]}…")
        return f"member {a.name!r}: {what} differs ({detail})"
    return None


def diff_archives(a: bytes, b: bytes) -> str | None:
    """None when the archives are byte-identical, else one line naming the first differing member
    and field (presence, order, type, mode, owner uid/gid, mtime, rdev, nlink, ino, content), or,
    when every member agrees, the first differing byte outside the members."""
    if bytes(a) == bytes(b):
        return None
    ma, mb = read_archive(a), read_archive(b)
    names_a = {m.name for m in ma}
    names_b = {m.name for m in mb}
    for i, (x, y) in enumerate(zip(ma, mb)):
        if x.name != y.name:
            if x.name not in names_b:
                return f"member {x.name!r}: present only in the first archive"
            if y.name not in names_a:
                return f"member {y.name!r}: present only in the second archive"
            return f"member order differs at position {i}: {x.name!r} vs {y.name!r}"
        d = _diff_member(x, y)
        if d:
            return d
    if len(ma) > len(mb):
        return f"member {ma[len(mb)].name!r}: present only in the first archive"
    if len(mb) > len(ma):
        return f"member {mb[len(ma)].name!r}: present only in the second archive"
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (f"members agree, archive bytes differ at offset 0x{first:x} "
            f"(header encoding, padding or trailer; sizes {len(a)} vs {len(b)})")
