"""Small helpers shared by the verb modules."""

from __future__ import annotations

from pathlib import Path

from builder.errors import CCBuildError


def int_arg(text: str) -> int:
    """An integer in any base Python accepts (0x1, 33, 0b100001)."""
    try:
        return int(text, 0)
    except ValueError:
        raise CCBuildError(f"{text!r} is not an integer", hint="write e.g. 0x21 or 33") from None


def read_input(path: str | None, option: str) -> bytes | None:
    """The bytes of a file named on the command line (None when the option was not given)."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CCBuildError(f"cannot read {option} {path}: {e.strerror or e}") from None
