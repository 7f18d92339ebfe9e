"""Reading hostile input files: regular files only, size-capped per kind.

Every file ccbuild reads that someone else may have written (recipes, profiles, firmware
descriptors, artifacts, OUT directories, evidence, keys) goes through :func:`read_regular`, or
:func:`open_regular` for streaming. A FIFO, a device, a directory or a socket is refused before a
single byte is read (the file is opened with ``O_NONBLOCK`` so a FIFO cannot block the open), and a
file larger than its kind's cap is refused from its size, before it is read, so ``/dev/zero``, a
sparse 8 GiB file or a pipe can neither hang ccbuild nor exhaust its memory. The caps are
documented in the README ("Input limits").
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator
from io import BufferedReader

from builder import deps
from builder.errors import CCBuildError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# The largest file of each kind ccbuild reads. Generous for every real input, small enough that a
# hostile one is refused before memory is an issue.
LIMITS: dict[str, int] = {
    "recipe": 1 * MiB,
    "profile": 1 * MiB,
    "firmware descriptor": 1 * MiB,
    "config fragment": 1 * MiB,
    "firmware": 64 * MiB,          # OVMF/TDVF images are 2-4 MiB; the 4 GiB window caps them anyway
    "kernel": 256 * MiB,           # bzImages are 5-20 MiB
    "initrd": 2 * GiB,
    "rootfs": 16 * GiB,            # streamed, never read whole
    "artifact": 16 * GiB,          # any OUT file, streamed when hashed
    "manifest": 16 * MiB,
    "measurements": 64 * MiB,
    "report": 1 * MiB,             # SNP report 0x4A0 bytes (+ extended certs)
    "quote": 1 * MiB,              # TDX quote v4/v5 with its certification data
    "event log": 64 * MiB,         # CCEL data area (RTMR event log)
    "acpi table": 1 * MiB,         # CCEL table
    "certificate": 1 * MiB,
    "key": 1 * MiB,
    "initdata": 1 * MiB,
    "profile data": 16 * MiB,     # ACPI blobs and event data a TDX profile names
    "signature": 1 * MiB,
    "kata configuration": 1 * MiB,
    "debian package": 4 * GiB,     # a .deb, streamed (its data.tar decompresses to at most 8 GiB)
    "file": 2 * GiB,               # a recipe `path:` source or another plain input
}

_KIND_NAMES = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symlink"}


def file_type_name(mode: int) -> str:
    """'a directory', 'a FIFO', ... for a stat mode (for messages)."""
    return _KIND_NAMES.get(stat.S_IFMT(mode), "not a regular file")


def _limit(kind: str, limit: int | None) -> int:
    return limit if limit is not None else LIMITS.get(kind, LIMITS["file"])


def _human(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


@contextmanager
def open_regular(path: str | os.PathLike, kind: str = "file", where: str | None = None,
                 limit: int | None = None) -> Iterator[tuple[BufferedReader, int]]:
    """Open a regular file for reading; yields ``(file, size)``. Refuses anything else, and any
    file above the kind's cap, with a one-line :class:`CCBuildError` naming ``where``."""
    shown = where or str(path)
    cap = _limit(kind, limit)
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise CCBuildError(f"{kind} not found", shown) from None
    except (OSError, ValueError) as e:  # ValueError: NUL in the path
        msg = getattr(e, "strerror", None) or str(e)
        raise CCBuildError(f"cannot read {kind} ({msg})", shown) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CCBuildError(f"{kind} is {file_type_name(st.st_mode)}, not a regular file", shown)
        if st.st_size > cap:
            raise CCBuildError(f"{kind} is too large ({st.st_size} bytes, limit {_human(cap)})", shown)
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
        deps.note_open(path)   # an input of the build being recorded (builder.deps)
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f, st.st_size


def read_regular(path: str | os.PathLike, kind: str = "file", where: str | None = None,
                 limit: int | None = None) -> bytes:
    """The bytes of a regular file of at most the kind's cap (see :data:`LIMITS`)."""
    shown = where or str(path)
    cap = _limit(kind, limit)
    with open_regular(path, kind, shown, cap) as (f, size):
        # Read what fstat promised plus one byte in one go (no buffer of the whole cap), then
        # in chunks if the file is longer than it said (/proc files report size 0, or it grew).
        chunks, total = [], 0
        want = size + 1
        try:
            while total <= cap:
                chunk = f.read(min(want, cap + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                want = 1 << 20
        except OSError as e:
            raise CCBuildError(f"cannot read {kind} ({e.strerror or e})", shown) from None
    if total > cap:
        raise CCBuildError(f"{kind} is too large (more than {_human(cap)})", shown)
    data = b"".join(chunks) if len(chunks) != 1 else chunks[0]
    if deps.recording_now():
        import hashlib
        deps.note_read(path, len(data), hashlib.sha256(data).hexdigest())
    return data


def read_exact(path: str | os.PathLike, size: int) -> bytes | None:
    """The bytes of ``path`` when it is a regular file (not a symlink) of exactly ``size``
    bytes, else None: never blocks on a FIFO, never reads past ``size`` (OUT's files, which
    someone else may have replaced)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                     | os.O_NOCTTY)
    except (OSError, ValueError):
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return None
            data = f.read(size + 1)   # one buffer; a byte more tells that it grew
    except OSError:
        return None
    return data if len(data) == size else None


def decode_utf8(data: bytes, kind: str, where: str) -> str:
    """UTF-8 text, or an error naming the offset of the first invalid byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CCBuildError(f"{kind} is not UTF-8 (invalid byte 0x{data[e.start]:02x} at offset "
                           f"{e.start})", where) from None


def read_text(path: str | os.PathLike, kind: str = "file", where: str | None = None,
              limit: int | None = None) -> str:
    """A regular UTF-8 text file of at most the kind's cap."""
    shown = where or str(path)
    return decode_utf8(read_regular(path, kind, shown, limit), kind, shown)



def check_text(value: str, where: str, what: str = "string") -> str:
    """A string that can be encoded as UTF-8 (no lone surrogates, e.g. from undecodable argv)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CCBuildError(f"{what} is not valid Unicode (lone surrogate U+{ord(value[e.start]):04X} "
                           f"at character {e.start})", where) from None
    return value


def is_within(child: Path, parent: Path) -> bool:
    """True when ``child`` (resolved) lies inside ``parent`` (resolved)."""
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False
