"""The project's error types and exit codes.

Every failure a user can cause surfaces as a :class:`CCBuildError` (exit 2, bad input) or a
:class:`CheckFailed` (exit 1, a comparison did not hold). The CLI prints them as one line:
``ccbuild: error: <what>, <where>; <hint>`` and shows a traceback only with ``--debug``.
Binary parsers raise :class:`FormatError`, a :class:`CCBuildError` that names the file offset.
"""

from __future__ import annotations

import re

# Characters that would break the one-line contract or drive a terminal: C0/C1 controls, DEL,
# the Unicode line and paragraph separators, and bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with line breaks and tabs as spaces, other control characters written as ``\\xNN`` / ``\\uNNNN`` escapes, and lone
    surrogates as ``\\udNNN``: a message quoting a hostile value stays one line of plain text."""
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                        else f"\\u{ord(m.group()):04x}", text)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class CCBuildError(Exception):
    """Bad input: a recipe, a file, an option. Exit code 2."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, what: str, where: str | None = None, hint: str | None = None):
        self.what = what
        self.where = where
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        s = self.what
        if self.where:
            s = f"{s}, {self.where}"
        if self.hint:
            s = f"{s}; {self.hint}"
        return printable(s)


class FormatError(CCBuildError):
    """A malformed binary structure. ``where`` names the file (if known) and the offset."""

    def __init__(self, what: str, offset: int | None = None, source: str | None = None,
                 hint: str | None = None):
        self.offset = offset
        self.source = source
        parts = []
        if source:
            parts.append(source)
        if offset is not None:
            parts.append(f"offset 0x{offset:x}")
        super().__init__(what, " ".join(parts) or None, hint)


class CheckFailed(CCBuildError):
    """A verification found a mismatch. Exit code 1."""

    exit_code = EXIT_CHECK_FAILED
