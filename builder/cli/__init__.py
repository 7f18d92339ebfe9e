"""Command-line front end: argparse only. Every verb module defines ``register(subparsers)``
which adds its parser and sets ``func`` to a function ``(args) -> int`` that calls the library.

Errors are one line on stderr (``ccbuild: error: ...``), exit 2 for bad input, 1 for a failed
check; a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from builder import __version__
from builder.errors import CCBuildError, EXIT_BAD_INPUT

# One module per verb (or verb group) under builder/cli/. Extend, don't rename.
VERB_MODULES = [
    "builder.cli.build",
    "builder.cli.release",
    "builder.cli.lock",
    "builder.cli.measure",
    "builder.cli.idblock",
    "builder.cli.inspect",
    "builder.cli.boot",
    "builder.cli.verify",
    "builder.cli.kata",
    "builder.cli.explain",
]


class _Parser(argparse.ArgumentParser):
    """argparse with our exit code (2) and one-line errors."""

    def error(self, message: str):  # noqa: D401
        self.exit(EXIT_BAD_INPUT, f"ccbuild: error: {message}; see '{self.prog} --help'\n")


class _Version(argparse.Action):
    """``--version``: ccbuild's version, then each external tool's version line (or 'not found'
    with the Debian package that provides it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from builder.run import found_tools
        lines = [f"ccbuild {__version__}"]
        lines += [f"  {tool:<19} {line}" for tool, line in found_tools()]
        print("\n".join(lines))
        parser.exit(0)


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ccbuild", description=__doc__.splitlines()[0])
    p.add_argument("--version", action=_Version, nargs=0,
                   help="show ccbuild's version and the external tools it found, and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-v", "--verbose", action="store_true", help="echo external commands")
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    args = parser.parse_args(argv)
    debug = args.debug
    try:
        from builder import log
        log.configure(verbose=args.verbose, debug=debug)
        return int(args.func(args) or 0)
    except CCBuildError as e:
        if debug:
            raise
        print(f"ccbuild: error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    except MemoryError:
        # Inputs are capped (builder/inputs.py), so this means the caps exceed this machine.
        if debug:
            raise
        print("ccbuild: error: out of memory; an input is larger than this machine can hold "
              "(see the README's input limits)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if debug:
            raise
        print("ccbuild: error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
