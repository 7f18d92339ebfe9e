"""Small helpers shared by the verb modules: command-line values checked at the boundary, with
messages that name the option and describe the input (never Python's own wording)."""

from __future__ import annotations

import hashlib

from builder.errors import CCBuildError
from builder.inputs import LIMITS, check_text, open_regular

# The longest integer literal accepted on the command line. The largest value any option takes
# is a 64-bit field (0x + 16 hex digits, or 20 decimal digits); anything much longer is not a
# value but an attack on int() (Python refuses > 4300 digits with a message about
# sys.set_int_max_str_digits).
MAX_INT_TEXT = 80


def shown(text: str, width: int = 40) -> str:
    """``text`` quoted for a message, cut to ``width`` characters (with its full length)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= width:
        return repr(text)
    return f"{text[:width]!r}... ({len(text)} characters)"


def int_arg(text: str, option: str | None = None, lo: int | None = None,
            hi: int | None = None) -> int:
    """An integer in any base Python accepts (0x1, 33, 0b100001), optionally within
    ``lo..hi``; errors name ``option``."""
    what = f"{option} {shown(text)}" if option else shown(text)
    if len(text) > MAX_INT_TEXT:
        raise CCBuildError(f"{what} is not a plausible integer (more than {MAX_INT_TEXT} "
                           "characters)", hint="write e.g. 0x21 or 33")
    try:
        value = int(text, 0)
    except ValueError:
        raise CCBuildError(f"{what} is not an integer", hint="write e.g. 0x21 or 33") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise CCBuildError(f"{what} is out of range", hint=f"{_range(lo, hi)}")
    return value


def _range(lo: int | None, hi: int | None) -> str:
    def fmt(v: int) -> str:
        return str(v) if v < 1 << 16 else f"0x{v:x}"
    if lo is not None and hi is not None:
        return f"give a value in {fmt(lo)}..{fmt(hi)}"
    if lo is not None:
        return f"give a value of at least {fmt(lo)}"
    return f"give a value of at most {fmt(hi)}"


def text_arg(value: str | None, option: str) -> str | None:
    """A command-line string that is valid Unicode (argv bytes that are not UTF-8 arrive as lone
    surrogates, which can neither be measured as UTF-8 nor printed)."""
    if value is None:
        return None
    return check_text(value, option, "the value")


def _path_text(path: str) -> str:
    return shown(path, 200)[1:-1]


def read_input(path: str | None, option: str, kind: str = "file",
               limit: int | None = None) -> bytes | None:
    """The bytes of a file named on the command line (None when the option was not given):
    a regular file (no FIFO, device, directory) of at most the kind's cap
    (builder.inputs.LIMITS, or ``limit``). The file is read into one buffer of its own size, so
    a large cap costs no memory for a small file, and a file that does not fit in memory is an
    error, not a MemoryError. Errors name the option and the path."""
    if path is None:
        return None
    cap = limit if limit is not None else LIMITS.get(kind, LIMITS["file"])
    try:
        with open_regular(path, kind, None, cap) as (f, size):
            try:
                data = f.read(size + 1)  # one buffer of the file's size, plus: did it grow?
            except MemoryError:
                raise CCBuildError(f"{kind} ({size} bytes) does not fit in memory") from None
            except OSError as e:
                raise CCBuildError(f"cannot read {kind} ({e.strerror or e})") from None
        if len(data) > size:
            raise CCBuildError(f"{kind} grew while it was read")
    except CCBuildError as e:
        raise CCBuildError(f"cannot read {option} {_path_text(path)}: {e.what}") from None
    return data


def hash_input(path: str | None, option: str, kind: str, algorithm: str = "sha256"
               ) -> tuple[bytes, int] | None:
    """``(digest, size)`` of a file named on the command line, streamed (never held in memory):
    for inputs that are only hashed (the SNP initrd)."""
    if path is None:
        return None
    h = hashlib.new(algorithm)
    total = 0
    try:
        with open_regular(path, kind) as (f, size):
            try:
                while chunk := f.read(1 << 20):
                    total += len(chunk)
                    if total > size:
                        raise CCBuildError(f"{kind} grew while it was read")
                    h.update(chunk)
            except OSError as e:
                raise CCBuildError(f"cannot read {kind} ({e.strerror or e})") from None
    except CCBuildError as e:
        raise CCBuildError(f"cannot read {option} {_path_text(path)}: {e.what}") from None
    return h.digest(), total
