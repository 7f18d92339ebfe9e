"""Small helpers shared by the verb modules."""

from __future__ import annotations

from builder.errors import CCBuildError
from builder.inputs import read_optional


def int_arg(text: str) -> int:
    """An integer in any base Python accepts (0x1, 33, 0b100001)."""
    try:
        return int(text, 0)
    except ValueError:
        raise CCBuildError(f"{text!r} is not an integer", hint="write e.g. 0x21 or 33") from None


def read_input(path: str | None, option: str, kind: str = "file") -> bytes | None:
    """The bytes of a file named on the command line (None when the option was not given):
    a regular file of at most the kind's cap (builder.inputs.LIMITS)."""
    return read_optional(path, kind, option)
